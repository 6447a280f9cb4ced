"""Plain-words instructions parse to (operation, stem) and to the checkpoint's exact prompt format."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.errors import InstructionError
from engine.instructions import Instruction, format_prompt, parse_instruction, vocabulary

SLAKH = SimpleNamespace(
    stems=["Drums", "Bass", "Piano", "Guitar"],
    instruction_template="Music piece. Instruct: {verb} {stem}.",
    instruction_verbs={"add": "Add", "remove": "No", "extract": "Only"},
)


@pytest.mark.parametrize(
    ("text", "op", "stem"),
    [
        ("extract drums", "extract", "Drums"),
        ("drums only", "extract", "Drums"),
        ("remove the bass", "remove", "Bass"),
        ("take out guitar", "remove", "Guitar"),
        ("add piano", "add", "Piano"),
        ("solo bass", "extract", "Bass"),
        ("isolate the drums", "extract", "Drums"),
        ("no piano", "remove", "Piano"),
        ("mute bass", "remove", "Bass"),
        ("keep only guitar", "extract", "Guitar"),
        ("with drums", "add", "Drums"),
        ("Take the drums out, please!", "remove", "Drums"),
        ("  EXTRACT   Drums. ", "extract", "Drums"),
        ("get rid of the bass", "remove", "Bass"),
        ("without piano", "remove", "Piano"),
        ("w/o drums", "remove", "Drums"),
        # a review's producer phrasings that were refused: quotes, possessives, "cut out", "from this track"
        ("remove 'drums'", "remove", "Drums"),
        ("mute the drum's", "remove", "Drums"),
        ("remove the piano\u2019s part", "remove", "Piano"),
        ("cut out the drums", "remove", "Drums"),
        ("knock out the bass", "remove", "Bass"),
        ("remove the drums from this track", "remove", "Drums"),
        ("take the guitar out of the mix", "remove", "Guitar"),
        # a later review's: other word forms, "pls", full-width letters an East-Asian input method types
        ("drums extracted", "extract", "Drums"),
        ("extracting the drums", "extract", "Drums"),
        ("isolating the bass", "extract", "Bass"),
        ("removing drums", "remove", "Drums"),
        ("adding piano", "add", "Piano"),
        ("remove the drums pls", "remove", "Drums"),
        ("\uff25\uff38\uff34\uff32\uff21\uff23\uff34 \uff24\uff32\uff35\uff2d\uff33", "extract", "Drums"),
        ("add more bass", "add", "Bass"),
        ("turn off the drums", "remove", "Drums"),
        ("turn the bass off", "remove", "Bass"),
        ("switch off the piano", "remove", "Piano"),
    ],
)
def test_plain_phrases_parse_to_operation_and_stem(text, op, stem):
    parsed = parse_instruction(text, SLAKH)
    assert (parsed.op, parsed.stem) == (op, stem)


@pytest.mark.parametrize(
    ("text", "stem"),
    [
        ("remove the drum kit", "Drums"),
        ("kit only", "Drums"),
        ("add keys", "Piano"),
        ("remove the keyboard", "Piano"),
        ("extract gtr", "Guitar"),
        ("remove the bass guitar", "Bass"),
        ("add a drum", "Drums"),
        ("no guitars", "Guitar"),
        # plurals of the synonyms of several words, not only of the card's own names
        ("remove the bass guitars", "Bass"),
        ("remove the electric guitars", "Guitar"),
        ("extract the bass lines", "Bass"),
    ],
)
def test_synonyms_map_onto_the_cards_stems(text, stem):
    assert parse_instruction(text, SLAKH).stem == stem


def test_prompt_is_the_checkpoints_trained_format():
    assert parse_instruction("drums only", SLAKH).prompt == "Music piece. Instruct: Only Drums."
    assert parse_instruction("remove the bass", SLAKH).prompt == "Music piece. Instruct: No Bass."
    assert parse_instruction("add piano", SLAKH).prompt == "Music piece. Instruct: Add Piano."


def test_the_exact_trained_prompt_parses_back_to_itself():
    for op in ("add", "remove", "extract"):
        prompt = format_prompt(op, "Guitar", SLAKH)
        parsed = parse_instruction(prompt, SLAKH)
        assert (parsed.op, parsed.stem, parsed.prompt) == (op, "Guitar", prompt)


def test_an_edit_built_for_a_card_is_the_edit_its_plain_words_parse_to():
    built = Instruction.for_card("remove", "Bass", SLAKH)
    assert built == parse_instruction("remove bass", SLAKH)
    assert (built.prompt, built.label) == ("Music piece. Instruct: No Bass.", "remove bass")
    with pytest.raises(InstructionError, match="no vocals stem"):
        Instruction.for_card("extract", "Vocals", SLAKH)


def test_instruction_keeps_the_users_words_and_a_short_label():
    parsed = parse_instruction("Isolate the Drums", SLAKH)
    assert isinstance(parsed, Instruction)
    assert parsed.text == "Isolate the Drums"
    assert parsed.label == "extract drums"


def test_unknown_operation_word_lists_what_is_supported():
    with pytest.raises(InstructionError) as err:
        parse_instruction("explode the drums", SLAKH)
    message = str(err.value)
    assert "explode" in message
    assert "drums, bass, piano, guitar" in message
    assert "extract" in message and "remove" in message and "add" in message


def test_instrument_the_card_lacks_is_named_in_the_error():
    with pytest.raises(InstructionError, match="no vocals stem"):
        parse_instruction("remove the vocals", SLAKH)


def test_unknown_instrument_is_an_error():
    with pytest.raises(InstructionError, match="no instrument this model knows"):
        parse_instruction("extract the theremin", SLAKH)


def test_two_instruments_in_one_edit_is_an_error():
    with pytest.raises(InstructionError, match="one instrument per edit"):
        parse_instruction("remove drums and bass", SLAKH)


@pytest.mark.parametrize(
    ("text", "nearest"),
    [
        ("more bass", "say add bass"),
        ("less bass", "say remove bass"),
        ("turn up the drums", "say add drums"),
        ("turn the drums down", "say remove drums"),
        ("make the piano louder", "say add piano"),
        ("lower the guitar", "say remove guitar"),
    ],
)
def test_a_level_change_is_refused_not_read_as_an_add(text, nearest):
    # "more bass" was read as add: a second, generated bass part on top of the mix
    with pytest.raises(InstructionError, match="level change, which is a fader's job") as err:
        parse_instruction(text, SLAKH)
    assert nearest in str(err.value) and "drums, bass, piano, guitar" in str(err.value)


@pytest.mark.parametrize("text", ["remove bass drum", "remove the kick", "extract the snare drum"])
def test_a_part_of_the_kit_is_neither_the_kit_nor_the_bass(text):
    # "bass drum" read as bass and drums ("one instrument per edit"); "kick" alone as nothing known
    with pytest.raises(InstructionError, match=r"no (kick|snare) stem"):
        parse_instruction(text, SLAKH)


def test_a_long_paste_is_cut_in_the_message_so_what_is_accepted_survives_the_wire():
    from bridge.protocol import clip_message

    text = "extract drums " + "and then some more words about the mix " * 20  # under the 1000 limit
    with pytest.raises(InstructionError) as err:
        parse_instruction(text, SLAKH)
    assert len(str(err.value)) < 400
    assert clip_message(str(err.value)).endswith("drums, bass, piano, guitar")


def test_stem_without_operation_asks_what_to_do():
    with pytest.raises(InstructionError, match="what should happen to the drums"):
        parse_instruction("the drums", SLAKH)


@pytest.mark.parametrize("text", ["", "   ", None])
def test_empty_instruction_is_an_error(text):
    with pytest.raises(InstructionError, match="empty"):
        parse_instruction(text, SLAKH)


def test_stem_vocabulary_comes_from_the_card_not_the_code():
    card = SimpleNamespace(stems=["Vocals", "Strings", "Keys"], instruction_template=None, instruction_verbs=None)
    assert parse_instruction("remove the vox", card).stem == "Vocals"
    assert parse_instruction("strings only", card).stem == "Strings"
    # The card's own "Keys" wins; "piano" still maps onto it as the nearest stem the card has.
    assert parse_instruction("add keys", card).stem == "Keys"
    assert parse_instruction("add piano", card).stem == "Keys"
    with pytest.raises(InstructionError, match="no drums stem"):
        parse_instruction("extract drums", card)
    # a card with both: each name is its own stem, though one is the other's synonym
    both = SimpleNamespace(stems=["Piano", "Keys"], instruction_template=None, instruction_verbs=None)
    assert parse_instruction("add keys", both).stem == "Keys"
    assert parse_instruction("add piano", both).stem == "Piano"
    assert parse_instruction("remove the basses", SLAKH).stem == "Bass"  # "bass" -> "basses", not "bas"


def test_card_without_template_uses_the_official_format():
    card = {"stems": ["Drums"]}
    assert parse_instruction("extract drums", card).prompt == "Music piece. Instruct: Only Drums."


def test_custom_template_and_verbs_are_used_and_limit_the_operations():
    card = SimpleNamespace(
        stems=["Drums"], instruction_template="{verb}: {stem}", instruction_verbs={"extract": "Isolate"}
    )
    assert parse_instruction("drums only", card).prompt == "Isolate: Drums"
    assert vocabulary(card).operations == ("extract",)
    with pytest.raises(InstructionError, match="cannot read 'remove'"):
        parse_instruction("remove drums", card)


@pytest.mark.parametrize("card", [None, {}, SimpleNamespace(stems=[])])
def test_without_a_card_every_instrument_we_have_words_for_parses(card):
    # A client that does not know the server's model checks the words; the model's card decides later.
    assert parse_instruction("remove the vox", card).stem == "Vocals"
    assert parse_instruction("drums only", card).prompt == "Music piece. Instruct: Only Drums."
    with pytest.raises(InstructionError, match="no instrument"):
        parse_instruction("extract the theremin", card)


@pytest.mark.parametrize("takes", [0, 17, -1, 2.0, "2", True, None])
def test_takes_outside_1_to_max_or_not_whole_are_refused_in_one_message(takes):
    from engine.errors import ConfigError
    from engine.instructions import MAX_TAKES, check_takes

    with pytest.raises(ConfigError, match=f"takes must be a whole number from 1 to {MAX_TAKES}"):
        check_takes(takes)


def test_check_takes_returns_the_takes_and_raises_the_callers_error():
    from engine.instructions import MAX_TAKES, check_takes

    assert check_takes(1) == 1 and check_takes(MAX_TAKES) == MAX_TAKES
    with pytest.raises(KeyError):
        check_takes(0, KeyError)


def test_the_menu_offers_every_operation_once_and_the_typed_stems_are_the_official_ones():
    from engine import instructions

    assert sorted(instructions.MENU_OPERATIONS) == sorted(instructions.OPERATIONS)
    # the four stems of the published adapter (Slakh's drums, bass, piano, guitar), in its order
    assert instructions.OFFICIAL_STEMS == ("Drums", "Bass", "Piano", "Guitar")
    assert instructions.OFFICIAL_STEM_WORDS == ("drums", "bass", "piano", "guitar")


def test_an_operation_on_audio_is_its_input_and_what_a_perfect_edit_gives():
    import numpy as np

    from engine.instructions import edit_pair

    stem, rest = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    mix = stem + rest
    for op, (source, target) in {"extract": (mix, stem), "remove": (mix, rest), "add": (rest, mix)}.items():
        got = edit_pair(op, stem, rest)
        np.testing.assert_array_equal(got[0], source)
        np.testing.assert_array_equal(got[1], target)
    with pytest.raises(InstructionError, match="unknown operation 'mute'"):
        edit_pair("mute", stem, rest)


def test_a_seed_is_a_whole_number_in_range_and_never_a_truth_value():
    import numpy as np

    from engine.errors import ConfigError
    from engine.instructions import MAX_SEED, check_seed

    assert check_seed(0) == 0 and check_seed(np.int64(MAX_SEED)) == MAX_SEED
    for bad in (True, False, -1, MAX_SEED + 1, 1.0, "3", None):
        with pytest.raises(ConfigError, match="whole number"):
            check_seed(bad)


def test_the_length_limit_is_exact_and_a_stem_ending_in_ss_takes_es():
    from engine.instructions import MAX_INSTRUCTION

    words = "extract drums"
    assert parse_instruction(words + " " * 0 + "!" * (MAX_INSTRUCTION - len(words)), SLAKH).op == "extract"
    with pytest.raises(InstructionError, match=f"the limit is {MAX_INSTRUCTION}"):
        parse_instruction(words + "!" * (MAX_INSTRUCTION + 1 - len(words)), SLAKH)
    brass = {"stems": ["Brass", "Drums"]}
    assert parse_instruction("remove the brasses", brass).stem == "Brass"
