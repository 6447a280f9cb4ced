"""generate(): sampling, seeds, prompts, condition audio, cancellation, progress, reduced precision."""

from __future__ import annotations

import pytest
import torch

from engine.errors import Cancelled, ConfigError, DataError
from engine.model import static_decode
from engine.model.config import FusionConfig, LMConfig
from engine.model.fast_decode import prepare_decode
from engine.model.generate import generate, sample
from engine.model.lm import MusicGenLM

CFG = LMConfig(num_layers=2, dim=32, num_heads=4, ffn_dim=64, num_codebooks=4, card=32, text_dim=16)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return MusicGenLM(CFG).eval()


@pytest.fixture(scope="module")
def fused():
    torch.manual_seed(0)
    model = MusicGenLM(CFG, FusionConfig(lora_rank=4, cond_frames=21)).eval()
    with torch.no_grad():
        model.fusion.gates.fill_(1.0)
    return model


def _text(batch: int = 2):
    torch.manual_seed(1)
    return torch.randn(batch, 4, CFG.text_dim), torch.ones(batch, 4, dtype=torch.bool)


def test_output_is_codes_of_the_requested_length(lm):
    states, mask = _text()
    codes = generate(lm, states, mask, num_frames=7, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 4, 7) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < CFG.card  # never the special token


def test_same_seed_same_codes_other_seed_other_codes(lm):
    states, mask = _text()

    def run(seed):
        return generate(lm, states, mask, num_frames=12, top_k=0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_top_k_one_is_greedy(lm):
    states, mask = _text()
    greedy = generate(lm, states, mask, num_frames=8, top_k=1)
    zero_temperature = generate(lm, states, mask, num_frames=8, temperature=0.0)
    assert torch.equal(greedy, zero_temperature)


def test_sample_draws_only_from_the_top_k():
    torch.manual_seed(0)
    logits = torch.randn(64, 50)
    allowed = logits.topk(3, dim=-1).indices
    drawn = sample(logits, top_k=3, generator=torch.Generator().manual_seed(0))
    assert (allowed == drawn[:, None]).any(dim=-1).all()


def test_sample_top_p_keeps_the_smallest_set_holding_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(400, 1)
    drawn = sample(logits, top_k=0, top_p=0.7, generator=torch.Generator().manual_seed(0))
    # 0.5 alone holds < 0.7, 0.5 + 0.3 holds it: only tokens 0 and 1 may come out, both do
    assert set(drawn.tolist()) == {0, 1}


def test_sample_follows_the_softmax_distribution():
    target = torch.tensor([0.6, 0.25, 0.1, 0.05])
    drawn = sample(target.log().repeat(20000, 1), top_k=0, generator=torch.Generator().manual_seed(0))
    frequencies = torch.bincount(drawn, minlength=4).float() / drawn.numel()
    assert torch.allclose(frequencies, target, atol=0.015)


def test_sample_with_a_generator_per_row_draws_each_row_as_it_would_alone():
    logits = torch.randn(3, 4, 50, generator=torch.Generator().manual_seed(1))  # [rows, K, card]
    seeds = (5, 6, 7)
    alone = [
        sample(logits[i : i + 1], top_k=20, generator=torch.Generator().manual_seed(s)) for i, s in enumerate(seeds)
    ]
    together = sample(logits, top_k=20, generator=[torch.Generator().manual_seed(s) for s in seeds])
    assert torch.equal(together, torch.cat(alone))
    assert not torch.equal(alone[0], sample(logits[:1], top_k=20, generator=torch.Generator().manual_seed(6)))
    with pytest.raises(ConfigError, match="cannot split 3 rows"):
        sample(logits, top_k=20, generator=[torch.Generator(), torch.Generator()])


def test_low_temperature_concentrates_on_the_argmax():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(200, 1)
    drawn = sample(logits, top_k=0, temperature=0.05, generator=torch.Generator().manual_seed(0))
    assert (drawn == 0).all()


def test_prompt_codes_are_forced_as_the_first_frames(lm):
    states, mask = _text()
    prompt = torch.randint(0, CFG.card, (2, 4, 5))
    codes = generate(lm, states, mask, num_frames=9, prompt_codes=prompt, generator=torch.Generator().manual_seed(0))
    assert torch.equal(codes[..., :5], prompt)


def test_a_prompt_as_long_as_the_output_is_returned_unchanged(lm):
    states, mask = _text()
    prompt = torch.randint(0, CFG.card, (2, 4, 6))
    assert torch.equal(generate(lm, states, mask, num_frames=6, prompt_codes=prompt), prompt)


def test_condition_audio_steers_a_fused_model(fused):
    states, mask = _text()
    torch.manual_seed(2)
    cond_a = torch.randint(0, CFG.card, (2, 4, 10))
    cond_b = torch.randint(0, CFG.card, (2, 4, 10))
    a = generate(fused, states, mask, num_frames=10, cond_codes=cond_a, top_k=1)
    b = generate(fused, states, mask, num_frames=10, cond_codes=cond_b, top_k=1)
    assert not torch.equal(a, b)


def test_static_step_matches_eager_with_condition_audio(fused):
    states, mask = _text()
    cond = torch.randint(0, CFG.card, (2, 4, 6))  # shorter than the output: later steps use the last code frame
    eager = generate(fused, states, mask, num_frames=10, cond_codes=cond, top_k=1, static=False)
    static = generate(fused, states, mask, num_frames=10, cond_codes=cond, top_k=1, static=True)
    assert torch.equal(eager, static)


def test_cfg_uses_the_null_condition(lm):
    states, mask = _text()
    plain = generate(lm, states, mask, num_frames=10, cfg_coef=1.0, top_k=1)
    guided = generate(lm, states, mask, num_frames=10, cfg_coef=3.0, top_k=1)
    assert not torch.equal(plain, guided)


def test_progress_reports_every_step_up_to_the_total(lm):
    states, mask = _text()
    calls = []
    generate(lm, states, mask, num_frames=6, progress=lambda step, total: calls.append((step, total)))
    # 6 frames + 4 codebooks = 10 pattern steps; step 0 is the start token
    assert calls == [(i, 9) for i in range(1, 10)]


def test_should_stop_cancels_between_steps(lm):
    states, mask = _text()
    polls = []

    def stop():
        polls.append(1)
        return len(polls) >= 3

    with pytest.raises(Cancelled):
        generate(lm, states, mask, num_frames=50, should_stop=stop)
    assert len(polls) == 3


def test_bfloat16_model_decodes_with_a_bfloat16_cache():
    torch.manual_seed(0)
    model = MusicGenLM(CFG).eval().to(torch.bfloat16)
    states, mask = _text()
    caches = []
    original = model.new_cache

    def spy(batch, max_len):
        caches.extend(original(batch, max_len))
        return caches

    model.new_cache = spy
    codes = generate(model, states, mask, num_frames=8, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 4, 8)
    assert caches and all(c.k.dtype == torch.bfloat16 and c.v.dtype == torch.bfloat16 for c in caches)


def test_bfloat16_greedy_mostly_agrees_with_float32():
    torch.manual_seed(0)
    model = MusicGenLM(CFG).eval()
    states, mask = _text()
    full = generate(model, states, mask, num_frames=6, top_k=1, cfg_coef=1.0)
    half = generate(model.to(torch.bfloat16), states, mask, num_frames=6, top_k=1, cfg_coef=1.0)
    assert (full == half).float().mean() > 0.5


def test_generation_without_text_is_unconditional(lm):
    codes = generate(lm, None, None, num_frames=5, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (1, 4, 5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_frames": 0},
        {"num_frames": 4, "prompt_codes": torch.zeros(2, 4, 5, dtype=torch.long)},
        {"num_frames": 4, "prompt_codes": torch.zeros(3, 4, 2, dtype=torch.long)},
    ],
)
def test_inconsistent_requests_raise_config_errors(lm, kwargs):
    states, mask = _text()
    with pytest.raises(ConfigError):
        generate(lm, states, mask, **kwargs)


def test_out_of_range_prompt_codes_raise_a_data_error(lm):
    states, mask = _text()
    with pytest.raises(DataError):
        generate(lm, states, mask, num_frames=4, prompt_codes=torch.full((2, 4, 2), CFG.card))


def test_condition_audio_on_a_base_model_raises_a_config_error(lm):
    states, mask = _text()
    with pytest.raises(ConfigError):
        generate(lm, states, mask, num_frames=4, cond_codes=torch.zeros(2, 4, 3, dtype=torch.long))


def test_small_models_decode_on_one_thread_and_restore_the_setting(lm):
    from engine.model.generate import decode_threads

    states, mask = _text()
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generate(lm, states, mask, num_frames=3, progress=lambda step, total: seen.append(torch.get_num_threads()))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert decode_threads(lm) == 1 and set(seen) == {1}


def test_large_models_keep_the_callers_threads():
    from engine.model.generate import decode_threads

    # 2 layers of 1024 wide with 2048-way heads: ~144 MB of fp32 weights read per step, worth a second thread
    wide = MusicGenLM(LMConfig(num_layers=2, dim=1024, num_heads=16, ffn_dim=4096, card=2048, text_dim=16))
    assert decode_threads(wide) is None


@pytest.mark.parametrize("fuse", [False, True])
def test_static_step_traces_as_one_graph_and_matches_the_full_pass(fused, fuse):
    # CUDA graphs need the step captured whole: dynamo must trace it without a graph break (checked on CPU with the
    # eager backend; the GPU path compiles the same function with mode="reduce-overhead"). The step runs in a
    # workspace: text padded with masked tokens, condition padded to the adapter's window, a longer cache.
    states, mask = _text()
    torch.manual_seed(3)
    seq = torch.randint(0, CFG.card + 1, (2, 4, 9))
    cond = torch.randint(0, CFG.card, (2, 4, 5))
    with torch.inference_mode():
        full = fused(seq, states, mask, cond)
        call = fused.context(*static_decode.pad_text(states, mask), cond)
        work = static_decode.workspace(fused, call, 2, 9, "compile", fuse)
        assert work.ctx.prefix[0].num_frames == 21 and work.ctx.cache[0].max_len == 23  # padded, not the call's
        step = torch.compile(work.step, backend="eager", fullgraph=True, dynamic=False)
        parts = [fused.run(seq[..., :2], work.ctx, 0)]
        parts += [step(seq[..., s : s + 1], torch.tensor([s])) for s in range(2, 9)]
    torch.testing.assert_close(torch.cat(parts, dim=2), full, atol=1e-5, rtol=0)
    static_decode.release(fused)


def test_one_token_decode_steps_equal_the_full_pass_with_adapters_padding_and_cfg(adapted_lm):
    # the eager step of small models (ctx.plan: folded cross-attention, prescaled weights) against the plain pass;
    # row 1 has text padding, row 2 is the CFG null condition (no text at all)
    model = adapted_lm(CFG)
    states = torch.randn(3, 5, CFG.text_dim)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    states[2] = 0
    seq = torch.randint(0, CFG.card + 1, (3, 4, 12))
    cond = torch.randint(0, CFG.card, (3, 4, 6))  # shorter than the sequence: late steps use the last frame
    with torch.inference_mode():
        full = model(seq, states, mask, cond)
        ctx = model.context(states, mask, cond)
        ctx.cache = model.new_cache(3, 12)
        prepare_decode(model, ctx, 12, fuse=True)
        assert ctx.plan is not None
        parts = [model.run(seq[..., :2], ctx, 0)] + [model.run(seq[..., s : s + 1], ctx, s) for s in range(2, 12)]
    torch.testing.assert_close(torch.cat(parts, dim=2), full, atol=1e-5, rtol=0)


def test_one_token_decode_steps_without_text_equal_the_full_pass(lm):
    seq = torch.randint(0, CFG.card + 1, (2, 4, 8))
    with torch.inference_mode():
        full = lm(seq)
        ctx = lm.context(None, None)
        ctx.cache = lm.new_cache(2, 8)
        prepare_decode(lm, ctx, 8, fuse=True)
        parts = [lm.run(seq[..., s : s + 1], ctx, s) for s in range(8)]
    torch.testing.assert_close(torch.cat(parts, dim=2), full, atol=1e-5, rtol=0)


def test_decode_follows_weights_changed_in_place_between_generations():
    # stacked/prescaled decode weights are remembered across calls; an in-place change must not be served stale
    import copy

    torch.manual_seed(0)
    model = MusicGenLM(CFG).eval()
    states, mask = _text()
    generate(model, states, mask, num_frames=6, top_k=1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("heads.", "emb.", "layers.0.self_attn", "layers.1.ffn")):
                param.mul_(-1.5)
    again = generate(model, states, mask, num_frames=6, top_k=1)
    fresh = generate(copy.deepcopy(model), states, mask, num_frames=6, top_k=1)
    assert torch.equal(again, fresh)


def test_decode_weights_are_remembered_while_the_model_is_unchanged(lm):
    states, mask = _text()
    generate(lm, states, mask, num_frames=3, top_k=1)
    first = {name: value for name, (_, value) in lm.derived.entries.items()}
    generate(lm, states, mask, num_frames=3, top_k=1)
    assert first and all(lm.derived.entries[name][1] is value for name, value in first.items())


def _teacher_forced_steps(model, states, mask, seq, fuse):
    with torch.inference_mode():
        ctx = model.context(states, mask)
        ctx.cache = model.new_cache(seq.shape[0], seq.shape[-1])
        prepare_decode(model, ctx, seq.shape[-1], fuse=fuse)
        parts = [model.run(seq[..., :3], ctx, 0)]
        parts += [model.run(seq[..., s : s + 1], ctx, s) for s in range(3, seq.shape[-1])]
    return ctx, torch.cat(parts, dim=2)


def test_large_model_decode_folds_the_cross_attention_for_a_short_text():
    # the plain (unstacked) decode path folds the cross-attention through the text when that reads fewer bytes:
    # 2 rows x 4 heads x 5 tokens = 40 folded rows per tensor, fewer than the 64 of each projection: folded, same result
    torch.manual_seed(0)
    model = MusicGenLM(LMConfig(num_layers=2, dim=64, num_heads=4, ffn_dim=64, card=32, text_dim=16)).eval()
    states, mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    seq = torch.randint(0, 33, (2, 4, 9))
    ctx, steps = _teacher_forced_steps(model, states, mask, seq, fuse=False)
    assert ctx.cross_folded is not None and ctx.plan is None
    torch.testing.assert_close(steps, model(seq, states, mask), atol=1e-5, rtol=0)


def test_large_model_decode_keeps_the_projections_for_a_long_text():
    torch.manual_seed(0)
    model = MusicGenLM(LMConfig(num_layers=2, dim=64, num_heads=4, ffn_dim=64, card=32, text_dim=16)).eval()
    states, mask = torch.randn(2, 9, 16), torch.ones(2, 9, dtype=torch.bool)  # 2 x 4 x 9 = 72 rows > 64
    seq = torch.randint(0, 33, (2, 4, 9))
    ctx, steps = _teacher_forced_steps(model, states, mask, seq, fuse=False)
    assert ctx.cross_folded is None
    torch.testing.assert_close(steps, model(seq, states, mask), atol=1e-5, rtol=0)


def test_the_text_padding_bias_stays_finite_when_autocast_casts_it_to_half_precision():
    lm = MusicGenLM(LMConfig(num_layers=1, dim=16, num_heads=2, ffn_dim=32, card=8, text_dim=8))
    mask = torch.tensor([[True, False], [False, False]])  # the second row: all padding, the CFG null condition
    ctx = lm.text_context(torch.randn(2, 2, 8), mask)
    for dtype in (torch.bfloat16, torch.float16):
        bias = ctx.cross_bias.to(dtype)
        assert torch.isfinite(bias).all(), dtype  # a row of -inf would be NaN after the softmax
        assert torch.equal(bias.softmax(-1)[1, 0, 0], torch.full((2,), 0.5, dtype=dtype))


def test_teacher_forcing_on_the_greedy_tokens_reproduces_them_and_their_logits(lm):
    # the diagnostic hooks `imusic bench decode` compares step modes with: on_logits sees every decode step's guided
    # logits; teacher_codes replaces the draws, so a sampling decode on the greedy history is the greedy decode
    states, mask = _text()
    greedy_logits: dict[int, torch.Tensor] = {}
    greedy = generate(lm, states, mask, num_frames=9, top_k=1,
                      on_logits=lambda step, logits: greedy_logits.__setitem__(step, logits.clone()))  # fmt: skip
    steps = 9 + CFG.num_codebooks
    assert sorted(greedy_logits) == list(range(1, steps))  # step 0 is the start token; every later step is decoded
    assert all(logits.shape == (2, CFG.num_codebooks, CFG.card) for logits in greedy_logits.values())
    forced_logits: dict[int, torch.Tensor] = {}
    forced = generate(lm, states, mask, num_frames=9, generator=torch.Generator().manual_seed(5), teacher_codes=greedy,
                      on_logits=lambda step, logits: forced_logits.__setitem__(step, logits.clone()))  # fmt: skip
    assert torch.equal(forced, greedy)
    assert all(torch.equal(forced_logits[step], greedy_logits[step]) for step in greedy_logits)
    # the static step on the eager step's history: the same logits up to rounding (what the bench checks on CUDA)
    static_logits: dict[int, torch.Tensor] = {}
    generate(lm, states, mask, num_frames=9, top_k=1, static=True, teacher_codes=greedy,
             on_logits=lambda step, logits: static_logits.__setitem__(step, logits.clone()))  # fmt: skip
    for step, logits in greedy_logits.items():
        torch.testing.assert_close(static_logits[step], logits, atol=1e-4, rtol=0)
    static_decode.release(lm)


def test_teacher_codes_of_another_history_are_what_is_written(lm):
    states, mask = _text()
    history = torch.randint(0, CFG.card, (2, CFG.num_codebooks, 7), generator=torch.Generator().manual_seed(4))
    assert torch.equal(generate(lm, states, mask, num_frames=7, top_k=1, teacher_codes=history), history)
    prompt = history[..., :3].flip(0)  # a prompt stays forced over the teacher's frames
    codes = generate(lm, states, mask, num_frames=7, prompt_codes=prompt, teacher_codes=history)
    assert torch.equal(codes[..., :3], prompt) and torch.equal(codes[..., 3:], history[..., 3:])
    with pytest.raises(ConfigError, match="teacher codes"):
        generate(lm, states, mask, num_frames=8, teacher_codes=history)
