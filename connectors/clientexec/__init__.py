"""Clientexec (billing + helpdesk for hosting companies): tickets, users (contacts), invoices.

JSON over HTTPS under ``https://{domain}/api``, authenticated by the install's
Application Key (Settings > Security > Application Key). How the real API wants the key
is not documented, so it travels as a header (``X-API-Key``, the default) or a query
parameter (``?apikey=``), as ``key_in`` says. Hosted installs allow at least 200 requests
a minute and answer ``429`` with ``Retry-After`` beyond that, so this connector's client
paces itself to ``rate_limit: 200/min`` unless told otherwise.

List endpoints, pagination and the updated-since filter are not documented either; this
connector (and ``ferryman sandbox clientexec``) use the most common convention, every
part of it configurable::

    GET /tickets?page=1&limit=500&updated_since=1717000000
    ->  {"success": true, "tickets": [...], "page": 1, "limit": 500, "total": 1234}

Results are in ``(dateUpdated, id)`` order and ``updated_since`` (epoch seconds) is
inclusive, so reads go through :func:`ferryman.api.keyset_pages` and neither lose nor
repeat records that share a second.

Field mapping (full tables in README.md)::

    ticket metadata.id / subject / status ("-1" closed) / priority / ticket_type /
           userEmail / userid / assignedToId / dateSubmitted / dateUpdated / comments[0].message
        -> key / subject / status / priority / type / requester_email / requester_key /
           assignee / created_at / updated_at / description
    user   userid / email / firstname / lastname / phone / local.{organization,address,city,zip,country} /
           date_activated / dateUpdated
        -> key / email / first_name / last_name / phone / organisation, street, city, postcode, country /
           created_at / updated_at
    invoice invoiceid / customerid / amount "$1.00 USD" / balancedue / statusenum|billstatus /
           billdate / duedate / description / note / dateUpdated
        -> key (and number) / customer_key / amount + currency / balance_due / status /
           issued_on (and created_at) / due_on / subject / notes / updated_at

Formatted dates are in the install's ``timezone`` and ``date_format`` and become UTC;
everything else native is kept in ``extra`` (``statusName``, comments with UTC times...).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, field_validator

from ferryman.api import ApiConnector, keyset_pages, sort_natural, to_record
from ferryman.config import Secret
from ferryman.connector import Capability, Cursor, Page, Reject, StreamInfo
from ferryman.errors import FatalError, MalformedResponseError, NotSupportedError, RecordRejected, ValidationFailed
from ferryman.http import ApiKeyHeader, ApiKeyQuery, HttpOptions, RateLimitOptions
from ferryman.http.codecs import loads_json
from ferryman.records import Contact, Invoice, Record, Ticket
from ferryman.timeutil import ZoneName

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

_RW = frozenset({Capability.READ, Capability.INCREMENTAL, Capability.CREATE, Capability.UPDATE, Capability.DELETE})

STREAMS: dict[str, StreamInfo] = {
    "tickets": StreamInfo("tickets", Ticket, _RW, description="support tickets with their comments"),
    "contacts": StreamInfo(
        "contacts", Contact, _RW | {Capability.FIND}, natural_key="email", description="Clientexec users"
    ),
    "invoices": StreamInfo("invoices", Invoice, _RW, description="invoices; amounts parsed strictly"),
}

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
    since_param: str = Field("updated_since", min_length=1, description="the list filter taking epoch seconds")
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

    # -- description -------------------------------------------------------------------------
    @classmethod
    def describe(cls) -> Mapping[str, StreamInfo]:
        return STREAMS

    def streams(self) -> Mapping[str, StreamInfo]:
        return STREAMS

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
        return base if key is None else f"{base}/{quote(key, safe='')}"

    def _records_key(self, stream: str) -> str:
        return self._list_path(stream).rstrip("/").rsplit("/", 1)[-1]

    # -- reading -----------------------------------------------------------------------------
    def read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        self.stream(stream)
        return self._read(stream, since, page_size)

    async def _read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        limit = max(1, min(page_size, self.options.max_page_size))
        rejected: set[str] = set()

        async def fetch(updated_since: datetime | None, page: int) -> tuple[list[Record], list[Reject], bool]:
            params: dict[str, Any] = {"page": page, "limit": limit}
            if updated_since is not None:
                # Floored to the second: the filter is inclusive, so flooring can only add rows.
                params[self.options.since_param] = int(updated_since.timestamp())
            items, more = await self._get_list(stream, params, page, limit)
            records: list[Record] = []
            rejects: list[Reject] = []
            for item in items:
                result = self._to_record(stream, item)
                if isinstance(result, Reject):
                    # A restarted keyset query can meet the same broken row again: report it once.
                    if (result.key or result.ref) not in rejected:
                        rejected.add(result.key or result.ref)
                        rejects.append(result)
                else:
                    records.append(result)
            return sort_natural(records), rejects, more

        async for page in keyset_pages(fetch, since):
            yield page

    async def _get_list(self, stream: str, params: dict[str, Any], page: int, limit: int) -> tuple[list[Any], bool]:
        try:
            _, body = await self.http.request_decoded("GET", self._list_path(stream), params=params)
        except RecordRejected as exc:
            # A list that cannot be read is a configuration problem (paths, parameters), not one bad record.
            raise FatalError(f"cannot list {stream}: {exc}", system=self.name, status=exc.status) from None
        return self._page_items(body, stream, page, limit)

    def _page_items(self, body: Any, stream: str, page: int, limit: int) -> tuple[list[Any], bool]:
        key = self._records_key(stream)
        if not isinstance(body, dict) or not isinstance(body.get(key), list):
            raise MalformedResponseError(
                f"GET {self._list_path(stream)}: expected an object with a {key!r} list", system=self.name
            )
        items: list[Any] = body[key]
        total = body.get("total")
        more = page * limit < total if isinstance(total, int) else len(items) >= limit
        return items, more

    def _to_record(self, stream: str, item: Any) -> Record | Reject:
        kind = _KIND[stream]
        if not isinstance(item, Mapping):
            return Reject(f"{kind} ?", f"not an object: {type(item).__name__}", raw=item)
        native = item.get("metadata", item) if stream == "tickets" else item
        raw_id = native.get(_ID_FIELD[stream] if stream != "tickets" else "id") if isinstance(native, Mapping) else None
        key = str(raw_id) if raw_id not in (None, "") else None
        rtype = STREAMS[stream].record_type
        fields = self._fields[stream]
        result = to_record(rtype, lambda: fields(item, self.settings), ref=f"{kind} {key or '?'}", key=key)
        if isinstance(result, Reject):
            return Reject(result.ref, result.reason, raw=dict(item), key=key)
        return result

    async def _get_native(self, stream: str, key: str) -> dict[str, Any] | None:
        if not key.isdigit():
            return None
        response, body = await self.http.request_decoded("GET", self._item_path(stream, key), allow_status=(404,))
        if response.status_code == 404:
            return None
        if not isinstance(body, dict):
            raise MalformedResponseError(f"GET {self._item_path(stream, key)}: expected an object", system=self.name)
        return body

    async def get(self, stream: str, key: str) -> Record | None:
        self.stream(stream)
        native = await self._get_native(stream, key)
        if native is None:
            return None
        result = self._to_record(stream, native)
        if isinstance(result, Reject):
            raise ValidationFailed(f"{result.ref}: {result.reason}", system=self.name, ref=result.ref)
        return result

    async def find(self, stream: str, record: Record) -> Record | None:
        if stream != "contacts":
            return await super().find(stream, record)
        email = getattr(record, "email", None)
        if not email:
            return None
        limit = self.options.max_page_size
        items, _ = await self._get_list(stream, {"email": email, "limit": limit}, 1, limit)
        wanted = email.strip().lower()
        for item in items:
            if isinstance(item, Mapping) and str(item.get("email") or "").strip().lower() == wanted:
                result = self._to_record(stream, item)
                if isinstance(result, Reject):
                    raise ValidationFailed(f"{result.ref}: {result.reason}", system=self.name, ref=result.ref)
                return result
        return None

    # -- writing -----------------------------------------------------------------------------
    def _body(self, stream: str, record: Record, *, create: bool, current: Mapping[str, Any] | None) -> dict[str, Any]:
        if isinstance(record, Ticket):
            return ticket_to_native(record, self.settings, create=create, current=current)
        if isinstance(record, Contact):
            return contact_to_native(record, create=create)
        if isinstance(record, Invoice):
            return invoice_to_native(record, self.settings, create=create, current=current)
        raise NotSupportedError(f"cannot write {type(record).__name__} records to {stream}", system=self.name)

    async def _send(self, method: str, path: str, body: dict[str, Any] | None, what: str) -> dict[str, Any]:
        """One write; Clientexec's ``{"success": false, "message"}`` (even with HTTP 200) is a rejection."""
        try:
            _, answer = await self.http.request_decoded(method, path, json=body)
        except RecordRejected as exc:
            if exc.ref is None:
                exc.ref = what
            raise
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
        self.stream(stream)
        body = self._body(stream, record, create=True, current=None)
        kind = _KIND[stream]
        answer = await self._send("POST", self._item_path(stream), body, f"the new {kind}")
        new_id = answer.get(_ID_FIELD[stream])
        if new_id in (None, "", 0, "0"):
            raise MalformedResponseError(
                f"POST {self._item_path(stream)} answered no {_ID_FIELD[stream]}", system=self.name
            )
        return await self._stored(stream, str(new_id))

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
