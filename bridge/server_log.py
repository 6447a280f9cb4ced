"""The engine server's log: its own lines, and the lines a sender can cause once per packet (a malformed request's
traceback, a reply that could not be sent, python-osc's warnings), which are rate-limited and cut short so that a
flood of odd packets leaves a bounded log."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import TextIO

from bridge import protocol

LOG_BURST = 10  # log lines a sender can cause (per packet) in one LOG_WINDOW_S; the rest are counted, not written
LOG_WINDOW_S = 10.0
MAX_LOG_MESSAGE = 2000  # characters of one such line (a traceback, a packet's repr)


class RateLimiter:
    """At most `burst` messages per `window_s` seconds are let through; the rest are counted, and the count is handed
    to the first message let through once the window has passed (or to flush()). Thread-safe."""

    def __init__(self, burst: int = LOG_BURST, window_s: float = LOG_WINDOW_S, clock=time.monotonic) -> None:
        self.burst, self.window_s, self.clock = burst, window_s, clock
        self._lock = threading.Lock()
        self._window_started = -math.inf
        self._admitted = 0
        self._dropped = 0

    def admit(self) -> tuple[bool, int]:
        """(let this message through?, how many were dropped before it and not yet reported)."""
        with self._lock:
            now, reported = self.clock(), 0
            if now - self._window_started >= self.window_s:
                self._window_started, self._admitted = now, 0
                reported, self._dropped = self._dropped, 0
            if self._admitted < self.burst:
                self._admitted += 1
                return True, reported
            self._dropped += 1
            return False, reported

    def flush(self) -> int:
        """Dropped messages not reported yet (and forget them)."""
        with self._lock:
            dropped, self._dropped = self._dropped, 0
            return dropped


class ServerLog:
    """`imusic serve: ...` lines on a stream: say() for the server's own, noisy() for what a sender can cause."""

    def __init__(self, stream: TextIO, limiter: RateLimiter | None = None) -> None:
        self.stream = stream
        self.limiter = limiter or RateLimiter()

    def say(self, message: str) -> None:
        print(f"imusic serve: {message}", file=self.stream, flush=True)

    def noisy(self, message: str) -> None:
        """At most LOG_BURST such lines per LOG_WINDOW_S, each cut to MAX_LOG_MESSAGE characters; the rest counted."""
        admitted, dropped = self.limiter.admit()
        if dropped:
            self.say(
                f"{dropped} more message(s) like the ones above were not logged "
                f"(at most {self.limiter.burst} per {self.limiter.window_s:g} s)"
            )
        if admitted:
            self.say(protocol.shorten(message, MAX_LOG_MESSAGE))

    def flush(self) -> None:
        """Report the lines not logged since the last report (on stopping)."""
        if dropped := self.limiter.flush():
            self.say(f"{dropped} more message(s) like the ones above were not logged")


class PythonOscLogFilter(logging.Filter):
    """python-osc logs a warning per odd packet (unknown type tags, unknown bundle content: a flood of them grows the
    log without bound). Its records go to the server's rate-limited lines instead of the logging handlers."""

    def __init__(self, log: ServerLog) -> None:
        super().__init__()
        self.log = log

    def filter(self, record: logging.LogRecord) -> bool:
        from_python_osc = record.name.startswith("pythonosc") or (
            os.path.basename(os.path.dirname(record.pathname or "")) == "pythonosc"
        )
        if not from_python_osc:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a malformed record must not break the receive thread)
            message = str(record.msg)
        self.log.noisy(f"python-osc: {protocol.clip_message(message[:300])}")
        return False
