"""What every repository of the state store shares: reads that never take SQLite's write
lock, driver-level statements in the dialect's placeholder style, and timestamps as the
driver wants them. No table here: each repository holds its own."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine

from ferryman.timeutil import sqlite_text

__all__ = ["READ_OPTION", "chunks", "db_time", "driver_sql", "reading"]

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
