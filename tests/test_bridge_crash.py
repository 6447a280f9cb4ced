"""kill -9 in the middle of a queue: the restarted server finishes every accepted job, once, and still answers
status for the ones finished before the crash. The server runs as a subprocess (tests/test_bridge_support.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from test_bridge_support import launch_fake_server, write_wav

from bridge import protocol
from bridge.client import Client


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs kill -9")
def test_kill_9_during_a_queue_then_restart_completes_every_accepted_job_once(tmp_path):
    root = tmp_path / "root"
    song = write_wav(root / "song.wav", seconds=1.0, sample_rate=16000, channels=1)
    process, port = launch_fake_server(tmp_path, root, name="first")
    try:
        with Client("127.0.0.1", port) as client:
            ids = []
            for i in range(12):
                job_id = client.submit(str(song), 0.0, 1.0, f"extract drums #{i}")
                client.wait_for(lambda r, j=job_id: r.address == protocol.ACCEPTED and r.job_id == j, 10)
                ids.append(job_id)
            before = client.wait(ids[1], timeout=30)  # a couple have finished, the rest are queued or running
            assert client.status(ids[-1], 5).state in (protocol.QUEUED, protocol.RUNNING)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

        process, port = launch_fake_server(tmp_path, root, port=port, name="second")
        with Client("127.0.0.1", port) as client:
            assert client.status(ids[1], 5).output_path == before.output_path
            outputs = [client.wait(job_id, timeout=60).output_path for job_id in ids]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)

    assert len(set(outputs)) == len(ids) and all(Path(p).exists() for p in outputs)
    results = sorted(p.name for p in (root / "results").iterdir() if not p.name.startswith("."))
    assert len(results) == len(ids)  # one result per job: none lost, none doubled
    edits = (tmp_path / "edits.log").read_text().splitlines()
    assert set(edits) == {f"extract drums #{i}" for i in range(12)}
    assert len(edits) <= len(ids) + 1  # at most the job cut by the kill ran twice


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs kill -9")
def test_a_running_job_cancelled_just_before_kill_9_is_not_run_again_after_the_restart(tmp_path):
    root = tmp_path / "root"
    song = write_wav(root / "song.wav", seconds=1.0, sample_rate=16000, channels=1)
    # The editor ignores cancel and takes 4 x 3 s: the kill lands while the job is still "cancelling".
    process, port = launch_fake_server(tmp_path, root, "--step-s", "3.0", "--deaf", name="first")
    try:
        with Client("127.0.0.1", port) as client:
            job_id = client.submit(str(song), 0.0, 1.0, "extract drums")
            client.wait_for(lambda r: r.address == protocol.PROGRESS and r.job_id == job_id, 10)
            time.sleep(1.0)  # past reading the input (whose progress would see the cancel): inside the deaf edit
            assert client.cancel(job_id, 5).state == protocol.CANCELLING
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

        process, port = launch_fake_server(tmp_path, root, port=port, name="second")
        with Client("127.0.0.1", port) as client:
            state = client.status(job_id, 5)
            assert state.state == protocol.CANCELLED and "server stopped" in state.args[3], state.args  # detail
            time.sleep(0.5)  # a rerun would have started by now (steps of 0.05 s)
            assert client.status(job_id, 5).state == protocol.CANCELLED
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    assert not (tmp_path / "edits.log").exists()  # the edit never completed, before or after the restart
    assert not [p for p in (root / "results").glob("*") if not p.name.startswith(".")]


# SIGHUP: the terminal that ran `imusic serve` closed (its default killed the server with no `interrupted` journalled:
# the job counted as one that stopped the engine, and after two closes it was failed)
HANG_UP = getattr(signal, "SIGHUP", signal.SIGTERM)  # POSIX only


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT, HANG_UP], ids=["TERM", "INT", "HUP"])
def test_a_stop_signal_stops_gracefully_and_the_interrupted_job_resumes(tmp_path, stop_signal):
    root = tmp_path / "root"
    song = write_wav(root / "song.wav", seconds=1.0, sample_rate=16000, channels=1)
    process, port = launch_fake_server(tmp_path, root, name="first")
    with Client("127.0.0.1", port) as client:
        ids = [client.submit(str(song), 0.0, 1.0, f"extract drums #{i}") for i in range(4)]
        for job_id in ids:
            client.wait_for(lambda r, j=job_id: r.address == protocol.ACCEPTED and r.job_id == j, 10)
        assert client.status(ids[-1], 5).state == protocol.QUEUED  # still pending when the signal arrives
    process.send_signal(stop_signal)
    assert process.wait(15) == 0
    stopped = (tmp_path / "first.stderr").read_text()
    assert "Traceback" not in stopped and "KeyboardInterrupt" not in stopped

    process, port = launch_fake_server(tmp_path, root, port=port, name="second")
    try:
        with Client("127.0.0.1", port) as client:
            outputs = {client.wait(job_id, timeout=60).output_path for job_id in ids}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    assert len(outputs) == 4
    edits = (tmp_path / "edits.log").read_text().splitlines()
    assert sorted(set(edits)) == [f"extract drums #{i}" for i in range(4)]  # every job ran to its end
    assert len(edits) <= 5  # at most the job the signal caught finished its last step and ran again


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX only")
def test_a_server_started_under_nohup_keeps_running_when_its_terminal_closes(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    # what `nohup` does, and a background job of a script (SIGINT ignored): the child inherits both
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN), signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process, port = launch_fake_server(tmp_path, root, name="nohup")
    finally:
        signal.signal(signal.SIGHUP, before[0])
        signal.signal(signal.SIGINT, before[1])
    try:
        process.send_signal(signal.SIGHUP)
        with Client("127.0.0.1", port) as client:
            assert client.ping(5).state == protocol.READY
        assert process.poll() is None
        process.send_signal(signal.SIGINT)  # still stops it, gracefully (ignored, it was not: CI runs in background)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
