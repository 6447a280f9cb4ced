"""engine.eval.acceptance: the shipped model against its bars, from eval reports and measurements here."""

import json

import pytest

from engine.errors import ImusicError
from engine.eval.acceptance import Bar, machine_bars, main, read_summary, report_bars, table


def _row(ssim, lmd):
    return {"n": 4, "mel_ssim": ssim, "log_mel_distance": lmd}


def _summary(extract_model, ceiling_remove):
    identity = _row(0.5, 10.0)
    return {
        "extract": {"model": extract_model, "identity": identity, "codec ceiling": _row(0.6, 5.0)},
        "remove": {"model": _row(0.4, 12.0), "identity": identity, "codec ceiling": ceiling_remove},
        "add": {"model": _row(0.3, 9.0), "identity": identity, "codec ceiling": _row(0.7, 4.0)},
    }


def _report(path, summary, model="tiny-random", **settings):
    report = {
        "model": {"model": model},
        "settings": {"split": "test", "raw": False, "input_gain_db": 0.0, **settings},
        "tasks": {task: {"summary": rows} for task, rows in summary.items()},
    }
    path.write_text(json.dumps(report))
    return path


def test_each_bar_is_judged_from_the_rows():
    bars = {b.name: b for b in report_bars(_summary(_row(0.6, 8.0), _row(0.45, 6.0)), "test")}
    assert bars["test: extract beats identity on mel SSIM and log-mel distance"].met is True
    remove = bars["test: remove beats identity on mel SSIM and log-mel distance"]
    assert remove.met is False and remove.measured == "mel SSIM 0.4 vs 0.5; log-mel distance 12 vs 10 (4 clips)"
    assert bars["test: add beats identity on log-mel distance"].met is True  # add is judged on log-mel distance only
    ceiling = bars["test: codec ceiling beats identity on every task and metric"]
    assert ceiling.met is False and ceiling.measured == "loses on remove mel SSIM"


def test_a_bar_without_its_figures_is_not_measured_rather_than_failed():
    summary = _summary({"n": 4, "mel_ssim": 0.6}, _row(0.6, 6.0))
    summary["add"]["model"]["log_mel_distance"] = None  # null in a report: a metric with no finite value
    bars = {b.name: b for b in report_bars(summary, "t")}
    extract = bars["t: extract beats identity on mel SSIM and log-mel distance"]
    assert extract.met is None and "log-mel distance not measured" in extract.measured
    assert bars["t: add beats identity on log-mel distance"].met is None
    assert bars["t: codec ceiling beats identity on every task and metric"].met is True


def test_figures_an_older_report_wrote_as_text_are_not_measured():
    summary = _summary(_row(0.6, 8.0), _row(0.6, 6.0))
    summary["extract"]["model"]["mel_ssim"] = "nan"  # reports before 2026-12-05 wrote non-finite values as text
    bars = {b.name: b for b in report_bars(summary, "t")}
    extract = bars["t: extract beats identity on mel SSIM and log-mel distance"]
    assert extract.met is None and extract.measured.startswith("mel SSIM not measured")


def test_unreadable_reports_are_named(tmp_path):
    with pytest.raises(ImusicError, match="no such report"):
        read_summary(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"clips": []}')
    with pytest.raises(ImusicError, match="not an imusic eval report"):
        read_summary(tmp_path / "other.json")


def test_the_table_counts_what_is_met():
    text = table([Bar("a", "1", True), Bar("b", "2", False), Bar("c", "-", None)])
    assert "| b | 2 | **no** |" in text and "| c | - | not measured |" in text
    assert text.rstrip().endswith("1 of 3 bars met.")


def test_edit_time_and_size_are_measured_on_the_model(tiny_model_dir):
    timed, size = machine_bars(tiny_model_dir, seconds=1.0, budget_s=1e9, repeats=1, size_limit_mb=40.0)
    assert timed.met is True and "median of 1" in timed.measured
    too_slow, _ = machine_bars(tiny_model_dir, seconds=1.0, budget_s=1e-9, repeats=1)  # every edit takes longer
    assert too_slow.met is False
    assert size.met is True and size.measured.endswith(" MB")
    _, too_big = machine_bars(tiny_model_dir, timing=False, size_limit_mb=1e-6)
    assert too_big.met is False
    with pytest.raises(ImusicError, match="is not a model folder"):  # not "0.0 MB: met"
        machine_bars(tiny_model_dir / "nowhere", timing=False)


def test_command_writes_the_table(tmp_path, tiny_model_dir, capsys):
    report = _report(tmp_path / "report.json", _summary(_row(0.6, 8.0), _row(0.6, 6.0)))
    out = tmp_path / "acceptance.md"
    argv = ["--report", str(report), "--second-report", str(report), "--model", str(tiny_model_dir), "--no-timing"]
    assert main([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    assert "second test set: remove beats identity" in printed and printed.rstrip().endswith("bars met.")
    assert main(["--report", str(tmp_path / "nope.json"), "--no-timing"]) == 1
    assert "no such report" in capsys.readouterr().err


def test_an_edit_that_does_no_more_than_a_fader_fails_the_level_bar_but_passes_the_identity_bar():
    summary = _summary(_row(0.52, 9.5), _row(0.6, 6.0))
    level = {
        "n": 4,
        "mel_ssim": 0.53,
        "mel_ssim_gain_db": -1.0,
        "log_mel_distance": 9.4,
        "log_mel_distance_gain_db": -1.5,
    }
    for task in summary:
        summary[task]["level only"] = level
    bars = {b.name: b for b in report_bars(summary, "t")}
    assert bars["t: extract beats identity on mel SSIM and log-mel distance"].met is True
    fader = bars["t: extract beats a level change on mel SSIM and log-mel distance"]
    assert fader.met is False
    assert fader.measured == "mel SSIM 0.52 vs 0.53 (at -1 dB); log-mel distance 9.5 vs 9.4 (at -1.5 dB) (4 clips)"
    assert "t: add beats a level change on log-mel distance" in bars
    del summary["remove"]["level only"]  # a report from before the row: no level bar for it, nothing failed
    assert not any(name.startswith("t: remove beats a level") for name in (b.name for b in report_bars(summary, "t")))


def test_a_table_path_that_is_not_markdown_is_refused_before_any_work(tmp_path, capsys):
    take = tmp_path / "take.wav"
    take.write_bytes(b"RIFF a producer's take")
    assert main(["--report", str(tmp_path / "missing.json"), "--no-timing", "-o", str(take)]) == 1
    assert "-o writes a .md file" in capsys.readouterr().err and take.read_bytes() == b"RIFF a producer's take"


def _clips(model_lmd, identity_lmd):
    return [
        {"model": {"log_mel_distance": m, "mel_ssim": 0.5}, "identity": {"log_mel_distance": i, "mel_ssim": 0.5}}
        for m, i in zip(model_lmd, identity_lmd, strict=True)
    ]


def test_a_win_within_the_clips_own_spread_is_not_a_win():
    """add's -0.24 dB over 80 clips at paired t -0.4 read as a met bar: a coin flip. Now a win needs |t| >= 2."""
    import numpy as np

    from engine.eval.report import paired_t, paired_t_key, summarize
    from engine.eval.verdict import MIN_T, beats_identity

    rng = np.random.default_rng(0)
    identity = rng.normal(8.5, 3.0, 80)
    noisy = identity + rng.normal(-0.2, 4.0, 80)  # ahead on the mean, within noise
    clear = identity - 0.5 + rng.normal(0.0, 0.2, 80)  # ahead on nearly every clip
    for model, wins in ((noisy, False), (clear, True)):
        summary = summarize(_clips(model, identity))
        t = summary["model"][paired_t_key("log_mel_distance", "identity")]
        assert (abs(t) >= MIN_T) is wins
        verdict = beats_identity({"add": summary})["add"]
        assert verdict["log_mel_distance"] is wins
        bars = report_bars({"add": summary}, "test songs")
        add_bar = next(bar for bar in bars if bar.name == "test songs: add beats identity on log-mel distance")
        assert f"paired t {t:+.1f}" in add_bar.measured and add_bar.met is wins
    assert paired_t([1.0, 2.0], [1.0, 2.0]) == 0.0
    # a t that is not a number (a hand-edited report: true) is no statistic: the means decide, as without one
    means = {"model": {"log_mel_distance": 7.0}, "identity": {"log_mel_distance": 8.0}}
    means["model"][paired_t_key("log_mel_distance", "identity")] = True
    assert beats_identity({"add": means})["add"]["log_mel_distance"] is True
    assert paired_t([2.0, 3.0], [1.0, 2.0]) == float("inf")
    assert np.isnan(paired_t([1.0], [0.0]))


def test_a_report_from_before_the_paired_statistic_is_judged_on_its_means():
    from engine.eval.verdict import beats_identity

    summary = {"add": {"model": _row(0.3, 8.3), "identity": _row(0.3, 8.6)}}
    assert beats_identity(summary)["add"]["log_mel_distance"] is True


def test_an_add_that_only_puts_noise_on_the_input_beats_the_identity_but_not_the_noise_bed():
    """A review found the input plus -65 dBFS white noise beating the identity on add's log-mel distance: near-silent
    bins weigh as much as loud ones there. Such an "add" now meets the noise-bed row, and does not beat it."""
    import numpy as np

    from engine.eval.evaluate import score_rows
    from engine.eval.report import summarize
    from engine.eval.verdict import beats_identity, beats_unchanged

    rate, examples = 16000, []
    t = np.arange(2 * rate) / rate
    for clip in range(12):
        rng = np.random.default_rng(clip)
        mix = sum(0.2 * np.sin(2 * np.pi * f * t) for f in rng.uniform(80, 400, 3)) + 0.003 * rng.standard_normal(
            t.size
        )
        stem = 10 ** (-45 / 20) * rng.standard_normal(t.size)  # a hiss the input lacks
        just_noise = mix + 10 ** (-60 / 20) * np.random.default_rng(100 + clip).standard_normal(t.size)  # too little
        examples.append(score_rows(mix, mix + stem, {"model": just_noise}, rate))
    summary = {"add": summarize(examples)}
    assert beats_identity(summary)["add"]["log_mel_distance"] is True  # the loophole: noise "adds" something
    assert beats_unchanged(summary)["add"]["log_mel_distance"] is False  # closed: no better than a noise bed
    bars = {bar.name: bar for bar in report_bars(summary, "test songs")}
    assert bars["test songs: add beats a noise bed on log-mel distance"].met is False


@pytest.mark.parametrize(
    ("model", "settings", "why"),
    [
        ("tiny-random", {"split": "validation"}, r"its split \('validation'; the bars read test\)"),
        ("another-model", {}, r"its model \('another-model'; the bars read 'tiny-random'\)"),
        ("tiny-random", {"raw": True}, "raw edits"),
        ("tiny-random", {"input_gain_db": -30.0}, "an input gain"),
    ],
)
def test_a_report_of_other_songs_another_model_or_other_inputs_is_refused(
    tmp_path, tiny_model_dir, model, settings, why
):
    """Such a report's figures were published as the model's on its held-out test songs."""
    report = _report(tmp_path / "report.json", _summary(_row(0.6, 8.0), _row(0.6, 6.0)), model, **settings)
    with pytest.raises(ImusicError, match=why):
        read_summary(report, ("test",), "tiny-random")
    argv = ["--report", str(report), "--model", str(tiny_model_dir), "--no-timing"]
    assert main(argv) == 1


def test_the_second_test_set_may_be_a_whole_set_no_stage_trained_on(tmp_path, tiny_model_dir, capsys):
    first = _report(tmp_path / "first.json", _summary(_row(0.6, 8.0), _row(0.6, 6.0)))
    second = _report(tmp_path / "second.json", _summary(_row(0.6, 8.0), _row(0.6, 6.0)), split="all")
    argv = ["--report", str(first), "--second-report", str(second), "--model", str(tiny_model_dir), "--no-timing"]
    assert main(argv) == 0
    with pytest.raises(ImusicError, match="its split"):
        read_summary(second, ("test",))


def test_clips_the_model_failed_to_edit_fail_its_bars_and_are_counted(tmp_path):
    """A NaN output skips its clip; judged on the rest, a model that failed on 30 of 40 clips met every bar."""
    from engine.eval.report import report_summary

    summary = _summary(_row(0.6, 8.0), _row(0.6, 6.0))
    report = json.loads(_report(tmp_path / "r.json", summary).read_text())
    report["tasks"]["add"]["clips"] = {"scored": 4, "planned": 34, "refused": 30, "failed": 30}
    bars = {b.name: b for b in report_bars(report_summary(report), "t")}
    add = bars["t: add beats identity on log-mel distance"]
    assert add.met is False and add.measured.endswith("(4 clips; 30 more the model failed to edit)")
    assert bars["t: extract beats identity on mel SSIM and log-mel distance"].met is True
    assert "failed" not in report["tasks"]["add"]["summary"]["model"]  # the report itself is not changed


def test_a_win_over_few_clips_needs_students_t_not_two():
    from engine.eval.verdict import beats_identity, min_t

    summary = {
        "add": {
            "model": {**_row(0.6, 8.0), "n": 3, "log_mel_distance_t_vs_identity": -2.1},
            "identity": _row(0.5, 10.0),
        }
    }
    assert beats_identity(summary)["add"]["log_mel_distance"] is False  # 3 clips: |t| must reach 4.30
    summary["add"]["model"]["log_mel_distance_t_vs_identity"] = -4.4
    assert beats_identity(summary)["add"]["log_mel_distance"] is True
    assert min_t(80) == 2.0 and min_t(3) == pytest.approx(4.303, abs=1e-3) and min_t(1) == float("inf")


def test_the_report_heading_counts_the_clips_the_model_failed_to_edit(tmp_path):
    from engine.eval.report import markdown

    report = json.loads(_report(tmp_path / "r.json", _summary(_row(0.6, 8.0), _row(0.6, 6.0))).read_text())
    report["tasks"]["add"]["clips"] = {"scored": 4, "planned": 34, "refused": 30, "failed": 30}
    report["data"], report["settings"]["seconds"] = "songs", 5.0
    text = markdown(report)
    assert "## add (4 clips; 30 more the model failed to edit, which fail its bars)" in text
    assert "## extract (4 clips)" in text
