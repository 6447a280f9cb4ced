"""The tinysoundfont renderer (no system library: what the accelerator machine renders with) next to FluidSynth."""

from __future__ import annotations

import numpy as np
import pretty_midi
import pytest
from test_bridge_support import tree_digest

from engine.errors import ConfigError
from engine.train.data.midi_gen import part_class
from engine.train.data.render import (
    FluidRenderer,
    TinyRenderer,
    active_rms,
    default_soundfonts,
    fluidsynth_available,
    resolve_backend,
)
from engine.train.data.synth import _track_parts, synthesize

pytest.importorskip("tinysoundfont")
FONTS = default_soundfonts()[:1]  # TimGM6mb.sf2 from pretty_midi
pytestmark = pytest.mark.skipif(not FONTS, reason="no General MIDI soundfont")
RATE = 16000


def _parts(index: int = 1, seconds: float = 6.0) -> tuple[list[pretty_midi.Instrument], float]:
    parts, length, _, _ = _track_parts(index, 0, seconds, [])
    return parts, length


def test_renders_every_part_at_the_requested_length_and_a_sensible_level():
    parts, length = _parts()
    with TinyRenderer(FONTS, RATE) as renderer:
        for part in parts:
            audio = renderer.render(part, 0, length)
            assert audio.shape == (int(round(length * RATE)),) and audio.dtype == np.float32
            assert np.isfinite(audio).all()
            level = active_rms(audio, RATE)
            assert 3e-3 < level < 0.3, (part_class(part), level)  # sounds (drums too), and does not clip wildly


@pytest.mark.skipif(not fluidsynth_available(), reason="FluidSynth's library is not installed")
def test_matches_fluidsynth_in_shape_and_roughly_in_level():
    parts, length = _parts(2)
    with FluidRenderer(FONTS, RATE) as fluid, TinyRenderer(FONTS, RATE) as tiny:
        for part in parts:
            a, b = fluid.render(part, 0, length), tiny.render(part, 0, length)
            assert a.shape == b.shape
            ratio_db = 20 * np.log10(active_rms(b, RATE) / active_rms(a, RATE))
            assert abs(ratio_db) < 10, (part_class(part), ratio_db)  # levelled afterwards anyway (synth.py)
            # the same notes at the same times: the loudness envelopes agree
            frame = RATE // 20
            env_a = np.sqrt(np.mean(a[: len(a) // frame * frame].reshape(-1, frame) ** 2, axis=1))
            env_b = np.sqrt(np.mean(b[: len(b) // frame * frame].reshape(-1, frame) ** 2, axis=1))
            assert np.corrcoef(env_a, env_b)[0, 1] > 0.5, part_class(part)


def test_a_part_sounds_the_same_whatever_came_before():
    parts, length = _parts(4)
    with TinyRenderer(FONTS, RATE) as fresh:
        alone = [fresh.render(part, 0, length) for part in parts]
    with TinyRenderer(FONTS, RATE) as used:
        for other in _parts(2)[0] + _parts(1)[0]:
            used.render(other, 0, length)
        again = [used.render(part, 0, length) for part in parts]
    for a, b in zip(alone, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_data_set_is_the_same_for_any_number_of_workers(tmp_path):
    one = synthesize(tmp_path / "one", 4, seed=3, seconds=3.0, sample_rate=RATE, soundfonts=FONTS,
                     renderer="tinysoundfont", progress=False)  # fmt: skip
    two = synthesize(tmp_path / "two", 4, seed=3, seconds=3.0, sample_rate=RATE, soundfonts=FONTS,
                     renderer="tinysoundfont", workers=2, progress=False)  # fmt: skip
    assert one.tracks == two.tracks == 4
    assert tree_digest(tmp_path / "one") == tree_digest(tmp_path / "two")
    assert '"renderer": "tinysoundfont"' in (tmp_path / "one" / "dataset.json").read_text()


def test_unknown_renderer_and_bad_soundfont_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown renderer"):
        resolve_backend("timidity")
    bad = tmp_path / "bad.sf2"
    bad.write_bytes(b"not a soundfont")
    with pytest.raises(ConfigError, match="could not be loaded"):
        TinyRenderer([bad], RATE)
    damaged = tmp_path / "damaged.sf2"  # a soundfont's header over a cut body: it failed at the first part, unnamed
    damaged.write_bytes(FONTS[0].read_bytes()[:4096])
    with pytest.raises(ConfigError, match=f"soundfont {damaged} could not be loaded: .*damaged"):
        TinyRenderer([damaged], RATE)
