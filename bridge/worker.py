"""The one worker thread that owns the model: it loads and warms it, takes jobs from the book (bridge/jobs.py) one
at a time, edits each region and writes its result, and never dies of a job."""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bridge import audio_read, audio_write, protocol
from bridge.editing import edit_region
from bridge.jobs import Job, JobBook, info_json
from engine.errors import AudioError, Cancelled, ConfigError, ImusicError, ResourceError
from engine.files import NO_ROOM_ERRNOS
from engine.instructions import typical_instruction
from engine.model.config import SAMPLE_RATE

Notify = Callable[[Job, str, tuple], None]  # (job, reply address, reply args after the job id)


def run_job(
    job: Job,
    editor: Any,
    cancel: threading.Event,
    progress: Callable[[float, str], None],
    roots: Sequence[Path] | None = None,
    reserved: Callable[[], set[str]] = set,
    max_region_s: float | None = None,
    before_link: Callable[[Path, dict[str, int], dict], None] | None = None,
) -> dict:
    """Read the region, edit it, write the result: returns the result metadata (EditResult.info + bridge timings).

    With `roots`, the result's folder is checked against them when the file is created (UnsafeDestination, code
    forbidden_path, if it no longer leads inside them), not only when the job was accepted. A result name taken
    meanwhile gives way to a fresh one that no pending job has reserved either (`reserved`: their names, when asked).
    `max_region_s`: the region's length is checked again as the job runs (a file re-rendered longer while the job
    queued, or a job from the journal of a server with a larger limit). `before_link(path, identity, info)` is told of
    the result file just before it takes its name (JobBook.writing journals it).
    """
    started = time.perf_counter()
    if max_region_s is not None:
        info = audio_read.probe(job.source)
        start, stop = audio_read.region_frames(info, job.start_s, job.end_s)
        if (stop - start) / info.sample_rate > max_region_s:
            raise ConfigError(
                f"the region is now {(stop - start) / info.sample_rate:.0f} s long (the file changed after the edit "
                f"was accepted); the limit is {max_region_s:.0f} s"
            )
    if roots is not None:  # a job from the journal of a server that had other --allow-root folders, or a link swapped
        source = Path(os.path.realpath(job.source))
        if audio_write.root_of(source, [Path(r) for r in roots]) is None:
            allowed = ", ".join(str(r) for r in roots)
            raise audio_write.UnsafeDestination(
                f"refusing to read {source}: it is outside the folders this server may use ({allowed}); start the "
                "server with --allow-root to add one, and send the edit again"
            )
    progress(0.0, "editing")
    options = job.request.options()
    try:
        done = edit_region(
            editor, job.source, job.start_s, job.end_s, job.instruction, job.output_path,
            options=options,
            # Never over an existing file, not even on a second attempt after a crash: what is there may be the
            # producer's own (placed while the engine was down); a result of this job's first attempt that made it
            # to disk stays beside the new one, under its own name.
            overwrite=False,
            on_exists=lambda taken: audio_write.unique_result_path(job.source, job.instruction, taken, reserved()),
            roots=roots, progress=progress, cancel=cancel, before_link=before_link,
        )  # fmt: skip
    except OSError as exc:  # in the batch's words: no room is a resource every later job lacks too, the rest this one's
        if exc.errno in NO_ROOM_ERRNOS:
            raise ResourceError(f"no room to write the result to {job.output_path}: {exc.strerror or exc}") from None
        raise AudioError(f"cannot write the result to {job.output_path}: {exc}") from None
    job.output_path = str(done.output_path)
    done.info["bridge"].update(
        job_s=time.perf_counter() - started,
        queued_s=max(0.0, time.time() - job.accepted_at - (time.perf_counter() - started)),
        attempt=job.attempts,
    )
    return done.info


class Worker(threading.Thread):
    """The one thread that loads the model, warms it up, and runs jobs one at a time. It never dies of a job."""

    def __init__(
        self,
        book: JobBook,
        load_editor: Callable[[], Any],
        notify: Notify,
        warm_up: bool = True,
        progress_interval: float = 0.1,
        roots: Sequence[Path] | None = None,
        max_region_s: float | None = None,
    ) -> None:
        super().__init__(name="imusic-worker", daemon=True)
        self.book = book
        self.max_region_s = max_region_s
        self.roots = roots  # results are written only inside these (checked at write time)
        self.load_editor = load_editor
        self.notify = notify
        self.warm_up = warm_up
        self.progress_interval = progress_interval
        self.editor: Any = None
        self.state = protocol.LOADING
        self.load_error: BaseException | None = None
        self.ready = threading.Event()  # set when ready, or when loading failed (then load_error is set)
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        self.book.interrupt_running()

    def run(self) -> None:
        try:
            self.editor = self.load_editor()
            if self.warm_up:
                self.state = protocol.WARMING
                self._warm_up()
        except BaseException as exc:  # noqa: BLE001 (reported by the server, which stops)
            self.load_error = exc
            self.state = protocol.STOPPING
            self.ready.set()
            return
        self.state = protocol.READY
        self.ready.set()
        while not self.stopping.is_set():
            try:
                job = self.book.next_job(timeout=0.2)
                if job is None:
                    continue
                if self.stopping.is_set():
                    self.book.requeue(job)
                    break
                self._run_one(job)
            except Exception as exc:  # noqa: BLE001 - the journal's disk (full for a moment): the loop goes on
                print(f"imusic serve: the worker could not record a job ({exc}); trying again", file=sys.stderr)
                self.stopping.wait(1.0)

    def _warm_up(self) -> None:
        instruction = typical_instruction(self.editor)
        if instruction is None:
            print("imusic serve: no instruction to warm up with; first edit will be slower", file=sys.stderr)
            return
        sample_rate = int((getattr(self.editor, "info", {}) or {}).get("sample_rate", SAMPLE_RATE))
        noise = np.random.default_rng(0).standard_normal((1, sample_rate)).astype(np.float32) * 0.05  # 1 s
        try:
            self.editor.edit(noise, sample_rate, instruction, seed=0)
        except ImusicError as exc:
            print(f"imusic serve: warm-up edit failed ({exc}); serving anyway", file=sys.stderr)

    def _run_one(self, job: Job) -> None:
        cancel = self.book.cancel_event
        last = [0.0, ""]

        def progress(fraction: float, stage: str) -> None:
            # Throttled: a fast model reports every step, and REAPER only needs a smooth bar.
            job.fraction, job.stage = float(fraction), str(stage)[:200]
            now = time.monotonic()
            if stage != last[1] or fraction >= 1.0 or now - last[0] >= self.progress_interval:
                last[0], last[1] = now, job.stage
                self.notify(job, protocol.PROGRESS, (float(fraction), job.stage))
            if cancel.is_set():
                raise Cancelled("cancelled")

        self.notify(job, protocol.PROGRESS, (0.0, "started"))
        try:
            info = run_job(
                job, self.editor, cancel, progress, self.roots, self.book.reserved_outputs, self.max_region_s,
                before_link=lambda path, identity, info: self.book.writing(job, path, identity, info),
            )  # fmt: skip
        except Cancelled:
            if job.cancel_requested:
                try:
                    self.book.fail(job, Cancelled.code, "cancelled", cancelled=True)
                except OSError as exc:  # on disk it stays cancel_requested: a restart records it as cancelled
                    print(f"imusic serve: journal write failed for job {job.id}: {exc}", file=sys.stderr)
                    job.state, job.error_code, job.error_message = protocol.CANCELLED, Cancelled.code, "cancelled"
                    self.book.clear_running(job)
                self.notify(job, protocol.ERROR, (Cancelled.code, "cancelled"))
            else:
                self.book.requeue(job)  # shutdown: it stays pending in the journal
            return
        except ImusicError as exc:
            self._failed(job, exc.code, str(exc))
            return
        except MemoryError:
            self._failed(job, ResourceError.code, "out of memory while editing; try a shorter region")
            return
        except Exception as exc:  # noqa: BLE001 (a bug must cost one job, not the server)
            traceback.print_exc(file=sys.stderr)
            self._failed(job, protocol.INTERNAL, protocol.internal_error(exc))
            return
        try:
            self.book.finish(job, job.output_path, info)
        except OSError as exc:
            # The result is on disk but the journal could not say so (disk full?): report it, the job reruns later.
            self._failed(job, ResourceError.code, f"result written to {job.output_path} but the journal failed: {exc}")
            return
        self.notify(job, protocol.DONE, (job.output_path, info_json(info)))

    def _failed(self, job: Job, code: str, message: str) -> None:
        message = protocol.clip_message(message)
        try:
            self.book.fail(job, code, message)
        except OSError as exc:  # journal unwritable: the job stays pending on disk and reruns after a restart
            print(f"imusic serve: journal write failed for job {job.id}: {exc}", file=sys.stderr)
            job.state, job.error_code, job.error_message = protocol.ERROR_STATE, code, message
            self.book.clear_running(job)
            self.book._clear_running(job)
        self.notify(job, protocol.ERROR, (code, message))
