from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from ferryman.connector import Cursor
from ferryman.state import Link, NewDeadLetter, PageCommit, StateStore

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_page_commit_is_all_or_nothing(state_url: str) -> None:
    store = StateStore.open(state_url)
    run = store.start_run("p")
    store.commit_page(
        PageCommit(
            "p",
            cursor=Cursor(T0, "k1"),
            links={("a.t", "b.t"): [Link("k1", "x1", "fp1", "fq1")]},
            checkpoints={"b.t": {"offset": 10}},
            dead_letters=[NewDeadLetter("a.t", None, "line 3", "bad date", src_key="k3")],
            run_id=run,
            counts={"read": 2, "created": 1, "dead_lettered": 1},
        )
    )
    assert store.get_cursor("p") == Cursor(T0, "k1")
    assert store.links_for("a.t", "b.t", ["k1"])["k1"].dst_key == "x1"
    assert store.get_checkpoint("p", "b.t") == {"offset": 10}
    assert [d.ref for d in store.dead_letters("p")] == ["line 3"]
    assert store.get_run(run)["created"] == 1  # type: ignore[index]

    # a commit that fails part-way (here: a NOT NULL violation after links and checkpoint
    # were written) must change nothing at all
    bad = PageCommit("p", cursor=Cursor(T0 + timedelta(hours=1), "k9"), checkpoints={"b.t": {"offset": 99}})
    bad.links[("a.t", "b.t")] = [Link("k9", "x9", "f", "f")]
    bad.dead_letters = [NewDeadLetter("a.t", None, "line 9", None)]  # type: ignore[arg-type]
    with pytest.raises(sa.exc.IntegrityError):
        store.commit_page(bad)
    assert store.get_cursor("p") == Cursor(T0, "k1")
    assert store.links_for("a.t", "b.t", ["k9"]) == {}
    assert store.get_checkpoint("p", "b.t") == {"offset": 10}


def test_timestamps_round_trip_as_aware_utc(state_url: str) -> None:
    store = StateStore.open(state_url)
    store.commit_page(PageCommit("p", cursor=Cursor(datetime(2026, 5, 1, 23, 59, 59, 123456, tzinfo=UTC), "z")))
    cursor = store.get_cursor("p")
    assert cursor is not None and cursor.updated_at.tzinfo is not None
    assert cursor.updated_at == datetime(2026, 5, 1, 23, 59, 59, 123456, tzinfo=UTC)


def test_dead_letters_are_deduplicated_while_open(state_url: str) -> None:
    store = StateStore.open(state_url)
    for reason in ("bad date", "still a bad date"):
        store.add_dead_letters("p", [NewDeadLetter("a.t", None, "line 7", reason, src_key="k7")])
    letters = store.dead_letters("p")
    assert len(letters) == 1 and letters[0].attempts == 2 and letters[0].reason == "still a bad date"
    store.set_dead_letter_status([letters[0].id], "resolved")
    assert store.dead_letters("p") == []


def test_a_live_lease_excludes_other_holders(state_url: str) -> None:
    store = StateStore.open(state_url, instance="one")
    other = StateStore.open(state_url, instance="two")
    assert store.acquire_lease("p", timedelta(seconds=30))
    assert not other.acquire_lease("p", timedelta(seconds=30))
    assert store.acquire_lease("p", timedelta(seconds=30))  # renewal by the holder
    store.release_lease("p")
    assert other.acquire_lease("p", timedelta(seconds=30))
    assert other.lease_holder("p")[0].startswith("two")  # type: ignore[index]


def test_an_expired_lease_can_be_taken_over(state_url: str) -> None:
    store = StateStore.open(state_url, instance="one")
    other = StateStore.open(state_url, instance="two")
    assert store.acquire_lease("p", timedelta(seconds=-1))
    assert other.acquire_lease("p", timedelta(seconds=30))


def test_host_deferral(state_url: str) -> None:
    store = StateStore.open(state_url)
    later = datetime.now(UTC) + timedelta(minutes=5)
    store.set_not_before("api.example:443", later, "Retry-After: 300")
    host, when = store.not_before(["api.example:443", "other"])  # type: ignore[misc]
    assert host == "api.example:443" and abs((when - later).total_seconds()) < 1e-3
    assert store.not_before(["other"]) is None


def test_reset_forgets_cursor_links_and_checkpoints(state_url: str) -> None:
    store = StateStore.open(state_url)
    store.commit_page(
        PageCommit(
            "p",
            cursor=Cursor(T0, "k"),
            links={("a", "b"): [Link("k", "x", "f", "g")]},
            checkpoints={"b": {"state": "published"}},
        )
    )
    store.reset_pipeline("p", [("a", "b")])
    assert store.get_cursor("p") is None
    assert store.links_for("a", "b", ["k"]) == {}
    assert store.get_checkpoint("p", "b") is None


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(state_url: str) -> None:
    import subprocess
    import sys

    store = StateStore.open(state_url)
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead = store.holder.split("|")
    dead[2] = child.stdout.strip()  # a pid that has exited
    assert store.acquire_lease("p", timedelta(minutes=5), holder="|".join(dead))
    assert store.lease_holder("p") is None
    assert store.acquire_lease("p", timedelta(minutes=5))


def test_a_live_process_lease_is_respected(state_url: str) -> None:
    store = StateStore.open(state_url)
    alive = StateStore.open(state_url, instance="other")  # same process: alive by definition
    assert alive.acquire_lease("p", timedelta(minutes=5), holder=alive.holder.replace("other", "x"))
    assert not store.acquire_lease("p", timedelta(minutes=5))


def test_a_commit_is_fenced_by_the_pipelines_lease(state_url: str) -> None:
    from ferryman.errors import LeaseLost

    mine = StateStore.open(state_url)
    other = StateStore.open(state_url, instance="elsewhere")
    mine.commit_page(PageCommit("p", cursor=Cursor(T0, "k1")))  # no lease row: an unleased commit is fine
    assert mine.acquire_lease("p", timedelta(milliseconds=1))
    mine.commit_page(PageCommit("p", cursor=Cursor(T0, "k2")))  # ours, even expired: nobody else took it
    import time

    time.sleep(0.01)
    assert other.acquire_lease("p", timedelta(minutes=1), holder="elsewhere|another-host|1|1")
    with pytest.raises(LeaseLost, match="passed to elsewhere on another-host"):
        mine.commit_page(
            PageCommit(
                "p", cursor=Cursor(T0 + timedelta(hours=1), "k3"), links={("a.t", "b.t"): [Link("k3", "x3", "f", "f")]}
            )
        )
    assert mine.get_cursor("p") == Cursor(T0, "k2")
    assert mine.links_for("a.t", "b.t", ["k3"]) == {}


def test_reads_never_take_or_wait_for_the_sqlite_write_lock(tmp_path: Path) -> None:
    """A run's reads (its links, its cursor) go on while another connection holds the write
    lock: with a busy timeout of 0, a read that asked for the lock would fail at once."""
    import sqlite3

    from ferryman.errors import StateUnavailable
    from ferryman.state.history import NewEvent

    url = f"sqlite:///{tmp_path / 'state.db'}?timeout=0"
    store = StateStore.open(url)
    store.commit_page(
        PageCommit("p", links={("a.t", "b.t"): [Link("k1", "d1", "f", "g")]}, events=[NewEvent("a.t", "k1", "create")])
    )
    writer = sqlite3.connect(str(tmp_path / "state.db"), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        assert store.links_for("a.t", "b.t", ["k1"])["k1"].dst_key == "d1"
        assert store.get_cursor("p") is None
        assert [e.action for e in store.history.events("p", "k1")] == ["create"]
        with pytest.raises(StateUnavailable):  # while a write still needs the lock
            store.commit_page(PageCommit("p", links={("a.t", "b.t"): [Link("k2", "d2", "f", "g")]}))
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        store.close()
