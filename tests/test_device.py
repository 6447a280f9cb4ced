"""engine.device.pick: the accelerator and its fast precision, overrides honoured."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from engine import device as device_mod
from engine.errors import ConfigError


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_cpu_with_native_bf16_runs_in_bf16(no_gpu, monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    assert device_mod.pick() == (torch.device("cpu"), torch.bfloat16)


def test_cpu_without_native_bf16_runs_in_fp32(no_gpu, monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    assert device_mod.pick() == (torch.device("cpu"), torch.float32)


def test_cuda_with_bf16_is_preferred_in_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert device_mod.pick() == (torch.device("cuda"), torch.bfloat16)


def test_cuda_without_bf16_falls_back_to_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert device_mod.pick() == (torch.device("cuda"), torch.float16)


def test_mps_runs_in_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device_mod.pick() == (torch.device("mps"), torch.float16)


def test_dtype_override_is_honoured(no_gpu, monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    assert device_mod.pick(dtype="fp32") == (torch.device("cpu"), torch.float32)
    assert device_mod.pick("cpu", torch.float16) == (torch.device("cpu"), torch.float16)


def test_device_override_is_honoured_even_when_a_gpu_exists(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    assert device_mod.pick(device="cpu") == (torch.device("cpu"), torch.float32)


def test_missing_cuda_is_a_config_error(no_gpu):
    with pytest.raises(ConfigError, match="CUDA"):
        device_mod.pick(device="cuda")


def test_unknown_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="bf16"):
        device_mod.pick(device="cpu", dtype="int3")


def test_unknown_device_is_a_config_error():
    with pytest.raises(ConfigError):
        device_mod.pick(device="tpu")


@pytest.mark.parametrize(
    "cpuinfo, native",
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx2\n", True),
        ("processor\t: 0\nflags\t\t: fpu amx_tile amx_bf16\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx2\n", False),  # AVX-512 alone has no bf16 matrix ops
        ("model name\t: avx512_bf16 in a name\nflags\t\t: fpu sse2\n", False),  # only the flags line counts
        (OSError("no /proc"), False),
    ],
)
def test_cpu_bf16_is_read_from_the_flags_line_of_proc_cpuinfo(monkeypatch, cpuinfo, native):
    import io

    def fake_open(path, *args, **kwargs):
        assert path == "/proc/cpuinfo"
        if isinstance(cpuinfo, OSError):
            raise cpuinfo
        return io.StringIO(cpuinfo)

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(device_mod, "open", fake_open, raising=False)
    device_mod.cpu_has_native_bf16.cache_clear()
    try:
        assert device_mod.cpu_has_native_bf16() is native
    finally:
        device_mod.cpu_has_native_bf16.cache_clear()


def test_cpu_keeps_a_small_decoder_in_fp32_even_with_native_bf16(no_gpu, monkeypatch):
    # small decoders are bound by per-op overhead, where bf16 ops are slower (measured: tiny 0.43 vs 0.86 ms/step)
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    small = device_mod.SMALL_DECODER_BYTES // 4 - 1
    assert device_mod.pick(weight_count=small) == (torch.device("cpu"), torch.float32)


def test_cpu_runs_a_big_decoder_in_bf16_where_native(no_gpu, monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    big = device_mod.SMALL_DECODER_BYTES // 4
    assert device_mod.pick(weight_count=big) == (torch.device("cpu"), torch.bfloat16)
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    assert device_mod.pick(weight_count=big) == (torch.device("cpu"), torch.float32)


def test_one_size_decides_a_cpu_decoders_precision_and_its_threads(no_gpu, monkeypatch):
    # a decoder of 1.5x the bound used to get bf16 (counted in fp32 bytes) and one thread (counted in bf16 bytes)
    from engine.model import generate

    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    bound = device_mod.SMALL_DECODER_BYTES // 4
    for count in (bound - 1, bound, bound * 3 // 2):
        lm = SimpleNamespace(device=torch.device("cpu"), cfg="cfg")
        monkeypatch.setattr(generate, "decode_weight_count", lambda cfg, count=count: count)
        fp32 = device_mod.pick(weight_count=count)[1] == torch.float32
        assert fp32 == (generate.decode_threads(lm) == 1) == (count < bound)


def test_a_small_decoder_on_a_gpu_keeps_the_gpu_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert device_mod.pick(weight_count=1000) == (torch.device("cuda"), torch.bfloat16)


def test_an_explicit_dtype_wins_over_the_size_rule(no_gpu, monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    assert device_mod.pick(dtype="bf16", weight_count=1000) == (torch.device("cpu"), torch.bfloat16)


def test_decode_weight_count_counts_the_weights_a_step_reads():
    from engine.model.config import preset

    cfg = preset("small")  # 24 x 1024, FFN 4096, 4 heads of 2048 codes
    per_layer = 6 * 1024 * 1024 + 2 * 1024 * 4096  # self q,k,v,out + cross q,out; fc1 + fc2
    assert device_mod.decode_weight_count(cfg) == 24 * per_layer + 4 * 1024 * 2048


def test_load_model_picks_the_cpu_dtype_by_decoder_size(tiny_model_dir, no_gpu, monkeypatch):
    from engine.weights import load_model

    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    assert load_model(tiny_model_dir).dtype == torch.float32  # the tiny test model is far under the bound
    monkeypatch.setattr(device_mod, "SMALL_DECODER_BYTES", 0)
    model = load_model(tiny_model_dir)
    assert model.dtype == torch.bfloat16 and model.lm.emb[0].weight.dtype == torch.bfloat16


def test_the_device_name_says_what_a_model_card_or_benchmark_ran_on(no_gpu):
    import os

    name = device_mod.device_name("cpu")
    assert name.startswith("CPU (") and name.endswith(f", {os.cpu_count()} cores)")
