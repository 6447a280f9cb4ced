"""`imusic serve` in a subprocess, as a user starts it in a terminal: its output in a log file, waited for until it
listens and until its ping says ready, stopped with SIGTERM as Ctrl-C would. `imusic demo` runs its edits through one;
the end-to-end tests of the REAPER actions run against one. No torch: the server loads the model in its own process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bridge import protocol
from engine.errors import ResourceError

STOP_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 600.0  # loading and warming up a large model on a CPU can take minutes: how long a caller waits
LOG_TAIL_LINES = 8
LOG_NAME = "server.log"  # in the server's folder: its output
JOURNAL_NAME = ".journal"  # in the server's folder: its jobs (a new server there resumes the pending ones)


class ServerProcess:
    """A running `imusic serve`: journal FOLDER/.journal and log FOLDER/server.log, results allowed under `roots`
    (default: FOLDER); `options` go on its command line as they are (e.g. --no-warm-up, --device cpu)."""

    def __init__(
        self,
        model: str | Path | None,
        folder: Path,
        port: int,
        host: str = protocol.DEFAULT_HOST,
        roots: Sequence[Path] = (),
        options: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.log_path = folder / LOG_NAME
        command = [sys.executable, "-m", "bridge.cli", "serve", "--host", host, "--port", str(port)]
        command += ["--journal", str(folder / JOURNAL_NAME)]
        for root in roots or (folder,):
            command += ["--allow-root", str(root)]
        if model is not None:
            command += ["--model", str(model)]
        command += list(options)
        child_env = dict(os.environ if env is None else env)
        child_env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def check_alive(self, doing: str) -> None:
        """ResourceError with the server's last log lines if it has exited."""
        code = self.process.poll()
        if code is not None:
            tail = self.log_tail()
            raise ResourceError(
                f"the engine server stopped (exit code {code}) {doing}; its last lines ({self.log_path}):\n{tail}"
            )

    def wait_listening(self, timeout: float) -> int:
        """The port the server bound (it may have been asked for port 0)."""
        from bridge.server import listening_port

        deadline = time.monotonic() + timeout
        while True:
            self.check_alive("before it listened")
            port = listening_port(self.log_tail(50))
            if port is not None:
                self.port = port
                return self.port
            if time.monotonic() > deadline:
                raise ResourceError(f"the engine server did not start within {timeout:g} s; see {self.log_path}")
            time.sleep(0.05)

    def wait_ready(self, client: Any, timeout: float) -> Any:
        """Ping until the server says ready (model loaded and warmed up); returns the pong reply."""
        from bridge.client import NoReply

        deadline = time.monotonic() + timeout
        while True:
            self.check_alive("while loading the model")
            try:
                pong = client.ping(timeout=1.0)
                if pong.state == protocol.READY:
                    return pong
            except NoReply:
                pass  # busy starting; asked again below
            if time.monotonic() > deadline:
                raise ResourceError(
                    f"the engine server was not ready within {timeout:g} s; its last lines:\n{self.log_tail()}"
                )
            time.sleep(0.25)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (graceful: the server finishes its journal), then kill after `timeout` s; returns the exit code."""
        if self.process.poll() is None:
            if os.name == "nt":
                self.process.terminate()  # Windows has no SIGTERM to send a child; this ends it at once
            else:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                print(f"imusic: the engine server did not stop within {timeout:g} s; killed it", file=sys.stderr)
        return self.process.returncode
