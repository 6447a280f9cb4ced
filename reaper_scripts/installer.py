"""`imusic reaper install|uninstall`: copy the actions into REAPER and register them (and hotkeys) in reaper-kb.ini.

What install adds is recorded in Scripts/imusic/imusic_manifest.json; uninstall removes exactly that. reaper-kb.ini
is handled as bytes: our lines are appended with the file's own line ending, every other byte stays as it was, and
each change is written to a temporary file and renamed over the original after a backup copy is made. Installing
twice changes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigError
from reaper_scripts.planning import PRESET_ACTIONS

PACKAGE_DIR = Path(__file__).resolve().parent
SUBDIR = "imusic"  # under <resource>/Scripts/
LIBRARY = "imusic_lib.py"
SETTINGS_FILE = "imusic_paths.json"
MANIFEST = "imusic_manifest.json"
KB_FILE = "reaper-kb.ini"
BACKUP_SUFFIX = ".imusic-backup"
MAIN_SECTION = 0  # REAPER's main action section
# A key bound here already does something in the arrange view: global hotkeys (102) and global + text fields (103).
CLAIMING_SECTIONS = (MAIN_SECTION, 102, 103)

# REAPER's KEY modifier bits: 1 = virtual key code, 4 = Shift, 8 = Ctrl (Cmd on macOS), 16 = Alt (Option).
VIRT, SHIFT, CTRL, ALT = 1, 4, 8, 16
CTRL_ALT_SHIFT = VIRT | CTRL | ALT | SHIFT
CTRL_ALT = VIRT | CTRL | ALT
ALT_SHIFT = VIRT | ALT | SHIFT
STEM_KEYS = {"drums": "D", "bass": "B", "piano": "P", "guitar": "G"}
OPERATION_MODIFIERS = {"extract": CTRL_ALT_SHIFT, "remove": CTRL_ALT, "add": ALT_SHIFT}


@dataclass(frozen=True)
class Action:
    """One installed script and its default shortcut."""

    script: str
    description: str
    modifiers: int
    key: str  # one letter or digit: its Windows virtual key code is its ASCII code

    @property
    def command_id(self) -> str:
        """'RS' + 40 hex digits, REAPER's form; derived from the path so reinstalling keeps users' own bindings."""
        return "RS" + hashlib.sha1(f"imusic/{self.script}".encode()).hexdigest()

    def scr_line(self) -> str:
        return f'SCR 4 {MAIN_SECTION} {self.command_id} "Custom: {self.script}" "{SUBDIR}/{self.script}"'

    def key_line(self) -> str:
        return f"KEY {self.modifiers} {ord(self.key)} _{self.command_id} {MAIN_SECTION}"

    @property
    def shortcut(self) -> str:
        names = [name for bit, name in ((CTRL, "Ctrl"), (ALT, "Alt"), (SHIFT, "Shift")) if self.modifiers & bit]
        return "+".join([*names, self.key])


ACTIONS: tuple[Action, ...] = (
    Action("imusic_edit.py", "Instruct: edit selected items...", CTRL_ALT_SHIFT, "E"),
    *(
        Action(a.script_name, f"Instruct: {a.instruction}", OPERATION_MODIFIERS[a.operation], STEM_KEYS[a.stem])
        for a in PRESET_ACTIONS
    ),
    Action("imusic_cancel.py", "Instruct: cancel running edits", CTRL_ALT_SHIFT, "X"),
    Action("imusic_status.py", "Instruct: engine status", CTRL_ALT_SHIFT, "I"),
)


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


def libpython() -> str:
    """The shared Python library REAPER must load (Preferences > Plug-ins > ReaScript), '' if there is none."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    name = sysconfig.get_config_var("LDLIBRARY") or ""
    path = Path(libdir) / name
    return str(path) if name and path.exists() and not name.endswith(".a") else ""


# ------------------------------------------------------------------------------------------------ reaper-kb.ini


def _line_ending(data: bytes) -> bytes:
    """The file's own line ending; for a new file, the platform's (REAPER writes CRLF on Windows)."""
    if not data:
        return b"\r\n" if os.name == "nt" else b"\n"
    return b"\r\n" if b"\r\n" in data else b"\n"


def _lines(data: bytes) -> list[bytes]:
    """Lines without their endings."""
    return [line.rstrip(b"\r") for line in data.split(b"\n")] if data else []


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
    """The file with those lines appended (those already present are skipped).

    Returns (new bytes, lines added, whether a final line ending had to be added first).
    """
    present = set(_lines(data))
    new = [line for line in lines if line.encode() not in present]
    if not new:
        return data, [], False
    eol = _line_ending(data)
    fixed_end = bool(data) and not data.endswith(b"\n")
    head = data + eol if fixed_end else data
    return head + b"".join(line.encode() + eol for line in new), new, fixed_end


def remove_lines(data: bytes, lines: list[str], added_final_newline: bool = False) -> bytes:
    """The file without one occurrence of each of those lines; every other byte is kept."""
    wanted = [line.encode() for line in lines]
    kept = []
    for chunk in data.splitlines(keepends=True):
        body = chunk.rstrip(b"\r\n")
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


def write_atomic(path: Path, data: bytes, backup: bool = True) -> None:
    """Write via a temporary file and a rename; the previous content is kept in <name>.imusic-backup."""
    if backup and path.exists():
        backup_path = path.with_name(path.name + BACKUP_SUFFIX)
        _replace_with(backup_path, path.read_bytes())
    _replace_with(path, data)


def _replace_with(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ install


@dataclass
class Report:
    """What an install or uninstall did, for the user."""

    changed: list[str] = field(default_factory=list)
    bound: list[str] = field(default_factory=list)
    skipped_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _read_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"files": [], "kb_lines": [], "added_final_newline": False, "created_kb": False}


def _source_files(settings: dict) -> dict[str, bytes]:
    files = {action.script: (PACKAGE_DIR / action.script).read_bytes() for action in ACTIONS}
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
    """Copy the scripts to <resource>/Scripts/imusic/ and register them (and, with hotkeys, free default keys)."""
    resource = Path(resource)
    if not resource.is_dir():
        raise ConfigError(
            f"REAPER's resource folder {resource} does not exist: run REAPER once, or pass --resource-path "
            "(REAPER shows it under Options > Show REAPER resource path in explorer/finder)"
        )
    report = Report()
    folder = resource / "Scripts" / SUBDIR
    scripts_existed = folder.parent.is_dir()
    folder.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(folder)
    manifest.setdefault("created_scripts_dir", not scripts_existed)
    settings = dict(paths if paths is not None else import_paths())
    if host:
        settings["host"] = host
    if port:
        settings["port"] = int(port)

    for name, data in _source_files(settings).items():
        target = folder / name
        if not target.exists() or target.read_bytes() != data:
            _replace_with(target, data)
            report.changed.append(str(target))
        if name not in manifest["files"]:
            manifest["files"].append(name)

    kb_path = resource / KB_FILE
    original = kb_path.read_bytes() if kb_path.exists() else b""
    if not kb_path.exists():
        manifest["created_kb"] = True
    wanted = [action.scr_line() for action in ACTIONS]
    if hotkeys:
        taken = bound_keys(original)
        for action in ACTIONS:
            owners = [taken.get((action.modifiers, ord(action.key), section)) for section in CLAIMING_SECTIONS]
            owner = next((o for o in owners if o is not None and o != "_" + action.command_id), None)
            if owner is None:
                wanted.append(action.key_line())
                report.bound.append(f"{action.shortcut}  {action.description}")
            else:
                report.skipped_keys.append(f"{action.shortcut} ({action.description}): already bound to {owner}")
    updated, added, fixed_end = append_lines(original, wanted)
    if added:
        write_atomic(kb_path, updated, backup=bool(original))
        report.changed.append(str(kb_path))
        manifest["kb_lines"] += [line for line in added if line not in manifest["kb_lines"]]
        manifest["added_final_newline"] = manifest["added_final_newline"] or fixed_end
    manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode()
    manifest_path = folder / MANIFEST
    if not manifest_path.exists() or manifest_path.read_bytes() != manifest_bytes:
        _replace_with(manifest_path, manifest_bytes)
    report.notes += _python_notes(resource)
    return report


def _python_notes(resource: Path) -> list[str]:
    """How to enable Python in REAPER, unless reaper.ini shows it is already set up."""
    ini = resource / "reaper.ini"
    text = ini.read_text(encoding="utf-8", errors="replace") if ini.exists() else ""
    settings = dict(
        (key.strip().lower(), value.strip())
        for key, sep, value in (line.partition("=") for line in text.splitlines())
        if sep
    )
    # "Enable Python for use with ReaScript" is reascript=1; the library is pythonlibdll64 (a full path on Windows,
    # a file name inside pythonlibpath64 elsewhere).
    if settings.get("reascript") == "1" and settings.get("pythonlibdll64"):
        return []
    lib = libpython()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    where = (
        f"'Custom path to Python dll directory' = {Path(lib).parent} and 'Force ReaScript to use specific Python "
        f"dll' = {Path(lib).name}"
        if lib
        else f"point it to a shared libpython {version} (this Python has none; install one built with --enable-shared)"
    )
    return [
        "Python ReaScript may not be enabled yet. In REAPER: Options > Preferences > Plug-ins > ReaScript: tick "
        f"'Enable Python for use with ReaScript', {where}; then restart REAPER.",
        f"Use Python {version} (the one that runs imusic), so that REAPER's Python can import this project.",
    ]


def uninstall(resource: Path) -> Report:
    """Remove exactly what install added, as recorded in its manifest."""
    resource = Path(resource)
    folder = resource / "Scripts" / SUBDIR
    report = Report()
    if not (folder / MANIFEST).exists():
        report.notes.append(f"nothing to uninstall: no {MANIFEST} in {folder}")
        return report
    manifest = _read_manifest(folder)
    kb_path = resource / KB_FILE
    if kb_path.exists() and manifest["kb_lines"]:
        data = kb_path.read_bytes()
        updated = remove_lines(data, manifest["kb_lines"], manifest.get("added_final_newline", False))
        if manifest.get("created_kb") and not updated.strip():
            kb_path.unlink()
            report.changed.append(str(kb_path))
        elif updated != data:
            write_atomic(kb_path, updated)
            report.changed.append(str(kb_path))
    for name in [*manifest["files"], MANIFEST]:
        path = folder / name
        if path.exists():
            path.unlink()
            report.changed.append(str(path))
    pycache = folder / "__pycache__"
    if pycache.is_dir():
        for cached in pycache.glob("imusic_*.pyc"):
            cached.unlink()
        if not any(pycache.iterdir()):
            pycache.rmdir()
    for created, path in ((True, folder), (manifest.get("created_scripts_dir", False), folder.parent)):
        if created and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return report


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
    install_parser.add_argument("--host", default=None, help="engine host the actions talk to (default 127.0.0.1)")
    install_parser.add_argument("--port", type=int, default=None, help="engine port (default 9137)")


def run(args: argparse.Namespace) -> int:
    """Install or uninstall; prints what changed. ConfigError (exit 1) when REAPER's folder is missing."""
    resource = args.resource_path or default_resource_path()
    if args.reaper_command == "install":
        report = install(resource, hotkeys=args.hotkeys, host=args.host, port=args.port)
        print(f"imusic actions installed in {resource / 'Scripts' / SUBDIR}" if report.changed else "already installed")
        for line in report.bound:
            print(f"  shortcut {line}")
        for line in report.skipped_keys:
            print(f"  not bound: {line}")
        if report.changed:
            print("Restart REAPER to load the actions (REAPER rewrites reaper-kb.ini when it quits: close it first).")
    else:
        report = uninstall(resource)
        print("imusic actions removed" if report.changed else "nothing changed")
    for note in report.notes:
        print(note)
    return 0
