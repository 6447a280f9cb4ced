"""The audiocraft layout (Meta's own MusicGen release): state_dict.bin (LM) + compression_state_dict.bin (EnCodec).

Both are torch pickles {"xp.cfg": YAML text of the training config, "best_state": state dict}; read with
weights_only=True and memory-mapped. T5 is not inside: the LM names it (t5-base), and we take it from the local
Hugging Face cache. The EnCodec weights are renamed into transformers' EncodecModel, whose module tree has the same
order as audiocraft's SEANet (layer i of audiocraft's `encoder.model` is layer i of transformers' `encoder.layers`):
    encoder.model.{i}.conv.conv.X            -> encoder.layers.{i}.conv.X
    encoder.model.{i}.block.{j}.conv.conv.X  -> encoder.layers.{i}.block.{j}.conv.X
    encoder.model.{i}.shortcut.conv.conv.X   -> encoder.layers.{i}.shortcut.conv.X
    encoder.model.{i}.lstm.X                 -> encoder.layers.{i}.lstm.X
    decoder.model.{i}.convtr.convtr.X        -> decoder.layers.{i}.conv.X
    quantizer.vq.layers.{i}._codebook.X      -> quantizer.layers.{i}.codebook.X
    weight_g / weight_v                      -> parametrizations.weight.original0 / original1
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.errors import CheckpointError
from engine.files import read_json_object
from engine.model.config import SAMPLE_RATE
from engine.model.config import frame_rate as codec_frame_rate
from engine.model.fit import check_state_fits

if TYPE_CHECKING:
    from transformers import EncodecConfig, EncodecModel, PreTrainedTokenizerBase, T5EncoderModel

    from engine.model.codec import Codec
    from engine.model.config import FusionConfig, LMConfig
    from engine.model.lm import MusicGenLM
    from engine.model.text import TextEncoder

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"


def is_audiocraft_dir(path: str | Path) -> bool:
    """True when `path` holds audiocraft's state_dict.bin or compression_state_dict.bin."""
    path = Path(path)
    return (path / LM_FILE).is_file() or (path / CODEC_FILE).is_file()


def _load(file: Path) -> Any:
    if not file.is_file():
        raise CheckpointError(f"audiocraft model directory {file.parent} is missing {file.name}")
    try:
        return torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the producer's bad input
        raise CheckpointError(f"{file} is not a readable audiocraft checkpoint: {str(exc).splitlines()[0]}") from None


def pretrained_codec(file: Path, package: Any = None) -> str | None:
    """The codec a fine-tuned MusicGen's compression file names instead of holding it, or None: audiocraft's export of
    a fine-tune (export_pretrained_compression_model) writes {"pretrained": "facebook/encodec_32khz"}. `package`: the
    file already loaded."""
    package = _load(file) if package is None else package
    if isinstance(package, dict) and "best_state" not in package and isinstance(package.get("pretrained"), str):
        return package["pretrained"]
    return None


def read_package(file: Path, package: Any = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(best_state, parsed xp.cfg) of an audiocraft release file (`package`: the file already loaded)."""
    import yaml

    package = _load(file) if package is None else package
    if not isinstance(package, dict) or "best_state" not in package:
        raise CheckpointError(f"{file} has no 'best_state': not an audiocraft release checkpoint")
    cfg = package.get("xp.cfg") or {}
    if isinstance(cfg, str):
        try:
            cfg = yaml.safe_load(cfg) or {}
        except yaml.YAMLError as exc:
            raise CheckpointError(f"{file}: its xp.cfg is not valid YAML: {exc}") from None
    return package["best_state"], resolve_references(cfg) if isinstance(cfg, dict) else {}


_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")
_UNFOUND = object()


def resolve_references(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config with its OmegaConf references (`${encodec.causal}`) replaced by what they name. audiocraft exports
    its xp.cfg unresolved (OmegaConf.to_yaml): MusicGen's codec says `seanet.causal: ${encodec.causal}`, a text that
    bool() reads as True, so its non-causal codec was built causal. A reference to nothing (or a loop, or a resolver
    such as `${oc.env:X}`) stays as written, for the reader of that field to refuse."""

    def lookup(dotted: str, seen: frozenset[str]) -> Any:
        node: Any = cfg
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return _UNFOUND
            node = node[part]
        return resolve(node, seen | {dotted})

    def resolve(value: Any, seen: frozenset[str]) -> Any:
        if isinstance(value, dict):
            return {key: resolve(item, seen) for key, item in value.items()}
        if isinstance(value, list):
            return [resolve(item, seen) for item in value]
        if not isinstance(value, str):
            return value

        def named(match: re.Match) -> Any:
            return _UNFOUND if match[1] in seen else lookup(match[1], seen)

        if (whole := _REFERENCE.fullmatch(value)) is not None:
            found = named(whole)
            return value if found is _UNFOUND else found
        return _REFERENCE.sub(lambda m: m[0] if (found := named(m)) is _UNFOUND else str(found), value)

    return resolve(cfg, frozenset())


# ---- LM --------------------------------------------------------------------------------------------------------


def lm_config(state: dict[str, torch.Tensor], cfg: dict[str, Any]) -> LMConfig:
    """Our LMConfig from an audiocraft LM state (shapes) and its xp.cfg (head count); CheckpointError for an LM built
    otherwise than MusicGen's (its xp.cfg says so; its tensors' names and shapes would not)."""
    from engine.model.config import LMConfig
    from engine.weights.convert import MELODY_UNSUPPORTED

    if state and not any(".cross_attention." in name for name in state):
        raise CheckpointError(MELODY_UNSUPPORTED)
    transformer = cfg.get("transformer_lm") if isinstance(cfg.get("transformer_lm"), dict) else {}
    pattern = cfg.get("codebooks_pattern") if isinstance(cfg.get("codebooks_pattern"), dict) else {}
    delay = pattern.get("delay") if isinstance(pattern.get("delay"), dict) else {}
    fuser = cfg.get("fuser") if isinstance(cfg.get("fuser"), dict) else {}
    differences = [
        f"{section}.{key} is {found[key]!r} (MusicGen's: {wanted!r})"
        for section, found, key, wanted in [
            ("codebooks_pattern", pattern, "modeling", "delay"),
            ("codebooks_pattern.delay", delay, "flatten_first", 0),
            ("codebooks_pattern.delay", delay, "empty_initial", 0),
            ("fuser", fuser, "cross_attention_pos_emb", False),  # positions added to the text MusicGen attends to
        ]
        + [("transformer_lm", transformer, key, wanted) for key, wanted in _MUSICGEN_LM.items()]
        if key in found and found[key] != wanted
    ]
    delays = delay.get("delays")
    if delays is not None and delays != list(range(len(delays))):
        differences.append(f"codebooks_pattern.delay.delays is {delays!r} (MusicGen's: {list(range(len(delays)))})")
    if differences:
        raise CheckpointError(
            "this audiocraft LM is built otherwise than MusicGen, whose architecture the engine runs: "
            + "; ".join(differences)
        )
    try:
        num_codebooks = sum(1 for name in state if re.fullmatch(r"emb\.\d+\.weight", name))
        rows, dim = state["emb.0.weight"].shape
        num_layers = 1 + max(int(m[1]) for n in state if (m := re.match(r"transformer\.layers\.(\d+)\.", n)))
        ffn_dim = state["transformer.layers.0.linear1.weight"].shape[0]
        text_dim = state["condition_provider.conditioners.description.output_proj.weight"].shape[1]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"not an audiocraft MusicGen LM: cannot find {exc}") from None
    heads = (cfg.get("transformer_lm") or {}).get("num_heads") or dim // 64  # MusicGen sizes all use 64-dim heads
    return LMConfig(
        num_layers=num_layers,
        dim=int(dim),
        num_heads=int(heads),
        ffn_dim=int(ffn_dim),
        num_codebooks=num_codebooks,
        card=int(rows) - 1,
        text_dim=int(text_dim),
    )


# transformer_lm settings of MusicGen (audiocraft's musicgen_lm config) that change what the weights compute without
# changing their names or shapes: an LM trained otherwise would load, and edit wrongly, without a word
_MUSICGEN_LM = {
    "norm_first": True,
    "activation": "gelu",
    "norm": "layer_norm",
    "positional_embedding": "sin",
    "xpos": False,
    "qk_layer_norm": False,
    "qk_layer_norm_cross": False,
    "layer_scale": None,
    "kv_repeat": 1,
    "causal": True,
    "past_context": None,  # attention over every earlier step, not a local window
}


def t5_name(cfg: dict[str, Any]) -> str:
    """The T5 the LM was trained with (audiocraft: conditioners.description.t5.name)."""
    description = (cfg.get("conditioners") or {}).get("description") or {}
    return str((description.get("t5") or {}).get("name") or "t5-base")


# ---- codec -----------------------------------------------------------------------------------------------------

_AC_CODEC = [
    (re.compile(r"(encoder|decoder)\.model\.(\d+)\.(?:conv\.conv|convtr\.convtr)\.(.+)"), r"\1.layers.\2.conv.\3"),
    (re.compile(r"(encoder|decoder)\.model\.(\d+)\.block\.(\d+)\.conv\.conv\.(.+)"), r"\1.layers.\2.block.\3.conv.\4"),
    (re.compile(r"(encoder|decoder)\.model\.(\d+)\.shortcut\.conv\.conv\.(.+)"), r"\1.layers.\2.shortcut.conv.\3"),
    (re.compile(r"(encoder|decoder)\.model\.(\d+)\.lstm\.(.+)"), r"\1.layers.\2.lstm.\3"),
    (re.compile(r"quantizer\.vq\.layers\.(\d+)\._codebook\.(.+)"), r"quantizer.layers.\1.codebook.\2"),
]


def codec_state_from_audiocraft(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """audiocraft EnCodec state -> transformers EncodecModel names."""
    out = {}
    unknown = []
    for name, tensor in state.items():
        for pattern, target in _AC_CODEC:
            if pattern.fullmatch(name):
                new = pattern.sub(target, name)
                new = new.replace(".weight_g", ".parametrizations.weight.original0")
                new = new.replace(".weight_v", ".parametrizations.weight.original1")
                out[new] = tensor
                break
        else:
            unknown.append(name)
    if unknown:
        raise CheckpointError(f"unexpected tensors in an audiocraft EnCodec: {', '.join(sorted(unknown)[:5])}")
    return out


def encodec_config(cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> EncodecConfig:
    """transformers EncodecConfig from audiocraft's compression xp.cfg (seanet / rvq sections)."""
    from engine.model.codec import encodec_config as encodec_with_codebooks

    seanet = dict(cfg.get("seanet") or {})
    rvq = dict(cfg.get("rvq") or {})
    encodec = dict(cfg.get("encodec") or {})
    causal = _flag("seanet.causal", seanet.get("causal", encodec.get("causal", False)))
    decoder = seanet.get("decoder") if isinstance(seanet.get("decoder"), dict) else {}
    if seanet.get("norm", "weight_norm") != "weight_norm" or seanet.get("disable_norm_outer_blocks", 0):
        raise CheckpointError("only weight-normalised EnCodec models (as MusicGen's) can be read")
    if encodec.get("renormalize"):
        raise CheckpointError("renormalising EnCodec models are not supported (MusicGen's codec does not renormalise)")
    try:
        sample_rate = int(cfg.get("sample_rate") or encodec.get("sample_rate") or SAMPLE_RATE)
        ratios = [int(ratio) for ratio in seanet.get("ratios", [8, 5, 4, 2])]
        bins = int(rvq.get("bins", state["quantizer.vq.layers.0._codebook.embed"].shape[0]))
        n_q = int(rvq.get("n_q") or sum(1 for n in state if n.endswith("._codebook.embed")))
        return encodec_with_codebooks(
            n_q,
            sampling_rate=sample_rate,
            audio_channels=int(cfg.get("channels", 1)),
            hidden_size=int(seanet.get("dimension", 128)),
            num_filters=int(seanet.get("n_filters", 32)),
            num_residual_layers=int(seanet.get("n_residual_layers", 1)),
            upsampling_ratios=ratios,
            norm_type="weight_norm",
            kernel_size=int(seanet.get("kernel_size", 7)),
            last_kernel_size=int(seanet.get("last_kernel_size", 7)),
            residual_kernel_size=int(seanet.get("residual_kernel_size", 3)),
            dilation_growth_rate=int(seanet.get("dilation_base", 2)),
            use_causal_conv=causal,
            pad_mode=str(seanet.get("pad_mode", "constant")),
            compress=int(seanet.get("compress", 2)),
            num_lstm_layers=int(seanet.get("lstm", 2)),
            trim_right_ratio=float(decoder.get("trim_right_ratio", seanet.get("trim_right_ratio", 1.0))),
            use_conv_shortcut=not _flag("seanet.true_skip", seanet.get("true_skip", True)),
            codebook_size=bins,
            codebook_dim=int(seanet.get("dimension", 128)),
            normalize=False,
        )
    except (TypeError, ValueError) as exc:  # a field that is no number (an unresolved reference, a typo)
        raise CheckpointError(
            f"the codec's xp.cfg has a value that is not a number where one is needed: {exc}"
        ) from None


def _flag(name: str, value: Any) -> bool:
    """A yes/no field of an xp.cfg; bool() of a text (an unresolved reference) would read it as yes, silently."""
    if not isinstance(value, bool):
        raise CheckpointError(f"the codec's xp.cfg says {name} is {value!r}, not true or false")
    return value


def frame_rate(path: str | Path) -> float:
    """Codec frames per second of an audiocraft MusicGen folder (its compression xp.cfg: sample rate / hop; for a
    fine-tune, the config of the codec it names)."""
    file = Path(path) / CODEC_FILE
    package = _load(file)
    if (name := pretrained_codec(file, package)) is not None:
        from engine.weights import hub
        from engine.weights.transformers_layout import CONFIG, encodec_frame_rate

        config = read_json_object(
            hub.cached_snapshot(name) / CONFIG, f"the cached {name} has no {CONFIG}", CheckpointError
        )
        return encodec_frame_rate(config, f"the {CONFIG} of the cached {name}")
    state, cfg = read_package(file, package)
    config = encodec_config(cfg, state)
    return codec_frame_rate(config.sampling_rate, config.upsampling_ratios)


def load_codec_model(path: Path) -> EncodecModel:
    """transformers EncodecModel holding the weights of compression_state_dict.bin, or of the codec it names (a
    fine-tune's export), from the Hugging Face cache."""
    from transformers import EncodecModel

    from engine.weights.transformers_layout import load_codec_dir, quiet_transformers

    package = _load(path / CODEC_FILE)
    if (name := pretrained_codec(path / CODEC_FILE, package)) is not None:
        from engine.weights import hub

        return load_codec_dir(hub.cached_snapshot(name)).float().eval()
    state, cfg = read_package(path / CODEC_FILE, package)
    config = encodec_config(cfg, state)
    renamed = codec_state_from_audiocraft(state)
    # built for real, not on the meta device: EnCodec has non-persistent buffers, and it is small (~60M parameters)
    with quiet_transformers():
        model = EncodecModel(config)
    check_state_fits(renamed, model.state_dict(), str(path / CODEC_FILE), "the codec its xp.cfg describes")
    model.load_state_dict(renamed)
    return model.float().eval()


# ---- text ------------------------------------------------------------------------------------------------------


def load_t5(name: str, cache_dir: str | Path | None = None) -> tuple[T5EncoderModel, PreTrainedTokenizerBase]:
    """(T5EncoderModel, tokenizer) of the T5 an audiocraft LM names, from the local Hugging Face cache."""
    from transformers import T5EncoderModel

    from engine.weights import hub
    from engine.weights.transformers_layout import load_tokenizer, quiet_transformers

    if name not in hub.T5_REPOS:
        path = hub.cached_snapshot(name, cache_dir=cache_dir)
    else:
        path = hub.find_t5(cache_dir=cache_dir)
    try:
        with quiet_transformers():
            model = T5EncoderModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the cached {name} in {path}: {str(exc).splitlines()[0]}") from None
    return model.eval(), load_tokenizer(path)


# ---- all parts -------------------------------------------------------------------------------------------------


def load_parts(
    path: str | Path,
    *,
    fusion: FusionConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[MusicGenLM, Codec, TextEncoder]:
    """Read an audiocraft directory into (lm, codec, text), like transformers_layout.load_parts."""
    from engine.model.bundle import build_lm
    from engine.model.codec import Codec
    from engine.model.text import TextEncoder
    from engine.weights.convert import lm_state_from_audiocraft

    path = Path(path)
    for name in (LM_FILE, CODEC_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"audiocraft model directory {path} is missing {name}")
    state, cfg = read_package(path / LM_FILE)
    lm_cfg = lm_config(state, cfg)
    lm = build_lm(lm_cfg, fusion, lm_state_from_audiocraft(state), device=device, dtype=dtype)
    codec = Codec(load_codec_model(path), num_codebooks=lm_cfg.num_codebooks, device=device)
    t5, tokenizer = load_t5(t5_name(cfg))
    if t5.config.d_model != lm_cfg.text_dim:
        raise CheckpointError(
            f"the cached {t5_name(cfg)} has width {t5.config.d_model}, but the LM expects {lm_cfg.text_dim}"
        )
    text = TextEncoder(t5, tokenizer, device=device, dtype=dtype, out_dtype=dtype)
    return lm, codec, text
