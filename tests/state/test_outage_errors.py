"""A state database that is corrupt, locked, full or unreachable is an outage, not a bug:
the store raises :class:`~ferryman.errors.StateUnavailable` (exit 75) naming what and
where, with the URL's password hidden. A run whose process is gone reads as
``interrupted``, never ``running`` for good, and is closed by the next run."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ferryman.connector import Cursor
from ferryman.errors import StateError, StateUnavailable
from ferryman.state import Link, PageCommit, StateStore
from ferryman.status import StatusReader
from ferryman.timeutil import utcnow


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def elsewhere(store: StateStore) -> str:
    """This process's holder, as if it ran on another host (whose liveness cannot be seen)."""
    parts = store.holder.split("|")
    parts[1] = "another-host"
    return "|".join(parts)


def dead_holder(store: StateStore) -> str:
    """A lease holder naming a process of this host that has exited."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    parts = store.holder.split("|")
    parts[2], parts[3] = gone.stdout.strip(), "1"
    return "|".join(parts)


def test_a_corrupt_database_is_an_outage_naming_the_file(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(b"these are not the bytes of a database\n" * 200)
    with pytest.raises(StateUnavailable) as caught:
        StateStore.open(f"sqlite:///{db}")
    assert f"state database sqlite:///{db}:" in str(caught.value)
    assert "corrupt" in str(caught.value) and "not a database" in str(caught.value)
    assert caught.value.exit_code == 75 and isinstance(caught.value, StateError)
    assert "\n" not in str(caught.value)


def test_a_locked_database_is_an_outage_after_the_busy_timeout_of_the_url(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    StateStore.open(f"sqlite:///{db}").close()
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    locker.execute("UPDATE ferryman_schema SET version = version")
    try:
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match="locked") as caught:
            StateStore.open(f"sqlite:///{db}?timeout=0.5")
        waited = time.monotonic() - started
    finally:
        locker.close()
    assert waited < 10, f"waited {waited:.1f}s: the URL's timeout=0.5 was not the busy timeout"
    assert f"state database sqlite:///{db}?timeout=0.5:" in str(caught.value)


def test_a_full_disk_is_an_outage(tmp_path: Path) -> None:
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    store.close()

    @sa.event.listens_for(store.engine, "connect")
    def _cap(dbapi_conn: Any, _record: Any) -> None:
        # SQLite's stand-in for a full disk: the file may not grow past its present size
        pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
        dbapi_conn.execute(f"PRAGMA max_page_count={pages}")

    links = [Link(f"k{i:06d}", f"d{i:06d}", "f" * 40, "g" * 40) for i in range(20000)]
    with pytest.raises(StateUnavailable, match="full"):
        store.commit_page(PageCommit("p", cursor=Cursor(utcnow(), "k"), links={("a.x", "b.x"): links}))


def test_an_unreachable_postgresql_is_an_outage_with_the_password_hidden() -> None:
    pytest.importorskip("psycopg")
    port = closed_port()
    password = "pw-Zq81kLmV"
    with pytest.raises(StateUnavailable) as caught:
        StateStore.open(f"postgresql://ferry:{password}@127.0.0.1:{port}/state")
    text = str(caught.value)
    assert f"127.0.0.1:{port}" in text and "unreachable" in text
    assert password not in text and "\n" not in text


def test_errors_that_are_not_outages_stay_what_they_are(tmp_path: Path) -> None:
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    with pytest.raises(sa.exc.OperationalError), store.transaction() as conn:
        conn.exec_driver_sql("SELECT * FROM no_such_table")  # a bug in our SQL, not an outage
    assert store.acquire_lease("p", timedelta(minutes=1))  # the insert race still sees IntegrityError


def test_a_run_whose_holder_died_reads_as_interrupted_in_both_readers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = StateStore.open(url)
    assert store.acquire_lease("gone", timedelta(minutes=5), holder=dead_holder(store))
    store.start_run("gone")
    committed = utcnow()
    with store.transaction() as conn:  # the page it committed before it died: its last sign of life
        store._set_cursor(conn, "gone", "forward", Cursor(committed, "k1"))
    assert store.acquire_lease("expired", timedelta(seconds=1), holder=elsewhere(store))
    store.start_run("expired")
    assert store.acquire_lease("slow page", timedelta(seconds=1))  # this live process, its lease run out
    store.start_run("slow page")
    assert store.acquire_lease("live", timedelta(minutes=5))
    store.start_run("live")
    store.start_run("unleased")  # a lease already released, or never recorded
    time.sleep(1.1)
    reader = StatusReader.open(url)
    assert reader is not None
    try:
        light = reader.last_runs()
    finally:
        reader.close()
    full = store.last_runs()
    assert light == full
    outcomes = {name: row["outcome"] for name, row in full.items()}
    assert outcomes == {
        "gone": "interrupted",
        "expired": "interrupted",
        "live": "running",
        "slow page": "running",
        "unleased": "interrupted",
    }
    for name in ("gone", "expired", "unleased"):
        assert full[name]["ended_at"] is not None, name
        assert "stopped" in full[name]["message"], name
    assert "is no longer running" in full["gone"]["message"] and "lease expired at" in full["expired"]["message"]
    assert full["gone"]["ended_at"] >= committed > full["gone"]["started_at"]
    assert full["live"]["ended_at"] is None


def test_the_next_run_and_a_daemon_start_close_interrupted_runs(tmp_path: Path) -> None:
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    first = store.start_run("p")
    store.release_lease("p")
    assert store.acquire_lease("p", timedelta(minutes=1))
    second = store.start_run("p")
    stored = {run["id"]: run for run in store.runs("p")}
    assert stored[first]["outcome"] == "interrupted" and stored[first]["ended_at"] is not None
    assert stored[second]["outcome"] == "running"

    assert store.acquire_lease("q", timedelta(minutes=5), holder=dead_holder(store))
    orphan = store.start_run("q")
    assert store.close_interrupted_runs() == 1  # q's; p's run holds a live lease
    assert store.get_run(orphan)["outcome"] == "interrupted"  # type: ignore[index]
    assert store.get_run(second)["outcome"] == "running"  # type: ignore[index]
