"""argparse types shared by the `imusic` commands, whichever package defines the command (bridge.cli's own, and the
engine's eval, data and train commands): each rule in the engine's words, as argparse's usage error (exit 2)."""

from __future__ import annotations

import argparse


def whole_number(text: str, lowest: int, highest: int) -> int:
    """`text` as a whole number in [lowest, highest], else argparse's usage error (exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not lowest <= value <= highest:
        raise argparse.ArgumentTypeError(f"must be from {lowest} to {highest}, got {value}")
    return value


def seed_option(text: str) -> int:
    """argparse type of --seed: a whole number from 0 to instructions.MAX_SEED (the wire's too; the engine draws below
    it)."""
    from engine.instructions import MAX_SEED

    return whole_number(text, 0, MAX_SEED)
