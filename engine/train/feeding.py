"""What the loop trains on, in a reproducible order: the batch sampler, the clip feeder, and the code pool.

The sampler's state (epoch, position) is all a checkpoint needs to draw exactly the batches an uninterrupted run would.
Where the codec costs as much as the model (a small model on a CPU), `--pool N` draws N epochs of training clips once,
encodes them once (saved in the run folder) and trains over that fixed pool instead.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from engine.errors import CheckpointError
from engine.files import atomic_path
from engine.train.stages import Encoded, Stage

# A worker that has not handed over a batch in this long is stuck (workers fork from a process holding a CUDA context
# and threads; reading one batch of clips takes about a second): the loader is dropped and the rest is read in this
# process (_Reader), slower but not a stage lost, nor a run that hangs until the device command is killed.
LOADER_TIMEOUT_S = 30.0


class BatchSampler:
    """Deterministic stream of item indices: epoch e is a permutation seeded by (seed, e). State = (epoch, position),
    so a resumed run draws exactly the batches an uninterrupted one would."""

    def __init__(self, size: int, seed: int, epoch: int = 0, position: int = 0) -> None:
        self.size, self.seed, self.epoch, self.position = size, seed, epoch, position
        self._order = np.random.default_rng([seed, epoch]).permutation(size)

    def next_keys(self, count: int) -> list[tuple[int, int]]:
        """The next `count` items as (epoch, index): the epoch decides a training clip's random draw."""
        out = []
        while len(out) < count:
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
            out.append((self.epoch, int(self._order[self.position])))
            self.position += 1
        return out

    def copy(self) -> BatchSampler:
        return BatchSampler(self.size, self.seed, self.epoch, self.position)

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "size": self.size, "seed": self.seed}


class Keyed:
    """A data set addressed by (epoch, index): loader workers hold copies, so the epoch travels with each request."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)
        return key, self.data[index]


def _drop(batches: Any) -> None:
    """Shut a DataLoader iterator with stuck workers down at once: taken off the SIGCHLD watch (which would call their
    deaths an error), killed, then closed; a polite shutdown waits 5 s for each worker. Private parts of torch's
    loader, so every step may fail and leaves the polite way."""
    with contextlib.suppress(Exception):
        from torch.utils.data._utils import signal_handling

        if getattr(batches, "_worker_pids_set", False):
            signal_handling._remove_worker_pids(id(batches))
            batches._worker_pids_set = False
        for worker in batches._workers:
            worker.kill()
        for worker in batches._workers:
            worker.join(timeout=5)
    with contextlib.suppress(Exception):
        batches._shutdown_workers()


class _Reader:
    """Batches of (key, item) for the keys asked, in order: from a DataLoader's workers reading ahead, or here (no
    loader, or one dropped after LOADER_TIMEOUT_S of silence, said once in the log)."""

    def __init__(self, keyed: Keyed, loader: DataLoader | None, what: str) -> None:
        self.keyed, self.what = keyed, what
        self._batches = None if loader is None else iter(loader)

    def read(self, keys: list[tuple[int, int]]) -> list:
        if self._batches is not None:
            try:
                pairs = next(self._batches)
            except RuntimeError as exc:
                if "timed out" not in str(exc):
                    raise
                print(
                    f"{self.what}: no batch from the reading processes in {LOADER_TIMEOUT_S:g} s (stuck); reading "
                    "in this process from here on",
                    file=sys.stderr,
                )
                _drop(self._batches)
                self._batches = None
            else:
                if [tuple(key) for key, _ in pairs] != keys:
                    raise RuntimeError(f"internal error: the {self.what} ran out of step with its keys")
                return pairs
        return [self.keyed[key] for key in keys]


class _KeyBatches:
    """Endless micro-batches of keys for a DataLoader (a copy of the run's sampler, running ahead of it)."""

    def __init__(self, sampler: BatchSampler, batch: int) -> None:
        self.sampler, self.batch = sampler, batch

    def __iter__(self):
        while True:
            yield self.sampler.next_keys(self.batch)


class ClipFeeder:
    """Micro-batches of clips in sampler order. With workers, clips are decoded ahead in other processes (audio
    decoding and resampling would otherwise stall a GPU); the run's own sampler still advances one batch at a time,
    so checkpoints record exactly what was trained on."""

    def __init__(self, data, sampler: BatchSampler, batch: int, workers: int = 0, seed: int = 0) -> None:
        self.sampler, self.batch = sampler, batch
        keyed, loader = Keyed(data), None
        if workers > 0:
            loader = DataLoader(
                keyed,
                batch_sampler=_KeyBatches(sampler.copy(), batch),
                num_workers=workers,
                collate_fn=list,
                timeout=LOADER_TIMEOUT_S,
                # Worker seeds from their own generator: the run's torch RNG stream stays as without workers.
                generator=torch.Generator().manual_seed(seed),
            )
        self._reader = _Reader(keyed, loader, "clip loader")

    def next(self) -> list:
        return [item for _, item in self._reader.read(self.sampler.next_keys(self.batch))]


POOL_FILE = "code_pool.pt"
# The settings a pool's content depends on (the draws and the frozen codec): a run that changes only the optimizer
# (lr, steps, warm-up, ...) may start from a copy of another run's pool.
POOL_KEY = ("data", "base", "stage", "seconds", "classes", "seed", "batch", "accum", "pool")


class CodePool:
    """Training clips encoded once: `epochs` epochs of the data set's random draws, in draw order.

    Saved as `code_pool.pt` in the run folder (int16 codes) so that a resumed run trains on the same pool without
    encoding it again; a pool made from other settings is refused rather than silently reused."""

    def __init__(self, records: list[Encoded]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Encoded:
        return self.records[index]

    @classmethod
    def build(
        cls, stage: Stage, data: Any, epochs: int, run_dir: Path, batch: int, key: dict, log: bool, workers: int = 0
    ) -> CodePool:
        """The pool of `run_dir`, or a new one: `epochs` epochs of `data` read in order (by `workers` processes
        when > 0: every item is seeded by its (epoch, index), so the pool is the same for any count) and encoded a
        batch at a time in this process."""
        path = Path(run_dir) / POOL_FILE
        if path.is_file():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unpickling/zip error means the same thing to the user
                raise CheckpointError(f"code pool {path} is unreadable ({exc}); delete it to encode it again") from None
            # a pool from before the data check has no "songs": its other settings decide (as its checkpoints hold no
            # data identity either)
            known = key if "songs" in saved.get("key", {}) else {k: v for k, v in key.items() if k != "songs"}
            if saved.get("key") != known:
                raise CheckpointError(f"code pool {path} was made with other settings; delete it to encode it again")
            conds = saved["cond"] if saved["cond"] is not None else [None] * len(saved["texts"])
            return cls([Encoded(c, cond, t) for c, cond, t in zip(saved["codes"], conds, saved["texts"], strict=True)])
        total = epochs * len(data)
        started = time.perf_counter()
        keyed = Keyed(data)
        batches = [
            [(epoch, i) for i in range(start, min(len(data), start + batch))]
            for epoch in range(epochs)
            for start in range(0, len(data), batch)
        ]
        loader = None
        if workers > 0:  # clips decoded in other processes while this one encodes (on a GPU, reading is the cost)
            loader = DataLoader(
                keyed, batch_sampler=batches, num_workers=workers, collate_fn=list, timeout=LOADER_TIMEOUT_S
            )
        clips = _Reader(keyed, loader, "code pool's clip loader")
        records: list[Encoded] = []
        for keys in batches:
            pairs = clips.read(keys)
            for r in stage.encode([item for _, item in pairs]):  # int16: a pool of thousands of clips stays a few MB
                records.append(Encoded(r.codes.short(), None if r.cond is None else r.cond.short(), r.text))
            if log and keys[-1][1] == len(data) - 1:  # an epoch's last batch
                print(f"code pool: {len(records)}/{total} clips encoded", file=sys.stderr)
        conds = None if records[0].cond is None else torch.stack([r.cond for r in records])
        payload = {"key": key, "codes": torch.stack([r.codes for r in records]), "cond": conds}
        payload["texts"] = [r.text for r in records]
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        # one line even when quiet: on a time budget the pool's cost comes out of the stage's share (the recipe's log)
        seconds = time.perf_counter() - started
        print(f"code pool: {len(records)} clips encoded in {seconds:.1f} s ({workers} readers)", file=sys.stderr)
        return cls(records)
