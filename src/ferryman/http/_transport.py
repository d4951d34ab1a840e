"""The transport under :class:`~ferryman.http.HttpClient`: httpx's API, aiohttp's wire.

httpx's own transport (httpcore on anyio) spends about a third more CPU per request than
aiohttp's C parser and plain asyncio streams (``python -m bench.http_client``). This module
keeps every request and response an :class:`httpx.Request` / :class:`httpx.Response`
(auth, hooks, headers, the body cap all work as before) and sends them with aiohttp.

What it keeps exactly as httpx's transport has it:

- **proxies**: :class:`AiohttpClient` is an :class:`httpx.AsyncClient` built with
  ``transport=None``, so httpx still reads ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY``/``NO_PROXY`` (``trust_env``)
  and mounts its own proxy transports for the hosts they cover; only direct connections
  go through aiohttp;
- **TLS**: the context comes from :func:`httpx.create_ssl_context` (``verify``, and
  ``SSL_CERT_FILE``/``SSL_CERT_DIR`` under ``trust_env``);
- **errors**: aiohttp's exceptions become the httpx exceptions httpcore raises in the same
  situation, so that :class:`~ferryman.http.HttpClient` maps them alike; above all, only a
  failure before the request left counts as :class:`httpx.ConnectError` /
  :class:`httpx.ConnectTimeout` (safe to retry a POST), and a failed certificate check
  carries the :class:`ssl.SSLCertVerificationError` as its cause;
- **the URL as built**: sent as encoded, never re-quoted; no header added that httpx did
  not put on the request;
- **timeouts**: ``connect`` and ``read`` as socket timeouts, ``pool`` for a free connection,
  and a deadline on sending plus waiting for the headers, which aiohttp has no socket
  timeout for;
- **mocks**: while something has patched httpx's own transport (respx by default patches
  httpcore's pool; pytest-httpx patches ``AsyncHTTPTransport``), requests go through an
  httpx transport instead, so every existing mock still sees them.

Opt-in: ``FERRYMAN_HTTP_TRANSPORT=aiohttp`` in the environment turns it on for every client
built from then on (``httpx``, the default, is httpx's own transport; see :data:`DEFAULT`).
The price of aiohttp is memory: importing it takes ~9 MB, which a ``ferryman sync``
process pays and the daemon (whose API already runs on aiohttp) does not.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NoReturn

import httpcore
import httpx

if TYPE_CHECKING:
    import aiohttp

# aiohttp (with yarl and multidict) is imported when the first transport is made, not with
# this module: it costs ~9 MB of memory and 50-150 ms, which a command that sends nothing
# (``ferryman --help``, ``status``), or a process on httpx's transport, never pays. Not
# later either: inside a first request, the import would delay a send that already took its
# rate slot (see the note on anyio in _client.py).

__all__ = ["DEFAULT", "ENV", "AiohttpClient", "AiohttpTransport", "use_aiohttp"]

#: the environment variable that chooses the transport: ``aiohttp`` or ``httpx``
ENV = "FERRYMAN_HTTP_TRANSPORT"
#: the transport when ``FERRYMAN_HTTP_TRANSPORT`` is unset: httpx's own, for now. aiohttp
#: costs ~40% less CPU per request but ~9 MB more per ``ferryman sync`` process, which puts
#: a 1,000,000-record pull over its 100 MB target, and it has not yet run for weeks against
#: the real apps; ``FERRYMAN_HTTP_TRANSPORT=aiohttp`` turns it on
DEFAULT = "httpx"
_CHOICES = ("aiohttp", "httpx")

# What a mock replaces: when either is no longer the original, a mock is active.
_HTTPCORE_SEND = httpcore.AsyncConnectionPool.handle_async_request
_HTTPX_SEND = httpx.AsyncHTTPTransport.handle_async_request

_VERSIONS: dict[tuple[int, int] | None, bytes] = {(1, 1): b"HTTP/1.1", (1, 0): b"HTTP/1.0"}

# Headers aiohttp would add on its own (httpx already put what it wants on the request).
_NO_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})


def use_aiohttp(environ: os._Environ[str] | dict[str, str] | None = None) -> bool:
    """Whether new clients send through aiohttp: ``FERRYMAN_HTTP_TRANSPORT``, else :data:`DEFAULT`.

    Raises ``ValueError`` naming the variable for any other value (a typo must not
    silently pick one).
    """
    value = (os.environ if environ is None else environ).get(ENV, "").strip().lower() or DEFAULT
    if value not in _CHOICES:
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(_CHOICES)}")
    return value == "aiohttp"


def _mocked() -> bool:
    """Whether httpx's own transport is patched (respx, pytest-httpx) right now."""
    return (
        httpcore.AsyncConnectionPool.handle_async_request is not _HTTPCORE_SEND
        or httpx.AsyncHTTPTransport.handle_async_request is not _HTTPX_SEND
    )


class AiohttpClient(httpx.AsyncClient):
    """An :class:`httpx.AsyncClient` whose direct (unproxied) transport is aiohttp's.

    Proxy mounts (from ``proxy=`` or the environment) keep httpx's own transport: proxies
    work exactly as they did, SOCKS and proxy auth included.
    """

    def _init_transport(
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),  # noqa: B008
        transport: httpx.AsyncBaseTransport | None = None,
        **kwargs: Any,
    ) -> httpx.AsyncBaseTransport:
        if transport is not None:
            return transport
        return AiohttpTransport(verify=verify, cert=cert, trust_env=trust_env, limits=limits)


class _Body(httpx.AsyncByteStream):
    """A response body as aiohttp receives it: whatever has arrived, chunk by chunk."""

    def __init__(self, response: aiohttp.ClientResponse, url: str) -> None:
        self._response = response
        self._url = url

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except Exception as exc:
                _raise_mapped(exc, self._url, sent=True)
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        # The connection goes back to the pool when the body was read to its end, and is
        # closed otherwise (a body cut short must not be read as the next response).
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` sending through one :class:`aiohttp.ClientSession`.

    The session (and its connection pool) is made on the first request, inside the event
    loop that uses it, and closed by :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        cert: Any = None,
        trust_env: bool = True,
        limits: httpx.Limits | None = None,
    ) -> None:
        import aiohttp  # noqa: F401 - here, before any rate slot is taken (see the note on imports)
        import multidict  # noqa: F401
        import yarl  # noqa: F401

        self._verify = verify
        self._cert = cert
        self._trust_env = trust_env
        self._limits = limits or httpx.Limits(max_connections=10, max_keepalive_connections=10, keepalive_expiry=30)
        self._ssl = httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
        self._session: aiohttp.ClientSession | None = None
        self._fallback: httpx.AsyncHTTPTransport | None = None

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        limits = self._limits
        connector = aiohttp.TCPConnector(
            ssl=self._ssl,
            limit=limits.max_connections or 0,
            keepalive_timeout=limits.keepalive_expiry if limits.keepalive_expiry is not None else 30,
        )
        # trust_env=False: proxies are httpx's mounts (see AiohttpClient), never aiohttp's own lookup.
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            auto_decompress=False,  # httpx decodes, so the body cap counts decoded bytes
            skip_auto_headers=_NO_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps the cookies
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if _mocked():
            if self._fallback is None:
                self._fallback = httpx.AsyncHTTPTransport(
                    verify=self._verify, cert=self._cert, trust_env=self._trust_env, limits=self._limits
                )
            return await self._fallback.handle_async_request(request)
        import aiohttp
        from multidict import CIMultiDict
        from yarl import URL

        session = self._session or self._open()
        timeouts = request.extensions.get("timeout", {})
        connect, read = timeouts.get("connect"), timeouts.get("read")
        pool, write = timeouts.get("pool"), timeouts.get("write")
        try:
            body: bytes | AsyncIterator[bytes] | None = request.content or None
        except httpx.RequestNotRead:
            body = _chunks(request)
        url = str(request.url)
        headers = CIMultiDict(request.headers.multi_items())
        if not isinstance(body, bytes | None):
            headers.popall("Transfer-Encoding", None)  # aiohttp chunks a stream itself
        # The deadline aiohttp lacks: sending the request and waiting for the response
        # headers, beyond the pool wait and the connect (a server that stops reading our
        # body would otherwise hold the request forever).
        deadline = sum(t for t in (pool, connect, write, read) if t is not None) or None
        try:
            async with asyncio.timeout(deadline):
                response = await session.request(
                    request.method,
                    URL(url, encoded=True),
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    compress=None,
                    timeout=aiohttp.ClientTimeout(total=None, connect=pool, sock_connect=connect, sock_read=read),
                    server_hostname=request.extensions.get("sni_hostname"),
                )
        except Exception as exc:
            if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
                raise httpx.WriteTimeout(f"no response headers within {deadline:g}s of sending {url}") from exc
            _raise_mapped(exc, url, sent=False)
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response, url),
            request=request,
            extensions={
                "http_version": _VERSIONS.get(response.version, b"HTTP/1.1"),
                "reason_phrase": (response.reason or "").encode(),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._fallback is not None:
            await self._fallback.aclose()
            self._fallback = None


async def _chunks(request: httpx.Request) -> AsyncIterator[bytes]:
    """A streamed request body, for aiohttp to send."""
    async for chunk in request.stream:  # type: ignore[union-attr]
        yield chunk


def _raise_mapped(exc: Exception, url: str, *, sent: bool) -> NoReturn:
    """Raise the httpx exception httpcore raises where aiohttp raised ``exc`` (or ``exc`` itself)."""
    import aiohttp

    mapped = _mapped(exc, url, sent=sent)
    if mapped is exc:
        raise exc
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        # HttpClient recognises a failed verification by this cause.
        raise mapped from exc.certificate_error
    raise mapped from exc


def _mapped(exc: Exception, url: str, *, sent: bool) -> Exception:
    """The httpx exception httpcore raises where aiohttp raised ``exc`` (``exc`` itself if none).

    ``sent``: the request had gone out (the body was being read). Only a failure before
    that is a :class:`httpx.ConnectError` or :class:`httpx.ConnectTimeout`, which the
    client may retry for any method.
    """
    import aiohttp

    detail = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return httpx.ConnectError(detail)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(detail)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS handshake
        return httpx.ConnectError(detail)
    if isinstance(exc, aiohttp.SocketTimeoutError | aiohttp.ServerTimeoutError):
        return httpx.ReadTimeout(detail)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        what = "peer closed connection without sending complete message body" if sent else detail
        return httpx.RemoteProtocolError(what)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(detail)
    if isinstance(exc, aiohttp.ClientOSError | aiohttp.ClientConnectionError):  # reset, broken pipe
        return httpx.ReadError(detail)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(f"{detail} ({url})")
    if isinstance(exc, aiohttp.ClientResponseError):  # a response aiohttp could not parse
        return httpx.RemoteProtocolError(exc.message or detail)
    if isinstance(exc, aiohttp.ClientError):
        return httpx.ReadError(detail)
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(detail)
    return exc
