"""The state store: cursors, links, intents, runs, dead letters, checkpoints, leases.

SQLite by default, PostgreSQL for several instances. Everything a page changes is
committed in ONE transaction (:meth:`StateStore.commit_page`), which is what makes the
delivery contract hold across crashes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from ferryman.connector import Cursor
from ferryman.errors import ConfigError, LeaseLost, StateError, StateUnavailable
from ferryman.holders import default_instance_name, describe_holder, host_id
from ferryman.holders import holder_is_dead as _holder_is_dead
from ferryman.holders import start_token as _start_token
from ferryman.liveness import run_as_seen
from ferryman.redact import redact, redact_url
from ferryman.state import migrations
from ferryman.state.history import Conflict, Event, History, NewConflict, NewEvent
from ferryman.state.models import (
    CheckpointRow,
    CursorRow,
    DeadLetterRow,
    FingerprintRow,
    HostRow,
    IntentRow,
    KeyedTargetRow,
    LeaseRow,
    LinkRow,
    RunRow,
    SchemaVersion,
    SlotRow,
)
from ferryman.timeutil import UTC, from_db_time, sqlite_text, utcnow

__all__ = [
    "Conflict",
    "DeadLetter",
    "Event",
    "History",
    "Link",
    "NewConflict",
    "NewEvent",
    "PageCommit",
    "SlotClaim",
    "StateStore",
    "default_instance_name",
    "host_id",
]

#: the execution option of a read-only connection (see StateStore._reading)
READ_OPTION = "ferryman_read"
#: seconds between two reads of the keyed targets (see StateStore._keyed_pairs)
KEYED_REFRESH = 30.0

T_CURSORS = CursorRow.__table__  # type: ignore[attr-defined]
T_LINKS = LinkRow.__table__  # type: ignore[attr-defined]
T_INTENTS = IntentRow.__table__  # type: ignore[attr-defined]
T_RUNS = RunRow.__table__  # type: ignore[attr-defined]
T_DLQ = DeadLetterRow.__table__  # type: ignore[attr-defined]
T_CHECKPOINTS = CheckpointRow.__table__  # type: ignore[attr-defined]
T_HOSTS = HostRow.__table__  # type: ignore[attr-defined]
T_LEASES = LeaseRow.__table__  # type: ignore[attr-defined]
T_SCHEMA = SchemaVersion.__table__  # type: ignore[attr-defined]
T_SLOTS = SlotRow.__table__  # type: ignore[attr-defined]
T_KEYED = KeyedTargetRow.__table__  # type: ignore[attr-defined]
T_FINGERPRINTS = FingerprintRow.__table__  # type: ignore[attr-defined]

SLOT_RETENTION = timedelta(days=7)
#: how long SQLite waits for another process's lock (``?timeout=SECONDS`` in the URL overrides)
DEFAULT_BUSY_TIMEOUT = 30.0


_FENCE_SQLITE = "SELECT holder, generation FROM leases WHERE pipeline = ?"
_FENCE_POSTGRES = "SELECT holder, generation FROM leases WHERE pipeline = %s FOR UPDATE"
#: A run stops writing (self-fences) once this share of state.lease_ttl has passed, by its
#: own monotonic clock, since its lease was last renewed, until a renewal succeeds again: a
#: process that stalled (SIGSTOP, a suspended VM, a long pause) and resumes finds out that
#: its lease may have moved before it sends one more write, not after.
FENCE_SHARE = 0.5


P = ParamSpec("P")
T = TypeVar("T")


class StatePool:
    """Worker threads for state calls made from the event loop (:meth:`StateStore.call`).

    Daemon threads, so that a call stuck on a hung database server never keeps the process
    from exiting (a ``ThreadPoolExecutor`` joins its threads at exit), and apart from the
    loop's default executor, so that stuck state calls never starve anything else."""

    def __init__(self, workers: int, name: str = "state") -> None:
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((future, job))
        return future

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            future, job = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the awaiting coroutine
                future.set_exception(exc)


@dataclass
class Tenure:
    """This process's hold on one pipeline's lease: the generation it took, and when (by
    the monotonic clock) the last take or renewal began."""

    generation: int
    ttl: float  # seconds
    renewed: float  # time.monotonic() at the start of the last successful take or renewal
    lost: bool = False


_INSERT_INTENT = (
    "INSERT INTO intents (pipeline, dst, src_key, fingerprint, payload, state, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id"
)
_UPSERT_LINKS = (
    "INSERT INTO links (src, dst, src_key, dst_key, src_fp, dst_fp, written_at, write_count, window_start) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (src, dst, src_key) DO UPDATE SET dst_key = excluded.dst_key, src_fp = excluded.src_fp, "
    "dst_fp = excluded.dst_fp, written_at = excluded.written_at, write_count = excluded.write_count, "
    "window_start = excluded.window_start"
)


_UPSERT_FINGERPRINTS = (
    "INSERT INTO fingerprints (src, dst, src_key, fp) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (src, dst, src_key) DO UPDATE SET fp = excluded.fp"
)
_SELECT_FINGERPRINTS = "SELECT src_key, fp FROM fingerprints WHERE src = %s AND dst = %s AND src_key IN ({keys})"

_SELECT_LINKS = (
    "SELECT src_key, dst_key, src_fp, dst_fp, write_count, window_start FROM links "
    "WHERE src = %s AND dst = %s AND src_key IN ({keys})"
)


@dataclass(frozen=True, slots=True)
class SlotClaim:
    """What :meth:`StateStore.claim_slot` decided about one scheduled slot."""

    outcome: Literal["claimed", "taken", "busy"]
    #: taken: the instance that claimed the slot; busy: who holds the pipeline's lease
    by: str | None = None


@dataclass(slots=True)
class Link:
    src_key: str
    dst_key: str
    src_fp: str | None
    dst_fp: str | None
    write_count: int = 0
    window_start: datetime | None = None


@dataclass(slots=True)
class DeadLetter:
    id: int
    pipeline: str
    src: str
    dst: str | None
    ref: str
    src_key: str | None
    reason: str
    kind: str
    payload: Any
    status: str
    attempts: int
    created_at: datetime
    last_seen_at: datetime


@dataclass(slots=True)
class NewDeadLetter:
    src: str
    dst: str | None
    ref: str
    reason: str
    src_key: str | None = None
    kind: str = "rejected"
    payload: Any = None


@dataclass(slots=True)
class PageCommit:
    """Everything one page changed, committed together."""

    pipeline: str
    side: str = "forward"
    cursor: Cursor | None = None  # None: the cursor does not move
    cursors: dict[str, Cursor] = field(default_factory=dict)  # more sides' cursors (two-way pipelines)
    links: dict[tuple[str, str], list[Link]] = field(default_factory=dict)  # (src, dst) -> links to upsert
    unlinks: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (src, dst) -> src keys
    checkpoints: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # dst -> data
    resolved_intents: list[int] = field(default_factory=list)
    dead_letters: list[NewDeadLetter] = field(default_factory=list)
    resolved_refs: list[str] = field(default_factory=list)  # src keys whose open source rejects are fixed
    settled: dict[str, list[str]] = field(default_factory=dict)  # dst -> src keys delivered after a reference wait
    run_id: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    events: list[NewEvent] = field(default_factory=list)  # for `ferryman explain` (history.events)
    conflicts: list[NewConflict] = field(default_factory=list)  # the conflict journal


class StateStore:
    """Access to the state database. Thread-compatible; one instance per process."""

    def __init__(self, url: str, *, instance: str | None = None) -> None:
        self.url = url
        self.instance = instance or default_instance_name()
        pid = os.getpid()
        #: who holds leases: instance name, host, pid and process start, so a restart on the
        #: same host can tell that a lease's holder died (kill -9) and take over at once
        self.holder = f"{self.instance}|{host_id()}|{pid}|{_start_token(pid)}"
        #: where, as errors name it: the URL with its password hidden
        self.where = f"state database {redact(url) if url.startswith('sqlite') else redact_url(url)}"
        self.busy_timeout = _busy_timeout(url)
        #: the last outage this store met (kept after it was raised: a run records it as
        #: ``failed`` and carries on to its end, and the CLI still owes exit 75 for it)
        self.outage: StateUnavailable | None = None
        try:
            self.engine: Engine = _make_engine(url, self.busy_timeout, application_name=session_name(self.holder))
        except OSError as exc:  # the directory of an SQLite file could not be made
            raise StateUnavailable(f"cannot create its directory: {exc.strerror or exc}", where=self.where) from None
        self.dialect = self.engine.dialect.name
        #: per-record events and the conflict journal (:mod:`ferryman.state.history`)
        self.history = History(self.engine)
        #: targets whose links are slim fingerprint rows (see keyed_target); None: not read yet
        self._keyed: set[tuple[str, str]] | None = None
        self._keyed_read = 0.0
        #: the leases this process holds, by pipeline (see :meth:`self_fence`)
        self.tenures: dict[str, Tenure] = {}
        self._pool: StatePool | None = None
        self._pool_lock = threading.Lock()
        self._translate_outages()

    def _translate_outages(self) -> None:
        """Turn the driver's errors that mean an outage (corrupt, locked, full, unreachable)
        into :class:`StateUnavailable` where they enter, for every statement and connect of
        this store: callers then see one class, and the CLI one line and exit 75."""

        @sa.event.listens_for(self.engine, "handle_error")
        def _outage(context: sa.engine.ExceptionContext) -> None:
            if context.is_pre_ping:
                return  # a stale pooled connection: the pool replaces it by itself
            error = _outage_of(context, self.dialect, where=self.where, busy_timeout=self.busy_timeout)
            if error is not None:
                self.outage = error
                raise error

    def _reading(self) -> Connection:
        """A connection for reads only: on SQLite its transactions begin deferred, so a
        read never takes (or waits for) the write lock."""
        return self.engine.connect().execution_options(**{READ_OPTION: True})

    # -- schema ---------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, *, instance: str | None = None, migrate: bool = True) -> StateStore:
        store = cls(url, instance=instance)
        if migrate:
            store.migrate()
        else:
            store.check_version()
        return store

    def schema_version(self) -> int:
        with self._reading() as conn:
            if not sa.inspect(conn).has_table("ferryman_schema"):
                return 0
            row = conn.execute(sa.select(T_SCHEMA.c.version)).first()
            return int(row[0]) if row else 0

    def check_version(self) -> None:
        version = self.schema_version()
        if version > migrations.LATEST:
            raise StateError(
                f"state database schema v{version} is newer than this Ferryman (v{migrations.LATEST}); "
                "upgrade Ferryman or point it at another database"
            )
        if version < migrations.LATEST:
            raise StateError(f"state database schema v{version} needs migrating to v{migrations.LATEST}")

    def migrate(self) -> int:
        """Bring the schema to the latest version; returns the number of steps applied."""
        if self.schema_version() == migrations.LATEST:
            return 0  # the common case: no alembic import, no DDL lock
        from alembic.migration import MigrationContext
        from alembic.operations import Operations

        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # several instances may start at once: one migrates, the others wait
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7407041)"))
            if not sa.inspect(conn).has_table("ferryman_schema"):
                T_SCHEMA.create(conn)
                conn.execute(sa.insert(T_SCHEMA).values(id=1, version=0))
            version = int(conn.execute(sa.select(T_SCHEMA.c.version)).scalar_one())
            if version > migrations.LATEST:
                raise StateError(f"state database schema v{version} is newer than this Ferryman (v{migrations.LATEST})")
            ops = Operations(MigrationContext.configure(conn, opts={"render_as_batch": True}))
            applied = 0
            for number in range(version + 1, migrations.LATEST + 1):
                migrations.STEPS[number - 1](ops)
                conn.execute(sa.update(T_SCHEMA).values(version=number))
                applied += 1
            return applied

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a state call off the event loop: a slow or hung database (a PostgreSQL that
        stopped answering, an SQLite file locked by another process) then holds up only the
        run waiting for it, never the loop that serves /healthz, signals and the watchdog.
        One worker for SQLite (it serialises writers anyway), a few for PostgreSQL."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = StatePool(1 if self.dialect == "sqlite" else 4)
            pool = self._pool
        context = contextvars.copy_context()
        future = pool.submit(lambda: context.run(fn, *args, **kwargs))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- cursors --------------------------------------------------------------------
    def get_cursor(self, pipeline: str, side: str = "forward") -> Cursor | None:
        with self._reading() as conn:
            row = conn.execute(
                sa.select(T_CURSORS.c.updated_at, T_CURSORS.c.key).where(
                    T_CURSORS.c.pipeline == pipeline, T_CURSORS.c.side == side
                )
            ).first()
        return Cursor(row[0], row[1]) if row else None

    def _set_cursor(self, conn: Connection, pipeline: str, side: str, cursor: Cursor) -> None:
        values = {"updated_at": cursor.updated_at, "key": cursor.key, "committed_at": utcnow()}
        result = conn.execute(
            sa.update(T_CURSORS).where(T_CURSORS.c.pipeline == pipeline, T_CURSORS.c.side == side).values(**values)
        )
        if result.rowcount == 0:
            conn.execute(sa.insert(T_CURSORS).values(pipeline=pipeline, side=side, **values))

    def hold_cursor(self, pipeline: str, cursor: Cursor | None, side: str = "forward") -> None:
        """Put the cursor back where a run began (``None``: no cursor at all): the run met a
        source it cannot trust (out of order, paging that does not progress), and records
        before the pages it committed may not have been read yet."""
        with self.engine.begin() as conn:
            if cursor is None:
                conn.execute(sa.delete(T_CURSORS).where(T_CURSORS.c.pipeline == pipeline, T_CURSORS.c.side == side))
            else:
                self._set_cursor(conn, pipeline, side, cursor)

    # -- keyed targets ----------------------------------------------------------------
    def keyed_target(self, src: str, dst: str) -> None:
        """Keep the links from ``src`` to ``dst`` (a target that holds each record under its
        source key: a CSV file) as slim fingerprint rows from now on. Idempotent; the first
        call moves the pair's existing link rows over, in one transaction, so every reader
        (this process or another, a run or ``explain``) finds them in one place."""
        if (src, dst) in self._keyed_pairs():
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
        self._keyed_pairs().add((src, dst))

    def _keyed_pairs(self) -> set[tuple[str, str]]:
        """The keyed targets, read again every :data:`KEYED_REFRESH` seconds. A pair becomes
        keyed in the process that runs it (:meth:`keyed_target`, before it writes); another
        process that only reads it (an audit in a second instance) learns within that time."""
        now = time.monotonic()
        if self._keyed is None or now - self._keyed_read > KEYED_REFRESH:
            with self._reading() as conn:
                self._keyed = {(row[0], row[1]) for row in conn.execute(sa.select(T_KEYED.c.src, T_KEYED.c.dst))}
            self._keyed_read = now
        return self._keyed

    def _fingerprints(self, src: str, dst: str, keys: Sequence[str]) -> dict[str, Link]:
        found: dict[str, Link] = {}
        mark = "?" if self.dialect == "sqlite" else "%s"
        with self._reading() as conn:
            for chunk in _chunks(list(dict.fromkeys(keys)), 500):
                sql = _SELECT_FINGERPRINTS.format(keys=", ".join([mark] * len(chunk))).replace("%s", mark)
                for key, fp in conn.exec_driver_sql(sql, (src, dst, *chunk)):
                    found[key] = Link(key, key, fp, fp)
        return found

    # -- links ----------------------------------------------------------------------
    def links_for(self, src: str, dst: str, src_keys: Sequence[str]) -> dict[str, Link]:
        """The links of these source keys (one query per 500 keys, at driver level: this runs
        for every page of every run)."""
        found: dict[str, Link] = {}
        if not src_keys:
            return found
        if (src, dst) in self._keyed_pairs():
            return self._fingerprints(src, dst, src_keys)
        mark = "?" if self.dialect == "sqlite" else "%s"
        with self._reading() as conn:
            for chunk in _chunks(list(dict.fromkeys(src_keys)), 500):
                sql = _SELECT_LINKS.format(keys=", ".join([mark] * len(chunk))).replace("%s", mark)
                for row in conn.exec_driver_sql(sql, (src, dst, *chunk)):
                    found[row[0]] = Link(row[0], row[1], row[2], row[3], row[4], from_db_time(row[5]))
        return found

    def links_by_dst(self, src: str, dst: str, dst_keys: Sequence[str]) -> dict[str, Link]:
        if (src, dst) in self._keyed_pairs():  # the record's key there is its source key
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
        with self._reading() as conn:
            for chunk in _chunks(list(dict.fromkeys(dst_keys)), 500):
                rows = conn.execute(
                    sa.select(*cols).where(T_LINKS.c.src == src, T_LINKS.c.dst == dst, T_LINKS.c.dst_key.in_(chunk))
                )
                for row in rows:
                    found[row[1]] = Link(*row)
        return found

    def linked_keys(self, src: str, dst: str, *, after: str | None = None, limit: int | None = None) -> list[str]:
        """Source keys linked from ``src`` to ``dst``, in key order, after ``after``."""
        table = T_FINGERPRINTS if (src, dst) in self._keyed_pairs() else T_LINKS
        query = sa.select(table.c.src_key).where(table.c.src == src, table.c.dst == dst)
        if after is not None:
            query = query.where(table.c.src_key > after)
        query = query.order_by(table.c.src_key)
        if limit is not None:
            query = query.limit(limit)
        with self._reading() as conn:
            return [row[0] for row in conn.execute(query)]

    def count_links(self, src: str, dst: str) -> int:
        table = T_FINGERPRINTS if (src, dst) in self._keyed_pairs() else T_LINKS
        with self._reading() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(table).where(table.c.src == src, table.c.dst == dst)
                ).scalar_one()
            )

    def _upsert_links(self, conn: Connection, src: str, dst: str, links: list[Link]) -> None:
        """Insert or update links with one driver-level executemany (the hot path of a big sync)."""
        if not links:
            return
        if (src, dst) in self._keyed_pairs():
            slim = [(src, dst, x.src_key, x.src_fp) for x in links if x.dst_key == x.src_key]
            if slim:
                conn.exec_driver_sql(
                    _UPSERT_FINGERPRINTS.replace("%s", "?") if self.dialect == "sqlite" else _UPSERT_FINGERPRINTS,
                    slim,
                )
            links = [x for x in links if x.dst_key != x.src_key]  # a key of its own there: a full link
            if not links:
                return
        now = utcnow()
        if self.dialect == "sqlite":

            def ts(value: datetime | None) -> Any:
                return None if value is None else sqlite_text(value)

            written: Any = sqlite_text(now)
            sql = _UPSERT_LINKS.replace("%s", "?")
        else:

            def ts(value: datetime | None) -> Any:
                return value

            written = now
            sql = _UPSERT_LINKS
        rows = [
            (
                src,
                dst,
                link.src_key,
                link.dst_key,
                link.src_fp,
                link.dst_fp,
                written,
                link.write_count,
                ts(link.window_start),
            )
            for link in links
        ]
        conn.exec_driver_sql(sql, rows)

    # -- intents --------------------------------------------------------------------
    def record_intents(self, pipeline: str, dst: str, items: Iterable[tuple[str, str, str]]) -> list[int]:
        """Durably note creates about to happen: (src_key, fingerprint, payload JSON).
        Fenced like a page commit: a run whose lease moved starts no write."""
        with self.engine.begin() as conn:
            self._fence(conn, pipeline)
            return [self._insert_intent(conn, pipeline, dst, item) for item in items]

    def _insert_intent(self, conn: Connection, pipeline: str, dst: str, item: tuple[str, str, str]) -> int:
        # driver-level: one create of a target without a natural key pays for this statement
        src_key, fp, payload = item
        now: Any = sqlite_text(utcnow()) if self.dialect == "sqlite" else utcnow()
        row = conn.exec_driver_sql(
            self._sql(_INSERT_INTENT), (pipeline, dst, src_key, fp, payload, "pending", now)
        ).first()
        assert row is not None
        return int(row[0])

    def _sql(self, statement: str) -> str:
        """A driver-level statement written with ``%s`` placeholders, in this dialect's style."""
        return statement.replace("%s", "?") if self.dialect == "sqlite" else statement

    def step_intent(
        self,
        pipeline: str,
        dst: str,
        *,
        confirm: tuple[int, str, Link] | None = None,
        begin: tuple[str, str, str] | None = None,
    ) -> int | None:
        """One transaction between two creates: ``confirm`` the last one (its intent id, the
        source stream, the link it made) and note the next one about to be sent (``begin``:
        src_key, fingerprint, payload JSON); returns the new intent's id.

        Creates go one at a time: a crash leaves at most the one create in flight without a
        link, instead of every create of the page.
        """
        new_id: int | None = None
        with self.engine.begin() as conn:
            self._fence(conn, pipeline)
            if confirm is not None:
                intent_id, src, link = confirm
                self._upsert_links(conn, src, dst, [link])
                conn.exec_driver_sql(self._sql("DELETE FROM intents WHERE id = %s"), (intent_id,))
            if begin is not None:
                new_id = self._insert_intent(conn, pipeline, dst, begin)
        return new_id

    def intents(self, pipeline: str, dst: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(T_INTENTS).where(T_INTENTS.c.pipeline == pipeline).order_by(T_INTENTS.c.id)
        if dst is not None:
            query = query.where(T_INTENTS.c.dst == dst)
        if state is not None:
            query = query.where(T_INTENTS.c.state == state)
        with self._reading() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def resolve_intent(
        self, intent_id: int, *, src: str | None = None, dst: str | None = None, link: Link | None = None
    ) -> None:
        with self.engine.begin() as conn:
            if link is not None and src and dst:
                self._upsert_links(conn, src, dst, [link])
            conn.execute(sa.delete(T_INTENTS).where(T_INTENTS.c.id == intent_id))

    def resolve_intent_by_key(self, pipeline: str, dst: str, src_key: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(T_INTENTS).where(
                    T_INTENTS.c.pipeline == pipeline, T_INTENTS.c.dst == dst, T_INTENTS.c.src_key == src_key
                )
            )

    def mark_intent_unresolved(self, intent_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(T_INTENTS).where(T_INTENTS.c.id == intent_id).values(state="unresolved"))

    # -- the page transaction ---------------------------------------------------------
    def commit_page(self, commit: PageCommit) -> None:
        """Cursor, links, sink checkpoints, intents and dead letters: all or nothing.

        Fenced: when the pipeline's lease is held by someone else, nothing is written and
        :class:`~ferryman.errors.LeaseLost` is raised. A run that stalled past its lease
        (a long GC pause, a suspended VM) while another instance took the pipeline over
        would otherwise commit its page, and move the cursor, beside the new holder's.
        The lease row is locked for the transaction (PostgreSQL), so a takeover waits for
        this commit or this commit sees the takeover; SQLite serialises writers anyway.
        """
        with self.engine.begin() as conn:
            self._fence(conn, commit.pipeline)
            for (src, dst), links in commit.links.items():
                self._upsert_links(conn, src, dst, links)
            for (src, dst), keys in commit.unlinks.items():
                tables = (T_LINKS, T_FINGERPRINTS) if (src, dst) in self._keyed_pairs() else (T_LINKS,)
                for table in tables:
                    for chunk in _chunks(keys, 500):
                        conn.execute(
                            sa.delete(table).where(table.c.src == src, table.c.dst == dst, table.c.src_key.in_(chunk))
                        )
            for dst, data in commit.checkpoints.items():
                self._set_checkpoint(conn, commit.pipeline, dst, data)
            if commit.resolved_intents:
                for chunk in _chunks(commit.resolved_intents, 500):
                    conn.execute(sa.delete(T_INTENTS).where(T_INTENTS.c.id.in_(chunk)))
            for dst, keys in commit.settled.items():  # before this page's letters: a key may be in both
                for chunk in _chunks(keys, 500):
                    conn.execute(
                        sa.update(T_DLQ)
                        .where(
                            T_DLQ.c.pipeline == commit.pipeline,
                            T_DLQ.c.status == "open",
                            T_DLQ.c.kind == "reference",
                            T_DLQ.c.dst == dst,
                            T_DLQ.c.src_key.in_(chunk),
                        )
                        .values(status="resolved", last_seen_at=utcnow())
                    )
            for letter in commit.dead_letters:
                self._add_dead_letter(conn, commit.pipeline, letter)
            if commit.resolved_refs and self._open_source_rejects(conn, commit.pipeline):
                for chunk in _chunks(commit.resolved_refs, 500):
                    conn.execute(
                        sa.update(T_DLQ)
                        .where(
                            T_DLQ.c.pipeline == commit.pipeline,
                            T_DLQ.c.status == "open",
                            T_DLQ.c.dst.is_(None),
                            T_DLQ.c.src_key.in_(chunk),
                        )
                        .values(status="resolved", last_seen_at=utcnow())
                    )
            if commit.cursor is not None:
                self._set_cursor(conn, commit.pipeline, commit.side, commit.cursor)
            for side, cursor in commit.cursors.items():
                self._set_cursor(conn, commit.pipeline, side, cursor)
            if commit.events or commit.conflicts:
                self.history.write(conn, commit.pipeline, commit.run_id, commit.events, commit.conflicts)
            if commit.run_id is not None and commit.counts:
                conn.execute(
                    sa.update(T_RUNS)
                    .where(T_RUNS.c.id == commit.run_id)
                    .values({k: getattr(T_RUNS.c, k) + v for k, v in commit.counts.items() if v})
                )

    def _fence(self, conn: Connection, pipeline: str) -> None:
        """Refuse to write for ``pipeline`` unless this process still holds the lease it
        took, with the generation it took it at.

        Without a tenure (a command that writes outside any run, such as ``dlq drop``), a
        lease held by someone else refuses too. The row is locked for the transaction on
        PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers."""
        statement = _FENCE_SQLITE if self.dialect == "sqlite" else _FENCE_POSTGRES
        row = conn.exec_driver_sql(statement, (pipeline,)).first()
        tenure = self.tenures.get(pipeline)
        if tenure is None:
            if row is not None and row[0] != self.holder:
                raise self._lost(pipeline, row[0])
            return
        if row is None or row[0] != self.holder or int(row[1]) != tenure.generation:
            tenure.lost = True
            raise self._lost(pipeline, row[0] if row is not None else None)

    def _lost(self, pipeline: str, holder: str | None) -> LeaseLost:
        who = f"passed to {describe_holder(holder)}" if holder and holder != self.holder else "expired and was taken"
        if holder is None:
            who = "was released by another holder"
        return LeaseLost(
            f"pipeline {pipeline}: its lease {who} while this run was between commits (it stalled past "
            "state.lease_ttl); nothing more was written or committed, and the new holder reads the page again"
        )

    def fence_due(self, pipeline: str) -> bool:
        """Whether :meth:`self_fence` must ask the database before the next write (a check
        in memory, for the event loop); raises :class:`LeaseLost` once the lease is known lost."""
        tenure = self.tenures.get(pipeline)
        if tenure is None:
            return False
        if tenure.lost:
            raise self._lost(pipeline, None)
        return time.monotonic() - tenure.renewed >= tenure.ttl * FENCE_SHARE

    def self_fence(self, pipeline: str, *, now: bool = False) -> None:
        """Before a write to a target: go on only while the lease is surely still ours.

        In memory while the last renewal is recent (less than :data:`FENCE_SHARE` of the
        TTL ago by this process's monotonic clock); otherwise (or with ``now``) renew first
        (one statement), and raise :class:`~ferryman.errors.LeaseLost` if the lease moved meanwhile. A
        pipeline this process holds no tenure for (a dry run, a test) is not fenced."""
        tenure = self.tenures.get(pipeline)
        if tenure is None:
            return
        if tenure.lost:
            raise self._lost(pipeline, None)
        if not now and time.monotonic() - tenure.renewed < tenure.ttl * FENCE_SHARE:
            return
        if not self.renew_lease(pipeline, timedelta(seconds=tenure.ttl)):
            raise self._lost(pipeline, (self.lease_holder(pipeline) or (None,))[0])

    def _db_now(self, conn: Connection) -> datetime:
        """Now by the database's clock where several hosts share it (PostgreSQL), so a host
        whose clock runs ahead cannot judge a live lease expired; SQLite serves one host."""
        if self.dialect == "postgresql":
            value = conn.exec_driver_sql("SELECT clock_timestamp()").scalar()
            if isinstance(value, datetime):
                return value.astimezone(UTC)
        return utcnow()

    def _open_source_rejects(self, conn: Connection, pipeline: str) -> bool:
        """Whether the pipeline has open dead letters of its source (rows that could not be
        read): usually none, and then a page has no keys to mark resolved."""
        query = (
            sa.select(T_DLQ.c.id)
            .where(T_DLQ.c.pipeline == pipeline, T_DLQ.c.status == "open", T_DLQ.c.dst.is_(None))
            .limit(1)
        )
        return conn.execute(query).first() is not None

    # -- checkpoints -------------------------------------------------------------------
    def get_checkpoint(self, pipeline: str, dst: str) -> dict[str, Any] | None:
        with self._reading() as conn:
            row = conn.execute(
                sa.select(T_CHECKPOINTS.c.data).where(T_CHECKPOINTS.c.pipeline == pipeline, T_CHECKPOINTS.c.dst == dst)
            ).first()
        return json.loads(row[0]) if row else None

    def set_checkpoint(self, pipeline: str, dst: str, data: dict[str, Any] | None) -> None:
        with self.engine.begin() as conn:
            self._set_checkpoint(conn, pipeline, dst, data)

    def _set_checkpoint(self, conn: Connection, pipeline: str, dst: str, data: dict[str, Any] | None) -> None:
        where = (T_CHECKPOINTS.c.pipeline == pipeline, T_CHECKPOINTS.c.dst == dst)
        if data is None:
            conn.execute(sa.delete(T_CHECKPOINTS).where(*where))
            return
        blob = json.dumps(data, sort_keys=True)
        if conn.execute(sa.update(T_CHECKPOINTS).where(*where).values(data=blob)).rowcount == 0:
            conn.execute(sa.insert(T_CHECKPOINTS).values(pipeline=pipeline, dst=dst, data=blob))

    # -- dead letters -----------------------------------------------------------------
    def _add_dead_letter(self, conn: Connection, pipeline: str, letter: NewDeadLetter) -> None:
        now = utcnow()
        # A payload is the record as an app sent it: an app that echoes a request (a URL with
        # its key) puts a secret in it, so every string in it is redacted, like the reason.
        payload = None if letter.payload is None else json.dumps(_redacted(letter.payload), default=str, sort_keys=True)
        reason = redact(letter.reason)
        letter = NewDeadLetter(
            letter.src,
            letter.dst,
            redact(letter.ref),
            letter.reason,
            src_key=redact(letter.src_key) if letter.src_key is not None else None,
            kind=letter.kind,
            payload=letter.payload,
        )
        dst_clause = T_DLQ.c.dst.is_(None) if letter.dst is None else T_DLQ.c.dst == letter.dst
        existing = conn.execute(
            sa.select(T_DLQ.c.id).where(
                T_DLQ.c.pipeline == pipeline,
                T_DLQ.c.status == "open",
                T_DLQ.c.ref == letter.ref,
                T_DLQ.c.src == letter.src,
                dst_clause,
            )
        ).first()
        if existing:
            conn.execute(
                sa.update(T_DLQ)
                .where(T_DLQ.c.id == existing[0])
                .values(
                    reason=reason, payload=payload, kind=letter.kind, last_seen_at=now, attempts=T_DLQ.c.attempts + 1
                )
            )
        else:
            conn.execute(
                sa.insert(T_DLQ).values(
                    pipeline=pipeline,
                    src=letter.src,
                    dst=letter.dst,
                    ref=letter.ref,
                    src_key=letter.src_key,
                    reason=reason,
                    kind=letter.kind,
                    payload=payload,
                    status="open",
                    attempts=1,
                    created_at=now,
                    last_seen_at=now,
                )
            )

    def add_dead_letters(self, pipeline: str, letters: Iterable[NewDeadLetter]) -> None:
        with self.engine.begin() as conn:
            for letter in letters:
                self._add_dead_letter(conn, pipeline, letter)

    def dead_letters(
        self,
        pipeline: str | None = None,
        status: str | None = "open",
        ids: Sequence[int] | None = None,
        *,
        kind: str | None = None,
        oldest_first: int | None = None,
    ) -> list[DeadLetter]:
        """Dead letters in id order; ``oldest_first=N``: the N least recently attempted."""
        if oldest_first is None:
            query = sa.select(T_DLQ).order_by(T_DLQ.c.id)
        else:
            query = sa.select(T_DLQ).order_by(T_DLQ.c.last_seen_at, T_DLQ.c.id).limit(oldest_first)
        if pipeline:
            query = query.where(T_DLQ.c.pipeline == pipeline)
        if kind:
            query = query.where(T_DLQ.c.kind == kind)
        if status:
            query = query.where(T_DLQ.c.status == status)
        if ids:
            query = query.where(T_DLQ.c.id.in_(list(ids)))
        with self._reading() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            DeadLetter(
                id=r["id"],
                pipeline=r["pipeline"],
                src=r["src"],
                dst=r["dst"],
                ref=r["ref"],
                src_key=r["src_key"],
                reason=r["reason"],
                kind=r["kind"],
                payload=json.loads(r["payload"]) if r["payload"] else None,
                status=r["status"],
                attempts=r["attempts"],
                created_at=r["created_at"],
                last_seen_at=r["last_seen_at"],
            )
            for r in rows
        ]

    def set_dead_letter_status(
        self, ids: Sequence[int], status: str, reason: str | None = None, *, kind: str | None = None
    ) -> int:
        values: dict[str, Any] = {"status": status, "last_seen_at": utcnow()}
        if reason is not None:
            values["reason"] = redact(reason)
        if kind is not None:
            values["kind"] = kind
        with self.engine.begin() as conn:
            return int(conn.execute(sa.update(T_DLQ).where(T_DLQ.c.id.in_(list(ids))).values(**values)).rowcount)

    def count_open_conflicts(self) -> dict[str, int]:
        """Conflict-journal entries not restored, per pipeline (see :mod:`ferryman.state.history`)."""
        return self.history.count_open_conflicts()

    def count_dead_letters(self) -> dict[str, int]:
        with self._reading() as conn:
            rows = conn.execute(
                sa.select(T_DLQ.c.pipeline, sa.func.count()).where(T_DLQ.c.status == "open").group_by(T_DLQ.c.pipeline)
            )
            return {r[0]: int(r[1]) for r in rows}

    # -- runs -------------------------------------------------------------------------
    def start_run(self, pipeline: str, trigger: str = "manual") -> int:
        """Note a run as ``running``. The caller holds the pipeline's lease, so a run of it
        still marked ``running`` is one whose process is gone: it is closed as ``interrupted``
        in the same transaction."""
        with self.engine.begin() as conn:
            self._close_interrupted(conn, pipeline, why="a later run began")
            result = conn.execute(
                sa.insert(T_RUNS).values(
                    pipeline=pipeline,
                    instance=self.instance,
                    trigger=trigger,
                    started_at=utcnow(),
                    outcome="running",
                    read=0,
                    created=0,
                    updated=0,
                    deleted=0,
                    skipped=0,
                    dead_lettered=0,
                )
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def finish_run(
        self, run_id: int, outcome: str, message: str | None = None, not_before: datetime | None = None
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(T_RUNS)
                .where(T_RUNS.c.id == run_id)
                .values(
                    outcome=outcome,
                    ended_at=utcnow(),
                    message=redact(message) if message else None,
                    not_before=not_before,
                )
            )

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        with self._reading() as conn:
            row = conn.execute(sa.select(T_RUNS).where(T_RUNS.c.id == run_id)).mappings().first()
        return dict(row) if row else None

    def last_runs(self) -> dict[str, dict[str, Any]]:
        """The latest run of each pipeline, as status shows it: one still marked ``running``
        whose process is gone reads ``interrupted`` (see :func:`ferryman.liveness.run_as_seen`)."""
        with self._reading() as conn:
            rows = self._runs_with_leases(conn, latest=True)
        now = utcnow()
        return {run["pipeline"]: run_as_seen(run, *extra, now=now) for run, extra in rows}

    def _runs_with_leases(
        self, conn: Connection, *where: Any, latest: bool = False
    ) -> list[tuple[dict[str, Any], tuple[str | None, datetime | None, datetime | None]]]:
        """Runs (``latest``: each pipeline's latest) with their pipeline's lease (holder,
        expiry) and last page commit, read in ONE statement: a run that ends between two
        reads must not look interrupted."""
        last_commit = (
            sa.select(sa.func.max(T_CURSORS.c.committed_at))
            .where(T_CURSORS.c.pipeline == T_RUNS.c.pipeline)
            .scalar_subquery()
            .label("last_commit_at")
        )
        query = sa.select(
            T_RUNS,
            T_LEASES.c.holder.label("lease_holder"),
            T_LEASES.c.expires_at.label("lease_expires_at"),
            last_commit,
        ).select_from(T_RUNS)
        if latest:
            ids = sa.select(sa.func.max(T_RUNS.c.id).label("id")).group_by(T_RUNS.c.pipeline).subquery()
            query = query.join(ids, T_RUNS.c.id == ids.c.id)
        query = query.outerjoin(T_LEASES, T_LEASES.c.pipeline == T_RUNS.c.pipeline).where(*where)
        out = []
        for row in conn.execute(query).mappings():
            run = dict(row)
            extra = (run.pop("lease_holder"), run.pop("lease_expires_at"), run.pop("last_commit_at"))
            out.append((run, extra))
        return out

    def runs(self, pipeline: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = sa.select(T_RUNS).order_by(T_RUNS.c.id.desc()).limit(limit)
        if pipeline:
            query = query.where(T_RUNS.c.pipeline == pipeline)
        with self._reading() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def close_stale_runs(self, pipeline: str) -> int:
        """Runs of ``pipeline`` left ``running`` by a process that stopped, closed as
        ``interrupted``. Only for the holder of the pipeline's lease (the next run)."""
        with self.engine.begin() as conn:
            return self._close_interrupted(conn, pipeline, why="a later run began")

    def close_interrupted_runs(self) -> int:
        """Close every run whose process is gone (its lease expired, its holder dead, or no
        lease at all) as ``interrupted``; runs whose holder lives are left alone. For the
        start of the daemon: status shows such runs so before, this records it."""
        with self.engine.begin() as conn:
            return self._close_interrupted(conn, None)

    def _close_interrupted(self, conn: Connection, pipeline: str | None, *, why: str | None = None) -> int:
        """``why`` given: the caller holds ``pipeline``'s lease, so its running runs are all stale."""
        where = [T_RUNS.c.outcome == "running"]
        if pipeline is not None:
            where.append(T_RUNS.c.pipeline == pipeline)
        now = utcnow()
        closed = 0
        for run, (holder, expires_at, last_commit_at) in self._runs_with_leases(conn, *where):
            if why is not None:
                holder = expires_at = None
            seen = run_as_seen(run, holder, expires_at, last_commit_at, now=now, why=why)
            if seen["outcome"] != "interrupted":
                continue
            closed += conn.execute(
                sa.update(T_RUNS)
                .where(T_RUNS.c.id == run["id"], T_RUNS.c.outcome == "running")
                .values(outcome="interrupted", ended_at=seen["ended_at"], message=seen["message"])
            ).rowcount
        return closed

    # -- hosts ------------------------------------------------------------------------
    def set_not_before(self, host: str, not_before: datetime, reason: str | None = None) -> None:
        with self.engine.begin() as conn:
            where = T_HOSTS.c.host == host
            values = {"not_before": not_before, "reason": redact(reason) if reason else None}
            if conn.execute(sa.update(T_HOSTS).where(where).values(**values)).rowcount == 0:
                conn.execute(sa.insert(T_HOSTS).values(host=host, **values))

    def not_before(self, hosts: Sequence[str]) -> tuple[str, datetime] | None:
        """The latest future deferral among ``hosts``, if any."""
        if not hosts:
            return None
        now = utcnow()
        with self._reading() as conn:
            row = conn.execute(
                sa.select(T_HOSTS.c.host, T_HOSTS.c.not_before)
                .where(T_HOSTS.c.host.in_(list(hosts)), T_HOSTS.c.not_before > now)
                .order_by(T_HOSTS.c.not_before.desc())
            ).first()
        return (row[0], row[1]) if row else None

    def deferrals(self) -> list[dict[str, Any]]:
        with self._reading() as conn:
            return [dict(r) for r in conn.execute(sa.select(T_HOSTS).where(T_HOSTS.c.not_before > utcnow())).mappings()]

    # -- leases -----------------------------------------------------------------------
    def acquire_lease(self, pipeline: str, ttl: timedelta, holder: str | None = None) -> bool:
        """Take the pipeline's lease (or keep the one this holder has, live, with its
        generation); False when another holder's lease is live."""
        began = time.monotonic()
        with self.engine.begin() as conn:
            taken, _blocker = self._take_lease(conn, pipeline, ttl, holder or self.holder)
        if taken is None:
            return False
        if (holder or self.holder) == self.holder:
            self.tenures[pipeline] = Tenure(taken, ttl.total_seconds(), began)
        return True

    def _take_lease(self, conn: Connection, pipeline: str, ttl: timedelta, holder: str) -> tuple[int | None, str]:
        """Take the lease inside ``conn``'s transaction: (its generation, ''), or (None, the
        holder of the live lease that stands in the way: '' when not known yet). The same holder's live lease is
        kept with its generation (a run taking the lease its slot claim took); any other take
        (after another holder, after expiry, after a release) starts a new, higher generation."""
        now = self._db_now(conn)
        if self.dialect == "sqlite":
            conn.exec_driver_sql("SELECT 1")  # BEGIN IMMEDIATE is set by the engine's begin hook
        else:
            self._end_stuck_sessions(conn, pipeline, holder, now)
        row = conn.execute(
            sa.select(T_LEASES.c.holder, T_LEASES.c.expires_at, T_LEASES.c.generation)
            .where(T_LEASES.c.pipeline == pipeline)
            .with_for_update()
        ).first()
        # time-based, so a generation keeps growing even across released (deleted) rows
        fresh = int(now.timestamp() * 1_000_000)
        if row is None:
            try:
                with conn.begin_nested():
                    conn.execute(
                        sa.insert(T_LEASES).values(
                            pipeline=pipeline, holder=holder, acquired_at=now, expires_at=now + ttl, generation=fresh
                        )
                    )
            except sa.exc.IntegrityError:
                return None, ""
            return fresh, ""
        live = row[1] > now
        if row[0] != holder and live and not _holder_is_dead(row[0]):
            return None, str(row[0])
        if row[0] == holder and live:
            generation = int(row[2])
            conn.execute(sa.update(T_LEASES).where(T_LEASES.c.pipeline == pipeline).values(expires_at=now + ttl))
            return generation, ""
        generation = max(int(row[2]) + 1, fresh)
        conn.execute(
            sa.update(T_LEASES)
            .where(T_LEASES.c.pipeline == pipeline)
            .values(holder=holder, acquired_at=now, expires_at=now + ttl, generation=generation)
        )
        return generation, ""

    def _end_stuck_sessions(self, conn: Connection, pipeline: str, holder: str, now: datetime) -> None:
        """Before locking the lease row to take an expired lease (PostgreSQL): end the old
        holder's sessions that have sat in one transaction longer than STUCK_TRANSACTION.

        A holder stopped mid-transaction (SIGSTOP, a suspended VM) keeps the lease row locked;
        idle_in_transaction_session_timeout ends such a session only when it stopped between
        statements, not inside a pipelined batch, so the takeover would wait on the lock for
        good. Its lease has expired, and every write it could still make is fenced by the
        lease generation, so ending its transaction loses nothing."""
        row = conn.execute(
            sa.select(T_LEASES.c.holder, T_LEASES.c.expires_at).where(T_LEASES.c.pipeline == pipeline)
        ).first()
        if row is None or row[0] == holder or row[1] > now:
            return
        ended = conn.exec_driver_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database() AND pid <> pg_backend_pid() "
            "AND xact_start < clock_timestamp() - %s",
            (session_name(row[0]), STUCK_TRANSACTION),
        ).scalar()
        if ended:
            import structlog

            structlog.get_logger("ferryman.state").warning(
                "lease.stuck_sessions_ended",
                pipeline=pipeline,
                holder=describe_holder(row[0]),
                sessions=ended,
                note="the expired holder sat inside a transaction holding the lease row",
            )

    def renew_lease(self, pipeline: str, ttl: timedelta, holder: str | None = None) -> bool:
        """Extend a lease this holder has, at the generation it took; never takes one.
        False: the lease is not ours any more (and the tenure is marked lost)."""
        holder = holder or self.holder
        tenure = self.tenures.get(pipeline) if holder == self.holder else None
        began = time.monotonic()
        with self.engine.begin() as conn:
            where = [T_LEASES.c.pipeline == pipeline, T_LEASES.c.holder == holder]
            if tenure is not None:
                where.append(T_LEASES.c.generation == tenure.generation)
            result = conn.execute(sa.update(T_LEASES).where(*where).values(expires_at=self._db_now(conn) + ttl))
            renewed = bool(result.rowcount == 1)
        if tenure is not None:
            if renewed and not tenure.lost:
                tenure.renewed = max(tenure.renewed, began)
            else:
                tenure.lost = True
        return renewed

    def release_lease(self, pipeline: str, holder: str | None = None) -> None:
        """Give the lease back, if it is still ours (at our generation)."""
        holder = holder or self.holder
        tenure = self.tenures.pop(pipeline, None) if holder == self.holder else None
        with self.engine.begin() as conn:
            where = [T_LEASES.c.pipeline == pipeline, T_LEASES.c.holder == holder]
            if tenure is not None:
                where.append(T_LEASES.c.generation == tenure.generation)
            conn.execute(sa.delete(T_LEASES).where(*where))

    # -- scheduled slots ---------------------------------------------------------------
    def claim_slot(self, pipeline: str, slot_at: datetime, ttl: timedelta) -> SlotClaim:
        """Claim the scheduled slot ``slot_at`` and take the pipeline's lease, in one transaction.

        Every instance computes the same slots, so the primary key decides: the first insert
        of ``(pipeline, slot_at)`` wins, a concurrent one waits for it and then does nothing.
        When the lease is held elsewhere (a run still going) nothing is kept: the slot is
        skipped, as one instance skips a slot that comes while the pipeline runs.
        """
        now = utcnow()
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        claim = (
            insert(T_SLOTS)
            .values(pipeline=pipeline, slot_at=slot_at, instance=self.instance, claimed_at=now)
            .on_conflict_do_nothing()
            .returning(T_SLOTS.c.instance)  # a row only when this insert made the claim
        )
        where = (T_SLOTS.c.pipeline == pipeline, T_SLOTS.c.slot_at == slot_at)
        with self.engine.connect() as conn, conn.begin() as transaction:
            if conn.execute(claim).first() is None:
                by = conn.execute(sa.select(T_SLOTS.c.instance).where(*where)).scalar()
                return SlotClaim("taken", by)
            began = time.monotonic()
            generation, blocking = self._take_lease(conn, pipeline, ttl, self.holder)
            if generation is None:
                transaction.rollback()
                return SlotClaim("busy", describe_holder(blocking) if blocking else None)
            # Old claims are pruned, but never the one just made: a slot older than the
            # retention (a missed run coalesced after a long outage) must stay claimed, or
            # another instance could claim and run it again.
            conn.execute(
                sa.delete(T_SLOTS).where(
                    T_SLOTS.c.pipeline == pipeline,
                    T_SLOTS.c.slot_at < now - SLOT_RETENTION,
                    T_SLOTS.c.slot_at != slot_at,
                )
            )
        self.tenures[pipeline] = Tenure(generation, ttl.total_seconds(), began)
        return SlotClaim("claimed")

    def abandon_slot(self, pipeline: str, slot_at: datetime) -> None:
        """Give back a slot this instance claimed but will not run (it is stopping): the
        claim and the lease go together, as they came."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(T_SLOTS).where(
                    T_SLOTS.c.pipeline == pipeline,
                    T_SLOTS.c.slot_at == slot_at,
                    T_SLOTS.c.instance == self.instance,
                    T_SLOTS.c.run_id.is_(None),
                )
            )
            conn.execute(sa.delete(T_LEASES).where(T_LEASES.c.pipeline == pipeline, T_LEASES.c.holder == self.holder))
        self.tenures.pop(pipeline, None)

    def slot_ran(self, pipeline: str, slot_at: datetime, run_id: int) -> None:
        """Note which run served a claimed slot."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(T_SLOTS)
                .where(T_SLOTS.c.pipeline == pipeline, T_SLOTS.c.slot_at == slot_at)
                .values(run_id=run_id)
            )

    def slots(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        """Claimed slots, oldest first (kept for a week)."""
        query = sa.select(T_SLOTS).order_by(T_SLOTS.c.pipeline, T_SLOTS.c.slot_at)
        if pipeline:
            query = query.where(T_SLOTS.c.pipeline == pipeline)
        with self._reading() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def lease_holder(self, pipeline: str) -> tuple[str, datetime] | None:
        with self._reading() as conn:
            row = conn.execute(
                sa.select(T_LEASES.c.holder, T_LEASES.c.expires_at).where(
                    T_LEASES.c.pipeline == pipeline, T_LEASES.c.expires_at > self._db_now(conn)
                )
            ).first()
        if row is None or _holder_is_dead(row[0]):
            return None
        return (describe_holder(row[0]), row[1])

    # -- reset ------------------------------------------------------------------------
    def reset_pipeline(self, pipeline: str, link_pairs: Sequence[tuple[str, str]]) -> None:
        """Forget where a pipeline was: cursor, checkpoints, intents and its links."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(T_CURSORS).where(T_CURSORS.c.pipeline == pipeline))
            conn.execute(sa.delete(T_CHECKPOINTS).where(T_CHECKPOINTS.c.pipeline == pipeline))
            conn.execute(sa.delete(T_INTENTS).where(T_INTENTS.c.pipeline == pipeline))
            for src, dst in link_pairs:
                conn.execute(sa.delete(T_LINKS).where(T_LINKS.c.src == src, T_LINKS.c.dst == dst))
                conn.execute(sa.delete(T_FINGERPRINTS).where(T_FINGERPRINTS.c.src == src, T_FINGERPRINTS.c.dst == dst))


def _redacted(value: Any) -> Any:
    """``value`` with every string in it (keys included) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {_redacted(k) if isinstance(k, str) else k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _outage_of(
    context: sa.engine.ExceptionContext, dialect: str, *, where: str, busy_timeout: float
) -> StateUnavailable | None:
    original = context.original_exception
    if dialect == "sqlite":
        return StateUnavailable.from_sqlite(original, where=where, busy_timeout=busy_timeout)
    if context.is_disconnect or isinstance(
        context.sqlalchemy_exception, sa.exc.OperationalError | sa.exc.InterfaceError
    ):
        # psycopg's OperationalError family: refused, timed out, gone away, shutting down,
        # out of disk, lock or statement timeout; a bug in our SQL is a ProgrammingError
        lines = [line.strip() for line in str(original).splitlines() if line.strip()]
        detail = redact(lines[0] if lines else type(original).__name__)
        if context.connection is None or context.is_disconnect:
            return StateUnavailable(f"unreachable ({detail})", where=where, kind="unreachable")
        return StateUnavailable(f"not usable right now ({detail})", where=where)
    return None


def _busy_timeout(url: str) -> float:
    if not url.startswith("sqlite"):
        return DEFAULT_BUSY_TIMEOUT
    value = sa.engine.make_url(url).query.get("timeout")
    if value is None:
        return DEFAULT_BUSY_TIMEOUT
    try:
        seconds = float(value if isinstance(value, str) else value[0])
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigError(f"timeout={value!r} in the SQLite URL is not a number of seconds", path="state.url")
    return seconds


#: Timeouts on every PostgreSQL session, so that no state call waits forever: a server that
#: stops answering, a lock held by a stalled peer, a peer stalled inside a transaction. Each
#: can be overridden in the URL (``?connect_timeout=5``, ``?options=-c lock_timeout=2s``).
PG_CONNECT_TIMEOUT = 10  # seconds
PG_SETTINGS = {
    # a statement (a page commit, a claim) that runs this long is stuck, not busy
    "statement_timeout": "120s",
    # waiting for a lock: a claim or a commit waits this long for another instance's transaction
    "lock_timeout": "15s",
    # a process stopped (SIGSTOP, a suspended VM) inside a transaction holds its locks until
    # this ends the session: every state transaction is a few statements with no wait between
    # them, and a lease is fenced by generation, so the stalled process loses nothing by it
    "idle_in_transaction_session_timeout": "5s",
}
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


def _postgres_timeouts(url: str) -> dict[str, Any]:
    """libpq connect arguments with the timeouts above, except where the URL sets its own."""
    query = sa.engine.make_url(url).query
    args: dict[str, Any] = {k: v for k, v in PG_KEEPALIVES.items() if k not in query}
    if "connect_timeout" not in query:
        args["connect_timeout"] = PG_CONNECT_TIMEOUT
    given = " ".join(query["options"] if isinstance(query.get("options"), tuple) else [str(query.get("options", ""))])
    settings = [f"-c {name}={value}" for name, value in PG_SETTINGS.items() if name not in given]
    if settings:
        args["options"] = " ".join(filter(None, [given, *settings]))
    return args


def session_name(holder: str) -> str:
    """The PostgreSQL ``application_name`` of a lease holder's sessions: another instance
    that takes over an expired lease can then end the sessions a stalled holder left inside
    a transaction (they hold the lease row's lock until they end)."""
    import hashlib

    return "ferryman " + hashlib.sha256(holder.encode()).hexdigest()[:16]


#: a transaction of ours older than this is stuck (every state transaction is a few
#: statements with no wait between them): one of an expired holder's is ended at a takeover
STUCK_TRANSACTION = timedelta(seconds=10)


def _make_engine(url: str, busy_timeout: float = DEFAULT_BUSY_TIMEOUT, *, application_name: str = "ferryman") -> Engine:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database or ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": busy_timeout})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy issue BEGIN itself (pysqlite's implicit BEGIN is deferred and
            # breaks lease atomicity); WAL so the CLI can read while the daemon writes.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # A writer takes the write lock when it begins (a deferred BEGIN that writes
            # later can fail with SQLITE_BUSY at once, past busy_timeout); a reader
            # (StateStore._reading) begins deferred and never takes it: in WAL mode it
            # reads its snapshot beside the writer instead of queueing behind it.
            read = conn.get_execution_options().get(READ_OPTION, False)
            conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql"):
        try:
            return sa.create_engine(
                url,
                pool_pre_ping=True,
                pool_size=5,
                max_overflow=5,
                connect_args={"application_name": application_name, **_postgres_timeouts(url)},
            )
        except ModuleNotFoundError:
            raise StateError("PostgreSQL state needs psycopg: pip install 'ferryman[postgres]'") from None
    raise StateError(f"unsupported state URL {redact(url)!r}: use sqlite:///PATH or postgresql://...")
