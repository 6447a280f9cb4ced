"""The official Instruct-MusicGen adapter checkpoint (`finetuned.ckpt`, ldzhangyx/instruct-MusicGen on the hub).

It is a PyTorch Lightning pickle whose hyper-parameters reference classes of the official repository
(src.models.components.model.Instructor, hydra partials, torch optimizers). We read only its state_dict, with a
restricted unpickler: tensors are rebuilt by torch's own functions and plain containers are allowed; every other
class or function the pickle names is replaced by an inert stand-in, so no code from the file ever runs.

Key mapping (model.py / transformer_cc.py of the official code, PEFT naming):
    model.cp_transformer.pos_emb                  -> fusion.pos_emb
    model.cp_transformer.merge_linear.{j}.weight  -> fusion.merge_linear.{j}.weight
    model.cp_transformer.gates                    -> fusion.gates
    model.peft_model.lm.transformer.base_model.model.layers.{i}.cross_attention.{q,v}_proj.lora_{A,B}.default.weight
                                                  -> layers.{i}.cross_attn.{q,v}.lora_{a,b}
    ...cross_attention.{q,k,v}_proj[.base_layer].weight -> layers.{i}.cross_attn.{q,k,v}.weight
The cross-attention q/k/v are separate Linear layers in the official code, whose values exist only in this file
(docs/ARCHITECTURE.md, "The method"), so they travel with the adapter and replace the base model's.
"""

from __future__ import annotations

import pickle
import re
import types
from pathlib import Path
from typing import Any

import torch

from engine.errors import CheckpointError
from engine.model.config import OFFICIAL_CLIP_SECONDS

OFFICIAL_BASE = "facebook/musicgen-large"

_CP = "model.cp_transformer."
_LM = "model.peft_model.lm."
_PEFT_LAYER = re.compile(r"transformer\.base_model\.model\.layers\.(\d+)\.(.+)")
_PLAIN_LAYER = re.compile(r"transformer\.layers\.(\d+)\.(.+)")
_CROSS = re.compile(r"cross_attention\.([qkv])_proj\.(?:base_layer\.)?weight")
_LORA = re.compile(r"cross_attention\.([qkv])_proj\.lora_([AB])\.[^.]+\.weight")

# What the pickle may construct for real: torch's tensor rebuilders and plain data containers.
_ALLOWED: dict[str, set[str] | None] = {
    "collections": {"OrderedDict"},
    "builtins": {
        "set",
        "frozenset",
        "dict",
        "list",
        "tuple",
        "slice",
        "complex",
        "int",
        "float",
        "bool",
        "str",
        "bytes",
        "bytearray",
    },
    "torch": {
        "Size",
        "device",
        "float32",
        "float16",
        "bfloat16",
        "float64",
        "int64",
        "int32",
        "int16",
        "int8",
        "uint8",
        "bool",
        "complex64",
    },
    "torch.nn.parameter": {"Parameter"},
    "torch._tensor": {"_rebuild_from_type_v2"},
}
_ALLOWED_PREFIX = {"torch._utils": "_rebuild_"}


class StandIn:
    """Inert replacement for a class or function the checkpoint names but we do not trust or need."""

    _qualified = "?"

    def __new__(cls, *args: Any, **kwargs: Any):
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, {}

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.items[len(self.items)] = value

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)

    def __call__(self, *args: Any, **kwargs: Any) -> StandIn:
        return StandIn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<stand-in for {self._qualified}>"


def _stand_in(module: str, name: str) -> type:
    return type(name, (StandIn,), {"_qualified": f"{module}.{name}", "__module__": "engine.weights.official"})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds tensors and containers, and stand-ins for anything else it is asked to import."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get(module)
        prefix = _ALLOWED_PREFIX.get(module)
        if (allowed is not None and name in allowed) or (prefix is not None and name.startswith(prefix)):
            return super().find_class(module, name)
        SUBSTITUTED.add(f"{module}.{name}")
        return _stand_in(module, name)


# Names the last checkpoints read asked for and got stand-ins (shown by `imusic weights info`).
SUBSTITUTED: set[str] = set()


def _restricted_pickle_module() -> types.ModuleType:
    """A stand-in for the `pickle` module, for torch.load's `pickle_module`."""
    module = types.ModuleType("imusic_restricted_pickle")
    module.Unpickler = RestrictedUnpickler
    module.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()
    module.loads = lambda data, **kwargs: pickle.loads(data, **kwargs)  # never called by torch.load
    module.__name__ = "imusic_restricted_pickle"
    return module


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The top-level object of a Lightning checkpoint, read safely (memory-mapped where the format allows)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    restricted = _restricted_pickle_module()
    try:
        try:
            data = torch.load(path, map_location="cpu", mmap=True, weights_only=False, pickle_module=restricted)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # legacy (non-zip) torch.save format: cannot be memory-mapped
            data = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dictionary")
    return data


def official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The `state_dict` of finetuned.ckpt (tensors only)."""
    data = read_checkpoint(path)
    state = data.get("state_dict", data)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no state_dict")
    return {name: t for name, t in state.items() if isinstance(name, str) and isinstance(t, torch.Tensor)}


def map_official_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Official names -> ours: (adapter tensors + cross-attention q/k/v, facts about the checkpoint)."""
    out: dict[str, torch.Tensor] = {}
    lora_targets: set[str] = set()
    layers: set[int] = set()
    unknown: list[str] = []  # LoRA or cross-attention tensors under names this mapping does not know
    for name, tensor in state.items():
        if name.startswith(_CP):
            rest = name[len(_CP) :]
            if rest in ("pos_emb", "gates") or re.fullmatch(r"merge_linear\.\d+\.weight", rest):
                out[f"fusion.{rest}"] = tensor
            # cp_transformer.layers.* are the frozen decoder layers, shared with the LM: nothing new
            continue
        if not name.startswith(_LM):
            continue
        rest = name[len(_LM) :]
        match = _PEFT_LAYER.fullmatch(rest) or _PLAIN_LAYER.fullmatch(rest)
        part = match[2] if match else rest
        if lora := _LORA.fullmatch(part) if match else None:
            layers.add(int(match[1]))
            lora_targets.add(lora[1])
            out[f"layers.{int(match[1])}.cross_attn.{lora[1]}.lora_{lora[2].lower()}"] = tensor
        elif cross := _CROSS.fullmatch(part) if match else None:
            layers.add(int(match[1]))
            out[f"layers.{int(match[1])}.cross_attn.{cross[1]}.weight"] = tensor
        elif "lora_" in part or re.search(r"cross_attention\.[qkv]_proj\.", part):
            unknown.append(name)  # (the fused in_proj and out_proj are the frozen base's: nothing new)
        elif match:
            layers.add(int(match[1]))
    missing = [key for key in ("fusion.pos_emb", "fusion.gates") if key not in out]
    if missing:
        raise CheckpointError(
            f"not an Instruct-MusicGen checkpoint: no {_CP}{missing[0].split('.', 1)[1]} (missing {', '.join(missing)})"
        )
    _check_text_fusion(out, layers, lora_targets, unknown)
    merge = sorted(int(n.split(".")[2]) for n in out if n.startswith("fusion.merge_linear."))
    facts = {
        "num_layers": (max(layers) + 1) if layers else None,
        "fused_layers": len(merge),
        "cond_frames": int(out["fusion.pos_emb"].shape[1]),
        "dim": int(out["fusion.pos_emb"].shape[2]),
        "lora_targets": tuple(t for t in ("q", "k", "v") if t in lora_targets),
        "lora_rank": next((int(t.shape[0]) for n, t in out.items() if n.endswith("lora_a")), 0),
    }
    return out, facts


def _check_text_fusion(out: dict, layers: set[int], targets: set[str], unknown: list[str]) -> None:
    """CheckpointError unless the text fusion came through whole: its LoRA and the cross-attention q/k/v of every
    layer. Loading without them would edit with MusicGen's own cross-attention and no LoRA, and say nothing."""
    if unknown:
        shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise CheckpointError(
            f"the checkpoint holds LoRA or cross-attention tensors under names this loader does not know ({shown}): "
            "refused rather than loaded without them"
        )
    if not targets:
        raise CheckpointError(
            "the checkpoint holds no LoRA on the cross-attention (the text fusion): not an Instruct-MusicGen adapter"
        )
    absent = [
        f"layers.{index}.cross_attn.{target}.{kind}"
        for index in sorted(layers)
        for target in ("q", "k", "v")
        for kind in (("weight", "lora_a", "lora_b") if target in targets else ("weight",))
        if f"layers.{index}.cross_attn.{target}.{kind}" not in out
    ]
    if absent:
        raise CheckpointError(
            f"the checkpoint's text fusion is incomplete: {len(absent)} tensors missing (first {absent[0]})"
        )


def read_official_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state in our naming, info: fusion config, official stems / template / verbs, provenance) of finetuned.ckpt."""
    from engine.instructions import OFFICIAL_STEMS, OFFICIAL_TEMPLATE, OFFICIAL_VERBS
    from engine.model.config import FusionConfig

    state, facts = map_official_state(official_state_dict(path))
    fused = facts["fused_layers"]
    published = FusionConfig()  # alpha is not in the checkpoint; its defaults are the published adapter's
    fusion = FusionConfig(
        fused_layers=None if fused == facts["num_layers"] else fused,
        lora_rank=facts["lora_rank"],
        lora_alpha=published.lora_alpha,
        lora_targets=facts["lora_targets"] or published.lora_targets,
        cond_frames=facts["cond_frames"],
    )
    info = {
        "fusion": fusion,
        "stems": list(OFFICIAL_STEMS),
        "template": OFFICIAL_TEMPLATE,
        "verbs": dict(OFFICIAL_VERBS),
        "provenance": {"source": str(path), "format": "official finetuned.ckpt", "base": OFFICIAL_BASE, **facts},
        # The official run trained on 5 s clips (its data module's time_in_seconds) and edits in chunks of at most
        # 5 s (its model config's sec): its pos_emb has rows for 10 s, but those past 5 s were never trained.
        "training": {"window_s": OFFICIAL_CLIP_SECONDS},
        "base_hint": OFFICIAL_BASE,
        # what a converted adapter's adapter.json says it was trained on (its loading errors name it)
        "base": {"num_layers": facts["num_layers"], "dim": facts["dim"], "path": OFFICIAL_BASE}
        if facts["num_layers"]
        else {},
    }
    return state, info
