"""Procedural songs as MIDI: drum patterns, bass lines, chords (piano, guitar, pads) and melodies.

A song is drawn from a numpy Generator: style, tempo, key, mode, chord progression, then one part per stem.
The same generator state gives the same song. Parts are `pretty_midi.Instrument`s named after their role.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pretty_midi

from engine.train.data.stems import gm_class, gm_programs

# Drum notes (General MIDI percussion map).
KICK, SNARE, CLAP, CLOSED_HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE = 36, 38, 39, 42, 44, 46, 49, 51
LOW_TOM, MID_TOM, HIGH_TOM, SIDE_STICK, SHAKER, TAMBOURINE = 45, 47, 50, 37, 70, 54
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40)  # standard, room, power, electronic, TR-808, jazz, brush

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)

# Progressions as scale degrees (0-based), one chord per bar.
PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 3, 4, 3), (0, 5, 3, 4), (1, 4, 0, 0), (0, 3, 0, 4), (0, 0, 3, 3, 0, 0, 4, 3)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4)),
}

# style -> (tempo range, beats per bar, swing 0..1)
STYLES: dict[str, tuple[tuple[int, int], int, float]] = {
    "rock": ((100, 150), 4, 0.0),
    "pop": ((90, 128), 4, 0.0),
    "funk": ((92, 118), 4, 0.0),
    "ballad": ((62, 84), 4, 0.0),
    "electronic": ((118, 132), 4, 0.0),
    "shuffle": ((96, 140), 4, 0.6),
    "waltz": ((84, 150), 3, 0.0),
}

# 16th-step patterns (4/4): 1 = hit. Each style has a few; one is chosen per song, varied per bar.
_KICKS = {
    "rock": ("1000000010100000", "1000000010000000", "1000001010000000"),
    "pop": ("1000000010000000", "1000000110100000", "1001000010000000"),
    "funk": ("1000001000100100", "1010000000100010", "1000000100100001"),
    "ballad": ("1000000000100000", "1000000010000000"),
    "electronic": ("1000100010001000",),
    "shuffle": ("1000000010000000", "1000001010000000"),
}
_SNARES = {
    "rock": ("0000100000001000",),
    "pop": ("0000100000001000", "0000100000001001"),
    "funk": ("0000100100001000", "0000100000001010", "0100100000001001"),
    "ballad": ("0000100000001000",),
    "electronic": ("0000100000001000",),
    "shuffle": ("0000100000001000",),
}
_HATS = {
    "rock": ("1010101010101010", "1111111111111111"),
    "pop": ("1010101010101010", "0010001000100010"),
    "funk": ("1111111111111111", "1011101110111011"),
    "ballad": ("1010101010101010", "1000100010001000"),
    "electronic": ("0010001000100010", "1111111111111111"),
    "shuffle": ("1010101010101010",),
}


@dataclass
class SongPlan:
    """What a generated song is: enough to caption it and re-create it."""

    style: str
    tempo: float
    beats_per_bar: int
    key_root: int  # 0 = C
    mode: str  # "major" | "minor"
    progression: tuple[int, ...]  # section A
    bars: int
    parts: list[pretty_midi.Instrument] = field(default_factory=list)
    bridge: tuple[int, ...] = ()  # section B (empty: A throughout)
    section_bars: int = 8
    form: str = "A"  # one letter per section, e.g. "AABA"

    def chord_at(self, bar: int) -> int:
        """Scale degree of the chord of a bar, following the form."""
        section = self.form[(bar // self.section_bars) % len(self.form)]
        chords = self.bridge if section == "B" and self.bridge else self.progression
        return chords[bar % len(chords)]

    @property
    def key_name(self) -> str:
        return pretty_midi.note_number_to_name(60 + self.key_root)[:-1] + (" minor" if self.mode == "minor" else "")


class _Clock:
    """Beat/step -> seconds with swing on off-eighths."""

    def __init__(self, tempo: float, beats_per_bar: int, swing: float) -> None:
        self.beat = 60.0 / tempo
        self.beats_per_bar = beats_per_bar
        self.swing = swing

    def time(self, bar: int, step16: float) -> float:
        beat_index, within = divmod(step16, 4)
        if self.swing and 1.5 <= within < 2.5:  # the "and" of a beat moves toward the triplet position
            within += self.swing * (8 / 3 - 2)
        return (bar * self.beats_per_bar + beat_index + within / 4) * self.beat


def _note(part: pretty_midi.Instrument, pitch: int, start: float, end: float, velocity: float) -> None:
    if end - start < 0.01:
        end = start + 0.01
    velocity = int(np.clip(round(velocity), 1, 127))
    part.notes.append(pretty_midi.Note(velocity=velocity, pitch=int(np.clip(pitch, 0, 127)), start=start, end=end))


def _chord_pitches(plan: SongPlan, degree: int, rng: np.random.Generator, sevenths: bool) -> list[int]:
    scale = MAJOR if plan.mode == "major" else MINOR
    count = 4 if sevenths else 3
    return [plan.key_root + scale[(degree + 2 * i) % 7] + 12 * ((degree + 2 * i) // 7) for i in range(count)]


def _fit(pitch: int, low: int, high: int) -> int:
    while pitch < low:
        pitch += 12
    while pitch > high:
        pitch -= 12
    return pitch


def _voicing(chord: list[int], low: int, high: int, rng: np.random.Generator) -> list[int]:
    inversion = int(rng.integers(len(chord)))
    notes = [pitch + (12 if i < inversion else 0) for i, pitch in enumerate(chord)]
    base = _fit(min(notes) + 48, low, high - 12) - min(notes)
    return sorted(pitch + base for pitch in notes)


def _drums(plan: SongPlan, clock: _Clock, rng: np.random.Generator) -> pretty_midi.Instrument:
    part = pretty_midi.Instrument(program=int(rng.choice(DRUM_KITS)), is_drum=True, name="drums")
    style = plan.style
    steps = plan.beats_per_bar * 4
    if style == "waltz":
        kick, snare, hat = "100000000000", "000010001000", "101010101010"
    else:
        kick = str(rng.choice(_KICKS[style]))
        snare = str(rng.choice(_SNARES[style]))
        hat = str(rng.choice(_HATS[style]))
    hat_note = int(rng.choice((CLOSED_HAT, CLOSED_HAT, PEDAL_HAT, RIDE)))
    snare_note = CLAP if style == "electronic" and rng.random() < 0.5 else SNARE
    extra = int(rng.choice((0, SHAKER, TAMBOURINE))) if rng.random() < 0.3 else 0
    for bar in range(plan.bars):
        fill = bar % 4 == 3 and rng.random() < 0.6
        if bar % 4 == 0 and rng.random() < 0.7:
            _note(part, CRASH, clock.time(bar, 0), clock.time(bar, 4), 100 + rng.normal(0, 6))
        for step in range(steps):
            start = clock.time(bar, step)
            end = clock.time(bar, step + 1)
            if fill and step >= steps - 4:
                tom = (HIGH_TOM, MID_TOM, LOW_TOM, SNARE)[step - (steps - 4)]
                _note(part, tom, start, end, 95 + rng.normal(0, 8))
                continue
            if kick[step] == "1" or (rng.random() < 0.04 and step % 2 == 0):
                _note(part, KICK, start, end, 105 + rng.normal(0, 6))
            if snare[step] == "1":
                _note(part, snare_note, start, end, 100 + rng.normal(0, 6))
            elif style == "funk" and rng.random() < 0.12:
                _note(part, SNARE, start, end, 45 + rng.normal(0, 6))  # ghost notes
            if hat[step] == "1":
                accent = 15 if step % 4 == 0 else 0
                _note(part, hat_note, start, end, 70 + accent + rng.normal(0, 8))
            if extra and step % 2 == 1:
                _note(part, extra, start, end, 55 + rng.normal(0, 8))
        if style != "waltz" and rng.random() < 0.15:
            _note(part, OPEN_HAT, clock.time(bar, steps - 2), clock.time(bar, steps), 80)
    return part


def _bass(plan: SongPlan, clock: _Clock, rng: np.random.Generator) -> pretty_midi.Instrument:
    program = int(rng.choice(gm_programs("Bass")))
    part = pretty_midi.Instrument(program=program, name="bass")
    steps = plan.beats_per_bar * 4
    pattern = {
        "rock": "1010101010101010",
        "pop": "1000001010001000",
        "funk": "1000001101001010",
        "ballad": "1000000010000000",
        "electronic": "0010001000100010",
        "shuffle": "1000100010001000",
        "waltz": "100000000000",
    }[plan.style]
    if plan.style not in ("electronic", "waltz") and rng.random() < 0.3:
        pattern = "1000100010001000"
    walking = plan.style == "shuffle" and rng.random() < 0.5
    for bar in range(plan.bars):
        degree = plan.chord_at(bar)
        chord = _chord_pitches(plan, degree, rng, sevenths=False)
        root = _fit(chord[0] + 36, 28, 47)
        hits = [step for step in range(steps) if pattern[step] == "1"]
        for index, step in enumerate(hits):
            next_step = hits[index + 1] if index + 1 < len(hits) else steps
            pitch = root
            if walking:
                pitch = _fit(chord[index % 3] + 36, 28, 52) if index < 3 else root + int(rng.choice((-1, 2)))
            elif index > 0 and rng.random() < 0.25:
                pitch = root + int(rng.choice((7, 12, 10 if plan.mode == "minor" else 9)))
            length = next_step - step
            gate = 0.9 if plan.style in ("ballad", "waltz") else (0.5 if plan.style == "funk" else 0.8)
            start = clock.time(bar, step)
            _note(part, pitch, start, start + gate * length * clock.beat / 4, 95 + rng.normal(0, 7))
    return part


def _chords(plan: SongPlan, clock: _Clock, rng: np.random.Generator, cls: str, name: str) -> pretty_midi.Instrument:
    program = int(rng.choice(gm_programs(cls)))
    part = pretty_midi.Instrument(program=program, name=name)
    steps = plan.beats_per_bar * 4
    sevenths = plan.style in ("shuffle", "funk") or rng.random() < 0.2
    if cls == "Guitar":
        low, high = 45, 76
        feel = str(rng.choice(("strum8", "strum4", "power", "arp", "offbeat")))
        if plan.style == "rock":
            feel = str(rng.choice(("power", "strum8")))
    elif cls in ("Synth Pad", "Strings", "Strings (continued)", "Organ"):
        low, high, feel = 52, 79, "pad"
    else:
        low, high = 52, 81
        feel = str(rng.choice(("block2", "block4", "arp", "stab", "block1")))
        if plan.style == "ballad":
            feel = str(rng.choice(("block1", "arp", "block2")))
    for bar in range(plan.bars):
        degree = plan.chord_at(bar)
        chord = _chord_pitches(plan, degree, rng, sevenths)
        voicing = _voicing(chord, low, high, rng)
        velocity = 78 + rng.normal(0, 6)
        if feel == "power":
            root = _fit(chord[0] + 36, 40, 52)
            voicing = [root, root + 7, root + 12]
        if feel in ("pad", "block1"):
            hits, length = [0], steps
        elif feel == "block2":
            hits, length = list(range(0, steps, 8)), 8
        elif feel in ("block4", "strum4"):
            hits, length = list(range(0, steps, 4)), 4
        elif feel in ("strum8", "power"):
            hits, length = list(range(0, steps, 2)), 2
        elif feel == "offbeat":
            hits, length = list(range(2, steps, 4)), 1
        elif feel == "stab":
            hits, length = [s for s in range(steps) if s % 16 in (0, 3, 6, 10, 12)], 1
        else:  # arpeggio: one note per eighth, up and down the voicing
            order = voicing + voicing[-2:0:-1]
            for index, step in enumerate(range(0, steps, 2)):
                start = clock.time(bar, step)
                _note(part, order[index % len(order)], start, clock.time(bar, step + 3), velocity + rng.normal(0, 5))
            continue
        for step in hits:
            start = clock.time(bar, step)
            end = clock.time(bar, min(step + length, steps)) - 0.02
            strum = 0.012 if cls == "Guitar" else 0.0
            down = cls != "Guitar" or (step // 2) % 2 == 0
            for index, pitch in enumerate(voicing if down else voicing[::-1]):
                accent = 8 if step % 4 == 0 else 0
                _note(part, pitch, start + index * strum, end, velocity + accent + rng.normal(0, 4))
    return part


def _melody(plan: SongPlan, clock: _Clock, rng: np.random.Generator, cls: str) -> pretty_midi.Instrument:
    programs = gm_programs(cls)
    part = pretty_midi.Instrument(program=int(rng.choice(programs)), name="melody")
    scale = MAJOR if plan.mode == "major" else MINOR
    steps = plan.beats_per_bar * 4
    # A two-bar rhythm motif (16th steps with a hit), repeated with variations.
    motif_len = 2 * steps
    density = rng.uniform(0.25, 0.55)
    motif = [step for step in range(0, motif_len, 2) if rng.random() < density] or [0, 8]
    center = 72 if cls not in ("Pipe",) else 79
    degree_pos = int(rng.integers(0, 7))
    for bar in range(0, plan.bars, 2):
        if rng.random() < 0.2:
            continue  # breathing room
        for index, step in enumerate(motif):
            absolute_bar = bar + step // steps
            if absolute_bar >= plan.bars:
                break
            chord_degree = plan.chord_at(absolute_bar)
            if step % 4 == 0 and rng.random() < 0.6:  # strong beats lean on chord tones
                degree_pos = chord_degree + 2 * int(rng.integers(0, 3)) + 7 * ((degree_pos - chord_degree) // 7)
            else:
                degree_pos += int(rng.choice((-2, -1, -1, 1, 1, 2)))
            octave, scale_index = divmod(degree_pos, 7)
            pitch = _fit(plan.key_root + scale[scale_index] + 12 * octave + 60, center - 9, center + 12)
            next_step = motif[index + 1] if index + 1 < len(motif) else motif_len
            start = clock.time(absolute_bar, step % steps)
            duration = (next_step - step) * clock.beat / 4
            _note(part, pitch, start, start + 0.9 * min(duration, 2 * clock.beat), 88 + rng.normal(0, 8))
    return part


def generate_song(rng: np.random.Generator, seconds: float) -> SongPlan:
    """A random song of at least `seconds`: drums, bass, piano and/or guitar, sometimes a melody and a pad."""
    style = str(rng.choice(list(STYLES)))
    (tempo_low, tempo_high), beats_per_bar, swing = STYLES[style]
    tempo = float(rng.integers(tempo_low, tempo_high + 1))
    mode = "minor" if rng.random() < 0.45 else "major"
    progressions = PROGRESSIONS[mode]
    progression = tuple(progressions[int(rng.integers(len(progressions)))])
    bar_seconds = beats_per_bar * 60.0 / tempo
    bars = int(math.ceil(seconds / bar_seconds)) + 1
    plan = SongPlan(style, tempo, beats_per_bar, int(rng.integers(12)), mode, progression, bars)
    others = [p for p in progressions if tuple(p) != progression]
    if others and rng.random() < 0.6:  # a second section with its own chords
        plan.bridge = tuple(others[int(rng.integers(len(others)))])
        plan.section_bars = int(rng.choice((4, 8)))
        plan.form = str(rng.choice(("AB", "AABA", "ABAB", "AABB")))
    clock = _Clock(tempo, beats_per_bar, swing)
    plan.parts.append(_drums(plan, clock, rng))
    plan.parts.append(_bass(plan, clock, rng))
    has_piano = rng.random() < 0.75
    has_guitar = rng.random() < 0.7 or not has_piano
    if has_piano:
        plan.parts.append(_chords(plan, clock, rng, "Piano", "piano"))
    if has_guitar:
        plan.parts.append(_chords(plan, clock, rng, "Guitar", "guitar"))
        if rng.random() < 0.2:
            plan.parts.append(_chords(plan, clock, rng, "Guitar", "guitar 2"))
    if rng.random() < 0.6:
        lead = ("Synth Lead", "Reed", "Brass", "Pipe", "Strings", "Chromatic Percussion", "Organ", "Piano")
        plan.parts.append(_melody(plan, clock, rng, str(rng.choice(lead))))
    if rng.random() < 0.4:
        pad = str(rng.choice(("Synth Pad", "Strings (continued)", "Organ")))
        plan.parts.append(_chords(plan, clock, rng, pad, "pad"))
    _arrange(plan, rng)
    for part in plan.parts:
        part.notes.sort(key=lambda note: (note.start, note.pitch))
    return plan


def _arrange(plan: SongPlan, rng: np.random.Generator) -> None:
    """Parts other than drums and bass sit out some sections; every note gets a few ms of human timing."""
    section_seconds = plan.section_bars * plan.beats_per_bar * 60.0 / plan.tempo
    sections = int(math.ceil(plan.bars / plan.section_bars))
    for part in plan.parts:
        jitter = 0.003 if part.is_drum else 0.008
        resting = set()
        if part.name not in ("drums", "bass") and sections > 1:
            resting = {index for index in range(1, sections) if rng.random() < 0.15}
        kept = []
        for note in part.notes:
            if int(note.start // section_seconds) in resting:
                continue
            shift = float(rng.normal(0.0, jitter))
            note.start = max(0.0, note.start + shift)
            note.end = max(note.start + 0.01, note.end + shift)
            kept.append(note)
        part.notes = kept


def part_class(part: pretty_midi.Instrument) -> str:
    """The Slakh class of a MIDI part."""
    return gm_class(part.program, part.is_drum)


def load_midi_song(path: str, seconds: float | None) -> tuple[pretty_midi.PrettyMIDI, list[pretty_midi.Instrument]]:
    """A user's MIDI file: its non-empty parts, cut to `seconds` when given."""
    midi = pretty_midi.PrettyMIDI(path)
    parts = []
    for part in midi.instruments:
        notes = [n for n in part.notes if seconds is None or n.start < seconds]
        if not notes:
            continue
        copy = pretty_midi.Instrument(program=part.program, is_drum=part.is_drum, name=part.name or "")
        copy.notes = notes
        # Bank selects (CC 0/32) would point the synth at banks a General MIDI soundfont does not have.
        copy.control_changes = [
            c for c in part.control_changes if (seconds is None or c.time < seconds) and c.number not in (0, 32)
        ]
        copy.pitch_bends = [b for b in part.pitch_bends if seconds is None or b.time < seconds]
        parts.append(copy)
    return midi, parts
