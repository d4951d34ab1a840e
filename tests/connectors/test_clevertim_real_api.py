"""Clevertim as the real API behaves (``shared/seeds/README.md``, "Verified against the real
systems", and the vendor's payloads in ``shared/fixtures/clevertim``): each fact is a
simulator behaviour and a connector result, and each test is named after its fact."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx

from ferryman.connector import Cursor, SystemContext
from ferryman.errors import FatalError, OrderViolation, PagingError, RecordRejected
from ferryman.records import Contact, Organisation, Ticket
from ferryman.sandbox import SimulatorThread
from ferryman.testing import collect
from ferryman.timeutil import utcnow
from ferryman_connectors.clevertim import ClevertimConnector
from ferryman_connectors.clevertim.simulator import ClevertimSimulator

TOKEN = "sandbox-token"
AUTH = (TOKEN, "X")


def options(url: str, **more: Any) -> dict[str, Any]:
    return {"base_url": url + "/api", "api_token": TOKEN, "rate_limit": None, **more}


async def connect(url: str, **more: Any) -> ClevertimConnector:
    connector = ClevertimConnector(SystemContext("crm", ClevertimConnector.Options(**options(url, **more)), None, {}))
    await connector.open()
    return connector


@pytest.fixture
def sandbox() -> Iterator[SimulatorThread]:
    with SimulatorThread(ClevertimSimulator(records=40, seed=5)) as thread:
        yield thread


def api(url: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{url}/api{path}", auth=AUTH, **kwargs)


def requests_of(sandbox: SimulatorThread) -> int:
    return int(sandbox.simulator.stats.requests)


# -- no paging, no modified-since filter ---------------------------------------------------------
async def test_lists_have_no_paging_and_no_modified_since_filter(sandbox: SimulatorThread) -> None:
    everything = api(sandbox.url, "GET", "/contact").json()["content"]
    assert len(everything) == 40
    assert [c["id"] for c in everything] == sorted(c["id"] for c in everything)  # id order, not lm order
    ignored = api(
        sandbox.url, "GET", "/contact", params={"page": 3, "limit": 5, "modified_since": "2099-01-01T00:00:00Z"}
    )
    assert ignored.json()["content"] == everything

    connector = await connect(sandbox.url)
    try:
        before = requests_of(sandbox)
        records, _ = await collect(connector.read("contacts", None, 7))
        assert requests_of(sandbox) - before == 1
        assert sorted(r.key for r in records) == sorted(str(c["id"]) for c in everything)
        middle = Cursor.of(records[len(records) // 2])
        before = requests_of(sandbox)
        newer, _ = await collect(connector.read("contacts", middle, 7))
        assert requests_of(sandbox) - before == 1
    finally:
        await connector.close()
    # The incremental filter is applied here, by lm, through the cursor policy.
    assert [r.key for r in newer] == [r.key for r in records if Cursor.of(r) >= middle]
    request = sandbox.simulator.stats
    assert request.by_status.get("200", 0) >= 4


@pytest.mark.parametrize("stream", ["contacts", "organisations", "tickets"])
async def test_a_full_read_of_5000_records_in_the_real_mode_ends_in_one_request(stream: str) -> None:
    with SimulatorThread(ClevertimSimulator(records=5000, seed=2)) as sandbox:
        connector = await connect(sandbox.url)
        try:
            before = requests_of(sandbox)
            records, rejects = await collect(connector.read(stream, None, 500))
            made = requests_of(sandbox) - before
        finally:
            await connector.close()
    assert made == 1  # recorded: 1 request for 5,000 records (the old pager never ended)
    assert len(records) == 5000 and not rejects
    assert len({r.key for r in records}) == 5000


async def test_the_paging_option_against_the_real_unpaged_api_stops_instead_of_looping() -> None:
    with SimulatorThread(ClevertimSimulator(records=5000, seed=2)) as sandbox:
        connector = await connect(sandbox.url, paging=True)
        try:
            before = requests_of(sandbox)
            with pytest.raises(FatalError) as stopped:
                await collect(connector.read("contacts", None, 100))
            made = requests_of(sandbox) - before
        finally:
            await connector.close()
    # The whole list comes back in id order: the read loop's order guard stops it at once.
    assert isinstance(stopped.value, OrderViolation | PagingError)
    assert made <= 2, made


async def test_the_paging_option_is_stopped_when_a_paging_server_ignores_the_sort() -> None:
    with SimulatorThread(ClevertimSimulator(records=30, paging=True)) as sandbox:
        sandbox.call(sandbox.simulator.set_hostile, "ignore_sort")
        connector = await connect(sandbox.url, paging=True)
        try:
            with pytest.raises(OrderViolation, match="not in updated_at order"):
                await collect(connector.read("organisations", None, 5))
        finally:
            await connector.close()


async def test_the_paging_option_reads_whole_when_a_paging_server_ignores_paging() -> None:
    with SimulatorThread(ClevertimSimulator(records=30, paging=True)) as sandbox:
        connector = await connect(sandbox.url, paging=True)
        try:
            expected, _ = await collect(connector.read("contacts", None, 5))
            sandbox.call(sandbox.simulator.set_hostile, "ignore_paging")
            before = requests_of(sandbox)
            try:
                records, _ = await collect(connector.read("contacts", None, 5))
            except PagingError:
                records = None
            made = requests_of(sandbox) - before
        finally:
            await connector.close()
    assert made <= 3, made
    if records is not None:
        assert [r.key for r in records] == [r.key for r in expected]


async def test_find_makes_one_request_and_compares_on_the_client(sandbox: SimulatorThread) -> None:
    row = next(iter(sandbox.simulator.table("contacts")))
    connector = await connect(sandbox.url)
    try:
        before = requests_of(sandbox)
        probe = Contact(key="x", updated_at=utcnow(), email=row["email"][0].upper())
        found = await connector.find("contacts", probe)
        missing = await connector.find("contacts", probe.model_copy(update={"email": "nobody@nowhere.invalid"}))
        made = requests_of(sandbox) - before
    finally:
        await connector.close()
    assert found is not None and found.key == str(row["id"])
    assert missing is None
    assert made == 2


# -- the shape of entities -----------------------------------------------------------------------------
async def test_companies_carry_website_a_list_not_websites(sandbox: SimulatorThread) -> None:
    native = api(sandbox.url, "GET", "/company").json()["content"][0]
    assert isinstance(native["website"], list) and "websites" not in native
    refused = api(sandbox.url, "POST", "/company", json={"cn": "Old Shape Ltd", "websites": ["https://x.example"]})
    assert refused.status_code == 400 and "websites" in refused.json()["error"]

    connector = await connect(sandbox.url)
    try:
        read = await connector.get("organisations", str(native["id"]))
        created = await connector.create(
            "organisations",
            Organisation(key="n", updated_at=utcnow(), name="Website Co", website="https://website.example"),
        )
        assert read is not None and read.website == native["website"][0]
        assert read.extra["website"] == native["website"]
        moved = await connector.update(
            "organisations", created.key, created.model_copy(update={"website": "https://moved.example"})
        )
    finally:
        await connector.close()
    row = sandbox.simulator.table("companies").get(int(created.key))
    assert row["website"] == ["https://moved.example"] and "websites" not in row
    assert moved.website == "https://moved.example"


async def test_phone_types_are_capitalised(sandbox: SimulatorThread) -> None:
    types = {p["type"] for c in api(sandbox.url, "GET", "/contact").json()["content"] for p in c["phones"]}
    assert types <= {"Work", "Home", "Mobile", "Fax", "Pager"} and {"Work", "Mobile"} <= types
    refused = api(sandbox.url, "POST", "/contact", json={"fn": "Low", "phones": [{"type": "work", "no": "1"}]})
    assert refused.status_code == 400 and "invalid phone type 'work'" in refused.json()["error"]

    connector = await connect(sandbox.url)
    try:
        created = await connector.create(
            "contacts",
            Contact(key="n", updated_at=utcnow(), first_name="Cap", phone="+1 555 0101", mobile="+1 555 0102"),
        )
    finally:
        await connector.close()
    row = sandbox.simulator.table("contacts").get(int(created.key))
    assert row["phones"] == [{"type": "Work", "no": "+1 555 0101"}, {"type": "Mobile", "no": "+1 555 0102"}]
    assert (created.phone, created.mobile) == ("+1 555 0101", "+1 555 0102")


async def test_ctype_is_a_one_letter_code(sandbox: SimulatorThread) -> None:
    natives = api(sandbox.url, "GET", "/contact").json()["content"]
    assert all(isinstance(c["ctype"], str) and len(c["ctype"]) == 1 for c in natives)
    refused = api(sandbox.url, "POST", "/contact", json={"fn": "Typed", "ctype": "Customer"})
    assert refused.status_code == 400
    native = natives[0]
    connector = await connect(sandbox.url)
    try:
        record = await connector.get("contacts", str(native["id"]))
        assert record is not None and record.extra["ctype"] == native["ctype"]
        await connector.update("contacts", record.key, record.model_copy(update={"title": "Renamed"}))
    finally:
        await connector.close()
    assert sandbox.simulator.table("contacts").get(native["id"])["ctype"] == native["ctype"]


async def test_custom_fields_cf_are_keyed_by_custom_field_id(sandbox: SimulatorThread) -> None:
    native = api(sandbox.url, "GET", "/case").json()["content"][0]
    assert native["cf"] and all(key.isdigit() for key in native["cf"])
    refused = api(sandbox.url, "POST", "/case", json={"name": "By name", "cf": {"Priority": "High"}})
    assert refused.status_code == 400 and "custom field" in refused.json()["error"]
    connector = await connect(sandbox.url)
    try:
        record = await connector.get("tickets", str(native["id"]))
        assert record is not None and record.extra["cf"] == native["cf"]
        stored = await connector.update("tickets", record.key, record.model_copy(update={"subject": "Renamed"}))
    finally:
        await connector.close()
    assert stored.extra["cf"] == native["cf"]
    assert sandbox.simulator.table("cases").get(native["id"])["cf"] == native["cf"]


async def test_records_carry_more_fields_smids_region_lc_gid_kept_in_extra_and_preserved_on_write(
    sandbox: SimulatorThread,
) -> None:
    row = next(r for r in sandbox.simulator.table("contacts") if r.get("smids") and r.get("lc") and r.get("region"))
    before = {name: row[name] for name in ("smids", "region", "lc", "gid", "cf", "tags", "email")}
    connector = await connect(sandbox.url)
    try:
        record = await connector.get("contacts", str(row["id"]))
        assert record is not None
        assert {name: record.extra[name] for name in ("smids", "lc", "gid")} == {
            name: before[name] for name in ("smids", "lc", "gid")
        }
        stored = await connector.update("contacts", record.key, record.model_copy(update={"last_name": "Changed"}))
    finally:
        await connector.close()
    after = sandbox.simulator.table("contacts").get(row["id"])
    assert after["ln"] == "Changed"
    assert {name: after[name] for name in before} == before
    assert stored.extra["smids"] == before["smids"] and stored.extra["lc"] == before["lc"]


# -- verified writes -------------------------------------------------------------------------------------
async def test_a_put_answers_only_id_and_lc_and_the_update_is_read_back(sandbox: SimulatorThread) -> None:
    native = api(sandbox.url, "GET", "/contact").json()["content"][0]
    body = {k: v for k, v in native.items() if k not in {"id", "ao", "lm", "is_company"}}
    answer = api(sandbox.url, "PUT", f"/contact/{native['id']}", json={**body, "title": "Direct"}).json()
    assert answer["status"] == "OK" and set(answer["content"][0]) <= {"id", "lc"}
    case = api(sandbox.url, "GET", "/case").json()["content"][0]
    case_body = {k: v for k, v in case.items() if k not in {"id", "ao", "lm"}}
    assert api(sandbox.url, "PUT", f"/case/{case['id']}", json=case_body).json()["content"] == [{"id": case["id"]}]

    connector = await connect(sandbox.url)
    try:
        record = await connector.get("contacts", str(native["id"]))
        assert record is not None
        gets = sandbox.simulator.stats.requests
        stored = await connector.update("contacts", record.key, record.model_copy(update={"title": "Read back"}))
        assert sandbox.simulator.stats.requests - gets == 3  # GET to merge into, PUT, GET to read back
    finally:
        await connector.close()
    assert stored.title == "Read back" and stored.email == record.email and stored.updated_at >= record.updated_at


async def test_an_error_inside_a_200_put_is_a_rejection_with_clevertims_words(sandbox: SimulatorThread) -> None:
    native = api(sandbox.url, "GET", "/company").json()["content"][0]
    connector = await connect(sandbox.url)
    try:
        record = await connector.get("organisations", str(native["id"]))
        assert record is not None
        sandbox.call(sandbox.simulator.set_hostile, "error_in_200")
        with pytest.raises(RecordRejected, match=r"Clevertim refused PUT /api/company/\d+: Could not save the company"):
            await connector.update("organisations", record.key, record.model_copy(update={"name": "Nope"}))
    finally:
        sandbox.call(sandbox.simulator.set_hostile)
        await connector.close()
    assert sandbox.simulator.table("companies").get(native["id"])["cn"] == native["cn"]


async def test_deleted_entities_vanish_from_lists_and_get_answers_none(sandbox: SimulatorThread) -> None:
    connector = await connect(sandbox.url)
    try:
        assert connector.stream("contacts").hides_deleted
        created = await connector.create("contacts", Contact(key="n", updated_at=utcnow(), first_name="Gone"))
        await connector.delete("contacts", created.key)
        listed, _ = await collect(connector.read("contacts", None, 100))
        assert created.key not in {r.key for r in listed}
        assert await connector.get("contacts", created.key) is None
    finally:
        await connector.close()
    gone = api(sandbox.url, "GET", f"/contact/{created.key}")
    assert gone.status_code == 404 and gone.json() == {"status": "ERROR", "error": "No such contact."}


def test_lm_has_whole_seconds_and_every_stream_declares_it() -> None:
    for info in ClevertimConnector.describe().values():
        assert info.precision == timedelta(seconds=1)


@respx.mock
async def test_an_entity_without_lm_is_read_on_every_run_and_an_old_reject_is_not_repeated() -> None:
    base = "https://crm.example/api"
    respx.get(f"{base}/case").mock(
        return_value=httpx.Response(
            200,
            json={
                "status": "OK",
                "content": [
                    {"id": 1, "name": "old", "lm": "2017-01-01T00:00:00Z"},
                    {"id": 2, "name": "new", "lm": "2017-03-01T00:00:00Z"},
                    {"id": 3, "name": "timeless"},
                    {"id": 4, "name": "old and broken", "lm": "2017-01-01T00:00:00Z", "ao": "yesterday"},
                    {"id": 5, "name": "new and broken", "lm": "2017-03-01T00:00:00Z", "ao": "yesterday"},
                ],
            },
        )
    )
    options = ClevertimConnector.Options(base_url=base, api_token=TOKEN)
    connector = ClevertimConnector(SystemContext("crm", options, None, {}))
    await connector.open()
    try:
        since = Cursor(datetime(2017, 2, 1, tzinfo=UTC), "")
        records, rejects = await collect(connector.read("tickets", since, 10))
    finally:
        await connector.close()
    assert [r.key for r in records] == ["3", "2"]
    assert [r.key for r in rejects] == ["5"]
    assert isinstance(records[0], Ticket) and records[0].updated_at == datetime(1970, 1, 1, tzinfo=UTC)
