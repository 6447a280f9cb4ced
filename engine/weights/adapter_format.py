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
from engine.files import read_json_object, write_json_atomic
from engine.weights.names import ADAPTER_JSON, ADAPTER_WEIGHTS

if TYPE_CHECKING:
    from engine.model.config import FusionConfig

FORMAT = "imusic-adapter"
VERSION = 1


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


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_JSON).is_file()


def read_adapter_meta(path: str | Path) -> dict[str, Any]:
    """Read and check `adapter.json` of an adapter directory."""
    path = Path(path)
    meta_path = path / ADAPTER_JSON
    meta = read_json_object(meta_path, f"adapter directory {path} has no {ADAPTER_JSON}", CheckpointError)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not an imusic adapter description (format {FORMAT!r} expected)")
    version = meta.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{meta_path} has a format version that is no whole number: {version!r}")
    if version > VERSION:
        raise CheckpointError(f"{meta_path} has format version {version}; this imusic reads up to {VERSION}")
    for key in ("fusion", "stems"):
        if key not in meta:
            raise CheckpointError(f"{meta_path} lacks the field {key!r}")
    if not isinstance(meta["fusion"], dict):
        raise CheckpointError(f"{meta_path}: 'fusion' must be an object of adapter settings")
    stems = meta["stems"]
    if not (isinstance(stems, list) and stems and all(isinstance(s, str) and s.strip() for s in stems)):
        raise CheckpointError(f"{meta_path}: 'stems' must be a list of stem names, got {stems!r}")
    meta["training"] = training_facts(meta, str(meta_path))  # checked once, read as numbers from here on
    return meta


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


# What an adapter was trained on, as `training` in adapter.json: its clips' length and its inputs' median RMS.
TRAINING_FACTS = ("window_s", "input_rms_db")


def training_facts(meta: Mapping[str, Any], where: str = ADAPTER_JSON) -> dict[str, float]:
    """The numbers of TRAINING_FACTS an adapter description holds (adapters written before it hold none);
    CheckpointError for one that is no finite number, or a window that is not positive."""
    import math

    training = meta.get("training") or {}
    if not isinstance(training, Mapping):
        raise CheckpointError(f"{where}: 'training' must be an object, got {training!r}")
    facts = {}
    for key in TRAINING_FACTS:
        value = training.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise CheckpointError(f"{where}: training.{key} must be a number, got {value!r}")
        if key == "window_s" and value <= 0:
            raise CheckpointError(f"{where}: training.window_s must be above 0 s, got {value!r}")
        if key == "input_rms_db" and not -80 <= value <= 0:
            raise CheckpointError(f"{where}: training.input_rms_db must be from -80 to 0 dBFS, got {value!r}")
        facts[key] = float(value)
    return facts


def fusion_config(meta: Mapping[str, Any]) -> FusionConfig:
    """The FusionConfig stored in an adapter description."""
    from engine.model.config import FusionConfig

    try:
        return FusionConfig.from_dict(dict(meta["fusion"]))
    except Exception as exc:  # ConfigError or TypeError from a hand-edited file
        raise CheckpointError(f"adapter.json has an invalid fusion config: {exc}") from None
