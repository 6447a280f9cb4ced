"""The shipped model against the bars it must meet (issue #16), as one table a user can re-run.

    python -m engine.eval.acceptance --report docs/embedded_model/report.json [--second-report R2.json]
                                     [--model engine/assets/default] [-o acceptance.md] [--no-timing]

Bars, each read off `imusic eval` reports (report.json) or measured here:
- extract and remove: the model's row (the editor's default mode) beats the identity (the input unchanged) on both
  mel SSIM and log-mel distance; add: the model comes closer to the target than the input on log-mel distance;
- the same against a level change alone (the report's "level only" row: the input at the one gain per task and metric
  that scores best), a stricter bar than the issue's: an edit that does no more than a fader does not work;
- the codec ceiling (the target through the model's codec) beats the identity on every task and both metrics;
- the same on a second test set (`--second-report`: other songs, rendered with another soundfont than the model's own
  test songs; `make model-acceptance` uses MuseScore General, which the GPU recipe never trains on);
- a 10 s stereo 44.1 kHz edit on this machine takes at most 5 s (median of `--repeats` edits after one warm-up,
  model already loaded, the editor's default mode);
- the model folder (what the package ships for it) stays under 40 MB.

Prints the table and "N of M bars met"; a bar whose figures are not in the report says so instead of a verdict.
Exit 0 whatever the verdict (this is a measurement), 1 on unreadable input.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ImusicError, report_error
from engine.eval.report import (
    CEILING_ROW,
    FAILED_EDIT,
    IDENTITY_ROW,
    LEVEL_ROW,
    MODEL_ROW,
    NOISE_ROW,
    paired_t_key,
    report_summary,
)
from engine.eval.verdict import EDIT_BARS, METRIC_WORDS, beats_identity
from engine.instructions import timed_instruction

TASKS = tuple(EDIT_BARS)  # extract, remove, add
METRICS = tuple(METRIC_WORDS)  # mel SSIM, log-mel distance
EDIT_SECONDS = 10.0
# A region as a producer sends it: what the timing bars, `imusic bench` and the demo's song are made of
REGION_RATE = 44100
REGION_CHANNELS = 2
EDIT_BUDGET_SECONDS = 5.0
SIZE_LIMIT_MB = 40.0


@dataclass(frozen=True)
class Bar:
    """One bar: what it asks, what was measured, whether it is met (None: not measured)."""

    name: str
    measured: str
    met: bool | None


def read_summary(path: str | Path, splits: Sequence[str] = ("test",), model_name: str | None = None) -> dict[str, Any]:
    """{task: {row: {metric: value}}} of an `imusic eval` report.json: ImusicError naming a missing or other file, or a
    report that is not what the bars read (songs of another split than `splits`, edits of another model than
    `model_name`, raw or re-levelled inputs): its figures would be published as the model's on held-out songs."""
    from engine.files import read_json_object

    missing = f"no such report: {path} (imusic eval writes report.json in its output folder)"
    report = read_json_object(path, missing)
    if not isinstance(report.get("tasks"), dict):
        raise ImusicError(f"{path} is not an imusic eval report (no 'tasks')")
    settings = report.get("settings") if isinstance(report.get("settings"), dict) else {}
    made_by = (report.get("model") or {}).get("model") if isinstance(report.get("model"), dict) else None
    wrong = [
        f"{what} ({found!r}; the bars read {wanted})"
        for what, found, wanted, ok in (
            ("its split", settings.get("split"), " or ".join(splits), settings.get("split") in splits),
            ("its model", made_by, repr(model_name), model_name is None or made_by == model_name),
            ("raw edits", settings.get("raw"), "the editor's own", not settings.get("raw")),
            ("an input gain", settings.get("input_gain_db"), "none", not settings.get("input_gain_db")),
        )
        if not ok
    ]
    if wrong:
        raise ImusicError(f"{path} is not a report these bars can read: " + "; ".join(wrong))
    return report_summary(report)


def _card_name(model: Path) -> str | None:
    """The name on a model folder's card (what its reports say made them), None where it has none."""
    from engine.weights import peek_card

    name = (peek_card(model) or {}).get("name")
    return name if isinstance(name, str) else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pair(rows: dict[str, Any], row: str, metric: str, baseline: str = IDENTITY_ROW) -> str:
    mine, base = rows.get(row, {}).get(metric), rows.get(baseline, {}).get(metric)
    if not (_finite(mine) and _finite(base)):  # missing, null, or "nan" as older reports wrote it
        return f"{METRIC_WORDS[metric]} not measured"
    gain = rows.get(baseline, {}).get(f"{metric}_gain_db")
    at = rows.get(baseline, {}).get(f"{metric}_at") or (f"{gain:+g} dB" if _finite(gain) else "")
    t = rows.get(row, {}).get(paired_t_key(metric, baseline))
    return (
        f"{METRIC_WORDS[metric]} {mine:.4g} vs {base:.4g}"
        + (f" (at {at})" if at else "")
        + (f", paired t {t:+.1f}" if _finite(t) else "")
    )


def report_bars(summary: dict[str, Any], label: str) -> list[Bar]:
    """The model and codec-ceiling bars of one test set."""

    model, ceiling = beats_identity(summary, MODEL_ROW), beats_identity(summary, CEILING_ROW)
    fader, noise = beats_identity(summary, MODEL_ROW, LEVEL_ROW), beats_identity(summary, MODEL_ROW, NOISE_ROW)
    baselines = (
        (IDENTITY_ROW, model, "identity"),
        (LEVEL_ROW, fader, "a level change"),
        (NOISE_ROW, noise, "a noise bed"),
    )
    bars = []
    for task in TASKS:
        metrics = EDIT_BARS[task]  # what counts as working, the rule the editor's own notes use
        what = " and ".join(METRIC_WORDS[m] for m in metrics)
        clips = summary.get(task, {}).get("model", {}).get("n")
        failed = summary.get(task, {}).get("model", {}).get(FAILED_EDIT)
        parts = [f"{int(clips)} clips"] if _finite(clips) else []  # a run cut by its time budget scores fewer
        parts += [f"{int(failed)} more the model failed to edit"] if failed else []
        counted = f" ({'; '.join(parts)})" if parts else ""
        for baseline, verdict, words in baselines:
            if baseline != IDENTITY_ROW and summary.get(task) and baseline not in summary[task]:
                continue  # a report from before the row
            verdicts = [verdict.get(task, {}).get(m) for m in metrics]
            measured = "; ".join(_pair(summary.get(task, {}), "model", m, baseline) for m in metrics) + counted
            bars.append(Bar(f"{label}: {task} beats {words} on {what}", measured, _all(verdicts)))
    checks = {f"{task} {METRIC_WORDS[m]}": ceiling.get(task, {}).get(m) for task in TASKS for m in METRICS}
    losing = [name for name, won in checks.items() if won is False]
    unmeasured = [name for name, won in checks.items() if won is None]
    measured = "wins on all"
    if losing or unmeasured:
        measured = f"loses on {', '.join(losing)}" if losing else f"not measured: {', '.join(unmeasured)}"
    bars.append(Bar(f"{label}: codec ceiling beats identity on every task and metric", measured, _all(checks.values())))
    return bars


def _all(verdicts: Iterable[bool | None]) -> bool | None:
    """False when any verdict is False, None when any is missing, else True."""
    verdicts = list(verdicts)
    return False if False in verdicts else None if None in verdicts else True


def sample_region(seconds: float, rate: int = REGION_RATE, channels: int = REGION_CHANNELS) -> Any:
    """A region as a producer sends it, [C, N] float32: a few notes and a noise hat, each channel a little apart (what
    the timing bars and `imusic bench engine` edit)."""
    import numpy as np

    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(0)
    tones = sum(0.1 * np.sin(2 * np.pi * f * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) for f in (110.0, 220.0, 330.0))
    hat = 0.05 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 4 * t) > 0.9)
    return np.stack([(1 - 0.2 * c) * tones + (1 + 0.2 * c) * hat for c in range(channels)]).astype(np.float32)


def time_edits(
    model: str | Path | None, seconds: float = EDIT_SECONDS, repeats: int = 3, instruction: str = ""
) -> dict[str, Any]:
    """Median wall time of `repeats` edits of a `seconds`-long producer's region (sample_region) after one warm-up
    edit; the edit is the one a first hotkey most likely sends (typical_instruction) unless given."""
    import torch

    from engine.editor import Editor

    editor = Editor.load(model)
    instruction = timed_instruction(editor, instruction)
    audio = sample_region(seconds)
    editor.edit(audio, REGION_RATE, instruction, seed=0)  # warm-up: first-call costs are not what a hotkey waits for
    times = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        editor.edit(audio, REGION_RATE, instruction, seed=seed)
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "threads": torch.get_num_threads(),
        "edit": instruction,
    }


def folder_megabytes(path: str | Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 1e6


def machine_bars(
    model: str | Path,
    *,
    timing: bool = True,
    seconds: float = EDIT_SECONDS,
    budget_s: float = EDIT_BUDGET_SECONDS,
    repeats: int = 3,
    size_limit_mb: float = SIZE_LIMIT_MB,
) -> list[Bar]:
    """The edit-time and size bars of the model folder `model` (ImusicError when it is not one)."""
    from engine.weights.loader import is_model_dir

    if not is_model_dir(Path(model)):
        raise ImusicError(f"{model} is not a model folder (model_card.json, base/, adapter/): nothing to time or size")
    bars = []
    if timing:
        timed = time_edits(model, seconds, repeats)
        bars.append(
            Bar(
                f"a {seconds:g} s edit takes at most {budget_s:g} s here",
                f"{timed['median_s']:.2f} s (median of {repeats}, {timed['threads']} threads, {timed['edit']})",
                timed["median_s"] <= budget_s,
            )
        )
    else:
        bars.append(Bar(f"a {seconds:g} s edit takes at most {budget_s:g} s here", "not timed (--no-timing)", None))
    size = folder_megabytes(model)
    bars.append(Bar(f"the model folder is under {size_limit_mb:g} MB", f"{size:.1f} MB", size < size_limit_mb))
    return bars


def table(bars: Sequence[Bar]) -> str:
    mark = {True: "yes", False: "**no**", None: "not measured"}
    lines = ["| bar | measured | met |", "|---|---|---|"]
    lines += [f"| {b.name} | {b.measured} | {mark[b.met]} |" for b in bars]
    met = sum(b.met is True for b in bars)
    return "\n".join(lines) + f"\n\n{met} of {len(bars)} bars met.\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.eval.acceptance", description=__doc__.splitlines()[0])
    parser.add_argument("--report", required=True, help="report.json of `imusic eval` on the held-out test songs")
    parser.add_argument("--second-report", help="report.json on a second test set (songs of another soundfont)")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded default model)")
    parser.add_argument("--no-timing", action="store_true", help="skip the edit-time bar (no model load)")
    parser.add_argument("--repeats", type=int, default=3, help="timed edits after the warm-up (default 3)")
    parser.add_argument("-o", "--output", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    try:
        from engine.files import report_path
        from engine.weights.loader import default_model_dir

        output = report_path(args.output, ".md", "-o") if args.output else None  # before the timed edits

        model = Path(args.model) if args.model else default_model_dir()
        name = _card_name(model)
        bars = report_bars(read_summary(args.report, ("test",), name), "test songs")
        if args.second_report:  # a set of songs no stage trained on: every song of it (split all) is held out
            bars += report_bars(read_summary(args.second_report, ("test", "all"), name), "second test set")
        else:
            bars.append(Bar("second test set: the same bars", "no --second-report given", None))
        bars += machine_bars(model, timing=not args.no_timing, repeats=args.repeats)
    except ImusicError as exc:
        return report_error(exc, "python -m engine.eval.acceptance")
    text = table(bars)
    print(text, end="")
    if output is not None:
        from engine.files import write_bytes_atomic

        write_bytes_atomic(output, text.encode("utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
