"""Rate budgets shared through the state database: two instances stay under one limit."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from ferryman.http import RateLimitOptions
from ferryman.sandbox import SimulatorThread
from ferryman.state import StateStore
from ferryman.state.budget import DatabaseRateBudget, make_registry
from ferryman_connectors.rest.simulator import GenericSimulator
from tests.conftest import ferryman_cmd

pytestmark = pytest.mark.postgres


def pg_only(state_url: str) -> None:
    if not state_url.startswith("postgresql"):
        pytest.skip("shared budgets are what several instances on PostgreSQL use")


async def test_two_budgets_on_one_database_never_hand_out_the_same_slot(state_url: str) -> None:
    """Two stores (as two instances would have) drawing from one key: slots stay one interval apart."""
    one, two = DatabaseRateBudget(StateStore.open(state_url)), DatabaseRateBudget(StateStore.open(state_url))
    limit = RateLimitOptions(requests=50, per=1)
    now = datetime.now(UTC)

    async def draw(budget: DatabaseRateBudget) -> list[float]:
        return [await budget.acquire("rate:app|k", limit, now) for _ in range(25)]

    a, b = await asyncio.gather(draw(one), draw(two))
    slots = sorted(a + b)
    gaps = [y - x for x, y in itertools.pairwise(slots)]
    assert min(gaps) >= limit.interval * 0.999, "two instances got overlapping slots"
    assert slots[-1] == pytest.approx(49 * limit.interval * 1.01, rel=0.02)


async def test_a_block_set_by_one_instance_holds_the_other(state_url: str) -> None:
    one, two = DatabaseRateBudget(StateStore.open(state_url)), DatabaseRateBudget(StateStore.open(state_url))
    later = datetime.now(UTC).replace(microsecond=0).replace(year=2099)
    await one.block_until("host:app", later)
    assert await two.not_before("host:app") == later
    wait = await two.acquire("host:app", None, datetime.now(UTC))
    assert wait > 3600


def test_registry_shares_budgets_only_on_postgresql(state_url: str) -> None:
    store = StateStore.open(state_url)
    budget = make_registry(store).budget
    assert isinstance(budget, DatabaseRateBudget) == state_url.startswith("postgresql")


def test_two_instances_pulling_from_one_app_stay_under_its_limit(tmp_path: Path, state_url: str) -> None:
    """Two `ferryman sync` processes, one PostgreSQL state store, one sandbox app that allows L
    requests per window: together they never pass L in any window and never see a 429."""
    pg_only(state_url)
    limit, window = 40, 8.0  # the app allows 40 requests per 8 s: 300/min
    sim = GenericSimulator(records=120, seed=5, rate_limit=limit, window=window)
    with SimulatorThread(sim) as app:
        stream = {
            "record": "ticket",
            "path": "/tickets",
            "records_path": "data",
            "pagination": {"style": "page", "size_param": "per_page", "max_size": 5, "pages_path": "total_pages"},
            "fields": {"subject": "subject", "status": "status"},
        }
        config = tmp_path / "ferryman.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "state": {"url": state_url},
                    "log": {"format": "json", "level": "warning"},
                    "systems": {
                        "app": {
                            "connector": "rest",
                            "base_url": app.url + "/api",
                            "rate_limit": f"{limit}/{window:g}s",
                            "auth": {"type": "header", "name": "X-API-Key", "key": "${SANDBOX_KEY}"},
                            "streams": {"tickets": stream},
                        },
                        "out": {
                            "connector": "csv",
                            "directory": str(tmp_path / "out"),
                            "streams": {"one": "ticket", "two": "ticket"},
                        },
                    },
                    "pipelines": {
                        "first": {"from": "app.tickets", "to": "out.one", "page_size": 5},
                        "second": {"from": "app.tickets", "to": "out.two", "page_size": 5},
                    },
                }
            )
        )
        env = {**os.environ, "SANDBOX_KEY": "sandbox-key"}
        procs = [
            subprocess.Popen(
                [*ferryman_cmd(), "--config", str(config), "sync", name, "--no-progress"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for name in ("first", "second")
        ]
        outputs = [p.communicate(timeout=180) for p in procs]
        for proc, (out, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, out + err
            assert "created 120" in out
        stats = sim.stats
        assert stats.requests >= 2 * 24  # each needs 120/5 pages
        assert stats.throttled == 0, f"{stats.throttled} requests were throttled"
        assert stats.max_in_window <= limit
