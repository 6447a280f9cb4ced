"""`imusic train`: train the editing adapters of a base model (or a base model from scratch) on a stem data set.

One generic loop (AdamW, warm-up + cosine, gradient accumulation, clipping, mixed precision on GPU, atomic
checkpoints with exact resume, validation loss, a PNG of the curves) drives a *stage*: a small object that knows
which parameters train, how a batch of clips becomes a loss, and what the finished run writes. Stages are looked up
by name in `STAGES`; `register_stage` adds one. (`--stage codec` runs its own loop: engine.codec_train.)

Audio is encoded by the frozen codec on the fly, one batch at a time: clips are random draws (a new offset, subset
and stem every epoch), so per-clip code caches would rarely hit. Where the codec costs as much as the model (a small
model on a CPU), `--pool N` draws N epochs of training clips once, encodes them once (saved in the run folder) and
trains over that fixed pool instead. Text encodings are cached per distinct prompt (an edit data set has only
ops x stems of them). Keep top-level imports light: torch is imported inside functions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import CheckpointError, ConfigError, DataError

CKPT_FORMAT = "imusic-train-checkpoint"
CKPT_VERSION = 1
CKPT_DIR = "checkpoints"
HISTORY = "history.json"
CURVES = "curves.png"
# What a resumed run may change; everything else is the saved run's.
RESUME_CHANGES = ("steps", "ckpt_every", "val_every", "val_clips", "device", "log_every", "workers")


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
    seconds: float = 5.0
    classes: str = "4stems"
    seed: int = 0
    device: str | None = None
    precision: str = "auto"  # auto: bf16 autocast on CUDA with bf16, fp16 + GradScaler on older CUDA, fp32 elsewhere
    log_every: int = 10
    workers: int | None = None  # clip-loading processes; None: none on CPU, up to 4 on accelerators
    pool: int = 0  # epochs of training clips drawn and encoded once (0: fresh draws encoded at every step)
    gate_lr: float = 0.0  # peak learning rate of the audio-fusion gates (0: --lr); zero-init gates open slowly
    window: float = 0.0  # condition window in seconds; 0: the base's own adapter's, else official (10 s: 500 frames)
    # Adapters: 0 = the official init (zero gates). N > 0: fusion.align_prefix for N batches before step 1 (merge_linear
    # 0, pos_emb fitted so that the prefix attention follows the music in time), then the gates start at gate_init.
    align_steps: int = 0
    gate_init: float = 0.0
    fused_layers: int | None = None  # adapters: audio fusion on the top N layers (None: the base adapter's, else all)
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        """ConfigError for settings no run can use."""
        positive = {"steps": self.steps, "batch": self.batch, "accum": self.accum, "ckpt_every": self.ckpt_every}
        positive.update({"val_every": self.val_every, "keep": self.keep, "log_every": self.log_every})
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.gate_lr < 0:
            raise ConfigError(f"--gate-lr must not be negative, got {self.gate_lr}")
        if self.warmup < 0 or self.grad_clip < 0 or self.weight_decay < 0 or self.val_clips < 0:
            raise ConfigError("warm-up, gradient clip, weight decay and validation clips must not be negative")
        if self.pool < 0:
            raise ConfigError(f"--pool must not be negative, got {self.pool}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must not be negative, got {self.workers}")
        if not self.seconds > 0:
            raise ConfigError(f"--seconds must be positive, got {self.seconds}")
        if self.window < 0:
            raise ConfigError(f"--window must not be negative, got {self.window}")
        if self.align_steps < 0:
            raise ConfigError(f"--align-steps must not be negative, got {self.align_steps}")
        if (self.align_steps or self.gate_init or self.fused_layers is not None) and self.stage != "adapters":
            raise ConfigError("--align-steps, --gate-init and --fused-layers are for --stage adapters only")
        if self.fused_layers is not None and self.fused_layers < 1:
            raise ConfigError(f"--fused-layers must be at least 1, got {self.fused_layers}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"--precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.stage not in STAGES:
            raise ConfigError(f"unknown stage {self.stage!r}: use {', '.join(STAGES)}")

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ---- stages ---------------------------------------------------------------------------------------------------------


class Stage:
    """What the loop trains. Subclasses set `module` (the nn.Module whose trainable parameters are optimised)."""

    name = ""
    module: Any = None

    def parameters(self) -> list:
        """The parameters the optimizer updates."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def trainable_state(self) -> dict:
        """The tensors a checkpoint must hold to continue (the trained ones; frozen ones come from the base)."""
        names = {id(p) for p in self.parameters()}
        return {n: p.detach().clone() for n, p in self.module.named_parameters() if id(p) in names}

    def load_trainable_state(self, state: dict) -> None:
        own = dict(self.module.named_parameters())
        missing = sorted(n for n in self.trainable_state() if n not in state)
        if missing or any(n not in own for n in state):
            raise CheckpointError(f"the checkpoint does not fit this {self.name} run (missing {missing[:3]})")
        import torch

        with torch.no_grad():
            for name, tensor in state.items():
                own[name].copy_(tensor)

    def dataset(self, split: str) -> Any:
        """Indexable clips of a split (with `set_epoch` for fresh training draws)."""
        raise NotImplementedError

    def encode(self, items: Sequence[Any]) -> list[Encoded]:
        """Dataset items through the frozen parts (the codec): what `loss_codes` trains on."""
        raise NotImplementedError

    def loss_codes(self, records: Sequence[Encoded]) -> Any:
        """Scalar loss tensor of encoded items."""
        raise NotImplementedError

    def loss(self, items: Sequence[Any]) -> Any:
        """Scalar loss tensor of a list of dataset items (raw clips, or records of a code pool)."""
        if not all(isinstance(item, Encoded) for item in items):
            items = self.encode(items)
        return self.loss_codes(items)

    def prepare(self, batches: Callable[[], list[Encoded]]) -> dict | None:
        """Once, before the first step of a fresh run (not on resume): `batches()` gives a batch of encoded clips."""
        return None

    def export(self, run_dir: Path, info: dict) -> dict[str, str]:
        """Write the finished result into run_dir; returns {what: path}."""
        raise NotImplementedError


@dataclass
class Encoded:
    """One training item after the frozen codec: target codes [K, F], condition codes [K, F] or None, its text."""

    codes: Any
    cond: Any
    text: str


STAGES: dict[str, Callable[[TrainConfig, Any], Stage]] = {}


def register_stage(name: str, factory: Callable[[TrainConfig, Any], Stage]) -> None:
    """Make `imusic train --stage NAME` build its stage with `factory(config, device)`."""
    STAGES[name] = factory


def _base_parts(base: str):
    """(path of the transformers/audiocraft base, model_card.json of our dir or {}, existing adapter path or None)."""
    from engine.weights import detect_layout, read_model_card, resolve_source

    path = resolve_source(base)
    layout = detect_layout(path)
    if layout == "imusic":
        adapter = path / "adapter"
        return path / "base", read_model_card(path), adapter if adapter.exists() else None
    if layout in ("transformers", "audiocraft"):
        return path, {}, None
    raise CheckpointError(f"{path} is an adapter, not a base model: give the model it was trained on as --base")


def _clip_config(cfg: TrainConfig, sample_rate: int):
    from engine.data.datasets import ClipConfig

    classes = cfg.classes if cfg.classes in ("4stems", "all") else tuple(c.strip() for c in cfg.classes.split(","))
    return ClipConfig(sample_rate=sample_rate, seconds=cfg.seconds, classes=classes)


def _open_split(cfg: TrainConfig, split: str, sample_rate: int, kind: str = "edit"):
    """The clips of one split of --data; DataError (naming the folder) when it has none."""
    from engine.data.datasets import CaptionDataset, StemDataset
    from engine.data.layouts import scan

    if not Path(cfg.data).expanduser().is_dir():
        raise DataError(f"no data set at {cfg.data}: the folder does not exist")
    catalog = scan(Path(cfg.data).expanduser())
    cls = CaptionDataset if kind == "caption" else StemDataset
    # Several clips per song and per epoch: small data sets still fill batches; the draws differ per item.
    per_song = max(1, math.ceil(cfg.batch * cfg.accum / max(1, len(catalog.songs))))
    try:
        data = cls(catalog, split, _clip_config(cfg, sample_rate), seed=cfg.seed, clips_per_song=per_song)
    except DataError as exc:
        raise DataError(f"data set {cfg.data} is too small for training: {exc}") from None
    if split == "train":  # once per run: what the scan could not use, counted (the details: `imusic data info`)
        problems = ", ".join(f"{count} x {reason}" for reason, count in sorted(catalog.problem_counts().items()))
        if problems:
            print(f"imusic train: skipped stem files: {problems}", file=sys.stderr)
        if data.skipped:
            song, reason = data.skipped[0]
            print(f"imusic train: skipped {len(data.skipped)} song(s) of the split ({song}: {reason})", file=sys.stderr)
    return data


class _TextCache:
    """Frozen text encoder outputs per distinct prompt, padded into batches ([B, S, dim], mask [B, S])."""

    def __init__(self, text) -> None:
        self.text = text
        self.cache: dict[str, tuple[Any, Any]] = {}

    def __call__(self, prompts: Sequence[str]):
        import torch

        for prompt in set(prompts) - set(self.cache):
            states, mask = self.text.encode([prompt])
            self.cache[prompt] = (states[0], mask[0])
        width = max(self.cache[p][0].shape[0] for p in prompts)
        states = torch.zeros(len(prompts), width, self.text.dim, dtype=self.cache[prompts[0]][0].dtype)
        mask = torch.zeros(len(prompts), width, dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            one, one_mask = self.cache[prompt]
            states[row, : one.shape[0]] = one
            mask[row, : one.shape[0]] = one_mask
        return states.to(self.text.device), mask.to(self.text.device)


def _frame_rate(hf_config: dict) -> float:
    """Codec frames per second of a transformers MusicGen config (audio_encoder: sampling rate / hop)."""
    codec = hf_config.get("audio_encoder", {})
    return float(codec.get("sampling_rate", 32000)) / math.prod(codec.get("upsampling_ratios", [8, 5, 4, 4]))


def _encode_audio(codec, clips: Sequence[np.ndarray]):
    import torch

    wav = torch.from_numpy(np.stack(clips).astype(np.float32))[:, None]  # [B, 1, N]
    # The frozen codec runs in fp32 even inside a bf16/fp16 autocast region: its codes must not depend on precision.
    with torch.autocast(device_type=codec.device.type, enabled=False):
        return codec.encode(wav)  # [B, K, F]


class AdapterStage(Stage):
    """Audio fusion + LoRA on a frozen base: target codes given input codes and the instruction (official recipe)."""

    name = "adapters"

    def __init__(self, cfg: TrainConfig, device) -> None:
        import torch

        from engine.instructions import OFFICIAL_STEMS, OFFICIAL_TEMPLATE, OFFICIAL_VERBS
        from engine.model.config import FusionConfig
        from engine.weights import detect_layout, read_adapter

        self.cfg = cfg
        self.base_path, self.base_card, existing = _base_parts(cfg.base)
        layout = detect_layout(self.base_path)
        if layout == "transformers":
            from engine.weights.transformers_layout import load_parts, read_config
        else:
            from engine.weights.audiocraft_layout import load_parts
        # Same adapter shape as the base's own adapter when it has one, else the official one; --window resizes it.
        fusion = read_adapter(existing)[1]["fusion"] if existing is not None else FusionConfig()
        if cfg.window:
            frame_rate = _frame_rate(read_config(self.base_path)) if layout == "transformers" else 50.0
            fusion = replace(fusion, cond_frames=int(round(cfg.window * frame_rate)) + 1)
        if cfg.fused_layers is not None:  # the top N layers only (checked against the base when the model is built)
            fusion = replace(fusion, fused_layers=cfg.fused_layers)
        # Under autocast the frozen base is stored in the autocast dtype (half the memory of a 3.3B decoder); the
        # adapters, the only weights the optimizer updates, stay fp32 masters.
        frozen_dtype = _precision(cfg, torch.device(device))[0] or torch.float32
        torch.manual_seed(cfg.seed)  # fresh adapters (gates and LoRA B at zero) from a seeded init
        self.lm, self.codec, self.text = load_parts(self.base_path, fusion=fusion, device=device, dtype=frozen_dtype)
        self.fusion = fusion
        self.lm.freeze_base()
        for param in self.lm.adapter_parameters():
            param.data = param.data.float()
        self.lm.train()
        self.module = self.lm
        frames = self.codec.num_frames(int(round(cfg.seconds * self.codec.sample_rate)))
        if frames + 1 > fusion.cond_frames:
            raise ConfigError(
                f"--seconds {cfg.seconds:g} is longer than the adapter's window "
                f"({(fusion.cond_frames - 1) / self.codec.frame_rate:g} s)"
            )
        # The official instruction text; the adapter records it so that the Editor asks in the same words.
        self.template, self.verbs = OFFICIAL_TEMPLATE, dict(OFFICIAL_VERBS)
        self.stems: tuple[str, ...] = OFFICIAL_STEMS
        self.texts = _TextCache(self.text)

    def dataset(self, split: str) -> Any:
        data = _open_split(self.cfg, split, self.codec.sample_rate)
        if split == "train":
            # The stems instructions may name: every class some training song can target, in a stable order.
            self.stems = tuple(sorted({cls for plan in data.plans for cls in plan.targets}))
        return data

    def encode(self, items: Sequence[Any]) -> list[Encoded]:
        prompts = [self.template.format(verb=self.verbs[clip.op], stem=clip.stem_name, op=clip.op) for clip in items]
        codes = _encode_audio(self.codec, [clip.target for clip in items])  # [B, K, F]
        cond_codes = _encode_audio(self.codec, [clip.input for clip in items])  # [B, K, F]
        return [Encoded(c, cond, prompt) for c, cond, prompt in zip(codes, cond_codes, prompts, strict=True)]

    def loss_codes(self, records: Sequence[Encoded]) -> Any:
        import torch

        text_states, text_mask = self.texts([r.text for r in records])  # [B, S, dim], [B, S]
        codes = torch.stack([r.codes for r in records]).long().to(self.codec.device)  # [B, K, F]
        cond_codes = torch.stack([r.cond for r in records]).long().to(self.codec.device)  # [B, K, F]
        loss, _ = self.lm.loss(codes, text_states, text_mask, cond_codes)
        return loss

    def prepare(self, batches: Callable[[], list[Encoded]]) -> dict | None:
        """--align-steps: fit the prefix's positional table first (fusion.align_prefix), then set the gates."""
        import torch

        from engine.model.fusion import align_prefix

        if not self.cfg.align_steps:
            if self.cfg.gate_init:
                with torch.no_grad():
                    self.lm.fusion.gates.fill_(self.cfg.gate_init)
            return None

        def feed():
            for _ in range(self.cfg.align_steps):
                records = batches()
                text_states, text_mask = self.texts([r.text for r in records])
                codes = torch.stack([r.codes for r in records]).long().to(self.codec.device)
                cond = torch.stack([r.cond for r in records]).long().to(self.codec.device)
                yield codes, text_states, text_mask, cond

        def log(step: int, loss: float, mass: list[float], value: list[float]) -> None:
            if step % 25 == 0 or step == self.cfg.align_steps:
                shown = ", ".join(f"{m:.2f}" for m in mass)
                print(f"align {step}/{self.cfg.align_steps}: attention mass near the step {shown}", file=sys.stderr)

        result = align_prefix(self.lm, feed(), seed=self.cfg.seed, log=log)
        with torch.no_grad():
            self.lm.fusion.gates.fill_(self.cfg.gate_init)
        return result

    def export(self, run_dir: Path, info: dict) -> dict[str, str]:
        from engine.weights.adapter_format import save_adapter

        provenance = {"trained_by": "imusic train --stage adapters", **info}
        base_ref = {"path": str(self.base_path), "num_layers": self.lm.cfg.num_layers, "dim": self.lm.cfg.dim}
        kwargs = {"stems": self.stems, "template": self.template, "verbs": self.verbs, "base": base_ref}
        adapter_dir = _replace_dir(run_dir / "adapter")
        save_adapter(adapter_dir, self.lm.adapter_state_dict(), self.fusion, provenance=provenance, **kwargs)
        model_dir = _replace_dir(run_dir / "model")
        _link_tree(self.base_path, model_dir / "base")
        save_adapter(model_dir / "adapter", self.lm.adapter_state_dict(), self.fusion, provenance=provenance, **kwargs)
        card = {
            "format": "imusic-model",
            "version": 1,
            "name": f"{self.base_card.get('name') or Path(self.base_path).name}-{run_dir.name}",
            "stems": list(self.stems),
            "provenance": {**dict(self.base_card.get("provenance") or {}), "base": str(self.base_path), **info},
        }
        (model_dir / "model_card.json").write_text(json.dumps(card, indent=2))
        return {"adapter": str(adapter_dir), "model": str(model_dir)}


def _is_codec_dir(path: Path) -> bool:
    """A bare EnCodec directory (what `--stage codec` writes): config.json of model_type "encodec"."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type") == "encodec"
    except (OSError, ValueError):
        return False


def base_vocabulary() -> list[str]:
    """Words a small base model's tokenizer knows: caption words of every stem class and the instruction template."""
    from engine.data.stems import FOUR_STEMS, GM_FAMILIES, caption_word
    from engine.instructions import OFFICIAL_TEMPLATE, OFFICIAL_VERBS

    words = ["<pad>", "</s>", "<unk>"]
    text = " ".join([OFFICIAL_TEMPLATE, *OFFICIAL_VERBS.values(), "and", "silence", "vocals", "other", "percussion"])
    classes = [*FOUR_STEMS, *GM_FAMILIES]  # Drums is no General MIDI family (channel 10), so it is named apart
    names = [caption_word(cls) for cls in classes] + [cls.lower() for cls in classes]
    for word in [*text.lower().replace("{verb}", " ").replace("{stem}", " ").split(), *" ".join(names).split()]:
        word = word.strip(".:,()")
        if word and word not in words:
            words.append(word)
    return [*words, ".", ":", ",", "(", ")", "-", "'"]


def build_base_template(
    codec_dir: str | Path,
    out_dir: str | Path,
    *,
    layers: int = 4,
    dim: int = 256,
    heads: int = 4,
    text_dim: int = 128,
    text_layers: int = 2,
    seed: int = 0,
) -> Path:
    """A transformers MusicGen directory around a trained codec: random decoder and small T5, word-level tokenizer.

    The embedded default model is built this way (codec stage -> this template -> base stage -> adapter stage).
    The word-level tokenizer knows the caption and instruction words (`base_vocabulary`); others map to <unk>.
    """
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import (
        EncodecModel,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        PreTrainedTokenizerFast,
        T5Config,
    )

    from engine.model.codec import Codec
    from engine.weights.transformers_layout import quiet_transformers

    if text_dim == dim:
        # transformers' MusicGen drops enc_to_dec_proj when the widths match; our decoder always has text_proj.
        raise ConfigError(f"--text-dim must differ from --dim (both {dim})")
    with quiet_transformers():
        codec_model = EncodecModel.from_pretrained(str(codec_dir), local_files_only=True)
    num_codebooks = Codec(codec_model).num_codebooks
    card = int(codec_model.config.codebook_size)
    vocab = {word: index for index, word in enumerate(base_vocabulary())}
    text = T5Config(
        vocab_size=len(vocab),
        d_model=text_dim,
        d_kv=text_dim // 4,
        d_ff=2 * text_dim,
        num_layers=text_layers,
        num_heads=4,
        relative_attention_num_buckets=16,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=card,
        num_hidden_layers=layers,
        hidden_size=dim,
        num_attention_heads=heads,
        ffn_dim=4 * dim,
        num_codebooks=num_codebooks,
        pad_token_id=card,
        bos_token_id=card,
        max_position_embeddings=2048,
        dropout=0.0,
    )
    with quiet_transformers():
        torch.manual_seed(seed)
        model = MusicgenForConditionalGeneration(
            MusicgenConfig(text_encoder=text, audio_encoder=codec_model.config, decoder=decoder)
        )
        model.audio_encoder.load_state_dict(codec_model.state_dict())
        backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        backend.normalizer = normalizers.Lowercase()
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
        )
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return out_dir


class BaseStage(Stage):
    """A base text-to-music model from scratch: decoder + text encoder + text_proj, codes from the frozen codec.

    --base gives the architecture, tokenizer and codec (a transformers-layout directory, or our model dir with one);
    the decoder and text encoder weights are re-initialised. Given a bare codec directory (the codec stage's output),
    a template is built around it first (`build_base_template`, sizes from TrainConfig.extra). Captions name what
    sounds ("drums and bass").
    """

    name = "base"

    def __init__(self, cfg: TrainConfig, device) -> None:
        import torch

        from engine.model.lm import MusicGenLM
        from engine.weights import detect_layout
        from engine.weights.transformers_layout import load_hf_musicgen, load_tokenizer

        self.cfg = cfg
        if _is_codec_dir(Path(cfg.base).expanduser()):
            template = Path(cfg.extra.get("run_dir", ".")) / "template"
            if not (template / "config.json").is_file():
                sizes = {k: int(v) for k, v in cfg.extra.items() if k in ("layers", "dim", "heads", "text_dim")}
                build_base_template(Path(cfg.base).expanduser(), template, seed=cfg.seed, **sizes)
            cfg = replace(cfg, base=str(template))
            self.cfg = cfg
        self.base_path, self.base_card, _ = _base_parts(cfg.base)
        if detect_layout(self.base_path) != "transformers":
            raise ConfigError("--stage base needs a transformers-layout --base (its config, tokenizer and codec)")
        from engine.model.codec import Codec
        from engine.weights.transformers_layout import lm_config, read_config

        self.hf_config = read_config(self.base_path)
        hf_model = load_hf_musicgen(self.base_path)
        self.tokenizer = load_tokenizer(self.base_path)
        self.device = torch.device(device)
        torch.manual_seed(cfg.seed)
        self.lm = MusicGenLM(lm_config(self.hf_config)).to(self.device)
        # A fresh text encoder of the same architecture (T5EncoderModel initialises itself randomly).
        self.text_model = type(hf_model.text_encoder)(hf_model.text_encoder.config).to(self.device)
        self.codec = Codec(hf_model.audio_encoder, num_codebooks=self.lm.cfg.num_codebooks, device=self.device)
        self.lm.train()
        self.text_model.train()
        self.module = torch.nn.ModuleDict({"lm": self.lm, "text": self.text_model})
        self.tokens: dict[str, list[int]] = {}

    def dataset(self, split: str) -> Any:
        return _open_split(self.cfg, split, self.codec.sample_rate, kind="caption")

    def _encode_text(self, captions: Sequence[str]):
        import torch

        for caption in set(captions) - set(self.tokens):
            self.tokens[caption] = self.tokenizer(caption)["input_ids"]
        width = max(len(self.tokens[c]) for c in captions)
        ids = torch.full((len(captions), width), int(self.tokenizer.pad_token_id or 0), dtype=torch.long)
        mask = torch.zeros(len(captions), width, dtype=torch.long)
        for row, caption in enumerate(captions):
            ids[row, : len(self.tokens[caption])] = torch.tensor(self.tokens[caption])
            mask[row, : len(self.tokens[caption])] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        states = self.text_model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, S, dim]
        return states * mask[..., None].to(states.dtype), mask.bool()  # padded states zeroed, as TextEncoder

    def encode(self, items: Sequence[Any]) -> list[Encoded]:
        codes = _encode_audio(self.codec, [clip.audio for clip in items])  # [B, K, F]
        return [Encoded(c, None, clip.caption) for c, clip in zip(codes, items, strict=True)]

    def loss_codes(self, records: Sequence[Encoded]) -> Any:
        import torch

        text_states, text_mask = self._encode_text([r.text for r in records])
        codes = torch.stack([r.codes for r in records]).long().to(self.device)  # [B, K, F]
        loss, _ = self.lm.loss(codes, text_states, text_mask, None)
        return loss

    def export(self, run_dir: Path, info: dict) -> dict[str, str]:
        from engine.weights.convert import lm_state_to_transformers
        from engine.weights.transformers_layout import load_hf_musicgen, quiet_transformers

        hf_model = load_hf_musicgen(self.base_path)
        hf_model.text_encoder.load_state_dict(self.text_model.state_dict())
        decoder = lm_state_to_transformers({n: t.detach().cpu() for n, t in self.lm.state_dict().items()})
        result = hf_model.load_state_dict(decoder, strict=False)
        wrong = [n for n in result.missing_keys if n.startswith(("decoder.", "enc_to_dec_proj."))]
        if wrong or result.unexpected_keys:
            raise CheckpointError(f"internal error: the trained decoder does not map onto {self.base_path}: {wrong}")
        model_dir = _replace_dir(run_dir / "model")
        with quiet_transformers():
            hf_model.save_pretrained(model_dir / "base")
            self.tokenizer.save_pretrained(model_dir / "base")
        card = {
            "format": "imusic-model",
            "version": 1,
            "name": f"base-{run_dir.name}",
            "provenance": {"trained_by": "imusic train --stage base", "architecture_from": str(self.base_path), **info},
        }
        (model_dir / "model_card.json").write_text(json.dumps(card, indent=2))
        return {"model": str(model_dir)}


register_stage("adapters", AdapterStage)
register_stage("base", BaseStage)


def _replace_dir(path: Path) -> Path:
    import shutil

    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _link_tree(source: Path, target: Path) -> None:
    """Hard-link the base's files (GBs for real models) into target; copy where links are not possible."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    for file in Path(source).iterdir():
        real = file.resolve()  # hub snapshots hold symlinks into blobs/
        if real.is_file():
            try:
                os.link(real, target / file.name)
            except OSError:
                shutil.copy2(real, target / file.name)


# ---- the loop -------------------------------------------------------------------------------------------------------


class BatchSampler:
    """Deterministic stream of item indices: epoch e is a permutation seeded by (seed, e). State = (epoch, position),
    so a resumed run draws exactly the batches an uninterrupted one would."""

    def __init__(self, size: int, seed: int, epoch: int = 0, position: int = 0) -> None:
        self.size, self.seed, self.epoch, self.position = size, seed, epoch, position
        self._order = np.random.default_rng([seed, epoch]).permutation(size)

    def next_keys(self, count: int) -> list[tuple[int, int]]:
        """The next `count` items as (epoch, index): the epoch decides a training clip's random draw."""
        out = []
        while len(out) < count:
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
            out.append((self.epoch, int(self._order[self.position])))
            self.position += 1
        return out

    def copy(self) -> BatchSampler:
        return BatchSampler(self.size, self.seed, self.epoch, self.position)

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "size": self.size, "seed": self.seed}


class _Keyed:
    """A data set addressed by (epoch, index): loader workers hold copies, so the epoch travels with each request."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)
        return key, self.data[index]


class _KeyBatches:
    """Endless micro-batches of keys for a DataLoader (a copy of the run's sampler, running ahead of it)."""

    def __init__(self, sampler: BatchSampler, batch: int) -> None:
        self.sampler, self.batch = sampler, batch

    def __iter__(self):
        while True:
            yield self.sampler.next_keys(self.batch)


class ClipFeeder:
    """Micro-batches of clips in sampler order. With workers, clips are decoded ahead in other processes (audio
    decoding and resampling would otherwise stall a GPU); the run's own sampler still advances one batch at a time,
    so checkpoints record exactly what was trained on."""

    def __init__(self, data, sampler: BatchSampler, batch: int, workers: int = 0, seed: int = 0) -> None:
        self.keyed, self.sampler, self.batch = _Keyed(data), sampler, batch
        self._batches = None
        if workers > 0:
            import torch
            from torch.utils.data import DataLoader

            loader = DataLoader(
                self.keyed,
                batch_sampler=_KeyBatches(sampler.copy(), batch),
                num_workers=workers,
                collate_fn=list,
                # Worker seeds from their own generator: the run's torch RNG stream stays as without workers.
                generator=torch.Generator().manual_seed(seed),
            )
            self._batches = iter(loader)

    def next(self) -> list:
        keys = self.sampler.next_keys(self.batch)
        if self._batches is None:
            return [self.keyed[key][1] for key in keys]
        pairs = next(self._batches)
        if [tuple(key) for key, _ in pairs] != keys:
            raise RuntimeError("internal error: the clip loader ran out of step with the sampler")
        return [item for _, item in pairs]


POOL_FILE = "code_pool.pt"
# The settings a pool's content depends on (the draws and the frozen codec): a run that changes only the optimizer
# (lr, steps, warm-up, ...) may start from a copy of another run's pool.
POOL_KEY = ("data", "base", "stage", "seconds", "classes", "seed", "batch", "accum", "pool")


class CodePool:
    """Training clips encoded once: `epochs` epochs of the data set's random draws, in draw order.

    Saved as `code_pool.pt` in the run folder (int16 codes) so that a resumed run trains on the same pool without
    encoding it again; a pool made from other settings is refused rather than silently reused."""

    def __init__(self, records: list[Encoded]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Encoded:
        return self.records[index]

    @classmethod
    def build(cls, stage: Stage, data: Any, epochs: int, run_dir: Path, batch: int, key: dict, log: bool) -> CodePool:
        import torch

        path = Path(run_dir) / POOL_FILE
        if path.is_file():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unpickling/zip error means the same thing to the user
                raise CheckpointError(f"code pool {path} is unreadable ({exc}); delete it to encode it again") from None
            if saved.get("key") != key:
                raise CheckpointError(f"code pool {path} was made with other settings; delete it to encode it again")
            conds = saved["cond"] if saved["cond"] is not None else [None] * len(saved["texts"])
            return cls([Encoded(c, cond, t) for c, cond, t in zip(saved["codes"], conds, saved["texts"], strict=True)])
        total = epochs * len(data)
        records: list[Encoded] = []
        for epoch in range(epochs):
            if hasattr(data, "set_epoch"):
                data.set_epoch(epoch)
            for start in range(0, len(data), batch):
                encoded = stage.encode([data[i] for i in range(start, min(len(data), start + batch))])
                for r in encoded:  # int16: a pool of thousands of clips stays a few MB
                    records.append(Encoded(r.codes.short(), None if r.cond is None else r.cond.short(), r.text))
            if log:
                print(f"code pool: {len(records)}/{total} clips encoded", file=sys.stderr)
        conds = None if records[0].cond is None else torch.stack([r.cond for r in records])
        payload = {"key": key, "codes": torch.stack([r.codes for r in records]), "cond": conds}
        payload["texts"] = [r.text for r in records]
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        return cls(records)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to zero at `total` (transformers'
    get_cosine_schedule_with_warmup, as the official run, except that step 0 already gets a small rate)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _precision(cfg: TrainConfig, device):
    """(autocast dtype or None, use GradScaler)."""
    import torch

    choice = cfg.precision
    if choice == "auto":
        if device.type != "cuda":
            return None, False
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if choice == "fp32":
        return None, False
    if choice == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device (use bf16 or fp32)")
    return (torch.bfloat16, False) if choice == "bf16" else (torch.float16, True)


def _rng_state() -> dict:
    import torch

    name, key, pos, has_gauss, gauss = np.random.get_state()
    # Plain lists and numbers (no numpy arrays), so that checkpoints load with torch.load(weights_only=True).
    numpy_state = [name, key.tolist(), int(pos), int(has_gauss), float(gauss)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CKPT_DIR
    return sorted(folder.glob("step_*.pt")) if folder.is_dir() else []


def save_checkpoint(run_dir: Path, step: int, payload: dict, keep: int) -> Path:
    """Write step_NNNNNNNN.pt atomically (temporary file, then rename) and keep only the last `keep`."""
    import torch

    folder = Path(run_dir) / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:08d}.pt"
    tmp = folder / f".{path.name}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, previous: Path | None = None) -> dict:
    """Read a checkpoint; CheckpointError naming the file (and the previous checkpoint to fall back to)."""
    import torch

    fallback = (
        f"; the previous checkpoint is {previous}: resume from it with --resume-from {previous}"
        if previous is not None
        else "; no earlier checkpoint is left: start a new run"
    )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/zip error means the same thing to the user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupted or unreadable ({first}){fallback}") from None
    if not isinstance(payload, dict) or payload.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not an imusic training checkpoint{fallback}")
    return payload


@dataclass
class RunResult:
    step: int
    history: dict
    outputs: dict[str, str]
    run_dir: Path


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    resume_from: str | Path | None = None,
    changes: Sequence[str] = RESUME_CHANGES,
    progress: bool = True,
    stop_after: int | None = None,
    export: bool = True,
) -> RunResult:
    """Run (or continue) training into `run_dir`.

    On resume the saved configuration defines the run; only the fields named in `changes` are taken from `cfg`.
    `stop_after` ends the call after that global step (tests use it to simulate an interruption); the schedule still
    follows `cfg.steps`."""
    import torch

    from engine.device import parse_device
    from engine.plots import plot_curves

    started = time.monotonic()  # wall time includes loading and encoding the code pool
    run_dir = Path(run_dir).expanduser()
    existing = list_checkpoints(run_dir)
    payload = None
    if resume or resume_from is not None:
        chosen = Path(resume_from) if resume_from is not None else (existing[-1] if existing else None)
        if chosen is None:
            raise CheckpointError(f"nothing to resume in {run_dir}: it holds no checkpoint")
        if not chosen.is_file():
            raise CheckpointError(f"no checkpoint at {chosen}")
        earlier = [p for p in existing if p.name < chosen.name]
        payload = load_checkpoint(chosen, earlier[-1] if earlier else None)
        saved = TrainConfig.from_dict(payload["config"])
        # The saved run defines the run; only how long it goes, how often it reports and where it runs may change.
        cfg = TrainConfig.from_dict({**asdict(saved), **{k: getattr(cfg, k) for k in changes}})
    elif existing:
        raise ConfigError(f"{run_dir} already holds a run ({existing[-1].name}); pass --resume or choose a new folder")
    cfg.check()

    device = parse_device(cfg.device) or torch.device("cpu")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    # Stages that build files of their own (the base stage's template) keep them inside the run folder.
    cfg = replace(cfg, extra={**cfg.extra, "run_dir": str(run_dir)})
    stage = STAGES[cfg.stage](cfg, device)
    train_data = stage.dataset("train")
    if cfg.pool:
        key = {k: v for k, v in asdict(cfg).items() if k in POOL_KEY}
        train_data = CodePool.build(stage, train_data, cfg.pool, run_dir, cfg.batch, key, log=progress)
    try:
        val_data = stage.dataset("validation")
    except DataError as exc:
        val_data = None
        print(f"imusic train: no validation loss ({exc})", file=sys.stderr)
    autocast_dtype, use_scaler = _precision(cfg, device)

    params = stage.parameters()
    if not params:
        raise ConfigError(f"stage {cfg.stage} has no trainable parameters")
    groups: list[dict] = [{"params": params}]
    if cfg.gate_lr:  # the scalar gates in a group of their own (no weight decay), on the same schedule
        gate_ids = {id(p) for n, p in stage.module.named_parameters() if n.endswith("fusion.gates")}
        groups = [{"params": [p for p in params if id(p) not in gate_ids]}]
        groups.append({"params": [p for p in params if id(p) in gate_ids], "lr": cfg.gate_lr, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)  # default betas, as official
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup, cfg.steps))
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    sampler = BatchSampler(len(train_data), cfg.seed)
    history: dict[str, list] = {"train": [], "val": [], "lr": []}
    step = 0
    if payload is not None:
        stage.load_trainable_state(payload["trainable"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        if payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        sampler = BatchSampler(len(train_data), cfg.seed, payload["sampler"]["epoch"], payload["sampler"]["position"])
        history = payload["history"]
        step = int(payload["step"])
        _set_rng_state(payload["rng"])
    workers = cfg.workers if cfg.workers is not None else (0 if device.type == "cpu" else min(4, os.cpu_count() or 1))
    if cfg.pool:
        workers = 0  # the pool is in memory: nothing to decode ahead
    feeder = ClipFeeder(train_data, sampler, cfg.batch, workers, cfg.seed)

    def autocast():
        if autocast_dtype is None:
            import contextlib

            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    def validation_loss() -> float | None:
        if val_data is None or cfg.val_clips == 0:
            return None
        stage.module.eval()
        # Evenly spread over the split (items are grouped by song), the same clips every time.
        chosen = sorted({int(i) for i in np.linspace(0, len(val_data) - 1, min(len(val_data), cfg.val_clips))})
        total = 0.0
        with torch.no_grad(), autocast():
            for start in range(0, len(chosen), cfg.batch):
                items = [val_data[i] for i in chosen[start : start + cfg.batch]]
                total += float(stage.loss(items)) * len(items)
        stage.module.train()
        return total / len(chosen)

    def checkpoint() -> Path:
        # Wall time of the whole run, summed over its sessions (a resumed run adds its own).
        history["wall_seconds"] = wall_before + (time.monotonic() - started)
        state = {
            "format": CKPT_FORMAT,
            "version": CKPT_VERSION,
            "stage": cfg.stage,
            "step": step,
            "config": asdict(cfg),
            "trainable": stage.trainable_state(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if use_scaler else None,
            "sampler": sampler.state(),
            "rng": _rng_state(),
            "history": history,
        }
        return save_checkpoint(run_dir, step, state, cfg.keep)

    if payload is None:  # a fresh run: the stage's one-off start (the adapters' prefix alignment)
        align_sampler, keyed = BatchSampler(len(train_data), cfg.seed + 1), _Keyed(train_data)

        def align_batch() -> list[Encoded]:
            items = [keyed[key][1] for key in align_sampler.next_keys(cfg.batch)]
            return items if cfg.pool else stage.encode(items)

        prepared = stage.prepare(align_batch)
        if prepared is not None:
            history["prepare"] = prepared

    def write_history() -> None:
        (run_dir / HISTORY).write_text(json.dumps({"config": asdict(cfg), **history}, indent=1))
        plot_curves(history["train"], run_dir / CURVES, val=history["val"], lr=history["lr"], title=cfg.stage)

    run_dir.mkdir(parents=True, exist_ok=True)
    last = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    wall_before = float(history.get("wall_seconds", 0.0))
    bar = None
    # A live bar on a terminal; plain lines every log_every steps in a log file (nohup, cluster jobs).
    log_lines = progress and not sys.stderr.isatty()
    if progress and not log_lines:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.stage}", unit="step", dynamic_ncols=True)
    try:
        while step < last:
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(cfg.accum):
                items = feeder.next()
                with autocast():
                    loss = stage.loss(items)
                if not torch.isfinite(loss):
                    raise DataError(f"the loss became {float(loss)} at step {step + 1}: lower --lr or check the data")
                scaler.scale(loss / cfg.accum).backward()
                step_loss += float(loss.detach()) / cfg.accum
            scaler.unscale_(optimizer)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            history["lr"].append((step, optimizer.param_groups[0]["lr"]))
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            history["train"].append((step, step_loss))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}")
            if step % cfg.val_every == 0 or step == cfg.steps:
                val = validation_loss()
                if val is not None:
                    history["val"].append((step, val))
                    if bar is not None:
                        bar.set_postfix(loss=f"{step_loss:.4f}", val=f"{val:.4f}")
            if log_lines and (step % cfg.log_every == 0 or step == last):
                val_text = f" val {history['val'][-1][1]:.4f}" if history["val"] else ""
                lr_now = history["lr"][-1][1]
                print(f"step {step}/{cfg.steps} loss {step_loss:.4f}{val_text} lr {lr_now:.3g}", file=sys.stderr)
            if step % cfg.ckpt_every == 0 or step == last:
                checkpoint()
                write_history()
    finally:
        if bar is not None:
            bar.close()
    outputs: dict[str, str] = {}
    if export and step >= cfg.steps:
        stage.module.eval()
        info = {"steps": step, "data": str(cfg.data), "seed": cfg.seed}
        if history["val"]:
            info["final_val_loss"] = history["val"][-1][1]
        outputs = stage.export(run_dir, info)
    return RunResult(step=step, history=history, outputs=outputs, run_dir=run_dir)


# ---- command line ---------------------------------------------------------------------------------------------------


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
    ("--precision", "precision", str, "auto (bf16/fp16 autocast on CUDA, fp32 elsewhere), fp32, bf16, fp16"),
    ("--seed", "seed", int, "seed of the initialisation and the clip draws (default {default})"),
    ("--workers", "workers", int, "clip-loading processes (default: 0 on CPU, up to 4 on GPU)"),
    ("--align-steps", "align_steps", int, "adapters: fit the prefix alignment for N batches first (0: official init)"),
    ("--gate-init", "gate_init", float, "adapters: initial fusion gates (default 0, official)"),
    ("--fused-layers", "fused_layers", int, "adapters: audio fusion on the top N layers only (default: all)"),
    ("--window", "window", float, "adapter condition window in seconds (default: the base's, else 10 s)"),
    ("--pool", "pool", int, "encode N epochs of training clips once and train on that pool (default 0: fresh draws)"),
    ("--log-every", "log_every", int, "log line every N steps when not on a terminal (default {default})"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`imusic train` options (defaults: the official adapter hyper-parameters)."""
    defaults = TrainConfig()
    parser.add_argument("--data", help="stem data set folder (Slakh, MoisesDB or plain folders of stems)")
    parser.add_argument("--base", help="base model: our model dir, a transformers/audiocraft dir, or a cached hub name")
    parser.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run folder (checkpoints, result)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in RUN_DIR")
    parser.add_argument("--resume-from", metavar="CKPT", help="continue from this checkpoint file")
    for flag, name, kind, text in _OPTIONS:
        default = getattr(defaults, name)
        parser.add_argument(flag, type=kind, default=None, help=text.format(default=default, stages=", ".join(STAGES)))
    sizes = parser.add_argument_group("new base model from a codec directory (--stage base --base CODEC_DIR)")
    sizes.add_argument("--layers", type=int, help="decoder layers (default 4)")
    sizes.add_argument("--dim", type=int, help="decoder width (default 256)")
    sizes.add_argument("--heads", type=int, help="decoder attention heads (default 4)")
    sizes.add_argument("--text-dim", type=int, help="text encoder width (default 128)")
    codec = parser.add_argument_group("codec stage (--stage codec)")
    codec.add_argument(
        "--quantize-after", type=int, help="steps trained without quantisation before the codebooks start (default 0)"
    )
    codec.add_argument(
        "--wave-mse", type=float, metavar="WEIGHT", help="weight of the waveform's normalised MSE loss (default 0)"
    )
    codec.add_argument(
        "--init-codec",
        metavar="CODEC_DIR",
        help="start from this exported codec's weights and codebooks (same sizes), with a new optimiser and schedule",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Train (or resume), then print where the result is."""
    from engine.device import default_device

    if args.stage == "codec":  # stage 1 of the embedded model: its own loop (EMA codebooks, Adam), engine.codec_train
        from engine.codec_train import run_stage

        return run_stage(args)

    resuming = bool(args.resume or args.resume_from)
    if not resuming and not (args.data and args.base):
        raise ConfigError("--data and --base are required for a new run (a resumed run remembers them)")
    given = {name: getattr(args, name) for _, name, _, _ in _OPTIONS if getattr(args, name) is not None}
    if args.data:
        given["data"] = str(args.data)
    if args.base:
        given["base"] = str(args.base)
    extra = {name: getattr(args, name) for name in ("layers", "dim", "heads", "text_dim")}
    given["extra"] = {name: value for name, value in extra.items() if value is not None}
    if not resuming and "device" not in given:
        given["device"] = str(default_device())
    ignored = sorted(name for name in set(given) - set(RESUME_CHANGES) if given[name]) if resuming else []
    if ignored:
        print(f"imusic train: resuming keeps the run's own {', '.join(ignored)}", file=sys.stderr)
    changes = [name for name in RESUME_CHANGES if name in given]
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
