"""MusicGen's delay pattern: codebook k is shifted right by k + 1 steps behind an all-special first step.

For T frames and K codebooks the pattern sequence has S = T + K steps (audiocraft's DelayedPatternProvider layout
and transformers' build_delay_pattern_mask agree on this):

    step s, codebook k  holds  codes[k, s - 1 - k]   when 0 <= s - 1 - k < T, else the special token.

Step 0 is the start token; the model reading step s predicts step s + 1. Training uses the first T + 1 steps
(audiocraft's "valid" steps: every frame's codebook 0 is present), generation runs all T + K steps.
"""

from __future__ import annotations

import torch


def num_steps(num_frames: int, num_codebooks: int) -> int:
    """Length of the pattern sequence for `num_frames` frames."""
    return num_frames + num_codebooks


def decode_steps(num_frames: int, num_codebooks: int, prompt_frames: int) -> int:
    """Steps generate.py samples one at a time after the prefill: the pattern's steps past the prompt's
    (steps 0..prompt_frames are known and go through the model at once)."""
    return num_steps(num_frames, num_codebooks) - (prompt_frames + 1)


def valid_mask(num_frames: int, num_codebooks: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[K, T + K] bool: True where a step holds a real code (not the special token)."""
    steps = torch.arange(num_steps(num_frames, num_codebooks), device=device)
    time = steps[None, :] - 1 - torch.arange(num_codebooks, device=device)[:, None]  # [K, S] frame index
    return (time >= 0) & (time < num_frames)


def build(codes: torch.Tensor, special: int) -> torch.Tensor:
    """codes [B, K, T] -> pattern sequence [B, K, T + K] with the special token where nothing is defined."""
    batch, num_codebooks, num_frames = codes.shape
    seq = codes.new_full((batch, num_codebooks, num_steps(num_frames, num_codebooks)), special)
    for k in range(num_codebooks):
        seq[:, k, k + 1 : k + 1 + num_frames] = codes[:, k]
    return seq


def revert(seq: torch.Tensor) -> torch.Tensor:
    """pattern sequence [B, K, S] -> codes [B, K, S - K] (the inverse of `build`)."""
    batch, num_codebooks, steps = seq.shape
    num_frames = steps - num_codebooks
    if num_frames < 0:
        raise ValueError(f"a pattern sequence of {steps} steps is shorter than its {num_codebooks} codebooks")
    return torch.stack([seq[:, k, k + 1 : k + 1 + num_frames] for k in range(num_codebooks)], dim=1)


def frame_of(step: int, codebook: int) -> int:
    """The frame a (step, codebook) cell holds; negative or >= T means the cell is special."""
    return step - 1 - codebook
