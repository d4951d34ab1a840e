"""``ferryman sync P --dry-run`` as a process: a diff an operator can read (creates, updates
with ``field: 'old' -> 'new'``, deletes held back, a summary by action), the same plan as
one JSON document with ``--json``, two-way plans in words about the sides, and nothing
written: neither the target nor the state database."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import run_cli

HEADER = "key,updated_at,deleted,subject,status\n"


def setup(tmp_path: Path, *, direction: str = "one_way") -> Path:
    """A CSV -> CSV pipeline ``t2c`` synced once (4 tickets), then changed at the source:
    ticket 1 gets a new subject and status, 3 a long new subject, 4 is deleted, 5 is new,
    2 is unchanged, and one row has no valid timestamp."""
    (tmp_path / "in").mkdir()
    doc = {
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "log": {"format": "json"},
        "systems": {
            "inbox": {"connector": "csv", "directory": str(tmp_path / "in")},
            "out": {"connector": "csv", "directory": str(tmp_path / "out")},
        },
        "pipelines": {"t2c": {"from": "inbox.tickets", "to": "out.tickets", "direction": direction}},
    }
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc))
    source = tmp_path / "in" / "tickets.csv"
    source.write_text(
        HEADER
        + "1,2026-01-01T00:00:01Z,false,printer jammed,open\n"
        + "2,2026-01-01T00:00:02Z,false,mouse,open\n"
        + "3,2026-01-01T00:00:03Z,false,screen,open\n"
        + "4,2026-01-01T00:00:04Z,false,keyboard,open\n"
    )
    first = run_cli("--config", str(path), "sync", "t2c")
    assert first.returncode == 0 and "created 4" in first.stdout, first.stdout + first.stderr
    source.write_text(
        HEADER
        + "1,2026-01-02T00:00:01Z,false,printer on fire,closed\n"
        + "2,2026-01-01T00:00:02Z,false,mouse,open\n"
        + f"3,2026-01-02T00:00:03Z,false,{'screen flickers ' * 8},open\n"
        + "4,2026-01-02T00:00:04Z,true,keyboard,open\n"
        + "5,2026-01-02T00:00:05Z,false,new laptop,open\n"
        + "6,yesterday,false,broken,open\n"
    )
    return path


def snapshot(tmp_path: Path) -> dict[str, Any]:
    """Everything a run could write: the files of both folders, byte for byte, and
    every row of every table of the state database."""
    files = {
        f"{p.parent.name}/{p.name}": p.read_bytes() for d in ("in", "out") for p in sorted((tmp_path / d).iterdir())
    }
    with sqlite3.connect(tmp_path / "state.db") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {t: sorted(map(repr, db.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    return {"files": files, "tables": rows}


def test_a_dry_run_prints_a_diff_and_a_summary_and_writes_nothing(tmp_path: Path) -> None:
    path = setup(tmp_path)
    before = snapshot(tmp_path)
    assert before["tables"]["fingerprints"], "the first sync linked the tickets (a CSV target: slim rows)"
    result = run_cli("--config", str(path), "sync", "t2c", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[:9] == [
        "dead-letter inbox.tickets#6: line 7: updated_at: not an ISO 8601 timestamp: 'yesterday'",
        "update in out.tickets#1 <- inbox.tickets#1",
        "    subject: 'printer jammed' -> 'printer on fire'",
        "    status: 'open' -> 'closed'",
        "update in out.tickets#3 <- inbox.tickets#3",
        "    subject: 'screen' -> 'screen flickers screen flickers screen flickers screen flick\u2026'",
        "withhold the delete from out.tickets#4 <- inbox.tickets#4: deletes are not enabled",
        "create in out.tickets <- inbox.tickets#5",
        "plan: would create 1, update 2 (fields: subject 2, status 1), delete 0, skip 1, withhold 1, dead-letter 1",
    ], result.stdout
    assert lines[9].startswith("t2c: dry-run (read 5) in ") and len(lines) == 10, result.stdout
    assert "skip" not in "\n".join(lines[:8])  # unchanged records only with -v
    assert not any(op in result.stdout for op in ("update_a", "update_b", "create_b"))
    assert snapshot(tmp_path) == before  # nothing written: target file and state unchanged

    verbose = run_cli("--config", str(path), "sync", "t2c", "--dry-run", "-v")
    assert "skip inbox.tickets#2 (unchanged in out.tickets#2)" in verbose.stdout.splitlines()
    assert snapshot(tmp_path) == before


def test_the_dry_run_as_json_is_the_same_plan(tmp_path: Path) -> None:
    path = setup(tmp_path)
    before = snapshot(tmp_path)
    result = run_cli("--config", str(path), "sync", "t2c", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)  # one document, nothing else on stdout
    assert doc["pipeline"] == "t2c" and doc["outcome"] == "dry-run"
    by_key = {a["key"]: a for a in doc["actions"]}
    assert {k: a["action"] for k, a in by_key.items()} == {
        "1": "update",
        "3": "update",
        "4": "withhold",
        "5": "create",
        "6": "dead-letter",
    }
    assert by_key["1"]["target"] == "out.tickets" and by_key["1"]["target_key"] == "1"
    assert by_key["1"]["changes"] == {
        "subject": {"old": "printer jammed", "new": "printer on fire"},
        "status": {"old": "open", "new": "closed"},
    }
    assert by_key["3"]["changes"]["subject"]["new"] == "screen flickers " * 8  # whole in JSON
    assert by_key["5"]["changes"] is None and by_key["5"]["target_key"] is None
    summary = doc["summary"]
    assert {k: summary[k] for k in ("create", "update", "delete", "skip", "withhold", "dead-letter")} == {
        "create": 1,
        "update": 2,
        "delete": 0,
        "skip": 1,
        "withhold": 1,
        "dead-letter": 1,
    }
    assert summary["fields"] == {"subject": 2, "status": 1}
    assert snapshot(tmp_path) == before


def test_a_run_with_json_prints_its_result(tmp_path: Path) -> None:
    path = setup(tmp_path)
    result = run_cli("--config", str(path), "sync", "t2c", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["pipeline"] == "t2c" and doc["outcome"] == "ok" and isinstance(doc["run_id"], int)
    assert doc["counts"] == {
        "read": 5,
        "created": 1,
        "updated": 2,
        "deleted": 0,
        "skipped": 1,
        "withheld": 1,
        "dead_lettered": 1,
    }
    assert doc["cursor"] == {"updated_at": "2026-01-02T00:00:05Z", "key": "5"}
    assert doc["not_before"] is None and doc["message"] is None
    with (tmp_path / "out" / "tickets.csv").open() as fh:
        subjects = {r["key"]: r["subject"] for r in csv.DictReader(fh)}
    assert subjects["1"] == "printer on fire" and subjects["5"] == "new laptop"


def test_a_two_way_dry_run_speaks_of_the_from_and_to_sides(tmp_path: Path) -> None:
    path = setup(tmp_path, direction="both")
    # an edit on the to-side too: it goes back to the from-side
    target = tmp_path / "out" / "tickets.csv"
    with target.open() as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        if row["key"] == "2":
            row.update(subject="mouse, edited in out", updated_at="2026-01-03T00:00:00Z")
    with target.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    before = snapshot(tmp_path)
    result = run_cli("--config", str(path), "sync", "t2c", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.splitlines()
    assert "update on the to-side (out.tickets#1) <- inbox.tickets#1" in out
    assert "    subject: 'printer jammed' -> 'printer on fire'" in out
    assert "update on the from-side (inbox.tickets#2) <- out.tickets#2" in out
    assert "    subject: 'mouse' -> 'mouse, edited in out'" in out
    assert "create on the to-side (out.tickets) <- inbox.tickets#5" in out
    assert not any("_a " in line or "_b " in line or "update_" in line for line in out), result.stdout
    assert any(line.startswith("plan: would create 1, update 3 (fields: subject 3, status 1)") for line in out), out
    assert snapshot(tmp_path) == before
