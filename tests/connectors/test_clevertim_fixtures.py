"""Every recorded Clevertim response in ``tests/fixtures/recorded/clevertim`` through the connector.

The payloads are vendor-written (the official Python client's test mocks, in the real
envelope; see the fixtures' README). Each one is served over respx exactly as stored and
read by the connector, and the canonical record is written out by hand. None of them
carries ``lm``, so each reads with ``updated_at`` 1970-01-01 (``UNDATED``); ``lc`` is
*last contacted* and is kept in ``extra``, never taken for a modification time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from ferryman.connector import SystemContext
from ferryman.errors import RecordRejected
from ferryman.records import Contact, Organisation, Ticket
from ferryman.testing import collect
from ferryman_connectors.clevertim import ClevertimConnector
from tests.fixtures import RECORDED

#: the shared fixtures folder beside the checkout
FIXTURES = RECORDED / "clevertim"
BASE = "https://crm.example/api"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def body(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
async def connector() -> AsyncIterator[ClevertimConnector]:
    options = ClevertimConnector.Options(base_url=BASE, api_token="t0ken", rate_limit=None, max_retries=0)
    connector = ClevertimConnector(SystemContext("crm", options, None, {}))
    await connector.open()
    try:
        yield connector
    finally:
        await connector.close()


PHONES = [
    {"no": "07979463643", "type": "Work"},
    {"no": "07979363643", "type": "Home"},
    {"no": "07979163643", "type": "Mobile"},
]
SMIDS = [
    {"smid": "mikesp40", "type": "Google+"},
    {"smid": "ciprianmiclaus", "type": "Github"},
    {"smid": "cippy", "type": "Skype"},
]
CF = {"1": "test", "2": "cf_value2", "3": "2017-05-22", "4": "US", "5": "CA", "6": "US-CA", "7": "USD"}
LINKS = {"tasks": [1, 2], "opportunities": [100, 101, 211], "cases": [55, 57], "files": [22, 34]}

MIKE = Contact(
    key="445",
    updated_at=EPOCH,
    email="mike.doodley@gmail.com",
    first_name="Mike",
    last_name="Doodley",
    title="Engineer",
    phone="07979463643",
    mobile="07979163643",
    organisation_key="999",
    street="199 Maverick Road",
    city="London",
    postcode="SW19 7BH",
    country="US",
    extra={
        "region": "US-FL",
        "description": "Mike is a great, likeable guy. He always returns my calls.",
        "email": ["mike.doodley@gmail.com", "mike.doodley@yahoo.com"],
        "website": ["http://www.google.com", "http://www.mikedoodley.com"],
        "phones": PHONES,
        "smids": SMIDS,
        "cf": CF,
        "tags": ["tag1", "tag2", "tag3"],
        **LINKS,
        "lfiles": [120, 330, 454],
        "lc": "2017-01-02T05:22:12Z",
        "cphoto": "pic.jpg",
    },
)
CLEVERTIM_LTD = Organisation(
    key="445",
    updated_at=EPOCH,
    name="Clevertim Ltd.",
    website="http://www.clevertim.com",
    phone="07979463643",
    street="199 Maverick Road",
    city="London",
    postcode="SW19 7BH",
    country="US",
    extra={
        "region": "US-FL",
        "description": "Clevertim is a great company. They do software.",
        "email": ["sales@gmail.com", "support@yahoo.com"],
        "website": ["http://www.clevertim.com", "http://www.clevertim.org"],
        "phones": PHONES,
        "smids": SMIDS,
        "cf": CF,
        "tags": ["tag1", "tag2", "tag3"],
        **LINKS,
        "lfiles": [120, 330, 454],
        "lc": "2017-01-02T05:22:12Z",
        "cphoto": "logo.jpg",
    },
)
CASE_1 = Ticket(
    key="445",
    updated_at=EPOCH,
    subject="Case 1",
    description="Clevertim is a great company. They do software.",
    assignee="2",
    extra={
        "cf": CF,
        "tags": ["tag1", "tag2", "tag3"],
        "tasks": [1, 2],
        "files": [22, 34],
        "lfiles": [120, 330, 454],
    },
)
#: fixture -> (stream, the canonical record by hand); the error fixtures are tested below
READS = {
    "contact_445.json": ("contacts", "/contact/445", MIKE),
    "contact_445_sparse.json": ("contacts", "/contact/445", Contact(key="445", updated_at=EPOCH, first_name="Mike")),
    "company_445.json": ("organisations", "/company/445", CLEVERTIM_LTD),
    "case_445.json": ("tickets", "/case/445", CASE_1),
}
#: a PUT answer -> (stream, what the GET answers, the record the update returns)
PUTS = {
    "contact_445_put.json": ("contacts", "/contact/445", "contact_445.json", MIKE),
    "company_445_put.json": ("organisations", "/company/445", "company_445.json", CLEVERTIM_LTD),
    "case_445_put.json": ("tickets", "/case/445", "case_445.json", CASE_1),
}
ERRORS = {
    "contact_445_not_found_error.json": ("contacts", "/contact/445", "No such contact."),
    "company_445_not_found_error.json": ("organisations", "/company/445", "No such company."),
}


def test_every_clevertim_fixture_is_parsed_by_a_test() -> None:
    assert {p.name for p in FIXTURES.glob("*.json")} == set(READS) | set(PUTS) | set(ERRORS)


@pytest.mark.parametrize("name", sorted(READS))
@respx.mock
async def test_a_recorded_get_reads_as_the_record_written_out_by_hand(name: str, connector: ClevertimConnector) -> None:
    stream, path, expected = READS[name]
    respx.get(BASE + path).mock(return_value=httpx.Response(200, json=body(name)))
    got = await connector.get(stream, "445")
    assert got == expected


@pytest.mark.parametrize("name", sorted(READS))
@respx.mock
async def test_a_recorded_entity_in_a_list_is_a_record_not_a_dead_letter(
    name: str, connector: ClevertimConnector
) -> None:
    stream, path, expected = READS[name]
    route = respx.get(BASE + path.rsplit("/", 1)[0]).mock(return_value=httpx.Response(200, json=body(name)))
    records, rejects = await collect(connector.read(stream, None, 100))
    assert (records, rejects) == ([expected], [])
    assert route.call_count == 1


@pytest.mark.parametrize("name", sorted(PUTS))
@respx.mock
async def test_a_recorded_put_answer_of_only_id_and_lc_is_read_back_not_rejected(
    name: str, connector: ClevertimConnector
) -> None:
    stream, path, full, expected = PUTS[name]
    get = respx.get(BASE + path).mock(return_value=httpx.Response(200, json=body(full)))
    put = respx.put(BASE + path).mock(return_value=httpx.Response(200, json=body(name)))
    edit = expected.model_copy(update={"extra": {}})
    stored = await connector.update(stream, "445", edit)
    assert stored == expected
    assert put.call_count == 1 and get.call_count == 2  # the entity to merge into, then the read-back
    sent = json.loads(put.calls.last.request.content)
    native = body(full)["content"][0]
    # Everything Clevertim holds travels back (its PUT replaces), but what it sets itself.
    assert sent == {k: v for k, v in native.items() if k not in {"id", "is_company"}}


@pytest.mark.parametrize("name", sorted(ERRORS))
@respx.mock
async def test_a_recorded_404_error_envelope_means_gone(name: str, connector: ClevertimConnector) -> None:
    stream, path, words = ERRORS[name]
    assert body(name) == {"status": "ERROR", "error": words}
    respx.get(BASE + path).mock(return_value=httpx.Response(404, json=body(name)))
    put = respx.put(BASE + path).mock(return_value=httpx.Response(404, json=body(name)))
    delete = respx.delete(BASE + path).mock(return_value=httpx.Response(404, json=body(name)))
    assert await connector.get(stream, "445") is None  # the delete probe: gone
    record = READS[name.replace("_not_found_error", "")][2]
    with pytest.raises(RecordRejected, match="does not exist in Clevertim"):
        await connector.update(stream, "445", record)
    assert put.call_count == 0
    await connector.delete(stream, "445")  # already gone is not an error
    assert delete.call_count == 1
