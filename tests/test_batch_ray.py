"""`imusic batch --ray`: pairs spread over Ray actors, each holding one model; same results as in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from test_bridge_support import write_wav

from bridge.cli import main

pytest.importorskip("ray")

EDITS = ["--edit", "extract drums", "--edit", "no bass"]


def make_session(root):
    write_wav(root / "a.wav", 1.0, 22050, 2, seed=0, subtype="PCM_16")
    write_wav(root / "sub" / "b.flac", 1.0, 16000, 1, seed=1, subtype="PCM_16")


def test_ray_batch_on_a_local_instance_matches_the_in_process_results(tmp_path, tiny_model_dir, capsys):
    session = tmp_path / "session"
    make_session(session)
    common = [str(session), *EDITS, "--model", str(tiny_model_dir), "--device", "cpu", "--seed", "5"]
    assert main(["batch", *common, "-o", str(tmp_path / "ray"), "--ray", "local", "--workers", "1"]) == 0
    assert main(["batch", *common, "-o", str(tmp_path / "local")]) == 0
    assert "4 rendered" in capsys.readouterr().out

    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["engine"]["workers"] == 1 and manifest["engine"]["gpus"] == 0
    assert all(entry["status"] == "done" for entry in manifest["pairs"].values())
    outputs = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.wav"))
    assert len(outputs) == 4
    for rel in outputs:  # same seed, same model: the cluster changes where an edit runs, not what it gives
        ray_audio, ray_rate = sf.read(tmp_path / "ray" / rel)
        local_audio, local_rate = sf.read(tmp_path / "local" / rel)
        assert ray_rate == local_rate
        np.testing.assert_array_equal(ray_audio, local_audio)
