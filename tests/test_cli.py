"""The `imusic` entry point: usage errors are one line plus usage, exit code 2."""

import subprocess
import sys

import pytest
from test_bridge_support import imported_by

from bridge.cli import COMMANDS, build_parser, main
from bridge.protocol import EditOptions


def test_unknown_subcommand_exits_2_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: imusic" in err
    assert "invalid choice: 'frobnicate'" in err


def test_no_subcommand_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "usage: imusic" in capsys.readouterr().err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_console_script_runs_as_module():
    proc = subprocess.run([sys.executable, "-m", "bridge.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith("imusic ")


def test_the_version_is_one_number_for_the_package_the_cli_and_the_wire():
    import importlib.metadata
    import re

    import bridge
    import engine
    from reaper_scripts.installer import ACTIONS, action_source

    assert importlib.metadata.version("instruct-musicgen-daw") == engine.__version__ == bridge.__version__
    # the REAPER actions' ReaPack headers carry it too (ReaPack reads them): a release bumps the copied ones with it

    versions = {a.script: re.findall(r"^# @version (\S+)$", action_source(a).decode(), re.M) for a in ACTIONS}
    assert versions and versions == {name: [engine.__version__] for name in versions}


@pytest.mark.parametrize(
    ("argv", "prog", "message"),
    [
        (["weights", "info"], "imusic weights info", "the following arguments are required: path"),
        (["edit", "song.wav"], "imusic edit", "the following arguments are required: instruction"),
        (["weights", "frobnicate"], "imusic weights", "invalid choice: 'frobnicate'"),
    ],
)
def test_missing_argument_or_unknown_action_is_one_error_line_and_exit_2(capsys, argv, prog, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {prog}")
    # the usage, then exactly one error line, and no traceback
    last = err.splitlines()[-1]
    assert last.startswith(f"{prog}: error: ") and message in last
    assert sum(line.startswith(prog + ": error") for line in err.splitlines()) == 1
    assert "Traceback" not in err


def test_no_command_help_imports_torch():
    # `--help` must answer at once: torch (1-2 s to import) is loaded only where a command runs
    code = (
        "import contextlib, io, sys\n"
        "from bridge.cli import COMMANDS, main\n"
        "for name in COMMANDS:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main([name, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    if 'torch' in sys.modules:\n"
        "        print(name)\n"
        "        break\n"
        "else:\n"
        "    print('none')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "none", f"`imusic {proc.stdout.strip()} --help` imported torch"


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--stage", "codec", "--data", "{tmp}", "-o", "{file}"],
        ["train", "--recipe", "embedded", "--budget-minutes", "1", "--scale", "tiny", "-o", "{file}"],
        ["eval", "--data", "{tmp}", "--task", "extract", "-o", "{file}"],
        ["data", "synth", "--tracks", "2", "-o", "{file}"],
    ],
)
def test_a_folder_output_that_names_a_file_is_one_line(argv, tmp_path, capsys):
    from bridge.cli import main

    file = tmp_path / "a-file"
    file.write_text("mine")
    assert main([a.format(tmp=tmp_path, file=file) for a in argv]) == 1
    assert capsys.readouterr().err.strip().endswith(f"{file} is a file; -o takes a folder")
    assert file.read_text() == "mine"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["edit", "in.wav", "extract drums", "--seed", "3", "--takes", "2", "--mode", "resynth", "--raw"],
         EditOptions(3, 2, True, "resynth")),
        (["batch", "session", "-o", "out", "--edit", "remove bass", "--mode", "mask"],
         EditOptions(None, 1, False, "mask")),
        (["batch", "session", "-o", "out", "--edit", "remove bass"], EditOptions()),
        (["send", "edit", "in.wav", "add piano", "--seed", "0"], EditOptions(seed=0)),
    ],
)  # fmt: skip
def test_every_editing_command_reads_the_same_edit_options(argv, expected):
    args = build_parser(argv).parse_args(argv)
    assert EditOptions.from_args(args) == expected


def test_send_edit_has_no_raw_option(capsys):
    argv = ["send", "edit", "in.wav", "add piano", "--raw"]
    with pytest.raises(SystemExit) as exc:
        build_parser(argv).parse_args(argv)
    assert exc.value.code == 2
    assert "--raw" in capsys.readouterr().err


def test_a_jobs_progress_is_a_line_per_stage_in_a_log_a_bar_on_a_terminal_and_nothing_when_off():
    import io

    from bridge.cli import JobProgress

    log = io.StringIO()
    progress = JobProgress("extract drums (mask)", stream=log)
    for fraction, stage in ((0.0, "started"), (0.2, "editing"), (0.5, "editing"), (1.0, "writing")):
        progress(fraction, stage)
    progress.close(done=True)
    progress(1.0, "done")  # a job whose own last stage is "done" (the Editor's) is not said done twice
    progress.close(done=True)
    assert log.getvalue().splitlines() == [
        "extract drums (mask):   0.0% started", "extract drums (mask):  20.0% editing",
        "extract drums (mask): 100.0% writing", "extract drums (mask): 100.0% done",
    ]  # fmt: skip

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = JobProgress("editing", stream=screen)
    bar(0.5, "decoding")
    bar.close()
    assert "editing  50%" in screen.getvalue() and "decoding" in screen.getvalue()
    quiet = io.StringIO()
    off = JobProgress("editing", enabled=False, stream=quiet)
    off(0.5, "decoding")
    off.close(done=True)
    assert quiet.getvalue() == ""


def test_the_modules_read_before_any_model_loads_import_neither_torch_nor_numpy():
    # the recipe runs first on a bare accelerator machine and the CLI reads names from these: each stays light
    modules = ["engine.train.recipe", "engine.train.config", "engine.weights.names", "engine.weights.loader",
               "engine.eval.report", "bridge.send", "bridge.cli", "bridge.serve_process",
               "reaper_scripts.installer"]  # fmt: skip
    assert not {"numpy", "torch"} & imported_by(*modules)
