"""Metrics on signals whose answer is known from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.eval import metrics

RATE = 16000


def _tone(freq: float, seconds: float = 1.0, rate: int = RATE, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _noise(seed: int, seconds: float = 1.0, rate: int = RATE, amp: float = 0.3) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


def test_si_sdr_of_a_scaled_copy_is_huge():
    reference = _noise(0)
    assert metrics.si_sdr(0.5 * reference, reference) > 60.0


def test_si_sdr_of_unrelated_noise_is_very_negative():
    assert metrics.si_sdr(_noise(1), _noise(2)) < -20.0


def test_si_sdr_of_reference_plus_equal_power_noise_is_near_zero_db():
    reference, noise = _noise(3), _noise(4)
    # Orthogonal-ish noise of equal power: the projection keeps the reference, the residual is the noise.
    assert metrics.si_sdr(reference + noise, reference) == pytest.approx(0.0, abs=0.2)


def test_si_sdr_matches_the_closed_form_for_a_known_mixture():
    reference, noise = _noise(5), _noise(6)
    noise = noise - reference * np.dot(noise, reference) / np.dot(reference, reference)  # exactly orthogonal
    estimate = reference + 0.1 * noise
    expected = 10 * math.log10(
        np.sum(reference.astype(np.float64) ** 2) / np.sum((0.1 * noise.astype(np.float64)) ** 2)
    )
    assert metrics.si_sdr(estimate, reference) == pytest.approx(expected, abs=1e-3)


def test_si_sdri_of_doing_nothing_is_zero():
    mixture, target = _noise(7) + _tone(440), _tone(440)
    assert metrics.si_sdr_improvement(mixture, mixture, target) == pytest.approx(0.0, abs=1e-9)


def test_si_sdr_of_stereo_is_the_mean_over_channels():
    left, right = _noise(8), _noise(9)
    estimate = np.stack([left, left + right])
    reference = np.stack([left, left])
    expected = (metrics.si_sdr(left, left) + metrics.si_sdr(left + right, left)) / 2
    assert metrics.si_sdr(estimate, reference) == pytest.approx(expected)


def test_mel_spectrogram_shape_follows_the_official_recipe():
    mel = metrics.mel_spectrogram(_tone(440, seconds=1.0), RATE)
    assert mel.shape == (128, 1 + RATE // 200)


def test_mel_spectrogram_puts_a_tone_in_the_band_around_its_frequency():
    mel = metrics.mel_spectrogram(_tone(1000), RATE)
    centres = metrics._mel_to_hz(np.linspace(0, metrics._hz_to_mel(np.array(8000.0)), 130))[1:-1]
    peak_band = int(np.argmax(mel.mean(axis=1)))
    assert abs(centres[peak_band] - 1000) < 60


def test_mel_spectrogram_resamples_other_rates_to_16k():
    mel_32k = metrics.mel_spectrogram(_tone(500, rate=32000), 32000)
    mel_16k = metrics.mel_spectrogram(_tone(500), RATE)
    assert mel_32k.shape == mel_16k.shape
    assert np.allclose(mel_32k[:, 2:-2], mel_16k[:, 2:-2], rtol=0.05, atol=1e-3 * mel_16k.max())


def test_ssim_of_identical_spectrograms_is_one():
    audio = _tone(300) + _noise(10, amp=0.05)
    assert metrics.mel_ssim(audio, audio, RATE) == pytest.approx(1.0, abs=1e-9)


def test_ssim_of_different_sounds_is_below_one():
    assert metrics.mel_ssim(_tone(300), _noise(11), RATE) < 0.5


def test_ssim_rejects_images_smaller_than_its_window():
    with pytest.raises(ValueError):
        metrics.ssim(np.zeros((5, 5)), np.zeros((5, 5)))


def test_log_mel_distance_is_zero_for_identical_and_grows_with_level_difference():
    audio = _noise(12)
    assert metrics.log_mel_distance(audio, audio, RATE) == pytest.approx(0.0, abs=1e-9)
    # Halving the amplitude lowers every mel bin by 20*log10(2) dB.
    assert metrics.log_mel_distance(0.5 * audio, audio, RATE) == pytest.approx(20 * math.log10(2), abs=1e-3)


def test_frechet_distance_is_zero_for_the_same_set_and_the_squared_mean_shift_for_a_shifted_one():
    embeddings = np.random.default_rng(13).standard_normal((200, 4))
    assert metrics.frechet_distance(embeddings, embeddings) == pytest.approx(0.0, abs=1e-6)
    shifted = embeddings + np.array([1.0, 2.0, 0.0, 0.0])
    assert metrics.frechet_distance(embeddings, shifted) == pytest.approx(5.0, abs=1e-6)


def test_edit_metrics_of_the_oracle_and_the_identity():
    rate = 32000
    stem = _tone(220, rate=rate)
    mixture = stem + _noise(14, rate=rate)
    oracle = metrics.edit_metrics(stem, mixture, stem, rate)
    identity = metrics.edit_metrics(mixture, mixture, stem, rate)
    assert oracle["si_sdr"] > 60 and oracle["mel_ssim"] == pytest.approx(1.0)
    assert oracle["log_mel_distance"] == pytest.approx(0.0, abs=1e-9)
    assert identity["si_sdri"] == pytest.approx(0.0, abs=1e-9)
    assert identity["si_sdr"] < oracle["si_sdr"]


def test_ild_error_is_zero_for_mono_and_the_image_for_dual_mono():
    t = np.arange(16000) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    stereo = np.stack([0.9 * tone, 0.3 * tone])  # panned left
    assert metrics.ild_error(tone, tone, 16000) == 0.0
    assert metrics.ild_error(stereo, stereo, 16000) == pytest.approx(0.0, abs=1e-9)
    # Each channel lies 10*log10(0.81 / 0.45) and 10*log10(0.09 / 0.45) dB from the mean power; dual mono has 0.
    expected = (abs(10 * np.log10(0.81 / 0.45)) + abs(10 * np.log10(0.09 / 0.45))) / 2
    assert metrics.ild_error(stereo.mean(axis=0), stereo, 16000) == pytest.approx(expected, rel=1e-3)
    assert metrics.ild_error(np.stack([tone, tone]), stereo, 16000) == pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match="2 and 3 channels"):
        metrics.ild_error(stereo, np.vstack([stereo, stereo[:1]]), 16000)


def test_edit_metrics_include_the_stereo_image_error():
    t = np.arange(16000) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    stereo = np.stack([0.9 * tone, 0.3 * tone])
    scores = metrics.edit_metrics(np.stack([tone, tone]) * 0.6, stereo, stereo, 16000)
    assert scores["ild_error"] > 4 and metrics.edit_metrics(stereo, stereo, stereo, 16000)["ild_error"] < 1e-9


def test_every_mel_filter_covers_a_frequency_bin():
    # 4 of 128 filters were empty at a 400-point FFT: dark stripes in every picture, bands missing from the metrics.
    from engine.eval.metrics import mel_filterbank

    assert (mel_filterbank().sum(axis=0) > 0).all()


def test_a_low_tone_lights_the_lowest_mel_bands():
    from engine.eval.metrics import mel_spectrogram

    t = np.arange(16000) / 16000
    mel = mel_spectrogram(np.sin(2 * np.pi * 30.0 * t), 16000)  # 30 Hz: inside the lowest filters
    assert mel[:3].mean() > 1e-3 * mel.max()


def test_the_zero_padded_mel_power_stays_on_the_400_point_ffts_scale():
    # mel SSIM (data range 1) reads absolute power: padding the FFT to 1024 points must not raise it 2.56 times
    noise = np.random.default_rng(0).standard_normal(metrics.EVAL_RATE).astype(np.float32) * 0.1
    ours = metrics.mel_spectrogram(noise)
    pad = metrics.MEL_N_FFT // 2
    padded = np.pad(noise, pad, mode="reflect")
    starts = np.arange(ours.shape[1]) * metrics.MEL_HOP
    frames = padded[starts[:, None] + np.arange(metrics.MEL_N_FFT)[None, :]]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(metrics.MEL_N_FFT) / metrics.MEL_N_FFT)
    plain = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2 @ metrics.mel_filterbank(n_fft=metrics.MEL_N_FFT)
    upper = slice(32, None)  # bands wide enough to hold several 400-point bins
    ratio = ours[upper].mean() / plain.T[upper].mean()
    assert ratio == pytest.approx(1.0, abs=0.05)


def test_log_mel_distance_is_not_made_of_inaudible_bins():
    """Floored 80 dB under the reference's loudest bin: -80 dBFS of noise where the target is silent costs next to
    nothing (with an absolute -100 dB floor it made most of the distance, and -65 dBFS of noise added to an input
    'improved' it), while a real level error still counts in full where the target sounds."""
    rng = np.random.default_rng(0)
    t = np.arange(5 * RATE) / RATE
    target = 0.3 * np.sin(2 * np.pi * 440 * t) * (t < 2.5)  # a note, then silence
    leak = target + rng.normal(0, 1e-4, t.shape) * (t >= 2.5)  # -80 dBFS of hiss in the silent half
    assert metrics.log_mel_distance(leak, target, RATE) < 0.2  # an absolute -100 dB floor gave about 20 dB
    assert metrics.log_mel_distance(0.5 * target, target, RATE) > 1.0


def test_the_level_grid_finds_the_gain_a_quieter_copy_needs():
    target = _noise(12)
    grid = metrics.level_grid(0.5 * target, target, RATE)
    best = int(np.argmin(grid["log_mel_distance"]))
    assert metrics.LEVEL_GAINS_DB[best] == 6.0 and grid["log_mel_distance"][best] == pytest.approx(0.0, abs=0.05)
    assert int(np.argmax(grid["mel_ssim"])) == best and len(grid["mel_ssim"]) == len(metrics.LEVEL_GAINS_DB)


def test_a_noise_bed_has_its_labelled_level_where_it_is_scored_whatever_the_rate():
    """Broadband, a bed labelled -40 dBFS at 44.1 kHz was -44.6 dBFS in the band the metrics hear (16 kHz)."""
    from engine.eval.metrics import EVAL_RATE, _unit_noise
    from engine.resample import resample

    for rate in (16000, 32000, 44100):
        for colour in ("white", "pink"):
            heard = resample(_unit_noise(colour, rate * 2, rate)[None], rate, EVAL_RATE)[0]
            assert 10 * np.log10(np.mean(heard**2)) == pytest.approx(0.0, abs=0.3), (rate, colour)  # the filter's edge
