"""``ferryman sandbox aspnet_helpdesk`` and ``ferryman sync`` as processes: helpdesk→CSV and CSV→helpdesk."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_cli
from tests.e2e.support import csv_rows, sandbox_process, save_config

KEY = "sandbox-key"  # the sandbox's own; the config references it as ${HELPDESK_KEY}


class Sandbox:
    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, params={"key": KEY}, **kwargs)

    def admin(self, what: str) -> Any:
        return httpx.get(f"{self.url}/__sandbox/{what}").json()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with sandbox_process("aspnet_helpdesk", "--records", "30", "--seed", "4") as url:
        yield Sandbox(url)


def write_config(tmp_path: Path, sandbox: Sandbox, fmt: str, pipelines: dict[str, Any]) -> Path:
    doc = {
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "log": {"format": "json", "level": "debug"},
        "systems": {
            "helpdesk": {
                "connector": "aspnet_helpdesk",
                "base_url": sandbox.url,
                "api_key": "${HELPDESK_KEY}",
                "format": fmt,
            },
            "files": {"connector": "csv", "directory": str(tmp_path / "files")},
        },
        "pipelines": pipelines,
    }
    return save_config(tmp_path, doc)


def sync(config: Path, pipeline: str) -> subprocess.CompletedProcess[str]:
    result = run_cli("--config", str(config), "sync", pipeline, "--no-progress", env={"HELPDESK_KEY": KEY})
    # Debug logging shows every URL, and the key travels in every URL: it must be masked.
    assert "key=***" in result.stdout + result.stderr
    assert KEY not in result.stdout + result.stderr, "the API key reached the output"
    assert "Traceback" not in result.stderr
    return result


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_helpdesk_tickets_to_csv(tmp_path: Path, sandbox: Sandbox, fmt: str) -> None:
    config = write_config(
        tmp_path, sandbox, fmt, {"tickets_out": {"from": "helpdesk.tickets", "to": "files.tickets", "page_size": 7}}
    )
    first = sync(config, "tickets_out")
    assert first.returncode == 0, first.stderr
    assert "created 30" in first.stdout and "dead_lettered 0" in first.stdout

    rows = csv_rows(tmp_path / "files" / "tickets.csv")
    native = {t["Id"]: t for t in sandbox.api("GET", "/api/Tickets").json()}
    assert sorted(int(r["key"]) for r in rows) == sorted(native)
    for row in rows:
        ticket = native[int(row["key"])]
        assert row["subject"] == ticket["Title"]
        assert row["updated_at"] == ticket["ModifiedTime"] + "Z"  # read as UTC, written with Z
        closed = ticket["ClosedTime"] is not None and (
            ticket["ReopenedTime"] is None or ticket["ReopenedTime"] < ticket["ClosedTime"]
        )
        assert row["status"] == ("closed" if closed else "open")
        assert row["closed_at"] == (ticket["ClosedTime"] + "Z" if closed else "")

    again = sync(config, "tickets_out")
    assert again.returncode == 0 and "created 0" in again.stdout
    assert sandbox.admin("writes")["writes"] == []


def test_csv_to_helpdesk_creates_updates_closes_and_never_emails(tmp_path: Path, sandbox: Sandbox) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "contacts.csv").write_text(
        "key,updated_at,email,first_name,last_name,mobile\n"
        "c1,2026-02-01T10:00:00Z,grace.hopper@navy.example,Grace,Hopper,+1 555 0101\n"
        "c2,2026-02-01T10:00:01Z,alan.turing@bletchley.example,Alan,Turing,\n"
    )
    (files / "tickets.csv").write_text(
        "key,updated_at,subject,description,status,priority,requester_email,assignee\n"
        "t1,2026-02-01T11:00:00Z,Compiler crashes,On every build,open,high,grace.hopper@navy.example,\n"
        "t2,2026-02-01T11:00:01Z,Old question,Answered by phone,closed,low,alan.turing@bletchley.example,\n"
        "t3,2026-02-01T11:00:02Z,Who handles this?,,open,normal,,nobody@nowhere.example\n"
    )
    config = write_config(
        tmp_path,
        sandbox,
        "xml",
        {
            "contacts_in": {"from": "files.contacts", "to": "helpdesk.contacts"},
            "tickets_in": {"from": "files.tickets", "to": "helpdesk.tickets"},
        },
    )
    contacts = sync(config, "contacts_in")
    assert contacts.returncode == 0 and "created 2" in contacts.stdout, contacts.stderr
    tickets = sync(config, "tickets_in")
    assert tickets.returncode == 0 and "created 2" in tickets.stdout and "dead_lettered 1" in tickets.stdout

    customers = {c["Email"]: c for c in sandbox.api("GET", "/api/Customers").json()}
    grace = customers["grace.hopper@navy.example"]
    assert grace["CellPhone"] == "+1 555 0101" and grace["Services"] == []
    by_title = {t["Title"]: t for t in sandbox.api("GET", "/api/Tickets").json()}
    assert by_title["Compiler crashes"]["CustomerId"] == grace["Id"]
    assert by_title["Compiler crashes"]["Priority"] == "High" and by_title["Compiler crashes"]["ClosedTime"] is None
    assert by_title["Old question"]["ClosedTime"] is not None
    assert "Who handles this?" not in by_title
    listing = run_cli("--config", str(config), "dlq", "list", env={"HELPDESK_KEY": KEY})
    assert "not an operator" in listing.stdout

    # Someone subscribes Grace to two services in the helpdesk's GUI (a full PUT of their own).
    services = sandbox.api("GET", "/api/Services").json()[:2]
    gui = {**grace, "Services": services}
    assert sandbox.api("PUT", f"/api/Customers/{grace['Id']}", json=gui).status_code == 204

    # Then the CSV changes Grace's email and closes her ticket.
    (files / "contacts.csv").write_text(
        "key,updated_at,email,first_name,last_name,mobile\n"
        "c1,2026-02-02T10:00:00Z,grace@navy.example,Grace,Hopper,\n"
        "c2,2026-02-01T10:00:01Z,alan.turing@bletchley.example,Alan,Turing,\n"
    )
    (files / "tickets.csv").write_text(
        "key,updated_at,subject,description,status,priority,requester_email,assignee\n"
        "t1,2026-02-02T11:00:00Z,Compiler crashes,Fixed in 2.1,closed,high,grace.hopper@navy.example,\n"
        "t2,2026-02-01T11:00:01Z,Old question,Answered by phone,closed,low,alan.turing@bletchley.example,\n"
    )
    contacts = sync(config, "contacts_in")
    assert contacts.returncode == 0 and "updated 1" in contacts.stdout, contacts.stderr
    tickets = sync(config, "tickets_in")
    assert tickets.returncode == 0 and "updated 1" in tickets.stdout, tickets.stderr

    after = sandbox.api("GET", f"/api/Customers/{grace['Id']}").json()
    assert after["Email"] == "grace@navy.example"
    assert after["CellPhone"] == "+1 555 0101", "an empty CSV cell erased the helpdesk's phone"
    assert [s["Id"] for s in after["Services"]] == [s["Id"] for s in services], "the update erased the services"
    ticket = sandbox.api("GET", f"/api/Tickets/{by_title['Compiler crashes']['Id']}").json()
    assert ticket["ClosedTime"] is not None and ticket["Description"] == "Fixed in 2.1"

    writes = sandbox.admin("writes")["writes"]
    ours = [w for w in writes if w["format"] == "xml"]  # the GUI's PUT above was JSON
    assert [w["method"] for w in ours] == ["POST", "POST", "POST", "POST", "PUT", "PUT"]
    assert [w for w in ours if w["DoNotSendEmail"] is not True] == []
    assert len(writes) == len(ours) + 1
    assert sandbox.admin("emails")["emails"] == []
