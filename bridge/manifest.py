"""OUT/manifest.json of a batch: one record per (input, edit) pair, and the rule for "already done".

Each outcome is appended to OUT/manifest.json.journal (one JSON line, synced) as it is known, and the manifest is
rewritten whole every JOURNAL_FOLD of them and at the end: rewriting it after every pair made a batch's bookkeeping
grow with the square of its pairs (2000 pairs: 43 s of rewriting a 4.6 MB file 2000
times, now 0.6 s). Loading replays the
journal over the manifest; a line a kill tore is dropped, with everything after it (nothing after it was synced).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from stat import S_ISREG
from typing import Any

from bridge.sources import Pair
from engine.errors import DataError
from engine.files import hash_stream, jsonable, write_json_atomic

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "imusic-batch/1"
JOURNAL_SUFFIX = ".journal"
JOURNAL_FOLD = 256  # outcomes in the journal before the manifest is rewritten with them
# A pair's record's "status" (docs/BATCH.md): rendered; failed (retried only with --retry-failed under the same
# settings); its source refused before rendering; its source changed while it was rendered (rendered again next run)
DONE, FAILED, UNSUPPORTED, CHANGED = "done", "failed", "unsupported", "changed"


class Manifest:
    """OUT/manifest.json: one record per (input, edit) pair, keyed by Pair.key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = path.with_name(path.name + JOURNAL_SUFFIX)
        self._journalled = 0
        self.data: dict[str, Any] = {"format": MANIFEST_FORMAT, "pairs": {}}
        if path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise DataError(f"{path} is unreadable ({exc}); move it away to start this batch afresh") from None
            if not isinstance(loaded, dict) or loaded.get("format") != MANIFEST_FORMAT:
                raise DataError(f"{path} is not an imusic batch manifest; choose another output folder")
            pairs, claimed = loaded.get("pairs"), loaded.get("claimed", [])
            if not (isinstance(pairs, dict) and all(_entry_is_whole(entry) for entry in pairs.values())) or not (
                isinstance(claimed, list) and all(isinstance(name, str) for name in claimed)
            ):
                raise DataError(f"{path} is damaged (its pairs or claimed outputs); move it away to start afresh")
            if not isinstance(loaded.get("session", ""), str):
                raise DataError(f"{path} is damaged (its session); move it away to start afresh")
            self.data = loaded
        # the names claimed, as an ordered set (a list's membership tests made every record a scan of them all)
        self._claimed = dict.fromkeys(self.data.get("claimed", []))
        if self.journal.is_file():
            self._replay()

    def _replay(self) -> None:
        try:
            lines = self.journal.read_bytes().splitlines()
        except OSError as exc:
            raise DataError(f"{self.journal} is unreadable ({exc}); move it away to start afresh") from None
        for line in lines:
            try:
                change = json.loads(line)
            except ValueError:  # torn by a kill: nothing after it was synced
                break
            if not isinstance(change, dict) or ("key" in change and not _entry_is_whole(change.get("entry"))):
                break
            self._apply(change)

    def _apply(self, change: dict) -> None:
        if "key" in change:
            self.pairs[str(change["key"])] = change["entry"]
        for output in change.get("unclaim", []):
            self._claimed.pop(output, None)
        if change.get("jobs"):
            self.server_jobs.extend(change["jobs"])

    def _append(self, change: dict) -> None:
        """Apply a change and append it to the journal, synced; the manifest is rewritten every JOURNAL_FOLD."""
        self._apply(change)
        with open(self.journal, "ab") as journal:
            journal.write(json.dumps(change, ensure_ascii=True).encode() + b"\n")
            journal.flush()
            os.fsync(journal.fileno())
        self._journalled += 1
        if self._journalled >= JOURNAL_FOLD:
            self.save()

    @property
    def pairs(self) -> dict[str, dict]:
        return self.data["pairs"]

    @property
    def claimed(self) -> Any:
        """Outputs (relative to OUT) this batch is about to write: free when claimed, so whatever is found there
        after a cut (a result written before its record, or by a server that finished a job after Ctrl-C) is ours.
        A set-like view (`in` is quick)."""
        return self._claimed.keys()

    def claim(self, outputs: list[str]) -> None:
        self._claimed.update(dict.fromkeys(outputs))
        self.save()

    def set(self, key: str, entry: dict) -> None:
        """The pair's entry (not saved yet). An entry that is not `done` keeps the name of the result an earlier run
        wrote for the pair (`earlier_output`): that file stays the batch's to replace, when the pair is rendered again
        (--retry-failed, a source fixed), instead of passing for the user's."""
        previous = self.pairs.get(key) or {}
        earlier = previous.get("output") if previous.get("status") == DONE else previous.get("earlier_output")
        if entry.get("status") != DONE and earlier and "earlier_output" not in entry:
            entry = {**entry, "earlier_output": earlier}
        self.pairs[key] = jsonable(entry)

    def record(self, key: str, entry: dict, claimed: str | None = None) -> None:
        """The pair's outcome, journalled; its output name (`claimed`, when the result went elsewhere) is claimed no
        more."""
        self.set(key, entry)
        unclaim = sorted(o for o in {claimed or entry.get("output"), entry.get("output")} if o in self._claimed)
        self._append({"key": key, "entry": self.pairs[key], "unclaim": unclaim})

    def add_server_jobs(self, job_ids: list[str]) -> None:
        """Jobs a `--server` run just submitted (journalled: a cut run's next run ends them)."""
        self._append({"jobs": list(job_ids)})

    @property
    def server_jobs(self) -> list[str]:
        """Job ids a `--server` run submitted and has not seen end: a run cut by kill -9 leaves them queued or running
        on the server, and the next run ends them before it submits its own (bridge.batch_backends.ServerBackend)."""
        return self.data.setdefault("server_jobs", [])

    def save(self) -> None:
        """The manifest whole, with every journalled change (the journal then goes)."""
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.data["claimed"] = list(self._claimed)
        write_json_atomic(self.path, self.data)
        self.journal.unlink(missing_ok=True)
        self._journalled = 0


def file_sha256(path: Path, _cache: dict[tuple[str, int, int], str] = {}) -> str:  # noqa: B006 (per-process cache)
    """SHA-256 of a file, cached per (path, size, mtime) for the life of the process; OSError for anything but a
    regular file (opening a FIFO would block until a writer came)."""
    stat = path.stat()
    if not S_ISREG(stat.st_mode):
        raise OSError(f"{path} is not a regular file")
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        with open(path, "rb") as f:
            _cache[key] = hash_stream(hashlib.sha256(), f).hexdigest()
    return _cache[key]


# An entry's fields that name files in OUT: text where present (a damaged one stopped a rerun with a traceback)
OUTPUT_FIELDS = ("output", "earlier_output")


def out_name(path: Path, out: Path) -> str:
    """How the manifest names a file of the batch: relative to OUT, with forward slashes on every system (a name
    written with backslashes on Windows matched none of the run's claims)."""
    return os.path.relpath(path, out).replace(os.sep, "/")


def _entry_is_whole(entry: Any) -> bool:
    """Its fields that a rerun reads are of their kind: names text, settings an object (a damaged one stopped a rerun
    with a traceback)."""
    return (
        isinstance(entry, dict)
        and all(isinstance(entry.get(key, ""), str) for key in OUTPUT_FIELDS)
        and isinstance(entry.get("settings") or {}, dict)
    )


def _in_out(name: str) -> bool:
    """Whether a name the manifest records lies inside OUT (relative, no '..'): one pointing elsewhere (../x.wav, with
    that file's size) made the pair count as done after its real result was deleted."""
    return bool(name) and not os.path.isabs(name) and ".." not in Path(name.replace("\\", "/")).parts


def written_here(entry: dict | None, pair: Pair, out: Path, claimed: list[str] = ()) -> bool:
    """Whether the file at the pair's output is one this batch wrote (the manifest records the pair done there, or
    claimed the name while it was free and the file there has the shape of the pair's result): only such a file may
    be replaced. Any other file there is the user's and is never overwritten."""
    if entry and entry.get("status") == DONE and out / entry.get("output", "") == pair.output:
        return True  # its own result, though the claim below may stand too (a rerun cut while it rendered again)
    if entry and entry.get("earlier_output") and out / entry["earlier_output"] == pair.output:
        return True  # see Manifest.set
    if out_name(pair.output, out) in claimed:
        # A claim survives a cut (kill -9, Ctrl-C) that may come before the result is written: a file the user put
        # there since is theirs unless it has the exact shape this pair's result has.
        return _has_result_shape(pair)
    return False


def _has_result_shape(pair: Pair) -> bool:
    """Whether the file at the pair's output holds what its result holds: the source region's rate, channel count
    and length, to the sample (every result keeps them)."""
    from bridge.audio_read import probe, region_frames
    from engine.errors import ImusicError

    try:
        source, found = probe(pair.source.path), probe(pair.output)
        start, stop = region_frames(source, pair.source.start_s, pair.end_s)
    except (ImusicError, OSError):
        return False
    expected = (source.sample_rate, source.num_channels, stop - start)
    return (found.sample_rate, found.num_channels, found.frames) == expected


def is_done(entry: dict | None, pair: Pair, out: Path, settings: dict) -> bool:
    """A pair is done when the manifest says so AND its output file, its input and the settings all still match."""
    if not entry or entry.get("status") != DONE or not _in_out(entry.get("output", "")):
        return False
    output = out / entry["output"]
    try:
        if not output.is_file() or output.stat().st_size != entry.get("output_size"):
            return False
        if pair.source.path.stat().st_size != entry.get("input_size"):
            return False
        if file_sha256(pair.source.path) != entry.get("input_sha256"):
            return False
    except OSError:
        return False
    region = [pair.source.start_s, pair.source.end_s]
    return same_settings(entry.get("settings") or {}, settings) and entry.get("region") == region


# Settings that name the model: compared only where both sides know them (a dry run cannot always read a model's
# name without loading it; a result recorded before the weights were named has no "weights")
MODEL_SETTINGS = ("model", "weights")


def same_settings(recorded: dict, settings: dict) -> bool:
    """Whether a result recorded with `recorded` settings is what `settings` would render."""
    for key in MODEL_SETTINGS:
        if recorded.get(key) is not None and settings.get(key) is not None and recorded[key] != settings[key]:
            return False
    drop = set(MODEL_SETTINGS)
    return {k: v for k, v in recorded.items() if k not in drop} == {k: v for k, v in settings.items() if k not in drop}
