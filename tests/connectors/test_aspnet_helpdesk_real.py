"""The ASP.NET helpdesk as verified against the real system (shared/seeds/README.md, "Verified
against the real systems"): the stock ASP.NET Web API 2 scaffold over Entity Framework.

Each fact is held twice, in a test named after it: the simulator answers the way the real
helpdesk does, and the connector reads and writes correctly against that answer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from ferryman.connector import Cursor, SystemContext, record_order
from ferryman.errors import RecordRejected
from ferryman.records import Contact
from ferryman.sandbox import SimulatorThread
from ferryman.testing import collect
from ferryman.timeutil import utcnow
from ferryman_connectors.aspnet_helpdesk import AspnetHelpdeskConnector, AspnetHelpdeskOptions
from ferryman_connectors.aspnet_helpdesk.simulator import AspnetHelpdeskSimulator

KEY = "sandbox-key"


class Recorder(httpx.AsyncBaseTransport):
    """The real network, remembering every request as ``(method, path, query parameters)``."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        query = dict(parse_qsl(request.url.query.decode()))
        query.pop("key", None)
        self.requests.append((request.method, request.url.path, query))
        return await self.inner.handle_async_request(request)

    def to(self, path: str) -> list[dict[str, str]]:
        return [query for method, p, query in self.requests if method == "GET" and p == path]

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def sandbox() -> Iterator[SimulatorThread]:
    """The helpdesk in its default mode: the real one's behaviour."""
    with SimulatorThread(AspnetHelpdeskSimulator(records=25, seed=3)) as thread:
        yield thread


@pytest.fixture
def odata_sandbox() -> Iterator[SimulatorThread]:
    """A helpdesk whose list actions have OData query options enabled ([EnableQuery])."""
    with SimulatorThread(AspnetHelpdeskSimulator(records=25, seed=3, odata=True)) as thread:
        yield thread


async def open_connector(url: str, recorder: Recorder | None = None, **overrides: Any) -> AspnetHelpdeskConnector:
    options = AspnetHelpdeskOptions.model_validate({"base_url": url, "api_key": KEY, **overrides})
    services: dict[str, Any] = {"http_transport": recorder} if recorder is not None else {}
    connector = AspnetHelpdeskConnector(SystemContext("helpdesk", options, None, services))
    await connector.open()
    return connector


@pytest.fixture(params=["json", "xml"])
async def helpdesk(request: pytest.FixtureRequest, sandbox: SimulatorThread) -> AsyncIterator[AspnetHelpdeskConnector]:
    connector = await open_connector(sandbox.url, format=request.param)
    yield connector
    await connector.close()


def api(sandbox: SimulatorThread, method: str, path: str, **kwargs: Any) -> httpx.Response:
    params = {"key": KEY, **kwargs.pop("params", {})}
    return httpx.request(method, f"{sandbox.url}{path}", params=params, **kwargs)


# -- OData query options are silently ignored: the list is answered whole --------------------
@pytest.mark.parametrize(
    "options",
    [{"$top": "2"}, {"$skip": "20"}, {"$filter": "Id eq 3"}, {"$orderby": "Id desc"}, {"$top": "many"}],
    ids=["top", "skip", "filter", "orderby", "garbage"],
)
def test_odata_query_options_are_silently_ignored_and_the_list_answered_whole(
    sandbox: SimulatorThread, options: dict[str, str]
) -> None:
    whole = api(sandbox, "GET", "/api/Tickets").json()
    assert len(whole) == 25 and [t["Id"] for t in whole] == sorted(t["Id"] for t in whole)
    answered = api(sandbox, "GET", "/api/Tickets", params=options)
    assert answered.status_code == 200
    assert answered.json() == whole


async def test_odata_query_options_are_silently_ignored_so_query_none_reads_each_list_with_one_request(
    sandbox: SimulatorThread,
) -> None:
    recorder = Recorder()
    connector = await open_connector(sandbox.url, recorder)  # the default: query: none
    try:
        pages = [page async for page in connector.read("tickets", None, 4)]
        records = [r for page in pages for r in page.records]
        assert sorted(int(r.key) for r in records) == [row["id"] for row in sandbox.simulator.table("Tickets")]
        assert records == sorted(records, key=record_order) and max(len(p.records) for p in pages) == 4
        assert len(recorder.to("/api/Tickets")) == 1, "the whole list is one request, not pages"

        middle = Cursor.of(records[len(records) // 2])
        newer, _ = await collect(connector.read("tickets", middle, 4))
        assert [r.key for r in newer] == [r.key for r in records if Cursor.of(r) >= middle]
        assert len(recorder.to("/api/Tickets")) == 2
    finally:
        await connector.close()
    assert all(not any(name.startswith("$") for name in query) for _, _, query in recorder.requests), (
        "query: none never sends OData options"
    )


async def test_odata_query_options_are_silently_ignored_so_odata_is_used_only_when_a_top_probe_shows_it_honoured(
    sandbox: SimulatorThread, odata_sandbox: SimulatorThread
) -> None:
    # Configured, against the real (ignoring) helpdesk: the $top=1 probe answers everything,
    # so that answer is the list, and paging is never attempted.
    recorder = Recorder()
    connector = await open_connector(sandbox.url, recorder, query="odata")
    try:
        with capture_logs() as logs:
            records, _ = await collect(connector.read("tickets", None, 4))
            again, _ = await collect(connector.read("tickets", None, 4))
    finally:
        await connector.close()
    assert len(records) == 25 and [r.key for r in again] == [r.key for r in records]
    assert recorder.to("/api/Tickets") == [{"$top": "1"}, {}], "one probe, then one whole GET per read"
    warned = {e["resource"]: e["answered"] for e in logs if e["event"] == "aspnet_helpdesk.odata_ignored"}
    assert warned["Tickets"] == 25, "the fallback is logged, once per resource"
    assert len([e for e in logs if e["event"] == "aspnet_helpdesk.odata_ignored"]) == len(warned)

    # Configured, against a helpdesk that honours OData: keyset pages of $top.
    recorder = Recorder()
    connector = await open_connector(odata_sandbox.url, recorder, query="odata")
    try:
        paged, _ = await collect(connector.read("tickets", None, 4))
    finally:
        await connector.close()
    assert [r.key for r in paged] == [r.key for r in records]
    queries = recorder.to("/api/Tickets")
    assert queries[0] == {"$top": "1"} and len(queries) >= 1 + 25 // 4
    assert all(q["$top"] == "4" and q["$orderby"] == "ModifiedTime,Id" for q in queries[1:])

    # Not configured: no probe, no OData, even where the helpdesk would honour it.
    recorder = Recorder()
    connector = await open_connector(odata_sandbox.url, recorder)
    try:
        await collect(connector.read("tickets", None, 4))
    finally:
        await connector.close()
    assert recorder.to("/api/Tickets") == [{}]


async def test_a_full_read_of_5000_records_in_the_default_mode_ends_in_a_handful_of_requests() -> None:
    with SimulatorThread(AspnetHelpdeskSimulator(records=5000, seed=5)) as sandbox:
        sim = sandbox.simulator
        connector = await open_connector(sandbox.url)
        started = time.monotonic()
        try:
            before = sim.stats.requests
            tickets, rejects = await collect(connector.read("tickets", None, 100))
            ticket_requests = sim.stats.requests - before
            before = sim.stats.requests
            contacts, _ = await collect(connector.read("contacts", None, 100))
            contact_requests = sim.stats.requests - before
        finally:
            await connector.close()
        seconds = time.monotonic() - started
    assert len({t.key for t in tickets}) == len(tickets) == 5000 and rejects == []
    assert len({c.key for c in contacts}) == len(contacts) == 5000
    # Tickets: the list, then operators and services for the ticket's assignee and type.
    assert ticket_requests == 3, f"{ticket_requests} requests for 5,000 tickets"
    assert contact_requests == 1, f"{contact_requests} requests for 5,000 customers"
    assert seconds < 60, f"reading 10,000 records took {seconds:.1f}s"


# -- DELETE answers 200 with the deleted entity ------------------------------------------------
def test_delete_answers_200_with_the_deleted_entity(sandbox: SimulatorThread) -> None:
    before = api(sandbox, "GET", "/api/Customers/4").json()
    answered = api(sandbox, "DELETE", "/api/Customers/4")
    assert answered.status_code == 200 and answered.json() == before
    assert api(sandbox, "GET", "/api/Customers/4").status_code == 404
    assert 4 not in [c["Id"] for c in api(sandbox, "GET", "/api/Customers").json()]


async def test_delete_answers_200_with_the_deleted_entity_which_the_connector_takes_as_deleted(
    helpdesk: AspnetHelpdeskConnector, sandbox: SimulatorThread
) -> None:
    for stream, table in (("tickets", "Tickets"), ("contacts", "Customers")):
        await helpdesk.delete(stream, "5")
        assert sandbox.simulator.table(table).get(5) is None
        assert await helpdesk.get(stream, "5") is None, "the delete probe finds it gone"
        records, _ = await collect(helpdesk.read(stream, None, 50))
        assert "5" not in {r.key for r in records}
        await helpdesk.delete(stream, "5")  # deleting twice: the 404 means "already gone"
        assert helpdesk.stream(stream).hides_deleted


# -- a 404 has an empty body -------------------------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("accept", ["application/json", "application/xml"])
def test_a_404_has_an_empty_body(sandbox: SimulatorThread, method: str, accept: str) -> None:
    body = {"json": {"Id": 999, "Title": "x"}} if method == "PUT" else {}
    answered = api(sandbox, method, "/api/Tickets/999", headers={"Accept": accept}, **body)
    assert answered.status_code == 404 and answered.content == b""


async def test_a_404_has_an_empty_body_and_the_connector_reads_it_as_gone(
    helpdesk: AspnetHelpdeskConnector, sandbox: SimulatorThread
) -> None:
    assert await helpdesk.get("tickets", "999") is None
    assert await helpdesk.get("contacts", "999") is None
    await helpdesk.delete("tickets", "999")
    ticket = await helpdesk.get("tickets", "3")
    assert ticket is not None
    sandbox.simulator.table("Tickets").delete(3)
    with pytest.raises(RecordRejected, match="no longer exists"):
        await helpdesk.update("tickets", "3", ticket.model_copy(update={"description": "too late"}))


# -- verified writes: a 2xx is never a rejection -----------------------------------------------
async def test_a_create_answered_with_a_garbled_body_is_read_back_through_its_location(
    helpdesk: AspnetHelpdeskConnector, sandbox: SimulatorThread
) -> None:
    sim = sandbox.simulator
    sandbox.call(sim.set_hostile, "garble_writes")
    created = await helpdesk.create("contacts", _contact())
    sandbox.call(sim.set_hostile)
    row = sim.table("Customers").get(int(created.key))
    assert row is not None and created.email == row["Email"] == "grace@navy.example"
    assert len(sim.table("Customers")) == 26, "created once, not again"


async def test_an_update_answered_200_with_an_empty_list_is_read_back_not_rejected(
    sandbox: SimulatorThread,
) -> None:
    """``200 []`` (a no-op answer seen from another helpdesk) says nothing: the entity is read back."""
    customer = api(sandbox, "GET", "/api/Customers/2").json()
    with respx.mock(base_url="https://desk.example.com") as mock:
        mock.get("/api/Customers/2").respond(json=customer)
        put = mock.put("/api/Customers/2").respond(json=[])
        connector = await open_connector("https://desk.example.com")
        try:
            stored = await connector.update("contacts", "2", _contact().model_copy(update={"key": "2"}))
        finally:
            await connector.close()
    assert put.called and stored.key == "2" and stored.email == customer["Email"]


def _contact() -> Contact:
    return Contact(key="src-1", updated_at=utcnow(), email="grace@navy.example", first_name="Grace", last_name="Hopper")
