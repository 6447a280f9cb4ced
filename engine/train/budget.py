"""Wall-clock budgets of the embedded model's recipe: how a run's minutes are split over its stages, and how a
training loop fits its schedule to a deadline.

A stage given a deadline measures its own step time and shortens its schedule (`steps`, the cosine's end) so that it
ends, exports and leaves the next stage its time: the learning rate still decays to its floor, only over fewer steps.
The schedule is only ever shortened, never lengthened, and never below what has already run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from engine.errors import ConfigError

# The recipe's stages in order, and each one's share of the budget (what is left after the fixed start-up reserve).
# Planned for the accelerator (docs/embedded_model/gpu_recipe.md): the codec and the base are the two long
# trainings; data is rendered on every core; the evaluation encodes, edits
# and scores held-out clips; packing is seconds.
STAGE_ORDER = ("data", "codec", "base", "adapters", "eval", "pack")
SHARES = {"data": 0.10, "codec": 0.32, "base": 0.28, "adapters": 0.18, "eval": 0.10, "pack": 0.02}
RESERVE_SECONDS = 20.0  # imports, wheel install, the card; kept out of every stage's share


@dataclass
class Plan:
    """Seconds per stage of one recipe run."""

    total: float
    seconds: dict[str, float] = field(default_factory=dict)


def split_budget(minutes: float, smallest_step: dict[str, float], stages: tuple[str, ...] = STAGE_ORDER) -> Plan:
    """Split `minutes` over `stages` by SHARES (renormalised over the stages that still have to run).

    `smallest_step` gives, per stage, the least time it needs to do anything at all (one step, one song, one clip):
    a budget whose share for some stage is below that raises ConfigError before anything starts.
    """
    if not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"--budget-minutes must be a positive number, got {minutes}")
    total = 60.0 * minutes
    usable = total - RESERVE_SECONDS
    weight = sum(SHARES[name] for name in stages)
    plan = Plan(total=total)
    if not stages:
        return plan
    short = []
    for name in stages:
        share = usable * SHARES[name] / weight if usable > 0 else 0.0
        plan.seconds[name] = share
        if share < smallest_step.get(name, 0.0):
            short.append(f"{name} gets {max(share, 0.0):.1f} s but needs {smallest_step[name]:.1f} s for one step")
    if short:
        need = RESERVE_SECONDS + sum(smallest_step.get(n, 0.0) for n in stages) * 1.0
        least = max(need, max((smallest_step.get(n, 0.0) * weight / SHARES[n]) for n in stages) + RESERVE_SECONDS)
        raise ConfigError(
            f"--budget-minutes {minutes:g} is too small for one step of every stage ({'; '.join(short)}): "
            f"give at least {least / 60:.2f} minutes"
        )
    return plan


class StepBudget:
    """Fits a schedule of `steps` to a wall-clock `deadline` (time.time()), from the step times it measures.

    `fit(step, steps)` after each step returns the (possibly smaller) total: never below the current step, re-estimated
    every `every` steps from the mean step time in this session (a resumed session measures its own) since its first
    `warm` steps. Those are not counted: on an accelerator a stage's first steps load libraries and kernels and build
    plans, seconds against tens of milliseconds for a step after them, and a schedule that is only ever shortened would
    keep the cut that one slow step made (a 1 s first step and 40 ms steps: 313 of some 1850 steps in 75 s)."""

    def __init__(
        self, deadline: float | None, first_step: int, every: int = 5, margin: float = 0.97, warm: int = 3
    ) -> None:
        self.deadline = deadline
        self.first_step = first_step
        self.every = every
        self.margin = margin
        self.warm = warm
        self.started = time.time()

    def fit(self, step: int, steps: int) -> int:
        if self.deadline is None:
            return steps
        now = time.time()
        if now >= self.deadline:
            return min(steps, step)
        done = step - self.first_step - self.warm  # steps measured: the clock starts once the warm steps are done
        if done == 0:
            self.started = now
        if done < 2 or done % self.every:
            return steps
        per_step = (now - self.started) / done
        more = int(self.margin * (self.deadline - now) / per_step) if per_step > 0 else steps
        return max(step, min(steps, step + more))
