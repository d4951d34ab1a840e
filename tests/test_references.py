"""Reference fields (``requester_key``, ``organisation_key``...) translated through links.

In-memory fakes: system ``a`` and system ``b`` each give their records their own keys
(``b`` numbers what it creates ``b-1``, ``b-2``...), so a ticket's ``requester_key`` from
``a`` means nothing in ``b`` until it goes through the links of the contacts pipeline.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferryman import engine as engine_module
from ferryman.config import load_config
from ferryman.engine import Engine
from ferryman.errors import ConfigError
from ferryman.records import Contact, Ticket
from ferryman.state import StateStore
from tests import fakes

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


pytestmark = pytest.mark.usefixtures("memory_connector")


def make_engine(tmp_path: Path, state_url: str, b: dict[str, Any] | None = None, **tickets: Any) -> Engine:
    doc = {
        "state": {"url": state_url},
        "systems": {"a": fakes.options(store="a"), "b": fakes.options(store="b", **(b or {}))},
        "pipelines": {
            "contacts": {"from": "a.contacts", "to": "b.contacts"},
            "tickets": {
                "from": "a.tickets",
                "to": "b.tickets",
                "references": {"requester_key": "contacts"},
                **tickets,
            },
        },
    }
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(doc))
    return Engine(load_config(path, environ={}), StateStore.open(state_url))


def contact(key: str, email: str, minute: int = 0) -> None:
    fakes.put("a", "contacts", Contact(key=key, updated_at=T0 + timedelta(minutes=minute), email=email))


def ticket(key: str, requester: str | None, minute: int = 0, subject: str = "help") -> None:
    when = T0 + timedelta(minutes=minute)
    fakes.put("a", "tickets", Ticket(key=key, updated_at=when, subject=subject, requester_key=requester))


def requesters() -> dict[str, str | None]:
    """subject -> the email of the contact in ``b`` that the ticket in ``b`` points at."""
    contacts = fakes.STORES["b"].get("contacts", {})
    out: dict[str, str | None] = {}
    for t in fakes.STORES["b"].get("tickets", {}).values():
        out[t.subject] = contacts[t.requester_key].email if t.requester_key in contacts else t.requester_key
    return out


def letters(engine: Engine) -> dict[str | None, str]:
    return {x.src_key: x.reason for x in engine.store.dead_letters(pipeline="tickets") if x.kind == "reference"}


async def test_a_ticket_points_at_the_requester_as_the_target_app_knows_them(tmp_path: Path, state_url: str) -> None:
    contact("c1", "ada@example.org")
    contact("c2", "bob@example.org")
    ticket("t1", "c1", subject="ada's")
    ticket("t2", "c2", subject="bob's")
    ticket("t3", None, subject="anonymous")
    engine = make_engine(tmp_path, state_url)
    assert (await engine.run("contacts")).counts["created"] == 2
    result = await engine.run("tickets")
    assert result.outcome == "ok" and result.counts["created"] == 3, result
    assert requesters() == {"ada's": "ada@example.org", "bob's": "bob@example.org", "anonymous": None}
    assert all(t.requester_key in (None, "b-1", "b-2") for t in fakes.STORES["b"]["tickets"].values())


async def test_a_ticket_before_its_requester_waits_and_goes_once_the_requester_is_synced(
    tmp_path: Path, state_url: str
) -> None:
    contact("c1", "ada@example.org")
    ticket("t1", "c1", subject="ada's")
    ticket("t2", "c9", subject="nobody's")
    ticket("t3", None, minute=1, subject="anonymous")  # the cursor ends past t1 and t2
    engine = make_engine(tmp_path, state_url, overlap="0s")
    first = await engine.run("tickets")
    assert first.outcome == "ok" and first.counts["dead_lettered"] == 2 and first.counts["created"] == 1
    reasons = letters(engine)
    assert set(reasons) == {"t1", "t2"}
    assert "requester_key 'c1': a.contacts#c1 has no linked record in b.contacts yet" in reasons["t1"]
    assert requesters() == {"anonymous": None}, "a ticket went out with an id the target does not know"

    await engine.run("contacts")
    second = await engine.run("tickets")
    assert second.outcome == "ok" and second.counts["created"] == 1, second
    assert second.counts["dead_lettered"] == 0, "a record still waiting is not counted again every run"
    assert requesters() == {"anonymous": None, "ada's": "ada@example.org"}
    assert set(letters(engine)) == {"t2"}
    run_row = engine.store.runs("tickets", limit=1)[0]
    assert run_row["created"] == 1, "the retry's writes are in the run's row"

    contact("c9", "cy@example.org", minute=5)
    await engine.run("contacts")
    third = await engine.run("tickets")
    assert third.counts["created"] == 1
    assert requesters() == {"anonymous": None, "ada's": "ada@example.org", "nobody's": "cy@example.org"}
    assert letters(engine) == {}
    fourth = await engine.run("tickets")
    assert fourth.counts["created"] == fourth.counts["updated"] == 0


async def test_missing_drop_delivers_the_record_without_the_reference(tmp_path: Path, state_url: str) -> None:
    contact("c1", "ada@example.org")
    ticket("t1", "c1", subject="ada's")
    ticket("t2", "c9", subject="nobody's")
    engine = make_engine(tmp_path, state_url, references={"requester_key": {"from": "contacts", "missing": "drop"}})
    await engine.run("contacts")
    result = await engine.run("tickets")
    assert result.counts["created"] == 2 and result.counts["dead_lettered"] == 0
    assert requesters() == {"ada's": "ada@example.org", "nobody's": None}


async def test_links_made_the_other_way_translate_too(tmp_path: Path, state_url: str) -> None:
    """Contacts synced from b to a: the link is (b.contacts -> a.contacts); a's ticket still
    finds b's id for its requester."""
    fakes.put("b", "contacts", Contact(key="B7", updated_at=T0, email="ada@example.org"))
    ticket("t1", None, subject="placeholder")
    engine = make_engine(tmp_path, state_url)
    engine.config.pipelines["back"] = engine.config.pipelines["contacts"].model_copy(
        update={"source": "b.contacts", "to": ["a.contacts"]}
    )
    await engine.run("back")
    [(a_key, ada)] = fakes.STORES["a"]["contacts"].items()
    ticket("t1", a_key, minute=1, subject="ada's")
    await engine.run("tickets")
    assert {t.subject: t.requester_key for t in fakes.STORES["b"]["tickets"].values()} == {"ada's": "B7"}
    assert ada.email == "ada@example.org"


async def test_a_waiting_record_delivered_by_a_normal_pass_settles_its_letter(
    tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its letter must not stay open: a later retry would send its old version over the new."""
    ticket("t1", "c1", subject="old")
    engine = make_engine(tmp_path, state_url)
    await engine.run("tickets")
    assert set(letters(engine)) == {"t1"}
    contact("c1", "ada@example.org")
    await engine.run("contacts")
    ticket("t1", "c1", minute=10, subject="new")
    monkeypatch.setattr(engine_module, "REFERENCE_RETRIES", 0)  # only the pages deliver it
    result = await engine.run("tickets")
    assert result.counts["created"] == 1
    assert letters(engine) == {}
    monkeypatch.undo()
    await engine.run("tickets")
    assert requesters() == {"new": "ada@example.org"}


async def test_a_waiting_record_the_target_then_refuses_is_no_longer_retried(tmp_path: Path, state_url: str) -> None:
    ticket("t1", "c1", subject="refused")
    engine = make_engine(tmp_path, state_url, b={"reject_subjects": ["refused"]})
    await engine.run("tickets")
    contact("c1", "ada@example.org")
    await engine.run("contacts")
    await engine.run("tickets")
    [letter] = engine.store.dead_letters(pipeline="tickets")
    assert letter.kind == "rejected" and "refused by the app" in letter.reason
    creates = [c for c in fakes.CALLS["b"] if c[:2] == ("create", "tickets")]
    await engine.run("tickets")
    assert [c for c in fakes.CALLS["b"] if c[:2] == ("create", "tickets")] == creates, "retried a refused record"


async def test_retries_take_turns_when_more_records_wait_than_a_run_retries(
    tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One retry a run; the oldest waiting record is gone from the source (nothing to send,
    its letter stays for the operator): the next run retries the other one all the same."""
    monkeypatch.setattr(engine_module, "REFERENCE_RETRIES", 1)
    ticket("t1", "c1", subject="gone")
    ticket("t2", "c2", subject="second")
    ticket("t3", None, minute=1, subject="anonymous")  # the cursor ends past t1 and t2
    engine = make_engine(tmp_path, state_url, overlap="0s")
    await engine.run("tickets")
    del fakes.STORES["a"]["tickets"]["t1"]
    contact("c1", "ada@example.org")
    contact("c2", "bob@example.org")
    await engine.run("contacts")
    await engine.run("tickets")  # retries t1: not in the source any more
    assert set(letters(engine)) == {"t1", "t2"}
    await engine.run("tickets")  # retries t2
    assert requesters() == {"anonymous": None, "second": "bob@example.org"}
    assert set(letters(engine)) == {"t1"}


def test_a_reference_to_a_field_or_stream_that_does_not_exist_is_a_config_error(tmp_path: Path, state_url: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_engine(tmp_path, state_url, references={"customer_key": "contacts"})
    assert info.value.path == "pipelines.tickets.references.customer_key"
    assert "ticket records have no field 'customer_key'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        make_engine(tmp_path, state_url, references={"requester_key": {"from": "contacts", "to": "people"}})
    assert info.value.path == "pipelines.tickets.references.requester_key"
    assert "system 'b' has no stream 'people'" in str(info.value)


def test_references_on_a_two_way_pipeline_are_refused_when_the_config_loads(tmp_path: Path, state_url: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_engine(tmp_path, state_url, direction="both")
    assert "one-way pipelines only" in str(info.value) and "pipelines.tickets" in (info.value.path or "")
