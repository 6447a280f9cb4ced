"""What defines a training run (`TrainConfig`) and what follows from it alone (its mixed precision)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import CheckpointError, ConfigError
from engine.files import from_saved, read_json_object, user_path
from engine.model.config import frame_rate as codec_frame_rate
from engine.train.data import CLIP_SECONDS, FOUR_STEMS
from engine.weights.names import MODEL_CARD, WEIGHTS

MAX_WINDOW_S = 30.0  # the longest adapter condition window a run may ask for: MusicGen generates at most 30 s
HISTORY = "history.json"  # a training run's settings and figures per step, in its run folder
CURVES = "curves.png"  # the picture of them


def same_setting(given: Any, saved: Any) -> bool:
    """Whether a setting given again for a resumed run is the run's own: paths compare resolved, a dict (a base's
    sizes) as the part of the saved one it names, a list as a tuple."""
    if isinstance(given, dict):
        return isinstance(saved, dict) and all(saved.get(k) == v for k, v in given.items())
    if isinstance(given, (list, tuple)) and isinstance(saved, (list, tuple)):
        return tuple(given) == tuple(saved)
    if isinstance(given, str) and isinstance(saved, str) and given != saved:
        return user_path(given).resolve() == user_path(saved).resolve()
    return given == saved


def resume_moves(given: dict[str, Any], saved: dict[str, Any]) -> str:
    """The note for a resumed run whose schedule or reporting the command line moves (steps, checkpoint and log
    intervals, device: what a resume may change), "" when nothing given differs from the run's own."""
    moved = [f"--{k.replace('_', '-')} {v} (the run had {saved.get(k)})" for k, v in given.items()
             if not same_setting(v, saved.get(k))]  # fmt: skip
    return f"resuming with {', '.join(moved)}" if moved else ""


def read_history(run_dir: Path, required: bool = True) -> dict[str, Any]:
    """A training run's history.json (its settings under "config", its losses per step, wall time, where it diverged
    or what it exported): CheckpointError naming the file when it is unreadable, or missing where `required`; {} for a
    run folder without one otherwise (a run not started yet)."""
    path = Path(run_dir) / HISTORY
    if not required and not path.exists():
        return {}
    return read_json_object(path, f"{path} is missing: the folder holds no finished training run", CheckpointError)


def history_losses(history: dict) -> dict[str, float | None]:
    """A run's last training and validation loss (its history, as history.json holds it), rounded; None where it
    logged none (or a non-finite one, which JSON holds as null)."""

    def last(rows: list) -> float | None:
        value = rows[-1][1] if rows else None
        return None if value is None else round(float(value), 4)

    return {"final_train_loss": last(history.get("train") or []), "final_val_loss": last(history.get("val") or [])}


# The checkout the packages run from (where pyproject.toml is), and where the embedded model's evaluation report is
# published in it: docs/embedded_model (its build and install commands default to it wherever they are run from)
CHECKOUT = Path(__file__).resolve().parents[2]
EMBEDDED_DOCS = CHECKOUT / "docs" / "embedded_model"


def in_checkout(default: Path, option: str, tool: str) -> Path:
    """A maintainer tool's default target (the shipped model, its report), which lies in the project's checkout;
    ConfigError naming `option` when the packages run from an installed copy (no pyproject.toml beside them), where
    that default would write into site-packages."""
    if not (CHECKOUT / "pyproject.toml").is_file():
        raise ConfigError(
            f"{tool} writes the shipped model and its report into a checkout of the project, and these packages are "
            f"an installed copy ({CHECKOUT}): give {option}"
        )
    return default


def shipped_targets(output: str | None, docs: str | None, tool: str) -> tuple[Path, Path]:
    """Where a maintainer tool writes a model and its report: `output` and `docs` as given, else the checkout's
    shipped model and docs (in_checkout: refused from an installed copy)."""
    from engine.weights.loader import DEFAULT_MODEL_DIR

    return (
        Path(output) if output else in_checkout(DEFAULT_MODEL_DIR, "-o", tool),
        Path(docs) if docs else in_checkout(EMBEDDED_DOCS, "--docs", tool),
    )


# The embedded model's sample rate: its codec's default, and the rate its data are rendered at
EMBEDDED_RATE = 16000
# A new base model's sizes when a base stage starts from a codec alone (engine.train.template), by their option names
BASE_SIZES = {"layers": 4, "dim": 256, "heads": 4, "text_dim": 128}
RUN_MODEL = "model"  # the model folder a base or adapter run exports (engine.weights.names: base/, adapter/, card)
RUN_ADAPTER = "adapter"  # an adapter run's adapter alone
# A codec run's files (engine/train/codec_train.py): its log, its settings, and the folder of the codec it exports.
CODEC_LOG = "codec_log.jsonl"  # one JSON row per logged step: step, seconds and the losses
CODEC_SETTINGS = "codec_train_config.json"
CODEC_EXPORT = "codec"


def finished_file(stage: str, run_dir: str | Path) -> Path:
    """The file a stage writes last when it finishes, in its run folder (`imusic train --once` skips a stage that has
    it): the exported codec's weights (its folder appears whole), or the exported model's card."""
    if stage == "codec":
        return Path(run_dir) / CODEC_EXPORT / WEIGHTS
    return Path(run_dir) / RUN_MODEL / MODEL_CARD


if TYPE_CHECKING:  # torch is imported where a run starts, so `imusic train --help` never pays for it
    import torch

# The stages the generic loop trains (loop.STAGES maps each to its class); the codec has its own loop.
LOOP_STAGES = ("adapters", "base")
# What a resumed run may change; everything else is the saved run's.
RESUME_CHANGES = ("steps", "ckpt_every", "val_every", "val_clips", "device", "log_every", "workers")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # TrainConfig.precision
# Clip-loading processes of a run on an accelerator without --workers (loop.train): at most this many, one a core
MAX_AUTO_WORKERS = 8


@dataclass
class TrainConfig:
    """Everything that defines a run. Adapter defaults are the official hyper-parameters (docs/ARCHITECTURE.md)."""

    data: str = ""
    base: str = ""
    stage: str = "adapters"
    steps: int = 10000  # official: cosine schedule over 10k steps (instructmusicgenadapter_module.py)
    batch: int = 8
    accum: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup: int = 100
    grad_clip: float = 2.0
    ckpt_every: int = 100
    val_every: int = 100
    val_clips: int = 16
    keep: int = 2
    seconds: float = CLIP_SECONDS
    classes: str = FOUR_STEMS
    seed: int = 0
    device: str | None = None
    precision: str = "auto"  # auto: bf16 autocast on CUDA with bf16, fp16 + GradScaler on older CUDA, fp32 elsewhere
    log_every: int = 10
    workers: int | None = None  # clip-loading processes; None: none on CPU, up to MAX_AUTO_WORKERS on accelerators
    pool: int = 0  # epochs of training clips drawn and encoded once (0: fresh draws encoded at every step)
    gate_lr: float = 0.0  # peak learning rate of the audio-fusion gates (0: --lr); zero-init gates open slowly
    window: float = 0.0  # condition window in seconds; 0: the base's own adapter's, else official (FusionConfig's)
    # Adapters: 0 = the official init (zero gates). N > 0: fusion.align_prefix for N batches before step 1 (merge_linear
    # 0, pos_emb fitted so that the prefix attention follows the music in time), then the gates start at gate_init.
    align_steps: int = 0
    gate_init: float = 0.0
    # base: the share of training clips whose caption is replaced by the null condition (zero text, empty mask: what
    # classifier-free guidance decodes against); audiocraft's MusicGen trains with 0.2 and decodes with CFG 3.0.
    text_dropout: float = 0.0
    # export the weights of the best validation loss seen in this call instead of the last ones (a resumed run
    # tracks its best from the resume on)
    keep_best: bool = False
    fused_layers: int | None = None  # adapters: audio fusion on the top N layers (None: the base adapter's, else all)
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        """ConfigError for settings no run can use."""
        at_least(1, self, "steps", "batch", "accum", "ckpt_every", "val_every", "keep", "log_every")
        at_least(0, self, "pool", "align_steps", "val_clips", "warmup")
        if self.workers is not None:
            at_least(0, self, "workers")
        numbers(self, "lr", "seconds", positive=True)
        numbers(self, "gate_lr", "grad_clip", "weight_decay", "window", positive=False)
        if self.window > MAX_WINDOW_S:  # 1e9 s asked for 256 TB of positions, a traceback from the allocator
            raise ConfigError(
                f"--window must be at most {MAX_WINDOW_S:g} s (MusicGen's own length), got {self.window:g}"
            )
        if not (math.isfinite(self.text_dropout) and 0 <= self.text_dropout < 1):
            raise ConfigError(f"--text-dropout must be at least 0 and below 1, got {self.text_dropout}")
        if not math.isfinite(self.gate_init):
            raise ConfigError(f"--gate-init must be a number, got {self.gate_init}")
        if (self.align_steps or self.gate_init or self.fused_layers is not None) and self.stage != "adapters":
            raise ConfigError("--align-steps, --gate-init and --fused-layers are for --stage adapters only")
        if self.fused_layers is not None and self.fused_layers < 1:
            raise ConfigError(f"--fused-layers must be at least 1, got {self.fused_layers}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"--precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, got {self.precision!r}"
            )

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """A saved run's settings (history.json, a checkpoint's)."""
        return from_saved(cls, data)


def lr_factor(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """The learning rate's factor at `step`: linear warm-up over `warmup` steps, then a cosine from 1 down to `floor`
    at `total` (transformers' get_cosine_schedule_with_warmup, as the official run, with floor 0, except that step 0
    already gets a small rate). Every trainer of the project (the stages, the codec) follows it. The warm-up takes at
    most a tenth of `total`: a schedule its deadline cut short (budget.StepBudget) still decays, not ending near its
    peak."""
    warmup = min(warmup, total // 10)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def precision(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler) of a run on `device`."""
    import torch

    from engine.device import default_dtype

    choice = cfg.precision
    if choice == "auto":
        if device.type != "cuda":
            return None, False
        choice = "bf16" if default_dtype(device) == torch.bfloat16 else "fp16"  # the GPU's own fast precision
    if choice == "fp32":
        return None, False
    if choice == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device (use bf16 or fp32)")
    return (torch.bfloat16, False) if choice == "bf16" else (torch.float16, True)


@dataclass
class CodecTrainConfig:
    """Everything that defines a codec run (`imusic train --stage codec`, engine/train/codec_train.py)."""

    sample_rate: int = EMBEDDED_RATE
    num_filters: int = 16
    hidden_size: int = 128
    upsampling_ratios: tuple[int, ...] = (4, 5, 4, 4)  # hop 320 -> 50 Hz at 16 kHz
    codebook_size: int = 512
    num_codebooks: int = 4
    num_lstm_layers: int = 1
    seconds: float = 1.0  # clip length
    batch: int = 8
    lr: float = 1e-3  # 3e-4 left the reconstruction flat for 600 steps here; 1e-3 starts learning in ~150
    steps: int = 10000
    warmup: int = 200
    ema_decay: float = 0.99
    commit_weight: float = 1.0
    stft_weight: float = 1.0
    stft_sizes: tuple[int, ...] = (128, 256, 512, 1024)
    # Weight of the waveform's normalised MSE (error power over signal power). The STFT terms ignore phase, and with
    # them alone the decoder settled on a buzz at the frame rate: a pure tone came back as harmonics of 50 Hz. A
    # phase-sensitive term pulls it out of that (docs/embedded_model/codec.md).
    wave_mse_weight: float = 0.0
    # An EMA count below this re-seeds the code from the batch. With 8 x 1 s batches (400 vectors for 512 codes) most
    # counts sit near 0.8, so a threshold of 1 re-seeded nearly every code at every step; 0.05 means ~300 steps unused.
    dead_code_threshold: float = 0.05
    # The first steps train encoder and decoder without quantisation: the codebooks are then initialised from the
    # latents of an encoder that has learnt something, not from a random one (faster start on a CPU budget).
    quantize_after: int = 0
    ckpt_every: int = 250
    log_every: int = 25
    seed: int = 0
    device: str | None = None  # where the codec trains (None: the best available); the result is the same format
    preload: bool = False  # decode every training file into memory once (int16) instead of a seek per clip
    extra: dict = field(default_factory=dict)

    @property
    def frame_rate(self) -> float:
        return codec_frame_rate(self.sample_rate, self.upsampling_ratios)

    @classmethod
    def from_dict(cls, data: dict) -> CodecTrainConfig:
        """A saved run's settings (codec_train_config.json), earlier names included."""
        return from_saved(cls, data, renamed=CODEC_RENAMED)

    def check(self) -> None:
        """ConfigError for settings no codec run can use (the same rules and words as TrainConfig.check)."""
        at_least(1, self, "steps", "batch", "ckpt_every", "log_every")
        at_least(0, self, "warmup", "quantize_after")
        numbers(self, "seconds", positive=True)
        # --lr 0 is a run: the EMA codebooks still fit the data while the network stays as it started
        numbers(self, "lr", "wave_mse_weight", positive=False, flags={"wave_mse_weight": "--wave-mse"})


def _flag(name: str, flags: dict[str, str] | None = None) -> str:
    """The command-line flag of a setting: `ckpt_every` -> `--ckpt-every` (or its own in `flags`)."""
    return (flags or {}).get(name) or "--" + name.replace("_", "-")


def at_least(lowest: int, config: Any, *names: str) -> None:
    """ConfigError naming the flag of the first setting of `config` below `lowest` (a count of steps, clips...)."""
    for name in names:
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= lowest):  # NaN fails every comparison, inf is no count
            says = "must not be negative" if lowest == 0 else f"must be at least {lowest}"
            raise ConfigError(f"{_flag(name)} {says}, got {value}")


def numbers(config: Any, *names: str, positive: bool, flags: dict[str, str] | None = None) -> None:
    """ConfigError naming the flag of the first setting that is not a finite number above 0 (`positive`), or at or
    above 0 (a learning rate, a clip length, a weight)."""
    for name in names:
        value = getattr(config, name)
        if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            says = "a positive number" if positive else "a number, not negative"
            raise ConfigError(f"{_flag(name, flags)} must be {says}, got {value}")


# What codec runs saved under other names before the codec's settings took the adapter stage's (a run from then still
# resumes with its own batch, warm-up and clip length)
CODEC_RENAMED = {"batch_size": "batch", "warmup_steps": "warmup", "segment_seconds": "seconds"}
# `imusic train` flag (argparse dest) -> CodecTrainConfig field, for the options the codec stage reads
CODEC_FLAGS = {
    "steps": "steps",
    "batch": "batch",
    "lr": "lr",
    "warmup": "warmup",
    "seconds": "seconds",
    "seed": "seed",
    "ckpt_every": "ckpt_every",
    "log_every": "log_every",
    "quantize_after": "quantize_after",
    "wave_mse": "wave_mse_weight",
}
CODEC_RESUME_FLAGS = ("steps", "ckpt_every", "log_every")  # what a resumed codec run still takes from the command line
