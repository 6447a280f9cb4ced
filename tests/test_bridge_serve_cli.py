"""`imusic serve` as a user runs it: a subprocess on the tiny model, asked with `imusic send`, stopped by SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.server import listening_port

IMUSIC = [sys.executable, "-m", "bridge.cli"]


def test_serve_loads_warms_up_answers_and_stops_on_sigterm(judged_model_dir, tmp_path):
    pytest.importorskip("engine.editor")
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(
            IMUSIC
            + [
                "serve",
                "--model",
                str(judged_model_dir),
                "--port",
                "0",
                "--device",
                "cpu",
                "--journal",
                str(tmp_path / "journal"),
                "--allow-root",
                str(tmp_path),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "ready:" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        port = str(listening_port(log.read_text()))
        ping = subprocess.run(IMUSIC + ["send", "--port", port, "ping"], capture_output=True, text=True, timeout=30)
        assert ping.returncode == 0 and ping.stdout.split()[-1] == "ready"
        assert ping.stderr.startswith("imusic send: note: ") and "its extract edits do not clearly beat" in ping.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code == 0, log.read_text()
    assert log.read_text().rstrip().endswith("imusic serve: stopped")  # nothing was pending: no word of resuming
    # the model card's own verdict, said once at start: extract loses to the unchanged input, the rest do not
    notes = [line for line in log.read_text().splitlines() if "note: " in line]
    assert len(notes) == 1 and "its extract edits do not clearly beat leaving the audio unchanged" in notes[0]


def test_serve_with_a_missing_model_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        IMUSIC + ["serve", "--model", str(tmp_path / "nope"), "--port", "0", "--journal", str(tmp_path / "j")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("imusic serve: error:") and "Traceback" not in proc.stderr
    assert "listening" not in proc.stderr  # refused before the socket was opened


def test_serve_refuses_a_port_in_use(tmp_path, tiny_model_dir):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        proc = subprocess.run(
            IMUSIC + ["serve", "--port", str(port), "--journal", str(tmp_path / "j"), "--model", str(tiny_model_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1 and "another imusic server" in proc.stderr
    assert Path(tmp_path / "j").is_dir()


def test_the_listening_line_names_the_port_the_demo_reads_back():
    from bridge.server import LISTENING

    log = "loading\n" + LISTENING.format(host="127.0.0.1", port=53211, journal="/tmp/j; x") + "\nready: model tiny\n"
    assert listening_port(log) == 53211
    assert listening_port("loading the model...") is None
