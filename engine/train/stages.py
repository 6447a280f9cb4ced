"""What the training loop drives: the stage protocol, the encoded item, and the pieces both built-in stages share.

A stage is a small object that knows which parameters train, how a batch of clips becomes a loss, and what the
finished run writes (adapters.py, base.py). Audio is encoded by the frozen codec on the fly, one batch at a time:
clips are random draws (a new offset, subset and stem every epoch), so per-clip code caches would rarely hit (a
run that wants them anyway uses a code pool, feeding.py).
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine.errors import CheckpointError, DataError
from engine.files import user_path
from engine.train.data.datasets import CaptionDataset, ClipConfig, StemDataset, parse_classes
from engine.train.data.layouts import scan
from engine.weights import detect_layout, read_model_card, resolve_source
from engine.weights.loader import model_parts

if TYPE_CHECKING:
    from engine.model.codec import Codec
    from engine.train.config import TrainConfig


class Stage:
    """What the loop trains. Subclasses set `module` (the nn.Module whose trainable parameters are optimised)."""

    name = ""
    module: Any = None
    # Whether the stage's untrained weights are a model worth exporting (a validation at step 0 is then kept as the
    # best so far: a run that diverges before its first validation still ends with weights to export)
    untrained_is_usable = False

    def parameters(self) -> list:
        """The parameters the optimizer updates."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def trainable_state(self) -> dict:
        """The tensors a checkpoint must hold to continue (the trained ones; frozen ones come from the base)."""
        names = {id(p) for p in self.parameters()}
        return {n: p.detach().clone() for n, p in self.module.named_parameters() if id(p) in names}

    def load_trainable_state(self, state: dict) -> None:
        own = dict(self.module.named_parameters())
        missing = sorted(n for n in self.trainable_state() if n not in state)
        if missing or any(n not in own for n in state):
            raise CheckpointError(f"the checkpoint does not fit this {self.name} run (missing {missing[:3]})")
        with torch.no_grad():
            for name, tensor in state.items():
                own[name].copy_(tensor)

    def dataset(self, split: str) -> Any:
        """Indexable clips of a split (with `set_epoch` for fresh training draws)."""
        raise NotImplementedError

    def encode(self, items: Sequence[Any]) -> list[Encoded]:
        """Dataset items through the frozen parts (the codec): what `loss_codes` trains on."""
        raise NotImplementedError

    def loss_codes(self, records: Sequence[Encoded]) -> Any:
        """Scalar loss tensor of encoded items."""
        raise NotImplementedError

    def loss(self, items: Sequence[Any]) -> Any:
        """Scalar loss tensor of a list of dataset items (raw clips, or records of a code pool)."""
        if not all(isinstance(item, Encoded) for item in items):
            items = self.encode(items)
        return self.loss_codes(items)

    def prepare(self, batches: Callable[[], list[Encoded]]) -> dict | None:
        """Once, before the first step of a fresh run (not on resume): `batches()` gives a batch of encoded clips."""
        return None

    def export(self, run_dir: Path, info: dict) -> dict[str, str]:
        """Write the finished result into run_dir; returns {what: path}."""
        raise NotImplementedError


@dataclass
class Encoded:
    """One training item after the frozen codec: target codes [K, F], condition codes [K, F] or None, its text."""

    codes: Any
    cond: Any
    text: str


def base_parts(base: str) -> tuple[Path, dict, Path | None]:
    """(path of the transformers/audiocraft base, model_card.json of our dir or {}, existing adapter path or None)."""
    path = resolve_source(base)
    layout = detect_layout(path)
    if layout == "imusic":
        base, adapter = model_parts(path)
        return base, read_model_card(path), adapter
    if layout in ("transformers", "audiocraft"):
        return path, {}, None
    raise CheckpointError(f"{path} is an adapter, not a base model: give the model it was trained on as --base")


def _clip_config(cfg: TrainConfig, sample_rate: int) -> ClipConfig:
    return ClipConfig(sample_rate=sample_rate, seconds=cfg.seconds, classes=parse_classes(cfg.classes))


def open_split(cfg: TrainConfig, split: str, sample_rate: int, kind: str = "edit") -> StemDataset | CaptionDataset:
    """The clips of one split of --data; DataError (naming the folder) when it has none."""
    if not user_path(cfg.data).is_dir():
        raise DataError(f"no data set at {cfg.data}: the folder does not exist")
    catalog = scan(user_path(cfg.data))
    cls = CaptionDataset if kind == "caption" else StemDataset
    # Several clips per song and per epoch: small data sets still fill batches; the draws differ per item.
    per_song = max(1, math.ceil(cfg.batch * cfg.accum / max(1, len(catalog.songs))))
    try:
        data = cls(catalog, split, _clip_config(cfg, sample_rate), seed=cfg.seed, clips_per_song=per_song)
    except DataError as exc:
        raise DataError(f"data set {cfg.data} is too small for training: {exc}") from None
    if split == "train":  # once per run: what the scan could not use, counted (the details: `imusic data info`)
        problems = ", ".join(f"{count} x {reason}" for reason, count in sorted(catalog.problem_counts().items()))
        if problems:
            print(f"imusic train: skipped stem files: {problems}", file=sys.stderr)
        if data.skipped:
            song, reason = data.skipped[0]
            print(f"imusic train: skipped {len(data.skipped)} song(s) of the split ({song}: {reason})", file=sys.stderr)
    return data


def drop_text(text_states: torch.Tensor, text_mask: torch.Tensor, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row replaced by the null condition with probability `share`: the rows that train the unconditioned branch
    classifier-free guidance decodes against (the official run: audiocraft's cfg dropout, 0.2 in MusicGen's configs,
    applied by its LM's forward in training)."""
    from engine.model.text import null_condition

    if share <= 0:
        return text_states, text_mask
    # drawn where the text is: a mask drawn on the host would be a copy the host waits on, every step
    dropped = (torch.rand(text_states.shape[0], device=text_states.device) < share)[:, None, None]
    null_states, null_mask = null_condition(text_states, text_mask)
    return torch.where(dropped, null_states, text_states), torch.where(dropped[..., 0], null_mask, text_mask)


def encode_audio(codec: Codec, clips: Sequence[np.ndarray]) -> torch.Tensor:
    """Clips through the frozen codec: codes [B, K, F]."""
    wav = torch.from_numpy(np.stack(clips).astype(np.float32))[:, None]  # [B, 1, N]
    # The frozen codec runs in fp32 even inside a bf16/fp16 autocast region: its codes must not depend on precision.
    with torch.autocast(device_type=codec.device.type, enabled=False):
        return codec.encode(wav)  # [B, K, F]


def replace_dir(path: Path) -> Path:
    """An empty folder at `path` (what was there is removed): where a stage writes its result."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
