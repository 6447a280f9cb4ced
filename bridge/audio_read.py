"""Audio files coming in: read exactly a region of any file pedalboard reads (results go out through audio_write).

Inside, audio is float32 [channels, samples] at the file's own rate. The server and `imusic batch` share these
functions.

Only regular files are opened (a FIFO would block its reader until someone writes to it), and `probe` reads through
a budget of bytes, calls and seconds: a 2 GB file of zeros named .wav is refused in a fraction of a second instead of
being scanned to its end.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import AudioError
from engine.files import AUDIO_FORMATS, audio_format, unsupported_audio
from engine.levels import all_finite

# A region may end this far past the end of the file (DAW positions are rounded); the missing samples are silence.
END_TOLERANCE_S = 0.010
# What `probe` may spend on one file before it gives up: real headers (wav, aiff, flac, mp3, ogg) take a few KB and
# well under 100 calls; a decoder hunting for a header in gigabytes of zeros would take minutes.
PROBE_MAX_BYTES = 32 << 20
PROBE_MAX_CALLS = 100_000  # reads and seeks: a WAV parser walking empty chunks seeks 8 bytes at a time
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, from its header: rate, channels, length."""

    path: Path
    sample_rate: int
    num_channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _refuse_unless_regular(path: Path, status: os.stat_result) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise AudioError(f"{path} is {_kind(status.st_mode)}, not an audio file")


def check_regular_file(path: str | Path) -> os.stat_result:
    """os.stat of an input that may be opened: AudioError for missing files, folders, FIFOs, devices, sockets.

    Never opens the file, so it never blocks (a FIFO blocks its reader in open() until a writer comes).
    """
    path = Path(path)
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise AudioError(f"no such file: {path}") from None
    except OSError as exc:
        raise AudioError(f"cannot read {path}: {exc.strerror or exc}") from None
    _refuse_unless_regular(path, status)
    return status


class _SndfileReader:
    """A file read through libsndfile, with pedalboard's reader interface. For MP3 (mpg123; `preroll` MP3_PREROLL):
    libsndfile drops the encoder's delay and padding that the LAME header records, as DAWs do, where pedalboard keeps
    them (a result 25 ms late and 1332 samples long at 44.1 kHz). For the encodings pedalboard cannot open that
    libsndfile reads (64-bit float, u-law and A-law WAVE_FORMAT_EXTENSIBLE; 8-bit, 64-bit float, u-law, A-law and
    ADPCM AIFF): no preroll."""

    # Samples decoded before a seek target and dropped: mpg123 starts decoding cold where it seeks to, without the
    # frames before whose bit reservoir the target's frame draws on, and gives up to a frame or two of silence or
    # wrong samples there. 16 MPEG-1 frames of 1152 samples (measured: 4 frames left some starts wrong, 8 none, over
    # 60 starts of a test song; 0.4 s of decoding at 44.1 kHz). They are read in the same call as the region: every
    # soundfile read asks libsndfile where it is, a seek that starts the decoder cold again.
    MP3_PREROLL = 16 * 1152

    def __init__(self, handle: Any, preroll: int = 0) -> None:
        import soundfile as sf

        soft = isinstance(handle, _BoundedReader)
        if soft:
            handle.soft = True  # probe's budget, spent, reads as end of file: no exception through a cffi callback
        try:
            self._file = sf.SoundFile(handle)
        finally:
            if soft:
                handle.soft = False
        self.samplerate, self.num_channels, self.frames = self._file.samplerate, self._file.channels, self._file.frames
        self._preroll, self._drop = preroll, 0

    def seek(self, frame: int) -> None:
        self._drop = min(frame, self._preroll)
        self._file.seek(frame - self._drop)

    def read(self, frames: int) -> np.ndarray:
        drop, self._drop = self._drop, 0
        return self._file.read(drop + frames, dtype="float32", always_2d=True)[drop:].T  # [C, n]

    def __enter__(self) -> _SndfileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def _gapless(path: Path) -> bool:
    """Whether `path` is an MP3 that libsndfile here can read (1.1 and later)."""
    return audio_format(path) == "mp3" and _libsndfile_reads_mp3()


@functools.lru_cache(maxsize=1)
def _libsndfile_reads_mp3() -> bool:
    """Asked of libsndfile once per process, not at every region read."""
    import soundfile as sf

    return "MP3" in sf.available_formats()


# A streaming writer's data size, "until the file ends": ffmpeg's, and sox's MS_UNSPEC (its wav.c) when it writes to a
# pipe
_UNKNOWN_SIZES = (0xFFFFFFFF, 0x7FFFF000)
_MAX_CHUNKS = 64  # chunks before "data" that _streamed_wav looks through


@contextlib.contextmanager
def _from_start(handle: Any) -> Iterator[Any]:
    """`handle` at the file's start, put back where it was afterwards (a reader may read on from there)."""
    where = handle.tell()
    try:
        handle.seek(0)
        yield handle
    finally:
        handle.seek(where)


def _container(handle: Any) -> str | None:
    """The container a file's first bytes name, whatever its suffix ("wav" for RIFF/RF64 WAVE, "aiff", "flac"), None
    for any other: a field recorder's .bwf is a WAV, and a cut one was read padded with silence. The handle is left
    where it was."""
    with _from_start(handle):
        head = handle.read(12) or b""
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    return "flac" if head[:4] == b"fLaC" else None


def _streamed_wav(handle: Any) -> bool:
    """Whether a file is a WAV whose data chunk's size is the streaming writers' "unknown" (pedalboard takes it for a
    count: a file of 44100 samples read as 1073741823 and refused as cut short). The handle is left where it was."""
    with _from_start(handle):
        head = handle.read(12) or b""
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":  # RF64 says its sizes in its ds64 chunk
            return False
        at = 12
        for _ in range(_MAX_CHUNKS):  # chunk headers, seeking past their bodies: tags (bext, iXML) can be long
            handle.seek(at)
            header = handle.read(8) or b""
            if len(header) < 8:
                return False
            size = int.from_bytes(header[4:8], "little")
            if header[:4] == b"data":
                return size in _UNKNOWN_SIZES
            at += 8 + size + (size & 1)
        return False


def _reader(handle: Any, path: Path) -> Any:
    """pedalboard's reader, or libsndfile's (_SndfileReader) for MP3, for a streamed WAV (libsndfile counts its
    samples) and for what pedalboard cannot open; an error is pedalboard's, which names what is wrong with the file."""
    from pedalboard.io import AudioFile

    if _streamed_wav(handle):
        return _SndfileReader(handle)
    if _gapless(path):
        try:
            return _SndfileReader(handle, _SndfileReader.MP3_PREROLL)
        except RuntimeError:  # an MP3 libsndfile cannot parse: pedalboard's reader names what is wrong with it
            handle.seek(0)
    try:
        return AudioFile(handle)
    except (ValueError, RuntimeError) as exc:
        if getattr(handle, "spent", False):  # probe's budget (_BoundedReader) is spent: no second decoder
            raise
        handle.seek(0)
        try:
            return _SndfileReader(handle)
        except (RuntimeError, TypeError, ValueError):  # soundfile's LibsndfileError is a RuntimeError
            raise exc from None


@contextlib.contextmanager
def _open(path: str | Path) -> Iterator:
    """The file's reader (pedalboard's; libsndfile's for MP3) over a descriptor that `_open_regular_fd` checked: a file
    swapped for a FIFO or a device after an earlier check is refused here, never waited on."""
    path = Path(path)
    with os.fdopen(_open_regular_fd(path), "rb") as handle:
        try:
            reader = _reader(handle, path)
            _refuse_cut_short(path, int(reader.frames), handle)
        except (ValueError, RuntimeError, OSError, TypeError) as exc:  # soundfile's LibsndfileError is a RuntimeError
            raise AudioError(f"cannot read {path} as audio ({AUDIO_FORMATS}): {exc}") from None
        with reader as f:
            yield f


_UNCOMPRESSED = ("wav", "aiff")  # containers whose header announces the sample count


_STILL_WRITTEN_BYTES = 4096  # a header and some audio: more than any empty file's header holds


def _refuse_cut_short(path: Path, frames: int, handle: Any) -> None:
    """AudioError for a WAV, AIFF or FLAC file (by its first bytes, not its name) that holds fewer samples than its
    header announces (cut short in a copy or a download): pedalboard trusts the header, padding the missing part with
    silence or allocating for its length. libsndfile counts what a WAV or AIFF really holds, and cannot reach a FLAC's
    last sample where it is missing; `handle` (an open binary file, the reader's) is read from its start and left
    where the reader had it: pedalboard's readers of some encodings (64-bit float, u-law, ADPCM) read on from there,
    and read header bytes as samples from 0 (found by a review: left and right swapped, 6 samples early). A file
    libsndfile cannot parse is left to pedalboard's own errors."""
    import soundfile as sf

    container = _container(handle)
    if container == "flac":
        _refuse_cut_flac(path, frames, handle)
    if container not in _UNCOMPRESSED:
        return
    try:
        with _from_start(handle):
            held = sf.info(handle).frames
    except Exception:  # noqa: BLE001 - a format libsndfile does not know: nothing to compare
        return
    if frames - held > 1024:  # more than a block of padding short
        raise AudioError(
            f"{path.name} holds less audio than its header says ({held} of {frames} samples per channel): the file "
            "is damaged or cut short"
        )


def _refuse_cut_flac(path: Path, frames: int, handle: Any) -> None:
    """AudioError for a FLAC whose header's sample count reaches past its last frame: pedalboard read the missing part
    as silence (a review: a file cut by half read whole as silence, and an extract of it said "the selection is
    silent"). libsndfile cannot seek to, or read, a sample the file does not hold. A count of 0 is a FLAC still being
    written (its writer fills the count in at the end): what is there reads."""
    import soundfile as sf

    if frames <= 0:
        return
    with _from_start(handle):
        try:
            reader = sf.SoundFile(handle)
        except Exception:  # noqa: BLE001 - a FLAC libsndfile does not open: left to pedalboard's own errors
            return
        with reader:
            try:
                reader.seek(frames - 1)
                held = len(reader.read(1, dtype="float32"))
            except sf.LibsndfileError:  # past the data: "Internal psf_fseek() failed"
                held = 0
    if not held:
        raise AudioError(
            f"{path.name} holds less audio than its header says (its last of {frames} samples per channel is missing): "
            "the file is damaged or cut short"
        )


class _BudgetSpent(Exception):
    """Raised inside pedalboard's reads and seeks once `probe` has spent its budget on a file."""


class _BoundedReader(io.RawIOBase):
    """A read-only view of an open file that stops the decoder past its budget: an exception in pedalboard's read or
    seek; for libsndfile (`soft`), whose cffi callbacks print an exception and carry on, end of file and a seek that
    stays put. `spent` tells `probe` to refuse whatever the decoder made of the file."""

    soft = False

    def __init__(self, raw: io.FileIO, path: Path, max_bytes: int, max_calls: int, timeout_s: float) -> None:
        super().__init__()
        self._raw, self._path = raw, path
        self._max_bytes, self._max_calls = max_bytes, max_calls
        self._deadline = time.monotonic() + timeout_s
        self.bytes_read = 0
        self.calls = 0
        self.spent = False

    def __repr__(self) -> str:
        return repr(str(self._path))

    def _spend(self) -> bool:
        """Count a call; False once the budget is spent."""
        self.calls += 1
        if self.calls > self._max_calls or self.bytes_read >= self._max_bytes or time.monotonic() > self._deadline:
            self.spent = True
        if self.spent and not self.soft:
            raise _BudgetSpent
        return not self.spent

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._spend():
            return 0
        view = memoryview(buffer).cast("B")
        got = self._raw.readinto(view[: max(0, min(len(view), self._max_bytes - self.bytes_read))]) or 0
        self.bytes_read += got
        return got

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if not self._spend():
            return self._raw.tell()
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _open_regular_fd(path: Path) -> int:
    """A read descriptor of a regular file. Opened without blocking (a FIFO swapped in after a check is refused here,
    not waited on), then checked with fstat: what was checked is what is read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise AudioError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise AudioError(f"{path} is a folder, not an audio file") from None
    except OSError as exc:
        raise AudioError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        _refuse_unless_regular(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _mp3_length_guessed(path: str | Path) -> bool:
    """Whether an MP3's length is libsndfile's guess from the file's size: no Xing, Info or VBRI tag in its first
    frame (those say the length exactly, and a file cut short is then refused, not padded with silence)."""
    with open(path, "rb") as raw:
        raw.seek(_id3_tag_bytes(raw))
        head = raw.read(4096)
    sync = next((i for i in range(len(head) - 1) if head[i] == 0xFF and head[i + 1] & 0xE0 == 0xE0), None)
    frame = head[sync : sync + 2048] if sync is not None else b""
    return not any(tag in frame for tag in (b"Xing", b"Info", b"VBRI"))


def _id3_tag_bytes(raw: Any) -> int:
    """The size of the ID3v2 tag `raw` (at its start, left there) begins with, header and footer included; 0 if none."""
    head = raw.read(10)
    raw.seek(0)
    if len(head) < 10 or head[:3] != b"ID3" or any(b & 0x80 for b in head[6:10]):
        return 0
    size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]  # "synchsafe": 7 bits a byte
    return 10 + size + (10 if head[5] & 0x10 else 0)


def probe(
    path: str | Path,
    *,
    max_bytes: int = PROBE_MAX_BYTES,
    max_calls: int = PROBE_MAX_CALLS,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> AudioInfo:
    """Rate, channel count and length of an audio file (header only); AudioError if it is not readable audio.

    Bounded: regular files only, and the decoder reads through a budget (bytes, calls, seconds); a file whose header
    is not found within it is not audio we can use. The file is never read to its end.
    """
    path = Path(path)
    with os.fdopen(_open_regular_fd(path), "rb", buffering=0) as raw:
        # An ID3v2 tag (cover art, often megabytes) comes before an MP3's first frame: its bytes add to the budget
        reader = _BoundedReader(raw, path, max_bytes + _id3_tag_bytes(raw), max_calls, timeout_s)

        def gave_up() -> AudioError:
            return AudioError(
                f"cannot read {path} as audio ({AUDIO_FORMATS}): no usable audio header after reading "
                f"{reader.bytes_read} bytes ({reader.calls} reads and seeks); gave up"
            )

        try:
            with _reader(reader, path) as f:
                info = AudioInfo(path, int(round(f.samplerate)), int(f.num_channels), int(f.frames))
                if not reader.spent:  # what a decoder made of a file it read only part of is not trusted
                    _refuse_cut_short(path, info.frames, raw)
        except (_BudgetSpent, ValueError, RuntimeError, OSError) as exc:
            if reader.spent:
                raise gave_up() from None
            raise AudioError(f"cannot read {path} as audio ({AUDIO_FORMATS}): {exc}") from None
        if reader.spent:
            raise gave_up()
    _refuse_empty(info)
    if (problem := unsupported_audio(info.sample_rate, info.num_channels)) is not None:
        raise AudioError(f"{path.name} has {problem}")
    return info


def _refuse_empty(info: AudioInfo) -> None:
    """AudioError for a file whose header says it holds no audio: probe's and read_region's one message."""
    path = info.path
    if info.frames <= 0 and info.num_channels > 0 and path.stat().st_size > _STILL_WRITTEN_BYTES:
        # a WAV writer fills in its header's sizes when it closes: 0 samples in a file of some size is a render
        # still going (or one that never ended), not an empty file
        raise AudioError(
            f"{path}'s header says it holds no samples, though the file holds {path.stat().st_size} bytes: is it "
            "still being written? Try again when the render or copy has ended"
        )
    if info.frames <= 0 or info.num_channels <= 0 or info.sample_rate <= 0:
        raise AudioError(f"{path} holds no audio")


def region_frames(info: AudioInfo, start_s: float, end_s: float) -> tuple[int, int]:
    """The region [start_s, end_s) as frame indices of the file; end_s < 0 means the end of the file.

    AudioError for a region that is empty, negative, or lies past the end of the file (beyond END_TOLERANCE_S).
    """
    if not (math.isfinite(start_s) and math.isfinite(end_s)):
        raise AudioError(f"the region's start and end must be finite numbers of seconds, got {start_s}-{end_s}")
    if start_s < 0:
        raise AudioError(f"the region starts before the file does ({start_s:g} s)")
    to_end = end_s < 0
    if to_end:
        end_s = info.duration
    if start_s >= info.duration or end_s > info.duration + END_TOLERANCE_S:  # said first: a start past the end with
        # no end given is past the end, not a region ending at a time the producer never gave
        end = "end" if to_end else f"{end_s:g} s"
        raise AudioError(
            f"the region {start_s:g} s-{end} lies past the end of {info.path.name} ({info.duration:.3f} s long)"
        )
    if end_s <= start_s:
        raise AudioError(f"the region is empty: it ends ({end_s:g} s) where or before it starts ({start_s:g} s)")
    start = int(round(start_s * info.sample_rate))
    stop = int(round(end_s * info.sample_rate))
    if start >= info.frames:  # within the file's last half sample: nothing left to read from there
        raise AudioError(
            f"the region {start_s:g}-{end_s:g} s starts at the end of {info.path.name} ({info.duration:.6g} s long)"
        )
    return start, max(stop, start + 1)


# How far libsndfile's guess of an MP3's length (no Xing/Info header: from the file's size) may miss, as a share of it:
# 0.09 % measured on CBR files of 3 and 15 minutes; a file holding a tenth of what its size promises is still refused
MP3_LENGTH_GUESS = 0.005


def read_region(path: str | Path, start_s: float, end_s: float) -> tuple[np.ndarray, int]:
    """Exactly the region [start_s, end_s) of an audio file, seeking to it: (audio [C, N] float32, sample rate).

    N = round(end_s * sr) - round(start_s * sr). Compressed files whose header length is an estimate may fall a
    few samples short near their end; those samples are silence, so the length always matches the region.
    """
    with _open(path) as f:
        info = AudioInfo(Path(path), int(round(f.samplerate)), int(f.num_channels), int(f.frames))
        _refuse_empty(info)  # the batch reads without probing first
        start, stop = region_frames(info, start_s, end_s)
        try:
            f.seek(min(start, info.frames))
            audio = f.read(max(0, min(stop, info.frames) - start))  # [C, n]
        except (ValueError, RuntimeError, OSError) as exc:
            where = f"{start / info.sample_rate:g}-{stop / info.sample_rate:g} s"
            raise AudioError(f"cannot read {info.path.name} at {where}: {exc}") from None
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    missing = (stop - start) - audio.shape[1]
    if missing > 0:
        allowed = END_TOLERANCE_S * info.sample_rate + 4096  # an mp3's frames are decoded to within a frame
        if audio_format(path) == "mp3" and _mp3_length_guessed(path):  # guessed from the file's size: 0.155 s long
            allowed += MP3_LENGTH_GUESS * info.frames  # for 3 minutes of CBR, and refused as cut short
        if missing > allowed:
            raise AudioError(
                f"{info.path.name} holds less audio than its header says (it ended {missing / info.sample_rate:.3f} s "
                "before the region did): the file is damaged or cut short"
            )
        audio = np.pad(audio, ((0, 0), (0, missing)))
    if not all_finite(audio):
        raise AudioError(
            f"{info.path.name} holds NaN or infinite samples in {start / info.sample_rate:g}-"
            f"{stop / info.sample_rate:g} s"
        )
    return np.ascontiguousarray(audio[:, : stop - start]), info.sample_rate
