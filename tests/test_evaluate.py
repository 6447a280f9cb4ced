"""imusic eval: reference rows that are right by construction, the report files, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_bridge_support import write_folder_song

from engine.errors import ConfigError, DataError
from engine.eval.clips import EVAL_SPLITS
from engine.eval.evaluate import codec_roundtrip, evaluate, markdown, score_rows, summarize
from engine.instructions import MAX_SEED

RATE = 16000


@pytest.fixture(scope="module")
def report_dir(synth_data, tiny_editor, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_report")
    evaluate(
        synth_data,
        ["extract", "remove", "add"],
        out,
        editor=tiny_editor,
        limit=2,
        spectrograms=1,
        seconds=1.0,
        clips_per_song=2,
        progress=False,
    )
    return out


def _hand_made_clip(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mixture, stem): a tone stem under a noise bed, 1 s at 16 kHz."""
    t = np.arange(RATE) / RATE
    stem = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    bed = (0.1 * np.random.default_rng(seed).standard_normal(RATE)).astype(np.float32)
    return stem + bed, stem


def test_on_a_hand_made_extract_the_oracle_is_huge_and_the_identity_gains_nothing():
    mixture, stem = _hand_made_clip()
    rows = score_rows(mixture, stem, {"model": 0.5 * stem}, RATE)
    assert rows["oracle"]["si_sdr"] > 60 and rows["oracle"]["mel_ssim"] == pytest.approx(1.0)
    assert rows["identity"]["si_sdri"] == pytest.approx(0.0, abs=1e-9)
    # A scaled copy of the target is as good as the oracle for SI-SDR (scale-invariant), not for the mel metrics.
    assert rows["model"]["si_sdr"] > 60
    assert 1.0 < rows["model"]["log_mel_distance"] <= 20 * math.log10(2) + 1e-6  # 6 dB where above the floor


def test_summary_is_the_mean_over_clips_per_row():
    clips = []
    for value in (1.0, 3.0):
        row = {metric: value for metric in ("si_sdr", "si_sdri", "mel_ssim", "log_mel_distance")}
        clips.append({"model": row, "identity": row})
    summary = summarize(clips)
    assert summary["model"]["n"] == 2 and summary["model"]["si_sdr"] == pytest.approx(2.0)
    assert summary["identity"]["si_sdr_std"] == pytest.approx(1.0)


def test_clips_whose_scores_are_not_finite_are_counted_shown_and_leave_the_verdict_undecided():
    """A model that returned NaN on 9 of 10 clips got a row of its one finite clip under a "(10 clips)" heading, and a
    card verdict from it."""
    from engine.eval.verdict import beats_identity

    clips = []
    for index in range(10):
        good = index == 0
        clips.append(
            {
                "model": {
                    "si_sdr": 5.0,
                    "si_sdri": 1.0,
                    "mel_ssim": 0.9 if good else math.nan,
                    "log_mel_distance": 1.0,
                },
                "identity": {"si_sdr": 0.0, "si_sdri": 0.0, "mel_ssim": 0.5, "log_mel_distance": 9.0},
            }
        )
    summary = summarize(clips)
    assert summary["model"]["mel_ssim_nonfinite"] == 9 and "log_mel_distance_nonfinite" not in summary["model"]
    verdict = beats_identity({"extract": summary})
    assert verdict == {"extract": {"log_mel_distance": True}}  # mel SSIM: measured on 1 clip of 10, not judged
    report = {
        "model": {"model": "m", "device": "cpu", "dtype": "float32"},
        "data": "d",
        "settings": {"seconds": 2.0},
        "tasks": {"extract": {"summary": summary}},
    }
    assert "(9 of 10 not finite)" in markdown(report)


class _DoublingCodec:
    """A codec whose "codes" are the wave and whose decode doubles it, `extra` samples longer (or shorter)."""

    def __init__(self, extra: int):
        self.extra = extra

    def encode(self, wav):
        return wav

    def decode(self, codes):
        import torch

        doubled = 2 * codes
        if self.extra >= 0:
            return torch.cat([doubled, torch.ones(*codes.shape[:-1], self.extra)], dim=-1)
        return doubled[..., : self.extra]


def test_codec_ceiling_is_the_target_through_the_codec_cut_or_padded_to_its_length():
    audio = np.linspace(-0.5, 0.5, 100, dtype=np.float32)
    longer = codec_roundtrip(_DoublingCodec(7), audio)  # decoders return whole frames: the tail is cut
    np.testing.assert_allclose(longer, 2 * audio)
    shorter = codec_roundtrip(_DoublingCodec(-10), audio)  # a short decode: zeros after it, the input's length
    np.testing.assert_allclose(shorter[:90], 2 * audio[:90])
    assert shorter.shape == (100,) and not shorter[90:].any()
    stereo = codec_roundtrip(_DoublingCodec(3), np.stack([audio, -audio]))  # each channel alone
    np.testing.assert_allclose(stereo, np.stack([2 * audio, -2 * audio]))


def test_codec_ceiling_through_the_models_codec_has_the_targets_length(tiny_editor):
    _, stem = _hand_made_clip()
    odd = stem[: stem.shape[0] - 77]  # not a whole number of the codec's frames
    ceiling = codec_roundtrip(tiny_editor.model.codec, odd)
    assert ceiling.shape == odd.shape and np.isfinite(ceiling).all() and np.abs(ceiling).max() > 0


def test_every_task_has_the_model_and_the_three_reference_rows(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    assert list(report["tasks"]) == ["extract", "remove", "add"]
    for part in report["tasks"].values():
        rows = {"model", "resynth", "identity", "level only", "noise bed", "codec ceiling", "ideal mask", "oracle"}
        assert set(part["summary"]) == rows
        assert part["summary"]["model"]["n"] == 2 and part["summary"]["resynth"]["n"] == 2
        grids = ("level only", "noise bed")
        assert all("ild_error" in row for name, row in part["summary"].items() if name not in grids)
        level = part["summary"]["level only"]  # the fader: mel SSIM and log-mel distance, each at its best gain
        assert set(level) == {"n", "mel_ssim", "mel_ssim_std", "mel_ssim_gain_db", "mel_ssim_at", "log_mel_distance",
                              "log_mel_distance_std", "log_mel_distance_gain_db", "log_mel_distance_at"}  # fmt: skip
        noise = part["summary"]["noise bed"]  # the noise: each metric at its best bed, named
        assert noise["log_mel_distance_at"].endswith(" dBFS") and "noise at" in noise["mel_ssim_at"]
        model = part["summary"]["model"]  # judged against each with paired statistics
        assert {"log_mel_distance_t_vs_identity", "log_mel_distance_t_vs_level only"} <= set(model)
        assert "log_mel_distance_t_vs_noise bed" in model
        assert all("level grid" not in clip and "noise grid" not in clip for clip in part["examples"])  # not kept


def test_reference_rows_of_a_real_run_are_right_by_construction(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    for part in report["tasks"].values():
        for clip in part["examples"]:
            assert clip["identity"]["si_sdri"] == pytest.approx(0.0, abs=1e-9)
            assert clip["oracle"]["si_sdr"] > 60
            assert clip["oracle"]["mel_ssim"] == pytest.approx(1.0)
            assert clip["oracle"]["log_mel_distance"] == pytest.approx(0.0, abs=1e-9)
            assert clip["codec ceiling"]["si_sdr"] < clip["oracle"]["si_sdr"]
            assert clip["ideal mask"]["si_sdr"] < clip["oracle"]["si_sdr"]
            assert all(row["ild_error"] == 0.0 for name, row in clip.items() if isinstance(row, dict))  # mono clips


def test_the_ideal_mask_row_gains_over_doing_nothing_on_every_task(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    for part in report["tasks"].values():
        ideal, identity = part["summary"]["ideal mask"], part["summary"]["identity"]
        assert ideal["si_sdri"] > 3
        assert ideal["mel_ssim"] > identity["mel_ssim"] and ideal["log_mel_distance"] < identity["log_mel_distance"]


def test_the_model_row_is_the_default_mask_mode_and_the_resynth_row_the_same_generation(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    for part in report["tasks"].values():
        for clip in part["examples"]:
            assert clip["model"] != clip["resynth"]


def test_each_clip_is_generated_once_for_both_rows_with_its_own_seed(synth_data, tiny_editor, tmp_path):
    from engine.modes import DEFAULT_MODE, RESYNTH

    calls = []

    class Marked(_EchoEditor):
        """The default mode returns the input, resynth the input backwards: which row holds which is plain."""

        def edit_modes(self, audio, sample_rate, instruction, modes, *, seed=None, raw=False):
            from types import SimpleNamespace

            calls.append((tuple(modes), seed))
            audio = np.array(audio, dtype=np.float32)
            return {DEFAULT_MODE: SimpleNamespace(audio=audio), RESYNTH: SimpleNamespace(audio=audio[..., ::-1].copy())}

    for batch in (1, 2):
        calls.clear()
        report = _short_eval(synth_data, Marked(tiny_editor), tmp_path / str(batch), limit=2, batch=batch, seed=5)
        # one generation per clip, seeded by its place in the split: clips 0 and 2 of 3 (a limit spreads them)
        assert calls == [((DEFAULT_MODE, RESYNTH), 5), ((DEFAULT_MODE, RESYNTH), 7)]
        summary = report["tasks"]["extract"]["summary"]
        assert summary["model"]["mel_ssim"] == summary["identity"]["mel_ssim"]  # the model row is the default mode
        assert summary["resynth"]["mel_ssim"] != summary["identity"]["mel_ssim"]


class _EchoEditor:
    """The real tiny editor's model and card, but every edit returns its input: the model row must equal identity."""

    def __init__(self, editor) -> None:
        self.model, self.card, self.vocab, self.sample_rate = (
            editor.model,
            editor.card,
            editor.vocab,
            editor.sample_rate,
        )
        self.info = editor.info

    def edit_modes(self, audio, sample_rate, instruction, modes, *, seed=None, raw=False):
        from types import SimpleNamespace

        return {mode: SimpleNamespace(audio=np.array(audio, dtype=np.float32)) for mode in modes}

    def edit_batch(self, audios, sample_rate, instructions, modes, *, seeds, raw=False):
        items = zip(audios, instructions, seeds, strict=True)
        return [self.edit_modes(a, sample_rate, i, modes, seed=s) for a, i, s in items]


def _short_eval(data, editor, out, tasks=("extract",), **options):
    """evaluate() on 1 s clips, 3 per song, without a progress bar or network metrics, unless `options` say."""
    options = {"seconds": 1.0, "clips_per_song": 3, "progress": False, "optional_metrics": False, **options}
    return evaluate(data, list(tasks), out, editor=editor, **options)


def test_an_editor_that_returns_its_input_scores_exactly_the_identity_row(synth_data, tiny_editor, tmp_path):
    report = _short_eval(synth_data, _EchoEditor(tiny_editor), tmp_path, limit=2, optional_metrics=True)
    summary = report["tasks"]["extract"]["summary"]
    for metric in ("si_sdr", "si_sdri", "mel_ssim", "log_mel_distance", "ild_error"):
        assert summary["model"][metric] == summary["identity"][metric] == summary["resynth"][metric]


def test_an_input_gain_scores_each_clip_as_a_quieter_recording_input_and_target_alike(
    synth_data, tiny_editor, tmp_path
):
    heard = []

    class Recording(_EchoEditor):
        def edit_modes(self, audio, sample_rate, instruction, modes, *, seed=None, raw=False):
            heard.append(np.array(audio))
            return super().edit_modes(audio, sample_rate, instruction, modes, seed=seed, raw=raw)

    plain = _short_eval(synth_data, Recording(tiny_editor), tmp_path / "0", limit=2)
    quiet = _short_eval(synth_data, Recording(tiny_editor), tmp_path / "-12", limit=2, input_gain_db=-12.0)
    for loud, soft in zip(heard[:2], heard[2:], strict=True):
        np.testing.assert_allclose(soft, loud * 10 ** (-12 / 20), rtol=1e-6)
    assert quiet["settings"]["input_gain_db"] == -12.0 and "inputs and targets at -12 dB" in markdown(quiet)
    # the target is scaled with the input: doing nothing scores the same SI-SDR, and the level-blind metrics alike
    assert quiet["tasks"]["extract"]["summary"]["identity"]["si_sdr"] == pytest.approx(
        plain["tasks"]["extract"]["summary"]["identity"]["si_sdr"], abs=1e-3
    )
    with pytest.raises(ConfigError, match="--input-gain-db must be from -40 to 40 dB, got nan"):
        _short_eval(synth_data, tiny_editor, tmp_path / "nan", input_gain_db=float("nan"))


def test_stereo_sessions_score_the_image_dual_mono_resynth_loses_it_and_the_mask_keeps_the_inputs(
    synth_data, tiny_editor, tmp_path
):
    report = evaluate(
        synth_data,
        ["remove"],
        tmp_path,
        editor=tiny_editor,
        limit=2,
        seconds=1.0,
        clips_per_song=2,
        progress=False,
        stereo=True,
        save_audio=True,
    )
    assert report["settings"]["stereo"] is True
    summary = report["tasks"]["remove"]["summary"]
    # the target is panned: dual-mono re-synthesis has an image error; the oracle has none
    assert summary["resynth"]["ild_error"] > 1.0 and summary["oracle"]["ild_error"] == 0.0
    assert summary["model"]["ild_error"] < summary["resynth"]["ild_error"]
    import soundfile

    assert soundfile.info(tmp_path / "audio" / "remove" / "input" / "00000.wav").channels == 2
    # named so that a listing's order is the clips' (text.csv's captions follow it): 00010 after 00002
    names = sorted(p.name for p in (tmp_path / "audio" / "remove" / "input").iterdir())
    assert names == [f"{i:05d}.wav" for i in range(len(names))]


def test_a_stereo_clip_pans_the_stem_left_and_the_rest_right_and_keeps_the_operations_sums():
    from types import SimpleNamespace

    from engine.eval.clips import stereo_clip

    stem, rest = np.ones(8, np.float32), 2 * np.ones(8, np.float32)
    clip = SimpleNamespace(input=stem + rest, stem=stem, target=rest)
    source, target = stereo_clip(clip, "remove", seed=0)
    assert source.shape == target.shape == (2, 8)
    assert target[1, 0] > target[0, 0]  # the rest sits right
    np.testing.assert_allclose(source - target, stereo_clip(clip, "extract", seed=0)[1], atol=1e-6)
    add_source, add_target = stereo_clip(SimpleNamespace(input=rest, stem=stem, target=rest + stem), "add", seed=0)
    np.testing.assert_allclose(add_source, target, atol=1e-6)
    np.testing.assert_allclose(add_target, source, atol=1e-6)


class _RefusingEditor(_EchoEditor):
    """Refuses the first clip it is given (as the Editor does with unusable audio), echoes the rest."""

    def __init__(self, editor) -> None:
        super().__init__(editor)
        self.calls = 0

    def edit_modes(self, audio, sample_rate, instruction, modes, *, seed=None, raw=False):
        from engine.errors import AudioError

        self.calls += 1
        if self.calls == 1:
            raise AudioError("the input is silent")
        return super().edit_modes(audio, sample_rate, instruction, modes, seed=seed, raw=raw)


def test_a_clip_the_editor_refuses_is_skipped_with_its_reason(synth_data, tiny_editor, tmp_path):
    editor = _RefusingEditor(tiny_editor)
    report = evaluate(
        synth_data, ["remove"], tmp_path, editor=editor, limit=2, seconds=1.0, clips_per_song=2, progress=False
    )
    part = report["tasks"]["remove"]
    assert part["summary"]["model"]["n"] == 1
    assert part["skipped"][0]["reason"] == "the input is silent"
    assert "1 clip(s) skipped: the input is silent" in (tmp_path / "report.md").read_text()


class _BatchRefusingEditor(_RefusingEditor):
    """Refuses a batch (one of its clips is unusable) and then its first clip alone."""

    def edit_batch(self, audios, sample_rate, instructions, modes, *, seeds, raw=False):
        from engine.errors import AudioError

        raise AudioError("the input is silent")


class _NonFiniteEditor(_RefusingEditor):
    """Its first clip's output is not finite, as the Editor says of it (ResourceError); batches are refused so."""

    def edit_batch(self, audios, sample_rate, instructions, modes, *, seeds, raw=False):
        from engine.errors import ResourceError

        raise ResourceError("the model produced invalid samples (NaN/inf); try another seed or dtype fp32")

    def edit_modes(self, audio, sample_rate, instruction, modes, *, seed=None, raw=False):
        from engine.errors import ResourceError

        self.calls += 1
        if self.calls == 1:
            raise ResourceError("the model produced invalid samples (NaN/inf); try another seed or dtype fp32")
        return _EchoEditor.edit_modes(self, audio, sample_rate, instruction, modes, seed=seed, raw=raw)


def test_an_output_that_is_not_finite_costs_its_clip_not_the_evaluation(synth_data, tiny_editor, tmp_path):
    """A GPU run's eval stage writes its report only at the end: one NaN output used to lose every score."""
    report = _short_eval(synth_data, _NonFiniteEditor(tiny_editor), tmp_path, ["remove"], limit=3, batch=3)
    part = report["tasks"]["remove"]
    assert part["summary"]["model"]["n"] == 2 and "invalid samples" in part["skipped"][0]["reason"]
    # what was scored, not what was tried; the clip the model failed on counts against it (report_summary)
    assert part["clips"] == {"scored": 2, "planned": 3, "refused": 1, "failed": 1}


def test_a_batch_with_a_clip_the_editor_refuses_scores_the_others_one_by_one(synth_data, tiny_editor, tmp_path):
    report = _short_eval(synth_data, _BatchRefusingEditor(tiny_editor), tmp_path, ["remove"], limit=3, batch=3)
    part = report["tasks"]["remove"]
    assert part["summary"]["model"]["n"] == 2 and len(part["skipped"]) == 1
    assert [clip["seed"] for clip in part["examples"]] == [1, 2]


def test_batched_clips_are_the_same_clips_with_the_same_seeds(synth_data, tiny_editor, tmp_path):
    runs = {b: _short_eval(synth_data, tiny_editor, tmp_path / str(b), limit=3, batch=b) for b in (1, 2)}
    one, two = (runs[b]["tasks"]["extract"] for b in (1, 2))
    assert runs[2]["settings"]["batch"] == 2 and one["clips"] == two["clips"] == {
        "scored": 3,
        "planned": 3,
        "refused": 0,
        "failed": 0,
    }
    for a, b in zip(one["examples"], two["examples"], strict=True):
        assert (a["song"], a["offset"], a["stem"], a["seed"]) == (b["song"], b["offset"], b["stem"], b["seed"])
        assert a["identity"] == b["identity"] and a["codec ceiling"] == b["codec ceiling"]
    with pytest.raises(ConfigError, match="--batch"):
        evaluate(synth_data, ["extract"], tmp_path, editor=tiny_editor, batch=0, progress=False)


def test_a_limit_scores_clips_spread_over_the_split_each_as_the_whole_split_scores_it(
    synth_data, tiny_editor, tmp_path
):
    editor = _EchoEditor(tiny_editor)
    whole = _short_eval(synth_data, editor, tmp_path / "all", ["remove"])["tasks"]["remove"]["examples"]
    part = _short_eval(synth_data, editor, tmp_path / "two", ["remove"], limit=2)["tasks"]["remove"]["examples"]

    def which(clip):
        return clip["song"], clip["offset"], clip["stem"], clip["seed"], clip["identity"]

    assert len(whole) == 3 and [which(c) for c in part] == [which(whole[0]), which(whole[2])]


def test_scoring_in_worker_processes_gives_the_same_report(synth_data, tiny_editor, tmp_path):
    # An editor whose output is its input: a generation on a CPU that busy workers share can round differently
    # (the BLAS picks its threads), and this test is about the scoring, not the model.
    editor = _EchoEditor(tiny_editor)
    here = _short_eval(synth_data, editor, tmp_path / "here", ["remove"], limit=3, batch=2)["tasks"]["remove"]
    pooled = _short_eval(synth_data, editor, tmp_path / "pool", ["remove"], limit=3, batch=2, workers=2)
    pooled = pooled["tasks"]["remove"]
    assert len(pooled["examples"]) == len(here["examples"]) == 3
    for a, b in zip(pooled["examples"], here["examples"], strict=True):
        assert list(a) == list(b)  # the same fields and rows, in the same order
        for key, value in a.items():
            if isinstance(value, dict):  # a row's metrics: the codec ceiling's input is made here, by torch
                assert value == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
            else:
                assert value == b[key], key
    with pytest.raises(ConfigError, match="--workers"):
        evaluate(synth_data, ["extract"], tmp_path, editor=tiny_editor, workers=-1, progress=False)


def test_a_spent_deadline_scores_one_batch_per_task_and_says_so(synth_data, tiny_editor, tmp_path):
    import time

    tasks = ["extract", "remove"]
    report = _short_eval(synth_data, _EchoEditor(tiny_editor), tmp_path, tasks, batch=2, deadline=time.time() - 1.0)
    for part in report["tasks"].values():
        assert part["clips"]["scored"] == 2 < part["clips"]["planned"]
        assert part["summary"]["model"]["n"] == 2
    assert "stopped by the time budget after 2 of" in (tmp_path / "report.md").read_text()


def test_a_task_that_starts_after_its_deadline_scores_one_small_batch(synth_data, tiny_editor, tmp_path, monkeypatch):
    import time

    from engine.eval import evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "LATE_BATCH", 1)
    report = _short_eval(synth_data, _EchoEditor(tiny_editor), tmp_path, ["remove"], batch=2, deadline=time.time() - 1)
    assert report["tasks"]["remove"]["clips"]["scored"] == 1


def test_the_markdown_report_has_a_table_per_task_and_says_what_was_skipped(report_dir):
    text = (report_dir / "report.md").read_text()
    for task in ("extract", "remove", "add"):
        assert f"## {task} (2 clips)" in text
    for row in ("| model |", "| resynth |", "| identity |", "| codec ceiling |", "| ideal mask |", "| oracle |"):
        assert text.count(row) == 3
    assert "ILD err. (dB)" in text
    assert "FAD" in text and "CLAP" in text  # computed, or skipped with a note


def test_spectrograms_are_written_for_the_first_k_clips_of_each_task(report_dir):
    pngs = sorted(p.name for p in (report_dir / "spectrograms").glob("*.png"))
    assert [name.split("_")[0] for name in pngs] == ["add", "extract", "remove"]


def test_markdown_shows_infinite_values_as_infinity():
    row = {"n": 1, "si_sdr": math.inf, "si_sdri": 0.0, "mel_ssim": 1.0, "log_mel_distance": 0.0}
    report = {
        "model": {"model": "m"},
        "data": "d",
        "settings": {"seconds": 5.0},
        "tasks": {"extract": {"summary": {"model": row}}},
    }
    assert "| model | ∞ |" in markdown(report)


def test_an_unknown_task_is_a_config_error_naming_the_tasks(synth_data, tiny_editor, tmp_path):
    with pytest.raises(ConfigError, match="add, remove, extract"):
        evaluate(synth_data, ["separate"], tmp_path, editor=tiny_editor, progress=False)


def test_a_missing_data_folder_is_a_data_error(tiny_editor, tmp_path):
    with pytest.raises(DataError, match="no data set .*: the folder does not exist"):
        evaluate(tmp_path / "missing", ["extract"], tmp_path / "out", editor=tiny_editor, progress=False)
    (tmp_path / "a.wav").write_bytes(b"RIFF")  # a file given as --data was said not to exist
    with pytest.raises(DataError, match="no data set .*a.wav: a file, not a data set's folder"):
        evaluate(tmp_path / "a.wav", ["extract"], tmp_path / "out", editor=tiny_editor, progress=False)


def test_unreadable_stems_and_unusable_test_songs_are_counted_in_the_report(tiny_editor, tmp_path):
    data = tmp_path / "data"
    for split, song in (("train", "a"), ("validation", "b"), ("test", "c")):
        write_folder_song(data / split / song)
    write_folder_song(data / "test" / "solo", classes=("drums",))
    (data / "train" / "a" / "guitar.wav").write_bytes(b"not audio at all")
    report = evaluate(data, ["extract"], tmp_path / "out", editor=_EchoEditor(tiny_editor), seconds=1.0, progress=False)
    part = report["tasks"]["extract"]
    assert part["summary"]["model"]["n"] == 1 and {clip["song"] for clip in part["examples"]} == {"c"}
    assert report["data_problems"] == {"unreadable stem file": 1}
    assert part["skipped_songs"] == [{"song": "solo", "reason": "only 1 stem class(es) usable (Drums)"}]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "1 x unreadable stem file" in text and "1 test song(s) skipped (solo: only 1 stem class" in text


def test_a_test_song_whose_stem_is_silent_is_not_scored_and_the_report_says_so(tiny_editor, tmp_path):
    """Its "extract bass" scored silence against silence (identity SI-SDR -107 dB) into every mean, without a word."""
    data = tmp_path / "data"
    for split, song in (("train", "a"), ("validation", "b"), ("test", "c")):
        write_folder_song(data / split / song)
    write_folder_song(data / "test" / "silent bass", bass_from=None)
    report = evaluate(data, ["extract"], tmp_path / "out", editor=_EchoEditor(tiny_editor), seconds=1.0, progress=False)
    part = report["tasks"]["extract"]
    scored = {(clip["song"], clip["stem"]) for clip in part["examples"]}
    assert ("silent bass", "Bass") not in scored and {song for song, _ in scored} == {"c"}
    assert [(s["song"], s["stem"]) for s in part["skipped"]] == [("silent bass", "Bass")]
    assert "near-silent after" in part["skipped"][0]["reason"]
    assert "clip(s) skipped: near-silent after" in (tmp_path / "out" / "report.md").read_text()


def test_a_data_set_too_small_for_the_split_is_a_data_error_naming_the_need(tiny_editor, tmp_path):
    for song in ("a", "b"):
        write_folder_song(tmp_path / "data" / song)
    with pytest.raises(DataError, match="2 usable song.*at least 3"):
        evaluate(tmp_path / "data", ["remove"], tmp_path / "out", editor=tiny_editor, seconds=1.0, progress=False)


def test_imusic_eval_command_line_reports_an_unknown_task_in_one_line(synth_data, tiny_model_dir, tmp_path, capsys):
    from bridge.cli import main

    argv = ["eval", "--data", str(synth_data), "--model", str(tiny_model_dir), "--task", "separate"]
    assert main([*argv, "-o", str(tmp_path / "out"), "--quiet"]) == 1
    assert "unknown task" in capsys.readouterr().err


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_imusic_eval_refuses_a_seed_the_edits_cannot_take_before_any_work(seed, tmp_path, capsys):
    from bridge.cli import main

    # were the seed let through, --limit 0 would stop the run (exit code 1) before the model loads
    argv = ["eval", "--data", str(tmp_path), "--task", "extract", "--limit", "0", "-o", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        main([*argv, f"--seed={seed}"])
    assert stop.value.code == 2
    assert f"--seed: must be from 0 to {MAX_SEED}, got {seed}" in capsys.readouterr().err


def test_val_curves_compare_runs_in_one_png_and_refuse_an_empty_run(tmp_path):
    from engine.eval.plots import plot_val_curves

    out = plot_val_curves({"a": [(100, 3.6), (200, 3.5)], "b": [(100, 3.7)]}, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one"):
        plot_val_curves({"a": []}, tmp_path / "empty.png")


def test_the_validation_split_scores_other_songs_than_the_test_split(synth_data, tiny_editor, tmp_path):
    kwargs = {"editor": _EchoEditor(tiny_editor), "limit": 2, "seconds": 1.0, "progress": False}
    test = evaluate(synth_data, ["extract"], tmp_path / "test", **kwargs)
    val = evaluate(synth_data, ["extract"], tmp_path / "val", split="validation", **kwargs)
    songs = {name: {e["song"] for e in r["tasks"]["extract"]["examples"]} for name, r in (("t", test), ("v", val))}
    assert songs["t"] and songs["v"] and not songs["t"] & songs["v"]
    assert val["settings"]["split"] == "validation" and "validation split" in markdown(val)
    with pytest.raises(ConfigError, match=f"--split must be one of {', '.join(EVAL_SPLITS)}, got 'train'"):
        evaluate(synth_data, ["extract"], tmp_path / "bad", split="train", **kwargs)


def test_a_data_set_no_stage_trained_on_is_scored_over_all_its_songs(synth_data, tiny_editor, tmp_path):
    """The second test set: its own 80/10/10 split kept 10 of its songs; every one of them is unseen."""
    kwargs = {"editor": _EchoEditor(tiny_editor), "seconds": 1.0, "progress": False, "clips_per_song": 1}
    test = evaluate(synth_data, ["extract"], tmp_path / "test", **kwargs)
    every = evaluate(synth_data, ["extract"], tmp_path / "all", split="all", **kwargs)
    count = {name: len(r["tasks"]["extract"]["examples"]) for name, r in (("test", test), ("all", every))}
    assert count["all"] > count["test"] and "all split" in markdown(every)


def test_imusic_eval_once_writes_a_report_then_leaves_it_alone(synth_data, tiny_model_dir, tmp_path, capsys):
    from bridge.cli import main

    out = tmp_path / "out"
    argv = ["eval", "--once", "--data", str(synth_data), "--model", str(tiny_model_dir), "--task", "extract"]
    argv += ["--limit", "1", "--seconds", "1", "-o", str(out), "--quiet"]
    assert main(argv) == 0
    report = out / "report.md"
    written = report.stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert f"report: {report} (already there)" in capsys.readouterr().err
    assert report.stat().st_mtime_ns == written


def test_a_data_set_that_cannot_be_read_is_named_for_what_is_wrong_not_for_lacking_clips(synth_data, tmp_path):
    import shutil

    from engine.errors import DataError
    from engine.eval.clips import held_out_clips
    from engine.train.data import DATASET_JSON

    data = shutil.copytree(synth_data, tmp_path / "data")
    (data / DATASET_JSON).write_text("{not json")
    with pytest.raises(DataError) as caught:
        held_out_clips(data, "extract", 16000, 1.0, "drums,bass,piano,guitar", 0, 1)
    assert DATASET_JSON in str(caught.value) and "nothing to evaluate" not in str(caught.value)
