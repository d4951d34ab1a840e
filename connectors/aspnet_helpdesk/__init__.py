"""The ASP.NET helpdesk: ``/api/Tickets``, ``/api/Customers``, ``/api/Services``, ``/api/Operators``.

A hosted helpdesk built on ASP.NET Web API (the product name is not known). What its
documentation says, and what this connector does about it:

- **Auth**: ``?key=...`` on every request (:class:`~ferryman.http.ApiKeyQuery`). The key
  travels in the URL, so every URL the HTTP layer logs or puts in an error is redacted.
- **JSON or XML**, chosen by ``Accept``: ``format: json`` (default) or ``format: xml``.
  XML is the DataContractSerializer's: members in DataContract (ordinal alphabetical)
  order, ``i:nil="true"`` for null, the models' default namespace (``xml_namespace``). A
  member out of order or in another namespace is silently ignored by the server, so the
  connector always writes them in order, and refuses to write when a response shows the
  server's namespace differs from the configured one. XML is parsed with defusedxml:
  entity declarations and external references are refused before anything expands.
- **Times are UTC**; the API writes them without an offset (EF's ``DateTimeKind.Unspecified``),
  so they are read as UTC; everything written is ISO 8601 with ``Z``.
- **PUT is a full replacement** (Id in the URL and the body; an omitted property is
  erased). An update therefore reads the entity, merges our change into it, and writes
  the whole entity back, unknown members included: nothing we do not map is erased (a
  customer's cell phone and services survive an email change). An empty canonical field
  leaves the helpdesk's value alone unless ``empty_clears: true``. An update that changes
  nothing is not sent at all. There is no ETag: a change made in the web GUI between our
  read and our write (milliseconds) would be overwritten.
- **Tickets** only let a PUT change the description, the start/end, expected resolution
  and next update times, ``ClosedTime`` and ``ReopenedTime``. Closing sets ``ClosedTime``;
  reopening sets ``ReopenedTime``; a ticket is closed while its ``ClosedTime`` is later
  than its ``ReopenedTime``. Changes to the subject, priority, type, requester or
  assignee of an existing ticket cannot be written: they are logged
  (``aspnet_helpdesk.fields_not_updatable``) and left alone.
- **Emails**: every POST and PUT carries ``DoNotSendEmail=true`` unless the system has
  ``allow_emails: true``. (Pipelines also have an ``allow_emails`` key, but a connector
  does not see pipeline settings: this option is the switch.)
- **Unknown in the docs**, chosen here and configurable: list queries use OData query
  options as ASP.NET Web API's ``[EnableQuery]`` does (``$filter=ModifiedTime ge
  2025-06-01T00:00:00Z``, ``$orderby=ModifiedTime,Id``, ``$top``, ``$skip``;
  ``query: none`` reads whole lists and filters client-side); errors are Web API's
  ``{"Message": "...", "ModelState": {...}}``.

Streams: ``tickets`` (Ticket), ``contacts`` (Contact, from Customers; found by email),
``services`` and ``operators`` (Reference, read-only). Field mappings (both directions;
README.md has the full tables, with what a create and an update may write)::

    Ticket                      Ticket                       Customer      Contact
    Id                          key                          Id            key
    ModifiedTime, CreatedTime   updated_at, created_at       ModifiedTime  updated_at
    Title                       subject (create only)        CreatedTime   created_at
    Description                 description                  Email         email (natural key)
    Priority (Low..Urgent)      priority (low..urgent)       FirstName     first_name
    CustomerId                  requester_key (create: the   LastName      last_name
                                customer with requester_email) CellPhone   mobile
    ServiceId                   type (the service's Name)    Company       organisation
    OperatorId                  assignee (operator's Email)  Services      extra.Services (kept on update)
    ClosedTime, ReopenedTime    status, closed_at
    Start/EndTime, Expected-    extra.<name>                 Service/Operator  Reference
    ResolutionTime, NextUpdate-                              Id, ModifiedTime  key, updated_at
    Time                                                     Name              name; the rest in extra

Options::

    helpdesk:
      connector: aspnet_helpdesk
      base_url: https://desk.example.com   # /api/Tickets is appended
      api_key: ${HELPDESK_API_KEY}
      format: json                         # or xml
      xml_namespace: http://schemas.datacontract.org/2004/07/Helpdesk.Models
      allow_emails: false                  # true: let the helpdesk email customers about our writes
      query: odata                         # or none
      empty_clears: false
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping
from datetime import datetime
from typing import Any, ClassVar, Literal

import httpx
import structlog
from pydantic import Field

from ferryman.api import ApiConnector, NativePage, keyset_pages, sort_natural, to_record
from ferryman.config import Secret
from ferryman.connector import Capability, Cursor, Page, Reject, StreamInfo, SystemContext
from ferryman.errors import FatalError, NotSupportedError, RecordRejected
from ferryman.http import ApiKeyQuery, HttpOptions
from ferryman.records import Contact, Record, Reference, Ticket
from ferryman.redact import redact_url
from ferryman.timeutil import format_utc, parse_datetime, utcnow

from ._mapping import (
    Refs,
    customer_changes,
    customer_for_create,
    customer_to_canonical,
    reference_to_canonical,
    ticket_changes,
    ticket_for_create,
    ticket_to_canonical,
)
from ._schema import CUSTOMER, DEFAULT_NAMESPACE, OPERATOR, SERVICE, TICKET, Entity
from ._wire import MEDIA_TYPES, encode, error_message, list_decoder, one_decoder, typed

__all__ = ["AspnetHelpdeskConnector", "AspnetHelpdeskOptions"]

log = structlog.get_logger("ferryman.connectors.aspnet_helpdesk")

_ALL = frozenset({Capability.READ, Capability.INCREMENTAL})
_WRITE = frozenset({Capability.CREATE, Capability.UPDATE, Capability.DELETE})

STREAMS: dict[str, StreamInfo] = {
    "tickets": StreamInfo(
        "tickets", Ticket, _ALL | _WRITE, description="/api/Tickets (no natural key: interrupted creates go to the dlq)"
    ),
    "contacts": StreamInfo(
        "contacts", Contact, _ALL | _WRITE | {Capability.FIND}, natural_key="email", description="/api/Customers"
    ),
    "services": StreamInfo("services", Reference, _ALL, reference=True, description="/api/Services (read-only)"),
    "operators": StreamInfo("operators", Reference, _ALL, reference=True, description="/api/Operators (read-only)"),
}
ENTITY_OF: dict[str, Entity] = {"tickets": TICKET, "contacts": CUSTOMER, "services": SERVICE, "operators": OPERATOR}


class AspnetHelpdeskOptions(HttpOptions):
    """The ``systems.NAME`` keys of an ``aspnet_helpdesk`` system."""

    base_url: str = Field(description="the helpdesk's site root; /api/Tickets etc. are appended")
    api_key: Secret = Field(description="the key from the helpdesk's Settings page, sent as ?key=")
    format: Literal["json", "xml"] = Field("json", description="the media type asked for with Accept and sent")
    xml_namespace: str = Field(DEFAULT_NAMESPACE, description="the DataContract namespace of the helpdesk's models")
    allow_emails: bool = Field(
        False, description="let the helpdesk email customers about our writes (default: DoNotSendEmail=true)"
    )
    query: Literal["odata", "none"] = Field(
        "odata", description="odata: $filter/$orderby/$top/$skip; none: read whole lists, filter here"
    )
    max_page_size: int = Field(1000, ge=1, le=100_000, description="the largest $top the helpdesk accepts")
    empty_clears: bool = Field(
        False, description="an empty canonical field erases the helpdesk's value (default: leaves it alone)"
    )


def _odata_time(value: datetime) -> str:
    return format_utc(value)  # an OData v4 DateTimeOffset literal: 2025-06-02T09:30:00.5Z


def _odata_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class AspnetHelpdeskConnector(ApiConnector):
    """Tickets and customers of an ASP.NET Web API helpdesk; services and operators as reference data."""

    kind: ClassVar[str] = "aspnet_helpdesk"
    Options: ClassVar[type[HttpOptions]] = AspnetHelpdeskOptions
    summary: ClassVar[str] = "ASP.NET helpdesk: tickets, customers; services, operators (JSON or XML, ?key=)"
    check_path: ClassVar[str] = "/api/Services"

    options: AspnetHelpdeskOptions

    def __init__(self, context: SystemContext) -> None:
        super().__init__(context)
        self._refs = Refs()
        self._refs_loaded = False

    # -- description --------------------------------------------------------------------
    @classmethod
    def describe(cls) -> Mapping[str, StreamInfo]:
        return STREAMS

    def streams(self) -> Mapping[str, StreamInfo]:
        return STREAMS

    def _entity(self, stream: str) -> Entity:
        self.stream(stream)
        return ENTITY_OF[stream]

    # -- HTTP ----------------------------------------------------------------------------
    def auth(self) -> httpx.Auth:
        return ApiKeyQuery("key", self.options.api_key.get_secret_value())

    def headers(self) -> dict[str, str]:
        return {"Accept": MEDIA_TYPES[self.options.format]}

    def response_hook(self, response: httpx.Response) -> None:
        """Name the helpdesk's own reason (``Message``, ``ModelState``) when it refuses a write."""
        if response.status_code not in (400, 409, 422):
            return
        reason = error_message(response) or response.reason_phrase
        request = response.request
        raise RecordRejected(
            f"HTTP {response.status_code} for {request.method} {redact_url(str(request.url))}: {reason}",
            system=self.name,
            status=response.status_code,
        )

    def _path(self, entity: Entity, id: str | int | None = None) -> str:
        return f"/api/{entity.resource}" + (f"/{id}" if id is not None else "")

    async def _list(self, entity: Entity, params: dict[str, Any] | None) -> list[dict[str, Any]]:
        decode = list_decoder(entity, self.options.format, self.options.xml_namespace, self.name)
        try:
            _, raws = await self.http.request_decoded("GET", self._path(entity), params=params, decode=decode)
        except RecordRejected as exc:
            # A refused list query is not one bad record: stop, and say what to change.
            odata = params and exc.status == 400
            hint = "; if it does not support OData query options, set query: none" if odata else ""
            raise FatalError(f"the helpdesk refused a list query: {exc}{hint}", system=self.name) from None
        return list(raws)

    async def _one(self, entity: Entity, id: str) -> dict[str, Any] | None:
        if not id.isdigit():
            return None
        decode = one_decoder(entity, self.options.format, self.options.xml_namespace, self.name)
        response, raw = await self.http.request_decoded(
            "GET", self._path(entity, id), decode=decode, allow_status=(404,)
        )
        if response.status_code == 404 or raw is None:
            return None
        return dict(raw)

    async def _send(self, method: str, entity: Entity, native: Mapping[str, Any], id: str | None = None) -> Any:
        """POST or PUT ``native`` (with ``DoNotSendEmail``); the entity the helpdesk answered with, if any."""
        body = {**native, "DoNotSendEmail": not self.options.allow_emails}
        content, content_type = encode(entity, body, self.options.format, self.options.xml_namespace)
        decode = one_decoder(entity, self.options.format, self.options.xml_namespace, self.name)
        response, raw = await self.http.request_decoded(
            method, self._path(entity, id), content=content, headers={"Content-Type": content_type}, decode=decode
        )
        if raw is None and method == "POST":
            location = response.headers.get("Location", "")
            new_id = location.rstrip("/").rsplit("/", 1)[-1]
            raw = await self._one(entity, new_id) if new_id.isdigit() else None
            if raw is None:
                raise FatalError(
                    f"the helpdesk created a {entity.name} but said neither its Id nor where it is "
                    f"(HTTP {response.status_code}, no body, Location {location!r})",
                    system=self.name,
                )
        return raw

    # -- reference data for tickets ------------------------------------------------------
    async def _all(self, entity: Entity) -> list[dict[str, Any]]:
        if self.options.query == "none":
            return await self._list(entity, None)
        top = self.options.max_page_size
        out: list[dict[str, Any]] = []
        while True:
            page = await self._list(entity, {"$orderby": "Id", "$top": top, "$skip": len(out)})
            out += page
            if len(page) < top:
                return out

    async def refs(self, *, operators: Collection[int] = (), services: Collection[int] = ()) -> Refs:
        """Operators and services by id, loaded once and again when an id is not known yet."""
        missing = bool(set(operators) - self._refs.operators.keys() or set(services) - self._refs.services.keys())
        if not self._refs_loaded or missing:
            refs = Refs()
            for raw in await self._all(OPERATOR):
                try:
                    native = typed(OPERATOR, raw)
                    refs.operators[int(native["Id"])] = native
                except (ValueError, KeyError, TypeError):
                    continue  # an unreadable operator is dead-lettered by the operators stream, not here
            for raw in await self._all(SERVICE):
                try:
                    native = typed(SERVICE, raw)
                    refs.services[int(native["Id"])] = native
                except (ValueError, KeyError, TypeError):
                    continue
            self._refs, self._refs_loaded = refs, True
        return self._refs

    # -- reading -------------------------------------------------------------------------
    async def _records(self, stream: str, raws: list[dict[str, Any]]) -> tuple[list[Record], list[Reject]]:
        entity = ENTITY_OF[stream]
        refs = Refs()
        if stream == "tickets" and raws:
            operators = {r["OperatorId"] for r in raws if isinstance(r.get("OperatorId"), int)}
            services = {r["ServiceId"] for r in raws if isinstance(r.get("ServiceId"), int)}
            refs = await self.refs(operators=operators, services=services)
        records: list[Record] = []
        rejects: list[Reject] = []
        for raw in raws:
            result = self._record(stream, entity, raw, refs)
            if isinstance(result, Reject):
                rejects.append(result)
            else:
                records.append(result)
        return sort_natural(records), rejects

    def _record(self, stream: str, entity: Entity, raw: Mapping[str, Any], refs: Refs) -> Record | Reject:
        native_id = raw.get("Id")
        key = str(native_id).strip() if isinstance(native_id, int | str) and str(native_id).strip() else None
        ref = f"{entity.name.lower()} {key}" if key else f"{entity.name.lower()} without an Id"

        def build() -> dict[str, Any]:
            native = typed(entity, raw)
            if stream == "tickets":
                return ticket_to_canonical(native, refs)
            if stream == "contacts":
                return customer_to_canonical(native)
            return reference_to_canonical(entity, native)

        result = to_record(STREAMS[stream].record_type, build, ref=ref, key=key)
        if isinstance(result, Reject):
            return Reject(result.ref, result.reason, raw=dict(raw), key=key)
        return result

    async def read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        entity = self._entity(stream)
        if self.options.query == "none":
            async for page in self._read_whole(stream, entity, since, page_size):
                yield page
            return
        top = min(page_size, self.options.max_page_size)

        async def fetch(updated_since: datetime | None, page_number: int) -> NativePage:
            params: dict[str, Any] = {"$orderby": "ModifiedTime,Id", "$top": top, "$skip": (page_number - 1) * top}
            if updated_since is not None:
                params["$filter"] = f"ModifiedTime ge {_odata_time(updated_since)}"
            raws = await self._list(entity, params)
            records, rejects = await self._records(stream, raws)
            return records, rejects, len(raws) >= top

        async for page in keyset_pages(fetch, since):
            yield page

    async def _read_whole(
        self, stream: str, entity: Entity, since: Cursor | None, page_size: int
    ) -> AsyncIterator[Page]:
        """``query: none``: one GET of the whole list, filtered and ordered here."""
        raws = await self._list(entity, None)
        records, rejects = await self._records(stream, raws)
        records = [r for r in records if since is None or Cursor.of(r) >= since]
        if since is not None:
            rejects = [r for r in rejects if _reject_is_recent(r, since)]
        for start in range(0, max(len(records), 1), page_size):
            chunk = records[start : start + page_size]
            if chunk or (start == 0 and rejects):
                yield Page(chunk, rejects if start == 0 else [])

    async def get(self, stream: str, key: str) -> Record | None:
        entity = self._entity(stream)
        raw = await self._one(entity, key)
        if raw is None:
            return None
        records, rejects = await self._records(stream, [raw])
        if rejects:
            raise RecordRejected(rejects[0].reason, system=self.name, ref=rejects[0].ref)
        return records[0]

    async def find(self, stream: str, record: Record) -> Record | None:
        """A customer by email (case-insensitive, as the helpdesk's database compares)."""
        if stream != "contacts":
            raise NotSupportedError(f"cannot look up {stream} by natural key", system=self.name)
        assert isinstance(record, Contact)
        if not record.email:
            return None
        found = await self._customer_by_email(record.email)
        if found is None:
            return None
        result = self._record(stream, CUSTOMER, found, Refs())
        if isinstance(result, Reject):
            raise RecordRejected(result.reason, system=self.name, ref=result.ref)
        return result

    async def _customer_by_email(self, email: str) -> dict[str, Any] | None:
        if self.options.query == "odata":
            raws = await self._list(CUSTOMER, {"$filter": f"Email eq {_odata_string(email)}"})
        else:
            raws = await self._list(CUSTOMER, None)
        wanted = email.strip().casefold()
        for raw in raws:
            value = raw.get("Email")
            if isinstance(value, str) and value.strip().casefold() == wanted:
                return raw
        return None

    # -- writing -------------------------------------------------------------------------
    def _stored(self, stream: str, raw: Mapping[str, Any], refs: Refs) -> Record:
        result = self._record(stream, ENTITY_OF[stream], raw, refs)
        if isinstance(result, Reject):
            raise FatalError(
                f"the helpdesk answered a write with an unreadable entity: {result.reason}", system=self.name
            )
        return result

    async def create(self, stream: str, record: Record) -> Record:
        entity = self._entity(stream)
        if stream == "contacts":
            assert isinstance(record, Contact)
            raw = await self._send("POST", entity, customer_for_create(record))
            return self._stored(stream, raw, Refs())
        if stream != "tickets":
            raise NotSupportedError(f"{stream} is read-only reference data", system=self.name)
        assert isinstance(record, Ticket)
        refs = await self.refs()
        customer_id = await self._requester(record)
        try:
            native = ticket_for_create(record, refs, customer_id, utcnow())
        except ValueError as exc:
            raise RecordRejected(str(exc), system=self.name, ref=record.key) from None
        raw = await self._send("POST", entity, native)
        return self._stored(stream, raw, await self.refs())

    async def _requester(self, record: Ticket) -> int | None:
        """The helpdesk customer a new ticket belongs to: by requester email, else requester_key."""
        if record.requester_email:
            found = await self._customer_by_email(record.requester_email)
            if found is None:
                raise RecordRejected(
                    f"no customer with email {record.requester_email!r} in the helpdesk (sync contacts first)",
                    system=self.name,
                    ref=record.key,
                )
            return int(typed(CUSTOMER, found)["Id"])
        if record.requester_key and record.requester_key.isdigit():
            return int(record.requester_key)
        return None

    async def update(self, stream: str, key: str, record: Record) -> Record:
        entity = self._entity(stream)
        if stream not in ("tickets", "contacts"):
            raise NotSupportedError(f"{stream} is read-only reference data", system=self.name)
        raw = await self._one(entity, key)
        if raw is None:
            raise RecordRejected(f"{entity.name} {key} no longer exists in the helpdesk", system=self.name, ref=key)
        try:
            current = typed(entity, raw)
        except ValueError as exc:
            raise RecordRejected(f"cannot merge into {entity.name} {key}: {exc}", system=self.name, ref=key) from None
        refs = await self.refs() if stream == "tickets" else Refs()
        try:
            if stream == "tickets":
                assert isinstance(record, Ticket)
                changes, fixed = ticket_changes(
                    current, record, refs, empty_clears=self.options.empty_clears, now=utcnow()
                )
                if fixed:
                    log.warning("aspnet_helpdesk.fields_not_updatable", system=self.name, key=key, fields=fixed)
            else:
                assert isinstance(record, Contact)
                changes = customer_changes(current, record, empty_clears=self.options.empty_clears)
        except ValueError as exc:
            raise RecordRejected(str(exc), system=self.name, ref=key) from None
        if not changes:
            return self._stored(stream, raw, refs)
        # The whole entity goes back: members we do not map (a customer's services, unknown
        # ones) are written as they were read, so the full replacement erases nothing.
        merged = {**current, **changes, "Id": current.get("Id", int(key))}
        answer = await self._send("PUT", entity, merged, key)
        if answer is None:  # 204 No Content: read it back
            answer = await self._one(entity, key)
            if answer is None:
                raise RecordRejected(f"{entity.name} {key} vanished during the update", system=self.name, ref=key)
        return self._stored(stream, answer, refs)

    async def delete(self, stream: str, key: str) -> None:
        entity = self._entity(stream)
        if stream not in ("tickets", "contacts"):
            raise NotSupportedError(f"{stream} is read-only reference data", system=self.name)
        if not key.isdigit():
            return
        await self.http.request("DELETE", self._path(entity, key), allow_status=(404,))


def _reject_is_recent(reject: Reject, since: Cursor) -> bool:
    """Whether a reject from a whole-list read is new since the cursor (by its raw ModifiedTime)."""
    raw = reject.raw if isinstance(reject.raw, dict) else {}
    value = raw.get("ModifiedTime")
    if not isinstance(value, str):
        return True
    try:
        return parse_datetime(value, assume_tz="UTC") >= since.updated_at
    except ValueError:
        return True
