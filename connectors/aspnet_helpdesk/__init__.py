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
- **Lists are answered whole** (verified: the API is the stock Web API 2 scaffold, which
  silently ignores ``$filter``, ``$top``, ``$skip`` and ``$orderby``). ``query: none``, the
  default, reads each list with one GET and lets the read loop filter, order and chunk it
  (:func:`~ferryman.sdk.readloop.whole_list_pages`). ``query: odata`` is believed only after
  a ``$top=1`` probe answers at most one entity; then reads are keyset pages of
  ``$filter=ModifiedTime ge ...&$orderby=ModifiedTime,Id&$top&$skip`` through
  :func:`~ferryman.sdk.readloop.keyset_read`, whose guards stop on disorder or repeats.
- **Writes are verified**: a 2xx is never a rejection. A body that is not the entity (a
  stub, empty, garbled) is read back by the Id it, the ``Location`` header or the request
  gave; a refusal inside a 2xx (``["... isn't a valid ..."]``, ``{"Message": ...}``) is a
  :class:`~ferryman.errors.RecordRejected` with the helpdesk's words. DELETE answers 200
  with the deleted entity; a 404 (empty body) is "gone" for ``get`` and ``delete``.
- **Deletes are hard**: a deleted entity vanishes from lists and its GET answers 404, so
  tickets and contacts declare ``hides_deleted`` and the engine probes linked keys.
- Errors are Web API's ``{"Message": "...", "ModelState": {...}}`` (documented convention).

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
      query: none                          # or odata (used only if a $top=1 probe is honoured)
      empty_clears: false
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode

import httpx
import structlog
from pydantic import Field

from ferryman.api import ApiConnector, to_record
from ferryman.config import Secret
from ferryman.connector import Capability, Cursor, Page, Reject, StreamInfo, SystemContext
from ferryman.cursor import is_older
from ferryman.errors import FatalError, NotSupportedError, RecordRejected
from ferryman.http import ApiKeyQuery, HttpOptions
from ferryman.records import Contact, Record, Reference, Ticket
from ferryman.redact import redact_url
from ferryman.sdk.readloop import Fetched, PageGuard, keyset_read, whole_list_pages
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
from ._wire import MEDIA_TYPES, WriteAnswer, encode, error_message, list_decoder, one_decoder, typed, write_decoder

__all__ = ["AspnetHelpdeskConnector", "AspnetHelpdeskOptions"]

log = structlog.get_logger("ferryman.connectors.aspnet_helpdesk")

_ALL = frozenset({Capability.READ, Capability.INCREMENTAL})
_WRITE = frozenset({Capability.CREATE, Capability.UPDATE, Capability.DELETE})

#: ModifiedTime's finest step. Entity Framework 6 maps a DateTime to SQL Server ``datetime``
#: unless told otherwise, which stores 1/300 s steps (3.33 ms); 10 ms is a safe ceiling for
#: both that and ``datetime2`` (an assumption: the helpdesk's schema is not documented).
PRECISION = timedelta(milliseconds=10)

STREAMS: dict[str, StreamInfo] = {
    # Deletes are hard (the scaffold's db.Tickets.Remove): a deleted entity vanishes from
    # lists and its GET answers 404, so deletes are found by probing linked keys.
    "tickets": StreamInfo(
        "tickets",
        Ticket,
        _ALL | _WRITE,
        description="/api/Tickets (no natural key and no free field: an interrupted create is unresolved)",
        precision=PRECISION,
        hides_deleted=True,
    ),
    "contacts": StreamInfo(
        "contacts",
        Contact,
        _ALL | _WRITE | {Capability.FIND},
        natural_key="email",
        description="/api/Customers",
        precision=PRECISION,
        hides_deleted=True,
    ),
    "services": StreamInfo(
        "services", Reference, _ALL, reference=True, description="/api/Services (read-only)", precision=PRECISION
    ),
    "operators": StreamInfo(
        "operators", Reference, _ALL, reference=True, description="/api/Operators (read-only)", precision=PRECISION
    ),
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
        "none",
        description=(
            "none: one GET of each whole list, filtered and ordered here (the stock Web API ignores OData options); "
            "odata: $filter/$orderby/$top/$skip, used only when a $top=1 probe shows the helpdesk honours them"
        ),
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
        #: per resource: whether the helpdesk honours $top (probed once, on first use)
        self._odata: dict[str, bool] = {}

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

    async def _send(
        self, method: str, entity: Entity, native: Mapping[str, Any], id: str | None = None, *, ref: str | None = None
    ) -> tuple[httpx.Response, WriteAnswer]:
        """POST or PUT ``native`` (with ``DoNotSendEmail``): the answer, or ``RecordRejected`` with
        the helpdesk's words when a 2xx body is a refusal."""
        body = {**native, "DoNotSendEmail": not self.options.allow_emails}
        content, content_type = encode(entity, body, self.options.format, self.options.xml_namespace)
        decode = write_decoder(entity, self.options.format, self.options.xml_namespace, self.name)
        response, answer = await self.http.request_decoded(
            method, self._path(entity, id), content=content, headers={"Content-Type": content_type}, decode=decode
        )
        self._refused(response, answer, id or ref)
        return response, answer

    def _refused(self, response: httpx.Response, answer: WriteAnswer, ref: str | None) -> None:
        if answer.errors:
            request = response.request
            raise RecordRejected(
                f"HTTP {response.status_code} for {request.method} {redact_url(str(request.url))} "
                f"answered a refusal: {'; '.join(answer.errors)}",
                system=self.name,
                status=response.status_code,
                ref=ref,
            )

    # -- list queries: OData only where the helpdesk proves it honours it --------------
    async def _honours_odata(self, entity: Entity) -> tuple[bool, list[dict[str, Any]] | None]:
        """Whether list queries may use OData options, and the probe's answer when one was just made.

        ``query: odata`` is believed only after one ``$top=1`` request answers at most one
        entity: the stock Web API scaffold ignores every OData option and answers the whole
        list, which a paged read would request again and again. When the probe answers the
        whole list, that answer is the list, so it is not requested twice.
        """
        if self.options.query != "odata":
            return False, None
        known = self._odata.get(entity.resource)
        if known is not None:
            return known, None
        raws = await self._list(entity, {"$top": 1})
        honoured = len(raws) <= 1
        if not honoured:
            log.warning(
                "aspnet_helpdesk.odata_ignored",
                system=self.name,
                resource=entity.resource,
                answered=len(raws),
                hint="the helpdesk ignores $top: lists are read whole (set query: none to skip this probe)",
            )
        self._odata[entity.resource] = honoured
        return honoured, None if honoured else raws

    async def _whole(self, entity: Entity) -> list[dict[str, Any]]:
        """Every entity of a resource: one GET, or OData pages when the helpdesk honours them."""
        honoured, answer = await self._honours_odata(entity)
        if not honoured:
            return answer if answer is not None else await self._list(entity, None)
        top = self.options.max_page_size
        guard = PageGuard(system=self.name, stream=entity.resource)
        out: list[dict[str, Any]] = []
        while True:
            params = {"$orderby": "Id", "$top": top, "$skip": len(out)}
            page = await self._list(entity, params)
            guard.fetched(tuple(str(r.get("Id")) for r in page), self._where(entity, params))
            out += page
            if len(page) < top:
                return out

    def _where(self, entity: Entity, params: Mapping[str, Any] | None) -> str:
        return f"GET {self._path(entity)}" + (f"?{urlencode(params)}" if params else "")

    # -- reference data for tickets ------------------------------------------------------

    async def refs(self, *, operators: Collection[int] = (), services: Collection[int] = ()) -> Refs:
        """Operators and services by id, loaded once and again when an id is not known yet."""
        missing = bool(set(operators) - self._refs.operators.keys() or set(services) - self._refs.services.keys())
        if not self._refs_loaded or missing:
            refs = Refs()
            for raw in await self._whole(OPERATOR):
                try:
                    native = typed(OPERATOR, raw)
                    refs.operators[int(native["Id"])] = native
                except (ValueError, KeyError, TypeError):
                    continue  # an unreadable operator is dead-lettered by the operators stream, not here
            for raw in await self._whole(SERVICE):
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
        return records, rejects  # in the helpdesk's order: the read loop checks or sorts it

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
        honoured, answer = await self._honours_odata(entity)
        if not honoured:
            # One GET of the whole list (the stock scaffold's only answer), filtered, ordered
            # and chunked by the read loop's whole_list_pages.
            raws = answer if answer is not None else await self._list(entity, None)
            records, rejects = await self._records(stream, raws)
            rejects = [r for r in rejects if not is_older(_raw_modified(r), since)]
            for page in whole_list_pages(records, rejects, since, page_size):
                yield page
            return
        top = min(page_size, self.options.max_page_size)

        async def fetch(updated_since: datetime | None, page_number: int) -> Fetched:
            params: dict[str, Any] = {"$orderby": "ModifiedTime,Id", "$top": top, "$skip": (page_number - 1) * top}
            if updated_since is not None:
                params["$filter"] = f"ModifiedTime ge {_odata_time(updated_since)}"
            raws = await self._list(entity, params)
            records, rejects = await self._records(stream, raws)
            return Fetched(records, rejects, more=len(raws) >= top, where=self._where(entity, params))

        info = self.stream(stream)
        async for page in keyset_read(fetch, since, system=self.name, stream=stream, granularity=info.precision):
            yield page

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
        honoured, answer = await self._honours_odata(CUSTOMER)
        if honoured:
            raws = await self._list(CUSTOMER, {"$filter": f"Email eq {_odata_string(email)}"})
        else:
            raws = answer if answer is not None else await self._list(CUSTOMER, None)
        # Compared here as well: a filter the helpdesk ignored must not find the first customer.
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

    async def _written(
        self, stream: str, response: httpx.Response, answer: WriteAnswer, key: str | None, refs: Refs
    ) -> Record:
        """The record a successful write left behind: the answer's entity when it maps, else read back.

        A 2xx is never a rejection: a stub (``{"id": "12", ...}``), an empty or garbled body
        only means the helpdesk did not say what it stored, so the item is fetched by the Id
        the body, the ``Location`` header or the request gave.
        """
        entity = ENTITY_OF[stream]
        raw = answer.entity
        # Both of the helpdesk's serializers write every member (null or nil included): a body
        # missing one is a stub that might still map, with the rest of the record missing.
        if raw is not None and all(name in raw for name in entity.by_name):
            result = self._record(stream, entity, raw, refs)
            if isinstance(result, Record) and (key is None or result.key == key):
                return result
        found = key or _id_of(raw) or _id_of_location(response.headers.get("Location", ""))
        back = await self._one(entity, found) if found else None
        if back is None and key is not None:
            raise RecordRejected(f"{entity.name} {key} vanished during the update", system=self.name, ref=key)
        if back is None:
            raise FatalError(
                f"the helpdesk answered HTTP {response.status_code} to a {response.request.method} of a "
                f"{entity.name} but neither said what it stored nor where (Id {found or 'unknown'}, "
                f"Location {response.headers.get('Location', '')!r}); check the helpdesk before replaying",
                system=self.name,
            )
        return self._stored(stream, back, refs)

    async def create(self, stream: str, record: Record) -> Record:
        entity = self._entity(stream)
        if stream == "contacts":
            assert isinstance(record, Contact)
            response, answer = await self._send("POST", entity, customer_for_create(record), ref=record.key)
            return await self._written(stream, response, answer, None, Refs())
        if stream != "tickets":
            raise NotSupportedError(f"{stream} is read-only reference data", system=self.name)
        assert isinstance(record, Ticket)
        refs = await self.refs()
        customer_id = await self._requester(record)
        try:
            native = ticket_for_create(record, refs, customer_id, utcnow())
        except ValueError as exc:
            raise RecordRejected(str(exc), system=self.name, ref=record.key) from None
        response, answer = await self._send("POST", entity, native, ref=record.key)
        return await self._written(stream, response, answer, None, await self.refs())

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
        response, answer = await self._send("PUT", entity, merged, key)
        return await self._written(stream, response, answer, key, refs)  # 204 No Content: read back

    async def delete(self, stream: str, key: str) -> None:
        entity = self._entity(stream)
        if stream not in ("tickets", "contacts"):
            raise NotSupportedError(f"{stream} is read-only reference data", system=self.name)
        if not key.isdigit():
            return
        # The scaffold answers 200 with the deleted entity, and a 404 (empty body) when it is
        # already gone: both mean deleted. A refusal inside the 200 is a rejection.
        decode = write_decoder(entity, self.options.format, self.options.xml_namespace, self.name)
        response, answer = await self.http.request_decoded(
            "DELETE", self._path(entity, key), decode=decode, allow_status=(404,)
        )
        if response.status_code != 404:
            self._refused(response, answer, key)


def _raw_modified(reject: Reject) -> datetime | None:
    """The raw ModifiedTime of an entity that could not become a record, when it can be read."""
    raw = reject.raw if isinstance(reject.raw, dict) else {}
    value = raw.get("ModifiedTime")
    if not isinstance(value, str):
        return None
    try:
        return parse_datetime(value, assume_tz="UTC")
    except ValueError:
        return None


def _id_of(raw: Mapping[str, Any] | None) -> str | None:
    """The Id of an answer body, number or text (stubs seen in the wild say ``"id": "12"``)."""
    if raw is None:
        return None
    for name in ("Id", "id", "ID"):
        value = raw.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value.strip().isdigit():
            return value.strip()
    return None


def _id_of_location(location: str) -> str | None:
    last = location.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return last if last.isdigit() else None
