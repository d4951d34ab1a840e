"""The clientexec connector: the contract kit over loopback, its mapping quirks, and politeness."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from ferryman.connector import SystemContext
from ferryman.errors import AuthError, RecordRejected
from ferryman.records import Contact, Invoice, Ticket
from ferryman.sandbox import SimulatorThread
from ferryman.testing import ContractSetup, HostileContract, collect
from ferryman.timeutil import utcnow
from ferryman_connectors.clientexec import ClientexecConnector
from ferryman_connectors.clientexec._mapping import (
    MappingSettings,
    contact_fields,
    invoice_fields,
    invoice_to_native,
    parse_money,
    ticket_fields,
    ticket_to_native,
)
from ferryman_connectors.clientexec.simulator import ClientexecSimulator, format_money

KEY = "sandbox-app-key"
NEW_YORK = MappingSettings(timezone="America/New_York")
UTC_SETTINGS = MappingSettings()


def options(url: str, **more: Any) -> dict[str, Any]:
    return {"base_url": url + "/api", "api_key": KEY, "rate_limit": None, **more}


def contract_setup(**more: Any) -> ContractSetup:
    """The contract against a real-like install; ``more`` for an install with an update filter."""
    return ContractSetup(
        connector="clientexec",
        simulator="clientexec",
        options=lambda url: options(url, **more),
        bad_options=lambda url: options(url, api_key="not-the-key", **more),
        simulator_kwargs={"records": 30, "seed": 7, "rate_limit": 100_000, "update_filter": bool(more)},
        samples=SAMPLES,
    )


class TestClientexecContract(HostileContract):
    """The documented API: no update timestamp, so every stream is a full scan."""

    @pytest.fixture
    def contract(self) -> ContractSetup:
        return contract_setup()


class TestClientexecWithUpdateFilterContract(HostileContract):
    """An install that does have ``dateUpdated`` and an ``updated_since`` filter (an assumption)."""

    @pytest.fixture
    def contract(self) -> ContractSetup:
        return contract_setup(since_param="updated_since")


SAMPLES: dict[str, Any] = {
    "contacts": lambda n: Contact(
        key="new",
        updated_at=utcnow(),
        email=f"contract{n}@example.com",
        first_name="Ada",
        last_name="Lovelace",
        phone="+44 20 7946 0001",
        organisation="Analytical Engines Ltd",
        city="London",
        postcode="N1 9GU",
        country="GB",
    ),
    "tickets": lambda n: Ticket(
        key="new",
        updated_at=utcnow(),
        subject=f"Contract ticket {n}",
        description="The control panel shows error 500.",
        status="pending",
        priority="high",
        type="Billing",
        requester_email=f"guest{n}@example.com",
        assignee="2",
    ),
    "invoices": lambda n: Invoice(
        key="new",
        updated_at=utcnow(),
        customer_key="1",
        amount=Decimal("1234.50"),
        currency="EUR",
        status="open",
        subject=f"Hosting {n}",
        issued_on=date(2025, 5, 1),
        due_on=date(2025, 5, 15),
    ),
}


@pytest.fixture
def sandbox() -> Iterator[SimulatorThread]:
    with SimulatorThread(ClientexecSimulator(records=20, rate_limit=100_000)) as thread:
        yield thread


async def connect(url: str, **more: Any) -> ClientexecConnector:
    connector = ClientexecConnector(
        SystemContext("billing", ClientexecConnector.Options(**options(url, **more)), None, {})
    )
    await connector.open()
    return connector


# -- money ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "amount", "currency"),
    [
        ("$1.00 USD", "1.00", "USD"),
        ("$1,234.56 USD", "1234.56", "USD"),
        ("-$5.00 USD", "-5.00", "USD"),
        ("$-5.00 USD", "-5.00", "USD"),
        ("£12.50 GBP", "12.50", "GBP"),
        ("€1,234.56 EUR", "1234.56", "EUR"),
        ("1234.56 CAD", "1234.56", "CAD"),
        ("¥1200 JPY", "1200", "JPY"),
        ("12.345 KWD", "12.345", "KWD"),
        ("$7.10", "7.10", "USD"),  # no code: the install's currency
        ("1\u00a0234.56 USD".replace("\u00a0", ""), "1234.56", "USD"),
    ],
)
def test_formatted_amounts_become_exact_decimals_and_a_currency(text: str, amount: str, currency: str) -> None:
    assert parse_money(text, UTC_SETTINGS) == (Decimal(amount), currency)


@pytest.mark.parametrize(
    "text",
    [
        "1.234,56 EUR",  # a European install read with the default '.' separator
        "1.234 EUR",  # would silently be 1.234 instead of 1234
        "1,23 USD",
        "12.5 USD",
        "$5.00 EUR",  # symbol and code disagree
        "€5.00 USD",
        "1,2345.00 USD",
        "USD",
        "five dollars",
        "--5.00 USD",
        "-$-5.00 USD",
    ],
)
def test_amounts_that_cannot_be_read_exactly_are_refused_not_guessed(text: str) -> None:
    with pytest.raises(RecordRejected, match="amount"):
        parse_money(text, UTC_SETTINGS)


def test_a_comma_decimal_install_is_read_when_configured() -> None:
    european = MappingSettings(decimal_separator=",", currency="EUR")
    assert parse_money("1.234,56 EUR", european) == (Decimal("1234.56"), "EUR")
    assert parse_money("€1.234.567,00", european) == (Decimal("1234567.00"), "EUR")
    with pytest.raises(RecordRejected):
        parse_money("1,234.56 EUR", european)
    with pytest.raises(RecordRejected, match="install currency is EUR"):
        parse_money("$3,00", european)


def test_simulator_money_format_reads_back_exactly() -> None:
    for value in ("0.00", "1.00", "999.99", "1000.00", "1234567.89", "-42.10"):
        for currency, sep in (("USD", "."), ("EUR", ","), ("GBP", ".")):
            text = format_money(Decimal(value), currency, sep)
            settings = MappingSettings(decimal_separator=sep, currency=currency)
            assert parse_money(text, settings) == (Decimal(value), currency), text


# -- tickets ------------------------------------------------------------------------------------------
def ticket(**meta: Any) -> dict[str, Any]:
    base = {
        "id": "12",
        "userid": "7",
        "userEmail": "ana@example.com",
        "subject": "Cannot log in",
        "status": "1",
        "statusName": "Open",
        "priority": "2",
        "ticket_type": "Billing",
        "assignedToId": "0",
        "dateSubmitted": 1048891366,
        "dateSubmittedFormatted": "2003-03-28 17:42:46",
        "dateUpdated": 1048891400,
    }
    base.update(meta)
    comments = [
        {
            "logid": 1,
            "authorName": "Ana",
            "authorEmail": "ana@example.com",
            "isAdmin": False,
            "createdAt": "03/28/2003 05:42:46 pm",
            "message": "It says my password is wrong.",
        }
    ]
    return {"metadata": base, "comments": comments}


@pytest.mark.parametrize(
    ("code", "status"), [("-1", "closed"), ("1", "open"), ("2", "open"), ("3", "pending"), ("9", "open")]
)
def test_ticket_status_minus_one_is_closed_and_the_name_is_kept(code: str, status: str) -> None:
    fields = ticket_fields(ticket(status=code, statusName="Whatever It Is Called"), UTC_SETTINGS)
    assert fields["status"] == status
    assert fields["extra"]["status"] == code and fields["extra"]["statusName"] == "Whatever It Is Called"


def test_ticket_times_epoch_and_local_formats_become_utc() -> None:
    fields = ticket_fields(ticket(), NEW_YORK)
    record = Ticket.model_validate(fields)
    assert record.created_at == datetime(2003, 3, 28, 22, 42, 46, tzinfo=UTC)  # epoch: no timezone involved
    assert record.updated_at == datetime(2003, 3, 28, 22, 43, 20, tzinfo=UTC)
    # the comment's "05:42:46 pm" is New York time (EST, UTC-5 in March 2003)
    assert record.extra["comments"][0]["createdAt"] == "2003-03-28T22:42:46Z"
    assert record.description == "It says my password is wrong."
    assert (record.requester_key, record.requester_email, record.assignee) == ("7", "ana@example.com", None)

    no_epoch = ticket(dateSubmitted=None, dateUpdated=None)
    fallback = Ticket.model_validate(ticket_fields(no_epoch, NEW_YORK))
    assert fallback.created_at == fallback.updated_at == datetime(2003, 3, 28, 22, 42, 46, tzinfo=UTC)
    summer = Ticket.model_validate(
        ticket_fields(ticket(dateSubmitted=None, dateSubmittedFormatted="2003-07-04 12:00:00"), NEW_YORK)
    )
    assert summer.created_at == datetime(2003, 7, 4, 16, 0, tzinfo=UTC)  # EDT, UTC-4


def test_a_comment_time_in_another_format_is_refused_with_the_expected_format() -> None:
    broken = ticket()
    broken["comments"][0]["createdAt"] = "28.03.2003 17:42"
    with pytest.raises(RecordRejected, match=r"comments\[0\].createdAt.*%m/%d/%Y"):
        ticket_fields(broken, UTC_SETTINGS)


def test_ticket_status_is_written_back_without_flattening_the_installs_own_codes() -> None:
    record = Ticket(key="1", updated_at=utcnow(), subject="s", status="open", priority="normal")
    in_progress = ticket(status="2", priority="2")
    assert ticket_to_native(record, UTC_SETTINGS, create=False, current=in_progress)["status"] == "2"
    assert ticket_to_native(record, UTC_SETTINGS, create=False, current=ticket(status="-1"))["status"] == "1"
    closed = record.model_copy(update={"status": "closed", "priority": "urgent"})
    body = ticket_to_native(closed, UTC_SETTINGS, create=False, current=in_progress)
    assert body["status"] == "-1" and body["priority"] == "1"
    created = ticket_to_native(
        record.model_copy(update={"requester_key": "99", "requester_email": "x@y.example"}), UTC_SETTINGS, create=True
    )
    assert created["email"] == "x@y.example" and "userid" not in created  # never a key from another system


# -- users and invoices ---------------------------------------------------------------------------------
def test_user_fields_and_the_activation_date_in_the_installs_timezone() -> None:
    user = {
        "userid": 5,
        "firstname": "Ana",
        "lastname": "Silva",
        "email": "ana@example.com",
        "phone": "+1 201-555-0100",
        "status": "1",
        "date_activated": "2013-12-31",
        "dateUpdated": 1388534400,
        "local": {
            "organization": "Acme",
            "address": "1 Main St",
            "city": "Austin",
            "state": "TX",
            "zip": "73301",
            "country": "US",
        },
    }
    record = Contact.model_validate(contact_fields(user, NEW_YORK))
    assert record.created_at == datetime(2013, 12, 31, 5, 0, tzinfo=UTC)
    assert (record.organisation, record.street, record.postcode) == ("Acme", "1 Main St", "73301")
    assert record.extra["local.state"] == "TX" and record.extra["status"] == "1"


def test_invoice_fields_money_status_and_local_bill_date() -> None:
    item = {
        "invoiceid": 77,
        "customerid": 5,
        "billdate": "06/14/2017",
        "duedate": "06/28/2017",
        "amount": "$1,001.00 USD",
        "balancedue": "$500.50 USD",
        "billstatus": "partially paid",
        "statusenum": 5,
        "description": "VPS",
        "note": "",
        "dateUpdated": 1497456000,
    }
    record = Invoice.model_validate(invoice_fields(item, NEW_YORK))
    assert (record.amount, record.balance_due, record.currency) == (Decimal("1001.00"), Decimal("500.50"), "USD")
    assert record.status == "partial" and record.number == "77" and record.customer_key == "5"
    assert record.issued_on == date(2017, 6, 14) and record.due_on == date(2017, 6, 28)
    assert record.created_at == datetime(2017, 6, 14, 4, 0, tzinfo=UTC)  # midnight in New York (EDT)
    assert record.extra["billstatus"] == "partially paid"

    assert invoice_fields({**item, "statusenum": None, "billstatus": "not paid"}, UTC_SETTINGS)["status"] == "open"
    with pytest.raises(RecordRejected, match="balancedue is in EUR"):
        invoice_fields({**item, "balancedue": "€1.00 EUR"}, UTC_SETTINGS)


def test_invoice_write_is_plain_and_strict() -> None:
    record = Invoice(
        key="1",
        updated_at=utcnow(),
        customer_key="5",
        amount=Decimal("1234.50"),
        status="paid",
        issued_on=date(2017, 6, 14),
    )
    body = invoice_to_native(record, UTC_SETTINGS, create=True)
    assert body == {"customerid": 5, "amount": "1234.50", "statusenum": 1, "billdate": "06/14/2017"}
    with pytest.raises(RecordRejected, match="invoice_status_codes"):
        invoice_to_native(record.model_copy(update={"status": "closed"}), UTC_SETTINGS, create=True)
    with pytest.raises(RecordRejected, match="not a Clientexec user id"):
        invoice_to_native(record.model_copy(update={"customer_key": "cus_123"}), UTC_SETTINGS, create=True)


# -- against the simulator ------------------------------------------------------------------------------
async def test_a_refused_create_is_a_rejection_carrying_clientexecs_message(sandbox: SimulatorThread) -> None:
    connector = await connect(sandbox.url)
    try:
        taken = next(iter(sandbox.simulator.table("users")))["email"]
        record = Contact(key="x", updated_at=utcnow(), email=taken.upper(), first_name="Dup", last_name="Licate")
        with pytest.raises(
            RecordRejected, match=r"Clientexec refused the new user: The e-mail address .* already in use"
        ):
            await connector.create("contacts", record)
        with pytest.raises(RecordRejected, match="firstname is required"):
            await connector.create("contacts", Contact(key="y", updated_at=utcnow(), email="new@example.com"))
        found = await connector.find("contacts", record)  # found case-insensitively, exactly that user
        assert found is not None and found.email == taken
    finally:
        await connector.close()


async def test_the_key_can_travel_as_a_query_parameter(sandbox: SimulatorThread) -> None:
    connector = await connect(sandbox.url, key_in="query", key_param="apikey")
    try:
        records, _ = await collect(connector.read("contacts", None, 100))
        assert len(records) == 20
    finally:
        await connector.close()
    wrong = await connect(sandbox.url, key_in="query", api_key="nope")
    try:
        with pytest.raises(AuthError, match="HTTP 401"):
            await collect(wrong.read("contacts", None, 100))
    finally:
        await wrong.close()


async def test_a_comma_decimal_install_read_with_the_default_separator_rejects_invoices_instead_of_misreading() -> None:
    sim = ClientexecSimulator(records=15, rate_limit=100_000, decimal_separator=",")
    with SimulatorThread(sim) as thread:
        wrong = await connect(thread.url)
        right = await connect(thread.url, decimal_separator=",")
        try:
            records, rejects = await collect(wrong.read("invoices", None, 100))
            big = [r for r in sim.table("invoices") if r["amount"] >= 1000]
            assert big, "the seed must produce amounts with a thousands separator"
            rejected = {r.key for r in rejects}
            assert {str(r["id"]) for r in big} <= rejected
            assert all("decimal_separator" in r.reason for r in rejects)
            assert all(r.amount == sim.table("invoices").get(int(r.key))["amount"] for r in records)
            good, none = await collect(right.read("invoices", None, 100))
            assert not none and len(good) == 15
            assert all(r.amount == sim.table("invoices").get(int(r.key))["amount"] for r in good)
        finally:
            await wrong.close()
            await right.close()


async def test_the_simulators_own_429_carries_a_reason_and_retry_after_and_is_waited_out() -> None:
    sim = ClientexecSimulator(records=12, rate_limit=2, window=1.0)
    with SimulatorThread(sim) as thread:
        answers = [httpx.get(thread.url + "/api/users", headers={"X-API-Key": KEY}) for _ in range(3)]
        refused = answers[-1]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert refused.headers["Retry-After"].isdigit()
        assert "Too Many Requests" in refused.json()["message"]
        sim.stats.reset()
        connector = await connect(thread.url, backoff_cap=0.2)  # no client-side limit: the server's 429s pace it
        try:
            records, _ = await collect(connector.read("tickets", None, 4))
        finally:
            await connector.close()
        assert len({r.key for r in records}) == 12
        assert sim.stats.throttled > 0 and sim.stats.early_retries == 0


async def test_a_new_york_install_reads_back_in_utc() -> None:
    """The simulator renders local New York times; the connector configured for them gives exact UTC."""
    sim = ClientexecSimulator(records=10, rate_limit=100_000, timezone="America/New_York")
    with SimulatorThread(sim) as thread:
        connector = await connect(thread.url, timezone="America/New_York")
        try:
            tickets, _ = await collect(connector.read("tickets", None, 100))
            users, _ = await collect(connector.read("contacts", None, 100))
        finally:
            await connector.close()
    assert len(tickets) == 10 and len(users) == 10
    for record in tickets:
        native = sim.table("tickets").get(int(record.key))
        stored = [c["createdAt"].strftime("%Y-%m-%dT%H:%M:%SZ") for c in native["comments"]]
        assert [c["createdAt"] for c in record.extra["comments"]] == stored
        assert record.created_at == native["created_at"]
    for record in users:
        activated = (
            sim.table("users").get(int(record.key))["created_at"].astimezone(ZoneInfo("America/New_York")).date()
        )
        assert (
            record.created_at is not None
            and record.created_at.astimezone(ZoneInfo("America/New_York")).date() == activated
        )
        assert record.created_at.hour in (4, 5)
