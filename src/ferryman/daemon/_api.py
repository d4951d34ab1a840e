"""The control API, served by ``ferryman run`` on ``control.listen``.

=======================================  ====================================================
``POST /v1/pipelines/{name}/trigger``    run now unless running: 202; ``?wait=true`` waits and
                                         answers 200 with the result (outcome, counts, message);
                                         409 when already running (without ``wait``) or disabled
``POST /v1/pipelines/{name}/audit``      audit now (never repairs), as ``audit:`` does on its
                                         schedule: 202, or with ``?wait=true`` 200 and the
                                         outcome (clean, differences, failed, busy) with the
                                         report; 409 when already auditing (without ``wait``),
                                         running, two-way or disabled
``GET /v1/status``                       the rows of ``ferryman status --json``
``GET /healthz``                         200 when the event loop and the database answer, else
                                         503 (also while stopping); no token needed
``GET /metrics``                         Prometheus text
=======================================  ====================================================

Every route but ``/healthz`` needs ``Authorization: Bearer TOKEN`` when the daemon has a
token (always on TCP); ``/metrics`` does not when ``control.metrics_public`` is true (the
config allows it only with a loopback address or a Unix socket). Webhook intakes add their
own routes with their own checks.

Clients that connect and say nothing, or say it slowly, cannot take the API (or the
daemon's files) away from the rest: a connection must send a whole request head within
``HEADER_TIMEOUT`` and its body within ``BODY_TIMEOUT`` (else 408), an idle keep-alive
connection is closed after ``IDLE_TIMEOUT``, and no more than :func:`connection_cap`
connections are open at once: a new one beyond it closes the connection idle the longest,
or is answered 503 when every connection is busy. None of this is logged per connection.
"""

from __future__ import annotations

import asyncio
import hmac
import resource
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from ferryman import metrics
from ferryman.engine import RunResult
from ferryman.timeutil import format_utc

from ._listen import Listen

__all__ = [
    "BODY_TIMEOUT",
    "HEADER_TIMEOUT",
    "IDLE_TIMEOUT",
    "ConnectionGate",
    "Controller",
    "Refused",
    "build_app",
    "connection_cap",
    "result_json",
    "start_site",
]

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HEADER_TIMEOUT = 10.0  # seconds from connect to a whole request head
BODY_TIMEOUT = 10.0  # seconds from the head to the end of the body (1 MB on loopback takes ms)
IDLE_TIMEOUT = 30.0  # seconds a keep-alive connection may wait between requests
MAX_CONNECTIONS = 256  # callers are local: the CLI, a monitor, a reverse proxy for webhooks
FILES_RESERVED = 128  # never given to connections: the database, apps' sockets, CSV files
# asyncio accepts up to the backlog in one go, before any of them can be refused or an idle
# one closed: the cap leaves room for two such bursts, so accept() never runs out of files
# (in Python 3.11 an accept that does schedules a retry per connection it tried: thousands
# of errors a second)
BACKLOG = 128

_REFUSAL_BODY = b'{"error": "too many connections to the control API; retry shortly"}'
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


def connection_cap(file_limit: int | None = None) -> int:
    """How many control API connections may be open at once: ``MAX_CONNECTIONS``, or fewer
    so that ``FILES_RESERVED`` of the process's file limit stay free for the work itself,
    beside the connections accepted in a burst before the gate sees them."""
    if file_limit is None:
        file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if file_limit == resource.RLIM_INFINITY or file_limit < 0:
        return MAX_CONNECTIONS
    return max(4, min(MAX_CONNECTIONS, file_limit - FILES_RESERVED - 2 * BACKLOG))


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's protocol inside, with the gate's deadlines around it."""

    def __init__(self, gate: ConnectionGate) -> None:
        self.gate = gate
        self.transport: asyncio.Transport | None = None
        self.inner: asyncio.Protocol | None = None
        self.busy = 0  # requests being handled
        self.idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.gate.admit(self):
            transport.write(_REFUSAL)
            transport.close()
            return
        self.inner = self.gate.protocol()
        self.inner.connection_made(transport)
        self.wait(self.gate.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.release(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.inner is not None:
            self.inner.connection_lost(exc)
            self.inner = None

    def wait(self, seconds: float) -> None:
        """Close the connection unless a request is being handled ``seconds`` from now."""
        loop = asyncio.get_running_loop()
        self.idle_since = loop.time()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(seconds, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if not self.busy:
            self.close()

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        if not self.closing:
            assert self.transport is not None
            self.transport.close()


class ConnectionGate:
    """The protocol factory the control API listens with: caps, deadlines, busy marks."""

    def __init__(
        self,
        *,
        cap: int,
        header_timeout: float = HEADER_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.cap = cap
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout
        self._open: dict[asyncio.BaseTransport, _Connection] = {}
        self._factory: Callable[[], asyncio.Protocol] | None = None

    def bind(self, factory: Callable[[], asyncio.Protocol]) -> None:
        """Serve with ``factory`` (an aiohttp runner's server) inside the gate."""
        self._factory = factory

    def __call__(self) -> asyncio.Protocol:
        return _Connection(self)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def protocol(self) -> asyncio.Protocol:
        assert self._factory is not None, "bind() the gate to a server first"
        return self._factory()

    def admit(self, conn: _Connection) -> bool:
        # a closed connection keeps its file until the loop's next turn, and a burst of
        # accepts is admitted within one turn: count and evict only the live ones
        live = [c for c in self._open.values() if not c.closing]
        excess = len(live) + 1 - self.cap
        if excess > 0:
            # the ones idle the longest are the least likely to be callers in the middle of something
            idle = sorted((c for c in live if not c.busy), key=lambda c: c.idle_since)
            if len(idle) < excess:
                metrics.inc("ferryman_control_connections_refused_total")
                return False
            for old in idle[:excess]:
                old.close()
            metrics.inc("ferryman_control_connections_evicted_total", excess)
        assert conn.transport is not None
        self._open[conn.transport] = conn
        return True

    def release(self, conn: _Connection) -> None:
        if conn.transport is not None and self._open.get(conn.transport) is conn:
            del self._open[conn.transport]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = self._open.get(request.transport) if request.transport is not None else None
        if conn is not None:
            conn.busy += 1
        try:
            return await self._within_body_timeout(request, handler)
        finally:
            if conn is not None:
                conn.busy -= 1
                if not conn.busy:
                    conn.wait(self.idle_timeout)

    async def _within_body_timeout(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.body_exists or request.content.is_eof():
            return await handler(request)
        # the deadline covers the body's arrival only: once it is in, a handler may take
        # as long as its work does (a trigger with ?wait=true waits for the whole run)
        inside = True
        async with asyncio.timeout(self.body_timeout) as deadline:

            def arrived() -> None:
                if inside:
                    deadline.reschedule(None)

            request.content.on_eof(arrived)
            try:
                return await handler(request)
            except TimeoutError:
                if not deadline.expired():
                    raise
            finally:
                inside = False
        response = web.json_response(
            {"error": f"the request body did not arrive within {self.body_timeout:g} s"}, status=408
        )
        response.force_close()
        return response


async def start_site(runner: web.AppRunner, listen: Listen, gate: ConnectionGate) -> web.BaseSite:
    """Listen where ``listen`` says, every connection going through ``gate``."""
    assert runner.server is not None, "runner.setup() first"
    gate.bind(runner.server)
    site = _GatedSite(runner, listen, gate)
    await site.start()
    return site


class _GatedSite(web.BaseSite):
    def __init__(self, runner: web.AppRunner, listen: Listen, gate: ConnectionGate) -> None:
        super().__init__(runner, backlog=BACKLOG)
        self._listen = listen
        self._gate = gate

    @property
    def name(self) -> str:
        return self._listen.base_url

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        if self._listen.path is not None:
            self._server = await loop.create_unix_server(self._gate, str(self._listen.path), backlog=self._backlog)
        else:
            assert self._listen.port is not None, "a TCP listen address has a port"
            self._server = await loop.create_server(
                self._gate, self._listen.host, self._listen.port, backlog=self._backlog, reuse_address=True
            )


class Refused(Exception):
    """A trigger the daemon will not start: ``reason`` is ``disabled``, ``stopping`` or ``unknown``
    (audits also ``two-way``, or ``running``: a run of the pipeline is in progress)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Controller(Protocol):
    """What the API needs from the daemon."""

    @property
    def token(self) -> str | None: ...

    def start_run(self, name: str, trigger: str) -> tuple[asyncio.Task[RunResult], bool]:
        """The run of ``name``: a new one (True) or the one in progress (False). Raises Refused."""
        ...

    def start_audit(self, name: str, trigger: str) -> tuple[asyncio.Task[dict[str, Any]], bool]:
        """The audit of ``name``: a new one (True) or the one in progress (False); it ends
        with a JSON document (``outcome``, ``message``, ``report``). Raises Refused."""
        ...

    async def status(self) -> list[dict[str, Any]]: ...

    async def health(self) -> tuple[bool, dict[str, Any]]: ...

    async def metrics_text(self) -> str: ...

    @property
    def metrics_public(self) -> bool:
        """``control.metrics_public``: ``/metrics`` needs no token (loopback or a Unix socket only)."""
        ...


def result_json(result: RunResult, *, joined: bool = False) -> dict[str, Any]:
    return {
        "pipeline": result.pipeline,
        "outcome": result.outcome,
        "counts": result.counts,
        "message": result.message,
        "run_id": result.run_id,
        "seconds": round(result.seconds, 3),
        "not_before": format_utc(result.not_before) if result.not_before else None,
        "joined": joined,
    }


def build_app(controller: Controller, gate: ConnectionGate | None = None) -> web.Application:
    """The aiohttp application; the caller adds webhook intake routes and runs it (through
    ``gate``, whose middleware marks requests in progress and enforces the body timeout)."""

    def guarded(handler: Handler) -> Handler:
        async def check(request: web.Request) -> web.StreamResponse:
            expected = controller.token
            if expected is not None:
                offered = request.headers.get("Authorization", "")
                scheme, _, value = offered.partition(" ")
                value = value.strip()
                # an empty token matches an empty header: it opens nothing, whatever set it
                if (
                    scheme.lower() != "bearer"
                    or not value
                    or not expected.strip()
                    or not hmac.compare_digest(value.encode(), expected.encode())
                ):
                    return web.json_response(
                        {"error": "missing or wrong bearer token (see control.token or <state dir>/control.token)"},
                        status=401,
                        headers={"WWW-Authenticate": 'Bearer realm="ferryman"'},
                    )
            return await handler(request)

        return check

    async def trigger(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        wait = request.query.get("wait", "").lower() in ("1", "true", "yes")
        try:
            task, started = controller.start_run(name, "api")
        except Refused as exc:
            status = {"unknown": 404, "stopping": 503}.get(exc.reason, 409)
            return web.json_response({"pipeline": name, "error": str(exc), "reason": exc.reason}, status=status)
        if not wait:
            if started:
                return web.json_response({"pipeline": name, "status": "started"}, status=202)
            return web.json_response(
                {
                    "pipeline": name,
                    "error": "already running in this daemon; use ?wait=true to wait for it",
                    "reason": "running",
                },
                status=409,
            )
        try:
            # shielded: a client that gives up must not cancel the run
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            return web.json_response(
                {"pipeline": name, "error": "the daemon stopped before the run finished", "reason": "stopping"},
                status=503,
            )
        return web.json_response(result_json(result, joined=not started))

    async def audit(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        try:
            task, started = controller.start_audit(name, "api")
        except Refused as exc:
            status = {"unknown": 404, "stopping": 503}.get(exc.reason, 409)
            return web.json_response({"pipeline": name, "error": str(exc), "reason": exc.reason}, status=status)
        if request.query.get("wait", "").lower() not in ("1", "true", "yes"):
            if started:
                return web.json_response({"pipeline": name, "status": "started"}, status=202)
            error = "already being audited in this daemon; use ?wait=true to wait for it"
            return web.json_response({"pipeline": name, "error": error, "reason": "auditing"}, status=409)
        try:
            outcome = await asyncio.shield(task)  # a client that gives up must not cancel the audit
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            error = "the daemon stopped before the audit finished"
            return web.json_response({"pipeline": name, "error": error, "reason": "stopping"}, status=503)
        return web.json_response({**outcome, "joined": not started}, dumps=_dumps)

    async def status(_request: web.Request) -> web.StreamResponse:
        return web.json_response(await controller.status(), dumps=_dumps)

    async def healthz(_request: web.Request) -> web.StreamResponse:
        ok, body = await controller.health()
        return web.json_response(body, status=200 if ok else 503)

    async def prometheus(_request: web.Request) -> web.StreamResponse:
        text = await controller.metrics_text()
        return web.Response(body=text.encode("utf-8"), headers={"Content-Type": PROMETHEUS_TYPE})

    app = web.Application(client_max_size=1024 * 1024, middlewares=[gate.middleware] if gate is not None else [])
    app.router.add_post("/v1/pipelines/{name}/trigger", guarded(trigger))
    app.router.add_post("/v1/pipelines/{name}/audit", guarded(audit))
    app.router.add_get("/v1/status", guarded(status))
    checked_prometheus = guarded(prometheus)

    async def metrics_route(request: web.Request) -> web.StreamResponse:
        # asked each time: a reload may switch control.metrics_public
        if controller.metrics_public:
            return await prometheus(request)
        return await checked_prometheus(request)

    app.router.add_get("/metrics", metrics_route)
    app.router.add_get("/healthz", healthz)
    return app


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str)
