"""SIGKILL during outbound delivery of 1,000 events, then restart: the receiver ends with
every event at least once, and de-duplicating by webhook-id leaves exactly 1,000."""

from __future__ import annotations

import asyncio
import csv
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import orjson
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.conftest import ferryman_cmd
from tests.webhooks.support import ENV, SECRET, write_config

N = 1000
KILLS = 3


class ThreadedReceiver:
    """A loopback receiver on its own thread and event loop (the test thread drives processes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits: list[tuple[str, bytes, dict[str, str]]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            self.hits.append((request.headers["webhook-id"], body, dict(request.headers)))
        return web.Response(status=200)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> ThreadedReceiver:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def count(self) -> int:
        with self.lock:
            return len(self.hits)


def test_sigkill_during_delivery_loses_no_event_and_mints_none_twice(tmp_path: Path, default_state_url: str) -> None:
    rng = random.Random(int(os.environ.get("FERRYMAN_CRASH_SEED", "6")))
    source = tmp_path / "in"
    source.mkdir()
    with (source / "tickets.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["key", "updated_at", "subject", "status"])
        for i in range(N):
            writer.writerow(
                [f"T{i:04d}", f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z", f"s{i}", "open"]
            )

    with ThreadedReceiver() as receiver:
        config = write_config(
            tmp_path,
            {
                "state": {"url": default_state_url},
                "log": {"format": "json", "level": "warning"},
                "systems": {
                    "inbox": {"connector": "csv", "directory": str(source)},
                    "hooks": {
                        "connector": "webhook",
                        "url": receiver.url,
                        "secret": "${HOOK_SECRET}",
                        "timeout": "5s",
                        "retry_schedule": [0, "200ms", "400ms", "1s"],
                        "jitter": 0,
                    },
                },
                "pipelines": {"out": {"from": "inbox.tickets", "to": "hooks.tickets", "page_size": 100}},
            },
        )
        cmd = [*ferryman_cmd(), "--config", str(config), "sync", "out", "--no-progress"]
        env = {**{k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}, **ENV}

        kills = 0
        for _ in range(KILLS):
            before = receiver.count()
            target = before + rng.randint(80, 250)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            deadline = time.monotonic() + 60
            while proc.poll() is None and receiver.count() < target and time.monotonic() < deadline:
                time.sleep(0.005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=30)
            assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode() if proc.stderr else ""
        assert kills == KILLS, "every kill must land while events were being delivered"
        assert len({h[0] for h in receiver.hits}) < N

        for _ in range(5):  # restart until the outbox is empty
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
            assert done.returncode == 0, done.stderr
            if len({h[0] for h in receiver.hits}) == N:
                break
        time.sleep(0.1)

    ids = [h[0] for h in receiver.hits]
    unique = set(ids)
    assert len(unique) == N, f"{len(unique)} distinct webhook-ids for {N} events"
    by_id: dict[str, bytes] = {}
    for webhook_id, body, headers in receiver.hits:
        Webhook(SECRET).verify(body, headers)
        # a resent event is the same event: same id, same body
        assert by_id.setdefault(webhook_id, body) == body
    keys = {orjson.loads(b)["data"]["key"] for b in by_id.values()}
    assert keys == {f"T{i:04d}" for i in range(N)}
    print(f"{len(ids)} deliveries for {N} events ({len(ids) - N} resent after {kills} kills)")
