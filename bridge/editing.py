"""One edit of a file region, the same way everywhere: read the region, edit it, hold the result to the input's
shape, write it atomically, report JSON-safe info. The server's worker, every batch backend and `imusic edit` call
this; the Ray backend, whose model runs elsewhere, calls its two halves around the remote edit.

The shape rule: the Editor promises the input's rate, channels and length. A result at another rate is refused
(AudioError: nothing sensible can be written); a result of another shape is a bug, but the producer still gets a
file aligned with the source (cut or padded with silence to the input's shape) and `info["warnings"]` says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge import audio_read, audio_write
from bridge.protocol import EditOptions
from engine.errors import AudioError, Cancelled
from engine.files import jsonable

# A job's progress: the engine's own stages up to this fraction, its last ("done") said as EDITED, then the result is
# written; "done" is the job's, when its result is in place (/imusic/done), not the engine's (a client that took the
# stage "done" for the end read the file before it was written)
WRITING_AT = 0.99
EDITED = "edited"

Progress = Callable[[float, str], None]


@dataclass
class RegionEdit:
    """What one edit of a region produced: the file written and the engine's info (JSON-safe)."""

    output_path: Path
    seed: int | None
    info: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # the edit itself (the model's time), without reading and writing


def conform(result_audio: Any, result_rate: int, audio: Any, sample_rate: int) -> tuple[Any, list[str]]:
    """The result held to the input's shape (see the module's shape rule); returns (audio [C, N], warnings)."""
    import numpy as np

    output = np.asarray(result_audio, dtype=np.float32)
    if int(result_rate) != int(sample_rate):
        raise AudioError(f"the engine returned audio at {result_rate} Hz for an input at {sample_rate} Hz")
    if output.ndim == 1:
        output = output[None]
    if output.shape == audio.shape:
        return output, []
    fixed = np.zeros(audio.shape, dtype=np.float32)
    channels, frames = min(output.shape[0], audio.shape[0]), min(output.shape[-1], audio.shape[-1])
    fixed[:channels, :frames] = output.reshape(-1, output.shape[-1])[:channels, :frames]
    warning = f"the engine returned {tuple(output.shape)} for an input of {tuple(audio.shape)}: fitted to the input"
    return fixed, [warning]


def write_result(
    path: str | Path,
    result_audio: Any,
    result_rate: int,
    audio: Any,
    sample_rate: int,
    info: dict,
    *,
    overwrite: bool = False,
    on_exists: Callable[[Path], Path] | None = None,
    roots: Sequence[str | Path] | None = None,
    before_link: Callable[[Path, dict[str, int], dict], None] | None = None,
) -> tuple[Path, dict]:
    """Conform, then write atomically; returns the path written and the info (JSON-safe) with any shape warning and
    the region's facts in info["bridge"].

    An existing `path` is replaced only with `overwrite`; else `on_exists(path)` names another (FileExistsError
    without it). `roots`: the folder is checked against them when the file is created (audio_write.write_atomic).
    `before_link(path, identity, info)`: audio_write.BeforeLink, with the info the result is reported with."""
    output, warnings = conform(result_audio, result_rate, audio, sample_rate)
    info = dict(info or {})
    if warnings:
        info["warnings"] = [*info.get("warnings", []), *warnings]
    facts = {"sample_rate": int(sample_rate), "channels": int(audio.shape[0]), "frames": int(audio.shape[-1])}
    info = jsonable({**info, "bridge": {**info.get("bridge", {}), **facts}})
    hook = None if before_link is None else (lambda at, identity: before_link(at, identity, info))
    try:
        written = audio_write.write_atomic(
            path, output, sample_rate, overwrite=overwrite, roots=roots, before_link=hook
        )
    except FileExistsError:
        if on_exists is None:
            raise
        written = audio_write.write_atomic(on_exists(Path(path)), output, sample_rate, roots=roots, before_link=hook)
    return Path(written), info


def edit_region(
    editor: Any,
    source: str | Path,
    start_s: float,
    end_s: float,
    instruction: str,
    output_path: str | Path,
    *,
    options: EditOptions | None = None,
    overwrite: bool = False,
    on_exists: Callable[[Path], Path] | None = None,
    roots: Sequence[str | Path] | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    before_link: Callable[[Path, dict[str, int], dict], None] | None = None,
) -> RegionEdit:
    """Read [start_s, end_s) of `source` (end_s < 0: to its end), edit it with `options` (the defaults without),
    write the result to `output_path` (see write_result, which `before_link` goes to). info["bridge"] holds the
    region's facts and the read, edit and write times."""
    started = time.perf_counter()
    audio, sample_rate = audio_read.read_region(source, start_s, end_s)  # [C, N]
    read_s = time.perf_counter() - started
    edit_started = time.perf_counter()
    choices = (options or EditOptions()).kwargs()
    edited = None
    if progress is not None:  # the engine's end is not the job's: its result is written after

        def edited(fraction: float, stage: str) -> None:
            progress(min(fraction, WRITING_AT), EDITED if stage == "done" else stage)

    result = editor.edit(audio, sample_rate, instruction, progress=edited, cancel=cancel, **choices)
    edit_s = time.perf_counter() - edit_started
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")
    if progress is not None:
        progress(WRITING_AT, "writing")
    write_started = time.perf_counter()
    written, info = write_result(
        output_path, result.audio, result.sample_rate, audio, sample_rate, result.info,
        overwrite=overwrite, on_exists=on_exists, roots=roots, before_link=before_link,
    )  # fmt: skip
    info["bridge"].update(read_s=read_s, edit_s=edit_s, write_s=time.perf_counter() - write_started)
    return RegionEdit(written, getattr(result, "seed", None), info, edit_s)
