"""The one edit path (bridge/editing.py): read, edit, one shape rule, atomic write, JSON-safe info."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from test_bridge_support import FakeEditor, write_wav

from bridge.audio_write import UnsafeDestination
from bridge.editing import conform, edit_region
from bridge.protocol import EditOptions
from engine.errors import AudioError, Cancelled


class ShapeEditor(FakeEditor):
    """Returns a result one channel short and 10 samples long, with numpy values in its info."""

    def edit(self, audio, sample_rate, instruction, **kwargs):
        return SimpleNamespace(
            audio=np.ones((audio.shape[0] - 1, 10), np.float32),
            sample_rate=sample_rate,
            seed=np.int64(7),
            info={"gain_db": np.float32(-3.0), "lufs": float("nan")},
        )


def test_a_region_is_read_edited_and_written_at_the_inputs_rate_and_shape(tmp_path):
    source = write_wav(tmp_path / "in.wav", seconds=2.0, sample_rate=22050, channels=2)
    out = tmp_path / "out" / "r.wav"
    done = edit_region(FakeEditor(), source, 0.5, 1.5, "extract drums", out, options=EditOptions(seed=3))
    written, rate = sf.read(done.output_path, always_2d=True)
    original, _ = sf.read(source, always_2d=True)
    assert rate == 22050 and written.shape == (22050, 2)
    np.testing.assert_allclose(written, 0.5 * original[11025:33075], atol=1e-6)
    assert done.seed == 3
    facts = done.info["bridge"]
    assert (facts["sample_rate"], facts["channels"], facts["frames"]) == (22050, 2, 22050)
    assert {"read_s", "edit_s", "write_s"} <= set(facts)


def test_an_existing_output_is_kept_unless_overwrite(tmp_path):
    source = write_wav(tmp_path / "in.wav")
    target = tmp_path / "r.wav"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        edit_region(FakeEditor(), source, 0.0, -1.0, "extract drums", target)
    assert target.read_bytes() == b"mine"
    edit_region(FakeEditor(), source, 0.0, -1.0, "extract drums", target, overwrite=True)
    assert sf.info(target).frames == 16000
    other = edit_region(
        FakeEditor(), source, 0.0, -1.0, "extract drums", target, on_exists=lambda p: p.with_name("r-2.wav")
    )
    assert other.output_path == tmp_path / "r-2.wav" and sf.info(target).frames == 16000


def test_a_misshapen_result_is_fitted_to_the_input_with_a_warning_and_json_safe_info(tmp_path):
    source = write_wav(tmp_path / "in.wav", channels=2)
    done = edit_region(ShapeEditor(), source, 0.0, -1.0, "extract drums", tmp_path / "r.wav")
    written, _ = sf.read(done.output_path, always_2d=True)
    assert written.shape == (16000, 2)
    assert written[:10, 0].tolist() == [1.0] * 10 and not written[10:].any() and not written[:, 1].any()
    assert "fitted to the input" in done.info["warnings"][0]
    assert done.info["gain_db"] == -3.0 and type(done.info["gain_db"]) is float and done.info["lufs"] is None


def test_a_result_at_another_rate_is_refused():
    audio = np.zeros((1, 100), np.float32)
    with pytest.raises(AudioError, match="at 16000 Hz for an input at 44100 Hz"):
        conform(audio, 16000, audio, 44100)


@pytest.mark.parametrize("channels", [1, 3])
def test_a_result_of_the_inputs_length_with_another_channel_count_is_fitted_with_a_warning(channels):
    """Only the channel count is wrong (a mono result, or one channel too many, for stereo): the channels the input
    has are kept in order, a missing one is silence, and the warning says so; a length alone was checked."""
    audio = np.zeros((2, 100), np.float32)
    result = np.stack([np.full(100, c + 1.0, np.float32) for c in range(channels)])
    fitted, warnings = conform(result[0] if channels == 1 else result, 16000, audio, 16000)
    assert fitted.shape == (2, 100) and fitted.dtype == np.float32
    assert fitted[0].tolist() == [1.0] * 100
    assert fitted[1].tolist() == ([0.0] * 100 if channels == 1 else [2.0] * 100)
    assert warnings == [f"the engine returned ({channels}, 100) for an input of (2, 100): fitted to the input"]
    assert conform(result[:1].repeat(2, axis=0), 16000, audio, 16000)[1] == []  # the input's shape: as it is


def test_a_result_renamed_because_its_name_was_taken_is_still_written_only_inside_the_roots(tmp_path):
    """The name taken meanwhile gives way to another (on_exists); that write is checked against the roots as the first
    was: a name outside them is refused and nothing is written there (a mutation review dropped the roots from it)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    source = write_wav(root / "in.wav")
    target = root / "r.wav"
    target.write_bytes(b"mine")
    with pytest.raises(UnsafeDestination, match="not inside an allowed folder"):
        edit_region(
            FakeEditor(), source, 0.0, -1.0, "extract drums", target,
            on_exists=lambda taken: outside / "r-2.wav", roots=[root],
        )  # fmt: skip
    assert list(outside.iterdir()) == [] and target.read_bytes() == b"mine"
    done = edit_region(
        FakeEditor(), source, 0.0, -1.0, "extract drums", target,
        on_exists=lambda taken: taken.with_name("r-2.wav"), roots=[root],
    )  # fmt: skip
    assert done.output_path == root / "r-2.wav" and sf.info(done.output_path).frames == 16000


def test_a_cancel_during_the_edit_writes_nothing(tmp_path):
    source = write_wav(tmp_path / "in.wav")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        edit_region(FakeEditor(deaf=True), source, 0.0, -1.0, "extract drums", tmp_path / "r.wav", cancel=cancel)
    assert not (tmp_path / "r.wav").exists()


def test_the_engines_end_is_not_said_done_before_the_result_is_written(tmp_path, tiny_editor):
    """The Editor ends at (1.0, "done"); the job then writes its result: a client that took that stage for the end
    read a file not written yet."""
    source = write_wav(tmp_path / "in.wav", seconds=1.0)
    seen = []
    edit_region(tiny_editor, source, 0.0, -1.0, "extract drums", tmp_path / "r.wav", progress=lambda *p: seen.append(p))
    assert "done" not in {stage for _, stage in seen} and ("edited" in {stage for _, stage in seen})
    assert seen[-1] == (0.99, "writing") and max(fraction for fraction, _ in seen) == 0.99
