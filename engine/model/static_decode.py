"""The static decode step and the workspace it runs in: one shape and one set of addresses for every generation.

A compiled or captured step pays off only when it is replayed. torch.compile specialises on every shape the step
reads: a new window length (the KV cache), condition length (the prefix) or instruction length (the text) is a new
compile, tens of seconds for a large model on a GPU, and past torch._dynamo's recompile limit the step runs
uncompiled (`compile_step` raises the limit and makes passing it loud). A CUDA graph replays fixed addresses:
tensors made anew by each generation mean a new recording each time (and, under torch.compile's CUDA-graph trees,
inputs it does not know to be static are copied at every step).

So a static decode runs in a `Workspace` kept on the model per layout (rows, dtype, device, the step mode and the
sizes below), made once and reused by every later generation of that layout (at most MAX_WORKSPACES per model):
- the KV cache, causal mask and position table for `capacity` positions: the adapter's longest window (one size for
  every window of every edit), else the generation's length rounded up to CAPACITY_STEP;
- the audio-condition prefix padded to the adapter's whole window, the padding masked out of the prefix attention and
  the last real frame held in a tensor (`PrefixKV.mask`, `PrefixKV.last`);
- the text padded to a multiple of TEXT_STEP tokens (`pad_text`; padding is masked, as text padding always is);
- the step itself: compiled (mode="reduce-overhead"), captured as one CUDA graph, or plain off CUDA.
Each generation copies its text and condition into the buffers in place and zeroes the cache (`Workspace.load`);
positions past its own are masked. `release(lm)` frees them all (the editor does before an out-of-memory retry).
A workspace serves one generation at a time: a model's static decodes must not run in two threads at once (the
server, the editor and batch each run one generation per model at a time).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from engine.model import delay
from engine.model.attention import PrefixKV
from engine.model.fast_decode import prepare_decode
from engine.model.lm import Context, MusicGenLM

CAPACITY_STEP = 256  # cache positions of a model without an adapter window are rounded up to a multiple of this
# Text tokens are padded up to a multiple of this: an instruction is a handful of T5 tokens ("extract drums": 4), so
# nearly every instruction shares one layout, and the folded cross-attention (fast_decode.fold_cross, which reads
# rows x heads x tokens vectors per layer) stays cheaper than the q/out projections it replaces.
TEXT_STEP = 8
MAX_WORKSPACES = 4  # layouts kept per model; the least recently used goes first

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def capacity(lm: MusicGenLM, max_len: int) -> int:
    """Cache positions of the workspace for a generation that needs `max_len`: the adapter's longest window when it
    holds it (every window of an edit shares one workspace), else `max_len` rounded up to CAPACITY_STEP."""
    if lm.fusion_cfg is not None:
        window = delay.num_steps(lm.fusion_cfg.window_frames, lm.cfg.num_codebooks) - 1
        if max_len <= window:
            return window
    return -(-max_len // CAPACITY_STEP) * CAPACITY_STEP


def text_slots(tokens: int) -> int:
    """Text positions a workspace holds for an instruction of `tokens` tokens: rounded up to TEXT_STEP."""
    return -(-tokens // TEXT_STEP) * TEXT_STEP


def pad_text(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text states [B, S, Dt] and mask [B, S] padded with masked zeros to text_slots(S) tokens."""
    extra = text_slots(states.shape[1]) - states.shape[1]
    if not extra:
        return states, mask
    states = torch.cat([states, states.new_zeros(states.shape[0], extra, states.shape[2])], dim=1)
    return states, torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)


class Workspace:
    """Every tensor a static step reads, at fixed shapes and addresses (see the module doc), and the step itself."""

    def __init__(self, lm: MusicGenLM, like: Context, rows: int, positions: int, graph: str):
        self.lm = lm
        self.graph = graph
        ctx = Context()
        ctx.cache = lm.new_cache(rows, positions)
        ctx.causal_mask = torch.ones(positions, positions, dtype=torch.bool, device=lm.device).tril_()
        ctx.pos_table = torch.empty_like(like.pos_table)
        if like.cross is not None:
            ctx.cross = [(torch.empty_like(k), torch.empty_like(v)) for k, v in like.cross]
        if like.cross_bias is not None:
            ctx.cross_bias = torch.empty_like(like.cross_bias)
        if like.cross_folded is not None:
            ctx.cross_folded = [tuple(torch.empty_like(t) for t in folded) for folded in like.cross_folded]
        if like.prefix is not None:
            frames = int(lm.fusion_cfg.cond_frames)

            def padded(t: torch.Tensor) -> torch.Tensor:
                return t.new_zeros(*t.shape[:2], frames, t.shape[3])

            ctx.prefix = [
                None
                if p is None
                else PrefixKV(
                    padded(p.q),
                    padded(p.k),
                    padded(p.v),
                    p.gate,
                    mask=torch.zeros(1, 1, 1, frames, dtype=torch.bool, device=lm.device),
                    last=torch.zeros(1, dtype=torch.long, device=lm.device),
                )  # fmt: skip
                for p in like.prefix
            ]
        self.ctx = ctx
        self._step: Step | None = None

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor of the workspace that a generation writes (its address is fixed for the workspace's life)."""
        ctx = self.ctx
        out = [ctx.causal_mask, ctx.pos_table]
        out += [t for cache in ctx.cache for t in (cache.k, cache.v)]
        out += [t for pair in ctx.cross or [] for t in pair]
        out += [] if ctx.cross_bias is None else [ctx.cross_bias]
        out += [t for folded in ctx.cross_folded or [] for t in folded]
        out += [t for p in ctx.prefix or [] if p is not None for t in (p.q, p.k, p.v, p.mask, p.last)]
        return out

    def load(self, call: Context) -> Context:
        """Copy a generation's text, condition and tables into the buffers (in place), zero the cache; -> the
        workspace's context, which the generation then runs in."""
        ctx = self.ctx
        ctx.pos_table.copy_(call.pos_table)
        for cache in ctx.cache:
            cache.k.zero_()
            cache.v.zero_()
        for (k, v), (call_k, call_v) in zip(ctx.cross or [], call.cross or [], strict=True):
            k.copy_(call_k)
            v.copy_(call_v)
        if ctx.cross_bias is not None:
            ctx.cross_bias.copy_(call.cross_bias)
        for folded, call_folded in zip(ctx.cross_folded or [], call.cross_folded or [], strict=True):
            for t, call_t in zip(folded, call_folded, strict=True):
                t.copy_(call_t)
        for p, call_p in zip(ctx.prefix or [], call.prefix or [], strict=True):
            if p is None:
                continue
            n = call_p.num_frames
            for t, call_t in ((p.q, call_p.q), (p.k, call_p.k), (p.v, call_p.v)):
                t[:, :, :n].copy_(call_t)
                t[:, :, n:].zero_()
            p.mask.fill_(False)
            p.mask[..., :n] = True
            p.last.fill_(max(n - 2, 0))
        # decode-only weight copies (CPU's fused path; prepare_decode makes none on CUDA, where steps are captured)
        ctx.qkv, ctx.heads, ctx.emb_table, ctx.emb_offsets = call.qkv, call.heads, call.emb_table, call.emb_offsets
        return ctx

    @property
    def step(self) -> Step:
        """The step, built on first use: tokens [rows, K, 1], position [1] -> logits [rows, K, 1, card]."""
        if self._step is None:
            self._step = build_step(self.lm, self.ctx, self.graph, self.buffers())
        return self._step


def _layout(call: Context, rows: int, positions: int, graph: str, lm: MusicGenLM) -> tuple:
    """What decides a workspace's buffers: generations with the same layout share one."""

    def shapes(tensors) -> tuple:
        return tuple(None if t is None else tuple(t.shape) for t in tensors)

    return (
        rows, positions, graph, str(lm.device), lm.dtype, tuple(call.pos_table.shape),
        shapes(call.cross[0]) if call.cross else None,
        None if call.cross_bias is None else tuple(call.cross_bias.shape),
        shapes(call.cross_folded[0]) if call.cross_folded else None,
        None if call.prefix is None else tuple(p is None for p in call.prefix),
        call.qkv is not None, call.heads is not None, call.emb_table is not None,
    )  # fmt: skip


def workspace(lm: MusicGenLM, call: Context, rows: int, max_len: int, graph: str, fuse: bool) -> Workspace:
    """The workspace for a generation of `rows` rows and `max_len` positions in context `call` (its text padded with
    `pad_text`), loaded with the call's text and condition. `graph`: "compile" or "capture" (CUDA; plain elsewhere).
    `fuse`: prepare_decode's choice for this model."""
    positions = capacity(lm, max_len)
    prepare_decode(lm, call, positions, fuse=fuse)
    key = _layout(call, rows, positions, graph, lm)
    spaces = lm.static_workspaces
    work = spaces.pop(key, None)
    if work is None:
        while len(spaces) >= MAX_WORKSPACES:
            spaces.pop(next(iter(spaces)))
        work = Workspace(lm, call, rows, positions, graph)
    spaces[key] = work  # the most recently used last
    work.load(call)
    return work


def release(lm: MusicGenLM) -> int:
    """Drop the model's static workspaces (their caches and steps); -> how many there were."""
    count = len(lm.static_workspaces)
    lm.static_workspaces.clear()
    return count


def workspaces(lm: MusicGenLM) -> list[Workspace]:
    """The model's static workspaces, the least recently used first."""
    return list(lm.static_workspaces.values())


def build_step(lm: MusicGenLM, ctx: Context, graph: str, static: list[torch.Tensor]) -> Step:
    """The static step over `ctx`: compiled with mode="reduce-overhead" on CUDA (`graph="compile"`: CUDA graphs; the
    `static` tensors are marked as fixed addresses so that replays read and write the real buffers instead of
    copies), captured uncompiled as one CUDA graph (`graph="capture"`, see `captured_step`), plain elsewhere."""

    def step(tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return lm.run(tokens, ctx, position, last_only=True)

    if not graphs_on(lm.device):
        return step
    if graph == "capture":
        return falling_back(captured_step(step), step, "the CUDA-graph capture")
    for tensor in static:
        torch._dynamo.mark_static_address(tensor)
    return falling_back(compile_step(step), step, "torch.compile")


class FastStepFailed(RuntimeWarning):
    """A compiled or captured decode step failed and the plain step took over (benchmarks turn it into an error)."""


def falling_back(fast: Step, plain: Step, what: str) -> Step:
    """`fast` until it fails with anything but running out of memory (which the Editor's retries handle); then, for
    good, `plain`, with one FastStepFailed warning naming the error. A compiler or graph fault in a producer's torch
    then costs speed, not every edit. Re-running the position plainly is exact: the step rewrites the KV-cache slot
    of its position from the same tokens."""
    from engine.device import is_out_of_memory

    state: dict[str, Step | None] = {"fast": fast}

    def run(tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        current = state["fast"]
        if current is not None:
            try:
                return current(tokens, position)
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise
                state["fast"] = None
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                warnings.warn(
                    f"{what} failed ({type(exc).__name__}: {first}); decoding with the plain step",
                    FastStepFailed,
                    stacklevel=2,
                )
        return plain(tokens, position)

    return run


def graphs_on(device: torch.device) -> bool:
    """Whether a static step is compiled or captured on this device (CUDA only: elsewhere it runs plain)."""
    return device.type == "cuda"


# torch._dynamo's recompile limit (8) counts every compile of one function, and every workspace compiles the same step
# function: a server that met more layouts than that over its life (takes, instruction lengths, models) ran the
# newer ones uncompiled, silently. Raised to this; past it, fullgraph makes the failure loud (FastStepFailed).
RECOMPILE_LIMIT = 64


def compile_step(step: Step) -> Step:
    """`step` under torch.compile (mode="reduce-overhead": CUDA graphs), whole or not at all: a graph break or the
    recompile limit raises (falling_back then warns and runs the plain step) instead of running part of it uncompiled
    under the compiled step's name."""
    config = torch._dynamo.config
    if getattr(config, "recompile_limit", RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
        config.recompile_limit = RECOMPILE_LIMIT
    return torch.compile(step, mode="reduce-overhead", fullgraph=True, dynamic=False)


def captured_step(step: Step) -> Step:
    """`step` captured as one CUDA graph on its first call and replayed after: inputs are copied into the captured
    buffers, the returned logits are the graph's own buffer (overwritten by the next call; read them before it).

    The static step is idempotent (it rewrites the KV-cache slot of its position from the same tokens), so the
    warm-up runs before capture do no harm."""
    state: dict[str, torch.Tensor | torch.cuda.CUDAGraph] = {}

    def run(tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        if not state:
            tokens_in, position_in = tokens.clone(), position.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # library handles and workspaces are made outside the capture
                    step(tokens_in, position_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = step(tokens_in, position_in)
            state.update(graph=graph, tokens=tokens_in, position=position_in, logits=logits)
        else:
            state["tokens"].copy_(tokens)
            state["position"].copy_(position)
        state["graph"].replay()
        return state["logits"]

    return run
