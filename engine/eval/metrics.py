"""Edit-quality metrics that need no pretrained network: SI-SDR, SI-SDRi, mel SSIM, log-mel distance, ILD error, FAD.

Pure numpy/scipy, no torch. The recipes follow the official evaluation (evaluation/main.py of Instruct-MusicGen) so
that our numbers can be read beside the paper's:
- everything is computed at 16 kHz (inputs are resampled first);
- SI-SDR as torchmetrics' ScaleInvariantSignalDistortionRatio (no mean removal, float32 epsilon), so a perfect
  estimate gives a huge finite value rather than inf;
- SSIM on a power mel spectrogram with torchaudio's MelSpectrogram defaults at 16 kHz (n_fft 400, hop 200, 128 HTK
  mels, no filter normalisation) and torchmetrics' SSIM settings (Gaussian 11 x 11, sigma 1.5, data_range 1.0,
  mean over the interior where the window fits). data_range 1.0 on unnormalised power is the official choice:
  we keep it so that numbers compare, not because it is a good SSIM.
Checked against torchmetrics 1.9 (installed aside, not a dependency): SI-SDR agrees to 1e-6 dB; SSIM equals its
reflect-padded map cropped to the interior (the torchmetrics 0.11 definition, the official environment's) to 1e-12;
torchmetrics 1.9 averages the padded border too, which reads about 1% lower. The mel front end follows torchaudio's
documented defaults but was not compared with torchaudio itself (not installable beside this torch).
Audio arrays are float `[N]` (mono) or `[C, N]`; multichannel scores are the mean over channels.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from engine.levels import as_channels
from engine.resample import resample as resample_audio

EVAL_RATE = 16000
# torchmetrics computes SI-SDR in the input dtype; the official audio is float32, so its epsilon sets the ceiling.
SI_SDR_EPS = float(np.finfo(np.float32).eps)
MEL_N_FFT = 400  # the analysis window (25 ms), as the official recipe's
# The FFT of each window is zero-padded to this length: at 400 points (40 Hz bins) 4 of the 128 lowest mel filters
# (narrower than a bin) cover no bin and stay empty, drawing dark stripes in every picture; 1024 points (15.6 Hz)
# give every filter a bin, with the window's time resolution unchanged.
MEL_FFT_SIZE = 1024
MEL_HOP = 200
MEL_N_MELS = 128
SSIM_KERNEL = 11
SSIM_SIGMA = 1.5
SSIM_DATA_RANGE = 1.0
# Floor of the pictures' dB scale, in power units (-100 dB), and the lowest floor the log-mel distance uses.
LOG_MEL_FLOOR = 1e-10
# The log-mel distance floors both spectrograms this far under the reference's loudest bin: differences in bins
# 80 dB under it are inaudible beside it, and with an absolute floor they made most of the distance (two thirds of
# the unchanged input's against an extracted stem; -65 dBFS of white noise added to an input "improved" it by 1.4 dB).
LOG_MEL_RANGE_DB = 80.0
# Gains of the level-only baseline (level_grid): what a plain volume change of the unchanged input scores.
LEVEL_GAINS_DB = tuple(round(-12.0 + 0.5 * i, 1) for i in range(37))  # -12 dB to +6 dB
# Beds of the noise baseline (noise_grid): the unchanged input plus white or pink noise at an RMS level (dBFS). A
# review measured white noise at -65 dBFS beating the identity on add's log-mel distance (8.15 vs 8.57 dB), pink at
# -50 dBFS more (7.44): near-silent bins weigh as much as loud ones there, so an edit must also beat a noise bed.
NOISE_BEDS = tuple((colour, float(level)) for colour in ("white", "pink") for level in range(-80, -35, 10))


def to_db(power: np.ndarray) -> np.ndarray:
    """Power (a mel spectrogram) in dB, floored at LOG_MEL_FLOOR: what log-mel distance and the pictures compare."""
    return 10.0 * np.log10(np.maximum(power, LOG_MEL_FLOOR))


def _match(estimate: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both to [C, N] with the same channel count and the shorter length (the official code trims the output)."""
    est, ref = as_channels(estimate), as_channels(reference)
    if est.shape[0] != ref.shape[0]:
        # A mono reference against a stereo output (or the reverse): compare the channel means.
        est, ref = est.mean(axis=0, keepdims=True), ref.mean(axis=0, keepdims=True)
    length = min(est.shape[1], ref.shape[1])
    return est[:, :length], ref[:, :length]


def resample(audio: np.ndarray, rate: int, new_rate: int = EVAL_RATE) -> np.ndarray:
    """`[N]` or `[C, N]` audio at the metrics' rate (engine.resample, time-aligned), in float64."""
    return resample_audio(audio, int(rate), int(new_rate), dtype=np.float64)


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant SDR in dB of `estimate` against `reference` (same rate); mean over channels."""
    est, ref = _match(estimate, reference)
    eps = SI_SDR_EPS
    scores = []
    for est_ch, ref_ch in zip(est, ref, strict=True):
        alpha = (np.dot(est_ch, ref_ch) + eps) / (np.dot(ref_ch, ref_ch) + eps)
        projection = alpha * ref_ch
        residual = projection - est_ch
        ratio = (np.dot(projection, projection) + eps) / (np.dot(residual, residual) + eps)
        scores.append(10.0 * math.log10(ratio))
    return float(np.mean(scores))


def si_sdr_improvement(estimate: np.ndarray, mixture: np.ndarray, reference: np.ndarray) -> float:
    """SI-SDRi = SI-SDR(estimate, reference) - SI-SDR(mixture, reference): what the edit gained over doing nothing."""
    return si_sdr(estimate, reference) - si_sdr(mixture, reference)


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + freq / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=8)
def mel_filterbank(rate: int = EVAL_RATE, n_fft: int = MEL_FFT_SIZE, n_mels: int = MEL_N_MELS) -> np.ndarray:
    """Triangular HTK mel filters, unnormalised, from 0 Hz to Nyquist: `[n_fft // 2 + 1, n_mels]`."""
    bin_freqs = np.linspace(0.0, rate // 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(rate / 2.0)), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_freqs[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (upper[None, :] - bin_freqs[:, None]) / (upper - centre)[None, :]
    return np.maximum(0.0, np.minimum(rising, falling))


def mel_spectrogram(audio: np.ndarray, rate: int = EVAL_RATE) -> np.ndarray:
    """Power mel spectrogram of mono audio (channels are averaged) at 16 kHz: `[n_mels, frames]`, frames = 1 + N // hop.

    Centred frames with reflect padding and a periodic Hann window, as torchaudio's MelSpectrogram defaults.
    """
    mono = as_channels(resample(audio, rate)).mean(axis=0)  # [N]
    pad = MEL_N_FFT // 2
    # Clips under 12.5 ms are too short to reflect-pad: zero-pad those.
    padded = np.pad(mono, pad, mode="reflect" if mono.shape[0] > pad else "constant")
    n_frames = 1 + (padded.shape[0] - MEL_N_FFT) // MEL_HOP
    starts = np.arange(n_frames) * MEL_HOP
    frames = padded[starts[:, None] + np.arange(MEL_N_FFT)[None, :]]  # [frames, n_fft]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(MEL_N_FFT) / MEL_N_FFT)
    # zero-padded bins sample the same spectrum more densely: a frame's power sums to MEL_FFT_SIZE / MEL_N_FFT times
    # the 400-point FFT's (Parseval), so it is scaled back. Mel SSIM (data range 1) reads absolute power: on the
    # official recipe's scale (the 400-point FFT's), its figures stay comparable with the paper's.
    spectrum = np.fft.rfft(frames * window, n=MEL_FFT_SIZE, axis=1)  # [frames, MEL_FFT_SIZE // 2 + 1]
    power = np.abs(spectrum) ** 2 * (MEL_N_FFT / MEL_FFT_SIZE)
    return (power @ mel_filterbank()).T  # [n_mels, frames]


def _gaussian_window() -> np.ndarray:
    offsets = np.arange(SSIM_KERNEL) - (SSIM_KERNEL - 1) / 2.0
    weights = np.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return weights / weights.sum()


def _gaussian_valid(image: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter keeping only positions where the whole window fits."""
    from scipy.signal import convolve

    window = _gaussian_window()
    rows = convolve(image, window[:, None], mode="valid")
    return convolve(rows, window[None, :], mode="valid")


def ssim(image_a: np.ndarray, image_b: np.ndarray, data_range: float = SSIM_DATA_RANGE) -> float:
    """Structural similarity of two 2-D arrays (Gaussian 11 x 11, sigma 1.5), mean over the valid interior.

    Arrays are trimmed to their common width; both sides must be at least 11 x 11.
    """
    a, b = np.asarray(image_a, dtype=np.float64), np.asarray(image_b, dtype=np.float64)
    width = min(a.shape[1], b.shape[1])
    a, b = a[:, :width], b[:, :width]
    if a.shape != b.shape or min(a.shape) < SSIM_KERNEL:
        raise ValueError(f"SSIM needs two arrays of the same height, at least {SSIM_KERNEL} x {SSIM_KERNEL}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _gaussian_valid(a), _gaussian_valid(b)
    var_a = _gaussian_valid(a * a) - mu_a**2
    var_b = _gaussian_valid(b * b) - mu_b**2
    cov = _gaussian_valid(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(index.mean())


def mel_ssim(estimate: np.ndarray, reference: np.ndarray, rate: int) -> float:
    """SSIM between the 16 kHz power mel spectrograms of two clips (the official recipe); 1.0 when identical."""
    return ssim(mel_spectrogram(estimate, rate), mel_spectrogram(reference, rate))


def log_mel_distance(estimate: np.ndarray, reference: np.ndarray, rate: int) -> float:
    """Mean absolute difference of the 16 kHz mel spectrograms in dB (0 when identical; lower is better), both floored
    LOG_MEL_RANGE_DB under the reference's loudest bin."""
    return _log_mel_distance(mel_spectrogram(estimate, rate), mel_spectrogram(reference, rate))


def _log_mel_distance(est: np.ndarray, ref: np.ndarray) -> float:
    frames = min(est.shape[1], ref.shape[1])
    est, ref = est[:, :frames], ref[:, :frames]
    floor = max(LOG_MEL_FLOOR, float(ref.max(initial=0.0)) * 10.0 ** (-LOG_MEL_RANGE_DB / 10.0))
    return float(np.mean(np.abs(10.0 * np.log10(np.maximum(est, floor) / np.maximum(ref, floor)))))


def level_grid(input_audio: np.ndarray, target: np.ndarray, rate: int) -> dict[str, list[float]]:
    """Mel SSIM and log-mel distance of the unchanged input at each gain of LEVEL_GAINS_DB against the target: what a
    volume change alone scores. An edit that does not beat the best of these does no more than a fader would."""
    inp, ref = mel_spectrogram(input_audio, rate), mel_spectrogram(target, rate)
    grid: dict[str, list[float]] = {"mel_ssim": [], "log_mel_distance": []}
    for gain_db in LEVEL_GAINS_DB:
        scaled = inp * 10.0 ** (gain_db / 10.0)  # a gain g on the audio is g squared on its power spectrogram
        grid["mel_ssim"].append(ssim(scaled, ref))
        grid["log_mel_distance"].append(_log_mel_distance(scaled, ref))
    return grid


def noise_label(colour: str, level_db: float) -> str:
    return f"{colour} noise at {level_db:g} dBFS"


def _unit_noise(colour: str, n: int, rate: int = EVAL_RATE) -> np.ndarray:
    """[n] noise of RMS 1 at `rate`, the same for every clip (seeded): white, or pink (power falling 3 dB an octave),
    band-limited to what the metrics hear (EVAL_RATE's band): broadband, a bed labelled -40 dBFS at 44.1 kHz was
    -44.6 dBFS where it was scored."""
    white = np.random.default_rng(0).standard_normal(n)
    if n > 1 and (colour == "pink" or rate > EVAL_RATE):
        spectrum = np.fft.rfft(white)
        if colour == "pink":
            spectrum[1:] /= np.sqrt(np.arange(1, spectrum.size))
            spectrum[0] = 0.0
        spectrum[np.fft.rfftfreq(n, 1.0 / rate) > EVAL_RATE / 2] = 0.0
        white = np.fft.irfft(spectrum, n)
    return white / max(float(np.sqrt(np.mean(white**2))), 1e-12)


def noise_grid(input_audio: np.ndarray, target: np.ndarray, rate: int) -> dict[str, list[float]]:
    """Mel SSIM and log-mel distance of the unchanged input plus each bed of NOISE_BEDS against the target: what
    adding noise alone scores. An edit that does not beat the best of these does no more than a noise bed would."""
    mono = as_channels(input_audio).mean(axis=0)
    ref = mel_spectrogram(target, rate)
    grid: dict[str, list[float]] = {"mel_ssim": [], "log_mel_distance": []}
    beds = {colour: _unit_noise(colour, mono.shape[0], rate) for colour in {c for c, _ in NOISE_BEDS}}
    for colour, level_db in NOISE_BEDS:
        noisy = mel_spectrogram(mono + beds[colour] * 10.0 ** (level_db / 20.0), rate)
        grid["mel_ssim"].append(ssim(noisy, ref))
        grid["log_mel_distance"].append(_log_mel_distance(noisy, ref))
    return grid


def frechet_distance(embeddings_a: np.ndarray, embeddings_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets `[n, d]` (the FAD formula)."""
    from scipy.linalg import sqrtm

    a, b = np.asarray(embeddings_a, dtype=np.float64), np.asarray(embeddings_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError("Fréchet distance needs two [n, d] embedding sets with n >= 2 and the same d")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        # Near-singular covariances (few examples): nudge both diagonals, as FAD implementations commonly do.
        offset = np.eye(a.shape[1]) * 1e-6
        covmean = sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))


# Inter-channel level differences are clipped to this many dB, so that a channel that is silent in one bin stays finite.
ILD_LIMIT_DB = 30.0
# Mel bins more than this far under the reference's loudest one do not count in the ILD error.
ILD_RANGE_DB = 60.0


def _channel_mels(audio: np.ndarray, rate: int) -> np.ndarray:
    """Per-channel 16 kHz power mel spectrograms: `[C, n_mels, frames]`."""
    return np.stack([mel_spectrogram(channel, rate) for channel in as_channels(audio)])


def ild_error(estimate: np.ndarray, reference: np.ndarray, rate: int) -> float:
    """Stereo-image error: mean |ILD(estimate) - ILD(reference)| in dB over the mel bins of the reference's energy.

    The ILD of channel c in a 16 kHz mel bin is its power over the mean power of the channels, in dB (clipped to
    +-ILD_LIMIT_DB); bins within ILD_RANGE_DB of the reference's loudest count, weighted by the reference's power.
    A mono signal has no level difference (ILD 0 dB everywhere: it plays centred), so mono against mono scores 0 and
    a dual-mono output against a panned reference scores the reference's own image. Two different channel counts
    above one cannot be compared: ValueError.
    """
    est, ref = _channel_mels(estimate, rate), _channel_mels(reference, rate)
    if est.shape[0] > 1 and ref.shape[0] > 1 and est.shape[0] != ref.shape[0]:
        raise ValueError(f"cannot compare the images of {est.shape[0]} and {ref.shape[0]} channels")
    frames = min(est.shape[2], ref.shape[2])
    est, ref = est[..., :frames], ref[..., :frames]

    def ild(power: np.ndarray) -> np.ndarray:
        mean = power.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            level = 10.0 * np.log10(np.maximum(power, LOG_MEL_FLOOR) / np.maximum(mean, LOG_MEL_FLOOR))
        return np.clip(level, -ILD_LIMIT_DB, ILD_LIMIT_DB)

    weight = ref.mean(axis=0)  # [n_mels, frames]
    if not np.any(weight > 0):
        return 0.0
    live = weight >= weight.max() * 10 ** (-ILD_RANGE_DB / 10)
    difference = np.abs(ild(est) - ild(ref)).mean(axis=0)  # broadcasts a mono side's zeros
    return float(np.sum(difference[live] * weight[live]) / np.sum(weight[live]))


def edit_metrics(output: np.ndarray, input_audio: np.ndarray, target: np.ndarray, rate: int) -> dict[str, float]:
    """All network-free metrics of one edit at 16 kHz: si_sdr, si_sdri, mel_ssim, log_mel_distance, ild_error."""
    out16, in16, tgt16 = (resample(x, rate) for x in (output, input_audio, target))
    return {
        "si_sdr": si_sdr(out16, tgt16),
        "si_sdri": si_sdr_improvement(out16, in16, tgt16),
        "mel_ssim": mel_ssim(out16, tgt16, EVAL_RATE),
        "log_mel_distance": log_mel_distance(out16, tgt16, EVAL_RATE),
        "ild_error": ild_error(out16, tgt16, EVAL_RATE),
    }
