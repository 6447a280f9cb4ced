"""The clips an evaluation scores: a data set's held-out songs cut per task (what `imusic eval`, mask tuning and the
codec report read), the tasks' names and checks, and a mono clip made a stereo session."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError, DataError
from engine.instructions import OPERATIONS, edit_pair

TASKS = OPERATIONS  # an evaluation task is an edit operation


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

    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"no data set at {root}: the folder does not exist")
    config = ClipConfig(sample_rate=sample_rate, seconds=seconds, classes=parse_classes(classes), ops=(task,))
    catalog = scan(root, layout)  # a data set that cannot be read says so in its own words
    try:
        return StemDataset(catalog, split, config, seed=seed, clips_per_song=per_song, random_clips=False)
    except DataError as exc:
        raise DataError(f"data set {root} has nothing to evaluate {task} on: {exc}") from None
