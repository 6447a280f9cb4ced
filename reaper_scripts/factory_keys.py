"""REAPER's factory key map (main section), as (modifier bits, key code) pairs in reaper-kb.ini's `KEY` numbering.

REAPER keeps its default shortcuts inside the program: reaper-kb.ini holds only what a user changed, so the installer
needs this table to know which chords REAPER already uses. Modifier bits as in `KEY <bits> <key> <command> <section>`:
1 = the key is a virtual key code, 4 = Shift, 8 = Ctrl (Cmd on macOS), 16 = Alt (Option), 32 = Win (Control on macOS);
255 marks mousewheel, media-key and gesture "keys". Letters and digits are their ASCII codes.

Where the facts come from (public material, restated here as numbers):

- The Ultraschall API's list of REAPER's factory default KEY codes (repository
  github.com/Ultraschall/ultraschall-lua-api-for-reaper, section [Main] of
  ultraschall_api/IniFiles/Reaper-factory-default-KEY-Codes_for_reaper-kb_ini.ini): 269 chords of REAPER 5.9x on
  Windows, written 2018 and unchanged since; it includes a few defaults that the SWS extension adds (C).
- The marks REAPER itself writes after a KEY line when it saves a key map: "OVERRIDE DEFAULT" (the chord had a factory
  action that the user replaced) and "DISABLED DEFAULT" (the user removed it). Collected from every published version
  of OSARA's key maps for Windows and macOS (github.com/jcsteh/osara, config/*/reaper-kb.ini, up to 2025, REAPER 7),
  Ultraschall's portable reaper-kb.ini (github.com/Ultraschall/ultraschall-portable) and users' published REAPER
  configurations (e.g. github.com/jonch070/reaper-config, a REAPER 7 key map that rebinds every letter and digit).
  These add 28 chords the 2018 list lacks: newer defaults and macOS-only ones.

How complete: FACTORY_MAIN is the union of both (297 chords, both platforms; a chord that is a default on only one
platform or in only one version counts as taken). It is complete for REAPER 5.9x on Windows; for later versions and
for macOS it holds every default that a published key map touched, which is not a proof that there are no others.
So the installer only binds a chord that is also in KNOWN_FREE: chords (letters and digits) that REAPER wrote into a
saved key map *without* a DEFAULT mark, which it does when the chord has no factory action on that version and
platform. A chord with evidence both ways is in FACTORY_MAIN and not in KNOWN_FREE.
"""

from __future__ import annotations


def _chords(by_modifiers: dict[int, str]) -> frozenset[tuple[int, int]]:
    """{modifier bits: "key codes separated by spaces"} -> {(modifier bits, key code)}."""
    return frozenset((modifiers, int(key)) for modifiers, keys in by_modifiers.items() for key in keys.split())


# REAPER's factory shortcuts of the main section (0): never bound by the installer.
FACTORY_MAIN = _chords(
    {
        0: "33 34 35 36 37 38 39 40 41 42 43 44 45 46 60 61 62 63 64 91 93 94 95 96 123 125 126",
        1: (
            "8 9 13 27 32 48 49 50 51 52 53 54 55 56 57 67 68 69 70 71 76 77 78 80 82 83 84 85 86 87 88 89 90 97 "
            "98 99 100 102 103 104 105 107 109 113 114 115 116 117 118 119 120 122 32801 32802 32803 32804 32805 "
            "32806 32807 32808 32813 32814"
        ),
        5: (
            "9 48 51 52 53 54 55 56 57 67 69 70 71 76 77 78 82 83 84 86 87 88 90 112 115 116 117 118 119 120 191 "
            "32805 32806 32807 32808"
        ),
        8: "44 60 62 91 93",
        9: (
            "8 9 32 48 49 50 51 52 53 54 55 56 57 65 66 67 68 69 71 72 74 76 77 78 79 80 81 82 83 84 86 88 90 100 "
            "102 107 112 113 115 122 188 190 219 221 32801 32802 32805 32806 32807 32808 32814"
        ),
        13: "9 67 68 70 71 72 77 78 80 83 84 86 88 90 32805 32806 32807 32808",
        17: "13 32 48 49 50 51 52 53 54 55 56 57 66 67 68 71 76 77 80 82 83 84 88 90 100 102 32805 32806 32807 32808",
        21: "67 71 83 84",
        24: "60 62",
        25: "48 49 50 51 52 66 69 70 71 76 77 78 80 82 83 84 86 88 90 188 190 32801 32802 32806 32808",
        29: "82 83 84 32806 32808",
        33: "32",
        255: (
            "152 153 168 184 200 201 216 218 248 249 250 251 253 2280 2536 2792 3048 3304 3560 3816 4072 6376 "
            "6632 6888 11496 12008 12264 12520 12776 13032 13288 13544"
        ),
    }
)

# Letters and digits known to have no factory action in the main section (see above): the only chords bound.
KNOWN_FREE = _chords(
    {
        1: "65 66 72 73 74 75 79 81",
        5: "49 50 65 66 68 72 73 74 75 79 80 81 85 89",
        9: "70 73 75 85 87 89",
        13: "48 49 50 51 52 53 54 55 56 57 65 66 69 73 74 75 76 79 81 82 85 87 89",
        17: "65 69 70 72 73 74 75 78 79 81 85 86 87 89",
        21: "48 49 50 51 52 53 54 55 56 57 65 66 68 69 70 72 73 74 75 76 77 78 79 80 81 82 85 86 87 88 89 90",
        25: "53 54 55 56 57 65 67 68 72 73 74 75 79 81 85 87 89",
        29: "48 49 50 51 52 53 54 55 56 57 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 85 86 87 88 89 90",
        33: "49 50 51 65 66 67 68 69 71 72 76 78 81 82 83 84 87 88",
        37: "67 68 69 71 73 74 75 76 81 82 84 85",
        41: "67 73 74 76 77 84 88",
        45: "69 75 82",
        49: "49 50 51 52 53 54 65 67 73 74 75 76 83",
        53: "65 66 67 68 70 71 72 76 81 83 87",
        57: "67 70 75 77 82 83 84 88",
        61: "66 67 68 69 70 73 76 77 79 80 82 83 84",
    }
)
