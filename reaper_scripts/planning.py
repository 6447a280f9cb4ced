"""The decisions behind every REAPER action, as plain functions of plain values (no REAPER, no torch).

An action reads what it needs from REAPER into `ItemView`s, asks these functions which region to send, where the
result goes and what it is called, and then only calls REAPER to carry that out. Tests drive these directly.

What is sent is what the user hears from the take, or nothing: the source region of an item is
`[D_STARTOFFS, D_STARTOFFS + D_LENGTH * D_PLAYRATE]` of the file. A play rate other than 1 is accepted only when
it is a plain resample (preserve-pitch off, no pitch shift): the source region is edited and the result is
inserted with the same play rate, so both line up sample for sample. Time-stretched (rate with preserve pitch),
pitch-shifted and reversed takes, and items that loop or run past their source, are refused with a message that
says how to make them editable (glue the item). Take FX and envelopes are not part of the region: results are dry.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import AudioError, InstructionError

OPERATIONS = ("extract", "remove", "add")
STEMS = ("drums", "bass", "piano", "guitar")

# REAPER source types whose file samples the engine can read (pedalboard reads WAV/AIFF/FLAC/MP3/OGG).
AUDIO_SOURCE_TYPES = frozenset({"WAVE", "AIFF", "FLAC", "MP3", "VORBIS", "OGG", "OPUS", "WAVPACK"})
# Seconds compared as equal: well under one sample at 192 kHz, above REAPER's float noise in saved geometry.
EPSILON = 1e-6
DEFAULT_MAX_SECONDS = 600.0
NAME_SEPARATOR = " \u00b7 "  # "Bass · extract drums"
MAX_LABEL_CHARS = 48


@dataclass(frozen=True)
class PresetAction:
    """One hotkey action: a fixed instruction on the selection."""

    operation: str
    stem: str

    @property
    def instruction(self) -> str:
        return f"{self.operation} {self.stem}"

    @property
    def script_name(self) -> str:
        return f"imusic_{self.operation}_{self.stem}.py"


PRESET_ACTIONS = tuple(PresetAction(op, stem) for op in OPERATIONS for stem in STEMS)


@dataclass(frozen=True)
class ItemView:
    """What an action reads from REAPER about one item and its active take (seconds, REAPER's own values)."""

    position: float  # D_POSITION
    length: float  # D_LENGTH, timeline seconds
    track_number: int  # IP_TRACKNUMBER, 1-based
    track_name: str = ""
    take_name: str = ""
    has_take: bool = True
    is_midi: bool = False
    source_type: str = "WAVE"  # GetMediaSourceType of the take's source
    source_path: str = ""  # the file (of the parent source for a SECTION)
    source_length: float = 0.0  # seconds of the file (of the parent for a SECTION)
    start_offset: float = 0.0  # D_STARTOFFS
    playrate: float = 1.0  # D_PLAYRATE
    pitch: float = 0.0  # D_PITCH, semitones
    preserve_pitch: bool = True  # B_PPITCH
    reversed: bool = False  # SECTION source with its reverse flag
    section_offset: float = 0.0  # SECTION start in the parent file
    section_length: float | None = None  # SECTION length, None when the take is not a section
    parent_type: str = ""  # type of the parent source for a SECTION

    def describe(self) -> str:
        """How a message names this item for the user."""
        track = track_label(self.track_name, self.track_number)
        take = f'"{self.take_name}"' if self.take_name else "item"
        return f"{take} at {format_time(self.position)} on {track}"


@dataclass(frozen=True)
class JobPlan:
    """One job: the file region to send and where its result goes on the timeline."""

    source_path: str
    start_s: float  # seconds into the file
    end_s: float
    position: float  # timeline position of the result item
    length: float  # timeline length of the result item
    playrate: float  # D_PLAYRATE of the result item (the source's, so both line up)
    track_number: int  # 1-based number of the source track when planned

    @property
    def duration(self) -> float:
        return self.end_s - self.start_s


def format_time(seconds: float) -> str:
    """Seconds as m:ss.mmm, the way REAPER's ruler shows them by default."""
    minutes, rest = divmod(max(0.0, seconds), 60.0)
    return f"{int(minutes)}:{rest:06.3f}"


def track_label(name: str, number: int) -> str:
    """A track's name for messages and result names; REAPER shows unnamed tracks by number."""
    name = name.strip()
    return name if name else f"Track {number}"


def clip_to_range(position: float, length: float, start: float, end: float) -> tuple[float, float] | None:
    """The part of [position, position + length] inside [start, end] as (position, length); None if they miss."""
    lo = max(position, start)
    hi = min(position + length, end)
    if hi - lo <= EPSILON:
        return None
    return lo, hi - lo


def plan_job(
    item: ItemView,
    *,
    clip: tuple[float, float] | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    file_exists: Callable[[str], bool] = os.path.isfile,
) -> JobPlan:
    """Which file region an item (optionally clipped to a timeline range) sends; AudioError if none is faithful.

    `clip` is (start, end) on the timeline, e.g. the time selection.
    """
    where = item.describe()
    if not item.has_take:
        raise AudioError(f"{where} is empty: it has no take to edit.")
    if item.is_midi or item.source_type == "MIDI" or item.parent_type == "MIDI":
        raise AudioError(f"{where} is MIDI: render or freeze it to audio first (Item > Apply track/take FX).")
    if item.reversed:
        raise AudioError(f"{where} is reversed: the file plays backwards there. Glue the item first (Item > Glue).")
    if abs(item.pitch) > EPSILON:
        raise AudioError(
            f"{where} is pitch-shifted ({item.pitch:+g} semitones): glue the item first (Item > Glue) "
            "so the edit hears what you hear."
        )
    rate = item.playrate
    if rate <= 0:
        raise AudioError(f"{where} has an invalid play rate ({rate:g}).")
    if abs(rate - 1.0) > EPSILON and item.preserve_pitch:
        raise AudioError(
            f"{where} is time-stretched (rate {rate:g} with preserve pitch): glue the item first (Item > Glue)."
        )
    kind = item.parent_type if item.section_length is not None else item.source_type
    if kind in ("", "EMPTY"):
        raise AudioError(f"{where} has an empty take: nothing to edit.")
    if kind not in AUDIO_SOURCE_TYPES:
        raise AudioError(f"{where} is a {kind} source; only audio files (WAV, AIFF, FLAC, MP3, OGG) can be edited.")
    if not item.source_path or not file_exists(item.source_path):
        shown = item.source_path or "(no file)"
        raise AudioError(f"{where}: its source file is offline or missing: {shown}")

    position, length = item.position, item.length
    if clip is not None:
        clipped = clip_to_range(position, length, *clip)
        if clipped is None:
            raise AudioError(f"{where} is outside the time selection.")
        position, length = clipped
    if length <= EPSILON:
        raise AudioError(f"{where} has zero length.")

    # The take offset can be negative (the item starts before the file): REAPER plays silence there.
    offset_in_take = item.start_offset + (position - item.position) * rate
    start = offset_in_take
    end = offset_in_take + length * rate
    available = item.source_length
    if item.section_length is not None:
        start += item.section_offset
        end += item.section_offset
        if offset_in_take < -EPSILON or offset_in_take + length * rate > item.section_length + EPSILON:
            raise AudioError(f"{where} loops its section: glue the item first (Item > Glue).")
    if start < -EPSILON or end > available + EPSILON:
        raise AudioError(
            f"{where} runs past its source file (looped or padded with silence): glue the item first (Item > Glue)."
        )
    start, end = max(0.0, start), min(available, end)
    if end - start > max_seconds + EPSILON:
        raise AudioError(
            f"{where} is {end - start:.1f} s long; the engine edits at most {max_seconds:g} s at a time. "
            "Select a shorter item or set a time selection."
        )
    return JobPlan(
        source_path=item.source_path,
        start_s=start,
        end_s=end,
        position=position,
        length=length,
        playrate=rate,
        track_number=item.track_number,
    )


def plan_jobs(
    items: list[ItemView],
    *,
    clip: tuple[float, float] | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    file_exists: Callable[[str], bool] = os.path.isfile,
) -> list[JobPlan]:
    """Plan every item, or none: one AudioError naming each item that cannot be edited faithfully."""
    if not items:
        raise AudioError("Nothing selected: select audio items, or set a time selection and select the tracks to edit.")
    plans, problems = [], []
    for item in items:
        try:
            plans.append(plan_job(item, clip=clip, max_seconds=max_seconds, file_exists=file_exists))
        except AudioError as exc:
            problems.append(str(exc))
    if problems:
        head = "Nothing was changed." if len(items) > 1 else ""
        shown = problems[:8] + ([f"... and {len(problems) - 8} more."] if len(problems) > 8 else [])
        raise AudioError("\n".join([*shown, head]).strip())
    return plans


def resolve_source_path(filename: str, project_dir: str) -> str:
    """An absolute path for a source file name as REAPER reports it (relative names are relative to the project)."""
    if not filename:
        return ""
    if os.path.isabs(filename) or re.match(r"^[A-Za-z]:[\\/]", filename) or filename.startswith("\\\\"):
        return filename
    return os.path.normpath(os.path.join(project_dir, filename)) if project_dir else filename


def normalize_instruction(text: str) -> str:
    """The instruction a user typed, trimmed; InstructionError when it is empty."""
    cleaned = " ".join(text.split())
    if not cleaned:
        raise InstructionError(
            "Type an instruction such as: extract drums, remove bass, add piano "
            f"(operations: {', '.join(OPERATIONS)}; stems: {', '.join(STEMS)})."
        )
    return cleaned


def edit_label(instruction: str) -> str:
    """The short name of an edit, as it appears in track names and the undo history."""
    label = normalize_instruction(instruction)
    if len(label) > MAX_LABEL_CHARS:
        label = label[: MAX_LABEL_CHARS - 1].rstrip() + "\u2026"
    return label


def result_track_name(source_track_name: str, source_track_number: int, instruction: str) -> str:
    """The new track's name: source track, then the edit ("Bass · extract drums")."""
    return track_label(source_track_name, source_track_number) + NAME_SEPARATOR + edit_label(instruction)


def undo_description(instruction: str) -> str:
    """The undo point's name for inserting results of one action."""
    return f"Instruct: {edit_label(instruction)}"


def result_insert_index(source_track_number: int | None, track_count: int) -> int:
    """0-based index for RPR_InsertTrackAtIndex: directly under the source track, or last if it is gone."""
    if source_track_number is None or source_track_number < 1:
        return track_count
    return min(source_track_number, track_count)


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return slug[:limit].strip("-") or "edit"


def output_path(media_dir: str, source_path: str, instruction: str, job_id: str) -> str:
    """Where the engine writes a result: <project media folder>/imusic/<source>-<edit>-<job>.wav."""
    stem = os.path.splitext(os.path.basename(source_path.replace("\\", "/")))[0]
    name = f"{_slug(stem)}-{_slug(instruction)}-{_slug(job_id, 24)}.wav"
    return os.path.join(media_dir, "imusic", name)


def status_text(
    pong: list, server: list | None, running: list[tuple[str, str, float, bool]], host: str, port: int
) -> str:
    """The "engine status" message from /imusic/pong [version, model, device, state], /imusic/server_status
    [state, queued, running_job_id, version, model] (None if it did not come) and this REAPER's running edits
    [(item, instruction, fraction, accepted)]."""
    version, model, device, state = (list(pong) + ["?"] * 4)[:4]
    lines = [f"Engine at {host}:{port}: {state}", f"Model: {model} on {device} (imusic {version})"]
    if server is not None and len(server) > 1:
        lines.append(f"Jobs queued on the engine: {server[1]}")
    if running:
        lines.append("")
        lines.append("Edits from this REAPER:")
        for where, instruction, fraction, accepted in running:
            progress = f"{fraction * 100:.0f}%" if accepted else "waiting for the engine"
            lines.append(f"  {instruction}: {where} ({progress})")
    else:
        lines.append("No edits from this REAPER are running.")
    return "\n".join(lines)
