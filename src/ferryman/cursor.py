"""The cursor policy: the one module that compares records with a cursor.

A pipeline's cursor is the compound position ``(updated_at, key)`` up to which its source
has been delivered. Everything that decides *which records are due* lives here, so that
overlap, inclusive bounds and timestamp precision are settled once for every connector,
the engine and two-way sync:

- :func:`read_from` turns a committed cursor into where the next read starts: ``overlap``
  earlier (late-committed rows are not missed), and never less than the source's timestamp
  ``precision`` (a source with whole-second timestamps can change a record with a lower key
  within the cursor's own second; reading from the cursor itself would drop that change).
- :func:`is_due` / :func:`due` is the inclusive rule ``Cursor.of(record) >= since``.
- :func:`filter_floor` is the timestamp to send to a server-side filter, floored to the
  granularity that filter understands (flooring can only add records, never lose one).
- :class:`OrderGuard` verifies what a source claims about order instead of believing it:
  a record older than the one before it stops the read with :class:`OrderViolation`.
- :class:`Boundary` drops records a keyset read already yielded, by key at the boundary
  timestamp (so a server that sorts by time but not by id within a second loses nothing).

Pure: no I/O, no state store, no HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from ferryman.errors import OrderViolation

if TYPE_CHECKING:
    from ferryman.records import Record

__all__ = [
    "MICROSECOND",
    "SECOND",
    "Boundary",
    "Cursor",
    "OrderGuard",
    "OrderViolation",
    "due",
    "effective_overlap",
    "filter_floor",
    "is_due",
    "is_older",
    "natural_key",
    "newest",
    "parse_precision",
    "read_from",
    "record_order",
]

MICROSECOND = timedelta(microseconds=1)
SECOND = timedelta(seconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def natural_key(key: str) -> tuple[int, int, str]:
    """Sort keys as apps do: numeric ids by number (``"9" < "10"``), others as text after them.

    The empty key sorts before every other, so ``Cursor(t, "")`` means "everything at or
    after ``t``"."""
    if not key:
        return (-1, 0, "")
    if key.isdigit() and len(key) < 19:
        return (0, int(key), "")
    return (1, 0, key)


@dataclass(frozen=True, slots=True)
class Cursor:
    """The position ``(updated_at, key)`` up to which a source has been delivered.

    Cursors order by time, then by key in :func:`natural_key` order, so that records
    sharing one timestamp are neither lost nor repeated across a page boundary.
    """

    updated_at: datetime
    key: str

    @classmethod
    def of(cls, record: Record) -> Cursor:
        return cls(record.updated_at, record.key)

    def sort_key(self) -> tuple[datetime, tuple[int, int, str]]:
        return (self.updated_at, natural_key(self.key))

    def __lt__(self, other: Cursor) -> bool:
        return self.sort_key() < other.sort_key()

    def __le__(self, other: Cursor) -> bool:
        return self.sort_key() <= other.sort_key()

    def __gt__(self, other: Cursor) -> bool:
        return self.sort_key() > other.sort_key()

    def __ge__(self, other: Cursor) -> bool:
        return self.sort_key() >= other.sort_key()


def record_order(record: Record) -> tuple[datetime, tuple[int, int, str]]:
    """The order ``read`` yields records in: (updated_at, natural key)."""
    return (record.updated_at, natural_key(record.key))


def parse_precision(value: str | timedelta) -> timedelta:
    """``"1s"``, ``"seconds"``, ``"ms"``, ``"milliseconds"``, ``"us"``, ``"1m"``/``"minutes"``."""
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ValueError("precision must be positive")
        return value
    text = value.strip().lower()
    named = {
        "s": SECOND,
        "1s": SECOND,
        "second": SECOND,
        "seconds": SECOND,
        "ms": timedelta(milliseconds=1),
        "1ms": timedelta(milliseconds=1),
        "millisecond": timedelta(milliseconds=1),
        "milliseconds": timedelta(milliseconds=1),
        "us": MICROSECOND,
        "1us": MICROSECOND,
        "microsecond": MICROSECOND,
        "microseconds": MICROSECOND,
        "m": timedelta(minutes=1),
        "1m": timedelta(minutes=1),
        "minute": timedelta(minutes=1),
        "minutes": timedelta(minutes=1),
    }
    if text in named:
        return named[text]
    raise ValueError(f"unknown precision {value!r} (seconds, milliseconds, microseconds or minutes)")


def effective_overlap(overlap: timedelta, precision: timedelta) -> timedelta:
    """The overlap a read really uses: never shorter than the source's timestamp precision.

    With whole-second timestamps, a record with a lower key can change within the cursor's
    own second after the cursor was committed; only re-reading that second finds it.
    """
    if precision > MICROSECOND and overlap < precision:
        return precision
    return overlap


def read_from(cursor: Cursor | None, overlap: timedelta, precision: timedelta = MICROSECOND) -> Cursor | None:
    """Where a read starts for a committed ``cursor`` (``None``: from the beginning).

    With an effective overlap the read starts at ``cursor.updated_at - overlap`` with every
    key of that instant; with none (a microsecond source and ``overlap: 0s``) at the
    cursor itself, inclusive. Re-reading is harmless: unchanged records are skipped by
    their fingerprints.
    """
    if cursor is None:
        return None
    window = effective_overlap(overlap, precision)
    if not window:
        return cursor
    return Cursor(cursor.updated_at - window, "")


def is_due(record: Record, since: Cursor | None) -> bool:
    """Whether ``record`` belongs to a read from ``since`` (inclusive)."""
    if since is None:
        return True
    stamp = record.updated_at
    if stamp != since.updated_at:
        return stamp > since.updated_at
    return natural_key(record.key) >= natural_key(since.key)


def due(records: Iterable[Record], since: Cursor | None) -> list[Record]:
    """The records of ``records`` that a read from ``since`` returns, in their given order."""
    if since is None:
        return list(records)
    return [r for r in records if is_due(r, since)]


def is_older(stamp: datetime | None, since: Cursor | None) -> bool:
    """Whether a bare timestamp (of a row that could not become a record) is certainly
    before ``since``: such a row was reported when it was new."""
    return since is not None and stamp is not None and stamp < since.updated_at


def filter_floor(
    since: Cursor | None, granularity: timedelta = SECOND, *, margin: timedelta = timedelta(0)
) -> datetime | None:
    """The timestamp to send to a server's inclusive ``updated since`` filter.

    Floored to the filter's granularity (whole seconds, Harvest's minutes), ``margin``
    earlier first (for a server that may compare with ``>``): a floor can only widen the
    answer, and :class:`Boundary` drops what was already delivered.
    """
    if since is None:
        return None
    stamp = since.updated_at - margin
    step = granularity // MICROSECOND
    if step <= 1:
        return stamp
    micros = (stamp - _EPOCH) // MICROSECOND
    return _EPOCH + timedelta(microseconds=micros - micros % step)


def newest(records: Sequence[Record]) -> Cursor:
    """``max(Cursor.of(r) for r in records)``, building cursors only for the newest timestamp."""
    stamp = max(r.updated_at for r in records)
    return max(Cursor.of(r) for r in records if r.updated_at == stamp)


class OrderGuard:
    """Verifies that records arrive in non-decreasing ``updated_at`` order, across pages.

    Keys sharing one timestamp may come in any order (many APIs sort by time only);
    :class:`Boundary` handles those. ``check`` raises :class:`OrderViolation` naming the
    two records out of order and where they came from.
    """

    __slots__ = ("last", "last_key", "stream", "system")

    def __init__(self, *, system: str | None = None, stream: str = "") -> None:
        self.system = system
        self.stream = stream
        self.last: datetime | None = None
        self.last_key = ""

    def check(self, records: Sequence[Record], where: str = "") -> None:
        last, last_key = self.last, self.last_key
        for record in records:
            stamp = record.updated_at
            if last is not None and stamp < last:
                what = f"{self.stream} " if self.stream else ""
                raise OrderViolation(
                    f"{what}records are not in updated_at order: {last_key!r} ({last.isoformat()}) came before "
                    f"{record.key!r} ({stamp.isoformat()})" + (f" in {where}" if where else "") + ". A keyset read "
                    "over an unsorted answer skips records, so the run stops with the cursor held where it began. "
                    "Make the API sort (send its sort parameter) or declare the stream unordered.",
                    system=self.system,
                    before=last_key,
                    after=record.key,
                    where=where,
                )
            last, last_key = stamp, record.key
        self.last, self.last_key = last, last_key

    def reset(self) -> None:
        """A new query starts (a keyset restart): order is checked afresh from here."""
        self.last, self.last_key = None, ""


class Boundary:
    """What a keyset read has yielded so far: the newest timestamp and the keys seen at it.

    :meth:`fresh` keeps the records of a page that are due from ``since`` and were not
    yielded already: newer than the boundary timestamp, or at it with a key not seen yet.
    """

    __slots__ = ("keys", "since", "stamp")

    def __init__(self, since: Cursor | None) -> None:
        self.since = since
        self.stamp: datetime | None = None
        self.keys: set[str] = set()

    def fresh(self, records: Sequence[Record]) -> list[Record]:
        since, stamp, keys = self.since, self.stamp, self.keys
        out: list[Record] = []
        for record in records:
            if since is not None and not is_due(record, since):
                continue
            when = record.updated_at
            if stamp is not None and (when < stamp or (when == stamp and record.key in keys)):
                continue
            out.append(record)
        for record in out:
            when = record.updated_at
            if self.stamp is None or when > self.stamp:
                self.stamp, self.keys = when, {record.key}
            elif when == self.stamp:
                self.keys.add(record.key)
        return out
