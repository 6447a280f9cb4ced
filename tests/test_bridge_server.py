"""The engine server over real loopback sockets: every address round-trips, bad requests get error replies and the
server keeps serving, jobs are idempotent, cancellable, journalled, and previewable.

A fast FakeEditor (tests/test_bridge_support.py) stands in for the model here; the last test runs the real tiny
Editor once engine.editor exists.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_bridge_support import FakeEditor, dead_pid, start_server, write_wav

from bridge import audio_read, protocol
from bridge.client import Client, JobResult, NoReply, RemoteError
from bridge.server import EngineServer
from engine.errors import ConfigError

TIMEOUT = 10.0


@pytest.fixture
def client(server):
    with Client("127.0.0.1", server.port) as client:
        yield client


def raw_request(client: Client, address: str, *args) -> protocol.Reply:
    """Send one request and return the first reply (any kind)."""
    client.send(address, *args)
    return client.wait_for(lambda r: True, TIMEOUT)


def expect_error(client: Client, code: str) -> protocol.Reply:
    reply = client.wait_for(lambda r: r.address == protocol.ERROR, TIMEOUT)
    assert reply.code == code, reply
    return reply


# ----------------------------------------------------------------------------------------------- round trips


def test_ping_answers_pong_with_version_model_device_and_ready(client):
    reply = client.ping(TIMEOUT)
    assert reply.address == protocol.PONG
    version, model, device, state, notes, stems, weights = reply.args
    assert (model, device, state, notes, weights) == ("fake", "cpu", protocol.READY, "", "")  # a fake has no files
    assert reply.stems == stems.split("\n") == list(FakeEditor().info["stems"])
    assert version and reply.notes == []


def test_pong_carries_the_models_own_notes_on_the_edits_it_cannot_do_yet(tmp_path, root, judged_model_dir):
    from engine.editor import Editor

    server = start_server(tmp_path, root, editor=Editor.load(judged_model_dir, device="cpu"))
    try:
        with Client("127.0.0.1", server.port) as client:
            reply = client.ping(TIMEOUT)
    finally:
        server.stop()
    assert len(reply.notes) == 1 and "its extract edits do not clearly beat leaving the audio" in reply.notes[0]


def test_server_status_reports_state_queue_and_running_job(client):
    reply = client.status(timeout=TIMEOUT)
    assert reply.address == protocol.SERVER_STATUS
    assert reply.args[:3] == [protocol.READY, 0, ""]


def test_edit_round_trip_writes_an_aligned_float_wav_beside_the_input(client, song):
    progress: list[float] = []
    job_id = client.submit(str(song), 0.5, 1.5, "extract drums")
    accepted = client.wait_for(lambda r: r.address == protocol.ACCEPTED, TIMEOUT)
    assert accepted.job_id == job_id
    result = client.wait(job_id, timeout=TIMEOUT, on_progress=lambda f, s: progress.append(f))

    out = Path(result.output_path)
    assert out.parent == song.parent / "results" and out.suffix == ".wav"
    written, sample_rate = sf.read(out, dtype="float32", always_2d=True)
    source, _ = sf.read(song, dtype="float32", always_2d=True)
    assert sample_rate == 16000
    assert sf.info(out).subtype == "FLOAT"
    np.testing.assert_allclose(written, 0.5 * source[8000:24000], atol=1e-7)  # exactly the region, same length
    assert progress and progress == sorted(progress) and progress[-1] == 0.99  # the rest is /imusic/done


def test_done_carries_result_metadata_json_with_levels_and_bridge_timings(client, song):
    result = client.edit(str(song), 0.0, 1.0, "remove bass", timeout=TIMEOUT)
    assert result.info["levels"]["output_lufs"] == -26.0
    assert result.info["bridge"]["frames"] == 16000
    assert result.info["bridge"]["edit_s"] <= result.info["bridge"]["job_s"]


def test_status_of_a_finished_job_gives_its_result_path(client, song):
    result = client.edit(str(song), 0.0, 1.0, "extract drums", timeout=TIMEOUT)
    reply = client.status(result.job_id, TIMEOUT)
    assert (reply.state, reply.output_path, reply.fraction) == (protocol.DONE_STATE, result.output_path, 1.0)


def test_status_of_an_unknown_job_says_unknown(client):
    reply = client.status("no-such-job", TIMEOUT)
    assert reply.address == protocol.STATE and reply.state == protocol.UNKNOWN


def test_end_below_zero_means_the_end_of_the_file(client, song):
    result = client.edit(str(song), 1.5, -1, "extract drums", timeout=TIMEOUT)
    assert sf.info(result.output_path).frames == 8000


def test_output_path_is_honoured_and_never_overwrites(client, song, root):
    target = root / "mine.wav"
    target.write_bytes(b"not mine to overwrite")
    result = client.edit(str(song), 0.0, 1.0, "extract drums", output_path=str(target), timeout=TIMEOUT)
    assert Path(result.output_path) == root / "mine-2.wav"
    assert target.read_bytes() == b"not mine to overwrite"


def test_an_output_path_in_another_audio_format_is_refused_with_the_wav_name(server, client, song, root):
    with pytest.raises(RemoteError) as exc:
        client.edit(str(song), 0.0, 1.0, "extract drums", output_path=str(root / "mine.flac"), timeout=TIMEOUT)
    assert exc.value.code == "bad_config" and "mine.wav" in str(exc.value)
    assert server.worker.editor.calls == [] and not (root / "mine.flac").exists()


@pytest.mark.parametrize("name", ["x" * 300 + ".wav", "x" * 300 + "/"])
def test_an_output_name_longer_than_the_file_system_takes_is_refused_in_its_own_words(server, client, song, root, name):
    with pytest.raises(RemoteError) as exc:
        client.edit(str(song), 0.0, 1.0, "extract drums", output_path=str(root) + "/" + name, timeout=TIMEOUT)
    assert exc.value.code == "bad_config" and "internal error" not in str(exc.value)
    assert server.worker.editor.calls == []


def test_the_acceptance_goes_out_before_any_reply_of_the_jobs_run(server, song, monkeypatch):
    """/imusic/accepted was sent once the book's lock was let go: a worker quick to take the job sent its first
    progress before it, and a client waiting for the acceptance took that for the answer (a flake under load)."""
    import time

    submit = server.book.submit

    def descheduled_after(*args, **kwargs):  # the checking thread paused right after queueing the job
        taken = submit(*args, **kwargs)
        time.sleep(0.3)
        return taken

    monkeypatch.setattr(server.book, "submit", descheduled_after)
    with Client("127.0.0.1", server.port) as client:
        job_id = client.submit(str(song), 0.0, 1.0, "extract drums")
        first = client.wait_for(lambda r: r.job_id == job_id, TIMEOUT)
        assert first.address == protocol.ACCEPTED, first
        assert Path(client.wait(job_id, timeout=TIMEOUT).output_path).is_file()


def test_two_jobs_on_one_region_get_distinct_results(client, song):
    first = client.edit(str(song), 0.0, 1.0, "extract drums", timeout=TIMEOUT)
    second = client.edit(str(song), 0.0, 1.0, "extract drums", timeout=TIMEOUT)
    assert first.output_path != second.output_path
    assert Path(first.output_path).exists() and Path(second.output_path).exists()


# ----------------------------------------------------------------------------------------------- idempotency


def test_a_resent_edit_runs_once_and_is_answered_again(server, client, song):
    first = client.edit(str(song), 0.0, 1.0, "extract drums", job_id="take-1", timeout=TIMEOUT)
    client.submit(str(song), 0.0, 1.0, "extract drums", job_id="take-1")
    again = client.wait("take-1", timeout=TIMEOUT)
    assert again.output_path == first.output_path
    assert server.worker.editor.calls == ["extract drums"]


def test_a_resend_from_a_new_socket_moves_the_replies_there(server, song):
    server.worker.editor.step_s = 0.05
    with Client("127.0.0.1", server.port) as first, Client("127.0.0.1", server.port) as second:
        first.submit(str(song), 0.0, 1.0, "extract drums", job_id="moved")
        first.wait_for(lambda r: r.address == protocol.ACCEPTED, TIMEOUT)
        second.submit(str(song), 0.0, 1.0, "extract drums", job_id="moved")
        assert second.wait("moved", timeout=TIMEOUT).output_path


def test_a_job_id_reused_for_another_edit_is_refused(client, song):
    client.edit(str(song), 0.0, 1.0, "extract drums", job_id="same", timeout=TIMEOUT)
    client.submit(str(song), 0.0, 1.0, "remove drums", job_id="same")
    assert expect_error(client, protocol.JOB_CONFLICT).job_id == "same"


def test_the_mode_reaches_the_engine_and_a_resend_with_another_mode_is_another_edit(server, client, song):
    client.edit(str(song), 0.0, 1.0, "extract drums", job_id="m1", mode="resynth", timeout=TIMEOUT)
    client.edit(str(song), 0.0, 1.0, "extract drums", job_id="m2", timeout=TIMEOUT)
    assert server.worker.editor.modes == ["resynth", None]  # "" on the wire: the engine's default
    client.submit(str(song), 0.0, 1.0, "extract drums", job_id="m1", mode="mask")
    assert expect_error(client, protocol.JOB_CONFLICT).job_id == "m1"


def test_a_mode_is_read_whatever_its_case_and_spaces(server, client, song):
    result = client.edit(str(song), 0.0, 1.0, "extract drums", job_id="c1", mode=" Resynth", timeout=TIMEOUT)
    assert result.output_path and server.worker.editor.modes == ["resynth"]


def test_an_unknown_mode_is_refused_naming_the_modes(client, song):
    client.submit(str(song), 0.0, 1.0, "extract drums", job_id="k1", mode="karaoke")
    reply = expect_error(client, protocol.BAD_REQUEST)
    assert "unknown mode 'karaoke': use mask, resynth, layer" in reply.message


def test_the_journal_keeps_the_whole_request_mode_included(tmp_path, root, song):
    first = start_server(tmp_path, root, editor=FakeEditor(step_s=0.2))
    with Client("127.0.0.1", first.port) as client:
        client.submit(str(song), 0.0, 1.0, "extract drums", job_id="kept", mode="resynth", seed=5, takes=2)
        client.wait_for(lambda r: r.address == protocol.ACCEPTED, TIMEOUT)
    first.stop()
    second = start_server(tmp_path, root)
    try:
        job = second.book.get("kept")
        assert job.request == protocol.EditRequest("kept", str(song), 0.0, 1.0, "extract drums", "", 5, 2, "resynth")
    finally:
        second.stop()


# ----------------------------------------------------------------------------------------------- cancel


def test_cancel_a_queued_job_ends_it_without_running_it(server, client, song):
    server.worker.editor.step_s = 0.1
    running = client.submit(str(song), 0.0, 1.0, "extract drums")
    queued = client.submit(str(song), 0.0, 1.0, "remove bass")
    client.wait_for(lambda r: r.address == protocol.ACCEPTED and r.job_id == queued, TIMEOUT)
    state = client.cancel(queued, TIMEOUT)
    assert state.state == protocol.CANCELLED
    with pytest.raises(RemoteError) as exc:
        client.wait(queued, timeout=TIMEOUT)
    assert exc.value.code == "cancelled"
    client.wait(running, timeout=TIMEOUT)
    assert server.worker.editor.calls == ["extract drums"]


def test_cancel_a_running_job_stops_it_and_the_server_keeps_serving(server, client, song):
    editor = server.worker.editor
    editor.steps, editor.step_s = 200, 0.02
    job_id = client.submit(str(song), 0.0, 1.0, "extract drums")
    assert editor.started.wait(TIMEOUT)
    state = client.cancel(job_id, TIMEOUT)
    assert state.state in (protocol.CANCELLING, protocol.CANCELLED)
    with pytest.raises(RemoteError) as exc:
        client.wait(job_id, timeout=TIMEOUT)
    assert exc.value.code == "cancelled"
    assert client.status(job_id, TIMEOUT).state == protocol.CANCELLED
    editor.steps, editor.step_s = 2, 0.0
    assert client.edit(str(song), 0.0, 1.0, "extract drums", timeout=TIMEOUT).output_path


def test_cancel_an_unknown_job_is_an_error(client):
    client.send(protocol.CANCEL, "ghost")
    assert expect_error(client, protocol.UNKNOWN_JOB).job_id == "ghost"


def test_an_edit_sent_while_the_server_stops_is_refused_as_unavailable_to_send_again(server, client, song):
    server.stopped.set()  # stopping: what arrives now is answered, never dropped
    client.send(*_edit(song))
    reply = expect_error(client, protocol.UNAVAILABLE)
    assert "send it again once the server is back" in reply.message


# ----------------------------------------------------------------------------------------------- bad input


def _edit(path, start=0.0, end=1.0, instruction="extract drums", *extra):
    return (protocol.EDIT, "bad-job", str(path), start, end, instruction, *extra)


HOSTILE = {
    "start given as a string": lambda r, s: (_edit(s, "zero"), protocol.BAD_REQUEST),
    "end given as a boolean": lambda r, s: (_edit(s, 0.0, True), protocol.BAD_REQUEST),
    "missing arguments": lambda r, s: ((protocol.EDIT, "bad-job", str(s)), protocol.BAD_REQUEST),
    "too many arguments": lambda r, s: (_edit(s, 0.0, 1.0, "extract drums", "", 1, 1, "x"), protocol.BAD_REQUEST),
    "huge instruction": lambda r, s: (_edit(s, 0.0, 1.0, "x" * 20000), protocol.BAD_REQUEST),
    "huge path": lambda r, s: (_edit("/" + "a" * 30000), protocol.BAD_REQUEST),
    "job id with a slash": lambda r, s: ((protocol.EDIT, "../etc", str(s), 0.0, 1.0, "extract drums"), "bad_request"),
    "unknown address": lambda r, s: (("/imusic/format_disk", "now"), protocol.UNKNOWN_ADDRESS),
    "address outside the namespace": lambda r, s: (("/other/thing",), protocol.UNKNOWN_ADDRESS),
    "non-audio file": lambda r, s: (_edit(_text_file(r)), "bad_audio"),
    "a directory": lambda r, s: (_edit(r), "bad_audio"),
    "a missing file": lambda r, s: (_edit(r / "nope.wav"), "bad_audio"),
    "outside the allowed roots": lambda r, s: (_edit(_outside_file(r)), protocol.FORBIDDEN_PATH),
    "symlink escaping the roots": lambda r, s: (_edit(_escaping_link(r)), protocol.FORBIDDEN_PATH),
    "dot-dot escaping the roots": lambda r, s: (_edit(f"{r}/../outside/song.wav"), protocol.FORBIDDEN_PATH),
    "output outside the roots": lambda r, s: (_edit(s, 0.0, 1.0, "extract drums", "/etc/x.wav"), "forbidden_path"),
    "relative path": lambda r, s: (_edit("song.wav"), protocol.BAD_REQUEST),
    "a path under an unknown user's home": lambda r, s: (_edit("~imusic-nosuchuser/a.wav"), protocol.BAD_REQUEST),
    "region past the end": lambda r, s: (_edit(s, 1.0, 5.0), "bad_audio"),
    "region starting past the end": lambda r, s: (_edit(s, 3.0, 4.0), "bad_audio"),
    "negative start": lambda r, s: (_edit(s, -1.0, 1.0), "bad_audio"),
    "empty region": lambda r, s: (_edit(s, 1.0, 1.0), "bad_audio"),
    "unknown instruction": lambda r, s: (_edit(s, 0.0, 1.0, "make it jazzier"), "bad_instruction"),
    "empty instruction": lambda r, s: (_edit(s, 0.0, 1.0, "   "), "bad_instruction"),  # as any unclear instruction
    "takes zero": lambda r, s: (_edit(s, 0.0, 1.0, "extract drums", "", -1, 0), protocol.BAD_REQUEST),
    "preview unknown job": lambda r, s: ((protocol.PREVIEW, "ghost"), protocol.UNKNOWN_JOB),
    "preview of no job id": lambda r, s: ((protocol.PREVIEW, ""), protocol.BAD_REQUEST),
    "cancel of no job id": lambda r, s: ((protocol.CANCEL, ""), protocol.BAD_REQUEST),
    "a link to a file whose name is not UTF-8": lambda r, s: (_edit(_link_to_non_utf8(r, "outside")), "forbidden_path"),
    "a link to a non-audio file whose name is not UTF-8": lambda r, s: (_edit(_link_to_non_utf8(r)), "bad_audio"),
    "preview of neither source nor result": lambda r, s: ((protocol.PREVIEW, "ghost", "bass"), "bad_request"),
    "ping with arguments": lambda r, s: ((protocol.PING, 1, 2), protocol.BAD_REQUEST),
    "symlink loop": lambda r, s: (_edit(_symlink_loop(r)), protocol.FORBIDDEN_PATH),
    "results folder linked outside the roots": lambda r, s: (_edit(_escaping_results(r)), protocol.FORBIDDEN_PATH),
    "blob instead of a path": lambda r, s: ((protocol.EDIT, "j", b"/x.wav", 0.0, 1.0, "extract drums"), "bad_request"),
    "nil instead of a number": lambda r, s: ((protocol.EDIT, "j", str(s), None, 1.0, "extract drums"), "bad_request"),
}


def _text_file(root: Path) -> Path:
    path = root / "notes.wav"
    path.write_text("definitely not audio\n" * 50)
    return path


def _outside_file(root: Path) -> Path:
    return write_wav(root.parent / "outside" / "song.wav")


def _escaping_link(root: Path) -> Path:
    link = root / "link.wav"
    link.symlink_to(_outside_file(root))
    return link


def _link_to_non_utf8(root: Path, folder: str = "") -> Path:
    """A link with a UTF-8 name to `caf\\xe9.wav` (a Latin-1 name) inside the roots or, with `folder`, outside them:
    the error names the resolved file, and its reply must still be built."""
    where = root.parent / folder if folder else root
    where.mkdir(exist_ok=True)
    target = Path(os.fsdecode(os.fsencode(str(where)) + b"/caf\xe9.wav"))
    target.write_text("not audio")
    (root / "link.wav").symlink_to(target)
    return root / "link.wav"


def _symlink_loop(root: Path) -> Path:
    (root / "loop-a.wav").symlink_to(root / "loop-b.wav")
    (root / "loop-b.wav").symlink_to(root / "loop-a.wav")
    return root / "loop-a.wav"


def _escaping_results(root: Path) -> Path:
    folder = root / "linked"
    outside = root.parent / "outside-results"
    outside.mkdir()
    (folder / "results").parent.mkdir()
    (folder / "results").symlink_to(outside)
    song = write_wav(folder / "song.wav")
    return song


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_bad_requests_get_an_error_reply_and_the_server_keeps_serving(server, client, root, song, case):
    message, code = HOSTILE[case](root, song)
    client.send(*message)
    reply = expect_error(client, code)
    assert reply.message and len(reply.message) <= protocol.MAX_MESSAGE
    assert client.ping(TIMEOUT).state == protocol.READY
    assert server.worker.editor.calls == []


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x00" * 16,
        b"garbage that is not osc",
        b"#bundle\x00broken",
        b"/x\x00",
        b"/imusic/ping\x00\x00\x00\x00,s\x00\x00",
    ],
)
def test_garbage_datagrams_get_a_bad_request_reply(client, datagram):
    client._sock.sendto(datagram, client.server)
    message = expect_error(client, protocol.BAD_REQUEST).message
    assert "ParseError(" not in message and "('" not in message  # python-osc's words, not a tuple's repr
    assert client.ping(TIMEOUT).state == protocol.READY


def _bundle(*elements: bytes, size: int | None = None) -> bytes:
    body = b"".join(struct.pack(">i", len(e) if size is None else size) + e for e in elements)
    return b"#bundle\x00" + b"\x00" * 7 + b"\x01" + body


def _nested(depth: int) -> bytes:
    packet = protocol.encode(protocol.PING)
    for _ in range(depth):
        packet = _bundle(packet)
    return packet


ODD_BUNDLES = {
    # python-osc's own parse: recursion until RecursionError ended the receiving thread; the server went deaf
    "nested 3000 deep": (_nested(3000), "nested more than 8 deep"),
    # python-osc's own parse stepped back by the size and looped for ever, the receiving thread at full CPU
    "an element of negative size": (_bundle(b"", size=-4), "bad size (-4"),
    "an element of zero size": (_bundle(b"", size=0), "bad size (0"),
    "an element past the end": (_bundle(b"/x\x00\x00", size=64), "bad size (64"),
    "no element": (_bundle(), "no message in it"),
    # python-osc skips a tag it does not know without reading its bytes: the status ran as the server's status
    "a char argument": (b"/imusic/status\x00\x00,cs\x00" + struct.pack(">i", 65) + b"j1\x00\x00", "'c' is not one"),
}


@pytest.mark.parametrize("case", sorted(ODD_BUNDLES))
def test_odd_bundles_and_type_tags_are_refused_and_the_server_keeps_receiving(server, client, case):
    datagram, words = ODD_BUNDLES[case]
    client._sock.sendto(datagram, client.server)
    assert words in expect_error(client, protocol.BAD_REQUEST).message
    assert client.ping(TIMEOUT).state == protocol.READY
    assert server._receiver.is_alive()


def test_a_bundle_of_thousands_of_messages_draws_one_error_not_thousands(server, client):
    """Every message of a bundle is answered: 5000 tiny unknown ones drew 5000 errors, 1 MB for a 65 kB datagram, from
    a server listening on the network."""
    flood = _bundle(*[b"/x\x00\x00,\x00\x00\x00"] * 5000)
    assert len(flood) <= protocol.MAX_PACKET
    client._sock.sendto(flood, client.server)
    assert "more than 32 elements" in expect_error(client, protocol.BAD_REQUEST).message
    assert client.ping(TIMEOUT).state == protocol.READY
    assert [reply for reply in client.poll() if reply.address == protocol.ERROR] == []


def test_a_bundle_nested_a_few_deep_is_answered_message_by_message(client):
    client._sock.sendto(_bundle(_nested(3), protocol.encode(protocol.STATUS)), client.server)
    addresses = [client.wait_for(lambda r: True, TIMEOUT).address for _ in range(2)]
    assert addresses == [protocol.PONG, protocol.SERVER_STATUS]


def test_a_reply_that_cannot_be_built_costs_its_answer_not_the_receiving_thread(server, client, monkeypatch):
    encode = protocol.encode

    def no_error_replies(address, *args):  # as a reply naming a non-UTF-8 file failed to be built
        if address == protocol.ERROR:
            raise ValueError("cannot build it")
        return encode(address, *args)

    monkeypatch.setattr(protocol, "encode", no_error_replies)
    client.send(protocol.CANCEL, "ghost")  # answered with an error, which cannot be built
    assert client.ping(TIMEOUT).state == protocol.READY
    assert server._receiver.is_alive()


def test_an_ipv6_host_is_told_the_server_listens_on_ipv4(tmp_path, root):
    server = EngineServer(editor=FakeEditor(), host="::1", port=0, journal_dir=tmp_path / "j", allow_roots=[root],
                          warm_up=False)  # fmt: skip
    with pytest.raises(ConfigError, match="IPv4 only"):
        server.start()


def test_a_datagram_of_maximum_size_is_refused_not_truncated(client):
    client.send(protocol.STATUS, "j" * 60000)
    reply = expect_error(client, protocol.BAD_REQUEST)
    assert f"must be 1 to {protocol.MAX_JOB_ID} letters" in reply.message
    assert reply.message.endswith("got 60000 characters")  # all of it arrived and was counted


def test_an_editor_crash_costs_one_job_not_the_server(server, client, song):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    server.worker.editor.edit = broken
    with pytest.raises(RemoteError) as exc:
        client.edit(str(song), 0.0, 1.0, "extract drums", timeout=TIMEOUT)
    assert exc.value.code == protocol.INTERNAL
    assert client.ping(TIMEOUT).state == protocol.READY


def test_a_full_queue_refuses_with_queue_full(tmp_path, root, song):
    editor = FakeEditor(steps=100, step_s=0.02)
    server = start_server(tmp_path, root, editor=editor, max_queue=2)
    try:
        with Client("127.0.0.1", server.port) as client:
            ids = [client.submit(str(song), 0.0, 1.0, "extract drums") for _ in range(4)]
            replies = [client.wait_for(lambda r, i=i: r.job_id == i, TIMEOUT) for i in ids]
            # Which submission meets the full queue depends on when the worker takes the next job (a loaded CI
            # machine can free a slot between two sends): at least one is refused, and every refusal says why.
            refused = [r for r in replies if r.kind == "error"]
            assert refused and all(r.code == protocol.QUEUE_FULL for r in refused)
            for job_id in ids:
                client.send(protocol.CANCEL, job_id)
    finally:
        server.stop()


def test_preview_without_an_output_device_is_an_error_reply(tmp_path, root, song, monkeypatch):
    import bridge.playback
    from bridge.playback import PlaybackUnavailable

    def no_device(device=None):
        raise PlaybackUnavailable("this machine has no output device")

    monkeypatch.setattr(bridge.playback, "get_player", no_device)
    server = start_server(tmp_path, root)
    try:
        with Client("127.0.0.1", server.port) as client:
            result = client.edit(str(song), 0.0, 1.0, "extract drums", timeout=TIMEOUT)
            reads = []
            monkeypatch.setattr(audio_read, "read_region", lambda *a: reads.append(a) or pytest.fail("read"))
            client.send(protocol.PREVIEW, result.job_id)
            assert "no output device" in expect_error(client, PlaybackUnavailable.code).message
            assert client.ping(TIMEOUT).state == protocol.READY
            assert reads == []  # said before the result (up to an hour of audio) was read for nothing
    finally:
        server.stop()


def test_a_client_without_a_server_gets_no_reply_quickly():
    with Client("127.0.0.1", 9) as client, pytest.raises(NoReply):
        client.ping(0.3)


# ----------------------------------------------------------------------------------------------- preview


def test_preview_plays_the_result_then_the_source_and_stop_preview_stops(server, client, song):
    result = client.edit(str(song), 0.5, 1.0, "extract drums", timeout=TIMEOUT)
    reply = client.preview(result.job_id, "result", TIMEOUT)
    assert reply.args == [result.job_id, "result", 0.5]
    player = server.player
    assert player.is_playing
    written, _ = sf.read(result.output_path, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(player.played[-1][0], written.T)

    client.preview(result.job_id, "source", TIMEOUT)
    source, _ = sf.read(song, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(player.played[-1][0], source[8000:16000].T)

    assert client.stop_preview(TIMEOUT).address == protocol.PREVIEW_STOPPED
    assert not player.is_playing


def test_a_result_swapped_for_a_link_outside_the_allowed_folders_is_not_previewed(server, client, song, tmp_path):
    result = client.edit(str(song), 0.5, 1.0, "extract drums", timeout=TIMEOUT)
    elsewhere = write_wav(tmp_path / "elsewhere" / "private.wav", seconds=3.0)
    os.replace(result.output_path, result.output_path + ".moved")
    os.symlink(elsewhere, result.output_path)
    client.send(protocol.PREVIEW, result.job_id, "result")
    assert "outside the folders this server may use" in expect_error(client, protocol.FORBIDDEN_PATH).message
    assert server.player is None or not server.player.played


def test_a_preview_slower_than_an_answer_is_waited_for_and_only_its_own_answer_counts(
    server, client, song, monkeypatch
):
    """A long result took over 3 s to read, and the client said no engine was running; a late answer to an earlier
    preview of the job ("result") was taken for the answer to the next ("source")."""
    import time

    result = client.edit(str(song), 0.5, 1.0, "extract drums", timeout=TIMEOUT)
    real_read = audio_read.read_region

    def slow_read(path, start_s, end_s):
        time.sleep(1.5)
        return real_read(path, start_s, end_s)

    monkeypatch.setattr(audio_read, "read_region", slow_read)
    client.send(protocol.PREVIEW, result.job_id, "result")  # its answer comes late, to this same client
    reply = client.preview(result.job_id, "source", timeout=1.0)
    assert reply.args[1] == "source"

    server.worker.editor.steps, server.worker.editor.step_s = 100, 0.02
    job_id = client.submit(str(song), 0.0, 1.0, "extract drums")
    client.wait_for(lambda r: r.address == protocol.ACCEPTED, TIMEOUT)
    client.send(protocol.PREVIEW, job_id)
    assert expect_error(client, protocol.NOT_FINISHED).job_id == job_id
    client.cancel(job_id, TIMEOUT)


def test_the_server_keeps_serving_jobs_while_a_preview_plays(server, client, song):
    first = client.edit(str(song), 0.0, 1.0, "extract drums", timeout=TIMEOUT)
    client.preview(first.job_id, "result", TIMEOUT)
    second = client.edit(str(song), 0.0, 1.0, "remove bass", timeout=TIMEOUT)
    assert server.player.is_playing and Path(second.output_path).exists()


# ----------------------------------------------------------------------------------------------- journal


def test_jobs_pending_at_shutdown_finish_after_restart_and_finished_ones_answer_status(tmp_path, root, song):
    editor = FakeEditor(steps=10, step_s=0.05)
    server = start_server(tmp_path, root, editor=editor)
    with Client("127.0.0.1", server.port) as client:
        finished = client.edit(str(song), 0.0, 1.0, "extract drums", timeout=TIMEOUT)
        pending = [client.submit(str(song), 0.0, 1.0, "remove bass") for _ in range(3)]
        for job_id in pending:
            client.wait_for(lambda r, j=job_id: r.address == protocol.ACCEPTED and r.job_id == j, TIMEOUT)
    server.stop()

    fast = FakeEditor()
    server = start_server(tmp_path, root, editor=fast)
    try:
        with Client("127.0.0.1", server.port) as client:
            assert client.status(finished.job_id, TIMEOUT).output_path == finished.output_path
            outputs = {client.wait(job_id, timeout=TIMEOUT).output_path for job_id in pending}
        assert len(outputs) == 3 and all(Path(p).exists() for p in outputs)
    finally:
        server.stop()


def test_a_journalled_job_whose_input_a_restarted_server_may_no_longer_read_fails_naming_it(tmp_path, root):
    """The first server was allowed the input's folder, the second only the results': the job from the journal must
    not read what a new request for it would be refused."""
    private, results = root / "private", root / "results"
    song = write_wav(private / "song.wav", seconds=1.0)
    results.mkdir()
    server = start_server(tmp_path, root, editor=FakeEditor(steps=20, step_s=0.05))
    with Client("127.0.0.1", server.port) as client:
        busy = client.submit(str(song), 0.0, 1.0, "extract drums", output_path=str(results / "busy.wav"))
        queued = client.submit(str(song), 0.0, 1.0, "remove bass", output_path=str(results / "copy.wav"))
        for job_id in (busy, queued):
            client.wait_for(lambda r, j=job_id: r.address == protocol.ACCEPTED and r.job_id == j, TIMEOUT)
    server.stop()
    server = start_server(tmp_path, results, editor=FakeEditor())
    try:
        with Client("127.0.0.1", server.port) as client, pytest.raises(RemoteError) as refused:
            client.wait(queued, timeout=TIMEOUT)
        assert refused.value.code == protocol.FORBIDDEN_PATH and "refusing to read" in str(refused.value)
        assert not (results / "copy.wav").exists()
    finally:
        server.stop()


def test_the_journal_is_written_before_the_job_is_acknowledged(server, client, song):
    job_id = client.submit(str(song), 0.0, 1.0, "extract drums")
    client.wait_for(lambda r: r.address == protocol.ACCEPTED, TIMEOUT)
    lines = (server.journal_dir / "jobs.jsonl").read_text().splitlines()
    accepted = [json.loads(line) for line in lines if '"accepted"' in line]
    assert any(event["job"]["id"] == job_id for event in accepted)
    client.wait(job_id, timeout=TIMEOUT)


def test_the_accepted_event_is_fsynced_before_accepted_is_sent(server, client, song, monkeypatch):
    """Order on the thread that accepts (the checking thread, after probing the input): the journal line is on disk
    (fsync) before /imusic/accepted leaves."""
    events: list[str] = []
    journal = server.journal_dir / "jobs.jsonl"
    real_fsync, real_send = os.fsync, server._send

    def fsync(fd):
        real_fsync(fd)
        if threading.current_thread().name.startswith(("imusic-osc", "imusic-check")):
            events.append("fsync:" + journal.read_text().splitlines()[-1])

    def send(to, address, *args):
        if address == protocol.ACCEPTED:
            events.append("accepted")
        real_send(to, address, *args)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(server, "_send", send)
    job_id = client.submit(str(song), 0.0, 1.0, "extract drums", job_id="durable-1")
    client.wait(job_id, timeout=TIMEOUT)
    first_accepted = events.index("accepted")
    synced = [e for e in events[:first_accepted] if e.startswith("fsync:")]
    assert synced and '"e":"accepted"' in synced[-1] and '"id":"durable-1"' in synced[-1], events


def test_by_default_only_the_home_and_temp_folders_are_allowed(tmp_path):
    import tempfile

    from bridge.protocol import RequestError

    server = EngineServer(editor=FakeEditor(), journal_dir=tmp_path / "journal")
    assert server.roots == [Path.home().resolve(), Path(tempfile.gettempdir()).resolve()]
    assert server.allowed_path(str(tmp_path / "a.wav"), "input") == (tmp_path / "a.wav").resolve()
    with pytest.raises(RequestError) as exc:
        server.allowed_path(os.path.abspath(os.sep), "input")  # the file system root is neither
    assert exc.value.code == protocol.FORBIDDEN_PATH


def test_two_servers_cannot_share_one_journal(server, tmp_path, root):
    from engine.errors import ConfigError

    second = EngineServer(editor=FakeEditor(), port=0, journal_dir=server.journal_dir, allow_roots=[root])
    with pytest.raises(ConfigError, match="journal"):
        second.start()


# ----------------------------------------------------------------------------------------------- load


def run_load(server: EngineServer, song: Path, clients: int, jobs: int, region_s: float) -> dict[str, JobResult]:
    """`clients` threads, each submitting `jobs` edits (every fifth one sent twice), then waiting for all of them."""
    results: dict[str, JobResult] = {}
    failures: list[BaseException] = []
    lock = threading.Lock()

    def one_client(index: int) -> None:
        try:
            with Client("127.0.0.1", server.port) as client:
                ids = [f"c{index}-j{j}" for j in range(jobs)]
                for j, job_id in enumerate(ids):
                    client.submit(str(song), 0.0, region_s, "extract drums", seed=j, job_id=job_id)
                for j, job_id in list(enumerate(ids))[::5]:  # resends must not run twice
                    client.submit(str(song), 0.0, region_s, "extract drums", seed=j, job_id=job_id)
                for job_id in ids:
                    result = client.wait(job_id, timeout=300)
                    with lock:
                        assert job_id not in results
                        results[job_id] = result
        except BaseException as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not failures, failures[:3]
    return results


def assert_each_job_ran_once(server: EngineServer, song: Path, results: dict[str, JobResult], count: int) -> None:
    assert len(results) == count
    events = [json.loads(line) for line in (server.journal_dir / "jobs.jsonl").read_text().splitlines()]
    started = [event["id"] for event in events if event["e"] == "started"]
    assert sorted(started) == sorted(results)  # every job started exactly once
    assert len({r.output_path for r in results.values()}) == count
    assert len([p for p in os.listdir(song.parent / "results") if p.endswith(".wav")]) == count


def test_ten_clients_twenty_jobs_each_every_job_completes_exactly_once(tmp_path, root, song):
    server = start_server(tmp_path, root, editor=FakeEditor(steps=2), max_queue=200)
    try:
        results = run_load(server, song, clients=10, jobs=20, region_s=0.25)
    finally:
        server.stop()
    assert_each_job_ran_once(server, song, results, 200)


@pytest.mark.slow
def test_ten_clients_twenty_jobs_each_on_the_tiny_model(tmp_path, root, song, request):
    pytest.importorskip("engine.editor")
    server = start_server(tmp_path, root, editor=request.getfixturevalue("tiny_editor"), max_queue=200)
    try:
        results = run_load(server, song, clients=10, jobs=20, region_s=0.25)
    finally:
        server.stop()
    assert_each_job_ran_once(server, song, results, 200)


# ----------------------------------------------------------------------------------------------- the real engine


def test_the_real_tiny_editor_serves_an_edit(tmp_path, root, request):
    pytest.importorskip("engine.editor")
    editor = request.getfixturevalue("tiny_editor")
    song = write_wav(root / "tiny.wav", seconds=1.0, sample_rate=22050, channels=2)
    server = EngineServer(editor=editor, port=0, journal_dir=tmp_path / "j", allow_roots=[root], warm_up=True)
    server.start()
    try:
        assert server.wait_ready(120)
        with Client("127.0.0.1", server.port) as client:
            stem = editor.info["stems"][0]
            result = client.edit(str(song), 0.0, 1.0, f"extract {stem}", seed=1, timeout=300)
        info = sf.info(result.output_path)
        assert (info.samplerate, info.channels, info.frames) == (22050, 2, 22050)
    finally:
        server.stop()


def test_a_waiting_client_resends_its_job_to_a_server_that_lost_it(tmp_path, root, song):
    server = start_server(tmp_path, root, editor=FakeEditor(steps=100, step_s=0.05))
    port = server.port
    with Client("127.0.0.1", port) as client:
        job_id = client.submit(str(song), 0.0, 1.0, "extract drums")
        client.wait_for(lambda r: r.address == protocol.ACCEPTED, TIMEOUT)
        server.stop()
        fresh = EngineServer(
            editor=FakeEditor(), port=port, journal_dir=tmp_path / "other-journal", allow_roots=[root], warm_up=False
        )
        fresh.start()
        try:
            assert Path(client.wait(job_id, timeout=TIMEOUT, resend_after=0.2).output_path).exists()
        finally:
            fresh.stop()


def test_waiting_on_a_job_the_server_never_had_is_an_unknown_job_error(client):
    with pytest.raises(RemoteError) as exc:
        client.wait("never-sent", timeout=TIMEOUT)
    assert exc.value.code == protocol.UNKNOWN_JOB


def test_a_resend_through_a_symlinked_folder_is_the_same_job(server, client, root, song):
    alias = root / "alias"
    alias.symlink_to(root, target_is_directory=True)
    first = client.edit(str(alias / "song.wav"), 0.0, 1.0, "extract drums", job_id="via-alias", timeout=TIMEOUT)
    client.submit(str(alias / "song.wav"), 0.0, 1.0, "extract drums", job_id="via-alias")
    assert client.wait("via-alias", timeout=TIMEOUT).output_path == first.output_path
    assert server.worker.editor.calls == ["extract drums"]


def test_the_server_answers_while_loading_and_runs_jobs_sent_meanwhile_once_ready(tmp_path, root, song):
    loaded = threading.Event()

    def slow_load():
        loaded.wait(TIMEOUT)
        return FakeEditor()

    server = EngineServer(slow_load, port=0, journal_dir=tmp_path / "journal", allow_roots=[root], warm_up=True)
    server.start()
    try:
        with Client("127.0.0.1", server.port) as client:
            pong = client.ping(TIMEOUT)
            assert pong.state == protocol.LOADING and pong.args[1] == ""
            job_id = client.submit(str(song), 0.0, 1.0, "remove bass")
            assert client.wait_for(lambda r: r.job_id == job_id, TIMEOUT).address == protocol.ACCEPTED
            loaded.set()
            assert client.wait(job_id, timeout=TIMEOUT).output_path
            assert client.ping(TIMEOUT).state == protocol.READY
        assert server.worker.editor.calls == ["extract drums", "remove bass"]  # the warm-up edit came first
    finally:
        loaded.set()
        server.stop()


def test_a_restarted_server_removes_what_the_killed_run_half_wrote(tmp_path, root, song):
    """kill -9 mid-write leaves a hidden temporary file beside the result; the rerun of that job sweeps it."""

    from bridge.jobs import Job, JobBook, Journal
    from bridge.protocol import EditRequest

    target = root / "song.extract drums.wav"
    first = JobBook(Journal(tmp_path / "journal"), 8)
    first.restore()
    job = Job(EditRequest("crashed-1", str(song), 0.0, 1.0, "extract drums"), reply_to=("127.0.0.1", 9))
    first.submit(job, lambda reserved: str(target))
    first.journal.close()  # the job was accepted and never finished
    leftover = root / f".{target.stem}.{dead_pid()}.0badc0de.partial.wav"
    leftover.write_bytes(b"half a file")
    live = root / f".{target.stem}.{os.getppid()}.12345678.partial.wav"  # a live writer's: not ours to remove
    live.write_bytes(b"being written")
    # a container's restarted server often gets its killed predecessor's pid: at its start, that pid's are leftovers
    reused = root / f".{target.stem}.{os.getpid()}.0123abcd.partial.wav"
    reused.write_bytes(b"half a file")
    server = start_server(tmp_path, root)
    try:
        assert not leftover.exists() and not reused.exists() and live.exists()
    finally:
        server.stop()


def test_a_host_name_that_resolves_to_nothing_is_said_as_such(tmp_path, root):
    server = EngineServer(editor=FakeEditor(), host="nosuch.invalid", port=0, journal_dir=tmp_path / "j",
                          allow_roots=[root], warm_up=False)  # fmt: skip
    with pytest.raises(ConfigError, match="no address is known for the name 'nosuch.invalid': check --host"):
        server.start()


def test_a_bug_of_ours_is_said_the_same_way_wherever_it_happens_and_fits_a_datagram():
    message = protocol.internal_error(ValueError("x" * 10_000))
    assert message.startswith("internal error (ValueError: xxx") and len(message) <= protocol.MAX_MESSAGE
    assert protocol.internal_error(KeyError("k")) == "internal error (KeyError: 'k'); see the server log"


def test_the_worker_outlives_a_journal_that_fails_for_a_moment(tmp_path, root, song, monkeypatch):
    """A full disk as the worker journalled "started" killed its thread: every later job was accepted, never run,
    and pings still said ready."""
    import errno

    from bridge.jobs import Journal

    real_append, failed = Journal.append, []

    def full_once(self, event):
        if event["e"] == "started" and not failed:
            failed.append(event)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(self, event)

    monkeypatch.setattr(Journal, "append", full_once)
    server = start_server(tmp_path, root)
    try:
        with Client("127.0.0.1", server.port) as client:
            first = client.edit(str(song), 0.0, 1.0, "extract drums", timeout=TIMEOUT)
            second = client.edit(str(song), 0.0, 1.0, "extract bass", timeout=TIMEOUT)
        assert failed and Path(first.output_path).is_file() and Path(second.output_path).is_file()
        assert server.worker.is_alive()
    finally:
        server.stop()


def test_a_region_grown_past_the_limit_while_queued_is_refused_when_it_runs(tmp_path, root):
    import threading

    from bridge.jobs import Job
    from bridge.protocol import EditRequest
    from bridge.worker import run_job

    source = write_wav(root / "take.wav", seconds=1.0)
    job = Job(EditRequest("grown", str(source), 0.0, -1.0, "extract drums"), reply_to=None)
    job.output_path = str(root / "take.extract_drums.wav")
    write_wav(source, seconds=3.0)  # re-rendered longer after the edit was accepted
    with pytest.raises(ConfigError, match="the region is now 3 s long .*the limit is 2 s"):
        run_job(job, FakeEditor(), threading.Event(), lambda f, s: None, max_region_s=2.0)
    assert not Path(job.output_path).exists()


@pytest.mark.parametrize(
    ("errno_value", "kind", "words"),
    [(28, "ResourceError", "no room to write the result"), (13, "AudioError", "cannot write the result")],
)
def test_a_result_that_cannot_be_written_is_a_resource_error_only_for_want_of_room(
    tmp_path, root, monkeypatch, errno_value, kind, words
):
    """Every write failure was bad_config, which stops a --server batch ("the server refused"), where the in-process
    batch fails that pair only; out of memory or no room (resources) went on, where in-process stops. One rule now."""
    import threading

    from bridge import worker
    from bridge.jobs import Job
    from bridge.protocol import EditRequest
    from engine import errors

    def cannot_write(*args, **kwargs):
        raise OSError(errno_value, os.strerror(errno_value))

    monkeypatch.setattr(worker, "edit_region", cannot_write)
    source = write_wav(root / "take.wav", seconds=1.0)
    job = Job(EditRequest("w", str(source), 0.0, -1.0, "extract drums"), reply_to=None)
    job.output_path = str(root / "take.extract_drums.wav")
    with pytest.raises(getattr(errors, kind), match=words):
        worker.run_job(job, FakeEditor(), threading.Event(), lambda f, s: None)
