"""Decoding: prefill, one-step decode with a preallocated KV cache, classifier-free guidance, sampling.

The loop works on the delay-pattern sequence [B, K, T + K] (delay.py). Step 0 is the start token; the model reading
step s predicts step s + 1. Cells that are special (delay padding) or given by `prompt_codes` are forced; everything
else is sampled. With a prompt of Tp frames, steps 0..Tp are fully known and go through the model in one prefill.

CFG doubles the batch: the first half sees the text, the second half the null condition (zero text states, empty
mask: what transformers and audiocraft do); both halves see the same audio-condition prefix (official code).
Guided logits = uncond + cfg_coef * (cond - uncond).

Two step modes: eager (CPU default: the cache is sliced to its filled length, least arithmetic) and static
(positions passed as a tensor, the whole cache attended under a mask: fixed shapes, so on CUDA the step is compiled
with torch.compile(mode="reduce-overhead"), i.e. replayed as a CUDA graph). `static="graph"` instead captures the
uncompiled static step into one CUDA graph (no compile time; what `imusic bench decode --device cuda` compares);
`CUDA_STEP` is the mode a CUDA decode uses when `static` is None. A static decode runs in the model's workspace for
its layout (static_decode.py), so that windows and instructions of any length replay one compiled step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from engine.device import decode_weight_count, small_decoder, torch_threads
from engine.errors import Cancelled, ConfigError
from engine.model import delay, static_decode
from engine.model.config import CFG_COEF, TOP_K
from engine.model.fast_decode import prepare_decode
from engine.model.lm import MusicGenLM
from engine.model.text import null_condition


def sample(
    logits: torch.Tensor,
    *,
    top_k: int = TOP_K,
    top_p: float = 0.0,
    temperature: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """logits [..., card] (float) -> token ids [...]. temperature <= 0 or top_k == 1 means greedy (argmax).

    top_k then top_p (nucleus) filtering, both when set; then one categorical draw from `generator`. A sequence of G
    generators splits the leading dimension into G equal parts, each drawn from its own generator (a batch of edits
    whose rows draw as they would alone).
    """
    if temperature <= 0 or top_k == 1:
        return logits.argmax(dim=-1)
    shape = logits.shape
    logits = logits.reshape(-1, shape[-1]).float()  # [N, card]
    if not 0 < top_k < shape[-1]:
        top_k = shape[-1]
    # work on the k best only: a softmax and a draw over 250 values, not 2048; nucleus filtering needs them ranked
    values, order = torch.topk(logits, top_k, dim=-1, sorted=top_p > 0.0)  # [N, k]
    if temperature != 1.0:
        values = values / temperature
    probs = values.softmax(dim=-1)
    if top_p > 0.0:
        # drop a token when the tokens ranked above it already hold top_p of the mass (the first one always stays)
        probs = probs.masked_fill((probs.cumsum(dim=-1) - probs) > top_p, 0.0)
    # one categorical draw per row as the exponential race argmax(p / E), E = -log U ~ Exp(1) (what multinomial does
    # for one sample, with no host sync on GPU), written argmax(log U / p): uniform draws cost a fifth of
    # exponential_ here, and a dropped token (p = 0) gets -inf
    if generator is None or isinstance(generator, torch.Generator):
        uniform = torch.rand(probs.shape, generator=generator, device=probs.device)
    else:
        if not generator or shape[0] % len(generator):
            raise ConfigError(f"{len(generator)} generators cannot split {shape[0]} rows into equal parts")
        part = (probs.shape[0] // len(generator), probs.shape[1])
        uniform = torch.cat([torch.rand(part, generator=g, device=probs.device) for g in generator])
    choice = (uniform.log_() / probs).argmax(dim=-1, keepdim=True)  # [N, 1] position among the k best
    return order.gather(-1, choice).view(shape[:-1])


def _check_inputs(lm: MusicGenLM, text_states, text_mask, num_frames, cond_codes, prompt_codes) -> int:
    cfg = lm.cfg
    if not isinstance(num_frames, int) or num_frames <= 0:
        raise ConfigError(f"num_frames must be a positive integer, got {num_frames!r}")
    batches = set()
    if text_states is not None:
        if text_states.dim() != 3:
            raise ConfigError(f"text states must be [B, S, D], got {tuple(text_states.shape)}")
        batches.add(text_states.shape[0])
        if text_mask is not None and tuple(text_mask.shape) != tuple(text_states.shape[:2]):
            raise ConfigError(
                f"text mask {tuple(text_mask.shape)} does not match text states {tuple(text_states.shape)}"
            )
    if cond_codes is not None:
        lm.check_codes(cond_codes, "condition codes")
        if cond_codes.shape[0] != 1:
            batches.add(cond_codes.shape[0])
    if prompt_codes is not None:
        lm.check_codes(prompt_codes, "prompt codes")
        batches.add(prompt_codes.shape[0])
        if prompt_codes.shape[-1] > num_frames:
            raise ConfigError(f"the prompt ({prompt_codes.shape[-1]} frames) is longer than num_frames ({num_frames})")
    if len(batches) > 1:
        raise ConfigError(f"text, condition and prompt disagree on the batch size: {sorted(batches)}")
    if cfg.num_codebooks < 1:
        raise ConfigError("the model has no codebooks")
    return batches.pop() if batches else 1


@torch.inference_mode()
def generate(
    lm: MusicGenLM,
    text_states: torch.Tensor | None,
    text_mask: torch.Tensor | None,
    *,
    num_frames: int,
    cond_codes: torch.Tensor | None = None,
    prompt_codes: torch.Tensor | None = None,
    cfg_coef: float = CFG_COEF,
    top_k: int = TOP_K,
    top_p: float = 0.0,
    temperature: float = 1.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    static: bool | str | None = None,
    teacher_codes: torch.Tensor | None = None,
    on_logits: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Generate codes [B, K, num_frames]. `prompt_codes` [B, K, Tp] are forced as the first Tp frames.

    `cond_codes` [B, K, Tc] (Tc + 1 <= the adapter's cond_frames) feed the audio fusion. CFG is on when
    cfg_coef != 1 and there is text. `static`: None picks `CUDA_STEP` on CUDA, eager elsewhere; True or "compile" the
    compiled static step, "graph" the static step captured as a CUDA graph (both the plain static step off CUDA).
    `generator`: one for every row, or one per row (B of them: each row draws as it would alone; see `sample`).
    Raises Cancelled when should_stop() turns true (polled between steps). A small model decodes on one CPU thread
    (`decode_threads`): torch's thread count is set for the call and restored after.

    Two diagnostic hooks (for comparing step modes: `imusic bench decode`), both off when None:
    `teacher_codes` [B, K, num_frames] are written in place of the sampled tokens at every free cell (teacher forcing:
    the logits are still computed, from that history instead of the drawn one); `on_logits(step, logits)` sees each
    step's CFG-guided float logits [B, K, card] before they are sampled (a buffer the next step may reuse: copy what
    is kept).
    """
    batch = _check_inputs(lm, text_states, text_mask, num_frames, cond_codes, prompt_codes)
    if teacher_codes is not None:
        lm.check_codes(teacher_codes, "teacher codes")
        if tuple(teacher_codes.shape) != (batch, lm.cfg.num_codebooks, num_frames):
            raise ConfigError(f"teacher codes must be {[batch, lm.cfg.num_codebooks, num_frames]}, got "
                              f"{list(teacher_codes.shape)}")  # fmt: skip
    with torch_threads(decode_threads(lm)):
        return _generate(lm, batch, text_states, text_mask, num_frames, cond_codes, prompt_codes, cfg_coef, top_k,
                         top_p, temperature, generator, progress, should_stop, static, teacher_codes,
                         on_logits)  # fmt: skip


def decode_threads(lm: MusicGenLM) -> int | None:
    """Threads for a CPU decode of this model: 1 for a small decoder (engine.device.small_decoder), None (leave torch's
    setting) otherwise. Its ops act on [B, 1, D] tensors, where waking and joining a second OpenMP thread costs more
    than the op (measured on 2 shared cores: LayerNorm / GELU / softmax on [2, 1, 64] take 1-7 us on one thread,
    20-200 us on two)."""
    if lm.device.type != "cpu":
        return None
    return 1 if small_decoder(decode_weight_count(lm.cfg)) else None


def _generate(lm, batch, text_states, text_mask, num_frames, cond_codes, prompt_codes, cfg_coef, top_k, top_p,
              temperature, generator, progress, should_stop, static, teacher_codes=None,
              on_logits=None) -> torch.Tensor:  # fmt: skip
    cfg = lm.cfg
    device = lm.device
    num_codebooks, special = cfg.num_codebooks, cfg.special_token
    steps = delay.num_steps(num_frames, num_codebooks)  # S: pattern length; the model runs positions 0..S-2

    # the pattern sequence with every forced cell filled: prompt frames, and special where the delay has nothing
    prompt_len = 0 if prompt_codes is None else prompt_codes.shape[-1]
    frames = torch.full((batch, num_codebooks, num_frames), -1, dtype=torch.long, device=device)
    if prompt_len:
        frames[..., :prompt_len] = prompt_codes.to(device)
    seq = delay.build(frames, special)  # [B, K, S]; -1 = still to sample
    free = seq[0] == -1  # [K, S]: cells the model must fill (same for every batch row)
    teacher = None if teacher_codes is None else delay.build(teacher_codes.to(device), special)

    use_cfg = cfg_coef != 1.0 and text_states is not None
    if text_states is not None and text_mask is None:
        text_mask = torch.ones(text_states.shape[:2], dtype=torch.bool, device=text_states.device)
    if static is None:
        static = CUDA_STEP if device.type == "cuda" else False
    if static not in (True, False, "compile", "graph"):
        raise ConfigError(f"static must be None, True, False, 'compile' or 'graph', got {static!r}")
    if static and text_states is not None:
        text_states, text_mask = static_decode.pad_text(text_states, text_mask)  # one text shape per few tokens
    if use_cfg:
        null_states, null_mask = null_condition(text_states, text_mask)
        ctx = lm.text_context(torch.cat([text_states, null_states]), torch.cat([text_mask, null_mask]))
    else:
        ctx = lm.text_context(text_states, text_mask)
    if cond_codes is not None:
        cond = cond_codes.to(device)
        if cond.shape[0] == 1 and batch > 1:
            cond = cond.expand(batch, -1, -1)
        prefix = lm.cond_prefix(cond)  # computed once for B rows, shared by both CFG halves
        ctx.prefix = [p if p is None else p.repeat(2) for p in prefix] if use_cfg else prefix
    rows = 2 * batch if use_cfg else batch

    max_len = steps - 1
    fuse = decode_threads(lm) == 1
    step_fn = None
    if static:
        # the model's workspace for this layout (static_decode.py): the same shapes and buffers, and the step
        # compiled or captured once, for every window of every edit
        graph = "capture" if static == "graph" else "compile"
        work = static_decode.workspace(lm, ctx, rows, max_len, graph, fuse)
        ctx, step_fn = work.ctx, work.step
        # every step's position as a device tensor, made once: a fresh torch.tensor per step is a host-to-device
        # copy that waits for the GPU each step
        step_positions = torch.arange(steps, device=device)
    else:
        ctx.cache = lm.new_cache(rows, max_len)
        prepare_decode(lm, ctx, max_len, fuse=fuse)

    # one pattern buffer per CFG half, [halves, B, K, S]; a write broadcasts to both; the model reads the flat view
    halves = 2 if use_cfg else 1
    both = seq[None].repeat(halves, 1, 1, 1)
    flat = both.view(rows, num_codebooks, steps)
    all_free = free.all(dim=0).tolist()  # per step: no forced cell, write the samples as they are

    def fill(step: int, logits: torch.Tensor) -> None:
        logits = logits[:, :, -1].float()  # [rows, K, card]
        if use_cfg:
            # uncond + cfg_coef * (cond - uncond), in one op
            logits = torch.lerp(logits[batch:], logits[:batch], cfg_coef)
        if on_logits is not None:
            on_logits(step, logits)
        if teacher is None:
            tokens = sample(logits, top_k=top_k, top_p=top_p, temperature=temperature, generator=generator)
        else:
            tokens = teacher[..., step]
        if not all_free[step]:
            tokens = torch.where(free[:, step][None], tokens, seq[:, :, step])
        both[..., step] = tokens

    prefill = prompt_len + 1  # steps 0..Tp are fully known
    total = delay.decode_steps(num_frames, num_codebooks, prompt_len)  # = steps - prefill
    if total <= 0:
        return delay.revert(seq)
    logits = lm.run(flat[..., :prefill], ctx, 0, last_only=True)
    for i, step in enumerate(range(prefill, steps)):
        fill(step, logits)
        if progress is not None:
            progress(i + 1, total)
        if step == steps - 1:
            break
        if should_stop is not None and should_stop():
            raise Cancelled("generation cancelled")
        tokens = flat[..., step : step + 1]
        if static:
            # contiguous: the view's strides depend on the generation's length, and a compiled step specialises on
            # strides as on shapes
            logits = step_fn(tokens.contiguous(), step_positions[step : step + 1])
        else:
            logits = lm.run(tokens, ctx, step, last_only=True)
    seq = both[0]
    return delay.revert(seq)


# The step a CUDA decode uses when generate() is not told: "compile" (torch.compile, mode="reduce-overhead") or
# "graph" (the uncompiled static step captured as one CUDA graph).
CUDA_STEP = "compile"
