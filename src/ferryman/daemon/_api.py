"""The control API, served by ``ferryman run`` on ``control.listen``.

=======================================  ====================================================
``POST /v1/pipelines/{name}/trigger``    run now unless running: 202; ``?wait=true`` waits and
                                         answers 200 with the result (outcome, counts, message);
                                         409 when already running (without ``wait``) or disabled
``GET /v1/status``                       the rows of ``ferryman status --json``
``GET /healthz``                         200 when the event loop and the database answer, else
                                         503 (also while stopping); no token needed
``GET /metrics``                         Prometheus text
=======================================  ====================================================

Every route but ``/healthz`` needs ``Authorization: Bearer TOKEN`` when the daemon has a
token (always on TCP). Webhook intakes add their own routes with their own checks.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from ferryman.engine import RunResult
from ferryman.timeutil import format_utc

__all__ = ["Controller", "Refused", "build_app", "result_json"]

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refused(Exception):
    """A trigger the daemon will not start: ``reason`` is ``disabled``, ``stopping`` or ``unknown``."""

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

    async def status(self) -> list[dict[str, Any]]: ...

    async def health(self) -> tuple[bool, dict[str, Any]]: ...

    async def metrics_text(self) -> str: ...


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


def build_app(controller: Controller) -> web.Application:
    """The aiohttp application; the caller adds webhook intake routes and runs it."""

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

    async def status(_request: web.Request) -> web.StreamResponse:
        return web.json_response(await controller.status(), dumps=_dumps)

    async def healthz(_request: web.Request) -> web.StreamResponse:
        ok, body = await controller.health()
        return web.json_response(body, status=200 if ok else 503)

    async def prometheus(_request: web.Request) -> web.StreamResponse:
        text = await controller.metrics_text()
        return web.Response(body=text.encode("utf-8"), headers={"Content-Type": PROMETHEUS_TYPE})

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/v1/pipelines/{name}/trigger", guarded(trigger))
    app.router.add_get("/v1/status", guarded(status))
    app.router.add_get("/metrics", guarded(prometheus))
    app.router.add_get("/healthz", healthz)
    return app


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, default=str)
