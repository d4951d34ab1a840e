"""`ferryman dlq replay` resends a dead-lettered webhook with its original id, and
`ferryman status` shows the endpoint's state."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

from aiohttp import web

from tests.conftest import ferryman_cmd
from tests.webhooks.support import ENV, Receiver, outbound_config


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ENV}
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [*ferryman_cmd(), "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_replay_and_status_of_a_dead_lettered_webhook(tmp_path: Path, default_state_url: str) -> None:
    healthy = False

    def answer(n: int, request: web.Request) -> web.Response:
        return web.Response(status=200 if healthy else 500)

    async with Receiver(answer=answer) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url, retry_schedule=[0])
        (tmp_path / "in" / "tickets.csv").write_text("key,updated_at,subject\nT1,2026-01-01T00:00:00Z,hello\n")
        path = Path(config.file or "")
        # the CLI runs in a worker thread so this loop keeps serving the receiver
        sync = await asyncio.to_thread(cli, path, "sync", "out")
        assert sync.returncode == 0, sync.stdout + sync.stderr
        first_id = receiver.ids()[0]
        status = await asyncio.to_thread(cli, path, "status", "--json")
        [row] = json.loads(status.stdout)
        [hook] = row["webhooks"]
        assert hook["dead"] == 1 and hook["pending"] == 0
        listing = await asyncio.to_thread(cli, path, "dlq", "list")
        assert "hooks.tickets" in listing.stdout or "webhook" in listing.stdout
        healthy = True
        replay = await asyncio.to_thread(cli, path, "dlq", "replay", "--all")
        assert replay.returncode == 0 and "delivered" in replay.stdout, replay.stdout + replay.stderr
        assert receiver.ids()[-1] == first_id, "a replayed event keeps its webhook-id"
        text = await asyncio.to_thread(cli, path, "status")
        assert "webhook    hooks" in text.stdout and "delivered 1" in text.stdout
