"""bridge.jobs without sockets: the journal's replay after a crash, idempotent ids, the bounded queue, cancel."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_bridge_support import FakeEditor

from bridge import protocol
from bridge.jobs import Job, JobBook, Journal, info_json
from bridge.protocol import EditRequest, RequestError
from engine.errors import InstructionError


def make_job(job_id: str, instruction: str = "extract drums") -> Job:
    return Job(EditRequest(job_id, "/in.wav", 0.0, 1.0, instruction), reply_to=("127.0.0.1", 5000))


def book(tmp_path, max_queue: int = 8) -> JobBook:
    journal = Journal(tmp_path / "journal")
    book = JobBook(journal, max_queue)
    book.restore()
    return book


def choose(name: str):
    return lambda reserved: f"/out/{name}.wav"


def test_replay_gives_back_finished_and_pending_jobs(tmp_path):
    first = book(tmp_path)
    done, pending = make_job("a"), make_job("b")
    first.submit(done, choose("a"))
    first.submit(pending, choose("b"))
    job = first.next_job(0.1)
    first.finish(job, "/out/a.wav", {"levels": {"lufs": -14.0}})
    first.next_job(0.1)  # "b" was running when the process died
    first.journal.close()

    second = book(tmp_path)
    assert second.get("a").state == protocol.DONE_STATE and second.get("a").info == {"levels": {"lufs": -14.0}}
    assert second.get("b").state == protocol.QUEUED and list(second.queue) == ["b"]
    assert second.get("b").attempts == 1  # the run the crash cut counts


def test_an_edit_the_journal_could_not_take_is_refused_for_want_of_space_and_never_runs_later(tmp_path, monkeypatch):
    """A full disk: the edit is refused as a resource error naming the cause, and no byte of its line reaches the
    journal later (it went out with the next event's flush, and the refused edit ran after a restart)."""
    import errno
    import os

    first = book(tmp_path)
    real_fsync = os.fsync

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(RequestError) as refused:
        first.submit(make_job("a"), choose("a"))
    assert refused.value.code == "resources" and "No space left on device" in str(refused.value)
    assert first.get("a") is None
    monkeypatch.setattr(os, "fsync", real_fsync)
    first.submit(make_job("b"), choose("b"))  # space again
    first.journal.close()
    second = book(tmp_path)
    assert second.get("a") is None and list(second.queue) == ["b"]


def test_a_running_job_cancelled_before_a_crash_stays_cancelled_after_the_restart(tmp_path):
    first = book(tmp_path)
    first.submit(make_job("a"), choose("a"))
    first.submit(make_job("b"), choose("b"))
    running = first.next_job(0.1)
    assert first.cancel("a") is running and running.state == protocol.CANCELLING
    first.journal.close()  # the process dies before the worker notices the cancel

    second = book(tmp_path)
    assert second.get("a").state == protocol.CANCELLED and second.get("a").error_code == "cancelled"
    assert list(second.queue) == ["b"]  # only the job nobody cancelled runs again
    second.journal.close()
    third = book(tmp_path)  # and the verdict itself is journalled
    assert third.get("a").state == protocol.CANCELLED and list(third.queue) == ["b"]


def test_a_pending_cancel_survives_compaction(tmp_path):
    first = book(tmp_path)
    first.submit(make_job("a"), choose("a"))
    first.next_job(0.1)
    first.cancel("a")
    first.journal.compact(first.jobs)  # rewritten as snapshots: the cancel request must be in a's snapshot
    first.journal.close()
    assert book(tmp_path).get("a").state == protocol.CANCELLED


def test_a_torn_last_line_from_a_crash_is_skipped(tmp_path):
    first = book(tmp_path)
    first.submit(make_job("a"), choose("a"))
    first.journal.close()
    with open(tmp_path / "journal" / "jobs.jsonl", "a") as f:
        f.write('{"e": "done", "id": "a", "outp')  # the kill came mid-write
    second = book(tmp_path)
    assert second.get("a").state == protocol.QUEUED


def test_compaction_keeps_one_line_per_job(tmp_path):
    first = book(tmp_path)
    for name in "abc":
        first.submit(make_job(name), choose(name))
        first.finish(first.next_job(0.1), f"/out/{name}.wav", {})
    first.journal.close()
    book(tmp_path).journal.close()
    lines = (tmp_path / "journal" / "jobs.jsonl").read_text().splitlines()
    assert [json.loads(line)["job"]["id"] for line in lines] == ["a", "b", "c"]


def test_compaction_keeps_the_newest_finished_jobs_only_and_every_pending_one(tmp_path, monkeypatch):
    """A server that runs for weeks: its journal keeps KEEP_FINISHED finished jobs (for status and resends), not all."""
    from bridge import jobs as jobs_module

    monkeypatch.setattr(jobs_module, "KEEP_FINISHED", 2)
    first = book(tmp_path)
    for name in "abcd":
        first.submit(make_job(name), choose(name))
        first.finish(first.next_job(0.1), f"/out/{name}.wav", {})
    first.submit(make_job("e"), choose("e"))  # still queued
    first.journal.close()
    again = book(tmp_path)
    lines = (tmp_path / "journal" / "jobs.jsonl").read_text().splitlines()
    assert [json.loads(line)["job"]["id"] for line in lines] == ["c", "d", "e"]
    assert again.get("a") is None and again.get("d").state == protocol.DONE_STATE and list(again.queue) == ["e"]


def test_a_resend_returns_the_known_job_and_queues_nothing(tmp_path):
    jobs = book(tmp_path)
    jobs.submit(make_job("a"), choose("a"))
    resend = make_job("a")
    resend.reply_to = ("127.0.0.1", 6000)
    job, is_new, _ = jobs.submit(resend, choose("other"))
    assert not is_new and job.output_path == "/out/a.wav" and list(jobs.queue) == ["a"]
    assert job.reply_to == ("127.0.0.1", 6000)


def test_the_same_id_for_another_request_is_a_conflict(tmp_path):
    jobs = book(tmp_path)
    jobs.submit(make_job("a"), choose("a"))
    with pytest.raises(RequestError) as exc:
        jobs.submit(make_job("a", "remove bass"), choose("a"))
    assert exc.value.code == protocol.JOB_CONFLICT


def test_a_resend_with_its_times_as_float32_is_the_same_job_and_other_times_are_not(tmp_path):
    """OSC carries a time as float32 ('f') or double ('d'): a client that sent 1.1 as a double and resends it as a
    float32 (1.100000023841858) resends the same edit."""
    import struct

    def request(start: float, end: float) -> Job:
        return Job(EditRequest("a", "/in.wav", start, end, "extract drums"), reply_to=("127.0.0.1", 5000))

    def f32(value: float) -> float:
        return struct.unpack(">f", struct.pack(">f", value))[0]

    jobs = book(tmp_path)
    jobs.submit(request(1.1, 7.3), choose("a"))
    assert f32(1.1) != 1.1
    job, is_new, _ = jobs.submit(request(f32(1.1), f32(7.3)), choose("other"))
    assert not is_new and job.output_path == "/out/a.wav"
    # two doubles a few samples apart are two regions, even where they round to one float32
    base = 3000.1
    apart = base + 5 / 48000
    assert f32(apart) == f32(base) and apart != base
    assert not request(1.0, base).same_request(request(1.0, apart))
    assert request(1.0, f32(apart)).same_request(request(1.0, apart))  # one of them sent as float32
    for start, end in ((1.1 + 1e-5, 7.3), (1.1, 7.3 - 1e-5), (1.1, -1.0)):
        with pytest.raises(RequestError) as exc:
            jobs.submit(request(start, end), choose("a"))
        assert exc.value.code == protocol.JOB_CONFLICT


def test_the_queue_is_bounded(tmp_path):
    jobs = book(tmp_path, max_queue=2)
    jobs.submit(make_job("a"), choose("a"))
    jobs.submit(make_job("b"), choose("b"))
    with pytest.raises(RequestError) as exc:
        jobs.submit(make_job("c"), choose("c"))
    assert exc.value.code == protocol.QUEUE_FULL and jobs.get("c") is None


def test_output_paths_are_chosen_knowing_those_reserved_by_pending_jobs(tmp_path):
    jobs = book(tmp_path)
    jobs.submit(make_job("a"), choose("a"))
    seen: list[set[str]] = []
    jobs.submit(make_job("b"), lambda reserved: seen.append(set(reserved)) or "/out/b.wav")
    assert seen == [{"/out/a.wav"}]


def test_cancel_of_a_queued_job_is_final_and_journalled(tmp_path):
    jobs = book(tmp_path)
    jobs.submit(make_job("a"), choose("a"))
    assert jobs.cancel("a").state == protocol.CANCELLED and not jobs.queue
    jobs.journal.close()
    assert book(tmp_path).get("a").state == protocol.CANCELLED


def test_cancel_of_the_running_job_sets_its_event(tmp_path):
    jobs = book(tmp_path)
    jobs.submit(make_job("a"), choose("a"))
    jobs.next_job(0.1)
    assert jobs.cancel("a").state == protocol.CANCELLING and jobs.cancel_event.is_set()


def test_info_json_always_fits_a_datagram():
    text = info_json({"levels": {"lufs": -14.0}, "curve": list(range(100000)), "nan": float("nan")})
    data = json.loads(text)
    assert len(text) <= 8000 and data["levels"] == {"lufs": -14.0} and data["nan"] is None and data["truncated"]


def test_warm_up_and_timings_use_the_edit_a_first_hotkey_most_likely_sends_in_words_the_editor_accepts():
    from engine.instructions import typical_instruction

    assert typical_instruction(FakeEditor()) == "extract drums"

    class AddsBassOnly(FakeEditor):
        def parse(self, text):
            if text != "add bass":
                raise InstructionError("no")
            return super().parse(text)

    assert typical_instruction(AddsBassOnly()) == "add bass"

    class AcceptsNothing(FakeEditor):
        def parse(self, text):
            raise InstructionError("no")

    # what every timing measures: the one given, else the typical one; a model with none is named, not a crash
    from engine.errors import ConfigError
    from engine.instructions import timed_instruction

    assert timed_instruction(AddsBassOnly()) == "add bass" and timed_instruction(FakeEditor(), "remove bass") == (
        "remove bass"
    )
    with pytest.raises(ConfigError, match="accepts none of add <stem>, remove <stem>, extract <stem>"):
        timed_instruction(AcceptsNothing())


def test_a_long_running_server_compacts_its_journal_and_keeps_appending(tmp_path, monkeypatch):
    import bridge.jobs

    monkeypatch.setattr(bridge.jobs, "COMPACT_EVERY", 6)
    jobs = book(tmp_path)
    for name in "abcd":
        jobs.submit(make_job(name), choose(name))
        jobs.finish(jobs.next_job(0.1), f"/out/{name}.wav", {})
    jobs.submit(make_job("e"), choose("e"))
    jobs.journal.close()
    lines = (tmp_path / "journal" / "jobs.jsonl").read_text().splitlines()
    assert len(lines) < 4 * 3 + 1
    replayed = book(tmp_path)
    assert [replayed.get(n).state for n in "abcde"] == [protocol.DONE_STATE] * 4 + [protocol.QUEUED]


def test_a_result_name_taken_meanwhile_gives_way_to_one_no_pending_job_has_reserved(tmp_path):
    import threading

    from test_bridge_support import write_wav

    from bridge.worker import run_job

    song = write_wav(tmp_path / "song.wav")
    job = Job(EditRequest("a", str(song), 0.0, 1.0, "extract drums"), output_path=str(tmp_path / "x.wav"))
    (tmp_path / "x.wav").write_bytes(b"someone else's file, written after the job was accepted")
    queued = {str(tmp_path / "x-2.wav")}  # another job's result name, reserved at its acceptance
    run_job(job, FakeEditor(), threading.Event(), lambda f, s: None, reserved=lambda: queued | {job.output_path})
    assert job.output_path == str(tmp_path / "x-3.wav")
    assert (tmp_path / "x.wav").read_bytes().startswith(b"someone else's")


def test_a_job_run_again_after_a_crash_never_replaces_a_file_at_its_result_name(tmp_path):
    """The engine died mid-job; meanwhile the producer rendered the same edit by hand (`imusic edit` picks the same
    free name): the restarted job writes beside it."""
    import threading

    from test_bridge_support import write_wav

    from bridge.worker import run_job

    song = write_wav(tmp_path / "song.wav")
    job = Job(EditRequest("a", str(song), 0.0, 1.0, "extract drums"), output_path=str(tmp_path / "x.wav"))
    job.attempts = 2
    (tmp_path / "x.wav").write_bytes(b"the producer's own render")
    run_job(job, FakeEditor(), threading.Event(), lambda f, s: None, reserved=lambda: {job.output_path})
    assert job.output_path == str(tmp_path / "x-2.wav")
    assert (tmp_path / "x.wav").read_bytes() == b"the producer's own render"


def test_a_journal_that_fails_to_record_a_start_leaves_the_job_queued(tmp_path, monkeypatch):
    import errno

    jobs = book(tmp_path)
    jobs.submit(make_job("a"), choose("a"))
    real_append = Journal.append

    def full(self, event):
        if event["e"] == "started":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(self, event)

    monkeypatch.setattr(Journal, "append", full)
    with pytest.raises(OSError):
        jobs.next_job(timeout=0.1)
    assert list(jobs.queue) == ["a"] and jobs.get("a").state == protocol.QUEUED and jobs.running is None
    monkeypatch.setattr(Journal, "append", real_append)
    assert jobs.next_job(timeout=0.1).id == "a"


def test_a_job_that_stopped_the_engine_twice_is_failed_on_restart_not_run_first_again(tmp_path):
    """A job that gets the engine killed (out of memory, a crash in the model) was resumed first at every restart."""
    first = book(tmp_path)
    first.submit(make_job("poison"), choose("poison"))
    first.submit(make_job("good"), choose("good"))
    first.journal.close()
    for _ in range(2):  # two runs that ended with the engine: started, and nothing after
        again = book(tmp_path)
        assert again.next_job(timeout=0.1).id == "poison"
        again.journal.close()
    restarted = book(tmp_path)
    poison = restarted.get("poison")
    assert poison.state == protocol.ERROR_STATE and "stopped while running this edit 2 times" in poison.error_message
    assert list(restarted.queue) == ["good"]
    # a run a graceful stop interrupted does not count
    restarted.journal.close()
    other = book(tmp_path / "graceful")
    other.submit(make_job("long"), choose("long"))
    other.journal.close()
    for _ in range(3):
        again = book(tmp_path / "graceful")
        again.requeue(again.next_job(timeout=0.1))
        again.journal.close()
    assert book(tmp_path / "graceful").get("long").state == protocol.QUEUED


def test_a_job_deaf_to_a_shutdown_is_journalled_interrupted_not_counted_as_a_crash(tmp_path):
    """stop() abandons an edit that does not stop for its cancel within its timeout; nothing journalled that run as
    interrupted, so two such stops failed the job as one that stopped the engine ("try a shorter region"). And the
    abandoned worker, ending later, must not write to a journal whose folder lock is gone."""
    import time

    from test_bridge_support import start_server, write_wav

    song = write_wav(tmp_path / "song.wav")
    for run in range(3):
        server = start_server(tmp_path, tmp_path, editor=FakeEditor(steps=2, step_s=1.0, deaf=True))
        if run == 0:
            server.book.submit(Job(EditRequest("long", str(song), 0.0, 1.0, "extract drums")), choose("long"))
        job = server.book.get("long")
        assert job.state in (protocol.QUEUED, protocol.RUNNING), job.error_message
        if run == 2:
            server.stop(timeout=5.0)
            break
        deadline = time.monotonic() + 5
        while job.state != protocol.RUNNING and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # past reading the input (whose progress would see the cancel): inside the deaf edit
        server.stop(timeout=0.2)  # the deaf edit is still running
        assert server.worker.is_alive()
        with pytest.raises(OSError, match="closed"):
            server.book.journal.append({"e": "started", "id": "long"})
        server.worker.join(5)
    events = [json.loads(line) for line in (tmp_path / "journal" / "jobs.jsonl").read_text().splitlines()]
    assert not [e for e in events if e.get("e") == "failed"]


def test_a_run_abandoned_then_requeued_at_one_stop_is_one_interrupted_run(tmp_path):
    """stop() journals the run it gave up on as interrupted; the worker, seeing its cancel before the journal closes,
    requeued it and journalled a second: the replay took both off, forgetting an earlier run that crashed the engine."""
    first = book(tmp_path)
    first.submit(make_job("poison"), choose("poison"))
    first.journal.close()
    crashed = book(tmp_path)
    crashed.next_job(timeout=0.1)  # started, and nothing after: a run that stopped the engine
    crashed.journal.close()
    again = book(tmp_path)
    job = again.next_job(timeout=0.1)
    again.abandon_running()
    again.requeue(job)
    again.journal.close()
    assert book(tmp_path).get("poison").attempts == 1  # the crash is still counted


def test_a_compaction_that_fails_costs_no_job_and_is_tried_again_later(tmp_path, monkeypatch, capsys):
    import errno

    from bridge import jobs as jobs_module

    monkeypatch.setattr(jobs_module, "COMPACT_EVERY", 2)
    jobs = book(tmp_path)
    jobs.submit(make_job("a"), choose("a"))
    job = jobs.next_job(timeout=0.1)

    def full(self, jobs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Journal, "compact", full)
    jobs.finish(job, "/out/a.wav", {})  # recorded done; the compaction after it fails, and that is all
    assert jobs.get("a").state == protocol.DONE_STATE and "compaction failed" in capsys.readouterr().err
    jobs.journal.close()
    monkeypatch.undo()
    assert book(tmp_path).get("a").state == protocol.DONE_STATE


def test_a_cancel_the_journal_cannot_record_leaves_the_queued_job_as_it_was(tmp_path, monkeypatch):
    import errno

    jobs = book(tmp_path)
    jobs.submit(make_job("a"), choose("a"))

    def full(self, event):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Journal, "append", full)
    with pytest.raises(OSError):
        jobs.cancel("a")
    assert list(jobs.queue) == ["a"] and jobs.get("a").state == protocol.QUEUED


def test_a_damaged_journal_line_costs_that_line_only(tmp_path):
    jobs = book(tmp_path)
    jobs.submit(make_job("a"), choose("a"))
    jobs.journal.close()
    with open(tmp_path / "journal" / "jobs.jsonl", "ab") as journal:
        journal.write(b'{"e": "reply_to", "id": "a", "host": "x"}\n')  # a field missing
        journal.write(b"\xff\xfe not text\n")
    assert book(tmp_path).get("a").state == protocol.QUEUED


def test_done_info_too_large_is_cut_by_whole_entries_and_stays_json():
    import json

    info = {f"key{i}": "x" * 300 for i in range(100)}
    text = info_json(info)
    assert len(text) <= 8000 and json.loads(text)["truncated"] is True


def _run_then_die_before_done(tmp_path, after_write=None, restart=True, cancel=False):
    """A job run by the worker's own path whose result reached disk, then the server died before journalling "done";
    returns (the job id, the result path, the book of the restarted server)."""
    import threading

    from test_bridge_support import write_wav

    from bridge.worker import run_job

    song = write_wav(tmp_path / "song.wav")
    first = book(tmp_path)
    job, _, _ = first.submit(
        Job(EditRequest("a", str(song), 0.0, 1.0, "extract drums")), lambda reserved: str(tmp_path / "x.wav")
    )
    running = first.next_job(0.1)
    info = run_job(
        running, FakeEditor(), threading.Event(), lambda f, s: None, reserved=first.reserved_outputs,
        before_link=lambda path, identity, info: first.writing(running, path, identity, info),
    )  # fmt: skip
    assert info["bridge"]["frames"] > 0
    if after_write is not None:
        after_write(Path(running.output_path))
    if cancel:  # a cancel that came while the result was written
        first.cancel(job.id)
    first.journal.close()  # kill -9 here: "done" never reached the journal
    return job.id, Path(running.output_path), book(tmp_path) if restart else None


def test_a_result_written_just_before_the_server_died_is_recorded_done_not_edited_again(tmp_path):
    job_id, result, restarted = _run_then_die_before_done(tmp_path)
    job = restarted.get(job_id)
    assert job.state == protocol.DONE_STATE and job.output_path == str(result) and not restarted.queue
    assert job.info["bridge"]["frames"] > 0 and "not run again" in job.info["bridge"]["recovered"]
    assert restarted.recovered == [job]
    assert sorted(p.name for p in tmp_path.glob("x*.wav")) == ["x.wav"]  # no second result beside it, ever
    restarted.journal.close()
    again = book(tmp_path)  # and the journal says so from now on
    assert again.get(job_id).state == protocol.DONE_STATE and not again.queue and not again.recovered


def test_a_cancel_during_the_write_then_a_crash_leaves_the_written_result_done(tmp_path):
    """Without a crash a cancel during the write comes too late (the job ends done); after one it made the job
    "cancelled" beside a whole result file that no job owned (the next identical edit was named -2)."""
    job_id, result, restarted = _run_then_die_before_done(tmp_path, cancel=True)
    job = restarted.get(job_id)
    assert job.state == protocol.DONE_STATE and job.output_path == str(result) and restarted.recovered == [job]
    assert not restarted.ended_on_restore


def test_a_resend_from_a_new_port_the_journal_cannot_record_still_moves_the_replies(tmp_path, monkeypatch, capsys):
    """The resend's new reply address is only a convenience to journal: a full disk answered it "internal error"
    (the requester gave up) while the job ran on and finished."""
    jobs = book(tmp_path)
    jobs.submit(make_job("a"), choose("a"))
    real_append = Journal.append

    def append(self, event):
        if event["e"] == "reply_to":
            raise OSError(28, "No space left on device")
        return real_append(self, event)

    monkeypatch.setattr(Journal, "append", append)
    resend = Job(make_job("a").request, reply_to=("127.0.0.1", 6000))
    known, is_new, position = jobs.submit(resend, choose("a"))
    assert not is_new and position == 0 and known.reply_to == ("127.0.0.1", 6000)
    assert "No space left on device" in capsys.readouterr().err


@pytest.mark.parametrize("ended", ["cancelled", "failed too often"])
def test_a_restarted_server_removes_the_leftovers_of_the_jobs_its_restore_ended(tmp_path, ended):
    """Only the requeued and adopted jobs were swept: a killed write of a job the restore ends (a pending cancel, or
    MAX_ATTEMPTS runs) left its hidden temporary file for good, no later job's name matching it."""
    from test_bridge_support import dead_pid, start_server

    first = book(tmp_path)
    target = tmp_path / "results" / "song.extract_drums.wav"
    target.parent.mkdir()
    first.submit(make_job("k"), lambda reserved: str(target))
    first.next_job(0.1)
    if ended == "cancelled":
        first.cancel("k")
    else:
        first.journal.append({"e": "started", "id": "k"})  # a second run that stopped the engine
    first.journal.close()
    leftover = target.with_name(f".{target.stem}.{dead_pid()}.0badc0de.partial.wav")
    leftover.write_bytes(b"half a file")
    server = start_server(tmp_path, tmp_path)
    try:
        assert server.book.get("k").is_final and server.book.ended_on_restore == [server.book.get("k")]
    finally:
        server.stop()
    assert not leftover.exists()


@pytest.mark.parametrize("change", ["removed", "replaced", "same bytes copied over"])
def test_a_result_gone_or_replaced_before_the_restart_is_edited_again(tmp_path, change):
    import shutil

    def meddle(path: Path) -> None:
        if change == "removed":
            path.unlink()
        elif change == "replaced":
            path.unlink()
            path.write_bytes(b"the producer's own file")
        else:
            shutil.copy(path, path.with_name("copy.wav"))
            os.replace(path.with_name("copy.wav"), path)

    job_id, result, restarted = _run_then_die_before_done(tmp_path, meddle)
    assert restarted.get(job_id).state == protocol.QUEUED and list(restarted.queue) == [job_id]
    assert not restarted.recovered and restarted.get(job_id).written is not None  # until it runs again
    restarted.next_job(0.1)
    assert restarted.get(job_id).written is None


def test_the_worker_journals_each_result_before_it_takes_its_name(tmp_path):
    import time

    from test_bridge_support import write_wav

    from bridge.worker import Worker

    song = write_wav(tmp_path / "song.wav")
    jobs = book(tmp_path)
    journal_at_finish = []
    real_finish = jobs.finish

    def finish(job, output_path, info):  # what a kill -9 right here would leave in the journal
        lines = (tmp_path / "journal" / "jobs.jsonl").read_text().splitlines()
        journal_at_finish.extend(json.loads(line) for line in lines)
        real_finish(job, output_path, info)

    jobs.finish = finish
    jobs.submit(Job(EditRequest("a", str(song), 0.0, 1.0, "extract drums")), lambda r: str(tmp_path / "x.wav"))
    worker = Worker(jobs, FakeEditor, notify=lambda *args: None, warm_up=False)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while jobs.get("a").state != protocol.DONE_STATE and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop()
        worker.join(10)
    writing = [event for event in journal_at_finish if event["e"] == "writing"]
    assert [(event["id"], event["output"]) for event in writing] == [("a", str(tmp_path / "x.wav"))]
    assert writing[0]["file"]["size"] == (tmp_path / "x.wav").stat().st_size


def test_a_restarted_server_removes_the_temporary_name_a_kill_left_beside_an_adopted_result(tmp_path):
    """The kill came between the link to the result's name and the removal of its temporary name: the job is
    adopted, and the hidden temporary (a second link to the same file) goes, as it would before a rerun."""
    from test_bridge_support import dead_pid, start_server

    job_id, result, _ = _run_then_die_before_done(tmp_path, restart=False)
    leftover = result.with_name(f".{result.stem}.{dead_pid()}.0badf00d.partial.wav")
    os.link(result, leftover)
    server = start_server(tmp_path, tmp_path)
    try:
        assert server.book.get(job_id).state == protocol.DONE_STATE
    finally:
        server.stop()
    assert result.is_file() and not leftover.exists()


def test_a_resends_new_reply_address_outlives_a_restart(tmp_path):
    """REAPER restarted (a new port) and resent its edit: a server restarted after that must answer the new port, or
    the REAPER that waits never hears /done."""
    first = book(tmp_path)
    first.submit(make_job("a"), choose("a"))
    first.submit(Job(make_job("a").request, reply_to=("127.0.0.1", 6000)), choose("a"))
    first.journal.close()
    assert book(tmp_path).get("a").reply_to == ("127.0.0.1", 6000)


def test_queue_positions_count_the_running_job_and_runs_count_their_attempts(tmp_path):
    jobs = book(tmp_path)
    for name in "abc":
        jobs.submit(make_job(name), choose(name))
    running = jobs.next_job(0.1)
    assert running.id == "a" and running.attempts == 1
    _, _, position = jobs.submit(make_job("b"), choose("b"))  # a resend: its place in line, the running job first
    assert position == 1
    _, _, position = jobs.submit(make_job("c"), choose("c"))
    assert position == 2
