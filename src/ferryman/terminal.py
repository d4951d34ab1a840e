"""What Ferryman prints for a person: colour, numbers, times, the progress of a run, and
output that stops quietly when its reader leaves.

- **Colour** only on a terminal, never when ``NO_COLOR`` is set to anything but the empty
  string (https://no-color.org) or ``TERM`` is ``dumb``: :class:`Style`.
- **Numbers** with thousands separators and never in ``1e+5`` form; **times** in UTC to the
  second with how long ago (``2026-12-06 05:10:03Z (4 min ago)``); **durations** in the
  largest two units that matter.
- **JSON** with ``null`` for what is missing and ISO 8601 ``Z`` times: :func:`to_json`.
- **A reader that leaves** (``ferryman status | head -1``) is not an error: :class:`Output`
  drops the rest and points stdout at ``/dev/null``, as the Python documentation advises
  (``signal``: "Note on SIGPIPE"), so the interpreter's own flush at exit fails no more.
- **Progress** of a run on a terminal (:class:`Progress`): records, rate, and the total with
  an ETA when the source gives one; log lines are written above the bar, not into it.

Pure formatting apart from :class:`Output` and :class:`Progress`, so it is tested without
a terminal; ``tqdm`` is imported only when a bar is drawn.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import IO, Any, TextIO

from ferryman.timeutil import format_utc

__all__ = [
    "Output",
    "Progress",
    "Style",
    "clock",
    "colour_enabled",
    "duration",
    "number",
    "per_second",
    "relative",
    "run_logs",
    "run_summary",
    "to_json",
    "when",
]

_SGR = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}

#: how an outcome is coloured: good, worth a look, bad
_OUTCOME_COLOUR = {
    "ok": "green",
    "dry-run": "green",
    "running": "cyan",
    "stopped": "yellow",
    "deferred": "yellow",
    "busy": "yellow",
    "failed": "red",
    "halted": "red",
    "interrupted": "red",
}


# -- colour ----------------------------------------------------------------------------------


def colour_enabled(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """Whether text written to ``stream`` may be coloured: a terminal, ``NO_COLOR`` unset or
    empty, and a ``TERM`` other than ``dumb``."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


@dataclass(frozen=True, slots=True)
class Style:
    """Colours text with ANSI escapes, or leaves it as it is when ``colour`` is off."""

    colour: bool = False

    @classmethod
    def for_stream(cls, stream: IO[str], environ: Mapping[str, str] | None = None) -> Style:
        return cls(colour_enabled(stream, environ))

    def paint(self, text: str, *styles: str) -> str:
        """``text`` in the named styles (``bold``, ``dim``, ``red``, ``green``, ``yellow``, ``cyan``)."""
        if not self.colour or not styles or not text:
            return text
        codes = ";".join(_SGR[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def outcome(self, outcome: str) -> str:
        """A run's outcome in its colour: green when well, yellow worth a look, red when not."""
        colour = _OUTCOME_COLOUR.get(outcome)
        return self.paint(outcome, "bold", colour) if colour else outcome


# -- numbers, times, durations ---------------------------------------------------------------


def number(value: int | float) -> str:
    """``12345`` -> ``12,345``; a float keeps one decimal below 10 (``3.5``), none above."""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}" if abs(value) < 10 else f"{round(value):,}"
    return f"{int(value):,}"


def per_second(count: int, seconds: float, unit: str = "records") -> str | None:
    """``count`` over ``seconds`` as ``12,345 records/s``; ``None`` when no time has passed."""
    if seconds <= 0:
        return None
    return f"{number(count / seconds)} {unit}/s"


def clock(value: datetime) -> str:
    """A time as a person reads it: UTC to the second, ``2026-12-06 05:10:03Z``."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value.isoformat()}: times shown are UTC and must say so")
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _span(seconds: float) -> str:
    """A length of time in words, coarse: ``12 s``, ``4 min``, ``3 h 5 min``, ``2 days 4 h``."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(s // 3600, 24)
    days = "1 day" if d == 1 else f"{number(d)} days"
    return f"{days} {h} h" if h else days


def relative(value: datetime, now: datetime) -> str:
    """How far ``value`` is from ``now``: ``4 min ago``, ``in 5 min``, ``just now``."""
    seconds = (value - now).total_seconds()
    if abs(seconds) < 1:
        return "just now"
    return f"in {_span(seconds)}" if seconds > 0 else f"{_span(-seconds)} ago"


def when(value: datetime, now: datetime) -> str:
    """``2026-12-06 05:10:03Z (4 min ago)``."""
    return f"{clock(value)} ({relative(value, now)})"


def duration(seconds: float) -> str:
    """How long something took: ``0.3s``, ``12.5s``, ``4m 05s``, ``1h 02m``, ``2d 03h``."""
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {seconds}")
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def run_summary(
    pipeline: str,
    outcome: str,
    counts: Mapping[str, int],
    seconds: float,
    message: str | None = None,
    *,
    style: Style | None = None,
    grouped: bool = False,
) -> str:
    """The line a finished run prints: ``t2c: ok (read 5,000, created 5,000, ...) in 0.3s,
    17,241 records/s``. Off a terminal (``grouped`` false) counts are plain integers, so a
    script greps ``read 10000`` whatever the locale; ``withheld`` only when there were some."""
    style = style or Style()
    shown = [k for k in counts if k != "withheld" or counts[k]]
    parts = []
    for key in shown:
        value = counts[key]
        text = f"{key} {number(value) if grouped else value}"
        if value and key in ("dead_lettered", "withheld"):
            text = style.paint(text, "yellow")
        parts.append(text)
    line = f"{style.paint(pipeline, 'bold')}: {style.outcome(outcome)} ({', '.join(parts)}) in {seconds:.1f}s"
    rate = per_second(counts.get("read", 0), seconds)
    if rate is not None and counts.get("read"):
        line += f", {rate if grouped else rate.replace(',', '')}"
    if message:
        line += f": {message}"
    return line


# -- JSON ------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_utc(value if value.tzinfo is not None else value.replace(tzinfo=UTC))
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def to_json(value: Any) -> str:
    """``value`` as indented JSON: times as ISO 8601 UTC with ``Z``, durations in seconds, sets as
    sorted lists. (A naive datetime here is UTC: SQLite hands back naive UTC text.)"""
    return json.dumps(value, indent=2, default=_json_default)


# -- output a reader may leave -----------------------------------------------------------------


class Output:
    """Lines to ``stream`` (stdout by default), each flushed, until its reader leaves.

    A closed pipe is the reader saying it has seen enough (``ferryman status | head -1``),
    not a failure: :meth:`line` returns ``False`` from then on and writes nothing, and the
    stream's descriptor is pointed at ``/dev/null`` so that Python's flush at exit does not
    fail again with "Exception ignored ... BrokenPipeError".
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self.gone = False

    @property
    def stream(self) -> TextIO:
        # looked up at each write: tests (and pytest's capsys) replace sys.stdout
        return self._stream if self._stream is not None else sys.stdout

    def line(self, text: str = "") -> bool:
        """Write ``text`` and a newline; ``False`` when the reader has gone."""
        if self.gone:
            return False
        stream = self.stream
        try:
            stream.write(text + "\n")
            stream.flush()
        except BrokenPipeError:
            self._reader_left(stream)
            return False
        return True

    def _reader_left(self, stream: TextIO) -> None:
        self.gone = True
        _to_devnull(stream)


def _to_devnull(stream: TextIO) -> None:
    """Point ``stream``'s descriptor at /dev/null (its reader has gone): what is still in its
    buffer, and Python's own flush at exit, then go nowhere instead of failing again."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not backed by a descriptor
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


# -- progress of a run -----------------------------------------------------------------------


class _LogLines:
    """A text stream for the process's log output during a run: complete lines only, and,
    while a bar is drawn (``above_bar``), above it (tqdm clears the bar, writes the line,
    draws the bar again), never into it. A reader that has gone (``2>&1 | head -1``) is
    not the run's failure: its lines are dropped and the descriptor pointed at /dev/null."""

    def __init__(self, stream: TextIO, *, above_bar: bool) -> None:
        self._stream = stream
        self._above_bar = above_bar
        self._partial = ""
        self.gone = False

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        if self.gone:
            return
        try:
            if self._above_bar:
                from tqdm import tqdm

                tqdm.write(line, file=self._stream)
            else:
                self._stream.write(line + "\n")
            self._stream.flush()
        except BrokenPipeError:
            self.gone = True
            _to_devnull(self._stream)

    def flush(self) -> None:
        if self._partial:
            return  # a line is written whole, once its newline comes
        with suppress(BrokenPipeError):
            if not self.gone:
                self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()


def _writes_to(target: object, stream: TextIO) -> bool:
    """Whether a log destination (structlog's print-logger factory, a stdlib handler) writes
    to ``stream``: a ``StreamHandler``'s ``stream``, or the file of the print logger that
    structlog's factory (and ``ferryman.logs``' handler) write through."""
    if getattr(target, "stream", None) is stream:
        return True
    printer = getattr(target, "_printer", None)  # ferryman.logs' handler: a structlog PrintLogger
    return getattr(target, "_file", None) is stream or getattr(printer, "_file", None) is stream


class _AboveHandler(logging.Handler):
    """Stands in for a stdlib handler while a bar is drawn: its level, filters (the rate
    limit) and formatting, written above the bar."""

    def __init__(self, inner: logging.Handler, above: _LogLines) -> None:
        super().__init__(inner.level)
        self.inner = inner
        self.above = above
        self.filters = inner.filters

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.above.write(self.inner.format(record) + "\n")
        except Exception:
            self.handleError(record)


@contextmanager
def run_logs(stream: TextIO, *, above_bar: bool = False) -> Iterator[None]:
    """For the duration, the process's log output that goes to ``stream`` (structlog's print
    logger, and the stdlib handlers writing to it) passes through :class:`_LogLines`: whole
    lines, above a progress bar when there is one, and dropped quietly once the reader has
    gone, so that a closed pipe never ends the run it logs."""
    import structlog

    above = _LogLines(stream, above_bar=above_bar)
    factory = structlog.get_config()["logger_factory"]
    swapped = isinstance(factory, structlog.PrintLoggerFactory) and _writes_to(factory, stream)
    if swapped:
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=above))  # type: ignore[arg-type]
    root = logging.getLogger()
    saved = list(root.handlers)
    root.handlers[:] = [_AboveHandler(h, above) if _writes_to(h, stream) else h for h in saved]
    try:
        yield
    finally:
        root.handlers[:] = saved
        if swapped:
            structlog.configure(logger_factory=factory)
        if above._partial:  # a line without its newline: still the caller's output
            above.write("\n")


class Progress:
    """A run's progress bar on a terminal: records so far with thousands separators, the
    rate, and, when :meth:`set_total` is told how many records the read will bring, the
    share done and an ETA. Log lines written to the same stream appear above the bar.

    Use as a context manager; the bar stays on screen when it closes (its last state)."""

    def __init__(
        self,
        label: str,
        stream: TextIO,
        *,
        total: int | None = None,
        style: Style | None = None,
        min_interval: float = 0.2,
    ) -> None:
        self.label = label
        self.min_interval = min_interval
        self.stream = stream
        self.style = style or Style.for_stream(stream)
        self._total = total
        self._counts: dict[str, int] = {}
        self._bar: Any = None
        self._logs: Any = None

    def __enter__(self) -> Progress:
        self._bar = _bar(self.style.paint(self.label, "bold"), self.stream, self._total, self.min_interval)
        self._logs = run_logs(self.stream, above_bar=True)
        self._logs.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._bar is not None:
                self._bar.close()
        finally:
            if self._logs is not None:
                self._logs.__exit__(None, None, None)

    def set_total(self, total: int | None) -> None:
        """How many records the read will bring in all (an estimate will do), once known."""
        self._total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.bar_format = _bar_format(total)
            self._bar.refresh()

    def update(self, records: int, counts: Mapping[str, int], total: int | None = None) -> None:
        """``records`` more were read; ``counts`` are the run's totals so far; ``total``, when
        the source has said (or estimated) how many the read brings in all."""
        self._counts = dict(counts)
        if total is not None and total != self._total:
            self.set_total(total)
        if self._bar is None:
            return
        shown = [("created", "created"), ("updated", "updated"), ("skipped", "skipped"), ("dead_lettered", "dead")]
        postfix = ", ".join(f"{label} {number(self._counts.get(key, 0))}" for key, label in shown)
        self._bar.set_postfix_str(postfix, refresh=False)
        self._bar.update(records)


def _bar_format(total: int | None) -> str:
    if total:
        return "{desc}: {percentage:3.0f}%|{bar}| {n_sep}/{total_sep} records [{elapsed}<{left}, {rate_sep}{postfix}]"
    return "{desc}: {n_sep} records [{elapsed}, {rate_sep}{postfix}]"


def _bar(label: str, stream: TextIO, total: int | None, min_interval: float) -> Any:
    from tqdm import tqdm

    class Bar(tqdm):
        """tqdm with numbers as Ferryman prints them: ``12,345``, never ``1.23e+04``."""

        @property
        def format_dict(self) -> dict[str, Any]:
            d = dict(super().format_dict)
            n, total, elapsed = d["n"], d["total"], d["elapsed"]
            # the average over the run: steadier than tqdm's smoothed rate for uneven pages
            rate = n / elapsed if elapsed > 0 and n else None
            d["n_sep"] = number(n)
            d["total_sep"] = number(total) if total else "?"
            d["rate_sep"] = f"{number(rate)} records/s" if rate else "? records/s"
            remaining = (total - n) / rate if rate and total and total > n else None
            d["left"] = duration(remaining) if remaining is not None else ("0.0s" if total and n >= total else "?")
            return d

    return Bar(
        desc=label,
        total=total,
        file=stream,
        dynamic_ncols=True,
        bar_format=_bar_format(total),
        leave=True,
        unit_scale=False,
        mininterval=min_interval,
    )
