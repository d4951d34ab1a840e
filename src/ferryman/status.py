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

from ferryman.errors import StateUnavailable
from ferryman.holders import describe_holder, holder_is_dead, host_id, start_token
from ferryman.timeutil import format_utc, from_db_time, sqlite_text, utcnow

__all__ = ["SCHEMA_VERSION", "CursorView", "StatusReader", "run_as_seen"]

#: the state schema this reader understands (``ferryman.state.migrations.LATEST``)
SCHEMA_VERSION = 6

#: columns that SQLAlchemy's ``UtcDateTime`` stores on SQLite as naive UTC text
_TIME_COLUMNS = frozenset(
    {
        "started_at",
        "ended_at",
        "not_before",
        "expires_at",
        "acquired_at",
        "updated_at",
        "committed_at",
        "lease_expires_at",
        "last_commit_at",
    }
)

#: each pipeline's latest run with its lease and last page commit, in one statement (the
#: StateStore's ``_runs_with_leases``): a run that ends between two reads must not look interrupted
_LAST_RUNS = (
    "SELECT runs.*, leases.holder AS lease_holder, leases.expires_at AS lease_expires_at, "
    "(SELECT max(committed_at) FROM cursors WHERE cursors.pipeline = runs.pipeline) AS last_commit_at "
    "FROM runs JOIN (SELECT max(id) AS id FROM runs GROUP BY pipeline) AS latest ON runs.id = latest.id "
    "LEFT OUTER JOIN leases ON leases.pipeline = runs.pipeline"
)


def run_as_seen(
    run: dict[str, Any],
    holder: str | None,
    expires_at: datetime | None,
    last_commit_at: datetime | None,
    *,
    now: datetime,
    why: str | None = None,
) -> dict[str, Any]:
    """``run`` as status shows it. A run still marked ``running`` whose process is gone
    (its pipeline's lease expired, its holder dead, or no lease at all) is ``interrupted``,
    ended at its last sign of life: its start, or the pipeline's last page committed since.
    A process killed with -9, or cut off by an outage before it could record its end,
    leaves such a row; ``why`` overrides the reason (the next run closing it)."""
    if run.get("outcome") != "running":
        return run
    lease_live = holder is not None and expires_at is not None and expires_at > now
    if why is None and holder is not None and not holder_is_dead(holder) and (lease_live or _alive_here(holder)):
        # a live process of this host whose lease ran out in a long page is still running it
        return run
    if why is not None:
        reason = why
    elif holder is None or expires_at is None:
        reason = "its lease is gone"
    elif not lease_live:
        reason = f"its lease expired at {format_utc(expires_at)}"
    else:
        reason = f"{describe_holder(holder)} is no longer running"
    started: datetime = run["started_at"]
    ended = max(started, last_commit_at) if last_commit_at is not None else started
    message = (
        f"interrupted: the process running it on {run.get('instance')} stopped before the run ended "
        f"({reason}); last sign of life {format_utc(ended)}"
    )
    return {**run, "outcome": "interrupted", "ended_at": ended, "message": message}


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


def _alive_here(holder: str) -> bool:
    """True only when the holder is certainly a process of this host that still runs."""
    parts = holder.split("|")
    if len(parts) != 4 or parts[1] != host_id() or not parts[3]:
        return False
    try:
        pid = int(parts[2])
    except ValueError:
        return False
    return start_token(pid) == parts[3]


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
        except sqlite3.Error as exc:  # no schema table yet, or not a state database at all
            outage = StateUnavailable.from_sqlite(exc, where=f"state database {url}", busy_timeout=30)
            if outage is not None and outage.kind == "locked":
                db.close()
                # the StateStore would only wait as long again for the same lock
                raise outage from None
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
        now = utcnow()
        runs = {}
        for row in self._rows(_LAST_RUNS):
            extra = (row.pop("lease_holder"), row.pop("lease_expires_at"), row.pop("last_commit_at"))
            runs[row["pipeline"]] = run_as_seen(row, *extra, now=now)
        return runs

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
