"""Helpers shared by the HTTP tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from aiohttp import web

from ferryman.http import Clock

BASE = "https://api.example.com/api"
START = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class FakeClock(Clock):
    """Time that only moves when someone sleeps; every sleep is recorded."""

    def __init__(self, start: datetime = START) -> None:
        self.current = start
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.sleeps.append(seconds)
            self.current += timedelta(seconds=seconds)
        await asyncio.sleep(0)

    def elapsed(self) -> float:
        return (self.current - START).total_seconds()


class LoopbackServer:
    """A tiny aiohttp app on 127.0.0.1, port 0, that stamps when each request arrives.

    ``answer(n, request)`` makes the response for the n-th request (0-based).
    """

    def __init__(self, answer: Callable[[int, web.Request], web.StreamResponse]) -> None:
        self.answer = answer
        self.arrivals: list[float] = []  # time.monotonic() at arrival, server side
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(time.monotonic())
        self.requests.append((request.method, str(request.rel_url), dict(request.headers)))
        return self.answer(len(self.arrivals) - 1, request)

    async def __aenter__(self) -> LoopbackServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def max_in_window(times: list[float], window: float) -> int:
    """The most timestamps falling in any half-open window ``(t - window, t]``."""
    times = sorted(times)
    best = start = 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best
