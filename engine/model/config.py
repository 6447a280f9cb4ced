"""Model configuration: plain dataclasses and named presets (tiny, small, medium, large).

No torch import here: the CLI and the weights inspector read configs without loading the model code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from engine.errors import ConfigError

SAMPLE_RATE = 32000  # MusicGen's (its EnCodec's): stem data and clips default to it
FRAME_RATE = 50.0  # MusicGen's codec frames a second (hop 640 at SAMPLE_RATE)
# The official Instruct-MusicGen run trained on 5 s clips (its data module's time_in_seconds): our clip default, and
# how much of the official adapter's window was trained
OFFICIAL_CLIP_SECONDS = 5.0


def frame_rate(sample_rate: float, upsampling_ratios: Sequence[int]) -> float:
    """Codec frames per second: the sample rate over the hop (the product of the codec's up-sampling ratios)."""
    return float(sample_rate) / math.prod(upsampling_ratios)


# Decoding defaults (engine.model.generate); the Editor samples with Instruct-MusicGen's own top-k, EDIT_TOP_K.
CFG_COEF = 3.0  # classifier-free guidance, MusicGen's and Instruct-MusicGen's
TOP_K = 250  # MusicGen's top-k (transformers' and audiocraft's default)
EDIT_TOP_K = 100  # the official Instruct-MusicGen inference's top-k


def check_text_width(
    dim: int, text_dim: int, names: tuple[str, str] = ("the decoder's width", "the text width")
) -> None:
    """ConfigError when the text encoder's width equals the decoder's: transformers' MusicGen then drops
    enc_to_dec_proj, while our decoder always has text_proj, so the model could not be saved in (or read back from)
    the transformers layout. `names`: how the caller's user knows the two (--dim and --text-dim for training)."""
    if text_dim == dim:
        raise ConfigError(
            f"{names[1]} must differ from {names[0]} (both {dim}): transformers' MusicGen drops enc_to_dec_proj when "
            "they match, and this decoder always has its text projection"
        )


@dataclass(frozen=True)
class LMConfig:
    """Shape of the MusicGen decoder. The special (pad / "empty") token id is `card`; embeddings have card + 1 rows."""

    num_layers: int
    dim: int
    num_heads: int
    ffn_dim: int
    num_codebooks: int = 4
    card: int = 2048
    text_dim: int = 768
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("num_layers", "dim", "num_heads", "ffn_dim", "num_codebooks", "card", "text_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"LMConfig.{name} must be a positive integer, got {value!r}")
        if self.dim % self.num_heads:
            raise ConfigError(f"LMConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.dim % 2:
            raise ConfigError(f"LMConfig.dim ({self.dim}) must be even (sinusoidal positions use cos/sin halves)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def special_token(self) -> int:
        """The token past the codebook (id `card`): the delay pattern's padding and the condition's last frame."""
        return self.card


def is_adapter_name(name: str) -> bool:
    """Whether a state-dict name is an Instruct-MusicGen adapter tensor (audio fusion or a LoRA factor) in our
    layout, not a weight of the decoder it extends."""
    return name.startswith("fusion.") or ".lora_" in name


def window_frames(cond_frames: int) -> int:
    """Codec frames of input an adapter's condition holds: its cond_frames less the appended special token."""
    return cond_frames - 1


def cond_frames_for(seconds: float, frame_rate: float) -> int:
    """The cond_frames of an adapter whose condition window is `seconds` long (window_frames, inverted)."""
    return int(round(seconds * frame_rate)) + 1


@dataclass(frozen=True)
class FusionConfig:
    """Instruct-MusicGen adapters: audio fusion on the top `fused_layers` layers (None = all) and text LoRA.

    `cond_causal`: the official condition pass runs the frozen self-attention with its causal mask
    (transformer_cc.py builds the mask from the module's own `causal` flag; the `is_causal=False` argument is only
    asserted). Keep True to match the published adapter; False lets every condition frame see the whole window.
    """

    # The defaults are the published adapter's (its model.py: peft.LoraConfig(r=32, lora_alpha=64) on q and v; a
    # 501-frame condition): its checkpoint stores the rank, targets and frames, not alpha, which comes from here.
    fused_layers: int | None = None
    lora_rank: int = 32
    lora_alpha: float = 64
    lora_targets: tuple[str, ...] = ("q", "v")
    cond_frames: int = 501
    cond_causal: bool = True

    def __post_init__(self) -> None:
        if self.fused_layers is not None and (not isinstance(self.fused_layers, int) or self.fused_layers < 0):
            raise ConfigError(
                f"FusionConfig.fused_layers must be None or a non-negative integer, got {self.fused_layers!r}"
            )
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ConfigError(f"FusionConfig.lora_rank must be a non-negative integer, got {self.lora_rank!r}")
        bad = set(self.lora_targets) - {"q", "k", "v", "out"}
        if bad:
            raise ConfigError(f"FusionConfig.lora_targets may name q, k, v, out; got {sorted(bad)}")
        if not isinstance(self.cond_frames, int) or self.cond_frames < 2:
            raise ConfigError(f"FusionConfig.cond_frames must be an integer >= 2, got {self.cond_frames!r}")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

    @property
    def window_frames(self) -> int:
        """Codec frames of input one window conditions on (window_frames)."""
        return window_frames(self.cond_frames)

    def num_fused(self, num_layers: int) -> int:
        """How many of the model's top layers carry the audio-fusion prefix."""
        if self.fused_layers is None:
            return num_layers
        if self.fused_layers > num_layers:
            raise ConfigError(f"FusionConfig.fused_layers={self.fused_layers} exceeds the model's {num_layers} layers")
        return self.fused_layers

    def to_dict(self) -> dict:
        data = asdict(self)
        data["lora_targets"] = list(self.lora_targets)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FusionConfig:
        """An adapter file's fusion settings; ConfigError for a field this version does not know."""
        from engine.files import from_saved

        return from_saved(cls, data, strict=True)


# MusicGen sizes (audiocraft / transformers facebook/musicgen-*); `tiny` is for tests and benchmarks.
PRESETS: dict[str, LMConfig] = {
    "tiny": LMConfig(num_layers=2, dim=64, num_heads=4, ffn_dim=256, text_dim=32),
    "small": LMConfig(num_layers=24, dim=1024, num_heads=16, ffn_dim=4096),
    "medium": LMConfig(num_layers=48, dim=1536, num_heads=24, ffn_dim=6144),
    "large": LMConfig(num_layers=48, dim=2048, num_heads=32, ffn_dim=8192),
}


def preset(name: str, **overrides: Any) -> LMConfig:
    """A named preset, optionally with fields replaced (e.g. `preset("tiny", card=64)`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model size {name!r}; choose one of {', '.join(PRESETS)}")
    try:
        return replace(PRESETS[name], **overrides)
    except TypeError as exc:
        raise ConfigError(f"bad override for preset {name!r}: {exc}") from None


__all__ = ["LMConfig", "FusionConfig", "PRESETS", "preset"]
