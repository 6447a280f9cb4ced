"""Errors a producer can act on. The CLI and the server turn them into one line (and an error code on the wire).

This module must not import torch: the OSC client and REAPER scripts use it.
"""


class ImusicError(Exception):
    """Base of every error we raise on purpose; `code` is a short machine-readable name."""

    code = "error"


class AudioError(ImusicError):
    """The input audio cannot be edited (empty, silent, NaN/inf, unreadable, wrong region)."""

    code = "bad_audio"


class InstructionError(ImusicError):
    """The instruction does not parse into an operation and a stem the model knows."""

    code = "bad_instruction"


class CheckpointError(ImusicError):
    """A checkpoint or model directory is missing, corrupted, or of the wrong shape."""

    code = "bad_checkpoint"


class DataError(ImusicError):
    """A data set cannot be used (unknown layout, too small, unreadable)."""

    code = "bad_data"


class ConfigError(ImusicError):
    """A setting or argument is invalid."""

    code = "bad_config"


class Cancelled(ImusicError):
    """The job was cancelled between steps."""

    code = "cancelled"


class ResourceError(ImusicError):
    """The machine ran out of something (GPU memory, disk) and a retry did not help."""

    code = "resources"


# The exit code of a command that ended on an ImusicError (argparse's usage errors are 2, Ctrl-C is 130).
ERROR_EXIT = 1


def report_error(exc: ImusicError, command: str) -> int:
    """Say a producer's error in one line on stderr, `{command}: error: ...`; returns ERROR_EXIT. Every entry point
    (`imusic ...`, the `python -m` tools) ends this way."""
    import sys

    sys.stderr.write(f"{command}: error: {exc}\n")
    return ERROR_EXIT


def error_from_code(code: str, message: str) -> ImusicError:
    """The error another process reported by its `code` (and message), as this module's class with that code: a Ray
    worker's ResourceError is a ResourceError again on the driver. Another code stays on a plain ImusicError."""
    for cls in _CLASSES:
        if cls.code == code:
            return cls(message)
    error = ImusicError(message)
    error.code = code
    return error


_CLASSES = tuple(cls for cls in list(globals().values()) if isinstance(cls, type) and issubclass(cls, ImusicError))
