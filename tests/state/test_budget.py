"""The single-instance rate budget keeps its blocks (``Retry-After``, deferrals) across a restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from ferryman.http import RateLimitOptions
from ferryman.state import StateStore
from ferryman.state.budget import T_BUDGETS, DatabaseRateBudget, RestartSafeRateBudget, make_registry

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def store(tmp_path: Path) -> StateStore:
    return StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")


def stored(db: StateStore) -> dict[str, datetime | None]:
    with db.engine.connect() as conn:
        return dict(conn.execute(sa.select(T_BUDGETS.c.key, T_BUDGETS.c.blocked_until)).all())  # type: ignore[arg-type]


async def test_a_block_outlives_the_budget_that_set_it(tmp_path: Path) -> None:
    db = store(tmp_path)
    first = RestartSafeRateBudget(db, now=NOW)
    await first.block_until("rate:app|k", NOW + timedelta(seconds=3))
    after_restart = RestartSafeRateBudget(db, now=NOW + timedelta(seconds=1))
    assert await after_restart.not_before("rate:app|k") == NOW + timedelta(seconds=3)
    wait = await after_restart.acquire("rate:app|k", RateLimitOptions(requests=10, per=1), NOW + timedelta(seconds=1))
    assert wait == 2.0


async def test_blocks_already_over_are_not_brought_back(tmp_path: Path) -> None:
    db = store(tmp_path)
    await RestartSafeRateBudget(db, now=NOW).block_until("host:app", NOW + timedelta(seconds=3))
    later = RestartSafeRateBudget(db, now=NOW + timedelta(seconds=3))
    assert await later.not_before("host:app") is None
    assert await later.acquire("host:app", None, NOW + timedelta(seconds=3)) == 0.0


async def test_an_earlier_block_neither_shortens_nor_rewrites_a_later_one(tmp_path: Path) -> None:
    db = store(tmp_path)
    budget = RestartSafeRateBudget(db, now=NOW)
    await budget.block_until("rate:app|k", NOW + timedelta(seconds=10))
    with db.engine.begin() as conn:  # a marker: an unneeded write would overwrite it
        conn.execute(sa.update(T_BUDGETS).values(blocked_until=NOW + timedelta(seconds=11)))
    await budget.block_until("rate:app|k", NOW + timedelta(seconds=5))
    assert await budget.not_before("rate:app|k") == NOW + timedelta(seconds=10)
    assert stored(db)["rate:app|k"] == NOW + timedelta(seconds=11)
    await budget.block_until("rate:app|k", NOW + timedelta(seconds=20))
    assert stored(db)["rate:app|k"] == NOW + timedelta(seconds=20)


async def test_sending_slots_stay_in_memory(tmp_path: Path) -> None:
    """Pacing needs no transaction per request: only blocks reach the table."""
    db = store(tmp_path)
    budget = RestartSafeRateBudget(db, now=NOW)
    limit = RateLimitOptions(requests=2, per=1)
    waits = [await budget.acquire("rate:app|k", limit, NOW) for _ in range(3)]
    assert waits == pytest.approx([0.0, 0.505, 1.01], abs=1e-6)
    assert stored(db) == {}


def test_sqlite_gets_the_restart_safe_budget_and_no_store_the_plain_one(tmp_path: Path) -> None:
    assert isinstance(make_registry(store(tmp_path)).budget, RestartSafeRateBudget)
    plain = make_registry(None).budget
    assert not isinstance(plain, RestartSafeRateBudget | DatabaseRateBudget)
