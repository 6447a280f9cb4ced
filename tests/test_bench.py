"""`imusic bench decode` (engine/tools/bench.py): figures printed, summary last line, same tokens as transformers;
the device options, the one-line refusal without CUDA, the skip of shapes too large for the device, the JSON."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from engine.errors import ConfigError
from engine.tools import bench, costs


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def _run(capsys, *argv: str) -> list[str]:
    assert bench.run(_args(*argv)) == 0
    return capsys.readouterr().out.strip().splitlines()


def _speedups(lines: list[str], dtype: str) -> list[float]:
    pattern = re.compile(rf"ours {dtype} +\d+\.\d+ ms/step +\d+ tokens/s +speedup +(\d+\.\d+)")
    return [float(m[1]) for line in lines if (m := pattern.search(line))]


def test_tiny_decode_bench_prints_its_figures_and_the_summary_line(capsys, tmp_path):
    path = tmp_path / "decode.json"
    lines = _run(capsys, "--shapes", "tiny", "--frames", "12", "--repeats", "2", "--threads", "1", "--json", str(path))
    text = "\n".join(lines)
    assert re.fullmatch(r"decode speedup vs transformers: \d+\.\d\d", lines[-1])
    assert _speedups(lines, "fp32") and _speedups(lines, "bf16")
    assert re.search(r"teacher-forced argmax agreement bf16 vs fp32: (0|1)\.\d{4}", text)
    # both decoders run the same weights: greedy CFG tokens must agree exactly in fp32
    assert "greedy token agreement with transformers (fp32, CFG): 1.0000" in text
    assert "CUDA-graph step vs eager step: n/a (CPU)" in text
    assert re.search(r"bandwidth over .* device copy \d+\.\d GB/s .* the floor uses \d+\.\d GB/s", text)
    assert re.search(r"reads \d\.\d{3} GB/step: floor \d+\.\d{3} ms/step; ours \(eager\) at \d+\.\d\dx the floor", text)
    figures = json.loads(path.read_text())
    assert figures["dtype"] == "bf16" and figures["batches"] == [1] and figures["steps"] == ["eager"]
    assert figures["speedup"] == pytest.approx(float(lines[-1].split()[-1]), abs=0.006)
    tiny = figures["shapes"]["tiny"]
    assert tiny["greedy_agree_fp32"] == 1.0 and 0 <= tiny["argmax_agree"] <= 1
    entry = tiny["fast"]["1"]
    assert entry["rows"] == 2 and entry["steps"] == 12 + 3
    for name in ("transformers", "eager"):
        assert entry[name]["ms_per_step"] > 0 and entry[name]["first_call_s"] > 0
        # tokens/s: batch x codebooks per step
        assert entry[name]["tokens_per_s"] == pytest.approx(4 / entry[name]["ms_per_step"] * 1e3, rel=1e-6)
    assert entry["eager"]["new_length_s"] > 0  # ours at another length: what an edit's next window costs
    assert entry["floor_ms"] > 0 and entry["step_bytes"] > 0
    assert {"copy_gb_s", "linear_sweep_gb_s", "used_gb_s"} <= set(figures["bandwidth"])


def test_the_four_take_batch_is_timed_with_cfg_rows(capsys, tmp_path):
    path = tmp_path / "decode.json"
    lines = _run(capsys, "--shapes", "tiny", "--frames", "6", "--repeats", "1", "--threads", "1", "--dtype", "float32",
                 "--batches", "1,4", "--json", str(path))  # fmt: skip
    text = "\n".join(lines)
    assert "batch 1 fp32 (2 rows with CFG)" in text and "batch 4 fp32 (8 rows with CFG)" in text
    fast = json.loads(path.read_text())["shapes"]["tiny"]["fast"]
    assert fast["4"]["rows"] == 8 and fast["4"]["step_bytes"] > fast["1"]["step_bytes"]  # the cache grows with rows


@pytest.mark.parametrize(
    "argv",
    [
        ["--shapes", "huge"],
        ["--shapes", ""],
        ["--shapes", "tiny", "--batches", "0"],
        ["--shapes", "tiny", "--batches", "one"],
        ["--shapes", "tiny", "--frames", "0"],
        ["--shapes", "tiny", "--device", "tpu"],
    ],
)
def test_bad_options_are_refused(argv):
    with pytest.raises(ConfigError):
        bench.run(_args(*argv))


def test_bad_step_modes_are_refused_on_cuda_only_after_the_device_check():
    import torch

    if torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--steps"):
            bench.run(_args("--device", "cuda", "--steps", "fast"))
    else:
        with pytest.raises(ConfigError, match="no CUDA device here"):
            bench.run(_args("--device", "cuda", "--steps", "fast"))


def test_cuda_without_cuda_is_one_line_and_exit_1(capsys):
    import torch

    from bridge.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["bench", "decode", "--device", "cuda", "--shapes", "tiny"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and not captured.out
    assert re.fullmatch(r"imusic bench: error: no CUDA device here \(torch \S+ (built without CUDA|.*sees no GPU)\)",
                        lines[0])  # fmt: skip


def test_fit_decision_uses_the_estimate_against_free_memory():
    from engine.model.config import preset

    gb = 10**9
    assert costs.fit_reason(10 * gb, 20 * gb, "small") is None
    reason = costs.fit_reason(30 * gb, 20 * gb, "large (48 x 2048)")
    assert reason == "large (48 x 2048) needs about 30.0 GB, the device has 20.0 GB free"
    # musicgen-large: ~3.3 B parameters; bf16 bench estimate fits an H200 (139 GiB), not a 24 GB card
    cfg = preset("large")
    params = costs.parameter_count(cfg)
    assert 3.2e9 < params < 3.4e9
    needed = costs.memory_needed(params, cfg, 4, 64, 2)
    assert 24 * gb < needed < 139 * 2**30
    assert costs.memory_needed(costs.parameter_count(preset("small")), preset("small"), 4, 64, 2) < needed


def test_a_shape_too_large_for_free_memory_is_skipped_with_its_reason(capsys, monkeypatch, tmp_path):
    import engine.device

    monkeypatch.setattr(engine.device, "free_memory", lambda device: 10**6)
    path = tmp_path / "decode.json"
    assert bench.run(_args("--shapes", "tiny", "--frames", "4", "--repeats", "1", "--json", str(path))) == 1
    out = capsys.readouterr().out
    assert re.search(r"\[tiny\] skipped: tiny \(2 x 64\) needs about \d+\.\d GB, the device has 0\.0 GB free", out)
    assert "skipped" in json.loads(path.read_text())["shapes"]["tiny"]


def test_out_of_memory_in_a_shape_skips_it(capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes")

    monkeypatch.setattr(bench, "run_shape", boom)
    assert bench.run(_args("--shapes", "tiny", "--frames", "4", "--repeats", "1")) == 1
    assert "[tiny] skipped: tiny: out of memory" in capsys.readouterr().out


def test_step_bytes_count_the_folded_cross_attention_and_the_cache():
    import torch

    from engine.model.config import preset

    cfg = preset("small")
    plain = costs.step_bytes(cfg, torch.bfloat16)
    folded = costs.step_bytes(cfg, torch.bfloat16, text_len=12, rows=2)
    assert folded < plain  # 2 rows x 16 heads x 12 tokens < 1024: the folded tensors are smaller than q/out
    assert costs.step_bytes(cfg, torch.bfloat16, text_len=12, rows=8) == plain  # 8 x 16 x 12 > 1024: not folded
    assert costs.cache_bytes(cfg, torch.bfloat16, rows=8, steps=67) == 4 * costs.cache_bytes(
        cfg, torch.bfloat16, rows=2, steps=67
    )


@pytest.mark.slow
def test_small_shape_reports_the_bandwidth_floor(capsys):
    lines = _run(capsys, "--shapes", "small", "--frames", "10", "--repeats", "1")
    text = "\n".join(lines)
    assert re.search(r"reads \d\.\d{3} GB/step: floor \d+\.\d{3} ms/step; ours \(eager\) at \d+\.\d\dx the floor", text)
    assert re.fullmatch(r"decode speedup vs transformers: \d+\.\d\d", lines[-1])


def test_no_checks_skips_the_agreement_checks_and_still_times_transformers(capsys, monkeypatch, tmp_path):
    # the decode-compile stage runs after the decode stage made these checks: its time goes to the compile
    def not_here(*args, **kwargs):
        raise AssertionError("a check ran under --no-checks")

    monkeypatch.setattr(bench, "greedy_agreement", not_here)
    monkeypatch.setattr(bench, "argmax_agreement", not_here)
    path = tmp_path / "decode.json"
    lines = _run(capsys, "--shapes", "tiny", "--frames", "6", "--repeats", "1", "--threads", "1", "--no-checks",
                 "--json", str(path))  # fmt: skip
    assert "  agreement checks skipped (--no-checks)" in lines
    assert re.fullmatch(r"decode speedup vs transformers: \d+\.\d\d", lines[-1])
    tiny = json.loads(path.read_text())["shapes"]["tiny"]
    assert tiny["checks"] is False and not {"greedy_agree_fp32", "argmax_agree", "graph_vs_eager_fp32"} & set(tiny)
    assert tiny["fast"]["1"]["transformers"]["ms_per_step"] > 0  # the speedup's reference


def test_a_shape_keeps_its_figures_so_far_when_a_later_measurement_dies(capsys, monkeypatch, tmp_path):
    # gpu_check kills a stage at its timeout: the JSON holds every measurement made before, marked partial, and the
    # log each first call (a compile) as soon as it was timed
    path = tmp_path / "decode.json"
    time_batch = bench.time_batch
    seen = {}

    def dies_at_batch_4(*args, **kwargs):
        if kwargs["batch"] == 4:
            seen.update(json.loads(path.read_text())["shapes"]["tiny"])
            raise RuntimeError("killed")
        return time_batch(*args, **kwargs)

    monkeypatch.setattr(bench, "time_batch", dies_at_batch_4)
    argv = ["--shapes", "tiny", "--frames", "6", "--repeats", "1", "--threads", "1", "--dtype", "float32", "--batches",
            "1,4", "--json", str(path)]  # fmt: skip
    assert bench.run(_args(*argv)) == 1
    out = capsys.readouterr().out
    assert "  ... batch 1 fp32, transformers: first call" in out and "  ... batch 1 fp32, eager: first call" in out
    assert seen["partial"] is True and seen["greedy_agree_fp32"] == 1.0
    assert seen["fast"]["1"]["eager"]["ms_per_step"] > 0 and seen["fast"]["1"]["transformers"]["first_call_s"] > 0
    final = json.loads(path.read_text())["shapes"]["tiny"]
    assert final["error"] == "RuntimeError: killed" and final["partial"] is True and "1" in final["fast"]


def _cuda_modes_on_cpu(monkeypatch, skips_per_read: int = 0):
    """The CUDA step modes on CPU: graph and compile run the plain static step (what both compile or capture on
    CUDA); Inductor's CUDA-graph skip counter goes up `skips_per_read` each time it is read."""
    import itertools

    from engine.editor import DECODE_STEPS

    monkeypatch.setattr(bench, "_static", lambda mode, device: DECODE_STEPS[mode])
    reads = itertools.count(0, skips_per_read)
    monkeypatch.setattr(bench, "cudagraph_skips", lambda: next(reads))


def test_fast_steps_are_teacher_forced_against_eager_and_floored_at_their_capacity(monkeypatch):
    import torch

    _cuda_modes_on_cpu(monkeypatch)
    args = _args("--frames", "8", "--repeats", "1", "--threads", "1", "--dtype", "float32")
    modes = ["eager", "graph", "compile"]
    r = bench.run_shape("tiny", args, torch.float32, torch.device("cpu"), [1], modes)
    entry = r["fast"][1]
    assert set(entry["teacher_forced"]) == {"graph", "compile"}
    for check in entry["teacher_forced"].values():
        # fp32, the same function: the static step's logits are the eager step's up to rounding
        assert check["ok"] and check["top1_agree"] > 0.99 and check["max_abs_dlogit"] < 1e-3
        assert [call["frames"] for call in check["calls"]] == [8, 6]  # two lengths (and two instructions)
    assert entry["compile"]["cudagraph_skips"] == 0 and "cudagraph_skips" not in entry["graph"]
    assert bench.untrusted_steps(r, modes) == []
    # a static step reads its whole workspace (256 positions here) every step and its text padded to 16 tokens; the
    # eager one its filled cache and its 12 tokens
    cfg, steps, fp32 = r["cfg"], entry["steps"], torch.float32
    static = costs.step_bytes(cfg, fp32, 16, 2) + costs.cache_bytes(cfg, fp32, 2, steps, capacity=256)
    assert entry["graph"]["step_bytes"] == entry["compile"]["step_bytes"] == static
    assert entry["eager"]["step_bytes"] == costs.step_bytes(cfg, fp32, 12, 2) + costs.cache_bytes(cfg, fp32, 2, steps)


def test_a_compile_without_cuda_graphs_fails_the_shape_loudly(capsys, monkeypatch, tmp_path):
    # Inductor only logs a CUDA-graph skip (and counts it): the compiled step then runs launch by launch under the
    # compile row's name; here the counter rises while the (on CPU, eager-as-compiled) step runs
    from engine.editor import DECODE_STEPS

    _cuda_modes_on_cpu(monkeypatch, skips_per_read=2)
    monkeypatch.setattr(bench, "_static", lambda mode, device: DECODE_STEPS["compile"])
    path = tmp_path / "decode.json"
    argv = ["--shapes", "tiny", "--frames", "6", "--repeats", "1", "--threads", "1", "--dtype", "float32", "--json",
            str(path)]  # fmt: skip
    assert bench.run(_args(*argv)) == 1
    out = capsys.readouterr().out
    assert re.search(r"\[tiny\] FAILED: batch 1: torch.compile skipped CUDA graphs 2 time\(s\)", out)
    tiny = json.loads(path.read_text())["shapes"]["tiny"]
    assert tiny["fast"]["1"]["eager"]["cudagraph_skips"] == 2 and tiny["failed"]


def test_the_teacher_forced_verdict_tells_rounding_from_another_function():
    assert bench.teacher_forced_ok(1.0) and bench.teacher_forced_ok(0.96)  # rounding: a few percent flip
    assert not bench.teacher_forced_ok(0.64)  # the same step given another instruction (small shape, bf16)
    entry = {"transformers": {}, "graph": {}, "teacher_forced": {"graph": {"top1_agree": 0.5, "ok": False}}}
    (reason,) = bench.untrusted_steps({"fast": {1: entry, 4: {"skipped": "oom"}}}, ["graph"])
    assert "graph step's logits are not the eager step's" in reason and "0.5000" in reason


def test_a_step_fed_a_wrong_history_fails_the_teacher_forced_check(monkeypatch):
    # what a stale cache looks like: the fast step decodes another history than the eager one (the tiny random model
    # hardly listens to its history: 0.79 of its argmaxes stay; a real shape's far fewer)
    import torch

    _cuda_modes_on_cpu(monkeypatch)
    run_ours = bench.run_ours
    other = torch.Generator().manual_seed(9)

    def stale(*args, teacher=None, **kwargs):
        if teacher is not None:
            teacher = torch.randint(0, 2048, teacher.shape, generator=other)
        return run_ours(*args, teacher=teacher, **kwargs)

    monkeypatch.setattr(bench, "run_ours", stale)
    hf, lm = bench.build_pair("tiny")
    check = bench.teacher_forced(hf, lm, ["graph"], batch=1, lengths=(12, 9), text_len=12)["graph"]
    assert not check["ok"] and check["top1_agree"] < bench.TEACHER_FORCED_MIN_TOP1


def test_the_floor_of_each_mode_counts_the_bytes_it_reads():
    import torch

    from engine.model.config import preset

    cfg = preset("small")
    # a static workspace of 256 positions is read whole every step: for 64 frames (67 steps) about 7.6x the mean
    # filled length of an eager step
    assert costs.cache_bytes(cfg, torch.bfloat16, rows=2, steps=67, capacity=256) == 2 * 2 * 24 * 256 * 1024 * 2
    assert costs.cache_bytes(cfg, torch.bfloat16, rows=2, steps=67) == 2 * 2 * 24 * 34 * 1024 * 2
    entry = {"transformers": {"ms_per_step": 6.0}, "eager": {"ms_per_step": 2.0, "step_bytes": 10**9},
             "graph": {"ms_per_step": 1.5, "step_bytes": 1.2 * 10**9}}  # fmt: skip
    assert not costs.add_floor({"fast": {1: entry}}, 1000.0, ["eager", "graph"])
    assert entry["eager"]["floor_ms"] == pytest.approx(1.0) and entry["eager"]["x_floor"] == pytest.approx(2.0)
    assert entry["graph"]["floor_ms"] == pytest.approx(1.2) and entry["graph"]["x_floor"] == pytest.approx(1.25)
    # the row the summary reads is the fastest mode's, against its own bytes
    assert entry["fastest"] == "graph" and entry["x_floor"] == pytest.approx(1.25)
    assert entry["floor_ms"] == pytest.approx(1.2) and entry["speedup_same_dtype"] == pytest.approx(4.0)
    entry["graph"]["ms_per_step"] = 1.1  # under its own floor: the bandwidth sample was disturbed
    assert costs.add_floor({"fast": {1: entry}}, 1000.0, ["eager", "graph"])


def test_the_check_that_batched_takes_draw_as_alone_passes_here_and_can_fail(monkeypatch):
    import torch

    from engine.model import generate
    from engine.tools.bench import rows_draw_alone

    assert rows_draw_alone(torch.device("cpu"), draws=5) == 1.0
    real = generate.sample

    def one_stream(logits, *, generator=None, **kwargs):  # every row drawn from the first row's generator
        return real(logits, generator=generator[0] if isinstance(generator, list) else generator, **kwargs)

    monkeypatch.setattr(generate, "sample", one_stream)
    assert rows_draw_alone(torch.device("cpu"), draws=5) < 0.9
