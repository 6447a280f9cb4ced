"""`imusic bench engine`: the bridge's overhead is measured against the model's own time and printed last."""

from __future__ import annotations

import io
import re

import pytest
from test_bridge_support import FakeEditor

from bridge.bench import measure


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
