"""The `imusic` entry point: usage errors are one line plus usage, exit code 2."""

import subprocess
import sys

import pytest

from bridge.cli import COMMANDS, main


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
