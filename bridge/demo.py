"""`imusic demo`: the main job end to end, as a producer would see it, on one command.

1. Render a held-out song with `engine.train.data.synth` (song seed HELD_OUT_SEED + --seed: training sets use small
   seeds, so this song was never heard in training) at 44.1 kHz stereo, like a producer's file: OUT/input.wav, and its
   true stems OUT/truth/<stem>.wav (the input is exactly their sum).
2. Start the real `imusic serve` as a subprocess on a loopback port (journal OUT/.journal, allowed root OUT, log
   OUT/server.log) and wait until its ping says ready.
3. Send the edits through bridge.client, as a REAPER action does, one job per edit for the whole clip.
4. Write the results (OUT/<edit>.wav) and a before/after picture (OUT/before_after.png).
5. Stop the server with SIGTERM and print a summary table and where everything is.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge import protocol
from bridge.cli import JobProgress
from bridge.serve_process import JOURNAL_NAME, LOG_NAME, READY_TIMEOUT_S, ServerProcess
from engine import instructions
from engine.errors import ConfigError, InstructionError, ResourceError
from engine.eval.acceptance import REGION_RATE
from engine.files import edit_slug, user_path
from engine.modes import MASK, RESYNTH
from engine.options import seed_option

# Training data sets are made with `imusic data synth --seed S` for small S (0, 1, ...); a song's generator is seeded
# by (seed, track number), so seeds from here on give songs no training stage used.
HELD_OUT_SEED = 1_000_003
DEMO_RATE = REGION_RATE  # a producer's file, not the model's rate: the engine resamples both ways
DEFAULT_EDITS = ("extract drums", "remove bass", "extract bass", "add piano")
# Every edit in the default mode (mask: keeps the recording) and in the paper's (resynth); the add's layer mode is
# the mask's add less the recording, nothing a listener would hear apart from it in a file
DEMO_MODES = (MASK, RESYNTH)
# Stereo placement of the stems (linear pan, L = (1 - p) s, R = (1 + p) s: the channel mean is the stem itself, so the
# model's mono view of input.wav is exactly the song's mix). Drums and bass stay in the centre, as in most mixes.
_CENTRED = ("drums", "bass")
_MAX_PAN = 0.35
# What the demo writes in its folder besides the results (OUT/<edit>.wav) and the server's journal and log
INPUT_FILE = "input.wav"  # the song, as a producer's file
TRUTH_DIR = "truth"  # its true stems, <stem>.wav
PICTURE_FILE = "before_after.png"


# ------------------------------------------------------------------------------------------------------------- model


def check_model(model: str | None) -> Path:
    """The model's local path; CheckpointError (one clear line) when it is missing. Imports no torch."""
    from engine.weights import resolve_source

    return resolve_source(model)


def model_stems(path: Path) -> list[str]:
    """Stems the model can edit, lower case, as loading will read them (engine.weights.peek_card); the official four
    when unknown."""
    from engine.weights import peek_card

    stems = (peek_card(path) or {}).get("stems")
    if isinstance(stems, list) and stems:
        return [str(stem).lower() for stem in stems]
    return list(instructions.OFFICIAL_STEM_WORDS)


def choose_edits(stems: list[str], song_stems: list[str]) -> list[str]:
    """The default edits this model supports; "add" names a stem the song lacks when there is one."""
    edits = [edit for edit in DEFAULT_EDITS if not edit.startswith("add ") and edit.split()[-1] in stems]
    missing = [stem for stem in stems if stem not in song_stems]
    add = missing[0] if missing else ("piano" if "piano" in stems else (stems[0] if stems else ""))
    if add:
        edits.append(instructions.instruction_text("add", add))
    return edits


def result_name(edit: str) -> str:
    """The file name of an edit's result: "extract drums" -> "extract_drums"."""
    return edit_slug(edit)


# -------------------------------------------------------------------------------------------------------- the clip


@dataclass
class Clip:
    """The held-out song: its stereo mix [2, N] and true stems [2, N] by stem name, at `sample_rate`."""

    audio: np.ndarray
    sample_rate: int
    stems: dict[str, np.ndarray]
    song_seed: int
    info: dict[str, Any] = field(default_factory=dict)


def render_clip(seconds: float, seed: int, keep: list[str] | None = None) -> Clip:
    """Synthesize one song with the held-out seed at DEMO_RATE and place its stems in stereo.

    `keep`: the stems the model knows (its training mixes held only those); the song's other parts are left out,
    unless that would leave nothing."""
    import soundfile as sf

    from engine.train.data.layouts import scan
    from engine.train.data.stems import caption_word
    from engine.train.data.synth import MIX_PEAK, synthesize

    song_seed = HELD_OUT_SEED + seed
    frames = int(round(seconds * DEMO_RATE))
    mono: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="imusic-demo-") as tmp:
        synthesize(Path(tmp) / "song", 1, seed=song_seed, seconds=seconds, sample_rate=DEMO_RATE, progress=False)
        for song in scan(Path(tmp) / "song", "slakh").songs:  # read as every data tool reads the layout: one song
            meta = song.info
            for stem_file in song.stems:
                audio, _ = sf.read(str(stem_file.path), dtype="float32", always_2d=True)
                audio = audio.mean(axis=1)[:frames]  # [n]
                audio = np.pad(audio, (0, frames - audio.shape[0]))
                # Two parts of one class (two guitars) are one stem to a producer.
                stem = result_name(caption_word(stem_file.cls))
                mono[stem] = mono.get(stem, 0) + audio
    if keep and any(stem in keep for stem in mono):
        mono = {stem: audio for stem, audio in mono.items() if stem in keep}
    rng = np.random.default_rng([song_seed, 7])
    stems: dict[str, np.ndarray] = {}
    for stem, audio in mono.items():
        pan = 0.0 if stem in _CENTRED else float(rng.uniform(-_MAX_PAN, _MAX_PAN))
        stems[stem] = np.stack([(1.0 - pan) * audio, (1.0 + pan) * audio]).astype(np.float32)  # [2, N]
    mix = np.sum(list(stems.values()), axis=0) if stems else np.zeros((2, frames), np.float32)
    peak = float(np.abs(mix).max()) if mix.size else 0.0
    if peak > MIX_PEAK:  # panning can push a channel over full scale: scale mix and stems together
        scale = np.float32(MIX_PEAK / peak)
        stems = {stem: audio * scale for stem, audio in stems.items()}
        mix = mix * scale
    info = {"seconds": seconds, "tempo": meta.get("tempo"), "style": meta.get("style"), "key": meta.get("key")}
    return Clip(mix.astype(np.float32), DEMO_RATE, stems, song_seed, info)


def write_clip(clip: Clip, out: Path) -> Path:
    """OUT/input.wav and OUT/truth/<stem>.wav as 24-bit WAV (what a DAW exports), each written whole or not at all;
    returns the input path."""
    from engine.files import write_audio_atomic

    truth = out / TRUTH_DIR
    truth.mkdir(parents=True, exist_ok=True)
    for stem, audio in clip.stems.items():
        write_audio_atomic(truth / f"{stem}.wav", audio.T, clip.sample_rate, subtype="PCM_24")
    path = out / INPUT_FILE
    write_audio_atomic(path, clip.audio.T, clip.sample_rate, subtype="PCM_24")
    return path


# ------------------------------------------------------------------------------------------------------- the edits


@dataclass
class Row:
    """One edit's outcome for the summary table."""

    edit: str
    mode: str  # "mask" (keeps the recording) or "resynth" (the model's output)
    status: str  # "done" or the error code
    seconds: float | None = None
    lufs: float | None = None
    path: Path | None = None
    message: str = ""
    notes: tuple[str, ...] = ()  # the result's warnings (info["warnings"]), e.g. the model card's own verdict


def result_file(edit: str, mode: str) -> str:
    """`extract_drums.wav` for the default mode (mask), `extract_drums.resynth.wav` for the other."""
    return f"{result_name(edit)}.wav" if mode == DEMO_MODES[0] else f"{result_name(edit)}.{mode}.wav"


def run_edit(client: Any, server: ServerProcess, input_path: Path, edit: str, mode: str, out: Path, seed: int) -> Row:
    """One edit of the whole clip through the client; an engine error becomes an error row, not an exception."""
    from bridge.client import NoReply, RemoteError

    target = out / result_file(edit, mode)
    target.unlink(missing_ok=True)  # the server never writes over a file; a rerun of the demo replaces its results
    bar = JobProgress(f"{edit} ({mode})")
    done, job_id = False, None
    try:
        whole = (str(input_path), 0.0, protocol.TO_END)
        job_id = client.submit(*whole, edit, output_path=str(target), seed=seed, mode=mode)
        while True:
            try:
                result = client.wait(job_id, timeout=5.0, on_progress=bar)
                break
            except NoReply:
                server.check_alive(f"during '{edit}'")  # a silent server is busy or gone: find out which
        done = True
    except RemoteError as exc:
        return Row(edit, mode, exc.code or "error", message=str(exc))
    except KeyboardInterrupt:
        if job_id is not None:
            client.send(protocol.CANCEL, job_id)  # the server also gets Ctrl-C from the terminal; this covers the rest
        raise
    finally:
        bar.close(done)
    info = result.info
    bridge_info = info.get("bridge") or {}
    levels = info.get("levels") or {}
    seconds = bridge_info.get("job_s", (info.get("timings") or {}).get("total"))
    notes = tuple(str(note) for note in info.get("warnings") or ())
    return Row(
        edit, mode, "done", _number(seconds), _number(levels.get("result_lufs")), Path(result.output_path), notes=notes
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ---------------------------------------------------------------------------------------------- picture and table


def truth(clip: Clip, edit: str) -> np.ndarray | None:
    """What a perfect edit of the clip gives (engine.instructions.edit_pair): the stem (extract), the mix without it
    (remove); None where the demo has no rendering of it (add: the added part was never rendered; a stem the song
    lacks; words the official vocabulary does not parse)."""
    try:
        parsed = instructions.parse_instruction(edit, {"stems": list(clip.stems)})  # the song's own stems
    except InstructionError:
        return None
    stem = clip.stems.get(parsed.stem.lower())
    if stem is None or parsed.op == "add":
        return None
    return instructions.edit_pair(parsed.op, stem, clip.audio - stem)[1]


def write_picture(clip: Clip, rows: list[Row], path: Path) -> Path | None:
    """The input, then one row per edit: the true result beside each mode's result (engine.eval.plots); None when
    nothing finished."""
    from bridge import audio_read
    from engine.eval.plots import plot_spectrogram_grid

    grid: list[tuple[str, list[tuple[str, np.ndarray | None]]]] = [("input", [("input (stereo mix)", clip.audio)])]
    for edit in dict.fromkeys(row.edit for row in rows):
        cells: list[tuple[str, np.ndarray | None]] = [("truth", truth(clip, edit))]
        for row in (row for row in rows if row.edit == edit):
            audio = None
            if row.path is not None:
                audio, rate = audio_read.read_region(row.path, 0.0, protocol.TO_END)
                if rate != clip.sample_rate:  # the server keeps the input's rate; anything else would misdraw time
                    raise ResourceError(f"{row.path} is at {rate} Hz, the input at {clip.sample_rate} Hz")
            cells.append((f"{row.mode}" + ("" if audio is not None else f": {row.status}"), audio))
        grid.append((edit, cells))
    if not any(row.path is not None for row in rows):
        return None
    title = "imusic demo: before / after, each edit's truth and both modes (log-mel, 16 kHz)"
    return plot_spectrogram_grid(grid, clip.sample_rate, path, title=title)


def summary_table(rows: list[Row]) -> str:
    """A plain-text table: edit, mode, status, seconds, LUFS, file."""
    header = ("edit", "mode", "status", "seconds", "LUFS", "file")
    lines = [
        (
            row.edit,
            row.mode,
            row.status,
            "-" if row.seconds is None else f"{row.seconds:.2f}",
            "-" if row.lufs is None else f"{row.lufs:.1f}",
            str(row.path) if row.path else row.message,
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(cells[:5], widths, strict=True)) + "  " + cells[5]
        for cells in [header, *lines]
    )


# ---------------------------------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`imusic demo [--model PATH] [-o OUT] [--seconds S] [--seed N] [--edit "..." ...] [--port N]`"""
    parser.add_argument("--model", default=None, help="model directory or hub name (default: the embedded model)")
    parser.add_argument("-o", "--out", default="demo_out", help="output folder (default ./demo_out)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the held-out clip (default 10)")
    parser.add_argument(
        "--seed", type=seed_option, default=0, help=f"song and edit seed (song seed {HELD_OUT_SEED:_} + N; default 0)"
    )
    parser.add_argument(
        "--edit",
        action="append",
        default=None,
        metavar="TEXT",
        help='an edit to make (repeatable; default: "extract drums", "remove bass", "extract bass", "add ...")',
    )
    parser.add_argument(
        "--port", type=protocol.listen_port_argument, default=0, help="server UDP port (default: a free one)"
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=READY_TIMEOUT_S,
        help=f"seconds to wait for the model to load (default {READY_TIMEOUT_S:g})",
    )


DEMO_MARK = ".imusic-demo"  # in a folder the demo writes: a rerun may replace what an earlier demo left there


def _check_folder(out: Path) -> None:
    """ConfigError unless `out` is new, empty, or an earlier demo's (its mark, or the server log and input of a demo
    from before the mark): the demo replaces input.wav, truth/*.wav and its result names, which a producer's own
    folder may hold."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"the output {out} is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if (out / DEMO_MARK).exists() or ((out / LOG_NAME).is_file() and (out / INPUT_FILE).is_file()):
        return
    raise ConfigError(
        f"{out} holds files no earlier demo wrote, and the demo replaces the files it writes there ({INPUT_FILE}, "
        f"{TRUTH_DIR}/, the results): give it a new or empty folder"
    )


def _clear_previous(out: Path, names: list[str]) -> None:
    # Only what the demo itself writes: a rerun into the same folder starts clean, nothing else is touched.
    for name in [INPUT_FILE, PICTURE_FILE, LOG_NAME, *names]:
        (out / name).unlink(missing_ok=True)
    if (out / JOURNAL_NAME).is_dir():
        shutil.rmtree(out / JOURNAL_NAME)  # a fresh server must not resume an earlier run's jobs
    if (out / TRUTH_DIR).is_dir():
        for stem in (out / TRUTH_DIR).glob("*.wav"):
            stem.unlink()


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every edit finished, 1 otherwise (the results that did finish are still written)."""
    if not 1.0 <= args.seconds <= 600.0:
        raise ConfigError(f"--seconds must be between 1 and 600, got {args.seconds:g}")
    model_path = check_model(args.model)  # first: a missing model is one line, before any work
    out = user_path(args.out).resolve()
    _check_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / DEMO_MARK).touch()
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder {out}: {exc}") from None
    edits = [edit.strip() for edit in args.edit or [] if edit.strip()]
    if args.edit is not None and not edits:
        raise ConfigError("--edit needs an instruction, e.g. --edit 'extract drums'")

    started = time.perf_counter()
    stages: dict[str, float] = {}  # seconds per stage, for the last line
    print(f"imusic demo: rendering a held-out {args.seconds:g} s song (seed {HELD_OUT_SEED + args.seed})...")
    clip = render_clip(args.seconds, args.seed, keep=model_stems(model_path))
    stages["render"] = time.perf_counter() - started
    if not edits:
        edits = choose_edits(model_stems(model_path), list(clip.stems))
    names = [result_file(edit, mode) for edit in edits for mode in DEMO_MODES]
    if len(set(names)) != len(names):
        raise ConfigError("two edits would write the same file; give each --edit once")
    _clear_previous(out, names)
    input_path = write_clip(clip, out)

    from bridge.client import Client

    mark = time.perf_counter()
    server = ServerProcess(args.model, out, args.port)
    rows: list[Row] = []
    try:
        port = server.wait_listening(timeout=120.0)
        print(f"imusic demo: engine server (pid {server.pid}) on {server.host}:{port}; loading the model...")
        with Client(server.host, port) as client:
            pong = server.wait_ready(client, args.ready_timeout)
            version, model_name, device = pong.version, pong.model, pong.device
            print(f"imusic demo: server ready: model {model_name} on {device} (imusic {version})")
            stages["server ready"], mark = time.perf_counter() - mark, time.perf_counter()
            for edit in edits:
                for mode in DEMO_MODES:  # the default (mask: keeps the recording), then the paper's re-synthesis
                    rows.append(run_edit(client, server, input_path, edit, mode, out, args.seed))
            stages["edits"] = time.perf_counter() - mark
    finally:
        code = server.stop()
    if code not in (0, None):
        print(f"imusic demo: the server exited with code {code}; see {server.log_path}", file=sys.stderr)
    mark = time.perf_counter()
    picture = write_picture(clip, rows, out / PICTURE_FILE)
    stages["picture"] = time.perf_counter() - mark

    print()
    print(summary_table(rows))
    for note in dict.fromkeys(note for row in rows for note in row.notes):
        print(f"note: {note}")
    print()
    stems = ", ".join(clip.stems) or "none"
    song = ", ".join(str(v) for v in (clip.info.get("style"), clip.info.get("key")) if v)
    tempo = f", {clip.info['tempo']:g} bpm" if isinstance(clip.info.get("tempo"), (int, float)) else ""
    print(
        f"input    {input_path}  ({clip.sample_rate} Hz stereo, {args.seconds:g} s, song seed {clip.song_seed}"
        f"{'; ' + song if song else ''}{tempo})"
    )
    print(f"truth    {out / TRUTH_DIR}  ({stems})")
    if picture is not None:
        print(f"picture  {picture}")
    print(f"log      {server.log_path}")
    print(
        f"imusic demo: {sum(r.status == 'done' for r in rows)} of {len(rows)} results done "
        f"({len(edits)} edits x {len(DEMO_MODES)} modes) in "
        f"{time.perf_counter() - started:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in stages.items())})"
    )
    failed = [row for row in rows if row.status != "done"]
    for row in failed:
        print(f"imusic demo: '{row.edit}' ({row.mode}) failed ({row.status}): {row.message}", file=sys.stderr)
    return 1 if failed else 0
