"""In-memory tables for simulators: rows by integer id, kept in ``(updated_at, id)`` order.

A row is a plain dict. The table owns four keys: ``id`` (auto-increment int),
``created_at`` and ``updated_at`` (aware UTC datetimes) and, once soft-deleted,
``deleted: True``; everything else is the simulator's. Rows handed out are the stored
dicts: read them freely, but change them only through :meth:`Table.update` and friends so
the ordering index and ``updated_at`` stay right.

The ordering index is a sorted list searched with :mod:`bisect`: "rows with updated_at >= X
in (updated_at, id) order, from offset O, at most L" costs O(log n + L) at a million rows.
Each entry packs ``(updated_at in microseconds, id)`` into one integer, ``us << 32 | id``,
which sorts three times faster than tuples and takes a third of the memory (so ids must be
below 2**32).

``resolution`` is the precision the simulated API shows its timestamps with: a whole-second
API orders rows sharing one second by id and compares ``since`` at whole seconds, exactly
as a real one would.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ferryman.timeutil import ensure_utc, utcnow

__all__ = ["DuplicateValue", "Row", "Table"]

Row = dict[str, Any]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_ID_BITS = 32
_ID_MASK = (1 << _ID_BITS) - 1
_OWNED = frozenset({"id", "created_at", "updated_at", "deleted"})


class DuplicateValue(ValueError):
    """A write would give a unique field (``email``...) a value another row already has."""

    def __init__(self, table: str, field: str, value: Any, holder: int) -> None:
        self.field = field
        self.value = value
        self.holder = holder
        super().__init__(f"table {table!r}: {field} {value!r} is already taken by row {holder}")


def _micros(value: datetime) -> int:
    return (ensure_utc(value) - _EPOCH) // _ONE_US


def _from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


class Table:
    """Rows of one stream, by id, with an ``(updated_at, id)`` index.

    ``clock`` gives "now" for writes; a write's ``updated_at`` is also made strictly greater
    than every ``updated_at`` already in the table, so a write is always the newest row.
    ``unique`` names fields kept in a lookup index (:meth:`lookup`), e.g. ``("email",)``.
    """

    def __init__(
        self,
        name: str,
        *,
        resolution: timedelta = _ONE_US,
        first_id: int = 1,
        unique: Iterable[str] = (),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.name = name
        self.resolution = resolution
        self._res = max(1, resolution // _ONE_US)
        self._clock = clock
        self._rows: dict[int, Row] = {}
        self._all: list[int] = []  # index entries of every row
        self._live: list[int] = []  # index entries of rows not soft-deleted
        self._max_us = -(2**62)
        self._next_id = first_id
        self._unique: dict[str, dict[Any, int]] = {name: {} for name in unique}

    # -- reading ---------------------------------------------------------------------
    def __len__(self) -> int:
        """How many rows are not deleted."""
        return len(self._live)

    def __contains__(self, id: object) -> bool:
        return isinstance(id, int) and self.get(id) is not None

    def __iter__(self) -> Iterator[Row]:
        """Rows that are not deleted, in id order."""
        return (row for row in self._rows.values() if not row.get("deleted"))

    def get(self, id: int, *, include_deleted: bool = False) -> Row | None:
        """The row ``id``, or ``None`` (also for a soft-deleted row unless ``include_deleted``)."""
        row = self._rows.get(id)
        if row is None or (not include_deleted and row.get("deleted")):
            return None
        return row

    def lookup(self, field: str, value: Any) -> Row | None:
        """The live row whose unique ``field`` equals ``value``."""
        try:
            id = self._unique[field].get(value)
        except KeyError:
            raise KeyError(f"table {self.name!r} has no unique index on {field!r}") from None
        return None if id is None else self.get(id)

    @property
    def next_id(self) -> int:
        """The id the next :meth:`insert` will get."""
        return self._next_id

    @property
    def max_updated_at(self) -> datetime | None:
        """The newest ``updated_at`` in the table (deleted rows included)."""
        return _from_micros(self._max_us) if self._rows else None

    def query(
        self,
        since: datetime | None = None,
        *,
        after: tuple[datetime, int] | None = None,
        offset: int = 0,
        limit: int | None = None,
        include_deleted: bool = False,
    ) -> list[Row]:
        """Rows with ``updated_at >= since`` and ``(updated_at, id) > after``, in that order.

        Both comparisons happen at the table's resolution. ``offset`` and ``limit`` slice the
        result without walking the rows before it.
        """
        index = self._all if include_deleted else self._live
        start = self._start(index, since, after) + max(0, offset)
        stop = len(index) if limit is None else min(len(index), start + max(0, limit))
        rows = self._rows
        return [rows[entry & _ID_MASK] for entry in index[start:stop]]

    def count(
        self,
        since: datetime | None = None,
        *,
        after: tuple[datetime, int] | None = None,
        include_deleted: bool = False,
    ) -> int:
        """How many rows :meth:`query` would return without ``offset``/``limit``."""
        index = self._all if include_deleted else self._live
        return len(index) - self._start(index, since, after)

    def position(self, row: Row) -> tuple[datetime, int]:
        """A row's place in the order, ``(updated_at at the table's resolution, id)``.

        That is the compound cursor a client would keep; pass it back as ``after=``.
        """
        return _from_micros(self._floor(_micros(row["updated_at"]))), row["id"]

    def _start(self, index: list[int], since: datetime | None, after: tuple[datetime, int] | None) -> int:
        start = 0
        if since is not None:
            start = bisect_left(index, self._floor(_micros(since)) << _ID_BITS)
        if after is not None:
            after_id = min(max(after[1], -1), _ID_MASK)
            bound = (self._floor(_micros(after[0])) << _ID_BITS) + after_id
            start = max(start, bisect_right(index, bound))
        return start

    # -- writing ---------------------------------------------------------------------
    def load(self, rows: Iterable[Row]) -> None:
        """Add generated rows in bulk (no clock involved); the table takes the dicts as they are.

        Each row needs an aware UTC ``updated_at``; ``id`` defaults to the next id and
        ``created_at`` to ``updated_at``. Sorting happens once at the end, so a million rows
        load in well under a second.
        """
        store = self._rows
        res = self._res
        next_id = self._next_id
        added: list[int] = []
        append = added.append
        deleted = False
        max_us = self._max_us
        for row in rows:
            id = row.get("id")
            if id is None:
                row["id"] = id = next_id
            elif not isinstance(id, int) or id in store or not 0 <= id <= _ID_MASK:
                raise ValueError(f"table {self.name!r}: id {id!r} is not a new integer id below 2**32")
            if id >= next_id:
                next_id = id + 1
            updated = row["updated_at"]
            if "created_at" not in row:
                row["created_at"] = updated
            us = (updated - _EPOCH) // _ONE_US
            if us > max_us:
                max_us = us
            store[id] = row
            append(((us - us % res) << _ID_BITS) | id)
            if row.get("deleted"):
                deleted = True
        if next_id > _ID_MASK + 1:
            raise ValueError(f"table {self.name!r}: ids must stay below 2**32")
        self._next_id = next_id
        self._max_us = max_us
        if not added:
            return
        new_rows = [store[entry & _ID_MASK] for entry in added]
        for name, values in self._unique.items():
            values.update((row[name], row["id"]) for row in new_rows if row.get(name) is not None)
        added.sort()
        if self._all:
            self._all = sorted(self._all + added)
        else:
            self._all = added
        if deleted or len(self._live) != len(self._all) - len(added):
            self._live = [e for e in self._all if not store[e & _ID_MASK].get("deleted")]
        else:
            self._live = list(self._all)

    def insert(self, fields: Mapping[str, Any]) -> Row:
        """Create a row with the next id; ``created_at`` and ``updated_at`` are now."""
        self._refuse_owned(fields)
        self._check_unique(fields, None)
        id = self._next_id
        if id > _ID_MASK:
            raise ValueError(f"table {self.name!r}: ids must stay below 2**32")
        self._next_id += 1
        now = self._stamp()
        stamp = _from_micros(now)
        row: Row = {"id": id, **fields, "created_at": stamp, "updated_at": stamp}
        self._rows[id] = row
        entry = self._entry(now, id)
        self._add(self._all, entry)
        self._add(self._live, entry)
        self._index_unique(row)
        return row

    def update(self, id: int, changes: Mapping[str, Any]) -> Row:
        """Change some fields of a live row and touch its ``updated_at``; ``KeyError`` if missing."""
        row = self._require(id)
        self._refuse_owned(changes)
        self._check_unique(changes, id)
        self._unindex_unique(row)
        row.update(changes)
        self._index_unique(row)
        self._touch(row, live=True)
        return row

    def replace(self, id: int, fields: Mapping[str, Any]) -> Row:
        """Replace every field of a live row but ``id`` and ``created_at`` (a PUT); touch it."""
        row = self._require(id)
        self._refuse_owned(fields)
        self._check_unique(fields, id)
        self._unindex_unique(row)
        kept = {"id": row["id"], "created_at": row["created_at"], "updated_at": row["updated_at"]}
        row.clear()
        row.update(kept)
        row.update(fields)
        self._index_unique(row)
        self._touch(row, live=True)
        return row

    def delete(self, id: int, *, soft: bool = False) -> Row | None:
        """Delete a row; return it, or ``None`` when there was no live row ``id``.

        ``soft`` keeps it with ``deleted: True`` and a fresh ``updated_at`` (so an
        incremental read with ``include_deleted`` sees the deletion); otherwise it is gone.
        """
        row = self.get(id)
        if row is None:
            return None
        self._unindex_unique(row)
        entry = self._entry_of(row)
        self._remove(self._live, entry)
        if soft:
            row["deleted"] = True
            self._touch(row, live=False)
        else:
            self._remove(self._all, entry)
            del self._rows[id]
        return row

    def set_updated(self, id: int, stamp: datetime) -> Row:
        """Give a live row an ``updated_at`` of the app's choosing (an API that lets a write
        set it, like Cerb's ``fields[updated]``) and move it in the time index."""
        row = self._require(id)
        old = self._entry_of(row)
        row["updated_at"] = stamp
        new = self._entry_of(row)
        self._max_us = max(self._max_us, _micros(stamp))
        for index in (self._all, self._live):
            self._remove(index, old)
            self._add(index, new)
        return row

    # -- internals -------------------------------------------------------------------
    def _require(self, id: int) -> Row:
        row = self.get(id)
        if row is None:
            raise KeyError(f"no row {id!r} in table {self.name!r}")
        return row

    def _refuse_owned(self, fields: Mapping[str, Any]) -> None:
        owned = _OWNED.intersection(fields)
        if owned:
            raise ValueError(f"table {self.name!r} owns {', '.join(sorted(owned))}; do not pass them")

    def _floor(self, us: int) -> int:
        return us - us % self._res

    def _entry(self, us: int, id: int) -> int:
        return (self._floor(us) << _ID_BITS) | id

    def _entry_of(self, row: Row) -> int:
        return self._entry(_micros(row["updated_at"]), row["id"])

    def _stamp(self) -> int:
        now = _micros(self._clock())
        if now <= self._max_us:
            now = self._max_us + 1
        self._max_us = now
        return now

    def _touch(self, row: Row, *, live: bool) -> None:
        old = self._entry_of(row)
        now = self._stamp()
        row["updated_at"] = _from_micros(now)
        new = self._entry(now, row["id"])
        indexes = (self._all, self._live) if live else (self._all,)
        for index in indexes:
            self._remove(index, old)
            self._add(index, new)

    @staticmethod
    def _add(index: list[int], entry: int) -> None:
        if not index or index[-1] < entry:
            index.append(entry)  # the usual case: a write is the newest row
        else:
            insort(index, entry)

    @staticmethod
    def _remove(index: list[int], entry: int) -> None:
        i = bisect_left(index, entry)
        if i < len(index) and index[i] == entry:
            del index[i]

    def _check_unique(self, fields: Mapping[str, Any], id: int | None) -> None:
        for name, values in self._unique.items():
            value = fields.get(name)
            holder = values.get(value) if value is not None else None
            if holder is not None and holder != id:
                raise DuplicateValue(self.name, name, value, holder)

    def _index_unique(self, row: Row) -> None:
        if row.get("deleted"):
            return
        for name, values in self._unique.items():
            value = row.get(name)
            if value is not None:
                values[value] = row["id"]

    def _unindex_unique(self, row: Row) -> None:
        for name, values in self._unique.items():
            value = row.get(name)
            if value is not None and values.get(value) == row["id"]:
                del values[value]
