"""What a requester knows of its jobs, from the replies alone: one state machine for the client and the REAPER actions.

Pure: a reply goes in (`handle`), the clock goes in (`tick`), and out come the requests to send again. No socket,
no sleeping, no torch; `Client.wait` (blocking) and the REAPER actions' deferred loop (non-blocking) both drive it.

Per job: submitted -> accepted (an /accepted, /progress or /state about it, except the /state of an edit whose input
is still being checked) -> final (done, error, cancelled).
UDP may drop any datagram and a server may restart, so while a job is not final:
- not yet accepted and silent for `resend_after` seconds: resend the edit (job ids make resends harmless);
- accepted and silent for `status_after` seconds: ask for its state;
- the server says it has no such job (state `unknown`): resend the edit, if we have it; a job we only watch
  (`watch`, submitted by someone else) ends with `unknown_job`;
- the server's queue is full (`queue_full`, "resend later"): the edit is not refused for good; it is resent every
  `resend_after` seconds until the engine takes it;
- its end is heard from a `/state` (the `/done` was lost, or went to a later sender of the same id): the edit is
  resent once, which the server answers from its book with the `/done` and the result's info.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge import protocol
from bridge.protocol import EditRequest, Reply
from engine.errors import Cancelled, ImusicError

RESEND = "resend"
STATUS = "status"
# What an engine's silence about a requester's jobs means (ReplyTracker.verdict): nothing answers there at all, or
# the engine that took them stopped or hangs.
NO_ENGINE = "no engine"
LOST = "lost"
# A server that has said nothing about a running job for this long has died or hangs (it answers status queries every
# few seconds even while busy): a batch stops and the REAPER actions give their jobs up, each with a clear message.
GIVE_UP_AFTER_S = 60.0
# How long a requester waits for the engine's first answer (a ping's pong; for the REAPER actions, any reply to their
# edits) before it says that no engine is there. The receive thread answers at once even while a job runs, and a
# server still loading answers too.
ANSWER_WITHIN_S = 3.0
# How long an engine that answers pings may take to accept an edit: it journals each job (fsync) before it answers
# /accepted, and a slow or busy disk takes longer than a ping.
ACCEPT_WITHIN_S = 30.0
# How long an engine that answers pings may take to start a preview: it reads the whole result first (an hour of
# audio: seconds), and converts its rate where the device takes only its own.
PREVIEW_WITHIN_S = 60.0
# An edit not yet accepted is resent after this much silence (UDP may drop it, or its reply; job ids make a resend
# harmless), and an accepted job is asked for its state after STATUS_AFTER_RESENDS times as long (the blocking
# client's pace; the REAPER actions ask at the resend pace).
RESEND_AFTER_S = 1.0
STATUS_AFTER_RESENDS = 5
WAITING_FOR_QUEUE = "waiting for a place in the engine's queue"  # the stage of an edit refused with queue_full


def not_answering(host: str, port: int) -> str:
    """What every front end says when no engine answers at host:port."""
    return f"no imusic engine answers at {host}:{port}: start it in a terminal with `imusic serve`, then try again"


def stopped_answering(host: str, port: int, seconds: float, job_id: str = "") -> str:
    """What every front end says when an engine that took a job has said nothing about it for `seconds`."""
    about = f" about job {job_id}" if job_id else ""
    return (
        f"the imusic engine at {host}:{port} has not answered{about} for {seconds:g} s: it stopped or hangs "
        "(see its log); start `imusic serve` again"
    )


@dataclass
class TrackedJob:
    """One job as its requester sees it."""

    job_id: str
    request: EditRequest | None  # None: a job this requester did not submit (only its state can be asked)
    heard: float  # when a reply about it last arrived (or it was submitted)
    asked: float  # when it was last sent or asked about
    accepted: bool = False
    fraction: float = 0.0
    stage: str = ""
    output_path: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    code: str = ""  # the wire error code, or "cancelled", when the job failed or was cancelled
    error: str = ""  # the engine's words
    replies: int = 0  # how many replies about it arrived
    outcome_asked: bool = False  # its end was heard without its info, and the edit resent once to hear it whole

    @property
    def final(self) -> bool:
        return bool(self.output_path or self.code)

    @property
    def done(self) -> bool:
        return bool(self.output_path) and not self.code


class ReplyTracker:
    """The jobs of one requester, keyed by job id; any pending one can be resent."""

    def __init__(
        self, resend_after: float = RESEND_AFTER_S, status_after: float = STATUS_AFTER_RESENDS * RESEND_AFTER_S
    ) -> None:
        self.resend_after = resend_after
        self.status_after = status_after
        self.jobs: dict[str, TrackedJob] = {}

    def submit(self, request: EditRequest, now: float) -> TrackedJob:
        """A request was just sent (again): track it; its own earlier replies still count."""
        job = self.jobs.get(request.job_id)
        if job is None or job.request != request:
            job = self.jobs[request.job_id] = TrackedJob(request.job_id, request, heard=now, asked=now)
        job.asked = now
        return job

    def watch(self, job_id: str, now: float) -> TrackedJob:
        """Follow a job someone else submitted: its state is asked for, it is never resent."""
        if job_id not in self.jobs:
            self.jobs[job_id] = TrackedJob(job_id, None, heard=now, asked=now, accepted=True)
        return self.jobs[job_id]

    def handle(self, reply: Reply, now: float) -> TrackedJob | None:
        """Take one reply into account; returns the job it concerned (None: not one of ours, or already final)."""
        job = self.jobs.get(reply.job_id)
        if job is None or job.final:
            return None
        job.heard = now
        job.replies += 1
        if reply.address in (protocol.ACCEPTED, protocol.PROGRESS):
            job.accepted = True
            if reply.address == protocol.PROGRESS:
                job.fraction, job.stage = reply.fraction, reply.stage
        elif (
            reply.address == protocol.STATE
            and reply.state == protocol.DONE_STATE
            and job.request is not None
            and not job.outcome_asked
        ):
            # done, but a /state carries no info (seed, levels, warnings): the edit resent now is answered with /done
            job.outcome_asked = True
            job.accepted, job.fraction, job.stage = False, 1.0, ""  # the message is the result's path, not a stage
            job.heard = job.asked = now - self.resend_after
        elif reply.address == protocol.DONE or (reply.address == protocol.STATE and reply.state == protocol.DONE_STATE):
            job.accepted = True
            job.output_path = reply.output_path or (job.request.output_path if job.request else "")
            job.info = reply.info
        elif reply.address == protocol.ERROR and reply.code == protocol.QUEUE_FULL and job.request is not None:
            # "resend later": the engine took none of it; the next tick sends it again
            job.accepted, job.stage = False, WAITING_FOR_QUEUE
        elif reply.address == protocol.ERROR:
            job.code, job.error = reply.code or "error", reply.message
        elif reply.address == protocol.STATE:
            if reply.state in (protocol.ERROR_STATE, protocol.CANCELLED):
                message = reply.message or reply.state
                # a detail without its code: the code of a cancellation, or of an error of no named kind
                default = Cancelled.code if reply.state == protocol.CANCELLED else ImusicError.code
                job.code = protocol.detail_code(message, default)
                job.error = message
            elif reply.state == protocol.UNKNOWN:
                if job.request is None:
                    # the engine's words, as its cancel and preview of the id say them
                    job.code = protocol.UNKNOWN_JOB
                    job.error = reply.message or str(protocol.unknown_job(job.job_id))
                else:
                    # A server started without our journal: the next tick sends it again.
                    job.accepted, job.stage = False, ""
                    job.heard = job.asked = now - self.resend_after
            else:
                # queued or running, in the server's book; or still being checked, not yet (it is resent meanwhile;
                # a watched job cannot be resent: its state is asked for again, as an accepted job's is)
                job.accepted = reply.message != protocol.CHECKING or job.request is None
                job.fraction, job.stage = reply.fraction, reply.message
        return job

    def end(self, job_id: str, code: str, error: str) -> None:
        """End a pending job from this side (cancelled by the user, given up on)."""
        job = self.jobs.get(job_id)
        if job is not None and not job.final:
            job.code, job.error = code, error

    def tick(self, now: float, job_ids: list[str] | None = None) -> list[tuple[str, str]]:
        """What to send now for the pending jobs (all, or those named): (RESEND, job_id) or (STATUS, job_id)."""
        actions = []
        for job in self.pending(job_ids):
            silent = now - max(job.heard, job.asked)
            # A watched job has nothing else to go on than its state: ask as often as an edit would be resent.
            status_after = self.status_after if job.request is not None else self.resend_after
            if not job.accepted and job.request is not None and silent >= self.resend_after:
                actions.append((RESEND, job.job_id))
            elif job.accepted and silent >= status_after:
                actions.append((STATUS, job.job_id))
            else:
                continue
            job.asked = now
        return actions

    def verdict(
        self,
        now: float,
        job_ids: list[str],
        since: float,
        answer_within: float | None = ANSWER_WITHIN_S,
        give_up_after: float | None = GIVE_UP_AFTER_S,
    ) -> str:
        """What the engine's silence about these jobs means, while one of them is pending: NO_ENGINE when none of them
        has had a single reply `answer_within` s after `since` (when the requester began waiting), LOST when nothing
        at all was heard about any of them for `give_up_after` s (counted from `since` at the earliest: silence
        before a wait began is not the engine's), "" otherwise or when a limit is None. The one rule for the REAPER
        actions and Client.wait, each of which says it in the words above (not_answering, stopped_answering)."""
        jobs = [self.jobs[i] for i in job_ids if i in self.jobs]
        if not any(not job.final for job in jobs):
            return ""
        if answer_within is not None and not any(job.replies for job in jobs) and now - since > answer_within:
            return NO_ENGINE
        if give_up_after is not None and now - max([since, *(job.heard for job in jobs)]) > give_up_after:
            return LOST
        return ""

    def pending(self, job_ids: list[str] | None = None) -> list[TrackedJob]:
        jobs = self.jobs.values() if job_ids is None else [self.jobs[i] for i in job_ids if i in self.jobs]
        return [job for job in jobs if not job.final]
