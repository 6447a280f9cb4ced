"""The transformers layout (facebook/musicgen-small|medium|large): config.json + model.safetensors (or shards, or
pytorch_model.bin) holding the T5 text encoder, the EnCodec codec and the decoder, plus the T5 tokenizer files.

transformers reads the files (it knows their legacy key names, e.g. EnCodec's weight_g/weight_v, and memory-maps
safetensors); we keep its T5 and EnCodec modules as they are and move the decoder's tensors, renamed, into our
MusicGenLM without copying them.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.errors import CheckpointError
from engine.files import read_json_object, user_path
from engine.model.config import frame_rate as codec_frame_rate
from engine.model.fit import refuse_misfit
from engine.weights.names import CONFIG, WEIGHTS, WEIGHTS_INDEX

if TYPE_CHECKING:
    from transformers import MusicgenForConditionalGeneration, PreTrainedTokenizerBase

    from engine.model.codec import Codec
    from engine.model.config import FusionConfig, LMConfig
    from engine.model.lm import MusicGenLM
    from engine.model.text import TextEncoder

WEIGHT_FILES = (
    WEIGHTS,
    WEIGHTS_INDEX,
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' info/warning logs and progress bars (load reports, pad-token notes) inside the block."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def is_codec_dir(path: str | Path) -> bool:
    """A bare EnCodec folder (what `imusic train --stage codec` exports): config.json of model_type "encodec"."""
    try:
        return json.loads((Path(path) / CONFIG).read_text()).get("model_type") == "encodec"
    except (OSError, ValueError, AttributeError):
        return False


def load_codec_dir(path: str | Path) -> Any:
    """The transformers EncodecModel of a codec folder, its weights checked to be there first: any other folder (a
    MusicGen model's holds a config.json too) would load as a codec of random weights, silently."""
    path = user_path(path)
    if not is_codec_dir(path):
        raise CheckpointError(
            f"{path} is not a codec folder: it needs a {CONFIG} of model_type 'encodec' (what "
            "`imusic train --stage codec` exports)"
        )
    if not (path / WEIGHTS).is_file():
        raise CheckpointError(f"the codec folder {path} has no {WEIGHTS}")
    from transformers import EncodecModel

    with quiet_transformers():
        return EncodecModel.from_pretrained(str(path), local_files_only=True)


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of a transformers MusicGen directory, checked for the parts we need."""
    path = Path(path)
    config_path = path / CONFIG
    config = read_json_object(config_path, f"model directory {path} is missing {CONFIG}", CheckpointError)
    model_type = config.get("model_type")
    if model_type == "musicgen_melody":
        from engine.weights.convert import MELODY_UNSUPPORTED

        raise CheckpointError(MELODY_UNSUPPORTED)
    if model_type != "musicgen":
        raise CheckpointError(f"{config_path} describes a {model_type!r} model, not MusicGen (model_type 'musicgen')")
    for part in ("text_encoder", "audio_encoder", "decoder"):
        if not isinstance(config.get(part), dict):
            raise CheckpointError(f"{config_path} has no {part!r} section")
    return config


def weight_files(path: str | Path) -> list[Path]:
    """The weight files present in a transformers directory (CheckpointError naming what is expected if none)."""
    path = Path(path)
    found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not found:
        raise CheckpointError(f"model directory {path} is missing its weights: expected {' or '.join(WEIGHT_FILES)}")
    for index in (p for p in found if p.name.endswith(".index.json")):
        shards = set(_weight_map(index).values())
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise CheckpointError(f"model directory {path} is missing the weight shard {missing[0]}")
    return found


def _weight_map(index: Path) -> dict[str, str]:
    """Tensor name -> shard file, from a shard index (CheckpointError if it is not one)."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise ValueError("its weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index} is not a valid shard index: {exc}") from None
    return {str(name): str(shard) for name, shard in weight_map.items()}


def frame_rate(path: str | Path) -> float:
    """Codec frames per second of a transformers MusicGen folder (its audio_encoder config: sample rate / hop)."""
    return encodec_frame_rate(read_config(path)["audio_encoder"], f"{Path(path) / CONFIG}'s audio_encoder")


def encodec_frame_rate(codec: dict[str, Any], what: str) -> float:
    """Frames per second of a transformers EncodecConfig as a dict (sample rate / hop); CheckpointError naming `what`
    when it is not one."""
    try:
        return codec_frame_rate(int(codec["sampling_rate"]), [int(r) for r in codec["upsampling_ratios"]])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{what} is not an EnCodec config") from None


def safetensors_files(path: str | Path, prefix: str = "") -> list[Path]:
    """The .safetensors files holding a transformers directory's weights (those under `prefix`): WEIGHTS, or the
    shards its index names ([] when it holds only a pytorch_model.bin)."""
    path = Path(path)
    names = {f.name for f in weight_files(path)}  # checks the index and that every shard is there
    if WEIGHTS_INDEX in names:
        weight_map = _weight_map(path / WEIGHTS_INDEX)
        return sorted({path / shard for name, shard in weight_map.items() if name.startswith(prefix)})
    return [path / WEIGHTS] if WEIGHTS in names else []


def bin_files(path: str | Path) -> list[Path]:
    """The torch pickles holding a transformers directory's weights when it has no .safetensors: pytorch_model.bin,
    or the shards pytorch_model.bin.index.json names."""
    path = Path(path)
    names = {f.name for f in weight_files(path)}
    if "pytorch_model.bin.index.json" in names:
        return sorted({path / shard for shard in _weight_map(path / "pytorch_model.bin.index.json").values()})
    return [path / "pytorch_model.bin"] if "pytorch_model.bin" in names else []


def lm_config(config: dict[str, Any]) -> LMConfig:
    """Our LMConfig from a transformers MusicgenConfig dict."""
    from engine.errors import ConfigError
    from engine.weights.convert import lm_config_from_transformers

    try:
        return lm_config_from_transformers(config["decoder"], int(config["text_encoder"].get("d_model", 768)))
    except ConfigError as exc:
        raise CheckpointError(f"unsupported MusicGen checkpoint: {exc}") from None


def _stored_names(path: Path, files: list[Path]) -> set[str]:
    """The tensor names the weight files hold (safetensors only: their headers; a shard index names its tensors)."""
    from safetensors import safe_open

    names: set[str] = set()
    for file in files:
        if file.name.endswith(".index.json"):
            names.update(_weight_map(file))
        elif file.suffix == ".safetensors":
            with safe_open(str(file), "pt") as handle:
                names.update(handle.keys())
    return names


def _check_loading_info(path: Path, info: dict[str, Any], model: Any, files: list[Path]) -> None:
    # Decoder layers past the config's count mean the files hold more layers than config.json says: transformers drops
    # them without a word (and reports none). Other names are left to transformers, which renames older ones itself
    # (an EnCodec's weight_g / weight_v), so only this pattern is checked here.
    layers = int(model.config.decoder.num_hidden_layers)
    found = (re.match(r"decoder\.model\.decoder\.layers\.(\d+)\.", n) for n in _stored_names(path, files))
    extra_layers = sorted({m.string for m in found if m and int(m[1]) >= layers})
    refuse_misfit(
        f"checkpoint {path}",
        "its config.json",
        missing=info.get("missing_keys") or (),
        wrong_shapes=info.get("mismatched_keys") or (),
        unknown=extra_layers,
    )


def load_hf_musicgen(path: str | Path, dtype: torch.dtype = torch.float32) -> MusicgenForConditionalGeneration:
    """transformers MusicgenForConditionalGeneration from a directory, with missing/mismatched weights refused."""
    import pickle

    from safetensors import SafetensorError
    from transformers import MusicgenForConditionalGeneration

    path = Path(path)
    read_config(path)
    files = weight_files(path)
    try:
        with quiet_transformers():
            model, info = MusicgenForConditionalGeneration.from_pretrained(
                path, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True, local_files_only=True
            )
    except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError, EOFError) as exc:
        # a corrupt or truncated weight file (safetensors header, torch pickle) is the producer's bad input
        lines = str(exc).splitlines() or [type(exc).__name__]
        raise CheckpointError(f"cannot read the checkpoint in {path}: {lines[0]}") from None
    _check_loading_info(path, info, model, files)
    return model.eval()


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The text tokenizer saved beside the weights (T5's spiece.model / tokenizer.json, or our word-level one)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(
            f"model directory {path} is missing its tokenizer: expected {' or '.join(TOKENIZER_FILES)}"
        )
    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file's error is any of transformers' and tokenizers' own
        # (valid JSON of another shape: KeyError 'added_tokens', a traceback in every command that loads a model)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot read the tokenizer in {path}: {reason}") from None


def decoder_state(hf_model: MusicgenForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The decoder's tensors in transformers naming (decoder.* and enc_to_dec_proj.*), shared, not copied."""
    state = {}
    for name, tensor in hf_model.state_dict().items():
        if name.startswith(("decoder.", "enc_to_dec_proj.")):
            state[name] = tensor
    return state


def load_parts(
    path: str | Path,
    *,
    fusion: FusionConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[MusicGenLM, Codec, TextEncoder]:
    """Read a transformers directory into (lm, codec, text): our decoder, Codec, TextEncoder, all on `device`."""
    from engine.model.bundle import build_lm
    from engine.model.codec import Codec
    from engine.model.text import TextEncoder
    from engine.weights.convert import lm_state_from_transformers

    path = Path(path)
    config = read_config(path)
    tokenizer = load_tokenizer(path)
    hf_model = load_hf_musicgen(path, dtype=dtype)
    cfg = lm_config(config)
    lm = build_lm(cfg, fusion, lm_state_from_transformers(decoder_state(hf_model)), device=device, dtype=dtype)
    if dtype != torch.float32:
        # the codec (always) and T5 (unless bf16 is asked for) run in fp32: reread their weights at full precision
        # rather than upcasting the 16-bit copies from_pretrained made (they are small next to the decoder)
        _reload_full_precision(hf_model.audio_encoder, "audio_encoder.", path)
        if dtype == torch.float16:
            _reload_full_precision(hf_model.text_encoder, "text_encoder.", path)
    codec = Codec(hf_model.audio_encoder, num_codebooks=cfg.num_codebooks, device=device)
    text = TextEncoder(hf_model.text_encoder, tokenizer, device=device, dtype=dtype, out_dtype=dtype)
    del hf_model  # the decoder's tensors now live in `lm`; drop transformers' copy of the module tree
    return lm, codec, text


def _stored_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors under `prefix` in a transformers directory's weight files, prefix removed, as stored."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    shards = safetensors_files(path, prefix)
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                if name.startswith(prefix):
                    out[name[len(prefix) :]] = handle.get_tensor(name)
    if not shards:  # torch pickles: the single file or every shard an index names
        for file in bin_files(path):
            state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            out.update({n[len(prefix) :]: t for n, t in state.items() if n.startswith(prefix)})
    return out


def _reload_full_precision(module, prefix: str, path: Path) -> None:
    """Cast `module` to fp32 and reload its weights from the files (legacy weight-norm names renamed)."""
    stored = {
        name.replace(".weight_g", ".parametrizations.weight.original0").replace(
            ".weight_v", ".parametrizations.weight.original1"
        ): tensor
        for name, tensor in _stored_tensors(path, prefix).items()
    }
    module.float()
    own = module.state_dict()
    usable = {n: t for n, t in stored.items() if n in own and tuple(own[n].shape) == tuple(t.shape)}
    module.load_state_dict(usable, strict=False)


def load_lm(
    path: str | Path,
    *,
    fusion: FusionConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> MusicGenLM:
    """Only the decoder of a transformers directory, as our MusicGenLM."""
    lm, _, _ = load_parts(path, fusion=fusion, device=device, dtype=dtype)
    return lm
