"""What the REAPER actions read from REAPER and write into it: the selected items as plain values, the project's
folders and tabs, and the result tracks. Functions of REAPER's API module `R` (reaper_python, a fake one in tests);
the decisions are reaper_scripts.planning's, the actions' state imusic_lib's.
"""

from __future__ import annotations

import os
import time
from typing import Any

from reaper_scripts import planning


def is_null(pointer) -> bool:
    """REAPER gives null objects as '(Type*)0x0000000000000000'."""
    if not pointer:
        return True
    try:
        return int(str(pointer).rsplit("0x", 1)[-1].rstrip(")"), 16) == 0
    except ValueError:
        return False


def project_folder(R) -> str:
    project_file = R.RPR_EnumProjects(-1, "", 4096)[2]
    return os.path.dirname(project_file) if project_file else ""


def media_dir(R) -> str:
    """The project's recording folder (REAPER's default folder when the project is unsaved)."""
    folder = R.RPR_GetProjectPath("", 4096)[0]
    if folder and os.path.isabs(folder):
        return folder
    # REAPER reports a folder relative to the project file when the recording path is set that way.
    project_dir = project_folder(R)
    if project_dir:
        return os.path.join(project_dir, folder)
    # An unsaved project with a relative recording path: REAPER's own default media folder (Documents/REAPER
    # Media), not the system's temporary one (the project refers to its results: a reboot must not take them)
    return os.path.join(os.path.expanduser("~"), "Documents", "REAPER Media", folder)


def read_item(R: Any, item: str, project_dir: str) -> planning.ItemView:
    """An item and its active take as plain values (a SECTION source is followed to its file)."""
    track = R.RPR_GetMediaItem_Track(item)
    position = R.RPR_GetMediaItemInfo_Value(item, "D_POSITION")
    geometry = {
        "position": position,
        "length": R.RPR_GetMediaItemInfo_Value(item, "D_LENGTH"),
        "track_number": int(R.RPR_GetMediaTrackInfo_Value(track, "IP_TRACKNUMBER")),
        "track_name": R.RPR_GetSetMediaTrackInfo_String(track, "P_NAME", "", False)[3],
        # as the ruler shows it (its mode, the project's start offset), so a message names the place the user sees
        "position_text": R.RPR_format_timestr_pos(position, "", 64, -1)[1],
        "item_volume": R.RPR_GetMediaItemInfo_Value(item, "D_VOL"),
        "timebase": int(R.RPR_GetMediaItemInfo_Value(item, "C_BEATATTACHMODE")),
        "track_timebase": int(R.RPR_GetMediaTrackInfo_Value(track, "C_BEATATTACHMODE")),
    }
    take = R.RPR_GetActiveTake(item)
    if is_null(take):
        return planning.ItemView(has_take=False, source_type="EMPTY", **geometry)
    values = {
        "take_name": R.RPR_GetSetMediaItemTakeInfo_String(take, "P_NAME", "", False)[3],
        "take_volume": R.RPR_GetMediaItemTakeInfo_Value(take, "D_VOL"),
        "is_midi": bool(R.RPR_TakeIsMIDI(take)),
        "start_offset": R.RPR_GetMediaItemTakeInfo_Value(take, "D_STARTOFFS"),
        "playrate": R.RPR_GetMediaItemTakeInfo_Value(take, "D_PLAYRATE"),
        "pitch": R.RPR_GetMediaItemTakeInfo_Value(take, "D_PITCH"),
        "preserve_pitch": bool(R.RPR_GetMediaItemTakeInfo_Value(take, "B_PPITCH")),
        "channel_mode": int(R.RPR_GetMediaItemTakeInfo_Value(take, "I_CHANMODE")),
        "stretch_markers": int(R.RPR_GetTakeNumStretchMarkers(take)),
        "pitch_envelope": _has_points(R, R.RPR_GetTakeEnvelopeByName(take, "Pitch")),
        "plays_all_takes": bool(R.RPR_GetMediaItemInfo_Value(item, "B_ALLTAKESPLAY")) and R.RPR_CountTakes(item) > 1,
        "fade_in": _fade(R, item, "IN"),
        "fade_out": _fade(R, item, "OUT"),
    }
    source = R.RPR_GetMediaItemTake_Source(take)
    if is_null(source):
        return planning.ItemView(source_type="EMPTY", **geometry, **values)
    kind = R.RPR_GetMediaSourceType(source, "", 64)[1]
    section = None
    if kind == "SECTION":
        layers = []  # sections can nest: outermost first
        while kind == "SECTION":
            _, _, section_offset, section_length, reverse = R.RPR_PCM_Source_GetSectionInfo(source, 0.0, 0.0, False)
            layers.append((section_offset, section_length, reverse))
            source = R.RPR_GetMediaSourceParent(source)
            if is_null(source):
                return planning.ItemView(source_type="EMPTY", **geometry, **values)
            kind = R.RPR_GetMediaSourceType(source, "", 64)[1]
        section = planning.nested_section(layers)
    filename = R.RPR_GetMediaSourceFileName(source, "", 4096)[1]
    source_length = R.RPR_GetMediaSourceLength(source, False)[0]
    view = planning.ItemView(
        source_channels=int(R.RPR_GetMediaSourceNumChannels(source)),
        source_type="SECTION" if section else kind,
        parent_type=kind if section else "",
        source_path=planning.resolve_source_path(filename, project_dir),
        source_length=source_length,
        **geometry,
        **values,
    )
    if section:
        from dataclasses import replace

        view = replace(view, section_offset=section[0], section_length=section[1], reversed=section[2])
    return view


# An item's fade parameters by edge: length, the auto-crossfade's length (-1 or 0 where none), shape, curvature.
_FADE_PARAMS = {edge: (f"D_FADE{edge}LEN", f"D_FADE{edge}LEN_AUTO", f"C_FADE{edge}SHAPE", f"D_FADE{edge}DIR")
                for edge in ("IN", "OUT")}  # fmt: skip


def _fade(R: Any, item: str, edge: str) -> planning.Fade:
    """The fade the producer hears at an edge of the item ("IN" or "OUT"): the auto-crossfade's where it has one."""
    length, auto, shape, curve = (R.RPR_GetMediaItemInfo_Value(item, name) for name in _FADE_PARAMS[edge])
    return planning.Fade(auto if auto > 0 else length, int(shape), curve)


def _set_fade(R: Any, item: str, edge: str, fade: planning.Fade) -> None:
    """The fade at an edge of a result item; none is set as none (length 0), over any default fade REAPER may give an
    item it makes."""
    length, _, shape, curve = _FADE_PARAMS[edge]
    R.RPR_SetMediaItemInfo_Value(item, length, max(fade.length, 0.0))
    if fade.length > 0:
        R.RPR_SetMediaItemInfo_Value(item, shape, fade.shape)
        R.RPR_SetMediaItemInfo_Value(item, curve, fade.curve)


def _has_points(R: Any, envelope: str) -> bool:
    return not is_null(envelope) and R.RPR_CountEnvelopePoints(envelope) > 0


def _heard(R: Any, track: str, item: str) -> bool:
    """Whether the item plays: not muted, and not on a lane that does not play (REAPER 7's fixed item lanes)."""
    if R.RPR_GetMediaItemInfo_Value(item, "B_MUTE"):
        return False
    lane_plays = R.RPR_GetMediaItemInfo_Value(item, "C_LANEPLAYS")
    return lane_plays != -1 and not (R.RPR_GetMediaTrackInfo_Value(track, "I_FREEMODE") == 2 and lane_plays == 0)


def read_selection(R: Any) -> tuple[list[tuple[str, planning.ItemView]], tuple[float, float] | None]:
    """Selected items, clipped to the time selection when there is one (as REAPER's "within time selection" item
    actions do); without any, the items heard under the time selection on selected tracks (clipped to it): muted
    items and lanes that do not play are left out there.

    Returns ([(track pointer, view)], clip range or None).
    """
    project_dir = project_folder(R)
    _, _, start, end, _ = R.RPR_GetSet_LoopTimeRange(False, False, 0.0, 0.0, False)
    clip = (start, end) if end - start > planning.EPSILON else None
    count = R.RPR_CountSelectedMediaItems(0)
    if count:
        items = [R.RPR_GetSelectedMediaItem(0, i) for i in range(count)]
        return [(R.RPR_GetMediaItem_Track(item), read_item(R, item, project_dir)) for item in items], clip
    if clip is None:
        return [], None
    found = []
    for t in range(R.RPR_CountSelectedTracks(0)):
        track = R.RPR_GetSelectedTrack(0, t)
        for i in range(R.RPR_CountTrackMediaItems(track)):
            item = R.RPR_GetTrackMediaItem(track, i)
            position = R.RPR_GetMediaItemInfo_Value(item, "D_POSITION")
            length = R.RPR_GetMediaItemInfo_Value(item, "D_LENGTH")
            if planning.clip_to_range(position, length, start, end) is not None and _heard(R, track, item):
                found.append((track, read_item(R, item, project_dir)))
    return found, (start, end)


def active_project(R) -> str:
    return str(R.RPR_EnumProjects(-1, "", 4096)[0])


def project_file(R, project: str) -> str | None:
    """The file of the song open in that project's tab ("" while unsaved), None when no tab holds that project."""
    index = 0
    while not is_null((found := R.RPR_EnumProjects(index, "", 4096))[0]):
        if str(found[0]) == project:
            return str(found[2])
        index += 1
    return None


def track_guid(R, track: str) -> str:
    """The track's GUID: what names one track for good. A track pointer does not: once a track is deleted or its song
    closed, a new track (in another song) may be given the same address."""
    return str(R.RPR_GetSetMediaTrackInfo_String(track, "GUID", "", False)[3])


def find_track(R, project: Any, guid: str) -> str | None:
    """The track of that project with that GUID, or None."""
    for index in range(R.RPR_CountTracks(project)):
        track = R.RPR_GetTrack(project, index)
        if track_guid(R, track) == guid:
            return track
    return None


def same_song(R, project: str, song_file: str, tracks: list[str]) -> bool:
    """Whether that project's tab still holds the song an action started in: a tab keeps its project when another
    song is opened in it, or when File > Close project leaves an empty one. The same song has the same file, or
    (saved under a name meanwhile) still holds one of the action's source tracks (`tracks`: their GUIDs)."""
    now = project_file(R, project)
    if now is None:
        return False
    if now == song_file and song_file:  # an unsaved song's "" is also every new or closed tab's: tracks decide it
        return True
    return any(find_track(R, project, guid) is not None for guid in dict.fromkeys(tracks))


def insert_results(R: Any, instruction: str, jobs: list[Any]) -> None:
    """One new track per source track (`job.track`: its GUID), directly under it (above a folder's parent track),
    holding each result at its item's position."""
    label = planning.edit_label(instruction)
    groups: dict[str, list[Any]] = {}
    for job in jobs:
        groups.setdefault(job.track, []).append(job)
    R.RPR_Undo_BeginBlock()
    try:
        for guid, group in groups.items():
            track = find_track(R, 0, guid)
            number = int(R.RPR_GetMediaTrackInfo_Value(track, "IP_TRACKNUMBER")) if track is not None else None
            depth = R.RPR_GetMediaTrackInfo_Value(track, "I_FOLDERDEPTH") if track is not None else 0
            name_number = number if number is not None else group[0].plan.track_number
            name = planning.result_track_name(group[0].view.track_name, name_number, instruction)
            index = planning.result_insert_index(number, R.RPR_CountTracks(0), folder_parent=depth > 0)
            R.RPR_InsertTrackAtIndex(index, True)
            new_track = R.RPR_GetTrack(0, index)
            if number is not None and depth < 0:  # the source closes its folder: the result takes over, inside it
                R.RPR_SetMediaTrackInfo_Value(track, "I_FOLDERDEPTH", 0)
                R.RPR_SetMediaTrackInfo_Value(new_track, "I_FOLDERDEPTH", depth)
            R.RPR_GetSetMediaTrackInfo_String(new_track, "P_NAME", name, True)
            # the source track's timebase: a tempo change moves the result as it moves the source
            R.RPR_SetMediaTrackInfo_Value(new_track, "C_BEATATTACHMODE", group[0].view.track_timebase)
            for job in group:
                _add_result_item(R, new_track, job, label)
        R.RPR_TrackList_AdjustWindows(False)
        R.RPR_UpdateArrange()
    finally:
        R.RPR_Undo_EndBlock(planning.undo_description(instruction), -1)


# Steps of a peak build before giving up on it (each reads a part of the file; a result's build takes a few): a binding
# that never reports the end must not hang REAPER. The waveform then comes when the user builds missing peaks.
_PEAK_STEPS = 10_000


class PeakBuilds:
    """Waveforms of sources made by the API (REAPER builds none for them on its own), built in REAPER's three phases:
    begin (0: nothing to build), run until it returns 0 (the percentage left), finish (2). The API's documentation
    asks for the run to be called periodically: a step reads a part of the file on REAPER's UI thread, so `run`
    takes steps for at most a time budget per deferred round (an hour-long result, or several, read in one round
    froze REAPER). A build given up on after _PEAK_STEPS steps is not finished: finishing before the run reached 0 can
    leave broken peaks."""

    def __init__(self) -> None:
        self.pending: list[list] = []  # [source, its project, steps taken]

    def add(self, R, source: str) -> None:
        """A source just made in the active project: its build begins."""
        if R.RPR_PCM_Source_BuildPeaks(source, 0):
            self.pending.append([source, active_project(R), 0])

    def run(self, R, budget_s: float) -> None:
        """Steps of the pending builds of the active project, oldest first, until they end or `budget_s` is spent (one
        step at least). A build of a project in the background waits for its tab (the binding passes its source as
        NULL, which would end the build unfinished); one whose project was closed is dropped."""
        until = time.monotonic() + budget_s
        active = active_project(R)
        self.pending = [build for build in self.pending if build[1] == active or project_file(R, build[1]) is not None]
        ready = [build for build in self.pending if build[1] == active]
        while ready:
            build = ready[0]
            build[2] += 1
            finished = not R.RPR_PCM_Source_BuildPeaks(build[0], 1)
            if finished:
                R.RPR_PCM_Source_BuildPeaks(build[0], 2)
            if finished or build[2] >= _PEAK_STEPS:
                ready.pop(0)
                self.pending.remove(build)
            if time.monotonic() >= until:
                return


PEAKS = PeakBuilds()  # one REAPER, one Python: the builds of every action, stepped by the deferred loop


def _add_result_item(R, track: str, job: Any, label: str) -> None:
    item = R.RPR_AddMediaItemToTrack(track)
    chunk = planning.result_item_chunk(job.plan.position, job.plan.length, job.result_path)
    R.RPR_SetItemStateChunk(item, chunk, False)
    take = R.RPR_GetActiveTake(item)
    PEAKS.add(R, R.RPR_GetMediaItemTake_Source(take))  # the take's own source: one the binding lets through
    _set_fade(R, item, "IN", job.plan.fade_in)  # the source's fades where the result keeps its edges
    _set_fade(R, item, "OUT", job.plan.fade_out)
    # The result holds the source region's samples: same rate, no stretch, so it lines up with the source item.
    R.RPR_SetMediaItemTakeInfo_Value(take, "D_STARTOFFS", 0.0)
    R.RPR_SetMediaItemTakeInfo_Value(take, "D_PLAYRATE", 1.0)
    # and it plays as the source item does: its gain, its take's volume and polarity, its timebase (swapping the
    # source for its result keeps the level; a tempo change moves both alike)
    R.RPR_SetMediaItemInfo_Value(item, "D_VOL", job.view.item_volume)
    R.RPR_SetMediaItemTakeInfo_Value(take, "D_VOL", job.view.take_volume)
    R.RPR_SetMediaItemInfo_Value(item, "C_BEATATTACHMODE", job.view.timebase)
    take_name = f"{job.view.take_name}{planning.NAME_SEPARATOR}{label}" if job.view.take_name else label
    R.RPR_GetSetMediaItemTakeInfo_String(take, "P_NAME", take_name, True)
