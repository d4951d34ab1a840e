"""Who runs each pipeline: the ``leases`` table. A lease has a holder, an expiry and a
generation; every take by another holder (or after an expiry or a release) starts a higher
generation, which is what the page transaction is fenced on (``StateStore._fence``).

This repository holds the SQL; the store facade keeps this process's tenures (what it
took, and when it last renewed) and decides when a write must be refused."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from ferryman.holders import describe_holder
from ferryman.holders import holder_is_dead as _holder_is_dead
from ferryman.state.db import session_name
from ferryman.state.models import LeaseRow
from ferryman.state.sql import reading
from ferryman.timeutil import UTC, utcnow

__all__ = ["STUCK_TRANSACTION", "T_LEASES", "Leases", "Tenure"]

T_LEASES = LeaseRow.__table__  # type: ignore[attr-defined]

#: a transaction of ours older than this is stuck (every state transaction is a few
#: statements with no wait between them): one of an expired holder's is ended at a takeover
STUCK_TRANSACTION = timedelta(seconds=10)

_FENCE_SQLITE = "SELECT holder, generation FROM leases WHERE pipeline = ?"
_FENCE_POSTGRES = "SELECT holder, generation FROM leases WHERE pipeline = %s FOR UPDATE"


@dataclass
class Tenure:
    """This process's hold on one pipeline's lease: the generation it took, and when (by
    the monotonic clock) the last take or renewal began."""

    generation: int
    ttl: float  # seconds
    renewed: float  # time.monotonic() at the start of the last successful take or renewal
    lost: bool = False


class Leases:
    """The pipeline leases of one state database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def db_now(self, conn: Connection) -> datetime:
        """Now by the database's clock where several hosts share it (PostgreSQL), so a host
        whose clock runs ahead cannot judge a live lease expired; SQLite serves one host."""
        if self.dialect == "postgresql":
            value = conn.exec_driver_sql("SELECT clock_timestamp()").scalar()
            if isinstance(value, datetime):
                return value.astimezone(UTC)
        return utcnow()

    def fence_row_in(self, conn: Connection, pipeline: str) -> tuple[str, int] | None:
        """(holder, generation) of the pipeline's lease, locked for the caller's transaction
        on PostgreSQL (SQLite's BEGIN IMMEDIATE already serialises writers)."""
        statement = _FENCE_SQLITE if self.dialect == "sqlite" else _FENCE_POSTGRES
        row = conn.exec_driver_sql(statement, (pipeline,)).first()
        return None if row is None else (str(row[0]), int(row[1]))

    def take_in(
        self, conn: Connection, pipeline: str, ttl: timedelta, holder: str, *, stuck: timedelta = STUCK_TRANSACTION
    ) -> tuple[int | None, str]:
        """Take the lease inside ``conn``'s transaction: (its generation, ''), or (None, the
        holder of the live lease that stands in the way: '' when not known yet). The same
        holder's live lease is kept with its generation (a run taking the lease its slot
        claim took); any other take (after another holder, after expiry, after a release)
        starts a new, higher generation."""
        now = self.db_now(conn)
        if self.dialect == "sqlite":
            conn.exec_driver_sql("SELECT 1")  # BEGIN IMMEDIATE is set by the engine's begin hook
        else:
            self._end_stuck_sessions(conn, pipeline, holder, now, stuck)
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

    def _end_stuck_sessions(
        self, conn: Connection, pipeline: str, holder: str, now: datetime, stuck: timedelta
    ) -> None:
        """Before locking the lease row to take an expired lease (PostgreSQL): end the old
        holder's sessions that have sat in one transaction longer than ``stuck``.

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
            (session_name(row[0]), stuck),
        ).scalar()
        if ended:
            structlog.get_logger("ferryman.state").warning(
                "lease.stuck_sessions_ended",
                pipeline=pipeline,
                holder=describe_holder(row[0]),
                sessions=ended,
                note="the expired holder sat inside a transaction holding the lease row",
            )

    def renew(self, pipeline: str, ttl: timedelta, holder: str, generation: int | None) -> bool:
        """Extend the lease ``holder`` has (at ``generation``, when given); never takes one."""
        with self.engine.begin() as conn:
            where = [T_LEASES.c.pipeline == pipeline, T_LEASES.c.holder == holder]
            if generation is not None:
                where.append(T_LEASES.c.generation == generation)
            result = conn.execute(sa.update(T_LEASES).where(*where).values(expires_at=self.db_now(conn) + ttl))
            return bool(result.rowcount == 1)

    def release(self, pipeline: str, holder: str, generation: int | None) -> None:
        with self.engine.begin() as conn:
            self.release_in(conn, pipeline, holder, generation)

    def release_in(self, conn: Connection, pipeline: str, holder: str, generation: int | None = None) -> None:
        where = [T_LEASES.c.pipeline == pipeline, T_LEASES.c.holder == holder]
        if generation is not None:
            where.append(T_LEASES.c.generation == generation)
        conn.execute(sa.delete(T_LEASES).where(*where))

    def live_holder(self, pipeline: str) -> tuple[str, datetime] | None:
        """(holder as stored, expiry) of the pipeline's live lease whose holder is not
        known dead, if any."""
        with reading(self.engine) as conn:
            row = conn.execute(
                sa.select(T_LEASES.c.holder, T_LEASES.c.expires_at).where(
                    T_LEASES.c.pipeline == pipeline, T_LEASES.c.expires_at > self.db_now(conn)
                )
            ).first()
        if row is None or _holder_is_dead(row[0]):
            return None
        return (str(row[0]), row[1])
