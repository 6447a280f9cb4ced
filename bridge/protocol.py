"""The OSC protocol between clients (REAPER, `imusic send`, any OSC controller) and the engine server.

Addresses, argument order and types, reply shapes, error codes and limits live here, and only here; server and
client both import this module. No torch, no numpy: REAPER scripts import it.
README.md ("OSC protocol") documents the same.

Requests (client -> server), optional arguments in brackets:
    /imusic/edit          job_id input_path start_s end_s instruction [output_path] [seed] [takes] [mode]
    /imusic/cancel        job_id
    /imusic/status        [job_id]
    /imusic/ping
    /imusic/preview       job_id [source|result]
    /imusic/stop_preview
Replies (server -> the address and port the request came from):
    /imusic/accepted      job_id queue_position
    /imusic/progress      job_id fraction stage
    /imusic/done          job_id output_path info_json
    /imusic/error         job_id code message            (job_id "" when the request had none)
    /imusic/state         job_id state fraction detail   (answer to status job_id and to cancel)
    /imusic/server_status state queued running_job_id version model
    /imusic/pong          version model device state notes stems weights
    /imusic/previewing    job_id which duration_s
    /imusic/preview_stopped
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from engine.errors import ConfigError, ImusicError
from engine.files import check_text_path, shown_path
from engine.instructions import MAX_INSTRUCTION, MAX_SEED, MAX_TAKES  # noqa: F401 (the wire's limits are the Editor's)

DEFAULT_HOST = "127.0.0.1"
# An unassigned port far from the 8000/9000 that REAPER's own OSC surfaces tend to use.
DEFAULT_PORT = 9137


# The settings the REAPER installer writes beside the actions (host, port, max_seconds, mode, and the import paths).
SETTINGS_FILE = "imusic_paths.json"


def setting_variable(name: str) -> str:
    """The environment variable that sets a client's setting `name`: IMUSIC_<NAME>."""
    return "IMUSIC_" + name.upper()


def where_set(name: str) -> str:
    """How a producer sets `name`, for messages: "IMUSIC_PORT, or port in imusic_paths.json"."""
    return f"{setting_variable(name)}, or {name} in {SETTINGS_FILE}"


def setting(name: str, settings: dict | None, default: Any) -> Any:
    """A client's setting: its environment variable, then `settings` (SETTINGS_FILE's contents), then `default`. An
    empty value counts as unset. Every client setting is read here; each caller checks the value it gets."""
    return os.environ.get(setting_variable(name)) or (settings or {}).get(name) or default


def engine_host(settings: dict | None = None) -> str:
    """Where clients find the engine: IMUSIC_HOST, then `settings` (the REAPER installer's "host"), then DEFAULT_HOST.
    Every client reads it here (the server listens where its --host says)."""
    return str(setting("host", settings, DEFAULT_HOST))


def host_argument(text: str) -> str:
    """argparse type of a host name or address to reach the engine at (not looked up: the machine may be off now):
    letters, digits and . - _ : (IPv6), 1 to 253 of them."""
    if not re.fullmatch(r"[A-Za-z0-9._:-]{1,253}", text):
        raise argparse.ArgumentTypeError(f"must be a host name or address (letters, digits and . - _ :), got {text!r}")
    return text


def port_number(value: Any, where: str, listen: bool = False) -> int:
    """`value` as a UDP port (1-65535; 0 too for a server to `listen` on: any free port), else ConfigError naming
    `where` it came from."""
    lowest = 0 if listen else 1
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = -1
    if not lowest <= port <= 65535 or isinstance(value, float) and value != port:
        raise ConfigError(f"{where} must be a port number from {lowest} to 65535, got {value!r}")
    return port


def port_argument(text: str) -> int:
    """argparse type of a client's --port: its error is argparse's one usage line."""
    try:
        return port_number(text, "the port")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def listen_port_argument(text: str) -> int:
    """argparse type of a server's --port (0: any free port)."""
    try:
        return port_number(text, "the port", listen=True)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def engine_port(settings: dict | None = None) -> int:
    """The engine's port for clients: IMUSIC_PORT, then `settings` ("port"), then DEFAULT_PORT; ConfigError for a
    value that is no port."""
    source = setting_variable("port") if settings is None else where_set("port")  # only REAPER has the file
    return port_number(setting("port", settings, DEFAULT_PORT), f"the engine's port ({source})")


def engine_address(settings: dict | None = None) -> tuple[str, int]:
    """(engine_host, engine_port)."""
    return engine_host(settings), engine_port(settings)


PREFIX = "/imusic"
# requests
EDIT = PREFIX + "/edit"
CANCEL = PREFIX + "/cancel"
STATUS = PREFIX + "/status"
PING = PREFIX + "/ping"
PREVIEW = PREFIX + "/preview"
STOP_PREVIEW = PREFIX + "/stop_preview"
# replies
ACCEPTED = PREFIX + "/accepted"
PROGRESS = PREFIX + "/progress"
DONE = PREFIX + "/done"
ERROR = PREFIX + "/error"
STATE = PREFIX + "/state"
SERVER_STATUS = PREFIX + "/server_status"
PONG = PREFIX + "/pong"
PREVIEWING = PREFIX + "/previewing"
PREVIEW_STOPPED = PREFIX + "/preview_stopped"

# job states, as reported by /imusic/state
QUEUED, RUNNING, CANCELLING, DONE_STATE, ERROR_STATE, CANCELLED, UNKNOWN = (
    "queued",
    "running",
    "cancelling",
    "done",
    "error",
    "cancelled",
    "unknown",
)
FINAL_STATES = (DONE_STATE, ERROR_STATE, CANCELLED)
# The /imusic/state detail of an edit whose input is still being probed: queued in words, but not accepted yet (not in
# the server's book, so not resumed after a crash); a requester keeps resending it, and shows this while it waits.
CHECKING = "checking the input"
# server states, as reported by /imusic/pong and /imusic/server_status
LOADING, WARMING, READY, STOPPING = "loading", "warming", "ready", "stopping"

# Error codes on the wire: engine.errors codes (bad_audio, bad_instruction, bad_checkpoint, bad_config, cancelled,
# resources) plus these.
BAD_REQUEST = "bad_request"  # malformed packet, wrong types, missing or extra arguments, values out of range
UNKNOWN_ADDRESS = "unknown_address"
UNKNOWN_JOB = "unknown_job"
FORBIDDEN_PATH = "forbidden_path"  # outside the allowed roots, or not resolvable safely
JOB_CONFLICT = "job_conflict"  # a job id reused for a different request
QUEUE_FULL = "queue_full"
NOT_FINISHED = "not_finished"  # preview of a job that has no result yet
UNAVAILABLE = "unavailable"  # the server is stopping (a preview without an output device is no_playback)
INTERNAL = "internal"  # a bug: the server logged a traceback and keeps serving
NO_REPLY = "no_reply"  # never on the wire: a client's code for a server that did not answer

# Limits: a UDP datagram holds at most 65507 bytes; anything near that is hostile, not a producer's request.
MAX_PACKET = 65507
MAX_JOB_ID = 128
MAX_PATH = 4096
MAX_MODE = 16
MAX_MESSAGE = 1000  # error messages are cut to this many characters so that a reply always fits a datagram
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
MAX_REGION_S = 3600.0  # one hour: a longer region is almost certainly a mistake (samples sent as seconds)
MAX_QUEUE = 64  # jobs waiting, by default (imusic serve --max-queue)
PREVIEW_WHICH = ("result", "source")  # what /imusic/preview plays of a job, the default first


def is_job_id(text: str) -> bool:
    """Whether `text` is a usable job id: 1 to MAX_JOB_ID letters, digits and . _ : -, starting with a letter or
    digit (the empty id of a status request for the whole server is checked apart)."""
    return 0 < len(text) <= MAX_JOB_ID and bool(JOB_ID_PATTERN.match(text))


# A region's end that means "to the end of the file" (any negative end does, on the wire and in every reader).
TO_END = -1.0
# The seed that means "draw one" on the wire (any negative seed does; None in Python)
DRAW_SEED = -1


class RequestError(ImusicError):
    """A request that cannot be served as sent; `code` is one of the wire error codes above."""

    code = BAD_REQUEST

    def __init__(self, message: str, code: str = BAD_REQUEST, job_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.job_id = job_id


def check_job_id(text: str, where: str = "the job id", error: type[Exception] = RequestError) -> str:
    """`text` when it is_job_id, else `error` (RequestError: a bad request) naming `where` it came from, in the one
    wording of the rule: the server's for a request, a client's for its caller's id (ConfigError there)."""
    if not is_job_id(text):
        got = _short(text) if len(text) <= MAX_JOB_ID else f"{len(text)} characters"
        rule = f"1 to {MAX_JOB_ID} letters, digits and . _ : -, starting with a letter or digit"
        raise error(f"{where} must be {rule}; got {got}")
    return text


# ----------------------------------------------------------------------------------------------- encoding / decoding


def encode(address: str, *args: Any) -> bytes:
    """One OSC message as a datagram: str s, int i, float d (doubles keep sample positions), bool, bytes b, None N.
    A string holding a file name's bytes that are not UTF-8 (a resolved link's target, a root) goes with them as
    \\xNN (engine.files.shown_path): OSC strings are UTF-8, and a reply must never fail to be built."""
    from pythonosc.osc_message_builder import OscMessageBuilder

    builder = OscMessageBuilder(address=address)
    for value in args:
        if isinstance(value, bool):
            builder.add_arg(value)
        elif isinstance(value, int):
            builder.add_arg(value, OscMessageBuilder.ARG_TYPE_INT)
        elif isinstance(value, float):
            builder.add_arg(value, OscMessageBuilder.ARG_TYPE_DOUBLE)
        elif isinstance(value, str):  # a NUL would end the string early: it goes as \x00, as other bytes do
            builder.add_arg(shown_path(value).replace("\x00", "\\x00"), OscMessageBuilder.ARG_TYPE_STRING)
        elif isinstance(value, bytes):
            builder.add_arg(value, OscMessageBuilder.ARG_TYPE_BLOB)
        elif value is None:
            builder.add_arg(None, OscMessageBuilder.ARG_TYPE_NIL)
        else:
            raise TypeError(f"cannot send {type(value).__name__} over OSC: {value!r}")
    return builder.build().dgram


def send_datagram(sock: Any, datagram: bytes, to: tuple[str, int]) -> None:
    """sendto, past the reset Windows may report on a send for an earlier datagram that reached a closed port (a
    requester or engine gone): that datagram was not sent, so it is sent again; a second error is this send's own."""
    try:
        sock.sendto(datagram, to)
    except (ConnectionResetError, ConnectionRefusedError):
        sock.sendto(datagram, to)


BUNDLE_HEAD = b"#bundle\0"
MAX_BUNDLE_DEPTH = 8  # bundles inside bundles: a deeper one is refused (python-osc's own parse recurses without end)
# messages in one datagram: each is answered, so 5000 tiny ones in a bundle drew 1 MB of errors (15x the datagram) at
# a server listening on the network; no front end sends more than a handful at once
MAX_BUNDLE_MESSAGES = 32
# The argument types python-osc reads; it skips any other tag without reading its bytes, and so misreads what follows.
KNOWN_TYPE_TAGS = frozenset("ifdsbhtrmTFN[]")


def decode(datagram: bytes) -> list[tuple[str, list[Any]]]:
    """Messages of one datagram (a message or a bundle, time tags ignored) as (address, args); RequestError if it does
    not parse, holds no message, or uses an argument type this server cannot read."""
    from pythonosc.osc_message import OscMessage, ParseError
    from pythonosc.parsing import osc_types

    messages = []
    try:
        for element in _message_elements(datagram):
            address, index = osc_types.get_string(element, 0)
            if index < len(element):
                tags, _ = osc_types.get_string(element, index)
                unknown = sorted(set(tags[1:]) - KNOWN_TYPE_TAGS) if tags.startswith(",") else []
                if unknown:
                    raise RequestError(
                        f"{_short(address)}: OSC argument type {', '.join(repr(t) for t in unknown)} is not one this "
                        "server reads (send s, i, f, d, T, F or N)"
                    )
            message = OscMessage(element)
            messages.append((message.address, list(message.params)))
    except (ParseError, osc_types.ParseError, ValueError, IndexError, UnicodeDecodeError, OverflowError) as exc:
        reason = exc.args[-1] if exc.args else exc  # python-osc's parse errors carry (context, the cause)
        raise RequestError(f"not an OSC packet ({len(datagram)} bytes): {reason}") from None
    if not messages:
        raise RequestError(f"an OSC bundle with no message in it ({len(datagram)} bytes)")
    return messages


def _message_elements(datagram: bytes) -> list[bytes]:
    """The messages of a datagram in order, bundles opened without recursion (at most MAX_BUNDLE_DEPTH deep), every
    element's size checked first: python-osc's own bundle parse recurses without limit and loops for ever on a negative
    element size, and the receiving thread must never hang or die of a datagram."""
    found: list[bytes] = []
    listed = 0  # elements of every bundle, nested ones included
    stack = [(datagram, 0)]
    while stack:
        data, depth = stack.pop()
        if not data.startswith(BUNDLE_HEAD):
            found.append(data)
            continue
        if depth >= MAX_BUNDLE_DEPTH:
            raise RequestError(f"OSC bundles nested more than {MAX_BUNDLE_DEPTH} deep")
        if len(data) < len(BUNDLE_HEAD) + 8:
            raise RequestError(f"an OSC bundle of {len(data)} bytes, shorter than its header")
        elements, at = [], len(BUNDLE_HEAD) + 8  # after the time tag
        while at < len(data):
            size = int.from_bytes(data[at : at + 4], "big", signed=True) if at + 4 <= len(data) else -1
            if size <= 0 or size % 4 or at + 4 + size > len(data):
                raise RequestError(f"an OSC bundle element at byte {at} has a bad size ({size}; {len(data)} in all)")
            elements.append(data[at + 4 : at + 4 + size])
            at += 4 + size
            listed += 1
            if listed > MAX_BUNDLE_MESSAGES:
                raise RequestError(f"an OSC bundle of more than {MAX_BUNDLE_MESSAGES} elements; send fewer at once")
        stack.extend((element, depth + 1) for element in reversed(elements))
    return found


# ------------------------------------------------------------------------------------------------ request validation


@dataclass(frozen=True)
class Arg:
    """One positional argument of a request: name, kind ('str', 'float', 'int', 'job_id'), default if optional."""

    name: str
    kind: str
    optional: bool = False
    default: Any = None
    max_len: int = MAX_PATH
    empty: bool = True  # job_id: "" stands for something (edit: the server's own id; status: the server's status)


REQUESTS: dict[str, tuple[Arg, ...]] = {
    EDIT: (
        Arg("job_id", "job_id"),
        Arg("input_path", "str"),
        Arg("start_s", "float"),
        Arg("end_s", "float"),
        Arg("instruction", "str", max_len=MAX_INSTRUCTION),
        Arg("output_path", "str", optional=True, default=""),
        Arg("seed", "int", optional=True, default=DRAW_SEED),
        Arg("takes", "int", optional=True, default=1),
        Arg("mode", "str", optional=True, default="", max_len=MAX_MODE),
    ),
    CANCEL: (Arg("job_id", "job_id", empty=False),),
    STATUS: (Arg("job_id", "job_id", optional=True, default=""),),
    PING: (),
    PREVIEW: (
        Arg("job_id", "job_id", empty=False),
        Arg("which", "str", optional=True, default=PREVIEW_WHICH[0], max_len=16),
    ),
    STOP_PREVIEW: (),
}


@dataclass(frozen=True)
class EditOptions:
    """The choices of one edit besides its audio and instruction: Editor.edit's keyword arguments, as every command,
    batch backend and the server's worker pass them (`mode` "" or None: the operation's default). The wire carries
    all but `raw` (EditRequest.options): the server always matches levels."""

    seed: int | None = None
    takes: int = 1
    raw: bool = False
    mode: str | None = None

    @classmethod
    def from_args(cls, args: Any) -> EditOptions:
        """From the options bridge.cli.add_edit_options() added (a command without --raw never skips levelling)."""
        return cls(args.seed, args.takes, bool(getattr(args, "raw", False)), args.mode or None)

    def kwargs(self) -> dict:
        """For Editor.edit(audio, rate, instruction, **kwargs)."""
        return asdict(self)


@dataclass(frozen=True)
class EditRequest:
    """One edit as the wire carries it (/imusic/edit): the one shape of an edit request everywhere.

    The REAPER actions, the client, the server, its journal and batch all hold this; two requests are the same job
    exactly when they are equal (`same_edit`: the times at float32 precision). `seed` None draws one; `output_path`
    "" lets the server choose; `mode` "" is the operation's default (engine.modes names the modes and where each
    applies).
    """

    job_id: str
    input_path: str
    start_s: float
    end_s: float  # < 0 (TO_END): to the end of the file
    instruction: str
    output_path: str = ""
    seed: int | None = None
    takes: int = 1
    mode: str = ""

    def same_edit(self, other: EditRequest) -> bool:
        """True if `other` asks for this very edit (a resend): equal, the region's times compared at the precision of
        an OSC float32 ('f'), as a client may send one where an earlier send of the same edit had a double ('d')."""

        def f32(value: float) -> float:
            return struct.unpack(">f", struct.pack(">f", value))[0] if abs(value) < 3e38 else value

        def same_time(a: float, b: float) -> bool:  # one side sent as float32: the other, rounded so, is it
            return a == b or (f32(a) == a and f32(b) == a) or (f32(b) == b and f32(a) == b)

        same_times = same_time(self.start_s, other.start_s) and same_time(self.end_s, other.end_s)
        return same_times and replace(self, start_s=0.0, end_s=0.0) == replace(other, start_s=0.0, end_s=0.0)

    def options(self) -> EditOptions:
        """The edit's choices, as Editor.edit takes them."""
        return EditOptions(self.seed, self.takes, mode=self.mode or None)

    def to_args(self) -> tuple[Any, ...]:
        """The /imusic/edit arguments, in wire order."""
        seed = DRAW_SEED if self.seed is None else int(self.seed)
        return (
            self.job_id,
            self.input_path,
            float(self.start_s),
            float(self.end_s),
            self.instruction,
            self.output_path,
            seed,
            int(self.takes),
            self.mode,
        )

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> EditRequest:
        """From parse_request(EDIT, ...)'s values (or a journal record of them)."""
        seed = values.get("seed", DRAW_SEED)
        return cls(
            job_id=str(values["job_id"]),
            input_path=str(values["input_path"]),
            start_s=float(values["start_s"]),
            end_s=float(values["end_s"]),
            instruction=str(values["instruction"]),
            output_path=str(values.get("output_path") or ""),
            seed=None if seed is None or int(seed) < 0 else int(seed),
            takes=int(values.get("takes", 1)),
            mode=str(values.get("mode") or ""),
        )

    def values(self) -> dict[str, Any]:
        """By wire name, as parse_request returns them (seed -1 for "draw one")."""
        return {spec.name: value for spec, value in zip(REQUESTS[EDIT], self.to_args(), strict=True)}


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, "..." marking the cut (messages, log lines, echoed values)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any, limit: int = 60) -> str:
    return shorten(repr(value), limit)


def _convert(address: str, index: int, spec: Arg, value: Any) -> Any:
    where = f"{address}: argument {index + 1} ({spec.name})"
    if spec.kind == "float":
        # OSC controllers send 32-bit floats or ints; both are fine. Booleans are not numbers here.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(f"{where} must be a number, got {_short(value)}")
        number = float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise RequestError(f"{where} must be a finite number, got {value}")
        return number
    if spec.kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(f"{where} must be an integer, got {_short(value)}")
        if not -(2**31) <= value < 2**31:
            raise RequestError(f"{where} must fit OSC's 32-bit integer, got {value}")
        return value
    if spec.kind == "job_id":
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # simple controllers number their jobs
        if not isinstance(value, str):
            raise RequestError(f"{where} must be a string, got {_short(value)}")
        if not value and not spec.empty:
            raise RequestError(f"{where} is empty: name the job")
        return check_job_id(value, where) if value else value  # "": the server's own id (edit), the server (status)
    # str
    if not isinstance(value, str):
        raise RequestError(f"{where} must be a string, got {_short(value)}")
    if len(value) > spec.max_len:
        raise RequestError(f"{where} is {len(value)} characters long; the limit is {spec.max_len}")
    if "\x00" in value:  # an OSC string ends at its first NUL: the rest would be read as the next arguments
        raise RequestError(f"{where} holds a NUL character, which an OSC string cannot carry: {_short(value)}")
    check_text_path(value, where, RequestError)  # OSC strings are UTF-8: a file name of other bytes cannot travel
    return value


def parse_request(address: str, args: list[Any]) -> dict[str, Any]:
    """Check a request's arguments against REQUESTS; returns them by name with defaults filled in.

    Raises RequestError (unknown_address or bad_request) with a message naming the argument at fault.
    """
    specs = REQUESTS.get(address)
    if specs is None:
        known = ", ".join(sorted(REQUESTS))
        raise RequestError(f"unknown address {_short(address)}; this server answers {known}", code=UNKNOWN_ADDRESS)
    required = sum(not spec.optional for spec in specs)
    if not required <= len(args) <= len(specs):
        names = " ".join(spec.name if not spec.optional else f"[{spec.name}]" for spec in specs)
        raise RequestError(f"{address} takes {names or 'no arguments'}; got {len(args)} argument(s)")
    values = {
        spec.name: _convert(address, i, spec, value) for i, (spec, value) in enumerate(zip(specs, args, strict=False))
    }
    for spec in specs[len(args) :]:
        values[spec.name] = spec.default
    return values


def request_job_id(address: str, args: list[Any]) -> str:
    """The job id of a request if its first argument looks like one, else "" (for error replies)."""
    specs = REQUESTS.get(address, ())
    if (
        specs
        and specs[0].kind == "job_id"
        and args
        and isinstance(args[0], (str, int))
        and not isinstance(args[0], bool)
    ):
        job_id = str(args[0])
        if is_job_id(job_id):
            return job_id
    return ""


def server_stopping(job_id: str = "") -> RequestError:
    """The refusal of anything sent while the server stops: nothing is lost, the request can come again."""
    return RequestError("the server is stopping; send it again once the server is back", UNAVAILABLE, job_id)


def unknown_job(job_id: str) -> RequestError:
    """The answer about a job id this server has never seen (or has forgotten): the error of a cancel or preview of
    it, and (its message) the detail of its /imusic/state `unknown`."""
    return RequestError(f"no job with id {job_id}", UNKNOWN_JOB, job_id)


def job_conflict(job_id: str) -> RequestError:
    """The refusal of an edit whose job id was already used for another edit (while checked, queued or done)."""
    return RequestError(f"job id {job_id} was already used for a different edit; use a new id", JOB_CONFLICT, job_id)


def error_detail(code: str, message: str) -> str:
    """The /imusic/state detail of a job that ended in an error or was cancelled: "code: message"."""
    return f"{code}: {message}"


def detail_code(detail: str, default: str) -> str:
    """The code an error_detail() starts with (`default` for a detail without one)."""
    return detail.split(":", 1)[0] if ":" in detail else default


def clip_message(message: str) -> str:
    """An error message cut so that a reply always fits one datagram."""
    return shorten(message, MAX_MESSAGE)


def internal_error(exc: BaseException) -> str:
    """The wire's words for a bug of ours (code INTERNAL): what it was, and where the traceback is."""
    return clip_message(f"internal error ({type(exc).__name__}: {exc}); see the server log")


def new_job_id() -> str:
    """A fresh job id (random, 24 hex digits): resending the same id never runs a job twice."""
    return os.urandom(12).hex()


# ------------------------------------------------------------------------------------------------------------ replies

# The server's two answers about itself, by field in wire order: the builders below write them and Reply's accessors
# read them, so each field has its place here only.
PONG_FIELDS = ("version", "model", "device", "state", "notes", "stems", "weights")
SERVER_STATUS_FIELDS = ("state", "queued", "running_job_id", "version", "model")
_FIELDS = {PONG: PONG_FIELDS, SERVER_STATUS: SERVER_STATUS_FIELDS}


def _in_order(fields: tuple[str, ...], values: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(values[name] for name in fields)


def pong_args(
    version: str,
    model: str,
    device: str,
    state: str,
    notes: Iterable[str],
    stems: Iterable[str] = (),
    weights: str = "",
) -> tuple[Any, ...]:
    """/imusic/pong's arguments: `notes` (the model's own evaluation's shortfalls) and `stems` (the instruments the
    loaded model knows, what a client parses its edits with; none while it loads) travel one a line; `weights` is
    the loaded model's files' identity (engine.weights.loader.weights_identity; "" while it loads, or unknown)."""
    values = {"version": version, "model": model, "device": device, "state": state, "notes": "\n".join(notes)}
    return _in_order(PONG_FIELDS, {**values, "stems": "\n".join(stems), "weights": weights})


def server_status_args(state: str, queued: int, running_job_id: str, version: str, model: str) -> tuple[Any, ...]:
    """/imusic/server_status's arguments."""
    values = {"state": state, "queued": queued, "running_job_id": running_job_id, "version": version, "model": model}
    return _in_order(SERVER_STATUS_FIELDS, values)


@dataclass
class Reply:
    """One message from the server, with named accessors for the reply shapes above."""

    address: str
    args: list[Any] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """The last part of the address: accepted, progress, done, error, state, pong, ..."""
        return self.address.rsplit("/", 1)[-1]

    def _arg(self, index: int, default: Any = None) -> Any:
        return self.args[index] if len(self.args) > index else default

    @property
    def job_id(self) -> str:
        if self.address in (ACCEPTED, PROGRESS, DONE, ERROR, STATE, PREVIEWING):
            return str(self._arg(0, ""))
        return ""

    @property
    def fraction(self) -> float:
        if self.address == PROGRESS:
            return float(self._arg(1, 0.0))
        if self.address == STATE:
            return float(self._arg(2, 0.0))
        return 0.0

    @property
    def stage(self) -> str:
        return str(self._arg(2, "")) if self.address == PROGRESS else ""

    @property
    def state(self) -> str:
        """Job state for /state, server state for /pong and /server_status."""
        return str(self._arg(1, "") if self.address == STATE else self._field("state"))

    def _field(self, name: str, default: Any = "") -> Any:
        """The argument named `name` in this reply's _FIELDS, `default` when absent or for another reply."""
        fields = _FIELDS.get(self.address, ())
        return self._arg(fields.index(name), default) if name in fields else default

    @property
    def version(self) -> str:
        """The engine's version, in /pong and /server_status."""
        return str(self._field("version"))

    @property
    def model(self) -> str:
        """The loaded model's name, in /pong and /server_status."""
        return str(self._field("model"))

    @property
    def device(self) -> str:
        """Where the model runs, in /pong."""
        return str(self._field("device"))

    @property
    def queued(self) -> int:
        """Jobs waiting, in /server_status."""
        return int(self._field("queued", 0))

    @property
    def running_job_id(self) -> str:
        """The job the worker runs ("" when idle), in /server_status."""
        return str(self._field("running_job_id"))

    @property
    def notes(self) -> list[str]:
        """/pong's notes on the loaded model (its own evaluation's shortfalls), one a line; [] for other replies."""
        return [line for line in str(self._field("notes")).split("\n") if line]

    @property
    def weights(self) -> str:
        """/pong's identity of the loaded model's files; "" while it loads (or from an older server)."""
        return str(self._field("weights"))

    @property
    def stems(self) -> list[str]:
        """/pong's instruments of the loaded model; [] while it loads (or from an older server)."""
        return [line for line in str(self._field("stems")).split("\n") if line]

    @property
    def output_path(self) -> str:
        if self.address == DONE:
            return str(self._arg(1, ""))
        if self.address == STATE and self.state == DONE_STATE:
            return str(self._arg(3, ""))
        return ""

    @property
    def info(self) -> dict[str, Any]:
        """The result metadata of /done (EditResult.info plus the server's timings), {} if absent or unreadable."""
        if self.address != DONE:
            return {}
        try:
            value = json.loads(self._arg(2, "") or "{}")
        except (TypeError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def code(self) -> str:
        return str(self._arg(1, "")) if self.address == ERROR else ""

    @property
    def message(self) -> str:
        if self.address == ERROR:
            return str(self._arg(2, ""))
        if self.address == STATE:
            return str(self._arg(3, ""))
        return ""
