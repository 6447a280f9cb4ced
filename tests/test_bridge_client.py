"""The client side: protocol checks, a torch-free fast-starting client, non-blocking poll, and `imusic send`."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

import pytest
from test_bridge_support import ResetOnce, ScriptedEngine, imported_by, write_wav

from bridge import __version__, protocol, tracking
from bridge.cli import main
from bridge.client import Client, NoReply, RemoteError
from engine.errors import ConfigError

TIMEOUT = 10.0


# ----------------------------------------------------------------------------------------------- protocol


def test_edit_arguments_get_their_defaults_and_numbers_are_coerced():
    values = protocol.parse_request(protocol.EDIT, ["j", "/a.wav", 1, 2.5, "extract drums"])
    assert values == {
        "job_id": "j",
        "input_path": "/a.wav",
        "start_s": 1.0,
        "end_s": 2.5,
        "instruction": "extract drums",
        "output_path": "",
        "seed": -1,
        "takes": 1,
        "mode": "",
    }
    assert protocol.parse_request(protocol.EDIT, [7, "/a", 0, 1, "x", "", 3.0, 2.0])["seed"] == 3
    assert protocol.parse_request(protocol.CANCEL, [7])["job_id"] == "7"


def test_clients_find_the_engine_in_the_environment_then_the_settings_then_the_default(monkeypatch):
    monkeypatch.delenv("IMUSIC_HOST", raising=False)
    monkeypatch.delenv("IMUSIC_PORT", raising=False)
    assert protocol.engine_address() == (protocol.DEFAULT_HOST, protocol.DEFAULT_PORT)
    assert protocol.engine_address({"host": "10.0.0.2", "port": 9200}) == ("10.0.0.2", 9200)
    monkeypatch.setenv("IMUSIC_PORT", "9300")
    assert protocol.engine_address({"host": "10.0.0.2", "port": 9200}) == ("10.0.0.2", 9300)
    monkeypatch.setenv("IMUSIC_PORT", "ninety")
    with pytest.raises(ConfigError, match="port number from 1 to 65535, got 'ninety'"):
        protocol.engine_address()
    monkeypatch.setenv("IMUSIC_PORT", "70000")  # would be an OverflowError at the first send
    with pytest.raises(ConfigError, match=r"\(IMUSIC_PORT\) must be a port number from 1 to 65535, got '70000'"):
        protocol.engine_address()
    with pytest.raises(ConfigError, match=r"IMUSIC_PORT, or port in imusic_paths.json\) must be a port number from 1"):
        protocol.engine_address({})
    monkeypatch.delenv("IMUSIC_PORT")
    with pytest.raises(ConfigError, match=r"port number from 1 to 65535, got \[9200\]"):
        protocol.engine_port({"port": [9200]})


def test_a_client_setting_is_the_environment_then_the_settings_file_then_the_default(monkeypatch):
    monkeypatch.delenv("IMUSIC_MODE", raising=False)
    assert protocol.setting("mode", None, "mask") == "mask"
    assert protocol.setting("mode", {"mode": "resynth"}, "mask") == "resynth"
    monkeypatch.setenv("IMUSIC_MODE", "")  # an empty variable is unset, as a blank field in the file
    assert protocol.setting("mode", {"mode": "resynth", "port": 1}, "mask") == "resynth"
    monkeypatch.setenv("IMUSIC_MODE", "mask")
    assert protocol.setting("mode", {"mode": "resynth"}, "") == "mask"
    assert protocol.where_set("max_seconds") == "IMUSIC_MAX_SECONDS, or max_seconds in imusic_paths.json"


def test_a_port_is_a_whole_number_up_to_65535_and_only_a_server_may_ask_for_any_free_one():
    assert protocol.port_number("9137", "x") == 9137 and protocol.port_number(0, "x", listen=True) == 0
    for bad in (0, -1, 65536, 9137.5, "9137.5", "", None):
        with pytest.raises(ConfigError, match="x must be a port number from 1 to 65535"):
            protocol.port_number(bad, "x")


def test_a_port_out_of_range_on_the_command_line_is_a_usage_error(capsys):
    from bridge.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["send", "--port", "70000", "ping"])
    assert exit_info.value.code == 2
    assert "must be a port number from 1 to 65535, got '70000'" in capsys.readouterr().err


def test_a_non_integral_seed_is_refused():
    with pytest.raises(protocol.RequestError, match="seed"):
        protocol.parse_request(protocol.EDIT, ["j", "/a", 0, 1, "x", "", 1.5])


def test_positions_travel_as_doubles_and_keep_sample_precision():
    start = 3600.000022675737  # one sample at 44.1 kHz after an hour
    [(address, args)] = protocol.decode(protocol.encode(protocol.EDIT, "j", "/a.wav", start, 3601.0, "x"))
    assert address == protocol.EDIT and args[2] == start


def test_bundles_are_decoded_into_their_messages():
    from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
    from pythonosc.osc_message import OscMessage

    builder = OscBundleBuilder(IMMEDIATELY)
    builder.add_content(OscMessage(protocol.encode(protocol.PING)))
    builder.add_content(OscMessage(protocol.encode(protocol.STATUS, "a")))
    assert [a for a, _ in protocol.decode(builder.build().dgram)] == [protocol.PING, protocol.STATUS]


def test_reply_accessors_read_the_documented_shapes():
    done = protocol.Reply(protocol.DONE, ["j", "/r.wav", '{"levels": {"lufs": -14}}'])
    assert (done.job_id, done.output_path, done.info) == ("j", "/r.wav", {"levels": {"lufs": -14}})
    error = protocol.Reply(protocol.ERROR, ["j", "bad_audio", "too short"])
    assert (error.code, error.message, error.kind) == ("bad_audio", "too short", "error")
    assert protocol.Reply(protocol.DONE, ["j", "/r.wav", "not json"]).info == {}


def test_a_pong_reads_back_what_its_builder_wrote():
    args = protocol.pong_args("0.1.0", "tiny", "cpu", "ready", ["a", "b"], ["Drums", "Keys"])
    pong = protocol.Reply(protocol.PONG, list(args))
    assert (pong.version, pong.model, pong.device, pong.state, pong.notes, pong.stems) == (
        "0.1.0",
        "tiny",
        "cpu",
        "ready",
        ["a", "b"],
        ["Drums", "Keys"],
    )
    loading = protocol.Reply(protocol.PONG, list(protocol.pong_args("0.1.0", "", "", "loading", [])))
    assert loading.notes == [] and loading.stems == []
    older = protocol.Reply(protocol.PONG, ["0.1.0", "tiny", "cpu", "ready", ""])  # a server from before stems
    assert older.stems == [] and older.state == "ready"


def test_a_server_status_reads_back_what_its_builder_wrote():
    args = protocol.server_status_args("ready", 2, "job-1", "0.1.0", "tiny")
    status = protocol.Reply(protocol.SERVER_STATUS, list(args))
    assert (status.state, status.queued, status.running_job_id, status.version, status.model) == (
        "ready", 2, "job-1", "0.1.0", "tiny"
    )  # fmt: skip
    assert (status.device, status.notes) == ("", [])


def test_a_bad_job_id_is_refused_in_the_same_words_by_the_server_and_the_client():
    rule = "must be 1 to 128 letters, digits and . _ : -, starting with a letter or digit; got '-x'"
    with pytest.raises(protocol.RequestError) as server_side:
        protocol.parse_request(protocol.CANCEL, ["-x"])  # only allowed characters, but not first
    with Client("127.0.0.1", 9) as client, pytest.raises(ConfigError) as client_side:
        client.cancel("-x")
    assert str(server_side.value) == f"/imusic/cancel: argument 1 (job_id) {rule}"
    assert str(client_side.value) == f"the job id {rule}"


def test_a_job_id_over_the_limit_is_named_by_its_length():
    with pytest.raises(protocol.RequestError, match=r"\(job_id\) must be 1 to 128 .*; got 129 characters$"):
        protocol.parse_request(protocol.STATUS, ["j" * 129])


# ----------------------------------------------------------------------------------------------- light and fast


def test_importing_the_client_does_not_import_torch():
    assert "torch" not in imported_by("bridge.client")


def test_poll_never_waits_for_the_socket(server, monkeypatch):
    """REAPER's defer loop calls poll(): every look at the socket must be one that returns at once."""
    with Client("127.0.0.1", server.port) as client:
        waits, real_select = [], client._selector.select

        def spying_select(timeout=None):
            waits.append(timeout)
            return real_select(timeout)

        monkeypatch.setattr(client._selector, "select", spying_select)
        assert client.poll() == []
        client.ping(timeout=2.0)  # a pong to read: the next poll reads it, and looks again without waiting
        assert waits and any(wait > 0 for wait in waits)  # the spy sees the blocking wait of ping
        waits.clear()
        client.send(protocol.PING)
        replies, deadline = [], time.monotonic() + 10
        while not replies and time.monotonic() < deadline:  # REAPER's way: poll again at its next tick
            replies = client.poll()
            time.sleep(0.01)
        assert [reply.address for reply in replies] == [protocol.PONG]
    assert waits and all(wait == 0.0 for wait in waits)


def test_poll_from_a_defer_style_loop_sees_a_job_through_to_done(server, root):
    song = write_wav(root / "song.wav")
    with Client("127.0.0.1", server.port) as client:
        job_id = client.submit(str(song), 0.0, 1.0, "extract drums")
        kinds: list[str] = []
        for _ in range(200):  # REAPER calls back every ~30 ms; never blocks
            kinds += [r.kind for r in client.poll() if r.job_id == job_id]
            if "done" in kinds:
                break
            time.sleep(0.03)
    assert kinds[0] == "accepted" and "progress" in kinds and kinds[-1] == "done"


# ----------------------------------------------------------------------------------------------- imusic send


def send(server, *argv: str) -> int:
    return main(["send", "--port", str(server.port), *argv])


def test_send_ping_prints_the_pong(server, capsys):
    assert send(server, "ping") == 0
    assert capsys.readouterr().out.split() == ["pong", __version__, "fake", "cpu", "ready"]


def test_a_bad_imusic_port_is_one_line_and_a_given_port_does_not_read_it(server, monkeypatch, capsys):
    monkeypatch.setenv("IMUSIC_PORT", "ninety")
    assert main(["send", "ping"]) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("the engine's port (IMUSIC_PORT) must be a port number from 1 to 65535, got 'ninety'")
    )
    assert send(server, "ping") == 0 and capsys.readouterr().out.startswith("pong")


def test_send_edit_waits_and_prints_the_result_path(server, root, capsys):
    song = write_wav(root / "song.wav", seconds=2.0)
    assert send(server, "edit", str(song), "extract drums", "--start", "0.5", "--end", "1.5") == 0
    said = capsys.readouterr()
    out = Path(said.out.strip())
    assert out.exists() and out.parent == root / "results"
    assert said.err.splitlines()[-1].startswith("extract drums: ")  # what was done, as imusic edit says it


def test_send_edit_says_when_the_name_asked_for_was_taken(server, root, capsys):
    song = write_wav(root / "song.wav", seconds=1.0)
    (root / "a.wav").write_bytes(b"a producer's take")
    assert send(server, "edit", str(song), "extract drums", "-o", str(root / "a.wav")) == 0
    said = capsys.readouterr()
    assert said.out.strip() == str(root / "a-2.wav") and (root / "a.wav").read_bytes() == b"a producer's take"
    assert f"{root / 'a.wav'} was taken; the result went to {root / 'a-2.wav'}" in said.err


def test_send_edit_into_a_new_folder_named_with_a_trailing_slash_puts_the_result_inside_it(server, root, capsys):
    song = write_wav(root / "song.wav", seconds=1.0)
    assert send(server, "edit", str(song), "extract drums", "-o", str(root / "takes") + "/") == 0
    out = Path(capsys.readouterr().out.strip())
    assert out == root / "takes" / "song.extract_drums.wav" and out.is_file()


def test_send_edit_shows_progress_on_stderr_up_to_100_percent(server, root, capsys):
    server.worker.editor.steps, server.worker.editor.step_s = 4, 0.02
    song = write_wav(root / "song.wav")
    assert send(server, "edit", str(song), "extract drums") == 0
    captured = capsys.readouterr()
    lines = [line.split(maxsplit=1) for line in captured.err.splitlines()[:-2]]  # not a terminal: a line a stage
    assert [stage for _, stage in lines] == ["started", "editing", "decoding", "writing"]
    assert lines[-1][0] == "99.0%"  # 100 % is said once the result is written: "done"
    assert captured.err.splitlines()[-2].split(maxsplit=1) == ["100.0%", "done"]
    assert Path(captured.out.strip()).exists()


def test_send_edit_no_wait_prints_the_job_id_once_accepted(server, root, capsys):
    song = write_wav(root / "song.wav")
    assert send(server, "edit", str(song), "extract drums", "--no-wait", "--job-id", "mine-1") == 0
    assert capsys.readouterr().out.strip() == "mine-1"
    with Client("127.0.0.1", server.port) as client:
        assert client.wait("mine-1", timeout=TIMEOUT).output_path


def test_an_unknown_job_is_said_in_the_same_words_by_status_cancel_and_wait(server):
    words = str(protocol.unknown_job("nope"))
    with Client("127.0.0.1", server.port) as client:
        assert client.status("nope", TIMEOUT).message == words
        with pytest.raises(RemoteError) as cancelled:
            client.cancel("nope", TIMEOUT)
        with pytest.raises(RemoteError) as waited:
            client.wait("nope", timeout=TIMEOUT)
    assert (cancelled.value.code, str(cancelled.value)) == (protocol.UNKNOWN_JOB, words)
    assert (waited.value.code, str(waited.value)) == (protocol.UNKNOWN_JOB, words)


def test_send_status_and_cancel_print_states(server, capsys):
    assert send(server, "status") == 0
    assert capsys.readouterr().out.startswith("server_status ready")
    assert send(server, "status", "nobody") == 1  # no such job: as `send cancel` of it
    said = capsys.readouterr()
    assert said.out.startswith("state nobody unknown")
    assert said.err == f"imusic send: error: {protocol.unknown_job('nobody')}\n"  # it said nothing there
    assert send(server, "cancel", "nobody") == 1
    assert capsys.readouterr().err == said.err


def test_send_errors_are_one_line_and_exit_1(server, root, capsys):
    song = write_wav(root / "song.wav")
    assert send(server, "edit", str(song), "make it jazzy") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("imusic send: error:") and "\n" not in err and "parse" in err
    assert send(server, "cancel", "ghost") == 1


def test_send_to_a_silent_port_says_that_no_engine_answers_there(capsys):
    assert main(["send", "--host", "127.0.0.1", "--port", "9", "--timeout", "0.3", "ping"]) == 1
    err = capsys.readouterr().err
    assert "no imusic engine answers at 127.0.0.1:9" in err and "`imusic serve`" in err  # the words, and what to do
    assert tracking.not_answering("127.0.0.1", 9) in err  # the same words as every front end


def test_a_reset_reported_on_a_send_is_an_earlier_datagrams_and_the_request_still_goes():
    engine = ScriptedEngine(lambda address, args, count: [(protocol.PONG, [__version__])])
    try:
        with Client("127.0.0.1", engine.port) as client:
            client._sock = ResetOnce(client._sock)
            assert client.ping(timeout=TIMEOUT)
            assert [address for address, _ in engine.requests] == [protocol.PING]
            client._sock.resets = 2  # a reset on the retry too is this send's own: it is raised
            with pytest.raises(ConnectionResetError):
                client.send(protocol.PING)
    finally:
        engine.close()


def test_the_server_answers_past_a_reset_reported_on_its_send(server):
    server.sock = ResetOnce(server.sock)  # as on Windows, after a reply reached a requester that had gone
    with Client("127.0.0.1", server.port) as client:
        assert client.ping(timeout=TIMEOUT).address == protocol.PONG
    assert server.sock.resets == 0


@pytest.mark.parametrize("where", ["before", "after"])
def test_send_options_work_before_and_after_the_request(server, capsys, where):
    options = ["--port", str(server.port), "--json"]
    argv = ["send", *options, "ping"] if where == "before" else ["send", "ping", *options]
    assert main(argv) == 0
    assert '"address": "/imusic/pong"' in capsys.readouterr().out


def test_a_malformed_job_id_is_refused_before_sending(server):
    from engine.errors import ConfigError

    with Client("127.0.0.1", server.port) as client:
        for call in (
            lambda: client.status("a/b"),
            lambda: client.cancel(""),
            lambda: client.submit("/x", 0, 1, "x", job_id="é"),
        ):
            with pytest.raises(ConfigError, match="job id"):
                call()
        assert client.poll() == []


def takes_words(takes: object) -> str:
    """The engine's own refusal of `takes` (what the Editor and the server say of it)."""
    from engine.instructions import check_takes

    with pytest.raises(ConfigError) as refused:
        check_takes(takes)
    return str(refused.value)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["edit", "in.wav", "extract drums", "--start", "nan"], "argument --start: must be a finite number of seconds"),
        (["edit", "in.wav", "extract drums", "--seed", "99999999999"], "argument --seed: must be from 0 to 2147483647"),
        (["batch", ".", "--edit", "extract drums", "-o", "o", "--seed", "-2"], "argument --seed: must be from 0 to"),
        (["send", "--timeout", "inf", "ping"], "argument --timeout: must be a finite number of seconds"),
        (["send", "--timeout", "0", "ping"], "argument --timeout: must be a number of seconds above 0, got '0'"),
        (["send", "status", "--timeout", "-1"], "argument --timeout: must be a number of seconds above 0, got '-1'"),
        (["send", "edit", "in.wav", "extract drums", "--end", "nan"], "argument --end: must be a finite number"),
        (["edit", "in.wav", "extract drums", "--takes", "17"], "argument --takes: " + takes_words(17)),
        (["send", "edit", "in.wav", "extract drums", "--takes", "two"], "argument --takes: " + takes_words("two")),
    ],
)
def test_numbers_no_edit_can_use_are_usage_errors(argv, says, capsys):
    from bridge.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and says in capsys.readouterr().err


def test_a_request_the_server_would_refuse_is_refused_before_it_is_sent():
    with Client("127.0.0.1", 9) as client:  # the discard port: nothing is listening, nothing may be sent
        with pytest.raises(protocol.RequestError, match=r"argument 5 \(instruction\) is 70000 characters long"):
            client.submit("/tmp/in.wav", 0.0, 1.0, "x" * 70000)
        with pytest.raises(protocol.RequestError, match="must fit OSC's 32-bit integer, got 4294967296"):
            client.submit("/tmp/in.wav", 0.0, 1.0, "extract drums", seed=2**32)


def test_an_output_path_object_is_taken_as_a_string_is():
    from bridge.client import _absolute_output

    assert _absolute_output(Path("out") / "a.wav") == os.path.abspath("out/a.wav")
    assert _absolute_output("new/") == os.path.abspath("new") + os.sep


def test_an_error_detail_gives_back_its_code_and_a_bare_detail_the_default():
    detail = protocol.error_detail("bad_audio", "not audio: x.txt")
    assert detail == "bad_audio: not audio: x.txt"
    assert protocol.detail_code(detail, protocol.CANCELLED) == "bad_audio"
    assert protocol.detail_code("cancelled", protocol.CANCELLED) == protocol.CANCELLED


def test_a_wire_request_gives_the_edit_choices_the_engine_takes():
    request = protocol.EditRequest("j1", "/a.wav", 0.0, -1.0, "extract drums", seed=7, takes=2, mode="resynth")
    assert request.options() == protocol.EditOptions(seed=7, takes=2, raw=False, mode="resynth")
    assert protocol.EditRequest("j2", "/a.wav", 0.0, -1.0, "add piano").options() == protocol.EditOptions()


def test_send_edit_gives_up_in_one_line_on_a_server_that_accepts_and_goes_silent(tmp_path, monkeypatch, capsys):
    def accept_once_then_say_nothing(address, args, count):
        return [(protocol.ACCEPTED, [args[0], 0])] if address == protocol.EDIT and count == 1 else []

    monkeypatch.setattr(tracking, "GIVE_UP_AFTER_S", 0.5)
    song = write_wav(tmp_path / "song.wav", seconds=1.0)
    with ScriptedEngine(accept_once_then_say_nothing) as silent:
        code = main(["send", "--port", str(silent.port), "edit", str(song), "extract drums"])
    assert code == 1 and silent.requests[0][0] == protocol.EDIT
    assert "has not answered about job" in capsys.readouterr().err


def test_a_job_queued_behind_a_long_one_is_waited_for_not_given_up_on_for_the_silence_before_its_wait(tmp_path):
    """batch --server submits an edit's jobs ahead: while it waits on a long first job, the next one is not asked
    about, and its silence then is no sign of a dead engine."""
    done = str(tmp_path / "b.wav")

    def accept_then_answer_status(address, args, count):
        if address == protocol.EDIT:
            return [(protocol.ACCEPTED, [args[0], 0])]
        if address == protocol.STATUS:
            return [(protocol.DONE, [args[0], done, "{}"])]
        return []

    with ScriptedEngine(accept_then_answer_status) as engine, Client("127.0.0.1", engine.port) as client:
        job = client.submit(str(tmp_path / "song.wav"), 0.0, -1.0, "extract drums")
        time.sleep(0.6)  # the first job's four minutes, in short: nothing was asked about this one
        result = client.wait(job, timeout=TIMEOUT, resend_after=0.05, give_up_after=0.5)
    assert result.output_path == done


def test_waiting_for_acceptance_resends_an_edit_the_engine_never_got_and_returns_refusals_as_ended_jobs(tmp_path):
    """The first datagram of edit "a" is lost; "b" is refused. Both are settled in one wait: `imusic send edit` and
    batch's first jobs wait this one way (before, they waited without resending, and a lost edit cost 30 s)."""

    def lose_the_first_edit_refuse_b(address, args, count):
        if address != protocol.EDIT or (args[0] == "a" and count == 1):
            return []
        if args[0] == "b":
            return [(protocol.ERROR, ["b", "bad_instruction", "no such stem: kazoo"])]
        return [(protocol.ACCEPTED, [args[0], 0])]

    with ScriptedEngine(lose_the_first_edit_refuse_b) as engine, Client("127.0.0.1", engine.port) as client:
        client.tracker.resend_after = 0.1
        for job_id in ("a", "b"):
            client.submit(str(tmp_path / "song.wav"), 0.0, -1.0, "extract drums", job_id=job_id)
        a, b = client.wait_accepted(["a", "b"], answer_within=TIMEOUT, accept_within=TIMEOUT)
    assert (a.accepted, a.final) == (True, False)
    assert (b.code, b.error, b.final) == ("bad_instruction", "no such stem: kazoo", True)
    assert [args[0] for address, args in engine.requests if address == protocol.EDIT].count("a") >= 2


def test_send_edit_waits_for_a_slow_acceptance_from_an_engine_that_answers_and_says_when_none_comes(
    tmp_path, capsys, monkeypatch
):
    accept = {"after_s": 0.8}

    def answer_pings_accept_late(address, args, count):
        if address == protocol.PING:
            return [(protocol.PONG, ["0", "m", "cpu", protocol.READY])]
        if address == protocol.EDIT and accept["after_s"] is not None:
            time.sleep(accept["after_s"])  # journaling on a slow disk
            return [(protocol.ACCEPTED, [args[0], 0]), (protocol.DONE, [args[0], str(tmp_path / "r.wav"), "{}"])]
        return []

    monkeypatch.setattr(tracking, "ACCEPT_WITHIN_S", 2.0)
    song = write_wav(tmp_path / "song.wav", seconds=1.0)
    with ScriptedEngine(answer_pings_accept_late) as slow:
        argv = ["send", "--host", "127.0.0.1", "--port", str(slow.port), "--timeout", "0.3", "edit"]
        assert main([*argv, str(song), "x y"]) == 0  # accepted after 0.8 s: more than a ping's wait, still fine
        assert capsys.readouterr().out.strip() == str(tmp_path / "r.wav")
        accept["after_s"] = None  # now it answers pings only
        assert main([*argv, str(song), "x y"]) == 1
    err = capsys.readouterr().err
    assert "answers but did not accept job" in err and "within 2 s" in err and "imusic send status" in err
    assert main(["send", "--host", "127.0.0.1", "--port", "9", "--timeout", "0.3", "edit", str(song), "x y"]) == 1
    assert tracking.not_answering("127.0.0.1", 9) in capsys.readouterr().err  # nobody there: as everywhere


def test_an_edit_with_no_engine_there_says_so_instead_of_resending_for_ever(tmp_path):
    with ScriptedEngine(lambda address, args, count: []) as nobody, Client("127.0.0.1", nobody.port) as client:
        started = time.monotonic()
        with pytest.raises(NoReply, match="no imusic engine answers"):
            client.edit(str(tmp_path / "song.wav"), 0.0, -1.0, "extract drums")
    assert time.monotonic() - started < tracking.ANSWER_WITHIN_S + 5


def test_a_jobs_error_waiting_on_the_socket_is_not_taken_for_a_pings_or_statuss_answer(tmp_path):
    """The refusal of an edit arrives before the pong: it is that job's, for its tracker, not the ping's failure."""

    def refuse_edits_answer_the_rest(address, args, count):
        if address == protocol.EDIT:
            return [(protocol.ERROR, [args[0], "bad_instruction", "no such stem: kazoo"])]
        if address == protocol.PING:
            return [(protocol.PONG, ["0", "m", "cpu", protocol.READY])]
        if address == protocol.STATUS:
            return [(protocol.SERVER_STATUS, ["0", "m", "cpu", protocol.READY, 0, ""])]
        return []

    with ScriptedEngine(refuse_edits_answer_the_rest) as engine, Client("127.0.0.1", engine.port) as client:
        for job_id, ask in (("a", client.ping), ("b", client.status)):
            client.submit(str(tmp_path / "song.wav"), 0.0, -1.0, "add kazoo", job_id=job_id)
            readable, _, _ = select.select([client._sock], [], [], 5.0)  # the refusal is on the socket before the
            assert readable  # request goes (a fixed sleep let a slow machine test another order)
            assert ask(timeout=TIMEOUT).address in (protocol.PONG, protocol.SERVER_STATUS)
            client.follow()
            assert client.tracker.jobs[job_id].code == "bad_instruction"


def test_a_nul_in_a_string_is_refused_before_it_could_shift_the_arguments_after_it(tmp_path):
    with Client("127.0.0.1", 9) as client, pytest.raises(protocol.RequestError, match="NUL character"):
        client.submit(str(tmp_path / "song.wav"), 0.0, -1.0, "extract drums\x00xyz")
    # a reply holding one (an exception's words) goes whole, the NUL spelled out
    ((address, args),) = protocol.decode(protocol.encode(protocol.ERROR, "a", "x", "bad\x00name", 3))
    assert args == ["a", "x", "bad\\x00name", 3]


def test_a_client_works_on_a_descriptor_past_1024(server):
    """A large REAPER session holds over a thousand files open: select.select() refuses such descriptors."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if (hard if hard != resource.RLIM_INFINITY else 4096) < 1100:
        pytest.skip("this machine allows fewer than 1100 open files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard if hard != resource.RLIM_INFINITY else 2048), hard))
    held = []
    try:
        while not held or held[-1] < 1030:
            held.append(os.open(os.devnull, os.O_RDONLY))
        with Client("127.0.0.1", server.port) as client:
            assert client._sock.fileno() > 1024
            assert client.ping(timeout=TIMEOUT).address == protocol.PONG
            assert client.poll() == []
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_send_edit_interrupted_before_the_engine_took_it_still_cancels_it(tmp_path, monkeypatch, capsys):
    def hear_everything(address, args, count):
        return []

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    song = write_wav(tmp_path / "song.wav", seconds=1.0)
    monkeypatch.setattr(Client, "wait_accepted", interrupted)  # Ctrl-C while the input is still being checked
    with ScriptedEngine(hear_everything) as engine:
        code = main(["send", "--port", str(engine.port), "edit", str(song), "extract drums", "--job-id", "j1"])
        deadline = time.monotonic() + TIMEOUT
        while protocol.CANCEL not in [address for address, _ in engine.requests] and time.monotonic() < deadline:
            time.sleep(0.01)
    assert code == 130 and (protocol.CANCEL, ["j1"]) in engine.requests
    assert "cancel sent for job j1" in capsys.readouterr().err


def test_a_full_queue_is_waited_out_past_the_acceptance_limit_and_a_wait_given_up_cancels(tmp_path):
    """queue_full is "resend later": the edit waits for a place as long as the engine keeps saying so; the 30 s
    acceptance limit is for an engine that says nothing of it (a slow disk)."""
    full_until = time.monotonic() + 1.0

    def full_for_a_second(address, args, count):
        if address == protocol.EDIT and time.monotonic() < full_until:
            return [(protocol.ERROR, [args[0], protocol.QUEUE_FULL, "the queue is full (64 jobs waiting)"])]
        if address == protocol.EDIT:
            return [(protocol.ACCEPTED, [args[0], 63])]
        return []

    with ScriptedEngine(full_for_a_second) as engine, Client("127.0.0.1", engine.port) as client:
        client.tracker.resend_after = 0.1
        job_id = client.submit(str(tmp_path / "song.wav"), 0.0, -1.0, "extract drums")
        (job,) = client.wait_accepted([job_id], accept_within=0.4)
        assert job.accepted and not job.final
    assert sum(1 for address, _ in engine.requests if address == protocol.EDIT) > 3

    def pongs_only(address, args, count):
        return [(protocol.PONG, ["0", "m", "cpu", protocol.READY])] if address == protocol.PING else []

    with ScriptedEngine(pongs_only) as engine, Client("127.0.0.1", engine.port) as client:
        job_id = client.submit(str(tmp_path / "song.wav"), 0.0, -1.0, "extract drums")
        with pytest.raises(NoReply, match="a cancel was sent"):
            client.wait_accepted([job_id], answer_within=0.2, accept_within=0.6)
        deadline = time.monotonic() + TIMEOUT
        while (protocol.CANCEL, [job_id]) not in engine.requests and time.monotonic() < deadline:
            time.sleep(0.01)
    assert (protocol.CANCEL, [job_id]) in engine.requests  # a resend taken after the wait must not run for nobody


def test_an_edit_with_a_timeout_names_that_timeout_when_it_runs_out(tmp_path):
    def accept_and_say_nothing_more(address, args, count):
        return [(protocol.ACCEPTED, [args[0], 0])] if address == protocol.EDIT else []

    with (
        ScriptedEngine(accept_and_say_nothing_more) as engine,
        Client("127.0.0.1", engine.port) as client,
        pytest.raises(NoReply, match=r"did not finish within 0.5 s"),
    ):
        client.edit(str(tmp_path / "song.wav"), 0.0, -1.0, "extract drums", timeout=0.5)


def test_send_edit_says_nothing_of_a_taken_name_when_the_name_was_only_completed(server, root, capsys):
    song = write_wav(root / "song.wav", seconds=1.0)
    (root / "stems").mkdir()
    for output, written in (
        (root / "out", root / "out.wav"),
        (root / "stems", root / "stems" / "song.extract_drums.wav"),
    ):
        assert send(server, "edit", str(song), "extract drums", "-o", str(output)) == 0
        said = capsys.readouterr()
        assert said.out.strip() == str(written) and "was taken" not in said.err


def test_progress_heard_while_waiting_for_acceptance_is_still_shown_by_the_wait(tmp_path):
    """The engine starts a job at once: its first progress came with /accepted, was read by wait_accepted and never
    shown (send edit's bar began at 'decoding' now and then)."""
    done = str(tmp_path / "r.wav")

    def accept_start_and_finish(address, args, count):
        if address != protocol.EDIT or count > 1:
            return []
        job = args[0]
        return [(protocol.ACCEPTED, [job, 0]), (protocol.PROGRESS, [job, 0.0, "started"]),
                (protocol.PROGRESS, [job, 0.5, "editing"]), (protocol.DONE, [job, done, "{}"])]  # fmt: skip

    with ScriptedEngine(accept_start_and_finish) as engine, Client("127.0.0.1", engine.port) as client:
        job_id = client.submit(str(tmp_path / "song.wav"), 0.0, -1.0, "extract drums")
        client.wait_accepted([job_id])
        seen = []
        result = client.wait(job_id, timeout=TIMEOUT, on_progress=lambda f, stage: seen.append(stage))
    assert result.output_path == done and seen == ["started", "editing"]
