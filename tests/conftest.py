"""Shared fixtures: a tiny random model in our model-directory format, and an Editor on it.

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
    from engine.testing import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_model") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_editor(tiny_model_dir):
    from engine.editor import Editor

    return Editor.load(tiny_model_dir, device="cpu")
