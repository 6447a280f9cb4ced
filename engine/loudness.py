"""Integrated loudness (ITU-R BS.1770-4), measured block by block: memory stays a block's, whatever the length.

The K-weighting is the two biquads BS.1770 describes (a +4 dB shelf above 1.5 kHz, a 38 Hz high-pass), designed
for any rate with the RBJ cookbook formulas, as pyloudnorm designs them, so the two meters agree to a small fraction
of a LU (tests/test_loudness.py compares them). pyloudnorm copies the whole signal several times in float64 (an
hour of stereo 48 kHz: gigabytes); here the filters carry their state from block to block and only the energy of
each 100 ms step is kept, from which the 400 ms gating blocks (75 % overlap) are summed.

Channel weights are BS.1770's for up to five channels (L, R, C, Ls, Rs: 1, 1, 1, 1.41, 1.41); beyond five every
channel weighs 1 (BS.1770 has no weights for them), gated together like the others.
"""

from __future__ import annotations

import math

import numpy as np

GATE_BLOCK_S = 0.4  # BS.1770's gating block
_STEPS_PER_BLOCK = 4  # 75 % overlap: a block every 100 ms
_STEPS_PER_SECOND = 10
ABSOLUTE_GATE = -70.0
RELATIVE_GATE = -10.0
_CHANNEL_WEIGHTS = (1.0, 1.0, 1.0, 1.41, 1.41)  # L R C Ls Rs
LFE_CHANNEL = {6: 3, 8: 3}  # the low-frequency effects channel of 5.1 and 7.1 in WAV's (and SMPTE's) order


def channel_weights(channels: int) -> np.ndarray:
    """BS.1770's weight of each channel: surrounds +1.5 dB, the LFE of 5.1 and 7.1 left out (it was counted as a
    front channel, and 5.1's surrounds as fronts); 1 for every channel of other counts past five."""
    if channels in LFE_CHANNEL:
        weights = [1.0 if c < 3 else 1.41 for c in range(channels)]
        weights[LFE_CHANNEL[channels]] = 0.0
        return np.array(weights)
    return np.array([_CHANNEL_WEIGHTS[c] if channels <= len(_CHANNEL_WEIGHTS) else 1.0 for c in range(channels)])


SHELF_HZ = 1500.0  # the K-weighting's head shelf
_CHUNK = 1 << 16  # samples filtered at once per channel


def _biquad(kind: str, gain_db: float, q: float, fc: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(b, a) of one RBJ cookbook biquad, normalised so a[0] == 1."""
    big_a = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * fc / rate
    cos, alpha = math.cos(w0), math.sin(w0) / (2 * q)
    if kind == "high_shelf":
        root = 2 * math.sqrt(big_a) * alpha
        b = [
            big_a * ((big_a + 1) + (big_a - 1) * cos + root),
            -2 * big_a * ((big_a - 1) + (big_a + 1) * cos),
            big_a * ((big_a + 1) + (big_a - 1) * cos - root),
        ]
        a = [
            (big_a + 1) - (big_a - 1) * cos + root,
            2 * ((big_a - 1) - (big_a + 1) * cos),
            (big_a + 1) - (big_a - 1) * cos - root,
        ]
    else:  # high_pass
        b = [(1 + cos) / 2, -(1 + cos), (1 + cos) / 2]
        a = [1 + alpha, -2 * cos, 1 - alpha]
    return np.array(b) / a[0], np.array(a) / a[0]


def k_weighting(rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """BS.1770's two K-weighting stages at `rate`: the head's shelf, then the high-pass. At SHELF_HZ * 2 and below the
    shelf lies past the Nyquist frequency (its filter would blow up; pyloudnorm's meter reads -inf or NaN there), and
    what it would raise is not in the signal: the high-pass alone."""
    high_pass = _biquad("high_pass", 0.0, 0.5, 38.0, rate)
    if rate <= 2 * SHELF_HZ:
        return [high_pass]
    return [_biquad("high_shelf", 4.0, 1 / math.sqrt(2), SHELF_HZ, rate), high_pass]


def block_count(samples: int, rate: int) -> int:
    """How many 400 ms gating blocks a signal of `samples` has (the last may run past its end: the count rounds)."""
    seconds = samples / rate
    step = GATE_BLOCK_S / _STEPS_PER_BLOCK
    return int(np.round((seconds - GATE_BLOCK_S) / step)) + 1


def step_energies(audio: np.ndarray, rate: int, steps: int) -> np.ndarray:
    """[C, steps]: the sum of squares of the K-weighted signal in each 100 ms step (step k holds samples
    floor(k * rate / 10) up to the next step's first), read CHUNK samples at a time; samples after the last step
    are not read."""
    from scipy.signal import lfilter

    channels, n = audio.shape
    edges = (np.arange(steps + 1, dtype=np.int64) * rate) // _STEPS_PER_SECOND
    end = int(min(n, edges[-1]))
    stages = k_weighting(rate)
    states = [np.zeros((channels, 2)) for _ in stages]  # each biquad's memory; the signal starts from rest
    energies = np.zeros((channels, steps))
    for start in range(0, end, _CHUNK):
        stop = min(end, start + _CHUNK)
        part = np.asarray(audio[:, start:stop], dtype=np.float64)
        for index, (b, a) in enumerate(stages):
            part, states[index] = lfilter(b, a, part, axis=-1, zi=states[index])
        which = np.searchsorted(edges, np.arange(start, stop), side="right") - 1
        first = int(which[0])
        counts = int(which[-1]) - first + 1
        for channel in range(channels):
            energies[channel, first : first + counts] += np.bincount(
                which - first, weights=np.square(part[channel]), minlength=counts
            )
    return energies


def integrated_loudness(audio: np.ndarray, rate: int) -> float:
    """BS.1770-4 integrated loudness in LUFS of audio [C, N] with N >= one gating block; -inf where no block is
    above the absolute gate. At 3 kHz and below the K-weighting is its high-pass alone (k_weighting): such a file was
    read as -inf, "too quiet to measure", and no level policy ran on it. Any float dtype: blocks are read in float64,
    the input is not copied whole."""
    channels, n = audio.shape
    blocks = block_count(n, rate)
    if blocks < 1:
        raise ValueError(f"{n} samples at {rate} Hz are shorter than one {GATE_BLOCK_S:g} s gating block")
    energies = step_energies(audio, rate, blocks + _STEPS_PER_BLOCK - 1)
    # each block's mean square: its four steps' energies over the block's length (a block past the end is short)
    cumulative = np.concatenate([np.zeros((channels, 1)), np.cumsum(energies, axis=1)], axis=1)
    block_power = (cumulative[:, _STEPS_PER_BLOCK:] - cumulative[:, :-_STEPS_PER_BLOCK]) / (GATE_BLOCK_S * rate)
    weighted = channel_weights(channels) @ block_power  # [blocks]
    with np.errstate(divide="ignore"):
        block_loudness = -0.691 + 10 * np.log10(weighted)
    above = block_loudness >= ABSOLUTE_GATE
    if not np.any(above):
        return -math.inf
    relative = -0.691 + 10 * math.log10(float(weighted[above].mean())) + RELATIVE_GATE
    gated = (block_loudness > relative) & (block_loudness > ABSOLUTE_GATE)
    if not np.any(gated):
        return -math.inf
    return float(-0.691 + 10 * math.log10(float(weighted[gated].mean())))
