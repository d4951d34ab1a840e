"""Harvest as the real v1 API answers: one test per fact in shared/seeds/README.md ("Verified
against the real systems"), each proving the simulator behaves that way and the connector reads
and writes correctly against it; and every recorded response in tests/fixtures/recorded/harvest/ parsed
by the connector's mapping into a canonical record written out by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest
import respx

from ferryman.cursor import Cursor
from ferryman.errors import AuthError, RecordRejected
from ferryman.http.codecs import parse_xml, typed_xml_to_python
from ferryman.records import Contact, Invoice, Organisation
from ferryman.sandbox import SimulatorThread
from ferryman.testing import collect
from ferryman.timeutil import utcnow
from ferryman_connectors.harvest._common import due_from_terms, term_days, terms_for
from ferryman_connectors.harvest._mapping import invoice_fields
from ferryman_connectors.harvest.simulator import HarvestSimulator
from tests.fixtures import RECORDED

from .test_harvest import API, connected, contact_xml, get, send, xml_list

FIXTURES = RECORDED / "harvest"
BOM = b"\xef\xbb\xbf"


def _whole(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


# -- typed XML -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["dateTime", "datetime"])
async def test_real_xml_types_datetimes_as_dateTime_and_datetime(spelling: str) -> None:
    with SimulatorThread(HarvestSimulator(records=12, seed=3, page_size=5, datetime_type=spelling)) as sim:
        raw = ET.fromstring(get(sim, "/contacts/1").content)
        assert raw.find("updated-at").get("type") == spelling  # type: ignore[union-attr]
        async with connected(sim.url, invoice_page_size=5) as harvest:
            for stream, table in (("contacts", "contacts"), ("organisations", "clients"), ("invoices", "invoices")):
                records, rejects = await collect(harvest.read(stream, None, 50))
                assert not rejects, f"{stream}: {rejects[:1]}"
                rows = sim.simulator.table(table)
                assert {r.key for r in records} == {str(row["id"]) for row in rows}
                assert {r.key: r.updated_at for r in records} == {
                    str(row["id"]): _whole(row["updated_at"]) for row in rows
                }


def test_the_simulator_types_datetimes_as_dateTime_by_default() -> None:
    assert HarvestSimulator(records=1).datetime_type == "dateTime"


async def test_nil_elements_may_be_self_closing() -> None:
    with SimulatorThread(HarvestSimulator(records=20, seed=3)) as sim:
        body = get(sim, "/contacts").content
        assert b'nil="true" />' in body and b'nil="true"></' not in body
        async with connected(sim.url) as harvest:
            records, rejects = await collect(harvest.read("contacts", None, 50))
        assert not rejects
        without_fax = {str(r["id"]) for r in sim.simulator.table("contacts") if r["fax"] is None}
        assert without_fax and all(
            "fax" not in r.extra or r.extra["fax"] is None for r in records if r.key in without_fax
        )
    # Both spellings in one body, as recorded (fixtures/harvest/clients.xml has the long one).
    mixed = contact_xml(7, "2025-01-01T00:00:00Z").replace(
        "</last-name>", '</last-name><title nil="true"/><phone-office nil="true"></phone-office>'
    )
    with respx.mock:
        respx.get(f"{API}/contacts").mock(return_value=httpx.Response(200, content=xml_list("contact", mixed)))
        async with connected(API, resolve_client_names=False) as harvest:
            [record], rejects = await collect(harvest.read("contacts", None, 10))
    assert not rejects and isinstance(record, Contact)
    assert (record.key, record.title, record.phone) == ("7", None, None)


async def test_an_empty_list_is_nil_classes() -> None:
    with SimulatorThread(HarvestSimulator(records=8, seed=3)) as sim:
        future = (utcnow() + timedelta(days=2)).strftime("%Y-%m-%d %H:%M")
        for path in ("/contacts", "/clients", "/invoices"):
            body = get(sim, path, updated_since=future).content
            root = ET.fromstring(body)
            assert (root.tag, root.get("type"), len(root)) == ("nil-classes", "array", 0), path
        async with connected(sim.url) as harvest:
            since_tomorrow = (utcnow() + timedelta(days=2)).replace(microsecond=0)
            for stream in ("contacts", "organisations", "invoices"):
                records, rejects = await collect(harvest.read(stream, Cursor(since_tomorrow, ""), 10))
                assert (records, rejects) == ([], []), stream


async def test_a_utf8_bom_and_plus_00_00_offsets_occur() -> None:
    with SimulatorThread(HarvestSimulator(records=10, seed=5, bom=True, utc_offset="+00:00")) as sim:
        body = get(sim, "/invoices").content
        assert body.startswith(BOM) and b"+00:00</updated-at>" in body and b"Z</updated-at>" not in body
        async with connected(sim.url) as harvest:
            records, rejects = await collect(harvest.read("invoices", None, 50))
        assert not rejects
        rows = {str(row["id"]): _whole(row["updated_at"]) for row in sim.simulator.table("invoices")}
        assert {r.key: r.updated_at for r in records} == rows
        assert all(r.updated_at.tzinfo is UTC for r in records)


# -- currencies ------------------------------------------------------------------------------------


def test_currency_values_are_harvests_names_matched_by_iso_code() -> None:
    stamp = datetime(2025, 1, 1, tzinfo=UTC)
    for text, code in (
        ("United States Dollars - USD", "USD"),
        ("United States Dollar - USD", "USD"),
        ("United Kingdom Pound - GBP", "GBP"),
        ("British Pound - GBP", "GBP"),
    ):
        fields = invoice_fields({"id": 1, "currency": text, "updated-at": stamp}, {})
        assert Invoice.model_validate(fields).currency == code, text


async def test_currency_old_names_are_read_and_only_listed_names_are_written() -> None:
    with SimulatorThread(HarvestSimulator(records=40, seed=3)) as sim:
        table = sim.simulator.table("clients")
        names = {row["currency"] for row in table}
        assert {"United States Dollars - USD", "United States Dollar - USD"} <= names  # older and newer accounts
        legacy = next(row for row in table if row["currency"] == "United States Dollars - USD")
        # The simulator takes only Harvest's listed names, as Harvest does.
        for refused in ("USD", "United States Dollars - USD", "Dollars"):
            answer = send(sim, "PUT", f"/clients/{legacy['id']}", f"<client><currency>{refused}</currency></client>")
            assert answer.status_code == 422, refused
        async with connected(sim.url) as harvest:
            invoices, rejects = await collect(harvest.read("invoices", None, 100))
            assert not rejects and {r.currency for r in invoices if isinstance(r, Invoice)} <= {"USD", "EUR", "GBP"}
            org = await harvest.get("organisations", str(legacy["id"]))
            assert isinstance(org, Organisation) and org.extra["currency"] == "United States Dollars - USD"
            # Writing back an organisation read with an old name sends today's name for its code.
            saved = await harvest.update("organisations", org.key, org.model_copy(update={"city": "Cork"}))
            assert saved.extra["currency"] == "United States Dollar - USD"
            created = await harvest.create(
                "invoices",
                Invoice(key="g", updated_at=utcnow(), customer_key="1", amount=Decimal("10.00"), currency="GBP"),
            )
            assert isinstance(created, Invoice) and created.currency == "GBP"
            stored = sim.simulator.table("invoices").get(int(created.key))
            assert stored is not None and stored["currency"] == "British Pound - GBP"
            before = len(sim.simulator.table("invoices"))
            with pytest.raises(RecordRejected, match="accepts only the currencies it lists"):
                await harvest.create(
                    "invoices",
                    Invoice(key="x", updated_at=utcnow(), customer_key="1", amount=Decimal("1.00"), currency="XYZ"),
                )
            assert len(sim.simulator.table("invoices")) == before


# -- 404 ---------------------------------------------------------------------------------------------


async def test_a_404_on_a_linked_record_is_not_taken_as_deleted_without_a_second_probe() -> None:
    with SimulatorThread(HarvestSimulator(records=6, seed=3, unprivileged={"invoices"})) as sim:
        assert get(sim, "/invoices/1").status_code == 404  # Harvest's answer for "not yours to see"
        async with connected(sim.url) as harvest:
            with pytest.raises(AuthError, match="privileges"):
                await harvest.get("invoices", "1")
            # A contact really deleted: the second probe agrees, so it is gone.
            assert send(sim, "DELETE", "/contacts/2", "").status_code == 200
            assert await harvest.get("contacts", "2") is None
            assert await harvest.get("contacts", "3") is not None
    # Listed, yet its GET answers 404: not gone, whatever the item says.
    with respx.mock:
        respx.get(f"{API}/contacts/5").mock(return_value=httpx.Response(404))
        respx.get(f"{API}/contacts").mock(
            return_value=httpx.Response(200, content=xml_list("contact", contact_xml(5, "2025-01-01T00:00:00Z")))
        )
        async with connected(API, resolve_client_names=False) as harvest:
            with pytest.raises(AuthError, match="in GET /contacts: not taken as deleted"):
                await harvest.get("contacts", "5")


# -- due-at-human-format -------------------------------------------------------------------------------


def test_due_at_human_format_terms() -> None:
    issued = date(2025, 3, 1)
    assert [term_days(t) for t in ("upon receipt", "net 15", "Net 30", "net 45", "net 60", "custom")] == [
        0,
        15,
        30,
        45,
        60,
        None,
    ]
    assert [term_days(t) for t in ("30 days", "due upon receipt")] == [30, 0]  # older data
    assert due_from_terms(issued, date(2025, 3, 9), "net 15") == date(2025, 3, 16)
    assert due_from_terms(issued, date(2025, 3, 9), "custom") == date(2025, 3, 9)
    assert terms_for(issued, date(2025, 3, 31)) == "net 30"
    assert terms_for(issued, issued) == "upon receipt"
    assert terms_for(issued, date(2025, 3, 9)) == terms_for(None, issued) == "custom"


async def test_due_at_human_format_overrides_due_at_and_is_written_with_due_at() -> None:
    with SimulatorThread(HarvestSimulator(records=30, seed=3)) as sim:
        table = sim.simulator.table("invoices")
        row = next(r for r in table if r["due-at-human-format"] in ("net 30", "30 days"))
        issued = row["issued-at"]
        # The simulator: due-at sent alone does not move a "net 30" invoice.
        answer = send(sim, "PUT", f"/invoices/{row['id']}", f'<invoice><due-at type="date">{issued}</due-at></invoice>')
        kept = table.get(row["id"])
        assert answer.status_code == 200 and kept is not None and kept["due-at"] == issued + timedelta(days=30)
        async with connected(sim.url) as harvest:
            record = await harvest.get("invoices", str(row["id"]))
            assert isinstance(record, Invoice) and record.due_on == issued + timedelta(days=30)
            for days, terms in ((20, "custom"), (45, "net 45"), (0, "upon receipt")):
                wanted = record.model_copy(update={"due_on": issued + timedelta(days=days)})
                saved = await harvest.update("invoices", record.key, wanted)
                stored = table.get(row["id"])
                assert stored is not None
                assert (stored["due-at"], stored["due-at-human-format"]) == (issued + timedelta(days=days), terms)
                assert isinstance(saved, Invoice) and saved.due_on == issued + timedelta(days=days)
            created = await harvest.create(
                "invoices",
                Invoice(
                    key="d",
                    updated_at=utcnow(),
                    customer_key="1",
                    amount=Decimal("5.00"),
                    issued_on=date(2025, 6, 1),
                    due_on=date(2025, 6, 11),
                ),
            )
            assert isinstance(created, Invoice) and created.due_on == date(2025, 6, 11)
    # Reading: the terms win over a due-at that says otherwise.
    native = {
        "id": 9,
        "issued-at": date(2025, 1, 1),
        "due-at": date(2025, 1, 1),
        "due-at-human-format": "net 15",
        "updated-at": datetime(2025, 1, 2, tzinfo=UTC),
    }
    assert invoice_fields(native, {})["due_on"] == date(2025, 1, 16)


# -- recorded responses ----------------------------------------------------------------------------------

_SIMPLE_CHATTER = Organisation(
    key="144705",
    updated_at=datetime(2009, 12, 10, 11, 3, 15, tzinfo=UTC),
    name="Simple Chatter",
    extra={
        "active": True,
        "cache-version": 1,
        "currency": "United States Dollars - USD",
        "default-invoice-timeframe": None,
        "details": None,
        "highrise-id": None,
        "currency-symbol": "$",
    },
)
_SUPRCORP_DETAILS = (
    "123 Main St.\nThird Floor\nNew York, NY 10011\nUSA\n212-555-1212\n212-555-1213 (fax)\nhttp://www.company.com"
)
_SUPRCORP = Organisation(
    key="11072",
    updated_at=datetime(2009, 12, 10, 11, 3, 15, tzinfo=UTC),
    name="SuprCorp",
    street="123 Main St.\nThird Floor",
    city="New York, NY 10011",
    country="USA",
    extra={
        "active": True,
        "details": _SUPRCORP_DETAILS,
        "cache-version": 1,
        "currency": "United States Dollars - USD",
        "default-invoice-timeframe": None,
        "highrise-id": None,
        "currency-symbol": "$",
    },
)
_RATE_LIMIT = {
    "last-access-at": datetime(2010, 4, 2, 1, 34, 59, tzinfo=UTC),
    "timeframe-limit": 15,
    "max-calls": 40,
    "lockout-seconds": 5,
}
#: fixture file -> the organisations GET /clients answers with it (None: not a client list)
EXPECTED_CLIENTS: dict[str, list[Organisation] | None] = {
    "clients.xml": [_SIMPLE_CHATTER],
    "clients_docs_example.xml": [_SUPRCORP],
    "clients_empty.xml": [],
    "rate_limit_status_under.xml": None,
    "rate_limit_status_over.xml": None,
}
EXPECTED_HASH: dict[str, dict[str, Any]] = {
    "rate_limit_status_under.xml": {**_RATE_LIMIT, "count": 2},
    "rate_limit_status_over.xml": {**_RATE_LIMIT, "count": 41},
}


def test_every_harvest_fixture_has_an_expected_result() -> None:
    assert FIXTURES.is_dir(), FIXTURES
    assert {p.name for p in FIXTURES.iterdir() if p.is_file()} == set(EXPECTED_CLIENTS)


@pytest.mark.parametrize("name", [n for n, expected in EXPECTED_CLIENTS.items() if expected is not None])
async def test_recorded_client_lists_map_to_canonical_organisations(name: str) -> None:
    body = (FIXTURES / name).read_bytes()
    with respx.mock:
        respx.get(f"{API}/clients").mock(
            return_value=httpx.Response(200, content=body, headers={"Content-Type": "application/xml; charset=utf-8"})
        )
        async with connected(API) as harvest:
            records, rejects = await collect(harvest.read("organisations", None, 10))
    assert rejects == []  # no dead letter: none of these is an error
    assert records == EXPECTED_CLIENTS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_HASH))
def test_recorded_rate_limit_status_parses_with_its_plus_00_00_offset(name: str) -> None:
    root = parse_xml((FIXTURES / name).read_bytes())
    assert root.tag == "hash"
    assert typed_xml_to_python(root) == EXPECTED_HASH[name]


async def test_a_recorded_list_with_a_bom_and_dateTime_still_maps() -> None:
    body = BOM + (FIXTURES / "clients.xml").read_bytes().replace(b'type="datetime"', b'type="dateTime"')
    with respx.mock:
        respx.get(f"{API}/clients").mock(return_value=httpx.Response(200, content=body))
        async with connected(API) as harvest:
            records, rejects = await collect(harvest.read("organisations", None, 10))
    assert (records, rejects) == ([_SIMPLE_CHATTER], [])
