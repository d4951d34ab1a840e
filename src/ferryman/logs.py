"""Logging: structlog, JSON lines off a terminal (journald-friendly), readable on one.

Every event passes :func:`redact_processor` last before rendering, so no registered
secret reaches a log line, including inside formatted tracebacks. Messages from
libraries that use the standard ``logging`` module (httpx, apscheduler) go through the
same redaction.

A daemon may ask for rate-limited logging (:func:`limit_rate`): the same event
(structlog event name and level, or a standard-library logger and message template) is
written at most N times a second; :func:`flush_suppressed` then writes one
``log.suppressed`` event per silenced kind with how many were left out. A fault that
repeats thousands of times a second (every connection refused, every accept failing)
must not fill the disk or bury the one line that says what is wrong.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, TextIO

import structlog

from ferryman.redact import redact, redact_obj

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
SUPPRESSED_EVENT = "log.suppressed"


class RateLimiter:
    """At most ``per_second`` of one kind of event in each second; counts the rest."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._lock = threading.Lock()  # stdlib records also come from worker threads
        self._windows: dict[str, list[float]] = {}  # kind -> [window start, written, suppressed]

    def allow(self, kind: str) -> bool:
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(kind)
            if window is None or now - window[0] >= 1.0:
                suppressed = window[2] if window is not None else 0.0
                window = self._windows[kind] = [now, 0.0, suppressed]
            if window[1] < self.per_second:
                window[1] += 1
                return True
            window[2] += 1
            return False

    def take_suppressed(self) -> dict[str, int]:
        """The count of each kind left out since the last call, which resets them."""
        with self._lock:
            counts = {kind: int(w[2]) for kind, w in self._windows.items() if w[2]}
            now = time.monotonic()
            for kind in list(self._windows):
                window = self._windows[kind]
                window[2] = 0.0
                if now - window[0] >= 1.0:
                    del self._windows[kind]  # kinds come and go: keep only the live ones
            return counts


_limiter: RateLimiter | None = None


def _rate_limit_processor(_logger: Any, name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    limiter = _limiter
    event = event_dict.get("event")
    if limiter is not None and event != SUPPRESSED_EVENT and not limiter.allow(f"{event}"):
        raise structlog.DropEvent
    return event_dict


class _RateLimitFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        limiter = _limiter
        # the template, not the formatted text: one kind whatever its arguments
        return limiter is None or limiter.allow(f"{record.name}: {record.msg}")


def flush_suppressed() -> None:
    """Write one ``log.suppressed`` event per kind of event left out since the last call."""
    limiter = _limiter
    if limiter is None:
        return
    log = structlog.get_logger("ferryman.logs")
    for kind, count in sorted(limiter.take_suppressed().items()):
        log.warning(SUPPRESSED_EVENT, suppressed_event=kind, count=count, limit_per_second=limiter.per_second)


def redact_processor(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Scrub registered secrets (and secret-named keys) from an event."""
    return redact_obj(event_dict)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def limit_rate(per_second: int | None) -> None:
    """Write at most ``per_second`` events of one kind a second from now on (None: all).

    Apart from :func:`configure`, so that reconfiguring (a reload) keeps the limit."""
    global _limiter
    _limiter = RateLimiter(per_second) if per_second else None


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog and stdlib logging for the process."""
    out = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        # before the costly steps (time stamp, traceback formatting) that a dropped event skips
        _rate_limit_processor,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_processor,
    ]
    renderer: Any
    if as_json:
        import orjson

        renderer = structlog.processors.JSONRenderer(
            serializer=lambda obj, **_: orjson.dumps(obj, default=str).decode()
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RateLimitFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # httpx logs every request URL at INFO; our own http.* events say what matters.
    for noisy in ("httpx", "httpcore", "apscheduler", "aiohttp.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
