"""The actions' library when the wire misbehaves: a lost datagram, an engine that goes quiet.

A real `imusic serve` never drops a packet on loopback, so these use a scripted UDP endpoint that speaks the
protocol (bridge.protocol) and misbehaves on purpose; tests/test_reaper_actions.py covers the real server.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile
from fake_reaper import Harness, Source
from test_bridge_support import ScriptedEngine

from bridge import protocol


@pytest.fixture
def source(tmp_path) -> str:
    path = tmp_path / "mix.wav"
    soundfile.write(path, np.zeros((32000 * 3, 1), np.float32), 32000)
    return str(path)


@contextlib.contextmanager
def scripted_reaper(tmp_path, answer, source: str) -> Iterator[tuple[Harness, ScriptedEngine]]:
    """A fake REAPER whose one item ("Mix", 1 s of `source`) the actions edit, against an engine that answers as
    `answer(address, args, count)` says (test_bridge_support.ScriptedEngine); both closed when the test ends."""
    engine = ScriptedEngine(answer)
    harness = Harness(tmp_path, engine.port)
    try:
        track = harness.reaper.add_track("Mix")
        harness.reaper.add_item(track, position=0.0, length=1.0, source=Source("WAVE", source, 3.0))
        yield harness, engine
    finally:
        harness.close()
        engine.close()


def finish_edit(args: list) -> list[tuple[str, list]]:
    """Write a result where the request asked and report it done."""
    job_id, output = args[0], args[5]
    soundfile.write(output, np.zeros((32000, 1), np.float32), 32000)
    return [(protocol.ACCEPTED, [job_id, 0]), (protocol.DONE, [job_id, output, "{}"])]


def test_a_lost_edit_request_is_resent_and_the_job_completes(tmp_path, source, monkeypatch):
    def answer(address, args, count):
        if address == protocol.EDIT and count >= 2:  # the first datagram is "lost"
            return finish_edit(args)
        return []

    with scripted_reaper(tmp_path, answer, source) as (harness, engine):
        harness.run("imusic_extract_drums.py")
        harness.library.RESEND_EVERY_S = 0.2
        harness.settle(timeout=10)
        edits = [args for address, args in engine.requests if address == protocol.EDIT]
        assert len(edits) >= 2 and len({e[0] for e in edits}) == 1  # the same job id, sent again
        assert [t.name for t in harness.reaper.tracks] == ["Mix", "Mix \u00b7 extract drums"]
        assert harness.reaper.messages == []


def test_an_engine_that_goes_quiet_after_accepting_ends_the_job_with_a_message(tmp_path, source, monkeypatch):
    def answer(address, args, count):
        return [(protocol.ACCEPTED, [args[0], 0])] if address == protocol.EDIT and count == 1 else []

    with scripted_reaper(tmp_path, answer, source) as (harness, engine):
        harness.run("imusic_extract_drums.py")
        harness.library.RESEND_EVERY_S = 0.1
        harness.library.LOST_AFTER_S = 0.6
        harness.settle(timeout=10)
        # While quiet, the action asked for the accepted job's state instead of resending it.
        assert any(address == protocol.STATUS for address, _ in engine.requests)
        assert sum(address == protocol.EDIT for address, _ in engine.requests) == 1
        (message,) = [m for m, _, _ in harness.reaper.messages]
        assert "has not answered for 0.6 s" in message
        assert message.endswith("start `imusic serve` again, then run the action again")
        assert harness.reaper.changes == []


def test_a_result_file_that_vanished_is_reported_not_inserted(tmp_path, source, monkeypatch):
    def answer(address, args, count):
        if address == protocol.EDIT:
            return [(protocol.ACCEPTED, [args[0], 0]), (protocol.DONE, [args[0], str(tmp_path / "nowhere.wav"), "{}"])]
        return []

    with scripted_reaper(tmp_path, answer, source) as (harness, engine):
        harness.run("imusic_extract_drums.py")
        harness.settle(timeout=10)
        (message,) = [m for m, _, _ in harness.reaper.messages]
        assert "the result file is missing" in message
        assert harness.reaper.changes == []


QUOTED_NAMES = ['it\'s "done".wav', "plain name.wav", 'a "quoted" name.wav', 'all "three" `quotes\'.wav']


@pytest.mark.parametrize("name", QUOTED_NAMES)
def test_the_result_file_becomes_the_new_items_take_whatever_quotes_its_name_holds(tmp_path, source, monkeypatch, name):
    """The result's take is made from an item state chunk (the binding would pass a fresh source as NULL); a name no
    chunk can hold is reported, not inserted as an empty take."""
    written = tmp_path / name

    def answer(address, args, count):
        if address == protocol.EDIT:
            soundfile.write(written, np.zeros((32000, 1), np.float32), 32000)
            return [(protocol.ACCEPTED, [args[0], 0]), (protocol.DONE, [args[0], str(written), "{}"])]
        return []

    with scripted_reaper(tmp_path, answer, source) as (harness, engine):
        harness.run("imusic_extract_drums.py")
        harness.settle(timeout=10)
        if all(q in name for q in "\"'`"):
            (message,) = [m for m, _, _ in harness.reaper.messages]
            assert "REAPER cannot hold this file name in a project" in message and str(written) in message
            assert harness.reaper.changes == []
            return
        assert harness.reaper.messages == []
        (result,) = harness.reaper.tracks[1].items
        assert (result.take.source.type, result.take.source.filename) == ("WAVE", str(written))
        assert (result.position, result.length, result.values["B_LOOPSRC"]) == (0.0, 1.0, 0.0)
        assert result.take.source.peaks  # the waveform was built from the take's own source


def test_a_bug_while_finishing_one_action_leaves_the_other_actions_running(tmp_path, source, monkeypatch):
    with scripted_reaper(
        tmp_path, lambda address, args, count: finish_edit(args) if address == protocol.EDIT else [], source
    ) as (harness, engine):
        harness.run("imusic_extract_drums.py")
        library = harness.library
        real_finish = library.finish

        def finish_once_broken(R, session):
            if session.instruction == "extract drums":
                raise RuntimeError("boom")
            real_finish(R, session)

        monkeypatch.setattr(library, "finish", finish_once_broken)
        harness.run("imusic_remove_drums.py")
        harness.settle(timeout=10)
        (message,) = [m for m, _, _ in harness.reaper.messages]
        assert message == "Instruct: extract drums stopped on an internal error: RuntimeError: boom"
        assert [t.name for t in harness.reaper.tracks] == ["Mix", "Mix \u00b7 remove drums"]


def test_a_lost_done_reply_is_recovered_by_asking_for_the_jobs_state(tmp_path, source, monkeypatch):
    def answer(address, args, count):
        if address == protocol.EDIT:
            finish_edit(args)  # the result is written, but the /done datagram is "lost"
            answer.output = args[5]
            return [(protocol.ACCEPTED, [args[0], 0])]
        if address == protocol.STATUS:
            return [(protocol.STATE, [args[0], protocol.DONE_STATE, 1.0, answer.output])]
        return []

    with scripted_reaper(tmp_path, answer, source) as (harness, engine):
        harness.run("imusic_add_bass.py")
        harness.library.RESEND_EVERY_S = 0.1
        harness.settle(timeout=10)
        assert harness.reaper.messages == []
        (result,) = harness.reaper.tracks[1].items
        assert result.take.source.filename == answer.output


def test_the_engines_note_on_a_result_is_shown_once_per_reaper_session(tmp_path, source, monkeypatch):
    note = "tiny's own evaluation: its extract edits do not clearly beat leaving the audio unchanged"

    def answer(address, args, count):
        if address == protocol.EDIT:
            job_id, output = args[0], args[5]
            soundfile.write(output, np.zeros((32000, 1), np.float32), 32000)
            info = json.dumps({"warnings": [note]})
            return [(protocol.ACCEPTED, [job_id, 0]), (protocol.DONE, [job_id, output, info])]
        return []

    with scripted_reaper(tmp_path, answer, source) as (harness, engine):
        for _ in range(2):  # the same hotkey twice: the result lands both times, the note is said once
            harness.run("imusic_extract_drums.py")
            harness.settle(timeout=10)
        assert [t.name for t in harness.reaper.tracks].count("Mix \u00b7 extract drums") == 2
        (message,) = [m for m, _, _ in harness.reaper.messages]
        assert note in message and "once per REAPER session" in message


def test_a_bad_imusic_port_in_reapers_environment_is_a_message_and_the_default_is_tried(tmp_path, source, monkeypatch):
    with scripted_reaper(tmp_path, lambda address, args, count: [], source) as (harness, engine):
        monkeypatch.setenv("IMUSIC_PORT", "ninety")
        harness.run("imusic_status.py")
        harness.settle(timeout=10)
        first = harness.reaper.messages[0][0]
        assert (
            "port number from 1 to 65535, got 'ninety'" in first and f"using 127.0.0.1:{protocol.DEFAULT_PORT}" in first
        )
