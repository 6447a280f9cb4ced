"""`imusic batch`: render every audio file of a session folder (or every audio item of a REAPER .rpp) with every
requested edit, resumably.

    imusic batch SESSION_DIR --edit "extract drums" --edit "remove bass" -o OUT
    imusic batch song.rpp --edit "no drums" -o OUT [--server [HOST:]PORT] [--ray ADDRESS]

One output per (input, edit), mirrored under OUT, at the source's rate and length, written to a temporary name and
renamed. OUT/manifest.json (each outcome journalled at once, the manifest rewritten atomically every 256 pairs and
at the end: bridge/manifest.py) records each pair's status, timings, model, seed
and levels, with the input's size and SHA-256 and the output's size: a rerun skips a pair only when all of those
still match, and retries failures only with --retry-failed.

This module is the run (pairs, checks, triage, progress, the table) and the command. What to render is
bridge/sources.py, the manifest bridge/manifest.py, and where the edits run (in-process, a running `imusic serve`,
a Ray cluster) bridge/batch_backends.py. Heavy imports (torch, ray) happen inside functions: `--help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge import protocol
from bridge.batch_backends import InProcessBackend, Outcome, RayBackend, ServerBackend
from bridge.cli import add_edit_options, workers_option
from bridge.manifest import (
    CHANGED,
    DONE,
    FAILED,
    MANIFEST_NAME,
    OUTPUT_FIELDS,
    UNSUPPORTED,
    Manifest,
    file_sha256,
    is_done,
    out_name,
    same_settings,
    written_here,
)
from bridge.protocol import EditOptions
from bridge.sources import Pair, Source, collect_sources
from engine.errors import (
    ConfigError,
    ImusicError,
    InstructionError,
)
from engine.files import (
    PARTIAL_SUFFIX,
    check_text_path,
    folders_to_make,
    jsonable,
    lock_folder,
    remove_made_folders,
    result_file_name,
    shown_path,
    sweep_temps,
    unlock_and_remove,
    user_path,
    writable_folder,
)
from engine.weights.loader import add_model_arguments

LOCK_NAME = ".imusic-batch.lock"  # in OUT, held while a batch writes there

# --- what to render ----------------------------------------------------------------------------------------------


def check_output_folder(session: Path, out: Path, make: bool = True) -> None:
    """Refuse an output folder inside a session folder or holding it (a rerun would edit its own results), one that
    holds another session's results (they would be replaced: pairs are keyed by their path in the session), or one
    we cannot write (make=False: a dry run, which makes nothing)."""
    session_dir = session.resolve() if session.is_dir() else None
    out_resolved = out.resolve()
    if session_dir is not None and (out_resolved == session_dir or session_dir in out_resolved.parents):
        raise ConfigError(f"the output folder {out} is inside the session folder {session}: choose one outside it")
    if session_dir is not None and out_resolved in session_dir.parents:
        raise ConfigError(
            f"the session folder {session} is inside the output folder {out}: a rerun would edit its own results; "
            "choose an output folder outside it"
        )
    if (out / MANIFEST_NAME).is_file():
        earlier = Manifest(out / MANIFEST_NAME).data.get("session")
        if earlier and Path(earlier) != session.resolve():
            raise ConfigError(
                f"{out} holds the results of another session ({earlier}); this one would replace them: choose "
                "another output folder"
            )
    writable_folder(out, make)


def plan_refusing_results(sources: list[Source], labels: list, out: Path, manifest: Manifest) -> list[Pair]:
    """plan_pairs, with every source whose media is a result of this batch refused: a file the batch will write
    (a result imported into the project, the usual next step) or wrote before (the manifest's outputs). A rerun with
    other settings wrote over audio the project plays, then called its own write a change of the source."""
    import dataclasses

    pairs = plan_pairs(sources, labels, out)
    results = {os.path.realpath(pair.output) for pair in pairs}
    for entry in manifest.pairs.values():
        results |= {os.path.realpath(out / entry[key]) for key in OUTPUT_FIELDS if entry.get(key)}
    results |= {os.path.realpath(out / name) for name in manifest.claimed}
    refused = [
        dataclasses.replace(source, problem=f"{source.path} is a result of this batch (in {out}): a rerun would write "
                            "over it; copy it out of there to edit it")
        if not source.problem and os.path.realpath(source.path) in results
        else source
        for source in sources
    ]  # fmt: skip
    return pairs if refused == sources else plan_pairs(refused, labels, out)


def claim_output_folder(out: Path) -> Any:
    """Lock OUT for this run (two batches writing one manifest would lose records) and sweep up the temporary files
    a killed run left behind. Returns the open lock file; the lock ends when it is closed or the process dies."""
    busy = f"another imusic batch is writing to {out}; wait for it or choose another folder"
    handle = lock_folder(out / LOCK_NAME, busy)
    # audio_write.write_atomic's temporary files of killed writers (a live server's, writing here too, stay)
    for folder in {leftover.parent for leftover in out.rglob(f".*{PARTIAL_SUFFIX}")}:
        sweep_temps(folder, suffix=PARTIAL_SUFFIX)
    sweep_temps(out)  # a killed run's half-written manifest (the folder is ours now: its writer is gone)
    return handle


def plan_pairs(sources: list[Source], labels: list[tuple[str, str]], out: Path) -> list[Pair]:
    """Every (source, edit) pair with its output path: OUT/<rel>.<edit slug>.wav."""
    pairs = []
    for source in sources:
        for text, label in labels:
            name = result_file_name(Path(source.rel).name, label)
            pairs.append(Pair(source, text, label, out / Path(source.rel).parent / name))
    return pairs


def check_edits(edits: list[str], parse: Callable[[str], Any], mode: str = "") -> list[tuple[str, str]]:
    """Parse every edit before any work: unknown ones, duplicates (same operation and stem) and a mode that does not
    apply to one of them are refused."""
    from engine.modes import check_mode

    if not edits:
        raise ConfigError("give at least one --edit")
    labels: list[tuple[str, str]] = []
    problems = []
    for text in edits:
        try:
            instruction = parse(text)
        except InstructionError as exc:
            problems.append(f"'{text}': {exc}")
            continue
        label = instruction.label
        check_mode(instruction.op, mode)
        earlier = next((t for t, lab in labels if lab == label), None)
        if earlier is not None:
            raise ConfigError(f"--edit '{text}' repeats --edit '{earlier}' (both mean '{label}'): give each edit once")
        labels.append((text, label))
    if problems:
        raise InstructionError("; ".join(problems))
    return labels


# --- the run -----------------------------------------------------------------------------------------------------


@dataclass
class Summary:
    done: int = 0  # rendered in this run
    skipped: int = 0  # already done by an earlier run
    failed: int = 0  # failed in this run
    not_retried: int = 0  # failed earlier, left alone (no --retry-failed)
    unsupported: int = 0
    blocked: int = 0  # of the unsupported: a file the batch did not write holds the pair's result name
    seconds: float = 0.0
    rows: dict[str, dict[str, str]] = field(default_factory=dict)  # source rel -> label -> cell
    errors: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # source rel -> why it cannot be rendered
    notes: dict[str, list[str]] = field(default_factory=dict)  # a result's warning -> the pairs it came with

    @property
    def exit_code(self) -> int:
        """1 when a pair failed, or a file the batch did not write holds a result's name (a script must not take the
        batch for complete), or when nothing at all is (or was) rendered; 0 otherwise."""
        return 1 if self.failed or self.not_retried or self.blocked or not (self.done or self.skipped) else 0


def _duration(source: Source) -> float | None:
    """Seconds of audio this source covers, from the file header; None when the header is unreadable."""
    if source.end_s is not None:
        return max(0.0, source.end_s - source.start_s)
    from bridge.audio_read import probe

    try:
        return probe(source.path).duration
    except (ImusicError, OSError, ValueError):
        return None  # an unreadable file: its pairs are still tried, and fail with the reader's message


def triage(
    pairs: list[Pair], manifest: Manifest, out: Path, settings: dict, summary: Summary, *, retry_failed: bool = False
) -> list[Pair]:
    """Sort pairs into refused, done before, failed before (counted in `summary`, with their table cells) and the
    ones to render now (returned). Reads the manifest, writes nothing."""
    from engine.modes import canonical_mode

    for entry in manifest.pairs.values():  # a mode recorded as written before (--mode mask): the setting it was
        recorded = entry.get("settings") if isinstance(entry, dict) else None
        if isinstance(recorded, dict) and recorded.get("mode"):
            with contextlib.suppress(ConfigError):  # a mode unknown here: the settings differ, rendered again
                recorded["mode"] = canonical_mode(recorded["mode"])
    todo: list[Pair] = []
    for pair in pairs:
        row = summary.rows.setdefault(pair.source.rel, {})
        entry = manifest.pairs.get(pair.key)
        if pair.source.problem:
            summary.unsupported += 1
            row[pair.label] = "refused"
            summary.refused[pair.source.rel] = pair.source.problem
        elif is_done(entry, pair, out, settings):
            summary.skipped += 1
            row[pair.label] = "done before"
        elif pair.output.exists() and not written_here(entry, pair, out, manifest.claimed):
            summary.unsupported += 1
            summary.blocked += 1
            row[pair.label] = "refused"
            summary.refused[f"{pair.source.rel} ({pair.label})"] = (
                f"{pair.output} exists and this batch did not write it; it is left alone: move it, or choose another -o"
            )
        elif (
            entry
            and entry.get("status") == FAILED
            and not retry_failed
            and same_settings(entry.get("settings") or {}, settings)
        ):
            summary.not_retried += 1
            row[pair.label] = "failed before"
            summary.errors.append(f"{pair.key}: {entry.get('error')} (earlier run; --retry-failed to retry)")
        else:
            todo.append(pair)
    return todo


def run_batch(
    pairs: list[Pair],
    backend: Any,
    manifest: Manifest,
    out: Path,
    settings: dict,
    *,
    retry_failed: bool = False,
    progress_stream: Any = None,
    show_progress: bool | None = None,
) -> Summary:
    """Render every pair not already done; record each outcome in the manifest as soon as it is known."""
    from tqdm import tqdm

    summary = Summary()
    todo = triage(pairs, manifest, out, settings, summary, retry_failed=retry_failed)
    for pair in pairs:
        entry = manifest.pairs.get(pair.key)
        if pair.source.problem and (not entry or entry.get("error") != pair.source.problem):
            manifest.set(pair.key, _entry(pair, out, settings, UNSUPPORTED, pair.source.problem))
    manifest.save()
    if not todo:
        return summary

    durations = {p.source.rel: _duration(p.source) for p in todo}
    known = [d for d in durations.values() if d is not None]
    fallback = sum(known) / len(known) if known else 1.0
    weight = {p.key: durations[p.source.rel] or fallback for p in todo}  # seconds of audio: the ETA's unit
    manifest.claim([out_name(pair.output, out) for pair in todo])
    # what each source was when the batch began: a result is recorded as made from it only if it is still that
    stamps = {pair.key: _stamp(pair.source.path) for pair in todo}
    # a file at a pair's output now is the batch's own (triage refused the others): replaced; one that appears later is
    # the user's, never overwritten
    server = hasattr(backend, "end_earlier_jobs")
    if server:  # --server: end the jobs a cut run left there (one past its last progress report finishes, writing)
        backend.end_earlier_jobs(list(manifest.server_jobs))

        backend.on_submit = manifest.add_server_jobs
    # a file at a pair's output now is the batch's own (triage refused the others): replaced; one put there later is
    # the user's, never overwritten
    backend.replaceable = {pair.output for pair in todo if pair.output.exists()}
    stream = progress_stream if progress_stream is not None else sys.stderr
    if show_progress is None:  # bars on a terminal only: logs of scheduled runs stay readable
        show_progress = bool(getattr(stream, "isatty", lambda: False)())
    disable = not show_progress
    overall = tqdm(
        total=sum(weight.values()),
        unit="s",
        desc=f"batch ({len(todo)} edits)",
        file=stream,
        disable=disable,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}]",
        position=0,
    )
    per_file = tqdm(
        total=100,
        file=stream,
        disable=disable or not backend.per_file_progress,
        position=1,
        leave=False,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
    )
    credited: dict[str, float] = {}
    current = [""]  # the pair the per-file bar shows
    shown = [0.0]  # audio seconds credited to the overall bar (a disabled tqdm keeps no count)

    def advance(seconds: float) -> None:
        seconds = min(seconds, overall.total - shown[0])  # float sums must not push the bar past 100 %
        if seconds > 0:
            shown[0] += seconds
            overall.update(seconds)

    def progress(pair: Pair, fraction: float) -> None:
        if current[0] != pair.key:
            current[0] = pair.key
            per_file.reset(total=100)
            per_file.set_description_str(pair.key, refresh=False)
        per_file.update(max(0.0, round(100 * fraction) - per_file.n))
        # Feed the overall bar as the edit goes, so its time-left estimate moves during long files too.
        gained = weight[pair.key] * min(1.0, max(0.0, fraction)) - credited.get(pair.key, 0.0)
        if gained > 0:
            credited[pair.key] = credited.get(pair.key, 0.0) + gained
            advance(gained)

    started = time.monotonic()
    try:
        for outcome in backend.run(todo, progress):
            pair = outcome.pair
            rest = weight[pair.key] - credited.get(pair.key, 0.0)
            if rest > 0:
                credited[pair.key] = weight[pair.key]
                advance(rest)
            row = summary.rows[pair.source.rel]
            if outcome.error is None and _stamp(pair.source.path) != stamps[pair.key]:
                # made from a source that changed under it: recorded as such (its result stays the batch's to
                # replace), and rendered again by the next run
                changed = f"{pair.source.rel} changed while it was rendered: run the batch again to render it as it is"
                entry = _entry(pair, out, settings, CHANGED, changed)
                entry["earlier_output"] = out_name(outcome.output or pair.output, out)
                summary.failed += 1
                row[pair.label] = "FAILED"
                summary.errors.append(f"{pair.key}: {changed}")
                tqdm.write(f"failed: {pair.key}: {changed}", file=stream)
            elif outcome.error is None:
                entry = _entry(pair, out, settings, DONE, None, outcome)
                summary.done += 1
                row[pair.label] = f"done {outcome.seconds:.1f}s"
                for note in outcome.info.get("warnings") or ():
                    summary.notes.setdefault(str(note), []).append(pair.key)
            else:
                entry = _entry(pair, out, settings, FAILED, str(outcome.error), outcome)
                summary.failed += 1
                row[pair.label] = "FAILED"
                summary.errors.append(f"{pair.key}: {outcome.error}")
                tqdm.write(f"failed: {pair.key}: {outcome.error}", file=stream)
            manifest.record(pair.key, entry, claimed=out_name(pair.output, out))
        if server:  # every job of the run ended: none to end next time
            manifest.data.pop("server_jobs", None)
        manifest.save()  # whole, with the journalled outcomes
    finally:
        per_file.close()
        overall.close()
        summary.seconds = time.monotonic() - started
    return summary


def _stamp(path: Path) -> tuple[int, int] | None:
    """A source's size and modification time, None when it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _entry(
    pair: Pair, out: Path, settings: dict, status: str, error: str | None, outcome: Outcome | None = None
) -> dict:
    entry: dict[str, Any] = {
        "status": status,
        "input": shown_path(pair.source.path),  # a name of bytes that are not UTF-8 as \xNN: JSON is text
        "input_rel": pair.source.rel,
        "edit": pair.edit,
        "label": pair.label,
        "region": [pair.source.start_s, pair.source.end_s],
        "output": out_name(pair.output, out),
        "settings": settings,
        "error": error,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if pair.source.meta:
        entry["rpp"] = pair.source.meta
    try:
        entry["input_size"] = pair.source.path.stat().st_size
        entry["input_sha256"] = file_sha256(pair.source.path)
    except OSError:
        pass
    if outcome is not None:
        entry["seconds"] = round(outcome.seconds, 3)
        if outcome.error is None and outcome.output is not None:
            if outcome.output != pair.output:  # the server may have chosen another name
                entry["output"] = out_name(outcome.output, out)
            entry["output_size"] = outcome.output.stat().st_size
            entry["seed"] = outcome.seed
            entry["levels"] = outcome.info.get("levels")
            entry["timings"] = outcome.info.get("timings")
            entry["model"] = outcome.info.get("model", settings.get("model"))
            entry["info"] = outcome.info
    return entry


def format_summary(summary: Summary, labels: list[str], out: Path, headline: str | None = None) -> str:
    """The table printed at the end: one row per input, one column per edit, then the totals (or `headline`) and
    every error and refusal with its reason."""
    name_width = min(48, max([len("input")] + [len(r) for r in summary.rows]))
    widths = [max(len(label), 13) for label in labels]
    lines = ["  ".join(["input".ljust(name_width)] + [lab.ljust(w) for lab, w in zip(labels, widths, strict=True)])]
    lines.append("  ".join(["-" * name_width] + ["-" * w for w in widths]))
    for rel, cells in summary.rows.items():
        name = rel if len(rel) <= name_width else "…" + rel[-(name_width - 1) :]
        lines.append(
            "  ".join(
                [name.ljust(name_width)] + [cells.get(lab, "-").ljust(w) for lab, w in zip(labels, widths, strict=True)]
            )
        )
    lines.append(
        headline
        or f"{summary.done} rendered, {summary.skipped} already done, {summary.failed} failed"
        + (f", {summary.not_retried} failed earlier (not retried)" if summary.not_retried else "")
        + (f", {summary.unsupported} refused" if summary.unsupported else "")
        + f" in {summary.seconds:.1f} s; results in {out}, manifest {out / MANIFEST_NAME}"
    )
    lines += [f"  {error}" for error in summary.errors]
    lines += [f"  {rel}: refused: {reason}" for rel, reason in summary.refused.items()]
    for note, keys in summary.notes.items():  # one line per distinct note: the card's own verdict is said once
        lines.append(f"  {keys[0]}: note: {note}" if len(keys) == 1 else f"  note ({len(keys)} results): {note}")
    return "\n".join(lines)


# --- the command -------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session", help="session folder (searched recursively) or REAPER project (.rpp)")
    parser.add_argument(
        "--edit", action="append", default=[], metavar="TEXT", help='an edit, e.g. "extract drums" (repeatable)'
    )
    parser.add_argument("-o", "--output", required=True, help="output folder (mirrors the session's tree)")
    add_model_arguments(parser)
    add_edit_options(parser)
    parser.add_argument("--retry-failed", action="store_true", help="retry pairs that failed in an earlier run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be rendered, skipped and refused (and why); no model"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--server",
        nargs="?",
        const="",
        metavar="[HOST:]PORT",
        help="send the jobs to a running `imusic serve` (default: IMUSIC_HOST / IMUSIC_PORT, else "
        f"{protocol.DEFAULT_HOST}:{protocol.DEFAULT_PORT})",
    )
    where.add_argument(
        "--ray", metavar="ADDRESS", help="spread the edits over a Ray cluster ('auto', 'ray://host:10001', or 'local')"
    )
    parser.add_argument(
        "--workers", type=workers_option, default=None, metavar="N", help="with --ray: number of model workers (>= 1)"
    )


def _load_backend(args: argparse.Namespace) -> Any:
    options = EditOptions.from_args(args)
    if args.server is not None:
        return ServerBackend(args.server, options)
    load = {"source": args.model, "adapter": args.adapter, "device": args.device, "dtype": args.dtype}
    if args.ray:
        return RayBackend(args.ray, load, options, workers=args.workers)
    from engine.editor import Editor

    return InProcessBackend(Editor.load(**load), options)


def _settings(args: argparse.Namespace, model: str | None, engine: dict | None = None) -> dict:
    """What a result depends on besides its input: a pair done with other settings is rendered again. The model by
    its card's name and by its files (weights_identity: a retrained adapter or another model of the same name is
    another model), as the loaded engine reports them (`engine`: the backend's model_info, the Editor's info here,
    on Ray or from a server's pong), else as the files are here; a server from before 2026-12-08 says only the name."""
    from engine.modes import canonical_mode
    from engine.weights.loader import weights_identity

    mode = canonical_mode(args.mode)  # "--mode MASK", "--mode mask" and no --mode: the same results
    weights = (engine or {}).get("weights") or None
    if weights is None and args.server is None:
        weights = weights_identity(args.model, args.adapter)
    return {"model": model, "weights": weights, **EditOptions.from_args(args).kwargs(), "mode": mode}


def _card_vocabulary(args: argparse.Namespace) -> tuple[Callable[[str], Any], str | None, Callable[[str], str]]:
    """Parse edits, name the model and say its card's notes without loading it (engine.weights.peek_card); where only
    loading tells, every instrument the engine knows (the model itself decides when it loads) and no notes."""
    from engine.eval.verdict import card_verdict, shortfall_note
    from engine.instructions import parse_instruction
    from engine.weights import peek_card

    card = peek_card(args.model, args.adapter)
    name = (card or {}).get("name")
    verdict = card_verdict(card or {})  # peek_card keeps a verdict only for the folder's own adapter

    def note(text: str) -> str:
        return shortfall_note(str(name), verdict, parse_instruction(text, card).op) if name else ""

    return (lambda text: parse_instruction(text, card)), name, note


def _unreadable(path: Path) -> str | None:
    """Why a source file cannot be read as audio, from its header (bounded: audio_read.probe), or None."""
    from bridge.audio_read import probe

    try:
        probe(path)
    except (ImusicError, OSError, ValueError) as exc:
        return str(exc)
    return None


def dry_run(args: argparse.Namespace, sources: list[Source], out: Path) -> int:
    """`imusic batch --dry-run`: what a run would render, skip and refuse, and why; no model, nothing written."""
    parse, model, note = _card_vocabulary(args)
    labels = check_edits(args.edit, parse, args.mode)
    manifest = Manifest(out / MANIFEST_NAME)  # read only: a dry run never saves it
    pairs = plan_refusing_results(sources, labels, out, manifest)
    settings = _settings(args, model)
    summary = Summary()
    todo = triage(pairs, manifest, out, settings, summary, retry_failed=args.retry_failed)
    notes = {text: note(text) for text, _ in labels}
    # a file that is not readable audio fails its pairs in the run: said here from its header (it was "to render")
    unreadable: dict[Path, str | None] = {}
    for pair in todo:
        if pair.source.path not in unreadable:  # each file once, said under its own name
            unreadable[pair.source.path] = why = _unreadable(pair.source.path)
            if why:
                summary.errors.append(f"{pair.source.rel}: will fail: {why}")
    failing = [pair for pair in todo if unreadable[pair.source.path]]
    todo = [pair for pair in todo if not unreadable[pair.source.path]]
    for pair in failing:
        summary.rows[pair.source.rel][pair.label] = "will fail"
    for pair in todo:
        summary.rows[pair.source.rel][pair.label] = "to render"
        if notes[pair.edit]:  # the card's own verdict, before hours of rendering
            summary.notes.setdefault(notes[pair.edit], []).append(pair.key)
    headline = (
        f"dry run: {len(todo)} to render, {summary.skipped} already done, {summary.unsupported} refused"
        + (f", {len(failing)} will fail (not readable audio)" if failing else "")
        + (f", {summary.not_retried} failed earlier (not retried)" if summary.not_retried else "")
        + "; no model was loaded, nothing was written"
    )
    print(format_summary(summary, [label for _, label in labels], out, headline=headline))
    return 0 if todo or summary.skipped else 1


def run(args: argparse.Namespace) -> int:
    """`imusic batch`: check everything that can be checked, load the model once, render, print the table."""
    session = user_path(args.session)
    out = user_path(args.output)
    if not args.edit:
        raise ConfigError('give at least one --edit, e.g. --edit "extract drums"')
    if args.workers is not None and not args.ray:
        raise ConfigError("--workers goes with --ray (the workers of a Ray cluster); a batch in this process has one")
    check_text_path(session, "the session")
    check_text_path(out, "the output folder")
    # Cheap checks first: a producer should not wait for a model to load to hear that a folder is wrong.
    sources = collect_sources(session)
    if args.server is not None:
        ServerBackend.address(args.server, EditOptions.from_args(args))  # a dry run says a bad one too
    made = folders_to_make(out)
    check_output_folder(session, out, make=not args.dry_run)
    if args.dry_run:
        return dry_run(args, sources, out)
    lock = claim_output_folder(out)
    manifest = Manifest(out / MANIFEST_NAME)
    backend = None
    began = False
    try:
        if all(source.problem for source in sources):
            # Nothing can be rendered: say why at once instead of loading a model for nothing.
            parse, model, _ = _card_vocabulary(args)
        else:
            backend = _load_backend(args)
            parse, model = backend.parse, backend.model_info.get("model")
        labels = check_edits(args.edit, parse, args.mode)
        pairs = plan_refusing_results(sources, labels, out, manifest)
        settings = _settings(args, model, backend.model_info if backend is not None else None)
        manifest.data.update(
            session=str(session.resolve()),
            output=str(out.resolve()),
            edits=[t for t, _ in labels],
            model=model,
        )
        if backend is not None:
            manifest.data["engine"] = jsonable(backend.model_info)  # device, dtype, server or Ray workers
        began = True
        summary = run_batch(
            pairs,
            backend,
            manifest,
            out,
            settings,
            retry_failed=args.retry_failed,
            show_progress=False if args.no_progress else None,
        )
    finally:
        if backend is not None:
            backend.close()
        if not began and made:  # made[0] is OUT
            unlock_and_remove(lock)  # stopped before any pair (no server there, an unknown edit): no folder of ours
            remove_made_folders(made)  # is left, and a batch that opened the lock file meanwhile takes a new one
        else:
            lock.close()
    print(format_summary(summary, [label for _, label in labels], out))
    return summary.exit_code
