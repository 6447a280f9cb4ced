"""`imusic bench decode`: our decode loop against transformers' generate on the same random weights, one process.

For each shape (tiny 2 x 64, small 24 x 1024, medium 48 x 1536, large 48 x 2048; card 2048, 4 codebooks, CFG 3.0,
top-k 250 sampling) and each batch (1, and 4: the 4-take batch; CFG doubles the rows):
- ms/step and tokens/s (batch x codebooks / step time) of our loop and of transformers'
  MusicgenForConditionalGeneration.generate in the same dtype; on CPU also both in fp32 (transformers' default);
- on CUDA our loop in each step mode asked for (`--steps`): `eager` (the cache sliced per step), `graph` (the static
  step captured as one CUDA graph, no compile) and `compile` (torch.compile mode="reduce-overhead", the engine's
  default on CUDA: engine.model.generate.CUDA_STEP); the first call of each is timed apart (capture / compile, printed
  as soon as it is measured), and so is a first call at another length (`new_length_s`: an edit's next window or
  region, which must not compile again: static_decode.py); a compile that Inductor ran without CUDA graphs
  (`cudagraph_skips`, which it only logs) fails the shape;
- greedy token agreement of ours and transformers in fp32 (both decode the same model);
- teacher-forced argmax agreement, the fast dtype against fp32 on the same (rounded) weights;
- on CUDA, the graph and compiled steps teacher-forced on the eager step's greedy history, at two lengths with two
  instructions: per step, top-1 agreement of the guided logits with eager's and the largest |logit difference|; a
  step under TEACHER_FORCED_MIN_TOP1 fails the shape ("n/a (CPU)" on CPU);
- whether a batched draw gives each row the tokens it gets drawn alone with the same generator (`rows_draw_alone`: a
  take of a 4-take batch must be the take alone; sample() pairs each draw with a place in torch.topk's unsorted
  order, which an accelerator could order otherwise for other batch sizes);
- the step's floor: the bytes it must read (weights, folded cross-attention, the KV cache: filled for the eager step,
  at the workspace's capacity for a static one) at the higher of two bandwidths measured in the same run: a device
  copy (bytes read + written) and batch-2 linears over distinct weights (the decode step's access pattern).
`--no-checks` skips the fp32 agreement with transformers, the fp32 graph-vs-eager tokens and the argmax agreement
(for a run after one that made them; transformers is still timed: the speedup's reference).
A shape whose estimated memory does not fit the device is skipped with its reason (as is one that runs out).
`--json PATH` writes every figure, and a shape's figures so far after each measurement (marked "partial": a run
killed midway keeps them). The last line is `decode speedup vs transformers: X.XX`: on CPU the small shape (or the
last one), ours in the fast dtype against transformers' default fp32; on CUDA the worst same-dtype speedup over the
shapes and batches timed (ours in its fastest step mode).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.editor import DECODE_STEPS, STEP_NAMES
from engine.errors import ConfigError
from engine.files import report_path, write_json_atomic
from engine.model.config import CFG_COEF, PRESETS, TOP_K
from engine.tools.costs import (
    GB,
    add_floor,
    best_seconds,
    cache_bytes,
    copy_bandwidth,
    device_copy_bandwidth,
    fit_reason,
    memory_needed,
    parameter_count,
    step_bytes,
    synchronize,
)

if TYPE_CHECKING:
    import torch
    from transformers import MusicgenForConditionalGeneration

    from engine.model.lm import MusicGenLM

SHAPES = tuple(PRESETS)  # tiny, small, medium, large
TEXT_VOCAB, TEXT_DIM = 100, 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--shapes", default="tiny,small", help=f"comma-separated presets to time ({', '.join(SHAPES)})")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default: 1 on CPU, 1,4 on CUDA)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames to generate (default: CPU 100 tiny, 20 otherwise; CUDA 64)")  # fmt: skip
    parser.add_argument("--steps", default=",".join(STEP_NAMES),
                        help=f"our step modes on CUDA ({', '.join(STEP_NAMES)}); CPU times its eager step")  # fmt: skip
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="fast dtype to compare")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--text-len", type=int, default=12, help="text tokens the cross-attention sees")
    parser.add_argument("--no-checks", dest="checks", action="store_false",
                        help="skip the fp32 agreement with transformers, the fp32 graph-vs-eager tokens and the argmax "
                             "agreement (for a run after one that made them)")  # fmt: skip
    parser.add_argument("--json", default=None, metavar="PATH", help="write every figure to this JSON file")


# ---- devices and memory -----------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """The torch.device to bench on (engine.device.parse_device's checks: one line when CUDA is asked for and absent);
    the benchmarks time CPU and CUDA only."""
    from engine.device import parse_device

    device = parse_device(str(name).strip().lower())
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"bench runs on cpu or cuda[:N], got {name!r}")
    return device


# ---- models -------------------------------------------------------------------------------------------------------


def build_pair(
    shape: str, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[MusicgenForConditionalGeneration, MusicGenLM]:
    """(transformers MusicgenForConditionalGeneration, our MusicGenLM) sharing one set of random fp32 decoder weights,
    built directly on `device` (no host copy: a large shape is made in seconds on a GPU).

    The text encoder (T5) and codec (EnCodec) around the decoder are tiny: only the decoder is being timed, and the
    codec's decode of the generated codes is skipped (see `_skip_decode`).
    """
    import torch
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    from engine.model.config import preset
    from engine.model.lm import MusicGenLM
    from engine.weights.convert import (
        lm_config_from_transformers,
        lm_config_to_transformers,
        lm_state_from_transformers,
    )
    from engine.weights.transformers_layout import quiet_transformers

    base = preset(shape)
    decoder = MusicgenDecoderConfig(**lm_config_to_transformers(base))
    text = T5Config(vocab_size=TEXT_VOCAB, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    codec = EncodecConfig(
        codebook_size=base.card, hidden_size=16, num_filters=4, upsampling_ratios=[4, 2], num_residual_layers=1,
        codebook_dim=16, target_bandwidths=[8.0], sampling_rate=1600,
    )  # fmt: skip
    torch.manual_seed(seed)
    with quiet_transformers(), torch.device(device):
        hf = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder))
    hf = hf.eval()
    hf.audio_encoder.decode = _skip_decode
    cfg = lm_config_from_transformers(decoder.to_dict(), text_dim=TEXT_DIM)
    with torch.device("meta"):
        lm = MusicGenLM(cfg)
    lm.load_state_dict(lm_state_from_transformers(hf.state_dict()), assign=True)  # one copy of the weights
    return hf, lm.eval()


class _Decoded:
    def __init__(self, codes):
        self.audio_values = codes


def _skip_decode(codes, audio_scales=None, **kwargs):
    # transformers' generate ends by decoding codes to audio; hand the codes back instead (not part of decoding)
    return _Decoded(codes[0])


# ---- timing -------------------------------------------------------------------------------------------------------


def _inputs(batch: int, text_len: int, device: torch.device, seed: int = 1):
    """Text ids (one instruction for every row) and their mask; another `seed`, another instruction."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TEXT_VOCAB, (1, text_len), generator=generator).repeat(batch, 1).to(device)
    mask = torch.ones(batch, text_len, dtype=torch.long, device=device)
    return ids, mask


def run_ours(hf, lm, ids, mask, *, frames: int, greedy: bool, static: Any, teacher=None, on_logits=None):
    """Our generate (text encoder included, CFG 3.0) -> codes [B, K, frames]; `teacher` and `on_logits`: generate's
    teacher_codes and on_logits."""
    import torch

    from engine.model.generate import generate

    with torch.inference_mode():
        states = hf.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    generator = torch.Generator(device=lm.device).manual_seed(0)
    return generate(lm, states, mask, num_frames=frames, cfg_coef=CFG_COEF, top_k=1 if greedy else TOP_K,
                    generator=generator, static=static, teacher_codes=teacher, on_logits=on_logits)  # fmt: skip


def run_theirs(hf, ids, mask, *, steps: int, greedy: bool):
    """transformers' generate (the same CFG and top-k, the same number of decoder passes) -> codes [B, K, frames]."""
    import torch

    with torch.inference_mode():
        return hf.generate(
            input_ids=ids, attention_mask=mask, guidance_scale=CFG_COEF, do_sample=not greedy,
            top_k=None if greedy else TOP_K, max_new_tokens=steps, num_return_sequences=1,
        )  # fmt: skip


def _static(mode: str, device: torch.device):
    """generate()'s `static` for a step mode, as the Editor maps it (DECODE_STEPS); off CUDA every mode is eager."""
    return DECODE_STEPS[mode] if device.type == "cuda" else False


def rows_draw_alone(
    device: torch.device, rows: int = 4, codebooks: int = 4, card: int = 2048, draws: int = 25
) -> float:
    """The share of tokens that a top-k draw of `rows` rows, one generator a row (as a batch of takes draws), gives
    each row as the same draw of that row alone does: 1.0 where batching changes no take."""
    import torch

    from engine.model.generate import sample

    logits = torch.randn(rows, codebooks, card, generator=torch.Generator().manual_seed(0)).to(device)

    def generators(first: int, count: int) -> list:
        return [torch.Generator(device=device).manual_seed(first + i) for i in range(count)]

    agree = total = 0
    for draw in range(draws):
        batched = sample(logits, top_k=TOP_K, generator=generators(1000 * draw, rows))
        alone = torch.cat(
            [sample(logits[i : i + 1], top_k=TOP_K, generator=generators(1000 * draw + i, 1)) for i in range(rows)]
        )
        agree += int((batched == alone).sum())
        total += batched.numel()
    return agree / total


def agreement(a, b) -> float:
    """Fraction of equal tokens of two code tensors (0 when their shapes differ)."""
    if tuple(a.shape) != tuple(b.shape):
        return 0.0
    return float((a.cpu() == b.cpu()).float().mean())


def greedy_agreement(hf, lm, *, frames: int, text_len: int, batch: int = 1) -> float:
    """Fraction of greedy (CFG) tokens on which ours (eager step) and transformers agree (fp32: expect 1.0)."""
    ids, mask = _inputs(batch, text_len, lm.device)
    steps = frames + lm.cfg.num_codebooks - 1
    ours = run_ours(hf, lm, ids, mask, frames=frames, greedy=True, static=False)
    theirs = run_theirs(hf, ids, mask, steps=steps, greedy=True)
    return agreement(ours, theirs)


def cudagraph_skips() -> int:
    """Inductor's count of compiled graphs it runs without CUDA graphs (an input mutation, a CPU tensor, ...): it
    only logs each skip, and the step then runs compiled but launch by launch."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


def time_batch(hf, lm, *, batch: int, frames: int, text_len: int, repeats: int, modes: list[str],
               on_measured: Callable[[dict], None] | None = None) -> dict:  # fmt: skip
    """Seconds per decode step of transformers and of each of our step modes at `batch` (CFG doubles the rows).

    Each measurement's first call is a warm-up (allocation, first dispatch; a capture or compile for the graph and
    compile modes), timed apart as `first_call_s` and printed at once (a run killed during the next measurement keeps
    it in its log). The compiled step also records `cudagraph_skips` over its calls. `on_measured(figures so far)`
    follows each measurement."""
    import torch

    device = lm.device
    ids, mask = _inputs(batch, text_len, device)
    steps = frames + lm.cfg.num_codebooks - 1  # decoder forward passes of one generation
    out: dict[str, Any] = {"batch": batch, "rows": 2 * batch, "steps": steps}
    dtype = "bf16" if lm.dtype == torch.bfloat16 else "fp32"  # the bench's two (--dtype)

    def measure(name: str, fn, other=None, compiled: bool = False) -> None:
        skips = cudagraph_skips() if compiled else 0
        first = best_seconds(fn, 1, device)
        print(f"  ... batch {batch} {dtype}, {name}: first call {first:.2f} s", flush=True)
        best = best_seconds(fn, repeats, device)
        out[name] = {"ms_per_step": best / steps * 1e3, "tokens_per_s": batch * lm.cfg.num_codebooks * steps / best,
                     "first_call_s": first}  # fmt: skip
        if other is not None:
            out[name]["new_length_s"] = best_seconds(other, 1, device)
        if compiled:
            out[name]["cudagraph_skips"] = cudagraph_skips() - skips
        if on_measured is not None:
            on_measured(out)

    measure("transformers", lambda: run_theirs(hf, ids, mask, steps=steps, greedy=False))
    other_frames = max(1, frames - frames // 4)  # a shorter window: the same compiled step, if nothing recompiles
    for mode in modes:
        static = _static(mode, device)
        measure(
            mode,
            lambda static=static: run_ours(hf, lm, ids, mask, frames=frames, greedy=False, static=static),
            lambda static=static: run_ours(hf, lm, ids, mask, frames=other_frames, greedy=False, static=static),
            compiled=static in (True, "compile"),
        )
    fast_modes = [mode for mode in modes if _static(mode, device)]
    if fast_modes:
        out["teacher_forced"] = teacher_forced(hf, lm, fast_modes, batch=batch, lengths=(frames, other_frames),
                                               text_len=text_len)  # fmt: skip
        if on_measured is not None:
            on_measured(out)
    return out


# The teacher-forced top-1 agreement with the eager step that a fast step must reach. Both compute one function in one
# dtype with different kernels (the whole masked cache, fused or captured ops), so rounding flips the argmax where two
# codes are nearly tied; a step reading a wrong input (the previous call's instruction, a stale cache or position)
# computes another function. Measured on CPU in bf16 (small shape, 20 frames, batch 1): the static step against the
# eager one agrees on 0.96 of the codes, bf16 against fp32 on 0.92 (rounding, of one side only); the eager step given
# another instruction on 0.64 (random weights condition weakly on text: a stale cache or position flips far more).
# 0.85 lies between: twice bf16's rounding flips still pass, the stale instruction does not.
TEACHER_FORCED_MIN_TOP1 = 0.85


def teacher_forced_ok(top1_agree: float) -> bool:
    """Whether a fast step's teacher-forced top-1 agreement with the eager step is rounding (see the threshold)."""
    return top1_agree >= TEACHER_FORCED_MIN_TOP1


def teacher_forced(hf, lm, modes: list[str], *, batch: int, lengths: tuple[int, int], text_len: int) -> dict:
    """Each fast step mode against the eager step, on the same token history (teacher forcing): free-running greedy
    tokens would diverge for good at the first rounding flip, so that a stale buffer and rounding looked alike.

    The eager step decodes greedily at each of the two `lengths`, each with its own instruction (the second call
    replays the workspace the first one filled: a step that kept the first call's text would show), keeping every
    step's guided logits; each fast mode is then teacher-forced on those tokens. Per mode: `top1_agree` (the lower
    of the two calls) and `max_abs_dlogit` (the largest |logit difference| of any step), per call and overall, and
    `ok` (teacher_forced_ok)."""
    import torch

    device = lm.device
    calls = []
    for frames, seed in zip(lengths, (1, 3), strict=True):
        ids, mask = _inputs(batch, text_len, device, seed)
        eager: dict[int, torch.Tensor] = {}

        def keep(step: int, logits: torch.Tensor, eager: dict = eager) -> None:
            eager[step] = logits.clone()

        codes = run_ours(hf, lm, ids, mask, frames=frames, greedy=True, static=False, on_logits=keep)
        calls.append((ids, mask, frames, codes, eager))
    out = {}
    for mode in modes:
        per_call = []
        for ids, mask, frames, codes, eager in calls:
            agree, worst = [], []  # device scalars, read once after the call (no host sync per step)

            def compare(step, logits, eager=eager, agree=agree, worst=worst) -> None:
                agree.append((logits.argmax(-1) == eager[step].argmax(-1)).float().mean())
                worst.append((logits - eager[step]).abs().max())

            run_ours(hf, lm, ids, mask, frames=frames, greedy=True, static=_static(mode, device), teacher=codes,
                     on_logits=compare)  # fmt: skip
            per_call.append({"frames": frames, "top1_agree": float(torch.stack(agree).mean()),
                             "max_abs_dlogit": float(torch.stack(worst).max())})  # fmt: skip
        top1 = min(c["top1_agree"] for c in per_call)
        out[mode] = {"top1_agree": top1, "max_abs_dlogit": max(c["max_abs_dlogit"] for c in per_call),
                     "ok": teacher_forced_ok(top1), "calls": per_call}  # fmt: skip
    return out


def untrusted_steps(r: dict, modes: list[str]) -> list[str]:
    """Why fast-step figures of a shape are not what their names claim: a compile that Inductor ran without CUDA
    graphs (it only logs that), or a step whose teacher-forced logits are not the eager step's."""
    reasons = []
    for batch, entry in r["fast"].items():
        if "skipped" in entry:
            continue
        for mode in modes:
            skips = entry.get(mode, {}).get("cudagraph_skips", 0)
            if skips:
                reasons.append(f"batch {batch}: torch.compile skipped CUDA graphs {skips} time(s) (Inductor's log "
                               f"above says why): the {mode} figures are not the CUDA-graph step's")  # fmt: skip
        for mode, check in entry.get("teacher_forced", {}).items():
            if not check["ok"]:
                reasons.append(f"batch {batch}: the {mode} step's logits are not the eager step's (teacher-forced "
                               f"top-1 agreement {check['top1_agree']:.4f} < {TEACHER_FORCED_MIN_TOP1}): a wrong or "
                               "stale input")  # fmt: skip
    return reasons


def argmax_agreement(lm_fp32: MusicGenLM, lm_low: MusicGenLM, *, frames: int, text_len: int) -> float:
    """Teacher-forced argmax agreement of the low-precision model with fp32 over the valid pattern positions."""
    import torch

    from engine.model import delay

    cfg = lm_fp32.cfg
    device = lm_fp32.device
    generator = torch.Generator().manual_seed(2)
    codes = torch.randint(0, cfg.card, (1, cfg.num_codebooks, frames), generator=generator)
    seq = delay.build(codes, cfg.card)[..., :frames].to(device)
    states = torch.randn(1, text_len, cfg.text_dim, generator=generator).to(device)
    mask = torch.ones(1, text_len, dtype=torch.long, device=device)
    valid = delay.valid_mask(frames, cfg.num_codebooks)[:, 1 : frames + 1].to(device)
    with torch.inference_mode():
        ref = lm_fp32(seq, states, mask).argmax(-1)[0]
        low = lm_low(seq, states, mask).argmax(-1)[0]
    return float((ref == low)[valid].float().mean())


# ---- one shape ----------------------------------------------------------------------------------------------------


def default_frames(shape: str, device: torch.device) -> int:
    if device.type == "cuda":
        return 64
    return 100 if shape == "tiny" else 20


def bytes_per_step(lm: MusicGenLM, dtype: torch.dtype, text_len: int, rows: int, steps: int, static: bool) -> int:
    """Bytes one step of a `steps`-step generation reads in its step mode: the eager step its weights
    (costs.step_bytes) and the filled part of its cache; a static one (graph, compile) its text padded to
    static_decode.text_slots (the folded cross-attention reads them all) and its workspace's whole cache, at
    capacity, which its masked attention reads every step."""
    from engine.model.static_decode import capacity, text_slots

    cfg = lm.cfg
    if not static:
        return step_bytes(cfg, dtype, text_len, rows) + cache_bytes(cfg, dtype, rows, steps)
    weights = step_bytes(cfg, dtype, text_slots(text_len), rows)
    return weights + cache_bytes(cfg, dtype, rows, steps, capacity(lm, steps))


def run_shape(shape: str, args: argparse.Namespace, fast: torch.dtype, device: torch.device, batches: list[int],
              modes: list[str], on_partial: Callable[[dict], None] | None = None) -> dict:  # fmt: skip
    """Every figure of one shape: build, fp32 correctness (unless --no-checks), timings per batch (fast dtype; also
    fp32 on CPU). `on_partial(figures so far)` follows the checks and every measurement."""
    import copy

    import torch

    from engine.device import is_out_of_memory

    frames = args.frames or default_frames(shape, device)
    started = time.perf_counter()
    hf, lm = build_pair(shape, device=device)
    synchronize(device)
    result: dict[str, Any] = {"shape": shape, "frames": frames, "build_s": time.perf_counter() - started}
    print(f"[{shape}] built in {result['build_s']:.1f} s", flush=True)

    def report() -> None:
        if on_partial is not None:
            on_partial(result)

    cfg = lm.cfg
    result["layers"], result["dim"] = cfg.num_layers, cfg.dim
    result["parameters"] = sum(p.numel() for p in lm.parameters())
    result["checks"] = args.checks
    check_frames = min(frames, 20)
    if args.checks:
        result["greedy_agree_fp32"] = greedy_agreement(hf, lm, frames=check_frames, text_len=args.text_len)
    if args.checks and device.type == "cuda" and "graph" in modes:
        ids, mask = _inputs(1, args.text_len, device)
        eager = run_ours(hf, lm, ids, mask, frames=check_frames, greedy=True, static=False)
        graph = run_ours(hf, lm, ids, mask, frames=check_frames, greedy=True, static="graph")
        result["graph_vs_eager_fp32"] = agreement(graph, eager)
    report()
    if device.type == "cpu" and fast != torch.float32:
        # transformers' default is fp32: on CPU time both loops in it too (the README's "vs default" figure)
        fp32 = time_batch(hf, lm, batch=batches[0], frames=frames, text_len=args.text_len, repeats=args.repeats,
                          modes=["eager"])  # fmt: skip
        result["fp32"] = {batches[0]: fp32}
        report()
    if fast != torch.float32:
        hf, lm = hf.to(fast), lm.to(fast)
        if args.checks:
            # the same (rounded) weights computed in fp32: the difference is the arithmetic only
            lm_fp32 = copy.deepcopy(lm).float()
            result["argmax_agree"] = argmax_agreement(lm_fp32, lm, frames=min(frames, 50), text_len=args.text_len)
            del lm_fp32
            report()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["fast"] = {}
    for batch in batches:

        def measured(figures: dict, batch: int = batch) -> None:
            result["fast"][batch] = figures
            report()

        try:
            result["fast"][batch] = time_batch(hf, lm, batch=batch, frames=frames, text_len=args.text_len,
                                               repeats=args.repeats, modes=modes, on_measured=measured)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - out of memory skips the batch, anything else is raised
            if not is_out_of_memory(exc):
                raise
            result["fast"][batch] = {"skipped": f"out of memory at batch {batch}: {str(exc).splitlines()[0]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if device.type == "cpu" and fast == torch.float32:
        result["fp32"] = {batches[0]: result["fast"][batches[0]]}
    for entry in result["fast"].values():
        if "skipped" not in entry:
            for mode in modes:
                entry[mode]["step_bytes"] = bytes_per_step(lm, fast, args.text_len, entry["rows"], entry["steps"],
                                                           bool(_static(mode, device)))  # fmt: skip
    result["cfg"] = cfg
    del hf, lm
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# ---- the report ---------------------------------------------------------------------------------------------------


def _line(label: str, figures: dict, reference: dict | None = None, first: bool = False) -> str:
    text = f"    {label:<22} {figures['ms_per_step']:9.2f} ms/step {figures['tokens_per_s']:10.0f} tokens/s"
    if reference is not None:
        text += f"   speedup {reference['ms_per_step'] / figures['ms_per_step']:5.2f}"
    if first:
        text += f"   (first call {figures['first_call_s']:.1f} s"
        if "new_length_s" in figures:
            text += f", first at a new length {figures['new_length_s']:.2f} s"
        text += ")"
    return text


def _parse_list(text: str | None, what: str) -> list[str]:
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not items:
        raise ConfigError(f"{what} is empty")
    return items


def _print_shape(r: dict, name: str, fast_is_fp32: bool, modes: list[str], device: torch.device) -> None:
    print(f"[{r['shape']}] {r['layers']} x {r['dim']}, {r['parameters'] / 1e6:.0f} M parameters, {r['frames']} "
          f"frames (built in {r['build_s']:.1f} s):")  # fmt: skip
    for batch, entry in r.get("fp32", {}).items() if not fast_is_fp32 else ():
        print(f"  batch {batch} fp32 ({entry['rows']} rows with CFG):")
        print(_line("transformers fp32", entry["transformers"]))
        print(_line("ours fp32", entry["eager"], entry["transformers"]))
    for batch, entry in r["fast"].items():
        if "skipped" in entry:
            print(f"  batch {batch}: skipped: {entry['skipped']}")
            continue
        print(f"  batch {batch} {name} ({entry['rows']} rows with CFG):")
        print(_line(f"transformers {name}", entry["transformers"]))
        for mode in modes:
            label = f"ours {name}" if device.type == "cpu" else f"ours {name} {mode}"
            print(_line(label, entry[mode], entry["transformers"], first=mode != "eager"))
        if "fp32" in r and batch in r["fp32"] and not fast_is_fp32:
            speedup = r["fp32"][batch]["transformers"]["ms_per_step"] / entry["eager"]["ms_per_step"]
            print(f"    ours {name} vs transformers fp32 (default): speedup {speedup:.2f}")
        for mode, check in entry.get("teacher_forced", {}).items():
            verdict = "ok (rounding)" if check["ok"] else f"FAILED (under {TEACHER_FORCED_MIN_TOP1}: another function)"
            print(f"    {mode} step teacher-forced on the eager step's tokens ({name}, two lengths and instructions): "
                  f"top-1 {check['top1_agree']:.4f} agree, max |dlogit| {check['max_abs_dlogit']:.3g}: "
                  f"{verdict}")  # fmt: skip
        if "floor_ms" in entry:
            print(f"    reads {entry['step_bytes'] / GB:.3f} GB/step: floor {entry['floor_ms']:.3f} ms/step; ours "
                  f"({entry['fastest']}) at {entry['x_floor']:.2f}x the floor, {entry['speedup_same_dtype']:.2f}x "
                  f"transformers {name}")  # fmt: skip
            others = [mode for mode in modes if mode != entry["fastest"] and "x_floor" in entry.get(mode, {})]
            if others:
                print("    against their own floors (a static step reads its whole cache): " + "; ".join(
                    f"{mode} reads {entry[mode]['step_bytes'] / GB:.3f} GB/step, at {entry[mode]['x_floor']:.2f}x"
                    for mode in others))  # fmt: skip
    if not r["checks"]:
        print("  agreement checks skipped (--no-checks)")
        return
    if "argmax_agree" in r:
        print(f"  teacher-forced argmax agreement {name} vs fp32: {r['argmax_agree']:.4f}")
    print(f"  greedy token agreement with transformers (fp32, CFG): {r['greedy_agree_fp32']:.4f}")
    if "graph_vs_eager_fp32" in r:
        print(f"  greedy tokens, CUDA-graph step vs eager step (fp32): {r['graph_vs_eager_fp32']:.4f} agree")
    elif device.type == "cpu":
        print("  CUDA-graph step vs eager step: n/a (CPU)")


def _shape_figures(r: dict) -> dict:
    """A shape's figures as the JSON keeps them (its LMConfig is for the printing only)."""
    return {k: v for k, v in r.items() if k != "cfg"}


def run(args: argparse.Namespace) -> int:
    import datetime
    import traceback

    import torch

    from engine.device import device_name, free_memory, is_out_of_memory, parse_dtype
    from engine.model.config import preset
    from engine.model.static_decode import FastStepFailed

    # a compiled or captured step that fails falls back to the plain one in an edit; here that would time the plain
    # step under the fast one's name: an error of that shape instead
    warnings.simplefilter("error", FastStepFailed)
    shapes = _parse_list(args.shapes, "--shapes")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise ConfigError(f"bench decode times the shapes {', '.join(SHAPES)}; got {args.shapes!r}")
    if args.frames is not None and args.frames < 1:
        raise ConfigError("--frames must be at least 1")
    if args.repeats < 1:
        raise ConfigError("--repeats must be at least 1")
    json_path = report_path(args.json, ".json", "--json") if args.json else None  # before the minutes of measuring
    device = resolve_device(args.device)
    try:
        batches = [int(b) for b in _parse_list(args.batches or ("1,4" if device.type == "cuda" else "1"), "--batches")]
    except ValueError:
        raise ConfigError(f"--batches takes whole numbers, got {args.batches!r}") from None
    if any(b < 1 for b in batches):
        raise ConfigError("--batches must be at least 1")
    modes = _parse_list(args.steps, "--steps") if device.type == "cuda" else ["eager"]
    if any(m not in STEP_NAMES for m in modes):
        raise ConfigError(f"--steps takes {', '.join(STEP_NAMES)}; got {args.steps!r}")
    torch.set_num_threads(max(1, args.threads))
    fast = parse_dtype(args.dtype)
    name = "bf16" if fast == torch.bfloat16 else "fp32"
    fast_bytes = torch.tensor([], dtype=fast).element_size()
    import transformers

    figures: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": name,
        "cfg_coef": CFG_COEF,
        "top_k": TOP_K,
        "batches": batches,
        "steps": modes,
        "shapes": {},
    }
    print(f"decode benchmark on {figures['device']}: torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {name}, CFG 3.0, top-k 250, batches {batches}", flush=True)  # fmt: skip
    if device.type == "cpu":
        print(f"({torch.get_num_threads()} threads; our loop decodes models under 64 MB of weights per step on one "
              "thread: engine.model.generate.decode_threads)")  # fmt: skip

    def dump() -> None:
        if json_path is not None:
            write_json_atomic(json_path, figures, sort_keys=False)

    def keep_partial(r: dict) -> None:
        # after every measurement: a run killed midway (gpu_check's timeout) keeps what its shape measured so far
        figures["shapes"][r["shape"]] = {**_shape_figures(r), "partial": True}
        dump()

    # the floor's bandwidth first (a later failure keeps it): over as many bytes as the largest step reads, at most 2 GB
    largest = max((preset(shape) for shape in shapes), key=lambda c: step_bytes(c, fast))
    total = min(max(step_bytes(largest, fast), 32 * 2**20), 2 * 10**9)
    reps = max(5, args.repeats)
    sweep = copy_bandwidth(largest.dim, largest.ffn_dim, total, fast, reps, device)
    copy_bw = device_copy_bandwidth(total, reps, device)
    bandwidth = max(sweep, copy_bw)
    figures["bandwidth"] = {"copy_gb_s": copy_bw, "linear_sweep_gb_s": sweep, "used_gb_s": bandwidth,
                            "bytes": total}  # fmt: skip
    print(f"bandwidth over {total / GB:.2f} GB: device copy {copy_bw:.1f} GB/s (read + written), batch-2 linears "
          f"({name}) {sweep:.1f} GB/s; the floor uses {bandwidth:.1f} GB/s", flush=True)  # fmt: skip
    if device.type == "cuda":
        torch.cuda.empty_cache()
    figures["rows_draw_alone"] = rows_draw_alone(device)
    print(f"batched takes draw as alone: {figures['rows_draw_alone']:.4f} of tokens (1 expected)", flush=True)
    dump()

    results: dict[str, dict] = {}
    failed = []
    disturbed = False
    for shape in shapes:
        cfg = preset(shape)
        frames = args.frames or default_frames(shape, device)
        needed = memory_needed(parameter_count(cfg), cfg, max(batches), frames, fast_bytes)
        reason = fit_reason(needed, free_memory(device), f"{shape} ({cfg.num_layers} x {cfg.dim})")
        if reason is None:
            try:
                results[shape] = run_shape(shape, args, fast, device, batches, modes, keep_partial)
            except Exception as exc:  # noqa: BLE001 - one shape's failure must not lose the others' figures
                if is_out_of_memory(exc):
                    reason = f"{shape}: out of memory ({str(exc).splitlines()[0][:160]})"
                else:
                    traceback.print_exc()
                    failed.append(shape)
                    # what the shape measured before failing stays, marked partial
                    figures["shapes"][shape] = {**figures["shapes"].get(shape, {}),
                                                "error": f"{type(exc).__name__}: {str(exc)[:300]}"}  # fmt: skip
                    print(f"[{shape}] failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                    dump()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if shape in failed:
                    continue
        if reason is not None:
            print(f"[{shape}] skipped: {reason}", flush=True)
            figures["shapes"][shape] = {**figures["shapes"].get(shape, {}), "skipped": reason}
            dump()
            continue
        r = results[shape]
        disturbed |= add_floor(r, bandwidth, modes)
        _print_shape(r, name, fast == torch.float32, modes, device)
        figures["shapes"][shape] = _shape_figures(r)
        untrusted = untrusted_steps(r, modes)
        for reason in untrusted:
            print(f"[{shape}] FAILED: {reason}", flush=True)
        if untrusted:
            failed.append(shape)
            figures["shapes"][shape]["failed"] = untrusted
        dump()
        print(flush=True)

    if not results:
        print("no shape could be timed on this device")
        dump()
        return 1
    if disturbed:
        # a decode cannot beat the speed of reading its weights: the sample was slowed by other processes
        print("(a step ran under its floor: the bandwidth sample was disturbed by other load; rerun when quiet)")
    if device.type == "cpu":
        final = results["small"] if "small" in results else results[list(results)[-1]]
        batch = next(iter(final["fp32"]))
        ours = final["fast"][batch]["eager"]["ms_per_step"]
        same = final["fast"][batch]["transformers"]["ms_per_step"] / ours
        speedup = final["fp32"][batch]["transformers"]["ms_per_step"] / ours
        print(f"({final['shape']}: ours {name} vs transformers fp32 default; same dtype: {same:.2f})")
    else:
        timed = [(e["speedup_same_dtype"], shape, batch, e["fastest"]) for shape, r in results.items()
                 for batch, e in r["fast"].items() if "skipped" not in e]  # fmt: skip
        if not timed:
            print("no batch could be timed on this device")
            return 1
        speedup, shape, batch, mode = min(timed)
        print(f"(worst same-dtype speedup: {shape} batch {batch}, ours {mode} vs transformers {name})")
    figures["speedup"] = speedup
    dump()
    print(f"decode speedup vs transformers: {speedup:.2f}", flush=True)
    return 1 if failed else 0
