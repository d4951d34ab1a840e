"""The aiohttp transport under HttpClient (issue "Fast", HTTP part): every seam httpx's own
transport had must still hold, against real servers on loopback.

Each behaviour is checked through :class:`HttpClient` as connectors use it, and where it
matters on both transports (``FERRYMAN_HTTP_TRANSPORT=httpx`` is the fall-back), so that a
difference between them fails here.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from aiohttp import web
from multidict import CIMultiDict

from ferryman.errors import FatalError, RetriableError
from ferryman.http import ApiKeyHeader, HttpClient, HttpOptions, HttpRegistry, LinkHeader, paginate
from ferryman.http._transport import DEFAULT, ENV, AiohttpTransport, use_aiohttp

from .support import FakeClock

WIRES = ["aiohttp", "httpx"]
KEY = "Zt4-transport-key-91"

Handler = Callable[[web.Request], web.StreamResponse]


@asynccontextmanager
async def serve(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """An aiohttp app on 127.0.0.1 answering every path with ``handler``; yields its URL."""
    app = web.Application()

    async def handle(request: web.Request) -> web.StreamResponse:
        return handler(request)

    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def client(url: str, clock: FakeClock | None = None, **options: Any) -> HttpClient:
    return HttpClient(
        "desk",
        HttpOptions(base_url=url, **options),
        registry=HttpRegistry(),
        auth=ApiKeyHeader("X-API-Key", KEY),
        clock=clock or FakeClock(),
    )


@pytest.fixture(params=WIRES)
def wire(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on each transport."""
    monkeypatch.setenv(ENV, request.param)
    return str(request.param)


# -- the choice --------------------------------------------------------------------------------


def test_the_variable_chooses_the_transport_and_a_typo_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    default = client("http://127.0.0.1:9")._client._transport
    assert isinstance(default, AiohttpTransport) == (DEFAULT == "aiohttp")
    monkeypatch.setenv(ENV, "aiohttp")
    assert isinstance(client("http://127.0.0.1:9")._client._transport, AiohttpTransport)
    monkeypatch.setenv(ENV, "httpx")
    assert isinstance(client("http://127.0.0.1:9")._client._transport, httpx.AsyncHTTPTransport)
    monkeypatch.setenv(ENV, " AIOHTTP ")
    assert use_aiohttp()
    monkeypatch.setenv(ENV, "requests")
    with pytest.raises(FatalError, match=f"{ENV}='requests': expected one of aiohttp, httpx"):
        client("http://127.0.0.1:9")
    # a transport given (a mock, an app) is used as it is, whatever the variable says
    mock = httpx.MockTransport(lambda r: httpx.Response(200))
    monkeypatch.setenv(ENV, "aiohttp")
    given = HttpClient("desk", HttpOptions(base_url="http://127.0.0.1:9"), registry=HttpRegistry(), transport=mock)
    assert given._client._transport is mock


# -- what goes out -----------------------------------------------------------------------------


async def test_the_request_goes_out_byte_for_byte_as_httpx_sends_it(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str, list[tuple[str, str]], bytes]] = []

    async def record(request: web.Request) -> web.Response:
        headers = sorted((k.lower(), v) for k, v in request.headers.items())
        seen.append((request.method, request.raw_path, headers, await request.read()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/api"
    params = {"q": "a b+c/d", "since": "2024-01-01T00:00:00Z", "empty": "", "é": "ü"}
    try:
        for choice in WIRES:
            monkeypatch.setenv(ENV, choice)
            async with client(url) as http:
                await http.request("GET", "/contacts", params=params)
                await http.request("GET", f"{url}/contacts?raw=%2Fkept%2f&x=1+2")
                await http.request("POST", "/contacts", json={"name": "Zoë", "n": 1})
                await http.request("PUT", "/contacts/1", data={"a": "1", "b": ["x", "y"]})
                await http.request("DELETE", "/contacts/1")
    finally:
        await runner.cleanup()
    assert len(seen) == 10
    via_aiohttp, via_httpx = seen[:5], seen[5:]
    for mine, theirs in zip(via_aiohttp, via_httpx, strict=True):
        if mine[0] == "DELETE":
            # The one difference: aiohttp states an empty body on a DELETE, as requests and
            # browsers do (RFC 9110 §8.6 allows it; httpx leaves it out).
            mine[2].remove(("content-length", "0"))
        assert mine == theirs
    assert via_aiohttp[1][1] == "/api/contacts?raw=%2Fkept%2f&x=1+2"  # not re-quoted
    assert ("x-api-key", KEY) in via_aiohttp[0][2]


# -- what comes back: the headers paginators and rate limits read --------------------------------


async def test_link_retry_after_and_ratelimit_headers_are_read_alike(wire: str) -> None:
    calls: list[str] = []

    def answer(request: web.Request) -> web.Response:
        calls.append(request.path_qs)
        page = int(request.query.get("page", "1"))
        if page == 2 and calls.count(request.path_qs) == 1:
            return web.Response(status=429, text="later", headers={"Retry-After": "7"})
        headers = [("X-RateLimit-Limit", "100"), ("X-RateLimit-Remaining", "0" if page == 3 else "50")]
        headers.append(("X-RateLimit-Reset", "30"))
        if page < 3:
            # two Link header lines: the paginator must find rel=next in the second
            headers.append(("Link", '</api/items?page=1>; rel="first"'))
            headers.append(("Link", f'</api/items?page={page + 1}>; rel="next"'))
        return web.json_response({"items": [{"id": page}]}, headers=CIMultiDict(headers))

    clock = FakeClock()
    async with serve(answer) as url, client(f"{url}/api", clock) as http:
        pages = [page.records async for page in paginate(http, "/items", LinkHeader(), records_path="items")]
        assert pages == [[{"id": 1}], [{"id": 2}], [{"id": 3}]]
        assert 7.0 in clock.sleeps  # Retry-After waited exactly
        # X-RateLimit-Remaining: 0 with a reset in 30 s holds the next request back 30 s
        before = clock.elapsed()
        await http.request("GET", "/items?page=4")
        assert clock.elapsed() - before == pytest.approx(30.0)
    assert len(calls) == 5


async def test_a_gzip_body_is_decoded_and_capped_by_its_decoded_size(wire: str) -> None:
    payload = json.dumps({"items": ["x" * 100] * 1000}).encode()
    packed = gzip.compress(payload)

    def answer(request: web.Request) -> web.Response:
        return web.Response(body=packed, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    async with serve(answer) as url:
        async with client(url) as http:
            response = await http.request("GET", "/small")
            assert response.content == payload
        async with client(url, max_response_bytes=len(packed) * 4, max_retries=0) as http:
            with pytest.raises(FatalError, match="larger than max_response_bytes"):
                await http.request("GET", "/bomb")


# -- failures: the same Ferryman errors, and only safe retries -----------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_connection_is_retriable_and_safe_to_retry_even_for_a_post(wire: str) -> None:
    clock = FakeClock()
    async with client(f"http://127.0.0.1:{_closed_port()}", clock, max_retries=2) as http:
        with pytest.raises(RetriableError, match=r"connection failed for POST .*ConnectError.*gave up after 3") as info:
            await http.request("POST", "/tickets", json={"subject": "x"})
    assert info.value.unprocessed is True
    assert len(clock.sleeps) == 2


async def test_a_server_that_drops_a_post_before_answering_is_not_retried(wire: str) -> None:
    arrived = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal arrived
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        arrived += 1
        writer.close()  # the server may have acted on it: no answer, connection gone

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clock = FakeClock()
    try:
        async with client(f"http://127.0.0.1:{port}", clock, max_retries=3) as http:
            with pytest.raises(
                RetriableError, match=r"connection failed for POST .*not retried \(POST is not idempotent\)"
            ) as info:
                await http.request("POST", "/tickets", json={"subject": "x"})
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.unprocessed is False
    assert arrived == 1 and clock.sleeps == []


async def test_a_slow_answer_times_out_as_retriable(wire: str) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with client(url, read_timeout=0.3, max_retries=0) as http:
            with pytest.raises(RetriableError, match=r"timed out for GET .*ReadTimeout"):
                await http.request("GET", "/slow")
    finally:
        await runner.cleanup()


# -- TLS -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_is_verified_unless_turned_off_and_trusts_ssl_cert_file(
    wire: str, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with serve(lambda r: web.json_response({"ok": True}), context) as url:
        async with client(url, max_retries=2) as http:
            with pytest.raises(FatalError, match=r"TLS certificate verification failed for https://127\.0\.0\.1"):
                await http.request("GET", "/")
        async with client(url, verify_tls=False) as http:
            assert (await http.request("GET", "/")).json() == {"ok": True}
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # a private CA, the way httpx takes it
        async with client(url) as http:
            assert (await http.request("GET", "/")).json() == {"ok": True}


# -- proxies from the environment -----------------------------------------------------------------


async def test_http_proxy_and_no_proxy_from_the_environment_are_obeyed(
    wire: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def app(request: web.Request) -> web.Response:
        return web.json_response({"via": "direct"})

    def proxy(request: web.Request) -> web.Response:
        # a forward proxy gets the absolute URL; this one answers itself
        return web.json_response({"via": "proxy", "target": str(request.url), "key": request.headers.get("X-API-Key")})

    for name in ("ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with serve(app) as app_url, serve(proxy) as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        async with client(app_url) as http:
            body = (await http.request("GET", "/contacts?page=1")).json()
        assert body == {"via": "proxy", "target": f"{app_url}/contacts?page=1", "key": KEY}
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with client(app_url) as http:
            assert (await http.request("GET", "/contacts")).json() == {"via": "direct"}


# -- mocks -------------------------------------------------------------------------------------------


async def test_respx_routes_are_seen_while_active_and_the_network_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "aiohttp")
    async with serve(lambda r: web.json_response({"from": "server"})) as url, client(url) as http:
        with respx.mock(base_url=url, assert_all_called=True) as router:
            router.get("/contacts").respond(json={"from": "respx"})
            assert (await http.request("GET", "/contacts")).json() == {"from": "respx"}
        assert (await http.request("GET", "/contacts")).json() == {"from": "server"}
        assert isinstance(http._client._transport, AiohttpTransport)
