"""Rate budgets shared through the state database, for several instances.

:class:`DatabaseRateBudget` is the :class:`~ferryman.http.RateBudget` of the HTTP layer
kept in the ``rate_budgets`` table: the same GCRA as the in-memory budget (each key's
*theoretical arrival time* moves one interval per request), but read and moved under a
row lock in one transaction, so two instances using one app's credentials draw from one
budget and together stay under its limit. ``not_before`` blocks (``Retry-After``) are
shared the same way.

It costs one short transaction per request, so it is used where it is needed: when the
state store is PostgreSQL (several instances). With SQLite one process does the work and
:class:`RestartSafeRateBudget` is used: the in-memory GCRA, whose blocks are also written to
the table and read back at start-up, so that a daemon killed (``kill -9``, OOM, a crash loop
under systemd) while an app had asked it to wait does not come back and call early.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ferryman.http import HttpRegistry, InMemoryRateBudget
from ferryman.state.models import RateBudgetRow
from ferryman.timeutil import UTC, ensure_utc, utcnow

if TYPE_CHECKING:
    from ferryman.http import RateLimitOptions
    from ferryman.state import StateStore

T_BUDGETS = RateBudgetRow.__table__  # type: ignore[attr-defined]

__all__ = ["DatabaseRateBudget", "RestartSafeRateBudget", "make_registry"]


class DatabaseRateBudget:
    """A :class:`~ferryman.http.RateBudget` in the state database (atomic per key across processes)."""

    def __init__(self, store: StateStore, *, slack: float = 0.01) -> None:
        self.store = store
        self.slack = slack

    def _row(self, conn: sa.Connection, key: str) -> tuple[float, datetime | None]:
        select = sa.select(T_BUDGETS.c.tat, T_BUDGETS.c.blocked_until).where(T_BUDGETS.c.key == key).with_for_update()
        row = conn.execute(select).first()
        if row is None:
            if self.store.dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
            conn.execute(insert(T_BUDGETS).values(key=key, tat=0.0, blocked_until=None).on_conflict_do_nothing())
            row = conn.execute(select).first()
        assert row is not None
        return float(row[0]), row[1]

    def _acquire(self, key: str, limit: RateLimitOptions | None, now: datetime) -> float:
        t = now.timestamp()
        with self.store.engine.begin() as conn:
            tat, blocked = self._row(conn, key)
            start = t
            if blocked is not None:
                start = max(start, blocked.timestamp())
            if limit is not None:
                start = max(start, tat)
                conn.execute(
                    sa.update(T_BUDGETS)
                    .where(T_BUDGETS.c.key == key)
                    .values(tat=start + limit.interval * (1 + self.slack))
                )
            return start - t

    async def acquire(self, key: str, limit: RateLimitOptions | None, now: datetime) -> float:
        return await asyncio.to_thread(self._acquire, key, limit, now)

    def _block(self, key: str, when: datetime) -> None:
        when = ensure_utc(when)
        with self.store.engine.begin() as conn:
            _, blocked = self._row(conn, key)
            if blocked is None or when > blocked:
                conn.execute(sa.update(T_BUDGETS).where(T_BUDGETS.c.key == key).values(blocked_until=when))

    async def block_until(self, key: str, when: datetime) -> None:
        await asyncio.to_thread(self._block, key, when)

    def _not_before(self, key: str) -> datetime | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(T_BUDGETS.c.blocked_until).where(T_BUDGETS.c.key == key)).first()
        if row is None or row[0] is None:
            return None
        value: datetime = row[0]
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    async def not_before(self, key: str) -> datetime | None:
        return await asyncio.to_thread(self._not_before, key)

    def _late(self, key: str, seconds: float) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(sa.update(T_BUDGETS).where(T_BUDGETS.c.key == key).values(tat=T_BUDGETS.c.tat + seconds))

    async def late(self, key: str, seconds: float) -> None:
        if seconds > 0:
            await asyncio.to_thread(self._late, key, seconds)


class RestartSafeRateBudget(InMemoryRateBudget):
    """The in-memory budget of a single instance, with its blocks surviving a restart.

    Sending slots stay in memory (exact, and free of a transaction per request). A block
    (``Retry-After``, a rate-limit reset, a host deferral) is also written to the
    ``rate_budgets`` table before the request that met it is retried, and the blocks still
    in the future are read back when the budget is built: a daemon killed while an app had
    asked it to wait comes back waiting. A block is written only when it moves a key's
    block later, so a steady stream of slow-down hints costs no more writes than there are
    new deadlines.
    """

    def __init__(self, store: StateStore, *, slack: float = 0.01, now: datetime | None = None) -> None:
        super().__init__(slack=slack)
        self.database = DatabaseRateBudget(store, slack=slack)
        self._blocked.update(pending_blocks(store, now or utcnow()))

    async def block_until(self, key: str, when: datetime) -> None:
        when = ensure_utc(when)
        with self._lock:
            current = self._blocked.get(key)
            if current is not None and when <= current:
                return
            self._blocked[key] = when
        await self.database.block_until(key, when)


def pending_blocks(store: StateStore, now: datetime) -> dict[str, datetime]:
    """The blocks in the state database that still lie after ``now``, by key."""
    query = sa.select(T_BUDGETS.c.key, T_BUDGETS.c.blocked_until).where(T_BUDGETS.c.blocked_until > now)
    with store.engine.connect() as conn:
        return {key: when for key, when in conn.execute(query)}


def make_registry(store: StateStore | None) -> HttpRegistry:
    """The process's HTTP registry.

    PostgreSQL (several instances): budgets shared through the database. SQLite (one
    instance): in memory, with blocks kept across restarts. No store: in memory only.
    """
    if store is None:
        return HttpRegistry()
    if store.dialect == "postgresql":
        return HttpRegistry(budget=DatabaseRateBudget(store))
    return HttpRegistry(budget=RestartSafeRateBudget(store))
