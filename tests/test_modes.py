from __future__ import annotations

import pytest
from test_bridge_support import imported_by

from engine import modes
from engine.errors import ConfigError


def test_modes_default_per_operation_and_a_wrong_one_is_refused_naming_those_that_apply():
    assert modes.check_mode("extract", None) == "mask" and modes.check_mode("add", "") == "mask"
    assert modes.check_mode("remove", " Resynth ") == "resynth"
    with pytest.raises(ConfigError, match="unknown mode 'stems': use mask, resynth, layer"):
        modes.check_mode("remove", "stems")
    assert "added part" in modes.channel_policy("add", "mask")
    assert "copied" in modes.channel_policy("extract", "resynth")


def test_a_results_mode_setting_is_empty_for_the_default_however_it_is_written():
    assert modes.canonical_mode(None) == modes.canonical_mode("mask") == modes.canonical_mode(" MASK ") == ""
    assert modes.canonical_mode("Resynth") == "resynth"
    assert modes.canonical_mode("layer") == "layer"  # an add's mode only: no other operation's default to compare
    with pytest.raises(ConfigError, match="unknown mode 'karaoke'"):  # never taken for the default
        modes.canonical_mode("karaoke")


def test_the_modes_import_without_numpy_for_the_reaper_actions():
    assert not {"numpy", "torch"} & imported_by("engine.modes")


def test_a_known_mode_that_does_not_apply_to_an_operation_is_refused_naming_those_that_do(monkeypatch):
    monkeypatch.setitem(modes.OP_MODES, "add", ("mask",))
    with pytest.raises(ConfigError, match="^mode 'resynth' does not apply to add: use mask$"):
        modes.check_mode("add", "resynth")


@pytest.mark.parametrize("error", [ConfigError, ValueError])
def test_an_unknown_mode_name_is_one_message_in_the_error_class_asked_for(error):
    assert modes.check_mode_name(" MASK ") == "mask" and modes.check_mode_name(None) == ""
    with pytest.raises(
        error, match=r"^unknown mode 'karaoke': use mask, resynth, layer, beside \(or nothing: the default\)$"
    ):
        modes.check_mode_name("karaoke", error)


def test_the_mode_help_names_every_mode_and_where_it_applies(monkeypatch):
    from engine import modes

    text = modes.modes_help()
    assert all(f"{mode}" in text for mode in modes.MODES) and "layer (add only)" in text
    monkeypatch.setitem(modes.OP_MODES, "remove", (modes.MASK, modes.RESYNTH, modes.LAYER))
    assert "layer (remove, add only)" in modes.modes_help()  # read from OP_MODES, not written beside it


def test_beside_is_an_adds_layer_and_every_other_operations_default():
    """What the REAPER actions send: the engine, which parses the words with its model's card, decides."""
    assert [modes.check_mode(op, " Beside ") for op in ("add", "extract", "remove")] == ["layer", "mask", "mask"]
    assert modes.canonical_mode("beside") == "beside"  # not the default: an add differs
