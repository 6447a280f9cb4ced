"""The base stage: a text-to-music model from scratch (decoder + text encoder), codes from a frozen codec."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from engine.device import to_device
from engine.errors import CheckpointError, ConfigError
from engine.files import read_json_object, user_path, write_json_atomic
from engine.model.codec import Codec
from engine.model.lm import MusicGenLM
from engine.model.text import tokenize, zero_padding
from engine.train.config import BASE_SIZES, RUN_MODEL, TrainConfig
from engine.train.stages import Encoded, Stage, base_parts, drop_text, encode_audio, open_split, replace_dir
from engine.train.template import build_base_template
from engine.weights import detect_layout
from engine.weights.convert import lm_state_to_transformers
from engine.weights.loader import new_model_card, write_model_card
from engine.weights.names import BASE_DIR, CONFIG
from engine.weights.transformers_layout import (
    is_codec_dir,
    lm_config,
    load_hf_musicgen,
    load_tokenizer,
    quiet_transformers,
    read_config,
)

TEMPLATE_RECORD = "built_from.json"  # beside the template: the codec, sizes and seed it was built from


class BaseStage(Stage):
    """A base text-to-music model from scratch: decoder + text encoder + text_proj, codes from the frozen codec.

    --base gives the architecture, tokenizer and codec (a transformers-layout directory, or our model dir with one);
    the decoder and text encoder weights are re-initialised. Given a bare codec directory (the codec stage's output),
    a template is built around it first (`build_base_template`, sizes from TrainConfig.extra). Captions name what
    sounds ("drums and bass").
    """

    name = "base"

    def __init__(self, cfg: TrainConfig, device: torch.device | str) -> None:
        self.cfg = cfg
        if is_codec_dir(user_path(cfg.base)):
            template = Path(cfg.extra.get("run_dir", ".")) / "template"
            sizes = {k: int(v) for k, v in cfg.extra.items() if k in BASE_SIZES}
            # What the template is built from: a template left by an earlier attempt with other sizes or another
            # codec is built again, never reused (its sizes would silently become the model's).
            recipe = {"codec": str(user_path(cfg.base).resolve()), "sizes": sizes, "seed": cfg.seed}
            record = template / TEMPLATE_RECORD
            built = read_json_object(record, "", ConfigError) if record.is_file() else None
            if not (template / CONFIG).is_file() or (built is not None and built != recipe):
                shutil.rmtree(template, ignore_errors=True)
                build_base_template(user_path(cfg.base), template, seed=cfg.seed, **sizes)
                write_json_atomic(record, recipe)
            cfg = replace(cfg, base=str(template))
            self.cfg = cfg
        self.base_path, self.base_card, _ = base_parts(cfg.base)
        if detect_layout(self.base_path) != "transformers":
            raise ConfigError("--stage base needs a transformers-layout --base (its config, tokenizer and codec)")
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

    def dataset(self, split: str) -> Any:
        return open_split(self.cfg, split, self.codec.sample_rate, kind="caption")

    def _encode_text(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = tokenize(self.tokenizer, list(captions))  # as the edits' encoder tokenizes (engine.model.text)
        ids, mask = to_device(ids, self.device), to_device(mask, self.device)
        return zero_padding(self.text_model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    def encode(self, items: Sequence[Any]) -> list[Encoded]:
        codes = encode_audio(self.codec, [clip.audio for clip in items])  # [B, K, F]
        return [Encoded(c, None, clip.caption) for c, clip in zip(codes, items, strict=True)]

    def loss_codes(self, records: Sequence[Encoded]) -> Any:
        text_states, text_mask = self._encode_text([r.text for r in records])
        if self.lm.training:
            text_states, text_mask = drop_text(text_states, text_mask, self.cfg.text_dropout)
        codes = to_device(torch.stack([r.codes for r in records]), self.device).long()  # [B, K, F]
        loss, _ = self.lm.loss(codes, text_states, text_mask, None)
        return loss

    def export(self, run_dir: Path, info: dict) -> dict[str, str]:
        hf_model = load_hf_musicgen(self.base_path)
        hf_model.text_encoder.load_state_dict(self.text_model.state_dict())
        decoder = lm_state_to_transformers({n: t.detach().cpu() for n, t in self.lm.state_dict().items()})
        result = hf_model.load_state_dict(decoder, strict=False)
        wrong = [n for n in result.missing_keys if n.startswith(("decoder.", "enc_to_dec_proj."))]
        if wrong or result.unexpected_keys:
            raise CheckpointError(f"internal error: the trained decoder does not map onto {self.base_path}: {wrong}")
        model_dir = replace_dir(run_dir / RUN_MODEL)
        with quiet_transformers():
            hf_model.save_pretrained(model_dir / BASE_DIR)
            self.tokenizer.save_pretrained(model_dir / BASE_DIR)
        provenance = {"trained_by": "imusic train --stage base", "architecture_from": str(self.base_path), **info}
        write_model_card(model_dir, new_model_card(f"base-{run_dir.name}", provenance=provenance))
        return {"model": str(model_dir)}
