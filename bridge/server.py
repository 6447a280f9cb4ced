"""`imusic serve`: the engine server. The model stays resident; edit jobs arrive over OSC (UDP) and are answered to
the address and port they came from.

One receiving thread runs the dispatcher: it checks what is cheap (the arguments, as words: no file system call, which
a drive spinning up can hold for seconds), answers pings, status and cancels, and hands the rest on. One checking
thread checks each new edit's paths against the allowed roots (symlinks resolved) and that its input is a regular file
(os.stat, never opened), probes the input (header only, within a budget: bridge.audio_read.probe), then journals and
acknowledges it, in arrival order; one preview thread reads and plays; one
worker thread owns the model (bridge.worker) and writes results after checking their folder again at write time.
Nothing a message names is ever executed. See README.md ("OSC protocol") for every address and argument.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from bridge import __version__, audio_read, audio_write, protocol
from bridge.jobs import Job, JobBook, Journal, info_json
from bridge.protocol import EditRequest, RequestError
from bridge.server_log import PythonOscLogFilter, ServerLog
from bridge.worker import Worker
from engine.errors import Cancelled, ConfigError, ImusicError, InstructionError
from engine.files import user_path
from engine.instructions import check_not_empty, check_takes
from engine.modes import check_mode, check_mode_name, mode_name
from engine.weights.loader import add_model_arguments

NOT_ACCEPTED = "cancelled before it was accepted"


def default_journal_dir() -> Path:
    """Where the job journal lives unless --journal says otherwise."""
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return base / "imusic" / "journal"


def default_roots() -> list[Path]:
    """The user's home and the system temp folder."""
    return [Path.home(), Path(tempfile.gettempdir())]


class EngineServer:
    """The OSC engine server. start() binds and returns; serve_forever() blocks until SIGINT/SIGTERM or stop()."""

    def __init__(
        self,
        load_editor: Callable[[], Any] | None = None,
        *,
        editor: Any = None,
        host: str = protocol.DEFAULT_HOST,
        port: int = protocol.DEFAULT_PORT,
        journal_dir: str | Path | None = None,
        allow_roots: list[str | Path] | None = None,
        player: Any = None,
        preview_device: str | int | None = None,
        max_queue: int = protocol.MAX_QUEUE,
        warm_up: bool = True,
        max_region_s: float = protocol.MAX_REGION_S,
        log: Any = None,
    ) -> None:
        if load_editor is None and editor is None:
            raise ValueError("EngineServer needs an editor or a load_editor callable")
        self.load_editor = load_editor if load_editor is not None else (lambda: editor)
        self.host, self.port = host, port
        self.journal_dir = Path(journal_dir) if journal_dir else default_journal_dir()
        self.roots = [user_path(r).resolve() for r in (allow_roots or default_roots())]
        self.player = player
        self.preview_device = preview_device
        self.max_queue = max_queue
        self.warm_up = warm_up
        self.max_region_s = max_region_s
        self.logs = ServerLog(log or sys.stderr)
        self.sock: socket.socket | None = None
        self.book: JobBook | None = None
        self.worker: Worker | None = None
        self.stopped = threading.Event()  # set once stop() has begun
        self._closing = False  # stop() ran
        self.shutdown_requested = threading.Event()  # set by SIGINT/SIGTERM; serve_forever then stops
        self._receiver: threading.Thread | None = None
        self._osc_log_filter = PythonOscLogFilter(self.logs)
        self._checker: ThreadPoolExecutor | None = None  # probes new edits' inputs, then accepts them, in order
        self._previewer: ThreadPoolExecutor | None = None  # reads and plays previews, in order
        self._checking: dict[str, Job] = {}  # new edits handed to the checker and not yet accepted or refused
        self._cancel_on_accept: set[str] = set()  # of those, the ones a cancel arrived for
        self._checking_lock = threading.Lock()
        self.handlers: dict[str, Callable[[dict[str, Any], tuple[str, int]], None]] = {
            protocol.EDIT: self.on_edit,
            protocol.CANCEL: self.on_cancel,
            protocol.STATUS: self.on_status,
            protocol.PING: self.on_ping,
            protocol.PREVIEW: self.on_preview,
            protocol.STOP_PREVIEW: self.on_stop_preview,
        }

    # ------------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the journal, bind the socket, resume pending jobs, start loading the model. Returns at once."""
        journal = Journal(self.journal_dir)
        self.book = JobBook(journal, self.max_queue)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((self.host, self.port))
        except OSError as exc:
            self.sock.close()
            journal.close()
            if exc.errno == errno.EADDRINUSE:
                hint = "is another imusic server running? pick another --port"
            elif ":" in self.host:
                hint = "the server listens on IPv4 only: give --host an IPv4 address such as 127.0.0.1"
            elif isinstance(exc, socket.gaierror):
                hint = f"no address is known for the name {self.host!r}: check --host"
            else:
                hint = f"check that {self.host} is an address of this machine (--host)"
            raise ConfigError(f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); {hint}") from None
        self.sock.settimeout(0.2)  # the receive loop checks for shutdown this often
        with contextlib.suppress(OSError):  # room for bursts (a batch submitting hundreds of jobs at once)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.port = self.sock.getsockname()[1]
        pending = self.book.restore()
        for job in self.book.recovered:
            self.logs.say(f"job {job.id}: its result {job.output_path} was written before the server stopped; done")
        if pending:
            self.logs.say(f"resuming {len(pending)} job(s) from the journal")
        # a killed server's half-written results (hidden temporary names) go before the rerun; beside an adopted
        # result, the temporary name the kill left as a second link to it; and those of the jobs the restore ended
        # (cancelled, or failed too often), which no later job's name would ever sweep
        for job in [*pending, *self.book.recovered, *self.book.ended_on_restore]:
            if job.output_path:
                with contextlib.suppress(OSError, ImusicError):
                    self.allowed_path(str(Path(job.output_path).parent), "output")  # a folder swapped for a link
                    for leftover in audio_write.sweep_partials(job.output_path, starting=True):
                        self.logs.say(f"removed {leftover.name}, left by the interrupted run of job {job.id}")
        for logger in (logging.getLogger(), logging.getLogger("pythonosc")):
            logger.addFilter(self._osc_log_filter)
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="imusic-check")
        self._previewer = ThreadPoolExecutor(1, thread_name_prefix="imusic-preview")
        self.worker = Worker(
            self.book, self.load_editor, self._notify, warm_up=self.warm_up, roots=self.roots,
            max_region_s=self.max_region_s,
        )  # fmt: skip
        self.worker.start()
        self._receiver = threading.Thread(target=self._receive_loop, name="imusic-osc", daemon=True)
        self._receiver.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def state(self) -> str:
        if self.stopped.is_set():
            return protocol.STOPPING
        return self.worker.state if self.worker else protocol.LOADING

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the model is loaded and warmed up; raises what loading raised."""
        if not self.worker.ready.wait(timeout):
            return False
        if self.worker.load_error is not None:
            raise self.worker.load_error
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop receiving, interrupt the running job (it stays pending in the journal), close everything. Once: a
        second call returns at once, while `stopped` set by anything else still has this close everything."""
        if self._closing:
            return
        self._closing = True
        self.stopped.set()
        if self.worker is not None:
            self.worker.stop()
            self.worker.join(timeout)  # an editor that ignores cancel is abandoned: its job reruns on restart
            if self.worker.is_alive() and self.book is not None:
                self.book.abandon_running()
        if self._receiver is not None and self._receiver is not threading.current_thread():
            self._receiver.join(2.0)
        for executor in (self._checker, self._previewer):
            if executor is not None:  # a waiting edit is refused (unavailable); a running probe ends within its budget
                executor.shutdown(wait=True)
        for logger in (logging.getLogger(), logging.getLogger("pythonosc")):
            logger.removeFilter(self._osc_log_filter)
        self.logs.flush()
        if self.player is not None:
            with contextlib.suppress(Exception):  # shutting down anyway
                self.player.stop()
        if self.sock is not None:
            self.sock.close()
        if self.book is not None:
            self.book.journal.close()

    def serve_forever(self) -> None:
        """Block until SIGINT/SIGTERM/SIGHUP (main thread) or stop(); then shut down gracefully.

        SIGHUP too (the terminal closed, an ssh session dropped): its default kills the process with no `interrupted`
        in the journal, so the running job counted as one that stopped the engine, and after two it was failed."""
        if threading.current_thread() is threading.main_thread():
            for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK"):  # SIGHUP: POSIX; SIGBREAK: Windows' Ctrl+Break
                sig = getattr(signal, name, None)
                if sig is None or (name == "SIGHUP" and signal.getsignal(sig) is signal.SIG_IGN):
                    continue  # `nohup imusic serve` keeps running when its terminal closes (a background job started
                    # from a script has SIGINT ignored too, and is still stopped by it, as before)
                signal.signal(sig, lambda *_: self.shutdown_requested.set())
        try:
            while not self.shutdown_requested.wait(0.2):
                if self.stopped.is_set() or self.worker.load_error is not None:
                    break
        finally:
            self.stop()
        if self.worker.load_error is not None:
            raise self.worker.load_error

    # ------------------------------------------------------------------------------------------------ the wire

    def _send(self, to: tuple[str, int] | None, address: str, *args: Any) -> None:
        if to is None or self.sock is None:
            return
        try:
            protocol.send_datagram(self.sock, protocol.encode(address, *args), to)
        except OSError as exc:  # the requester went away; the job and its journal entry are unaffected
            self.logs.noisy(f"could not reply to {to[0]}:{to[1]} ({exc})")
        except Exception:  # noqa: BLE001 (a reply that cannot be built is a bug: it must not end the thread sending it)
            self.logs.noisy(f"could not build the {address} reply:\n{traceback.format_exc().rstrip()}")

    def _notify(self, job: Job, address: str, args: tuple) -> None:
        self._send(job.reply_to, address, job.id, *args)

    def _error(self, to: tuple[str, int], job_id: str, code: str, message: str) -> None:
        self._send(to, protocol.ERROR, job_id, code, protocol.clip_message(message))

    def _receive_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                datagram, sender = self.sock.recvfrom(protocol.MAX_PACKET + 1)
            except TimeoutError:
                continue
            except OSError:
                if self.stopped.is_set():
                    return
                continue  # e.g. Windows' ICMP "port unreachable" from an earlier reply
            try:
                self.handle_datagram(datagram, sender)
            except Exception as exc:  # noqa: BLE001 (a bug costs one datagram's answer, never the receiving thread)
                self.logs.noisy(traceback.format_exc().rstrip())
                self._error(sender, "", protocol.INTERNAL, protocol.internal_error(exc))

    def handle_datagram(self, datagram: bytes, sender: tuple[str, int]) -> None:
        """Decode, validate and dispatch; every failure becomes an /imusic/error to the sender."""
        try:
            messages = protocol.decode(datagram)
        except RequestError as exc:
            self._error(sender, "", exc.code, str(exc))
            return
        for address, args in messages:
            with self._answering(sender, protocol.request_job_id(address, args)):
                values = protocol.parse_request(address, args)  # first: an unknown address is said as one
                self.handlers[address](values, sender)

    @contextlib.contextmanager
    def _answering(self, sender: tuple[str, int], job_id: str):
        """Whatever fails inside is the request's /imusic/error: an ImusicError in its own words, a bug as INTERNAL
        (its traceback logged). A bug costs one request, never the server."""
        try:
            yield
        except ImusicError as exc:
            self._error(sender, getattr(exc, "job_id", "") or job_id, exc.code, str(exc))
        except Exception as exc:  # noqa: BLE001
            self.logs.noisy(traceback.format_exc().rstrip())
            self._error(sender, job_id, protocol.INTERNAL, protocol.internal_error(exc))

    # ------------------------------------------------------------------------------------------------ paths

    @staticmethod
    def absolute_path(raw: str, what: str) -> Path:
        """`raw` as an absolute path, read as text only (the file system is not asked); RequestError otherwise."""
        if not raw:
            raise RequestError(f"the {what} path is empty")
        path = user_path(raw, RequestError)
        if not path.is_absolute():
            raise RequestError(f"the {what} path must be absolute (the server has its own working folder): {raw}")
        return path

    def allowed_path(self, raw: str, what: str) -> Path:
        """An absolute path with symlinks resolved, inside an allowed root; RequestError (forbidden_path) otherwise."""
        path = self.absolute_path(raw, what)
        try:
            resolved = path.resolve(strict=False)
        except (OSError, RuntimeError) as exc:  # symlink loops, permissions
            raise RequestError(f"cannot resolve the {what} path {raw}: {exc}", protocol.FORBIDDEN_PATH) from None
        if audio_write.root_of(resolved, self.roots) is None:
            roots = ", ".join(str(r) for r in self.roots)
            raise RequestError(
                f"the {what} path {resolved} is outside the folders this server may use ({roots}); "
                "start the server with --allow-root to add one",
                protocol.FORBIDDEN_PATH,
            )
        return resolved

    # ------------------------------------------------------------------------------------------------ handlers

    def on_ping(self, values: dict[str, Any], sender: tuple[str, int]) -> None:
        info = self._editor_info()
        notes = [str(note) for note in (info.get("shortfalls") or {}).values()]
        stems = [str(stem) for stem in info.get("stems") or ()]
        model, device, weights = (str(info.get(key) or "") for key in ("model", "device", "weights"))
        pong = protocol.pong_args(__version__, model, device, self.state, notes, stems, weights)
        self._send(sender, protocol.PONG, *pong)

    def _editor_info(self) -> dict[str, Any]:
        editor = self.worker.editor if self.worker else None
        try:
            return dict(getattr(editor, "info", {}) or {})
        except Exception:  # noqa: BLE001 (an info property must not break ping)
            return {}

    def on_status(self, values: dict[str, Any], sender: tuple[str, int]) -> None:
        job_id = values["job_id"]
        if not job_id:
            queued, running = self.book.counts()
            model = str(self._editor_info().get("model", ""))
            status = protocol.server_status_args(self.state, queued, running, __version__, model)
            self._send(sender, protocol.SERVER_STATUS, *status)
            return
        job = self.book.get(job_id)
        if job is None:
            if self._is_checking(job_id):
                self._send(sender, protocol.STATE, job_id, protocol.QUEUED, 0.0, protocol.CHECKING)
                return
            self._send(sender, protocol.STATE, job_id, protocol.UNKNOWN, 0.0, str(protocol.unknown_job(job_id)))
            return
        self._send(sender, protocol.STATE, job.id, job.state, float(job.fraction), job.detail())

    def _is_checking(self, job_id: str, cancel: bool = False, cancelled: bool = False) -> bool:
        """Whether a new edit with this id is being checked (and, with `cancelled`, was cancelled meanwhile);
        `cancel` marks it cancelled."""
        with self._checking_lock:
            if job_id not in self._checking:
                return False
            if cancel:
                self._cancel_on_accept.add(job_id)
            return job_id in self._cancel_on_accept if cancelled else True

    def on_cancel(self, values: dict[str, Any], sender: tuple[str, int]) -> None:
        job_id = values["job_id"]
        if self.book.get(job_id) is None and self._is_checking(job_id, cancel=True):
            # Not accepted yet: it never will be. The checker refuses it (its requester gets /imusic/error cancelled)
            # and, like every refused edit, it is not journalled.
            detail = protocol.error_detail(Cancelled.code, NOT_ACCEPTED)
            self._send(sender, protocol.STATE, job_id, protocol.CANCELLED, 0.0, detail)
            return
        was_final = (job := self.book.get(job_id)) is not None and job.is_final
        job = self.book.cancel(job_id)
        self._send(sender, protocol.STATE, job.id, job.state, float(job.fraction), job.detail())
        if job.state == protocol.CANCELLED and not was_final:
            # A queued job ends here; its requester (maybe another client) learns it as it learns any end.
            self._notify(job, protocol.ERROR, (job.error_code, job.error_message))

    def on_edit(self, values: dict[str, Any], sender: tuple[str, int]) -> None:
        """Cheap checks here; the input's audio header is probed on the checking thread, which then accepts the job
        (journal, /imusic/accepted) or refuses it (/imusic/error), in the order the edits arrived."""
        if self.stopped.is_set():
            raise protocol.server_stopping()
        request = EditRequest.from_values(values)
        request = replace(
            request,
            job_id=request.job_id or protocol.new_job_id(),
            instruction=request.instruction.strip(),
            mode=mode_name(request.mode),
        )
        job = Job(request, reply_to=sender)
        if self.book.find_existing(job) is not None:  # a resend is answered from the book, even if its input has gone
            self._accept(job)
            return
        with self._checking_lock:
            checking = self._checking.get(job.id)
            if checking is not None:  # a resend of an edit still being checked: its answer goes to the latest sender
                if not checking.same_request(job):
                    raise protocol.job_conflict(job.id)
                checking.reply_to = sender
                # and it hears now that the edit arrived: a requester that heard nothing would take a slow check
                # (a disk spinning up) for no engine at all, and stop following a job the engine then runs
                self._send(sender, protocol.STATE, job.id, protocol.QUEUED, 0.0, protocol.CHECKING)
                return
            if len(self._checking) >= self.max_queue:
                raise RequestError(
                    f"{len(self._checking)} edits are still being checked; try again in a moment",
                    protocol.QUEUE_FULL,
                    job.id,
                )
        self._validate_edit(job)
        with self._checking_lock:
            self._checking[job.id] = job
        try:
            self._hand_on(self._checker, job.id, self._check_and_accept, job)
        except RequestError:
            with self._checking_lock:
                self._checking.pop(job.id, None)
            raise

    @staticmethod
    def _hand_on(executor: ThreadPoolExecutor | None, job_id: str, function: Callable, *args: Any) -> None:
        try:
            if executor is None:
                raise RuntimeError("not started")
            executor.submit(function, *args)
        except RuntimeError:  # shut down meanwhile
            raise protocol.server_stopping(job_id) from None

    def _check_and_accept(self, job: Job) -> None:
        """On the checking thread: probe the input, then accept the job or refuse it; any failure is an error reply.

        A cancel that arrived while it was checked refuses it (code cancelled), whatever the check found."""
        try:
            with self._answering(job.reply_to, job.id):
                try:
                    if self.stopped.is_set():
                        raise protocol.server_stopping()
                    if not self._is_checking(job.id, cancelled=True):
                        self._validate_edit(job, self._check_audio)
                except ImusicError:
                    if not self._is_checking(job.id, cancelled=True):
                        raise
                with self._checking_lock:  # a cancel is either seen here or finds the job in the book
                    if job.id not in self._cancel_on_accept:
                        try:
                            self._accept(job)
                        finally:  # in the book (or refused) before the lock goes: a cancel waiting on it must not
                            self._checking.pop(job.id, None)  # find the id still checking, answer "not accepted"
                        return
                raise Cancelled(NOT_ACCEPTED)
        finally:
            with self._checking_lock:
                self._checking.pop(job.id, None)
                self._cancel_on_accept.discard(job.id)

    def _accept(self, job: Job) -> Job:
        """Journal and queue the job (or find it already known), answer /imusic/accepted, and a known job's end."""
        job, is_new, _ = self.book.submit(
            job,
            lambda reserved: self._choose_output(job, reserved),
            lambda taken, position: self._send(taken.reply_to, protocol.ACCEPTED, taken.id, position),
        )
        if not is_new:
            self._resend_outcome(job, job.reply_to)
        return job

    def _resend_outcome(self, job: Job, sender: tuple[str, int]) -> None:
        if job.state == protocol.DONE_STATE:
            self._send(sender, protocol.DONE, job.id, job.output_path, info_json(job.info))
        elif job.state in (protocol.ERROR_STATE, protocol.CANCELLED):
            self._send(sender, protocol.ERROR, job.id, job.error_code, job.error_message)

    def _validate_edit(self, job: Job, check: Callable[[Job], None] | None = None) -> None:
        try:
            (check or self._check_edit)(job)
        except RequestError as exc:
            exc.job_id = job.id
            raise

    def _check_edit(self, job: Job) -> None:
        """On the receiving thread: the request's words only. Nothing asks the file system (a stat or a symlink's
        resolution on a drive spinning up held every other reply, and a REAPER action took the silence for no
        engine); the checking thread does (_check_files)."""
        check_takes(job.request.takes, RequestError)
        editor = self.worker.editor if self.worker else None  # loaded: its own stems are listed, not every known one
        check_not_empty(
            job.instruction, getattr(editor, "card", None), lambda m: RequestError(m, InstructionError.code)
        )
        check_mode_name(job.request.mode, RequestError)
        self.absolute_path(job.input_path, "input")
        if job.requested_output:
            self.absolute_path(job.requested_output, "output")

    def _check_files(self, job: Job) -> None:
        """On the checking thread: the paths inside the allowed roots (symlinks resolved), the input a regular file
        (os.stat: never opened, so a FIFO cannot block)."""
        source = self.allowed_path(job.input_path, "input")
        job.source_path = str(source)  # input_path stays as sent: a resend must compare equal
        if job.requested_output:
            self.allowed_path(job.requested_output, "output")
        audio_read.check_regular_file(source)  # AudioError for missing files, folders, FIFOs, devices

    def _check_audio(self, job: Job) -> None:
        """On the checking thread: the files (_check_files), the input's header (bounded in bytes and time), the
        region, the instruction."""
        self._check_files(job)
        info = audio_read.probe(job.source)  # AudioError for non-audio files, and for FIFOs swapped in since the stat
        start, stop = audio_read.region_frames(info, job.start_s, job.end_s)
        if (stop - start) / info.sample_rate > self.max_region_s:
            raise RequestError(
                f"the region is {(stop - start) / info.sample_rate:.0f} s long; the limit is "
                f"{self.max_region_s:.0f} s (were samples sent as seconds?)"
            )
        editor = self.worker.editor if self.worker else None
        if editor is not None:  # before the model is loaded, the worker checks these
            parsed = editor.parse(job.instruction)  # InstructionError lists what is supported
            check_mode(parsed.op, job.request.mode)  # ConfigError names the modes that apply

    def _choose_output(self, job: Job, reserved: set[str]) -> str:
        # Named beside the path the user gave (a symlinked media folder keeps its results), never over the real file.
        taken = reserved | {job.source}
        target = audio_write.unique_result_path(job.input_path, job.instruction, job.requested_output or None, taken)
        return str(self.allowed_path(str(target), "output"))  # checked with its folder's symlinks resolved

    def on_preview(self, values: dict[str, Any], sender: tuple[str, int]) -> None:
        job_id, which = values["job_id"], values["which"]
        if which not in protocol.PREVIEW_WHICH:
            played = " or ".join(repr(w) for w in protocol.PREVIEW_WHICH)
            raise RequestError(f"preview plays {played}, not {which!r}", job_id=job_id)
        job = self.book.get(job_id)
        if job is None:
            raise protocol.unknown_job(job_id)
        if job.state != protocol.DONE_STATE:
            raise RequestError(
                f"job {job_id} is {job.state}; only finished jobs can be previewed", protocol.NOT_FINISHED, job_id
            )
        self._hand_on(self._previewer, job_id, self._in_preview_thread, sender, job_id, self._play, job, which, sender)

    def _play(self, job: Job, which: str, sender: tuple[str, int]) -> None:
        if self.player is None:  # first: no output device is said before an hour of audio is read for nothing
            from bridge.playback import get_player

            self.player = get_player(self.preview_device)  # PlaybackUnavailable (an ImusicError) says how to fix it
        # inside the allowed folders, as every file a request names (a result swapped for a link to another file)
        if which == "result":
            path = self.allowed_path(job.output_path, "result")
            audio, sample_rate = audio_read.read_region(path, 0.0, protocol.TO_END)
        else:
            path = self.allowed_path(job.input_path, "input")
            audio, sample_rate = audio_read.read_region(path, job.start_s, job.end_s)
        self.player.play(audio, sample_rate)  # non-blocking: the server keeps serving while it plays
        self._send(sender, protocol.PREVIEWING, job.id, which, audio.shape[1] / sample_rate)

    def on_stop_preview(self, values: dict[str, Any], sender: tuple[str, int]) -> None:
        # On the preview thread too: after any preview sent before it.
        self._hand_on(self._previewer, "", self._in_preview_thread, sender, "", self._stop_preview, sender)

    def _stop_preview(self, sender: tuple[str, int]) -> None:
        if self.player is not None:
            self.player.stop()
        self._send(sender, protocol.PREVIEW_STOPPED)

    def _in_preview_thread(self, sender: tuple[str, int], job_id: str, action: Callable, *args: Any) -> None:
        """Reading a result (up to an hour of audio) and opening an output device are not for the receiving thread."""
        with self._answering(sender, job_id):
            if self.stopped.is_set():
                raise protocol.server_stopping(job_id)
            action(*args)


# ------------------------------------------------------------------------------------------------------ command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`imusic serve [--host] [--port] [--model] [--adapter] [--device] [--dtype] [--journal] [--allow-root ...]`"""
    parser.add_argument(
        "--host", default=protocol.DEFAULT_HOST, help=f"address to listen on (default {protocol.DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port",
        type=protocol.listen_port_argument,
        default=protocol.DEFAULT_PORT,
        help=f"UDP port ({protocol.DEFAULT_PORT})",
    )
    add_model_arguments(parser)
    parser.add_argument("--journal", default=None, help=f"job journal folder (default {default_journal_dir()})")
    parser.add_argument(
        "--allow-root",
        action="append",
        default=None,
        metavar="DIR",
        help="a folder the server may read and write (repeatable; default: your home and the temp folder)",
    )
    parser.add_argument("--preview-device", default=None, help="output for /imusic/preview (name or index)")
    parser.add_argument(
        "--max-queue", type=int, default=protocol.MAX_QUEUE, help=f"jobs waiting at most (default {protocol.MAX_QUEUE})"
    )
    parser.add_argument("--no-warm-up", action="store_true", help="skip the warm-up edit before saying ready")


# The line `imusic serve` logs once its socket is bound; imusic demo (which may ask for port 0) reads the port from it.
LISTENING = "listening on {host}:{port}; journal {journal}; loading the model..."
_LISTENING_PORT = re.compile(r"listening on \S+?:(\d+); journal ")


def listening_port(log_text: str) -> int | None:
    """The port of the last LISTENING line in a server's log text, None before there is one."""
    found = _LISTENING_PORT.findall(log_text)
    return int(found[-1]) if found else None


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; a model that fails to load is a one-line error."""
    if args.max_queue < 1:
        raise ConfigError(f"--max-queue must be at least 1, got {args.max_queue}")
    for root in args.allow_root or []:
        if not user_path(root).is_dir():
            raise ConfigError(f"--allow-root {root} is not a folder")
    from engine.weights import detect_layout, resolve_source

    # A model that is not there is one line before anything listens (loading itself happens after start).
    detect_layout(resolve_source(args.model))

    def load_editor():
        from engine.editor import Editor

        return Editor.load(args.model, adapter=args.adapter, device=args.device, dtype=args.dtype)

    server = EngineServer(
        load_editor,
        host=args.host,
        port=args.port,
        journal_dir=args.journal,
        allow_roots=args.allow_root,
        preview_device=args.preview_device,
        max_queue=args.max_queue,
        warm_up=not args.no_warm_up,
    )
    server.start()
    server.logs.say(LISTENING.format(host=server.host, port=server.port, journal=server.journal_dir))

    def announce() -> None:
        try:
            if server.wait_ready():
                info = server._editor_info()
                server.logs.say(f"ready: model {info.get('model', '?')} on {info.get('device', '?')}")
                for note in (info.get("shortfalls") or {}).values():
                    server.logs.say(f"note: {note}")
        except BaseException:  # noqa: BLE001 (serve_forever reports it)
            pass

    threading.Thread(target=announce, daemon=True).start()
    server.serve_forever()
    queued, running = server.book.counts()
    pending = queued + bool(running)
    server.logs.say(f"stopped; {pending} pending job(s) resume on the next start" if pending else "stopped")
    return 0
