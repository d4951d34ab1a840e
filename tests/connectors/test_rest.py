"""The generic ``rest`` connector: configured in YAML only, against ``sandbox generic``.

The shipped example (config/rest.example.yaml) is the configuration under test wherever
possible: the contract kit runs on it, and the CLI pulls and pushes with it.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import math
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, get_args
from zoneinfo import ZoneInfo

import httpx
import pytest
import respx
import yaml

from ferryman import cli
from ferryman.api import to_record
from ferryman.config import load_config
from ferryman.connector import Capability, Cursor, Reject, SystemContext, record_order
from ferryman.errors import AuthError, ConfigError, MalformedResponseError, RecordRejected
from ferryman.http.pagination import extract
from ferryman.records import Contact, Invoice, Ticket
from ferryman.sandbox import SimulatorThread
from ferryman.state import StateStore
from ferryman.testing import ContractSetup, HostileContract, collect
from ferryman.timeutil import from_epoch, parse_datetime, utcnow
from ferryman_connectors.rest import Mapper, RestConnector, RestOptions, StreamSpec, format_time
from ferryman_connectors.rest.simulator import GenericSimulator
from tests.conftest import run_cli
from tests.e2e.support import sandbox_process as run_sandbox

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "rest.example.yaml"
KEY = "sandbox-key"


def example_options(url: str, key: str = KEY) -> dict[str, Any]:
    """The example's ``sandbox`` system pointed at ``url``, with a literal key (as tests may).

    Its client-side rate limit is dropped: pacing is tested in tests/e2e/test_http_politeness.py.
    """
    system = yaml.safe_load(EXAMPLE.read_text())["systems"]["sandbox"]
    system.pop("connector")
    system.pop("rate_limit")
    system["base_url"] = f"{url}/api"
    system["auth"]["key"] = key
    return system


def contacts_options(url: str, **stream: Any) -> dict[str, Any]:
    """A system with one ``contacts`` stream over the sandbox; ``stream`` overrides its keys."""
    spec: dict[str, Any] = {
        "record": "contact",
        "path": "/api/contacts",
        "records_path": "data",
        "pagination": {"style": "page", "pages_path": "total_pages"},
        "fields": {"email": "email", "first_name": "first_name", "last_name": "last_name", "organisation": "company"},
    }
    spec.update(stream)
    return {"base_url": url, "auth": {"type": "header", "key": KEY}, "streams": {"contacts": spec}}


@contextlib.asynccontextmanager
async def connected(options: dict[str, Any], **services: Any) -> AsyncIterator[RestConnector]:
    connector = RestConnector(SystemContext("api", RestOptions.model_validate(options), None, dict(services)))
    await connector.open()
    try:
        yield connector
    finally:
        await connector.close()


class Recorder(httpx.AsyncBaseTransport):
    """A real transport that remembers every URL it sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.urls: list[httpx.URL] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(request.url)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SimulatorThread]:
    with SimulatorThread(GenericSimulator(records=60, seed=5)) as running:
        yield running


def rows(sandbox: SimulatorThread, stream: str) -> list[dict[str, Any]]:
    return list(sandbox.simulator.table(stream))


# -- the contract kit, on the shipped example ------------------------------------------------------


class TestRestContract(HostileContract):
    @pytest.fixture
    def contract(self) -> ContractSetup:
        return ContractSetup(
            connector="rest",
            simulator="generic",
            options=example_options,
            bad_options=lambda url: example_options(url, key="not-the-key"),
            samples={
                "tickets": lambda n: Ticket(
                    key="new",
                    updated_at=utcnow(),
                    subject=f"Contract ticket {n}",
                    description="Printer on fire",
                    status="pending",
                    priority="high",
                    requester_email=f"requester{n}@example.com",
                ),
                "contacts": lambda n: Contact(
                    key="new",
                    updated_at=utcnow(),
                    email=f"contract{n}@example.com",
                    first_name="Ada",
                    last_name=f"Lovelace {n}",
                    phone="+44 20 7946 0000",
                    organisation="Analytical Engines Ltd",
                ),
                "invoices": lambda n: Invoice(
                    key="new",
                    updated_at=utcnow(),
                    number=f"CT-{n:04d}",
                    customer_key="1",
                    amount=Decimal("1234.50"),
                    currency="EUR",
                    status="open",
                    issued_on=date(2026, 1, 5),
                    due_on=date(2026, 2, 4),
                ),
            },
            edits={"invoices": lambda r: r.model_copy(update={"amount": Decimal("99.95"), "status": "paid"})},
            # a default page smaller than the data, so that a server ignoring paging claims more pages
            simulator_kwargs={"records": 30, "seed": 7, "page_size": 10},
        )


# -- pagination: every style walks every page -----------------------------------------------------

STYLES: dict[str, dict[str, Any]] = {
    "page": {"style": "page", "size_param": "per_page", "pages_path": "total_pages"},
    "offset": {"style": "offset", "offset_param": "offset", "size_param": "limit", "total_path": "total"},
    "cursor": {"style": "cursor", "cursor_path": "next_cursor", "param": "cursor"},
    "next_url": {"style": "next_url", "path": "next"},
    "link": {"style": "link", "rel": "next", "size_param": "per_page"},
}
SIM_PATH = {"page": "page", "offset": "offset", "cursor": "cursor", "next_url": "next", "link": "link"}


@pytest.mark.parametrize("style", STYLES)
async def test_each_pagination_style_reads_every_record_once_in_order(sandbox: SimulatorThread, style: str) -> None:
    options = contacts_options(sandbox.url, path=f"/api/{SIM_PATH[style]}/contacts", pagination=STYLES[style])
    before = sandbox.simulator.stats.requests
    async with connected(options) as connector:
        records, rejects = await collect(connector.read("contacts", None, 7))
    requests = sandbox.simulator.stats.requests - before
    expected = rows(sandbox, "contacts")
    assert not rejects
    assert sorted(r.key for r in records) == sorted(str(row["id"]) for row in expected)
    assert records == sorted(records, key=record_order)
    assert requests == math.ceil(len(expected) / 7), "one request per page of 7, no more"
    by_key = {r.key: r for r in records}
    sample = expected[3]
    assert by_key[str(sample["id"])].email == sample["email"]
    assert by_key[str(sample["id"])].organisation == sample["company"]


@pytest.mark.parametrize("style", STYLES)
async def test_incremental_read_crosses_a_second_shared_by_more_records_than_a_page(style: str) -> None:
    """Eight contacts share one whole second; pages of three must deliver each exactly once."""
    stamp = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    with SimulatorThread(GenericSimulator(records=20, seed=11)) as sandbox:
        table = sandbox.simulator.table("contacts")
        tied: list[dict[str, Any]] = [
            {"email": f"tie{i}@example.com", "first_name": "Tie", "last_name": str(i), "phone": None, "company": None}
            for i in range(8)
        ]
        for row in tied:
            row.update(created_at=stamp, updated_at=stamp)
        sandbox.call(table.load, tied)
        options = contacts_options(
            sandbox.url,
            path=f"/api/{SIM_PATH[style]}/contacts",
            pagination={**STYLES[style], "size": 3},
            incremental={"template": "updated_since={cursor}", "format": "iso_z"},
        )
        async with connected(options) as connector:
            since = Cursor(stamp - timedelta(hours=1), "")
            records, _ = await collect(connector.read("contacts", since, 3))
            everything, _ = await collect(connector.read("contacts", None, 3))
    assert [r.last_name for r in records] == [str(i) for i in range(8)]
    assert len({r.key for r in everything}) == len(everything) == 28


# -- auth styles ------------------------------------------------------------------------------------

SECRET = "s3cret-auth-key-0042"
AUTHS: dict[str, tuple[dict[str, Any], str]] = {
    "header": ({"type": "header", "name": "X-API-Key", "key": SECRET}, "header"),
    "query": ({"type": "query", "param": "api_key", "key": SECRET}, "query"),
    "basic-token-as-user": ({"type": "basic", "token": SECRET, "dummy_password": "X"}, "basic"),
    "basic-user-password": ({"type": "basic", "username": SECRET, "password": "ignored"}, "basic"),
    "bearer": ({"type": "bearer", "token": SECRET}, "bearer"),
}


@pytest.mark.parametrize("name", AUTHS)
async def test_each_auth_style_reaches_an_api_that_accepts_only_that_style(name: str) -> None:
    auth, style = AUTHS[name]
    simulator = GenericSimulator(records=5, auth=(style,), credentials={"api_key": SECRET})
    with SimulatorThread(simulator) as sandbox:
        async with connected({**contacts_options(sandbox.url), "auth": auth}) as connector:
            records, _ = await collect(connector.read("contacts", None, 50))
        assert len(records) == 5
        wrong: dict[str, Any] = {**auth, **{k: "wrong-key-123" for k in ("key", "token", "username") if k in auth}}
        async with connected({**contacts_options(sandbox.url), "auth": wrong}) as connector:
            with pytest.raises(AuthError, match="401"):
                await collect(connector.read("contacts", None, 50))


# -- incremental templates and time formats ----------------------------------------------------------

BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")
FORMATS: dict[str, tuple[dict[str, Any], str, Any]] = {
    # name: (incremental options, query parameter, expected text for a bound)
    "iso_z": ({"format": "iso_z"}, "updated_since", lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")),
    "iso_offset": (
        {"format": "iso_offset", "timezone": "Europe/Berlin"},
        "updated_since",
        lambda t: t.astimezone(BERLIN).isoformat(),
    ),
    "sql": (
        {"format": "YYYY-MM-DD HH:MM:SS", "timezone": "UTC"},
        "updated_since",
        lambda t: t.strftime("%Y-%m-%d %H:%M:%S"),
    ),
    "epoch": ({"format": "epoch"}, "updated_since", lambda t: str(int(t.timestamp()))),
    "strftime": (
        {"format": "%Y-%m-%dT%H:%M:%S%z", "timezone": "America/New_York"},
        "updated_since",
        lambda t: t.astimezone(NEW_YORK).strftime("%Y-%m-%dT%H:%M:%S%z"),
    ),
    "query-language": (
        {"template": {"q": "updated >= '{cursor}'"}},
        "q",
        lambda t: f"updated >= '{t.strftime('%Y-%m-%dT%H:%M:%SZ')}'",
    ),
    "query-language-strict": (
        {"template": {"q": "updated > '{cursor}'"}, "inclusive": False},
        "q",
        lambda t: f"updated > '{(t - timedelta(seconds=1)).strftime('%Y-%m-%dT%H:%M:%SZ')}'",
    ),
}


@pytest.mark.parametrize("name", FORMATS)
async def test_incremental_template_speaks_each_time_format(sandbox: SimulatorThread, name: str) -> None:
    incremental, param, expected_text = FORMATS[name]
    incremental = {"template": "updated_since={cursor}", **incremental}
    options = contacts_options(sandbox.url, incremental=incremental, pagination={**STYLES["page"], "size": 10})
    async with connected(contacts_options(sandbox.url)) as connector:
        everything, _ = await collect(connector.read("contacts", None, 100))
    middle = sorted(everything, key=record_order)[len(everything) // 2]
    cursor = Cursor(middle.updated_at + timedelta(microseconds=250_000), middle.key)  # a sub-second cursor
    recorder = Recorder()
    async with connected(options, http_transport=recorder) as connector:
        newer, _ = await collect(connector.read("contacts", cursor, 10))

    bound = cursor.updated_at.replace(microsecond=0)
    sent = recorder.urls[0].params[param]
    assert sent == expected_text(bound)
    assert {r.key for r in newer} == {r.key for r in everything if Cursor.of(r) >= cursor}
    # The API understood the bound: asked directly, it counts exactly the rows from that second on.
    with httpx.Client(headers={"X-API-Key": KEY}) as client:
        total = client.get(str(recorder.urls[0])).json()["total"]
    assert total == sum(1 for r in everything if r.updated_at >= bound)


def test_time_formats_render_one_instant_in_each_style() -> None:
    instant = datetime(2026, 3, 1, 9, 30, 15, tzinfo=UTC)
    assert format_time(instant, "iso_z") == "2026-03-01T09:30:15Z"
    assert format_time(instant, "iso_offset", BERLIN) == "2026-03-01T10:30:15+01:00"
    assert format_time(instant, "YYYY-MM-DD HH:MM:SS", NEW_YORK) == "2026-03-01 04:30:15"
    assert format_time(instant, "epoch") == "1772357415"
    assert format_time(instant, "%d/%m/%Y %H:%M") == "01/03/2026 09:30"


# -- mapping: pure functions -------------------------------------------------------------------------

TICKET_SPEC = StreamSpec.model_validate(
    {
        "record": "ticket",
        "path": "/tickets",
        "fields": {
            "key": "ticket_id",
            "updated_at": "meta.modified",
            "subject": "title",
            "status": {
                "native": "state",
                "values": {"new": "open", "waiting": "pending", "solved": "closed", -1: "closed"},
                "default": "open",
            },
            "requester_email": "requester.email",
            "created_at": {"native": "meta.created", "format": "epoch"},
            "closed_at": {"native": "closed", "format": "%d/%m/%Y %H:%M"},
        },
    }
)


#: a native ticket of TICKET_SPEC's API: nested paths, a value-mapped state, leftovers
TICKET_NATIVE: dict[str, Any] = {
    "ticket_id": 981,
    "title": "VPN down",
    "state": -1,
    "requester": {"email": "ana@example.com", "name": "Ana"},
    "meta": {"modified": "2026-02-01 10:00:00", "created": 1767225600, "source": "email"},
    "closed": "01/02/2026 10:05",
    "tags": ["vpn"],
}


def test_native_ticket_maps_nested_paths_value_maps_and_leftovers_into_extra() -> None:
    mapper = Mapper(TICKET_SPEC, ZoneInfo("Europe/Berlin"))
    native = TICKET_NATIVE
    ticket = mapper.record(native, "ticket")
    assert isinstance(ticket, Ticket)
    assert ticket.key == "981"
    assert ticket.status == "closed"
    as_text = mapper.record({**native, "state": "-1"}, "ticket")
    assert isinstance(as_text, Ticket) and as_text.status == "closed"
    assert ticket.requester_email == "ana@example.com"
    assert ticket.updated_at == datetime(2026, 2, 1, 9, 0, tzinfo=UTC)  # Berlin local time -> UTC
    assert ticket.created_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert ticket.closed_at == datetime(2026, 2, 1, 9, 5, tzinfo=UTC)
    assert ticket.extra == {"requester": {"name": "Ana"}, "meta": {"source": "email"}, "tags": ["vpn"]}
    unknown = mapper.record({**native, "state": "escalated"}, "ticket")
    assert isinstance(unknown, Ticket) and unknown.status == "open"  # the configured default


def test_canonical_ticket_maps_back_with_reversed_values_and_nested_paths() -> None:
    mapper = Mapper(TICKET_SPEC, UTC)
    ticket = Ticket(
        key="981",
        updated_at=utcnow(),
        subject="VPN down",
        status="closed",
        requester_email="ana@example.com",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        closed_at=datetime(2026, 2, 1, 9, 5, tzinfo=UTC),
    )
    assert mapper.to_native(ticket) == {
        "title": "VPN down",
        "state": "solved",  # the first native value that reads as "closed"
        "requester": {"email": "ana@example.com"},
        "closed": "01/02/2026 09:05",  # key, updated_at, created_at are not written
    }


def test_money_and_numeric_ids_are_exact_and_text() -> None:
    spec = StreamSpec.model_validate(
        {
            "record": "invoice",
            "path": "/invoices",
            "fields": {
                "amount": "total",
                "customer_key": "client.id",
                "status": {"native": "state", "write_values": {"closed": "paid"}},
            },
        }
    )
    invoice = Mapper(spec, None).record(
        {"id": 7, "updated_at": 1767225600, "total": 0.1, "client": {"id": 42}, "state": "open"}, "invoice"
    )
    assert isinstance(invoice, Invoice)
    assert invoice.amount == Decimal("0.1") and invoice.customer_key == "42"
    closed = invoice.model_copy(update={"status": "closed"})
    assert Mapper(spec, None).to_native(closed) == {"total": Decimal("0.1"), "client": {"id": "42"}, "state": "paid"}


def test_a_native_record_that_cannot_be_canonical_is_a_reject_naming_its_id() -> None:
    mapper = Mapper(TICKET_SPEC, None)  # no timezone configured: a local time is refused, not guessed
    naive = mapper.record({"ticket_id": 5, "title": "x", "meta": {"modified": "2026-02-01 10:00:00"}}, "ticket")
    assert isinstance(naive, Reject)
    assert (naive.ref, naive.key) == ("ticket 5", "5")
    assert "no timezone" in naive.reason
    missing = mapper.record({"ticket_id": 6, "title": "x"}, "ticket")
    assert isinstance(missing, Reject) and "updated_at" in missing.reason
    not_object = mapper.record(["nope"], "ticket")
    assert isinstance(not_object, Reject) and "JSON object" in not_object.reason


def test_write_nulls_sends_null_for_empty_fields() -> None:
    base = {"record": "contact", "path": "/c", "fields": {"email": "email", "phone": "phone"}}
    contact = Contact(key="1", updated_at=utcnow(), email="a@example.com")
    assert Mapper(StreamSpec.model_validate(base), None).to_native(contact) == {"email": "a@example.com"}
    nulls = StreamSpec.model_validate({**base, "write_nulls": True})
    assert Mapper(nulls, None).to_native(contact) == {"email": "a@example.com", "phone": None}


# -- mapping: the per-field readers give exactly what the original mapping gave ---------------------
#
# The reference below is the mapping as it was before Mapper precomputed one reader per
# field (connectors/rest/__init__.py: to_canonical, _read_value, _leftovers, parse_time), kept
# here unchanged but for names, so that the faster code is held to its records, rejects and
# error messages.


def _ref_parse_time(value: Any, fmt: str | None = None, zone: tzinfo | None = None) -> datetime:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, int | float | Decimal):
        return from_epoch(float(value))
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    if fmt == "epoch":
        return from_epoch(value.strip())
    if fmt == "YYYY-MM-DD HH:MM:SS":
        return parse_datetime(value, assume_tz=zone, fmt="%Y-%m-%d %H:%M:%S")
    if fmt is not None and "%" in fmt:
        return parse_datetime(value, assume_tz=zone, fmt=fmt)
    return parse_datetime(value, assume_tz=zone)


def _ref_leftovers(native: Mapping[str, Any], consumed: list[list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in native.items():
        below = [path[1:] for path in consumed if path[0] == name]
        if not below:
            out[name] = value
        elif all(below) and isinstance(value, Mapping):
            rest = _ref_leftovers(value, below)
            if rest:
                out[name] = rest
    return out


def _ref_holds(annotation: Any, wanted: type) -> bool:
    if annotation is wanted:
        return True
    return any(_ref_holds(arg, wanted) for arg in get_args(annotation) if not isinstance(arg, str | int | float))


class ReferenceMapper:
    """The original native -> canonical mapping (slow, and kept only as the yardstick)."""

    _MISSING: Any = object()

    def __init__(self, spec: StreamSpec, zone: tzinfo | None) -> None:
        self.rtype = spec.record_type
        self.zone = zone
        self.fields = spec.field_specs()
        self._datetimes = self.rtype.datetime_fields()
        self._decimals = frozenset(n for n, f in self.rtype.model_fields.items() if _ref_holds(f.annotation, Decimal))
        self._texts = frozenset(n for n, f in self.rtype.model_fields.items() if _ref_holds(f.annotation, str))
        self._consumed = [f.native.split(".") for f in self.fields.values() if f.read]

    def native_id(self, native: Any) -> str | None:
        if not isinstance(native, Mapping):
            return None
        value = extract(native, self.fields["key"].native)
        return None if value is None or isinstance(value, dict | list) else str(value)

    def to_canonical(self, native: Mapping[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, spec in self.fields.items():
            if not spec.read:
                continue
            value = extract(native, spec.native, self._MISSING)
            if value is self._MISSING:
                if name in ("key", "updated_at"):
                    raise ValueError(f"{name}: no {spec.native!r} in the record")
                continue
            value = spec.to_canonical(value)
            try:
                data[name] = self._read_value(name, spec, value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if data.get("key") in (None, ""):
            raise ValueError(f"key: {self.fields['key'].native!r} is empty")
        if data.get("deleted") is None:
            data.pop("deleted", None)
        data["extra"] = _ref_leftovers(native, self._consumed)
        return data

    def _read_value(self, name: str, spec: Any, value: Any) -> Any:
        if value is None:
            return None
        if name == "key":
            if isinstance(value, dict | list):
                raise ValueError("not an id")
            return str(value)
        if name in self._datetimes:
            return None if value == "" else _ref_parse_time(value, spec.format, self.zone)
        if name in self._decimals and isinstance(value, float):
            return Decimal(repr(value))
        if isinstance(value, int | float) and not isinstance(value, bool) and name in self._texts:
            return str(value)
        return value

    def record(self, native: Any, ref_prefix: str) -> Any:
        key = self.native_id(native)
        ref = f"{ref_prefix} {key}" if key else ref_prefix
        if not isinstance(native, Mapping):
            return Reject(ref, f"expected a JSON object, found {type(native).__name__}", raw=native, key=key)
        result = to_record(self.rtype, lambda: self.to_canonical(native), ref=ref, key=key)
        if isinstance(result, Reject):
            return Reject(result.ref, result.reason, raw=dict(native), key=key)
        return result


def _outcome(call: Callable[..., Any], *args: Any) -> str:
    """What a call gave, down to types and timezone objects (repr), or the error it raised."""
    try:
        result = call(*args)
    except Exception as exc:  # the error itself is what is compared
        return f"raised {type(exc).__name__}: {exc}"
    if isinstance(result, Reject):
        return f"reject {result.ref!r} {result.reason!r} {result.raw!r} {result.key!r}"
    if hasattr(result, "model_dump"):
        dumped = result.model_dump()
        return (
            f"{type(result).__name__} {dumped!r} {[type(v.tzinfo) for v in dumped.values() if isinstance(v, datetime)]}"
        )
    return repr(result)


def assert_maps_like_the_reference(spec: StreamSpec, zone: tzinfo | None, natives: list[Any]) -> None:
    fast, slow = Mapper(spec, zone), ReferenceMapper(spec, zone)
    for native in natives:
        assert _outcome(fast.record, native, "rec") == _outcome(slow.record, native, "rec"), native
        if isinstance(native, Mapping):
            assert _outcome(fast.to_canonical, native) == _outcome(slow.to_canonical, native), native


ZONES: list[tzinfo | None] = [None, UTC, ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")]

TIMESTAMPS: list[Any] = [
    "2026-03-01T09:30:15Z",
    "2026-03-01T09:30:15.123456Z",
    "2026-03-01T09:30:15+00:00",
    "2026-03-01T09:30:15-00:00",
    "2026-03-01T09:30:15+02:00",
    "2026-03-01T09:30:15-05:30",
    "2026-03-01T09:30:15z",
    "2026-03-01T09:30:15",  # naive: the stream's timezone, or refused
    "2026-03-01 09:30:15",
    "2026-03-01 09:30:15Z",
    "2026-03-01",
    "2026-03-01Z",
    "2026-03-29T02:30:00",  # a Berlin local time that does not exist (DST gap)
    " 2026-03-01T09:30:15Z ",
    "2026-03-01T09:30:15Z\n",
    "",
    "   ",
    "soon",
    "1767225600",
    "1767225600.5",
    "-5",
    1767225600,
    1767225600.5,
    0,
    True,
    False,
    None,
    [],
    {"at": "2026-03-01T09:30:15Z"},
    "01/03/2026 09:30",
    "2026-03-01T24:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-03-01T09:30:15+01:00Z",
    "2026-03-01x09:30:15 Z",
    "2026-03-01t09:30:15 +01:00",
    "2026-03-01T10 Z",
    "20260301T093015Z",
    "2026-W09-7",
    "\ud800",
]

CONTACTS = StreamSpec.model_validate(
    {
        "record": "contact",
        "path": "/contacts",
        "fields": {
            "email": "email",
            "first_name": "first_name",
            "last_name": "last_name",
            "phone": "phone",
            "organisation": "company",
            "created_at": "created_at",
        },
    }
)

CONTACT = {
    "id": 17,
    "updated_at": "2026-03-01T09:30:15Z",
    "created_at": "2026-01-01T00:00:00Z",
    "email": "ana@example.com",
    "first_name": "Ana",
    "last_name": "Lopez",
    "phone": 4930123456,  # a number in a text field
    "company": "Acme",
    "tags": ["vip"],
    "address": {"city": "Berlin", "street": None},
}


def _variants(base: dict[str, Any], name: str, values: list[Any]) -> list[dict[str, Any]]:
    return [{**base, name: value} for value in values]


def test_contact_mapping_matches_the_reference_for_plain_records_and_every_timestamp_form() -> None:
    natives: list[Any] = [CONTACT, {**CONTACT, "deleted": True}, {**CONTACT, "deleted": None}]
    natives += _variants(CONTACT, "updated_at", TIMESTAMPS) + _variants(CONTACT, "created_at", TIMESTAMPS)
    natives += _variants(CONTACT, "id", [17, "17", "", None, True, 1.5, [], {"id": 1}, 10**30])
    natives += _variants(CONTACT, "phone", [4930123456, 49.5, True, None, "", {"n": 1}, Decimal("1.5"), 2**70])
    natives += [{k: v for k, v in CONTACT.items() if k != drop} for drop in ("id", "updated_at", "email")]
    natives += [{}, [CONTACT], "text", None, 17, MappingProxyType(CONTACT), MappingProxyType({"id": 1})]
    natives += [{**CONTACT, "deleted": "yes"}, {**CONTACT, 5: "an int key"}]
    for zone in ZONES:
        assert_maps_like_the_reference(CONTACTS, zone, natives)
    for fmt in ("iso_z", "iso_offset", "YYYY-MM-DD HH:MM:SS", "epoch", "%d/%m/%Y %H:%M"):
        spec = StreamSpec.model_validate(
            {**CONTACTS.model_dump(exclude_unset=True), "fields": {"updated_at": {"native": "at", "format": fmt}}}
        )
        for zone in (None, ZoneInfo("Europe/Berlin")):
            assert_maps_like_the_reference(spec, zone, _variants({"id": 1, "x": {"y": 1}}, "at", TIMESTAMPS))


def test_ticket_mapping_matches_the_reference_for_nested_paths_value_maps_and_leftovers() -> None:
    native = TICKET_NATIVE
    natives: list[Any] = [native, MappingProxyType(native)]
    natives += _variants(native, "state", [-1, "-1", "new", "solved", "escalated", None, 1.0, True, ["x"], {"y": 1}])
    natives += _variants(native, "requester", [{"email": "b@example.com"}, {}, "ana@example.com", None, [1]])
    natives += _variants(native, "meta", [{"modified": t, "created": t} for t in TIMESTAMPS] + ["flat", None])
    natives += _variants(native, "closed", ["01/02/2026 10:05", "2026-02-01T10:05:00Z", "", None, 5])
    natives += [{k: v for k, v in native.items() if k != drop} for drop in ("ticket_id", "meta", "requester")]
    for zone in ZONES:
        assert_maps_like_the_reference(TICKET_SPEC, zone, natives)


# YAML's own typing of value-map keys: -1 and 2 are numbers, "3" and "n/a" strings, ~ is None.
ODD_SPEC = StreamSpec.model_validate(
    yaml.safe_load(
        """
        record: ticket
        path: /t
        fields:
          key: {native: ref, values: {"0": zero}}
          status: {native: s, values: {-1: closed, "3": pending, 2: open, n/a: closed}}
          priority: {native: p, values: {1: high, "2": low}, default: normal}
          type: {native: kind, read: false}
          closed_at: {native: done, values: {"0000-00-00 00:00:00": ~}, format: "YYYY-MM-DD HH:MM:SS"}
          subject: ""
          description: "a."
          assignee: a.b.c
        """
    )
)


def test_odd_configurations_map_like_the_reference() -> None:
    base = {"ref": 1, "updated_at": "2026-03-01T09:30:15Z", "s": -1, "p": 1, "kind": "bug", "done": None}
    natives: list[Any] = [base, {**base, "a": {"b": {"c": "me", "d": 1}, "e": 2}}, {**base, "a": "flat"}]
    natives += _variants(base, "ref", [0, "0", "", None])
    natives += _variants(base, "s", [-1, "-1", 2, "2", 3, "3", "n/a", "other", None, [1]])
    natives += _variants(base, "p", [1, "1", 2, "2", 3, None, True])
    natives += _variants(base, "done", ["0000-00-00 00:00:00", "2026-03-01 09:30:15", "2026-03-01T09:30:15Z", ""])
    for zone in (None, ZoneInfo("Europe/Berlin")):
        assert_maps_like_the_reference(ODD_SPEC, zone, natives)


def test_invoice_mapping_matches_the_reference_for_money_and_numbers_in_text() -> None:
    spec = StreamSpec.model_validate(
        {
            "record": "invoice",
            "path": "/invoices",
            "fields": {
                "amount": "total",
                "balance_due": "due",
                "customer_key": "client.id",
                "number": "no",
                "issued_on": "issued",
                "status": {"native": "state", "values": {"settled": "paid"}},
            },
        }
    )
    native = {"id": 7, "updated_at": 1767225600, "total": 0.1, "due": 10, "client": {"id": 42}, "no": 1001}
    natives: list[Any] = [native, {**native, "state": "settled"}, {**native, "state": "open", "issued": "2026-03-01"}]
    natives += _variants(native, "total", [0.1, 1e-7, 1e22, 3, "12.50", True, None, float("nan"), float("inf")])
    natives += _variants(native, "no", [1001, 10.5, "INV-1", False, None, -0.0])
    natives += _variants(native, "client", [{"id": "c-1"}, {"id": 4.2}, {"id": None}, {}, None])
    natives += _variants(native, "issued", ["2026-03-01", "2026-03-01T00:00:00Z", 5, None])
    for zone in (None, UTC):
        assert_maps_like_the_reference(spec, zone, natives)
    # without `fields` every canonical field maps to the native field of the same name
    plain = StreamSpec.model_validate({"record": "invoice", "path": "/invoices"})
    everything = {"id": 1, "updated_at": "2026-03-01T09:30:15+02:00", "amount": 9.99, "currency": "EUR", "x": 1}
    assert_maps_like_the_reference(plain, None, [everything, {**everything, "balance_due": 0.3, "notes": 5}])


def test_timestamp_shortcut_matches_the_reference_parse_for_many_iso_like_strings() -> None:
    """Every combination of ISO-ish pieces, exotic ones included, reads as parse_datetime reads it."""
    dates = ["2026-03-01", "20260301", "2026-W09-7", "2026-03", "2026-3-1", ""]
    separators = ["T", "t", " ", "x", ""]
    times = ["09", "09:30", "0930", "09:30:15", "09:30:15.5", "09:30:15,123456", "093015.123", "24:00", ""]
    offsets = ["", "Z", "z", "+00:00", "-00:00", "+02:00", "+0200", "+02", "-05:30", " Z", " +01:00", "+00:00Z", "ZZ"]
    pads = [("", ""), (" ", ""), ("", " "), ("", "\n"), ("\t", "\t")]
    texts = [
        f"{before}{d}{sep}{t}{off}{after}"
        for d, sep, t, off, (before, after) in itertools.product(dates, separators, times, offsets, pads)
    ]
    for fmt in (None, "iso_z", "iso_offset"):
        spec = StreamSpec.model_validate(
            {"record": "contact", "path": "/c", "fields": {"created_at": {"native": "at", "format": fmt}}}
        )
        for zone in (None, ZoneInfo("Europe/Berlin")):
            fast, slow = Mapper(spec, zone), ReferenceMapper(spec, zone)
            for text in texts:
                native = {"id": 1, "updated_at": "2026-03-01T09:30:15Z", "at": text}
                assert _outcome(fast.to_canonical, native) == _outcome(slow.to_canonical, native), text


# -- configuration errors name the key path ---------------------------------------------------------


def write_config(tmp_path: Path, system: dict[str, Any]) -> Path:
    doc = {"systems": {"api": {"connector": "rest", **system}}}
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


GOOD = {
    "base_url": "https://api.example.com",
    "auth": {"type": "bearer", "token": "${API_TOKEN}"},
    "streams": {"tickets": {"record": "ticket", "path": "/tickets"}},
}


@pytest.mark.parametrize(
    ("change", "path", "problem"),
    [
        (
            {"streams": {"tickets": {"record": "ticket", "path": "/t", "pagination": "pages"}}},
            "streams.tickets.pagination",
            "does not match any of the expected tags",
        ),
        (
            {"streams": {"tickets": {"record": "ticket", "path": "/t", "incremental": {"template": "since=today"}}}},
            "streams.tickets.incremental.template",
            "must contain {cursor}",
        ),
        (
            {
                "streams": {
                    "tickets": {
                        "record": "ticket",
                        "path": "/t",
                        "incremental": {"template": "s={cursor}", "format": "dd.mm.yyyy"},
                    }
                }
            },
            "streams.tickets.incremental.format",
            "unknown time format",
        ),
        (
            {"streams": {"tickets": {"record": "ticket", "path": "/t", "fields": {"subjekt": "title"}}}},
            "streams.tickets",
            "ticket has no field 'subjekt'",
        ),
        (
            {"streams": {"tickets": {"record": "ticket", "path": "/t", "timezone": "Mars/Olympus"}}},
            "streams.tickets.timezone",
            "unknown timezone",
        ),
        (
            {"streams": {"tickets": {"record": "ticket", "path": "/t", "update": "/t/7"}}},
            "streams.tickets",
            "update.path must contain {id}",
        ),
        (
            {"streams": {"tickets": {"record": "invoice", "path": "/t", "find": {"params": {"q": "{email}"}}}}},
            "streams.tickets",
            "find needs a natural_key",
        ),
        ({"auth": {"type": "basic", "username": "me"}}, "auth.basic", "needs a 'password'"),
        ({"auth": {"type": "header", "key": "literal-key"}}, "auth.key", "secrets must be references"),
        ({"streams": {}}, "streams", "at least 1"),
    ],
)
def test_invalid_options_are_config_errors_naming_the_key_path(
    tmp_path: Path, change: dict[str, Any], path: str, problem: str
) -> None:
    config = write_config(tmp_path, {**GOOD, **change})
    with pytest.raises(ConfigError) as failure:
        load_config(config, environ={"API_TOKEN": "tok-123456"})
    assert failure.value.path is not None and failure.value.path.startswith(f"systems.api.{path}")
    assert problem in str(failure.value)


def test_valid_options_from_yaml_declare_streams_from_configuration(tmp_path: Path) -> None:
    config = load_config(EXAMPLE, environ={"SANDBOX_KEY": "k-123456"})
    connector = RestConnector(SystemContext("sandbox", config.system_options("sandbox")))
    streams = connector.streams()
    assert set(streams) == {"tickets", "contacts", "invoices"}
    assert streams["contacts"].natural_key == "email" and streams["contacts"].can(Capability.FIND)
    assert streams["invoices"].natural_key == "number"
    assert not streams["tickets"].can(Capability.FIND)  # no natural key configured for tickets
    assert all(s.can(c) for s in streams.values() for c in (Capability.INCREMENTAL, Capability.DELETE))
    with pytest.raises(NotImplementedError):
        RestConnector.describe()


# -- writes: quirks the sandbox does not have ----------------------------------------------------------

API = "https://api.example.com"


def writer(**stream: Any) -> dict[str, Any]:
    spec = {
        "record": "contact",
        "path": "/contacts",
        "fields": {"email": "email", "last_name": "name.last"},
        **stream,
    }
    return {"base_url": API, "auth": {"type": "bearer", "token": "tok-abcdef"}, "streams": {"contacts": spec}}


@respx.mock
async def test_create_takes_the_id_from_location_and_reads_the_record_back() -> None:
    post = respx.post(f"{API}/people").mock(return_value=httpx.Response(201, headers={"Location": "/people/77"}))
    respx.get(f"{API}/people/77").mock(
        return_value=httpx.Response(
            200, json={"person": {"id": 77, "email": "x@example.com", "updated_at": "2026-01-02T03:04:05Z"}}
        )
    )
    options = writer(
        create={"path": "/people", "body": "form", "wrap": "person", "id_from": "location"},
        item={"path": "/people/{id}", "record_path": "person"},
    )
    async with connected(options) as connector:
        stored = await connector.create(
            "contacts", Contact(key="src-1", updated_at=utcnow(), email="x@example.com", last_name="Ng")
        )
    assert post.calls.last.request.content == b"person[email]=x%40example.com&person[name][last]=Ng"
    assert stored.key == "77" and stored.updated_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@respx.mock
async def test_create_without_an_id_in_the_answer_is_an_error_not_a_silent_success() -> None:
    respx.post(f"{API}/contacts").mock(return_value=httpx.Response(200, json={"ok": True}))
    async with connected(writer(create="/contacts")) as connector:
        with pytest.raises(MalformedResponseError, match="no id in the body at 'id'"):
            await connector.create("contacts", Contact(key="s", updated_at=utcnow(), email="y@example.com"))


@respx.mock
async def test_refused_write_is_a_record_rejection_and_deleting_a_missing_record_is_fine() -> None:
    respx.put(f"{API}/contacts/5").mock(return_value=httpx.Response(422, json={"error": "email taken"}))
    respx.delete(f"{API}/contacts/5").mock(return_value=httpx.Response(404))
    async with connected(writer(update="/contacts/{id}", delete="/contacts/{id}")) as connector:
        with pytest.raises(RecordRejected, match="email taken"):
            await connector.update("contacts", "5", Contact(key="5", updated_at=utcnow(), email="z@example.com"))
        await connector.delete("contacts", "5")


@respx.mock
async def test_ids_in_paths_are_escaped() -> None:
    route = respx.get(f"{API}/contacts/a%2Fb%3Fc").mock(return_value=httpx.Response(404))
    async with connected(writer(item="/contacts/{id}")) as connector:
        assert await connector.get("contacts", "a/b?c") is None
    assert route.called


async def test_find_matches_the_natural_key_exactly_with_one_search(sandbox: SimulatorThread) -> None:
    target = rows(sandbox, "contacts")[-1]
    stats = sandbox.simulator.stats
    async with connected(example_options(sandbox.url)) as connector:
        before = stats.requests
        found = await connector.find("contacts", Contact(key="x", updated_at=utcnow(), email=target["email"]))
        assert stats.requests - before == 1, "the configured search, not a scan"
        near = await connector.find("contacts", Contact(key="x", updated_at=utcnow(), email=target["email"].upper()))
    assert found is not None and found.key == str(target["id"])
    assert near is None


async def test_find_is_exact_even_when_the_api_ignores_the_search(sandbox: SimulatorThread) -> None:
    target = rows(sandbox, "contacts")[-1]
    options = contacts_options(sandbox.url, find={"params": {"mail": "{email}"}})  # not a search here
    async with connected(options) as connector:
        found = await connector.find("contacts", Contact(key="x", updated_at=utcnow(), email=target["email"]))
        stranger = await connector.find("contacts", Contact(key="x", updated_at=utcnow(), email="no@where.invalid"))
    assert found is not None and found.key == str(target["id"])
    assert stranger is None


# -- the CLI, end to end: `ferryman sandbox generic` + `ferryman sync` ---------------------------------


@pytest.fixture(scope="module")
def sandbox_process() -> Iterator[str]:
    """``ferryman sandbox generic`` as a process, on a port it chose itself."""
    with run_sandbox("generic", "--records", "40", "--seed", "4") as url:
        yield url


def cli_env(tmp_path: Path, url: str, state_url: str) -> dict[str, str]:
    return {
        "SANDBOX_KEY": KEY,
        "FERRYMAN_SYSTEMS__SANDBOX__BASE_URL": f"{url}/api",
        "FERRYMAN_STATE__URL": state_url,
        "FERRYMAN_SYSTEMS__EXPORTS__DIRECTORY": str(tmp_path / "exports"),
        "FERRYMAN_SYSTEMS__INBOX__DIRECTORY": str(tmp_path / "inbox"),
        "FERRYMAN_LOG__FORMAT": "json",
    }


def api(url: str, path: str) -> Any:
    return httpx.get(f"{url}/api{path}", headers={"X-API-Key": KEY}, timeout=10).json()


def test_cli_pulls_every_stream_of_the_example_into_csv(
    tmp_path: Path, sandbox_process: str, default_state_url: str
) -> None:
    env = cli_env(tmp_path, sandbox_process, default_state_url)
    for pipeline, stream in (
        ("tickets-to-csv", "tickets"),
        ("contacts-to-csv", "contacts"),
        ("invoices-to-csv", "invoices"),
    ):
        result = run_cli("--config", str(EXAMPLE), "sync", pipeline, env=env)
        assert result.returncode == 0, result.stderr
        assert "created 40" in result.stdout
        with (tmp_path / "exports" / f"{stream}.csv").open(newline="", encoding="utf-8") as fh:
            written = {row["key"]: row for row in csv.DictReader(fh)}
        native = {str(r["id"]): r for r in api(sandbox_process, f"/{stream}?per_page=100")["data"]}
        assert set(written) == set(native)
        if stream == "invoices":
            some = next(iter(native.values()))
            assert written[str(some["id"])]["amount"] == some["amount"]
            assert written[str(some["id"])]["customer_key"] == str(some["customer_id"])
        if stream == "contacts":
            some = next(iter(native.values()))
            assert written[str(some["id"])]["organisation"] == (some["company"] or "")


def test_cli_pushes_csv_contacts_into_the_app_and_updates_them(
    tmp_path: Path, sandbox_process: str, default_state_url: str
) -> None:
    env = cli_env(tmp_path, sandbox_process, default_state_url)
    (tmp_path / "inbox").mkdir()
    source = tmp_path / "inbox" / "contacts.csv"
    header = "key,updated_at,email,first_name,last_name,organisation\n"
    source.write_text(
        header
        + "c1,2026-01-01T00:00:00Z,grace@example.com,Grace,Hopper,Navy\n"
        + "c2,2026-01-01T00:00:01Z,not-an-email,Bad,Row,\n"
    )
    result = run_cli("--config", str(EXAMPLE), "sync", "csv-contacts-to-app", env=env)
    assert result.returncode == 0, result.stderr
    assert "created 1" in result.stdout and "dead_lettered 1" in result.stdout
    [grace] = [c for c in api(sandbox_process, "/contacts?per_page=100")["data"] if c["email"] == "grace@example.com"]
    assert (grace["first_name"], grace["last_name"], grace["company"]) == ("Grace", "Hopper", "Navy")
    [letter] = StateStore.open(default_state_url).dead_letters("csv-contacts-to-app")
    assert letter.ref == "c2" and "email is not an email address" in letter.reason

    source.write_text(header + "c1,2026-01-02T00:00:00Z,grace@example.com,Grace,Hopper-Murray,Navy\n")
    result = run_cli("--config", str(EXAMPLE), "sync", "csv-contacts-to-app", env=env)
    assert result.returncode == 0 and "updated 1" in result.stdout, result.stdout + result.stderr
    assert api(sandbox_process, f"/contacts/{grace['id']}")["last_name"] == "Hopper-Murray"
    graces = [c for c in api(sandbox_process, "/contacts?per_page=100")["data"] if c["email"] == "grace@example.com"]
    assert len(graces) == 1, "an update must not create a second contact"


def test_connectors_listing_says_rest_streams_depend_on_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["connectors"]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("rest ")]
    assert "streams depend on configuration" in line
