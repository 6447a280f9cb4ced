"""engine/tools/gpu_check.py: the prepared device run, dry-run on CPU at the tiny shape; its JSON and log."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def test_the_compile_stage_times_only_the_compiled_step_without_repeating_the_checks(tmp_path):
    # the decode stage made the fp32 and bf16 agreement checks and timed the graph step: the compile stage's cap goes
    # to its cold compile (eager stays: the teacher-forced reference)
    decode, compile_stage = gpu_check.stages(False, tmp_path)[:2]
    argv = compile_stage["argv"]
    assert compile_stage["name"] == "decode-compile" and "--no-checks" in argv and "--no-checks" not in decode["argv"]
    assert argv[argv.index("--steps") + 1] == "eager,compile"


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


def test_each_stage_compiles_into_fresh_caches_of_its_own(tmp_path, monkeypatch):
    # a stage reusing the kernels an earlier stage built would time a warm compile as a producer's first hotkey
    seen = {}

    def record(stage, timeout, env, log):
        seen[stage["name"]] = (env["TORCHINDUCTOR_CACHE_DIR"], env["TRITON_CACHE_DIR"])
        return {"command": "", "rc": 0, "seconds": 0.0, "timed_out": False}

    monkeypatch.setattr(gpu_check, "run_stage", record)
    out = tmp_path / "out"
    assert gpu_check.main([str(out), "--budget", "1000"]) == 0
    assert list(seen) == [s["name"] for s in gpu_check.stages(False, tmp_path)]
    folders = [Path(folder) for pair in seen.values() for folder in pair]
    assert len(set(folders)) == 2 * len(seen)  # none shared, Inductor's and Triton's apart
    assert all(out not in folder.parents for folder in folders)  # OUT brings back a few files only
    assert len({folder.parents[2] for folder in folders}) == 1  # all under the run's temporary folder


def test_a_timed_out_stage_keeps_the_figures_its_bench_wrote(tmp_path):
    # the decode bench writes its JSON as it goes (the bandwidth first, then after every measurement): a stage
    # killed at its cap keeps what was measured. Far more repeats than the cap allows: the kill comes mid-shape.
    path = tmp_path / "partial.json"
    argv = ["bench", "decode", "--shapes", "tiny", "--frames", "400", "--repeats", "200", "--threads", "1"]
    stage = {"name": "slow", "argv": [*argv, "--json", str(path)], "cap": 20, "json": path}
    record = gpu_check.run_stage(stage, 20.0, dict(os.environ), gpu_check.Log(tmp_path / "log.txt"))
    assert record["timed_out"] and record["figures"]["bandwidth"]["used_gb_s"] > 0
