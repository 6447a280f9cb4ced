"""Plain-words instructions -> (operation, stem) -> the exact prompt the loaded checkpoint was trained with.

"extract drums", "drums only", "take the bass out", "no piano", "with guitar", "Music piece. Instruct: Only Drums."
all parse. The stem vocabulary comes from the checkpoint's model card (`card.stems`); the synonym table below
only maps everyday words onto those stems ("kit" -> Drums, "keys" -> Piano, "gtr" -> Guitar) and never adds a stem
the card does not have. Anything we cannot read raises `InstructionError` naming what is supported.

Parsing is deliberately strict: every word must be an instrument, an operation word or a filler ("the", "please").
A loose parser that guesses would silently run the wrong edit, which costs a producer more than an error message.

No torch here: the OSC server validates instructions before queueing a job.
"""

from __future__ import annotations

import operator
import re
import textwrap
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError, ImusicError, InstructionError

MAX_INSTRUCTION = 1000  # characters: "extract drums" needs 13; the OSC request's limit too (bridge.protocol)

# The operations and the official stems, defined here only (no torch: the client, REAPER and batch import them).
OPERATIONS = ("add", "remove", "extract")
OFFICIAL_STEMS = ("Drums", "Bass", "Piano", "Guitar")
# The same as a producer types them ("extract drums"), and the operations in the order menus offer them (extract
# first): what the REAPER presets, their help and the demo's edits are made from.
OFFICIAL_STEM_WORDS = tuple(stem.lower() for stem in OFFICIAL_STEMS)
MENU_OPERATIONS = ("extract", "remove", "add")
# The official Slakh format (ldzhangyx/instruct-MusicGen, src/data/slakh_datamodule.py); used when a card has none.
OFFICIAL_TEMPLATE = "Music piece. Instruct: {verb} {stem}."
OFFICIAL_VERBS = {"add": "Add", "remove": "No", "extract": "Only"}
# The most takes (generations, best kept) one edit may ask for: the Editor, the wire and every CLI check this one.
MAX_TAKES = 16
# The largest seed: seeds travel as OSC int32 (the wire's -1 asks the engine to draw one); the Editor draws up to it.
MAX_SEED = 2**31 - 1


def check_takes(takes: object, error: type[Exception] = ConfigError) -> int:
    """`takes` when it is a whole number from 1 to MAX_TAKES, else `error` saying so (one message everywhere)."""
    if isinstance(takes, bool) or not isinstance(takes, int) or not 1 <= takes <= MAX_TAKES:
        raise error(f"takes must be a whole number from 1 to {MAX_TAKES}, got {takes!r}")
    return takes


def check_seed(seed: object, error: type[Exception] = ConfigError) -> int:
    """`seed` when it is a whole number from 0 to MAX_SEED, else `error` saying so (-1 means "draw one" only on the
    wire: here None does)."""
    try:
        value = None if isinstance(seed, bool) else operator.index(seed)  # ints, numpy's included
    except TypeError:
        value = None
    if value is None or not 0 <= value <= MAX_SEED:
        raise error(f"a seed must be a whole number from 0 to {MAX_SEED} (None draws one), got {seed!r}")
    return value


# Operation phrases, as the sequence of non-instrument, non-filler words left in the instruction (in order).
# "take the drums out" leaves ("take", "out"); "keep only guitar" leaves ("keep", "only").
_OP_PHRASES: dict[str, list[str]] = {
    "extract": [
        "extract",
        "only",
        "solo",
        "soloed",
        "isolate",
        "isolated",
        "keep only",
        "keep just",
        "leave only",
        "leave just",
        "keep",
        "just",
        "alone",
        "separate",
        "nothing but",
        "extract only",
        "only keep",
        "give me only",
        "give me just",
        "extracted",
        "extracting",
        "isolating",
    ],
    "remove": [
        "remove",
        "no",
        "without",
        "mute",
        "muted",
        "take out",
        "take out of",
        "take away",
        "out",
        "drop",
        "delete",
        "cut",
        "cut out",
        "knock out",
        "pull out",
        "kill",
        "lose",
        "minus",
        "strip",
        "strip out",
        "get rid of",
        "eliminate",
        "subtract",
        "removed",
        "remove all",
        "removing",
        "muting",
        "turn off",
        "switch off",
    ],
    "add": [
        "add",
        "with",
        "plus",
        "include",
        "layer",
        "insert",
        "put in",
        "bring in",
        "add in",
        "added",
        "adding",
        "add more",
    ],
}

# Words asking for a level change, which no operation is ("more bass" would otherwise guess add: a second bass part
# on top of the mix); the refusal says what to do instead.
_LOUDER_WORDS = frozenset(["more", "louder", "boost", "raise", "up"])
_SOFTER_WORDS = frozenset(["less", "quieter", "softer", "lower", "down"])
_LEVEL_WORDS = _LOUDER_WORDS | _SOFTER_WORDS | {"turn"}

# Words that carry no meaning for the edit.
_FILLERS = frozenset(
    [
        "the",
        "a",
        "an",
        "some",
        "any",
        "my",
        "this",
        "these",
        "those",
        "please",
        "pls",
        "plz",
        "track",
        "tracks",
        "part",
        "parts",
        "stem",
        "stems",
        "sound",
        "sounds",
        "instrument",
        "instruments",
        "audio",
        "channel",
        "and",
        "from",
        "it",
        "song",
        "mix",
        "here",
    ]
)

# Everyday names for common stem classes. A group applies only when one of its names equals a stem of the card;
# all its names then map onto that card stem. Groups whose stem the card lacks give a precise error instead.
_SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    ("drums", "drum", "drum kit", "drumkit", "drum kits", "kit", "drum track", "beat", "beats"),
    ("bass", "bass guitar", "bassline", "bass line", "electric bass", "basses"),
    ("piano", "pianos", "keys", "keyboard", "keyboards", "electric piano", "grand piano"),
    ("guitar", "guitars", "gtr", "gtrs", "electric guitar", "acoustic guitar", "guitar part"),
    # parts of a kit are not the kit: "remove bass drum" must not read "bass" and "drums", nor take the whole kit
    ("kick", "kick drum", "bass drum", "kicks"),
    ("snare", "snare drum", "snares"),
    ("vocals", "vocal", "vox", "voice", "voices", "singing", "singer", "lead vocal", "lead vocals"),
    ("strings", "string", "string section"),
    ("synth", "synths", "synthesizer", "synthesizers"),
    ("brass", "horns", "horn section"),
    ("organ", "organs"),
)

_MAX_PHRASE = 4


@dataclass(frozen=True)
class Instruction:
    """One parsed edit: `op` in OPERATIONS, `stem` as the card names it, `prompt` the text the model is given."""

    op: str
    stem: str
    prompt: str
    text: str = ""  # what the user typed, for messages and file names

    @property
    def label(self) -> str:
        """Short human name, e.g. "extract drums" (track names, file names)."""
        return instruction_text(self.op, self.stem)

    @classmethod
    def for_card(cls, op: str, stem: str, card: Any) -> Instruction:
        """The edit (op, stem) in the prompt format of the checkpoint `card` describes, as if typed in plain words
        (evaluation and tuning build their edits so); InstructionError where the card lacks either."""
        return cls(op, stem, format_prompt(op, stem, card), instruction_text(op, stem))


def edit_pair(op: str, stem: Any, rest: Any) -> tuple[Any, Any]:
    """What an operation means on audio, as (input, what a perfect edit gives), from a stem and the rest of the mix
    (arrays of one shape): extract (mix, stem), remove (mix, rest), add (rest, mix). Training clips, evaluation's
    stereo sessions and the demo's truth picture are all made by it."""
    mix = stem + rest
    if op == "extract":
        return mix, stem
    if op == "remove":
        return mix, rest
    if op == "add":
        return rest, mix
    raise InstructionError(f"unknown operation {op!r}: use {', '.join(OPERATIONS)}")


def instruction_text(op: str, stem: str) -> str:
    """The plain words of an edit, as a producer types them and every front end shows them: "extract drums"."""
    return f"{op} {stem.lower()}"


def typical_instruction(editor: Any) -> str | None:
    """The edit a producer's first hotkey most likely sends, in words `editor` accepts (its parse and info): extract
    before the other operations, its own stems first. What the server warms up with and every timing measures (the
    acceptance bar, `imusic bench`); None when it accepts none."""
    info = getattr(editor, "info", {}) or {}
    for operation in dict.fromkeys(["extract", *info.get("operations", []), *OPERATIONS]):
        for stem in dict.fromkeys([*info.get("stems", []), *OFFICIAL_STEMS]):
            text = instruction_text(operation, stem)
            try:
                editor.parse(text)
            except ImusicError:
                continue
            return text
    return None


def timed_instruction(editor: Any, given: str = "") -> str:
    """The edit a timing measures: `given`, else typical_instruction; a ConfigError naming the model's vocabulary
    when it accepts none (every benchmark and the acceptance bar need one edit it can do)."""
    instruction = given or typical_instruction(editor)
    if instruction is None:
        raise ConfigError(
            f"the model accepts none of {', '.join(f'{op} <stem>' for op in OPERATIONS)}: there is no edit to time"
        )
    return instruction


@dataclass(frozen=True)
class Vocabulary:
    """What a checkpoint understands, read from its model card."""

    stems: tuple[str, ...]
    template: str
    verbs: Mapping[str, str]

    @property
    def operations(self) -> tuple[str, ...]:
        return tuple(op for op in OPERATIONS if op in self.verbs)

    def supported(self) -> str:
        """One line a producer can act on: the operations (with a phrase each) and the stems."""
        examples = {"extract": "extract X / X only", "remove": "remove X / no X", "add": "add X / with X"}
        ops = "; ".join(examples[op] for op in self.operations)
        return f"say {ops}, where X is one of: {', '.join(s.lower() for s in self.stems)}"


def _field(card: Any, *names: str) -> Any:
    """Read the first present field of a card that may be a dataclass or a dict (cards written by older code)."""
    for name in names:
        value = card.get(name) if isinstance(card, Mapping) else getattr(card, name, None)
        if value is not None:
            return value
    return None


def vocabulary(card: Any) -> Vocabulary:
    """The stems, template and verbs of a model card; the official Slakh format where the card is silent.

    `card` None (or without stems) means "model unknown": all the instruments the synonym table names.
    """
    stems = _field(card, "stems") if card is not None else None
    if not stems:
        # No card (a client that does not know the server's model): every instrument of the synonym table, so the
        # words can be checked now; the model's own card decides when the job arrives.
        stems = [group[0].capitalize() for group in _SYNONYM_GROUPS]
    template = _field(card, "instruction_template", "template") or OFFICIAL_TEMPLATE
    verbs = _field(card, "instruction_verbs", "verbs") or OFFICIAL_VERBS
    verbs = {op: str(v) for op, v in dict(verbs).items() if op in OPERATIONS}
    if not verbs:
        raise InstructionError("this model's card lists no operations (add / remove / extract)")
    return Vocabulary(stems=tuple(str(s) for s in stems), template=str(template), verbs=verbs)


def _words(text: str) -> list[str]:
    # NFKC: full-width letters an East-Asian input method types ("ＥＸＴＲＡＣＴ") are the ASCII ones
    text = unicodedata.normalize("NFKC", text).lower().replace("w/o", " without ").replace("w/", " with ")
    words = re.findall(r"[a-z0-9']+", text.replace("-", " ").replace("_", " ").replace("\u2019", "'"))
    # quotes around a word and a possessive go: "remove 'drums'", "mute the drum's" name the drums
    words = [word.strip("'").removesuffix("'s") for word in words]
    return [word for word in words if word]


def _variants(name: str) -> set[str]:
    """A stem name and its naive singular/plural, of its last word where it has several ("drums" <-> "drum", "bass"
    -> "basses", "bass guitar" -> "bass guitars")."""
    head, _, last = name.rpartition(" ")
    if last.endswith("ss"):
        forms = {last, last + "es"}
    elif last.endswith("s"):
        forms = {last, last[:-1]}
    else:
        forms = {last, last + "s"}
    return {f"{head} {form}".strip() for form in forms}


def _quoted(text: str) -> str:
    """What the user typed, quoted for a message and cut to a line's worth: a long paste must not push the message's
    list of what is accepted past the wire's limit (bridge.protocol clips messages)."""
    return repr(textwrap.shorten(text.strip(), 60, placeholder=" ..."))


def _stem_phrases(vocab: Vocabulary) -> dict[tuple[str, ...], str]:
    """Map word sequences to a card stem, or to "!name" for a known instrument this card does not have."""
    phrases: dict[tuple[str, ...], str] = {}
    own = {" ".join(_words(stem)): stem for stem in vocab.stems}
    for group in _SYNONYM_GROUPS:
        target = next((own[name] for name in group if name in own), None)
        for name in group:
            for variant in _variants(name):
                phrases.setdefault(tuple(variant.split()), target if target else "!" + group[0])
    # The card's own names win over any synonym (a card may have a "Keys" stem distinct from "Piano").
    for name, stem in own.items():
        for variant in _variants(name):
            phrases[tuple(variant.split())] = stem
    return phrases


def _op_phrases(vocab: Vocabulary) -> dict[tuple[str, ...], str]:
    phrases: dict[tuple[str, ...], str] = {}
    for op in vocab.operations:
        for phrase in _OP_PHRASES[op]:
            phrases[tuple(phrase.split())] = op
    # The checkpoint's own verbs ("Only", "No", "Add") always parse, so its exact prompt format round-trips.
    for op in vocab.operations:
        phrases[tuple(_words(vocab.verbs[op]))] = op
    return phrases


def _template_words(vocab: Vocabulary) -> set[str]:
    """Words of the template outside its placeholders ("music", "piece", "instruct"): fillers when pasted back."""
    fixed = re.sub(r"\{[^}]*\}", " ", vocab.template)
    return set(_words(fixed))


def render_prompt(template: str, verbs: Mapping[str, str], op: str, stem: str) -> str:
    """The prompt text of (op, stem) in a template and verbs: the one formatting that training, the data export and
    inference share, e.g. (OFFICIAL_TEMPLATE, OFFICIAL_VERBS, "extract", "Drums") -> "Music piece. Instruct: Only
    Drums."."""
    try:
        return template.format(verb=verbs[op], stem=stem, op=op)
    except (KeyError, IndexError, ValueError) as exc:
        raise InstructionError(f"the model card's instruction template {template!r} is malformed") from exc


def format_prompt(op: str, stem: str, card: Any) -> str:
    """The exact prompt text for (op, stem) in the checkpoint's trained format."""
    vocab = vocabulary(card)
    if op not in vocab.verbs:
        raise InstructionError(f"this model cannot {op}: {vocab.supported()}")
    if stem not in vocab.stems:
        raise InstructionError(f"this model has no {stem.lower()} stem: {vocab.supported()}")
    return render_prompt(vocab.template, vocab.verbs, op, stem)


def check_not_empty(text: Any, card: Any = None, error: type[Exception] = InstructionError) -> str:
    """`text` stripped; `error` (code bad_instruction) when there are no words in it, listing what the model takes,
    or more than MAX_INSTRUCTION characters (a paste gone wrong; the wire's limit too). One rule for the server's early
    check (no model loaded: every known stem) and for parsing."""
    if not isinstance(text, str) or not text.strip():
        raise error(f"the instruction is empty: {vocabulary(card).supported()}")
    if len(text.strip()) > MAX_INSTRUCTION:
        raise error(f"the instruction is {len(text.strip())} characters long; the limit is {MAX_INSTRUCTION}")
    return text.strip()


def parse_instruction(text: str, card: Any) -> Instruction:
    """Parse plain words into an Instruction for the checkpoint described by `card`; InstructionError if unclear."""
    check_not_empty(text, card)
    vocab = vocabulary(card)
    words = _words(text)
    stem_phrases = _stem_phrases(vocab)
    fillers = _FILLERS | _template_words(vocab)

    found: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(words):
        for size in range(min(_MAX_PHRASE, len(words) - i), 0, -1):
            key = tuple(words[i : i + size])
            if key in stem_phrases:
                found.append(stem_phrases[key])
                i += size
                break
        else:
            rest.append(words[i])
            i += 1

    missing = sorted({s[1:] for s in found if s.startswith("!")})
    if missing:
        raise InstructionError(f"this model has no {', '.join(missing)} stem: {vocab.supported()}")
    stems = list(dict.fromkeys(found))
    if not stems:
        raise InstructionError(f"no instrument this model knows in {_quoted(text)}: {vocab.supported()}")
    if len(stems) > 1:
        named = " and ".join(s.lower() for s in stems)
        raise InstructionError(f"one instrument per edit ({_quoted(text)} names {named}): {vocab.supported()}")
    stem = stems[0]

    op_words = tuple(w for w in rest if w not in fillers)
    op = _op_phrases(vocab).get(op_words)
    if op is None:
        if not op_words:
            raise InstructionError(f"what should happen to the {stem.lower()}? {vocab.supported()}")
        if _LEVEL_WORDS.intersection(op_words):
            name = stem.lower()
            nearest = (
                f"say remove {name} to take it out"
                if _SOFTER_WORDS.intersection(op_words)
                else f"say add {name} to layer a new {name} part"
            )
            raise InstructionError(
                f"{_quoted(text)} asks for a level change, which is a fader's job: this model adds, removes or"
                f" extracts a part ({nearest}); {vocab.supported()}"
            )
        raise InstructionError(f"cannot read {_quoted(' '.join(op_words))} in {_quoted(text)}: {vocab.supported()}")
    return Instruction(op=op, stem=stem, prompt=format_prompt(op, stem, card), text=text.strip())
