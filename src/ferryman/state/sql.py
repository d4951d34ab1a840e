"""What every repository of the state store shares: reads that never take SQLite's write
lock, driver-level statements in the dialect's placeholder style, and timestamps as the
driver wants them. No table here: each repository holds its own."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from ferryman.timeutil import sqlite_text

__all__ = ["READ_OPTION", "chunks", "db_time", "driver_sql", "insert_rows", "reading", "select_rows"]

#: the execution option of a read-only connection (see :func:`reading`)
READ_OPTION = "ferryman_read"


def reading(engine: Engine) -> Connection:
    """A connection for reads only: on SQLite its transactions begin deferred, so a read
    never takes (or waits for) the write lock (see the begin hook in ``state.db``)."""
    return engine.connect().execution_options(**{READ_OPTION: True})


def driver_sql(dialect: str, statement: str) -> str:
    """A driver-level statement written with ``%s`` placeholders, in ``dialect``'s style."""
    return statement.replace("%s", "?") if dialect == "sqlite" else statement


def db_time(dialect: str, value: datetime | None) -> Any:
    """A timestamp for a driver-level statement, stored as the models store it (SQLite:
    naive UTC text; PostgreSQL: the aware datetime)."""
    if value is None or dialect != "sqlite":
        return value
    return sqlite_text(value)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: bound values in one SQLite statement: the default limit of SQLite 3.32 and later (older
#: builds allow 999: the statement then fails loudly, never writes half)
SQLITE_VARIABLES = 32766
#: rows in one SQLite statement: a prepared statement grows with its rows, and sqlite3 keeps
#: the ones it prepared (1,000-row statements cost a sync process 17 MB); a few statements
#: a page still take the GIL back only a few times (see insert_rows)
SQLITE_ROWS = 100


def insert_rows(
    conn: Connection, dialect: str, head: str, row: str, rows: Sequence[Sequence[Any]], tail: str = ""
) -> None:
    """``head VALUES row, row, ... tail`` for many rows: a page's links, fingerprints,
    events or outbox rows. ``row`` is the template of one row, ``(%s, %s, 'pending', %s)``.

    On PostgreSQL one executemany. On SQLite one statement per chunk of rows (a multi-row
    ``VALUES``), because ``sqlite3``'s executemany releases the GIL around every row's step
    and takes it back after each: beside a busy thread (the event loop mapping the next
    page) each retake waits for that thread's switch interval, and one page of 1,000 rows
    took 1.5 s instead of 2 ms (``python -m bench.gil_convoy``). One statement is one step."""
    if not rows:
        return
    if dialect != "sqlite":
        conn.exec_driver_sql(f"{head} VALUES {row}{tail}", list(rows))
        return
    one = row.replace("%s", "?")
    per = max(1, min(SQLITE_ROWS, SQLITE_VARIABLES // max(1, row.count("%s"))))
    for chunk in chunks(rows, per):
        values = ", ".join([one] * len(chunk))
        conn.exec_driver_sql(f"{head} VALUES {values}{tail}", tuple(v for r in chunk for v in r))


_JSON_ROWS: dict[str, bool] = {}  # whether this SQLite has its JSON functions (3.38+ always)


def select_rows(conn: Connection, dialect: str, columns: str, rest: str, params: Sequence[Any]) -> list[Sequence[Any]]:
    """``SELECT columns rest``'s rows (``rest`` with ``%s`` placeholders).

    On SQLite the rows come back as one JSON value (``json_group_array``): one statement
    step, instead of one per row, each of which gives up the GIL and waits to take it back
    from a busy event loop (see :func:`insert_rows`). For text, integers and NULL (what
    the link and fingerprint columns hold) the values are exactly the row's."""
    if dialect == "sqlite" and _JSON_ROWS.get("ok", True):
        sql = f"SELECT json_group_array(json_array({columns})) {rest}".replace("%s", "?")
        try:
            value = conn.exec_driver_sql(sql, tuple(params)).scalar()
        except OperationalError as exc:
            if "no such function" not in str(exc):
                raise
            _JSON_ROWS["ok"] = False  # an SQLite built without JSON: row by row
        else:
            rows: list[Sequence[Any]] = orjson.loads(value) if value else []
            return rows
    return list(conn.exec_driver_sql(driver_sql(dialect, f"SELECT {columns} {rest}"), tuple(params)))
