"""engine.model.fit: the one check of a checkpoint's weights against what a model expects."""

import pytest
import torch

from engine.errors import CheckpointError
from engine.model.fit import SHOW_NAMES, check_state_fits, refuse_misfit

EXPECTED = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "b.weight": torch.zeros(4, 4)}


def test_a_state_that_fits_passes():
    check_state_fits({k: torch.ones_like(v) for k, v in EXPECTED.items()}, EXPECTED, "ckpt")


def test_missing_weights_are_counted_and_named():
    state = {"a.weight": torch.zeros(2, 3)}
    with pytest.raises(CheckpointError, match=r"^ckpt is missing 2 weights that this model needs: a\.bias, b\.weight$"):
        check_state_fits(state, EXPECTED, "ckpt")


def test_may_miss_lets_some_names_be_absent():
    state = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    check_state_fits(state, EXPECTED, "ckpt", may_miss=lambda name: name.startswith("b."))
    with pytest.raises(CheckpointError, match="missing 1 weight that"):
        check_state_fits(state, EXPECTED, "ckpt", may_miss=lambda name: name.startswith("c."))


def test_a_weight_of_another_shape_is_named_with_both_shapes():
    state = dict(EXPECTED, **{"a.weight": torch.zeros(3, 3), "b.weight": torch.zeros(1)})
    message = r"ckpt does not fit the decoder: a\.weight has shape \(3, 3\), expected \(2, 3\) \(and 1 more"
    with pytest.raises(CheckpointError, match=message):
        check_state_fits(state, EXPECTED, "ckpt", "the decoder")


def test_unknown_weights_are_refused_and_long_lists_are_cut():
    extra = {f"z{i}": torch.zeros(1) for i in range(SHOW_NAMES + 3)}
    with pytest.raises(CheckpointError, match=r"holds 8 weights that this model does not have: z0, .* and 3 more$"):
        check_state_fits(dict(EXPECTED, **extra), EXPECTED, "ckpt")


def test_missing_comes_before_shape_and_shape_before_unknown():
    with pytest.raises(CheckpointError, match="missing"):
        refuse_misfit("x", "y", missing=["m"], unknown=["u"], wrong_shapes=[("w", (1,), (2,))])
    with pytest.raises(CheckpointError, match="has shape"):
        refuse_misfit("x", "y", unknown=["u"], wrong_shapes=[("w", (1,), (2,))])
    refuse_misfit("x", "y")  # nothing wrong: no error
