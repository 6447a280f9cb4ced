"""adapter.json, our adapter's description, read and checked in one place and torch-free: peek_card reads it before
any weights load (`imusic edit` and `imusic batch --dry-run` check an instruction against it), loading reads it the
same way (engine.weights.adapter_format, which writes it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError
from engine.files import read_json_object
from engine.weights.names import ADAPTER_JSON

FORMAT = "imusic-adapter"
VERSION = 1


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
    check_stems(meta["stems"], meta_path)
    check_instruction_format(meta, meta_path)
    meta["training"] = training_facts(meta, str(meta_path))  # checked once, read as numbers from here on
    return meta


def check_stems(stems: Any, where: Any) -> None:
    """CheckpointError unless `stems` (an adapter's or a model card's) is a non-empty list of stem names: an empty one
    would leave the model no stem to name (a card's fell back to the official four without a word)."""
    if not (isinstance(stems, list) and stems and all(isinstance(s, str) and s.strip() for s in stems)):
        raise CheckpointError(f"{where}: 'stems' must be a non-empty list of stem names, got {stems!r}")


def check_instruction_format(meta: Mapping[str, Any], where: Any) -> None:
    """CheckpointError unless the instruction format an adapter or card may give is of the right kind: a template of
    text, verbs an object of operation -> text ("instruction_verbs": 5 was a TypeError traceback at the first edit)."""
    template, verbs = meta.get("instruction_template"), meta.get("instruction_verbs")
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{where}: 'instruction_template' must be text, got {template!r}")
    if verbs is not None and not (
        isinstance(verbs, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in verbs.items())
    ):
        raise CheckpointError(f"{where}: 'instruction_verbs' must be an object of operation -> verb, got {verbs!r}")


# What an adapter was trained on, as `training` in adapter.json: its clips' length and its inputs' median RMS.
TRAINING_FACTS = ("window_s", "input_rms_db")


def training_facts(meta: Mapping[str, Any], where: str = ADAPTER_JSON) -> dict[str, float]:
    """The numbers of TRAINING_FACTS an adapter description holds (adapters written before it hold none);
    CheckpointError for one that is no finite number, or a window that is not positive."""
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
