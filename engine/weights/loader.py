"""Loading models from every layout we read: `load_model(source, adapter, device, dtype) -> LoadedModel`.

Sources: our model directory (model_card.json + base/ + adapter/), a transformers MusicGen directory, an audiocraft
directory (state_dict.bin + compression_state_dict.bin), or a hub name already in the local Hugging Face cache.
Adapters: our adapter directory (adapter.json + adapter.safetensors) or the official `finetuned.ckpt` (a path or a
cached hub name); the official adapter given alone as `source` goes on the cached facebook/musicgen-large.
`save_model_dir` writes our model directory from loaded parts (the same layout the training stages export).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import CheckpointError
from engine.eval.verdict import card_verdict
from engine.files import hash_stream, jsonable, read_json_object, short_digest, user_path, write_bytes_atomic
from engine.model.fit import check_state_fits
from engine.weights.adapter_meta import check_instruction_format, check_stems, is_adapter_dir, read_adapter_meta
from engine.weights.names import ADAPTER_DIR, BASE_DIR, CONFIG, MODEL_CARD, OFFICIAL_CKPT, WEIGHTS

if TYPE_CHECKING:
    from engine.model.bundle import LoadedModel
    from engine.model.codec import Codec
    from engine.model.config import FusionConfig
    from engine.model.lm import MusicGenLM
    from engine.model.text import TextEncoder

MODEL_FORMAT, MODEL_VERSION = "imusic-model", 1
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default"


def default_model_dir() -> Path:
    """Where the embedded default model lives (engine/assets/default/)."""
    return DEFAULT_MODEL_DIR


def is_model_dir(path: str | Path) -> bool:
    """True for our model directory format."""
    path = Path(path)
    return (path / MODEL_CARD).is_file()


def model_parts(path: str | Path) -> tuple[Path, Path | None]:
    """(its base model, its adapter or None) of our model folder `path`."""
    path = Path(path)
    adapter = path / ADAPTER_DIR
    return path / BASE_DIR, adapter if adapter.exists() else None


def detect_layout(path: str | Path) -> str:
    """'imusic', 'transformers', 'audiocraft', 'official' (finetuned.ckpt) or 'adapter', from the files present."""
    from engine.weights import adapter_format, audiocraft_layout, transformers_layout

    path = Path(path)
    if path.is_file():
        if path.suffix == ".ckpt":
            return "official"
        if path.name == adapter_format.ADAPTER_WEIGHTS:
            return "adapter"
        raise CheckpointError(f"{path} is a file; give the directory that holds the model (or a finetuned.ckpt)")
    if not path.is_dir():
        raise CheckpointError(f"no model at {path}: the path does not exist")
    if is_model_dir(path):
        return "imusic"
    if adapter_format.is_adapter_dir(path):
        return "adapter"
    if transformers_layout.is_codec_dir(path):
        raise CheckpointError(
            f"{path} is a codec (what `imusic train --stage codec` exports), not a model: train a base on it with "
            "`imusic train --stage base --base` it"
        )
    has_weights = any((path / name).is_file() for name in transformers_layout.WEIGHT_FILES)
    if audiocraft_layout.is_audiocraft_dir(path) and not has_weights:
        return "audiocraft"  # a hub snapshot holds both layouts' files: config.json alone makes no transformers model
    if (path / transformers_layout.CONFIG).is_file():
        return "transformers"
    if audiocraft_layout.is_audiocraft_dir(path):
        return "audiocraft"
    raise CheckpointError(
        f"{path} holds no model we can read: expected {MODEL_CARD} (imusic), config.json (transformers) or "
        f"state_dict.bin + compression_state_dict.bin (audiocraft)"
    )


def resolve_source(source: str | Path | None) -> Path:
    """A local path for `source`: None -> the embedded default; a path as is; a hub name -> its cached snapshot."""
    if source is None:
        path = default_model_dir()
        if not is_model_dir(path):
            raise CheckpointError(
                f"the embedded default model is not installed ({path} has no {MODEL_CARD}); "
                "give a model with --model PATH, or train one (imusic train)"
            )
        return path
    path = user_path(source)
    if path.exists():
        return path
    text = str(source)
    from engine.weights import hub

    if hub.looks_like_hub_name(text):
        return hub.cached_snapshot(text)
    raise CheckpointError(f"no model at {path}: the path does not exist")


WHOLE_HASH_BYTES = 256 << 20  # files up to this size are hashed whole by weights_identity
_EDGE_BYTES = 4 << 20  # a larger one by its size, this much of its start and end,
_SAMPLES, _SAMPLE_BYTES = 256, 64 << 10  # and this many blocks spread evenly between: a safetensors file of one shape
# has the same header, and its tensors sorted by name put the frozen codec first and T5 last, so a fine-tuned decoder
# changed nothing the start and end held (found by a review: two bases, one identity). 16 MiB read in all; a change to
# one layer of 48 (2 % of the file) is missed with odds of 0.98 ** 256, under 1 %.
# A card's fields that say what was measured or where it came from, not how it edits: a re-measurement is no new model
_CARD_RECORDS = ("evaluation", "provenance", "wall_seconds_total", "stages", "data", "description")


def _file_digest(file: Path) -> str:
    import hashlib

    digest = hashlib.sha1()
    size = file.stat().st_size
    with open(file, "rb") as handle:
        if file.name == MODEL_CARD:
            try:
                card = json.loads(handle.read())
                card = {k: v for k, v in card.items() if k not in _CARD_RECORDS} if isinstance(card, dict) else card
                return hashlib.sha1(json.dumps(card, sort_keys=True).encode()).hexdigest()
            except ValueError:
                handle.seek(0)
        if size <= WHOLE_HASH_BYTES:
            hash_stream(digest, handle)
        else:  # a base checkpoint of gigabytes: its size, start, end and samples between (read in a moment)
            digest.update(str(size).encode() + handle.read(_EDGE_BYTES))
            for k in range(1, _SAMPLES + 1):
                handle.seek(k * (size - _EDGE_BYTES - _SAMPLE_BYTES) // (_SAMPLES + 1))
                digest.update(handle.read(_SAMPLE_BYTES))
            handle.seek(size - _EDGE_BYTES)
            digest.update(handle.read(_EDGE_BYTES))
    return digest.hexdigest()


def weights_identity(source: str | Path | None, adapter: str | Path | None = None) -> str | None:
    """What a model would be loaded from, as a short digest, without loading it: every file of the model folder (or
    the file) and of the adapter (its folder, or the file given), by its place and its content (_file_digest: whole up
    to WHOLE_HASH_BYTES, a larger base checkpoint by its size, start, end and blocks spread between; the card without
    its records of evaluation and provenance). Linked folders are followed. Two models of one card name, or one model
    with another adapter, differ; a model copied elsewhere, or measured again, does not. None where the model cannot
    be found (a hub name not in the cache); a file that cannot be read counts as such."""
    import os

    parts: list = []
    try:
        roots = [("model", resolve_source(source))]
    except (CheckpointError, OSError, ValueError):
        return None
    if adapter is not None:
        roots.append(("adapter", user_path(adapter)))
    for label, root in roots:
        if root.is_file():
            files = [(root.name, root)]
        else:
            files, seen = [], set()
            for folder, subfolders, names in os.walk(root, followlinks=True):
                real = os.path.realpath(folder)
                if real in seen:  # a link back up the tree
                    subfolders[:] = []
                    continue
                seen.add(real)
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
                files += [(Path(folder, n).relative_to(root).as_posix(), Path(folder, n)) for n in names]
        for place, file in sorted(files):
            if any(part.startswith(".") for part in Path(place).parts):
                continue  # a writer's temporary, a cache: not part of the model
            try:
                parts.append((label, place, _file_digest(file)))
            except OSError:
                parts.append((label, place, "unreadable"))
    return short_digest(parts)


def add_model_arguments(parser: Any) -> None:
    """--model, --adapter, --device and --dtype as every command that loads a model takes them (what load_model and
    resolve_source accept, said once)."""
    parser.add_argument(
        "--model",
        default=None,
        help="model: a directory (ours, transformers or audiocraft layout), a cached hub name such as "
        "facebook/musicgen-small, or the official finetuned.ckpt on its cached base (default: the embedded model)",
    )
    parser.add_argument(
        "--adapter",
        default=None,
        help="adapter over the model: a directory, a finetuned.ckpt or a cached hub name (default: the model's own)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the fastest available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: the device's fast one)")


def new_model_card(name: str, **fields: Any) -> dict[str, Any]:
    """A model card: format, version and name first, then `fields` (description, stems, provenance, ...)."""
    return {"format": MODEL_FORMAT, "version": MODEL_VERSION, "name": name, **fields}


def write_model_card(folder: str | Path, card: dict[str, Any]) -> Path:
    """`card` as folder/model_card.json, atomically (indented JSON, JSON-safe values)."""
    path = Path(folder) / MODEL_CARD
    write_bytes_atomic(path, (json.dumps(jsonable(card), indent=2, default=str) + "\n").encode("utf-8"))
    return path


MASK_DEPTH = "mask_depth"  # model_card.json: {operation: depth} of the mask mode (ModelCard.mask_depth)


def read_model_card(path: str | Path) -> dict[str, Any]:
    """model_card.json of our model directory, its fields that loading reads checked here, once for every reader (the
    loader, peek_card, the installs that copy a card on): `stems` a list of names, `mask_depth` (card_mask_depth)."""
    where = Path(path) / MODEL_CARD
    card = read_json_object(where, f"model directory {path} is missing {MODEL_CARD}", CheckpointError)
    version = card.get("version", MODEL_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{where} has a format version that is no whole number: {version!r}")
    if version > MODEL_VERSION:  # a later imusic's card: its fields may mean what this one cannot read
        raise CheckpointError(f"{where} has format version {version}; this imusic reads up to {MODEL_VERSION}")
    if card.get("stems") is not None:
        check_stems(card["stems"], where)
    check_instruction_format(card, where)
    card_mask_depth(card, where)
    return card


# What a card says of its folder's own adapter (its evaluation's verdict, the mask depth chosen for its word): read only
# when that adapter is the one loaded (own_adapter_view).
OWN_ADAPTER_FIELDS = ("evaluation", MASK_DEPTH)


def own_adapter_view(card: dict[str, Any], own_adapter: bool) -> dict[str, Any]:
    """The card as it speaks of the adapter loaded: whole for the folder's own adapter, without OWN_ADAPTER_FIELDS for
    another one (the card judged its own adapter, not that one). One rule for load_model and peek_card."""
    return dict(card) if own_adapter else {k: v for k, v in card.items() if k not in OWN_ADAPTER_FIELDS}


def card_mask_depth(card_data: dict[str, Any], where: str | Path) -> dict[str, float]:
    """A card's `mask_depth`, checked: engine.mask.DEPTH_OPS only, each a number from 0 to 1; {} where it has none."""
    import math

    from engine.mask import DEPTH_OPS

    depth = card_data.get(MASK_DEPTH) or {}
    if not isinstance(depth, dict):
        raise CheckpointError(f"{where}: {MASK_DEPTH} must be an object of operation: depth, got {depth!r}")
    checked = {}
    for op, value in depth.items():
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
        if op not in DEPTH_OPS or not 0.0 <= number <= 1.0:
            raise CheckpointError(
                f"{where}: {MASK_DEPTH}.{op} must be a number from 0 to 1 for {' or '.join(DEPTH_OPS)}, got {value!r}"
            )
        checked[op] = float(number)
    return checked


def peek_card(source: str | Path | None, adapter: str | Path | None = None) -> dict[str, Any] | None:
    """What a model understands (stems, instruction format, name), read without loading any weights and by
    load_model's rule: an adapter's stems, template and verbs (the adapter given, else our model directory's own
    adapter/) replace the card's; the card's name, and its evaluation only for the folder's own adapter. None where
    only loading can tell (transformers, audiocraft, hub names, the official checkpoint, a folder without an
    adapter.json) or nothing can be read. An adapter.json that loading would refuse is refused here, in the same words
    (adapter_meta.read_adapter_meta: CheckpointError), before anything is checked against it."""
    card, path = None, None
    try:
        path = resolve_source(source)
        card = read_model_card(path) if is_model_dir(path) else None
    except (CheckpointError, OSError, ValueError):
        pass
    if adapter is not None:
        adapter_dir: Path | None = user_path(adapter)
    else:
        adapter_dir = model_parts(path)[1] if card is not None and path is not None else None
    meta = None
    if adapter_dir is not None:
        if not is_adapter_dir(adapter_dir):
            return None  # an official checkpoint, a bare weights file, a hub name: loading decides its vocabulary
        meta = read_adapter_meta(adapter_dir)
    if card is None and meta is None:
        return None
    peeked = own_adapter_view(card or {}, adapter is None)
    if meta is not None:
        # as loading: the adapter's vocabulary, all of it (its format requires stems), the official format where it
        # names none
        for key in ("stems", "instruction_template", "instruction_verbs"):
            peeked.pop(key, None)
            if meta.get(key):
                peeked[key] = meta[key]
    return peeked


def load_model(
    source: str | Path | None = None,
    adapter: str | Path | None = None,
    device: Any = None,
    dtype: Any = None,
    *,
    fusion: FusionConfig | None = None,
) -> LoadedModel:
    """Load a model ready to edit (LoadedModel). See the module docstring for what `source` and `adapter` accept.

    `fusion` (a FusionConfig, for training): when no adapter is loaded, attach fresh adapters of this shape,
    initialised as the official code does (zero gates and LoRA B, so the model still behaves as its base)."""
    from engine.device import pick
    from engine.model.bundle import LoadedModel, ModelCard

    dev, dt = pick(device, dtype)
    path = resolve_source(source)
    if path.is_dir() and (path / OFFICIAL_CKPT).is_file() and not (path / CONFIG).is_file():
        path = path / OFFICIAL_CKPT  # the official hub repository holds only the adapter checkpoint
    layout = detect_layout(path)
    if layout == "official" and adapter is None:
        # the official adapter alone: put it on the base it was trained on, from the local cache
        from engine.weights.official import OFFICIAL_BASE

        adapter, path = path, resolve_source(OFFICIAL_BASE)
        layout = detect_layout(path)
    if layout in ("official", "adapter"):
        raise CheckpointError(f"{path} is an adapter, not a model: pass it as the adapter and give a base model")

    card_data: dict[str, Any] = {}
    adapter_path = _resolve_adapter(adapter) if adapter is not None else None
    base = path
    if layout == "imusic":
        card_data = read_model_card(path)
        base, own_adapter = model_parts(path)
        if not base.is_dir():
            raise CheckpointError(f"model directory {path} is missing {BASE_DIR}/")
        adapter_path = adapter_path or own_adapter
        layout = detect_layout(base)

    adapter_state, adapter_info = read_adapter(adapter_path) if adapter_path is not None else (None, None)
    if adapter_info and fusion is not None and adapter_info["fusion"] != fusion:
        raise CheckpointError(f"the adapter {adapter_path} has its own fusion config; do not pass another one")
    fusion = adapter_info["fusion"] if adapter_info else fusion

    if layout == "transformers":
        from engine.weights.transformers_layout import load_parts
    elif layout == "audiocraft":
        from engine.weights.audiocraft_layout import load_parts
    else:
        raise CheckpointError(f"{base} is not a base model (found a {layout} layout)")
    if dtype is None:
        dt = _automatic_dtype(dev, base, layout)
    lm, codec, text = load_parts(base, fusion=fusion, device=dev, dtype=dt)

    if adapter_state is not None:
        _apply_adapter(lm, adapter_state, adapter_info, adapter_path)
    _refuse_non_finite(lm, codec, text, base, adapter_path)

    stems = adapter_info["stems"] if adapter_info else card_data.get("stems")
    training = adapter_info.get("training", {}) if adapter_info else {}
    card = ModelCard(
        name=str(card_data.get("name") or _display_name(path)),
        sample_rate=codec.sample_rate,
        frame_rate=codec.frame_rate,
        num_codebooks=lm.cfg.num_codebooks,
        card=lm.cfg.card,
        has_adapter=adapter_state is not None,
        # the card judges the folder's own adapter: with another adapter given, its verdict says nothing
        beats_identity=card_verdict(own_adapter_view(card_data, adapter is None)),
        cond_frames=fusion.cond_frames if fusion is not None else ModelCard.cond_frames,
        trained_window_s=training.get("window_s"),
        input_rms_db=training.get("input_rms_db"),
        mask_depth=card_mask_depth(own_adapter_view(card_data, adapter is None), path),
        provenance={
            **dict(card_data.get("provenance") or {}),
            "path": str(path),
            "layout": "imusic" if card_data else layout,
            "adapter": str(adapter_path) if adapter_path else None,
            **({"adapter_provenance": adapter_info.get("provenance")} if adapter_info else {}),
        },
        **({"stems": tuple(stems)} if stems else {}),
        **({"template": adapter_info["template"]} if adapter_info and adapter_info.get("template") else {}),
        **({"verbs": dict(adapter_info["verbs"])} if adapter_info and adapter_info.get("verbs") else {}),
    )
    return LoadedModel(lm=lm, codec=codec, text=text, card=card, device=dev, dtype=dt)


def _refuse_non_finite(lm, codec, text, base: Path, adapter: Path | None) -> None:
    """CheckpointError naming the first weight that holds NaN or an infinity: a damaged file (flipped bytes, a run
    that diverged) loaded, every edit ran, and each came back as the same few finite samples, said as a success."""
    import itertools

    import torch

    for module in (lm, codec.model, text.model):
        for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
            if tensor.is_floating_point() and not tensor.is_meta and not bool(torch.isfinite(tensor).all()):
                where = adapter if adapter is not None and module is lm and lm.is_adapter_name(name) else base
                raise CheckpointError(
                    f"{where} holds NaN or infinite weights ({name}): the file is damaged or its training diverged; "
                    "copy or train it again"
                )


def _automatic_dtype(device, base: Path, layout: str):
    """The device's fast dtype for this decoder's size (a CPU keeps small decoders in fp32: engine.device)."""
    from engine.device import decode_weight_count, default_dtype

    count = None
    if layout == "transformers":  # the size is in config.json; audiocraft models (all >= 300M) count as big
        from engine.weights.transformers_layout import lm_config, read_config

        count = decode_weight_count(lm_config(read_config(base)))
    return default_dtype(device, count)


def _resolve_adapter(adapter: str | Path) -> Path:
    """A local path for an adapter: as given, or a hub name's cached snapshot (its finetuned.ckpt if it has one)."""
    path = user_path(adapter)
    if path.exists():
        return path
    from engine.weights import hub

    if not hub.looks_like_hub_name(str(adapter)):
        raise CheckpointError(f"no adapter at {path}: the path does not exist")
    snapshot = hub.cached_snapshot(str(adapter))
    return snapshot / OFFICIAL_CKPT if (snapshot / OFFICIAL_CKPT).is_file() else snapshot


def _display_name(path: Path) -> str:
    """A model's name from its path: the hub id for a Hugging Face cache snapshot, else the directory name."""
    parts = path.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return path.name


def read_adapter(path: Path) -> tuple[dict, dict]:
    """(state in our naming, info with fusion / stems / template / verbs / provenance) of an adapter path."""
    from engine.weights import adapter_format

    layout = detect_layout(path)
    if layout == "official":
        from engine.weights.official import read_official_adapter

        return read_official_adapter(path)
    if layout == "adapter":
        directory = path.parent if path.is_file() else path
        state, meta = adapter_format.load_adapter(directory)
        info = {
            "fusion": adapter_format.fusion_config(meta),
            "stems": meta.get("stems"),
            "template": meta.get("instruction_template"),
            "verbs": meta.get("instruction_verbs"),
            "provenance": meta.get("provenance", {}),
            "training": meta["training"],
            "base_hint": adapter_format.base_hint(meta),
            "base": meta.get("base") or {},
        }
        return state, info
    raise CheckpointError(f"{path} is not an adapter: expected adapter.json + adapter.safetensors, or a finetuned.ckpt")


def _apply_adapter(lm, state: dict, info: dict, path: Path | None) -> None:
    """Load adapter tensors; base tensors an adapter carries (the official cross-attention q/k/v) replace the base's."""
    import torch

    adapter_state = {n: t for n, t in state.items() if lm.is_adapter_name(n)}
    base_state = {n: t for n, t in state.items() if not lm.is_adapter_name(n)}
    try:
        lm.load_adapter_state_dict(adapter_state)
    except CheckpointError as exc:
        hint = f"; it was trained on {info['base_hint']}" if info.get("base_hint") else ""
        cfg = lm.cfg
        sizes = f"{cfg.num_layers} layers x {cfg.dim}"
        trained_on = info.get("base") or {}
        if (trained_on.get("num_layers"), trained_on.get("dim")) == (cfg.num_layers, cfg.dim):
            # trained on a base of these sizes: its tensors disagree with its own adapter.json, not with the base
            raise CheckpointError(
                f"adapter {path} does not match its own adapter.json (its fusion settings give other shapes than its "
                f"tensors have): {exc}"
            ) from None
        raise CheckpointError(f"adapter {path} does not fit this base model ({sizes}){hint}: {exc}") from None
    if base_state:
        own = lm.state_dict()
        check_state_fits(base_state, own, f"adapter {path}", may_miss=lambda name: True)  # it replaces some only
        with torch.no_grad():
            for name, tensor in base_state.items():
                own[name].copy_(tensor)


def save_model_dir(
    path: str | Path,
    lm: MusicGenLM,
    codec: Codec,
    text: TextEncoder,
    *,
    name: str,
    stems: Iterable[str] | None = None,
    template: str | None = None,
    verbs: dict[str, str] | None = None,
    provenance: dict[str, Any] | None = None,
    description: str = "",
    training: dict[str, Any] | None = None,
) -> Path:
    """Write our model directory (model_card.json + base/ in transformers layout + adapter/ when `lm` has adapters)
    from loaded parts, for a model built or changed in Python. The training stages export theirs from the
    transformers template they trained on (engine/train/base.py, adapters.py); both load with load_model.
    `training`: what the adapter was trained on (adapter_meta.TRAINING_FACTS: its clip length `window_s`, its input
    level `input_rms_db`), which sets the Editor's window and input level; a loaded model's are
    `model.card.training_facts()`. Without it the adapter records none, and the Editor falls back to its defaults."""
    import torch
    from safetensors.torch import save_file
    from transformers import MusicgenConfig, MusicgenDecoderConfig

    from engine.instructions import OFFICIAL_STEMS, OFFICIAL_TEMPLATE, OFFICIAL_VERBS
    from engine.model.config import check_text_width
    from engine.weights.adapter_format import base_reference, save_adapter, training_facts
    from engine.weights.convert import lm_config_to_transformers, lm_state_to_transformers
    from engine.weights.transformers_layout import quiet_transformers

    facts = training_facts({"training": training or {}}, "save_model_dir's training")  # before anything is written
    check_text_width(lm.cfg.dim, lm.cfg.text_dim)
    path = Path(path)
    base = path / BASE_DIR
    base.mkdir(parents=True, exist_ok=True)
    base_state = {n: t for n, t in lm.state_dict().items() if not lm.is_adapter_name(n)}
    tensors: dict[str, torch.Tensor] = dict(lm_state_to_transformers(base_state, layout="conditional"))
    tensors.update({f"text_encoder.{n}": t for n, t in text.model.state_dict().items()})
    tensors.update({f"audio_encoder.{n}": t for n, t in codec.model.state_dict().items()})
    # safetensors refuses tensors sharing memory (T5's tied embeddings): store plain contiguous copies
    tensors = {n: t.detach().to("cpu").contiguous().clone() for n, t in tensors.items()}
    with quiet_transformers():
        decoder = MusicgenDecoderConfig(**lm_config_to_transformers(lm.cfg))
        config = MusicgenConfig(text_encoder=text.model.config, audio_encoder=codec.model.config, decoder=decoder)
        config.architectures = ["MusicgenForConditionalGeneration"]
        config.save_pretrained(base)
        text.tokenizer.save_pretrained(base)
    save_file(tensors, str(base / WEIGHTS), metadata={"format": "pt"})
    if lm.fusion_cfg is not None:
        save_adapter(
            path / ADAPTER_DIR,
            lm.adapter_state_dict(),
            lm.fusion_cfg,
            stems=stems or OFFICIAL_STEMS,
            template=template or OFFICIAL_TEMPLATE,
            verbs=verbs or OFFICIAL_VERBS,
            base=base_reference(lm.cfg),
            provenance=provenance,
            training=facts,
        )
    card = new_model_card(name, description=description, provenance=dict(provenance or {}))
    if stems and lm.fusion_cfg is None:
        card["stems"] = list(stems)
    write_model_card(path, card)
    return path
