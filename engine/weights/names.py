"""The file names of the checkpoint layouts, said once and torch-free: peek_card and the command line read a folder
before any weights load. Each layout's module (adapter_format, transformers_layout, hub) uses these."""

from __future__ import annotations

# Our model folder (loader): its card, its base model (a transformers folder) and its adapter (an adapter folder).
MODEL_CARD = "model_card.json"
BASE_DIR = "base"
ADAPTER_DIR = "adapter"

# Our adapter folder (adapter_format): its description and its tensors.
ADAPTER_JSON = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"

# A transformers model folder (transformers_layout): its config and its weights, one file or shards named by an index.
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"

# The official Instruct-MusicGen adapter checkpoint (its hub repository holds only this and a README).
OFFICIAL_CKPT = "finetuned.ckpt"
