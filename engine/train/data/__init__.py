"""Stem data: synthesis of Slakh-layout data sets (`imusic data synth`) and (input, target, instruction) triples.

Kept import-light (no torch, nothing heavy at import): `engine.train.data.cli` is imported by the `imusic` entry point.
Use the submodules: `layouts.scan`, `datasets.StemDataset`, `synth.synthesize`.
"""

DATASET_JSON = "dataset.json"  # a data set's description at its root (settings, splits, "complete")
