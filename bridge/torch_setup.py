"""Install the right PyTorch build before the project: `python -m bridge.torch_setup [--dry-run]`.

Run with the interpreter that will run the engine (the Makefile runs it with the venv's python). It says what it chose
and why, then runs pip:
- a torch already importable there is kept, whatever its build (a user's CUDA or ROCm build stays);
- an NVIDIA GPU (`nvidia-smi -L` lists one): PyPI's default Linux build, which is the CUDA one;
- otherwise the CPU build: a CPU wheel already in pip's find-links folders (no download), else PyTorch's CPU index
  (download.pytorch.org/whl/cpu, or the mirror of it that IMUSIC_TORCH_CPU_INDEX names), never PyPI's default build,
  which on Linux pulls several GB of CUDA libraries.
  macOS and Windows: PyPI's build is already the CPU (and MPS) one.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_INDEX_ENV = "IMUSIC_TORCH_CPU_INDEX"  # a mirror of PyTorch's CPU index (a company proxy, an offline copy)
REQUIREMENT = "torch>=2.4"  # the project's own floor (pyproject.toml)


@dataclass(frozen=True)
class Choice:
    reason: str  # one line for the user
    pip_args: tuple[str, ...]  # what to give `python -m pip`; () when nothing is installed


def installed_torch(python: str) -> str | None:
    """'2.13.0+cpu (CPU)' / '2.5.1 (CUDA 12.4)' for the torch `python` imports, None when it has none."""
    code = "import torch; print(torch.__version__, torch.version.cuda or '')"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or not done.stdout.strip():
        return None
    version, _, cuda = done.stdout.strip().partition(" ")
    return f"{version} ({'CUDA ' + cuda if cuda else 'CPU'})"


def has_nvidia_gpu() -> bool:
    """True when the NVIDIA driver lists at least one GPU."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and "GPU" in done.stdout


def find_links() -> list[str]:
    """pip's find-links folders: PIP_FIND_LINKS and pip's configuration."""
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
        )
        for line in done.stdout.splitlines():
            key, _, value = line.partition("=")
            if key.endswith("find-links"):
                folders += value.strip().strip("'\"").split()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return list(dict.fromkeys(f for f in folders if f and "://" not in f))


def local_cpu_wheel(folders: list[str], python_tag: str) -> str | None:
    """The newest torch CPU wheel for this Python in `folders` (its version), None when there is none."""
    versions = []
    for folder in folders:
        for path in glob.glob(os.path.join(folder, f"torch-*+cpu-{python_tag}-*.whl")):
            match = re.match(r"torch-([0-9.]+)\+cpu-", os.path.basename(path))
            if match:
                versions.append(tuple(int(p) for p in match.group(1).split(".")))
    return ".".join(map(str, max(versions))) if versions else None


def choose(installed: str | None, gpu: bool, cpu_wheel: str | None, system: str, cpu_index: str = CPU_INDEX) -> Choice:
    """The decision, from plain facts (tested without any of them being true here)."""
    if installed:
        return Choice(f"torch {installed} is already installed: kept", ())
    if gpu:
        return Choice("an NVIDIA GPU is present: PyPI's CUDA build of torch", ("install", REQUIREMENT))
    if system != "Linux":
        return Choice(f"no NVIDIA GPU, {system}: PyPI's torch (CPU build there)", ("install", REQUIREMENT))
    if cpu_wheel:
        return Choice(
            f"no GPU: the CPU build torch {cpu_wheel} from the local wheel folder", ("install", f"torch=={cpu_wheel}")
        )
    return Choice(f"no GPU: the CPU build from {cpu_index}", ("install", REQUIREMENT, "--index-url", cpu_index))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.torch_setup", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="say what would be installed, install nothing")
    args = parser.parse_args(argv)
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    cpu_index = os.environ.get(CPU_INDEX_ENV, "").strip() or CPU_INDEX
    choice = choose(
        installed_torch(sys.executable),
        has_nvidia_gpu(),
        local_cpu_wheel(find_links(), tag),
        platform.system(),
        cpu_index,
    )
    command = [sys.executable, "-m", "pip", *choice.pip_args] if choice.pip_args else []
    print(f"torch set-up: {choice.reason}" + (f"\n  {' '.join(command)}" if command else ""), flush=True)
    if args.dry_run or not command:
        return 0
    returncode = subprocess.run([*command, "-q"]).returncode
    if returncode != 0:
        print(
            f"torch set-up: pip could not install torch (exit {returncode}); install a torch build yourself and run "
            f"again (it is kept), or name a reachable mirror of PyTorch's CPU index in {CPU_INDEX_ENV}",
            file=sys.stderr,
        )
    return returncode


if __name__ == "__main__":
    raise SystemExit(main())
