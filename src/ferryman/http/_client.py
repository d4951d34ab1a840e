"""The one HTTP client every API connector uses: polite, retrying, and secret-tight."""

from __future__ import annotations

import contextlib
import inspect
import logging
import random
import ssl
import sys
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

import httpx
import structlog

from ferryman import __version__
from ferryman.errors import (
    AuthError,
    DeferredError,
    FatalError,
    FerrymanError,
    MalformedResponseError,
    RecordRejected,
    RetriableError,
)
from ferryman.http import _transport
from ferryman.http._clock import Clock
from ferryman.http._options import MAX_REDIRECTS, HttpOptions
from ferryman.http._registry import HttpRegistry
from ferryman.http._urls import host_key, insecure_url_problem
from ferryman.http.codecs import dumps_json, excerpt, form_encode, loads_json
from ferryman.http.retry_after import parse_ratelimit_headers, parse_retry_after
from ferryman.redact import SECRET_NAMES, redact, redact_cut, redact_url, register_secret
from ferryman.timeutil import format_utc

__all__ = ["IDEMPOTENT_METHODS", "HttpClient", "ResponseHook"]

# httpcore imports anyio's asyncio backend lazily, inside the first request of a process:
# ~100 ms after that request took its rate slot. The server then stamps request 1 late and
# can count request L+1 inside its window (one 429 per process despite a configured limit).
# Importing it here keeps every send on its slot.
with contextlib.suppress(ImportError):
    import anyio._backends._asyncio  # noqa: F401

# httpcore runs ``import sniffio`` on every request to tell asyncio from trio, and falls
# back to asyncio when it is missing (anyio 4.16 no longer installs it). A failing import
# is not cached: each request searched every sys.path entry again, about an eighth of the
# CPU of a push. Marking the module absent makes that import fail at once, with the same
# outcome.
try:
    import sniffio  # noqa: F401
except ImportError:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]

log = structlog.get_logger("ferryman.http")

#: Methods retried after a failure the server may have half-processed (RFC 9110 §9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})

ResponseHook = Callable[[httpx.Response], Awaitable[None] | None]
"""Called with every response before its status is mapped; raise to turn it into an error.

A redirect is not shown to it (unless its status is in ``allow_status``): the client
refuses or follows it first, by ``follow_redirects``."""

Decoder = Callable[[httpx.Response], Any]

# Failures that happen before a single byte of the request left: safe to retry for any
# method, a POST included, because the server cannot have acted on it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Our own mistakes: retrying cannot help.
_LOCAL = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)
# Redirects with a Location that may be followed (300 and 304 are not moves).
_FOLLOWABLE = frozenset({301, 302, 303, 307, 308})
# The only ones that keep a write's method and body (RFC 9110 §15.4); the others turn it into a GET.
_KEEPS_METHOD = frozenset({307, 308})


def decode_json_or_none(response: httpx.Response) -> Any:
    """The JSON body, or ``None`` for an empty body (204, an empty 200)."""
    return loads_json(response) if response.content.strip() else None


@dataclass(slots=True)
class _Call:
    """What the retry policy needs to know about one logical request."""

    method: str
    url: str  # redacted, for messages and logs
    sent: httpx.URL  # the URL ``url`` was redacted from
    idempotent: bool
    max_attempts: int
    attempt: int = 0
    # The server certainly did not act on the last attempt (429, 503 + Retry-After,
    # connection never opened): a retry is safe even for a POST.
    unprocessed: bool = False

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, RetriableError) and (self.idempotent or self.unprocessed)

    def sending(self, url: httpx.URL) -> None:
        """``url`` is what goes out now: redact it for messages, unless it is what was redacted.

        Auth may have added a query key, a redirect leads elsewhere; in the common case
        (the same URL object, or an equal one on a retry) the redaction is not redone.
        """
        if url is not self.sent and url != self.sent:
            self.sent = url
            self.url = redact_url(str(url))

    def suffix(self) -> str:
        """How this failure ends, for the error message."""
        if not (self.idempotent or self.unprocessed):
            return f"; not retried ({self.method} is not idempotent)"
        if self.attempt >= self.max_attempts:
            return f"; gave up after {self.attempt} attempt{'s' if self.attempt > 1 else ''}"
        return ""


#: a slot used later than this (seconds) moves the shared schedule on (see RateBudget.late)
LATE_AFTER = 0.002


class HttpClient:
    """One per system: an :class:`httpx.AsyncClient` with politeness and error mapping.

    Every request waits on the rate budget shared through ``registry`` (per host and
    credential), honours a host's deferral, retries what is safe to retry with
    full-jitter exponential backoff, obeys ``Retry-After`` and ``RateLimit`` headers,
    and turns failures into :mod:`ferryman.errors` classes whose messages never hold a
    secret::

        async with HttpClient("helpdesk", options, registry=registry,
                              auth=ApiKeyQuery("key", key)) as http:
            response = await http.request("GET", "/api/Tickets", params={"page": 1})

    ``auth`` is any :class:`httpx.Auth`; give it a ``fingerprint`` attribute (as the
    classes in :mod:`ferryman.http.auth` have) so clients with the same credential share
    one budget. ``clock`` replaces wall-clock time and sleeping (tests); ``transport``
    replaces the network (``httpx.MockTransport``, an ASGI app). Without one, requests go
    out through httpx's own transport, or through aiohttp under httpx's API when
    ``FERRYMAN_HTTP_TRANSPORT=aiohttp`` (:mod:`ferryman.http._transport`: the same
    proxies, TLS options, errors and mocks, about a third less CPU per request).
    """

    def __init__(
        self,
        system: str,
        options: HttpOptions,
        *,
        registry: HttpRegistry,
        auth: httpx.Auth | None = None,
        headers: Mapping[str, str] | None = None,
        response_hook: ResponseHook | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
    ) -> None:
        problem = insecure_url_problem(options.base_url, options.allow_insecure_http)
        if problem:
            raise FatalError(problem, system=system)
        self.system = system
        self.options = options
        self.registry = registry
        self.host = host_key(options.base_url)
        """The host key deferrals are stored under; what ``Connector.hosts()`` returns."""
        self._hook = response_hook
        self._clock = clock or Clock()
        self.limiter = registry.limiter(self.host, getattr(auth, "fingerprint", None), options.rate_limit)
        all_headers = {"User-Agent": f"ferryman/{__version__}", **options.headers, **(headers or {})}
        for name, value in all_headers.items():
            if name.lower() in SECRET_NAMES:
                register_secret(value)
        try:
            aiohttp_wire = transport is None and _transport.use_aiohttp()
        except ValueError as exc:  # a typo in the variable must not silently pick one
            raise FatalError(str(exc), system=system) from None
        make = _transport.AiohttpClient if aiohttp_wire else httpx.AsyncClient
        self._client = make(
            base_url=options.base_url,
            auth=auth,
            headers=all_headers,
            timeout=httpx.Timeout(
                connect=options.connect_timeout,
                read=options.read_timeout,
                write=options.read_timeout,
                pool=options.read_timeout,
            ),
            limits=httpx.Limits(max_connections=10, max_keepalive_connections=10, keepalive_expiry=30),
            follow_redirects=False,
            verify=options.verify_tls,
            transport=transport,
        )

    # -- lifecycle ---------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- requests ----------------------------------------------------------------------
    async def request(
        self,
        method: str,
        url_or_path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | str | bytes | None = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        allow_status: Collection[int] = (),
    ) -> httpx.Response:
        """Send one request and return its response, or raise a :mod:`ferryman.errors` class.

        ``url_or_path`` is relative to ``base_url`` (``"/tickets"`` → ``base_url + /tickets``)
        or absolute on the same host (a next-page URL). ``json`` is sent with orjson
        (Decimal exact, datetimes ``Z``); a mapping in ``data`` is form-encoded with
        nested brackets; ``content`` is sent as is.

        ``idempotent`` overrides the method's default (GET, HEAD, PUT, DELETE, OPTIONS:
        yes; POST, PATCH: no); only idempotent requests are retried after a 5xx or a
        broken connection. A status in ``allow_status`` is returned instead of raised.

        Raises :class:`AuthError` (401/403), :class:`RecordRejected` (other 4xx),
        :class:`RetriableError` (5xx, 429, network, after retries),
        :class:`DeferredError` (asked to wait longer than ``defer_after``) and
        :class:`FatalError` (refused URL, TLS verification).
        """
        response, _ = await self._send(
            method, url_or_path, params, json, data, content, headers, idempotent, allow_status, None
        )
        return response

    async def request_decoded(
        self,
        method: str,
        url_or_path: str,
        *,
        decode: Decoder | None = None,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | str | bytes | None = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        allow_status: Collection[int] = (),
    ) -> tuple[httpx.Response, Any]:
        """Like :meth:`request`, also decoding a 2xx body: ``(response, body)``.

        ``decode`` defaults to JSON (``None`` for an empty body); pass e.g.
        ``lambda r: typed_xml_to_python(parse_xml(r))`` for XML. Decoding happens inside
        the retry loop, so a :class:`MalformedResponseError` is retried like a 5xx (for
        idempotent requests). The body of a non-2xx response in ``allow_status`` is
        ``None``.
        """
        return await self._send(
            method,
            url_or_path,
            params,
            json,
            data,
            content,
            headers,
            idempotent,
            allow_status,
            decode or decode_json_or_none,
        )

    async def _send(
        self,
        method: str,
        url_or_path: str,
        params: Mapping[str, Any] | None,
        json: Any,
        data: Mapping[str, Any] | str | bytes | None,
        content: bytes | str | None,
        headers: Mapping[str, str] | None,
        idempotent: bool | None,
        allow_status: Collection[int],
        decode: Decoder | None,
    ) -> tuple[httpx.Response, Any]:
        method = method.upper()
        extra_headers = dict(headers or {})
        if json is not None:
            content = dumps_json(json)
            extra_headers.setdefault("Content-Type", "application/json")
        elif isinstance(data, Mapping):
            content = form_encode(data)
            extra_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif data is not None:
            content = data
        body = content.encode() if isinstance(content, str) else content

        def build(url: str | None = None) -> httpx.Request:
            """The request; to ``url`` (a followed redirect, whose query is its own) when given."""
            if url is not None:
                return self._build(method, url, None, body, extra_headers)
            return self._build(method, url_or_path, params, body, extra_headers)

        first = build()  # refuse a bad URL before waiting on anything
        call = _Call(
            method=method,
            url=redact_url(str(first.url)),
            sent=first.url,
            idempotent=method in IDEMPOTENT_METHODS if idempotent is None else idempotent,
            max_attempts=self.options.max_retries + 1,
        )
        # The retry loop: full-jitter exponential backoff, or exactly the server's
        # Retry-After; only what ``call.retryable`` allows; the last error raised as it is.
        # (Written out: a tenacity ``AsyncRetrying`` built per request cost ~20 us of CPU,
        # as much as the rest of this method.)
        request: httpx.Request | None = first  # the first attempt sends it; a retry builds anew
        while True:
            call.attempt += 1
            call.unprocessed = False
            try:
                if request is None:
                    request = build()
                return await self._attempt(call, request, build, allow_status, decode)
            except RetriableError as exc:
                if call.attempt >= call.max_attempts or not call.retryable(exc):
                    exc.unprocessed = call.unprocessed  # the engine's intents need to know
                    raise
                wait = self._retry_wait(exc, call.attempt)
                self._before_retry(call, exc, wait)
            request = None
            await self._clock.sleep(wait)

    def _build(
        self,
        method: str,
        url_or_path: str,
        params: Mapping[str, Any] | None,
        content: bytes | None,
        headers: Mapping[str, str],
    ) -> httpx.Request:
        try:
            request = self._client.build_request(
                method, url_or_path, params=dict(params) if params else None, content=content, headers=headers
            )
        except httpx.InvalidURL:
            error = FatalError(f"invalid URL {redact_url(url_or_path)!r}", system=self.system)
        else:
            problem = insecure_url_problem(request.url, self.options.allow_insecure_http)
            if problem is None and host_key(request.url) != self.host:
                problem = (
                    f"refusing to send {self.system}'s credentials to {host_key(request.url)} "
                    f"(the system's host is {self.host}): {method} {redact_url(str(request.url))}"
                )
            if problem is None:
                return request
            error = FatalError(problem, system=self.system)
        raise error  # outside the except block: no chained httpx error holding the raw URL

    # -- one attempt -------------------------------------------------------------------
    async def _attempt(
        self,
        call: _Call,
        request: httpx.Request,
        build: Callable[[str | None], httpx.Request],
        allow_status: Collection[int],
        decode: Decoder | None,
    ) -> tuple[httpx.Response, Any]:
        hops = 0
        while True:
            await self._wait_for_turn()  # a followed redirect is one more request to the host
            response = await self._receive(call, request)
            await self._observe(call, response)
            if not (300 <= response.status_code < 400) or response.status_code in allow_status:
                return await self._handle(call, response, allow_status, decode)
            # Before the response hook: a connector must not see (nor word, unredacted) a
            # redirect; every one is refused or followed here, by the same rule.
            request = self._next_hop(call, request, response, hops, build)
            hops += 1

    async def _receive(self, call: _Call, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read its body, at most ``max_response_bytes`` of it."""
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            call.sending(request.url)  # as sent: auth may have added a query key
            error: FerrymanError = self._transport_error(call, request, exc)
        else:
            call.sending(request.url)
            try:
                too_large = await self._read_capped(call, response)
            except httpx.TransportError as exc:  # the connection broke (or timed out) mid-body
                error = self._transport_error(call, request, exc)
            except httpx.DecodingError as exc:
                error = MalformedResponseError(
                    f"{call.method} {call.url}: body does not decode ({type(exc).__name__}){call.suffix()}",
                    system=self.system,
                    status=response.status_code,
                )
            else:
                if too_large is None:
                    return response
                error = too_large
            finally:
                await response.aclose()
        self.registry.metrics.count_response(self.system, "error")
        raise error  # raised outside ``except``: the httpx error (and its URL) is not chained

    async def _read_capped(self, call: _Call, response: httpx.Response) -> FatalError | None:
        """Read the body into ``response.content``, or say why it is too large to.

        The cap counts decoded bytes, so a small gzip body that inflates past it is stopped
        as it inflates; a ``Content-Length`` past it is refused before a byte is read.
        """
        cap = self.options.max_response_bytes
        declared = response.headers.get("content-length", "")
        # A HEAD or 304 answer declares the size of a body it does not send.
        bodiless = call.method == "HEAD" or response.status_code in (204, 304)
        if declared.isdigit() and int(declared) > cap and not bodiless:
            return self._too_large(call, response, f"Content-Length {declared}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > cap:
                return self._too_large(call, response, f"{size} bytes read when it stopped")
            chunks.append(chunk)
        # What httpx's own aread() does once the whole body is in: content, text and json()
        # then work as on any response.
        response._content = b"".join(chunks)
        return None

    def _too_large(self, call: _Call, response: httpx.Response, seen: str) -> FatalError:
        # Fatal, not a (retried) MalformedResponseError: the same request brings the same
        # body back, so retrying only reads it again; the run stops with the cursor untouched
        # until a human lowers the page size or raises the cap.
        return FatalError(
            f"response to {call.method} {call.url} (HTTP {response.status_code}, {seen}) is larger than "
            f"max_response_bytes ({_size(self.options.max_response_bytes)}): lower the page size, or raise "
            f"systems.{self.system}.max_response_bytes",
            system=self.system,
            status=response.status_code,
        )

    def _next_hop(
        self,
        call: _Call,
        request: httpx.Request,
        response: httpx.Response,
        hops: int,
        build: Callable[[str | None], httpx.Request],
    ) -> httpx.Request:
        """The request that follows ``response``'s redirect, or the error that refuses it."""
        status = response.status_code
        location = response.headers.get("location")
        try:
            target = request.url.join(location) if location else None
        except httpx.InvalidURL:
            target = None
        problem = self._redirect_problem(call, request.url, target, status, hops)
        if problem is None and target is not None:
            log.info("http.redirect", system=self.system, method=call.method, url=call.url, status=status)
            return build(str(target))  # _build checks the host again before anything is sent
        shown = repr(redact_url(location)) if location else "nowhere (no Location header)"
        raise FatalError(
            f"{call.method} {call.url} was redirected (HTTP {status}) to {shown}; not followed: {problem}",
            system=self.system,
            status=status,
        )

    def _redirect_problem(
        self, call: _Call, source: httpx.URL, target: httpx.URL | None, status: int, hops: int
    ) -> str | None:
        """Why a redirect from ``source`` to ``target`` must not be followed, or ``None``."""
        if self.options.follow_redirects == "never" or status not in _FOLLOWABLE:
            return (
                "check base_url (the API may have moved, or answers with a login page); "
                "follow_redirects: same_host follows redirects that stay on the system's host"
            )
        if target is None:
            return "the Location is missing or not a valid URL"
        if host_key(target) != self.host:
            return f"{host_key(target)} is another host than {self.host} (the credentials go nowhere else)"
        if source.scheme == "https" and target.scheme != "https":
            return "it leaves https for plain http"
        if status not in _KEEPS_METHOD and call.method not in ("GET", "HEAD"):
            # 301/302/303 turn a write into a GET in browsers and httpx: the write would be lost.
            return f"a {call.method} answered with HTTP {status} would be replayed as a GET"
        if hops >= MAX_REDIRECTS:
            return f"more than {MAX_REDIRECTS} redirects (a loop?)"
        return None

    async def _wait_for_turn(self) -> None:
        """Wait out a host deferral, then take a slot from the rate budget."""
        now = self._clock.now()
        not_before = await self.registry.not_before(self.host)
        if not_before is not None and not_before > now:
            await self._pause((not_before - now).total_seconds(), not_before, "host deferred")
        asked = self._clock.now()
        wait = await self.limiter.acquire(asked)
        if wait > 0:
            self.registry.metrics.add_wait(self.system, wait)
            await self._clock.sleep(wait)
        lateness = (self._clock.now() - asked).total_seconds() - max(wait, 0.0)
        if lateness > LATE_AFTER:
            await self.limiter.late(lateness)
        # A 429 seen by another pipeline while we slept blocks us too.
        while (block := await self.limiter.not_before()) is not None and block > (now := self._clock.now()):
            await self._pause((block - now).total_seconds(), block, "rate budget blocked")

    async def _pause(self, seconds: float, until: datetime, reason: str) -> None:
        if seconds > self.options.defer_after:
            raise await self._defer(until, seconds, None, f"{reason}, {seconds:.0f}s from now")
        log.info("http.rate_limited", system=self.system, host=self.host, wait=round(seconds, 3), reason=reason)
        self.registry.metrics.add_wait(self.system, seconds)
        await self._clock.sleep(seconds)

    def _transport_error(self, call: _Call, request: httpx.Request, exc: httpx.TransportError) -> FerrymanError:
        detail = redact(str(exc).replace(str(request.url), call.url)) or "no detail"
        what = f"{type(exc).__name__}: {detail}"
        if isinstance(exc, _LOCAL):
            return FatalError(f"cannot send {call.method} {call.url} ({what})", system=self.system)
        if isinstance(exc, httpx.ConnectError) and _caused_by(exc, ssl.SSLCertVerificationError):
            return FatalError(f"TLS certificate verification failed for {call.url} ({detail})", system=self.system)
        call.unprocessed = isinstance(exc, _NOT_SENT)
        kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "connection failed"
        return RetriableError(f"{kind} for {call.method} {call.url} ({what}){call.suffix()}", system=self.system)

    async def _observe(self, call: _Call, response: httpx.Response) -> None:
        """What every response teaches, a redirect's included: metrics and rate hints."""
        status = response.status_code
        self.registry.metrics.count_response(self.system, status)
        log.debug("http.response", system=self.system, method=call.method, url=call.url, status=status)
        await self._apply_rate_hints(response, self._clock.now())

    async def _handle(
        self, call: _Call, response: httpx.Response, allow_status: Collection[int], decode: Decoder | None
    ) -> tuple[httpx.Response, Any]:
        status = response.status_code
        now = self._clock.now()
        if self._hook is not None:
            result = self._hook(response)
            if inspect.isawaitable(result):
                await result
        if status < 400 or status in allow_status:
            if decode is None or not response.is_success:
                return response, None
            try:
                return response, decode(response)
            except MalformedResponseError as exc:
                malformed = MalformedResponseError(f"{exc}{call.suffix()}", system=self.system, status=status)
            raise malformed  # outside ``except``: one clean error, named after the system
        retry_after = self._retry_after(response, now) if status in (429, 503) else None
        where = f"for {call.method} {call.url}"
        if status == 429 or (status == 503 and retry_after is not None):
            log.info("http.rate_limited", system=self.system, host=self.host, status=status, retry_after=retry_after)
            if retry_after is not None:
                until = now + timedelta(seconds=retry_after)
                if retry_after > self.options.defer_after:
                    raise await self._defer(
                        until, retry_after, status, f"HTTP {status} with Retry-After {retry_after:g}s"
                    )
                await self.limiter.block_until(until)
            call.unprocessed = True  # refused before processing: safe to retry any method
            raise RetriableError(
                f"HTTP {status} {response.reason_phrase} {where}{call.suffix()}",
                system=self.system,
                status=status,
                retry_after=retry_after,
            )
        if status in (401, 403):
            what = "authentication failed" if status == 401 else "access denied"
            raise AuthError(
                f"{what} (HTTP {status}) {where}; check the system's credentials", system=self.system, status=status
            )
        text = excerpt(response.content)
        if status < 500:
            raise RecordRejected(f"HTTP {status} {where}: {text}", system=self.system, status=status)
        raise RetriableError(
            f"HTTP {status} {where}: {text}{call.suffix()}", system=self.system, status=status, retry_after=retry_after
        )

    def _retry_after(self, response: httpx.Response, now: datetime) -> float | None:
        value = response.headers.get("retry-after")
        if value is None:
            return None
        seconds = parse_retry_after(value, now)
        if seconds is None:
            log.warning(
                "http.retry_after_invalid",
                system=self.system,
                host=self.host,
                status=response.status_code,
                value=redact_cut(value, 80),
            )
        return seconds

    async def _apply_rate_hints(self, response: httpx.Response, now: datetime) -> None:
        """Slow down before a 429 when ``RateLimit``/``X-RateLimit-*`` say the quota is nearly spent."""
        hint = parse_ratelimit_headers(response.headers, now)
        if hint is None:
            return
        pause = hint.pause()
        if pause <= 0:
            return
        until = now + timedelta(seconds=pause)
        if pause > self.options.defer_after:
            await self._defer(
                until,
                pause,
                response.status_code,
                f"{hint.source} says {hint.remaining} left, reset in {hint.reset:g}s",
            )
            return
        log.info(
            "http.slow_down",
            system=self.system,
            host=self.host,
            remaining=hint.remaining,
            limit=hint.limit,
            reset=hint.reset,
            wait=round(pause, 3),
        )
        await self.limiter.block_until(until)

    async def _defer(self, until: datetime, wait: float, status: int | None, reason: str) -> DeferredError:
        """Store the host's ``not_before`` and build the error that ends the run as deferred."""
        await self.registry.defer(self.host, until)
        self.registry.metrics.count_deferral(self.system)
        log.warning(
            "http.deferred",
            system=self.system,
            host=self.host,
            status=status,
            wait=round(wait, 3),
            not_before=format_utc(until),
            reason=reason,
        )
        return DeferredError(
            f"{self.host} deferred until {format_utc(until)} ({reason}; "
            f"longer than defer_after={self.options.defer_after:g}s)",
            not_before=until,
            system=self.system,
            host=self.host,
        )

    # -- retry policy ------------------------------------------------------------------
    def _retry_wait(self, exc: RetriableError, attempt: int) -> float:
        """Seconds before retrying after ``attempt`` (1-based) failed with ``exc``."""
        if isinstance(exc.retry_after, int | float):
            return float(exc.retry_after)  # never earlier than the server said; no jitter needed
        # Full jitter: uniform between 0 and base * 2^(attempt-1), capped.
        try:
            high = min(self.options.backoff_base * 2 ** (attempt - 1), self.options.backoff_cap)
        except OverflowError:  # a float power past 2^1023
            high = self.options.backoff_cap
        return random.uniform(0, high)

    def _before_retry(self, call: _Call, exc: RetriableError, wait: float) -> None:
        self.registry.metrics.count_retry(self.system)
        if exc.retry_after is not None:
            self.registry.metrics.add_wait(self.system, wait)
        log.info(
            "http.retry",
            system=self.system,
            host=self.host,
            method=call.method,
            url=call.url,
            attempt=call.attempt,
            status=getattr(exc, "status", None),
            error=type(exc).__name__,
            wait=round(wait, 3),
        )


def _caused_by(exc: BaseException, kind: type[BaseException], depth: int = 8) -> bool:
    """Whether ``kind`` is among the causes of ``exc``, a few links deep.

    httpx's own transport wraps the SSL error twice (httpcore's error, then httpx's), the
    aiohttp transport once: the certificate failure is found at either depth.
    """
    cause = exc.__cause__ or exc.__context__
    while cause is not None and depth > 0:
        if isinstance(cause, kind):
            return True
        cause, depth = cause.__cause__ or cause.__context__, depth - 1
    return False


def _size(value: int) -> str:
    """``67108864`` as ``64 MiB``, for messages about ``max_response_bytes``."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= factor and value % factor == 0:
            return f"{value // factor} {unit}"
    return f"{value} bytes"


class _RedactHttpxLog(logging.Filter):
    """httpx logs every request URL at INFO; keys in query strings must not reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_url(str(arg)) if isinstance(arg, httpx.URL) else redact(arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def _install_httpx_log_filter() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactHttpxLog) for f in logger.filters):
        logger.addFilter(_RedactHttpxLog())


_install_httpx_log_filter()
