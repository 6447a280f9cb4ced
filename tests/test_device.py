"""engine.device.pick: the accelerator and its fast precision, overrides honoured."""

from __future__ import annotations

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


def test_cpu_bf16_flag_matches_proc_cpuinfo():
    device_mod.cpu_has_native_bf16.cache_clear()
    try:
        with open("/proc/cpuinfo") as handle:
            text = handle.read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    expected = "avx512_bf16" in text or "amx_bf16" in text
    assert device_mod.cpu_has_native_bf16() is expected
