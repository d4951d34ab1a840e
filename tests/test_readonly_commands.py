"""Commands that only read need no secrets and change nothing; ``check`` fails fast and
reports every config problem at once. Each test runs ``python -m ferryman`` as a process,
with the secrets' environment variables unset and no credentials directory."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port

SECRET_VARS = ("HELPDESK_KEY", "CREDENTIALS_DIRECTORY")


def ferryman(
    config: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in SECRET_VARS and not k.startswith("FERRYMAN_")}
    full.pop("NOTIFY_SOCKET", None)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ferryman", "--config", str(config), "--log-level", "error", *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=cwd or config.parent,
        timeout=60,
        check=False,
    )


def write_config(tmp_path: Path, port: int) -> Path:
    """A helpdesk app whose key is an environment variable, a control token that is a
    credential, and a CSV drop folder synced to CSV; state under ``var/``."""
    (tmp_path / "drop").mkdir()
    (tmp_path / "drop" / "tickets.csv").write_text(
        "key,updated_at,subject,status\n1,2026-01-01T00:00:00Z,Printer,open\n2,yesterday,Toner,open\n"
    )
    config = {
        "state": {"url": f"sqlite:///{tmp_path / 'var' / 'state.db'}"},
        "control": {"token": "${credential:control-token}"},
        "systems": {
            "helpdesk": {
                "connector": "clientexec",
                "base_url": f"http://127.0.0.1:{port}/api",
                "api_key": "${HELPDESK_KEY}",
            },
            "drop": {"connector": "csv", "directory": str(tmp_path / "drop")},
            "files": {
                "connector": "csv",
                "directory": str(tmp_path / "files"),
                "streams": {"helpdesk_tickets": "ticket", "dropped": "ticket"},
            },
        },
        "pipelines": {
            "helpdesk-to-csv": {"from": "helpdesk.tickets", "to": "files.helpdesk_tickets"},
            "drop-to-csv": {"from": "drop.tickets", "to": "files.dropped"},
        },
    }
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def with_secrets(tmp_path: Path) -> dict[str, str]:
    """The environment a command that writes needs: the key and the credentials directory."""
    creds = tmp_path / "creds"
    creds.mkdir(exist_ok=True)
    (creds / "control-token").write_text("a-control-token\n")
    return {"HELPDESK_KEY": "k", "CREDENTIALS_DIRECTORY": str(creds)}


def test_read_only_commands_need_no_secret_and_create_no_database(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port())

    status = ferryman(config, "status")
    assert status.returncode == 0, status.stderr
    assert "helpdesk-to-csv" in status.stdout and "drop-to-csv" in status.stdout
    assert "never" in status.stdout  # no database: no runs yet, not an error
    as_json = ferryman(config, "status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    dead = ferryman(config, "dlq", "list")
    assert dead.returncode == 0 and "no dead letters" in dead.stdout, dead.stderr
    offline = ferryman(config, "check", "--offline")
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "system helpdesk: ok (not contacted: --offline)" in offline.stdout
    assert "pipeline helpdesk-to-csv: ok" in offline.stdout and "pipeline drop-to-csv: ok" in offline.stdout

    # nothing was created: not the database, not its directory, not the CSV target folder
    assert not (tmp_path / "var").exists() and not (tmp_path / "files").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drop", "ferryman.yaml"]
    # ...and a command that writes still needs its secrets, naming the missing one
    sync = ferryman(config, "sync", "drop-to-csv")
    assert sync.returncode == 78 and "HELPDESK_KEY" in sync.stderr


def test_read_only_commands_read_an_existing_database_without_changing_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port())
    ran = ferryman(config, "sync", "drop-to-csv", "--no-progress", env=with_secrets(tmp_path))
    assert ran.returncode == 0, ran.stdout + ran.stderr  # one row dead-lettered, one delivered
    db = tmp_path / "var" / "state.db"

    def snapshot() -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        with sqlite3.connect(db) as conn:
            runs = conn.execute("SELECT id, pipeline, outcome FROM runs ORDER BY id").fetchall()
            letters = conn.execute("SELECT id, status FROM dead_letters ORDER BY id").fetchall()
        return runs, letters

    before = snapshot()
    assert len(before[0]) == 1 and len(before[1]) == 1
    status = ferryman(config, "status", "--json")  # secrets unset again
    assert status.returncode == 0, status.stderr
    assert '"outcome": "ok"' in status.stdout
    dead = ferryman(config, "dlq", "list")
    assert dead.returncode == 0, dead.stderr
    assert "drop-to-csv" in dead.stdout and "line 3" in dead.stdout
    assert snapshot() == before


def test_check_fails_fast_on_a_refused_connection_and_fails_its_pipelines(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = write_config(tmp_path, port)
    started = time.monotonic()
    check = ferryman(config, "check", env=with_secrets(tmp_path))
    took = time.monotonic() - started
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"system helpdesk: FAILED: connection refused to 127.0.0.1:{port}: is base_url right?" in check.stdout
    # a pipeline of a failed system is never ok; one of healthy systems is
    assert "pipeline helpdesk-to-csv: FAILED: system helpdesk failed its check" in check.stdout
    assert "pipeline drop-to-csv: ok" in check.stdout
    assert "pipeline helpdesk-to-csv: ok" not in check.stdout
    # no retries with back-off against a port that refuses (they took 6 s before)
    assert took < 5, f"check took {took:.1f}s"


def test_check_reports_every_config_problem_at_once_with_did_you_mean(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port())
    data = yaml.safe_load(config.read_text())
    data["pipline"] = {}  # a misspelt top-level key
    data["systems"]["drop"]["connector"] = "cvs"
    data["systems"]["files"]["delimitr"] = ";"
    data["pipelines"]["helpdesk-to-csv"]["from"] = "helpdsk.tickets"
    data["pipelines"]["drop-to-csv"]["shedule"] = {"every": "5m"}
    config.write_text(yaml.safe_dump(data, sort_keys=False))

    check = ferryman(config, "check", "--offline")
    assert check.returncode == 78, check.stdout + check.stderr
    lines = check.stderr.splitlines()
    assert all(line.startswith(f"ferryman: config error: {config}: ") for line in lines), check.stderr
    expected = {
        "pipline: unknown key (did you mean 'pipelines'?)",
        "systems.drop.connector: unknown connector 'cvs'",
        "systems.files.delimitr: unknown key (did you mean 'delimiter'?)",
        "pipelines.helpdesk-to-csv.from: unknown system 'helpdsk' (did you mean 'helpdesk'?)",
        "pipelines.drop-to-csv.shedule: unknown key (did you mean 'schedule'?)",
    }
    for problem in expected:
        assert any(problem in line for line in lines), f"{problem!r} not in:\n{check.stderr}"
    assert any("(did you mean 'csv'?)" in line for line in lines if "'cvs'" in line)
    assert len(lines) == len(expected), check.stderr
    assert not (tmp_path / "var").exists()


def test_an_unknown_pipeline_gets_a_did_you_mean(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port())
    sync = ferryman(config, "sync", "drop-to-cvs", env=with_secrets(tmp_path))
    assert sync.returncode == 78
    assert "no pipeline named 'drop-to-cvs' (did you mean 'drop-to-csv'?)" in sync.stderr


@pytest.mark.parametrize("missing", ["file", "folder"])
def test_an_empty_drop_folder_is_nothing_to_do(tmp_path: Path, missing: str) -> None:
    config = write_config(tmp_path, free_port())
    (tmp_path / "drop" / "tickets.csv").unlink()
    if missing == "folder":
        (tmp_path / "drop").rmdir()
    ran = ferryman(config, "sync", "drop-to-csv", "--no-progress", env=with_secrets(tmp_path))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "ok" in ran.stdout and "read 0" in ran.stdout
