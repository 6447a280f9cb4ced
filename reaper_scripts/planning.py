"""The decisions behind every REAPER action, as plain functions of plain values (no REAPER, no torch).

An action reads what it needs from REAPER into `ItemView`s, asks these functions which region to send, where the
result goes and what it is called, and then only calls REAPER to carry that out. Tests drive these directly.

Which file region an item sends (or why it is refused) is bridge/reaper_items.py, the rule `imusic batch` uses
too; this module adds what only the actions decide: names, where results go, messages.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

from bridge.protocol import Reply
from bridge.reaper_items import (  # noqa: F401 (the item rule, re-exported for the actions and tests)
    DEFAULT_MAX_SECONDS,
    EPSILON,
    Fade,
    ItemView,
    JobPlan,
    clip_to_range,
    nested_section,
    plan_job,
    plan_jobs,
    resolve_source_path,
    track_label,
)
from engine import instructions
from engine.files import result_file_name
from engine.modes import BESIDE, LAYER, mode_name

NAME_SEPARATOR = " \u00b7 "  # "Bass · extract drums"
MAX_LABEL_CHARS = 48


@dataclass(frozen=True)
class PresetAction:
    """One hotkey action: a fixed instruction on the selection."""

    operation: str
    stem: str

    @property
    def instruction(self) -> str:
        return instructions.instruction_text(self.operation, self.stem)

    @property
    def script_name(self) -> str:
        return f"imusic_{self.operation}_{self.stem}.py"


PRESET_ACTIONS = tuple(
    PresetAction(op, stem) for op in instructions.MENU_OPERATIONS for stem in instructions.OFFICIAL_STEM_WORDS
)


def action_mode(mode: str) -> str:
    """The mode an action sends: the one it was given (the `mode` setting, or the prompt's field); where none,
    engine.modes.BESIDE: its result is a new track beside the recording, so an add gives the added part alone (the
    two play the recording with the part, and the part stays a track of its own to mix; the mask mode's add there
    would play the recording twice) and the rest their default. `layer` given means the same, so a `mode` setting of
    layer leaves extract and remove working. The engine decides which operation it is, with its model's card: read
    here from the words without it, "put kalimba in" was no add."""
    mode = mode_name(mode)  # the engine's spelling: "Layer" in the settings is layer
    return BESIDE if mode in ("", LAYER) else mode


def normalize_instruction(text: str) -> str:
    """The instruction a user typed, its words joined by single spaces; InstructionError when it is empty, in the
    engine's words (instructions.check_not_empty)."""
    return " ".join(instructions.check_not_empty(text).split())


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
    """What one action's edit is called: its undo point's name, and the head of the messages about it
    ("Instruct: extract drums")."""
    return f"Instruct: {edit_label(instruction)}"


def result_insert_index(source_track_number: int | None, track_count: int, folder_parent: bool = False) -> int:
    """0-based index for RPR_InsertTrackAtIndex: directly under the source track, or last if it is gone. Above a
    folder's parent track: under it, the result would be the folder's first child, muted with the parent, played
    through the bus's effects and hidden when the folder is collapsed."""
    if source_track_number is None or source_track_number < 1:
        return track_count
    if folder_parent:
        return min(source_track_number - 1, track_count)
    return min(source_track_number, track_count)


UNCHUNKABLE = "REAPER cannot hold this file name in a project (it has \" ' and ` or a line break)"


def chunk_string(text: str) -> str | None:
    """`text` as a string of a REAPER state chunk: in the first of the quotes " ' ` that it does not hold, as REAPER
    writes them; None when it holds all three or a line break (no chunk can hold it)."""
    if "\n" in text or "\r" in text:
        return None
    quote = next((q for q in "\"'`" if q not in text), None)
    return None if quote is None else f"{quote}{text}{quote}"


def result_item_chunk(position: float, length: float, path: str) -> str:
    """The state chunk of a result item (RPR_SetItemStateChunk): at `position` for `length` seconds, not looping (a
    result a few samples short must not repeat its start), one take of the WAV file at `path`. The actions make the
    result's take this way because the Python binding checks every pointer it passes against the project and sends
    NULL for one it does not find there, which a source made by PCM_Source_CreateFromFile is until a take uses it:
    RPR_SetMediaItemTake_Source would leave the take empty. ValueError for a path no chunk can hold (chunk_string)."""
    quoted = chunk_string(path)
    if quoted is None:
        raise ValueError(f"{UNCHUNKABLE}: {path}")
    lines = ["<ITEM", f"POSITION {position:.14f}", f"LENGTH {length:.14f}", "LOOP 0", "<SOURCE WAVE", f"FILE {quoted}"]
    return "\n".join([*lines, ">", ">"])


def output_path(media_dir: str, source_path: str, instruction: str, job_id: str) -> str:
    """Where the engine writes a result: <project media folder>/imusic/<source>.<edit>.<job>.wav."""
    stem = os.path.splitext(os.path.basename(source_path.replace("\\", "/")))[0]
    return os.path.join(media_dir, "imusic", result_file_name(stem, instruction, job_id))


def status_text(
    pong: Reply,
    server: Reply | None,
    running: list[tuple[str, str, str]],
    host: str,
    port: int,
) -> str:
    """The "engine status" message from the engine's /imusic/pong (with its notes on the model), its
    /imusic/server_status (None if it did not come) and this REAPER's running edits [(item, instruction, progress
    as job_progress says it)]."""
    version, model, device, state = (value or "?" for value in (pong.version, pong.model, pong.device, pong.state))
    lines = [f"Engine at {host}:{port}: {state}", f"Model: {model} on {device} (imusic {version})"]
    lines.extend(f"Note: {note}" for note in pong.notes)
    if server is not None:
        lines.append(f"Jobs queued on the engine: {server.queued}")
    if running:
        lines.append("")
        lines.append("Edits from this REAPER:")
        lines.extend(f"  {instruction}: {where} ({progress})" for where, instruction, progress in running)
    else:
        lines.append("No edits from this REAPER are running.")
    return "\n".join(lines)


def job_progress(accepted: bool, fraction: float, stage: str) -> str:
    """A running edit as the status message shows it: its progress once the engine has taken it, else what it waits
    for (the engine's word while it checks the input, e.g. a disk spinning up)."""
    if accepted:
        return f"{fraction * 100:.0f}%"
    return stage or "waiting for the engine"


def new_notes(infos: Iterable[dict], shown: str) -> tuple[list[str], str]:
    """The engine's notes on finished results (each info's "warnings", e.g. the model card's own verdict that its
    edits lose to the unchanged input) not yet shown in this REAPER session, and the updated `shown` record (short
    digests, comma-separated, kept in a non-persistent ExtState): a note is shown once per session, not per hotkey."""
    seen = {key for key in shown.split(",") if key}
    notes = []
    for info in infos:
        for note in (info or {}).get("warnings") or ():
            key = hashlib.sha1(str(note).encode("utf-8")).hexdigest()[:12]
            if key not in seen:
                seen.add(key)
                notes.append(str(note))
    return notes, ",".join(sorted(seen))
