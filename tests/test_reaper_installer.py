"""`imusic reaper install|uninstall` on sample resource folders: our lines in, our lines out, every other byte kept."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_bridge_support import tree_digest

from bridge.cli import main
from engine.errors import ConfigError
from reaper_scripts import installer, keymap
from reaper_scripts.installer import ACTIONS, install, uninstall

SCRIPTS = Path(installer.__file__).parent


def sample_kb(eol: str, final_newline: bool = True, taken: str = "KEY 29 68 _SWS_AWTOGGLECLICKTRACK 0") -> bytes:
    """A reaper-kb.ini as real users have: custom actions, other scripts, thousands of key and MIDI bindings, one on
    Ctrl+Alt+Shift+D (extract drums' default)."""
    lines = [
        'ACT 0 0 "7a3c2be1d4f04e0a9f2b2c6bd1f0a001" "Custom: Glue and normalize" 40362 40108',
        'SCR 4 0 RS5e0b4ac0a3b7a6a0fd91f7a0e8c5c0a5b0a8c2d1 "Custom: X-Raym_Trim items.lua" "X-Raym/Trim items.lua"',
        'SCR 4 32060 RS1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d "Custom: cfillion_Step sequencer.lua" "cf/step.lua"',
        "KEY 9 83 40026 0",
        "KEY 13 83 40022 0",
        taken,
        "KEY 1 32 40044 0",
        "KEY 13 69 _SWS_SAVESEL 0\t\t # Main : Ctrl+Shift+E",
        "KEY 17 66 40157 102",
        "KEY 255 6008 989 0",
    ]
    lines += [
        f"KEY {1 + 4 * (i % 8)} {112 + i % 12} {41000 + i} {0 if i % 3 else 32060}" for i in range(1000)
    ]  # F-keys
    lines += [f"KEY {176 + i % 16} {i % 128} {42000 + i} {0 if i % 5 else 32060}" for i in range(1000)]  # MIDI CCs
    text = eol.join(lines) + (eol if final_newline else "")
    return text.encode()


@pytest.fixture
def resource(tmp_path) -> Path:
    folder = tmp_path / "REAPER"
    (folder / "Scripts").mkdir(parents=True)
    (folder / "reaper.ini").write_text("[REAPER]\n")  # what REAPER writes at its first start
    return folder


@pytest.mark.parametrize("eol", ["\r\n", "\n"])
def test_install_registers_every_action_with_the_files_line_endings(resource, eol):
    original = sample_kb(eol)
    (resource / "reaper-kb.ini").write_bytes(original)
    install(resource)
    data = (resource / "reaper-kb.ini").read_bytes()
    assert data.startswith(original)
    added = data[len(original) :].decode()
    assert added.count(eol) == len(ACTIONS)
    if eol == "\n":
        assert "\r" not in added
    for action in ACTIONS:
        # 516: a script (4) that starts a new instance when run again while it waits (512), without REAPER's question
        line = f'SCR 516 0 {action.command_id} "Custom: {action.description}" "imusic/{action.script}"{eol}'
        assert line in added
        assert (resource / "Scripts" / "imusic" / action.script).read_bytes() == installer.action_source(action)
    assert (resource / "Scripts" / "imusic" / "imusic_lib.py").exists()


def test_command_ids_have_reapers_form_and_are_stable():
    ids = [action.command_id for action in ACTIONS]
    assert all(len(i) == 42 and i.startswith("RS") and int(i[2:], 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)
    # Users' reaper-kb.ini holds these ids: a release that derived them otherwise would lose every binding.
    by_script = {action.script: action.command_id for action in ACTIONS}
    assert by_script["imusic_extract_drums.py"] == "RS9a603120f69f433831fb1d8a8cacf22ac5d2027a"
    assert by_script["imusic_edit.py"] == "RS20e90748456014503505349cc0f8804fe0807f66"
    # REAPER's own: its reaper-kb.ini registers Cockos/lyrics.lua as RS1ee9bb229dab... (SHA-1 of the path in capitals)
    assert keymap.script_command_id("Cockos/lyrics.lua") == "RS1ee9bb229dabffe151848d7efa3c10f748e1a1cf"


def test_an_earlier_releases_ids_move_to_reapers_own_with_the_users_shortcuts_names_and_other_sections(resource):
    """Releases before 2026-12-08 hashed the path as written, not in capitals as REAPER does: a script loaded again
    with "Load ReaScript" became a second action, and a reinstall removed REAPER's line for it (in any section) and
    left its shortcut bound to nothing. The user's own shortcut and name on an earlier id move to the new one."""
    kb = resource / "reaper-kb.ini"
    kb.write_bytes(sample_kb("\n"))
    install(resource, hotkeys=True)
    current = kb.read_text()
    earlier = current
    for action in ACTIONS:
        earlier = earlier.replace(action.command_id, action.earlier_command_id)
    manifest_path = resource / "Scripts" / "imusic" / installer.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    for listed in ("kb_lines", "retired_kb_lines"):
        for action in ACTIONS:
            manifest[listed] = [line.replace(action.command_id, action.earlier_command_id) for line in manifest[listed]]
    manifest_path.write_text(json.dumps(manifest))
    edit, drums = ACTIONS[0], ACTIONS[1]
    midi = f'SCR 4 32060 RS7d3c_{edit.command_id[2:]} "Custom: imusic_edit.py" imusic/imusic_edit.py'
    earlier = earlier.replace(f'"Custom: {drums.description}"', "Drums")  # a bare one-word name of the user's
    earlier += f"KEY 1 117 _{edit.earlier_command_id} 0\n{midi}\n"  # Shift+F6, and the MIDI editor's own line
    kb.write_text(earlier)

    install(resource, hotkeys=True)
    data = kb.read_text()
    assert not any(action.earlier_command_id in data for action in ACTIONS)
    assert f"KEY 1 117 _{edit.command_id} 0" in data  # their shortcut, on the action's new id
    assert midi in data  # REAPER's line for the MIDI editor section is theirs
    assert f"SCR 516 0 {drums.command_id} Drums " in data and drums.scr_line() not in data  # their name stays
    assert data.count(f" 0 {edit.command_id} ") == 1  # one action, not two
    uninstall(resource)
    left = kb.read_text()
    assert f" 0 {edit.command_id} " not in left and f"KEY 1 117 _{edit.command_id} 0" in left  # theirs stays

    # REAPER left open during the upgrade writes the earlier ids back when it quits; uninstall takes those lines too
    install(resource, hotkeys=True)
    kb.write_text(earlier)
    uninstall(resource)
    ids = [i for action in ACTIONS for i in (action.command_id, action.earlier_command_id)]
    left = [line for line in kb.read_text().splitlines() if any(i in line for i in ids)]
    assert left == [f"KEY 1 117 _{edit.earlier_command_id} 0"], left  # only the user's own shortcut


def test_installing_twice_changes_nothing(resource):
    (resource / "reaper-kb.ini").write_bytes(sample_kb("\r\n"))
    install(resource, hotkeys=True)
    before = tree_digest(resource)
    report = install(resource, hotkeys=True)
    assert tree_digest(resource) == before
    assert report.changed == []


@pytest.mark.parametrize("eol", ["\r\n", "\n"])
@pytest.mark.parametrize("final_newline", [True, False])
def test_uninstall_restores_the_file_byte_for_byte(resource, eol, final_newline):
    original = sample_kb(eol, final_newline)
    (resource / "reaper-kb.ini").write_bytes(original)
    install(resource, hotkeys=True)
    uninstall(resource)
    assert (resource / "reaper-kb.ini").read_bytes() == original
    assert not (resource / "Scripts" / "imusic").exists()


def test_uninstall_keeps_lines_the_user_added_after_install(resource):
    (resource / "reaper-kb.ini").write_bytes(sample_kb("\r\n"))
    install(resource, hotkeys=True)
    with open(resource / "reaper-kb.ini", "ab") as handle:
        handle.write(b"KEY 1 112 40001 0\r\n")
    uninstall(resource)
    assert (resource / "reaper-kb.ini").read_bytes() == sample_kb("\r\n") + b"KEY 1 112 40001 0\r\n"


def reaper_rewrite(data: bytes) -> bytes:
    """reaper-kb.ini as REAPER saves it back: a script path without spaces loses its quotes, and every KEY line gets a
    comment naming the section and the chord."""
    out = []
    for line in data.decode().split("\r\n"):
        if line.startswith("SCR ") and line.endswith('"') and " " not in line.rsplit(' "', 1)[1]:
            head, path = line.rsplit(' "', 1)
            line = f"{head} {path[:-1]}"
        elif line.startswith("KEY ") and "#" not in line:
            line += "\t\t # Main : some chord : some action"
        out.append(line)
    return "\r\n".join(out).encode()


def test_uninstall_finds_our_lines_after_reaper_rewrote_the_file(resource):
    (resource / "reaper-kb.ini").write_bytes(sample_kb("\r\n"))
    install(resource, hotkeys=True)
    rewritten = reaper_rewrite((resource / "reaper-kb.ini").read_bytes())
    assert b'"imusic/imusic_edit.py"' not in rewritten and b" imusic/imusic_edit.py" in rewritten
    (resource / "reaper-kb.ini").write_bytes(rewritten)
    uninstall(resource)
    assert (resource / "reaper-kb.ini").read_bytes() == reaper_rewrite(sample_kb("\r\n"))


def test_a_reinstall_after_reaper_rewrote_the_file_adds_no_second_copy(resource):
    (resource / "reaper-kb.ini").write_bytes(sample_kb("\r\n"))
    install(resource, hotkeys=True)
    rewritten = reaper_rewrite((resource / "reaper-kb.ini").read_bytes())
    (resource / "reaper-kb.ini").write_bytes(rewritten)
    report = install(resource, hotkeys=True)
    assert (resource / "reaper-kb.ini").read_bytes() == rewritten
    assert report.changed == []


def test_hotkeys_bind_free_keys_and_never_a_key_the_user_bound(resource):
    (resource / "reaper-kb.ini").write_bytes(sample_kb("\n"))
    report = install(resource, hotkeys=True)
    data = (resource / "reaper-kb.ini").read_bytes().decode()
    extract_drums = next(a for a in ACTIONS if a.script == "imusic_extract_drums.py")
    remove_bass = next(a for a in ACTIONS if a.script == "imusic_remove_bass.py")
    assert f"KEY 29 68 _{extract_drums.command_id} 0" not in data  # Ctrl+Alt+Shift+D is the user's
    assert data.count("KEY 29 68 ") == 1
    assert f"KEY 29 50 _{remove_bass.command_id} 0\n" in data  # Ctrl+Alt+Shift+2 was free
    assert report.skipped_keys == [
        "Ctrl+Alt+Shift+D (Instruct: extract drums): already bound to _SWS_AWTOGGLECLICKTRACK"
    ]
    assert len(report.bound) == len(ACTIONS) - 1


def test_a_global_hotkey_on_a_default_shortcut_is_a_collision_too(resource):
    (resource / "reaper-kb.ini").write_bytes(sample_kb("\n", taken="KEY 29 50 40001 102"))
    report = install(resource, hotkeys=True)
    assert report.skipped_keys == ["Ctrl+Alt+Shift+2 (Instruct: remove bass): already bound to 40001"]


def test_an_action_the_user_bound_themselves_gets_no_second_shortcut(resource):
    """A user who gave extract drums a key of their own (F5 here) keeps it as the only one: no default is added."""
    extract_drums = next(a for a in ACTIONS if a.script == "imusic_extract_drums.py")
    original = sample_kb("\n", taken="KEY 1 33 40044 0") + f"KEY 1 116 _{extract_drums.command_id} 0\n".encode()
    (resource / "reaper-kb.ini").write_bytes(original)
    report = install(resource, hotkeys=True)
    data = (resource / "reaper-kb.ini").read_text()
    assert data.count(f"_{extract_drums.command_id} ") == 1  # the user's F5 line, nothing else
    assert report.skipped_keys == [
        "Ctrl+Alt+Shift+D (Instruct: extract drums): you bound this action to F5 yourself; that stays its only shortcut"
    ]
    assert len(report.bound) == len(ACTIONS) - 1
    uninstall(resource)
    assert (resource / "reaper-kb.ini").read_bytes() == original


def test_a_reinstall_keeps_our_default_beside_a_key_the_user_added_later(resource):
    (resource / "reaper-kb.ini").write_bytes(sample_kb("\n", taken="KEY 1 33 40044 0"))
    install(resource, hotkeys=True)
    extract_drums = next(a for a in ACTIONS if a.script == "imusic_extract_drums.py")
    with open(resource / "reaper-kb.ini", "ab") as handle:
        handle.write(f"KEY 17 74 _{extract_drums.command_id} 0\n".encode())  # the user's Alt+J
    report = install(resource, hotkeys=True)
    data = (resource / "reaper-kb.ini").read_text()
    assert f"{extract_drums.key_line()}\n" in data and f"KEY 17 74 _{extract_drums.command_id} 0" in data
    assert report.skipped_keys == []


def test_chord_names_read_as_reaper_shows_them():
    assert keymap.chord_name(29, 68) == "Ctrl+Alt+Shift+D"
    assert keymap.chord_name(1, 116) == "F5"
    assert keymap.chord_name(17, 49) == "Alt+1"
    assert keymap.chord_name(176, 7) == "KEY 176 7"  # a MIDI CC, not a keyboard chord


def test_default_shortcuts_are_distinct():
    slots = [(a.modifiers, a.key) for a in ACTIONS]
    assert len(set(slots)) == len(slots)


def test_a_backup_of_the_previous_file_is_kept(resource):
    original = sample_kb("\r\n")
    (resource / "reaper-kb.ini").write_bytes(original)
    install(resource)
    assert (resource / "reaper-kb.ini.imusic-backup").read_bytes() == original


def test_a_missing_reaper_kb_ini_is_created_and_removed_again(resource):
    install(resource)
    assert (resource / "reaper-kb.ini").read_text().count("SCR 516 0 RS") == len(ACTIONS)
    uninstall(resource)
    assert not (resource / "reaper-kb.ini").exists()


def test_a_scripts_folder_install_created_is_removed_again(tmp_path):
    bare = tmp_path / "fresh REAPER"
    bare.mkdir()
    (bare / "reaper.ini").write_text("[REAPER]\n")
    install(bare)
    uninstall(bare)
    assert [p.name for p in bare.iterdir()] == ["reaper.ini"]


def test_uninstall_without_install_changes_nothing(resource):
    (resource / "reaper-kb.ini").write_bytes(sample_kb("\n"))
    before = tree_digest(resource)
    report = uninstall(resource)
    assert tree_digest(resource) == before
    assert report.changed == []


def test_a_reaper_kb_ini_kept_elsewhere_behind_a_link_is_edited_and_stays_a_link(resource, tmp_path):
    kept = tmp_path / "dotfiles" / "reaper-kb.ini"
    kept.parent.mkdir()
    kept.write_bytes(sample_kb("\n"))
    (resource / "reaper-kb.ini").symlink_to(kept)
    install(resource)
    assert (resource / "reaper-kb.ini").is_symlink() and (resource / "reaper-kb.ini").resolve() == kept
    assert b"imusic/imusic_extract_drums.py" in kept.read_bytes()
    uninstall(resource)
    assert kept.read_bytes() == sample_kb("\n") and (resource / "reaper-kb.ini").is_symlink()


@pytest.mark.parametrize("text", ["[]", '{"files": 3}', '{"kb_lines": [1]}', "{not json"])
def test_a_damaged_manifest_changes_nothing_and_says_what_to_do(resource, text):
    install(resource)
    manifest = resource / "Scripts" / "imusic" / "imusic_manifest.json"
    manifest.write_text(text)
    before = (resource / "reaper-kb.ini").read_bytes()
    for action in (install, uninstall):
        with pytest.raises(ConfigError, match="imusic_manifest.json is damaged.*nothing was changed"):
            action(resource)
    assert (resource / "reaper-kb.ini").read_bytes() == before and manifest.read_text() == text


@pytest.mark.parametrize("stray", ["victim", "../../victim", "sub/victim", "..", "user line"])
def test_a_manifest_naming_what_no_install_writes_changes_nothing(resource, stray):
    """Uninstall removes what the manifest names: one naming a file outside Scripts/imusic/ (an absolute path, ../)
    had it deleted, and one listing a user's own reaper-kb.ini line had that line removed. Such a manifest is
    damaged: nothing is changed."""
    install(resource, hotkeys=True)
    folder = resource / "Scripts" / "imusic"
    victim = resource / "victim.wav"
    victim.write_bytes(b"the producer's take")
    user_line = "KEY 1 65 40001 0"  # a shortcut of the user's to one of REAPER's own actions
    kb = resource / "reaper-kb.ini"
    kb.write_bytes(kb.read_bytes() + (user_line + "\n").encode())
    manifest_path = folder / "imusic_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if stray == "user line":
        manifest["kb_lines"].append(user_line)
    else:
        manifest["files"].append(str(victim) if stray == "victim" else stray.replace("victim", "victim.wav"))
    manifest_path.write_text(json.dumps(manifest))
    before = kb.read_bytes()
    for action in (install, uninstall):
        with pytest.raises(ConfigError, match="imusic_manifest.json is damaged \\(it names .*\\).*nothing was changed"):
            action(resource)
    assert victim.read_bytes() == b"the producer's take" and kb.read_bytes() == before
    assert (folder / "imusic_lib.py").is_file()


def test_a_missing_resource_folder_says_where_to_find_it(tmp_path):
    with pytest.raises(ConfigError, match="Show REAPER resource path"):
        install(tmp_path / "nope")


def test_a_folder_without_reaper_ini_is_not_taken_for_reapers_resource_folder(tmp_path):
    program = tmp_path / "Program Files" / "REAPER (x64)"
    program.mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds no reaper.ini.*Show REAPER resource path"):
        install(program)
    assert list(program.iterdir()) == []


@pytest.mark.parametrize(
    ("library", "version"),
    [
        ("python39.dll", (3, 9)),
        ("C:\\Python311\\python311.dll", (3, 11)),
        ("libpython3.10.so.1.0", (3, 10)),
        ("libpython3.12.dylib", (3, 12)),
        ("/Library/Frameworks/Python.framework/Versions/3.9/Python", (3, 9)),
        ("python3.dll", None),
    ],
)
def test_the_python_a_reaper_ini_names_is_read_off_its_library(library, version):
    assert installer.reaper_python_version(library) == version


def test_a_reaper_set_to_a_python_too_old_for_the_actions_gets_a_note(resource):
    (resource / "reaper.ini").write_text("[reaper]\nreascript=1\npythonlibdll64=python39.dll\n")
    (note,) = install(resource).notes
    assert "REAPER is set to Python 3.9" in note and "need 3.10 or later" in note


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("linux", "/home/u/.config/REAPER"),
        ("darwin", "/home/u/Library/Application Support/REAPER"),
        ("win32", "C:\\Users\\u\\AppData\\Roaming/REAPER"),
    ],
)
def test_the_resource_folder_is_found_per_platform(platform, expected):
    env = {"APPDATA": "C:\\Users\\u\\AppData\\Roaming"}
    assert str(installer.default_resource_path(platform, env, Path("/home/u"))) == expected


def test_windows_without_appdata_asks_for_the_path():
    with pytest.raises(ConfigError, match="--resource-path"):
        installer.default_resource_path("win32", {}, Path("/home/u"))


def test_the_settings_file_records_the_engine_address(resource):
    install(resource, host="127.0.0.1", port=9555)
    settings = json.loads((resource / "Scripts" / "imusic" / "imusic_paths.json").read_text())
    assert (settings["host"], settings["port"]) == ("127.0.0.1", 9555)
    assert str(SCRIPTS.parent) in settings["prepend"]


def test_a_reinstall_keeps_the_settings_the_producer_wrote_and_the_options_given_override_them(resource):
    """docs/REAPER.md tells a producer to set mode and max_seconds in this file: an upgrade must not wipe them."""
    path = resource / "Scripts" / "imusic" / "imusic_paths.json"
    install(resource, host="10.0.0.5", port=9555)
    mine = {**json.loads(path.read_text()), "mode": "resynth", "max_seconds": 120, "prepend": ["/old/checkout"]}
    path.write_text(json.dumps(mine))
    install(resource)
    settings = json.loads(path.read_text())
    assert {k: settings[k] for k in ("host", "port", "mode", "max_seconds")} == {
        "host": "10.0.0.5",
        "port": 9555,
        "mode": "resynth",
        "max_seconds": 120,
    }
    assert settings["prepend"] == [str(SCRIPTS.parent)]  # the import path is this checkout's, always
    install(resource, port=9600)
    assert json.loads(path.read_text())["port"] == 9600
    path.write_text("{not json")
    report = install(resource)
    assert any("held no JSON object of settings" in note for note in report.notes)
    assert "mode" not in json.loads(path.read_text())


def test_a_python_without_this_project_installed_imports_the_installed_library(resource, tmp_path):
    """REAPER's Python knows nothing of our venv: the settings file alone must make the library importable."""
    install(resource)
    folder = resource / "Scripts" / "imusic"
    code = (
        f"import sys; sys.path.insert(0, {str(folder)!r}); import imusic_lib; "
        "import bridge.client, pythonosc; print(imusic_lib.planning.__name__, 'torch' in sys.modules)"
    )
    # -S: no site-packages (neither the venv's nor the editable install), -I: no PYTHONPATH or user site
    proc = subprocess.run(
        [sys.executable, "-S", "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["reaper_scripts.planning", "False"]


def test_install_prints_how_to_enable_python_when_reaper_ini_lacks_it(resource, capsys):
    assert main(["reaper", "install", "--resource-path", str(resource), "--hotkeys"]) == 0
    out = capsys.readouterr().out
    assert "Options > Preferences > Plug-ins > ReaScript" in out
    assert "shortcut Ctrl+Alt+Shift+E  Instruct: edit selected items..." in out


def test_no_python_hint_once_reaper_ini_points_to_a_python(resource):
    ini = "[reaper]\r\nreascript=1\r\npythonlibpath64=/usr/lib\r\npythonlibdll64=libpython3.11.so\r\n"
    (resource / "reaper.ini").write_bytes(ini.encode())
    assert install(resource).notes == []


def test_the_python_hint_stays_while_python_is_disabled(resource):
    (resource / "reaper.ini").write_text("[reaper]\nreascript=0\npythonlibdll64=libpython3.11.so\n")
    assert "Enable Python for use with ReaScript" in install(resource).notes[0]


def test_the_shared_python_library_is_found_where_each_platform_keeps_it(tmp_path):
    version = f"{sys.version_info.major}{sys.version_info.minor}"
    windows = tmp_path / "Python"  # python.org's Windows layout: the DLL beside python.exe, sysconfig names none
    windows.mkdir()
    (windows / f"python{version}.dll").write_bytes(b"")
    assert installer.libpython(lambda name: None, str(windows), windows=True) == str(windows / f"python{version}.dll")
    framework = tmp_path / "Python.framework" / "Versions" / "3.x"  # python.org's macOS framework build
    (framework / "lib").mkdir(parents=True)
    (framework / "Python").write_bytes(b"")
    config = {"PYTHONFRAMEWORK": "Python", "LIBDIR": str(framework / "lib"), "LDLIBRARY": "Python.framework/Python"}
    assert installer.libpython(config.get, str(framework), windows=False) == str(framework / "Python")
    linux = tmp_path / "usr" / "lib"
    linux.mkdir(parents=True)
    (linux / "libpython3.so.1.0").write_bytes(b"")
    config = {"LIBDIR": str(linux), "LDLIBRARY": "libpython3.so.1.0"}
    assert installer.libpython(config.get, str(tmp_path), windows=False) == str(linux / "libpython3.so.1.0")
    static = {"LIBDIR": str(linux), "LDLIBRARY": "libpython3.a"}
    assert installer.libpython(static.get, str(tmp_path), windows=False) == ""
    assert installer.libpython(lambda name: None, str(tmp_path), windows=True) == ""


def test_cli_uninstall_round_trip(resource, capsys):
    original = sample_kb("\r\n")
    (resource / "reaper-kb.ini").write_bytes(original)
    assert main(["reaper", "install", "--resource-path", str(resource)]) == 0
    assert main(["reaper", "uninstall", "--resource-path", str(resource)]) == 0
    assert "imusic actions removed" in capsys.readouterr().out
    assert (resource / "reaper-kb.ini").read_bytes() == original


def test_every_action_file_has_the_metadata_header_and_only_calls_the_library():
    for action in ACTIONS:
        text = installer.action_source(action).decode()
        for tag in ("@description", "@version", "@author", "@about", "@provides"):
            assert f"# {tag}" in text, (action.script, tag)
        assert f"# @description {action.description}\n" in text
        body = [line for line in text.splitlines() if line.startswith("imusic_lib.")]
        assert len(body) == 1, action.script


def test_the_kb_file_is_written_through_a_rename(resource, monkeypatch):
    (resource / "reaper-kb.ini").write_bytes(sample_kb("\n"))
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append(Path(b).name), real_replace(a, b)))
    install(resource)
    assert "reaper-kb.ini" in renames


# ------------------------------------------------------------------------------------------------ REAPER's factory map

# Shortcuts REAPER ships (its factory key map, never written to reaper-kb.ini): Ctrl+Alt+B, Ctrl+Alt+P, Ctrl+Alt+G,
# Alt+Shift+G, Ctrl+S (save), Space (play/stop), R (record) as (modifier bits, key code).
SHIPPED = {(25, 66), (25, 80), (25, 71), (21, 71), (9, 83), (1, 32), (1, 82)}


def users_kb_over_factory() -> bytes:
    """What REAPER saves for a user who reworked its factory key map: factory chords overridden and removed (with the
    marks REAPER writes), their own bindings, MIDI; REAPER's untouched defaults are, as always, not in the file."""
    lines = [
        'ACT 0 0 "0c1f0a4e5b6d7e8f9a0b1c2d3e4f5a6b" "Custom: Render stems" 40289 41824',
        "KEY 1 82 1013 0\t\t # Main : R : OVERRIDE DEFAULT : Transport: Record",
        "KEY 9 83 40026 0\t\t # Main : Ctrl+S : OVERRIDE DEFAULT : File: Save project",
        "KEY 25 71 0 0\t\t # Main : Ctrl+Alt+G : DISABLED DEFAULT",
        "KEY 21 84 0 0\t\t # Main : Alt+Shift+T : DISABLED DEFAULT",
        "KEY 29 77 40364 0\t\t # Main : Ctrl+Alt+Shift+M : Options: Toggle metronome",
        "KEY 21 48 _RS5e0b4ac0a3b7a6a0fd91f7a0e8c5c0a5b0a8c2d1 0\t\t # Main : Alt+Shift+0 : Script: Trim items.lua",
        "KEY 176 7 40157 0\t\t # Main : MIDI Chan 1 CC 7 : Markers: Insert marker at current position",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def added_chords(before: bytes, after: bytes) -> set[tuple[int, int]]:
    assert after.startswith(before)
    return {
        (int(line.split()[1]), int(line.split()[2]))
        for line in after[len(before) :].decode().splitlines()
        if line.startswith("KEY ")
    }


def test_hotkeys_never_take_reapers_factory_shortcuts(resource):
    from reaper_scripts.factory_keys import FACTORY_MAIN

    original = users_kb_over_factory()
    (resource / "reaper-kb.ini").write_bytes(original)
    report = install(resource, hotkeys=True)
    chords = added_chords(original, (resource / "reaper-kb.ini").read_bytes())
    assert chords, "no shortcut bound at all"
    assert not chords & SHIPPED
    assert not chords & FACTORY_MAIN
    assert len(chords) == len(report.bound) == len(ACTIONS)


def test_the_factory_map_holds_the_shortcuts_reaper_ships_and_none_it_calls_free():
    from reaper_scripts.factory_keys import FACTORY_MAIN, KNOWN_FREE

    assert SHIPPED <= FACTORY_MAIN
    assert len(FACTORY_MAIN) > 250
    assert not FACTORY_MAIN & KNOWN_FREE


def test_every_default_shortcut_is_known_free_of_the_factory_map():
    from reaper_scripts.factory_keys import FACTORY_MAIN, KNOWN_FREE

    for action in ACTIONS:
        assert action.chord in KNOWN_FREE, action.shortcut
        assert action.chord not in FACTORY_MAIN, action.shortcut


def with_action(monkeypatch, modifiers: int, key: str) -> keymap.Action:
    """ACTIONS plus one whose default shortcut is the given chord."""
    extra = keymap.Action("imusic_status.py", "Instruct: probe", modifiers, key)
    monkeypatch.setattr(installer, "ACTIONS", (*installer.ACTIONS, extra))
    return extra


def test_a_factory_shortcut_is_refused_even_when_the_file_does_not_mention_it(resource, monkeypatch):
    with_action(monkeypatch, keymap.VIRT | keymap.CTRL | keymap.ALT, "B")  # Ctrl+Alt+B, in REAPER since 5.x
    (resource / "reaper-kb.ini").write_bytes(sample_kb("\n"))
    report = install(resource, hotkeys=True)
    assert "KEY 25 66 " not in (resource / "reaper-kb.ini").read_text()
    assert "Ctrl+Alt+B (Instruct: probe): one of REAPER's factory shortcuts" in report.skipped_keys


def test_a_chord_not_known_to_be_free_is_refused(resource, monkeypatch):
    with_action(monkeypatch, keymap.CTRL_ALT_SHIFT, "\x74")  # Ctrl+Alt+Shift+F5: no published key map shows it
    report = install(resource, hotkeys=True)
    assert "KEY 29 116 " not in (resource / "reaper-kb.ini").read_text()
    assert report.skipped_keys[-1].endswith("not known to be free of REAPER's factory shortcuts")


def test_a_shortcut_the_user_removed_on_purpose_stays_empty(resource):
    """KEY <mods> <key> 0 0 is the user's choice to have no action on that chord, not a binding to command 0."""
    removed = "KEY 29 68 0 0\t\t # Main : Ctrl+Alt+Shift+D : DISABLED DEFAULT"
    original = sample_kb("\n", taken=removed)
    (resource / "reaper-kb.ini").write_bytes(original)
    report = install(resource, hotkeys=True)
    assert (29, 68) not in added_chords(original, (resource / "reaper-kb.ini").read_bytes())
    [skipped] = report.skipped_keys
    assert skipped.startswith("Ctrl+Alt+Shift+D (Instruct: extract drums): you removed REAPER's default shortcut")
    assert "stays empty as you chose" in skipped
    assert "bound to 0" not in skipped


def test_a_default_shortcut_the_user_deleted_in_reaper_is_not_bound_again_by_the_next_install(resource):
    """REAPER drops the KEY line when the user deletes the shortcut in its Actions list; our action's SCR line stays.
    A later install --hotkeys (an upgrade) took the missing line for a free chord."""
    kb = resource / "reaper-kb.ini"
    kb.write_bytes(sample_kb("\n"))
    install(resource, hotkeys=True)
    bass = next(a for a in ACTIONS if a.script == "imusic_extract_bass.py")
    assert bass.key_line() in kb.read_text()
    lines = kb.read_text().splitlines(keepends=True)
    kb.write_text("".join(line for line in lines if not line.startswith(bass.key_line())))  # deleted in REAPER
    report = install(resource, hotkeys=True)
    assert bass.key_line() not in kb.read_text()
    assert any(s.startswith(f"{bass.shortcut} (") and "you removed this shortcut" in s for s in report.skipped_keys)
    # where REAPER wrote back a key map without any of our lines (open during the install), they all come back
    kb.write_bytes(sample_kb("\n"))
    install(resource, hotkeys=True)
    assert bass.key_line() in kb.read_text()


def test_the_cli_says_which_shortcuts_were_left_alone_and_why(resource, capsys):
    (resource / "reaper-kb.ini").write_bytes(users_kb_over_factory() + b"KEY 29 80 0 0\r\nKEY 21 51 40001 103\r\n")
    assert main(["reaper", "install", "--resource-path", str(resource), "--hotkeys"]) == 0
    out = capsys.readouterr().out
    assert "  shortcut Ctrl+Alt+Shift+D  Instruct: extract drums" in out
    assert "  not bound: Ctrl+Alt+Shift+P (Instruct: extract piano): you removed REAPER's default shortcut" in out
    assert "  not bound: Alt+Shift+3 (Instruct: add piano): already bound to 40001" in out


# ------------------------------------------------------------------------------------------------ all or nothing


@pytest.mark.parametrize("unwritable", [".", "Scripts"])
def test_an_unwritable_folder_changes_nothing_and_says_so_in_one_line(resource, read_only, unwritable):
    (resource / "reaper-kb.ini").write_bytes(sample_kb("\r\n"))
    before = tree_digest(resource)
    read_only(resource / unwritable)
    with pytest.raises(ConfigError) as caught:
        install(resource, hotkeys=True)
    message = str(caught.value)
    assert "\n" not in message and "permission denied" in message and "nothing was installed" in message
    assert tree_digest(resource) == before  # no script copied, no manifest, no backup, no temporary file


def test_a_read_only_kb_file_is_refused_and_stays_read_only(resource, capsys):
    kb = resource / "reaper-kb.ini"
    kb.write_bytes(sample_kb("\n"))
    kb.chmod(0o444)
    before = tree_digest(resource)
    assert main(["reaper", "install", "--resource-path", str(resource), "--hotkeys"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reaper-kb.ini is read-only" in err and "nothing was installed" in err
    assert tree_digest(resource) == before
    assert stat.S_IMODE(kb.stat().st_mode) == 0o444


def test_install_keeps_the_kb_files_permission_mode(resource):
    kb = resource / "reaper-kb.ini"
    kb.write_bytes(sample_kb("\n"))
    kb.chmod(0o600)
    install(resource, hotkeys=True)
    assert stat.S_IMODE(kb.stat().st_mode) == 0o600
    assert stat.S_IMODE((resource / "reaper-kb.ini.imusic-backup").stat().st_mode) == 0o600
    uninstall(resource)
    assert stat.S_IMODE(kb.stat().st_mode) == 0o600


@pytest.mark.parametrize("installed_before", [False, True])
def test_a_write_that_fails_halfway_is_undone(resource, monkeypatch, installed_before):
    """Scripts copied, then reaper-kb.ini cannot be renamed into place: everything goes back as it was."""
    (resource / "reaper-kb.ini").write_bytes(sample_kb("\r\n"))
    if installed_before:
        install(resource)  # a later install with --hotkeys has lines to add, and a backup to replace
    before = tree_digest(resource)
    real_replace = os.replace

    def replace(source, target):
        if Path(target).name == "reaper-kb.ini":
            raise PermissionError(13, "Permission denied", str(target))
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ConfigError, match=r"reaper-kb.ini \(Permission denied\): nothing was installed"):
        install(resource, hotkeys=True)
    assert tree_digest(resource) == before


def test_uninstall_leaves_the_folder_as_it_was_with_a_backup_of_the_key_map_it_changed(resource):
    """reaper-kb.ini is written atomically with a backup, by uninstall too: it holds the user's own bindings."""
    original = sample_kb("\r\n")
    (resource / "reaper-kb.ini").write_bytes(original)
    before = tree_digest(resource)
    install(resource, hotkeys=True)
    install(resource, hotkeys=True, port=9555)  # a reinstall rewrites the settings; the backup stays one file
    installed = (resource / "reaper-kb.ini").read_bytes()
    uninstall(resource)
    backup = resource / "reaper-kb.ini.imusic-backup"
    assert backup.read_bytes() == installed and (resource / "reaper-kb.ini").read_bytes() == original
    backup.unlink()
    assert tree_digest(resource) == before
    # an uninstall that leaves the key map as it is makes no backup, and takes install's away
    install(resource)
    (resource / "reaper-kb.ini").write_bytes(original)  # REAPER lost our lines (written back from memory)
    uninstall(resource)
    assert tree_digest(resource) == before


def test_uninstall_refuses_a_read_only_kb_file_and_removes_nothing(resource):
    kb = resource / "reaper-kb.ini"
    kb.write_bytes(sample_kb("\n"))
    install(resource, hotkeys=True)
    kb.chmod(0o444)
    before = tree_digest(resource)
    with pytest.raises(ConfigError, match="is read-only: nothing was uninstalled"):
        uninstall(resource)
    assert tree_digest(resource) == before


def test_a_reinstall_takes_back_an_earlier_versions_shortcut_on_a_factory_key(resource):
    """Earlier versions bound remove bass to Ctrl+Alt+B, one of REAPER's factory shortcuts: a reinstall removes it."""
    original = sample_kb("\r\n")
    (resource / "reaper-kb.ini").write_bytes(original)
    install(resource, hotkeys=True)
    remove_bass = next(a for a in ACTIONS if a.script == "imusic_remove_bass.py")
    old_line = f"KEY 25 66 _{remove_bass.command_id} 0"  # what such an install added and recorded
    with open(resource / "reaper-kb.ini", "ab") as handle:
        handle.write(old_line.encode() + b"\r\n")
    manifest_path = resource / "Scripts" / "imusic" / "imusic_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["kb_lines"].append(old_line)
    manifest_path.write_text(json.dumps(manifest))
    report = install(resource, hotkeys=True)
    data = (resource / "reaper-kb.ini").read_text()
    assert old_line not in data and f"KEY 29 50 _{remove_bass.command_id} 0" in data
    assert any(old_line in note for note in report.notes)
    uninstall(resource)
    assert (resource / "reaper-kb.ini").read_bytes() == original


def test_an_uninstall_while_reaper_is_open_is_finished_by_the_next_one(resource):
    """REAPER keeps the key map in memory and writes it back when it quits: our lines return after an uninstall made
    while it ran, with no manifest left to name them. A second uninstall finds them by what they are."""
    original = sample_kb("\r\n")
    kb = resource / "reaper-kb.ini"
    kb.write_bytes(original)
    install(resource, hotkeys=True)
    in_reapers_memory = reaper_rewrite(kb.read_bytes())
    uninstall(resource)
    kb.write_bytes(in_reapers_memory)  # REAPER quits
    report = uninstall(resource)
    assert kb.read_bytes() == reaper_rewrite(original) and report.changed
    assert "nothing to uninstall" in " ".join(uninstall(resource).notes)


def test_an_earlier_versions_shortcut_reaper_wrote_back_is_taken_back_by_every_later_install_and_uninstall(resource):
    """An upgrade took back an earlier default on a factory chord; REAPER, left open, wrote it back. It must not then
    pass for the user's own shortcut: the manifest keeps it as retired."""
    original = sample_kb("\r\n")
    kb = resource / "reaper-kb.ini"
    kb.write_bytes(original)
    install(resource, hotkeys=True)
    remove_bass = next(a for a in ACTIONS if a.script == "imusic_remove_bass.py")
    old_line = f"KEY 25 66 _{remove_bass.command_id} 0"  # an earlier version's default (Ctrl+Alt+B)
    with open(kb, "ab") as handle:
        handle.write(old_line.encode() + b"\r\n")
    manifest_path = resource / "Scripts" / "imusic" / "imusic_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "kb_lines": [*manifest["kb_lines"], old_line]}))
    in_reapers_memory = kb.read_bytes()
    install(resource, hotkeys=True)  # the upgrade
    assert old_line not in kb.read_text()
    kb.write_bytes(in_reapers_memory)  # REAPER quits
    report = install(resource, hotkeys=True)
    assert old_line not in kb.read_text() and any(old_line in note for note in report.notes)
    assert not any("yourself" in refusal for refusal in report.skipped_keys)
    kb.write_bytes(in_reapers_memory)
    uninstall(resource)
    assert kb.read_bytes() == original


def test_an_action_an_earlier_version_had_and_this_one_has_not_is_taken_back(resource):
    kb = resource / "reaper-kb.ini"
    old = 'SCR 4 0 RS0123456789abcdef0123456789abcdef01234567 "Custom: imusic_old.py" imusic/imusic_old.py'
    kb.write_bytes(sample_kb("\n") + old.encode() + b"\n")
    install(resource)
    assert "imusic_old.py" not in kb.read_text()
    uninstall(resource)
    assert kb.read_bytes() == sample_kb("\n")


def test_the_actions_are_listed_under_their_instruct_names():
    """REAPER's Actions window shows an SCR line's quoted name: searching "Instruct" finds every action."""
    lines = {action.script: action.scr_line() for action in ACTIONS}
    assert '"Custom: Instruct: extract drums" "imusic/imusic_extract_drums.py"' in lines["imusic_extract_drums.py"]
    assert '"Custom: Instruct: engine status"' in lines["imusic_status.py"]


def as_earlier_install(resource, older: dict[str, str]) -> None:
    """Make this version's install look like an earlier version's: each line in `older` (this version's line -> the
    earlier one) rewritten in reaper-kb.ini and in the install's manifest."""
    kb = resource / "reaper-kb.ini"
    manifest_path = resource / "Scripts" / "imusic" / "imusic_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    kb.write_text("".join(f"{older.get(line, line)}\n" for line in kb.read_text().splitlines()))
    manifest["kb_lines"] = [older.get(line, line) for line in manifest["kb_lines"]]
    manifest_path.write_text(json.dumps(manifest))


def test_a_reinstall_renames_the_actions_an_earlier_version_listed_by_file_name(resource):
    """Earlier versions listed each action as its file name: a reinstall rewrites that line, keeping its command id
    (and so the user's own shortcuts), but not a name the user gave; an uninstall still restores the file."""
    original = sample_kb("\n")
    (resource / "reaper-kb.ini").write_bytes(original)
    install(resource)
    kb = resource / "reaper-kb.ini"
    older = {
        action.scr_line(): f'SCR 4 0 {action.command_id} "Custom: {action.script}" "imusic/{action.script}"'
        for action in ACTIONS
    }  # this version's line -> what such an install wrote and recorded
    as_earlier_install(resource, older)
    user_key = f"KEY 1 112 _{ACTIONS[0].command_id} 0"
    with open(kb, "a") as handle:
        handle.write(user_key + "\n")
    renamed = ACTIONS[1]  # the user named this one themselves (REAPER also drops the quotes around the path)
    mine = f'SCR 4 0 {renamed.command_id} "Custom: my drum stem" imusic/{renamed.script}'
    kb.write_text(kb.read_text().replace(older[renamed.scr_line()], mine))
    install(resource)
    data = kb.read_text()
    for new, old in older.items():
        if new != renamed.scr_line():
            assert old not in data and data.count(new) == 1
    assert mine in data and renamed.scr_line() not in data  # their name stays
    assert user_key in data
    uninstall(resource)
    assert kb.read_text() == original.decode() + user_key + "\n"


def test_an_action_line_whose_flags_reaper_rewrote_is_still_ours(resource):
    """REAPER rewrites an SCR line's flags when the user answers its "already running" question for good ("Terminate
    instances", 260): the line stays ours to keep on reinstall and to take back on uninstall."""
    original = sample_kb("\n")
    (resource / "reaper-kb.ini").write_bytes(original)
    install(resource)
    kb = resource / "reaper-kb.ini"
    first = ACTIONS[0].scr_line()
    kb.write_text(kb.read_text().replace(first, first.replace("SCR 516 ", "SCR 260 ", 1)))
    install(resource)
    data = kb.read_text()
    assert first.replace("SCR 516 ", "SCR 260 ", 1) in data and first not in data  # their answer stands, once
    assert data.count(ACTIONS[0].command_id) == 1
    uninstall(resource)
    assert kb.read_bytes() == original


def test_a_reinstall_over_an_earlier_versions_lines_gives_the_actions_the_new_instance_flag(resource):
    """Earlier versions wrote `SCR 4` (REAPER asks what to do when an action runs again while it waits); where the
    user answered that question for good, REAPER rewrote the flags, and their answer stays."""
    original = sample_kb("\n")
    (resource / "reaper-kb.ini").write_bytes(original)
    install(resource)
    kb = resource / "reaper-kb.ini"
    old = {action.scr_line(): action.scr_line().replace("SCR 516 ", "SCR 4 ", 1) for action in ACTIONS}
    as_earlier_install(resource, old)
    answered = old[ACTIONS[0].scr_line()].replace("SCR 4 ", "SCR 260 ", 1)  # "Terminate instances", remembered
    kb.write_text(kb.read_text().replace(old[ACTIONS[0].scr_line()], answered))
    install(resource)
    data = kb.read_text()
    assert answered in data and data.count(ACTIONS[0].command_id) == 1
    assert data.count("SCR 516 0 RS") == len(ACTIONS) - 1
    assert not [line for line in data.splitlines() if line.startswith("SCR 4 ") and '"imusic/' in line]
    uninstall(resource)
    assert kb.read_bytes() == original


def test_a_one_stem_action_is_written_from_its_instruction_and_runs_it():
    by_script = {action.script: action for action in ACTIONS}
    text = installer.action_source(by_script["imusic_remove_bass.py"]).decode()
    assert "# @description Instruct: remove bass\n" in text
    assert "#   Remove the bass from each selected item" in text
    assert text.rstrip().endswith('imusic_lib.run_preset("remove", "bass")')
    compile(text, "imusic_remove_bass.py", "exec")  # REAPER runs it as Python
    assert not list(SCRIPTS.glob("imusic_*_*.py"))  # the package holds no copies that could drift
    status = installer.action_source(by_script["imusic_status.py"]).decode()
    assert status.rstrip().endswith("imusic_lib.run_status()") and '"Scripts", "imusic"' in status
