"""Codec stage of the embedded model: EMA-RVQ training on transformers' EncodecModel, resumable, exported."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.errors import CheckpointError, ConfigError, DataError
from engine.train.codec_train import CODEC_LOG, CODEC_SETTINGS, CodecTrainConfig, read_log, train_codec


def _tiny_cfg(steps: int) -> CodecTrainConfig:
    return CodecTrainConfig(
        num_filters=4,
        hidden_size=16,
        codebook_size=16,
        seconds=0.2,
        batch=2,
        steps=steps,
        warmup=1,
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
    return [row["loss"] for row in _rows(run)]


def test_training_lowers_the_loss_and_exports_a_loadable_codec(tones, tmp_path):
    import torch
    from transformers import EncodecModel

    out = train_codec(tones, tmp_path / "run", _tiny_cfg(12), threads=1, quiet=True)
    losses = _losses(tmp_path / "run")
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    codec = EncodecModel.from_pretrained(out)
    codes = codec.encode(torch.zeros(1, 1, 3200), bandwidth=codec.config.target_bandwidths[0]).audio_codes
    assert codes.shape == (1, 1, 4, 10)  # 4 codebooks at 50 Hz
    # Given where a model goes, the codec is named as what it is (its config.json is not a MusicGen model's)
    from engine.errors import CheckpointError
    from engine.weights import detect_layout

    with pytest.raises(CheckpointError, match="is a codec .* not a model"):
        detect_layout(out)


def test_resume_continues_exactly(tones, tmp_path):
    train_codec(tones, tmp_path / "full", _tiny_cfg(6), threads=1, quiet=True)
    assert train_codec(tones, tmp_path / "cut", _tiny_cfg(6), threads=1, quiet=True, stop_after=3) is None
    train_codec(tones, tmp_path / "cut", _tiny_cfg(6), threads=1, quiet=True, resume=True)
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(tmp_path / "full"), rel=1e-5)


def test_a_codec_run_whose_data_set_changed_is_not_resumed(tones, tmp_path):
    from engine.errors import CheckpointError

    train_codec(tones, tmp_path / "cut", _tiny_cfg(6), threads=1, quiet=True, stop_after=3)
    (tones / "song_c").mkdir()
    sf.write(tones / "song_c" / "stem0.flac", np.zeros(16000, np.float32) + 0.1, 16000)  # a song added
    with pytest.raises(CheckpointError, match="the data set changed since step 3"):
        train_codec(tones, tmp_path / "cut", _tiny_cfg(6), threads=1, quiet=True, resume=True)


def test_a_run_killed_after_logging_past_its_checkpoint_resumes_to_the_uninterrupted_log(tones, tmp_path, monkeypatch):
    """Rows logged after the last checkpoint are replayed, not doubled, and every row averages the same steps as an
    uninterrupted run's (a checkpoint between two log steps carries the losses summed so far)."""
    from dataclasses import replace

    from engine.train import codec_train

    cfg = replace(_tiny_cfg(8), log_every=2)  # checkpoints at 3 and 6, rows at 2, 4, 6, 8
    train_codec(tones, tmp_path / "full", cfg, threads=1, quiet=True)
    real_save = codec_train.save_checkpoint

    def killed_at_six(run_dir, step, payload, keep):
        if step == 6:
            raise KeyboardInterrupt  # row 6 is logged; the step-6 checkpoint never lands
        return real_save(run_dir, step, payload, keep)

    monkeypatch.setattr(codec_train, "save_checkpoint", killed_at_six)
    with pytest.raises(KeyboardInterrupt):
        train_codec(tones, tmp_path / "cut", replace(cfg), threads=1, quiet=True)
    assert [row["step"] for row in _rows(tmp_path / "cut")] == [2, 4, 6]
    monkeypatch.setattr(codec_train, "save_checkpoint", real_save)
    train_codec(tones, tmp_path / "cut", replace(cfg), threads=1, quiet=True, resume=True)
    assert [row["step"] for row in _rows(tmp_path / "cut")] == [2, 4, 6, 8]
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(tmp_path / "full"), rel=1e-5)


def test_a_run_killed_before_its_first_checkpoint_starts_its_log_again_on_resume(tones, tmp_path, monkeypatch):
    from engine.train import codec_train

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(codec_train, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        train_codec(tones, tmp_path / "run", _tiny_cfg(6), threads=1, quiet=True)  # rows 1-3, no checkpoint
    assert [row["step"] for row in _rows(tmp_path / "run")] == [1, 2, 3]
    monkeypatch.undo()
    train_codec(tones, tmp_path / "run", _tiny_cfg(6), threads=1, quiet=True, resume=True)
    assert [row["step"] for row in _rows(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]


def test_held_out_songs_are_never_read(tones, tmp_path):
    from engine.train.codec_train import training_audio_files

    files = training_audio_files(tones, exclude_songs=["song_b"])
    assert files and all("song_b" not in f.parts for f in files)


def test_held_out_songs_are_song_folders_in_any_layout(tmp_path):
    """MoisesDB keeps songs as PROVIDER/TRACK: what is held out is each held-out track, never a whole provider."""
    import json

    from engine.train.codec_train import held_out_songs, training_audio_files
    from engine.train.data.layouts import scan

    data = tmp_path / "moises"
    wave = (0.3 * np.sin(2 * np.pi * 220 * np.arange(8000) / 8000)).astype(np.float32)
    for number in range(12):
        track = data / f"provider{number % 2}" / f"track{number:02d}"
        for stem in ("drums", "bass"):
            (track / stem).mkdir(parents=True)
            sf.write(track / stem / f"{stem}{number}.wav", wave, 8000)
        entries = [
            {"stemName": stem, "id": stem, "tracks": [{"id": f"{stem}{number}", "extension": "wav", "trackType": stem}]}
            for stem in ("drums", "bass")
        ]
        (track / "data.json").write_text(json.dumps({"song": f"s{number}", "stems": entries}))
    assert scan(data).layout == "moisesdb"
    held = held_out_songs(data)
    assert held and all(len(Path(song).parts) == 2 for song in held)  # provider/track
    files = training_audio_files(data, held)
    tracks = {f.relative_to(data).parent.parent.as_posix() for f in files}
    assert tracks == {f"provider{n % 2}/track{n:02d}" for n in range(12)} - set(held)
    assert len(files) == 2 * len(tracks)


def test_a_song_in_the_data_root_holds_only_the_files_directly_in_it(tones):
    from engine.train.codec_train import training_audio_files

    sf.write(tones / "loose_stem.flac", np.zeros(1600, np.float32), 16000)  # the plain layout's song "."
    files = training_audio_files(tones, exclude_songs=["."])
    assert sorted(f.relative_to(tones).as_posix() for f in files) == [
        f"song_{song}/stem{i}.flac" for song in "ab" for i in range(2)
    ]


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no audio files"):
        train_codec(tmp_path, tmp_path / "run", _tiny_cfg(2), quiet=True)


def test_corrupted_checkpoint_on_resume_is_named(tones, tmp_path):
    run = tmp_path / "run"
    train_codec(tones, run, _tiny_cfg(6), threads=1, quiet=True, stop_after=3)
    (latest := _latest(run)).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"checkpoint {latest} is corrupted or unreadable"):
        train_codec(tones, run, _tiny_cfg(6), threads=1, quiet=True, resume=True)


def test_imusic_train_stage_codec_runs_resumes_and_holds_songs_out(tmp_path, capsys):
    from bridge.cli import main
    from engine.train.codec_train import held_out_songs
    from engine.train.data.synth import synthesize

    data = tmp_path / "synth"
    synthesize(data, 10, seed=3, seconds=2.0, sample_rate=16000, progress=False)
    held = held_out_songs(data)
    assert held and len(held) < 10
    run = tmp_path / "run"
    common = ["train", "--stage", "codec", "-o", str(run), "--quiet"]
    new_run = ["--data", str(data), "--steps", "4", "--batch", "2", "--seconds", "0.5", "--log-every", "2"]
    assert main([*common, *new_run]) == 0
    assert (run / "codec" / "config.json").exists()
    assert "does not use" not in capsys.readouterr().err  # every one of those flags is the codec stage's too
    assert len(_rows(run)) == 2  # a log row every 2 steps, as asked
    assert main([*common, "--resume", "--steps", "6", "--batch", "8", "--precision", "bf16"]) == 0
    err = capsys.readouterr().err
    assert "the codec stage does not use --precision, --batch here" in err
    assert "resuming with --steps 6 (the run had 4)" in err
    assert main(["train", "-o", str(run), "--resume", "--quiet"]) == 1  # --stage codec forgotten
    assert "holds a codec run: give --stage codec" in capsys.readouterr().err

    state = _checkpoint(run)
    assert state["step"] == 6 and state["config"]["batch"] == 2  # the run's own settings were kept
    with pytest.raises(DataError, match="already holds a codec run"):
        from argparse import Namespace

        from engine.train.codec_train import run_stage

        run_stage(Namespace(output=str(run), resume=False, resume_from=None, data=str(data), steps=2, ckpt_every=None))


def test_codebooks_start_only_after_the_unquantised_warm_up(tones, tmp_path):

    cfg = _tiny_cfg(4)
    cfg.quantize_after = 3
    train_codec(tones, tmp_path / "warm", cfg, threads=1, quiet=True, stop_after=3)
    state = _checkpoint(tmp_path / "warm")
    assert not state["rvq_initialised"]  # three steps of plain autoencoding: the codebooks were never touched
    assert all(json_row["commit"] == 0.0 for json_row in _rows(tmp_path / "warm"))
    train_codec(tones, tmp_path / "warm", cfg, threads=1, quiet=True, resume=True)
    state = _checkpoint(tmp_path / "warm")
    assert state["rvq_initialised"] and _rows(tmp_path / "warm")[-1]["commit"] > 0.0


def _latest(run: Path) -> Path:
    from engine.train.checkpoints import list_checkpoints

    return list_checkpoints(run)[-1]


def _checkpoint(run: Path) -> dict:
    """The run's last checkpoint, read as a resume reads it (weights only)."""
    from engine.train.checkpoints import load_checkpoint

    return load_checkpoint(_latest(run))


def _rows(run: Path) -> list[dict]:
    """The run's logged rows, read as the stage reads them; the run must have written its log."""
    assert (run / CODEC_LOG).is_file()
    return read_log(run)


def test_a_run_can_start_from_a_trained_codec(tones, tmp_path):
    import torch
    from transformers import EncodecModel

    first = train_codec(tones, tmp_path / "first", _tiny_cfg(4), threads=1, quiet=True)
    cfg = _tiny_cfg(1)
    cfg.lr = 0.0  # no optimiser movement: the network weights must be exactly the ones it started from
    second = train_codec(tones, tmp_path / "second", cfg, threads=1, quiet=True, init_from=first)
    before, after = EncodecModel.from_pretrained(first).state_dict(), EncodecModel.from_pretrained(second).state_dict()
    network = [k for k in before if "quantizer" not in k]
    assert network and all(torch.equal(before[k], after[k]) for k in network)
    fresh = EncodecModel.from_pretrained(train_codec(tones, tmp_path / "fresh", cfg, threads=1, quiet=True))
    assert not all(torch.equal(before[k], fresh.state_dict()[k]) for k in network)  # the check can fail
    state = _checkpoint(tmp_path / "second")
    assert state["rvq_initialised"]  # trained codebooks are kept, not re-seeded from the first batch
    # Codebooks moved by their EMA update (and dead codes re-seeded), from the trained values, not from a fresh draw.
    key = "quantizer.layers.0.codebook.embed"
    moved = (after[key] - before[key]).abs().amax(dim=1)  # per code
    assert float((moved < 0.01 * before[key].abs().max()).float().mean()) > 0.5


def test_a_run_started_from_a_codec_that_never_quantised_seeds_its_codebooks_from_the_first_batch(
    tones, tmp_path, monkeypatch
):
    from transformers import EncodecModel

    from engine.train.codec_train import RVQTrainer

    cfg = _tiny_cfg(2)
    cfg.quantize_after = 500  # the first phase ends (its deadline) before it quantises: all-zero codebooks
    first = train_codec(tones, tmp_path / "first", cfg, threads=1, quiet=True)
    assert not EncodecModel.from_pretrained(first).state_dict()["quantizer.layers.0.codebook.embed"].abs().sum()
    seeded = []
    real = RVQTrainer._init_from
    monkeypatch.setattr(RVQTrainer, "_init_from", lambda self, flat: seeded.append(flat.shape) or real(self, flat))
    second = train_codec(tones, tmp_path / "second", _tiny_cfg(1), threads=1, quiet=True, init_from=first)
    assert len(seeded) == 1  # each stage from the residual of the ones before, as a fresh run (not dead-code luck)
    train_codec(tones, tmp_path / "third", _tiny_cfg(1), threads=1, quiet=True, init_from=second)
    assert len(seeded) == 1  # trained codebooks are kept


def test_a_run_its_deadline_shortens_still_quantises_most_of_it(tones, tmp_path, monkeypatch):
    import json

    from transformers import EncodecModel

    from engine.train.budget import StepBudget

    monkeypatch.setattr(StepBudget, "fit", lambda self, step, steps: min(steps, 8))  # the deadline allows 8 steps
    cfg = _tiny_cfg(40)
    cfg.quantize_after = 30  # planned for 40 steps: past the 8 the deadline leaves
    out = train_codec(tones, tmp_path / "run", cfg, threads=1, quiet=True, deadline=1e12)
    ran = json.loads((tmp_path / "run" / CODEC_SETTINGS).read_text())
    assert (ran["steps"], ran["quantize_after"]) == (8, 2)
    assert EncodecModel.from_pretrained(out).state_dict()["quantizer.layers.0.codebook.embed"].abs().sum() > 0


def test_a_codec_loss_that_is_not_finite_stops_the_run_before_a_codec_is_saved(tones, tmp_path, monkeypatch):
    from engine.errors import DataError
    from engine.train import codec_train

    real, calls = codec_train.stft_loss, []

    def nan_at_the_second_step(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(codec_train, "stft_loss", nan_at_the_second_step)
    cfg = _tiny_cfg(4)
    cfg.log_every = 4  # the losses are read at the checkpoint (step 3) first
    with pytest.raises(DataError, match="non-finite by step 3"):
        train_codec(tones, tmp_path / "run", cfg, threads=1, quiet=True)
    assert not (tmp_path / "run" / "codec").exists() and not list((tmp_path / "run").glob("**/*.pt"))


def test_starting_from_a_codec_of_other_sizes_is_named(tones, tmp_path):
    first = train_codec(tones, tmp_path / "first", _tiny_cfg(2), threads=1, quiet=True)
    cfg = _tiny_cfg(1)
    cfg.num_filters = 8
    with pytest.raises(CheckpointError, match=r"does not fit the codec this run builds: .* has shape"):
        train_codec(tones, tmp_path / "second", cfg, threads=1, quiet=True, init_from=first)
    with pytest.raises(CheckpointError, match="is not a codec folder"):
        train_codec(tones, tmp_path / "third", cfg, threads=1, quiet=True, init_from=tmp_path)


def test_imusic_train_init_codec_takes_the_sizes_of_the_codec_it_continues(tones, tmp_path):

    from bridge.cli import main

    data = tmp_path / "five"  # the stage holds validation and test songs out: it needs at least three songs
    rng = np.random.default_rng(1)
    t = np.arange(8000) / 16000
    for song in range(5):
        (data / f"song_{song}").mkdir(parents=True)
        for i in range(2):
            wave = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t)
            sf.write(data / f"song_{song}" / f"stem{i}.flac", wave.astype(np.float32), 16000)
    first = tmp_path / "first"
    train_codec(tones, first, _tiny_cfg(2), threads=1, quiet=True)
    run = tmp_path / "run"
    args = ["train", "--stage", "codec", "--data", str(data), "-o", str(run), "--quiet", "--steps", "2"]
    assert main([*args, "--batch", "2", "--seconds", "0.2", "--init-codec", str(first / "codec")]) == 0
    config = _checkpoint(run)["config"]
    assert config["num_filters"] == 4 and config["codebook_size"] == 16  # from the first run, not the defaults
    assert config["extra"]["init_from"] == str(first / "codec")


def test_the_waveform_mse_term_enters_the_loss_with_its_weight(tones, tmp_path):
    cfg = _tiny_cfg(2)
    cfg.wave_mse_weight = 3.0
    train_codec(tones, tmp_path / "run", cfg, threads=1, quiet=True)
    for row in _rows(tmp_path / "run"):
        assert row["nmse"] > 0
        parts = row["l1"] + row["stft"] + row["commit"] + 3.0 * row["nmse"]
        assert row["loss"] == pytest.approx(parts, rel=1e-5)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"steps": 0}, "--steps must be at least 1"),
        ({"batch": 0}, "--batch must be at least 1"),
        ({"seconds": -1.0}, "--seconds must be a positive number"),
        ({"lr": float("nan")}, "--lr must be a number, not negative, got nan"),
        ({"lr": -1e-3}, "--lr must be a number, not negative, got -0.001"),  # 0 is a run: only the codebooks learn
        ({"wave_mse_weight": -1.0}, "--wave-mse must be a number, not negative, got -1.0"),
        ({"quantize_after": -1}, "--quantize-after must not be negative, got -1"),
        ({"ckpt_every": 0}, "--ckpt-every must be at least 1"),
    ],
)
def test_codec_settings_no_run_can_use_are_refused(tones, tmp_path, change, says):
    cfg = _tiny_cfg(2)
    for name, value in change.items():
        setattr(cfg, name, value)
    with pytest.raises(ConfigError, match=says):
        train_codec(tones, tmp_path / "run", cfg, threads=1, quiet=True)


def test_the_codec_stage_refuses_resume_from_and_honours_device(tmp_path, monkeypatch):
    from argparse import Namespace

    from engine.train import codec_train

    seen = {}
    monkeypatch.setattr(codec_train, "train_codec", lambda data, run, cfg, **kw: seen.setdefault("cfg", cfg))
    monkeypatch.setattr(codec_train, "held_out_songs", lambda data: [])
    args = dict(output=str(tmp_path / "run"), resume=False, resume_from=None, data=str(tmp_path), steps=2,
                ckpt_every=None, quiet=True, device="cpu")  # fmt: skip
    codec_train.run_stage(Namespace(**args))
    assert seen["cfg"].device == "cpu"
    with pytest.raises(ConfigError, match="resumes from it: use --resume"):
        codec_train.run_stage(Namespace(**{**args, "resume_from": "x.pt"}))


def test_the_codec_stage_names_every_train_option_it_does_not_use(tmp_path, monkeypatch, capsys):
    import argparse

    from engine.train import cli, codec_train

    monkeypatch.setattr(codec_train, "train_codec", lambda data, run, cfg, **kw: None)
    monkeypatch.setattr(codec_train, "held_out_songs", lambda data: [])
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    new_run = ["--stage", "codec", "--data", str(tmp_path), "-o", str(tmp_path / "run"), "--steps", "2", "--quiet"]
    codec_train.run_stage(parser.parse_args([*new_run, "--base", "b", "--layers", "8", "--pool", "2"]))
    assert "the codec stage does not use --base, --pool, --layers here" in capsys.readouterr().err
    codec_train.run_stage(parser.parse_args([*new_run, "--budget-minutes", "3"]))  # the recipe's, without --recipe
    assert "the codec stage does not use --budget-minutes here" in capsys.readouterr().err


def test_a_loop_stage_names_the_codec_s_and_the_recipe_s_options_it_does_not_use(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from bridge.cli import main
    from engine.train import loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: SimpleNamespace(step=0, history={"train": []}, outputs={},
                                                                     run_dir=tmp_path / "run"))  # fmt: skip
    argv = ["train", "--stage", "adapters", "--data", str(tmp_path), "--base", "b", "-o", str(tmp_path / "run")]
    assert main([*argv, "--quantize-after", "5", "--scale", "tiny", "--quiet"]) == 0
    assert "the adapters stage does not use --quantize-after, --scale here" in capsys.readouterr().err


def test_preloaded_training_audio_is_decoded_once_for_the_phases_of_a_stage(tones, monkeypatch):
    from engine.train import codec_train

    files = sorted(tones.rglob("*.flac"))
    decoded = []
    real = codec_train._read_int16_mono
    monkeypatch.setattr(codec_train, "_read_int16_mono", lambda path: decoded.append(path) or real(path))
    codec_train.forget_preloaded()
    first = codec_train.ClipSampler(files, 16000, 0.2, preload=True)
    second = codec_train.ClipSampler(files, 16000, 0.2, seed=1, preload=True)
    assert len(decoded) == len(files) and second.audio is first.audio
    codec_train.forget_preloaded()
    codec_train.ClipSampler(files, 16000, 0.2, preload=True)
    assert len(decoded) == 2 * len(files)
    codec_train.forget_preloaded()


def test_train_once_resumes_a_cut_codec_run_then_leaves_the_finished_one_alone(tmp_path, capsys):
    from bridge.cli import main
    from engine.train.config import finished_file
    from engine.train.data.synth import synthesize

    data = tmp_path / "synth"
    synthesize(data, 10, seed=3, seconds=2.0, sample_rate=16000, progress=False)
    run = tmp_path / "run"
    cfg = _tiny_cfg(6)
    cfg.extra = {"data": str(data)}
    # cut after 3 of 6 steps, on the files the command trains on (the held-out songs left out, as it leaves them)
    from engine.train.codec_train import held_out_songs

    cut = train_codec(data, run, cfg, threads=1, quiet=True, stop_after=3, exclude_songs=held_out_songs(data))
    assert cut is None
    assert not finished_file("codec", run).exists()
    once = ["train", "--stage", "codec", "--once", "--data", str(data), "-o", str(run), "--quiet"]
    assert main([*once, "--batch", "2", "--wave-mse", "1.5"]) == 0
    # the batch given again is the run's own: no news; the other MSE weight is not taken, and said
    assert "the codec stage does not use --wave-mse here" in capsys.readouterr().err
    assert _checkpoint(run)["step"] == 6  # resumed: the run's own 6 steps, not a new run's default
    finished = finished_file("codec", run)
    written = finished.stat().st_mtime_ns
    capsys.readouterr()
    assert main(once) == 0
    assert capsys.readouterr().out.strip() == f"codec: done ({finished.parent})"
    assert finished.stat().st_mtime_ns == written and _checkpoint(run)["step"] == 6
    assert main([*once, "--resume"]) == 1  # --once decides by itself
    assert "--once decides by itself whether to resume" in capsys.readouterr().err


def test_a_codec_export_cut_while_written_leaves_no_codec_that_looks_finished(tones, tmp_path, monkeypatch):
    from transformers import EncodecModel

    from engine.train.config import finished_file

    run = tmp_path / "run"
    train_codec(tones, run, _tiny_cfg(3), threads=1, quiet=True)
    before = finished_file("codec", run).read_bytes()

    def cut(self, folder, **kwargs):
        (Path(folder) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(EncodecModel, "save_pretrained", cut)
    with pytest.raises(KeyboardInterrupt):
        train_codec(tones, run, _tiny_cfg(3), threads=1, quiet=True, resume=True)
    assert finished_file("codec", run).read_bytes() == before  # the earlier export, whole
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_a_codec_run_saved_under_the_earlier_setting_names_resumes_with_its_own_settings(tones, tmp_path):
    import json

    from engine.train.config import CODEC_SETTINGS

    run = tmp_path / "run"
    cfg = _tiny_cfg(6)
    cfg.batch, cfg.warmup, cfg.seconds = 3, 2, 0.3  # none of them the default
    train_codec(tones, run, cfg, threads=1, quiet=True, stop_after=3)
    saved = json.loads((run / CODEC_SETTINGS).read_text())
    for old, new in (("batch_size", "batch"), ("warmup_steps", "warmup"), ("segment_seconds", "seconds")):
        saved[old] = saved.pop(new)  # as a run from before the rename wrote it
    restored = CodecTrainConfig.from_dict(saved)
    assert (restored.batch, restored.warmup, restored.seconds) == (3, 2, 0.3)
    assert restored == CodecTrainConfig.from_dict(json.loads((run / CODEC_SETTINGS).read_text()))


def test_codes_nobody_chose_are_reseeded_from_the_batch_and_the_others_keep_their_place():
    import torch
    from transformers import EncodecModel

    from engine.train.codec_train import RVQTrainer, encodec_config

    cfg = _tiny_cfg(1)
    trainer = RVQTrainer(EncodecModel(encodec_config(cfg)), decay=0.99, dead_threshold=0.5)
    codebook = trainer.codebooks[0]
    size, dim = codebook.embed.shape
    torch.manual_seed(0)
    codebook.embed.copy_(torch.randn(size, dim) * 100)  # far from every latent: only the batch can land there
    codebook.embed_avg.copy_(codebook.embed)  # each code the mean of what it was chosen for (count 1)
    codebook.cluster_size.fill_(1.0)
    codebook.cluster_size[:3] = 0.0  # three codes nobody chose lately
    before = codebook.embed.clone()
    residual = torch.randn(64, dim)
    trainer._ema_update(codebook, residual, torch.full((64,), 5, dtype=torch.long))  # the whole batch chose code 5
    assert all(any(torch.equal(row, r) for r in residual) for row in codebook.embed[:3])  # drawn from this batch
    assert torch.all(codebook.cluster_size[:3] == 1.0)
    # the others moved only by the EMA (code 5 towards the batch, the rest by the decay), none was re-drawn
    assert not any(any(torch.equal(row, r) for r in residual) for row in codebook.embed[3:])
    assert torch.allclose(codebook.embed[6:], before[6:], rtol=0.05)


def test_a_checkpoint_of_another_stage_in_a_codec_run_is_named_not_loaded(tones, tmp_path):
    import torch

    from engine.train.checkpoints import checkpoint_payload

    run = tmp_path / "run"
    train_codec(tones, run, _tiny_cfg(6), threads=1, quiet=True, stop_after=3)
    torch.save(checkpoint_payload("base", 3, {}, trainable={}), _latest(run))
    with pytest.raises(CheckpointError, match="is a checkpoint of the base stage, not of the codec stage"):
        train_codec(tones, run, _tiny_cfg(6), threads=1, quiet=True, resume=True)


def test_a_stem_cut_short_after_its_header_is_named_by_the_codec_stage_before_it_trains(tmp_path):
    """The header promises 2 s, the file holds a third of its bytes (an interrupted copy): named with its fix when
    the stage starts (its end is read), not by a decoder traceback when a clip is first drawn near the end."""
    from engine.train import codec_train

    path = tmp_path / "cut.flac"
    sf.write(path, (np.random.default_rng(0).normal(size=32000) * 0.3).astype(np.float32), 16000)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    for preload in (True, False):
        with pytest.raises(DataError, match="cut.flac: .*damaged or cut short: replace it"):
            codec_train.ClipSampler([path], 16000, 0.2, preload=preload)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.wav: .*damaged or cut short"):
        codec_train.ClipSampler([empty], 16000, 0.2)


def test_a_stem_damaged_in_its_middle_is_named_when_a_clip_meets_the_damage(tmp_path):
    from engine.train import codec_train

    path = tmp_path / "scratched.flac"
    sf.write(path, (np.random.default_rng(0).normal(size=64000) * 0.3).astype(np.float32), 16000)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 2000] = bytes(2000)  # its end still decodes
    path.write_bytes(bytes(data))
    sampler = codec_train.ClipSampler([path], 16000, 0.2)
    with pytest.raises(DataError, match="scratched.flac: .*damaged or cut short"):
        sampler._read(0, 30000)


def test_the_first_batch_seeds_distinct_codes_counted_by_the_vectors_that_chose_them():
    """Drawn with replacement (and from the vectors earlier codebooks took), a deeper codebook held a fifth to a third
    of identical codes, each counted 1: kept alive some 300 steps before the dead-code rule re-seeded them."""
    from types import SimpleNamespace

    import torch

    from engine.train.codec_train import RVQTrainer

    torch.manual_seed(0)
    layers = [
        SimpleNamespace(
            codebook=SimpleNamespace(
                embed=torch.zeros(64, 8), embed_avg=torch.zeros(64, 8), cluster_size=torch.zeros(64)
            )
        )
        for _ in range(4)
    ]
    quantizer = RVQTrainer(SimpleNamespace(quantizer=SimpleNamespace(layers=layers)), decay=0.99, dead_threshold=0.05)
    latents = torch.randn(4, 8, 100)  # 400 vectors for codebooks of 64
    quantizer(latents, train=False)  # no update outside training, no init either
    assert not quantizer.initialised
    quantizer._init_from(latents.permute(0, 2, 1).reshape(-1, 8))
    for layer in layers:
        book = layer.codebook
        assert torch.unique(book.embed, dim=0).shape[0] == 64  # distinct, none of them a zero residual
        assert book.cluster_size.sum() == 400  # every vector counted once, by the code it chose
        chose = book.cluster_size > 0
        torch.testing.assert_close(book.embed_avg[chose] / book.cluster_size[chose, None], book.embed[chose])
    # every code is chosen at least by the vector it was seeded from: none is dead, none counted at a made-up 1
    assert all(bool((layer.codebook.cluster_size >= 1).all()) for layer in layers)
