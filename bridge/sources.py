"""What a batch renders: the audio files of a session folder, or the audio items of a saved REAPER project (.rpp).

An .rpp item becomes the same `ItemView` the REAPER actions read from a running REAPER, and goes through the same
rule (bridge/reaper_items.py `plan_job`): an item gives the same file region, or the same refusal, in a hotkey
action and in a batch of the saved project.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path, PureWindowsPath
from typing import Any

from bridge.protocol import TO_END
from bridge.reaper_items import ItemView, nested_section, plan_job, resolve_source_path, track_label
from engine.errors import AudioError, ConfigError, DataError, ImusicError
from engine.files import AUDIO_FORMATS, audio_files, check_text_path, shown_path, user_path

# Sources that are not audio files; any other type is a file source whose header tells what it holds.
_NOT_FILES = ("MIDI", "VIDEO", "EMPTY", "CLICK", "LTC", "VIDEOEFFECT")


@dataclass(frozen=True)
class Source:
    """One audio region to edit: a whole file (folder mode) or the part of a file an .rpp item plays."""

    path: Path  # the audio file
    rel: str  # unique id inside the session, also the output's place under OUT (posix, no extension)
    start_s: float = 0.0
    end_s: float | None = None  # None = to the end of the file
    meta: dict = field(default_factory=dict, hash=False, compare=False)  # .rpp: track, position, ... for the manifest
    problem: str | None = None  # why this source cannot be rendered (unsupported item, missing file)


@dataclass
class Pair:
    """One (source, edit) of a batch and where its result goes."""

    source: Source
    edit: str  # the instruction as typed
    label: str  # Instruction.label, e.g. "extract drums"
    output: Path

    @property
    def key(self) -> str:
        return f"{self.source.rel} | {self.label}"

    @property
    def end_s(self) -> float:
        """The region's end for audio_read (a negative end: to the end of the file)."""
        return TO_END if self.source.end_s is None else self.source.end_s


_NAME_BYTES = 250  # a name's UTF-8 bytes, with room for a track's "NN " under the common 255-byte limit


def safe_name(text: str, limit: int = 80) -> str:
    """A file-system-safe name: no separators, reserved characters or control characters; at most `limit` characters
    and _NAME_BYTES bytes (70 drum emoji made a 283-byte folder name, and the batch stopped); never empty."""
    text = re.sub(r'[<>:"/\\|?*\x00-\x1f]+', "_", text).strip(" .")[:limit]
    if len(text.encode()) > _NAME_BYTES:
        text = text.encode()[:_NAME_BYTES].decode(errors="ignore").rstrip(" .")
    return text or "untitled"


def folder_sources(folder: Path) -> list[Source]:
    """Every audio file under `folder` (recursive, sorted), hidden files and folders excluded; a folder that cannot be
    read or is a link comes back as a Source with its `problem`, so that the table says what was left out."""
    skipped: list[tuple[Path, str]] = []
    found = audio_files(folder, skipped=skipped)
    full = [p.relative_to(folder).as_posix() for p in found]
    rels = [p.relative_to(folder).with_suffix("").as_posix() for p in found]
    # song.wav and song.flac in one folder must not share outputs: keep the extension where names collide, until
    # none does (song.wav.wav, without its extension, is the song.wav kept whole). Names that differ in case only
    # collide too: macOS and Windows file systems hold one file for both.
    while clashing := {key for key, n in Counter(rel.casefold() for rel in rels).items() if n > 1}:
        kept = [whole if rel.casefold() in clashing else rel for rel, whole in zip(rels, full, strict=True)]
        if kept == rels:  # whole names that still collide (in case only): the loop would go on for ever
            break
        rels = kept
    # Kick.wav beside kick.wav (or Drums/ beside drums/) still collide whole: each gets a mark of its own exact name
    # (the same in every run, whatever else the folder holds)
    clashing = {key for key, n in Counter(rel.casefold() for rel in rels).items() if n > 1}
    rels = [
        f"{rel}-{hashlib.sha1(rel.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
        if rel.casefold() in clashing
        else rel
        for rel in rels
    ]
    sources = [Source(path=p, rel=rel, problem=_name_problem(rel)) for p, rel in zip(found, rels, strict=True)]
    for path, why in skipped:
        rel = shown_path(path.relative_to(folder).as_posix() + "/")
        sources.append(Source(path=path, rel=rel, problem=f"folder {rel} {why}: its files were left out"))
    # a name that is not UTF-8 text is listed as the terminal can show it (its results could be named by nothing else)
    return [replace(s, rel=shown_path(s.rel)) if s.problem else s for s in sources]


def _name_problem(rel: str) -> str | None:
    try:
        check_text_path(rel, "its name")
    except ConfigError as exc:
        return str(exc)
    return None


# --- .rpp projects -------------------------------------------------------------------------------------------------


def _fields(node: Any) -> list[str]:
    # rpp gives a one-word line as a plain string and a longer one as a list.
    return [node] if isinstance(node, str) else list(node)


def _resolve_media(name: str, project_dir: Path) -> Path | None:
    """Find a media file the way REAPER does: as written, relative to the project, or by name in the project."""
    candidates = []
    if PureWindowsPath(name).drive or "\\" in name:
        win = PureWindowsPath(name)
        if not win.drive:
            candidates.append(project_dir.joinpath(*win.parts))
        candidates += [project_dir / win.name, project_dir / "Audio" / win.name, project_dir / "Media" / win.name]
    else:
        try:
            path = user_path(name)
        except ConfigError:  # ~someone unknown here: the name as it stands, looked for like any other
            path = Path(name)
        candidates.append(path if path.is_absolute() else project_dir / path)
        candidates += [project_dir / path.name, project_dir / "Audio" / path.name, project_dir / "Media" / path.name]
    return next((c for c in candidates if c.is_file()), None)


def _take_sections(item: Any) -> list[list[Any]]:
    """Split an ITEM's children into takes: the first take's lines, then one list per TAKE marker."""
    takes: list[list[Any]] = [[]]
    for child in item.children:
        if not hasattr(child, "tag") and _fields(child)[0] == "TAKE":
            takes.append([child])
        else:
            takes[-1].append(child)
    return takes


def _active_take(item: Any) -> list[Any]:
    takes = _take_sections(item)
    for take in takes[1:]:
        if "SEL" in _fields(take[0])[1:]:
            return take
    return takes[0]


def _line(lines: list[Any], key: str) -> list[str]:
    """The values of the first line starting with `key` ([] when absent)."""
    for line in lines:
        if not hasattr(line, "tag") and _fields(line)[0] == key:
            return _fields(line)[1:]
    return []


def _value(lines: list[Any], key: str, default: str = "") -> str:
    """The first value of the line starting with `key` (`default` when absent)."""
    return (_line(lines, key) or [default])[0]


def _source_view(node: Any, project_dir: Path) -> tuple[dict, str, Path | None, str]:
    """ItemView fields of a take's SOURCE (SECTIONs followed to their file), its file name, the file found, and why
    that file cannot be read ("" when it can, or was not found)."""
    if node is None:
        return {"has_take": False, "source_type": "EMPTY"}, "", None, ""
    kind = node.attrib[0] if node.attrib else "EMPTY"
    fields: dict[str, Any] = {"source_type": kind}
    layers: list[tuple[float, float | None, bool]] = []  # SECTIONs, which can nest: outermost first
    if kind == "SECTION":
        while kind == "SECTION":
            length = _value(node.children, "LENGTH")
            layers.append(
                (
                    float(_value(node.children, "STARTPOS", "0")),
                    float(length) if length else None,
                    bool(int(float(_value(node.children, "MODE", "0"))) & 2),
                )
            )
            node = next((c for c in node.children if getattr(c, "tag", None) == "SOURCE"), None)
            kind = node.attrib[0] if node is not None and node.attrib else "EMPTY"
        offset, length, backwards = nested_section(layers)
        fields.update(parent_type=kind, section_offset=offset, reversed=backwards, section_length=length)
    file_name = _value(node.children, "FILE") if node is not None else ""
    path = _resolve_media(file_name, project_dir) if file_name and kind not in _NOT_FILES else None
    unreadable = ""
    if path is not None:
        from bridge.audio_read import probe

        try:
            info = probe(path)
        except (ImusicError, OSError, ValueError) as exc:  # there, but not readable (still being written, damaged)
            path, unreadable = None, str(exc)
        else:
            fields.update(source_length=info.duration, source_channels=info.num_channels)
            if layers:  # a section without LENGTH runs to the end of its parent: fill those in from the file up
                parent, known = info.duration, []
                for start, length, reverse in reversed(layers):
                    parent = parent - start if length is None else length
                    known.append((start, parent, reverse))
                fields["section_length"] = nested_section(known[::-1])[1]
    # Not found: named as the actions name it (resolved against the project folder), so both give one message.
    fields["source_path"] = str(path) if path is not None else resolve_source_path(file_name, str(project_dir))
    fields["is_midi"] = kind == "MIDI"
    return fields, file_name, path, unreadable


def _never(_: str) -> bool:
    return False


def _number(text: str, field_name: str) -> float:
    """A number field of an .rpp line; DataError naming the field when it is none (or not finite)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"its {field_name} is {text!r}, not a number REAPER writes")
    return value


def _stretch_markers(take: list[Any]) -> int:
    """How many stretch markers a take has: its SM line holds them as "pos srcpos [rate]" joined by " + "."""
    markers = _line(take, "SM")
    return " ".join(markers).count("+") + 1 if markers else 0


def _has_pitch_envelope(take: list[Any]) -> bool:
    """Whether a take has a pitch envelope with points (a PITCHENV block with PT lines), as the actions ask REAPER."""
    return any(getattr(node, "tag", None) == "PITCHENV" and _line(node.children, "PT") for node in take)


def _item_view(
    item: Any, track_name: str, track_number: int, project_dir: Path
) -> tuple[ItemView, str, Path | None, str]:
    """The ItemView of an .rpp ITEM (its active take), the name its file is written as, the file found and why it
    cannot be read (_source_view): every field the REAPER actions read from REAPER itself
    (reaper_scripts/project.read_item), so that one rule refuses the same items in both."""
    lines = [c for c in item.children if not hasattr(c, "tag")]
    take = _active_take(item)
    rate, preserve, pitch = (_line(take, "PLAYRATE") + ["1", "1", "0"][len(_line(take, "PLAYRATE")) :])[:3]
    source = next((c for c in take if getattr(c, "tag", None) == "SOURCE"), None)
    source_fields, file_name, path, unreadable = _source_view(source, project_dir)
    view = ItemView(
        position=_number(_value(lines, "POSITION", "0"), "POSITION"),
        length=_number(_value(lines, "LENGTH", "0"), "LENGTH"),
        track_number=track_number,
        track_name=track_name,
        take_name=_value(take, "NAME"),
        start_offset=_number(_value(take, "SOFFS", "0"), "SOFFS"),
        playrate=_number(rate, "PLAYRATE"),
        preserve_pitch=preserve == "1",
        pitch=_number(pitch, "PLAYRATE's pitch"),
        channel_mode=int(_number(_value(take, "CHANMODE", "0"), "CHANMODE")),
        stretch_markers=_stretch_markers(take),
        pitch_envelope=_has_pitch_envelope(take),
        plays_all_takes=_value(lines, "ALLTAKES", "0") == "1" and len(_take_sections(item)) > 1,
        **source_fields,
    )
    return view, file_name, path, unreadable


def read_rpp(project: Path) -> list[Source]:
    """The audio items of a REAPER project, as regions of their source files (the active take of each item).

    Each item is planned by the REAPER actions' own rule; an item it refuses (not the file's own samples, not audio,
    file missing) comes back with `problem` set to the reason: reported, never silently edited as something else.
    """
    import rpp

    try:
        root = rpp.loads(project.read_text(encoding="utf-8", errors="replace"))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{project.name} is not a REAPER project file REAPER wrote: {exc}") from None
    if getattr(root, "tag", None) != "REAPER_PROJECT":
        raise DataError(f"{project.name} is not a REAPER project file (no REAPER_PROJECT header)")
    sources = []
    for t_index, track in enumerate(root.findall("TRACK"), start=1):
        track_name = track_label(_value(track.children, "NAME") or "", t_index)
        track_dir = f"{t_index:02d} {safe_name(track_name)}"
        for i_index, item in enumerate(track.findall("ITEM"), start=1):
            try:
                view, file_name, path, unreadable = _item_view(item, track_name, t_index, project.parent)
            except DataError as exc:  # a hand-edited or damaged item: reported, the others still render
                rel = f"{track_dir}/{i_index:02d} item"
                sources.append(Source(path=project, rel=rel, problem=f"item {i_index} on {track_name}: {exc}"))
                continue
            problem, start, end = None, view.start_offset, view.start_offset + view.length
            try:
                if unreadable:  # there, but not audio yet: said so, not "offline or missing" (its length is unknown)
                    raise AudioError(f"{view.describe()}: {unreadable}")
                plan = plan_job(view, max_seconds=float("inf"), file_exists=bool if path else _never)
                start, end = plan.start_s, plan.end_s
            except AudioError as exc:
                problem = str(exc)
            label = Path(PureWindowsPath(file_name).name if "\\" in file_name else file_name).stem or view.take_name
            meta = {
                "track": track_name,
                "track_index": t_index,
                "item_index": i_index,
                "position_s": view.position,
                "length_s": view.length,
                "take_offset_s": view.start_offset,
                "play_rate": view.playrate,
                "pitch": view.pitch,
                "channel_mode": view.channel_mode,
                "source_type": view.source_type,
                "source_file": file_name,
            }
            sources.append(
                Source(
                    path=path or project.parent / (file_name or "missing"),
                    rel=f"{track_dir}/{i_index:02d} {safe_name(label)}",
                    start_s=start,
                    end_s=end,
                    meta=meta,
                    problem=problem,
                )
            )
    return sources


def collect_sources(session: Path) -> list[Source]:
    """Sources of a session folder or a .rpp file; DataError when there is nothing to render."""
    if not session.exists():
        raise ConfigError(f"{session} does not exist")
    if session.is_file():
        if session.suffix.lower() != ".rpp":
            raise ConfigError(f"{session.name}: give a session folder or a REAPER project (.rpp)")
        sources = read_rpp(session)
        if not sources:
            raise DataError(f"{session.name} has no media items")
        return sources
    sources = folder_sources(session)
    if not sources:
        raise DataError(f"no audio files ({AUDIO_FORMATS}) found under {session}")
    return sources
