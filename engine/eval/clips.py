"""The clips an evaluation scores: a data set's held-out songs cut per task (what `imusic eval`, mask tuning and the
codec report read), the tasks' names and checks, and a mono clip made a stereo session."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, DataError
from engine.files import user_path
from engine.instructions import OPERATIONS, edit_pair
from engine.options import seed_option
from engine.train.data import CLASS_SETS, CLIP_SECONDS, FOUR_STEMS, HELD_OUT

TASKS = OPERATIONS  # an evaluation task is an edit operation
# The splits a model is scored on: its held-out songs, or every song of a data set no stage trained on (the second
# test set, rendered with another soundfont)
EVAL_SPLITS = (*HELD_OUT, "all")
# held_out_clips' settings as command-line options (add_clip_arguments), by their argparse names
CLIP_OPTIONS = ("task", "classes", "seconds", "clips_per_song", "seed", "split")


def check_tasks(tasks: Sequence[str], supported: Sequence[str] = TASKS) -> list[str]:
    """The tasks in order without repeats; ConfigError naming what is supported for an unknown one."""
    if not tasks:
        raise ConfigError(f"no task given: use --task with one of {', '.join(TASKS)}")
    out: list[str] = []
    for task in tasks:
        name = str(task).strip().lower()
        if name not in TASKS:
            raise ConfigError(f"unknown task {task!r}: use {', '.join(TASKS)}")
        if name not in supported:
            raise ConfigError(f"this model cannot {name}: it supports {', '.join(supported)}")
        if name not in out:
            out.append(name)
    return out


def clip_seed(seed: int, index: int) -> int:
    """The edit seed of held-out clip `index` in a run seeded `seed` (also its stereo session's pan): the same clip
    gets the same seed in a batched run and one by one, in `imusic eval` and in the mask tuner."""
    return seed + index


def spread_indices(count: int, picks: int) -> list[int]:
    """`picks` indices of range(`count`), evenly spread from the first to the last (rounded to the nearest; all of
    them when `picks` >= `count`): clips are grouped by song, so the first few would all be one song's."""
    if picks >= count:
        return list(range(count))
    if picks < 1:
        return []
    return [int(i) for i in np.linspace(0, count - 1, picks).round()]


def stereo_clip(clip: Any, task: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A mono clip made a stereo session, (input [2, N], target [2, N]): the named stem panned left and the rest
    right (constant power, positions drawn from `seed`), so the target has an image an edit can keep or lose."""
    rng = np.random.default_rng(seed)
    stem_pan, rest_pan = rng.uniform(0.1, 0.45), rng.uniform(0.55, 0.9)  # 0 = left, 1 = right

    def pan(audio: np.ndarray, position: float) -> np.ndarray:
        return np.stack([np.sqrt(1.0 - position) * audio, np.sqrt(position) * audio]).astype(np.float32)

    rest = clip.input if task == "add" else clip.input - clip.stem
    return edit_pair(task, pan(clip.stem, stem_pan), pan(rest, rest_pan))


def held_out_clips(
    data: str | Path,
    task: str,
    sample_rate: int,
    seconds: float,
    classes: str,
    seed: int,
    per_song: int,
    split: str = "test",
    layout: str = "auto",
) -> Any:
    """The clips of `split` for `task` (a StemDataset: len() and indexing), `per_song` from each song, drawn with
    `seed`; DataError naming the folder when there is none or nothing to evaluate. `imusic eval`, the mask tuner,
    the codec report and `imusic data export` all draw their clips here."""
    from engine.train.data.datasets import ClipConfig, StemDataset, parse_classes
    from engine.train.data.layouts import scan

    root = user_path(data)
    if not root.is_dir():
        what = "a file, not a data set's folder" if root.exists() else "the folder does not exist"
        raise DataError(f"no data set at {root}: {what}")
    config = ClipConfig(sample_rate=sample_rate, seconds=seconds, classes=parse_classes(classes), ops=(task,))
    catalog = scan(root, layout)  # a data set that cannot be read says so in its own words
    try:
        return StemDataset(catalog, split, config, seed=seed, clips_per_song=per_song, random_clips=False)
    except DataError as exc:
        raise DataError(f"data set {root} has nothing to evaluate {task} on: {exc}") from None


def add_clip_arguments(
    parser: argparse.ArgumentParser,
    options: Sequence[str] = CLIP_OPTIONS,
    *,
    splits: Sequence[str] = EVAL_SPLITS,
    every_task_by_default: bool = False,
    clips_per_song: int = 1,
) -> None:
    """The options of CLIP_OPTIONS named in `options`, the settings of held_out_clips: written once, so that `imusic
    data export` writes the very clips `imusic eval` scores with the same options, and the mask tuner cuts them alike.

    `splits`: --split's choices (default test). `every_task_by_default`: --task may be left out for all of TASKS and
    is checked here; else it is required and the command checks it against its model (check_tasks, any case).
    `clips_per_song`: --clips-per-song's default."""
    if "task" in options:
        names = f"{', '.join(TASKS[:-1])} or {TASKS[-1]}"
        if every_task_by_default:
            parser.add_argument(
                "--task", action="append", choices=TASKS, help=f"{names}; repeat for several (default: all of them)"
            )
        else:
            parser.add_argument("--task", action="append", required=True, help=f"{names}; repeat for several")
    if "classes" in options:
        parser.add_argument(
            "--classes", default=FOUR_STEMS, help=f"{', '.join(CLASS_SETS)}, or a comma list of stem classes"
        )
    if "seconds" in options:
        parser.add_argument(
            "--seconds", type=float, default=CLIP_SECONDS, help=f"clip length (default {CLIP_SECONDS:g}, as the paper)"
        )
    if "clips_per_song" in options:
        parser.add_argument(
            "--clips-per-song",
            type=int,
            default=clips_per_song,
            help=f"clips per song and task (default {clips_per_song})",
        )
    if "seed" in options:
        parser.add_argument(
            "--seed",
            type=seed_option,
            default=0,
            help="seed of the clip draws, and in imusic eval of the edits (default 0)",
        )
    if "split" in options:
        parser.add_argument(
            "--split", default="test", choices=splits,
            help="songs to draw from (default test; validation: for tuning; all: every song, for a data set no stage "
            "trained on)",
        )  # fmt: skip
