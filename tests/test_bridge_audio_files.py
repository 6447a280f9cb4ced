"""bridge.audio_read and audio_write: exact regions of any readable file, atomic float WAV results, unique result
names."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
from pedalboard.io import AudioFile
from test_bridge_support import dead_pid

from bridge.audio_read import probe, read_region
from bridge.audio_write import unique_result_path, write_atomic
from engine.errors import AudioError, ConfigError
from engine.files import MAX_RESULT_NAME_BYTES, slug


def ramp_file(path, sample_rate=44100, channels=2, seconds=3.0, **kwargs):
    """A file whose samples say where they are: channel c at frame i holds (i / frames) * (1 - 0.5 c) * 0.8."""
    frames = int(sample_rate * seconds)
    audio = np.linspace(0, 0.8, frames, endpoint=False)[None, :] * (1 - 0.5 * np.arange(channels))[:, None]
    with AudioFile(str(path), "w", sample_rate, channels, **kwargs) as f:
        f.write(audio.astype(np.float32))
    return audio.astype(np.float32)


@pytest.mark.parametrize("sample_rate,channels", [(44100, 2), (48000, 1), (22050, 6), (8000, 1)])
def test_read_region_returns_exactly_the_region_at_the_file_rate(tmp_path, sample_rate, channels):
    path = tmp_path / "a.wav"
    audio = ramp_file(path, sample_rate, channels, bit_depth=32)
    region, rate = read_region(path, 1.25, 2.0)
    start, stop = round(1.25 * sample_rate), round(2.0 * sample_rate)
    assert rate == sample_rate and region.dtype == np.float32
    np.testing.assert_array_equal(region, audio[:, start:stop])


@pytest.mark.parametrize("suffix,tolerance", [(".flac", 1e-4), (".aiff", 1e-4), (".ogg", 0.05), (".mp3", 0.05)])
def test_compressed_and_other_formats_read_the_region_length_exactly(tmp_path, suffix, tolerance):
    path = tmp_path / f"a{suffix}"
    extra = {"quality": "V2"} if suffix == ".mp3" else {}
    audio = ramp_file(path, 44100, 2, **extra)
    region, rate = read_region(path, 0.5, 1.5)
    assert rate == 44100 and region.shape == (2, 44100)
    if suffix in (".flac", ".aiff"):
        np.testing.assert_allclose(region, audio[:, 22050:66150], atol=tolerance)
    else:  # lossy codecs shift and smear samples; the region's level must still be that of the ramp there
        assert abs(float(np.mean(region[0])) - float(np.mean(audio[0, 22050:66150]))) < tolerance


def test_an_mp3_reads_without_its_encoders_delay_as_a_daw_shows_it(tmp_path):
    rate = 44100
    clicks = np.zeros((2, 3 * rate), dtype=np.float32)
    clicks[:, rate] = 0.9  # one click at exactly 1 s
    path = tmp_path / "click.mp3"
    sf.write(path, clicks.T, rate, format="MP3")  # LAME: its header records the encoder's delay and padding
    assert probe(path).frames == 3 * rate
    whole, _ = read_region(path, 0.0, -1.0)
    assert whole.shape == (2, 3 * rate)
    assert abs(int(np.argmax(np.abs(whole[0]))) - rate) <= 2  # pedalboard put it 1105 samples (25 ms) late
    region, _ = read_region(path, 0.5, 1.5)
    assert abs(int(np.argmax(np.abs(region[0]))) - rate // 2) <= 2


def test_an_mp3_region_is_the_same_audio_as_that_span_of_the_whole_file(tmp_path):
    """mpg123 seeks without decoding the frames before: a region started mid-file came back with up to 90 ms of
    silence or wrong samples at its start (the bit reservoir), which the mask mode then built its result from."""
    rate = 44100
    t = np.arange(6 * rate) / rate
    rng = np.random.default_rng(0)
    bass = 0.3 * np.sin(2 * np.pi * 55 * t) * (np.sin(2 * np.pi * t) > 0)
    hits = np.zeros_like(t)
    for start in range(0, len(t), rate // 2):  # a decaying noise burst every half second: the reservoir at work
        n = min(rate // 10, len(t) - start)
        hits[start : start + n] = rng.normal(0, 0.5, n) * np.exp(-np.arange(n) / (0.02 * rate))
    mono = bass + 0.1 * np.sin(2 * np.pi * 261.6 * t) + hits
    path = tmp_path / "song.mp3"
    sf.write(path, np.stack([mono, 0.8 * mono], 1) * 0.5 / np.abs(mono).max(), rate, format="MP3")
    whole, _ = read_region(path, 0.0, -1.0)
    for start_s in (0.01, 1.2345, 2.5, 3.1, 5.0):
        region, _ = read_region(path, start_s, start_s + 0.9)
        start = int(round(start_s * rate))
        np.testing.assert_allclose(region, whole[:, start : start + region.shape[1]], atol=1e-6, err_msg=str(start_s))


def test_read_region_to_the_end_of_the_file(tmp_path):
    path = tmp_path / "a.wav"
    audio = ramp_file(path, 16000, 1, seconds=2.0, bit_depth=32)
    region, _ = read_region(path, 1.5, -1)
    np.testing.assert_array_equal(region, audio[:, 24000:])


def test_a_region_ending_a_hair_past_the_end_is_padded_with_silence(tmp_path):
    path = tmp_path / "a.wav"
    ramp_file(path, 16000, 1, seconds=1.0, bit_depth=32)
    region, _ = read_region(path, 0.5, 1.005)
    assert region.shape == (1, 8080) and np.all(region[:, 8000:] == 0)


@pytest.mark.parametrize(
    "start,end,words",
    [
        (0.5, 5.0, "past the end"),
        (2.0, 3.0, "past the end"),
        (-0.1, 0.5, "before"),
        (0.5, 0.5, "empty"),
        (0.8, 0.3, "empty"),
        (5.0, -1.0, r"the region 5 s-end lies past the end of a.wav \(1.000 s long\)"),  # to the end: not "empty"
    ],
)
def test_bad_regions_raise_audio_errors_naming_the_problem(tmp_path, start, end, words):
    path = tmp_path / "a.wav"
    ramp_file(path, 16000, 1, seconds=1.0)
    with pytest.raises(AudioError, match=words):
        read_region(path, start, end)


def test_non_audio_files_directories_and_missing_files_raise_audio_errors(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("hello" * 100)
    for path, words in [(text, "cannot read"), (tmp_path, "folder"), (tmp_path / "nope.wav", "no such file")]:
        with pytest.raises(AudioError, match=words):
            read_region(path, 0.0, 1.0)


def test_probe_reads_rate_channels_and_length_from_the_header(tmp_path):
    path = tmp_path / "a.wav"
    ramp_file(path, 48000, 2, seconds=1.5)
    info = probe(path)
    assert (info.sample_rate, info.num_channels, info.frames, info.duration) == (48000, 2, 72000, 1.5)


@pytest.mark.parametrize(
    ("rate", "channels", "problem"),
    [
        (999, 1, "a sample rate of 999 Hz: the engine edits 1000 to 768000 Hz"),
        (800000, 1, "a sample rate of 800000 Hz"),
        (16000, 65, "65 channels: the engine edits at most 64"),
    ],
)
def test_probe_refuses_a_file_the_engine_cannot_edit_naming_it(tmp_path, rate, channels, problem):
    """Said from the header, by every front end's probe, before a model loads (it was said after the model had
    loaded, and 65 channels as "pass it as [channels, samples], not transposed")."""
    path = tmp_path / "odd.wav"
    sf.write(path, np.full((100, channels), 0.1, dtype=np.float32), rate)
    with pytest.raises(AudioError, match=f"^odd.wav has {problem}"):
        probe(path)


def test_a_long_result_is_written_in_blocks_not_copied_whole(tmp_path):
    """pedalboard copies what it is given: a whole hour of stereo handed at once was 1.3 GB more at the write."""
    import tracemalloc

    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 48000 * 90)).astype(np.float32)  # 35 MB
    write_atomic(tmp_path / "warm.wav", audio[:, :4], 48000)  # the first call's imports are not the signal's memory
    tracemalloc.start()
    try:
        path = write_atomic(tmp_path / "long.wav", audio, 48000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * audio.nbytes, f"{peak / audio.nbytes:.2f}x the result"
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(data.T, audio)


def test_write_atomic_writes_float_wav_without_clipping(tmp_path):
    loud = np.array([[0.0, 1.5, -2.25, 0.5]], dtype=np.float32)
    path = write_atomic(tmp_path / "out.wav", loud, 32000)
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == 32000 and sf.info(path).subtype == "FLOAT"
    np.testing.assert_array_equal(data.T, loud)


def test_write_atomic_never_replaces_an_existing_file_unless_asked(tmp_path):
    path = tmp_path / "out.wav"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        write_atomic(path, np.zeros((1, 10), np.float32), 16000)
    assert path.read_bytes() == b"precious"
    write_atomic(path, np.zeros((2, 10), np.float32), 16000, overwrite=True)
    assert sf.info(path).channels == 2


def test_write_atomic_leaves_no_temporary_files_and_creates_the_folder(tmp_path):
    path = write_atomic(tmp_path / "new" / "out.wav", np.zeros((1, 100), np.float32), 16000)
    assert os.listdir(path.parent) == ["out.wav"]


def test_unique_result_path_defaults_to_a_results_folder_beside_the_input(tmp_path):
    path = unique_result_path(tmp_path / "song.flac", "Extract the Drums!")
    assert path == tmp_path / "results" / "song.extract_the_drums.wav"


def test_unique_result_path_skips_existing_and_reserved_names_and_the_input(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "song.remove_bass.wav").write_bytes(b"")
    reserved = [tmp_path / "results" / "song.remove_bass-2.wav"]
    assert unique_result_path(tmp_path / "song.wav", "remove bass", reserved=reserved).name == "song.remove_bass-3.wav"
    assert unique_result_path(tmp_path / "song.wav", "x", output=tmp_path / "song.wav").name == "song-2.wav"


def test_a_result_of_a_very_long_input_name_is_named_short_enough_to_be_written(tmp_path):
    source = tmp_path / ("\u00e9" * 120 + ".wav")  # 240 bytes in UTF-8: the name as it stands would not fit
    path = unique_result_path(source, "extract drums")
    assert path.name.endswith(".extract_drums.wav") and len(path.name.encode()) <= MAX_RESULT_NAME_BYTES
    path.parent.mkdir()
    write_atomic(path, np.zeros((1, 100), dtype=np.float32), 8000)  # its temporary name fits beside it
    assert path.is_file()


def test_an_output_name_too_long_to_write_is_refused_before_the_edit(tmp_path):
    size = MAX_RESULT_NAME_BYTES + 20
    with pytest.raises(
        ConfigError, match=f"the output file name is {size} bytes long; at most {MAX_RESULT_NAME_BYTES}"
    ):
        unique_result_path(tmp_path / "a.wav", "extract drums", output=tmp_path / ("y" * (size - 4) + ".wav"))


def test_an_output_under_a_file_is_refused_before_the_edit(tmp_path):
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(ConfigError, match="afile is a file, not a folder"):
        unique_result_path(tmp_path / "a.wav", "extract drums", output=tmp_path / "afile" / "x.wav")


def test_unique_result_path_puts_results_inside_a_given_folder_as_wav(tmp_path):
    assert unique_result_path(tmp_path / "a.mp3", "add piano", output=tmp_path).name == "a.add_piano.wav"
    assert unique_result_path(tmp_path / "a.mp3", "add piano", output=tmp_path / "x.WAV").name == "x.WAV"
    assert unique_result_path(tmp_path / "a.mp3", "add piano", output=tmp_path / "x.take2").name == "x.take2.wav"


def test_an_output_named_in_another_audio_format_is_refused_with_the_wav_name(tmp_path):
    with pytest.raises(ConfigError, match="results are written as WAV: name the output x.wav"):
        unique_result_path(tmp_path / "a.mp3", "add piano", output=tmp_path / "x.flac")


def test_slug_keeps_names_short_and_safe():
    assert slug("../../etc/passwd") == "etc-passwd"
    assert slug("!!!") == "edit"
    assert len(slug("add " * 50)) <= 40


def test_read_region_seeks_and_reads_only_the_region(tmp_path, monkeypatch):
    import pedalboard.io

    path = tmp_path / "long.flac"
    ramp_file(path, 44100, 2, seconds=20.0)
    real_open = pedalboard.io.AudioFile
    reads: list[tuple[int, int]] = []  # (position, frames) of every read

    class CountingFile:
        def __init__(self, *args, **kwargs):
            self._file = real_open(*args, **kwargs)

        def __enter__(self):
            self._file.__enter__()
            return self

        def __exit__(self, *exc):
            return self._file.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self._file, name)

        def read(self, frames):
            reads.append((self._file.tell(), frames))
            return self._file.read(frames)

    monkeypatch.setattr(pedalboard.io, "AudioFile", CountingFile)
    region, _ = read_region(path, 15.0, 16.0)
    assert region.shape == (2, 44100)
    assert reads == [(15 * 44100, 44100)]


def test_sweep_removes_only_a_dead_writers_temporary_files(tmp_path):
    from bridge.audio_write import sweep_partials

    final = tmp_path / "song [take 1].extract drums.wav"  # glob metacharacters in the name
    final.write_bytes(b"keep")
    stem = final.stem
    dead = tmp_path / f".{stem}.{dead_pid()}.0badc0de.partial.wav"
    # the name a result gives way to when its own was taken meanwhile (unique_result_path: -2, -3...)
    dead_numbered = tmp_path / f".{stem}-12.{dead_pid()}.0badc0de.partial.wav"
    live = tmp_path / f".{stem}.{os.getpid()}.12345678.partial.wav"
    other = tmp_path / f".another.{dead_pid()}.0badc0de.partial.wav"
    other_suffix = tmp_path / f".{stem}-x.{dead_pid()}.0badc0de.partial.wav"
    odd = tmp_path / f".{stem}.notapid.partial.wav"
    for path in (dead, dead_numbered, live, other, other_suffix, odd):
        path.write_bytes(b"half")
    assert sorted(sweep_partials(final)) == sorted([dead, dead_numbered])
    assert not dead.exists() and not dead_numbered.exists()
    assert live.exists() and other.exists() and other_suffix.exists() and odd.exists()
    assert final.read_bytes() == b"keep"


def test_read_region_refuses_a_fifo_swapped_in_after_the_check_without_waiting(tmp_path, monkeypatch):
    """The path passed every earlier check, then became a FIFO: the read is refused at once (a blocking open would
    hang the worker until some writer came)."""
    import os
    import threading

    from bridge import audio_read
    from engine.errors import AudioError

    fifo = tmp_path / "swapped.wav"
    os.mkfifo(fifo)
    monkeypatch.setattr(audio_read, "check_regular_file", lambda path: None)  # the earlier check, before the swap
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            read_region(fifo, 0.0, 1.0)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(5.0)
    if thread.is_alive():  # blocked in open(): give it a writer so the thread ends, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5.0)
        pytest.fail("read_region blocked on a FIFO")
    assert isinstance(outcome[0], AudioError) and "FIFO" in str(outcome[0])


def test_a_file_holding_less_than_its_header_says_is_named_as_damaged(tmp_path):
    path = tmp_path / "odd.mp3"  # an MPEG frame header, then noise: the header promises audio that is not there
    frame = b"\xff\xfb\x90\x64" + bytes(np.random.default_rng(0).integers(0, 256, 413, dtype=np.uint8))
    path.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + frame * 3 + bytes(20000))
    with pytest.raises(AudioError, match="odd.mp3 holds less audio than its header says .* damaged or cut short"):
        read_region(path, 0.0, -1.0)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_a_wav_cut_short_is_refused_by_probe_and_read_not_padded_with_silence(tmp_path, subtype):
    whole = tmp_path / "whole.wav"
    sf.write(whole, np.full((16000 * 20, 2), 0.1, np.float32), 16000, subtype=subtype)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:8192])  # a copy stopped early: the header still says 20 s
    for call in (lambda: probe(cut), lambda: read_region(cut, 0.0, 1.0)):
        with pytest.raises(AudioError, match=r"cut.wav holds less audio than its header says \(\d+ of 320000"):
            call()
    assert probe(whole).frames == 320000 and read_region(whole, 19.0, -1.0)[0].shape == (2, 16000)


@pytest.mark.parametrize("name", ["cut.bwf", "cut.BWF", "cut.rf64"])
def test_a_wav_cut_short_is_refused_whatever_its_name(tmp_path, name):
    """The check went by the suffix: a field recorder's .bwf cut short was read padded with silence (pedalboard opens
    a file by its content)."""
    whole = tmp_path / "whole.wav"
    sf.write(whole, np.full((16000 * 2, 2), 0.1, np.float32), 16000, subtype="PCM_24")
    cut = tmp_path / name
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    for call in (lambda: probe(cut), lambda: read_region(cut, 0.0, 1.0)):
        with pytest.raises(AudioError, match=f"{name} holds less audio than its header says"):
            call()


@pytest.mark.parametrize("kept", [0.5, 0.9, 0.999])
def test_a_flac_cut_short_is_refused_not_read_as_silence(tmp_path, kept):
    """pedalboard trusts a FLAC's sample count: a file cut in half was read whole as silence (an extract of it said
    "the selection is silent"), a tenth short as its last second silent."""
    whole = tmp_path / "whole.flac"
    sf.write(whole, (np.random.default_rng(0).standard_normal((44100 * 4, 2)) * 0.1).astype(np.float32), 44100)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(whole.read_bytes()[: int(len(whole.read_bytes()) * kept)])
    for call in (lambda: probe(cut), lambda: read_region(cut, 0.0, -1.0), lambda: read_region(cut, 0.0, 1.0)):
        with pytest.raises(AudioError, match="cut.flac holds less audio than its header says"):
            call()
    assert probe(whole).frames == 44100 * 4 and read_region(whole, 3.0, -1.0)[0].shape == (2, 44100)


def test_a_flac_libsndfile_cannot_open_is_left_to_pedalboard_not_called_cut_short(tmp_path, monkeypatch):
    whole = tmp_path / "whole.flac"
    sf.write(whole, np.full((16000, 2), 0.1, np.float32), 16000)

    def cannot_open(*args, **kwargs):
        raise sf.LibsndfileError(1, "Error opening")  # e.g. a bit depth this libsndfile does not read

    monkeypatch.setattr(sf, "SoundFile", cannot_open)
    assert probe(whole).frames == 16000 and read_region(whole, 0.0, -1.0)[0].shape == (2, 16000)


def test_a_cbr_mp3_without_its_info_frame_is_read_to_its_end(tmp_path):
    """Without a Xing/Info header libsndfile guesses an MP3's length from its size: 0.19 s too long for 3 minutes of
    CBR, and a read to the end (`imusic edit` without --end, every batch file) was refused as cut short."""
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile writes no MP3")
    rate = 44100
    music = (np.random.default_rng(0).standard_normal(rate * 180) * 0.1).astype(np.float32)
    tagged = tmp_path / "tagged.mp3"
    sf.write(tagged, music, rate, format="MP3", bitrate_mode="CONSTANT", compression_level=0.0)
    data = tagged.read_bytes()
    first = data.find(b"\xff\xfb")  # the first frame: LAME's Info frame
    bitrate = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320][data[first + 2] >> 4]
    size = 144 * bitrate * 1000 // rate + ((data[first + 2] >> 1) & 1)
    assert b"Info" in data[first : first + size]
    plain = tmp_path / "plain.mp3"
    plain.write_bytes(data[:first] + data[first + size :])
    guessed = probe(plain).frames
    assert guessed > rate * 180  # the guess this test is about
    audio, _ = read_region(plain, 0.0, -1.0)
    assert audio.shape == (1, guessed) and np.abs(audio[:, rate * 179 : rate * 179 + 100]).max() > 0
    # a file whose Info frame says its length exactly is not given that slack: cut short, it is refused, not padded
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(data[: int(len(data) * 0.996)])
    with pytest.raises(AudioError, match="cut.mp3 holds less audio than its header says"):
        read_region(cut, 0.0, -1.0)


def test_codecs_with_fewer_bytes_per_sample_than_they_decode_to_are_not_mistaken_for_cut_files(tmp_path):
    for subtype in ("ULAW", "IMA_ADPCM", "PCM_U8"):
        path = tmp_path / f"{subtype}.wav"
        sf.write(path, np.full((16000, 2), 0.1, np.float32), 16000, subtype=subtype)
        assert probe(path).frames >= 16000 and read_region(path, 0.0, 0.5)[0].shape == (2, 8000)


WAV_SUBTYPES = ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW", "IMA_ADPCM", "MS_ADPCM"]


# every (container, encoding) pair libsndfile can write: WAVEX and AIFF hold no ADPCM, which would only skip
ENCODINGS = [(c, s) for c in ("WAV", "WAVEX", "AIFF") for s in WAV_SUBTYPES if sf.check_format(c, s)]


@pytest.mark.parametrize("container, subtype", ENCODINGS)
def test_every_encoding_reads_the_samples_libsndfile_reads(tmp_path, container, subtype):
    """A region holds the file's own samples, channels in order, from its first sample (64-bit float WAV, which REAPER
    renders, came back with left and right swapped and 6 samples early; u-law and ADPCM as noise)."""
    n = np.arange(3 * 8000)
    ramp = (n % 1000) / 1000.0 * 0.9
    audio = np.stack([ramp, -ramp - 0.001], axis=1).astype(np.float32)
    path = tmp_path / f"take.{'aiff' if container == 'AIFF' else 'wav'}"
    sf.write(path, audio, 8000, format=container, subtype=subtype)
    reference = sf.read(path, dtype="float32", always_2d=True)[0].T
    for start in (0.0, 1.0):
        region, rate = read_region(path, start, start + 1.0)
        assert rate == 8000 and region.shape == (2, 8000)
        first = int(start * 8000)
        np.testing.assert_allclose(region, reference[:, first : first + 8000], atol=0.01)


def test_a_region_that_is_not_a_finite_number_of_seconds_is_named(tmp_path):
    path = tmp_path / "song.wav"
    sf.write(path, np.zeros((16000, 1), np.float32), 16000)
    for start, end in ((float("nan"), 1.0), (0.0, float("inf"))):
        with pytest.raises(AudioError, match="start and end must be finite numbers of seconds"):
            read_region(path, start, end)


def test_a_region_starting_in_the_file_s_last_half_sample_is_past_its_end(tmp_path):
    """It rounds to the sample after the last: named as such, with the real end, not pedalboard's "will not read an
    entire file" under a region "2.99999--1 s"."""
    path = tmp_path / "song.wav"
    sf.write(path, np.zeros((48000, 1), np.float32), 16000)
    for end in (-1.0, 3.0):
        with pytest.raises(AudioError, match=r"^the region 2.99999-3 s starts at the end of song.wav \(3 s long\)$"):
            read_region(path, 2.99999, end)
    assert read_region(path, 2.99996, -1.0)[0].shape == (1, 1)  # the last sample itself


def test_a_file_where_the_results_folder_should_be_is_named_as_such(tmp_path):
    (tmp_path / "song.wav").write_bytes(b"the user's song")
    with pytest.raises(AudioError, match=r"song.wav is a file, not a folder; nothing was written"):
        write_atomic(tmp_path / "song.wav" / "out.wav", np.zeros((1, 10), np.float32), 16000, roots=[tmp_path])
    assert (tmp_path / "song.wav").read_bytes() == b"the user's song"


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_a_result_with_as_many_samples_as_channels_is_written(tmp_path, channels):
    """2 samples of stereo or 6 of 5.1 (a region of a few samples): pedalboard could not tell such an array's layout
    from its shape and the edit ended in a traceback."""
    audio = np.arange(channels * channels, dtype=np.float32).reshape(channels, channels) / 100
    path = write_atomic(tmp_path / "tiny.wav", audio, 48000)
    back, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == 48000
    np.testing.assert_array_equal(back.T, audio)


def test_a_wav_whose_header_still_says_zero_samples_is_said_to_be_still_written(tmp_path):
    """A render in progress: its writer fills in the header's sizes when it closes. It was refused as holding no audio,
    which a producer reads as an empty file."""
    import struct

    path = tmp_path / "rendering.wav"
    sf.write(str(path), np.zeros(48000, np.float32) + 0.1, 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.find(b"data")
    data[at + 4 : at + 8] = struct.pack("<I", 0)
    path.write_bytes(bytes(data))
    for call in (lambda: probe(path), lambda: read_region(path, 0.0, -1.0)):  # the batch reads without probing first
        with pytest.raises(AudioError, match="header says it holds no samples.*still being written"):
            call()
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="holds no audio"):
        probe(empty)


@pytest.mark.parametrize("tag", [0, 6000])  # bytes of a tag chunk before the data: a long one hid it from a 4 kB look
@pytest.mark.parametrize("unknown", [0xFFFFFFFF, 0x7FFFF000])  # ffmpeg's, sox's
def test_a_streamed_wav_whose_sizes_say_unknown_is_read_to_its_end(tmp_path, unknown, tag):
    """ffmpeg or sox writing WAV to a pipe leave the data size at a mark that says "until the end of the file";
    pedalboard took it for a count (1073741823 samples) and the file was refused as cut short."""
    import struct

    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 8000)).astype(np.float32)
    path = tmp_path / "piped.wav"
    sf.write(str(path), audio.T, 16000, subtype="FLOAT")
    data = bytearray(path.read_bytes())
    at = data.find(b"data")
    if tag:
        data[at:at] = b"bext" + struct.pack("<I", tag) + bytes(tag)
        at += 8 + tag
    data[4:8] = data[at + 4 : at + 8] = struct.pack("<I", unknown)
    path.write_bytes(bytes(data))

    info = probe(path)
    assert (info.sample_rate, info.num_channels, info.frames) == (16000, 2, 8000)
    back, rate = read_region(path, 0.25, -1)
    assert rate == 16000
    np.testing.assert_array_equal(back, audio[:, 4000:])


def test_a_streamed_wav_with_an_odd_sized_chunk_before_its_data_is_still_found_streamed(tmp_path):
    """RIFF pads a chunk of an odd size with one byte the size does not count: the data chunk after an odd-sized tag
    lies one byte past its size. Read as the size says, the look for "data" lost its way and the streamed file went to
    pedalboard, which refused it as cut short."""
    import struct

    audio = np.random.default_rng(1).uniform(-0.5, 0.5, (1, 4000)).astype(np.float32)
    path = tmp_path / "piped.wav"
    sf.write(str(path), audio.T, 16000, subtype="FLOAT")
    data = bytearray(path.read_bytes())
    at = data.find(b"data")
    tag = b"JUNK" + struct.pack("<I", 5) + b"abcde" + b"\x00"  # 5 bytes, then the pad byte
    data[at:at] = tag
    at += len(tag)
    data[4:8] = data[at + 4 : at + 8] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))

    info = probe(path)
    assert (info.sample_rate, info.num_channels, info.frames) == (16000, 1, 4000)
    back, rate = read_region(path, 0.0, -1)
    assert rate == 16000
    np.testing.assert_array_equal(back, audio)


def test_a_folder_whose_name_only_begins_like_an_allowed_root_is_outside_it(tmp_path):
    from bridge.audio_write import root_of

    root = tmp_path / "music"
    assert root_of(tmp_path / "music" / "a", [root]) == root and root_of(root, [root]) == root
    assert root_of(tmp_path / "music2", [root]) is None and root_of(tmp_path / "music-private" / "x", [root]) is None


def test_a_file_that_takes_the_name_while_the_result_is_written_is_never_replaced(tmp_path):
    """The check that the name is free comes before the write; the result then takes the name by a hard link, which
    fails if anything has taken it meanwhile: a rename would replace the producer's file (a mutation review)."""
    target = tmp_path / "song.extract_drums.wav"

    def producer_saves_there(path, identity):
        target.write_bytes(b"the producer's own take")

    with pytest.raises(FileExistsError):
        write_atomic(target, np.zeros((1, 1600), np.float32), 16000, before_link=producer_saves_there)
    assert target.read_bytes() == b"the producer's own take"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # and no temporary file is left


def test_where_os_open_takes_no_folder_descriptor_the_result_is_written_by_path_as_safely(tmp_path, monkeypatch):
    """Windows' os.open takes no dir_fd: write_atomic goes by path there (_write_by_path), which no test ran. It must
    keep every promise the descriptor path keeps: a temporary file renamed into place, complete when before_link sees
    it; an existing file replaced only with overwrite, not even one that takes the name while the result is written;
    a folder resolving outside the roots refused; and no temporary file left, whatever happens."""
    from bridge import audio_write

    monkeypatch.setattr(audio_write.os, "supports_dir_fd", set())
    monkeypatch.setattr(audio_write, "_write_in_folder", lambda *a: pytest.fail("written through a folder descriptor"))
    folder = tmp_path / "new" / "results"
    audio = np.array([[0.0, 1.5, -2.25, 0.5], [0.25, 0.0, -0.5, 3.0]], dtype=np.float32)
    seen = []

    def journal(path, identity):
        seen.append((path, identity, sorted(os.listdir(path.parent))))

    path = write_atomic(folder / "r.wav", audio, 32000, before_link=journal)
    assert path == folder / "r.wav" and sorted(os.listdir(folder)) == ["r.wav"]
    back, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == 32000 and sf.info(path).subtype == "FLOAT"
    np.testing.assert_array_equal(back.T, audio)
    ((told, identity, listing),) = seen  # told before the name was taken, of the finished temporary file
    assert told == path and audio_write.holds_file(path, identity)
    assert len(listing) == 1 and listing[0].startswith(".r.") and listing[0].endswith(".partial.wav")

    mine = path.read_bytes()
    with pytest.raises(FileExistsError):
        write_atomic(path, np.zeros((1, 8), np.float32), 32000)
    taken = folder / "taken.wav"

    def producer_saves_there(at, identity):
        taken.write_bytes(b"the producer's own take")

    with pytest.raises(FileExistsError):
        write_atomic(taken, np.zeros((1, 8), np.float32), 32000, before_link=producer_saves_there)

    def journal_full(at, identity):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(folder / "late.wav", np.zeros((1, 8), np.float32), 32000, before_link=journal_full)
    assert path.read_bytes() == mine and taken.read_bytes() == b"the producer's own take"
    assert sorted(os.listdir(folder)) == ["r.wav", "taken.wav"]  # no temporary file, nothing of the abandoned write

    write_atomic(path, np.zeros((1, 8), np.float32), 32000, overwrite=True)
    assert sf.info(path).channels == 1 and sorted(os.listdir(folder)) == ["r.wav", "taken.wav"]

    def no_hard_links(*args, **kwargs):  # FAT, some network shares
        raise PermissionError(1, "Operation not permitted")

    late = folder / "late.wav"
    with monkeypatch.context() as patch:
        patch.setattr(audio_write.os, "link", no_hard_links)
        with pytest.raises(FileExistsError):
            write_atomic(late, audio, 32000, before_link=lambda at, identity: late.write_bytes(b"the producer's"))
        assert late.read_bytes() == b"the producer's"
        assert sf.info(write_atomic(folder / "free.wav", audio, 32000)).frames == 4
    assert sorted(os.listdir(folder)) == ["free.wav", "late.wav", "r.wav", "taken.wav"]

    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(audio_write.UnsafeDestination, match="resolves to"):
        write_atomic(folder / "link" / "x.wav", audio, 32000, roots=[tmp_path / "new"])
    assert os.listdir(outside) == []


def test_a_region_ending_past_the_file_by_more_than_the_tolerance_is_refused(tmp_path):
    """10 ms past the end is a rounding of REAPER's; 50 ms is a region of another file (a mutation review widened the
    tolerance to 1 s and no test said so)."""
    path = tmp_path / "one_second.wav"
    sf.write(path, np.full((16000, 1), 0.1, np.float32), 16000)
    assert read_region(path, 0.0, 1.005)[0].shape == (1, 16080)  # within it: padded to the region
    with pytest.raises(AudioError, match="lies past the end"):
        read_region(path, 0.0, 1.05)
