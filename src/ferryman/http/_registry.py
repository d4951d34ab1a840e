"""Process-wide HTTP state: rate budgets, host deferrals and counters.

One :class:`HttpRegistry` per process is shared by every pipeline, so two pipelines that
read the same system with the same credential draw on one budget. Storage sits behind
the small :class:`RateBudget` protocol: :class:`InMemoryRateBudget` serves one process; a
database-backed budget can share the same budgets between several processes.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import datetime
from typing import Protocol, runtime_checkable

from ferryman.http._options import RateLimitOptions
from ferryman.timeutil import ensure_utc

__all__ = ["HttpMetrics", "HttpRegistry", "InMemoryRateBudget", "RateBudget", "RateLimiter"]


@runtime_checkable
class RateBudget(Protocol):
    """Where send slots and ``not_before`` blocks are kept, per key.

    Implementations must make :meth:`acquire` atomic per key: two callers never get the
    same slot, even from two processes.
    """

    async def acquire(self, key: str, limit: RateLimitOptions | None, now: datetime) -> float:
        """Reserve the next send slot for ``key``; return the seconds from ``now`` until it.

        The slot respects ``limit`` (``None``: no rate) and any :meth:`block_until` on the
        key. The caller sleeps the returned time and then sends; it does not call again.
        """
        ...

    async def block_until(self, key: str, when: datetime) -> None:
        """No slot for ``key`` before ``when``. A later block wins over an earlier one."""
        ...

    async def not_before(self, key: str) -> datetime | None:
        """The block set on ``key``, if any (it may lie in the past)."""
        ...

    async def late(self, key: str, seconds: float) -> None:
        """A slot of ``key`` was used ``seconds`` late: move the schedule on by as much.

        Without this, a request sent late (a busy event loop, a loaded host) lands close
        to the slots after it, and a server counting an exact sliding window sees one too
        many. Shifting the schedule keeps later slots spaced from the late send."""
        ...


class InMemoryRateBudget:
    """A :class:`RateBudget` for one process: GCRA (a virtual-scheduling token bucket).

    Each key keeps a *theoretical arrival time* (TAT); a request is scheduled at
    ``max(now, TAT, block)`` and moves TAT one interval (``per / requests``) past that.
    With a burst of one this spaces requests evenly, so no window of ``per`` seconds ever
    holds more than ``requests`` sends and R requests take ``R / rate``: the pace a server
    with a sliding or fixed window accepts without a single 429.

    ``slack`` stretches the interval a little (1% by default) so that network jitter
    between our send and the server's arrival stamp cannot make the server count one
    request too many in its window.
    """

    def __init__(self, *, slack: float = 0.01) -> None:
        self._slack = slack
        self._tat: dict[str, float] = {}
        self._blocked: dict[str, datetime] = {}
        self._lock = threading.Lock()

    async def acquire(self, key: str, limit: RateLimitOptions | None, now: datetime) -> float:
        t = now.timestamp()
        with self._lock:
            start = t
            blocked = self._blocked.get(key)
            if blocked is not None:
                start = max(start, blocked.timestamp())
            if limit is not None:
                start = max(start, self._tat.get(key, start))
                self._tat[key] = start + limit.interval * (1 + self._slack)
            return start - t

    async def block_until(self, key: str, when: datetime) -> None:
        with self._lock:
            current = self._blocked.get(key)
            if current is None or when > current:
                self._blocked[key] = when

    async def not_before(self, key: str) -> datetime | None:
        return self._blocked.get(key)

    async def late(self, key: str, seconds: float) -> None:
        with self._lock:
            if key in self._tat and seconds > 0:
                self._tat[key] += seconds


class RateLimiter:
    """A handle on one key of a :class:`RateBudget`: what :class:`HttpClient` waits on."""

    def __init__(self, budget: RateBudget, key: str, limit: RateLimitOptions | None) -> None:
        self.budget = budget
        self.key = key
        self.limit = limit

    async def acquire(self, now: datetime) -> float:
        """Reserve a slot; the seconds to wait before sending."""
        return await self.budget.acquire(self.key, self.limit, now)

    async def block_until(self, when: datetime) -> None:
        """Hold every client sharing this budget back until ``when``."""
        await self.budget.block_until(self.key, when)

    async def not_before(self) -> datetime | None:
        """The block on this budget, if any."""
        return await self.budget.not_before(self.key)

    async def late(self, seconds: float) -> None:
        """Our slot was used ``seconds`` late; later slots move on by as much."""
        if self.limit is not None:
            await self.budget.late(self.key, seconds)


Labels = tuple[tuple[str, str], ...]


class HttpMetrics:
    """Counters for the metrics endpoint. Thread-safe; read them with :meth:`snapshot`.

    The snapshot has the shape :func:`ferryman.metrics.render` takes as ``extra``: metric
    name → {sorted label pairs → value}.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[str, defaultdict[Labels, float]] = {
            name: defaultdict(float)
            for name in (
                "ferryman_http_requests_total",
                "ferryman_http_rate_limited_total",
                "ferryman_http_rate_limit_wait_seconds_total",
                "ferryman_http_retries_total",
                "ferryman_http_deferrals_total",
            )
        }

    def _add(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._series[name][tuple(sorted(labels.items()))] += value

    def count_response(self, system: str, status: int | str) -> None:
        """One response (or ``"error"`` for a transport failure) from ``system``."""
        self._add("ferryman_http_requests_total", 1, system=system, status=str(status))
        if status == 429:
            self._add("ferryman_http_rate_limited_total", 1, system=system)

    def add_wait(self, system: str, seconds: float) -> None:
        """Seconds spent waiting on a rate budget, Retry-After, RateLimit headers or a deferral."""
        if seconds > 0:
            self._add("ferryman_http_rate_limit_wait_seconds_total", seconds, system=system)

    def count_retry(self, system: str) -> None:
        self._add("ferryman_http_retries_total", 1, system=system)

    def count_deferral(self, system: str) -> None:
        self._add("ferryman_http_deferrals_total", 1, system=system)

    def snapshot(self) -> dict[str, dict[Labels, float]]:
        """A copy of every counter, e.g.::

        {"ferryman_http_requests_total": {(("status", "200"), ("system", "helpdesk")): 3.0},
         "ferryman_http_rate_limited_total": {(("system", "helpdesk"),): 1.0},   # 429s
         "ferryman_http_rate_limit_wait_seconds_total": {...}, "ferryman_http_retries_total": {...},
         "ferryman_http_deferrals_total": {...}}
        """
        with self._lock:
            return {name: dict(series) for name, series in self._series.items()}

    def value(self, name: str, **labels: str) -> float:
        """One series' value (0 when never counted): ``value("ferryman_http_retries_total", system="crm")``."""
        with self._lock:
            return self._series[name].get(tuple(sorted(labels.items())), 0.0)


class HttpRegistry:
    """One per process: rate limiters per (host, credential), host deferrals, counters.

    Build it once at start-up and hand it to every :class:`HttpClient`. On restart the
    engine re-applies deferrals it persisted with :meth:`defer`.
    """

    def __init__(self, budget: RateBudget | None = None) -> None:
        self.budget: RateBudget = budget if budget is not None else InMemoryRateBudget()
        self.metrics = HttpMetrics()

    def limiter(self, host: str, credential: str | None, limit: RateLimitOptions | None) -> RateLimiter:
        """The limiter for ``host`` used with ``credential`` (a fingerprint, never the secret).

        Two clients asking with the same host and credential share one budget.
        """
        return RateLimiter(self.budget, f"rate:{host}|{credential or '-'}", limit)

    async def not_before(self, host: str) -> datetime | None:
        """When ``host`` may be contacted again after a deferral (may lie in the past), or ``None``."""
        return await self.budget.not_before(f"host:{host}")

    async def defer(self, host: str, until: datetime) -> None:
        """Let nothing talk to ``host`` before ``until`` (aware; stored in UTC). A later deferral wins."""
        await self.budget.block_until(f"host:{host}", ensure_utc(until))

    def snapshot(self) -> dict[str, dict[Labels, float]]:
        """The counters; see :meth:`HttpMetrics.snapshot`."""
        return self.metrics.snapshot()
