"""Stem classes: General MIDI families (Slakh's `inst_class` names), file-name keywords, captions.

Class names are Slakh's (capitalised, "Drums", "Bass", ...) everywhere inside; MoisesDB's and plain folders'
names are mapped onto the same spelling so that one instruction vocabulary covers every layout.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# General MIDI program families, 8 programs each, named as in Slakh2100's metadata.yaml.
GM_FAMILIES: tuple[str, ...] = (
    "Piano",
    "Chromatic Percussion",
    "Organ",
    "Guitar",
    "Bass",
    "Strings",
    "Strings (continued)",
    "Brass",
    "Reed",
    "Pipe",
    "Synth Lead",
    "Synth Pad",
    "Synth Effects",
    "Ethnic",
    "Percussive",
    "Sound Effects",
)

# What a caption says for a class ("drums and bass"); classes not listed use their lower-cased name.
_CAPTION_WORDS = {
    "Strings (continued)": "strings",
    "Chromatic Percussion": "mallets",
    "Percussive": "percussion",
    "Reed": "reeds",
    "Pipe": "flutes",
}

# File-name keywords for a producer's own multitracks, checked in this order (bassoon before bass, ...).
_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Reed", ("bassoon", "sax", "saxophone", "clarinet", "oboe", "reed")),
    ("Vocals", ("vocal", "vocals", "vox", "voc", "voice", "bv", "bgv", "bvs", "choir", "singer", "lead vocal")),
    ("Drums", ("drum", "drums", "kick", "kik", "bd", "snare", "snr", "sd", "hat", "hihat", "hh", "tom", "toms")),
    ("Drums", ("overhead", "overheads", "oh", "cymbal", "cymbals", "ride", "crash", "kit", "beat", "808kick")),
    ("Percussion", ("perc", "percussion", "shaker", "conga", "congas", "bongo", "tamb", "tambourine", "clap")),
    ("Bass", ("bass", "bas", "sub", "subbass", "808")),
    ("Piano", ("piano", "pno", "keys", "rhodes", "wurli", "wurlitzer", "ep", "epiano")),
    ("Organ", ("organ", "hammond", "b3")),
    ("Guitar", ("guitar", "guitars", "gtr", "gtrs", "gt", "acoustic", "elec")),
    ("Strings", ("strings", "string", "violin", "viola", "cello", "str", "orchestra")),
    ("Brass", ("brass", "trumpet", "tpt", "trombone", "tbn", "horn", "horns", "tuba")),
    ("Pipe", ("flute", "flutes", "piccolo", "whistle")),
    ("Synth Pad", ("pad", "pads")),
    ("Synth Lead", ("lead", "synth", "synths", "arp")),
)

# Files in a song folder that are the mix, not a stem ("mixture": MUSDB18-HQ's and DSD100's, "linear_mixture": MUSDB18's
# stem-summed one).
_MIX_WORDS = {"mix", "mixture", "mixdown", "master", "mastered", "full", "fullmix", "stereomix", "bounce", "reference"}


def gm_class(program: int, is_drum: bool) -> str:
    """Slakh class name of a General MIDI program (0-127), or "Drums"."""
    if is_drum:
        return "Drums"
    if not 0 <= program <= 127:
        raise ValueError(f"MIDI program {program} is outside 0-127")
    return GM_FAMILIES[program // 8]


def gm_programs(cls: str) -> range:
    """The General MIDI programs of a class (family); empty for Drums (drum kits are chosen apart)."""
    name = canonical_class(cls)
    if name not in GM_FAMILIES:
        return range(0)
    start = GM_FAMILIES.index(name) * 8
    return range(start, start + 8)


def canonical_class(name: str) -> str:
    """One spelling per class: "drums", "DRUMS", "other_keys" -> "Drums", "Drums", "Other Keys"."""
    text = name.strip().replace("_", " ")
    for known in (*GM_FAMILIES, "Drums", "Vocals", "Percussion", "Other"):
        if text.lower() == known.lower():
            return known
    return " ".join(word[:1].upper() + word[1:] for word in text.split())


def _tokens(file_stem: str) -> list[str]:
    # "LeadVox_02" -> ["lead", "vox", "02"]; camelCase split so that producers' names match.
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", file_stem)
    return [token for token in re.split(r"[^a-z0-9]+", spaced.lower()) if token]


def is_mix_name(file_stem: str) -> bool:
    """True for a song folder's mix file ("mix.wav", "Song Mixdown.wav")."""
    tokens = _tokens(file_stem)
    return bool(tokens) and any(token in _MIX_WORDS for token in tokens) and len(tokens) <= 3


def class_from_filename(file_stem: str) -> str:
    """Stem class from a file name without extension: "Drums" -> Drums, "bass_di" -> Bass, "kick" -> Drums."""
    tokens = _tokens(file_stem)
    joined = " ".join(tokens)
    for cls, words in _KEYWORDS:
        for word in words:
            if " " in word and word in joined:
                return cls
            if word in tokens:
                return cls
    # Words glued to digits or each other ("drums2", "bassline"): a prefix match on the longer keywords.
    for cls, words in _KEYWORDS:
        for word in words:
            if len(word) >= 4 and any(token.startswith(word) for token in tokens):
                return cls
    return "Other"


def is_targetable(cls: str) -> bool:
    """Classes an instruction may name: everything but the catch-all "Other..." groups (official MoisesDB rule)."""
    return not cls.lower().startswith("other")


def caption_word(cls: str) -> str:
    """The word a caption uses for a class: "Drums" -> "drums", "Strings (continued)" -> "strings"."""
    return _CAPTION_WORDS.get(cls, cls.lower())


def caption(classes: Iterable[str]) -> str:
    """Text naming what sounds, for base-model training: ["Drums", "Bass", "Piano"] -> "drums, bass and piano"."""
    words: list[str] = []
    for cls in classes:
        word = caption_word(cls)
        if word not in words:
            words.append(word)
    if not words:
        return "silence"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]
