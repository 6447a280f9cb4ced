"""`imusic bench decode|engine`: the benchmarks, each printing figures and a last summary line."""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "decode": ("engine.tools.bench", "decode speed: our loop vs transformers' generate, same weights, one process"),
    "engine": (
        "bridge.bench",
        "bridge overhead: request to first progress, total time minus model time; with --shape the Editor's "
        "real-time factor on a random model of that shape",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(parser))
    sub.required = True
    for name, (module_name, help_text) in BENCHES.items():
        bench_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(bench_parser)
        bench_parser.set_defaults(_bench_run=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)
