"""The fused one-token decode step: the fast path of `generate` for small, overhead-bound models.

A decode step of a small model is bound by per-op overhead, not by arithmetic, so `prepare_decode` lays the weights
out for as few ops as possible on 2-D [B, D] rows: q/k/v stacked and prescaled, FFN weights prescaled for a cheaper
GELU, all heads and embedding tables stacked, and the cross-attention folded through the fixed text keys/values. The
copies are remembered on the model (`DerivedWeights`) until a source tensor changes. `MusicGenLM.run` takes
`decode_step` for single eager steps once `ctx.plan` is set; tests/test_generate.py pins it to the full pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.attention import Attention
from engine.model.fusion import LoRALinear

if TYPE_CHECKING:
    from engine.model.lm import Context, KVCache, MusicGenLM

_SQRT_HALF = math.sqrt(0.5)


def _weight(module: nn.Module) -> torch.Tensor | None:
    """The [out, in] matrix a bias-free projection applies (LoRA merged in), None for a kind not known here."""
    if type(module) is nn.Linear and module.bias is None:
        return module.weight
    if type(module) is LoRALinear:
        return module.weight + (module.lora_b @ module.lora_a) * module.scale
    return None


@dataclass
class LayerPlan:
    """One layer's weights laid out for a one-token step on [B, D] rows: transposed views for mm/addmm, and the
    cross-attention folded through the fixed text keys/values (see `prepare_decode`)."""

    norm1: tuple  # (weight, bias, eps) of a LayerNorm
    qkv_t: torch.Tensor  # [D, 3D]
    out_t: torch.Tensor  # [D, D]
    norm_cross: tuple
    cross_scores_t: torch.Tensor | None  # [B, D, H * S]: h @ it = every head's scaled q.k over the text
    cross_bias: torch.Tensor | None  # [B, 1, H * S]: the text padding mask, per head
    cross_values: torch.Tensor | None  # [B, H * S, D]: per head v @ out-projection slice
    norm2: tuple
    fc1_t: torch.Tensor  # [D, F]
    fc2_t: torch.Tensor  # [F, D]


@dataclass
class DecodePlan:
    layers: list[LayerPlan]
    norm_out: tuple
    heads_t: torch.Tensor  # [D, K * card], contiguous: MKL reads it faster than a transposed view
    emb_table: torch.Tensor  # [K * (card + 1), D]
    emb_offsets: torch.Tensor  # [1, K]
    # filled by the first step: the cache tensors (a Module's buffer lookup costs ~1 us), bag offsets of the batch
    cache: list[KVCache] | None = None
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    bags: torch.Tensor | None = None  # [B]: 0, K, 2K, ...


class DerivedWeights:
    """Decode-only copies of a model's weights (stacked, transposed, prescaled), remembered across generations.

    Remaking the copies costs ~60 us per step of a 100-frame tiny generation. A copy is remembered until a source
    tensor changes: in place (torch's version counter, bumped by optimizer steps, load_state_dict, copy_) or by a new
    payload (`module.to(...)` swaps `param.data`). A detached alias of each source keeps its old memory alive while
    remembered, so a new payload can never sit at the same address.
    """

    def __init__(self):
        self.entries: dict[str, tuple[list, torch.Tensor]] = {}  # name -> (sources seen, copy)

    def get(self, name: str, sources: list[torch.Tensor], build) -> torch.Tensor:
        """build(sources), or the copy remembered under `name` while every source is unchanged."""
        try:
            key = [(t, t.detach(), t._version) for t in sources]
        except RuntimeError:  # inference tensors keep no version counter: never remembered
            return build(sources)
        hit = self.entries.get(name)
        if (
            hit is not None
            and len(hit[0]) == len(key)
            and all(
                t is old and t._version == version and t.data_ptr() == alias.data_ptr() and t.dtype == alias.dtype
                for t, (old, alias, version) in zip(sources, hit[0], strict=True)
            )
        ):
            return hit[1]
        value = build(sources)
        self.entries[name] = (key, value)
        return value


def prepare_decode(lm: MusicGenLM, ctx: Context, max_len: int, fuse: bool = True) -> None:
    """Derive decode-only data into ctx: the position table in the model dtype and, with `fuse`, stacked q/k/v,
    heads and embedding tables (fewer, larger ops per step: worth it where per-op overhead dominates), and the
    plan of the one-token eager step (`decode_step`).

    The stacked weights are copies, made once per generation: they never go stale when the model trains between
    calls, but they cost memory, so large models (bandwidth-bound anyway) skip them.
    """
    with torch.no_grad():
        ctx.pos_table = lm.positions(0, max_len).to(lm.dtype)
        if ctx.cross is not None:
            batch, heads, steps, _ = ctx.cross[0][0].shape
            # folded scores/values hold B*H*S rows of D each, the projections D rows each: fold when smaller (a
            # short text prompt: ~8% fewer bytes per step for musicgen-small), or always for overhead-bound models
            if fuse or batch * heads * steps <= lm.cfg.dim:
                folded = [fold_cross(layer.cross_attn, *ctx.cross[i], ctx.cross_bias) for i, layer in
                          enumerate(lm.layers)]  # fmt: skip
                ctx.cross_folded = None if any(f is None for f in folded) else folded
        if not fuse:
            return
        ctx.qkv = [
            lm.derived.get(
                f"qkv.{i}",
                [layer.self_attn.q.weight, layer.self_attn.k.weight, layer.self_attn.v.weight],
                torch.cat,
            )  # fmt: skip
            for i, layer in enumerate(lm.layers)
        ]
        heads = [head.weight for head in lm.heads]
        ctx.heads = lm.derived.get("heads", heads, torch.cat)
        ctx.emb_table = lm.derived.get("emb", [emb.weight for emb in lm.emb], torch.cat)
        rows = lm.cfg.card + 1
        ctx.emb_offsets = torch.arange(lm.cfg.num_codebooks, device=lm.device)[None, :, None] * rows
        ctx.plan = build_plan(lm, ctx)


def build_plan(lm: MusicGenLM, ctx: Context) -> DecodePlan | None:
    """The one-token step's layout; None when a projection is of a kind it does not know (then run() is used)."""

    def norm(module: nn.LayerNorm) -> tuple:
        return module.weight, module.bias, module.eps

    layers = []
    for index, layer in enumerate(lm.layers):
        out_weight = _weight(layer.self_attn.out)
        if out_weight is None:
            return None
        attn, ffn = layer.self_attn, layer.ffn
        # q rows carry the attention scale 1/sqrt(Dh); fc1 and fc2 carry GELU's 1/sqrt(2) (see decode_step)
        scale = lm.cfg.head_dim**-0.5
        qkv_t = lm.derived.get(f"step_qkv.{index}", [attn.q.weight, attn.k.weight, attn.v.weight],
                             lambda w, s=scale: torch.cat([w[0] * s, w[1], w[2]]).t().contiguous())  # fmt: skip
        fc1_t = lm.derived.get(f"step_fc1.{index}", [ffn.fc1.weight], lambda w: (w[0] * _SQRT_HALF).t().contiguous())
        fc2_t = lm.derived.get(f"step_fc2.{index}", [ffn.fc2.weight], lambda w: (w[0] * _SQRT_HALF).t().contiguous())
        scores_t = bias = values = None
        if ctx.cross is not None:
            if ctx.cross_folded is None:
                return None
            scores_t, bias, values = ctx.cross_folded[index]
        layers.append(
            LayerPlan(
                norm(layer.norm1),
                qkv_t,
                out_weight.t(),
                norm(layer.norm_cross),
                scores_t,
                bias,
                values,
                norm(layer.norm2),
                fc1_t,
                fc2_t,
            )  # fmt: skip
        )
    offsets = ctx.emb_offsets[:, :, 0]  # [1, K]
    heads_t = lm.derived.get("heads_t", [head.weight for head in lm.heads], lambda w: torch.cat(w).t().contiguous())
    return DecodePlan(layers, norm(lm.norm_out), heads_t, ctx.emb_table, offsets)


def fold_cross(cross: Attention, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None):
    """Fold the cross-attention's q and out projections through the fixed text keys/values [B, H, S, Dh].

    Per head h and text position s: score = (x Wq_h^T) . k_s / sqrt(Dh) = x . (k_s Wq_h) / sqrt(Dh), and the output
    sum_s p_s v_s Wout_h^T = sum_s p_s (v_s Wout_h^T). So a decode step does one batched product for the scores of
    every head and one for the output (with the residual), instead of q-projection, attention and out-projection.
    Returns (scores_t [B, D, H*S], bias [B, 1, H*S], values [B, H*S, D]) or None for an unknown projection kind.
    """
    q_weight, out_weight = _weight(cross.q), _weight(cross.out)
    if q_weight is None or out_weight is None:
        return None
    batch, heads, steps, head_dim = keys.shape
    dim = heads * head_dim
    # in the model dtype (a bf16 product accumulates in fp32 and rounds once, as q does in the plain path; no fp32
    # copies of large weights)
    scores = torch.matmul(keys * head_dim**-0.5, q_weight.view(heads, head_dim, dim))  # [B, H, S, D]
    scores_t = scores.reshape(batch, heads * steps, dim).transpose(1, 2).contiguous()
    per_head_out = out_weight.view(dim, heads, head_dim).permute(1, 2, 0)  # [H, Dh, D]
    folded_values = torch.matmul(values, per_head_out).reshape(batch, heads * steps, dim)
    if bias is None:
        bias = keys.new_zeros(batch, 1, 1, steps)
    bias = bias.expand(batch, heads, 1, steps).transpose(1, 2).reshape(batch, 1, heads * steps).contiguous()
    return scores_t, bias, folded_values


def decode_step(lm: MusicGenLM, seq: torch.Tensor, ctx: Context, position: int) -> torch.Tensor:
    """One eager decode step from ctx.plan: seq [B, K, 1] at `position` -> logits [B, K, 1, card].

    The same arithmetic as run() on 2-D [B, D] rows with the fewest ops: one embedding bag, mm/addmm with the
    residual folded in, the folded cross-attention; a step of a small model is bound by per-op overhead.
    """
    plan = ctx.plan
    batch = seq.shape[0]
    cfg = lm.cfg
    dim, heads = cfg.dim, cfg.num_heads
    head_dim = dim // heads
    shape = (dim,)
    end = position + 1
    if plan.cache is not ctx.cache or plan.bags is None or plan.bags.shape[0] != batch:
        plan.cache, plan.kv = ctx.cache, [(cache.k, cache.v) for cache in ctx.cache]
        plan.bags = torch.arange(0, batch * cfg.num_codebooks, cfg.num_codebooks, device=seq.device)
    # [B, D]: the K codebook rows summed in one bag (the raw op: F.embedding_bag's checks cost 4 us), + position
    codes = (seq[:, :, 0] + plan.emb_offsets).view(-1)
    x = torch.embedding_bag(plan.emb_table, codes, plan.bags, False, 0)[0] + ctx.pos_table[position]
    # torch.layer_norm, not the functional wrapper: half the call cost on [B, D] rows
    for index, layer in enumerate(plan.layers):
        h = torch.layer_norm(x, shape, *layer.norm1)
        qkv = torch.mm(h, layer.qkv_t)  # [B, 3D], q already scaled by 1/sqrt(Dh)
        q = qkv[:, :dim].reshape(batch * heads, 1, head_dim)
        cache_k, cache_v = plan.kv[index]
        cache_k[:, :, position] = qkv[:, dim : 2 * dim].view(batch, heads, head_dim)
        cache_v[:, :, position] = qkv[:, 2 * dim :].view(batch, heads, head_dim)
        # one query: two batched products and a softmax beat SDPA's kernel setup at these sizes
        keys = cache_k[:, :, :end].flatten(0, 1)  # [B*H, end, Dh]
        weights = torch.bmm(q, keys.transpose(1, 2)).softmax(dim=-1)  # [B*H, 1, end]
        a = torch.bmm(weights, cache_v[:, :, :end].flatten(0, 1))  # [B*H, 1, Dh]
        prefix = None if ctx.prefix is None else ctx.prefix[index]
        if prefix is not None:
            last = max(prefix.num_frames - 2, 0) if prefix.last is None else int(prefix.last)
            frame = min(position, last)  # condition frame of this step (fusion.py)
            q_cond = prefix.q[:, :, frame : frame + 1] * head_dim**-0.5
            q_all = q.view(batch, heads, 1, head_dim) + q_cond
            extra = F.scaled_dot_product_attention(q_all, prefix.k, prefix.v, attn_mask=prefix.mask, scale=1.0)
            a = a.view(batch, heads, 1, head_dim) + prefix.gate.to(a.dtype) * extra
        x = torch.addmm(x, a.reshape(batch, dim), layer.out_t)
        if layer.cross_scores_t is not None:
            h = torch.layer_norm(x, shape, *layer.norm_cross).view(batch, 1, dim)
            scores = torch.baddbmm(layer.cross_bias, h, layer.cross_scores_t)  # [B, 1, H*S]
            weights = scores.view(batch, heads, -1).softmax(dim=-1).view(batch, 1, -1)
            x = torch.baddbmm(x.view(batch, 1, dim), weights, layer.cross_values).view(batch, dim)
        h = torch.layer_norm(x, shape, *layer.norm2)
        # exact GELU(z) = z/2 (1 + erf(z/sqrt2)): with u = z/sqrt2 from the prescaled fc1 it is
        # (u + u erf u)/sqrt2, the 1/sqrt2 prescaled into fc2: erf and one fused multiply-add, 3x cheaper here
        u = torch.mm(h, layer.fc1_t)  # [B, F]
        x = torch.addmm(x, torch.addcmul(u, u, torch.erf(u)), layer.fc2_t)
    x = torch.layer_norm(x, shape, *plan.norm_out)
    return torch.mm(x, plan.heads_t).view(batch, cfg.num_codebooks, 1, cfg.card)
