"""`imusic reaper install|uninstall`: copy the actions into REAPER and register them (and hotkeys) in reaper-kb.ini.

What install adds is recorded in Scripts/imusic/imusic_manifest.json; uninstall removes exactly that. reaper-kb.ini
is handled as bytes: our lines are appended with the file's own line ending, every other byte stays as it was, and
each change is written to a temporary file (with the file's permission mode) and renamed over the original after a
backup copy is made. Installing twice changes nothing.

Install and uninstall are all or nothing: every folder and file they will write is checked first (a read-only
reaper-kb.ini is refused, not made writable), and if a write still fails, what was already written is undone before
one ConfigError line says which file and why.

--hotkeys binds a default shortcut only where it can tell the chord is free (reaper_scripts.keymap says when).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from bridge import protocol
from engine.errors import ConfigError
from engine.files import missing_folder, write_bytes_atomic
from reaper_scripts.keymap import (
    ACTIONS,
    MAIN_SECTION,
    SUBDIR,
    Action,
    append_lines,
    bound_keys,
    flags_set_by_user,
    hotkey_refusal,
    is_our_script_line,
    line_command,
    our_lines,
    remove_lines,
    renamed_by_user,
)
from reaper_scripts.planning import PRESET_ACTIONS

PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARY = "imusic_lib.py"
SETTINGS_FILE = protocol.SETTINGS_FILE
MANIFEST = "imusic_manifest.json"
KB_FILE = "reaper-kb.ini"
BACKUP_SUFFIX = ".imusic-backup"


# ------------------------------------------------------------------------------------------------ where things are


def default_resource_path(platform: str | None = None, env: dict | None = None, home: Path | None = None) -> Path:
    """REAPER's resource folder on this platform (Options > Show REAPER resource path shows the real one)."""
    platform = platform or sys.platform
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    if platform.startswith("win"):
        appdata = env.get("APPDATA")
        if not appdata:
            raise ConfigError("APPDATA is not set: pass --resource-path (Options > Show REAPER resource path)")
        return Path(appdata) / "REAPER"
    if platform == "darwin":
        return home / "Library" / "Application Support" / "REAPER"
    return home / ".config" / "REAPER"


def import_paths() -> dict:
    """What REAPER's Python needs on sys.path: this project first, python-osc's folder last."""
    import pythonosc

    project_root = str(PACKAGE_DIR.parent)
    osc_dir = str(Path(pythonosc.__file__).resolve().parent.parent)
    return {"prepend": [project_root], "append": [] if osc_dir == project_root else [osc_dir]}


def libpython(
    config=sysconfig.get_config_var, base_prefix: str = sys.base_prefix, windows: bool = os.name == "nt"
) -> str:
    """The shared Python library REAPER must load (Preferences > Plug-ins > ReaScript), '' if there is none.

    Where it lies differs: on Windows python3XY.dll beside python.exe (sysconfig names none there); in a macOS
    framework build the framework's own `Python` file; elsewhere LDLIBRARY in LIBDIR (a static .a is no use)."""
    version = f"{sys.version_info.major}{sys.version_info.minor}"
    if windows:
        candidates = [Path(base_prefix) / f"python{version}.dll"]
    else:
        framework = config("PYTHONFRAMEWORK") or ""
        libdir, name = config("LIBDIR") or "", config("LDLIBRARY") or ""
        candidates = [Path(base_prefix) / framework] if framework else []
        candidates += [Path(libdir) / name] if libdir and name and not name.endswith(".a") else []
    return next((str(path) for path in candidates if path.is_file()), "")


def _backup_path(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


def _read_only(path: Path) -> bool:
    """A file marked read-only (no owner write bit, Windows' read-only attribute) or that we may not write."""
    return not path.stat().st_mode & stat.S_IWUSR or not os.access(path, os.W_OK)


def _existing_parent(path: Path) -> Path:
    """Where a file at path is written: its folder, or the nearest existing ancestor that will hold the new folders."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _check_writable(paths: list[Path], kb_path: Path, doing: str) -> None:
    """Refuse, before anything is written, what the planned writes cannot do; one line says which path and why."""
    if kb_path in paths and kb_path.exists() and _read_only(kb_path):
        raise ConfigError(
            f"{kb_path} is read-only: nothing was {doing}; make it writable (imusic does not change its permissions) "
            "and run again"
        )
    for path in paths:
        folder = _existing_parent(path)
        if not folder.is_dir():
            raise ConfigError(f"cannot create {path}: {folder} is not a folder; nothing was {doing}")
        # Windows' read-only attribute on a folder does not stop writing in it: there the writes themselves tell.
        if os.name != "nt" and not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write in {folder} (permission denied): nothing was {doing}")


class _Changes:
    """Every folder and file one install or uninstall writes, undone in reverse order if a later step fails."""

    def __init__(self) -> None:
        self._undo: list[tuple[Path, bytes | None, int | None]] = []  # path, previous bytes (None: new), its mode
        self._made_dirs: list[Path] = []

    def mkdir(self, folder: Path) -> None:
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            path.mkdir()
            self._made_dirs.append(path)

    def write(self, path: Path, data: bytes, mode: int | None = None) -> None:
        previous = path.read_bytes() if path.exists() else None
        previous_mode = stat.S_IMODE(path.stat().st_mode) if previous is not None else None
        self._undo.append((path, previous, previous_mode))
        write_bytes_atomic(path, data, mode)

    def unlink(self, path: Path) -> None:
        previous, previous_mode = path.read_bytes(), stat.S_IMODE(path.stat().st_mode)
        self._undo.append((path, previous, previous_mode))
        path.unlink()

    def undo(self) -> list[str]:
        """Put back what was changed; returns the paths that could not be put back."""
        failed = []
        for path, previous, mode in reversed(self._undo):
            try:
                if previous is None:
                    path.unlink(missing_ok=True)
                elif not path.exists() or path.read_bytes() != previous:
                    write_bytes_atomic(path, previous, mode)
            except OSError:
                failed.append(str(path))
        for folder in reversed(self._made_dirs):
            try:
                folder.rmdir()
            except OSError:
                failed.append(str(folder))
        return failed


def _failed(changes: _Changes, exc: OSError, doing: str) -> ConfigError:
    """Undo the changes; the one-line error for a write that failed."""
    left = changes.undo()
    where = exc.filename or "a file"
    reason = exc.strerror or str(exc)
    tail = f"could not undo {', '.join(left)}" if left else f"nothing was {doing}"
    return ConfigError(f"cannot write {where} ({reason}): {tail}")


# ------------------------------------------------------------------------------------------------ install


@dataclass
class Report:
    """What an install or uninstall did, for the user."""

    changed: list[str] = field(default_factory=list)
    bound: list[str] = field(default_factory=list)
    skipped_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _kb_file(resource: Path) -> Path:
    """reaper-kb.ini, followed through a symbolic link (a key map kept with one's dotfiles): the file itself is
    edited, the link stays a link."""
    path = resource / KB_FILE
    return path.resolve() if path.is_symlink() else path


def _read_manifest(folder: Path) -> dict:
    """What an earlier install added (none when it has no manifest); ConfigError for a manifest that is damaged: what
    to remove cannot be known from it, so nothing is changed."""
    fresh = {"files": [], "kb_lines": [], "added_final_newline": False, "created_kb": False}
    path = folder / MANIFEST
    if not path.exists():
        return fresh
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        manifest = exc
    lists_ok = isinstance(manifest, dict) and all(
        isinstance(manifest.get(key, []), list) and all(isinstance(v, str) for v in manifest.get(key, []))
        for key in ("files", "kb_lines", "retired_kb_lines")
    )
    # what it may name: files of our folder by their plain names, and reaper-kb.ini lines of our actions (an SCR line
    # of a script in our folder, a KEY line binding one): uninstall removes them, and a manifest naming a user's file
    # elsewhere (../x.wav, /home/x.wav) or a user's own line had them removed
    foreign = None
    if lists_ok:
        lines = manifest.get("kb_lines", []) + manifest.get("retired_kb_lines", [])
        ids = {line_command(line) for line in lines if is_our_script_line(line)}
        ids |= {i for action in ACTIONS for i in (action.command_id, action.earlier_command_id)}
        strays = [repr(name) for name in manifest.get("files", []) if not _plain_name(name)]
        strays += [repr(line) for line in lines if not (is_our_script_line(line) or _binds(line, ids))]
        foreign = strays[0] if strays else None
    if not lists_ok or foreign:
        named = f" (it names {foreign}, which no install of imusic writes)" if foreign else ""
        raise ConfigError(
            f"{path} is damaged{named}, so what an earlier install added is unknown; nothing was changed. Remove "
            f"{folder} and the lines naming imusic_ from reaper-kb.ini (Actions > Show action list), then install again"
        )
    return {**fresh, **manifest}


def _plain_name(name: str) -> bool:
    """A file name of our folder: no folder part, not '.' or '..'."""
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _binds(line: str, ids: set[str]) -> bool:
    """Whether `line` is a KEY line binding one of the commands `ids`."""
    return line.startswith("KEY") and line_command(line) in ids


# Every action is the same few lines around one call into imusic_lib: each is written from this at install time
# (the package holds no copies that could drift apart).
_ACTION_SCRIPT = '''# @description {description}
# @version {version}
# @author imusic
# @about
{about}
#   Needs the imusic engine running (`imusic serve`); installed by `imusic reaper install`.
# @provides
#   [nomain] {library}
"""REAPER action: {description}. The body only loads the shared library and calls it."""

import os
import sys

folder = os.path.join(RPR_GetResourcePath(), "Scripts", "{subdir}")  # noqa: F821 (REAPER's global)
if folder not in sys.path:  # REAPER keeps one Python for every script: once, not once per run
    sys.path.insert(0, folder)
import {module}  # noqa: E402

{module}.{call}
'''
# script -> (what it does, as ReaPack's @about lines, and its call into the library)
_ACTION_BODIES = {
    "imusic_edit.py": (
        "Ask for an instruction (extract / remove / add a stem) and apply it to each selected item\n"
        "(within the time selection, if any), or to the time selection on selected tracks.",
        "run_prompted()",
    ),
    "imusic_cancel.py": (
        "Cancel every edit the imusic actions started; their results are not inserted.",
        "run_cancel()",
    ),
    "imusic_status.py": (
        "Show whether the imusic engine is running, its model and device, and the edits in progress.",
        "run_status()",
    ),
}
_PRESET_ABOUT = {"extract": "Keep only the {stem} of", "remove": "Remove the {stem} from", "add": "Add {stem} to"}
_ACTION_BODIES.update(
    (
        preset.script_name,
        (
            f"{_PRESET_ABOUT[preset.operation].format(stem=preset.stem)} each selected item "
            "(within the time selection, if any),\nor the time selection on selected tracks; the result lands on a new "
            "track under the source.",
            f'run_preset("{preset.operation}", "{preset.stem}")',
        ),
    )
    for preset in PRESET_ACTIONS
)


def action_source(action: Action) -> bytes:
    """What the installed file of `action` holds: _ACTION_SCRIPT around its call into the library."""
    from engine import __version__

    about, call = _ACTION_BODIES[action.script]
    text = _ACTION_SCRIPT.format(
        description=action.description,
        version=__version__,
        about="\n".join(f"#   {line}" for line in about.splitlines()),
        library=LIBRARY,
        module=Path(LIBRARY).stem,
        subdir=SUBDIR,
        call=call,
    )
    return text.encode()


def _source_files(settings: dict) -> dict[str, bytes]:
    files = {action.script: action_source(action) for action in ACTIONS}
    files[LIBRARY] = (PACKAGE_DIR / LIBRARY).read_bytes()
    files[SETTINGS_FILE] = (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode()
    return files


def install(
    resource: Path,
    *,
    hotkeys: bool = False,
    host: str | None = None,
    port: int | None = None,
    paths: dict | None = None,
) -> Report:
    """Copy the scripts to <resource>/Scripts/imusic/ and register them (and, with hotkeys, free default keys).

    All or nothing: ConfigError (one line) and no change at all when a folder or reaper-kb.ini cannot be written.
    """
    resource = Path(resource)
    where = "REAPER shows it under Options > Show REAPER resource path in explorer/finder"
    if problem := missing_folder(resource):
        raise ConfigError(
            f"REAPER's resource folder {resource} {problem}: run REAPER once, or pass --resource-path ({where})"
        )
    if not (resource / "reaper.ini").is_file():  # REAPER writes it there at its first start, a portable one too
        raise ConfigError(
            f"{resource} is not REAPER's resource folder (it holds no reaper.ini; REAPER's program folder is not it): "
            f"pass the one {where}"
        )
    report = Report()
    # what the producer set in the settings file (host, port, mode, max_seconds: as the docs tell them to) stays; the
    # import paths are this checkout's
    settings = {**_own_settings(resource / "Scripts" / SUBDIR / SETTINGS_FILE, report)}
    settings.update(paths if paths is not None else import_paths())
    if host:
        settings["host"] = host
    if port:
        settings["port"] = int(port)
    try:
        writes = _install_plan(resource, settings, hotkeys, report)
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename} ({exc.strerror}): nothing was installed") from exc
    kb_path = _kb_file(resource)
    _check_writable([path for path, _, _ in writes], kb_path, "installed")
    changes = _Changes()
    try:
        changes.mkdir(resource / "Scripts" / SUBDIR)
        for path, data, mode in writes:
            changes.write(path, data, mode)
    except OSError as exc:
        raise _failed(changes, exc, "installed") from exc
    report.changed = [str(p) for p, _, _ in writes if p.name not in (MANIFEST, _backup_path(kb_path).name)]
    report.notes += _python_notes(resource)
    return report


def _own_settings(path: Path, report: Report) -> dict:
    """The settings file an earlier install wrote and the producer may have edited; {} when there is none, and {} with
    a note when it is not a JSON object (the file is then written anew)."""
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        settings = None
    if not isinstance(settings, dict):
        report.notes.append(f"{path} held no JSON object of settings: written anew, without settings of yours")
        return {}
    return settings


def _with_current_ids(data: bytes, back: bool = False) -> bytes:
    """`data` with every action's earlier command id (Action.earlier_command_id) replaced by its current one (`back`:
    the other way): 40 hex digits of a hash stand nowhere else."""
    for action in ACTIONS:
        ids = (action.earlier_command_id.encode(), action.command_id.encode())
        data = data.replace(*(ids[::-1] if back else ids))
    return data


def _install_plan(
    resource: Path, settings: dict, hotkeys: bool, report: Report
) -> list[tuple[Path, bytes, int | None]]:
    """Every file install will write, in order, as (path, bytes, mode if new); nothing is written here.

    The scripts first, then reaper-kb.ini's backup and new content, the manifest last. The hotkeys bound and the ones
    refused (with the reason) go to the report.
    """
    folder = resource / "Scripts" / SUBDIR
    manifest = _read_manifest(folder)
    manifest.setdefault("created_scripts_dir", not folder.parent.is_dir())
    writes: list[tuple[Path, bytes, int | None]] = []
    for name, data in _source_files(settings).items():
        target = folder / name
        if not target.is_file() or target.read_bytes() != data:
            writes.append((target, data, None))
        if name not in manifest["files"]:
            manifest["files"].append(name)
    kb_path = _kb_file(resource)
    original = kb_path.read_bytes() if kb_path.exists() else b""
    if not kb_path.exists():
        manifest["created_kb"] = True
    # An earlier release's ids, in the file (the user's own shortcuts and names for our actions) and in the manifest,
    # are moved to REAPER's own: from here on the file reads as if it had always held them
    kb = _with_current_ids(original)
    for listed in ("kb_lines", "retired_kb_lines"):
        manifest[listed] = [_with_current_ids(line.encode()).decode() for line in manifest.get(listed, [])]
    # Lines an earlier version wrote that this one writes otherwise are ours to take back: shortcuts it bound by
    # default (some on REAPER's factory chords), and action lines under an older name or flags (rewritten below)
    # unless the user has named the action, or answered REAPER's "already running" question for it, themselves.
    # Such a line stays on the manifest's retired list: REAPER, left open, writes it back when it quits, and the
    # next install or uninstall takes it back again. Lines of an action this version no longer has (an earlier
    # script name) are taken back whatever the manifest says, with their shortcuts.
    current = {line for action in ACTIONS for line in (action.scr_line(), action.key_line())}
    retired = manifest.setdefault("retired_kb_lines", [])
    candidates = manifest["kb_lines"] + [line for line in retired if line not in manifest["kb_lines"]]
    stale = [
        line
        for line in candidates
        if line not in current and not renamed_by_user(kb, line) and not flags_set_by_user(kb, line)
    ]
    # an action in the main section that is none of ours (an earlier script name): the lines REAPER made for our
    # scripts in other sections (the MIDI editor's, the Media Explorer's) are the producer's own
    dead = [
        line
        for line in our_lines(kb)
        if line.split()[2:3] == [str(MAIN_SECTION)] and line_command(line) not in {a.command_id for a in ACTIONS}
    ]
    gone = [line for line in stale if remove_lines(kb, [line]) != kb]  # present, so removed now
    base = remove_lines(kb, stale + dead) if stale or dead else kb
    for line in stale:
        if line in manifest["kb_lines"]:
            manifest["kb_lines"].remove(line)
        if line not in retired:
            retired.append(line)
    for line in [*gone, *dead]:
        if line.startswith("KEY "):
            report.notes.append(
                f"removed the shortcut an earlier install bound ({line.split('#', 1)[0].strip()}): it is no longer a "
                "default, and REAPER's own shortcut on that key, if it has one, works again"
            )
    wanted = [action.scr_line() for action in ACTIONS]
    if hotkeys:
        taken = bound_keys(base)
        for action in ACTIONS:
            refusal = hotkey_refusal(action, taken) or _removed_by_user(action, manifest, base)
            if refusal is None:
                wanted.append(action.key_line())
                report.bound.append(f"{action.shortcut}  {action.description}")
            else:
                report.skipped_keys.append(f"{action.shortcut} ({action.description}): {refusal}")
    updated, added, fixed_end = append_lines(base, wanted)
    if updated != original:
        if original:
            writes.append((_backup_path(kb_path), original, stat.S_IMODE(kb_path.stat().st_mode)))
        writes.append((kb_path, updated, None))
        manifest["kb_lines"] += [line for line in added if line not in manifest["kb_lines"]]
        manifest["retired_kb_lines"] = [line for line in retired if line not in manifest["kb_lines"]]
        manifest["added_final_newline"] = manifest["added_final_newline"] or fixed_end
    manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode()
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file() or manifest_path.read_bytes() != manifest_bytes:
        writes.append((manifest_path, manifest_bytes, None))
    return writes


MIN_PYTHON = (3, 10)  # pyproject's requires-python: the actions' own code needs it


def reaper_python_version(library: str) -> tuple[int, int] | None:
    """The Python version a ReaScript library setting names (python39.dll, libpython3.11.so.1.0,
    .../Python.framework/Versions/3.12/Python), None when its name does not say."""
    import re

    found = re.search(r"python(\d)\.?(\d{1,2})(?!\d)", library, re.IGNORECASE) or re.search(
        r"Versions[/\\](\d)\.(\d{1,2})[/\\]", library
    )
    return (int(found[1]), int(found[2])) if found else None


def _python_notes(resource: Path) -> list[str]:
    """How to enable Python in REAPER, unless reaper.ini shows it is already set up."""
    ini = resource / "reaper.ini"
    try:
        text = ini.read_text(encoding="utf-8", errors="replace") if ini.exists() else ""
    except OSError:
        text = ""
    settings = dict(
        (key.strip().lower(), value.strip())
        for key, sep, value in (line.partition("=") for line in text.splitlines())
        if sep
    )
    # "Enable Python for use with ReaScript" is reascript=1; the library is pythonlibdll64 (a full path on Windows,
    # a file name inside pythonlibpath64 elsewhere).
    lib = libpython()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if settings.get("reascript") == "1" and settings.get("pythonlibdll64"):
        named = reaper_python_version(settings["pythonlibdll64"])
        if named is None or named >= MIN_PYTHON:
            return []
        return [
            f"REAPER is set to Python {named[0]}.{named[1]} (reaper.ini: pythonlibdll64={settings['pythonlibdll64']}); "
            f"the actions need {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or later. In REAPER: Options > Preferences > Plug-ins > "
            f"ReaScript: point it at Python {version}"
            + (f" ('Custom path to Python dll directory' = {Path(lib).parent}, 'Force ReaScript to use specific "
               f"Python dll' = {Path(lib).name})" if lib else "")
            + "; then restart REAPER."
        ]  # fmt: skip
    where = (
        f"'Custom path to Python dll directory' = {Path(lib).parent} and 'Force ReaScript to use specific Python "
        f"dll' = {Path(lib).name}"
        if lib
        else f"point it to a shared libpython {version} (this Python has none; install one "
        + ("from python.org, whose python3XY.dll REAPER loads)" if os.name == "nt" else "built with --enable-shared)")
    )
    return [
        "Python ReaScript may not be enabled yet. In REAPER: Options > Preferences > Plug-ins > ReaScript: tick "
        f"'Enable Python for use with ReaScript', {where}; then restart REAPER.",
        f"Use Python {version} (the one that runs imusic), so that REAPER's Python can import this project.",
    ]


def uninstall(resource: Path) -> Report:
    """Remove exactly what install added, as recorded in its manifest. reaper-kb.ini, when it changes, is backed up
    first as install backs it up (reaper-kb.ini.imusic-backup: the file as it was before the uninstall); otherwise
    install's backup goes too.

    All or nothing like install: the manifest goes last, so a failed uninstall can be run again.
    """
    resource = Path(resource)
    folder = resource / "Scripts" / SUBDIR
    report = Report()
    manifest = _read_manifest(folder)
    kb_path = _kb_file(resource)
    try:
        writes = _uninstall_plan(folder, kb_path, manifest)
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename} ({exc.strerror}): nothing was uninstalled") from exc
    if not writes:
        report.notes.append(f"nothing to uninstall: no {MANIFEST} in {folder}, and no imusic action in {kb_path.name}")
        return report
    _check_writable([path for path, _ in writes], kb_path, "uninstalled")
    changes = _Changes()
    try:
        for path, data in writes:
            if data is None:
                changes.unlink(path)
            else:
                changes.write(path, data)
    except OSError as exc:
        raise _failed(changes, exc, "uninstalled") from exc
    report.changed = [str(path) for path, _ in writes]
    _remove_empty_folders(folder, manifest.get("created_scripts_dir", False))
    return report


def _removed_by_user(action: Action, manifest: dict, kb: bytes) -> str | None:
    """Why not to bind the action's default again: an earlier install bound it, the file still registers our action
    (REAPER did not just write back a key map without us), and the shortcut's line is gone: the user removed it."""

    def present(line: str) -> bool:
        return remove_lines(kb, [line]) != kb

    key = action.key_line()
    if key in manifest.get("kb_lines", []) and present(action.scr_line()) and not present(key):
        return "you removed this shortcut in REAPER; it stays unbound (give it a key in REAPER's Actions list)"
    return None


def _uninstall_plan(folder: Path, kb_path: Path, manifest: dict) -> list[tuple[Path, bytes | None]]:
    """Every file uninstall changes (new bytes) or removes (None), in order; the manifest last. [] when nothing of
    ours is there.

    From reaper-kb.ini it removes every line of ours as it stands in the file (keymap.our_lines: our scripts' actions,
    the shortcuts any install bound, the default ones), not only the manifest's: REAPER left open writes back what an
    earlier uninstall or upgrade removed. A shortcut the user gave an action stays (REAPER keeps it for a reinstall)."""
    writes: list[tuple[Path, bytes | None]] = []
    backed_up = False
    if kb_path.exists():
        data = kb_path.read_bytes()
        defaults = [action.key_line() for action in ACTIONS]
        listed = manifest["kb_lines"] + manifest.get("retired_kb_lines", []) + defaults
        # and their forms under the earlier ids: REAPER left open during the upgrade writes those lines back
        ours = our_lines(data, listed + [_with_current_ids(line.encode(), back=True).decode() for line in listed])
        updated = remove_lines(data, ours, manifest.get("added_final_newline", False)) if ours else data
        if manifest.get("created_kb") and not updated.strip():
            writes.append((kb_path, None))
        elif updated != data:  # the user's file, as it was, kept beside it first (install's backup is older)
            writes += [(_backup_path(kb_path), data), (kb_path, updated)]
            backed_up = True
    if not backed_up and _backup_path(kb_path).is_file() and (folder / MANIFEST).exists():
        writes.append((_backup_path(kb_path), None))
    files = [*manifest["files"], *(name for name in _source_files({}) if name not in manifest["files"])]
    writes += [(folder / name, None) for name in files if (folder / name).is_file()]
    return [*writes, (folder / MANIFEST, None)] if (folder / MANIFEST).exists() else writes


def _remove_empty_folders(folder: Path, created_scripts_dir: bool) -> None:
    """Our __pycache__ entries, then Scripts/imusic/ and (if install made it) Scripts/, when they are empty."""
    try:
        pycache = folder / "__pycache__"
        if pycache.is_dir():
            for cached in pycache.glob("imusic_*.pyc"):
                cached.unlink()
            if not any(pycache.iterdir()):
                pycache.rmdir()
        for created, path in ((True, folder), (created_scripts_dir, folder.parent)):
            if created and path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    except OSError:
        pass  # leftovers that are not ours to worry about: the actions are already gone


# ------------------------------------------------------------------------------------------------ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`imusic reaper install [--resource-path DIR] [--hotkeys]` and `imusic reaper uninstall [--resource-path DIR]`."""
    sub = parser.add_subparsers(dest="reaper_command", metavar="COMMAND", parser_class=type(parser))
    sub.required = True
    install_parser = sub.add_parser("install", help="copy the actions into REAPER and register them")
    uninstall_parser = sub.add_parser("uninstall", help="remove exactly what install added")
    for p in (install_parser, uninstall_parser):
        p.add_argument("--resource-path", type=Path, default=None, help="REAPER's resource folder (default: found)")
    install_parser.add_argument("--hotkeys", action="store_true", help="bind default shortcuts that are still free")
    install_parser.add_argument(
        "--host",
        type=protocol.host_argument,
        default=None,
        help=f"engine host the actions talk to (default {protocol.DEFAULT_HOST})",
    )
    install_parser.add_argument(
        "--port", type=protocol.port_argument, default=None, help=f"engine port (default {protocol.DEFAULT_PORT})"
    )


def run(args: argparse.Namespace) -> int:
    """Install or uninstall; prints what changed and which shortcuts were bound or left alone (and why).

    ConfigError (exit 1, one line) when REAPER's folder is missing or a file cannot be written: nothing is changed then.
    """
    resource = args.resource_path or default_resource_path()
    if args.reaper_command == "install":
        report = install(resource, hotkeys=args.hotkeys, host=args.host, port=args.port)
        print(f"imusic actions installed in {resource / 'Scripts' / SUBDIR}" if report.changed else "already installed")
        for line in report.bound:
            print(f"  shortcut {line}")
        for line in report.skipped_keys:
            print(f"  not bound: {line}")
        if report.changed:
            print(
                "Restart REAPER to load the actions (REAPER rewrites reaper-kb.ini when it quits: close it first). "
                "If REAPER was open, run install again after it quits."
            )
    else:
        report = uninstall(resource)
        print("imusic actions removed" if report.changed else "nothing changed")
        if report.changed:
            print("If REAPER was open, it writes its key map back when it quits: run uninstall again after that.")
        if any(path.endswith(BACKUP_SUFFIX) for path in report.changed) and _backup_path(_kb_file(resource)).is_file():
            print(f"reaper-kb.ini as it was before: {_backup_path(_kb_file(resource))}")
    for note in report.notes:
        print(note)
    return 0
