"""Which source record became which target record, and with what content: the ``links``
table, and its slim form for keyed targets, ``fingerprints`` (a target that holds each
record under its source key, such as a CSV file, needs no target key per row).

Links are read and written for every page of every run, so the hot paths are driver-level
statements: one ``IN`` query per 500 keys, one executemany per page.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ferryman.state.models import FingerprintRow, KeyedTargetRow, LinkRow
from ferryman.state.sql import chunks, db_time, insert_rows, reading, select_rows
from ferryman.timeutil import from_db_time, utcnow

__all__ = ["KEYED_REFRESH", "T_FINGERPRINTS", "T_KEYED", "T_LINKS", "Link", "Links"]

T_LINKS = LinkRow.__table__  # type: ignore[attr-defined]
T_KEYED = KeyedTargetRow.__table__  # type: ignore[attr-defined]
T_FINGERPRINTS = FingerprintRow.__table__  # type: ignore[attr-defined]

#: seconds between two reads of the keyed targets (see :meth:`Links.keyed_pairs`)
KEYED_REFRESH = 30.0

_LINKS_HEAD = "INSERT INTO links (src, dst, src_key, dst_key, src_fp, dst_fp, written_at, write_count, window_start)"
_LINKS_ROW = "(%s, %s, %s, %s, %s, %s, %s, %s, %s)"
_LINKS_TAIL = (
    " ON CONFLICT (src, dst, src_key) DO UPDATE SET dst_key = excluded.dst_key, src_fp = excluded.src_fp, "
    "dst_fp = excluded.dst_fp, written_at = excluded.written_at, write_count = excluded.write_count, "
    "window_start = excluded.window_start"
)
_FINGERPRINTS_HEAD = "INSERT INTO fingerprints (src, dst, src_key, fp)"
_FINGERPRINTS_TAIL = " ON CONFLICT (src, dst, src_key) DO UPDATE SET fp = excluded.fp"
_FINGERPRINT_COLUMNS = "src_key, fp"
_FINGERPRINTS_WHERE = "FROM fingerprints WHERE src = %s AND dst = %s AND src_key IN ({keys})"
_LINK_COLUMNS = "src_key, dst_key, src_fp, dst_fp, write_count, window_start"
_LINKS_WHERE = "FROM links WHERE src = %s AND dst = %s AND src_key IN ({keys})"


@dataclass(slots=True)
class Link:
    src_key: str
    dst_key: str
    src_fp: str | None
    dst_fp: str | None
    write_count: int = 0
    window_start: datetime | None = None


class Links:
    """The links and fingerprints of one state database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        #: targets whose links are slim fingerprint rows (see keyed_target); None: not read yet
        self._keyed: set[tuple[str, str]] | None = None
        self._keyed_read = 0.0

    # -- keyed targets ------------------------------------------------------------------
    def keyed_target(self, src: str, dst: str) -> None:
        """Keep the links from ``src`` to ``dst`` as slim fingerprint rows from now on.
        Idempotent; the first call moves the pair's existing link rows over, in one
        transaction, so every reader (this process or another) finds them in one place."""
        if (src, dst) in self.keyed_pairs():
            return
        with self.engine.begin() as conn:
            known = conn.execute(sa.select(T_KEYED.c.src).where(T_KEYED.c.src == src, T_KEYED.c.dst == dst)).first()
            if known is None:
                conn.execute(sa.insert(T_KEYED).values(src=src, dst=dst, since=utcnow()))
                moved = T_LINKS.c.src == src, T_LINKS.c.dst == dst, T_LINKS.c.dst_key == T_LINKS.c.src_key
                conn.execute(
                    sa.insert(T_FINGERPRINTS).from_select(
                        ["src", "dst", "src_key", "fp"],
                        sa.select(T_LINKS.c.src, T_LINKS.c.dst, T_LINKS.c.src_key, T_LINKS.c.src_fp).where(*moved),
                    )
                )
                conn.execute(sa.delete(T_LINKS).where(*moved))
        self.keyed_pairs().add((src, dst))

    def keyed_pairs(self) -> set[tuple[str, str]]:
        """The keyed targets, read again every :data:`KEYED_REFRESH` seconds. A pair becomes
        keyed in the process that runs it (:meth:`keyed_target`, before it writes); another
        process that only reads it (an audit in a second instance) learns within that time."""
        now = time.monotonic()
        if self._keyed is None or now - self._keyed_read > KEYED_REFRESH:
            with reading(self.engine) as conn:
                self._keyed = {(row[0], row[1]) for row in conn.execute(sa.select(T_KEYED.c.src, T_KEYED.c.dst))}
            self._keyed_read = now
        return self._keyed

    def _fingerprints(self, src: str, dst: str, keys: Sequence[str]) -> dict[str, Link]:
        found: dict[str, Link] = {}
        with reading(self.engine) as conn:
            for chunk in chunks(list(dict.fromkeys(keys)), 500):
                rest = _FINGERPRINTS_WHERE.format(keys=", ".join(["%s"] * len(chunk)))
                for key, fp in select_rows(conn, self.dialect, _FINGERPRINT_COLUMNS, rest, (src, dst, *chunk)):
                    found[key] = Link(key, key, fp, fp)
        return found

    # -- reads --------------------------------------------------------------------------
    def links_for(self, src: str, dst: str, src_keys: Sequence[str]) -> dict[str, Link]:
        """The links of these source keys (one query per 500 keys, at driver level)."""
        found: dict[str, Link] = {}
        if not src_keys:
            return found
        if (src, dst) in self.keyed_pairs():
            return self._fingerprints(src, dst, src_keys)
        with reading(self.engine) as conn:
            for chunk in chunks(list(dict.fromkeys(src_keys)), 500):
                rest = _LINKS_WHERE.format(keys=", ".join(["%s"] * len(chunk)))
                for row in select_rows(conn, self.dialect, _LINK_COLUMNS, rest, (src, dst, *chunk)):
                    found[row[0]] = Link(row[0], row[1], row[2], row[3], row[4], from_db_time(row[5]))
        return found

    def links_by_dst(self, src: str, dst: str, dst_keys: Sequence[str]) -> dict[str, Link]:
        if (src, dst) in self.keyed_pairs():  # the record's key there is its source key
            return self._fingerprints(src, dst, dst_keys)
        found: dict[str, Link] = {}
        cols = (
            T_LINKS.c.src_key,
            T_LINKS.c.dst_key,
            T_LINKS.c.src_fp,
            T_LINKS.c.dst_fp,
            T_LINKS.c.write_count,
            T_LINKS.c.window_start,
        )
        with reading(self.engine) as conn:
            for chunk in chunks(list(dict.fromkeys(dst_keys)), 500):
                rows = conn.execute(
                    sa.select(*cols).where(T_LINKS.c.src == src, T_LINKS.c.dst == dst, T_LINKS.c.dst_key.in_(chunk))
                )
                for row in rows:
                    found[row[1]] = Link(*row)
        return found

    def linked_keys(self, src: str, dst: str, *, after: str | None = None, limit: int | None = None) -> list[str]:
        """Source keys linked from ``src`` to ``dst``, in key order, after ``after``."""
        table = T_FINGERPRINTS if (src, dst) in self.keyed_pairs() else T_LINKS
        query = sa.select(table.c.src_key).where(table.c.src == src, table.c.dst == dst)
        if after is not None:
            query = query.where(table.c.src_key > after)
        query = query.order_by(table.c.src_key)
        if limit is not None:
            query = query.limit(limit)
        with reading(self.engine) as conn:
            return [row[0] for row in conn.execute(query)]

    def count(self, src: str, dst: str) -> int:
        table = T_FINGERPRINTS if (src, dst) in self.keyed_pairs() else T_LINKS
        with reading(self.engine) as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(table).where(table.c.src == src, table.c.dst == dst)
                ).scalar_one()
            )

    # -- writes, in the caller's transaction -----------------------------------------------
    def upsert_in(self, conn: Connection, src: str, dst: str, links: list[Link]) -> None:
        """Insert or update links at driver level, a page in one statement (the hot path of a
        big sync: see :func:`~ferryman.state.sql.insert_rows`)."""
        if not links:
            return
        if (src, dst) in self.keyed_pairs():
            slim = [(src, dst, x.src_key, x.src_fp) for x in links if x.dst_key == x.src_key]
            insert_rows(conn, self.dialect, _FINGERPRINTS_HEAD, "(%s, %s, %s, %s)", slim, _FINGERPRINTS_TAIL)
            links = [x for x in links if x.dst_key != x.src_key]  # a key of its own there: a full link
            if not links:
                return
        dialect = self.dialect
        written = db_time(dialect, utcnow())
        sqlite = dialect == "sqlite"
        rows: list[tuple[Any, ...]] = [
            (
                src,
                dst,
                link.src_key,
                link.dst_key,
                link.src_fp,
                link.dst_fp,
                written,
                link.write_count,
                db_time(dialect, link.window_start) if sqlite else link.window_start,
            )
            for link in links
        ]
        insert_rows(conn, dialect, _LINKS_HEAD, _LINKS_ROW, rows, _LINKS_TAIL)

    def unlink_in(self, conn: Connection, src: str, dst: str, keys: Sequence[str]) -> None:
        tables = (T_LINKS, T_FINGERPRINTS) if (src, dst) in self.keyed_pairs() else (T_LINKS,)
        for table in tables:
            for chunk in chunks(keys, 500):
                conn.execute(sa.delete(table).where(table.c.src == src, table.c.dst == dst, table.c.src_key.in_(chunk)))

    def forget_in(self, conn: Connection, src: str, dst: str) -> None:
        """Every link of the pair, both forms (a reset)."""
        conn.execute(sa.delete(T_LINKS).where(T_LINKS.c.src == src, T_LINKS.c.dst == dst))
        conn.execute(sa.delete(T_FINGERPRINTS).where(T_FINGERPRINTS.c.src == src, T_FINGERPRINTS.c.dst == dst))
