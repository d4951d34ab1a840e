"""The engine's delivery contract, on in-memory fakes (no network)."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from ferryman import logs
from ferryman.config import load_config
from ferryman.engine import Engine
from ferryman.plan_report import DryRunReport
from ferryman.records import Ticket, fingerprint
from ferryman.state import PageCommit, StateStore
from tests import fakes

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


pytestmark = pytest.mark.usefixtures("memory_connector")


def make_engine(
    tmp_path: Path,
    state_url: str,
    pipeline: dict[str, Any] | None = None,
    src: dict[str, Any] | None = None,
    dst: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Engine:
    doc = {
        "state": {"url": state_url},
        "systems": {"a": fakes.options(store="a", **(src or {})), "b": fakes.options(store="b", **(dst or {}))},
        "pipelines": {"p": {"from": "a.tickets", "to": "b.tickets", "page_size": 100, **(pipeline or {})}},
    }
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(doc))
    config = load_config(path, environ=env or {})
    return Engine(config, StateStore.open(state_url))


def seed(n: int, *, same_time: bool = False, prefix: str = "t") -> None:
    for i in range(n):
        when = T0 if same_time else T0 + timedelta(seconds=i)
        fakes.put("a", "tickets", Ticket(key=f"{prefix}{i:05d}", updated_at=when, subject=f"s{i}"))


def target() -> dict[str, Any]:
    return fakes.STORES.get("b", {}).get("tickets", {})


async def test_creates_then_skips_then_updates(tmp_path: Path, state_url: str) -> None:
    seed(250)
    engine = make_engine(tmp_path, state_url)
    first = await engine.run("p")
    assert first.outcome == "ok" and first.counts["created"] == 250
    second = await engine.run("p")
    assert second.counts["created"] == 0 and second.counts["updated"] == 0
    fakes.put("a", "tickets", Ticket(key="t00003", updated_at=T0 + timedelta(days=1), subject="edited"))
    third = await engine.run("p")
    assert third.counts["updated"] == 1 and third.counts["created"] == 0
    assert sorted(t.subject for t in target().values() if t.subject == "edited") == ["edited"]
    assert len(target()) == 250


async def test_shared_timestamp_across_page_boundaries_neither_lost_nor_repeated(
    tmp_path: Path, state_url: str
) -> None:
    """1,000 records with ONE updated_at, pages of 70, the run stopped every 3 pages and resumed
    with no overlap: only the compound (updated_at, key) cursor keeps this exact."""
    seed(1000, same_time=True)
    engine = make_engine(tmp_path, state_url, pipeline={"page_size": 70, "overlap": 0})
    creates = 0
    for _ in range(50):
        stop = asyncio.Event()
        pages = 0

        def progress(n: int, counts: dict[str, int], total: int | None, stop: asyncio.Event = stop) -> None:
            nonlocal pages
            pages += 1
            if pages == 3:
                stop.set()

        result = await engine.run("p", stop=stop, progress=progress)
        creates += result.counts["created"]
        if result.outcome == "ok":
            break
    assert creates == 1000
    subjects = sorted(t.subject for t in target().values())
    assert len(subjects) == 1000 and len(set(subjects)) == 1000
    writes = [c for c in fakes.CALLS["b"] if c[0] in ("create", "update")]
    assert len(writes) == 1000


async def test_auth_failure_stops_the_run_leaves_cursor_and_hides_the_key(tmp_path: Path, state_url: str) -> None:
    seed(10)
    engine = make_engine(tmp_path, state_url)
    assert (await engine.run("p")).outcome == "ok"
    cursor = engine.store.get_cursor("p")
    seed(5, prefix="n")
    out = io.StringIO()
    logs.configure("debug", "json", stream=out)
    engine2 = make_engine(
        tmp_path, state_url, src={"api_key": "${APP_KEY}", "fail_auth": True}, env={"APP_KEY": "key-5ecret-9931"}
    )
    result = await engine2.run("p")
    assert result.outcome == "failed" and "authentication failed" in (result.message or "")
    assert engine2.store.get_cursor("p") == cursor
    assert "key-5ecret-9931" not in (result.message or "")
    assert "key-5ecret-9931" not in out.getvalue()
    assert "key-5ecret-9931" not in str(engine2.store.runs("p"))


async def test_a_refused_record_is_dead_lettered_and_the_run_goes_on(tmp_path: Path, state_url: str) -> None:
    seed(20)
    engine = make_engine(tmp_path, state_url, dst={"reject_subjects": ["s7"]})
    result = await engine.run("p")
    assert result.outcome == "ok" and result.counts["created"] == 19 and result.counts["dead_lettered"] == 1
    letters = engine.store.dead_letters("p")
    assert [(x.ref, x.dst) for x in letters] == [("t00007", "b.tickets")]
    assert "422" in letters[0].reason
    assert engine.store.get_cursor("p").key == "t00019"  # type: ignore[union-attr]


async def test_pending_intents_are_reconciled_before_creating_again(tmp_path: Path, state_url: str) -> None:
    """A crash between the target's create and our commit leaves an intent; on restart the
    engine finds the record in the target by natural key instead of creating a duplicate."""
    seed(3)
    engine = make_engine(tmp_path, state_url)
    already = Ticket(key="b-existing", updated_at=T0, subject="s1")
    fakes.put("b", "tickets", already)
    t1 = Ticket(key="t00001", updated_at=T0 + timedelta(seconds=1), subject="s1")
    engine.store.record_intents("p", "b.tickets", [("t00001", fingerprint(t1), t1.model_dump_json())])
    result = await engine.run("p")
    assert result.outcome == "ok"
    assert sorted(t.subject for t in target().values()) == ["s0", "s1", "s2"]
    assert engine.store.intents("p") == []
    assert engine.store.links_for("a.tickets", "b.tickets", ["t00001"])["t00001"].dst_key == "b-existing"


async def test_unordered_source_moves_cursor_only_after_a_complete_pass(tmp_path: Path, state_url: str) -> None:
    seed(300)
    engine = make_engine(tmp_path, state_url, src={"ordered": False})
    stop = asyncio.Event()
    stop.set()  # stop after the first page
    result = await engine.run("p", stop=stop)
    assert result.outcome == "stopped"
    assert engine.store.get_cursor("p") is None
    assert (await engine.run("p")).outcome == "ok"
    assert engine.store.get_cursor("p").key == "t00299"  # type: ignore[union-attr]


async def test_delete_threshold_halts_before_deleting(tmp_path: Path, state_url: str) -> None:
    seed(20)
    engine = make_engine(tmp_path, state_url, pipeline={"deletes": {"enabled": True, "max_share": 0.25}})
    assert (await engine.run("p")).counts["created"] == 20
    for i in range(10):
        fakes.put("a", "tickets", Ticket(key=f"t{i:05d}", updated_at=T0 + timedelta(days=1, seconds=i), deleted=True))
    result = await engine.run("p")
    assert result.outcome == "halted" and "max_share" in (result.message or "")
    assert len(target()) == 20
    assert not [c for c in fakes.CALLS["b"] if c[0] == "delete"]


async def test_deletes_within_the_threshold_are_applied(tmp_path: Path, state_url: str) -> None:
    seed(20)
    engine = make_engine(tmp_path, state_url, pipeline={"deletes": {"enabled": True, "max_share": 0.5}})
    await engine.run("p")
    fakes.put("a", "tickets", Ticket(key="t00000", updated_at=T0 + timedelta(days=1), deleted=True))
    result = await engine.run("p")
    assert result.outcome == "ok" and result.counts["deleted"] == 1
    assert len([t for t in target().values() if not t.deleted]) == 19


async def test_dry_run_reports_the_plan_and_writes_nothing(tmp_path: Path, state_url: str) -> None:
    seed(5)
    engine = make_engine(tmp_path, state_url)
    report = DryRunReport("p")
    result = await engine.run("p", dry_run=True, report=report)
    assert result.outcome == "dry-run" and result.counts["created"] == 5
    assert [(a.action, a.target, a.source) for a in report.actions] == [("create", "b.tickets", "a.tickets")] * 5
    assert sorted(a.key or "" for a in report.actions) == [f"t{i:05d}" for i in range(5)]
    assert target() == {} and engine.store.get_cursor("p") is None and engine.store.runs("p") == []


async def test_a_second_run_of_the_same_pipeline_is_refused_while_one_holds_the_lease(
    tmp_path: Path, state_url: str
) -> None:
    seed(5)
    engine = make_engine(tmp_path, state_url)
    other = StateStore.open(state_url, instance="elsewhere")
    assert other.acquire_lease("p", timedelta(minutes=1))
    result = await engine.run("p")
    assert result.outcome == "busy" and "elsewhere" in (result.message or "")
    assert target() == {}


def test_payloads_in_dead_letters_are_json(tmp_path: Path, state_url: str) -> None:
    seed(2)
    engine = make_engine(tmp_path, state_url, dst={"reject_subjects": ["s0"]})
    asyncio.run(engine.run("p"))
    payload = engine.store.dead_letters("p")[0].payload
    assert orjson.loads(orjson.dumps(payload))["subject"] == "s0"


async def test_an_unexpected_error_in_a_connector_fails_the_run_cleanly(
    tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(3)
    engine = make_engine(tmp_path, state_url)

    async def broken(self: Any, stream: str, record: Any) -> Any:
        raise KeyError("a bug in a connector")

    monkeypatch.setattr(fakes.MemoryConnector, "create", broken)
    result = await engine.run("p")
    assert result.outcome == "failed" and "internal error: KeyError" in (result.message or "")
    assert engine.store.runs("p")[0]["outcome"] == "failed"
    assert engine.store.lease_holder("p") is None
    assert engine.store.get_cursor("p") is None


def _take_over(state_url: str, pipeline: str) -> StateStore:
    """Another instance takes the pipeline over, as it would once this run's lease expired."""
    import sqlalchemy as sa

    from ferryman.state import T_LEASES

    other = StateStore.open(state_url, instance="elsewhere")
    with other.transaction() as conn:
        conn.execute(
            sa.update(T_LEASES)
            .where(T_LEASES.c.pipeline == pipeline)
            .values(holder=other.holder, expires_at=datetime.now(UTC) + timedelta(minutes=5))
        )
    return other


async def test_a_run_whose_lease_moved_commits_nothing_more(tmp_path: Path, state_url: str) -> None:
    seed(300)
    engine = make_engine(tmp_path, state_url)
    pages: list[int] = []

    def progress(n: int, counts: dict[str, int], total: int | None) -> None:
        pages.append(n)
        if len(pages) == 1:  # the run stalls after its first page; meanwhile its lease moves
            _take_over(state_url, "p")

    result = await engine.run("p", progress=progress)
    assert result.outcome == "failed" and "lease passed to elsewhere" in (result.message or "")
    assert pages == [100]
    assert result.counts["created"] == 100  # the refused page's writes are not counted as delivered
    assert engine.store.runs("p")[0]["created"] == 100
    cursor = engine.store.get_cursor("p")
    assert cursor is not None and cursor.key == "t00099"  # the first page's commit, not the second's
    # the second page sends nothing: its first create's intent is refused by the same fence
    assert len(engine.store.intents("p", "b.tickets")) == 0
    assert len([c for c in fakes.CALLS["b"] if c[0] == "create"]) == 100
    assert engine.store.lease_holder("p") is not None  # the new holder's lease is left alone


async def test_a_file_target_is_not_published_past_a_refused_commit(tmp_path: Path, state_url: str) -> None:
    seed(300)
    doc = {
        "state": {"url": state_url},
        "systems": {"a": fakes.options(store="a"), "out": {"connector": "csv", "directory": str(tmp_path / "out")}},
        "pipelines": {"p": {"from": "a.tickets", "to": "out.tickets", "page_size": 100}},
    }
    path = tmp_path / "f.yaml"
    path.write_text(yaml.safe_dump(doc))
    engine = Engine(load_config(path, environ={}), StateStore.open(state_url))
    calls: list[int] = []

    def progress(n: int, counts: dict[str, int], total: int | None) -> None:
        calls.append(n)
        if len(calls) == 1:
            _take_over(state_url, "p")

    result = await engine.run("p", progress=progress)
    await engine.aclose()
    assert result.outcome == "failed"
    assert not (tmp_path / "out" / "tickets.csv").exists()  # nothing published from a refused page

    other_store = StateStore.open(state_url, instance="elsewhere")
    other_store.release_lease("p", holder=_take_over(state_url, "p").holder)
    again = Engine(load_config(path, environ={}), StateStore.open(state_url))
    assert (await again.run("p")).outcome == "ok"
    await again.aclose()
    keys = [line.split(",")[0] for line in (tmp_path / "out" / "tickets.csv").read_text().splitlines()[1:]]
    assert sorted(keys) == [f"t{i:05d}" for i in range(300)]  # every record exactly once


async def test_links_made_by_an_older_fingerprint_version_write_nothing_and_are_refreshed(
    tmp_path: Path, state_url: str
) -> None:
    """After an upgrade that changed the fingerprint algorithm, a full re-read finds every
    record unchanged (compared in its link's version): no write to the target, and each
    link now holds the current version's fingerprint."""
    from ferryman.records import FINGERPRINTS, fingerprint_version
    from ferryman.state import Link

    seed(30)
    engine = make_engine(tmp_path, state_url)
    assert (await engine.run("p")).counts["created"] == 30
    links = engine.store.links_for("a.tickets", "b.tickets", [f"t{i:05d}" for i in range(30)])
    old = [
        Link(k, x.dst_key, FINGERPRINTS[1](fakes.STORES["b"]["tickets"][x.dst_key]), x.dst_fp) for k, x in links.items()
    ]
    engine.store.commit_page(PageCommit("p", links={("a.tickets", "b.tickets"): old}))  # as version 1 left them

    def writes() -> int:
        return sum(1 for op, _, _ in fakes.CALLS.get("b", []) if op in ("create", "update", "delete"))

    before = writes()
    result = await engine.run("p", full=True)
    assert result.outcome == "ok" and result.counts["skipped"] == 30
    assert result.counts["updated"] == result.counts["created"] == 0
    assert writes() == before, "the target was not written"
    after = engine.store.links_for("a.tickets", "b.tickets", list(links))
    assert {fingerprint_version(x.src_fp or "") for x in after.values()} == {2}
