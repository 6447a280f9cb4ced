"""Stem data set layouts -> one catalog of songs and their stem files.

Three layouts are read:
- Slakh2100: `TrackNNNNN/metadata.yaml` (stems with `inst_class`, `audio_rendered`), `TrackNNNNN/stems/SNN.flac`,
  optionally under `train/`, `validation/`, `test/` (the official split, kept as is).
- MoisesDB: `PROVIDER/TRACK_UUID/data.json` (stems with `stemName` and tracks with `id`, `extension`), audio at
  `TRACK_UUID/STEMNAME/ID.EXT`; several tracks of one stem name form one stem (the moisesdb package's rule).
- Plain folders: `SONG/stem_name.wav|flac|...`, the class taken from the file name; mix files are ignored.

Little is decoded here: each file's header and its last 4096 frames (`probe`: a copy cut short is found at the scan,
not when a run first draws near its end), so a scan of 2100 songs takes seconds.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from engine.errors import DataError
from engine.files import audio_files, missing_folder, user_path
from engine.train.data import DATASET_JSON, read_dataset_json
from engine.train.data.stems import canonical_class, class_from_filename, is_mix_name
from engine.train.data.yamlio import read_yaml

# Slakh2100-redux also has `omitted/` (duplicate songs left out of every split).
SPLIT_DIRS = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "test": "test",
    "omitted": "omitted",
}
LAYOUTS = ("slakh", "moisesdb", "folder")
# A Slakh2100 track's files (what `imusic data synth` writes too): its metadata, its stems' folder and its mix
SLAKH_METADATA = "metadata.yaml"
SLAKH_STEMS = "stems"
SLAKH_MIX = "mix.flac"


@dataclass(frozen=True)
class StemFile:
    """One audio file of one instrument in one song."""

    name: str  # "S03", "bass/1f2e...", "bass_di"
    cls: str  # Slakh-style class name: "Drums", "Bass", ...
    path: Path
    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


@dataclass
class Song:
    """A song: its id (unique in the catalog), its stems, and the split its source assigns, if any."""

    song_id: str
    path: Path
    stems: list[StemFile]
    split: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Common length of the stems (the shortest one)."""
        return min((stem.seconds for stem in self.stems), default=0.0)

    def classes(self) -> list[str]:
        """Classes present, in first-seen order."""
        seen: list[str] = []
        for stem in self.stems:
            if stem.cls not in seen:
                seen.append(stem.cls)
        return seen


@dataclass
class Catalog:
    """Every usable song of a data set, and what was skipped and why."""

    root: Path
    layout: str
    songs: list[Song]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    meta: dict = field(default_factory=dict)  # dataset.json when present

    def problem_counts(self) -> Counter:
        return Counter(reason for _, reason in self.problems)


_TAIL_FRAMES = 4096  # read at a file's end by probe: a copy cut short fails there, not hours into a run


class CutShort(Exception):
    """A file whose header reads but whose end does not decode: an interrupted copy, or damage."""


def probe(path: Path) -> tuple[int, int, int]:
    """(frames, sample rate, channels) of an audio file, from its header, after reading its last frames: a FLAC cut
    short keeps the header of the whole file and failed only when a clip was drawn near its end (CutShort, or
    soundfile's own error for a file that is not audio)."""
    with sf.SoundFile(str(path)) as handle:
        frames, rate, channels = handle.frames, handle.samplerate, handle.channels
        if frames <= 0:
            raise RuntimeError("empty")
        tail = min(frames, _TAIL_FRAMES)
        try:
            handle.seek(frames - tail)
            read = len(handle.read(tail, dtype="float32", always_2d=True))
        except (RuntimeError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
            raise CutShort(f"its end does not decode ({exc})") from None
    if read < tail:
        raise CutShort(f"it holds {frames - tail + read} of the {frames} frames its header names")
    return frames, rate, channels


DAMAGED_STEM = "damaged or cut short stem file"
# A file named like a song's mix that also names an instrument: left out as the mix (a mix read as a stem would teach
# "extract piano" to give the whole song), and said, as it may be a submix stem to rename
MIX_NAMED_STEM = "named like a mix (left out; rename it if it is a stem)"


def _stem(name: str, cls: str, path: Path, problems: list[tuple[str, str]]) -> StemFile | None:
    if not path.is_file():
        problems.append((str(path), "missing stem file"))
        return None
    try:
        frames, rate, channels = probe(path)
    except CutShort:
        problems.append((str(path), DAMAGED_STEM))
        return None
    except Exception:  # soundfile raises several types for broken files; any of them means unreadable
        problems.append((str(path), "unreadable stem file"))
        return None
    return StemFile(name=name, cls=cls, path=path, frames=frames, sample_rate=rate, channels=channels)


def _song_id(folder: Path, root: Path) -> str:
    # The folder name, prefixed by its parents below the root (split folders aside) so that ids stay unique.
    if folder == root:
        return folder.name
    parts = [p for p in folder.relative_to(root).parts if p.lower() not in SPLIT_DIRS]
    return "/".join(parts) or folder.name


def _split_of(path: Path, root: Path) -> str | None:
    for part in path.relative_to(root).parts[:-1]:
        if part.lower() in SPLIT_DIRS:
            return SPLIT_DIRS[part.lower()]
    return None


def _find(root: Path, name: str, max_depth: int) -> list[Path]:
    found: list[Path] = []
    level = [root]
    for _ in range(max_depth + 1):
        next_level: list[Path] = []
        for folder in level:
            candidate = folder / name
            if candidate.is_file():
                found.append(candidate)
                continue
            try:
                next_level.extend(sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
            except OSError:
                continue
        level = next_level
    return sorted(found)


def _scan_slakh(root: Path, problems: list[tuple[str, str]]) -> list[Song]:
    songs: list[Song] = []
    for meta_path in _find(root, SLAKH_METADATA, 2):
        track = meta_path.parent
        if not (track / SLAKH_STEMS).is_dir() and not (track / SLAKH_MIX).is_file():
            continue
        try:
            meta = read_yaml(meta_path)
        except Exception:
            problems.append((str(meta_path), f"unreadable {SLAKH_METADATA}"))
            continue
        audio_dir = track / str(meta.get("audio_dir") or SLAKH_STEMS)
        stems: list[StemFile] = []
        for name, entry in (meta.get("stems") or {}).items():
            if not isinstance(entry, dict) or not entry.get("audio_rendered", True):
                continue  # Slakh lists stems it never rendered; the official loader skips them too
            cls = canonical_class(str(entry.get("inst_class") or "Other"))
            path = audio_dir / f"{name}.flac"
            if not path.is_file():
                wav = audio_dir / f"{name}.wav"
                path = wav if wav.is_file() else path
            stem = _stem(str(name), cls, path, problems)
            if stem is not None:
                stems.append(stem)
        info = {key: value for key, value in meta.items() if key != "stems" and not isinstance(value, dict)}
        songs.append(Song(_song_id(track, root), track, stems, _split_of(track, root), info))
    return songs


def _scan_moisesdb(root: Path, problems: list[tuple[str, str]]) -> list[Song]:
    songs: list[Song] = []
    for json_path in _find(root, "data.json", 2):
        track = json_path.parent
        try:
            data = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            problems.append((str(json_path), "unreadable data.json"))
            continue
        if not isinstance(data, dict) or "stems" not in data:
            continue
        stems: list[StemFile] = []
        for stem_entry in data.get("stems") or []:
            stem_name = str(stem_entry.get("stemName", "other"))
            cls = canonical_class(stem_name)
            for sub in stem_entry.get("tracks") or []:
                path = track / stem_name / f"{sub.get('id')}.{sub.get('extension', 'wav')}"
                stem = _stem(f"{stem_name}/{sub.get('id')}", cls, path, problems)
                if stem is not None:
                    stems.append(stem)
        info = {key: data[key] for key in ("song", "artist", "genre") if key in data}
        songs.append(Song(_song_id(track, root), track, stems, _split_of(track, root), info))
    return songs


def _audio_files(folder: Path) -> list[Path]:
    return audio_files(folder, recursive=False)  # os.walk: an unreadable folder holds nothing


def _scan_folder(root: Path, problems: list[tuple[str, str]]) -> list[Song]:
    folders = [root] if _audio_files(root) else []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if child.name.lower() in SPLIT_DIRS:
            folders.extend(sorted(p for p in child.iterdir() if p.is_dir() and not p.name.startswith(".")))
        else:
            folders.append(child)
    songs: list[Song] = []
    seen: dict[Path, Path] = {}  # a folder's real path -> the folder read for it
    # folders that are links last: a song linked elsewhere is read where it really lies, the link named
    for folder in sorted(folders, key=Path.is_symlink):
        real = folder.resolve()
        if real in seen:  # a link to a song already read: one song in two splits (a test song trained on)
            problems.append((str(folder), f"the same song folder as {seen[real]} (a link): read once"))
            continue
        seen[real] = folder
        files = []
        for path in _audio_files(folder):
            if not is_mix_name(path.stem):
                files.append(path)
            elif class_from_filename(path.stem) != "Other":  # "Drums Mix", "Bass Master": said, not passed over
                problems.append((str(path), MIX_NAMED_STEM))
        if not files:
            continue
        stems = [
            stem
            for stem in (_stem(p.stem, class_from_filename(p.stem), p, problems) for p in files)
            if stem is not None
        ]
        split = _split_of(folder / "x", root) if folder != root else None
        songs.append(Song(_song_id(folder, root), folder, stems, split))
    return songs


_SCANNERS = {"slakh": _scan_slakh, "moisesdb": _scan_moisesdb, "folder": _scan_folder}
_DESCRIPTIONS = {
    "slakh": "Slakh2100 (TrackNNNNN/metadata.yaml + stems/SNN.flac)",
    "moisesdb": "MoisesDB (PROVIDER/TRACK/data.json + STEM/ID.wav)",
    "folder": "plain folders (SONG/stem_name.wav)",
}


def scan(root: str | Path, layout: str = "auto") -> Catalog:
    """Find every song of a data set. `layout` is "auto" (first that finds songs) or one of LAYOUTS."""
    root = user_path(root)
    if problem := missing_folder(root):
        raise DataError(f"data folder {root} {problem}")
    if layout != "auto" and layout not in _SCANNERS:
        raise DataError(f"unknown layout {layout!r}: use one of auto, {', '.join(LAYOUTS)}")
    order = LAYOUTS if layout == "auto" else (layout,)
    for name in order:
        problems: list[tuple[str, str]] = []
        songs = _SCANNERS[name](root, problems)
        if not songs and not problems:
            continue
        usable: list[Song] = []
        for song in songs:
            if not song.stems:
                problems.append((str(song.path), "no readable stems"))
            else:
                usable.append(song)
        # strict where the file is there: a corrupt one must not silently trade its split for a hash split
        meta = read_dataset_json(root, "") if (root / DATASET_JSON).exists() else {}
        _apply_suggested_split(usable, meta)
        return Catalog(root=root, layout=name, songs=usable, problems=problems, meta=meta)
    tried = "; ".join(_DESCRIPTIONS[name] for name in order)
    raise DataError(f"no stem data set found in {root}: tried {tried}")


def _apply_suggested_split(songs: list[Song], meta: dict) -> None:
    # dataset.json (written by `imusic data synth`) suggests a split by song; folder splits take precedence.
    suggestion = meta.get("split")
    if not isinstance(suggestion, dict):
        return
    assignment = {str(song_id): split for split, ids in suggestion.items() for song_id in (ids or [])}
    for song in songs:
        if song.split is None and song.song_id in assignment:
            song.split = SPLIT_DIRS.get(assignment[song.song_id], assignment[song.song_id])
