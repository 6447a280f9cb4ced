"""Models in every layout we read: our model directory, transformers MusicGen, audiocraft, the official adapter.

loader.py finds and loads them (`load_model(source, adapter, device, dtype) -> LoadedModel`) and writes ours
(`save_model_dir`); one module per layout (transformers_layout, audiocraft_layout, official, adapter_format), hub.py
for the Hugging Face cache, convert.py and cli.py for `imusic weights`. The names below are the package's API.
"""

from engine.weights.loader import (
    DEFAULT_MODEL_DIR,
    MODEL_CARD,
    default_model_dir,
    detect_layout,
    is_model_dir,
    load_model,
    peek_card,
    read_adapter,
    read_model_card,
    resolve_source,
    save_model_dir,
)

__all__ = [
    "MODEL_CARD",
    "DEFAULT_MODEL_DIR",
    "default_model_dir",
    "is_model_dir",
    "detect_layout",
    "resolve_source",
    "read_model_card",
    "peek_card",
    "load_model",
    "read_adapter",
    "save_model_dir",
]
