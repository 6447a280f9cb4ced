"""Shared code of the imusic REAPER actions: send jobs for the selection, poll them deferred, insert the results.

The decisions live in reaper_scripts.planning (plain functions), what is read from and written into REAPER in
reaper_scripts.project; this file holds the actions, their sessions and the deferred loop.
REAPER's embedded Python imports it from Scripts/imusic/, where `imusic reaper install` also writes
imusic_paths.json: the project's import path (for reaper_scripts, bridge.client, engine.errors) and python-osc's.

Nothing here blocks REAPER: jobs are submitted at once and watched from a deferred loop that polls the client's
non-blocking socket. All results of one action are inserted together, in one undo point, when its last job ends.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import time
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
# protocol.SETTINGS_FILE, named here again: this file is read to find the project's import path, before any import.
_PATHS_FILE = os.path.join(_HERE, "imusic_paths.json")


def _load_settings() -> dict:
    """The installer's settings beside this file ({} when run from the project itself)."""
    try:
        with open(_PATHS_FILE, encoding="utf-8") as handle:
            settings = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(settings, dict):  # a hand-edited file: the defaults, not a failure at every action
        return {}
    # The project goes first (our packages), python-osc's folder last (REAPER's own Python keeps its packages).
    for path in reversed(settings.get("prepend", [])):
        if path not in sys.path:
            sys.path.insert(0, path)
    for path in settings.get("append", []):
        if path not in sys.path:
            sys.path.append(path)
    return settings


SETTINGS = _load_settings()

from bridge import protocol, tracking  # noqa: E402
from engine import instructions  # noqa: E402
from engine.errors import Cancelled, ConfigError, ImusicError  # noqa: E402
from reaper_scripts import planning, project  # noqa: E402

TITLE = "imusic"
EXT_SECTION = "imusic"
# No /accepted within this many seconds: the engine is not there (or not on this port).
ACCEPT_TIMEOUT_S = tracking.ANSWER_WITHIN_S
# Resend an unanswered edit, or ask for an accepted job's state, after this much silence (UDP may drop a reply).
RESEND_EVERY_S = tracking.RESEND_AFTER_S
# Give up on jobs after this much silence from the engine (it sends progress while it works).
LOST_AFTER_S = tracking.GIVE_UP_AFTER_S
# Time a deferred round may spend building the waveforms of inserted results (REAPER's timer ticks every ~33 ms)
PEAK_BUDGET_S = 0.015
# Two fields, their values separated by "|" (an instruction may hold commas): the instruction and the mode. REAPER
# splits the captions on every comma whatever the separator, so no caption may hold one.
CAPTIONS = (
    "Instruction (e.g. extract drums; remove bass; add piano):,"
    "Mode (empty keeps your recording: an add gives the new part alone; resynth = the model's audio):,"
    "separator=|,extrawidth=260"
)


def _api():
    """REAPER's API module (a fake one in tests); imported late so that planning stays importable anywhere."""
    import reaper_python

    return reaper_python


def _host(name: str, required: bool = True):
    """A function REAPER gives the running script's globals (RPR_defer, RPR_atexit, RPR_runloop); None when it is
    missing and not `required`.

    They are not members of reaper_python: REAPER injects them into the action's own namespace, which is
    `__main__` while an action or its deferred code runs. The API module is looked at too, should a host put one there.
    """
    function = getattr(sys.modules.get("__main__"), name, None) or getattr(_api(), name, None)
    if function is None and required:
        raise RuntimeError(f"{name} is missing: run this from a REAPER action (Actions > ReaScript)")
    return function


def engine_address() -> tuple[str, int]:
    """Host and port of the engine: IMUSIC_HOST / IMUSIC_PORT, then the installer's settings, then the default. A
    value that is no port is said in a message, and the default is used."""
    try:
        return protocol.engine_address(SETTINGS)
    except ImusicError as exc:
        _message(f"{exc}; using {protocol.DEFAULT_HOST}:{protocol.DEFAULT_PORT}")
        return protocol.DEFAULT_HOST, protocol.DEFAULT_PORT


def _max_seconds() -> float:
    """The longest region the actions send: the `max_seconds` setting (protocol.setting), else
    planning.DEFAULT_MAX_SECONDS; ConfigError (shown as a message) for a value that is no positive number or more than
    the server accepts (protocol.MAX_REGION_S)."""
    value = protocol.setting("max_seconds", SETTINGS, planning.DEFAULT_MAX_SECONDS)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= protocol.MAX_REGION_S):
        raise ConfigError(
            f"the longest region to edit must be a number of seconds from 0 to {protocol.MAX_REGION_S:g} (the engine's "
            f"limit), got {value!r} ({protocol.where_set('max_seconds')})"
        )
    return seconds


def _mode() -> str:
    """The edit mode of the hotkey actions: the `mode` setting (protocol.setting), else "" (the default)."""
    return str(protocol.setting("mode", SETTINGS, "")).strip()


def _message(text: str) -> None:
    _api().RPR_ShowMessageBox(text, TITLE, 0)


def stale_install() -> str:
    """Why the installed scripts no longer fit the project they import ("" when they do): this file is a copy the
    installer made, and the packages it imports are the project's own, which a `pip install -U` since has changed."""
    project_copy = os.path.join(os.path.dirname(os.path.abspath(planning.__file__)), "imusic_lib.py")
    here = os.path.abspath(__file__)
    if os.path.normcase(project_copy) == os.path.normcase(here):  # run from the project itself
        return ""
    try:
        with open(project_copy, "rb") as theirs, open(here, "rb") as ours:
            if theirs.read() == ours.read():
                return ""
    except OSError:
        return ""  # nothing to compare with: the imports above worked, so go on
    return (
        "The imusic scripts in REAPER were installed from another version of the project than the one they now use "
        f"({os.path.dirname(os.path.dirname(project_copy))}). Run `imusic reaper install` again (your settings and "
        "keys stay), then this action."
    )


# ------------------------------------------------------------------------------------------------ sessions


class _Job:
    """One region of an action: where it came from, what was sent, and what the engine said (its tracked state)."""

    def __init__(self, track: str, view: planning.ItemView, plan: planning.JobPlan, request: protocol.EditRequest):
        self.track = track  # the source track's GUID (project.track_guid): a pointer may be reused by a new track
        self.view = view
        self.plan = plan
        self.request = request
        self.state: tracking.TrackedJob | None = None  # set when it is sent

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @property
    def result_path(self) -> str:
        return self.state.output_path if self.state and not self.state.code else ""

    @property
    def code(self) -> str:
        return self.state.code if self.state else ""

    @property
    def error(self) -> str:
        return self.state.error if self.state else ""

    @property
    def progress(self) -> str:
        """What the status message says of it."""
        if self.final:
            return "done" if self.result_path else ("cancelled" if self.code == Cancelled.code else "failed")
        if self.state is None:
            return planning.job_progress(False, 0.0, "")
        return planning.job_progress(self.state.accepted, self.state.fraction, self.state.stage)

    @property
    def final(self) -> bool:
        return bool(self.state and self.state.final)


class Session:
    """The jobs of one action run, and its client, whose reply tracker follows them; what to insert when they end."""

    def __init__(self, instruction: str, client, jobs: list[_Job], project: str = "", song_file: str = "") -> None:
        self.instruction = instruction
        self.client = client
        self.jobs = {job.job_id: job for job in jobs}
        self.project = project  # the project tab it came from: its results go there and nowhere else
        self.song_file = song_file  # the song open in that tab then ("" unsaved): another one there is not it
        self.started = time.monotonic()

    def send(self) -> None:
        """Submit every job: RequestError (before any is sent) for one the engine would refuse, OSError when the
        socket cannot send."""
        for job in self.jobs.values():
            protocol.parse_request(protocol.EDIT, list(job.request.to_args()))
        for job in self.jobs.values():
            self.client.send_edit(job.request)
            job.state = self.client.tracker.jobs[job.job_id]

    def abandon(self) -> None:
        """Cancel the jobs still pending, once and unanswered, before the action gives up on them: an engine that was
        only slow (a disk spinning up) would otherwise run them to results nobody inserts."""
        for job in self.pending:
            with contextlib.suppress(OSError, ImusicError):
                self.client.send(protocol.CANCEL, job.job_id)

    def step(self, now: float, cancelled: set[str]) -> str:
        """Read replies and keep the jobs alive; returns "running", "done" or "silent" (the engine never answered)."""
        self.client.tracker.resend_after = self.client.tracker.status_after = RESEND_EVERY_S
        for job in self.pending:
            if job.job_id in cancelled:
                self.client.tracker.end(job.job_id, Cancelled.code, "cancelled")
        # Replies in, then whatever the tracker says is due: an unanswered edit is resent (job ids make that
        # harmless; it covers a lost datagram or a restarting engine), an accepted one is asked for its state.
        with contextlib.suppress(OSError):
            self.client.follow()
        pending = self.pending
        if not pending:
            return "done"
        verdict = self.client.tracker.verdict(now, list(self.jobs), self.started, ACCEPT_TIMEOUT_S, LOST_AFTER_S)
        if verdict == tracking.NO_ENGINE:
            return "silent"
        if verdict == tracking.LOST:
            self.abandon()
            for job in pending:
                lost = f"{tracking.stopped_answering(*self.client.server, LOST_AFTER_S)}, then run the action again"
                self.client.tracker.end(job.job_id, protocol.NO_REPLY, lost)
            return "done"
        return "running"

    @property
    def pending(self) -> list[_Job]:
        return [job for job in self.jobs.values() if not job.final]


_SESSIONS: list[Session] = []
_LOOP = 0  # which deferred loop goes on: the one the newest action started (an older one ends at its next tick)


def _deferred_call(call: str) -> str:
    """Code for RPR_defer that calls `call` in this module. Deferred code runs in a fresh namespace, so it reaches
    this module through sys.modules, whatever it is called; one expression, which runs whether the host evaluates or
    executes the string."""
    return f"__import__('sys').modules[{__name__!r}].{call}"


def _action(run):
    """An action's entry point: it ends by deferring a no-op. REAPER gives a script that ends without deferring an
    undo point of its own ("ReaScript: Run"; its defer help: a deferring script gets none unless it makes one), and a
    cancel, a status or a refusal changes nothing to undo. A script that defers gets its undo point from its own
    Undo_BeginBlock/EndBlock (the inserted results)."""

    @functools.wraps(run)
    def action(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        finally:
            if defer := _host("RPR_defer", required=False):
                defer("None")

    return action


def _defer_tick() -> None:
    _host("RPR_defer")(_deferred_call(f"tick({_LOOP})"))


def _keep_loop() -> None:
    """The start of every action that edits: take over the deferred loop of earlier edits (REAPER may have ended the
    instance that ran it). A run of an action while an earlier run of it waits starts a new instance without REAPER's
    question: its reaper-kb.ini line says so (reaper_scripts.keymap.SCRIPT_FLAGS)."""
    if _SESSIONS or project.PEAKS.pending:
        _ensure_loop()


def _remember_jobs(R) -> None:
    """Job ids of every action under way (running, or done and waiting for its song's tab), for the cancel action
    (which runs as a separate script)."""
    ids = [job_id for session in _SESSIONS for job_id in session.jobs]
    R.RPR_SetExtState(EXT_SECTION, "jobs", ",".join(ids), False)


def _cancelled_ids(R) -> set[str]:
    return {i for i in R.RPR_GetExtState(EXT_SECTION, "cancelled").split(",") if i}


def run_edit(instruction: str, mode: str = "") -> None:
    """The body of every edit action: plan the selection, submit one job per region, start the deferred loop.

    `mode` "" is the engine's default for the operation; the engine refuses a mode that does not apply."""
    R = _api()
    _keep_loop()
    _send_edit(R, instruction, mode)


def _send_edit(R: Any, instruction: str, mode: str) -> None:
    """run_edit once the action holds the loop: plan, submit, watch."""
    if problem := stale_install():
        _message(problem)
        return
    try:
        instruction = planning.normalize_instruction(instruction)
        selection, clip = project.read_selection(R)
        plans = planning.plan_jobs([view for _, view in selection], clip=clip, max_seconds=_max_seconds())
    except ImusicError as exc:
        _message(str(exc))
        return
    from bridge.client import Client

    host, port = engine_address()
    try:
        client = Client(host, port)
    except (ImusicError, OSError) as exc:
        _message(f"Cannot reach the imusic engine at {host}:{port}: {exc}")
        return
    media_dir = project.media_dir(R)
    sent_mode = planning.action_mode(mode)  # an add: the new part alone, on its track beside yours
    jobs = []
    for (track, view), plan in zip(selection, plans, strict=True):
        job_id = "rpr-" + protocol.new_job_id()
        output = planning.output_path(media_dir, plan.source_path, instruction, job_id)
        request = protocol.EditRequest(
            job_id, plan.source_path, plan.start_s, plan.end_s, instruction, output, mode=sent_mode
        )
        jobs.append(_Job(project.track_guid(R, track), view, plan, request))
    home = project.active_project(R)
    session = Session(instruction, client, jobs, home, project.project_file(R, home) or "")
    folder = os.path.dirname(jobs[0].request.output_path) if jobs else media_dir
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        client.close()
        _message(f"Cannot make the folder for the results, {folder}: {exc.strerror or exc}")
        return
    try:
        session.send()
    except protocol.RequestError as exc:  # the edit itself, checked before any was sent: not the connection
        client.close()
        _message(f"{planning.undo_description(instruction)}: {exc}")
        return
    except (ImusicError, OSError) as exc:
        client.close()
        _message(f"Cannot send to the imusic engine at {host}:{port}: {exc}")
        return
    _SESSIONS.append(session)
    _remember_jobs(R)
    _ensure_loop()


def _ensure_loop() -> None:
    """Run the deferred loop in this action's script instance: REAPER ends an older instance when its action is run
    again (or the user terminates it), and the loop with it."""
    global _LOOP
    _LOOP += 1
    _defer_tick()


def tick(loop: int | None = None) -> None:
    """One deferred round: read every reply that has arrived, finish sessions whose jobs all ended, defer again."""
    if loop is not None and loop != _LOOP:
        return  # a newer action runs the loop now
    R = _api()
    now = time.monotonic()
    cancelled = _cancelled_ids(R)
    for session in list(_SESSIONS):
        if cancelled.intersection(session.jobs):  # the cancel action: none of its results is inserted
            _drop(session)
            continue
        try:
            outcome = session.step(now, cancelled)
            if outcome == "silent":
                session.abandon()
                _drop(session)
                host, port = engine_address()
                _message(tracking.not_answering(host, port))
            elif outcome == "done" and project.project_file(R, session.project) is None:
                _drop(session)
                _project_closed(session)  # its tab was closed
            elif outcome == "done" and project.active_project(R) != session.project:
                # REAPER inserts tracks in the active tab only: the results wait until their tab is active again. Asked
                # before same_song reads the tab's tracks: the binding passes a track of a tab in the background as
                # NULL (ValidatePtr checks it against the active project), and an unsaved song read as closed.
                pass
            elif outcome == "done" and not project.same_song(
                R, session.project, session.song_file, [job.track for job in session.jobs.values()]
            ):
                _drop(session)
                _project_closed(session)  # another song was opened in its tab
            elif outcome == "done":
                _drop(session)
                finish(R, session)
        except Exception as exc:  # a bug must cost one action, not the loop that watches every other one
            if session in _SESSIONS:
                _drop(session)
            title = planning.undo_description(session.instruction)
            _message(f"{title} stopped on an internal error: {type(exc).__name__}: {exc}")
    _remember_jobs(R)
    try:
        project.PEAKS.run(R, PEAK_BUDGET_S)
    except Exception:  # noqa: BLE001 - a waveform is not worth the loop that watches every edit
        project.PEAKS.pending.clear()
    if _SESSIONS or project.PEAKS.pending:
        _defer_tick()
    else:
        R.RPR_DeleteExtState(EXT_SECTION, "cancelled", False)


def _drop(session: Session) -> None:
    _SESSIONS.remove(session)
    with contextlib.suppress(OSError):
        session.client.close()


def finish(R: Any, session: Session) -> None:
    """Insert every result of a session in one undo point; one message for the jobs that failed."""
    done = [job for job in session.jobs.values() if job.result_path]
    failed = [job for job in session.jobs.values() if job.code and job.code != Cancelled.code]
    missing = [job for job in done if not os.path.isfile(job.result_path)]
    unnamable = [job for job in done if planning.chunk_string(job.result_path) is None]
    done = [job for job in done if job not in missing and job not in unnamable]
    if done:
        project.insert_results(R, session.instruction, done)
    lines = [f"{job.view.describe()}: {job.error or job.code}" for job in failed]
    lines += [f"{job.view.describe()}: the result file is missing: {job.result_path}" for job in missing]
    lines += [f"{job.view.describe()}: {planning.UNCHUNKABLE}: {job.result_path}" for job in unnamable]
    title = planning.undo_description(session.instruction)
    if lines:
        _message(f"{title} failed for\n" + "\n".join(lines))
    notes, shown = planning.new_notes((job.state.info for job in done), R.RPR_GetExtState(EXT_SECTION, "notes"))
    if notes:
        R.RPR_SetExtState(EXT_SECTION, "notes", shown, False)
        _message(f"{title}: a note from the engine (shown once per REAPER session)\n\n" + "\n\n".join(notes))


def _project_closed(session: Session) -> None:
    """The session's project was closed before its results came: say where they are, and what failed."""
    done = [job.result_path for job in session.jobs.values() if job.result_path]
    failed = [job for job in session.jobs.values() if job.code and job.code != Cancelled.code]
    title = planning.undo_description(session.instruction)
    where = ("; the results are in:\n" + "\n".join(done)) if done else ""
    lines = "".join(f"\n{job.view.describe()} failed: {job.error or job.code}" for job in failed)
    _message(f"{title}: the project it came from was closed before the edit ended (or another one opened in its "
             f"tab){where}{lines}")  # fmt: skip


# ------------------------------------------------------------------------------------------------ the other actions


@_action
def run_prompted() -> None:
    """ "Instruct: edit selected items...": ask for an instruction, then run it."""
    R = _api()
    _keep_loop()  # before the dialog: Cancel there must not leave earlier edits without their loop
    if problem := stale_install():  # said before the producer types an instruction for nothing
        _message(problem)
        return
    defaults = f"|{_mode()}"  # empty: the actions' default (planning.action_mode)
    ok, _, _, _, values, _ = R.RPR_GetUserInputs("Instruct: edit selected items", 2, CAPTIONS, defaults, 1024)
    if not ok:
        return  # the user pressed Cancel
    instruction, _, mode = values.partition("|")
    _send_edit(R, instruction, mode.strip())  # the loop is this action's already


@_action
def run_preset(operation: str, stem: str) -> None:
    """A hotkey action: one fixed (operation, stem), in the installer's mode (the engine's default if unset)."""
    run_edit(instructions.instruction_text(operation, stem), _mode())


@_action
def run_cancel() -> None:
    """Cancel every edit the actions started, also one done and waiting for its song's tab: no result of theirs is
    inserted (the files of those that ended stay in the media folder)."""
    R = _api()
    ids = [i for i in R.RPR_GetExtState(EXT_SECTION, "jobs").split(",") if i]
    if not ids:
        _message("No imusic edits are running.")
        return
    from bridge.client import Client

    host, port = engine_address()
    try:
        with Client(host, port) as client:
            for job_id in ids:
                client.send(protocol.CANCEL, job_id)
    except (ImusicError, OSError):
        pass  # the deferred loop still drops them below
    marked = _cancelled_ids(R) | set(ids)
    R.RPR_SetExtState(EXT_SECTION, "cancelled", ",".join(sorted(marked)), False)


_STATUS: dict = {}


@_action
def run_status() -> None:
    """Ask the engine for its state and show it with the running edits (answer watched deferred, never blocking)."""
    from bridge.client import Client

    if problem := stale_install():
        _message(problem)
        return

    host, port = engine_address()
    try:
        client = Client(host, port)
        client.send(protocol.PING)
        client.send(protocol.STATUS)
    except (ImusicError, OSError) as exc:
        _message(f"Cannot reach the imusic engine at {host}:{port}: {exc}")
        return
    old = _STATUS.get("client")
    if old is not None:
        old.close()
    _STATUS.update(client=client, started=time.monotonic(), pong=None, server=None)
    _defer_status()


def _defer_status() -> None:
    _host("RPR_defer")(_deferred_call("status_tick()"))


def status_tick() -> None:
    """Deferred half of run_status: wait (without blocking) for the pong, then show one message."""
    client = _STATUS.get("client")
    if client is None:
        return
    for reply in client.poll():
        if reply.address == protocol.PONG:
            _STATUS["pong"] = reply
        elif reply.address == protocol.SERVER_STATUS:
            _STATUS["server"] = reply
    answered = _STATUS["pong"] is not None and _STATUS["server"] is not None
    if not answered and time.monotonic() - _STATUS["started"] < ACCEPT_TIMEOUT_S:
        _defer_status()
        return
    client.close()
    pong, server = _STATUS["pong"], _STATUS["server"]
    _STATUS.clear()
    host, port = engine_address()
    if pong is None:
        _message(tracking.not_answering(host, port))
        return
    running = [
        (job.view.describe(), session.instruction, job.progress + ("; waiting for its song's tab" if waits else ""))
        for session in _SESSIONS
        for waits in [not session.pending]  # done: inserted when its song's tab is active again
        for job in session.jobs.values()
    ]
    _message(planning.status_text(pong, server, running, host, port))
