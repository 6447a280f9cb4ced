"""`imusic eval`: run the Editor over the test split for each task and write a Markdown and a JSON table.

Each task's table holds the model in both edit modes (engine/mask.py) beside the reference rows, so that it reads
without the paper (a row of the model's also holds its paired t against the identity and each non-edit, which the
verdict reads: engine.eval.verdict):
- model: the Editor's default mode, "mask" (the model's output steers a mask on the input; add: input + added part);
- resynth: the same model and seed in mode "resynth" (the paper's behaviour: the model's output is the result);
- identity: output = input (what doing nothing scores; SI-SDRi is 0 by definition);
- level only: the input at the one gain per task and metric that scores best (what a fader alone does);
- noise bed: the input plus the white or pink noise (-80 to -40 dBFS) that scores best per task and metric (what adding
  noise alone does: near-silent bins weigh in the log-mel distance, and noise can fill them);
- codec ceiling: the target encoded and decoded by the model's own codec (the best re-synthesis can do);
- ideal mask: the mask computed from the true target, then levelled as the Editor does (the best mask mode can do);
- oracle: output = target (the top of every scale).
Each clip is generated once for both modes (Editor.edit_modes), so the second mode costs no model time; but remove,
whose mask reads the stem's extraction and whose re-synthesis the removal (two generations, in one batch).
Network-free metrics (engine.eval.metrics: SI-SDR, SI-SDRi, mel SSIM, log-mel distance and the stereo image's ILD
error, all at 16 kHz) always run; the clips of engine.train.data are mono, so there the ILD error
is 0.
FAD / KL (audioldm_eval, as the official evaluation) and CLAP (frechet_audio_distance's CLAPScore) run when the user
has those packages and their networks; otherwise the report says they were skipped and why.
Keep top-level imports light: torch and the model are imported inside functions.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import AudioError, ConfigError, DataError, InstructionError, ResourceError
from engine.eval.clips import (
    EVAL_SPLITS,
    add_clip_arguments,
    check_tasks,
    clip_seed,
    held_out_clips,
    spread_indices,
    stereo_clip,
)
from engine.eval.report import (
    CEILING_ROW,
    FAILED_EDIT,
    IDEAL_MASK_ROW,
    IDENTITY_ROW,
    LEVEL_GRID,
    MODEL_ROW,
    NOISE_GRID,
    ORACLE_ROW,
    REPORT_JSON,
    REPORT_MD,
    RESYNTH_ROW,
    SPECTROGRAMS,
    markdown,
    summarize,
)
from engine.files import user_path, write_bytes_atomic, write_json_atomic
from engine.modes import DEFAULT_MODE, RESYNTH
from engine.train.data import CLIP_SECONDS, FOUR_STEMS
from engine.weights.loader import add_model_arguments

if TYPE_CHECKING:
    from engine.editor import Editor
    from engine.model.codec import Codec

LATE_BATCH = 8  # clips in the first batch of a task that starts after its deadline (imusic eval with a deadline)


def codec_roundtrip(codec: Codec, audio: np.ndarray) -> np.ndarray:
    """Audio [N] (or [C, N], each channel alone) at the codec's rate, encoded and decoded by the codec: the same
    shape (the codec ceiling)."""
    import torch

    if np.ndim(audio) == 2:
        return np.stack([codec_roundtrip(codec, channel) for channel in audio])

    wav = torch.from_numpy(np.asarray(audio, dtype=np.float32))[None, None]  # [1, 1, N]
    decoded = codec.decode(codec.encode(wav))[0, 0].cpu().numpy()  # [F * hop]
    out = np.zeros(audio.shape[-1], dtype=np.float32)
    length = min(out.shape[0], decoded.shape[0])
    out[:length] = decoded[:length]
    return out


def ideal_mask_row(
    input_audio: np.ndarray, target: np.ndarray, rate: int, task: str, raw: bool, settings: Any = None
) -> np.ndarray:
    """The ideal mask's output ([N] or [C, N] as the input): the mask from the true target, finished as the Editor
    finishes a mask (engine.mask.mask_result)."""
    from engine.mask import ideal_estimate, mask_result

    audio = np.atleast_2d(input_audio)
    out, _ = mask_result(audio, rate, ideal_estimate(audio, target, task, settings), rate, task, settings, raw=raw)
    return out if np.ndim(input_audio) == 2 else out[0]


def score_rows(
    input_audio: np.ndarray, target: np.ndarray, outputs: dict[str, np.ndarray], sample_rate: int
) -> dict[str, dict[str, float]]:
    """Metrics of every row's output ({row: audio}) against the target, plus the identity and oracle rows."""
    from engine.eval.metrics import edit_metrics, level_grid, noise_grid

    rows = {IDENTITY_ROW: input_audio, **outputs, ORACLE_ROW: target}
    scores = {name: edit_metrics(audio, input_audio, target, sample_rate) for name, audio in rows.items()}
    grids = {LEVEL_GRID: level_grid(input_audio, target, sample_rate)}
    grids[NOISE_GRID] = noise_grid(input_audio, target, sample_rate)
    return {**scores, **grids}


def score_clip(
    source: np.ndarray,
    target: np.ndarray,
    rows: dict[str, np.ndarray],
    rate: int,
    task: str,
    raw: bool,
    mask_setting: Any = None,
) -> dict[str, dict[str, float]]:
    """One clip's metrics for every row, the ideal mask's row made here: numpy only, so that a pool of processes
    can score clips while the model (and the codec ceiling) stays in the calling process."""
    rows = {**rows, IDEAL_MASK_ROW: ideal_mask_row(source, target, rate, task, raw, mask_setting)}
    return score_rows(source, target, rows, rate)


def scoring_pool(workers: int) -> Any:
    """A ProcessPoolExecutor of `workers` scoring processes, one BLAS thread each; None for 0 (score here). Spawned,
    not forked: the parent may hold CUDA state, which a forked child must not touch."""
    if not workers:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_scoring_process)


def _scoring_process() -> None:
    """A scoring worker: one BLAS thread each (the pool is the parallelism)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1)


def _record(
    edited: list,
    examples: list,
    captions: list,
    task: str,
    seed: int,
    rate: int,
    audio_dirs: dict[str, Path] | None,
    plots: tuple[Path, int],
) -> None:
    """One batch's clips into `examples`, in order, waiting for a scoring worker's figures where one makes them; their
    WAVs into `audio_dirs` (when given) and spectrograms of the first plots[1] examples into plots[0]."""
    for index, clip, instruction, source, target, rows, scores in edited:
        output = rows[MODEL_ROW]
        scores = scores.result() if hasattr(scores, "result") else scores
        examples.append(
            {
                "song": clip.song_id,
                "offset": clip.offset,
                "stem": clip.stem_name,
                "instruction": instruction.prompt,
                "seed": clip_seed(seed, index),
                **scores,
            }
        )
        captions.append(instruction.prompt)
        number = len(examples) - 1
        if audio_dirs is not None:
            for kind, audio in (("input", source), ("output", output), ("target", target)):
                # zero-padded: a listing's order is the clips' (and text.csv's captions'), 00010 after 00002
                _write_wav(audio_dirs[kind] / f"{number:05d}.wav", audio, rate)
        if number < plots[1]:
            from engine.eval.plots import plot_spectrograms

            plot_spectrograms(
                [("input", source), ("mask", output), ("resynth", rows[RESYNTH_ROW]), ("target", target)],
                rate,
                plots[0] / f"{task}_{number:03d}_{clip.song_id}.png",
                title=f"{instruction.prompt}  ({clip.song_id} @ {clip.offset:.1f} s)",
            )


def _optional_metrics(audio_dirs: dict[str, Path], captions: Sequence[str], device: str) -> tuple[dict, list[str]]:
    """FAD/KL/CLAP when the user has the networks: ({metric: value}, notes). Never raises."""
    values: dict[str, float] = {}
    notes: list[str] = []
    try:
        import torch
        from audioldm_eval import EvaluationHelper  # official evaluation's FAD (VGGish) and KL (PANNs)

        from engine.eval.metrics import EVAL_RATE

        helper = EvaluationHelper(EVAL_RATE, torch.device(device))
        found = helper.main(str(audio_dirs["output"]), str(audio_dirs["target"]), limit_num=None)
        for key, value in (found or {}).items():
            low = key.lower()
            if "frechet_audio_distance" in low or low == "fad":
                values["fad"] = float(value)
            elif "kullback_leibler" in low and "softmax" in low:
                values["kl"] = float(value)
    except ImportError:
        notes.append("FAD and KL skipped: install audioldm_eval (and its VGGish/PANNs weights) to compute them")
    except Exception as exc:  # noqa: BLE001 - a missing download or GPU must not lose the other metrics
        notes.append(f"FAD and KL failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    try:
        from frechet_audio_distance import CLAPScore  # official evaluation's CLAP (LAION music checkpoint)

        csv = audio_dirs["output"].parent / "text.csv"
        csv.write_text("caption\n" + "".join(f'"{c}"\n' for c in captions))
        clap = CLAPScore(submodel_name="music_audioset", verbose=False, enable_fusion=False)
        values["clap"] = float(
            clap.score(text_path=str(csv), audio_dir=str(audio_dirs["output"]), text_column="caption")
        )
    except ImportError:
        notes.append("CLAP skipped: install frechet_audio_distance (LAION CLAP music checkpoint) to compute it")
    except Exception as exc:  # noqa: BLE001
        notes.append(f"CLAP failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    return values, notes


def _networks_installed() -> bool:
    from importlib.util import find_spec

    return any(find_spec(name) is not None for name in ("audioldm_eval", "frechet_audio_distance"))


def _write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    from engine.eval.metrics import EVAL_RATE, resample
    from engine.files import write_audio_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    data = resample(audio, rate, EVAL_RATE).astype(np.float32)  # [N] or [C, N]
    write_audio_atomic(path, data.T if data.ndim == 2 else data, EVAL_RATE)


def _edit_group(editor: Any, group: list, rate: int, seed: int, raw: bool, skipped: list) -> list:
    """Each clip of a batch edited in the default mode and in resynth (one generation, two for a remove: Editor.
    generation): [(result, resynth)], None
    for a clip the editor refuses (recorded in `skipped`). One batch; if one clip is unusable, clip by clip."""
    if not group:
        return []
    sources = [np.atleast_2d(item[3]) for item in group]
    modes = (DEFAULT_MODE, RESYNTH)  # two rows: the model as shipped, and the paper's
    try:
        if len(group) > 1 and len({source.shape for source in sources}) == 1:
            seeds = [clip_seed(seed, item[0]) for item in group]
            done = editor.edit_batch(sources, rate, [item[2] for item in group], modes, seeds=seeds, raw=raw)
            return [tuple(edits.values()) for edits in done]
    except (AudioError, InstructionError, ResourceError):
        pass  # one clip of the batch is unusable (or its output not finite): find it below, clip by clip
    out: list = []
    for (index, clip, instruction, _, _), source in zip(group, sources, strict=True):
        try:
            edits = editor.edit_modes(source, rate, instruction, modes, seed=clip_seed(seed, index), raw=raw)
            out.append(tuple(edits.values()))
        except (AudioError, InstructionError, ResourceError) as exc:  # one clip (a NaN output) never ends the run
            skipped.append({"song": clip.song_id, "stem": clip.stem_name, "reason": str(exc)})
            if isinstance(exc, ResourceError):  # the model's failure, not the clip's (a silent input)
                skipped[-1][FAILED_EDIT] = True
            out.append(None)
    return out


def evaluate(
    data: str | Path,
    tasks: Sequence[str],
    out_dir: str | Path,
    *,
    editor: Editor | None = None,
    model: str | Path | None = None,
    adapter: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    limit: int | None = None,
    spectrograms: int = 0,
    seconds: float = CLIP_SECONDS,
    classes: str = FOUR_STEMS,
    clips_per_song: int = 1,
    seed: int = 0,
    raw: bool = False,
    save_audio: bool = False,
    optional_metrics: bool = True,
    progress: bool = True,
    split: str = "test",
    stereo: bool = False,
    batch: int = 1,
    deadline: float | None = None,
    workers: int = 0,
    input_gain_db: float = 0.0,
) -> dict[str, Any]:
    """Evaluate `editor` (or the model at `model`) on the test split; writes report.md and report.json in out_dir.

    `split="validation"` scores the validation songs instead: for choosing settings without looking at the test set.
    `stereo`: each mono clip is made a stereo session (stereo_clip) so that the ILD error measures the image.
    `input_gain_db`: each clip as a recording at another level (its input and target scaled alike): how the edits
    hold up away from the data's own level.
    `batch`: clips edited together (Editor.edit_batch; each with its own seed, as alone but for rounding).
    `deadline` (a time.time() value): each task gets an equal share of the time left, and takes another batch only
    while one more (as long as the last) ends within it (the first batch whatever the time); the report says how
    many of the planned clips were scored.
    `workers`: processes that score clips (the metrics and the ideal mask: about 0.22 s a 5 s clip on one core)
    while the next batch is edited; 0 scores here. The same outputs get the same figures either way. For many cores
    beside a GPU: on 2 cores the model's own threads already use both, and the pool was slower. The processes are
    spawned, so a script that calls this needs the usual `if __name__ == "__main__":` guard.
    """
    from engine.instructions import Instruction

    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"--batch must be a whole number of at least 1, got {batch!r}")
    if spectrograms < 0:
        raise ConfigError(f"--spectrograms must not be negative, got {spectrograms}")
    if split not in EVAL_SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    if not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"--workers must be a whole number of at least 0, got {workers!r}")
    if not (math.isfinite(input_gain_db) and abs(input_gain_db) <= 40):
        raise ConfigError(f"--input-gain-db must be from -40 to 40 dB, got {input_gain_db}")
    scale = np.float32(10 ** (input_gain_db / 20))
    tasks = check_tasks(tasks)
    if editor is None:
        from engine.editor import Editor

        editor = Editor.load(model, adapter=adapter, device=device, dtype=dtype)
    tasks = check_tasks(tasks, editor.vocab.operations)
    out_dir = user_path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rate = editor.sample_rate
    # The ideal mask uses the editor's mask design at full depth (the defaults, or the settings the editor was given):
    # the card's mask_depth is how far the model's own estimate is trusted, which the truth needs no discount for.
    mask_settings = getattr(editor, "mask_settings", None) or {}
    report: dict[str, Any] = {
        "model": editor.info,
        "data": str(data),
        "settings": {
            "seconds": seconds,
            "classes": classes,
            "seed": seed,
            "raw": raw,
            "limit": limit,
            "clips_per_song": clips_per_song,
            "split": split,
            "stereo": stereo,
            "batch": batch,
            "input_gain_db": input_gain_db,
        },
        "tasks": {},
    }
    pool = scoring_pool(workers)
    try:
        for task_number, task in enumerate(tasks):
            clips = held_out_clips(data, task, rate, seconds, classes, seed, clips_per_song, split)
            # Stems the scan could not read, and test songs that cannot give a clip: skipped, counted and reported.
            report["data_problems"] = dict(clips.catalog.problem_counts())
            skipped_songs = [{"song": song_id, "reason": reason} for song_id, reason in clips.skipped]
            # a limit's clips spread over the split, each with the seed it has in a whole run
            picks = spread_indices(len(clips), len(clips) if limit is None else limit)
            count = len(picks)
            examples, skipped, captions = [], [], []
            audio_dirs = {kind: out_dir / "audio" / task / kind for kind in ("input", "output", "target")}
            # The network metrics read WAV folders, as the official evaluation does; write them only when they can run.
            want_audio = save_audio or (optional_metrics and _networks_installed())
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=count, desc=f"eval {task}", unit="clip", dynamic_ncols=True)
            # the time this task may take: an equal share of what is left to the tasks still to score
            task_deadline = (
                None if deadline is None else time.time() + (deadline - time.time()) / (len(tasks) - task_number)
            )
            plots = (out_dir / SPECTROGRAMS, spectrograms)
            scored, batch_seconds = 0, 0.0
            pending: list = []  # the batch before: its scores are made (by the pool) while this one is edited
            # at least one batch per task, so that a report exists however short the time; then another only when it
            # should end (as long as the last one took) by the task's deadline
            while scored < count and (
                not scored or task_deadline is None or time.time() + batch_seconds <= task_deadline
            ):
                batch_started = time.time()
                size = batch  # past the task's time already: the one batch every task gets is a small one
                if task_deadline is not None and batch_started >= task_deadline:
                    size = min(batch, LATE_BATCH)
                group = []  # (index, clip, instruction, source, target) of one batch
                for index in picks[scored : scored + size]:
                    clip = clips[index]
                    if clip.quiet:  # a silent stem's "extract" scores silence against silence: no measure of an edit
                        reason = (
                            f"near-silent after {clip.redraws} redraws (is {clip.stem_name}, or the rest of the song, "
                            "silent there?)"
                        )
                        skipped.append({"song": clip.song_id, "stem": clip.stem_name, "reason": reason})
                        continue
                    try:
                        instruction = Instruction.for_card(task, clip.stem_name, editor.card)
                    except InstructionError as exc:
                        skipped.append({"song": clip.song_id, "stem": clip.stem_name, "reason": str(exc)})
                        continue
                    # [N] mono clips, or [2, N] stereo sessions made from them
                    source, target = (
                        stereo_clip(clip, task, clip_seed(seed, index)) if stereo else (clip.input, clip.target)
                    )
                    group.append((index, clip, instruction, source * scale, target * scale))
                if bar is not None:
                    bar.update(min(count, scored + size) - scored)
                scored = min(count, scored + size)
                edited = []  # per clip: what it was, its rows, and its scores (a future while a worker scores)
                for (index, clip, instruction, source, target), edits in zip(
                    group, _edit_group(editor, group, rate, seed, raw, skipped), strict=True
                ):
                    if edits is None:
                        continue
                    result, resynth = edits
                    rows = {
                        MODEL_ROW: result.audio if stereo else result.audio[0],
                        RESYNTH_ROW: resynth.audio if stereo else resynth.audio[0],
                        CEILING_ROW: codec_roundtrip(editor.model.codec, target),  # the model's device: here
                    }
                    job = (source, target, rows, rate, task, raw, mask_settings.get(task))
                    scores = pool.submit(score_clip, *job) if pool is not None else score_clip(*job)
                    edited.append((index, clip, instruction, source, target, rows, scores))
                _record(pending, examples, captions, task, seed, rate, audio_dirs if want_audio else None, plots)
                pending = edited
                batch_seconds = time.time() - batch_started
            _record(pending, examples, captions, task, seed, rate, audio_dirs if want_audio else None, plots)
            if bar is not None:
                bar.close()
            if not examples:
                raise DataError(f"no {task} example could be evaluated: {skipped[0]['reason'] if skipped else 'none'}")
            summary = summarize(examples)
            for example in examples:  # 96 numbers a clip: read by the summary's level-only and noise rows, not kept
                example.pop(LEVEL_GRID, None)
                example.pop(NOISE_GRID, None)
            notes = []
            if optional_metrics:
                extra, notes = _optional_metrics(audio_dirs, captions, str(editor.model.device))
                summary[MODEL_ROW].update(extra)
            if not save_audio and want_audio:
                import shutil

                shutil.rmtree(out_dir / "audio" / task, ignore_errors=True)
            if skipped_songs:
                first = skipped_songs[0]
                notes.append(f"{len(skipped_songs)} test song(s) skipped ({first['song']}: {first['reason']})")
            if scored < count:
                notes.append(f"stopped by the time budget after {scored} of {count} clips")
            report["tasks"][task] = {
                "summary": summary,
                "examples": examples,
                "skipped": skipped,
                "skipped_songs": skipped_songs,
                "notes": notes,
                "clips": {
                    "scored": len(examples),
                    "planned": count,
                    "refused": len(skipped),
                    # of those, the clips the model could not edit (a NaN output): a bar judged without them would
                    # certify a model that fails on most inputs (report_summary puts them on the model's row)
                    FAILED_EDIT: sum(1 for item in skipped if item.get(FAILED_EDIT)),
                },
            }
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    write_json_atomic(out_dir / REPORT_JSON, report, sort_keys=False)
    write_bytes_atomic(out_dir / REPORT_MD, markdown(report).encode("utf-8"))
    return report


# ---- command line ---------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`imusic eval` options."""
    parser.add_argument("--data", required=True, help="stem data set folder; its test split is used (see --split)")
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", required=True, metavar="REPORT_DIR", help="where report.md/.json go")
    parser.add_argument(
        "--limit", type=int, default=None, help="at most N clips per task, spread over the split's songs"
    )
    parser.add_argument(
        "--batch", type=int, default=1, help="clips edited together (each with its own seed; faster on a GPU)"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="processes scoring clips while the model edits (default 0: no pool)"
    )
    parser.add_argument("--spectrograms", type=int, default=0, metavar="K", help="before/after PNGs of K clips")
    add_clip_arguments(parser)  # --task, --classes, --seconds, --clips-per-song, --seed, --split
    parser.add_argument("--raw", action="store_true", help="score the model output without level matching")
    parser.add_argument("--save-audio", action="store_true", help="keep input/output/target WAVs (16 kHz)")
    parser.add_argument("--no-network-metrics", action="store_true", help="skip FAD/KL/CLAP even when installed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--once", action="store_true", help="nothing to do if REPORT_DIR already holds a report")
    parser.add_argument(
        "--stereo",
        action="store_true",
        help="score stereo sessions: the named stem panned left, the rest right (the ILD error measures the image)",
    )
    parser.add_argument(
        "--input-gain-db",
        type=float,
        default=0.0,
        help="score each clip as a recording at another level: input and target scaled by this many dB (default 0)",
    )


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the Markdown table."""
    from engine.files import output_folder

    output_folder(args.output)
    written = user_path(args.output) / REPORT_MD  # the report's last file
    if args.once and written.is_file():
        print(f"report: {written} (already there)", file=sys.stderr)
        return 0
    report = evaluate(
        args.data,
        args.task,
        args.output,
        model=args.model,
        adapter=args.adapter,
        device=args.device,
        dtype=args.dtype,
        limit=args.limit,
        batch=args.batch,
        workers=args.workers,
        spectrograms=args.spectrograms,
        seconds=args.seconds,
        classes=args.classes,
        clips_per_song=args.clips_per_song,
        seed=args.seed,
        raw=args.raw,
        save_audio=args.save_audio,
        optional_metrics=not args.no_network_metrics,
        progress=not args.quiet,
        split=args.split,
        stereo=args.stereo,
        input_gain_db=args.input_gain_db,
    )
    print(markdown(report))
    print(f"report: {Path(args.output) / REPORT_MD}", file=sys.stderr)
    return 0
