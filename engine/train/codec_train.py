"""Train a small EnCodec-architecture codec from scratch (stage 1 of the embedded default model).

The network is transformers' `EncodecModel` (so the trained codec loads like any EnCodec checkpoint); what
transformers leaves out is training, written here: residual vector quantisation with EMA codebooks (k-means-like
init from the first batch, dead codes re-seeded from the batch), a straight-through estimator, and a
reconstruction loss of time-domain L1 plus multi-resolution STFT (log-magnitude L1 + spectral convergence), and
optionally the waveform's normalised MSE (`wave_mse_weight`), the only phase-sensitive term: without it the decoder
learnt to return every tone as a buzz at the frame rate (docs/embedded_model/codec.md). A run can start from an
exported codec (`init_from`) with a fresh optimiser and schedule, so that a recipe can chain runs of different losses.
No adversarial loss: it would triple the cost per step on 2 CPU cores; the price is a dull, noisy top end.
"""

from __future__ import annotations

import functools
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.device import to_device, training_device, usable_cores
from engine.errors import CheckpointError, ConfigError, DataError
from engine.files import (
    AUDIO_FORMATS,
    audio_files,
    short_digest,
    staged_dir,
    user_path,
    write_bytes_atomic,
    write_json_atomic,
)
from engine.model.codec import move_codec
from engine.model.fit import check_state_fits
from engine.train.checkpoints import (
    check_same_data,
    checkpoint_payload,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from engine.train.config import (
    CODEC_EXPORT,
    CODEC_FLAGS,
    CODEC_LOG,
    CODEC_RESUME_FLAGS,
    CODEC_SETTINGS,
    CodecTrainConfig,
    lr_factor,
    resume_moves,
    same_setting,
)
from engine.train.data import HELD_OUT
from engine.train.data.datasets import split_songs
from engine.train.data.layouts import probe, scan


def encodec_config(cfg: CodecTrainConfig) -> Any:
    """The transformers EncodecConfig for this codec, with exactly num_codebooks (engine.model.codec.encodec_config)."""
    from engine.model.codec import encodec_config as with_codebooks

    return with_codebooks(
        cfg.num_codebooks,
        sampling_rate=cfg.sample_rate,
        audio_channels=1,
        num_filters=cfg.num_filters,
        hidden_size=cfg.hidden_size,
        codebook_dim=cfg.hidden_size,
        upsampling_ratios=list(cfg.upsampling_ratios),
        codebook_size=cfg.codebook_size,
        num_lstm_layers=cfg.num_lstm_layers,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
        use_causal_conv=False,
        norm_type="weight_norm",
    )


def training_audio_files(root: Path, exclude_songs: Sequence[str] = ()) -> list[Path]:
    """Every audio file under root (stems and mixes), skipping the songs held out for testing: `exclude_songs` are
    their folders relative to root (held_out_songs), each holding the files in it and below it; "." (a song whose
    stems lie in root itself, the plain layout's) holds only the files directly in root."""
    excluded = [Path(song).parts for song in exclude_songs]

    def held_out(path: Path) -> bool:
        parts = path.relative_to(root).parts  # the last part is the file's name
        return any(parts[: len(song)] == song and (song or len(parts) == 1) for song in excluded)

    files = [path for path in audio_files(root) if not held_out(path)]
    if not files:
        raise DataError(f"no audio files ({AUDIO_FORMATS}) under {root}")
    return files


# Decoded training audio by (files, rate): the recipe's codec phases read the same files, so the second phase does not
# decode them again (about 7300 FLACs on the device). `forget_preloaded` frees it when the stage ends.
_PRELOADED: dict[tuple, list[np.ndarray]] = {}


def forget_preloaded() -> None:
    _PRELOADED.clear()


class ClipSampler:
    """Random fixed-length mono clips from a list of files, decoded with a seek (never the whole file)."""

    def __init__(self, files: Sequence[Path], sample_rate: int, seconds: float, seed: int = 0, preload: bool = False):
        self.files = list(files)
        self.sample_rate = sample_rate
        self.length = int(round(seconds * sample_rate))
        self.rng = random.Random(seed)
        self.frames = []
        for path in self.files:
            try:  # a file cut short is named now, not when a clip is first drawn near its end hours into the run
                frames, rate, _ = probe(path)
            except Exception as exc:  # soundfile raises several types for a broken file; layouts.CutShort
                raise _unreadable(path, exc) from None
            if rate != sample_rate:
                raise DataError(
                    f"{path} is at {rate} Hz; the codec trains at {sample_rate} Hz and reads its data as it is: "
                    f"resample the data set to {sample_rate} Hz first (the other stages resample as they read)"
                )
            self.frames.append(frames)
        self.audio: list[np.ndarray] | None = None
        key = (tuple(str(p) for p in self.files), sample_rate)
        if preload and key in _PRELOADED:
            self.audio = _PRELOADED[key]
        elif (
            preload
        ):  # the same clips as the seeks would give, read once by parallel threads (libsndfile frees the GIL)
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(32, usable_cores())) as pool:
                self.audio = _PRELOADED[key] = list(pool.map(_read_int16_mono, self.files))

    def _read(self, index: int, start: int) -> np.ndarray:
        if self.audio is not None:
            return self.audio[index][start : start + self.length].astype(np.float32) / np.float32(32768.0)
        try:
            audio, _ = sf.read(str(self.files[index]), start=start, frames=self.length, dtype="float32", always_2d=True)
        except (RuntimeError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
            raise _unreadable(self.files[index], exc) from None
        return audio.mean(axis=1)

    def clip(self) -> np.ndarray:
        for _ in range(20):  # re-draw near-silent clips
            index = self.rng.randrange(len(self.files))
            start = self.rng.randrange(max(1, self.frames[index] - self.length))
            audio = self._read(index, start)
            if len(audio) < self.length:
                audio = np.pad(audio, (0, self.length - len(audio)))
            if np.sqrt(np.mean(audio**2)) > 1e-3:
                return audio
        return audio

    def batch(self, size: int) -> np.ndarray:
        return np.stack([self.clip() for _ in range(size)])[:, None, :]  # [B, 1, N]

    def state(self) -> object:
        return self.rng.getstate()

    def set_state(self, state: object) -> None:
        self.rng.setstate(_as_tuple(state))


def _read_int16_mono(path: Path) -> np.ndarray:
    try:
        audio, _ = sf.read(str(path), dtype="int16", always_2d=True)
    except (RuntimeError, OSError) as exc:
        raise _unreadable(path, exc) from None
    return audio[:, 0].copy() if audio.shape[1] == 1 else audio.mean(axis=1).astype(np.int16)


def _unreadable(path: Path, exc: Exception) -> DataError:
    """A stem whose header read fine but whose audio does not decode (a cut or damaged file)."""
    return DataError(f"cannot read {path}: {exc}; the file is damaged or cut short: replace it, or remove its song")


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


class RVQTrainer:
    """EMA residual vector quantisation over the codebooks of a transformers EncodecModel."""

    def __init__(self, model, decay: float, dead_threshold: float):
        self.codebooks = [layer.codebook for layer in model.quantizer.layers]
        self.decay = decay
        self.dead_threshold = dead_threshold
        self.initialised = False

    def __call__(self, latents, train: bool):
        batch, dim, frames = latents.shape
        flat = latents.permute(0, 2, 1).reshape(-1, dim)  # [B*F, D]
        residual = flat
        quantized = torch.zeros_like(flat)
        commit = flat.new_zeros(())
        codes = []
        if train and not self.initialised:
            self._init_from(flat.detach())
        for codebook in self.codebooks:
            embed = codebook.embed  # [C, D]
            dist = (
                residual.detach().pow(2).sum(1, keepdim=True) - 2 * residual.detach() @ embed.t() + embed.pow(2).sum(1)
            )
            index = dist.argmin(dim=1)
            chosen = F.embedding(index, embed)
            if train:
                self._ema_update(codebook, residual.detach(), index)
            commit = commit + F.mse_loss(residual, chosen.detach())
            quantized = quantized + chosen
            residual = residual - chosen
            codes.append(index.view(batch, frames))
        straight_through = flat + (quantized - flat).detach()
        out = straight_through.view(batch, frames, dim).permute(0, 2, 1)
        return out, commit / len(self.codebooks), torch.stack(codes, dim=1)  # [B,D,F], [], [B,K,F]

    def _init_from(self, flat) -> None:
        """Each codebook seeded from the batch's residuals at its depth: distinct vectors where the batch has enough,
        none a vector a codebook above was seeded from (drawn with replacement and from those, whose residuals are zero
        and then alike, a deeper codebook held a fifth to a third of identical codes, all but one never chosen and kept
        alive some 300 steps by a count of 1); each code counted with the vectors that choose it, as audiocraft's
        k-means init counts its clusters, so the EMA weighs the first batch as it was."""
        residual = flat
        taken = torch.zeros(flat.shape[0], dtype=torch.bool)  # rows a codebook above was seeded from: their residuals
        # are zero there, and alike below (all of them choose the same nearest code)
        for codebook in self.codebooks:
            size = codebook.embed.shape[0]
            fresh = torch.nonzero(~taken).squeeze(1)
            rows = fresh if fresh.numel() >= size else torch.arange(residual.shape[0])
            if rows.numel() >= size:
                pick = rows[torch.randperm(rows.numel())[:size]]
            else:
                pick = rows[torch.randint(0, rows.numel(), (size,))]
            taken[pick] = True
            init = residual[pick.to(residual.device)]
            dist = residual.pow(2).sum(1, keepdim=True) - 2 * residual @ init.t() + init.pow(2).sum(1)
            index = dist.argmin(1)
            counts = torch.bincount(index, minlength=size).to(init.dtype)
            codebook.embed.copy_(init)
            codebook.embed_avg.copy_(init * counts[:, None])
            codebook.cluster_size.copy_(counts)
            residual = residual - init[index]
        self.initialised = True

    def _ema_update(self, codebook, residual, index) -> None:
        size = codebook.embed.shape[0]
        onehot = torch.zeros(residual.shape[0], size, dtype=residual.dtype, device=residual.device)
        onehot.scatter_(1, index[:, None], 1.0)
        counts = onehot.sum(0)
        codebook.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        codebook.embed_avg.mul_(self.decay).add_(onehot.t() @ residual, alpha=1 - self.decay)
        total = codebook.cluster_size.sum()
        smoothed = (codebook.cluster_size + 1e-5) / (total + size * 1e-5) * total
        codebook.embed.copy_(codebook.embed_avg / smoothed[:, None])
        # Codes nobody chose for a while are re-seeded from this batch. Without a branch on how many there are: asking
        # would wait for the accelerator at every step of every codebook.
        dead = codebook.cluster_size < self.dead_threshold  # [C]
        fresh = residual[torch.randint(0, residual.shape[0], (size,), device=residual.device)]  # [C, D]
        codebook.embed.copy_(torch.where(dead[:, None], fresh, codebook.embed))
        codebook.embed_avg.copy_(torch.where(dead[:, None], fresh, codebook.embed_avg))
        codebook.cluster_size.masked_fill_(dead, 1.0)


def stft_loss(output: Any, target: Any, sizes: Sequence[int]) -> Any:
    """Multi-resolution STFT loss: log-magnitude L1 plus spectral convergence, averaged over resolutions."""
    total = output.new_zeros(())
    out = output.squeeze(1)
    ref = target.squeeze(1)
    for n_fft in sizes:
        window = torch.hann_window(n_fft, device=out.device)
        kwargs = dict(n_fft=n_fft, hop_length=n_fft // 4, window=window, return_complex=True)
        mag_out = torch.stft(out, **kwargs).abs()
        mag_ref = torch.stft(ref, **kwargs).abs()
        log_l1 = (torch.log(mag_out + 1e-5) - torch.log(mag_ref + 1e-5)).abs().mean()
        convergence = torch.linalg.norm(mag_ref - mag_out) / (torch.linalg.norm(mag_ref) + 1e-8)
        total = total + log_l1 + convergence
    return total / len(sizes)


LR_FLOOR = 0.1  # the codec's cosine ends at a tenth of its rate, not at zero
LOSS_KEYS = ("loss", "l1", "stft", "commit", "nmse")


def read_log(run_dir: Path) -> list[dict]:
    """The logged rows of a codec run ([] when it logged nothing yet)."""
    path = Path(run_dir) / CODEC_LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _trim_log(path: Path, step: int) -> None:
    """Keep the log's rows up to `step` (the checkpoint a run resumes from): the rows a killed run logged after its
    last checkpoint are logged again as it replays those steps (and a row torn by the kill is dropped)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("step", step + 1) <= step:
            kept.append(line + "\n")
    write_bytes_atomic(path, "".join(kept).encode())


def final_losses(rows: Sequence[dict], last: int = 8) -> dict[str, float]:
    """Each loss averaged over the last `last` logged rows (single rows are noisy), rounded for a card."""
    tail = list(rows[-max(1, min(last, len(rows))) :])
    keys = [k for k in LOSS_KEYS if tail and all(k in row for row in tail)]
    return {k: round(sum(row[k] for row in tail) / len(tail), 4) for k in keys}


def _restoring_tf32(function):
    """The process's TF32 flags as they were after `function` returns or raises: the codec stage turns TF32 on for
    its own matmuls and convolutions on CUDA, and the stages after it in the same process (the recipe's base export,
    its fp32 evaluation) must not inherit that."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        try:
            return function(*args, **kwargs)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags

    return wrapper


@_restoring_tf32
def train_codec(
    data: Path,
    run_dir: Path,
    cfg: CodecTrainConfig,
    *,
    exclude_songs: Sequence[str] = (),
    resume: bool = False,
    threads: int | None = None,
    quiet: bool = False,
    stop_after: int | None = None,
    init_from: Path | None = None,
    deadline: float | None = None,
) -> Path | None:
    """Train (or resume) the codec; returns the exported transformers-layout directory `run_dir/codec`.

    `stop_after` ends this run after that many steps (checkpointed, None returned): a session-sized slice of a
    longer schedule, continued later with `resume=True`. `init_from` (a codec directory this stage exported, of the
    same sizes) starts a new run from its weights and codebooks with a fresh optimiser and schedule. `deadline` (a
    time.time() value) shortens the schedule, from measured step times, so that the run ends and exports by then
    (engine/train/budget.py); the steps it ran are recorded in the log and config (`cfg.steps`).
    """
    from transformers import EncodecModel  # heavy: only the codec stage needs it

    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = list_checkpoints(run_dir)
    log_path = run_dir / CODEC_LOG

    cfg.check()
    torch.manual_seed(cfg.seed)
    device = training_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = EncodecModel(encodec_config(cfg))
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    files = training_audio_files(data, exclude_songs)
    sampler = ClipSampler(files, cfg.sample_rate, cfg.seconds, seed=cfg.seed, preload=cfg.preload)
    rvq = RVQTrainer(model, cfg.ema_decay, cfg.dead_code_threshold)
    # the files it draws from, where they lie in the data set and their lengths: a resume must find the same
    drawn = [
        (Path(path).relative_to(Path(data)).as_posix(), frames)
        for path, frames in zip(files, sampler.frames, strict=True)
    ]
    identity = short_digest(drawn)
    step = 0
    if init_from is not None and not (resume and checkpoints):
        _load_initial(model, Path(init_from))
        # Trained codebooks are kept; all-zero ones (the earlier run ended before it began quantising) are seeded
        # from the first batch as in a fresh run.
        rvq.initialised = any(bool(codebook.embed.abs().sum()) for codebook in rvq.codebooks)
    if resume and checkpoints:
        state = load_checkpoint(checkpoints[-1], checkpoints[-2] if len(checkpoints) > 1 else None, stage="codec")
        check_same_data(state, identity, data)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        rvq.initialised = state["rvq_initialised"]
        sampler.set_state(state["sampler"])
        set_rng_state(state["rng"])
        _trim_log(log_path, step)
    else:  # from step 0 (a resume of a run killed before its first checkpoint too): the log starts again
        log_path.unlink(missing_ok=True)
    move_codec(model, device)
    for group in optimizer.state.values():  # a resumed optimiser's moments follow the model
        for name, value in group.items():
            if torch.is_tensor(value) and name != "step":
                group[name] = value.to(device)
    write_json_atomic(run_dir / CODEC_SETTINGS, asdict(cfg), sort_keys=False)
    from engine.train.budget import StepBudget

    budget = StepBudget(deadline, step)

    bar = tqdm(total=cfg.steps, initial=step, desc="codec", disable=quiet, dynamic_ncols=True)
    started = time.time()
    # The losses add up on the device and are read at log steps only: reading one is a wait for the accelerator.
    running = torch.zeros(len(LOSS_KEYS), device=device)
    summed = 0  # the steps in `running`: a checkpoint between log steps carries both, so rows average the same steps
    if resume and checkpoints and "running" in state:
        running, summed = torch.tensor(state["running"], device=device), int(state["summed"])
    last_step = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    while step < last_step:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg.warmup, cfg.steps, floor=LR_FLOOR)
        audio = to_device(torch.from_numpy(sampler.batch(cfg.batch)), device)
        latents = model.encoder(audio)
        if step < cfg.quantize_after:
            quantized, commit = latents, latents.new_zeros(())
        else:
            quantized, commit, _ = rvq(latents, train=True)
        output = model.decoder(quantized)[..., : audio.shape[-1]]
        l1 = (output - audio).abs().mean()
        spectral = stft_loss(output, audio, cfg.stft_sizes)
        nmse = (output - audio).pow(2).mean() / (audio.pow(2).mean() + 1e-8)
        loss = l1 + cfg.stft_weight * spectral + cfg.commit_weight * commit + cfg.wave_mse_weight * nmse
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        shorter = budget.fit(step, cfg.steps)
        if shorter < cfg.steps:  # the deadline: a shorter cosine, ending by then
            cfg.steps = shorter
            # and most of it quantised: a codec exported before its codebooks trained is no codec (its codes say
            # nothing), so the unquantised start takes at most a quarter of the shortened run
            cfg.quantize_after = min(cfg.quantize_after, shorter // 4)
            last_step = min(last_step, shorter)
            bar.total = shorter
        running += torch.stack([loss, l1, spectral, commit, nmse]).detach()  # in LOSS_KEYS' order
        summed += 1
        bar.update(1)
        save = step % cfg.ckpt_every == 0 or step == last_step
        if (save or step % cfg.log_every == 0) and not bool(torch.isfinite(running).all()):
            # read where the losses are read anyway, and before any weights are saved: a codec trained on a
            # non-finite loss must not reach the stages that encode with it
            raise DataError(f"the codec's loss became non-finite by step {step}: lower --lr or check the data")
        if step % cfg.log_every == 0:
            row = dict(zip(LOSS_KEYS, (running / summed).tolist(), strict=True))
            row.update(step=step, seconds=round(time.time() - started, 1))
            with log_path.open("a") as log:
                log.write(json.dumps(row) + "\n")
            bar.set_postfix(loss=f"{row['loss']:.3f}", stft=f"{row['stft']:.3f}")
            running.zero_()
            summed = 0
        if save:
            payload = checkpoint_payload(
                "codec",
                step,
                asdict(cfg),
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                rvq_initialised=rvq.initialised,
                sampler=sampler.state(),
                rng=rng_state(),
                running=running.tolist(),
                summed=summed,
                data=identity,
            )
            save_checkpoint(run_dir, step, payload, keep=1)
    bar.close()
    write_json_atomic(run_dir / CODEC_SETTINGS, asdict(cfg), sort_keys=False)  # the steps it ran
    if step < cfg.steps:
        return None
    return export_codec(model, run_dir / CODEC_EXPORT)


def _load_initial(model: Any, source: Path) -> None:
    """Copy a trained codec's weights (codebooks included) into `model`; sizes must match exactly."""
    from engine.weights.transformers_layout import load_codec_dir

    trained = load_codec_dir(source)
    theirs = trained.state_dict()
    check_state_fits(theirs, model.state_dict(), f"the codec in {source}", "the codec this run builds")
    model.load_state_dict(theirs)


def codec_run_of(codec: Path) -> Path | None:
    """The run folder a codec came from (the one holding its CODEC_SETTINGS): `codec` itself when a run folder is
    given, else its parent (`codec` is the run's CODEC_EXPORT); None when neither holds them."""
    for folder in (Path(codec), Path(codec).parent):
        if (folder / CODEC_SETTINGS).is_file():
            return folder
    return None


def export_codec(model: Any, out_dir: Path) -> Path:
    """Write the codec in transformers layout (config.json + model.safetensors), the folder whole or not at all: a run
    cut while it is written leaves no codec that looks finished (engine.train.config.finished_file)."""
    out_dir = Path(out_dir)
    model.eval()
    for layer in model.quantizer.layers:
        layer.codebook.inited.fill_(1.0)
    from engine.weights.transformers_layout import quiet_transformers

    with staged_dir(out_dir) as staged, quiet_transformers():  # no progress bar in a training log
        model.save_pretrained(staged)
    return out_dir


def held_out_songs(data: Path) -> list[str]:
    """The folders of the validation and test songs relative to `data` (the same split as every other stage uses;
    "provider/track" in MoisesDB's layout), and of the songs the data set leaves out of every split (Slakh's
    omitted/: duplicates of songs that are in the splits, test songs among them), as training_audio_files takes
    them."""
    catalog = scan(data)
    splits = split_songs(catalog.songs)
    held = [song for name in HELD_OUT for song in splits[name]] + [s for s in catalog.songs if s.split == "omitted"]
    root = Path(catalog.root)
    return sorted({song.path.relative_to(root).as_posix() for song in held})


def run_stage(args: Any) -> int:
    """`imusic train --stage codec`: the codec stage, with the run's settings remembered for `--resume`."""
    run_dir = user_path(args.output)
    saved = run_dir / CODEC_SETTINGS
    if args.resume_from:
        raise ConfigError("the codec stage keeps its last checkpoint only and resumes from it: use --resume")
    from engine.train.cli import RECIPE_OPTIONS, TRAIN_OPTIONS, given_flags, say_unused

    reads = {*CODEC_FLAGS, "data", "stage", "device"}
    unused = given_flags(args, [name for name in (*TRAIN_OPTIONS, *RECIPE_OPTIONS) if name not in reads])
    if args.resume:
        if not saved.exists():
            raise CheckpointError(f"nothing to resume in {run_dir}: no {CODEC_SETTINGS}")
        cfg = CodecTrainConfig.from_dict(json.loads(saved.read_text()))
        data = Path(cfg.extra["data"])
        # The run's own settings stand; only how long it goes, how often it saves and where it runs move. A setting
        # given again with the run's own value (what `--once` in a make target does) is no news.
        own = {**{flag: getattr(cfg, CODEC_FLAGS[flag]) for flag in CODEC_FLAGS}, "data": cfg.extra.get("data")}
        own["init_codec"] = cfg.extra.get("init_from")
        unused += [
            f"--{flag.replace('_', '-')}"
            for flag in (*(f for f in CODEC_FLAGS if f not in CODEC_RESUME_FLAGS), "data", "init_codec")
            if getattr(args, flag, None) is not None and not same_setting(getattr(args, flag), own[flag])
        ]
    say_unused("codec", unused)
    if not args.resume:
        if not args.data:
            raise DataError("--data is required for a new codec run")
        if list_checkpoints(run_dir):
            raise DataError(f"{run_dir} already holds a codec run: use --resume, or another -o")
        data = user_path(args.data)
        cfg = CodecTrainConfig(extra={"data": str(data)})
        for flag, name in CODEC_FLAGS.items():
            if getattr(args, flag, None) is not None:
                setattr(cfg, name, getattr(args, flag))
        if getattr(args, "init_codec", None):
            init = user_path(args.init_codec)
            source = codec_run_of(init)
            if source is not None:  # the sizes of the codec it continues, whatever the defaults are now
                sizes = CodecTrainConfig.from_dict(json.loads((source / CODEC_SETTINGS).read_text()))
                for name in _SIZE_FIELDS:
                    setattr(cfg, name, getattr(sizes, name))
            cfg.extra["init_from"] = str(init)
    moved = {flag: getattr(args, flag) for flag in CODEC_RESUME_FLAGS if getattr(args, flag, None) is not None}
    if args.resume and (moves := resume_moves(moved, {flag: getattr(cfg, CODEC_FLAGS[flag]) for flag in moved})):
        print(f"imusic train: {moves}", file=sys.stderr)
    for flag, value in moved.items():  # how long it goes and how often it saves and logs move on a resume too
        setattr(cfg, CODEC_FLAGS[flag], value)
    if getattr(args, "device", None) or not args.resume:  # where it trains may change on a resume, as for every stage
        cfg.device = str(training_device(getattr(args, "device", None)))
    init = cfg.extra.get("init_from")
    out = train_codec(
        data,
        run_dir,
        cfg,
        exclude_songs=held_out_songs(data),
        resume=bool(args.resume),
        quiet=args.quiet,
        init_from=Path(init) if init else None,
    )
    print(f"codec: {out}  (log: {run_dir / CODEC_LOG})")
    return 0


# The fields that fix the network's shapes (a run started from another codec takes them from it).
_SIZE_FIELDS = (
    "sample_rate",
    "num_filters",
    "hidden_size",
    "upsampling_ratios",
    "codebook_size",
    "num_codebooks",
    "num_lstm_layers",
)
