"""`imusic bench decode`: our decode loop against transformers' generate on the same random weights, one process.

For each shape (tiny 2 x 64, small 24 x 1024; card 2048, 4 codebooks, CFG on, top-k 250 sampling):
- ms/step of our loop and of transformers' MusicgenForCausalLM.generate in the same dtype (the loop's own merit),
  and of transformers in fp32 (what a user gets by default);
- greedy token agreement of the two in fp32 (a check that both decode the same model);
- copy bandwidth of batch-2 linears over distinct weights, measured in the same run, and the small shape's fraction
  of the floor it implies (bytes of weights read per step / bandwidth);
- teacher-forced argmax agreement, bf16 against fp32.
The last line is `decode speedup vs transformers: X.XX` for the small shape: our loop in the fast dtype against
transformers' default fp32 (the line above it gives the same-dtype figure too).
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from engine.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import MusicgenForConditionalGeneration

    from engine.model.config import LMConfig
    from engine.model.lm import MusicGenLM

SHAPES = ("tiny", "small")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", default="tiny,small", help="comma-separated presets to time (tiny, small)")
    parser.add_argument("--frames", type=int, default=None, help="frames to generate (default: 100 tiny, 20 small)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="fast dtype to compare")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--text-len", type=int, default=12, help="text tokens the cross-attention sees")


def _dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


TEXT_VOCAB, TEXT_DIM = 100, 32


def build_pair(shape: str, seed: int = 0) -> tuple[MusicgenForConditionalGeneration, MusicGenLM]:
    """(transformers MusicgenForConditionalGeneration, our MusicGenLM) sharing one set of random fp32 decoder weights.

    The text encoder (T5) and codec (EnCodec) around the decoder are tiny: only the decoder is being timed, and the
    codec's decode of the generated codes is skipped (see `time_pair`).
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

    base = preset(shape)
    decoder = MusicgenDecoderConfig(**lm_config_to_transformers(base), dropout=0.0)
    text = T5Config(vocab_size=TEXT_VOCAB, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    codec = EncodecConfig(
        codebook_size=base.card, hidden_size=16, num_filters=4, upsampling_ratios=[4, 2], num_residual_layers=1,
        codebook_dim=16, target_bandwidths=[8.0], sampling_rate=1600,
    )  # fmt: skip
    torch.manual_seed(seed)
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


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def time_pair(
    hf: MusicgenForConditionalGeneration,
    lm: MusicGenLM,
    *,
    frames: int,
    text_len: int,
    repeats: int,
    greedy: bool = False,
) -> dict:
    """Seconds per decode step for ours and transformers (both with CFG 3.0, text encoder included in both)."""
    import torch

    from engine.model.generate import generate

    cfg = lm.cfg
    torch.manual_seed(1)
    ids = torch.randint(0, TEXT_VOCAB, (1, text_len))
    mask = torch.ones(1, text_len, dtype=torch.long)
    steps = frames + cfg.num_codebooks - 1  # decoder forward passes of one generation
    out = {}

    def ours():
        with torch.inference_mode():
            states = hf.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        out["ours"] = generate(lm, states, mask, num_frames=frames, cfg_coef=3.0, top_k=1 if greedy else 250,
                               generator=torch.Generator().manual_seed(0))  # fmt: skip

    def theirs():
        with torch.inference_mode():
            out["theirs"] = hf.generate(
                input_ids=ids, attention_mask=mask, guidance_scale=3.0, do_sample=not greedy,
                top_k=None if greedy else 250, max_new_tokens=steps, num_return_sequences=1,
            )  # fmt: skip

    ours()
    theirs()  # warm-up (allocations, first-call dispatch)
    return {
        "ours": _time(ours, repeats) / steps,
        "theirs": _time(theirs, repeats) / steps,
        "ours_codes": out["ours"],
        "theirs_codes": out["theirs"],
    }


def greedy_agreement(hf: MusicgenForConditionalGeneration, lm: MusicGenLM, *, frames: int, text_len: int) -> float:
    """Fraction of greedy (CFG) tokens on which ours and transformers agree (fp32: expect 1.0)."""
    res = time_pair(hf, lm, frames=frames, text_len=text_len, repeats=1, greedy=True)
    theirs, ours = res["theirs_codes"], res["ours_codes"]
    if theirs.shape != ours.shape:
        return 0.0
    return float((theirs == ours).float().mean())


def copy_bandwidth(dim: int, ffn_dim: int, total_bytes: float, dtype: torch.dtype, repeats: int) -> float:
    """GB/s of batch-2 linears over distinct weights totalling `total_bytes` (the decode step's access pattern)."""
    import torch

    element = torch.tensor([], dtype=dtype).element_size()
    count = max(1, int(total_bytes // (dim * ffn_dim * element)))
    weights = [torch.randn(ffn_dim, dim).to(dtype) for _ in range(count)]
    x = torch.randn(2, dim, dtype=dtype)

    def sweep():
        for w in weights:
            torch.nn.functional.linear(x, w)

    sweep()
    seconds = _time(sweep, repeats)
    return count * dim * ffn_dim * element / seconds / 1e9


def step_bytes(cfg: LMConfig, dtype: torch.dtype, text_len: int | None = None, rows: int = 2) -> int:
    """Weight bytes one decode step reads: self-attn q,k,v,out + cross q,out + FFN per layer, plus the heads.

    With `text_len`, the cross q/out projections count as the folded tensors the loop reads instead when it folds
    them (rows * heads * text_len <= dim: engine.model.fast_decode.prepare_decode)."""
    import torch

    from engine.device import decode_weight_count

    count = decode_weight_count(cfg)
    if text_len is not None and rows * cfg.num_heads * text_len <= cfg.dim:
        count += cfg.num_layers * (2 * rows * cfg.num_heads * text_len * cfg.dim - 2 * cfg.dim * cfg.dim)
    return torch.tensor([], dtype=dtype).element_size() * count


def argmax_agreement(lm_fp32: MusicGenLM, lm_low: MusicGenLM, *, frames: int, text_len: int) -> float:
    """Teacher-forced argmax agreement of the low-precision model with fp32 over the valid pattern positions."""
    import torch

    from engine.model import delay

    cfg = lm_fp32.cfg
    torch.manual_seed(2)
    codes = torch.randint(0, cfg.card, (1, cfg.num_codebooks, frames))
    seq = delay.build(codes, cfg.card)[..., :frames]
    states = torch.randn(1, text_len, cfg.text_dim)
    mask = torch.ones(1, text_len, dtype=torch.long)
    valid = delay.valid_mask(frames, cfg.num_codebooks)[:, 1 : frames + 1]
    with torch.inference_mode():
        ref = lm_fp32(seq, states, mask).argmax(-1)[0]
        low = lm_low(seq, states, mask).argmax(-1)[0]
    return float((ref == low)[valid].float().mean())


def run_shape(shape: str, args: argparse.Namespace, fast: torch.dtype) -> dict:
    import copy

    import torch

    frames = args.frames or (100 if shape == "tiny" else 20)
    hf, lm = build_pair(shape)
    result = {"shape": shape, "frames": frames}
    result["greedy_agree_fp32"] = greedy_agreement(hf, lm, frames=min(frames, 20), text_len=args.text_len)
    fp32 = time_pair(hf, lm, frames=frames, text_len=args.text_len, repeats=args.repeats)
    result["ours_fp32"], result["theirs_fp32"] = fp32["ours"], fp32["theirs"]
    if fast != torch.float32:
        hf, lm = hf.to(fast), lm.to(fast)
        low = time_pair(hf, lm, frames=frames, text_len=args.text_len, repeats=args.repeats)
        result["ours_fast"], result["theirs_fast"] = low["ours"], low["theirs"]
        # the same (rounded) weights computed in fp32: the difference is the arithmetic only
        lm_fp32 = copy.deepcopy(lm).float()
        result["argmax_agree"] = argmax_agreement(lm_fp32, lm, frames=min(frames, 50), text_len=args.text_len)
    else:
        result["ours_fast"], result["theirs_fast"] = result["ours_fp32"], result["theirs_fp32"]
    result["step_bytes"] = step_bytes(lm.cfg, fast, args.text_len)
    result["cfg"] = lm.cfg
    del hf, lm
    return result


def _compare(ours_dtype: str, ours: float, theirs_dtype: str, theirs: float) -> str:
    return (
        f"  ours {ours_dtype} {ours * 1e3:8.2f} ms/step   transformers {theirs_dtype} {theirs * 1e3:8.2f} ms/step"
        f"   speedup {theirs / ours:.2f}"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        raise ConfigError(f"bench decode times the shapes {', '.join(SHAPES)}; got {args.shapes!r}")
    if args.frames is not None and args.frames < 1:
        raise ConfigError("--frames must be at least 1")
    torch.set_num_threads(max(1, args.threads))
    fast = _dtype(args.dtype)
    name = "bf16" if fast == torch.bfloat16 else "fp32"
    print(f"decode benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, CFG 3.0, top-k 250")
    print(
        "(our loop decodes models under 64 MB of weights per step on one thread: engine.model.generate.decode_threads)"
    )
    results = {}
    for shape in shapes:
        r = results[shape] = run_shape(shape, args, fast)
        cfg = r["cfg"]
        print(f"[{shape}] {cfg.num_layers} x {cfg.dim}, {r['frames']} frames:")
        print(_compare("fp32", r["ours_fp32"], "fp32", r["theirs_fp32"]))
        if fast != torch.float32:
            print(_compare(name, r["ours_fast"], name, r["theirs_fast"]))
            print(f"  ours {name} vs transformers fp32 (default): speedup {r['theirs_fp32'] / r['ours_fast']:.2f}")
            print(f"  teacher-forced argmax agreement {name} vs fp32: {r['argmax_agree']:.4f}")
        print(f"  greedy token agreement with transformers (fp32, CFG): {r['greedy_agree_fp32']:.4f}")
    if "small" in results:
        r = results["small"]
        cfg = r["cfg"]
        bandwidth = copy_bandwidth(cfg.dim, cfg.ffn_dim, r["step_bytes"], fast, max(5, args.repeats))
        floor = r["step_bytes"] / (bandwidth * 1e9)
        print(f"copy bandwidth ({name}, batch-2 linears over {r['step_bytes'] / 1e9:.2f} GB): {bandwidth:.1f} GB/s; "
              f"small floor {floor * 1e3:.1f} ms/step; ours at {floor / r['ours_fast']:.0%} of the floor")  # fmt: skip
        if floor > r["ours_fast"]:
            # a decode cannot beat the speed of reading its weights: the sweep was slowed by other processes
            print("  (the bandwidth sample was disturbed by other load on this machine: rerun when it is quiet)")
    final = results["small"] if "small" in results else results[shapes[-1]]
    print(f"({final['shape']}: ours {name} vs transformers fp32 default; same dtype: "
          f"{final['theirs_fast'] / final['ours_fast']:.2f})")  # fmt: skip
    print(f"decode speedup vs transformers: {final['theirs_fp32'] / final['ours_fast']:.2f}")
    return 0
