"""The record history behind ``ferryman explain`` and the conflict journal, as runs write it:
one record walked through create, skip, update, an overwrite of a target edit, a dead
letter and its replay (one-way), and through echo, conflicts under both kinds of policy and
a manual conflict (two-way). In-memory apps; the commands are tested in test_explain.py
and test_conflicts_cmd.py, the sandboxes end to end in tests/e2e/test_history_sandboxes.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferryman.config import load_config
from ferryman.engine import Engine
from ferryman.records import Contact, Ticket
from ferryman.state import StateStore
from ferryman.timeutil import utcnow
from tests import fakes

pytestmark = pytest.mark.usefixtures("memory_connector")


def engine_for(tmp_path: Path, state_url: str, doc: dict[str, Any]) -> Engine:
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump({"state": {"url": state_url}, **doc}))
    return Engine(load_config(path, environ={}), StateStore.open(state_url))


def one_way(tmp_path: Path, state_url: str, *, events: str = "all", **dst: Any) -> Engine:
    return engine_for(
        tmp_path,
        state_url,
        {
            "history": {"events": events},
            "systems": {"a": fakes.options(store="a"), "b": fakes.options(store="b", **dst)},
            "pipelines": {"p": {"from": "a.tickets", "to": "b.tickets", "journal": {"check_target": True}}},
        },
    )


def edit(store: str, stream: str, key: str, **fields: Any) -> None:
    table = fakes.STORES[store][stream]
    table[key] = table[key].model_copy(update={**fields, "updated_at": utcnow()})


def actions(engine: Engine, key: str) -> list[str]:
    return [e.action for e in engine.store.history.events("p", key)]


async def test_one_record_walked_through_create_skip_update_overwrite_dead_letter_and_replay(
    tmp_path: Path, state_url: str
) -> None:
    fakes.put("a", "tickets", Ticket(key="t1", updated_at=utcnow(), subject="first", description="b0"))
    engine = one_way(tmp_path, state_url)
    assert (await engine.run("p")).outcome == "ok"
    [created] = engine.store.history.events("p", "t1")
    assert created.action == "create" and created.target == "b.tickets" and created.run_id is not None
    dst_key = created.target_key
    assert dst_key and created.detail is None and created.fingerprint

    assert (await engine.run("p", full=True)).outcome == "ok"  # read again, unchanged
    assert actions(engine, "t1") == ["create", "skip"]

    edit("a", "tickets", "t1", subject="second")
    assert (await engine.run("p")).outcome == "ok"
    update = engine.store.history.events("p", "t1")[-1]
    assert (update.action, update.fields) == ("update", ("subject",))
    assert engine.store.history.conflicts("p") == [], "the target had not changed: nothing overwritten"

    # someone edits the ticket in the target; then the source changes it too: the update
    # overwrites the target's edit, which the journal keeps
    edit("b", "tickets", dst_key, description="typed in the helpdesk")
    edit("a", "tickets", "t1", subject="third")
    assert (await engine.run("p")).outcome == "ok"
    [entry] = engine.store.history.conflicts("p")
    assert (entry.system, entry.side, entry.record_key, entry.src_key) == ("b.tickets", "target", dst_key, "t1")
    assert entry.lost == {"description": "typed in the helpdesk", "subject": "second"}
    assert entry.won == {"description": "b0", "subject": "third"}
    assert entry.policy == "source_wins" and "changed in b.tickets since the last sync" in entry.reason
    assert fakes.STORES["b"]["tickets"][dst_key].description == "b0"

    # the target refuses the next update: a dead letter, then a replay once it accepts
    refusing = one_way(tmp_path, state_url, reject_update_subjects=["fourth"])
    edit("a", "tickets", "t1", subject="fourth")
    result = await refusing.run("p")
    assert result.outcome == "ok" and result.counts["dead_lettered"] == 1
    letter = refusing.store.history.events("p", "t1")[-1]
    assert letter.action == "dead-letter" and "refused by the app on update" in (letter.detail or "")
    [dead] = refusing.store.dead_letters("p")
    accepting = one_way(tmp_path, state_url)
    [(_, outcome, _)] = await accepting.replay([dead.id])
    assert outcome == "delivered"
    assert actions(accepting, "t1") == ["create", "skip", "update", "update", "dead-letter", "replay", "update"]
    assert fakes.STORES["b"]["tickets"][dst_key].subject == "fourth"
    # `ferryman explain` prints each step, oldest first
    from ferryman.explain import explain, render
    from ferryman.terminal import Style

    lines = render(
        explain(accepting.store, "p", accepting.config.pipeline("p"), "t1", limit=100),
        accepting.config,
        style=Style(False),
    )
    printed = [word for line in lines for word in line.split()[4:5] if line.startswith("  20")]
    assert printed == ["create", "skip", "update", "update", "dead-letter", "replay", "update"], lines
    assert any("refused by the app on update" in line for line in lines)
    assert any(line.strip().startswith("journal") and "source_wins" in line for line in lines), lines
    # found by the target's key too
    assert [e.id for e in accepting.store.history.events("p", dst_key, by="target")] == [
        e.id for e in accepting.store.history.events("p", "t1")
    ]


async def test_changes_mode_leaves_out_unchanged_skips_and_off_records_nothing(tmp_path: Path, state_url: str) -> None:
    for i in range(5):
        fakes.put("a", "tickets", Ticket(key=f"t{i}", updated_at=utcnow(), subject=f"s{i}"))
    engine = one_way(tmp_path, state_url, events="changes")
    await engine.run("p")
    await engine.run("p", full=True)
    assert actions(engine, "t3") == ["create"]
    fakes.put("a", "tickets", Ticket(key="t9", updated_at=utcnow(), subject="s9"))
    quiet = one_way(tmp_path, state_url, events="off")
    assert (await quiet.run("p")).counts["created"] == 1
    assert actions(quiet, "t9") == []


async def test_nothing_is_recorded_by_a_dry_run(tmp_path: Path, state_url: str) -> None:
    fakes.put("a", "tickets", Ticket(key="t1", updated_at=utcnow(), subject="x"))
    engine = one_way(tmp_path, state_url)
    assert (await engine.run("p", dry_run=True)).outcome == "dry-run"
    assert actions(engine, "t1") == []


def two_way(tmp_path: Path, state_url: str, conflict: str, **more: Any) -> Engine:
    return engine_for(
        tmp_path,
        state_url,
        {
            "systems": {"crm": fakes.options(store="crm"), "desk": fakes.options(store="desk")},
            "pipelines": {
                "p": {
                    "from": "crm.contacts",
                    "to": "desk.contacts",
                    "direction": "both",
                    "conflict": conflict,
                    "journal": more.pop("journal", {}),
                    **more,
                }
            },
        },
    )


async def test_two_way_conflicts_are_journaled_under_each_policy(tmp_path: Path, state_url: str) -> None:
    fakes.put("crm", "contacts", Contact(key="c1", updated_at=utcnow(), email="p@example.com", phone="1"))
    engine = two_way(tmp_path, state_url, "newest_wins")
    assert (await engine.run("p")).counts["created"] == 1
    d1 = engine.store.links_for("crm.contacts", "desk.contacts", ["c1"])["c1"].dst_key
    assert (await engine.run("p")).counts["updated"] == 0
    assert actions(engine, "c1") == ["create", "echo"], "our own create read back is an echo"

    # both sides edit the phone; the desk's edit is newer and wins: the CRM's value is lost
    edit("crm", "contacts", "c1", phone="crm-edit")
    fakes.STORES["desk"]["contacts"][d1] = fakes.STORES["desk"]["contacts"][d1].model_copy(
        update={"phone": "desk-edit", "updated_at": utcnow() + timedelta(seconds=5)}
    )
    assert (await engine.run("p")).counts["updated"] == 1
    [entry] = engine.store.history.conflicts("p")
    assert (entry.system, entry.side, entry.record_key, entry.src_key) == ("crm.contacts", "from", "c1", "c1")
    assert entry.lost == {"phone": "crm-edit"} and entry.won == {"phone": "desk-edit"}
    assert entry.policy == "newest_wins" and "kept the to-side's version" in entry.reason
    history = engine.store.history.events("p", d1, by="target")  # by the desk's key
    assert [e.action for e in history][-2:] == ["conflict", "update"]
    assert history[-1].target == "crm.contacts" and history[-1].fields == ("phone",)

    # source_wins: the desk's edit is the one lost
    edit("crm", "contacts", "c1", phone="crm-2")
    edit("desk", "contacts", d1, phone="desk-2")
    winner = two_way(tmp_path, state_url, "source_wins")
    assert (await winner.run("p")).counts["updated"] == 1
    latest = winner.store.history.conflicts("p")[0]
    assert (latest.system, latest.lost, latest.won) == ("desk.contacts", {"phone": "desk-2"}, {"phone": "crm-2"})

    # manual: nothing written, nothing journaled (nothing was lost), a dead letter and its event
    edit("crm", "contacts", "c1", phone="crm-3")
    edit("desk", "contacts", d1, phone="desk-3")
    manual = two_way(tmp_path, state_url, "manual")
    assert (await manual.run("p")).counts["dead_lettered"] == 1
    assert len(manual.store.history.conflicts("p")) == 2
    last = manual.store.history.events("p", "c1")[-1]
    assert last.action == "manual" and "conflict policy is manual" in (last.detail or "")


async def test_the_journal_masks_secret_and_configured_fields_and_can_be_turned_off(
    tmp_path: Path, state_url: str
) -> None:
    fakes.put(
        "crm", "contacts", Contact(key="c1", updated_at=utcnow(), email="p@example.com", phone="1", organisation="A")
    )
    engine = two_way(tmp_path, state_url, "source_wins", journal={"redact": ["phone"]})
    await engine.run("p")
    d1 = engine.store.links_for("crm.contacts", "desk.contacts", ["c1"])["c1"].dst_key
    edit("crm", "contacts", "c1", phone="2", organisation="B")
    edit("desk", "contacts", d1, phone="555-0100", organisation="C")
    await engine.run("p")
    [entry] = engine.store.history.conflicts("p")
    assert entry.lost == {"phone": "***", "organisation": "C"}
    off = two_way(tmp_path, state_url, "source_wins", journal={"enabled": False})
    edit("crm", "contacts", "c1", organisation="D")
    edit("desk", "contacts", d1, organisation="E")
    await off.run("p")
    assert len(off.store.history.conflicts("p")) == 1


def test_retention_prunes_old_events_and_entries(tmp_path: Path, state_url: str) -> None:
    from ferryman.state import NewConflict, NewEvent

    store = StateStore.open(state_url)
    store.history.add(
        "p",
        None,
        [NewEvent("a.tickets", "t1", "create")],
        [NewConflict("b.tickets", "target", "9", "t1", "source_wins", "why", {"x": 1}, {"x": 2})],
    )
    assert store.history.prune(timedelta(days=30), timedelta(days=180)) == (0, 0)
    assert store.history.prune(timedelta(seconds=-1), timedelta(seconds=-1)) == (1, 1)
    assert store.history.events("p", "t1") == [] and store.history.conflicts("p", status=None) == []


def test_pruning_keeps_exactly_the_events_inside_the_retention(tmp_path: Path, state_url: str) -> None:
    """Events are pruned by bisecting their ids by time (no index on the time): every event
    older than the retention goes, every newer one stays, at any split."""
    import sqlalchemy as sa

    from ferryman.state import NewEvent
    from ferryman.state.history import T_EVENTS

    store = StateStore.open(state_url)
    now = utcnow()
    ages = [40, 39, 35, 31, 30.5, 29, 10, 1, 0]  # days ago, oldest first (ids grow with time)
    with store.engine.begin() as conn:
        for i in range(len(ages)):
            store.history.write(conn, "p", None, [NewEvent("a.t", f"k{i}", "create")])
        ids = [row[0] for row in conn.execute(sa.select(T_EVENTS.c.id).order_by(T_EVENTS.c.id))]
        for event_id, days in zip(ids, ages, strict=True):
            conn.execute(sa.update(T_EVENTS).where(T_EVENTS.c.id == event_id).values(at=now - timedelta(days=days)))
    assert store.history.prune(timedelta(days=30), timedelta(days=180)) == (5, 0)
    left = [e.src_key for k in range(len(ages)) for e in store.history.events("p", f"k{k}")]
    assert left == ["k5", "k6", "k7", "k8"]
    assert store.history.prune(timedelta(days=30), timedelta(days=180)) == (0, 0)
    assert store.history.prune(timedelta(hours=1), timedelta(days=180)) == (3, 0)
