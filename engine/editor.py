"""The engine's front door: (audio [C, N] at any rate, instruction) -> edited audio of the same rate, shape and timing.

One edit, step by step:
1. parse the instruction against the model card (InstructionError before any work) and check the audio (AudioError).
2. downmix to mono (the mean of the channels), resample to the codec's rate (polyphase, engine/resample.py), take
   away its DC offset (inaudible, absent from every training input, and it made a level and a peak of its own: a
   recording 10 dB above its offset was fed 10 dB too quietly) and bring it to the level the adapter was trained
   at, where its card records one (engine.levels.model_input_gain; the gain is undone on the model's output).
3. plan windows of the adapter's trained clip length (5 s for the official adapter, whose 10 s of condition
   positions were trained on 5 s clips; at most cond_frames - 1 frames) that overlap by `overlap_seconds`
   (engine/windows.py). For each window: encode its input as the audio condition, generate
   with the previous window's generated overlap forced as the prompt (continuation), decode.
4. join the decoded windows with raised-cosine crossfades over the overlaps, resample back, trim to N samples.
5. make the result's channels per the mode (engine/mask.py), and set its level (engine/levels.py) unless raw=True:
   - "mask" (the default): the model's output steers a time-frequency mask on the original region (extract keeps
     what the output explains, remove what the stem's extraction does not; add puts the added part alone on top of
     the original), so the result keeps the original's rate, channels, stereo image and the band above the codec's;
   - "resynth" (the paper's behaviour): the mono model output copied to every input channel.

Design choices (documented here because producers see them):
- Channels: the model is mono. In mode "mask" one mask (from the channels' mean, what the model heard) applies to
  every channel, and add's new part is added, centred, to every channel; in mode "resynth" the mono output is copied
  to each of the input's channels. A 5.1 or 7.1 region (6 or 8 channels, in WAV's order: L R C LFE ...) keeps its
  LFE channel out of what the model makes: an add leaves it as recorded (the added part alone: silent there), and a
  re-synthesis is silent there (full-band music on the subwoofer channel).
- Silence: "add" on a silent selection is allowed (generate the stem from nothing, levelled to DEFAULT_TARGET_LUFS);
  "remove" and "extract" on silence raise AudioError (there is nothing to take away or isolate).
- Best of N (takes > 1): each window generates N takes in one batch; the take with the highest mean token
  log-likelihood under the model, teacher-forced with the same text and audio condition, is kept and the next window
  continues from it. No reference exists at edit time; the likelihood is the model's own confidence that the take
  fits the instruction and the input, and it costs one forward pass per take. Every score goes into `info`.
- Seeds: `seed=None` draws one and reports it (`EditResult.seed`); the same seed, model, device and dtype give the
  same result.
- Out of memory (an accelerator's, or the CPU allocator's): retry with the takes generated one at a time, then with
  half, then a quarter of the window; then ResourceError.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import AudioError, Cancelled, CheckpointError, ConfigError, ResourceError
from engine.files import MAX_CHANNELS, MAX_RATE, MIN_RATE, unsupported_audio
from engine.instructions import MAX_SEED, Instruction, check_seed, check_takes, parse_instruction, vocabulary
from engine.levels import all_finite, db, is_silent, rms_db
from engine.loudness import LFE_CHANNEL
from engine.mask import DEFAULT_SETTINGS, STEER_EXTRACT, MaskSettings
from engine.model.config import CFG_COEF, EDIT_TOP_K
from engine.modes import LAYER, MASKED_MODES, channel_policy, check_mode
from engine.windows import Window, join, plan_windows

Progress = Callable[[float, str], None]

MAX_SAMPLE = 1e6  # 120 dB over full scale: no recording; far past it, a mix of channels overflowed float32 and the
# error blamed the model, and the mask mode returned silence
# Channels "cancel out" when their mono mix is this far below them: one channel the other's polarity inverted leaves
# only rounding (16-bit: about -100 dBFS) where the channels play at music's level; no real stereo mix comes near it.
CANCEL_DB = 50.0
# The CUDA decode step an Editor may be given -> generate()'s `static`: None = generate's own choice (CUDA_STEP)
DECODE_STEPS: dict[str | None, bool | str | None] = {None: None, "eager": False, "graph": "graph", "compile": "compile"}
STEP_NAMES = tuple(step for step in DECODE_STEPS if step)  # the steps a producer or a benchmark may name
_ENCODE_MARGIN_S = 1.0  # context either side of a window when encoding it, so codes at its edges are not edge-biased


@dataclass
class EditResult:
    """An edit: `audio` [C, N] float32 at `sample_rate` (same shape as the input), what was done, and how."""

    audio: np.ndarray
    sample_rate: int
    instruction: Instruction
    seed: int
    info: dict[str, Any] = field(default_factory=dict)


FINISHING = "mask and levels"  # the stage after the last window: the mode's mask (if any) and the levels
FINISHING_AT = 0.999  # where the fraction stands then (generation is the rest of the job's time on a short region)


class _Progress:
    """Maps stage work onto one monotone fraction 0..1 of the whole job; throttles calls to >= 0.5 % steps."""

    def __init__(self, callback: Progress | None, total_units: float):
        self.callback = callback
        self.total = max(total_units, 1e-9)
        self.done = 0.0
        self.last = -1.0
        self.stage = ""

    def at(self, units: float, stage: str) -> None:
        fraction = min(max((self.done + units) / self.total, self.last, 0.0), 0.999)
        if self.callback is not None and (fraction - self.last >= 0.005 or stage != self.stage):
            self.callback(fraction, stage)
            self.last, self.stage = fraction, stage

    def advance(self, units: float, stage: str) -> None:
        self.done += units
        self.at(0.0, stage)


def _layer_notes(layer: np.ndarray, audio: np.ndarray, sample_rate: int, levels: dict) -> list[str]:
    """The notes of a layer (the added part alone): nothing added is said so, not as a silent model; and where the
    recording and the part together go over full scale (and over the recording's own peak), which the mask mode's
    limiter on their sum would have caught and nothing can on two tracks, the producer is told to lower them."""
    from engine.levels import true_peak_db

    if not np.any(layer):  # a quiet part (under the meter's gate: a fade, a quiet intro) is no empty one
        return ["nothing was added: the model's output holds nothing beyond the recording"]
    notes = list(levels.get("warnings", []))
    together = true_peak_db(audio + layer, sample_rate)
    if math.isfinite(together) and together > max(0.0, true_peak_db(audio, sample_rate)) + 0.1:
        over = f"with the recording this part peaks at {together:+.1f} dBTP, over full scale"
        notes.append(f"{over}: lower the two tracks together")
    return notes


class Editor:
    """Edits audio with one loaded model; construct with `Editor.load(...)` or `Editor(loaded_model)`.

    `window_seconds` (default: the adapter's trained clip length where its card records one, else its window; maximum:
    its window) and `overlap_seconds` set the windowing;
    `cfg_coef`, `top_k`, `temperature` the sampling (official inference: CFG 3.0, top-k 100); `mask_settings`
    ({operation: engine.mask.MaskSettings}) replace the mask mode's defaults for the operations it names.
    `decode_step` the CUDA decode step (DECODE_STEPS; None: engine.model.generate.CUDA_STEP; off CUDA every step is
    the eager one).
    """

    def __init__(
        self,
        model: Any,
        *,
        window_seconds: float | None = None,
        overlap_seconds: float = 2.0,
        cfg_coef: float = CFG_COEF,
        top_k: int = EDIT_TOP_K,
        temperature: float = 1.0,
        mask_settings: dict[str, MaskSettings] | None = None,
        decode_step: str | None = None,
    ) -> None:
        if decode_step not in DECODE_STEPS:
            raise ConfigError(f"decode_step must be one of {', '.join(map(str, DECODE_STEPS))}, got {decode_step!r}")
        self.decode_step = decode_step
        self.model = model
        self.mask_settings = dict(mask_settings or {})
        self.card = model.card
        # what the model was loaded from (engine.weights.loader.weights_identity; Editor.load sets it): a batch through
        # a server ties its results to it, as it does a model it loads itself
        self.weights = ""
        if getattr(model.lm, "fusion", None) is None:
            raise CheckpointError(
                f"model {self.card.name!r} has no editing adapter (audio fusion): load it with an adapter to edit"
            )
        self.vocab = vocabulary(self.card)
        self.sample_rate = int(model.codec.sample_rate)
        self.hop = int(model.codec.hop_length)
        self.frame_rate = float(model.codec.frame_rate)
        self.max_window_frames = model.lm.fusion_cfg.window_frames
        # The default window is the adapter's clip length where the card knows it: condition positions past it were
        # never trained (the official adapter holds 10 s of them and trained on 5 s clips).
        trained = self.card.trained_window_s
        default = self.max_window_frames
        if trained is not None:
            default = max(1, min(default, int(round(trained * self.frame_rate))))
        frames = default if window_seconds is None else int(round(window_seconds * self.frame_rate))
        if not 2 <= frames <= self.max_window_frames:  # one frame leaves no room to overlap: a click at every join
            raise ConfigError(
                f"window_seconds must be between {2 / self.frame_rate:g} and "
                f"{self.max_window_frames / self.frame_rate:g} s for this model, got {window_seconds}"
            )
        self.window_frames = frames
        if not (math.isfinite(overlap_seconds) and overlap_seconds * self.frame_rate >= 1):
            # no overlap joins the windows with a hard cut (a click at every join), NaN failed deep in int()
            raise ConfigError(
                f"overlap_seconds must be at least one codec frame ({1 / self.frame_rate:g} s), got {overlap_seconds}"
            )
        self.overlap_frames = min(int(round(overlap_seconds * self.frame_rate)), frames // 2)
        self.cfg_coef, self.top_k, self.temperature = cfg_coef, top_k, temperature
        self._lock = threading.Lock()  # one edit at a time: the model's caches and RNG are not shared safely

    @classmethod
    def load(
        cls,
        source: str | Path | None = None,
        adapter: str | Path | None = None,
        device: Any = None,
        dtype: Any = None,
        **options: Any,
    ) -> Editor:
        """Load a model (engine.weights.load_model: default, model dir, transformers/audiocraft dir, hub name);
        `options` go to the Editor (decode_step, window_seconds, ...)."""
        from engine.weights import load_model
        from engine.weights.loader import weights_identity

        editor = cls(load_model(source, adapter=adapter, device=device, dtype=dtype), **options)
        editor.weights = weights_identity(source, adapter) or ""
        return editor

    def parse(self, text: str) -> Instruction:
        """Parse an instruction for this model (InstructionError naming what is supported when it does not parse)."""
        return parse_instruction(text, self.card)

    @property
    def info(self) -> dict[str, Any]:
        """What the server's pong/status and the CLI report about the loaded model."""
        return {
            "model": self.card.name,
            "weights": self.weights,
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "sample_rate": self.sample_rate,
            "window_seconds": self.window_frames / self.frame_rate,
            "stems": [s.lower() for s in self.vocab.stems],
            "operations": list(self.vocab.operations),
            # operations whose edits the model's own evaluation says lose to the unchanged input: the note for each
            "shortfalls": {op: note for op in self.vocab.operations if (note := self.card.shortfall(op))},
            # how much of what the mask mode cuts this model's card trusts it to cut ({}: all of it); an evaluation's
            # report records it beside its figures
            "mask_depth": dict(self.card.mask_depth),
        }

    # ---- the edit ---------------------------------------------------------------------------------------------
    def edit(
        self,
        audio: np.ndarray,
        sample_rate: int,
        instruction: str | Instruction,
        *,
        seed: int | None = None,
        takes: int = 1,
        raw: bool = False,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
        mode: str | None = None,
    ) -> EditResult:
        """Edit `audio` [C, N] at `sample_rate` per `instruction`; the result has the same rate, shape and timing.

        `mode` is one of engine.modes.MODES that applies to the operation (None: the operation's default, "mask").
        """
        results = self.edit_modes(
            audio, sample_rate, instruction, (mode,), seed=seed, takes=takes, raw=raw, progress=progress, cancel=cancel
        )
        return next(iter(results.values()))

    def edit_modes(
        self,
        audio: np.ndarray,
        sample_rate: int,
        instruction: str | Instruction,
        modes: Sequence[str | None],
        *,
        seed: int | None = None,
        takes: int = 1,
        raw: bool = False,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> dict[str, EditResult]:
        """`edit` in several modes, each generation made once: {mode: result}, in the order given (None: the default
        mode).

        Modes that read the same generation share it (what an evaluation that compares the modes needs: the same
        tokens, half the time); a remove's mask reads the stem's extraction and its re-synthesis the removal, two
        generations (`generation`). Every result's info carries the shared timings and its own mode's. Two generations
        run as two rows of one batch: each row draws from its seed as it would alone, but a batch's sums round
        otherwise than one row's, so a sampled token may differ now and then from `edit`'s with the same seed (as
        with edit_batch): an evaluation's model row is this, and `imusic edit --seed` gives the same edit, not the
        same bytes, for a remove."""
        check_takes(takes)
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else check_seed(seed)
        return self._edit([audio], sample_rate, [instruction], modes, [seed], takes, raw, progress, cancel)[0]

    def edit_batch(
        self,
        audios: Sequence[np.ndarray],
        sample_rate: int,
        instructions: Sequence[str | Instruction],
        modes: Sequence[str | None] = (None,),
        *,
        seeds: Sequence[int],
        raw: bool = False,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> list[dict[str, EditResult]]:
        """Several edits of regions of one length in one batch: for each, what `edit_modes` gives with its seed.

        The model generates every item's rows together (a decode step of a small model costs about the same for one
        row as for dozens, on a GPU above all); each item draws from its own seed's generator, so an item comes out
        as it would alone, but for rounding in the batched arithmetic (which can change a sampled token now and
        then). An item whose audio or instruction is unusable fails the whole call before any generation (check
        items with `edit_modes` to find it). Out of memory: the items are generated one at a time, then in smaller
        windows."""
        if not (len(audios) == len(instructions) == len(seeds)) or not audios:
            raise ConfigError(
                f"edit_batch needs as many instructions and seeds as audios, and at least one: got {len(audios)} "
                f"audio(s), {len(instructions)} instruction(s), {len(seeds)} seed(s)"
            )
        return self._edit(
            audios, sample_rate, instructions, modes, [check_seed(s) for s in seeds], 1, raw, progress, cancel
        )

    def _edit(self, audios, sample_rate, instructions, modes, seeds, takes, raw, progress, cancel):
        """The one edit path: items (audio [C, N], instruction, seed) of one length -> [{mode: EditResult}]."""
        started = time.perf_counter()
        reached = [0.0]  # the fraction last reported: the finishing stage is said at it or above, never below
        if progress is not None:
            report = progress

            def progress(fraction: float, stage: str) -> None:
                reached[0] = max(reached[0], fraction)
                report(fraction, stage)

        parsed = [item if isinstance(item, Instruction) else self.parse(item) for item in instructions]
        chosen = [list(dict.fromkeys(check_mode(item.op, mode) for mode in modes)) for item in parsed]
        if not chosen[0]:
            raise ConfigError("an edit needs at least one mode")
        audios = [_check_audio(audio, sample_rate, item.op) for audio, item in zip(audios, parsed, strict=True)]
        if len({audio.shape[-1] for audio in audios}) > 1:
            raise ConfigError("edit_batch needs regions of one length (samples); give other lengths their own batch")
        sample_rate = int(sample_rate)
        if audios[0].shape[-1] < sample_rate / self.frame_rate:  # under one codec frame: the model hears nothing
            raise AudioError(
                f"the region is {audios[0].shape[-1] / sample_rate * 1000:.3g} ms long: select at least "
                f"{1000 / self.frame_rate:g} ms (one frame of the model's codec)"
            )

        from engine.levels import model_input_gain
        from engine.resample import resample

        model_audio, gains = [], []
        for audio, item in zip(audios, parsed, strict=True):
            mono = audio.mean(axis=0)  # [N]
            if audio.shape[0] > 1 and item.op != "add" and rms_db(mono) < rms_db(audio) - CANCEL_DB:
                raise AudioError("the channels cancel out when mixed to mono (polarity?): the model hears silence")
            model_len = self.model_length(audio.shape[-1], sample_rate)
            heard = resample(mono, sample_rate, self.sample_rate, model_len)  # [M] at the codec rate
            heard = heard - np.float32(np.mean(heard, dtype=np.float64))  # its DC offset: not heard, not measured
            gains.append(model_input_gain(heard, self.card.input_rms_db, fade_in=item.op == "add"))
            model_audio.append(heard * np.float32(gains[-1]))  # at the level the adapter was trained at
            del mono, heard  # an hour's mono mix at the input's rate is half the region: not kept through the edit

        # What each item's modes need generated: its own instruction, or (a remove's mask) the extraction of its stem.
        plans = [
            {mode: self.generation(item, mode) for mode in modes} for item, modes in zip(parsed, chosen, strict=True)
        ]
        made_by = {(i, made.prompt): made for i, plan in enumerate(plans) for made, _ in plan.values()}
        units = list(made_by)  # each generation once, in order
        timings = {"encode": 0.0, "generate": 0.0, "decode": 0.0}
        # one generation for every unit; takes (one item only) one call per unit, as takes share a generator
        groups = [units] if takes == 1 else [[unit] for unit in units]
        generated_out: dict[tuple[int, str], np.ndarray] = {}
        details_of: dict[tuple[int, str], dict] = {}  # each generation's own (windows, retries, take scores)
        with self._lock:
            for g, group in enumerate(groups):
                rows = [i for i, _ in group]
                share = progress  # several generations one after another: each its part of the one fraction
                if progress is not None and len(groups) > 1:
                    share = lambda f, stage, g=g: progress((g + f) / len(groups), stage)  # noqa: E731
                outs, details = self._edit_with_retries(
                    np.stack([model_audio[i] for i in rows]), [made_by[unit] for unit in group],
                    [seeds[i] for i in rows], takes, share, cancel, timings,
                )  # fmt: skip
                for (i, prompt), out in zip(group, outs, strict=True):
                    generated_out[(i, prompt)] = out / np.float32(gains[i])  # back at the input's scale
                    details_of[(i, prompt)] = details
                del outs
        del model_audio  # what the model heard: the finishing steps read the recording and the outputs only
        generated = time.perf_counter()
        if progress is not None:  # a long region's mask and levels take tens of seconds: said, not a stalled "decode"
            progress(max(FINISHING_AT, reached[0]), FINISHING)
        results = []
        for i, (audio, item, seed, gain) in enumerate(zip(audios, parsed, seeds, gains, strict=True)):
            done = {
                mode: self._finish(
                    audio,
                    sample_rate,
                    item,
                    mode,
                    out=generated_out[(i, made.prompt)],
                    made=made,
                    settings=settings,
                    raw=raw,
                    seed=seed,
                    takes=takes,
                    timings=dict(timings),
                    details={**details_of[(i, made.prompt)], "model_input_gain_db": round(db(gain), 2)},
                    cancel=cancel,
                )  # fmt: skip
                for mode, (made, settings) in plans[i].items()
            }
            for result in done.values():  # the generation's time is every mode's; the finishing time each its own
                timing = result.info["timings"]
                timing["total"] = round(generated - started + timing["total"], 4)
            results.append(done)
        if progress is not None:
            progress(1.0, "done")
        return results

    def mask_settings_for(self, op: str) -> MaskSettings:
        """The mask mode's settings for `op`: the Editor's own where it was given them, else the mask's defaults at
        the depth this model's card trusts it to (ModelCard.mask_depth)."""
        if op in self.mask_settings:
            return self.mask_settings[op]
        settings = DEFAULT_SETTINGS[op]
        if op in self.card.mask_depth:
            settings = replace(settings, depth=self.card.mask_depth[op])
        return settings

    def generation(self, item: Instruction, mode: str) -> tuple[Instruction, MaskSettings | None]:
        """(what the model generates for `item` in `mode`, the mask settings that read it; None outside mask mode).
        A remove's mask is steered by the model's extraction of the stem (engine.mask) where the settings say so and
        the model can extract; else every mode generates the instruction itself."""
        if mode not in MASKED_MODES:
            return item, None
        settings = self.mask_settings_for(item.op)
        if settings.steer != STEER_EXTRACT:
            return item, settings
        if "extract" not in self.vocab.operations:
            return item, replace(settings, steer="")  # the model's own removal steers it, as it can say no other
        return Instruction.for_card("extract", item.stem, self.card), settings

    def _finish(
        self, audio, sample_rate, parsed, mode, *, out, made, settings, raw, seed, takes, timings, details, cancel
    ) -> EditResult:
        """The result of one mode from the model's output `out` [M] at the codec rate (generated for `made`, read with
        the mask `settings` in mask mode): channels, levels, info. A cancel is heard before and after each step and
        between the mask's blocks (on an hour's region they take minutes)."""
        from engine.levels import match_level
        from engine.resample import resample

        _check_cancel(cancel)
        started = time.perf_counter()
        warnings: list[str] = [note] if (note := self.card.shortfall(parsed.op)) else []
        if mode in MASKED_MODES:
            from engine.mask import mask_result

            # [C, N] made of the original at its level (the added part alone, in layer mode)
            edited, levels = mask_result(
                audio, sample_rate, out, self.sample_rate, parsed.op, settings, raw=raw, layer=mode == LAYER,
                stop=cancel.is_set if cancel is not None else None,
            )  # fmt: skip
            if (lfe := LFE_CHANNEL.get(audio.shape[0])) is not None and parsed.op == "add":
                edited[lfe] = 0.0 if mode == LAYER else audio[lfe]  # the added part stays off the LFE
            if mode == LAYER:
                levels["warnings"] = _layer_notes(edited, audio, sample_rate, levels)
            timings["mask"] = time.perf_counter() - started
        else:
            edited = resample(out, self.sample_rate, sample_rate, audio.shape[-1])  # [N] at the input rate
            edited = np.repeat(edited[None], audio.shape[0], axis=0)  # mono copied to every channel
            if (lfe := LFE_CHANNEL.get(audio.shape[0])) is not None:
                edited[lfe] = 0.0  # but the LFE: full-band music does not belong on it
            timings["resample"] = time.perf_counter() - started
            t0 = time.perf_counter()
            edited, levels = match_level(edited, audio, sample_rate, parsed.op, mode=mode, raw=raw)
            timings["levels"] = time.perf_counter() - t0
        _check_cancel(cancel)
        timings["total"] = time.perf_counter() - started  # edit_modes adds the shared generation's time
        warnings.extend(levels.get("warnings", []))
        if not all_finite(edited):
            raise ResourceError("the model produced invalid samples (NaN/inf); try another seed or dtype fp32")
        info = {
            "model": self.card.name,
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "operation": parsed.op,
            "stem": parsed.stem,
            "prompt": made.prompt,  # what the model generated: a remove's mask is steered by the stem's extraction
            "seed": seed,
            "takes": takes,
            "input": {
                "sample_rate": sample_rate,
                "channels": int(audio.shape[0]),
                "samples": int(audio.shape[-1]),
                "seconds": audio.shape[-1] / sample_rate,
            },
            "model_sample_rate": self.sample_rate,
            "mode": mode,
            "channel_policy": channel_policy(parsed.op, mode),
            "raw": raw,
            "levels": levels,
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "warnings": warnings,
            **details,
        }
        edited = edited.astype(np.float32, copy=False)  # float32 already on every path: not copied whole
        return EditResult(audio=edited, sample_rate=sample_rate, instruction=parsed, seed=seed, info=info)

    def _edit_with_retries(self, model_audio, parsed, seeds, takes, progress, cancel, timings):
        """Run the windowed edit; on out-of-memory retry with the rows one at a time, then smaller windows, then
        ResourceError."""
        import torch

        from engine.device import is_out_of_memory
        from engine.model import static_decode

        attempts = [(self.window_frames, False)]
        if takes > 1 or len(seeds) > 1:
            attempts.append((self.window_frames, True))
        for divisor in (2, 4):
            if self.window_frames // divisor >= max(8, int(self.frame_rate / 4)):  # below ~0.25 s it is no edit
                attempts.append((self.window_frames // divisor, True))
        tracker = _Progress(progress, 1.0)
        last_error: BaseException | None = None
        for retry, (window, one_by_one) in enumerate(attempts):
            try:
                outs, details = self._run(
                    model_audio, parsed, seeds, takes, window, one_by_one, tracker, cancel, timings
                )
                details["retries"] = retry
                return outs, details
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried; everything else re-raised
                if not is_out_of_memory(exc):
                    raise
                last_error = exc
                static_decode.release(self.model.lm)  # the static decode's caches, sized for the failed attempt
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        raise ResourceError(
            f"out of memory on {self.model.device} even with {attempts[-1][0] / self.frame_rate:g} s windows and one "
            "take at a time: close other programs using it, or load the model in a smaller dtype (bf16/fp16)"
        ) from last_error

    def model_length(self, samples: int, sample_rate: int) -> int:
        """Samples a region of `samples` at `sample_rate` has at the model's rate (at least one)."""
        from engine.resample import resampled_length

        return max(1, resampled_length(samples, sample_rate, self.sample_rate))

    def windows(self, model_samples: int, window_frames: int | None = None) -> list:
        """The windows (engine.windows.Window) an edit of `model_samples` at the model's rate runs in, with windows of
        `window_frames` (default: this Editor's; the out-of-memory retries use shorter ones)."""
        window_frames = window_frames or self.window_frames
        overlap = min(self.overlap_frames, window_frames // 2)
        return plan_windows(self.model.codec.num_frames(model_samples), window_frames, overlap)

    def _run(self, model_audio, parsed, seeds, takes, window_frames, one_by_one, tracker, cancel, timings):
        """One attempt at the windowed edit at the codec rate: model_audio [B, M] -> edited [B, M], details for info.

        Item b generates from its own seed's generator; with takes > 1 (one item) its takes share that generator.
        `one_by_one`: a generate call per row (item or take) instead of one for all."""
        import torch

        from engine.device import torch_threads
        from engine.model import generate as generate_mod

        model = self.model
        lm, codec = model.lm, model.codec
        num_codebooks = lm.cfg.num_codebooks
        items = model_audio.shape[0]
        total_frames = codec.num_frames(model_audio.shape[-1])
        overlap = min(self.overlap_frames, window_frames // 2)
        windows = self.windows(model_audio.shape[-1], window_frames)
        padded = np.zeros((items, total_frames * self.hop), dtype=np.float32)
        padded[:, : model_audio.shape[-1]] = model_audio

        # Work units for progress: generation steps dominate; encode/decode are a fraction of a step per frame.
        units = [(0.05 * w.length, (w.new + num_codebooks) * 1.0, 0.1 * w.length) for w in windows]
        tracker.total = tracker.done + sum(map(sum, units)) or 1.0

        # at the decoder's thread count: a sum's order changes with the threads, and a last bit of the text states
        # flips a sampled token later on (one seed gave other audio in a Ray worker, which runs one thread)
        with torch_threads(generate_mod.decode_threads(lm)):
            text_states, text_mask = model.text.encode([item.prompt for item in parsed])  # [B, S, D], [B, S]
        generators = [torch.Generator(device=lm.device).manual_seed(seed) for seed in seeds]
        stop = cancel.is_set if cancel is not None else None
        margin = int(round(_ENCODE_MARGIN_S * self.frame_rate))

        def since(t0: float) -> float:
            """Seconds since t0 once the device has run what was queued: a GPU runs behind the host, and without
            the wait a stage's time lands in the next stage's timer (the decode steps' in the codec's)."""
            if lm.device.type == "cuda":
                torch.cuda.synchronize(lm.device)
            return time.perf_counter() - t0

        # (item indices, rows per item) of each generate call in a window
        if items > 1:
            calls = [([b], 1) for b in range(items)] if one_by_one else [(list(range(items)), 1)]
        else:
            calls = [([0], 1)] * takes if one_by_one else [([0], takes)]

        segments: list[np.ndarray] = []
        scores: list[list[float]] = []
        previous: torch.Tensor | None = None  # [B, K, L] codes of the previous window (the chosen takes)
        for w, (enc_units, gen_units, dec_units) in zip(windows, units, strict=True):
            _check_cancel(cancel)
            t0 = time.perf_counter()
            tracker.at(0.0, "encode")
            cond = self._encode_window(padded, w, total_frames, margin)  # [B, K, L]
            timings["encode"] += since(t0)
            tracker.advance(enc_units, "encode")

            _check_cancel(cancel)
            t0 = time.perf_counter()
            prompt = None
            if w.prompt:
                prompt = previous[..., previous.shape[-1] - w.prompt :]  # the overlap, as generated last time

            candidates = []
            for index, (rows, copies) in enumerate(calls):
                pick = torch.tensor(rows, device=text_states.device).repeat_interleave(copies)
                candidates.append(
                    generate_mod.generate(
                        lm,
                        text_states[pick],
                        text_mask[pick],
                        num_frames=w.length,
                        cond_codes=cond[pick.to(cond.device)],
                        prompt_codes=None if prompt is None else prompt[pick.to(prompt.device)],
                        cfg_coef=self.cfg_coef,
                        top_k=self.top_k,
                        temperature=self.temperature,
                        generator=generators[rows[0]] if len(rows) == 1 else [generators[b] for b in rows],
                        progress=_step_progress(tracker, gen_units, index, len(calls)),
                        should_stop=stop,
                        static=DECODE_STEPS[self.decode_step],
                    )
                )
            codes = torch.cat(candidates)  # [B, K, L], or [takes, K, L] for one item
            if takes > 1:
                window_scores = self._score_takes(codes, text_states, text_mask, cond)
                best = int(np.argmax(window_scores))
                scores.append([round(s, 4) for s in window_scores])
                codes = codes[best : best + 1]
            previous = codes
            timings["generate"] += since(t0)
            tracker.advance(gen_units, "generate")

            _check_cancel(cancel)
            t0 = time.perf_counter()
            tracker.at(0.0, "decode")
            wav = codec.decode(codes)[:, 0].float().cpu().numpy()  # [B, L * hop]
            segments.append(wav[:, : w.length * self.hop])
            timings["decode"] += since(t0)
            tracker.advance(dec_units, "decode")

        starts = [w.start * self.hop for w in windows]
        joined = np.stack([join([seg[b] for seg in segments], starts, total_frames * self.hop) for b in range(items)])
        details = {
            "windows": len(windows),
            "window_seconds": window_frames / self.frame_rate,
            "overlap_seconds": overlap / self.frame_rate,
            "window_plan": [(w.start, w.end) for w in windows],
        }
        if takes > 1:
            details["take_scores"] = scores
            details["take_choice"] = "highest mean token log-likelihood under the model, per window"
        return joined[:, : model_audio.shape[-1]], details

    def _encode_window(self, padded: np.ndarray, w: Window, total_frames: int, margin: int):
        """Condition codes [B, K, w.length] for a window of padded [B, samples], encoded with up to `margin` frames
        of context each side."""
        import torch

        first = max(0, w.start - margin)
        last = min(total_frames, w.end + margin)
        chunk = torch.from_numpy(np.ascontiguousarray(padded[:, first * self.hop : last * self.hop]))[:, None]
        codes = self.model.codec.encode(chunk)  # [B, K, last - first]
        offset = w.start - first
        return codes[..., offset : offset + w.length].to(self.model.lm.device)

    def _score_takes(self, codes, text_states, text_mask, cond) -> list[float]:
        """Mean token log-likelihood (minus the cross-entropy) of each take under the conditioned model."""
        import torch

        scores = []
        with torch.inference_mode():
            for i in range(codes.shape[0]):
                loss, _ = self.model.lm.loss(codes[i : i + 1], text_states, text_mask, cond)
                scores.append(-float(loss))
        return scores


def _step_progress(tracker: _Progress, units: float, index: int, count: int) -> Callable[[int, int], None]:
    """generate()'s progress(step, total) for batch `index` of `count` -> the job's fraction."""

    def on_step(step: int, total: int) -> None:
        tracker.at(units * (index + step / max(total, 1)) / count, "generate")

    return on_step


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("edit cancelled")


def _check_audio(audio: Any, sample_rate: Any, op: str) -> np.ndarray:
    """Validate and normalise the input to float32 [C, N]; AudioError with a producer's message otherwise."""
    try:
        rate = float(sample_rate)
    except (TypeError, ValueError):
        raise AudioError(f"the sample rate must be a number, got {sample_rate!r}") from None
    if not math.isfinite(rate) or rate != int(rate) or not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(
            f"unsupported sample rate {sample_rate!r}: use a whole number of Hz from {MIN_RATE} to {MAX_RATE}"
        )
    if audio is None:
        raise AudioError("no audio given")
    audio = np.asarray(audio)
    if audio.dtype.kind == "i":  # PCM integers: scale to [-1, 1)
        audio = audio.astype(np.float64) / float(np.iinfo(audio.dtype).max + 1)
    elif audio.dtype.kind == "u":  # unsigned PCM (8-bit WAV's) is offset binary: silence is the middle value
        half = float(np.iinfo(audio.dtype).max // 2 + 1)
        audio = (audio.astype(np.float64) - half) / half
    elif audio.dtype.kind != "f":
        raise AudioError(f"audio must hold numbers (float samples in [-1, 1]), got {audio.dtype}")
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2:
        raise AudioError(f"audio must be [channels, samples], got an array of shape {audio.shape}")
    channels, samples = audio.shape
    if channels == 0 or samples == 0:
        raise AudioError("the audio is empty (0 samples): select a region with sound in it")
    if channels > MAX_CHANNELS and samples <= MAX_CHANNELS:  # [samples, channels] by the look of it
        raise AudioError(
            f"audio has {channels} channels and {samples} samples: pass it as [channels, samples], not transposed"
        )
    if (problem := unsupported_audio(rate, channels)) is not None:
        raise AudioError(f"the audio has {problem}")
    # max and min read the samples without a copy (a NaN anywhere makes both NaN); an hour of stereo is 1.4 GB
    top, bottom = float(audio.max()), float(audio.min())
    if not (math.isfinite(top) and math.isfinite(bottom)):
        raise AudioError("the audio contains NaN or infinite samples: render or bounce the region again")
    if max(top, -bottom) > MAX_SAMPLE:
        raise AudioError(
            f"the audio holds samples far out of range (up to {max(top, -bottom):.3g}; full scale is 1): render or "
            "bounce the region again"
        )
    audio = audio.astype(np.float32, copy=False)  # nothing here writes into it: the caller's float32 is not copied
    if op != "add" and is_silent(audio):
        raise AudioError(f"the selection is silent: there is nothing to {op}")
    return audio
