"""What one HTTP request costs us: ``python -m bench.http_client [--requests N] [--repeat R]``

Against one precomputed ``sandbox generic`` process (``bench._sandbox``, as ``bench.pull``
starts it), the same N pages of contacts are fetched, one after another over one
keep-alive connection, by each of these clients in turn:

- ``httpx``: a bare :class:`httpx.AsyncClient` with its own transport (httpcore);
- ``httpx tuned``: a bare client with a transport made for one host (one kept-alive
  connection, no environment lookups);
- ``httpx + httpx-aiohttp``: a bare client with the ``httpx-aiohttp`` package's
  ``AiohttpTransport`` (left out when that package is not installed);
- ``httpx + ferryman transport``: a bare client with Ferryman's own aiohttp transport
  (:class:`ferryman.http._transport.AiohttpTransport`);
- ``ferryman on aiohttp``: :class:`ferryman.http.HttpClient` as a connector gets it (an
  :class:`~ferryman.http.HttpRegistry`, the ``X-API-Key`` auth), with
  ``FERRYMAN_HTTP_TRANSPORT=aiohttp``: rate budget, retry loop, redaction, hooks, header
  parsing, the body cap;
- ``ferryman on httpx``: the same with ``FERRYMAN_HTTP_TRANSPORT=httpx`` (httpx's own
  transport; on a tree without the variable, the only one).

Each client reads every body whole and decodes nothing, so the figure is the HTTP path
alone. Pages of 1000 contacts (what a sync asks for) and of 100 (small pages: the
per-request overhead weighs more) are measured separately. The clients alternate within
each round, so load on the machine hits them alike; every figure is a median of rounds.
CPU is this process's own (``time.process_time``): the sandbox is another process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import itertools
import os
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import orjson

from bench._baseline import pages
from bench._common import KEY, Report, Sandbox, median, quick, timed

Fetch = Callable[[str, "dict[str, Any] | None"], Awaitable[int]]
"""Sends one request: a GET of the URL, or a POST of the JSON body when one is given.
Returns the size of the response body."""
#: a variant: an async context manager yielding its :data:`Fetch`
Variant = Callable[[str], AbstractAsyncContextManager[Fetch]]


class _Bare:
    """A bare ``httpx.AsyncClient`` with ``transport`` (``None``: httpx's own)."""

    def __init__(self, url: str, transport: Callable[[], httpx.AsyncBaseTransport] | None) -> None:
        self.url = url
        self.transport = transport
        self.client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Fetch:
        self.client = httpx.AsyncClient(
            headers={"X-API-Key": KEY},
            timeout=60,
            transport=self.transport() if self.transport is not None else None,
        )
        client = self.client

        async def fetch(url: str, body: dict[str, Any] | None) -> int:
            if body is None:
                response = await client.get(url)
            else:
                response = await client.post(
                    url, content=orjson.dumps(body), headers={"Content-Type": "application/json"}
                )
            response.raise_for_status()
            return len(response.content)

        return fetch

    async def __aexit__(self, *exc: object) -> None:
        assert self.client is not None
        await self.client.aclose()


class _Ferryman:
    """:class:`ferryman.http.HttpClient` as :class:`ferryman.api.ApiConnector` builds it,
    with ``FERRYMAN_HTTP_TRANSPORT`` set to ``choice`` while it is built (``None``: unset)."""

    def __init__(self, url: str, choice: str | None) -> None:
        self.url = url
        self.choice = choice
        self.client: Any = None

    async def __aenter__(self) -> Fetch:
        from ferryman.http import ApiKeyHeader, HttpClient, HttpOptions, HttpRegistry

        saved = os.environ.pop("FERRYMAN_HTTP_TRANSPORT", None)
        if self.choice is not None:
            os.environ["FERRYMAN_HTTP_TRANSPORT"] = self.choice
        try:
            self.client = HttpClient(
                "app",
                HttpOptions(base_url=f"{self.url}/api"),
                registry=HttpRegistry(),
                auth=ApiKeyHeader("X-API-Key", KEY),
            )
        finally:
            os.environ.pop("FERRYMAN_HTTP_TRANSPORT", None)
            if saved is not None:
                os.environ["FERRYMAN_HTTP_TRANSPORT"] = saved
        client = self.client

        async def fetch(url: str, body: dict[str, Any] | None) -> int:
            if body is None:
                response = await client.request("GET", url)
            else:
                response = await client.request("POST", url, json=body)
            return len(response.content)

        return fetch

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()


def _package_transport() -> httpx.AsyncBaseTransport:
    from httpx_aiohttp import AiohttpTransport

    return AiohttpTransport()


def _ferryman_transport() -> httpx.AsyncBaseTransport:
    from ferryman.http._transport import AiohttpTransport

    return AiohttpTransport()


def _tuned_transport() -> httpx.AsyncBaseTransport:
    # One host, one request at a time: one connection kept, no environment lookups.
    return httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=60),
        trust_env=False,
    )


def variants() -> dict[str, Variant]:
    """The clients measured, by name."""
    found: dict[str, Variant] = {
        "httpx": lambda url: _Bare(url, None),
        "httpx tuned": lambda url: _Bare(url, _tuned_transport),
    }
    try:
        import httpx_aiohttp  # noqa: F401
    except ImportError:
        print("  httpx_aiohttp is not installed: that variant is left out", flush=True)
    else:
        found["httpx + httpx-aiohttp"] = lambda url: _Bare(url, _package_transport)
    try:
        import ferryman.http._transport  # noqa: F401
    except ImportError:  # a tree from before it (python -m bench.http_client on an older checkout)
        print("  ferryman.http._transport does not exist here: that variant is left out", flush=True)
    else:
        found["httpx + ferryman transport"] = lambda url: _Bare(url, _ferryman_transport)
    found["ferryman on aiohttp"] = lambda url: _Ferryman(url, "aiohttp")
    found["ferryman on httpx"] = lambda url: _Ferryman(url, "httpx")
    return found


def page_urls(url: str, limit: int, count: int) -> list[str]:
    """The first ``count`` page URLs a sync reads with pages of ``limit`` (as ``bench._baseline``)."""
    log = io.StringIO()
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=60) as client:
        for n, _ in enumerate(pages(client, limit, log), 1):
            if n >= count:
                break
    urls = log.getvalue().split()
    if len(urls) < count:
        raise RuntimeError(f"the sandbox served {len(urls)} pages of {limit}, expected {count}")
    return urls[:count]


_serial = itertools.count()


def new_contacts(n: int) -> list[dict[str, Any]]:
    """``n`` contacts to POST, with emails never used before in this process (the app
    refuses a second contact with the same email)."""
    run = os.getpid()
    return [
        {"email": f"bench-{run}-{k}@example.com", "first_name": "Bench", "last_name": f"No{k}", "phone": "+1 555 0100"}
        for k in (next(_serial) for _ in range(n))
    ]


async def one_round(variant: Variant, url: str, urls: list[str], expect: list[int] | None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to fetch ``urls`` with a fresh client of ``variant``.

    ``expect`` are the body sizes of GETs; ``None`` POSTs a new contact to each URL instead.
    """
    gc.collect()
    bodies: list[dict[str, Any] | None] = [None] * len(urls)
    if expect is None:
        bodies = list(new_contacts(len(urls) + 1))
    async with variant(url) as fetch:
        # the connection is opened outside the measurement
        await fetch(urls[0], bodies.pop() if expect is None else None)
        cpu, wall = time.process_time(), time.perf_counter()
        for k, (u, body) in enumerate(zip(urls, bodies, strict=True)):
            got = await fetch(u, body)
            if expect is not None and got != expect[k]:
                raise RuntimeError(f"{u}: {got} bytes, expected {expect[k]}")
        return time.process_time() - cpu, time.perf_counter() - wall


async def measure(url: str, urls: list[str], repeat: int, post: bool) -> dict[str, list[tuple[float, float]]]:
    """Every variant's (CPU, wall) per round; GETs of ``urls``, or with ``post`` one POST to each."""
    from ferryman import logs

    logs.configure("warning", "json")
    found = variants()
    expect: list[int] | None = None
    if not post:
        async with _Bare(url, None) as fetch:
            expect = [await fetch(u, None) for u in urls]
    warm = max(1, len(urls) // 10)
    for variant in found.values():  # warm-up: imports, first connections
        await one_round(variant, url, urls[:warm], expect[:warm] if expect is not None else None)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in found}
    names = list(found)
    for r in range(repeat):
        # a different order each round, so no client always follows the same one
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            results[name].append(await one_round(found[name], url, urls, expect))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_client", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 requests, 3 rounds")
    parser.add_argument("--requests", type=int, help="pages fetched per round (default 300; quick 100)")
    parser.add_argument("--repeat", type=int, help="rounds (default 7; quick 3)")
    parser.add_argument("--pages", default="1000,100", help="page sizes, comma-separated (default 1000,100)")
    parser.add_argument("--no-post", action="store_true", help="leave out the POST case (one new contact each)")
    args = parser.parse_args(argv)
    fast = args.quick or quick()
    n = args.requests or (100 if fast else 300)
    repeat = args.repeat or (3 if fast else 7)
    sizes = [int(s) for s in args.pages.split(",")]
    report = Report("http_client")
    print(f"HTTP client: {n} requests a round, {repeat} rounds (medians), pages of {sizes}")
    with timed(report), Sandbox(n * max(sizes)) as sandbox:
        report.note(f"sandbox of {n * max(sizes):,} contacts up in {sandbox.started_in:.1f} s (its own process)")
        cases = [(f"GET pages of {size}", page_urls(sandbox.url, size, n), False) for size in sizes]
        if not args.no_post:
            cases.append(("POST one contact", [f"{sandbox.url}/api/contacts"] * n, True))
        for case, urls, post in cases:
            results = asyncio.run(measure(sandbox.url, urls, repeat, post))
            base_cpu = median([c for c, _ in results["httpx"]])
            for name, runs in results.items():
                cpu = median([c for c, _ in runs])
                wall = median([w for _, w in runs])
                report.add(
                    f"{case}: {name} (CPU per request, requests/s)", f"{cpu / n * 1e6:,.0f} us, {n / wall:,.0f}/s"
                )
                if name != "httpx":
                    report.add(f"{case}: {name} / httpx CPU per request", f"{cpu / base_cpu:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
