"""Weight conversion between layouts: pure renames and reshapes, no model code.

- transformers MusicGen decoder (MusicgenForCausalLM: "model.decoder.*", "lm_heads.*"; or inside
  MusicgenForConditionalGeneration: "decoder.model.decoder.*", "decoder.lm_heads.*", "enc_to_dec_proj.*") <-> ours;
- audiocraft LM (state_dict.bin 'best_state': "emb.*", "transformer.layers.*" with q/k/v stacked in in_proj_weight,
  "out_norm", "linears", "condition_provider.conditioners.description.output_proj") -> ours.
Our names: docs/ARCHITECTURE.md (engine/model/lm.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from engine.errors import CheckpointError, ConfigError
from engine.model.config import LMConfig, is_adapter_name

# per-layer renames, transformers -> ours
_HF_LAYER = {
    "self_attn.q_proj.weight": "self_attn.q.weight",
    "self_attn.k_proj.weight": "self_attn.k.weight",
    "self_attn.v_proj.weight": "self_attn.v.weight",
    "self_attn.out_proj.weight": "self_attn.out.weight",
    "self_attn_layer_norm.weight": "norm1.weight",
    "self_attn_layer_norm.bias": "norm1.bias",
    "encoder_attn.q_proj.weight": "cross_attn.q.weight",
    "encoder_attn.k_proj.weight": "cross_attn.k.weight",
    "encoder_attn.v_proj.weight": "cross_attn.v.weight",
    "encoder_attn.out_proj.weight": "cross_attn.out.weight",
    "encoder_attn_layer_norm.weight": "norm_cross.weight",
    "encoder_attn_layer_norm.bias": "norm_cross.bias",
    "fc1.weight": "ffn.fc1.weight",
    "fc2.weight": "ffn.fc2.weight",
    "final_layer_norm.weight": "norm2.weight",
    "final_layer_norm.bias": "norm2.bias",
}
_HF_LAYER_INV = {ours: theirs for theirs, ours in _HF_LAYER.items()}

# The rest of the decoder, transformers (MusicgenForCausalLM) name <-> ours: one table, read in both directions.
# {n} is a codebook or layer number, {part} a per-layer name of _HF_LAYER's, {wb} weight or bias.
_HF_NAMES = (
    ("model.decoder.embed_tokens.{n}.weight", "emb.{n}.weight"),
    ("model.decoder.layers.{n}.{part}", "layers.{n}.{part}"),
    ("model.decoder.layer_norm.{wb}", "norm_out.{wb}"),
    ("lm_heads.{n}.weight", "heads.{n}.weight"),
    ("enc_to_dec_proj.{wb}", "text_proj.{wb}"),
)
_FIELDS = {"n": r"(?P<n>\d+)", "part": r"(?P<part>.+)", "wb": r"(?P<wb>weight|bias)"}


def _template_re(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, group in _FIELDS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), group)
    return re.compile(pattern)


_TO_OURS = [(_template_re(theirs), ours) for theirs, ours in _HF_NAMES]
_TO_HF = [(_template_re(ours), theirs) for theirs, ours in _HF_NAMES]


def _rename(name: str, table: list[tuple[re.Pattern, str]], parts: Mapping[str, str]) -> str | None:
    """`name` in the other naming (per-layer parts through `parts`), None when it has no counterpart there."""
    for pattern, template in table:
        if m := pattern.fullmatch(name):
            fields = m.groupdict()
            if "part" in fields:
                if fields["part"] not in parts:
                    return None
                fields["part"] = parts[fields["part"]]
            return template.format(**fields)
    return None


# per-layer renames, audiocraft -> ours (q/k/v handled apart: stacked in in_proj_weight)
_AC_LAYER = {
    "self_attn.out_proj.weight": "self_attn.out.weight",
    "cross_attention.out_proj.weight": "cross_attn.out.weight",
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm_cross.weight": "norm_cross.weight",
    "norm_cross.bias": "norm_cross.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "linear1.weight": "ffn.fc1.weight",
    "linear2.weight": "ffn.fc2.weight",
}
_AC_TEXT_PROJ = "condition_provider.conditioners.description.output_proj."


# Why a melody MusicGen cannot be read, whichever layout it comes in
MELODY_UNSUPPORTED = (
    "musicgen-melody checkpoints are not supported: their decoder has no cross-attention (text is prepended "
    "instead), so Instruct-MusicGen's text LoRA has nothing to attach to; use small/medium/large"
)


def lm_config_from_transformers(decoder_config: Mapping, text_dim: int) -> LMConfig:
    """Our LMConfig from a transformers MusicgenDecoderConfig dict (config.json's "decoder" section)."""
    cfg = dict(decoder_config)

    def whole(key: str, default: int | None = None) -> int:  # CheckpointError naming a field missing or not a count
        value = cfg.get(key, default)
        if value is None:
            raise CheckpointError(f"the decoder config lacks {key!r}")
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not number or value != int(value) or value < 1:
            raise CheckpointError(f"the decoder config's {key!r} must be a whole number above 0, got {value!r}")
        return int(value)

    if cfg.get("scale_embedding"):
        raise ConfigError("MusicGen decoders with scale_embedding=True are not supported")
    if whole("audio_channels", 1) != 1:
        raise ConfigError("stereo MusicGen decoders (audio_channels=2) are not supported: use a mono checkpoint")
    if cfg.get("activation_function", "gelu") != "gelu":
        raise ConfigError(f"unsupported decoder activation {cfg.get('activation_function')!r} (MusicGen uses gelu)")
    return LMConfig(
        num_layers=whole("num_hidden_layers"),
        dim=whole("hidden_size"),
        num_heads=whole("num_attention_heads"),
        ffn_dim=whole("ffn_dim"),
        num_codebooks=whole("num_codebooks", 4),
        card=whole("vocab_size", 2048),
        text_dim=int(text_dim),
    )


def lm_config_to_transformers(cfg: LMConfig) -> dict:
    """A transformers MusicgenDecoderConfig dict for our LMConfig (the inverse of lm_config_from_transformers)."""
    return {
        "num_hidden_layers": cfg.num_layers,
        "hidden_size": cfg.dim,
        "num_attention_heads": cfg.num_heads,
        "ffn_dim": cfg.ffn_dim,
        "num_codebooks": cfg.num_codebooks,
        "vocab_size": cfg.card,
        "pad_token_id": cfg.card,
        "bos_token_id": cfg.card,
        "decoder_start_token_id": cfg.card,
        "activation_function": "gelu",
        "scale_embedding": False,
        "audio_channels": 1,
        "max_position_embeddings": 2048,
        "dropout": 0.0,  # our decoder has none; transformers' default is 0.1
    }


def _strip_decoder_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MusicgenForConditionalGeneration -> MusicgenForCausalLM names; text/audio encoder tensors dropped."""
    out = {}
    for name, tensor in state.items():
        if name.startswith("decoder."):
            out[name[len("decoder.") :]] = tensor
        elif name.startswith(("model.decoder.", "lm_heads.", "enc_to_dec_proj.")):
            out[name] = tensor
    return out


def lm_state_from_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers decoder state (CausalLM or ConditionalGeneration names) -> our state dict (tensors shared)."""
    state = _strip_decoder_prefix(state)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in state.items():
        if name.endswith("embed_positions.weights"):
            continue  # sinusoidal table, recomputed
        ours = _rename(name, _TO_OURS, _HF_LAYER)
        if ours is None:
            unknown.append(name)
        else:
            out[ours] = tensor
    if unknown:
        raise CheckpointError(
            f"unexpected tensors in a transformers MusicGen decoder: {', '.join(sorted(unknown)[:5])}"
        )
    if not any(name.startswith("layers.") for name in out):
        raise CheckpointError("no MusicGen decoder layers found in this state dict (is it a transformers MusicGen?)")
    return out


def lm_state_to_transformers(state: Mapping[str, torch.Tensor], layout: str = "conditional") -> dict[str, torch.Tensor]:
    """Our base state -> transformers names. layout "conditional": MusicgenForConditionalGeneration decoder part
    ("decoder.*" + "enc_to_dec_proj.*"); "causal": MusicgenForCausalLM ("model.decoder.*", "lm_heads.*", with
    text_proj left out since CausalLM has none). Adapter tensors are refused: they have no transformers name."""
    if layout not in ("conditional", "causal"):
        raise ValueError(f"layout must be 'conditional' or 'causal', got {layout!r}")
    prefix = "decoder." if layout == "conditional" else ""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if is_adapter_name(name):
            raise CheckpointError(f"{name} is an adapter tensor; transformers' MusicGen has no place for it")
        theirs = _rename(name, _TO_HF, _HF_LAYER_INV)
        if theirs is None:
            raise CheckpointError(f"{name} has no transformers counterpart")
        if theirs.startswith("enc_to_dec_proj."):  # the text projection lives beside the decoder, not in it
            if layout == "conditional":
                out[theirs] = tensor
        else:
            out[prefix + theirs] = tensor
    return out


def lm_state_from_audiocraft(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """audiocraft LM state (MusicGen's state_dict.bin 'best_state') -> our state dict.

    Attention q/k/v come stacked in `in_proj_weight` [3D, D]. The official Instruct-MusicGen code adds separate
    cross_attention.{q,k,v}_proj: when those are present they win (their trained values are the real ones).
    Conditioner tensors other than the description's output_proj (the T5 itself) are ignored.
    """
    out: dict[str, torch.Tensor] = {}
    separate: dict[str, torch.Tensor] = {}
    unknown = []
    layer_re = re.compile(r"transformer\.layers\.(\d+)\.(.+)")
    for name, tensor in state.items():
        if m := re.fullmatch(r"emb\.(\d+)\.weight", name):
            out[f"emb.{m[1]}.weight"] = tensor
        elif m := layer_re.fullmatch(name):
            index, rest = m[1], m[2]
            if rest in ("self_attn.in_proj_weight", "cross_attention.in_proj_weight"):
                kind = "self_attn" if rest.startswith("self") else "cross_attn"
                if tensor.shape[0] % 3:
                    raise CheckpointError(f"{name} has shape {tuple(tensor.shape)}: expected q, k, v stacked")
                for part, chunk in zip(("q", "k", "v"), tensor.chunk(3, dim=0), strict=True):
                    out[f"layers.{index}.{kind}.{part}.weight"] = chunk
            elif pm := re.fullmatch(r"cross_attention\.([qkv])_proj\.weight", rest):
                separate[f"layers.{index}.cross_attn.{pm[1]}.weight"] = tensor
            elif rest in _AC_LAYER:
                out[f"layers.{index}.{_AC_LAYER[rest]}"] = tensor
            else:
                unknown.append(name)
        elif m := re.fullmatch(r"out_norm\.(weight|bias)", name):
            out[f"norm_out.{m[1]}"] = tensor
        elif m := re.fullmatch(r"linears\.(\d+)\.weight", name):
            out[f"heads.{m[1]}.weight"] = tensor
        elif name.startswith(_AC_TEXT_PROJ):
            out[f"text_proj.{name[len(_AC_TEXT_PROJ) :]}"] = tensor
        elif name.startswith("condition_provider."):
            continue
        else:
            unknown.append(name)
    if unknown:
        raise CheckpointError(
            f"unexpected tensors in an audiocraft MusicGen LM (biases or another architecture?): "
            f"{', '.join(sorted(unknown)[:5])}"
        )
    if not any(name.startswith("layers.") for name in out):
        raise CheckpointError("no transformer layers found in this state dict (is it an audiocraft MusicGen LM?)")
    out.update(separate)
    return out
