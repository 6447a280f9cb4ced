"""Shared fixtures: a tiny random model in our model-directory format, an Editor on it, a small synthetic data set.

The tiny model tests mechanics only (shapes, alignment, protocol); it never shows that an edit works.
"""

from __future__ import annotations

import os

import pytest

# Tests share 2 cores with whatever else runs; keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from engine.tools.tiny_models import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_model") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_editor(tiny_model_dir):
    from engine.editor import Editor

    return Editor.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """Five 3 s songs of `imusic data synth` at 16 kHz (seed 11): enough for every split, task and clip."""
    from engine.train.data.render import default_soundfonts
    from engine.train.data.synth import synthesize

    if not default_soundfonts():
        pytest.skip("no General MIDI soundfont on this machine")
    out = tmp_path_factory.mktemp("synth_data") / "data"
    synthesize(out, 5, seed=11, seconds=3.0, sample_rate=16000, progress=False)
    return out


@pytest.fixture
def root(tmp_path):
    """A folder the bridge tests' servers may read and write (their only allowed root)."""
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


@pytest.fixture
def song(root):
    """2 s of stereo noise at 16 kHz inside `root`."""
    from test_bridge_support import write_wav

    return write_wav(root / "song.wav", seconds=2.0, sample_rate=16000, channels=2)


@pytest.fixture(scope="session")
def judged_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with an evaluation in its card, as the shipped model has: extract loses to the unchanged input
    on mel SSIM, remove wins, add loses on mel SSIM only (add is judged on log-mel distance)."""
    import json
    import shutil

    path = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("judged") / "model")
    card = json.loads((path / "model_card.json").read_text())
    card["evaluation"] = {
        "beats_identity": {
            "extract": {"mel_ssim": False, "log_mel_distance": True},
            "remove": {"mel_ssim": True, "log_mel_distance": True},
            "add": {"mel_ssim": False, "log_mel_distance": True},
        }
    }
    (path / "model_card.json").write_text(json.dumps(card))
    return path
