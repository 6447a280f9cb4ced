"""`imusic data`: synthesize a stem data set, or summarise one.

    imusic data synth --tracks N -o DIR [--seed S] [--seconds L] [--sample-rate SR] [--soundfont PATH ...] [--midi DIR]
                      [--renderer auto|fluidsynth|tinysoundfont] [--workers N]
    imusic data info DIR [--layout auto|slakh|moisesdb|folder] [--json]
    imusic data export DIR -o OUT [--split test] [--task extract ...] [--classes 4stems|all] ...

Top-level imports stay light (argparse only): the work happens in modules imported by `run`.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `synth`, `info` and `export` subcommands."""
    from engine.eval.clips import add_clip_arguments
    from engine.model.config import SAMPLE_RATE
    from engine.train.data import RENDERERS, SONG_SECONDS
    from engine.train.data.datasets import SPLITS
    from engine.train.data.layouts import LAYOUTS

    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=type(parser))
    sub.required = True
    synth = sub.add_parser(
        "synth",
        help="make a Slakh-layout stem data set from MIDI through General MIDI soundfonts",
        description="Write procedural (or your own) MIDI songs, render each instrument through General MIDI "
        "soundfonts with random programs, gains and light effects, and save them in the Slakh2100 layout.",
    )
    synth.add_argument("--tracks", type=int, required=True, help="number of songs to make")
    synth.add_argument("-o", "--output", required=True, help="new (or empty) folder for the data set")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same files (default 0)")
    synth.add_argument(
        "--seconds", type=float, default=SONG_SECONDS, help=f"length of each song in seconds (default {SONG_SECONDS:g})"
    )
    synth.add_argument(
        "--sample-rate", type=int, default=SAMPLE_RATE, help=f"sample rate of the stems (default {SAMPLE_RATE})"
    )
    synth.add_argument(
        "--soundfont",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="General MIDI .sf2 files (default: TimGM6mb.sf2 from pretty_midi and FluidR3_GM.sf2 when installed)",
    )
    synth.add_argument(
        "--midi",
        metavar="DIR",
        help="render your own .mid files instead (in name order, cycling when --tracks is larger; each cut to "
        "--seconds; programs re-drawn within each instrument's class)",
    )
    synth.add_argument(
        "--renderer",
        default="auto",
        choices=RENDERERS,
        help="MIDI renderer: FluidSynth (system library) or the tinysoundfont wheel (none needed); auto: FluidSynth "
        "where it loads, else tinysoundfont",
    )
    synth.add_argument("--workers", type=int, default=1, help="tracks made in parallel processes (default 1)")
    synth.add_argument("--resume", action="store_true", help="finish an interrupted run in the same folder")
    synth.add_argument(
        "--once",
        action="store_true",
        help="leave a finished data set in this folder alone, finish one that was cut, else start one",
    )
    synth.add_argument("--quiet", action="store_true", help="no progress bar")

    info = sub.add_parser("info", help="summary of a data set: layout, songs, stems per class, hours")
    info.add_argument("data_dir", metavar="DIR")
    info.add_argument("--layout", default="auto", choices=("auto", *LAYOUTS))
    info.add_argument("--json", action="store_true", help="print the summary as JSON")

    export = sub.add_parser(
        "export",
        help="write a split's fixed clip list as input/ground_truth/instruction files (official test-data layout)",
    )
    export.add_argument("data_dir", metavar="DIR")
    export.add_argument("-o", "--output", required=True, help="new (or empty) folder for the clips")
    # imusic eval's clip options (--task, --classes, --seconds, --clips-per-song, --seed, --split): its very clips
    add_clip_arguments(export, splits=SPLITS, every_task_by_default=True)
    export.add_argument(
        "--sample-rate", type=int, default=SAMPLE_RATE, help=f"clip sample rate (default {SAMPLE_RATE})"
    )
    export.add_argument("--layout", default="auto", choices=("auto", *LAYOUTS))
    export.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run `imusic data ...`; returns the exit code."""
    if args.data_command == "synth":
        return _synth(args)
    if args.data_command == "export":
        return _export(args)
    return _info(args)


def _export(args: argparse.Namespace) -> int:
    from engine.eval.clips import held_out_clips
    from engine.files import output_folder
    from engine.instructions import OPERATIONS
    from engine.train.data.export import export_clips

    # the very clips `imusic eval` scores with these settings: one list per task, drawn as it draws them
    sets = [
        held_out_clips(
            args.data_dir,
            task,
            args.sample_rate,
            args.seconds,
            args.classes,
            args.seed,
            args.clips_per_song,
            args.split,
            args.layout,
        )  # fmt: skip
        for task in dict.fromkeys(args.task or OPERATIONS)
    ]
    count = export_clips(sets, output_folder(args.output), progress=not args.quiet)
    print(f"wrote {count} clip(s) of the {args.split} split to {args.output}")
    skipped = {tuple(item) for one in sets for item in one.skipped}
    if skipped:
        print(f"skipped {len(skipped)} song(s) that cannot give a clip", file=sys.stderr)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from engine.files import output_folder
    from engine.train.data.synth import synthesize

    report = synthesize(
        output_folder(args.output),
        args.tracks,
        seed=args.seed,
        seconds=args.seconds,
        sample_rate=args.sample_rate,
        soundfonts=args.soundfont,
        midi_dir=args.midi,
        progress=not args.quiet,
        resume=args.resume,
        renderer=args.renderer,
        workers=args.workers,
        once=args.once,
    )
    if report.already:
        print(f"data: done ({report.out_dir})")
        return 0
    if report.resumed:
        print(f"kept {report.resumed} finished track(s) from the earlier run")
    print(
        f"wrote {report.tracks} track(s), {report.stems} stems, {report.stem_seconds / 60:.1f} stem-minutes to "
        f"{report.out_dir}"
    )
    print(f"render CPU {report.render_cpu_seconds:.2f} s = {report.cpu_per_10s_of_stems:.3f} s per 10 s of stems")
    for track_id, reason in report.skipped:
        print(f"skipped {track_id}: {reason}", file=sys.stderr)
    return 0


def summarize(data_dir: str, layout: str = "auto") -> dict:
    """Layout, songs per split, stems and songs per class, hours, and what was skipped."""
    from engine.train.data.layouts import scan

    catalog = scan(data_dir, layout)
    classes: dict[str, dict[str, float]] = {}
    for song in catalog.songs:
        for cls in song.classes():
            entry = classes.setdefault(cls, {"songs": 0, "stems": 0, "hours": 0.0})
            entry["songs"] += 1
        for stem in song.stems:
            entry = classes[stem.cls]
            entry["stems"] += 1
            entry["hours"] += stem.seconds / 3600
    splits: dict[str, int] = {}
    for song in catalog.songs:
        splits[song.split or "unassigned"] = splits.get(song.split or "unassigned", 0) + 1
    single = sum(1 for song in catalog.songs if len(song.classes()) < 2)
    rates = sorted({stem.sample_rate for song in catalog.songs for stem in song.stems})
    return {
        "path": str(catalog.root),
        "layout": catalog.layout,
        "songs": len(catalog.songs),
        "hours": round(sum(song.seconds for song in catalog.songs) / 3600, 4),
        "stem_hours": round(sum(e["hours"] for e in classes.values()), 4),
        "sample_rates": rates,
        "splits": splits,
        "songs_with_one_class": single,
        "classes": {
            cls: {"songs": int(e["songs"]), "stems": int(e["stems"]), "hours": round(e["hours"], 4)}
            for cls, e in sorted(classes.items(), key=lambda item: -item[1]["stems"])
        },
        "skipped": dict(catalog.problem_counts()),
        "problems": [[path, reason] for path, reason in catalog.problems],  # each file left out, and why
    }


SHOWN_PROBLEMS = 20  # files left out that `imusic data info` names one by one (--json lists them all)


def _info(args: argparse.Namespace) -> int:
    summary = summarize(args.data_dir, args.layout)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['path']}: {summary['layout']} layout, {summary['songs']} songs, {summary['hours']:.2f} h")
    print(f"  stems: {summary['stem_hours']:.2f} h; sample rates: {', '.join(map(str, summary['sample_rates']))} Hz")
    print("  splits: " + ", ".join(f"{name} {count}" for name, count in summary["splits"].items()))
    if summary["songs_with_one_class"]:
        print(f"  {summary['songs_with_one_class']} song(s) have a single stem class (no edit can be drawn)")
    print(f"  {'class':<22}{'songs':>7}{'stems':>7}{'hours':>9}")
    for cls, entry in summary["classes"].items():
        print(f"  {cls:<22}{entry['songs']:>7}{entry['stems']:>7}{entry['hours']:>9.3f}")
    for reason, count in summary["skipped"].items():
        print(f"  skipped: {count} x {reason}")
    for path, reason in summary["problems"][:SHOWN_PROBLEMS]:
        print(f"    {path}: {reason}")
    if len(summary["problems"]) > SHOWN_PROBLEMS:
        print(f"    ... and {len(summary['problems']) - SHOWN_PROBLEMS} more (--json lists them all)")
    return 0
