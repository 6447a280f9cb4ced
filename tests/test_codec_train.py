"""Codec stage of the embedded model: EMA-RVQ training on transformers' EncodecModel, resumable, exported."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.codec_train import CodecTrainConfig, train_codec
from engine.errors import CheckpointError, DataError


def _tiny_cfg(steps: int) -> CodecTrainConfig:
    return CodecTrainConfig(
        num_filters=4,
        hidden_size=16,
        codebook_size=16,
        segment_seconds=0.2,
        batch_size=2,
        steps=steps,
        warmup_steps=1,
        ckpt_every=3,
        log_every=1,
        lr=3e-3,
        stft_sizes=(64, 128),
    )


@pytest.fixture()
def tones(tmp_path) -> Path:
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    for song in ("song_a", "song_b"):
        (root / song).mkdir(parents=True)
        for i in range(2):
            wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.01 * rng.standard_normal(t.size)
            sf.write(root / song / f"stem{i}.flac", wave.astype(np.float32), 16000)
    return root


def _losses(run: Path) -> list[float]:
    import json

    return [json.loads(line)["loss"] for line in (run / "codec_log.jsonl").read_text().splitlines()]


def test_training_lowers_the_loss_and_exports_a_loadable_codec(tones, tmp_path):
    import torch
    from transformers import EncodecModel

    out = train_codec(tones, tmp_path / "run", _tiny_cfg(12), threads=1, quiet=True)
    losses = _losses(tmp_path / "run")
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    codec = EncodecModel.from_pretrained(out)
    codes = codec.encode(torch.zeros(1, 1, 3200), bandwidth=codec.config.target_bandwidths[0]).audio_codes
    assert codes.shape == (1, 1, 4, 10)  # 4 codebooks at 50 Hz


def test_resume_continues_exactly(tones, tmp_path):
    train_codec(tones, tmp_path / "full", _tiny_cfg(6), threads=1, quiet=True)
    assert train_codec(tones, tmp_path / "cut", _tiny_cfg(6), threads=1, quiet=True, stop_after=3) is None
    train_codec(tones, tmp_path / "cut", _tiny_cfg(6), threads=1, quiet=True, resume=True)
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(tmp_path / "full"), rel=1e-5)


def test_held_out_songs_are_never_read(tones, tmp_path):
    from engine.codec_train import find_audio_files

    files = find_audio_files(tones, exclude_songs=["song_b"])
    assert files and all("song_b" not in f.parts for f in files)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no audio files"):
        train_codec(tmp_path, tmp_path / "run", _tiny_cfg(2), quiet=True)


def test_corrupted_checkpoint_on_resume_is_named(tones, tmp_path):
    run = tmp_path / "run"
    train_codec(tones, run, _tiny_cfg(6), threads=1, quiet=True, stop_after=3)
    (run / "codec_ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="codec_ckpt.pt"):
        train_codec(tones, run, _tiny_cfg(6), threads=1, quiet=True, resume=True)


def test_imusic_train_stage_codec_runs_resumes_and_holds_songs_out(tmp_path):
    from bridge.cli import main
    from engine.codec_train import held_out_songs
    from engine.data.synth import synthesize

    data = tmp_path / "synth"
    synthesize(data, 10, seed=3, seconds=2.0, sample_rate=16000, progress=False)
    held = held_out_songs(data)
    assert held and len(held) < 10
    run = tmp_path / "run"
    common = ["train", "--stage", "codec", "-o", str(run), "--quiet"]
    assert main([*common, "--data", str(data), "--steps", "4", "--batch", "2", "--seconds", "0.5"]) == 0
    assert (run / "codec" / "config.json").exists()
    assert main([*common, "--resume", "--steps", "6"]) == 0
    import torch

    state = torch.load(run / "codec_ckpt.pt", weights_only=False)
    assert state["step"] == 6 and state["config"]["batch_size"] == 2  # the run's own settings were kept
    with pytest.raises(DataError, match="already holds a codec run"):
        from argparse import Namespace

        from engine.codec_train import run_stage

        run_stage(Namespace(output=str(run), resume=False, resume_from=None, data=str(data), steps=2, ckpt_every=None))


def test_codebooks_start_only_after_the_unquantised_warm_up(tones, tmp_path):
    import torch

    cfg = _tiny_cfg(4)
    cfg.quantize_after = 3
    train_codec(tones, tmp_path / "warm", cfg, threads=1, quiet=True, stop_after=3)
    state = torch.load(tmp_path / "warm" / "codec_ckpt.pt", weights_only=False)
    assert not state["rvq_initialised"]  # three steps of plain autoencoding: the codebooks were never touched
    assert all(json_row["commit"] == 0.0 for json_row in _rows(tmp_path / "warm"))
    train_codec(tones, tmp_path / "warm", cfg, threads=1, quiet=True, resume=True)
    state = torch.load(tmp_path / "warm" / "codec_ckpt.pt", weights_only=False)
    assert state["rvq_initialised"] and _rows(tmp_path / "warm")[-1]["commit"] > 0.0


def _rows(run: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "codec_log.jsonl").read_text().splitlines()]
