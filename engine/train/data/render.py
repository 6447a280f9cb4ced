"""MIDI part -> mono audio through General MIDI soundfonts, plus light per-stem effects.

Two renderers with one interface (`render(part, font_index, seconds)`): `FluidRenderer` (FluidSynth, a system
library) and `TinyRenderer` (the `tinysoundfont` wheel, TinySoundFont compiled in: no system library, so it runs on
a bare accelerator machine that gets only carried wheels). `make_renderer(backend, ...)` picks one; "auto" prefers
FluidSynth where its library loads, else tinysoundfont. The two differ in timbre (their own envelopes and filters),
not in shape or level: every stem is scaled to a target RMS afterwards (synth.py), whatever the renderer's gain.

One FluidSynth instance holds every soundfont for the whole run (FluidR3 takes ~0.4 s to load); each part is
rendered alone after a full reset, in float (no dither), so the same part always gives the same samples.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import pretty_midi

from engine.errors import ConfigError, ResourceError
from engine.train.data import RENDERERS

DEBIAN_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
TIMGM6MB = Path(os.path.dirname(pretty_midi.__file__)) / "TimGM6mb.sf2"  # inside the pretty_midi wheel


def default_soundfonts() -> list[Path]:
    """pretty_midi's TimGM6mb.sf2 and Debian's FluidR3_GM.sf2, those that exist."""
    fonts = [TIMGM6MB, DEBIAN_SOUNDFONT]
    return [path for path in fonts if path.is_file()]


def midi_events(part: pretty_midi.Instrument, sample_rate: int, total: int) -> list[tuple[int, int, int, int]]:
    """A part's notes, controllers and pitch bends as (sample, order, a, b), sorted: at one sample, note-offs (order
    0) go before controllers and bends (1) and note-ons (2); a >= 1000 is controller a - 1000, a == -1 a bend."""
    events: list[tuple[int, int, int, int]] = []
    for note in part.notes:
        start = int(round(note.start * sample_rate))
        if start >= total:
            continue
        events.append((start, 2, note.pitch, note.velocity))
        events.append((int(round(note.end * sample_rate)), 0, note.pitch, 0))
    for change in part.control_changes:
        events.append((int(round(change.time * sample_rate)), 1, 1000 + change.number, change.value))
    for bend in part.pitch_bends:
        events.append((int(round(bend.time * sample_rate)), 1, -1, bend.pitch))
    return sorted(events)


class FluidRenderer:
    """Renders one MIDI part at a time to mono float32 at `sample_rate`."""

    def __init__(self, soundfonts: list[str | Path], sample_rate: int) -> None:
        try:
            import fluidsynth
        except ImportError as exc:  # the Python package is installed; the C library may not be
            raise ResourceError(
                "FluidSynth is not available: install it (Debian: apt install fluidsynth; macOS: brew install "
                "fluid-synth)"
            ) from exc
        if not soundfonts:
            raise ConfigError("no soundfont: pass --soundfont PATH (a General MIDI .sf2)")
        self.sample_rate = int(sample_rate)
        # FluidSynth's own reverb and chorus are off: effects are ours, seeded and recorded.
        self.synth = fluidsynth.Synth(
            gain=0.4,
            samplerate=float(sample_rate),
            **{"synth.reverb.active": 0, "synth.chorus.active": 0, "synth.polyphony": 256},
        )
        self.soundfonts = [Path(path) for path in soundfonts]
        self.font_ids: list[int] = []
        for path in self.soundfonts:
            if not path.is_file():
                raise ConfigError(f"soundfont {path} does not exist")
            font_id = self.synth.sfload(str(path))
            if font_id < 0:
                raise ConfigError(f"soundfont {path} could not be loaded (not a .sf2 file?)")
            self.font_ids.append(font_id)
        self._write = fluidsynth._fl.fluid_synth_write_float
        self._write.argtypes = [ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p, ctypes.c_int, ctypes.c_int] * 2
        self._write.restype = ctypes.c_int

    def close(self) -> None:
        self.synth.delete()

    def __enter__(self) -> FluidRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _render_into(self, left: np.ndarray, right: np.ndarray, begin: int, end: int) -> None:
        position = begin
        while position < end:
            count = min(end - position, 8192)
            self._write(
                self.synth.synth,
                count,
                left[position:].ctypes.data,
                0,
                1,
                right[position:].ctypes.data,
                0,
                1,
            )
            position += count

    def render(self, part: pretty_midi.Instrument, font_index: int, seconds: float) -> np.ndarray:
        """Mono float32 [round(seconds * rate)] of one part through soundfont `font_index`."""
        synth = self.synth
        synth.system_reset()
        channel = 9 if part.is_drum else 0
        bank = 128 if part.is_drum else 0
        font_id = self.font_ids[font_index]
        if synth.program_select(channel, font_id, bank, int(part.program)) != 0:
            synth.program_select(channel, font_id, bank, 0)  # this soundfont lacks the program (or kit)
        total = int(round(seconds * self.sample_rate))
        events = midi_events(part, self.sample_rate, total)
        left = np.zeros(total + 8192, np.float32)
        right = np.zeros(total + 8192, np.float32)
        position = 0
        for sample, order, a, b in events:
            if sample >= total:
                break
            if sample > position:
                self._render_into(left, right, position, sample)
                position = sample
            if order == 2:
                synth.noteon(channel, a, b)
            elif order == 0:
                synth.noteoff(channel, a)
            elif a == -1:
                synth.pitch_bend(channel, b)
            else:
                synth.cc(channel, a - 1000, b)
        # FluidSynth renders 64-sample blocks and keeps the unread rest of a block for the next call; ending each part
        # on a block boundary makes every part start at block phase 0, so a part sounds the same whatever came before.
        self._render_into(left, right, position, -(-total // 64) * 64)
        self._silence(channel)
        return 0.5 * (left[:total] + right[:total])

    def _silence(self, channel: int) -> None:
        # all_sounds_off still lets voices fade for ~0.1 s: render (and drop) blocks until none sounds, so the next
        # part starts from a silent synth.
        self.synth.all_sounds_off(channel)
        scratch = np.zeros(1024, np.float32)
        for _ in range(10 * self.sample_rate // 1024):
            if self.synth.get_active_voice_count() == 0:
                break
            self._write(self.synth.synth, 1024, scratch.ctypes.data, 0, 1, scratch.ctypes.data, 0, 1)


class TinyRenderer:
    """Renders one MIDI part at a time to mono float32 at `sample_rate` through TinySoundFont (`tinysoundfont`).

    Each soundfont's bytes are read once; every part gets a fresh synth holding only the soundfont it plays (parsing
    TimGM6mb.sf2 from memory takes ~10 ms, FluidR3_GM.sf2 ~1 s), so a part sounds the same whatever came before it:
    one synth re-used with its channel reset still carried something from part to part (a drum part differed by
    up to 0.004). A renderer can therefore serve many tracks (synth.py keeps one per process).
    """

    GAIN_DB = -12.0  # about FluidRenderer's level at gain 0.4 (TimGM6mb); stems are levelled afterwards anyway

    def __init__(self, soundfonts: list[str | Path], sample_rate: int) -> None:
        try:
            import tinysoundfont
        except ImportError as exc:
            raise ResourceError(
                "tinysoundfont is not installed: pip install --no-deps tinysoundfont (its pyaudio requirement is for "
                "playback only)"
            ) from exc
        if not soundfonts:
            raise ConfigError("no soundfont: pass --soundfont PATH (a General MIDI .sf2)")
        self._tsf = tinysoundfont
        self.sample_rate = int(sample_rate)
        self.soundfonts = [Path(path) for path in soundfonts]
        self._fonts: list[bytes] = []
        for path in self.soundfonts:
            if not path.is_file():
                raise ConfigError(f"soundfont {path} does not exist")
            data = path.read_bytes()
            if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
                raise ConfigError(f"soundfont {path} could not be loaded (not a .sf2/.sf3 file)")
            try:  # once here: a damaged body failed at the first part, mid-render, without the file's name
                tinysoundfont.Synth(samplerate=self.sample_rate).sfload(data)
            except RuntimeError as exc:
                raise ConfigError(f"soundfont {path} could not be loaded: {exc} (is it damaged?)") from None
            self._fonts.append(data)

    def close(self) -> None:
        self._fonts = []

    def __enter__(self) -> TinyRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def render(self, part: pretty_midi.Instrument, font_index: int, seconds: float) -> np.ndarray:
        """Mono float32 [round(seconds * rate)] of one part through soundfont `font_index`."""
        synth = self._tsf.Synth(gain=self.GAIN_DB, samplerate=self.sample_rate)
        font_id = synth.sfload(self._fonts[font_index], max_voices=256)
        channel = 9 if part.is_drum else 0
        try:  # drum mode looks the kit up in bank 128 (falling back to the standard kit)
            synth.program_select(channel, font_id, 0, int(part.program), is_drums=bool(part.is_drum))
        except RuntimeError:  # this soundfont lacks the program
            synth.program_select(channel, font_id, 0, 0, is_drums=bool(part.is_drum))
        total = int(round(seconds * self.sample_rate))
        events = midi_events(part, self.sample_rate, total)
        out = np.zeros((total, 2), np.float32)
        position = 0

        def advance(until: int) -> None:
            nonlocal position
            if until > position:
                block = synth.generate_simple(until - position)
                out[position:until] = np.frombuffer(block, np.float32).reshape(-1, 2)
                position = until

        for sample, order, a, b in events:
            if sample >= total:
                break
            advance(sample)
            if order == 2:
                synth.noteon(channel, a, b)
            elif order == 0:
                synth.noteoff(channel, a)
            elif a == -1:
                synth.pitchbend(channel, int(np.clip(b + 8192, 0, 16383)))  # pretty_midi: -8192..8191
            else:
                synth.control_change(channel, a - 1000, b)
        advance(total)
        return 0.5 * (out[:, 0] + out[:, 1])


def fluidsynth_available() -> bool:
    """Whether the FluidSynth C library loads (the pyfluidsynth package alone is not enough)."""
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def resolve_backend(backend: str) -> str:
    """The renderer `backend` names: "auto" is fluidsynth where its library loads, else tinysoundfont."""
    if backend not in RENDERERS:
        raise ConfigError(f"unknown renderer {backend!r}: use {', '.join(RENDERERS)}")
    if backend == "auto":
        return "fluidsynth" if fluidsynth_available() else "tinysoundfont"
    return backend


def make_renderer(backend: str, soundfonts: list[str | Path], sample_rate: int) -> FluidRenderer | TinyRenderer:
    """A renderer of `backend` (see RENDERERS) over `soundfonts` at `sample_rate`."""
    if resolve_backend(backend) == "fluidsynth":
        return FluidRenderer(soundfonts, sample_rate)
    return TinyRenderer(soundfonts, sample_rate)


# ---- effects ------------------------------------------------------------------------------------------------------


def random_effects(cls: str, rng: np.random.Generator) -> list[dict]:
    """A light, seeded effects chain for one stem: EQ, maybe compression, maybe reverb (as plain settings)."""
    chain: list[dict] = []
    low_cut = {"Bass": 30.0, "Drums": 35.0}.get(cls, 80.0)
    chain.append({"type": "highpass", "cutoff_hz": round(float(low_cut * rng.uniform(0.7, 1.5)), 1)})
    if rng.random() < 0.7:
        chain.append(
            {
                "type": "peak",
                "cutoff_hz": round(float(np.exp(rng.uniform(np.log(200), np.log(5000)))), 1),
                "gain_db": round(float(rng.uniform(-4, 4)), 2),
                "q": round(float(rng.uniform(0.7, 2.0)), 2),
            }
        )
    if rng.random() < 0.5:
        chain.append({"type": "highshelf", "cutoff_hz": 6000.0, "gain_db": round(float(rng.uniform(-4, 3)), 2)})
    if rng.random() < 0.5:
        chain.append(
            {
                "type": "compressor",
                "threshold_db": round(float(rng.uniform(-24, -10)), 1),
                "ratio": round(float(rng.uniform(2, 4)), 2),
                "attack_ms": round(float(rng.uniform(2, 20)), 1),
                "release_ms": round(float(rng.uniform(60, 250)), 1),
            }
        )
    if rng.random() < (0.3 if cls in ("Bass", "Drums") else 0.6):
        wet = float(rng.uniform(0.05, 0.2 if cls in ("Bass", "Drums") else 0.3))
        chain.append(
            {
                "type": "reverb",
                "room_size": round(float(rng.uniform(0.1, 0.6)), 2),
                "damping": round(float(rng.uniform(0.3, 0.7)), 2),
                "wet_level": round(wet, 3),
                "dry_level": round(1.0 - wet, 3),
            }
        )
    return chain


def apply_effects(audio: np.ndarray, chain: list[dict], sample_rate: int) -> np.ndarray:
    """Run a chain from `random_effects` with pedalboard; mono float32 [N] in and out."""
    if not chain:
        return audio
    import pedalboard

    plugins = []
    for setting in chain:
        kind = setting["type"]
        if kind == "highpass":
            plugins.append(pedalboard.HighpassFilter(cutoff_frequency_hz=setting["cutoff_hz"]))
        elif kind == "peak":
            plugins.append(
                pedalboard.PeakFilter(
                    cutoff_frequency_hz=setting["cutoff_hz"], gain_db=setting["gain_db"], q=setting["q"]
                )
            )
        elif kind == "highshelf":
            plugins.append(
                pedalboard.HighShelfFilter(cutoff_frequency_hz=setting["cutoff_hz"], gain_db=setting["gain_db"])
            )
        elif kind == "compressor":
            plugins.append(
                pedalboard.Compressor(
                    threshold_db=setting["threshold_db"],
                    ratio=setting["ratio"],
                    attack_ms=setting["attack_ms"],
                    release_ms=setting["release_ms"],
                )
            )
        elif kind == "reverb":
            plugins.append(
                pedalboard.Reverb(
                    room_size=setting["room_size"],
                    damping=setting["damping"],
                    wet_level=setting["wet_level"],
                    dry_level=setting["dry_level"],
                    width=0.0,
                )
            )
        else:
            raise ValueError(f"unknown effect {kind!r}")
    board = pedalboard.Pedalboard(plugins)
    return board(audio[None, :].astype(np.float32), sample_rate, reset=True)[0]


def active_rms(audio: np.ndarray, sample_rate: int) -> float:
    """RMS over the 50 ms frames that sound (above -60 dBFS), so sparse parts are not boosted by their rests."""
    frame = max(1, sample_rate // 20)
    usable = audio[: (audio.shape[0] // frame) * frame].reshape(-1, frame) if audio.shape[0] >= frame else audio[None]
    energy = np.mean(usable.astype(np.float64) ** 2, axis=1)
    active = energy[energy > 1e-6]
    return float(np.sqrt(active.mean())) if active.size else 0.0
