"""Instruct-MusicGen adapters: audio fusion (condition prefix, gates) and text LoRA; the training loss."""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import CheckpointError, ConfigError
from engine.model import delay
from engine.model.config import FusionConfig, LMConfig, preset
from engine.model.fusion import LoRALinear
from engine.model.lm import MusicGenLM, adapter_parameter_count

CFG = LMConfig(num_layers=3, dim=32, num_heads=4, ffn_dim=64, num_codebooks=4, card=32, text_dim=16)
FUSION = FusionConfig(fused_layers=2, lora_rank=4, lora_alpha=8, cond_frames=21)


def _pair(seed: int = 0) -> tuple[MusicGenLM, MusicGenLM]:
    """A base model and a fused model sharing its base weights (adapters freshly initialised)."""
    torch.manual_seed(seed)
    base = MusicGenLM(CFG).eval()
    fused = MusicGenLM(CFG, FUSION).eval()
    missing, unexpected = fused.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(MusicGenLM.is_adapter_name(n) for n in missing)
    return base, fused


def _inputs(seed: int = 1, frames: int = 10, cond_frames: int = 10):
    torch.manual_seed(seed)
    seq = torch.randint(0, CFG.card + 1, (2, 4, frames))
    text = torch.randn(2, 5, CFG.text_dim)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    cond = torch.randint(0, CFG.card, (2, 4, cond_frames))
    return seq, text, mask, cond


def _open_adapters(lm: MusicGenLM, seed: int = 5) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        lm.fusion.gates.normal_()
        for name, p in lm.named_parameters():
            if name.endswith("lora_b"):
                p.normal_(0, 0.1)


def test_zero_gates_and_zero_lora_b_leave_the_base_model_unchanged():
    base, fused = _pair()
    seq, text, mask, cond = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(fused(seq, text, mask, cond), base(seq, text, mask), atol=1e-6, rtol=0)


def test_open_gates_make_the_condition_audio_matter():
    _, fused = _pair()
    _open_adapters(fused)
    seq, text, mask, cond = _inputs()
    other = torch.randint(0, CFG.card, cond.shape)
    with torch.no_grad():
        assert (fused(seq, text, mask, cond) - fused(seq, text, mask, other)).abs().max() > 1e-3


def test_lora_b_changes_only_through_the_text_path():
    base, fused = _pair()
    seq, text, mask, _ = _inputs()
    with torch.no_grad():
        fused.layers[0].cross_attn.q.lora_b.normal_()
        assert (fused(seq, text, mask) - base(seq, text, mask)).abs().max() > 1e-3
        # without text there is no cross-attention, so text LoRA has nothing to act on
        torch.testing.assert_close(fused(seq), base(seq), atol=1e-6, rtol=0)


def test_freeze_base_leaves_only_adapters_trainable():
    _, fused = _pair()
    fused.freeze_base()
    trainable = {n for n, p in fused.named_parameters() if p.requires_grad}
    expected = {"fusion.pos_emb", "fusion.gates", "fusion.merge_linear.0.weight", "fusion.merge_linear.1.weight"}
    expected |= {f"layers.{i}.cross_attn.{t}.lora_{ab}" for i in range(3) for t in "qv" for ab in "ab"}
    assert trainable == expected
    assert trainable == set(fused.adapter_state_dict())


def test_adapter_shapes_follow_the_method():
    _, fused = _pair()
    state = fused.adapter_state_dict()
    assert state["fusion.pos_emb"].shape == (FUSION.fused_layers + 1, FUSION.cond_frames, CFG.dim)
    assert state["fusion.merge_linear.0.weight"].shape == (CFG.dim, CFG.dim)
    assert not any(n.startswith("fusion.merge_linear") and n.endswith("bias") for n in state)
    assert state["fusion.gates"].shape == (FUSION.fused_layers,) and not state["fusion.gates"].any()
    assert state["layers.2.cross_attn.q.lora_a"].shape == (FUSION.lora_rank, CFG.dim)
    assert state["layers.2.cross_attn.v.lora_b"].shape == (CFG.dim, FUSION.lora_rank)
    assert not state["layers.2.cross_attn.v.lora_b"].any()


def test_large_adapter_count_is_264m_about_8_percent_of_the_base():
    adapters, base = adapter_parameter_count(preset("large"), FusionConfig())
    print(f"\nlarge (48 x 2048, all layers fused, LoRA r=32 on cross q,v): adapters {adapters / 1e6:.1f}M, "
          f"base {base / 1e9:.2f}B, ratio {adapters / base:.1%}")  # fmt: skip
    # 49 x 501 x 2048 positions + 48 merge_linear 2048^2 + 48 gates + 48 x 2 x LoRA(2 x 32 x 2048)
    assert adapters == 49 * 501 * 2048 + 48 * 2048 * 2048 + 48 + 48 * 2 * 2 * 32 * 2048
    assert 263e6 < adapters < 265e6
    assert 0.075 < adapters / base < 0.085


def test_one_fused_layer_follows_the_method_equations():
    cfg = LMConfig(num_layers=1, dim=16, num_heads=2, ffn_dim=32, num_codebooks=2, card=8, text_dim=8)
    torch.manual_seed(0)
    lm = MusicGenLM(cfg, FusionConfig(lora_rank=0, cond_frames=8)).eval()
    with torch.no_grad():
        lm.fusion.gates.fill_(0.7)
    layer, fusion = lm.layers[0], lm.fusion
    seq = torch.randint(0, 9, (1, 2, 6))
    cond = torch.randint(0, 8, (1, 2, 3))  # 3 frames + the special token = 4 condition frames < 6 steps

    def heads(x):
        return x.view(1, -1, 2, 8).transpose(1, 2)

    with torch.no_grad():
        # condition stream: o = pos_emb[0]; h = norm1(o) + merge(sum of code embeddings) + pos_emb[1]
        codes = torch.cat([cond, torch.full((1, 2, 1), 8)], dim=-1)
        emb_c = lm.emb[0](codes[:, 0]) + lm.emb[1](codes[:, 1])
        o = fusion.pos_emb[0, :4][None]
        h = layer.norm1(o) + fusion.merge_linear[0](emb_c) + fusion.pos_emb[1, :4][None]
        qc, kc, vc = (heads(getattr(layer.self_attn, x)(h)) for x in "qkv")
        # main stream, self-attention only (no text), the gated prefix term added before the output projection
        x = lm.emb[0](seq[:, 0]) + lm.emb[1](seq[:, 1]) + lm.positions(0, 6)
        hx = layer.norm1(x)
        q, k, v = (heads(getattr(layer.self_attn, n)(hx)) for n in "qkv")
        steps = torch.tensor([0, 1, 2, 2, 2, 2])  # step s uses condition frame s, clamped to the last code frame
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
        causal = torch.ones(6, 6, dtype=torch.bool).tril()
        main = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        prefix = (((q + qc[:, :, steps]) @ kc.transpose(-1, -2)) / math.sqrt(8)).softmax(-1) @ vc
        a = (main + 0.7 * prefix).transpose(1, 2).reshape(1, 6, 16)
        x = x + layer.self_attn.out(a)
        x = lm.norm_out(x + layer.ffn(layer.norm2(x)))
        expected = torch.stack([head(x) for head in lm.heads], dim=1)
        torch.testing.assert_close(lm(seq, cond_codes=cond), expected, atol=1e-5, rtol=0)


def test_cached_decode_with_the_prefix_equals_the_full_pass():
    _, fused = _pair()
    _open_adapters(fused)
    seq, text, mask, cond = _inputs(frames=14, cond_frames=8)  # steps run past the 9 condition frames
    with torch.no_grad():
        full = fused(seq, text, mask, cond)
        ctx = fused.context(text, mask, cond)
        ctx.cache = fused.new_cache(2, 14)
        parts = [fused.run(seq[..., :3], ctx, 0)] + [fused.run(seq[..., s : s + 1], ctx, s) for s in range(3, 14)]
    torch.testing.assert_close(torch.cat(parts, dim=2), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_condition_pass_causality_is_configurable(causal):
    torch.manual_seed(0)
    lm = MusicGenLM(CFG, FusionConfig(fused_layers=2, lora_rank=4, cond_frames=21, cond_causal=causal)).eval()
    _, _, _, cond = _inputs(cond_frames=10)
    changed = cond.clone()
    changed[..., -1] = (changed[..., -1] + 1) % CFG.card
    with torch.no_grad():
        first, second = lm.cond_prefix(cond)[-1], lm.cond_prefix(changed)[-1]
    earlier_same = torch.allclose(first.k[:, :, :9], second.k[:, :, :9], atol=1e-6)
    # causal (the official pass): a later condition frame never reaches an earlier one
    assert earlier_same == causal


def test_condition_longer_than_the_window_is_refused():
    _, fused = _pair()
    seq, text, mask, _ = _inputs()
    too_long = torch.randint(0, CFG.card, (2, 4, FUSION.cond_frames))  # + special token = cond_frames + 1
    with pytest.raises(ConfigError, match="window"):
        fused(seq, text, mask, too_long)


def test_condition_audio_needs_a_fused_model():
    base, _ = _pair()
    seq, text, mask, cond = _inputs()
    with pytest.raises(ConfigError):
        base(seq, text, mask, cond)


def test_lora_linear_adds_the_scaled_low_rank_update():
    torch.manual_seed(0)
    lora = LoRALinear(6, 5, rank=2, alpha=8)
    with torch.no_grad():
        lora.lora_b.normal_()
    x = torch.randn(3, 6)
    expected = x @ lora.weight.T + 4.0 * (x @ lora.lora_a.T) @ lora.lora_b.T
    torch.testing.assert_close(lora(x), expected)


def test_adapter_state_round_trips_and_wrong_shapes_are_refused():
    _, fused = _pair()
    _open_adapters(fused)
    _, other = _pair()  # same base weights, fresh adapters
    other.load_adapter_state_dict(fused.adapter_state_dict())
    seq, text, mask, cond = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(other(seq, text, mask, cond), fused(seq, text, mask, cond))
    bad = fused.adapter_state_dict()
    bad["fusion.gates"] = torch.zeros(5)
    with pytest.raises(CheckpointError):
        other.load_adapter_state_dict(bad)
    with pytest.raises(CheckpointError):
        other.load_adapter_state_dict({"fusion.gates": torch.zeros(2)})


def test_loss_is_cross_entropy_over_the_valid_delay_positions():
    _, fused = _pair()
    _open_adapters(fused)
    torch.manual_seed(2)
    codes = torch.randint(0, CFG.card, (2, 4, 9))
    _, text, mask, cond = _inputs(cond_frames=9)
    loss, per_codebook = fused.loss(codes, text, mask, cond)
    # reference in frame terms: frame t of codebook k is predicted at sequence position t + k, which the model
    # sees when t + k < T (the T + 1 "valid" steps of audiocraft); the last k frames of codebook k are dropped
    with torch.no_grad():
        logp = fused(delay.build(codes, CFG.card)[..., :9], text, mask, cond).log_softmax(-1)
    expected = []
    for k in range(4):
        terms = [-logp[b, k, t + k, codes[b, k, t]] for b in range(2) for t in range(9 - k)]
        expected.append(torch.stack(terms).mean())
    torch.testing.assert_close(per_codebook.detach(), torch.stack(expected), atol=1e-5, rtol=0)
    torch.testing.assert_close(loss.detach(), torch.stack(expected).mean(), atol=1e-5, rtol=0)


def test_loss_of_uniform_logits_is_log_card():
    base, _ = _pair()
    with torch.no_grad():
        for head in base.heads:
            head.weight.zero_()
    codes = torch.randint(0, CFG.card, (1, 4, 6))
    loss, per_codebook = base.loss(codes, torch.randn(1, 3, CFG.text_dim), None)
    torch.testing.assert_close(per_codebook, torch.full((4,), math.log(CFG.card)))
    assert loss.shape == ()


def test_loss_gradients_reach_only_adapters_after_freeze_base():
    _, fused = _pair()
    fused.train()
    fused.freeze_base()
    codes = torch.randint(0, CFG.card, (2, 4, 8))
    _, text, mask, cond = _inputs(cond_frames=8)
    loss, _ = fused.loss(codes, text, mask, cond)
    loss.backward()
    with_grad = {n for n, p in fused.named_parameters() if p.grad is not None}
    assert with_grad and all(MusicGenLM.is_adapter_name(n) for n in with_grad)
    # zero gates still pass gradient to the gates themselves: the adapter can start learning
    assert fused.fusion.gates.grad.abs().sum() > 0


def test_loss_refuses_codes_outside_the_codebook():
    base, _ = _pair()
    from engine.errors import DataError

    with pytest.raises(DataError):
        base.loss(torch.full((1, 4, 5), CFG.card), torch.randn(1, 3, CFG.text_dim), None)


def test_empty_condition_audio_is_refused():
    _, fused = _pair()
    seq, text, mask, _ = _inputs()
    with pytest.raises(ConfigError, match="empty"):
        fused(seq, text, mask, torch.zeros(2, 4, 0, dtype=torch.long))


# ---- the small-scale start: zero-output init and the prefix alignment -----------------------------------------------


def test_zero_output_init_leaves_the_model_unchanged_at_any_gate_yet_trains_merge_linear():
    from engine.model.fusion import zero_output_init

    base, fused = _pair()
    zero_output_init(fused)
    with torch.no_grad():
        fused.fusion.gates.fill_(0.7)
    seq, text, mask, cond = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(fused(seq, text, mask, cond), base(seq, text, mask), atol=1e-5, rtol=0)
    codes = torch.randint(0, CFG.card, (2, 4, 10))
    fused.freeze_base()
    loss, _ = fused.loss(codes, text, mask, cond)
    loss.backward()
    # Unlike zero gates (no gradient past the gate), every merge_linear and the positional table learn.
    assert all(float(m.weight.grad.abs().sum()) > 0 for m in fused.fusion.merge_linear)
    assert float(fused.fusion.pos_emb.grad.abs().sum()) > 0


def test_official_zero_gates_give_merge_linear_no_gradient():
    _, fused = _pair()
    fused.freeze_base()
    seq, text, mask, cond = _inputs()
    loss, _ = fused.loss(torch.randint(0, CFG.card, (2, 4, 10)), text, mask, cond)
    loss.backward()
    assert all(m.weight.grad is None or float(m.weight.grad.abs().sum()) == 0 for m in fused.fusion.merge_linear)


def test_align_prefix_puts_the_attention_of_step_s_on_condition_frame_s():
    from engine.model.fusion import align_prefix, prefix_alignment

    _, fused = _pair()
    torch.manual_seed(3)
    batches = [
        (torch.randint(0, CFG.card, (4, 4, 20)), torch.randn(4, 5, CFG.text_dim), None,
         torch.randint(0, CFG.card, (4, 4, 20)))
        for _ in range(4)
    ]  # fmt: skip

    def mass() -> float:
        from engine.model.lm import Context

        codes, text, _, cond = batches[0]
        ctx = fused.text_context(text, None)
        ctx.queries = {}
        with torch.no_grad():
            fused.run(delay.build(codes, fused.special_token)[..., :20], ctx)
            _, _, masses, _ = prefix_alignment(fused, ctx.queries, cond)
        assert isinstance(ctx, Context) and len(masses) == FUSION.fused_layers
        return sum(masses) / len(masses)

    before = mass()
    with torch.no_grad():
        fused.fusion.gates.fill_(0.25)
    result = align_prefix(fused, (batches[i % 4] for i in range(150)), lr=0.05)
    assert result["steps"] == 150
    # The gates are left as they were: the caller decides where they start.
    assert torch.equal(fused.fusion.gates, torch.full_like(fused.fusion.gates, 0.25))
    # 3 of 21 frames is 0.14 for uniform attention; the fit must put most of the mass there.
    after = mass()
    assert after > 0.6 and after > 2 * before, (before, after)
    assert all(not m.weight.detach().any() for m in fused.fusion.merge_linear)  # content comes in training
