"""Shared fixtures: a tiny random model in our model-directory format, an Editor on it, a small synthetic data set,
a fake Hugging Face cache, and the bridge tests' servers and files.

The tiny model tests mechanics only (shapes, alignment, protocol); it never shows that an edit works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

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


@pytest.fixture
def no_model_load(monkeypatch):
    """Editor.load fails the test: for checks that must be done before any model loads."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("engine.editor.Editor.load", refuse)


@pytest.fixture(scope="session")
def adapted_lm():
    """`adapted_lm(cfg)`: a MusicGenLM of `cfg` (seed 0) whose adapters look trained, so that every adapter path carries
    signal: gates 0.8, cross-attention q and v LoRA B drawn from N(0, 0.2)."""
    import torch

    from engine.model.config import FusionConfig
    from engine.model.lm import MusicGenLM

    def make(cfg):
        torch.manual_seed(0)
        model = MusicGenLM(cfg, FusionConfig(lora_rank=4, cond_frames=21)).eval()
        with torch.no_grad():
            model.fusion.gates.fill_(0.8)
            for layer in model.layers:
                layer.cross_attn.q.lora_b.normal_(0.0, 0.2)
                layer.cross_attn.v.lora_b.normal_(0.0, 0.2)
        return model

    return make


@pytest.fixture(scope="session")
def official_ckpt(tiny_model_dir, tmp_path_factory):
    """A finetuned.ckpt of the official instruct-MusicGen layout on the tiny base."""
    from engine.tools.tiny_models import write_tiny_official_ckpt

    return write_tiny_official_ckpt(tmp_path_factory.mktemp("official") / "finetuned.ckpt", tiny_model_dir / "base")


class HubCache:
    """A Hugging Face cache, laid out as huggingface_hub does; every repo in it is at `commit`."""

    commit = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, repo: str, folder: Path | None = None) -> Path:
        """`repo` ("owner/name") with a copy of `folder` (none: empty) as its main snapshot; the snapshot."""
        repo_dir = self.path / ("models--" + repo.replace("/", "--"))
        snapshot = repo_dir / "snapshots" / self.commit
        if folder is None:
            snapshot.mkdir(parents=True)
        else:
            shutil.copytree(folder, snapshot)
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(self.commit)
        return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty HubCache that huggingface_hub uses, offline, for the test."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return HubCache(cache)


def skip_without_soundfont() -> None:
    from engine.train.data.render import default_soundfonts

    if not default_soundfonts():
        pytest.skip("no General MIDI soundfont on this machine")


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_soundfont: skipped where this machine has no General MIDI soundfont")


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_soundfont"):
        skip_without_soundfont()


@pytest.fixture(scope="session")
def synth_songs(tmp_path_factory):
    """`synth_songs(tracks, seconds, seed)`: a folder of `imusic data synth` songs at 16 kHz; skips without a
    soundfont."""
    from engine.train.data.synth import synthesize

    def make(tracks: int, seconds: float, seed: int):
        skip_without_soundfont()
        out = tmp_path_factory.mktemp("synth_data") / "data"
        synthesize(out, tracks, seed=seed, seconds=seconds, sample_rate=16000, progress=False)
        return out

    return make


@pytest.fixture(scope="session")
def synth_data(synth_songs):
    """Five 3 s songs of `imusic data synth` at 16 kHz (seed 11): enough for every split, task and clip."""
    return synth_songs(5, 3.0, 11)


@pytest.fixture
def read_only():
    """`read_only(folder)`: `folder` refuses writes until the test ends, root included (whom modes do not stop: the
    folder is made immutable instead); skips where that cannot be done."""
    locked: list[tuple[Path, bool]] = []

    def lock(folder: Path) -> Path:
        folder.chmod(0o555)
        immutable = False
        if os.access(folder, os.W_OK):
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
            if not immutable:
                folder.chmod(0o755)
                pytest.skip("cannot make a read-only folder here")
        locked.append((folder, immutable))
        return folder

    yield lock
    for folder, immutable in reversed(locked):
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


@pytest.fixture
def root(tmp_path):
    """A folder the bridge tests' servers may read and write (their only allowed root)."""
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


@pytest.fixture
def serve(tmp_path, root):
    """`serve(root=root, **kwargs)`: test_bridge_support.start_server(tmp_path, root, **kwargs), stopped when the
    test ends."""
    from test_bridge_support import start_server

    servers = []

    def start(root: Path = root, **kwargs):
        servers.append(start_server(tmp_path, root, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(serve):
    """A server on a FakeEditor, allowed `root`, whose FakePlayer plays in real time."""
    from bridge.playback import FakePlayer

    return serve(player=FakePlayer(time_scale=1.0))


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
