"""Bad input named truly: messages found wrong or missing by a review of every command (2026-12-07)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from test_bridge_support import FakeEditor, start_server

from bridge import audio_read, protocol
from bridge.cli import main
from bridge.client import Client, RemoteError
from engine.errors import AudioError, ConfigError, DataError, InstructionError
from engine.instructions import MAX_INSTRUCTION, check_not_empty


def test_nan_samples_are_placed_in_seconds_of_the_file_not_in_the_times_as_sent(tmp_path):
    audio = np.zeros((8000, 1), dtype=np.float32)
    audio[6000] = np.nan
    sf.write(tmp_path / "nan.wav", audio, 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"NaN or infinite samples in 0-1 s"):
        audio_read.read_region(tmp_path / "nan.wav", 0.0, -1.0)  # -1: to the end, which is 1 s


def test_a_file_where_a_folder_is_wanted_is_named_as_a_file(tmp_path, capsys):
    from engine.train.data.layouts import scan

    a_file = tmp_path / "stereo.wav"
    a_file.write_bytes(b"RIFF")
    with pytest.raises(DataError, match="stereo.wav is a file, not a folder"):
        scan(a_file)
    assert main(["reaper", "install", "--resource-path", str(a_file)]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(DataError, match="nowhere does not exist"):
        scan(tmp_path / "nowhere")


@pytest.mark.parametrize("host", ["not a host!!", ""])
def test_a_host_that_no_client_could_reach_is_a_usage_error_at_install(tmp_path, host, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["reaper", "install", "--resource-path", str(tmp_path), "--host", host])
    assert stop.value.code == 2 and "must be a host name or address" in capsys.readouterr().err
    assert protocol.host_argument("studio-pc.local") == "studio-pc.local"
    assert protocol.host_argument("::1") == "::1"


def test_an_instruction_past_the_limit_is_one_short_line_everywhere():
    pasted = "extract drums " * 200
    with pytest.raises(InstructionError) as refused:
        check_not_empty(pasted)
    assert f"the limit is {MAX_INSTRUCTION}" in str(refused.value) and len(str(refused.value)) < 100


def test_an_empty_instruction_lists_the_loaded_models_own_stems(tmp_path):
    editor = FakeEditor()
    editor.card = {"stems": ["Drums", "Bass"]}
    song = tmp_path / "song.wav"
    sf.write(song, np.zeros(16000, dtype=np.float32), 16000)
    server = start_server(tmp_path, tmp_path, editor=editor)
    try:
        with Client("127.0.0.1", server.port) as client, pytest.raises(RemoteError) as refused:
            client.edit(str(song), 0.0, -1.0, " ", timeout=10)
    finally:
        server.stop()
    assert refused.value.code == "bad_instruction" and "piano" not in str(refused.value).lower()
    assert "drums" in str(refused.value).lower()


def test_an_unknown_dtype_names_the_spellings_the_help_shows():
    from engine.device import parse_dtype

    with pytest.raises(ConfigError, match="float32, bfloat16, float16"):
        parse_dtype("int8")


def test_a_batch_dry_run_refuses_what_the_real_run_refuses(tmp_path, capsys):
    session = tmp_path / "session"
    session.mkdir()
    sf.write(session / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(tmp_path / "out"), "--dry-run"]
    assert main([*argv, "--server", "--raw"]) == 1
    assert "--raw is not available with --server" in capsys.readouterr().err
    for bad in ("99999", "foo:bar"):
        assert main([*argv, "--server", bad]) == 1
        assert "give [HOST:]PORT" in capsys.readouterr().err


def test_a_failed_edit_or_batch_leaves_no_folder_it_made(tmp_path, capsys):
    song = tmp_path / "song.wav"
    sf.write(song, np.zeros(16000, dtype=np.float32), 16000)
    out = tmp_path / "o6" / "deeper"
    argv = ["edit", str(song), "extract drums", "-o", str(out / "a.wav"), "--model", str(tmp_path / "nonexistent")]
    assert main(argv) == 1
    assert not (tmp_path / "o6").exists()
    session = tmp_path / "session"
    session.mkdir()
    song.rename(session / "song.wav")
    argv = ["batch", str(session), "--edit", "extract drums", "-o", str(tmp_path / "bo3"), "--server", "127.0.0.1:9"]
    assert main(argv) == 1
    assert "no imusic engine answers" in capsys.readouterr().err
    assert not (tmp_path / "bo3").exists()  # its lock file went with it
    # a folder that was there before keeps what it held
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    assert main([*argv[:5], str(tmp_path / "kept"), *argv[6:]]) == 1
    assert (tmp_path / "kept" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("given", "says"),
    [("-", "name the result file"), (".wav", "name the result file"), ("/dev/null", "not a regular file")],
)
def test_an_output_that_names_no_file_of_its_own_is_refused(given, says):
    from engine.files import result_file_path

    with pytest.raises(ConfigError, match=says):
        result_file_path(given)


def test_a_trailing_dot_is_not_kept_in_the_result_name(tmp_path):
    from engine.files import result_file_path

    assert result_file_path(tmp_path / "x.") == tmp_path / "x.wav"
    assert result_file_path(tmp_path / "take.2") == tmp_path / "take.2.wav"


def test_a_batch_refused_for_its_server_address_makes_no_output_folder(tmp_path, capsys):
    session = tmp_path / "session"
    session.mkdir()
    sf.write(session / "a.wav", np.zeros(16000, dtype=np.float32), 16000)
    out = tmp_path / "new" / "deeper"
    for extra in (["--server", "99999"], ["--server", "--raw"]):
        assert main(["batch", str(session), "--edit", "extract drums", "-o", str(out), *extra]) == 1
        assert not (tmp_path / "new").exists(), extra
