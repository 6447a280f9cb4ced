"""`imusic train`: train the editing adapters of a base model (or a base model / codec from scratch) on a stem data
set. The options map one to one onto TrainConfig (config.py); the loop is loop.py, the codec stage codec_train.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import ConfigError
from engine.files import user_path
from engine.model.config import FRAME_RATE, FusionConfig
from engine.train.config import (
    BASE_SIZES,
    CODEC_FLAGS,
    CODEC_RESUME_FLAGS,
    LOOP_STAGES,
    MAX_AUTO_WORKERS,
    PRECISIONS,
    RESUME_CHANGES,
    CodecTrainConfig,
    TrainConfig,
    finished_file,
    read_history,
    resume_moves,
    same_setting,
)

SIZE_FLAGS = "--layers/--dim/--heads/--text-dim"  # a new base's sizes (TrainConfig.extra)

# (flag, TrainConfig field, type, help); every default is TrainConfig's, so `--resume` can tell what was given.
_OPTIONS: list[tuple[str, str, type, str]] = [
    ("--stage", "stage", str, "what to train: {stages}, codec (default {default})"),
    ("--steps", "steps", int, "optimizer steps (default {default})"),
    ("--batch", "batch", int, "clips per micro-batch (default {default})"),
    ("--accum", "accum", int, "micro-batches per optimizer step (default {default})"),
    ("--lr", "lr", float, "peak learning rate (default {default:g})"),
    ("--gate-lr", "gate_lr", float, "peak learning rate of the fusion gates (default: --lr)"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (default {default:g})"),
    ("--warmup", "warmup", int, "linear warm-up steps before the cosine decay (default {default})"),
    ("--grad-clip", "grad_clip", float, "gradient norm clip, 0 = off (default {default:g})"),
    ("--ckpt-every", "ckpt_every", int, "checkpoint every N steps, last 2 kept (default {default})"),
    ("--val-every", "val_every", int, "validation loss every M steps (default {default})"),
    ("--val-clips", "val_clips", int, "validation clips (default {default})"),
    ("--seconds", "seconds", float, "clip length in seconds (default {default:g})"),
    ("--classes", "classes", str, "stem classes: 4stems, all, or a comma list (default {default})"),
    ("--device", "device", str, "cuda, cuda:1, mps, cpu (default: the best available)"),
    ("--precision", "precision", str, "auto (bf16/fp16 autocast on CUDA, fp32 elsewhere), {precisions}"),
    ("--seed", "seed", int, "seed of the initialisation and the clip draws (default {default})"),
    ("--workers", "workers", int, "clip-loading processes (default: 0 on CPU, up to {max_workers} on GPU)"),
    ("--align-steps", "align_steps", int, "adapters: fit the prefix alignment for N batches first (0: official init)"),
    ("--gate-init", "gate_init", float, "adapters: initial fusion gates (default {default:g}, official)"),
    ("--fused-layers", "fused_layers", int, "adapters: audio fusion on the top N layers only (default: all)"),
    ("--window", "window", float, "adapter condition window in seconds (default: the base's, else {window:g} s)"),
    (
        "--text-dropout",
        "text_dropout",
        float,
        "share of clips trained on the null text (CFG; default {default:g})",
    ),
    (
        "--pool",
        "pool",
        int,
        "encode N epochs of training clips once and train on that pool (default {default}: fresh draws)",
    ),
    ("--log-every", "log_every", int, "log line every N steps when not on a terminal (default {default})"),
]
# The settings of a training run, as argparse names them: the codec stage names those it does not use from this, so
# an option added here is covered there (codec_train.run_stage).
TRAIN_OPTIONS = ("data", "base", *(name for _, name, _, _ in _OPTIONS), *BASE_SIZES)
# Options that one way of training alone reads: the codec stage's own, and the recipe's (--recipe).
CODEC_ONLY = ("quantize_after", "wave_mse", "init_codec")
RECIPE_OPTIONS = ("budget_minutes", "scale", "stages", "from_packs", "export")


def given_flags(args: argparse.Namespace, names: tuple[str, ...] | list[str]) -> list[str]:
    """The flags of `names` (argparse dests) given on this command line, as the user typed them."""
    return [f"--{name.replace('_', '-')}" for name in names if getattr(args, name, None) is not None]


def say_unused(stage: str, flags: list[str]) -> None:
    """One line naming the options a stage was given and does not read (they would otherwise vanish unsaid)."""
    if flags:
        print(f"imusic train: the {stage} stage does not use {', '.join(flags)} here", file=sys.stderr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`imusic train` options (defaults: the official adapter hyper-parameters)."""
    defaults = TrainConfig()
    parser.add_argument("--data", help="stem data set folder (Slakh, MoisesDB or plain folders of stems)")
    parser.add_argument("--base", help="base model: our model dir, a transformers/audiocraft dir, or a cached hub name")
    parser.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run folder (checkpoints, result)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in RUN_DIR")
    parser.add_argument("--resume-from", metavar="CKPT", help="continue from this checkpoint file")
    parser.add_argument(
        "--once",
        action="store_true",
        help="run the stage to its end once: nothing to do if RUN_DIR holds its finished result, resume if RUN_DIR "
        "has checkpoints, else a new run (the make targets' way)",
    )
    named = {
        "stages": ", ".join(LOOP_STAGES),
        "precisions": ", ".join(PRECISIONS[1:]),  # after auto, which the help explains
        "max_workers": MAX_AUTO_WORKERS,
        "window": FusionConfig().window_frames / FRAME_RATE,  # the official adapter's, at MusicGen's frame rate
    }
    for flag, name, kind, text in _OPTIONS:
        parser.add_argument(flag, type=kind, default=None, help=text.format(default=getattr(defaults, name), **named))
    sizes = parser.add_argument_group("new base model from a codec directory (--stage base --base CODEC_DIR)")
    for name, what in (("layers", "decoder layers"), ("dim", "decoder width"), ("heads", "decoder attention heads"),
                       ("text_dim", "text encoder width")):  # fmt: skip
        sizes.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"{what} (default {BASE_SIZES[name]})")
    codec_defaults = CodecTrainConfig()
    shared = ", ".join(
        f"--{flag.replace('_', '-')} {getattr(codec_defaults, name):g}"
        for flag, name in CODEC_FLAGS.items()
        if flag not in ("quantize_after", "wave_mse")
    )
    codec = parser.add_argument_group(
        "codec stage (--stage codec)",
        f"besides these, the codec stage reads, with its own defaults: {shared}; a resumed run takes only "
        f"{', '.join('--' + f.replace('_', '-') for f in CODEC_RESUME_FLAGS)}",
    )
    codec.add_argument(
        "--quantize-after",
        type=int,
        help=f"steps trained without quantisation before the codebooks start (default {codec_defaults.quantize_after})",
    )
    codec.add_argument(
        "--wave-mse",
        type=float,
        metavar="WEIGHT",
        help=f"weight of the waveform's normalised MSE loss (default {codec_defaults.wave_mse_weight:g})",
    )
    codec.add_argument(
        "--init-codec",
        metavar="CODEC_DIR",
        help="start from this exported codec's weights and codebooks (same sizes), with a new optimiser and schedule",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--recipe",
        metavar="NAME",
        help="build a whole model instead: 'embedded' runs data, codec, base, adapters, eval and packing within "
        "--budget-minutes (engine/train/recipe.py; docs/embedded_model/gpu_recipe.md)",
    )
    from engine.train.recipe import add_run_arguments

    add_run_arguments(parser)


def _saved_settings(run_dir: Path) -> dict | None:
    """The settings a run folder's run saved with its last checkpoint (its history), or None where it has none."""
    saved = read_history(run_dir, required=False).get("config")
    return saved if isinstance(saved, dict) else None


def _finished_once(args: argparse.Namespace) -> bool:
    """--once: True if the stage's run folder holds its finished result; else --resume is set where it has
    checkpoints."""
    from engine.train.checkpoints import list_checkpoints

    if args.resume or args.resume_from or getattr(args, "recipe", None):
        raise ConfigError("--once decides by itself whether to resume; it is for one stage, without --resume/--recipe")
    stage, run_dir = args.stage or TrainConfig().stage, user_path(args.output)
    done = finished_file(stage, run_dir)
    if done.is_file():
        print(f"{stage}: done ({done.parent})")
        return True
    args.resume = bool(list_checkpoints(run_dir))
    return False


def run(args: argparse.Namespace) -> int:
    """Train (or resume), then print where the result is."""
    from engine.files import output_folder

    output_folder(args.output)  # every stage and the recipe write a run folder there
    if getattr(args, "once", False) and _finished_once(args):
        return 0
    if getattr(args, "recipe", None):  # the whole embedded model, stage after stage, within a time budget
        from engine.train.recipe import run_from_args

        return run_from_args(args)
    if args.stage == "codec":  # stage 1 of the embedded model: its own loop (EMA codebooks, Adam), codec_train.py
        from engine.train.codec_train import run_stage

        return run_stage(args)
    from engine.device import training_device
    from engine.train.config import CURVES
    from engine.train.loop import train

    say_unused(args.stage or TrainConfig().stage, given_flags(args, (*CODEC_ONLY, *RECIPE_OPTIONS)))
    resuming = bool(args.resume or args.resume_from)
    if not resuming and not (args.data and args.base):
        raise ConfigError("--data and --base are required for a new run (a resumed run remembers them)")
    given = {name: getattr(args, name) for _, name, _, _ in _OPTIONS if getattr(args, name) is not None}
    if args.data:
        given["data"] = str(args.data)
    if args.base:
        given["base"] = str(args.base)
    extra = {name: getattr(args, name) for name in BASE_SIZES}
    given["extra"] = {name: value for name, value in extra.items() if value is not None}
    if not resuming or "device" in given:  # a resumed run keeps its device unless another is asked for
        given["device"] = str(training_device(given.get("device")))
    from engine.train.checkpoints import list_checkpoints

    run_dir = user_path(args.output)
    saved = _saved_settings(run_dir) if resuming else None
    ignored = sorted(
        name
        for name in set(given) - set(RESUME_CHANGES)
        if given[name] and not (saved is not None and same_setting(given[name], saved.get(name)))
    )
    if resuming and ignored and (args.resume_from or list_checkpoints(run_dir)):
        flags = [SIZE_FLAGS if name == "extra" else f"--{name.replace('_', '-')}" for name in ignored]
        print(f"imusic train: resuming keeps the run's own {', '.join(flags)}", file=sys.stderr)
    changes = [name for name in RESUME_CHANGES if name in given]
    if saved is not None and (moves := resume_moves({name: given[name] for name in changes}, saved)):
        print(f"imusic train: {moves}", file=sys.stderr)
    result = train(
        TrainConfig(**given),
        args.output,
        resume=args.resume,
        resume_from=args.resume_from,
        changes=changes,
        progress=not args.quiet,
    )
    last = result.history["train"][-1][1] if result.history["train"] else float("nan")
    print(f"trained {result.step} steps, last loss {last:.4f}; curves: {result.run_dir / CURVES}")
    for what, path in result.outputs.items():
        print(f"{what}: {path}")
    return 0
