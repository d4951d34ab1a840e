"""Harvest (classic v1 XML API): client contacts, clients and invoices, both directions.

Streams: ``contacts`` (client contacts, :class:`~ferryman.records.Contact`, natural key
``email``), ``organisations`` (clients, :class:`~ferryman.records.Organisation`, natural
key ``name``) and ``invoices`` (:class:`~ferryman.records.Invoice`, natural key
``number``). Every stream reads, reads incrementally, creates, updates, deletes and
finds. Its sandbox simulator is :mod:`.simulator` (``ferryman sandbox harvest``).

The wire: HTTP Basic (email and password), ``Accept: application/xml`` on every request,
Rails typed XML both ways (``type="integer|decimal|boolean|date|datetime|array"``,
``nil="true"``), parsed only with defusedxml, so a body that declares entities (billion
laughs, XXE) is refused before anything is expanded. Money is an exact ``Decimal`` from
the XML text to the record and back; Harvest's ``100.0`` reads as ``100.00``.

Quirks handled (the facts are in shared/seeds/README.md, "Verified against the real systems"):

- Real XML types datetimes as ``dateTime`` as well as ``datetime``, writes ``nil="true"``
  elements self-closing or not, sends an empty list as ``<nil-classes type="array"/>``,
  and may start with a UTF-8 BOM or write ``+00:00`` for UTC; the shared codec
  (:func:`ferryman.http.codecs.typed_xml_to_python`) reads every spelling.
- ``updated_since`` takes UTC at minute precision (``2010-09-25+18%3A30``): the
  connector asks from the minute before the cursor (:func:`ferryman.cursor.filter_floor`)
  and the read loop drops what is older, so the boundary is right whether Harvest
  compares with ``>`` or ``>=``.
- Harvest has no sort parameter and lists invoices by page number. Contacts and clients
  come in one response; invoices are walked page by page (50 a page, a
  :class:`~ferryman.sdk.readloop.PageGuard` stops a server that ignores ``?page=``) and,
  when there was more than one page, swept once more from the moment the walk began, so a
  row that moved between pages while we read is not lost. The whole answer then goes
  through :func:`~ferryman.sdk.readloop.whole_list_pages`, which filters it by the cursor
  and yields it in ``(updated_at, id)`` order (``ordered=True``).
- ``POST`` answers ``201`` with the new id only in ``Location``; the connector reads the
  new entity back from there (else from an id in the body, else by natural key: a 2xx
  is never a rejection). ``<errors>`` inside a 2xx answer is a rejection with its words.
- A deleted entity is gone from every list and its GET answers 404 (``hides_deleted``);
  a 404 can also mean "insufficient privileges", so :meth:`HarvestConnector.get` takes
  it as "deleted" only when a second probe of the list agrees.
- Currency values are Harvest's own names, which changed over the years: read by the
  ISO code at the end, written as Harvest's current name (it accepts only listed ones).
- ``due-at-human-format`` (``net 30``, ``upon receipt``, ...) overrides ``due-at``:
  reads compute the due date from it, writes send it together with ``due-at``.
- An invoice's amount is computed by Harvest from its line items, and its state from
  messages (``mark_as_sent``, ``mark_as_closed``, ``re_open``, ``mark_as_draft``) and
  payments. A write therefore sends the amount as a line item and then moves the state
  and records the payment that brings ``due-amount`` to the record's ``balance_due``.
- More than 100 requests in 15 seconds answers ``503`` with ``Retry-After``; the default
  client-side ``rate_limit`` is exactly that budget, so a sync never meets one.

Field mapping (native <-> canonical, both directions); ``README.md`` has the full tables:

==========================  =========================  ==================================
Harvest                     canonical                  notes
==========================  =========================  ==================================
contact ``id``              ``Contact.key``
``first-name``/``last-name``  ``first_name``/``last_name``  required by Harvest on create
``email``, ``title``        ``email``, ``title``
``phone-office``            ``phone``
``phone-mobile``            ``mobile``
``client-id``               ``organisation_key``       ``organisation``: the client's name
``fax``                     ``extra.fax``
client ``name``             ``Organisation.name``
``details``                 street/postcode/city/country  best effort; raw in ``extra.details``
invoice ``number``          ``Invoice.number``
``amount``/``due-amount``   ``amount``/``balance_due``  exact Decimal, >= 2 decimals
``currency``                ``currency``               "Euro - EUR" <-> ``EUR`` (by ISO code)
``state``                   ``status``                 ``void`` is written as ``closed``
``issued-at``/``due-at``    ``issued_on``/``due_on``   ``due-at-human-format`` wins
``subject``, ``notes``      ``subject``, ``notes``
``client-id``               ``customer_key``           ``customer_name``: the client's name
``created-at``/``updated-at``  ``created_at``/``updated_at``  UTC
==========================  =========================  ==================================
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode, urlsplit
from xml.etree import ElementTree as ET

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field

from ferryman.api import ApiConnector, to_record
from ferryman.config import Secret
from ferryman.connector import Capability, Cursor, Page, Reject, StreamInfo
from ferryman.cursor import SECOND, filter_floor, is_older
from ferryman.errors import (
    AuthError,
    MalformedResponseError,
    NotSupportedError,
    RecordRejected,
    ValidationFailed,
)
from ferryman.http import Basic, HttpOptions, RateLimitOptions
from ferryman.http.codecs import excerpt, parse_xml, python_to_typed_xml, typed_xml_to_python
from ferryman.records import Contact, Invoice, Organisation, Record
from ferryman.sdk.readloop import PageGuard, whole_list_pages
from ferryman.timeutil import parse_datetime, utcnow

from ._common import money
from ._mapping import (
    contact_fields,
    contact_payload,
    invoice_fields,
    invoice_payload,
    json_ready,
    organisation_fields,
    organisation_payload,
    status_to_state,
)

__all__ = ["HarvestConnector", "HarvestOptions", "InvoiceFilters"]

log = structlog.get_logger("ferryman.connectors.harvest")

_ALL = frozenset(Capability)
_WRITE_ERRORS = (400, 404, 409, 422)
_CLIENT_CACHE_SECONDS = 300.0
#: ``updated_since`` takes whole minutes
_MINUTE = timedelta(minutes=1)


class InvoiceFilters(BaseModel):
    """Harvest's own filters on ``GET /invoices``, applied to every invoice read."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    status: Literal["open", "partial", "draft", "paid", "unpaid", "pastdue", "closed"] | None = None
    client: int | None = Field(None, description="only this client's invoices (a Harvest client id)")
    from_: date | None = Field(None, alias="from", description="issued on or after (sent as YYYYMMDD)")
    to: date | None = Field(None, description="issued on or before (sent as YYYYMMDD)")

    def params(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.status:
            out["status"] = self.status
        if self.client is not None:
            out["client"] = str(self.client)
        if self.from_ is not None:
            out["from"] = self.from_.strftime("%Y%m%d")
        if self.to is not None:
            out["to"] = self.to.strftime("%Y%m%d")
        return out


class HarvestOptions(HttpOptions):
    """The ``systems.NAME`` keys of a Harvest system (see ``config/harvest.example.yaml``)."""

    email: str = Field(description="the Harvest user's login email (HTTP Basic user)")
    password: Secret = Field(description="that user's password: a ${ENV} or ${credential:NAME} reference")
    rate_limit: RateLimitOptions | None = Field(
        RateLimitOptions(requests=100, per=15),
        description="Harvest answers 503 past 100 requests in 15 s; this budget never gets there",
    )
    updated_since_format: str = Field(
        "%Y-%m-%d %H:%M", description="strftime layout of updated_since, in UTC (Harvest: 2010-09-25 18:30)"
    )
    invoice_page_size: int = Field(
        50, ge=1, description="invoices Harvest returns per page (a shorter page is the last)"
    )
    invoice_filters: InvoiceFilters = Field(default_factory=InvoiceFilters)
    invoice_natural_key: Literal["number"] | None = Field(
        "number", description="what find() matches invoices on; null: invoices cannot be found (no FIND)"
    )
    default_client_id: int | None = Field(
        None, description="Harvest client for created contacts/invoices that name none"
    )
    create_missing_clients: bool = Field(
        False, description="create a Harvest client for an organisation/customer name it does not have yet"
    )
    resolve_client_names: bool = Field(
        True, description="fill Contact.organisation and Invoice.customer_name from the client list (one GET a read)"
    )
    clear_empty_fields: bool = Field(
        False, description="an empty canonical field clears Harvest's value on update (default: leaves it)"
    )
    reconcile_invoice_state: bool = Field(
        True, description="after writing an invoice, move its state and record payments to match the record"
    )
    line_item_kind: str = Field("Service", description="kind of the line item an invoice amount is written as")
    payment_notes: str = Field("Recorded by Ferryman sync", description="notes on payments the connector records")


@functools.lru_cache(maxsize=2)
def _streams(find_invoices: bool) -> dict[str, StreamInfo]:
    invoice_caps = _ALL if find_invoices else _ALL - {Capability.FIND}
    return {
        # Harvest writes whole-second UTC times; a deleted entity is gone from every list
        # (its GET answers 404), so deletes are found by probing linked keys.
        "contacts": StreamInfo(
            "contacts",
            Contact,
            _ALL,
            natural_key="email",
            description="client contacts (/contacts)",
            precision=SECOND,
            hides_deleted=True,
        ),
        "organisations": StreamInfo(
            "organisations",
            Organisation,
            _ALL,
            natural_key="name",
            description="clients (/clients)",
            precision=SECOND,
            hides_deleted=True,
        ),
        "invoices": StreamInfo(
            "invoices",
            Invoice,
            invoice_caps,
            natural_key="number" if find_invoices else None,
            description="invoices (/invoices, 50 a page)",
            precision=SECOND,
            hides_deleted=True,
        ),
    }


# stream -> (collection path, list root tag, entity tag)
_NATIVE: dict[str, tuple[str, str, str]] = {
    "contacts": ("contacts", "contacts", "contact"),
    "organisations": ("clients", "clients", "client"),
    "invoices": ("invoices", "invoices", "invoice"),
}


def _list_decoder(root_tag: str) -> Callable[[httpx.Response], ET.Element]:
    def decode(response: httpx.Response) -> ET.Element:
        root = parse_xml(response)
        # Rails renders an empty array of unknown type as <nil-classes type="array"/>
        # (recorded: fixtures/harvest/clients_empty.xml).
        empty_rails = root.tag == "nil-classes" and len(root) == 0
        # The list's own tag is enough: type="array" is what the server sends, but nothing
        # is lost by reading a list that leaves it out.
        if root.tag != root_tag and not (empty_rails and root.get("type") == "array"):
            raise MalformedResponseError(
                f'expected <{root_tag} type="array">, got <{root.tag}>; body starts: {excerpt(response.content)!r}'
            )
        return root

    return decode


def _entity_decoder(tag: str) -> Callable[[httpx.Response], ET.Element]:
    def decode(response: httpx.Response) -> ET.Element:
        root = parse_xml(response)
        if root.tag != tag:
            raise MalformedResponseError(
                f"expected <{tag}>, got <{root.tag}>; body starts: {excerpt(response.content)!r}"
            )
        return root

    return decode


def _child_id(element: ET.Element) -> str | None:
    text = (element.findtext("id") or "").strip()
    return text or None


def _child_stamp(element: ET.Element) -> datetime | None:
    """An entity's ``updated-at``, when it reads as a UTC time (for a bad entity, it may not)."""
    text = (element.findtext("updated-at") or "").strip()
    try:
        return parse_datetime(text) if text else None
    except ValueError:
        return None


def _server_time(response: httpx.Response) -> datetime | None:
    value = response.headers.get("date")
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


class HarvestConnector(ApiConnector):
    """Harvest classic (v1): client contacts, clients and invoices over typed XML."""

    kind: ClassVar[str] = "harvest"
    Options: ClassVar[type[HarvestOptions]] = HarvestOptions
    summary: ClassVar[str] = "Harvest classic v1 XML API: client contacts, clients, invoices"
    check_path: ClassVar[str] = "/account/who_am_i"

    options: HarvestOptions

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._clients: dict[int, str] | None = None
        self._clients_at = 0.0

    # -- description -----------------------------------------------------------------------
    @classmethod
    def describe(cls) -> Mapping[str, StreamInfo]:
        return _streams(True)

    def streams(self) -> Mapping[str, StreamInfo]:
        return _streams(self.options.invoice_natural_key is not None)

    # -- HTTP --------------------------------------------------------------------------------
    def auth(self) -> httpx.Auth:
        return Basic(self.options.email, self.options.password.get_secret_value())

    def headers(self) -> dict[str, str]:
        return {"Accept": "application/xml"}

    def _since_params(self, since: Cursor | datetime | None) -> dict[str, str]:
        """``updated_since`` for a cursor: the minute before it, in UTC, in Harvest's layout."""
        if since is None:
            return {}
        cursor = since if isinstance(since, Cursor) else Cursor(since, "")
        # One second back before flooring to the minute: a row at exactly hh:mm:00 is
        # included whether Harvest compares with > or >=.
        floor = filter_floor(cursor, _MINUTE, margin=SECOND)
        assert floor is not None
        return {"updated_since": floor.astimezone(UTC).strftime(self.options.updated_since_format)}

    async def _get_list(self, path: str, root_tag: str, params: Mapping[str, str]) -> tuple[httpx.Response, ET.Element]:
        response, root = await self.http.request_decoded("GET", path, decode=_list_decoder(root_tag), params=params)
        return response, root

    async def _get_entity(self, stream: str, key: str) -> dict[str, Any] | None:
        path, _, tag = _NATIVE[stream]
        if not key.isdigit():
            return None
        response, root = await self.http.request_decoded(
            "GET", f"/{path}/{key}", decode=_entity_decoder(tag), allow_status=(404,)
        )
        if response.status_code == 404:
            return None
        try:
            native = typed_xml_to_python(root)
        except MalformedResponseError as exc:
            raise ValidationFailed(f"{tag} {key}: {exc}", system=self.name, ref=f"{tag} {key}") from None
        if not isinstance(native, dict):
            raise ValidationFailed(f"{tag} {key}: <{tag}> has no fields", system=self.name, ref=f"{tag} {key}")
        return native

    @staticmethod
    def _entities(root: ET.Element, tag: str, since: Cursor | None = None) -> tuple[list[dict[str, Any]], list[Reject]]:
        """Each child of a list as a native dict; one that does not convert is a Reject, not a failure.

        A bad entity older than ``since`` is left out: it was dead-lettered when it was new,
        and Harvest's minute-wide ``updated_since`` sends it again.
        """
        natives: list[dict[str, Any]] = []
        rejects: list[Reject] = []
        for child in root:
            key = _child_id(child)
            if is_older(_child_stamp(child), since):
                continue
            ref = f"{tag} {key or '?'}"
            raw = ET.tostring(child, encoding="unicode")[:4000]
            if child.tag != tag:
                rejects.append(Reject(ref, f"unexpected <{child.tag}> in <{root.tag}>", raw=raw, key=key))
                continue
            try:
                value = typed_xml_to_python(child)
            except MalformedResponseError as exc:
                rejects.append(Reject(ref, str(exc), raw=raw, key=key))
                continue
            if not isinstance(value, dict):
                rejects.append(Reject(ref, f"<{tag}> has no fields", raw=raw, key=key))
                continue
            natives.append(value)
        return natives, rejects

    async def _send(
        self, method: str, path: str, root_tag: str | None, body: Mapping[str, Any] | None, *, ref: str
    ) -> httpx.Response:
        """A write; a 4xx Harvest explains in ``<errors>`` becomes :class:`RecordRejected` with its words."""
        content = python_to_typed_xml(root_tag, dict(body or {})) if root_tag is not None else None
        headers = {"Content-Type": "application/xml"} if content is not None else None
        response = await self.http.request(method, path, content=content, headers=headers, allow_status=_WRITE_ERRORS)
        if response.status_code >= 400 or _is_error_body(response):
            raise RecordRejected(
                f"Harvest refused {method} {path} (HTTP {response.status_code}): {_error_text(response)}",
                system=self.name,
                status=response.status_code,
                ref=ref,
            )
        return response

    @staticmethod
    def _new_id(response: httpx.Response, collection: str, tag: str) -> str | None:
        """The id of what a create made: from ``Location`` (Harvest answers 201 with it and
        no body), else from a body that holds the entity or a stub of it."""
        location = response.headers.get("location") or ""
        match = re.search(rf"/{collection}/(\d+)/?$", urlsplit(location).path)
        if match is not None:
            return match[1]
        if response.content.strip():
            try:
                root = parse_xml(response.content)
            except MalformedResponseError:
                return None
            ident = _child_id(root) if root.tag == tag else None
            if ident is not None and ident.isdigit():
                return ident
        return None

    async def _created(self, stream: str, response: httpx.Response, record: Record, *, ref: str) -> str:
        """The id of the record a 2xx create made.

        A 2xx is never a rejection: without an id in ``Location`` or the body, the record is
        looked up by its natural key before giving up.
        """
        collection, _, tag = _NATIVE[stream]
        new_id = self._new_id(response, collection, tag)
        if new_id is not None:
            return new_id
        found = await self._find_native(stream, record)
        if found is not None:
            log.info("harvest.create_found_by_natural_key", system=self.name, ref=ref, key=found.get("id"))
            return str(found["id"])
        location = response.headers.get("location") or ""
        raise MalformedResponseError(
            f"POST /{collection} answered {response.status_code} without the new id in Location (got {location!r}) "
            f"or its body, and no {tag} with the record's {self.stream(stream).natural_key} was found",
            system=self.name,
            status=response.status_code,
        )

    # -- clients, for names and ids ------------------------------------------------------------
    async def _client_names(self, *, refresh: bool = False) -> dict[int, str]:
        """Harvest client id -> name (one ``GET /clients``, cached for a few minutes)."""
        stale = time.monotonic() - self._clients_at > _CLIENT_CACHE_SECONDS
        if refresh or stale or self._clients is None:
            _, root = await self._get_list("/clients", "clients", {})
            natives, _ = self._entities(root, "client")
            names: dict[int, str] = {}
            for native in natives:
                ident, name = native.get("id"), native.get("name")
                if isinstance(ident, int) and isinstance(name, str):
                    names[ident] = name
            self._clients, self._clients_at = names, time.monotonic()
        assert self._clients is not None
        return self._clients

    async def _client_by_name(self, name: str) -> int | None:
        wanted = name.strip()
        for attempt in (False, True):  # a miss refreshes once: the client may be new
            names = await self._client_names(refresh=attempt)
            found = sorted(i for i, n in names.items() if n.strip() == wanted)
            if found:
                return found[0]
        return None

    async def _resolve_client(self, name: str | None, key: str | None, *, required: bool, ref: str) -> int | None:
        """The Harvest client a contact or invoice belongs to.

        By name first (a key from another system is not a Harvest id); then by a key that
        is a Harvest client id; a missing name is created when ``create_missing_clients``;
        else ``default_client_id`` when one is required.
        """
        if name and name.strip():
            found = await self._client_by_name(name)
            if found is not None:
                return found
            if self.options.create_missing_clients:
                wanted = Organisation(key=name.strip(), updated_at=utcnow(), name=name.strip())
                response = await self._send("POST", "/clients", "client", {"name": name.strip()}, ref=ref)
                self._clients = None
                made = await self._created("organisations", response, wanted, ref=ref)
                return int(made)
        if key and key.strip().isdigit() and int(key) in await self._client_names():
            return int(key)
        if name and name.strip():
            raise RecordRejected(
                f"Harvest has no client named {name.strip()!r}: create it first "
                "(e.g. sync organisations before contacts/invoices) or set create_missing_clients: true",
                system=self.name,
                ref=ref,
            )
        if required:
            if self.options.default_client_id is not None:
                return self.options.default_client_id
            raise RecordRejected(
                "Harvest needs a client for every contact and invoice: map organisation/customer_name "
                "(a client name) or organisation_key/customer_key (a Harvest client id), or set default_client_id",
                system=self.name,
                ref=ref,
            )
        return None

    # -- records -----------------------------------------------------------------------------
    def _builder(self, stream: str, names: Mapping[int, str]) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
        if stream == "contacts":
            return lambda native: contact_fields(native, names)
        if stream == "invoices":
            return lambda native: invoice_fields(native, names)
        return organisation_fields

    async def _names_for(self, stream: str, *, refresh: bool = False) -> dict[int, str]:
        """Client names for the records of ``stream`` (none for clients themselves, or when turned off)."""
        if stream == "organisations" or not self.options.resolve_client_names:
            return {}
        return await self._client_names(refresh=refresh)

    def _record(self, stream: str, native: Mapping[str, Any], names: Mapping[int, str]) -> Record:
        """A native entity as a record, or :class:`ValidationFailed` saying why not."""
        info = self.stream(stream)
        tag = _NATIVE[stream][2]
        ref = f"{tag} {native.get('id', '?')}"
        built = to_record(info.record_type, functools.partial(self._builder(stream, names), native), ref=ref)
        if isinstance(built, Reject):
            raise ValidationFailed(f"{ref}: {built.reason}", system=self.name, ref=ref)
        return built

    # -- reading -----------------------------------------------------------------------------
    async def read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        info = self.stream(stream)
        path, root_tag, tag = _NATIVE[stream]
        if stream == "invoices":
            natives, rejects = await self._walk_invoices(since)
        else:
            _, root = await self._get_list(f"/{path}", root_tag, self._since_params(since))
            natives, rejects = self._entities(root, tag, since)
        names = await self._names_for(stream, refresh=True)
        build = self._builder(stream, names)
        records: list[Record] = []
        for native in natives:
            key = str(native.get("id")) if native.get("id") is not None else None
            built = to_record(info.record_type, functools.partial(build, native), ref=f"{tag} {key or '?'}", key=key)
            if isinstance(built, Reject):
                stamp = native.get("updated-at")
                if not is_older(stamp if isinstance(stamp, datetime) else None, since):
                    rejects.append(Reject(built.ref, built.reason, raw=_raw(native), key=key))
            else:
                records.append(built)
        # Harvest promises no order, so the whole answer is in hand before anything is
        # yielded; the read loop filters it by the cursor, orders and chunks it.
        for page in whole_list_pages(records, rejects, since, page_size):
            yield page

    async def _walk_invoices(self, since: Cursor | None) -> tuple[list[dict[str, Any]], list[Reject]]:
        """Every invoice changed since the cursor: all pages, then one sweep if there was more than one."""
        base = {**self.options.invoice_filters.params(), **self._since_params(since)}
        seen: dict[str, dict[str, Any]] = {}
        rejects: dict[str, Reject] = {}
        guard = PageGuard(system=self.name, stream="invoices")
        pages, started = await self._invoice_pages(base, seen, rejects, since, guard)
        if pages > 1:
            # Paging by number over a set that changes while we read can skip a row that
            # was added or updated meanwhile: it has updated_at after the walk began.
            moment = (started or utcnow()) - timedelta(minutes=1)
            sweep = {**self.options.invoice_filters.params(), **self._since_params(moment)}
            # A query of its own: its first page may rightly equal the walk's last one.
            again = PageGuard(system=self.name, stream="invoices", cap=max(1, guard.cap - guard.pages))
            await self._invoice_pages(sweep, seen, rejects, since, again)
        return list(seen.values()), list(rejects.values())

    async def _invoice_pages(
        self,
        params: Mapping[str, str],
        seen: dict[str, dict[str, Any]],
        rejects: dict[str, Reject],
        since: Cursor | None,
        guard: PageGuard,
    ) -> tuple[int, datetime | None]:
        size = self.options.invoice_page_size
        page = 1
        started: datetime | None = None
        while True:
            query = {**params, "page": str(page)}
            response, root = await self._get_list("/invoices", "invoices", query)
            if started is None:
                started = _server_time(response)
            # A server that ignores ?page= answers page 1 again: stop with PagingError.
            guard.fetched(_page_signature(root), f"GET /invoices?{urlencode(query)}")
            natives, bad = self._entities(root, "invoice", since)
            for native in natives:
                key = str(native.get("id"))
                held = seen.get(key)
                if held is None or _newer(native, held):
                    seen[key] = native
                rejects.pop(key, None)
            for reject in bad:
                if reject.key is None or reject.key not in seen:
                    rejects[reject.key or f"?{len(rejects)}"] = reject
            if len(root) < size:
                return page, started
            page += 1

    async def get(self, stream: str, key: str) -> Record | None:
        """The record, or ``None`` when it is gone.

        Harvest answers 404 both for a deleted entity and for one this user lacks the
        privileges to see (shared/seeds README), and a delete probe must not take the second
        for the first: a 404 is believed only after a second probe of the list.
        """
        self.stream(stream)
        if not key.isdigit():
            return None  # not a Harvest id: nothing to probe
        native = await self._get_entity(stream, key)
        if native is None:
            await self._confirm_gone(stream, key)
            return None
        return self._record(stream, native, await self._names_for(stream))

    async def _confirm_gone(self, stream: str, key: str) -> None:
        """Raise :class:`AuthError` unless a second probe agrees that ``key`` is gone.

        Contacts and clients come as one whole list: the key must be absent from it.
        Invoices are paged, so the probe is a one-page query that can only succeed for a
        user allowed to list invoices at all.
        """
        path, root_tag, tag = _NATIVE[stream]
        params = {"updated_since": (utcnow() + timedelta(days=1)).strftime(self.options.updated_since_format)}
        if stream != "invoices":
            params = {}
        response, root = await self.http.request_decoded(
            "GET", f"/{path}", decode=_list_decoder(root_tag), params=params, allow_status=(404,)
        )
        if response.status_code == 404:
            raise AuthError(
                f"GET /{path}/{key} and GET /{path} both answer 404: Harvest says that for what this user lacks "
                f"the privileges to see, so {tag} {key} is not taken as deleted. Give the user access to {path}",
                system=self.name,
                status=404,
            )
        if root is not None and any(_child_id(child) == key for child in root):
            raise AuthError(
                f"GET /{path}/{key} answers 404 but {tag} {key} is in GET /{path}: not taken as deleted "
                "(Harvest answers 404 for what this user lacks the privileges to see)",
                system=self.name,
                status=404,
            )

    async def find(self, stream: str, record: Record) -> Record | None:
        info = self.stream(stream)
        if not info.can(Capability.FIND):
            raise NotSupportedError(f"cannot look up {stream} (invoice_natural_key is null)", system=self.name)
        native = await self._find_native(stream, record)
        if native is None:
            return None
        return self._record(stream, native, await self._names_for(stream))

    async def _find_native(self, stream: str, record: Record) -> dict[str, Any] | None:
        if isinstance(record, Contact):
            return await self._find_contact(record)
        if isinstance(record, Organisation):
            return await self._find_client(record)
        if isinstance(record, Invoice):
            return await self._find_invoice(record)
        raise NotSupportedError(f"cannot look up {stream}", system=self.name)

    async def _find_contact(self, record: Contact) -> dict[str, Any] | None:
        email = (record.email or "").strip()
        if not email:
            return None
        _, root = await self._get_list("/contacts", "contacts", {})
        natives, _ = self._entities(root, "contact")
        exact = [n for n in natives if (n.get("email") or "").strip() == email]
        # Harvest does not keep emails unique or lower-cased; an exact match wins, then the oldest.
        folded = [n for n in natives if (n.get("email") or "").strip().casefold() == email.casefold()]
        matches = sorted(exact or folded, key=lambda n: int(n.get("id") or 0))
        if not matches:
            return None
        if len(matches) > 1:
            log.warning("harvest.find_ambiguous", system=self.name, stream="contacts", count=len(matches))
        return matches[0]

    async def _find_client(self, record: Organisation) -> dict[str, Any] | None:
        name = (record.name or "").strip()
        if not name:
            return None
        _, root = await self._get_list("/clients", "clients", {})
        natives, _ = self._entities(root, "client")
        matches = sorted((n for n in natives if (n.get("name") or "").strip() == name), key=lambda n: int(n["id"]))
        return matches[0] if matches else None

    async def _find_invoice(self, record: Invoice) -> dict[str, Any] | None:
        number = (record.number or "").strip()
        if not number:
            return None
        page = 1
        guard = PageGuard(system=self.name, stream="invoices")
        while True:
            _, root = await self._get_list("/invoices", "invoices", {"page": str(page)})
            guard.fetched(_page_signature(root), f"GET /invoices?page={page}")
            natives, _ = self._entities(root, "invoice")
            for native in natives:
                if str(native.get("number") or "").strip() == number:
                    return native
            if len(root) < self.options.invoice_page_size:
                return None
            page += 1

    # -- writing -----------------------------------------------------------------------------
    async def create(self, stream: str, record: Record) -> Record:
        self.stream(stream)
        ref = f"{stream} {record.key}"
        if isinstance(record, Contact):
            client = await self._resolve_client(record.organisation, record.organisation_key, required=True, ref=ref)
            body = contact_payload(record, client, clear_empty=False, create=True)
            response = await self._send("POST", "/contacts", "contact", body, ref=ref)
            new_id = await self._created(stream, response, record, ref=ref)
            return await self._stored(stream, new_id)
        if isinstance(record, Organisation):
            body = organisation_payload(record, clear_empty=False, create=True)
            response = await self._send("POST", "/clients", "client", body, ref=ref)
            self._clients = None
            new_id = await self._created(stream, response, record, ref=ref)
            return await self._stored(stream, new_id)
        if isinstance(record, Invoice):
            _check_invoice_money(record, ref)
            client = await self._resolve_client(record.customer_name, record.customer_key, required=True, ref=ref)
            body = invoice_payload(
                record, client, current=None, clear_empty=False, line_item_kind=self.options.line_item_kind
            )
            response = await self._send("POST", "/invoices", "invoice", body, ref=ref)
            new_id = await self._created(stream, response, record, ref=ref)
            native = await self._must_get(stream, new_id)
            if self.options.reconcile_invoice_state:
                try:
                    native = await self._reconcile_state(new_id, native, record, ref=ref)
                except RecordRejected as exc:
                    # The invoice exists now: refusing the record would let a replay create
                    # it twice. Keep the link; say what Harvest would not do.
                    log.warning("harvest.invoice_state_not_reconciled", system=self.name, ref=ref, reason=str(exc))
            return self._record(stream, native, await self._names_for(stream))
        raise NotSupportedError(f"cannot create {stream}", system=self.name)

    async def update(self, stream: str, key: str, record: Record) -> Record:
        self.stream(stream)
        ref = f"{stream} {key}"
        clear = self.options.clear_empty_fields
        if not key.isdigit():
            raise RecordRejected(f"{key!r} is not a Harvest id", system=self.name, ref=ref)
        if isinstance(record, Contact):
            client = await self._resolve_client(record.organisation, record.organisation_key, required=False, ref=ref)
            body = contact_payload(record, client, clear_empty=clear, create=False)
            await self._send("PUT", f"/contacts/{key}", "contact", body, ref=ref)
            return await self._stored(stream, key)
        if isinstance(record, Organisation):
            body = organisation_payload(record, clear_empty=clear, create=False)
            await self._send("PUT", f"/clients/{key}", "client", body, ref=ref)
            self._clients = None
            return await self._stored(stream, key)
        if isinstance(record, Invoice):
            _check_invoice_money(record, ref)
            current = await self._get_entity(stream, key)
            if current is None:
                raise RecordRejected(
                    f"invoice {key} no longer exists in Harvest", system=self.name, status=404, ref=ref
                )
            client = await self._resolve_client(record.customer_name, record.customer_key, required=False, ref=ref)
            body = invoice_payload(
                record, client, current=current, clear_empty=clear, line_item_kind=self.options.line_item_kind
            )
            await self._send("PUT", f"/invoices/{key}", "invoice", body, ref=ref)
            native = await self._must_get(stream, key)
            if self.options.reconcile_invoice_state:
                native = await self._reconcile_state(key, native, record, ref=ref)
            return self._record(stream, native, await self._names_for(stream))
        raise NotSupportedError(f"cannot update {stream}", system=self.name)

    async def delete(self, stream: str, key: str) -> None:
        self.stream(stream)
        if not key.isdigit():
            return
        path = _NATIVE[stream][0]
        response = await self.http.request("DELETE", f"/{path}/{key}", allow_status=_WRITE_ERRORS)
        if response.status_code == 404:
            return  # already gone: deleting a missing record is not an error
        if response.status_code >= 400 or _is_error_body(response):
            raise RecordRejected(
                f"Harvest refused DELETE /{path}/{key} (HTTP {response.status_code}): {_error_text(response)}",
                system=self.name,
                status=response.status_code,
                ref=f"{stream} {key}",
            )
        if stream == "organisations":
            self._clients = None

    async def _must_get(self, stream: str, key: str) -> dict[str, Any]:
        native = await self._get_entity(stream, key)
        if native is None:
            raise MalformedResponseError(
                f"{_NATIVE[stream][2]} {key} was written but GET /{_NATIVE[stream][0]}/{key} answers 404",
                system=self.name,
            )
        return native

    async def _stored(self, stream: str, key: str) -> Record:
        native = await self._must_get(stream, key)
        return self._record(stream, native, await self._names_for(stream))

    # -- invoice state -----------------------------------------------------------------------
    async def _reconcile_state(self, key: str, native: dict[str, Any], record: Invoice, *, ref: str) -> dict[str, Any]:
        """Move an invoice to the record's state and due amount with Harvest's own actions.

        Harvest derives ``state`` and ``due-amount``: sending it (``mark_as_sent``) opens a
        draft, a payment lowers what is due (``partial``, then ``paid``), ``mark_as_closed``
        writes it off, ``re_open`` and ``mark_as_draft`` go back. Every step is decided
        from the invoice as it is now, so repeating an update does not pay twice.
        """
        target = status_to_state(record.status)
        wanted_due = record.balance_due
        if target == "paid" and wanted_due is None:
            wanted_due = Decimal("0.00")
        if target is None and wanted_due is None:
            return native
        state = native.get("state")
        due = money(native["due-amount"], "due-amount") if native.get("due-amount") is not None else None
        acted = False

        async def act(action: str) -> None:
            nonlocal acted
            await self._send("POST", f"/invoices/{key}/messages/{action}", None, None, ref=ref)
            acted = True

        if state == "closed" and target not in (None, "closed"):
            await act("re_open")
        if state == "draft" and target not in (None, "draft"):
            await act("mark_as_sent")
        if wanted_due is not None and due is not None and target != "draft":
            if wanted_due < due:
                payment = {"amount": due - wanted_due, "paid-at": utcnow().replace(microsecond=0)}
                payment["notes"] = self.options.payment_notes
                await self._send("POST", f"/invoices/{key}/payments", "payment", payment, ref=ref)
                acted = True
            elif wanted_due > due:
                raise RecordRejected(
                    f"invoice {key}: Harvest only lowers the amount due by recording payments; it cannot raise "
                    f"it from {format(due, 'f')} to {format(wanted_due, 'f')} (delete the payment in Harvest)",
                    system=self.name,
                    ref=ref,
                )
        if target == "draft" and state not in ("draft", None):
            if state == "closed":
                await act("re_open")
            await act("mark_as_draft")
        if target == "closed" and state != "closed":
            await act("mark_as_closed")
        if not acted:
            return native
        final = await self._must_get("invoices", key)
        if target is not None and final.get("state") != target:
            log.warning(
                "harvest.invoice_state_differs",
                system=self.name,
                ref=ref,
                wanted=target,
                state=final.get("state"),
                reason="Harvest derives an invoice's state from its payments",
            )
        return final


def _check_invoice_money(record: Invoice, ref: str) -> None:
    """Refuse what Harvest cannot hold before anything is written."""
    amount, due, status = record.amount, record.balance_due, status_to_state(record.status)
    problem = None
    if due is not None and due < 0:
        problem = f"balance_due {format(due, 'f')} is negative"
    elif due is not None and amount is not None and due > amount:
        problem = f"balance_due {format(due, 'f')} is more than the amount {format(amount, 'f')}"
    elif status == "draft" and due is not None and amount is not None and due != amount:
        problem = "a draft invoice cannot have payments, so balance_due must equal the amount"
    elif status == "paid" and due is not None and due != 0:
        problem = f"status paid but balance_due is {format(due, 'f')}"
    if problem:
        raise ValidationFailed(f"{ref}: {problem}", ref=ref)


def _page_signature(root: ET.Element) -> tuple[tuple[str | None, str], ...]:
    """What identifies a page for the repeat guard: each entity's id and updated-at text."""
    return tuple((_child_id(child), (child.findtext("updated-at") or "").strip()) for child in root)


def _newer(native: Mapping[str, Any], held: Mapping[str, Any]) -> bool:
    a, b = native.get("updated-at"), held.get("updated-at")
    if isinstance(a, datetime) and isinstance(b, datetime):
        return a >= b
    return True


def _raw(native: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): json_ready(v) for k, v in native.items()}


def _is_error_body(response: httpx.Response) -> bool:
    """Whether a 2xx answer carries Harvest's ``<errors>`` instead of doing what was asked."""
    if not response.content.strip() or "xml" not in response.headers.get("content-type", "xml"):
        return False
    try:
        return parse_xml(response.content).tag == "errors"
    except MalformedResponseError:
        return False


def _error_text(response: httpx.Response) -> str:
    """Harvest's ``<errors><error>...</error></errors>`` as one line; else a short excerpt."""
    if not response.content.strip():
        return response.reason_phrase or "no detail"
    try:
        root = parse_xml(response.content)
    except MalformedResponseError:
        return excerpt(response.content)
    messages = [(e.text or "").strip() for e in root.iter("error") if (e.text or "").strip()]
    if not messages:
        messages = [" ".join("".join(root.itertext()).split())]
    return "; ".join(m for m in messages if m) or excerpt(response.content)
