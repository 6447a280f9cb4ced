"""Results going out: 32-bit float WAV (no clipping: an edit that overshoots full scale keeps its peaks for the DAW to
handle), written under a temporary name and renamed, never over the input or another file unless asked, never outside
the folders a server may use. The server, `imusic edit` and `imusic batch` share these functions.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from bridge.protocol import FORBIDDEN_PATH
from engine.errors import AudioError, ImusicError
from engine.files import (
    PARTIAL_SUFFIX,
    fsync_folder,
    give_way_name,
    result_file_name,
    result_file_path,
    sweep_temps,
    temp_name,
    writable_folder,
)

RESULTS_DIR = "results"  # where a result goes by default: beside its input, in this folder
# Called by write_atomic with the final path and the finished temporary file's identity (file_identity) right before
# the file takes that name: the server journals it, so that a restart knows the file there as the job's own result.
BeforeLink = Callable[[Path, dict[str, int]], None]


def file_identity(stat: os.stat_result) -> dict[str, int]:
    """What tells one file from any other at a name: device, inode, size and modification time (a link or a rename
    keeps all four; a file written anew there, or the same bytes copied there, does not)."""
    return {"dev": stat.st_dev, "ino": stat.st_ino, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def holds_file(path: str | Path, identity: dict[str, int]) -> bool:
    """Whether `path` is that very file (file_identity), not a link to it or another file put there since."""
    try:
        return file_identity(os.lstat(path)) == {
            key: int(identity.get(key, -1)) for key in ("dev", "ino", "size", "mtime_ns")
        }
    except (OSError, TypeError, ValueError, AttributeError):
        return False


class UnsafeDestination(ImusicError):
    """The folder a result is written to left the allowed roots (a folder on its path became a symlink), or the input a
    job reads is outside them (a job journalled by a server that had other roots)."""

    code = FORBIDDEN_PATH


def sweep_partials(path: str | Path, starting: bool = False) -> list[Path]:
    """Remove the temporary files `write_atomic` left beside `path` (`.{stem}.{pid}.{hex}.partial.wav`), or beside
    the `{stem}-N.wav` its result gave way to (unique_result_path), in a process that no longer runs (kill -9); a live
    writer's file and every other file stay (`starting`: see engine.files.sweep_temps). Returns what was removed."""
    path = Path(path)
    return sweep_temps(path.parent, name=path.stem, suffix=PARTIAL_SUFFIX, numbered=True, starting=starting)


def _partial_name(path: Path) -> str:
    return temp_name(path.stem, PARTIAL_SUFFIX)


def root_of(folder: Path, roots: Sequence[Path]) -> Path | None:
    """The allowed root `folder` lies in (both absolute, symlinks already resolved), or None: the one test of "inside
    the folders this server may use", for the paths a request names and for the folder a result is written in."""
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
    root = root_of(folder, roots)
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


_WRITE_BLOCK = 1 << 18  # frames handed to the WAV writer at once


def _write_wav(handle, audio: np.ndarray, sample_rate: int) -> None:
    from pedalboard.io import AudioFile

    with AudioFile(
        handle, "w", samplerate=float(sample_rate), num_channels=audio.shape[0], bit_depth=32, format="wav"
    ) as f:
        # in blocks: pedalboard copies what it is given (an hour of stereo whole: 1.3 GB more at the write)
        for start in range(0, audio.shape[1], _WRITE_BLOCK):
            block = audio[:, start : start + _WRITE_BLOCK]
            # pedalboard reads a square array's layout from its shape and cannot (2 samples of stereo: "Unable to
            # determine channel layout"): its first sample goes alone, the rest is no longer square
            square = block.shape[0] == block.shape[1] > 1
            for part in (block[:, :1], block[:, 1:]) if square else (block,):
                f.write(np.ascontiguousarray(part))


def write_atomic(
    path: str | Path,
    audio: np.ndarray,
    sample_rate: int,
    overwrite: bool = False,
    roots: Sequence[str | Path] | None = None,
    before_link: BeforeLink | None = None,
) -> Path:
    """Write audio [C, N] as a 32-bit float WAV: to a temporary name beside `path`, fsync, then rename.

    With overwrite=False an existing file is never replaced (FileExistsError), even by a racing writer.
    With `roots` (absolute, symlinks resolved): the folder is checked when the file is created, not before: the
    temporary file and the rename both happen in a descriptor of the folder reached without following symlinks from
    the root it lies in; UnsafeDestination if a folder on the way became a symlink or left the roots.
    `before_link(path, identity)` is called once the temporary file is complete, before it takes the name; what it
    raises abandons the write.
    """
    path = Path(path)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.ndim != 2 or audio.shape[0] < 1:
        raise AudioError(f"cannot write audio shaped {tuple(audio.shape)}; expected [channels, samples]")
    checked = [Path(r) for r in roots] if roots is not None else None
    if {os.open, os.mkdir, os.stat, os.link, os.rename, os.unlink} <= os.supports_dir_fd and _NOFOLLOW:
        return _write_in_folder(path, audio, sample_rate, overwrite, checked, before_link)
    return _write_by_path(path, audio, sample_rate, overwrite, checked, before_link)  # Windows: no dir_fd


def _write_in_folder(
    path: Path,
    audio: np.ndarray,
    sample_rate: int,
    overwrite: bool,
    roots: list[Path] | None,
    before_link: BeforeLink | None,
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
            if before_link is not None:
                before_link(path, file_identity(os.stat(temporary, dir_fd=dir_fd, follow_symlinks=False)))
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
    if roots is not None and root_of(Path(os.path.realpath(folder)), roots) is None:
        raise _outside(folder, roots, f"it resolves to {os.path.realpath(folder)}")


def _write_by_path(
    path: Path,
    audio: np.ndarray,
    sample_rate: int,
    overwrite: bool,
    roots: list[Path] | None,
    before_link: BeforeLink | None,
) -> Path:
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
        if before_link is not None:
            before_link(path, file_identity(os.lstat(temporary)))
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
        fsync_folder(path.parent)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def names_folder(output: str | Path) -> bool:
    """Whether an output a user gave names a folder to put the result in: an existing folder, or a path ending in a
    separator (a folder not made yet). A path the system cannot even look up (a name too long) names no folder."""
    try:
        return str(output).endswith(("/", os.sep)) or Path(output).is_dir()
    except OSError:
        return False


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
    elif names_folder(output):
        candidate = Path(output) / name
    else:
        candidate = result_file_path(output)
    writable_folder(candidate.parent, make=False)  # a file in the way is said now, not after the edit
    taken = {os.path.normcase(os.path.abspath(p)) for p in reserved}
    taken.add(os.path.normcase(os.path.abspath(input_path)))
    first, n = candidate, 1
    while os.path.lexists(candidate) or os.path.normcase(os.path.abspath(candidate)) in taken:
        n += 1
        candidate = give_way_name(first, n)
    return candidate
