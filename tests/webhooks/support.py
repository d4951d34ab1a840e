"""A loopback webhook receiver and config helpers shared by the webhook tests."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from ferryman.config import FerrymanConfig, load_config

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OLD_SECRET = "whsec_" + base64.b64encode(bytes(range(64, 96))).decode()
ENV = {"HOOK_SECRET": SECRET, "OLD_HOOK_SECRET": OLD_SECRET}


@dataclass
class Hit:
    at: float  # time.monotonic() on arrival
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


Answer = Callable[[int, web.Request], Awaitable[web.StreamResponse] | web.StreamResponse]


@dataclass
class Receiver:
    """An aiohttp server on 127.0.0.1 that records every request and answers with
    ``answer(n, request)`` (n counts requests to ``/hook``, from 0)."""

    answer: Answer = field(default=lambda n, r: web.Response(status=200))
    hits: list[Hit] = field(default_factory=list)
    other: list[Hit] = field(default_factory=list)  # requests to any other path
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        hit = Hit(
            time.monotonic(), request.path, {k.lower(): v for k, v in request.headers.items()}, await request.read()
        )
        if request.path != "/hook":
            self.other.append(hit)
            return web.Response(status=200)
        self.hits.append(hit)
        result = self.answer(len(self.hits) - 1, request)
        if asyncio.iscoroutine(result):
            result = await result
        return result  # type: ignore[return-value]

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._hook)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def ids(self) -> list[str]:
        return [h.headers["webhook-id"] for h in self.hits]


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def outbound_config(
    tmp_path: Path,
    state_url: str,
    url: str,
    *,
    source_dir: Path | None = None,
    lease_ttl: str | None = None,
    **hook: Any,
) -> FerrymanConfig:
    """csv ``inbox.tickets`` -> webhook ``hooks.tickets`` (pipeline ``out``), fast retry schedule."""
    source_dir = source_dir or tmp_path / "in"
    source_dir.mkdir(exist_ok=True)
    options = {
        "connector": "webhook",
        "url": url,
        "secret": "${HOOK_SECRET}",
        "timeout": "2s",
        "retry_schedule": [0, "200ms", "400ms"],
        "jitter": 0,
        **hook,
    }
    path = write_config(
        tmp_path,
        {
            "state": {"url": state_url, **({"lease_ttl": lease_ttl} if lease_ttl else {})},
            "systems": {"inbox": {"connector": "csv", "directory": str(source_dir)}, "hooks": options},
            "pipelines": {
                "out": {"from": "inbox.tickets", "to": "hooks.tickets", "deletes": {"enabled": True, "max_share": 1.0}}
            },
        },
    )
    return load_config(path, environ=ENV)


async def drive(step: Callable[[], Awaitable[Any]], until: Callable[[], bool], timeout: float = 10.0) -> None:
    """Call ``step`` every 20 ms until ``until()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out waiting"
        await step()
        await asyncio.sleep(0.02)
