"""Audio files at the edges: read exactly a region of any file pedalboard reads, write results atomically.

Inside, audio is float32 [channels, samples] at the file's own rate. Results are 32-bit float WAV (no clipping: an
edit that overshoots full scale keeps its peaks for the DAW to handle), written under a temporary name and renamed,
never over the input or another file unless asked. The server and `imusic batch` share these functions.

Only regular files are opened (a FIFO would block its reader until someone writes to it), and `probe` reads through
a budget of bytes, calls and seconds: a 2 GB file of zeros named .wav is refused in a fraction of a second instead of
being scanned to its end.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import math
import os
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridge.protocol import FORBIDDEN_PATH
from engine.errors import AudioError, ImusicError
from engine.files import (
    AUDIO_FORMATS,
    PARTIAL_SUFFIX,
    result_file_name,
    result_file_path,
    sweep_temps,
    temp_name,
    writable_folder,
)

# A region may end this far past the end of the file (DAW positions are rounded); the missing samples are silence.
END_TOLERANCE_S = 0.010
RESULTS_DIR = "results"
# What `probe` may spend on one file before it gives up: real headers (wav, aiff, flac, mp3, ogg) take a few KB and
# well under 100 calls; a decoder hunting for a header in gigabytes of zeros would take minutes.
PROBE_MAX_BYTES = 32 << 20
PROBE_MAX_CALLS = 100_000  # reads and seeks: a WAV parser walking empty chunks seeks 8 bytes at a time
PROBE_TIMEOUT_S = 2.0


class UnsafeDestination(ImusicError):
    """The folder a result is written to left the allowed roots (a folder on its path became a symlink)."""

    code = FORBIDDEN_PATH


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


class _GaplessMp3:
    """An MP3 read through libsndfile (mpg123), with pedalboard's reader interface: libsndfile drops the encoder's
    delay and padding that the LAME header records, as DAWs do, where pedalboard keeps them (a result 25 ms late and
    1332 samples long at 44.1 kHz)."""

    def __init__(self, handle: Any) -> None:
        import soundfile as sf

        self._file = sf.SoundFile(handle)
        self.samplerate, self.num_channels, self.frames = self._file.samplerate, self._file.channels, self._file.frames

    def seek(self, frame: int) -> None:
        self._file.seek(frame)

    def read(self, frames: int) -> np.ndarray:
        return self._file.read(frames, dtype="float32", always_2d=True).T  # [C, n]

    def __enter__(self) -> _GaplessMp3:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def _gapless(path: Path) -> bool:
    """Whether `path` is an MP3 that libsndfile here can read (1.1 and later)."""
    return path.suffix.lower() == ".mp3" and _libsndfile_reads_mp3()


@functools.lru_cache(maxsize=1)
def _libsndfile_reads_mp3() -> bool:
    """Asked of libsndfile once per process, not at every region read."""
    import soundfile as sf

    return "MP3" in sf.available_formats()


def _reader(handle: Any, path: Path) -> Any:
    from pedalboard.io import AudioFile

    if _gapless(path):
        try:
            return _GaplessMp3(handle)
        except RuntimeError:  # an MP3 libsndfile cannot parse: pedalboard's reader names what is wrong with it
            handle.seek(0)
    return AudioFile(handle)


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


_UNCOMPRESSED = (".wav", ".wave", ".aif", ".aiff")


def _refuse_cut_short(path: Path, frames: int, handle: Any) -> None:
    """AudioError for a WAV or AIFF file that holds fewer samples than its header announces (cut short in a copy or a
    download): pedalboard trusts the header, padding the missing part with silence or allocating for its length.
    libsndfile counts what the file really holds; `handle` (an open binary file) is read from its start and left
    there. A file libsndfile cannot parse is left to pedalboard's own errors."""
    import soundfile as sf

    if path.suffix.lower() not in _UNCOMPRESSED:
        return
    try:
        handle.seek(0)
        held = sf.info(handle).frames
    except Exception:  # noqa: BLE001 - a format libsndfile does not know: nothing to compare
        return
    finally:
        handle.seek(0)
    if frames - held > 1024:  # more than a block of padding short
        raise AudioError(
            f"{path.name} holds less audio than its header says ({held} of {frames} samples per channel): the file "
            "is damaged or cut short"
        )


class _BudgetSpent(Exception):
    """Raised inside the decoder's read or seek once `probe` has spent its budget on a file."""


class _BoundedReader(io.RawIOBase):
    """A read-only view of an open file that stops the decoder (an exception in read or seek) past its budget."""

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

    def _spend(self) -> None:
        self.calls += 1
        if self.calls > self._max_calls or self.bytes_read >= self._max_bytes or time.monotonic() > self._deadline:
            self.spent = True
        if self.spent:
            raise _BudgetSpent

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._spend()
        view = memoryview(buffer).cast("B")
        got = self._raw.readinto(view[: max(0, min(len(view), self._max_bytes - self.bytes_read))]) or 0
        self.bytes_read += got
        return got

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._spend()
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
        reader = _BoundedReader(raw, path, max_bytes, max_calls, timeout_s)
        try:
            with _reader(reader, path) as f:
                info = AudioInfo(path, int(round(f.samplerate)), int(f.num_channels), int(f.frames))
                _refuse_cut_short(path, info.frames, raw)
        except (_BudgetSpent, ValueError, RuntimeError, OSError) as exc:
            if reader.spent:
                raise AudioError(
                    f"cannot read {path} as audio ({AUDIO_FORMATS}): no usable audio header after reading "
                    f"{reader.bytes_read} bytes ({reader.calls} reads and seeks); gave up"
                ) from None
            raise AudioError(f"cannot read {path} as audio ({AUDIO_FORMATS}): {exc}") from None
    if info.frames <= 0 or info.num_channels <= 0 or info.sample_rate <= 0:
        raise AudioError(f"{path} holds no audio")
    return info


def region_frames(info: AudioInfo, start_s: float, end_s: float) -> tuple[int, int]:
    """The region [start_s, end_s) as frame indices of the file; end_s < 0 means the end of the file.

    AudioError for a region that is empty, negative, or lies past the end of the file (beyond END_TOLERANCE_S).
    """
    if not (math.isfinite(start_s) and math.isfinite(end_s)):
        raise AudioError(f"the region's start and end must be finite numbers of seconds, got {start_s}-{end_s}")
    if start_s < 0:
        raise AudioError(f"the region starts before the file does ({start_s:g} s)")
    if end_s < 0:
        end_s = info.duration
    if end_s <= start_s:
        raise AudioError(f"the region is empty: it ends ({end_s:g} s) where or before it starts ({start_s:g} s)")
    if start_s >= info.duration or end_s > info.duration + END_TOLERANCE_S:
        raise AudioError(
            f"the region {start_s:g}-{end_s:g} s lies past the end of {info.path.name} ({info.duration:.3f} s long)"
        )
    start = int(round(start_s * info.sample_rate))
    stop = int(round(end_s * info.sample_rate))
    return start, max(stop, start + 1)


def read_region(path: str | Path, start_s: float, end_s: float) -> tuple[np.ndarray, int]:
    """Exactly the region [start_s, end_s) of an audio file, seeking to it: (audio [C, N] float32, sample rate).

    N = round(end_s * sr) - round(start_s * sr). Compressed files whose header length is an estimate may fall a
    few samples short near their end; those samples are silence, so the length always matches the region.
    """
    with _open(path) as f:
        info = AudioInfo(Path(path), int(round(f.samplerate)), int(f.num_channels), int(f.frames))
        start, stop = region_frames(info, start_s, end_s)
        try:
            f.seek(min(start, info.frames))
            audio = f.read(max(0, min(stop, info.frames) - start))  # [C, n]
        except (ValueError, RuntimeError, OSError) as exc:
            raise AudioError(f"cannot read {info.path.name} at {start_s:g}-{end_s:g} s: {exc}") from None
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    missing = (stop - start) - audio.shape[1]
    if missing > 0:
        if missing > END_TOLERANCE_S * info.sample_rate + 4096:  # mp3 frames are estimates to within a frame
            raise AudioError(
                f"{info.path.name} holds less audio than its header says (it ended {missing / info.sample_rate:.3f} s "
                "before the region did): the file is damaged or cut short"
            )
        audio = np.pad(audio, ((0, 0), (0, missing)))
    if not np.isfinite(audio).all():
        raise AudioError(f"{info.path.name} holds NaN or infinite samples in {start_s:g}-{end_s:g} s")
    return np.ascontiguousarray(audio[:, : stop - start]), info.sample_rate


def sweep_partials(path: str | Path) -> list[Path]:
    """Remove the temporary files `write_atomic` left beside `path` (`.{stem}.{pid}.{hex}.partial.wav`) in a process
    that no longer runs (kill -9); a live writer's file and every other file stay. Returns what was removed."""
    path = Path(path)
    return sweep_temps(path.parent, name=path.stem, suffix=PARTIAL_SUFFIX)


def _partial_name(path: Path) -> str:
    return temp_name(path.stem, PARTIAL_SUFFIX)


def _inside(folder: Path, roots: Sequence[Path]) -> Path | None:
    """The root `folder` lies in (both absolute, symlinks already resolved), or None."""
    for root in roots:
        if folder == root or folder.is_relative_to(root):
            return Path(root)
    return None


def _outside(folder: Path, roots: Sequence[Path], why: str) -> UnsafeDestination:
    allowed = ", ".join(str(r) for r in roots)
    return UnsafeDestination(
        f"refusing to write the result into {folder}: {why}, which leads outside the folders this server may use "
        f"({allowed}); nothing was written"
    )


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_folder(folder: Path, roots: Sequence[Path] | None) -> int:
    """A descriptor of `folder`, created if missing. With `roots`: reached from the root it lies in one name at a time,
    each opened with O_NOFOLLOW, so the descriptor is of a folder that is really inside that root at this moment,
    whatever symlinks were swapped in on the way since the path was checked."""
    if roots is None:
        folder.mkdir(parents=True, exist_ok=True)
        return os.open(folder, _DIR_FLAGS)
    folder = Path(os.path.abspath(folder))
    root = _inside(folder, roots)
    if root is None:
        raise _outside(folder, roots, "it is not inside an allowed folder")
    fd = os.open(root, _DIR_FLAGS)
    try:
        walked = root
        for name in folder.relative_to(root).parts:
            walked = walked / name
            try:
                child = os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=fd)
                child = os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ENOTDIR and not os.path.islink(walked):
                    raise AudioError(
                        f"cannot write the result into {folder}: {walked} is a file, not a folder; nothing was written"
                    ) from None
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise _outside(folder, roots, f"{walked} is now a symbolic link or not a folder") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _exists_in(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _write_wav(handle, audio: np.ndarray, sample_rate: int) -> None:
    from pedalboard.io import AudioFile

    with AudioFile(
        handle, "w", samplerate=float(sample_rate), num_channels=audio.shape[0], bit_depth=32, format="wav"
    ) as f:
        f.write(np.ascontiguousarray(audio))


def write_atomic(
    path: str | Path,
    audio: np.ndarray,
    sample_rate: int,
    overwrite: bool = False,
    roots: Sequence[str | Path] | None = None,
) -> Path:
    """Write audio [C, N] as a 32-bit float WAV: to a temporary name beside `path`, fsync, then rename.

    With overwrite=False an existing file is never replaced (FileExistsError), even by a racing writer.
    With `roots` (absolute, symlinks resolved): the folder is checked when the file is created, not before: the
    temporary file and the rename both happen in a descriptor of the folder reached without following symlinks from
    the root it lies in; UnsafeDestination if a folder on the way became a symlink or left the roots.
    """
    path = Path(path)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.ndim != 2 or audio.shape[0] < 1:
        raise AudioError(f"cannot write audio shaped {tuple(audio.shape)}; expected [channels, samples]")
    checked = [Path(r) for r in roots] if roots is not None else None
    if {os.open, os.mkdir, os.stat, os.link, os.rename, os.unlink} <= os.supports_dir_fd and _NOFOLLOW:
        return _write_in_folder(path, audio, sample_rate, overwrite, checked)
    return _write_by_path(path, audio, sample_rate, overwrite, checked)  # Windows: no dir_fd


def _write_in_folder(
    path: Path, audio: np.ndarray, sample_rate: int, overwrite: bool, roots: list[Path] | None
) -> Path:
    dir_fd = _open_folder(path.parent, roots)
    try:
        name, temporary = path.name, _partial_name(path)
        if not overwrite and _exists_in(name, dir_fd):
            raise FileExistsError(f"{path} exists")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(temporary, flags, 0o666, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as handle:
                _write_wav(handle, audio, sample_rate)
                handle.flush()
                os.fsync(handle.fileno())
            if overwrite:
                os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                try:  # fails if the name exists: no window where another file could be replaced
                    os.link(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except FileExistsError:
                    raise
                except OSError:  # file systems without hard links (FAT, some network shares): check, then rename
                    if _exists_in(name, dir_fd):
                        raise FileExistsError(f"{path} exists") from None
                    os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            with contextlib.suppress(OSError):
                os.fsync(dir_fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _check_real_folder(folder: Path, roots: list[Path] | None) -> None:
    if roots is not None and _inside(Path(os.path.realpath(folder)), roots) is None:
        raise _outside(folder, roots, f"it resolves to {os.path.realpath(folder)}")


def _write_by_path(path: Path, audio: np.ndarray, sample_rate: int, overwrite: bool, roots: list[Path] | None) -> Path:
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_real_folder(path.parent, roots)
    temporary = path.with_name(_partial_name(path))
    try:
        with open(temporary, "xb") as handle:
            _write_wav(handle, audio, sample_rate)
            handle.flush()
            os.fsync(handle.fileno())
        _check_real_folder(path.parent, roots)  # again, right before the rename
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise
            except (NotImplementedError, OSError):
                if path.exists():
                    raise FileExistsError(f"{path} exists") from None
                os.replace(temporary, path)
        _fsync_dir(path.parent)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on Windows; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def unique_result_path(
    input_path: str | Path,
    instruction: str,
    output: str | Path | None = None,
    reserved: Iterable[str | Path] = (),
) -> Path:
    """Where a result goes, never an existing file, the input, or a path in `reserved` (results still being made).

    output None or "": `<input folder>/results/<input stem>.<instruction slug>.wav`; an existing folder (or a path
    ending in a separator): that name inside it; a file path: as engine.files.result_file_path has it (x.flac is
    refused, x becomes x.wav). Taken names get -2, -3...
    """
    input_path = Path(input_path)
    name = result_file_name(input_path.stem, instruction)
    if not output:
        candidate = input_path.parent / RESULTS_DIR / name
    elif str(output).endswith(("/", os.sep)) or Path(output).is_dir():
        candidate = Path(output) / name
    else:
        candidate = result_file_path(output)
    writable_folder(candidate.parent, make=False)  # a file in the way is said now, not after the edit
    taken = {os.path.normcase(os.path.abspath(p)) for p in reserved}
    taken.add(os.path.normcase(os.path.abspath(input_path)))
    stem, n = candidate.stem, 1
    while candidate.exists() or os.path.normcase(os.path.abspath(candidate)) in taken:
        n += 1
        candidate = candidate.with_name(f"{stem}-{n}.wav")
    return candidate
