"""Clevertim CRM: contacts (people), organisations (companies) and tickets (cases).

REST over HTTPS at ``https://www.clevertim.com/api`` (``/contact``, ``/company``,
``/case``; ``GET`` a list or ``/{id}``, ``POST``, ``PUT /{id}``, ``DELETE /{id}``), HTTP
Basic with the API token as user and ``X`` as password. Every answer is an envelope:
``{"status": "OK", "content": [...]}`` or ``{"status": "ERROR", "error": "..."}``, and the
error statuses decide what happens:

======  =====================================  =========================================
HTTP    Clevertim means                        Ferryman does
======  =====================================  =========================================
400     bad request: see ``error``             the record is dead-lettered with the error
404     the object does not exist              get/delete: nothing there; update: dead letter
500     the JSON could not be parsed           a read is retried; a write is dead-lettered
                                               (the same body would fail again)
501     the operation is not supported         the run stops: "not supported", no retry
200     ``"status": "ERROR"`` inside a 200     a read is retried as malformed; a write is
                                               dead-lettered with Clevertim's words
======  =====================================  =========================================

Clevertim "reads one entry or all entries": a list has **no paging and no modified-since
filter**, and paging parameters are ignored (a client paging until a short page loops for
ever). So by default every read is one ``GET`` of the whole list, filtered by the cursor
and ordered here (:func:`ferryman.sdk.readloop.whole_list_pages`, comparing ``lm`` through
:mod:`ferryman.cursor`), and ``find()`` is one ``GET`` compared here. ``paging: true``
keeps the old assumed convention (``?page=N&limit=M&modified_since=<ISO 8601 UTC>`` in
``(lm, id)`` order) for a server that really has it; it reads through
:func:`~ferryman.sdk.readloop.keyset_read`, whose guards stop a server that ignores it.

Writes are verified: Clevertim's PUT answers only ``id`` (and ``lc``), so an answer that
is not the whole entity is read back with ``GET /{kind}/{id}``; a 2xx is never a rejection,
an ``{"status": "ERROR"}`` inside a 200 always is.

Field mapping (full tables in README.md)::

    person   id / fn / ln / title / companyId / email[0] / phones[Work] / phones[Mobile] /
             address / city / postcode / country / ao / lm
          -> key / first_name / last_name / title / organisation_key / email / phone / mobile /
             street / city / postcode / country / created_at / updated_at
    company  id / cn / website[0] / phones[Work] / address / city / postcode / country / ao / lm
          -> key / name / website / phone / street / city / postcode / country / created_at / updated_at
    case     id / name / description / leadUser / cust / ao / lm
          -> key / subject / description / assignee / requester_key / created_at / updated_at

Everything else (the other emails and phones, ``website``, ``smids``, ``region``, ``ctype``,
``cf`` keyed by custom-field id, ``tags``, ``gid``, ``lc``...) is kept in ``extra`` on read
and preserved on write: an update reads the entity, changes the mapped fields and writes
the whole entity back, because Clevertim's PUT replaces it. An entity without ``lm`` gets
``updated_at`` 1970-01-01 and is read on every run (fingerprints skip it when unchanged).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from pydantic import Field, field_validator

from ferryman.api import ApiConnector, to_record
from ferryman.config import Secret
from ferryman.connector import Capability, Cursor, Page, Reject, StreamInfo
from ferryman.cursor import SECOND, due, is_older
from ferryman.errors import (
    FatalError,
    MalformedResponseError,
    NotSupportedError,
    RecordRejected,
    RetriableError,
    ValidationFailed,
)
from ferryman.http import Basic, HttpOptions, RateLimitOptions
from ferryman.http.codecs import excerpt, loads_json
from ferryman.records import Contact, Organisation, Record, Ticket
from ferryman.sdk.readloop import Fetched, PageGuard, keyset_read, whole_list_pages
from ferryman.timeutil import format_utc, parse_datetime

from ._mapping import (
    case_fields,
    company_fields,
    contact_fields,
    merge_case,
    merge_company,
    merge_contact,
    undated,
)

__all__ = ["ClevertimConnector", "ClevertimOptions"]

_ALL = frozenset(Capability)
_NO_FIND = _ALL - {Capability.FIND}


def _info(name: str, record_type: type[Record], capabilities: frozenset[Capability], **more: Any) -> StreamInfo:
    # lm has whole seconds; a deleted entity is gone from the list (GET answers 404).
    return StreamInfo(name, record_type, capabilities, precision=SECOND, hides_deleted=True, **more)


STREAMS: dict[str, StreamInfo] = {
    "contacts": _info("contacts", Contact, _ALL, natural_key="email", description="people"),
    "organisations": _info("organisations", Organisation, _ALL, natural_key="name", description="companies"),
    "tickets": _info("tickets", Ticket, _NO_FIND, description="cases"),
}
_KIND = {"contacts": "contact", "organisations": "company", "tickets": "case"}
_FIELDS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "contacts": contact_fields,
    "organisations": company_fields,
    "tickets": case_fields,
}
DEFAULT_PATHS = {"contacts": "/contact", "organisations": "/company", "tickets": "/case"}


class ClevertimOptions(HttpOptions):
    """``systems.NAME`` keys for ``connector: clevertim``."""

    base_url: str = Field("https://www.clevertim.com/api", description="root of the API")
    api_token: Secret = Field(description="the API token (Account / My Info & Settings)")
    rate_limit: RateLimitOptions | None = Field(
        RateLimitOptions(requests=120, per=60), description="Clevertim documents no limit: stay polite"
    )
    paths: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PATHS))
    paging: bool = Field(
        False,
        description="false (Clevertim as it is): one GET of the whole list, filtered and ordered here; true: an "
        "assumed server that pages (page_param, limit_param), filters by since_param and orders by (lm, id)",
    )
    page_param: str = Field("page", min_length=1, description="with paging: page number parameter (from 1)")
    limit_param: str = Field("limit", min_length=1, description="with paging: page size parameter")
    max_page_size: int = Field(500, ge=1, le=100_000, description="with paging: the largest page size")
    since_param: str = Field(
        "modified_since", min_length=1, description="with paging: incremental filter on lm (ISO 8601 UTC)"
    )
    server_filter: bool | None = Field(None, description="deprecated, ignored: Clevertim has no filter (see paging)")
    email_param: str | None = Field(
        None, description="a list filter find() sends with the contact's email (compared here all the same)"
    )
    name_param: str | None = Field(
        None, description="a list filter find() sends with the company's name (compared here all the same)"
    )

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = set(value) - set(STREAMS)
        if unknown:
            raise ValueError(f"unknown stream(s) {', '.join(sorted(unknown))} (streams: {', '.join(STREAMS)})")
        return value


class ClevertimConnector(ApiConnector):
    """Clevertim CRM's REST API (see the module docs)."""

    kind = "clevertim"
    Options = ClevertimOptions
    summary = "Clevertim CRM: contacts, companies, cases (token auth, status/content envelope, unpaged lists)"

    options: ClevertimOptions

    # -- description ---------------------------------------------------------------------------
    @classmethod
    def describe(cls) -> Mapping[str, StreamInfo]:
        return STREAMS

    def streams(self) -> Mapping[str, StreamInfo]:
        return STREAMS

    def auth(self) -> httpx.Auth:
        return Basic(self.options.api_token.get_secret_value(), "X")

    def headers(self) -> dict[str, str]:
        return {"Accept": "application/json"}

    def response_hook(self, response: httpx.Response) -> None:
        """Turn Clevertim's error envelope into the error class that decides what happens next."""
        status = response.status_code
        if status in (401, 403, 429, 503):
            return  # the HTTP layer: credentials, throttling
        if status < 400 and b'"ERROR"' not in response.content:
            return
        error = _envelope_error(response)
        request = response.request
        where = f"{request.method} {request.url.path}"
        if status < 400:
            if error is None:
                return
            if request.method == "GET":
                raise MalformedResponseError(f"Clevertim answered {where} with an error: {error}", system=self.name)
            raise RecordRejected(f"Clevertim refused {where}: {error}", system=self.name, status=status)
        detail = error if error is not None else excerpt(response.content)
        if status == 501:
            raise NotSupportedError(
                f"Clevertim does not support {where} (HTTP 501: {detail}); not retried, since retrying cannot help: "
                "check the account's plan and permissions, or leave this operation out of the pipeline",
                system=self.name,
                status=status,
            )
        if status == 400:
            raise RecordRejected(f"Clevertim refused {where} (HTTP 400): {detail}", system=self.name, status=status)
        if status == 500 and error is not None:
            if request.method == "GET":
                raise RetriableError(f"Clevertim failed {where} (HTTP 500): {error}", system=self.name, status=status)
            # Clevertim's 500 means "your JSON cannot be parsed": the same body would fail again.
            raise RecordRejected(
                f"Clevertim could not process {where} (HTTP 500): {error}", system=self.name, status=status
            )

    async def check(self) -> None:
        # Without paging there is no cheap list request: the check reads the whole list once.
        await self._get_list("contacts", {self.options.limit_param: 1} if self.options.paging else {})

    # -- plumbing --------------------------------------------------------------------------------
    def _path(self, stream: str, key: str | None = None) -> str:
        base = self.options.paths.get(stream) or DEFAULT_PATHS[stream]
        return base if key is None else f"{base}/{quote(key, safe='')}"

    def _content(self, response: httpx.Response) -> list[Any]:
        body = loads_json(response) if response.content.strip() else None
        if not isinstance(body, dict) or body.get("status") != "OK":
            raise MalformedResponseError(
                f"expected Clevertim's {{status: OK, content: [...]}}, got {excerpt(response.content)}",
                system=self.name,
            )
        content = body.get("content")
        if content is None:
            return []
        if not isinstance(content, list):
            raise MalformedResponseError("Clevertim's content is not a list", system=self.name)
        return content

    async def _get_list(self, stream: str, params: dict[str, Any]) -> list[Any]:
        try:
            _, content = await self.http.request_decoded("GET", self._path(stream), params=params, decode=self._content)
        except RecordRejected as exc:
            # A list that is not there is a configuration problem, not one bad record.
            raise FatalError(f"cannot list {stream}: {exc}", system=self.name, status=exc.status) from None
        return list(content)

    async def _get_native(self, stream: str, key: str) -> dict[str, Any] | None:
        if not key.isdigit():
            return None
        response, content = await self.http.request_decoded(
            "GET", self._path(stream, key), allow_status=(404,), decode=self._content
        )
        if response.status_code == 404 or not content:
            return None
        item = content[0]
        if not isinstance(item, dict):
            raise MalformedResponseError(
                f"GET {self._path(stream, key)}: content[0] is not an object", system=self.name
            )
        return item

    def _to_record(self, stream: str, item: Any) -> Record | Reject:
        kind = _KIND[stream]
        if not isinstance(item, Mapping):
            return Reject(f"{kind} ?", f"not an object: {type(item).__name__}", raw=item)
        raw_id = item.get("id")
        key = str(raw_id) if raw_id not in (None, "") else None
        fields = _FIELDS[stream]
        result = to_record(STREAMS[stream].record_type, lambda: fields(item), ref=f"{kind} {key or '?'}", key=key)
        if isinstance(result, Reject):
            return Reject(result.ref, result.reason, raw=dict(item), key=key)
        return result

    def _record(self, stream: str, item: Any) -> Record:
        result = self._to_record(stream, item)
        if isinstance(result, Reject):
            raise ValidationFailed(f"{result.ref}: {result.reason}", system=self.name, ref=result.ref)
        return result

    @staticmethod
    def _belongs(stream: str, item: Any) -> bool:
        # /contact may list companies too (they are contacts with is_company); they are organisations here.
        return not (stream == "contacts" and isinstance(item, Mapping) and item.get("is_company") is True)

    def _map_items(self, stream: str, items: list[Any]) -> tuple[list[Record], list[Reject], list[Record]]:
        """Records (dated), rejects, and records without ``lm``, in the server's order."""
        records: list[Record] = []
        rejects: list[Reject] = []
        timeless: list[Record] = []
        for item in items:
            if not self._belongs(stream, item):
                continue
            result = self._to_record(stream, item)
            if isinstance(result, Reject):
                rejects.append(result)
            elif undated(item):
                timeless.append(result)
            else:
                records.append(result)
        return records, rejects, timeless

    # -- reading --------------------------------------------------------------------------------
    def read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        self.stream(stream)
        if self.options.paging:
            return self._read_paged(stream, since, max(1, min(page_size, self.options.max_page_size)))
        return self._read_whole(stream, since, page_size)

    async def _read_whole(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        """Clevertim as it is: one request answers every entity; the cursor filters here."""
        items = await self._get_list(stream, {})
        records, rejects, timeless = self._map_items(stream, items)
        # A reject whose lm is before the cursor was reported when it was new.
        fresh_rejects = [r for r in rejects if not is_older(_raw_stamp(r.raw), since)]
        # Entities without lm cannot be placed in time: every read delivers them (their
        # updated_at sorts first) and fingerprints skip the unchanged ones.
        total = len(timeless) + len(due(records, since))  # one total for the progress bar
        for page in whole_list_pages(timeless, [], None, page_size, total=total):
            yield page
        for page in whole_list_pages(records, fresh_rejects, since, page_size, total=total):
            yield page

    async def _read_paged(self, stream: str, since: Cursor | None, limit: int) -> AsyncIterator[Page]:
        """The assumed ``paging: true`` convention, through the guarded keyset loop."""
        rejected: set[str] = set()

        async def fetch(updated_since: datetime | None, page: int) -> Fetched:
            params: dict[str, Any] = {self.options.page_param: page, self.options.limit_param: limit}
            if updated_since is not None:
                params[self.options.since_param] = format_utc(updated_since)
            items = await self._get_list(stream, params)
            records, rejects, timeless = self._map_items(stream, items)
            fresh = []
            for reject in rejects:
                if (reject.key or reject.ref) not in rejected:
                    rejected.add(reject.key or reject.ref)
                    fresh.append(reject)
            where = f"GET {self._path(stream)}?{urlencode(params)}"
            # Never sorted here: the loop verifies the server's order instead of hiding it.
            return Fetched(timeless + records, fresh, len(items) >= limit, where)

        async for page in keyset_read(fetch, since, system=self.name, stream=stream, granularity=SECOND):
            yield page

    async def get(self, stream: str, key: str) -> Record | None:
        self.stream(stream)
        item = await self._get_native(stream, key)
        return None if item is None else self._record(stream, item)

    async def find(self, stream: str, record: Record) -> Record | None:
        if stream == "contacts" and isinstance(record, Contact):
            wanted, param = record.email, self.options.email_param
        elif stream == "organisations" and isinstance(record, Organisation):
            wanted, param = record.name, self.options.name_param
        else:
            return await super().find(stream, record)
        if not wanted:
            return None
        target = wanted.strip().lower()
        filters = {param: wanted} if param else {}
        if not self.options.paging:
            # One request: Clevertim answers the whole list whatever the parameters say.
            return self._match(stream, await self._get_list(stream, filters), target)
        limit = self.options.max_page_size
        guard = PageGuard(system=self.name, stream=stream)
        page = 1
        while True:
            params: dict[str, Any] = {self.options.page_param: page, self.options.limit_param: limit, **filters}
            items = await self._get_list(stream, params)
            guard.fetched(_ids(items), f"GET {self._path(stream)}?{urlencode(params)}")
            found = self._match(stream, items, target)
            if found is not None or len(items) < limit:
                return found
            page += 1

    def _match(self, stream: str, items: list[Any], target: str) -> Record | None:
        for item in items:
            if self._belongs(stream, item) and _natural_value(stream, item) == target:
                return self._record(stream, item)
        return None

    # -- writing ----------------------------------------------------------------------------------
    def _body(self, stream: str, record: Record, current: Mapping[str, Any] | None) -> dict[str, Any]:
        if isinstance(record, Contact):
            return merge_contact(record, current)
        if isinstance(record, Organisation):
            return merge_company(record, current)
        if isinstance(record, Ticket):
            return merge_case(record, current)
        raise NotSupportedError(f"cannot write {type(record).__name__} records to {stream}", system=self.name)

    async def _write(self, method: str, path: str, body: dict[str, Any]) -> Any:
        _, content = await self.http.request_decoded(method, path, json=body, decode=self._content)
        return None if not content else content[0]

    async def _written(self, stream: str, item: Any, body: Mapping[str, Any], where: str, key: str | None) -> Record:
        """The record a 2xx write answered: its body when that is the whole entity, else read back.

        Clevertim's PUT answers only ``{"id", "lc"}`` (a case: ``{"id"}``); a 2xx is never a
        rejection, so whatever it answered, the entity is what ``GET /{kind}/{id}`` says now.
        """
        kind = _KIND[stream]
        if isinstance(item, Mapping):
            if not undated(item) and any(name in item for name in body):
                result = self._to_record(stream, item)
                if not isinstance(result, Reject):
                    return result
            raw_id = item.get("id")
            if raw_id not in (None, ""):
                key = str(raw_id)
        if key is not None:
            current = await self._get_native(stream, key)
            if current is not None:
                result = self._to_record(stream, current)
                if isinstance(result, Reject):
                    raise MalformedResponseError(
                        f"{where} succeeded, but {kind} {key} reads back unusable: {result.reason}", system=self.name
                    )
                return result
            raise MalformedResponseError(
                f"{where} succeeded, but {kind} {key} cannot be read back (404)", system=self.name
            )
        raise MalformedResponseError(
            f"{where} succeeded without saying which {kind} it wrote: {excerpt(repr(item).encode())}",
            system=self.name,
        )

    async def create(self, stream: str, record: Record) -> Record:
        self.stream(stream)
        body = self._body(stream, record, None)
        path = self._path(stream)
        item = await self._write("POST", path, body)
        if not (isinstance(item, Mapping) and item.get("id") not in (None, "")) and stream != "tickets":
            # No id in a 2xx: the entity exists; its natural key finds it.
            found = await self.find(stream, record)
            if found is not None:
                return found
        return await self._written(stream, item, body, f"POST {path}", None)

    async def update(self, stream: str, key: str, record: Record) -> Record:
        self.stream(stream)
        kind = _KIND[stream]
        current = await self._get_native(stream, key)
        if current is None:
            raise RecordRejected(
                f"{kind} {key} does not exist in Clevertim", system=self.name, status=404, ref=f"{kind} {key}"
            )
        body = self._body(stream, record, current)
        path = self._path(stream, key)
        item = await self._write("PUT", path, body)
        return await self._written(stream, item, body, f"PUT {path}", key)

    async def delete(self, stream: str, key: str) -> None:
        self.stream(stream)
        if not key.isdigit():
            return
        await self.http.request_decoded("DELETE", self._path(stream, key), allow_status=(404,), decode=lambda r: None)


def _natural_value(stream: str, item: Any) -> str | None:
    if not isinstance(item, Mapping):
        return None
    if stream == "contacts":
        addresses = item.get("email") or []
        first = addresses[0] if isinstance(addresses, list) and addresses else addresses
        return str(first).strip().lower() if first else None
    name = item.get("cn")
    return str(name).strip().lower() if name else None


def _ids(items: list[Any]) -> tuple[Any, ...]:
    return tuple(item.get("id") if isinstance(item, Mapping) else None for item in items)


def _raw_stamp(raw: Any) -> datetime | None:
    """The ``lm`` of an entity that could not become a record, when it can be read at all."""
    if not isinstance(raw, Mapping):
        return None
    try:
        return parse_datetime(str(raw.get("lm") or ""))
    except ValueError:
        return None


def _envelope_error(response: httpx.Response) -> str | None:
    """The ``error`` of a ``{"status": "ERROR", "error": ...}`` body, if that is what it is."""
    try:
        body = loads_json(response)
    except MalformedResponseError:
        return None
    if isinstance(body, dict) and body.get("status") == "ERROR":
        return str(body.get("error") or "no reason given")
    return None
