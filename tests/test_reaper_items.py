"""One REAPER item rule: a saved project's items give the same region (or the same refusal) in the actions and batch."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
from fake_reaper import FakeReaper

from bridge.sources import read_rpp
from engine.errors import AudioError
from reaper_scripts import planning

SR = 22050

# A section 0.5 s into (and 2 s of) a section that starts 1 s into the file and lasts 2 s.
NESTED = (
    "<SOURCE SECTION\n        LENGTH 2\n        STARTPOS 0.5\n        <SOURCE SECTION\n          LENGTH 2\n"
    '          STARTPOS 1\n          <SOURCE WAVE\n            FILE "Audio/st.wav"\n          >\n        >\n      >'
)
# One item per rule: (take lines, source block). The file Audio/st.wav is stereo 4 s, Audio/mono.wav mono 4 s.
ITEMS = {
    "plain with offset": (
        "SOFFS 0.5\n      PLAYRATE 1 1 0 -1 0 0.0025",
        '<SOURCE WAVE\n        FILE "Audio/st.wav"\n      >',
    ),
    "forward section": (
        "SOFFS 0.25",
        '<SOURCE SECTION\n        LENGTH 2\n        STARTPOS 1\n        <SOURCE WAVE\n          FILE "Audio/st.wav"\n'
        "        >\n      >",
    ),
    "nested section": (
        "SOFFS 0",
        NESTED,
    ),
    "nested section past its parent": (
        "SOFFS 0.25",
        NESTED,
    ),
    "section with length around one without": (
        "SOFFS 0",
        "<SOURCE SECTION\n        LENGTH 3\n        STARTPOS 0\n        <SOURCE SECTION\n          STARTPOS 3\n"
        '          <SOURCE WAVE\n            FILE "Audio/st.wav"\n          >\n        >\n      >',
    ),
    "section without length": (
        "SOFFS 0",
        '<SOURCE SECTION\n        STARTPOS 3\n        <SOURCE WAVE\n          FILE "Audio/st.wav"\n        >\n      >',
    ),
    "reversed section": (
        "SOFFS 0",
        "<SOURCE SECTION\n        LENGTH 4\n        MODE 2\n        STARTPOS 0\n        <SOURCE WAVE\n"
        '          FILE "Audio/st.wav"\n        >\n      >',
    ),
    "resampled": ("PLAYRATE 0.5 0 0 -1 0 0.0025", '<SOURCE WAVE\n        FILE "Audio/st.wav"\n      >'),
    "stretched": ("PLAYRATE 2 1 0 -1 0 0.0025", '<SOURCE WAVE\n        FILE "Audio/st.wav"\n      >'),
    "pitched": ("PLAYRATE 1 1 -12 -1 0 0.0025", '<SOURCE WAVE\n        FILE "Audio/st.wav"\n      >'),
    "left of stereo": ("CHANMODE 3", '<SOURCE WAVE\n        FILE "Audio/st.wav"\n      >'),
    "downmix of mono": ("CHANMODE 2", '<SOURCE WAVE\n        FILE "Audio/mono.wav"\n      >'),
    "missing": ("SOFFS 0", '<SOURCE WAVE\n        FILE "Audio/gone.wav"\n      >'),
    "midi": ("SOFFS 0", "<SOURCE MIDI\n        HASDATA 1 960 QN\n      >"),
}


def project_text() -> str:
    items = "".join(
        f'    <ITEM\n      POSITION {i}\n      LENGTH 1.5\n      SEL 1\n      NAME "{name}"\n'
        f"      {take}\n      {source}\n    >\n"
        for i, (name, (take, source)) in enumerate(ITEMS.items())
    )
    return f'<REAPER_PROJECT 0.1 "7.27/linux-x86_64" 1732500000\n  <TRACK\n    NAME Band\n{items}  >\n>\n'


@pytest.fixture
def project(tmp_path):
    audio = np.random.default_rng(1).uniform(-0.5, 0.5, size=(4 * SR, 2)).astype(np.float32)
    (tmp_path / "Audio").mkdir()
    soundfile.write(tmp_path / "Audio" / "st.wav", audio, SR)
    soundfile.write(tmp_path / "Audio" / "mono.wav", audio[:, 0], SR)
    path = tmp_path / "song.rpp"
    path.write_text(project_text())
    return path


def action_plans(project) -> list[tuple[float, float] | str]:
    """What the REAPER actions plan for each item: read from a (fake) running REAPER, planned by their rule."""
    from reaper_scripts import project as lib

    reaper = FakeReaper.from_rpp(str(project))
    outcomes = []
    for item in reaper.tracks[0].items:
        view = lib.read_item(reaper, item.ptr, str(project.parent))
        try:
            plan = planning.plan_job(view)
            outcomes.append((round(plan.start_s, 6), round(plan.end_s, 6)))
        except AudioError as exc:
            outcomes.append(str(exc))
    return outcomes


def batch_plans(project) -> list[tuple[float, float] | str]:
    return [s.problem or (round(s.start_s, 6), round(s.end_s, 6)) for s in read_rpp(project)]


def test_an_item_gives_the_same_region_or_refusal_in_the_actions_and_in_batch(project):
    batch = batch_plans(project)
    assert batch == action_plans(project)
    outcome = dict(zip(ITEMS, batch, strict=True))
    assert outcome["plain with offset"] == (0.5, 2.0)
    assert outcome["forward section"] == (1.25, 2.75)
    assert outcome["downmix of mono"] == (0.0, 1.5)
    assert outcome["nested section"] == (1.5, 3.0)  # 0.5 s into a section that starts 1 s into the file
    # the outer section is 2 s long, but only 1.5 s of the inner one lie after its start
    assert "loops its section" in outcome["nested section past its parent"]
    assert "loops its section" in outcome["section without length"]  # it holds the file's last second only
    assert "loops its section" in outcome["section with length around one without"]  # 3 s of a 1 s section
    assert "is reversed" in outcome["reversed section"]
    assert "rate 0.5, resampled" in outcome["resampled"]
    assert "rate 2, time-stretched" in outcome["stretched"]
    assert "pitch-shifted (-12 semitones)" in outcome["pitched"]
    assert "channel mode mono (left)" in outcome["left of stereo"]
    assert "offline or missing: " in outcome["missing"] and "gone.wav" in outcome["missing"]
    assert "is MIDI" in outcome["midi"]


def test_every_audio_format_the_engine_reads_has_a_reaper_source_type_and_no_other_does():
    from bridge.reaper_items import AUDIO_SOURCE_TYPES, SOURCE_TYPE_FORMATS
    from engine.files import FORMAT_SUFFIXES

    assert set(SOURCE_TYPE_FORMATS.values()) == set(FORMAT_SUFFIXES)
    assert {"WAVE", "AIFF", "FLAC", "MP3", "VORBIS", "OGG"} == AUDIO_SOURCE_TYPES
    assert not {"OPUS", "WAVPACK", "MIDI", "VIDEO", "SECTION"} & AUDIO_SOURCE_TYPES


ODD_ITEMS_RPP = r"""<REAPER_PROJECT 0.1 "7.27/win64" 1732500000
  <TRACK
    NAME Keys
    <ITEM
      POSITION 0
      LENGTH 1.5
      NAME "first take"
      SOFFS 0.5
      <SOURCE WAVE
        FILE "Audio/st.wav"
      >
      TAKE
      NAME "second take"
      SOFFS 1.5
      <SOURCE WAVE
        FILE "Audio/mono.wav"
      >
    >
    <ITEM
      POSITION 2
      LENGTH 1
      SOFFS 0.25
      <SOURCE WAVE
        FILE "sub\x.wav"
      >
    >
    <ITEM
      POSITION 4
      LENGTH 1
      SOFFS 0
      SM 0 0
      <SOURCE WAVE
        FILE "Audio/st.wav"
      >
    >
  >
>
"""


def test_rpp_items_with_no_selected_take_a_windows_subfolder_path_or_one_stretch_marker(project):
    """What REAPER writes and the project above does not: an item of two takes none of which says SEL (REAPER marks a
    later take "TAKE SEL" only when it is the active one: else the first take plays), a file named relative to the
    project in a subfolder, as REAPER on Windows writes it ("sub\\x.wav"), and a take with exactly one stretch marker
    (its SM line holds no "+"), which warps the file as much as several do."""
    (project.parent / "sub").mkdir()
    soundfile.write(project.parent / "sub" / "x.wav", np.zeros((2 * SR, 1), np.float32), SR)
    odd = project.with_name("odd.rpp")
    odd.write_text(ODD_ITEMS_RPP)
    first_take, windows_path, one_marker = read_rpp(odd)
    assert first_take.path == project.parent / "Audio" / "st.wav" and first_take.problem is None
    assert (first_take.start_s, first_take.end_s) == (0.5, 2.0) and first_take.rel == "01 Keys/01 st"
    assert windows_path.path == project.parent / "sub" / "x.wav" and windows_path.problem is None
    assert (windows_path.start_s, windows_path.end_s) == (0.25, 1.25) and windows_path.rel == "01 Keys/02 x"
    assert one_marker.problem and "has stretch markers" in one_marker.problem
