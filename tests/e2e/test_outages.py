"""Outages of the state database, met as an operator meets them: every command exits 75
(EX_TEMPFAIL, "try again later") with one line naming what and where, no traceback and
no password; and a run whose process was killed reads as ``interrupted``, not ``running``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ferryman_cmd, run_cli
from tests.e2e.support import sandbox_process, save_config
from tests.state.test_outage_errors import closed_port

COMMANDS = {
    "sync": ["sync", "p", "--no-progress"],
    "status": ["status"],
    "status --json": ["status", "--json"],
    "check": ["check"],
    "dlq list": ["dlq", "list"],
    "reset": ["reset", "p", "--yes"],
    "run": ["run"],
    "explain": ["explain", "p", "k000001"],
    "conflicts list": ["conflicts", "list"],
}
PASSWORD = "pg-Qm7Zx2Lk9w"


def write_config(tmp_path: Path, state_url: str, *, rows: int = 3) -> Path:
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    lines = ["key,updated_at,email"] + [f"k{i:06d},2026-01-01T00:00:00Z,c{i}@example.com" for i in range(rows)]
    (files / "contacts.csv").write_text("\n".join(lines) + "\n")
    return save_config(
        tmp_path,
        {
            "state": {"url": state_url},
            "log": {"format": "json", "level": "warning"},
            "control": {"listen": f"127.0.0.1:{closed_port()}"},
            "systems": {
                "files": {"connector": "csv", "directory": str(files)},
                "out": {"connector": "csv", "directory": str(tmp_path / "out")},
            },
            "pipelines": {"p": {"from": "files.contacts", "to": "out.contacts", "page_size": 100}},
        },
    )


def assert_outage(result: subprocess.CompletedProcess[str], *words: str) -> None:
    where = f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-3000:]}"
    assert result.returncode == 75, f"exit {result.returncode}, not 75 (EX_TEMPFAIL)\n{where}"
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, where
    lines = [line for line in result.stderr.splitlines() if line.startswith("ferryman:")]
    assert len(lines) == 1, where
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_corrupt_state_database_is_an_outage_for_every_command(tmp_path: Path, command: str) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(os.urandom(16384))
    config = write_config(tmp_path, f"sqlite:///{db}")
    result = run_cli("--config", str(config), *COMMANDS[command], timeout=60)
    assert_outage(result, f"state database sqlite:///{db}", "corrupt")


@pytest.mark.parametrize("command", ["sync", "status", "dlq list", "run"])
def test_a_locked_state_database_is_an_outage_after_the_busy_timeout(tmp_path: Path, command: str) -> None:
    db = tmp_path / "state.db"
    config = write_config(tmp_path, f"sqlite:///{db}?timeout=1")
    assert run_cli("--config", str(config), "sync", "p", "--no-progress").returncode == 0
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    locker.execute("UPDATE ferryman_schema SET version = version")
    try:
        started = time.monotonic()
        result = run_cli("--config", str(config), *COMMANDS[command], timeout=60)
        waited = time.monotonic() - started
    finally:
        locker.close()
    assert_outage(result, f"state database sqlite:///{db}", "locked")
    assert waited < 20, f"{command} waited {waited:.0f}s on a 1 s busy timeout"


@pytest.mark.parametrize("command", ["sync", "status", "check", "dlq list", "run"])
def test_an_unreachable_postgresql_is_an_outage(tmp_path: Path, command: str) -> None:
    port = closed_port()
    config = write_config(tmp_path, f"postgresql://ferry:{PASSWORD}@127.0.0.1:{port}/state")
    result = run_cli("--config", str(config), *COMMANDS[command], timeout=60)
    assert_outage(result, "state database", f"127.0.0.1:{port}", "unreachable")


def test_a_full_disk_under_the_state_database_is_an_outage(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a small tmpfs in a private mount namespace")
    probe = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {probe.stderr.strip()}")
    small = tmp_path / "small"
    small.mkdir()
    config = write_config(tmp_path, f"sqlite:///{small / 'state.db'}", rows=20000)
    # the database lives on a 256 KiB tmpfs that exists only for this one process
    script = f'mount -t tmpfs -o size=256k tmpfs {small} && exec "$@"'
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    result = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", script, "sh", *ferryman_cmd(), "--config", str(config), "sync", "p"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert_outage(result, f"state database sqlite:///{small / 'state.db'}", "full")


def status_of(config: Path, env: dict[str, str]) -> dict[str, Any]:
    result = run_cli("--config", str(config), "status", "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout)
    return dict(rows[0])


def test_a_run_killed_mid_run_reads_interrupted_and_the_next_run_closes_it(tmp_path: Path) -> None:
    env = {"APP_KEY": "sandbox-token"}
    with sandbox_process("cerb", "--records", "30", "--faults", "slow:1.0:delay=1.5") as url:
        db = tmp_path / "state.db"
        config = save_config(
            tmp_path,
            {
                "state": {"url": f"sqlite:///{db}"},
                "log": {"format": "json", "level": "warning"},
                "control": {"listen": f"127.0.0.1:{closed_port()}"},
                "systems": {
                    "app": {"connector": "cerb", "base_url": url + "/rest", "token": "${APP_KEY}"},
                    "out": {"connector": "csv", "directory": str(tmp_path / "out")},
                },
                "pipelines": {"p": {"from": "app.contacts", "to": "out.contacts", "page_size": 5}},
            },
        )
        process = subprocess.Popen(
            [*ferryman_cmd(), "--config", str(config), "sync", "p", "--no-progress"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **env},
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                last = status_of(config, env)["last_run"]
                if last and last["outcome"] == "running":
                    break
                assert process.poll() is None, "the slow sync ended before it could be killed"
                time.sleep(0.2)
            else:
                raise AssertionError("the sync never showed as running")
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        row = status_of(config, env)
        last = row["last_run"]
        assert last["outcome"] == "interrupted", last
        assert last["ended_at"] and last["ended_at"] != "-", last
        assert "stopped" in last["message"], last
        assert row["running_on"] is None
        text = run_cli("--config", str(config), "status", env=env)
        assert "last run   interrupted" in text.stdout, text.stdout

        # the daemon's start closes it in the database (no waiting for the pipeline's next run)
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT outcome FROM runs").fetchall() == [("running",)]
        daemon = subprocess.Popen(
            [*ferryman_cmd(), "--config", str(config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env, "NOTIFY_SOCKET": ""},
        )
        try:
            deadline = time.monotonic() + 30
            stored: list[tuple[str]] = []
            while time.monotonic() < deadline:
                with sqlite3.connect(db) as conn:
                    stored = conn.execute("SELECT outcome FROM runs ORDER BY id").fetchall()
                if stored and stored[0] == ("interrupted",):
                    break
                assert daemon.poll() is None, daemon.communicate()[1]
                time.sleep(0.2)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.communicate(timeout=30)
        assert stored and stored[0] == ("interrupted",), stored
