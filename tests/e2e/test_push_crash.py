"""kill -9 during a push of 400 tickets into the Clientexec sandbox, 20 times.

Clientexec tickets have no natural key and no field for an external id, so a create whose
answer never arrived can only be settled by looking for what was sent. The promise: at
most one record per kill is left *unresolved* (creates go one at a time, each behind its
own intent), and after ``dlq replay --all`` the app holds every ticket exactly once.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_cli
from tests.e2e.support import sandbox_process, save_config, sync_killed_after

KEY = "sandbox-app-key"
ENV = {"CE_KEY": KEY}


def tickets_in_app(url: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for page in range(1, 100):
        response = httpx.get(f"{url}/api/tickets", params={"page": page, "limit": 100}, headers={"X-API-Key": KEY})
        response.raise_for_status()
        batch = response.json()["tickets"]
        found += [t for t in batch if str(t["metadata"]["subject"]).startswith("Crash ticket ")]
        if len(batch) < 100:
            return found
    raise AssertionError("the ticket list did not end")


def app_count(url: str) -> int:
    return int(httpx.get(f"{url}/__sandbox/").json()["tables"]["tickets"])


def unresolved(config: Path) -> list[dict[str, Any]]:
    result = run_cli("--config", str(config), "dlq", "list", "--json", env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    return [x for x in json.loads(result.stdout) if x["kind"] == "unresolved"]


@pytest.mark.slow  # the full size, about 40 s: make test-slow
def test_twenty_kills_during_a_400_ticket_push_then_replay_leave_each_ticket_exactly_once(
    tmp_path: Path, default_state_url: str
) -> None:
    push_with_kills(tmp_path, default_state_url, 400, 20)


def test_six_kills_during_a_120_ticket_push_then_replay_leave_each_ticket_exactly_once(
    tmp_path: Path, default_state_url: str
) -> None:
    push_with_kills(tmp_path, default_state_url, 120, 6)


def push_with_kills(tmp_path: Path, default_state_url: str, N: int, KILLS: int) -> None:
    rng = random.Random(int(os.environ.get("FERRYMAN_CRASH_SEED", "20261206")))
    with sandbox_process("clientexec", "--records", "5", "--rate-limit", "1000000") as url:
        emails = [
            u["email"]
            for u in httpx.get(f"{url}/api/users", params={"limit": 10}, headers={"X-API-Key": KEY}).json()["users"]
        ]
        files = tmp_path / "files"
        files.mkdir()
        lines = ["key,updated_at,subject,description,status,priority,requester_email"]
        for i in range(N):
            lines.append(
                f"t{i:04d},2026-03-01T08:{i // 60 % 60:02d}:{i % 60:02d}Z,Crash ticket {i:04d},"
                f"Body of ticket {i},open,low,{emails[i % len(emails)]}"
            )
        (files / "tickets.csv").write_text("\n".join(lines) + "\n")
        config = save_config(
            tmp_path,
            {
                "state": {"url": default_state_url},
                "log": {"format": "json", "level": "warning"},
                "systems": {
                    "billing": {
                        "connector": "clientexec",
                        "base_url": url + "/api",
                        "api_key": "${CE_KEY}",
                        "rate_limit": "100000/min",
                    },
                    "files": {"connector": "csv", "directory": str(files)},
                },
                "pipelines": {"tickets-in": {"from": "files.tickets", "to": "billing.tickets", "page_size": 50}},
            },
        )
        base = app_count(url)
        kills = 0
        most_unresolved = 0
        while kills < KILLS:
            # kill after a random number of new tickets reached the app: mid-page, mid-write
            if not sync_killed_after(config, "tickets-in", ENV, lambda: app_count(url), rng.randint(3, 14)):
                break  # the push finished before this kill: nothing left to interrupt
            kills += 1
            most_unresolved = max(most_unresolved, len(unresolved(config)))
        assert kills >= KILLS * 3 // 4, f"only {kills} kills landed during the push"

        for _ in range(3):  # finish the push (reconciling the last kill's create first)
            result = run_cli("--config", str(config), "sync", "tickets-in", "--no-progress", env=ENV)
            if result.returncode == 0:
                break
        assert result.returncode == 0, result.stdout + result.stderr
        letters = unresolved(config)
        assert len(letters) <= kills, f"{len(letters)} unresolved after {kills} kills"
        assert most_unresolved <= kills
        print(
            f"push crash: {kills} kills, at most {most_unresolved} unresolved after a kill, {len(letters)} before replay"
        )
        replay = run_cli("--config", str(config), "dlq", "replay", "--all", env=ENV)
        assert replay.returncode == 0 or not letters, replay.stdout + replay.stderr
        assert unresolved(config) == []

        tickets = tickets_in_app(url)
        subjects = [t["metadata"]["subject"] for t in tickets]
        assert len(subjects) == len(set(subjects)), "a ticket was created twice"
        assert len(subjects) == N, f"{N - len(subjects)} tickets missing"
        assert app_count(url) == base + N
