"""Packing a stage's results so that they fit what an accelerator run can return (at most 8 files of 16 MiB).

`pack_dir` writes a deterministic tar of the chosen files of a folder, with every floating-point tensor of every
.safetensors file stored in bf16 (the original dtype recorded in the file's metadata), split into parts of at most
PART_BYTES: `NAME.tar.00`, `NAME.tar.01`, ... `unpack_parts` joins and extracts them and restores the recorded dtypes,
so the unpacked files load exactly as before except that their values are rounded to bf16. Packing what was unpacked
gives the same bytes again (tests/test_gpu_recipe.py). The tar's last member, MANIFEST, names every file with its
size and sha256: a pack with a part missing, cut short or damaged is refused (`verify_parts`), never half unpacked.
A model the package ships is unpacked without the restore: its files stay bf16 (the same values in half the bytes;
the loader casts them to the model's dtype).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as save_bytes

from engine.errors import CheckpointError
from engine.files import atomic_path

PART_BYTES = 15 * 1024 * 1024  # under the 16 MiB a returned file may have, with room for a tar header
META_KEY = "imusic_packed_dtypes"
_FLOATS = {torch.float32: "float32", torch.float16: "float16", torch.float64: "float64"}
_BY_NAME = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64}
MANIFEST = ".pack-manifest.json"  # the tar's last member: {"files": {name: {"bytes", "sha256"}}}; never unpacked


def _chosen(root: Path, include: Sequence[str], exclude: Sequence[str]) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if include and not any(fnmatch.fnmatch(rel, pattern) for pattern in include):
            continue
        if any(fnmatch.fnmatch(rel, pattern) for pattern in exclude):
            continue
        files.append(path)
    return files


def to_bf16_bytes(path: Path) -> bytes:
    """A safetensors file with its float tensors in bf16 and their original dtypes in the metadata."""
    tensors, dtypes = {}, {}
    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata() or {})
        for name in sorted(handle.keys()):  # noqa: SIM118
            tensor = handle.get_tensor(name)
            if tensor.dtype in _FLOATS:
                dtypes[name] = _FLOATS[tensor.dtype]
                tensor = tensor.to(torch.bfloat16)
            tensors[name] = tensor.contiguous()
    # One metadata key only: safetensors writes several in a per-process random order, and a pack must be
    # byte-for-byte reproducible. The file's own metadata travels inside it and comes back on unpacking.
    packed = json.dumps({"dtypes": dtypes, "metadata": metadata}, sort_keys=True)
    return save_bytes(tensors, metadata={META_KEY: packed})


def from_bf16_file(path: Path, restore: bool = True) -> None:
    """Undo `to_bf16_bytes` in place: the file's own metadata back and, with `restore`, the recorded tensors in their
    original dtype (values stay bf16-exact); without it they stay bf16, half the bytes (loaders cast them)."""
    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata() or {})
        if META_KEY not in metadata:
            return
        packed = json.loads(metadata.pop(META_KEY))
        dtypes, metadata = packed["dtypes"], {**metadata, **packed["metadata"]}
        tensors = {}
        for name in handle.keys():  # noqa: SIM118
            tensor = handle.get_tensor(name)
            tensors[name] = tensor.to(_BY_NAME[dtypes[name]]) if restore and name in dtypes else tensor
    path.write_bytes(save_bytes(tensors, metadata=metadata or None))


def round_to_bf16(path: Path) -> None:
    """Round a safetensors file's float tensors to bf16 values in place, their dtypes kept: the values a pack carries,
    so that what later stages train with is exactly what ships."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(to_bf16_bytes(path))
        from_bf16_file(tmp)


def pack_dir(
    root: Path,
    out_dir: Path,
    name: str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    part_bytes: int = PART_BYTES,
) -> list[Path]:
    """Pack the chosen files of `root` into out_dir/NAME.tar.NN parts; returns the parts written (old ones removed)."""
    root, out_dir = Path(root), Path(out_dir)
    files = _chosen(root, include, exclude)
    if not files:
        raise CheckpointError(f"nothing to pack in {root}")
    buffer, manifest = io.BytesIO(), {}

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            data = to_bf16_bytes(path) if path.suffix == ".safetensors" else path.read_bytes()
            rel = path.relative_to(root).as_posix()
            manifest[rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            add(tar, rel, data)
        add(tar, MANIFEST, json.dumps({"files": manifest}, sort_keys=True).encode())
    blob = buffer.getvalue()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{name}.tar.*"):
        old.unlink()
    parts = []
    for index, start in enumerate(range(0, len(blob), part_bytes)):
        part = out_dir / f"{name}.tar.{index:02d}"
        with atomic_path(part) as tmp:
            tmp.write_bytes(blob[start : start + part_bytes])
        parts.append(part)
    return parts


def parts_of(folder: Path, name: str) -> list[Path]:
    """The parts NAME.tar.00, .01, ... (.100 past a hundred) in `folder`, in number order ([] when there are none)."""
    parts = [p for p in Path(folder).glob(f"{name}.tar.*") if p.name.rsplit(".", 1)[1].isdigit()]
    return sorted(parts, key=lambda p: int(p.name.rsplit(".", 1)[1]))


def _read_parts(parts: Sequence[Path]) -> dict[str, bytes]:
    """The files packed in `parts` (name: bytes), each checked against the manifest; CheckpointError naming what is
    wrong (a part missing, cut short or damaged) otherwise."""
    if not parts:
        raise CheckpointError("no packed parts to unpack")
    numbers = [int(Path(p).name.rsplit(".", 1)[1]) for p in parts]
    first = Path(parts[0]).name
    if numbers != list(range(len(parts))):
        raise CheckpointError(f"packed parts are incomplete: {[Path(p).name for p in parts]}")
    blob = b"".join(Path(p).read_bytes() for p in parts)
    files = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    raise CheckpointError(f"packed entry {member.name!r} in {first}... is not a file")
                files[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError) as exc:  # a member cut short reads as OSError ("unexpected end of data")
        raise CheckpointError(
            f"packed parts {first}... are incomplete or damaged ({exc}): a part is missing or was not copied whole"
        ) from None
    try:
        manifest = json.loads(files.pop(MANIFEST))["files"]
    except (KeyError, ValueError, TypeError):
        raise CheckpointError(
            f"packed parts {first}... are incomplete (their manifest is missing or damaged: a later part is missing "
            "or one was cut short, or they were packed before packs carried a manifest: pack that stage again)"
        ) from None
    for name, entry in manifest.items():
        data = files.get(name)
        if data is None or len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CheckpointError(
                f"packed parts {first}... are damaged: {name} is missing or differs from its manifest"
            )
    if set(files) != set(manifest):
        raise CheckpointError(
            f"packed parts {first}... hold files their manifest does not name: {sorted(set(files) - set(manifest))}"
        )
    return files


def verify_parts(parts: Sequence[Path]) -> None:
    """CheckpointError unless `parts` are a whole, undamaged pack."""
    _read_parts(parts)


def unpack_parts(parts: Sequence[Path], dest: Path, restore: bool = True) -> list[Path]:
    """Join and extract packed parts into `dest` (created), restoring tensor dtypes (`restore`; else the floats stay
    bf16: plain safetensors files of half the size); returns the files written. Nothing is written from a pack that
    is incomplete or damaged (CheckpointError)."""
    files = _read_parts(parts)
    dest = Path(dest)
    for name in files:
        target = (dest / name).resolve()
        if dest.resolve() not in target.parents:
            raise CheckpointError(f"packed file {name!r} would land outside {dest}")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        target = (dest / name).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if target.suffix == ".safetensors":
            from_bf16_file(target, restore)
        written.append(target)
    return written
