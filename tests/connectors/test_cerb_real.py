"""Cerb as it really behaves (seeds README, "Verified against the real systems", Cerb 10.4 and
the recorded Cerb 7.0.5 responses in tests/fixtures/recorded/cerb): each fact is a behaviour of the
simulator, checked over raw HTTP, and the connector's answer to it."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from ferryman.connector import Cursor, SystemContext
from ferryman.cursor import is_due, newest
from ferryman.errors import AuthError, OrderViolation
from ferryman.records import Contact, Organisation, Ticket, fingerprint
from ferryman.sandbox import SimulatorThread
from ferryman.testing import collect
from ferryman.timeutil import utcnow
from ferryman_connectors.cerb import CerbConnector
from ferryman_connectors.cerb.simulator import CerbSimulator
from tests.fixtures import RECORDED as RECORDED_DIR

FIXTURES = RECORDED_DIR / "cerb"
TOKEN = "sandbox-token"


@pytest.fixture
def sandbox() -> Iterator[SimulatorThread]:
    with SimulatorThread(CerbSimulator(records=20, seed=3)) as running:
        yield running


async def _open(url: str, name: str = "helpdesk", **options: Any) -> CerbConnector:
    merged = {"base_url": url + "/rest", "token": TOKEN, "backoff_base": 0.01, "backoff_cap": 0.02, **options}
    connector = CerbConnector(SystemContext(name, CerbConnector.Options.model_validate(merged), None, {}))
    await connector.open()
    return connector


@pytest.fixture
async def cerb(sandbox: SimulatorThread) -> AsyncIterator[CerbConnector]:
    connector = await _open(sandbox.url)
    yield connector
    await connector.close()


def _api(sandbox: SimulatorThread) -> httpx.Client:
    return httpx.Client(
        base_url=sandbox.url + "/rest/records", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )


def _search(sandbox: SimulatorThread, kind: str, q: str, **params: Any) -> dict[str, Any]:
    with _api(sandbox) as api:
        body: dict[str, Any] = api.get(f"/{kind}/search.json", params={"q": q, "limit": 500, **params}).json()
    return body


def _rows(sandbox: SimulatorThread, kind: str) -> dict[int, dict[str, Any]]:
    """A snapshot of a simulator table, every field copied."""
    return sandbox.call(lambda: {row["id"]: dict(row) for row in sandbox.simulator.table(kind)})


def _ticket(n: int, **changes: Any) -> Ticket:
    return Ticket(key=f"src-{n}", updated_at=utcnow(), subject=f"Real Cerb ticket {n}", status="open", **changes)


# -- tickets ----------------------------------------------------------------------------------------
async def test_there_is_no_bucket_0_so_a_ticket_create_with_the_default_config_lands_in_the_inbox(
    sandbox: SimulatorThread, cerb: CerbConnector
) -> None:
    with _api(sandbox) as api:
        refused = api.post(
            "/ticket/create.json", data={"fields[subject]": "x", "fields[group_id]": "1", "fields[bucket_id]": "0"}
        )
        moved = api.post(
            "/ticket/create.json", data={"fields[subject]": "y", "fields[group_id]": "1", "fields[bucket_id]": "5"}
        )
    assert refused.status_code == 200
    assert refused.json()["__error"] == "ERROR_PARAM_INVALID"
    assert refused.json()["message"] == "Failed to look up bucket_id: 0"
    assert moved.json()["group_id"] == 2, "a bucket of another group moves the ticket to that group"

    created = await cerb.create("tickets", _ticket(1))
    assert created.subject == "Real Cerb ticket 1"
    assert (created.extra["group_id"], created.extra["bucket_id"]) == (1, 1), "group 1's inbox is bucket 1"


async def test_a_ticket_put_does_not_bump_updated_so_an_edit_by_ferryman_is_seen_by_the_next_incremental_read(
    sandbox: SimulatorThread, cerb: CerbConnector
) -> None:
    everything, _ = await collect(cerb.read("tickets", None, 500))
    live = [t for t in everything if not t.deleted]
    oldest = min(live, key=lambda t: t.updated_at)
    with _api(sandbox) as api:
        plain = api.put(f"/ticket/{oldest.key}.json", data={"fields[subject]": "Edited, not bumped"}).json()
    assert plain["subject"] == "Edited, not bumped" and plain["updated"] == int(oldest.updated_at.timestamp())

    # Another pipeline reads the same Cerb incrementally from where it stood before the edit.
    other = await _open(sandbox.url, "reader")
    try:
        cursor = newest(everything)
        time.sleep(1.05)  # the edit falls in a later second than the cursor
        edited = await cerb.update("tickets", oldest.key, oldest.model_copy(update={"subject": "Edited by Ferryman"}))
        assert edited.updated_at > cursor.updated_at
        seen, _ = await collect(other.read("tickets", cursor, 50))
        assert (oldest.key, "Edited by Ferryman") in [(t.key, t.subject) for t in seen]
        assert all(is_due(t, cursor) for t in seen)

        await cerb.delete("tickets", live[-1].key)  # status=deleted is a PUT too
        gone, _ = await collect(other.read("tickets", Cursor.of(edited), 50))
        assert {t.key: t.deleted for t in gone}.get(live[-1].key) is True, "a delete by status is visible"
    finally:
        await other.close()


async def test_reopening_keeps_closed_in_cerb_so_the_connector_clears_it(
    sandbox: SimulatorThread, cerb: CerbConnector
) -> None:
    created = await cerb.create("tickets", _ticket(2))
    with _api(sandbox) as api:
        closed = api.put(f"/ticket/{created.key}.json", data={"fields[status]": "closed"}).json()
        reopened = api.put(f"/ticket/{created.key}.json", data={"fields[status]": "open"}).json()
    assert closed["closed"] > 0 and reopened["closed"] == closed["closed"], "Cerb keeps closed on reopen"
    read = await cerb.get("tickets", created.key)
    assert read is not None and read.status == "open" and read.closed_at is None, "an open ticket is not closed"

    await cerb.update("tickets", created.key, read.model_copy(update={"status": "closed"}))
    again = await cerb.update("tickets", created.key, read.model_copy(update={"status": "open"}))
    assert again.closed_at is None
    assert sandbox.call(lambda: sandbox.simulator.table("ticket").get(int(created.key))["closed"]) is None


async def test_volatile_fields_are_kept_out_of_extra_and_fingerprints(sandbox: SimulatorThread) -> None:
    raw = _search(sandbox, "ticket", "sort:updated")["results"][0]
    assert "num_messages" in raw and "elapsed_response_first" in raw
    default = await _open(sandbox.url)
    keeping = await _open(sandbox.url, volatile_fields=[])
    try:
        first = await default.get("tickets", str(raw["id"]))
        time.sleep(1.05)  # elapsed_* has moved on
        second = await default.get("tickets", str(raw["id"]))
        assert first is not None and second is not None
        assert not any(k.startswith(("elapsed_", "num_messages")) for k in first.extra)
        assert first == second and fingerprint(first) == fingerprint(second)
        kept = await keeping.get("tickets", str(raw["id"]))
        assert kept is not None and "num_messages" in kept.extra
    finally:
        await default.close()
        await keeping.close()


# -- contacts -----------------------------------------------------------------------------------------
async def test_contacts_come_without_email_unless_expanded_so_reads_take_email_from_the_address(
    sandbox: SimulatorThread, cerb: CerbConnector
) -> None:
    plain = _search(sandbox, "contact", "sort:updated")["results"]
    expanded = _search(sandbox, "contact", "sort:updated", expand="email_address")["results"]
    assert all("email" not in c and "email_address" not in c and "created_at" not in c for c in plain)
    assert all(isinstance(c["id"], str) for c in plain), "a contact id is a string"
    assert all(c["email_address"] for c in expanded)

    emails = {str(i): row["email"] for i, row in _rows(sandbox, "contact").items()}
    records, rejects = await collect(cerb.read("contacts", None, 7))
    assert not rejects
    assert {r.key: r.email for r in records} == emails
    assert not any(key.startswith("email_") for r in records for key in r.extra)
    one = await cerb.get("contacts", records[0].key)
    assert one is not None and one.email == emails[records[0].key]


async def test_email_quoted_search_is_a_phrase_so_importing_doe_next_to_john_doe_creates_a_new_contact(
    sandbox: SimulatorThread, cerb: CerbConnector
) -> None:
    sim = sandbox.simulator
    with _api(sandbox) as api:
        john = api.post(
            "/contact/create.json", data={"fields[first_name]": "John", "fields[email]": "john.doe@acme.example"}
        ).json()
    assert not _search(sandbox, "contact", 'email:"john.doe@acme.example"')["results"], "not indexed yet"
    exact = _search(sandbox, "contact", 'email:(email:"JOHN.DOE@acme.example")')["results"]
    assert [c["id"] for c in exact] == [john["id"]], "the address filter is exact and needs no index"
    sandbox.call(sim.run_indexer)
    phrase = _search(sandbox, "contact", 'email:"doe@acme.example"')["results"]
    assert [c["id"] for c in phrase] == [john["id"]], "a phrase match finds john.doe for doe"

    before = _rows(sandbox, "contact")
    doe = Contact(key="csv-9", updated_at=utcnow(), email="doe@acme.example", first_name="Jane", last_name="Doe")
    assert await cerb.find("contacts", doe) is None
    created = await cerb.create("contacts", doe)
    after = _rows(sandbox, "contact")
    assert created.key != john["id"] and created.email == "doe@acme.example"
    assert set(after) - set(before) == {int(created.key)}
    assert {i: after[i] for i in before} == before, "no other contact changed"
    found = await cerb.find("contacts", doe)
    assert found is not None and found.key == created.key


async def test_contact_created_at_is_not_editable_and_an_empty_email_is_refused_so_neither_is_sent(
    sandbox: SimulatorThread, cerb: CerbConnector
) -> None:
    with _api(sandbox) as api:
        stamp = api.post(
            "/contact/create.json", data={"fields[first_name]": "Ann", "fields[created_at]": "1700000000"}
        ).json()
        blank = api.put("/contact/1.json", data={"fields[email]": ""}).json()
    assert stamp["__status"] == "error" and stamp["message"] == "'created_at' is not an editable field."
    assert blank["__status"] == "error" and blank["message"] == "Failed to lookup address: "

    imported = Contact(
        key="csv-1",
        updated_at=utcnow(),
        email="ann.import@example.org",
        first_name="Ann",
        created_at=datetime(2020, 1, 1, tzinfo=UTC),
    )
    created = await cerb.create("contacts", imported)
    assert created.email == "ann.import@example.org"
    emailless = await cerb.update("contacts", created.key, imported.model_copy(update={"email": None, "title": "CTO"}))
    assert emailless.title == "CTO" and emailless.email == "ann.import@example.org", "the address is kept"


# -- queries ---------------------------------------------------------------------------------------------
NAMES = ['Smith "Smithy" & Sons', "Back\\slash Ltd", "Star*Corp", "Globe*", 'Odd \\" End']


async def test_quotes_backslashes_and_stars_have_no_escapes_so_names_with_them_imported_twice_make_no_duplicate(
    sandbox: SimulatorThread, cerb: CerbConnector
) -> None:
    with _api(sandbox) as api:
        globex = api.post("/org/create.json", data={"fields[name]": "Globex"}).json()
        api.post("/org/create.json", data={"fields[name]": 'Say "hi"'})
        api.post("/org/create.json", data={"fields[name]": "Probe Ltd"})
    assert [o["id"] for o in _search(sandbox, "org", 'name:"Globe*"')["results"]] == [globex["id"]]
    assert not _search(sandbox, "org", 'name:"Say \\"hi\\""')["results"], "no escapes inside quotes"
    assert [o["name"] for o in _search(sandbox, "org", "name:Probe")["results"]] == ["Probe Ltd"], "a prefix"

    before = _rows(sandbox, "org")
    for _ in range(2):
        for n, name in enumerate(NAMES):
            await cerb.create("organisations", Organisation(key=f"csv-{n}", updated_at=utcnow(), name=name))
    after = _rows(sandbox, "org")
    new = [row["name"] for i, row in after.items() if i not in before]
    assert sorted(new) == sorted(NAMES), "each name once, none twice"
    assert after[globex["id"]] == before[globex["id"]], "Globex was not taken for Globe*"
    for name in NAMES:
        found = await cerb.find("organisations", Organisation(key="x", updated_at=utcnow(), name=name))
        assert found is not None and found.name == name


async def test_unknown_filters_and_sort_fields_are_ignored_so_a_lost_sort_stops_the_read(
    sandbox: SimulatorThread,
) -> None:
    every = _search(sandbox, "ticket", "")["total"]
    assert _search(sandbox, "ticket", "no_such_filter:42")["total"] == every
    assert _search(sandbox, "ticket", 'updated:"yesterday-ish to now"')["total"] == every, "an invalid date"
    assert _search(sandbox, "ticket", 'updated:"2020-01-01T00:00:00.5Z to now"')["total"] == 0
    typo = await _open(sandbox.url, search_sort="updatd")  # Cerb ignores the sort: id order
    try:
        with pytest.raises(OrderViolation, match="not in updated_at order"):
            await collect(typo.read("tickets", None, 5))
    finally:
        await typo.close()


async def test_a_date_without_a_zone_is_read_in_the_workers_timezone_so_reads_send_utc_with_z(
    sandbox: SimulatorThread, cerb: CerbConnector
) -> None:
    rows = sorted(_rows(sandbox, "ticket").values(), key=lambda r: r["updated_at"])
    middle = rows[len(rows) // 2]["updated_at"]
    naive = middle.strftime("%Y-%m-%dT%H:%M:%S")
    with_z = _search(sandbox, "ticket", f'updated:"{naive}Z to now"')["total"]
    assert _search(sandbox, "ticket", f'updated:"{naive} to now"')["total"] != with_z, "New York, not UTC"
    since = Cursor(middle, "")
    records, _ = await collect(cerb.read("tickets", since, 4))
    assert len(records) == with_z


async def test_a_page_past_the_end_repeats_the_last_page_so_reads_never_ask_for_one(
    sandbox: SimulatorThread, cerb: CerbConnector
) -> None:
    total = _search(sandbox, "ticket", "")["total"]
    last = _search(sandbox, "ticket", "sort:id", limit=7, page=(total + 6) // 7)["results"]
    past = _search(sandbox, "ticket", "sort:id", limit=7, page=99)["results"]
    assert [t["id"] for t in past] == [t["id"] for t in last] and past  # (elapsed_* may tick between)
    asked = sandbox.simulator.pages_past_end
    records, _ = await collect(cerb.read("tickets", None, 7))
    assert len(records) == total == len({r.key for r in records})
    assert sandbox.simulator.pages_past_end == asked, "the read asked for a page past the end"


async def test_a_token_without_the_scope_gets_a_200_without_code_and_the_run_stops_as_an_auth_error(
    sandbox: SimulatorThread, cerb: CerbConnector
) -> None:
    sandbox.call(sandbox.simulator.unscoped.add, "contact")
    with _api(sandbox) as api:
        answer = api.get("/contact/search.json")
    assert answer.status_code == 200 and answer.json()["__status"] == "error" and "__error" not in answer.json()
    with pytest.raises(AuthError, match="scope"):
        await collect(cerb.read("contacts", None, 10))
    assert (await collect(cerb.read("organisations", None, 10)))[0], "other record types still read"


async def test_a_date_with_fractional_seconds_gives_no_results_so_reads_send_whole_seconds(
    sandbox: SimulatorThread, cerb: CerbConnector
) -> None:
    rows = sorted(_rows(sandbox, "ticket").values(), key=lambda r: r["updated_at"])
    middle = rows[len(rows) // 2]["updated_at"]
    whole = middle.strftime("%Y-%m-%dT%H:%M:%SZ")
    fractional = middle.strftime("%Y-%m-%dT%H:%M:%S.250Z")
    assert _search(sandbox, "ticket", f'updated:"{whole} to now"')["total"] > 0
    assert _search(sandbox, "ticket", f'updated:"{fractional} to now"')["total"] == 0
    since = Cursor(middle.replace(microsecond=250_000), "")  # a cursor with a fraction still finds them
    records, _ = await collect(cerb.read("tickets", since, 50))
    assert records and all(r.updated_at >= middle.replace(microsecond=0) for r in records)


async def test_an_expired_token_gets_401_denied_the_request_and_stops_the_run_as_an_auth_error(
    sandbox: SimulatorThread,
) -> None:
    with httpx.Client(base_url=sandbox.url + "/rest/records", headers={"Authorization": "Bearer expired"}) as api:
        answer = api.get("/ticket/search.json")
    assert answer.status_code == 401 and "denied the request" in answer.text
    connector = await _open(sandbox.url, token="expired")
    try:
        with pytest.raises(AuthError):
            await collect(connector.read("tickets", None, 10))
    finally:
        await connector.close()


# -- recorded responses (Cerb 7.0.5) -------------------------------------------------------------------------
def _fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def _recorded_extra(mask: str, url: str, **more: Any) -> dict[str, Any]:
    return {"bucket_id": 1, "group_id": 1, "importance": 50, "mask": mask, "reopen_date": 0, "url": url, **more}


RECORDED = {
    "ticket_get.json": Ticket(
        key="1",
        updated_at=datetime(2016, 1, 20, 9, 36, 16, tzinfo=UTC),
        subject="Welcome to Cerb!",
        status="open",
        priority="normal",
        created_at=datetime(2016, 1, 20, 9, 36, 16, tzinfo=UTC),
        extra=_recorded_extra(
            "SEE-99298-636",
            "http://localhost:8080/cerb-7.0.5/profiles/ticket/SEE-99298-636",
            initial_message_id=1,
            initial_response_message_id=0,
            latest_message_id=1,
            spam_score=0.0023,
        ),
    ),
    "tickets_search.json": Ticket(
        key="2",
        updated_at=datetime(2016, 1, 20, 9, 50, 45, tzinfo=UTC),
        subject="second",
        status="pending",
        priority="normal",
        created_at=datetime(2016, 1, 20, 9, 50, 45, tzinfo=UTC),
        extra=_recorded_extra(
            "ACB-99934-772",
            "http://localhost:8080/cerb-7.0.5/profiles/ticket/ACB-99934-772",
            initial_message_id=2,
            initial_response_message_id=0,
            latest_message_id=2,
            spam_score=0.0001,
            spam_training="N",
        ),
    ),
}


def _replaying(name: str) -> CerbConnector:
    body = (FIXTURES / name).read_bytes()
    merged = {"base_url": "https://cerb.example.com/rest", "token": TOKEN, "max_retries": 0}
    context = SystemContext("recorded", CerbConnector.Options.model_validate(merged), None, {})
    context.services["http_transport"] = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    return CerbConnector(context)


def test_every_recorded_cerb_fixture_is_parsed_by_a_test() -> None:
    assert sorted(p.name for p in FIXTURES.iterdir()) == sorted(RECORDED)


async def test_a_recorded_cerb_7_ticket_reads_with_closed_at_zero_ids_and_string_numbers() -> None:
    raw = _fixture("ticket_get.json")
    assert raw["closed_at"] == 0 and raw["org_id"] == 0 and raw["num_messages"] == "1"
    connector = _replaying("ticket_get.json")
    await connector.open()
    try:
        record = await connector.get("tickets", "1")
    finally:
        await connector.close()
    assert record == RECORDED["ticket_get.json"]


async def test_a_recorded_cerb_7_search_without_a_limit_key_reads_its_one_result_once() -> None:
    raw = _fixture("tickets_search.json")
    assert "limit" not in raw and raw["total"] == raw["count"] == 1
    connector = _replaying("tickets_search.json")
    await connector.open()
    try:
        records, rejects = await collect(connector.read("tickets", None, 50))
    finally:
        await connector.close()
    assert not rejects
    assert records == [RECORDED["tickets_search.json"]]
