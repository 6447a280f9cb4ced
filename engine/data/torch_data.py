"""A thin PyTorch wrapper over `engine.data.datasets.StemDataset`: tensors and a collate function."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from engine.data.datasets import Clip, StemDataset


def clip_to_item(clip: Clip) -> dict[str, Any]:
    """One clip as a dict of tensors [1, N] (mono channel first) and its labels."""
    return {
        "input": torch.from_numpy(clip.input)[None],  # [1, N]
        "target": torch.from_numpy(clip.target)[None],  # [1, N]
        "stem": torch.from_numpy(clip.stem)[None],  # [1, N]
        "op": clip.op,
        "stem_name": clip.stem_name,
        "instruction": clip.instruction,
        "song_id": clip.song_id,
        "offset": clip.offset,
        "input_classes": clip.input_classes,
        "target_classes": clip.target_classes,
    }


class ClipDataset(Dataset):
    """torch Dataset of clips; call `set_epoch` each epoch so training clips are new draws."""

    def __init__(self, clips: StemDataset) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return clip_to_item(self.clips[index])

    def set_epoch(self, epoch: int) -> None:
        self.clips.set_epoch(epoch)


def collate_clips(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack audio to [B, 1, N]; labels become lists; offsets a float tensor [B]."""
    batch: dict[str, Any] = {}
    for key in ("input", "target", "stem"):
        batch[key] = torch.stack([item[key] for item in items])  # [B, 1, N]
    batch["offset"] = torch.tensor([item["offset"] for item in items], dtype=torch.float64)  # [B]
    for key in ("op", "stem_name", "instruction", "song_id", "input_classes", "target_classes"):
        batch[key] = [item[key] for item in items]
    return batch
