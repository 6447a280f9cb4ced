"""A fake of REAPER's Python ReaScript API, for driving the actions without REAPER.

It follows the binding's shapes, since a fake with friendlier shapes would test nothing real:
- a function with output parameters returns a tuple of *all* its arguments, its return value first when it has one
  (`RPR_GetMediaSourceFileName(src, "", 4096)` -> `(src, filename, 4096)`);
- objects are strings such as "(MediaItem*)0x00000000deadbeef"; null pointers are "(MediaItem_Take*)0x0000000000000000";
- `RPR_InsertTrackAtIndex` returns nothing; `RPR_defer` takes a string of Python code, run later in a fresh namespace
  that holds only the RPR_* functions (REAPER gives deferred code no locals of the script that deferred it);
- every pointer argument goes through the binding's check (reaper_python's rpr_packp asks RPR_ValidatePtr whether
  the object is in the project, and passes NULL when it is not): a source made by `RPR_PCM_Source_CreateFromFile` is
  in no project until a take uses it, so handing it to `RPR_SetMediaItemTake_Source` changes nothing; and
  `RPR_ValidatePtr2` gets its pointer checked as a `void*`, which ValidatePtr does not know, so it always says no;
- `RPR_defer`, `RPR_atexit` and `RPR_runloop` are host functions: REAPER puts them in the running script's globals
  (`__main__` while it runs) and nowhere else; the `reaper_python` module does not have them.

Only the calls the actions make are modelled, plus what tests need to build projects and look at them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# Host functions: in the running script's globals only, never members of reaper_python. Python scripts get no
# set_action_options (REAPER 7.03 gives it to EEL and Lua only): what a re-run does is the script's reaper-kb.ini flags.
HOST_ONLY = frozenset({"RPR_defer", "RPR_atexit", "RPR_runloop"})

_addresses = itertools.count(0x7F3A10000000, 0x40)


def _pointer(kind: str) -> str:
    return f"({kind}*)0x{next(_addresses):016X}"


class Deferred(str):
    """Deferred code, and the script instance (the action file) it belongs to."""

    owner = ""


def null(kind: str) -> str:
    return f"({kind}*)0x{0:016X}"


@dataclass
class Source:
    """A PCM source: a file, a SECTION of a parent (how REAPER stores reversed takes), MIDI, or an empty take."""

    type: str = "WAVE"
    filename: str = ""
    length: float = 0.0
    parent: Source | None = None
    section_offset: float = 0.0
    section_length: float = 0.0
    section_reversed: bool = False
    channels: int = 0  # 0: as many as the file has
    # Peaks: a source made by the API has none until PCM_Source_BuildPeaks builds them (REAPER draws no waveform and
    # builds none on its own for it). peaks_left is the percentage a build still has to read.
    peaks: bool = False
    peaks_left: int = 100
    ptr: str = field(default_factory=lambda: _pointer("PCM_source"))


@dataclass
class Take:
    source: Source
    name: str = ""
    values: dict = field(
        default_factory=lambda: {"D_STARTOFFS": 0.0, "D_PLAYRATE": 1.0, "D_PITCH": 0.0, "B_PPITCH": 0.0, "D_VOL": 1.0}
    )
    stretch_markers: int = 0
    envelopes: dict = field(default_factory=dict)  # take envelope name ("Pitch", ...) -> its number of points
    ptr: str = field(default_factory=lambda: _pointer("MediaItem_Take"))


@dataclass
class Item:
    track: Track
    values: dict = field(
        default_factory=lambda: {
            "D_POSITION": 0.0, "D_LENGTH": 0.0, "B_UISEL": 0.0, "B_MUTE": 0.0, "D_VOL": 1.0, "C_BEATATTACHMODE": -1.0
        }
    )  # fmt: skip
    takes: list[Take] = field(default_factory=list)
    active: int = 0
    ptr: str = field(default_factory=lambda: _pointer("MediaItem"))

    @property
    def take(self) -> Take | None:
        return self.takes[self.active] if self.takes else None

    @property
    def position(self) -> float:
        return self.values["D_POSITION"]

    @property
    def length(self) -> float:
        return self.values["D_LENGTH"]


@dataclass
class Track:
    name: str = ""
    selected: bool = False
    items: list[Item] = field(default_factory=list)
    values: dict = field(default_factory=lambda: {"I_FOLDERDEPTH": 0.0, "I_FREEMODE": 0.0, "C_BEATATTACHMODE": -1.0})
    ptr: str = field(default_factory=lambda: _pointer("MediaTrack"))
    guid: str = field(default_factory=lambda: "{" + str(uuid.uuid4()).upper() + "}")
    project: str = ""  # the tab it was made in


class FakeReaper:
    """One REAPER session with one project. Build it with add_track / add_item, then run actions against it."""

    def __init__(self, resource_path: str = "", project_path: str = "", media_dir: str = "") -> None:
        self.project = _pointer("ReaProject")  # the active tab; the tests switch it (the tracks are only this one's)
        self.open_projects = [self.project]
        self.input_captions: list[str] = []  # the labels of the last GetUserInputs dialog, as REAPER shows them
        self.resource_path = resource_path
        self.project_path = project_path  # the .rpp file, "" while unsaved
        self.media_dir = media_dir
        self.tracks: list[Track] = []
        self.time_selection = (0.0, 0.0)
        self.start_offset = 0.0  # Project settings > Project start time: the ruler shows positions shifted by it
        self.new_item_fade = 0.0  # a default fade REAPER may give an item a script makes (whether it does is unknown)
        self.deferred: list[Deferred] = []
        self.instance_prompts: list[str] = []  # scripts whose re-run met REAPER's "already running" dialog
        self._running = ""  # the script whose code runs now
        self.at_exit: list[str] = []
        self.messages: list[tuple[str, str, int]] = []  # (message, title, type) of every message box
        self.console: list[str] = []
        self.user_inputs: list[tuple[bool, str]] = []  # queued answers to RPR_GetUserInputs
        self.undo_points: list[str] = []
        self.undo_depth = 0
        self.ext_state: dict[tuple[str, str], str] = {}
        self.sources_created: list[Source] = []
        self.arrange_updates = 0
        # Every change a script makes goes through a mutating call; tests compare this log to [].
        self.changes: list[str] = []

    # ------------------------------------------------------------------------------------- building a project (tests)
    def add_track(self, name: str = "", *, selected: bool = False) -> Track:
        track = Track(name=name, selected=selected, project=self.project)
        self.tracks.append(track)
        return track

    def add_item(
        self,
        track: Track,
        *,
        position: float,
        length: float,
        source: Source | None,
        start_offset: float = 0.0,
        playrate: float = 1.0,
        pitch: float = 0.0,
        preserve_pitch: bool = False,
        channel_mode: int = 0,
        take_name: str = "",
        selected: bool = True,
    ) -> Item:
        item = Item(track=track)
        item.values.update(D_POSITION=position, D_LENGTH=length, B_UISEL=1.0 if selected else 0.0)
        if source is not None:
            take = Take(source=source, name=take_name)
            take.values.update(
                D_STARTOFFS=start_offset,
                D_PLAYRATE=playrate,
                D_PITCH=pitch,
                B_PPITCH=1.0 if preserve_pitch else 0.0,
                I_CHANMODE=float(channel_mode),
            )
            item.takes.append(take)
        track.items.append(item)
        return item

    @classmethod
    def from_rpp(cls, path: str, *, resource_path: str = "", media_dir: str = "") -> FakeReaper:
        """A session holding the project a .rpp file describes (read with the `rpp` package).

        Read: track NAME and SEL, the time SELECTION, item POSITION, LENGTH, SEL, SOFFS, PLAYRATE (rate, preserve
        pitch, semitones), the take NAME and its SOURCE: file sources, SECTION (MODE bit 2 = reversed) around a
        parent, MIDI, EMPTY. An item's first take is its active take. File names are reported as the project wrote
        them (relative names stay relative), the way REAPER reports a source it could not resolve.
        """
        import rpp

        with open(path, encoding="utf-8") as handle:
            project = rpp.loads(handle.read())
        session = cls(resource_path, path, media_dir or os.path.join(os.path.dirname(path), "Media"))
        selection = project.find("SELECTION")
        if selection is not None:
            session.time_selection = (float(selection[1]), float(selection[2]))
        project_dir = os.path.dirname(path)
        for track_element in project.findall("TRACK"):
            track = session.add_track(
                _value(track_element, "NAME", ""), selected=_value(track_element, "SEL", "0") == "1"
            )
            for item_element in track_element.findall("ITEM"):
                rate = item_element.find("PLAYRATE")
                source_element = item_element.find("SOURCE")
                session.add_item(
                    track,
                    position=float(_value(item_element, "POSITION", "0")),
                    length=float(_value(item_element, "LENGTH", "0")),
                    start_offset=float(_value(item_element, "SOFFS", "0")),
                    playrate=float(rate[1]) if rate is not None else 1.0,
                    preserve_pitch=rate is not None and rate[2] == "1",
                    pitch=float(rate[3]) if rate is not None else 0.0,
                    channel_mode=int(_value(item_element, "CHANMODE", "0")),
                    take_name=_value(item_element, "NAME", ""),
                    selected=_value(item_element, "SEL", "0") == "1",
                    source=_rpp_source(source_element, project_dir) if source_element is not None else None,
                )
        return session

    def reverse(self, item: Item) -> None:
        """What Item > Reverse does to a take: wrap its source in a reversed SECTION of the same extent."""
        take = item.take
        parent = take.source
        take.source = Source(
            type="SECTION", parent=parent, section_offset=0.0, section_length=parent.length, section_reversed=True
        )

    def namespace(self) -> dict:
        """The RPR_* names REAPER puts in a script's globals: the API and the host functions."""
        return {name: getattr(self, name) for name in dir(self) if name.startswith("RPR_")}

    def as_module(self) -> types.ModuleType:
        """A `reaper_python` module: what `from reaper_python import *` gives a module imported by a script."""
        module = types.ModuleType("reaper_python")
        module.__dict__.update({k: v for k, v in self.namespace().items() if k not in HOST_ONLY})
        return module

    @contextlib.contextmanager
    def _as_main(self):
        """Run code as REAPER does: in a `__main__` module whose globals hold the API and the host functions."""
        main = types.ModuleType("__main__")
        main.__dict__.update(self.namespace())
        saved = sys.modules.get("__main__")
        sys.modules["__main__"] = main
        try:
            yield main.__dict__
        finally:
            sys.modules["__main__"] = saved

    def install(self) -> None:
        sys.modules["reaper_python"] = self.as_module()

    def run_script(self, path: str) -> None:
        """Run an action file as REAPER does: its globals hold the API, __name__ is __main__.

        An instance of it still running (deferred code pending) is what REAPER asks about ("terminate / new
        instance"), unless its reaper-kb.ini line's flags answer for good: 512 starts a new instance beside it, 256
        terminates it (and starts nothing)."""
        if any(code.owner == path for code in self.deferred):
            flags = self._script_flags(path)
            if flags & 256:
                self.deferred = [code for code in self.deferred if code.owner != path]
                return
            if not flags & 512:
                self.instance_prompts.append(path)
                return
        with open(path, encoding="utf-8") as handle:
            code = compile(handle.read(), path, "exec")
        self._running = path
        pending = len(self.deferred)
        try:
            with self._as_main() as script_globals:
                exec(code, script_globals)
        finally:
            self._running = ""
        if not any(code.owner == path for code in self.deferred[pending:]):
            # REAPER's help for defer: a deferring script gets no automatic undo point; one that ends without does
            self.undo_points.append("ReaScript: Run")

    def _script_flags(self, path: str) -> int:
        """The flags of the script's SCR line in the resource folder's reaper-kb.ini (4, a plain script, if none)."""
        import shlex

        scripts = os.path.join(self.resource_path, "Scripts")
        try:
            with open(os.path.join(self.resource_path, "reaper-kb.ini"), encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError:
            return 4
        for line in lines:
            fields = shlex.split(line) if line.startswith("SCR ") else []
            if len(fields) >= 6 and os.path.normpath(os.path.join(scripts, fields[-1])) == os.path.normpath(path):
                return int(fields[1])
        return 4

    def run_deferred(self) -> int:
        """Run one round of deferred code (REAPER runs it on its next timer tick); returns how many ran."""
        pending, self.deferred = self.deferred, []
        for code in pending:
            self._running = code.owner
            try:
                with self._as_main() as deferred_globals:
                    # One expression: it runs alike whether the host evaluates or executes the string.
                    eval(compile(code, "<deferred>", "eval"), deferred_globals)
            finally:
                self._running = ""
        return len(pending)

    # -------------------------------------------------------------------------------------------------- lookups
    def _all_items(self) -> list[Item]:
        return [item for track in self.tracks for item in track.items]

    def _item(self, ptr: str) -> Item:
        for item in self._all_items():
            if item.ptr == ptr:
                return item
        raise ValueError(f"not a MediaItem: {ptr}")

    def _take(self, ptr: str) -> Take:
        for item in self._all_items():
            for take in item.takes:
                if take.ptr == ptr:
                    return take
        raise ValueError(f"not a MediaItem_Take: {ptr}")

    def _track(self, ptr: str) -> Track:
        for track in self.tracks:
            if track.ptr == ptr:
                return track
        raise ValueError(f"not a MediaTrack: {ptr}")

    def _source(self, ptr: str) -> Source:
        """A source the active project holds (a take's, or a parent of one): what the binding lets through (a source
        of a tab in the background reaches the API as NULL, as its tracks do)."""
        known = [take.source for item in self._all_items() if item.track.project == self.project for take in item.takes]
        for source in known:
            while source is not None:
                if source.ptr == ptr:
                    return source
                source = source.parent
        raise ValueError(f"not a PCM_source: {ptr}")

    def _selected_items(self) -> list[Item]:
        return [item for item in self._all_items() if item.values["B_UISEL"]]

    # -------------------------------------------------------------------------------------------- the API: reading
    def RPR_GetResourcePath(self) -> str:
        return self.resource_path

    def RPR_EnumProjects(self, idx: int, projfn: str, projfn_sz: int):
        """idx -1 (or 0x40000000): the active tab; 0, 1, ...: the open tabs in order, then a null pointer."""
        if idx in (-1, 0x40000000):
            return (self.project, idx, self.project_path, projfn_sz)
        tabs = self.open_projects
        return (tabs[idx] if 0 <= idx < len(tabs) else null("ReaProject"), idx, self.project_path, projfn_sz)

    def RPR_GetProjectPath(self, buf: str, buf_sz: int):
        return (self.media_dir, buf_sz)

    def RPR_GetProjectPathEx(self, proj: str, buf: str, buf_sz: int):
        return (proj, self.media_dir, buf_sz)

    def RPR_CountTracks(self, proj) -> int:
        return len(self.tracks)

    def RPR_GetTrack(self, proj, idx: int) -> str:
        return self.tracks[idx].ptr if 0 <= idx < len(self.tracks) else null("MediaTrack")

    def RPR_CountSelectedTracks(self, proj) -> int:
        return sum(track.selected for track in self.tracks)

    def RPR_GetSelectedTrack(self, proj, idx: int) -> str:
        selected = [track for track in self.tracks if track.selected]
        return selected[idx].ptr if 0 <= idx < len(selected) else null("MediaTrack")

    def RPR_CountSelectedMediaItems(self, proj) -> int:
        return len(self._selected_items())

    def RPR_GetSelectedMediaItem(self, proj, idx: int) -> str:
        selected = self._selected_items()
        return selected[idx].ptr if 0 <= idx < len(selected) else null("MediaItem")

    def RPR_CountTrackMediaItems(self, track: str) -> int:
        return len(self._track(track).items)

    def RPR_GetTrackMediaItem(self, track: str, idx: int) -> str:
        items = self._track(track).items
        return items[idx].ptr if 0 <= idx < len(items) else null("MediaItem")

    def RPR_GetMediaItem_Track(self, item: str) -> str:
        return self._item(item).track.ptr

    def RPR_GetMediaTrackInfo_Value(self, track: str, parm: str) -> float:
        if parm == "IP_TRACKNUMBER":
            return float(self.tracks.index(self._track(track)) + 1)
        if parm == "I_SELECTED":
            return float(self._track(track).selected)
        return float(self._track(track).values.get(parm, 0.0))

    def RPR_GetSetMediaTrackInfo_String(self, track: str, parm: str, value: str, set_new: bool):
        target = self._track(track)
        if target.project != self.project:
            # The binding passes NULL for a pointer ValidatePtr refuses, and ValidatePtr checks a track against the
            # active project (ValidatePtr2's "in proj"): a track of a tab in the background reads as nothing.
            return (False, track, parm, "", set_new)
        if parm == "GUID" and not set_new:
            return (True, track, parm, target.guid, set_new)
        if parm != "P_NAME":
            return (False, track, parm, value, set_new)
        if set_new:
            self.changes.append(f"track name {value!r}")
            target.name = value
            return (True, track, parm, value, set_new)
        return (True, track, parm, target.name, set_new)

    def RPR_GetMediaItemInfo_Value(self, item: str, parm: str) -> float:
        return float(self._item(item).values.get(parm, 0.0))

    def RPR_GetActiveTake(self, item: str) -> str:
        take = self._item(item).take
        return take.ptr if take is not None else null("MediaItem_Take")

    def RPR_GetMediaItemTakeInfo_Value(self, take: str, parm: str) -> float:
        return float(self._take(take).values.get(parm, 0.0))

    def RPR_CountTakes(self, item: str) -> int:
        return len(self._item(item).takes)

    def RPR_GetTakeNumStretchMarkers(self, take: str) -> int:
        return self._take(take).stretch_markers

    def RPR_GetTakeEnvelopeByName(self, take: str, envname: str) -> str:
        target = self._take(take)
        return f"(TrackEnvelope*){target.ptr}:{envname}" if envname in target.envelopes else null("TrackEnvelope")

    def RPR_CountEnvelopePoints(self, envelope: str) -> int:
        take_ptr, name = envelope.removeprefix("(TrackEnvelope*)").rsplit(":", 1)
        return self._take(take_ptr).envelopes[name]

    def RPR_GetSetMediaItemTakeInfo_String(self, take: str, parm: str, value: str, set_new: bool):
        target = self._take(take)
        if parm != "P_NAME":
            return (False, take, parm, value, set_new)
        if set_new:
            self.changes.append(f"take name {value!r}")
            target.name = value
            return (True, take, parm, value, set_new)
        return (True, take, parm, target.name, set_new)

    def RPR_TakeIsMIDI(self, take: str) -> bool:
        source = self._take(take).source
        while source.type == "SECTION" and source.parent is not None:
            source = source.parent
        return source.type == "MIDI"

    def RPR_GetMediaItemTake_Source(self, take: str) -> str:
        return self._take(take).source.ptr

    def RPR_GetMediaSourceType(self, src: str, typebuf: str, typebuf_sz: int):
        return (src, self._source(src).type, typebuf_sz)

    def RPR_GetMediaSourceFileName(self, src: str, filenamebuf: str, filenamebuf_sz: int):
        # A SECTION has no file of its own: the caller must ask its parent (GetMediaSourceParent).
        return (src, self._source(src).filename, filenamebuf_sz)

    def RPR_GetMediaSourceLength(self, src: str, length_is_qn: bool):
        source = self._source(src)
        length = source.section_length if source.type == "SECTION" else source.length
        return (length, src, False)

    def RPR_GetMediaSourceNumChannels(self, src: str) -> int:
        source = self._source(src)
        while source.type == "SECTION" and source.parent is not None:
            source = source.parent
        return source.channels or _audio_channels(source.filename)

    def RPR_GetMediaSourceParent(self, src: str) -> str:
        parent = self._source(src).parent
        return parent.ptr if parent is not None else null("PCM_source")

    def RPR_PCM_Source_GetSectionInfo(self, src: str, offs: float, length: float, rev: bool):
        source = self._source(src)
        if source.type != "SECTION":
            return (False, src, 0.0, source.length, False)
        return (True, src, source.section_offset, source.section_length, source.section_reversed)

    def RPR_format_timestr_pos(self, tpos: float, buf: str, buf_sz: int, modeoverride: int):
        """The ruler's text for a position: its default Minutes:Seconds mode, shifted by the project start time."""
        minutes, rest = divmod(tpos + self.start_offset, 60.0)
        return (tpos, f"{int(minutes)}:{rest:06.3f}", buf_sz, modeoverride)

    def RPR_GetSet_LoopTimeRange(self, is_set: bool, is_loop: bool, start: float, end: float, allow_autoseek: bool):
        if is_set:
            self.changes.append(f"time selection {start}-{end}")
            self.time_selection = (start, end)
        return (is_set, is_loop, self.time_selection[0], self.time_selection[1], allow_autoseek)

    def RPR_ValidatePtr2(self, proj, pointer: str, ctypename: str) -> bool:
        return False  # the binding checks `pointer` as a void*, which REAPER's check does not know: NULL, never valid

    def RPR_GetExtState(self, section: str, key: str) -> str:
        return self.ext_state.get((section, key), "")

    def RPR_SetExtState(self, section: str, key: str, value: str, persist: bool) -> None:
        self.ext_state[(section, key)] = value

    def RPR_DeleteExtState(self, section: str, key: str, persist: bool) -> None:
        self.ext_state.pop((section, key), None)

    # --------------------------------------------------------------------------------------- the API: user interface
    def RPR_GetUserInputs(self, title: str, num_inputs: int, captions_csv: str, retvals_csv: str, retvals_sz: int):
        # REAPER splits the captions on every comma (separator= sets only the values'); options are name=value
        self.input_captions = [c for c in captions_csv.split(",") if not c.startswith(("separator=", "extrawidth="))]
        ok, text = self.user_inputs.pop(0) if self.user_inputs else (False, "")
        return (ok, title, num_inputs, captions_csv, text if ok else retvals_csv, retvals_sz)

    def RPR_ShowMessageBox(self, msg: str, title: str, type_: int) -> int:
        self.messages.append((msg, title, type_))
        return 1

    def RPR_ShowConsoleMsg(self, msg: str) -> None:
        self.console.append(msg)

    def RPR_defer(self, code: str) -> None:
        if not isinstance(code, str):
            raise TypeError("RPR_defer takes a string of Python code")
        deferred = Deferred(code)
        deferred.owner = self._running
        self.deferred.append(deferred)

    def RPR_atexit(self, code: str) -> None:
        if not isinstance(code, str):
            raise TypeError("RPR_atexit takes a string of Python code")
        self.at_exit.append(code)

    def RPR_runloop(self, code: str) -> None:
        self.RPR_defer(code)

    def RPR_UpdateArrange(self) -> None:
        self.arrange_updates += 1

    def RPR_TrackList_AdjustWindows(self, is_minor: bool) -> None:
        pass

    # -------------------------------------------------------------------------------------------- the API: changes
    def RPR_Undo_BeginBlock(self) -> None:
        self.undo_depth += 1

    def RPR_Undo_EndBlock(self, desc: str, extraflags: int) -> None:
        if self.undo_depth <= 0:
            raise RuntimeError("Undo_EndBlock without Undo_BeginBlock")
        self.undo_depth -= 1
        if self.undo_depth == 0:
            self.undo_points.append(desc)

    def RPR_InsertTrackAtIndex(self, idx: int, want_defaults: bool) -> None:
        self.changes.append(f"insert track at {idx}")
        idx = max(0, min(int(idx), len(self.tracks)))
        self.tracks.insert(idx, Track(project=self.project))

    def RPR_AddMediaItemToTrack(self, track: str) -> str:
        self.changes.append("add item")
        item = Item(track=self._track(track))
        if self.new_item_fade:
            item.values.update(D_FADEINLEN=self.new_item_fade, D_FADEOUTLEN=self.new_item_fade)
        item.track.items.append(item)
        return item.ptr

    def RPR_AddTakeToMediaItem(self, item: str) -> str:
        self.changes.append("add take")
        target = self._item(item)
        take = Take(source=Source(type="EMPTY"))
        target.takes.append(take)
        return take.ptr

    def RPR_PCM_Source_CreateFromFile(self, filename: str) -> str:
        ext = os.path.splitext(filename)[1].lower()
        kind = {".wav": "WAVE", ".flac": "FLAC", ".mp3": "MP3", ".ogg": "VORBIS"}.get(ext, "WAVE")
        source = Source(type=kind, filename=filename, length=_audio_length(filename))
        self.sources_created.append(source)
        return source.ptr

    def RPR_PCM_Source_BuildPeaks(self, src: str, mode: int) -> int:
        """REAPER's three phases: 0 begins (0: nothing to build), 1 runs a step and returns the percentage left,
        2 finishes; the peaks exist only once a finish follows a run that reached 0."""
        try:
            source = self._source(src)
        except ValueError:
            return 0  # a source no take uses reaches REAPER as NULL
        if mode == 0:
            return 0 if source.peaks else 1
        if mode == 1:
            source.peaks_left = max(0, source.peaks_left - 40)
            return source.peaks_left
        if mode == 2:
            source.peaks = source.peaks or source.peaks_left == 0
            return 0
        raise ValueError(f"PCM_Source_BuildPeaks mode {mode}")

    def RPR_SetMediaItemTake_Source(self, take: str, source: str) -> bool:
        try:
            found = self._source(source)
        except ValueError:
            return False  # a source no take uses reaches REAPER as NULL: nothing changes
        self.changes.append("set take source")
        self._take(take).source = found
        return True

    def RPR_SetItemStateChunk(self, item: str, chunk: str, isundo: bool) -> bool:
        """Read: POSITION, LENGTH, LOOP, the take NAME and its SOURCE (as a saved project's, `from_rpp`); the chunk's
        take replaces the item's takes, as REAPER rebuilds an item from its chunk."""
        import rpp

        self.changes.append("set item chunk")
        target, element = self._item(item), rpp.loads(chunk)
        target.values["D_POSITION"] = float(_value(element, "POSITION", "0"))
        target.values["D_LENGTH"] = float(_value(element, "LENGTH", "0"))
        target.values["B_LOOPSRC"] = float(_value(element, "LOOP", "1"))
        source = element.find("SOURCE")
        project_dir = os.path.dirname(self.project_path)
        take_source = _rpp_source(source, project_dir) if source is not None else Source(type="EMPTY")
        target.takes, target.active = [Take(source=take_source, name=_value(element, "NAME", ""))], 0
        return True

    def RPR_SetMediaItemInfo_Value(self, item: str, parm: str, value: float) -> bool:
        self.changes.append(f"item {parm}")
        self._item(item).values[parm] = float(value)
        return True

    def RPR_SetMediaItemTakeInfo_Value(self, take: str, parm: str, value: float) -> bool:
        self.changes.append(f"take {parm}")
        self._take(take).values[parm] = float(value)
        return True

    def RPR_SetMediaTrackInfo_Value(self, track: str, parm: str, value: float) -> bool:
        self.changes.append(f"track {parm}")
        if parm == "I_SELECTED":
            self._track(track).selected = bool(value)
        else:
            self._track(track).values[parm] = float(value)
        return True

    def RPR_SetMediaItemSelected(self, item: str, selected: bool) -> None:
        self.changes.append("select item")
        self._item(item).values["B_UISEL"] = 1.0 if selected else 0.0


def _value(element, key: str, default: str) -> str:
    line = element.find(key)
    return line[1] if line is not None and len(line) > 1 else default


def _rpp_source(element, project_dir: str) -> Source:
    kind = element.attrib[0] if element.attrib else "EMPTY"
    if kind == "SECTION":
        parent = _rpp_source(element.find("SOURCE"), project_dir)
        start = float(_value(element, "STARTPOS", "0"))
        parent_length = parent.section_length if parent.type == "SECTION" else parent.length
        return Source(
            type="SECTION",
            parent=parent,
            section_offset=start,
            section_length=float(_value(element, "LENGTH", str(parent_length - start))),
            section_reversed=bool(int(_value(element, "MODE", "0")) & 2),
        )
    filename = _value(element, "FILE", "")
    on_disk = filename if os.path.isabs(filename) else os.path.join(project_dir, filename)
    if not filename:
        return Source(type=kind)
    return Source(type=kind, filename=filename, length=_audio_length(on_disk), channels=_audio_channels(on_disk))


def _audio_channels(filename: str) -> int:
    """Channels of an audio file, 0 when it cannot be read."""
    try:
        import soundfile

        return soundfile.info(filename).channels
    except Exception:
        return 0


def _audio_length(filename: str) -> float:
    """Seconds of an audio file, 0 when it cannot be read (REAPER then shows the source offline)."""
    try:
        import soundfile

        info = soundfile.info(filename)
        return info.frames / info.samplerate
    except Exception:
        return 0.0


class Harness:
    """A fake REAPER with the actions installed in a resource folder, run the way REAPER runs them.

    Installs the fake as the `reaper_python` module; close() undoes that and forgets the imported library.
    """

    def __init__(self, tmp: Path, port: int) -> None:
        from reaper_scripts import installer

        self._saved_path = list(sys.path)
        self.resource = tmp / "REAPER"
        (self.resource / "Scripts").mkdir(parents=True)
        (self.resource / "reaper.ini").write_text("[REAPER]\n")
        installer.install(self.resource, port=port)
        self.media = tmp / "project" / "Media"
        self.reaper = FakeReaper(str(self.resource), str(tmp / "project" / "song.rpp"), str(self.media))
        self.reaper.install()

    def load_project(self, rpp_path: str) -> FakeReaper:
        """Replace the session with the project a .rpp file describes."""
        self.reaper = FakeReaper.from_rpp(rpp_path, resource_path=str(self.resource), media_dir=str(self.media))
        self.reaper.install()
        return self.reaper

    def run(self, script: str) -> None:
        self.reaper.run_script(str(self.resource / "Scripts" / "imusic" / script))

    def settle(self, timeout: float = 60.0) -> None:
        """Run deferred rounds until no action defers any more (REAPER's timer ticks about 30 times a second)."""
        deadline = time.monotonic() + timeout
        while self.reaper.deferred:
            if time.monotonic() > deadline:
                raise AssertionError("the deferred loop never ended")
            self.reaper.run_deferred()
            time.sleep(0.02)

    def results(self) -> list[Path]:
        folder = self.media / "imusic"
        return sorted(folder.glob("*.wav")) if folder.exists() else []

    @property
    def library(self):
        return sys.modules.get("imusic_lib")

    def close(self) -> None:
        library = sys.modules.pop("imusic_lib", None)
        for session in getattr(library, "_SESSIONS", []):
            session.client.close()
        sys.modules.pop("reaper_python", None)
        sys.path[:] = self._saved_path
