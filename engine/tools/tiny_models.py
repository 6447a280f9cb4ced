"""Tiny random models written in the real layouts, for tests and for trying the plumbing without GBs of weights.

- `build_tiny_model_dir`: our model directory (model_card.json + base/ in transformers layout + adapter/).
- `write_transformers_layout`: a facebook/musicgen-* style directory (config.json + model.safetensors + tokenizer).
- `write_audiocraft_layout`: an audiocraft style directory (state_dict.bin + compression_state_dict.bin).
- `write_official_ckpt`: a fake `finetuned.ckpt`, pickled with stand-in classes under the official repo's module
  paths, as the published Lightning checkpoint is.

Everything here is random: it tests mechanics (shapes, key names, alignment), never that an edit sounds right.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.instructions import OFFICIAL_STEMS, OFFICIAL_TEMPLATE, OFFICIAL_VERBS
from engine.model.config import PRESETS, FusionConfig

if TYPE_CHECKING:
    from transformers import EncodecModel, MusicgenConfig, MusicgenForConditionalGeneration, PreTrainedTokenizerFast

# The test model's decoder is the "tiny" preset (what `bench decode --shapes tiny` times), on a codec of 64 codes.
TINY = PRESETS["tiny"]
TINY_SAMPLE_RATE = 16000
TINY_CARD = 64
TINY_CODEBOOKS = TINY.num_codebooks
TINY_TEXT_DIM = TINY.text_dim
TINY_LAYERS = TINY.num_layers
TINY_DIM = TINY.dim
TINY_COND_FRAMES = FusionConfig().cond_frames  # the published adapter's condition window

# Words the tiny tokenizer knows: the official instruction words, our stems, and words for describing mixes.
_WORD_LINES = (
    "music piece instruct add no only remove extract drums bass piano guitar strings vocals synth organ brass",
    "and with without the a of mix full song just plus lead pad percussion keys",
)
TINY_WORDS = tuple(word for line in _WORD_LINES for word in line.split())


def tiny_musicgen_config(
    num_layers: int = TINY_LAYERS,
    dim: int = TINY_DIM,
    card: int = TINY_CARD,
    ffn_dim: int | None = None,
    causal_codec: bool = True,
) -> MusicgenConfig:
    """A transformers MusicgenConfig: 16 kHz EnCodec at 50 Hz with 4 codebooks of `card` (causal unless
    `causal_codec` is False, as MusicGen's own), tiny T5, and the tiny preset's decoder, or one of `num_layers` x
    `dim` (feed-forward `ffn_dim`, else 4 x dim as MusicGen's)."""
    from transformers import MusicgenConfig, MusicgenDecoderConfig, T5Config

    from engine.model.codec import encodec_config
    from engine.weights.convert import lm_config_to_transformers

    text = T5Config(
        vocab_size=len(_tiny_vocab()),
        d_model=TINY_TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    audio = encodec_config(
        TINY_CODEBOOKS,
        sampling_rate=TINY_SAMPLE_RATE,
        upsampling_ratios=[8, 5, 4, 2],  # hop 320 -> 50 Hz at 16 kHz
        codebook_size=card,
        hidden_size=32,
        num_filters=8,
        num_lstm_layers=1,
        codebook_dim=32,
        use_causal_conv=causal_codec,
    )
    shape = replace(TINY, num_layers=num_layers, dim=dim, ffn_dim=ffn_dim or 4 * dim, card=card)
    decoder = MusicgenDecoderConfig(**lm_config_to_transformers(shape))
    return MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)


def _tiny_vocab() -> dict[str, int]:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in [*TINY_WORDS, ".", ":", ",", "!", "?", "-", "'"]:
        vocab.setdefault(word, len(vocab))
    return vocab


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The small base models' word-level tokenizer (engine.train.template) over the tiny vocabulary."""
    from engine.train.template import word_level_tokenizer

    return word_level_tokenizer(_tiny_vocab())


def tiny_musicgen(seed: int = 0, **config_kwargs: Any) -> MusicgenForConditionalGeneration:
    """A random transformers MusicgenForConditionalGeneration of the tiny shape (seeded, deterministic)."""
    from transformers import MusicgenForConditionalGeneration

    from engine.weights.transformers_layout import quiet_transformers

    with quiet_transformers():
        torch.manual_seed(seed)
        model = MusicgenForConditionalGeneration(tiny_musicgen_config(**config_kwargs))
    _spread_codebooks(model.audio_encoder, seed)
    return model.eval()


@torch.no_grad()
def _spread_codebooks(codec, seed: int) -> None:
    """transformers initialises EnCodec codebooks to zeros (every frame would quantise to code 0): initialise each
    residual codebook from frames of what it quantises (EnCodec's k-means init, one step), so audio uses many codes."""
    generator = torch.Generator().manual_seed(seed + 7)
    rate = TINY_SAMPLE_RATE
    time = torch.arange(4 * rate) / rate
    # varied material: noise at several levels, tones, clicks; [4, 1, 4 s]
    tones = torch.sin(2 * torch.pi * torch.tensor([110.0, 440.0, 1760.0])[:, None] * time)[:, None]
    noise = torch.randn(1, 1, time.numel(), generator=generator) * torch.linspace(0.01, 0.5, time.numel())
    wav = torch.cat([tones * 0.3, noise])
    # One thread: a convolution's float sums depend on how the work is split, and the same seed must give the same
    # bytes whatever thread count the caller (or a test run) has set.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        residual = codec.encoder(wav).permute(0, 2, 1).reshape(-1, codec.config.hidden_size)  # [frames, D]
    finally:
        torch.set_num_threads(threads)
    for layer in codec.quantizer.layers:
        book = layer.codebook
        pick = torch.randint(0, residual.shape[0], (book.embed.shape[0],), generator=generator)
        jitter = torch.randn(book.embed.shape, generator=generator) * residual.std() * 0.05
        book.embed.copy_(residual[pick] + jitter)
        book.embed_avg.copy_(book.embed)
        book.inited.fill_(1.0)
        codes = torch.cdist(residual, book.embed).argmin(dim=1)
        residual = residual - book.embed[codes]


def write_transformers_layout(
    path: str | Path, seed: int = 0, model: MusicgenForConditionalGeneration | None = None, **config_kwargs: int
) -> Path:
    """Write a facebook/musicgen-* style directory: config.json, model.safetensors, tokenizer files."""
    from engine.weights.transformers_layout import quiet_transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else tiny_musicgen(seed, **config_kwargs)
    with quiet_transformers():
        model.save_pretrained(path)
        tiny_tokenizer().save_pretrained(path)
    return path


def build_tiny_model_dir(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random model in our format (model_card.json, base/, adapter/) at `path`; returns `path`.

    The adapter has nonzero random gates and LoRA weights so that audio and text fusion change the output.
    """
    from engine.weights.names import ADAPTER_DIR, BASE_DIR

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    write_transformers_layout(path / BASE_DIR, seed=seed)
    from engine.weights.loader import new_model_card, write_model_card

    card = new_model_card(
        "tiny-random",
        description="random tiny model for tests: 16 kHz, 50 Hz, 4 codebooks of 64, 2 x 64 decoder",
        provenance={"source": "engine.tools.tiny_models.build_tiny_model_dir", "seed": seed},
    )
    write_model_card(path, card)
    from engine.weights.adapter_format import base_reference, save_adapter

    fusion_cfg, state, base_cfg = _tiny_adapter_state(path / BASE_DIR, seed)
    save_adapter(
        path / ADAPTER_DIR,
        state,
        fusion_cfg,
        stems=OFFICIAL_STEMS,
        template=OFFICIAL_TEMPLATE,
        verbs=OFFICIAL_VERBS,
        base=base_reference(base_cfg),
        provenance={"source": "engine.tools.tiny_models.build_tiny_model_dir", "seed": seed, "trained": False},
    )
    return path


def _tiny_adapter_state(base_dir: Path, seed: int):
    """Random adapter weights for the tiny base: (FusionConfig, state in our naming, the base's LMConfig)."""
    from engine.weights.transformers_layout import load_lm

    fusion_cfg = FusionConfig(cond_frames=TINY_COND_FRAMES)
    lm = load_lm(base_dir, fusion=fusion_cfg, dtype=torch.float32, device="cpu")
    generator = torch.Generator().manual_seed(seed + 1)
    state = {}
    for name, tensor in lm.adapter_state_dict().items():
        # Nonzero everywhere (gates and LoRA B start at zero when trained from scratch): fusion must matter.
        state[name] = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * 0.05 + 0.02
    return fusion_cfg, state, lm.cfg


# ---- the audiocraft layout and the official checkpoint --------------------------------------------------------------


def audiocraft_lm_state(our_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our base LM state -> audiocraft MusicGen LM names (q/k/v stacked into in_proj_weight), for test checkpoints."""
    import re

    out: dict[str, torch.Tensor] = {}
    renames = {
        "self_attn.out.weight": "self_attn.out_proj.weight",
        "cross_attn.out.weight": "cross_attention.out_proj.weight",
        "ffn.fc1.weight": "linear1.weight",
        "ffn.fc2.weight": "linear2.weight",
    }
    for name, tensor in our_state.items():
        if m := re.fullmatch(r"layers\.(\d+)\.(self_attn|cross_attn)\.q\.weight", name):
            kind = "self_attn" if m[2] == "self_attn" else "cross_attention"
            parts = [our_state[f"layers.{m[1]}.{m[2]}.{p}.weight"] for p in "qkv"]
            out[f"transformer.layers.{m[1]}.{kind}.in_proj_weight"] = torch.cat(parts, dim=0)
        elif re.fullmatch(r"layers\.\d+\.(self_attn|cross_attn)\.[kv]\.weight", name):
            continue
        elif m := re.fullmatch(r"layers\.(\d+)\.(.+)", name):
            out[f"transformer.layers.{m[1]}.{renames.get(m[2], m[2])}"] = tensor
        elif m := re.fullmatch(r"heads\.(\d+)\.weight", name):
            out[f"linears.{m[1]}.weight"] = tensor
        elif name.startswith("norm_out."):
            out["out_norm." + name.split(".", 1)[1]] = tensor
        elif name.startswith("text_proj."):
            out["condition_provider.conditioners.description.output_proj." + name.split(".", 1)[1]] = tensor
        else:
            out[name] = tensor  # emb.{k}.weight
    return out


def official_state_dict(
    our_base: dict[str, torch.Tensor],
    num_layers: int,
    dim: int,
    seed: int = 0,
    fused_layers: int | None = None,
    cond_frames: int = TINY_COND_FRAMES,
    lora_rank: int = 4,
) -> dict[str, torch.Tensor]:
    """A state_dict laid out as the official finetuned.ckpt's, around a base LM given in our naming.

    Holds the frozen LM under model.peft_model.lm.* (PEFT-wrapped, with separate cross-attention q/k/v that differ
    from the base's in_proj values, as in the official code), the adapter under model.cp_transformer.*, and the
    cp_transformer's own references to the shared frozen layers.
    """
    generator = torch.Generator().manual_seed(seed + 11)
    fused = num_layers if fused_layers is None else fused_layers
    first = num_layers - fused

    def rand(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    state: dict[str, torch.Tensor] = {}
    for name, tensor in audiocraft_lm_state(our_base).items():
        if m := _layer_match(name):
            index, rest = m
            state[f"model.peft_model.lm.transformer.base_model.model.layers.{index}.{rest}"] = tensor
            # CPTransformerLayer holds the same frozen modules (no cross-attention) under the same names
            if index >= first and not rest.startswith(("cross_attention", "norm_cross")):
                state[f"model.cp_transformer.layers.{index - first}.{rest}"] = tensor
        else:
            state[f"model.peft_model.lm.{name}"] = tensor
    for index in range(num_layers):
        # the official attention also creates (unused) separate q/k/v projections in self-attention
        self_prefix = f"model.peft_model.lm.transformer.base_model.model.layers.{index}.self_attn."
        for part in "qkv":
            state[self_prefix + f"{part}_proj.weight"] = rand(dim, dim)
        prefix = f"model.peft_model.lm.transformer.base_model.model.layers.{index}.cross_attention."
        for part in "qkv":
            key = f"{part}_proj.base_layer.weight" if part in "qv" else f"{part}_proj.weight"
            state[prefix + key] = rand(dim, dim, scale=0.2)
        for part in "qv":
            state[prefix + f"{part}_proj.lora_A.default.weight"] = rand(lora_rank, dim)
            state[prefix + f"{part}_proj.lora_B.default.weight"] = rand(dim, lora_rank)
    state["model.cp_transformer.pos_emb"] = rand(fused + 1, cond_frames, dim, scale=1.0)
    for j in range(fused):
        state[f"model.cp_transformer.merge_linear.{j}.weight"] = rand(dim, dim)
    state["model.cp_transformer.gates"] = rand(fused, scale=0.3) + 0.1
    return state


def _layer_match(name: str) -> tuple[int, str] | None:
    import re

    m = re.fullmatch(r"transformer\.layers\.(\d+)\.(.+)", name)
    return (int(m[1]), m[2]) if m else None


def write_official_ckpt(path: str | Path, state: dict[str, torch.Tensor]) -> Path:
    """Pickle `state` as a Lightning checkpoint whose hyper-parameters reference the official repo's classes.

    The classes are created here, under their official module paths (src.models.components.model.Instructor, ...),
    only for the time of pickling: the loader must read the file without them, as users do.
    """
    import functools
    import sys
    import types
    from collections import OrderedDict

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [
        "src",
        "src.models",
        "src.models.components",
        "src.models.components.model",
        "src.models.instructmusicgenadapter_module",
    ]
    created = [name for name in names if name not in sys.modules]
    for name in created:
        sys.modules[name] = types.ModuleType(name)
    try:
        model_mod = sys.modules["src.models.components.model"]
        lit_mod = sys.modules["src.models.instructmusicgenadapter_module"]
        instructor = type("Instructor", (), {"__module__": model_mod.__name__})
        model_mod.Instructor = instructor
        lit = type("InstructMusicGenAdapterLitModule", (), {"__module__": lit_mod.__name__})
        lit_mod.InstructMusicGenAdapterLitModule = lit
        checkpoint = {
            "epoch": 3,
            "global_step": 12000,
            "pytorch-lightning_version": "2.1.0",
            "state_dict": OrderedDict(state),
            "hyper_parameters": {
                "instructor": functools.partial(instructor, sec=5, num_layers=48, latent_dim=2048, top_k=250),
                "optimizer": functools.partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.05),
                "tmp_dir": "/tmp/instruct",
                "compile": False,
                "audio_regularization": 0.0,
            },
            "hparams_name": "kwargs",
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 3}}}},
            "callbacks": {"ModelCheckpoint": {"best_model_path": "/ckpt/best.ckpt", "lit": lit()}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}],
            "lr_schedulers": [],
        }
        torch.save(checkpoint, path)
    finally:
        for name in created:
            del sys.modules[name]
    return path


def write_tiny_official_ckpt(path: str | Path, base_dir: str | Path, seed: int = 0, **kwargs: Any) -> Path:
    """A fake finetuned.ckpt around the tiny base model in `base_dir` (transformers layout)."""
    from safetensors.torch import load_file

    from engine.weights.convert import lm_state_from_transformers
    from engine.weights.names import WEIGHTS

    base = lm_state_from_transformers(load_file(str(Path(base_dir) / WEIGHTS)))
    return write_official_ckpt(path, official_state_dict(base, TINY_LAYERS, TINY_DIM, seed=seed, **kwargs))


def audiocraft_codec_state(codec: EncodecModel) -> dict[str, torch.Tensor]:
    """transformers EncodecModel -> audiocraft EnCodec names (weight_g / weight_v), for test checkpoints."""
    import re

    from transformers.models.encodec.modeling_encodec import EncodecConvTranspose1d

    transposed = {
        name for name, module in codec.named_modules() if isinstance(module, EncodecConvTranspose1d)
    }  # e.g. "decoder.layers.3"
    out = {}
    for name, tensor in codec.state_dict().items():
        new = name.replace(".parametrizations.weight.original0", ".weight_g")
        new = new.replace(".parametrizations.weight.original1", ".weight_v")
        if m := re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.conv\.(.+)", new):
            kind = "convtr.convtr" if f"{m[1]}.layers.{m[2]}" in transposed else "conv.conv"
            new = f"{m[1]}.model.{m[2]}.{kind}.{m[3]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(block\.\d+|shortcut)\.conv\.(.+)", new):
            new = f"{m[1]}.model.{m[2]}.{m[3]}.conv.conv.{m[4]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.lstm\.(.+)", new):
            new = f"{m[1]}.model.{m[2]}.lstm.{m[3]}"
        elif m := re.fullmatch(r"quantizer\.layers\.(\d+)\.codebook\.(.+)", new):
            new = f"quantizer.vq.layers.{m[1]}._codebook.{m[2]}"
        out[new] = tensor.detach().clone()
    return out


def write_audiocraft_layout(
    path: str | Path, seed: int = 0, model: MusicgenForConditionalGeneration | None = None
) -> Path:
    """Write an audiocraft-style directory (state_dict.bin + compression_state_dict.bin) of the tiny model."""
    import yaml

    from engine.weights.convert import lm_state_from_transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else tiny_musicgen(seed)
    ours = lm_state_from_transformers({n: t.detach().clone() for n, t in model.state_dict().items()})
    dec = model.config.decoder
    lm_cfg = {
        "transformer_lm": {
            "dim": dec.hidden_size,
            "num_heads": dec.num_attention_heads,
            "num_layers": dec.num_hidden_layers,
            "n_q": dec.num_codebooks,
            "card": dec.vocab_size,
            "norm_first": True,  # musicgen_lm's settings, which the loader checks
            "activation": "gelu",
            "positional_embedding": "sin",
            "bias_ff": False,
            "bias_attn": False,
            "bias_proj": False,
            "causal": True,
            "past_context": None,
        },
        "fuser": {"cross_attention_pos_emb": False, "sum": [], "prepend": [], "cross": ["description"]},
        "codebooks_pattern": {"modeling": "delay", "delay": {"delays": list(range(dec.num_codebooks))}},
        "conditioners": {"description": {"model": "t5", "t5": {"name": "t5-base", "finetune": False}}},
    }
    torch.save({"best_state": audiocraft_lm_state(ours), "xp.cfg": yaml.safe_dump(lm_cfg)}, path / "state_dict.bin")
    audio = model.config.audio_encoder
    # as audiocraft exports it (OmegaConf.to_yaml, unresolved): the codec's fields refer to others by ${...}
    codec_cfg = {
        "sample_rate": audio.sampling_rate,
        "channels": 1,
        "seanet": {
            "channels": "${channels}",
            "dimension": audio.hidden_size,
            "n_filters": audio.num_filters,
            "n_residual_layers": audio.num_residual_layers,
            "ratios": list(audio.upsampling_ratios),
            "norm": "weight_norm",
            "kernel_size": audio.kernel_size,
            "last_kernel_size": audio.last_kernel_size,
            "residual_kernel_size": audio.residual_kernel_size,
            "dilation_base": audio.dilation_growth_rate,
            "causal": "${encodec.causal}",
            "pad_mode": audio.pad_mode,
            "true_skip": not audio.use_conv_shortcut,
            "compress": audio.compress,
            "lstm": audio.num_lstm_layers,
            "disable_norm_outer_blocks": 0,
            "decoder": {"trim_right_ratio": audio.trim_right_ratio, "final_activation": None},
            "encoder": {},
        },
        "rvq": {"n_q": TINY_CODEBOOKS, "bins": audio.codebook_size},
        "encodec": {
            "sample_rate": "${sample_rate}",
            "channels": "${channels}",
            "causal": audio.use_causal_conv,
            "renormalize": False,
        },
    }
    torch.save(
        {"best_state": audiocraft_codec_state(model.audio_encoder), "xp.cfg": yaml.safe_dump(codec_cfg)},
        path / "compression_state_dict.bin",
    )
    return path


def write_t5_to_hub_cache(
    cache_dir: str | Path,
    model: MusicgenForConditionalGeneration | None = None,
    seed: int = 0,
    repo: str = "google-t5/t5-base",
    commit: str = "0" * 40,
) -> Path:
    """Put the tiny T5 encoder (and its tokenizer) into a Hugging Face cache under `repo`, as a download would."""
    from engine.weights.transformers_layout import quiet_transformers

    model = model if model is not None else tiny_musicgen(seed)
    repo_dir = Path(cache_dir) / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    with quiet_transformers():
        model.text_encoder.save_pretrained(snapshot)
        tiny_tokenizer().save_pretrained(snapshot)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


# ---- random models of the real shapes, in memory ---------------------------------------------------------------------

# facebook/encodec_32khz, MusicGen's codec: 32 kHz, hop 640 (50 Hz), 4 codebooks of 2048 at 2.2 kbps
ENCODEC_32KHZ = {
    "sampling_rate": 32000,
    "audio_channels": 1,
    "codebook_size": 2048,
    "codebook_dim": 128,
    "hidden_size": 128,
    "num_filters": 64,
    "num_residual_layers": 1,
    "upsampling_ratios": [8, 5, 4, 4],
    "num_lstm_layers": 2,
    "kernel_size": 7,
    "last_kernel_size": 7,
    "residual_kernel_size": 3,
    "dilation_growth_rate": 2,
    "compress": 2,
    "use_causal_conv": False,
    "use_conv_shortcut": False,
    "pad_mode": "reflect",
    "norm_type": "weight_norm",
    "normalize": False,
    "chunk_length_s": None,
    "overlap": None,
    "trim_right_ratio": 1.0,
    "target_bandwidths": [2.2],
}
# google-t5/t5-base's encoder (MusicGen's text encoder), with the tiny word-level vocabulary
T5_BASE = {"d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12, "feed_forward_proj": "relu"}


def random_loaded_model(
    shape: str = "tiny",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    seed: int = 0,
    fusion: Any = None,
):
    """A LoadedModel with random weights, built in memory on `device` (nothing written, nothing downloaded).

    `shape` is an engine.model.config preset. The tiny shape gets the tiny codec (16 kHz, 50 Hz) and T5 of
    `tiny_musicgen_config` with codebooks of 2048; the real shapes get MusicGen's codec (EnCodec 32 kHz, 4 x 2048)
    and a t5-base encoder, so an edit costs what it costs with the published weights (random values: mechanics and
    timing only). The decoder carries Instruct-MusicGen adapters (`fusion`, default FusionConfig()) with nonzero
    gates. Every part is constructed on `device`; the decoder then moves to `dtype` (default: engine.device's pick).
    """
    from transformers import EncodecConfig, EncodecModel, T5Config, T5EncoderModel

    from engine.device import decode_weight_count, pick
    from engine.model.bundle import LoadedModel, ModelCard
    from engine.model.codec import Codec
    from engine.model.config import preset
    from engine.model.lm import MusicGenLM
    from engine.model.text import TextEncoder
    from engine.weights.transformers_layout import quiet_transformers

    fusion = fusion if fusion is not None else FusionConfig()
    with quiet_transformers():
        if shape == "tiny":
            base = tiny_musicgen_config(card=2048)
            codec_cfg, text_cfg = base.audio_encoder, base.text_encoder
        else:
            codec_cfg = EncodecConfig(**ENCODEC_32KHZ)
            text_cfg = T5Config(vocab_size=len(_tiny_vocab()), pad_token_id=0, eos_token_id=1, **T5_BASE)
    cfg = preset(shape, text_dim=int(text_cfg.d_model), card=int(codec_cfg.codebook_size))
    dev, dt = pick(device, dtype, decode_weight_count(cfg))
    torch.manual_seed(seed)
    with quiet_transformers(), torch.device(dev):
        codec_model = EncodecModel(codec_cfg)
        text_model = T5EncoderModel(text_cfg)
        lm = MusicGenLM(cfg, fusion)
    with torch.no_grad():
        if lm.fusion is not None:
            lm.fusion.gates.fill_(0.1)  # nonzero: the audio condition changes the output, as a trained adapter's
        for module in lm.modules():
            if hasattr(module, "lora_b"):
                module.lora_b.normal_(0.0, 0.01)
    lm = lm.to(dtype=dt).eval()
    codec = Codec(codec_model, num_codebooks=cfg.num_codebooks, device=dev)
    text = TextEncoder(text_model, tiny_tokenizer(), device=dev, dtype=dt, out_dtype=dt)
    card = ModelCard(
        name=f"random-{shape}",
        sample_rate=codec.sample_rate,
        frame_rate=codec.frame_rate,
        num_codebooks=cfg.num_codebooks,
        card=cfg.card,
        cond_frames=fusion.cond_frames,
        provenance={"source": "engine.tools.tiny_models.random_loaded_model", "shape": shape, "seed": seed},
    )
    return LoadedModel(lm=lm, codec=codec, text=text, card=card, device=dev, dtype=dt)
