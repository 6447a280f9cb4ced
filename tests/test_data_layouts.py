"""Data set layouts: Slakh2100, MoisesDB and plain folders are found; bad input is reported, not fatal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from engine.errors import DataError
from engine.train.data.layouts import MIX_NAMED_STEM, scan
from engine.train.data.stems import caption, class_from_filename, gm_class, is_mix_name
from engine.train.data.yamlio import dump_yaml

RATE = 8000


def _wav(path: Path, seconds: float = 1.0, freq: float = 220.0, amplitude: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * RATE)) / RATE
    sf.write(str(path), (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32), RATE)
    return path


def _slakh_track(root: Path, name: str, classes: dict[str, str], rendered: dict[str, bool] | None = None) -> Path:
    track = root / name
    stems = {}
    for stem, cls in classes.items():
        ok = (rendered or {}).get(stem, True)
        stems[stem] = {"audio_rendered": ok, "inst_class": cls, "is_drum": cls == "Drums", "program_num": 0}
        if ok:
            _wav(track / "stems" / f"{stem}.flac")
    (track / "metadata.yaml").parent.mkdir(parents=True, exist_ok=True)
    (track / "metadata.yaml").write_text(dump_yaml({"UUID": name, "audio_dir": "stems", "stems": stems}))
    return track


def _moises_track(root: Path, provider: str, uuid: str, stems: dict[str, list[str]]) -> Path:
    track = root / provider / uuid
    entries = []
    for stem_name, ids in stems.items():
        tracks = []
        for track_id in ids:
            _wav(track / stem_name / f"{track_id}.wav")
            tracks.append({"id": track_id, "extension": "wav", "trackType": stem_name, "has_bleed": False})
        entries.append({"stemName": stem_name, "id": f"{stem_name}-id", "tracks": tracks})
    (track / "data.json").write_text(json.dumps({"song": uuid, "artist": "a", "genre": "rock", "stems": entries}))
    return track


def test_slakh_layout_is_detected_with_classes_from_metadata(tmp_path):
    _slakh_track(tmp_path, "Track00001", {"S00": "Drums", "S01": "Bass", "S02": "Piano"})
    catalog = scan(tmp_path)
    assert catalog.layout == "slakh"
    assert [s.cls for s in catalog.songs[0].stems] == ["Drums", "Bass", "Piano"]


def test_slakh_split_folders_assign_each_song_its_split(tmp_path):
    for split, name in (("train", "Track00001"), ("validation", "Track01501"), ("test", "Track01901")):
        _slakh_track(tmp_path / split, name, {"S00": "Drums", "S01": "Bass"})
    splits = {song.song_id: song.split for song in scan(tmp_path).songs}
    assert splits == {"Track00001": "train", "Track01501": "validation", "Track01901": "test"}


def test_a_dataset_json_suggests_each_songs_split_and_a_corrupt_one_is_named_not_passed_over(tmp_path):
    _slakh_track(tmp_path, "Track00001", {"S00": "Drums", "S01": "Bass"})
    assert scan(tmp_path).songs[0].split is None  # no dataset.json: the split is left to the hash
    record = json.dumps({"split": {"test": ["Track00001"]}})
    (tmp_path / "dataset.json").write_text(record)
    assert scan(tmp_path).songs[0].split == "test"
    (tmp_path / "dataset.json").write_text(record[:-1])  # cut short: the held-out songs must not change silently
    with pytest.raises(DataError, match="dataset.json is not readable JSON"):
        scan(tmp_path)


def test_slakh_omitted_songs_are_in_no_split(tmp_path):
    from engine.train.data.datasets import split_songs

    for split, name in (("train", "Track00001"), ("validation", "Track01501"), ("test", "Track01901")):
        _slakh_track(tmp_path / split, name, {"S00": "Drums", "S01": "Bass"})
    _slakh_track(tmp_path / "omitted", "Track00099", {"S00": "Drums", "S01": "Bass"})
    parts = split_songs(scan(tmp_path).songs)
    assert {name: [s.song_id for s in songs] for name, songs in parts.items()} == {
        "train": ["Track00001"],
        "validation": ["Track01501"],
        "test": ["Track01901"],
    }


def test_slakh_stems_that_were_never_rendered_are_left_out_quietly(tmp_path):
    _slakh_track(tmp_path, "Track00001", {"S00": "Drums", "S01": "Bass", "S02": "Piano"}, rendered={"S02": False})
    catalog = scan(tmp_path)
    assert [s.name for s in catalog.songs[0].stems] == ["S00", "S01"]
    assert catalog.problems == []


def test_missing_and_unreadable_stems_are_skipped_and_reported(tmp_path):
    track = _slakh_track(tmp_path, "Track00001", {"S00": "Drums", "S01": "Bass", "S02": "Piano", "S03": "Guitar"})
    (track / "stems" / "S02.flac").unlink()
    (track / "stems" / "S03.flac").write_bytes(b"not audio at all")
    catalog = scan(tmp_path)
    assert [s.name for s in catalog.songs[0].stems] == ["S00", "S01"]
    assert catalog.problem_counts() == {"missing stem file": 1, "unreadable stem file": 1}


def test_a_stem_cut_short_is_found_by_the_scan_though_its_header_is_whole(tmp_path):
    """An interrupted copy of a FLAC keeps the header of the whole file: found at the scan (its end is read), before
    a run draws a clip near its end hours in."""
    track = _slakh_track(tmp_path, "Track00001", {"S00": "Drums", "S01": "Bass", "S02": "Piano"})
    cut = track / "stems" / "S02.flac"
    sf.write(str(cut), (0.3 * np.random.default_rng(0).standard_normal(3 * RATE)).astype(np.float32), RATE)
    cut.write_bytes(cut.read_bytes()[: int(cut.stat().st_size * 0.9)])
    assert sf.info(str(cut)).frames == 3 * RATE  # the header still promises it all
    catalog = scan(tmp_path)
    assert [s.name for s in catalog.songs[0].stems] == ["S00", "S01"]
    assert catalog.problems == [(str(cut), "damaged or cut short stem file")]


def test_moisesdb_layout_is_detected_and_class_names_are_canonical(tmp_path):
    _moises_track(tmp_path, "provider", "0a1b", {"drums": ["d1", "d2"], "bass": ["b1"], "other_keys": ["k1"]})
    catalog = scan(tmp_path)
    assert catalog.layout == "moisesdb"
    song = catalog.songs[0]
    assert song.song_id == "provider/0a1b"
    assert [s.cls for s in song.stems] == ["Drums", "Drums", "Bass", "Other Keys"]


def test_plain_folders_take_the_class_from_the_file_name_and_ignore_the_mix(tmp_path):
    for name in ("Drums.wav", "bass_di.flac", "kick.wav", "Lead Vox.wav", "mix.wav", "Gtr 2.wav"):
        _wav(tmp_path / "My Song" / name)
    catalog = scan(tmp_path)
    assert catalog.layout == "folder"
    classes = {stem.name: stem.cls for stem in catalog.songs[0].stems}
    assert classes == {"Drums": "Drums", "bass_di": "Bass", "kick": "Drums", "Lead Vox": "Vocals", "Gtr 2": "Guitar"}


@pytest.mark.parametrize(
    ("file_name", "cls"),
    [
        ("Drums", "Drums"),
        ("bass_di", "Bass"),
        ("kick", "Drums"),
        ("SnareTop", "Drums"),
        ("Bassoon", "Reed"),
        ("Saxophones", "Reed"),  # "sax" is too short to match as a prefix
        ("OH_L", "Drums"),
        ("Rhodes", "Piano"),
        ("AcousticGuitar", "Guitar"),
        ("BGV 1", "Vocals"),
        ("field recording", "Other"),
    ],
)
def test_class_from_file_name(file_name, cls):
    assert class_from_filename(file_name) == cls


def test_a_file_named_like_a_mix_that_names_an_instrument_is_left_out_and_said(tmp_path):
    for name in ("mixture.wav", "Drums Mix.wav", "Bass Master.wav", "Guitar.wav", "Piano.wav"):
        _wav(tmp_path / "Song" / name)
    catalog = scan(tmp_path)
    assert [stem.name for stem in catalog.songs[0].stems] == ["Guitar", "Piano"]
    assert sorted(Path(path).name for path, _ in catalog.problems) == ["Bass Master.wav", "Drums Mix.wav"]
    assert catalog.problem_counts() == {MIX_NAMED_STEM: 2}  # the plain mixture is no news


@pytest.mark.parametrize(("real", "linked"), [("test", "train"), ("validation", "train"), ("train", "test")])
def test_a_linked_song_folder_is_read_once_where_it_really_lies(tmp_path, real, linked):
    """A test song linked under train/ trained in the adapter stage; the link is named, whichever path sorts first."""
    for name in ("drums.wav", "bass.wav"):
        _wav(tmp_path / real / "Song A" / name)
        _wav(tmp_path / linked / "Song B" / name)
    (tmp_path / linked / "A").symlink_to(tmp_path / real / "Song A", target_is_directory=True)
    catalog = scan(tmp_path)
    assert sorted((song.song_id, song.split) for song in catalog.songs) == sorted(
        [("Song A", real), ("Song B", linked)]
    )
    assert [(Path(path).name, reason.split(" (")[0]) for path, reason in catalog.problems] == [
        ("A", f"the same song folder as {tmp_path / real / 'Song A'}")
    ]


def test_mix_files_are_recognised_by_name():
    assert is_mix_name("mix") and is_mix_name("Song Mixdown") and not is_mix_name("Drums")
    assert is_mix_name("mixture") and is_mix_name("linear_mixture")  # MUSDB18-HQ, DSD100; MUSDB18


def test_a_musdb18_hq_song_has_four_stems_and_its_mixture_is_no_stem(tmp_path):
    """MUSDB18-HQ ships train/<song>/{mixture,drums,bass,other,vocals}.wav: its mixture was taken for an "Other" stem,
    which put every other stem into the inputs twice."""
    for name in ("mixture", "drums", "bass", "other", "vocals"):
        _wav(tmp_path / "train" / "A Band - A Song" / f"{name}.wav")
    (song,) = scan(tmp_path).songs
    assert sorted((stem.name, stem.cls) for stem in song.stems) == [
        ("bass", "Bass"), ("drums", "Drums"), ("other", "Other"), ("vocals", "Vocals")
    ]  # fmt: skip


def test_general_midi_programs_map_to_slakh_classes():
    assert (gm_class(0, False), gm_class(33, False), gm_class(27, False), gm_class(5, True)) == (
        "Piano",
        "Bass",
        "Guitar",
        "Drums",
    )


def test_captions_name_what_sounds():
    assert caption(["Drums", "Bass"]) == "drums and bass"
    assert caption(["Piano"]) == "piano"
    assert caption(["Drums", "Bass", "Strings (continued)"]) == "drums, bass and strings"


def test_a_folder_in_no_known_layout_says_which_layouts_were_tried(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError) as error:
        scan(tmp_path)
    message = str(error.value)
    assert "Slakh2100" in message and "MoisesDB" in message and "plain folders" in message


def test_a_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan(tmp_path / "nope")


def test_yaml_fallback_reads_slakh_style_metadata():
    from engine.train.data.yamlio import parse_simple_yaml

    text = (
        "UUID: 1a2b\naudio_dir: stems\nnormalization_factor: -13.5\nstems:\n  S00:\n    audio_rendered: true\n"
        "    inst_class: Strings (continued)\n    integrated_loudness: null\n    program_num: 48\n"
        "  S01:\n    audio_rendered: false\n    inst_class: Bass\n"
    )
    assert parse_simple_yaml(text) == {
        "UUID": "1a2b",
        "audio_dir": "stems",
        "normalization_factor": -13.5,
        "stems": {
            "S00": {
                "audio_rendered": True,
                "inst_class": "Strings (continued)",
                "integrated_loudness": None,
                "program_num": 48,
            },
            "S01": {"audio_rendered": False, "inst_class": "Bass"},
        },
    }


def test_the_codec_never_trains_on_slakhs_omitted_songs(tmp_path):
    """omitted/ holds duplicates of songs that stay in the splits, test songs among them."""
    from engine.train.codec_train import held_out_songs, training_audio_files

    for split, name in (("train", "Track00001"), ("validation", "Track01501"), ("test", "Track01901")):
        _slakh_track(tmp_path / split, name, {"S00": "Drums", "S01": "Bass"})
    _slakh_track(tmp_path / "omitted", "Track00099", {"S00": "Drums", "S01": "Bass"})
    files = training_audio_files(tmp_path, held_out_songs(tmp_path))
    assert {f.relative_to(tmp_path).parts[0] for f in files} == {"train"}
