"""Harvest through ``ferryman sync`` as a user runs it: the sandbox as a process (or in a
thread when a test must bend it), the CLI as a process, CSV files on either side."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest

from ferryman.config import load_config
from ferryman.connector import Cursor, SystemContext
from ferryman.sandbox import SimulatorThread
from ferryman.state import StateStore
from ferryman_connectors.harvest import HarvestConnector
from ferryman_connectors.harvest.simulator import HarvestSimulator
from tests.conftest import free_port, run_cli
from tests.e2e.support import csv_rows, sandbox_process, save_config

EMAIL = "api@sandbox.harvest.example"
PASSWORD = "sandbox-password"
ENV = {"HARVEST_PASSWORD": PASSWORD}


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    """``ferryman sandbox harvest --port P`` as a process, Harvest's own limits on."""
    # Harvest's window, a larger budget: the tests here are about data; the budget tests below use the real one.
    with sandbox_process(
        "harvest",
        "--records",
        "40",
        "--seed",
        "5",
        "--rate-limit",
        "1500",
        port=free_port(),
        expect="limit 1500 requests per 15 s",
    ) as url:
        yield url


def write_config(tmp_path: Path, url: str, state_url: str, pipelines: dict[str, Any], **harvest: Any) -> Path:
    doc = {
        "state": {"url": state_url},
        "log": {"format": "json", "level": "warning"},
        "systems": {
            "harvest": {
                "connector": "harvest",
                "base_url": url,
                "email": EMAIL,
                "password": "${HARVEST_PASSWORD}",
                **harvest,
            },
            "files": {"connector": "csv", "directory": str(tmp_path / "files")},
            "out": {"connector": "csv", "directory": str(tmp_path / "out")},
        },
        "pipelines": pipelines,
    }
    return save_config(tmp_path, doc)


def sync(config: Path, pipeline: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--config", str(config), "sync", pipeline, env=ENV)


def cursor_of(state_url: str, pipeline: str) -> Cursor | None:
    """The pipeline's committed cursor, straight from the state store."""
    return StateStore.open(state_url).get_cursor(pipeline)


# -- Harvest -> CSV ----------------------------------------------------------------------------------


def test_harvest_to_csv_delivers_every_stream(tmp_path: Path, default_state_url: str, sandbox_url: str) -> None:
    pipelines = {
        f"{s}-out": {"from": f"harvest.{s}", "to": f"out.{s}"} for s in ("contacts", "organisations", "invoices")
    }
    config = write_config(tmp_path, sandbox_url, default_state_url, pipelines)
    for name in pipelines:
        result = sync(config, name)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "read 40" in result.stdout and "created 40" in result.stdout, result.stdout

    contacts = csv_rows(tmp_path / "out" / "contacts.csv")
    assert len(contacts) == 40 and all(r["updated_at"].endswith("Z") for r in contacts)
    assert all(r["organisation"] and r["organisation_key"].isdigit() for r in contacts)
    orgs = {r["key"]: r for r in csv_rows(tmp_path / "out" / "organisations.csv")}
    assert all(
        orgs[r["organisation_key"]]["name"] == r["organisation"] for r in contacts if r["organisation_key"] in orgs
    )
    assert all(r["street"] and r["city"] and re.fullmatch(r"[A-Z]{2}", r["country"]) for r in orgs.values())

    invoices = csv_rows(tmp_path / "out" / "invoices.csv")
    assert {r["currency"] for r in invoices} <= {"USD", "EUR", "GBP"}
    assert {r["status"] for r in invoices} <= {"draft", "open", "partial", "paid", "closed"}
    assert all(re.fullmatch(r"\d+\.\d{2}", r["amount"]) for r in invoices), [r["amount"] for r in invoices]
    # The same money Harvest holds, to the cent (the CSV says 100.00 where Harvest says 100.0).
    for row in invoices[:10]:
        xml = httpx.get(
            f"{sandbox_url}/invoices/{row['key']}", auth=(EMAIL, PASSWORD), headers={"Accept": "application/xml"}
        )
        native = ET.fromstring(xml.content)
        assert Decimal(native.findtext("amount") or "") == Decimal(row["amount"])
        assert Decimal(native.findtext("due-amount") or "") == Decimal(row["balance_due"])


# -- CSV -> Harvest -> CSV: money to the cent ---------------------------------------------------------

LINES = "kind,description,quantity,unit_price\n"
INVOICES = [
    # number, amount, balance_due, currency, status, line items (None: one line for the amount)
    ("FM-1", "1234.56", "1234.56", "EUR", "open", None),
    ("FM-2", "0.30", "0.30", "USD", "open", LINES + "Product,dime,1,0.10\nProduct,two dimes,1,0.20\n"),
    ("FM-3", "59.97", "0.00", "USD", "paid", LINES + "Product,widget,3,19.99\n"),
    ("FM-4", "19990.00", "9990.00", "GBP", "partial", LINES + "Product,widget,1000,19.99\n"),
    ("FM-5", "0.10", "0.10", "USD", "draft", None),
    ("FM-6", "100.00", "100.00", "USD", "void", None),
    ("FM-7", "1000000.01", "0.01", "USD", "partial", None),
]


def write_csv(path: Path, header: list[str], data: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(data)


def test_money_survives_csv_to_harvest_and_back_to_the_cent(
    tmp_path: Path, default_state_url: str, sandbox_url: str
) -> None:
    files = tmp_path / "files"
    write_csv(
        files / "organisations.csv",
        ["key", "updated_at", "name", "street", "postcode", "city", "country"],
        [["org-1", "2026-01-01T00:00:00Z", "Ferryman Money Co", "1 Quay Street", "D02 X285", "Dublin", "IE"]],
    )
    write_csv(
        files / "invoices.csv",
        [
            "key",
            "updated_at",
            "number",
            "customer_name",
            "amount",
            "balance_due",
            "currency",
            "status",
            "subject",
            "issued_on",
            "due_on",
            "extra",
        ],
        [
            [
                f"inv-{i}",
                f"2026-01-02T00:00:0{i}Z",
                number,
                "Ferryman Money Co",
                amount,
                due,
                currency,
                status,
                f"Invoice {number}",
                "2026-01-05",
                "2026-02-04",
                json.dumps({"csv-line-items": lines}) if lines else "",
            ]
            for i, (number, amount, due, currency, status, lines) in enumerate(INVOICES)
        ],
    )
    write_csv(
        files / "contacts.csv",
        ["key", "updated_at", "email", "first_name", "last_name", "phone", "organisation", "extra"],
        [
            [
                "c-1",
                "2026-01-03T00:00:00Z",
                "ines.moreau@money.example",
                "Inès",
                "Moreau",
                "+353 1 555 0100",
                "Ferryman Money Co",
                json.dumps({"fax": "+353 1 555 0199"}),
            ]
        ],
    )
    pipelines = {
        "orgs-in": {"from": "files.organisations", "to": "harvest.organisations"},
        "invoices-in": {"from": "files.invoices", "to": "harvest.invoices"},
        "contacts-in": {"from": "files.contacts", "to": "harvest.contacts"},
        "invoices-back": {"from": "harvest.invoices", "to": "out.invoices"},
        "contacts-back": {"from": "harvest.contacts", "to": "out.contacts"},
    }
    config = write_config(tmp_path, sandbox_url, default_state_url, pipelines, rate_limit="50/s")
    for name, created in (("orgs-in", 1), ("invoices-in", len(INVOICES)), ("contacts-in", 1)):
        result = sync(config, name)
        assert result.returncode == 0 and f"created {created}" in result.stdout, result.stdout + result.stderr
    for name in ("invoices-back", "contacts-back"):
        result = sync(config, name)
        assert result.returncode == 0, result.stdout + result.stderr

    back = {r["number"]: r for r in csv_rows(tmp_path / "out" / "invoices.csv")}
    for number, amount, due, currency, status_, _ in INVOICES:
        row = back[number]
        assert (row["amount"], row["balance_due"]) == (amount, due), f"{number}: {row}"
        assert row["currency"] == currency and row["customer_name"] == "Ferryman Money Co"
        assert row["status"] == ("closed" if status_ == "void" else status_)
        assert (row["issued_on"], row["due_on"]) == ("2026-01-05", "2026-02-04")
    contact = next(r for r in csv_rows(tmp_path / "out" / "contacts.csv") if r["email"] == "ines.moreau@money.example")
    assert (contact["first_name"], contact["phone"], contact["organisation"]) == (
        "Inès",
        "+353 1 555 0100",
        "Ferryman Money Co",
    )
    assert json.loads(contact["extra"])["fax"] == "+353 1 555 0199"

    # A second push changes nothing in Harvest: no duplicate invoice, no second payment.
    result = sync(config, "invoices-in")
    assert result.returncode == 0 and "created 0" in result.stdout and "updated 0" in result.stdout
    xml = httpx.get(
        f"{sandbox_url}/invoices",
        params={"status": "partial"},
        auth=(EMAIL, PASSWORD),
        headers={"Accept": "application/xml"},
    )
    partial = [i for i in ET.fromstring(xml.content) if (i.findtext("number") or "").startswith("FM-")]
    assert sorted(i.findtext("due-amount") or "" for i in partial) == ["0.01", "9990.0"]  # Rails prints 9990.0


# -- a malformed page, a malformed entity -------------------------------------------------------------


class FaultyHarvest(HarvestSimulator):
    """Harvest with one invoice page cut in half, and one invoice whose amount is not a number."""

    broken_page: str | None = None
    bad_amount_id: int | None = None

    async def list_invoices(self, request: Any) -> Any:
        response = await super().list_invoices(request)
        if self.broken_page is not None and request.query.get("page") == self.broken_page:
            response.body = response.body[: len(response.body) // 2]
        return response

    def _invoice_view(self, row: Any, *, detail: bool = False) -> dict[str, Any]:
        view = super()._invoice_view(row, detail=detail)
        if row["id"] == self.bad_amount_id:
            view["amount"] = "12,50"
        return view


def test_a_page_that_stays_malformed_fails_the_run_and_holds_the_cursor(tmp_path: Path, default_state_url: str) -> None:
    simulator = FaultyHarvest(records=120, seed=8)
    simulator.bad_amount_id = 7
    with SimulatorThread(simulator) as sim:
        pipelines = {"invoices-out": {"from": "harvest.invoices", "to": "out.invoices"}}
        config = write_config(
            tmp_path,
            sim.url,
            default_state_url,
            pipelines,
            max_retries=2,
            backoff_base=0.05,
            backoff_cap=0.1,
            rate_limit="50/s",  # the simulator's own 100/15 s is never approached: 4 runs of 5 requests
        )
        simulator.broken_page = "2"
        failed = sync(config, "invoices-out")
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "failed" in failed.stdout and "not well-formed XML" in failed.stdout and "page=2" in failed.stdout
        assert "gave up after 3 attempts" in failed.stdout
        assert cursor_of(default_state_url, "invoices-out") is None
        assert not (tmp_path / "out" / "invoices.csv").exists()

        simulator.broken_page = None
        ok = sync(config, "invoices-out")
        assert ok.returncode == 0 and "created 119" in ok.stdout and "dead_lettered 1" in ok.stdout, ok.stdout
        cursor = cursor_of(default_state_url, "invoices-out")
        assert cursor is not None
        listing = run_cli("--config", str(config), "dlq", "list", env=ENV)
        assert "invoice 7" in listing.stdout and "12,50" in listing.stdout, listing.stdout

        # Two invoices change; the walk breaks on page 1: nothing moves, nothing is lost.
        table = simulator.table("invoices")
        for ident in (3, 4):
            sim.call(table.update, ident, {"subject": f"changed {ident}"})
        simulator.broken_page = "1"
        assert sync(config, "invoices-out").returncode == 1
        assert cursor_of(default_state_url, "invoices-out") == cursor
        simulator.broken_page = None
        ok = sync(config, "invoices-out")
        assert ok.returncode == 0 and "updated 2" in ok.stdout, ok.stdout
        subjects = {r["key"]: r["subject"] for r in csv_rows(tmp_path / "out" / "invoices.csv")}
        assert (subjects["3"], subjects["4"]) == ("changed 3", "changed 4")


def test_malformed_bodies_now_and_then_are_retried_and_nothing_is_lost(tmp_path: Path, default_state_url: str) -> None:
    simulator = HarvestSimulator(records=120, seed=8, faults="malformed:0.4")
    with SimulatorThread(simulator) as sim:
        config = write_config(
            tmp_path,
            sim.url,
            default_state_url,
            {"invoices-out": {"from": "harvest.invoices", "to": "out.invoices"}},
            backoff_base=0.05,
            backoff_cap=0.1,
        )
        result = sync(config, "invoices-out")
        assert result.returncode == 0 and "created 120" in result.stdout, result.stdout + result.stderr
        assert simulator.faults.injected["malformed"] >= 1
    assert len(csv_rows(tmp_path / "out" / "invoices.csv")) == 120


# -- the rate limit -----------------------------------------------------------------------------------


def paced_run(tmp_path: Path, state_url: str, simulator: HarvestSimulator, **harvest: Any) -> Any:
    with SimulatorThread(simulator) as sim:
        config = write_config(
            tmp_path,
            sim.url,
            state_url,
            {"invoices-out": {"from": "harvest.invoices", "to": "out.invoices"}},
            invoice_page_size=simulator.page_size,
            **harvest,
        )
        result = sync(config, "invoices-out")
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"created {simulator.records}" in result.stdout
    return simulator.stats


def test_the_default_budget_never_meets_harvests_503(tmp_path: Path, default_state_url: str) -> None:
    """Harvest's ratio (100 per 15 s) in a shorter window, 40 per 6 s; about 46 requests cross it."""
    simulator = HarvestSimulator(records=88, page_size=2, rate_limit=40, window=6.0)
    stats = paced_run(tmp_path, default_state_url, simulator)  # the connector's default rate_limit
    assert stats.requests > 40, "the run must cross the window"
    assert stats.throttled == 0 and "503" not in stats.by_status, stats.by_status
    assert stats.max_in_window <= 40


def test_without_a_client_budget_harvest_answers_503_and_the_run_waits(tmp_path: Path, default_state_url: str) -> None:
    """The control: the same sync with no client-side limit meets the 503s (and survives them)."""
    simulator = HarvestSimulator(records=60, page_size=2, rate_limit=20, window=2.0)
    stats = paced_run(tmp_path, default_state_url, simulator, rate_limit=None)
    assert stats.by_status["503"] >= 1
    assert stats.early_retries == 0, "retried before Retry-After"


@pytest.mark.slow
def test_the_default_budget_at_harvests_real_window(tmp_path: Path, default_state_url: str) -> None:
    """100 per 15 s for real: about 124 requests, about 19 s."""
    simulator = HarvestSimulator(records=240, page_size=2)
    stats = paced_run(tmp_path, default_state_url, simulator)
    assert stats.requests > 120
    assert stats.throttled == 0 and stats.max_in_window <= 100


async def test_the_example_config_reaches_the_sandbox(tmp_path: Path, sandbox_url: str) -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "harvest.example.yaml"
    environ = {**ENV, "FERRYMAN_SYSTEMS__HARVEST__BASE_URL": sandbox_url}
    config = load_config(example, environ=environ)
    options = config.system_options("harvest")
    assert (options.rate_limit.requests, options.rate_limit.per) == (100, 15)
    connector = HarvestConnector(SystemContext("harvest", options, str(example), {}))
    await connector.open()
    try:
        await connector.check()  # what `ferryman check` does for this system
    finally:
        await connector.close()
