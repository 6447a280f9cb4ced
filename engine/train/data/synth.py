"""`imusic data synth`: a Slakh-layout stem data set made on any machine from MIDI and General MIDI soundfonts.

Per track (TrackNNNNN/): metadata.yaml (Slakh's keys plus ours), stems/SNN.flac (mono), MIDI/SNN.mid, all_src.mid,
mix.flac (sum of the stems; stems and mix scaled together when the sum would clip). Top level: dataset.json (seed,
tracks, sample rate, soundfonts, a split suggestion by song, per-song captions). Every track draws from its own
generator seeded by (seed, track number): the same seed gives the same files, and any track can be re-made alone.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pretty_midi
import soundfile as sf

from engine.errors import ConfigError, DataError
from engine.files import missing_folder, user_path, write_bytes_atomic, write_json_atomic
from engine.model.config import SAMPLE_RATE
from engine.train.data import DATASET_JSON, SONG_SECONDS, SONG_SPLITS, read_dataset_json
from engine.train.data.layouts import SLAKH_METADATA, SLAKH_MIX, SLAKH_STEMS
from engine.train.data.midi_gen import generate_song, load_midi_song, part_class
from engine.train.data.render import (
    FluidRenderer,
    TinyRenderer,
    active_rms,
    apply_effects,
    default_soundfonts,
    make_renderer,
    random_effects,
    resolve_backend,
)
from engine.train.data.stems import caption, caption_word
from engine.train.data.yamlio import dump_yaml, read_yaml

FORMAT_VERSION = 1
# Level of each stem's sounding part before its random gain (dBFS RMS); drums and bass sit a little forward.
_LEVEL_DB = {"Drums": -18.0, "Bass": -19.0}
_DEFAULT_LEVEL_DB = -21.0
MIX_PEAK = 0.95  # a mix, and the demo's stereo song, peak at most here (its stems scaled with it)

MIN_SONG_SECONDS = 0.25  # shorter holds no note to render (1e-6 s: an empty array deep in the mixing)
MAX_SONG_SECONDS = 3600.0  # a song of an hour at the most (1e9 s rendered for ever and left its folder behind)


@dataclass
class SynthReport:
    """What a synth run made and what it cost."""

    out_dir: Path
    tracks: int = 0
    stems: int = 0
    stem_seconds: float = 0.0
    render_cpu_seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    resumed: int = 0  # finished tracks kept from an interrupted run
    already: bool = False  # `once`: the folder held the finished set, made with these settings; nothing was done

    @property
    def cpu_per_10s_of_stems(self) -> float:
        return 10.0 * self.render_cpu_seconds / self.stem_seconds if self.stem_seconds else 0.0


def _split_suggestion(songs: dict[str, dict], seed: int) -> dict[str, list[str]]:
    """The split dataset.json suggests, by song; tracks rendered from one MIDI file (--midi files are used again when
    there are more tracks than files) are one song: copies of a composition in train and test leaked its notes."""
    from engine.train.data.datasets import split_ids

    group = {track: str(info.get("source_midi") or track) for track, info in songs.items()}
    keys = sorted(set(group.values()))
    if len(keys) < 3:
        return {name: sorted(songs) if name == "train" else [] for name in SONG_SPLITS}
    where = {key: name for name, part in split_ids(keys, seed=seed).items() for key in part}  # every split's shares
    return {name: sorted(track for track in songs if where[group[track]] == name) for name in SONG_SPLITS}


def _track_parts(
    index: int, seed: int, seconds: float, midi_files: list[Path]
) -> tuple[list[pretty_midi.Instrument], float, dict, np.random.Generator]:
    rng = np.random.default_rng([seed, index])
    if midi_files:
        path = midi_files[(index - 1) % len(midi_files)]
        midi, parts = load_midi_song(str(path), seconds)
        length = min(seconds, midi.get_end_time() + 1.0) if seconds else midi.get_end_time() + 1.0
        tempo = float(midi.estimate_tempo()) if len(midi.get_onsets()) > 1 else 120.0
        info = {"source_midi": path.name, "tempo": round(tempo, 2)}
        # Random programs within each part's class, as Slakh assigns random patches within a class.
        for part in parts:
            if not part.is_drum:
                part.program = (part.program // 8) * 8 + int(rng.integers(8))
        return parts, length, info, rng
    plan = generate_song(rng, seconds)
    info = {
        "style": plan.style,
        "tempo": plan.tempo,
        "key": plan.key_name,
        "beats_per_bar": plan.beats_per_bar,
        "progression": " ".join(str(d + 1) for d in plan.progression),
        "form": plan.form,
        "bridge": " ".join(str(d + 1) for d in plan.bridge),
    }
    return plan.parts, seconds, info, rng


def _write_track(
    track_dir: Path,
    parts: list[pretty_midi.Instrument],
    length: float,
    info: dict,
    rng: np.random.Generator,
    renderer: FluidRenderer | TinyRenderer,
    soundfont_names: list[str],
) -> tuple[int, float, list[str]]:
    rate = renderer.sample_rate
    stems: list[np.ndarray] = []
    entries: dict[str, dict] = {}
    for number, part in enumerate(parts):
        name = f"S{number:02d}"
        cls = part_class(part)
        font_index = int(rng.integers(len(soundfont_names)))
        chain = random_effects(cls, rng)
        gain_db = float(rng.uniform(-4.0, 2.0))
        audio = renderer.render(part, font_index, length)  # [N]
        audio = apply_effects(audio, chain, rate)
        level = active_rms(audio, rate)
        rendered = level > 1e-4
        if rendered:
            target = 10 ** ((_LEVEL_DB.get(cls, _DEFAULT_LEVEL_DB) + gain_db) / 20)
            audio = audio * np.float32(target / level)
        stems.append(audio.astype(np.float32))
        entries[name] = {
            "audio_rendered": rendered,
            "inst_class": cls,
            "class_name": caption_word(cls),
            "is_drum": bool(part.is_drum),
            "midi_program_name": "Drums" if part.is_drum else pretty_midi.program_to_instrument_name(part.program),
            "program_num": int(part.program),
            "midi_saved": True,
            "plugin_name": soundfont_names[font_index],
            "role": part.name or cls.lower(),
            "gain_db": round(gain_db, 3),
            "effects": ", ".join(effect["type"] for effect in chain) or "none",
        }
    # Peak-safe mix: one factor for every stem, so mix.flac stays the sum of the stems.
    mix = np.sum(stems, axis=0) if stems else np.zeros(int(round(length * rate)), np.float32)
    peak = max([float(np.max(np.abs(mix)))] + [float(np.max(np.abs(s))) for s in stems])
    scale = np.float32(min(1.0, MIX_PEAK / peak)) if peak > 0 else np.float32(1.0)
    (track_dir / SLAKH_STEMS).mkdir(parents=True, exist_ok=True)
    (track_dir / "MIDI").mkdir(exist_ok=True)
    everything = pretty_midi.PrettyMIDI(initial_tempo=float(info.get("tempo", 120.0)))
    for (name, entry), part, audio in zip(entries.items(), parts, stems, strict=True):
        if entry["audio_rendered"]:
            sf.write(str(track_dir / SLAKH_STEMS / f"{name}.flac"), audio * scale, rate, subtype="PCM_16")
        single = pretty_midi.PrettyMIDI(initial_tempo=float(info.get("tempo", 120.0)))
        single.instruments.append(part)
        single.write(str(track_dir / "MIDI" / f"{name}.mid"))
        everything.instruments.append(part)
    everything.write(str(track_dir / "all_src.mid"))
    sf.write(str(track_dir / SLAKH_MIX), mix * scale, rate, subtype="PCM_16")
    meta = {
        "UUID": track_dir.name,
        "audio_dir": SLAKH_STEMS,
        "midi_dir": "MIDI",
        "sample_rate": rate,
        "seconds": round(length, 6),
        "overall_gain": round(float(scale), 6),
        **info,
        "stems": entries,
    }
    # last and atomically: --resume counts a track whose metadata.yaml exists as finished
    write_bytes_atomic(track_dir / SLAKH_METADATA, dump_yaml(meta).encode("utf-8"))
    rendered_classes = [entry["inst_class"] for entry in entries.values() if entry["audio_rendered"]]
    return sum(1 for e in entries.values() if e["audio_rendered"]), length, rendered_classes


def _check_resumable(out: Path, settings: dict) -> None:
    missing = f"nothing to resume in {out}: no {DATASET_JSON} from an earlier `imusic data synth`"
    changed = _changed(read_dataset_json(out, missing), settings)
    if changed:
        raise DataError(f"cannot resume {out}: settings differ from the earlier run ({', '.join(changed)})")


def _changed(earlier: dict, settings: dict) -> list[str]:
    """The settings an earlier run's record holds otherwise (one from before a setting was kept does not differ in
    it)."""
    return [key for key, value in settings.items() if key in earlier and earlier[key] != value]


def _finished_track(track_dir: Path) -> dict:
    meta = read_yaml(track_dir / SLAKH_METADATA)
    classes = [entry["inst_class"] for entry in meta["stems"].values() if entry.get("audio_rendered")]
    keys = ("style", "tempo", "key", "beats_per_bar", "progression", "form", "bridge", "source_midi")
    info = {key: value for key, value in meta.items() if key in keys}  # metadata.yaml keeps the run's key order
    return {"classes": classes, "caption": caption(classes), "seconds": meta["seconds"], **info}


_TINY: dict[tuple, TinyRenderer] = {}  # this process's tinysoundfont renderers, by (soundfonts, sample rate)


@dataclass
class _TrackJob:
    """Makes one track (by number) in a worker process; returns (track id, (stems, seconds, song) or None, why not,
    CPU seconds)."""

    out: Path
    seed: int
    seconds: float
    midi_files: list[Path]
    fonts: list[Path]
    names: list[str]
    sample_rate: int
    backend: str

    def __call__(self, index: int) -> tuple[str, tuple[int, float, dict] | None, str, float]:
        track_id = f"Track{index:05d}"
        started = time.process_time()
        try:
            parts, length, info, rng = _track_parts(index, self.seed, self.seconds, self.midi_files)
        except Exception as exc:  # a user's MIDI file can fail to parse in many ways; skip and report it
            return track_id, None, f"unreadable MIDI: {exc}", 0.0
        if not parts:
            return track_id, None, "MIDI file without notes", 0.0
        if self.backend == "tinysoundfont":  # resets itself before every part: one per process serves every track
            key = (tuple(self.fonts), self.sample_rate)
            if key not in _TINY:
                _TINY[key] = TinyRenderer(self.fonts, self.sample_rate)
            count, length, classes = _write_track(self.out / track_id, parts, length, info, rng, _TINY[key], self.names)
        else:
            # A fresh synth per track: FluidSynth voices keep a little state from one note to the next (the first
            # block of a re-used voice differs), so a track is only reproducible on its own if it starts from a new one.
            with make_renderer(self.backend, self.fonts, self.sample_rate) as renderer:
                count, length, classes = _write_track(
                    self.out / track_id, parts, length, info, rng, renderer, self.names
                )
        song = {"classes": classes, "caption": caption(classes), "seconds": round(length, 6), **info}
        return track_id, (count, length, song), "", time.process_time() - started


def synthesize(
    out_dir: str | Path,
    tracks: int,
    *,
    seed: int = 0,
    seconds: float = SONG_SECONDS,
    sample_rate: int = SAMPLE_RATE,
    soundfonts: list[str | Path] | None = None,
    midi_dir: str | Path | None = None,
    progress: bool = True,
    resume: bool = False,
    renderer: str = "auto",
    workers: int = 1,
    once: bool = False,
) -> SynthReport:
    """Write a Slakh-layout data set of `tracks` songs into `out_dir` (new or empty).

    With `resume`, `out_dir` must hold a run with the same settings: finished tracks are kept (a track is finished
    when its metadata.yaml exists, written last) and the others are made again, identical to an uninterrupted run.
    `renderer` is "fluidsynth", "tinysoundfont" or "auto" (render.resolve_backend); the one used is recorded in
    dataset.json. `workers` > 1 makes tracks in that many processes: each track draws from its own seeded generator,
    so the files are the same whatever the number of workers. With `once`, a folder that holds the finished set of
    these settings is left as it is (`already`), one cut short is resumed, and a finished set of other settings is a
    DataError (it was kept as if it were the one asked for).
    """
    if tracks < 1:
        raise ConfigError("--tracks must be at least 1")
    if not (math.isfinite(seconds) and MIN_SONG_SECONDS <= seconds <= MAX_SONG_SECONDS):  # NaN passed a "<= 0" check
        raise ConfigError(
            f"--seconds must be a number from {MIN_SONG_SECONDS:g} to {MAX_SONG_SECONDS:g}, got {seconds:g}"
        )
    if not 8000 <= sample_rate <= 96000:
        raise ConfigError(f"--sample-rate {sample_rate} is outside 8000-96000 Hz")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    backend = resolve_backend(renderer)
    out = user_path(out_dir)
    fonts = [user_path(p) for p in soundfonts] if soundfonts else default_soundfonts()
    if not fonts:
        raise ConfigError("no General MIDI soundfont found: pass --soundfont PATH")
    for font in fonts:
        if not font.is_file():
            raise ConfigError(f"soundfont {font} does not exist")
    settings = {
        "format": "slakh",
        "generator": "imusic data synth",
        "version": FORMAT_VERSION,
        "seed": seed,
        "sample_rate": sample_rate,
        "seconds": seconds,
        "soundfonts": [str(font) for font in fonts],
        "midi_dir": str(midi_dir) if midi_dir is not None else None,
        "renderer": backend,
        "tracks_asked": tracks,  # growing a set re-splits its songs: a resume must ask for the same number
    }
    if once and (out / DATASET_JSON).is_file():
        earlier = read_dataset_json(out, "")
        if earlier.get("complete"):
            changed = _changed(earlier, settings)
            if changed:
                raise DataError(
                    f"{out} holds a finished data set made with other settings ({', '.join(changed)}): choose another "
                    "folder, or remove it to make this one"
                )
            return SynthReport(out, tracks=int(earlier.get("tracks") or 0), already=True)
        resume = True
    if resume:
        _check_resumable(out, settings)
    elif out.exists() and any(out.iterdir()):
        raise DataError(f"{out} is not empty: choose a new folder for the data set (or --resume an interrupted run)")
    midi_files: list[Path] = []
    if midi_dir is not None:
        midi_root = user_path(midi_dir)
        if problem := missing_folder(midi_root):
            raise DataError(f"MIDI folder {midi_root} {problem}")
        midi_files = sorted(p for p in midi_root.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
        if not midi_files:
            raise DataError(f"no .mid files in {midi_root}")
    out.mkdir(parents=True, exist_ok=True)
    if not resume:  # settings first, so that an interrupted run can be resumed
        write_json_atomic(out / DATASET_JSON, {**settings, "complete": False}, sort_keys=False)
    report = SynthReport(out)
    songs: dict[str, dict] = {}
    from tqdm import tqdm

    names = [font.name for font in fonts]
    todo: list[int] = []
    for index in range(1, tracks + 1):
        track_id = f"Track{index:05d}"
        if resume and (out / track_id / SLAKH_METADATA).is_file():
            songs[track_id] = _finished_track(out / track_id)
            report.tracks += 1
            report.resumed += 1
            continue
        if resume and (out / track_id).exists():
            shutil.rmtree(out / track_id)  # a track cut short by the interruption; made again below
        todo.append(index)
    job = _TrackJob(out, seed, seconds, midi_files, fonts, names, sample_rate, backend)
    bar = tqdm(total=tracks, initial=report.resumed, desc="synth", unit="track", disable=not progress)
    if workers == 1 or len(todo) < 2:
        results = map(job, todo)
        pool = None
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: the caller may hold threads or an initialised accelerator that a fork would copy half-way
        pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(job, todo, chunksize=max(1, min(8, len(todo) // (4 * workers))))
    try:
        for track_id, made, problem, cpu in results:
            bar.update(1)
            report.render_cpu_seconds += cpu
            if made is None:
                report.skipped.append((track_id, problem))
                continue
            count, length, song = made
            report.tracks += 1
            report.stems += count
            report.stem_seconds += count * length
            songs[track_id] = song
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    songs = dict(sorted(songs.items()))
    meta = {
        **settings,
        "complete": report.tracks > 0,  # a set of no track is not done: a rerun tries again
        "tracks": report.tracks,
        "split": _split_suggestion(songs, seed),
        "songs": songs,
    }
    write_json_atomic(out / DATASET_JSON, meta, sort_keys=False)
    if report.tracks == 0:
        raise DataError(f"no track could be made ({len(report.skipped)} skipped: {report.skipped[0][1]})")
    return report
