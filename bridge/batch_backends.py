"""Where a batch's edits run: in this process, on a running `imusic serve`, or on a Ray cluster.

Each backend has `parse(text)`, `model_info`, `per_file_progress`, `replaceable` (the outputs it may write over: the
batch's own earlier results, set by bridge.batch.run_batch), `run(pairs, progress) -> Iterator[Outcome]` and
`close()`. Heavy imports (torch, ray) happen inside functions: `imusic batch --help` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge import protocol, tracking
from bridge.protocol import EditOptions
from bridge.serve_process import READY_TIMEOUT_S
from bridge.sources import Pair
from engine.errors import (
    AudioError,
    CheckpointError,
    ConfigError,
    ImusicError,
    InstructionError,
    ResourceError,
    error_from_code,
)
from engine.files import NO_ROOM_ERRNOS, jsonable

# Errors from the server that concern the whole batch, not one pair: stop at once instead of failing every pair; as
# in this process, out of memory (or no room to write) stops it (ResourceError), another write failure costs one pair
FATAL_REMOTE_CODES = (
    ResourceError.code,
    InstructionError.code,
    protocol.FORBIDDEN_PATH,
    protocol.UNAVAILABLE,
    CheckpointError.code,
    ConfigError.code,
)


@dataclass
class Outcome:
    """What a backend reports for one pair: the written output and the edit's info, or an error."""

    pair: Pair
    output: Path | None = None
    info: dict = field(default_factory=dict)
    seed: int | None = None
    seconds: float = 0.0
    error: ImusicError | None = None


def _appeared(path: Path) -> Path:
    """on_exists of a result whose name was free when the batch began: a file put there since is the user's."""
    raise ConfigError(f"a file appeared at {path} while the batch ran; it is left alone: move it and run again")


def _edit_pair(
    editor: Any, pair: Pair, options: EditOptions, progress: Callable[[float, str], None] | None, replace: bool
) -> Outcome:
    """One pair, in this process: the one edit path (read, edit, conform, write atomically). `replace`: the file at
    the pair's output when the batch began is the batch's own (bridge.batch.triage decided), to be replaced."""
    from bridge.editing import edit_region

    started = time.monotonic()
    done = edit_region(
        editor, pair.source.path, pair.source.start_s, pair.end_s, pair.edit, pair.output,
        options=options, overwrite=replace, on_exists=_appeared, progress=progress,
    )  # fmt: skip
    return Outcome(pair, done.output_path, done.info, done.seed, time.monotonic() - started)


class InProcessBackend:
    """The model loaded once in this process."""

    def __init__(self, editor: Any, options: EditOptions) -> None:
        self.editor = editor
        self.options = options
        self.model_info = dict(editor.info)
        self.per_file_progress = True
        self.replaceable: set[Path] = set()  # outputs the batch's own results held when it began (run_batch sets it)

    def parse(self, text: str) -> Any:
        return self.editor.parse(text)

    def run(self, pairs: list[Pair], progress: Callable[[Pair, float], None]) -> Iterator[Outcome]:
        for pair in pairs:
            try:
                replace = pair.output in self.replaceable
                yield _edit_pair(self.editor, pair, self.options, lambda f, _stage, p=pair: progress(p, f), replace)
            except ImusicError as exc:
                if isinstance(exc, ResourceError):
                    raise
                yield Outcome(pair, error=exc)
            except OSError as exc:
                if exc.errno in NO_ROOM_ERRNOS:  # every pair after it would be edited and thrown away: stop, unrecorded
                    raise _no_room(pair, exc) from None
                yield Outcome(pair, error=AudioError(f"{type(exc).__name__}: {exc}"))
            except (ValueError, RuntimeError) as exc:
                # A file the reader chokes on, or a bug on one input: report this pair, keep rendering the others.
                yield Outcome(pair, error=AudioError(f"{type(exc).__name__}: {exc}"))

    def close(self) -> None:
        pass


EARLIER_SUFFIX = ".earlier"  # --server: a pair's earlier result, set aside while its new one is made


def _no_room(pair: Pair, exc: OSError) -> ResourceError:
    """What stops a batch whose result cannot be written for want of room (NO_ROOM_ERRNOS), whichever backend edits."""
    return ResourceError(
        f"cannot write {pair.output.name} in {pair.output.parent}: {exc.strerror}; make room and run the batch again: "
        "it resumes with the pairs not rendered yet"
    )


class ServerBackend:
    """Jobs sent to a running `imusic serve`; the server reads the region and writes the result itself."""

    silence_limit_s = tracking.GIVE_UP_AFTER_S  # then the batch stops with a clear error instead of waiting forever
    # How long a batch waits for a server still loading its model: the model's instruments name the edits (parse), so
    # a batch parses with them, not with the built-in list that a model of other stems would name otherwise.
    ready_wait_s = READY_TIMEOUT_S

    @staticmethod
    def address(address: str, options: EditOptions) -> tuple[str, int]:
        """(host, port) of --server's [HOST:]PORT, what it leaves out where every client looks; ConfigError for a
        bad one, or for options a server does not take. No connection: a dry run checks this much too."""
        if options.raw:
            raise ConfigError("--raw is not available with --server (the server always matches levels)")
        host, _, port = address.rpartition(":") if ":" in address else ("", "", address)
        host = host or protocol.engine_host()
        port = protocol.port_number(port, f"--server {address}: give [HOST:]PORT; the port") if port else None
        return host, port or protocol.engine_port()

    def __init__(self, address: str, options: EditOptions) -> None:
        from bridge.client import Client, NoReply

        host, port = self.address(address, options)
        self.client = Client(host, port)
        address = f"{host}:{port}"
        try:
            pong = self.client.ping()
        except NoReply:
            self.client.close()
            raise ConfigError(tracking.not_answering(host, port)) from None
        if pong.state in (protocol.LOADING, protocol.WARMING):
            pong = self._wait_ready(pong)
        self.model_info = {"model": pong.model, "device": pong.device, "server": address}
        if pong.weights:  # what its model was loaded from (a server from before 2026-12-08 does not say)
            self.model_info["weights"] = pong.weights
        self.stems = pong.stems  # the loaded model's instruments ([] from a server that names none: the built-in list)
        self.model_info["server_version"] = pong.version
        self.options = options
        self.per_file_progress = True
        self.submitted: set[str] = set()
        self.replaceable: set[Path] = set()  # outputs the batch's own results held when it began (run_batch sets it)
        self.on_submit: Callable[[list[str]], None] | None = None  # records this run's job ids before they are sent

    def _wait_ready(self, pong: Any) -> Any:
        """Ping until the server has its model (its pong then names the model's stems); the last pong when it is not
        ready within ready_wait_s (the batch then parses with the built-in instruments, and says so)."""
        import sys

        from bridge.client import NoReply

        sys.stderr.write(f"imusic batch: the engine is {pong.state} its model; waiting for it\n")
        deadline = time.monotonic() + self.ready_wait_s
        while pong.state in (protocol.LOADING, protocol.WARMING) and time.monotonic() < deadline:
            time.sleep(0.25)
            try:
                pong = self.client.ping()
            except NoReply:
                self.client.close()
                raise ConfigError(tracking.not_answering(*self.client.server)) from None
        if pong.state != protocol.READY:
            sys.stderr.write(
                f"imusic batch: the engine is still {pong.state} after {self.ready_wait_s:g} s: edits are named with "
                "the instruments every model knows\n"
            )
        return pong

    def parse(self, text: str) -> Any:
        # With the stems the server's model knows (its pong), as an in-process batch parses with the model's card: the
        # same labels, so the same file names and manifest keys, and a model's own instruments are not refused here.
        # The server still checks each instruction when its job arrives (see FATAL_REMOTE_CODES).
        from engine.instructions import parse_instruction

        return parse_instruction(text, {"stems": self.stems} if self.stems else None)

    @staticmethod
    def _aside(pair: Pair) -> Path:
        return pair.output.with_name(f".{pair.output.name}{EARLIER_SUFFIX}")

    def _submit(self, pair: Pair, job_id: str) -> None:
        pair.output.parent.mkdir(parents=True, exist_ok=True)
        # The batch's own earlier result moves aside, so that the server does not pick another name, and comes back
        # if the new one is not made (_settle); a file put there since the batch began is the user's: the server
        # writes beside it (`-2`), never over it. One a killed run left aside is the earlier result still.
        aside = self._aside(pair)
        if pair.output in self.replaceable:
            os.replace(pair.output, aside)
        elif aside.exists() and pair.output.exists():  # the killed run's job finished after all: that one is newer
            aside.unlink()
        self.client.submit(
            str(pair.source.path),
            pair.source.start_s,
            pair.end_s,
            pair.edit,
            output_path=str(pair.output),
            seed=self.options.seed,
            takes=self.options.takes,
            mode=self.options.mode or "",
            job_id=job_id,
        )

    # How long a cut run's job may take to end after its cancel (a job stops at its next progress report)
    end_wait_s = 30.0

    def end_earlier_jobs(self, job_ids: list[str]) -> None:
        """Cancel the jobs an earlier run of this batch left on the server (it was killed: Ctrl-C cancels its own),
        and wait for each to end: still queued or running, one would render its pair once more and hold the result's
        name, so that this run's job got another (`-2`). Called before the batch looks at what its outputs hold: a
        job past its last progress report finishes instead, and its file is then the batch's own to replace."""
        from bridge.client import NoReply, RemoteError

        for job_id in job_ids:
            with contextlib.suppress(ImusicError, OSError):
                self.client.send(protocol.CANCEL, job_id)
        for job_id in job_ids:
            with contextlib.suppress(RemoteError, NoReply, OSError):  # cancelled, unknown (long gone), done: ended
                self.client.wait(job_id, timeout=self.end_wait_s)

    def _check_edits_on_server(self, pairs: list[Pair], job_ids: dict[str, str]) -> None:
        """Submit the first pair of every edit and wait for accepted/error: only the server knows its model's stems,
        and it checks the instruction before queueing. One it refuses stops the batch before the rest is sent."""
        from bridge.client import NoReply

        firsts = list({pair.label: pair for pair in reversed(pairs)}.values())[::-1]
        for pair in firsts:
            self._submit(pair, job_ids[pair.key])
        try:
            jobs = self.client.wait_accepted([job_ids[pair.key] for pair in firsts])
        except NoReply as exc:
            raise ResourceError(str(exc)) from None
        refused = [(pair, job) for pair, job in zip(firsts, jobs, strict=True) if job.code in FATAL_REMOTE_CODES]
        if refused:
            for pair in firsts:
                with contextlib.suppress(ImusicError):
                    self.client.cancel(job_ids[pair.key])
            pair, job = refused[0]
            raise ConfigError(f"the server refused '{pair.edit}': {job.error}")
        self.submitted = {job_ids[p.key] for p in firsts}

    def run(self, pairs: list[Pair], progress: Callable[[Pair, float], None]) -> Iterator[Outcome]:
        try:
            yield from self._jobs(pairs, progress)
        except BaseException:  # refused, no answer, Ctrl-C, the batch stopped: the earlier results set aside come back
            self._settle(pairs, made=False)
            raise

    def _jobs(self, pairs: list[Pair], progress: Callable[[Pair, float], None]) -> Iterator[Outcome]:
        from bridge.client import NoReply, RemoteError

        # Job ids are unique to this run: the server remembers finished ids, and a rerun must really render again.
        nonce = os.urandom(4).hex()
        job_ids = {pair.key: f"batch-{nonce}-{i}" for i, pair in enumerate(pairs)}
        if self.on_submit is not None:
            self.on_submit(list(job_ids.values()))
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
            except KeyboardInterrupt:
                # Ctrl-C stops the server's work on this batch too (a rerun resumes what is not done)
                for pending in {job_id, *self.submitted}:
                    with contextlib.suppress(ImusicError, OSError):
                        self.client.send(protocol.CANCEL, pending)
                raise
            except NoReply as exc:
                # The server died or hangs: every other pair would wait the same way. Stop; a rerun resumes.
                raise ResourceError(f"{exc}; rerun the same batch command to resume") from None
            except RemoteError as exc:
                if exc.code == ResourceError.code:  # out of memory, no room: as in this process, every pair would fail
                    raise ResourceError(
                        f"the server could not edit '{pair.edit}' on {pair.source.rel}: {exc}; rerun the same batch "
                        "command to resume"
                    ) from None
                if exc.code in FATAL_REMOTE_CODES:
                    raise ConfigError(f"the server refused '{pair.edit}' on {pair.source.rel}: {exc}") from None
                self._settle([pair], made=False)
                yield Outcome(pair, error=exc)
                continue
            self._settle([pair], made=True)
            info = dict(result.info or {})
            yield Outcome(pair, Path(result.output_path), info, info.get("seed"), time.monotonic() - started)

    def _settle(self, pairs: list[Pair], made: bool) -> None:
        """The earlier results set aside for `pairs`: removed once the new one is made, else put back where their
        name is still free (else they stay aside, hidden: never lost)."""
        for pair in pairs:
            aside = self._aside(pair)
            with contextlib.suppress(OSError):
                if made:
                    aside.unlink(missing_ok=True)
                elif aside.exists() and not pair.output.exists():
                    os.replace(aside, pair.output)

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

    def parse(self, text: str) -> tuple[str, Any]:
        # Exceptions are returned, not raised: the driver gets our own error class back, not a Ray wrapper.
        try:
            parsed = self.editor.parse(text)
        except InstructionError as exc:
            return ("error", str(exc))
        return ("ok", (parsed.label, parsed.op))

    def edit(self, audio: Any, sample_rate: int, text: str, options: EditOptions) -> tuple:
        started = time.monotonic()
        try:
            result = self.editor.edit(audio, sample_rate, text, **options.kwargs())
        except ImusicError as exc:
            return ("error", exc.code, str(exc))
        info = jsonable(dict(result.info or {}))
        return ("ok", result.audio, result.sample_rate, result.seed, info, time.monotonic() - started)


@dataclass(frozen=True)
class _Label:
    label: str
    op: str


class RayBackend:
    """(input, edit) pairs spread over a Ray cluster: one actor per GPU (or per CPU worker), each with one model.

    The driver reads each region and writes each result, so workers need no access to the session's files; only the
    model (--model path, or the embedded default) must exist on every worker.
    """

    def __init__(self, address: str, load: dict, options: EditOptions, *, workers: int | None):
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "--ray needs Ray: pip install -e '.[cluster]' in the checkout (or pip install ray)"
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
        self.options = options
        self.per_file_progress = False
        self.replaceable: set[Path] = set()  # outputs the batch's own results held when it began (run_batch sets it)

    def parse(self, text: str) -> Any:
        status, value = self.ray.get(self.actors[0].parse.remote(text))
        if status != "ok":
            raise InstructionError(value)
        return _Label(*value)

    def run(self, pairs: list[Pair], progress: Callable[[Pair, float], None]) -> Iterator[Outcome]:
        from bridge.audio_read import read_region
        from bridge.editing import write_result

        ray = self.ray
        queue = list(pairs)
        idle = list(self.actors) * 2  # two jobs in flight per actor: the next input is ready when one finishes
        pending: dict[Any, tuple[Pair, Any, Any, int]] = {}
        dead: list[Any] = []  # actors whose process died (out of memory, a lost node): given no more pairs
        lost: dict[str, int] = {}  # pair key -> the times a dying actor took it with it
        while queue or pending:
            while queue and idle:
                pair, actor = queue.pop(0), idle.pop(0)
                try:
                    audio, rate = read_region(pair.source.path, pair.source.start_s, pair.end_s)
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
            if actor not in dead:
                idle.append(actor)
            try:
                reply = ray.get(done[0])
            except ray.exceptions.RayActorError as exc:
                # The worker died, not the pair: the pair goes to another worker (once), the dead one gets no more
                if actor not in dead:
                    dead.append(actor)
                idle = [a for a in idle if a is not actor]
                if len(dead) == len(self.actors):
                    raise ResourceError(f"every Ray worker died (the last: {exc}); rerun the batch to resume") from None
                lost[pair.key] = lost.get(pair.key, 0) + 1
                if lost[pair.key] > 1:
                    yield Outcome(pair, error=ResourceError(f"two Ray workers died on it: {exc}"))
                else:
                    queue.insert(0, pair)
                continue
            except ray.exceptions.RayError as exc:
                yield Outcome(pair, error=ResourceError(f"a Ray worker failed: {exc}"))
                continue
            if reply[0] != "ok":
                error = error_from_code(reply[1], reply[2])
                if isinstance(error, ResourceError):  # as in this process: out of memory stops the batch
                    raise error
                yield Outcome(pair, error=error)
                continue
            _, audio, result_rate, seed, info, seconds = reply  # the worker's time: queueing behind a job is not it
            try:
                written, info = write_result(
                    pair.output, audio, result_rate, source, rate, info,
                    overwrite=pair.output in self.replaceable, on_exists=_appeared,
                )  # fmt: skip
            except (ImusicError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno in NO_ROOM_ERRNOS:  # as in this process: later edits lost
                    raise _no_room(pair, exc) from None
                yield Outcome(pair, error=exc if isinstance(exc, ImusicError) else AudioError(str(exc)))
                continue
            progress(pair, 1.0)
            yield Outcome(pair, written, info, seed, seconds)

    def close(self) -> None:
        self.ray.shutdown()
