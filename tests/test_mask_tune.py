"""engine.eval.mask_tune: the mask mode's settings chosen on validation songs by coordinate descent."""

from __future__ import annotations

import json

import pytest

from engine.eval import mask_tune
from engine.mask import DEFAULT_SETTINGS, MaskSettings


@pytest.fixture
def few_candidates(monkeypatch):
    monkeypatch.setattr(mask_tune, "CANDIDATES", {"floor": (0.0, 0.5), "exponent": (0.5, 2.0)})


def test_the_descent_ends_on_the_best_settings_it_tried_never_below_its_start(synth_data, tiny_editor, few_candidates):
    rate = tiny_editor.sample_rate
    clips = mask_tune.model_outputs(tiny_editor, synth_data, "remove", 1, seconds=1.0)
    assert clips and all(source.shape == target.shape == output.shape for source, target, output in clips)
    lines = []
    result = mask_tune.descend(clips, rate, "remove", DEFAULT_SETTINGS["remove"], passes=1, log=lines.append)
    assert result["best_score"]["objective"] >= result["start_score"]["objective"]
    again = mask_tune.score(clips, rate, "remove", MaskSettings(**result["best"]))
    assert again["objective"] == pytest.approx(result["best_score"]["objective"])
    tried = [float(line.rsplit(": ", 1)[1]) for line in lines]
    assert result["best_score"]["objective"] == pytest.approx(max(tried), abs=1e-4)


def test_the_clips_are_the_validation_splits_only(synth_data, tiny_editor):
    from engine.eval.clips import held_out_clips

    validation = held_out_clips(synth_data, "extract", tiny_editor.sample_rate, 1.0, "4stems", 0, 1, "validation")
    test = held_out_clips(synth_data, "extract", tiny_editor.sample_rate, 1.0, "4stems", 0, 1, "test")
    clips = mask_tune.model_outputs(tiny_editor, synth_data, "extract", 1, seconds=1.0)
    inputs = [source.tobytes() for source, _, _ in clips]
    assert inputs == [validation[i].input.tobytes() for i in range(len(validation))]
    assert not set(inputs) & {test[i].input.tobytes() for i in range(len(test))}


def test_the_command_writes_its_choice(synth_data, tiny_model_dir, tmp_path, few_candidates, capsys):
    out = tmp_path / "remove.json"
    argv = [
        "--data",
        str(synth_data),
        "--task",
        "remove",
        "--model",
        str(tiny_model_dir),
        "--clips-per-song",
        "1",
        "--seconds",
        "1",
    ]
    assert mask_tune.main([*argv, "--passes", "1", "-o", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["task"] == "remove" and set(saved["best"]) == set(MaskSettings.__dataclass_fields__)
    assert mask_tune.main(["--data", str(tmp_path / "none"), "--task", "remove", "--model", str(tiny_model_dir)]) == 1
    assert "error:" in capsys.readouterr().err


def test_the_depth_is_chosen_from_the_model_s_steered_output_against_the_unchanged_input(synth_data, tiny_editor):
    from engine.modes import MASK

    rate = tiny_editor.sample_rate
    clips = mask_tune.model_outputs(tiny_editor, synth_data, "remove", 1, seconds=1.0)
    result = mask_tune.choose_depth(clips, rate, "remove", DEFAULT_SETTINGS["remove"])
    rows = result["depths"]
    assert set(rows) == {str(d) for d in mask_tune.DEPTHS} and result["chosen"] in mask_tune.DEPTHS
    # scored in processes (the GPU recipe's 14; one BLAS thread each, so sums round their own way): the same choice,
    # the same figures to 1e-12
    pooled = mask_tune.choose_depth(clips, rate, "remove", DEFAULT_SETTINGS["remove"], workers=2)
    assert pooled["chosen"] == result["chosen"] and pooled["clips"] == result["clips"]
    for depth, row in result["depths"].items():
        for metric in ("mel_ssim", "log_mel_distance", "objective"):
            assert pooled["depths"][depth][metric] == pytest.approx(row[metric], abs=1e-12)
    best = max(row["objective"] for row in rows.values())
    assert rows[str(result["chosen"])]["objective"] == best
    for row in rows.values():
        assert row["objective"] == pytest.approx(row["mel_ssim"] - row["log_mel_distance"] / 100)
        assert len(row["mel_ssim vs identity"]) == 2
    # the outputs are what the mask mode generates for a remove: the stem's extraction (Editor.generation)
    made, _ = tiny_editor.generation(tiny_editor.parse("remove bass"), MASK)
    assert made.op == "extract"


def test_the_command_refuses_a_depth_for_add_in_one_line(synth_data, capsys):
    assert mask_tune.main(["--data", str(synth_data), "--task", "add", "--depth"]) == 1
    assert "--depth applies to extract and remove" in capsys.readouterr().err
    assert mask_tune.main(["--data", str(synth_data), "--task", "remove", "--write-card"]) == 1
    assert "--write-card needs --depth and the --model folder" in capsys.readouterr().err


def test_outputs_generated_in_batches_are_those_generated_one_by_one(synth_data, tiny_editor):
    import numpy as np

    alone = mask_tune.model_outputs(tiny_editor, synth_data, "remove", 3, seconds=1.0, limit=3)
    together = mask_tune.model_outputs(tiny_editor, synth_data, "remove", 3, seconds=1.0, limit=3, batch=3)
    assert len(alone) == len(together) == 3
    for (source, target, output), (source2, target2, output2) in zip(alone, together, strict=True):
        assert np.array_equal(source, source2) and np.array_equal(target, target2)
        np.testing.assert_allclose(output, output2, atol=1e-3)


def test_settings_and_depth_are_chosen_on_masks_finished_as_the_editor_finishes_them():
    """A mask can push peaks past the recording's (a square wave's fundamental alone peaks higher than the square):
    the Editor's finish limits them, and the choice scores what the Editor would hand back (engine.mask.mask_result)."""
    import numpy as np

    from engine.eval.metrics import edit_metrics
    from engine.mask import apply_edit, mask_result

    rate = 16000
    t = np.arange(rate) / rate
    square = (0.99 * np.sign(np.sin(2 * np.pi * 100 * t))).astype(np.float32)
    fundamental = (0.99 * 4 / np.pi * np.sin(2 * np.pi * 100 * t)).astype(np.float32)
    clips = [(square, fundamental, fundamental)]  # input, target, the model's estimate
    finished, info = mask_result(square, rate, fundamental, rate, "extract")
    assert (
        info["limited"]
        and np.abs(apply_edit(square, rate, fundamental, rate, "extract")).max() > np.abs(finished).max()
    )
    expected = edit_metrics(finished[0], square, fundamental, rate)
    depth = mask_tune.choose_depth(clips, rate, "extract", DEFAULT_SETTINGS["extract"])
    assert depth["depths"]["1.0"]["mel_ssim"] == pytest.approx(expected["mel_ssim"], abs=1e-9)
    assert depth["depths"]["1.0"]["log_mel_distance"] == pytest.approx(expected["log_mel_distance"], abs=1e-9)
    scored = mask_tune.score(clips, rate, "extract", DEFAULT_SETTINGS["extract"])
    assert scored["mask mel_ssim"] == pytest.approx(expected["mel_ssim"], abs=1e-9)
