"""Levels of edit results: land where a producer expects, without touching a fader, and never clip.

Policy (issue 10, part 2; remove and the mask mode revised since), applied at the input's rate and channel layout
after the edit:
- mask mode (the result is the recording's own samples, masked, or the recording plus an added part): no gain at
  all, so a removed stem leaves the rest of the mix at the level it had and an extracted stem sits at its level in
  the mix; the limiter acts only above the source's own true peak (or the ceiling, whichever is higher).
- resynth mode (the model's audio, at a level of its own):
  - add: the result's integrated loudness (ITU-R BS.1770-4, engine.loudness) is matched to the source region's;
  - extract and remove: the result is a part of the mix (the stem, or the mix without it) and keeps the level it has
    in the mix. That level is estimated, since the true part is unknown: in the time-frequency bins where the result
    has energy, the part is assumed to dominate the mix, so a low energy-weighted quantile of mix-to-part power
    ratios over those bins is the gain that puts it back at its level in the mix (estimate_stem_gain_db has the
    measured accuracy). The estimate is capped at the mix's own loudness (a part is never louder than the whole)
    and floored STEM_FLOOR_LU below it. (Matching a remove result to the whole mix's loudness, the first policy,
    pushed the rest of a mix up by as much as the removed stem was loud: +19 dB on a bass-heavy mix.)
- add on a silent source (is_silent: the only edit allowed on silence) has nothing to match: DEFAULT_TARGET_LUFS. A
  source above silence but too quiet for a loudness (below the BS.1770 gate) is edited like any other: mask mode keeps
  its level, resynth keeps an extract or remove no louder than it by RMS (a part is never louder than its whole)
  and lands an add at DEFAULT_TARGET_LUFS.
- never clipped: true peak (4x oversampled, BS.1770 annex 2) at most `ceiling_db` (-1 dBTP) after any gain, with
  a look-ahead true-peak limiter where the gain alone would exceed it (see `limit` for why not pedalboard's).
- a silent model result gets no gain and a warning (no division by zero); raw=True keeps the model output as is.
- clips shorter than one 400 ms gating block are measured on the clip repeated to 2 s, which gives the ungated
  loudness of the clip (the gating of BS.1770 needs at least one full block).

Everything is float32/float64 numpy [channels, samples]; no torch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from engine.loudness import ABSOLUTE_GATE, GATE_BLOCK_S
from engine.loudness import integrated_loudness as loudness_of
from engine.modes import LAYER, MASK, MASKED_MODES, MODE_HELP

DEFAULT_TARGET_LUFS = -18.0  # a typical stem level in a mixing session (EBU R128's -23 is for finished programmes)
TRUE_PEAK_CEILING_DB = -1.0
STEM_FLOOR_LU = 24.0  # an extracted stem lands at most this far below its mix's loudness
MAX_EXTRA_GAIN_DB = 6.0  # how far past the plain gain the limiter rounds may push to reach a target
# A mask-mode result (an add's recording + part) the limiter lowered further than this (dB) says so
LIMITED_NOTE_DB = 1.0
# An add in the mask modes keeps the recording's level, and the part comes at the level the model heard it at: a
# recording too quiet to be brought to it (under about -36 dB RMS: model_input_gain) gets a part this
# much louder than itself or more, which is said
LOUD_ADD_NOTE_LU = 10.0
ABSOLUTE_GATE_LUFS = ABSOLUTE_GATE  # BS.1770: below this nothing counts; too quiet to measure a level from
SILENCE_PEAK = 1e-5  # -100 dBFS: below any real recording's noise floor (16-bit dither is ~3e-5)
_SHORT_TILE_SECONDS = 2.0
_OVERSAMPLE = 4
STEM_QUANTILE = 0.25  # of mix-to-stem ratios; chosen on synthesized stems (see estimate_stem_gain_db)
_RAMP_S = 0.005  # limiter attack/release ramp
_HOLD_S = 0.05  # limiter hold after a peak
# input samples either side that resample_poly's filter reaches (its half length, 10 x the factor) and one more, the
# oversampled peak's own reach
_FILTER_REACH = 11
_OVERSAMPLE_BELOW = 192000  # rates at and above this are their own true peak (BS.1770 oversamples to >= 192 kHz)


def as_channels(audio: np.ndarray, dtype: type | None = np.float64) -> np.ndarray:
    """[N] or [C, N] -> [C, N] of `dtype` (levels and metrics work in float64; None keeps the input's, without a
    copy); ValueError for another shape."""
    array = np.asarray(audio, dtype=dtype)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"audio must be [N] or [C, N], got shape {array.shape}")
    return array


def is_silent(audio: np.ndarray) -> bool:
    """Silence, as every part of the engine means it: no sample above SILENCE_PEAK. Audio above it may still be too
    quiet to have a loudness (below the BS.1770 gate): it is edited, and its level is kept (match_level). Read from
    the largest and smallest sample: no copy of the audio (a NaN anywhere is not silence)."""
    return _sample_peak(np.asarray(audio)) <= SILENCE_PEAK  # a NaN or infinite peak compares False: not silence


def db(value: float) -> float:
    """Linear amplitude -> dB, -inf for 0."""
    return 20.0 * math.log10(value) if value > 0 else -math.inf


def rms_db(audio: np.ndarray) -> float:
    """RMS level in dBFS of audio [C, N] (or [N]) over all its samples; -inf for digital silence. Summed in float64
    block by block: no copy of the input (an hour of stereo took 3x its size in float64 temporaries)."""
    array = as_channels(audio, dtype=None)
    if not array.size:
        return -math.inf
    total = 0.0
    for start in range(0, array.shape[-1], _BLOCK):
        block = array[:, start : start + _BLOCK].astype(np.float64)
        total += float(np.einsum("ij,ij->", block, block))
    return db(math.sqrt(total / array.size))


MAX_MODEL_INPUT_GAIN_DB = 24.0  # the training inputs' own spread is under 8 dB; a fade is not made loud
LEVELLED_ABOVE_DB = -60.0  # RMS below which an add's model hears the region as it is (dither, an empty track)


def model_input_gain(mono: np.ndarray, target_rms_db: float | None, fade_in: bool = False) -> float:
    """The gain that brings what the model hears (mono, at its codec's rate) to the level its adapter was trained at:
    `target_rms_db`, the median RMS of its training inputs, but no sample above full scale (a training input's peak
    never exceeds 1: the data's gain rule scales the whole clip down) and at most MAX_MODEL_INPUT_GAIN_DB up. 1.0
    without a target, and for an add on audio below LEVELLED_ABOVE_DB (an empty track's dither: what an add puts on
    it comes out at the model's own level, as on silence, not scaled down by a gain that had brought dither up to a
    mix's). An extract or remove levels any region it takes (a silent one is refused before): a quiet passage under
    that line was fed as it was, and its result changed wholly across 1 dB (at -61 dB RMS an extract returned nearly
    the whole mix, where at -59 dB it heard the region at -35 dB and returned a part).

    A small codec's codes change almost completely with the input's level (12 dB quieter: 0.5 % of the codes alike),
    and a recording's level is the producer's, so the model is fed at its training level; the Editor undoes the gain
    on the model's output, so every later step sees the input's own scale.

    `fade_in` (add): the gain allowed grows from 0 dB at LEVELLED_ABOVE_DB to the cap MAX_MODEL_INPUT_GAIN_DB above
    it, so the added part's level follows the region's without a step: with the full cap from LEVELLED_ABOVE_DB up,
    a region 1 dB quieter (-60.5 against -59.5 dB RMS) got an added part 25.7 dB louder (the +24 dB undone on one
    side of the line, none on the other)."""
    level = rms_db(mono)
    if target_rms_db is None or not math.isfinite(level) or (fade_in and level < LEVELLED_ABOVE_DB):
        return 1.0
    cap = min(MAX_MODEL_INPUT_GAIN_DB, level - LEVELLED_ABOVE_DB) if fade_in else MAX_MODEL_INPUT_GAIN_DB
    gain_db = min(target_rms_db - level, cap)
    peak = float(np.max(np.abs(mono)))
    return float(min(10 ** (gain_db / 20), 1.0 / peak))


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS of audio [C, N] (or [N]); -inf for silence (nothing above the absolute gate).
    Measured block by block (engine.loudness): the input is never copied whole."""
    audio = as_channels(audio, dtype=None)
    if audio.size == 0 or not np.any(audio):
        return -math.inf
    block = int(round(GATE_BLOCK_S * sample_rate))
    if audio.shape[-1] <= block:
        # Too short for one gating block: measure the clip repeated, i.e. its ungated K-weighted power.
        reps = int(math.ceil(_SHORT_TILE_SECONDS * sample_rate / audio.shape[-1]))
        audio = np.tile(audio, (1, reps))
    loudness = loudness_of(audio, sample_rate)
    if not math.isfinite(loudness) or loudness < ABSOLUTE_GATE_LUFS:
        return -math.inf
    return loudness


def _sample_peak(audio: np.ndarray) -> float:
    """The largest |sample|, read without a copy (NaN where a sample is; 0 for no samples)."""
    return max(float(np.max(audio)), -float(np.min(audio))) if audio.size else 0.0


def all_finite(audio: np.ndarray) -> bool:
    """No NaN or infinity anywhere, read without a copy (np.isfinite's mask of an hour of stereo is 300 MB): a NaN
    makes the max NaN, an infinity the max or the min infinite."""
    return audio.size == 0 or (math.isfinite(float(np.max(audio))) and math.isfinite(float(np.min(audio))))


def true_peak_db(audio: np.ndarray, sample_rate: int) -> float:
    """True peak in dBTP: the peak of the 4x oversampled signal (inter-sample peaks count); -inf for silence.
    Read block by block: nothing the size of the input is made."""
    audio = as_channels(audio, dtype=None)
    if audio.size == 0:
        return -math.inf
    # np.max, not max(): a NaN anywhere reads as it always did (no finite peak), not only in the first block
    return db(float(np.max([part.max() for part in _sample_true_peaks(audio, sample_rate, whole=False)])))


def limit(audio: np.ndarray, sample_rate: int, ceiling_db: float = TRUE_PEAK_CEILING_DB) -> tuple[np.ndarray, bool]:
    """Bring the true peak of audio [C, N] to at most `ceiling_db`; returns (audio, whether anything was done)."""
    out, deepest = limit_depth(audio, sample_rate, ceiling_db)
    return out, deepest is not None


def limit_depth(
    audio: np.ndarray, sample_rate: int, ceiling_db: float = TRUE_PEAK_CEILING_DB
) -> tuple[np.ndarray, float | None]:
    """`limit`, returning how far it lowered the audio at the most (dB, negative; None when it did nothing: then the
    audio returned is the one given, as float32).

    A look-ahead true-peak limiter: the gain each sample needs (from the 4x oversampled peak around it, channels
    linked) is held for `_HOLD_S`, looked ahead and smoothed over `_RAMP_S`, so it is already down when a peak
    arrives and recovers without pumping. We measured pedalboard's Limiter (JUCE) first: it has no look-ahead
    (true peaks overshot its threshold by 3.4 dB on noise bursts, which then needed a static pull-down) and it
    compresses 4:1 above -10 dBFS before its own threshold, so it changes the sound of everything loud.
    A final static gain covers any residue from the smoothing, so the ceiling always holds.
    """
    audio = as_channels(audio, dtype=None)
    if audio.size == 0 or true_peak_db(audio, sample_rate) <= ceiling_db:  # read block by block: nothing made
        return audio.astype(np.float32, copy=False), None  # the audio itself (it was copied whole, unchanged)
    peaks = _sample_true_peaks(audio, sample_rate)  # [N], channels linked: the oversampling done once more
    ceiling = 10 ** (ceiling_db / 20)
    ramp = max(1, int(_RAMP_S * sample_rate))
    hold = max(1, int(_HOLD_S * sample_rate))

    def gain_of(part: np.ndarray) -> np.ndarray:
        needed = np.minimum(1.0, ceiling / np.maximum(part.astype(np.float64), 1e-12))
        # min over [i - hold, i + ramp], then a mean over [i - ramp, i]: at a peak every averaged value is <= its need.
        held = _window_min(needed, hold, ramp)
        sums = np.concatenate([[0.0], np.cumsum(np.concatenate([np.full(ramp, held[0]), held]))])
        return ((sums[ramp + 1 :] - sums[: -ramp - 1]) / (ramp + 1)).astype(np.float32)

    # block by block (each sample's gain reads the peaks within hold + 2 ramps of it): memory stays a block's
    gain = _blockwise(gain_of, peaks, hold + 2 * ramp + 2)
    del peaks
    out = audio * gain[None] if audio.dtype == np.float32 else audio.astype(np.float32) * gain[None]
    deepest = db(float(gain.min()))
    del gain
    peak = true_peak_db(out, sample_rate)
    if peak > ceiling_db:
        static = 10 ** ((ceiling_db - peak) / 20) * 0.9999
        out *= np.float32(static)
        deepest += db(static)
    return out, deepest


def _window_min(values: np.ndarray, before: int, after: int) -> np.ndarray:
    """min over [i - before, i + after] for every i (edges padded with the edge value)."""
    from scipy.ndimage import minimum_filter1d

    padded = np.concatenate([np.full(before, values[0]), values, np.full(after, values[-1])])
    # origin -(width // 2) makes the window start at each index: padded[i : i + width] = values[i - before : i + after]
    width = before + after + 1
    starts = minimum_filter1d(padded, size=width, mode="nearest", origin=-(width // 2))
    return starts[: values.size]


_BLOCK = 1 << 18  # samples a blockwise pass works on at once (plus its margins): memory stays a few MB per channel


def _blockwise(function, values: np.ndarray, margin: int, whole: bool = True):
    """`function` of the last axis of `values`, computed on blocks of _BLOCK samples with `margin` samples of context
    either side and joined: the same as `function(values)` wherever an output sample depends only on the input
    within `margin` of it (away from the ends, where each block's context is the whole signal's). whole=False
    yields the blocks' outputs in order instead of joining them (for a reduction: nothing input-sized is made)."""
    n = values.shape[-1]

    def blocks():
        if n <= _BLOCK + 2 * margin:
            yield function(values)
            return
        for start in range(0, n, _BLOCK):
            lo, hi = max(0, start - margin), min(n, start + _BLOCK + margin)
            yield function(values[..., lo:hi])[..., start - lo : min(n, start + _BLOCK) - lo]

    return np.concatenate(list(blocks()), axis=-1) if whole else blocks()


def _sample_true_peaks(audio: np.ndarray, sample_rate: int, whole: bool = True):
    """Per sample, the largest |value| of the 4x oversampled signal within one sample of it, over all channels
    (float32, computed block by block: the oversampled signal of a whole hour would need tens of GB); whole=False:
    the blocks' peaks one by one (see _blockwise)."""
    from scipy.ndimage import maximum_filter1d
    from scipy.signal import resample_poly

    def peaks_of(part: np.ndarray) -> np.ndarray:
        part = part.astype(np.float32, copy=False)
        peaks = np.abs(part).max(axis=0)
        if sample_rate < _OVERSAMPLE_BELOW and part.shape[-1] > 1:
            over = np.abs(resample_poly(part, _OVERSAMPLE, 1, axis=-1)).max(axis=0)
            # what lies past a region is unknown: the filter, reaching _FILTER_REACH samples, rang there with the
            # zeros it pads with (a region cut on a loud sample read +1 dBTP over it), so only the samples count there
            edge = min(_FILTER_REACH * _OVERSAMPLE, over.size // 2)
            over[:edge] = over[over.size - edge :] = 0.0
            over = maximum_filter1d(over, size=2 * _OVERSAMPLE + 1, mode="nearest")
            peaks = np.maximum(peaks, over[::_OVERSAMPLE][: peaks.size])
        return peaks

    # a block's margins (64 samples) hold its edges' ringing, which the next block reads with its own context
    return _blockwise(peaks_of, audio, 64, whole)


_SPECTROGRAM_BLOCK = 1 << 21  # samples of the frames transformed at once: a few MB of complex spectrum at a time


def _power_spectrogram(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Power spectrogram [F, T] float32, the mean of the channels' powers, ~64 ms Hann frames at half overlap
    (scipy.signal.stft's frames: the signal extended evenly by half a frame at each end, zeros to a whole frame),
    smoothed over ~200 ms so small timing offsets do not matter. Its scale is arbitrary (only ratios of two are read).
    The channels' powers, not the power of their mean, as loudness sums them: a stem panned hard left is heard by the
    model (and returned) at half its amplitude on both channels, 3 dB under its power in the mix, and a downmix of
    amplitudes hid that. Transformed a block of frames at a time into the one float32 array: a whole complex spectrum
    in float64 and its power took 9x the region's memory."""
    from numpy.lib.stride_tricks import sliding_window_view
    from scipy.ndimage import uniform_filter1d
    from scipy.signal import get_window

    channels = as_channels(audio, dtype=None)
    size = channels.shape[-1]
    nperseg = int(2 ** math.ceil(math.log2(max(16, 0.064 * sample_rate))))
    nperseg = min(nperseg, max(16, size))
    half, hop = nperseg // 2, nperseg - nperseg // 2  # scipy's: the hop takes the odd sample
    extended = np.zeros(size + 2 * half + (-(size + 2 * half - nperseg) % hop), dtype=np.float32)
    frames = sliding_window_view(extended, nperseg)[::hop]  # [T, nperseg], a view of the channel in turn
    window = get_window("hann", nperseg).astype(np.float32)
    power = np.zeros((nperseg // 2 + 1, frames.shape[0]), dtype=np.float32)
    step = max(1, _SPECTROGRAM_BLOCK // nperseg)
    for channel in channels:
        extended[half : half + size] = channel  # cast to float32 in place
        extended[:half] = extended[2 * half : half : -1]
        extended[half + size : size + 2 * half] = extended[half + size - 2 : size - 2 : -1]
        for start in range(0, frames.shape[0], step):
            spectrum = np.fft.rfft(frames[start : start + step] * window, axis=-1)
            power[:, start : start + step] += (spectrum.real**2 + spectrum.imag**2).T
    power /= len(channels)
    del frames, extended
    return uniform_filter1d(power, size=min(6, power.shape[1]), axis=1, mode="nearest")


def estimate_stem_gain_db(stem: np.ndarray, mix: np.ndarray, sample_rate: int) -> float | None:
    """Gain (dB) that puts an extracted stem at the level it has in the mix; None when the stem is silent or the clip
    too short to tell (under 64 samples).

    Energy-weighted low quantile (STEM_QUANTILE) of 10*log10(P_mix / P_stem) over the bins that hold the stem's
    energy (within 30 dB of its loudest bins): where the stem dominates the mix that ratio is exactly the missing
    gain; where other parts share a bin it is too high, hence a low quantile rather than the median. Measured on
    54 ten-second clips of 6 synthesized tracks (imusic data synth, seed 7, 44.1 kHz; true stems known; outputs at
    random gains -20..+10 dB), |error| median (max): exact stem 0.06 LU (1.5); low-passed at 7 kHz, 10 ms late,
    noisy 0.20 LU (3.7); stem leaking 30 % of the other parts 1.1 LU (8.0, too loud). The median (q = 0.5) gave
    0.38 / 0.42 / 2.05 LU. Tuned on synthesized stems with simulated outputs, not yet on a trained model's.
    """
    if min(stem.shape[-1], mix.shape[-1]) < 64:  # a few samples hold no spectrum to compare
        return None
    p_stem = _power_spectrogram(stem, sample_rate)
    p_mix = _power_spectrogram(mix, sample_rate)
    frames = min(p_stem.shape[1], p_mix.shape[1])
    p_stem, p_mix = p_stem[:, :frames], p_mix[:, :frames]
    ratio = weighted_power_ratio(p_mix, p_stem, p_stem, STEM_QUANTILE)
    return None if ratio is None else float(10 * np.log10(ratio))


def weighted_power_ratio(p_whole: np.ndarray, p_part: np.ndarray, weight: np.ndarray, quantile: float) -> float | None:
    """The `quantile` of the bins' power ratios whole / part, each bin counted by its `weight` (arrays of one shape),
    over the live bins: weight above 1e-3 of its 99th percentile, both powers above zero. None when no bin is live.
    The stem-level estimate here and the mask mode's level calibration (engine.mask) read a level this one way."""
    if not np.any(weight > 0):
        return None
    live = (weight > np.percentile(weight[weight > 0], 99.0) * 1e-3) & (p_whole > 0) & (p_part > 0)
    if not np.any(live):
        return None
    ratios = p_whole[live] / p_part[live]
    order = np.argsort(ratios)
    cumulative = np.cumsum(weight[live][order])
    return float(ratios[order][np.searchsorted(cumulative, quantile * cumulative[-1])])


def _finite(value: float) -> float | None:
    """JSON-safe number: -inf (silence) becomes None."""
    return round(float(value), 2) if math.isfinite(value) else None


def match_level(
    result: np.ndarray,
    source: np.ndarray,
    sample_rate: int,
    op: str,
    *,
    mode: str,
    raw: bool = False,
    ceiling_db: float = TRUE_PEAK_CEILING_DB,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply the level policy (module docstring) of `mode` (engine.modes: MASK, LAYER or RESYNTH, no default: the caller
    says which) to an edit result [C, N]; returns (audio, info for the reply).

    `source` is the region the user selected, at the same rate. `info` says which policy was used, the measured
    loudness of source, model output and final result (LUFS, None for silence), the gain and the true peak.
    """
    result = as_channels(result, dtype=np.float32)  # the result's own samples: float32 from here on
    source_lufs = integrated_loudness(source, sample_rate)
    model_lufs = integrated_loudness(result, sample_rate)
    info: dict[str, Any] = {
        "policy": "raw",
        "source_lufs": _finite(source_lufs),
        "model_lufs": _finite(model_lufs),
        "target_lufs": None,
        "gain_db": 0.0,
        "limited": False,
        "warnings": [],
    }
    out = result

    def mask_ceiling() -> float:  # mask modes: peaks above the ceiling only where the recording itself had them
        return max(ceiling_db, true_peak_db(source, sample_rate)) if mode in MASKED_MODES else ceiling_db

    if raw:
        pass
    elif not math.isfinite(model_lufs):
        info["policy"] = "silent"
        info["warnings"].append(
            f"the result is too quiet to measure (under the loudness meter's {ABSOLUTE_GATE_LUFS:g} LUFS gate); "
            "no gain applied"
            if np.any(result)
            else "the model returned silence; no gain applied"
        )
        # the ceiling still holds (a result of samples under the meter's gate may still peak past it)
        out, info["limited"] = limit(result, sample_rate, mask_ceiling())
    elif mode in MASKED_MODES and not is_silent(source):  # add on silence: nothing to keep, the default level
        ceiling = mask_ceiling()  # the recording's true peak: a pass over the whole region, made once
        out, deepest = limit_depth(result, sample_rate, ceiling)  # the recording's own level
        info.update(policy="recording", limited=deepest is not None)
        if deepest is not None and deepest < -LIMITED_NOTE_DB:
            what = "the added part" if mode == LAYER else "the result"
            note = f"{what} went past {ceiling:+.1f} dBTP and the limiter lowered it by up to {-deepest:.1f} dB"
            if op == "add" and mode == MASK:  # the part took the sum past the recording's peak: both were lowered
                note += f", your recording with it; --mode {LAYER} gives {MODE_HELP[LAYER]}"
            info["warnings"].append(note)
        if (peak := _sample_peak(out)) > 1.0 >= _sample_peak(source):  # the recording's true peak allowed them
            info["warnings"].append(
                f"the result's samples reach {db(peak):+.1f} dBFS where your recording's stay under full "
                "scale (its true peak allows them): lower its track before rendering to a fixed-point format"
            )
        if op == "add" and math.isfinite(source_lufs) and model_lufs - source_lufs > LOUD_ADD_NOTE_LU:
            what = "the added part is" if mode == LAYER else "the result is"
            info["warnings"].append(
                f"{what} {model_lufs - source_lufs:.0f} LU louder than your recording, a quiet one "
                f"({source_lufs:.0f} LUFS): the model adds at its own level there; turn the new track down to taste"
            )
    else:
        if op in ("extract", "remove"):
            gain = estimate_stem_gain_db(result, source, sample_rate)
            estimate = model_lufs + gain if gain is not None else source_lufs
            # A stem more than STEM_FLOOR_LU under its mix would be inaudible in it: an estimate that low means the
            # output shares little with the mix (the model invented it), not that the stem is that quiet.
            target = min(max(estimate, source_lufs - STEM_FLOOR_LU), source_lufs)
            info["policy"] = "stem_in_mix"
            info["estimated_stem_lufs"] = _finite(estimate)
        elif math.isfinite(source_lufs):
            target = source_lufs
            info["policy"] = "match_source"
        else:
            target = DEFAULT_TARGET_LUFS
            info["policy"] = "default_target"
        if math.isfinite(target):
            out, gain_db, limited = _reach(result, sample_rate, target, model_lufs, ceiling_db)
        else:  # a part of a source too quiet to have a loudness: by RMS, no louder than that source
            gain_db = min(0.0, rms_db(source) - rms_db(result))
            out, limited = limit(result * np.float32(10 ** (gain_db / 20)), sample_rate, ceiling_db)
            info["warnings"].append(
                f"the source is too quiet to measure (below {ABSOLUTE_GATE_LUFS:g} LUFS); the result is kept no louder "
                "than it (by RMS)"
            )
        info.update(target_lufs=_finite(target), gain_db=round(gain_db, 2), limited=limited)
    result_lufs = integrated_loudness(out, sample_rate)
    info["result_lufs"] = _finite(result_lufs)
    info["true_peak_db"] = _finite(true_peak_db(out, sample_rate))
    if info["target_lufs"] is not None and math.isfinite(result_lufs) and abs(result_lufs - info["target_lufs"]) > 1:
        info["warnings"].append(
            f"reached {result_lufs:.1f} LUFS instead of {info['target_lufs']:.1f}: limited to stay below "
            f"{ceiling_db:g} dBTP"
        )
    return out.astype(np.float32, copy=False), info


def _reach(
    audio: np.ndarray, sample_rate: int, target: float, current: float, ceiling_db: float, rounds: int = 3
) -> tuple[np.ndarray, float, bool]:
    """Gain `audio` from `current` to `target` LUFS, limiting to the ceiling; returns (audio, net gain dB, limited).

    Limiting lowers the loudness a little, so the gain is corrected and the limiter re-run a few times (at most
    MAX_EXTRA_GAIN_DB past the plain gain); `limit` always ends at or under the ceiling, so every round holds it.
    """
    gain_db = target - current
    best: tuple[float, np.ndarray, float, bool] | None = None  # (miss in LU, audio, gain, limited)
    for _ in range(rounds):
        out, did_limit = limit(audio * np.float32(10 ** (gain_db / 20)), sample_rate, ceiling_db)
        reached = integrated_loudness(out, sample_rate) if did_limit else target
        miss = abs(reached - target) if math.isfinite(reached) else math.inf
        if best is None or miss < best[0]:
            best = (miss, out, gain_db, did_limit)
        if not did_limit or miss < 0.2:
            break
        gain_db = min(gain_db + target - reached, target - current + MAX_EXTRA_GAIN_DB)
    _, out, gain_db, limited = best
    return out, float(gain_db), limited
