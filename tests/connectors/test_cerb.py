"""The Cerb connector: the contract kit (both auth styles), Cerb's errors inside HTTP 200,
the legacy signed header, and the field mapping's quirks."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from ferryman.connector import Cursor, SystemContext
from ferryman.errors import (
    AuthError,
    FatalError,
    NotSupportedError,
    RecordRejected,
    RetriableError,
    ValidationFailed,
)
from ferryman.records import Contact, Organisation, Ticket
from ferryman.sandbox import SimulatorThread
from ferryman.testing import ContractSetup, HostileContract, collect
from ferryman.timeutil import utcnow
from ferryman_connectors.cerb import CerbConnector, CerbNotFound, cerb_error
from ferryman_connectors.cerb._auth import CerbAuth, sort_query
from ferryman_connectors.cerb._mapping import (
    contact_fields,
    org_to_cerb,
    priority_to_importance,
    ticket_fields,
    ticket_to_cerb,
)
from ferryman_connectors.cerb.simulator import CerbSimulator

TOKEN = {"token": "sandbox-token"}
SIGNED = {"auth": "cerb_auth", "access_key": "sandbox-access", "secret_key": "sandbox-secret"}
PLUS_TWO = timezone(timedelta(hours=2))


def _ticket(n: int) -> Ticket:
    return Ticket(
        key=f"src-t{n}",
        updated_at=utcnow(),
        subject=f"Printer on fire, take {n}",
        status="pending",
        priority="high",
        created_at=datetime(2024, 3, 1, 12, n, tzinfo=PLUS_TWO),
    )


def _contact(n: int) -> Contact:
    return Contact(
        key=f"src-c{n}",
        updated_at=utcnow(),
        email=f"contract{n}@example.com",
        first_name="Ada",
        last_name="Lovelace",
        title="Analyst",
        phone="+44 20 7946 0001",
    )


def _org(n: int) -> Organisation:
    return Organisation(
        key=f"src-o{n}",
        updated_at=utcnow(),
        name=f"Contract Engines {n} Ltd",
        city="Oslo",
        country="NO",
        postcode="0150",
        website="https://engines.example",
    )


def _setup(options: dict[str, str]) -> ContractSetup:
    return ContractSetup(
        connector="cerb",
        simulator="cerb",
        options=lambda url: {"base_url": url + "/rest", **options},
        bad_options=lambda url: {"base_url": url + "/rest", **options, "token": "wrong", "secret_key": "wrong"},
        samples={"tickets": _ticket, "contacts": _contact, "organisations": _org},
    )


class TestCerbContract(HostileContract):
    """Every contract promise, once with an OAuth2 bearer token and once with Cerb-Auth signatures."""

    @pytest.fixture(params=["bearer", "cerb_auth"])
    def contract(self, request: pytest.FixtureRequest) -> ContractSetup:
        return _setup(TOKEN if request.param == "bearer" else SIGNED)


# -- helpers -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sandbox() -> Iterator[SimulatorThread]:
    with SimulatorThread(CerbSimulator(records=25, seed=11)) as running:
        yield running


@pytest.fixture
def fresh() -> Iterator[SimulatorThread]:
    with SimulatorThread(CerbSimulator(records=10, seed=5)) as running:
        yield running


async def _open(url: str, **options: Any) -> CerbConnector:
    merged = {"base_url": url + "/rest", **TOKEN, "backoff_base": 0.01, "backoff_cap": 0.02, **options}
    connector = CerbConnector(SystemContext("helpdesk", CerbConnector.Options.model_validate(merged), None, {}))
    await connector.open()
    return connector


@pytest.fixture
async def cerb(sandbox: SimulatorThread) -> AsyncIterator[CerbConnector]:
    connector = await _open(sandbox.url)
    yield connector
    await connector.close()


# -- errors inside HTTP 200 ---------------------------------------------------------------------
SEARCH = "/rest/records/ticket/search.json"
ONE = "/rest/records/contact/7.json"


@pytest.mark.parametrize(
    ("code", "method", "path", "expected"),
    [
        ("ERROR_PARAM_INVALID", "POST", "/rest/records/contact/create.json", RecordRejected),
        ("ERROR_PARAM_INVALID", "PUT", ONE, RecordRejected),
        ("ERROR_PARAM_REQUIRED", "PATCH", "/rest/records/org/upsert.json", RecordRejected),
        ("ERROR_PARAM_INVALID", "GET", SEARCH, FatalError),
        ("ERROR_SEARCH_FILTERS_INVALID", "GET", SEARCH, FatalError),
        ("ERROR_NOT_FOUND", "GET", ONE, CerbNotFound),
        ("ERROR_NOT_FOUND", "DELETE", ONE, CerbNotFound),
        ("ERROR_NOT_FOUND", "PUT", ONE, CerbNotFound),
        ("ERROR_NOT_FOUND", "PATCH", "/rest/records/org/upsert.json", RecordRejected),
        ("ERROR_NOT_FOUND", "GET", SEARCH, FatalError),
        ("ERROR_PERMISSIONS", "POST", "/rest/records/contact/create.json", AuthError),
        ("ERROR_NOT_IMPLEMENTED", "DELETE", ONE, NotSupportedError),
        ("ERROR", "GET", SEARCH, RetriableError),
        ("ERROR_DATABASE", "POST", "/rest/records/contact/create.json", RetriableError),
        (0, "GET", SEARCH, RetriableError),  # Cerb 7 sent numeric codes
    ],
)
def test_each_cerb_error_code_decides_what_the_engine_does(
    code: Any, method: str, path: str, expected: type[Exception]
) -> None:
    error = cerb_error({"__status": "error", "__error": code, "message": "Cerb's own words."}, method, path)
    assert type(error) is expected
    assert "Cerb's own words." in str(error)


def test_not_found_dead_letters_a_write_but_stops_nothing() -> None:
    error = cerb_error(
        {"__status": "error", "__error": "ERROR_NOT_FOUND", "message": "Record #7 not found"}, "PUT", ONE
    )
    assert isinstance(error, RecordRejected) and not isinstance(error, FatalError)


def _hooked(body: bytes, status: int = 200, **options: Any) -> CerbConnector:
    """A connector whose HTTP layer answers every request with ``body``."""
    transport = httpx.MockTransport(lambda request: httpx.Response(status, content=body))
    merged = {"base_url": "https://cerb.example.com/rest", **TOKEN, "max_retries": 0, **options}
    context = SystemContext("helpdesk", CerbConnector.Options.model_validate(merged), None, {})
    context.services["http_transport"] = transport
    return CerbConnector(context)


async def test_an_access_denied_inside_a_200_is_an_auth_error() -> None:
    """Cerb before OAuth2 answered bad credentials with 200 and no ``__error``."""
    connector = _hooked(b'{"__status":"error","message":"Access denied! (Invalid credentials: checksum)"}')
    await connector.open()
    try:
        with pytest.raises(AuthError, match=r"Access denied! \(Invalid credentials: checksum\)"):
            await collect(connector.read("tickets", None, 10))
    finally:
        await connector.close()


async def test_a_401_names_cerbs_reason_and_never_the_secret() -> None:
    connector = _hooked(b'{"__status":"error","message":"Access denied! (Invalid timestamp)"}', 401, **SIGNED)
    await connector.open()
    try:
        with pytest.raises(AuthError) as failure:
            await connector.get("tickets", "5")
    finally:
        await connector.close()
    text = str(failure.value)
    assert "Invalid timestamp" in text and "clock" in text
    assert "sandbox-secret" not in text and hashlib.md5(b"sandbox-secret").hexdigest() not in text


async def test_a_malformed_200_is_retried_not_misread() -> None:
    connector = _hooked(b'{"__status":"succ', max_retries=1, backoff_base=0.01)
    await connector.open()
    try:
        with pytest.raises(RetriableError, match="not valid JSON"):
            await connector.get("tickets", "5")
    finally:
        await connector.close()


async def test_an_unknown_error_on_a_read_is_retried_until_it_clears(
    fresh: SimulatorThread,
) -> None:
    expected, _ = await collect((c := await _open(fresh.url)).read("contacts", None, 50))
    try:
        fresh.call(fresh.simulator.inject_errors, 2, "ERROR", "Database connection lost.")
        records, _ = await collect(c.read("contacts", None, 50))
        assert [r.key for r in records] == [r.key for r in expected]
        assert not fresh.simulator._errors, "the two injected errors were answered and retried"
    finally:
        await c.close()


async def test_an_unknown_error_that_persists_fails_with_cerbs_message(fresh: SimulatorThread) -> None:
    c = await _open(fresh.url, max_retries=2)
    try:
        fresh.call(fresh.simulator.inject_errors, 3, "ERROR", "Database connection lost.")
        with pytest.raises(RetriableError, match=r"Database connection lost\."):
            await collect(c.read("tickets", None, 50))
    finally:
        await c.close()


async def test_an_unknown_error_on_a_create_is_not_repeated(fresh: SimulatorThread) -> None:
    """A POST create is not idempotent: one attempt, then the run fails (and reconciles later)."""
    c = await _open(fresh.url, max_retries=3)
    try:
        fresh.call(fresh.simulator.inject_errors, 5, "ERROR", "Deadlock found.")
        before = fresh.simulator.stats.requests
        with pytest.raises(RetriableError, match="Deadlock found"):
            await c.create("tickets", _ticket(1))
        assert fresh.simulator.stats.requests == before + 1
    finally:
        fresh.call(fresh.simulator._errors.clear)
        await c.close()


async def test_an_upsert_create_is_retried_because_repeating_it_is_safe(fresh: SimulatorThread) -> None:
    c = await _open(fresh.url)
    try:
        fresh.call(fresh.simulator.inject_errors, 1, "ERROR", "Deadlock found.")
        created = await c.create("contacts", _contact(77))
        again = await c.create("contacts", _contact(77).model_copy(update={"title": "Lead"}))
        assert again.key == created.key and again.title == "Lead"
        assert sum(1 for row in fresh.simulator.table("contact") if row["email"] == "contract77@example.com") == 1
    finally:
        await c.close()


async def test_a_refused_field_is_rejected_with_cerbs_message(cerb: CerbConnector) -> None:
    nameless = Contact(key="x", updated_at=utcnow(), email="no.name@example.com", last_name="Nobody")
    with pytest.raises(RecordRejected, match=r"The 'first_name' field is required\."):
        await cerb.create("contacts", nameless)


async def test_an_ambiguous_upsert_is_rejected_not_guessed(fresh: SimulatorThread) -> None:
    c = await _open(fresh.url, upsert_creates=False)
    try:
        twin = _org(5)
        await c.create("organisations", twin)
        await c.create("organisations", twin)  # plain creates: Cerb allows two orgs with one name
    finally:
        await c.close()
    c = await _open(fresh.url)
    try:
        with pytest.raises(RecordRejected, match="must match exactly one or zero records"):
            await c.create("organisations", twin)
        assert (found := await c.find("organisations", twin)) is not None and found.name == twin.name
    finally:
        await c.close()


async def test_missing_records_get_none_delete_quietly_and_refuse_updates(cerb: CerbConnector) -> None:
    assert await cerb.get("contacts", "999999") is None
    assert await cerb.get("contacts", "not-a-number") is None
    await cerb.delete("organisations", "999999")
    await cerb.delete("tickets", "999999")
    with pytest.raises(RecordRejected, match="Record #999999 not found"):
        await cerb.update("contacts", "999999", _contact(3))


async def test_permission_and_not_implemented_errors_stop_the_run(fresh: SimulatorThread) -> None:
    c = await _open(fresh.url)
    try:
        fresh.call(
            fresh.simulator.inject_errors, 1, "ERROR_PERMISSIONS", "You do not have permission to create contacts."
        )
        with pytest.raises(AuthError, match="permission to create contacts"):
            await c.create("tickets", _ticket(2))
        fresh.call(fresh.simulator.inject_errors, 1, "ERROR_NOT_IMPLEMENTED", "Not implemented.")
        with pytest.raises(NotSupportedError):
            await c.delete("contacts", "1")
    finally:
        await c.close()


# -- legacy Cerb-Auth ---------------------------------------------------------------------------
def _documented_signature(verb: str, date: str, path: str, query: str, body: str, secret: str) -> str:
    """Cerb's docs, written out by hand: md5 of the six lines, secret as its md5."""
    secret_md5 = hashlib.md5(secret.encode()).hexdigest()
    return hashlib.md5(f"{verb}\n{date}\n{path}\n{query}\n{body}\n{secret_md5}\n".encode()).hexdigest()


def test_query_parts_are_signed_sorted_by_name_keeping_their_encoding() -> None:
    assert sort_query("q=a%20b&limit=5&page=1") == "limit=5&page=1&q=a%20b"
    assert sort_query("?b=2&a=1&b=1") == "a=1&b=2&b=1"
    assert sort_query("") == ""


async def test_cerb_auth_signs_what_is_sent_as_cerb_documents() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"__status": "success", "id": 5})

    stamp = datetime(2024, 10, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    auth = CerbAuth("key123", "s3cret", clock=lambda: stamp)
    async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(answer)) as client:
        await client.put(
            "https://cerb.example.com/rest/records/ticket/5.json?expand=custom_&b=1",
            content=b"fields%5Bsubject%5D=Hi+there",
        )
    request = seen[0]
    assert request.headers["Date"] == "Tue, 01 Oct 2024 12:00:00 GMT"
    assert parsedate_to_datetime(request.headers["Date"]).timestamp() == stamp
    access, _, signature = request.headers["Cerb-Auth"].partition(":")
    expected = _documented_signature(
        "PUT",
        "Tue, 01 Oct 2024 12:00:00 GMT",
        "/rest/records/ticket/5.json",
        "b=1&expand=custom_",
        "fields%5Bsubject%5D=Hi+there",
        "s3cret",
    )
    assert access == "key123" and signature == expected


async def test_signed_requests_pass_and_a_skewed_date_is_refused() -> None:
    """Cerb refuses a Date 600 s or more from its clock: 401 -> AuthError naming the clock."""
    with SimulatorThread(CerbSimulator(records=5, clock_offset=590)) as close_enough:
        c = await _open(close_enough.url, **SIGNED)
        try:
            records, _ = await collect(c.read("contacts", None, 50))
            assert len(records) == 5
        finally:
            await c.close()
    with SimulatorThread(CerbSimulator(records=5, clock_offset=-900)) as skewed:
        c = await _open(skewed.url, **SIGNED)
        try:
            with pytest.raises(AuthError) as failure:
                await collect(c.read("contacts", None, 50))
        finally:
            await c.close()
        assert failure.value.status == 401
        assert "Access denied! (Invalid timestamp)" in str(failure.value) and "clock" in str(failure.value)
        assert skewed.simulator.stats.by_status.get("401") == 1, "an auth failure is not retried"


async def test_a_wrong_secret_fails_the_checksum(sandbox: SimulatorThread) -> None:
    c = await _open(sandbox.url, **{**SIGNED, "secret_key": "not-the-secret"})
    try:
        with pytest.raises(AuthError, match=r"Invalid credentials: checksum"):
            await c.create("contacts", _contact(9))
    finally:
        await c.close()


# -- time: everything out is UTC ------------------------------------------------------------------
async def test_a_non_utc_timestamp_is_written_as_the_right_instant_and_read_back_as_utc_z(
    cerb: CerbConnector, sandbox: SimulatorThread
) -> None:
    local = datetime(2024, 3, 1, 12, 30, tzinfo=PLUS_TWO)  # 10:30 UTC
    created = await cerb.create("tickets", _ticket(30).model_copy(update={"created_at": local}))
    row = sandbox.call(sandbox.simulator.table("ticket").get, int(created.key))
    assert row["created_at"] == datetime(2024, 3, 1, 10, 30, tzinfo=UTC)
    fetched = await cerb.get("tickets", created.key)
    assert fetched is not None and fetched.created_at is not None
    assert fetched.created_at.tzinfo is UTC and fetched.created_at == local
    dumped = fetched.model_dump(mode="json")
    assert dumped["created_at"] == "2024-03-01T10:30:00Z" and dumped["updated_at"].endswith("Z")


def test_an_incremental_query_names_its_start_in_utc_with_z() -> None:
    connector = _hooked(b"{}")
    since = datetime(2024, 6, 1, 9, 15, 42, 123456, tzinfo=PLUS_TWO)
    assert connector._incremental_query(since) == 'updated:"2024-06-01T07:15:42Z to now" sort:updated'
    assert connector._incremental_query(None) == "sort:updated"


async def test_incremental_read_sends_the_cursor_as_utc_and_returns_only_newer(
    cerb: CerbConnector, sandbox: SimulatorThread
) -> None:
    everything, _ = await collect(cerb.read("tickets", None, 500))
    middle = everything[len(everything) // 2]
    local_cursor = Cursor(middle.updated_at.astimezone(PLUS_TWO), middle.key)
    newer, _ = await collect(cerb.read("tickets", local_cursor, 4))
    assert {r.key for r in newer} == {r.key for r in everything if Cursor.of(r) >= Cursor.of(middle)}


# -- mapping quirks ---------------------------------------------------------------------------------
def test_ticket_status_waiting_is_pending_and_deleted_is_the_deleted_flag() -> None:
    base = {"id": 4, "subject": "x", "updated": 1717000000, "created": 1716000000, "closed": 0}
    waiting = ticket_fields({**base, "status": "waiting"})
    deleted = ticket_fields({**base, "status": "deleted"})
    assert waiting["status"] == "pending" and not waiting["deleted"]
    assert deleted["deleted"] and deleted["status"] is None
    back = ticket_to_cerb(Ticket(key="4", updated_at=utcnow(), subject="x", status="pending"), creating=False)
    assert back["status"] == "waiting"
    gone = ticket_to_cerb(Ticket(key="4", updated_at=utcnow(), subject="x", deleted=True), creating=False)
    assert gone["status"] == "deleted"


def test_importance_bands_round_trip_exactly_through_extra() -> None:
    native = {"id": 9, "subject": "x", "status": "open", "updated": 1717000000, "importance": 60, "org_id": 0}
    fields = ticket_fields(native)
    assert fields["priority"] == "normal" and fields["extra"]["importance"] == 60
    assert fields["organisation_key"] is None
    record = Ticket.model_validate(fields)
    assert ticket_to_cerb(record, creating=False)["importance"] == 60
    assert priority_to_importance("urgent") == 100 and priority_to_importance("40") == 40
    assert ticket_to_cerb(record.model_copy(update={"priority": "high"}), creating=False)["importance"] == 75
    with pytest.raises(ValidationFailed, match="no Cerb importance"):
        priority_to_importance("blocker")


def test_a_foreign_organisation_key_is_refused_rather_than_linked_to_a_stranger() -> None:
    record = Ticket(key="1", updated_at=utcnow(), subject="x", organisation_key="acme-42")
    with pytest.raises(ValidationFailed, match="not a Cerb record id"):
        ticket_to_cerb(record, creating=True)


def test_a_new_ticket_lands_in_the_default_group_and_keeps_its_creation_time() -> None:
    record = Ticket(key="1", updated_at=utcnow(), subject="x", created_at=datetime(2024, 1, 1, tzinfo=PLUS_TWO))
    fields = ticket_to_cerb(record, creating=True, default_group_id=3)
    # Cerb has no bucket 0: no bucket_id at all puts the ticket in the group's inbox.
    assert fields["group_id"] == 3 and "bucket_id" not in fields
    assert fields["created"] == int(datetime(2023, 12, 31, 22, tzinfo=UTC).timestamp())
    assert "org_id" not in fields and "owner_id" not in fields


def test_empty_cerb_text_reads_as_none_and_an_update_clears_with_empty() -> None:
    native = {"id": 3, "first_name": "Ana", "last_name": "", "email": "ana@example.com", "title": "", "org_id": 0}
    fields = contact_fields({**native, "updated_at": 1717000000, "created_at": 0, "location": "", "language": "en_US"})
    assert fields["last_name"] is None and fields["title"] is None and fields["created_at"] is None
    assert fields["extra"] == {"language": "en_US"}
    org = Organisation(key="1", updated_at=utcnow(), name="Acme", postcode="N1 9GU")
    assert org_to_cerb(org, creating=True) == {"name": "Acme", "postal": "N1 9GU"}
    cleared = org_to_cerb(org, creating=False)
    assert cleared["postal"] == "N1 9GU" and cleared["city"] is None and "created" not in cleared


async def test_writes_are_form_encoded_fields_and_creates_upsert_by_natural_key() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"__status": "success", "id": 8, "name": "Contract Engines 1 Ltd", "updated": 1}
        )

    merged = {"base_url": "https://cerb.example.com/rest", **TOKEN}
    context = SystemContext("helpdesk", CerbConnector.Options.model_validate(merged), None, {})
    context.services["http_transport"] = httpx.MockTransport(answer)
    connector = CerbConnector(context)
    await connector.open()
    try:
        stored = await connector.create("organisations", _org(1))
        await connector.update("organisations", "8", _org(1))
    finally:
        await connector.close()
    upsert, put = seen
    assert (upsert.method, upsert.url.path) == ("PATCH", "/rest/records/org/upsert.json")
    assert upsert.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = parse_qsl(upsert.content.decode(), keep_blank_values=True)
    assert ("query", 'name:"Contract Engines 1 Ltd"') in form
    assert ("fields[name]", "Contract Engines 1 Ltd") in form and ("fields[postal]", "0150") in form
    assert (put.method, put.url.path) == ("PUT", "/rest/records/org/8.json")
    assert ("fields[street]", "") in parse_qsl(put.content.decode(), keep_blank_values=True)
    assert upsert.headers["Authorization"] == "Bearer sandbox-token"
    assert stored.key == "8"
