"""`imusic batch --ray`: pairs spread over Ray actors, each holding one model; same results as in-process."""

from __future__ import annotations

import json
import shutil
import tempfile

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


def test_ray_batch_on_a_local_instance_matches_the_in_process_results(
    tmp_path, tiny_model_dir, capsys, monkeypatch, request
):
    # a local Ray instance writes a token under HOME (~/.ray) and its session under RAY_TMPDIR (/tmp/ray): both the
    # test's own (the session's sockets need a short path: AF_UNIX allows 107 bytes, more than tmp_path leaves)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ray_tmp = tempfile.mkdtemp(prefix="imusic-ray-")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
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


def test_a_worker_that_dies_gets_no_more_pairs_and_its_pair_goes_to_another(tmp_path):
    """A dead actor went back to the idle list: every later pair sent to it failed ("a Ray worker failed") and was
    recorded as failed, not retried by a rerun."""
    import types

    from bridge.batch import plan_pairs
    from bridge.batch_backends import RayBackend
    from bridge.protocol import EditOptions
    from bridge.sources import folder_sources
    from engine.errors import ResourceError

    class RayError(Exception):
        pass

    class ActorDied(RayError):
        pass

    class Ref:  # an object ref: hashable, what ray.get reads
        def __init__(self, value) -> None:
            self.value = value

    class Actor:
        def __init__(self, alive: bool) -> None:
            self.alive, self.calls = alive, 0
            self.edit = types.SimpleNamespace(remote=self._edit)

        def _edit(self, audio, rate, text, options):
            self.calls += 1
            return Ref(("ok", audio, rate, 0, {}, 0.1) if self.alive else None)

    def get(ref):
        if ref.value is None:
            raise ActorDied("the worker died")
        return ref.value

    fake_ray = types.SimpleNamespace(
        exceptions=types.SimpleNamespace(RayError=RayError, RayActorError=ActorDied),
        wait=lambda refs, num_returns: (refs[:1], refs[1:]),
        get=get,
    )
    session = tmp_path / "session"
    for number in range(5):
        write_wav(session / f"t{number}.wav", 0.2, 16000, 1, seed=number, subtype="PCM_16")
    pairs = plan_pairs(folder_sources(session), [("extract drums", "extract drums")], tmp_path / "out")

    def backend(*actors):
        made = RayBackend.__new__(RayBackend)
        made.ray, made.actors, made.options, made.replaceable = fake_ray, list(actors), EditOptions(), set()
        return made

    dying, living = Actor(alive=False), Actor(alive=True)
    outcomes = list(backend(dying, living).run(pairs, lambda pair, fraction: None))
    assert len(outcomes) == 5 and all(outcome.error is None for outcome in outcomes)
    assert dying.calls == 2 and living.calls == 5  # the two it held went to the other; it got no more
    with pytest.raises(ResourceError, match="every Ray worker died"):
        list(backend(Actor(alive=False), Actor(alive=False)).run(pairs, lambda pair, fraction: None))


def test_a_full_disk_on_ray_stops_the_batch_and_a_rerun_renders_what_is_left(tmp_path, monkeypatch):
    """On Ray a full disk was one failed pair after another: every pair was edited on the cluster, thrown away and
    recorded as failed, so a rerun after making room did not retry them."""
    import errno
    import types

    from bridge import audio_write
    from bridge.batch import plan_pairs, run_batch
    from bridge.batch_backends import RayBackend
    from bridge.manifest import Manifest
    from bridge.protocol import EditOptions
    from bridge.sources import folder_sources
    from engine.errors import ResourceError

    class Ref:
        def __init__(self, value) -> None:
            self.value = value

    actor = types.SimpleNamespace(
        edit=types.SimpleNamespace(remote=lambda audio, rate, text, options: Ref(("ok", audio, rate, 0, {}, 0.1)))
    )
    fake_ray = types.SimpleNamespace(
        exceptions=types.SimpleNamespace(RayError=RuntimeError, RayActorError=RuntimeError),
        wait=lambda refs, num_returns: (refs[:1], refs[1:]),
        get=lambda ref: ref.value,
    )
    backend = RayBackend.__new__(RayBackend)
    backend.ray, backend.actors, backend.options = fake_ray, [actor], EditOptions()
    backend.replaceable, backend.per_file_progress = set(), False
    session, out = tmp_path / "session", tmp_path / "out"
    for number in range(4):
        write_wav(session / f"t{number}.wav", 0.2, 16000, 1, seed=number, subtype="PCM_16")
    out.mkdir()
    pairs = plan_pairs(folder_sources(session), [("extract drums", "extract drums")], out)
    real_write, writes = audio_write._write_wav, []

    def filling(*args):
        writes.append(args)
        if len(writes) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(*args)

    monkeypatch.setattr(audio_write, "_write_wav", filling)
    with pytest.raises(ResourceError, match="No space left on device; make room and run the batch again"):
        run_batch(pairs, backend, Manifest(out / "manifest.json"), out, {"model": "x"})
    assert len(writes) == 2  # stopped at the first full write: nothing more edited for nothing
    monkeypatch.setattr(audio_write, "_write_wav", real_write)
    summary = run_batch(pairs, backend, Manifest(out / "manifest.json"), out, {"model": "x"})
    assert (summary.done, summary.skipped, summary.not_retried) == (3, 1, 0)
