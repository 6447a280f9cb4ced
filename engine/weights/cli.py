"""`imusic weights download|info|convert`: fetch checkpoints, say what a checkpoint holds, convert adapters.

`info` reads only file headers where the format allows (safetensors), so it answers in a second even for GBs.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError
from engine.files import link_tree, staged_dir, user_path
from engine.model.config import is_adapter_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="weights_command", metavar="ACTION", parser_class=type(parser))
    sub.required = True

    down = sub.add_parser("download", help="download a checkpoint into the Hugging Face cache")
    down.add_argument(
        "name", help="hub id or alias: musicgen-small|medium|large, instruct-musicgen, t5-base, owner/name"
    )
    down.add_argument("--cache-dir", default=None, help="cache directory (default: the Hugging Face standard cache)")
    down.add_argument("--endpoint", default=None, help="hub endpoint, e.g. a mirror (default: huggingface.co)")

    info = sub.add_parser("info", help="what a checkpoint holds: layout, files, parameter counts")
    info.add_argument("path", help="model directory, transformers/audiocraft directory, finetuned.ckpt or adapter")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")

    conv = sub.add_parser(
        "convert",
        help="official finetuned.ckpt -> our adapter directory (small), or a whole model directory with --base",
    )
    conv.add_argument("adapter", help="finetuned.ckpt (or an adapter directory)")
    conv.add_argument("-o", "--output", required=True, help="directory to write")
    conv.add_argument(
        "--base",
        default=None,
        help="base model (transformers layout dir or cached hub name): write a "
        "complete model directory (model_card.json + base/ + adapter/) that load_model reads alone",
    )
    conv.add_argument("--name", default=None, help="model name written in model_card.json")


def run(args: argparse.Namespace) -> int:
    if args.weights_command == "download":
        from engine.weights import hub

        path = hub.download(args.name, cache_dir=args.cache_dir, endpoint=args.endpoint)
        print(path)
        return 0
    if args.weights_command == "info":
        report = describe(args.path)
        print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
        return 0
    if args.weights_command == "convert":
        out = convert(args.adapter, args.output, base=args.base, name=args.name)
        print(out)
        return 0
    raise CheckpointError(f"unknown weights action {args.weights_command!r}")


# ---- info -------------------------------------------------------------------------------------------------------


def _file_sizes(path: Path) -> dict[str, int]:
    if path.is_file():
        return {path.name: path.stat().st_size}
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


def _safetensors_shapes(files: Iterable[Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) from safetensors headers, without reading any tensor data."""
    from safetensors import SafetensorError, safe_open

    shapes = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    sl = handle.get_slice(name)
                    shapes[name] = (tuple(sl.get_shape()), str(sl.get_dtype()))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from None
    return shapes


def _torch_shapes(file: Path, key: str | None = None) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of a torch pickle (memory-mapped, weights only)."""
    import torch

    try:
        data = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the producer's bad input
        raise CheckpointError(f"{file} is not a readable PyTorch weights file: {str(exc).splitlines()[0]}") from None
    if key is not None:
        data = data.get(key, data) if isinstance(data, dict) else data
    return {n: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in data.items() if hasattr(t, "shape")}


def _count(shapes: Mapping[str, tuple[tuple[int, ...], str]], prefixes: tuple[str, ...] = ("",)) -> int:
    total = 0
    for name, (shape, _) in shapes.items():
        if name.startswith(prefixes):
            size = 1
            for dim in shape:
                size *= dim
            total += size
    return total


def _dtypes(shapes: Mapping[str, tuple[tuple[int, ...], str]]) -> list[str]:
    return sorted({dtype for _, dtype in shapes.values()})


def _transformers_counts(path: Path) -> dict[str, Any]:
    from engine.weights import transformers_layout as tl

    config = tl.read_config(path)
    safetensors = tl.safetensors_files(path)
    if safetensors:
        shapes = _safetensors_shapes(safetensors)
    else:
        shapes = {name: shape for file in tl.bin_files(path) for name, shape in _torch_shapes(file).items()}
    dec = config["decoder"]
    return {
        "decoder": _count(shapes, ("decoder.", "enc_to_dec_proj.")),
        "text_encoder": _count(shapes, ("text_encoder.",)),
        "codec": _count(shapes, ("audio_encoder.",)),
        "dtypes": _dtypes(shapes),
        "shape": f"{dec.get('num_hidden_layers')} layers x {dec.get('hidden_size')}, "
        f"{dec.get('num_codebooks', 4)} codebooks of {dec.get('vocab_size')}",
        "sample_rate": config["audio_encoder"].get("sampling_rate"),
    }


def describe(path: str | Path) -> dict[str, Any]:
    """What a checkpoint holds: layout, files with sizes, parameter counts (adapter and its % of the base)."""
    from engine.weights import adapter_format, detect_layout, read_model_card
    from engine.weights.loader import model_parts

    path = user_path(path)
    if not path.exists():
        from engine.weights import resolve_source

        path = resolve_source(str(path))
    layout = detect_layout(path)
    report: dict[str, Any] = {"path": str(path), "layout": layout, "files": _file_sizes(path)}
    counts: dict[str, Any] = {}
    adapter_dir: Path | None = None
    if layout == "imusic":
        card = read_model_card(path)
        report["name"] = card.get("name")
        base_dir, adapter_dir = model_parts(path)
        counts.update(_transformers_counts(base_dir))
    elif layout == "transformers":
        counts.update(_transformers_counts(path))
    elif layout == "audiocraft":
        from engine.weights.audiocraft_layout import CODEC_FILE, LM_FILE, pretrained_codec

        if (path / LM_FILE).is_file():
            shapes = _torch_shapes(path / LM_FILE, "best_state")
            counts["decoder"] = (
                _count(shapes)
                - _count(shapes, ("condition_provider.",))
                + _count(shapes, ("condition_provider.conditioners.description.output_proj.",))
            )
            counts["dtypes"] = _dtypes(shapes)
        if (path / CODEC_FILE).is_file():
            named = pretrained_codec(path / CODEC_FILE)  # a fine-tune's export names its codec instead of holding it
            codec = (
                f"{named} (from the Hugging Face cache)"
                if named
                else _count(_torch_shapes(path / CODEC_FILE, "best_state"))
            )
            counts["codec"] = codec
        counts["text_encoder"] = "T5 (t5-base, from the Hugging Face cache)"
    elif layout == "adapter":
        adapter_dir = path.parent if path.is_file() else path
    elif layout == "official":
        from engine.weights.official import SUBSTITUTED, map_official_state, official_state_dict

        SUBSTITUTED.clear()
        state = official_state_dict(path)
        mapped, facts = map_official_state(state)
        adapter = sum(t.numel() for n, t in mapped.items() if is_adapter_name(n))
        cross = sum(t.numel() for n, t in mapped.items() if not is_adapter_name(n))
        # the frozen MusicGen inside, counted once: not the official code's extra q/k/v_proj copies or the LoRA
        extra = re.compile(r"\.(self_attn|cross_attention)\.[qkv]_proj\.|\.lora_")
        base = sum(t.numel() for n, t in state.items() if n.startswith("model.peft_model.lm.") and not extra.search(n))
        counts.update({"adapter": adapter, "cross_attention_qkv": cross, "decoder_inside_checkpoint": base})
        counts["adapter_percent_of_base"] = round(100.0 * adapter / base, 2) if base else None
        report["fusion"] = facts
        report["stand_ins"] = sorted(SUBSTITUTED)
    if adapter_dir is not None:
        meta = adapter_format.read_adapter_meta(adapter_dir)
        shapes = _safetensors_shapes([adapter_dir / adapter_format.ADAPTER_WEIGHTS])
        counts["adapter"] = sum(_count({n: s}) for n, s in shapes.items() if is_adapter_name(n))
        counts["cross_attention_qkv"] = _count(shapes) - counts["adapter"]
        report["fusion"] = meta.get("fusion")
        report["stems"] = meta.get("stems")
        report["instruction_template"] = meta.get("instruction_template")
        if isinstance(counts.get("decoder"), int) and counts["decoder"]:
            counts["adapter_percent_of_base"] = round(100.0 * counts["adapter"] / counts["decoder"], 2)
    report["parameters"] = counts
    return report


def _human(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _millions(count: Any) -> str:
    return f"{count / 1e6:.2f}M ({count:,})" if isinstance(count, int) else str(count)


def format_report(report: Mapping[str, Any]) -> str:
    """The `imusic weights info` text."""
    lines = [f"{report['path']}", f"  layout: {report['layout']}"]
    if report.get("name"):
        lines.append(f"  name: {report['name']}")
    files = report.get("files", {})
    lines.append(f"  files ({len(files)}, {_human(sum(files.values()))}):")
    lines += [f"    {name}  {_human(size)}" for name, size in files.items()]
    params = dict(report.get("parameters", {}))
    if params:
        lines.append("  parameters:")
        for key in ("decoder", "text_encoder", "codec", "decoder_inside_checkpoint", "adapter", "cross_attention_qkv"):
            if key in params and not (key == "cross_attention_qkv" and not params[key]):
                lines.append(f"    {key.replace('_', ' ')}: {_millions(params[key])}")
        if params.get("adapter_percent_of_base") is not None:
            lines.append(f"    adapter / base decoder: {params['adapter_percent_of_base']}%")
        if params.get("shape"):
            lines.append(f"    shape: {params['shape']}")
        if params.get("dtypes"):
            lines.append(f"    dtypes: {', '.join(params['dtypes'])}")
    if report.get("fusion"):
        lines.append(f"  fusion: {json.dumps(report['fusion'], default=str)}")
    if report.get("stems"):
        lines.append(f"  stems: {', '.join(report['stems'])}")
    if report.get("stand_ins"):
        lines.append(f"  classes replaced by inert stand-ins: {', '.join(report['stand_ins'])}")
    return "\n".join(lines)


# ---- convert ----------------------------------------------------------------------------------------------------


def convert(
    adapter: str | Path, output: str | Path, *, base: str | Path | None = None, name: str | None = None
) -> Path:
    """Write our adapter directory from `adapter` (finetuned.ckpt or adapter dir); with `base`, a whole model dir."""
    from engine.weights import read_adapter, resolve_source
    from engine.weights.adapter_format import save_adapter
    from engine.weights.names import ADAPTER_DIR, BASE_DIR

    adapter = user_path(adapter)
    if not adapter.exists():
        raise CheckpointError(f"no adapter at {adapter}: the path does not exist")
    output = user_path(output)
    if output.exists() and not output.is_dir():
        raise CheckpointError(f"{output} is a file; give a new directory for the converted adapter")
    if output.exists() and any(output.iterdir()):
        raise CheckpointError(f"{output} exists and is not empty; choose a new directory")
    state, info = read_adapter(adapter)
    base_path = None
    if base is not None:  # checked before anything is written
        from engine.weights import transformers_layout as tl

        base_path = resolve_source(base)
        tl.read_config(base_path)
        tl.weight_files(base_path)
    with staged_dir(output) as staged:  # a failure leaves no half-written folder behind
        save_adapter(
            staged / ADAPTER_DIR if base_path is not None else staged,
            state,
            info["fusion"],
            stems=info["stems"],
            template=info["template"],
            verbs=info["verbs"],
            base=info.get("base"),
            provenance={**dict(info.get("provenance") or {}), "converted_from": str(adapter)},
            training=info.get("training"),
        )
        if base_path is not None:
            link_tree(base_path, staged / BASE_DIR)
            from engine.weights.loader import new_model_card, write_model_card

            card = new_model_card(
                name or f"instruct-{base_path.name}", provenance={"base": str(base), "adapter": str(adapter)}
            )
            write_model_card(staged, card)
    return output
