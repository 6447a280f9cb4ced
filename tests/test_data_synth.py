"""`imusic data synth`: a Slakh-layout stem data set from procedural MIDI through General MIDI soundfonts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf
from test_bridge_support import tree_digest

from engine.errors import ConfigError, DataError
from engine.train.data.render import default_soundfonts
from engine.train.data.synth import synthesize
from engine.train.data.yamlio import parse_simple_yaml, read_yaml

RATE = 16000
SECONDS = 3.0

pytestmark = pytest.mark.needs_soundfont


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize(out, 3, seed=7, seconds=SECONDS, sample_rate=RATE, progress=False)
    return out


def test_writes_the_slakh_layout_for_every_track(synth_dir):
    tracks = sorted(p.name for p in synth_dir.iterdir() if p.is_dir())
    assert tracks == ["Track00001", "Track00002", "Track00003"]
    for track in tracks:
        meta = read_yaml(synth_dir / track / "metadata.yaml")
        assert (synth_dir / track / "mix.flac").is_file()
        assert (synth_dir / track / "all_src.mid").is_file()
        for name, entry in meta["stems"].items():
            assert entry["inst_class"]
            assert (synth_dir / track / "MIDI" / f"{name}.mid").is_file()
            assert (synth_dir / track / "stems" / f"{name}.flac").is_file() == entry["audio_rendered"]


def test_every_song_has_drums_bass_and_a_harmony_instrument(synth_dir):
    for track in sorted(p for p in synth_dir.iterdir() if p.is_dir()):
        classes = {entry["inst_class"] for entry in read_yaml(track / "metadata.yaml")["stems"].values()}
        assert {"Drums", "Bass"} <= classes
        assert classes & {"Piano", "Guitar"}


def test_stems_are_mono_at_the_requested_rate_and_length(synth_dir):
    for path in sorted(synth_dir.glob("Track*/stems/*.flac")):
        info = sf.info(str(path))
        assert (info.channels, info.samplerate, info.frames) == (1, RATE, int(SECONDS * RATE))


def test_stems_are_not_silent(synth_dir):
    for path in sorted(synth_dir.glob("Track*/stems/*.flac")):
        audio, _ = sf.read(str(path), dtype="float32")
        assert np.max(np.abs(audio)) > 0.05, path


def test_mix_is_the_sum_of_the_stems_without_clipping(synth_dir):
    for track in sorted(p for p in synth_dir.iterdir() if p.is_dir()):
        stems = [sf.read(str(p), dtype="float64")[0] for p in sorted((track / "stems").glob("*.flac"))]
        mix, _ = sf.read(str(track / "mix.flac"), dtype="float64")
        # Each file is 16-bit: the sum may differ from the mix by one quantization step per file.
        assert np.max(np.abs(mix - np.sum(stems, axis=0))) <= (len(stems) + 1) / 32768
        assert np.max(np.abs(mix)) < 1.0


def test_dataset_json_records_the_run_and_names_what_sounds(synth_dir):
    meta = json.loads((synth_dir / "dataset.json").read_text())
    assert (meta["seed"], meta["tracks"], meta["sample_rate"], meta["format"]) == (7, 3, RATE, "slakh")
    assert meta["soundfonts"] and all(Path(p).name.endswith(".sf2") for p in meta["soundfonts"])
    split = meta["split"]
    assert sorted(split["train"] + split["validation"] + split["test"]) == sorted(meta["songs"])
    song = meta["songs"]["Track00001"]
    assert "drums" in song["caption"] and "bass" in song["caption"]


@pytest.mark.skipif(len(default_soundfonts()) < 2, reason="only one General MIDI soundfont on this machine")
def test_stems_are_rendered_through_every_soundfont_and_record_which(synth_dir):
    fonts = {Path(p).name for p in json.loads((synth_dir / "dataset.json").read_text())["soundfonts"]}
    used = {
        entry["plugin_name"]
        for track in sorted(p for p in synth_dir.iterdir() if p.is_dir())
        for entry in read_yaml(track / "metadata.yaml")["stems"].values()
    }
    assert len(fonts) >= 2 and used == fonts


def test_a_progress_bar_counts_the_tracks(tmp_path, capsys):
    synthesize(tmp_path / "bar", 1, seed=1, seconds=1.0, sample_rate=RATE, progress=True)
    err = capsys.readouterr().err
    assert "synth" in err and "1/1" in err


def test_no_progress_bar_when_asked(tmp_path, capsys):
    synthesize(tmp_path / "quiet", 1, seed=1, seconds=1.0, sample_rate=RATE, progress=False)
    assert "1/1" not in capsys.readouterr().err


def test_metadata_stores_caption_words_per_stem(synth_dir):
    meta = read_yaml(synth_dir / "Track00001" / "metadata.yaml")
    words = {entry["class_name"] for entry in meta["stems"].values()}
    assert {"drums", "bass"} <= words


def test_metadata_reads_the_same_with_and_without_pyyaml(synth_dir):
    path = synth_dir / "Track00002" / "metadata.yaml"
    assert parse_simple_yaml(path.read_text()) == read_yaml(path)


def test_same_seed_gives_identical_files(synth_dir, tmp_path):
    again = tmp_path / "again"
    synthesize(again, 3, seed=7, seconds=SECONDS, sample_rate=RATE, progress=False)
    assert tree_digest(again) == tree_digest(synth_dir)


def test_another_seed_gives_other_audio(synth_dir, tmp_path):
    other = tmp_path / "other"
    synthesize(other, 1, seed=8, seconds=SECONDS, sample_rate=RATE, progress=False)
    assert tree_digest(other)["Track00001/mix.flac"] != tree_digest(synth_dir)["Track00001/mix.flac"]


def test_renders_a_users_midi_files_with_their_instrument_classes(tmp_path):
    midi = pretty_midi.PrettyMIDI(initial_tempo=120)
    piano = pretty_midi.Instrument(program=0, name="piano")
    drums = pretty_midi.Instrument(program=0, is_drum=True, name="drums")
    for beat in range(8):
        piano.notes.append(pretty_midi.Note(velocity=90, pitch=60 + beat % 5, start=beat * 0.5, end=beat * 0.5 + 0.4))
        drums.notes.append(
            pretty_midi.Note(velocity=100, pitch=36 if beat % 2 else 38, start=beat * 0.5, end=beat * 0.5 + 0.1)
        )
    midi.instruments += [piano, drums]
    (tmp_path / "midi").mkdir()
    midi.write(str(tmp_path / "midi" / "song.mid"))
    out = tmp_path / "data"
    synthesize(out, 1, seed=0, seconds=4.0, sample_rate=RATE, midi_dir=tmp_path / "midi", progress=False)
    meta = read_yaml(out / "Track00001" / "metadata.yaml")
    assert sorted(entry["inst_class"] for entry in meta["stems"].values()) == ["Drums", "Piano"]
    assert meta["source_midi"] == "song.mid"
    assert len(pretty_midi.PrettyMIDI(str(out / "Track00001" / "MIDI" / "S00.mid")).instruments[0].notes) == 8


def test_the_report_counts_the_stems_rendered_and_their_cpu_cost(tmp_path):
    report = synthesize(tmp_path / "timed", 2, seed=3, seconds=5.0, sample_rate=32000, progress=False)
    assert report.stem_seconds >= 20  # 2 songs of 5 s, at least 2 stems each
    assert report.render_cpu_seconds > 0 and report.cpu_per_10s_of_stems > 0  # what `data synth` prints


def test_refuses_a_folder_that_is_not_empty(synth_dir):
    with pytest.raises(DataError, match="not empty"):
        synthesize(synth_dir, 1, progress=False)


def test_refuses_a_missing_soundfont(tmp_path):
    with pytest.raises(ConfigError, match="soundfont"):
        synthesize(tmp_path / "x", 1, soundfonts=[tmp_path / "missing.sf2"], progress=False)


def test_refuses_a_midi_folder_without_midi_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.mid files"):
        synthesize(tmp_path / "x", 1, midi_dir=tmp_path / "empty", progress=False)


def test_an_interrupted_run_resumes_to_identical_files(synth_dir, tmp_path):
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(synth_dir, partial)
    (partial / "Track00002" / "metadata.yaml").unlink()  # cut short while writing track 2
    shutil.rmtree(partial / "Track00003")  # never started
    report = synthesize(partial, 3, seed=7, seconds=SECONDS, sample_rate=RATE, progress=False, resume=True)
    assert report.resumed == 1
    assert tree_digest(partial) == tree_digest(synth_dir)


def test_resume_refuses_other_settings(synth_dir, tmp_path):
    import shutil

    shutil.copytree(synth_dir, tmp_path / "copy")
    with pytest.raises(DataError, match="seed"):
        synthesize(tmp_path / "copy", 3, seed=8, seconds=SECONDS, sample_rate=RATE, progress=False, resume=True)
    (tmp_path / "copy" / "dataset.json").write_text("[1, 2]")  # JSON, but no description: named, no traceback
    with pytest.raises(DataError, match="dataset.json must hold a JSON object, not a list"):
        synthesize(tmp_path / "copy", 3, seconds=SECONDS, sample_rate=RATE, progress=False, resume=True)


def test_an_unreadable_midi_file_is_skipped_and_reported(tmp_path):
    midi = pretty_midi.PrettyMIDI(initial_tempo=100)
    bass = pretty_midi.Instrument(program=33, name="bass")
    bass.notes.append(pretty_midi.Note(velocity=90, pitch=40, start=0.0, end=1.0))
    midi.instruments.append(bass)
    (tmp_path / "midi").mkdir()
    midi.write(str(tmp_path / "midi" / "a_good.mid"))
    (tmp_path / "midi" / "b_broken.mid").write_bytes(b"MThd garbage")
    report = synthesize(tmp_path / "out", 2, seconds=2.0, sample_rate=RATE, midi_dir=tmp_path / "midi", progress=False)
    assert report.tracks == 1
    assert [(track, reason.split(":")[0]) for track, reason in report.skipped] == [("Track00002", "unreadable MIDI")]


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 1e-6, 0.0, -1.0, 1e9])
def test_a_song_length_that_is_not_a_number_or_holds_no_note_is_refused_in_one_line(tmp_path, seconds):
    """1e9 s rendered for ever and left its folder behind."""
    with pytest.raises(ConfigError, match="--seconds must be a number from 0.25 to 3600"):
        synthesize(tmp_path / "x", 1, seed=0, seconds=seconds, sample_rate=RATE, progress=False)
    assert not (tmp_path / "x").exists()


def test_a_set_where_no_track_could_be_made_is_not_marked_complete(tmp_path):
    (tmp_path / "midi").mkdir()
    (tmp_path / "midi" / "bad.mid").write_bytes(b"not a MIDI file")
    out = tmp_path / "data"
    with pytest.raises(DataError, match="no track could be made"):
        synthesize(out, 1, seed=0, seconds=2.0, sample_rate=RATE, midi_dir=tmp_path / "midi", progress=False)
    assert json.loads((out / "dataset.json").read_text())["complete"] is False


def test_tracks_rendered_from_one_midi_file_share_a_split():
    """--midi files are used again when there are more tracks than files: the copies of one composition landed in
    train and test (the test songs' notes were trained on, in every stage)."""
    from engine.train.data.datasets import split_ids
    from engine.train.data.synth import _split_suggestion

    songs = {f"Track{i:05d}": {"source_midi": f"song{(i - 1) % 5}.mid"} for i in range(1, 21)}
    split = _split_suggestion(songs, seed=0)
    where = {track: name for name, tracks in split.items() for track in tracks}
    assert sorted(where) == sorted(songs) and split["test"] and split["validation"]
    for name in {info["source_midi"] for info in songs.values()}:
        assert len({where[t] for t, info in songs.items() if info["source_midi"] == name}) == 1, name
    generated = {f"Track{i:05d}": {} for i in range(1, 21)}  # each track its own song: the split as before
    assert _split_suggestion(generated, seed=3) == split_ids(sorted(generated), seed=3)
