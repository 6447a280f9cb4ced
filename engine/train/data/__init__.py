"""Stem data: synthesis of Slakh-layout data sets (`imusic data synth`) and (input, target, instruction) triples.

Kept import-light (no torch, nothing heavy at import): `engine.train.data.cli` is imported by the `imusic` entry point.
Use the submodules: `layouts.scan`, `datasets.StemDataset`, `synth.synthesize`.
"""

from engine.model.config import OFFICIAL_CLIP_SECONDS

DATASET_JSON = "dataset.json"  # a data set's description at its root (settings, splits, "complete")


def read_dataset_json(root, missing: str) -> dict:
    """The description `imusic data synth` wrote at a data set's root (DATASET_JSON): DataError(`missing`) where there
    is none, DataError naming the file where it is unreadable or no JSON object. Sets from before the renderer was
    recorded were rendered by fluidsynth, and say so here."""
    from pathlib import Path

    from engine.errors import DataError
    from engine.files import read_json_object

    record = read_json_object(Path(root) / DATASET_JSON, missing, DataError)
    record.setdefault("renderer", "fluidsynth")
    return record


# Clip defaults, one for training, evaluation, tuning and export alike (datasets.ClipConfig's):
CLIP_SECONDS = OFFICIAL_CLIP_SECONDS  # the official training clips' length
FOUR_STEMS = "4stems"  # the class set of the official model's four stems (engine.instructions.OFFICIAL_STEMS)
CLASS_SETS = (FOUR_STEMS, "all")  # named class sets; a list of class names is the other kind

# `imusic data synth` defaults: each song's length, and the MIDI renderers (engine.train.data.render)
SONG_SECONDS = 30.0
RENDERERS = ("auto", "fluidsynth", "tinysoundfont")

# Songs are split, each into exactly one (datasets.split_songs); the held-out ones no stage trains on, codec included.
SONG_SPLITS = ("train", "validation", "test")
HELD_OUT = ("validation", "test")
