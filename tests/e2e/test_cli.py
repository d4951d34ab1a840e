"""The CLI as a user meets it: exit codes, messages, and nothing secret in any output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from tests.conftest import run_cli


def config(tmp_path: Path, state_url: str, **pipeline: object) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    doc = {
        "state": {"url": state_url},
        "log": {"format": "json"},
        "systems": {
            "inbox": {"connector": "csv", "directory": str(tmp_path / "in")},
            "out": {"connector": "csv", "directory": str(tmp_path / "out")},
        },
        "pipelines": {"t2c": {"from": "inbox.tickets", "to": "out.tickets", **pipeline}},
    }
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_invalid_config_exits_78_naming_file_and_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipelines:\n  p:\n    from: a.tickets\n    to: b.tickets\n    page_size: many\n")
    result = run_cli("--config", str(bad), "check")
    assert result.returncode == 78
    assert str(bad) in result.stderr and "pipelines.p.page_size" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_reference_to_a_stream_that_does_not_exist_is_refused_when_the_config_loads(
    tmp_path: Path, default_state_url: str
) -> None:
    path = config(tmp_path, default_state_url, references={"requester_key": "people"})
    result = run_cli("--config", str(path), "check")
    assert result.returncode == 78, result.stdout + result.stderr
    assert "pipelines.t2c.references.requester_key: system 'inbox' has no stream 'people'" in result.stderr
    path = config(tmp_path, default_state_url, references={"customer_key": "contacts"})
    result = run_cli("--config", str(path), "check")
    assert result.returncode == 78
    assert "pipelines.t2c.references.customer_key: ticket records have no field 'customer_key'" in result.stderr


def test_a_dry_run_prints_the_records_that_would_wait_for_a_reference(tmp_path: Path, default_state_url: str) -> None:
    path = config(tmp_path, default_state_url, references={"requester_key": "contacts"})
    (tmp_path / "in" / "tickets.csv").write_text(
        "key,updated_at,subject,requester_key\n1,2026-01-01T00:00:00Z,one,c7\n2,2026-01-01T00:00:01Z,two,\n"
    )
    result = run_cli("--config", str(path), "sync", "t2c", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "dead-letter inbox.tickets#1 for out.tickets: requester_key 'c7': inbox.contacts#c7 has no linked record "
        "in out.contacts yet" in result.stdout
    )
    assert "create in out.tickets <- inbox.tickets#2" in result.stdout
    assert "plan: would create 1, update 0, delete 0, skip 0, dead-letter 1" in result.stdout
    assert not (tmp_path / "out" / "tickets.csv").exists()


def test_a_csv_target_gets_the_waiting_record_once_with_the_rest_of_a_run(
    tmp_path: Path, default_state_url: str
) -> None:
    """The start-of-run retry writes to the same CSV target as the run's pages: one file,
    every row once, published whole."""
    path = config(tmp_path, default_state_url, references={"requester_key": "contacts"})
    doc = yaml.safe_load(path.read_text())
    doc["pipelines"]["people"] = {"from": "inbox.contacts", "to": "out.contacts"}
    path.write_text(yaml.safe_dump(doc))
    tickets = tmp_path / "in" / "tickets.csv"
    tickets.write_text("key,updated_at,subject,requester_key\n1,2026-01-01T00:00:00Z,one,c7\n")
    first = run_cli("--config", str(path), "sync", "t2c")
    assert first.returncode == 0 and "dead_lettered 1" in first.stdout, first.stdout + first.stderr
    (tmp_path / "in" / "contacts.csv").write_text("key,updated_at,email\nc7,2026-01-01T00:00:00Z,c7@example.org\n")
    assert run_cli("--config", str(path), "sync", "people").returncode == 0
    with tickets.open("a") as fh:
        fh.write("2,2026-01-02T00:00:00Z,two,c7\n")
    second = run_cli("--config", str(path), "sync", "t2c")
    assert second.returncode == 0 and "created 2" in second.stdout, second.stdout + second.stderr
    third = run_cli("--config", str(path), "sync", "t2c")
    assert third.returncode == 0 and "created 0" in third.stdout
    with (tmp_path / "out" / "tickets.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["key"], r["requester_key"]) for r in rows) == [("1", "c7"), ("2", "c7")]
    assert not list((tmp_path / "out").glob("*.partial*"))
    status = json.loads(run_cli("--config", str(path), "status", "--json").stdout)
    assert {row["pipeline"]: row["dead_letters"] for row in status}["t2c"] == 0


def test_check_builds_every_pipeline_and_names_the_mapping_a_run_would_refuse(
    tmp_path: Path, default_state_url: str
) -> None:
    path = config(tmp_path, default_state_url)
    doc = yaml.safe_load(path.read_text())
    doc["pipelines"]["typo"] = {"from": "inbox.contacts", "to": "out.contacts", "mapping": {"emial": "email"}}
    path.write_text(yaml.safe_dump(doc))
    result = run_cli("--config", str(path), "check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pipeline t2c: ok" in result.stdout
    assert "pipeline typo: FAILED: " in result.stdout and "pipelines.typo.mapping.emial" in result.stdout


def test_missing_config_file_exits_78(tmp_path: Path) -> None:
    result = run_cli("--config", str(tmp_path / "nope.yaml"), "status")
    assert result.returncode == 78 and "file not found" in result.stderr


def test_sync_status_and_dlq_through_the_cli(tmp_path: Path, default_state_url: str) -> None:
    path = config(tmp_path, default_state_url)
    (tmp_path / "in" / "tickets.csv").write_text(
        "key,updated_at,subject\n1,2026-01-01T00:00:00Z,one\n2,not-a-date,two\n3,2026-01-01T00:00:02Z,three\n"
    )
    result = run_cli("--config", str(path), "sync", "t2c")
    assert result.returncode == 0, result.stderr
    assert "created 2" in result.stdout and "dead_lettered 1" in result.stdout
    with (tmp_path / "out" / "tickets.csv").open() as fh:
        assert [r["key"] for r in csv.DictReader(fh)] == ["1", "3"]

    status = run_cli("--config", str(path), "status", "--json")
    assert status.returncode == 0
    [row] = json.loads(status.stdout)
    assert row["last_run"]["outcome"] == "ok" and row["dead_letters"] == 1
    assert row["cursor"].startswith("2026-01-01T00:00:02Z")

    listing = run_cli("--config", str(path), "dlq", "list")
    assert "line 3" in listing.stdout and "not-a-date" in listing.stdout

    (tmp_path / "in" / "tickets.csv").write_text(
        "key,updated_at,subject\n1,2026-01-01T00:00:00Z,one\n2,2026-01-01T00:00:01Z,two\n3,2026-01-01T00:00:02Z,three\n"
    )
    replay = run_cli("--config", str(path), "dlq", "replay", "--all")
    assert replay.returncode == 0 and "delivered" in replay.stdout
    with (tmp_path / "out" / "tickets.csv").open() as fh:
        assert sorted(r["key"] for r in csv.DictReader(fh)) == ["1", "2", "3"]
    assert run_cli("--config", str(path), "dlq", "list").stdout.strip() == "no dead letters"


def test_dry_run_writes_nothing(tmp_path: Path, default_state_url: str) -> None:
    path = config(tmp_path, default_state_url)
    (tmp_path / "in" / "tickets.csv").write_text("key,updated_at,subject\n1,2026-01-01T00:00:00Z,one\n")
    result = run_cli("--config", str(path), "sync", "t2c", "--dry-run")
    assert result.returncode == 0
    assert "create in out.tickets <- inbox.tickets#1" in result.stdout
    assert not (tmp_path / "out").exists()


def test_reset_needs_confirmation_off_a_terminal(tmp_path: Path, default_state_url: str) -> None:
    path = config(tmp_path, default_state_url)
    result = run_cli("--config", str(path), "reset", "t2c")
    assert result.returncode == 2 and "--yes" in result.stderr
    assert run_cli("--config", str(path), "reset", "t2c", "--yes").returncode == 0


def test_unknown_pipeline_is_a_config_error(tmp_path: Path, default_state_url: str) -> None:
    path = config(tmp_path, default_state_url)
    result = run_cli("--config", str(path), "sync", "nope")
    assert result.returncode == 78 and "no pipeline named 'nope'" in result.stderr


def test_connectors_lists_builtin_connectors_with_capabilities() -> None:
    result = run_cli("connectors")
    assert result.returncode == 0
    line = next(x for x in result.stdout.splitlines() if x.startswith("csv"))
    assert "tickets" in line and "yes" in line


def test_help_documents_exit_codes() -> None:
    result = run_cli("--help")
    assert result.returncode == 0 and "78" in result.stdout and "exit status" in result.stdout


def test_a_secret_never_appears_in_output_even_on_errors(tmp_path: Path, default_state_url: str) -> None:
    """A secret referenced from the environment, a config error right after it, a state
    database that cannot be opened: the value appears in no output."""
    secret = "sk-live-7f3a9c1e55d2"
    (tmp_path / "in").mkdir()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "state: {url: 'postgresql://u:${DB_PASSWORD}@127.0.0.1:1/x'}\n"
        "systems:\n  inbox: {connector: csv, directory: %s}\n"
        "pipelines:\n  p: {from: inbox.tickets, to: inbox.widgets}\n" % (tmp_path / "in")
    )
    result = run_cli("--config", str(bad), "sync", "p", env={"DB_PASSWORD": secret})
    assert result.returncode == 78
    assert secret not in result.stdout + result.stderr
    bad.write_text(bad.read_text().replace("inbox.widgets", "inbox.contacts"))
    result = run_cli("--config", str(bad), "status", env={"DB_PASSWORD": secret})
    assert result.returncode != 0
    assert secret not in result.stdout + result.stderr
