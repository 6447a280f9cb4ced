"""What the embedded model's recipe trains at each scale: every stage's settings, the least time a stage needs, and the
recipe id that ties a stage's outputs to the settings that made them. engine/train/recipe.py runs them."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from engine.train.config import BASE_SIZES, EMBEDDED_RATE

RECIPE = "embedded"

# What each scale trains. "full" is planned for one H200 (docs/embedded_model/gpu_recipe.md); its step counts are
# ceilings: the deadline shortens each schedule to the time the stage has. "tiny" is the same recipe in seconds on a
# CPU (tests/test_gpu_recipe.py). Sizes are the shipped model's (decoder 4 x 256, text 128, codec 4 x 512 codes).
SCALES: dict[str, dict[str, Any]] = {
    "full": {
        # tinysoundfont on every machine (a wheel): "auto" took FluidSynth where it loads, so a continuation here
        # rendered other stems than the device's stages were trained on
        "data": {"tracks": 1600, "seconds": 30.0, "sample_rate": EMBEDDED_RATE, "renderer": "tinysoundfont"},
        "codec": {
            "batch": 64,
            "seconds": 1.0,
            "lr": 1e-3,
            "warmup": 200,
            "preload": True,
            "log_every": 50,
            # Two runs as the CPU recipe's last two: the waveform MSE brings the pitch back, the short run without
            # it restores the level (docs/embedded_model/codec.md). share: of the codec stage's time.
            "phases": [
                {"share": 0.8, "steps": 30000, "quantize_after": 500, "wave_mse_weight": 2.0},
                {"share": 0.2, "steps": 8000, "wave_mse_weight": 0.0},
            ],
        },
        "base": {
            **BASE_SIZES,  # the shipped model's sizes
            "steps": 30000,
            "batch": 64,
            "accum": 1,  # one optimizer step per batch of 64 (TrainConfig's official default is 4 micro-batches)
            "lr": 1e-3,
            "warmup": 200,
            "grad_clip": 1.0,
            "precision": "bf16",
            "keep_best": True,  # export the best validation loss's weights (the pool is seen many times)
            "text_dropout": 0.2,  # the null text CFG decodes against (audiocraft's MusicGen: 0.2)
            # epochs of clips in the code pool: 8 x 1280 songs, about 9 s to read with 8 readers; a pool of 4 would
            # be seen 50-150 times in the stage's share at the GPU's step rate (estimated, not measured yet)
            "pool": 8,
            "ckpt_every": 1000,
            "val_every": 250,
            "val_clips": 64,  # the best-validation export must not pick noise (16 by default)
            "log_every": 50,
        },
        "adapters": {
            "window": 5.0,
            "steps": 20000,
            "batch": 64,
            "accum": 1,
            "lr": 3e-3,
            "gate_lr": 1e-2,
            "warmup": 100,
            "precision": "bf16",
            "text_dropout": 0.2,  # the official run's CFG dropout (audiocraft's MusicGen configs), as the base's
            "keep_best": True,  # export the best validation loss's weights (the pool is seen many times)
            "pool": 6,
            "ckpt_every": 1000,
            "val_every": 250,
            "val_clips": 64,  # the best-validation export must not pick noise (16 by default)
            "log_every": 50,
        },
        # Scored within the stage's deadline (evaluate stops taking clips when a task's share is spent), one clip per
        # test song so that a cut evaluation still spans many songs; 32 clips per batch (one decode step serves all).
        "eval": {
            "tasks": ["extract", "remove", "add"],
            "clips_per_song": 1,
            "spectrograms": 3,
            "limit": None,
            "batch": 32,
            "workers": 14,  # scoring processes (of 16 cores): the metrics no longer wait on one core
        },  # fmt: skip
    },
    "tiny": {
        "data": {"tracks": 6, "seconds": 4.0, "sample_rate": EMBEDDED_RATE, "renderer": "tinysoundfont"},
        "codec": {
            "batch": 2,
            "seconds": 0.5,
            "lr": 1e-3,
            "warmup": 1,
            "preload": True,
            "log_every": 1,
            "phases": [
                {"share": 0.5, "steps": 3, "quantize_after": 1, "wave_mse_weight": 2.0},
                {"share": 0.5, "steps": 2, "wave_mse_weight": 0.0},
            ],
        },
        "base": {
            "layers": 1,
            "dim": 32,
            "heads": 2,
            "text_dim": 16,
            "steps": 3,
            "batch": 2,
            "accum": 1,
            "lr": 1e-3,
            "warmup": 1,
            "grad_clip": 1.0,
            "precision": "auto",
            "keep_best": True,
            "text_dropout": 0.2,
            "pool": 1,
            "ckpt_every": 3,
            "val_every": 3,
            "val_clips": 2,
            "log_every": 1,
            "seconds": 2.0,
        },
        "adapters": {
            "window": 2.0,
            "steps": 3,
            "batch": 2,
            "accum": 1,
            "lr": 3e-3,
            "gate_lr": 1e-2,
            "warmup": 1,
            "precision": "auto",
            "text_dropout": 0.2,
            "keep_best": True,
            "pool": 1,
            "ckpt_every": 3,
            "val_every": 3,
            "val_clips": 2,
            "log_every": 1,
            "seconds": 2.0,
        },
        "eval": {
            "tasks": ["extract", "remove"],
            "clips_per_song": 2,
            "spectrograms": 0,
            "limit": 2,
            "seconds": 2.0,
            "batch": 2,
            "workers": 1,  # the pool's path, checked at the least cost
        },  # fmt: skip
    },
}

# The least time (s) a stage needs to do anything (one song, one step, one clip), per scale: a budget that cannot give
# a stage this is refused before anything starts. The full scale's include loading and encoding the code pools.
SMALLEST_STEP = {
    "full": {"data": 15.0, "codec": 20.0, "base": 30.0, "adapters": 30.0, "eval": 20.0, "pack": 2.0},
    "tiny": {"data": 1.0, "codec": 1.0, "base": 2.0, "adapters": 2.0, "eval": 2.0, "pack": 0.2},
}


# Settings that change how fast a stage runs, not what it makes: left out of the recipe id.
SPEED_ONLY = {"eval": ("workers",)}


def recipe_id(scale: str, settings: dict) -> str:
    """A short hash of the recipe's name, scale and the settings that shape its outputs: stage outputs from another
    recipe are refused."""
    shaping = {
        stage: {k: v for k, v in values.items() if k not in SPEED_ONLY.get(stage, ())}
        if isinstance(values, dict)
        else values
        for stage, values in settings.items()
    }
    text = json.dumps({"recipe": RECIPE, "scale": scale, "settings": shaping}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
