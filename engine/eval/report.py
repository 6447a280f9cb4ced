"""An evaluation's report: its rows and metrics, the summary over clips, the Markdown tables, and copying a finished
report into the docs. `imusic eval` (evaluate.py) fills it; the model card and the acceptance table read it."""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The rows of every task's table, in their order (module docstring of engine/eval/evaluate.py says what each is); a row
# named otherwise is dropped by summarize(), so every writer and reader names them from here.
MODEL_ROW, RESYNTH_ROW, IDENTITY_ROW = "model", "resynth", "identity"
LEVEL_ROW = "level only"  # the identity at the one gain per task and metric that scores best (metrics.level_grid)
NOISE_ROW = "noise bed"  # the identity plus the one noise per task and metric that scores best (metrics.noise_grid)
CEILING_ROW, IDEAL_MASK_ROW, ORACLE_ROW = "codec ceiling", "ideal mask", "oracle"
ROWS = (MODEL_ROW, RESYNTH_ROW, IDENTITY_ROW, LEVEL_ROW, NOISE_ROW, CEILING_ROW, IDEAL_MASK_ROW, ORACLE_ROW)
LEVEL_GRID = "level grid"  # a clip's metrics.level_grid, read by summarize() for LEVEL_ROW and not kept in a report
NOISE_GRID = "noise grid"  # a clip's metrics.noise_grid, for NOISE_ROW, the same way
GRID_ROWS = {LEVEL_ROW: LEVEL_GRID, NOISE_ROW: NOISE_GRID}  # the non-edits an edit must beat besides the identity
METRICS = ("si_sdr", "si_sdri", "mel_ssim", "log_mel_distance", "ild_error")
METRIC_TITLES = {
    "si_sdr": "SI-SDR (dB) ↑",
    "si_sdri": "SI-SDRi (dB) ↑",
    "mel_ssim": "mel SSIM ↑",
    "log_mel_distance": "log-mel dist. (dB) ↓",
    "ild_error": "ILD err. (dB) ↓",
    "fad": "FAD ↓",
    "kl": "KL ↓",
    "clap": "CLAP ↑",
}
LOWER_IS_BETTER = frozenset(m for m, title in METRIC_TITLES.items() if title.endswith("↓"))  # the rest: higher
FAILED_EDIT = "failed"  # a task's clips the model could not edit (a NaN output), on its row and in its clip counts
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
SPECTROGRAMS = "spectrograms"  # the folder of a report's pictures, beside it


def paired_t_key(metric: str, baseline: str) -> str:
    """The summary key of a row's paired t statistic against `baseline` on `metric` (see summarize)."""
    return f"{metric}_t_vs_{baseline}"


def paired_t(values: Any, baseline: Any) -> float:
    """The paired t statistic of values - baseline over the clips where both are finite: the mean difference over
    its standard error. NaN for fewer than 2 such clips; 0 where every difference is 0, +-inf where all are equal
    and not 0."""
    import numpy as np

    differences = np.asarray(values, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    differences = differences[np.isfinite(differences)]
    if differences.size < 2:
        return float("nan")
    mean, spread = float(differences.mean()), float(differences.std(ddof=1))
    if spread == 0.0:
        return 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / (spread / math.sqrt(differences.size))


def summarize(examples: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation per row and metric over the examples' finite values; the clips whose value is not
    finite (NaN from a model that returned none) are counted in `<metric>_nonfinite`, shown in the table, and a row
    with any is judged on no metric (verdict.beats_identity); with the
    examples' level grids, the LEVEL_ROW: per metric, the mean at the gain whose mean scores best, and that gain
    (`<metric>_gain_db`). Every row but the identity also holds its paired t statistic against the identity over the
    same clips (`paired_t_key`), and the model row its paired t against the level-only row at that row's gain: a
    difference of means within the clips' own spread is not a win (verdict.MIN_T)."""
    import numpy as np  # here: the report's names are read by modules that must stay light (the recipe, the loader)

    summary: dict[str, dict[str, float]] = {}
    rows = [row for row in ROWS if any(row in ex for ex in examples)]
    for row in rows:
        stats: dict[str, float] = {"n": sum(1 for ex in examples if row in ex)}
        for metric in METRICS:
            values = np.array([ex[row].get(metric, np.nan) for ex in examples if row in ex], dtype=np.float64)
            finite = values[np.isfinite(values)]
            stats[metric] = float(finite.mean()) if finite.size else float("nan")
            stats[f"{metric}_std"] = float(finite.std()) if finite.size else float("nan")
            if finite.size < values.size:
                stats[f"{metric}_nonfinite"] = int(values.size - finite.size)
        summary[row] = stats
    paired = [ex for ex in examples if IDENTITY_ROW in ex]
    for row in rows:
        if row == IDENTITY_ROW or row in GRID_ROWS or not paired:
            continue
        for metric in METRICS:
            mine = [ex.get(row, {}).get(metric, np.nan) for ex in paired]
            summary[row][paired_t_key(metric, IDENTITY_ROW)] = paired_t(
                mine, [ex[IDENTITY_ROW].get(metric, np.nan) for ex in paired]
            )
    for row, key in GRID_ROWS.items():  # the non-edits an edit must beat, each at its best point of its grid
        with_grid = [ex for ex in examples if key in ex]
        if not with_grid:
            continue
        labels = grid_labels(row)
        stats = {"n": len(with_grid)}
        for metric in with_grid[0][key]:
            values = np.array([ex[key][metric] for ex in with_grid], dtype=np.float64)  # [clips, grid points]
            means = values.mean(axis=0)
            best = int(np.argmin(means) if metric in LOWER_IS_BETTER else np.argmax(means))
            stats[metric], stats[f"{metric}_std"] = float(means[best]), float(values[:, best].std())
            stats[f"{metric}_at"] = labels[best]
            if row == LEVEL_ROW:  # as reports before "_at" name it
                from engine.eval.metrics import LEVEL_GAINS_DB

                stats[f"{metric}_gain_db"] = float(LEVEL_GAINS_DB[best])
            if MODEL_ROW in summary and len(with_grid) == len(examples):  # the model on the very clips of the grid
                mine = [ex.get(MODEL_ROW, {}).get(metric, np.nan) for ex in with_grid]
                summary[MODEL_ROW][paired_t_key(metric, row)] = paired_t(mine, values[:, best])
        summary[row] = stats
    return summary


def grid_labels(row: str) -> list[str]:
    """The points of a grid row's grid, as its summary names the chosen one (`<metric>_at`)."""
    from engine.eval.metrics import LEVEL_GAINS_DB, NOISE_BEDS, noise_label

    if row == LEVEL_ROW:
        return [f"{gain:+g} dB" for gain in LEVEL_GAINS_DB]
    return [noise_label(colour, level) for colour, level in NOISE_BEDS]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def markdown(report: dict) -> str:
    """The report as Markdown: one table per task (model beside identity, codec ceiling, oracle), then notes."""
    info = report["model"]
    lines = [
        "# imusic eval",
        "",
        f"Model **{info.get('model')}** ({info.get('device')}, {info.get('dtype')}); data `{report['data']}`, "
        f"{report['settings'].get('split', 'test')} split, {report['settings']['seconds']:g} s clips"
        + (f", inputs and targets at {gain:+g} dB" if (gain := report["settings"].get("input_gain_db")) else "")
        + "; all metrics at 16 kHz.",
        "",
        "Rows: *model* = the editor's default mode, mask (the model's output steers a time-frequency mask on the "
        "input; add: the input plus the added part alone); *resynth* = the same model and seed re-synthesising the "
        "result (the paper's behaviour); *identity* = output is the input (SI-SDRi 0 by definition); *codec ceiling* "
        "= the target through the model's codec (the best re-synthesis can reach); *ideal mask* = the mask computed "
        "from the true target (the best the mask mode can reach); *oracle* = output is the target; *level only* = "
        "the input at the one gain (-12 to +6 dB) that scores best on each metric over the task's clips: what a fader "
        "alone does, the least an edit must beat; *noise bed* = the input plus the white or pink noise (-80 to -40 "
        "dBFS) that scores best on each metric: what adding noise alone does, which an edit must beat too. "
        "For add and remove the identity is already close on spectral "
        "metrics: judge those against the ceilings; extract must beat identity clearly. ILD err. is the stereo "
        "image's error (0 for mono clips). Log-mel distance floors both spectrograms 80 dB under the target's "
        "loudest bin. Cells are mean ± standard deviation over the clips (not the mean's standard error).",
    ]
    problems = report.get("data_problems") or {}
    if problems:
        counts = ", ".join(f"{count} x {reason}" for reason, count in problems.items())
        lines += ["", f"Stem files skipped while reading the data set: {counts}."]
    for task, part in report["tasks"].items():
        summary = part["summary"]
        extra = [m for m in ("fad", "kl", "clap") if m in summary.get("model", {})]
        columns = [*METRICS, *extra]
        n = int(summary[MODEL_ROW]["n"]) if MODEL_ROW in summary else 0
        failed = (part.get("clips") or {}).get(FAILED_EDIT) or 0
        lost = f"; {failed} more the model failed to edit, which fail its bars" if failed else ""
        lines += ["", f"## {task} ({n} clips{lost})", ""]
        lines.append("| row | " + " | ".join(METRIC_TITLES[m] for m in columns) + " |")
        lines.append("|---|" + "---:|" * len(columns))
        for row in ROWS:
            if row in summary:
                cells = []
                for m in columns:
                    value = summary[row].get(m)
                    std = summary[row].get(f"{m}_std")
                    text = _cell(value)
                    if std is not None and not math.isnan(std) and row != ORACLE_ROW:
                        text += f" ± {_cell(std)}"
                    if bad := summary[row].get(f"{m}_nonfinite"):
                        text += f" ({bad} of {int(summary[row]['n'])} not finite)"
                    cells.append(text)
                lines.append(f"| {row} | " + " | ".join(cells) + " |")
        notes = [f"- {note}" for note in part.get("notes", [])]
        for row in reversed(GRID_ROWS):  # where each non-edit scored best (a report from before "_at": the gain)
            stats = summary.get(row, {})
            points = [
                f"{METRIC_TITLES[m].rsplit(' ', 1)[0]} at "
                + (stats[f"{m}_at"] if f"{m}_at" in stats else f"{stats[f'{m}_gain_db']:+g} dB")
                for m in METRICS if f"{m}_at" in stats or f"{m}_gain_db" in stats
            ]  # fmt: skip
            if points:
                notes.insert(0, f"- {row}: {', '.join(points)}")
        if part.get("skipped"):
            notes.append(f"- {len(part['skipped'])} clip(s) skipped: {part['skipped'][0]['reason']}")
        lines += [""] + notes if notes else []
    return "\n".join(lines) + "\n"


def report_summary(report: dict) -> dict[str, dict]:
    """{task: {row: {metric: value}}}: the summary of each task of an `imusic eval` report (its REPORT_JSON). The
    clips the model failed to edit are counted on its row (`failed`), where the verdicts see them."""
    tasks = report.get("tasks")
    if not isinstance(tasks, dict):
        return {}
    summaries = {}
    for task, part in tasks.items():
        if not isinstance(part, dict):
            continue
        summary = part.get("summary", {})
        clips = part.get("clips") if isinstance(part.get("clips"), dict) else {}
        failed = clips.get(FAILED_EDIT)
        if isinstance(failed, int) and failed > 0 and isinstance(summary.get(MODEL_ROW), dict):
            summary = {**summary, MODEL_ROW: {**summary[MODEL_ROW], FAILED_EDIT: failed}}
        summaries[task] = summary
    return summaries


def publish_report(eval_dir: Path, docs: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy an evaluation's report (.md, .json, .png but the names in `skip`) and its SPECTROGRAMS into `docs`."""
    docs.mkdir(parents=True, exist_ok=True)
    for item in eval_dir.iterdir():
        if item.suffix in (".md", ".json", ".png") and item.name not in skip:
            shutil.copy2(item, docs / item.name)
    if (eval_dir / SPECTROGRAMS).is_dir():
        shutil.copytree(eval_dir / SPECTROGRAMS, docs / SPECTROGRAMS, dirs_exist_ok=True)
