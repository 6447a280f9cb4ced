"""The adapter stage: Instruct-MusicGen's audio fusion + LoRA on a frozen base (the official recipe).

Text encodings are cached per distinct prompt: an edit data set has only ops x stems of them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine.device import to_device
from engine.errors import ConfigError
from engine.eval.clips import spread_indices
from engine.files import link_tree
from engine.instructions import OFFICIAL_STEMS, OFFICIAL_TEMPLATE, OFFICIAL_VERBS, render_prompt
from engine.levels import rms_db
from engine.model.config import FusionConfig, cond_frames_for
from engine.model.fusion import align_prefix
from engine.train.config import RUN_ADAPTER, RUN_MODEL, TrainConfig, precision
from engine.train.stages import Encoded, Stage, base_parts, drop_text, encode_audio, open_split, replace_dir
from engine.weights import audiocraft_layout, detect_layout, read_adapter, transformers_layout
from engine.weights.adapter_format import base_reference, save_adapter
from engine.weights.loader import new_model_card, write_model_card
from engine.weights.names import ADAPTER_DIR, BASE_DIR

if TYPE_CHECKING:
    from engine.model.text import TextEncoder

LEVEL_CLIPS = 256  # training inputs whose median RMS the adapter records (the level the Editor feeds the model at)


class _TextCache:
    """Frozen text encoder outputs per distinct prompt, padded into batches ([B, S, dim], mask [B, S]). Kept on the
    CPU and moved as one batch: rows copied one by one from an accelerator would each wait for it."""

    def __init__(self, text: TextEncoder) -> None:
        self.text = text
        self.cache: dict[str, tuple[Any, Any]] = {}

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        for prompt in set(prompts) - set(self.cache):
            states, mask = self.text.encode([prompt])
            self.cache[prompt] = (states[0].cpu(), mask[0].cpu())
        width = max(self.cache[p][0].shape[0] for p in prompts)
        states = torch.zeros(len(prompts), width, self.text.dim, dtype=self.cache[prompts[0]][0].dtype)
        mask = torch.zeros(len(prompts), width, dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            one, one_mask = self.cache[prompt]
            states[row, : one.shape[0]] = one
            mask[row, : one.shape[0]] = one_mask
        return to_device(states, self.text.device), to_device(mask, self.text.device)


class AdapterStage(Stage):
    """Audio fusion + LoRA on a frozen base: target codes given input codes and the instruction (official recipe)."""

    name = "adapters"
    untrained_is_usable = True  # gates and LoRA B start at 0: the base, unchanged

    def __init__(self, cfg: TrainConfig, device: torch.device | str) -> None:
        self.cfg = cfg
        self.base_path, self.base_card, existing = base_parts(cfg.base)
        layout = detect_layout(self.base_path)
        load_parts = transformers_layout.load_parts if layout == "transformers" else audiocraft_layout.load_parts
        # Same adapter shape as the base's own adapter when it has one, else the official one; --window resizes it.
        fusion = read_adapter(existing)[1]["fusion"] if existing is not None else FusionConfig()
        if cfg.window:
            frame_rate = (transformers_layout if layout == "transformers" else audiocraft_layout).frame_rate(
                self.base_path
            )
            fusion = replace(fusion, cond_frames=cond_frames_for(cfg.window, frame_rate))
        if cfg.fused_layers is not None:  # the top N layers only (checked against the base when the model is built)
            fusion = replace(fusion, fused_layers=cfg.fused_layers)
        # Under autocast the frozen base is stored in the autocast dtype (half the memory of a 3.3B decoder); the
        # adapters, the only weights the optimizer updates, stay fp32 masters.
        frozen_dtype = precision(cfg, torch.device(device))[0] or torch.float32
        torch.manual_seed(cfg.seed)  # fresh adapters (gates and LoRA B at zero) from a seeded init
        self.lm, self.codec, self.text = load_parts(self.base_path, fusion=fusion, device=device, dtype=frozen_dtype)
        self.fusion = fusion
        self.lm.freeze_base()
        for param in self.lm.adapter_parameters():
            param.data = param.data.float()
        self.lm.train()
        self.module = self.lm
        frames = self.codec.num_frames(int(round(cfg.seconds * self.codec.sample_rate)))
        if frames > fusion.window_frames:
            raise ConfigError(
                f"--seconds {cfg.seconds:g} is longer than the adapter's window "
                f"({fusion.window_frames / self.codec.frame_rate:g} s)"
            )
        # The official instruction text; the adapter records it so that the Editor asks in the same words.
        self.template, self.verbs = OFFICIAL_TEMPLATE, dict(OFFICIAL_VERBS)
        self.stems: tuple[str, ...] = OFFICIAL_STEMS
        self.texts = _TextCache(self.text)

    def dataset(self, split: str) -> Any:
        data = open_split(self.cfg, split, self.codec.sample_rate)
        if split == "train":
            # The stems instructions may name: every class some training song can target, in a stable order.
            self.stems = tuple(sorted({cls for plan in data.plans for cls in plan.targets}))
        return data

    def encode(self, items: Sequence[Any]) -> list[Encoded]:
        prompts = [render_prompt(self.template, self.verbs, clip.op, clip.stem_name) for clip in items]
        codes = encode_audio(self.codec, [clip.target for clip in items])  # [B, K, F]
        cond_codes = encode_audio(self.codec, [clip.input for clip in items])  # [B, K, F]
        return [Encoded(c, cond, prompt) for c, cond, prompt in zip(codes, cond_codes, prompts, strict=True)]

    def loss_codes(self, records: Sequence[Encoded]) -> Any:
        text_states, text_mask = self.texts([r.text for r in records])  # [B, S, dim], [B, S]
        if self.lm.training:
            text_states, text_mask = drop_text(text_states, text_mask, self.cfg.text_dropout)
        codes = to_device(torch.stack([r.codes for r in records]), self.codec.device).long()  # [B, K, F]
        cond_codes = to_device(torch.stack([r.cond for r in records]), self.codec.device).long()  # [B, K, F]
        loss, _ = self.lm.loss(codes, text_states, text_mask, cond_codes)
        return loss

    def prepare(self, batches: Callable[[], list[Encoded]]) -> dict | None:
        """--align-steps: fit the prefix's positional table first (fusion.align_prefix), then set the gates."""
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
        provenance = {"trained_by": "imusic train --stage adapters", **info}
        base_ref = base_reference(self.lm.cfg, self.base_path)
        kwargs = {
            "stems": self.stems,
            "template": self.template,
            "verbs": self.verbs,
            "base": base_ref,
            "training": measure_training(self.cfg, self.codec.sample_rate),
        }
        state = self.lm.adapter_state_dict()
        adapter_dir = replace_dir(run_dir / RUN_ADAPTER)
        save_adapter(adapter_dir, state, self.fusion, provenance=provenance, **kwargs)
        model_dir = replace_dir(run_dir / RUN_MODEL)
        link_tree(self.base_path, model_dir / BASE_DIR)
        save_adapter(model_dir / ADAPTER_DIR, state, self.fusion, provenance=provenance, **kwargs)
        card = new_model_card(
            f"{self.base_card.get('name') or Path(self.base_path).name}-{run_dir.name}",
            stems=list(self.stems),
            provenance={
                **provenance,
                "base": str(self.base_path),
                "base_provenance": dict(self.base_card.get("provenance") or {}),
            },
        )
        write_model_card(model_dir, card)
        return {"adapter": str(adapter_dir), "model": str(model_dir)}


def measure_training(cfg: TrainConfig, sample_rate: int) -> dict[str, float]:
    """What an adapter trained with `cfg` trained on (adapter.json `training`): its clips' length, and the median RMS
    (dBFS) of LEVEL_CLIPS training inputs at the codec's `sample_rate`, spread over the split as the first epoch
    draws them."""
    data = open_split(cfg, "train", sample_rate)
    picks = spread_indices(len(data), LEVEL_CLIPS)
    levels = [level for i in picks if math.isfinite(level := rms_db(data[i].input))]
    facts = {"window_s": float(cfg.seconds)}
    if levels:
        facts["input_rms_db"] = round(float(np.median(levels)), 2)
    return facts
