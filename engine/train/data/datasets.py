"""(input, target, instruction) triples from stem data sets, following the official Instruct-MusicGen rules.

Official rules (ldzhangyx/instruct-MusicGen, src/data/slakh_datamodule.py and moisesdb_datamodule.py):
- stems are grouped by class; a clip's "mix" is a random subset of the song's *other* classes, not the full mix:
  add:     input = k other classes,               target = input + stem
  remove:  input = k other classes + stem,        target = input - stem (the k others)
  extract: input = k other classes + stem,        target = stem
  with k drawn uniformly in [1, M-1] (M = classes in the song). MoisesDB's rule differs for add: all others.
- "4stems" keeps only Drums, Bass, Piano, Guitar, for the target *and* the other stems; "all" keeps every class.
- a clip is re-drawn (same operation, new stem, subset and offset; up to 10 times) when the input or the target
  peaks under 0.1, or when the change (target - input) is under 0.01 for more than 70% of its samples. We also
  apply that last test to the stem itself, so that an extract never targets a near-silent stem.
- mono (channel mean); gain "official" scales input and target by (stems in song) / (stems on the louder side),
  then both by one factor if either would clip. One common factor keeps target = input + stem exact.
Our departures: the Slakh silence rule and Slakh instruction text ("Music piece. Instruct: Add Drums.") for every
layout (the official MoisesDB loader checks only peaks and writes "Instruction:"), class names spelled as Slakh's,
and every item drawn from its own seeded generator instead of the global `random`.

The core is numpy only (training feeds it to torch in engine/train/). Audio is decoded window by window
(soundfile seek) and resampled with a polyphase filter, so random access never reads whole files.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soundfile as sf

from engine.errors import ConfigError, DataError
from engine.files import unsupported_audio
from engine.instructions import OFFICIAL_STEMS, OFFICIAL_TEMPLATE, OFFICIAL_VERBS, edit_pair, render_prompt
from engine.instructions import OPERATIONS as OPS
from engine.model.config import SAMPLE_RATE
from engine.resample import polyphase_ratio
from engine.train.data import CLASS_SETS, CLIP_SECONDS, FOUR_STEMS, SONG_SPLITS
from engine.train.data.layouts import Catalog, Song, StemFile
from engine.train.data.stems import canonical_class, caption, is_targetable

SPLITS = (*SONG_SPLITS, "all")  # what a dataset may be opened as


def official_prompt(op: str, stem: str) -> str:
    """The official training text: ("add", "Drums") -> "Music piece. Instruct: Add Drums."."""
    return render_prompt(OFFICIAL_TEMPLATE, OFFICIAL_VERBS, op, stem)


def parse_classes(text: str) -> str | tuple[str, ...]:
    """A command line's class set for ClipConfig.classes: "4stems", "all", or "Drums, Bass" as a tuple of names."""
    text = text.strip()
    if text in CLASS_SETS:
        return text
    return tuple(name.strip() for name in text.split(",") if name.strip())


@dataclass(frozen=True)
class ClipConfig:
    """How clips are cut and drawn. `classes` is "4stems", "all", or a tuple of class names."""

    sample_rate: int = SAMPLE_RATE
    seconds: float = CLIP_SECONDS
    classes: str | tuple[str, ...] = FOUR_STEMS
    ops: tuple[str, ...] = OPS
    rule: str = "auto"  # "slakh", "moisesdb", or "auto" (MoisesDB's rule for MoisesDB, Slakh's otherwise)
    exclude: tuple[str, ...] = ("Vocals",)  # MusicGen was trained without vocals; the official loader drops them
    gain: str = "official"  # or "none": only the common anti-clipping factor
    min_peak: float = 0.1
    quiet_level: float = 0.01
    max_quiet_fraction: float = 0.7
    max_redraws: int = 10

    def __post_init__(self) -> None:
        if not (self.sample_rate > 0 and math.isfinite(self.seconds) and self.seconds > 0):
            raise ConfigError(f"sample rate and clip length must be positive numbers, got {self.sample_rate} Hz and "
                              f"{self.seconds} s")  # fmt: skip
        if (problem := unsupported_audio(self.sample_rate, 1)) is not None:  # 7 Hz clips were written without a word
            raise ConfigError(f"clips at {problem}")
        bad = [op for op in self.ops if op not in OPS]
        if bad or not self.ops:
            raise ConfigError(f"unknown operation(s) {bad}: use {', '.join(OPS)}")
        if self.rule not in ("auto", "slakh", "moisesdb"):
            raise ConfigError(f"unknown sampling rule {self.rule!r}: use auto, slakh or moisesdb")
        if self.gain not in ("official", "none"):
            raise ConfigError(f"unknown gain mode {self.gain!r}: use official or none")
        if isinstance(self.classes, str) and self.classes not in CLASS_SETS:
            raise ConfigError(f"unknown class set {self.classes!r}: use {', '.join(CLASS_SETS)}, or a list of classes")
        excluded = {canonical_class(name) for name in self.exclude}
        named = [name for name in (self.class_set() or ()) if name in excluded]
        if named and not isinstance(self.classes, str):  # a class the user named would be dropped without a word
            raise ConfigError(
                f"{', '.join(named)} cannot be trained: excluded from training ({', '.join(sorted(excluded))}: "
                "MusicGen was trained without vocals, and the official Instruct-MusicGen drops them); name other "
                "classes"
            )

    @property
    def num_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    def class_set(self) -> tuple[str, ...] | None:
        """Allowed classes, None for all."""
        if self.classes == "all":
            return None
        if self.classes == FOUR_STEMS:
            return OFFICIAL_STEMS
        return tuple(canonical_class(name) for name in self.classes)


@dataclass
class Clip:
    """One training or evaluation example. Audio is mono float32 [N] at `sample_rate`."""

    input: np.ndarray  # [N]
    target: np.ndarray  # [N]
    stem: np.ndarray  # [N] the stem the instruction names, at the same gain as input and target
    op: str
    stem_name: str
    song_id: str
    offset: float  # seconds into the song
    offset_samples: int  # at sample_rate
    sample_rate: int
    instruction: str
    input_classes: tuple[str, ...]
    target_classes: tuple[str, ...]
    redraws: int = 0
    quiet: bool = False  # still near-silent after max_redraws (kept, counted)


# ---- audio windows -------------------------------------------------------------------------------------------------


_ratio = lru_cache(maxsize=64)(polyphase_ratio)  # (up, down) of a stem's rate to the clips' rate


def _resample(audio: np.ndarray, up: int, down: int) -> np.ndarray:
    from scipy.signal import resample_poly

    return resample_poly(audio, up, down).astype(np.float32)


def _margin_blocks(up: int, down: int) -> int:
    return 0 if up == down == 1 else max(1, math.ceil(64 / up))  # >= 64 output samples of filter margin


def _source_window(stem: StemFile, start: int, length: int, sample_rate: int) -> np.ndarray:
    """Mono float32 at the stem's own rate covering the output window plus the resampling margin."""
    up, down = _ratio(stem.sample_rate, sample_rate)
    if start % up:
        raise ValueError(f"offset {start} is not on the source sample grid (step {up})")
    margin = _margin_blocks(up, down)
    source_start = (start // up - margin) * down
    source_length = (math.ceil(length / up) + 2 * margin) * down
    pad_front = max(0, -source_start)
    try:
        with sf.SoundFile(str(stem.path)) as handle:
            handle.seek(max(0, source_start))
            data = handle.read(source_length - pad_front, dtype="float32", always_2d=True, fill_value=0.0)
    except (OSError, RuntimeError) as exc:  # soundfile's errors derive from these; the file changed since the scan
        raise DataError(f"cannot read stem {stem.path}: {exc}") from exc
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # [source_length - pad_front]
    if pad_front:
        mono = np.concatenate([np.zeros(pad_front, np.float32), mono])
    return mono  # [source_length]


def _to_rate(source: np.ndarray, up: int, down: int, length: int) -> np.ndarray:
    if up == down == 1:
        return np.ascontiguousarray(source[:length], dtype=np.float32)
    resampled = _resample(source, up, down)  # [~len(source) * up / down]
    begin = _margin_blocks(up, down) * up
    out = resampled[begin : begin + length]
    if out.shape[0] < length:
        out = np.pad(out, (0, length - out.shape[0]))
    return out


def read_window(stem: StemFile, start: int, length: int, sample_rate: int) -> np.ndarray:
    """Mono float32 [length] of `stem` from sample `start` at `sample_rate`, zero past the file's end.

    `start` must be a multiple of the rate ratio's `up` (see `offset_step`) so that it falls on a source sample.
    Only the window (plus a filter margin) is decoded.
    """
    up, down = _ratio(stem.sample_rate, sample_rate)
    return _to_rate(_source_window(stem, start, length, sample_rate), up, down, length)


def offset_step(song: Song, sample_rate: int) -> int:
    """Offsets (in output samples) that fall on every stem's source sample grid are multiples of this."""
    step = 1
    for stem in song.stems:
        up, _ = _ratio(stem.sample_rate, sample_rate)
        step = step * up // math.gcd(step, up)
    return step


def mix_window(stems: list[StemFile], start: int, length: int, sample_rate: int) -> np.ndarray:
    """Sum of the stems' windows, float32 [length]; zeros for no stems.

    Resampling is linear, so stems of one source rate are summed first and resampled once.
    """
    total = np.zeros(length, np.float32)
    by_rate: dict[int, np.ndarray] = {}
    for stem in stems:
        source = _source_window(stem, start, length, sample_rate)
        if stem.sample_rate in by_rate:
            by_rate[stem.sample_rate] += source
        else:
            by_rate[stem.sample_rate] = source.copy()
    for rate, source in by_rate.items():
        total += _to_rate(source, *_ratio(rate, sample_rate), length)
    return total


# ---- splits --------------------------------------------------------------------------------------------------------


def _rank_key(song_id: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{song_id}".encode()).hexdigest()


# The shares of songs held out for validation and for test, wherever a data set is split by song (synthesis suggests
# it, StemDataset and the codec stage use it): one pair, or the codec would train on songs evaluation tests on.
VALID_FRACTION = 0.1
TEST_FRACTION = 0.1


def split_ids(
    ids: list[str], valid_fraction: float = VALID_FRACTION, test_fraction: float = TEST_FRACTION, seed: int = 0
) -> dict:
    """Song ids -> {"train", "validation", "test"}: a seeded hash order, independent of the input order."""
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ConfigError("validation and test fractions must be in [0, 1) and leave songs for training")
    n_valid = max(1, round(valid_fraction * len(ids))) if valid_fraction > 0 else 0
    n_test = max(1, round(test_fraction * len(ids))) if test_fraction > 0 else 0
    needed = n_valid + n_test + 1
    if len(ids) < needed:
        raise DataError(
            f"{len(ids)} usable song(s) cannot be split into train/validation/test by song: at least {needed} "
            "are needed (add songs, lower the fractions, or use split 'all')"
        )
    ordered = sorted(ids, key=lambda song_id: _rank_key(song_id, seed))
    return {
        "train": sorted(ordered[n_test + n_valid :]),
        "validation": sorted(ordered[n_test : n_test + n_valid]),
        "test": sorted(ordered[:n_test]),
    }


def _own_split(song_id: str, seed: int, valid_fraction: float, test_fraction: float) -> str:
    """A song's split from its own hash alone (a share in [0, 1): test below `test_fraction`, validation up to the
    sum): adding songs never moves it, unlike a rank in the hash order."""
    share = int(_rank_key(song_id, seed), 16) / 16.0**40
    return "test" if share < test_fraction else "validation" if share < test_fraction + valid_fraction else "train"


# The split's seed, apart from any clip seed: `imusic train --seed 1` must hold out the same songs that the codec
# stage and `imusic eval` hold out (data sets without their own split: MoisesDB, plain folders).
SPLIT_SEED = 0


def split_songs(
    songs: list[Song],
    valid_fraction: float = VALID_FRACTION,
    test_fraction: float = TEST_FRACTION,
    seed: int = SPLIT_SEED,
) -> dict[str, list[Song]]:
    """Deterministic split by song: the data set's own split where its songs have one (validation songs taken from its
    train songs when it has none), else a seeded hash order. A song of no split among songs that have one (a song of
    the producer's own beside MUSDB18's train/ and test/) takes the split its own hash gives (`_own_split`): the data
    set's test songs stay held out (the whole set was split afresh by hash, and three of MUSDB's test songs trained).

    Each song lands in exactly one split; the result depends only on song ids and the seed, never on file order.
    """
    songs = [song for song in songs if song.split != "omitted"]
    by_id = {song.song_id: song for song in songs}
    if len(by_id) != len(songs):
        raise DataError("two songs share one id; song ids must be unique for a split by song")
    if any(song.split in SONG_SPLITS for song in songs):
        own = functools.partial(_own_split, seed=seed, valid_fraction=valid_fraction, test_fraction=test_fraction)
        splits = {s.song_id: s.split if s.split in SONG_SPLITS else own(s.song_id) for s in songs}
        n_valid = max(1, round(valid_fraction * len(songs))) if valid_fraction > 0 else 0
        trained = sorted((s.song_id for s in songs if s.split == "train"), key=lambda song_id: _rank_key(song_id, seed))
        if not any(s.split == "validation" for s in songs) and 0 < n_valid < len(trained):
            # MUSDB18 ships train and test only: its validation songs come out of its train songs, in hash order (a
            # song of no split that its hash sends to validation joins them; it does not stand in for them)
            splits.update(dict.fromkeys(trained[:n_valid], "validation"))
        assigned = {name: sorted(song_id for song_id, split in splits.items() if split == name) for name in SONG_SPLITS}
    else:
        assigned = split_ids(sorted(by_id), valid_fraction, test_fraction, seed)
    return {name: [by_id[song_id] for song_id in ids] for name, ids in assigned.items()}


# ---- the data set --------------------------------------------------------------------------------------------------


@dataclass
class _SongPlan:
    song: Song
    groups: dict[str, list[StemFile]]  # class -> stems, allowed classes only
    targets: list[str]  # classes an instruction may name
    num_stems: int  # stems counted by the official gain rule
    length: int  # samples at the clip rate
    step: int  # offset grid


class StemDataset:
    """Random-access clips of one split. Training items vary with `set_epoch`; other splits are a fixed list.

    Item i of a training split is song i % songs with a random operation; item i of a validation/test split is
    song i // (len(ops) * clips_per_song) with operation (i // clips_per_song) % len(ops). Every item's draws come
    from a generator seeded by (seed, epoch, i), so any worker computes any item identically.
    """

    def __init__(
        self,
        catalog: Catalog,
        split: str = "train",
        config: ClipConfig | None = None,
        *,
        seed: int = 0,
        clips_per_song: int = 1,
        valid_fraction: float = VALID_FRACTION,
        test_fraction: float = TEST_FRACTION,
        random_clips: bool | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}: use {', '.join(SPLITS)}")
        if clips_per_song < 1:
            raise ConfigError("clips_per_song must be at least 1")
        self.catalog = catalog
        self.split = split
        self.config = config or ClipConfig()
        self.seed = seed
        self.epoch = 0
        self.clips_per_song = clips_per_song
        # Fresh random draws per epoch for training; a fixed list for validation/test ("all" follows `random_clips`).
        self.random_clips = split == "train" if random_clips is None else bool(random_clips)
        self.rule = self.config.rule
        if self.rule == "auto":
            self.rule = "moisesdb" if catalog.layout == "moisesdb" else "slakh"
        songs = [song for song in catalog.songs if song.split != "omitted"]
        if split != "all":
            songs = split_songs(songs, valid_fraction, test_fraction)[split]  # SPLIT_SEED, not the clips' seed
        self.skipped: list[tuple[str, str]] = []
        self.plans: list[_SongPlan] = []
        for song in songs:
            plan, reason = self._plan(song)
            if plan is None:
                self.skipped.append((song.song_id, reason))
            else:
                self.plans.append(plan)
        present = {stem.cls for song in catalog.songs for stem in song.stems}
        named = self.config.class_set() if isinstance(self.config.classes, tuple) else ()  # the user's own list
        unknown = sorted(set(named) - present)
        if unknown:  # a typo in --classes reads as "too few classes" otherwise
            raise ConfigError(
                f"no song in {catalog.root} has the stem class(es) {', '.join(unknown)}; its classes are "
                f"{', '.join(sorted(present)) or 'none'}"
            )
        if not self.plans:
            reasons = "; ".join(f"{song_id}: {reason}" for song_id, reason in self.skipped[:5])
            raise DataError(
                f"no usable song in the {split} split of {catalog.root} ({len(songs)} song(s) in the split"
                + (f"; {reasons}" if reasons else "")
                + ")"
            )

    def _plan(self, song: Song) -> tuple[_SongPlan | None, str]:
        config = self.config
        allowed = config.class_set()
        excluded = {canonical_class(name) for name in config.exclude}
        kept = [stem for stem in song.stems if stem.cls not in excluded]
        groups: dict[str, list[StemFile]] = {}
        for stem in kept:
            if allowed is None or stem.cls in allowed:
                groups.setdefault(stem.cls, []).append(stem)
        targets = [cls for cls in groups if is_targetable(cls)]
        if len(groups) < 2:
            return None, f"only {len(groups)} stem class(es) usable ({', '.join(groups) or 'none'})"
        if not targets:
            return None, "no class an instruction can name"
        length = int(min(stem.frames * config.sample_rate // stem.sample_rate for stem in kept))
        if length < config.num_samples:
            return None, f"shorter ({length / config.sample_rate:.1f} s) than one clip ({config.seconds:g} s)"
        step = offset_step(song, config.sample_rate)
        return _SongPlan(song, groups, targets, len(kept), length, step), ""

    @property
    def stems(self) -> list[str]:
        """Every class an instruction of this data set can name, sorted (for a model card's stem list)."""
        return sorted({cls for plan in self.plans for cls in plan.targets})

    def set_epoch(self, epoch: int) -> None:
        """Training clips of a new epoch are new draws; evaluation lists do not change."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.random_clips:
            return len(self.plans) * self.clips_per_song
        return len(self.plans) * len(self.config.ops) * self.clips_per_song

    def _locate(self, index: int) -> tuple[_SongPlan, str, np.random.Generator]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self.random_clips:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            plan = self.plans[index % len(self.plans)]
            op = self.config.ops[int(rng.integers(len(self.config.ops)))]
        else:
            rng = np.random.default_rng([self.seed, index])
            per_song = len(self.config.ops) * self.clips_per_song
            plan = self.plans[index // per_song]
            op = self.config.ops[(index % per_song) // self.clips_per_song]
        return plan, op, rng

    def __getitem__(self, index: int) -> Clip:
        plan, op, rng = self._locate(index)
        return self.draw(plan, op, rng)

    def _choose(self, plan: _SongPlan, op: str, rng: np.random.Generator) -> tuple[str, list[str]]:
        target = plan.targets[int(rng.integers(len(plan.targets)))]
        others = [cls for cls in plan.groups if cls != target]
        if self.rule == "moisesdb" and op == "add":
            return target, others
        count = int(rng.integers(1, len(others) + 1))  # k in [1, M-1]
        picked = rng.choice(len(others), size=count, replace=False)
        return target, [others[i] for i in sorted(picked)]

    def _too_quiet(self, before: np.ndarray, after: np.ndarray, stem: np.ndarray) -> bool:
        config = self.config
        if np.max(np.abs(before)) < config.min_peak or np.max(np.abs(after)) < config.min_peak:
            return True
        limit = config.max_quiet_fraction * before.shape[0]
        change = after - before
        if np.count_nonzero(np.abs(change) < config.quiet_level) > limit:
            return True
        return np.count_nonzero(np.abs(stem) < config.quiet_level) > limit

    def draw(self, plan: _SongPlan, op: str, rng: np.random.Generator) -> Clip:
        """Draw one clip of `op` from a song, re-drawing near-silent ones up to `max_redraws` times."""
        config = self.config
        length = config.num_samples
        redraws = 0
        for attempt in range(config.max_redraws + 1):
            redraws = attempt
            target_cls, others = self._choose(plan, op, rng)
            slots = (plan.length - length) // plan.step
            start = int(rng.integers(slots + 1)) * plan.step
            context = mix_window([s for cls in others for s in plan.groups[cls]], start, length, config.sample_rate)
            stem = mix_window(plan.groups[target_cls], start, length, config.sample_rate)
            before, after = edit_pair(op, stem, context)
            quiet = bool(self._too_quiet(before, after, stem))
            if not quiet:
                break
        # Official gain: (stems in song) / (stems on the louder side); one factor for everything.
        num_context = sum(len(plan.groups[cls]) for cls in others)
        louder_side = num_context + len(plan.groups[target_cls])
        gain = plan.num_stems / louder_side if config.gain == "official" else 1.0
        peak = gain * max(float(np.max(np.abs(before))), float(np.max(np.abs(after))))
        if peak > 1.0:
            gain /= peak
        gain = np.float32(gain)
        context, stem = context * gain, stem * gain
        clip_in, clip_out = edit_pair(op, stem, context)
        with_target = [*others, target_cls]  # the classes each side holds, in the mix's order
        in_classes, out_classes = {"add": (others, with_target), "remove": (with_target, others)}.get(
            op, (with_target, [target_cls])
        )
        return Clip(
            input=clip_in,
            target=clip_out,
            stem=stem,
            op=op,
            stem_name=target_cls,
            song_id=plan.song.song_id,
            offset=start / config.sample_rate,
            offset_samples=start,
            sample_rate=config.sample_rate,
            instruction=official_prompt(op, target_cls),
            input_classes=tuple(in_classes),
            target_classes=tuple(out_classes),
            redraws=redraws,
            quiet=quiet,
        )


@dataclass
class CaptionClip:
    """Audio of some of a song's classes and the text naming them ("drums and bass"), mono float32 [N]."""

    audio: np.ndarray  # [N]
    caption: str
    classes: tuple[str, ...]
    kind: str  # "mix" (every class), "stem" (one class), "partial" (a subset)
    song_id: str
    offset: float
    offset_samples: int
    sample_rate: int
    redraws: int = 0
    quiet: bool = False


class CaptionDataset(StemDataset):
    """Text-to-music clips for a base model: full mixes, single stems and partial mixes, captioned by class.

    The base model must be able to generate what edits ask for (extract needs a vocabulary of lone stems), so each
    item is, with equal odds, the full mix, one class alone, or a random subset of two or more classes. Clips whose
    audio is near-silent are re-drawn by the same rule as edit clips. Peak-safe gain only.
    """

    KINDS = ("mix", "stem", "partial")

    def __len__(self) -> int:
        return len(self.plans) * self.clips_per_song

    def __getitem__(self, index: int) -> CaptionClip:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if self.random_clips:
            rng = np.random.default_rng([self.seed, self.epoch, index, 1])
            plan = self.plans[index % len(self.plans)]
        else:
            rng = np.random.default_rng([self.seed, index, 1])
            plan = self.plans[index // self.clips_per_song]
        return self.draw_caption(plan, rng)

    def draw_caption(self, plan: _SongPlan, rng: np.random.Generator) -> CaptionClip:
        config = self.config
        length = config.num_samples
        classes = list(plan.groups)
        redraws = 0
        for attempt in range(config.max_redraws + 1):
            redraws = attempt
            kind = self.KINDS[int(rng.integers(len(self.KINDS)))]
            if kind == "mix":
                chosen = classes
            elif kind == "stem":
                chosen = [classes[int(rng.integers(len(classes)))]]
            else:
                count = int(rng.integers(2, len(classes) + 1))
                chosen = [classes[i] for i in sorted(rng.choice(len(classes), size=count, replace=False))]
            start = int(rng.integers((plan.length - length) // plan.step + 1)) * plan.step
            audio = mix_window([s for cls in chosen for s in plan.groups[cls]], start, length, config.sample_rate)
            quiet = bool(
                np.max(np.abs(audio)) < config.min_peak
                or np.count_nonzero(np.abs(audio) < config.quiet_level) > config.max_quiet_fraction * length
            )
            if not quiet:
                break
        peak = float(np.max(np.abs(audio)))
        if peak > 1.0:
            audio = audio / np.float32(peak)
        return CaptionClip(
            audio=audio,
            caption=caption(chosen),
            classes=tuple(chosen),
            kind=kind,
            song_id=plan.song.song_id,
            offset=start / config.sample_rate,
            offset_samples=start,
            sample_rate=config.sample_rate,
            redraws=redraws,
            quiet=quiet,
        )
