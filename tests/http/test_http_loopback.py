"""The client against a real server on loopback: timing is measured where it counts, server side."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from ferryman.http import ApiKeyHeader, HttpClient, HttpOptions, HttpRegistry

from .support import LoopbackServer, max_in_window


async def test_429_retry_after_is_never_retried_early() -> None:
    def answer(n: int, request: web.Request) -> web.Response:
        if n < 3:
            return web.Response(status=429, text="slow down", headers={"Retry-After": "1"})
        return web.json_response({"ok": True})

    async with LoopbackServer(answer) as server:
        options = HttpOptions(base_url=server.url, max_retries=5)
        async with HttpClient("helpdesk", options, registry=HttpRegistry()) as http:
            response = await http.request("POST", "/tickets", json={"subject": "x"})
    assert response.status_code == 200
    gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:], strict=False)]
    assert len(gaps) == 3
    assert all(gap >= 1.0 for gap in gaps), gaps
    assert all(gap < 1.5 for gap in gaps), gaps  # and not much later either


async def _run(server: LoopbackServer, options: HttpOptions, clients: int, workers: int, each: int) -> float:
    registry = HttpRegistry()
    https = [
        HttpClient(f"pipeline{i}", options, registry=registry, auth=ApiKeyHeader("X-Api-Key", "shared-key-123"))
        for i in range(clients)
    ]

    async def worker(http: HttpClient) -> None:
        for _ in range(each):
            await http.request("GET", "/tickets")

    started = time.monotonic()
    await asyncio.gather(*(worker(http) for http in https for _ in range(workers)))
    elapsed = time.monotonic() - started
    for http in https:
        await http.aclose()
    return elapsed


async def test_shared_rate_limit_is_smooth_and_never_exceeded() -> None:
    """Two pipelines (clients) on one host and key, three concurrent workers each: 30 requests
    at 10/s must take close to the ideal 3 s and never put 11 requests in any 1-second window."""
    async with LoopbackServer(lambda n, r: web.json_response([])) as server:
        options = HttpOptions(base_url=server.url, rate_limit={"requests": 10, "per": 1})
        elapsed = await _run(server, options, clients=2, workers=3, each=5)
    ideal = 30 / 10
    ratio = elapsed / ideal
    print(f"\nrate limit 10/s, 30 requests: elapsed {elapsed:.3f}s, ideal {ideal:.1f}s, ratio {ratio:.3f}")
    assert len(server.arrivals) == 30
    # 10 in any window a little under a second: the limiter spaces the moments requests may
    # go, and a request the loaded loop sends late (seen: 45 ms, 3 workers on 2 cores) brings
    # the 11th of a second's requests into its window; a burst still shows at once
    assert max_in_window(server.arrivals, 0.95) <= 10
    # never faster than the limit (the window above, and 0.9 here); how close to the ideal a
    # loaded 2-core machine gets is bench.rate_limits' measure (0.996): under 3 test workers
    # this run took 1.27 of the ideal once, so the bound here only catches a limiter that
    # waits far too long
    assert 0.9 <= ratio <= 1.5


async def test_without_a_limit_the_same_load_would_burst() -> None:
    """The control for the test above: the window check does catch a burst."""
    async with LoopbackServer(lambda n, r: web.json_response([])) as server:
        await _run(server, HttpOptions(base_url=server.url), clients=2, workers=3, each=5)
    assert max_in_window(server.arrivals, 1.0) > 10
