"""Every REAPER action end to end: the installed scripts run against a fake REAPER API and a real `imusic serve`
(tiny random model) on loopback. The tiny model's audio means nothing; what is checked is the region sent, where
the result lands, its name, length and position, one undo point, and that bad input changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path

import fake_reaper
import numpy as np
import pytest
import soundfile
from fake_reaper import Harness, Source, Track

from bridge import audio_read, protocol, tracking
from bridge.client import Client
from bridge.serve_process import ServerProcess

SR = 44100
SOURCE_SECONDS = 8.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reaper_e2e")


@pytest.fixture(scope="module")
def engine_port(root, tiny_model_dir, tmp_path_factory):
    """A real `imusic serve` with the tiny model, on a free loopback port, for the whole module."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    options = ["--no-warm-up", "--device", "cpu"]
    roots = [tmp_path_factory.getbasetemp()]
    server = ServerProcess(tiny_model_dir, root, free_udp_port(), roots=roots, options=options, env=env)
    try:
        with Client(server.host, server.wait_listening(120)) as client:
            server.wait_ready(client, 120)
        yield server.port
    finally:
        server.stop()


@pytest.fixture(scope="module")
def source_file(root) -> tuple[Path, np.ndarray]:
    """8 s of stereo noise at 44.1 kHz: every region has samples of its own, so an offset mistake cannot pass."""
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, size=(int(SOURCE_SECONDS * SR), 2)).astype(np.float32)
    path = root / "audio" / "band.wav"
    path.parent.mkdir()
    soundfile.write(path, audio, SR, subtype="FLOAT")
    return path, audio.T  # [C, N]


@pytest.fixture
def harness(tmp_path, engine_port):
    harness = Harness(tmp_path, engine_port)
    yield harness
    harness.close()


@pytest.fixture
def sent(monkeypatch) -> list[tuple]:
    """Every (input_path, start_s, end_s, instruction) the actions submit, passed on to the real client."""
    calls = []
    real_send_edit = Client.send_edit

    def spy(self, request):
        calls.append((request.input_path, request.start_s, request.end_s, request.instruction))
        return real_send_edit(self, request)

    monkeypatch.setattr(Client, "send_edit", spy)
    return calls


def frames(seconds: float) -> int:
    return int(round(seconds * SR))


def assert_region_is_source(sent_call, source, offset: float, seconds: float) -> None:
    """The region sent reads back as exactly the source samples at the take offset."""
    path, audio = source
    input_path, start_s, end_s, _ = sent_call
    assert Path(input_path) == path
    region, rate = audio_read.read_region(input_path, start_s, end_s)
    assert rate == SR
    expected = audio[:, frames(offset) : frames(offset) + frames(seconds)]
    assert region.shape == expected.shape
    np.testing.assert_array_equal(region, expected)


def _loop(reaper) -> list[str]:
    """The deferred code that watches edits: what an action defers besides the no-op each one ends with."""
    return [code for code in reaper.deferred if code != "None"]


def assert_unchanged(harness: Harness, message: str) -> None:
    """One message box with that text, no change to the project, no job left running, no file written."""
    assert len(harness.reaper.messages) == 1, harness.reaper.messages
    assert message in harness.reaper.messages[0][0]
    assert harness.reaper.changes == []
    assert harness.reaper.undo_points == []
    assert harness.results() == []


# ------------------------------------------------------------------------------------------------ edits that work


def test_extract_drums_puts_the_edit_of_exactly_the_item_on_a_new_track_under_it(harness, source_file, sent):
    reaper = harness.reaper
    bass = reaper.add_track("Bass")
    keys = reaper.add_track("Keys")
    reaper.add_item(bass, position=2.0, length=2.5, start_offset=1.25, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    # The action returns at once: the job runs on the engine while REAPER keeps going.
    assert reaper.changes == [] and _loop(reaper)
    harness.settle()

    assert reaper.messages == []
    assert [t.name for t in reaper.tracks] == ["Bass", "Bass \u00b7 extract drums", "Keys"]
    assert reaper.tracks[2] is keys
    (result,) = reaper.tracks[1].items
    assert (result.position, result.length) == (2.0, 2.5)
    assert result.take.values["D_STARTOFFS"] == 0.0 and result.take.values["D_PLAYRATE"] == 1.0
    assert result.values["B_LOOPSRC"] == 0.0
    assert result.take.name == "extract drums"
    assert result.take.source.peaks  # REAPER builds no peaks for a source the API made: no waveform without them
    info = soundfile.info(result.take.source.filename)
    assert (info.frames, info.samplerate, info.channels) == (frames(2.5), SR, 2)
    assert Path(result.take.source.filename).parent == harness.media / "imusic"
    assert reaper.undo_points == ["Instruct: extract drums"]
    assert reaper.messages == []
    (call,) = sent
    assert call[3] == "extract drums"
    assert_region_is_source(call, source_file, offset=1.25, seconds=2.5)


def test_a_result_keeps_the_fades_of_the_item_edges_it_keeps(harness, source_file):
    """What the producer hears at an item's edges is faded: a result of the whole item gets its fades (the
    auto-crossfade's length where REAPER set one); a region clipped inside the item by a time selection gets none."""
    reaper = harness.reaper
    track = reaper.add_track("Mix")
    whole = reaper.add_item(track, position=0.0, length=2.0, source=Source("WAVE", str(source_file[0]), 8.0))
    whole.values.update(D_FADEINLEN=0.25, C_FADEINSHAPE=2.0, D_FADEINDIR=-0.5, D_FADEOUTLEN=0.1)
    whole.values.update(D_FADEOUTLEN_AUTO=0.4, C_FADEOUTSHAPE=1.0)  # an auto-crossfade there, longer than its own
    harness.run("imusic_extract_drums.py")
    harness.settle()
    (result,) = reaper.tracks[1].items
    fades = {k: result.values.get(k, 0.0) for k in ("D_FADEINLEN", "C_FADEINSHAPE", "D_FADEINDIR")}
    assert fades == {"D_FADEINLEN": 0.25, "C_FADEINSHAPE": 2.0, "D_FADEINDIR": -0.5}
    assert (result.values["D_FADEOUTLEN"], result.values["C_FADEOUTSHAPE"]) == (0.4, 1.0)

    reaper.time_selection = (0.5, 2.0)  # the end of the item, not its start: its fade-out only
    harness.run("imusic_remove_bass.py")
    harness.settle()
    (clipped,) = reaper.tracks[1].items if reaper.tracks[1].name.endswith("remove bass") else reaper.tracks[2].items
    assert (clipped.position, clipped.length) == (0.5, 1.5)
    assert clipped.values.get("D_FADEINLEN", 0.0) == 0.0 and clipped.values["D_FADEOUTLEN"] == 0.4

    reaper.time_selection = (1.8, 2.0)  # shorter than the fade-out: it covers the result, not more
    harness.run("imusic_extract_bass.py")
    harness.settle()
    (short,) = [t for t in reaper.tracks if t.name.endswith("extract bass")][0].items
    assert short.length == pytest.approx(0.2) and short.values["D_FADEOUTLEN"] == pytest.approx(0.2)


def test_a_result_of_an_item_without_fades_has_none_whatever_fade_reaper_gives_new_items(harness, source_file):
    reaper = harness.reaper
    reaper.new_item_fade = 0.01  # Preferences > Media item defaults: a fade on every new item, if REAPER applies it
    track = reaper.add_track("Mix")
    reaper.add_item(track, position=0.0, length=2.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    harness.settle()
    (result,) = reaper.tracks[1].items
    assert (result.values["D_FADEINLEN"], result.values["D_FADEOUTLEN"]) == (0.0, 0.0)


def test_a_peak_build_that_never_ends_does_not_hang_reaper_and_the_result_still_lands(harness, source_file):
    reaper = harness.reaper
    calls = []

    def stuck(src, mode):  # a build that reports 50 % left on every step
        calls.append(mode)
        return 1 if mode == 0 else 50 if mode == 1 else 0

    reaper.RPR_PCM_Source_BuildPeaks = stuck
    reaper.install()  # the reaper_python module the library reads the API from
    track = reaper.add_track("Mix")
    reaper.add_item(track, position=0.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    harness.settle()
    assert reaper.messages == []
    assert len(reaper.tracks[1].items) == 1 and reaper.undo_points == ["Instruct: extract drums"]
    # given up after its steps, and not finished: finishing a build that never reached 0 can leave broken peaks
    assert calls[0] == 0 and 2 not in calls and 1000 < calls.count(1) <= 10_000


def test_a_long_peak_build_is_stepped_across_deferred_rounds_not_run_in_one(harness, source_file):
    """A step reads a part of the file on REAPER's UI thread: an hour-long result built in one round froze REAPER."""
    reaper = harness.reaper
    rounds, left = [], {}

    def slow(src, mode):  # 30 steps of 10 ms each: 0.3 s of reading in all
        if mode == 1:
            rounds.append(reaper.rounds)
            time.sleep(0.01)
            left[src] = left.get(src, 100) - 100 / 30
            return max(0, round(left[src]))
        return 1 if mode == 0 else 0

    reaper.RPR_PCM_Source_BuildPeaks = slow
    reaper.install()
    run_deferred = reaper.run_deferred

    def counted() -> int:
        reaper.rounds = getattr(reaper, "rounds", 0) + 1
        return run_deferred()

    reaper.rounds, reaper.run_deferred = 0, counted
    track = reaper.add_track("Mix")
    reaper.add_item(track, position=0.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    harness.settle()
    assert len(reaper.tracks[1].items) == 1 and len(rounds) == 30
    per_round = [rounds.count(r) for r in set(rounds)]
    assert max(per_round) <= 3 and len(per_round) >= 10  # a budget of 15 ms a round: two 10 ms steps, not thirty


def test_a_peak_build_waits_while_its_project_tab_is_in_the_background(harness, source_file):
    """The binding passes a background tab's source as NULL: a step then read "done", finished nothing and dropped the
    build, and the result never got its waveform."""
    reaper = harness.reaper

    def slow(src, mode):  # 30 steps of 10 ms; a source the binding does not let through reads as NULL (0)
        try:
            source = reaper._source(src)
        except ValueError:
            return 0
        if mode == 1:
            time.sleep(0.01)
            source.peaks_left = max(0, source.peaks_left - 4)
            return source.peaks_left
        if mode == 2:
            source.peaks = source.peaks or source.peaks_left == 0
        return 1 if mode == 0 else 0

    reaper.RPR_PCM_Source_BuildPeaks = slow
    reaper.install()
    track = reaper.add_track("Mix")
    reaper.add_item(track, position=0.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    deadline = time.monotonic() + 60
    while not reaper.tracks[1:] or not reaper.tracks[1].items:  # until the result lands, its waveform begun
        assert time.monotonic() < deadline
        reaper.run_deferred()
        time.sleep(0.02)
    home, other = reaper.project, fake_reaper._pointer("ReaProject")
    reaper.open_projects.append(other)
    reaper.project = other  # the producer looks at another song meanwhile
    for _ in range(5):
        reaper.run_deferred()
    (result,) = reaper.tracks[1].items
    assert not result.take.source.peaks and _loop(reaper)  # waiting, not given up
    reaper.project = home
    harness.settle()
    assert result.take.source.peaks


def test_running_actions_again_adds_their_folder_to_pythons_path_once(harness, source_file):
    """REAPER keeps one Python interpreter for every script: each run must not push the same folder again."""
    import sys

    folder = str(harness.resource / "Scripts" / "imusic")
    for _ in range(3):
        harness.run("imusic_status.py")
        harness.settle()
    assert sum(entry == folder for entry in sys.path) == 1


def test_every_hotkey_action_sends_its_own_edit_and_lands_under_the_source(harness, source_file, sent):
    from reaper_scripts.planning import PRESET_ACTIONS

    reaper = harness.reaper
    mix = reaper.add_track("Mix")
    reaper.add_track("After")
    reaper.add_item(mix, position=1.0, length=0.5, start_offset=3.0, source=Source("WAVE", str(source_file[0]), 8.0))
    for number, action in enumerate(PRESET_ACTIONS, start=1):
        harness.run(action.script_name)
        harness.settle()
        # nothing but the engine's notes (on loud noise, the random model's added part can go over full scale)
        failed = [m for m, _, _ in reaper.messages if "a note from the engine" not in m]
        assert failed == [], (action.script_name, reaper.messages)
        assert sent[-1][3] == action.instruction and len(sent) == number
        assert_region_is_source(sent[-1], source_file, offset=3.0, seconds=0.5)
        new = reaper.tracks[1]  # each result track goes directly under Mix, above the earlier ones
        assert new.name == f"Mix \u00b7 {action.instruction}"
        (result,) = new.items
        assert (result.position, result.length) == (1.0, 0.5)
        assert soundfile.info(result.take.source.filename).frames == frames(0.5)
        assert reaper.undo_points[-1] == f"Instruct: {action.instruction}" and len(reaper.undo_points) == number
    assert [t.name for t in reaper.tracks][-1] == "After" and len(reaper.tracks) == 2 + len(PRESET_ACTIONS)


def test_the_deferred_loop_starts_with_host_functions_that_only_the_scripts_globals_hold(harness, source_file):
    # REAPER gives RPR_defer to the running script, not to the reaper_python module the library imports.
    assert not hasattr(sys.modules["reaper_python"], "RPR_defer")
    track = harness.reaper.add_track("Mix")
    harness.reaper.add_item(track, position=0.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    assert len(_loop(harness.reaper)) == 1
    harness.settle()
    assert harness.reaper.messages == [] and len(harness.reaper.tracks[1].items) == 1


def test_the_action_and_its_deferred_rounds_never_wait_on_the_engine(harness, source_file, monkeypatch):
    """REAPER's UI thread runs them: they only look at the socket (select with no wait), never wait on it, and never
    sleep."""
    import selectors

    def blocking(*args, **kwargs):
        raise AssertionError("a REAPER action called a blocking client method")

    for name in ("wait", "wait_for", "_request"):
        monkeypatch.setattr(Client, name, blocking)
    waits, real_select = [], selectors.DefaultSelector.select

    def looking(self, timeout=None):  # every look at the client's socket
        waits.append(timeout)
        return real_select(self, timeout)

    monkeypatch.setattr(selectors.DefaultSelector, "select", looking)
    real_sleep = time.sleep

    def sleep(seconds):
        if sys._getframe(1).f_globals.get("__name__", "").startswith(("imusic_lib", "reaper_scripts", "bridge")):
            raise AssertionError(f"a REAPER action slept {seconds} s")
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    reaper = harness.reaper
    track = reaper.add_track("Mix")
    reaper.add_item(track, position=0.0, length=3.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_remove_bass.py")
    assert len(_loop(reaper)) == 1 and reaper.messages == []  # submitted; the job goes on in the deferred loop
    harness.settle()
    assert reaper.messages == [] and len(reaper.tracks[1].items) == 1  # the result landed
    assert len(waits) > 1 and set(waits) == {0.0}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"playrate": 0.5}, "plays at rate 0.5, resampled: you hear it at another pitch"),
        ({"playrate": 2.0, "preserve_pitch": True}, "plays at rate 2, time-stretched"),
        ({"channel_mode": 3}, "uses the take channel mode mono (left)"),
        ({"channel_mode": 1}, "uses the take channel mode reverse stereo"),
    ],
)
def test_an_item_that_does_not_play_its_files_own_samples_is_refused(harness, source_file, values, message):
    track = harness.reaper.add_track("Loop")
    source = Source("WAVE", str(source_file[0]), 8.0)
    harness.reaper.add_item(track, position=1.0, length=2.0, start_offset=0.5, source=source, **values)
    harness.run("imusic_add_piano.py")
    assert_unchanged(harness, message)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda item: setattr(item.take, "stretch_markers", 3), "has stretch markers"),
        (lambda item: item.take.envelopes.update(Pitch=2), "has a take pitch envelope"),
        (
            lambda item: (
                item.takes.append(fake_reaper.Take(source=item.take.source)),
                item.values.update(B_ALLTAKESPLAY=1),
            ),
            "plays all its takes at once",
        ),
    ],
)
def test_a_warped_or_comped_item_is_refused(harness, source_file, change, message):
    track = harness.reaper.add_track("Loop")
    item = harness.reaper.add_item(track, position=1.0, length=2.0, source=Source("WAVE", str(source_file[0]), 8.0))
    change(item)
    harness.run("imusic_add_piano.py")
    assert_unchanged(harness, message)


def test_an_empty_pitch_envelope_and_one_take_playing_all_takes_are_edited(harness, source_file, sent):
    track = harness.reaper.add_track("Loop")
    item = harness.reaper.add_item(track, position=1.0, length=2.0, source=Source("WAVE", str(source_file[0]), 8.0))
    item.take.envelopes["Pitch"] = 0
    item.values["B_ALLTAKESPLAY"] = 1.0
    harness.run("imusic_extract_piano.py")
    harness.settle()
    assert harness.reaper.messages == [] and len(sent) == 1


def test_a_channel_mode_on_a_mono_source_plays_the_file_and_is_edited(harness, source_file, sent, tmp_path):
    mono = tmp_path / "mono.wav"
    soundfile.write(mono, source_file[1][0], SR, subtype="FLOAT")
    track = harness.reaper.add_track("Vox")
    harness.reaper.add_item(track, position=1.0, length=2.0, channel_mode=3, source=Source("WAVE", str(mono), 8.0))
    harness.run("imusic_extract_drums.py")
    harness.settle()
    assert harness.reaper.messages == []
    (result,) = harness.reaper.tracks[1].items
    assert (result.position, result.length, result.take.values["D_PLAYRATE"]) == (1.0, 2.0, 1.0)
    assert sent[0][:3] == (str(mono), 0.0, 2.0)


def test_the_time_selection_on_selected_tracks_is_edited_when_no_item_is_selected(harness, source_file, sent):
    reaper = harness.reaper
    guitar = reaper.add_track("Guitar", selected=True)
    reaper.add_track("Other")
    source = Source("WAVE", str(source_file[0]), 8.0)
    reaper.add_item(guitar, position=10.0, length=6.0, start_offset=1.0, source=source, selected=False)
    reaper.time_selection = (11.5, 14.0)
    harness.run("imusic_extract_guitar.py")
    harness.settle()
    assert [t.name for t in reaper.tracks] == ["Guitar", "Guitar \u00b7 extract guitar", "Other"]
    (result,) = reaper.tracks[1].items
    assert (result.position, result.length) == (11.5, 2.5)
    assert soundfile.info(result.take.source.filename).frames == frames(2.5)
    assert_region_is_source(sent[0], source_file, offset=2.5, seconds=2.5)


def test_a_selected_item_is_clipped_to_the_time_selection_and_one_outside_it_stops_the_action(
    harness, source_file, sent
):
    """A producer clicks an item (selecting it), then drags a time selection over the bar to edit: only that bar
    goes; a selected item the time selection misses is refused with what to do, and nothing is sent."""
    reaper = harness.reaper
    bass = reaper.add_track("Bass")
    source = Source("WAVE", str(source_file[0]), 8.0)
    item = reaper.add_item(bass, position=10.0, length=6.0, start_offset=1.0, source=source, selected=True)
    reaper.time_selection = (12.0, 13.5)
    harness.run("imusic_remove_bass.py")
    harness.settle()
    assert reaper.messages == []
    (result,) = reaper.tracks[1].items
    assert (result.position, result.length) == (12.0, 1.5)
    assert_region_is_source(sent[0], source_file, offset=3.0, seconds=1.5)
    reaper.add_item(bass, position=30.0, length=2.0, source=source, selected=True)
    assert item.values["B_UISEL"]  # still selected: the action stops for the other one
    harness.run("imusic_remove_bass.py")
    harness.settle()
    assert len(sent) == 1
    (message,) = reaper.messages
    assert "at 0:30.000 on Bass is outside the time selection: select only items under it" in message[0]


@pytest.mark.parametrize("lanes", ["fixed lanes", "lanes no longer shown"])
def test_the_time_selection_leaves_out_muted_items_and_lanes_that_do_not_play(harness, source_file, sent, lanes):
    """REAPER 7's fixed item lanes: a lane that does not play and a muted item are left out. A track taken out of
    lanes (I_FREEMODE 0) keeps its other lanes' items, hidden and silent: REAPER says so with C_LANEPLAYS -1. Only
    the item heard is sent."""
    reaper = harness.reaper
    comp = reaper.add_track("Comp", selected=True)
    source = Source("WAVE", str(source_file[0]), 8.0)
    heard = reaper.add_item(comp, position=0.0, length=4.0, source=source, selected=False)
    silent_lane = reaper.add_item(comp, position=0.0, length=4.0, start_offset=2.0, source=source, selected=False)
    muted = reaper.add_item(comp, position=0.0, length=4.0, start_offset=3.0, source=source, selected=False)
    if lanes == "fixed lanes":
        comp.values["I_FREEMODE"] = 2
        heard.values["C_LANEPLAYS"], silent_lane.values["C_LANEPLAYS"] = 1.0, 0.0
        muted.values.update(C_LANEPLAYS=2.0, B_MUTE=1.0)
    else:  # I_FREEMODE 0: no lanes shown (any more)
        heard.values["C_LANEPLAYS"] = 0.0
        silent_lane.values["C_LANEPLAYS"] = muted.values["C_LANEPLAYS"] = -1.0
    reaper.time_selection = (1.0, 2.0)
    harness.run("imusic_extract_drums.py")
    harness.settle()
    assert reaper.messages == []
    (call,) = sent
    assert_region_is_source(call, source_file, offset=1.0, seconds=1.0)


def test_a_result_under_the_last_track_of_a_folder_stays_in_the_folder(harness, source_file):
    reaper = harness.reaper
    bus = reaper.add_track("Drum bus")
    kick = reaper.add_track("Kick")
    after = reaper.add_track("After")
    bus.values["I_FOLDERDEPTH"], kick.values["I_FOLDERDEPTH"] = 1.0, -1.0
    reaper.add_item(kick, position=0.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    harness.settle()
    assert [t.name for t in reaper.tracks] == ["Drum bus", "Kick", "Kick \u00b7 extract drums", "After"]
    depths = [t.values["I_FOLDERDEPTH"] for t in reaper.tracks]
    assert depths == [1.0, 0.0, -1.0, 0.0]
    assert after is reaper.tracks[3]


def test_a_result_of_a_folder_s_parent_track_goes_above_the_folder_not_inside_it(harness, source_file):
    """Under the parent, the result would be the folder's first child: muted with it, played through the bus and
    hidden when the folder is collapsed."""
    reaper = harness.reaper
    outer = reaper.add_track("Band")
    bus = reaper.add_track("Drum bus")
    kick = reaper.add_track("Kick")
    reaper.add_track("Vocals")
    outer.values["I_FOLDERDEPTH"], bus.values["I_FOLDERDEPTH"], kick.values["I_FOLDERDEPTH"] = 1.0, 1.0, -2.0
    bus.values["I_FOLDERCOMPACT"] = 2.0
    reaper.add_item(bus, position=0.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    harness.settle()
    names = [t.name for t in reaper.tracks]
    assert names == ["Band", "Drum bus · extract drums", "Drum bus", "Kick", "Vocals"]
    assert [t.values["I_FOLDERDEPTH"] for t in reaper.tracks] == [1.0, 0.0, 1.0, -2.0, 0.0]  # in Band, beside the bus


def test_a_result_whose_source_track_was_deleted_goes_last_even_where_a_new_track_took_its_address(
    harness, source_file
):
    reaper = harness.reaper
    bass = reaper.add_track("Bass")
    reaper.add_track("Keys")
    reaper.add_item(bass, position=1.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    reaper.tracks[0] = Track(name="Strings", ptr=bass.ptr)  # Bass deleted; a new track gets its address
    harness.settle()
    assert [t.name for t in reaper.tracks] == ["Strings", "Keys", "Bass · extract drums"]


def test_the_result_plays_at_its_source_item_s_gain_polarity_and_timebase(harness, source_file):
    """Swapping the source for its result keeps the level a producer heard (item gain, take volume and its polarity),
    and a later tempo change moves both alike (item and track timebase)."""
    reaper = harness.reaper
    bass = reaper.add_track("Bass")
    bass.values["C_BEATATTACHMODE"] = 0.0  # time
    item = reaper.add_item(bass, position=1.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    item.values.update(D_VOL=0.25, C_BEATATTACHMODE=2.0)  # -12 dB; beats (position only)
    item.take.values["D_VOL"] = -0.5  # -6 dB, polarity flipped
    harness.run("imusic_extract_drums.py")
    harness.settle()
    assert reaper.messages == []
    new_track = reaper.tracks[1]
    (result,) = new_track.items
    assert result.values["D_VOL"] == 0.25 and result.values["C_BEATATTACHMODE"] == 2.0
    assert result.take.values["D_VOL"] == -0.5 and new_track.values["C_BEATATTACHMODE"] == 0.0


def test_the_prompted_action_sends_what_the_user_typed(harness, source_file, sent):
    reaper = harness.reaper
    track = reaper.add_track("")
    reaper.add_item(track, position=0.0, length=2.0, source=Source("WAVE", str(source_file[0]), 8.0))
    reaper.user_inputs.append((True, "  remove   bass "))
    harness.run("imusic_edit.py")
    harness.settle()
    assert [t.name for t in reaper.tracks] == ["", "Track 1 \u00b7 remove bass"]
    assert sent[0][3] == "remove bass"
    assert reaper.undo_points == ["Instruct: remove bass"]


def test_the_prompted_action_sends_the_mode_the_user_chose(harness, source_file, monkeypatch):
    requests = []
    real_send_edit = Client.send_edit
    monkeypatch.setattr(
        Client, "send_edit", lambda self, request: requests.append(request) or real_send_edit(self, request)
    )
    track = harness.reaper.add_track("Mix")
    harness.reaper.add_item(track, position=0.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.reaper.user_inputs.append((True, "extract drums|resynth"))
    harness.run("imusic_edit.py")
    harness.reaper.user_inputs.append((True, "remove bass"))
    harness.run("imusic_edit.py")
    harness.run("imusic_add_piano.py")
    harness.reaper.user_inputs.append((True, "put some guitar in|"))
    harness.run("imusic_edit.py")
    harness.reaper.user_inputs.append((True, "add drums|mask"))  # asked for: the recording with the drums on it
    harness.run("imusic_edit.py")
    # an add's result is a track beside the recording: the new part alone (layer), unless a mode is asked for
    assert [(r.instruction, r.mode) for r in requests] == [
        ("extract drums", "resynth"),
        ("remove bass", "beside"),  # the engine makes it the default, and an add's part alone (engine.modes)
        ("add piano", "beside"),
        ("put some guitar in", "beside"),
        ("add drums", "mask"),
    ]
    # as REAPER labels the two fields (it splits the captions on every comma); the mode field starts empty
    (instruction_label, mode_label) = harness.reaper.input_captions
    assert instruction_label.startswith("Instruction (e.g. extract drums") and "remove bass" in instruction_label
    assert mode_label.startswith("Mode (empty keeps your recording: an add gives the new part alone")


def test_cancelling_the_prompt_does_nothing(harness, source_file):
    reaper = harness.reaper
    track = reaper.add_track("Mix")
    reaper.add_item(track, position=0.0, length=2.0, source=Source("WAVE", str(source_file[0]), 8.0))
    reaper.user_inputs.append((False, ""))
    harness.run("imusic_edit.py")
    assert (reaper.messages, reaper.changes, _loop(reaper), reaper.undo_points) == ([], [], [], [])


def test_items_on_two_tracks_get_one_track_each_in_one_undo_point(harness, source_file):
    reaper = harness.reaper
    drums, bass = reaper.add_track("Drums"), reaper.add_track("Bass")
    source = Source("WAVE", str(source_file[0]), 8.0)
    reaper.add_item(drums, position=0.0, length=1.5, source=source)
    reaper.add_item(bass, position=3.0, length=1.0, start_offset=2.0, source=source)
    reaper.add_item(bass, position=5.0, length=1.0, start_offset=4.0, source=source)
    harness.run("imusic_remove_drums.py")
    harness.settle()
    names = [t.name for t in reaper.tracks]
    assert names == ["Drums", "Drums \u00b7 remove drums", "Bass", "Bass \u00b7 remove drums"]
    assert [(i.position, i.length) for i in reaper.tracks[3].items] == [(3.0, 1.0), (5.0, 1.0)]
    assert reaper.undo_points == ["Instruct: remove drums"]
    assert len(harness.results()) == 3


# ------------------------------------------------------------------------------------------------ engine answers


def test_an_instruction_the_engine_refuses_shows_the_engines_words_and_changes_nothing(harness, source_file):
    reaper = harness.reaper
    track = reaper.add_track("Mix")
    reaper.add_item(track, position=0.0, length=2.0, source=Source("WAVE", str(source_file[0]), 8.0))
    reaper.user_inputs.append((True, "make it sound like a kazoo"))
    harness.run("imusic_edit.py")
    harness.settle()
    assert len(reaper.messages) == 1
    text = reaper.messages[0][0]
    assert text.startswith("Instruct: make it sound like a kazoo failed for")
    assert "drums" in text.lower()  # the engine lists what it supports
    assert reaper.changes == [] and reaper.undo_points == []


def test_cancel_stops_running_edits_and_inserts_nothing(harness, source_file):
    reaper = harness.reaper
    track = reaper.add_track("Mix")
    reaper.add_item(track, position=0.0, length=6.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_bass.py")
    harness.run("imusic_cancel.py")
    harness.settle()
    assert reaper.changes == [] and reaper.undo_points == [] and reaper.messages == []


def test_cancel_with_nothing_running_says_so(harness):
    harness.run("imusic_cancel.py")
    assert harness.reaper.messages[0][0] == "No imusic edits are running."


def test_engine_status_shows_the_model_device_and_state(harness):
    harness.run("imusic_status.py")
    harness.settle()
    (message,) = [m for m, _, _ in harness.reaper.messages]
    assert ": ready" in message
    assert "tiny-random on cpu" in message


def test_engine_status_carries_the_models_own_note_on_what_it_cannot_do_yet(
    harness, judged_model_dir, monkeypatch, tmp_path
):
    from test_bridge_support import start_server

    from engine.editor import Editor

    server = start_server(tmp_path / "judged", tmp_path, editor=Editor.load(judged_model_dir, device="cpu"))
    try:
        monkeypatch.setenv("IMUSIC_PORT", str(server.port))
        harness.run("imusic_status.py")
        harness.settle()
    finally:
        server.stop()
    (message,) = [m for m, _, _ in harness.reaper.messages]
    notes = [line for line in message.splitlines() if line.startswith("Note: ")]
    assert len(notes) == 1 and "extract edits do not clearly beat leaving the audio unchanged" in notes[0]


def test_without_a_running_engine_the_actions_say_how_to_start_it(harness, source_file, monkeypatch):
    monkeypatch.setenv("IMUSIC_PORT", str(free_udp_port()))
    monkeypatch.syspath_prepend(str(harness.resource / "Scripts" / "imusic"))
    import imusic_lib

    imusic_lib.ACCEPT_TIMEOUT_S = 0.5  # the real wait is 3 s; the behaviour is the same
    reaper = harness.reaper
    track = reaper.add_track("Mix")
    reaper.add_item(track, position=0.0, length=2.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    harness.settle(timeout=15)
    harness.run("imusic_status.py")
    harness.settle(timeout=15)
    messages = [m for m, _, _ in reaper.messages]
    assert messages == [tracking.not_answering(*imusic_lib.engine_address())] * 2  # the words of every front end
    assert reaper.changes == []


def test_an_engine_too_slow_to_answer_is_sent_a_cancel_for_the_jobs_the_action_gives_up_on(
    harness, source_file, monkeypatch
):
    """An engine that hears but does not answer in time (a media drive spinning up): the action said "no engine" and
    dropped its jobs, which the engine then ran to results nobody inserted. It cancels them as it gives up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as deaf:
        deaf.bind(("127.0.0.1", 0))
        deaf.settimeout(0.1)
        monkeypatch.setenv("IMUSIC_PORT", str(deaf.getsockname()[1]))
        monkeypatch.syspath_prepend(str(harness.resource / "Scripts" / "imusic"))
        import imusic_lib

        imusic_lib.ACCEPT_TIMEOUT_S = 0.5
        track = harness.reaper.add_track("Mix")
        harness.reaper.add_item(track, position=0.0, length=2.0, source=Source("WAVE", str(source_file[0]), 8.0))
        harness.run("imusic_extract_drums.py")
        harness.settle(timeout=15)
        heard = []
        with contextlib.suppress(TimeoutError):
            while True:
                heard.extend(protocol.decode(deaf.recv(protocol.MAX_PACKET)))
    edits = {args[0] for address, args in heard if address == protocol.EDIT}
    cancels = {args[0] for address, args in heard if address == protocol.CANCEL}
    assert len(edits) == 1 and cancels == edits
    assert [m for m, _, _ in harness.reaper.messages] == [tracking.not_answering(*imusic_lib.engine_address())]


def test_an_edit_the_client_refuses_is_said_so_not_blamed_on_the_connection(harness, source_file, sent):
    track = harness.reaper.add_track("Mix")
    harness.reaper.add_item(track, position=0.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.reaper.user_inputs.append((True, "extract drums|resynthesize-please"))  # longer than any mode's name
    harness.run("imusic_edit.py")
    harness.settle()
    (message,) = [m for m, _, _ in harness.reaper.messages]
    assert message.startswith("Instruct: extract drums: ") and "mode" in message and "Cannot send" not in message
    assert sent == [] and harness.reaper.changes == []


# ------------------------------------------------------------------------------------------------ bad input


def test_no_selection_says_what_to_select(harness):
    harness.reaper.add_track("Mix")
    harness.run("imusic_extract_drums.py")
    assert_unchanged(harness, "Nothing selected")
    assert _loop(harness.reaper) == []


def test_a_midi_item_is_refused(harness):
    track = harness.reaper.add_track("Synth")
    harness.reaper.add_item(track, position=0.0, length=2.0, source=Source("MIDI"), take_name="chords")
    harness.run("imusic_extract_piano.py")
    assert_unchanged(harness, '"chords" at 0:00.000 on Synth is MIDI')


def test_a_message_names_an_items_place_as_the_ruler_shows_it(harness):
    harness.reaper.start_offset = 60.0  # a project that starts at 1:00 on its ruler
    track = harness.reaper.add_track("Synth")
    harness.reaper.add_item(track, position=2.5, length=2.0, source=Source("MIDI"), take_name="chords")
    harness.run("imusic_extract_piano.py")
    assert_unchanged(harness, '"chords" at 1:02.500 on Synth is MIDI')


def test_an_empty_item_is_refused(harness):
    track = harness.reaper.add_track("Mix")
    harness.reaper.add_item(track, position=0.0, length=2.0, source=None)
    harness.run("imusic_extract_drums.py")
    assert_unchanged(harness, "no take to edit")


def test_a_missing_source_file_is_refused(harness, tmp_path):
    track = harness.reaper.add_track("Mix")
    gone = str(tmp_path / "gone.wav")
    harness.reaper.add_item(track, position=0.0, length=2.0, source=Source("WAVE", gone, 8.0))
    harness.run("imusic_extract_drums.py")
    assert_unchanged(harness, f"offline or missing: {gone}")


def test_a_reversed_take_is_refused(harness, source_file):
    track = harness.reaper.add_track("Mix")
    item = harness.reaper.add_item(track, position=0.0, length=2.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.reaper.reverse(item)
    harness.run("imusic_extract_drums.py")
    assert_unchanged(harness, "is reversed")


def test_a_pitch_shifted_item_is_refused(harness, source_file):
    track = harness.reaper.add_track("Mix")
    source = Source("WAVE", str(source_file[0]), 8.0)
    harness.reaper.add_item(track, position=0.0, length=2.0, pitch=-12.0, source=source)
    harness.run("imusic_extract_drums.py")
    assert_unchanged(harness, "pitch-shifted")


def test_an_item_longer_than_the_engine_allows_is_refused(harness, source_file, monkeypatch):
    monkeypatch.setenv("IMUSIC_MAX_SECONDS", "5")
    track = harness.reaper.add_track("Mix")
    harness.reaper.add_item(track, position=0.0, length=6.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    assert_unchanged(harness, "these actions edit at most 5 s")


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "3601"])
def test_a_longest_region_setting_the_engine_would_refuse_is_a_message(harness, source_file, monkeypatch, value):
    monkeypatch.setenv("IMUSIC_MAX_SECONDS", value)
    track = harness.reaper.add_track("Mix")
    harness.reaper.add_item(track, position=0.0, length=2.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    assert_unchanged(harness, f"must be a number of seconds from 0 to 3600 (the engine's limit), got '{value}'")


def test_a_media_folder_that_cannot_hold_the_results_is_named_not_blamed_on_the_engine(harness, source_file, sent):
    blocker = Path(harness.reaper.media_dir)
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the media folder should be")  # so its imusic/ folder cannot be made
    track = harness.reaper.add_track("Mix")
    harness.reaper.add_item(track, position=0.0, length=2.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    assert_unchanged(harness, f"Cannot make the folder for the results, {blocker / 'imusic'}")
    assert sent == []


def test_one_bad_item_in_a_selection_sends_nothing(harness, source_file, sent):
    reaper = harness.reaper
    track = reaper.add_track("Mix")
    reaper.add_item(track, position=0.0, length=2.0, source=Source("WAVE", str(source_file[0]), 8.0))
    reaper.add_item(track, position=3.0, length=2.0, source=Source("MIDI"))
    harness.run("imusic_extract_drums.py")
    assert_unchanged(harness, "Nothing was changed.")
    assert sent == []


def test_a_deferred_loop_that_reaper_terminated_is_started_again_by_the_next_action(harness, source_file):
    reaper = harness.reaper
    drums, bass = reaper.add_track("Drums"), reaper.add_track("Bass")
    source = Source("WAVE", str(source_file[0]), 8.0)
    first = reaper.add_item(drums, position=0.0, length=1.0, source=source)
    harness.run("imusic_extract_drums.py")
    reaper.deferred.clear()  # REAPER terminated the script instance: its deferred code never runs
    first.values["B_UISEL"] = 0.0
    reaper.add_item(bass, position=2.0, length=1.0, source=source)
    harness.run("imusic_extract_bass.py")
    harness.settle()
    assert [t.name for t in reaper.tracks] == [
        "Drums",
        "Drums \u00b7 extract drums",
        "Bass",
        "Bass \u00b7 extract bass",
    ]
    assert reaper.undo_points == ["Instruct: extract drums", "Instruct: extract bass"]


def test_the_same_action_run_again_while_it_waits_edits_both_without_reapers_already_running_dialog(
    harness, source_file
):
    reaper = harness.reaper
    drums = reaper.add_track("Drums")
    source = Source("WAVE", str(source_file[0]), 8.0)
    first = reaper.add_item(drums, position=0.0, length=1.0, source=source)
    harness.run("imusic_extract_drums.py")
    reaper.run_deferred()
    first.values["B_UISEL"] = 0.0
    reaper.add_item(drums, position=3.0, length=1.0, source=source)
    harness.run("imusic_extract_drums.py")  # REAPER ends the waiting instance (and its loop), then runs this one
    harness.settle()
    assert reaper.instance_prompts == []
    assert [t.name for t in reaper.tracks] == ["Drums", "Drums \u00b7 extract drums", "Drums \u00b7 extract drums"]
    assert sorted(item.position for track in reaper.tracks[1:] for item in track.items) == [0.0, 3.0]


def test_the_prompted_action_run_again_and_cancelled_keeps_the_waiting_edits_alive(harness, source_file):
    reaper = harness.reaper
    mix = reaper.add_track("Mix")
    reaper.add_item(mix, position=0.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    reaper.user_inputs.append((True, "extract drums"))
    harness.run("imusic_edit.py")
    reaper.user_inputs.append((False, ""))
    harness.run("imusic_edit.py")  # REAPER ends the waiting instance and its loop; the user cancels the new dialog
    harness.settle()
    assert reaper.instance_prompts == []
    assert [t.name for t in reaper.tracks] == ["Mix", "Mix \u00b7 extract drums"]


def test_a_rerun_that_sends_nothing_keeps_the_waiting_edits_alive(harness, source_file):
    reaper = harness.reaper
    drums = reaper.add_track("Drums")
    first = reaper.add_item(drums, position=0.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    first.values["B_UISEL"] = 0.0
    harness.run("imusic_extract_drums.py")  # nothing selected: a message, and the first edit goes on
    harness.settle()
    assert [t.name for t in reaper.tracks] == ["Drums", "Drums \u00b7 extract drums"]
    assert len(reaper.messages) == 1 and reaper.instance_prompts == []


def test_results_whose_source_track_was_deleted_meanwhile_go_last(harness, source_file):
    reaper = harness.reaper
    doomed = reaper.add_track("Doomed")
    reaper.add_track("Keeps")
    reaper.add_item(doomed, position=1.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    reaper.tracks.remove(doomed)  # the user deletes the track while the engine works
    harness.settle()
    assert [t.name for t in reaper.tracks] == ["Keeps", "Doomed \u00b7 extract drums"]
    assert [(i.position, i.length) for i in reaper.tracks[1].items] == [(1.0, 1.0)]


def _tick_until_the_result_is_written(harness) -> None:
    deadline = time.monotonic() + 60
    while not harness.results() or any(session.pending for session in harness.library._SESSIONS):
        assert time.monotonic() < deadline, "the edit never ended"
        harness.reaper.run_deferred()
        time.sleep(0.02)


def _done_while_another_tab_is_active(harness, source_file) -> str:
    """An extract of an item on "Bass", the user in another song's tab while the engine works, until its result is
    written; returns the action's own project (tab)."""
    reaper = harness.reaper
    bass = reaper.add_track("Bass")
    reaper.add_item(bass, position=1.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    home, other = reaper.project, fake_reaper._pointer("ReaProject")
    reaper.open_projects.append(other)
    reaper.project = other
    _tick_until_the_result_is_written(harness)
    return home


@pytest.mark.parametrize("unsaved", [False, True])
def test_results_wait_for_their_project_tab_when_the_user_switched_to_another(harness, source_file, unsaved):
    """An unsaved song is known by its tracks, which cannot be read while their tab is in the background: its results
    were dropped as those of a closed project."""
    reaper = harness.reaper
    if unsaved:
        reaper.project_path = ""
    home = _done_while_another_tab_is_active(harness, source_file)
    for _ in range(5):
        reaper.run_deferred()
    assert reaper.changes == [] and reaper.undo_points == [] and _loop(reaper)
    reaper.project = home
    harness.settle()
    assert [t.name for t in reaper.tracks] == ["Bass", "Bass \u00b7 extract drums"]
    assert reaper.messages == []


def test_results_waiting_for_their_tab_show_in_the_status_and_the_cancel_action_drops_them(harness, source_file):
    reaper = harness.reaper
    home = _done_while_another_tab_is_active(harness, source_file)
    harness.run("imusic_status.py")
    deadline = time.monotonic() + 30
    while not reaper.messages and time.monotonic() < deadline:
        reaper.run_deferred()
        time.sleep(0.02)
    ((status, _, _),) = reaper.messages
    assert "(done; waiting for its song's tab)" in status and "No edits" not in status
    harness.run("imusic_cancel.py")
    reaper.project = home
    harness.settle()
    assert [t.name for t in reaper.tracks] == ["Bass"] and reaper.undo_points == []
    assert len(reaper.messages) == 1 and len(harness.results()) == 1  # the file stays in the media folder


def test_results_whose_project_was_closed_are_named_not_put_in_another_project(harness, source_file):
    reaper = harness.reaper
    bass = reaper.add_track("Bass")
    reaper.add_item(bass, position=1.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    other = fake_reaper._pointer("ReaProject")
    reaper.open_projects, reaper.project = [other], other  # the user closes the song
    harness.settle()
    assert reaper.changes == [] and reaper.undo_points == []
    ((message, _, _),) = reaper.messages
    assert "the project it came from was closed" in message
    (result,) = harness.results()
    assert str(result) in message


@pytest.mark.parametrize(("unsaved", "then"), [(False, "opened"), (True, "opened"), (False, "new"), (True, "new")])
def test_results_never_go_into_another_song_opened_in_their_projects_tab(harness, source_file, unsaved, then):
    """A tab keeps its project when another song is opened in it (or File > Close project empties it): its pointer is
    no proof the song is still there, and neither is a track pointer (the new song's track may get the freed one's
    address: tracks are known by their GUIDs)."""
    reaper = harness.reaper
    if unsaved:
        reaper.project_path = ""
    bass = reaper.add_track("Bass")
    reaper.add_item(bass, position=1.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    # File > Open project, same tab; or File > New / Close project (an unsaved song, as an unsaved source's "")
    reaper.project_path = str(source_file[0].parent / "other" / "other.rpp") if then == "opened" else ""
    reaper.tracks = [Track(name="Vocals", ptr=bass.ptr)]  # the allocator hands the freed address out again
    harness.settle()
    assert [t.name for t in reaper.tracks] == ["Vocals"] and reaper.undo_points == []
    ((message, _, _),) = reaper.messages
    assert "another one opened in its tab" in message and str(harness.results()[0]) in message


def test_results_still_land_in_a_song_saved_under_a_name_while_the_edit_ran(harness, source_file):
    reaper = harness.reaper
    reaper.project_path = ""
    bass = reaper.add_track("Bass")
    reaper.add_item(bass, position=1.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    reaper.project_path = str(source_file[0].parent / "song.rpp")  # File > Save as, meanwhile
    harness.settle()
    assert [t.name for t in reaper.tracks] == ["Bass", "Bass \u00b7 extract drums"] and reaper.messages == []


def test_an_unsaved_project_with_a_relative_media_folder_keeps_its_results_in_the_home_folder_not_temp(
    harness, source_file, tmp_path, monkeypatch
):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    harness.reaper.project_path = ""
    assert _result_folder(harness, source_file, "Audio") == home / "Documents" / "REAPER Media" / "Audio" / "imusic"


def test_a_relative_media_folder_is_taken_from_the_project_folder(harness, source_file, tmp_path):
    assert _result_folder(harness, source_file, "Media") == tmp_path / "project" / "Media" / "imusic"


def _result_folder(harness, source_file, media_dir: str) -> Path:
    """Where an extract's result lands when REAPER reports `media_dir` as the project's recording path."""
    reaper = harness.reaper
    reaper.media_dir = media_dir
    track = reaper.add_track("Mix")
    reaper.add_item(track, position=0.0, length=1.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    harness.settle()
    (result,) = reaper.tracks[1].items
    return Path(result.take.source.filename).parent


# ------------------------------------------------------------------------------------------------ a saved project

PROJECT = """<REAPER_PROJECT 0.1 "7.27/linux-x86_64" 1732500000
  <NOTES 0 2
  >
  RIPPLE 0
  GROUPOVERRIDE 0 0 0
  AUTOXFADE 129
  ENVATTACH 3
  TEMPO 120 4 4
  PLAYRATE 1 0 0.25 4
  SELECTION 0 0
  SELECTION2 0 0
  MASTERAUTOMODE 0
  MASTER_VOLUME 1 0 -1 -1 1
  <TRACK {6A1F1D2E-1111-4C4B-9E1A-0A0B0C0D0E01}
    NAME Drums
    PEAKCOL 16576
    VOLPAN 1 0 -1 -1 1
    SEL {drums_sel}
    <FXCHAIN
      SHOW 0
      DOCKED 0
    >
    <ITEM
      POSITION 2
      SNAPOFFS 0
      LENGTH 2.5
      LOOP 1
      ALLTAKES 0
      FADEIN 1 0.01 0 1 0 0 0
      FADEOUT 1 0.01 0 1 0 0 0
      MUTE 0 0
      SEL {drums_sel}
      IGUID {1C0D2E3F-2222-4A5B-8C9D-0E1F2A3B4C01}
      IID 1
      NAME band.wav
      VOLPAN 1 0 1 -1
      SOFFS 1.25
      PLAYRATE 1 1 0 -1 0 0.0025
      CHANMODE 0
      GUID {2D1E3F40-3333-4B6C-9DAE-1F2A3B4C5D01}
      <SOURCE WAVE
        FILE "Audio/band.wav"
      >
    >
  >
  <TRACK {6A1F1D2E-1111-4C4B-9E1A-0A0B0C0D0E02}
    NAME Bass
    SEL {bass_sel}
    <ITEM
      POSITION 6
      LENGTH 4
      LOOP 0
      SEL {bass_sel}
      NAME "band.wav slow"
      SOFFS 0.5
      PLAYRATE 0.5 0 0 -1 0 0.0025
      <SOURCE WAVE
        FILE "Audio/band.wav"
      >
    >
  >
  <TRACK {6A1F1D2E-1111-4C4B-9E1A-0A0B0C0D0E03}
    NAME Keys
    SEL 0
    <ITEM
      POSITION 0
      LENGTH 2
      SEL {keys_sel}
      NAME "band.wav reversed"
      SOFFS 0
      PLAYRATE 1 1 0 -1 0 0.0025
      <SOURCE SECTION
        LENGTH 8
        MODE 2
        STARTPOS 0
        OVERLAP 0.01
        <SOURCE WAVE
          FILE "Audio/band.wav"
        >
      >
    >
    <ITEM
      POSITION 12
      LENGTH 2
      SEL {left_sel}
      NAME "band.wav left"
      PLAYRATE 1 1 0 -1 0 0.0025
      CHANMODE 3
      <SOURCE WAVE
        FILE "Audio/band.wav"
      >
    >
    <ITEM
      POSITION 4
      LENGTH 2
      SEL {vox_sel}
      NAME "band.wav up an octave"
      PLAYRATE 1 1 12 -1 0 0.0025
      <SOURCE WAVE
        FILE "Audio/band.wav"
      >
    >
  >
  <TRACK {6A1F1D2E-1111-4C4B-9E1A-0A0B0C0D0E04}
    NAME Synth
    <ITEM
      POSITION 0
      LENGTH 4
      SEL {midi_sel}
      NAME chords
      <SOURCE MIDI
        HASDATA 1 960 QN
        E 0 90 3c 60
        E 960 80 3c 00
        E 0 b0 7b 00
      >
    >
    <ITEM
      POSITION 8
      LENGTH 2
      SEL {win_sel}
      NAME imported
      <SOURCE WAVE
        FILE "C:\\Users\\me\\Music\\stems\\bass.wav"
      >
    >
  >
>
"""


def write_project(tmp_path: Path, source_file, **selected: int) -> Path:
    """The sample project with the named items selected (drums, bass, keys, left, vox, midi, win), audio beside it."""
    folder = tmp_path / "project"
    (folder / "Audio").mkdir(parents=True, exist_ok=True)
    (folder / "Audio" / "band.wav").write_bytes(source_file[0].read_bytes())
    text = PROJECT
    for name in ("drums", "bass", "keys", "left", "vox", "midi", "win"):
        text = text.replace("{" + name + "_sel}", str(selected.get(name, 0)))
    path = folder / "song.rpp"
    path.write_text(text)
    return path


def test_a_saved_project_with_relative_paths_is_edited_as_heard(harness, source_file, sent, tmp_path):
    reaper = harness.load_project(str(write_project(tmp_path, source_file, drums=1)))
    harness.run("imusic_remove_drums.py")
    harness.settle()
    assert reaper.messages == []
    names = [t.name for t in reaper.tracks]
    assert names == ["Drums", "Drums \u00b7 remove drums", "Bass", "Keys", "Synth"]
    drums_result = reaper.tracks[1].items[0]
    assert (drums_result.position, drums_result.length) == (2.0, 2.5)
    copied = (tmp_path / "project" / "Audio" / "band.wav", source_file[1])
    assert_region_is_source(sent[0], copied, offset=1.25, seconds=2.5)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("keys", '"band.wav reversed" at 0:00.000 on Keys is reversed'),
        ("bass", '"band.wav slow" at 0:06.000 on Bass plays at rate 0.5, resampled'),
        ("left", '"band.wav left" at 0:12.000 on Keys uses the take channel mode mono (left)'),
        ("vox", "pitch-shifted (+12 semitones)"),
        ("midi", '"chords" at 0:00.000 on Synth is MIDI'),
        ("win", "offline or missing: C:\\Users\\me\\Music\\stems\\bass.wav"),
    ],
)
def test_items_of_a_saved_project_that_cannot_be_edited_as_heard_are_refused(
    harness, source_file, tmp_path, item, message
):
    harness.load_project(str(write_project(tmp_path, source_file, **{item: 1})))
    harness.run("imusic_extract_bass.py")
    assert_unchanged(harness, message)


def test_scripts_installed_from_another_version_of_the_project_ask_to_be_installed_again(harness, source_file, sent):
    """The installer copies the library into REAPER's Scripts folder; the packages it imports are the project's own.
    After a `pip install -U` the two no longer fit: the actions say so instead of failing in some other way."""
    library = harness.resource / "Scripts" / "imusic" / "imusic_lib.py"
    library.write_bytes(library.read_bytes() + b"\n# as an earlier version of the project had it\n")
    reaper = harness.reaper
    track = reaper.add_track("Mix")
    reaper.add_item(track, position=0.0, length=2.0, source=Source("WAVE", str(source_file[0]), 8.0))
    harness.run("imusic_extract_drums.py")
    harness.settle()
    harness.run("imusic_status.py")
    harness.settle()
    messages = [m for m, _, _ in reaper.messages]
    assert len(messages) == 2 and all("Run `imusic reaper install` again" in m for m in messages)
    assert sent == [] and reaper.changes == []
