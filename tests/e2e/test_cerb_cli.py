"""Cerb end to end: ``ferryman sandbox cerb`` as a process, ``ferryman sync`` against it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferryman.timeutil import parse_datetime
from tests.conftest import free_port, run_cli
from tests.e2e.support import csv_rows, sandbox_process, save_config

TOKEN = "sandbox-token"
ENV = {"CERB_TOKEN": TOKEN, "CERB_SECRET": "sandbox-secret", "CERB_BAD_TOKEN": "intruder-7f3a9c1e55d2"}


@pytest.fixture(scope="module")
def cerb_url() -> Iterator[str]:
    """``ferryman sandbox cerb`` on a free port, for the whole module."""
    with sandbox_process(
        "cerb", "--records", "40", "--seed", "4", port=free_port(), expect=f"bearer token: {TOKEN}"
    ) as url:
        yield url


def _api(url: str) -> httpx.Client:
    return httpx.Client(base_url=url + "/rest", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)


def _search(url: str, kind: str, q: str = "") -> list[dict[str, Any]]:
    with _api(url) as client:
        body = client.get(f"/records/{kind}/search.json", params={"q": q, "limit": 500}).json()
    assert body["__status"] == "success", body
    return list(body["results"])


def _config(tmp_path: Path, state_url: str, url: str) -> Path:
    rest = url + "/rest"
    fast = {"backoff_base": 0.05, "backoff_cap": 0.1, "max_retries": 1}
    doc = {
        "state": {"url": state_url},
        "log": {"format": "json"},
        "systems": {
            "helpdesk": {"connector": "cerb", "base_url": rest, "token": "${CERB_TOKEN}", **fast},
            "signed": {
                "connector": "cerb",
                "base_url": rest,
                "auth": "cerb_auth",
                "access_key": "sandbox-access",
                "secret_key": "${CERB_SECRET}",
            },
            "intruder": {"connector": "cerb", "base_url": rest, "token": "${CERB_BAD_TOKEN}"},
            "exports": {"connector": "csv", "directory": str(tmp_path / "out")},
            "inbox": {"connector": "csv", "directory": str(tmp_path / "in")},
        },
        "pipelines": {
            "tickets-to-csv": {"from": "helpdesk.tickets", "to": "exports.tickets", "page_size": 15},
            "contacts-from-csv": {"from": "inbox.contacts", "to": "helpdesk.contacts"},
            "contacts-to-csv": {"from": "signed.contacts", "to": "exports.contacts"},
            "orgs-to-csv": {"from": "intruder.organisations", "to": "exports.organisations"},
            "orgs-from-csv": {"from": "inbox.organisations", "to": "signed.organisations"},
            "people-from-csv": {
                "from": "inbox.contacts",
                "to": "signed.contacts",
                "references": {"organisation_key": "organisations"},
            },
        },
    }
    return save_config(tmp_path, doc)


def _sync(config: Path, pipeline: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--config", str(config), "sync", pipeline, env=ENV)


def test_tickets_flow_to_csv_and_a_later_edit_in_cerb_follows(
    tmp_path: Path, default_state_url: str, cerb_url: str
) -> None:
    config = _config(tmp_path, default_state_url, cerb_url)
    first = _sync(config, "tickets-to-csv")
    assert first.returncode == 0, first.stdout + first.stderr
    live = [t for t in _search(cerb_url, "ticket") if t["status"] != "deleted"]
    rows = csv_rows(tmp_path / "out" / "tickets.csv")
    assert sorted(r["key"] for r in rows) == sorted(str(t["id"]) for t in live)
    by_key = {r["key"]: r for r in rows}
    for ticket in live:
        row = by_key[str(ticket["id"])]
        assert row["updated_at"].endswith("Z") and parse_datetime(row["updated_at"]).timestamp() == ticket["updated"]
        assert row["status"] == {"waiting": "pending"}.get(ticket["status"], ticket["status"])
    assert all(r["created_at"].endswith("Z") for r in rows)

    target = live[0]
    with _api(cerb_url) as client:
        # A records-API PUT does not move a ticket's `updated` in Cerb 10.4 unless it says so.
        edit = client.put(
            f"/records/ticket/{target['id']}.json",
            data={"fields[subject]": "Edited in Cerb", "fields[updated]": str(int(time.time()))},
        )
    assert edit.json()["__status"] == "success"
    second = _sync(config, "tickets-to-csv")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "created 0, updated 1" in second.stdout
    assert {r["key"]: r for r in csv_rows(tmp_path / "out" / "tickets.csv")}[str(target["id"])][
        "subject"
    ] == "Edited in Cerb"


def test_contacts_from_csv_dead_letter_what_cerb_refuses_and_times_stay_utc(
    tmp_path: Path, default_state_url: str, cerb_url: str
) -> None:
    config = _config(tmp_path, default_state_url, cerb_url)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "contacts.csv").write_text(
        "key,updated_at,email,first_name,last_name,created_at\n"
        "c1,2024-03-01T12:00:00+02:00,ines.ferreira@example.org,Inês,Ferreira,2024-03-01T12:00:00+02:00\n"
        "c2,2024-03-02T08:00:00Z,bo.nilsson@example.org,Bo,Nilsson,\n"
        "c3,2024-03-03T08:00:00Z,nameless@example.org,,Nobody,\n",
        encoding="utf-8",
    )
    result = _sync(config, "contacts-from-csv")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "created 2" in result.stdout and "dead_lettered 1" in result.stdout
    letters = run_cli("--config", str(config), "dlq", "list", env=ENV)
    assert "The 'first_name' field is required." in letters.stdout

    # Cerb 10.4 refuses a contact's created_at ("'created_at' is not an editable field."), so
    # none is sent and none comes back; the exact address filter finds the new contact.
    [ines] = _search(cerb_url, "contact", 'email:(email:"ines.ferreira@example.org")')
    assert ines["first_name"] == "Inês" and "created_at" not in ines
    assert not _search(cerb_url, "contact", 'email:(email:"nameless@example.org")')

    # Back out through the legacy signed header: times come out as UTC with Z.
    back = _sync(config, "contacts-to-csv")
    assert back.returncode == 0, back.stdout + back.stderr
    row = next(r for r in csv_rows(tmp_path / "out" / "contacts.csv") if r["email"] == "ines.ferreira@example.org")
    assert row["updated_at"].endswith("Z") and parse_datetime(row["updated_at"]).tzinfo is not None
    assert "sandbox-secret" not in back.stdout + back.stderr


def test_contacts_reach_cerb_pointing_at_cerbs_own_org_ids(
    tmp_path: Path, default_state_url: str, cerb_url: str
) -> None:
    """The CSV says a contact belongs to organisation "o1"; Cerb only knows its own org ids.
    Contacts whose organisation is not in Cerb yet wait in the dead-letter table and go, with
    Cerb's id, at the start of the first run after their organisation was synced."""
    config = _config(tmp_path, default_state_url, cerb_url)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "organisations.csv").write_text(
        "key,updated_at,name\no1,2024-03-01T08:00:00Z,Refs Acme Ltd\no2,2024-03-01T08:00:00Z,Refs Globex\n",
        encoding="utf-8",
    )
    (tmp_path / "in" / "contacts.csv").write_text(
        "key,updated_at,email,first_name,last_name,organisation_key\n"
        "p1,2024-03-02T08:00:00Z,refs.ann@example.org,Ann,Acme,o1\n"
        "p2,2024-03-02T08:00:00Z,refs.gil@example.org,Gil,Globex,o2\n"
        "p3,2024-03-02T08:00:00Z,refs.ivy@example.org,Ivy,Initech,o3\n",
        encoding="utf-8",
    )
    early = _sync(config, "people-from-csv")
    assert early.returncode == 0, early.stdout + early.stderr
    assert "created 0" in early.stdout and "dead_lettered 3" in early.stdout
    assert not _search(cerb_url, "contact", 'email:(email:"refs.ann@example.org")')

    orgs = _sync(config, "orgs-from-csv")
    assert orgs.returncode == 0 and "created 2" in orgs.stdout, orgs.stdout + orgs.stderr
    org_ids = {o["name"]: o["id"] for o in _search(cerb_url, "org") if o["name"].startswith("Refs ")}
    assert set(org_ids) == {"Refs Acme Ltd", "Refs Globex"}

    later = _sync(config, "people-from-csv")
    assert later.returncode == 0, later.stdout + later.stderr
    assert "created 2" in later.stdout, later.stdout
    [ann] = _search(cerb_url, "contact", 'email:(email:"refs.ann@example.org")')
    [gil] = _search(cerb_url, "contact", 'email:(email:"refs.gil@example.org")')
    assert (ann["org_id"], gil["org_id"]) == (org_ids["Refs Acme Ltd"], org_ids["Refs Globex"])
    waiting = run_cli("--config", str(config), "dlq", "list", env=ENV)
    assert "p3" in waiting.stdout and "inbox.organisations#o3 has no linked record" in waiting.stdout
    assert "p1" not in waiting.stdout and "p2" not in waiting.stdout


def test_an_error_inside_a_200_fails_the_run_in_cerbs_words_and_the_next_run_recovers(
    tmp_path: Path, default_state_url: str, cerb_url: str
) -> None:
    config = _config(tmp_path, default_state_url, cerb_url)
    inject = httpx.post(
        cerb_url + "/__sandbox/errors", json={"count": 2, "code": "ERROR", "message": "Database connection lost."}
    )
    assert inject.status_code == 200
    failed = _sync(config, "tickets-to-csv")
    assert failed.returncode == 1
    assert "Database connection lost." in failed.stdout and "Traceback" not in failed.stderr
    status = run_cli("--config", str(config), "status", "--json", env=ENV)
    assert '"cursor": null' in status.stdout, "a failed first run moves no cursor"
    again = _sync(config, "tickets-to-csv")
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_refused_token_stops_the_run_with_cerbs_reason_and_no_secret(
    tmp_path: Path, default_state_url: str, cerb_url: str
) -> None:
    config = _config(tmp_path, default_state_url, cerb_url)
    started = time.monotonic()
    result = _sync(config, "orgs-to-csv")
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "authentication failed (HTTP 401)" in output and "authorization server denied the request" in output
    assert ENV["CERB_BAD_TOKEN"] not in output
    assert time.monotonic() - started < 30, "a 401 is not retried"
    assert not (tmp_path / "out" / "organisations.csv").exists()
    check = run_cli("--config", str(config), "check", env=ENV)
    assert check.returncode != 0
    assert "system helpdesk: ok" in check.stdout and "system signed: ok" in check.stdout
    assert "system intruder: FAILED: " in check.stdout and ENV["CERB_BAD_TOKEN"] not in check.stdout


def test_connectors_lists_cerb_with_its_three_streams_and_every_capability() -> None:
    result = run_cli("connectors")
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("cerb "))
    rows = [line.split() for line in lines[start : start + 3]]
    assert [row[-8] for row in rows] == ["tickets", "contacts", "organisations"]
    assert all(row[-6:] == ["yes"] * 6 for row in rows)
