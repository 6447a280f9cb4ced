"""Our decoder against transformers' MusicGen on the same random tiny weights (loaded through convert.py)."""

from __future__ import annotations

import pytest
import torch

from engine.errors import CheckpointError, ConfigError
from engine.model.generate import generate
from engine.model.lm import MusicGenLM
from engine.weights.convert import (
    lm_config_from_transformers,
    lm_config_to_transformers,
    lm_state_from_audiocraft,
    lm_state_from_transformers,
    lm_state_to_transformers,
)

transformers = pytest.importorskip("transformers")

CARD, DIM, TEXT_DIM, K = 64, 64, 32, 4


def _randomize(module: torch.nn.Module) -> None:
    # larger than the default init, and random norms, so that a wrong name or order shows in the logits
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 1.0)


def _decoder_config():
    from transformers import MusicgenDecoderConfig

    return MusicgenDecoderConfig(
        vocab_size=CARD, hidden_size=DIM, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
        num_codebooks=K, dropout=0.0, pad_token_id=CARD, bos_token_id=CARD, decoder_start_token_id=CARD,
    )  # fmt: skip


@pytest.fixture(scope="module")
def hf_causal():
    from transformers import MusicgenForCausalLM

    torch.manual_seed(0)
    model = MusicgenForCausalLM(_decoder_config()).eval()
    _randomize(model)
    return model


@pytest.fixture(scope="module")
def hf_full():
    from transformers import EncodecConfig, MusicgenConfig, MusicgenForConditionalGeneration, T5Config

    torch.manual_seed(1)
    text = T5Config(vocab_size=100, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    # 8 kbps at 200 Hz frames -> 4 quantizers (the codec only runs to decode the generated codes)
    codec = EncodecConfig(
        codebook_size=CARD, hidden_size=16, num_filters=4, upsampling_ratios=[4, 2], num_residual_layers=1,
        codebook_dim=16, target_bandwidths=[8.0], sampling_rate=1600,
    )  # fmt: skip
    config = MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=_decoder_config())
    model = MusicgenForConditionalGeneration(config).eval()
    _randomize(model.decoder)
    _randomize(model.enc_to_dec_proj)
    return model


@pytest.fixture(scope="module")
def ours_from_full(hf_full):
    cfg = lm_config_from_transformers(hf_full.config.decoder.to_dict(), text_dim=TEXT_DIM)
    lm = MusicGenLM(cfg).eval()
    lm.load_state_dict(lm_state_from_transformers(hf_full.state_dict()), strict=True)
    return lm


def _hf_generate_codes(model, ids, mask, num_frames: int, guidance: float) -> torch.Tensor:
    """Greedy codes [B, K, num_frames] from transformers' generate (captured before the codec decodes them)."""
    captured = {}
    decode = model.audio_encoder.decode

    def capture(codes, audio_scales=None, **kwargs):
        captured["codes"] = codes
        return decode(codes, audio_scales=audio_scales, **kwargs)

    model.audio_encoder.decode = capture
    try:
        # transformers' max_length counts the start step: num_frames + K columns hold num_frames frames
        model.generate(input_ids=ids, attention_mask=mask, do_sample=False, guidance_scale=guidance,
                       max_new_tokens=num_frames + K - 1)  # fmt: skip
    finally:
        model.audio_encoder.decode = decode
    return captured["codes"][0]


def _text(hf_full, batch: int = 2, length: int = 6):
    torch.manual_seed(2)
    ids = torch.randint(0, 100, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, length - 2 :] = 0  # one padded row, so that masking is exercised
    with torch.no_grad():
        states = hf_full.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    return ids, mask, states


def test_causal_lm_logits_match_transformers(hf_causal):
    cfg = lm_config_from_transformers(hf_causal.config.to_dict(), text_dim=DIM)
    lm = MusicGenLM(cfg).eval()
    state = lm_state_from_transformers(hf_causal.state_dict())
    # MusicgenForCausalLM has no text projection: ours is the identity here
    state["text_proj.weight"], state["text_proj.bias"] = torch.eye(DIM), torch.zeros(DIM)
    lm.load_state_dict(state, strict=True)
    torch.manual_seed(3)
    seq = torch.randint(0, CARD + 1, (2, K, 9))
    states = torch.randn(2, 5, DIM)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        ref = hf_causal(
            input_ids=seq.reshape(2 * K, 9), encoder_hidden_states=states * mask[..., None], encoder_attention_mask=mask
        ).logits.reshape(2, K, 9, CARD)
        ours = lm(seq, states, mask)
    assert ours.shape == (2, K, 9, CARD)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_conditional_generation_logits_match_transformers(hf_full, ours_from_full):
    ids, mask, states = _text(hf_full)
    torch.manual_seed(4)
    seq = torch.randint(0, CARD + 1, (2, K, 8))
    with torch.no_grad():
        ref = hf_full(input_ids=ids, attention_mask=mask, decoder_input_ids=seq.reshape(2 * K, 8)).logits
        ours = ours_from_full(seq, states, mask)
    torch.testing.assert_close(ours, ref.reshape(2, K, 8, CARD), atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers_without_cfg(hf_full, ours_from_full):
    ids, mask, states = _text(hf_full)
    ref = _hf_generate_codes(hf_full, ids, mask, num_frames=12, guidance=1.0)
    ours = generate(ours_from_full, states, mask, num_frames=12, cfg_coef=1.0, top_k=1)
    assert ours.shape == ref.shape == (2, K, 12)
    assert torch.equal(ours, ref)


def test_greedy_generation_matches_transformers_with_cfg(hf_full, ours_from_full):
    ids, mask, states = _text(hf_full)
    ref = _hf_generate_codes(hf_full, ids, mask, num_frames=12, guidance=3.0)
    ours = generate(ours_from_full, states, mask, num_frames=12, cfg_coef=3.0, top_k=1)
    assert torch.equal(ours, ref)
    # and CFG changes the result on these weights, so the comparison above is not vacuous
    assert not torch.equal(ref, _hf_generate_codes(hf_full, ids, mask, num_frames=12, guidance=1.0))


def test_static_decode_step_matches_eager(hf_full, ours_from_full):
    _, mask, states = _text(hf_full)
    eager = generate(ours_from_full, states, mask, num_frames=10, cfg_coef=3.0, top_k=1, static=False)
    static = generate(ours_from_full, states, mask, num_frames=10, cfg_coef=3.0, top_k=1, static=True)
    assert torch.equal(eager, static)


def test_prompt_codes_continue_a_transformers_generation(hf_full, ours_from_full):
    ids, mask, states = _text(hf_full)
    ref = _hf_generate_codes(hf_full, ids, mask, num_frames=12, guidance=3.0)
    # forcing the first 5 frames of a greedy run must reproduce the rest of it (window continuation)
    ours = generate(ours_from_full, states, mask, num_frames=12, prompt_codes=ref[..., :5], cfg_coef=3.0, top_k=1)
    assert torch.equal(ours, ref)


def test_transformers_names_round_trip(hf_full):
    theirs = {n: t for n, t in hf_full.state_dict().items() if n.startswith(("decoder.", "enc_to_dec_proj."))}
    back = lm_state_to_transformers(lm_state_from_transformers(theirs), layout="conditional")
    assert set(back) == {n for n in theirs if "embed_positions" not in n}
    assert all(back[n] is theirs[n] for n in back)


def test_causal_layout_names_load_into_transformers(hf_causal):
    from transformers import MusicgenForCausalLM

    ours = lm_state_from_transformers(hf_causal.state_dict())
    ours["text_proj.weight"], ours["text_proj.bias"] = torch.eye(DIM), torch.zeros(DIM)
    fresh = MusicgenForCausalLM(hf_causal.config)
    missing, unexpected = fresh.load_state_dict(lm_state_to_transformers(ours, layout="causal"), strict=False)
    assert not unexpected
    assert all("embed_positions" in n for n in missing)


def test_config_round_trips_through_transformers_dict(hf_causal):
    cfg = lm_config_from_transformers(hf_causal.config.to_dict(), text_dim=DIM)
    assert lm_config_from_transformers(lm_config_to_transformers(cfg), text_dim=DIM) == cfg
    assert (cfg.num_layers, cfg.dim, cfg.num_heads, cfg.ffn_dim, cfg.card) == (2, DIM, 4, 128, CARD)


@pytest.mark.parametrize("override", [{"audio_channels": 2}, {"scale_embedding": True}])
def test_unsupported_transformers_configs_are_refused(hf_causal, override):
    with pytest.raises(ConfigError):
        lm_config_from_transformers({**hf_causal.config.to_dict(), **override}, text_dim=DIM)


def test_unknown_tensor_names_are_refused(hf_causal):
    state = dict(hf_causal.state_dict())
    state["model.decoder.layers.0.self_attn.q_proj.bias"] = torch.zeros(DIM)
    with pytest.raises(CheckpointError):
        lm_state_from_transformers(state)


def _audiocraft_state(lm: MusicGenLM) -> dict[str, torch.Tensor]:
    """Our weights written under audiocraft's LM names (lm.py / transformer.py: q, k, v stacked in in_proj)."""
    state = lm.state_dict()
    out = {f"emb.{k}.weight": state[f"emb.{k}.weight"] for k in range(K)}
    for i in range(lm.cfg.num_layers):
        p, t = f"layers.{i}.", f"transformer.layers.{i}."
        for ours, theirs in (("self_attn", "self_attn"), ("cross_attn", "cross_attention")):
            qkv = [state[f"{p}{ours}.{x}.weight"] for x in "qkv"]
            out[f"{t}{theirs}.in_proj_weight"] = torch.cat(qkv)
            out[f"{t}{theirs}.out_proj.weight"] = state[f"{p}{ours}.out.weight"]
        for norm in ("norm1", "norm_cross", "norm2"):
            for kind in ("weight", "bias"):
                out[f"{t}{norm}.{kind}"] = state[f"{p}{norm}.{kind}"]
        out[f"{t}linear1.weight"] = state[f"{p}ffn.fc1.weight"]
        out[f"{t}linear2.weight"] = state[f"{p}ffn.fc2.weight"]
    out.update({f"out_norm.{x}": state[f"norm_out.{x}"] for x in ("weight", "bias")})
    out.update({f"linears.{k}.weight": state[f"heads.{k}.weight"] for k in range(K)})
    out.update({f"condition_provider.conditioners.description.output_proj.{x}": state[f"text_proj.{x}"]
                for x in ("weight", "bias")})  # fmt: skip
    out["condition_provider.conditioners.description.t5.encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(
        1
    )
    return out


def test_audiocraft_names_convert_to_the_same_model(ours_from_full):
    converted = lm_state_from_audiocraft(_audiocraft_state(ours_from_full))
    own = ours_from_full.state_dict()
    assert set(converted) == set(own)
    assert all(torch.equal(converted[n], own[n]) for n in own)


def test_audiocraft_separate_cross_attention_projections_win(ours_from_full):
    state = _audiocraft_state(ours_from_full)
    trained_q = torch.randn(DIM, DIM)
    state["transformer.layers.1.cross_attention.q_proj.weight"] = trained_q
    assert torch.equal(lm_state_from_audiocraft(state)["layers.1.cross_attn.q.weight"], trained_q)


def test_unfused_decode_path_matches_transformers_too(hf_full, ours_from_full, monkeypatch):
    # models too big for stacked decode weights (and for one thread) take the plain path: same tokens
    import engine.model.generate as gen

    monkeypatch.setattr(gen, "decode_threads", lambda lm: None)
    ids, mask, states = _text(hf_full)
    ref = _hf_generate_codes(hf_full, ids, mask, num_frames=12, guidance=3.0)
    assert torch.equal(generate(ours_from_full, states, mask, num_frames=12, cfg_coef=3.0, top_k=1), ref)


def test_parity_through_the_transformers_layout_loader(tmp_path):
    """The same check end to end: a tiny MusicgenForConditionalGeneration saved with save_pretrained, read back by
    load_model (config.json + model.safetensors + tokenizer), against transformers on the same weights."""
    from engine.tools.tiny_models import tiny_musicgen, write_transformers_layout
    from engine.weights import load_model

    hf_model = tiny_musicgen(seed=5)
    _randomize(hf_model.decoder)
    _randomize(hf_model.enc_to_dec_proj)
    path = write_transformers_layout(tmp_path / "musicgen-tiny", model=hf_model)
    model = load_model(path, device="cpu", dtype="fp32")
    k, card = model.lm.cfg.num_codebooks, model.lm.cfg.card
    prompts = ["Music piece. Instruct: Only Drums.", "add piano"]  # different lengths: one padded row
    batch = model.text.tokenizer(prompts, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert not mask.all()
    states, our_mask = model.text.encode(prompts)
    seq = torch.randint(0, card + 1, (2, k, 8), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, decoder_input_ids=seq.reshape(2 * k, 8)).logits
        ours = model.lm(seq, states, our_mask)
    torch.testing.assert_close(ours, ref.reshape(2, k, 8, card), atol=1e-4, rtol=0)
    codes = _hf_generate_codes(hf_model, ids, mask, num_frames=10, guidance=3.0)
    assert torch.equal(generate(model.lm, states, our_mask, num_frames=10, cfg_coef=3.0, top_k=1), codes)
