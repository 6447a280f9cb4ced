"""`imusic demo` as a user runs it: a held-out clip, the real server in a subprocess, edits through the client.

The tiny random model shows the mechanics (files, lengths, rates, picture, summary, server lifecycle), not that an
edit sounds right.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge import demo
from bridge.demo import INPUT_FILE, PICTURE_FILE, TRUTH_DIR
from engine.instructions import MAX_SEED

IMUSIC = [sys.executable, "-m", "bridge.cli"]
SECONDS = 3
EDITS = ("extract drums", "remove bass")


@pytest.fixture(scope="module")
def demo_run(judged_model_dir, tmp_path_factory):
    """One end-to-end demo run on the tiny model (its card judging extract a loss): (completed process, folder)."""
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    command = IMUSIC + ["demo", "--model", str(judged_model_dir), "-o", str(out), "--seconds", str(SECONDS)]
    for edit in EDITS:
        command += ["--edit", edit]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=240)
    return proc, out


def test_demo_succeeds_and_prints_a_row_per_edit_and_mode(demo_run):
    proc, out = demo_run
    assert proc.returncode == 0, proc.stderr
    rows = {
        tuple(cell.strip() for cell in re.split(r"\s{2,}", line)[:2]): line
        for line in proc.stdout.splitlines()
        if "  done  " in line
    }
    assert set(rows) == {(edit, mode) for edit in EDITS for mode in ("mask", "resynth")}
    for edit in EDITS:
        name = edit.replace(" ", "_")
        assert str(out / f"{name}.wav") in rows[(edit, "mask")]
        assert str(out / f"{name}.resynth.wav") in rows[(edit, "resynth")]
        # seconds and LUFS come from the /done metadata: numbers, not placeholders
        assert re.search(r"done\s+\d+\.\d\d\s+-?\d+\.\d\s", rows[(edit, "mask")]), rows[(edit, "mask")]
    assert "4 of 4 results done (2 edits x 2 modes)" in proc.stdout


def test_the_models_own_verdict_is_said_once_under_the_table(demo_run):
    proc, _ = demo_run
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note: ")]
    verdicts = [line for line in notes if "extract edits do not clearly beat leaving the audio unchanged" in line]
    assert len(verdicts) == 1  # two extract results (mask, resynth), one note; remove wins on its card: none


def test_input_is_a_44k_stereo_clip_of_the_requested_length(demo_run):
    _, out = demo_run
    info = sf.info(str(out / INPUT_FILE))
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, SECONDS * 44100)


def test_truth_stems_sum_to_the_input(demo_run):
    _, out = demo_run
    stems = sorted((out / TRUTH_DIR).glob("*.wav"))
    assert {"drums", "bass"} <= {path.stem for path in stems}
    mix, rate = sf.read(str(out / INPUT_FILE), dtype="float32")
    total = sum(sf.read(str(path), dtype="float32")[0] for path in stems)
    assert rate == 44100 and total.shape == mix.shape
    # 24-bit files: each stem and the mix carry one quantisation step of error at most
    assert np.abs(total - mix).max() < (len(stems) + 1) * 2.0**-23
    assert np.abs(mix).max() > 0.01  # the song is audible


def test_each_result_has_the_input_rate_channels_and_length(demo_run):
    _, out = demo_run
    for edit in EDITS:
        for suffix in ("", ".resynth"):
            info = sf.info(str(out / f"{edit.replace(' ', '_')}{suffix}.wav"))
            assert (info.samplerate, info.channels, info.frames) == (44100, 2, SECONDS * 44100), edit


def test_the_mask_result_keeps_the_stereo_image_and_resynth_is_dual_mono(demo_run):
    _, out = demo_run
    mask, _ = sf.read(str(out / "remove_bass.wav"), dtype="float32")
    resynth, _ = sf.read(str(out / "remove_bass.resynth.wav"), dtype="float32")
    assert np.abs(mask[:, 0] - mask[:, 1]).max() > 1e-3  # the input's guitar and piano are panned
    np.testing.assert_array_equal(resynth[:, 0], resynth[:, 1])


def test_before_after_picture_has_a_row_for_the_input_and_each_edit_with_truth_and_both_modes(demo_run):
    import matplotlib.image

    _, out = demo_run
    path = out / PICTURE_FILE
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(str(path)).shape[:2]
    # engine.eval.plots: 2.2 inches per row and 4.2 per column (+1 for the scale) at 100 dpi: input + 2 edits, 3 columns
    assert (height, width) == (round(2.2 * (1 + len(EDITS)) * 100), round((4.2 * 3 + 1) * 100))


def test_the_truth_of_an_edit_is_what_a_perfect_edit_gives():
    mix = np.ones((2, 4), np.float32)
    clip = demo.Clip(mix, 44100, {"drums": 0.25 * mix, "bass": 0.75 * mix}, 0)
    np.testing.assert_array_equal(demo.truth(clip, "extract drums"), 0.25 * mix)
    np.testing.assert_array_equal(demo.truth(clip, "remove bass"), 0.25 * mix)
    assert demo.truth(clip, "add piano") is None and demo.truth(clip, "extract piano") is None
    # the words a producer types, read as the engine reads them
    np.testing.assert_array_equal(demo.truth(clip, "Drums only"), 0.25 * mix)
    np.testing.assert_array_equal(demo.truth(clip, "take the bass out"), 0.25 * mix)
    assert demo.truth(clip, "make it louder") is None
    odd = demo.Clip(mix, 44100, {"theremin": 0.5 * mix, "bass": 0.5 * mix}, 0)  # a stem outside the official four
    np.testing.assert_array_equal(demo.truth(odd, "extract theremin"), 0.5 * mix)


def test_server_process_is_gone_and_its_port_free_afterwards(demo_run):
    proc, _ = demo_run
    found = re.search(r"engine server \(pid (\d+)\) on 127\.0\.0\.1:(\d+)", proc.stdout)
    assert found, proc.stdout
    pid, port = int(found.group(1)), int(found.group(2))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))  # OSError if the server still held it


def test_server_was_stopped_gracefully_with_its_journal_in_the_output_folder(demo_run):
    _, out = demo_run
    log = (out / "server.log").read_text()
    assert "ready: model tiny-random" in log and "stopped" in log
    assert (out / ".journal").is_dir()


def test_missing_model_is_one_clear_line_and_exit_code_1(tmp_path):
    proc = subprocess.run(
        IMUSIC + ["demo", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imusic demo: error:") and "nope" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()  # nothing rendered, no server started


def test_missing_embedded_model_says_so_and_exits_1(tmp_path, monkeypatch, capsys):
    from bridge.cli import main

    monkeypatch.setattr("engine.weights.loader.DEFAULT_MODEL_DIR", tmp_path / "default")
    assert main(["demo", "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embedded default model is not installed" in err[0]


def test_a_server_that_dies_while_loading_is_reported_with_its_last_lines(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_card.json").write_text('{"name": "broken"}')  # no base/: the server fails to load it
    proc = subprocess.run(
        IMUSIC + ["demo", "--model", str(broken), "-o", str(tmp_path / "out"), "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "engine server stopped" in proc.stderr and "missing base/" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_edit_the_model_refuses_is_an_error_row_and_the_others_still_run(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    command = IMUSIC + ["demo", "--model", str(tiny_model_dir), "-o", str(out), "--seconds", "1"]
    proc = subprocess.run(
        command + ["--edit", "extract vocals", "--edit", "extract drums"], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 1
    refused = next(line for line in proc.stdout.splitlines() if line.startswith("extract vocals"))
    assert "bad_instruction" in refused and not (out / "extract_vocals.wav").exists()
    assert "2 of 4 results done" in proc.stdout and (out / "extract_drums.wav").is_file()
    assert "'extract vocals' (mask) failed" in proc.stderr and "Traceback" not in proc.stderr


# ---- the pure parts ---------------------------------------------------------------------------------------------


def test_default_edits_use_only_the_model_stems():
    edits = demo.choose_edits(["drums", "guitar"], song_stems=["drums", "bass", "guitar"])
    assert all(edit.split()[-1] in ("drums", "guitar") for edit in edits)
    assert "extract drums" in edits and not any("bass" in edit for edit in edits)


def test_default_add_names_a_stem_the_song_lacks():
    edits = demo.choose_edits(["drums", "bass", "piano", "guitar"], song_stems=["drums", "bass", "piano"])
    assert edits == ["extract drums", "remove bass", "extract bass", "add guitar"]


def test_model_stems_come_from_the_adapter_description(tiny_model_dir, tmp_path):
    assert demo.model_stems(Path(tiny_model_dir)) == ["drums", "bass", "piano", "guitar"]
    (tmp_path / "model_card.json").write_text('{"stems": ["Drums", "Bass"]}')
    assert demo.model_stems(tmp_path) == ["drums", "bass"]
    (tmp_path / "adapter").mkdir()
    meta = '{"format": "imusic-adapter", "version": 1, "fusion": {}, "stems": ["Drums", "Vocals"]}'
    (tmp_path / "adapter" / "adapter.json").write_text(meta)  # as loading reads it
    assert demo.model_stems(tmp_path) == ["drums", "vocals"]


def test_result_file_names_follow_the_edit():
    assert demo.result_name("Extract the Drums!") == "extract_the_drums"


def test_summary_shows_a_dash_for_what_an_error_row_lacks():
    rows = [
        demo.Row("extract drums", "mask", "done", 1.234, -18.04, Path("/o/extract_drums.wav")),
        demo.Row("x", "mask", "bad"),
    ]
    lines = demo.summary_table(rows).splitlines()
    assert lines[0].split() == ["edit", "mode", "status", "seconds", "LUFS", "file"]
    assert lines[1].split() == ["extract", "drums", "mask", "done", "1.23", "-18.0", "/o/extract_drums.wav"]
    assert lines[2].split()[:5] == ["x", "mask", "bad", "-", "-"]


def test_result_files_name_the_mode_except_the_default():
    assert demo.result_file("extract drums", "mask") == "extract_drums.wav"
    assert demo.result_file("extract drums", "resynth") == "extract_drums.resynth.wav"


def test_the_held_out_song_keeps_only_the_stems_the_model_knows():
    everything = demo.render_clip(2.0, 0)
    assert len(everything.stems) >= 2
    kept = sorted(everything.stems)[:2]
    clip = demo.render_clip(2.0, 0, keep=kept)
    assert sorted(clip.stems) == kept
    np.testing.assert_allclose(clip.audio, np.sum(list(clip.stems.values()), axis=0), atol=1e-6)
    assert sorted(demo.render_clip(2.0, 0, keep=["no such stem"]).stems) == sorted(everything.stems)


def test_a_folder_of_the_producers_own_files_is_refused_before_anything_is_replaced(tmp_path, capsys):
    from bridge.cli import main

    mine = tmp_path / "myproj"
    (mine / TRUTH_DIR).mkdir(parents=True)
    for name in (INPUT_FILE, f"{TRUTH_DIR}/drums.wav", "remove_bass.wav"):
        (mine / name).write_bytes(b"a producer's take")
    assert main(["demo", "-o", str(mine), "--seconds", "1", "--edit", "remove bass"]) == 1
    assert "holds files no earlier demo wrote" in capsys.readouterr().err
    assert all((mine / name).read_bytes() == b"a producer's take" for name in (INPUT_FILE, f"{TRUTH_DIR}/drums.wav"))
    assert main(["demo", "-o", str(mine / INPUT_FILE)]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_rerun_into_an_earlier_demos_folder_is_allowed(demo_run):
    from bridge.demo import DEMO_MARK, _check_folder

    _, out = demo_run
    assert (out / DEMO_MARK).exists()
    _check_folder(out)  # no error: its own folder
    (out / DEMO_MARK).unlink()
    _check_folder(out)  # a demo's from before the mark: its server log and input


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_a_seed_the_engine_cannot_take_is_a_usage_error_before_any_work(seed, tmp_path, capsys):
    from bridge.cli import main

    afile = tmp_path / "afile"  # were the seed let through, the demo would stop here, with exit code 1
    afile.write_bytes(b"")
    with pytest.raises(SystemExit) as stop:
        main(["demo", "-o", str(afile), f"--seed={seed}"])
    assert stop.value.code == 2
    assert f"--seed: must be from 0 to {MAX_SEED}, got {seed}" in capsys.readouterr().err
