"""`imusic bench engine`: what the bridge costs on top of the model.

A server runs in this process on loopback with the model resident; a client sends edit jobs of a region (10 s by
default) and times each: request to first progress, request to done, and the model's own time (the server's
`edit_s`, the Editor.edit call). Overhead = (total - model time) / total, summed over the jobs: reading the region,
journalling (fsync), writing the result, OSC both ways and queue hand-offs. The last line printed is
`bridge overhead: X.X%` (target: under 2% of job time for a 10 s region).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model directory (default: a tiny random model, built here)")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--seconds", type=float, default=10.0, help="region length (default 10 s)")
    parser.add_argument("--jobs", type=int, default=5, help="jobs to time (default 5)")
    parser.add_argument("--sample-rate", type=int, default=44100, help="rate of the test file (default 44100)")
    parser.add_argument("--channels", type=int, default=2, help="channels of the test file (default 2)")


def _write_test_file(path: Path, seconds: float, sample_rate: int, channels: int) -> Path:
    import numpy as np

    from bridge.audio_io import write_atomic

    rng = np.random.default_rng(0)
    frames = int(round(seconds * sample_rate))
    t = np.arange(frames) / sample_rate
    tone = 0.2 * np.sin(2 * np.pi * 110.0 * t) + 0.05 * rng.standard_normal(frames)
    audio = np.repeat(tone[None, :], channels, axis=0).astype(np.float32)  # [C, N]
    return write_atomic(path, audio, sample_rate, overwrite=True)


def measure(
    editor: Any,
    seconds: float = 10.0,
    jobs: int = 5,
    sample_rate: int = 44100,
    channels: int = 2,
    out: Any = None,
) -> dict[str, float]:
    """Run `jobs` edits through a loopback server on `editor`; returns the timings (seconds) and the overhead."""
    from bridge.client import Client
    from bridge.jobs import warm_up_instruction
    from bridge.server import EngineServer

    out = out or sys.stdout
    instruction = warm_up_instruction(editor)
    if instruction is None:
        from engine.errors import ConfigError

        raise ConfigError("the model accepts none of add/remove/extract <stem>; cannot benchmark it")
    with tempfile.TemporaryDirectory(prefix="imusic-bench-") as folder:
        folder = Path(folder).resolve()
        song = _write_test_file(folder / "bench.wav", seconds, sample_rate, channels)
        server = EngineServer(editor=editor, port=0, journal_dir=folder / "journal", allow_roots=[folder])
        server.start()
        try:
            server.wait_ready(600)
            first_progress, totals, models = [], [], []
            with Client("127.0.0.1", server.port) as client:
                client.ping(10)
                for index in range(jobs):
                    seen: list[float] = []
                    started = time.perf_counter()
                    job_id = client.submit(str(song), 0.0, seconds, instruction, seed=index)
                    result = client.wait(
                        job_id, timeout=3600, on_progress=lambda f, s, seen=seen: seen.append(time.perf_counter())
                    )
                    total = time.perf_counter() - started
                    model = float(result.info["bridge"]["edit_s"])
                    first_progress.append((seen[0] if seen else time.perf_counter()) - started)
                    totals.append(total)
                    models.append(model)
                    print(
                        f"job {index + 1}/{jobs}: total {total * 1000:.1f} ms, model {model * 1000:.1f} ms, "
                        f"first progress after {first_progress[-1] * 1000:.2f} ms",
                        file=out,
                    )
        finally:
            server.stop()
    overhead = (sum(totals) - sum(models)) / sum(totals)
    figures = {
        "first_progress_s": statistics.median(first_progress),
        "total_s": statistics.median(totals),
        "model_s": statistics.median(models),
        "overhead_s": statistics.median(t - m for t, m in zip(totals, models, strict=True)),
        "overhead": overhead,
    }
    print(
        f"region {seconds:g} s ({channels} ch, {sample_rate} Hz), {jobs} jobs, medians: request -> first progress "
        f"{figures['first_progress_s'] * 1000:.2f} ms, total {figures['total_s'] * 1000:.1f} ms, model "
        f"{figures['model_s'] * 1000:.1f} ms, bridge {figures['overhead_s'] * 1000:.1f} ms",
        file=out,
    )
    print(f"bridge overhead: {overhead * 100:.1f}%", file=out, flush=True)
    return figures


def run(args: argparse.Namespace) -> int:
    """Load the model (a tiny random one unless --model), then measure; prints `bridge overhead: X.X%` last."""
    from engine.editor import Editor

    if args.jobs < 1 or args.seconds <= 0:
        from engine.errors import ConfigError

        raise ConfigError("--jobs must be at least 1 and --seconds positive")
    with tempfile.TemporaryDirectory(prefix="imusic-bench-model-") as folder:
        source = args.model
        if source is None:
            from engine.tools.tiny_models import build_tiny_model_dir

            source = build_tiny_model_dir(Path(folder) / "tiny", seed=0)
            print("model: tiny random model (mechanics only)", flush=True)
        editor = Editor.load(source, adapter=args.adapter, device=args.device, dtype=args.dtype)
        measure(editor, args.seconds, args.jobs, args.sample_rate, args.channels)
    return 0
