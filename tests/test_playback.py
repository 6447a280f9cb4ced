"""Audition playback: the Player interface, device choice, A/B alternation, and clear errors without a sound card."""

from __future__ import annotations

import argparse
import builtins
import io
import sys
import threading
import time

import numpy as np
import pytest

from bridge import playback
from bridge.playback import FakePlayer, PlaybackUnavailable, ab_schedule, play_ab, resolve_device
from engine.errors import AudioError, ConfigError, ImusicError

DEVICES = [
    {"index": 0, "name": "HDA Intel PCH: ALC3246 Analog", "channels": 2, "default_samplerate": 48000.0},
    {"index": 3, "name": "Focusrite Scarlett 2i2", "channels": 2, "default_samplerate": 44100.0},
    {"index": 5, "name": "Scarlett Monitor Mix", "channels": 2, "default_samplerate": 44100.0},
]


def tone(seconds: float, sample_rate: int = 8000, channels: int = 2) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return np.repeat(0.1 * np.sin(2 * np.pi * 440 * t)[None, :], channels, axis=0).astype(np.float32)


def test_fake_player_play_returns_at_once_and_plays_for_the_clip_duration():
    player = FakePlayer(time_scale=1.0)
    player.play(tone(0.3), 8000)
    assert player.is_playing and player.wait(timeout=0) is False  # play() returned while the clip plays
    assert player._timer.interval == pytest.approx(0.3)  # for the clip's duration
    assert player.wait(timeout=5.0)
    assert not player.is_playing and player.stopped == 0


def test_fake_player_stop_ends_playback_early():
    player = FakePlayer(time_scale=1.0)
    player.play(tone(5.0), 8000)
    player.stop()
    assert not player.is_playing
    assert player.stopped == 1


def test_fake_player_records_clips_as_float32_channels_first():
    player = FakePlayer(time_scale=0.0)
    player.play(tone(0.1, channels=1)[0], 8000)  # a 1-D clip is taken as mono
    clip, rate = player.played[0]
    assert clip.shape == (1, 800) and clip.dtype == np.float32 and rate == 8000


def test_player_rejects_a_nonsense_sample_rate():
    with pytest.raises(ConfigError):
        FakePlayer().play(tone(0.1), 0)


def test_device_by_index():
    assert resolve_device(3, DEVICES) == 3
    assert resolve_device("5", DEVICES) == 5


def test_device_by_partial_name_case_insensitive():
    assert resolve_device("focusrite", DEVICES) == 3


def test_ambiguous_device_name_lists_the_candidates():
    with pytest.raises(ConfigError, match="ambiguous.*3: Focusrite.*5: Scarlett Monitor"):
        resolve_device("scarlett", DEVICES)


def test_unknown_device_lists_what_exists():
    with pytest.raises(ConfigError, match="no output device named 'Behringer'.*0: HDA Intel"):
        resolve_device("Behringer", DEVICES)
    with pytest.raises(ConfigError, match="no output device with index 9"):
        resolve_device(9, DEVICES)


def test_default_device_with_no_devices_says_how_to_fix_it_without_naming_installed_packages():
    with pytest.raises(PlaybackUnavailable, match="no audio output device found: connect or enable one") as info:
        resolve_device(None, [])
    assert "pip install" not in str(info.value)


def test_missing_sounddevice_is_one_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_sounddevice(name, *args, **kwargs):
        if name == "sounddevice":
            raise ImportError("No module named 'sounddevice'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sounddevice)
    with pytest.raises(PlaybackUnavailable, match="pip install sounddevice.*libportaudio2") as exc:
        playback.get_player()
    assert isinstance(exc.value, ImusicError)


def test_missing_portaudio_library_is_one_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_portaudio(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    with pytest.raises(PlaybackUnavailable, match="PortAudio library.*libportaudio2"):
        playback.get_player()


def test_ab_schedule_alternates_every_four_seconds_and_covers_the_clip():
    plan = ab_schedule(num_samples=10 * 100, sample_rate=100)
    assert plan == [("source", 0, 400), ("result", 400, 800), ("source", 800, 1000)]


def test_play_ab_plays_source_and_result_segments_in_turn():
    rate = 100
    source = np.zeros((2, 9 * rate), np.float32)
    result = np.ones((2, 9 * rate), np.float32)
    player = FakePlayer(time_scale=0.0)
    assert play_ab(player, source, result, rate, segment_s=4.0)
    assert [clip.shape[1] for clip, _ in player.played] == [400, 400, 100]
    assert [float(clip.mean()) for clip, _ in player.played] == [0.0, 1.0, 0.0]


def test_play_ab_stops_when_a_key_is_pressed():
    rate = 100
    source = np.zeros((1, 60 * rate), np.float32)
    player = FakePlayer(time_scale=1.0)  # a 4 s segment: only the key ends it early
    finished = play_ab(player, source, source.copy(), rate, should_stop=lambda: len(player.played) >= 1)
    assert not finished
    assert not player.is_playing and len(player.played) == 1 and player.stopped == 1  # cut short, not played out


def test_imusic_play_plays_the_requested_region(tmp_path, monkeypatch):
    import soundfile as sf

    rate = 8000
    path = tmp_path / "clip.wav"
    sf.write(path, tone(2.0, rate).T, rate, subtype="FLOAT")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no key is ever pressed
    player = FakePlayer(time_scale=0.0)
    args = argparse.Namespace(file=str(path), start=0.5, end=1.5, device=None, list_devices=False)
    assert playback.run(args, player=player) == 0
    clip, played_rate = player.played[0]
    assert played_rate == rate and clip.shape == (2, rate)


def test_imusic_play_without_an_end_plays_to_the_end_of_the_file(tmp_path, monkeypatch):
    import soundfile as sf

    path = tmp_path / "clip.wav"
    sf.write(path, tone(0.5, 8000, channels=1).T, 8000)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    player = FakePlayer(time_scale=0.0)
    parser = argparse.ArgumentParser()
    playback.add_arguments(parser)
    args = parser.parse_args([str(path)])  # no --end, as typed
    assert playback.run(args, player=player) == 0
    assert player.played[0][0].shape == (1, 4000)


def test_imusic_play_without_a_file_is_a_usage_error():
    args = argparse.Namespace(file=None, start=0.0, end=None, device=None, list_devices=False)
    with pytest.raises(ConfigError, match="--list-devices"):
        playback.run(args)


def test_imusic_play_of_a_file_it_cannot_read_says_so_before_asking_for_a_device(tmp_path, monkeypatch):
    """A missing file was said as "no audio output device found" on a machine without one."""

    def no_device(device=None):
        raise PlaybackUnavailable("no audio output device found")

    monkeypatch.setattr(playback, "get_player", no_device)
    (tmp_path / "text.wav").write_text("not audio")
    for name, says in (("missing.wav", "missing.wav"), ("text.wav", "cannot read")):
        args = argparse.Namespace(file=str(tmp_path / name), start=0.0, end=None, device=None, list_devices=False)
        with pytest.raises(AudioError, match=says):
            playback.run(args)


def _real_output_devices() -> list[dict]:
    try:
        return playback.list_output_devices()
    except PlaybackUnavailable:
        return []


@pytest.mark.skipif(not _real_output_devices(), reason="no audio output device on this machine")
def test_real_player_plays_a_short_clip_on_the_default_device():
    player = playback.get_player()
    player.play(tone(0.2, 48000), 48000)
    assert player.wait(timeout=5.0)
    assert not player.is_playing


@pytest.mark.skipif(bool(_real_output_devices()), reason="this machine has an output device")
def test_real_get_player_without_an_output_device_says_how_to_fix_it():
    with pytest.raises(PlaybackUnavailable, match="no audio output device found: connect or enable one"):
        playback.get_player()


class _FakeSoundDevice:
    """Stands in for the sounddevice module: streams run their callback on a thread, block by block, as PortAudio
    does, and keep what they were fed. `rates` are the sample rates the device accepts."""

    class PortAudioError(Exception):
        pass

    class CallbackStop(Exception):  # noqa: N818 (sounddevice's name)
        pass

    def __init__(
        self, channels: int = 2, rates: tuple[int, ...] = (8000, 48000), default_rate: int = 48000, busy: bool = False
    ):
        self.channels, self.rates, self.default_rate, self.busy = channels, rates, default_rate, busy
        self.streams: list = []
        self.default = type("Default", (), {"device": [-1, 0]})()
        module = self

        class OutputStream:
            def __init__(self, samplerate, channels, dtype, device, callback, finished_callback):
                module.check_output_settings(device, channels, dtype, samplerate=samplerate)
                self.samplerate, self.channels, self.callback = samplerate, channels, callback
                self.finished, self.fed, self.aborted = finished_callback, [], threading.Event()
                module.streams.append(self)

            def start(self):
                threading.Thread(target=self._run, daemon=True).start()

            def _run(self):
                while not self.aborted.is_set():
                    out = np.full((256, self.channels), np.nan, np.float32)
                    try:
                        self.callback(out, 256, None, None)
                    except module.CallbackStop:
                        self.fed.append(out)
                        break
                    self.fed.append(out)
                    time.sleep(0.001)
                self.finished()

            def abort(self):
                self.aborted.set()

            def close(self):
                pass

        self.OutputStream = OutputStream

    def query_devices(self, device=None, kind=None):
        if self.default.device[1] < 0 and device is None and kind:
            raise self.PortAudioError("Error querying device -1")  # the system names no default output
        info = {"name": "Fake Out", "max_output_channels": self.channels, "default_samplerate": self.default_rate}
        return info if kind else [info]

    def check_output_settings(self, device=None, channels=None, dtype=None, samplerate=None):
        if self.busy:  # another program holds the device
            raise self.PortAudioError("Device unavailable")
        if samplerate not in self.rates:
            raise self.PortAudioError("Invalid sample rate")
        self.checked = getattr(self, "checked", 0) + 1


def test_sounddevice_player_feeds_every_sample_then_reports_the_end(monkeypatch):
    fake = _FakeSoundDevice()
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    player = playback.get_player()
    clip = tone(0.1, 8000)  # 800 frames: three full blocks and a partial one
    player.play(clip, 8000)
    assert player.wait(timeout=5.0) and not player.is_playing
    fed = np.concatenate(fake.streams[0].fed)
    np.testing.assert_array_equal(fed[:800], clip.T)
    assert np.all(fed[800:] == 0)  # the tail of the last block is silence, not garbage


def test_sounddevice_player_folds_channels_the_device_lacks_and_resamples_to_a_rate_it_takes(monkeypatch):
    fake = _FakeSoundDevice(channels=1, rates=(48000,))
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    player = playback.get_player()
    player.play(tone(0.1, 8000, channels=2), 8000)
    assert player.wait(timeout=5.0)
    stream = fake.streams[-1]
    assert (stream.samplerate, stream.channels) == (48000, 1)
    assert sum(len(block) for block in stream.fed) >= 4800


def test_a_busy_device_is_one_line_and_the_clip_is_not_converted_for_nothing(monkeypatch):
    """Every failed open converted the whole clip to the device's rate and tried again: 14 s and 1.5 GB more for an
    hour of audio on a device another program held."""
    fake = _FakeSoundDevice(busy=True)
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    player = playback.get_player()
    converted = []
    monkeypatch.setattr("engine.resample.resample", lambda *a: converted.append(a) or pytest.fail("converted"))
    with pytest.raises(PlaybackUnavailable, match="cannot open output device 'Fake Out' at 44100 Hz: Device unavail"):
        player.play(tone(0.1, 44100), 44100)
    assert converted == [] and fake.streams == []


def test_no_default_output_device_is_one_line_not_portaudios_traceback(monkeypatch):
    fake = _FakeSoundDevice()
    fake.default.device = [-1, -1]
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    with pytest.raises(PlaybackUnavailable, match="no output device to play on .*Error querying device -1"):
        playback.SoundDevicePlayer(None).play(tone(0.1, 8000), 8000)


def test_a_surround_region_on_a_stereo_device_keeps_its_sides():
    """The mean of six channels played a 5.1 region as quiet mono: a part hard left 15 dB down, on both sides."""
    rate = 8000
    guitar = tone(0.5, rate)[0]
    surround = np.zeros((6, guitar.size), np.float32)
    surround[0] = guitar  # front left only
    stereo = playback.fold_channels(surround, 2)
    assert stereo.shape == (2, guitar.size)
    np.testing.assert_allclose(stereo[0], guitar, atol=1e-6)
    assert np.abs(stereo[1]).max() == 0.0
    surround[2] = 0.9  # a loud centre: the sum is lowered to full scale, never clipped
    assert np.abs(playback.fold_channels(surround, 2)).max() <= 1.0 + 1e-6
    assert playback.fold_channels(surround, 6) is surround
    assert playback.fold_channels(surround[:4], 1).shape == (1, guitar.size)


def test_sounddevice_player_stop_aborts_the_stream(monkeypatch):
    fake = _FakeSoundDevice()
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    player = playback.get_player()
    player.play(tone(30.0, 8000), 8000)
    assert player.is_playing
    player.stop()
    assert not player.is_playing and fake.streams[0].aborted.is_set()
