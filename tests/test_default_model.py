"""engine.train.default_model: the embedded model is assembled from the three runs, with a model card that loads."""

from __future__ import annotations

import json
import shutil

import pytest

from engine.eval.verdict import beats_identity
from engine.train.default_model import assemble, main


@pytest.fixture()
def work(tmp_path, tiny_model_dir):
    """A training work folder as the Makefile leaves it (data, codec, base and adapter runs, evaluation)."""
    work = tmp_path / "work"
    shutil.copytree(tiny_model_dir, work / "adapters" / "model")
    (work / "synth16k").mkdir(parents=True)
    (work / "synth16k" / "dataset.json").write_text(json.dumps({"tracks": 7, "seconds": 30.0, "sample_rate": 16000}))
    (work / "codec").mkdir()
    (work / "codec" / "codec_train_config.json").write_text(json.dumps({"steps": 50, "extra": {"data": "x"}}))
    rows = [
        {"loss": 3.0 - 0.1 * i, "l1": 0.05, "stft": 2.0, "commit": 0.01, "step": 25 * i, "seconds": 10.0 * i}
        for i in range(1, 3)
    ]
    (work / "codec" / "codec_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for stage, losses in (("base", [5.0, 4.0]), ("adapters", [3.0, 2.5])):
        history = {"config": {"stage": stage, "steps": 2, "extra": {"run_dir": "x"}}, "wall_seconds": 12.5}
        history.update(train=[[1, losses[0]], [2, losses[1]]], val=[[2, losses[1] + 0.1]], lr=[])
        (work / stage).mkdir(exist_ok=True)
        (work / stage / "history.json").write_text(json.dumps(history))
    (work / "eval").mkdir()
    rows = {"model": {"log_mel_distance": 1.0, "mel_ssim": 0.3}, "identity": {"log_mel_distance": 2.0, "mel_ssim": 0.4}}
    report = {"tasks": {"extract": {"summary": rows}}}
    (work / "eval" / "report.json").write_text(json.dumps(report))
    (work / "eval" / "report.md").write_text("| row |\n")
    return work


def test_the_assembled_model_loads_and_its_card_records_every_stage(work, tmp_path):
    from engine.weights import load_model

    out = tmp_path / "default"
    card = assemble(work, out, tmp_path / "docs")
    saved = json.loads((out / "model_card.json").read_text())
    assert saved == json.loads(json.dumps(card))
    assert set(saved["stages"]) == {"codec", "base", "adapters"}
    assert saved["stages"]["base"]["final_train_loss"] == 4.0 and saved["stages"]["adapters"]["final_val_loss"] == 2.6
    assert saved["stages"]["codec"]["steps"] == 50 and saved["wall_seconds_total"] == 20.0 + 12.5 + 12.5
    assert saved["data"]["settings"]["tracks"] == 7
    assert len(saved["stages"]["adapters"]["fusion_gates"]) > 0  # the tiny model's random gates, recorded
    counts = saved["sizes"]["parameters"]
    assert min(counts.values()) > 0
    assert saved["evaluation"]["summary"]["extract"]["model"]["log_mel_distance"] == 1.0
    assert saved["evaluation"]["beats_identity"] == {"extract": {"mel_ssim": False, "log_mel_distance": True}}
    assert (tmp_path / "docs" / "report.md").is_file()
    loaded = load_model(out, device="cpu")
    assert loaded.card.has_adapter and loaded.card.mask_depth == {}
    assert sum(p.numel() for p in loaded.lm.adapter_parameters()) == counts["adapter"]
    # the remove depth chosen for the adapter (make model-mask-depth, into the run's card) goes with the model
    from engine.eval.mask_tune import record_depth

    record_depth(work / "adapters" / "model", "remove", 0.375)
    assemble(work, out, tmp_path / "docs")
    assert load_model(out, device="cpu").card.mask_depth == {"remove": 0.375}


def test_a_re_measurement_replaces_only_the_cards_evaluation_and_the_report(work, tmp_path, capsys):
    out = tmp_path / "default"
    card = assemble(work, out, tmp_path / "docs")
    weights = {p.name: p.read_bytes() for p in out.rglob("*.safetensors")}
    again = tmp_path / "again"
    again.mkdir()
    rows = {"model": {"log_mel_distance": 3.0, "mel_ssim": 0.5}, "identity": {"log_mel_distance": 2.0, "mel_ssim": 0.4}}
    report = {"model": {"model": card["name"]}, "tasks": {"extract": {"summary": rows}}}
    (again / "report.json").write_text(json.dumps(report))
    (again / "report.md").write_text("| new row |\n")
    argv = ["-o", str(out), "--docs", str(tmp_path / "docs"), "--evaluation", str(again), "--command", "imusic eval X"]
    assert main(argv) == 0
    saved = json.loads((out / "model_card.json").read_text())
    assert saved["evaluation"]["beats_identity"] == {"extract": {"mel_ssim": True, "log_mel_distance": False}}
    assert saved["evaluation"]["command"] == "imusic eval X"
    assert {k: v for k, v in saved.items() if k != "evaluation"} == {
        k: v for k, v in json.loads(json.dumps(card)).items() if k != "evaluation"
    }
    assert {p.name: p.read_bytes() for p in out.rglob("*.safetensors")} == weights
    assert (tmp_path / "docs" / "report.md").read_text() == "| new row |\n"
    report["model"]["model"] = "someone-else"
    (again / "report.json").write_text(json.dumps(report))
    assert main(argv) == 1 and "not " in capsys.readouterr().err


def test_an_unfinished_adapter_stage_is_one_clear_line(work, tmp_path, capsys):
    shutil.rmtree(work / "adapters" / "model" / "adapter")
    assert main(["--work", str(work), "-o", str(tmp_path / "default"), "--docs", str(tmp_path / "docs")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "make model-adapters" in err
    assert not (tmp_path / "default").exists()


def _codec_run(run, seconds, init_from=None, nmse=None, **settings):
    run.mkdir(parents=True)
    extra = {"data": "x", **({"init_from": str(init_from)} if init_from else {})}
    (run / "codec_train_config.json").write_text(json.dumps({"steps": 50, **settings, "extra": extra}))
    row = {"loss": 2.0, "l1": 0.05, "stft": 1.5, "commit": 0.01, "step": 50, "seconds": seconds}
    if nmse is not None:
        row["nmse"] = nmse
    (run / "codec_log.jsonl").write_text(json.dumps(row) + "\n")


def test_a_codec_continued_from_earlier_runs_records_the_whole_chain(tmp_path):
    from engine.train.default_model import codec_summary

    _codec_run(tmp_path / "first", 100.0)
    _codec_run(tmp_path / "second", 40.0, tmp_path / "first" / "codec")
    _codec_run(tmp_path / "third", 30.0, tmp_path / "second" / "codec", nmse=0.5)
    summary = codec_summary(tmp_path / "third")
    assert summary["wall_seconds"] == 170.0 and summary["stage_wall_seconds"] == 30.0
    assert summary["total_steps"] == 150 and summary["final_losses"]["nmse"] == 0.5
    assert summary["continues"]["continues"]["wall_seconds"] == 100.0
    assert "nmse" not in summary["continues"]["final_losses"]  # a run that did not log it reports none


def test_a_codec_chain_reads_runs_as_training_reads_them_old_names_and_run_folders_included(tmp_path):
    from engine.train.default_model import codec_summary

    _codec_run(tmp_path / "old", 20.0, batch_size=8, segment_seconds=1.0)  # saved before the renames
    _codec_run(tmp_path / "new", 10.0, tmp_path / "old", batch=16)  # continued from the run folder, not its codec/
    summary = codec_summary(tmp_path / "new")
    assert summary["settings"]["batch"] == 16 and summary["wall_seconds"] == 30.0
    assert summary["continues"]["settings"] == {"steps": 50, "batch": 8, "seconds": 1.0}


def test_a_missing_or_looping_codec_chain_is_named(tmp_path):
    from engine.errors import CheckpointError
    from engine.train.default_model import codec_summary

    _codec_run(tmp_path / "orphan", 10.0, tmp_path / "gone" / "codec")
    with pytest.raises(CheckpointError, match="is missing"):
        codec_summary(tmp_path / "orphan")
    _codec_run(tmp_path / "a", 10.0, tmp_path / "b" / "codec")
    _codec_run(tmp_path / "b", 10.0, tmp_path / "a" / "codec")
    with pytest.raises(CheckpointError, match="loop"):
        codec_summary(tmp_path / "a")


def test_beats_identity_compares_each_metric_in_its_own_direction_and_skips_what_is_missing():
    summary = {
        "extract": {
            "model": {"mel_ssim": 0.5, "log_mel_distance": 9.0},
            "identity": {"mel_ssim": 0.4, "log_mel_distance": 8.0},
        },
        "remove": {"model": {"mel_ssim": 0.1}, "identity": {"mel_ssim": 0.6, "log_mel_distance": 9.0}},
        "add": {"model": {"mel_ssim": 0.1}},
    }
    assert beats_identity(summary) == {
        "extract": {"mel_ssim": True, "log_mel_distance": False},
        "remove": {"mel_ssim": False},
    }


def test_a_cards_verdict_counts_an_edit_no_better_than_a_fader_as_not_working():
    from engine.eval.verdict import beats_unchanged

    summary = {
        "remove": {
            "model": {"mel_ssim": 0.61, "log_mel_distance": 8.7},
            "identity": {"mel_ssim": 0.60, "log_mel_distance": 8.9},
            "level only": {"mel_ssim": 0.62, "log_mel_distance": 8.8},  # -1 dB of the input does better on SSIM
        },
        "extract": {  # a report from before the level-only row: the identity alone decides
            "model": {"mel_ssim": 0.45, "log_mel_distance": 13.0},
            "identity": {"mel_ssim": 0.42, "log_mel_distance": 15.0},
        },
    }
    assert beats_unchanged(summary) == {
        "remove": {"mel_ssim": False, "log_mel_distance": True},
        "extract": {"mel_ssim": True, "log_mel_distance": True},
    }
    # a level-only row whose figure is missing or not finite is not a fader beaten (acceptance: "not measured")
    summary["remove"]["level only"] = {"mel_ssim": None, "log_mel_distance": float("nan")}
    assert beats_unchanged(summary)["remove"] == {"mel_ssim": False, "log_mel_distance": False}


def test_a_model_folders_stems_are_the_ones_loading_uses_its_adapters_first(tmp_path):
    from engine.train.default_model import model_stems

    (tmp_path / "adapter").mkdir()
    (tmp_path / "model_card.json").write_text(json.dumps({"name": "m", "stems": ["Drums", "Bass"]}))
    meta = {"format": "imusic-adapter", "version": 1, "fusion": {}, "stems": ["Piano"]}  # as loading reads it
    (tmp_path / "adapter" / "adapter.json").write_text(json.dumps(meta))
    assert model_stems(tmp_path) == ["Piano"]  # as load_model: the adapter's vocabulary replaces the card's
    (tmp_path / "model_card.json").unlink()
    assert model_stems(tmp_path) == ["Piano"]  # a folder being assembled, its card not written yet
    (tmp_path / "adapter" / "adapter.json").unlink()
    assert model_stems(tmp_path) is None  # an adapter only loading can read: no guess


@pytest.mark.parametrize("tool", ["default_model", "recipe install"])
def test_an_installed_copy_asks_where_the_model_goes_not_into_site_packages(tool, tmp_path, monkeypatch, capsys):
    """The maintainer tools default to the checkout's shipped model and docs; run from a pip-installed copy those
    defaults lie in site-packages (the shipped model replaced, a stray docs/ made there)."""
    import engine.train.config as config
    from engine.train import recipe

    monkeypatch.setattr(config, "CHECKOUT", tmp_path / "site-packages")  # no pyproject.toml there
    if tool == "default_model":
        code = main(["--work", str(tmp_path / "work")])
    else:
        code = recipe.main(["install", str(tmp_path / "packs")])
    err = capsys.readouterr().err
    assert code == 1 and "installed copy" in err and "give -o" in err
    assert not (tmp_path / "site-packages").exists()
    # given both, it goes on to its own checks (here: nothing to assemble or install)
    argv_tail = ["-o", str(tmp_path / "model"), "--docs", str(tmp_path / "docs")]
    code = (
        main(["--work", str(tmp_path / "work"), *argv_tail])
        if tool == "default_model"
        else recipe.main(["install", str(tmp_path / "packs"), *argv_tail])
    )
    err = capsys.readouterr().err
    assert code == 1 and "installed copy" not in err
