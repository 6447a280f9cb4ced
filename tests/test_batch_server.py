"""`imusic batch --server`: the jobs go to a running engine server (real sockets on loopback, the tiny model)."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
from test_bridge_support import write_wav

from bridge import tracking
from bridge.cli import main
from bridge.manifest import Manifest


@pytest.fixture
def server(serve, tiny_editor, tmp_path):
    return serve(editor=tiny_editor, root=tmp_path)


@pytest.fixture
def session(tmp_path):
    root = tmp_path / "session"
    write_wav(root / "a.wav", 0.5, 22050, 2, seed=0, subtype="PCM_16")
    write_wav(root / "sub" / "b.wav", 0.5, 16000, 1, seed=1, subtype="PCM_16")
    return root


def test_batch_through_the_server_renders_every_pair_and_resumes(server, session, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["batch", str(session), "--edit", "extract drums", "--edit", "no bass", "-o", str(out)]
    argv += ["--server", f"127.0.0.1:{server.port}", "--seed", "2"]
    assert main(argv) == 0
    assert "4 rendered" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"]["server"] == f"127.0.0.1:{server.port}"
    record = manifest["pairs"]["sub/b | remove bass"]
    assert record["status"] == "done" and record["output"] == "sub/b.remove_bass.wav"
    assert "result_lufs" in record["levels"]
    result, source = sf.info(out / "sub" / "b.remove_bass.wav"), sf.info(session / "sub" / "b.wav")
    assert (result.samplerate, result.channels, result.frames) == (source.samplerate, source.channels, source.frames)

    assert main(argv) == 0
    assert "0 rendered, 4 already done" in capsys.readouterr().out


def test_a_server_whose_model_files_changed_under_the_same_name_renders_again(
    server, session, tmp_path, capsys, tiny_editor, tiny_model_dir, monkeypatch
):
    """The batch knew a server's model by its name alone: a retrained adapter behind it kept the old results."""
    from engine.weights.loader import weights_identity

    out = tmp_path / "out"
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(out), "--server", f"127.0.0.1:{server.port}"]
    assert main(argv) == 0 and "2 rendered" in capsys.readouterr().out
    record = json.loads((out / "manifest.json").read_text())["pairs"]["a | extract drums"]
    assert record["settings"]["weights"] == weights_identity(tiny_model_dir)  # what the server's pong says
    monkeypatch.setattr(tiny_editor, "weights", "0123456789abcdef")  # the same name, other files
    assert main(argv) == 0 and "2 rendered" in capsys.readouterr().out


def test_server_without_an_address_finds_the_engine_where_the_other_clients_do(server, session, tmp_path, monkeypatch):
    monkeypatch.setenv("IMUSIC_PORT", str(server.port))
    out = tmp_path / "out"
    assert main(["batch", str(session), "--edit", "extract drums", "-o", str(out), "--server"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"]["server"] == f"127.0.0.1:{server.port}"


def test_an_edit_the_server_model_does_not_know_stops_the_batch_with_one_line(server, session, tmp_path, capsys):
    argv = ["batch", str(session), "--edit", "extract kazoo", "-o", str(tmp_path / "out")]
    assert main(argv + ["--server", f"127.0.0.1:{server.port}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kazoo" in err


def test_a_stem_only_the_server_model_lacks_stops_the_batch_before_anything_is_sent(server, session, tmp_path, capsys):
    # "vocals" is a word the client knows; the tiny model's card has no vocals: the server's pong names its stems.
    out = tmp_path / "out"
    argv = ["batch", str(session), "--edit", "extract drums", "--edit", "extract vocals", "-o", str(out)]
    assert main(argv + ["--server", f"127.0.0.1:{server.port}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vocals" in err
    assert not (out / "manifest.json").exists()  # refused as an in-process batch refuses it: nothing was sent


def test_a_bad_file_fails_its_pairs_and_the_rest_is_done_through_the_server(server, session, tmp_path, capsys):
    (session / "0_broken.wav").write_bytes(b"RIFF" + bytes(100))
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(tmp_path / "out")]
    assert main(argv + ["--server", f"127.0.0.1:{server.port}"]) == 1
    assert "2 rendered, 0 already done, 1 failed" in capsys.readouterr().out


def test_no_server_listening_is_one_clear_line(session, tmp_path, capsys):
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(tmp_path / "out"), "--server", "127.0.0.1:9"]
    assert main(argv) == 1
    assert tracking.not_answering("127.0.0.1", 9) in capsys.readouterr().err


def test_a_server_that_dies_mid_job_stops_the_batch_with_one_line(
    serve, tmp_path, tiny_editor, session, monkeypatch, capsys
):
    import threading
    import time as clock

    from bridge import batch_backends

    class SlowEditor:
        """The tiny editor, after a pause long enough to stop the server while a job runs."""

        def __getattr__(self, name):
            return getattr(tiny_editor, name)

        def edit(self, *args, **kwargs):
            started.set()
            clock.sleep(1.0)
            return tiny_editor.edit(*args, **kwargs)

    started = threading.Event()
    server = serve(editor=SlowEditor(), root=tmp_path)
    threading.Thread(target=lambda: started.wait(30) and server.stop(), daemon=True).start()
    monkeypatch.setattr(batch_backends.ServerBackend, "silence_limit_s", 2.0)
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(tmp_path / "out")]
    began = clock.monotonic()
    assert main(argv + ["--server", f"127.0.0.1:{server.port}"]) == 1
    assert clock.monotonic() - began < 30
    err = capsys.readouterr().err
    assert "has not answered" in err and "rerun" in err and "Traceback" not in err


def test_ctrl_c_cancels_the_servers_job_and_a_rerun_renders_everything(server, session, tmp_path, capsys, monkeypatch):
    import time

    from bridge import protocol
    from bridge.client import Client

    out = tmp_path / "out"
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(out), "--server", f"127.0.0.1:{server.port}"]
    sent, real_send, real_wait = [], Client.send, Client.wait

    def interrupted(self, job_id, **kwargs):
        time.sleep(1.0)  # the server works on (and may finish) the job meanwhile
        raise KeyboardInterrupt

    monkeypatch.setattr(
        Client, "send", lambda self, address, *args: sent.append((address, args)) or real_send(self, address, *args)
    )
    monkeypatch.setattr(Client, "wait", interrupted)
    assert main(argv) == 130  # "imusic: interrupted"
    assert [args[0] for address, args in sent if address == protocol.CANCEL]  # the server was told to stop
    monkeypatch.setattr(Client, "wait", real_wait)
    time.sleep(1.0)  # a result the server finished after the cut lands in OUT: the batch's own, not the user's
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 rendered" in printed and "refused" not in printed


@pytest.mark.parametrize("earlier_job_finishes", [False, True])
def test_a_rerun_after_a_killed_batch_ends_its_jobs_on_the_server_first_and_keeps_the_result_names(
    serve, tiny_editor, session, tmp_path, capsys, monkeypatch, earlier_job_finishes
):
    """kill -9 cancels nothing: the cut run's jobs stay queued on the server, and one still queued or running held its
    result's name, so the rerun's job for the same pair was named `-2` and rendered twice."""
    import time

    from bridge.client import Client

    class SlowEditor:
        def __getattr__(self, name):
            return getattr(tiny_editor, name)

        def edit(self, *args, **kwargs):
            time.sleep(0.5)
            return tiny_editor.edit(*args, **kwargs)

    class Killed(BaseException):
        """kill -9, as far as this process can play it: no handler runs, nothing is cancelled."""

    server = serve(editor=SlowEditor(), root=tmp_path)
    out = tmp_path / "out"
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(out), "--server", f"127.0.0.1:{server.port}"]
    real_wait = Client.wait

    def killed(self, job_id, **kwargs):
        raise Killed

    monkeypatch.setattr(Client, "wait", killed)
    with pytest.raises(Killed):
        main(argv)
    left = Manifest(out / "manifest.json").server_jobs  # journalled as they were submitted
    assert len(left) == 2  # both submitted, recorded before they were sent
    monkeypatch.setattr(Client, "wait", real_wait)
    if earlier_job_finishes:  # past its last progress report, it finishes instead of honouring the cancel
        from bridge import batch_backends

        real_end = batch_backends.ServerBackend.end_earlier_jobs

        def too_late(self, job_ids):
            with Client("127.0.0.1", server.port) as other:
                other.wait(left[0], timeout=30)
            real_end(self, job_ids)

        monkeypatch.setattr(batch_backends.ServerBackend, "end_earlier_jobs", too_late)
    assert main(argv) == 0
    assert "2 rendered" in capsys.readouterr().out
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav")) == [
        "a.extract_drums.wav",
        "sub/b.extract_drums.wav",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert "server_jobs" not in manifest
    outputs = {entry["output"] for entry in manifest["pairs"].values()}
    assert outputs == {"a.extract_drums.wav", "sub/b.extract_drums.wav"}
    earlier = [server.book.get(job_id) for job_id in left]  # None: the cut came before it was sent
    assert earlier[0] is not None and all(job is None or job.state in ("cancelled", "done") for job in earlier)


def test_the_server_models_own_instruments_are_parsed_as_an_in_process_batch_parses_them(serve, session, tmp_path):
    """Its pong names the model's stems: an instrument the built-in list lacks is not refused before it is sent, and
    labels (file names, manifest keys) are those an in-process batch of the same model gives."""
    from test_bridge_support import FakeEditor

    server = serve(editor=FakeEditor(stems=("percussion", "drums")), root=tmp_path)
    out = tmp_path / "out"
    argv = [
        "batch",
        str(session),
        "--edit",
        "extract percussion",
        "-o",
        str(out),
        "--server",
        f"127.0.0.1:{server.port}",
    ]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pairs"]["a | extract percussion"]["output"] == "a.extract_percussion.wav"


def test_a_server_still_loading_its_model_is_waited_for_so_edits_are_named_with_its_instruments(capsys):
    from test_bridge_support import ScriptedEngine

    from bridge import protocol
    from bridge.batch_backends import ServerBackend
    from bridge.protocol import EditOptions

    def answer(address, args, count):
        if address != protocol.PING:
            return []
        if count < 3:  # loading: no model yet, so no stems
            return [(protocol.PONG, list(protocol.pong_args("0.1", "", "", protocol.LOADING, [])))]
        return [(protocol.PONG, list(protocol.pong_args("0.1", "m", "cpu", protocol.READY, [], ["percussion"])))]

    engine = ScriptedEngine(answer)
    try:
        backend = ServerBackend(f"127.0.0.1:{engine.port}", EditOptions())
        assert backend.parse("extract percussion").label == "extract percussion"
        assert backend.model_info["model"] == "m"
        assert "the engine is loading its model; waiting for it" in capsys.readouterr().err
        backend.close()
    finally:
        engine.close()


def test_a_rerender_that_fails_on_the_server_keeps_the_earlier_result(server, session, tmp_path, capsys):
    """The earlier result moved aside (not deleted) while the server made its new one: a source damaged since, whose
    new render fails, left the pair with no result at all (the in-process batch keeps it)."""
    out = tmp_path / "out"
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(out), "--server", f"127.0.0.1:{server.port}"]
    assert main(argv) == 0
    result = out / "a.extract_drums.wav"
    earlier = result.read_bytes()
    (session / "a.wav").write_bytes(b"RIFF" + bytes(100))  # damaged: the rerun renders it again, and fails
    assert main(argv) == 1
    assert "a | extract drums" in capsys.readouterr().out
    assert result.read_bytes() == earlier
    assert not list(out.glob(".*.earlier"))
    (session / "a.wav").unlink()
    write_wav(session / "a.wav", 0.5, 22050, 2, seed=5, subtype="PCM_16")  # fixed: rendered anew, over it
    assert main([*argv, "--retry-failed"]) == 0
    assert result.read_bytes() != earlier and not list(out.glob(".*.earlier"))


def test_an_earlier_result_comes_back_when_the_server_stops_the_batch_at_its_first_check(
    server, session, tmp_path, capsys, monkeypatch
):
    from bridge.client import Client, NoReply

    out = tmp_path / "out"
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(out), "--server", f"127.0.0.1:{server.port}"]
    assert main(argv) == 0
    result = out / "a.extract_drums.wav"
    earlier = result.read_bytes()
    write_wav(session / "a.wav", 0.5, 22050, 2, seed=7, subtype="PCM_16")  # changed: rendered again

    def silent(self, job_ids, *args, **kwargs):
        raise NoReply("the engine did not answer")

    monkeypatch.setattr(Client, "wait_accepted", silent)
    assert main(argv) == 1
    assert "did not answer" in capsys.readouterr().err
    assert result.read_bytes() == earlier and not list(out.glob(".*.earlier"))


def test_the_server_running_out_of_memory_stops_the_batch_as_in_process(server, session, tmp_path, capsys, monkeypatch):
    """An in-process batch stops at out of memory (every pair after it would fail too); through the server the pair
    was recorded failed and the batch went on to the next."""
    edits = []

    def exhausted(*args, **kwargs):
        edits.append(args)
        raise MemoryError

    monkeypatch.setattr(server.worker.editor, "edit", exhausted)
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(tmp_path / "out")]
    assert main(argv + ["--server", f"127.0.0.1:{server.port}"]) == 1
    printed = capsys.readouterr()
    assert "out of memory" in printed.err and "rerun the same batch command to resume" in printed.err
    assert len(edits) == 1  # the second file was never sent on


def test_a_name_taken_while_the_server_edited_is_recorded_as_the_name_the_server_chose(
    server, session, tmp_path, capsys, monkeypatch
):
    """A file put at a result's name while the server edited: the server gives way (`-2`), and the manifest must name
    that file, or the result is orphaned and the next run renders it again."""
    out = tmp_path / "out"
    real_edit = server.worker.editor.edit

    def edit_while_the_producer_saves_there(*args, **kwargs):
        theirs = out / "a.extract_drums.wav"
        if not theirs.exists():
            write_wav(theirs, 0.2, 8000, 1, seed=9, subtype="PCM_16")
        return real_edit(*args, **kwargs)

    monkeypatch.setattr(server.worker.editor, "edit", edit_while_the_producer_saves_there)
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(out), "--server", f"127.0.0.1:{server.port}"]
    assert main(argv) == 0
    record = json.loads((out / "manifest.json").read_text())["pairs"]["a | extract drums"]
    assert record["output"] == "a.extract_drums-2.wav" and (out / record["output"]).is_file()
    assert sf.info(out / "a.extract_drums.wav").samplerate == 8000  # the producer's file, untouched
    capsys.readouterr()
    assert main(argv) == 0 and "0 rendered, 2 already done" in capsys.readouterr().out
