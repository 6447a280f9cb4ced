"""Edits that keep the producer's own recording: the model's output steers a time-frequency mask on the original.

Re-synthesis (mode "resynth", the paper's behaviour) hands back the model's output: mono, band-limited to the codec's
rate, copied to every channel. Mode "mask" uses that output only as an estimate of *where* in time and frequency the
wanted part lies, and builds the result from the original region itself, at its own rate and channel count:

- extract / remove: the model's output is the target (the stem; for a remove not steered, the mix without it). One
  soft ratio mask M = clip(P_est / P_mix, 0, 1) ** exponent, floored at `floor`, is computed from smoothed powers:
  P_est of the estimate, P_mix of the mean of the original's channels, which is what the model heard (a mean of the
  channels' powers was tried: it reads wide, decorrelated content as louder than the model's copy of it and cuts
  it). One mask for every channel keeps the stereo image. M is applied to every channel's STFT (the original's phase is
  kept) and the frames are overlap-added back.
- remove, steered by the extraction (`steer="extract"`, the default): the model is asked to *extract* the stem, and
  the result keeps what that extraction does not explain: 1 - depth * M_stem, M_stem computed as extract's mask.
  Asked to remove, a small model re-synthesises the whole rest of the mix, which differs from the recording nearly
  everywhere, and its mask cut far more than the stem (measured on 40 validation clips with the embedded model: mel
  SSIM 0.300 against 0.576 for the unchanged input; steered, 0.563 at depth 1). `depth` is how much of what the mask
  cuts is cut, for extract and remove alike (mask' = 1 - depth * (1 - mask)): how far a model's word is trusted,
  which is the model's to say (its card's `mask_depth`; the Editor applies it), 1 in the design's defaults.
- add: the result is the original plus the added part alone, so nothing of the original is resynthesised. The added
  part is estimated in the same frame as a spectral subtraction on the generated mix G: A = G * clip((P_G - P_mix) /
  P_G, 0, 1) ** exponent, with G's own phase (the new part is not in the original, so the original's phase at those
  bins belongs to other instruments; G's phase is the only one the new part has). A is mono, added to every channel
  (centred); where the generated mix holds nothing beyond the original, A is exactly zero and so is every change.
- level (only with `calibrate`, which no operation's default sets now: docs/embedded_model/mask.md): the model's
  output level is arbitrary, and a ratio mask is not. Before masking, the estimate is scaled so that it sits at its
  level in the original: over the bins that hold energy, an energy-weighted quantile of P_mix / P_est; a low one
  (0.25) for extract and remove, where the target dominates the bins it is in, a high one (0.75) for add, where the
  generated mix holds the original plus more (the argument of engine.levels). An output that shares little with the
  original (the model invented it) could drive that quantile tens of dB down and the mask to silence, so the scaled
  estimate is kept at most STEM_FLOOR_LU (engine.levels) under the original's power.
- above the estimate's band (the model runs at the codec's rate, often under the input's): the estimate has nothing
  there, so the mask of each frame is extended from the top of the estimate's band (the mean of its mask over
  75-100 % of the reliable band, 90 % of the estimate's Nyquist): hi-hats above 8 kHz go with drums whose top band
  they share. For add nothing is added above the band.

Long regions are processed in blocks of STFT frames, each computed with enough neighbouring frames for the
smoothing, and overlap-added into one output: the result is the same as processing the region at once (no seams).
Pure numpy (and scipy.ndimage for the smoothing); no torch. The modes themselves (names, defaults, checks) are
engine.modes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from engine.errors import Cancelled, ConfigError
from engine.instructions import OPERATIONS
from engine.levels import STEM_FLOOR_LU, STEM_QUANTILE, match_level, weighted_power_ratio
from engine.modes import LAYER, MASK

STEER_EXTRACT = "extract"  # MaskSettings.steer: the mask of a remove comes from the model's extraction of the stem
# The operations whose mask cuts, and so take a depth (MaskSettings.depth, a card's `mask_depth`): add's mask keeps the
# whole original
DEPTH_OPS = ("extract", "remove")


@dataclass(frozen=True)
class MaskSettings:
    """The mask's design. These defaults are a smoothed power-ratio (Wiener-like) mask; what each operation uses
    by default is DEFAULT_SETTINGS, chosen on validation songs (docs/embedded_model/mask.md)."""

    window_s: float = 0.064  # STFT frame (rounded to a power of two of samples); hop a quarter of it
    smooth_s: float = 0.05  # box smoothing of the powers over time (full width)
    smooth_hz: float = 50.0  # box smoothing of the powers over frequency (full width)
    exponent: float = 1.0  # 1: power ratio (Wiener-like); 0.5: magnitude ratio
    floor: float = 0.0  # lowest mask value for extract/remove (a little of everything stays; applied last)
    calibrate: bool = True  # scale the estimate to its level in the original first
    steer: str = ""  # remove only: "extract" = the estimate is the model's extraction of the stem; "": the op's own
    depth: float = 1.0  # DEPTH_OPS: how much of what the mask cuts is cut (1: all of it)
    # STFT frames processed at once (memory), any value gives the same result; 0: as many as hold BLOCK_SAMPLES samples
    # of every channel and the estimate (1024 frames of 64 ms at 16 kHz mono, 170 at 48 kHz stereo: it is the block's
    # memory that is bounded, about 60 MB, whatever the rate and channels)
    block_frames: int = 0


# Per operation, chosen on validation songs with the embedded default model (docs/embedded_model/mask.md; the
# command: python -m engine.eval.mask_tune). Extract and add: no frequency smoothing, no time smoothing on extract's
# 64 ms frames, 0.1 s on add's 32 ms ones. Remove (2026-12-07): steered by the model's extraction of the stem, with
# extract's mask. The depth here is the design's (1: a model that is right cuts all of it); how far one model's word
# is trusted is that model's, in its card (`mask_depth`, engine.model.bundle.ModelCard), chosen on validation songs.
_EXTRACT = MaskSettings(window_s=0.064, smooth_s=0.0, smooth_hz=0.0, exponent=0.5, calibrate=False)
DEFAULT_SETTINGS = {
    "extract": _EXTRACT,
    "remove": replace(_EXTRACT, steer=STEER_EXTRACT),
    "add": MaskSettings(window_s=0.032, smooth_s=0.1, smooth_hz=0.0, exponent=2.0, calibrate=False),
}
# The calibration's quantile: where the estimated part dominates the bins it is in (extract, remove) the one the level
# estimate uses; for add, where the generated part shares its bins with the original, a high one.
_QUANTILE = {"extract": STEM_QUANTILE, "remove": STEM_QUANTILE, "add": 0.75}
_EPS = 1e-20
BLOCK_SAMPLES = 1 << 21  # MaskSettings.block_frames=0: a block's frames hold this many samples, channels included


def apply_edit(
    original: np.ndarray,
    rate: int,
    estimate: np.ndarray,
    estimate_rate: int,
    op: str,
    settings: MaskSettings | None = None,
    *,
    layer: bool = False,
    stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """The mask-mode result [C, N] float32 at `rate`: `original` [C, N] (or [N]) edited as `estimate` says; with
    `layer` (add only: engine.modes LAYER) the added part alone, on every channel, which the original plus it is.
    `stop` (a cancel's is_set) is asked between blocks: Cancelled when it says so (an hour's mask takes minutes).

    `estimate` is the model's output ([N'] or [C', N'], channels averaged) at `estimate_rate`; it is resampled to
    `rate` and trimmed or padded to N samples: for a remove whose settings steer it by the extraction, the model's
    extraction of the stem (Editor.generation gives the instruction to generate). `settings` default to the
    operation's DEFAULT_SETTINGS. See the module docstring for what each operation does.
    """
    from engine.resample import resample

    if op not in OPERATIONS:
        raise ConfigError(f"unknown operation {op!r}: use {', '.join(OPERATIONS)}")
    x = np.atleast_2d(np.asarray(original))  # float32 as it comes (each block is worked on in float64), else float64
    x = x if x.dtype == np.float32 else x.astype(np.float64)
    est = np.atleast_2d(np.asarray(estimate, dtype=np.float32)).mean(axis=0)
    est = resample(est, int(estimate_rate), int(rate), x.shape[-1])
    band_hz = 0.9 * estimate_rate / 2 if estimate_rate < rate else None
    settings = DEFAULT_SETTINGS[op] if settings is None else settings
    if settings.steer not in ("", STEER_EXTRACT) or (settings.steer and op != "remove"):
        raise ConfigError(f"mask steer {settings.steer!r} does not apply to {op}: only remove takes {STEER_EXTRACT!r}")
    if not 0.0 <= settings.depth <= 1.0:
        raise ConfigError(f"mask depth must be from 0 to 1, got {settings.depth}")
    if layer and op != "add":
        raise ConfigError(f"only an add has a part of its own to hand back alone, not {op}")
    return _masked(x, est, int(rate), op, settings, band_hz, layer, stop)


def mask_result(
    original: np.ndarray,
    rate: int,
    estimate: np.ndarray,
    estimate_rate: int,
    op: str,
    settings: MaskSettings | None = None,
    *,
    raw: bool = False,
    layer: bool = False,
    stop: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, dict]:
    """What the mask mode hands back, (audio [C, N], level info): apply_edit's result under the mask mode's level
    policy (engine.levels.match_level: the recording's own level, a true-peak ceiling; none when `raw`). The Editor,
    the evaluation's ideal-mask row and the choice of the mask's settings and depth all finish a mask so."""
    edited = apply_edit(original, rate, estimate, estimate_rate, op, settings, layer=layer, stop=stop)
    return match_level(edited, np.atleast_2d(original), rate, op, mode=LAYER if layer else MASK, raw=raw)


def ideal_estimate(
    original: np.ndarray, target: np.ndarray, op: str, settings: MaskSettings | None = None
) -> np.ndarray:
    """What a perfect model would give the mask to read (at the original's rate): the true target, or for a remove
    steered by the extraction the true stem (the original less the target), as the model's extraction stands for it."""
    settings = DEFAULT_SETTINGS[op] if settings is None else settings
    if op == "remove" and settings.steer == STEER_EXTRACT:
        return np.atleast_2d(original).mean(axis=0) - np.atleast_2d(target).mean(axis=0)
    return target


def ideal_mask(
    original: np.ndarray, target: np.ndarray, rate: int, op: str, settings: MaskSettings | None = None
) -> np.ndarray:
    """The same mask computed from the true target (ideal_estimate): the mask mode's own ceiling, unlevelled."""
    return apply_edit(original, rate, ideal_estimate(original, target, op, settings), rate, op, settings)


def _stft_size(rate: int, window_s: float) -> int:
    return max(16, 2 ** int(round(math.log2(max(window_s * rate, 16)))))


def _masked(
    x: np.ndarray,
    est: np.ndarray,
    rate: int,
    op: str,
    s: MaskSettings,
    band_hz: float | None,
    layer: bool = False,
    stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """The masked result, float32 [C, N]. Its memory is the input's and the result's and one block's: the signal is
    framed block by block (padded by half a frame at both ends, reflected), and the overlap-add carries each block's
    unfinished tail into the next, so every sample's sum is made in the same order as over the whole signal."""
    from scipy.ndimage import uniform_filter

    channels, n = x.shape
    n_fft = _stft_size(rate, s.window_s)
    hop, pad = n_fft // 4, n_fft // 2
    frames = 1 + math.ceil((n + 2 * pad - n_fft) / hop)

    def padded(signal: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi) of the signal padded by `pad` samples at both ends, reflected about its first and last
        sample (as torch.stft's default), float64. Zeros made a step where a region starts mid-waveform or on a DC
        offset: its edge frames read the step's broadband energy, and an extract put a click there (0.14 off the
        stem in its first 200 samples, 0.01 in the middle)."""
        index = np.arange(lo - pad, hi - pad) % max(1, 2 * n - 2)  # reflections repeat where the pad outruns it
        index = np.where(index >= n, 2 * n - 2 - index, index)
        return signal[..., index].astype(np.float64)

    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    t_width = max(1, int(round(s.smooth_s * rate / hop)))
    f_width = max(1, int(round(s.smooth_hz * n_fft / rate)))
    margin = t_width  # frames of context either side of a block: more than the smoothing reaches

    def spectra(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        first, last = lo * hop, (hi - 1) * hop + n_fft
        index = (np.arange(hi - lo) * hop)[:, None] + np.arange(n_fft)[None, :]  # [T, n_fft]
        xs, es = padded(x, first, last), padded(est, first, last)
        return np.fft.rfft(xs[:, index] * window, axis=-1), np.fft.rfft(es[index] * window, axis=-1)

    def smooth(power: np.ndarray) -> np.ndarray:  # [T, F]
        return uniform_filter(power, size=(t_width, f_width), mode="nearest")

    block = s.block_frames or max(1, BLOCK_SAMPLES // (n_fft * (channels + 1)))
    gain = _level_gain(spectra, frames, block, op) if s.calibrate else 1.0
    result = np.empty((channels, n), np.float32)
    # the overlap-add's sums (and the windows' squares, its norm) from the frames before the block, not final yet
    carry, carry_norm = np.zeros((channels if op != "add" else 1, n_fft - hop)), np.zeros(n_fft - hop)
    for a in range(0, frames, max(1, block)):
        if stop is not None and stop():
            raise Cancelled("edit cancelled")
        b = min(frames, a + max(1, block))
        lo, hi = max(0, a - margin), min(frames, b + margin)
        spec_x, spec_e = spectra(lo, hi)  # [C, T, F], [T, F]
        spec_e = spec_e * gain
        p_mix = smooth(np.abs(spec_x.mean(axis=0)) ** 2)
        p_est = smooth(np.abs(spec_e) ** 2)
        if op == "add":
            mask = np.clip((p_est - p_mix) / (p_est + _EPS), 0.0, 1.0) ** s.exponent
        else:
            mask = np.clip(p_est / (p_mix + _EPS), 0.0, 1.0) ** s.exponent  # what the estimate explains
        if band_hz is not None:
            above = freqs > band_hz
            if op == "add":
                mask[:, above] = 0.0
            else:
                top = (freqs >= 0.75 * band_hz) & ~above
                mask[:, above] = mask[:, top].mean(axis=1, keepdims=True) if top.any() else 0.0
        if op != "add":
            if s.steer == STEER_EXTRACT:
                mask = 1.0 - mask  # the estimate is the stem: keep what it does not explain
            mask = np.maximum(1.0 - s.depth * (1.0 - mask), s.floor)
        keep = slice(a - lo, b - lo)
        source = spec_e[None, keep] if op == "add" else spec_x[:, keep]
        wave = np.fft.irfft(source * mask[None, keep], n=n_fft, axis=-1) * window  # [C, T, n_fft]
        first = a * hop  # the padded signal's sample where the block's first frame starts
        out = np.zeros((carry.shape[0], (b - 1 - a) * hop + n_fft))
        norm = np.zeros(out.shape[-1])
        out[:, : n_fft - hop], norm[: n_fft - hop] = carry, carry_norm
        for offset in range(b - a):
            start = offset * hop
            out[:, start : start + n_fft] += wave[:, offset]
            norm[start : start + n_fft] += window**2
        done = (b - a) * hop if b < frames else out.shape[-1]  # no later frame reaches these samples
        carry, carry_norm = out[:, done:], norm[done:]
        lo_s, hi_s = max(first, pad), min(first + done, pad + n)  # the finished samples inside the region
        if hi_s > lo_s:
            part = out[:, lo_s - first : hi_s - first] / np.maximum(norm[lo_s - first : hi_s - first], 1e-12)
            if op == "add" and not layer:  # the added part (one channel) on top of every channel
                part = x[:, lo_s - pad : hi_s - pad].astype(np.float64) + part
            result[:, lo_s - pad : hi_s - pad] = part  # (layer: the added part alone on each channel)
    return result


def _level_gain(spectra, frames: int, block: int, op: str) -> float:
    """Amplitude gain that puts the estimate at its level in the original (module docstring); 1.0 when undefined."""
    stride = max(1, frames // 2000)  # at most ~2000 frames measured: plenty for one number
    mix_parts, est_parts = [], []
    for a in range(0, frames, max(1, block)):
        spec_x, spec_e = spectra(a, min(frames, a + max(1, block)))
        mix_parts.append(np.abs(spec_x[:, ::stride].mean(axis=0)) ** 2)
        est_parts.append(np.abs(spec_e[::stride]) ** 2)
    p_mix, p_est = np.concatenate(mix_parts).ravel(), np.concatenate(est_parts).ravel()
    weight = p_mix if op == "add" else p_est  # the bins where the estimate is expected to match the original
    ratio = weighted_power_ratio(p_mix, p_est, weight, _QUANTILE[op])
    if ratio is None:
        return 1.0
    lowest = p_mix.sum() / p_est.sum() * 10 ** (-STEM_FLOOR_LU / 10)  # a part at most this far under the whole
    return float(np.clip(math.sqrt(max(ratio, lowest)), 1e-2, 1e2))
