"""The ASP.NET helpdesk connector against its simulator (loopback) and against mocked bodies (respx)."""

from __future__ import annotations

import csv
import re
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import yaml
from structlog.testing import capture_logs

from ferryman.config import load_config
from ferryman.connector import Cursor, SystemContext, record_order
from ferryman.engine import Engine
from ferryman.errors import FatalError, MalformedResponseError, RecordRejected
from ferryman.records import Contact, Ticket
from ferryman.sandbox import SimulatorThread
from ferryman.state import StateStore
from ferryman.testing import ContractSetup, HostileContract, collect
from ferryman.timeutil import utcnow
from ferryman_connectors.aspnet_helpdesk import AspnetHelpdeskConnector, AspnetHelpdeskOptions
from ferryman_connectors.aspnet_helpdesk._mapping import Refs, customer_changes, ticket_changes, ticket_status
from ferryman_connectors.aspnet_helpdesk._schema import DEFAULT_NAMESPACE
from ferryman_connectors.aspnet_helpdesk.simulator import AspnetHelpdeskSimulator

KEY = "sandbox-key"
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def ticket_sample(n: int) -> Ticket:
    return Ticket(
        key=f"src-{n}",
        updated_at=utcnow(),
        subject=f"Printer on fire #{n}",
        description="Smoke is coming out of tray 2.",
        status="open",
        priority="high",
    )


def contact_sample(n: int) -> Contact:
    return Contact(
        key=f"src-{n}",
        updated_at=utcnow(),
        email=f"ada.{n}@engines.example",
        first_name="Ada",
        last_name="Lovelace",
        mobile="+44 7700 900123",
        organisation="Analytical Engines Ltd",
    )


class TestContract(HostileContract):
    """The shared suite with the hostile server: the real (whole-list) helpdesk in JSON and in
    XML, and a helpdesk with OData query options enabled, read with ``query: odata``."""

    @pytest.fixture(params=["json", "xml", "odata"])
    def contract(self, request: pytest.FixtureRequest) -> ContractSetup:
        fmt = "xml" if request.param == "xml" else "json"
        odata = request.param == "odata"
        extra = {"query": "odata"} if odata else {}
        return ContractSetup(
            connector="aspnet_helpdesk",
            simulator="aspnet_helpdesk",
            options=lambda url: {"base_url": url, "api_key": KEY, "format": fmt, **extra},
            bad_options=lambda url: {"base_url": url, "api_key": "not-the-key", "format": fmt, **extra},
            samples={"tickets": ticket_sample, "contacts": contact_sample},
            # A ticket's subject cannot change through the API; its description can.
            edits={"tickets": lambda r: r.model_copy(update={"description": f"{r.description} (edited)"})},
            # A whole-list read is ONE request, and the kit's "5xx:0.3" phase draws once per
            # request: seed 13's first draw is a 5xx (seed 7's is not), so the retry is exercised.
            simulator_kwargs={"records": 30, "seed": 7, "odata": True} if odata else {"records": 30, "seed": 13},
        )


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture
def sandbox() -> Iterator[SimulatorThread]:
    with SimulatorThread(AspnetHelpdeskSimulator(records=25, seed=3)) as thread:
        yield thread


@pytest.fixture
def odata_sandbox() -> Iterator[SimulatorThread]:
    """A helpdesk whose list actions have OData query options enabled ([EnableQuery])."""
    with SimulatorThread(AspnetHelpdeskSimulator(records=25, seed=3, odata=True)) as thread:
        yield thread


def options(url: str, **overrides: Any) -> AspnetHelpdeskOptions:
    return AspnetHelpdeskOptions.model_validate({"base_url": url, "api_key": KEY, **overrides})


async def open_connector(url: str, **overrides: Any) -> AspnetHelpdeskConnector:
    connector = AspnetHelpdeskConnector(SystemContext("helpdesk", options(url, **overrides)))
    await connector.open()
    return connector


@pytest.fixture(params=["json", "xml"])
async def helpdesk(request: pytest.FixtureRequest, sandbox: SimulatorThread) -> AsyncIterator[AspnetHelpdeskConnector]:
    connector = await open_connector(sandbox.url, format=request.param)
    yield connector
    await connector.close()


def rows(sandbox: SimulatorThread, table: str) -> list[dict[str, Any]]:
    return [dict(r) for r in sandbox.simulator.table(table)]


def api(sandbox: SimulatorThread, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{sandbox.url}{path}", params={"key": KEY}, **kwargs)


# -- the full replacement --------------------------------------------------------------------
async def test_an_email_change_keeps_the_customers_cell_phone_and_services(
    helpdesk: AspnetHelpdeskConnector, sandbox: SimulatorThread
) -> None:
    sim = sandbox.simulator
    customer = next(r for r in sim.table("Customers") if r["CellPhone"] and len(r["Services"]) >= 2)
    before = dict(customer)
    change = Contact(key=str(customer["id"]), updated_at=utcnow(), email="new.address@example.com")

    stored = await helpdesk.update("contacts", str(customer["id"]), change)

    after = sim.table("Customers").get(customer["id"])
    assert after["Email"] == "new.address@example.com"
    assert after["CellPhone"] == before["CellPhone"] and after["Services"] == before["Services"]
    assert (after["FirstName"], after["LastName"], after["Company"]) == (
        before["FirstName"],
        before["LastName"],
        before["Company"],
    )
    assert stored.email == "new.address@example.com" and stored.mobile == before["CellPhone"]
    assert [s["Id"] for s in stored.extra["Services"]] == before["Services"]
    [write] = sim.writes
    assert write["method"] == "PUT" and write["DoNotSendEmail"] is True


def test_the_simulator_really_erases_what_a_put_leaves_out(sandbox: SimulatorThread) -> None:
    """The trap the connector avoids: a PUT with only the new email wipes phone and services."""
    sim = sandbox.simulator
    customer = next(r for r in sim.table("Customers") if r["CellPhone"] and r["Services"])
    cid = customer["id"]
    response = api(sandbox, "PUT", f"/api/Customers/{cid}", json={"Id": cid, "Email": "only@example.com"})
    assert response.status_code == 204
    assert customer["CellPhone"] is None and customer["Services"] == [] and customer["FirstName"] is None


def test_xml_members_out_of_datacontract_order_are_ignored_and_so_erased(sandbox: SimulatorThread) -> None:
    sim = sandbox.simulator
    customer = next(r for r in sim.table("Customers") if r["CellPhone"])
    cid = customer["id"]
    # Email before CellPhone: the DataContractSerializer reads Email, then skips CellPhone.
    body = (
        f'<Customer xmlns="{DEFAULT_NAMESPACE}"><Email>x@example.com</Email>'
        f"<CellPhone>+1 555 0100</CellPhone><Id>{cid}</Id></Customer>"
    )
    response = api(sandbox, "PUT", f"/api/Customers/{cid}", content=body, headers={"Content-Type": "application/xml"})
    assert response.status_code == 204
    assert customer["Email"] == "x@example.com" and customer["CellPhone"] is None


# -- tickets: what a PUT may change, close and reopen ----------------------------------------
async def test_close_then_reopen_round_trip(helpdesk: AspnetHelpdeskConnector, sandbox: SimulatorThread) -> None:
    sim = sandbox.simulator
    row = next(r for r in sim.table("Tickets") if r["ClosedTime"] is None and r["NextUpdateTime"] and r["Description"])
    key = str(row["id"])
    kept = {name: row[name] for name in ("Description", "NextUpdateTime", "ExpectedResolutionTime", "StartTime")}
    ticket = await helpdesk.get("tickets", key)
    assert ticket is not None and ticket.status == "open" and ticket.closed_at is None

    closed = await helpdesk.update("tickets", key, ticket.model_copy(update={"status": "closed"}))
    assert closed.status == "closed" and closed.closed_at is not None
    assert row["ClosedTime"] == closed.closed_at
    assert {name: row[name] for name in kept} == kept, "closing erased an updatable property"

    again = await helpdesk.get("tickets", key)
    assert again is not None and again.status == "closed"
    reopened = await helpdesk.update("tickets", key, again.model_copy(update={"status": "open"}))
    assert reopened.status == "open" and reopened.closed_at is None
    assert row["ReopenedTime"] is not None and row["ReopenedTime"] > row["ClosedTime"]
    assert {name: row[name] for name in kept} == kept
    assert reopened.extra["ReopenedTime"] and reopened.extra["ClosedTime"], "the history stays in extra"

    assert [w["method"] for w in sim.writes] == ["PUT", "PUT"]
    assert all(w["DoNotSendEmail"] is True for w in sim.writes)
    assert sim.emails == []


async def test_a_ticket_put_changes_only_what_the_api_allows(
    helpdesk: AspnetHelpdeskConnector, sandbox: SimulatorThread
) -> None:
    sim = sandbox.simulator
    row = next(r for r in sim.table("Tickets") if r["ClosedTime"] is None)
    key = str(row["id"])
    title, priority = row["Title"], row["Priority"]
    current = await helpdesk.get("tickets", key)
    assert current is not None
    new_time = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    wanted = current.model_copy(
        update={
            "subject": "A new subject the API will not take",
            "priority": "urgent" if priority != "Urgent" else "low",
            "description": "Now with steps to reproduce.",
            "extra": {**current.extra, "NextUpdateTime": "2026-01-02T03:04:05Z"},
        }
    )
    with capture_logs() as logs:
        stored = await helpdesk.update("tickets", key, wanted)
    assert row["Description"] == "Now with steps to reproduce." and row["NextUpdateTime"] == new_time
    assert row["Title"] == title and row["Priority"] == priority
    assert stored.subject == title
    [warning] = [e for e in logs if e["event"] == "aspnet_helpdesk.fields_not_updatable"]
    assert warning["fields"] == ["subject", "priority"] and warning["key"] == key


def test_the_simulator_ignores_non_updatable_ticket_properties_and_erases_omitted_ones(
    sandbox: SimulatorThread,
) -> None:
    row = next(r for r in sandbox.simulator.table("Tickets") if r["NextUpdateTime"] is not None)
    title = row["Title"]
    response = api(
        sandbox,
        "PUT",
        f"/api/Tickets/{row['id']}",
        json={"Id": row["id"], "Title": "ignored", "Description": "kept"},
    )
    assert response.status_code == 204
    assert row["Title"] == title and row["Description"] == "kept" and row["NextUpdateTime"] is None


async def test_an_unchanged_update_is_not_sent(helpdesk: AspnetHelpdeskConnector, sandbox: SimulatorThread) -> None:
    ticket = await helpdesk.get("tickets", "3")
    assert ticket is not None
    await helpdesk.update("tickets", "3", ticket)
    assert sandbox.simulator.writes == []


# -- emails ----------------------------------------------------------------------------------
async def exercise_every_write(connector: AspnetHelpdeskConnector, sim: AspnetHelpdeskSimulator) -> None:
    contact = await connector.create("contacts", contact_sample(1))
    await connector.update("contacts", contact.key, contact.model_copy(update={"last_name": "Byron"}))
    customer = sim.table("Customers").get(int(contact.key))
    ticket = await connector.create(
        "tickets", ticket_sample(1).model_copy(update={"requester_email": customer["Email"]})
    )
    await connector.update("tickets", ticket.key, ticket.model_copy(update={"description": "More detail."}))
    await connector.update("tickets", ticket.key, ticket.model_copy(update={"status": "closed"}))
    await connector.update("tickets", ticket.key, ticket.model_copy(update={"status": "open"}))
    await connector.create("tickets", ticket_sample(2).model_copy(update={"status": "closed"}))
    assert sim.table("Tickets").get(int(ticket.key))["CustomerId"] == int(contact.key)


async def test_every_write_carries_do_not_send_email_by_default(
    helpdesk: AspnetHelpdeskConnector, sandbox: SimulatorThread
) -> None:
    sim = sandbox.simulator
    await exercise_every_write(helpdesk, sim)
    methods = [w["method"] for w in sim.writes]
    assert methods.count("POST") == 3 and methods.count("PUT") == 4
    assert [w for w in sim.writes if w["DoNotSendEmail"] is not True] == []
    assert sim.emails == []


async def test_allow_emails_lets_the_helpdesk_email_customers(sandbox: SimulatorThread) -> None:
    sim = sandbox.simulator
    connector = await open_connector(sandbox.url, allow_emails=True)
    try:
        await exercise_every_write(connector, sim)
    finally:
        await connector.close()
    assert {w["DoNotSendEmail"] for w in sim.writes} == {False}
    events = [e["event"] for e in sim.emails]
    assert events.count("created") == 2 and "closed" in events and "reopened" in events


# -- creating tickets: requester, type and assignee ------------------------------------------
async def test_a_new_ticket_is_linked_to_the_customer_with_the_requester_email(
    helpdesk: AspnetHelpdeskConnector, sandbox: SimulatorThread
) -> None:
    sim = sandbox.simulator
    customer = next(iter(sim.table("Customers")))
    operator = next(iter(sim.table("Operators")))
    service = next(iter(sim.table("Services")))
    record = ticket_sample(5).model_copy(
        update={
            "requester_email": customer["Email"].upper(),
            "assignee": operator["Email"],
            "type": service["Name"].lower(),
        }
    )
    stored = await helpdesk.create("tickets", record)
    row = sim.table("Tickets").get(int(stored.key))
    assert (row["CustomerId"], row["OperatorId"], row["ServiceId"]) == (customer["id"], operator["id"], service["id"])
    assert stored.assignee == operator["Email"] and stored.type == service["Name"]
    assert stored.requester_key == str(customer["id"]) and stored.priority == "high"


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        ({"assignee": "nobody@example.com"}, "not an operator"),
        ({"type": "Catering"}, "not a service"),
        ({"priority": "p1"}, "is not one of low, normal, high, urgent"),
        ({"requester_email": "stranger@example.com"}, "no customer with email"),
    ],
)
async def test_a_ticket_that_cannot_be_created_is_rejected_with_the_reason(
    sandbox: SimulatorThread, update: dict[str, Any], reason: str
) -> None:
    connector = await open_connector(sandbox.url)
    try:
        with pytest.raises(RecordRejected, match=reason):
            await connector.create("tickets", ticket_sample(9).model_copy(update=update))
    finally:
        await connector.close()
    assert sandbox.simulator.writes == []


async def test_the_helpdesks_own_reason_is_in_a_rejection(
    helpdesk: AspnetHelpdeskConnector, sandbox: SimulatorThread
) -> None:
    taken = next(iter(sandbox.simulator.table("Customers")))["Email"]
    with pytest.raises(RecordRejected, match=r"HTTP 409 .*already uses the email") as failure:
        await helpdesk.create("contacts", contact_sample(3).model_copy(update={"email": taken}))
    assert KEY not in str(failure.value)
    with pytest.raises(RecordRejected, match=r"HTTP 400 .*The Email field is required"):
        await helpdesk.create("contacts", contact_sample(4).model_copy(update={"email": None}))


# -- reading ---------------------------------------------------------------------------------
async def test_json_and_xml_read_the_same_records(sandbox: SimulatorThread) -> None:
    for stream in ("tickets", "contacts", "services", "operators"):
        results = []
        for fmt in ("json", "xml"):
            connector = await open_connector(sandbox.url, format=fmt)
            try:
                records, rejects = await collect(connector.read(stream, None, 10))
            finally:
                await connector.close()
            assert rejects == []
            results.append([r.model_dump() for r in records])
        assert results[0] == results[1], stream


async def test_whole_list_reads_match_odata_reads_and_honour_the_cursor(odata_sandbox: SimulatorThread) -> None:
    """``query: none`` (the default): one GET, filtered and ordered here; the same records as OData pages."""
    sandbox = odata_sandbox
    for stream in ("tickets", "contacts"):
        got = {}
        for query in ("odata", "none"):
            connector = await open_connector(sandbox.url, query=query)
            try:
                everything, _ = await collect(connector.read(stream, None, 6))
                middle = Cursor.of(everything[len(everything) // 2])
                newer, _ = await collect(connector.read(stream, middle, 6))
            finally:
                await connector.close()
            assert everything == sorted(everything, key=record_order)
            assert [r.key for r in newer] == [r.key for r in everything if Cursor.of(r) >= middle]
            got[query] = [r.model_dump() for r in everything]
        assert got["odata"] == got["none"], stream
    assert all("$" not in str(w) for w in sandbox.simulator.writes)


async def test_read_maps_status_times_and_leftovers(sandbox: SimulatorThread) -> None:
    connector = await open_connector(sandbox.url)
    try:
        tickets, _ = await collect(connector.read("tickets", None, 100))
    finally:
        await connector.close()
    table = sandbox.simulator.table("Tickets")
    for ticket in tickets:
        row = table.get(int(ticket.key))
        closed = row["ClosedTime"] is not None and (
            row["ReopenedTime"] is None or row["ReopenedTime"] < row["ClosedTime"]
        )
        assert ticket.status == ("closed" if closed else "open")
        assert ticket.closed_at == (row["ClosedTime"] if closed else None)
        assert ticket.updated_at == row["updated_at"] and ticket.updated_at.tzinfo is UTC
        assert ticket.extra["OperatorId"] == row["OperatorId"]
        assert "DoNotSendEmail" not in ticket.extra
    assert {t.status for t in tickets} == {"open", "closed"}
    assert any(t.extra.get("ReopenedTime") for t in tickets), "the data has reopened tickets"


async def test_an_entity_that_cannot_be_a_record_is_rejected_and_the_rest_arrive() -> None:
    page = [
        {"Id": 1, "Title": "fine", "ModifiedTime": "2025-06-01T10:00:00", "CreatedTime": "2025-06-01T09:00:00"},
        {"Id": 2, "Title": "broken", "ModifiedTime": "the day after tomorrow"},
        {"Id": 3, "Title": "fine too", "ModifiedTime": "2025-06-01T11:00:00.25"},
    ]
    with respx.mock(base_url="https://desk.example.com") as mock:
        mock.get("/api/Tickets").respond(json=page)
        mock.get("/api/Operators").respond(json=[])
        mock.get("/api/Services").respond(json=[])
        connector = await open_connector("https://desk.example.com", query="none")
        try:
            records, rejects = await collect(connector.read("tickets", None, 10))
        finally:
            await connector.close()
    assert [r.key for r in records] == ["1", "3"]
    assert records[1].updated_at == datetime(2025, 6, 1, 11, 0, 0, 250000, tzinfo=UTC)
    [reject] = rejects
    assert reject.key == "2" and reject.ref == "ticket 2"
    assert "Ticket.ModifiedTime" in reject.reason and "the day after tomorrow" in reject.reason


# -- hostile and broken XML ------------------------------------------------------------------
BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    + "]><ArrayOfTicket><Ticket><Title>&lol9;</Title></Ticket></ArrayOfTicket>"
)
EXTERNAL_ENTITY = (
    '<?xml version="1.0"?><!DOCTYPE t [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    f'<ArrayOfTicket xmlns="{DEFAULT_NAMESPACE}"><Ticket><Title>&xxe;</Title></Ticket></ArrayOfTicket>'
)


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"])
async def test_xml_with_entities_is_refused_without_expanding_it(body: str) -> None:
    with respx.mock(base_url="https://desk.example.com") as mock:
        route = mock.get("/api/Tickets").respond(content=body.encode(), headers={"Content-Type": "application/xml"})
        connector = await open_connector("https://desk.example.com", format="xml", max_retries=1, backoff_base=0.01)
        tracemalloc.start()
        try:
            with pytest.raises(MalformedResponseError, match="XML refused: entity declarations are not allowed"):
                await collect(connector.read("tickets", None, 10))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await connector.close()
    assert peak < 5_000_000, f"parsing took {peak} bytes: something expanded"
    assert route.call_count == 2  # retried once (max_retries=1), then the run fails with the reason


def test_the_simulator_refuses_xml_bodies_with_entities(sandbox: SimulatorThread) -> None:
    before = len(sandbox.simulator.table("Tickets"))
    bomb = BILLION_LAUGHS.replace("<ArrayOfTicket>", f'<Ticket xmlns="{DEFAULT_NAMESPACE}">').replace(
        "<Ticket><Title>&lol9;</Title></Ticket></ArrayOfTicket>", "<Title>&lol9;</Title></Ticket>"
    )
    for body in (bomb, EXTERNAL_ENTITY):
        response = api(
            sandbox,
            "POST",
            "/api/Tickets",
            content=body,
            headers={"Content-Type": "application/xml", "Accept": "application/json"},
        )
        assert response.status_code == 400
        assert "prohibited" in str(response.json()["ModelState"])
    assert len(sandbox.simulator.table("Tickets")) == before


async def test_a_page_of_broken_xml_is_retried_then_fails_the_read_with_the_reason() -> None:
    with respx.mock(base_url="https://desk.example.com") as mock:
        route = mock.get("/api/Customers").respond(
            content=f'<ArrayOfCustomer xmlns="{DEFAULT_NAMESPACE}"><Customer><Id>1</Id>'.encode(),
            headers={"Content-Type": "application/xml"},
        )
        connector = await open_connector("https://desk.example.com", format="xml", max_retries=2, backoff_base=0.01)
        try:
            with pytest.raises(MalformedResponseError, match="not well-formed XML") as failure:
                await collect(connector.read("contacts", None, 10))
        finally:
            await connector.close()
    assert route.call_count == 3 and "gave up after 3 attempts" in str(failure.value)
    assert "key=***" in str(failure.value) and KEY not in str(failure.value)


async def test_a_different_datacontract_namespace_stops_before_anything_is_written() -> None:
    body = b'<Customer xmlns="http://schemas.datacontract.org/2004/07/Acme.Desk"><Id>4</Id></Customer>'
    with respx.mock(base_url="https://desk.example.com", assert_all_called=False) as mock:
        mock.get("/api/Customers/4").respond(content=body, headers={"Content-Type": "application/xml"})
        put = mock.put("/api/Customers/4")
        connector = await open_connector("https://desk.example.com", format="xml")
        try:
            with pytest.raises(
                FatalError, match=re.escape("xml_namespace: 'http://schemas.datacontract.org/2004/07/Acme.Desk'")
            ):
                await connector.update("contacts", "4", contact_sample(1))
        finally:
            await connector.close()
    assert not put.called


class SpoilPage(httpx.AsyncBaseTransport):
    """The real network, except that every answer to the ``page``-th distinct ticket list query is cut short."""

    def __init__(self, page: int | None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.page = page
        self.queries: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path != "/api/Tickets" or request.method != "GET":
            return response
        query = str(request.url.query)
        if "orderby" not in query:
            return response  # the $top=1 probe, not a page
        if query not in self.queries:
            self.queries.append(query)
        if self.page is None or self.queries.index(query) != self.page - 1:
            return response
        body = await response.aread()
        return httpx.Response(response.status_code, headers=response.headers, content=body[: len(body) // 2])

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_broken_page_fails_the_run_without_moving_the_cursor_past_it(
    tmp_path: Path, default_state_url: str, odata_sandbox: SimulatorThread
) -> None:
    sandbox = odata_sandbox  # pages: a helpdesk with OData enabled, read with query: odata
    doc = {
        "state": {"url": default_state_url},
        "systems": {
            "helpdesk": {
                "connector": "aspnet_helpdesk",
                "base_url": sandbox.url,
                "api_key": "${HELPDESK_KEY}",
                "format": "xml",
                "query": "odata",
                "max_retries": 1,
                "backoff_base": 0.01,
            },
            "exports": {"connector": "csv", "directory": str(tmp_path / "out")},
        },
        "pipelines": {"p": {"from": "helpdesk.tickets", "to": "exports.tickets", "page_size": 5}},
    }
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(doc))
    config = load_config(tmp_path / "f.yaml", environ={"HELPDESK_KEY": KEY})
    store = StateStore.open(default_state_url)
    table = sandbox.simulator.table("Tickets")
    ordered = sorted((Ticket(key=str(r["id"]), updated_at=r["updated_at"]) for r in table), key=record_order)

    broken = SpoilPage(page=3)
    engine = Engine(config, store, services={"http_transport": broken})
    try:
        first = await engine.run("p")
    finally:
        await engine.aclose()
    assert first.outcome == "failed" and "not well-formed XML" in (first.message or "")
    assert KEY not in (first.message or "")
    cursor = store.get_cursor("p")
    assert cursor is not None
    delivered = [t.key for t in ordered if Cursor.of(t) <= cursor]
    assert first.counts["created"] == len(delivered) and 5 <= len(delivered) < 15, "pages 1 and 2 arrived, no more"
    assert sorted(csv_keys(tmp_path), key=int) == sorted(delivered, key=int), "the cursor moved past the broken page"

    engine = Engine(config, store, services={"http_transport": SpoilPage(page=None)})
    try:
        second = await engine.run("p")
    finally:
        await engine.aclose()
    assert second.outcome == "ok"
    keys = csv_keys(tmp_path)
    assert sorted(keys, key=int) == sorted((t.key for t in ordered), key=int), "a ticket was lost or doubled"


def csv_keys(tmp_path: Path) -> list[str]:
    with (tmp_path / "out" / "tickets.csv").open(newline="") as fh:
        return [row["key"] for row in csv.DictReader(fh)]


# -- mapping, pure ---------------------------------------------------------------------------
def native_ticket(**members: Any) -> dict[str, Any]:
    return {"Id": 7, "Title": "t", "Description": "d", "ModifiedTime": T0, "CreatedTime": T0, **members}


@pytest.mark.parametrize(
    ("closed", "reopened", "status"),
    [
        (None, None, False),
        (T0, None, True),
        (T0, T0 + timedelta(hours=1), False),
        (T0 + timedelta(hours=2), T0 + timedelta(hours=1), True),
        (None, T0, False),
    ],
)
def test_a_ticket_is_closed_while_its_closed_time_is_later_than_its_reopened_time(
    closed: datetime | None, reopened: datetime | None, status: bool
) -> None:
    assert ticket_status(native_ticket(ClosedTime=closed, ReopenedTime=reopened))[0] is status


def test_closing_after_a_reopening_sets_a_closed_time_later_than_it() -> None:
    now = T0 + timedelta(days=1)
    current = native_ticket(ClosedTime=T0, ReopenedTime=T0 + timedelta(hours=3))
    record = Ticket(key="x", updated_at=now, status="closed", closed_at=T0 + timedelta(hours=1))
    changes, _ = ticket_changes(current, record, Refs(), empty_clears=False, now=now)
    assert changes == {"ClosedTime": now}
    assert ticket_status({**current, **changes}) == (True, now)


def test_reopening_sets_only_the_reopened_time() -> None:
    now = T0 + timedelta(days=1)
    current = native_ticket(ClosedTime=T0)
    changes, fixed = ticket_changes(
        current, Ticket(key="x", updated_at=now, status="pending"), Refs(), empty_clears=False, now=now
    )
    assert changes == {"ReopenedTime": now} and fixed == []


def test_an_empty_field_leaves_the_helpdesk_value_alone_unless_empty_clears() -> None:
    current = {"Id": 1, "Email": "a@example.com", "CellPhone": "+1 555 0100", "FirstName": "Ann"}
    record = Contact(key="1", updated_at=T0, email="b@example.com")
    assert customer_changes(current, record, empty_clears=False) == {"Email": "b@example.com"}
    assert customer_changes(current, record, empty_clears=True) == {
        "Email": "b@example.com",
        "CellPhone": None,
        "FirstName": None,
    }


def test_a_naive_time_in_extra_is_refused_rather_than_guessed() -> None:
    record = Ticket(key="x", updated_at=T0, extra={"NextUpdateTime": "2025-06-03 10:00"})
    with pytest.raises(ValueError, match=r"extra\.NextUpdateTime: .*no timezone"):
        ticket_changes(native_ticket(), record, Refs(), empty_clears=False, now=T0)


def test_streams_declare_timestamp_precision_and_hidden_deletes() -> None:
    streams = AspnetHelpdeskConnector.describe()
    assert {info.precision for info in streams.values()} == {timedelta(milliseconds=10)}
    assert {name for name, info in streams.items() if info.hides_deleted} == {"tickets", "contacts"}
