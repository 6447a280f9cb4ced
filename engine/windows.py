"""Overlapping windows over a long input and the crossfaded join of their outputs: pure functions of lengths.

The model conditions on at most one adapter window of input (cond_frames - 1 codec frames: 10 s of positions for the
official adapter, which trained on 5 s clips, so the Editor's windows are 5 s there). Longer audio is cut into windows
of at most that length, each overlapping the previous one by `overlap` frames. Window i is generated with the previous
window's generated tokens over the overlap forced as its first frames (generate(prompt_codes=...)), so the token streams
agree there and the decoded audio of both windows is nearly the same signal; a raised-cosine crossfade across the
overlap removes what codec edge effects remain.
No gaps and no clicks, unlike disjoint chunks (the official code leaves gaps past one window).

Units: windows are planned in codec frames; `join` works in samples (frames x hop), like Demucs' apply.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """Frames [start, end) of the input; the first `prompt` frames are shared with (forced from) the previous window."""

    start: int
    end: int
    prompt: int = 0

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def new(self) -> int:
        """Frames this window generates itself (not forced from the previous one)."""
        return self.length - self.prompt


def plan_windows(total: int, window: int, overlap: int) -> list[Window]:
    """Cover frames [0, total) with windows of at most `window` frames, consecutive ones sharing `overlap` frames.

    Windows are all `window` long except the last, which ends at `total` and may be shorter (cheaper than
    re-generating a wide overlap). One window when total <= window; none when total == 0.
    """
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap must be in [0, window), got {overlap} for window {window}")
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    windows: list[Window] = []
    start = 0
    while start < total:
        end = min(start + window, total)
        prompt = windows[-1].end - start if windows else 0
        windows.append(Window(start, end, prompt))
        if end == total:
            break
        start = end - overlap
    return windows


def fade_in(length: int) -> np.ndarray:
    """Raised-cosine ramp 0 -> 1 over `length` samples; fade_in(n) + fade_in(n)[::-1] == 1 exactly."""
    # Samples at half-integer positions make the ramp and its mirror sum to 1 and never reach exactly 0 or 1.
    phase = (np.arange(length, dtype=np.float64) + 0.5) / max(length, 1)
    return 0.5 - 0.5 * np.cos(np.pi * phase)


def join_weights(starts: list[int], lengths: list[int], total: int) -> list[np.ndarray]:
    """Per-segment weights [length_i] for segments placed at `starts`: they sum to 1 over [0, total).

    Consecutive segments must overlap or touch (no gaps), and only neighbours may overlap (no sample covered by
    three segments); the first must start at 0 and the last reach `total`. Each overlap gets a crossfade.
    """
    if len(starts) != len(lengths):
        raise ValueError("starts and lengths differ in length")
    if not starts:
        if total:
            raise ValueError("no segments to cover a non-empty range")
        return []
    if starts[0] != 0 or starts[-1] + lengths[-1] < total:
        raise ValueError("segments must cover [0, total)")
    weights = [np.ones(n, dtype=np.float64) for n in lengths]
    for i in range(1, len(starts)):
        prev_end = starts[i - 1] + lengths[i - 1]
        overlap = prev_end - starts[i]
        if overlap < 0:
            raise ValueError(f"gap between segment {i - 1} and {i}")
        if i >= 2 and starts[i] < starts[i - 2] + lengths[i - 2]:
            raise ValueError(f"segment {i} overlaps segment {i - 2}")
        if overlap > min(lengths[i - 1], lengths[i]):
            raise ValueError(f"segment {i} overlaps past an end of its neighbour")
        if overlap:
            ramp = fade_in(overlap)
            weights[i][:overlap] *= ramp
            weights[i - 1][lengths[i - 1] - overlap :] *= 1.0 - ramp
    return weights


def join(segments: list[np.ndarray], starts: list[int], total: int) -> np.ndarray:
    """Overlap-add segments [..., L_i] placed at `starts` with crossfades into one array [..., total]."""
    lengths = [seg.shape[-1] for seg in segments]
    weights = join_weights(starts, lengths, total)
    lead = segments[0].shape[:-1] if segments else ()
    dtype = segments[0].dtype if segments else np.float32
    out = np.zeros((*lead, total), dtype=np.float64)
    for seg, start, weight in zip(segments, starts, weights, strict=True):
        end = min(start + seg.shape[-1], total)
        out[..., start:end] += seg[..., : end - start] * weight[: end - start]
    return out.astype(dtype, copy=False)
