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
======  =====================================  =========================================

Pagination and an incremental filter are not documented. By default this connector
asks for ``?page=N&limit=M&modified_since=<ISO 8601 UTC>`` and expects the list in
``(lm, id)`` order, which is what ``ferryman sandbox clevertim`` serves; every name is
configurable, and ``server_filter: false`` reads whole lists and filters and orders them
here for an API that ignores the filter.

Field mapping (full tables in README.md)::

    person   id / fn / ln / title / companyId / email[0] / phones[work] / phones[mobile] /
             address / city / postcode / country / ao / lm
          -> key / first_name / last_name / title / organisation_key / email / phone / mobile /
             street / city / postcode / country / created_at / updated_at
    company  id / cn / websites[0] / phones[work] / address / city / postcode / country / ao / lm
          -> key / name / website / phone / street / city / postcode / country / created_at / updated_at
    case     id / name / description / leadUser / cust / ao / lm
          -> key / subject / description / assignee / requester_key / created_at / updated_at

Everything else (the other emails and phones, ``ctype``, ``cf``, ``tags``...) is kept in
``extra`` on read and preserved on write: an update reads the entity, changes the mapped
fields and writes the whole entity back, because Clevertim's PUT replaces it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import Field, field_validator

from ferryman.api import ApiConnector, keyset_pages, sort_natural, to_record
from ferryman.config import Secret
from ferryman.connector import Capability, Cursor, Page, Reject, StreamInfo
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
from ferryman.timeutil import format_utc

from ._mapping import case_fields, company_fields, contact_fields, merge_case, merge_company, merge_contact

__all__ = ["ClevertimConnector", "ClevertimOptions"]

_ALL = frozenset(Capability)
_NO_FIND = _ALL - {Capability.FIND}

STREAMS: dict[str, StreamInfo] = {
    "contacts": StreamInfo("contacts", Contact, _ALL, natural_key="email", description="people"),
    "organisations": StreamInfo("organisations", Organisation, _ALL, natural_key="name", description="companies"),
    "tickets": StreamInfo("tickets", Ticket, _NO_FIND, description="cases"),
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
    page_param: str = Field("page", min_length=1, description="page number parameter (pages count from 1)")
    limit_param: str = Field("limit", min_length=1, description="page size parameter")
    max_page_size: int = Field(500, ge=1, le=100_000)
    since_param: str = Field("modified_since", min_length=1, description="incremental filter on lm (ISO 8601 UTC)")
    server_filter: bool = Field(
        True, description="the API filters by since_param and orders by (lm, id); false: read all, filter here"
    )
    email_param: str | None = Field("email", description="list filter for find() by email; null: scan the list")
    name_param: str | None = Field("cn", description="list filter for find() of companies by name; null: scan")

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
    summary = "Clevertim CRM: contacts, companies, cases (token auth, status/content envelope)"

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
        await self._get_list("contacts", {self.options.limit_param: 1})

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

    # -- reading --------------------------------------------------------------------------------
    def read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        self.stream(stream)
        limit = max(1, min(page_size, self.options.max_page_size))
        if self.options.server_filter:
            return self._read_keyset(stream, since, limit)
        return self._read_all(stream, since, limit)

    async def _fetch(
        self, stream: str, updated_since: datetime | None, page: int, limit: int, rejected: set[str]
    ) -> tuple[list[Record], list[Reject], bool]:
        params: dict[str, Any] = {self.options.page_param: page, self.options.limit_param: limit}
        if updated_since is not None:
            # Whole seconds, floored: lm has no fractions and the filter is inclusive.
            params[self.options.since_param] = format_utc(updated_since.replace(microsecond=0))
        items = await self._get_list(stream, params)
        records: list[Record] = []
        rejects: list[Reject] = []
        for item in items:
            if not self._belongs(stream, item):
                continue
            result = self._to_record(stream, item)
            if isinstance(result, Reject):
                if (result.key or result.ref) not in rejected:
                    rejected.add(result.key or result.ref)
                    rejects.append(result)
            else:
                records.append(result)
        return sort_natural(records), rejects, len(items) >= limit

    async def _read_keyset(self, stream: str, since: Cursor | None, limit: int) -> AsyncIterator[Page]:
        rejected: set[str] = set()

        async def fetch(updated_since: datetime | None, page: int) -> tuple[list[Record], list[Reject], bool]:
            return await self._fetch(stream, updated_since, page, limit, rejected)

        async for page in keyset_pages(fetch, since):
            yield page

    async def _read_all(self, stream: str, since: Cursor | None, limit: int) -> AsyncIterator[Page]:
        """For an API without the filter: read every page, then filter and order here."""
        rejected: set[str] = set()
        records: list[Record] = []
        rejects: list[Reject] = []
        page = 1
        while True:
            got, bad, more = await self._fetch(stream, None, page, limit, rejected)
            records.extend(got)
            rejects.extend(bad)
            if not more:
                break
            page += 1
        wanted = sort_natural([r for r in records if since is None or Cursor.of(r) >= since])
        if rejects:
            yield Page([], rejects)
        for start in range(0, len(wanted), limit):
            yield Page(wanted[start : start + limit])

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
        limit = self.options.max_page_size
        page = 1
        while True:
            params: dict[str, Any] = {self.options.page_param: page, self.options.limit_param: limit}
            if param:
                params[param] = wanted
            items = await self._get_list(stream, params)
            for item in items:
                if self._belongs(stream, item) and _natural_value(stream, item) == target:
                    return self._record(stream, item)
            if len(items) < limit:
                return None
            page += 1

    # -- writing ----------------------------------------------------------------------------------
    def _body(self, stream: str, record: Record, current: Mapping[str, Any] | None) -> dict[str, Any]:
        if isinstance(record, Contact):
            return merge_contact(record, current)
        if isinstance(record, Organisation):
            return merge_company(record, current)
        if isinstance(record, Ticket):
            return merge_case(record, current)
        raise NotSupportedError(f"cannot write {type(record).__name__} records to {stream}", system=self.name)

    async def _write(self, method: str, path: str, body: dict[str, Any]) -> Record | None:
        _, content = await self.http.request_decoded(method, path, json=body, decode=self._content)
        return None if not content else content[0]

    async def create(self, stream: str, record: Record) -> Record:
        self.stream(stream)
        body = self._body(stream, record, None)
        item = await self._write("POST", self._path(stream), body)
        if item is None:
            raise MalformedResponseError(f"POST {self._path(stream)} answered no new {_KIND[stream]}", system=self.name)
        return self._record(stream, item)

    async def update(self, stream: str, key: str, record: Record) -> Record:
        self.stream(stream)
        kind = _KIND[stream]
        current = await self._get_native(stream, key)
        if current is None:
            raise RecordRejected(
                f"{kind} {key} does not exist in Clevertim", system=self.name, status=404, ref=f"{kind} {key}"
            )
        body = self._body(stream, record, current)
        item = await self._write("PUT", self._path(stream, key), body)
        if item is None:  # an OK without content: read what was stored
            stored = await self.get(stream, key)
            if stored is None:
                raise MalformedResponseError(f"{kind} {key} vanished after an update", system=self.name)
            return stored
        return self._record(stream, item)

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


def _envelope_error(response: httpx.Response) -> str | None:
    """The ``error`` of a ``{"status": "ERROR", "error": ...}`` body, if that is what it is."""
    try:
        body = loads_json(response)
    except MalformedResponseError:
        return None
    if isinstance(body, dict) and body.get("status") == "ERROR":
        return str(body.get("error") or "no reason given")
    return None
