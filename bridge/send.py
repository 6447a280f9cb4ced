"""`imusic send ping|status|cancel|edit|preview|stop-preview`: talk to a running server from a terminal, through
bridge.client.Client. No torch."""

from __future__ import annotations

import argparse
import json
import os
import sys

from bridge import protocol, tracking
from bridge.cli import JobProgress, add_edit_options, add_region_options, report_edit, wait_option
from bridge.client import Client, RemoteError, local_bind_host
from bridge.protocol import Reply
from engine.errors import ConfigError
from engine.files import AUDIO_FORMATS


def _connection_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--host --port --timeout --json, with defaults or (defaults False) none at all. A host or port not given is
    read when the request runs (protocol.engine_host / engine_port), where a bad IMUSIC_PORT is one line."""
    suppress = not defaults
    parser.add_argument(
        "--host", type=protocol.host_argument, default=argparse.SUPPRESS if suppress else None, help="engine host"
    )
    parser.add_argument(
        "--port", type=protocol.port_argument, default=argparse.SUPPRESS if suppress else None, help="engine port"
    )
    parser.add_argument(
        "--timeout",
        type=wait_option,
        default=argparse.SUPPRESS if suppress else None,
        help=f"seconds to wait for an answer (default {tracking.ANSWER_WITHIN_S:g}; edit: no limit while the server "
        f"answers, {tracking.GIVE_UP_AFTER_S:g} s of silence end it)",
    )
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS if suppress else False, help="print replies as JSON"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`imusic send ping|status|cancel|edit|preview|stop-preview ...`"""
    _connection_options(parser, defaults=True)
    # The same options after the request (`imusic send ping --port 9200`): no default there, so an option given
    # before the request is not reset.
    after = argparse.ArgumentParser(add_help=False)
    _connection_options(after, defaults=False)
    sub = parser.add_subparsers(dest="request", metavar="REQUEST", parser_class=type(parser))
    sub.required = True
    sub.add_parser("ping", parents=[after], help="is the engine there? prints version, model, device, state")
    status = sub.add_parser("status", parents=[after], help="the server's state, or one job's")
    status.add_argument("job_id", nargs="?", default=None)
    cancel = sub.add_parser("cancel", parents=[after], help="cancel a queued or running job")
    cancel.add_argument("job_id")
    edit = sub.add_parser("edit", parents=[after], help="edit a region of an audio file on the engine")
    edit.add_argument("input", help=f"audio file ({AUDIO_FORMATS}) on the engine machine")
    edit.add_argument("instruction", help='e.g. "extract drums", "remove bass", "add piano"')
    add_region_options(edit)
    edit.add_argument("-o", "--output", default=None, help="result file or folder (default: results/ beside input)")
    add_edit_options(edit, raw=False)  # the server levels every result: no --raw over the wire
    edit.add_argument("--job-id", default=None, help="resending the same id never runs the job twice")
    edit.add_argument("--no-wait", action="store_true", help="print the job id once accepted and return")
    preview = sub.add_parser("preview", parents=[after], help="play a finished job on the engine machine's output")
    preview.add_argument("job_id")
    preview.add_argument("which", nargs="?", default=protocol.PREVIEW_WHICH[0], choices=protocol.PREVIEW_WHICH)
    sub.add_parser("stop-preview", parents=[after], help="stop the preview")


def _print_reply(reply: Reply, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"address": reply.address, "args": reply.args}))
        return
    pong = reply.address == protocol.PONG  # its notes: one line each, below
    args = [reply.version, reply.model, reply.device, reply.state] if pong else reply.args
    print(" ".join(str(a) for a in [reply.kind, *args]))
    for note in reply.notes:
        print(f"imusic send: note: {note}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run one `imusic send` request; 0 on success, 1 (via ImusicError) on an error reply or silence."""
    args.host = args.host or protocol.engine_host()
    args.port = args.port or protocol.engine_port()
    timeout = args.timeout
    short = tracking.ANSWER_WITHIN_S if timeout is None else timeout
    with Client(args.host, args.port) as client:
        if args.request == "ping":
            _print_reply(client.ping(short), args.json)
        elif args.request == "status":
            reply = client.status(args.job_id, short)
            _print_reply(reply, args.json)
            if args.job_id and reply.state == protocol.UNKNOWN:
                # no such job, said on stderr as `send cancel` says it (the state line stays on stdout for scripts)
                sys.stderr.write(f"imusic send: error: {reply.message}\n")
                return 1
        elif args.request == "cancel":
            _print_reply(client.cancel(args.job_id, short), args.json)
        elif args.request == "preview":
            _print_reply(client.preview(args.job_id, args.which, short), args.json)
        elif args.request == "stop-preview":
            _print_reply(client.stop_preview(short), args.json)
        elif args.request == "edit":
            return _run_edit(client, args, short)
    return 0


def _run_edit(client: Client, args: argparse.Namespace, short: float) -> int:
    if local_bind_host(args.host) == "127.0.0.1" and not os.path.exists(args.input):
        raise ConfigError(f"no such file: {args.input}")  # said here; a remote engine says it for its own disk
    job_id = client.submit(
        args.input, args.start, args.end, args.instruction, output_path=args.output, seed=args.seed, takes=args.takes,
        job_id=args.job_id, mode=args.mode,
    )  # fmt: skip
    bar = JobProgress()
    try:  # Ctrl-C cancels the job, whether or not the engine has taken it yet (it cancels an edit still checked too)
        (job,) = client.wait_accepted([job_id], short, max(short, tracking.ACCEPT_WITHIN_S))
        if job.code:
            raise RemoteError(job.error, job.code, job_id)
        if args.no_wait:
            print(job_id)
            return 0
        # a server that died or hangs is said in one line, as batch and the REAPER actions say it, not waited on forever
        result = client.wait(job_id, on_progress=bar, give_up_after=tracking.GIVE_UP_AFTER_S)  # --timeout: answers
    except KeyboardInterrupt:
        bar.close()
        client.send(protocol.CANCEL, job_id)
        sys.stderr.write(f"cancel sent for job {job_id}\n")
        return 130
    bar.close(done=True)  # 100 % once the result is in place
    if args.json:
        print(json.dumps({"job_id": job_id, "output_path": result.output_path, "info": result.info}))
        return 0
    print(result.output_path)
    from bridge.audio_write import names_folder  # numpy: not for the other requests' start
    from engine.files import result_file_path

    asked = client.tracker.jobs[job_id].request.output_path
    if asked and not names_folder(asked):
        wanted = result_file_path(asked)  # x -> x.wav, as the server names it
        if os.path.realpath(wanted) != os.path.realpath(result.output_path):
            # the server never writes over a file: a taken name gets -2, -3... (README, OSC); said, not hidden
            sys.stderr.write(f"imusic send: note: {wanted} was taken; the result went to {result.output_path}\n")
    seconds = (result.info.get("bridge") or {}).get("edit_s")
    report_edit("imusic send", args.instruction, result.info.get("seed"), result.info, seconds)
    return 0
