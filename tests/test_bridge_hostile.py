"""The engine server against hostile inputs (issue #17, items 2, 3 and 8): nothing a request names may stall the
receiving thread (FIFOs, huge files that are not audio), a result folder swapped for a symlink after acceptance does
not send the result outside the allowed folders, and a flood of odd packets does not grow the log without bound.

The FIFO and huge-file tests talk to a server in a subprocess (tests/test_bridge_support.py): a server stuck in a
blocking open() holds Python's GIL, and an in-process test would hang with it instead of failing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_bridge_support import FakeEditor, launch_fake_server, start_server

from bridge import audio_read, audio_write, protocol
from bridge.client import Client, RemoteError
from bridge.server_log import RateLimiter
from engine.errors import AudioError

TIMEOUT = 10.0
# A ping's wait: well under TIMEOUT, for which held work blocks, so an answer shows the receiving thread is free.
ANSWER_S = 1.0
HUGE = 2 << 30  # 2 GiB, sparse: nothing is written to disk


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """A FakeEditor server in a subprocess, shared by this module's tests: .port, .root, .edits (its edit log)."""
    base = tmp_path_factory.mktemp("remote")
    root = base / "root"
    root.mkdir()
    process, port = launch_fake_server(base, root)
    try:
        yield SimpleNamespace(port=port, root=root, edits=base / "edits.log")
    finally:
        process.kill()
        process.wait()


def sparse_file(path: Path, size: int = HUGE, head: bytes = b"") -> Path:
    with open(path, "wb") as f:
        f.write(head)
    os.truncate(path, size)
    return path


def release_fifo_readers(path: Path) -> None:
    """A reader blocked in open() of a FIFO gets end-of-file (what a server stuck on it needs to go on)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # no reader waiting
    os.close(fd)


def pings_until(port: int, done: threading.Event, limit_s: float = TIMEOUT) -> int:
    """Ping from a socket of its own every 20 ms until `done`; how many were answered (NoReply: one was not)."""
    answered = 0
    deadline = time.monotonic() + limit_s
    with Client("127.0.0.1", port) as pinger:
        while not done.is_set() and time.monotonic() < deadline:
            pinger.ping(ANSWER_S)
            answered += 1
            time.sleep(0.02)
    return answered


def edit_while_pinging(port: int, path: Path, job_id: str) -> tuple[protocol.Reply, int]:
    """Send an edit of `path` and ping meanwhile; returns the edit's first reply and how many pings were answered."""
    done = threading.Event()
    replies: list[protocol.Reply] = []

    def edit() -> None:
        try:
            with Client("127.0.0.1", port) as client:
                client.submit(str(path), 0.0, 1.0, "extract drums", job_id=job_id)
                replies.append(client.wait_for(lambda r: r.job_id == job_id, TIMEOUT))
        finally:
            done.set()

    thread = threading.Thread(target=edit)
    thread.start()
    try:
        answered = pings_until(port, done)
    finally:
        done.set()
        thread.join(TIMEOUT + 1)
    assert replies, f"no reply about {job_id}"
    return replies[0], answered


# ----------------------------------------------------------------------------------------------- item 2


def test_a_fifo_input_is_refused_and_pings_keep_being_answered(remote):
    fifo = remote.root / "pipe.wav"
    os.mkfifo(fifo)
    try:
        reply, answered = edit_while_pinging(remote.port, fifo, "fifo-1")
    finally:
        release_fifo_readers(fifo)
    assert reply.address == protocol.ERROR and reply.code == "bad_audio", reply
    assert "FIFO" in reply.message
    assert answered  # every ping meanwhile was answered (ping raises NoReply otherwise)
    assert not remote.edits.exists()  # nothing was edited


@pytest.mark.parametrize(
    "name,head",
    [
        ("zeros.wav", b""),  # pedalboard scans all of it for a header: 14 s per 2 GB
        ("riff.wav", b"RIFF\xff\xff\xff\x7fWAVE"),  # a WAV header over empty chunks: minutes per 2 GB, 8 bytes a seek
        ("form.aiff", b"FORM\x7f\xff\xff\xffAIFF"),
    ],
)
def test_a_huge_file_that_is_not_audio_is_refused_quickly_and_pings_keep_being_answered(remote, name, head):
    huge = sparse_file(remote.root / name, head=head)
    reply, answered = edit_while_pinging(remote.port, huge, f"huge-{name}")
    assert reply.address == protocol.ERROR and reply.code == "bad_audio", reply
    assert "no usable audio header" in reply.message and "gave up" in reply.message  # the probe's budget ended it
    assert answered  # and every ping meanwhile was answered (ping raises NoReply otherwise)
    assert not remote.edits.exists()


def test_probe_gives_up_within_its_budget_without_reading_the_whole_file(tmp_path):
    import re

    for head in (b"", b"RIFF\xff\xff\xff\x7fWAVE", b"OggS\x00\x02" + b"\x00" * 20, b"fLaC\x00\x00\x00\x22"):
        huge = sparse_file(tmp_path / "huge.wav", head=head)
        with pytest.raises(AudioError, match="no usable audio header after reading") as refused:
            audio_read.probe(huge)
        read, calls = map(int, re.search(r"reading (\d+) bytes \((\d+) reads", str(refused.value)).groups())
        assert read <= audio_read.PROBE_MAX_BYTES < HUGE and calls <= audio_read.PROBE_MAX_CALLS + 1, head
    # the seconds budget alone ends it too (a slow disk): with no time at all, it gives up at the first read
    with pytest.raises(AudioError, match=r"gave up"):
        audio_read.probe(huge, max_bytes=HUGE, max_calls=10**9, timeout_s=0.0)


def test_probe_refuses_fifos_folders_and_missing_files_without_opening_them_blocking(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    try:
        for path, words in [(fifo, "FIFO"), (tmp_path, "folder"), (tmp_path / "nope.wav", "no such file")]:
            with pytest.raises(AudioError, match=words):
                audio_read.probe(path)
            with pytest.raises(AudioError, match=words):
                audio_read.check_regular_file(path)
            with pytest.raises(AudioError, match=words):
                audio_read.read_region(path, 0.0, 1.0)
    finally:
        release_fifo_readers(fifo)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".aiff", ".ogg", ".mp3"])
def test_the_bounded_probe_reads_what_the_unbounded_reader_reads_from_the_path(tmp_path, suffix):
    import soundfile as sf
    from pedalboard.io import AudioFile

    path = tmp_path / f"a{suffix}"
    with AudioFile(str(path), "w", 44100, 2) as f:
        f.write((np.random.default_rng(0).standard_normal((2, 44100 * 2)) * 0.1).astype(np.float32))
    if suffix == ".mp3":  # read through libsndfile, without the encoder's delay and padding (audio_read._SndfileReader)
        expected = (sf.info(str(path)).samplerate, sf.info(str(path)).channels, sf.info(str(path)).frames)
    else:
        with AudioFile(str(path)) as f:
            expected = (int(f.samplerate), int(f.num_channels), int(f.frames))
    info = audio_read.probe(path)
    assert (info.sample_rate, info.num_channels, info.frames) == expected


def _id3(size: int) -> bytes:
    """An ID3v2.3 tag holding `size` bytes of cover art, as taggers put before an MP3's first frame."""
    body = b"\x00image/jpeg\x00\x03\x00" + os.urandom(size)
    frame = b"APIC" + len(body).to_bytes(4, "big") + b"\x00\x00" + body
    synchsafe = bytes((len(frame) >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x03\x00\x00" + synchsafe + frame


def test_an_mp3_whose_cover_art_is_larger_than_the_probe_s_budget_is_read(tmp_path, capfd):
    from pedalboard.io import AudioFile

    plain = tmp_path / "plain.mp3"
    with AudioFile(str(plain), "w", 44100, 2) as f:
        f.write((np.random.default_rng(0).standard_normal((2, 44100 * 2)) * 0.1).astype(np.float32))
    tagged = tmp_path / "tagged.mp3"
    tagged.write_bytes(_id3(3 << 20) + plain.read_bytes())
    budget = 1 << 20  # the tag alone is three budgets
    info, expected = audio_read.probe(tagged, max_bytes=budget), audio_read.probe(plain)
    assert (info.sample_rate, info.num_channels, info.frames) == (expected.sample_rate, 2, expected.frames)
    # the budget still ends a file that is all tag and no audio, in one line and without a traceback printed
    (tmp_path / "tag_only.mp3").write_bytes(_id3(3 << 20) + os.urandom(3 << 20))
    with pytest.raises(AudioError, match="gave up"):
        audio_read.probe(tmp_path / "tag_only.mp3", max_bytes=budget)
    assert "Exception ignored" not in capfd.readouterr().err


@pytest.fixture
def held_check(monkeypatch):
    """The input's probe, on the server's checking thread, held until the test sets the event it returns (at most
    TIMEOUT); set again when the test ends, so no thread is left waiting."""
    release = threading.Event()
    real_probe = audio_read.probe

    def held_probe(path, **kwargs):
        release.wait(TIMEOUT)
        return real_probe(path, **kwargs)

    monkeypatch.setattr(audio_read, "probe", held_probe)
    yield release
    release.set()


def test_an_edit_being_checked_answers_status_and_cancel_and_pings_meanwhile(server, song, held_check):
    """The probe runs on the checking thread: while it is held, the server answers, and a cancel sent meanwhile
    refuses the edit (it is never accepted, so never run)."""
    with Client("127.0.0.1", server.port) as client:
        client.submit(str(song), 0.0, 1.0, "extract drums", job_id="held-1")
        assert client.ping(ANSWER_S).state == protocol.READY
        state = client.status("held-1", TIMEOUT)
        assert (state.state, state.message) == (protocol.QUEUED, "checking the input")
        assert client.cancel("held-1", TIMEOUT).state == protocol.CANCELLED
        held_check.set()
        refused = client.wait_for(lambda r: r.job_id == "held-1", TIMEOUT)
        assert (refused.address, refused.code) == (protocol.ERROR, "cancelled"), refused
        assert client.ping(TIMEOUT).state == protocol.READY
        assert client.poll() == []  # no /imusic/accepted after the refusal
    assert server.book.get("held-1") is None
    assert server.worker.editor.calls == []


def test_an_input_on_a_drive_spinning_up_holds_no_other_reply(server, song, monkeypatch):
    """The input's stat ran on the receiving thread: a drive taking seconds to answer held every reply (a REAPER
    action took the silence for no engine, dropped its job, and the engine ran it to a result nobody inserted)."""
    waking = threading.Event()
    real_check = audio_read.check_regular_file

    def slow_check(path):
        waking.wait(TIMEOUT)
        return real_check(path)

    monkeypatch.setattr(audio_read, "check_regular_file", slow_check)
    with Client("127.0.0.1", server.port) as client:
        client.submit(str(song), 0.0, 1.0, "extract drums", job_id="sleepy")
        try:
            assert client.ping(ANSWER_S).state == protocol.READY
            assert client.status("sleepy", ANSWER_S).message == protocol.CHECKING
        finally:
            waking.set()
        assert client.wait("sleepy", timeout=TIMEOUT).output_path


def test_a_cancel_that_waited_on_the_acceptance_finds_the_job_in_the_book(tmp_path, root, song, monkeypatch, request):
    """A cancel arriving as the checker accepts the edit waits on the checking lock; the checker took the id off the
    checking list only after giving the lock up, so the cancel could win it in between, answer "cancelled before it
    was accepted" and leave the accepted job to run. Here the checker always yields on releasing the lock."""
    from bridge.jobs import JobBook

    server = start_server(tmp_path, root, editor=FakeEditor(steps=20, step_s=0.1))  # still running as the cancel lands
    request.addfinalizer(server.stop)

    class YieldingLock:
        def __init__(self) -> None:
            self._lock = threading.Lock()

        def __enter__(self):
            self._lock.acquire()
            return self

        def __exit__(self, *exc) -> None:
            self._lock.release()
            time.sleep(0.2)  # whoever waits on the lock gets it now

    monkeypatch.setattr(server, "_checking_lock", YieldingLock())
    in_submit, go_on = threading.Event(), threading.Event()
    real_submit = JobBook.submit

    def held_submit(book, job, choose_output, accepted=None):
        in_submit.set()
        go_on.wait(TIMEOUT)
        return real_submit(book, job, choose_output, accepted)

    monkeypatch.setattr(JobBook, "submit", held_submit)
    with Client("127.0.0.1", server.port) as client:
        client.submit(str(song), 0.0, 1.0, "extract drums", job_id="race")
        assert in_submit.wait(TIMEOUT)
        client.send(protocol.CANCEL, "race")  # its handler finds no job in the book and waits on the lock
        time.sleep(0.3)
        go_on.set()
        answer = client.wait_for(lambda r: r.address == protocol.STATE and r.job_id == "race", TIMEOUT)
        assert "before it was accepted" not in answer.message
        deadline = time.monotonic() + TIMEOUT
        while not server.book.get("race").is_final and time.monotonic() < deadline:
            time.sleep(0.05)
    assert server.book.get("race").state == protocol.CANCELLED


def test_a_resend_of_an_edit_being_checked_is_answered_so_a_slow_check_is_no_missing_engine(server, song, held_check):
    """A check that takes longer than a requester waits for its first answer (a disk spinning up): each resend is
    answered with the edit's state, so the REAPER actions do not say "no engine" and drop a job the engine then runs."""
    from reaper_scripts import imusic_lib, planning

    with Client("127.0.0.1", server.port) as client:
        view = planning.ItemView(position=0.0, length=1.0, track_number=1, source_path=str(song), source_length=1.0)
        request = protocol.EditRequest("held-2", str(song), 0.0, 1.0, "extract drums")
        job = imusic_lib._Job("t", view, planning.JobPlan(str(song), 0.0, 1.0, 0.0, 1.0, 1.0), request)
        session = imusic_lib.Session("extract drums", client, [job])
        session.send()
        deadline = time.monotonic() + TIMEOUT
        while not job.state.replies and time.monotonic() < deadline:  # the tracker resends after 1 s of silence
            assert session.step(time.monotonic(), set()) == "running"
            time.sleep(0.05)
        assert job.state.replies and not job.final
        assert job.progress == protocol.CHECKING  # what the status action shows of it: not "0%" of an accepted job
        # long past the wait for a first answer, the check still held: the engine is there, the job followed
        assert session.step(session.started + 2 * imusic_lib.ACCEPT_TIMEOUT_S, set()) == "running"
        held_check.set()
        while not job.final and time.monotonic() < deadline:
            session.step(time.monotonic(), set())
            time.sleep(0.05)
        assert job.state.done, (job.state.code, job.state.error)


def test_edits_are_accepted_in_the_order_they_arrived(server, song):
    server.worker.editor.steps, server.worker.editor.step_s = 4, 0.05
    with Client("127.0.0.1", server.port) as client:
        ids = [client.submit(str(song), 0.0, 1.0, "extract drums", job_id=f"order-{i}") for i in range(5)]
        for job_id in ids:
            client.wait(job_id, timeout=TIMEOUT)
    lines = (server.journal_dir / "jobs.jsonl").read_text().splitlines()
    accepted = [line.split('"id":"', 1)[1].split('"', 1)[0] for line in lines if '"e":"accepted"' in line]
    assert accepted == ids


def test_a_preview_is_read_off_the_receiving_thread(server, song, monkeypatch):
    with Client("127.0.0.1", server.port) as client:
        result = client.edit(str(song), 0.0, 1.0, "extract drums", timeout=TIMEOUT)
        release = threading.Event()
        real_read = audio_read.read_region

        def held_read(*args, **kwargs):
            release.wait(TIMEOUT)
            return real_read(*args, **kwargs)

        monkeypatch.setattr(audio_read, "read_region", held_read)
        try:
            client.send(protocol.PREVIEW, result.job_id, "result")
            assert client.ping(ANSWER_S).state == protocol.READY
            client.send(protocol.STOP_PREVIEW)  # answered after the preview it follows
            release.set()
            first = client.wait_for(lambda r: r.address in (protocol.PREVIEWING, protocol.PREVIEW_STOPPED), TIMEOUT)
            second = client.wait_for(lambda r: r.address in (protocol.PREVIEWING, protocol.PREVIEW_STOPPED), TIMEOUT)
        finally:
            release.set()
    assert (first.address, second.address) == (protocol.PREVIEWING, protocol.PREVIEW_STOPPED)
    assert not server.player.is_playing


# ----------------------------------------------------------------------------------------------- item 3


def _everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("folder_existed", [True, False])
def test_a_result_folder_swapped_for_a_symlink_after_acceptance_is_refused(tmp_path, root, song, serve, folder_existed):
    """An existing output folder moved away and replaced by a link, or the default results folder (made when the
    result is written) made a link first: the job ends with forbidden_path, nothing lands outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    if folder_existed:
        results = root / "out"
        results.mkdir()
    else:
        results = root / audio_write.RESULTS_DIR
    editor = FakeEditor(steps=20, step_s=0.02)
    server = serve(editor=editor)
    with Client("127.0.0.1", server.port) as client:
        output = str(results) if folder_existed else None
        job_id = client.submit(str(song), 0.0, 1.0, "extract drums", output_path=output)
        accepted = client.wait_for(lambda r: r.job_id == job_id, TIMEOUT)
        assert accepted.address == protocol.ACCEPTED, accepted
        assert editor.started.wait(TIMEOUT)
        if folder_existed:
            results.rename(root / "out-moved")
        results.symlink_to(outside, target_is_directory=True)
        with pytest.raises(RemoteError) as exc:
            client.wait(job_id, timeout=TIMEOUT)
        state = client.status(job_id, TIMEOUT)
    assert exc.value.code == protocol.FORBIDDEN_PATH
    assert "symbolic link" in str(exc.value) and "nothing was written" in str(exc.value)
    assert state.state == protocol.ERROR_STATE
    assert _everything_under(outside) == []  # neither the result nor its temporary file
    if folder_existed:
        assert _everything_under(root / "out-moved") == []


def test_write_atomic_with_roots_refuses_a_symlinked_folder_and_writes_nothing(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "a").mkdir()
    (root / "a" / "b").symlink_to(outside, target_is_directory=True)
    audio = np.zeros((1, 100), np.float32)
    with pytest.raises(audio_write.UnsafeDestination, match="symbolic link"):
        audio_write.write_atomic(root / "a" / "b" / "out.wav", audio, 16000, roots=[root])
    with pytest.raises(audio_write.UnsafeDestination, match="not inside"):
        audio_write.write_atomic(outside / "out.wav", audio, 16000, roots=[root])
    assert os.listdir(outside) == []


def test_write_atomic_with_roots_creates_missing_folders_inside_them(tmp_path):
    import soundfile as sf

    audio = np.array([[0.0, 1.5, -2.25, 0.5]], dtype=np.float32)
    path = audio_write.write_atomic(tmp_path / "new" / "deeper" / "out.wav", audio, 32000, roots=[tmp_path])
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == 32000 and sf.info(path).subtype == "FLOAT"
    np.testing.assert_array_equal(data.T, audio)
    assert os.listdir(path.parent) == ["out.wav"]
    with pytest.raises(FileExistsError):
        audio_write.write_atomic(path, audio, 32000, roots=[tmp_path])
    audio_write.write_atomic(path, np.zeros((2, 4), np.float32), 32000, overwrite=True, roots=[tmp_path])
    assert sf.info(path).channels == 2 and os.listdir(path.parent) == ["out.wav"]


# ----------------------------------------------------------------------------------------------- item 8


def _odd_packets(count: int) -> list[bytes]:
    """Packets python-osc warned about when it parsed them: an unknown type tag, and a bundle holding something that
    is not OSC (now both refused before python-osc reads them)."""
    unknown_tag = b"/flood\x00\x00,X\x00\x00"
    odd_bundle = b"#bundle\x00" + b"\x00" * 8 + struct.pack(">i", 8) + b"garbage!"
    return [unknown_tag if i % 2 else odd_bundle for i in range(count)]


@contextlib.contextmanager
def logged_server(tmp_path, root):
    """A server whose own log goes to one buffer and the root logger's lines to another, both read after it stops:
    yields (server, its log, the root logger's lines)."""
    server_log, captured = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(captured)
    logging.getLogger().addHandler(handler)
    server = start_server(tmp_path, root, log=server_log)
    try:
        yield server, server_log, captured
    finally:
        server.stop()
        logging.getLogger().removeHandler(handler)


def test_a_flood_of_odd_packets_is_refused_each_and_leaves_a_bounded_log(tmp_path, root):
    with (
        logged_server(tmp_path, root) as (server, server_log, captured),
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood,
    ):
        flood.bind(("127.0.0.1", 0))
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        for i, packet in enumerate(_odd_packets(4000)):
            flood.sendto(packet, ("127.0.0.1", server.port))
            if i % 500 == 499:
                time.sleep(0.01)  # let the server keep up (a full socket buffer drops packets, not log lines)
        with Client("127.0.0.1", server.port) as client:
            assert client.ping(TIMEOUT).state == protocol.READY
            time.sleep(0.2)
            assert client.ping(TIMEOUT).state == protocol.READY
        flood.settimeout(0.5)
        replies = []
        with contextlib.suppress(TimeoutError):
            while len(replies) < 4000:
                replies.append(protocol.decode(flood.recv(protocol.MAX_PACKET))[0])
        # python-osc sends a wrong-format and unknown-tag packet on as fewer arguments; each is said to be bad
        errors = [args for address, args in replies if address == protocol.ERROR]
        assert len(errors) == len(replies) > 1000, replies[:3]
        assert {args[1] for args in errors} == {protocol.BAD_REQUEST}
        assert any("'X' is not one this server reads" in args[2] for args in errors)
        assert any("not an OSC packet" in args[2] for args in errors)
    written = server_log.getvalue() + captured.getvalue()
    assert len(written) < 8000, f"{len(written)} characters logged:\n{written[:2000]}"


def test_python_osc_warnings_go_to_the_servers_rate_limited_log(tmp_path, root):
    """Should a python-osc version log per packet again (it calls logging.warning, the root logger, from its own
    modules), its lines join the server's rate-limited ones."""
    import pythonosc.osc_message

    with logged_server(tmp_path, root) as (_, server_log, captured):
        for i in range(4000):
            record = logging.LogRecord(
                "root", logging.WARNING, pythonosc.osc_message.__file__, 85, "Unhandled parameter type: %s", (i,), None
            )
            logging.getLogger().handle(record)
    assert captured.getvalue() == ""
    assert len(server_log.getvalue()) < 8000
    assert "python-osc: Unhandled parameter type" in server_log.getvalue()
    assert "were not logged" in server_log.getvalue()


def test_the_rate_limiter_lets_a_burst_through_per_window_and_counts_the_rest():
    now = [0.0]
    limiter = RateLimiter(burst=3, window_s=10.0, clock=lambda: now[0])
    assert [limiter.admit() for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    now[0] = 9.9
    assert limiter.admit() == (False, 0)
    now[0] = 10.0
    assert limiter.admit() == (True, 3)  # the next window reports what the last one dropped
    assert limiter.flush() == 0
    for _ in range(4):
        limiter.admit()
    assert limiter.flush() == 2
