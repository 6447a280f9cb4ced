"""The REAPER actions' decisions, without REAPER: which file region is sent, where the result goes, its name."""

from __future__ import annotations

import pytest

from bridge import protocol
from bridge.protocol import Reply
from engine.errors import AudioError, InstructionError
from reaper_scripts import planning
from reaper_scripts.planning import ItemView, plan_job, plan_jobs


def exists(path: str) -> bool:
    return path != "/missing.wav"


def item(**overrides) -> ItemView:
    values = dict(
        position=10.0,
        length=4.0,
        track_number=2,
        track_name="Band",
        take_name="mix",
        source_type="WAVE",
        source_path="/audio/mix.wav",
        source_length=30.0,
        start_offset=3.0,
    )
    values.update(overrides)
    return ItemView(**values)


def plan(view: ItemView, **kwargs) -> planning.JobPlan:
    return plan_job(view, file_exists=exists, **kwargs)


def test_a_plain_item_sends_the_file_region_at_its_take_offset():
    job = plan(item())
    assert (job.source_path, job.start_s, job.end_s) == ("/audio/mix.wav", 3.0, 7.0)
    assert (job.position, job.length, job.track_number) == (10.0, 4.0, 2)


def test_a_resampled_item_is_refused_since_it_is_heard_at_another_pitch():
    with pytest.raises(AudioError, match="rate 0.5, resampled: you hear it at another pitch.*Glue"):
        plan(item(playrate=0.5, preserve_pitch=False))


def test_a_time_stretched_item_is_refused():
    with pytest.raises(AudioError, match="time-stretched"):
        plan(item(playrate=2.0, preserve_pitch=True))


@pytest.mark.parametrize(
    ("mode", "name"),
    [
        (1, "reverse stereo"),
        (2, r"mono \(downmix\)"),
        (3, r"mono \(left\)"),
        (4, r"mono \(right\)"),
        (7, r"mono \(channel 3\)"),
    ],
)
def test_a_take_channel_mode_on_a_multichannel_file_is_refused_naming_it(mode, name):
    with pytest.raises(AudioError, match=f"channel mode {name}"):
        plan(item(channel_mode=mode, source_channels=2))


def test_a_take_channel_mode_of_unknown_channels_is_refused():
    with pytest.raises(AudioError, match="channel mode"):
        plan(item(channel_mode=2, source_channels=0))


def test_a_take_channel_mode_on_a_mono_file_plays_the_file_and_is_sent():
    job = plan(item(channel_mode=3, source_channels=1))
    assert (job.start_s, job.end_s) == (3.0, 7.0)


def test_a_pitch_shifted_item_is_refused():
    with pytest.raises(AudioError, match=r"pitch-shifted \(\+12 semitones\)"):
        plan(item(pitch=12.0))


def test_a_reversed_take_is_refused_with_how_to_fix_it():
    with pytest.raises(AudioError, match="reversed.*Glue"):
        plan(item(source_type="SECTION", parent_type="WAVE", section_length=30.0, reversed=True))


def test_a_forward_section_adds_its_offset_in_the_parent_file():
    job = plan(item(source_type="SECTION", parent_type="WAVE", section_offset=5.0, section_length=10.0))
    assert (job.start_s, job.end_s) == (8.0, 12.0)


def test_nested_sections_add_their_offsets_and_keep_what_every_layer_holds():
    assert planning.nested_section([(5.0, 10.0, False)]) == (5.0, 10.0, False)
    # 10 s from 2 s into a section that starts 3 s into the file and lasts 8 s: only 6 s of it are there
    assert planning.nested_section([(2.0, 10.0, False), (3.0, 8.0, False)]) == (5.0, 6.0, False)
    assert planning.nested_section([(2.0, 4.0, False), (3.0, 8.0, False)]) == (5.0, 4.0, False)
    assert planning.nested_section([(1.0, None, False), (2.0, None, True)]) == (3.0, None, True)
    assert planning.nested_section([(1.0, None, True), (2.0, None, True)])[2]  # forward again, but not from 3 s


def test_an_item_that_loops_its_section_is_refused():
    with pytest.raises(AudioError, match="loops its section"):
        plan(item(source_type="SECTION", parent_type="WAVE", section_offset=5.0, section_length=5.0))


def test_a_midi_item_is_refused():
    with pytest.raises(AudioError, match="MIDI"):
        plan(item(is_midi=True, source_type="MIDI"))


@pytest.mark.parametrize("kind", ["OPUS", "WAVPACK"])
def test_a_file_source_the_engine_cannot_open_is_refused_before_it_is_sent(kind):
    with pytest.raises(AudioError, match=f"is a {kind} source; only audio files"):
        plan(item(source_type=kind, source_path="/audio/mix.opus"))


def test_an_item_without_a_take_is_refused():
    with pytest.raises(AudioError, match="no take"):
        plan(item(has_take=False, source_type="EMPTY"))


def test_an_empty_take_is_refused():
    with pytest.raises(AudioError, match="empty take"):
        plan(item(source_type="EMPTY", source_path=""))


def test_a_video_source_is_refused_naming_its_type():
    with pytest.raises(AudioError, match="VIDEO source"):
        plan(item(source_type="VIDEO"))


def test_a_missing_or_offline_file_is_refused_with_its_path():
    with pytest.raises(AudioError, match="offline or missing: /missing.wav"):
        plan(item(source_path="/missing.wav"))


def test_an_item_running_past_the_end_of_its_file_is_refused():
    with pytest.raises(AudioError, match="runs past its source"):
        plan(item(start_offset=28.0))


def test_an_item_starting_before_its_file_is_refused():
    with pytest.raises(AudioError, match="runs past its source"):
        plan(item(start_offset=-1.0))


def test_an_item_longer_than_the_engine_allows_is_refused_with_the_limit():
    with pytest.raises(AudioError, match="at most 3 s"):
        plan(item(), max_seconds=3.0)


def test_the_time_selection_clips_the_region_from_the_take_offset():
    job = plan(item(length=8.0, source_length=100.0), clip=(11.0, 14.0))
    assert (job.position, job.length) == (11.0, 3.0)
    # 1 s into the item is 1 s into the take: the file region is [3 + 1, 3 + 1 + 3]
    assert (job.start_s, job.end_s) == (4.0, 7.0)


def test_an_item_outside_the_time_selection_is_refused():
    with pytest.raises(AudioError, match="outside the time selection"):
        plan(item(), clip=(0.0, 5.0))


def test_nothing_selected_says_what_to_select():
    with pytest.raises(AudioError, match="Nothing selected"):
        plan_jobs([], file_exists=exists)


def test_one_bad_item_among_several_plans_nothing_and_names_it():
    views = [item(), item(take_name="vox", is_midi=True, source_type="MIDI"), item(take_name="keys")]
    with pytest.raises(AudioError) as exc:
        plan_jobs(views, file_exists=exists)
    message = str(exc.value)
    assert '"vox" at 0:10.000 on Band is MIDI' in message
    assert "keys" not in message
    assert "Nothing was changed." in message


def test_every_good_item_is_planned_in_order():
    plans = plan_jobs([item(), item(position=20.0, start_offset=0.0)], file_exists=exists)
    assert [(p.position, p.start_s) for p in plans] == [(10.0, 3.0), (20.0, 0.0)]


def test_the_result_track_is_named_after_the_source_track_and_the_edit():
    assert planning.result_track_name("Bass", 3, "extract  drums ") == "Bass \u00b7 extract drums"


def test_an_unnamed_source_track_is_called_by_its_number():
    assert planning.result_track_name("", 3, "remove bass") == "Track 3 \u00b7 remove bass"


def test_a_long_instruction_is_shortened_in_names():
    name = planning.result_track_name("Mix", 1, "add " + "very " * 30 + "loud drums")
    assert len(name) <= len("Mix \u00b7 ") + planning.MAX_LABEL_CHARS
    assert name.endswith("\u2026")


def test_the_result_goes_directly_under_the_source_track():
    # IP_TRACKNUMBER is 1-based; InsertTrackAtIndex is 0-based: track 2's next slot is index 2
    assert planning.result_insert_index(2, 5) == 2


def test_a_result_whose_source_track_was_deleted_goes_last():
    assert planning.result_insert_index(None, 5) == 5


def test_results_are_written_in_the_project_media_folder_one_file_per_job():
    first = planning.output_path("/proj/Media", "C:\\songs\\My Mix.wav", "extract drums", "rpr-1")
    second = planning.output_path("/proj/Media", "C:\\songs\\My Mix.wav", "extract drums", "rpr-2")
    assert first == "/proj/Media/imusic/My Mix.extract_drums.rpr-1.wav"  # named as every front end names results
    assert first != second


def test_an_empty_instruction_is_refused_with_what_to_say_in_the_engines_words():
    with pytest.raises(InstructionError, match=r"^the instruction is empty: say add X .* extract X / X only") as empty:
        planning.normalize_instruction("   ")
    assert "drums, bass, piano, guitar" in str(empty.value)
    assert planning.normalize_instruction("  extract \t drums ") == "extract drums"


def test_relative_source_names_are_resolved_against_the_project_folder():
    assert planning.resolve_source_path("Audio/kick.wav", "/proj") == "/proj/Audio/kick.wav"
    assert planning.resolve_source_path("/abs/kick.wav", "/proj") == "/abs/kick.wav"
    assert planning.resolve_source_path("D:\\Audio\\kick.wav", "/proj") == "D:\\Audio\\kick.wav"


def pong(notes: tuple[str, ...] = (), model: str = "tiny") -> Reply:
    return Reply(protocol.PONG, list(protocol.pong_args("0.1.0", model, "cpu" if model else "", "ready", notes)))


def test_the_status_message_names_the_model_device_and_running_edits():
    text = planning.status_text(
        pong(),
        Reply(protocol.SERVER_STATUS, list(protocol.server_status_args("ready", 2, "rpr-1", "0.1.0", "tiny"))),
        [('"mix" at 0:10.000 on Band', "extract drums", planning.job_progress(True, 0.25, "generate"))],
        "127.0.0.1",
        9137,
    )
    assert "Engine at 127.0.0.1:9137: ready" in text
    assert "tiny on cpu" in text
    assert "queued on the engine: 2" in text
    assert 'extract drums: "mix" at 0:10.000 on Band (25%)' in text
    assert "Note" not in text


def test_a_running_edit_shows_its_progress_once_accepted_and_else_what_it_waits_for():
    assert planning.job_progress(True, 0.25, "generate") == "25%"
    assert planning.job_progress(False, 0.0, protocol.CHECKING) == "checking the input"
    assert planning.job_progress(False, 0.0, "") == "waiting for the engine"


def test_the_status_message_carries_the_engines_notes_on_its_model_one_a_line():
    notes = ["tiny's own evaluation: its extract edits do not clearly beat ...", "its remove edits ..."]
    text = planning.status_text(pong(notes), None, [], "h", 1)
    assert [line for line in text.splitlines() if line.startswith("Note: ")] == [f"Note: {n}" for n in notes]
    assert "queued" not in text  # no server_status came


def test_the_status_message_marks_what_a_loading_engine_cannot_say_yet():
    assert "Model: ? on ? (imusic 0.1.0)" in planning.status_text(pong(model=""), None, [], "h", 1)


def test_one_preset_action_per_operation_and_stem():
    names = {a.script_name for a in planning.PRESET_ACTIONS}
    assert len(names) == 12
    assert "imusic_remove_bass.py" in names


def test_new_notes_are_the_ones_not_shown_yet_in_this_session():
    infos = [{"warnings": ["card says extract loses"]}, {"warnings": ["card says extract loses", "source silent"]}, {}]
    notes, shown = planning.new_notes(infos, "")
    assert notes == ["card says extract loses", "source silent"]
    again, shown_again = planning.new_notes([{"warnings": ["source silent"]}, None], shown)
    assert again == [] and shown_again == shown
    later, _ = planning.new_notes([{"warnings": ["another"]}], shown)
    assert later == ["another"]


@pytest.mark.parametrize(
    "mode, sent",
    [
        ("", "beside"),  # a new track beside the recording: the engine makes an add's part alone, the rest the default
        ("layer", "beside"),  # a layer setting means an add's layer, not a refused extract
        (" Layer ", "beside"),  # in any case and spacing, as the engine reads a mode
        ("mask", "mask"),  # asked for: an add's mix with the part on it
        ("MASK", "mask"),
        ("resynth", "resynth"),
    ],
)
def test_an_action_sends_an_adds_part_alone_unless_a_mode_is_asked_for(mode, sent):
    assert planning.action_mode(mode) == sent


@pytest.mark.parametrize(
    "instruction, op, mode",
    [
        ("add bass", "add", "layer"),
        ("put kalimba in", "add", "layer"),  # the action guessed from words without the card: no add, so the default
        ("kalimba added", "add", "layer"),
        ("extract kalimba", "extract", "mask"),
        ("remove drums", "remove", "mask"),
    ],
)
def test_the_engine_resolves_what_an_action_sends_with_its_models_card(instruction, op, mode):
    """The REAPER actions guessed the operation from the words with no model card: with a card knowing a kalimba,
    "put kalimba in" is an add, but went with the default mode (the mask mode's add: the recording with the part on
    it, on a track beside the recording, which then played twice)."""
    from engine.instructions import parse_instruction
    from engine.modes import check_mode

    parsed = parse_instruction(instruction, {"stems": ["Drums", "Bass", "Kalimba"]})
    assert (parsed.op, check_mode(parsed.op, planning.action_mode(""))) == (op, mode)


def test_an_item_that_only_touches_the_time_selection_is_not_under_it():
    """Items on a grid touch their neighbours: one ending where the selection starts was picked, refused as zero
    length, and the whole action failed (a mutation review: nothing tested the edge)."""
    from bridge.reaper_items import clip_to_range

    assert clip_to_range(0.0, 2.0, 2.0, 4.0) is None and clip_to_range(4.0, 2.0, 2.0, 4.0) is None
    assert clip_to_range(0.0, 2.0, 1.0, 4.0) == (1.0, 1.0)


def test_a_clipped_result_keeps_only_the_fades_of_the_edges_it_shares_with_the_item_no_longer_than_itself():
    from bridge.reaper_items import NO_FADE, Fade

    view = item(fade_in=Fade(3.0, 1, 0.5), fade_out=Fade(2.0, 2, -0.5))  # item at 10-14 s
    middle = plan(view, clip=(11.0, 12.0))
    assert (middle.fade_in, middle.fade_out) == (NO_FADE, NO_FADE)  # a fade-out at its end would dip where none is
    start = plan(view, clip=(9.0, 11.0))  # the item's first second: its fade-in, cut to the result's length
    assert (start.fade_in, start.fade_out) == (Fade(1.0, 1, 0.5), NO_FADE)
    end = plan(view, clip=(13.5, 20.0))
    assert (end.fade_in, end.fade_out) == (NO_FADE, Fade(0.5, 2, -0.5))


def test_a_result_items_chunk_keeps_its_position_and_length_to_the_sample():
    """Every fixture position was a round number: the chunk written with 3 decimals would put a result 0.5 ms off its
    source (phasing against it), and a length with 2 decimals 5 ms short or long (a mutation review)."""
    chunk = planning.result_item_chunk(1.23456789012, 2.00001234567, "/media/imusic/take.extract_drums.wav")
    fields = dict(line.split(" ", 1) for line in chunk.splitlines() if line.startswith(("POSITION", "LENGTH")))
    assert abs(float(fields["POSITION"]) - 1.23456789012) < 1e-12
    assert abs(float(fields["LENGTH"]) - 2.00001234567) < 1e-12
