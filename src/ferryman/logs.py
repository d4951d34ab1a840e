"""Logging: structlog, JSON lines off a terminal (journald-friendly), readable on one.

Every event passes :func:`redact_processor` last before rendering, so no registered
secret reaches a log line, including inside formatted tracebacks. Records from libraries
that use the standard ``logging`` module (httpx, aiohttp, apscheduler, SQLAlchemy,
asyncio) are rendered by the same processors into the same form (``event``, ``level``,
``ts``, plus ``logger``: the library's logger name), redaction included, and written
through the same lock, so a line is never cut by another.

Under systemd, when the output is the journal (``$JOURNAL_STREAM`` names its device and
inode, as systemd documents), every line starts with the sd-daemon priority prefix
``<N>``, N the syslog level (3 error, 4 warning, 6 info, 7 debug): journald strips it and
files the line at that priority, so ``journalctl -p warning`` shows the warnings.

A daemon may ask for rate-limited logging (:func:`limit_rate`): the same event
(structlog event name and level, or a standard-library logger and message template) is
written at most N times a second; :func:`flush_suppressed` then writes one
``log.suppressed`` event per silenced kind with how many were left out. A fault that
repeats thousands of times a second (every connection refused, every accept failing)
must not fill the disk or bury the one line that says what is wrong.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict

from ferryman.redact import redact_obj

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
SUPPRESSED_EVENT = "log.suppressed"
# syslog levels, as sd-daemon(3) prefixes take them
PRIORITIES = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7}
_QUIETED = ("httpx", "httpcore", "apscheduler", "aiohttp.access", "alembic")


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


def redact_processor(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    """Scrub registered secrets (and secret-named keys) from an event."""
    scrubbed: EventDict = redact_obj(event_dict)
    return scrubbed


def _record_logger(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    """A standard-library record's logger name (``httpx``, ``asyncio``) as ``logger``."""
    record = event_dict.get("_record")
    if record is not None:
        event_dict["logger"] = record.name
    return event_dict


class _Prefixed:
    """The renderer, with the sd-daemon ``<N>`` priority on every line it returns."""

    def __init__(self, renderer: Callable[[Any, str, EventDict], Any]) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event_dict: EventDict) -> str:
        prefix = f"<{PRIORITIES.get(str(event_dict.get('level', name)), 6)}>"
        text = str(self.renderer(logger, name, event_dict))
        # a console traceback spans lines: journald files each one on its own
        return prefix + text.replace("\n", "\n" + prefix)


class _Handler(logging.Handler):
    """Writes standard-library records through structlog's PrintLogger for the same
    stream, whose lock every line of the process shares."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self._printer = structlog.PrintLogger(file=out)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._printer.msg(self.format(record))
        except Exception:
            self.handleError(record)


def journal_stream(out: TextIO) -> bool:
    """Whether ``out`` is the systemd journal: ``$JOURNAL_STREAM`` holds ``DEVICE:INODE`` of
    the stream systemd connected, and a program checks it against its own descriptor (a
    child whose output was redirected elsewhere inherits the variable, not the journal)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep:
        return False
    try:
        stat = os.fstat(out.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):  # no descriptor (a StringIO), or not numbers
        return False


def limit_rate(per_second: int | None) -> None:
    """Write at most ``per_second`` events of one kind a second from now on (None: all).

    Apart from :func:`configure`, so that reconfiguring (a reload) keeps the limit."""
    global _limiter
    _limiter = RateLimiter(per_second) if per_second else None


def configure(
    level: str = "info", fmt: str = "auto", stream: TextIO | None = None, journald: bool | None = None
) -> None:
    """Set up structlog and standard-library logging for the process.

    ``fmt`` ``auto`` is JSON off a terminal, else readable; ``journald`` (default: whether
    the stream is the journal, see :func:`journal_stream`) puts the ``<N>`` priority
    prefix on every line."""
    out = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    if journald is None:
        journald = journal_stream(out)
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        # before the costly steps (time stamp, traceback formatting) that a dropped event skips
        _rate_limit_processor,
        stamp,
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
        from ferryman.terminal import colour_enabled  # NO_COLOR, TERM=dumb, not a terminal

        renderer = structlog.dev.ConsoleRenderer(
            colors=colour_enabled(out), exception_formatter=structlog.dev.plain_traceback
        )
    if journald:
        renderer = _Prefixed(renderer)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # The standard library's records: the same steps (rate limiting is the handler's filter),
    # then redaction and the same renderer.
    handler = _Handler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                _record_logger,
                stamp,
                structlog.processors.StackInfoRenderer(),
                structlog.processors.format_exc_info,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact_processor, renderer],
        )
    )
    handler.addFilter(_RateLimitFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # httpx logs every request URL at INFO; our own http.* events say what matters.
    for noisy in _QUIETED:
        logging.getLogger(noisy).setLevel(logging.WARNING)
