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
