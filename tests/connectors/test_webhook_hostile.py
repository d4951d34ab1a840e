"""The webhook connector against hostile peers: the equivalent of the hostile-server suite
for a connector whose "server" is a receiver (outbound) or a sender (intake).

Outbound, what Ferryman promises (README, "receiver answers"): only the status decides; a
2xx is delivered whatever its body says, an answer that never completes is a failure that
is retried with the same ``webhook-id`` and body, and nothing is lost or minted twice.
Intake: a verified body is stored or kept as a dead letter, never bounced with a 5xx and
never left to poison the intake's pipeline; a repeated ``webhook-id`` is one change."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from aiohttp import web

from ferryman.cursor import Cursor
from ferryman.engine import Engine
from ferryman.state import StateStore
from ferryman.testing import collect
from ferryman.webhooks import OutboxWorker
from ferryman.webhooks.inbox import T_INBOX, T_SEEN
from ferryman.webhooks.outbox import T_OUTBOX
from tests.webhooks.support import Receiver, drive, outbound_config
from tests.webhooks.test_intake import Harness, event, intake_config
from tests.webhooks.test_outbound import queue, write_tickets

# -- outbound: receivers that answer badly ---------------------------------------------------------


def outbox_rows(store: StateStore) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(T_OUTBOX).order_by(T_OUTBOX.c.seq)).mappings()]


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": "invalid signature", "ok": false}',  # an app's error envelope inside a 200
        b"\xff\xfe\x00garbled \x80 bytes",  # not UTF-8, not JSON
        b"",
    ],
)
async def test_a_2xx_is_delivered_whatever_its_body_says(tmp_path: Path, default_state_url: str, body: bytes) -> None:
    """Standard Webhooks: the receiver's status is its answer. Ferryman does not guess at a
    2xx body's meaning (it has no contract with the receiver's format): the event is
    delivered once, and a receiver that did not take it must answer non-2xx to get it again."""
    async with Receiver(lambda n, r: web.Response(status=200, body=body)) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url)
        store = StateStore.open(default_state_url)
        [event_id] = queue(store, 1)
        worker = OutboxWorker(config, store)
        assert await worker.deliver_due() == 1
        await asyncio.sleep(0.5)  # past the whole retry schedule
        await worker.deliver_due()
        assert receiver.ids() == [event_id]
        [row] = outbox_rows(store)
        assert (row["state"], row["attempts"], row["last_error"]) == ("delivered", 1, None)
        assert store.dead_letters() == []


async def test_a_failure_with_a_garbled_body_is_retried_with_a_readable_reason(
    tmp_path: Path, default_state_url: str
) -> None:
    answers = [web.Response(status=500, body=b"\xff\xfe\x00 broken \x80" * 40), web.Response(status=204)]
    async with Receiver(lambda n, r: answers[min(n, 1)]) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url)
        store = StateStore.open(default_state_url)
        [event_id] = queue(store, 1)
        worker = OutboxWorker(config, store)
        await worker.deliver_due()
        [row] = outbox_rows(store)
        assert row["state"] == "pending" and row["last_error"].startswith("HTTP 500")
        assert len(row["last_error"]) < 400
        await drive(worker.deliver_due, lambda: outbox_rows(store)[0]["state"] == "delivered")
        assert receiver.ids() == [event_id, event_id]


async def test_a_reason_taken_from_a_receiver_body_holds_no_control_characters(
    tmp_path: Path, default_state_url: str
) -> None:
    async with Receiver(lambda n, r: web.Response(status=500, body=b"bad\x00\x1b[31m\x07 body")) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url)
        store = StateStore.open(default_state_url)
        queue(store, 1)
        await OutboxWorker(config, store).deliver_due()
        [row] = outbox_rows(store)
        assert row["last_error"].isprintable(), repr(row["last_error"])


async def test_an_answer_cut_off_mid_body_is_retried_with_the_same_id(tmp_path: Path, default_state_url: str) -> None:
    """The receiver promises a body and dies before sending it (a crashed worker behind a
    proxy): not an answer, so the event goes again, same id, same bytes."""

    async def answer(n: int, request: web.Request) -> web.StreamResponse:
        if n > 0:
            return web.Response(status=204)
        response = web.StreamResponse(status=500)
        response.content_length = 10_000
        await response.prepare(request)
        await response.write(b'{"partial": ')
        assert request.transport is not None
        request.transport.close()
        return response

    async with Receiver(answer) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url)
        store = StateStore.open(default_state_url)
        [event_id] = queue(store, 1)
        worker = OutboxWorker(config, store)
        await worker.deliver_due()
        [row] = outbox_rows(store)
        assert row["state"] == "pending" and row["attempts"] == 1, row
        await drive(worker.deliver_due, lambda: outbox_rows(store)[0]["state"] == "delivered")
        assert receiver.ids() == [event_id, event_id]
        assert receiver.hits[0].body == receiver.hits[1].body


async def test_a_receiver_that_never_answers_bounds_the_run_and_loses_nothing(
    tmp_path: Path, default_state_url: str
) -> None:
    """A receiver that takes the connection and ignores it: the sync's delivery pass is
    bounded, the run is ``ok`` (its page is safely in the outbox), and the events go out,
    each once, when the receiver answers again."""
    ignoring = True

    async def answer(n: int, request: web.Request) -> web.Response:
        if ignoring:
            await asyncio.sleep(30)
        return web.Response(status=204)

    async with Receiver(answer) as receiver:
        config = outbound_config(tmp_path, default_state_url, receiver.url, timeout="300ms", sync_delivery_timeout="1s")
        store = StateStore.open(default_state_url)
        write_tickets(tmp_path / "in", [[str(i), "2026-01-01T10:00:00Z", f"s{i}", "open", ""] for i in range(5)])
        engine = Engine(config, store)
        started = time.monotonic()
        try:
            result = await engine.run("out")
        finally:
            await engine.aclose()
        assert time.monotonic() - started < 10
        assert result.outcome == "ok" and result.counts["created"] == 5, result.message
        assert all(r["state"] == "pending" for r in outbox_rows(store))
        ignoring = False
        worker = OutboxWorker(config, store)
        await drive(worker.deliver_due, lambda: all(r["state"] == "delivered" for r in outbox_rows(store)))
        delivered = [h for h in receiver.hits if h.body]
        ids = {r["event_id"] for r in outbox_rows(store)}
        assert len(ids) == 5 and set(receiver.ids()) == ids
        assert {orjson.loads(h.body)["data"]["key"] for h in delivered} == {str(i) for i in range(5)}


# -- intake: senders that send badly ---------------------------------------------------------------


def deep(depth: int) -> bytes:
    """A verified event whose record carries a value nested ``depth`` levels (built as text:
    serialisers refuse to write what a hostile sender writes by hand)."""
    base = orjson.dumps(event()).decode()
    return (base[:-2] + ',"nested":' + '{"a":' * depth + '"bottom"' + "}" * depth + "}}").encode()


def inbox_rows(store: StateStore) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(T_INBOX)).mappings()]


async def test_a_record_too_deep_to_read_back_is_a_dead_letter_not_a_stuck_pipeline(
    tmp_path: Path, default_state_url: str
) -> None:
    """200 levels: the intake stores it (200 "stored"), but JSON parsers stop at a nesting
    limit, so reading it back fails. The intake's pipeline must dead-letter that record and
    go on delivering the others, not fail every run from then on."""
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        status, _ = await hooks.post(None, raw=deep(200), msg_id="deep")
        assert status == 200
        await hooks.post(event("T2", subject="fine"), msg_id="fine")
        counts = await hooks.run()
        assert (counts["created"], counts["dead_lettered"]) == (1, 1)
        [letter] = store.dead_letters()
        assert letter.ref == "webhook deep" and letter.src_key == "T1" and "cannot be read" in letter.reason
        # a later message about the same record, sane this time, is delivered
        await hooks.post(event("T1", subject="sane again", type_="ticket.updated"), msg_id="sane")
        assert (await hooks.run())["created"] == 1


async def test_a_too_deep_record_read_by_get_is_a_rejection_naming_it(tmp_path: Path, default_state_url: str) -> None:
    from ferryman.errors import RecordRejected

    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        await hooks.post(None, raw=deep(200), msg_id="deep")
    engine = Engine(config, store)
    try:
        shop = await engine.system("shop")
        with pytest.raises(RecordRejected, match="cannot be read"):
            await shop.get("tickets", "T1")
        records, rejects = await collect(shop.read("tickets", Cursor(inbox_rows(store)[0]["received_at"], ""), 10))
        assert records == [] and [r.key for r in rejects] == ["T1"]
    finally:
        await engine.aclose()


async def test_a_body_nested_past_the_serialiser_limit_is_kept_as_a_dead_letter_not_a_500(
    tmp_path: Path, default_state_url: str
) -> None:
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        assert hooks.client is not None
        status, _ = await hooks.post(None, raw=deep(300), msg_id="deeper")
        assert status == 200


@pytest.mark.parametrize("depth", [1100, 100_000])
async def test_a_body_nested_past_the_parser_limit_is_kept_as_a_dead_letter(
    tmp_path: Path, default_state_url: str, depth: int
) -> None:
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        status, body = await hooks.post(None, raw=deep(depth), msg_id="deepest")
        assert (status, body["status"], body["rejected"]) == (200, "stored", 1)
        counts = await hooks.run()
        assert (counts["read"], counts["dead_lettered"]) == (0, 1)
        [letter] = store.dead_letters()
        assert letter.ref == "webhook deepest"


async def test_a_delivery_id_repeated_concurrently_is_one_change(tmp_path: Path, default_state_url: str) -> None:
    """A sender's retry racing its first attempt (a timeout on its side): ten posts of one
    ``webhook-id`` at once store one record change and trigger once."""
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        answers = await asyncio.gather(*(hooks.post(event()) for _ in range(10)))
        assert sorted(body["status"] for _, body in answers) == ["duplicate"] * 9 + ["stored"]
        assert {status for status, _ in answers} == {200}
        assert len(inbox_rows(store)) == 1 and hooks.triggered == ["shop-in"]
        counts = await hooks.run()
        assert (counts["read"], counts["created"]) == (1, 1)


async def test_a_delivery_id_repeated_with_a_different_body_changes_nothing(
    tmp_path: Path, default_state_url: str
) -> None:
    """Ids identify messages (Standard Webhooks): a sender that reuses one for other content
    is a sender bug, and the first message stands; the second is answered ``duplicate``."""
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        await hooks.post(event(subject="first"))
        status, body = await hooks.post(event(subject="second", type_="ticket.updated"))
        assert (status, body) == (200, {"status": "duplicate"})
        [row] = inbox_rows(store)
        assert orjson.loads(row["record"])["subject"] == "first"
        await hooks.run()
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(T_SEEN)).scalar() == 1


async def test_an_unmappable_message_repeated_is_one_dead_letter(tmp_path: Path, default_state_url: str) -> None:
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        bad = {"type": "ticket.created", "data": {"subject": "no key"}}
        for _ in range(3):
            assert (await hooks.post(bad, msg_id="nokey"))[0] == 200
        counts = await hooks.run()
        assert counts["dead_lettered"] == 1
        await hooks.run()
        assert len(store.dead_letters()) == 1
