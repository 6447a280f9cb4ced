from __future__ import annotations

import subprocess
import sys

import pytest

from engine import modes
from engine.errors import ConfigError


def test_modes_default_per_operation_and_a_wrong_one_is_refused_naming_those_that_apply():
    assert modes.check_mode("extract", None) == "mask" and modes.check_mode("add", "") == "mask"
    assert modes.check_mode("remove", " Resynth ") == "resynth"
    with pytest.raises(ConfigError, match="'stems' does not apply to remove: use mask or resynth"):
        modes.check_mode("remove", "stems")
    assert "added part" in modes.channel_policy("add", "mask")
    assert "copied" in modes.channel_policy("extract", "resynth")


def test_a_results_mode_setting_is_empty_for_the_default_however_it_is_written():
    assert modes.canonical_mode(None) == modes.canonical_mode("mask") == modes.canonical_mode(" MASK ") == ""
    assert modes.canonical_mode("Resynth") == "resynth"


def test_the_modes_import_without_numpy_for_the_reaper_actions():
    code = "import sys, engine.modes; print('numpy' in sys.modules, 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == [
        "False",
        "False",
    ]
