"""Instruct-MusicGen engine: model, weights, editing, data, training and evaluation.

Importing this package is cheap (no torch); the heavy modules are imported where used.
"""

__version__ = "0.1.0"
