"""The `imusic` entry point: one verb per user intent.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`. Only the module of the
command being run is imported, so `imusic send ...` never pays for torch.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Sequence
from typing import Any

from engine.errors import ConfigError, ImusicError, report_error
from engine.options import seed_option
from engine.options import whole_number as _whole_number

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("bridge.demo", "the main job on the embedded default model: render, edit through the server, show"),
    "serve": ("bridge.server", "run the engine server (model resident, OSC on 127.0.0.1)"),
    "send": ("bridge.send", "talk to a running server: ping, status, cancel, edit, preview (no torch import)"),
    "edit": ("bridge.edit_cmd", "edit one audio file in-process"),
    "play": ("bridge.playback", "preview an audio file on an output device"),
    "batch": ("bridge.batch", "render every audio file of a session folder with every requested edit"),
    "data": ("engine.train.data.cli", "stem data sets: synthesize, inspect, export"),
    "train": ("engine.train.cli", "train adapters (or a base model / codec from scratch)"),
    "eval": ("engine.eval.evaluate", "evaluate edits on a test set: SI-SDR, mel SSIM, log-mel distance"),
    "weights": ("engine.weights.cli", "download, inspect and convert checkpoints"),
    "reaper": ("reaper_scripts.installer", "install or uninstall the REAPER actions"),
    "bench": ("bridge.bench_cli", "benchmarks: decode speed, bridge overhead"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error, the usage, and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def report_edit(prog: str, label: str, seed: int | None, info: dict, seconds: float | None) -> None:
    """On stderr, after a finished edit's path on stdout: one line of what was done (mode, seed, time, level, gain)
    and the engine's notes, one line each. `imusic edit` and `imusic send edit` say it alike."""
    levels = info.get("levels") or {}
    parts = [f"mode {info['mode']}"] if info.get("mode") else []
    if seed is not None:  # an engine that does not report it (a fake one in tests)
        parts.append(f"seed {seed}")
    if isinstance(seconds, (int, float)):
        parts.append(f"{seconds:.1f} s")
    if isinstance(levels.get("result_lufs"), (int, float)):  # None for a silent result
        parts.append(f"{levels['result_lufs']:.1f} LUFS")
    if isinstance(levels.get("gain_db"), (int, float)):
        parts.append(f"gain {levels['gain_db']:+.1f} dB")
    if levels.get("limited"):
        parts.append("peak-limited")
    sys.stderr.write(f"{label}: {', '.join(parts)}\n")
    for note in info.get("warnings") or ():
        sys.stderr.write(f"{prog}: note: {note}\n")


def workers_option(text: str) -> int:
    """argparse type of batch's --workers: a whole number of at least 1."""
    return _whole_number(text, 1, 1024)


def region_seconds_option(text: str) -> float:
    """argparse type of a region's length to make and edit (bench): above 0, at most the server's hour."""
    from bridge.protocol import MAX_REGION_S

    value = wait_option(text)
    if value > MAX_REGION_S:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_REGION_S:g} s (an hour), got {text!r}")
    return value


def count_option(text: str) -> int:
    """argparse type of a count of things to do (--jobs, --edits): a whole number of at least 1."""
    return _whole_number(text, 1, 10**6)


def rate_option(text: str) -> int:
    """argparse type of a sample rate to make audio at: one the Editor takes (1000 to 768000 Hz)."""
    from engine.files import MAX_RATE, MIN_RATE

    return _whole_number(text, MIN_RATE, MAX_RATE)


def channels_option(text: str) -> int:
    """argparse type of a channel count to make audio with: one the Editor takes (1 to 64)."""
    from engine.files import MAX_CHANNELS

    return _whole_number(text, 1, MAX_CHANNELS)


def takes_option(text: str) -> int:
    """argparse type of --takes: the engine's rule in its words (instructions.check_takes), as argparse's usage
    error."""
    from engine.instructions import check_takes

    try:
        takes: object = int(text)
    except ValueError:
        takes = text  # check_takes names it as typed
    try:
        return check_takes(takes)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds_option(text: str) -> float:
    """argparse type of a time in seconds: a finite number (--timeout, --start and --end add their own rule)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text!r}")
    return value


def wait_option(text: str) -> float:
    """argparse type of --timeout: seconds to wait, more than 0 (0 would give up before any answer could come)."""
    value = seconds_option(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def start_option(text: str) -> float:
    """argparse type of --start: seconds from the start of the file, not negative."""
    value = seconds_option(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be seconds from the start of the file, not negative, got {text!r}")
    return value


def end_option(text: str) -> float:
    """argparse type of --end: as --start. The wire reads a negative end as "to the end" (protocol.TO_END); typed,
    `--end -3` would look like "3 s before the end", so it is refused, saying how to ask for the end."""
    try:
        return start_option(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (leave --end out for the end of the file)") from None


def add_region_options(parser: argparse.ArgumentParser) -> None:
    """--start and --end of the region a command edits or plays, in seconds; --end defaults to the end of the file
    (bridge.protocol.TO_END), one spelling for `imusic edit`, `imusic send edit` and `imusic play`."""
    from bridge.protocol import TO_END

    parser.add_argument("--start", type=start_option, default=0.0, help="start of the region, seconds (default 0)")
    parser.add_argument(
        "--end", type=end_option, default=TO_END, help="end of the region, seconds (default: end of file)"
    )


def add_edit_options(parser: argparse.ArgumentParser, *, raw: bool = True) -> None:
    """The choices of an edit besides its audio and instruction, one spelling for every command that edits
    (`imusic edit`, `imusic batch`, `imusic send edit`): --seed, --takes, --mode and (`raw`) --raw.
    bridge.protocol.EditOptions.from_args reads them back."""
    parser.add_argument("--seed", type=seed_option, default=None, help="sampling seed (default: random, printed)")
    parser.add_argument("--takes", type=takes_option, default=1, help="generate N takes and keep the best")
    from engine.modes import modes_help

    parser.add_argument("--mode", default="", help=modes_help())
    if raw:
        parser.add_argument("--raw", action="store_true", help="skip loudness matching and peak limiting")


class JobProgress:
    """A job's progress on stderr, fed (fraction 0-1, stage) by the Editor or the client: one bar redrawn in place on a
    terminal, one line per stage elsewhere (a log stays readable), nothing when not `enabled`. `imusic edit`, `imusic
    send edit` and the demo show their jobs with it."""

    def __init__(self, label: str = "", *, enabled: bool = True, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr  # looked up now: stderr may have been replaced
        self.label, self.enabled, self.last_stage = label, enabled, None
        self.shown: set[str] = set()  # the stages shown so far
        self.bar = None
        if enabled and hasattr(self.stream, "isatty") and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc=label or None, file=self.stream,
                            bar_format="{desc} {percentage:3.0f}%|{bar:30}| {elapsed} {postfix}")  # fmt: skip

    def __call__(self, fraction: float, stage: str) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if self.bar is not None:
            self.bar.n = int(round(100 * fraction))
            self.bar.set_postfix_str(stage, refresh=False)
            self.bar.refresh()
        elif self.enabled and stage != self.last_stage:
            self.stream.write(f"{self.label + ': ' if self.label else ''}{fraction * 100:5.1f}% {stage}\n")
        self.last_stage = stage
        self.shown.add(stage)

    def close(self, done: bool = False) -> None:
        """End the display (with `done`, at 100% first, unless the job's own last stages said so already)."""
        if done and "done" not in self.shown:
            self(1.0, "done")
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _chosen_command(argv: Sequence[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Build the parser; only the chosen command's module is imported to add its arguments."""
    from engine import __version__

    parser = _Parser(prog="imusic", description="Text-instructed music editing for the DAW (Instruct-MusicGen).")
    parser.add_argument("--version", action="version", version=f"imusic {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    chosen = _chosen_command(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `imusic`; returns the process exit code (0 ok, 1 failure, 2 usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ImusicError as exc:
        return report_error(exc, f"imusic {args.command}")
    except OSError as exc:  # the machine's own refusal that no check foresaw (a disk that filled up meanwhile)
        where = f": {exc.filename}" if exc.filename else ""
        return report_error(ImusicError(f"{exc.strerror or exc}{where}"), f"imusic {args.command}")
    except KeyboardInterrupt:
        sys.stderr.write("imusic: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
