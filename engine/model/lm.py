"""The MusicGen decoder, written so that Instruct-MusicGen's adapters and a fast decode loop fit in naturally.

Layout (pre-norm): summed per-codebook embeddings + sinusoidal positions; per layer causal self-attention (with an
optional gated audio-condition prefix, fusion.py), cross-attention to the projected text encoding, GELU FFN; final
norm; one linear head per codebook. Numerically pinned to transformers' MusicgenForCausalLM (tests/test_model_parity).

Three ways to run it, all through `MusicGenLM.run`:
- whole sequence, no cache (training, `forward`, `loss`);
- eager decode with a preallocated KV cache, `start` a Python int (CPU: attends to the filled part only);
- static decode, `start` a LongTensor of positions: every shape is fixed by the cache, so the step can be captured
  as a CUDA graph / torch.compile(mode="reduce-overhead").
Small models (overhead-bound) get a planned one-token step from `fast_decode.prepare_decode(fuse=True)` (called by
generate.py); run() hands single eager steps to it once ctx.plan is set. tests/test_generate.py pins it to the full
pass. The attention pieces shared with the audio fusion live in attention.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import ConfigError, DataError
from engine.model import delay, fast_decode
from engine.model.attention import Attention, PrefixKV, merge_heads, split_heads
from engine.model.config import FusionConfig, LMConfig, is_adapter_name
from engine.model.fusion import AudioFusion, add_lora

# The attention bias of text padding: finite in fp32, bf16 and fp16 alike, so that a row that is all padding (the CFG
# null condition) stays uniform over zeros when autocast casts the bias down (finfo(float32).min becomes -inf in bf16,
# and a row of -inf is NaN); exp of it is 0 next to any real score.
MASKED = torch.finfo(torch.float16).min


def sinusoids(num_positions: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[num_positions, dim] float32: cos half then sin half (transformers' MusicgenSinusoidalPositionalEmbedding)."""
    half = dim // 2
    # audiocraft: positions / max_period ** (i / (half - 1)); transformers writes the same as an exp.
    inv_freq = torch.exp(torch.arange(half, dtype=torch.float32, device=device) * -(math.log(10000.0) / (half - 1)))
    phase = torch.arange(num_positions, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=1)


def _norm(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    # the functional call skips nn.Module dispatch: a decode step makes hundreds of these calls
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


def _linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(module) is nn.Linear:
        return F.linear(x, module.weight, module.bias)
    return module(x)  # LoRALinear


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
class Context:
    """What a run of the decoder attends to besides its own tokens."""

    cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer text (k, v) [B, H, S, Dh]
    cross_bias: torch.Tensor | None = None  # [B, 1, 1, S] additive, 0 = keep, dtype-min = padding
    prefix: list[PrefixKV | None] | None = None  # per layer, None where the layer is not fused
    cache: list[KVCache] | None = None  # per layer
    causal_mask: torch.Tensor | None = None  # static decode: [max_len, max_len] bool, row p = keys <= p
    # decode-only derived weights (fast_decode.prepare_decode): fewer, larger ops per step
    qkv: list[torch.Tensor] | None = None  # per layer self-attention q, k, v stacked: [3D, D]
    heads: torch.Tensor | None = None  # all heads stacked: [K * card, D]
    pos_table: torch.Tensor | None = None  # sinusoids in the model dtype: [max_len, D]
    emb_table: torch.Tensor | None = None  # all embedding tables stacked: [K * (card + 1), D]
    emb_offsets: torch.Tensor | None = None  # [1, K, 1]: k * (card + 1)
    plan: fast_decode.DecodePlan | None = None  # the one-token eager step's own layout (prepare_decode with fuse)
    # per layer (scores_t [B, D, H*S], bias [B, 1, H*S], values [B, H*S, D]): the cross-attention folded through the
    # text (fast_decode.fold_cross); set by prepare_decode where it reads fewer bytes than the q/out projections
    cross_folded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
    # when a dict, every layer stores its self-attention queries [B, H, T, Dh] under its index (fusion.align_prefix)
    queries: dict[int, torch.Tensor] | None = None


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
            positions = start
            if not isinstance(start, torch.Tensor):
                positions = torch.arange(start, start + steps, device=x.device)
            q_cond = prefix.q.index_select(2, prefix.frames(positions))  # [B, H, T, Dh]
            extra = F.scaled_dot_product_attention(q + q_cond, prefix.k, prefix.v, attn_mask=prefix.mask)
            a = a + prefix.gate.to(a.dtype) * extra
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
            self.fusion = AudioFusion(cfg, fusion)
            add_lora(self, fusion)
        self._positions: torch.Tensor | None = None
        self.derived = fast_decode.DerivedWeights()  # the fast decode path's weight copies
        self.static_workspaces: dict = {}  # static decode's buffers and steps, per layout (static_decode.py)

    # ---- properties -------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.norm_out.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.norm_out.weight.dtype

    @property
    def special_token(self) -> int:
        return self.cfg.special_token

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
            bias = bias.masked_fill(~mask.bool(), MASKED)[:, None, None, :]
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
            return fast_decode.decode_step(self, seq, ctx, start)
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
        condition frame s (the condition's T frames plus its appended special token give T + 1 frames). The loss is
        the mean over the codebooks that have a target: with T < K the last have none (their per-codebook loss is
        NaN), which made the loss NaN and every take of a short region score alike (the first kept, unsaid).
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
        return per_codebook[: min(num_codebooks, num_frames)].mean(), per_codebook  # codebook k's first target: step k

    def check_codes(self, codes: torch.Tensor, name: str) -> None:
        """DataError unless `codes` is [B, num_codebooks, T] with every code in [0, card). While training on CUDA the
        values are checked by an asynchronous device assertion instead: reading them would make the host wait for all
        the work queued before it, at every step (the codes come from the codec, so there it is a guard). An edit
        keeps the DataError: a device assertion would fail every later job of a running server too."""
        if codes.dim() != 3 or codes.shape[1] != self.cfg.num_codebooks:
            raise DataError(f"{name} must be [B, {self.cfg.num_codebooks}, T], got {tuple(codes.shape)}")
        if not codes.numel():
            return
        if codes.is_cuda and self.training:
            low, high = torch.aminmax(codes)
            torch._assert_async((low >= 0) & (high < self.cfg.card), f"{name} must lie in [0, {self.cfg.card})")
            return
        low, high = (int(v) for v in torch.stack(torch.aminmax(codes)).tolist())
        if low < 0 or high >= self.cfg.card:
            raise DataError(f"{name} must lie in [0, {self.cfg.card}); got values {low}..{high}")

    # ---- adapters ---------------------------------------------------------------------------------------------
    is_adapter_name = staticmethod(is_adapter_name)

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if self.is_adapter_name(n)]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t for n, t in self.state_dict().items() if self.is_adapter_name(n)}

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load adapter tensors only; every adapter tensor of this model must be present, with its shape."""
        from engine.model.fit import check_state_fits

        check_state_fits(state, self.adapter_state_dict(), "the adapter", "this model's adapters")
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


def adapter_parameter_count(cfg: LMConfig, fusion: FusionConfig) -> tuple[int, int]:
    """(adapter parameters, base parameters) of a configuration, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        lm = MusicGenLM(cfg, fusion)
    return lm.num_parameters(adapters=True), lm.num_parameters(adapters=False)
