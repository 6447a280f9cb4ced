"""engine/tools/gpu_check.py: the prepared device run, dry-run on CPU at the tiny shape; its JSON and log."""

from __future__ import annotations

import json
import os

from engine.tools import gpu_check


def test_stages_cover_decode_engine_and_compile_within_caps(tmp_path):
    names = [s["name"] for s in gpu_check.stages(False, tmp_path)]
    # in order of importance: the default CUDA step (compile) before the Editor's speed on every shape
    assert names == ["decode", "decode-compile", "engine-small-compile", "engine-small-graph", "engine-medium-graph",
                     "engine-large-graph"]  # fmt: skip
    decode = gpu_check.stages(False, tmp_path)[0]["argv"]
    assert "--device" in decode and decode[decode.index("--device") + 1] == "cuda"
    assert decode[decode.index("--shapes") + 1] == "small,medium,large"
    assert decode[decode.index("--batches") + 1] == "1,4"
    assert all(s["argv"][-2] == "--json" for s in gpu_check.stages(False, tmp_path))
    tiny = gpu_check.stages(True, tmp_path)
    assert all("cuda" not in s["argv"] for s in tiny)


def test_tiny_dry_run_writes_the_log_and_every_stage_figures(tmp_path):
    out = tmp_path / "out"
    assert gpu_check.main([str(out), "--tiny", "--only", "decode,engine-tiny-graph"]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert {"budget_s", "environment", "stages"} <= set(report)
    assert set(report["stages"]) == {"decode", "engine-tiny-graph"}
    decode = report["stages"]["decode"]
    assert decode["rc"] == 0 and not decode["timed_out"]
    figures = decode["figures"]
    assert {"device", "torch", "transformers", "dtype", "bandwidth", "shapes", "speedup"} <= set(figures)
    tiny = figures["shapes"]["tiny"]
    assert {"greedy_agree_fp32", "argmax_agree", "fast", "build_s", "parameters"} <= set(tiny)
    assert set(tiny["fast"]) == {"1", "4"}
    for entry in tiny["fast"].values():
        assert {"transformers", "eager", "step_bytes", "floor_ms", "x_floor", "speedup_same_dtype"} <= set(entry)
        assert entry["eager"]["ms_per_step"] > 0 and entry["eager"]["tokens_per_s"] > 0
    engine = report["stages"]["engine-tiny-graph"]["figures"]
    assert {"rtf", "first_edit_s", "edit_s", "timings", "decode_steps", "ms_per_step", "shape", "step"} <= set(engine)
    # the default mode (mask): its level finish is part of the mask's time
    assert {"encode", "generate", "decode", "mask"} <= set(engine["timings"])
    log = (out / "bench_log.txt").read_text()
    assert "decode speedup vs transformers: " in log and "real-time factor: " in log
    assert "stages: decode exit 0, engine-tiny-graph exit 0" in log


def test_a_stage_past_its_timeout_is_killed_and_recorded(tmp_path):
    stage = {"name": "slow", "argv": ["bench", "decode", "--shapes", "tiny", "--frames", "400", "--repeats", "50"],
             "cap": 1, "json": tmp_path / "none.json"}  # fmt: skip
    log = gpu_check.Log(tmp_path / "log.txt")
    record = gpu_check.run_stage(stage, 1.0, dict(os.environ), log)
    assert record["timed_out"] and record["rc"] != 0 and "figures" not in record
    assert record["seconds"] < 30


def test_a_spent_budget_skips_the_remaining_stages(tmp_path):
    out = tmp_path / "out"
    assert gpu_check.main([str(out), "--tiny", "--budget", "1"]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["stages"] and all("skipped" in r for r in report["stages"].values())
