"""(input, target, instruction) triples: official sampling rules, exact sums, re-draws, splits by song."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_bridge_support import write_folder_song

from engine.errors import ConfigError, DataError
from engine.instructions import OFFICIAL_STEMS
from engine.train.data.datasets import ClipConfig, StemDataset, parse_classes, read_window, split_songs
from engine.train.data.layouts import StemFile, scan
from engine.train.data.stems import caption_word

RATE = 16000


@pytest.fixture(scope="module")
def synth_catalog(synth_songs):
    return scan(synth_songs(3, 4.0, 11))


def _config(**overrides) -> ClipConfig:
    settings = {"sample_rate": RATE, "seconds": 1.0, "classes": "all"}
    settings.update(overrides)
    return ClipConfig(**settings)


def _file_sum(catalog, song_id: str, classes, start: int, length: int) -> np.ndarray:
    """The named classes' stems summed straight from the files (no resampling at the native rate)."""
    song = next(s for s in catalog.songs if s.song_id == song_id)
    total = np.zeros(length)
    for stem in song.stems:
        if stem.cls in classes:
            total += sf.read(str(stem.path), start=start, frames=length, dtype="float64")[0]
    return total


def _common_gain(clip_audio: np.ndarray, reference: np.ndarray) -> float:
    return float(np.dot(clip_audio, reference) / np.dot(reference, reference))


@pytest.mark.parametrize("op", ["add", "remove", "extract"])
def test_input_is_the_named_stems_summed_from_the_files(synth_catalog, op):
    data = StemDataset(synth_catalog, "all", _config(ops=(op,)), random_clips=True)
    for index in range(len(data)):
        clip = data[index]
        reference = _file_sum(synth_catalog, clip.song_id, clip.input_classes, clip.offset_samples, RATE)
        gain = _common_gain(clip.input, reference)
        assert gain > 0
        np.testing.assert_allclose(clip.input, gain * reference, atol=1e-5)


def test_add_target_is_input_plus_stem(synth_catalog):
    data = StemDataset(synth_catalog, "all", _config(ops=("add",)), random_clips=True)
    for index in range(len(data)):
        clip = data[index]
        assert clip.stem_name not in clip.input_classes
        assert clip.target_classes == (*clip.input_classes, clip.stem_name)
        np.testing.assert_allclose(clip.target, clip.input + clip.stem, atol=1e-6)
        stem_ref = _file_sum(synth_catalog, clip.song_id, (clip.stem_name,), clip.offset_samples, RATE)
        np.testing.assert_allclose(clip.stem, _common_gain(clip.stem, stem_ref) * stem_ref, atol=1e-5)


def test_remove_target_is_input_minus_stem(synth_catalog):
    data = StemDataset(synth_catalog, "all", _config(ops=("remove",)), random_clips=True)
    for index in range(len(data)):
        clip = data[index]
        assert clip.stem_name in clip.input_classes and clip.stem_name not in clip.target_classes
        np.testing.assert_allclose(clip.target, clip.input - clip.stem, atol=1e-6)


def test_extract_target_is_the_stem_alone(synth_catalog):
    data = StemDataset(synth_catalog, "all", _config(ops=("extract",)), random_clips=True)
    for index in range(len(data)):
        clip = data[index]
        assert clip.target_classes == (clip.stem_name,) and len(clip.input_classes) >= 2
        np.testing.assert_array_equal(clip.target, clip.stem)


def test_instruction_uses_the_official_slakh_text(synth_catalog):
    data = StemDataset(synth_catalog, "all", _config(), random_clips=False)
    texts = {(clip.op, clip.instruction.replace(clip.stem_name, "X")) for clip in (data[i] for i in range(len(data)))}
    assert texts == {
        ("add", "Music piece. Instruct: Add X."),
        ("remove", "Music piece. Instruct: No X."),
        ("extract", "Music piece. Instruct: Only X."),
    }


def test_the_other_stems_are_a_random_subset_of_one_to_all_others(synth_catalog):
    data = StemDataset(synth_catalog, "all", _config(ops=("remove",)), clips_per_song=20, random_clips=True)
    sizes = set()
    for index in range(len(data)):
        clip = data[index]
        song = next(s for s in synth_catalog.songs if s.song_id == clip.song_id)
        others = [c for c in clip.input_classes if c != clip.stem_name]
        assert 1 <= len(others) <= len(song.classes()) - 1
        sizes.add(len(others))
    assert len(sizes) > 1


def test_four_stem_option_keeps_only_drums_bass_piano_guitar(synth_catalog):
    data = StemDataset(synth_catalog, "all", _config(classes="4stems"), clips_per_song=5, random_clips=True)
    for index in range(len(data)):
        clip = data[index]
        assert set(clip.input_classes) | set(clip.target_classes) <= set(OFFICIAL_STEMS)


def test_the_data_set_lists_the_stems_instructions_can_name(synth_catalog):
    present = {cls for song in synth_catalog.songs for cls in song.classes()}
    expected = sorted(present & set(OFFICIAL_STEMS))
    assert {"Drums", "Bass"} <= set(expected)
    assert StemDataset(synth_catalog, "all", _config(classes="4stems")).stems == expected


def test_clips_are_mono_float32_of_the_configured_length(synth_catalog):
    clip = StemDataset(synth_catalog, "all", _config(seconds=0.5))[0]
    for audio in (clip.input, clip.target, clip.stem):
        assert audio.dtype == np.float32 and audio.shape == (RATE // 2,)


def test_clips_never_clip(synth_catalog):
    data = StemDataset(synth_catalog, "all", _config(), clips_per_song=5, random_clips=True)
    for index in range(len(data)):
        clip = data[index]
        assert max(np.max(np.abs(clip.input)), np.max(np.abs(clip.target))) <= 1.0 + 1e-6


def test_evaluation_list_is_fixed_and_covers_every_song_and_operation(synth_catalog):
    first = StemDataset(synth_catalog, "all", _config(), seed=3, random_clips=False)
    second = StemDataset(synth_catalog, "all", _config(), seed=3, random_clips=False)
    first.set_epoch(5)  # an evaluation list ignores epochs
    assert len(first) == 3 * 3
    for index in range(len(first)):
        a, b = first[index], second[index]
        assert (a.song_id, a.op, a.stem_name, a.offset_samples) == (b.song_id, b.op, b.stem_name, b.offset_samples)
        np.testing.assert_array_equal(a.input, b.input)
    assert {(first[i].song_id, first[i].op) for i in range(len(first))} == {
        (song.song_id, op) for song in synth_catalog.songs for op in ("add", "remove", "extract")
    }


def test_training_clips_repeat_within_an_epoch_and_change_across_epochs(synth_catalog):
    data = StemDataset(synth_catalog, "all", _config(), seed=1, clips_per_song=4, random_clips=True)

    def draws():
        return [(c.song_id, c.op, c.stem_name, c.offset_samples) for c in (data[i] for i in range(len(data)))]

    epoch0 = draws()
    assert draws() == epoch0
    data.set_epoch(1)
    assert draws() != epoch0


# ---- re-draws on near-silent clips, on a hand-made folder data set ----------------------------------------------


def test_clips_whose_stem_is_near_silent_are_redrawn(tmp_path):
    write_folder_song(tmp_path / "song", seconds=4.0, bass_from=2.0)
    data = StemDataset(scan(tmp_path), "all", _config(ops=("extract",), seconds=0.5), clips_per_song=40)
    clips = [data[i] for i in range(len(data))]
    bass = [clip for clip in clips if clip.stem_name == "Bass"]
    # The rule tolerates up to 70% of near-silent samples: a bass clip may start at most 0.35 s before the bass.
    assert bass and all(clip.offset >= 2.0 - 0.7 * 0.5 for clip in bass)
    assert not any(clip.quiet for clip in clips)
    assert sum(clip.redraws for clip in clips) > 0


def test_a_clip_still_silent_after_the_last_redraw_is_flagged(tmp_path):
    write_folder_song(tmp_path / "song", seconds=4.0, bass_from=None)
    data = StemDataset(scan(tmp_path), "all", _config(ops=("extract",), seconds=0.5, max_redraws=3), clips_per_song=8)
    bass = [clip for clip in (data[i] for i in range(len(data))) if clip.stem_name == "Bass"]
    assert bass and all(clip.quiet and clip.redraws == 3 for clip in bass)


def test_moisesdb_rule_adds_to_all_other_stems(tmp_path):
    for name in ("drums.wav", "bass.wav", "piano.wav", "guitar.wav"):
        t = np.arange(2 * RATE) / RATE
        (tmp_path / "song").mkdir(exist_ok=True)
        sf.write(str(tmp_path / "song" / name), (0.4 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), RATE)
    data = StemDataset(scan(tmp_path), "all", _config(ops=("add",), rule="moisesdb"), clips_per_song=10)
    for clip in (data[i] for i in range(len(data))):
        assert len(clip.input_classes) == 3


# ---- songs that cannot give a clip, and splits ---------------------------------------------------------------


def test_songs_with_a_single_class_are_skipped_and_counted(tmp_path):
    write_folder_song(tmp_path / "a" / "song", seconds=4.0, bass_from=2.0)
    (tmp_path / "b" / "solo").mkdir(parents=True)
    sf.write(str(tmp_path / "b" / "solo" / "drums.wav"), np.full(RATE * 2, 0.5, np.float32), RATE)
    catalog = scan(tmp_path / "a")
    catalog.songs += scan(tmp_path / "b").songs
    data = StemDataset(catalog, "all", _config())
    assert len(data.plans) == 1
    assert data.skipped == [("solo", "only 1 stem class(es) usable (Drums)")]


def test_a_data_set_of_only_unusable_songs_is_a_data_error(tmp_path):
    (tmp_path / "solo").mkdir()
    sf.write(str(tmp_path / "solo" / "drums.wav"), np.full(RATE, 0.5, np.float32), RATE)
    with pytest.raises(DataError, match="no usable song"):
        StemDataset(scan(tmp_path), "all", _config())


def _songs(count: int):
    from engine.train.data.layouts import Song

    stem = StemFile("x", "Drums", Path("x.wav"), RATE, RATE, 1)
    return [Song(f"song{i:03d}", Path(f"song{i:03d}"), [stem]) for i in range(count)]


def test_split_is_by_song_disjoint_and_complete():
    songs = _songs(30)
    parts = split_songs(songs, 0.1, 0.1, seed=0)
    ids = [song.song_id for part in parts.values() for song in part]
    assert sorted(ids) == sorted(song.song_id for song in songs) and len(set(ids)) == 30
    assert (len(parts["validation"]), len(parts["test"])) == (3, 3)


def test_a_data_set_split_into_train_and_test_only_gets_validation_songs_from_its_train_songs():
    """MUSDB18 ships train/ and test/: without a validation split a run had no validation loss and no keep-best."""
    from dataclasses import replace

    songs = [replace(song, split="test" if i < 10 else "train") for i, song in enumerate(_songs(30))]
    parts = split_songs(songs, 0.1, 0.1, seed=0)
    test = {song.song_id for song in parts["test"]}
    assert test == {song.song_id for song in songs[:10]}  # the data set's own test songs, untouched
    assert len(parts["validation"]) == 3 and len(parts["train"]) == 17
    assert not {song.song_id for song in parts["validation"]} & {song.song_id for song in parts["train"]}


def test_a_song_of_no_split_beside_a_data_sets_own_split_leaves_its_test_songs_held_out():
    """A producer's song beside MUSDB18's train/ and test/: the whole set was split afresh by hash, and the data set's
    own test songs trained. Now the data set's songs keep their split, and each song of none takes its own hash's."""
    from dataclasses import replace

    musdb = [replace(song, split="test" if i < 10 else "train") for i, song in enumerate(_songs(30))]
    own = [replace(song, song_id=f"mine {i}") for i, song in enumerate(_songs(40))]
    parts = split_songs(musdb + own, 0.1, 0.1, seed=0)
    ids = {name: {song.song_id for song in part} for name, part in parts.items()}
    assert {song.song_id for song in musdb[:10]} <= ids["test"]
    assert not {song.song_id for song in musdb[10:]} & ids["test"]
    mine = {name: {i for i in part if i.startswith("mine")} for name, part in ids.items()}
    assert all(mine.values()) and sum(map(len, mine.values())) == 40  # every split gets some, each once
    more = split_songs(musdb + own + [replace(own[0], song_id=f"later {i}") for i in range(20)], 0.1, 0.1, seed=0)
    assert {name: {s.song_id for s in part if s.song_id.startswith("mine")} for name, part in more.items()} == mine
    # the data set's validation songs still come out of its train songs, however many of the others' join them
    for extra in own:
        parts = split_songs(musdb + [extra], 0.1, 0.1, seed=0)
        from_train = [song for song in parts["validation"] if song.song_id.startswith("song")]
        assert len(from_train) == 3, extra.song_id  # round(0.1 x 31): one song of its own did not replace them


def test_split_is_deterministic_and_ignores_file_order():
    songs = _songs(30)
    shuffled = songs[:]
    random.Random(4).shuffle(shuffled)
    first = {name: [s.song_id for s in part] for name, part in split_songs(songs, seed=5).items()}
    second = {name: [s.song_id for s in part] for name, part in split_songs(shuffled, seed=5).items()}
    assert first == second


def test_the_clip_seed_does_not_move_songs_between_splits(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(12):  # a folder data set: no split of its own, so the seeded hash order decides
        (tmp_path / f"song{i:02d}").mkdir()
        for stem in ("drums", "bass"):
            sf.write(str(tmp_path / f"song{i:02d}" / f"{stem}.wav"), 0.3 * rng.standard_normal(RATE), RATE)
    catalog = scan(tmp_path)

    def songs(split: str, seed: int) -> set[str]:
        return {plan.song.song_id for plan in StemDataset(catalog, split, _config(seconds=0.5), seed=seed).plans}

    for split in ("train", "validation", "test"):
        assert songs(split, 0) == songs(split, 7)
    assert songs("test", 7).isdisjoint(songs("train", 0))


def test_a_data_set_too_small_for_the_split_is_a_data_error():
    with pytest.raises(DataError, match="at least 3"):
        split_songs(_songs(2), 0.1, 0.1)


def test_the_synth_split_suggestion_is_used_by_song(synth_catalog):
    train = StemDataset(synth_catalog, "train", _config())
    test = StemDataset(synth_catalog, "test", _config())
    train_ids = {p.song.song_id for p in train.plans}
    test_ids = {p.song.song_id for p in test.plans}
    assert train_ids and test_ids and not train_ids & test_ids
    assert {c.song_id for c in (test[i] for i in range(len(test)))} == test_ids


def test_unknown_options_are_config_errors():
    with pytest.raises(ConfigError):
        ClipConfig(ops=("replace",))
    with pytest.raises(ConfigError):
        ClipConfig(classes="5stems")


# ---- windowed reading --------------------------------------------------------------------------------------------


def test_window_read_resamples_44k1_to_32k_in_phase(tmp_path):
    path = tmp_path / "tone.wav"
    t = np.arange(3 * 44100) / 44100
    sf.write(str(path), (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    stem = StemFile("tone", "Piano", path, 3 * 44100, 44100, 1)
    start = 320 * 100  # a point on both sample grids: 1.0 s
    window = read_window(stem, start, 16000, 32000)
    expected = 0.5 * np.sin(2 * np.pi * 440 * (start + np.arange(16000)) / 32000)
    np.testing.assert_allclose(window, expected, atol=2e-3)


def test_window_past_the_end_of_a_file_is_zero_padded(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(str(path), np.full(RATE, 0.25, np.float32), RATE)
    window = read_window(StemFile("s", "Bass", path, RATE, RATE, 1), RATE // 2, RATE, RATE)
    np.testing.assert_array_equal(window[: RATE // 2], 0.25)
    np.testing.assert_array_equal(window[RATE // 2 :], 0.0)


# ---- captioned mixes for a base model, and the exported evaluation list ----------------------------------------


def test_caption_clips_are_the_named_classes_summed_from_the_files(synth_catalog):
    from engine.train.data.datasets import CaptionDataset

    data = CaptionDataset(synth_catalog, "all", _config(), clips_per_song=12, random_clips=True)
    kinds = set()
    for index in range(len(data)):
        clip = data[index]
        kinds.add(clip.kind)
        reference = _file_sum(synth_catalog, clip.song_id, clip.classes, clip.offset_samples, RATE)
        np.testing.assert_allclose(clip.audio, _common_gain(clip.audio, reference) * reference, atol=1e-5)
        assert all(caption_word(cls) in clip.caption for cls in clip.classes)
        assert (clip.kind == "stem") == (len(clip.classes) == 1)
    assert kinds == {"mix", "stem", "partial"}


def test_export_writes_the_official_test_data_layout(synth_catalog, tmp_path):
    import json

    from engine.train.data.export import export_clips

    data = StemDataset(synth_catalog, "all", _config(ops=("remove",)), random_clips=False)
    assert export_clips(data, tmp_path / "out", progress=False) == len(data)
    first = data[0]
    exported, rate = sf.read(str(tmp_path / "out" / "remove" / "ground_truth" / "0.wav"), dtype="float32")
    assert rate == RATE
    np.testing.assert_array_equal(exported, first.target)
    text = (tmp_path / "out" / "remove" / "instruction" / "0.txt").read_text().splitlines()
    assert text == [f"Instruction: {first.instruction}", f"Stems: {', '.join(first.input_classes)}"]
    meta = json.loads((tmp_path / "out" / "clips.json").read_text())
    assert [clip["song_id"] for clip in meta["clips"]] == [data[i].song_id for i in range(len(data))]


def test_a_stem_deleted_after_the_scan_is_a_data_error_naming_it(tmp_path):
    write_folder_song(tmp_path / "song", seconds=4.0, bass_from=2.0)
    data = StemDataset(scan(tmp_path), "all", _config(seconds=0.5))
    (tmp_path / "song" / "bass.wav").unlink()
    with pytest.raises(DataError, match="bass.wav"):
        data[0]


def test_a_class_set_reads_the_same_from_every_command_line():
    assert parse_classes(" 4stems") == "4stems" and parse_classes("all") == "all"
    assert parse_classes("Drums, Bass,") == ("Drums", "Bass")
    assert ClipConfig(classes=parse_classes("drums, bass")).class_set() == ("Drums", "Bass")


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan"), float("inf")])
def test_a_clip_length_that_is_no_positive_number_is_refused(seconds):
    from engine.train.data.datasets import ClipConfig

    with pytest.raises(ConfigError, match="clip length must be positive numbers"):
        ClipConfig(seconds=seconds)


def test_a_class_no_song_has_is_named_with_the_classes_there(synth_data):
    from engine.train.data.layouts import scan

    with pytest.raises(ConfigError, match=r"has the stem class\(es\) Foo; its classes are .*Bass"):
        StemDataset(scan(synth_data), "all", ClipConfig(classes=("Bass", "foo")))


def test_a_class_list_naming_vocals_is_refused_saying_vocals_are_excluded():
    """Vocals are left out of training (as the official loader does): named in --classes, they were dropped silently
    ("Drums, Bass, Vocals" trained two stems; "Vocals, Drums" said only one class was usable)."""
    with pytest.raises(ConfigError, match="Vocals cannot be trained: excluded from training"):
        ClipConfig(classes=("Drums", "Bass", "vocals"))
    assert ClipConfig(classes=("Drums", "Bass")).class_set() == ("Drums", "Bass")
    assert ClipConfig(classes=("Drums", "Vocals"), exclude=()).class_set() == ("Drums", "Vocals")
