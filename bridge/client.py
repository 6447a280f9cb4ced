"""OSC client of the engine server: the class REAPER scripts, batch and `imusic send` (bridge/send.py) use. No torch.

Python API (stable; REAPER actions and batch use it):

    from bridge.client import Client, RemoteError, NoReply
    client = Client(host="127.0.0.1", port=9137)   # one UDP socket on an ephemeral port, kept between calls
    client.ping() -> Reply                         # .version .model .device .state .notes .stems; NoReply if silent
    job_id = client.submit(input_path, start_s, end_s, instruction, output_path=None, seed=None, takes=1,
                           job_id=None, mode="")   # sends /imusic/edit and returns at once (no waiting)
    client.send_edit(EditRequest(...)) -> job_id   # the same, for a request built elsewhere (REAPER actions, batch)
    client.poll() -> list[Reply]                   # NON-BLOCKING: every reply that has arrived (REAPER defer loop)
    client.follow() -> list[Reply]                 # NON-BLOCKING: poll(), track replies, resend/ask what is due;
                                                   # returns the replies about no submitted job
    client.wait_accepted([job_id, ...]) -> list[TrackedJob]   # blocking until each is taken or refused (.code)
    client.wait(job_id, timeout=None, on_progress=None) -> JobResult   # blocking; RemoteError on /imusic/error
    client.edit(...same as submit..., timeout=None, on_progress=None) -> JobResult   # submit + wait, resends safely
    client.status(job_id=None) -> Reply            # /imusic/state (a job) or /imusic/server_status (the server)
    client.cancel(job_id) -> Reply                 # /imusic/state after the cancel request
    client.preview(job_id, which="result") -> Reply ; client.stop_preview() -> Reply
    client.close()                                 # also a context manager

Reply (bridge.protocol.Reply): .address, .args, .kind ("accepted", "progress", "done", "error", ...), .job_id,
.fraction, .stage, .output_path, .info (dict), .code, .message, .state; /pong and /server_status: .version, .model,
.device, .notes, .stems, .queued, .running_job_id. Whether a reply ends its job is the tracker's rule
(TrackedJob.final).
JobResult: job_id, output_path, info. Every submitted edit is kept in `client.tracker` (bridge/tracking.py), keyed by
job id: its state (accepted, fraction, output_path, code) follows the replies, and any pending job can be resent. A
REAPER action calls send_edit() once per job, then follow() from each deferred run and reads the tracker.

Resending an edit with the same job id never runs it twice (the server answers with the job's current state), so
submit() may be repeated after a timeout without harm when it is given the same job_id (without one, each call is a
new job).
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge import protocol, tracking
from bridge.protocol import EditRequest, Reply
from engine.errors import ConfigError, ImusicError


class NoReply(ImusicError):
    """The server did not answer in time (not running, wrong port, or busy loading)."""

    code = protocol.NO_REPLY


class NotFinished(NoReply):
    """A job the server took did not end within the time the caller gave (it may still be running)."""

    def __init__(self, job_id: str, timeout: float) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout:g} s (it may still be running)")


class RemoteError(ImusicError):
    """The server answered /imusic/error; `code` is the wire error code, `job_id` the job it concerns."""

    code = "remote"

    def __init__(self, message: str, code: str = "remote", job_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.job_id = job_id


@dataclass
class JobResult:
    """A finished job: where its result was written and the result metadata (levels, timings)."""

    job_id: str
    output_path: str
    info: dict[str, Any] = field(default_factory=dict)


def local_bind_host(host: str) -> str:
    # Loopback servers reply to loopback; anything else needs an address the server can reach.
    return "127.0.0.1" if host in ("127.0.0.1", "localhost", "::1") else "0.0.0.0"


class Client:
    """One UDP socket bound to an ephemeral port: the server replies to it without any configuration."""

    def __init__(self, host: str = protocol.DEFAULT_HOST, port: int = protocol.DEFAULT_PORT) -> None:
        try:
            self.server = (socket.gethostbyname(host), int(port))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot resolve the engine address {host}:{port}: {exc}") from None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((local_bind_host(host), 0))
        self._sock.setblocking(False)
        # a selector, not select.select: that one fails on descriptors past 1024 (a large REAPER session's)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._backlog: list[Reply] = []  # replies read during a blocking wait that the wait did not consume
        self.tracker = tracking.ReplyTracker()  # every edit this client submitted, by job id

    def close(self) -> None:
        self._selector.close()
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ the socket

    def send(self, address: str, *args: Any) -> None:
        """Send one request as it is (see bridge.protocol for addresses and arguments)."""
        protocol.send_datagram(self._sock, protocol.encode(address, *args), self.server)

    def _read(self, timeout: float) -> list[Reply]:
        """Replies that arrive within `timeout` seconds (0: only those already there)."""
        replies: list[Reply] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            if not self._selector.select(remaining if not replies else 0.0):
                return replies
            try:
                datagram, _ = self._sock.recvfrom(protocol.MAX_PACKET + 1)
            except BlockingIOError:
                return replies
            except (ConnectionResetError, ConnectionRefusedError):
                # Windows reports an earlier send to a closed port here; nothing to read.
                continue
            try:
                replies.extend(Reply(address, args) for address, args in protocol.decode(datagram))
            except protocol.RequestError:
                continue  # not ours to answer; a client ignores garbage

    def poll(self) -> list[Reply]:
        """Every reply received so far, without blocking. Safe to call from REAPER's defer loop."""
        replies, self._backlog = self._backlog + self._read(0.0), []
        return replies

    def wait_for(self, match: Callable[[Reply], bool], timeout: float) -> Reply:
        """Block until a reply matches (others are kept for poll()); NoReply after `timeout` seconds."""
        for i, reply in enumerate(self._backlog):
            if match(reply):
                return self._backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoReply(f"{tracking.not_answering(*self.server)} (waited {timeout:g} s)")
            for i, reply in enumerate(replies := self._read(min(remaining, 0.5))):
                if match(reply):
                    self._backlog.extend(replies[i + 1 :])
                    return reply
                self._backlog.append(reply)

    def _request(self, address: str, args: tuple[Any, ...], match: Callable[[Reply], bool], timeout: float) -> Reply:
        self.send(address, *args)
        reply = self.wait_for(match, timeout)
        if reply.address == protocol.ERROR:
            raise RemoteError(reply.message, reply.code, reply.job_id)
        return reply

    # ------------------------------------------------------------------------------------------------ requests

    def ping(self, timeout: float = tracking.ANSWER_WITHIN_S) -> Reply:
        """/imusic/ping -> /imusic/pong version model device state."""
        return self._request(protocol.PING, (), _about_server(protocol.PONG), timeout)

    def status(self, job_id: str | None = None, timeout: float = tracking.ANSWER_WITHIN_S) -> Reply:
        """A job's /imusic/state, or the server's /imusic/server_status when job_id is None."""
        if job_id:
            return self._request(protocol.STATUS, (job_id,), _about(job_id, protocol.STATE), timeout)
        return self._request(protocol.STATUS, (), _about_server(protocol.SERVER_STATUS), timeout)

    def cancel(self, job_id: str, timeout: float = tracking.ANSWER_WITHIN_S) -> Reply:
        """Cancel a queued or running job; returns its /imusic/state (cancelled, cancelling, or already final)."""
        return self._request(protocol.CANCEL, (job_id,), _about(job_id, protocol.STATE), timeout)

    def preview(
        self, job_id: str, which: str = protocol.PREVIEW_WHICH[0], timeout: float = tracking.ANSWER_WITHIN_S
    ) -> Reply:
        """Play a finished job's result (or its source region) on the engine machine's output. The engine answers once
        the file is read and playing: an engine silent for `timeout` s is pinged, and one that answers is given
        tracking.PREVIEW_WITHIN_S more (a long result took over 3 s and was said to be no engine at all). Only the
        answer to this `which` counts: a late one to an earlier preview of the job is not it."""
        about = _about(job_id, protocol.PREVIEWING)
        match = lambda r: about(r) and (r.address == protocol.ERROR or r.args[1:2] == [which])  # noqa: E731
        self.send(protocol.PREVIEW, job_id, which)
        try:
            reply = self.wait_for(match, timeout)
        except NoReply:
            self.ping(timeout)  # NoReply: no engine there, said as everywhere; a pong: it is still reading the file
            reply = self.wait_for(match, tracking.PREVIEW_WITHIN_S)
        if reply.address == protocol.ERROR:
            raise RemoteError(reply.message, reply.code, reply.job_id)
        return reply

    def stop_preview(self, timeout: float = tracking.ANSWER_WITHIN_S) -> Reply:
        return self._request(protocol.STOP_PREVIEW, (), _about_server(protocol.PREVIEW_STOPPED), timeout)

    def submit(
        self,
        input_path: str,
        start_s: float,
        end_s: float,
        instruction: str,
        output_path: str | None = None,
        seed: int | None = None,
        takes: int = 1,
        job_id: str | None = None,
        mode: str = "",
    ) -> str:
        """Send /imusic/edit and return the job id at once. end_s < 0 means "to the end of the file"; mode "" is the
        operation's default."""
        job_id = protocol.check_job_id(job_id or protocol.new_job_id(), error=ConfigError)
        request = EditRequest(
            job_id=job_id,
            input_path=os.path.abspath(os.path.expanduser(input_path)),  # the server refuses relative paths
            start_s=float(start_s),
            end_s=float(end_s),
            instruction=instruction,
            output_path=_absolute_output(output_path) if output_path else "",
            seed=seed,
            takes=int(takes),
            mode=mode or "",
        )
        return self.send_edit(request)

    def send_edit(self, request: EditRequest) -> str:
        """Send an edit request (again, after a timeout, is harmless) and track it; returns its job id. It is checked
        first by the server's own rules: RequestError naming the argument the server would refuse, or no datagram
        could carry (a 70 000-character instruction)."""
        protocol.parse_request(protocol.EDIT, list(request.to_args()))
        self.send(protocol.EDIT, *request.to_args())
        self.tracker.submit(request, time.monotonic())
        return request.job_id

    def follow(self, replies: list[Reply] | None = None) -> list[Reply]:
        """Non-blocking: feed replies (default: poll()) to the tracker and resend or ask what it says is due.
        Returns the replies that concern none of the tracked jobs."""
        now = time.monotonic()
        others = [reply for reply in (self.poll() if replies is None else replies) if not self._track(reply, now)]
        self._act(self.tracker.tick(now))
        return others

    def _track(self, reply: Reply, now: float) -> bool:
        """Feed a reply to the tracker; False when it concerns none of the tracked jobs."""
        if reply.job_id not in self.tracker.jobs:
            return False
        self.tracker.handle(reply, now)
        return True

    def _act(self, actions: list[tuple[str, str]]) -> None:
        for action, job_id in actions:
            if action == tracking.RESEND:
                self.send(protocol.EDIT, *self.tracker.jobs[job_id].request.to_args())
            else:
                self.send(protocol.STATUS, job_id)

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_progress: Callable[[float, str], None] | None = None,
        resend_after: float = tracking.RESEND_AFTER_S,
        give_up_after: float | None = tracking.GIVE_UP_AFTER_S,
    ) -> JobResult:
        """Block until the job is done; RemoteError if it failed or was cancelled, NoReply on timeout.

        Until the job is accepted, its edit request is resent every `resend_after` seconds (harmless: job ids are
        idempotent), which covers a lost datagram or a server that was restarting; once accepted, a silent server is
        asked for the job's state every few seconds instead. A job this client did not submit is only asked about.
        `give_up_after`: NoReply once the server has said nothing at all about the job for that many seconds of this
        wait (it died or hangs, or none ever answered; None waits for a restart for ever). Silence before the wait
        does not count: a job queued behind another that this client was waiting on was not asked about meanwhile.
        """
        waiting_since = time.monotonic()
        deadline = None if timeout is None else waiting_since + timeout
        self.tracker.resend_after = resend_after
        self.tracker.status_after = tracking.STATUS_AFTER_RESENDS * resend_after
        if job_id not in self.tracker.jobs:
            self.tracker.watch(job_id, time.monotonic())
            self.send(protocol.STATUS, job_id)  # replies go to its submitter; learn its state by asking
        job = self.tracker.jobs[job_id]

        def heard(reply: Reply) -> None:
            self._track(reply, time.monotonic())
            if on_progress is not None and reply.address == protocol.PROGRESS:
                on_progress(reply.fraction, reply.stage)

        for reply in self._take(job_id):  # heard before this wait (wait_accepted): its progress is shown, in order
            heard(reply)
        while not job.final:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise NotFinished(job_id, timeout)
            verdict = self.tracker.verdict(now, [job_id], waiting_since, None, give_up_after)
            if verdict == tracking.LOST:
                raise NoReply(tracking.stopped_answering(*self.server, give_up_after, job_id))
            for reply in self._take(job_id) or self._read(0.2):
                if reply.job_id != job_id:
                    self._backlog.append(reply)  # another job's: its own wait() or poll() takes it
                    continue
                heard(reply)
            self._act(self.tracker.tick(time.monotonic(), [job_id]))
        if job.code:
            raise RemoteError(job.error or f"job {job_id} {job.code}", job.code, job_id)
        return JobResult(job_id, job.output_path, job.info)

    def wait_accepted(
        self,
        job_ids: list[str],
        answer_within: float = tracking.ANSWER_WITHIN_S,
        accept_within: float | None = None,
    ) -> list[tracking.TrackedJob]:
        """Block until the engine has taken each of these submitted edits into its book, or refused it, and return
        their tracked states (a job refused, or already over, is final: see its `code`). Unanswered edits are resent
        (job ids make that harmless), and the engine answers a resend of an edit whose input it is still checking.

        NoReply, in words the user can act on: nothing answered about any of them within `answer_within` s and no
        engine answers a ping there; or the engine answers but has not taken them all within `accept_within` s of
        the wait (it journals each job before it accepts it: a slow disk); None: tracking.ACCEPT_WITHIN_S. Time
        while the engine says its queue is full (each resend answered `queue_full`) does not count: the edits wait for
        a place as long as the engine keeps answering. Given up on, the edits not taken are cancelled, so that a
        resend the engine takes after this wait ended does not run for nobody."""
        accept_within = tracking.ACCEPT_WITHIN_S if accept_within is None else accept_within
        since = accepting_since = time.monotonic()
        jobs = [self.tracker.jobs[job_id] for job_id in job_ids]
        pinged = False
        while not all(job.accepted or job.final for job in jobs):
            now = time.monotonic()
            if not pinged and self.tracker.verdict(now, job_ids, since, answer_within, None) == tracking.NO_ENGINE:
                self.ping()  # NoReply: no engine there, said as everywhere; a pong: it is slow to accept
                pinged = True
            waiting = [job for job in jobs if not (job.accepted or job.final)]
            if all(job.stage == tracking.WAITING_FOR_QUEUE and now - job.heard < accept_within for job in waiting):
                accepting_since = now  # a full queue that says so is waited out, not taken for a slow disk
            if now - accepting_since > accept_within:
                waiting = [job.job_id for job in waiting]
                for job_id in waiting:
                    self.send(protocol.CANCEL, job_id)
                raise NoReply(
                    f"the engine at {self.server[0]}:{self.server[1]} answers but did not accept "
                    f"{'job' if len(waiting) == 1 else 'jobs'} {', '.join(waiting)} within {accept_within:g} s; "
                    f"a cancel was sent (`imusic send status {waiting[0]}` says how it ended)"
                )
            replies, self._backlog = self._backlog + self._read(0.2), []
            for reply in replies:  # a job's progress stays for the wait() that shows it (the job began meanwhile)
                if not self._track(reply, time.monotonic()) or reply.address == protocol.PROGRESS:
                    self._backlog.append(reply)
            self._act(self.tracker.tick(time.monotonic(), job_ids))
        return jobs

    def _take(self, job_id: str) -> list[Reply]:
        mine = [r for r in self._backlog if r.job_id == job_id]
        if mine:
            self._backlog = [r for r in self._backlog if r.job_id != job_id]
        return mine

    def edit(
        self,
        input_path: str,
        start_s: float,
        end_s: float,
        instruction: str,
        output_path: str | None = None,
        seed: int | None = None,
        takes: int = 1,
        job_id: str | None = None,
        timeout: float | None = None,
        on_progress: Callable[[float, str], None] | None = None,
        mode: str = "",
    ) -> JobResult:
        """submit(), wait_accepted() (NoReply within tracking.ANSWER_WITHIN_S when no engine is there; RemoteError
        when it refuses the edit), then wait(): the blocking call for scripts and the CLI. `timeout` bounds the
        whole job, acceptance included (NoReply naming it; the job may still run)."""
        started = time.monotonic()
        job_id = self.submit(
            input_path, start_s, end_s, instruction, output_path=output_path, seed=seed, takes=takes, job_id=job_id,
            mode=mode,
        )  # fmt: skip
        accept_within = tracking.ACCEPT_WITHIN_S if timeout is None else min(tracking.ACCEPT_WITHIN_S, timeout)
        (job,) = self.wait_accepted([job_id], accept_within=accept_within)
        if job.code:
            raise RemoteError(job.error or f"job {job_id} {job.code}", job.code, job_id)
        if timeout is None:
            return self.wait(job_id, on_progress=on_progress)
        try:
            return self.wait(job_id, timeout=max(0.0, timeout - (time.monotonic() - started)), on_progress=on_progress)
        except NotFinished:
            raise NotFinished(job_id, timeout) from None  # the whole job's time, not what was left of it


def _absolute_output(path: str | os.PathLike) -> str:
    """An absolute output path that still ends in a separator when it did: "a folder, made if need be" (abspath drops
    it, and the server would write a file named after the folder)."""
    path = os.fspath(path)
    absolute = os.path.abspath(os.path.expanduser(path))
    return absolute + os.sep if path.endswith(("/", os.sep)) and not absolute.endswith(os.sep) else absolute


def _about_server(address: str) -> Callable[[Reply], bool]:
    # the answer to a request about no job, or an error about no job: a job's error waiting on the socket is its
    # tracker's (poll() hands it on), not this request's answer
    return lambda r: r.address == address or (r.address == protocol.ERROR and not r.job_id)


def _about(job_id: str, address: str) -> Callable[[Reply], bool]:
    # the server could not name a malformed id in its error reply: refuse it here, in the server's words
    protocol.check_job_id(job_id, error=ConfigError)
    return lambda r: r.job_id == job_id and r.address in (address, protocol.ERROR)
