"""Audio files at the edges: read exactly a region of any file pedalboard reads, write results atomically.

Inside, audio is float32 [channels, samples] at the file's own rate. Results are 32-bit float WAV (no clipping: an
edit that overshoots full scale keeps its peaks for the DAW to handle), written under a temporary name and renamed,
never over the input or another file unless asked. The server and `imusic batch` share these functions.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import AudioError

# A region may end this far past the end of the file (DAW positions are rounded); the missing samples are silence.
END_TOLERANCE_S = 0.010
RESULTS_DIR = "results"


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


def _open(path: str | Path):
    from pedalboard.io import AudioFile

    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file")
    if not path.exists():
        raise AudioError(f"no such file: {path}")
    try:
        return AudioFile(str(path))
    except (ValueError, RuntimeError, OSError) as exc:
        raise AudioError(f"cannot read {path} as audio (wav, aiff, flac, mp3, ogg): {exc}") from None


def probe(path: str | Path) -> AudioInfo:
    """Rate, channel count and length of an audio file (header only); AudioError if it is not readable audio."""
    with _open(path) as f:
        info = AudioInfo(Path(path), int(round(f.samplerate)), int(f.num_channels), int(f.frames))
    if info.frames <= 0 or info.num_channels <= 0 or info.sample_rate <= 0:
        raise AudioError(f"{path} holds no audio")
    return info


def region_frames(info: AudioInfo, start_s: float, end_s: float) -> tuple[int, int]:
    """The region [start_s, end_s) as frame indices of the file; end_s < 0 means the end of the file.

    AudioError for a region that is empty, negative, or lies past the end of the file (beyond END_TOLERANCE_S).
    """
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
            raise AudioError(f"{info.path.name} ended {missing / info.sample_rate:.3f} s before the region did")
        audio = np.pad(audio, ((0, 0), (0, missing)))
    if not np.isfinite(audio).all():
        raise AudioError(f"{info.path.name} holds NaN or infinite samples in {start_s:g}-{end_s:g} s")
    return np.ascontiguousarray(audio[:, : stop - start]), info.sample_rate


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's process) or we cannot tell: leave its file alone
    return True


def sweep_partials(path: str | Path) -> list[Path]:
    """Remove the temporary files `write_atomic` left beside `path` in a process that no longer runs (kill -9).

    Only names of the form `.{stem}.{pid}.{hex}.partial.wav` whose pid is dead are removed: a live writer's file,
    and every other file, is left alone. Returns what was removed.
    """
    path = Path(path)
    removed = []
    prefix = f".{path.stem}."
    for candidate in path.parent.glob(f".{glob.escape(path.stem)}.*.partial.wav"):
        middle = candidate.name[len(prefix) : -len(".partial.wav")].split(".")
        if len(middle) != 2 or not middle[0].isdigit():
            continue
        if not _pid_alive(int(middle[0])):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def write_atomic(path: str | Path, audio: np.ndarray, sample_rate: int, overwrite: bool = False) -> Path:
    """Write audio [C, N] as a 32-bit float WAV: to a temporary name beside `path`, fsync, then rename.

    With overwrite=False an existing file is never replaced (FileExistsError), even by a racing writer.
    """
    from pedalboard.io import AudioFile

    path = Path(path)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.ndim != 2 or audio.shape[0] < 1:
        raise AudioError(f"cannot write audio shaped {tuple(audio.shape)}; expected [channels, samples]")
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.{os.urandom(4).hex()}.partial.wav")
    try:
        with AudioFile(
            str(temporary), "w", samplerate=float(sample_rate), num_channels=audio.shape[0], bit_depth=32
        ) as f:
            f.write(np.ascontiguousarray(audio))
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)  # fails if path exists: no window where another file could be replaced
            except FileExistsError:
                raise
            except (NotImplementedError, OSError):
                # file systems without hard links (FAT, some network shares): check, then rename
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


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of an instruction: 'Extract the drums!' -> 'extract-the-drums'."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return words[:limit].rstrip("-") or "edit"


def unique_result_path(
    input_path: str | Path,
    instruction: str,
    output: str | Path | None = None,
    reserved: Iterable[str | Path] = (),
) -> Path:
    """Where a result goes, never an existing file, the input, or a path in `reserved` (results still being made).

    output None or "": `<input folder>/results/<input stem>.<instruction slug>.wav`; an existing folder (or a path
    ending in a separator): that name inside it; a file path: that name with a .wav suffix. Taken names get -2, -3...
    """
    input_path = Path(input_path)
    name = f"{input_path.stem}.{slug(instruction)}.wav"
    if not output:
        candidate = input_path.parent / RESULTS_DIR / name
    elif str(output).endswith(("/", os.sep)) or Path(output).is_dir():
        candidate = Path(output) / name
    else:
        candidate = Path(output).with_suffix(".wav")
    taken = {os.path.normcase(os.path.abspath(p)) for p in reserved}
    taken.add(os.path.normcase(os.path.abspath(input_path)))
    stem, n = candidate.stem, 1
    while candidate.exists() or os.path.normcase(os.path.abspath(candidate)) in taken:
        n += 1
        candidate = candidate.with_name(f"{stem}-{n}.wav")
    return candidate
