"""reaper-kb.ini, REAPER's action and key file: the actions' SCR and KEY lines and their default shortcuts, the file
edited as bytes (our lines appended with its own line ending, removed without touching any other byte), and the rule
for binding a default shortcut only where the chord is free (installer.py writes the file).

A chord is free when it is not one of REAPER's factory shortcuts (reaper_scripts.factory_keys, which also says where
they come from), not bound by the user (main, global and global + text sections), not a factory shortcut the user
removed on purpose (`KEY <mods> <key> 0 0`: an empty chord the user chose to keep empty, so we leave it empty too),
and the action has no key the user gave it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from engine.instructions import OFFICIAL_STEM_WORDS
from reaper_scripts.factory_keys import FACTORY_MAIN, KNOWN_FREE
from reaper_scripts.planning import PRESET_ACTIONS, undo_description

SUBDIR = "imusic"  # under <resource>/Scripts/
# An SCR line's flags: 4, a script; + 512, run again while an earlier run still waits (its deferred loop), start a new
# instance without asking (REAPER writes 516 when a user answers "New instance" and ticks "Remember my answer"; 260,
# "Terminate instances", ends the waiting run first). Each action returns at once and the edits' one deferred loop
# moves to the newest run (imusic_lib), so a new instance loses nothing, where REAPER's question would stop the
# producer at every second hotkey press. Python scripts have no set_action_options (REAPER 7.03 gives it to EEL and
# Lua), so the line says it.
SCRIPT_FLAGS = 4 | 512
MAIN_SECTION = 0  # REAPER's main action section
# A key bound here already does something in the arrange view: global hotkeys (102) and global + text fields (103).
CLAIMING_SECTIONS = (MAIN_SECTION, 102, 103)

# REAPER's KEY modifier bits: 1 = virtual key code, 4 = Shift, 8 = Ctrl (Cmd on macOS), 16 = Alt (Option).
VIRT, SHIFT, CTRL, ALT = 1, 4, 8, 16
CTRL_ALT_SHIFT = VIRT | CTRL | ALT | SHIFT
ALT_SHIFT = VIRT | ALT | SHIFT
# Default shortcuts, all free of REAPER's factory map: extract = Ctrl+Alt+Shift + the stem's letter, remove =
# Ctrl+Alt+Shift + the stem's number, add = Alt+Shift + the stem's number. Ctrl+Alt alone is avoided: most of its
# letters are factory shortcuts, and on European layouts Ctrl+Alt is AltGr, which types characters.
# Derived from the one list of stems (engine.instructions.OFFICIAL_STEM_WORDS: drums D 1, bass B 2, piano P 3, guitar
# G 4), so a stem added there gets keys too; tests/test_reaper_installer.py checks that all of them stay free.
STEM_LETTERS = {stem: stem[0].upper() for stem in OFFICIAL_STEM_WORDS}
STEM_NUMBERS = {stem: str(number) for number, stem in enumerate(OFFICIAL_STEM_WORDS, start=1)}
OPERATION_KEYS = {
    "extract": (CTRL_ALT_SHIFT, STEM_LETTERS),
    "remove": (CTRL_ALT_SHIFT, STEM_NUMBERS),
    "add": (ALT_SHIFT, STEM_NUMBERS),
}


@dataclass(frozen=True)
class Action:
    """One installed script and its default shortcut."""

    script: str
    description: str
    modifiers: int
    key: str  # one capital letter or digit: its Windows virtual key code is its ASCII code

    @property
    def command_id(self) -> str:
        """The id REAPER itself gives the script ('RS' + the SHA-1 of its path under Scripts/ in capitals: the id of
        Cockos/lyrics.lua in REAPER's own reaper-kb.ini is RS1ee9bb22...), so a script the producer loads again with
        "Load ReaScript" is this action, not a second one; and reinstalling keeps users' own bindings."""
        return script_command_id(f"{SUBDIR}/{self.script}")

    @property
    def earlier_command_id(self) -> str:
        """The id releases before 2026-12-08 gave the action (the SHA-1 of the path as written): users' own shortcuts
        on it are moved to command_id by the installer."""
        return "RS" + hashlib.sha1(f"{SUBDIR}/{self.script}".encode()).hexdigest()

    def scr_line(self) -> str:
        """The action's line: REAPER lists it under the quoted name (free text; REAPER's own loader puts the file
        name there); the Actions window shows a "Custom: X" name as "Script: X"."""
        name, path = f"Custom: {self.description}", f"{SUBDIR}/{self.script}"
        return f'SCR {SCRIPT_FLAGS} {MAIN_SECTION} {self.command_id} "{name}" "{path}"'

    def key_line(self) -> str:
        return f"KEY {self.modifiers} {ord(self.key)} _{self.command_id} {MAIN_SECTION}"

    @property
    def chord(self) -> tuple[int, int]:
        """(modifier bits, key code), as in reaper_scripts.factory_keys."""
        return self.modifiers, ord(self.key)

    @property
    def shortcut(self) -> str:
        return chord_name(*self.chord)


def script_command_id(path: str) -> str:
    """REAPER's command id of a script in its main section, from its path under Scripts/ (forward slashes)."""
    return "RS" + hashlib.sha1(path.upper().encode()).hexdigest()


def chord_name(modifiers: int, key: int) -> str:
    """'Ctrl+Alt+Shift+D' for a KEY line's modifiers and (Windows virtual) key code; anything else as REAPER's code."""
    # Without the virtual-key bit the key is a character; 32 and up are MIDI, OSC and mousewheel sources.
    if not modifiers & VIRT or modifiers >= 32:
        return f"KEY {modifiers} {key}"
    names = [name for bit, name in ((CTRL, "Ctrl"), (ALT, "Alt"), (SHIFT, "Shift")) if modifiers & bit]
    if 48 <= key <= 57 or 65 <= key <= 90:  # digits and capital letters are their own codes
        plain = chr(key)
    elif 112 <= key <= 135:
        plain = f"F{key - 111}"
    else:
        plain = f"key {key}"
    return "+".join([*names, plain])


ACTIONS: tuple[Action, ...] = (
    Action("imusic_edit.py", "Instruct: edit selected items...", CTRL_ALT_SHIFT, "E"),
    *(
        Action(
            a.script_name,
            undo_description(a.instruction),  # "Instruct: extract drums", as its undo point and messages say
            OPERATION_KEYS[a.operation][0],
            OPERATION_KEYS[a.operation][1][a.stem],
        )
        for a in PRESET_ACTIONS
    ),
    Action("imusic_cancel.py", "Instruct: cancel running edits", CTRL_ALT_SHIFT, "X"),
    Action("imusic_status.py", "Instruct: engine status", CTRL_ALT_SHIFT, "I"),
)


def _line_ending(data: bytes) -> bytes:
    """The file's own line ending; for a new file, the platform's (REAPER writes CRLF on Windows)."""
    if not data:
        return b"\r\n" if os.name == "nt" else b"\n"
    return b"\r\n" if b"\r\n" in data else b"\n"


def _lines(data: bytes) -> list[bytes]:
    """Lines without their endings."""
    return [line.rstrip(b"\r") for line in data.split(b"\n")] if data else []


def _identity(line: bytes) -> bytes:
    """What makes a line the same line after REAPER rewrote the file: an SCR line's type, section and command (REAPER
    drops the quotes around a path without spaces, and rewrites the flags when the user answers its "already running"
    question for good), a KEY line's five fields (REAPER appends a `# Main : ...` comment); any other line as it
    stands, its trailing blanks aside."""
    fields = line.split(b"#", 1)[0].split() if line.startswith(b"KEY") else line.split()
    if fields[:1] == [b"SCR"] and len(fields) >= 4:
        return b" ".join([fields[0], *fields[2:4]])
    if fields[:1] == [b"KEY"] and len(fields) >= 5:
        return b" ".join(fields[:5])
    return line.rstrip()


def line_command(line: str) -> str:
    """The command an SCR or KEY line is about ("RS..." for our scripts; a KEY line's "_" dropped), "" for others."""
    fields = line.split("#", 1)[0].split() if line.startswith("KEY") else line.split()
    if fields[:1] == ["SCR"] and len(fields) >= 4:
        return fields[3]
    if fields[:1] == ["KEY"] and len(fields) >= 5:
        return fields[3].removeprefix("_")
    return ""


def _script_path(line: str) -> str:
    """The script an SCR line registers: its last field, quoted or not (REAPER drops quotes a path does not need)."""
    body = line.rstrip()
    if body.endswith('"'):
        return body[body.rindex('"', 0, len(body) - 1) + 1 : -1]
    return body.split()[-1] if body.split() else ""


def our_lines(data: bytes, also: list[str] = ()) -> list[str]:
    """The lines of a reaper-kb.ini that are ours, as they stand in the file: the SCR line of every script in our
    folder (Scripts/imusic/, under any version's name) and every line the same as one of `also` (the manifest's, our
    default shortcuts). A shortcut the user gave an action themselves is theirs: it stays for a later install. After
    REAPER wrote back lines an uninstall or upgrade had removed (it rewrites the file when it quits), these are what
    the next install or uninstall takes back."""
    wanted = {_identity(line.encode()) for line in also}
    ours = []
    for raw in _lines(data):
        line = raw.decode("utf-8", "replace")
        if is_our_script_line(line) or _identity(raw) in wanted:
            ours.append(line)
    return ours


def is_our_script_line(line: str) -> bool:
    """Whether `line` is the SCR line of a script in our folder (Scripts/imusic/)."""
    return (
        line.startswith("SCR")
        and bool(line_command(line))
        and (_script_path(line).replace("\\", "/").startswith(f"{SUBDIR}/"))
    )


def renamed_by_user(data: bytes, line: str) -> bool:
    """Whether the file holds our SCR `line`'s action under another name than the line gives it (the user renamed
    it): a reinstall keeps their name."""
    import re

    # REAPER quotes a name only where it needs to (a space in it), with ", ' or `; a one-word name stands bare
    name = re.compile(rb"""^SCR\s+\S+\s+\S+\s+\S+\s+(?:"([^"]*)"|'([^']*)'|`([^`]*)`|(\S+))""")
    ours = name.match(line.encode())
    for present in _lines(data):
        if _identity(present) == _identity(line.encode()):
            theirs = name.match(present)
            return bool(ours and theirs and theirs[theirs.lastindex] != ours[ours.lastindex])
    return False


def flags_set_by_user(data: bytes, line: str) -> bool:
    """Whether the file holds our SCR `line`'s action with other flags than the line gives it: REAPER rewrote them
    when the user answered its "already running" question for good. A reinstall keeps their answer."""
    ours = line.encode().split()
    for present in _lines(data):
        if ours[:1] == [b"SCR"] and _identity(present) == _identity(line.encode()):
            return present.split()[1:2] != ours[1:2]
    return False


def bound_keys(data: bytes) -> dict[tuple[int, int, int], str]:
    """(modifiers, key, section) -> command of every KEY line in a reaper-kb.ini."""
    keys = {}
    for line in _lines(data):
        parts = line.decode("utf-8", "replace").split()
        if len(parts) >= 5 and parts[0] == "KEY":
            try:
                keys[(int(parts[1]), int(parts[2]), int(parts[4]))] = parts[3]
            except ValueError:
                continue
    return keys


def append_lines(data: bytes, lines: list[str]) -> tuple[bytes, list[str], bool]:
    """The file with those lines appended (those already present, in our form or as REAPER rewrote them, are skipped).

    Returns (new bytes, lines added, whether a final line ending had to be added first).
    """
    present = {_identity(line) for line in _lines(data)}
    new = [line for line in lines if _identity(line.encode()) not in present]
    if not new:
        return data, [], False
    eol = _line_ending(data)
    fixed_end = bool(data) and not data.endswith(b"\n")
    head = data + eol if fixed_end else data
    return head + b"".join(line.encode() + eol for line in new), new, fixed_end


def remove_lines(data: bytes, lines: list[str], added_final_newline: bool = False) -> bytes:
    """The file without one occurrence of each of those lines (in our form or as REAPER rewrote them); every other
    byte is kept."""
    wanted = [_identity(line.encode()) for line in lines]
    kept = []
    for chunk in data.splitlines(keepends=True):
        body = _identity(chunk.rstrip(b"\r\n"))
        if body in wanted:
            wanted.remove(body)
            continue
        kept.append(chunk)
    result = b"".join(kept)
    if added_final_newline:
        for eol in (b"\r\n", b"\n"):
            if result.endswith(eol):
                result = result[: -len(eol)]
                break
    return result


def hotkey_refusal(action: Action, keys: dict[tuple[int, int, int], str]) -> str | None:
    """Why the action's default shortcut must not be bound, or None when it is free (or already ours).

    keys is bound_keys() of the user's reaper-kb.ini. The user's own lines come first: a shortcut they gave this action
    themselves (it keeps theirs alone), a chord they bound, or a factory shortcut they removed on purpose (command 0),
    is theirs. Then REAPER's factory map, then the proof of freedom.
    """
    modifiers, key = action.chord
    own = [chord for chord, owner in keys.items() if owner == "_" + action.command_id]
    theirs = sorted(chord for chord in own if chord != (modifiers, key, MAIN_SECTION))
    if theirs and (modifiers, key, MAIN_SECTION) not in own:  # an earlier install's default, kept, is ours
        named = ", ".join(
            f"{chord_name(m, k)} (section {s})" if s != MAIN_SECTION else chord_name(m, k) for m, k, s in theirs
        )
        return f"you bound this action to {named} yourself; that stays its only shortcut"
    for section in CLAIMING_SECTIONS:
        owner = keys.get((modifiers, key, section))
        if owner is None or owner == "_" + action.command_id:
            continue
        if owner == "0":
            return (
                f"you removed REAPER's default shortcut on this key (KEY {modifiers} {key} 0 {section}); "
                "it stays empty as you chose"
            )
        return f"already bound to {owner}"
    if action.chord in FACTORY_MAIN:
        return "one of REAPER's factory shortcuts"
    if action.chord not in KNOWN_FREE:
        return "not known to be free of REAPER's factory shortcuts"
    return None
