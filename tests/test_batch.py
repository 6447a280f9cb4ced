"""`imusic batch`: sessions and .rpp projects in, one result per (input, edit) out, resumable, with clear refusals."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_bridge_support import dead_pid, imported_by, odd_byte_copy, write_wav

from bridge import batch
from bridge.batch import check_edits, check_output_folder, claim_output_folder, plan_pairs, run_batch
from bridge.batch_backends import InProcessBackend
from bridge.cli import main
from bridge.manifest import MANIFEST_FORMAT, Manifest
from bridge.protocol import EditOptions
from bridge.sources import collect_sources, folder_sources, read_rpp
from engine.errors import ConfigError, DataError, InstructionError

EDITS = ["extract drums", "no bass"]


@pytest.fixture
def session(tmp_path) -> Path:
    """A small session: stereo wav at 22.05 kHz, a mono flac in a subfolder at 16 kHz, a text file to ignore."""
    root = tmp_path / "session"
    write_wav(root / "mix.wav", 1.0, 22050, 2, seed=1, subtype="PCM_16")
    write_wav(root / "stems" / "bass.flac", 0.5, 16000, 1, seed=2, subtype="PCM_16")
    (root / "notes.txt").write_text("not audio")
    return root


def batch_args(session: Path, out: Path, model: Path, *extra: str) -> list[str]:
    edits = [arg for edit in EDITS for arg in ("--edit", edit)]
    return [
        "batch",
        str(session),
        *edits,
        "-o",
        str(out),
        "--model",
        str(model),
        "--device",
        "cpu",
        "--seed",
        "3",
        *extra,
    ]


def run_in_process(session: Path, out: Path, editor, *, retry_failed: bool = False, seed: int = 3) -> batch.Summary:
    labels = check_edits(EDITS, editor.parse)
    pairs = plan_pairs(collect_sources(session), labels, out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"model": editor.info["model"], "seed": seed, "takes": 1, "raw": False}
    backend = InProcessBackend(editor, EditOptions(seed=seed))
    return run_batch(pairs, backend, Manifest(out / "manifest.json"), out, settings, retry_failed=retry_failed)


# --- finding what to render -----------------------------------------------------------------------------------


def test_finds_audio_recursively_and_ignores_other_and_hidden_files(session):
    (session / ".cache").mkdir()
    write_wav(session / ".cache" / "hidden.wav", 0.1, 8000, 1, subtype="PCM_16")
    rels = [s.rel for s in folder_sources(session)]
    assert rels == ["mix", "stems/bass"]


def test_finds_every_format_pedalboard_reads_whatever_the_case_of_the_extension(tmp_path):
    for name in ("a.wav", "b.aiff", "c.aif", "d.flac", "e.mp3", "f.ogg", "g.WAV", "h.Flac", "i.mid", "j.rpp"):
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    assert [s.path.name for s in folder_sources(tmp_path / "in")] == [
        "a.wav",
        "b.aiff",
        "c.aif",
        "d.flac",
        "e.mp3",
        "f.ogg",
        "g.WAV",
        "h.Flac",
    ]


def test_files_with_the_same_name_but_different_formats_get_separate_outputs(tmp_path):
    write_wav(tmp_path / "song.wav", 0.1, 8000, 1, subtype="PCM_16")
    write_wav(tmp_path / "song.flac", 0.1, 8000, 1, subtype="PCM_16")
    assert sorted(s.rel for s in folder_sources(tmp_path)) == ["song.flac", "song.wav"]
    write_wav(tmp_path / "song.wav.wav", 0.1, 8000, 1, subtype="PCM_16")  # without its extension: "song.wav" too
    write_wav(tmp_path / "take.wav", 0.1, 8000, 1, subtype="PCM_16")
    rels = sorted(s.rel for s in folder_sources(tmp_path))
    assert rels == ["song.flac", "song.wav", "song.wav.wav", "take"]
    write_wav(tmp_path / "Take.flac", 0.1, 8000, 1, subtype="PCM_16")  # one file with take.wav's on macOS or Windows
    rels = sorted(s.rel for s in folder_sources(tmp_path))
    assert rels == ["Take.flac", "song.flac", "song.wav", "song.wav.wav", "take.wav"]


def test_an_output_folder_holding_another_session_s_results_is_refused_before_anything_is_replaced(tmp_path, capsys):
    """Pairs are keyed by their path in the session: songB/vocals.wav's result replaced songA/vocals.wav's."""
    from bridge.batch import check_output_folder
    from bridge.manifest import MANIFEST_NAME

    out = tmp_path / "renders"
    out.mkdir()
    (out / MANIFEST_NAME).write_text(json.dumps({"format": "imusic-batch/1", "pairs": {}, "session": "/songs/A"}))
    (tmp_path / "B").mkdir()
    with pytest.raises(ConfigError, match=r"holds the results of another session \(/songs/A\)"):
        check_output_folder(tmp_path / "B", out)
    # a session inside the output folder would have its results written into it, and edited by the next run
    (out / MANIFEST_NAME).unlink()
    (out / "mix").mkdir()
    with pytest.raises(ConfigError, match="session folder .* is inside the output folder"):
        check_output_folder(out / "mix", out)
    # a damaged manifest is one line, not a traceback
    for damaged in (
        {"format": "imusic-batch/1"},
        {"format": "imusic-batch/1", "pairs": {"a | extract drums": {"status": "done", "output": None}}},
        {"format": "imusic-batch/1", "pairs": {"a | extract drums": {"status": "done", "earlier_output": 3}}},
        {"format": "imusic-batch/1", "pairs": {}, "session": 5},
    ):
        (out / MANIFEST_NAME).write_text(json.dumps(damaged))
        with pytest.raises(DataError, match="is damaged"):
            check_output_folder(tmp_path / "B", out)


def test_names_that_differ_in_case_only_get_outputs_of_their_own_and_do_not_hang_the_batch(tmp_path):
    """Kick.wav and kick.wav (a session copied from Linux) still collide whole on macOS and Windows: the name search
    went on for ever. Each gets a mark of its own exact name, the same in every run."""
    for rel in ("Kick.wav", "kick.wav", "Drums/snare.wav", "drums/snare.wav", "hat.wav"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        write_wav(tmp_path / rel, 0.1, 8000, 1, subtype="PCM_16")
    rels = sorted(s.rel for s in folder_sources(tmp_path))
    assert len({rel.casefold() for rel in rels}) == 5 and "hat" in rels
    assert [r.split("-")[0] for r in rels if r != "hat"] == [
        "Drums/snare.wav",
        "Kick.wav",
        "drums/snare.wav",
        "kick.wav",
    ]
    assert rels == sorted(s.rel for s in folder_sources(tmp_path))


def test_a_linked_folder_is_not_followed_and_the_table_says_so(session, tmp_path):
    library = tmp_path / "library"
    write_wav(library / "loop.wav", 0.2, 16000, 1, subtype="PCM_16")
    (session / "samples").symlink_to(library, target_is_directory=True)
    sources = collect_sources(session)
    assert [s.rel for s in sources if s.problem is None] == ["mix", "stems/bass"]
    (linked,) = [s for s in sources if s.problem]
    assert linked.rel == "samples/" and "is a link to a folder, which is not followed" in linked.problem


def test_a_folder_without_audio_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="no audio files .*found"):
        collect_sources(tmp_path)


def test_outputs_mirror_the_session_tree(session, tmp_path):
    out = tmp_path / "out"
    pairs = plan_pairs(collect_sources(session), [("extract drums", "extract drums")], out)
    assert [p.output.relative_to(out).as_posix() for p in pairs] == [
        "mix.extract_drums.wav",
        "stems/bass.extract_drums.wav",
    ]


def test_the_manifest_names_outputs_with_forward_slashes_on_windows_too(monkeypatch):
    # A result named with backslashes (Windows' os.path.relpath) matched none of the run's forward-slash claims.
    import ntpath
    import types

    from bridge import manifest

    monkeypatch.setattr(manifest, "os", types.SimpleNamespace(path=ntpath, sep="\\"))
    assert manifest.out_name(Path(r"C:\out\stems\bass.x.wav"), Path(r"C:\out")) == "stems/bass.x.wav"


# --- .rpp projects --------------------------------------------------------------------------------------------

RPP = """<REAPER_PROJECT 0.1 "7.0/linux-x86_64" 1700000000
  SAMPLERATE 44100 0 0
  <TRACK {11111111-0000-0000-0000-000000000001}
    NAME "Drum Bus"
    <ITEM
      POSITION 2.5
      LENGTH 0.5
      NAME "loop.wav"
      SOFFS 0.25
      PLAYRATE 1 1 0 -1 0 0.0025
      <SOURCE WAVE
        FILE "Audio/loop.wav"
      >
    >
    <ITEM
      POSITION 8
      LENGTH 0.4
      NAME "first take"
      SOFFS 0
      PLAYRATE 1 1 0 -1 0 0.0025
      <SOURCE WAVE
        FILE "Audio/loop.wav"
      >
      TAKE SEL
      NAME "second take"
      SOFFS 0.1
      PLAYRATE 1 1 0 -1 0 0.0025
      <SOURCE FLAC
        FILE "C:\\Users\\someone\\Projects\\song\\keys.flac"
      >
    >
  >
  <TRACK {11111111-0000-0000-0000-000000000002}
    NAME "Odd items"
    <ITEM
      POSITION 0
      LENGTH 1
      SOFFS 0
      PLAYRATE 0.5 1 0 -1 0 0.0025
      <SOURCE WAVE
        FILE "Audio/loop.wav"
      >
    >
    <ITEM
      POSITION 0
      LENGTH 1
      <SOURCE MIDI
        HASDATA 1 960 QN
      >
    >
    <ITEM
      POSITION 0
      LENGTH 1
      <SOURCE WAVE
        FILE "Audio/gone.wav"
      >
    >
  >
>
"""


@pytest.fixture
def project(tmp_path) -> Path:
    folder = tmp_path / "song"
    write_wav(folder / "Audio" / "loop.wav", 1.0, 22050, 2, subtype="PCM_16")
    write_wav(folder / "keys.flac", 1.0, 16000, 1, subtype="PCM_16")
    path = folder / "song.rpp"
    path.write_text(RPP)
    return path


def test_rpp_item_is_the_region_its_take_plays(project):
    first = read_rpp(project)[0]
    assert first.path == project.parent / "Audio" / "loop.wav"
    assert (first.start_s, first.end_s) == (0.25, 0.75)
    assert first.meta["position_s"] == 2.5 and first.meta["track"] == "Drum Bus"
    assert first.problem is None
    assert first.rel == "01 Drum Bus/01 loop"


def test_an_unnamed_rpp_track_is_named_as_reaper_shows_it_as_the_actions_name_it(project):
    project.write_text(RPP.replace('NAME "Drum Bus"', 'NAME "  "', 1))  # a blank name: REAPER shows "Track 1"
    first = read_rpp(project)[0]
    assert first.meta["track"] == "Track 1" and first.rel == "01 Track 1/01 loop"


def test_rpp_uses_the_selected_take_and_finds_windows_paths_in_the_project_folder(project):
    second = read_rpp(project)[1]
    assert second.path == project.parent / "keys.flac"
    assert (second.start_s, second.end_s) == pytest.approx((0.1, 0.5))


def test_rpp_items_that_are_not_the_files_own_audio_are_reported_not_edited(project):
    odd = read_rpp(project)[2:]
    assert "rate 0.5" in odd[0].problem
    assert "is MIDI" in odd[1].problem
    assert "offline or missing: " in odd[2].problem and odd[2].problem.endswith("Audio/gone.wav")


def test_an_rpp_item_whose_file_is_there_but_unreadable_says_why_not_offline(project):
    """A source still being written (its header says 0 samples) was reported "offline or missing", though it is
    there."""
    import struct

    loop = project.parent / "Audio" / "loop.wav"
    data = bytearray(loop.read_bytes())
    at = data.find(b"data")
    data[at + 4 : at + 8] = struct.pack("<I", 0)
    loop.write_bytes(bytes(data))
    problem = read_rpp(project)[0].problem
    assert "still being written" in problem and "offline or missing" not in problem
    assert problem.startswith('"loop.wav" at 0:02.500 on Drum Bus: ')


@pytest.mark.parametrize(("field", "value"), [("POSITION 2.5", "POSITION abc"), ("LENGTH 0.5", "LENGTH nan")])
def test_an_rpp_item_with_a_field_that_is_no_number_is_reported_and_the_others_still_render(project, field, value):
    text = project.read_text()
    assert field in text
    project.write_text(text.replace(field, value, 1))
    sources = read_rpp(project)
    assert len(sources) == 5 and sources[0].problem.startswith("item 1 on Drum Bus: its ")
    assert f"is '{value.split()[1]}', not a number REAPER writes" in sources[0].problem
    assert sources[1].problem is None  # the next item is planned as before


WARPED_RPP = """<REAPER_PROJECT 0.1 "7.0/linux-x86_64" 1700000000
  <TRACK
    NAME Takes
    <ITEM
      POSITION 0
      LENGTH 0.5
      SOFFS 0
      PLAYRATE 1 1 0 -1 0 0.0025
      SM 0 0 + 0.25 0.3 + 0.5 0.5
      <SOURCE WAVE
        FILE "Audio/loop.wav"
      >
    >
    <ITEM
      POSITION 1
      LENGTH 0.5
      SOFFS 0
      <SOURCE WAVE
        FILE "Audio/loop.wav"
      >
      <PITCHENV
        ACT 1 -1
        PT 0 0 0
        PT 0.5 2 0
      >
    >
    <ITEM
      POSITION 2
      LENGTH 0.5
      ALLTAKES 1
      SOFFS 0
      <SOURCE WAVE
        FILE "Audio/loop.wav"
      >
      TAKE
      SOFFS 0.1
      <SOURCE WAVE
        FILE "Audio/loop.wav"
      >
    >
    <ITEM
      POSITION 3
      LENGTH 0.5
      ALLTAKES 1
      SOFFS 0
      <SOURCE WAVE
        FILE "Audio/loop.wav"
      >
      <PITCHENV
        ACT 1 -1
      >
    >
  >
>
"""


def test_rpp_items_the_reaper_actions_refuse_are_refused_by_batch_too(project):
    # stretch markers, a pitch envelope with points, all takes playing: the .rpp says what REAPER's API says
    warped = project.with_name("warped.rpp")
    warped.write_text(WARPED_RPP)
    sources = read_rpp(warped)
    assert "has stretch markers" in sources[0].problem
    assert "has a take pitch envelope" in sources[1].problem
    assert "plays all its takes at once" in sources[2].problem
    assert sources[3].problem is None  # one take (ALLTAKES changes nothing) and an envelope without points


def test_rpp_that_is_not_a_project_is_refused(tmp_path):
    path = tmp_path / "broken.rpp"
    path.write_text("this is not a project\n")
    with pytest.raises(DataError, match="broken.rpp"):
        collect_sources(path)


# --- refusals before any work ---------------------------------------------------------------------------------


def _parse_with_vocabulary(text: str):
    from engine.instructions import parse_instruction

    return parse_instruction(text, {"stems": ["Drums", "Bass", "Piano", "Guitar"]})


def test_unknown_edits_are_all_reported_together():
    with pytest.raises(InstructionError) as exc:
        check_edits(["extract drums", "add kazoo", "make it jazzy"], _parse_with_vocabulary)
    assert "'add kazoo'" in str(exc.value) and "'make it jazzy'" in str(exc.value)


def test_duplicate_edits_are_refused_even_when_worded_differently():
    with pytest.raises(ConfigError, match="'drums only' repeats --edit 'extract drums'"):
        check_edits(["extract drums", "drums only"], _parse_with_vocabulary)


def test_output_folder_inside_the_session_is_refused(session):
    with pytest.raises(ConfigError, match="inside the session folder"):
        check_output_folder(session, session / "renders")


@pytest.fixture
def read_only_folder(tmp_path, read_only):
    (tmp_path / "locked").mkdir()
    return read_only(tmp_path / "locked")


def test_read_only_output_folder_is_refused_with_a_clear_message(session, read_only_folder):
    with pytest.raises(ConfigError, match="cannot write to the output folder .*locked"):
        check_output_folder(session, read_only_folder)


def test_two_batches_cannot_write_one_output_folder(tmp_path):
    first = claim_output_folder(tmp_path)
    try:
        with pytest.raises(ConfigError, match="another imusic batch"):
            claim_output_folder(tmp_path)
    finally:
        first.close()


def test_temporary_files_of_a_killed_run_are_swept_up_and_a_live_writers_stay(tmp_path):
    (tmp_path / "sub").mkdir()
    dead = dead_pid()
    leftover = tmp_path / "sub" / f".mix.extract_drums.{dead}.0123abcd.partial.wav"  # audio_write.write_atomic's
    leftover.write_bytes(b"half")
    live = tmp_path / "sub" / f".mix.remove_bass.{os.getpid()}.0123abcd.partial.wav"  # a server writing here now
    live.write_bytes(b"being written")
    manifest_temp = tmp_path / f".manifest.json.{dead}.0badc0de.tmp"  # engine.files.atomic_path's temporary
    manifest_temp.write_bytes(b"{ half")
    claim_output_folder(tmp_path).close()
    assert not leftover.exists() and not manifest_temp.exists()
    assert live.read_bytes() == b"being written"


def test_a_corrupt_manifest_is_not_overwritten_silently(tmp_path):
    (tmp_path / "manifest.json").write_text("{ truncated")
    with pytest.raises(DataError, match="move it away"):
        Manifest(tmp_path / "manifest.json")


def test_workers_must_be_a_positive_number_and_go_with_ray(session, tmp_path, capsys):
    base = ["batch", str(session), "--edit", "extract drums", "-o", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as usage:
        main([*base, "--ray", "local", "--workers", "-1"])
    assert usage.value.code == 2 and "--workers: must be from 1 to 1024, got -1" in capsys.readouterr().err
    assert main([*base, "--workers", "3"]) == 1  # without --ray it would be ignored
    assert "--workers goes with --ray" in capsys.readouterr().err


def test_outcomes_are_journalled_and_the_manifest_is_rewritten_only_now_and_then(tmp_path, monkeypatch):
    """Rewriting the whole manifest after every pair made the bookkeeping grow with the square of the pairs."""
    from bridge import manifest as manifest_module

    monkeypatch.setattr(manifest_module, "JOURNAL_FOLD", 3)
    path = tmp_path / "manifest.json"
    manifest = Manifest(path)
    manifest.claim(["a.wav", "b.wav", "c.wav"])
    written = path.read_bytes()
    manifest.record("a | x", {"status": "done", "output": "a.wav"})
    manifest.record("b | x", {"status": "failed", "error": "bad"}, claimed="b.wav")
    assert path.read_bytes() == written and len(manifest.journal.read_text().splitlines()) == 2
    again = Manifest(path)  # a run killed here: the journal is replayed over the manifest
    assert set(again.pairs) == {"a | x", "b | x"} and list(again.claimed) == ["c.wav"]
    with manifest.journal.open("ab") as journal:
        journal.write(b'{"key": "c | x", "entry": {"sta')  # torn by a kill
    assert set(Manifest(path).pairs) == {"a | x", "b | x"}
    manifest.journal.write_text(manifest.journal.read_text().rsplit("\n", 1)[0] + "\n")
    manifest.record("c | x", {"status": "done", "output": "c.wav"})  # the third: folded into the manifest
    assert not manifest.journal.exists()
    saved = json.loads(path.read_text())
    assert set(saved["pairs"]) == {"a | x", "b | x", "c | x"} and saved["claimed"] == []


# --- rendering with the tiny model ----------------------------------------------------------------------------


def test_every_pair_is_rendered_at_the_sources_rate_channels_and_length(session, tmp_path, tiny_editor):
    out = tmp_path / "out"
    summary = run_in_process(session, out, tiny_editor)
    assert (summary.done, summary.failed) == (4, 0)
    for source_rel, source_file in [("mix", "mix.wav"), ("stems/bass", "stems/bass.flac")]:
        source = sf.info(session / source_file)
        for name in ("extract_drums", "remove_bass"):
            result = sf.info(out / f"{source_rel}.{name}.wav")
            assert (result.samplerate, result.channels, result.frames) == (
                source.samplerate,
                source.channels,
                source.frames,
            )


def test_manifest_records_status_model_levels_and_input_hash(session, tmp_path, tiny_editor):
    out = tmp_path / "out"
    run_in_process(session, out, tiny_editor)
    record = json.loads((out / "manifest.json").read_text())["pairs"]["mix | extract drums"]
    assert record["status"] == "done"
    assert record["model"] == tiny_editor.info["model"]
    assert "result_lufs" in record["levels"]
    assert record["timings"]["total"] > 0
    assert len(record["input_sha256"]) == 64
    assert record["output"] == "mix.extract_drums.wav"


def test_a_rerun_skips_finished_pairs_without_touching_their_files(session, tmp_path, tiny_editor):
    out = tmp_path / "out"
    run_in_process(session, out, tiny_editor)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}
    summary = run_in_process(session, out, tiny_editor)
    assert (summary.done, summary.skipped) == (0, 4)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")} == before


def test_a_changed_input_or_a_damaged_output_is_rendered_again(session, tmp_path, tiny_editor):
    out = tmp_path / "out"
    run_in_process(session, out, tiny_editor)
    # same size, other samples: only the hash tells
    write_wav(session / "mix.wav", 1.0, 22050, 2, seed=99, subtype="PCM_16")
    with open(out / "stems" / "bass.remove_bass.wav", "ab") as f:
        f.write(b"\0" * 16)
    summary = run_in_process(session, out, tiny_editor)
    assert summary.done == 3 and summary.skipped == 1
    assert summary.rows["stems/bass"]["extract drums"] == "done before"
    assert summary.rows["stems/bass"]["remove bass"].startswith("done ")


def test_a_manifest_entry_of_the_wrong_kind_is_damaged_not_a_traceback(tmp_path):
    """A pair's settings saved as "x": AttributeError 'str' object has no attribute 'get' at the rerun."""
    path = tmp_path / "manifest.json"
    entry = {"status": "done", "output": "a.extract_drums.wav", "settings": "x"}
    path.write_text(json.dumps({"format": MANIFEST_FORMAT, "pairs": {"a | extract drums": entry}}))
    with pytest.raises(DataError, match="is damaged .*move it away"):
        Manifest(path)


def test_a_pair_recorded_done_at_a_name_outside_the_output_folder_is_rendered_again(session, tmp_path, tiny_editor):
    """A manifest whose output pointed at ../victim.wav (with that file's size) made the pair "done before" after its
    real result was deleted."""
    out = tmp_path / "out"
    run_in_process(session, out, tiny_editor)
    manifest = json.loads((out / "manifest.json").read_text())
    key = next(k for k, e in manifest["pairs"].items() if e["output"] == "mix.extract_drums.wav")
    result = out / "mix.extract_drums.wav"
    outside = tmp_path / "victim.wav"
    kept = result.read_bytes()
    outside.write_bytes(kept)
    result.unlink()
    manifest["pairs"][key]["output"] = "../victim.wav"
    (out / "manifest.json").write_text(json.dumps(manifest))
    summary = run_in_process(session, out, tiny_editor)
    assert summary.rows["mix"]["extract drums"].startswith("done ") and result.is_file()
    assert outside.read_bytes() == kept  # the file outside is left alone


def test_a_file_whose_name_is_not_utf8_is_refused_by_name_and_the_rest_renders(session, tmp_path, tiny_editor, capsys):
    """Linux names are bytes: one copied from an old Latin-1 drive is listed as the terminal shows it and refused
    (OSC, the audio writer and the manifest take text only); it stopped the whole batch with a traceback before."""
    odd_byte_copy(session / "mix.wav", session)
    out = tmp_path / "out"
    summary = run_in_process(session, out, tiny_editor)
    assert summary.rows["caf\\xe9"] == {label: "refused" for _, label in check_edits(EDITS, tiny_editor.parse)}
    assert "caf\\xe9 holds bytes that are not UTF-8 text" in summary.refused["caf\\xe9"]
    assert summary.done == 4  # the session's own two files, both edits
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))  # saved: text JSON
    assert manifest["pairs"]["caf\\xe9 | extract drums"]["status"] == "unsupported"
    assert main(["batch", str(session), "--edit", "extract drums", "-o", str(tmp_path / "dry"), "--dry-run"]) == 0
    assert "caf\\xe9: refused: its name caf\\xe9 holds bytes" in capsys.readouterr().out


def test_a_file_in_the_output_folder_that_the_batch_did_not_write_is_never_overwritten(session, tmp_path, tiny_editor):
    out = tmp_path / "out"
    theirs = out / "mix.extract_drums.wav"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"MY PRECIOUS MIX")
    summary = run_in_process(session, out, tiny_editor)
    assert theirs.read_bytes() == b"MY PRECIOUS MIX"
    assert summary.rows["mix"]["extract drums"] == "refused" and summary.done == 3
    assert "mix.extract_drums.wav exists and this batch did not write it" in summary.refused["mix (extract drums)"]
    assert summary.exit_code == 1  # a script running the batch must not take it for complete
    again = run_in_process(session, out, tiny_editor)  # still refused on a rerun: the manifest never claimed it
    assert theirs.read_bytes() == b"MY PRECIOUS MIX" and again.rows["mix"]["extract drums"] == "refused"


def test_a_batch_cut_after_a_result_was_written_but_before_it_was_recorded_resumes_it(
    session, tmp_path, tiny_editor, monkeypatch
):
    out = tmp_path / "out"
    real_entry = batch._entry

    def cut_after_the_first_write(pair, out, settings, status, error, outcome=None):
        if status == "done":
            raise KeyboardInterrupt  # Ctrl-C (or kill -9) between the result's rename and the manifest's record
        return real_entry(pair, out, settings, status, error, outcome)

    monkeypatch.setattr(batch, "_entry", cut_after_the_first_write)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(session, out, tiny_editor)
    monkeypatch.setattr(batch, "_entry", real_entry)
    (written,) = [p for p in out.rglob("*.wav")]
    resumed = run_in_process(session, out, tiny_editor)
    assert resumed.refused == {} and resumed.done == 4
    assert written.exists()
    assert json.loads((out / "manifest.json").read_text())["claimed"] == []


def _cut_before_its_first_record(session, out, editor, monkeypatch) -> None:
    """A batch cut (Ctrl-C, kill -9) after its names were claimed, before any pair was recorded."""

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "_entry", killed)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(session, out, editor)
    monkeypatch.undo()


@pytest.mark.parametrize("same_format", [False, True], ids=["other format", "same rate and channels, other length"])
def test_a_file_the_user_puts_at_a_name_a_cut_batch_had_claimed_is_never_overwritten(
    session, tmp_path, tiny_editor, monkeypatch, same_format
):
    """A cut before the first result: every name still to render stays claimed; the producer then renders one
    of those edits by hand under the same name. A rerun leaves that file alone (it has another shape than the pair's
    result) and renders the rest."""
    out = tmp_path / "out"
    _cut_before_its_first_record(session, out, tiny_editor, monkeypatch)
    for written in out.rglob("*.wav"):
        written.unlink()  # as if the cut came before the result's rename
    assert "mix.extract_drums.wav" in json.loads((out / "manifest.json").read_text())["claimed"]
    source = sf.info(session / "mix.wav")
    rate, channels = (source.samplerate, source.channels) if same_format else (8000, 1)
    theirs = write_wav(out / "mix.extract_drums.wav", seconds=0.37, sample_rate=rate, channels=channels)
    before = theirs.read_bytes()
    resumed = run_in_process(session, out, tiny_editor)
    assert theirs.read_bytes() == before and resumed.rows["mix"]["extract drums"] == "refused"
    assert resumed.done == 3 and "this batch did not write it" in resumed.refused["mix (extract drums)"]


def test_a_rerun_cut_while_it_rendered_a_changed_source_again_replaces_its_own_result_next_time(
    session, tmp_path, tiny_editor, monkeypatch
):
    """The source was bounced again at another length; the rerun that renders it again is cut before the first
    result: the name stays claimed, the file there (the batch's own, of the old length) had not the new result's shape,
    and every later run refused it as the user's."""
    out = tmp_path / "out"
    run_in_process(session, out, tiny_editor)
    write_wav(session / "mix.wav", 1.5, 22050, 2, seed=7, subtype="PCM_16")  # re-bounced, longer
    _cut_before_its_first_record(session, out, tiny_editor, monkeypatch)
    assert "mix.extract_drums.wav" in json.loads((out / "manifest.json").read_text())["claimed"]
    resumed = run_in_process(session, out, tiny_editor)
    assert not resumed.refused and resumed.rows["mix"]["extract drums"].startswith("done ")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_in_the_session_fails_its_pairs_and_does_not_hang_the_batch(session, tmp_path, tiny_editor):
    import threading

    os.mkfifo(session / "stems" / "pipe.wav")  # opening it for reading would wait for a writer forever
    out, finished = tmp_path / "out", []
    runner = threading.Thread(target=lambda: finished.append(run_in_process(session, out, tiny_editor)), daemon=True)
    runner.start()
    runner.join(timeout=120)
    assert finished, "the batch hangs on the named pipe"
    (summary,) = finished
    assert summary.done == 4 and summary.rows["stems/pipe"] == {"extract drums": "FAILED", "remove bass": "FAILED"}
    assert any("FIFO" in error for error in summary.errors)


def test_a_corrupt_file_is_reported_and_the_others_are_done(session, tmp_path, tiny_editor):
    (session / "stems" / "broken.wav").write_bytes(b"RIFF" + os.urandom(200))
    out = tmp_path / "out"
    summary = run_in_process(session, out, tiny_editor)
    assert (summary.done, summary.failed) == (4, 2)
    assert summary.rows["stems/broken"] == {"extract drums": "FAILED", "remove bass": "FAILED"}
    record = json.loads((out / "manifest.json").read_text())["pairs"]["stems/broken | extract drums"]
    assert record["status"] == "failed" and "broken.wav" in record["error"]
    assert not list(out.rglob("broken*.wav"))


def test_failures_are_retried_only_when_asked(session, tmp_path, tiny_editor):
    broken = session / "broken.wav"
    broken.write_bytes(b"RIFF" + os.urandom(200))
    out = tmp_path / "out"
    run_in_process(session, out, tiny_editor)
    again = run_in_process(session, out, tiny_editor)
    assert (again.done, again.not_retried) == (0, 2)
    write_wav(broken, 0.3, 8000, 1, subtype="PCM_16")  # the user repaired the file
    retried = run_in_process(session, out, tiny_editor, retry_failed=True)
    assert (retried.done, retried.failed) == (2, 0)


def test_a_failure_under_other_settings_is_tried_again_under_the_new_ones(session, tmp_path, tiny_editor):
    """--retry-failed is for the same settings; a rerun with other ones (another seed here) is a new render of every
    pair, the ones that failed included."""
    broken = session / "broken.wav"
    broken.write_bytes(b"RIFF" + os.urandom(200))
    out = tmp_path / "out"
    run_in_process(session, out, tiny_editor)
    write_wav(broken, 0.3, 8000, 1, subtype="PCM_16")
    again = run_in_process(session, out, tiny_editor, seed=4)
    assert (again.not_retried, again.failed) == (0, 0) and again.done >= 2


def test_a_pair_that_failed_after_it_was_done_is_rendered_again_over_its_own_earlier_result(
    session, tmp_path, tiny_editor
):
    """Done, then its source broke (the pair failed, the earlier result stayed), then repaired: --retry-failed must
    replace the batch's own earlier result, not refuse it as the user's."""
    out = tmp_path / "out"
    run_in_process(session, out, tiny_editor)
    mix = (session / "mix.wav").read_bytes()
    (session / "mix.wav").write_bytes(b"RIFF" + os.urandom(200))
    broken = run_in_process(session, out, tiny_editor)
    assert broken.failed == 2 and (out / "mix.extract_drums.wav").is_file()
    (session / "mix.wav").write_bytes(mix)
    retried = run_in_process(session, out, tiny_editor, retry_failed=True)
    assert (retried.done, retried.failed, retried.unsupported) == (2, 0, 0), retried.refused
    assert json.loads((out / "manifest.json").read_text())["pairs"]["mix | extract drums"]["status"] == "done"


def test_a_source_changed_while_it_was_rendered_is_not_recorded_as_done_and_is_rendered_again(
    session, tmp_path, tiny_editor, monkeypatch
):
    from bridge import batch_backends

    out = tmp_path / "out"
    real = batch_backends._edit_pair

    def overwritten_meanwhile(editor, pair, options, progress, replace):
        outcome = real(editor, pair, options, progress, replace)
        if pair.source.rel == "mix":  # the producer bounces a new take over it while the batch renders
            write_wav(session / "mix.wav", 1.5, 22050, 2, seed=7, subtype="PCM_16")
        return outcome

    monkeypatch.setattr(batch_backends, "_edit_pair", overwritten_meanwhile)
    summary = run_in_process(session, out, tiny_editor)
    assert summary.failed == 2 and all("mix changed while it was rendered" in e for e in summary.errors)
    assert json.loads((out / "manifest.json").read_text())["pairs"]["mix | extract drums"]["status"] == "changed"
    monkeypatch.setattr(batch_backends, "_edit_pair", real)
    again = run_in_process(session, out, tiny_editor)
    assert again.failed == 0 and again.rows["mix"]["extract drums"].startswith("done ")


def test_a_disk_that_fills_up_mid_batch_is_one_line_and_a_rerun_resumes(
    session, tmp_path, tiny_model_dir, capsys, monkeypatch
):
    import errno

    from bridge import manifest as manifest_module

    out = tmp_path / "out"
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(out), "--model", str(tiny_model_dir)]
    real_append, appends = manifest_module.Manifest._append, []

    def filling_up(self, change):  # the journal of outcomes: what the batch writes after each pair
        appends.append(1)
        if len(appends) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.journal))
        real_append(self, change)

    monkeypatch.setattr(manifest_module.Manifest, "_append", filling_up)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"imusic batch: error: No space left on device: {out / 'manifest.json.journal'}\n"
    monkeypatch.setattr(manifest_module.Manifest, "_append", real_append)
    assert main(argv) == 0 and "refused" not in capsys.readouterr().out


def test_a_disk_too_full_for_a_result_stops_the_batch_and_a_rerun_renders_what_is_left(
    session, tmp_path, tiny_model_dir, capsys, monkeypatch
):
    """Each later pair was edited and thrown away, recorded as failed, and "not retried" by the rerun."""
    import errno

    from bridge import audio_write

    out = tmp_path / "out"
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(out), "--model", str(tiny_model_dir)]
    real_write, writes = audio_write.write_atomic, []

    def filling_up(path, *args, **kwargs):
        writes.append(path)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(audio_write, "write_atomic", filling_up)
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "No space left on device; make room and run the batch again" in captured.err
    assert len(writes) == 2  # it stopped at the first result it could not write
    monkeypatch.setattr(audio_write, "write_atomic", real_write)
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert "1 already done" in summary and "failed earlier" not in summary


def test_a_file_put_at_a_results_name_while_the_batch_runs_is_never_overwritten(
    session, tmp_path, tiny_editor, monkeypatch
):
    """The name was free when the batch began; the producer saved a file there during the run."""
    from bridge import batch_backends

    out = tmp_path / "out"
    real = batch_backends._edit_pair
    theirs = out / "stems" / "bass.remove_bass.wav"

    def meanwhile(editor, pair, options, progress, replace):
        if pair.output == theirs:
            theirs.write_bytes(b"MY OWN BOUNCE")
        return real(editor, pair, options, progress, replace)

    monkeypatch.setattr(batch_backends, "_edit_pair", meanwhile)
    summary = run_in_process(session, out, tiny_editor)
    assert theirs.read_bytes() == b"MY OWN BOUNCE"
    assert summary.done == 3 and summary.failed == 1
    assert any("a file appeared at" in error and "left alone" in error for error in summary.errors)


def test_summary_table_has_a_row_per_input_and_a_column_per_edit(session, tmp_path, tiny_editor):
    out = tmp_path / "out"
    summary = run_in_process(session, out, tiny_editor)
    table = batch.format_summary(summary, ["extract drums", "remove bass"], out).splitlines()
    assert table[0].split() == ["input", "extract", "drums", "remove", "bass"]
    assert table[2].startswith("mix ") and table[3].startswith("stems/bass ")
    assert "4 rendered, 0 already done, 0 failed" in table[4]


def test_progress_shows_an_overall_bar_with_time_left(session, tmp_path, tiny_editor):
    import io

    out = tmp_path / "out"
    stream = io.StringIO()
    labels = check_edits(EDITS, tiny_editor.parse)
    pairs = plan_pairs(collect_sources(session), labels, out)
    out.mkdir()
    backend = InProcessBackend(tiny_editor, EditOptions(seed=3))
    run_batch(pairs, backend, Manifest(out / "manifest.json"), out, {}, progress_stream=stream, show_progress=True)
    text = stream.getvalue()
    assert "batch (4 edits)" in text and "s audio" in text
    assert "<" in text  # tqdm's [elapsed<remaining]
    assert "mix | extract drums" in text  # the per-file bar


def test_rpp_items_are_rendered_at_their_region_and_unsupported_ones_reported(project, tmp_path, tiny_editor):
    out = tmp_path / "out"
    labels = check_edits(["extract drums"], tiny_editor.parse)
    pairs = plan_pairs(collect_sources(project), labels, out)
    out.mkdir()
    backend = InProcessBackend(tiny_editor, EditOptions(seed=3))
    summary = run_batch(pairs, backend, Manifest(out / "manifest.json"), out, {})
    assert (summary.done, summary.unsupported, summary.failed) == (2, 3, 0)
    first = sf.info(out / "01 Drum Bus" / "01 loop.extract_drums.wav")
    assert (first.samplerate, first.channels, first.frames) == (22050, 2, round(0.75 * 22050) - round(0.25 * 22050))
    manifest = json.loads((out / "manifest.json").read_text())["pairs"]
    assert manifest["02 Odd items/02 untitled | extract drums"]["status"] == "unsupported"
    # the producer trims an item in the project: same key, other region; its old result is not "done before"
    project.write_text(project.read_text().replace("SOFFS 0.25", "SOFFS 0.3", 1))
    again = plan_pairs(collect_sources(project), labels, out)
    assert [p.source.start_s for p in again][:1] == [0.3]
    summary = run_batch(again, backend, Manifest(out / "manifest.json"), out, {})
    assert (summary.done, summary.skipped) == (1, 1)  # the trimmed item rendered again, the other kept


# --- the command line -------------------------------------------------------------------------------------------


def test_cli_renders_a_session_and_exits_0(session, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    assert main(batch_args(session, out, tiny_model_dir)) == 0
    printed = capsys.readouterr().out
    assert "4 rendered" in printed
    assert len(list(out.rglob("*.wav"))) == 4


def test_cli_exits_1_when_some_pairs_failed(session, tmp_path, tiny_model_dir, capsys):
    (session / "broken.wav").write_bytes(b"not audio at all")
    assert main(batch_args(session, tmp_path / "out", tiny_model_dir)) == 1
    assert "2 failed" in capsys.readouterr().out


def test_a_dry_run_says_which_files_will_fail_from_their_headers(session, tmp_path, capsys):
    """A text file named .wav was listed "to render" by a dry run, and failed in the run."""
    (session / "broken.wav").write_bytes(b"not audio at all")
    out = tmp_path / "out"
    assert main(["batch", str(session), "--edit", "extract drums", "-o", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("broken "))
    assert "will fail" in row and "to render" not in row
    assert "1 will fail (not readable audio)" in printed and "  broken: will fail: cannot read" in printed
    assert "dry run: 2 to render" in printed and not out.exists()


def test_cli_unknown_edit_is_one_line_and_no_work(session, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    argv = batch_args(session, out, tiny_model_dir) + ["--edit", "add kazoo"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'add kazoo'" in err
    assert not list(out.rglob("*.wav")) and not (out / "manifest.json").exists()


def test_cli_refuses_an_output_folder_inside_the_session_before_loading_a_model(session, capsys):
    argv = batch_args(session, session / "out", Path("/nonexistent/model"))
    assert main(argv) == 1
    assert "inside the session folder" in capsys.readouterr().err


def test_cli_refuses_a_read_only_output_folder_before_loading_a_model(session, read_only_folder, capsys):
    assert main(batch_args(session, read_only_folder, Path("/nonexistent/model"))) == 1
    assert "cannot write to the output folder" in capsys.readouterr().err


def test_cli_refuses_an_empty_session_before_loading_a_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(batch_args(tmp_path / "empty", tmp_path / "out", Path("/nonexistent/model"))) == 1
    assert "no audio files" in capsys.readouterr().err


def test_cli_without_edits_is_refused(session, tmp_path, capsys):
    assert main(["batch", str(session), "-o", str(tmp_path / "out")]) == 1
    assert "--edit" in capsys.readouterr().err


def test_cli_dry_run_on_a_project_whose_media_are_missing_says_why_without_a_model(
    project, tmp_path, capsys, no_model_load
):
    (project.parent / "Audio" / "loop.wav").unlink()
    (project.parent / "keys.flac").unlink()
    out = tmp_path / "out"
    assert main(["batch", str(project), "--edit", "extract drums", "-o", str(out), "--dry-run"]) == 1
    printed = capsys.readouterr().out
    assert "dry run: 0 to render, 0 already done, 5 refused" in printed
    assert "01 Drum Bus/01 loop: refused: " in printed and "offline or missing" in printed
    assert "02 Odd items/01 loop: refused: " in printed and "rate 0.5" in printed
    assert not out.exists()


def test_a_track_name_of_many_wide_characters_still_makes_a_folder_name_that_fits(project, tmp_path):
    """70 drum emoji made a 280-byte folder name: the file system refused it and the whole batch stopped."""
    from bridge.sources import safe_name

    assert len(safe_name("\U0001f941" * 70).encode()) <= 250 and safe_name("x" * 100) == "x" * 80
    assert safe_name("\U0001f941" * 62) == "\U0001f941" * 62  # 248 bytes: a name that worked is kept
    project.write_text(RPP.replace('NAME "Drum Bus"', 'NAME "' + "\U0001f941" * 70 + '"', 1))
    out = tmp_path / "out"
    for pair in plan_pairs(read_rpp(project), [("extract drums", "extract drums")], out):
        pair.output.parent.mkdir(parents=True, exist_ok=True)  # the names the batch will write, made here
        assert not pair.output.exists()


def test_project_media_that_lie_in_the_output_folder_are_refused(project, tmp_path, capsys, no_model_load):
    """A result imported into the project (the usual next step) was written over by a rerun with other settings, and
    the batch then blamed the source for changing while it rendered."""
    import shutil

    out = tmp_path / "out"
    imported = out / "01 Drum Bus" / "01 loop.extract_drums.wav"
    imported.parent.mkdir(parents=True)
    shutil.copy(project.parent / "Audio" / "loop.wav", imported)
    # the result of the first item, on a track of its own: the file its pair writes
    track = "\n".join(
        ["  <TRACK", '    NAME "Drums extracted"', "    <ITEM", "      POSITION 2.5", "      LENGTH 0.5",
         "      <SOURCE WAVE", f'        FILE "{imported}"', "      >", "    >", "  >", ""]
    )  # fmt: skip
    project.write_text(RPP.removesuffix(">\n") + track + ">\n")
    assert main(["batch", str(project), "--edit", "extract drums", "-o", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert f"refused: {imported} is a result of this batch" in printed
    assert re.search(r"01 Drum Bus/02 keys +to render", printed)  # the project's own items render
    # an output folder holding the project's folder: its own recordings are no results, and render
    assert main(["batch", str(project), "--edit", "extract drums", "-o", str(project.parent), "--dry-run"]) == 0
    assert "is a result of this batch" not in capsys.readouterr().out


def test_cli_dry_run_lists_what_would_be_rendered_and_writes_nothing(session, tmp_path, capsys, no_model_load):
    out = tmp_path / "out"
    assert main(["batch", str(session), *[a for e in EDITS for a in ("--edit", e)], "-o", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "dry run: 4 to render, 0 already done, 0 refused" in printed
    assert printed.count("to render") == 5  # four cells and the headline
    assert not out.exists()


@pytest.mark.parametrize("where", ["a file", "inside the session"])
def test_a_dry_run_refuses_an_output_folder_the_real_run_would_refuse(session, tmp_path, capsys, where, no_model_load):
    out = tmp_path / "afile" if where == "a file" else session / "results"
    if where == "a file":
        out.write_bytes(b"not a folder")
    assert main(["batch", str(session), "--edit", "extract drums", "-o", str(out), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert ("is a file, not a folder" if where == "a file" else "is inside the session folder") in err
    assert where == "a file" or not out.exists()


def test_cli_with_nothing_renderable_exits_1_with_the_reasons_and_loads_no_model(
    project, tmp_path, capsys, no_model_load
):
    (project.parent / "Audio" / "loop.wav").unlink()
    (project.parent / "keys.flac").unlink()
    out = tmp_path / "out"
    assert main(["batch", str(project), "--edit", "extract drums", "-o", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "0 rendered, 0 already done, 0 failed, 5 refused" in printed
    assert "02 Odd items/02 untitled: refused: " in printed and "is MIDI" in printed
    manifest = json.loads((out / "manifest.json").read_text())["pairs"]
    assert manifest["01 Drum Bus/01 loop | extract drums"]["status"] == "unsupported"


def test_the_table_gives_each_refused_items_reason(project, tmp_path, tiny_editor):
    out = tmp_path / "out"
    pairs = plan_pairs(collect_sources(project), check_edits(["extract drums"], tiny_editor.parse), out)
    out.mkdir()
    backend = InProcessBackend(tiny_editor, EditOptions(seed=3))
    summary = run_batch(pairs, backend, Manifest(out / "manifest.json"), out, {})
    table = batch.format_summary(summary, ["extract drums"], out)
    assert "02 Odd items/01 loop  " in table and "refused" in table
    assert "02 Odd items/03 gone: refused: " in table and "offline or missing" in table
    assert summary.exit_code == 0  # two items were rendered


def test_takes_and_raw_reach_the_engine_and_the_manifest(session, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    assert main(batch_args(session, out, tiny_model_dir, "--takes", "2", "--raw")) == 0
    record = json.loads((out / "manifest.json").read_text())["pairs"]["mix | remove bass"]
    from engine.weights.loader import weights_identity

    weights = weights_identity(str(tiny_model_dir))
    assert record["settings"] == {
        "model": "tiny-random",
        "weights": weights,
        "seed": 3,
        "takes": 2,
        "raw": True,
        "mode": "",
    }
    assert (record["info"]["takes"], record["info"]["raw"], record["info"]["mode"]) == (2, True, "mask")


def test_the_mode_reaches_the_engine_and_the_manifest(session, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    assert main(batch_args(session, out, tiny_model_dir, "--mode", "resynth")) == 0
    record = json.loads((out / "manifest.json").read_text())["pairs"]["mix | remove bass"]
    assert (record["settings"]["mode"], record["info"]["mode"]) == ("resynth", "resynth")


def test_an_unknown_mode_is_refused_before_any_work(session, tmp_path, capsys, no_model_load):
    out = tmp_path / "out"
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(out), "--mode", "karaoke", "--dry-run"]
    assert main(argv) == 1
    refusal = "unknown mode 'karaoke': use mask, resynth, layer, beside (or nothing: the default)"
    assert refusal in capsys.readouterr().err


def test_changed_settings_render_again(session, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    assert main(batch_args(session, out, tiny_model_dir)) == 0
    assert main(batch_args(session, out, tiny_model_dir, "--raw")) == 0
    assert "4 rendered, 0 already done" in capsys.readouterr().out.split("mix ")[-1]
    manifest = json.loads((out / "manifest.json").read_text())["pairs"]
    assert all(entry["settings"]["raw"] for entry in manifest.values())


def test_another_model_of_the_same_name_or_another_adapter_renders_again(session, tmp_path, tiny_model_dir, capsys):
    """Results of a retrained adapter, or of another model whose card keeps the name, were "done before": the batch
    compared card names only."""
    import shutil

    from engine.tools.tiny_models import build_tiny_model_dir

    out = tmp_path / "out"
    other = build_tiny_model_dir(tmp_path / "other", seed=1)  # another tiny-random
    assert main(batch_args(session, out, tiny_model_dir)) == 0
    assert main([*batch_args(session, out, tiny_model_dir), "--adapter", str(other / "adapter")]) == 0
    assert "4 rendered, 0 already done" in capsys.readouterr().out.split("mix ")[-1]
    assert main(batch_args(session, out, other)) == 0  # its own base too
    assert "4 rendered, 0 already done" in capsys.readouterr().out.split("mix ")[-1]
    assert main(batch_args(session, out, other)) == 0
    assert "0 rendered, 4 already done" in capsys.readouterr().out.split("mix ")[-1]
    copy = tmp_path / "copy"
    shutil.copytree(other, copy)  # the same files elsewhere: the same model
    assert main([*batch_args(session, out, copy), "--dry-run"]) == 0
    assert "dry run: 0 to render, 4 already done" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["pairs"].values():
        entry["settings"].pop("weights")  # as earlier versions recorded it: the name decides, as it did
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(batch_args(session, out, tiny_model_dir)) == 0
    assert "0 rendered, 4 already done" in capsys.readouterr().out.split("mix ")[-1]


def test_the_default_mode_named_in_any_case_is_the_same_setting_as_no_mode(session, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    assert main(batch_args(session, out, tiny_model_dir)) == 0
    assert main(batch_args(session, out, tiny_model_dir, "--mode", " MASK")) == 0
    assert "0 rendered, 4 already done" in capsys.readouterr().out.split("mix ")[-1]
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["pairs"].values():
        entry["settings"]["mode"] = "mask"  # as earlier versions recorded --mode mask
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(batch_args(session, out, tiny_model_dir)) == 0
    assert "0 rendered, 4 already done" in capsys.readouterr().out.split("mix ")[-1]


def test_command_modules_import_without_torch():
    assert "torch" not in imported_by("bridge.batch", "bridge.edit_cmd", "bridge.playback")


def test_the_summary_says_each_distinct_note_once_with_where_it_came_from(tmp_path):
    summary = batch.Summary(done=3, rows={"a.wav": {"x": "done 1.0s"}})
    summary.notes = {"the card says extract loses": ["a.wav|x", "b.wav|x", "c.wav|x"]}
    summary.notes["the source is silent"] = ["b.wav|x"]
    text = batch.format_summary(summary, ["x"], tmp_path)
    assert "  note (3 results): the card says extract loses" in text
    assert "  b.wav|x: note: the source is silent" in text
    assert text.count("the card says extract loses") == 1


def test_a_dry_run_says_the_model_cards_own_verdict_before_anything_renders(
    session, tmp_path, judged_model_dir, capsys, no_model_load
):
    argv = ["batch", str(session), "--edit", "extract drums", "--edit", "remove bass", "--model", str(judged_model_dir)]
    assert main([*argv, "-o", str(tmp_path / "out"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    (line,) = [line for line in printed.splitlines() if "note" in line]  # extract loses on the card, remove wins
    assert line.startswith("  note (2 results): ") and "its extract edits do not clearly beat" in line


def test_a_ray_workers_error_comes_back_as_its_own_class_by_code():
    from bridge.batch_backends import RayEditWorker
    from engine.errors import AudioError, ImusicError, ResourceError, error_from_code

    class Exhausted:
        def edit(self, *args, **kwargs):
            raise ResourceError("CUDA out of memory after 3 tries")

    worker = RayEditWorker.__new__(RayEditWorker)  # without loading a model: only its edit's reply is tested
    worker.editor = Exhausted()
    reply = worker.edit(np.zeros((1, 100), np.float32), 16000, "extract drums", EditOptions())
    assert reply[:2] == ("error", ResourceError.code)
    error = error_from_code(*reply[1:])
    assert isinstance(error, ResourceError) and str(error) == "CUDA out of memory after 3 tries"  # stops the batch
    assert type(error_from_code(AudioError.code, "silent")) is AudioError
    unknown = error_from_code("forbidden_path", "outside the allowed folders")
    assert type(unknown) is ImusicError and unknown.code == "forbidden_path"


def test_a_batch_of_adds_in_layer_mode_renders_the_added_parts_and_refuses_it_for_other_edits(
    session, tmp_path, tiny_model_dir, capsys
):
    out = tmp_path / "out"
    argv = [
        "batch",
        str(session),
        "--edit",
        "add piano",
        "--mode",
        "layer",
        "-o",
        str(out),
        "--model",
        str(tiny_model_dir),
    ]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    pairs = manifest["pairs"].values()
    assert pairs and all(p["status"] == "done" and p["settings"]["mode"] == "layer" for p in pairs)
    assert all(p["info"]["mode"] == "layer" for p in pairs)
    refused = ["batch", str(session), "--edit", "extract drums", "--mode", "layer", "-o", str(tmp_path / "x")]
    assert main([*refused, "--model", str(tiny_model_dir)]) == 1
    assert "mode 'layer' does not apply to extract" in capsys.readouterr().err


def test_a_mode_that_does_not_fit_an_edit_is_refused_when_the_edits_are_checked(tiny_editor):
    """Before any model work or manifest line: refused per pair after loading, it was journalled as failed pairs."""
    with pytest.raises(ConfigError, match="mode 'layer' does not apply to extract"):
        check_edits(["add piano", "extract drums"], tiny_editor.parse, "layer")
    assert len(check_edits(["add piano", "extract drums"], tiny_editor.parse, "beside")) == 2
