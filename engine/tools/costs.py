"""What a decode step costs and what this device gives: the bytes one step must read (weights, folded
cross-attention, KV cache), the bandwidths the device reads them at, the step's floor, and whether a shape fits in
memory. `imusic bench decode` (bench.py) measures against these."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from engine.model.config import LMConfig

GB = 1e9


def synchronize(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn, repeats: int, device: torch.device | None = None) -> float:
    """Best wall time of `repeats` calls of fn (the device drained before and after each)."""
    import torch

    device = device or torch.device("cpu")
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def copy_bandwidth(
    dim: int, ffn_dim: int, total_bytes: float, dtype: torch.dtype, repeats: int, device: Any = "cpu"
) -> float:
    """GB/s of batch-2 linears over distinct weights totalling `total_bytes` (the decode step's access pattern)."""
    import torch

    device = torch.device(device)
    element = torch.tensor([], dtype=dtype).element_size()
    count = max(1, int(total_bytes // (dim * ffn_dim * element)))
    weights = [torch.empty(ffn_dim, dim, dtype=dtype, device=device).normal_() for _ in range(count)]
    x = torch.randn(2, dim, dtype=dtype, device=device)

    def sweep():
        for w in weights:
            torch.nn.functional.linear(x, w)

    sweep()
    seconds = best_seconds(sweep, repeats, device)
    return count * dim * ffn_dim * element / seconds / GB


def device_copy_bandwidth(total_bytes: float, repeats: int, device: Any = "cpu") -> float:
    """GB/s of one device-to-device copy of `total_bytes` (bytes read + written, as STREAM's copy counts them)."""
    import torch

    device = torch.device(device)
    count = max(1, int(total_bytes // 4))
    src = torch.empty(count, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = best_seconds(lambda: dst.copy_(src), repeats, device)
    return 2 * count * 4 / seconds / GB


def step_bytes(cfg: LMConfig, dtype: torch.dtype, text_len: int | None = None, rows: int = 2) -> int:
    """Weight bytes one decode step reads: self-attn q,k,v,out + cross q,out + FFN per layer, plus the heads.

    With `text_len`, the cross q/out projections count as the folded tensors the loop reads instead when it folds
    them (rows * heads * text_len <= dim: engine.model.fast_decode.prepare_decode)."""
    import torch

    from engine.device import decode_weight_count

    count = decode_weight_count(cfg)
    if text_len is not None and rows * cfg.num_heads * text_len <= cfg.dim:
        count += cfg.num_layers * (2 * rows * cfg.num_heads * text_len * cfg.dim - 2 * cfg.dim * cfg.dim)
    return torch.tensor([], dtype=dtype).element_size() * count


def cache_bytes(cfg: LMConfig, dtype: torch.dtype, rows: int, steps: int, capacity: int | None = None) -> int:
    """KV-cache bytes a step reads on average over a generation of `steps` steps (keys and values, every layer): the
    filled positions, as the eager step slices them; with `capacity`, that many every step, as a static step's masked
    attention reads its whole workspace (engine.model.static_decode.capacity)."""
    import torch

    positions = (steps + 1) / 2 if capacity is None else capacity
    element = torch.tensor([], dtype=dtype).element_size()
    return int(2 * rows * cfg.num_layers * positions * cfg.dim * element)


def parameter_count(cfg: LMConfig) -> int:
    """Parameters of the plain decoder of `cfg` (counted on the meta device: nothing allocated)."""
    import torch

    from engine.model.lm import MusicGenLM

    with torch.device("meta"):
        return MusicGenLM(cfg).num_parameters()


def memory_needed(params: int, cfg: LMConfig, batch: int, frames: int, fast_bytes: int) -> int:
    """Bytes the decode bench of one shape holds at its peak, an upper bound: the fp32 weights it is built in, the
    transformers and our copies in the fast dtype, the fp32 copy of the rounded weights (argmax agreement), the KV
    caches of both loops (CFG rows) and 4 GB of bandwidth buffers and workspace."""
    rows = 2 * batch
    steps = frames + cfg.num_codebooks
    cache = 2 * rows * cfg.num_layers * steps * cfg.dim * 4  # k and v, fp32 at worst, ours and theirs
    return params * (4 + 2 * fast_bytes + 4) + 2 * cache + 4 * 10**9


def fit_reason(needed: int, free: int, what: str) -> str | None:
    """None when `needed` bytes fit in `free`; else why `what` is skipped (the decision, apart for tests)."""
    if needed <= free:
        return None
    return f"{what} needs about {needed / GB:.1f} GB, the device has {free / GB:.1f} GB free"


def fastest(entry: dict, modes: list[str]) -> tuple[str, dict] | None:
    """(mode, figures) of the step mode with the lowest ms/step among `modes` in a batch's figures; None if none ran."""
    timed = [(mode, entry[mode]) for mode in modes if mode in entry]
    return min(timed, key=lambda item: item[1]["ms_per_step"]) if timed else None


def add_floor(r: dict, bandwidth_gb_s: float, modes: list[str]) -> bool:
    """Put each step mode's floor (the bytes it reads per step, its `step_bytes`, at the measured bandwidth) and how
    far above it the mode ran into its figures, and the fastest mode's (`step_bytes`, `floor_ms`, `x_floor`) and the
    speedups into each timed batch of a shape's figures; True when a step ran under its floor (the bandwidth sample
    was disturbed)."""
    disturbed = False
    for entry in r["fast"].values():
        if "skipped" in entry:
            continue
        for mode in modes:
            if mode in entry:
                figures = entry[mode]
                figures["floor_ms"] = figures["step_bytes"] / (bandwidth_gb_s * GB) * 1e3
                figures["x_floor"] = figures["ms_per_step"] / figures["floor_ms"]
                disturbed |= figures["x_floor"] < 1
        mode, best = fastest(entry, modes)
        entry["fastest"] = mode
        entry["step_bytes"], entry["floor_ms"], entry["x_floor"] = best["step_bytes"], best["floor_ms"], best["x_floor"]
        entry["speedup_same_dtype"] = entry["transformers"]["ms_per_step"] / best["ms_per_step"]
    return disturbed
