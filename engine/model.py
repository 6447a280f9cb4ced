"""The MusicGen decoder, written so that Instruct-MusicGen's adapters and a fast decode loop fit in naturally.

Layout (pre-norm): summed per-codebook embeddings + sinusoidal positions; per layer causal self-attention (with an
optional gated audio-condition prefix, fusion.py), cross-attention to the projected text encoding, GELU FFN; final
norm; one linear head per codebook. Numerically pinned to transformers' MusicgenForCausalLM (tests/test_model_parity).

Three ways to run it, all through `MusicGenLM.run`:
- whole sequence, no cache (training, `forward`, `loss`);
- eager decode with a preallocated KV cache, `start` a Python int (CPU: attends to the filled part only);
- static decode, `start` a LongTensor of positions: every shape is fixed by the cache, so the step can be captured
  as a CUDA graph / torch.compile(mode="reduce-overhead").
Small models (overhead-bound) get a planned one-token step from `prepare_decode(fuse=True)`: 2-D rows, stacked and
prescaled weights (remembered across generations), the cross-attention folded through the text; run() takes it for
single eager steps. tests/test_generate.py pins it to the full pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine import delay
from engine.config import FusionConfig, LMConfig
from engine.errors import ConfigError, DataError


def sinusoids(num_positions: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[num_positions, dim] float32: cos half then sin half (transformers' MusicgenSinusoidalPositionalEmbedding)."""
    half = dim // 2
    # audiocraft: positions / max_period ** (i / (half - 1)); transformers writes the same as an exp.
    inv_freq = torch.exp(torch.arange(half, dtype=torch.float32, device=device) * -(math.log(10000.0) / (half - 1)))
    phase = torch.arange(num_positions, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=1)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, T, H * Dh] -> [B, H, T, Dh]"""
    batch, steps, width = x.shape
    if steps == 1:  # one decode step: the same memory read as [B, H, 1, Dh], no transpose needed
        return x.view(batch, num_heads, 1, width // num_heads)
    return x.view(batch, steps, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, Dh] -> [B, T, H * Dh]"""
    batch, heads, steps, head_dim = x.shape
    if steps == 1:
        return x.reshape(batch, 1, heads * head_dim)
    return x.transpose(1, 2).reshape(batch, steps, heads * head_dim)


def _norm(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    # the functional call skips nn.Module dispatch: a decode step makes hundreds of these calls
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


_SQRT_HALF = math.sqrt(0.5)


def _weight(module: nn.Module) -> torch.Tensor | None:
    """The [out, in] matrix a bias-free projection applies (LoRA merged in), None for a kind not known here."""
    from engine.fusion import LoRALinear

    if type(module) is nn.Linear and module.bias is None:
        return module.weight
    if type(module) is LoRALinear:
        return module.weight + (module.lora_b @ module.lora_a) * module.scale
    return None


def _linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(module) is nn.Linear:
        return F.linear(x, module.weight, module.bias)
    return module(x)  # LoRALinear


class Attention(nn.Module):
    """Multi-head attention projections (q, k, v, out; no bias). q/k/v stay separate so LoRA and loaders fit."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)


class FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, ffn_dim, bias=False)
        self.fc2 = nn.Linear(ffn_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.gelu(F.linear(x, self.fc1.weight)), self.fc2.weight)


class KVCache(nn.Module):
    """Preallocated self-attention keys/values of one layer, [B, H, max_len, Dh], in the model's dtype."""

    def __init__(self, batch: int, num_heads: int, max_len: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape = (batch, num_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


@dataclass
class PrefixKV:
    """One fused layer's condition prefix: q/k/v [B, H, Tc+1, Dh] from the condition pass, and its gate."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    gate: torch.Tensor

    @property
    def num_frames(self) -> int:
        return self.q.shape[2]

    def repeat(self, times: int) -> PrefixKV:
        """Batch-repeated copy (classifier-free guidance duplicates the prefix into both halves)."""
        return PrefixKV(
            self.q.repeat(times, 1, 1, 1), self.k.repeat(times, 1, 1, 1), self.v.repeat(times, 1, 1, 1), self.gate
        )


@dataclass
class Context:
    """What a run of the decoder attends to besides its own tokens."""

    cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer text (k, v) [B, H, S, Dh]
    cross_bias: torch.Tensor | None = None  # [B, 1, 1, S] additive, 0 = keep, dtype-min = padding
    prefix: list[PrefixKV | None] | None = None  # per layer, None where the layer is not fused
    cache: list[KVCache] | None = None  # per layer
    causal_mask: torch.Tensor | None = None  # static decode: [max_len, max_len] bool, row p = keys <= p
    # decode-only derived weights (MusicGenLM.prepare_decode): fewer, larger ops per step
    qkv: list[torch.Tensor] | None = None  # per layer self-attention q, k, v stacked: [3D, D]
    heads: torch.Tensor | None = None  # all heads stacked: [K * card, D]
    pos_table: torch.Tensor | None = None  # sinusoids in the model dtype: [max_len, D]
    emb_table: torch.Tensor | None = None  # all embedding tables stacked: [K * (card + 1), D]
    emb_offsets: torch.Tensor | None = None  # [1, K, 1]: k * (card + 1)
    plan: DecodePlan | None = None  # the one-token eager step's own layout (prepare_decode with fuse)
    # per layer (scores_t [B, D, H*S], bias [B, 1, H*S], values [B, H*S, D]): the cross-attention folded through the
    # text (MusicGenLM._fold_cross); set by prepare_decode where it reads fewer bytes than the q/out projections
    cross_folded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
    # when a dict, every layer stores its self-attention queries [B, H, T, Dh] under its index (fusion.align_prefix)
    queries: dict[int, torch.Tensor] | None = None


@dataclass
class LayerPlan:
    """One layer's weights laid out for a one-token step on [B, D] rows: transposed views for mm/addmm, and the
    cross-attention folded through the fixed text keys/values (see `MusicGenLM.prepare_decode`)."""

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


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.self_attn = Attention(cfg.dim, cfg.num_heads)
        self.norm_cross = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.cross_attn = Attention(cfg.dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn = FeedForward(cfg.dim, cfg.ffn_dim)

    def forward(self, x: torch.Tensor, start: int | torch.Tensor, ctx: Context, index: int) -> torch.Tensor:
        """x [B, T, D] at positions start.. -> [B, T, D]; writes this layer's cache when ctx has one."""
        steps = x.shape[1]
        attn = self.self_attn
        h = _norm(self.norm1, x)
        if ctx.qkv is not None:
            q, k, v = (split_heads(t, attn.num_heads) for t in F.linear(h, ctx.qkv[index]).chunk(3, dim=-1))
        else:
            q = split_heads(_linear(attn.q, h), attn.num_heads)  # [B, H, T, Dh]
            k = split_heads(_linear(attn.k, h), attn.num_heads)
            v = split_heads(_linear(attn.v, h), attn.num_heads)
        if ctx.queries is not None:
            ctx.queries[index] = q.detach()
        cache = None if ctx.cache is None else ctx.cache[index]
        if isinstance(start, torch.Tensor):
            # static decode: fixed shapes, write at `start` positions, attend to the whole cache under a mask
            cache.k.index_copy_(2, start, k)
            cache.v.index_copy_(2, start, v)
            mask = ctx.causal_mask.index_select(0, start)[None, None]  # [1, 1, T, max_len]
            a = F.scaled_dot_product_attention(q, cache.k, cache.v, attn_mask=mask)
        elif cache is not None:
            end = start + steps
            cache.k[:, :, start:end] = k
            cache.v[:, :, start:end] = v
            k_all, v_all = cache.k[:, :, :end], cache.v[:, :, :end]
            if steps == 1:
                a = F.scaled_dot_product_attention(q, k_all, v_all)
            elif start == 0:
                a = F.scaled_dot_product_attention(q, k_all, v_all, is_causal=True)
            else:
                keys = torch.arange(end, device=x.device)
                mask = keys[None, :] <= (start + torch.arange(steps, device=x.device))[:, None]
                a = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        else:
            if not isinstance(start, int) or start != 0:
                raise ValueError("a run without a KV cache must start at position 0")
            a = F.scaled_dot_product_attention(q, k, v, is_causal=steps > 1)

        prefix = None if ctx.prefix is None else ctx.prefix[index]
        if prefix is not None:
            # Instruct-MusicGen audio fusion: step s adds the condition query of frame s, clamped to the last code
            # frame (fusion.py), and attends, non-causally, to the whole condition window; gated, before the
            # output projection.
            last = max(prefix.num_frames - 2, 0)
            if isinstance(start, torch.Tensor):
                frames = start.clamp(max=last)
            else:
                frames = torch.arange(start, start + steps, device=x.device).clamp_(max=last)
            q_cond = prefix.q.index_select(2, frames)  # [B, H, T, Dh]
            a = a + prefix.gate.to(a.dtype) * F.scaled_dot_product_attention(q + q_cond, prefix.k, prefix.v)
        x = x + _linear(attn.out, merge_heads(a))

        if ctx.cross_folded is not None:
            scores_t, bias, values = ctx.cross_folded[index]
            h = _norm(self.norm_cross, x)
            weights = torch.baddbmm(bias, h, scores_t)  # [B, T, H*S]
            weights = weights.view(*weights.shape[:2], self.cross_attn.num_heads, -1).softmax(dim=-1)
            x = torch.baddbmm(x, weights.flatten(2), values)
        elif ctx.cross is not None:
            cross = self.cross_attn
            h = _norm(self.norm_cross, x)
            q = split_heads(_linear(cross.q, h), cross.num_heads)
            k, v = ctx.cross[index]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.cross_bias)
            x = x + _linear(cross.out, merge_heads(a))

        return x + self.ffn.forward(_norm(self.norm2, x))


class MusicGenLM(nn.Module):
    """MusicGen decoder (+ Instruct-MusicGen adapters when `fusion` is given). Parameter names: docs/ARCHITECTURE."""

    def __init__(self, cfg: LMConfig, fusion: FusionConfig | None = None):
        super().__init__()
        self.cfg = cfg
        self.fusion_cfg = fusion
        self.emb = nn.ModuleList([nn.Embedding(cfg.card + 1, cfg.dim) for _ in range(cfg.num_codebooks)])
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.num_layers)])
        self.norm_out = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.heads = nn.ModuleList([nn.Linear(cfg.dim, cfg.card, bias=False) for _ in range(cfg.num_codebooks)])
        self.text_proj = nn.Linear(cfg.text_dim, cfg.dim)
        self.fusion = None
        if fusion is not None:
            from engine.fusion import AudioFusion, add_lora

            self.fusion = AudioFusion(cfg, fusion)
            add_lora(self, fusion)
        self._positions: torch.Tensor | None = None
        self._derived: dict[str, tuple[list, torch.Tensor]] = {}  # _derive: name -> (sources seen, copy)

    # ---- properties -------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.norm_out.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.norm_out.weight.dtype

    @property
    def special_token(self) -> int:
        return self.cfg.card

    # ---- inputs -----------------------------------------------------------------------------------------------
    def positions(self, start: int | torch.Tensor, steps: int) -> torch.Tensor:
        """Sinusoidal positions for `steps` positions from `start` (or at the given positions): [T, D] float32."""
        needed = (start + steps) if isinstance(start, int) else None
        table = self._positions
        if table is None or table.device != self.device or (needed is not None and needed > table.shape[0]):
            length = max(2048, needed or 0)
            table = self._positions = sinusoids(length, self.cfg.dim, self.device)
        if isinstance(start, torch.Tensor):
            return table.index_select(0, start)
        return table[start : start + steps]

    def embed(self, seq: torch.Tensor) -> torch.Tensor:
        """seq [B, K, T] token ids -> summed embeddings [B, T, D]"""
        x = self.emb[0](seq[:, 0])
        for k in range(1, self.cfg.num_codebooks):
            x = x + self.emb[k](seq[:, k])
        return x

    def text_context(self, text_states: torch.Tensor | None, text_mask: torch.Tensor | None) -> Context:
        """Project the text encoding once and precompute every layer's cross-attention keys/values."""
        if text_states is None:
            return Context()
        if text_states.dim() != 3 or text_states.shape[-1] != self.cfg.text_dim:
            raise ConfigError(f"text states must be [B, S, {self.cfg.text_dim}], got {tuple(text_states.shape)}")
        states = self.text_proj(text_states.to(device=self.device, dtype=self.dtype))  # [B, S, D]
        bias = None
        if text_mask is not None:
            mask = text_mask.to(self.device)
            # padding is zeroed before k/v (transformers and audiocraft both do) and masked out of the softmax;
            # an all-padding row (the CFG null condition) then attends uniformly to zeros: output 0.
            states = states * mask[..., None].to(states.dtype)
            bias = torch.zeros(mask.shape, dtype=self.dtype, device=self.device)
            bias = bias.masked_fill(~mask.bool(), torch.finfo(self.dtype).min)[:, None, None, :]
        cross = []
        for layer in self.layers:
            heads = layer.cross_attn.num_heads
            cross.append(
                (split_heads(layer.cross_attn.k(states), heads), split_heads(layer.cross_attn.v(states), heads))
            )
        return Context(cross=cross, cross_bias=bias)

    def cond_prefix(self, cond_codes: torch.Tensor | None) -> list[PrefixKV | None] | None:
        """Run the audio condition [B, K, Tc] through the fusion pass: a prefix per layer (None when not fused)."""
        if cond_codes is None:
            return None
        if self.fusion is None:
            raise ConfigError("this model has no audio-fusion adapter: it cannot take condition audio")
        return self.fusion.prefixes(self, cond_codes)

    def context(
        self,
        text_states: torch.Tensor | None,
        text_mask: torch.Tensor | None,
        cond_codes: torch.Tensor | None = None,
    ) -> Context:
        ctx = self.text_context(text_states, text_mask)
        ctx.prefix = self.cond_prefix(cond_codes)
        return ctx

    # ---- running ----------------------------------------------------------------------------------------------
    def run(
        self, seq: torch.Tensor, ctx: Context, start: int | torch.Tensor = 0, last_only: bool = False
    ) -> torch.Tensor:
        """seq [B, K, T] pattern steps at positions start.. -> logits [B, K, T (or 1), card] in the model dtype."""
        steps = seq.shape[-1]
        if ctx.plan is not None and steps == 1 and isinstance(start, int) and ctx.cache is not None:
            return self._decode_step(seq, ctx, start)
        if ctx.pos_table is None:
            positions = self.positions(start, steps).to(self.dtype)
        elif isinstance(start, torch.Tensor):
            positions = ctx.pos_table.index_select(0, start)
        else:
            positions = ctx.pos_table[start : start + steps]
        if ctx.emb_table is not None:
            # one gather from all tables at once: [B, K, T, D], then the per-codebook sum in a fixed order
            e = F.embedding(seq + ctx.emb_offsets, ctx.emb_table)
            x = e[:, 0]
            for k in range(1, self.cfg.num_codebooks):
                x = x + e[:, k]
            x = x + positions
        else:
            x = self.embed(seq) + positions  # [B, T, D]
        for i, layer in enumerate(self.layers):
            x = layer(x, start, ctx, i)
        if last_only and steps > 1:
            x = x[:, -1:]
        x = _norm(self.norm_out, x)
        if ctx.heads is not None:
            batch, steps, _ = x.shape
            logits = F.linear(x, ctx.heads).view(batch, steps, self.cfg.num_codebooks, self.cfg.card)
            return logits.transpose(1, 2)  # [B, K, T, card]
        return torch.stack([head(x) for head in self.heads], dim=1)

    def prepare_decode(self, ctx: Context, max_len: int, fuse: bool = True) -> None:
        """Derive decode-only data into ctx: the position table in the model dtype and, with `fuse`, stacked q/k/v,
        heads and embedding tables (fewer, larger ops per step: worth it where per-op overhead dominates), and the
        plan of the one-token eager step (`_decode_step`).

        The stacked weights are copies, made once per generation: they never go stale when the model trains between
        calls, but they cost memory, so large models (bandwidth-bound anyway) skip them.
        """
        with torch.no_grad():
            ctx.pos_table = self.positions(0, max_len).to(self.dtype)
            if ctx.cross is not None:
                batch, heads, steps, _ = ctx.cross[0][0].shape
                # folded scores/values hold B*H*S rows of D each, the projections D rows each: fold when smaller (a
                # short text prompt: ~8% fewer bytes per step for musicgen-small), or always for overhead-bound models
                if fuse or batch * heads * steps <= self.cfg.dim:
                    folded = [self._fold_cross(layer.cross_attn, *ctx.cross[i], ctx.cross_bias) for i, layer in
                              enumerate(self.layers)]  # fmt: skip
                    ctx.cross_folded = None if any(f is None for f in folded) else folded
            if not fuse:
                return
            ctx.qkv = [
                self._derive(
                    f"qkv.{i}",
                    [layer.self_attn.q.weight, layer.self_attn.k.weight, layer.self_attn.v.weight],
                    torch.cat,
                )  # fmt: skip
                for i, layer in enumerate(self.layers)
            ]
            heads = [head.weight for head in self.heads]
            ctx.heads = self._derive("heads", heads, torch.cat)
            ctx.emb_table = self._derive("emb", [emb.weight for emb in self.emb], torch.cat)
            rows = self.cfg.card + 1
            ctx.emb_offsets = torch.arange(self.cfg.num_codebooks, device=self.device)[None, :, None] * rows
            ctx.plan = self._plan(ctx)

    def _derive(self, name: str, sources: list[torch.Tensor], build) -> torch.Tensor:
        """build(sources), remembered until a source tensor changes: in place (torch's version counter, bumped by
        optimizer steps, load_state_dict, copy_) or by a new payload (`module.to(...)` swaps `param.data`).

        Remaking the copies costs ~60 us per step of a 100-frame tiny generation. A detached alias of each source keeps
        its old memory alive while remembered, so a new payload can never sit at the same address.
        """
        try:
            key = [(t, t.detach(), t._version) for t in sources]
        except RuntimeError:  # inference tensors keep no version counter: never remembered
            return build(sources)
        hit = self._derived.get(name)
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
        self._derived[name] = (key, value)
        return value

    def _plan(self, ctx: Context) -> DecodePlan | None:
        """The one-token step's layout; None when a projection is of a kind it does not know (then run() is used)."""

        def norm(module: nn.LayerNorm) -> tuple:
            return module.weight, module.bias, module.eps

        layers = []
        for index, layer in enumerate(self.layers):
            out_weight = _weight(layer.self_attn.out)
            if out_weight is None:
                return None
            attn, ffn = layer.self_attn, layer.ffn
            # q rows carry the attention scale 1/sqrt(Dh); fc1 and fc2 carry GELU's 1/sqrt(2) (see _decode_step)
            scale = self.cfg.head_dim**-0.5
            qkv_t = self._derive(f"step_qkv.{index}", [attn.q.weight, attn.k.weight, attn.v.weight],
                                 lambda w, s=scale: torch.cat([w[0] * s, w[1], w[2]]).t().contiguous())  # fmt: skip
            fc1_t = self._derive(f"step_fc1.{index}", [ffn.fc1.weight], lambda w: (w[0] * _SQRT_HALF).t().contiguous())
            fc2_t = self._derive(f"step_fc2.{index}", [ffn.fc2.weight], lambda w: (w[0] * _SQRT_HALF).t().contiguous())
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
        heads_t = self._derive("heads_t", [head.weight for head in self.heads], lambda w: torch.cat(w).t().contiguous())
        return DecodePlan(layers, norm(self.norm_out), heads_t, ctx.emb_table, offsets)

    @staticmethod
    def _fold_cross(cross: Attention, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None):
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

    def _decode_step(self, seq: torch.Tensor, ctx: Context, position: int) -> torch.Tensor:
        """One eager decode step from ctx.plan: seq [B, K, 1] at `position` -> logits [B, K, 1, card].

        The same arithmetic as run() on 2-D [B, D] rows with the fewest ops: one embedding bag, mm/addmm with the
        residual folded in, the folded cross-attention; a step of a small model is bound by per-op overhead.
        """
        plan = ctx.plan
        batch = seq.shape[0]
        cfg = self.cfg
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
                frame = min(position, max(prefix.num_frames - 2, 0))  # condition frame of this step (fusion.py)
                q_cond = prefix.q[:, :, frame : frame + 1] * head_dim**-0.5
                q_all = q.view(batch, heads, 1, head_dim) + q_cond
                extra = F.scaled_dot_product_attention(q_all, prefix.k, prefix.v, scale=1.0)
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

    def forward(
        self,
        seq: torch.Tensor,
        text_states: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        cond_codes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits: seq [B, K, T] (pattern steps) -> [B, K, T, card]."""
        return self.run(seq, self.context(text_states, text_mask, cond_codes))

    def new_cache(self, batch: int, max_len: int) -> list[KVCache]:
        cfg = self.cfg
        return [KVCache(batch, cfg.num_heads, max_len, cfg.head_dim, self.dtype, self.device) for _ in self.layers]

    # ---- training ---------------------------------------------------------------------------------------------
    def loss(
        self,
        codes: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None,
        cond_codes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on the valid delay-pattern positions: codes [B, K, T] -> (loss, per_codebook [K]).

        The model reads pattern steps 0..T-1 and predicts steps 1..T (audiocraft's valid steps). Step s lines up with
        condition frame s (the condition's T frames plus its appended special token give T + 1 frames).
        """
        batch, num_codebooks, num_frames = codes.shape
        self.check_codes(codes, "codes")
        seq = delay.build(codes, self.special_token)  # [B, K, T + K]
        inputs, targets = seq[..., :num_frames], seq[..., 1 : num_frames + 1]  # [B, K, T] each
        valid = delay.valid_mask(num_frames, num_codebooks, codes.device)[:, 1 : num_frames + 1]  # [K, T]
        logits = self.forward(inputs, text_states, text_mask, cond_codes).float()  # [B, K, T, card]
        per_codebook = []
        for k in range(num_codebooks):
            # codebook k has no valid target in its first k steps (the delay), and ignores them.
            target = targets[:, k].masked_fill(~valid[k][None], -100)
            per_codebook.append(
                F.cross_entropy(logits[:, k].reshape(-1, self.cfg.card), target.reshape(-1), ignore_index=-100)
            )
        per_codebook = torch.stack(per_codebook)
        return per_codebook.mean(), per_codebook

    def check_codes(self, codes: torch.Tensor, name: str) -> None:
        """DataError unless `codes` is [B, num_codebooks, T] with every code in [0, card)."""
        if codes.dim() != 3 or codes.shape[1] != self.cfg.num_codebooks:
            raise DataError(f"{name} must be [B, {self.cfg.num_codebooks}, T], got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.cfg.card):
            raise DataError(
                f"{name} must lie in [0, {self.cfg.card}); got values {int(codes.min())}..{int(codes.max())}"
            )

    # ---- adapters ---------------------------------------------------------------------------------------------
    @staticmethod
    def is_adapter_name(name: str) -> bool:
        return name.startswith("fusion.") or ".lora_" in name

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if self.is_adapter_name(n)]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t for n, t in self.state_dict().items() if self.is_adapter_name(n)}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load adapter tensors only; every adapter tensor of this model must be present, with its shape."""
        from engine.errors import CheckpointError

        own = self.adapter_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise CheckpointError(
                f"adapter does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
                f" ({len(missing)} missing, {len(unexpected)} unexpected)"
            )
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(own[name].shape):
                raise CheckpointError(
                    f"adapter tensor {name} has shape {tuple(tensor.shape)}, the model expects {tuple(own[name].shape)}"
                )
        self.load_state_dict(state, strict=False)

    def freeze_base(self) -> None:
        """Only adapter parameters stay trainable."""
        for name, param in self.named_parameters():
            param.requires_grad_(self.is_adapter_name(name))

    def num_parameters(self, adapters: bool | None = None) -> int:
        """Parameter count: all (None), adapters only (True) or base only (False). Works on the meta device."""
        return sum(
            p.numel() for n, p in self.named_parameters() if adapters is None or self.is_adapter_name(n) == adapters
        )
