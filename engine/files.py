"""Files the project writes: atomically (never half-written, never under a final name while being written), with
JSON-safe values and file-name-safe slugs. One copy of each rule for the server, batch, the CLI, the installer and
the engine's reports, checkpoints and pictures (audio keeps its own writer in bridge/audio_io.py: results go through
a checked folder descriptor, the journal its own under a lock). No torch, no numpy import (numpy values are
recognised by their methods): the client side imports it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside `path` for any writer (torch.save, savefig, write_bytes); when the block ends without
    an error the file is fsynced and renamed over `path`, else removed: `path` is either the old file or the new one.

    The temporary name keeps `path`'s suffix (savefig picks the format from it). An existing file keeps its
    permission mode (else `mode`, else the default for new files).
    """
    path = Path(path)
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # what open() would have given a new file (mkstemp makes it 0600)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """`data` written through `atomic_path`: never half-written, nothing left behind on failure."""
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars to numbers, arrays to lists, non-finite floats to null, the rest to text."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_json_atomic(path: str | Path, data: Any, sort_keys: bool = True) -> None:
    """JSON (indented, JSON-safe values: non-finite floats are null) written atomically."""
    text = json.dumps(jsonable(data), indent=1, sort_keys=sort_keys, ensure_ascii=False)
    write_bytes_atomic(path, text.encode("utf-8"))


def slug(text: str, limit: int = 40, separator: str = "-") -> str:
    """A file-name-safe short form: 'Extract the drums!' -> 'extract-the-drums' ("edit" when nothing is left)."""
    words = re.sub(r"[^a-z0-9]+", separator, text.lower()).strip(separator)
    return words[:limit].rstrip(separator) or "edit"
