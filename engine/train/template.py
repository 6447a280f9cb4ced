"""A transformers MusicGen template around a trained codec: where the embedded model's base stage starts.

The codec stage writes a bare EnCodec directory; the base stage needs a whole MusicGen directory (decoder, text
encoder, tokenizer) to take its architecture from. `build_base_template` makes one with a random decoder, a small T5
and a word-level tokenizer that knows the caption and instruction words (`base_vocabulary`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.instructions import OFFICIAL_STEMS, OFFICIAL_TEMPLATE, OFFICIAL_VERBS
from engine.model.codec import Codec
from engine.model.config import LMConfig, check_text_width
from engine.train.config import BASE_SIZES
from engine.train.data.stems import GM_FAMILIES, caption_word
from engine.weights.convert import lm_config_to_transformers
from engine.weights.transformers_layout import load_codec_dir, quiet_transformers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


def base_vocabulary() -> list[str]:
    """Words a small base model's tokenizer knows: caption words of every stem class and the instruction template."""
    words = ["<pad>", "</s>", "<unk>"]
    text = " ".join([OFFICIAL_TEMPLATE, *OFFICIAL_VERBS.values(), "and", "silence", "vocals", "other", "percussion"])
    classes = [*OFFICIAL_STEMS, *GM_FAMILIES]  # Drums is no General MIDI family (channel 10), so it is named apart
    names = [caption_word(cls) for cls in classes] + [cls.lower() for cls in classes]
    for word in [*text.lower().replace("{verb}", " ").replace("{stem}", " ").split(), *" ".join(names).split()]:
        word = word.strip(".:,()")
        if word and word not in words:
            words.append(word)
    return [*words, ".", ":", ",", "(", ")", "-", "'"]


def word_level_tokenizer(vocab: dict[str, int]) -> PreTrainedTokenizerFast:
    """A T5-style word-level tokenizer over `vocab` (which holds <pad> 0, </s> 1, <unk>): lower-cased, split at
    whitespace and punctuation, `</s>` appended as T5 does; built here, nothing downloaded. The small base models and
    the tests' tiny ones (engine.tools.tiny_models) use it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_base_template(
    codec_dir: str | Path,
    out_dir: str | Path,
    *,
    layers: int = BASE_SIZES["layers"],
    dim: int = BASE_SIZES["dim"],
    heads: int = BASE_SIZES["heads"],
    text_dim: int = BASE_SIZES["text_dim"],
    text_layers: int = 2,
    seed: int = 0,
) -> Path:
    """A transformers MusicGen directory around a trained codec: random decoder and small T5, word-level tokenizer.

    The embedded default model is built this way (codec stage -> this template -> base stage -> adapter stage).
    The word-level tokenizer knows the caption and instruction words (`base_vocabulary`); others map to <unk>.
    """
    # transformers and tokenizers are imported here: only this path of `imusic train` needs them at all
    from transformers import (
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    check_text_width(dim, text_dim, ("--dim", "--text-dim"))
    codec_model = load_codec_dir(codec_dir)
    num_codebooks = Codec(codec_model).num_codebooks
    card = int(codec_model.config.codebook_size)
    vocab = {word: index for index, word in enumerate(base_vocabulary())}
    text = T5Config(
        vocab_size=len(vocab),
        d_model=text_dim,
        d_kv=text_dim // 4,
        d_ff=2 * text_dim,
        num_layers=text_layers,
        num_heads=4,
        relative_attention_num_buckets=16,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    shape = LMConfig(layers, dim, heads, 4 * dim, num_codebooks=num_codebooks, card=card, text_dim=text_dim)
    decoder = MusicgenDecoderConfig(**lm_config_to_transformers(shape))
    with quiet_transformers():
        torch.manual_seed(seed)
        model = MusicgenForConditionalGeneration(
            MusicgenConfig(text_encoder=text, audio_encoder=codec_model.config, decoder=decoder)
        )
        model.audio_encoder.load_state_dict(codec_model.state_dict())
        tokenizer = word_level_tokenizer(vocab)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():
            model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
    return out_dir
