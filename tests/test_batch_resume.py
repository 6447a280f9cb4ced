"""Kill -9 in the middle of `imusic batch`, rerun it: only the rest is rendered, and no half-written file is ever
left under a final name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf
from test_bridge_support import write_wav

from bridge.cli import main
from engine.errors import ImusicError

FILES = 6
EDITS = ["extract drums", "remove bass"]


def make_session(root: Path) -> None:
    for i in range(FILES):
        write_wav(root / f"part{i // 3}" / f"take{i}.wav", 1.0, 16000, 2, seed=i, subtype="PCM_16")


def batch_command(session: Path, out: Path, model: Path) -> list[str]:
    edits = [arg for edit in EDITS for arg in ("--edit", edit)]
    return [sys.executable, "-m", "bridge.cli", "batch", str(session), *edits, "-o", str(out)] + [
        "--model",
        str(model),
        "--device",
        "cpu",
        "--seed",
        "1",
        "--no-progress",
    ]


def done_pairs(out: Path) -> dict[str, dict]:
    from bridge.manifest import Manifest

    try:
        pairs = Manifest(out / "manifest.json").pairs  # with the outcomes journalled since it was last written whole
    except (OSError, ValueError, KeyError, ImusicError):
        return {}
    return {key: entry for key, entry in pairs.items() if entry["status"] == "done"}


def test_killed_batch_resumes_with_only_the_unfinished_pairs(tmp_path, tiny_model_dir, capsys):
    session, out = tmp_path / "session", tmp_path / "out"
    make_session(session)
    total = FILES * len(EDITS)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    proc = subprocess.Popen(
        batch_command(session, out, tiny_model_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while len(done_pairs(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the batch finished before it could be killed: give it more work"

    first = done_pairs(out)
    assert 2 <= len(first) < total
    # Whatever sits under a final name is a complete file of the source's length, never a fragment.
    for path in out.rglob("*.wav"):
        if not path.name.startswith("."):
            assert sf.info(path).frames == 16000
    finished = {key: (out / entry["output"]).stat().st_mtime_ns for key, entry in first.items()}

    # The rerun runs in this process (a second interpreter start would double the test's time); same code path.
    assert main(batch_command(session, out, tiny_model_dir)[3:]) == 0
    assert f"{total - len(first)} rendered, {len(first)} already done, 0 failed" in capsys.readouterr().out
    assert len(done_pairs(out)) == total
    for key, entry in first.items():  # pairs finished before the kill were not rendered again
        assert (out / entry["output"]).stat().st_mtime_ns == finished[key]
    assert not list(out.rglob("*.partial.wav"))
    assert len([p for p in out.rglob("*.wav")]) == total
