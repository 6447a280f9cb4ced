"""OSC client of the engine server: the `imusic send` command and a small class REAPER scripts import. No torch.

Python API (stable; REAPER actions and batch use it):

    from bridge.client import Client, RemoteError, NoReply
    client = Client(host="127.0.0.1", port=9137)   # one UDP socket on an ephemeral port, kept between calls
    client.ping(timeout=2.0) -> Reply              # Reply.args: version, model, device, state, notes; NoReply if silent
    job_id = client.submit(input_path, start_s, end_s, instruction, output_path=None, seed=None, takes=1,
                           job_id=None, mode="")   # sends /imusic/edit and returns at once (no waiting)
    client.send_edit(EditRequest(...)) -> job_id   # the same, for a request built elsewhere (REAPER actions, batch)
    client.poll() -> list[Reply]                   # NON-BLOCKING: every reply that has arrived (REAPER defer loop)
    client.follow() -> list[Reply]                 # NON-BLOCKING: poll(), track replies, resend/ask what is due;
                                                   # returns the replies about no submitted job
    client.wait(job_id, timeout=None, on_progress=None) -> JobResult   # blocking; RemoteError on /imusic/error
    client.edit(...same as submit..., timeout=None, on_progress=None) -> JobResult   # submit + wait, resends safely
    client.status(job_id=None) -> Reply            # /imusic/state (a job) or /imusic/server_status (the server)
    client.cancel(job_id) -> Reply                 # /imusic/state after the cancel request
    client.preview(job_id, which="result") -> Reply ; client.stop_preview() -> Reply
    client.close()                                 # also a context manager

Reply (bridge.protocol.Reply): .address, .args, .kind ("accepted", "progress", "done", "error", ...), .job_id,
.fraction, .stage, .output_path, .info (dict), .code, .message, .state, .is_final.
JobResult: job_id, output_path, info. Every submitted edit is kept in `client.tracker` (bridge/tracking.py), keyed by
job id: its state (accepted, fraction, output_path, code) follows the replies, and any pending job can be resent. A
REAPER action calls send_edit() once per job, then follow() from each deferred run and reads the tracker.

Resending an edit with the same job id never runs it twice (the server answers with the job's current state), so
submit() may be repeated after a timeout without harm.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge import protocol, tracking
from bridge.cli import add_edit_options, seconds_option
from bridge.protocol import EditRequest, Reply
from engine.errors import ConfigError, ImusicError
from engine.files import AUDIO_FORMATS


class NoReply(ImusicError):
    """The server did not answer in time (not running, wrong port, or busy loading)."""

    code = protocol.NO_REPLY


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


def _local_bind_host(host: str) -> str:
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
        self._sock.bind((_local_bind_host(host), 0))
        self._sock.setblocking(False)
        self._backlog: list[Reply] = []  # replies read during a blocking wait that the wait did not consume
        self.tracker = tracking.ReplyTracker()  # every edit this client submitted, by job id

    @property
    def local_address(self) -> tuple[str, int]:
        """The (host, port) the server replies to."""
        return self._sock.getsockname()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ the socket

    def send(self, address: str, *args: Any) -> None:
        """Send one request as it is (see bridge.protocol for addresses and arguments)."""
        self._sock.sendto(protocol.encode(address, *args), self.server)

    def _read(self, timeout: float) -> list[Reply]:
        """Replies that arrive within `timeout` seconds (0: only those already there)."""
        import select

        replies: list[Reply] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._sock], [], [], remaining if not replies else 0.0)
            if not ready:
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
                raise NoReply(
                    f"no reply from the engine at {self.server[0]}:{self.server[1]} within {timeout:g} s: "
                    "is `imusic serve` running on that port?"
                )
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

    def ping(self, timeout: float = 2.0) -> Reply:
        """/imusic/ping -> /imusic/pong version model device state."""
        return self._request(protocol.PING, (), lambda r: r.address in (protocol.PONG, protocol.ERROR), timeout)

    def status(self, job_id: str | None = None, timeout: float = 2.0) -> Reply:
        """A job's /imusic/state, or the server's /imusic/server_status when job_id is None."""
        if job_id:
            return self._request(protocol.STATUS, (job_id,), _about(job_id, protocol.STATE), timeout)
        return self._request(
            protocol.STATUS, (), lambda r: r.address in (protocol.SERVER_STATUS, protocol.ERROR), timeout
        )

    def cancel(self, job_id: str, timeout: float = 2.0) -> Reply:
        """Cancel a queued or running job; returns its /imusic/state (cancelled, cancelling, or already final)."""
        return self._request(protocol.CANCEL, (job_id,), _about(job_id, protocol.STATE), timeout)

    def preview(self, job_id: str, which: str = protocol.PREVIEW_WHICH[0], timeout: float = 2.0) -> Reply:
        """Play a finished job's result (or its source region) on the engine machine's output."""
        return self._request(protocol.PREVIEW, (job_id, which), _about(job_id, protocol.PREVIEWING), timeout)

    def stop_preview(self, timeout: float = 2.0) -> Reply:
        match = lambda r: r.address in (protocol.PREVIEW_STOPPED, protocol.ERROR)  # noqa: E731
        return self._request(protocol.STOP_PREVIEW, (), match, timeout)

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
        job_id = job_id or protocol.new_job_id()
        _check_job_id(job_id)
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
        resend_after: float = 1.0,
        give_up_after: float | None = None,
    ) -> JobResult:
        """Block until the job is done; RemoteError if it failed or was cancelled, NoReply on timeout.

        Until the job is accepted, its edit request is resent every `resend_after` seconds (harmless: job ids are
        idempotent), which covers a lost datagram or a server that was restarting; once accepted, a silent server is
        asked for the job's state every few seconds instead. A job this client did not submit is only asked about.
        `give_up_after`: NoReply once the server has said nothing at all about the job for that many seconds (it died
        or hangs; None waits for a restart).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self.tracker.resend_after, self.tracker.status_after = resend_after, 5 * resend_after
        if job_id not in self.tracker.jobs:
            self.tracker.watch(job_id, time.monotonic())
            self.send(protocol.STATUS, job_id)  # replies go to its submitter; learn its state by asking
        job = self.tracker.jobs[job_id]
        while not job.final:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise NoReply(f"job {job_id} did not finish within {timeout:g} s (it may still be running)")
            if give_up_after is not None and now - job.heard > give_up_after:
                raise NoReply(
                    f"the engine at {self.server[0]}:{self.server[1]} has not answered about job {job_id} for "
                    f"{give_up_after:g} s: it stopped or hangs (see its log)"
                )
            for reply in self._take(job_id) or self._read(0.2):
                if reply.job_id != job_id:
                    self._backlog.append(reply)  # another job's: its own wait() or poll() takes it
                    continue
                self._track(reply, time.monotonic())
                if on_progress is not None and reply.address == protocol.PROGRESS:
                    on_progress(reply.fraction, reply.stage)
            self._act(self.tracker.tick(time.monotonic(), [job_id]))
        if job.code:
            raise RemoteError(job.error or f"job {job_id} {job.code}", job.code, job_id)
        return JobResult(job_id, job.output_path, job.info)

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
        """submit() then wait(): the blocking call for scripts and the CLI."""
        job_id = self.submit(
            input_path, start_s, end_s, instruction, output_path=output_path, seed=seed, takes=takes, job_id=job_id,
            mode=mode,
        )  # fmt: skip
        return self.wait(job_id, timeout=timeout, on_progress=on_progress)


def _absolute_output(path: str | os.PathLike) -> str:
    """An absolute output path that still ends in a separator when it did: "a folder, made if need be" (abspath drops
    it, and the server would write a file named after the folder)."""
    path = os.fspath(path)
    absolute = os.path.abspath(os.path.expanduser(path))
    return absolute + os.sep if path.endswith(("/", os.sep)) and not absolute.endswith(os.sep) else absolute


def _about(job_id: str, address: str) -> Callable[[Reply], bool]:
    _check_job_id(job_id)  # the server could not name a malformed id in its error reply: refuse it here
    return lambda r: r.job_id == job_id and r.address in (address, protocol.ERROR)


def _check_job_id(job_id: str) -> None:
    if not protocol.is_job_id(job_id):
        raise ConfigError(f"job id {job_id[:40]!r} is not valid: 1-{protocol.MAX_JOB_ID} letters, digits and . _ : -")


# ------------------------------------------------------------------------------------------------------ command line


def _connection_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--host --port --timeout --json, with defaults or (defaults False) none at all. A host or port not given is
    read when the request runs (protocol.engine_host / engine_port), where a bad IMUSIC_PORT is one line."""
    suppress = not defaults
    parser.add_argument("--host", default=argparse.SUPPRESS if suppress else None, help="engine host")
    parser.add_argument(
        "--port", type=protocol.port_argument, default=argparse.SUPPRESS if suppress else None, help="engine port"
    )
    parser.add_argument(
        "--timeout",
        type=seconds_option,
        default=argparse.SUPPRESS if suppress else None,
        help="seconds to wait for an answer (edit: no limit)",
    )
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS if suppress else False, help="print replies as JSON"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`imusic send ping|status|cancel|edit|preview|stop-preview ...`"""
    _connection_options(parser, defaults=True)
    # The same options after the request (`imusic send ping --port 9200`): no default there, so an option given
    # before the request is not reset.
    after = argparse.ArgumentParser(add_help=False)
    _connection_options(after, defaults=False)
    sub = parser.add_subparsers(dest="request", metavar="REQUEST", parser_class=type(parser))
    sub.required = True
    sub.add_parser("ping", parents=[after], help="is the engine there? prints version, model, device, state")
    status = sub.add_parser("status", parents=[after], help="the server's state, or one job's")
    status.add_argument("job_id", nargs="?", default=None)
    cancel = sub.add_parser("cancel", parents=[after], help="cancel a queued or running job")
    cancel.add_argument("job_id")
    edit = sub.add_parser("edit", parents=[after], help="edit a region of an audio file on the engine")
    edit.add_argument("input", help=f"audio file ({AUDIO_FORMATS}) on the engine machine")
    edit.add_argument("instruction", help='e.g. "extract drums", "remove bass", "add piano"')
    edit.add_argument("--start", type=seconds_option, default=0.0, help="region start in seconds (default 0)")
    edit.add_argument("--end", type=seconds_option, default=-1.0, help="region end in seconds (default: end of file)")
    edit.add_argument("-o", "--output", default=None, help="result file or folder (default: results/ beside input)")
    add_edit_options(edit, raw=False)  # the server levels every result: no --raw over the wire
    edit.add_argument("--job-id", default=None, help="resending the same id never runs the job twice")
    edit.add_argument("--no-wait", action="store_true", help="print the job id once accepted and return")
    preview = sub.add_parser("preview", parents=[after], help="play a finished job on the engine machine's output")
    preview.add_argument("job_id")
    preview.add_argument("which", nargs="?", default=protocol.PREVIEW_WHICH[0], choices=protocol.PREVIEW_WHICH)
    sub.add_parser("stop-preview", parents=[after], help="stop the preview")


def _print_reply(reply: Reply, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"address": reply.address, "args": reply.args}))
        return
    args = reply.args[:4] if reply.address == protocol.PONG else reply.args  # pong's notes: one line each, below
    print(" ".join(str(a) for a in [reply.kind, *args]))
    for note in reply.notes:
        print(f"imusic send: note: {note}", file=sys.stderr)


class _ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal, one line per stage otherwise)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr  # looked up now: stderr may have been replaced
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_stage = None

    def __call__(self, fraction: float, stage: str) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if self.tty:
            filled = int(fraction * 30)
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {fraction * 100:5.1f}% {stage[:30]:<30}")
            self.stream.flush()
        elif stage != self.last_stage:
            self.stream.write(f"{fraction * 100:5.1f}% {stage}\n")
        self.last_stage = stage

    def close(self) -> None:
        if self.tty and self.last_stage is not None:
            self.stream.write("\n")


def run(args: argparse.Namespace) -> int:
    """Run one `imusic send` request; 0 on success, 1 (via ImusicError) on an error reply or silence."""
    args.host = args.host or protocol.engine_host()
    args.port = args.port or protocol.engine_port()
    timeout = args.timeout
    short = 2.0 if timeout is None else timeout
    with Client(args.host, args.port) as client:
        if args.request == "ping":
            _print_reply(client.ping(short), args.json)
        elif args.request == "status":
            reply = client.status(args.job_id, short)
            _print_reply(reply, args.json)
            if args.job_id and reply.args[1:2] == [protocol.UNKNOWN]:
                return 1  # no such job, as `send cancel` says of it
        elif args.request == "cancel":
            _print_reply(client.cancel(args.job_id, short), args.json)
        elif args.request == "preview":
            _print_reply(client.preview(args.job_id, args.which, short), args.json)
        elif args.request == "stop-preview":
            _print_reply(client.stop_preview(short), args.json)
        elif args.request == "edit":
            return _run_edit(client, args, short)
    return 0


def _run_edit(client: Client, args: argparse.Namespace, short: float) -> int:
    if _local_bind_host(args.host) == "127.0.0.1" and not os.path.exists(args.input):
        raise ConfigError(f"no such file: {args.input}")  # said here; a remote engine says it for its own disk
    job_id = client.submit(
        args.input, args.start, args.end, args.instruction, output_path=args.output, seed=args.seed, takes=args.takes,
        job_id=args.job_id, mode=args.mode,
    )  # fmt: skip
    accepted = client.wait_for(lambda r: r.job_id == job_id and r.address in (protocol.ACCEPTED, protocol.ERROR), short)
    if accepted.address == protocol.ERROR:
        raise RemoteError(accepted.message, accepted.code, job_id)
    if args.no_wait:
        print(job_id)
        return 0
    bar = _ProgressBar()
    try:
        result = client.wait(job_id, timeout=args.timeout, on_progress=bar)
    except KeyboardInterrupt:
        bar.close()
        client.send(protocol.CANCEL, job_id)
        sys.stderr.write(f"cancel sent for job {job_id}\n")
        return 130
    bar.close()
    if args.json:
        print(json.dumps({"job_id": job_id, "output_path": result.output_path, "info": result.info}))
    else:
        print(result.output_path)
    return 0
