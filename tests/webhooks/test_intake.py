"""The intake: POST /hooks/<system> verifies, de-duplicates, maps, stores durably and
triggers; the engine then delivers what arrived like any other source."""

from __future__ import annotations

import asyncio
import csv
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook

from ferryman.config import FerrymanConfig, load_config
from ferryman.engine import Engine
from ferryman.state import StateStore
from ferryman.timeutil import utcnow
from ferryman.webhooks import inbox
from ferryman.webhooks.inbox import T_INBOX, T_SEEN
from ferryman.webhooks.intake import IntakeContext, add_routes
from tests.webhooks.support import ENV, OLD_SECRET, SECRET, write_config


def intake_config(tmp_path: Path, state_url: str, intake: Any = True, **pipelines: Any) -> FerrymanConfig:
    path = write_config(
        tmp_path,
        {
            "state": {"url": state_url},
            "systems": {
                "shop": {"connector": "webhook", "secret": "${HOOK_SECRET}", "intake": intake},
                "out": {"connector": "csv", "directory": str(tmp_path / "out")},
            },
            "pipelines": pipelines or {"shop-in": {"from": "shop.tickets", "to": "out.tickets"}},
        },
    )
    return load_config(path, environ=ENV)


class Harness:
    def __init__(self, config: FerrymanConfig, store: StateStore, trigger_delay: float = 0.0) -> None:
        self.config = config
        self.store = store
        self.triggered: list[str] = []
        self.trigger_delay = trigger_delay
        self.client: TestClient | None = None

    async def trigger(self, pipeline: str) -> None:
        self.triggered.append(pipeline)
        await asyncio.sleep(self.trigger_delay)

    async def __aenter__(self) -> Harness:
        app = web.Application()
        assert add_routes(app, IntakeContext(self.config, self.store, self.trigger)) == len(
            [s for s in self.config.systems.values() if s.connector == "webhook"]
        )
        self.client = TestClient(TestServer(app))
        await self.client.start_server()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.client is not None
        await self.client.close()

    async def post(
        self,
        payload: Any,
        *,
        msg_id: str = "msg_1",
        secret: str = SECRET,
        at: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        path: str = "/hooks/shop",
    ) -> tuple[int, dict[str, Any]]:
        """Signed by the third-party implementation, as an app sending to Ferryman would."""
        assert self.client is not None
        body = raw if raw is not None else orjson.dumps(payload)
        stamp = at or utcnow()
        signed = {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(stamp.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, stamp, body.decode()),
            "content-type": "application/json",
        }
        response = await self.client.post(path, data=body, headers=headers if headers is not None else signed)
        return response.status, await response.json()

    async def run(self, name: str = "shop-in") -> dict[str, int]:
        engine = Engine(self.config, self.store)
        try:
            result = await engine.run(name)
        finally:
            await engine.aclose()
        assert result.outcome == "ok", result.message
        return result.counts


def rows(store: StateStore, table: sa.Table) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table)).mappings()]


def published(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def event(key: str = "T1", subject: str = "Printer on fire", type_: str = "ticket.created", **more: Any) -> dict:
    return {
        "type": type_,
        "timestamp": "2026-05-01T10:00:00Z",
        "data": {"key": key, "updated_at": "2026-05-01T10:00:00Z", "subject": subject, "status": "open", **more},
    }


async def test_the_same_message_posted_twice_creates_one_record_change(tmp_path: Path, default_state_url: str) -> None:
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        assert await hooks.post(event()) == (
            200,
            {"status": "stored", "records": 1, "rejected": 0, "pipelines": ["shop-in"]},
        )
        assert await hooks.post(event()) == (200, {"status": "duplicate"})
        assert hooks.triggered == ["shop-in"]  # the duplicate triggers nothing either
        [stored] = rows(store, T_INBOX)
        counts = await hooks.run()
        assert (counts["read"], counts["created"]) == (1, 1)
        [row] = published(tmp_path / "out" / "tickets.csv")
        assert (row["key"], row["subject"]) == ("T1", "Printer on fire")
        assert orjson.loads(row["extra"]) == {"source_updated_at": "2026-05-01T10:00:00Z"}

        # the sender retries once more after the run: still nothing new to deliver
        assert await hooks.post(event()) == (200, {"status": "duplicate"})
        assert rows(store, T_INBOX) == [stored]
        counts = await hooks.run()
        assert counts["created"] + counts["updated"] == 0
        assert len(published(tmp_path / "out" / "tickets.csv")) == 1
        # a new message about the same record is a new change
        assert (await hooks.post(event(subject="Printer fixed", type_="ticket.updated"), msg_id="msg_2"))[0] == 200
        assert (await hooks.run())["updated"] == 1
        assert [r["subject"] for r in published(tmp_path / "out" / "tickets.csv")] == ["Printer fixed"]


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("wrong secret", {"secret": OLD_SECRET}),
        ("stale timestamp", {"at": timedelta(minutes=-6)}),
        ("future timestamp", {"at": timedelta(minutes=6)}),
        ("no signature headers", {"headers": {"content-type": "application/json"}}),
    ],
)
async def test_a_bad_signature_is_401_and_changes_nothing(
    tmp_path: Path, default_state_url: str, case: str, change: dict[str, Any]
) -> None:
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    if isinstance(change.get("at"), timedelta):  # relative to when the test runs, not when it was collected
        change = {**change, "at": utcnow() + change["at"]}
    async with Harness(config, store) as hooks:
        status, body = await hooks.post(event(), **change)
        assert status == 401 and "signature verification failed" in body["error"]
        assert rows(store, T_INBOX) == [] and rows(store, T_SEEN) == [] and hooks.triggered == []
        # the refused message did not use up its id: the genuine one is accepted
        assert (await hooks.post(event()))[1]["status"] == "stored"


async def test_a_tampered_body_is_401(tmp_path: Path, default_state_url: str) -> None:
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        assert hooks.client is not None
        body = orjson.dumps(event())
        stamp = utcnow()
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(int(stamp.timestamp())),
            "webhook-signature": Webhook(SECRET).sign("msg_1", stamp, body.decode()),
        }
        response = await hooks.client.post("/hooks/shop", data=body.replace(b"Printer", b"Scanner"), headers=headers)
        assert response.status == 401
        assert rows(store, T_INBOX) == [] and rows(store, T_SEEN) == []


async def test_a_record_sent_late_with_an_old_timestamp_is_still_delivered(
    tmp_path: Path, default_state_url: str
) -> None:
    """The cursor follows receipt order, not the sender's clock."""
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        await hooks.post(event("T1", updated_at="2026-05-01T10:00:00Z"), msg_id="a")
        assert (await hooks.run())["created"] == 1
        await hooks.post(event("T2", updated_at="2019-01-01T00:00:00Z"), msg_id="b")
        assert (await hooks.run())["created"] == 1
    assert sorted(r["key"] for r in published(tmp_path / "out" / "tickets.csv")) == ["T1", "T2"]


async def test_a_configured_mapping_reads_foreign_payloads(tmp_path: Path, default_state_url: str) -> None:
    intake = {
        "streams": {
            "tickets": {
                "events": ["issue.opened", "issue.changed"],
                "deleted_events": ["issue.removed"],
                "path": "data.issues",
                "fields": {
                    "key": "id",
                    "subject": "title",
                    "requester_email": "reporter.email",
                    "created_at": "created",
                },
                "timezone": "Europe/Berlin",
            }
        }
    }
    config = intake_config(tmp_path, default_state_url, intake)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        payload = {
            "type": "issue.opened",
            "data": {
                "issues": [
                    {
                        "id": 41,
                        "title": "Login broken",
                        "reporter": {"email": "a@example.com"},
                        "created": "2026-05-01 12:00:00",
                        "votes": 3,
                    },
                    {"id": 42, "title": "Slow", "reporter": {"email": "b@example.com"}, "created": 1777636800},
                    {"title": "no id at all"},
                ]
            },
        }
        status, body = await hooks.post(payload)
        assert (status, body["records"], body["rejected"]) == (200, 2, 1)
        assert (await hooks.post({"type": "issue.commented", "data": {}}, msg_id="msg_2"))[1]["status"] == "ignored"
        counts = await hooks.run()
        assert (counts["created"], counts["dead_lettered"]) == (2, 1)
        out = {r["key"]: r for r in published(tmp_path / "out" / "tickets.csv")}
        assert out["41"]["subject"] == "Login broken" and out["41"]["requester_email"] == "a@example.com"
        assert out["41"]["created_at"] == "2026-05-01T10:00:00Z"  # Berlin summer time to UTC
        assert out["42"]["created_at"] == "2026-05-01T12:00:00Z"  # epoch seconds
        assert orjson.loads(out["41"]["extra"]) == {"votes": 3}
        [letter] = store.dead_letters()
        assert letter.dst is None and "no key" in letter.reason and letter.ref == "webhook msg_1"

        await hooks.post({"type": "issue.removed", "data": {"issues": {"id": 41}}}, msg_id="msg_3")
        pipeline = config.pipelines["shop-in"]
        pipeline.deletes.enabled, pipeline.deletes.max_share = True, 1.0
        assert (await hooks.run())["deleted"] == 1


async def test_a_trigger_only_intake_stores_nothing_but_the_id(tmp_path: Path, default_state_url: str) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "tickets.csv").write_text("key,updated_at\n")
    path = write_config(
        tmp_path,
        {
            "state": {"url": default_state_url},
            "systems": {
                "ping": {"connector": "webhook", "secret": "${HOOK_SECRET}", "intake": {"trigger": "poll"}},
                "src": {"connector": "csv", "directory": str(tmp_path / "in")},
                "out": {"connector": "csv", "directory": str(tmp_path / "out")},
            },
            "pipelines": {"poll": {"from": "src.tickets", "to": "out.tickets"}},
        },
    )
    config = load_config(path, environ=ENV)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        assert await hooks.post({"anything": True}, path="/hooks/ping") == (
            200,
            {"status": "triggered", "pipelines": ["poll"]},
        )
        assert await hooks.post({"anything": True}, path="/hooks/ping") == (200, {"status": "duplicate"})
        assert hooks.triggered == ["poll"]
        assert rows(store, T_INBOX) == [] and len(rows(store, T_SEEN)) == 1
        assert (await hooks.post({}, path="/hooks/ping", secret=OLD_SECRET, msg_id="x"))[0] == 401


async def test_it_answers_fast_even_when_a_trigger_is_slow(tmp_path: Path, default_state_url: str) -> None:
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    async with Harness(config, store, trigger_delay=5.0) as hooks:
        started = time.monotonic()
        assert (await hooks.post(event()))[0] == 200
        assert time.monotonic() - started < 1.0
        assert len(rows(store, T_INBOX)) == 1  # committed before the answer


async def test_ids_are_forgotten_after_the_window_and_large_bodies_refused(
    tmp_path: Path, default_state_url: str
) -> None:
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    with store.transaction() as conn:
        conn.execute(
            sa.insert(T_SEEN).values(system="shop", webhook_id="old", received_at=utcnow() - timedelta(hours=73))
        )
        conn.execute(
            sa.insert(T_SEEN).values(system="shop", webhook_id="recent", received_at=utcnow() - timedelta(hours=71))
        )
    inbox._last_prune.clear()
    async with Harness(config, store) as hooks:
        assert (await hooks.post(event(), msg_id="recent"))[1]["status"] == "duplicate"
        assert (await hooks.post(event(), msg_id="old"))[1]["status"] == "stored"
        status, _ = await hooks.post(None, raw=b'{"type": "ticket.created", "pad": "' + b"x" * 1_100_000 + b'"}')
        assert status == 413


async def test_concurrent_messages_about_one_record_all_land_in_order(tmp_path: Path, default_state_url: str) -> None:
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        answers = await asyncio.gather(*(hooks.post(event(subject=f"v{i}"), msg_id=f"m{i}") for i in range(20)))
        assert all(
            a == (200, {"status": "stored", "records": 1, "rejected": 0, "pipelines": ["shop-in"]}) for a in answers
        )
        [row] = rows(store, T_INBOX)
        assert (await hooks.run())["created"] == 1
        # the inbox keeps the message stored last
        assert published(tmp_path / "out" / "tickets.csv")[0]["subject"] == orjson.loads(row["record"])["subject"]
