"""Clientexec as verified against the real API (``shared/seeds/README.md``, "Verified against
the real systems"): each test is named after one fact and checks the simulator's behaviour
and the connector's result against it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from ferryman.connector import Capability, SystemContext
from ferryman.cursor import Cursor, newest
from ferryman.errors import FatalError, MalformedResponseError, NotSupportedError, RecordRejected
from ferryman.records import Contact, Invoice, Ticket
from ferryman.sandbox import SimulatorThread
from ferryman.testing import collect
from ferryman.timeutil import utcnow
from ferryman_connectors.clientexec import ClientexecConnector
from ferryman_connectors.clientexec._mapping import MappingSettings, invoice_fields

KEY = "sandbox-app-key"
HEADERS = {"X-API-Key": KEY}

#: the vendor's own invoice example (the fields the verified facts are about)
VENDOR_INVOICE: dict[str, Any] = {
    "invoiceid": 1,
    "customerid": 2,
    "billdate": "06/14/2017",
    "amount": "$1.00 USD",
    "balancedue": None,
    "simplebalancedue": "$1.00 USD",
    "billstatus": "not paid",
    "statusenum": -2,
}


@pytest.fixture
def real() -> Iterator[SimulatorThread]:
    """A sandbox answering like the documented API (no update timestamp)."""
    from ferryman_connectors.clientexec.simulator import ClientexecSimulator

    with SimulatorThread(ClientexecSimulator(records=40, seed=5, rate_limit=100_000)) as thread:
        yield thread


@asynccontextmanager
async def connected(url: str, **more: Any) -> AsyncIterator[ClientexecConnector]:
    options = ClientexecConnector.Options(base_url=url + "/api", api_key=KEY, rate_limit=None, **more)
    connector = ClientexecConnector(SystemContext("billing", options, None, {}))
    await connector.open()
    try:
        yield connector
    finally:
        await connector.close()


def api(url: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{url}/api{path}", params=params, headers=HEADERS)


# -- invoices: statusenum, billstatus, simplebalancedue -----------------------------------------------
def test_statusenum_codes_unknown_to_us_fall_back_to_billstatus() -> None:
    settings = MappingSettings()
    assert invoice_fields(VENDOR_INVOICE, settings)["status"] == "open"  # -2 is not ours; "not paid" is
    assert invoice_fields({**VENDOR_INVOICE, "statusenum": 1, "billstatus": "not paid"}, settings)["status"] == "paid"
    with pytest.raises(RecordRejected, match=r"statusenum '-2'.*'on hold'.*invoice_statuses"):
        invoice_fields({**VENDOR_INVOICE, "billstatus": "on hold"}, settings)
    with pytest.raises(RecordRejected, match=r"unknown code '-2' and no billstatus"):
        invoice_fields({**VENDOR_INVOICE, "billstatus": None}, settings)


async def test_statusenum_codes_unknown_to_us_fall_back_to_billstatus_in_the_sandbox(real: SimulatorThread) -> None:
    answered = api(real.url, "/invoices", limit=100).json()["invoices"]
    unknown = [i for i in answered if i["statusenum"] == -2]
    assert unknown and all(i["billstatus"] == "not paid" for i in unknown)  # as in the vendor's example
    async with connected(real.url) as connector:
        records, rejects = await collect(connector.read("invoices", None, 100))
    assert not rejects and len(records) == 40
    by_key = {r.key: r for r in records}
    assert all(by_key[str(i["invoiceid"])].status == "open" for i in unknown)


def test_simplebalancedue_is_read_when_balancedue_is_null() -> None:
    record = Invoice.model_validate(invoice_fields(VENDOR_INVOICE, MappingSettings()))
    assert (record.amount, record.balance_due, record.currency) == (Decimal("1.00"), Decimal("1.00"), "USD")
    old_style = {**VENDOR_INVOICE, "simplebalancedue": None, "balancedue": "$0.50 USD"}
    assert invoice_fields(old_style, MappingSettings())["balance_due"] == Decimal("0.50")


async def test_simplebalancedue_is_read_when_balancedue_is_null_in_the_sandbox(real: SimulatorThread) -> None:
    answered = api(real.url, "/invoices", limit=100).json()["invoices"]
    assert all(i["balancedue"] is None and i["simplebalancedue"] for i in answered)
    async with connected(real.url) as connector:
        records, _ = await collect(connector.read("invoices", None, 100))
    table = real.simulator.table("invoices")
    assert all(r.balance_due == table.get(int(r.key))["balancedue"] for r in records)
    assert any(r.balance_due and r.balance_due > 0 for r in records)


# -- users: local.zipcode, Add User, Get User by email -------------------------------------------------
async def test_the_postcode_is_local_zipcode_both_ways(real: SimulatorThread) -> None:
    first = api(real.url, "/users", limit=1).json()["users"][0]
    assert "zipcode" in first["local"] and "zip" not in first["local"]
    refused = httpx.post(
        f"{real.url}/api/user",
        json={"email": "zip@example.com", "firstname": "Z", "lastname": "Ip", "zip": "1000"},
        headers=HEADERS,
    ).json()
    assert refused["success"] is False and "zip" in refused["message"]  # Add User takes zipcode
    async with connected(real.url) as connector:
        records, _ = await collect(connector.read("contacts", None, 100))
        assert {r.key: r.postcode for r in records}[str(first["userid"])] == first["local"]["zipcode"]
        sample = Contact(key="src-1", updated_at=utcnow(), email="pc@example.com", first_name="P", last_name="C")
        created = await connector.create("contacts", sample.model_copy(update={"postcode": "SW1A 1AA"}))
    assert created.postcode == "SW1A 1AA"
    stored = real.simulator.table("users").get(int(created.key))
    assert stored["zipcode"] == "SW1A 1AA"
    assert stored["status"] == "0"  # Add User's documented default status


async def test_get_user_takes_an_email_not_an_id(real: SimulatorThread) -> None:
    user = api(real.url, "/users", limit=1).json()["users"][0]
    assert api(real.url, f"/user/{user['userid']}").status_code == 404
    by_email = api(real.url, f"/user/{user['email'].upper()}")
    assert by_email.status_code == 200 and by_email.json()["userid"] == user["userid"]
    key = str(user["userid"])
    sim = real.simulator
    async with connected(real.url) as connector:
        found = await connector.find("contacts", Contact(key="x", updated_at=utcnow(), email=user["email"]))
        assert found is not None and found.key == key
        before = sim.stats.requests
        got = await connector.get("contacts", key)  # the address learnt by find: one Get User
        assert got is not None and got.key == key and sim.stats.requests - before == 1
    async with connected(real.url) as fresh:
        got = await fresh.get("contacts", key)  # no address known: found by a scan of the user list
        assert got is not None and got.email == user["email"]
        before = sim.stats.requests
        assert await fresh.get("contacts", "999999") is None  # the fresh scan answers for every id
        assert sim.stats.requests == before
        sim.table("users").update(int(key), {"email": "moved@example.com", "email_key": "moved@example.com"})
        moved = await fresh.get("contacts", key)  # its address changed: found again by a scan
        assert moved is not None and moved.email == "moved@example.com"
        await fresh.delete("contacts", key)
        assert await fresh.get("contacts", key) is None


async def test_a_garbled_answer_to_a_user_create_is_resolved_by_its_email(real: SimulatorThread) -> None:
    real.call(real.simulator.set_hostile, "garble_writes")
    async with connected(real.url) as connector:
        sample = Contact(key="src-9", updated_at=utcnow(), email="garbled@example.com", first_name="G", last_name="B")
        created = await connector.create("contacts", sample)  # carried out; the answer is unreadable
        assert created.email == "garbled@example.com"
        assert real.simulator.table("users").get(int(created.key)) is not None
        ticket = Ticket(key="src-t", updated_at=utcnow(), subject="s", description="d", requester_email="g@x.example")
        with pytest.raises(MalformedResponseError):  # nothing to find a ticket by: unresolved, not rejected
            await connector.create("tickets", ticket)


# -- no update timestamp: full scans -------------------------------------------------------------------
async def test_clientexec_has_no_date_updated_so_every_stream_is_a_full_scan(real: SimulatorThread) -> None:
    ticket = api(real.url, "/tickets", limit=1).json()["tickets"][0]
    assert "dateUpdated" not in ticket["metadata"]
    for resource in ("users", "invoices"):
        assert "dateUpdated" not in api(real.url, f"/{resource}", limit=1).json()[resource][0]
    # the simulator does not pretend to filter: the parameter is ignored like any unknown one
    assert api(real.url, "/tickets", limit=100, updated_since=2_000_000_000).json()["total"] == 40

    async with connected(real.url) as connector:
        for info in connector.streams().values():
            assert not info.can(Capability.INCREMENTAL) and not info.ordered, info.name
            assert info.hides_deleted
        assert connector.stream("tickets").precision == timedelta(seconds=1)
        everything, _ = await collect(connector.read("tickets", None, 7))
        assert len(everything) == 40
        cursor = newest(everything)
        # An old ticket is closed: no field a filter could use changes ...
        old = min((r for r in everything if r.status != "closed"), key=lambda r: r.updated_at)
        real.simulator.table("tickets").update(int(old.key), {"status": "-1"})
        # ... and a read from the newest cursor still sees it: never a frozen cursor.
        again, _ = await collect(connector.read("tickets", Cursor(cursor.updated_at + timedelta(days=1), ""), 7))
    assert len(again) == 40
    assert {r.key: r.status for r in again}[old.key] == "closed"


async def test_since_param_against_an_install_without_date_updated_stops_with_what_to_do(
    real: SimulatorThread,
) -> None:
    async with connected(real.url, since_param="updated_since") as connector:
        assert connector.stream("tickets").can(Capability.INCREMENTAL)
        with pytest.raises(FatalError, match=r"without dateUpdated.*Remove since_param"):
            await collect(connector.read("tickets", None, 10))


async def test_an_install_with_an_update_filter_is_read_incrementally_in_verified_order() -> None:
    from ferryman_connectors.clientexec.simulator import ClientexecSimulator

    sim = ClientexecSimulator(records=30, seed=2, rate_limit=100_000, update_filter=True)
    with SimulatorThread(sim) as thread:
        async with connected(thread.url, since_param="updated_since") as connector:
            info = connector.stream("invoices")
            assert info.ordered and info.can(Capability.INCREMENTAL) and info.precision == timedelta(seconds=1)
            everything, _ = await collect(connector.read("invoices", None, 4))
            middle = Cursor.of(everything[15])
            newer, _ = await collect(connector.read("invoices", middle, 4))
    assert [r.key for r in newer] == [r.key for r in everything[15:]]


# -- interrupted creates: no external-id field, so tickets are matched on what was sent -----------------
async def test_an_interrupted_ticket_create_is_found_by_what_was_sent_not_by_a_marker(real: SimulatorThread) -> None:
    started = utcnow()
    ticket = Ticket(
        key="helpdesk-77",
        updated_at=started,
        subject="Mail bounces",
        description="Since noon every mail to us bounces.",
        requester_email="Carol@Example.com",
    )
    async with connected(real.url) as connector:
        assert await connector.reconcile("tickets", ticket, started) is None  # never sent: create it
        made = await connector.create("tickets", ticket)
        found = await connector.reconcile("tickets", ticket, started)
        assert found is not None and found.key == made.key
        other = ticket.model_copy(update={"description": "A different first message."})
        assert await connector.reconcile("tickets", other, started) is None
        await connector.create("tickets", ticket)  # the same content twice: which one is ours is unknowable
        with pytest.raises(NotSupportedError, match="matches 2 tickets"):
            await connector.reconcile("tickets", ticket, started)
        invoice = Invoice(key="i", updated_at=started, customer_key="1", amount=Decimal("5.00"))
        with pytest.raises(NotSupportedError):  # nothing to find an invoice by: unresolved for a human
            await connector.reconcile("invoices", invoice, started)
        user = Contact(key="u", updated_at=started, email="rec@example.com", first_name="R", last_name="C")
        assert await connector.reconcile("contacts", user, started) is None
        created = await connector.create("contacts", user)
        again = await connector.reconcile("contacts", user, started)
        assert again is not None and again.key == created.key
