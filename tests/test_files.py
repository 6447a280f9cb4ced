"""engine.files: the one atomic writer (and its JSON and audio forms) for everything but server results and the
journal."""

import json
import math
import os
import stat

import pytest
from test_bridge_support import dead_pid

from engine.errors import CheckpointError, ImusicError
from engine.files import (
    atomic_path,
    audio_files,
    jsonable,
    read_json_object,
    staged_dir,
    sweep_temps,
    write_audio_atomic,
    write_bytes_atomic,
    write_json_atomic,
)


def test_atomic_path_replaces_the_file_only_when_the_block_ends(tmp_path):
    target = tmp_path / "report.png"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        # hidden, and never a final name's suffix: nothing that lists reports or pictures picks it up
        assert tmp.parent == tmp_path and tmp.name.startswith(".report.png.") and tmp.suffix == ".tmp"
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not under the final name while being written
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.png"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_audio_is_written_whole_in_its_suffix_s_format_or_not_at_all(tmp_path):
    import numpy as np
    import soundfile as sf

    stereo = np.zeros((800, 2), np.float32)
    write_audio_atomic(tmp_path / "a.wav", stereo, 8000, subtype="PCM_24")
    write_audio_atomic(tmp_path / "b.flac", stereo[:, 0], 8000, subtype="PCM_16")
    assert (sf.info(tmp_path / "a.wav").format, sf.info(tmp_path / "a.wav").subtype) == ("WAV", "PCM_24")
    assert (sf.info(tmp_path / "b.flac").format, sf.info(tmp_path / "b.flac").channels) == ("FLAC", 1)
    with pytest.raises(Exception, match="subtype"):  # the writer fails midway: the old file stays, nothing else
        write_audio_atomic(tmp_path / "a.wav", stereo, 8000, subtype="NO_SUCH_SUBTYPE")
    assert sf.info(tmp_path / "a.wav").subtype == "PCM_24"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "b.flac"]


def test_a_staged_folder_takes_the_old_ones_place_only_when_it_is_complete(tmp_path):
    model = tmp_path / "default"
    (model / "base").mkdir(parents=True)
    (model / "base" / "weights").write_bytes(b"old")
    (tmp_path / ".default.tmp").mkdir()  # left by an install that was killed
    with staged_dir(model) as staged:
        assert staged.is_dir() and not any(staged.iterdir())  # fresh: the leftover is gone
        (staged / "base").mkdir()
        (staged / "base" / "weights").write_bytes(b"new")
        assert (model / "base" / "weights").read_bytes() == b"old"  # the old model serves until the new is whole
    assert (model / "base" / "weights").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default"]


def test_a_staged_folder_that_fails_keeps_the_old_one_and_leaves_nothing_behind(tmp_path):
    model = tmp_path / "default"
    model.mkdir()
    (model / "card.json").write_text("{}")
    with pytest.raises(RuntimeError, match="disk full"), staged_dir(model) as staged:
        (staged / "card.json").write_text('{"half"')
        raise RuntimeError("disk full")
    assert (model / "card.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default"]


@pytest.mark.parametrize("staged_left", [True, False])
def test_a_run_killed_between_the_staged_folders_two_renames_loses_neither_model(tmp_path, staged_left):
    """Killed after the old folder moved aside and before the new one took its name: the next staged folder, even one
    that fails, starts from the new model (both were whole), not from nothing."""
    model = tmp_path / "default"
    (tmp_path / ".default.old").mkdir()
    (tmp_path / ".default.old" / "card.json").write_text("old")
    if staged_left:
        (tmp_path / ".default.tmp").mkdir()
        (tmp_path / ".default.tmp" / "card.json").write_text("new")
    with pytest.raises(RuntimeError, match="disk full"), staged_dir(model):
        raise RuntimeError("disk full")
    if staged_left:
        assert (model / "card.json").read_text() == "new"
    else:  # an .old alone is what a kill during its removal left (half removed): never put back as the model
        assert not model.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["default"] if staged_left else [])


def test_an_existing_file_keeps_its_mode_and_a_new_one_gets_the_umask_default(tmp_path):
    kept = tmp_path / "kept.json"
    kept.write_text("{}")
    os.chmod(kept, 0o640)
    write_bytes_atomic(kept, b"[]")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    umask = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "new.json", b"[]")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o644  # not mkstemp's 0600


def test_json_is_json_safe_non_finite_floats_become_null(tmp_path):
    class Scalar:  # what a numpy scalar looks like to jsonable
        def tolist(self):
            return 1.5

    data = {"nan": math.nan, "inf": [math.inf, 2.0], "scalar": Scalar(), "path": tmp_path}
    assert jsonable(data) == {"nan": None, "inf": [None, 2.0], "scalar": 1.5, "path": str(tmp_path)}
    write_json_atomic(tmp_path / "r.json", {"b": 1, "a": "é"}, sort_keys=False)
    text = (tmp_path / "r.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"b": 1, "a": "é"} and text.index('"b"') < text.index('"a"') and "é" in text


@pytest.mark.skipif(os.name == "nt", reason="no process check on Windows: every temporary is kept there")
def test_a_write_sweeps_the_temporaries_of_killed_writers_and_nothing_else(tmp_path):
    dead = tmp_path / f".step_00000100.pt.{dead_pid()}.0badc0de.tmp"  # a save killed at an earlier step
    live = tmp_path / f".step_00000100.pt.{os.getpid()}.12345678.tmp"  # a writer still running
    odd = tmp_path / ".notes.tmp"  # not one of ours
    for path in (dead, live, odd):
        path.write_bytes(b"half")
    write_bytes_atomic(tmp_path / "step_00000200.pt", b"new")
    assert not dead.exists() and live.exists() and odd.exists()
    assert (tmp_path / "step_00000200.pt").read_bytes() == b"new"
    assert sweep_temps(tmp_path) == []
    dead.write_bytes(b"half")
    with atomic_path(tmp_path / "clip.wav", sweep=False) as tmp:  # a bulk writer into a folder it emptied
        tmp.write_bytes(b"clip")
    assert dead.exists() and (tmp_path / "clip.wav").read_bytes() == b"clip"


def test_read_json_object_names_what_is_wrong_with_the_file(tmp_path):
    good = tmp_path / "card.json"
    good.write_text('{"name": "x"}')
    assert read_json_object(good, "unused") == {"name": "x"}
    with pytest.raises(CheckpointError, match="^the model folder has no card$"):
        read_json_object(tmp_path / "nope.json", "the model folder has no card", CheckpointError)
    (tmp_path / "bad.json").write_text("{ truncated")
    with pytest.raises(ImusicError, match=r"bad\.json is not readable JSON"):
        read_json_object(tmp_path / "bad.json", "unused")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ImusicError, match="must hold a JSON object, not a list"):
        read_json_object(tmp_path / "list.json", "unused")
    with pytest.raises(ImusicError, match="is not readable JSON"):  # a folder where a file should be
        read_json_object(tmp_path, "unused")


def test_audio_files_leave_out_hidden_files_and_folders_and_other_kinds(tmp_path):
    for name in ["b.wav", "a.FLAC", "notes.txt", ".a.wav.1234.partial.wav", "._b.wav", "song/x.mp3", ".git/y.wav"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in audio_files(tmp_path)] == ["a.FLAC", "b.wav", "song/x.mp3"]
    assert [p.name for p in audio_files(tmp_path, recursive=False)] == ["a.FLAC", "b.wav"]
    assert audio_files(tmp_path / "missing") == []


def test_shortened_result_names_of_sources_that_differ_only_at_the_end_stay_apart():
    from engine.files import MAX_RESULT_NAME_BYTES, result_file_name

    one, two = (result_file_name("Session " + "x" * 190 + f" take {n}", "extract drums") for n in (1, 2))
    assert one != two and one.endswith(".extract_drums.wav")
    assert max(len(one.encode()), len(two.encode())) <= MAX_RESULT_NAME_BYTES
    assert result_file_name("song", "extract drums") == "song.extract_drums.wav"  # short names stay as they are


def test_a_result_named_as_a_file_is_wav_whatever_suffix_it_was_given():
    from engine.errors import ConfigError
    from engine.files import MAX_RESULT_NAME_BYTES, result_file_path

    assert result_file_path("out/drums.wav").name == "drums.wav"
    assert result_file_path("out/drums.Wav").name == "drums.Wav"
    assert result_file_path("out/drums").name == "drums.wav"
    assert result_file_path("out/drums.take2").name == "drums.take2.wav"  # not drums.wav: no name is lost
    with pytest.raises(ConfigError, match="name the output drums.wav"):
        result_file_path("out/drums.aiff")
    with pytest.raises(ConfigError, match="bytes long"):
        result_file_path("x" * MAX_RESULT_NAME_BYTES)  # fits alone, not with .wav added


def test_a_files_audio_format_is_read_from_its_suffix_in_the_one_table():
    from engine.files import FORMAT_SUFFIXES, audio_format

    assert [audio_format(f"take.{name}") for name in FORMAT_SUFFIXES] == list(FORMAT_SUFFIXES)
    assert (audio_format("/a/Mix.WAVE"), audio_format("b.Aif"), audio_format("c.opus"), audio_format("wav")) == (
        "wav", "aiff", None, None
    )  # fmt: skip


@pytest.mark.skipif(os.name == "nt", reason="Windows opens no folder to fsync; its renames are atomic as they stand")
def test_an_atomic_write_makes_its_rename_durable_by_syncing_the_folder(tmp_path, monkeypatch):
    """A power cut right after the rename must not bring the old file back: the folder holding it is synced too."""
    synced, real_fsync = [], os.fsync

    def recording(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    write_bytes_atomic(tmp_path / "a.json", b"{}")
    assert synced == [False, True]  # the file's data, then the folder's entry


@pytest.mark.skipif(os.name == "nt", reason="no advisory locks on Windows")
def test_a_lock_taken_on_a_lock_file_its_holder_removed_moves_to_the_file_there_now(tmp_path, monkeypatch):
    """A failed batch removes its folder's lock file as it lets go; a second batch that opened the old file in that
    instant must not end up holding a lock on a file no longer there (a third batch would then lock a new one)."""
    import builtins

    import engine.files as files
    from engine.errors import ConfigError

    lock_path = tmp_path / ".lock"
    first = files.lock_folder(lock_path, "busy")
    opened = []

    def open_then_first_lets_go(path, mode):
        handle = builtins.open(path, mode)  # noqa: SIM115 (lock_folder's own open, handed back)
        if not opened:  # the second opened the first's file; then the first removes it and lets go
            files.unlock_and_remove(first)
        opened.append(handle)
        return handle

    monkeypatch.setattr(files, "open", open_then_first_lets_go, raising=False)
    second = files.lock_folder(lock_path, "busy")
    monkeypatch.undo()
    assert len(opened) == 2 and os.path.samestat(os.fstat(second.fileno()), os.stat(lock_path))
    with pytest.raises(ConfigError, match="busy"):
        files.lock_folder(lock_path, "busy")  # a third finds the lock held where it looks
    files.unlock_and_remove(second)
    assert not lock_path.exists()
    files.lock_folder(lock_path, "busy").close()


def test_a_lock_file_that_cannot_be_removed_while_open_is_closed_then_removed(tmp_path, monkeypatch):
    """Windows refuses to remove an open file: the lock file stayed, and the failed batch's folder with it."""
    import engine.files as files

    handle = files.lock_folder(tmp_path / ".lock", "busy")
    real_unlink = os.unlink

    def windows_unlink(path, *args, **kwargs):
        if not handle.closed:
            raise PermissionError(32, "The process cannot access the file because it is being used")
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(files.os, "unlink", windows_unlink)
    files.unlock_and_remove(handle)
    assert handle.closed and not (tmp_path / ".lock").exists()


def test_a_results_give_way_names_are_the_ones_its_sweep_knows(tmp_path):
    from engine.files import give_way_name

    first = tmp_path / "song.extract-drums.wav"
    assert [give_way_name(first, n).name for n in (2, 10)] == ["song.extract-drums-2.wav", "song.extract-drums-10.wav"]
    with pytest.raises(ValueError):
        give_way_name(first, 1)
    leftovers = {n: tmp_path / f".{first.stem}{n}.{dead_pid()}.0badc0de.partial.wav" for n in ("", "-2", "-10")}
    others = [tmp_path / f".{first.stem}{n}.{dead_pid()}.0badc0de.partial.wav" for n in ("-1", "-0", "-02", "-x")]
    for path in [*leftovers.values(), *others]:
        path.write_bytes(b"half")
    removed = sweep_temps(tmp_path, name=first.stem, suffix=".partial.wav", numbered=True)
    assert sorted(removed) == sorted(leftovers.values()) and all(path.exists() for path in others)
