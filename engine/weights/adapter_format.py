"""Our adapter format: `adapter.json` (fusion config, stems, instruction format, provenance) + `adapter.safetensors`.

Only the adapter parameters are stored (pos_emb, merge linears, gates, LoRA, and the cross-attention q/k/v of the
official checkpoint when they differ from the base), so an adapter is MBs, not the GBs of its base model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.errors import CheckpointError
from engine.files import write_json_atomic

# adapter.json is read and checked torch-free, in adapter_meta (peek_card reads it before any weights load)
from engine.weights.adapter_meta import (  # noqa: F401 (this module's readers, as before)
    FORMAT,
    TRAINING_FACTS,
    VERSION,
    is_adapter_dir,
    read_adapter_meta,
    training_facts,
)
from engine.weights.names import ADAPTER_JSON, ADAPTER_WEIGHTS

if TYPE_CHECKING:
    from engine.model.config import FusionConfig


def save_adapter(
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    fusion: FusionConfig | Mapping[str, Any],
    *,
    stems: Iterable[str],
    template: str,
    verbs: Mapping[str, str],
    base: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Write an adapter directory (`adapter.json` + `adapter.safetensors`) at `path`; returns `path`."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or non-contiguous storage: give it plain contiguous copies.
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in state.items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "fusion": fusion.to_dict() if hasattr(fusion, "to_dict") else dict(fusion),
        "stems": list(stems),
        "instruction_template": template,
        "instruction_verbs": dict(verbs),
        "base": dict(base or {}),
        "num_parameters": int(sum(t.numel() for t in tensors.values())),
        "provenance": dict(provenance or {}),
        "training": dict(training or {}),
    }
    save_file(tensors, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    write_json_atomic(path / ADAPTER_JSON, meta, sort_keys=False)
    return path


def base_reference(cfg: Any, path: str | Path | None = None) -> dict[str, Any]:
    """adapter.json's `base`: the decoder the adapter was trained on (its layers, width and codebook size, and its
    folder where known), which a loading error names when the adapter does not fit another base (base_hint)."""
    where = {"path": str(path)} if path else {}
    return {"num_layers": int(cfg.num_layers), "dim": int(cfg.dim), "card": int(cfg.card), **where}


def base_hint(meta: dict[str, Any]) -> str:
    """The base an adapter.json says its adapter was trained on, in words ("" where it says none)."""
    base = meta.get("base") or {}
    if not isinstance(base, dict) or not {"num_layers", "dim"} <= set(base):
        return ""
    where = f" ({base['path']})" if base.get("path") else ""
    return f"a base of {base['num_layers']} layers x {base['dim']}{where}"


def load_adapter(path: str | Path, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read an adapter directory: returns (state dict, adapter.json contents)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_adapter_meta(path)
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"adapter directory {path} has no {ADAPTER_WEIGHTS}")
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {exc}") from None
    return state, meta


def fusion_config(meta: Mapping[str, Any]) -> FusionConfig:
    """The FusionConfig stored in an adapter description."""
    from engine.model.config import FusionConfig

    try:
        return FusionConfig.from_dict(dict(meta["fusion"]))
    except Exception as exc:  # ConfigError or TypeError from a hand-edited file
        raise CheckpointError(f"adapter.json has an invalid fusion config: {exc}") from None
