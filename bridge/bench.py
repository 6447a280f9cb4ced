"""`imusic bench engine`: what the bridge costs on top of the model, or (`--shape`) the engine's real-time factor.

Bridge overhead (default): a server runs in this process on loopback with the model resident; a client sends edit
jobs of a region (10 s by default) and times each: request to first progress, request to done, and the model's own
time (the server's `edit_s`, the Editor.edit call). Overhead = (total - model time) / total, summed over the jobs:
reading the region, journalling (fsync), writing the result, OSC both ways and queue hand-offs. The last line printed
is `bridge overhead: X.X%` (target: under 2% of job time for a 10 s region).

Real-time factor (`--shape tiny|small|medium|large`): a random-weight model of that MusicGen shape (the real codec
and text encoder shapes: engine.tools.tiny_models.random_loaded_model) is built in memory on `--device`, and
Editor.edit is called directly on a 30 s stereo 44.1 kHz numpy region (windows, codec, mask and levels included; no
file I/O, so no audio library is needed). The first edit is timed apart (CUDA graphs captured or compiled, kernels
chosen); RTF = edit seconds / region seconds over the later edits (best), with where the time goes: encode, decode
steps (generate, with ms per decode step), codec decode, mask and levels. The last line is
`real-time factor: X.XXX`. `--step` picks the CUDA decode step (engine.model.generate.CUDA_STEP by default).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from bridge.cli import channels_option, count_option, rate_option, region_seconds_option, takes_option
from bridge.serve_process import READY_TIMEOUT_S
from engine.editor import STEP_NAMES
from engine.eval.acceptance import EDIT_SECONDS, REGION_CHANNELS, REGION_RATE
from engine.files import report_path, write_json_atomic
from engine.model.config import PRESETS

SHAPES = tuple(PRESETS)  # tiny, small, medium, large
SHAPE_SECONDS = 30.0  # the region a --shape run edits (issue #18: a 30 s stereo 44.1 kHz edit)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model directory (default: a tiny random model, built here)")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    lengths = f"default {EDIT_SECONDS:g} s; {SHAPE_SECONDS:g} s with --shape"
    parser.add_argument("--seconds", type=region_seconds_option, default=None, help=f"region length ({lengths})")
    parser.add_argument("--jobs", type=count_option, default=5, help="jobs to time (default 5)")
    parser.add_argument(
        "--sample-rate", type=rate_option, default=REGION_RATE, help=f"rate of the test file (default {REGION_RATE})"
    )
    parser.add_argument(
        "--channels", type=channels_option, default=REGION_CHANNELS,
        help=f"channels of the test file (default {REGION_CHANNELS})",
    )  # fmt: skip
    parser.add_argument("--shape", default=None, choices=SHAPES,
                        help="time the Editor's real-time factor on a random model of this shape instead")  # fmt: skip
    parser.add_argument(
        "--edits", type=count_option, default=2, help="edits with --shape: the first is timed apart (default 2)"
    )
    parser.add_argument("--step", default=None, choices=STEP_NAMES,
                        help="CUDA decode step with --shape (default: the engine's, generate.CUDA_STEP)")  # fmt: skip
    parser.add_argument("--takes", type=takes_option, default=1, help="takes per edit with --shape (default 1)")
    parser.add_argument("--json", default=None, metavar="PATH", help="with --shape: write the figures to this file")


def _write_test_file(path: Path, seconds: float, sample_rate: int, channels: int) -> Path:
    """The region every timing edits (acceptance.sample_region), as the file a producer's region arrives in."""
    from bridge.audio_write import write_atomic
    from engine.eval.acceptance import sample_region

    return write_atomic(path, sample_region(seconds, sample_rate, channels), sample_rate, overwrite=True)


def measure(
    editor: Any,
    seconds: float = EDIT_SECONDS,
    jobs: int = 5,
    sample_rate: int = REGION_RATE,
    channels: int = REGION_CHANNELS,
    out: Any = None,
) -> dict[str, float]:
    """Run `jobs` edits through a loopback server on `editor`; returns the timings (seconds) and the overhead."""
    from bridge.client import Client
    from bridge.server import EngineServer
    from engine.instructions import timed_instruction

    out = out or sys.stdout
    instruction = timed_instruction(editor)
    with tempfile.TemporaryDirectory(prefix="imusic-bench-") as folder:
        folder = Path(folder).resolve()
        song = _write_test_file(folder / "bench.wav", seconds, sample_rate, channels)
        server = EngineServer(editor=editor, port=0, journal_dir=folder / "journal", allow_roots=[folder])
        server.start()
        try:
            server.wait_ready(READY_TIMEOUT_S)
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


def decode_steps(editor: Any, samples: int, sample_rate: int) -> int:
    """Decoder passes one edit of `samples` at `sample_rate` makes (per take batch): the windows' free steps."""
    from engine.model import delay

    windows = editor.windows(editor.model_length(samples, sample_rate))
    num_codebooks = editor.model.lm.cfg.num_codebooks
    return sum(delay.decode_steps(w.length, num_codebooks, w.prompt) for w in windows)


def measure_rtf(
    editor: Any,
    seconds: float = SHAPE_SECONDS,
    sample_rate: int = REGION_RATE,
    channels: int = REGION_CHANNELS,
    edits: int = 2,
    takes: int = 1,
    out: Any = None,
) -> dict[str, Any]:
    """Time `edits` Editor.edit calls on a `seconds` region; the first apart (warm-up), RTF over the rest (best);
    then one edit of a region of another length (`other_length`: no new compile or capture expected).

    Returns the figures: rtf, first_edit_s, edit_s, the time split of the best edit (encode, generate, decode, mask
    or resample, levels, other), decode_steps and ms_per_step (generate seconds / decode steps)."""
    from engine.eval.acceptance import sample_region
    from engine.instructions import timed_instruction

    out = out or sys.stdout
    instruction = timed_instruction(editor)
    audio = sample_region(seconds, sample_rate, channels)
    steps = decode_steps(editor, audio.shape[-1], sample_rate)
    runs = []
    for index in range(edits):
        _sync(editor)
        started = time.perf_counter()
        result = editor.edit(audio, sample_rate, instruction, seed=index, takes=takes)
        _sync(editor)
        wall = time.perf_counter() - started
        timings = dict(result.info["timings"])
        runs.append((wall, timings))
        print(f"edit {index + 1}/{edits} ({instruction}, {seconds:g} s, {channels} ch, {sample_rate} Hz): "
              f"{wall:.2f} s = {wall / seconds:.3f} x real time; " + _split(timings), file=out, flush=True)  # fmt: skip
    # a region of another length, as a producer's next selection: its windows must replay the step already compiled
    # or captured (engine/model/static_decode.py), not pay a first call again
    other_seconds = round(seconds * 0.6, 3)
    other = sample_region(other_seconds, sample_rate, channels)
    _sync(editor)
    started = time.perf_counter()
    editor.edit(other, sample_rate, instruction, seed=edits, takes=takes)
    _sync(editor)
    other_wall = time.perf_counter() - started
    print(f"a region of another length ({other_seconds:g} s): {other_wall:.2f} s = {other_wall / other_seconds:.3f} "
          "x real time", file=out, flush=True)  # fmt: skip
    timed = runs[1:] or runs
    wall, timings = min(timed, key=lambda run: run[0])
    known = sum(v for k, v in timings.items() if k != "total")
    figures: dict[str, Any] = {
        "seconds": seconds,
        "sample_rate": sample_rate,
        "channels": channels,
        "takes": takes,
        "instruction": instruction,
        "edits": edits,
        "first_edit_s": runs[0][0],
        "edit_s": wall,
        "rtf": wall / seconds,
        "timings": {**timings, "other": max(0.0, wall - known)},
        "decode_steps": steps,
        "ms_per_step": timings.get("generate", 0.0) / max(steps, 1) * 1e3,
        "windows": result.info.get("windows"),
        "other_length": {"seconds": other_seconds, "edit_s": other_wall, "rtf": other_wall / other_seconds},
    }
    print(f"where the time goes ({'best later edit' if len(runs) > 1 else 'the only edit'}): "
          + _split(figures["timings"])
          + f"; {steps} decode steps, {figures['ms_per_step']:.2f} ms/step (generate / steps)", file=out)  # fmt: skip
    if len(runs) > 1:
        print(f"first edit {runs[0][0]:.2f} s (capture / compile / first-call costs included)", file=out)
    print(f"real-time factor: {figures['rtf']:.3f}", file=out, flush=True)
    return figures


def _split(timings: dict[str, float]) -> str:
    order = ["encode", "generate", "decode", "mask", "resample", "levels", "other"]
    return ", ".join(f"{name} {timings[name]:.2f} s" for name in order if name in timings)


def _sync(editor: Any) -> None:
    from engine.tools.costs import synchronize

    device = getattr(getattr(editor, "model", None), "device", None)
    if device is not None:
        synchronize(device)


def run_rtf(args: argparse.Namespace) -> int:
    """`--shape`: build a random model of the shape on the device and print its real-time factor last."""
    import datetime

    import torch

    from engine.device import device_name
    from engine.editor import Editor
    from engine.errors import ConfigError
    from engine.model import generate as generate_mod
    from engine.model.static_decode import FastStepFailed
    from engine.tools.bench import resolve_device
    from engine.tools.tiny_models import random_loaded_model

    warnings.simplefilter("error", FastStepFailed)  # a fallback would time the plain step under --step's name

    if args.model is not None:
        raise ConfigError("--shape builds a random model: give --shape or --model, not both")
    seconds = SHAPE_SECONDS if args.seconds is None else args.seconds
    json_path = report_path(args.json, ".json", "--json") if args.json else None  # before the minutes of measuring
    device = resolve_device(args.device)
    started = time.perf_counter()
    model = random_loaded_model(args.shape, device=device, dtype=args.dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - started
    cfg = model.lm.cfg
    # off CUDA every step mode is the eager loop (generate's static modes are for CUDA graphs)
    step = "eager" if device.type != "cuda" else (args.step or str(generate_mod.CUDA_STEP or "eager"))
    editor = Editor(model, decode_step=step)
    dtype = str(model.dtype).removeprefix("torch.")
    print(f"engine real-time factor on {device_name(device)}: random {args.shape} ({cfg.num_layers} x {cfg.dim}) "
          f"{dtype}, built in {build_s:.1f} s; decode step {step}; torch {torch.__version__}", flush=True)  # fmt: skip
    figures = measure_rtf(editor, seconds, args.sample_rate, args.channels, args.edits, args.takes)
    if json_path is not None:
        figures.update(shape=args.shape, device=device_name(device), dtype=dtype, step=step, build_s=build_s,
                       torch=torch.__version__, date=datetime.date.today().isoformat())  # fmt: skip
        write_json_atomic(json_path, figures, sort_keys=False)
    return 0


def run(args: argparse.Namespace) -> int:
    """Load the model (a tiny random one unless --model), then measure; prints `bridge overhead: X.X%` last.

    With --shape: the real-time factor instead (`run_rtf`), `real-time factor: X.XXX` last."""
    from engine.errors import ConfigError

    if getattr(args, "shape", None) is not None:
        return run_rtf(args)
    from engine.editor import Editor

    args.seconds = EDIT_SECONDS if args.seconds is None else args.seconds
    if args.json:
        raise ConfigError("--json goes with --shape (the real-time factor's figures)")
    if str(args.device).lower().startswith("cuda"):
        from engine.tools.bench import resolve_device

        resolve_device(args.device)  # the one-line refusal when this machine has no CUDA
    with tempfile.TemporaryDirectory(prefix="imusic-bench-model-") as folder:
        source = args.model
        if source is None:
            from engine.tools.tiny_models import build_tiny_model_dir

            source = build_tiny_model_dir(Path(folder) / "tiny", seed=0)
            print("model: tiny random model (mechanics only)", flush=True)
        editor = Editor.load(source, adapter=args.adapter, device=args.device, dtype=args.dtype)
        measure(editor, args.seconds, args.jobs, args.sample_rate, args.channels)
    return 0
