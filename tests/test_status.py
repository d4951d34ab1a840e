"""``ferryman status``'s light read path gives exactly the full path's answers, and steps
aside (to the StateStore) whenever it could not."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from ferryman.cli import status_rows
from ferryman.config import load_config
from ferryman.connector import Cursor
from ferryman.errors import ConfigError
from ferryman.state import NewDeadLetter, PageCommit, StateStore, migrations
from ferryman.status import SCHEMA_VERSION, StatusReader
from ferryman.timeutil import utcnow
from tests.conftest import run_cli

T0 = datetime(2026, 3, 1, 8, 30, 15, 250000, tzinfo=UTC)


def write_config(tmp_path: Path, state_url: str, **extra_systems: dict[str, object]) -> Path:
    doc = {
        "state": {"url": state_url},
        "log": {"format": "json"},
        "systems": {
            "inbox": {"connector": "csv", "directory": str(tmp_path / "in")},
            "out": {"connector": "csv", "directory": str(tmp_path / "out")},
            "left": {"connector": "csv", "directory": str(tmp_path / "left")},
            **extra_systems,
        },
        "pipelines": {
            "tickets": {"from": "inbox.tickets", "to": "out.tickets"},
            "contacts": {"from": "inbox.contacts", "to": ["out.contacts", "left.contacts"]},
            "idle": {"from": "inbox.invoices", "to": "out.invoices"},
        },
    }
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def busy_state(url: str) -> StateStore:
    """A state database with something of everything status shows."""
    store = StateStore.open(url)
    run = store.start_run("tickets", "schedule")
    store.commit_page(PageCommit("tickets", cursor=Cursor(T0, "k-17"), run_id=run, counts={"read": 3, "created": 2}))
    store.finish_run(run, "ok")
    failed = store.start_run("tickets")
    store.finish_run(failed, "deferred", "api.example asked us to wait", utcnow() + timedelta(minutes=5))
    store.start_run("contacts")  # still running
    store.add_dead_letters(
        "contacts",
        [
            NewDeadLetter("inbox.contacts", None, "line 4", "bad date", src_key="4"),
            NewDeadLetter("inbox.contacts", "out.contacts", "9", "refused", src_key="9"),
        ],
    )
    store.add_dead_letters("tickets", [NewDeadLetter("inbox.tickets", None, "line 2", "no key")])
    store.set_dead_letter_status([store.dead_letters("tickets")[0].id], "resolved")
    store.set_not_before("api.example:443", utcnow() + timedelta(minutes=5), "429 Retry-After 300")
    store.set_not_before("old.example:443", utcnow() - timedelta(minutes=5), "long ago")
    assert store.acquire_lease("contacts", timedelta(minutes=1))  # held by this (live) process
    return store


def test_the_reader_knows_the_latest_schema() -> None:
    assert SCHEMA_VERSION == migrations.LATEST


def test_light_and_full_paths_give_the_same_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = busy_state(url)
    config = load_config(write_config(tmp_path, url))
    light_config = load_config(write_config(tmp_path, url), systems=False)
    reader = StatusReader.open(url)
    assert reader is not None
    try:
        full = status_rows(config, store)
        light = status_rows(light_config, reader)
    finally:
        reader.close()
    assert light == full
    by_name = {row["pipeline"]: row for row in light}
    assert by_name["tickets"]["cursor"] == "2026-03-01T08:30:15.250000Z k-17"
    assert by_name["tickets"]["last_run"]["outcome"] == "deferred"
    assert by_name["contacts"]["running_on"] and by_name["contacts"]["dead_letters"] == 2
    assert by_name["tickets"]["dead_letters"] == 0 and by_name["idle"]["last_run"] is None
    assert [d["host"] for d in by_name["idle"]["deferred"]] == ["api.example:443"]


def test_two_way_cursors_and_a_dead_holder_read_alike(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = StateStore.open(url)
    store.commit_page(PageCommit("both", cursor=Cursor(T0, "a1")))  # forward side: ignored for two-way
    with store.transaction() as conn:
        store._set_cursor(conn, "both", "a", Cursor(T0, "a1"))
        store._set_cursor(conn, "both", "b", Cursor(T0 + timedelta(seconds=1), "b2"))
    # a lease whose holder has exited (its pid, with another start token) is shown as nobody's
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = store.holder.split("|")
    holder[2], holder[3] = dead.stdout.strip(), "1"
    assert store.acquire_lease("both", timedelta(minutes=1), holder="|".join(holder))
    path = write_config(tmp_path, url)
    doc = yaml.safe_load(path.read_text())
    doc["pipelines"] = {"both": {"from": "inbox.contacts", "to": "out.contacts", "direction": "both"}}
    doc["systems"]["inbox"] = doc["systems"]["out"] = {"connector": "rest", "base_url": "http://127.0.0.1:9"}
    path.write_text(yaml.safe_dump(doc))
    light_config = load_config(path, systems=False)  # rest options incomplete: not looked at
    reader = StatusReader.open(url)
    assert reader is not None
    light = status_rows(light_config, reader)
    reader.close()
    full = status_rows(light_config, store)
    assert light == full
    assert light[0]["cursor"] == "from 2026-03-01T08:30:15.250000Z a1; to 2026-03-01T08:30:16.250000Z b2"
    assert light[0]["running_on"] is None


@pytest.mark.parametrize(
    "what",
    ["postgresql", "memory", "missing", "older schema", "newer schema", "not a state database", "not sqlite"],
)
def test_the_reader_steps_aside(tmp_path: Path, what: str) -> None:
    db = tmp_path / "state.db"
    url = f"sqlite:///{db}"
    if what == "postgresql":
        url = "postgresql://postgres@127.0.0.1:5432/test"
    elif what == "memory":
        url = "sqlite:///:memory:"
    elif what in ("older schema", "newer schema"):
        StateStore.open(url).close()
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE ferryman_schema SET version = ?", (SCHEMA_VERSION + (1 if "newer" in what else -1),))
    elif what == "not a state database":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE notes (x)")
    elif what == "not sqlite":
        db.write_text("these are not the bytes of a database\n" * 100)
    assert StatusReader.open(url) is None


def test_a_config_without_systems_checked_still_checks_the_rest(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    path = write_config(tmp_path, url, broken={"connector": "no-such-connector", "whatever": 1})
    config = load_config(path, systems=False)
    with pytest.raises(RuntimeError, match="systems=False"):
        config.system_options("inbox")
    with pytest.raises(ConfigError, match="no-such-connector"):
        load_config(path)
    doc = yaml.safe_load(path.read_text())
    doc["pipelines"]["tickets"]["from"] = "nowhere.tickets"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"pipelines\.tickets\.from: unknown system 'nowhere'"):
        load_config(path, systems=False)


def test_status_as_a_process_reads_light_and_full_alike(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    busy_state(url).close()
    path = write_config(tmp_path, url)
    light = run_cli("--config", str(path), "status", "--json")
    assert light.returncode == 0, light.stderr
    # a webhook system sends status down the full path (its endpoint state needs its options)
    hooked = write_config(
        tmp_path,
        url,
        hook={"connector": "webhook", "url": "http://127.0.0.1:9/hook", "secret": "${HOOK_SECRET}"},
    )
    doc = yaml.safe_load(hooked.read_text())
    doc["pipelines"]["hooked"] = {"from": "inbox.tickets", "to": "hook.tickets"}
    full_path = tmp_path / "full.yaml"
    full_path.write_text(yaml.safe_dump(doc))
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    full = run_cli("--config", str(full_path), "status", "--json", env={"HOOK_SECRET": secret})
    assert full.returncode == 0, full.stderr
    light_rows = {r["pipeline"]: r for r in json.loads(light.stdout)}
    full_rows = {r["pipeline"]: r for r in json.loads(full.stdout)}
    assert full_rows["hooked"]["webhooks"] and full_rows["hooked"]["webhooks"][0]["system"] == "hook"
    for name in ("tickets", "contacts", "idle"):
        assert light_rows[name] == full_rows[name]
    assert light_rows["contacts"]["running_on"]  # held by this test process, which is alive
