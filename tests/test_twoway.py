"""Two-way pipelines on in-memory apps: matching, echo suppression, conflicts, deletes,
the loop breaker, and a randomized run of 2,000 changes on both sides."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferryman.config import load_config
from ferryman.engine import Engine
from ferryman.plan_report import DryRunReport, describe
from ferryman.records import Contact, fingerprint
from ferryman.state import StateStore
from ferryman.timeutil import utcnow
from ferryman.twoway import Policy, plan_pairs
from tests import fakes

pytestmark = pytest.mark.usefixtures("memory_connector")


def engine_for(tmp_path: Path, state_url: str, **pipeline: Any) -> Engine:
    doc = {
        "state": {"url": state_url},
        "systems": {"crm": fakes.options(store="crm"), "desk": fakes.options(store="desk")},
        "pipelines": {"sync": {"from": "crm.contacts", "to": "desk.contacts", "direction": "both", **pipeline}},
    }
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(doc))
    return Engine(load_config(tmp_path / "f.yaml", environ={}), StateStore.open(state_url))


def contact(key: str, email: str, **fields: Any) -> Contact:
    return Contact(key=key, updated_at=utcnow(), email=email, **fields)


def live(store: str) -> dict[str, Contact]:
    """email -> record for the records a side holds (tombstones excluded)."""
    out: dict[str, Contact] = {}
    for record in fakes.STORES.get(store, {}).get("contacts", {}).values():
        if not record.deleted:
            assert record.email not in out, f"{store} holds {record.email} twice"
            out[record.email] = record  # type: ignore[index]
    return out


def writes(store: str) -> int:
    return sum(1 for op, _, _ in fakes.CALLS.get(store, []) if op in ("create", "update", "delete"))


def edit(store: str, key: str, **fields: Any) -> None:
    table = fakes.STORES[store]["contacts"]
    table[key] = table[key].model_copy(update={**fields, "updated_at": utcnow()})


async def test_first_sync_matches_on_email_and_creates_the_rest(tmp_path: Path, state_url: str) -> None:
    for i in range(10):
        fakes.put("crm", "contacts", contact(f"c{i}", f"p{i}@example.com", first_name=f"P{i}"))
    for i in range(5, 15):
        fakes.put("desk", "contacts", contact(f"d{i}", f"p{i}@example.com", first_name=f"P{i}"))
    engine = engine_for(tmp_path, state_url)
    result = await engine.run("sync")
    assert result.outcome == "ok", result.message
    assert result.counts["created"] == 10  # 5 each way; the 5 shared emails are linked, not duplicated
    assert set(live("crm")) == set(live("desk")) == {f"p{i}@example.com" for i in range(15)}
    assert engine.store.count_links("crm.contacts", "desk.contacts") == 15
    again = await engine.run("sync")
    assert again.counts["created"] == again.counts["updated"] == 0, "no echo writes"


async def test_dry_run_reports_the_match_and_create_plan(tmp_path: Path, state_url: str) -> None:
    fakes.put("crm", "contacts", contact("c1", "same@example.com"))
    fakes.put("crm", "contacts", contact("c2", "only-crm@example.com"))
    fakes.put("desk", "contacts", contact("d1", "same@example.com"))
    report = DryRunReport("sync")
    result = await engine_for(tmp_path, state_url).run("sync", dry_run=True, report=report)
    assert result.outcome == "dry-run"
    planned = {(a.action, a.key, a.target_key, a.side) for a in report.actions}
    assert planned == {("link", "c1", "d1", None), ("create", "c2", None, "to")}
    [create] = [a for a in report.actions if a.action == "create"]
    assert describe(create) == ["create on the to-side (desk.contacts) <- crm.contacts#c2"]
    assert writes("crm") == writes("desk") == 0


async def test_dry_run_names_the_side_an_edit_goes_to_and_the_fields_it_changes(tmp_path: Path, state_url: str) -> None:
    fakes.put("crm", "contacts", contact("c1", "a@example.com", phone="1"))
    fakes.put("desk", "contacts", contact("d1", "b@example.com", phone="2"))
    engine = engine_for(tmp_path, state_url)
    assert (await engine.run("sync")).outcome == "ok"
    desk_key = next(r.key for r in live("desk").values() if r.email == "a@example.com")
    crm_key = next(r.key for r in live("crm").values() if r.email == "b@example.com")
    edit("crm", "c1", phone="111")
    edit("desk", "d1", phone="222")
    before = writes("crm"), writes("desk")
    report = DryRunReport("sync")
    result = await engine.run("sync", dry_run=True, report=report)
    assert result.outcome == "dry-run" and result.counts["updated"] == 2
    updates = {a.side: a for a in report.actions if a.action == "update"}
    assert set(updates) == {"from", "to"}
    to_desk, to_crm = updates["to"], updates["from"]
    assert (to_desk.target, to_desk.target_key, to_desk.source, to_desk.key) == (
        "desk.contacts",
        desk_key,
        "crm.contacts",
        "c1",
    )
    assert to_desk.changes is not None and {k: (c.old, c.new) for k, c in to_desk.changes.items()} == {
        "phone": ("1", "111")
    }
    assert (to_crm.target, to_crm.target_key, to_crm.source, to_crm.key) == (
        "crm.contacts",
        crm_key,
        "desk.contacts",
        "d1",
    )
    assert to_crm.changes is not None and {k: (c.old, c.new) for k, c in to_crm.changes.items()} == {
        "phone": ("2", "222")
    }
    assert describe(to_crm) == [
        f"update on the from-side (crm.contacts#{crm_key}) <- desk.contacts#d1",
        "    phone: '2' -> '222'",
    ]
    assert not any("update_a" in line or "update_b" in line for a in report.actions for line in describe(a))
    assert (writes("crm"), writes("desk")) == before  # nothing written


async def test_an_edit_on_each_side_arrives_on_the_other(tmp_path: Path, state_url: str) -> None:
    fakes.put("crm", "contacts", contact("c1", "a@example.com", phone="1"))
    fakes.put("desk", "contacts", contact("d1", "b@example.com", phone="2"))
    engine = engine_for(tmp_path, state_url)
    await engine.run("sync")
    desk_key = next(r.key for r in live("desk").values() if r.email == "a@example.com")
    crm_key = next(r.key for r in live("crm").values() if r.email == "b@example.com")
    edit("crm", "c1", phone="111")
    edit("desk", "d1", phone="222")
    result = await engine.run("sync")
    assert result.counts["updated"] == 2
    assert fakes.STORES["desk"]["contacts"][desk_key].phone == "111"
    assert fakes.STORES["crm"]["contacts"][crm_key].phone == "222"
    assert (await engine.run("sync")).counts["updated"] == 0


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("source_wins", "from-crm"), ("target_wins", "from-desk"), ("newest_wins", "from-desk")],
)
async def test_conflict_policies(tmp_path: Path, state_url: str, policy: str, expected: str) -> None:
    fakes.put("crm", "contacts", contact("c1", "a@example.com", title="old"))
    engine = engine_for(tmp_path, state_url, conflict=policy)
    await engine.run("sync")
    desk_key = next(iter(live("desk").values())).key
    edit("crm", "c1", title="from-crm")
    edit("desk", desk_key, title="from-desk")  # later, so newest_wins picks the desk
    result = await engine.run("sync")
    assert result.outcome == "ok"
    assert live("crm")["a@example.com"].title == live("desk")["a@example.com"].title == expected


async def test_manual_conflicts_go_to_the_dead_letter_table_and_dlq_resolves_them(
    tmp_path: Path, state_url: str
) -> None:
    from ferryman.twoway import resolve_conflict

    fakes.put("crm", "contacts", contact("c1", "a@example.com", title="old"))
    engine = engine_for(tmp_path, state_url, conflict="manual")
    await engine.run("sync")
    desk_key = next(iter(live("desk").values())).key
    edit("crm", "c1", title="crm says")
    edit("desk", desk_key, title="desk says")
    result = await engine.run("sync")
    assert result.counts["dead_lettered"] == 1 and result.counts["updated"] == 0
    [letter] = engine.store.dead_letters("sync")
    assert letter.kind == "conflict"
    assert letter.payload["from"]["title"] == "crm says" and letter.payload["to"]["title"] == "desk says"
    await resolve_conflict(engine, letter.id, "to")
    assert live("crm")["a@example.com"].title == "desk says"
    assert engine.store.dead_letters("sync") == []
    assert (await engine.run("sync")).counts["updated"] == 0


async def test_per_field_conflict_policy(tmp_path: Path, state_url: str) -> None:
    fakes.put("crm", "contacts", contact("c1", "a@example.com", title="t0", phone="p0"))
    engine = engine_for(tmp_path, state_url, conflict="source_wins", conflict_fields={"phone": "target_wins"})
    await engine.run("sync")
    desk_key = next(iter(live("desk").values())).key
    edit("crm", "c1", title="t-crm", phone="p-crm")
    edit("desk", desk_key, title="t-desk", phone="p-desk")
    await engine.run("sync")
    for side in ("crm", "desk"):
        record = live(side)["a@example.com"]
        assert (record.title, record.phone) == ("t-crm", "p-desk")


async def test_delete_threshold_halts_before_deleting_anything(tmp_path: Path, state_url: str) -> None:
    for i in range(10):
        fakes.put("crm", "contacts", contact(f"c{i}", f"p{i}@example.com"))
    engine = engine_for(tmp_path, state_url, deletes={"enabled": True, "max_share": 0.2})
    await engine.run("sync")
    edit("desk", next(iter(live("desk").values())).key, title="an edit that must not be written either")
    for i in range(5):
        edit("crm", f"c{i}", deleted=True)
    before = writes("desk") + writes("crm")
    result = await engine.run("sync")
    assert result.outcome == "halted" and "max_share" in (result.message or "")
    assert writes("desk") + writes("crm") == before
    assert len(live("desk")) == 10


async def test_deletes_delete_or_unlink_as_configured(tmp_path: Path, state_url: str) -> None:
    for i in range(4):
        fakes.put("crm", "contacts", contact(f"c{i}", f"p{i}@example.com"))
    engine = engine_for(tmp_path, state_url, deletes={"enabled": True, "max_share": 0.5})
    await engine.run("sync")
    edit("crm", "c0", deleted=True)
    result = await engine.run("sync")
    assert result.counts["deleted"] == 1 and "p0@example.com" not in live("desk")
    fakes.reset()
    for i in range(4):
        fakes.put("crm", "contacts", contact(f"c{i}", f"p{i}@example.com"))
    (tmp_path / "u").mkdir()
    unlinking = engine_for(
        tmp_path / "u",
        f"sqlite:///{tmp_path / 'u.db'}",
        deletes={"enabled": True, "action": "unlink", "max_share": 0.5},
    )
    await unlinking.run("sync")
    edit("crm", "c0", deleted=True)
    result = await unlinking.run("sync")
    assert result.counts["deleted"] == 0 and "p0@example.com" in live("desk")
    assert unlinking.store.count_links("crm.contacts", "desk.contacts") == 3


async def test_loop_breaker_quarantines_a_pair_rewritten_too_often(tmp_path: Path, state_url: str) -> None:
    fakes.put("crm", "contacts", contact("c1", "a@example.com", title="0"))
    engine = engine_for(tmp_path, state_url, loop_breaker={"max_writes": 3, "window": "10m"})
    await engine.run("sync")
    for n in range(1, 7):  # something keeps rewriting the record between syncs
        edit("crm", "c1", title=str(n))
        await engine.run("sync")
    letters = [x for x in engine.store.dead_letters("sync") if x.kind == "loop"]
    assert len(letters) == 1 and "rewritten" in letters[0].reason
    assert letters[0].payload["history"]["writes_in_window"] > 3
    assert live("desk")["a@example.com"].title in ("2", "3")  # writes stopped at the limit


def test_plan_is_pure_and_echo_free() -> None:
    now = utcnow()
    a = Contact(key="a1", updated_at=now, email="x@example.com", title="t")
    b = Contact(key="b1", updated_at=now, email="x@example.com", title="t")
    from ferryman.state import Link

    link = Link("a1", "b1", fingerprint(a), fingerprint(b))
    ident = lambda r: r  # noqa: E731
    assert plan_pairs({"a1": a}, {"b1": b}, [link], [], [], [], ident, ident, Policy()) == []


async def test_randomized_changes_on_both_sides_converge_without_duplicates_or_echo(
    tmp_path: Path, state_url: str
) -> None:
    """500 records, 2,000 random creates, edits and deletes on both sides, synced every 100 changes."""
    rng = random.Random(4242)
    for i in range(250):
        fakes.put("crm", "contacts", contact(f"seed-c{i}", f"c{i}@example.com", title="seed"))
        fakes.put("desk", "contacts", contact(f"seed-d{i}", f"d{i}@example.com", title="seed"))
    # edits here come seconds apart, far faster than people edit: the loop breaker gets a
    # threshold to match (it has its own test)
    engine = engine_for(
        tmp_path,
        state_url,
        conflict="newest_wins",
        deletes={"enabled": True, "max_share": 0.5},
        loop_breaker={"max_writes": 10_000, "window": "1h"},
    )
    first = await engine.run("sync")
    assert first.outcome == "ok" and first.counts["created"] == 500
    base_writes = writes("crm") + writes("desk")
    changes = conflicts = 0
    serial = 0
    for _batch in range(20):
        touched: dict[str, set[str]] = {"crm": set(), "desk": set()}
        for _ in range(100):
            side = rng.choice(["crm", "desk"])
            table = fakes.STORES[side]["contacts"]
            alive = [k for k, r in table.items() if not r.deleted]
            roll = rng.random()
            if roll < 0.2 or not alive:
                serial += 1
                key = f"{side}-new-{serial}"
                table[key] = contact(key, f"new{serial}@example.com", title="new")
            elif roll < 0.85:
                key = rng.choice(alive)
                edit(side, key, title=f"edit-{serial}-{rng.randrange(10**6)}")
                serial += 1
                touched[side].add(table[key].email or "")
            else:
                key = rng.choice(alive)
                edit(side, key, deleted=True)
                touched[side].add(table[key].email or "")
            changes += 1
        conflicts += len(touched["crm"] & touched["desk"])
        result = await engine.run("sync")
        assert result.outcome == "ok", result.message
    final = await engine.run("sync")
    assert final.counts["created"] == final.counts["updated"] == final.counts["deleted"] == 0
    crm, desk = live("crm"), live("desk")
    assert set(crm) == set(desk), f"sides differ: {sorted(set(crm) ^ set(desk))[:5]}"
    for email in crm:
        assert crm[email].title == desk[email].title, email
    made = writes("crm") + writes("desk") - base_writes
    assert made <= changes + conflicts, f"{made} writes for {changes} changes and {conflicts} conflicts"
    assert not [x for x in engine.store.dead_letters("sync") if x.kind in ("loop", "rejected")]


async def test_a_stopped_two_way_run_commits_nothing_half_done_and_the_next_run_finishes(
    tmp_path: Path, state_url: str
) -> None:
    import asyncio

    for i in range(250):
        fakes.put("crm", "contacts", contact(f"c{i}", f"p{i}@example.com"))
    engine = engine_for(tmp_path, state_url)
    stop = asyncio.Event()
    stop.set()  # SIGTERM arrived: stop after the chunk in hand
    result = await engine.run("sync", stop=stop)
    assert result.outcome == "stopped"
    assert engine.store.get_cursor("sync", "a") is None
    done = await engine.run("sync")
    assert done.outcome == "ok" and len(live("desk")) == 250


class Crash(BaseException):
    """kill -9 stands-in: nothing below the engine catches it."""


async def test_a_create_interrupted_by_a_crash_is_linked_not_repeated(
    tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes.put("crm", "contacts", contact("c1", "from-crm@example.com"))
    fakes.put("desk", "contacts", contact("d1", "from-desk@example.com"))
    engine = engine_for(tmp_path, state_url)
    real_create = fakes.MemoryConnector.create

    async def create_then_die(self: Any, stream: str, record: Any) -> Any:
        await real_create(self, stream, record)
        raise Crash  # the app has the record; we die before committing the link

    monkeypatch.setattr(fakes.MemoryConnector, "create", create_then_die)
    with pytest.raises(Crash):
        await engine.run("sync")
    monkeypatch.setattr(fakes.MemoryConnector, "create", real_create)
    engine.store.release_lease("sync")  # as a restart on this host would find it dead
    result = await engine.run("sync")
    assert result.outcome == "ok", result.message
    assert set(live("crm")) == set(live("desk")) == {"from-crm@example.com", "from-desk@example.com"}
    assert (await engine.run("sync")).counts["created"] == 0


async def test_an_edit_to_a_record_whose_create_was_interrupted_still_travels(
    tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crash right after the desk accepted a create; someone edits the new desk record;
    the restart links the pair and carries that edit back, instead of adopting it as agreed."""
    fakes.put("crm", "contacts", contact("c1", "someone@example.com", title="original"))
    engine = engine_for(tmp_path, state_url)
    real_create = fakes.MemoryConnector.create

    async def create_then_die(self: Any, stream: str, record: Any) -> Any:
        await real_create(self, stream, record)
        raise Crash

    monkeypatch.setattr(fakes.MemoryConnector, "create", create_then_die)
    with pytest.raises(Crash):
        await engine.run("sync")
    monkeypatch.setattr(fakes.MemoryConnector, "create", real_create)
    engine.store.release_lease("sync")
    desk_key = live("desk")["someone@example.com"].key
    edit("desk", desk_key, title="edited in the desk after the crash")
    result = await engine.run("sync")
    assert result.outcome == "ok", result.message
    assert live("crm")["someone@example.com"].title == "edited in the desk after the crash"


async def test_links_of_an_older_fingerprint_version_are_not_changes(tmp_path: Path, state_url: str) -> None:
    """Both sides' fingerprints as version 1 stored them: records read again on one side are
    compared in their link's version, so they are not edits to carry to the other side."""
    from datetime import timedelta

    from ferryman.records import FINGERPRINTS
    from ferryman.state import Link, PageCommit

    an_hour_ago = utcnow() - timedelta(hours=1)  # outside the overlap: the CRM side is not re-read
    for i in range(10):
        when = an_hour_ago - timedelta(minutes=10 * i)  # the overlap re-reads c0 alone
        fakes.put("crm", "contacts", Contact(key=f"c{i}", updated_at=when, email=f"p{i}@example.com"))
    engine = engine_for(tmp_path, state_url)
    assert (await engine.run("sync")).counts["created"] == 10
    links = engine.store.links_for("crm.contacts", "desk.contacts", [f"c{i}" for i in range(10)])
    desk = fakes.STORES["desk"]["contacts"]
    old = [
        Link(k, x.dst_key, FINGERPRINTS[1](desk[x.dst_key]), FINGERPRINTS[1](desk[x.dst_key])) for k, x in links.items()
    ]
    engine.store.commit_page(PageCommit("sync", links={("crm.contacts", "desk.contacts"): old}))
    before = writes("crm") + writes("desk")
    for key in list(desk):  # read again on one side only (touched, same content): not an edit
        desk[key] = desk[key].model_copy(update={"updated_at": utcnow()})
    result = await engine.run("sync")
    assert result.outcome == "ok" and result.counts["read"] >= 10
    assert result.counts["updated"] == result.counts["created"] == 0
    assert writes("crm") + writes("desk") == before


async def test_two_new_records_with_one_email_never_share_one_record_on_the_other_side(
    tmp_path: Path, state_url: str
) -> None:
    """Read incrementally, the desk's new record matches one of two new CRM records with its
    email in memory; the other, looked up on the desk by email, finds the same record, which
    must not be matched a second time (two links to one record: their edits would overwrite
    each other on every run). It is created on the desk instead, as the CRM holds two."""
    fakes.put("crm", "contacts", contact("c0", "p0@example.com"))
    fakes.put("desk", "contacts", contact("d0", "q0@example.com"))  # so both sides have a cursor
    engine = engine_for(tmp_path, state_url)
    assert (await engine.run("sync")).outcome == "ok"
    fakes.put("crm", "contacts", contact("c1", "twin@example.com", first_name="One"))
    fakes.put("crm", "contacts", contact("c2", "twin@example.com", first_name="Two"))
    fakes.put("desk", "contacts", contact("d9", "twin@example.com", first_name="One"))
    result = await engine.run("sync")
    assert result.outcome == "ok", result.message
    keys = ["c0", "c1", "c2", *(k for k in fakes.STORES["crm"]["contacts"] if k.startswith("crm-"))]
    links = engine.store.links_for("crm.contacts", "desk.contacts", keys)
    assert sorted(links) == sorted(keys)
    targets = [link.dst_key for link in links.values()]
    assert len(set(targets)) == len(targets) == 4, f"one desk record linked twice: {targets}"
    assert "d9" in targets
    desk = fakes.STORES["desk"]["contacts"]
    assert sorted(str(r.email) for r in desk.values() if not r.deleted).count("twin@example.com") == 2
