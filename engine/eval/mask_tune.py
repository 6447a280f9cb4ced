"""Choosing the mask mode's settings (engine.mask.DEFAULT_SETTINGS) on validation songs, as
docs/embedded_model/mask.md describes:

    python -m engine.eval.mask_tune --data DATA --task remove [--clips-per-song 8] [-o result.json]
    python -m engine.eval.mask_tune --data DATA --task remove --depth [--write-card]   # the card's mask_depth

The model generates once per clip what the Editor's mask mode generates (Editor.generation: a remove's mask is
steered by the extraction of the stem; resynth, raw, seeded by the clip's index as the evaluation seeds it); every
candidate mask is then computed from those outputs, levelled as the Editor levels the mask mode, and scored with the
evaluation's metrics at the data's rate. The objective is the sum of two terms, each mel SSIM - log-mel distance / 100:
the mask from the model's output, and the ideal mask (the same settings applied to the true target), so that the
settings stay able to use a better model's output while they must work with this one. Coordinate descent over the
candidate values of each setting, from the operation's current settings. Only the validation split is read.

`--depth` chooses instead how much of what the mask cuts this model is trusted to cut (MaskSettings.depth, recorded
as the card's `mask_depth`): the depth of DEPTHS whose mask, from the model's output alone, scores best (mel SSIM -
log-mel distance / 100), beside each depth's paired difference from the unchanged input (mean and standard error).
`--write-card` records the chosen depth in the model folder's card (`make model-mask-depth` does so for the embedded
model before its evaluation).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, ImusicError, report_error
from engine.eval.clips import add_clip_arguments
from engine.eval.report import IDEAL_MASK_ROW
from engine.files import write_json_atomic
from engine.mask import DEFAULT_SETTINGS, DEPTH_OPS, MaskSettings
from engine.modes import MASK, RESYNTH
from engine.train.data import CLIP_SECONDS, FOUR_STEMS

CANDIDATES: dict[str, tuple] = {
    "window_s": (0.032, 0.064, 0.128),
    "smooth_s": (0.0, 0.05, 0.1, 0.25),
    "smooth_hz": (0.0, 100.0, 500.0),
    "exponent": (0.125, 0.25, 0.5, 1.0, 2.0),
    "floor": (0.0, 0.05, 0.1, 0.2, 0.35, 0.5),
    "calibrate": (False, True),
}


def model_outputs(
    editor: Any,
    data: str | Path,
    task: str,
    per_song: int,
    seed: int = 0,
    seconds: float = CLIP_SECONDS,
    limit: int | None = None,
    batch: int = 1,
) -> list[tuple]:
    """(input, target, model output) of every validation clip of `task` (at most `limit`, spread over the split), all
    [N] at the data's rate. `batch` > 1 generates that many clips together (Editor.edit_batch: each from its own
    seed, as alone but for rounding; what an accelerator wants)."""
    from engine.eval.clips import clip_seed, held_out_clips, spread_indices
    from engine.instructions import Instruction

    rate = editor.sample_rate
    clips = held_out_clips(data, task, rate, seconds, FOUR_STEMS, seed, per_song, split="validation")
    out = []
    picks = spread_indices(len(clips), len(clips) if limit is None else max(1, limit))
    batch = max(1, batch)
    for start in range(0, len(picks), batch):
        chosen = [(index, clips[index]) for index in picks[start : start + batch]]
        made = [editor.generation(Instruction.for_card(task, c.stem_name, editor.card), MASK)[0] for _, c in chosen]
        results = editor.edit_batch(
            [c.input for _, c in chosen], rate, made, [RESYNTH], seeds=[clip_seed(seed, i) for i, _ in chosen], raw=True
        )
        for (_, clip), result in zip(chosen, results, strict=True):
            out.append((clip.input, clip.target, next(iter(result.values())).audio[0]))
    return out


def score(clips: list[tuple], rate: int, task: str, settings: MaskSettings) -> dict[str, float]:
    """Mean mel SSIM and log-mel distance of the mask from the model's output and of the ideal mask, and the
    objective (their sum of mel SSIM - log-mel distance / 100)."""
    from engine.eval.evaluate import ideal_mask_row
    from engine.eval.metrics import edit_metrics
    from engine.mask import mask_result

    rows: dict[str, list[dict]] = {"mask": [], IDEAL_MASK_ROW: []}
    for source, target, estimate in clips:
        masked, _ = mask_result(source, rate, estimate, rate, task, settings)  # as the Editor finishes it
        rows["mask"].append(edit_metrics(masked[0], source, target, rate))
        ideal = ideal_mask_row(source, target, rate, task, False, settings)
        rows[IDEAL_MASK_ROW].append(edit_metrics(ideal, source, target, rate))
    result: dict[str, float] = {}
    for name, scores in rows.items():
        result[f"{name} mel_ssim"] = float(np.mean([s["mel_ssim"] for s in scores]))
        result[f"{name} log_mel_distance"] = float(np.mean([s["log_mel_distance"] for s in scores]))
    result["objective"] = sum(result[f"{n} mel_ssim"] - result[f"{n} log_mel_distance"] / 100 for n in rows)
    return result


def descend(clips: list[tuple], rate: int, task: str, start: MaskSettings, passes: int = 2, log=print) -> dict:
    """Coordinate descent over CANDIDATES from `start`: each setting in turn takes its best value, others fixed."""
    best, best_score = start, score(clips, rate, task, start)
    log(f"start {asdict(start)}: {best_score['objective']:.4f}")
    tried = {repr(start): best_score}
    for _ in range(passes):
        moved = False
        for name, values in CANDIDATES.items():
            for value in values:
                candidate = replace(best, **{name: value})
                if repr(candidate) not in tried:
                    tried[repr(candidate)] = score(clips, rate, task, candidate)
                    log(f"  {name}={value}: {tried[repr(candidate)]['objective']:.4f}")
                if tried[repr(candidate)]["objective"] > best_score["objective"] + 1e-6:
                    best, best_score, moved = candidate, tried[repr(candidate)], True
        if not moved:
            break
    return {"task": task, "clips": len(clips), "start": asdict(start), "start_score": tried[repr(start)],
            "best": asdict(best), "best_score": best_score}  # fmt: skip


DEPTHS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def _score_at_depth(work: tuple) -> dict[str, float]:
    """One clip's metrics: unchanged (depth None), or its mask at `depth`, as the Editor finishes a mask."""
    from engine.eval.metrics import edit_metrics
    from engine.mask import mask_result

    (source, target, estimate), rate, task, settings, depth = work
    if depth is None:
        return edit_metrics(source, source, target, rate)
    masked = mask_result(source, rate, estimate, rate, task, replace(settings, depth=depth))[0][0]
    return edit_metrics(masked, source, target, rate)


def choose_depth(clips: list[tuple], rate: int, task: str, settings: MaskSettings, workers: int = 0) -> dict[str, Any]:
    """Each depth's mean mel SSIM and log-mel distance from the model's output, and its paired difference from the
    unchanged input (mean, standard error); `chosen`: the depth with the best mel SSIM - log-mel distance / 100.
    `workers`: scoring processes (evaluate.scoring_pool; the same figures to 1e-12: each runs one BLAS thread): 32
    clips at 8 depths are 25 s on one core, which the GPU recipe's eval stage cannot spare."""
    from engine.eval.evaluate import scoring_pool

    work = [(clip, rate, task, settings, depth) for depth in (None, *DEPTHS) for clip in clips]
    pool = scoring_pool(workers)
    try:
        chunk = max(1, len(work) // (4 * workers)) if workers else 1
        scored = list(pool.map(_score_at_depth, work, chunksize=chunk) if pool else map(_score_at_depth, work))
    finally:
        if pool is not None:
            pool.shutdown()
    identity = scored[: len(clips)]
    rows = {}
    for index, depth in enumerate(DEPTHS, start=1):
        scores = scored[index * len(clips) : (index + 1) * len(clips)]
        row: dict[str, Any] = {}
        for metric in ("mel_ssim", "log_mel_distance"):
            change = np.array([s[metric] - i[metric] for s, i in zip(scores, identity, strict=True)])
            spread = float(change.std(ddof=1) / np.sqrt(len(change))) if len(change) > 1 else None
            row[metric] = float(np.mean([s[metric] for s in scores]))
            row[f"{metric} vs identity"] = [float(change.mean()), spread]
        row["objective"] = row["mel_ssim"] - row["log_mel_distance"] / 100
        rows[depth] = row
    chosen = max(rows, key=lambda depth: rows[depth]["objective"])
    return {"task": task, "clips": len(clips), "depths": {str(d): r for d, r in rows.items()}, "chosen": chosen}


def record_depth(model_dir: Path, task: str, depth: float) -> None:
    """Put `depth` for `task` into the model folder's card (`mask_depth`), the rest of the card as it was."""
    from engine.weights.loader import MASK_DEPTH, read_model_card, write_model_card

    card = read_model_card(model_dir)
    card[MASK_DEPTH] = {**dict(card.get(MASK_DEPTH) or {}), task: float(depth)}
    write_model_card(model_dir, card)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.eval.mask_tune", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a stem data set (its validation split is read)")
    parser.add_argument("--task", required=True, choices=sorted(DEFAULT_SETTINGS))
    parser.add_argument("--model", help="model folder (default: the embedded default model)")
    add_clip_arguments(parser, ("clips_per_song", "seconds"), clips_per_song=8)  # as imusic eval's
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument(
        "--depth", action="store_true", help="choose the model's mask depth (its card's mask_depth), not the design"
    )
    parser.add_argument("--write-card", action="store_true", help="with --depth: record it in --model's model card")
    parser.add_argument("-o", "--output", help="write the result as JSON here")
    args = parser.parse_args(argv)
    try:
        from engine.editor import Editor

        if args.depth and args.task not in DEPTH_OPS:
            raise ConfigError(
                f"--depth applies to {' and '.join(DEPTH_OPS)}: {args.task}'s mask keeps the whole original"
            )
        if args.write_card and not (args.depth and args.model):
            raise ConfigError("--write-card needs --depth and the --model folder whose card it goes in")
        editor = Editor.load(args.model, device="cpu")
        clips = model_outputs(editor, args.data, args.task, args.clips_per_song, seconds=args.seconds)
        if args.depth:
            result = choose_depth(clips, editor.sample_rate, args.task, DEFAULT_SETTINGS[args.task])
            if args.write_card:
                record_depth(Path(args.model), args.task, result["chosen"])
        else:
            result = descend(clips, editor.sample_rate, args.task, DEFAULT_SETTINGS[args.task], args.passes)
    except ImusicError as exc:
        return report_error(exc, "python -m engine.eval.mask_tune")
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        write_json_atomic(args.output, result, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
