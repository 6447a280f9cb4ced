"""Files the project writes: atomically (never half-written, never under a final name while being written), with
JSON-safe values and file-name-safe slugs. One copy of each rule for the server, batch, the CLI, the installer and
the engine's reports, checkpoints and pictures (audio keeps its own writer in bridge/audio_write.py: results go through
a checked folder descriptor, the journal its own under a lock). No torch, no numpy import (numpy values are
recognised by their methods): the client side imports it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, ImusicError

TEMP_SUFFIX = ".tmp"
PARTIAL_SUFFIX = ".partial.wav"  # bridge.audio_write.write_atomic's: an audio result while it is being written
# The audio files the project reads, by name: what pedalboard (regions, sessions) and libsndfile (training data)
# both read on every platform. OPUS and WavPack are not among them (pedalboard cannot open them on Linux).
# The one table of them: every list of audio formats (suffixes, REAPER source types, readers' subsets) derives from it.
FORMAT_SUFFIXES = {"wav": (".wav", ".wave"), "aiff": (".aif", ".aiff"), "flac": (".flac",), "mp3": (".mp3",),
                   "ogg": (".ogg",)}  # fmt: skip
AUDIO_SUFFIXES = tuple(suffix for suffixes in FORMAT_SUFFIXES.values() for suffix in suffixes)
AUDIO_FORMATS = ", ".join(FORMAT_SUFFIXES)  # the same, as help and messages name them: "wav, aiff, flac, mp3, ogg"
# The audio an edit takes: whole Hz from MIN_RATE to MAX_RATE, at most MAX_CHANNELS channels. The Editor checks its
# arrays against them and bridge.audio_read.probe a file's header, so a file the engine cannot edit is said before a
# model loads, by every front end (unsupported_audio: the one wording).
MIN_RATE, MAX_RATE = 1000, 768000
MAX_CHANNELS = 64


def unsupported_audio(rate: float, channels: int) -> str | None:
    """Why audio at `rate` Hz with `channels` channels cannot be edited ("a sample rate of 500 Hz: ..."), or None."""
    if not MIN_RATE <= rate <= MAX_RATE:
        shown = int(rate) if float(rate).is_integer() else rate
        return f"a sample rate of {shown} Hz: the engine edits {MIN_RATE} to {MAX_RATE} Hz"
    if channels > MAX_CHANNELS:
        return f"{channels} channels: the engine edits at most {MAX_CHANNELS}"
    return None


# errno values that say a file cannot be written for want of room (full disk, read-only, quota): every later write
# to that place fails too, so a batch stops at the first, and the server says it as a resource error
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)})


def shown_path(path: str | os.PathLike) -> str:
    """A path as any terminal and message can show it: bytes of a name that are not UTF-8 (on Linux a file name is
    bytes; Python holds such bytes as lone surrogates, which no UTF-8 output takes) written as \\xNN."""
    text = os.fsdecode(path)
    try:
        return text.encode("utf-8").decode("utf-8")
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file system gave: shown as Python writes it
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def user_path(path: str | os.PathLike, error: type[Exception] = ConfigError) -> Path:
    """`path` with a leading ~ or ~user expanded; `error` naming it where that user's home is unknown (Path.expanduser
    raises RuntimeError there, which every command showed as a traceback). Every path a user types goes through it."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        user = Path(path).parts[0]
        raise error(f"cannot read {shown_path(path)}: {user} names no user with a home folder here") from None


def check_text_path(path: str | os.PathLike, what: str = "the file", error: type[Exception] = ConfigError) -> None:
    """`error` ("<what> <path> holds bytes ...") when a path is not UTF-8 text: OSC carries UTF-8 strings only, and
    the audio libraries, the terminal and the JSON records refuse it too. Such a file is renamed, not guessed at."""
    try:
        os.fsdecode(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = shown_path(path)
        raise error(f"{what} {shown} holds bytes that are not UTF-8 text (shown as \\xNN): rename it") from None


def audio_format(path: str | Path) -> str | None:
    """The FORMAT_SUFFIXES key of `path`'s suffix ("wav" for x.WAVE), None for a name that is no audio file."""
    suffix = Path(path).suffix.lower()
    return next((name for name, suffixes in FORMAT_SUFFIXES.items() if suffix in suffixes), None)


def audio_files(
    folder: str | Path, recursive: bool = True, skipped: list[tuple[Path, str]] | None = None
) -> list[Path]:
    """The audio files (AUDIO_SUFFIXES) in `folder` (and below it, `recursive`: each folder's files, then its
    subfolders, all sorted). Hidden files and folders are left out: temporaries of writers (`.x.partial.wav`), macOS
    `._` resource forks, version-control folders. Folders that could not be read, and links to folders (not followed:
    a link can loop), are added to `skipped` as (folder, why) when it is given."""
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:
        if skipped is not None:
            skipped.append((Path(exc.filename), f"cannot be read ({exc.strerror or exc})"))

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        if skipped is not None and recursive:
            links = sorted(d for d in dirs if not d.startswith(".") and os.path.islink(os.path.join(root, d)))
            skipped.extend((Path(root) / d, "is a link to a folder, which is not followed") for d in links)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found.extend(Path(root) / name for name in sorted(files) if _is_audio_name(name))
    return found


def _is_audio_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(AUDIO_SUFFIXES)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs here (True when it cannot be told: its files are then left alone). On Windows,
    os.kill(pid, 0) would terminate the process, so nothing is asked there and every pid counts as running."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's process) or we cannot tell
    return True


def temp_name(name: str, suffix: str = TEMP_SUFFIX) -> str:
    """A fresh temporary file name for `name`'s writer, of the one form `sweep_temps` knows:
    `.{name}.{pid}.{8 hex}{suffix}` (hidden; the pid tells a killed writer's leftover from a live one's)."""
    return f".{name}.{os.getpid()}.{os.urandom(4).hex()}{suffix}"


def sweep_temps(
    folder: str | Path, name: str = "", suffix: str = TEMP_SUFFIX, numbered: bool = False, starting: bool = False
) -> list[Path]:
    """Remove the temporary files `.{name}.{pid}.{8 hex}{suffix}` that writers killed mid-write (kill -9) left in
    `folder`: `atomic_path`'s (any name, `.tmp`) or one target's (`name`; audio results use `.partial.wav`), with
    `numbered` also the names `{name}-2`, `{name}-3`... a result gives way to when its own is taken (GIVE_WAY).
    Only names of that form whose pid is dead go; a live writer's file and every other file stay. `starting`: this
    process has written none yet (a server's start), so its own pid is a killed predecessor's too (a container's
    restarted server often gets the same one). Returns what went."""
    named = (re.escape(name) + (f"(?:{GIVE_WAY})?" if numbered else "")) if name else ".+"
    pattern = re.compile(rf"^\.{named}\.(\d+)\.[0-9a-f]{{8}}{re.escape(suffix)}$")
    removed = []
    for candidate in Path(folder).glob(f".*{suffix}"):
        match = pattern.match(candidate.name)
        pid = int(match.group(1)) if match else 0
        if match and (not pid_alive(pid) or (starting and pid == os.getpid())):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def lock_folder(lock_path: str | Path, busy: str) -> Any:
    """An exclusive advisory lock on `lock_path` (created if need be), held while the returned open file is: it ends
    when the file is closed or the process dies, however it dies. ConfigError(`busy`) when another process holds it.
    A holder may remove the file while it still holds the lock (unlock_and_remove): a lock taken on a file that is no
    longer at `lock_path` is let go and taken again on the one there now, so two holders never lock different files.
    On Windows (no fcntl) nothing is locked and one writer per folder is the user's care."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    for _ in range(100):
        try:
            handle = open(lock_path, "a+")  # noqa: SIM115 (held as long as the caller holds the lock)
        except OSError as exc:
            raise ConfigError(f"cannot create the lock file {lock_path}: {exc.strerror or exc}") from None
        if fcntl is None:
            return handle
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ConfigError(busy) from None
        try:
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(lock_path)):
                return handle
        except OSError:
            pass  # removed by the holder we waited for
        handle.close()
    raise ConfigError(busy)


def unlock_and_remove(handle: Any) -> None:
    """Remove a lock file lock_folder gave, then let the lock go (in that order: a process that opened the file
    meanwhile finds it gone once it holds the lock, and locks a new one). Where an open file cannot be removed
    (Windows, which locks nothing here anyway), it is closed first."""
    try:
        os.unlink(handle.name)
    except PermissionError:
        handle.close()
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
    except OSError:
        pass
    handle.close()


def fsync_folder(folder: str | Path) -> None:
    """Make a rename in `folder` durable (a power cut right after it must not undo it); where folders cannot be opened
    (Windows), the rename is atomic as it stands."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int | None = None, sweep: bool = True) -> Iterator[Path]:
    """A temporary path beside `path` for any writer (torch.save, savefig with an explicit format, write_bytes);
    when the block ends without an error the file is fsynced and renamed over `path`, else removed: `path` is
    either the old file or the new one.

    The temporary name is `.{name}.{pid}.{8 hex}.tmp` (hidden, never a final name's suffix, so nothing that lists
    reports or pictures picks it up); temporaries that writers killed mid-write left in the folder are swept first.
    An existing file keeps its permission mode (else `mode`, else the default for new files). The rename is made
    durable by syncing the folder. `sweep=False` for a writer of many files into a folder it made empty: no sweep (it
    reads the whole folder: per file, that is quadratic) and no folder sync per file (no old file there for a power
    cut to bring back).
    """
    path = Path(path)
    if sweep:
        sweep_temps(path.parent)
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.with_name(temp_name(path.name))
        try:
            os.close(os.open(tmp, flags, 0o600))
            break
        except FileExistsError:
            continue
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDWR | getattr(os, "O_BINARY", 0))  # writable: Windows refuses fsync otherwise
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # what open() would have given a new file (the temporary is 0600)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        if sweep:
            fsync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_audio_atomic(path: str | Path, audio: Any, rate: int, subtype: str = "FLOAT", sweep: bool = True) -> None:
    """Audio ([N] or [N, C], soundfile's order) to `path` in the format its suffix names, through atomic_path: a
    killed writer leaves the old file or none, never a truncated one under the final name. (The engine server's
    results have their own writer, bridge.audio_write, which also keeps them inside the allowed folders.) `sweep` as
    atomic_path's."""
    import soundfile as sf

    path = Path(path)
    with atomic_path(path, sweep=sweep) as tmp:
        sf.write(str(tmp), audio, int(rate), subtype=subtype, format=path.suffix.lstrip(".").upper())


@contextlib.contextmanager
def staged_dir(path: str | Path) -> Iterator[Path]:
    """A fresh folder beside `path` (`.{name}.tmp`) to build a whole folder in (a model); when the block ends without
    an error it takes `path`'s place (the old folder moved aside first, then removed), else it is removed: `path` is
    the old folder or the complete new one, never part of one."""
    path = Path(path)
    staged, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    if old.exists() and staged.exists() and not path.exists():  # killed between its two renames: both are whole
        staged.rename(path)  # the new one (the old moves aside only once it is whole)
    for leftover in (staged, old):  # of a run killed before it ended
        shutil.rmtree(leftover, ignore_errors=True)
    staged.mkdir(parents=True)
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    if path.exists():
        path.rename(old)
    staged.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def output_folder(path: str | Path) -> Path:
    """The -o of a command that writes a folder (a run, a report, a data set); ConfigError when it names a file."""

    path = user_path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file; -o takes a folder")
    return path


def writable_folder(folder: str | Path, make: bool = True) -> None:
    """Make `folder` if needed and prove it takes a file (a real write: os.access says yes to root on read-only
    folders and knows nothing of mounts); ConfigError naming the folder and the reason otherwise. make=False (a dry
    run) writes nothing: the nearest existing folder must be one we may write to."""
    import tempfile

    folder = Path(folder)
    try:
        existing = next((p for p in (folder, *folder.parents) if p.exists() or p.is_symlink()), None)
    except OSError as exc:  # a name longer than the file system takes
        raise ConfigError(f"cannot write to the output folder {folder}: {exc.strerror or exc}") from None
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{existing} is a file, not a folder: choose another place for the output")
    if not make:
        if existing is not None and not os.access(existing, os.W_OK):
            raise ConfigError(f"cannot write to the output folder {folder}: {existing} is not writable")
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".imusic-write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write to the output folder {folder}: {exc.strerror or exc}") from None


def folders_to_make(folder: str | Path) -> list[Path]:
    """`folder` and those above it that do not exist yet, deepest first: what making it makes, for
    `remove_made_folders` to take back when the command that made them fails before writing into them."""
    missing = []
    for candidate in (Path(folder), *Path(folder).parents):
        if candidate.exists() or candidate.is_symlink():
            break
        missing.append(candidate)
    return missing


def remove_made_folders(made: list[Path]) -> None:
    """Take back folders a failed command made (folders_to_make's list), deepest first, each only while it is empty;
    anything in one stops there, so nothing but the command's own leftovers is ever removed (a lock file of its own
    goes first, while locked: unlock_and_remove)."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            return


def missing_folder(path: str | Path) -> str:
    """Why `path` is not a folder to read, in the words every "FOLDER ..." message ends with: "does not exist" or
    "is a file, not a folder"; "" when it is one."""
    path = Path(path)
    if path.is_dir():
        return ""
    return "is a file, not a folder" if path.exists() else "does not exist"


def report_path(path: str | Path, suffix: str, option: str) -> Path:
    """Where a tool writes its figures or table (`option`'s value), checked before any work: it must end in `suffix`
    (.json, .md), so an audio file or anything else given by mistake is never replaced by a report, and its folder
    must take a file (made if need be), so a measurement is not lost to a folder it cannot write; ConfigError
    otherwise. An earlier report of the same name is replaced."""
    path = user_path(path)
    if path.suffix.lower() != suffix:
        raise ConfigError(f"{option} writes a {suffix} file; got {path}")
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; name a {suffix} file in it")
    writable_folder(path.parent)
    return path


def write_bytes_atomic(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """`data` written through `atomic_path`: never half-written, nothing left behind on failure."""
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)


def read_json_object(path: str | Path, missing: str, error: type[Exception] = ImusicError) -> dict[str, Any]:
    """The JSON object a file holds: `error(missing)` when the file is not there, `error` naming the file when it is
    unreadable, not JSON, or holds anything but an object. One rule for every description file a user may hand us
    (model cards, adapter.json, config.json, eval reports)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(missing) from None
    except (OSError, ValueError) as exc:  # a folder, no permission, bad UTF-8, bad JSON
        raise error(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, not a {type(data).__name__}")
    return data


def hash_stream(digest: Any, handle: Any, block: int = 1 << 20) -> Any:
    """Feed what is left of an open binary file to a hashlib `digest` a block at a time; the digest back."""
    for data in iter(lambda: handle.read(block), b""):
        digest.update(data)
    return digest


def short_digest(value: Any) -> str:
    """16 hex digits of the SHA-1 of `value` as JSON: what a run's data or a model's files are, compared later."""
    import hashlib

    return hashlib.sha1(json.dumps(value).encode()).hexdigest()[:16]


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars to numbers, arrays to lists, non-finite floats to null, the rest to text."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def from_saved(cls: type, data: dict, *, renamed: dict[str, str] | None = None, strict: bool = False) -> Any:
    """A dataclass from its saved JSON: names in `renamed` are read under their new name, JSON lists are tuples again.
    A field the class does not have is dropped (a run saved by an older version), or with `strict` a ConfigError
    naming it (weights' metadata must not load half-read)."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    named = {(renamed or {}).get(k, k): v for k, v in data.items()}
    unknown = sorted(set(named) - known)
    if strict and unknown:
        raise ConfigError(f"unknown {cls.__name__} fields: {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in named.items() if k in known})


def write_json_atomic(path: str | Path, data: Any, sort_keys: bool = True) -> None:
    """JSON (indented, JSON-safe values: non-finite floats are null) written atomically."""
    text = json.dumps(jsonable(data), indent=1, sort_keys=sort_keys, ensure_ascii=False)
    write_bytes_atomic(path, text.encode("utf-8"))


def edit_slug(edit: str) -> str:
    """An edit's words in a file name: 'Extract the drums!' -> 'extract_the_drums'."""
    return slug(edit, limit=60, separator="_")


# A result's name leaves room for its writer's temporary name beside it (`temp_name`: about 30 bytes more) under
# the 255-byte name limit of common file systems.
MAX_RESULT_NAME_BYTES = 220
RESULT_SUFFIX = ".wav"  # every result is a WAV
# The names a result gives way to when its own is taken (give_way_name): -2, -3, ... (sweep_temps matches them)
GIVE_WAY = r"-(?:[2-9]|[1-9][0-9]+)"


def give_way_name(path: Path, n: int) -> Path:
    """The name `path` (a result's) takes as its n-th choice, n from 2, when the ones before are taken."""
    if n < 2:
        raise ValueError(f"a result gives way from -2 on, got {n}")
    return path.with_name(f"{path.stem}-{n}{RESULT_SUFFIX}")


def result_file_name(source: str, edit: str, tag: str = "") -> str:
    """How every front end names a result: `<source>.<edit slug>[.<tag>].wav` (`tag`: a job id, slugged); a source
    name too long for that is shortened to fit MAX_RESULT_NAME_BYTES."""
    tail = "." + ".".join([edit_slug(edit), *([slug(tag, 24)] if tag else [])]) + RESULT_SUFFIX
    room = MAX_RESULT_NAME_BYTES - len(tail.encode())
    if len(source.encode()) <= room:
        return source + tail
    # shortened: the end of a name ("take 1", "take 2") is often what tells it apart, so a hash of the whole stays
    import hashlib

    mark = "~" + hashlib.sha1(source.encode()).hexdigest()[:8]
    return source.encode()[: room - len(mark)].decode(errors="ignore") + mark + tail


def result_file_path(output: str | Path) -> Path:
    """A result file a user named: results are WAV, so `x.wav` stays, `x` or `x.take2` gets `.wav` added, and another
    audio format (`x.flac`) is a ConfigError naming the WAV name to use, as is a name too long to be written beside
    its temporary file. One rule for `imusic edit -o` and the server's output path.

    Names that hold no file name of their own are refused: "-" (no standard output here), ".wav" (nothing before the
    suffix) and a device or pipe (/dev/null: its folder would get a null.wav); a trailing dot goes ("x." is x.wav)."""
    path = Path(output)
    name = path.name.rstrip(".")
    if name in ("", "-") or name.lower() == RESULT_SUFFIX:
        raise ConfigError(
            f"name the result file, e.g. {path.with_name('result' + RESULT_SUFFIX)} (got {str(output)!r})"
        )
    try:
        special = path.exists() and not path.is_file() and not path.is_dir()
    except OSError:  # a name too long to look up: the length check below names it
        special = False
    if special:
        raise ConfigError(f"{path} is not a regular file (a device or a pipe): name a .wav file for the result")
    path = path.with_name(name)
    suffix = path.suffix.lower()
    if suffix in AUDIO_SUFFIXES and suffix != RESULT_SUFFIX:
        raise ConfigError(f"results are written as WAV: name the output {path.with_suffix(RESULT_SUFFIX).name}")
    if suffix != RESULT_SUFFIX:
        path = path.with_name(path.name + RESULT_SUFFIX)
    size = len(path.name.encode())
    if size > MAX_RESULT_NAME_BYTES:
        raise ConfigError(
            f"the output file name is {size} bytes long; at most {MAX_RESULT_NAME_BYTES} fit (its temporary file "
            f"needs room beside it): choose a shorter name, {path.name[:40]}..."
        )
    return path


def slug(text: str, limit: int = 40, separator: str = "-") -> str:
    """A file-name-safe short form: 'Extract the drums!' -> 'extract-the-drums' ("edit" when nothing is left)."""
    words = re.sub(r"[^a-z0-9]+", separator, text.lower()).strip(separator)
    return words[:limit].rstrip(separator) or "edit"


def link_tree(source: Path, target: Path) -> None:
    """Hard-link the files of a model folder (GBs for real models) into `target`, copying where links are not
    possible (another file system): a base shared by several model folders without a second copy on disk."""
    target.mkdir(parents=True, exist_ok=True)
    for file in Path(source).iterdir():
        real = file.resolve()  # hub snapshots hold symlinks into blobs/
        if real.is_file():
            try:
                os.link(real, target / file.name)
            except OSError:
                shutil.copy2(real, target / file.name)
