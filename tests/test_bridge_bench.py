"""`imusic bench engine`: the bridge's overhead is measured against the model's own time and printed last."""

from __future__ import annotations

import io
import re

import pytest
from test_bridge_support import FakeEditor

from bridge.bench import measure
from bridge.protocol import MAX_REGION_S


def test_measure_prints_bridge_overhead_as_the_last_line():
    out = io.StringIO()
    figures = measure(FakeEditor(steps=4, step_s=0.05), seconds=2.0, jobs=2, out=out)
    last = out.getvalue().strip().splitlines()[-1]
    assert re.fullmatch(r"bridge overhead: \d+\.\d%", last)
    assert float(last.split()[-1].rstrip("%")) == pytest.approx(figures["overhead"] * 100, abs=0.051)


def test_overhead_is_total_time_minus_model_time():
    figures = measure(FakeEditor(steps=4, step_s=0.05), seconds=1.0, jobs=2, out=io.StringIO())
    assert figures["model_s"] >= 0.2  # four 50 ms steps
    assert 0 < figures["overhead_s"] < figures["total_s"] - figures["model_s"] + 0.05
    assert 0 < figures["first_progress_s"] < figures["total_s"]
    assert 0 < figures["overhead"] < 1


def test_imusic_bench_engine_on_the_tiny_model_prints_bridge_overhead_last(tiny_model_dir, capsys):
    from bridge.cli import main

    argv = ["bench", "engine", "--model", str(tiny_model_dir), "--seconds", "1", "--jobs", "1", "--channels", "1"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("job 1/1: total ") and "model " in lines[0]
    assert re.fullmatch(r"bridge overhead: \d+\.\d%", lines[-1])


@pytest.mark.slow
def test_bench_engine_on_the_tiny_model(request):
    pytest.importorskip("engine.editor")
    editor = request.getfixturevalue("tiny_editor")
    out = io.StringIO()
    figures = measure(editor, seconds=10.0, jobs=2, out=out)
    assert out.getvalue().strip().splitlines()[-1].startswith("bridge overhead: ")
    assert figures["model_s"] > 0


# ---- --shape: the Editor's real-time factor on a random model ------------------------------------------------------


def test_bench_engine_shape_prints_the_time_split_and_the_rtf_last(capsys, tmp_path):
    import json

    from bridge.cli import main

    path = tmp_path / "engine.json"
    argv = ["bench", "engine", "--shape", "tiny", "--seconds", "2", "--edits", "2", "--json", str(path)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("engine real-time factor on ") and "random tiny (2 x 64)" in lines[0]
    assert "decode step eager" in lines[0]  # off CUDA every step mode is the eager loop
    assert lines[1].startswith("edit 1/2 (") and "2 ch, 44100 Hz" in lines[1]
    assert re.search(
        r"where the time goes .*encode \d+\.\d\d s, generate .*decode .*mask .*decode steps", "\n".join(lines)
    )
    assert re.fullmatch(r"real-time factor: \d+\.\d{3}", lines[-1])
    assert any(re.fullmatch(r"a region of another length \(1\.2 s\): \d+\.\d\d s = \d+\.\d{3} x real time", line)
               for line in lines)  # fmt: skip
    figures = json.loads(path.read_text())
    assert figures["other_length"]["seconds"] == 1.2 and figures["other_length"]["edit_s"] > 0
    assert figures["rtf"] == pytest.approx(figures["edit_s"] / 2.0)
    assert figures["rtf"] == pytest.approx(float(lines[-1].split()[-1]), abs=6e-4)
    assert {"encode", "generate", "decode", "mask", "other"} <= set(figures["timings"])
    assert figures["decode_steps"] == 100 + 4 - 1  # one 2 s window at 50 Hz: 100 frames + the delay, no prompt
    assert figures["shape"] == "tiny" and figures["step"] == "eager" and figures["channels"] == 2


def test_decode_steps_follow_the_windows():
    import functools
    from types import SimpleNamespace

    from bridge.bench import decode_steps
    from engine.editor import Editor

    codec = SimpleNamespace(num_frames=lambda n: -(-n // 640))
    lm = SimpleNamespace(cfg=SimpleNamespace(num_codebooks=4))
    editor = SimpleNamespace(sample_rate=32000, overlap_frames=100, window_frames=500,
                             model=SimpleNamespace(codec=codec, lm=lm))  # fmt: skip
    editor.windows = functools.partial(Editor.windows, editor)  # the Editor's own plan, on these sizes
    editor.model_length = functools.partial(Editor.model_length, editor)
    # 30 s = 1500 frames: windows 0-500, 400-900, 800-1300, 1200-1500 (prompts 0, 100, 100, 100)
    assert decode_steps(editor, 30 * 44100, 44100) == 503 + 403 + 403 + 203


def test_bench_engine_refuses_cuda_without_cuda_in_one_line(capsys):
    import torch

    from bridge.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for argv in (["bench", "engine", "--shape", "small", "--device", "cuda"], ["bench", "engine", "--device", "cuda"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("imusic bench: error: no CUDA device here (torch ")


def test_bench_engine_shape_and_model_together_are_refused(tiny_model_dir, capsys):
    from bridge.cli import main

    assert main(["bench", "engine", "--shape", "tiny", "--model", str(tiny_model_dir)]) == 1
    assert "--shape" in capsys.readouterr().err


def test_random_loaded_model_has_the_real_codec_and_text_shapes():
    from engine.tools.tiny_models import ENCODEC_32KHZ, T5_BASE

    # the shapes MusicGen ships: 32 kHz codec with hop 640 (50 Hz) and 4 x 2048 at 2.2 kbps, t5-base text states
    assert ENCODEC_32KHZ["sampling_rate"] // 640 == 50 and ENCODEC_32KHZ["codebook_size"] == 2048
    assert T5_BASE["d_model"] == 768


@pytest.mark.slow
def test_random_small_model_edits_through_the_editor():
    import numpy as np

    from engine.editor import Editor
    from engine.tools.tiny_models import random_loaded_model

    model = random_loaded_model("small", dtype="fp32")
    assert model.codec.sample_rate == 32000 and model.codec.frame_rate == 50 and model.codec.num_codebooks == 4
    assert model.lm.cfg.text_dim == 768 and model.lm.fusion is not None
    editor = Editor(model, window_seconds=0.5)
    audio = np.random.default_rng(0).standard_normal((2, 44100)).astype(np.float32) * 0.1
    result = editor.edit(audio, 44100, "extract drums", seed=0)
    assert result.audio.shape == audio.shape


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--channels", "0"], "--channels: must be from 1 to 64"),
        (["--sample-rate", "0"], "--sample-rate: must be from 1000 to 768000"),
        (["--seconds", "nan"], "--seconds: must be a finite number"),
        (["--seconds", "0"], "--seconds: must be a number of seconds above 0"),
        (["--seconds", "1e9"], f"--seconds: must be at most {MAX_REGION_S:g} s"),
        (["--jobs", "0"], "--jobs: must be from 1"),
        (["--edits", "-1"], "--edits: must be from 1"),
    ],
)
def test_bench_engine_numbers_it_cannot_use_are_usage_errors(argv, says, capsys, no_model_load):
    from bridge.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["bench", "engine", "--shape", "tiny", *argv])
    assert stop.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("command", [["bench", "engine", "--shape", "tiny"], ["bench", "decode", "--shapes", "tiny"]])
def test_a_report_path_that_is_not_json_or_cannot_be_written_is_refused_before_measuring(
    tmp_path, capsys, monkeypatch, command
):
    """An audio file given as --json was replaced by the figures; a folder that takes no file lost them at the end."""
    from bridge.cli import main

    monkeypatch.setattr("engine.tools.bench.resolve_device", _no_measuring)
    take = tmp_path / "take.wav"
    take.write_bytes(b"RIFF a producer's take")
    assert main([*command, "--json", str(take)]) == 1
    assert "--json writes a .json file" in capsys.readouterr().err and take.read_bytes() == b"RIFF a producer's take"
    blocked = tmp_path / "file"
    blocked.write_text("in the way")
    assert main([*command, "--json", str(blocked / "figures.json")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def _no_measuring(*args, **kwargs):
    raise AssertionError("measuring began before the report's path was checked")
