"""Codec (EnCodec wrapper) and TextEncoder (T5 wrapper) of the tiny model: shapes, determinism, masking, errors."""

from __future__ import annotations

import pytest
import torch

from engine.errors import AudioError, InstructionError


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from engine.weights import load_model

    return load_model(tiny_model_dir, device="cpu", dtype="fp32")


def test_codec_reports_the_tiny_rates(tiny):
    codec = tiny.codec
    assert (codec.sample_rate, codec.frame_rate, codec.num_codebooks, codec.card) == (16000, 50.0, 4, 64)
    assert codec.hop_length == 320


def test_encode_gives_one_frame_per_hop_rounding_up(tiny):
    wav = torch.randn(2, 1, 16000 + 5, generator=torch.Generator().manual_seed(0)) * 0.1
    codes = tiny.codec.encode(wav)
    assert codes.shape == (2, 4, 51)
    assert codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 64


def test_encode_uses_many_codes_on_varied_audio(tiny):
    # a codec whose codebooks are all zeros maps everything to code 0; the tiny one must not
    wav = torch.randn(1, 1, 16000, generator=torch.Generator().manual_seed(1)) * 0.2
    codes = tiny.codec.encode(wav)
    assert all(len(codes[0, k].unique()) > 4 for k in range(4))


def test_decode_gives_frames_times_hop_samples(tiny):
    codes = torch.randint(0, 64, (3, 4, 7), generator=torch.Generator().manual_seed(0))
    wav = tiny.codec.decode(codes)
    assert wav.shape == (3, 1, 7 * 320)
    assert wav.dtype == torch.float32
    assert torch.isfinite(wav).all()


def test_encode_is_deterministic(tiny):
    wav = torch.randn(1, 1, 3200, generator=torch.Generator().manual_seed(2))
    assert torch.equal(tiny.codec.encode(wav), tiny.codec.encode(wav))


def test_encode_refuses_stereo(tiny):
    with pytest.raises(AudioError, match="mono"):
        tiny.codec.encode(torch.zeros(1, 2, 1600))


def test_decode_refuses_special_tokens(tiny):
    codes = torch.full((1, 4, 3), 64)  # 64 = card = the special token
    with pytest.raises(AudioError, match="special"):
        tiny.codec.decode(codes)


def test_text_encode_shapes_and_mask(tiny):
    states, mask = tiny.text.encode(["Music piece. Instruct: Only Drums.", "drums"])
    assert states.shape[0] == 2 and states.shape[2] == tiny.text.dim == 32
    assert mask.shape == states.shape[:2] and mask.dtype == torch.bool
    assert mask[0].all()
    assert mask[1].sum() == 2  # "drums" + </s>


def test_text_padding_is_zeroed_and_does_not_change_the_real_tokens(tiny):
    alone, _ = tiny.text.encode(["drums"])
    batched, mask = tiny.text.encode(["drums", "Music piece. Instruct: Add Bass."])
    torch.testing.assert_close(batched[0, :2], alone[0], rtol=1e-5, atol=1e-6)
    assert (batched[0][~mask[0]] == 0).all()


def test_tokenizer_knows_the_official_instruction_words(tiny):
    ids = tiny.text.tokenizer("Music piece. Instruct: Add Drums. No Bass. Only Piano Guitar")["input_ids"]
    assert tiny.text.tokenizer.unk_token_id not in ids


def test_text_states_come_out_in_the_model_dtype(tiny_model_dir):
    from engine.weights import load_model

    model = load_model(tiny_model_dir, device="cpu", dtype="bf16")
    states, _ = model.text.encode(["Music piece. Instruct: Only Drums."])
    assert states.dtype == torch.bfloat16


def test_empty_instruction_list_is_an_instruction_error(tiny):
    with pytest.raises(InstructionError):
        tiny.text.encode([])


def test_outputs_can_feed_training(tiny):
    # no inference-mode tensors: the trainer backpropagates through an LM fed with these
    states, mask = tiny.text.encode(["Music piece. Instruct: Only Drums."])
    codes = tiny.codec.encode(torch.randn(1, 1, 3200) * 0.1)
    assert not states.is_inference() and not codes.is_inference()
    weight = torch.ones((), requires_grad=True)
    (states.sum() * weight + codes.float().sum() * weight).backward()  # an inference tensor cannot be saved for it
    assert weight.grad == pytest.approx(float(states.sum() + codes.float().sum()), rel=1e-5)


def test_codec_keeps_full_precision_weights_when_the_model_runs_in_bf16(tiny_model_dir):
    from safetensors.torch import load_file

    from engine.weights import load_model

    model = load_model(tiny_model_dir, device="cpu", dtype="bf16")
    stored = load_file(str(tiny_model_dir / "base" / "model.safetensors"))
    weight = model.codec.model.encoder.layers[0].conv.parametrizations.weight.original1
    expected = stored["audio_encoder.encoder.layers.0.conv.parametrizations.weight.original1"]
    assert not torch.equal(expected, expected.bfloat16().float())  # the test would catch a bf16 round trip
    assert weight.dtype == torch.float32
    assert torch.equal(weight, expected)


@pytest.mark.parametrize(("codebooks", "card"), [(4, 512), (9, 512), (12, 512), (4, 2048), (10, 2048), (3, 1024)])
def test_an_encodec_config_has_exactly_the_codebooks_asked_and_encodes_with_all_of_them(codebooks, card):
    # transformers' own rule turns the last bandwidth into the layer count; these used to come out one too many
    from transformers import EncodecModel

    from engine.model.codec import Codec, encodec_config

    config = encodec_config(
        codebooks, sampling_rate=16000, upsampling_ratios=[4, 5, 4, 4], codebook_size=card, hidden_size=16,
        codebook_dim=16, num_filters=4, num_lstm_layers=1,
    )  # fmt: skip
    assert config.num_quantizers == codebooks
    if codebooks < 9 and card == 512:  # transformers' older rule (bandwidth / (frame rate x 10)) reads it the same
        assert int(1000 * config.target_bandwidths[-1] // (config.frame_rate * 10)) == codebooks
    codec = Codec(EncodecModel(config))
    assert codec.num_codebooks == codebooks
    assert codec.encode(torch.randn(1, 1, 1600)).shape[1] == codebooks


def test_the_codecs_convolution_sizes_stay_on_the_host_wherever_the_codec_runs():
    """EnCodec's convolutions pad by the values of 0-dim int buffers: moved to a GPU with the model, every read was a
    copy to the host and a wait on the device (72 an encode, 128 a codec training step). On the "meta" device, whose
    tensors hold no values, a read fails as it would sync on a GPU: the codec must run there without one."""
    from transformers import EncodecModel

    from engine.model.codec import Codec, move_codec
    from engine.tools.tiny_models import tiny_musicgen_config

    model = EncodecModel(tiny_musicgen_config(card=2048).audio_encoder)
    codec = Codec(model, device="meta")
    codes = codec.encode(torch.zeros(1, 1, 3200, device="meta"))
    assert codes.is_meta and codes.shape[-1] == 3200 // codec.hop_length
    assert codec.model.decode(codes[None], [None]).audio_values.is_meta
    sizes = [b for m in codec.model.modules() for n, b in m._buffers.items() if n in ("stride", "padding_total")]
    assert sizes and all(b.device.type == "cpu" for b in sizes)
    trained = move_codec(EncodecModel(tiny_musicgen_config(card=2048).audio_encoder), "meta")  # the codec stage's
    assert trained.encoder(torch.zeros(1, 1, 3200, device="meta")).is_meta
