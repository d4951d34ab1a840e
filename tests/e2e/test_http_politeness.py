"""HTTP politeness as a user meets it: ``ferryman sync`` (a process) against a sandbox app.

- limited to L requests per window: with ``rate_limit`` configured a sync needing R > L
  requests gets no 429 at all; without it, every 429 is answered by waiting what
  ``Retry-After`` said, never less;
- a Retry-After longer than ``defer_after`` defers the run: exit 3, cursor unchanged,
  ``ferryman status`` shows until when, and the next run does not even contact the app;
- a key carried in the query string or a header is in nothing a failing run prints.

The sandbox runs in this process (a thread) so its politeness stats can be read directly;
its rate-limit window is shortened from a minute to a few seconds to keep this quick.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml

from ferryman import cli
from ferryman.sandbox import SimulatorThread
from ferryman.state import StateStore
from ferryman.timeutil import parse_datetime, utcnow
from ferryman_connectors.rest.simulator import GenericSimulator
from tests.conftest import ferryman_cmd, run_cli

L = 12  # requests the app admits per window
WINDOW = 6.0  # seconds (a real app's minute, shortened; the client's 1% slack is then 60 ms)
RECORDS, PAGE = 150, 10
R = RECORDS // PAGE  # requests one full sync needs: 15 > L


def write_config(tmp_path: Path, url: str, state_url: str, **system: Any) -> Path:
    """An app (rest, contacts paged 10 at a time) -> CSV pipeline named ``contacts``."""
    app = {
        "connector": "rest",
        "base_url": f"{url}/api",
        "auth": {"type": "header", "name": "X-API-Key", "key": "${APP_KEY}"},
        "streams": {
            "contacts": {
                "record": "contact",
                "path": "/contacts",
                "records_path": "data",
                "pagination": {"style": "page", "size": PAGE, "pages_path": "total_pages"},
                "fields": {"email": "email", "first_name": "first_name", "last_name": "last_name"},
            }
        },
        **system,
    }
    doc = {
        "state": {"url": state_url},
        "log": {"format": "json"},
        "systems": {"app": app, "out": {"connector": "csv", "directory": str(tmp_path / "out")}},
        "pipelines": {"contacts": {"from": "app.contacts", "to": "out.contacts"}},
    }
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def status(config: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> str:
    """What ``ferryman status`` prints (run in this process: it only reads the state database)."""
    capsys.readouterr()
    assert cli.main(["--config", str(config), *args, "status"]) == 0
    out = capsys.readouterr()
    return out.out + out.err


def exported(tmp_path: Path) -> list[dict[str, str]]:
    with (tmp_path / "out" / "contacts.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``cli.main`` configures process-wide logging (handlers, quiet httpx); undo it afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {n: lg.level for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, logger in logging.root.manager.loggerDict.items():
        if isinstance(logger, logging.Logger):
            logger.setLevel(levels.get(name, logging.NOTSET))


@pytest.fixture
def limited() -> Iterator[SimulatorThread]:
    with SimulatorThread(GenericSimulator(records=RECORDS, seed=2, rate_limit=L, window=WINDOW)) as sandbox:
        yield sandbox


# -- rate limits ------------------------------------------------------------------------------------


def test_with_the_rate_limit_configured_a_sync_needing_more_than_the_limit_gets_no_429(
    tmp_path: Path, limited: SimulatorThread, default_state_url: str
) -> None:
    config = write_config(tmp_path, limited.url, default_state_url, rate_limit=f"{L}/{WINDOW:g}s")
    result = run_cli("--config", str(config), "sync", "contacts", env={"APP_KEY": "sandbox-key"})
    assert result.returncode == 0, result.stderr
    stats = limited.simulator.stats.snapshot()
    assert stats["requests"] == R, (stats["by_status"], result.stderr[-3000:])
    assert stats["throttled"] == 0, stats["throttles"]
    assert stats["max_in_window"] <= L
    span = stats["timestamps"][-1] - stats["timestamps"][0]
    assert span >= (R - 1) * WINDOW / L * 0.99, "requests were paced, not merely lucky"
    assert len(exported(tmp_path)) == RECORDS


def test_without_it_every_429_is_answered_by_waiting_what_retry_after_said(
    tmp_path: Path, limited: SimulatorThread, default_state_url: str
) -> None:
    config = write_config(tmp_path, limited.url, default_state_url)
    result = run_cli("--config", str(config), "sync", "contacts", env={"APP_KEY": "sandbox-key"})
    assert result.returncode == 0, result.stderr
    stats = limited.simulator.stats.snapshot()
    assert stats["throttled"] > 0, "the app never said 429: the test proves nothing"
    assert all(t["retry_after"] >= 1 for t in stats["throttles"])
    assert stats["early_retries"] == 0, stats["violations"]
    assert stats["requests"] == R + stats["throttled"]
    assert len(exported(tmp_path)) == RECORDS


def test_a_sync_killed_while_it_waits_out_a_retry_after_comes_back_still_waiting(
    tmp_path: Path, default_state_url: str
) -> None:
    """kill -9 during a Retry-After wait, start again at once: the new process must not call
    before the time the app gave (it is in the state database), and nothing is lost."""
    env = {"APP_KEY": "sandbox-key"}
    with SimulatorThread(GenericSimulator(records=30, seed=4)) as sandbox:
        config = write_config(tmp_path, sandbox.url, default_state_url)
        burst = {"burst": {"count": 1, "status": 429, "retry_after": 4}}
        httpx.post(f"{sandbox.url}/__sandbox/faults", json=burst, timeout=5).raise_for_status()
        sandbox.simulator.stats.reset()
        proc = subprocess.Popen(
            [*ferryman_cmd(), "--config", str(config), "sync", "contacts"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while sandbox.simulator.stats.throttled == 0:
                assert proc.poll() is None and time.monotonic() < deadline, "the app never said 429"
                time.sleep(0.02)
            store, written = StateStore.open(default_state_url), time.monotonic() + 1
            while not blocks(store) and time.monotonic() < written:  # kill once it is there, or after 1 s
                time.sleep(0.02)
        finally:
            proc.kill()
            proc.wait()
        assert sandbox.simulator.stats.throttled == 1

        again = run_cli("--config", str(config), "sync", "contacts", env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        stats = sandbox.simulator.stats.snapshot()
        assert stats["early_retries"] == 0, (stats["violations"], stats["throttles"])
        assert stats["timestamps"][1] - stats["throttles"][0]["t"] >= 3.99
        assert sorted(r["email"] for r in exported(tmp_path)) == sorted({r["email"] for r in exported(tmp_path)}), (
            "a record was written twice"
        )
        assert len(exported(tmp_path)) == 30


def blocks(store: StateStore) -> list[Any]:
    from ferryman.state.budget import T_BUDGETS

    with store.engine.connect() as conn:
        return list(conn.execute(T_BUDGETS.select().where(T_BUDGETS.c.blocked_until.is_not(None))))


# -- a long Retry-After defers the run ------------------------------------------------------------------


def test_a_retry_after_longer_than_defer_after_defers_the_run_and_the_next_one(
    tmp_path: Path, default_state_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"APP_KEY": "sandbox-key"}
    monkeypatch.setenv("APP_KEY", env["APP_KEY"])
    with SimulatorThread(GenericSimulator(records=30, seed=4)) as sandbox:
        config = write_config(tmp_path, sandbox.url, default_state_url, defer_after=60)

        def sync() -> Any:
            return run_cli("--config", str(config), "sync", "contacts", env=env)

        assert sync().returncode == 0
        before = StateStore.open(default_state_url).get_cursor("contacts")
        assert before is not None

        burst = {"burst": {"count": 1, "status": 429, "retry_after": 120}}
        httpx.post(f"{sandbox.url}/__sandbox/faults", json=burst, timeout=5).raise_for_status()
        asked = utcnow()
        deferred = sync()
        assert deferred.returncode == 3, deferred.stdout + deferred.stderr
        assert "deferred" in deferred.stdout
        contacted = sandbox.simulator.stats.requests

        shown = status(config, capsys=capsys)
        # status shows times to the second: "deferred   HOST until 2026-12-06 05:31:21Z (in 1 min): ..."
        match = re.search(r"deferred\s+(\S+) until (\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)Z \(in ", shown)
        assert match, shown
        assert match[1] == sandbox.url.removeprefix("http://")
        until = parse_datetime(f"{match[2]}T{match[3]}Z")
        assert asked + timedelta(seconds=118) <= until <= utcnow() + timedelta(seconds=121)
        store = StateStore.open(default_state_url)
        assert store.get_cursor("contacts") == before, "a deferred run moved the cursor"
        assert store.last_runs()["contacts"]["outcome"] == "deferred"

        again = sync()
        assert again.returncode == 3
        assert "deferred" in again.stdout and f"{match[2]}T{match[3]}" in again.stdout
        assert sandbox.simulator.stats.requests == contacted, "the next run contacted a deferred app"


# -- keys never appear in anything printed --------------------------------------------------------------

KEY = "Zq7-never-print-me-31415"
CARRIAGES = {
    "query": {"type": "query", "param": "api_key", "key": "${APP_KEY}"},
    "header": {"type": "header", "name": "X-API-Key", "key": "${APP_KEY}"},
}


# Every pair of (carriage, failure, log format) is covered by the two runs of the two cases.
@pytest.mark.parametrize(("carriage", "formats"), [("query", ("json", "console")), ("header", ("console", "json"))])
def test_a_key_in_the_query_string_or_a_header_is_in_no_output_of_a_failing_run(
    tmp_path: Path,
    default_state_url: str,
    carriage: str,
    formats: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("APP_KEY", KEY)
    simulator = GenericSimulator(records=20, credentials={"api_key": "some-other-key"})
    with SimulatorThread(simulator) as sandbox:
        config = write_config(
            tmp_path,
            sandbox.url,
            default_state_url,
            auth=CARRIAGES[carriage],
            max_retries=2,
            backoff_base=0.01,
            backoff_cap=0.05,
        )
        printed: list[str] = []

        def sync(fmt: str) -> int:
            result = run_cli(
                "--config", str(config), "--log-level", "debug", "--log-format", fmt, "sync", "contacts",
                env={"APP_KEY": KEY},
            )  # fmt: skip
            printed.extend((result.stdout, result.stderr))
            return result.returncode

        # 401: the app does not know our key.
        assert sync(formats[0]) == 1
        # A 500 storm: the key is right, every answer is a server error, retried and given up.
        sandbox.call(simulator.credentials.__setitem__, "api_key", KEY)
        sandbox.call(simulator.faults.replace, "5xx:1.0")
        assert sync(formats[1]) == 1
        debug = ("--log-level", "debug")
        printed.append(status(config, *debug, capsys=capsys))
        capsys.readouterr()
        assert cli.main(["--config", str(config), *debug, "status", "--json"]) == 0
        printed.append(capsys.readouterr().out)

    everything = "\n".join(printed)
    for form in (KEY, quote(KEY, safe=""), KEY[:12]):
        assert form not in everything
    # The output did hold what could have leaked: debug lines with request URLs, both failures.
    assert "http.response" in everything and "http.retry" in everything
    assert "authentication failed (HTTP 401)" in everything and "HTTP 50" in everything
    [row] = json.loads(printed[-1])  # status --json keeps the failing run's message, URL and all
    assert "HTTP 50" in row["last_run"]["message"]
    if carriage == "query":
        assert "api_key=***" in row["last_run"]["message"]
    assert sandbox.simulator.stats.by_status["401"] >= 1
    assert '"event":"http.response"' in everything and "[debug" in everything, "both log formats were captured"
