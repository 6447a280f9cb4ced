"""When an edit counts as working: it beats leaving the audio unchanged (the identity row of the model's own
evaluation) on the metrics its operation is judged on. The verdict is computed from a report's summary when a model is
assembled, stored in its card (`evaluation.beats_identity`), read back at load, and turned into the note every front
end shows with an edit that does not work yet."""

from __future__ import annotations

import math
from typing import Any

from engine.eval.report import FAILED_EDIT, GRID_ROWS, IDENTITY_ROW, LOWER_IS_BETTER, MODEL_ROW, paired_t_key

# The least |paired t| of a win over a baseline: about a 95 % two-sided test on the clips' differences, roughly
# two standard errors of the mean difference. Over few clips Student's t asks more (min_t): a report cut short by its
# time budget, 3 clips, passed a model no better than the input one time in eleven at 2.0.
MIN_T = 2.0


def min_t(clips: Any) -> float:
    """The least |paired t| of a win over `clips` clips: MIN_T, or Student's two-sided 95 % value where it is larger
    (60 clips or fewer); infinite under 2 clips (no spread to judge by)."""
    if not isinstance(clips, (int, float)) or isinstance(clips, bool) or not clips >= 2:
        return math.inf
    from scipy.stats import t as student

    return max(MIN_T, float(student.ppf(0.975, int(clips) - 1)))


# The metrics each operation is judged on. Add is judged on log-mel distance only: the input already holds
# everything but the new part, so its mel SSIM to the target starts high.
EDIT_BARS: dict[str, tuple[str, ...]] = {
    "extract": ("mel_ssim", "log_mel_distance"),
    "remove": ("mel_ssim", "log_mel_distance"),
    "add": ("log_mel_distance",),
}
METRIC_WORDS = {"mel_ssim": "mel SSIM", "log_mel_distance": "log-mel distance"}


def beats_identity(
    summary: dict[str, Any], row: str = MODEL_ROW, baseline: str = IDENTITY_ROW
) -> dict[str, dict[str, bool]]:
    """Per task, whether `row` (the model's, or e.g. "codec ceiling") beats the identity row (or `baseline`, e.g. the
    level-only row) on mel SSIM (higher) and log-mel distance (lower).

    Tasks or metrics missing from either row, or not a finite number there (null in a report), or measured on fewer
    clips than the row holds (some not finite: `<metric>_nonfinite`), are left out: the card says only what was
    measured, over every clip. A row with clips the model failed to edit (`failed`) wins nothing. Where the report
    holds the row's paired t statistic against the baseline (report.summarize), a win also needs |t| >= min_t(n): a
    mean difference within the clips' own spread (add's -0.24 dB at t -0.4, the model ahead on 33 of 80 clips) is no
    win. Reports from before the statistic: the means alone.
    """
    verdict: dict[str, dict[str, bool]] = {}
    for task, rows in summary.items():
        model, identity = rows.get(row, {}), rows.get(baseline, {})
        one = {}
        for metric in METRIC_WORDS:  # the metrics the bars are judged on
            mine, base = model.get(metric), identity.get(metric)
            if model.get(f"{metric}_nonfinite") or identity.get(f"{metric}_nonfinite"):
                continue
            if isinstance(mine, (int, float)) and isinstance(base, (int, float)) and math.isfinite(mine - base):
                gain = mine - base
                won = bool(gain < 0 if metric in LOWER_IS_BETTER else gain > 0)
                t = model.get(paired_t_key(metric, baseline))
                if isinstance(t, (int, float)) and not isinstance(t, bool):
                    won = won and abs(t) >= min_t(model.get("n"))  # NaN (too few clips to tell) is no win either
                one[metric] = won and not model.get(FAILED_EDIT)  # clips it failed to edit are no win either
        if one:
            verdict[task] = one
    return verdict


def beats_unchanged(summary: dict[str, Any]) -> dict[str, dict[str, bool]]:
    """A model card's verdict (`evaluation.beats_identity`): per task and metric, whether the model beats leaving the
    audio unchanged, at its own level, at any level (the level-only row) and with any noise bed added (the noise
    row), where the report has those rows: an edit that does no more than a fader, or than a little noise, does not
    work. A report with such a row whose figure is missing or not finite does not pass that metric (acceptance says
    "not measured" of it); a report from before a row is judged without it."""
    verdict = beats_identity(summary)
    others = {row: beats_identity(summary, MODEL_ROW, row) for row in GRID_ROWS}

    def beats_the_others(task: str, metric: str) -> bool:
        return all(others[row].get(task, {}).get(metric, False) for row in GRID_ROWS if row in summary.get(task, {}))

    return {
        task: {metric: won and beats_the_others(task, metric) for metric, won in metrics.items()}
        for task, metrics in verdict.items()
    }


def card_verdict(card_data: dict[str, Any] | None) -> dict[str, dict[str, bool]]:
    """The card's `evaluation.beats_identity` ({operation: {metric: bool}}), {} when absent or malformed."""
    evaluation = card_data.get("evaluation") if isinstance(card_data, dict) else None
    verdict = evaluation.get("beats_identity") if isinstance(evaluation, dict) else None
    if not isinstance(verdict, dict):
        return {}
    return {
        str(op): {str(m): won for m, won in metrics.items() if isinstance(won, bool)}
        for op, metrics in verdict.items()
        if isinstance(metrics, dict)
    }


def shortfall_note(name: str, verdicts: dict[str, dict[str, bool]], op: str) -> str:
    """The note for `op` when a card's evaluation says its edits lose to the unchanged input on any metric of
    EDIT_BARS, else "". Read from a loaded ModelCard or, before loading, from model_card.json (batch --dry-run)."""
    verdict = verdicts.get(op) or {}
    losing = [METRIC_WORDS[m] for m in EDIT_BARS.get(op, ()) if verdict.get(m) is False]
    if not losing:
        return ""
    return (
        f"{name}'s own evaluation: its {op} edits do not clearly beat leaving the audio unchanged (or a level change "
        f"of it, or a little noise added) on its held-out test songs ({' and '.join(losing)}); treat this result as a "
        "sketch, not a finished stem"
    )
