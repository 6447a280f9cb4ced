"""Training checkpoints: atomic writes of everything an exact resume needs, the last few kept, and careful reads."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import CheckpointError
from engine.files import atomic_path

CKPT_FORMAT = "imusic-train-checkpoint"
CKPT_VERSION = 1
CKPT_DIR = "checkpoints"


def rng_state() -> dict:
    """Every random generator a run draws from (Python, numpy, torch, CUDA), for an exact resume."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    # Plain lists and numbers (no numpy arrays), so that checkpoints load with torch.load(weights_only=True).
    numpy_state = [name, key.tolist(), int(pos), int(has_gauss), float(gauss)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_NAME = "step_{:08d}.pt"  # a checkpoint's file name: its step, so that names sort as steps do


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint file holds, from its name (save_checkpoint's)."""
    return int(Path(path).name.split(".")[0].split("_")[-1])


def check_same_data(saved: dict, identity: str, data: Any) -> None:
    """A checkpoint's run must resume on the data it trained on: CheckpointError when `saved` (the checkpoint's
    payload) records another `identity` (a short_digest of its songs or files), a note when it predates the check."""
    import sys

    if "data" not in saved:
        print(
            f"imusic train: the checkpoint of step {saved['step']} predates the data check: whether {data} still "
            "holds what the run trained on is not known",
            file=sys.stderr,
        )
    elif saved["data"] != identity:
        raise CheckpointError(
            f"the data set changed since step {saved['step']} was saved (songs or files added, removed or changed "
            f"in {data}): resuming would not draw what the run drew, nor validate on its songs; use the data it was "
            "trained on, or start a new run"
        )


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CKPT_DIR
    return sorted(folder.glob("step_*.pt")) if folder.is_dir() else []


def save_checkpoint(run_dir: Path, step: int, payload: dict, keep: int) -> Path:
    """Write step_NNNNNNNN.pt atomically (temporary file, then rename) and keep only the last `keep`."""
    folder = Path(run_dir) / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / _NAME.format(step)
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except (OSError, RuntimeError) as exc:  # torch's writer reports a full disk as RuntimeError ("failed writing")
        raise CheckpointError(
            f"could not write the checkpoint {path} ({exc}): is the disk full? The earlier checkpoints are kept; "
            "free space and resume (--resume)"
        ) from None
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def checkpoint_payload(stage: str, step: int, config: dict, **state: Any) -> dict:
    """What every stage's checkpoint holds: the header (format, version, stage, step, the run's config) and its own
    `state` (weights, optimiser, sampler, RNG, ...); load_checkpoint reads it back."""
    return {"format": CKPT_FORMAT, "version": CKPT_VERSION, "stage": stage, "step": step, "config": config, **state}


def load_checkpoint(path: Path, previous: Path | None = None, stage: str | None = None) -> dict:
    """Read a checkpoint; CheckpointError naming the file (and the previous checkpoint to fall back to), or, where
    `stage` is given, naming the stage a checkpoint of another stage belongs to."""
    fallback = (
        f"; the previous checkpoint is {previous}: resume from it with --resume-from {previous}"
        if previous is not None
        else "; no earlier checkpoint is left: start a new run"
    )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/zip error means the same thing to the user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupted or unreadable ({first}){fallback}") from None
    if not isinstance(payload, dict) or payload.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not an imusic training checkpoint{fallback}")
    if stage is not None and payload.get("stage") != stage:
        raise CheckpointError(
            f"{path} is a checkpoint of the {payload.get('stage')} stage, not of the {stage} stage: give --stage "
            f"{payload.get('stage')} to resume it"
        )
    return payload
