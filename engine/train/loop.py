"""The training loop of `imusic train`: one generic loop drives a stage (stages.py) looked up by name in `STAGES`.

AdamW, warm-up + cosine, gradient accumulation, clipping, mixed precision on GPU, atomic checkpoints with exact
resume (checkpoints.py), validation loss and a PNG of the curves. `register_stage` adds a stage. (`--stage codec`
runs its own loop: codec_train.py.)
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from engine.device import training_device, usable_cores
from engine.errors import CheckpointError, ConfigError, DataError
from engine.eval.clips import spread_indices
from engine.eval.plots import plot_curves
from engine.files import short_digest, user_path, write_json_atomic
from engine.train.adapters import AdapterStage
from engine.train.base import BaseStage
from engine.train.checkpoints import (
    CKPT_DIR,
    check_same_data,
    checkpoint_payload,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from engine.train.config import (
    CURVES,
    HISTORY,
    LOOP_STAGES,
    MAX_AUTO_WORKERS,
    RESUME_CHANGES,
    TrainConfig,
    lr_factor,
    precision,
    read_history,
)
from engine.train.feeding import POOL_KEY, BatchSampler, ClipFeeder, CodePool, Keyed
from engine.train.stages import Encoded, Stage

STAGES: dict[str, Callable[[TrainConfig, Any], Stage]] = dict(zip(LOOP_STAGES, (AdapterStage, BaseStage), strict=True))


def register_stage(name: str, factory: Callable[[TrainConfig, Any], Stage]) -> None:
    """Make `imusic train --stage NAME` build its stage with `factory(config, device)`."""
    STAGES[name] = factory


@dataclass
class RunResult:
    step: int
    history: dict
    outputs: dict[str, str]
    run_dir: Path


class Trainer:
    """One session of a run: the optimizer, schedule, scaler, sampler and history around a stage, and what a step, a
    validation pass and a checkpoint do with them. `train` builds one, restores or prepares it, then calls `run`."""

    def __init__(self, cfg: TrainConfig, stage: Stage, device: torch.device, train_data, val_data, run_dir: Path):
        self.cfg, self.stage, self.device, self.run_dir = cfg, stage, device, run_dir
        self.train_data, self.val_data = train_data, val_data
        self._val_batches: list | None = None  # the validation clips through the frozen codec, once per run
        self.autocast_dtype, self.use_scaler = precision(cfg, device)
        self.params = stage.parameters()
        if not self.params:
            raise ConfigError(f"stage {cfg.stage} has no trainable parameters")
        groups: list[dict] = [{"params": self.params}]
        if cfg.gate_lr:  # the scalar gates in a group of their own (no weight decay), on the same schedule
            gate_ids = {id(p) for n, p in stage.module.named_parameters() if n.endswith("fusion.gates")}
            groups = [{"params": [p for p in self.params if id(p) not in gate_ids]}]
            gates = [p for p in self.params if id(p) in gate_ids]
            groups.append({"params": gates, "lr": cfg.gate_lr, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)  # default betas, official
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup, cfg.steps)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_scaler)
        self.sampler = BatchSampler(len(train_data), cfg.seed)
        self.history: dict[str, Any] = {"train": [], "val": [], "lr": []}
        # keep_best: (step, validation loss, trained tensors on the CPU) of the best validation so far in the run
        # (kept in every checkpoint: a run resumed after its last one still exports its best weights)
        self.best: tuple[int, float, dict] | None = None
        self.step = 0
        self.wall_before = 0.0  # wall time of the run's earlier sessions
        # Steps whose loss is still on the device: read in one wait every log, validation or checkpoint step
        # (read_losses), not at every step (a wait for the accelerator stalls the queue of work behind it).
        self.unread: list[tuple[int, torch.Tensor]] = []

    def restore(self, payload: dict) -> None:
        """Continue from a checkpoint: trained tensors, optimizer, schedule, scaler, sampler, history, RNG."""
        self.stage.load_trainable_state(payload["trainable"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        # The saved rate is the old schedule's: a run resumed with more --steps took its first step at it (0 where the
        # old run had ended). LambdaLR's own rule, at the step reached, on this run's schedule (the same value when
        # nothing changed).
        for group, base, factor in zip(
            self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        sampled = payload["sampler"]
        if sampled.get("size", len(self.train_data)) != len(self.train_data):
            raise CheckpointError(
                f"the training data changed since step {payload['step']} was saved ({sampled['size']} items then, "
                f"{len(self.train_data)} now): resuming would not draw the batches the run drew; use the data it was "
                "trained on, or start a new run"
            )
        self.sampler = BatchSampler(len(self.train_data), self.cfg.seed, sampled["epoch"], sampled["position"])
        if payload.get("best") is not None:
            best = payload["best"]
            self.best = (int(best["step"]), float(best["val"]), best["trainable"])
        self.history = payload["history"]
        self.step = int(payload["step"])
        self.wall_before = float(self.history.get("wall_seconds", 0.0))
        set_rng_state(payload["rng"])

    def prepare(self) -> None:
        """A fresh run's one-off start (the adapters' prefix alignment), on batches of its own sampler."""
        cfg = self.cfg
        align_sampler, keyed = BatchSampler(len(self.train_data), cfg.seed + 1), Keyed(self.train_data)

        def align_batch() -> list[Encoded]:
            items = [keyed[key][1] for key in align_sampler.next_keys(cfg.batch)]
            return items if cfg.pool else self.stage.encode(items)

        prepared = self.stage.prepare(align_batch)
        if prepared is not None:
            self.history["prepare"] = prepared

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, feeder: ClipFeeder) -> None:
        """One optimizer step over `accum` micro-batches; its mean loss stays on the device until read_losses."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = None
        for _ in range(cfg.accum):
            items = feeder.next()
            with self.autocast():
                loss = self.stage.loss(items)
            self.scaler.scale(loss / cfg.accum).backward()
            part = loss.detach().float() / cfg.accum
            step_loss = part if step_loss is None else step_loss + part
        self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.history["lr"].append((self.step, self.optimizer.param_groups[0]["lr"]))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.unread.append((self.step, step_loss))

    def read_losses(self) -> float:
        """The unread steps' losses into the history, in one wait for the device; returns the last step's. DataError at
        the first one that is not finite (NonFiniteLoss): the run stops before it validates or checkpoints weights
        trained on it."""
        if self.unread:
            steps = [step for step, _ in self.unread]
            values = torch.stack([loss for _, loss in self.unread]).tolist()
            self.unread = []
            for step, value in zip(steps, values, strict=True):
                if not math.isfinite(value):
                    raise NonFiniteLoss(step, value)
                self.history["train"].append((step, value))
        return self.history["train"][-1][1]

    def validation_loss(self) -> float | None:
        cfg, val_data = self.cfg, self.val_data
        if val_data is None or cfg.val_clips == 0:
            return None
        self.stage.module.eval()
        total, count = 0.0, 0
        with torch.no_grad(), self.autocast():
            if self._val_batches is None:  # the same clips every time: read and encoded once (every 250 steps, the
                # codec's encoding of 64 clips took a share of a short GPU stage)
                chosen = spread_indices(len(val_data), cfg.val_clips)
                self._val_batches = [
                    self.stage.encode([val_data[i] for i in chosen[start : start + cfg.batch]])
                    for start in range(0, len(chosen), cfg.batch)
                ]
            for records in self._val_batches:
                total += float(self.stage.loss_codes(records)) * len(records)
                count += len(records)
        self.stage.module.train()
        return total / count

    data_identity = ""  # data_identity of the run's training and validation songs (train sets it)

    def checkpoint(self, started: float) -> Path:
        # Wall time of the whole run, summed over its sessions (a resumed run adds its own).
        self.history["wall_seconds"] = self.wall_before + (time.monotonic() - started)
        state = checkpoint_payload(
            self.cfg.stage,
            self.step,
            asdict(self.cfg),
            trainable=self.stage.trainable_state(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.use_scaler else None,
            sampler=self.sampler.state(),
            rng=rng_state(),
            history=self.history,
            best=None if self.best is None else dict(zip(("step", "val", "trainable"), self.best, strict=True)),
            data=self.data_identity,
        )
        return save_checkpoint(self.run_dir, self.step, state, self.cfg.keep)

    def write_history(self) -> None:
        cfg, history = self.cfg, self.history
        write_json_atomic(self.run_dir / HISTORY, {"config": asdict(cfg), **history}, sort_keys=False)
        plot_curves(history["train"], self.run_dir / CURVES, val=history["val"], lr=history["lr"], title=cfg.stage)

    def run(self, feeder: ClipFeeder, last: int, started: float, progress: bool, budget: Any = None) -> None:
        """Steps up to `last`: validation every val_every, checkpoint and curves every ckpt_every and at the end.
        `budget` (budget.StepBudget) shortens cfg.steps, the cosine's end, so that the run ends by its deadline."""
        cfg, history = self.cfg, self.history
        bar = None
        # A live bar on a terminal; plain lines every log_every steps in a log file (nohup, cluster jobs).
        log_lines = progress and not sys.stderr.isatty()
        if progress and not log_lines:
            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.stage}", unit="step", dynamic_ncols=True)
        if self.step == 0 and cfg.keep_best and self.stage.untrained_is_usable and self.best is None:
            val = self.validation_loss()  # the clips are encoded now, as the first validation would
            if val is not None and math.isfinite(val):
                history["val"].append((0, val))
                self.best = (0, val, {name: t.cpu() for name, t in self.stage.trainable_state().items()})
        try:
            while self.step < last:
                self.train_step(feeder)
                step = self.step
                if budget is not None:
                    cfg.steps = budget.fit(step, cfg.steps)
                    last = min(last, cfg.steps)
                if bar is not None:
                    bar.update(1)
                validate = step % cfg.val_every == 0 or step == cfg.steps
                save = step % cfg.ckpt_every == 0 or step == last
                if not (validate or save or step % cfg.log_every == 0):
                    continue
                try:
                    step_loss = self.read_losses()
                    val = self.validation_loss() if validate else None
                    if val is not None and not math.isfinite(val):  # weights can break on a finite training loss
                        raise NonFiniteLoss(step, val, "validation loss")
                except NonFiniteLoss as exc:
                    if self.best is None:
                        raise
                    # keep_best holds weights from before it: the run ends here and exports those (a recipe's next
                    # stage still gets a model), never the weights trained on the non-finite loss
                    print(f"imusic train: {exc}; the run ends and exports its best validation weights "
                          f"(step {self.best[0]})", file=sys.stderr)  # fmt: skip
                    history["diverged_at"] = exc.step
                    cfg.steps = step
                    break
                if bar is not None:
                    bar.set_postfix(loss=f"{step_loss:.4f}")
                if val is not None:
                    history["val"].append((step, val))
                    if cfg.keep_best and (self.best is None or val < self.best[1]):
                        state = {name: t.cpu() for name, t in self.stage.trainable_state().items()}
                        self.best = (step, val, state)
                    if bar is not None:
                        bar.set_postfix(loss=f"{step_loss:.4f}", val=f"{val:.4f}")
                if log_lines and (step % cfg.log_every == 0 or step == last):
                    val_text = f" val {history['val'][-1][1]:.4f}" if history["val"] else ""
                    lr_now = history["lr"][-1][1]
                    print(f"step {step}/{cfg.steps} loss {step_loss:.4f}{val_text} lr {lr_now:.3g}", file=sys.stderr)
                if save:
                    self.checkpoint(started)
                    self.write_history()
        finally:
            if bar is not None:
                bar.close()


class NonFiniteLoss(DataError):
    """A training or validation loss that is not finite (read_losses, Trainer.run)."""

    def __init__(self, step: int, value: float, what: str = "loss") -> None:
        super().__init__(f"the {what} became {value} at step {step}: lower --lr or check the data")
        self.step = step


def data_identity(*datasets: Any) -> str:
    """What a run's songs are, as a short hash: each song's id and its stems' names, lengths and rates (read from the
    scan, no audio; independent of where the data set lies). A resumed run must find the same."""
    return short_digest(
        [
            (plan.song.song_id, sorted((stem.name, stem.frames, stem.sample_rate) for stem in plan.song.stems))
            for data in datasets
            if data is not None
            for plan in data.plans
        ]
    )


ABANDONED = ".abandoned"


def _set_aside_later(run_dir: Path, step: int) -> None:
    """Checkpoints after `step`, the one --resume-from goes back to, are another timeline's: renamed `*.abandoned`
    (kept, but no --resume picks them). Left in place, the newest (perhaps the damaged one that sent the user back)
    was still "the latest", and pruning by name deleted the good one this run had resumed from."""
    for later in list_checkpoints(run_dir):
        if checkpoint_step(later) > step:
            aside = later.with_name(later.name + ABANDONED)
            n = 1
            while aside.exists():  # one set aside by an earlier --resume-from: kept too
                n += 1
                aside = later.with_name(f"{later.name}{ABANDONED}-{n}")
            later.rename(aside)
            print(
                f"imusic train: {later.name} is after step {step}: set aside as {aside.name}",
                file=sys.stderr,
            )


def _resolved_config(
    cfg: TrainConfig, run_dir: Path, resume: bool, resume_from: str | Path | None, changes: Sequence[str]
) -> tuple[TrainConfig, dict | None]:
    """(the run's configuration, the checkpoint to continue from or None) for a new or a resumed run."""
    existing = list_checkpoints(run_dir)
    if resume or resume_from is not None:
        chosen = Path(resume_from) if resume_from is not None else (existing[-1] if existing else None)
        diverged = read_history(run_dir, required=False).get("diverged_at")
        if diverged is not None:  # its checkpoints replay the same data and draws: it would diverge there again
            raise ConfigError(
                f"the run in {run_dir} diverged at step {diverged} and exported its best weights; resuming it would "
                "replay the same steps: start a new run (a lower --lr)"
            )
        if chosen is None:
            raise CheckpointError(f"nothing to resume in {run_dir}: it holds no checkpoint")
        if not chosen.is_file():
            raise CheckpointError(f"no checkpoint at {chosen}")
        own = (run_dir / CKPT_DIR).resolve()
        if chosen.resolve().parent != own:  # another run's checkpoint would overwrite this folder's run with its own
            raise CheckpointError(
                f"{chosen} is not a checkpoint of the run in {run_dir}: --resume-from picks one of {own}'s; "
                "to continue another run, give its folder as -o"
            )
        earlier = [p for p in existing if p.name < chosen.name]
        payload = load_checkpoint(chosen, earlier[-1] if earlier else None)
        if payload.get("stage") == "codec":
            raise ConfigError(f"{run_dir} holds a codec run: give --stage codec")
        saved = TrainConfig.from_dict(payload["config"])
        # The saved run defines the run; only how long it goes, how often it reports and where it runs may change.
        return TrainConfig.from_dict({**asdict(saved), **{k: getattr(cfg, k) for k in changes}}), payload
    if existing:
        raise ConfigError(f"{run_dir} already holds a run ({existing[-1].name}); pass --resume or choose a new folder")
    return cfg, None


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    resume_from: str | Path | None = None,
    changes: Sequence[str] = RESUME_CHANGES,
    progress: bool = True,
    stop_after: int | None = None,
    export: bool = True,
    deadline: float | None = None,
) -> RunResult:
    """Run (or continue) training into `run_dir`.

    On resume the saved configuration defines the run; only the fields named in `changes` are taken from `cfg`.
    `stop_after` ends the call after that global step (tests use it to simulate an interruption); the schedule still
    follows `cfg.steps`. `deadline` (a time.time() value) shortens `cfg.steps` from measured step times so that the run
    ends and exports by then (budget.StepBudget)."""
    started = time.monotonic()  # wall time includes loading and encoding the code pool
    run_dir = user_path(run_dir)
    cfg, payload = _resolved_config(cfg, run_dir, resume, resume_from, changes)
    cfg.check()
    if cfg.stage not in STAGES:
        raise ConfigError(f"unknown stage {cfg.stage!r}: use {', '.join(STAGES)} or codec")

    device = training_device(cfg.device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    # Stages that build files of their own (the base stage's template) keep them inside the run folder.
    cfg = replace(cfg, extra={**cfg.extra, "run_dir": str(run_dir)})
    stage = STAGES[cfg.stage](cfg, device)
    train_data = stage.dataset("train")
    try:
        val_data = stage.dataset("validation")
    except DataError as exc:
        val_data = None
        print(f"imusic train: no validation loss ({exc})", file=sys.stderr)
    identity = data_identity(train_data, val_data)
    if payload is not None:
        check_same_data(payload, identity, cfg.data)
    # processes that read clips: none on a CPU (they would compete with the model for its cores), else a few
    auto_workers = 0 if device.type == "cpu" else min(MAX_AUTO_WORKERS, usable_cores())
    workers = cfg.workers if cfg.workers is not None else auto_workers
    if cfg.pool:
        key = {k: v for k, v in asdict(cfg).items() if k in POOL_KEY} | {"songs": identity}
        train_data = CodePool.build(stage, train_data, cfg.pool, run_dir, cfg.batch, key, progress, workers)

    trainer = Trainer(cfg, stage, device, train_data, val_data, run_dir)
    trainer.data_identity = identity
    if payload is not None:
        trainer.restore(payload)
    if resume_from is not None:
        _set_aside_later(run_dir, trainer.step)
    if cfg.pool:
        workers = 0  # the pool is in memory: nothing to decode ahead
    feeder = ClipFeeder(train_data, trainer.sampler, cfg.batch, workers, cfg.seed)
    if payload is None:
        trainer.prepare()

    run_dir.mkdir(parents=True, exist_ok=True)
    budget = None
    if deadline is not None:
        from engine.train.budget import StepBudget

        budget = StepBudget(deadline, trainer.step)
    trainer.run(feeder, cfg.steps if stop_after is None else min(cfg.steps, stop_after), started, progress, budget)
    outputs: dict[str, str] = {}
    if export and trainer.step >= cfg.steps:
        stage.module.eval()
        info = {"steps": trainer.step, "data": str(cfg.data), "seed": cfg.seed}
        if trainer.history["val"]:
            info["final_val_loss"] = trainer.history["val"][-1][1]
        diverged = "diverged_at" in trainer.history
        if trainer.best is not None and (diverged or trainer.best[1] < trainer.history["val"][-1][1]):
            # keep_best: the weights of the best validation loss, not the last (a pool seen many times overfits)
            best_step, best_val, state = trainer.best
            stage.load_trainable_state({name: t.to(device) for name, t in state.items()})
            info.update(exported_step=best_step, exported_val_loss=best_val)
            trainer.history["exported"] = {"step": best_step, "val_loss": best_val}
            trainer.write_history()
        outputs = stage.export(run_dir, info)
    return RunResult(step=trainer.step, history=trainer.history, outputs=outputs, run_dir=run_dir)
