"""What a loaded model is: the decoder, codec and text encoder on one device, and the card that describes them.

The card is what the rest of the engine asks about the model: rates, codebooks, the stems it can edit, and the exact
instruction text it was trained with (the official adapter: "Music piece. Instruct: {verb} {stem}." with the stems
named as trained, "Drums", "Bass", "Piano", "Guitar"; engine/instructions.py formats the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.errors import CheckpointError
from engine.eval.verdict import shortfall_note
from engine.instructions import OFFICIAL_STEMS, OFFICIAL_TEMPLATE, OFFICIAL_VERBS
from engine.model.config import FusionConfig, is_adapter_name, window_frames
from engine.model.fit import check_state_fits

if TYPE_CHECKING:
    import torch

    from engine.model.config import LMConfig
    from engine.model.lm import MusicGenLM


@dataclass
class ModelCard:
    """Facts about a loaded model that editing, the server and the CLI need."""

    name: str
    sample_rate: int
    frame_rate: float
    num_codebooks: int
    card: int
    stems: tuple[str, ...] = OFFICIAL_STEMS
    template: str = OFFICIAL_TEMPLATE
    verbs: dict[str, str] = field(default_factory=lambda: dict(OFFICIAL_VERBS))
    cond_frames: int = FusionConfig.cond_frames  # the official adapter's window
    has_adapter: bool = True
    provenance: dict[str, Any] = field(default_factory=dict)
    # {operation: {metric: beats the unchanged input?}} from the card's own evaluation; {} when it has none
    beats_identity: dict[str, dict[str, bool]] = field(default_factory=dict)
    # What the adapter was trained on (engine.weights.adapter_format.training_facts), None where unknown: the length of
    # its clips (the Editor's default window: condition positions past it were never trained) and the median RMS of
    # its inputs (the level the Editor feeds the model at: engine.levels.model_input_gain).
    trained_window_s: float | None = None
    input_rms_db: float | None = None
    # How much of what the mask mode cuts this model's output is trusted to cut, per operation (engine.mask
    # MaskSettings.depth), chosen on validation songs for this model and adapter; {}: the mask's own (1)
    mask_depth: dict[str, float] = field(default_factory=dict)

    def training_facts(self) -> dict[str, float]:
        """The adapter's training facts as adapter.json records them (what engine.weights.save_model_dir takes)."""
        facts = {"window_s": self.trained_window_s, "input_rms_db": self.input_rms_db}
        return {key: value for key, value in facts.items() if value is not None}

    def shortfall(self, op: str) -> str:
        """One line for the producer when this model's own evaluation says its `op` edits lose to leaving the audio
        unchanged (shortfall_note); "" when they do not, or when the card has no evaluation."""
        return shortfall_note(self.name, self.beats_identity, op)

    @property
    def window_seconds(self) -> float:
        """Longest input one window can condition on (engine.model.config.window_frames)."""
        return window_frames(self.cond_frames) / self.frame_rate


@dataclass
class LoadedModel:
    """A model ready to edit: `lm` (MusicGenLM), `codec` (Codec), `text` (TextEncoder), `card`, device, dtype."""

    lm: Any
    codec: Any
    text: Any
    card: ModelCard
    device: Any
    dtype: Any


def build_lm(
    cfg: LMConfig,
    fusion: FusionConfig | None,
    state: dict,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    strict: bool = True,
) -> MusicGenLM:
    """Our MusicGenLM from a state dict in our naming, moving (not copying) the tensors into it.

    The module is built on the meta device so a 3.3B-parameter decoder is never allocated twice; parameters the state
    does not hold (adapters of a base-only checkpoint) are then created and initialised by their modules.
    """
    import torch

    from engine.model.lm import MusicGenLM

    with torch.device("meta"):
        lm = MusicGenLM(cfg, fusion)
    adapter_names = _adapter_names(lm)
    # adapters a base-only checkpoint lacks are made below; without `strict`, any missing weight is made there too
    may_miss = adapter_names.__contains__ if strict else (lambda name: True)
    check_state_fits(state, lm.state_dict(), "the checkpoint", "the decoder", may_miss=may_miss)
    lm.load_state_dict(state, strict=False, assign=True)
    _materialize(lm, device)
    lm.to(device=device, dtype=dtype) if dtype is not None else lm.to(device=device)
    return lm.eval()


def _adapter_names(lm) -> set[str]:
    if hasattr(lm, "adapter_state_dict"):
        try:
            return set(lm.adapter_state_dict().keys())
        except Exception:  # noqa: BLE001 - a meta-device model may refuse; fall back to the naming rule
            pass
    return {name for name in lm.state_dict() if is_adapter_name(name)}


def _materialize(lm, device) -> None:
    """Allocate what is still on the meta device (adapters a base-only checkpoint lacks) and initialise it as the
    official code does: gates and LoRA B at zero (the untrained adapter changes nothing), pos_emb ~ N(0, 1), LoRA A
    and merge linears with nn.Linear's default (kaiming uniform)."""
    import math

    import torch

    for module in lm.modules():
        own = list(module.named_parameters(recurse=False))
        if not any(t.is_meta for _, t in own):
            continue
        whole = all(t.is_meta for _, t in own)
        for name, tensor in own:
            if tensor.is_meta:
                fresh = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
                setattr(module, name, torch.nn.Parameter(fresh, requires_grad=tensor.requires_grad))
        if whole and isinstance(module, (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm)):
            module.reset_parameters()
            continue
        with torch.no_grad():
            for name, tensor in own:
                if not tensor.is_meta:
                    continue
                param = getattr(module, name)
                if name in ("gates", "lora_b") or name.endswith("gate"):
                    param.zero_()
                elif name == "pos_emb":
                    param.normal_()
                elif param.dim() >= 2:
                    torch.nn.init.kaiming_uniform_(param, a=math.sqrt(5))
                else:
                    param.zero_()
    leftover = [name for name, t in list(lm.named_parameters()) + list(lm.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"internal error: model tensors left unallocated: {', '.join(leftover[:5])}")
