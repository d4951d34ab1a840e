"""Targets keyed by the source key (CSV files) keep slim fingerprint rows, not link rows:
every reader finds them where they are, a pipeline that ran before the change has its links
moved on its next run, and nothing is written twice for it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from ferryman.config import load_config
from ferryman.engine import Engine
from ferryman.state import Link, PageCommit, StateStore

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def engine_for(tmp_path: Path, state_url: str) -> Engine:
    rows = "key,updated_at,subject\n" + "".join(
        f"t{i:03d},{(T0 + timedelta(seconds=i)).isoformat()},s{i}\n" for i in range(50)
    )
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "tickets.csv").write_text(rows)
    doc = {
        "state": {"url": state_url},
        "systems": {
            "inbox": {"connector": "csv", "directory": str(tmp_path / "in")},
            "out": {"connector": "csv", "directory": str(tmp_path / "out")},
        },
        "pipelines": {"p": {"from": "inbox.tickets", "to": "out.tickets"}},
    }
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(doc))
    return Engine(load_config(tmp_path / "f.yaml", environ={}), StateStore.open(state_url))


def rows(store: StateStore, table: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


async def test_a_csv_target_keeps_fingerprints_and_every_reader_finds_them(tmp_path: Path, state_url: str) -> None:
    engine = engine_for(tmp_path, state_url)
    result = await engine.run("p")
    assert result.outcome == "ok" and result.counts["created"] == 50
    store = engine.store
    assert (rows(store, "links"), rows(store, "fingerprints")) == (0, 50)
    link = store.links_for("inbox.tickets", "out.tickets", ["t007"])["t007"]
    assert (link.dst_key, link.src_fp) == ("t007", link.dst_fp) and link.src_fp
    assert store.links_by_dst("inbox.tickets", "out.tickets", ["t007"])["t007"] == link
    assert store.count_links("inbox.tickets", "out.tickets") == 50
    assert store.linked_keys("inbox.tickets", "out.tickets", after="t047") == ["t048", "t049"]
    # a reader in another process (a new store) finds them too
    other = StateStore.open(state_url)
    assert other.links_for("inbox.tickets", "out.tickets", ["t007"])["t007"] == link
    again = await engine.run("p", full=True)
    assert again.counts["skipped"] == 50 and again.counts["created"] == again.counts["updated"] == 0
    store.reset_pipeline("p", [("inbox.tickets", "out.tickets")])
    assert rows(store, "fingerprints") == 0


async def test_links_a_csv_target_had_before_are_moved_on_its_next_run(tmp_path: Path, state_url: str) -> None:
    engine = engine_for(tmp_path, state_url)
    first = await engine.run("p")
    assert first.counts["created"] == 50
    store = engine.store
    # as schema 7 left them: full link rows (and no keyed_targets row)
    links = store.links_for("inbox.tickets", "out.tickets", [f"t{i:03d}" for i in range(50)])
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM fingerprints"))
        conn.execute(sa.text("DELETE FROM keyed_targets"))
    old = StateStore.open(state_url)
    old.commit_page(PageCommit("p", links={("inbox.tickets", "out.tickets"): list(links.values())}))
    assert (rows(old, "links"), rows(old, "fingerprints")) == (50, 0)
    later = Engine(engine.config, old)
    result = await later.run("p", full=True)
    assert result.outcome == "ok" and result.counts["skipped"] == 50, "moved, not lost: nothing written again"
    assert (rows(old, "links"), rows(old, "fingerprints")) == (0, 50)


def test_a_key_of_its_own_in_a_keyed_target_keeps_a_full_link(tmp_path: Path, state_url: str) -> None:
    store = StateStore.open(state_url)
    store.keyed_target("a.t", "out.t")
    store.commit_page(
        PageCommit("p", links={("a.t", "out.t"): [Link("k1", "k1", "f1", "f1"), Link("k2", "other", "f2", "g2")]})
    )
    found = store.links_for("a.t", "out.t", ["k1", "k2"])
    assert found["k1"] == Link("k1", "k1", "f1", "f1")
    assert (rows(store, "links"), rows(store, "fingerprints")) == (1, 1)


def test_a_process_that_only_reads_learns_of_a_pair_made_keyed_elsewhere(
    tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another instance ran the pipeline first and moved its links: an audit here (which
    reads, never registers) finds them after the keyed targets are read again."""
    import ferryman.state as state

    reader, runner = StateStore.open(state_url), StateStore.open(state_url)
    reader.commit_page(PageCommit("p", links={("a.t", "out.t"): [Link("k1", "k1", "f1", "f1")]}))
    assert reader.count_links("a.t", "out.t") == 1  # the keyed targets are read (none yet)
    runner.keyed_target("a.t", "out.t")  # moves the link to a fingerprint row
    assert reader.count_links("a.t", "out.t") == 0, "within KEYED_REFRESH the reader looks in links"
    monkeypatch.setattr(state.links, "KEYED_REFRESH", 0.0)
    assert reader.count_links("a.t", "out.t") == 1
    assert reader.links_for("a.t", "out.t", ["k1"])["k1"] == Link("k1", "k1", "f1", "f1")
