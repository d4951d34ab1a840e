"""The light read path of ``ferryman status``: a SQLite state database read with the stdlib.

``ferryman status`` is what an operator types to see whether things are well, so it should
answer at once. Opening the :class:`~ferryman.state.StateStore` imports SQLAlchemy, SQLModel
and the table models, which is most of a second of start-up for a handful of ``SELECT``\\s.
:class:`StatusReader` answers the same questions (the methods ``cli.status_rows`` calls,
with the same names and results) through :mod:`sqlite3`, read-only.

It only ever reads a database that is already at the schema version it knows; anything
else (PostgreSQL, no database yet, an older or newer schema, a database it cannot open)
makes :meth:`StatusReader.open` return ``None`` and the caller uses the ``StateStore``,
which migrates or explains. A test keeps :data:`SCHEMA_VERSION` equal to the migrations'
latest version and compares both readers' answers on the same database.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from ferryman.holders import describe_holder, holder_is_dead
from ferryman.timeutil import from_db_time, sqlite_text, utcnow

__all__ = ["SCHEMA_VERSION", "CursorView", "StatusReader"]

#: the state schema this reader understands (``ferryman.state.migrations.LATEST``)
SCHEMA_VERSION = 5

#: columns that SQLAlchemy's ``UtcDateTime`` stores on SQLite as naive UTC text
_TIME_COLUMNS = frozenset(
    {"started_at", "ended_at", "not_before", "expires_at", "acquired_at", "updated_at", "committed_at"}
)


class CursorView(NamedTuple):
    """A pipeline's cursor as status shows it (the engine's ``Cursor`` without its ordering)."""

    updated_at: datetime
    key: str


def _now_text() -> str:
    """Now, as a SQLite timestamp column holds it (compared as text)."""
    return sqlite_text(utcnow())


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :]
    if not path or path == ":memory:" or "?" in path:
        return None
    return Path(path)


class StatusReader:
    """Read-only answers for ``ferryman status`` from a SQLite state database."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._db.row_factory = sqlite3.Row

    @classmethod
    def open(cls, url: str) -> StatusReader | None:
        """A reader for ``url``, or ``None`` when the full state store must answer instead."""
        path = _sqlite_path(url)
        if path is None or not path.is_file():
            return None
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error:
            return None
        try:
            row = db.execute("SELECT version FROM ferryman_schema").fetchone()
        except sqlite3.Error:  # no schema table yet, or not a state database at all
            row = None
        if row is None or row[0] != SCHEMA_VERSION:
            db.close()
            return None
        return cls(db)

    def close(self) -> None:
        self._db.close()

    def _rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        out = []
        for row in self._db.execute(sql, params):
            item = dict(row)
            for name in _TIME_COLUMNS.intersection(item):
                item[name] = from_db_time(item[name])
            out.append(item)
        return out

    # -- what status_rows asks (the StateStore methods of the same names) ----------------
    def last_runs(self) -> dict[str, dict[str, Any]]:
        rows = self._rows(
            "SELECT runs.* FROM runs JOIN (SELECT pipeline, max(id) AS id FROM runs GROUP BY pipeline) AS latest "
            "ON runs.id = latest.id"
        )
        return {r["pipeline"]: r for r in rows}

    def count_dead_letters(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT pipeline, count(*) FROM dead_letters WHERE status = 'open' GROUP BY pipeline"
        ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def deferrals(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM hosts WHERE not_before > ?", _now_text())

    def get_cursor(self, pipeline: str, side: str = "forward") -> CursorView | None:
        row = self._db.execute(
            "SELECT updated_at, key FROM cursors WHERE pipeline = ? AND side = ?", (pipeline, side)
        ).fetchone()
        if row is None:
            return None
        updated_at = from_db_time(row[0])
        assert updated_at is not None  # NOT NULL column
        return CursorView(updated_at, row[1])

    def lease_holder(self, pipeline: str) -> tuple[str, datetime] | None:
        row = self._db.execute(
            "SELECT holder, expires_at FROM leases WHERE pipeline = ? AND expires_at > ?", (pipeline, _now_text())
        ).fetchone()
        if row is None or holder_is_dead(row[0]):
            return None
        expires_at = from_db_time(row[1])
        assert expires_at is not None
        return (describe_holder(row[0]), expires_at)
