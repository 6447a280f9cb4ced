"""engine.loudness: BS.1770-4 integrated loudness, block by block, against pyloudnorm (the reference)."""

import math
import tracemalloc

import numpy as np
import pytest

from engine import levels
from engine.loudness import block_count, integrated_loudness

pyloudnorm = pytest.importorskip("pyloudnorm")


@pytest.mark.parametrize("rate", [1000, 2000, 3000])
def test_at_3_khz_and_under_a_tone_reads_as_it_does_at_48_khz(rate):
    """The K-weighting's shelf (1.5 kHz) lies past Nyquist there: the high-pass alone, and a 200 Hz tone, where the
    shelf weighs nothing, reads its 48 kHz loudness (it read -inf: "too quiet to measure")."""
    tone = [0.3 * np.sin(2 * np.pi * 200 * np.arange(3 * r) / r)[None] for r in (rate, 48000)]
    assert integrated_loudness(tone[0], rate) == pytest.approx(integrated_loudness(tone[1], 48000), abs=0.1)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000])
@pytest.mark.parametrize("channels", [1, 2, 5])
def test_agrees_with_pyloudnorm(rate, channels):
    rng = np.random.default_rng(rate + channels)
    for seconds in (0.41, 1.06, 3.37):  # one block, a last block past the end (the count rounds up), several
        n = int(seconds * rate)
        # a rising level, so the relative gate drops the quiet start
        audio = rng.standard_normal((channels, n)) * np.geomspace(1e-4, 0.3, n)
        expected = pyloudnorm.Meter(rate).integrated_loudness(audio.T.copy())
        assert integrated_loudness(audio, rate) == pytest.approx(expected, abs=1e-9)


def test_a_long_signal_read_in_many_chunks_agrees_and_is_not_copied_whole():
    rate = 48000
    audio = (np.random.default_rng(0).standard_normal((2, rate * 60)) * 0.1).astype(np.float32)
    expected = pyloudnorm.Meter(rate).integrated_loudness(audio.T.astype(np.float64))
    tracemalloc.start()
    try:
        measured = levels.integrated_loudness(audio, rate)  # what every edit's levels call
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert measured == pytest.approx(expected, abs=1e-9)
    # the float64 copy pyloudnorm makes is 2x the input; the block-wise meter holds one chunk and the step energies
    assert peak < audio.nbytes / 4, f"peak {peak / 1e6:.1f} MB for {audio.nbytes / 1e6:.1f} MB of input"


def test_channels_beyond_five_weigh_one_each_and_are_gated_together():
    """Past five channels, a count that is no 5.1 or 7.1 layout (those: the test below)."""
    rate = 16000
    rng = np.random.default_rng(3)
    mono = rng.standard_normal(rate * 3) * np.concatenate([np.full(rate, 1e-3), np.full(2 * rate, 0.2)])
    seven = np.tile(mono, (7, 1))
    # seven equal channels of weight 1: seven times the power of one, whatever the gates kept
    assert integrated_loudness(seven, rate) == pytest.approx(integrated_loudness(mono[None], rate) + 10 * math.log10(7))
    # gated together: a channel loud only where the others are silent is not measured on its own blocks
    apart = np.zeros((7, rate * 2))
    apart[0, :rate] = rng.standard_normal(rate) * 0.2
    apart[1:, rate:] = rng.standard_normal((6, rate)) * 0.2
    per_channel = 10 * math.log10(sum(10 ** (integrated_loudness(ch[None], rate) / 10) for ch in apart))
    assert integrated_loudness(apart, rate) < per_channel - 2


def test_silence_and_a_signal_under_the_absolute_gate_read_minus_infinity():
    rate = 16000
    assert integrated_loudness(np.zeros((2, rate)), rate) == -math.inf
    assert integrated_loudness(np.full((1, rate), 1e-6), rate) == -math.inf
    assert levels.integrated_loudness(np.full((1, rate), 1e-6), rate) == -math.inf


def test_a_signal_shorter_than_one_block_is_refused_here_and_tiled_by_levels():
    rate = 16000
    short = np.random.default_rng(1).standard_normal((1, rate // 4)) * 0.1
    assert block_count(short.shape[-1], rate) < 1
    with pytest.raises(ValueError, match="shorter than one 0.4 s gating block"):
        integrated_loudness(short, rate)
    assert math.isfinite(levels.integrated_loudness(short, rate))


def test_levels_measures_integer_and_float32_audio_like_float64():
    rate = 22050
    audio = np.random.default_rng(2).standard_normal((2, rate * 2)) * 0.1
    as_int = np.round(audio * 32767).astype(np.int16)
    assert levels.integrated_loudness(audio.astype(np.float32), rate) == pytest.approx(
        levels.integrated_loudness(audio, rate), abs=1e-4
    )
    assert levels.integrated_loudness(as_int, rate) == pytest.approx(
        levels.integrated_loudness(as_int.astype(np.float64), rate), abs=1e-9
    )


@pytest.mark.filterwarnings("error")  # the shelf's filter past Nyquist overflowed (it was then left to read -inf)
@pytest.mark.parametrize("rate", [2000, 3000])
def test_rates_whose_nyquist_lies_under_the_k_weighting_shelf_read_noise_without_overflowing(rate):
    audio = np.random.default_rng(4).standard_normal((1, rate * 2)) * 0.3
    assert -20 < integrated_loudness(audio, rate) < 0


def test_a_5_1_programmes_lfe_is_left_out_and_its_surrounds_weighed_as_bs1770_says():
    """The LFE of 5.1 (L R C LFE Ls Rs) was counted as a front channel and its surrounds as fronts: a region with only
    the LFE playing measured -18 LUFS, and a surround read 1.5 dB quieter in six channels than in five."""
    rate = 48000
    tone = 0.1 * np.sin(2 * np.pi * 1000 * np.arange(rate * 2) / rate)
    lfe_only = np.zeros((6, tone.size))
    lfe_only[3] = tone
    assert integrated_loudness(lfe_only, rate) == -math.inf
    five, six = np.zeros((5, tone.size)), np.zeros((6, tone.size))
    five[3], six[4] = tone, tone  # Ls in each layout
    assert integrated_loudness(six, rate) == pytest.approx(integrated_loudness(five, rate), abs=1e-9)
