"""Helpers for the tests (no tests here): a fast fake Editor with the real Editor's interface, a scripted UDP engine,
audio files and songs, folder digests, a fresh interpreter's imports, and a server entry point for subprocess tests
(`python tests/test_bridge_support.py --port-file F ...`).

The fake stands in for the model only where the model is beside the point (protocol, queue, journal, load);
tests/test_bridge_server.py also runs the real tiny Editor once engine.editor exists.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bridge import protocol
from engine.errors import Cancelled, InstructionError
from engine.instructions import OFFICIAL_STEM_WORDS as STEMS
from engine.instructions import OPERATIONS


class FakeEditor:
    """Editor-shaped: parse(), info, edit() with progress and cancel; output = 0.5 x input, after `steps` sleeps."""

    def __init__(
        self,
        steps: int = 4,
        step_s: float = 0.0,
        log_path: str | None = None,
        gain: float = 0.5,
        deaf: bool = False,
        stems: tuple[str, ...] = tuple(STEMS),
    ) -> None:
        self.steps, self.step_s, self.log_path, self.gain, self.stems = steps, step_s, log_path, gain, stems
        self.deaf = deaf  # neither checks cancel nor reports progress: a cancel cannot end it early
        self.calls: list[str] = []
        self.modes: list[str | None] = []  # the mode of each edit, as the engine was asked
        self._lock = threading.Lock()
        self.started = threading.Event()  # set when an edit begins (tests cancel running jobs on it)

    @property
    def info(self) -> dict:
        return {
            "model": "fake",
            "device": "cpu",
            "dtype": "float32",
            "sample_rate": 16000,
            "stems": list(self.stems),
            "operations": list(OPERATIONS),
        }

    def parse(self, text: str):
        words = text.lower().split()
        if len(words) < 2 or words[0] not in OPERATIONS or words[1] not in self.stems:
            raise InstructionError(f"cannot parse {text!r}; try e.g. 'extract drums' ({', '.join(self.stems)})")
        return SimpleNamespace(op=words[0], stem=words[1], prompt=text)

    def edit(
        self, audio, sample_rate, instruction, *, seed=None, takes=1, raw=False, mode=None, progress=None, cancel=None
    ):
        parsed = self.parse(instruction)
        self.started.set()
        for step in range(self.steps):
            if cancel is not None and cancel.is_set() and not self.deaf:
                raise Cancelled("cancelled")
            if self.step_s:
                time.sleep(self.step_s)
            if progress is not None and not self.deaf:
                progress((step + 1) / self.steps, "decoding")
        with self._lock:
            self.calls.append(instruction)
            self.modes.append(mode)
            if self.log_path:
                with open(self.log_path, "a") as f:
                    f.write(instruction + "\n")
                    f.flush()
                    os.fsync(f.fileno())
        info = {"model": "fake", "levels": {"input_lufs": -20.0, "output_lufs": -26.0, "true_peak_db": -3.0}}
        return SimpleNamespace(
            audio=(audio * self.gain).astype(np.float32),
            sample_rate=sample_rate,
            instruction=parsed,
            seed=seed,
            info=info,
        )


def start_server(tmp_path: Path, root: Path, editor=None, timeout: float = 10.0, **kwargs):
    """An in-process EngineServer on a free port, allowed `root`, a FakeEditor unless given; ready when returned."""
    from bridge.server import EngineServer

    server = EngineServer(
        editor=editor or FakeEditor(),
        port=0,
        journal_dir=tmp_path / "journal",
        allow_roots=[root],
        warm_up=False,
        **kwargs,
    )
    server.start()
    assert server.wait_ready(timeout)
    return server


def launch_fake_server(
    folder: Path, root: Path, *options: str, port: int = 0, name: str = "server"
) -> tuple[subprocess.Popen, int]:
    """This file's server (a FakeEditor) in a subprocess, as a user's `imusic serve` would run: journal folder/journal,
    edit log folder/edits.log, output folder/NAME.stderr, results allowed under `root`; returned once it listens,
    with its port. The caller stops it (kill -9 or SIGTERM)."""
    port_file = folder / f"{name}.port"
    port_file.unlink(missing_ok=True)
    output = folder / f"{name}.stderr"
    command = [sys.executable, str(Path(__file__).resolve()), "--port", str(port), "--port-file", str(port_file)]
    command += ["--journal", str(folder / "journal"), "--root", str(root), "--log", str(folder / "edits.log")]
    with open(output, "w") as log:
        process = subprocess.Popen(
            [*command, *options], stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1]
        )
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"the fake server did not start: {output.read_text()}")
        time.sleep(0.05)
    return process, int(port_file.read_text())


def odd_byte_copy(source: Path, folder: Path) -> Path:
    """A copy of `source` in `folder` under a name that is not UTF-8 (b"caf\\xe9.wav", Latin-1 as an old drive may
    hold it); the test is skipped where the file system takes only UTF-8 names (macOS)."""
    import pytest

    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.wav")))
    try:
        path.write_bytes(source.read_bytes())
    except (OSError, UnicodeError) as exc:
        pytest.skip(f"this file system takes no such name: {exc}")
    return path


def write_wav(
    path: Path,
    seconds: float = 1.0,
    sample_rate: int = 16000,
    channels: int = 1,
    seed: int = 0,
    subtype: str = "FLOAT",
) -> Path:
    """A noise file (any format soundfile writes, by suffix); sample i of channel c is reproducible from the seed."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    audio = (rng.standard_normal((int(seconds * sample_rate), channels)) * 0.1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sample_rate, subtype=subtype)
    return path


class ResetOnce:
    """A socket whose next send raises the reset Windows reports there for an earlier datagram to a closed port."""

    def __init__(self, sock) -> None:
        self.sock, self.resets = sock, 1

    def sendto(self, data: bytes, address) -> int:
        if self.resets:
            self.resets -= 1
            raise ConnectionResetError(10054, "An existing connection was forcibly closed by the remote host")
        return self.sock.sendto(data, address)

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


class ScriptedEngine:
    """A UDP endpoint on loopback that answers each request with whatever `answer(address, args, count)` returns
    (count: how many requests to that address with that first argument, the job id, so far, this one included);
    `requests` holds every one, in order."""

    def __init__(self, answer: Callable[[str, list, int], list[tuple[str, list]]]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, list]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                datagram, sender = self.sock.recvfrom(protocol.MAX_PACKET)
            except (TimeoutError, OSError):
                continue
            for address, args in protocol.decode(datagram):
                self.requests.append((address, args))
                count = sum(1 for a, r in self.requests if a == address and r[:1] == args[:1])
                for reply_address, reply_args in self.answer(address, args, count):
                    self.sock.sendto(protocol.encode(reply_address, *reply_args), sender)

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=2)
        self.sock.close()

    def __enter__(self) -> ScriptedEngine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def write_folder_song(
    folder: Path, seconds: float = 2.0, classes: tuple[str, ...] = ("drums", "bass"), bass_from: float | None = 0.0
) -> Path:
    """A plain-folder song at 16 kHz, one file per class: noise drums, a loud 110 Hz sine bass from `bass_from`
    seconds on (None: silent throughout)."""
    import soundfile as sf

    rate, n = 16000, int(seconds * 16000)
    audio = {"drums": (0.3 * np.random.default_rng(0).standard_normal(n)).clip(-1, 1), "bass": np.zeros(n)}
    if bass_from is not None:
        start = int(bass_from * rate)
        audio["bass"][start:] = 0.5 * np.sin(2 * np.pi * 110 * np.arange(n - start) / rate)
    folder.mkdir(parents=True)
    for name in classes:
        sf.write(str(folder / f"{name}.wav"), audio[name].astype(np.float32), rate)
    return folder


def tree_digest(folder: Path) -> dict[str, str | None]:
    """Every file (the sha256 of its bytes) and folder (None) under `folder`, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        for path in sorted(folder.rglob("*"))
    }


def imported_by(*modules: str) -> set[str]:
    """Every module a fresh Python has loaded once it imported `modules` (each must import without error)."""
    code = "import sys\n" + "".join(f"import {module}\n" for module in modules) + "print(*sys.modules)"
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    return set(process.stdout.split())


def dead_pid() -> int:
    """The id of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def main(argv: list[str] | None = None) -> int:
    """Run a server on a FakeEditor until SIGTERM/SIGINT; writes its port to --port-file once bound."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bridge.server import EngineServer

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--root", action="append", required=True)
    parser.add_argument("--step-s", type=float, default=0.05)
    parser.add_argument("--log", default=None)
    parser.add_argument("--deaf", action="store_true", help="edits ignore cancel (FakeEditor.deaf)")
    args = parser.parse_args(argv)
    editor = FakeEditor(steps=4, step_s=args.step_s, log_path=args.log, deaf=args.deaf)
    server = EngineServer(
        editor=editor, port=args.port, journal_dir=args.journal, allow_roots=args.root, max_queue=1000, warm_up=False
    )
    server.start()
    server.wait_ready(30)
    Path(args.port_file + ".tmp").write_text(str(server.port))
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
