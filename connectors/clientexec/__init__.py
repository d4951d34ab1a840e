"""Clientexec (billing + helpdesk for hosting companies): tickets, users (contacts), invoices.

JSON over HTTPS under ``https://{domain}/api``, authenticated by the install's
Application Key (Settings > Security > Application Key). How the real API wants the key
is not documented, so it travels as a header (``X-API-Key``, the default) or a query
parameter (``?apikey=``), as ``key_in`` says. Hosted installs allow at least 200 requests
a minute and answer ``429`` with ``Retry-After`` beyond that, so this connector's client
paces itself to ``rate_limit: 200/min`` unless told otherwise.

**No update timestamp.** No documented Clientexec answer carries ``dateUpdated`` or any
field an incremental filter could use (replies, status changes and payments change
nothing a filter could see), so by default every stream is a **full scan**: each read
asks for every record, ``since`` is not used to drop any, and the engine skips unchanged
records by their fingerprints. The streams say so (no ``INCREMENTAL``, ``ordered=False``):
the engine moves their cursor only after a complete pass, and a cursor can never freeze
a record out. An install that does have an inclusive epoch filter on a ``dateUpdated``
field sets ``since_param`` (an assumption, kept configurable): reads then go through
:func:`ferryman.sdk.readloop.keyset_read`, which verifies the server's order and paging.

List endpoints and pagination are not documented either; this connector (and
``ferryman sandbox clientexec``) use the most common convention, every part configurable::

    GET /tickets?page=1&limit=500[&updated_since=1717000000]
    ->  {"success": true, "tickets": [...], "page": 1, "limit": 500, "total": 1234}

A read believes neither the paging nor the order: a page that repeats the one before it
stops the read (:class:`~ferryman.errors.PagingError`), an answer holding every record
(``total`` reached) ends it, and with ``since_param`` a record out of ``(dateUpdated, id)``
order stops it (:class:`~ferryman.errors.OrderViolation`).

Writes are verified: a create answered 2xx is read back (by the id it names; a user by
its email when no id came back), Clientexec's ``success: false`` inside a 200 is a
:class:`~ferryman.errors.RecordRejected` with its message. Get User takes an email, not an
id, so a user is fetched by the address last seen for its id (a list scan otherwise).

Field mapping (full tables in README.md)::

    ticket metadata.id / subject / status ("-1" closed) / priority / ticket_type /
           userEmail / userid / assignedToId / dateSubmitted / comments[0].message
        -> key / subject / status / priority / type / requester_email / requester_key /
           assignee / created_at / description; updated_at = dateUpdated if the install
           has it, else the newest of dateSubmitted and the comments' createdAt
    user   userid / email / firstname / lastname / phone / local.{organization,address,city,zipcode,country} /
           date_activated
        -> key / email / first_name / last_name / phone / organisation, street, city, postcode, country /
           created_at (and updated_at without dateUpdated)
    invoice invoiceid / customerid / amount "$1.00 USD" / simplebalancedue (or balancedue) /
           statusenum (unknown codes: billstatus) / billdate / duedate / description / note
        -> key (and number) / customer_key / amount + currency / balance_due / status /
           issued_on (and created_at; updated_at without dateUpdated) / due_on / subject / notes

Formatted dates are in the install's ``timezone`` and ``date_format`` and become UTC;
everything else native is kept in ``extra`` (``statusName``, comments with UTC times...).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote, urlencode

import httpx
from pydantic import Field, field_validator

from ferryman.api import ApiConnector, to_record
from ferryman.config import Secret
from ferryman.connector import Capability, Cursor, Page, Reject, StreamInfo
from ferryman.cursor import SECOND
from ferryman.errors import FatalError, MalformedResponseError, NotSupportedError, RecordRejected, ValidationFailed
from ferryman.http import ApiKeyHeader, ApiKeyQuery, HttpOptions, RateLimitOptions
from ferryman.http.codecs import loads_json
from ferryman.records import Contact, Invoice, Record, Ticket
from ferryman.sdk.readloop import Fetched, PageGuard, keyset_read
from ferryman.timeutil import ZoneName, ensure_utc

from ._mapping import (
    DEFAULT_INVOICE_STATUS_CODES,
    DEFAULT_INVOICE_STATUSES,
    DEFAULT_PRIORITIES,
    DEFAULT_PRIORITY_CODES,
    DEFAULT_TICKET_STATUS_CODES,
    DEFAULT_TICKET_STATUSES,
    MappingSettings,
    contact_fields,
    contact_to_native,
    invoice_fields,
    invoice_to_native,
    parse_money,
    ticket_fields,
    ticket_to_native,
)

__all__ = ["ClientexecConnector", "ClientexecOptions", "parse_money"]

_RW = frozenset({Capability.READ, Capability.CREATE, Capability.UPDATE, Capability.DELETE})
_DAY = timedelta(days=1)
#: the native field an install with an update filter carries (none is documented)
UPDATED_FIELD = "dateUpdated"


def _streams(update_filter: bool) -> dict[str, StreamInfo]:
    """The streams, as full scans (the documented API) or incremental (``since_param`` set).

    Without ``dateUpdated`` a record's ``updated_at`` is the newest time it shows (a ticket's
    latest comment, a user's activation day, an invoice's bill date), hence the precision.
    """
    caps = _RW | {Capability.INCREMENTAL} if update_filter else _RW
    day_or_second = SECOND if update_filter else _DAY

    def info(
        name: str, rtype: type[Record], precision: timedelta, description: str, natural_key: str | None = None
    ) -> StreamInfo:
        return StreamInfo(
            name,
            rtype,
            caps | {Capability.FIND} if natural_key else caps,
            natural_key=natural_key,
            ordered=update_filter,
            precision=precision,
            # A deleted entity vanishes from Clientexec's lists; its GET answers 404.
            hides_deleted=True,
            description=description,
        )

    return {
        "tickets": info("tickets", Ticket, SECOND, "support tickets with their comments"),
        "contacts": info("contacts", Contact, day_or_second, "Clientexec users", natural_key="email"),
        "invoices": info("invoices", Invoice, day_or_second, "invoices; amounts parsed strictly"),
    }


#: the streams of the documented API (full scans); see :func:`_streams`
STREAMS: dict[str, StreamInfo] = _streams(update_filter=False)
#: how long a complete user scan answers "no such user" for an id without asking again
_SCAN_FRESH = 60.0
#: how far behind ours the server's clock may be when an interrupted create is looked for
_RECONCILE_SKEW = timedelta(minutes=5)

#: What a single answer's id is called, and what a create answers with, per stream.
_ID_FIELD = {"tickets": "ticketid", "contacts": "userid", "invoices": "invoiceid"}
_KIND = {"tickets": "ticket", "contacts": "user", "invoices": "invoice"}
_CanonicalStatus = Literal["open", "pending", "closed"]
_InvoiceStatus = Literal["draft", "open", "partial", "paid", "closed", "void"]


class ClientexecOptions(HttpOptions):
    """``systems.NAME`` keys for ``connector: clientexec``."""

    api_key: Secret = Field(description="the Application Key (Settings > Security > Application Key)")
    key_in: Literal["header", "query"] = Field("header", description="how the key travels: a header or ?param=")
    key_header: str = Field("X-API-Key", min_length=1, description="header name when key_in is header")
    key_param: str = Field("apikey", min_length=1, description="query parameter when key_in is query")
    rate_limit: RateLimitOptions | None = Field(
        RateLimitOptions(requests=200, per=60), description="hosted Clientexec allows at least 200 requests/minute"
    )
    timezone: ZoneName = Field("UTC", description="the install's timezone: formatted dates are local to it")
    date_format: str = Field("%m/%d/%Y", description="the install's date format (strftime), e.g. %d/%m/%Y")
    decimal_separator: Literal[".", ","] = Field(
        ".", description="how the install formats amounts: 1,234.56 or 1.234,56"
    )
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="the install's default currency")
    max_page_size: int = Field(1000, ge=1, le=100_000, description="largest ?limit= the API accepts")
    since_param: str | None = Field(
        None,
        min_length=1,
        description="the inclusive list filter taking epoch seconds, for installs whose answers carry dateUpdated "
        "(none is documented); unset: every read is a full scan",
    )
    list_paths: dict[str, str] = Field(
        default_factory=lambda: {"tickets": "/tickets", "contacts": "/users", "invoices": "/invoices"}
    )
    item_paths: dict[str, str] = Field(
        default_factory=lambda: {"tickets": "/ticket", "contacts": "/user", "invoices": "/invoice"}
    )
    ticket_statuses: dict[str, _CanonicalStatus] = Field(default_factory=lambda: dict(DEFAULT_TICKET_STATUSES))  # type: ignore[arg-type]
    ticket_status_codes: dict[_CanonicalStatus, str] = Field(
        default_factory=lambda: dict(DEFAULT_TICKET_STATUS_CODES)  # type: ignore[arg-type]
    )
    priorities: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PRIORITIES))
    priority_codes: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PRIORITY_CODES))
    invoice_statuses: dict[str, _InvoiceStatus] = Field(default_factory=lambda: dict(DEFAULT_INVOICE_STATUSES))  # type: ignore[arg-type]
    invoice_status_codes: dict[_InvoiceStatus, str] = Field(
        default_factory=lambda: dict(DEFAULT_INVOICE_STATUS_CODES)  # type: ignore[arg-type]
    )

    @field_validator("date_format")
    @classmethod
    def _date_format(cls, value: str) -> str:
        probe = datetime(2017, 6, 14)
        try:
            if datetime.strptime(probe.strftime(value), value).date() != probe.date():
                raise ValueError
        except ValueError:
            raise ValueError(f"{value!r} is not a date format that reads back (use e.g. %m/%d/%Y)") from None
        return value

    @field_validator("list_paths", "item_paths")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = set(value) - set(STREAMS)
        if unknown:
            raise ValueError(f"unknown stream(s) {', '.join(sorted(unknown))} (streams: {', '.join(STREAMS)})")
        return value


class ClientexecConnector(ApiConnector):
    """Clientexec's REST API: tickets, users as contacts, invoices (see the module docs)."""

    kind = "clientexec"
    Options = ClientexecOptions
    summary = "Clientexec billing/helpdesk: tickets, users, invoices (app key, 200 req/min)"

    options: ClientexecOptions

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        o = self.options
        self.settings = MappingSettings(
            timezone=o.timezone,
            date_format=o.date_format,
            decimal_separator=o.decimal_separator,
            currency=o.currency,
            ticket_statuses=o.ticket_statuses,
            ticket_status_codes={str(k): v for k, v in o.ticket_status_codes.items()},
            priorities=o.priorities,
            priority_codes=o.priority_codes,
            invoice_statuses=o.invoice_statuses,
            invoice_status_codes={str(k): v for k, v in o.invoice_status_codes.items()},
        )
        self._fields: dict[str, Callable[[Mapping[str, Any], MappingSettings], dict[str, Any]]] = {
            "tickets": ticket_fields,
            "contacts": contact_fields,
            "invoices": invoice_fields,
        }
        self._streams = _streams(update_filter=o.since_param is not None)
        #: userid -> the email last seen for it: Get User takes an email, not an id
        self._emails: dict[str, str] = {}
        #: the userids of the last complete user list, and when it ended (monotonic seconds)
        self._scanned: tuple[float, frozenset[str]] | None = None

    # -- description -------------------------------------------------------------------------
    @classmethod
    def describe(cls) -> Mapping[str, StreamInfo]:
        return STREAMS

    def streams(self) -> Mapping[str, StreamInfo]:
        return self._streams

    def auth(self) -> httpx.Auth:
        key = self.options.api_key.get_secret_value()
        if self.options.key_in == "query":
            return ApiKeyQuery(self.options.key_param, key)
        return ApiKeyHeader(self.options.key_header, key)

    def headers(self) -> dict[str, str]:
        return {"Accept": "application/json"}

    def response_hook(self, response: httpx.Response) -> None:
        """A 4xx carrying Clientexec's ``{"success": false, "message"}`` becomes a clear rejection."""
        status = response.status_code
        if not 400 <= status < 500 or status in (401, 403, 404, 429):
            return
        message = _message(response)
        if message:
            request = response.request
            raise RecordRejected(
                f"Clientexec refused {request.method} {request.url.path} (HTTP {status}): {message}",
                system=self.name,
                status=status,
            )

    async def check(self) -> None:
        await self.http.request("GET", self._list_path("contacts"), params={"limit": 1})

    # -- paths -------------------------------------------------------------------------------
    def _list_path(self, stream: str) -> str:
        return self.options.list_paths.get(stream) or STREAMS_DEFAULT_LIST[stream]

    def _item_path(self, stream: str, key: str | None = None) -> str:
        base = self.options.item_paths.get(stream) or STREAMS_DEFAULT_ITEM[stream]
        return base if key is None else f"{base}/{quote(key, safe='@')}"

    def _records_key(self, stream: str) -> str:
        return self._list_path(stream).rstrip("/").rsplit("/", 1)[-1]

    # -- reading -----------------------------------------------------------------------------
    def read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        """Pages of ``stream``: from ``since`` with ``since_param``, else every record (a full scan).

        A full scan does not use ``since`` to drop anything: without an update timestamp a
        record changed long after its newest visible time would be dropped for ever.
        """
        self.stream(stream)
        limit = max(1, min(page_size, self.options.max_page_size))
        if self.options.since_param is not None:
            return self._read_since(stream, since, limit)
        return self._full_scan(stream, limit)

    async def _read_since(self, stream: str, since: Cursor | None, limit: int) -> AsyncIterator[Page]:
        since_param = self.options.since_param
        assert since_param is not None
        rejected: set[str] = set()

        async def fetch(updated_since: datetime | None, page: int) -> Fetched:
            params: dict[str, Any] = {"page": page, "limit": limit}
            if updated_since is not None:
                params[since_param] = int(updated_since.timestamp())
            items, more, where = await self._list_page(stream, params)
            self._require_updated(stream, items, where)
            records, rejects = self._map_items(stream, items, rejected)
            # In the server's order: keyset_read verifies it, a local sort would hide a server
            # that ignores it.
            return Fetched(records, rejects, more, where)

        async for page in keyset_read(fetch, since, system=self.name, stream=stream, granularity=SECOND):
            yield page

    async def _full_scan(self, stream: str, limit: int) -> AsyncIterator[Page]:
        rejected: set[str] = set()
        seen: set[str] = set()
        listed: set[str] = set()
        async for items in self._native_pages(stream, limit):
            listed.update(k for k in (_native_id(stream, item) for item in items) if k is not None)
            records, rejects = self._map_items(stream, items, rejected)
            # A record created during the scan can shift the rest of the list by one (an order
            # that is not by id): deliver each key once.
            fresh = [r for r in records if r.key not in seen]
            seen.update(r.key for r in fresh)
            if fresh or rejects:
                yield Page(fresh, rejects)
        if stream == "contacts":
            self._scanned = (time.monotonic(), frozenset(listed))

    async def _native_pages(self, stream: str, limit: int) -> AsyncIterator[list[Any]]:
        """Every native entity of a list, page by page, guarded against paging that never ends."""
        guard = PageGuard(system=self.name, stream=stream)
        page = 1
        while True:
            items, more, where = await self._list_page(stream, {"page": page, "limit": limit})
            guard.fetched(tuple(_native_id(stream, item) for item in items), where)
            yield items
            if not more or not items:
                return
            page += 1

    async def _list_page(self, stream: str, params: dict[str, Any]) -> tuple[list[Any], bool, str]:
        """One list answer: its items, whether more pages follow, and the request (for messages)."""
        path = self._list_path(stream)
        where = f"GET {path}?{urlencode(params)}"
        try:
            _, body = await self.http.request_decoded("GET", path, params=params)
        except RecordRejected as exc:
            # A list that cannot be read is a configuration problem (paths, parameters), not one bad record.
            raise FatalError(f"cannot list {stream}: {exc}", system=self.name, status=exc.status) from None
        key = self._records_key(stream)
        if not isinstance(body, dict) or not isinstance(body.get(key), list):
            raise MalformedResponseError(f"{where}: expected an object with a {key!r} list", system=self.name)
        items: list[Any] = body[key]
        total = body.get("total")
        page, limit = int(params.get("page", 1)), int(params.get("limit", len(items) or 1))
        # Counting what was received, not pages asked for: an answer holding the whole list
        # (a server that ignores paging) ends the read instead of being asked for again.
        if isinstance(total, int) and not isinstance(total, bool):
            more = (page - 1) * limit + len(items) < total
        else:
            more = len(items) >= limit
        return items, more, where

    def _require_updated(self, stream: str, items: list[Any], where: str) -> None:
        for item in items:
            native = item.get("metadata", item) if stream == "tickets" and isinstance(item, Mapping) else item
            if isinstance(native, Mapping) and native.get(UPDATED_FIELD) in (None, ""):
                raise FatalError(
                    f"since_param is set but {where} answered a {_KIND[stream]} without {UPDATED_FIELD}: this "
                    "install has no update timestamp (none is documented), so its filter cannot be trusted. "
                    "Remove since_param: reads become full scans",
                    system=self.name,
                )

    def _map_items(self, stream: str, items: list[Any], rejected: set[str]) -> tuple[list[Record], list[Reject]]:
        records: list[Record] = []
        rejects: list[Reject] = []
        for item in items:
            result = self._to_record(stream, item)
            if isinstance(result, Reject):
                # A restarted query can meet the same broken row again: report it once.
                if (result.key or result.ref) not in rejected:
                    rejected.add(result.key or result.ref)
                    rejects.append(result)
            else:
                records.append(result)
                if isinstance(result, Contact) and result.email:
                    self._emails[result.key] = result.email
        return records, rejects

    def _to_record(self, stream: str, item: Any) -> Record | Reject:
        kind = _KIND[stream]
        if not isinstance(item, Mapping):
            return Reject(f"{kind} ?", f"not an object: {type(item).__name__}", raw=item)
        key = _native_id(stream, item)
        rtype = STREAMS[stream].record_type
        fields = self._fields[stream]
        result = to_record(rtype, lambda: fields(item, self.settings), ref=f"{kind} {key or '?'}", key=key)
        if isinstance(result, Reject):
            return Reject(result.ref, result.reason, raw=dict(item), key=key)
        return result

    def _record(self, stream: str, native: Mapping[str, Any]) -> Record:
        result = self._to_record(stream, native)
        if isinstance(result, Reject):
            raise ValidationFailed(f"{result.ref}: {result.reason}", system=self.name, ref=result.ref)
        if isinstance(result, Contact) and result.email:
            self._emails[result.key] = result.email
        return result

    async def _get_item(self, stream: str, ref: str) -> dict[str, Any] | None:
        """``GET {item_path}/{ref}``: the entity, or ``None`` on 404."""
        path = self._item_path(stream, ref)
        response, body = await self.http.request_decoded("GET", path, allow_status=(404,))
        if response.status_code == 404:
            return None
        if not isinstance(body, dict):
            raise MalformedResponseError(f"GET {path}: expected an object", system=self.name)
        return body

    async def _user_by_email(self, email: str) -> dict[str, Any] | None:
        """Get User, which takes an email: the user with exactly that address (any case)."""
        native = await self._get_item("contacts", email.strip())
        if native is None or str(native.get("email") or "").strip().lower() != email.strip().lower():
            return None
        return native

    async def _user_by_id(self, key: str) -> dict[str, Any] | None:
        """A user by id, which Get User does not take: by the address last seen for the id,
        else by a scan of the user list (one per minute at most answers for every id)."""
        email = self._emails.get(key)
        if email is not None:
            native = await self._user_by_email(email)
            if native is not None and _native_id("contacts", native) == key:
                return native
        elif self._scanned is not None and time.monotonic() - self._scanned[0] < _SCAN_FRESH:
            return None  # the scan just made saw every user and learnt every address; not this id
        found: dict[str, Any] | None = None
        seen: set[str] = set()
        async for items in self._native_pages("contacts", self.options.max_page_size):
            for item in items:
                if not isinstance(item, Mapping):
                    continue
                userid = _native_id("contacts", item)
                if userid is None:
                    continue
                seen.add(userid)
                if item.get("email"):
                    self._emails[userid] = str(item["email"])
                if userid == key:
                    found = dict(item)
        self._scanned = (time.monotonic(), frozenset(seen))
        return found

    async def _get_native(self, stream: str, key: str) -> dict[str, Any] | None:
        if not key.isdigit():
            return None
        if stream == "contacts":
            return await self._user_by_id(key)
        return await self._get_item(stream, key)

    async def get(self, stream: str, key: str) -> Record | None:
        """The record ``key``, or ``None`` when Clientexec has no such (live) entity."""
        self.stream(stream)
        native = await self._get_native(stream, key)
        return None if native is None else self._record(stream, native)

    async def find(self, stream: str, record: Record) -> Record | None:
        if stream != "contacts":
            return await super().find(stream, record)
        email = getattr(record, "email", None)
        if not email:
            return None
        native = await self._user_by_email(email)
        return None if native is None else self._record(stream, native)

    # -- writing -----------------------------------------------------------------------------
    def _body(self, stream: str, record: Record, *, create: bool, current: Mapping[str, Any] | None) -> dict[str, Any]:
        if isinstance(record, Ticket):
            return ticket_to_native(record, self.settings, create=create, current=current)
        if isinstance(record, Contact):
            return contact_to_native(record, create=create)
        if isinstance(record, Invoice):
            return invoice_to_native(record, self.settings, create=create, current=current)
        raise NotSupportedError(f"cannot write {type(record).__name__} records to {stream}", system=self.name)

    async def _send(self, method: str, path: str, body: dict[str, Any] | None, what: str) -> dict[str, Any] | None:
        """One write; Clientexec's ``{"success": false, "message"}`` (even with HTTP 200) is a rejection.

        ``None``: a 2xx with an empty body, which says nothing either way.
        """
        try:
            _, answer = await self.http.request_decoded(method, path, json=body)
        except RecordRejected as exc:
            if exc.ref is None:
                exc.ref = what
            raise
        if answer is None:
            return None
        if not isinstance(answer, dict):
            raise MalformedResponseError(f"{method} {path}: expected a JSON object", system=self.name)
        if answer.get("success") is False or answer.get("failure") is True:
            reason = answer.get("message") or "no reason given"
            raise RecordRejected(f"Clientexec refused {what}: {reason}", system=self.name, status=200, ref=what)
        return answer

    async def _stored(self, stream: str, key: str) -> Record:
        stored = await self.get(stream, key)
        if stored is None:
            raise MalformedResponseError(f"{_KIND[stream]} {key} was written but cannot be read back", system=self.name)
        return stored

    async def create(self, stream: str, record: Record) -> Record:
        """Create ``record`` and return it as Clientexec stores it (always read back).

        The answer is ``{<kind>id, success, failure, message}``, or less: a 2xx is never a
        rejection, so an answer without an id (or one that cannot be parsed) is resolved by
        finding a user by its email; a ticket or invoice has nothing to be found by, so
        it stays unresolved (:class:`MalformedResponseError`) for the engine's intent.
        """
        self.stream(stream)
        body = self._body(stream, record, create=True, current=None)
        kind = _KIND[stream]
        path = self._item_path(stream)
        email = body.get("email") if stream == "contacts" else None
        try:
            answer = await self._send("POST", path, body, f"the new {kind}")
        except MalformedResponseError:
            found = await self._find_created(stream, email)
            if found is None:
                raise
            return found
        new_id = _id_text((answer or {}).get(_ID_FIELD[stream]))
        if new_id is None:
            found = await self._find_created(stream, email)
            if found is not None:
                return found
            raise MalformedResponseError(
                f"POST {path} answered 2xx without a {_ID_FIELD[stream]}: the {kind} was probably created but "
                "cannot be identified (Clientexec has no field to find it by)",
                system=self.name,
            )
        if email:
            self._emails[new_id] = str(email)
        return await self._stored(stream, new_id)

    async def _find_created(self, stream: str, email: Any) -> Record | None:
        if stream != "contacts" or not email:
            return None
        native = await self._user_by_email(str(email))
        return None if native is None else self._record(stream, native)

    async def reconcile(self, stream: str, record: Record, started: datetime) -> Record | None:
        """The ticket an interrupted create made: found by what was sent, not by a marker.

        Clientexec tickets have no field to carry an external id (none is in the evidence),
        but every ticket shows when it was submitted and its opening message. A ticket
        submitted since ``started`` (less :data:`_RECONCILE_SKEW` for the server's clock)
        with the same subject, requester address and opening message is the one; two such
        tickets cannot be told apart, so the record stays *unresolved* for a human.
        Users are found by email; invoices have nothing to be found by.
        """
        if stream != "tickets" or not isinstance(record, Ticket):
            return await super().reconcile(stream, record, started)
        self.stream(stream)
        sent = ticket_to_native(record, self.settings, create=True)
        floor = int((ensure_utc(started) - _RECONCILE_SKEW).timestamp())
        matches = [
            item
            async for items in self._native_pages(stream, self.options.max_page_size)
            for item in items
            if _sent_as(item, sent, floor)
        ]
        if len(matches) > 1:
            keys = ", ".join(str(_native_id(stream, m)) for m in matches)
            raise NotSupportedError(
                f"an interrupted ticket create matches {len(matches)} tickets ({keys}): cannot tell which one it made",
                system=self.name,
            )
        return self._record(stream, matches[0]) if matches else None

    async def update(self, stream: str, key: str, record: Record) -> Record:
        self.stream(stream)
        kind = _KIND[stream]
        current = await self._get_native(stream, key)
        if current is None:
            raise RecordRejected(
                f"{kind} {key} does not exist in Clientexec", system=self.name, status=404, ref=f"{kind} {key}"
            )
        body = self._body(stream, record, create=False, current=current)
        await self._send("PUT", self._item_path(stream, key), body, f"{kind} {key}")
        if stream == "contacts" and body.get("email"):
            self._emails[key] = str(body["email"])
        return await self._stored(stream, key)

    async def delete(self, stream: str, key: str) -> None:
        self.stream(stream)
        if not key.isdigit():
            return
        response, answer = await self.http.request_decoded("DELETE", self._item_path(stream, key), allow_status=(404,))
        if response.status_code == 404:
            return
        if isinstance(answer, dict) and answer.get("success") is False:
            kind = _KIND[stream]
            reason = answer.get("message") or "no reason given"
            raise RecordRejected(
                f"Clientexec refused to delete {kind} {key}: {reason}", system=self.name, ref=f"{kind} {key}"
            )


STREAMS_DEFAULT_LIST = {"tickets": "/tickets", "contacts": "/users", "invoices": "/invoices"}
STREAMS_DEFAULT_ITEM = {"tickets": "/ticket", "contacts": "/user", "invoices": "/invoice"}


def _id_text(value: Any) -> str | None:
    """An id from an answer (a number, or a number as text as in a stub); ``0``/empty: none."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text if text.isdigit() and text.strip("0") else None


def _native_id(stream: str, item: Any) -> str | None:
    """The id of a native entity (a ticket's is under ``metadata``)."""
    if not isinstance(item, Mapping):
        return None
    native = item.get("metadata", item) if stream == "tickets" else item
    if not isinstance(native, Mapping):
        return None
    return _id_text(native.get("id" if stream == "tickets" else _ID_FIELD[stream]))


def _sent_as(item: Any, sent: Mapping[str, Any], floor: int) -> bool:
    """Whether a native ticket is the one a create with body ``sent`` made at or after ``floor``."""
    if not isinstance(item, Mapping) or not isinstance(item.get("metadata"), Mapping):
        return False
    meta = item["metadata"]
    try:
        if int(str(meta.get("dateSubmitted")).strip()) < floor:
            return False
    except ValueError:
        return False
    if str(meta.get("subject") or "").strip() != str(sent.get("subject") or "").strip():
        return False
    if str(meta.get("userEmail") or "").strip().lower() != str(sent.get("email") or "").strip().lower():
        return False
    comments = item.get("comments") or []
    first = comments[0] if comments and isinstance(comments[0], Mapping) else {}
    return str(first.get("message") or "").strip() == str(sent.get("message") or "").strip()


def _message(response: httpx.Response) -> str | None:
    """The ``message`` of a Clientexec error body, if the body is one."""
    try:
        body = loads_json(response)
    except MalformedResponseError:
        return None
    if isinstance(body, dict):
        message = body.get("message") or body.get("error")
        return str(message) if message else None
    return None
