"""`imusic edit`: one file in, one result out (atomically, never over the input), optional audition."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_bridge_support import odd_byte_copy, write_wav

from bridge import playback
from bridge.cli import main
from bridge.playback import FakePlayer

RATE = 22050


@pytest.fixture
def song(tmp_path) -> Path:
    return write_wav(tmp_path / "song.wav", 1.5, RATE, 2, subtype="PCM_16")


@pytest.fixture
def no_keys(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # nobody presses a key


def edit(song: Path, model: Path, *extra: str) -> int:
    return main(["edit", str(song), "extract drums", "--model", str(model), "--device", "cpu", "--seed", "1", *extra])


def test_writes_the_region_at_the_sources_rate_and_channels(song, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "drums.wav"
    assert edit(song, tiny_model_dir, "-o", str(out), "--start", "0.25", "--end", "1.25") == 0
    assert capsys.readouterr().out.strip() == str(out)
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.frames) == (RATE, 2, RATE)
    assert info.subtype == "FLOAT"


def test_the_mask_mode_is_the_default_and_keeps_the_stereo_image(song, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "drums.wav"
    assert edit(song, tiny_model_dir, "-o", str(out)) == 0
    assert "mode mask" in capsys.readouterr().err
    result, _ = sf.read(out, always_2d=True)
    assert not np.allclose(result[:, 0], result[:, 1])  # the input's channels differ: so do the result's


def test_resynth_gives_the_models_output_on_every_channel(song, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "drums.wav"
    assert edit(song, tiny_model_dir, "-o", str(out), "--mode", "resynth") == 0
    assert "mode resynth" in capsys.readouterr().err
    result, _ = sf.read(out, always_2d=True)
    np.testing.assert_array_equal(result[:, 0], result[:, 1])


def test_an_unknown_mode_is_one_line_naming_the_modes_and_writes_nothing(song, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "drums.wav"
    assert edit(song, tiny_model_dir, "-o", str(out), "--mode", "karaoke") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mask, resynth, layer" in err
    assert not out.exists()


def test_default_output_goes_to_results_beside_the_input_under_a_fresh_name(song, tiny_model_dir, capsys):
    assert edit(song, tiny_model_dir) == 0
    assert edit(song, tiny_model_dir) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).parent for p in printed] == [song.parent / "results"] * 2
    assert printed[0] != printed[1]


def test_refuses_to_write_over_the_input(song, tiny_model_dir, capsys):
    before = song.read_bytes()
    assert edit(song, tiny_model_dir, "-o", str(song), "--force") == 1
    assert "is the input file" in capsys.readouterr().err
    assert song.read_bytes() == before


def test_refuses_an_existing_output_unless_forced(song, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "taken.wav"
    out.write_bytes(b"keep me")
    assert edit(song, tiny_model_dir, "-o", str(out)) == 1
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert edit(song, tiny_model_dir, "-o", str(out), "--force") == 0
    assert sf.info(out).frames == int(1.5 * RATE)


def test_unknown_instruction_is_one_line_and_writes_nothing(song, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "x.wav"
    code = main(["edit", str(song), "make it groovier", "-o", str(out), "--model", str(tiny_model_dir)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "make it groovier" in err
    assert not out.exists()


def test_a_stem_the_model_does_not_know_is_refused_before_the_model_loads(song, tmp_path, capsys, no_model_load):
    out = tmp_path / "x.wav"
    assert main(["edit", str(song), "extract kazoo", "-o", str(out)]) == 1  # the embedded default model's card
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kazoo" in err and "drums" in err
    assert main(["edit", str(song), "extract drums", "-o", str(out), "--mode", "karaoke"]) == 1
    assert "mask, resynth, layer" in capsys.readouterr().err


def test_a_file_of_too_many_channels_is_refused_before_the_model_loads(tmp_path, capsys, no_model_load):
    wide = tmp_path / "wide.wav"
    sf.write(wide, np.full((1600, 65), 0.1, dtype=np.float32), 16000)
    assert main(["edit", str(wide), "extract drums", "-o", str(tmp_path / "x.wav")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "wide.wav has 65 channels: the engine edits at most 64" in err
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("command", [["edit", "{song}", "extract drums"], ["send", "edit", "{song}", "extract drums"]])
@pytest.mark.parametrize("option", ["--end", "--start"])
def test_a_negative_region_time_is_a_usage_error_not_the_end_of_the_file(song, capsys, no_model_load, command, option):
    with pytest.raises(SystemExit) as usage:
        main([part.format(song=song) for part in command] + [option, "-3"])
    assert usage.value.code == 2  # argparse's: nothing was sent, loaded or written
    assert f"argument {option}: must be seconds from the start of the file, not negative, got '-3'" in (
        capsys.readouterr().err
    )


def test_a_file_name_that_is_not_utf8_is_refused_in_one_line_before_the_model_loads(
    song, tmp_path, capsys, no_model_load
):
    odd = odd_byte_copy(song, tmp_path)
    assert main(["edit", str(odd), "extract drums"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "caf\\xe9.wav holds bytes that are not UTF-8 text" in err
    assert main(["edit", str(song), "extract drums", "-o", str(odd.with_name(odd.name + ".out.wav"))]) == 1
    assert "the output " in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != song.name) == [odd.name]  # nothing written


def test_an_output_name_too_long_to_write_is_refused_before_the_model_loads(song, tmp_path, capsys, no_model_load):
    assert main(["edit", str(song), "extract drums", "-o", str(tmp_path / ("y" * 236 + ".wav"))]) == 1
    assert "the output file name is 240 bytes long" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["x" * 300 + ".wav", "x" * 300 + "/"])
def test_an_output_name_longer_than_the_file_system_takes_is_one_line(song, tmp_path, capsys, no_model_load, name):
    (tmp_path / "out").mkdir()
    assert main(["edit", str(song), "extract drums", "-o", str(tmp_path / "out") + "/" + name]) == 1
    err = capsys.readouterr().err
    assert err.startswith("imusic edit: error: ") and "Traceback" not in err and len(err.splitlines()) == 1


def test_an_output_that_is_a_loop_of_symbolic_links_is_one_line(song, tmp_path, capsys, no_model_load):
    (tmp_path / "loop1.wav").symlink_to(tmp_path / "loop2.wav")
    (tmp_path / "loop2.wav").symlink_to(tmp_path / "loop1.wav")
    assert main(["edit", str(song), "extract drums", "-o", str(tmp_path / "loop1.wav")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"imusic edit: error: cannot write to {tmp_path / 'loop1.wav'}") and "Traceback" not in err


def test_a_full_disk_is_one_line_and_leaves_no_file(song, tmp_path, tiny_model_dir, capsys, monkeypatch):
    import errno

    from bridge import audio_write

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audio_write, "_write_wav", full)
    out = tmp_path / "x.wav"
    assert edit(song, tiny_model_dir, "-o", str(out)) == 1
    assert capsys.readouterr().err.strip() == f"imusic edit: error: cannot write {out}: No space left on device"
    assert not [p for p in tmp_path.iterdir() if p == out or p.name.endswith(".partial.wav")]


def test_an_input_gone_while_the_model_loads_is_a_read_error_not_a_write_error(
    song, tmp_path, tiny_model_dir, capsys, monkeypatch
):
    import errno

    from bridge import audio_read

    def gone(path, *args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))

    monkeypatch.setattr(audio_read, "read_region", gone)
    assert edit(song, tiny_model_dir, "-o", str(tmp_path / "x.wav")) == 1
    assert capsys.readouterr().err.strip() == f"imusic edit: error: cannot read {song}: No such file or directory"


def test_takes_out_of_range_is_a_usage_error(song, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", str(song), "extract drums", "--takes", "0"])
    assert exit_info.value.code == 2
    assert "--takes: takes must be a whole number from 1 to 16, got 0" in capsys.readouterr().err


def test_an_output_in_a_missing_folder_says_the_folder_is_created(song, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "new" / "drums.wav"
    assert edit(song, tiny_model_dir, "-o", str(out)) == 0
    assert f"imusic edit: made the folder {out.parent}" in capsys.readouterr().err
    assert out.is_file()


def test_unreadable_input_fails_before_a_model_is_loaded(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    assert main(["edit", str(bad), "extract drums", "--model", "/nonexistent/model"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_output_must_be_a_wav_file(song, tmp_path, capsys):
    assert main(["edit", str(song), "extract drums", "-o", str(tmp_path / "out.mp3")]) == 1
    assert "out.wav" in capsys.readouterr().err


def test_an_output_named_without_a_suffix_is_written_as_wav(song, tmp_path, tiny_model_dir):
    assert edit(song, tiny_model_dir, "-o", str(tmp_path / "drums")) == 0
    assert sf.info(str(tmp_path / "drums.wav")).format == "WAV"
    assert not (tmp_path / "drums").exists()


def test_play_plays_the_written_result(song, tmp_path, tiny_model_dir, monkeypatch, no_keys):
    player = FakePlayer(time_scale=0.0)
    monkeypatch.setattr(playback, "get_player", lambda device=None: player)
    out = tmp_path / "drums.wav"
    assert edit(song, tiny_model_dir, "-o", str(out), "--play") == 0
    (clip, rate), *_ = player.played
    written, written_rate = sf.read(out, dtype="float32", always_2d=True)
    assert rate == written_rate == RATE
    np.testing.assert_array_equal(clip, written.T)


def test_ab_alternates_source_and_result_on_the_chosen_device(tmp_path, tiny_model_dir, monkeypatch, no_keys):
    rate = 8000
    song = write_wav(tmp_path / "long.wav", 5.0, rate, 1, seed=1)
    player, chosen = FakePlayer(time_scale=0.0), []
    monkeypatch.setattr(playback, "get_player", lambda device=None: chosen.append(device) or player)
    out = tmp_path / "drums.wav"
    assert edit(song, tiny_model_dir, "-o", str(out), "--ab", "--output-device", "Scarlett") == 0
    assert chosen == ["Scarlett"]
    source = sf.read(song, dtype="float32", always_2d=True)[0].T
    result = sf.read(out, dtype="float32", always_2d=True)[0].T
    (first, _), (second, _) = player.played  # 0-4 s as it was, then 4-5 s as edited
    np.testing.assert_array_equal(first, source[:, : 4 * rate])
    np.testing.assert_array_equal(second, result[:, 4 * rate :])


def test_a_layer_is_auditioned_with_the_recording_it_goes_beside(song, tmp_path, tiny_model_dir, monkeypatch, no_keys):
    player = FakePlayer(time_scale=0.0)
    monkeypatch.setattr(playback, "get_player", lambda device=None: player)
    out = tmp_path / "piano.wav"
    assert main(["edit", str(song), "add piano", "-o", str(out), "--model", str(tiny_model_dir), "--mode", "layer",
                 "--play"]) == 0  # fmt: skip
    (clip, _), *_ = player.played
    source = sf.read(song, dtype="float32", always_2d=True)[0].T
    layer = sf.read(out, dtype="float32", always_2d=True)[0].T
    np.testing.assert_allclose(clip, source + layer, atol=1e-4)  # what the project plays: both tracks


def test_no_sound_card_is_one_line_and_the_edit_still_succeeds(song, tmp_path, tiny_model_dir, monkeypatch, capsys):
    def unavailable(device=None):
        raise playback.PlaybackUnavailable(f"no audio output device found: connect one ({playback.INSTALL_HINT})")

    monkeypatch.setattr(playback, "get_player", unavailable)
    out = tmp_path / "drums.wav"
    assert edit(song, tiny_model_dir, "-o", str(out), "--play") == 0
    err = capsys.readouterr().err
    assert "playback unavailable" in err and "pip install sounddevice" in err and "libportaudio2" in err
    assert out.exists()


def test_the_summary_of_a_silent_result_says_what_it_knows(capsys):
    from bridge.cli import report_edit

    report_edit("imusic edit", "extract drums", 3, {"mode": "mask", "levels": {"result_lufs": None}}, 1.0)
    assert capsys.readouterr().err == "extract drums: mode mask, seed 3, 1.0 s\n"


def test_the_models_own_verdict_on_the_operation_is_printed_as_a_note(song, tmp_path, judged_model_dir, capsys):
    assert edit(song, judged_model_dir, "-o", str(tmp_path / "x.wav")) == 0
    err = capsys.readouterr().err
    assert "imusic edit: note: " in err and "extract edits do not clearly beat leaving the audio unchanged" in err


def test_an_output_under_a_file_or_in_a_read_only_folder_is_refused_before_the_model_loads(
    tmp_path, monkeypatch, capsys
):
    import tempfile

    from bridge.cli import main

    source = tmp_path / "song.wav"
    sf.write(source, np.zeros((16000, 1), np.float32), 16000)
    loads = []
    monkeypatch.setattr("engine.editor.Editor.load", lambda *a, **k: loads.append(a))
    assert main(["edit", str(source), "extract drums", "-o", str(source / "out.wav")]) == 1
    assert f"{source} is a file, not a folder" in capsys.readouterr().err

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)  # a read-only folder, even for root
    assert main(["edit", str(source), "extract drums", "-o", str(tmp_path / "out.wav")]) == 1
    assert f"cannot write to the output folder {tmp_path}: Permission denied" in capsys.readouterr().err
    assert loads == [] and source.read_bytes()


@pytest.mark.parametrize("where", ["input", "-o", "--model"])
def test_a_path_under_an_unknown_users_home_is_one_line(song, tmp_path, capsys, no_model_load, monkeypatch, where):
    """~nosuchuser/...: Path.expanduser raises RuntimeError, which every command showed as a traceback (and -o went
    through os.path's expansion, which leaves it: a folder named ~imusic-nosuchuser was made in the working folder)."""
    monkeypatch.chdir(tmp_path)
    stray = "~imusic-nosuchuser/a.wav"
    args = {"input": [stray, "extract drums"], "-o": [str(song), "extract drums", "-o", stray]}.get(
        where, [str(song), "extract drums", "--model", "~imusic-nosuchuser/model"]
    )
    assert main(["edit", *args]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "~imusic-nosuchuser names no user with a home folder here" in err.splitlines()[-1]
    assert not (tmp_path / "~imusic-nosuchuser").exists()


def test_an_output_folder_under_home_is_a_folder_there_not_a_folder_named_tilde(song, tmp_path, monkeypatch):
    from bridge.edit_cmd import choose_output

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home" / "stems").mkdir(parents=True)
    into_folder = choose_output(song, "extract drums", "~/stems/", force=False)
    assert into_folder.parent == tmp_path / "home" / "stems" and into_folder.suffix == ".wav"
    assert choose_output(song, "extract drums", "~/drums", force=False) == tmp_path / "home" / "drums.wav"
    assert not (tmp_path / "~").exists()


def test_a_name_chosen_here_that_another_run_took_meanwhile_gives_the_next_free_one(
    song, tiny_model_dir, monkeypatch, capsys
):
    """Two `imusic edit` runs of one input without -o: the second to finish used to throw its edit away."""
    from engine.editor import Editor

    chosen = song.parent / "results" / "song.extract_drums.wav"
    real_edit = Editor.edit

    def another_run_finishes_first(self, *args, **kwargs):
        chosen.parent.mkdir(exist_ok=True)
        chosen.write_bytes(b"the other run's result")
        return real_edit(self, *args, **kwargs)

    monkeypatch.setattr(Editor, "edit", another_run_finishes_first)
    assert edit(song, tiny_model_dir) == 0
    written = Path(capsys.readouterr().out.strip())
    assert written == chosen.with_name("song.extract_drums-2.wav") and sf.info(written).frames == int(1.5 * RATE)
    assert chosen.read_bytes() == b"the other run's result"


def test_a_link_to_nowhere_at_the_output_is_a_taken_name_said_before_the_model_loads(
    song, tmp_path, capsys, no_model_load
):
    dangling = tmp_path / "dl.wav"
    dangling.symlink_to(tmp_path / "nowhere" / "x.wav")
    assert edit(song, Path("unused"), "-o", str(dangling)) == 1
    assert "exists: choose another name or pass --force" in capsys.readouterr().err
    assert dangling.is_symlink()
