"""Clientexec end to end: ``ferryman sandbox clientexec`` as a process, ``ferryman sync`` as a process."""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import UTC, datetime
from datetime import time as dt_time
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from ferryman.sandbox import SimulatorThread
from ferryman_connectors.clientexec.simulator import ClientexecSimulator
from tests.conftest import run_cli
from tests.e2e.support import csv_rows, sandbox_process, save_config

KEY = "sandbox-app-key"
ENV = {"CE_KEY": KEY}
RATE_LIMIT = "limit 200 requests per 60 s"  # hosted Clientexec's limit, on in the sandbox by default
UTC_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def write_config(tmp_path: Path, state_url: str, url: str, pipelines: dict[str, Any], **billing: Any) -> Path:
    doc = {
        "state": {"url": state_url},
        "log": {"format": "json", "level": "warning"},
        "systems": {
            "billing": {"connector": "clientexec", "base_url": url + "/api", "api_key": "${CE_KEY}", **billing},
            "files": {"connector": "csv", "directory": str(tmp_path / "files")},
        },
        "pipelines": pipelines,
    }
    return save_config(tmp_path, doc)


def api(url: str, path: str, **params: Any) -> Any:
    response = httpx.get(f"{url}/api{path}", params=params, headers={"X-API-Key": KEY})
    response.raise_for_status()
    return response.json()


def sync(config: Path, pipeline: str, *more: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--config", str(config), "sync", pipeline, "--no-progress", *more, env=ENV)


def test_tickets_and_invoices_from_the_sandbox_to_csv_with_utc_times_and_exact_money(
    tmp_path: Path, default_state_url: str
) -> None:
    with sandbox_process("clientexec", "--records", "40", expect=RATE_LIMIT) as url:
        config = write_config(
            tmp_path,
            default_state_url,
            url,
            {f"{s}-out": {"from": f"billing.{s}", "to": f"files.{s}"} for s in ("tickets", "invoices")},
        )
        for stream in ("tickets", "invoices"):
            result = sync(config, f"{stream}-out")
            assert result.returncode == 0, result.stdout + result.stderr
            assert "read 40, created 40" in result.stdout and "dead_lettered 0" in result.stdout
        invoice_api = api(url, "/invoices", limit=100)["invoices"]
        stats = httpx.get(url + "/__sandbox/stats").json()

    tickets = csv_rows(tmp_path / "files" / "tickets.csv")
    assert len(tickets) == 40
    for row in tickets:
        native = json.loads(row["extra"])
        assert row["status"] == ("closed" if native["status"] == "-1" else row["status"])
        assert (native["status"] == "-1") == (row["status"] == "closed")
        assert UTC_Z.match(row["updated_at"]) and UTC_Z.match(row["created_at"])
        assert all(UTC_Z.match(c["createdAt"]) for c in native["comments"])
    invoices = {r["key"]: r for r in csv_rows(tmp_path / "files" / "invoices.csv")}
    assert len(invoices) == 40
    for native in invoice_api:
        row = invoices[str(native["invoiceid"])]
        symbol_and_number, code = native["amount"].rsplit(" ", 1)
        assert row["currency"] == code
        assert Decimal(row["amount"]) == Decimal(re.sub(r"[^\d.\-]", "", symbol_and_number))
        assert re.fullmatch(r"-?\d+\.\d\d", row["amount"])
    assert {r["status"] for r in invoices.values()} <= {"draft", "open", "partial", "paid", "void"}
    assert stats["throttled"] == 0 and stats["early_retries"] == 0


def test_csv_to_clientexec_creates_users_and_tickets_and_dead_letters_what_clientexec_refuses(
    tmp_path: Path, default_state_url: str
) -> None:
    with sandbox_process("clientexec", "--records", "5", expect=RATE_LIMIT) as url:
        taken = api(url, "/users", limit=1)["users"][0]["email"]
        files = tmp_path / "files"
        files.mkdir()
        (files / "contacts.csv").write_text(
            "key,updated_at,email,first_name,last_name,phone,city\n"
            "c1,2026-03-01T10:00:00+02:00,ines.ortega@example.com,Inés,Ortega,+34 600 000 001,Madrid\n"
            f"c2,2026-03-01T09:00:00Z,{taken},Someone,Else,,\n"
            "c3,2026-03-01T09:30:00Z,kofi.mensah@example.com,Kofi,Mensah,,Accra\n"
        )
        (files / "tickets.csv").write_text(
            "key,updated_at,subject,description,status,priority,requester_email\n"
            "t1,2026-03-01T08:00:00Z,VPS unreachable,Since 8am the VPS does not answer.,open,urgent,ines.ortega@example.com\n"
            "t2,2026-03-01T08:05:00Z,Invoice question,Why was I charged twice?,closed,low,kofi.mensah@example.com\n"
        )
        config = write_config(
            tmp_path,
            default_state_url,
            url,
            {
                "contacts-in": {"from": "files.contacts", "to": "billing.contacts"},
                "tickets-in": {"from": "files.tickets", "to": "billing.tickets"},
            },
            rate_limit="1200/min",  # a handful of writes: no need to pace them at the hosted 200/min
        )
        result = sync(config, "contacts-in")
        assert result.returncode == 0, result.stdout + result.stderr
        # c2's address is already a Clientexec user: found by email (Get User) and linked to
        # it before any create, so no duplicate is attempted.
        assert "created 2, updated 1" in result.stdout and "dead_lettered 0" in result.stdout
        [same] = api(url, "/users", email=taken)["users"]
        assert (same["firstname"], same["lastname"]) == ("Someone", "Else")

        [ines] = api(url, "/users", email="INES.ORTEGA@example.com")["users"]
        assert (ines["firstname"], ines["lastname"], ines["local"]["city"]) == ("Inés", "Ortega", "Madrid")

        result = sync(config, "tickets-in")
        assert result.returncode == 0 and "created 2" in result.stdout, result.stdout + result.stderr
        created = {t["metadata"]["subject"]: t for t in api(url, "/tickets", limit=100)["tickets"]}
        vps = created["VPS unreachable"]
        assert vps["metadata"]["userid"] == ines["userid"]  # linked to the user by email
        assert vps["metadata"]["priority"] == "1" and vps["metadata"]["status"] == "1"
        assert vps["comments"][0]["message"] == "Since 8am the VPS does not answer."
        assert created["Invoice question"]["metadata"]["status"] == "-1"


def test_ten_thousand_tickets_sync_at_the_default_rate_limit_without_a_single_429(
    tmp_path: Path, default_state_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with sandbox_process("clientexec", "--records", "10000", expect=RATE_LIMIT) as url:
        config = write_config(
            tmp_path,
            default_state_url,
            url,
            {"tickets-out": {"from": "billing.tickets", "to": "files.tickets", "page_size": 1000}},
        )
        started = time.monotonic()
        result = sync(config, "tickets-out")
        seconds = time.monotonic() - started
        stats = httpx.get(url + "/__sandbox/stats").json()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "read 10000, created 10000" in result.stdout
    assert stats["throttled"] == 0 and stats["by_status"] == {"200": stats["requests"]}
    assert len(csv_rows(tmp_path / "files" / "tickets.csv")) == 10_000
    with capsys.disabled():
        print(f"\nferryman sync of 10,000 Clientexec tickets: {stats['requests']} requests, {seconds:.1f} s, 0 x 429")


def test_an_install_in_new_york_time_becomes_utc_z_in_the_csv(tmp_path: Path, default_state_url: str) -> None:
    sim = ClientexecSimulator(records=12, timezone="America/New_York", rate_limit=100_000)
    zone = ZoneInfo("America/New_York")
    with SimulatorThread(sim) as thread:
        config = write_config(
            tmp_path,
            default_state_url,
            thread.url,
            {"invoices-out": {"from": "billing.invoices", "to": "files.invoices"}},
            timezone="America/New_York",
        )
        result = sync(config, "invoices-out")
        assert result.returncode == 0 and "dead_lettered 0" in result.stdout, result.stdout + result.stderr
        sample = api(thread.url, "/invoice/1")

    assert re.fullmatch(r"\d\d/\d\d/\d{4}", sample["billdate"])  # the install's local format on the wire
    for row in csv_rows(tmp_path / "files" / "invoices.csv"):
        native = sim.table("invoices").get(int(row["key"]))
        midnight = datetime.combine(native["issued_on"], dt_time(), zone).astimezone(UTC)
        assert row["created_at"] == midnight.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert row["created_at"][11:13] in ("04", "05")  # EDT or EST midnight, never 00


def test_a_status_change_to_an_old_ticket_reaches_the_csv_although_clientexec_has_no_update_time(
    tmp_path: Path, default_state_url: str
) -> None:
    """No documented answer has dateUpdated: each run is a full scan, and fingerprints find the change."""
    sim = ClientexecSimulator(records=30, rate_limit=100_000)
    with SimulatorThread(sim) as thread:
        config = write_config(
            tmp_path, default_state_url, thread.url, {"tickets-out": {"from": "billing.tickets", "to": "files.tickets"}}
        )
        first = sync(config, "tickets-out")
        assert first.returncode == 0 and "read 30, created 30" in first.stdout, first.stdout + first.stderr
        oldest = min((r for r in sim.table("tickets") if r["status"] != "-1"), key=lambda r: r["created_at"])
        sim.table("tickets").update(oldest["id"], {"status": "-1"})
        second = sync(config, "tickets-out")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "read 30, created 0, updated 1" in second.stdout and "skipped 29" in second.stdout
    rows = {r["key"]: r for r in csv_rows(tmp_path / "files" / "tickets.csv")}
    assert rows[str(oldest["id"])]["status"] == "closed"
