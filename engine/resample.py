"""Sample-rate conversion for the edges of the engine: polyphase FIR (scipy.signal.resample_poly), time-aligned.

resample_poly filters with a linear-phase (zero-delay, centred) Kaiser-windowed FIR, so sample n of the output lies at
time n / to_rate exactly: a round trip keeps every event where it was. Lengths are made exact here (round(N * to /
from) samples) because callers must hand back as many samples as they were given.
"""

from __future__ import annotations

import math

import numpy as np


def polyphase_ratio(from_rate: int, to_rate: int) -> tuple[int, int]:
    """(up, down): the smallest whole factors with from_rate * up / down == to_rate, as resample_poly takes them."""
    divisor = math.gcd(int(from_rate), int(to_rate))
    return int(to_rate) // divisor, int(from_rate) // divisor


def resampled_length(num_samples: int, from_rate: int, to_rate: int) -> int:
    """Samples that `num_samples` at `from_rate` become at `to_rate` (rounded to the nearest sample)."""
    return int(round(num_samples * to_rate / from_rate))


def resample(
    audio: np.ndarray, from_rate: int, to_rate: int, length: int | None = None, dtype: type = np.float32
) -> np.ndarray:
    """audio [..., N] at `from_rate` -> [..., length] at `to_rate` (default length: resampled_length), in `dtype`
    (float32; the metrics ask for float64)."""
    from scipy.signal import resample_poly

    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    audio = np.asarray(audio, dtype=dtype)
    n = audio.shape[-1]
    if length is None:
        length = resampled_length(n, from_rate, to_rate)
    if from_rate != to_rate and n > 0:
        audio = resample_poly(audio, *polyphase_ratio(from_rate, to_rate), axis=-1).astype(dtype, copy=False)
    if audio.shape[-1] >= length:
        return np.ascontiguousarray(audio[..., :length])
    pad = [(0, 0)] * (audio.ndim - 1) + [(0, length - audio.shape[-1])]
    return np.pad(audio, pad)
