"""engine.eval.codec_report: the pitch check and the codec ceiling against identity, before any model is trained."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import DataError
from engine.eval.codec_report import TONES_HZ, ceiling, main, markdown, tone_pitch

RATE = 16000


def _buzz(audio: np.ndarray) -> np.ndarray:
    """What a decoder that only learnt the envelope returns: harmonics of the 50 Hz frame rate, same level."""
    t = np.arange(audio.shape[0]) / RATE
    buzz = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 12))
    return buzz * (np.std(audio) / np.std(buzz))


def test_an_exact_round_trip_returns_every_tone():
    rows = tone_pitch(lambda audio: audio, RATE)
    assert [r["returned"] for r in rows] == [True] * 4
    assert all(abs(r["strongest_hz"] - r["tone_hz"]) <= 2.0 and r["power_near_tone"] > 0.95 for r in rows)


def test_a_frame_rate_buzz_returns_no_tone():
    rows = tone_pitch(_buzz, RATE)
    assert not any(r["returned"] for r in rows)
    assert all(r["strongest_hz"] % 50 == pytest.approx(0.0, abs=2.0) for r in rows)
    assert all(r["power_near_tone"] < 0.1 for r in rows)


def test_silence_is_reported_not_a_crash():
    rows = tone_pitch(np.zeros_like, RATE, freqs=(440.0,))
    assert rows[0]["power_near_tone"] == 0.0


def test_a_perfect_codec_has_a_perfect_ceiling_and_identity_stays_behind(synth_data):
    table = ceiling(lambda audio: audio, synth_data, RATE, ("extract", "remove"), "test", limit=2, seconds=1.0)
    for task in ("extract", "remove"):
        assert table[task]["codec"]["log_mel_distance"] == pytest.approx(0.0, abs=1e-9)
        assert table[task]["codec"]["mel_ssim"] == pytest.approx(1.0, abs=1e-9)
        assert table[task]["identity"]["log_mel_distance"] > 0.1  # the input differs from the target
        assert table[task]["codec"]["n"] == table[task]["identity"]["n"] > 0
    text = markdown(tone_pitch(lambda a: a, RATE), table)
    assert "| remove | identity |" in text and "| 440 | 440 |" in text


def test_a_codec_that_loses_the_audio_falls_below_identity(synth_data):
    table = ceiling(_buzz, synth_data, RATE, ("remove",), "test", limit=2, seconds=1.0)
    assert table["remove"]["codec"]["mel_ssim"] < table["remove"]["identity"]["mel_ssim"]


def test_bad_input_is_named(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1  # a missing codec is an error, not a usage mistake (2)
    assert "is not a codec folder" in capsys.readouterr().err
    with pytest.raises(DataError, match="does not exist"):
        ceiling(lambda a: a, tmp_path / "nowhere", RATE, ("remove",), "test")


def test_a_model_folder_is_not_taken_for_a_codec(tiny_model_dir, capsys):
    # A MusicGen folder holds a config.json too: loaded as a codec, every weight would be new and random, silently.
    assert main([str(tiny_model_dir / "base")]) == 1
    assert "is not a codec folder" in capsys.readouterr().err


def test_the_command_reads_an_exported_codec(tmp_path, capsys):
    from engine.train.codec_train import CodecTrainConfig, train_codec

    data = tmp_path / "tones" / "song"
    data.mkdir(parents=True)
    import soundfile as sf

    t = np.arange(RATE) / RATE
    sf.write(data / "a.flac", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), RATE)
    cfg = CodecTrainConfig(num_filters=4, hidden_size=16, codebook_size=16, seconds=0.2, batch=2)
    cfg.steps, cfg.warmup, cfg.stft_sizes = 2, 1, (64, 128)
    codec = train_codec(tmp_path / "tones", tmp_path / "run", cfg, threads=1, quiet=True)
    out = tmp_path / "report.json"
    assert main([str(codec), "--json", str(out)]) == 0
    import json

    pitch = json.loads(out.read_text())["pitch"]
    assert [row["tone_hz"] for row in pitch] == list(TONES_HZ)
    assert "strongest output" in capsys.readouterr().out
