"""What a REAPER item plays, as a region of its source file: the one rule for the actions and for batch.

The REAPER actions read an `ItemView` from the running REAPER (reaper_scripts/imusic_lib.py); `imusic batch` reads
the same view from a saved .rpp (bridge/sources.py). Both call `plan_job`, so an item gives the same region, or the
same refusal, whichever way it reaches the engine. Plain values only: no REAPER, no torch, no file reading.

What is sent is what the producer hears from the take, or nothing. The source region of an item is
`[D_STARTOFFS, D_STARTOFFS + D_LENGTH]` of its file (of the parent file, shifted by the section's start, for a
SECTION source). The engine edits a file's own samples, so every take whose sound is something else is refused with
the reason and how to make it editable (Item > Glue renders what is heard into a new file):
- a play rate other than 1: with preserve pitch it is time-stretched; without, it is resampled, so the producer
  hears it higher or lower than the file (an octave at rate 2 or 0.5) while the engine would hear the file;
- a pitch shift, a reversed take, an item that loops its source or section or runs past it;
- a take channel mode other than normal (reverse stereo, mono downmix, left or right only, single channels) on a
  source with more than one channel; on a mono source those modes play the file's one channel unchanged;
- MIDI, video, empty takes and other non-audio sources; missing files.
Take FX and envelopes are not part of the region: results are dry. The item's fades are what the producer hears at
its edges: a result that keeps an edge of its item gets that edge's fade (JobPlan.fade_in / fade_out).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from bridge import protocol
from engine.errors import AudioError
from engine.files import AUDIO_FORMATS, FORMAT_SUFFIXES

# REAPER's source types (GetMediaSourceType) by the engine.files format their files are in. REAPER's OPUS and WAVPACK
# sources have none: pedalboard cannot open them, so they are refused here, before anything is sent.
SOURCE_TYPE_FORMATS = {"WAVE": "wav", "AIFF": "aiff", "FLAC": "flac", "MP3": "mp3", "VORBIS": "ogg", "OGG": "ogg"}
# The source types whose files the engine reads: those of a format in the table.
AUDIO_SOURCE_TYPES = frozenset(kind for kind, name in SOURCE_TYPE_FORMATS.items() if name in FORMAT_SUFFIXES)
# Seconds compared as equal: well under one sample at 192 kHz, above REAPER's float noise in saved geometry.
EPSILON = 1e-6
DEFAULT_MAX_SECONDS = 600.0
# I_CHANMODE (CHANMODE in .rpp): 0 plays the file's channels as they are.
HEARS = "hears what you hear"
CHANNEL_MODES = {1: "reverse stereo", 2: "mono (downmix)", 3: "mono (left)", 4: "mono (right)"}


@dataclass(frozen=True)
class Fade:
    """An item's fade at one edge, as REAPER holds it: length in seconds (D_FADEINLEN, or the auto-crossfade's
    D_FADEINLEN_AUTO where that is set), shape (C_FADEINSHAPE) and curvature (D_FADEINDIR); the same for fade-outs."""

    length: float = 0.0
    shape: int = 0
    curve: float = 0.0


NO_FADE = Fade()


@dataclass(frozen=True)
class ItemView:
    """What is known about one item and its active take (seconds, REAPER's own values)."""

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
    source_channels: int = 0  # channels of the file, 0 when unknown
    start_offset: float = 0.0  # D_STARTOFFS
    playrate: float = 1.0  # D_PLAYRATE
    pitch: float = 0.0  # D_PITCH, semitones
    preserve_pitch: bool = True  # B_PPITCH
    channel_mode: int = 0  # I_CHANMODE
    reversed: bool = False  # SECTION source with its reverse flag
    section_offset: float = 0.0  # SECTION start in the parent file
    section_length: float | None = None  # SECTION length, None when the take is not a section
    parent_type: str = ""  # type of the parent source for a SECTION
    stretch_markers: int = 0  # GetTakeNumStretchMarkers
    pitch_envelope: bool = False  # a take "Pitch" envelope with points
    plays_all_takes: bool = False  # B_ALLTAKESPLAY on an item of several takes
    fade_in: Fade = NO_FADE
    fade_out: Fade = NO_FADE
    position_text: str = ""  # the position as REAPER's ruler shows it (format_timestr_pos); "": m:ss.mmm
    # How the item plays beside the region's samples, which its result item plays the same way: the item's gain, the
    # take's volume (negative: polarity flipped), and the item's and its track's timebase (-1: the default)
    item_volume: float = 1.0  # item D_VOL
    take_volume: float = 1.0  # take D_VOL
    timebase: int = -1  # item C_BEATATTACHMODE
    track_timebase: int = -1  # track C_BEATATTACHMODE

    def describe(self) -> str:
        """How a message names this item for the user."""
        track = track_label(self.track_name, self.track_number)
        take = f'"{self.take_name}"' if self.take_name else "item"
        return f"{take} at {self.position_text or format_time(self.position)} on {track}"


@dataclass(frozen=True)
class JobPlan:
    """One job: the file region to send and where its result goes on the timeline (played at rate 1)."""

    source_path: str
    start_s: float  # seconds into the file
    end_s: float
    position: float  # timeline position of the result item
    length: float  # timeline length of the result item (= end_s - start_s)
    track_number: int  # 1-based number of the source track when planned
    # the item's fades where the result keeps its edges (a region clipped inside the item has none there)
    fade_in: Fade = NO_FADE
    fade_out: Fade = NO_FADE

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


def channel_mode_name(mode: int) -> str:
    """REAPER's name for a take channel mode (Item properties > Channel mode)."""
    if mode in CHANNEL_MODES:
        return CHANNEL_MODES[mode]
    if 5 <= mode < 67:
        return f"mono (channel {mode - 4})"
    if mode >= 67:
        return f"stereo (channels {mode - 66}/{mode - 65})"
    return f"channel mode {mode}"


def clip_to_range(position: float, length: float, start: float, end: float) -> tuple[float, float] | None:
    """The part of [position, position + length] inside [start, end] as (position, length); None if they miss."""
    lo = max(position, start)
    hi = min(position + length, end)
    if hi - lo <= EPSILON:
        return None
    return lo, hi - lo


def nested_section(layers: Iterable[tuple[float, float | None, bool]]) -> tuple[float, float | None, bool]:
    """A take's SECTION sources, outermost first, each (start in its parent, length or None, reversed), as one section
    of the file: (offset, length or None when no layer has one, reversed). Offsets add up; a layer starting at o in
    a parent of length L has at most L - o of it. Reversed when any layer is (reversed takes are refused): two
    reversals play forward, but from other offsets than these sums."""
    offset, length, backwards = 0.0, None, False
    for start, section_length, reverse in layers:
        if section_length is not None:
            room = section_length - offset  # this layer's audio from where the outer ones begin in it
            length = room if length is None else min(length, room)
        offset += start
        backwards = backwards or bool(reverse)
    return offset, length, backwards


def resolve_source_path(filename: str, project_dir: str) -> str:
    """An absolute path for a source file name as REAPER reports it (relative names are relative to the project)."""
    if not filename:
        return ""
    if os.path.isabs(filename) or re.match(r"^[A-Za-z]:[\\/]", filename) or filename.startswith("\\\\"):
        return filename
    return os.path.normpath(os.path.join(project_dir, filename)) if project_dir else filename


def _refusal(item: ItemView) -> str | None:
    """Why what the item plays is not its file's own samples (None when it is)."""
    if not item.has_take:
        return "is empty: it has no take to edit."
    if item.is_midi or item.source_type == "MIDI" or item.parent_type == "MIDI":
        return "is MIDI: render or freeze it to audio first (Item > Apply track/take FX)."
    if item.reversed:
        return "is reversed: the file plays backwards there. Glue the item first (Item > Glue)."
    if abs(item.pitch) > EPSILON:
        return f"is pitch-shifted ({item.pitch:+g} semitones): glue the item first (Item > Glue) so the edit {HEARS}."
    rate = item.playrate
    if not rate > 0:
        return f"has an invalid play rate ({rate:g})."
    if abs(rate - 1.0) > EPSILON:
        how = "time-stretched (preserve pitch on)" if item.preserve_pitch else "resampled: you hear it at another pitch"
        return f"plays at rate {rate:g}, {how}: glue the item first (Item > Glue) so the edit {HEARS}."
    if item.stretch_markers:
        return f"has stretch markers (the file is warped there): glue the item first (Item > Glue) so the edit {HEARS}."
    if item.pitch_envelope:
        return f"has a take pitch envelope: glue the item first (Item > Glue) so the edit {HEARS}."
    if item.plays_all_takes:
        return "plays all its takes at once: glue the item first (Item > Glue), or let it play only the active take."
    if item.channel_mode != 0 and item.source_channels != 1:
        return (
            f"uses the take channel mode {channel_mode_name(item.channel_mode)}: glue the item first (Item > Glue), "
            "or set the channel mode to normal."
        )
    kind = item.parent_type if item.section_length is not None else item.source_type
    if kind in ("", "EMPTY"):
        return "has an empty take: nothing to edit."
    if kind not in AUDIO_SOURCE_TYPES:
        return f"is a {kind} source; only audio files ({AUDIO_FORMATS.upper()}) can be edited."
    return None


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
    problem = _refusal(item)
    if problem:
        raise AudioError(f"{where} {problem}")
    if not item.source_path or not file_exists(item.source_path):
        shown = item.source_path or "(no file)"
        raise AudioError(f"{where}: its source file is offline or missing: {shown}")

    position, length = item.position, item.length
    if clip is not None:
        clipped = clip_to_range(position, length, *clip)
        if clipped is None:
            raise AudioError(
                f"{where} is outside the time selection: select only items under it, or clear the time selection "
                "to edit whole items."
            )
        position, length = clipped
    if length <= EPSILON:
        raise AudioError(f"{where} has zero length.")

    # The take offset can be negative (the item starts before the file): REAPER plays silence there.
    start = item.start_offset + (position - item.position)
    end = start + length
    if item.section_length is not None:
        if start < -EPSILON or end > item.section_length + EPSILON:
            raise AudioError(f"{where} loops its section: glue the item first (Item > Glue).")
        start += item.section_offset
        end += item.section_offset
    if start < -EPSILON or end > item.source_length + EPSILON:
        raise AudioError(
            f"{where} runs past its source file (looped or padded with silence): glue the item first (Item > Glue)."
        )
    start, end = max(0.0, start), min(item.source_length, end)
    if end - start > max_seconds + EPSILON:
        raise AudioError(
            f"{where} is {end - start:.1f} s long; these actions edit at most {max_seconds:g} s at a time "
            f"({protocol.where_set('max_seconds')}). Select a shorter item or set a time selection."
        )
    # at most the result's length: a fade longer than the result would be squeezed onto it, not heard as it was
    fade_in = replace(item.fade_in, length=min(item.fade_in.length, length))
    fade_in = fade_in if abs(position - item.position) <= EPSILON else NO_FADE
    keeps_end = abs(position + length - (item.position + item.length)) <= EPSILON
    fade_out = replace(item.fade_out, length=min(item.fade_out.length, length)) if keeps_end else NO_FADE
    return JobPlan(item.source_path, start, end, position, length, item.track_number, fade_in, fade_out)


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
