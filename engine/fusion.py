"""Instruct-MusicGen adapters (arXiv 2405.18386; official code ldzhangyx/instruct-MusicGen, model.py,
transformer_cc.py): audio fusion and text fusion (LoRA).

Audio fusion. The condition audio's codes get one special token appended (T frames -> T + 1 condition frames) and
are embedded with MusicGen's own tables (summed over codebooks). A condition stream runs through the *same frozen*
layers (norm1, self-attention, norm2, FFN; no cross-attention) of the fused (top) layers:

    o = pos_emb[0]
    layer j:  h = norm1(o) + merge_linear[j](cond_emb) + pos_emb[j + 1]
              q_c, k_c, v_c = self_attn.q/k/v(h);  o += out(attn(q_c, k_c, v_c));  o += ffn(norm2(o))

The main model's self-attention at that layer, for pattern step s, becomes
    out(attn(q, k, v, causal) + gate[j] * attn(q + q_c[s], k_c, v_c))       (prefix attention not causal)
gates start at zero, so the untrained adapter leaves MusicGen unchanged.

Alignment: pattern step s uses condition frame min(s, Tc - 1), Tc = number of condition codes. The loss reads steps
0..T-1 (with Tc = T: frame s exactly, as in official training, whose extra step T is discarded by the loss); the
official inference code (EmbFn.crop) clamps steps >= Tc to frame Tc - 1, which is the same rule. The appended special
frame Tc is seen only through the condition keys and values.

Text fusion: LoRA (rank 32, alpha 64 by default) on the cross-attention q and v projections.

Adapter parameter names (all under `fusion.` or containing `.lora_`):
    fusion.pos_emb                     [fused + 1, cond_frames, dim]
    fusion.merge_linear.{j}.weight     [dim, dim]   (no bias), j = 0 .. fused-1 for model layer num_layers-fused+j
    fusion.gates                       [fused]
    layers.{i}.cross_attn.{q,v}.lora_a [rank, dim]
    layers.{i}.cross_attn.{q,v}.lora_b [dim, rank]
The official checkpoint names map one to one: cp_transformer.{pos_emb, merge_linear.{j}.weight, gates}, and
...layers.{i}.cross_attention.{q,v}_proj.lora_{A,B}.default.weight.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import FusionConfig, LMConfig
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.model import MusicGenLM, PrefixKV


class LoRALinear(nn.Module):
    """A bias-free Linear plus a low-rank update: y = x W^T + scale * (x A^T) B^T. B starts at zero."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        self.scale = float(alpha) / rank
        if self.weight.device.type != "meta":
            # the same init as nn.Linear / peft's lora_A (kaiming uniform, a = sqrt(5))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    @classmethod
    def wrap(cls, linear: nn.Linear, rank: int, alpha: float) -> LoRALinear:
        """Replace a bias-free Linear, keeping its weight tensor (same name: `.weight`)."""
        lora = cls(linear.in_features, linear.out_features, rank, alpha).to(linear.weight.device, linear.weight.dtype)
        lora.weight = linear.weight
        return lora

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale


def add_lora(lm: MusicGenLM, fusion: FusionConfig) -> None:
    """Put LoRA on the cross-attention projections named by fusion.lora_targets, in every layer."""
    if not fusion.lora_rank:
        return
    for layer in lm.layers:
        for target in fusion.lora_targets:
            linear = getattr(layer.cross_attn, target)
            setattr(layer.cross_attn, target, LoRALinear.wrap(linear, fusion.lora_rank, fusion.lora_alpha))


class AudioFusion(nn.Module):
    """Trainable part of the audio fusion; the condition pass borrows the decoder's frozen layers."""

    def __init__(self, cfg: LMConfig, fusion: FusionConfig):
        super().__init__()
        self.cfg = fusion
        self.num_fused = fusion.num_fused(cfg.num_layers)
        self.first_layer = cfg.num_layers - self.num_fused
        self.special_token = cfg.card
        # official init: randn positional table, default Linear init, zero gates
        self.pos_emb = nn.Parameter(torch.randn(self.num_fused + 1, fusion.cond_frames, cfg.dim))
        self.merge_linear = nn.ModuleList([nn.Linear(cfg.dim, cfg.dim, bias=False) for _ in range(self.num_fused)])
        self.gates = nn.Parameter(torch.zeros(self.num_fused))

    def prefixes(self, lm: MusicGenLM, cond_codes: torch.Tensor) -> list[PrefixKV | None]:
        """cond_codes [B, K, Tc] -> per model layer a PrefixKV with [B, H, Tc + 1, Dh] tensors (None if not fused)."""
        from engine.model import PrefixKV, merge_heads, split_heads

        lm._check_codes(cond_codes, "condition codes")
        batch, _, num_codes = cond_codes.shape
        frames = num_codes + 1
        if num_codes < 1:
            raise ConfigError("the condition audio is empty: it needs at least one frame")
        if frames > self.cfg.cond_frames:
            raise ConfigError(
                f"condition audio of {num_codes} frames is longer than the adapter's window "
                f"({self.cfg.cond_frames - 1} frames); edit it in windows"
            )
        special = cond_codes.new_full((batch, cond_codes.shape[1], 1), self.special_token)
        cond_emb = lm.embed(torch.cat([cond_codes, special], dim=-1))  # [B, Tc+1, D]
        out: list[PrefixKV | None] = [None] * len(lm.layers)
        o = self.pos_emb[0, :frames].to(cond_emb.dtype).expand(batch, -1, -1)  # condition stream [B, Tc+1, D]
        for j in range(self.num_fused):
            index = self.first_layer + j
            layer = lm.layers[index]
            attn = layer.self_attn
            h = layer.norm1(o) + self.merge_linear[j](cond_emb) + self.pos_emb[j + 1, :frames].to(cond_emb.dtype)
            q = split_heads(attn.q(h), attn.num_heads)  # [B, H, Tc+1, Dh]
            k = split_heads(attn.k(h), attn.num_heads)
            v = split_heads(attn.v(h), attn.num_heads)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=self.cfg.cond_causal)
            o = o + attn.out(merge_heads(a))
            o = o + layer.ffn(layer.norm2(o))
            out[index] = PrefixKV(q, k, v, self.gates[j])
        return out


def adapter_parameter_count(cfg: LMConfig, fusion: FusionConfig) -> tuple[int, int]:
    """(adapter parameters, base parameters) of a configuration, built on the meta device (nothing allocated)."""
    from engine.model import MusicGenLM

    with torch.device("meta"):
        lm = MusicGenLM(cfg, fusion)
    return lm.num_parameters(adapters=True), lm.num_parameters(adapters=False)
