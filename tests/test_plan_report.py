"""What a run tells its observers: a dry run's plan (:mod:`ferryman.plan_report`: the
actions, the fields an update would change, the summary, its text and JSON), and the
progress bar's total (``Page.total`` from the CSV connector and ``whole_list_pages``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferryman import redact
from ferryman.config import load_config
from ferryman.connector import Page, Reject
from ferryman.cursor import Cursor
from ferryman.engine import Engine
from ferryman.errors import NotSupportedError
from ferryman.plan_report import DryRunReport, PlannedAction, changes_between, describe, render, summary_line
from ferryman.records import Record, Ticket
from ferryman.sdk.readloop import whole_list_pages
from ferryman.state import StateStore
from tests import fakes

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ticket(key: str, subject: str, seconds: int = 0, **fields: Any) -> Ticket:
    return Ticket(key=key, updated_at=T0 + timedelta(seconds=seconds), subject=subject, **fields)


# -- the diff --------------------------------------------------------------------------------


def test_changes_are_the_content_fields_that_differ_old_to_new() -> None:
    old = ticket("9", "printer jammed", status="open", priority="low")
    new = ticket("1", "printer on fire", 60, status="open", priority="high")
    changes = changes_between(old, new)
    # key and updated_at always differ between two systems: never a change
    assert {k: (c.old, c.new) for k, c in changes.items()} == {
        "subject": ("printer jammed", "printer on fire"),
        "priority": ("low", "high"),
    }
    assert changes_between(new, new.model_copy(update={"key": "x", "updated_at": T0})) == {}


def test_secrets_never_enter_the_report() -> None:
    redact.register_secret("hunter2-very-secret")
    old = ticket("1", "help", description="nothing yet")
    new = ticket("1", "help", description="the password is hunter2-very-secret")
    [(name, change)] = changes_between(old, new).items()
    assert name == "description" and change.new == "the password is ***"
    report = DryRunReport("p")
    report.action("update", "b.tickets", key="1", target_key="1", source="a.tickets", current=old, new=new)
    text = "\n".join(render(report.actions)) + json.dumps(report.to_json())
    assert "hunter2" not in text and "***" in text


class WithToken(Record):
    """A record type whose content has a field named like a secret."""

    token: str | None = None


def test_a_field_named_like_a_secret_is_masked_whole() -> None:
    before = WithToken(key="1", updated_at=T0, token="abc")
    after = WithToken(key="1", updated_at=T0, token="def")
    assert {k: (c.old, c.new) for k, c in changes_between(before, after).items()} == {"token": ("***", "***")}


# -- the text ----------------------------------------------------------------------------------


def test_each_action_reads_as_plain_words() -> None:
    report = DryRunReport("t2c")
    src, dst = "inbox.tickets", "out.tickets"
    report.action("create", dst, key="4", source=src)
    report.action(
        "update", dst, key="1", target_key="71", source=src, current=ticket("71", "old"), new=ticket("1", "new")
    )
    report.action("delete", dst, key="3", target_key="73", source=src)
    report.action("withhold", dst, key="5", target_key="75", source=src, reason="deletes are not enabled")
    report.action("dead-letter", None, key="6", source=src, reason="line 7: updated_at: not a timestamp")
    report.action("skip", dst, key="2", target_key="72", source=src, reason="unchanged")
    assert render(report.actions) == [
        "create in out.tickets <- inbox.tickets#4",
        "update in out.tickets#71 <- inbox.tickets#1",
        "    subject: 'old' -> 'new'",
        "delete from out.tickets#73 <- inbox.tickets#3",
        "withhold the delete from out.tickets#75 <- inbox.tickets#5: deletes are not enabled",
        "dead-letter inbox.tickets#6: line 7: updated_at: not a timestamp",
        "skip inbox.tickets#2 (unchanged in out.tickets#72)",
    ]


def test_two_way_actions_name_the_side_not_an_op_code() -> None:
    lines = describe(
        PlannedAction("update", "crm.contacts", "d1", "c1", "desk.contacts", None, "conflict resolved", "from")
    )
    assert lines == [
        "update on the from-side (crm.contacts#c1) <- desk.contacts#d1: conflict resolved",
        "    (current value not read)",
    ]
    assert describe(PlannedAction("create", "desk.contacts", "c2", None, "crm.contacts", side="to")) == [
        "create on the to-side (desk.contacts) <- crm.contacts#c2"
    ]
    assert describe(PlannedAction("delete", "crm.contacts", "d3", "c3", "desk.contacts", side="from")) == [
        "delete from the from-side (crm.contacts#c3) <- desk.contacts#d3"
    ]
    assert describe(PlannedAction("link", "desk.contacts", "c1", "d1", "crm.contacts", reason="both sides agree")) == [
        "link crm.contacts#c1 <-> desk.contacts#d1: both sides agree"
    ]


def test_long_values_are_cut_to_about_sixty_characters() -> None:
    report = DryRunReport("p")
    report.action("update", "b.tickets", key="1", target_key="1", current=ticket("1", "x" * 500), new=ticket("1", "y"))
    old_shown = render(report.actions)[1].split(": ", 1)[1].split(" -> ")[0]
    assert old_shown.startswith("'xxx") and old_shown.endswith("\u2026'") and len(old_shown) < 66


def test_an_update_the_target_already_holds_says_so() -> None:
    same = ticket("1", "same")
    report = DryRunReport("p")
    report.action("update", "b.tickets", key="1", target_key="1", current=same, new=same)
    assert render(report.actions)[1] == "    (no field differs from what it holds now)"


def test_the_summary_counts_by_action_and_by_field() -> None:
    report = DryRunReport("p", keep=False)
    for i in range(12_345):
        report.action("create", "b.tickets", key=str(i))
    for i, (old, new) in enumerate([("a", "b"), ("a", "b"), ("a", "a")]):
        report.action(
            "update",
            "b.tickets",
            key=f"u{i}",
            current=ticket("1", old, status="open"),
            new=ticket("1", new, status="closed" if i == 0 else "open"),
        )
    for i in range(85):
        report.action("skip", "b.tickets", key=f"s{i}")
    summary = report.summary()
    assert (summary["create"], summary["update"], summary["delete"], summary["skip"]) == (12_345, 3, 0, 85)
    assert summary["fields"] == {"subject": 2, "status": 1}
    assert report.actions == []  # keep=False: counted, not kept
    assert summary_line(summary, grouped=True) == (
        "would create 12,345, update 3 (fields: subject 2, status 1), delete 0, skip 85"
    )
    assert summary_line(summary).startswith("would create 12345, ")


def test_a_listener_hears_every_action_and_skips_can_be_left_out_of_the_list() -> None:
    heard: list[PlannedAction] = []
    report = DryRunReport("p", listener=heard.append, keep_skips=False)
    report.action("skip", "b.tickets", key="1")
    report.action("create", "b.tickets", key="2")
    assert [a.action for a in heard] == ["skip", "create"]
    assert [a.action for a in report.actions] == ["create"] and report.summary()["skip"] == 1


def test_the_json_document() -> None:
    report = DryRunReport("t2c")
    report.action(
        "update",
        "out.tickets",
        key="1",
        target_key="1",
        source="inbox.tickets",
        current=ticket("1", "a"),
        new=ticket("1", "b"),
    )
    doc = json.loads(json.dumps(report.to_json(outcome="dry-run")))
    assert doc["pipeline"] == "t2c" and doc["outcome"] == "dry-run"
    assert doc["actions"] == [
        {
            "action": "update",
            "target": "out.tickets",
            "key": "1",
            "target_key": "1",
            "source": "inbox.tickets",
            "side": None,
            "changes": {"subject": {"old": "a", "new": "b"}},
            "reason": None,
        }
    ]
    assert doc["summary"]["update"] == 1 and doc["summary"]["fields"] == {"subject": 1}


# -- the engine reports to it --------------------------------------------------------------------


def memory_engine(tmp_path: Path, state_url: str) -> Engine:
    doc = {
        "state": {"url": state_url},
        "systems": {"a": fakes.options(store="a"), "b": fakes.options(store="b")},
        "pipelines": {"p": {"from": "a.tickets", "to": "b.tickets", "page_size": 10}},
    }
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(doc))
    return Engine(load_config(tmp_path / "f.yaml", environ={}), StateStore.open(state_url))


@pytest.mark.usefixtures("memory_connector")
async def test_a_dry_run_reads_what_the_target_holds_for_each_update(tmp_path: Path, state_url: str) -> None:
    for i in range(3):
        fakes.put("a", "tickets", ticket(f"t{i}", f"subject {i}", i))
    engine = memory_engine(tmp_path, state_url)
    assert (await engine.run("p")).counts["created"] == 3
    target_key = engine.store.links_for("a.tickets", "b.tickets", ["t1"])["t1"].dst_key
    fakes.put("a", "tickets", ticket("t1", "subject 1, edited", 100))
    report = DryRunReport("p")
    result = await engine.run("p", dry_run=True, report=report)
    [update] = [a for a in report.actions if a.action == "update"]
    assert (update.key, update.target_key) == ("t1", target_key)
    assert update.changes is not None
    assert {k: (c.old, c.new) for k, c in update.changes.items()} == {"subject": ("subject 1", "subject 1, edited")}
    assert result.counts["updated"] == 1 and report.summary()["skip"] == 2
    assert fakes.STORES["b"]["tickets"][target_key].subject == "subject 1"  # not written


@pytest.mark.usefixtures("memory_connector")
async def test_a_target_that_cannot_get_gives_updates_without_old_values(
    tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes.put("a", "tickets", ticket("t1", "one"))
    engine = memory_engine(tmp_path, state_url)
    await engine.run("p")
    fakes.put("a", "tickets", ticket("t1", "one, edited", 100))

    async def no_get(self: Any, stream: str, key: str) -> None:
        raise NotSupportedError("cannot get single records", system=self.name)

    monkeypatch.setattr(fakes.MemoryConnector, "get", no_get)
    report = DryRunReport("p")
    result = await engine.run("p", dry_run=True, report=report)
    assert result.outcome == "dry-run"
    [update] = report.actions
    assert update.changes is None and describe(update)[1] == "    (current value not read)"


async def test_a_file_target_is_read_once_for_the_diff_not_searched_per_update(
    tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in").mkdir()
    source = tmp_path / "in" / "tickets.csv"
    rows = [f"{i},2026-01-01T00:00:{i:02d}Z,subject {i}" for i in range(30)]
    source.write_text("key,updated_at,subject\n" + "\n".join(rows) + "\n")
    doc = {
        "state": {"url": state_url},
        "systems": {
            "inbox": {"connector": "csv", "directory": str(tmp_path / "in")},
            "out": {"connector": "csv", "directory": str(tmp_path / "out")},
        },
        "pipelines": {"t2c": {"from": "inbox.tickets", "to": "out.tickets", "page_size": 10}},
    }
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(doc))
    engine = Engine(load_config(tmp_path / "f.yaml", environ={}), StateStore.open(state_url))
    assert (await engine.run("t2c")).counts["created"] == 30
    source.write_text(
        "key,updated_at,subject\n"
        + "\n".join(f"{i},2026-01-02T00:00:{i:02d}Z,subject {i} v2" for i in range(30))
        + "\n"
    )
    from connectors.csv import CsvConnector

    async def refuse(self: Any, stream: str, key: str) -> None:
        raise AssertionError(f"get({key}) on a file target: a search of the whole file per update")

    monkeypatch.setattr(CsvConnector, "get", refuse)
    report = DryRunReport("t2c")
    result = await engine.run("t2c", dry_run=True, report=report)
    await engine.aclose()
    assert result.outcome == "dry-run", result.message
    updates = [a for a in report.actions if a.action == "update"]
    assert len(updates) == 30
    assert all(
        a.changes is not None
        and {k: (c.old, c.new) for k, c in a.changes.items()}
        == {"subject": (f"subject {a.key}", f"subject {a.key} v2")}
        for a in updates
    )


# -- the progress bar's total -------------------------------------------------------------------


def test_whole_list_pages_carry_the_total_the_read_brings() -> None:
    records = [ticket(str(i), f"s{i}", i) for i in range(25)]
    pages = whole_list_pages(records, [Reject("line 3", "bad")], None, 10)
    assert [len(p.records) for p in pages] == [0, 10, 10, 5]
    assert {p.total for p in pages} == {25}
    # from a cursor: only the records due count
    since = Cursor(T0 + timedelta(seconds=20), "20")
    due = whole_list_pages(records, [], since, 10)
    assert sum(len(p.records) for p in due) == due[0].total
    assert whole_list_pages(records, [], None, 10, total=40)[0].total == 40  # a read of several lists
    assert Page([]).total is None  # a source that cannot tell


async def test_the_csv_connector_tells_its_row_count_and_the_engine_passes_it_on(
    tmp_path: Path, state_url: str
) -> None:
    (tmp_path / "in").mkdir()
    rows = [f"{i},2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z,s{i}" for i in range(1234)]
    (tmp_path / "in" / "tickets.csv").write_text("key,updated_at,subject\n" + "\n".join(rows) + "\nbad,never,x\n")
    doc = {
        "state": {"url": state_url},
        "systems": {
            "inbox": {"connector": "csv", "directory": str(tmp_path / "in")},
            "out": {"connector": "csv", "directory": str(tmp_path / "out")},
        },
        "pipelines": {"t2c": {"from": "inbox.tickets", "to": "out.tickets", "page_size": 100}},
    }
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(doc))
    engine = Engine(load_config(tmp_path / "f.yaml", environ={}), StateStore.open(state_url))
    source = await engine.system("inbox")
    pages = [page async for page in source.read("tickets", None, 100)]
    assert {p.total for p in pages} == {1234}  # the valid rows; the bad one is a reject
    calls: list[tuple[int, int | None]] = []

    def progress(records: int, counts: dict[str, int], total: int | None) -> None:
        calls.append((records, total))

    result = await engine.run("t2c", progress=progress)
    await engine.aclose()
    assert result.outcome == "ok"
    assert sum(n for n, _ in calls) == 1234 and {t for _, t in calls} == {1234}
