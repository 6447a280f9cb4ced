"""Audition playback: `imusic play`, `imusic edit --play/--ab`, and the server's /imusic/preview.

Everything plays through one small interface, `Player` (non-blocking `play`, `stop`, `is_playing`, `wait`), so that
tests and machines without a sound card use `FakePlayer` and nothing else changes. `get_player(device)` returns the
PortAudio implementation (sounddevice); when sounddevice or PortAudio is missing, or there is no output device, it
raises `PlaybackUnavailable` with one line saying how to fix it. sounddevice is imported only inside functions:
PortAudio is optional and importing it costs time.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np

from bridge.cli import add_region_options
from engine.errors import ConfigError, ResourceError
from engine.files import AUDIO_FORMATS

INSTALL_HINT = "pip install sounddevice (on Debian/Ubuntu also: apt install libportaudio2)"
NO_DEVICE = (
    "no audio output device found: connect or enable one (`imusic play --list-devices` lists what PortAudio sees)"
)
AB_SEGMENT_SECONDS = 4.0


class PlaybackUnavailable(ResourceError):
    """No way to play sound here: sounddevice/PortAudio missing, or no output device."""

    code = "no_playback"


class Player:
    """Plays one clip at a time. `play` returns at once; a new `play` replaces what is playing. A player sets its
    `_done` event when its clip ends or is stopped; what is playing and the wait for it follow from that."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._done.set()  # nothing is playing

    def play(self, audio: np.ndarray, sample_rate: int) -> None:  # audio [C, N] float32
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def is_playing(self) -> bool:
        return not self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the clip ends (or `timeout` seconds); True when nothing is playing any more."""
        return self._done.wait(timeout)


def _check_clip(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Validate a clip and return it as contiguous float32 [C, N]."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.ndim != 2 or audio.shape[0] < 1:
        raise ConfigError(f"playback expects audio shaped [channels, samples], got {tuple(audio.shape)}")
    if int(sample_rate) <= 0:
        raise ConfigError(f"playback needs a positive sample rate, got {sample_rate}")
    return np.ascontiguousarray(audio)


class FakePlayer(Player):
    """A player without a sound card: records every clip and 'plays' it on a timer.

    `time_scale` multiplies the clip's duration (1.0 = real time, 0.0 = ends at once); tests use small values.
    """

    def __init__(self, time_scale: float = 1.0, device: str | int | None = None) -> None:
        super().__init__()
        self.time_scale = float(time_scale)
        self.device = device
        self.played: list[tuple[np.ndarray, int]] = []  # every clip handed to play(), in order
        self.stopped = 0  # how many times stop() cut a clip short
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def play(self, audio: np.ndarray, sample_rate: int) -> None:
        audio = _check_clip(audio, sample_rate)
        with self._lock:
            self._cancel_timer()
            self.played.append((audio, int(sample_rate)))
            seconds = audio.shape[1] / float(sample_rate) * self.time_scale
            done = threading.Event()
            self._done = done
            self._timer = threading.Timer(seconds, done.set)
            self._timer.daemon = True
            self._timer.start()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stop(self) -> None:
        with self._lock:
            if not self._done.is_set():
                self.stopped += 1
            self._cancel_timer()
            self._done.set()


def fold_channels(audio: np.ndarray, max_channels: int) -> np.ndarray:
    """`audio` [C, N] for a device of `max_channels`: as it is where it fits; a 5.1 or 7.1 region (WAV's channel order:
    L R C LFE, then the surrounds left and right in turn) as the ITU downmix to stereo (centre and surrounds at -3 dB,
    no LFE), lowered only where the sum would pass full scale; other counts as their mean on every channel. The mean
    of every channel played a 5.1 region as quiet mono: a part on one side 15 dB down, the stereo image gone."""
    channels = audio.shape[0]
    if channels <= max_channels:
        return audio
    if channels in (6, 8) and max_channels >= 2:
        half = 10 ** (-3 / 20)
        left = audio[0] + half * (audio[2] + audio[4::2].sum(axis=0))
        right = audio[1] + half * (audio[2] + audio[5::2].sum(axis=0))
        stereo = np.stack([left, right])
        peak = float(np.max(np.abs(stereo))) if stereo.size else 0.0
        return (stereo / peak if peak > 1.0 else stereo).astype(np.float32)
    return np.repeat(audio.mean(axis=0, keepdims=True), max(1, max_channels), axis=0).astype(np.float32)


class SoundDevicePlayer(Player):
    """PortAudio output through sounddevice, one stream per clip, fed from a callback (never blocks the caller)."""

    def __init__(self, device: int | None = None) -> None:
        import sounddevice

        super().__init__()
        self._sd = sounddevice
        self.device = device
        self._stream: Any = None
        self._lock = threading.Lock()

    def play(self, audio: np.ndarray, sample_rate: int) -> None:
        audio = _check_clip(audio, sample_rate)
        try:  # no default output device (none plugged in, or the system names none) is PortAudio's error here
            info = self._sd.query_devices(self.device, "output")
        except (self._sd.PortAudioError, ValueError) as exc:
            raise PlaybackUnavailable(f"no output device to play on ({exc}); name one with --device") from None
        # More channels than the device has: fold down to what it can play rather than refuse to audition.
        frames = np.ascontiguousarray(fold_channels(audio, int(info["max_output_channels"])).T)  # [N, C] interleaved
        rate = int(sample_rate)
        # Hardware devices often take only their own rate (no resampling plug-in in between): converted to it, but
        # only where the device takes that rate and not this one; a busy device refused the converted hour too, after
        # seconds of conversion and gigabytes of memory
        device_rate = int(info["default_samplerate"])
        if not self._takes(frames.shape[1], rate) and device_rate != rate and self._takes(frames.shape[1], device_rate):
            from engine.resample import resample

            frames, rate = np.ascontiguousarray(resample(frames.T, rate, device_rate).T), device_rate
        self.stop()
        try:
            stream, done = self._open(frames, rate)
        except self._sd.PortAudioError as exc:
            raise PlaybackUnavailable(f"cannot open output device {info['name']!r} at {rate} Hz: {exc}") from None
        with self._lock:
            self._stream, self._done = stream, done

    def _takes(self, channels: int, sample_rate: int) -> bool:
        """Whether the device says it can play `channels` at `sample_rate` (asked before any stream is opened)."""
        try:
            self._sd.check_output_settings(device=self.device, channels=channels, samplerate=sample_rate)
        except self._sd.PortAudioError:
            return False
        return True

    def _open(self, frames: np.ndarray, sample_rate: int) -> tuple[Any, threading.Event]:
        """Start a stream that plays `frames` [N, C] once from a callback; returns (stream, finished event)."""
        done = threading.Event()
        position = [0]

        def callback(outdata, frame_count, _time, _status):
            start = position[0]
            chunk = frames[start : start + frame_count]
            outdata[: len(chunk)] = chunk
            if len(chunk) < frame_count:
                outdata[len(chunk) :] = 0
                raise self._sd.CallbackStop
            position[0] = start + frame_count

        stream = self._sd.OutputStream(
            samplerate=sample_rate,
            channels=frames.shape[1],
            dtype="float32",
            device=self.device,
            callback=callback,
            finished_callback=done.set,
        )
        try:
            stream.start()
        except BaseException:
            stream.close()
            raise
        return stream, done

    def stop(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
            self._done.set()
        if stream is not None:
            stream.abort()
            stream.close()


def _import_sounddevice():
    try:
        import sounddevice
    except ImportError:
        raise PlaybackUnavailable(f"playback needs the sounddevice package: {INSTALL_HINT}") from None
    except OSError:
        # sounddevice raises OSError when the PortAudio library itself cannot be found.
        raise PlaybackUnavailable(f"playback needs the PortAudio library: {INSTALL_HINT}") from None
    return sounddevice


def list_output_devices() -> list[dict]:
    """Output devices as dicts: index, name, channels, default_samplerate, is_default."""
    sounddevice = _import_sounddevice()
    default_out = sounddevice.default.device[1]
    devices = []
    for index, info in enumerate(sounddevice.query_devices()):
        if int(info["max_output_channels"]) > 0:
            devices.append(
                {
                    "index": index,
                    "name": info["name"],
                    "channels": int(info["max_output_channels"]),
                    "default_samplerate": float(info["default_samplerate"]),
                    "is_default": index == default_out,
                }
            )
    return devices


def resolve_device(device: str | int | None, devices: list[dict]) -> int | None:
    """Pick an output device by index or by (case-insensitive, partial) name; None = the system default."""
    if device is None or device == "":
        if not devices:
            # sounddevice and PortAudio are there (they listed the devices): the cause is the missing device alone.
            raise PlaybackUnavailable(NO_DEVICE)
        return None
    if isinstance(device, int) or str(device).strip().isdigit():
        index = int(device)
        if any(d["index"] == index for d in devices):
            return index
        raise ConfigError(f"no output device with index {index}; {_describe(devices)}")
    wanted = str(device).strip().lower()
    exact = [d for d in devices if d["name"].lower() == wanted]
    matches = exact or [d for d in devices if wanted in d["name"].lower()]
    if len(matches) == 1:
        return matches[0]["index"]
    if not matches:
        raise ConfigError(f"no output device named '{device}'; {_describe(devices)}")
    names = ", ".join(f"{d['index']}: {d['name']}" for d in matches)
    raise ConfigError(f"output device '{device}' is ambiguous ({names}); give its index")


def _describe(devices: list[dict]) -> str:
    if not devices:
        return "this machine has no output device"
    return "available: " + ", ".join(f"{d['index']}: {d['name']}" for d in devices)


def get_player(device: str | int | None = None) -> Player:
    """The real player on `device` (name or index; None = default). Raises PlaybackUnavailable when impossible."""
    devices = list_output_devices()
    return SoundDevicePlayer(resolve_device(device, devices))


def ab_schedule(
    num_samples: int, sample_rate: int, segment_s: float = AB_SEGMENT_SECONDS
) -> list[tuple[str, int, int]]:
    """A/B plan: ("source"|"result", start, end) sample ranges, switching version every `segment_s` while time runs on.

    The clip keeps moving forward so the listener hears the music continue, alternately as it was and as edited.
    """
    step = max(1, int(round(segment_s * sample_rate)))
    plan = []
    for i, start in enumerate(range(0, num_samples, step)):
        plan.append(("source" if i % 2 == 0 else "result", start, min(start + step, num_samples)))
    return plan


def play_ab(
    player: Player,
    source: np.ndarray,
    result: np.ndarray,
    sample_rate: int,
    *,
    segment_s: float = AB_SEGMENT_SECONDS,
    should_stop: Callable[[], bool] = lambda: False,
    on_segment: Callable[[str, float, float], None] | None = None,
) -> bool:
    """Alternate source and result (both [C, N], same length) until the clip ends or `should_stop()`.

    Returns True when the whole clip was heard, False when stopped early.
    """
    if source.shape[-1] != result.shape[-1]:
        raise ConfigError("A/B needs the source and the result at the same length")
    clips = {"source": source, "result": result}
    for label, start, end in ab_schedule(source.shape[-1], sample_rate, segment_s):
        if should_stop():
            player.stop()
            return False
        if on_segment is not None:
            on_segment(label, start / sample_rate, end / sample_rate)
        player.play(clips[label][:, start:end], sample_rate)
        # Poll so a key press cuts the segment short instead of waiting up to segment_s.
        while not player.wait(0.05):
            if should_stop():
                player.stop()
                return False
    return True


class KeyWatcher:
    """Reports a key press on a terminal without Enter (cbreak mode on POSIX ttys; Enter elsewhere)."""

    def __init__(self, stream=None) -> None:
        self._stream = stream if stream is not None else sys.stdin
        self._saved = None
        self._pressed = threading.Event()

    def __enter__(self) -> KeyWatcher:
        try:
            import termios
            import tty

            if self._stream.isatty():
                fd = self._stream.fileno()
                self._saved = termios.tcgetattr(fd)
                tty.setcbreak(fd)
        except (ImportError, OSError, ValueError, AttributeError):
            self._saved = None
        threading.Thread(target=self._watch, daemon=True).start()
        return self

    def _watch(self) -> None:
        try:
            if self._stream.read(1):
                self._pressed.set()
        except (OSError, ValueError):
            pass

    def pressed(self) -> bool:
        return self._pressed.is_set()

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._stream.fileno(), termios.TCSADRAIN, self._saved)


def play_clip(player: Player, audio: np.ndarray, sample_rate: int, should_stop: Callable[[], bool]) -> bool:
    """Play one clip to its end or until `should_stop()`; True when heard to the end."""
    player.play(audio, sample_rate)
    while not player.wait(0.05):
        if should_stop():
            player.stop()
            return False
    return True


# --- imusic play -------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", help=f"audio file to play ({AUDIO_FORMATS})")
    add_region_options(parser)
    parser.add_argument("--device", default=None, help="output device, by name (or part of it) or index")
    parser.add_argument("--list-devices", action="store_true", help="list the output devices and exit")


def print_devices(out: TextIO | None = None) -> None:
    out = out or sys.stdout
    devices = list_output_devices()
    if not devices:
        out.write("no audio output device found\n")
    for d in devices:
        mark = "*" if d["is_default"] else " "
        out.write(f"{mark} {d['index']:3d}  {d['name']}  ({d['channels']} ch, {d['default_samplerate']:.0f} Hz)\n")


def run(args: argparse.Namespace, player: Player | None = None) -> int:
    """`imusic play`: play FILE (or a region of it) and wait; a key press stops it."""
    if args.list_devices:
        print_devices()
        return 0
    if not args.file:
        raise ConfigError("give a FILE to play, or --list-devices")
    from bridge.audio_read import probe, read_region, region_frames

    region_frames(probe(args.file), args.start, args.end)  # the file's header first: a missing file is not "no device"
    if player is None:
        player = get_player(args.device)  # before reading: no sound card is said before a long file is read
    audio, sample_rate = read_region(args.file, args.start, args.end)
    seconds = audio.shape[-1] / sample_rate
    sys.stderr.write(f"playing {args.file} ({seconds:.1f} s); press a key to stop\n")
    started = time.monotonic()
    with KeyWatcher() as keys:
        finished = play_clip(player, audio, sample_rate, keys.pressed)
    if not finished:
        sys.stderr.write(f"stopped after {time.monotonic() - started:.1f} s\n")
    return 0
