"""Edit jobs: the on-disk journal and the bounded queue (bridge/worker.py runs them).

Every accepted job is appended to the journal (JSON lines, fsync) before the server acknowledges it; replaying the
journal after a crash or `kill -9` gives back every job: finished ones answer status, pending ones run again. A job
id names one request forever, so a resent request never runs twice. A cancel of a running job is journalled when it
is asked for: if the server dies before the job ends, the restart records it as cancelled instead of running it again.
A result file is journalled (name and file identity) just before it takes its name: if the server dies between that
and the job's "done", the restart finds the file there and records the job done with it instead of editing again and
writing a second result beside the first.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bridge import audio_write, protocol
from bridge.protocol import EditRequest, RequestError
from engine.errors import Cancelled, ConfigError, ResourceError
from engine.files import fsync_folder, jsonable, lock_folder, user_path

JOURNAL_NAME = "jobs.jsonl"
KEEP_FINISHED = 5000  # finished jobs kept across restarts for status and idempotency
COMPACT_EVERY = 20000  # events between rewrites of the journal (a server may run for weeks)
# Runs of one job that ended with the engine's process (killed for memory, a crash in the model) after which a restart
# fails it instead of running it first again: a job that kills the engine would starve every job behind it for ever.
# A run a graceful stop interrupted ("interrupted" in the journal) does not count.
MAX_ATTEMPTS = 2
MAX_INFO_CHARS = 8000  # /done's info JSON must fit a datagram beside the paths


@dataclass
class Job:
    """One edit request (as the wire carried it) and what became of it."""

    request: EditRequest
    output_path: str = ""  # the result path reserved for this job at acceptance
    reply_to: tuple[str, int] | None = None
    source_path: str = ""  # input_path with symlinks resolved, as checked against the allowed roots
    state: str = protocol.QUEUED
    fraction: float = 0.0
    stage: str = ""
    error_code: str = ""
    error_message: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    accepted_at: float = 0.0
    attempts: int = 0  # how many times a worker started it (more than one after a crash)
    cancel_requested: bool = False
    # The result file this job's current run put, or was about to put, in place ({output, file, info}: JobBook.writing)
    written: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.request.job_id

    @property
    def input_path(self) -> str:
        return self.request.input_path

    @property
    def start_s(self) -> float:
        return self.request.start_s

    @property
    def end_s(self) -> float:
        return self.request.end_s

    @property
    def instruction(self) -> str:
        return self.request.instruction

    @property
    def requested_output(self) -> str:
        """As the client sent it ("" = the server chooses)."""
        return self.request.output_path

    def same_request(self, other: Job) -> bool:
        """True if `other` asks for exactly what this job asks for (a resend, not a conflict)."""
        return self.request.same_edit(other.request)

    @property
    def source(self) -> str:
        """The file to read: the resolved path (the one checked against the allowed roots)."""
        return self.source_path or self.input_path

    @property
    def is_final(self) -> bool:
        return self.state in protocol.FINAL_STATES

    def detail(self) -> str:
        """The /imusic/state detail: result path, error, or stage."""
        if self.state == protocol.DONE_STATE:
            return self.output_path
        if self.state in (protocol.ERROR_STATE, protocol.CANCELLED):
            return protocol.error_detail(self.error_code, self.error_message)
        return self.stage

    def to_record(self) -> dict[str, Any]:
        record = {"id": self.id, **asdict(self)}  # the id first: a journal line reads as whose it is
        if not record["cancel_requested"]:  # only a running job's pending cancel needs to outlive a crash
            record.pop("cancel_requested")
        if record["written"] is None:
            record.pop("written")
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Job:
        record = dict(record)
        if "request" in record:
            record["request"] = EditRequest(**record["request"])
        else:  # a journal written before requests were one object: the request's fields stood at the top
            record["request"] = EditRequest.from_values(
                {**record, "job_id": record["id"], "output_path": record.get("requested_output", "")}
            )
        names = cls.__dataclass_fields__
        job = cls(**{k: v for k, v in record.items() if k in names})
        if job.reply_to is not None:
            job.reply_to = (str(job.reply_to[0]), int(job.reply_to[1]))
        return job


def info_json(info: dict[str, Any]) -> str:
    """The result metadata as a JSON string that fits in /imusic/done (large entries are dropped, not cut)."""
    text = json.dumps(jsonable(info), separators=(",", ":"))
    if len(text) <= MAX_INFO_CHARS:
        return text
    small = {k: v for k, v in jsonable(info).items() if len(json.dumps(v)) < 400}
    small["truncated"] = True
    while len(text := json.dumps(small, separators=(",", ":"))) > MAX_INFO_CHARS and len(small) > 1:
        small.pop(next(k for k in small if k != "truncated"))  # whole entries go, so the text stays JSON
    return text


# ------------------------------------------------------------------------------------------------------------ journal


class Journal:
    """Append-only JSON lines, one event per line, fsync'd; compacted on open. One server per journal folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = user_path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the journal folder {self.folder}: {exc}") from None
        self.path = self.folder / JOURNAL_NAME
        self._lock = threading.Lock()
        self._lock_file = self._take_folder_lock()
        self._file = None
        self._closed = False
        self.events = 0  # appended since the last compaction

    def _take_folder_lock(self):
        busy = f"another imusic server is using the journal {self.folder}; stop it or pass --journal DIR"
        return lock_folder(self.folder / "server.lock", busy)  # held for the server's lifetime

    def load(self) -> dict[str, Job]:
        """Replay the journal: every job with its last known state (a torn last line from a crash is skipped)."""
        jobs: dict[str, Job] = {}
        if not self.path.exists():
            return jobs
        with open(self.path, "rb") as f:
            for number, line in enumerate(f, 1):
                try:  # a damaged line costs that line, never the server's start
                    event = json.loads(line.decode("utf-8"))
                    self._apply(jobs, event)
                except Exception as exc:  # noqa: BLE001 - bad bytes, a field of the wrong shape, a torn line
                    print(f"imusic serve: journal line {number} skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
        return jobs

    @staticmethod
    def _apply(jobs: dict[str, Job], event: dict[str, Any]) -> None:
        kind = event["e"]
        if kind in ("accepted", "job"):
            job = Job.from_record(event["job"])
            jobs[job.id] = job
            return
        job = jobs.get(event["id"])
        if job is None:
            return
        if kind == "started":
            job.state, job.attempts, job.written = protocol.RUNNING, job.attempts + 1, None
        elif kind == "writing":
            job.written = {"output": str(event["output"]), "file": dict(event["file"]), "info": event.get("info", {})}
        elif kind == "done":
            job.state, job.fraction, job.output_path = protocol.DONE_STATE, 1.0, event["output"]
            job.info, job.written = event.get("info", {}), None
        elif kind in ("failed", "cancelled"):
            job.state = protocol.ERROR_STATE if kind == "failed" else protocol.CANCELLED
            job.error_code, job.error_message, job.written = event["code"], event["message"], None
        elif kind == "reply_to":
            job.reply_to = (str(event["host"]), int(event["port"]))
        elif kind == "cancel_requested":
            job.cancel_requested = True
        elif kind == "interrupted":  # a graceful stop took it back: that run did not end with the engine
            job.attempts = max(0, job.attempts - 1)

    def compact(self, jobs: dict[str, Job]) -> None:
        """Rewrite the journal as one snapshot line per job (pending jobs and the newest finished ones), atomically."""
        finished = [job for job in jobs.values() if job.is_final][-KEEP_FINISHED:]
        keep = {job.id for job in finished} | {job.id for job in jobs.values() if not job.is_final}
        temporary = self.path.with_suffix(".compact")
        with self._lock:
            if self._file is not None:  # the appender must follow the new file, not the replaced one
                self._file.close()
                self._file = None
            with open(temporary, "w", encoding="utf-8") as f:
                for job in jobs.values():
                    if job.id in keep:
                        f.write(json.dumps({"e": "job", "job": job.to_record()}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
            fsync_folder(self.path.parent)
            self.events = 0
        for job_id in [job_id for job_id in jobs if job_id not in keep]:
            del jobs[job_id]

    def append(self, event: dict[str, Any]) -> None:
        """Write one event and fsync it: when this returns, the event survives a crash. OSError when it cannot be
        written (a full disk), and then nothing of it is in the file, nor written later: the file is unbuffered, and
        cut back to where the event began (a buffered line that failed went out with the next event's flush: a
        refused edit ran after a restart)."""
        line = memoryview((json.dumps(event, separators=(",", ":")) + "\n").encode("utf-8"))
        with self._lock:
            if self._closed:  # its folder lock is gone: another server may own the journal now
                raise OSError(f"the job journal {self.path} is closed (the server stopped)")
            if self._file is None:
                self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (kept open between events)
            start = self._file.seek(0, os.SEEK_END)
            try:
                while line:
                    line = line[self._file.write(line) or 0 :]
                os.fsync(self._file.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._file.fileno(), start)
                raise
            self.events += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None
            self._lock_file.close()


# ------------------------------------------------------------------------------------------------------------ the book


class JobBook:
    """Every job by id, the queue of pending ones, and the journal behind both. Thread-safe."""

    def __init__(self, journal: Journal, max_queue: int = protocol.MAX_QUEUE) -> None:
        self.journal = journal
        self.max_queue = max_queue
        self.jobs: dict[str, Job] = {}
        self.queue: deque[str] = deque()
        self.running: Job | None = None
        self.cancel_event = threading.Event()
        self._cond = threading.Condition()
        self.recovered: list[Job] = []  # by restore: jobs whose result was written before the server stopped
        self.ended_on_restore: list[Job] = []  # by restore: unfinished jobs it ended (cancelled, or failed too often)
        self._abandoned: set[str] = set()  # running jobs whose run abandon_running journalled interrupted

    def restore(self) -> list[Job]:
        """Load the journal; jobs that were queued or running when the server stopped are queued again."""
        with self._cond:
            self.jobs = self.journal.load()
            self.journal.compact(self.jobs)
            pending = []
            for job in [job for job in self.jobs.values() if not job.is_final]:
                # first: a result that took its name is done, whatever came later (a cancel during the write is too
                # late, as it is without a crash); before, a cancel then a crash left it "cancelled" beside a whole
                # result file no job owned
                if self._adopt_written(job):
                    continue
                if job.cancel_requested:  # cancelled while running, and the server died before the job ended
                    self.fail(job, Cancelled.code, "cancelled (the server stopped before the job ended)", True)
                    self.ended_on_restore.append(job)
                    continue
                if job.attempts >= MAX_ATTEMPTS:  # it stopped the engine each time it ran: it must not starve the rest
                    message = (
                        f"the engine stopped while running this edit {job.attempts} times (out of memory, or a crash "
                        "in the model); it is not run again: try a shorter region"
                    )
                    with contextlib.suppress(OSError):
                        self.fail(job, ResourceError.code, message)
                    job.state, job.error_code, job.error_message = protocol.ERROR_STATE, ResourceError.code, message
                    self.ended_on_restore.append(job)
                    continue
                job.state, job.fraction, job.stage = protocol.QUEUED, 0.0, "resumed after restart"
                self.queue.append(job.id)
                pending.append(job)
            self._cond.notify_all()
            return pending

    def _adopt_written(self, job: Job) -> bool:
        """A job whose result took its name before the server died: recorded done with that file, not run again
        (which would write a second result beside it). False when the file there is not that one (never written,
        removed, or replaced since) or the journal cannot say so."""
        written = job.written
        if not written or not audio_write.holds_file(written["output"], written["file"]):
            return False
        info = dict(written.get("info") or {})
        info["bridge"] = {**(info.get("bridge") or {}), "recovered": "written before the engine stopped; not run again"}
        try:
            self.finish(job, written["output"], info)
        except OSError:
            return False
        self.recovered.append(job)
        return True

    def writing(self, job: Job, path: Path, identity: dict[str, int], info: dict[str, Any]) -> None:
        """Journal the result file about to take its name (audio_write.BeforeLink). A journal that cannot take it costs
        nothing but that: a crash in the next instant runs the job again, as it would have without this."""
        written = {"output": str(path), "file": identity, "info": info}
        with self._cond:
            if self._append_or_say({"e": "writing", "id": job.id, **written}, f"job {job.id}'s result"):
                job.written = written

    def _append_or_say(self, event: dict[str, Any], what: str) -> bool:
        """Journal an event whose loss costs only itself; a journal that cannot take it is said on stderr (False)."""
        try:
            self.journal.append(event)
        except OSError as exc:
            print(f"imusic serve: journal write failed for {what}: {exc}", file=sys.stderr)
            return False
        return True

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self.jobs.get(job_id)

    def reserved_outputs(self) -> set[str]:
        """The result paths of the jobs not finished yet: no other result may take one."""
        with self._cond:
            return {job.output_path for job in self.jobs.values() if not job.is_final}

    def counts(self) -> tuple[int, str]:
        """(number of queued jobs, id of the running job or "")."""
        with self._cond:
            return len(self.queue), self.running.id if self.running else ""

    def find_existing(self, job: Job) -> Job | None:
        """The job already known under this id if `job` is a resend of it; RequestError if the id means another job."""
        with self._cond:
            known = self.jobs.get(job.id)
            if known is None:
                return None
            if not known.same_request(job):
                raise protocol.job_conflict(job.id)
            return known

    def submit(
        self,
        job: Job,
        choose_output: Callable[[set[str]], str],
        accepted: Callable[[Job, int], None] | None = None,
    ) -> tuple[Job, bool, int]:
        """Accept a job: journal it (fsync), then queue it. Returns (job, is_new, queue position).

        A resend of a known job returns the known job (is_new False) and only updates where replies go.
        `choose_output(reserved)` picks the result path while no other job can take the same one. `accepted(job,
        position)` is called once the job is journalled, before the worker can take it (under the book's lock): the
        server's /imusic/accepted goes out before any reply of the job's run (sent after the lock, a fast worker's
        first progress came before it, and a client waiting for the acceptance took that for the answer).
        """
        with self._cond:
            known = self.find_existing(job)
            if known is not None:
                if job.reply_to and known.reply_to != job.reply_to:
                    known.reply_to = job.reply_to
                    # a journal that cannot take it costs only this: after a restart, replies go to the old port
                    # (answering "internal error" made the requester give up on a live job)
                    event = {"e": "reply_to", "id": job.id, "host": job.reply_to[0], "port": job.reply_to[1]}
                    self._append_or_say(event, f"job {job.id}'s reply address")
                position = self._position(known.id)
                if accepted is not None:
                    accepted(known, position)
                return known, False, position
            if len(self.queue) >= self.max_queue:
                raise RequestError(
                    f"the queue is full ({self.max_queue} jobs waiting); try again when some have finished",
                    protocol.QUEUE_FULL,
                    job.id,
                )
            job.output_path = choose_output(self.reserved_outputs())
            job.accepted_at = time.time()
            job.state = protocol.QUEUED
            try:
                self.journal.append({"e": "accepted", "job": job.to_record()})
            except OSError as exc:
                raise RequestError(
                    f"the job journal cannot be written ({exc.strerror or exc}): the edit was not accepted; free "
                    f"space in {self.journal.path.parent} and send it again",
                    ResourceError.code,
                    job.id,
                ) from None
            self.jobs[job.id] = job
            self.queue.append(job.id)
            position = self._position(job.id)
            if accepted is not None:
                accepted(job, position)
            self._cond.notify_all()
            return job, True, position

    def _position(self, job_id: str) -> int:
        """0 = running or next to run; -1 = not waiting."""
        if self.running is not None and self.running.id == job_id:
            return 0
        try:
            return self.queue.index(job_id) + (1 if self.running is not None else 0)
        except ValueError:
            return -1

    def next_job(self, timeout: float) -> Job | None:
        """Take the next queued job and mark it running (journalled), or None after `timeout` seconds."""
        with self._cond:
            if not self.queue:
                self._cond.wait(timeout)
            if not self.queue:
                return None
            job = self.jobs[self.queue[0]]
            self.journal.append({"e": "started", "id": job.id})  # first: a journal that fails leaves it queued
            self.queue.popleft()
            job.state, job.fraction, job.stage, job.written = protocol.RUNNING, 0.0, "started", None
            job.attempts += 1
            self.cancel_event = threading.Event()
            self.running = job
            return job

    def finish(self, job: Job, output_path: str, info: dict[str, Any]) -> None:
        with self._cond:
            self.journal.append({"e": "done", "id": job.id, "output": output_path, "info": info})
            job.state, job.fraction, job.output_path, job.info = protocol.DONE_STATE, 1.0, output_path, info
            job.written = None
            self._clear_running(job)
            self._maybe_compact()

    def _maybe_compact(self) -> None:
        """Compact now and then; a compaction that fails (no room for the new file) is tried again later, and never
        costs the job that was just recorded (its event is in the journal already)."""
        if self.journal.events >= COMPACT_EVERY:
            try:
                self.journal.compact(self.jobs)
            except OSError as exc:
                print(f"imusic serve: journal compaction failed ({exc}); tried again later", file=sys.stderr)
                self.journal.events = 0  # back off: COMPACT_EVERY events until the next try

    def fail(self, job: Job, code: str, message: str, cancelled: bool = False) -> None:
        with self._cond:
            event = "cancelled" if cancelled else "failed"
            self.journal.append({"e": event, "id": job.id, "code": code, "message": message})
            job.state = protocol.CANCELLED if cancelled else protocol.ERROR_STATE
            job.error_code, job.error_message, job.written = code, message, None
            self._clear_running(job)

    def requeue(self, job: Job) -> None:
        """Put a job interrupted by shutdown back in front; the journal already says it is pending (and that this run
        was interrupted, not ended with the engine: it does not count towards MAX_ATTEMPTS)."""
        with self._cond:
            if job.id not in self._abandoned:  # else journalled already, as the shutdown gave up waiting on it
                with contextlib.suppress(OSError):
                    self.journal.append({"e": "interrupted", "id": job.id})
            self._abandoned.discard(job.id)
            job.attempts = max(0, job.attempts - 1)
            job.state, job.fraction, job.stage = protocol.QUEUED, 0.0, "interrupted; resumes on restart"
            self.queue.appendleft(job.id)
            self._clear_running(job)

    def _clear_running(self, job: Job) -> None:
        if self.running is job:
            self.running = None

    def clear_running(self, job: Job) -> None:
        """The worker is done with `job` though the journal could not say how (the job is pending on disk)."""
        with self._cond:
            self._clear_running(job)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, or ask the running one to stop; finished jobs are left as they are."""
        with self._cond:
            job = self.jobs.get(job_id)
            if job is None:
                raise protocol.unknown_job(job_id)
            if job.state == protocol.QUEUED:
                # journalled first: a cancel the journal did not take leaves the job queued, and says so (OSError)
                self.fail(job, Cancelled.code, "cancelled before it started", cancelled=True)
                self.queue.remove(job_id)
                job.cancel_requested = True
            elif job.state == protocol.RUNNING:
                # journalled at once: a crash before the job ends must not run it again on restart
                self._append_or_say({"e": "cancel_requested", "id": job_id}, f"the cancel of job {job_id}")
                job.cancel_requested = True
                job.state = protocol.CANCELLING
                self.cancel_event.set()
            return job

    def abandon_running(self) -> None:
        """At a shutdown the running job did not stop for (an edit deaf to cancel for a while): journal its run as
        interrupted, as the worker would have, so that it does not count as a run that stopped the engine (two such
        stops failed it with "try a shorter region"). It runs again on restart."""
        with self._cond:
            if self.running is not None and not self.running.is_final:
                with contextlib.suppress(OSError):
                    self.journal.append({"e": "interrupted", "id": self.running.id})
                    self._abandoned.add(self.running.id)  # once: a second would take an earlier crash off its count

    def interrupt_running(self) -> None:
        """Stop the running job for a shutdown (it stays pending and runs again on restart)."""
        with self._cond:
            self.cancel_event.set()
            self._cond.notify_all()
