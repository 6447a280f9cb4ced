"""The delay pattern: codebook k shifted by k + 1 steps behind a start step, special token elsewhere."""

from __future__ import annotations

import pytest
import torch

from engine.model import delay

SPECIAL = 9


def test_build_places_codebook_k_k_plus_one_steps_late():
    codes = torch.tensor([[[1, 2, 3], [4, 5, 6]]])  # [B=1, K=2, T=3]
    expected = torch.tensor([[[9, 1, 2, 3, 9], [9, 9, 4, 5, 6]]])
    assert torch.equal(delay.build(codes, SPECIAL), expected)


def test_revert_inverts_build():
    torch.manual_seed(0)
    codes = torch.randint(0, SPECIAL, (3, 4, 11))
    assert torch.equal(delay.revert(delay.build(codes, SPECIAL)), codes)


def test_valid_mask_marks_exactly_the_non_special_cells():
    torch.manual_seed(0)
    codes = torch.randint(0, SPECIAL, (1, 4, 6))
    seq = delay.build(codes, SPECIAL)[0]
    assert torch.equal(delay.valid_mask(6, 4), seq != SPECIAL)


def test_valid_mask_agrees_with_transformers_delay_pattern():
    transformers = pytest.importorskip("transformers")
    config = transformers.MusicgenDecoderConfig(
        vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, ffn_dim=8, num_codebooks=4
    )
    model = transformers.MusicgenForCausalLM(config)
    frames = 5
    start = torch.full((4, 1), 16)
    _, pattern = model.build_delay_pattern_mask(start, pad_token_id=16, max_length=frames + 4)
    # transformers marks the cells to predict with -1 and the padding with the pad id
    assert torch.equal(delay.valid_mask(frames, 4), pattern == -1)


def test_num_steps_is_frames_plus_codebooks():
    assert delay.num_steps(250, 4) == 254
    assert delay.frame_of(step=5, codebook=2) == 2
