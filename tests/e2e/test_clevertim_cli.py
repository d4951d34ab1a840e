"""Clevertim end to end: ``ferryman sandbox clevertim`` as a process, ``ferryman sync`` as a process.

What a user sees of Clevertim's envelope errors: a 400 becomes a dead letter with
Clevertim's own words and the run goes on; a 501 stops the run saying the operation is
not supported, after exactly one request; 500s on reads are retried until the read is whole.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import run_cli
from tests.e2e.support import csv_rows, sandbox_process, save_config

TOKEN = "sandbox-token"
ENV = {"CLEVERTIM_TOKEN": TOKEN}
UTC_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def write_config(tmp_path: Path, state_url: str, url: str, pipelines: dict[str, Any]) -> Path:
    doc = {
        "state": {"url": state_url},
        "log": {"format": "json", "level": "warning"},
        "systems": {
            "crm": {
                "connector": "clevertim",
                "base_url": url + "/api",
                "api_token": "${CLEVERTIM_TOKEN}",
                "rate_limit": "1200/min",
                "backoff_base": 0.05,
                "backoff_cap": 0.2,
                "max_retries": 8,
            },
            "files": {"connector": "csv", "directory": str(tmp_path / "files")},
            "out": {"connector": "csv", "directory": str(tmp_path / "out")},
        },
        "pipelines": pipelines,
    }
    return save_config(tmp_path, doc)


def api(url: str, path: str, **params: Any) -> Any:
    response = httpx.get(f"{url}/api{path}", params=params, auth=(TOKEN, "X"))
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "OK"
    return body["content"]


def with_email(people: list[Any], email: str) -> list[Any]:
    """Clevertim's list has no filter: the people carrying ``email``, picked here."""
    return [p for p in people if email in p["email"]]


def sync(config: Path, pipeline: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--config", str(config), "sync", pipeline, "--no-progress", env=ENV)


def test_clevertim_contacts_to_csv_retry_500s_on_reads_and_keep_every_email_and_phone(
    tmp_path: Path, default_state_url: str
) -> None:
    with sandbox_process("clevertim", "--records", "30", "--faults", "500:0.3", expect=TOKEN) as url:
        config = write_config(
            tmp_path,
            default_state_url,
            url,
            {"contacts-out": {"from": "crm.contacts", "to": "out.contacts", "page_size": 5}},
        )
        result = sync(config, "contacts-out")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "read 30, created 30" in result.stdout and "dead_lettered 0" in result.stdout
        stats = httpx.get(url + "/__sandbox/stats").json()
        people = {str(p["id"]): p for p in api(url, "/contact")}

    # Clevertim answers the whole list at once (no paging): the read is one request that
    # succeeded once, after Clevertim's 500s were met and retried.
    assert stats["by_status"].get("500", 0) >= 1 and stats["by_status"].get("200") == 1, stats["by_status"]
    contacts = csv_rows(tmp_path / "out" / "contacts.csv")
    assert len(contacts) == 30
    for row in contacts:
        native = people[row["key"]]
        extra = json.loads(row["extra"])
        assert row["email"] == native["email"][0] and extra["email"] == native["email"]
        assert extra["phones"] == native["phones"] and extra["tags"] == native["tags"] and extra["cf"] == native["cf"]
        assert row["updated_at"] == native["lm"] and UTC_Z.match(row["updated_at"]) and UTC_Z.match(row["created_at"])


def test_csv_to_clevertim_dead_letters_a_400_and_stops_on_a_501(tmp_path: Path, default_state_url: str) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "contacts.csv").write_text(
        "key,updated_at,email,first_name,last_name,phone,mobile,city\n"
        "c1,2026-03-01T10:00:00+02:00,lena.berg@example.com,Lena,Berg,+46 8 123 456,,Stockholm\n"
        "c2,2026-03-01T08:30:00Z,not-an-email,Broken,Row,,,\n"
        "c3,2026-03-01T09:00:00+02:00,omar.haddad@example.com,Omar,Haddad,,+44 7700 900123,Leeds\n"
    )
    with sandbox_process("clevertim", "--records", "5", expect=TOKEN) as url:
        config = write_config(
            tmp_path,
            default_state_url,
            url,
            {
                "contacts-in": {"from": "files.contacts", "to": "crm.contacts"},
                "contacts-back": {"from": "crm.contacts", "to": "out.contacts"},
            },
        )
        result = sync(config, "contacts-in")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "created 2" in result.stdout and "dead_lettered 1" in result.stdout
        letters = run_cli("--config", str(config), "dlq", "list", env=ENV).stdout
        assert "c2" in letters and "invalid email address 'not-an-email'" in letters

        [lena] = with_email(api(url, "/contact"), "lena.berg@example.com")
        assert (lena["fn"], lena["ln"], lena["city"]) == ("Lena", "Berg", "Stockholm")
        assert lena["phones"] == [{"type": "Work", "no": "+46 8 123 456"}]
        [omar] = with_email(api(url, "/contact"), "omar.haddad@example.com")
        assert omar["phones"] == [{"type": "Mobile", "no": "+44 7700 900123"}]

        httpx.post(url + "/__sandbox/unsupported", json={"operations": ["POST /contact"]}).raise_for_status()
        with (files / "contacts.csv").open("a") as fh:
            fh.write("c4,2026-03-02T10:00:00+02:00,mei.tanaka@example.com,Mei,Tanaka,,,Osaka\n")
        before = httpx.get(url + "/__sandbox/stats").json()["by_status"].get("501", 0)
        failed = sync(config, "contacts-in")
        after = httpx.get(url + "/__sandbox/stats").json()["by_status"].get("501", 0)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "failed" in failed.stdout and "Clevertim does not support POST /api/contact" in failed.stdout
        assert "not retried" in failed.stdout
        assert after - before == 1  # one POST answered 501, never repeated

        back = sync(config, "contacts-back")
        assert back.returncode == 0, back.stdout + back.stderr

    exported = {r["email"]: r for r in csv_rows(tmp_path / "out" / "contacts.csv")}
    assert len(exported) == 7  # five seeded, two created
    assert "mei.tanaka@example.com" not in exported
    for row in exported.values():
        assert UTC_Z.match(row["updated_at"]) and UTC_Z.match(row["created_at"]), row
