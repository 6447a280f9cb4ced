"""Edit modes: how an edit's result is made from the model's output (engine.mask for the "mask" mode's math).

- "mask" (every operation's default): the producer's own recording, masked (extract, remove) or with the added part
  put on top (add);
- "layer" (add only): the added part alone, the mask mode's add less the recording: on a track beside the recording
  (what the REAPER actions make of an add) the two play what the mask mode gives before its limiter (the Editor
  notes where they peak higher together), and the new part stays its own;
- "resynth": the model's output itself, the paper's behaviour;
- "beside" (no mode of its own): for a result that plays beside the recording, "layer" for an add and the default for
  the rest, decided by the engine once it has parsed the instruction with its model's card (the REAPER actions send
  it: guessed from the words without the card, "put kalimba in" went as the default, and the new track played the
  recording a second time).

No numpy or torch import: the CLI, the server's request checks and the REAPER actions read these.
"""

from __future__ import annotations

from engine.errors import ConfigError

MASK = "mask"
RESYNTH = "resynth"
LAYER = "layer"
BESIDE = "beside"
DEFAULT_MODE = MASK  # every operation's
MODES = (DEFAULT_MODE, RESYNTH, LAYER, BESIDE)
# The modes that read the model's output through the mask (engine.mask): the Editor generates and finishes them so.
MASKED_MODES = (MASK, LAYER)
# Modes that apply to each operation, the default first. "mask" on add means: the original plus the added part.
OP_MODES = {"extract": (MASK, RESYNTH), "remove": (MASK, RESYNTH), "add": (MASK, RESYNTH, LAYER)}
# What each mode gives, in a producer's words (the command line's --mode help: modes_help)
MODE_HELP = {
    MASK: "the edit keeps your recording (its rate, channels and sound), the default",
    LAYER: "the added part alone, to play beside your recording",
    RESYNTH: "the model's own output, as in the paper",
    BESIDE: f"a result to play beside your recording: an add's {LAYER}, the default for the rest",
}
MODE_POLICIES = {
    "mask": "one time-frequency mask from the model's output applied to every input channel (rate, phase and "
    "stereo image of the original kept)",
    "mask_add": "the original plus the added part (model output minus what the input holds), the added part "
    "mono on every channel (a 5.1 or 7.1 region's LFE excepted)",
    "resynth": "mono model output copied to every channel (a 5.1 or 7.1 region's LFE silent)",
    "layer": "the added part alone (model output minus what the input holds), mono on every channel (a 5.1 or 7.1 "
    "region's LFE silent): beside the original it plays as the mask mode's add",
}


def modes_help() -> str:
    """Every mode with what it gives and, where it applies to some operations only, which: one line of help."""

    def applies(mode: str) -> str:
        ops = [op for op, modes in OP_MODES.items() if mode in modes or mode == BESIDE]
        return "" if len(ops) == len(OP_MODES) else f" ({', '.join(ops)} only)"

    return "; ".join(f"{mode}{applies(mode)}: {MODE_HELP[mode]}" for mode in (MASK, LAYER, RESYNTH, BESIDE))


def mode_name(mode: str | None) -> str:
    """A mode as a user or client wrote it, in the one spelling every layer compares: stripped, lower case ("" for
    none, which means each operation's default)."""
    return "" if mode is None else str(mode).strip().lower()


def check_mode_name(mode: str | None, error: type[Exception] = ConfigError) -> str:
    """mode_name(mode) when it is one of MODES or none, else `error` naming them (one message everywhere: the server
    says it when a request arrives, before the instruction is parsed)."""
    name = mode_name(mode)
    if name and name not in MODES:
        raise error(f"unknown mode {mode!r}: use {', '.join(MODES)} (or nothing: the default)")
    return name


def check_mode(op: str, mode: str | None) -> str:
    """The mode to use for `op` (its default for None or ""); ConfigError in one line naming the modes that exist
    (check_mode_name), or those that apply to `op`."""
    applicable = OP_MODES.get(op, MODES)
    name = check_mode_name(mode)
    if name == BESIDE:
        return LAYER if LAYER in applicable else applicable[0]
    if not name:
        return applicable[0]
    if name not in applicable:
        raise ConfigError(f"mode {mode!r} does not apply to {op}: use {' or '.join(applicable)}")
    return name


def canonical_mode(mode: str | None) -> str:
    """`mode` as a result's settings record it: "" where it is every operation's default (named or not), else its
    name; "MASK", "mask" and nothing then compare equal."""
    name = check_mode_name(mode)  # a mode unknown here is an error, never taken for the default
    applies = [op for op, modes in OP_MODES.items() if not name or name in modes or name == BESIDE]  # layer: add's
    return "" if all(check_mode(op, name) == check_mode(op, "") for op in applies) else name


def channel_policy(op: str, mode: str) -> str:
    """How the result's channels are made, for the edit's info."""
    return MODE_POLICIES["mask_add" if mode == MASK and op == "add" else mode]
