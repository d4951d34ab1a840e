"""Links are Ferryman's memory of what it created. Losing them (the state database deleted,
a system renamed in the config) must not make a one-way run create every record again in
an app that can find them by natural key: the run looks each one up before creating."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_cli
from tests.e2e.support import sandbox_process, save_config

N = 50
APPS: dict[str, dict[str, Any]] = {
    "clientexec": {
        "system": {"connector": "clientexec", "path": "/api", "api_key": "${APP_KEY}"},
        "env": {"APP_KEY": "sandbox-app-key"},
    },
    "cerb": {
        "system": {"connector": "cerb", "path": "/rest", "token": "${APP_KEY}"},
        "env": {"APP_KEY": "sandbox-token"},
    },
    "clevertim": {
        "system": {"connector": "clevertim", "path": "/api", "api_token": "${APP_KEY}"},
        "env": {"APP_KEY": "sandbox-token"},
    },
}


def app_rows(url: str) -> int:
    return sum(httpx.get(f"{url}/__sandbox/").json()["tables"].values())


def config(tmp_path: Path, state: Path, url: str, app: str, system_name: str = "crm") -> Path:
    system = dict(APPS[app]["system"])
    system["base_url"] = url + system.pop("path")
    system["rate_limit"] = "100000/min"
    return save_config(
        tmp_path,
        {
            "state": {"url": f"sqlite:///{state}"},
            "log": {"format": "json", "level": "warning"},
            "systems": {system_name: system, "files": {"connector": "csv", "directory": str(tmp_path / "files")}},
            "pipelines": {"contacts-in": {"from": "files.contacts", "to": f"{system_name}.contacts"}},
        },
    )


def sync(path: Path, app: str) -> str:
    result = run_cli("--config", str(path), "sync", "contacts-in", "--no-progress", env=APPS[app]["env"])
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("app", sorted(APPS))
def test_a_deleted_state_database_or_a_renamed_system_creates_no_duplicate(tmp_path: Path, app: str) -> None:
    files = tmp_path / "files"
    files.mkdir()
    lines = ["key,updated_at,email,first_name,last_name"]
    lines += [
        f"c{i:03d},2026-03-01T09:{i // 60:02d}:{i % 60:02d}Z,person{i}@lost-state.example,Person,No{i}"
        for i in range(N)
    ]
    (files / "contacts.csv").write_text("\n".join(lines) + "\n")
    state = tmp_path / "state.db"
    with sandbox_process(app, "--records", "5", "--rate-limit", "1000000") as url:
        before = app_rows(url)
        assert "created 50" in sync(config(tmp_path, state, url, app), app)
        assert app_rows(url) == before + N

        for suffix in ("", "-wal", "-shm"):  # the state database is lost
            Path(f"{state}{suffix}").unlink(missing_ok=True)
        again = sync(config(tmp_path, state, url, app), app)
        assert "created 0" in again, again
        assert app_rows(url) == before + N, "records were created again after the state was lost"

        renamed = sync(config(tmp_path, state, url, app, system_name="crm-renamed"), app)
        assert "created 0" in renamed, renamed
        assert app_rows(url) == before + N, "records were created again after the system was renamed"

        # links rebuilt: the next run neither looks up nor writes anything
        assert "created 0, updated 0" in sync(config(tmp_path, state, url, app, system_name="crm-renamed"), app)
