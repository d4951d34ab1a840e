"""A webhook intake served by a running daemon: a signed message without the control
token is accepted, stored and handed to its pipeline; a bad signature is refused."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from standardwebhooks import Webhook

from tests.daemon.support import csv_system, free_port, read_keys, running, write_config
from tests.webhooks.support import SECRET


def test_daemon_serves_an_intake_and_runs_its_pipeline(tmp_path: Path, default_state_url: str) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "ferryman.yaml",
        state_url=default_state_url,
        listen=f"127.0.0.1:{port}",
        systems={
            "shop": {"connector": "webhook", "secret": "${SHOP_SECRET}", "intake": True},
            "out": csv_system(tmp_path / "out"),
        },
        pipelines={"inbound": {"from": "shop.tickets", "to": "out.tickets"}},
    )
    body = json.dumps(
        {
            "type": "ticket.updated",
            "timestamp": "2026-11-22T10:00:00Z",
            "data": {
                "key": "SHOP-1",
                "updated_at": "2026-11-22T09:59:00Z",
                "subject": "Door is stuck",
                "status": "open",
            },
        }
    )
    now = datetime.now(UTC)
    good = Webhook(SECRET).sign("msg_1", now, body)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "content-type": "application/json",
    }
    with running(config, env={"SHOP_SECRET": SECRET}):
        url = f"http://127.0.0.1:{port}/hooks/shop"
        bad = httpx.post(
            url, content=body, headers={**headers, "webhook-signature": "v1,AAAA"}, timeout=10, trust_env=False
        )
        assert bad.status_code == 401
        ok = httpx.post(url, content=body, headers={**headers, "webhook-signature": good}, timeout=10, trust_env=False)
        assert 200 <= ok.status_code < 300, ok.text  # no control token needed: the signature is the check
        target = tmp_path / "out" / "tickets.csv"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (target.exists() and "SHOP-1" in read_keys(target)):
            time.sleep(0.2)
        assert read_keys(target) == ["SHOP-1"]
