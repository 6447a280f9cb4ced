"""`imusic edit`: edit one audio file (or a region of it) in-process, write the result atomically, optionally play it.

    imusic edit song.wav "extract drums" -o drums.wav [--start 10 --end 20] [--seed N] [--takes N] [--raw]
                [--play | --ab] [--output-device NAME|INDEX] [--model PATH] [--device cpu|cuda] [--force]

Without -o the result goes to `results/<input>.<edit>.wav` beside the input under a name not yet taken. The result is
never written over the input, and an existing OUT is replaced only with --force. Playback problems (no sound card,
no PortAudio) are one line on stderr: the edit itself has already succeeded and the exit code stays 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from bridge.cli import JobProgress, add_edit_options, add_region_options, report_edit
from bridge.protocol import TO_END, EditOptions
from engine.errors import AudioError, ConfigError, ImusicError
from engine.files import (
    AUDIO_FORMATS,
    check_text_path,
    folders_to_make,
    remove_made_folders,
    user_path,
    writable_folder,
)
from engine.modes import LAYER
from engine.weights.loader import add_model_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bridge.playback import AB_SEGMENT_SECONDS

    parser.add_argument("input", help=f"audio file to edit ({AUDIO_FORMATS})")
    parser.add_argument("instruction", help='what to do, e.g. "extract drums", "no bass", "add piano"')
    parser.add_argument("-o", "--output", default=None, help="result file or folder (default: results/ beside INPUT)")
    add_region_options(parser)
    add_edit_options(parser)
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists (never the input)")
    listen = parser.add_mutually_exclusive_group()
    listen.add_argument("--play", action="store_true", help="play the result when done")
    listen.add_argument(
        "--ab",
        action="store_true",
        help=f"alternate source and result every {AB_SEGMENT_SECONDS:g} s until a key is pressed",
    )
    parser.add_argument("--output-device", default=None, help="audio output for --play/--ab, by name or index")
    add_model_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def choose_output(input_path: Path, instruction: str, output: str | None, force: bool) -> Path:
    """Where the result goes; ConfigError for the input itself, or an existing file without --force."""
    from bridge.audio_write import names_folder, unique_result_path
    from engine.files import result_file_path

    if output:
        user_path(output)  # ~someone unknown here is said (os.path's leaves it, and a folder of that name was made)
    output = os.path.expanduser(output) if output else None  # "~/stems/" keeps its separator: still a folder
    try:
        if not output or names_folder(output):
            return unique_result_path(input_path, instruction, output)  # a fresh name: nothing to refuse
        target = result_file_path(output)
        if _same_file(target, input_path) or target.resolve() == input_path.resolve():
            raise ConfigError(f"{target} is the input file: choose another output, the input is never overwritten")
        if os.path.lexists(target) and not force:  # a link to nowhere is a name taken too
            raise ConfigError(f"{target} exists: choose another name or pass --force to replace it")
    except (OSError, RuntimeError) as exc:  # a name too long for the file system, a loop of symbolic links
        raise ConfigError(f"cannot write to {output}: {getattr(exc, 'strerror', None) or exc}") from None
    return target


def audition(source: Any, result: Any, sample_rate: int, *, ab: bool, device: str | None) -> None:
    """Play the result (or A/B it against the source); playback problems are one line on stderr, never fatal."""
    from bridge import playback

    try:
        player = playback.get_player(device)
        with playback.KeyWatcher() as keys:
            if ab:
                sys.stderr.write(
                    f"A/B: source and result alternate every {playback.AB_SEGMENT_SECONDS:g} s; press a key to stop\n"
                )
                playback.play_ab(
                    player,
                    source,
                    result,
                    sample_rate,
                    should_stop=keys.pressed,
                    on_segment=lambda label, start, end: sys.stderr.write(f"  {label:6s} {start:6.1f}-{end:.1f} s\n"),
                )
            else:
                sys.stderr.write("playing the result; press a key to stop\n")
                playback.play_clip(player, result, sample_rate, keys.pressed)
    except ImusicError as exc:
        sys.stderr.write(f"imusic edit: playback unavailable: {exc}\n")


def run(args: argparse.Namespace) -> int:
    """Check the paths and the region, load the model, edit through the one edit path, then play if asked."""
    from bridge import audio_read

    check_text_path(args.input, "the input file")
    if args.output:
        check_text_path(args.output, "the output")
    input_path = user_path(args.input)
    output = choose_output(input_path, args.instruction, args.output, args.force)
    # bad files fail before the model loads
    audio_read.region_frames(audio_read.probe(input_path), args.start, args.end)
    made = folders_to_make(output.parent)
    writable_folder(output.parent)  # a read-only folder, or a file in the way, is said before the model loads
    try:
        return _edit(args, input_path, output, made)
    except BaseException:
        remove_made_folders(made)  # a failed edit leaves no empty folder behind (an unknown model, a bad rate)
        raise


def _edit(args: argparse.Namespace, input_path: Path, output: Path, made: list[Path]) -> int:
    from bridge import audio_read
    from bridge.editing import edit_region

    if made:
        sys.stderr.write(f"imusic edit: made the folder {output.parent}\n")
    from engine.instructions import parse_instruction
    from engine.modes import check_mode
    from engine.weights import peek_card

    # The instruction and the mode are checked against the model's card before its weights load (seconds).
    check_mode(parse_instruction(args.instruction, peek_card(args.model, args.adapter)).op, args.mode)

    from engine.editor import Editor

    editor = Editor.load(args.model, adapter=args.adapter, device=args.device, dtype=args.dtype)
    parsed = editor.parse(args.instruction)  # an unknown instruction or mode fails here, before any compute
    check_mode(parsed.op, args.mode)
    progress = JobProgress("editing", enabled=not args.no_progress and sys.stderr.isatty())
    from bridge.audio_write import names_folder

    # A name this command chose (no -o, or -o FOLDER) that another run took meanwhile: the next free one, as the
    # server does; a name the user gave is theirs, and is only replaced with --force.
    chosen_here = not args.output or names_folder(os.path.expanduser(args.output))
    done = None
    try:
        done = edit_region(
            editor, input_path, args.start, args.end, args.instruction, output,
            options=EditOptions.from_args(args), overwrite=args.force, progress=progress,
            on_exists=(lambda _taken: choose_output(input_path, args.instruction, args.output, False))
            if chosen_here else None,
        )  # fmt: skip
    except FileExistsError:
        raise ConfigError(f"{output} appeared while editing: choose another name or pass --force") from None
    except OSError as exc:  # the input gone since it was checked; no permission or a full disk for the result
        if exc.filename is not None and os.path.abspath(exc.filename) == os.path.abspath(input_path):
            raise AudioError(f"cannot read {input_path}: {exc.strerror or exc}") from None
        raise ConfigError(f"cannot write {output}: {exc.strerror or exc}") from None  # the write is atomic
    finally:
        progress.close(done=done is not None)  # 100 % once the result is in place
    print(done.output_path)
    report_edit("imusic edit", parsed.label, done.seed, done.info, done.seconds)
    if args.play or args.ab:
        source, sample_rate = audio_read.read_region(input_path, args.start, args.end)
        result, _ = audio_read.read_region(done.output_path, 0.0, TO_END)
        if done.info.get("mode") == LAYER:  # the added part alone: heard, as in a project, with the recording
            result = source + result
        audition(source, result, sample_rate, ab=args.ab, device=args.output_device)
    return 0
