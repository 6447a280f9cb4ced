"""`imusic data synth` and `imusic data info` through the real entry point."""

from __future__ import annotations

import json

import pytest
from test_bridge_support import imported_by

from bridge.cli import main
from engine.errors import ConfigError
from engine.instructions import MAX_SEED, OPERATIONS


@pytest.mark.needs_soundfont
def test_synth_then_info_reports_layout_songs_and_classes(tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["data", "synth", "--tracks", "2", "-o", str(out), "--seconds", "2", "--sample-rate", "16000", "--quiet"]
    assert main(argv) == 0
    assert "wrote 2 track(s)" in capsys.readouterr().out
    assert main(["data", "info", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["layout"], summary["songs"], summary["sample_rates"]) == ("slakh", 2, [16000])
    assert summary["classes"]["Drums"]["songs"] == 2 and summary["classes"]["Bass"]["stems"] == 2
    assert summary["hours"] == pytest.approx(2 * 2 / 3600, abs=1e-4)


@pytest.mark.needs_soundfont
def test_synth_once_starts_then_finishes_a_cut_run_then_keeps_it(tmp_path, capsys):
    import shutil

    out = tmp_path / "data"
    argv = ["data", "synth", "--tracks", "2", "-o", str(out), "--seconds", "2", "--sample-rate", "16000", "--quiet"]
    assert main([*argv, "--once"]) == 0  # a new folder: started
    assert "wrote 2 track(s)" in capsys.readouterr().out
    first = (out / "Track00001" / "mix.flac").read_bytes()
    shutil.rmtree(out / "Track00002")  # as if cut before the second track: the record still says it is not complete
    record = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({**record, "complete": False}))
    assert main([*argv, "--once"]) == 0
    assert "kept 1 finished track(s)" in capsys.readouterr().out
    assert json.loads((out / "dataset.json").read_text())["complete"]
    written = (out / "dataset.json").stat().st_mtime_ns
    assert main([*argv, "--once"]) == 0
    assert capsys.readouterr().out.strip() == f"data: done ({out})"  # finished: left as it is
    assert (out / "dataset.json").stat().st_mtime_ns == written
    assert (out / "Track00001" / "mix.flac").read_bytes() == first
    assert main(argv) == 1  # without --once a folder with a data set is refused, as before
    assert "is not empty" in capsys.readouterr().err
    # a finished set of other settings was kept as if it were the one asked for (a stale second test set)
    assert main([*argv[:3], "5", *argv[4:], "--seed", "7", "--once"]) == 1
    assert "made with other settings (seed, tracks_asked)" in capsys.readouterr().err
    del record["tracks_asked"]  # a record from before the setting was kept: no difference in it
    (out / "dataset.json").write_text(json.dumps(record))
    assert main([*argv, "--once"]) == 0 and "data: done" in capsys.readouterr().out


def test_info_on_a_folder_in_no_known_layout_is_one_line_and_exit_1(tmp_path, capsys):
    (tmp_path / "readme.txt").write_text("no audio")
    assert main(["data", "info", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no stem data set found" in err


def test_info_names_each_file_it_left_out_and_why(tmp_path, capsys, monkeypatch):
    from test_bridge_support import write_folder_song

    from engine.train.data import cli

    for i in range(3):
        write_folder_song(tmp_path / f"song {i}")
    (tmp_path / "song 0" / "guitar.wav").write_bytes(b"")
    (tmp_path / "song 1" / "keys.wav").write_bytes(b"not audio")
    assert main(["data", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'song 0' / 'guitar.wav'}: unreadable stem file" in out
    assert f"{tmp_path / 'song 1' / 'keys.wav'}: unreadable stem file" in out
    assert main(["data", "info", str(tmp_path), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["problems"]) == 2
    monkeypatch.setattr(cli, "SHOWN_PROBLEMS", 1)
    assert main(["data", "info", str(tmp_path)]) == 0
    assert "... and 1 more (--json lists them all)" in capsys.readouterr().out


def test_synth_without_tracks_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["data", "synth", "-o", str(tmp_path / "x")])
    assert exc.value.code == 2


def test_data_command_module_does_not_import_torch():
    assert "torch" not in imported_by("engine.train.data.cli")


@pytest.mark.needs_soundfont
def test_export_writes_clips_of_the_requested_split(tmp_path, capsys):
    data = tmp_path / "data"
    synth = ["data", "synth", "--tracks", "3", "-o", str(data), "--seconds", "2", "--sample-rate", "16000", "--quiet"]
    assert main(synth) == 0
    argv = ["data", "export", str(data), "-o", str(tmp_path / "clips"), "--split", "test", "--seconds", "1"]
    assert main([*argv, "--sample-rate", "16000", "--task", "extract", "--quiet"]) == 0
    meta = json.loads((tmp_path / "clips" / "clips.json").read_text())
    suggested = json.loads((data / "dataset.json").read_text())["split"]["test"]
    assert {clip["song_id"] for clip in meta["clips"]} <= set(suggested)
    assert meta["clips"] and all(clip["op"] == "extract" for clip in meta["clips"])
    for tasks, expected in ((["--task", "add", "--task", "remove"], {"add", "remove"}), ([], set(OPERATIONS))):
        out = ["-o", str(tmp_path / f"clips{len(tasks)}"), "--sample-rate", "16000", "--quiet"]
        assert main([*argv[:3], *argv[5:], *out, *tasks, "--clips-per-song", "9"]) == 0
        clips = json.loads((tmp_path / f"clips{len(tasks)}" / "clips.json").read_text())["clips"]
        assert {clip["op"] for clip in clips} == expected  # repeated --task as imusic eval; none: every operation


@pytest.mark.parametrize("rate", ["7", "10000000"])
def test_export_refuses_a_rate_no_edit_takes_and_writes_nothing(tmp_path, capsys, rate):
    """7 Hz clips (35 samples) were written without a word."""
    from engine.train.data.datasets import ClipConfig

    with pytest.raises(ConfigError, match=f"clips at a sample rate of {rate} Hz: the engine edits 1000 to 768000 Hz"):
        ClipConfig(sample_rate=int(rate), seconds=5.0)
    data = tmp_path / "data"
    synth = ["data", "synth", "--tracks", "3", "-o", str(data), "--seconds", "1", "--sample-rate", "16000", "--quiet"]
    assert main(synth) == 0
    capsys.readouterr()
    assert main(["data", "export", str(data), "-o", str(tmp_path / "clips"), "--sample-rate", rate, "--quiet"]) == 1
    assert "the engine edits 1000 to 768000 Hz" in capsys.readouterr().err
    assert not any((tmp_path / "clips").rglob("*.wav"))


def test_export_reads_imusic_eval_s_clip_options_with_its_defaults():
    from bridge.cli import build_parser
    from engine.eval.clips import CLIP_OPTIONS

    export = vars(build_parser(["data"]).parse_args(["data", "export", "DIR", "-o", "OUT"]))
    scored = vars(build_parser(["eval"]).parse_args(["eval", "--data", "DIR", "--task", "extract", "-o", "OUT"]))
    shared = [name for name in CLIP_OPTIONS if name != "task"]  # export: every task by default; eval names its own
    assert {name: export[name] for name in shared} == {name: scored[name] for name in shared}


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_export_refuses_a_seed_imusic_eval_refuses(seed, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["data", "export", str(tmp_path / "none"), "-o", str(tmp_path / "out"), f"--seed={seed}"])
    assert stop.value.code == 2
    assert f"--seed: must be from 0 to {MAX_SEED}, got {seed}" in capsys.readouterr().err


def test_data_export_writes_the_clips_imusic_eval_scores(synth_data, tmp_path):
    """Its help says "as imusic eval": it drew one list for all tasks, interleaved, so clip i of a task was another
    clip than the one eval scores under the same seed."""
    import numpy as np
    import soundfile as sf

    from engine.eval.clips import held_out_clips

    out = tmp_path / "out"
    argv = ["data", "export", str(synth_data), "-o", str(out), "--seconds", "1.0", "--sample-rate", "16000"]
    assert main([*argv, "--seed", "5", "--clips-per-song", "2", "--quiet"]) == 0
    meta = json.loads((out / "clips.json").read_text())
    for task in OPERATIONS:
        clips = held_out_clips(synth_data, task, 16000, 1.0, "4stems", 5, 2, "test")
        mine = [(c["song_id"], c["offset"]) for c in meta["clips"] if c["op"] == task]
        assert mine and mine == [(clips[i].song_id, clips[i].offset) for i in range(len(clips))]
        exported, _ = sf.read(str(out / task / "input" / "0.wav"), dtype="float32")
        np.testing.assert_array_equal(exported, clips[0].input)
