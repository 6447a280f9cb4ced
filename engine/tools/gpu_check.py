"""The prepared device run of issue #18: every decode and edit-speed measurement, in one script, under 4 minutes.

    bash engine/tools/gpu_check.sh "$OUT"            # on the GPU machine, from the repository root
    bash engine/tools/gpu_check.sh "$OUT" --tiny     # the same stages on CPU at the tiny shape (a dry run)

Each stage is one `imusic bench ...` process with its own timeout (so one hang loses only itself), run in order of
importance while the total budget (`--budget`, default 225 s) lasts; a stage that no longer fits is skipped and says
so. Output is unbuffered, printed and copied to OUT/bench_log.txt; OUT/bench.json holds, per stage, the command, exit
code, seconds, whether it timed out, and its figures (the JSON the bench wrote), rewritten after every stage. A
stage killed at its timeout still has its figures so far: the decode bench rewrites its JSON after every
measurement and prints each first call (capture, compile) as soon as it is timed.

Each stage compiles into its own fresh Inductor and Triton caches (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR, under
the run's temporary folder): a stage reusing the kernels an earlier one built would understate a cold compile (the
engine-compile stage's first edit is what a producer's first hotkey costs).

Stages on the GPU (bf16, CFG on, random weights):
1. decode: small, medium, large at batch 1 and 4; transformers' generate against our eager and CUDA-graph steps;
   fp32 greedy agreement with transformers, bf16 vs fp32 argmax agreement, fp32 graph vs eager tokens, the graph
   step teacher-forced against eager; the floor.
2. decode-compile: small at batch 1, eager and the torch.compile step (the engine's CUDA default) only, without the
   checks stage 1 made (`--no-checks`): compile time, steady speed, CUDA-graph skips, teacher-forced against eager.
3. engine-compile: the small shape's edit with the compiled step (first edit = what a producer's first hotkey costs).
4-6. engine: the Editor's real-time factor on a 30 s stereo 44.1 kHz region, small, medium, large, CUDA-graph step.
Estimated on an H200 (startup ~10 s per process): decode ~80 s (cap 120), decode-compile ~35 s (a cold compile of
the small step is most of it), engine-compile ~45 s (a cold compile too), engine ~15 / 25 / 35 s: about 235 s if
everything runs. Under `--budget 170` (a device session's few minutes) stages 1-3 fit (~160 s) and the engine stages
get what is left: the budget cuts from the end, the least important first.

Nothing here needs an audio library or a carried wheel: the engine stages edit numpy audio in memory, and the levels
need only numpy and scipy (engine.loudness is the project's own meter).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from engine.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[2]


def stages(tiny: bool, work: Path) -> list[dict[str, Any]]:
    """The stages in order: name, argv of `imusic`, cap in seconds, the JSON the stage writes."""
    if tiny:
        device, shapes, decode_extra = "cpu", ["tiny"], ["--frames", "12", "--repeats", "1", "--threads", "1"]
        engine_extra = ["--seconds", "3"]
        engine_shapes = ["tiny"]
    else:
        device, shapes, decode_extra = "cuda", ["small", "medium", "large"], ["--frames", "64", "--repeats", "2"]
        engine_extra = ["--seconds", "30"]
        engine_shapes = ["small", "medium", "large"]
    out: list[dict[str, Any]] = []

    def add(name: str, argv: list[str], cap: float) -> None:
        path = work / f"{name}.json"
        out.append({"name": name, "argv": [*argv, "--json", str(path)], "cap": cap, "json": path})

    # In order of importance, as a short budget skips the last ones: every shape's decode against transformers, then
    # the compiled step (the engine's CUDA default, generate.CUDA_STEP, and the path most likely to fail on a first
    # real GPU: Triton, Inductor), then the Editor's speed per shape with the captured graph.
    add("decode", ["bench", "decode", "--device", device, "--shapes", ",".join(shapes), "--batches", "1,4",
                   "--steps", "eager,graph", *decode_extra], 120)  # fmt: skip
    first = engine_shapes[0]
    # the compiled step alone with the eager one (its teacher-forced reference), without the checks the decode stage
    # made: the cap goes to the cold compile
    add("decode-compile", ["bench", "decode", "--device", device, "--shapes", shapes[0], "--batches", "1",
                           "--steps", "eager,compile", "--no-checks", *decode_extra], 90)  # fmt: skip
    add(f"engine-{first}-compile", ["bench", "engine", "--device", device, "--shape", first, "--step", "compile",
                                    "--edits", "2", *engine_extra], 75)  # fmt: skip
    caps = {"tiny": 40, "small": 40, "medium": 45, "large": 60}
    for shape in engine_shapes:
        add(f"engine-{shape}-graph", ["bench", "engine", "--device", device, "--shape", shape, "--step", "graph",
                                      "--edits", "2", *engine_extra], caps[shape])  # fmt: skip
    return out


def compile_caches(work: Path, name: str) -> dict[str, str]:
    """Environment giving a stage fresh Inductor and Triton caches of its own under the run's work folder (not OUT,
    which brings back a few files): no stage compiles warm from the kernels an earlier stage built."""
    folder = work / "caches" / name
    return {"TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"), "TRITON_CACHE_DIR": str(folder / "triton")}


class Log:
    """Print and append to the log file, line by line, flushed."""

    def __init__(self, path: Path) -> None:
        self.handle = path.open("a", encoding="utf-8")

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.handle.write(text + "\n")
        self.handle.flush()


def run_stage(stage: dict[str, Any], timeout: float, env: dict[str, str], log: Log) -> dict[str, Any]:
    """Run one stage as its own process group, streaming its output; killed (the whole group) at `timeout`."""
    command = [sys.executable, "-u", "-m", "bridge.cli", *stage["argv"]]
    log(f"$ imusic {' '.join(stage['argv'])}   (timeout {timeout:.0f} s)")
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1, start_new_session=True)  # fmt: skip
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        for line in process.stdout:
            log("  " + line.rstrip("\n"))
        process.wait()
    finally:
        timer.cancel()
    seconds = time.perf_counter() - started
    record: dict[str, Any] = {
        "command": "imusic " + " ".join(stage["argv"]),
        "rc": process.returncode,
        "seconds": round(seconds, 1),
        "timed_out": timed_out.is_set(),
    }
    path: Path = stage["json"]
    if path.is_file():
        try:
            record["figures"] = json.loads(path.read_text())
        except ValueError as exc:
            record["figures_error"] = str(exc)
    state = "timed out" if record["timed_out"] else f"exit {record['rc']}"
    log(f"[{stage['name']}] {state} after {seconds:.1f} s")
    return record


def _environment(log: Log, tiny: bool) -> dict[str, Any]:
    info: dict[str, Any] = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "tiny": tiny,
                            "python": sys.version.split()[0]}  # fmt: skip
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,memory.used,driver_version", "--format=csv,noheader"]
        try:
            info["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"failed: {exc}"
    probe = ("import json, torch, transformers; print(json.dumps({'torch': torch.__version__,"
             " 'cuda': torch.version.cuda, 'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,"
             " 'transformers': transformers.__version__}))")  # fmt: skip
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
        info.update(json.loads(done.stdout.strip().splitlines()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        info["probe_error"] = str(exc)
    for key, value in info.items():
        log(f"{key}: {value}")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for bench_log.txt and bench.json")
    parser.add_argument("--tiny", action="store_true", help="dry run: the stages on CPU at the tiny shape")
    parser.add_argument("--budget", type=float, default=225.0, help="seconds for all stages together (default 225)")
    parser.add_argument("--only", default=None, help="comma-separated stage names to run (default: all)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "bench_log.txt")
    deadline = time.perf_counter() + args.budget
    report: dict[str, Any] = {"budget_s": args.budget, "stages": {}}
    log(f"gpu_check: issue #18 measurements, budget {args.budget:.0f} s{' (tiny dry run on CPU)' if args.tiny else ''}")
    report["environment"] = _environment(log, args.tiny)

    def save() -> None:
        write_json_atomic(out / "bench.json", report, sort_keys=False)  # whole after a kill mid-run

    save()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        work = Path(folder)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1")  # fmt: skip
        if args.tiny:
            env.setdefault("OMP_NUM_THREADS", "1")
        wanted = None if args.only is None else {s.strip() for s in args.only.split(",") if s.strip()}
        for stage in stages(args.tiny, work):
            if wanted is not None and stage["name"] not in wanted:
                continue
            left = deadline - time.perf_counter()
            if left < 15:
                log(f"[{stage['name']}] skipped: {left:.0f} s of the budget left")
                report["stages"][stage["name"]] = {"skipped": f"budget: {left:.0f} s left"}
                save()
                continue
            log()
            stage_env = dict(env, **compile_caches(work, stage["name"]))
            report["stages"][stage["name"]] = run_stage(stage, min(stage["cap"], left), stage_env, log)
            save()
    log()
    summary = {name: ("skipped" if "skipped" in r else "timed out" if r["timed_out"] else f"exit {r['rc']}")
               for name, r in report["stages"].items()}  # fmt: skip
    log("stages: " + ", ".join(f"{name} {state}" for name, state in summary.items()))
    save()
    failed = [name for name, r in report["stages"].items() if "skipped" not in r and r["rc"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
