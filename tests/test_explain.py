"""``ferryman explain PIPELINE KEY``: one record's events oldest first, then its links, open
dead letters and journal entries; read-only (no secret needed, no database created).

The state is built through the real :class:`~ferryman.state.StateStore` (``commit_page`` with
events, links, dead letters and journal entries, as a run commits them); the command runs
as a process (``run_cli``), and the store-level lookups on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferryman.config import load_config
from ferryman.explain import explain, render
from ferryman.state import Link, NewDeadLetter, PageCommit, StateStore
from ferryman.state.history import NewConflict, NewEvent
from ferryman.terminal import Style
from tests.conftest import run_cli

SOURCE, TARGET, OTHER = "desk.tickets", "files.tickets", "files.archive"
SECRET_VARS = ("DESK_KEY", "CREDENTIALS_DIRECTORY")


def write_config(tmp_path: Path, state_url: str, *, history: dict[str, Any] | None = None) -> Path:
    """A one-way pipeline from an app whose key is an unset variable (so a command that
    needs secrets fails) to two CSV targets, and a two-way pipeline between two CSV streams."""
    doc: dict[str, Any] = {
        "state": {"url": state_url},
        "log": {"level": "error"},
        "systems": {
            "desk": {"connector": "clientexec", "base_url": "http://127.0.0.1:9/api", "api_key": "${DESK_KEY}"},
            "files": {
                "connector": "csv",
                "directory": str(tmp_path / "files"),
                "streams": {"tickets": "ticket", "archive": "ticket", "left": "contact", "right": "contact"},
            },
        },
        "pipelines": {
            "tickets": {"from": SOURCE, "to": [TARGET, OTHER]},
            "people": {"from": "files.left", "to": "files.right", "direction": "both"},
        },
    }
    if history is not None:
        doc["history"] = history
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(config: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """``ferryman --config CONFIG ARGS`` with the secrets' variables unset."""
    clean = {k: "" for k in SECRET_VARS if k in os.environ}
    return run_cli("--config", str(config), *args, env={**clean, **(env or {})})


def build_history(store: StateStore) -> int:
    """Ticket T1 of pipeline ``tickets``: created in both targets by run 1, updated in one by
    run 2 (which also journalled a hand edit there), rejected by the other in run 3. Ticket T2
    is there too and must not show up. Returns run 2's id."""
    run1 = store.start_run("tickets")
    store.commit_page(
        PageCommit(
            "tickets",
            run_id=run1,
            links={(SOURCE, TARGET): [Link("T1", "r-17", "aaaaaaaa1111", "bbbbbbbb2222")]},
            events=[
                NewEvent(SOURCE, "T1", "create", TARGET, "r-17", "aaaaaaaa1111", None, "created as r-17"),
                NewEvent(SOURCE, "T1", "create", OTHER, "a-5", "aaaaaaaa1111", None, "created as a-5"),
                NewEvent(SOURCE, "T2", "create", TARGET, "r-18", "cccccccc3333", None, "created as r-18"),
            ],
        )
    )
    run2 = store.start_run("tickets")
    store.commit_page(
        PageCommit(
            "tickets",
            run_id=run2,
            links={(SOURCE, OTHER): [Link("T1", "a-5", "dddddddd4444", "eeeeeeee5555")]},
            events=[NewEvent(SOURCE, "T1", "update", OTHER, "a-5", "dddddddd4444", ("subject", "status"), None)],
            conflicts=[
                NewConflict(
                    OTHER,
                    "target",
                    "a-5",
                    "T1",
                    "source_wins",
                    "files.archive#a-5 was edited there since the last sync",
                    {"subject": "Printer on fire"},
                    {"subject": "Printer"},
                )
            ],
        )
    )
    run3 = store.start_run("tickets")
    store.commit_page(
        PageCommit(
            "tickets",
            run_id=run3,
            dead_letters=[NewDeadLetter(SOURCE, TARGET, "T1", "subject is too long", src_key="T1")],
            events=[NewEvent(SOURCE, "T1", "dead-letter", TARGET, "r-17", "ffffffff6666", None, "subject is too long")],
        )
    )
    return run2


# -- the lookups, on both backends ----------------------------------------------------------------


def test_the_record_is_found_by_its_source_key_and_by_a_key_it_has_in_a_target(tmp_path: Path, state_url: str) -> None:
    config = load_config(write_config(tmp_path, state_url), systems=False, secrets=False)
    store = StateStore.open(state_url)
    try:
        build_history(store)
        pipeline = config.pipeline("tickets")
        by_source = explain(store, "tickets", pipeline, "T1", limit=100)
        by_target = explain(store, "tickets", pipeline, "a-5", limit=100)
        other = explain(store, "tickets", pipeline, "T2", limit=100)
    finally:
        store.close()
    for found in (by_source, by_target):
        assert [(e.action, e.target, e.target_key) for e in found.events] == [
            ("create", TARGET, "r-17"),
            ("create", OTHER, "a-5"),
            ("update", OTHER, "a-5"),
            ("dead-letter", TARGET, "r-17"),
        ]
        assert {e.src_key for e in found.events} == {"T1"}  # T2 stays out
        assert [(x["dst"], x["src_key"], x["dst_key"]) for x in found.links] == [
            (TARGET, "T1", "r-17"),
            (OTHER, "T1", "a-5"),
        ]
        assert [x.reason for x in found.dead_letters] == ["subject is too long"]
        assert [(c.record_key, c.lost) for c in found.conflicts] == [("a-5", {"subject": "Printer on fire"})]
    assert [e.target_key for e in other.events] == ["r-18"] and not other.links and not other.conflicts


def test_limit_keeps_the_newest_events_oldest_first(tmp_path: Path, state_url: str) -> None:
    store = StateStore.open(state_url)
    try:
        build_history(store)
        config = load_config(write_config(tmp_path, state_url), systems=False, secrets=False)
        found = explain(store, "tickets", config.pipeline("tickets"), "T1", limit=2)
        exactly = explain(store, "tickets", config.pipeline("tickets"), "T1", limit=4)
    finally:
        store.close()
    assert [e.action for e in found.events] == ["update", "dead-letter"] and found.limited
    assert len(exactly.events) == 4 and not exactly.limited  # all of them: nothing more to show


def test_a_two_way_record_shows_its_one_link_between_the_sides(tmp_path: Path, state_url: str) -> None:
    store = StateStore.open(state_url)
    try:
        store.commit_page(
            PageCommit(
                "people",
                links={("files.left", "files.right"): [Link("L1", "R9", "1" * 16, "2" * 16)]},
                events=[NewEvent("files.left", "L1", "link", "files.right", "R9", "1" * 16, None, "both sides agreed")],
            )
        )
        config = load_config(write_config(tmp_path, state_url), systems=False, secrets=False)
        found = explain(store, "people", config.pipeline("people"), "R9", limit=10)
    finally:
        store.close()
    assert [(x["src"], x["dst"], x["src_key"], x["dst_key"]) for x in found.links] == [
        ("files.left", "files.right", "L1", "R9")
    ]
    assert [e.action for e in found.events] == ["link"]
    lines = render(found, config, style=Style(colour=True))
    assert any("\x1b[" in line for line in lines)  # coloured when asked to be
    assert not any("\x1b[" in line for line in render(found, config, style=Style(colour=False)))


# -- the command, as a process ----------------------------------------------------------------------


def test_explain_prints_the_history_oldest_first_then_where_the_record_stands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    config = write_config(tmp_path, url)
    store = StateStore.open(url)
    try:
        run2 = build_history(store)
    finally:
        store.close()

    result = cli(config, "explain", "tickets", "T1", env={"NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out
    assert out.splitlines()[0] == f"tickets  {SOURCE} -> {TARGET}, {OTHER}  key T1"
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"
    events = [line for line in out.splitlines() if re.match(rf"  {stamp}  ", line)]
    assert len(events) == 4, out
    assert re.search(rf"{stamp}  run {run2}\s+update\s+{OTHER}#a-5\s+fp dddddddd  fields: subject, status", out)
    assert "fp aaaaaaaa" in events[0] and "created as r-17" in events[0] and f"{TARGET}#r-17" in events[0]
    assert "dead-letter" in events[3] and "- subject is too long" in events[3]
    assert "aaaaaaaa1111" not in out  # fingerprints cut to 8 hex digits
    now = out[out.index("now:") :]
    assert f"link        {SOURCE}#T1 -> {TARGET}#r-17 (fp aaaaaaaa read, bbbbbbbb written" in now
    assert f"{SOURCE}#T1 -> {OTHER}#a-5" in now
    assert "dead letter #1 [rejected] files.tickets: subject is too long (seen 1x" in now
    assert "journal     #1 " in now and f"{OTHER}#a-5 (target), source_wins" in now
    assert "lost subject; open: `ferryman conflicts restore 1`" in now
    # by the key it has in a target: the same history
    by_target = cli(config, "explain", "tickets", "r-17")
    assert by_target.returncode == 0, by_target.stderr
    assert len([line for line in by_target.stdout.splitlines() if re.match(rf"  {stamp}  ", line)]) == 4
    assert by_target.stdout.splitlines()[0].endswith("key r-17 (source key T1)")


def test_explain_json_is_one_document(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    config = write_config(tmp_path, url)
    store = StateStore.open(url)
    try:
        build_history(store)
    finally:
        store.close()
    result = cli(config, "explain", "tickets", "T1", "--json", "--limit", "3")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"pipeline", "key", "events", "links", "dead_letters", "conflicts"}
    assert (doc["pipeline"], doc["key"]) == ("tickets", "T1")
    assert [e["action"] for e in doc["events"]] == ["create", "update", "dead-letter"]  # the newest 3
    update = doc["events"][1]
    assert update["fields"] == ["subject", "status"] and update["target_key"] == "a-5"
    assert update["at"].endswith("Z") and update["fingerprint"] == "dddddddd4444"
    assert [(x["dst"], x["dst_key"], x["dst_fp"]) for x in doc["links"]] == [
        (TARGET, "r-17", "bbbbbbbb2222"),
        (OTHER, "a-5", "eeeeeeee5555"),
    ]
    assert doc["links"][0]["window_start"] is None
    [letter] = doc["dead_letters"]
    assert letter["reason"] == "subject is too long" and "payload" not in letter
    [entry] = doc["conflicts"]
    assert entry["lost"] == {"subject": "Printer on fire"} and entry["status"] == "open"


def test_an_unknown_pipeline_is_a_config_error_with_did_you_mean(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'var' / 'state.db'}")
    result = cli(config, "explain", "tickts", "T1")
    assert result.returncode == 78, result.stdout + result.stderr
    assert "no pipeline named 'tickts' (did you mean 'tickets'?)" in result.stderr
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize("events", ["changes", "off"])
def test_no_history_says_so_and_names_the_settings_without_creating_a_database(tmp_path: Path, events: str) -> None:
    config = write_config(
        tmp_path, f"sqlite:///{tmp_path / 'var' / 'state.db'}", history={"events": events, "retention": "14d"}
    )
    result = cli(config, "explain", "tickets", "T404")
    assert result.returncode == 0, result.stderr  # no DESK_KEY: a read needs no secret
    assert "no history and no link for key 'T404' in pipeline tickets" in result.stdout
    assert f"history.events is '{events}'" in result.stdout
    assert "'off' records nothing, 'changes' does not record unchanged skips" in result.stdout
    assert "history.retention is 14d" in result.stdout
    assert "dead letter none open" in " ".join(result.stdout.split())
    assert not (tmp_path / "var").exists()
    as_json = cli(config, "explain", "tickets", "T404", "--json")
    assert json.loads(as_json.stdout) == {
        "pipeline": "tickets",
        "key": "T404",
        "events": [],
        "links": [],
        "dead_letters": [],
        "conflicts": [],
    }


def test_explain_runs_as_a_module_with_the_same_exit_codes(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'state.db'}")
    result = subprocess.run(
        [sys.executable, "-m", "ferryman.explain", "--config", str(config), "nope", "T1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78 and "no pipeline named 'nope'" in result.stderr
