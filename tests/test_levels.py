"""Edit results land at the level a producer expects (BS.1770 loudness), never above -1 dBTP."""

from __future__ import annotations

import json
import math
import re
import time
import tracemalloc

import numpy as np
import pytest

from engine.errors import AudioError
from engine.levels import (
    DEFAULT_TARGET_LUFS,
    MAX_MODEL_INPUT_GAIN_DB,
    STEM_FLOOR_LU,
    TRUE_PEAK_CEILING_DB,
    integrated_loudness,
    is_silent,
    limit,
    limit_depth,
    match_level,
    model_input_gain,
    rms_db,
    true_peak_db,
)
from engine.modes import LAYER, MASK, RESYNTH

SR = 44100


def _tone(freq: float, seconds: float, amp: float, sr: int = SR, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t + phase))[None].astype(np.float32)


def _music_like(seconds: float = 3.0, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A bass tone plus gated high noise bursts (drum-like): a crest factor unlike a plain sine."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    bass = 0.3 * np.sin(2 * np.pi * 82.4 * t)
    hats = 0.2 * rng.standard_normal(t.size) * ((t * 4) % 1 < 0.08)
    return (bass + hats)[None].astype(np.float32)


def test_silence_measures_minus_infinity_without_warnings():
    with np.errstate(all="raise"):
        assert integrated_loudness(np.zeros((2, SR), dtype=np.float32), SR) == -math.inf
        assert true_peak_db(np.zeros((1, 100), dtype=np.float32), SR) == -math.inf


def test_a_full_scale_1khz_sine_reads_about_minus_3_lufs():
    # BS.1770: a 0 dBFS 997 Hz sine in one channel reads -3.01 LKFS.
    assert integrated_loudness(_tone(997, 2.0, 1.0), SR) == pytest.approx(-3.01, abs=0.1)


@pytest.mark.parametrize("seconds", [0.05, 0.2, 0.39])
def test_clips_shorter_than_a_gating_block_are_measured(seconds):
    long = integrated_loudness(_tone(440, 3.0, 0.1), SR)
    short = integrated_loudness(_tone(440, seconds, 0.1), SR)
    assert short == pytest.approx(long, abs=0.5)


def test_true_peak_sees_inter_sample_peaks():
    # A sine at fs/4 sampled 45 degrees off its crests: samples reach 0.707, the waveform reaches 1.0.
    wave = _tone(SR / 4, 0.1, 1.0, phase=np.pi / 4)
    assert 20 * np.log10(np.abs(wave).max()) == pytest.approx(-3.01, abs=0.05)
    assert true_peak_db(wave, SR) == pytest.approx(0.0, abs=0.2)


def test_a_region_cut_mid_waveform_reads_no_peak_its_edges_do_not_have():
    """The oversampling is padded with the edge samples, not zeros: a region starting or ending on a loud sample rang
    like a step there (a full-scale DC region read +1.1 dBTP, a sine cut at its crest +1.0 dBTP for -0.09 dBFS), and
    the mask mode's ceiling let a result pass the recording's real peak by that much."""
    dc = np.full((2, SR), -1.0, dtype=np.float32)
    assert true_peak_db(dc, SR) == pytest.approx(0.0, abs=0.05)
    crest_first = _tone(50, 1.0, 0.99, phase=np.pi / 2)  # starts (and ends) on its crest
    assert np.abs(crest_first[..., 0]).max() == pytest.approx(0.99, abs=1e-6)
    assert true_peak_db(crest_first, SR) == pytest.approx(20 * np.log10(0.99), abs=0.05)


def test_audio_under_the_ceiling_is_handed_back_as_it_is_not_copied():
    """An hour of stereo under the ceiling was copied whole (1.3 GB) to be returned unchanged, beside a whole-length
    array of its per-sample peaks."""
    audio = _tone(440, 1.0, 0.5)
    out, deepest = limit_depth(audio, SR)
    assert deepest is None and out is audio


def test_limiter_brings_the_true_peak_under_the_ceiling():
    hot = _music_like() * 4.0
    out, limited = limit(hot, SR, -1.0)
    assert limited
    assert true_peak_db(out, SR) <= -1.0


def test_limiter_leaves_audio_under_the_ceiling_untouched():
    quiet = _music_like() * 0.5
    out, limited = limit(quiet, SR, -1.0)
    assert not limited
    np.testing.assert_array_equal(out, quiet)


@pytest.mark.parametrize("model_gain", [0.05, 0.5, 3.0])
def test_add_matches_the_source_loudness_within_1_lu(model_gain):
    source = _music_like(seed=1) * 0.8
    result = _music_like(seed=2) * model_gain  # the model's output at some arbitrary level
    out, info = match_level(result, source, SR, "add", mode=RESYNTH)
    assert integrated_loudness(out, SR) == pytest.approx(integrated_loudness(source, SR), abs=1.0)
    assert true_peak_db(out, SR) <= -1.0
    assert info["policy"] == "match_source"


def _with_transients(seed: int, amp: float) -> np.ndarray:
    """A bass line at a healthy level with sparse clicks that peak above full scale, as drum hits in a loud mix."""
    t = np.arange(3 * SR) / SR
    out = 0.5 * np.sin(2 * np.pi * 82.4 * t + seed)
    out[(np.arange(6) * SR // 2 + 1000 * seed)] = 1.6
    return (amp * out)[None].astype(np.float32)


def test_matching_a_hot_source_is_limited_and_never_clips():
    source = _with_transients(seed=1, amp=1.0)  # true peak above 0 dBFS
    result = _with_transients(seed=2, amp=0.1)
    out, info = match_level(result, source, SR, "add", mode=RESYNTH)
    assert info["limited"] is True
    assert true_peak_db(out, SR) <= -1.0
    # within _reach's own stopping rule (0.2 LU): its rounds win back what the limiter took (one round missed 0.35)
    assert integrated_loudness(out, SR) == pytest.approx(integrated_loudness(source, SR), abs=0.2)


def test_an_unreachable_loudness_is_reported_and_the_ceiling_still_holds():
    source = _music_like(seed=1) * 3.2  # dense bursts far above full scale: louder than -1 dBTP allows
    out, info = match_level(_music_like(seed=2) * 0.1, source, SR, "add", mode=RESYNTH)
    assert true_peak_db(out, SR) <= -1.0
    assert integrated_loudness(out, SR) < integrated_loudness(source, SR) - 1.0
    assert any("instead of" in w for w in info["warnings"])


def test_stereo_source_and_result_are_matched_on_all_channels():
    mono = _music_like(seed=3)
    source = np.concatenate([mono * 0.9, mono * 0.4])
    result = np.repeat(_music_like(seed=4) * 0.1, 2, axis=0)
    out, _ = match_level(result, source, SR, "add", mode=RESYNTH)
    assert out.shape == (2, source.shape[1])
    assert integrated_loudness(out, SR) == pytest.approx(integrated_loudness(source, SR), abs=1.0)


def test_extract_puts_the_stem_back_at_its_level_in_the_mix():
    t = np.arange(3 * SR) / SR
    rng = np.random.default_rng(0)
    bass = (0.25 * np.sin(2 * np.pi * 110 * t))[None]
    hats = (0.3 * np.diff(rng.standard_normal(t.size + 1)) * ((t * 4) % 1 < 0.1))[None]  # high-passed noise
    mix = (bass + hats).astype(np.float32)
    extracted = (bass * 0.05).astype(np.float32)  # the model's stem, far too quiet
    out, info = match_level(extracted, mix, SR, "extract", mode=RESYNTH)
    assert info["policy"] == "stem_in_mix"
    assert integrated_loudness(out, SR) == pytest.approx(integrated_loudness(bass, SR), abs=1.0)
    assert integrated_loudness(out, SR) < integrated_loudness(mix, SR)


@pytest.mark.parametrize("pan", [0.0, 0.5, 1.0])
def test_an_extracted_stem_panned_off_centre_lands_at_its_level_in_the_mix(pan):
    """The model hears (and returns) the mean of the channels: a stem panned hard left comes back at half its
    amplitude on both channels. Its gain was measured on amplitude downmixes, which hid the 3 dB that loss costs in
    loudness (a review: the hard-left stem landed 3.0 dB low, half left 0.5 dB)."""
    t = np.arange(3 * SR) / SR
    rng = np.random.default_rng(1)
    bass = 0.4 * np.sin(2 * np.pi * 110 * t) * (1.0 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    panned = np.stack([bass, (1.0 - pan) * bass])  # pan 1: hard left
    hats = 0.2 * np.diff(rng.standard_normal(t.size + 1)) * ((t * 4) % 1 < 0.1)
    mix = (panned + hats[None]).astype(np.float32)
    heard = np.repeat(panned.mean(axis=0, keepdims=True), 2, axis=0)  # a perfect extraction of what the model hears
    out, info = match_level((heard * 0.1).astype(np.float32), mix, SR, "extract", mode=RESYNTH)
    assert info["policy"] == "stem_in_mix"
    assert integrated_loudness(out, SR) == pytest.approx(integrated_loudness(panned, SR), abs=0.3)


def _bass_and_hats() -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(3 * SR) / SR
    rng = np.random.default_rng(0)
    bass = (0.5 * np.sin(2 * np.pi * 55 * t))[None].astype(np.float32)
    hats = (0.15 * np.diff(rng.standard_normal(t.size + 1)) * ((t * 4) % 1 < 0.1))[None].astype(np.float32)
    return bass, hats


def test_remove_leaves_the_rest_of_the_mix_at_its_level_in_the_mix():
    bass, hats = _bass_and_hats()
    mix = bass + hats  # a bass-heavy mix: the rest is far quieter than the whole
    rest = hats * 0.05  # the model's mix-without-bass, far too quiet
    out, info = match_level(rest, mix, SR, "remove", mode=RESYNTH)
    assert info["policy"] == "stem_in_mix"
    assert integrated_loudness(out, SR) == pytest.approx(integrated_loudness(hats, SR), abs=1.5)
    assert integrated_loudness(hats, SR) < integrated_loudness(mix, SR) - 6  # what matching the mix would have done


@pytest.mark.parametrize("op", ["extract", "remove", "add"])
def test_in_mask_mode_the_recordings_level_is_kept(op):
    bass, hats = _bass_and_hats()
    result = {"extract": bass, "remove": hats, "add": bass + hats}[op]  # the recording's own samples
    out, info = match_level(result, bass + hats, SR, op, mode=MASK)
    assert info["policy"] == "recording" and info["gain_db"] == 0.0 and not info["limited"]
    np.testing.assert_array_equal(out, result)


def test_in_mask_mode_only_peaks_above_the_sources_own_are_limited():
    source = _with_transients(seed=1, amp=1.0)  # its own true peak is above 0 dBFS
    out, info = match_level(source, source, SR, "remove", mode=MASK)
    assert not info["limited"]  # as hot as the recording, not hotter: left alone
    out, info = match_level(source * 2.0, source, SR, "add", mode=MASK)
    assert info["limited"] and true_peak_db(out, SR) <= true_peak_db(source, SR) + 0.05


def test_a_mask_result_whose_samples_pass_full_scale_where_the_recordings_do_not_says_so():
    """A 16-bit square wave's samples stop at full scale while its true peak is +2 dBTP: the mask mode's ceiling
    (the recording's true peak) let a result's samples reach +0.75 dBFS with no word (a DAW rendering to fixed point
    clips them)."""
    t = np.arange(SR) / SR
    square = np.sign(np.sin(2 * np.pi * 110 * t + 0.1))[None].astype(np.float32) * np.float32(32767 / 32768)
    assert true_peak_db(square, SR) > 1.0
    fundamental = _tone(110, 1.0, 1.05)  # its samples past full scale, its true peak under the recording's
    out, info = match_level(fundamental, square, SR, "extract", mode=MASK)
    assert not info["limited"] and np.abs(out).max() > 1.0
    (note,) = [w for w in info["warnings"] if "fixed-point" in w]
    assert "samples reach +0.4 dBFS" in note
    _, info = match_level(square * np.float32(0.9), square, SR, "extract", mode=MASK)
    assert not [w for w in info["warnings"] if "fixed-point" in w]


@pytest.mark.parametrize("mode", [MASK, LAYER])
def test_an_add_far_louder_than_a_quiet_recording_says_so(mode):
    """The mask modes keep the recording's level and the part comes at the level the model heard: on a recording at
    -50 dB RMS the part came out 19 dB above it, with no word."""
    quiet = _music_like(seed=3) * np.float32(10 ** (-50 / 20) / 0.3)
    part = _music_like(seed=4) * np.float32(0.05)
    result = part if mode == LAYER else quiet + part
    _, info = match_level(result, quiet, SR, "add", mode=mode)
    (note,) = [w for w in info["warnings"] if "turn the new track down" in w]
    assert note.startswith("the added part is" if mode == LAYER else "the result is")
    loud = _music_like(seed=3) * np.float32(0.3)  # a recording at a mix's level: the part sits under it, no word
    _, info = match_level(part if mode == LAYER else loud + part, loud, SR, "add", mode=mode)
    assert not [w for w in info["warnings"] if "turn the new track down" in w]


def test_extract_never_makes_the_stem_louder_than_the_mix():
    mix = _music_like(seed=5) * 0.3
    extracted = _music_like(seed=6) * 2.0  # nothing like the mix: the estimate is unreliable
    out, info = match_level(extracted, mix, SR, "extract", mode=RESYNTH)
    assert info["target_lufs"] <= info["source_lufs"]
    assert true_peak_db(out, SR) <= -1.0


def test_a_silent_result_gets_no_gain_and_a_warning():
    source = _music_like() * 0.5
    out, info = match_level(np.zeros_like(source), source, SR, "remove", mode=RESYNTH)
    np.testing.assert_array_equal(out, 0.0)
    assert info["policy"] == "silent"
    assert info["gain_db"] == 0.0
    assert any("silence" in w for w in info["warnings"])


def test_a_result_too_quiet_to_measure_is_not_called_silence():
    """A -70 dBFS recording in mask mode: the result is the recording's own, just under the meter's gate."""
    source = _music_like() * 10 ** (-75 / 20)
    out, info = match_level(source * 0.5, source, SR, "extract", mode=MASK)
    np.testing.assert_array_equal(out, source * 0.5)
    assert info["warnings"] == [
        "the result is too quiet to measure (under the loudness meter's -70 LUFS gate); no gain applied"
    ]


@pytest.mark.parametrize("op", ["extract", "remove"])
def test_a_part_of_a_source_too_quiet_to_measure_is_never_louder_than_it(op):
    """Under the loudness meter's gate there is no loudness to match: a reverb tail or a fade came back at the model's
    full level, tens of dB over the source. By RMS, a part stays no louder than its whole."""
    source = _music_like() * 10 ** (-75 / 20)
    loud = _music_like(seed=1) * 0.8  # what a model made of it, at its own level
    out, info = match_level(loud, source, SR, op, mode=RESYNTH)
    assert info["source_lufs"] is None and rms_db(out) <= rms_db(source) + 0.01
    assert rms_db(out) > rms_db(source) - 1  # the part at its whole's level: no quieter than the gain says
    assert any("no louder than it" in w for w in info["warnings"])
    quiet = source * 0.1  # a part already quieter than its whole is not brought up to it
    out, info = match_level(quiet, source, SR, op, mode=RESYNTH)
    assert info["gain_db"] == 0.0 and rms_db(out) == pytest.approx(rms_db(quiet), abs=1e-6)


@pytest.mark.parametrize(("mode", "policy"), [(MASK, "recording"), (RESYNTH, "match_source")])
def test_at_rates_of_3_khz_and_under_the_level_policy_runs_and_the_ceiling_holds(mode, policy):
    """At 2 kHz the K-weighting's shelf lies past Nyquist: the meter read -inf for music, every result was "too quiet
    to measure" and resynth's came back at the model's level (17 dB over the source's). It reads the high-pass alone
    there now; the ceiling holds as everywhere (a result was once handed back unlimited at 3.6 peak)."""
    rate = 2000
    source = _music_like(3.0, rate) * 0.5
    loud = _music_like(3.0, rate, seed=2) * 8.0
    out, info = match_level(loud, source, rate, "add", mode=mode)
    assert info["policy"] == policy and not any("too quiet" in warning for warning in info["warnings"])
    assert info["limited"] is (mode == MASK)  # the mask mode keeps the result's level: past the ceiling, limited
    assert info["source_lufs"] is not None and info["result_lufs"] is not None
    assert true_peak_db(out, rate) <= max(TRUE_PEAK_CEILING_DB, true_peak_db(source, rate)) + 1e-3


def test_add_on_a_silent_source_lands_at_the_default_level():
    source = np.zeros((1, 2 * SR), dtype=np.float32)
    out, info = match_level(_music_like() * 0.01, source, SR, "add", mode=RESYNTH)
    assert info["policy"] == "default_target"
    assert integrated_loudness(out, SR) == pytest.approx(DEFAULT_TARGET_LUFS, abs=1.0)


def test_raw_keeps_the_model_output_as_is_and_still_reports_levels():
    source = _music_like(seed=1) * 0.8
    result = _music_like(seed=2) * 0.05
    out, info = match_level(result, source, SR, "add", raw=True, mode=RESYNTH)
    np.testing.assert_array_equal(out, result)
    assert info["policy"] == "raw"
    assert info["result_lufs"] == pytest.approx(integrated_loudness(result, SR), abs=0.01)


def test_short_results_are_matched_too():
    source = _tone(220, 0.3, 0.5)
    result = _tone(220, 0.3, 0.02)
    out, _ = match_level(result, source, SR, "add", mode=RESYNTH)
    assert integrated_loudness(out, SR) == pytest.approx(integrated_loudness(source, SR), abs=1.0)


@pytest.mark.parametrize("sr", [8000, 48000])
def test_levels_work_at_other_sample_rates(sr):
    source = _music_like(sr=sr) * 0.7
    out, _ = match_level(_music_like(sr=sr, seed=9) * 0.1, source, sr, "add", mode=RESYNTH)
    assert integrated_loudness(out, sr) == pytest.approx(integrated_loudness(source, sr), abs=1.0)
    assert true_peak_db(out, sr) <= -1.0


def test_info_is_json_serialisable_even_for_silence():
    source = np.zeros((1, SR), dtype=np.float32)
    out, info = match_level(np.zeros_like(source), source, SR, "add", mode=RESYNTH)
    decoded = json.loads(json.dumps(info, allow_nan=False))  # no -inf LUFS or NaN gain on the wire
    assert decoded["policy"] == "silent" and decoded["gain_db"] == 0.0 and not np.abs(out).any()
    assert decoded["source_lufs"] is None and decoded["model_lufs"] is None and decoded["result_lufs"] is None


def test_true_peak_and_limiter_work_block_by_block_with_no_seam(monkeypatch):
    """A long region is measured and limited in blocks (the 4x oversampled signal of an hour of stereo would need
    tens of GB): the same peaks and gains as the whole at once, peaks placed across the joins included."""
    from engine import levels

    rate = 48000
    audio = np.concatenate([_music_like(3.0, rate, seed) for seed in (1, 2)]) * 4.0  # peaks well over the ceiling
    monkeypatch.setattr(levels, "_BLOCK", 10**9)
    whole_peaks = levels._sample_true_peaks(audio, rate)
    whole, _ = limit(audio, rate)
    monkeypatch.setattr(levels, "_BLOCK", 7919)  # a prime: joins fall anywhere
    blocked_peaks = levels._sample_true_peaks(audio, rate)
    blocked, _ = limit(audio, rate)
    np.testing.assert_allclose(blocked_peaks, whole_peaks, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-6)
    assert true_peak_db(blocked, rate) <= TRUE_PEAK_CEILING_DB + 1e-3


def test_limiter_only_touches_the_neighbourhood_of_a_peak():
    signal = _tone(220, 2.0, 0.3)
    signal[0, SR] = 1.5  # one hot transient in the middle
    out, limited = limit(signal, SR, -1.0)
    assert limited and true_peak_db(out, SR) <= -1.0
    far = np.r_[0 : SR - int(0.1 * SR), SR + int(0.1 * SR) : signal.shape[1]]
    np.testing.assert_allclose(out[0, far], signal[0, far], rtol=2e-3, atol=1e-6)  # within 0.02 dB


def test_extract_that_shares_nothing_with_the_mix_is_not_buried():
    mix = _tone(110, 2.0, 0.5)
    invented = _tone(5000, 2.0, 0.5)  # energy where the mix has none: the estimate alone would bury it
    out, info = match_level(invented, mix, SR, "extract", mode=RESYNTH)
    assert info["target_lufs"] >= info["source_lufs"] - STEM_FLOOR_LU - 0.01
    assert integrated_loudness(out, SR) == pytest.approx(info["target_lufs"], abs=1.0)


@pytest.mark.parametrize("samples", [1, 10, 63, 64, 300])
@pytest.mark.parametrize("op", ["extract", "remove"])
def test_a_region_of_a_few_samples_is_levelled_without_error(samples, op):
    source = _music_like(seed=1)[:, 1000 : 1000 + samples]
    out, info = match_level(source * 0.1, source, SR, op, mode=RESYNTH)
    assert out.shape == source.shape and np.all(np.isfinite(out))


def test_in_mask_mode_an_add_on_silence_lands_at_the_default_level():
    source = np.zeros((1, 2 * SR), dtype=np.float32)
    out, info = match_level(_music_like() * 0.01, source, SR, "add", mode=MASK)
    assert info["policy"] == "default_target"
    assert integrated_loudness(out, SR) == pytest.approx(DEFAULT_TARGET_LUFS, abs=1.0)


def test_in_mask_mode_a_source_too_quiet_to_measure_but_not_silent_keeps_its_level():
    # -66 dBFS clicks: above the engine's silence (editable), below the loudness gate (no LUFS to match)
    source = np.zeros_like(_music_like(), dtype=np.float32)
    source[0, :: SR // 4] = 5e-4
    assert not is_silent(source) and integrated_loudness(source, SR) == -math.inf
    added = source + _music_like() * 0.05  # the added part alone is measurable
    out, info = match_level(added, source, SR, "add", mode=MASK)
    assert info["policy"] == "recording" and info["gain_db"] == 0.0
    np.testing.assert_array_equal(out, added)  # no +33 dB: the mode applies no gain, as everywhere else
    resynth, info = match_level(_music_like() * 0.01, source, SR, "extract", mode=RESYNTH)
    assert any("too quiet to measure" in w for w in info["warnings"])


def test_silence_is_one_rule_for_the_editor_and_the_levels():
    from engine.editor import _check_audio

    quiet = np.full((1, 1000), 1e-5, dtype=np.float32)
    assert is_silent(quiet) and not is_silent(quiet * 1.01)
    for broken in (np.nan, np.inf, -np.inf):  # a damaged sample is not silence (the Editor names it instead)
        assert not is_silent(np.array([[0.0, broken]], dtype=np.float32))
    with pytest.raises(AudioError, match="silent"):
        _check_audio(quiet, SR, "extract")
    _check_audio(quiet * 1.01, SR, "extract")


def test_the_model_input_gain_brings_the_rms_to_the_training_level_without_passing_full_scale():
    noise = 0.01 * np.random.default_rng(0).standard_normal(16000)
    assert rms_db(noise * model_input_gain(noise, -18.0)) == pytest.approx(-18.0, abs=1e-6)
    assert rms_db(noise * model_input_gain(noise * 100, -18.0) * 100) == pytest.approx(-18.0, abs=1e-6)  # turned down
    spiky = noise.copy()
    spiky[100] = 0.5  # a peak 34 dB above the rest: brought to full scale, short of the target RMS
    gain = model_input_gain(spiky, -18.0)
    assert gain == pytest.approx(2.0) and rms_db(spiky * gain) < -18.0
    assert model_input_gain(noise, None) == 1.0  # no level recorded (the official adapter)
    assert model_input_gain(np.zeros(100), -18.0) == 1.0  # silence (add to nothing) is not scaled up
    dither = 3e-5 * np.random.default_rng(1).uniform(-1, 1, 16000)  # an empty 16-bit track: "add piano" to it
    assert model_input_gain(dither, -18.0, fade_in=True) == 1.0
    # an extract or remove levels what it hears however quiet (a fed-as-it-was passage under -60 dB RMS returned
    # nearly the whole mix for an extract, where one 2 dB louder was heard at -35 dB and returned a part)
    for level in (-59.0, -61.0, -85.0):
        passage = noise * 10 ** ((level - rms_db(noise)) / 20)
        assert 20 * math.log10(model_input_gain(passage, -18.0)) == pytest.approx(MAX_MODEL_INPUT_GAIN_DB)
    fade = noise * 10 ** (-10 / 20)  # a quiet passage at -50 dBFS: brought up by the most the gain may
    assert 20 * math.log10(model_input_gain(fade, -18.0)) == pytest.approx(MAX_MODEL_INPUT_GAIN_DB)


@pytest.mark.parametrize(("mode", "op", "bound"), [(MASK, "remove", 3.0), (RESYNTH, "add", 5.0)])
def test_levelling_a_long_region_holds_a_few_copies_of_it_at_most(mode, op, bound):
    """The levels of a long region: the loudness meter, the true peak and the limiter work block by block, in
    float32; before, the meter's float64 copies and whole-signal peaks made 8x (mask) and 11x (resynth add)."""
    rate = 48000
    rng = np.random.default_rng(0)
    small = rng.standard_normal((2, rate)).astype(np.float32)
    match_level(small * 3, small, rate, op, mode=mode)  # the first call's imports are not the signal's memory
    source = (rng.standard_normal((2, rate * 45)) * 0.3).astype(np.float32)
    result = source * np.float32(3)  # over the ceiling: the limiter runs too
    tracemalloc.start()
    try:
        started = time.perf_counter()
        out, info = match_level(result, source, rate, op, mode=mode)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info["limited"] and out.dtype == np.float32
    assert peak < bound * source.nbytes, (
        f"{peak / source.nbytes:.1f}x the region ({time.perf_counter() - started:.1f} s)"
    )


def test_an_adds_input_gain_fades_in_above_the_line_so_the_added_part_has_no_level_step():
    """A region 1 dB quieter (-60.5 against -59.5 dB RMS) got an added part 25.7 dB louder: the +24 dB cap applied
    from -60 dB up, and none below. For an add the gain allowed grows from 0 dB at the line; an extract or remove
    has the whole cap on both sides of it."""
    noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    noise /= np.sqrt(np.mean(noise**2))  # 0 dB RMS
    levels = np.arange(-70.0, -20.0, 0.25)
    for fade_in in (False, True):
        gains = [20 * np.log10(model_input_gain(noise * 10 ** (level / 20), -18.0, fade_in)) for level in levels]
        step = float(np.max(np.abs(np.diff(gains))))
        assert step < 0.5  # an extract or remove levels below the line too: no step there either
    assert model_input_gain(noise * 10 ** (-40 / 20), -18.0, fade_in=True) == pytest.approx(10 ** (20 / 20), rel=1e-6)


@pytest.mark.parametrize(
    "frames, channels, rate", [(64, 1, 16000), (65, 1, 16000), (1001, 2, 8000), (1001, 1, 44100), (44117, 3, 44100)]
)
def test_the_blockwise_power_spectrogram_is_scipys_stft_power(frames, channels, rate, monkeypatch):
    """The stem-level estimate's spectrogram, made a block of frames at a time in float32 (it held 9x the region's
    memory as one float64 complex STFT), is scipy's STFT power up to its scale, the mean of the channels', smoothed
    the same way."""
    from scipy.ndimage import uniform_filter1d
    from scipy.signal import stft

    from engine import levels

    monkeypatch.setattr(levels, "_SPECTROGRAM_BLOCK", 3000)  # several blocks even for short signals
    audio = np.random.default_rng(frames).standard_normal((channels, frames)).astype(np.float32)
    ours = levels._power_spectrogram(audio, rate)
    nperseg = min(int(2 ** np.ceil(np.log2(0.064 * rate))), frames)
    _, _, spec = stft(audio.astype(np.float64), nperseg=nperseg, noverlap=nperseg // 2, boundary="even")
    power = (np.abs(spec) ** 2).mean(axis=0)
    theirs = uniform_filter1d(power, size=min(6, power.shape[1]), axis=1, mode="nearest")
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    scale = theirs.sum() / ours.sum()
    np.testing.assert_allclose(ours * scale, theirs, rtol=2e-3, atol=1e-6 * theirs.max())


def _loud_master_and_a_hot_part(rate: int = 44100, seconds: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(3)
    master = np.stack([0.8 * np.sin(2 * np.pi * 110 * t), 0.75 * np.sin(2 * np.pi * 110 * t + 0.3)])
    master += 0.05 * rng.standard_normal(master.shape)  # a loud master, peaks near full scale
    part = np.where((t > 1.0) & (t < 2.0), 0.6 * np.sin(2 * np.pi * 440 * t), 0.0)  # a piano entering for a second
    return master.astype(np.float32), np.repeat(part[None], 2, axis=0).astype(np.float32)


def test_a_mask_add_the_limiter_lowers_by_more_than_a_db_says_so():
    """The limiter on recording + part lowered the producer's recording by up to 8 dB under a loud added part (a loud
    master), and said nothing: the result now says how far, and where to get the part alone."""
    master, part = _loud_master_and_a_hot_part()
    out, info = match_level(master + part, master, 44100, "add", mode=MASK)
    ceiling = max(TRUE_PEAK_CEILING_DB, true_peak_db(master, 44100))
    assert true_peak_db(out, 44100) <= ceiling + 1e-3 and info["limited"]
    deepest = 20 * np.log10(
        np.min(np.abs(out[0, 50000:80000]) / np.maximum(np.abs((master + part)[0, 50000:80000]), 1e-9))
    )
    (note,) = [w for w in info["warnings"] if "the limiter lowered it" in w]
    shown = float(re.search(r"by up to ([0-9.]+) dB", note).group(1))
    assert shown > 1.0 and shown == pytest.approx(-deepest, abs=0.5)
    assert "your recording with it" in note and "--mode layer" in note


def test_a_masked_remove_the_limiter_lowers_says_so_without_offering_an_adds_layer():
    master, part = _loud_master_and_a_hot_part()
    _, info = match_level(master + part, master, 44100, "remove", mode=MASK)
    (note,) = [w for w in info["warnings"] if "the limiter lowered it" in w]
    assert "layer" not in note and "your recording" not in note


def test_a_mask_add_the_limiter_barely_touches_has_no_note():
    master, part = _loud_master_and_a_hot_part()
    out, info = match_level(master + 0.01 * part, master, 44100, "add", mode=MASK)
    assert info["limited"] and info["warnings"] == []  # a hair past the recording's own peak: lowered inaudibly


def test_a_region_whose_only_loud_samples_are_negative_is_not_silence():
    assert not is_silent(np.array([[0.0, -0.5, 0.0]], np.float32))
    assert is_silent(np.zeros((2, 8), np.float32)) and not is_silent(np.array([[0.0, np.nan]], np.float32))
