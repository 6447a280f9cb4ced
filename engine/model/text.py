"""The text encoder: a T5 encoder and its tokenizer, turning instructions into the states the decoder attends to.

As in MusicGen (audiocraft's T5Conditioner and transformers' MusicGen), padded positions are zeroed in the states
and reported in the mask, so a batch of instructions of different lengths encodes like each one alone.
"""

from __future__ import annotations

import torch

from engine.errors import InstructionError

# T5 was trained on 512-token inputs; instructions are a few words, so this only guards against pasted essays.
MAX_TOKENS = 512


def tokenize(tokenizer, texts: list[str], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, S] and attention mask [B, S] of `texts`: padded to the longest, at most MAX_TOKENS each. The one
    way text becomes tokens, for the encoder at inference and for the base stage's trainable copy, so a base model is
    trained on exactly the tokens its edits will give it."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def zero_padding(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text states [B, S, dim] zeroed where `mask` [B, S] is false (padding, or a dropped text), and the mask as bool:
    what the decoder's cross-attention reads, from this encoder and from the base stage's trainable copy alike."""
    return states * mask[..., None].to(states.dtype), mask.bool()


def null_condition(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The condition without a text, shaped as `states` and `mask`: zero states under an empty mask. Classifier-free
    guidance decodes against it (engine.model.generate); text dropout trains on it (engine.train.base)."""
    return torch.zeros_like(states), torch.zeros_like(mask)


class TextEncoder:
    """T5 encoder wrapper: `encode(texts) -> (states [B,S,dim], mask [B,S] bool)`."""

    def __init__(
        self,
        model,
        tokenizer,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        out_dtype: torch.dtype | None = None,
    ) -> None:
        # T5 overflows in fp16 (its feed-forward activations exceed 65504); bf16 and fp32 are safe.
        if dtype == torch.float16:
            dtype = torch.float32
        self.model = model.eval().requires_grad_(False).to(device=device, dtype=dtype)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dim: int = int(model.config.d_model)
        self.out_dtype = out_dtype or dtype

    @torch.no_grad()  # not inference_mode: training feeds these outputs into autograd
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch of texts; returns states [B,S,dim] (in `out_dtype`, zero where padded) and mask [B,S]."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise InstructionError("no instruction text to encode")
        ids, mask = tokenize(self.tokenizer, list(texts), self.device)  # [B, S], [B, S]
        states, mask = zero_padding(self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        return states.to(self.out_dtype), mask  # [B, S, dim], [B, S]
