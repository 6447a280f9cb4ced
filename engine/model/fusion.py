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
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import ConfigError
from engine.model import delay
from engine.model.attention import PrefixKV, merge_heads, split_heads
from engine.model.config import FusionConfig, LMConfig

if TYPE_CHECKING:
    from engine.model.lm import MusicGenLM


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
        self.special_token = cfg.special_token
        # official init: randn positional table, default Linear init, zero gates
        self.pos_emb = nn.Parameter(torch.randn(self.num_fused + 1, fusion.cond_frames, cfg.dim))
        self.merge_linear = nn.ModuleList([nn.Linear(cfg.dim, cfg.dim, bias=False) for _ in range(self.num_fused)])
        self.gates = nn.Parameter(torch.zeros(self.num_fused))

    def prefixes(self, lm: MusicGenLM, cond_codes: torch.Tensor) -> list[PrefixKV | None]:
        """cond_codes [B, K, Tc] -> per model layer a PrefixKV with [B, H, Tc + 1, Dh] tensors (None if not fused)."""
        lm.check_codes(cond_codes, "condition codes")
        batch, _, num_codes = cond_codes.shape
        frames = num_codes + 1
        if num_codes < 1:
            raise ConfigError("the condition audio is empty: it needs at least one frame")
        if num_codes > self.cfg.window_frames:
            raise ConfigError(
                f"condition audio of {num_codes} frames is longer than the adapter's window "
                f"({self.cfg.window_frames} frames); edit it in windows"
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


# ---- a start that trains at small scale (not the official init; see `align_prefix`) ---------------------------------


def zero_output_init(lm: MusicGenLM, noise: float = 0.0, seed: int = 0) -> None:
    """merge_linear = 0 and pos_emb chosen so that every fused layer's condition input h is exactly 0.

    With h = 0 the prefix queries, keys and values are 0 (the projections have no bias), so the prefix adds nothing
    whatever the gates: the model is unchanged, but unlike zero gates every adapter weight gets a gradient. With M = 0
    the condition stream does not depend on the audio, so the cancelling table is computed once here. `noise` adds a
    seeded Gaussian of that std to the table (the positional pattern `align_prefix` starts from).
    """
    fusion = lm.fusion
    if fusion is None:
        raise ConfigError("this model has no audio-fusion adapter")
    with torch.no_grad():
        for linear in fusion.merge_linear:
            linear.weight.zero_()
        fusion.pos_emb.zero_()
        o = torch.zeros(1, 1, fusion.pos_emb.shape[-1], dtype=fusion.pos_emb.dtype, device=fusion.pos_emb.device)
        for j in range(fusion.num_fused):
            layer = lm.layers[fusion.first_layer + j]
            fusion.pos_emb[j + 1] = -layer.norm1(o.to(layer.norm1.weight.dtype))[0, 0].to(fusion.pos_emb.dtype)
            o = o + layer.ffn(layer.norm2(o.to(layer.norm2.weight.dtype))).to(o.dtype)  # attention output is 0
        if noise:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            fusion.pos_emb.add_(torch.randn(fusion.pos_emb.shape, generator=gen).to(fusion.pos_emb) * noise)


def prefix_alignment(
    lm: MusicGenLM, queries: dict[int, torch.Tensor], cond_codes: torch.Tensor, width: int = 1
) -> tuple[torch.Tensor, torch.Tensor, list[float], list[float]]:
    """How well each fused layer's prefix attention lines step s up with condition frame s.

    `queries`: the main stream's self-attention queries per layer ([B, H, T, Dh], from a run with zero gates).
    Returns (-mean log attention mass on frames s - width .. s + width, summed over fused layers; the mean squared
    prefix values, summed over fused layers; per-layer mass; per-layer mean squared value), the first two
    differentiable.
    """
    prefixes: list[PrefixKV | None] = lm.fusion.prefixes(lm, cond_codes)
    loss = cond_codes.new_zeros((), dtype=torch.float32)
    value_loss = cond_codes.new_zeros((), dtype=torch.float32)
    masses, values = [], []
    for index, prefix in enumerate(prefixes):
        if prefix is None:
            continue
        q = queries[index]
        steps, frames = q.shape[2], prefix.k.shape[2]
        centre = torch.arange(steps, device=q.device).clamp(max=frames - 2)
        scores = (q + prefix.q.index_select(2, centre)).float() @ prefix.k.float().transpose(-1, -2)
        log_w = (scores * q.shape[-1] ** -0.5).log_softmax(-1)  # [B, H, T, Tc + 1]
        near = (torch.arange(frames, device=q.device)[None, :] - centre[:, None]).abs() <= width
        log_mass = torch.logsumexp(log_w.masked_fill(~near, float("-inf")), dim=-1)
        loss = loss - log_mass.mean()
        value_sq = prefix.v.float().pow(2).mean()
        value_loss = value_loss + value_sq
        masses.append(float(log_mass.detach().exp().mean()))
        values.append(float(value_sq.detach()))
    return loss, value_loss, masses, values


def align_prefix(
    lm: MusicGenLM,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]],
    *,
    lr: float = 0.05,
    value_weight: float = 1.0,
    noise: float = 0.5,
    seed: int = 0,
    log: Callable[[int, float, list[float], list[float]], None] | None = None,
) -> dict[str, Any]:
    """Start the audio fusion in time with the music, then let training fill in the content.

    Measured on the embedded model's base (docs/embedded_model/fusion.md): with the official init (randn pos_emb,
    default merge_linear, zero gates) the prefix attention of every layer fell on one arbitrary frame (entropy ~0.5
    nats over 251 frames, 2 % of its mass within a frame of the step), so opening a gate only added noise, the gates
    stayed shut and no adapter weight learnt to carry the audio. Here, before training: merge_linear = 0 (no
    content yet) and pos_emb is fitted (Adam, `lr`) so that step s attends to condition frames s - 1 .. s + 1 while
    the prefix values stay small (`value_weight` times their mean square): the gates can then open without noise.

    `batches` yields (codes [B, K, T], text_states, text_mask, cond_codes [B, K, T]) for as many steps as wanted.
    The gates are held at zero during the fit (the main stream then does not depend on the prefix); the caller sets
    them afterwards. Returns {"steps", "loss", "mass", "value"} of the last step and "mass_before", "value_before"
    of the adapter as it came (per fused layer).
    """
    fusion = lm.fusion
    optimizer = torch.optim.Adam([fusion.pos_emb], lr=lr)
    gates = fusion.gates.detach().clone()
    was_training = lm.training
    lm.eval()
    result: dict[str, Any] = {"steps": 0}
    # a base stored in bf16/fp16 (training under autocast) runs under autocast here too
    low = lm.dtype if lm.dtype in (torch.bfloat16, torch.float16) else None
    try:
        with torch.no_grad():
            fusion.gates.zero_()
        for step, (codes, text_states, text_mask, cond_codes) in enumerate(batches, start=1):
            with torch.autocast(lm.device.type, dtype=low or torch.bfloat16, enabled=low is not None):
                with torch.no_grad():
                    ctx = lm.text_context(text_states, text_mask)
                    ctx.queries = {}
                    inputs = delay.build(codes, lm.special_token)[..., : codes.shape[-1]]
                    lm.run(inputs, ctx)
                    if step == 1:  # the alignment the adapter came with (the official init for a new one)
                        _, _, result["mass_before"], result["value_before"] = prefix_alignment(
                            lm, ctx.queries, cond_codes
                        )
                        zero_output_init(lm, noise=noise, seed=seed)
                loss, value_loss, masses, values = prefix_alignment(lm, ctx.queries, cond_codes)
            total = loss + value_weight * value_loss
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            result.update(steps=step, loss=float(loss.detach()), mass=masses, value=values)
            if log is not None:
                log(step, result["loss"], masses, values)
    finally:
        with torch.no_grad():
            fusion.gates.copy_(gates)
        lm.train(was_training)
    return result
