"""The set-up installs the torch build that fits the machine, and says which (bridge/torch_setup.py)."""

from __future__ import annotations

import subprocess
import sys

from bridge import torch_setup
from bridge.torch_setup import CPU_INDEX, choose


def test_a_torch_already_installed_is_kept_whatever_its_build():
    choice = choose("2.6.0 (CUDA 12.4)", gpu=True, cpu_wheel="2.13.0", system="Linux")
    assert choice.pip_args == () and "2.6.0 (CUDA 12.4) is already installed: kept" in choice.reason


def test_a_machine_with_an_nvidia_gpu_gets_pypis_cuda_build_with_no_ceiling():
    choice = choose(None, gpu=True, cpu_wheel=None, system="Linux")
    assert choice.pip_args == ("install", "torch>=2.4") and "CUDA" in choice.reason


def test_a_cpu_only_linux_machine_gets_the_cpu_index_never_pypis_cuda_build():
    choice = choose(None, gpu=False, cpu_wheel=None, system="Linux")
    assert choice.pip_args == ("install", "torch>=2.4", "--index-url", CPU_INDEX)


def test_a_local_cpu_wheel_is_used_without_a_download():
    choice = choose(None, gpu=False, cpu_wheel="2.13.0", system="Linux")
    assert choice.pip_args == ("install", "torch==2.13.0") and "local wheel folder" in choice.reason


def test_macos_takes_pypis_build_which_is_the_cpu_one_there():
    assert choose(None, gpu=False, cpu_wheel=None, system="Darwin").pip_args == ("install", "torch>=2.4")


def test_the_local_wheel_must_match_this_python(tmp_path):
    for name in ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "torch-2.14.1+cpu-cp312-cp312-x.whl"):
        (tmp_path / name).write_bytes(b"")
    assert torch_setup.local_cpu_wheel([str(tmp_path)], "cp311") == "2.13.0"
    assert torch_setup.local_cpu_wheel([str(tmp_path)], "cp310") is None


def test_the_command_says_what_it_chose_and_dry_run_installs_nothing(monkeypatch, capsys):
    fake_cpu_only_linux(monkeypatch)
    monkeypatch.setattr(torch_setup.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    assert torch_setup.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("torch set-up: no GPU: the CPU build from https://download.pytorch.org/whl/cpu")
    assert f"{sys.executable} -m pip install torch>=2.4 --index-url {CPU_INDEX}" in out


def fake_cpu_only_linux(monkeypatch) -> None:
    monkeypatch.setattr(torch_setup, "installed_torch", lambda python: None)
    monkeypatch.setattr(torch_setup, "has_nvidia_gpu", lambda: False)
    monkeypatch.setattr(torch_setup, "find_links", lambda: [])
    monkeypatch.setattr(torch_setup.platform, "system", lambda: "Linux")
    monkeypatch.delenv("IMUSIC_TORCH_CPU_INDEX", raising=False)


def test_a_mirror_of_the_cpu_index_can_be_named(monkeypatch, capsys):
    fake_cpu_only_linux(monkeypatch)
    monkeypatch.setenv("IMUSIC_TORCH_CPU_INDEX", "http://mirror.example/whl/cpu")
    assert torch_setup.main(["--dry-run"]) == 0
    assert "pip install torch>=2.4 --index-url http://mirror.example/whl/cpu" in capsys.readouterr().out


def test_a_failed_install_says_what_to_do_next(monkeypatch, capsys):
    fake_cpu_only_linux(monkeypatch)
    ran = []
    monkeypatch.setattr(
        torch_setup.subprocess,
        "run",
        lambda command, **k: ran.append(command) or subprocess.CompletedProcess(command, 1),
    )
    assert torch_setup.main([]) == 1
    assert ran and ran[0][-3:] == ["--index-url", CPU_INDEX, "-q"]
    err = capsys.readouterr().err
    assert "pip could not install torch (exit 1)" in err and "IMUSIC_TORCH_CPU_INDEX" in err
