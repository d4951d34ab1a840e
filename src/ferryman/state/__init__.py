"""The state store: cursors, links, intents, runs, dead letters, checkpoints, leases.

SQLite by default, PostgreSQL for several instances. :class:`StateStore` is a facade over
one repository per table family, each holding its own SQL and row mapping:

=====================  =============================================================
:mod:`.cursors`        where each pipeline (side) has read up to
:mod:`.links`          source record -> target record, and the slim keyed form
:mod:`.intents`        creates about to happen on a target that cannot be looked up
:mod:`.letters`        dead letters
:mod:`.checkpoints`    what a transactional sink had made durable
:mod:`.outbox`         outbound webhook events, staged until their page commits
:mod:`.runs`           runs, their outcome and counts
:mod:`.leases`         who runs each pipeline, and the generation writes are fenced on
:mod:`.slots`          scheduled slots claimed by an instance
:mod:`.hosts`          hosts that asked to be left alone until a time
:mod:`.history`        per-record events and the conflict journal
:mod:`.budget`         request budgets per host, shared by instances (used by the HTTP layer)
=====================  =============================================================

The facade owns the database engine, this process's lease tenures and the fence, and the
ONE writer of the page transaction: :meth:`StateStore.commit_page` calls each repository's
``*_in(conn, ...)`` writes inside its one transaction, which is what makes the delivery
contract hold across crashes. Repositories write on their own only outside a page (a
command, a lease renewal, a run row).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ferryman.cursor import Cursor
from ferryman.errors import LeaseLost, StateError, StateUnavailable
from ferryman.holders import default_instance_name, describe_holder, host_id
from ferryman.holders import start_token as _start_token
from ferryman.redact import redact, redact_url
from ferryman.state import migrations
from ferryman.state.checkpoints import T_CHECKPOINTS as T_CHECKPOINTS
from ferryman.state.checkpoints import Checkpoints
from ferryman.state.cursors import T_CURSORS as T_CURSORS
from ferryman.state.cursors import Cursors
from ferryman.state.db import DEFAULT_BUSY_TIMEOUT as DEFAULT_BUSY_TIMEOUT
from ferryman.state.db import PG_SETTINGS as PG_SETTINGS
from ferryman.state.db import StatePool, busy_timeout, make_engine, outage_of
from ferryman.state.db import session_name as session_name
from ferryman.state.history import Conflict, Event, History, NewConflict, NewEvent
from ferryman.state.hosts import T_HOSTS as T_HOSTS
from ferryman.state.hosts import Hosts
from ferryman.state.intents import T_INTENTS as T_INTENTS
from ferryman.state.intents import Intents
from ferryman.state.leases import STUCK_TRANSACTION, Leases, Tenure
from ferryman.state.leases import T_LEASES as T_LEASES
from ferryman.state.letters import T_DLQ as T_DLQ
from ferryman.state.letters import DeadLetter, DeadLetters, NewDeadLetter
from ferryman.state.links import T_FINGERPRINTS as T_FINGERPRINTS
from ferryman.state.links import T_KEYED as T_KEYED
from ferryman.state.links import T_LINKS as T_LINKS
from ferryman.state.links import Link, Links
from ferryman.state.models import SchemaVersion
from ferryman.state.outbox import Outbox, OutboxEvent
from ferryman.state.runs import T_RUNS as T_RUNS
from ferryman.state.runs import Runs
from ferryman.state.slots import SLOT_RETENTION as SLOT_RETENTION
from ferryman.state.slots import T_SLOTS as T_SLOTS
from ferryman.state.slots import SlotClaim, Slots
from ferryman.state.sql import READ_OPTION as READ_OPTION
from ferryman.state.sql import reading
from ferryman.timeutil import utcnow

__all__ = [
    "Conflict",
    "DeadLetter",
    "Event",
    "History",
    "Link",
    "NewConflict",
    "NewDeadLetter",
    "NewEvent",
    "OutboxEvent",
    "PageCommit",
    "SlotClaim",
    "StateStore",
    "default_instance_name",
    "host_id",
]

T_SCHEMA = SchemaVersion.__table__  # type: ignore[attr-defined]

#: A run stops writing (self-fences) once this share of state.lease_ttl has passed, by its
#: own monotonic clock, since its lease was last renewed, until a renewal succeeds again: a
#: process that stalled (SIGSTOP, a suspended VM, a long pause) and resumes finds out that
#: its lease may have moved before it sends one more write, not after.
FENCE_SHARE = 0.5

P = ParamSpec("P")
T = TypeVar("T")


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
    #: outbound webhook events of this page; commit_page adds the ones staged for the
    #: targets the page names (see :mod:`ferryman.state.outbox`)
    outbox: list[OutboxEvent] = field(default_factory=list)

    def targets(self) -> set[str]:
        """The targets this page wrote to or checkpointed: whose staged outbox events it carries."""
        return {*self.checkpoints, *(dst for _, dst in self.links), *(dst for _, dst in self.unlinks)}


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
        self.busy_timeout = busy_timeout(url)
        #: the last outage this store met (kept after it was raised: a run records it as
        #: ``failed`` and carries on to its end, and the CLI still owes exit 75 for it)
        self.outage: StateUnavailable | None = None
        try:
            self.engine: Engine = make_engine(url, self.busy_timeout, application_name=session_name(self.holder))
        except OSError as exc:  # the directory of an SQLite file could not be made
            raise StateUnavailable(f"cannot create its directory: {exc.strerror or exc}", where=self.where) from None
        self.dialect = self.engine.dialect.name
        # -- the repositories, one per table family ---------------------------------------
        self.cursors = Cursors(self.engine)
        self.links = Links(self.engine)
        self.intents_repo = Intents(self.engine)
        self.letters = DeadLetters(self.engine)
        self.checkpoints = Checkpoints(self.engine)
        #: outbound webhook events: staged by the sink, written by commit_page
        self.outbox = Outbox(self.engine)
        self.runs_repo = Runs(self.engine, self.instance)
        self.leases = Leases(self.engine)
        self.slots_repo = Slots(self.engine)
        self.hosts = Hosts(self.engine)
        #: per-record events and the conflict journal (:mod:`ferryman.state.history`)
        self.history = History(self.engine)
        #: the leases this process holds, by pipeline (see :meth:`self_fence`)
        self.tenures: dict[str, Tenure] = {}
        self._pool: StatePool | None = None
        self._reader: StatePool | None = None
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
            error = outage_of(context, self.dialect, where=self.where, busy_timeout=self.busy_timeout)
            if error is not None:
                self.outage = error
                raise error

    def _reading(self) -> Connection:
        """A connection for reads only: on SQLite its transactions begin deferred, so a
        read never takes (or waits for) the write lock."""
        return reading(self.engine)

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

    async def read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """:meth:`call` for a read that must not queue behind a commit in flight (a run's
        link lookup while the previous page commits): on SQLite a reader thread of its own
        (WAL lets it read beside the writer, and it sees only what is committed)."""
        if self.dialect != "sqlite":
            return await self.call(fn, *args, **kwargs)
        with self._pool_lock:
            if self._reader is None:
                self._reader = StatePool(1, name="state-read")
            pool = self._reader
        context = contextvars.copy_context()
        future = pool.submit(lambda: context.run(fn, *args, **kwargs))
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
            reader, self._reader = self._reader, None
        for one in (pool, reader):
            if one is not None:
                one.shutdown()
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- the page transaction -----------------------------------------------------------
    def commit_page(self, commit: PageCommit) -> None:
        """Cursor, links, sink checkpoints, outbox events, intents and dead letters: all or
        nothing. The one writer of the page transaction: each repository writes its part
        inside it, in the order below.

        The outbound webhook events staged for the targets the page names are taken first
        and written with the rest: a commit that fails drops them with its page, which is
        read and written again (their ids are derived from the change, so the same events).

        Fenced: when the pipeline's lease is held by someone else, nothing is written and
        :class:`~ferryman.errors.LeaseLost` is raised. A run that stalled past its lease
        (a long GC pause, a suspended VM) while another instance took the pipeline over
        would otherwise commit its page, and move the cursor, beside the new holder's.
        The lease row is locked for the transaction (PostgreSQL), so a takeover waits for
        this commit or this commit sees the takeover; SQLite serialises writers anyway.
        """
        outbox = [*commit.outbox, *self.outbox.take(commit.targets())]
        pipeline = commit.pipeline
        with self.engine.begin() as conn:
            self._fence(conn, pipeline)
            for (src, dst), links in commit.links.items():
                self.links.upsert_in(conn, src, dst, links)
            for (src, dst), keys in commit.unlinks.items():
                self.links.unlink_in(conn, src, dst, keys)
            for dst, data in commit.checkpoints.items():
                self.checkpoints.write_in(conn, pipeline, dst, data)
            self.outbox.write_in(conn, outbox)
            if commit.resolved_intents:
                self.intents_repo.delete_in(conn, commit.resolved_intents)
            for dst, keys in commit.settled.items():  # before this page's letters: a key may be in both
                self.letters.settle_in(conn, pipeline, dst, keys)
            for letter in commit.dead_letters:
                self.letters.add_in(conn, pipeline, letter)
            self.letters.resolve_source_in(conn, pipeline, commit.resolved_refs)
            if commit.cursor is not None:
                self.cursors.write_in(conn, pipeline, commit.side, commit.cursor)
            for side, cursor in commit.cursors.items():
                self.cursors.write_in(conn, pipeline, side, cursor)
            if commit.events or commit.conflicts:
                self.history.write(conn, pipeline, commit.run_id, commit.events, commit.conflicts)
            if commit.run_id is not None and commit.counts:
                self.runs_repo.count_in(conn, commit.run_id, commit.counts)

    # -- the fence ------------------------------------------------------------------------
    def _fence(self, conn: Connection, pipeline: str) -> None:
        """Refuse to write for ``pipeline`` unless this process still holds the lease it
        took, with the generation it took it at.

        Without a tenure (a command that writes outside any run, such as ``dlq drop``), a
        lease held by someone else refuses too. The row is locked for the transaction on
        PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers."""
        row = self.leases.fence_row_in(conn, pipeline)
        tenure = self.tenures.get(pipeline)
        if tenure is None:
            if row is not None and row[0] != self.holder:
                raise self._lost(pipeline, row[0])
            return
        if row is None or row[0] != self.holder or row[1] != tenure.generation:
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

    # -- leases and slots (the facade keeps the tenures) -------------------------------------
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
        # STUCK_TRANSACTION read here, at call time: a test may shorten it on this module
        return self.leases.take_in(conn, pipeline, ttl, holder, stuck=STUCK_TRANSACTION)

    def renew_lease(self, pipeline: str, ttl: timedelta, holder: str | None = None) -> bool:
        """Extend a lease this holder has, at the generation it took; never takes one.
        False: the lease is not ours any more (and the tenure is marked lost)."""
        holder = holder or self.holder
        tenure = self.tenures.get(pipeline) if holder == self.holder else None
        began = time.monotonic()
        renewed = self.leases.renew(pipeline, ttl, holder, tenure.generation if tenure is not None else None)
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
        self.leases.release(pipeline, holder, tenure.generation if tenure is not None else None)

    def lease_holder(self, pipeline: str) -> tuple[str, datetime] | None:
        found = self.leases.live_holder(pipeline)
        return None if found is None else (describe_holder(found[0]), found[1])

    def claim_slot(self, pipeline: str, slot_at: datetime, ttl: timedelta) -> SlotClaim:
        """Claim the scheduled slot ``slot_at`` and take the pipeline's lease, in one transaction.

        Every instance computes the same slots, so the primary key decides: the first insert
        of ``(pipeline, slot_at)`` wins, a concurrent one waits for it and then does nothing.
        When the lease is held elsewhere (a run still going) nothing is kept: the slot is
        skipped, as one instance skips a slot that comes while the pipeline runs.
        """
        now = utcnow()
        with self.engine.connect() as conn, conn.begin() as transaction:
            made, by = self.slots_repo.claim_in(conn, pipeline, slot_at, self.instance, now)
            if not made:
                return SlotClaim("taken", by)
            began = time.monotonic()
            generation, blocking = self._take_lease(conn, pipeline, ttl, self.holder)
            if generation is None:
                transaction.rollback()
                return SlotClaim("busy", describe_holder(blocking) if blocking else None)
            self.slots_repo.prune_in(conn, pipeline, slot_at, now)
        self.tenures[pipeline] = Tenure(generation, ttl.total_seconds(), began)
        return SlotClaim("claimed")

    def abandon_slot(self, pipeline: str, slot_at: datetime) -> None:
        """Give back a slot this instance claimed but will not run (it is stopping): the
        claim and the lease go together, as they came."""
        with self.engine.begin() as conn:
            self.slots_repo.abandon_in(conn, pipeline, slot_at, self.instance)
            self.leases.release_in(conn, pipeline, self.holder)
        self.tenures.pop(pipeline, None)

    def slot_ran(self, pipeline: str, slot_at: datetime, run_id: int) -> None:
        """Note which run served a claimed slot."""
        self.slots_repo.ran(pipeline, slot_at, run_id)

    def slots(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        """Claimed slots, oldest first (kept for a week)."""
        return self.slots_repo.find(pipeline)

    # -- writes outside a page, fenced like one ------------------------------------------------
    def record_intents(self, pipeline: str, dst: str, items: Iterable[tuple[str, str, str]]) -> list[int]:
        """Durably note creates about to happen: (src_key, fingerprint, payload JSON).
        Fenced like a page commit: a run whose lease moved starts no write."""
        with self.engine.begin() as conn:
            self._fence(conn, pipeline)
            return [self.intents_repo.insert_in(conn, pipeline, dst, item) for item in items]

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
                self.links.upsert_in(conn, src, dst, [link])
                self.intents_repo.delete_one_in(conn, intent_id)
            if begin is not None:
                new_id = self.intents_repo.insert_in(conn, pipeline, dst, begin)
        return new_id

    def resolve_intent(
        self, intent_id: int, *, src: str | None = None, dst: str | None = None, link: Link | None = None
    ) -> None:
        if link is None or not (src and dst):
            self.intents_repo.delete(intent_id)
            return
        with self.engine.begin() as conn:
            self.links.upsert_in(conn, src, dst, [link])
            self.intents_repo.delete_in(conn, [intent_id])

    def reset_pipeline(self, pipeline: str, link_pairs: Sequence[tuple[str, str]]) -> None:
        """Forget where a pipeline was: cursor, checkpoints, intents and its links."""
        with self.engine.begin() as conn:
            self.cursors.forget_in(conn, pipeline)
            self.checkpoints.forget_in(conn, pipeline)
            self.intents_repo.forget_in(conn, pipeline)
            for src, dst in link_pairs:
                self.links.forget_in(conn, src, dst)

    # -- the rest: each a repository's, by the names callers have always used ------------------
    # cursors
    def get_cursor(self, pipeline: str, side: str = "forward") -> Cursor | None:
        return self.cursors.get(pipeline, side)

    def _set_cursor(self, conn: Connection, pipeline: str, side: str, cursor: Cursor) -> None:
        self.cursors.write_in(conn, pipeline, side, cursor)

    def hold_cursor(self, pipeline: str, cursor: Cursor | None, side: str = "forward") -> None:
        """Put the cursor back where a run began (``None``: no cursor at all): the run met a
        source it cannot trust (out of order, paging that does not progress), and records
        before the pages it committed may not have been read yet."""
        self.cursors.hold(pipeline, cursor, side)

    # links
    def keyed_target(self, src: str, dst: str) -> None:
        """Keep the links from ``src`` to ``dst`` (a target that holds each record under its
        source key: a CSV file) as slim fingerprint rows from now on (see :class:`Links`)."""
        self.links.keyed_target(src, dst)

    def links_for(self, src: str, dst: str, src_keys: Sequence[str]) -> dict[str, Link]:
        return self.links.links_for(src, dst, src_keys)

    def links_by_dst(self, src: str, dst: str, dst_keys: Sequence[str]) -> dict[str, Link]:
        return self.links.links_by_dst(src, dst, dst_keys)

    def linked_keys(self, src: str, dst: str, *, after: str | None = None, limit: int | None = None) -> list[str]:
        """Source keys linked from ``src`` to ``dst``, in key order, after ``after``."""
        return self.links.linked_keys(src, dst, after=after, limit=limit)

    def count_links(self, src: str, dst: str) -> int:
        return self.links.count(src, dst)

    # intents
    def intents(self, pipeline: str, dst: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        return self.intents_repo.find(pipeline, dst, state)

    def resolve_intent_by_key(self, pipeline: str, dst: str, src_key: str | None) -> None:
        self.intents_repo.delete_by_key(pipeline, dst, src_key)

    def mark_intent_unresolved(self, intent_id: int) -> None:
        self.intents_repo.mark_unresolved(intent_id)

    # checkpoints
    def get_checkpoint(self, pipeline: str, dst: str) -> dict[str, Any] | None:
        return self.checkpoints.get(pipeline, dst)

    def set_checkpoint(self, pipeline: str, dst: str, data: dict[str, Any] | None) -> None:
        self.checkpoints.set(pipeline, dst, data)

    # dead letters
    def add_dead_letters(self, pipeline: str, letters: Iterable[NewDeadLetter]) -> None:
        self.letters.add(pipeline, letters)

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
        return self.letters.find(pipeline, status, ids, kind=kind, oldest_first=oldest_first)

    def set_dead_letter_status(
        self, ids: Sequence[int], status: str, reason: str | None = None, *, kind: str | None = None
    ) -> int:
        return self.letters.set_status(ids, status, reason, kind=kind)

    def count_dead_letters(self) -> dict[str, int]:
        return self.letters.count_open()

    def count_open_conflicts(self) -> dict[str, int]:
        """Conflict-journal entries not restored, per pipeline (see :mod:`ferryman.state.history`)."""
        return self.history.count_open_conflicts()

    # runs
    def start_run(self, pipeline: str, trigger: str = "manual") -> int:
        """Note a run as ``running``, closing as ``interrupted`` any earlier run of the
        pipeline still marked ``running`` (the caller holds the lease: its process is gone)."""
        return self.runs_repo.start(pipeline, trigger)

    def finish_run(
        self, run_id: int, outcome: str, message: str | None = None, not_before: datetime | None = None
    ) -> None:
        self.runs_repo.finish(run_id, outcome, message, not_before)

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        return self.runs_repo.get(run_id)

    def last_runs(self) -> dict[str, dict[str, Any]]:
        """The latest run of each pipeline, as status shows it (see :meth:`Runs.latest`)."""
        return self.runs_repo.latest()

    def runs(self, pipeline: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return self.runs_repo.find(pipeline, limit)

    def close_stale_runs(self, pipeline: str) -> int:
        """Runs of ``pipeline`` left ``running`` by a process that stopped, closed as
        ``interrupted``. Only for the holder of the pipeline's lease (the next run)."""
        return self.runs_repo.close_interrupted(pipeline, why="a later run began")

    def close_interrupted_runs(self) -> int:
        """Close every run whose process is gone (its lease expired, its holder dead, or no
        lease at all) as ``interrupted``; runs whose holder lives are left alone. For the
        start of the daemon: status shows such runs so before, this records it."""
        return self.runs_repo.close_interrupted(None)

    # hosts
    def set_not_before(self, host: str, not_before: datetime, reason: str | None = None) -> None:
        self.hosts.set_not_before(host, not_before, reason)

    def not_before(self, hosts: Sequence[str]) -> tuple[str, datetime] | None:
        """The latest future deferral among ``hosts``, if any."""
        return self.hosts.not_before(hosts)

    def deferrals(self) -> list[dict[str, Any]]:
        return self.hosts.deferrals()
