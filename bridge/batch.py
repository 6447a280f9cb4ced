"""`imusic batch`: render every audio file of a session folder (or every audio item of a REAPER .rpp) with every
requested edit, resumably.

    imusic batch SESSION_DIR --edit "extract drums" --edit "remove bass" -o OUT
    imusic batch song.rpp --edit "no drums" -o OUT [--server [HOST:]PORT] [--ray ADDRESS]

One output per (input, edit), mirrored under OUT, at the source's rate and length, written to a temporary name and
renamed. OUT/manifest.json (rewritten atomically after every pair) records each pair's status, timings, model, seed
and levels, with the input's size and SHA-256 and the output's size: a rerun skips a pair only when all of those
still match, and retries failures only with --retry-failed.

The model runs in-process (loaded once), on a running `imusic serve` (--server), or on a Ray cluster (--ray), one
resident model per worker. Heavy imports (torch, ray) happen inside functions: `imusic batch --help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge import files
from bridge.cli import takes_option
from bridge.files import jsonable, write_json_atomic
from bridge.sources import Source, collect_sources, find_audio_files, read_rpp  # noqa: F401 (re-exported)
from engine.errors import (
    AudioError,
    CheckpointError,
    ConfigError,
    DataError,
    ImusicError,
    InstructionError,
    ResourceError,
)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "imusic-batch/1"
# Errors from the server that concern the whole batch, not one pair: stop at once instead of failing every pair.
FATAL_REMOTE_CODES = ("bad_instruction", "forbidden_path", "unavailable", "bad_checkpoint", "bad_config")


# --- what to render ----------------------------------------------------------------------------------------------


@dataclass
class Pair:
    source: Source
    edit: str  # the instruction as typed
    label: str  # Instruction.label, e.g. "extract drums"
    output: Path

    @property
    def key(self) -> str:
        return f"{self.source.rel} | {self.label}"


def slug(label: str) -> str:
    """File-name form of an edit label: "extract drums" -> "extract_drums"."""
    return files.slug(label, limit=80, separator="_")


def check_output_folder(session: Path, out: Path) -> None:
    """Refuse an output folder inside a session folder (a rerun would edit its own results) or one we cannot write."""
    session_dir = session.resolve() if session.is_dir() else None
    out_resolved = out.resolve()
    if session_dir is not None and (out_resolved == session_dir or session_dir in out_resolved.parents):
        raise ConfigError(f"the output folder {out} is inside the session folder {session}: choose one outside it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        # A real write, not os.access: access() says yes to root on read-only folders and knows nothing of mounts.
        with tempfile.NamedTemporaryFile(dir=out, prefix=".imusic-write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot write to the output folder {out}: {reason}") from None


def claim_output_folder(out: Path) -> Any:
    """Lock OUT for this run (two batches writing one manifest would lose records) and sweep up the temporary files
    a killed run left behind. Returns the open lock file; the lock ends when it is closed or the process dies."""
    handle = open(out / ".imusic-batch.lock", "a+")  # noqa: SIM115 (held for the whole run)
    try:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        pass  # Windows: no advisory lock; one batch per output folder is then the user's care
    except OSError:
        handle.close()
        raise ConfigError(f"another imusic batch is writing to {out}; wait for it or choose another folder") from None
    for leftover in out.rglob(".*.partial.wav"):  # audio_io.write_atomic's temporary names
        leftover.unlink(missing_ok=True)
    for leftover in out.glob(f".{MANIFEST_NAME}.*.tmp"):
        leftover.unlink(missing_ok=True)
    return handle


def plan_pairs(sources: list[Source], labels: list[tuple[str, str]], out: Path) -> list[Pair]:
    """Every (source, edit) pair with its output path: OUT/<rel>.<edit slug>.wav."""
    pairs = []
    for source in sources:
        for text, label in labels:
            name = f"{Path(source.rel).name}.{slug(label)}.wav"
            pairs.append(Pair(source, text, label, out / Path(source.rel).parent / name))
    return pairs


def check_edits(edits: list[str], parse: Callable[[str], Any], mode: str = "") -> list[tuple[str, str]]:
    """Parse every edit before any work: unknown ones, duplicates (same operation and stem) and a mode that does not
    apply to one of them are refused."""
    from engine.mask import check_mode

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


# --- the manifest ------------------------------------------------------------------------------------------------


class Manifest:
    """OUT/manifest.json: one record per (input, edit) pair, keyed by Pair.key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"format": MANIFEST_FORMAT, "pairs": {}}
        if path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise DataError(f"{path} is unreadable ({exc}); move it away to start this batch afresh") from None
            if not isinstance(loaded, dict) or loaded.get("format") != MANIFEST_FORMAT:
                raise DataError(f"{path} is not an imusic batch manifest; choose another output folder")
            self.data = loaded

    @property
    def pairs(self) -> dict[str, dict]:
        return self.data["pairs"]

    def record(self, key: str, entry: dict) -> None:
        self.pairs[key] = jsonable(entry)
        self.save()

    def save(self) -> None:
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json_atomic(self.path, self.data)


def file_sha256(path: Path, _cache: dict[tuple[str, int, int], str] = {}) -> str:  # noqa: B006 (per-process cache)
    """SHA-256 of a file, cached per (path, size, mtime) for the life of the process."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _cache[key] = digest.hexdigest()
    return _cache[key]


def is_done(entry: dict | None, pair: Pair, out: Path, settings: dict) -> bool:
    """A pair is done when the manifest says so AND its output file, its input and the settings all still match."""
    if not entry or entry.get("status") != "done":
        return False
    output = out / entry.get("output", "")
    try:
        if not output.is_file() or output.stat().st_size != entry.get("output_size"):
            return False
        if pair.source.path.stat().st_size != entry.get("input_size"):
            return False
        if file_sha256(pair.source.path) != entry.get("input_sha256"):
            return False
    except OSError:
        return False
    region = [pair.source.start_s, pair.source.end_s]
    return entry.get("settings") == settings and entry.get("region") == region


# --- the backends: in-process, server, Ray -----------------------------------------------------------------------


@dataclass
class Outcome:
    """What a backend reports for one pair: the written output and the edit's info, or an error."""

    pair: Pair
    output: Path | None = None
    info: dict = field(default_factory=dict)
    seed: int | None = None
    seconds: float = 0.0
    error: ImusicError | None = None


def _end(source: Source) -> float:
    # audio_io takes a negative end as "to the end of the file".
    return -1.0 if source.end_s is None else source.end_s


def _edit_pair(editor: Any, pair: Pair, options: dict, progress: Callable[[float, str], None] | None) -> Outcome:
    """One pair, in this process: the one edit path (read, edit, conform, write atomically)."""
    from bridge.editing import edit_region

    started = time.monotonic()
    done = edit_region(
        editor, pair.source.path, pair.source.start_s, _end(pair.source), pair.edit, pair.output,
        options=options, overwrite=True, progress=progress,
    )  # fmt: skip
    return Outcome(pair, done.output_path, done.info, done.seed, time.monotonic() - started)


class InProcessBackend:
    """The model loaded once in this process."""

    def __init__(self, editor: Any, *, seed: int | None, takes: int, raw: bool, mode: str = "") -> None:
        self.editor = editor
        self.options = {"seed": seed, "takes": takes, "raw": raw, "mode": mode}
        self.model_info = dict(editor.info)
        self.per_file_progress = True

    def parse(self, text: str) -> Any:
        return self.editor.parse(text)

    def run(self, pairs: list[Pair], progress: Callable[[Pair, float], None]) -> Iterator[Outcome]:
        for pair in pairs:
            try:
                yield _edit_pair(self.editor, pair, self.options, lambda f, _stage, p=pair: progress(p, f))
            except ImusicError as exc:
                if isinstance(exc, ResourceError):
                    raise
                yield Outcome(pair, error=exc)
            except (OSError, ValueError, RuntimeError) as exc:
                # A file the reader chokes on, or a bug on one input: report this pair, keep rendering the others.
                yield Outcome(pair, error=AudioError(f"{type(exc).__name__}: {exc}"))

    def close(self) -> None:
        pass


class ServerBackend:
    """Jobs sent to a running `imusic serve`; the server reads the region and writes the result itself."""

    # A server that says nothing about a running job for this long has died or hangs (it answers status queries
    # every few seconds even while busy): the batch stops with a clear error instead of waiting forever.
    silence_limit_s = 60.0

    def __init__(self, address: str, *, seed: int | None, takes: int, mode: str = "") -> None:
        from bridge import protocol
        from bridge.client import Client, NoReply

        host, _, port = address.rpartition(":") if ":" in address else ("", "", address)
        try:
            self.client = Client(host or protocol.DEFAULT_HOST, int(port or protocol.DEFAULT_PORT))
        except ValueError:
            raise ConfigError(f"--server {address}: give [HOST:]PORT, e.g. 127.0.0.1:{protocol.DEFAULT_PORT}") from None
        try:
            pong = self.client.ping(timeout=3.0)
        except NoReply:
            self.client.close()
            raise ConfigError(f"no imusic server answers at {address}: start one with `imusic serve`") from None
        version, model, device = (pong.args + ["", "", ""])[:3]
        self.model_info = {"model": model, "device": device, "server": address, "server_version": version}
        self.seed, self.takes, self.mode = seed, takes, mode
        self.per_file_progress = True
        self.submitted: set[str] = set()

    def parse(self, text: str) -> Any:
        # Only the server knows its model's stems; it refuses an unknown instruction when the job arrives, and the
        # batch stops at once on that error (see FATAL_REMOTE_CODES). Here we only read the words.
        from engine.instructions import parse_instruction

        return parse_instruction(text, None)

    def _submit(self, pair: Pair, job_id: str) -> None:
        pair.output.parent.mkdir(parents=True, exist_ok=True)
        # An output file the manifest does not vouch for is a leftover: the server must not pick another name.
        pair.output.unlink(missing_ok=True)
        self.client.submit(
            str(pair.source.path),
            pair.source.start_s,
            _end(pair.source),
            pair.edit,
            output_path=str(pair.output),
            seed=self.seed,
            takes=self.takes,
            mode=self.mode,
            job_id=job_id,
        )

    def _check_edits_on_server(self, pairs: list[Pair], job_ids: dict[str, str]) -> None:
        """Submit the first pair of every edit and wait for accepted/error: only the server knows its model's stems,
        and it checks the instruction before queueing. One it refuses stops the batch before the rest is sent."""
        from bridge import protocol
        from bridge.client import NoReply

        firsts = list({pair.label: pair for pair in reversed(pairs)}.values())[::-1]
        for pair in firsts:
            self._submit(pair, job_ids[pair.key])
        refused = None
        for pair in firsts:
            job_id = job_ids[pair.key]
            try:
                reply = self.client.wait_for(lambda r, j=job_id: r.job_id == j, timeout=30.0)
            except NoReply:
                raise ResourceError("the server stopped answering; is `imusic serve` still running?") from None
            if reply.address == protocol.ERROR and reply.code in FATAL_REMOTE_CODES and refused is None:
                refused = f"the server refused '{pair.edit}': {reply.message}"
            self.client.tracker.handle(reply, time.monotonic())  # a job already over is over for wait() too
        if refused is not None:
            for pair in firsts:
                with contextlib.suppress(ImusicError):
                    self.client.cancel(job_ids[pair.key])
            raise ConfigError(refused)
        self.submitted = {job_ids[p.key] for p in firsts}

    def run(self, pairs: list[Pair], progress: Callable[[Pair, float], None]) -> Iterator[Outcome]:
        from bridge.client import NoReply, RemoteError

        # Job ids are unique to this run: the server remembers finished ids, and a rerun must really render again.
        nonce = os.urandom(4).hex()
        job_ids = {pair.key: f"batch-{nonce}-{i}" for i, pair in enumerate(pairs)}
        if pairs:
            self._check_edits_on_server(pairs, job_ids)
        for pair in pairs:
            started = time.monotonic()
            job_id = job_ids[pair.key]
            try:
                if job_id not in self.submitted:
                    self._submit(pair, job_id)
                result = self.client.wait(
                    job_id, on_progress=lambda f, _stage, p=pair: progress(p, f), give_up_after=self.silence_limit_s
                )
            except NoReply as exc:
                # The server died or hangs: every other pair would wait the same way. Stop; a rerun resumes.
                raise ResourceError(f"{exc}; rerun the same batch command to resume") from None
            except RemoteError as exc:
                if exc.code in FATAL_REMOTE_CODES:
                    raise ConfigError(f"the server refused '{pair.edit}' on {pair.source.rel}: {exc}") from None
                yield Outcome(pair, error=exc)
                continue
            info = dict(result.info or {})
            yield Outcome(pair, Path(result.output_path), info, info.get("seed"), time.monotonic() - started)

    def close(self) -> None:
        self.client.close()


class RayEditWorker:
    """A Ray actor holding one resident model (created with ray.remote(...)(RayEditWorker) in RayBackend)."""

    def __init__(self, load: dict) -> None:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        from engine.editor import Editor

        self.editor = Editor.load(**load)

    def info(self) -> dict:
        return jsonable(dict(self.editor.info))

    def parse(self, text: str) -> tuple[str, str]:
        # Exceptions are returned, not raised: the driver gets our own error class back, not a Ray wrapper.
        try:
            return ("ok", self.editor.parse(text).label)
        except InstructionError as exc:
            return ("error", str(exc))

    def edit(self, audio: Any, sample_rate: int, text: str, options: dict) -> tuple:
        started = time.monotonic()
        try:
            result = self.editor.edit(audio, sample_rate, text, **options)
        except ImusicError as exc:
            return ("error", type(exc).__name__, str(exc))
        info = jsonable(dict(result.info or {}))
        return ("ok", result.audio, result.sample_rate, result.seed, info, time.monotonic() - started)


@dataclass(frozen=True)
class _Label:
    label: str


class RayBackend:
    """(input, edit) pairs spread over a Ray cluster: one actor per GPU (or per CPU worker), each with one model.

    The driver reads each region and writes each result, so workers need no access to the session's files; only the
    model (--model path, or the embedded default) must exist on every worker.
    """

    def __init__(
        self, address: str, load: dict, *, workers: int | None, seed: int | None, takes: int, raw: bool, mode: str = ""
    ):
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "--ray needs Ray: pip install 'instruct-musicgen-daw[cluster]' (or pip install ray)"
            ) from None
        self.ray = ray
        init: dict[str, Any] = {"address": address, "log_to_driver": False}
        if address == "local":  # a private single-machine instance: size it here, nothing else shares it
            init.update(num_cpus=workers or 1, include_dashboard=False)
        try:
            ray.init(**init)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot join the Ray cluster at {address}: {exc}") from None
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = workers or max(gpus, 1)
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        actor_class = ray.remote(**resources)(RayEditWorker)
        self.actors = [actor_class.remote(load) for _ in range(count)]
        try:
            self.model_info = ray.get(self.actors[0].info.remote())
        except ray.exceptions.RayError as exc:
            self.close()
            raise CheckpointError(f"the Ray workers could not load the model: {exc}") from None
        self.model_info["workers"] = count
        self.model_info["gpus"] = gpus
        self.options = {"seed": seed, "takes": takes, "raw": raw, "mode": mode}
        self.per_file_progress = False

    def parse(self, text: str) -> Any:
        status, value = self.ray.get(self.actors[0].parse.remote(text))
        if status != "ok":
            raise InstructionError(value)
        return _Label(value)

    def run(self, pairs: list[Pair], progress: Callable[[Pair, float], None]) -> Iterator[Outcome]:
        from bridge.audio_io import read_region
        from bridge.editing import write_result

        ray = self.ray
        queue = list(pairs)
        idle = list(self.actors) * 2  # two jobs in flight per actor: the next input is ready when one finishes
        pending: dict[Any, tuple[Pair, Any, Any, int]] = {}
        while queue or pending:
            while queue and idle:
                pair, actor = queue.pop(0), idle.pop(0)
                try:
                    audio, rate = read_region(pair.source.path, pair.source.start_s, _end(pair.source))
                except (ImusicError, OSError, ValueError) as exc:
                    idle.append(actor)
                    yield Outcome(pair, error=exc if isinstance(exc, ImusicError) else AudioError(str(exc)))
                    continue
                ref = actor.edit.remote(audio, rate, pair.edit, self.options)
                pending[ref] = (pair, actor, audio, rate)
            if not pending:
                continue
            done, _ = ray.wait(list(pending), num_returns=1)
            pair, actor, source, rate = pending.pop(done[0])
            idle.append(actor)
            try:
                reply = ray.get(done[0])
            except ray.exceptions.RayError as exc:
                yield Outcome(pair, error=ResourceError(f"a Ray worker failed: {exc}"))
                continue
            if reply[0] != "ok":
                yield Outcome(pair, error=AudioError(reply[2]) if reply[1] == "AudioError" else ImusicError(reply[2]))
                continue
            _, audio, result_rate, seed, info, seconds = reply  # the worker's time: queueing behind a job is not it
            try:
                written, info = write_result(pair.output, audio, result_rate, source, rate, info, overwrite=True)
            except (ImusicError, OSError) as exc:
                yield Outcome(pair, error=exc if isinstance(exc, ImusicError) else AudioError(str(exc)))
                continue
            progress(pair, 1.0)
            yield Outcome(pair, written, info, seed, seconds)

    def close(self) -> None:
        self.ray.shutdown()


# --- the run -----------------------------------------------------------------------------------------------------


@dataclass
class Summary:
    done: int = 0  # rendered in this run
    skipped: int = 0  # already done by an earlier run
    failed: int = 0  # failed in this run
    not_retried: int = 0  # failed earlier, left alone (no --retry-failed)
    unsupported: int = 0
    seconds: float = 0.0
    rows: dict[str, dict[str, str]] = field(default_factory=dict)  # source rel -> label -> cell
    errors: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # source rel -> why it cannot be rendered

    @property
    def exit_code(self) -> int:
        """1 when a pair failed, or when nothing at all is (or was) rendered; 0 otherwise."""
        return 1 if self.failed or self.not_retried or not (self.done or self.skipped) else 0


def _duration(source: Source) -> float | None:
    """Seconds of audio this source covers, from the file header; None when the header is unreadable."""
    if source.end_s is not None:
        return max(0.0, source.end_s - source.start_s)
    from bridge.audio_io import probe

    try:
        return probe(source.path).duration
    except (ImusicError, OSError, ValueError):
        return None  # an unreadable file: its pairs are still tried, and fail with the reader's message


def triage(
    pairs: list[Pair], manifest: Manifest, out: Path, settings: dict, summary: Summary, *, retry_failed: bool = False
) -> list[Pair]:
    """Sort pairs into refused, done before, failed before (counted in `summary`, with their table cells) and the
    ones to render now (returned). Reads the manifest, writes nothing."""
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
        elif entry and entry.get("status") == "failed" and not retry_failed and entry.get("settings") == settings:
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
            manifest.pairs[pair.key] = jsonable(_entry(pair, out, settings, "unsupported", pair.source.problem))
    manifest.save()
    if not todo:
        return summary

    durations = {p.source.rel: _duration(p.source) for p in todo}
    known = [d for d in durations.values() if d is not None]
    fallback = sum(known) / len(known) if known else 1.0
    weight = {p.key: durations[p.source.rel] or fallback for p in todo}  # seconds of audio: the ETA's unit
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
            if outcome.error is None:
                entry = _entry(pair, out, settings, "done", None, outcome)
                summary.done += 1
                row[pair.label] = f"done {outcome.seconds:.1f}s"
            else:
                entry = _entry(pair, out, settings, "failed", str(outcome.error), outcome)
                summary.failed += 1
                row[pair.label] = "FAILED"
                summary.errors.append(f"{pair.key}: {outcome.error}")
                tqdm.write(f"failed: {pair.key}: {outcome.error}", file=stream)
            manifest.record(pair.key, entry)
    finally:
        per_file.close()
        overall.close()
        summary.seconds = time.monotonic() - started
    return summary


def _entry(
    pair: Pair, out: Path, settings: dict, status: str, error: str | None, outcome: Outcome | None = None
) -> dict:
    entry: dict[str, Any] = {
        "status": status,
        "input": str(pair.source.path),
        "input_rel": pair.source.rel,
        "edit": pair.edit,
        "label": pair.label,
        "region": [pair.source.start_s, pair.source.end_s],
        "output": pair.output.relative_to(out).as_posix(),
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
                entry["output"] = os.path.relpath(outcome.output, out)
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
    return "\n".join(lines)


# --- the command -------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session", help="session folder (searched recursively) or REAPER project (.rpp)")
    parser.add_argument(
        "--edit", action="append", default=[], metavar="TEXT", help='an edit, e.g. "extract drums" (repeatable)'
    )
    parser.add_argument("-o", "--output", required=True, help="output folder (mirrors the session's tree)")
    parser.add_argument("--model", default=None, help="model directory or checkpoint (default: the embedded model)")
    parser.add_argument("--adapter", default=None, help="adapter directory to load on top of the model")
    parser.add_argument("--device", default=None, help="torch device for the model (default: the best available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the device's best)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed for every edit (default: random)")
    parser.add_argument("--takes", type=takes_option, default=1, help="generate N takes per edit and keep the best")
    parser.add_argument(
        "--mode", default="", help="mask (the edit keeps the recording; the default) or resynth (the model's output)"
    )
    parser.add_argument("--raw", action="store_true", help="skip loudness matching and peak limiting")
    parser.add_argument("--retry-failed", action="store_true", help="retry pairs that failed in an earlier run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be rendered, skipped and refused (and why); no model"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--server",
        nargs="?",
        const="127.0.0.1:9137",
        metavar="[HOST:]PORT",
        help="send the jobs to a running `imusic serve` (default 127.0.0.1:9137)",
    )
    where.add_argument(
        "--ray", metavar="ADDRESS", help="spread the edits over a Ray cluster ('auto', 'ray://host:10001', or 'local')"
    )
    parser.add_argument("--workers", type=int, default=None, help="with --ray: number of model workers")


def _load_backend(args: argparse.Namespace) -> Any:
    if args.server:
        if args.raw:
            raise ConfigError("--raw is not available with --server (the server always matches levels)")
        return ServerBackend(args.server, seed=args.seed, takes=args.takes, mode=args.mode)
    load = {"source": args.model, "adapter": args.adapter, "device": args.device, "dtype": args.dtype}
    if args.ray:
        return RayBackend(
            args.ray, load, workers=args.workers, seed=args.seed, takes=args.takes, raw=args.raw, mode=args.mode
        )
    from engine.editor import Editor

    return InProcessBackend(Editor.load(**load), seed=args.seed, takes=args.takes, raw=args.raw, mode=args.mode)


def _settings(args: argparse.Namespace, model: str | None) -> dict:
    """What a result depends on besides its input: a pair done with other settings is rendered again."""
    return {"model": model, "seed": args.seed, "takes": args.takes, "raw": bool(args.raw), "mode": args.mode}


def _card_vocabulary(args: argparse.Namespace) -> tuple[Callable[[str], Any], str | None]:
    """Parse edits and name the model without loading it (engine.weights.peek_card); where only loading tells, every
    instrument the engine knows (the model itself decides when it loads)."""
    from engine.instructions import parse_instruction
    from engine.weights import peek_card

    card = peek_card(args.model, args.adapter)
    return (lambda text: parse_instruction(text, card)), (card or {}).get("name")


def dry_run(args: argparse.Namespace, sources: list[Source], out: Path) -> int:
    """`imusic batch --dry-run`: what a run would render, skip and refuse, and why; no model, nothing written."""
    parse, model = _card_vocabulary(args)
    labels = check_edits(args.edit, parse, args.mode)
    pairs = plan_pairs(sources, labels, out)
    manifest = Manifest(out / MANIFEST_NAME)  # read only: a dry run never saves it
    settings = _settings(args, model)
    summary = Summary()
    todo = triage(pairs, manifest, out, settings, summary, retry_failed=args.retry_failed)
    for pair in todo:
        summary.rows[pair.source.rel][pair.label] = "to render"
    headline = (
        f"dry run: {len(todo)} to render, {summary.skipped} already done, {summary.unsupported} refused"
        + (f", {summary.not_retried} failed earlier (not retried)" if summary.not_retried else "")
        + "; no model was loaded, nothing was written"
    )
    print(format_summary(summary, [label for _, label in labels], out, headline=headline))
    return 0 if todo or summary.skipped else 1


def run(args: argparse.Namespace) -> int:
    """`imusic batch`: check everything that can be checked, load the model once, render, print the table."""
    session = Path(args.session).expanduser()
    out = Path(args.output).expanduser()
    if not args.edit:
        raise ConfigError('give at least one --edit, e.g. --edit "extract drums"')
    # Cheap checks first: a producer should not wait for a model to load to hear that a folder is wrong.
    sources = collect_sources(session)
    if args.dry_run:
        return dry_run(args, sources, out)
    check_output_folder(session, out)
    lock = claim_output_folder(out)
    manifest = Manifest(out / MANIFEST_NAME)
    backend = None
    try:
        if all(source.problem for source in sources):
            # Nothing can be rendered: say why at once instead of loading a model for nothing.
            parse, model = _card_vocabulary(args)
        else:
            backend = _load_backend(args)
            parse, model = backend.parse, backend.model_info.get("model")
        labels = check_edits(args.edit, parse, args.mode)
        pairs = plan_pairs(sources, labels, out)
        settings = _settings(args, model)
        manifest.data.update(
            session=str(session.resolve()),
            output=str(out.resolve()),
            edits=[t for t, _ in labels],
            model=model,
        )
        if backend is not None:
            manifest.data["engine"] = jsonable(backend.model_info)  # device, dtype, server or Ray workers
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
        lock.close()
    print(format_summary(summary, [label for _, label in labels], out))
    return summary.exit_code
