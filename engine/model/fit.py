"""Whether a set of weights fits what a model expects: the one check every loader runs, with one wording.

A checkpoint can miss weights the model needs, hold weights the model does not have, or hold a weight of another
shape; each is refused with a CheckpointError that names the source, what it was checked against and the first few
names, so a user can tell a truncated file from a checkpoint of another model size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from engine.errors import CheckpointError

SHOW_NAMES = 5  # names listed in a message; the rest are counted


def _weights(count: int) -> str:
    return f"{count} weight" if count == 1 else f"{count} weights"


def _listed(names: Sequence[str]) -> str:
    more = f" and {len(names) - SHOW_NAMES} more" if len(names) > SHOW_NAMES else ""
    return ", ".join(names[:SHOW_NAMES]) + more


def refuse_misfit(
    source: str,
    target: str,
    *,
    missing: Iterable[str] = (),
    unknown: Iterable[str] = (),
    wrong_shapes: Iterable[tuple[str, Sequence[int], Sequence[int]]] = (),
) -> None:
    """CheckpointError for the first misfit there is (missing, then wrong shape, then unknown); nothing when none.

    `wrong_shapes` holds (name, shape found, shape expected). `source` is what was read ("adapter x.safetensors"),
    `target` what it was checked against ("this model", "its config.json").
    """
    missing, unknown = sorted(missing), sorted(unknown)
    wrong = sorted(wrong_shapes, key=lambda item: item[0])
    if missing:
        raise CheckpointError(f"{source} is missing {_weights(len(missing))} that {target} needs: {_listed(missing)}")
    if wrong:
        name, found, expected = wrong[0]
        more = f" (and {len(wrong) - 1} more of another shape)" if len(wrong) > 1 else ""
        raise CheckpointError(
            f"{source} does not fit {target}: {name} has shape {tuple(found)}, expected {tuple(expected)}{more}"
        )
    if unknown:
        names = _listed(unknown)
        raise CheckpointError(f"{source} holds {_weights(len(unknown))} that {target} does not have: {names}")


def check_state_fits(
    state: Mapping[str, Any],
    expected: Mapping[str, Any],
    source: str,
    target: str = "this model",
    *,
    may_miss: Callable[[str], bool] | None = None,
) -> None:
    """Refuse `state` (name -> tensor) unless it has every name of `expected` (except those `may_miss` allows), no
    other name, and each tensor in its expected shape."""
    refuse_misfit(
        source,
        target,
        missing=(n for n in expected if n not in state and not (may_miss and may_miss(n))),
        unknown=(n for n in state if n not in expected),
        wrong_shapes=(
            (n, tuple(t.shape), tuple(expected[n].shape))
            for n, t in state.items()
            if n in expected and tuple(t.shape) != tuple(expected[n].shape)
        ),
    )
