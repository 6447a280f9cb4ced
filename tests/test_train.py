"""imusic train on the tiny model and a tiny synthesized data set: learning, exact resume, outputs, bad input."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from engine.errors import CheckpointError, ConfigError, DataError
from engine.train.checkpoints import list_checkpoints
from engine.train.config import TrainConfig, lr_factor
from engine.train.loop import train

RATE = 16000


@pytest.fixture()
def config(synth_data, tiny_model_dir) -> TrainConfig:
    return TrainConfig(
        data=str(synth_data),
        base=str(tiny_model_dir),
        steps=4,
        batch=2,
        accum=2,
        lr=1e-2,
        warmup=1,
        ckpt_every=2,
        val_every=2,
        val_clips=2,
        seconds=1.0,
        device="cpu",
    )


def test_a_few_adapter_steps_lower_the_loss_on_a_fixed_batch(config):
    from engine.train.loop import STAGES

    stage = STAGES["adapters"](config, torch.device("cpu"))
    data = stage.dataset("train")
    items = [data[i] for i in range(min(4, len(data)))]
    optimizer = torch.optim.AdamW(stage.parameters(), lr=1e-2)
    with torch.no_grad():
        before = float(stage.loss(items))
    for _ in range(8):
        optimizer.zero_grad()
        stage.loss(items).backward()
        optimizer.step()
    with torch.no_grad():
        after = float(stage.loss(items))
    assert after < before - 0.01


def test_adapter_training_updates_only_adapter_parameters(config):
    from engine.train.loop import STAGES

    stage = STAGES["adapters"](config, torch.device("cpu"))
    trained = {name for name, p in stage.module.named_parameters() if p.requires_grad}
    assert trained and all(name.startswith("fusion.") or ".lora_" in name for name in trained)


def test_resume_gives_the_same_loss_curve_as_an_uninterrupted_run(config, tmp_path):
    whole = train(config, tmp_path / "whole", progress=False, export=False)
    train(config, tmp_path / "cut", progress=False, stop_after=2, export=False)
    resumed = train(config, tmp_path / "cut", resume=True, progress=False, export=False)
    assert [s for s, _ in resumed.history["train"]] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(whole.history["train"], resumed.history["train"], strict=True):
        assert a == b  # bit-exact on CPU
    assert [s for s, _ in resumed.history["val"]] == [s for s, _ in whole.history["val"]] == [2, 4]
    assert [v for _, v in resumed.history["val"]] == pytest.approx([v for _, v in whole.history["val"]], abs=1e-6)


def test_clip_loading_workers_do_not_change_the_run(config, tmp_path):
    alone = train(replace(config, steps=2, workers=0), tmp_path / "alone", progress=False, export=False)
    helped = train(replace(config, steps=2, workers=1), tmp_path / "helped", progress=False, export=False)
    assert helped.history["train"] == alone.history["train"]


def test_a_pooled_item_has_the_loss_of_the_clip_it_was_encoded_from(config):
    from engine.train.loop import STAGES
    from engine.train.stages import Encoded

    stage = STAGES["adapters"](config, torch.device("cpu"))
    items = [stage.dataset("train")[i] for i in range(2)]
    records = stage.encode(items)
    assert all(isinstance(r, Encoded) and r.cond is not None for r in records)
    stored = [Encoded(r.codes.short(), r.cond.short(), r.text) for r in records]  # as the pool keeps them
    with torch.no_grad():
        assert float(stage.loss(stored)) == pytest.approx(float(stage.loss(items)), abs=1e-6)


def test_a_pooled_run_encodes_once_and_resumes_exactly(config, tmp_path):
    from engine.train.feeding import POOL_FILE

    pooled = replace(config, pool=2)
    whole = train(pooled, tmp_path / "whole", progress=False, export=False)
    saved = torch.load(tmp_path / "whole" / POOL_FILE, weights_only=True)
    assert saved["codes"].dtype == torch.int16 and saved["codes"].shape[0] == len(saved["texts"]) > 0
    train(pooled, tmp_path / "cut", progress=False, stop_after=2, export=False)
    (tmp_path / "cut" / POOL_FILE).touch()  # the resumed run must read the saved pool, not encode a new one
    before = (tmp_path / "cut" / POOL_FILE).stat().st_mtime_ns
    resumed = train(pooled, tmp_path / "cut", resume=True, progress=False, export=False)
    assert (tmp_path / "cut" / POOL_FILE).stat().st_mtime_ns == before
    assert resumed.history["train"] == whole.history["train"]


def test_a_pool_saved_before_the_data_check_still_resumes_without_encoding_again(config, tmp_path):
    from engine.train.feeding import POOL_FILE

    pooled = replace(config, pool=2)
    train(pooled, tmp_path / "cut", progress=False, stop_after=2, export=False)
    pool = tmp_path / "cut" / POOL_FILE
    saved = torch.load(pool, weights_only=True)
    saved["key"].pop("songs")  # as the previous version wrote it
    torch.save(saved, pool)
    before = pool.stat().st_mtime_ns
    assert train(pooled, tmp_path / "cut", resume=True, progress=False, export=False).step == 4
    assert pool.stat().st_mtime_ns == before  # read, not encoded again


def test_a_pool_read_by_worker_processes_is_the_pool_read_here(config, tmp_path):
    from engine.train.feeding import CodePool
    from engine.train.loop import STAGES

    stage = STAGES["adapters"](config, torch.device("cpu"))
    pools = [
        CodePool.build(stage, stage.dataset("train"), 2, tmp_path / str(w), 3, {}, log=False, workers=w) for w in (0, 2)
    ]
    assert len(pools[0]) == len(pools[1]) == 2 * len(stage.dataset("train"))
    for here, there in zip(pools[0].records, pools[1].records, strict=True):
        assert torch.equal(here.codes, there.codes) and torch.equal(here.cond, there.cond) and here.text == there.text


def test_a_pool_made_with_other_settings_is_refused(config, tmp_path):
    from engine.train.feeding import POOL_FILE

    train(replace(config, pool=1, steps=2), tmp_path / "a", progress=False, export=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / POOL_FILE).write_bytes((tmp_path / "a" / POOL_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="other settings"):
        train(replace(config, pool=1, steps=2, seed=5), tmp_path / "b", progress=False, export=False)
    # Optimizer settings do not change what the pool holds: a copy serves a run with another learning rate.
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / POOL_FILE).write_bytes((tmp_path / "a" / POOL_FILE).read_bytes())
    train(replace(config, pool=1, steps=2, lr=5e-3), tmp_path / "c", progress=False, export=False)
    assert (tmp_path / "c" / POOL_FILE).read_bytes() == (tmp_path / "a" / POOL_FILE).read_bytes()


def test_unreadable_stems_are_skipped_and_counted_by_train(config, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(config.data, data)
    stem = sorted(data.glob("*/stems/*.flac"))[0]
    stem.write_bytes(b"not audio at all")
    result = train(replace(config, data=str(data), steps=1), tmp_path / "run", progress=False, export=False)
    assert result.step == 1
    assert "skipped stem files: 1 x unreadable stem file" in capsys.readouterr().err


def test_without_a_terminal_progress_is_a_log_line_every_log_every_steps(config, tmp_path, capsys):
    train(replace(config, steps=2, log_every=1), tmp_path / "run", progress=True, export=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert "loss" in lines[-1] and "val" in lines[-1]


def test_a_finished_run_writes_an_adapter_and_a_model_dir_that_load_model_reads(config, tmp_path):
    from engine.weights import load_model
    from engine.weights.adapter_format import load_adapter

    result = train(config, tmp_path / "run", progress=False)
    state, meta = load_adapter(result.outputs["adapter"])
    assert meta["instruction_template"] == "Music piece. Instruct: {verb} {stem}."
    assert meta["provenance"]["steps"] == 4
    loaded = load_model(result.outputs["model"], device="cpu", dtype=torch.float32)
    own = loaded.lm.adapter_state_dict()
    assert set(own) == set(state)
    for name, tensor in state.items():
        assert torch.equal(own[name], tensor), name
    # Training moved the gates away from their zero init: the adapter now changes the output.
    assert float(state["fusion.gates"].abs().sum()) > 0
    # What it trained on travels with it: the clips' length and the median level of the inputs it heard
    assert meta["training"]["window_s"] == config.seconds
    assert (loaded.card.trained_window_s, loaded.card.input_rms_db) == (
        config.seconds,
        meta["training"]["input_rms_db"],
    )
    assert -60.0 < meta["training"]["input_rms_db"] < 0.0
    # The model card says which stage made it; the base's own provenance stays apart, not overwritten by this run's
    provenance = loaded.card.provenance
    assert provenance["trained_by"] == "imusic train --stage adapters" and provenance["steps"] == 4
    assert provenance["base"].startswith(config.base) and "base_provenance" in provenance


def test_keep_best_exports_the_weights_of_the_best_validation_loss_not_the_last(config, tmp_path, monkeypatch):
    from engine.train import loop
    from engine.weights.adapter_format import load_adapter

    # step 0 (the untrained adapters, validated first) is worse; step 2 is the best; the last (step 3) is worse
    losses = iter([9.0, 3.0, 1.0, 2.0])
    monkeypatch.setattr(loop.Trainer, "validation_loss", lambda self: next(losses))
    cfg = replace(config, steps=3, val_every=1, ckpt_every=1, keep=3, keep_best=True)
    result = train(cfg, tmp_path / "run", progress=False)
    exported, meta = load_adapter(result.outputs["adapter"])
    steps = {int(p.stem.split("_")[1]): p for p in list_checkpoints(result.run_dir)}
    best, last = (torch.load(steps[n], weights_only=True)["trainable"] for n in (2, 3))
    shared = [name for name in exported if name in best]
    assert shared and all(torch.equal(exported[name], best[name]) for name in shared)
    assert not all(torch.equal(exported[name], last[name]) for name in shared)  # the check can fail
    assert result.history["exported"] == {"step": 2, "val_loss": 1.0}
    assert meta["provenance"]["exported_step"] == 2


def test_keep_best_survives_a_run_killed_after_its_last_checkpoint_and_before_its_export(config, tmp_path, monkeypatch):
    from engine.train import loop
    from engine.weights.adapter_format import load_adapter

    # step 0 (the untrained adapters, validated first) is worse; step 2 is the best; the last (step 3) is worse
    losses = iter([9.0, 3.0, 1.0, 2.0])
    monkeypatch.setattr(loop.Trainer, "validation_loss", lambda self: next(losses))
    cfg = replace(config, steps=3, val_every=1, ckpt_every=1, keep=3, keep_best=True)
    train(cfg, tmp_path / "run", progress=False, export=False)  # the kill: every step done, nothing exported
    result = train(cfg, tmp_path / "run", resume=True, progress=False)  # no step left: it exports
    exported, meta = load_adapter(result.outputs["adapter"])
    steps = {int(p.stem.split("_")[1]): p for p in list_checkpoints(result.run_dir)}
    best, last = (torch.load(steps[n], weights_only=True)["trainable"] for n in (2, 3))
    shared = [name for name in exported if name in best]
    assert shared and all(torch.equal(exported[name], best[name]) for name in shared)
    assert not all(torch.equal(exported[name], last[name]) for name in shared)
    assert meta["provenance"]["exported_step"] == 2


def test_resuming_on_training_data_of_another_size_is_refused_naming_both(config, tmp_path):
    train(config, tmp_path / "run", progress=False, stop_after=2, export=False)
    (path,) = list_checkpoints(tmp_path / "run")
    payload = torch.load(path, weights_only=True)
    size = payload["sampler"]["size"]
    payload["sampler"]["size"] = size + 5  # the run was trained on 5 more items than the data set holds now
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"training data changed .*{size + 5} items then, {size} now"):
        train(config, tmp_path / "run", resume=True, progress=False, export=False)


def test_a_full_disk_while_checkpointing_is_a_checkpoint_error_that_keeps_the_earlier_one(
    config, tmp_path, monkeypatch
):
    from engine.train import checkpoints

    train(config, tmp_path / "run", progress=False, stop_after=2, export=False)
    real_save = torch.save

    def full(obj, target, *args, **kwargs):
        real_save(obj, target, *args, **kwargs)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1024 vs 512")

    monkeypatch.setattr(checkpoints.torch, "save", full)
    with pytest.raises(CheckpointError, match="could not write the checkpoint .*step_00000004.pt.*disk full"):
        train(config, tmp_path / "run", resume=True, progress=False, export=False)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000002.pt"]
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_gate_lr_gives_the_fusion_gates_a_learning_rate_of_their_own(config, tmp_path):
    result = train(replace(config, steps=1, gate_lr=0.5), tmp_path / "run", progress=False, export=False)
    state = torch.load(list_checkpoints(result.run_dir)[-1], weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert len(groups) == 2 and len(groups[1]["params"]) == 1 and groups[1]["weight_decay"] == 0.0
    assert groups[1]["initial_lr"] == 0.5 and groups[0]["initial_lr"] == config.lr


def test_window_sets_the_condition_window_of_a_new_adapter(config, tmp_path):
    from engine.weights import load_model

    result = train(replace(config, steps=1, window=1.0), tmp_path / "run", progress=False)
    loaded = load_model(result.outputs["model"], device="cpu", dtype=torch.float32)
    assert loaded.card.window_seconds == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="longer than the adapter's window"):
        train(replace(config, steps=1, window=0.5), tmp_path / "short", progress=False)


def test_a_run_keeps_the_last_two_checkpoints_and_draws_its_curves(config, tmp_path):
    result = train(replace(config, steps=6, ckpt_every=1), tmp_path / "run", progress=False, export=False)
    assert [p.name for p in list_checkpoints(result.run_dir)] == ["step_00000005.pt", "step_00000006.pt"]
    assert (result.run_dir / "curves.png").stat().st_size > 1000
    history = json.loads((result.run_dir / "history.json").read_text())
    assert len(history["train"]) == 6 and len(history["val"]) == 3


def test_a_corrupted_checkpoint_names_the_file_and_offers_the_previous_one(config, tmp_path):
    train(config, tmp_path / "run", progress=False, export=False)
    older, newest = list_checkpoints(tmp_path / "run")
    newest.write_bytes(newest.read_bytes()[:200])
    with pytest.raises(CheckpointError) as caught:
        train(replace(config, steps=6), tmp_path / "run", resume=True, progress=False, export=False)
    assert str(newest) in str(caught.value) and str(older) in str(caught.value)
    resumed = train(replace(config, steps=6), tmp_path / "run", resume_from=older, progress=False, export=False)
    assert resumed.step == 6


def test_resuming_from_an_older_checkpoint_sets_the_later_ones_aside(config, tmp_path):
    """The newest, damaged checkpoint stayed "the latest" beside the resumed run's own, and pruning by name deleted
    the good one it had resumed from: every later --resume failed on the damaged file."""
    train(config, tmp_path / "run", progress=False, export=False)
    older, newest = list_checkpoints(tmp_path / "run")
    newest.write_bytes(newest.read_bytes()[:200])
    longer = replace(config, steps=8, ckpt_every=3)
    train(longer, tmp_path / "run", resume_from=older, progress=False, export=False, stop_after=3)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == [older.name, "step_00000003.pt"]
    assert newest.with_name(newest.name + ".abandoned").is_file()  # kept for the user, picked by nothing
    # back to step 2 once more, past a step 4 again: the one set aside before is kept beside the new one
    newest.write_bytes(list_checkpoints(tmp_path / "run")[-1].read_bytes())
    train(longer, tmp_path / "run", resume_from=older, progress=False, export=False, stop_after=2)
    assert sorted(p.name for p in older.parent.glob("*.abandoned*")) == [
        "step_00000003.pt.abandoned",
        "step_00000004.pt.abandoned",
        "step_00000004.pt.abandoned-2",
    ]
    assert train(longer, tmp_path / "run", resume=True, progress=False, export=False).step == 8


def test_a_run_resumed_with_more_steps_follows_the_longer_schedule_from_its_first_step(config, tmp_path):
    """The optimizer's saved rate was the old schedule's end (0): the first resumed step was taken at it."""
    train(replace(config, steps=3), tmp_path / "run", progress=False, export=False)
    resumed = train(replace(config, steps=6), tmp_path / "run", resume=True, progress=False, export=False)
    fresh = train(replace(config, steps=6), tmp_path / "fresh", progress=False, export=False)
    assert resumed.history["lr"][3:] == fresh.history["lr"][3:]


def test_a_run_whose_data_set_changed_is_not_resumed(config, tmp_path):
    """Songs added or removed that leave the item count as it was went unnoticed: other batches, other validation
    songs, and keep-best comparing losses on different songs."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(config.data, data)
    moved = replace(config, data=str(data))
    train(moved, tmp_path / "run", progress=False, export=False, stop_after=2)
    song = next(p for p in sorted(data.rglob("*.flac")) if "stems" in p.parts)  # one stem of one song, cut short
    import soundfile as sf

    audio, rate = sf.read(str(song))
    sf.write(str(song), audio[: len(audio) // 2], rate)
    with pytest.raises(CheckpointError, match="the data set changed since step 2"):
        train(moved, tmp_path / "run", resume=True, progress=False, export=False)


def test_resume_without_a_checkpoint_is_a_checkpoint_error(config, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(config, tmp_path / "empty", resume=True, progress=False)


def test_a_folder_holding_a_run_is_not_overwritten_without_resume(config, tmp_path):
    train(replace(config, steps=2), tmp_path / "run", progress=False, export=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(config, tmp_path / "run", progress=False)


def test_a_data_set_too_small_for_training_is_a_data_error(config, tmp_path):
    from engine.train.data.synth import synthesize

    synthesize(tmp_path / "short", 2, seed=3, seconds=0.5, sample_rate=RATE, progress=False)
    with pytest.raises(DataError, match="too small"):
        train(replace(config, data=str(tmp_path / "short")), tmp_path / "run", progress=False)


def test_an_unknown_stage_is_a_config_error(config, tmp_path):
    with pytest.raises(ConfigError, match="unknown stage"):
        train(replace(config, stage="vocoder"), tmp_path / "run", progress=False)


def test_precision_is_fp32_on_cpu_by_default_and_fp16_needs_cuda(config):
    from engine.train.config import precision

    cpu = torch.device("cpu")
    assert precision(config, cpu) == (None, False)
    assert precision(replace(config, precision="bf16"), cpu) == (torch.bfloat16, False)
    with pytest.raises(ConfigError, match="CUDA"):
        precision(replace(config, precision="fp16"), cpu)


@pytest.mark.parametrize(("bf16", "expected"), [(True, (torch.bfloat16, False)), (False, (torch.float16, True))])
def test_auto_precision_on_a_gpu_is_its_fast_dtype_with_a_scaler_for_fp16(config, monkeypatch, bf16, expected):
    from engine.train.config import precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert precision(config, torch.device("cuda")) == expected


def test_bf16_autocast_training_runs_on_cpu(config, tmp_path):
    result = train(replace(config, steps=1, precision="bf16"), tmp_path / "bf16", progress=False, export=False)
    assert torch.isfinite(torch.tensor(result.history["train"][0][1]))


def test_under_autocast_the_frozen_base_is_half_precision_and_the_adapters_fp32(config):
    from engine.train.loop import STAGES

    stage = STAGES["adapters"](replace(config, precision="bf16"), torch.device("cpu"))
    dtypes = {name: p.dtype for name, p in stage.lm.named_parameters()}
    assert dtypes["layers.0.self_attn.q.weight"] == torch.bfloat16
    assert {dtypes[name] for name in dtypes if name.startswith("fusion.") or ".lora_" in name} == {torch.float32}


def test_the_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(step, 10, 100) for step in range(100)]
    assert factors[0] < factors[5] < factors[9] < 1.0
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)
    assert lr_factor(100, 10, 100, floor=0.1) == pytest.approx(0.1)  # the codec's
    assert lr_factor(10, 10, 100, floor=0.1) == pytest.approx(1.0)


def test_base_stage_trains_decoder_and_text_encoder_and_writes_a_loadable_base(config, tmp_path):
    from engine.weights import load_model

    result = train(replace(config, stage="base", steps=2, lr=1e-3), tmp_path / "base_run", progress=False)
    loaded = load_model(result.outputs["model"], device="cpu", dtype=torch.float32)
    assert not loaded.card.has_adapter
    saved = torch.load(list_checkpoints(result.run_dir)[-1], weights_only=True)["trainable"]
    assert any(name.startswith("text.") for name in saved) and any(name.startswith("lm.layers.") for name in saved)
    own = loaded.lm.state_dict()
    for name, tensor in saved.items():
        if name.startswith("lm."):
            assert torch.equal(own[name[3:]], tensor), name


def test_imusic_train_command_line_runs_then_resumes_without_repeating_the_settings(config, tmp_path, capsys):
    from bridge.cli import main

    run_dir = tmp_path / "cli_run"
    argv = ["train", "--data", config.data, "--base", config.base, "-o", str(run_dir), "--device", "cpu"]
    argv += ["--steps", "1", "--batch", "2", "--accum", "1", "--seconds", "1", "--val-clips", "1", "--quiet"]
    assert main(argv) == 0
    assert "adapter:" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["train", "-o", str(run_dir), "--resume", "--steps", "2", "--quiet", "--lr", "0.1", "--dim", "64"]) == 0
    err = capsys.readouterr().err
    assert "resuming keeps the run's own --layers/--dim/--heads/--text-dim, --lr" in err
    assert "resuming with --steps 2 (the run had 1)" in err  # the schedule moves: said, not silent
    assert main(["train", "-o", str(tmp_path / "empty"), "--resume", "--lr", "0.1"]) == 1
    assert "keeps the run's own" not in capsys.readouterr().err  # nothing to resume: that is the one line
    history = json.loads((run_dir / "history.json").read_text())
    assert [step for step, _ in history["train"]] == [1, 2]
    assert history["config"]["batch"] == 2 and history["config"]["seconds"] == 1.0


def test_imusic_train_command_line_reports_an_unknown_stage_in_one_line(config, tmp_path, capsys):
    from bridge.cli import main

    argv = ["train", "--data", config.data, "--base", config.base, "-o", str(tmp_path / "run"), "--stage", "nope"]
    assert main(argv) == 1
    assert "unknown stage 'nope': use adapters, base or codec" in capsys.readouterr().err  # codec trains too


def test_base_stage_builds_from_a_bare_codec_then_adapters_train_on_the_result(config, tmp_path):
    from engine.tools.tiny_models import tiny_musicgen
    from engine.weights import load_model

    tiny_musicgen().audio_encoder.save_pretrained(tmp_path / "codec")
    sizes = {"layers": 1, "dim": 32, "heads": 2, "text_dim": 16}
    base_cfg = replace(config, stage="base", base=str(tmp_path / "codec"), steps=1, lr=1e-3, extra=sizes)
    base = train(base_cfg, tmp_path / "base_run", progress=False)
    loaded = load_model(base.outputs["model"], device="cpu", dtype=torch.float32)
    assert (loaded.lm.cfg.num_layers, loaded.lm.cfg.dim, loaded.text.dim) == (1, 32, 16)
    ids = loaded.text.tokenizer("Music piece. Instruct: Only Drums. drums, bass and mallets")["input_ids"]
    assert 2 not in ids  # every caption and instruction word is in the vocabulary (2 = <unk>)
    adapters = train(replace(config, base=base.outputs["model"], steps=1), tmp_path / "adapter_run", progress=False)
    edited = load_model(adapters.outputs["model"], device="cpu", dtype=torch.float32)
    assert edited.card.has_adapter and edited.lm.cfg.dim == 32


def test_a_template_left_by_an_attempt_with_other_sizes_is_built_again(config, tmp_path):
    from engine.tools.tiny_models import tiny_musicgen
    from engine.train.base import BaseStage
    from engine.weights.transformers_layout import read_config

    tiny_musicgen().audio_encoder.save_pretrained(tmp_path / "codec")
    run = tmp_path / "run"
    first = {"layers": 1, "dim": 32, "heads": 2, "text_dim": 16, "run_dir": str(run)}
    BaseStage(replace(config, stage="base", base=str(tmp_path / "codec"), extra=first), "cpu")
    second = {**first, "layers": 2, "dim": 48}  # the rerun after, say, a data error: other sizes
    BaseStage(replace(config, stage="base", base=str(tmp_path / "codec"), extra=second), "cpu")
    decoder = read_config(run / "template")["decoder"]
    assert (decoder["num_hidden_layers"], decoder["hidden_size"]) == (2, 48)


@pytest.mark.slow
def test_validation_loss_falls_over_a_short_adapter_run(config, tmp_path):
    # Measured on 2 shared CPU cores: 50-75 s; validation loss 4.05 -> 3.85 (uniform over 64 codes: ln 64 = 4.16).
    run = replace(config, steps=150, batch=4, accum=1, lr=3e-3, warmup=10, val_every=25, val_clips=8, seconds=2.0)
    result = train(run, tmp_path / "run", progress=False, export=False)
    val = [loss for _, loss in result.history["val"]]
    assert val[-1] < val[0] - 0.1


def test_align_steps_fit_the_prefix_first_and_the_gates_start_at_gate_init(config, tmp_path):
    cfg = replace(config, steps=1, accum=1, lr=1e-7, gate_lr=1e-7, align_steps=3, gate_init=0.25)
    result = train(cfg, tmp_path / "run", progress=False, export=False)
    prepared = result.history["prepare"]
    assert prepared["steps"] == 3 and len(prepared["mass"]) == len(prepared["value"]) >= 1
    state = torch.load(list_checkpoints(result.run_dir)[-1], weights_only=True)["trainable"]
    gates = next(v for k, v in state.items() if k.endswith("fusion.gates"))
    torch.testing.assert_close(gates, torch.full_like(gates, 0.25), atol=1e-5, rtol=0)
    merge = [v for k, v in state.items() if "merge_linear" in k]
    assert merge and all(float(m.abs().max()) < 1e-5 for m in merge)  # zero at the start, one tiny step since


def test_align_steps_and_gate_init_are_refused_outside_the_adapter_stage(config, tmp_path):
    with pytest.raises(ConfigError, match="--align-steps"):
        train(replace(config, stage="base", align_steps=2), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="--align-steps must not be negative"):
        train(replace(config, align_steps=-1), tmp_path / "neg", progress=False)


def test_a_window_longer_than_musicgen_generates_is_refused_before_any_work(config, tmp_path):
    """--window 1e9 asked the allocator for 256 TB: a traceback."""
    with pytest.raises(ConfigError, match="--window must be at most 30 s"):
        train(replace(config, window=1e9), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_fused_layers_puts_the_audio_fusion_on_the_top_layers_only(config, tmp_path):
    from engine.weights import load_model

    result = train(replace(config, steps=1, fused_layers=1), tmp_path / "run", progress=False)
    loaded = load_model(result.outputs["model"], device="cpu", dtype=torch.float32)
    fusion = loaded.lm.fusion
    assert fusion.num_fused == 1 and len(fusion.merge_linear) == 1
    assert fusion.first_layer == loaded.lm.cfg.num_layers - 1
    with pytest.raises(ConfigError, match="--fused-layers must be at least 1"):
        train(replace(config, fused_layers=0), tmp_path / "zero", progress=False)
    with pytest.raises(ConfigError, match="exceeds the model's"):
        train(replace(config, fused_layers=99), tmp_path / "many", progress=False)


def test_text_dropout_trains_dropped_clips_on_the_null_condition_that_cfg_decodes_against(config):
    from types import SimpleNamespace

    import numpy as np

    from engine.train.base import BaseStage

    stage = BaseStage(replace(config, stage="base", text_dropout=0.999999), "cpu")
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, (2, stage.codec.sample_rate)).astype(np.float32)
    records = stage.encode([SimpleNamespace(audio=clip, caption="rock, drums and bass") for clip in noise])
    codes = torch.stack([r.codes for r in records]).long()
    null_states = torch.zeros(2, 1, stage.lm.cfg.text_dim)
    null_loss, _ = stage.lm.loss(codes, null_states, torch.zeros(2, 1, dtype=torch.bool), None)
    with torch.no_grad():
        dropped = stage.loss_codes(records)
        stage.lm.eval()  # validation: the captions stay
        kept = stage.loss_codes(records)
    assert torch.allclose(dropped, null_loss, atol=1e-5)
    assert not torch.allclose(kept, null_loss, atol=1e-3)


def test_the_base_stage_trains_on_the_text_states_its_edits_will_read(config):
    """The base stage's trainable text encoder reads the tokens inference gives it (engine.model.text.tokenize): a
    caption past T5's MAX_TOKENS is cut there too, and a batch of mixed lengths pads as one caption alone."""
    from engine.model.text import MAX_TOKENS, TextEncoder
    from engine.train.base import BaseStage

    stage = BaseStage(replace(config, stage="base"), "cpu")
    stage.text_model.eval()
    captions = ["rock, drums and bass", " ".join(["drums"] * (MAX_TOKENS + 40)), "piano"]
    with torch.no_grad():
        trained, trained_mask = stage._encode_text(captions)
    encoder = TextEncoder(stage.text_model, stage.tokenizer)
    edited, edited_mask = encoder.encode(captions)
    assert trained.shape[1] == MAX_TOKENS
    assert torch.equal(trained_mask, edited_mask)
    torch.testing.assert_close(trained, edited)


def test_the_adapter_stage_drops_text_as_the_official_run_does_so_cfg_has_an_unconditioned_branch(config):
    from engine.train.adapters import AdapterStage

    stage = AdapterStage(replace(config, text_dropout=0.999999), "cpu")
    records = stage.encode([stage.dataset("train")[i] for i in range(2)])
    codes = torch.stack([r.codes for r in records]).long()
    cond = torch.stack([r.cond for r in records]).long()
    null_states = torch.zeros(2, 1, stage.lm.cfg.text_dim)
    with torch.no_grad():
        null_loss, _ = stage.lm.loss(codes, null_states, torch.zeros(2, 1, dtype=torch.bool), cond)
        dropped = stage.loss_codes(records)
        stage.lm.eval()  # validation: the instructions stay
        kept = stage.loss_codes(records)
    assert abs(float(dropped) - float(null_loss)) < 1e-6
    assert abs(float(kept) - float(null_loss)) > 1e-5  # the instructions reach the loss (a tiny random base: faintly)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"lr": float("nan")}, "--lr must be a positive number, got nan"),
        ({"gate_lr": float("nan")}, "--gate-lr must be a number"),
        ({"grad_clip": float("nan")}, "--grad-clip must be a number, not negative, got nan"),
        ({"weight_decay": -1.0}, "--weight-decay must be a number, not negative"),
        ({"window": float("nan")}, "--window must be a number"),
        ({"seconds": float("inf")}, "--seconds must be a positive number"),
        ({"text_dropout": 1.0}, "--text-dropout must be at least 0 and below 1, got 1.0"),
        ({"text_dropout": float("nan")}, "--text-dropout must be at least 0 and below 1"),
    ],
)
def test_settings_that_are_no_number_are_refused_before_a_run(config, change, says):
    with pytest.raises(ConfigError, match=says):
        replace(config, **change).check()


def test_resume_from_another_runs_checkpoint_is_refused_and_changes_nothing(config, tmp_path):
    from engine.train.checkpoints import list_checkpoints

    train(replace(config, steps=2), tmp_path / "a", progress=False, export=False)
    train(replace(config, steps=2), tmp_path / "b", progress=False, export=False)
    before = sorted(p.name for p in (tmp_path / "b").rglob("*"))
    foreign = list_checkpoints(tmp_path / "a")[-1]
    with pytest.raises(CheckpointError, match="is not a checkpoint of the run in .*give its folder as -o"):
        train(replace(config, steps=3), tmp_path / "b", resume_from=foreign, progress=False, export=False)
    assert sorted(p.name for p in (tmp_path / "b").rglob("*")) == before


def test_imusic_train_once_resumes_a_cut_run_then_leaves_the_finished_one_alone(config, tmp_path, capsys):
    import shutil

    from bridge.cli import main
    from engine.train.config import finished_file

    run_dir = tmp_path / "once"
    train(replace(config, steps=2, ckpt_every=1, lr=0.0123), run_dir, progress=False)
    list_checkpoints(run_dir)[-1].unlink()  # as if cut after step 1: one checkpoint, no exported model
    shutil.rmtree(finished_file("adapters", run_dir).parent)
    argv = ["train", "--stage", "adapters", "--once", "--data", config.data, "--base", config.base, "-o", str(run_dir)]
    argv += ["--steps", "2", "--ckpt-every", "1", "--batch", "2", "--seconds", "1", "--quiet"]
    assert main(argv) == 0
    assert "resuming" not in capsys.readouterr().err  # every setting given again is the run's own
    history = json.loads((run_dir / "history.json").read_text())
    assert [step for step, _ in history["train"]] == [1, 2]
    assert history["config"]["lr"] == 0.0123  # resumed with the run's own settings, not started again
    finished = finished_file("adapters", run_dir)
    written = finished.stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == f"adapters: done ({finished.parent})"
    assert finished.stat().st_mtime_ns == written


def test_history_losses_are_the_last_rows_rounded_and_none_where_a_run_logged_none():
    from engine.train.config import history_losses

    history = {"train": [[1, 5.123456], [2, 4.987654]], "val": [[2, None]]}
    assert history_losses(history) == {"final_train_loss": 4.9877, "final_val_loss": None}
    assert history_losses({}) == {"final_train_loss": None, "final_val_loss": None}


def test_a_setting_given_again_is_the_runs_own_when_it_names_the_same_value_path_or_sizes(tmp_path, monkeypatch):
    from engine.train.config import same_setting

    monkeypatch.chdir(tmp_path)
    assert same_setting("data", str(tmp_path / "data")) and not same_setting("data", str(tmp_path / "other"))
    assert same_setting({"dim": 64}, {"dim": 64, "layers": 2}) and not same_setting({"dim": 64}, {})
    assert same_setting([4, 5], (4, 5)) and same_setting(2, 2) and not same_setting(0.5, 1.0)


def test_a_loss_that_is_not_finite_stops_the_run_naming_its_step_before_anything_is_saved(
    config, tmp_path, monkeypatch
):
    from engine.train.stages import Stage

    real, calls = Stage.loss, []

    def turns_nan_at_the_second_step(self, items):
        calls.append(1)
        loss = real(self, items)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(Stage, "loss", turns_nan_at_the_second_step)
    run_dir = tmp_path / "nan"
    cfg = replace(config, steps=4, accum=1, ckpt_every=4, val_every=4, log_every=4)  # losses read at step 4 only
    with pytest.raises(DataError, match="the loss became nan at step 2"):
        train(cfg, run_dir, progress=False)
    assert list_checkpoints(run_dir) == [] and not (run_dir / "model").exists()


def test_with_keep_best_a_loss_that_is_not_finite_ends_the_run_exporting_the_best_weights_before_it(
    config, tmp_path, monkeypatch
):
    from engine.train.stages import Stage
    from engine.weights.adapter_format import load_adapter

    real, steps = Stage.loss, []

    def turns_nan_from_the_third_step(self, items):
        loss = real(self, items)
        if self.module.training:  # training steps only, not the validation's
            steps.append(1)
            return loss * float("nan") if len(steps) >= 3 else loss
        return loss

    monkeypatch.setattr(Stage, "loss", turns_nan_from_the_third_step)
    cfg = replace(config, steps=6, accum=1, val_every=1, log_every=1, ckpt_every=6, keep_best=True)
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.history["diverged_at"] == 3 and result.step == 3
    state, meta = load_adapter(result.outputs["adapter"])
    assert meta["provenance"]["exported_step"] in (1, 2)
    assert all(bool(torch.isfinite(t).all()) for t in state.values())


def test_a_validation_loss_that_is_not_finite_is_never_the_best_and_ends_the_run_as_a_training_one_would(
    config, tmp_path, monkeypatch
):
    from engine.train import loop

    # weights can break on a step whose own loss was finite (bf16): only the validation says so
    losses = iter([9.0, 3.0, 2.0, float("nan")])  # step 0 first: the untrained adapters
    monkeypatch.setattr(loop.Trainer, "validation_loss", lambda self: next(losses))
    cfg = replace(config, steps=6, accum=1, val_every=1, log_every=1, ckpt_every=6, keep_best=True)
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.history["diverged_at"] == 3 and result.history["exported"] == {"step": 2, "val_loss": 2.0}
    assert all(math.isfinite(val) for _, val in result.history["val"])
    # resuming would replay the same steps into the same wall: refused, naming why
    with pytest.raises(ConfigError, match="diverged at step 3 .* start a new run"):
        train(cfg, tmp_path / "run", resume=True, progress=False)
    # without keep_best there is nothing sound to export: the run stops, naming the step
    losses = iter([float("nan")])
    with pytest.raises(DataError, match="the validation loss became nan at step 1"):
        train(replace(cfg, keep_best=False), tmp_path / "plain", progress=False)


def test_a_run_folders_history_is_read_one_way_for_resuming_summing_up_and_the_cli(tmp_path):
    from engine.train.config import HISTORY, read_history

    assert read_history(tmp_path, required=False) == {}  # a run not started yet
    with pytest.raises(CheckpointError, match="history.json is missing: the folder holds no finished training run"):
        read_history(tmp_path)
    (tmp_path / HISTORY).write_text('{"config": {"steps": 3}, "train": [[3, 2.5]]')  # cut mid-write by hand
    with pytest.raises(CheckpointError, match="history.json is not readable JSON"):
        read_history(tmp_path, required=False)
    (tmp_path / HISTORY).write_text(json.dumps({"config": {"steps": 3}, "train": [[3, 2.5]]}))
    assert read_history(tmp_path)["config"] == {"steps": 3}


def test_every_training_stage_goes_to_the_best_available_device_unless_told(monkeypatch):
    from argparse import Namespace

    import engine.device
    from engine.train import codec_train

    monkeypatch.setattr(engine.device, "default_device", lambda: torch.device("meta"))  # stands for "the GPU here"
    assert engine.device.training_device(None) == torch.device("meta")
    assert engine.device.training_device("cpu") == torch.device("cpu")
    seen = {}
    monkeypatch.setattr(codec_train, "train_codec", lambda data, run_dir, cfg, **kw: seen.setdefault("cfg", cfg))
    monkeypatch.setattr(codec_train, "held_out_songs", lambda data: [])
    args = Namespace(output="/nonexistent/run", resume=False, resume_from=None, data="/x", quiet=True)
    codec_train.run_stage(args)  # a new codec run without --device: trained where the other stages train
    assert seen["cfg"].device == "meta"


def test_validation_loss_reads_clips_spread_over_the_split_as_every_other_pick_does():
    import contextlib
    from types import SimpleNamespace

    from engine.train.loop import Trainer

    seen, losses = [], iter([1.0, 3.0])
    stage = SimpleNamespace(
        module=torch.nn.Identity(),
        encode=lambda items: seen.extend(items) or [item.upper() for item in items],
        loss_codes=lambda records: torch.tensor(next(losses) if records == ["A", "C", "D", "F"] else -1.0),
    )
    trainer = SimpleNamespace(
        cfg=TrainConfig(val_clips=4, batch=8),
        val_data="abcdef",
        stage=stage,
        autocast=contextlib.nullcontext,
        _val_batches=None,
    )
    assert Trainer.validation_loss(trainer) == 1.0
    assert seen == ["a", "c", "d", "f"]  # engine.eval.clips.spread_indices(6, 4): items are grouped by song
    # read and encoded once: every 250 steps the codec encoded the same 64 clips again
    assert Trainer.validation_loss(trainer) == 3.0 and seen == ["a", "c", "d", "f"]


def test_a_schedule_cut_short_keeps_its_warm_up_within_its_first_tenth_and_still_decays():
    """A deadline that cut a stage to fewer steps than its warm-up left the rate rising to its end."""
    factors = [lr_factor(step, 200, 150) for step in range(151)]
    assert max(factors) == pytest.approx(1.0, abs=0.01) and factors.index(max(factors)) <= 15
    assert factors[-1] == pytest.approx(0.0)
    assert lr_factor(5, 10, 1000) == lr_factor(5, 10, 100)  # a warm-up within a tenth is as it was


def test_adapters_that_diverge_before_their_first_validation_export_the_untrained_ones(config, tmp_path, monkeypatch):
    """A non-finite loss before the first validation (step 250 in the GPU recipe) stopped the run with nothing to
    export, and the recipe's evaluation with it; untrained, the adapters leave the base as it is: a model."""
    from engine.train import loop
    from engine.weights.adapter_format import load_adapter

    real = loop.Trainer.read_losses

    def diverging(self):  # the step's loss is read as not finite from step 2 on, as read_losses says of it
        if self.step >= 2:
            raise loop.NonFiniteLoss(self.step, float("nan"))
        return real(self)

    monkeypatch.setattr(loop.Trainer, "read_losses", diverging)
    cfg = replace(config, steps=4, val_every=3, log_every=1, keep_best=True)
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.history["diverged_at"] == 2 and result.history["exported"]["step"] == 0
    exported, _ = load_adapter(result.outputs["adapter"])
    gates = [t for name, t in exported.items() if name.endswith("gates")]
    assert gates and all(not t.any() for t in gates)  # the gates as they start: 0
