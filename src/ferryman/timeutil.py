"""Time at the boundary: everything inside Ferryman is timezone-aware UTC.

Connectors convert whatever their API speaks (epoch seconds, ``Z`` strings, a local
format with a configured timezone) with these helpers; everything Ferryman writes is
ISO 8601 with ``Z`` (:func:`format_utc`).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Annotated
from zoneinfo import ZoneInfo

from pydantic import AfterValidator

__all__ = [
    "UTC",
    "NaiveDatetimeError",
    "ZoneName",
    "check_zone",
    "ensure_utc",
    "format_utc",
    "from_epoch",
    "parse_datetime",
    "parse_duration",
    "utcnow",
]


class NaiveDatetimeError(ValueError):
    """A datetime without a timezone reached a place that needs one."""


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def ensure_utc(value: datetime) -> datetime:
    """Return ``value`` converted to UTC; refuse naive datetimes.

    A naive datetime is ambiguous (whose local time?), so it is an error rather than a
    guess: the connector that produced it must say which timezone its source uses.
    """
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise NaiveDatetimeError(
            f"naive datetime {value.isoformat()} has no timezone; convert it at the connector boundary"
        )
    if value.utcoffset() == timedelta(0) and value.tzinfo is UTC:
        return value
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is in year 10000 in UTC
        raise ValueError(f"timestamp {value.isoformat()} is out of range in UTC (years 1 to 9999)") from None


def format_utc(value: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` suffix, microseconds only when present."""
    value = ensure_utc(value)
    text = value.replace(tzinfo=None).isoformat()
    return text + "Z"


def sqlite_text(value: datetime) -> str:
    """``value`` as SQLAlchemy's SQLite ``DateTime`` stores it: naive UTC text with
    microseconds, which SQLite compares as text. For SQL written at driver level."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def from_db_time(value: datetime | str | None) -> datetime | None:
    """A timestamp column read at driver level as the state models give it: aware UTC
    (SQLite returns naive UTC text, PostgreSQL an aware datetime)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def from_epoch(seconds: float | int | str) -> datetime:
    """Unix epoch seconds (number or numeric string) to an aware UTC datetime.

    A value no calendar holds (an app's garbage, year 2e9) is a ``ValueError``, as for any
    other bad value, not the platform's ``OverflowError``/``OSError``."""
    try:
        return datetime.fromtimestamp(float(seconds), UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"epoch seconds out of range: {seconds!r}") from exc


_ISO_Z = re.compile(r"[zZ]$")


def parse_datetime(text: str, *, assume_tz: tzinfo | str | None = None, fmt: str | None = None) -> datetime:
    """Parse a timestamp string into aware UTC.

    ``fmt`` is a :func:`datetime.strptime` format for sources with their own layout
    (``"%Y-%m-%d %H:%M:%S"``). A string without an offset is only accepted when
    ``assume_tz`` names the source's timezone; otherwise it raises
    :class:`NaiveDatetimeError`. A date alone (``2024-03-01``) means midnight.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a timestamp string, got {type(text).__name__}")
    raw = text.strip()
    if not raw:
        raise ValueError("empty timestamp")
    if fmt is not None:
        parsed = datetime.strptime(raw, fmt)
    else:
        candidate = _ISO_Z.sub("+00:00", raw)
        if " " in candidate and "T" not in candidate:
            candidate = candidate.replace(" ", "T", 1)
        try:
            parsed = datetime.fromisoformat(candidate)
        except ValueError:
            if re.fullmatch(r"-?\d+(\.\d+)?", raw):
                return from_epoch(raw)
            raise ValueError(f"not an ISO 8601 timestamp: {raw!r}") from None
    if parsed.tzinfo is None:
        if assume_tz is None:
            raise NaiveDatetimeError(f"timestamp {raw!r} has no timezone and none is configured")
        zone = ZoneInfo(assume_tz) if isinstance(assume_tz, str) else assume_tz
        parsed = parsed.replace(tzinfo=zone)
    return ensure_utc(parsed)


def date_to_utc(value: date) -> datetime:
    """Midnight UTC of a calendar date."""
    return datetime(value.year, value.month, value.day, tzinfo=UTC)


_DURATION = re.compile(r"(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """``"90s"``, ``"2m"``, ``"1h30m"``, ``"500ms"`` or a number of seconds to a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 1h30m)")
    try:
        return _duration(value)
    except OverflowError:
        raise ValueError(f"duration too long: {value!r}") from None


def _duration(value: str | int | float) -> timedelta:
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    text = value.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return timedelta(seconds=float(text))
    pos = 0
    total = 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos and text[pos : match.start()].strip():
            break
        total += float(match["num"]) * _UNITS[match["unit"]]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 1h30m)")
    return timedelta(seconds=total)


def check_zone(value: str) -> str:
    """``value`` if it names an IANA timezone (``Europe/Berlin``, ``UTC``); a clear error otherwise."""
    try:
        ZoneInfo(value)
    except Exception:
        raise ValueError(f"unknown timezone {value!r} (use an IANA name like Europe/Berlin, or UTC)") from None
    return value


ZoneName = Annotated[str, AfterValidator(check_zone)]
"""A config field holding an IANA timezone name, checked when the config loads."""
