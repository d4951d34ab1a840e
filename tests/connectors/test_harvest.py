"""The harvest connector and its simulator: the contract kit over loopback, the typed-XML
quirks, exact money, hostile XML, and the invoice walk."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest
import respx

from ferryman.connector import Cursor, SystemContext
from ferryman.errors import FatalError, MalformedResponseError, PagingError, RecordRejected
from ferryman.records import Contact, Invoice, Organisation
from ferryman.sandbox import SimulatorThread
from ferryman.testing import ContractSetup, HostileContract, collect
from ferryman.timeutil import utcnow
from ferryman_connectors.harvest import HarvestConnector, HarvestOptions
from ferryman_connectors.harvest._common import (
    LineItem,
    compose_details,
    currency_code,
    currency_name,
    format_line_items,
    invoice_totals,
    money,
    parse_details,
    parse_line_items,
)
from ferryman_connectors.harvest._mapping import contact_payload, invoice_fields
from ferryman_connectors.harvest.simulator import HarvestSimulator, parse_updated_since, rails_decimal

EMAIL = "api@sandbox.harvest.example"
PASSWORD = "sandbox-password"
AUTH = (EMAIL, PASSWORD)
XML = {"Accept": "application/xml"}
API = "https://acme.harvestapp.example"


def options(url: str, **more: Any) -> dict[str, Any]:
    # Faster than Harvest's 100/15 s so the suite stays short; each test has its own simulator
    # and stays far below 100 requests. tests/e2e/test_harvest_cli.py proves the default budget.
    return {"base_url": url, "email": EMAIL, "password": PASSWORD, "rate_limit": "25/s", **more}


# -- the contract kit --------------------------------------------------------------------------


class TestHarvestContract(HostileContract):
    @pytest.fixture
    def contract(self) -> ContractSetup:
        return ContractSetup(
            connector="harvest",
            simulator="harvest",
            # Small invoice pages, so reads walk several pages (and the fault draws meet them).
            simulator_kwargs={"records": 30, "seed": 7, "page_size": 5},
            options=lambda url: options(url, invoice_page_size=5),
            bad_options=lambda url: options(url, password="not-the-password"),
            streams=["invoices", "contacts", "organisations"],
            samples={
                "contacts": lambda n: Contact(
                    key=f"new-{n}",
                    updated_at=utcnow(),
                    email=f"contract{n}@example.net",
                    first_name="Ada",
                    last_name=f"Lovelace {n}",
                    title="CTO",
                    phone="+1 201-555-0100",
                    mobile="+44 7700 900123",
                    organisation_key="1",
                ),
                "organisations": lambda n: Organisation(
                    key=f"new-{n}",
                    updated_at=utcnow(),
                    name=f"Contract Co {n}",
                    street="1 Main Street",
                    postcode="12345",
                    city="Springfield",
                    country="US",
                ),
                "invoices": lambda n: Invoice(
                    key=f"new-{n}",
                    updated_at=utcnow(),
                    number=f"C-{n}",
                    customer_key="1",
                    amount=Decimal("1234.56"),
                    currency="EUR",
                    status="open",
                    subject=f"Contract invoice {n}",
                    notes="Net 30",
                    issued_on=date(2025, 5, 1),
                    due_on=date(2025, 5, 31),
                ),
            },
            burst_status=503,
        )


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def sandbox() -> Iterator[SimulatorThread]:
    with SimulatorThread(HarvestSimulator(records=60, seed=11)) as running:
        yield running


@pytest.fixture
async def harvest(sandbox: SimulatorThread) -> AsyncIterator[HarvestConnector]:
    async with connected(sandbox.url) as connector:
        yield connector


class connected:
    def __init__(self, url: str, **more: Any) -> None:
        opts = HarvestOptions.model_validate(options(url, **more))
        self.connector = HarvestConnector(SystemContext("harvest", opts, None, {}))

    async def __aenter__(self) -> HarvestConnector:
        await self.connector.open()
        return self.connector

    async def __aexit__(self, *exc: object) -> None:
        await self.connector.close()


def get(sandbox: SimulatorThread, path: str, **params: Any) -> httpx.Response:
    return httpx.get(sandbox.url + path, params=params, auth=AUTH, headers=XML, timeout=10)


def send(sandbox: SimulatorThread, method: str, path: str, body: bytes | str) -> httpx.Response:
    headers = {**XML, "Content-Type": "application/xml"}
    return httpx.request(method, sandbox.url + path, content=body, auth=AUTH, headers=headers, timeout=10)


def error_messages(response: httpx.Response) -> list[str]:
    root = ET.fromstring(response.content)
    assert root.tag == "errors"
    return [e.text or "" for e in root.iter("error")]


def xml_list(tag: str, *entities: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><{tag}s type="array">{"".join(entities)}</{tag}s>'.encode()


def contact_xml(id: int, updated: str, email: str = "a@example.net", **extra: str) -> str:
    fields = "".join(f"<{k}>{v}</{k}>" for k, v in extra.items())
    return (
        f'<contact><id type="integer">{id}</id><client-id type="integer">1</client-id><email>{email}</email>'
        f"<first-name>Jane</first-name><last-name>Doe</last-name>{fields}"
        f'<updated-at type="datetime">{updated}</updated-at></contact>'
    )


# -- pure mapping --------------------------------------------------------------------------------


def test_default_client_rate_limit_is_harvests_budget() -> None:
    opts = HarvestOptions.model_validate({"base_url": API, "email": EMAIL, "password": PASSWORD})
    assert opts.rate_limit is not None
    assert (opts.rate_limit.requests, opts.rate_limit.per) == (100, 15)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("United States Dollar - USD", "USD"),
        ("United States Dollars - USD", "USD"),
        ("Euro - EUR", "EUR"),
        ("GBP", "GBP"),
        ("Swiss Franc (CHF)", "CHF"),
        ("euro", None),
        ("", None),
    ],
)
def test_currency_code_comes_from_harvests_text(text: str, code: str | None) -> None:
    assert currency_code(text) == code


def test_currency_is_written_the_way_harvest_names_it() -> None:
    assert currency_name("USD") == "United States Dollar - USD"
    assert currency_name("XYZ") == "XYZ"


@pytest.mark.parametrize(
    ("native", "canonical"),
    [("100.0", "100.00"), ("0.3", "0.30"), ("1234.56", "1234.56"), ("7", "7.00"), ("1.005", "1.005")],
)
def test_money_is_exact_with_at_least_two_decimals(native: str, canonical: str) -> None:
    assert format(money(Decimal(native)), "f") == canonical


def test_line_items_add_up_in_decimal_not_float() -> None:
    lines = [
        LineItem("Product", "a", Decimal("1"), Decimal("0.10")),
        LineItem("Product", "b", Decimal("1"), Decimal("0.20")),
    ]
    assert format(invoice_totals(lines).amount, "f") == "0.30"
    widgets = [LineItem("Product", "widget", Decimal("3"), Decimal("19.99"))]
    assert format(invoice_totals(widgets).amount, "f") == "59.97"
    taxed = [LineItem("Product", "widget", Decimal("7"), Decimal("19.99"), taxed=True)]
    totals = invoice_totals(taxed, tax=Decimal("20"))
    assert (format(totals.subtotal, "f"), format(totals.tax_amount, "f"), format(totals.amount, "f")) == (
        "139.93",
        "27.99",
        "167.92",
    )
    text = format_line_items(widgets + lines)
    assert parse_line_items(text) == widgets + lines


def test_bad_line_items_name_the_line() -> None:
    with pytest.raises(ValueError, match="line 3: quantity"):
        parse_line_items("kind,description,quantity,unit_price\nService,a,1,2\nService,b,x,2\n")


def test_client_details_round_trip_as_an_address() -> None:
    text = compose_details("1 Main Street", "12345", "Springfield", "US")
    assert text == "1 Main Street\n12345 Springfield\nUS"
    assert parse_details(text) == {
        "street": "1 Main Street",
        "postcode": "12345",
        "city": "Springfield",
        "country": "US",
    }
    # Harvest's own example: kept whole, nothing invented.
    assert parse_details("123 Main St.\nAnytown, NY 12345") == {
        "street": "123 Main St.",
        "postcode": None,
        "city": "Anytown, NY 12345",
        "country": None,
    }


def test_invoice_fields_keep_money_exact_and_extract_the_iso_code() -> None:
    native = {
        "id": 7,
        "client-id": 3,
        "number": "1007",
        "amount": Decimal("100.0"),
        "due-amount": Decimal("0.3"),
        "currency": "United States Dollar - USD",
        "state": "partial",
        "issued-at": date(2025, 1, 2),
        "due-at": date(2025, 2, 1),
        "tax": Decimal("8.875"),
        "updated-at": datetime(2025, 1, 3, 4, 5, 6, tzinfo=UTC),
    }
    fields = invoice_fields(native, {3: "Acme Ltd"})
    record = Invoice.model_validate(fields)
    assert (format(record.amount or 0, "f"), format(record.balance_due or 0, "f")) == ("100.00", "0.30")
    assert (record.currency, record.status, record.customer_name) == ("USD", "partial", "Acme Ltd")
    assert record.extra["tax"] == "8.875"  # exact, as a string: never a float


def test_contact_payload_leaves_empty_fields_alone_unless_told() -> None:
    record = Contact(key="1", updated_at=utcnow(), email="x@example.net", first_name="X", last_name="Y")
    assert "title" not in contact_payload(record, 4, clear_empty=False, create=False)
    assert contact_payload(record, 4, clear_empty=True, create=False)["title"] is None
    with pytest.raises(RecordRejected, match="first-name"):
        contact_payload(record.model_copy(update={"first_name": None}), 4, clear_empty=False, create=True)


def test_updated_since_layouts_the_simulator_accepts() -> None:
    assert parse_updated_since("2010-09-25 18:30") == datetime(2010, 9, 25, 18, 30, tzinfo=UTC)
    assert parse_updated_since("2010-09-25T18:30:05Z") == datetime(2010, 9, 25, 18, 30, 5, tzinfo=UTC)
    assert str(rails_decimal(Decimal("100.00"))) == "100.0"
    assert str(rails_decimal(Decimal("0.30"))) == "0.3"


# -- the wire, with respx ------------------------------------------------------------------------


@respx.mock
async def test_updated_since_is_sent_as_harvests_utc_minute_and_older_rows_are_dropped() -> None:
    route = respx.get(f"{API}/contacts").mock(
        return_value=httpx.Response(
            200,
            content=xml_list(
                "contact",
                contact_xml(1, "2010-09-25T18:29:59Z"),  # the API's minute granularity sends older rows too
                contact_xml(2, "2010-09-25T18:30:20Z", "b@example.net"),
                contact_xml(3, "2010-09-25T18:31:00Z", "c@example.net"),
            ),
        )
    )
    async with connected(API, resolve_client_names=False) as harvest:
        since = Cursor(datetime(2010, 9, 25, 18, 30, 20, tzinfo=UTC), "2")
        records, _ = await collect(harvest.read("contacts", since, 10))
        assert "updated_since=2010-09-25+18%3A30" in str(route.calls.last.request.url)
        assert [r.key for r in records] == ["2", "3"]
        # A cursor exactly on the minute asks from the minute before: right whether Harvest uses > or >=.
        await collect(harvest.read("contacts", Cursor(datetime(2010, 9, 25, 18, 30, tzinfo=UTC), ""), 10))
        assert "updated_since=2010-09-25+18%3A29" in str(route.calls.last.request.url)
        request = route.calls.last.request
        assert request.headers["accept"] == "application/xml"
        assert request.headers["authorization"].startswith("Basic ")


@respx.mock
async def test_one_bad_entity_is_rejected_with_its_id_and_the_rest_delivered() -> None:
    respx.get(f"{API}/contacts").mock(
        return_value=httpx.Response(
            200,
            content=xml_list(
                "contact",
                contact_xml(1, "2025-01-01T00:00:00Z"),
                contact_xml(2, "yesterday", "b@example.net"),
                contact_xml(3, "2025-01-01T00:00:00Z", "c@example.net").replace(
                    '<client-id type="integer">1', '<client-id type="integer">one'
                ),
            ),
        )
    )
    async with connected(API, resolve_client_names=False) as harvest:
        records, rejects = await collect(harvest.read("contacts", None, 10))
        assert [r.key for r in records] == ["1"]
        by_key = {r.key: r for r in rejects}
        assert set(by_key) == {"2", "3"}
        assert "<updated-at> is not a valid datetime" in by_key["2"].reason
        assert "<client-id> is not a valid integer" in by_key["3"].reason and by_key["3"].ref == "contact 3"
        assert "<client-id" in by_key["3"].raw  # the native XML is kept for the dead letter
        # Read again from a later cursor: the old bad entity is not dead-lettered a second time;
        # the one whose time cannot be read cannot be placed, so it is.
        later = Cursor(datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC), "")
        _, again = await collect(harvest.read("contacts", later, 10))
        assert {r.key for r in again} == {"2"}


@respx.mock
async def test_a_bad_decimal_rejects_that_invoice_only() -> None:
    good = (
        '<invoice><id type="integer">1</id><amount type="decimal">12.5</amount><number>1</number>'
        '<updated-at type="datetime">2025-01-01T00:00:00Z</updated-at></invoice>'
    )
    bad = good.replace(">1</id>", ">2</id>").replace("12.5", "12,50")
    respx.get(f"{API}/invoices").mock(return_value=httpx.Response(200, content=xml_list("invoice", good, bad)))
    async with connected(API, resolve_client_names=False) as harvest:
        records, rejects = await collect(harvest.read("invoices", None, 10))
    assert [(r.key, format(r.amount, "f")) for r in records if isinstance(r, Invoice) and r.amount] == [("1", "12.50")]
    [reject] = rejects
    assert reject.key == "2" and "<amount> is not a valid decimal" in reject.reason and "12,50" in reject.reason


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode() for i in range(1, 10)
    )
    + b']><contacts type="array"><contact><email>&lol9;</email></contact></contacts>'
)
XXE = (
    b'<?xml version="1.0"?><!DOCTYPE c [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b'<contacts type="array"><contact><email>&xxe;</email></contact></contacts>'
)


@pytest.mark.parametrize(("body", "why"), [(BILLION_LAUGHS, "entity declarations"), (XXE, "entity declarations")])
@respx.mock
async def test_hostile_xml_is_refused_with_a_clear_error_and_no_memory_blow_up(body: bytes, why: str) -> None:
    respx.get(f"{API}/contacts").mock(return_value=httpx.Response(200, content=body))
    async with connected(API, max_retries=1, backoff_base=0.01, backoff_cap=0.01) as harvest:
        tracemalloc.start()
        try:
            with pytest.raises(MalformedResponseError) as failure:
                await collect(harvest.read("contacts", None, 10))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    message = str(failure.value)
    assert f"XML refused: {why} are not allowed" in message and "GET" in message and "/contacts" in message
    assert "root:" not in message  # /etc/passwd was never read
    assert peak < 5_000_000, f"parsing took {peak} bytes"


@respx.mock
async def test_a_create_without_location_is_not_taken_for_success() -> None:
    respx.get(f"{API}/clients").mock(return_value=httpx.Response(200, content=b'<clients type="array"/>'))
    respx.post(f"{API}/clients").mock(return_value=httpx.Response(201))
    async with connected(API) as harvest:
        with pytest.raises(MalformedResponseError, match="without the new id in Location"):
            await harvest.create("organisations", Organisation(key="n", updated_at=utcnow(), name="X"))


@respx.mock
async def test_a_create_answered_without_any_id_is_found_by_its_natural_key_not_rejected() -> None:
    client = (
        '<client><id type="integer">77</id><name>Found Co</name>'
        '<updated-at type="dateTime">2025-01-01T00:00:00+00:00</updated-at></client>'
    )
    respx.get(f"{API}/clients").mock(return_value=httpx.Response(200, content=xml_list("client", client)))
    respx.get(f"{API}/clients/77").mock(return_value=httpx.Response(200, content=client.encode()))
    respx.post(f"{API}/clients").mock(return_value=httpx.Response(201))  # a 2xx with no id anywhere
    async with connected(API) as harvest:
        created = await harvest.create("organisations", Organisation(key="n", updated_at=utcnow(), name="Found Co"))
    assert isinstance(created, Organisation) and (created.key, created.name) == ("77", "Found Co")


@respx.mock
async def test_a_redirect_to_the_login_page_stops_the_run() -> None:
    respx.get(f"{API}/contacts").mock(return_value=httpx.Response(302, headers={"Location": "/account/login"}))
    async with connected(API) as harvest:
        with pytest.raises(FatalError, match="redirected"):
            await collect(harvest.read("contacts", None, 10))


@respx.mock
async def test_a_server_that_ignores_page_is_caught_not_looped() -> None:
    page = xml_list(
        "invoice",
        *(
            f'<invoice><id type="integer">{i}</id><updated-at type="datetime">2025-01-01T00:00:00Z</updated-at></invoice>'
            for i in range(1, 4)
        ),
    )
    respx.get(f"{API}/invoices").mock(return_value=httpx.Response(200, content=page))
    async with connected(API, invoice_page_size=3, resolve_client_names=False, max_retries=0) as harvest:
        # The read loop's PageGuard: a FatalError naming the request, not a retried malformed body.
        with pytest.raises(PagingError, match=r"page 2 repeats the page before it \(GET /invoices\?page=2\)"):
            await collect(harvest.read("invoices", None, 10))


# -- the simulator ---------------------------------------------------------------------------------


def test_simulator_writes_answer_as_harvest_does(sandbox: SimulatorThread) -> None:
    body = (
        '<contact><client-id type="integer">2</client-id><email>Jane@Doe.example</email>'
        "<first-name>Jane</first-name><last-name>Doe</last-name><phone-office>555.555.5555</phone-office>"
        "<phone-mobile>555.555.7777</phone-mobile><fax>555.555.9999</fax></contact>"
    )
    created = send(sandbox, "POST", "/contacts", body)
    assert created.status_code == 201
    location = created.headers["Location"]
    assert location.startswith("/contacts/")
    # PUT changes the attributes sent, and no others.
    updated = send(sandbox, "PUT", location, "<contact><email>Jane@JaneDoe.example</email></contact>")
    assert updated.status_code == 200 and updated.headers["Location"] == location
    contact = ET.fromstring(get(sandbox, location).content)
    assert contact.findtext("email") == "Jane@JaneDoe.example"
    assert contact.findtext("phone-mobile") == "555.555.7777" and contact.findtext("fax") == "555.555.9999"
    assert contact.find("updated-at").get("type") == "dateTime"  # type: ignore[union-attr]  # as real Harvest
    assert contact.findtext("updated-at", "").endswith("Z")
    assert send(sandbox, "DELETE", location, "").status_code == 200
    assert get(sandbox, location).status_code == 404

    refused = send(sandbox, "POST", "/contacts", "<contact><email>x@example.net</email></contact>")
    assert refused.status_code == 422
    assert {"Client id can't be blank", "First name can't be blank"} <= set(error_messages(refused))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<contact><first-name>Jane</first-name>", "Malformed XML"),
        (BILLION_LAUGHS.replace(b"contacts", b"contact_list"), "entity declarations are not allowed"),
        (XXE, "entity declarations are not allowed"),
        (b'<contact><client-id type="integer">two</client-id></contact>', "not a valid integer"),
    ],
)
def test_simulator_refuses_bad_xml_with_an_xml_error(sandbox: SimulatorThread, body: bytes, expected: str) -> None:
    response = send(sandbox, "POST", "/contacts", body)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/xml")
    assert any(expected in m for m in error_messages(response))
    assert get(sandbox, "/contacts/1").status_code == 200  # still serving


def test_simulator_asks_for_xml_and_basic_auth(sandbox: SimulatorThread) -> None:
    no_accept = httpx.get(sandbox.url + "/contacts", auth=AUTH, follow_redirects=False)
    assert no_accept.status_code == 302 and no_accept.headers["Location"] == "/account/login"
    wrong = httpx.get(sandbox.url + "/contacts", auth=(EMAIL, "nope"), headers=XML)
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Basic")
    json_body = httpx.post(
        sandbox.url + "/contacts", auth=AUTH, headers=XML, json={"contact": {"first-name": "J"}}, timeout=10
    )
    assert json_body.status_code == 415


def test_simulator_throttles_past_100_in_15_seconds_with_503() -> None:
    simulator = HarvestSimulator(records=3)
    assert (simulator.rate_limit, simulator.window, simulator.rate_limit_status) == (100, 15.0, 503)
    with SimulatorThread(HarvestSimulator(records=3, rate_limit=5)) as small:
        statuses = [get(small, "/clients").status_code for _ in range(6)]
        assert statuses == [200] * 5 + [503]
        refused = get(small, "/clients")
        assert refused.status_code == 503 and 1 <= int(refused.headers["Retry-After"]) <= 15
        assert "Rate limit exceeded" in error_messages(refused)[0]


def test_simulator_pages_invoices_50_at_a_time_and_not_in_updated_order() -> None:
    with SimulatorThread(HarvestSimulator(records=120, seed=4)) as sim:
        pages = [ET.fromstring(get(sim, "/invoices", page=n).content) for n in (1, 2, 3, 4)]
        assert [len(p) for p in pages] == [50, 50, 20, 0]
        stamps = [inv.findtext("updated-at") or "" for p in pages for inv in p]
        assert stamps != sorted(stamps), "the walk order must not be updated_at order, or sorting is untested"
        assert all(p.get("type") == "array" and p.tag == "invoices" for p in pages[:3])
        assert pages[3].tag == "nil-classes" and pages[3].get("type") == "array"  # Rails' empty list
        since = sorted(stamps)[60]
        minute = since[:16].replace("T", " ")  # Harvest's layout: 2010-09-25 18:30
        newer = [
            inv for n in (1, 2) for inv in ET.fromstring(get(sim, "/invoices", updated_since=minute, page=n).content)
        ]
        assert len(newer) < 100
        assert {i.findtext("updated-at") for i in newer} >= {s for s in stamps if s >= since}
        assert all((i.findtext("updated-at") or "")[:16] >= since[:16] for i in newer)


# -- money and invoice state, through the connector --------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "lines", "expected"),
    [
        (Decimal("1234.56"), None, "1234.56"),
        (Decimal("0.30"), "Product,dime,1,0.10\nProduct,two dimes,1,0.20", "0.30"),
        (Decimal("59.97"), "Product,widget,3,19.99", "59.97"),
        (None, "Product,widget,7,19.99", "139.93"),
        (Decimal("0.01"), None, "0.01"),
        (Decimal("99999999.99"), None, "99999999.99"),
    ],
)
async def test_money_survives_harvest_xml_to_the_cent(
    harvest: HarvestConnector, sandbox: SimulatorThread, amount: Decimal | None, lines: str | None, expected: str
) -> None:
    extra = {"csv-line-items": "kind,description,quantity,unit_price\n" + lines} if lines else {}
    record = Invoice(
        key="m", updated_at=utcnow(), customer_key="1", amount=amount, currency="USD", subject="money", extra=extra
    )
    created = await harvest.create("invoices", record)
    assert isinstance(created, Invoice) and created.amount is not None
    assert format(created.amount, "f") == expected
    raw = ET.fromstring(get(sandbox, f"/invoices/{created.key}").content).find("amount")
    assert raw is not None and raw.get("type") == "decimal"
    assert Decimal(raw.text or "") == Decimal(expected)  # on the wire: Rails' 100.0, exact


async def test_line_items_that_contradict_the_amount_are_refused_before_writing(
    harvest: HarvestConnector, sandbox: SimulatorThread
) -> None:
    before = len(sandbox.simulator.table("invoices"))
    record = Invoice(
        key="m",
        updated_at=utcnow(),
        customer_key="1",
        amount=Decimal("60.00"),
        extra={"csv-line-items": "kind,description,quantity,unit_price\nProduct,widget,3,19.99"},
    )
    with pytest.raises(RecordRejected, match=r"add up to 59\.97 but amount is 60\.00"):
        await harvest.create("invoices", record)
    assert len(sandbox.simulator.table("invoices")) == before


async def test_invoice_state_and_balance_follow_the_record_without_paying_twice(
    harvest: HarvestConnector, sandbox: SimulatorThread
) -> None:
    record = Invoice(
        key="s",
        updated_at=utcnow(),
        number="S-1",
        customer_key="2",
        amount=Decimal("1234.56"),
        balance_due=Decimal("234.56"),
        status="partial",
    )
    created = await harvest.create("invoices", record)
    assert isinstance(created, Invoice)
    assert (created.status, format(created.balance_due, "f") if created.balance_due is not None else None) == (
        "partial",
        "234.56",
    )
    paid = record.model_copy(update={"status": "paid", "balance_due": None})
    for _ in range(2):  # an update repeated (a replay, a re-run) pays nothing more
        stored = await harvest.update("invoices", created.key, paid)
        assert isinstance(stored, Invoice)
        assert (stored.status, format(stored.balance_due, "f") if stored.balance_due is not None else None) == (
            "paid",
            "0.00",
        )
    row = sandbox.simulator.table("invoices").get(int(created.key))
    assert row is not None and [format(p["amount"], "f") for p in row["_payments"]] == ["1000.00", "234.56"]
    closed = await harvest.update("invoices", created.key, paid.model_copy(update={"status": "void"}))
    assert isinstance(closed, Invoice) and closed.status == "closed"
    with pytest.raises(RecordRejected, match="cannot raise"):
        await harvest.update("invoices", created.key, record.model_copy(update={"status": "open"}))


async def test_contacts_and_invoices_find_their_client_by_name(
    harvest: HarvestConnector, sandbox: SimulatorThread
) -> None:
    org = await harvest.create("organisations", Organisation(key="o", updated_at=utcnow(), name="Ferryman Test Co"))
    contact = await harvest.create(
        "contacts",
        Contact(
            key="c",
            updated_at=utcnow(),
            email="pat@ferryman-test.example",
            first_name="Pat",
            last_name="Lee",
            organisation="Ferryman Test Co",
            organisation_key="999999",  # another system's id: the name wins
        ),
    )
    assert isinstance(contact, Contact)
    assert (contact.organisation, contact.organisation_key) == ("Ferryman Test Co", org.key)
    with pytest.raises(RecordRejected, match="no client named 'Nobody Ltd'"):
        await harvest.create(
            "invoices",
            Invoice(key="i", updated_at=utcnow(), customer_name="Nobody Ltd", amount=Decimal("1.00")),
        )
    with pytest.raises(RecordRejected, match="Email is invalid"):
        await harvest.create(
            "contacts",
            Contact(
                key="x", updated_at=utcnow(), email="not-an-email", first_name="A", last_name="B", organisation_key="1"
            ),
        )


async def test_clients_with_invoices_cannot_be_deleted(harvest: HarvestConnector, sandbox: SimulatorThread) -> None:
    invoice = sandbox.simulator.table("invoices").get(1)
    assert invoice is not None
    with pytest.raises(RecordRejected, match="has invoices"):
        await harvest.delete("organisations", str(invoice["client-id"]))


class _InsertDuringWalk(HarvestSimulator):
    """Adds a new invoice (issued tomorrow: it lands on page 1) while the client reads page 2."""

    inserted = False

    async def list_invoices(self, request: Any) -> Any:
        if request.query.get("page") == "2" and not self.inserted:
            self.inserted = True
            table = self.table("invoices")
            template = table.get(1)
            assert template is not None
            copy = {k: v for k, v in template.items() if k not in ("id", "created_at", "updated_at")}
            table.insert({**copy, "number": "LATE-1", "issued-at": utcnow().date() + timedelta(days=1)})
        return await super().list_invoices(request)


async def test_an_invoice_added_during_a_paged_walk_is_not_lost() -> None:
    with SimulatorThread(_InsertDuringWalk(records=120, seed=2)) as sim:
        async with connected(sim.url) as harvest:
            records, _ = await collect(harvest.read("invoices", None, 500))
    numbers = [r.number for r in records if isinstance(r, Invoice)]
    assert "LATE-1" in numbers, "the sweep after the walk must pick up what moved while paging"
    assert len(numbers) == len(set(numbers)) == 121
    assert records == sorted(records, key=lambda r: (r.updated_at, int(r.key)))
