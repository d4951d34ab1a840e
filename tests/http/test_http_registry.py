"""The shared registry: GCRA budgets per (host, credential), blocks, deferrals, and the backend seam."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest

from ferryman.http import (
    ApiKeyHeader,
    HttpClient,
    HttpOptions,
    HttpRegistry,
    InMemoryRateBudget,
    RateBudget,
    RateLimitOptions,
)

from .support import BASE, START, FakeClock

PER_SECOND = RateLimitOptions(requests=1, per=1)


async def test_gcra_spaces_slots_and_forgets_idle_time() -> None:
    budget = InMemoryRateBudget(slack=0)
    waits = [await budget.acquire("k", PER_SECOND, START) for _ in range(3)]
    assert waits == [0, 1, 2]
    later = START + timedelta(seconds=10)
    assert await budget.acquire("k", PER_SECOND, later) == 0  # idle time is not banked as a burst
    assert await budget.acquire("k", PER_SECOND, later) == 1


async def test_slack_stretches_the_interval_a_little() -> None:
    budget = InMemoryRateBudget()  # 1% by default
    await budget.acquire("k", RateLimitOptions(requests=200, per=60), START)
    assert await budget.acquire("k", RateLimitOptions(requests=200, per=60), START) == pytest.approx(0.3 * 1.01)


async def test_blocks_hold_back_slots_and_the_later_block_wins() -> None:
    budget = InMemoryRateBudget()
    await budget.block_until("k", START + timedelta(seconds=5))
    await budget.block_until("k", START + timedelta(seconds=2))  # earlier: ignored
    assert await budget.not_before("k") == START + timedelta(seconds=5)
    assert await budget.acquire("k", None, START) == 5
    assert await budget.acquire("other", None, START) == 0


async def test_budgets_are_shared_per_host_and_credential_only() -> None:
    registry = HttpRegistry(InMemoryRateBudget(slack=0))
    a1 = registry.limiter("api.example.com", "header:abc", PER_SECOND)
    a2 = registry.limiter("api.example.com", "header:abc", PER_SECOND)
    other_key = registry.limiter("api.example.com", "header:def", PER_SECOND)
    other_host = registry.limiter("crm.example.com", "header:abc", PER_SECOND)
    assert [await a1.acquire(START), await a2.acquire(START)] == [0, 1]
    assert await other_key.acquire(START) == 0
    assert await other_host.acquire(START) == 0


async def test_clients_with_the_same_key_share_one_budget(api) -> None:
    times: list[float] = []
    clock = FakeClock()
    api.get("/x").mock(side_effect=lambda r: times.append(clock.elapsed()) or httpx.Response(200))
    registry = HttpRegistry()
    options = HttpOptions(base_url=BASE, rate_limit="60/min")
    one = HttpClient("p1", options, registry=registry, auth=ApiKeyHeader("X-Key", "same-secret-1"), clock=clock)
    two = HttpClient("p2", options, registry=registry, auth=ApiKeyHeader("X-Key", "same-secret-1"), clock=clock)
    other = HttpClient("p3", options, registry=registry, auth=ApiKeyHeader("X-Key", "other-secret-2"), clock=clock)
    for http in (one, two, one, other):
        await http.request("GET", "/x")
    # one, two, one share a budget (0, 1.01, 2.02 s); ``other`` has its own and goes at once
    assert times == pytest.approx([0.0, 1.01, 2.02, 2.02])


class RecordingBudget:
    """A stand-in backend, as a PostgreSQL one would plug in."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.blocks: dict[str, datetime] = {}

    async def acquire(self, key: str, limit: RateLimitOptions | None, now: datetime) -> float:
        self.calls.append(("acquire", key))
        return 0.0

    async def block_until(self, key: str, when: datetime) -> None:
        self.calls.append(("block_until", key))
        self.blocks[key] = when

    async def not_before(self, key: str) -> datetime | None:
        return self.blocks.get(key)

    async def late(self, key: str, seconds: float) -> None:
        self.calls.append(("late", key))


async def test_any_rate_budget_backend_plugs_in(api) -> None:
    budget = RecordingBudget()
    assert isinstance(budget, RateBudget) and isinstance(InMemoryRateBudget(), RateBudget)
    registry = HttpRegistry(budget)
    api.get("/x").mock(return_value=httpx.Response(429, headers={"Retry-After": "600"}))
    http = HttpClient("desk", HttpOptions(base_url=BASE), registry=registry, clock=FakeClock())
    try:
        await http.request("GET", "/x")
    except Exception as exc:
        assert type(exc).__name__ == "DeferredError"
    await http.aclose()
    assert ("acquire", "rate:api.example.com|-") in budget.calls
    assert budget.blocks["host:api.example.com"] == START + timedelta(seconds=600)
    assert await registry.not_before("api.example.com") == START + timedelta(seconds=600)
