"""``ferryman status``'s light read path gives exactly the full path's answers, and steps
aside (to the StateStore) whenever it could not."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from ferryman import terminal
from ferryman.cli import status_rows
from ferryman.config import load_config
from ferryman.connector import Cursor
from ferryman.errors import ConfigError
from ferryman.state import NewConflict, NewDeadLetter, PageCommit, StateStore, migrations
from ferryman.status import SCHEMA_VERSION, StatusReader, render_status
from ferryman.terminal import Style
from ferryman.timeutil import format_utc, utcnow
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
    entry = NewConflict(
        "out.contacts", "target", "9", "9", "source_wins", "edited there", {"phone": "1"}, {"phone": "2"}
    )
    store.history.add("contacts", None, [], [entry])
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
    assert (by_name["contacts"]["conflicts_open"], by_name["tickets"]["conflicts_open"]) == (1, 0)
    text = "\n".join(render_status(light, now=utcnow()))
    assert "1 overwritten value set(s) kept: `ferryman conflicts list contacts`" in text
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


# -- what status shows: JSON rows and the text made from them ----------------------------------

NOW = datetime(2026, 12, 6, 5, 14, 3, 512345, tzinfo=UTC)
Z_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def _walk(value: object, path: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")
    else:
        yield path, value


def test_json_rows_have_null_for_nothing_and_z_times(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = busy_state(url)
    rows = json.loads(terminal.to_json(status_rows(load_config(write_config(tmp_path, url)), store)))
    by_name = {row["pipeline"]: row for row in rows}
    running = by_name["contacts"]["last_run"]
    assert running["outcome"] == "running" and running["ended_at"] is None and running["not_before"] is None
    assert running["duration_seconds"] is None
    deferred = by_name["tickets"]["last_run"]
    assert deferred["outcome"] == "deferred" and deferred["duration_seconds"] >= 0
    assert by_name["tickets"]["cursors"] == [
        {"side": "forward", "updated_at": "2026-03-01T08:30:15.250000Z", "key": "k-17"}
    ]
    assert by_name["idle"]["cursor"] is None and by_name["idle"]["cursors"] == []
    assert by_name["idle"]["withheld_deletes"] is None and by_name["tickets"]["withheld_deletes"] == 0
    assert by_name["tickets"]["direction"] == "one_way" and by_name["tickets"]["next_run"] is None
    times = 0
    for path, value in _walk(rows):
        assert value != "-", f"{path}: '-' where JSON has null"
        if path.endswith(("_at", "not_before")) and value is not None:
            assert isinstance(value, str) and Z_TIME.match(value), f"{path}: {value!r}"
            times += 1
    assert times >= 6


def test_the_next_run_is_the_slot_the_daemon_computes(tmp_path: Path) -> None:
    from ferryman.daemon._schedule import next_slot

    url = f"sqlite:///{tmp_path / 'state.db'}"
    path = write_config(tmp_path, url)
    doc = yaml.safe_load(path.read_text())
    doc["pipelines"]["tickets"]["schedule"] = {"every": "5m"}
    doc["pipelines"]["contacts"]["schedule"] = {"cron": "0 6 * * *", "timezone": "Europe/Berlin", "jitter": "30s"}
    doc["pipelines"]["idle"].update(schedule={"every": "1m"}, enabled=False)
    path.write_text(yaml.safe_dump(doc))
    config = load_config(path)
    by_name = {row["pipeline"]: row for row in status_rows_at(config, StateStore.open(url), NOW)}
    assert by_name["tickets"]["next_run"] == "2026-12-06T05:15:00Z"
    assert by_name["tickets"]["schedule"] == "every 5m"
    # 06:00 in Berlin is 05:00 UTC in December: today's has passed
    assert by_name["contacts"]["next_run"] == "2026-12-07T05:00:00Z"
    assert by_name["contacts"]["schedule"] == "cron 0 6 * * * (Europe/Berlin), jitter up to 30s"
    schedule = config.pipelines["contacts"].schedule
    assert schedule is not None
    slot = next_slot(schedule, NOW)
    assert slot is not None and format_utc(slot) == by_name["contacts"]["next_run"]
    assert by_name["idle"]["next_run"] is None  # disabled


def status_rows_at(config: object, store: object, now: datetime) -> list[dict[str, object]]:
    from ferryman.status import status_rows as rows_at

    return rows_at(config, store, now=now)  # type: ignore[arg-type]


def _row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "pipeline": "t2c",
        "from": "inbox.tickets",
        "to": ["out.tickets"],
        "direction": "one_way",
        "enabled": True,
        "schedule": "every 5m",
        "next_run": "2026-12-06T05:15:00Z",
        "last_run": {
            "instance": "vm",
            "outcome": "ok",
            "started_at": "2026-12-06T05:10:03.250000Z",
            "ended_at": "2026-12-06T05:11:33.750000Z",
            "duration_seconds": 90.5,
            "read": 120000,
            "created": 100000,
            "updated": 20000,
            "deleted": 0,
            "skipped": 0,
            "dead_lettered": 2,
            "withheld": 7,
            "message": None,
            "not_before": None,
        },
        "cursor": "2026-12-06T05:09:59.999999Z k-17",
        "cursors": [{"side": "forward", "updated_at": "2026-12-06T05:09:59.999999Z", "key": "k-17"}],
        "withheld_deletes": 7,
        "dead_letters": 2,
        "running_on": None,
        "webhooks": [],
        "deferred": [],
    }
    row.update(changes)
    return row


def test_the_text_view_says_when_in_words_and_labels_everything() -> None:
    lines = render_status([_row()], now=NOW)
    assert lines == [
        "t2c  inbox.tickets -> out.tickets",
        "  last run   ok  2026-12-06 05:10:03Z (4 min ago), took 1m 30s, on vm",
        "             read 120,000, created 100,000, updated 20,000, deleted 0, skipped 0, dead-lettered 2",
        "  next run   2026-12-06 05:15:00Z (in 56 s), every 5m",
        "  cursor     updated_at 2026-12-06 05:09:59Z (4 min ago), key k-17",
        "  withheld   7 delete(s) in the last run (deletes.enabled is off: the target still has them)",
        "  dlq        2 open dead letter(s): `ferryman dlq list --pipeline t2c`",
    ]
    assert not any(re.search(r"\d\d:\d\d:\d\d\.\d", line) for line in lines), "no microseconds"


def test_a_two_way_pipeline_shows_both_directions_and_both_cursors() -> None:
    cursors = [
        {"side": "from", "updated_at": "2026-12-06T05:00:00Z", "key": "a1"},
        {"side": "to", "updated_at": "2026-12-06T05:01:00Z", "key": "b2"},
    ]
    lines = render_status(
        [_row(direction="both", to=["crm.contacts"], cursors=cursors, schedule=None, next_run=None)], now=NOW
    )
    assert lines[0] == "t2c  inbox.tickets <-> crm.contacts"
    assert "  cursor     from side: updated_at 2026-12-06 05:00:00Z (14 min ago), key a1" in lines
    assert "  cursor     to side: updated_at 2026-12-06 05:01:00Z (13 min ago), key b2" in lines
    assert "  next run   not scheduled (`ferryman sync` or `ferryman trigger` runs it)" in lines


def test_a_pipeline_never_run_and_disabled_says_so_and_colour_is_optional() -> None:
    plain = render_status([_row(last_run=None, enabled=False, next_run=None, cursors=[], dead_letters=0)], now=NOW)
    assert plain[0] == "t2c  inbox.tickets -> out.tickets  (disabled)"
    assert "  last run   never" in plain and "  next run   none: disabled (enabled: false)" in plain
    assert (
        "  cursor     none yet (the next run reads everything)" in plain and "  dlq        0 open dead letters" in plain
    )
    coloured = render_status([_row(last_run=None, enabled=False, next_run=None)], now=NOW, style=Style(colour=True))
    assert any("\x1b[" in line for line in coloured)
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured[0]) == plain[0]
    assert render_status([], now=NOW) == ["no pipelines configured"]
