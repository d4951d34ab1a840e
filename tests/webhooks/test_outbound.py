"""The webhook sink against a real receiver on loopback: bodies, headers and signatures;
failures, timeouts, redirects, 410 and 429 with Retry-After; dead letters and replay."""

from __future__ import annotations

import asyncio
import csv
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from ferryman.connector import SystemContext
from ferryman.engine import Engine
from ferryman.errors import FatalError
from ferryman.records import Ticket
from ferryman.state import PageCommit, StateStore
from ferryman.webhooks import OutboxWorker, build_event, endpoint_status, has_outbound, replay_dead_letters
from ferryman.webhooks.outbox import T_OUTBOX, insert_events, jittered
from ferryman_connectors.webhook import WebhookConnector
from tests.webhooks.support import ENV, OLD_SECRET, SECRET, Receiver, drive, outbound_config

FIELDS = ["key", "updated_at", "subject", "status", "deleted"]


def write_tickets(directory: Path, rows: list[list[str]]) -> None:
    with (directory / "tickets.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(FIELDS)
        writer.writerows(rows)


def ticket(n: int, subject: str = "hello") -> Ticket:
    return Ticket(key=f"T{n}", updated_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n), subject=subject)


def queue(store: StateStore, n: int, system: str = "hooks", start: int = 0) -> list[str]:
    events = [build_event(system, "tickets", ticket(i), "created") for i in range(start, start + n)]
    insert_events(store, events, [timedelta(0)])
    return [e.event_id for e in events]


def outbox_rows(store: StateStore) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(T_OUTBOX).order_by(T_OUTBOX.c.seq)).mappings()]


async def test_a_sync_run_posts_one_signed_event_per_change(tmp_path: Path, default_state_url: str) -> None:
    async with Receiver() as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url, previous_secret="${OLD_HOOK_SECRET}")
        store = StateStore.open(default_state_url)
        write_tickets(
            tmp_path / "in",
            [["1", "2026-01-01T10:00:00Z", "Printer", "open", ""], ["2", "2026-01-01T10:00:00Z", "Mouse", "open", ""]],
        )

        async def run() -> dict[str, int]:
            engine = Engine(config, store)
            try:
                result = await engine.run("out")
            finally:
                await engine.aclose()
            assert result.outcome == "ok", result.message
            return result.counts

        assert (await run())["created"] == 2
        assert len(receiver.hits) == 2  # finish() delivered without a daemon
        write_tickets(
            tmp_path / "in",
            [
                ["1", "2026-01-01T11:00:00Z", "Printer on fire", "open", ""],
                ["2", "2026-01-01T10:00:00Z", "Mouse", "open", ""],
            ],
        )
        assert (await run())["updated"] == 1
        unchanged = await run()
        assert unchanged["created"] + unchanged["updated"] == 0 and len(receiver.hits) == 3  # no new event
        write_tickets(
            tmp_path / "in",
            [
                ["1", "2026-01-01T11:00:00Z", "Printer on fire", "open", ""],
                ["2", "2026-01-01T12:00:00Z", "Mouse", "open", "true"],
            ],
        )
        assert (await run())["deleted"] == 1

    bodies = []
    for hit in receiver.hits:
        assert hit.headers["content-type"] == "application/json"
        # the exact bytes received verify with a third-party implementation, with either secret
        assert Webhook(SECRET).verify(hit.body, hit.headers) == Webhook(OLD_SECRET).verify(hit.body, hit.headers)
        assert len(hit.headers["webhook-signature"].split(" ")) == 2
        assert abs(int(hit.headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 60
        bodies.append(orjson.loads(hit.body))
    assert [(b["type"], b["data"]["key"]) for b in bodies] == [
        ("ticket.created", "1"),
        ("ticket.created", "2"),
        ("ticket.updated", "1"),
        ("ticket.deleted", "2"),
    ]
    assert bodies[2]["data"]["subject"] == "Printer on fire"
    assert bodies[2]["data"]["updated_at"] == "2026-01-01T11:00:00Z"
    assert bodies[3]["data"]["deleted"] is True
    assert all(b["timestamp"].endswith("Z") for b in bodies)
    assert len(set(receiver.ids())) == 4


async def test_failures_retry_on_schedule_with_the_same_id_then_dead_letter_and_replay(
    tmp_path: Path, default_state_url: str
) -> None:
    healthy = False

    def answer(n: int, request: web.Request) -> web.Response:
        return web.Response(status=200) if healthy else web.Response(status=500, text="database down")

    async with Receiver(answer) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url)
        store = StateStore.open(default_state_url)
        [event] = queue(store, 1)
        worker = OutboxWorker(config, store)
        await drive(worker.deliver_due, lambda: outbox_rows(store)[0]["state"] == "dead")

        assert receiver.ids() == [event] * 3  # one attempt per schedule entry, one webhook-id
        assert len({h.body for h in receiver.hits}) == 1  # the very same body every time
        gaps = [b.at - a.at for a, b in zip(receiver.hits, receiver.hits[1:], strict=False)]
        assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps
        [letter] = store.dead_letters()
        assert letter.kind == "webhook" and letter.pipeline == "out" and letter.dst == "hooks.tickets"
        assert "gave up after 3 attempts" in letter.reason and "HTTP 500" in letter.reason
        assert letter.payload["event_id"] == event

        # nothing more is sent on its own; a replay resends the same event with the same id
        await worker.deliver_due()
        assert len(receiver.hits) == 3
        assert await replay_dead_letters(config, store, [letter.id]) == [
            (letter.id, "failed", "HTTP 500: database down")
        ]
        assert store.dead_letters()[0].status == "open"
        healthy = True
        [(_, outcome, message)] = await replay_dead_letters(config, store, [letter.id])
        assert outcome == "delivered" and event in message
        assert receiver.ids() == [event] * 5
        assert receiver.hits[-1].body == receiver.hits[0].body
        Webhook(SECRET).verify(receiver.hits[-1].body, receiver.hits[-1].headers)
        assert store.dead_letters() == []
        assert outbox_rows(store)[0]["state"] == "delivered"


async def test_a_receiver_that_times_out_is_retried(tmp_path: Path, default_state_url: str) -> None:
    async def answer(n: int, request: web.Request) -> web.Response:
        if n == 0:
            await asyncio.sleep(2)
        return web.Response(status=204)

    async with Receiver(answer) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url, timeout="300ms")
        store = StateStore.open(default_state_url)
        [event] = queue(store, 1)
        worker = OutboxWorker(config, store)
        assert await worker.deliver_due() == 1
        row = outbox_rows(store)[0]
        assert row["state"] == "pending" and row["attempts"] == 1 and "timed out" in row["last_error"]
        await drive(worker.deliver_due, lambda: outbox_rows(store)[0]["state"] == "delivered")
        assert receiver.ids() == [event, event]


async def test_deliveries_are_leased_for_state_lease_ttl(tmp_path: Path, default_state_url: str) -> None:
    """The endpoint's lease lasts what the operator configured, as a pipeline's does."""
    seen: list[float] = []

    async def answer(n: int, request: web.Request) -> web.Response:
        held = store.lease_holder("webhook:hooks")
        assert held is not None
        seen.append((held[1] - datetime.now(UTC)).total_seconds())
        return web.Response(status=204)

    async with Receiver(answer) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url, lease_ttl="7s")
        store = StateStore.open(default_state_url)
        queue(store, 2)
        assert await OutboxWorker(config, store).deliver_due() == 2
    assert len(seen) == 2 and all(5 < left <= 7 for left in seen), seen
    assert store.lease_holder("webhook:hooks") is None, "the lease outlived the pass"


async def test_a_pass_that_lost_its_lease_stops_sending(tmp_path: Path, default_state_url: str) -> None:
    """A worker that stalled past state.lease_ttl while another instance took the endpoint
    over sends nothing more: the other instance delivers the rest, not both."""

    async def answer(n: int, request: web.Request) -> web.Response:
        if n == 0:
            await asyncio.sleep(1.3)  # the worker stalls on a slow receiver past its 1 s lease
            assert store.acquire_lease("webhook:hooks", timedelta(seconds=30), holder="instance-b")
        return web.Response(status=204)

    async with Receiver(answer) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url, lease_ttl="1s")
        store = StateStore.open(default_state_url)
        queue(store, 3)
        assert await OutboxWorker(config, store).deliver_due() == 1
        assert len(receiver.hits) == 1
    assert [r["state"] for r in outbox_rows(store)] == ["delivered", "pending", "pending"]
    held = store.lease_holder("webhook:hooks")
    assert held is not None and held[0] == "instance-b", "the stalled worker dropped the new holder's lease"


async def test_redirects_are_not_followed_and_count_as_failures(tmp_path: Path, default_state_url: str) -> None:
    def answer(n: int, request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": "/elsewhere?token=abc"})

    async with Receiver(answer) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url)
        store = StateStore.open(default_state_url)
        queue(store, 1)
        worker = OutboxWorker(config, store)
        await drive(worker.deliver_due, lambda: outbox_rows(store)[0]["state"] == "dead")
        assert len(receiver.hits) == 3
        assert receiver.other == []  # the Location was never requested
        [letter] = store.dead_letters()
        assert "HTTP 307 redirect" in letter.reason and "not followed" in letter.reason
        assert "abc" not in letter.reason  # a token in the Location is masked


async def test_410_disables_the_endpoint_until_a_replay_is_accepted(tmp_path: Path, default_state_url: str) -> None:
    gone = True

    def answer(n: int, request: web.Request) -> web.Response:
        return web.Response(status=410 if gone else 200)

    async with Receiver(answer) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url)
        store = StateStore.open(default_state_url)
        events = queue(store, 3)
        worker = OutboxWorker(config, store)
        assert await worker.deliver_due() == 1  # the first event meets the 410; nothing else is sent
        for _ in range(3):
            await asyncio.sleep(0.25)
            assert await worker.deliver_due() == 0
        assert receiver.ids() == events[:1]
        [status] = endpoint_status(config, store)
        assert status["state"] == "disabled" and "410" in status["reason"]
        assert status["pending"] == 2 and status["dead"] == 1

        # the sink refuses further writes: the run fails and says why (`ferryman status` shows it)
        sink = WebhookConnector(SystemContext("hooks", config.system_options("hooks"), services={"state": store}))
        await sink.restore("tickets", None)
        with pytest.raises(FatalError, match="disabled"):
            await sink.create("tickets", ticket(9))
        with pytest.raises(FatalError, match="dlq replay"):
            await sink.check()

        [letter] = store.dead_letters()
        assert "410" in letter.reason and "replay" in letter.reason
        gone = False
        [(_, outcome, _)] = await replay_dead_letters(config, store, [letter.id])
        assert outcome == "delivered"
        assert endpoint_status(config, store)[0]["state"] == "active"
        await drive(worker.deliver_due, lambda: endpoint_status(config, store)[0]["pending"] == 0)
        assert receiver.ids() == [events[0], events[0], events[1], events[2]]


async def test_429_holds_the_endpoint_back_no_sooner_than_retry_after(tmp_path: Path, default_state_url: str) -> None:
    def answer(n: int, request: web.Request) -> web.Response:
        if n == 0:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=200)

    async with Receiver(answer) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url)
        store = StateStore.open(default_state_url)
        events = queue(store, 2)
        worker = OutboxWorker(config, store)
        assert await worker.deliver_due() == 1  # held back: the second event is not tried either
        assert endpoint_status(config, store)[0]["not_before"] is not None
        await drive(worker.deliver_due, lambda: len(receiver.hits) == 3)
        assert receiver.ids() == [events[0], events[0], events[1]]
        assert receiver.hits[1].at - receiver.hits[0].at >= 1.0  # never earlier than Retry-After
        assert all(r["state"] == "delivered" for r in outbox_rows(store))


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_errors_without_retry_after_back_off_on_the_schedule(
    tmp_path: Path, default_state_url: str, status: int
) -> None:
    def answer(n: int, request: web.Request) -> web.Response:
        return web.Response(status=status if n == 0 else 200)

    async with Receiver(answer) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url)
        store = StateStore.open(default_state_url)
        queue(store, 2)
        worker = OutboxWorker(config, store)
        assert await worker.deliver_due() == 1
        await drive(worker.deliver_due, lambda: len(receiver.hits) == 3)
        assert receiver.hits[1].at - receiver.hits[0].at >= 0.2


async def test_a_crash_replayed_page_inserts_no_second_event(tmp_path: Path, default_state_url: str) -> None:
    """The engine processing a page again (its commit did not happen, or a dead letter is
    replayed through it) re-derives the ids: the page commit inserts nothing new."""
    config = outbound_config(tmp_path, default_state_url, "http://127.0.0.1:9/hook")
    store = StateStore.open(default_state_url)
    sink = WebhookConnector(SystemContext("hooks", config.system_options("hooks"), services={"state": store}))

    async def commit() -> None:
        # as the engine does: the sink's checkpoint names its target in the page commit
        store.commit_page(PageCommit("out", checkpoints={"hooks.tickets": await sink.checkpoint("tickets")}))

    for _ in range(2):
        await sink.restore("tickets", None)
        await sink.create("tickets", ticket(1))
        await sink.update("tickets", "T2", ticket(2, "edited"))
        await sink.delete("tickets", "T3")
        await commit()
    rows = outbox_rows(store)
    assert [r["type"] for r in rows] == ["ticket.created", "ticket.updated", "ticket.deleted"]
    # a delete of a deleted record is no new event; a real new change is
    await sink.delete("tickets", "T3")
    await sink.update("tickets", "T1", ticket(1, "changed"))
    await sink.update(
        "tickets", "T1", ticket(1, "hello").model_copy(update={"updated_at": datetime(2026, 2, 1, tzinfo=UTC)})
    )
    await commit()
    rows = outbox_rows(store)
    assert [r["type"] for r in rows][3:] == ["ticket.updated", "ticket.updated"]
    assert len({r["event_id"] for r in rows}) == 5  # A -> B -> A: three distinct events for T1


def test_jitter_stays_within_its_share() -> None:
    rng = random.Random(1)
    values = [jittered(timedelta(seconds=10), 0.2, rng).total_seconds() for _ in range(500)]
    assert 8.0 <= min(values) < 8.5 and 11.5 < max(values) <= 12.0
    assert jittered(timedelta(0), 0.5, rng) == timedelta(0)


async def test_the_daemon_worker_delivers_as_events_arrive_until_stopped(
    tmp_path: Path, default_state_url: str
) -> None:
    async with Receiver() as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url)
        assert has_outbound(config)
        store = StateStore.open(default_state_url)
        worker = OutboxWorker(config, store, poll_interval=0.05)
        stop = asyncio.Event()
        serving = asyncio.create_task(worker.serve(stop))
        first = queue(store, 5)
        await drive(nothing, lambda: len(receiver.hits) == 5, timeout=5)
        later = queue(store, 3, start=5)
        await drive(nothing, lambda: len(receiver.hits) == 8, timeout=5)
        stop.set()
        await asyncio.wait_for(serving, timeout=2)
        assert receiver.ids() == first + later


async def nothing() -> None:
    """The daemon's worker does the work; the test only waits."""


async def test_a_sync_run_dead_letters_under_its_pipeline(
    tmp_path: Path, default_state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENV.items():  # as in a real run, the config's references resolve from the environment
        monkeypatch.setenv(name, value)
    async with Receiver(lambda n, r: web.Response(status=400, text="bad field")) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url, retry_schedule=[0])
        store = StateStore.open(default_state_url)
        write_tickets(tmp_path / "in", [["1", "2026-01-01T10:00:00Z", "Printer", "open", ""]])
        engine = Engine(config, store)
        try:
            result = await engine.run("out")
        finally:
            await engine.aclose()
        assert result.outcome == "ok" and len(receiver.hits) == 1
    [letter] = store.dead_letters(pipeline="out")
    assert (letter.kind, letter.src, letter.dst, letter.src_key) == ("webhook", "inbox.tickets", "hooks.tickets", "1")
    assert letter.reason == "ticket.created 1: gave up after 1 attempt; last: HTTP 400: bad field"
    assert orjson.loads(letter.payload["body"])["data"]["subject"] == "Printer"


async def test_the_pass_at_the_end_of_a_sync_is_bounded(tmp_path: Path, default_state_url: str) -> None:
    async def slow(n: int, request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(status=200)

    async with Receiver(slow) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url, sync_delivery_timeout="600ms")
        store = StateStore.open(default_state_url)
        write_tickets(tmp_path / "in", [[str(i), "2026-01-01T10:00:00Z", f"s{i}", "open", ""] for i in range(20)])
        engine = Engine(config, store)
        started = asyncio.get_running_loop().time()
        try:
            result = await engine.run("out")
        finally:
            await engine.aclose()
        assert result.counts["created"] == 20
        # 600 ms of 500 ms answers: a few events, not all 20 (10 s), and the run does not wait for the rest
        assert asyncio.get_running_loop().time() - started < 5
        assert 1 <= len(receiver.hits) <= 3
        assert endpoint_status(config, store)[0]["pending"] == 20 - len(receiver.hits)  # the rest is kept for later
