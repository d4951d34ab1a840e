"""The generic ``rest`` connector against APIs that do not do what they say (issue 14).

Each test switches ``sandbox generic`` into a hostile mode (a deliberate test switch after a
behaviour seen in a real API: shared/seeds/README.md, "Verified against the real systems"),
or mocks the exact answers a real API gave, and checks that the connector notices (a clear
error) or stays correct (every record exactly once), never loses records quietly and never
loops.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import yaml

from ferryman.config import load_config
from ferryman.connector import Cursor, SystemContext, record_order
from ferryman.cursor import SECOND
from ferryman.errors import ConfigError, OrderViolation, PagingError, RecordRejected
from ferryman.records import Contact, Ticket
from ferryman.sandbox import SimulatorThread
from ferryman.testing import collect
from ferryman.timeutil import utcnow
from ferryman_connectors.rest import RestConnector, StreamSpec
from ferryman_connectors.rest.simulator import GenericSimulator
from tests.connectors.test_rest import EXAMPLE, SIM_PATH, STYLES, connected, contacts_options, example_options

# -- ignore_sort: `sorted: true` is verified, not believed ------------------------------------------


@pytest.fixture(scope="module")
def unsorted_api() -> Any:
    """319 records (the trial's count), answered in id order whatever sort is asked."""
    simulator = GenericSimulator(records=319, seed=3)
    simulator.set_hostile("ignore_sort")
    with SimulatorThread(simulator) as running:
        yield running


def _ticket_options(url: str, **changes: Any) -> dict[str, Any]:
    options = example_options(url)
    tickets = options["streams"]["tickets"]
    tickets["incremental"] = {**tickets["incremental"], **changes}
    return options


async def test_sorted_stream_against_an_api_ignoring_sort_stops_with_order_violation(unsorted_api: Any) -> None:
    """Before: the keyset read skipped most records (218 of 319 in the trial) and the run said ok."""
    table = unsorted_api.simulator.table("tickets")
    ordered = sorted(table, key=lambda row: (row["updated_at"], row["id"]))
    middle = ordered[len(ordered) // 3]
    starts = [None, Cursor(middle["updated_at"], str(middle["id"]))]
    async with connected(_ticket_options(unsorted_api.url)) as connector:
        for since in starts:
            with pytest.raises(OrderViolation) as failure:
                await collect(connector.read("tickets", since, 50))
            error = failure.value
            assert error.before and error.after and error.before != error.after
            assert f"{error.before!r}" in str(error) and f"{error.after!r}" in str(error)
            assert "GET " in str(error) and "/api/tickets?" in str(error), "the message names the request"


async def test_unsorted_stream_against_an_api_ignoring_sort_reads_every_record_once(unsorted_api: Any) -> None:
    table = unsorted_api.simulator.table("tickets")
    ordered = sorted(table, key=lambda row: (row["updated_at"], row["id"]))
    middle = ordered[len(ordered) // 3]
    since = Cursor(middle["updated_at"], str(middle["id"]))
    async with connected(_ticket_options(unsorted_api.url, sorted=False)) as connector:
        everything, _ = await collect(connector.read("tickets", None, 50))
        newer, _ = await collect(connector.read("tickets", since, 50))
    assert sorted(int(r.key) for r in everything) == sorted(row["id"] for row in table)
    assert everything == sorted(everything, key=record_order)
    expected = {
        str(row["id"]) for row in ordered if (row["updated_at"], row["id"]) >= (middle["updated_at"], middle["id"])
    }
    assert {r.key for r in newer} == expected and len(newer) == len(expected)


# -- ignore_paging: every style ends, whole or with PagingError ---------------------------------------

PAGING_VARIANTS: dict[str, dict[str, Any]] = {
    **STYLES,
    "page-without-counts": {"style": "page", "size_param": "per_page"},  # ends only on a short page
}


@pytest.mark.parametrize("variant", PAGING_VARIANTS)
async def test_api_ignoring_paging_is_read_whole_or_stopped_in_every_style(variant: str) -> None:
    """Before: a paginator that ends on a short page asked for page 1, 2, ... until killed."""
    spec = PAGING_VARIANTS[variant]
    simulator = GenericSimulator(records=120, seed=9, page_size=20)
    simulator.set_hostile("ignore_paging")
    with SimulatorThread(simulator) as sandbox:
        path = f"/api/{SIM_PATH[spec['style']]}/contacts"
        options = contacts_options(sandbox.url, path=path, pagination={**spec, "size": 10})
        async with connected(options) as connector:
            try:
                records, _ = await collect(connector.read("contacts", None, 10))
            except PagingError as exc:
                assert "pag" in str(exc).lower() and "/api/" in str(exc)
                records = None
        made = sandbox.simulator.stats.requests
    assert made <= 2, f"{made} requests: paging did not stop"
    if variant == "offset":  # the offset moves past the total: the whole list, read once
        assert records is not None and sorted(int(r.key) for r in records) == list(range(1, 121))
    else:  # the second page repeats the first (before: 1,279 requests in 8 s without counts)
        assert records is None, f"{variant}: a repeated page was taken as new"


async def test_api_ignoring_paging_under_a_sorted_stream_is_read_exactly_once() -> None:
    simulator = GenericSimulator(records=120, seed=9, page_size=20)
    simulator.set_hostile("ignore_paging")
    with SimulatorThread(simulator) as sandbox:
        async with connected(example_options(sandbox.url)) as connector:
            records, _ = await collect(connector.read("tickets", None, 10))
    assert sorted(int(r.key) for r in records) == list(range(1, 121))


# -- verified writes ----------------------------------------------------------------------------------

API = "https://desk.example.com"
STUB = {"id": "12", "_url": f"{API}/tickets/12", "type": "ticket"}
REFUSAL = ["Ticket 2: Status 'closed' isn't a valid status for this ticket."]


def desk(**stream: Any) -> dict[str, Any]:
    spec = {
        "record": "ticket",
        "path": "/tickets",
        "fields": {"subject": "subject", "status": "status"},
        "item": "/tickets/{id}",
        "create": "/tickets",
        "update": {"method": "PUT", "path": "/tickets/{id}"},
        **stream,
    }
    return {"base_url": API, "auth": {"type": "bearer", "token": "tok-abcdef"}, "streams": {"tickets": spec}}


def ticket(key: str = "src-1", status: str = "open") -> Ticket:
    return Ticket(key=key, updated_at=utcnow(), subject="Printer on fire", status=status)


def stored(id: int | str, status: str = "open") -> dict[str, Any]:
    return {"id": id, "subject": "Printer on fire", "status": status, "updated_at": "2026-12-01T10:00:00Z"}


@respx.mock
async def test_create_answered_with_a_stub_is_read_back_through_item_not_rejected() -> None:
    """Before: the stub did not map, the create was dead-lettered, and replay created it again."""
    respx.post(f"{API}/tickets").mock(return_value=httpx.Response(201, json=STUB))
    item = respx.get(f"{API}/tickets/12").mock(return_value=httpx.Response(200, json=stored(12)))  # a number here
    async with connected(desk()) as connector:
        created = await connector.create("tickets", ticket())
    assert item.called
    assert created.key == "12" and created.subject == "Printer on fire" and created.extra.get("type") is None


@respx.mock
async def test_error_inside_200_is_a_rejection_with_the_apis_words() -> None:
    """Before: counted as `updated 1`, linked, never retried."""
    respx.put(f"{API}/tickets/2").mock(return_value=httpx.Response(200, json=REFUSAL))
    respx.get(f"{API}/tickets/2").mock(return_value=httpx.Response(200, json=stored(2)))
    options = desk(success={"status": [200, 201], "body_not_matching": "isn't a valid"})
    async with connected(options) as connector:
        with pytest.raises(RecordRejected) as failure:
            await connector.update("tickets", "2", ticket("2", status="closed"))
    assert "200 [\"Ticket 2: Status 'closed' isn't a valid status for this ticket.\"]" in str(failure.value)


@respx.mock
async def test_a_no_op_200_with_an_empty_list_is_success_read_back() -> None:
    respx.put(f"{API}/tickets/2").mock(return_value=httpx.Response(200, json=[]))
    item = respx.get(f"{API}/tickets/2").mock(return_value=httpx.Response(200, json=stored("2", "closed")))
    options = desk(success={"status": [200, 201], "body_not_matching": "isn't a valid"})
    async with connected(options) as connector:
        updated = await connector.update("tickets", "2", ticket("2", status="closed"))
    assert item.called and updated.key == "2" and updated.status == "closed"


@respx.mock
async def test_success_status_and_body_matching_are_checked() -> None:
    respx.post(f"{API}/tickets").mock(return_value=httpx.Response(202, json=stored(5)))
    respx.put(f"{API}/tickets/5").mock(return_value=httpx.Response(200, json={"result": "queued"}))
    options = desk(success={"status": [200, 201], "body_matching": '"id"'})
    async with connected(options) as connector:
        with pytest.raises(RecordRejected, match="202 "):
            await connector.create("tickets", ticket())
        with pytest.raises(RecordRejected, match=re.escape('200 {"result":"queued"}')):
            await connector.update("tickets", "5", ticket("5"))


# -- deletes hidden from lists ----------------------------------------------------------------------


@respx.mock
async def test_get_answers_a_deleted_status_as_a_deleted_record() -> None:
    respx.get(f"{API}/tickets/7").mock(return_value=httpx.Response(200, json=stored(7, "deleted")))
    respx.get(f"{API}/tickets/8").mock(return_value=httpx.Response(200, json=stored(8, "closed")))
    respx.get(f"{API}/tickets/9").mock(return_value=httpx.Response(404))
    options = desk(hides_deleted=True, deleted_when={"field": "status", "equals": ["deleted", "trashed"]})
    async with connected(options) as connector:
        assert connector.stream("tickets").hides_deleted
        gone = await connector.get("tickets", "7")
        live = await connector.get("tickets", "8")
        missing = await connector.get("tickets", "9")
    assert gone is not None and gone.deleted and gone.key == "7" and gone.status != "deleted"
    assert live is not None and not live.deleted and live.status == "closed"
    assert missing is None


async def test_sandbox_hiding_deleted_records_is_probed_by_get() -> None:
    simulator = GenericSimulator(records=10, seed=2)
    with SimulatorThread(simulator) as sandbox:
        sandbox.call(simulator.set_hostile, "hide_deleted")
        async with connected(example_options(sandbox.url)) as connector:
            for stream in ("tickets", "contacts"):
                await connector.delete(stream, "3")
                listed = {r.key for r in (await collect(connector.read(stream, None, 100)))[0]}
                probed = await connector.get(stream, "3")
                assert "3" not in listed
                assert probed is not None and probed.deleted, stream


# -- YAML keys: precision, hides_deleted, deleted_when, success ----------------------------------------


def test_example_declares_precision_and_hidden_deletes() -> None:
    config = load_config(EXAMPLE, environ={"SANDBOX_KEY": "k-123456"})
    streams = RestConnector(SystemContext("sandbox", config.system_options("sandbox"))).streams()
    assert all(s.precision == SECOND and s.hides_deleted for s in streams.values())


@pytest.mark.parametrize(
    ("value", "step"),
    [("seconds", SECOND), ("milliseconds", timedelta(milliseconds=1)), ("microseconds", timedelta(microseconds=1))],
)
def test_precision_key_sets_the_stream_precision(value: str, step: timedelta) -> None:
    spec = StreamSpec.model_validate({"record": "ticket", "path": "/t", "precision": value})
    assert spec.precision == step
    assert StreamSpec.model_validate({"record": "ticket", "path": "/t", "precision": "minutes"}).precision == (
        timedelta(minutes=1)
    )


def test_filter_granularity_follows_the_time_format() -> None:
    def granularity(fmt: str) -> timedelta:
        spec = StreamSpec.model_validate(
            {"record": "ticket", "path": "/t", "incremental": {"template": "since={cursor}", "format": fmt}}
        )
        assert spec.incremental is not None
        return spec.incremental.granularity

    assert granularity("iso_z") == granularity("epoch") == granularity("%Y-%m-%d %H:%M:%S") == SECOND
    assert granularity("%d/%m/%Y %H:%M") == timedelta(minutes=1)


@pytest.mark.parametrize(
    ("stream", "problem"),
    [
        ({"precision": "fortnights"}, "unknown precision"),
        ({"precision": 5}, "seconds, milliseconds"),
        ({"hides_deleted": True}, "hides_deleted needs item"),
        ({"success": {"body_not_matching": "(unclosed"}}, "not a regular expression"),
        ({"success": {"status": [404]}}, "less than or equal to 299"),
        ({"deleted_when": {"field": "status"}}, "equals"),
    ],
)
def test_invalid_new_keys_are_config_errors(tmp_path: Path, stream: dict[str, Any], problem: str) -> None:
    doc = {
        "systems": {
            "api": {
                "connector": "rest",
                "base_url": API,
                "auth": {"type": "bearer", "token": "${API_TOKEN}"},
                "streams": {"tickets": {"record": "ticket", "path": "/t", **stream}},
            }
        }
    }
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as failure:
        load_config(path, environ={"API_TOKEN": "tok-123456"})
    assert failure.value.path is not None and failure.value.path.startswith("systems.api.streams.tickets")
    assert problem in str(failure.value)


async def test_find_still_walks_pages_with_the_guard(unsorted_api: Any) -> None:
    """find() pages through the search with the same guard (and stays exact)."""
    target = next(iter(unsorted_api.simulator.table("contacts")))
    async with connected(example_options(unsorted_api.url)) as connector:
        found = await connector.find("contacts", Contact(key="x", updated_at=utcnow(), email=target["email"]))
    assert found is not None and found.key == str(target["id"])


# -- a search parameter is required; sort only when asked ----------------------------------------------


async def test_api_answering_empty_without_a_search_is_read_in_full_from_first_cursor() -> None:
    """A real helpdesk answered an empty list, not a complete one, when no query was sent."""
    with SimulatorThread(GenericSimulator(records=25, seed=4, require_search=True)) as sandbox:
        incremental = {"template": "updated_since={cursor}", "format": "YYYY-MM-DD HH:MM:SS"}
        plain = contacts_options(sandbox.url, incremental=incremental)
        anchored = contacts_options(sandbox.url, incremental={**incremental, "first_cursor": "1970-01-01T00:00:00Z"})
        async with connected(plain) as connector:
            nothing, _ = await collect(connector.read("contacts", None, 10))
        async with connected(anchored) as connector:
            everything, _ = await collect(connector.read("contacts", None, 10))
    assert nothing == []  # what a full read without first_cursor gets from such an API
    assert sorted(int(r.key) for r in everything) == list(range(1, 26))


@respx.mock
async def test_several_sort_pairs_are_sent_as_repeated_parameters() -> None:
    route = respx.get(f"{API}/tickets").mock(return_value=httpx.Response(200, json=[stored(1)]))
    options = desk(
        incremental={"template": "updated_since={cursor}", "sort_params": {"orderby": ["updated_at", "id"]}},
    )
    async with connected(options) as connector:
        records, _ = await collect(connector.read("tickets", None, 10))
    assert [r.key for r in records] == ["1"]
    assert route.calls.last.request.url.params.get_list("orderby") == ["updated_at", "id"]


# -- a garbled answer to a create that happened ----------------------------------------------------------


async def test_create_answered_with_a_garbled_body_is_read_back_by_its_location() -> None:
    """garble_writes: the create is carried out, then answered with a spoiled body. The id is
    in Location, so the record is read back instead of being taken for a failure."""
    simulator = GenericSimulator(records=5, seed=2)
    with SimulatorThread(simulator) as sandbox:
        sandbox.call(simulator.set_hostile, "garble_writes")
        async with connected(example_options(sandbox.url)) as connector:
            created = await connector.create("tickets", ticket("src-9"))
            contact = await connector.create(
                "contacts", Contact(key="src-10", updated_at=utcnow(), email="garbled@example.com", last_name="Ng")
            )
        tickets = {str(row["id"]): row for row in simulator.table("tickets")}
        contacts = {str(row["id"]): row for row in simulator.table("contacts")}
    assert created.key in tickets and tickets[created.key]["subject"] == "Printer on fire" == created.subject
    assert contact.key in contacts and contact.email == "garbled@example.com"
    assert len(tickets) == len(contacts) == 6, "one create each, no second attempt"
