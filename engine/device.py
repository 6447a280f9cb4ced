"""Pick the device and dtype the model runs in: the user's accelerator, in its fast precision.

CUDA: bf16 (fp16 where the GPU has no bf16). Apple MPS: fp16. CPU: bf16 where the CPU computes it natively
(AVX-512 BF16 or AMX) and the decoder is big enough for weight streaming to bound a decode step (bf16 halves the
bytes), fp32 otherwise: a small decoder is bound by per-op overhead, and there bf16 ops are the slower ones (tiny
2 x 64 model on this machine: 0.43 ms/step fp32, 0.86 ms/step bf16). Explicit `device` / `dtype` always win.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.model.config import LMConfig

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}

# /proc/cpuinfo flags that mean bf16 matrix products run in hardware, not emulated.
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# A decoder reading fewer fp32 weight bytes per step than this is small: on a CPU per-op overhead, not bandwidth,
# sets its speed, so it decodes in fp32 even where bf16 is native (default_dtype) and on one thread
# (generate.decode_threads).
SMALL_DECODER_BYTES = 64 * 2**20


def decode_weight_count(cfg: LMConfig) -> int:
    """Weights one decode step of an LMConfig reads: self-attention q, k, v, out, cross q, out and the FFN per layer,
    plus the heads (cross k/v are computed once per text; embeddings are a gather)."""
    per_layer = 6 * cfg.dim * cfg.dim + 2 * cfg.dim * cfg.ffn_dim
    return cfg.num_layers * per_layer + cfg.num_codebooks * cfg.dim * cfg.card


def small_decoder(weight_count: int) -> bool:
    """Whether a decoder reading `weight_count` weights per step is small (SMALL_DECODER_BYTES, counted in fp32 whatever
    its dtype: one size decides both its precision and its threads)."""
    return weight_count * 4 < SMALL_DECODER_BYTES


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Turn "bf16" / "float32" / torch.float16 ... into a torch.dtype; None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: use one of float32, bfloat16, float16 (or fp32, bf16, fp16)")
    return _DTYPES[key]


def parse_device(device: str | torch.device | None) -> torch.device | None:
    """Turn "cpu" / "cuda:1" / "mps" into a torch.device, checking that it exists on this machine."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                why = f"torch {torch.__version__} built without CUDA"
            else:
                why = f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
            raise ConfigError(f"no CUDA device here ({why})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError("device 'mps' was asked for but Apple MPS is not available on this machine")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}: use cpu, cuda, cuda:N or mps")
    return dev


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU thread count set to `threads` for the block and restored after; None leaves it as it is."""
    previous = torch.get_num_threads()
    if threads and threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads and threads != previous:
            torch.set_num_threads(previous)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity: a VM or container may show the host's count in
    os.cpu_count()), for sizing worker pools."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def device_name(device: str | torch.device) -> str:
    """The accelerator's name and memory, or the CPU's and its cores: for benchmark output and model cards."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(dev)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    if dev.type == "mps":
        return "Apple MPS"
    return f"CPU ({platform.processor() or platform.machine()}, {usable_cores()} cores)"


def to_device(tensor: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """`tensor` on `device` without waiting for it: a CPU tensor bound for CUDA goes through pinned memory,
    asynchronously (a copy from pageable memory first waits for everything queued on the device); elsewhere a plain
    move. The training loops feed every batch through it."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def free_memory(device: str | torch.device) -> int:
    """Bytes the device can still allocate: CUDA's free memory, or the machine's available RAM."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception means the device ran out of memory: torch.OutOfMemoryError (CUDA), or a RuntimeError
    saying so (MPS; torch's CPU allocator says "DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(exc, (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError)):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX-512 BF16 or AMX), read from /proc/cpuinfo."""
    if not sys.platform.startswith("linux"):
        # macOS/Windows: no cheap reliable flag; fp32 is the safe default there.
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return any(flag in flags for flag in _CPU_BF16_FLAGS)
    except OSError:
        pass
    return False


def default_dtype(device: torch.device, weight_count: int | None = None) -> torch.dtype:
    """The fast precision of `device` for a decoder reading `weight_count` weights per step (None: unknown, big)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    if weight_count is not None and small_decoder(weight_count):
        return torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def default_device() -> torch.device:
    """CUDA if present, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def training_device(device: str | torch.device | None) -> torch.device:
    """Where a training run goes: the device asked for (checked), else the best available (default_device). One rule
    for every stage, the codec's included, from the command line, the recipe and the Python API."""
    return parse_device(device) or default_device()


def pick(
    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None, weight_count: int | None = None
) -> tuple[torch.device, torch.dtype]:
    """Return (device, dtype) to run in; each argument, when given, overrides the automatic choice.

    `weight_count` (decode_weight_count of the decoder, when known) lets a CPU keep small models in fp32."""
    dev = parse_device(device) or default_device()
    dt = parse_dtype(dtype) or default_dtype(dev, weight_count)
    return dev, dt
