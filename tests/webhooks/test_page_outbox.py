"""The webhook outbox rows of a page are written by the page commit, in its one
transaction: no row without its page's cursor and links, no page without its rows."""

from __future__ import annotations

import csv
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ferryman.config import load_config
from ferryman.connector import SystemContext
from ferryman.cursor import Cursor
from ferryman.engine import Engine
from ferryman.errors import LeaseLost
from ferryman.records import Ticket
from ferryman.state import Link, PageCommit, StateStore
from ferryman.webhooks.outbox import T_OUTBOX, build_event
from ferryman_connectors.webhook import WebhookConnector
from tests.webhooks.support import ENV, outbound_config, write_config

SINK = "hooks.tickets"


def ticket(n: int, subject: str = "hello") -> Ticket:
    return Ticket(key=f"T{n}", updated_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n), subject=subject)


def outbox_ids(store: StateStore) -> list[str]:
    with store.engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.select(T_OUTBOX.c.event_id).order_by(T_OUTBOX.c.seq))]


class Boom(RuntimeError):
    """The process 'dies' here: the transaction is not committed."""


def test_a_page_commit_that_fails_after_writing_its_outbox_rows_leaves_none(
    state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore.open(state_url)
    events = [build_event("hooks", "tickets", ticket(i), "created") for i in range(3)]
    for event in events:
        store.outbox.stage(SINK, event)
    written: list[int] = []
    write_in = store.outbox.write_in

    def spy(conn: Any, rows: Any) -> None:
        write_in(conn, rows)
        written.append(len(rows))

    def die(*args: Any) -> None:
        raise Boom

    monkeypatch.setattr(store.outbox, "write_in", spy)
    monkeypatch.setattr(store.cursors, "write_in", die)  # the cursor comes after the outbox rows
    page = PageCommit(
        "out",
        cursor=Cursor(datetime(2026, 1, 1, tzinfo=UTC), "T2"),
        links={("inbox.tickets", SINK): [Link(f"T{i}", f"T{i}", "fp", "fp") for i in range(3)]},
        checkpoints={SINK: None},
    )
    with pytest.raises(Boom):
        store.commit_page(page)
    assert written == [3], "the rows were written inside the page transaction before it failed"
    assert outbox_ids(store) == []
    assert store.count_links("inbox.tickets", SINK) == 0 and store.get_cursor("out") is None
    assert store.outbox.staged(SINK) == [], "a failed commit drops its events with its page"

    # the page is read and written again: the same events, once, with the cursor
    monkeypatch.undo()
    for event in events:
        store.outbox.stage(SINK, event)
    store.commit_page(page)
    assert outbox_ids(store) == [e.event_id for e in events]
    assert store.get_cursor("out") is not None


def test_a_page_whose_lease_moved_writes_no_outbox_row(state_url: str) -> None:
    """Before, the sink wrote its events ahead of the fenced commit: a stalled run whose
    lease had moved still queued them."""
    stalled, other = StateStore.open(state_url, instance="a"), StateStore.open(state_url, instance="b")
    assert stalled.acquire_lease("out", timedelta(milliseconds=1))
    time.sleep(0.05)
    assert other.acquire_lease("out", timedelta(minutes=1))
    stalled.outbox.stage(SINK, build_event("hooks", "tickets", ticket(1), "created"))
    with pytest.raises(LeaseLost):
        stalled.commit_page(PageCommit("out", checkpoints={SINK: None}))
    assert outbox_ids(stalled) == []


def test_a_commit_carries_the_events_of_the_targets_it_names_and_only_those(state_url: str) -> None:
    store = StateStore.open(state_url)
    mine = build_event("hooks", "tickets", ticket(1), "created")
    theirs = build_event("hooks", "contacts", ticket(2), "created")
    store.outbox.stage(SINK, mine)
    store.outbox.stage("hooks.contacts", theirs)
    # a page cut short (halted) names its targets only through its links: still carried
    store.commit_page(PageCommit("out", links={("inbox.tickets", SINK): [Link("T1", "T1", "fp", "fp")]}))
    assert outbox_ids(store) == [mine.event_id]
    assert store.outbox.staged("hooks.contacts") == [theirs]
    store.commit_page(PageCommit("other", unlinks={("inbox.contacts", "hooks.contacts"): ["T2"]}))
    assert outbox_ids(store) == [mine.event_id, theirs.event_id]


async def test_the_first_attempt_is_due_after_the_first_delay_of_the_schedule(tmp_path: Path, state_url: str) -> None:
    config = outbound_config(tmp_path, state_url, "http://127.0.0.1:9/hook", retry_schedule=["1h", "2h"])
    store = StateStore.open(state_url)
    sink = WebhookConnector(SystemContext("hooks", config.system_options("hooks"), services={"state": store}))
    await sink.restore("tickets", None)
    await sink.create("tickets", ticket(1))
    store.commit_page(PageCommit("out", checkpoints={SINK: await sink.checkpoint("tickets")}))
    with store.engine.connect() as conn:
        created, due = conn.execute(sa.select(T_OUTBOX.c.created_at, T_OUTBOX.c.next_attempt_at)).one()
    assert due - created == timedelta(hours=1)


async def test_restoring_one_stream_keeps_the_events_of_another(tmp_path: Path, default_state_url: str) -> None:
    """One connector serves every pipeline writing to the system: a run of one stream that
    begins (or fails) must not drop what a run of another stream has written meanwhile."""
    config = outbound_config(tmp_path, default_state_url, "http://127.0.0.1:9/hook")
    store = StateStore.open(default_state_url)
    sink = WebhookConnector(SystemContext("hooks", config.system_options("hooks"), services={"state": store}))
    await sink.create("tickets", ticket(1))
    await sink.restore("contacts", None)
    assert [e.record_key for e in store.outbox.staged(SINK)] == ["T1"]
    await sink.restore("tickets", None)
    assert store.outbox.staged(SINK) == []


async def test_a_run_that_dies_mid_page_has_outbox_rows_exactly_for_its_committed_pages(
    tmp_path: Path, default_state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    with (source / "tickets.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["key", "updated_at", "subject", "status"])
        for i in range(250):
            writer.writerow([f"T{i:03d}", f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z", f"s{i}", "open"])
    path = write_config(
        tmp_path,
        {
            "state": {"url": default_state_url},
            "systems": {
                "inbox": {"connector": "csv", "directory": str(source)},
                "hooks": {
                    "connector": "webhook",
                    "url": "http://127.0.0.1:9/hook",
                    "secret": "${HOOK_SECRET}",
                    "deliver_after_sync": False,
                },
            },
            "pipelines": {"out": {"from": "inbox.tickets", "to": SINK, "page_size": 100}},
        },
    )
    config = load_config(path, environ=ENV)
    store = StateStore.open(default_state_url)
    count_in = store.runs_repo.count_in
    pages: list[int] = []

    def second_page_dies(conn: Any, run_id: int, counts: dict[str, int]) -> None:
        pages.append(run_id)
        if len(pages) == 2:  # inside the page transaction, after its outbox rows
            raise Boom
        count_in(conn, run_id, counts)

    monkeypatch.setattr(store.runs_repo, "count_in", second_page_dies)
    engine = Engine(config, store)
    try:
        result = await engine.run("out")
    finally:
        await engine.aclose()
    assert result.outcome == "failed"
    assert len(outbox_ids(store)) == store.count_links("inbox.tickets", SINK) == 100

    monkeypatch.undo()
    engine = Engine(config, store)
    try:
        result = await engine.run("out")
    finally:
        await engine.aclose()
    assert result.outcome == "ok", result.message
    ids = outbox_ids(store)
    assert len(ids) == len(set(ids)) == store.count_links("inbox.tickets", SINK) == 250
