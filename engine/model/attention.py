"""The attention pieces the decoder (lm.py) and the audio fusion (fusion.py) share.

The fusion's condition pass runs the decoder's own frozen projections, and the decoder attends to the condition
prefix the fusion computes; both therefore build on these, and neither module needs the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


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


class Attention(nn.Module):
    """Multi-head attention projections (q, k, v, out; no bias). q/k/v stay separate so LoRA and loaders fit."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)


@dataclass
class PrefixKV:
    """One fused layer's condition prefix: q/k/v [B, H, L, Dh] from the condition pass (L = Tc + 1 frames), and its
    gate. A static decode pads it to the adapter's whole window (static_decode.py): `mask` [1, 1, 1, L] bool keeps
    the real frames in the prefix attention and `last` [1] long holds the last code frame, both None when unpadded."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    gate: torch.Tensor
    mask: torch.Tensor | None = None
    last: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return self.q.shape[2]

    def frames(self, positions: torch.Tensor) -> torch.Tensor:
        """The condition frame each decoder position reads its query from: the position, clamped to the last code
        frame (fusion.py)."""
        if self.last is not None:
            return torch.minimum(positions, self.last)
        return positions.clamp(max=max(self.num_frames - 2, 0))

    def repeat(self, times: int) -> PrefixKV:
        """Batch-repeated copy (classifier-free guidance duplicates the prefix into both halves)."""
        return PrefixKV(
            self.q.repeat(times, 1, 1, 1), self.k.repeat(times, 1, 1, 1), self.v.repeat(times, 1, 1, 1), self.gate,
            self.mask, self.last,
        )  # fmt: skip
