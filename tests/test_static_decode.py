"""The static decode's workspace: one shape and one set of buffers for windows and instructions of any length."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch._dynamo.utils import counters

from engine.model import static_decode
from engine.model.config import LMConfig
from engine.model.generate import generate
from engine.model.lm import MusicGenLM

CFG = LMConfig(num_layers=2, dim=32, num_heads=4, ffn_dim=64, num_codebooks=4, card=32, text_dim=16)


@pytest.fixture
def fused(adapted_lm):
    return adapted_lm(CFG)


# (frames, text tokens, condition frames, prompt frames): an editor's windows and instructions, longest first, so
# that a later, shorter generation would read what an earlier one left in the buffers
CALLS = [(20, 7, 20, 0), (12, 3, 12, 4), (20, 8, 20, 6), (5, 1, 5, 0), (9, 6, 9, 2)]


def _inputs(frames: int, tokens: int, cond_frames: int, prompt: int, batch: int = 1, seed: int = 0):
    torch.manual_seed(seed + 100 * frames + tokens)
    states = torch.randn(batch, tokens, CFG.text_dim)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[:, tokens // 2 + 1 :] = False  # some text padding of the call's own
    cond = torch.randint(0, CFG.card, (batch, CFG.num_codebooks, cond_frames))
    prompt_codes = torch.randint(0, CFG.card, (batch, CFG.num_codebooks, prompt)) if prompt else None
    return states, mask, {"num_frames": frames, "cond_codes": cond, "prompt_codes": prompt_codes}


def test_windows_and_instructions_of_any_length_share_one_workspace_and_decode_as_eager(fused):
    for frames, tokens, cond_frames, prompt in CALLS:
        states, mask, kwargs = _inputs(frames, tokens, cond_frames, prompt)
        eager = generate(fused, states, mask, top_k=1, static=False, **kwargs)
        static = generate(fused, states, mask, top_k=1, static=True, **kwargs)
        assert torch.equal(static, eager), (frames, tokens, cond_frames, prompt)
    (work,) = static_decode.workspaces(fused)
    assert work.ctx.cache[0].max_len == 23  # the adapter's longest window: 20 frames + 4 codebooks - 1
    assert work.ctx.prefix[0].num_frames == 21 and work.ctx.cross[0][0].shape[2] == 8


def test_sampled_static_decode_draws_the_same_tokens_as_eager(fused):
    states, mask, kwargs = _inputs(12, 5, 12, 3)
    eager = generate(fused, states, mask, static=False, generator=torch.Generator().manual_seed(4), **kwargs)
    static = generate(fused, states, mask, static=True, generator=torch.Generator().manual_seed(4), **kwargs)
    assert torch.equal(static, eager)


def test_each_row_count_and_text_bucket_has_its_own_workspace_and_release_drops_them(fused):
    for batch, tokens in [(1, 3), (2, 3), (1, 33), (1, 4)]:
        states, mask, kwargs = _inputs(8, tokens, 8, 0, batch=batch)
        generate(fused, states, mask, top_k=1, static=True, **kwargs)
    layouts = [(w.ctx.cache[0].k.shape[0], w.ctx.cross[0][0].shape[2]) for w in static_decode.workspaces(fused)]
    assert layouts == [(4, 8), (2, 40), (2, 8)]  # least recently used first; CFG doubles the rows; 3 and 4 tokens
    for tokens in (9, 17, 25):  # share a bucket of 8; three more layouts: the least recently used ones go
        states, mask, kwargs = _inputs(8, tokens, 8, 0)
        generate(fused, states, mask, top_k=1, static=True, **kwargs)
    layouts = [(w.ctx.cache[0].k.shape[0], w.ctx.cross[0][0].shape[2]) for w in static_decode.workspaces(fused)]
    assert len(layouts) == static_decode.MAX_WORKSPACES and layouts[0] == (2, 8) and layouts[-1] == (2, 32)
    assert static_decode.release(fused) == 4 and static_decode.workspaces(fused) == []
    states, mask, kwargs = _inputs(8, 3, 8, 0)
    assert torch.equal(
        generate(fused, states, mask, top_k=1, static=True, **kwargs),
        generate(fused, states, mask, top_k=1, static=False, **kwargs),
    )


def test_a_model_without_adapter_rounds_its_cache_up_and_shares_it():
    torch.manual_seed(1)
    plain = MusicGenLM(CFG).eval()
    states, mask = torch.randn(1, 4, CFG.text_dim), torch.ones(1, 4, dtype=torch.bool)
    for frames in (30, 10, 200):
        eager = generate(plain, states, mask, num_frames=frames, top_k=1, static=False)
        assert torch.equal(generate(plain, states, mask, num_frames=frames, top_k=1, static=True), eager)
    (work,) = static_decode.workspaces(plain)
    assert work.ctx.cache[0].max_len == static_decode.CAPACITY_STEP
    generate(plain, states, mask, num_frames=300, top_k=1, static=True)  # 303 positions: the next multiple
    assert sorted(w.ctx.cache[0].max_len for w in static_decode.workspaces(plain)) == [256, 512]


def test_the_compiled_step_is_compiled_once_for_every_window_and_instruction(fused, monkeypatch):
    # What the GPU does, on CPU: the step goes through torch.compile (dynamo with the eager backend stands in for
    # inductor + CUDA graphs). Before the workspace every window length and instruction length was a new compile,
    # and after torch._dynamo's recompile limit (8) the step ran uncompiled.
    compiled = []

    def compile_step(step):
        compiled.append(step)
        return torch.compile(step, backend="eager", fullgraph=True, dynamic=False)

    monkeypatch.setattr(static_decode, "graphs_on", lambda device: True)
    monkeypatch.setattr(static_decode, "compile_step", compile_step)
    torch._dynamo.reset()
    counters.clear()
    for frames, tokens, cond_frames, prompt in CALLS:
        states, mask, kwargs = _inputs(frames, tokens, cond_frames, prompt)
        static = generate(fused, states, mask, top_k=1, static="compile", **kwargs)
        assert torch.equal(static, generate(fused, states, mask, top_k=1, static=False, **kwargs))
    assert len(compiled) == 1
    assert counters["stats"]["unique_graphs"] == 1  # traced once: no recompile for any later length
    torch._dynamo.reset()


@pytest.mark.slow
def test_inductor_compiles_the_step_once_and_it_decodes_as_eager(fused, monkeypatch):
    # the real backend (inductor, CPU codegen; mode="reduce-overhead" as on CUDA, whose graphs CPU skips): ~25 s for
    # the one compile (less from inductor's disk cache), which every window and instruction length used to pay again
    monkeypatch.setattr(static_decode, "graphs_on", lambda device: True)
    torch._dynamo.reset()
    counters.clear()
    for frames, tokens, cond_frames, prompt in CALLS[:3]:
        states, mask, kwargs = _inputs(frames, tokens, cond_frames, prompt)
        static = generate(fused, states, mask, top_k=1, static="compile", **kwargs)
        assert torch.equal(static, generate(fused, states, mask, top_k=1, static=False, **kwargs))
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_a_fast_step_that_fails_gives_way_to_the_plain_step_for_good_with_one_warning():
    calls = []

    def fast(tokens, position):
        calls.append("fast")
        raise RuntimeError("inductor: no compiler for this CPU\nmore lines")

    def plain(tokens, position):
        calls.append("plain")
        return tokens + position

    step = static_decode.falling_back(fast, plain, "torch.compile")
    one = torch.ones(1)
    with pytest.warns(static_decode.FastStepFailed, match=r"torch.compile failed \(RuntimeError: inductor: no comp"):
        assert step(one, one) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would fail here
        assert step(one, one) == 2
    assert calls == ["fast", "plain", "plain"]


def test_running_out_of_memory_in_the_fast_step_is_left_to_the_editors_retries():
    def fast(tokens, position):
        raise torch.OutOfMemoryError("CUDA out of memory")

    step = static_decode.falling_back(fast, lambda t, p: t, "the CUDA-graph capture")
    with pytest.raises(torch.OutOfMemoryError):
        step(torch.ones(1), torch.ones(1))
    with pytest.raises(torch.OutOfMemoryError):  # still the fast step: memory may be there next time
        step(torch.ones(1), torch.ones(1))


def test_the_compiled_step_is_whole_or_not_at_all_and_survives_many_layouts(monkeypatch):
    """A graph break or dynamo's recompile limit (8 by default, counted over every workspace's compile of the one
    step function) must not leave part of the step uncompiled under the compiled step's name: fullgraph, and a limit
    a long-running server does not reach."""
    seen = {}

    def fake_compile(step, **options):
        seen.update(options)
        return step

    monkeypatch.setattr(torch, "compile", fake_compile)
    # dynamo's own patch, undone on exit (a monkeypatch of its config module left the setting hidden for later tests)
    with torch._dynamo.config.patch(recompile_limit=8):
        static_decode.compile_step(lambda tokens, position: tokens)
        assert torch._dynamo.config.recompile_limit >= 64
    assert seen == {"mode": "reduce-overhead", "fullgraph": True, "dynamic": False}
