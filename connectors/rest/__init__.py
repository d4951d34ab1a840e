"""The generic ``rest`` connector: an API Ferryman has never heard of, declared in YAML.

Everything about the API is configuration: its base URL and auth, and per stream the
record kind, the list endpoint and where records sit in its body, how it pages, how it
filters by "updated since", the item/create/update/delete endpoints and the field
mapping. Nothing is coded per API. A minimal system::

    systems:
      desk:
        connector: rest
        base_url: https://desk.example.com/api
        auth: {type: header, name: X-API-Key, key: "${DESK_KEY}"}
        rate_limit: 120/min
        streams:
          tickets:
            record: ticket
            path: /tickets
            records_path: data
            pagination: {style: page, size_param: per_page, pages_path: total_pages}
            incremental: {template: "updated_since={cursor}", format: iso_z}
            fields: {key: id, subject: title, status: {native: state, values: {new: open, solved: closed}}}
            item: /tickets/{id}
            create: /tickets
            update: {method: PATCH, path: /tickets/{id}}

``config/rest.example.yaml`` is a complete, documented example against
``ferryman sandbox generic``; ``connectors/rest/README.md`` documents every key.

How reading works
-----------------
Every list request goes through :func:`ferryman.http.pagination.paginate`, whose page
guard stops a read whose page repeats the one before it (an API that ignores its paging
parameters), a paginator that asks for a page twice, or a read past the page cap, with
:class:`~ferryman.errors.PagingError` naming the URL, instead of paging for ever.

With ``incremental`` configured and ``sorted: true`` (the API returns records in
``updated_at`` order when filtered), a read goes through the one read loop,
:func:`ferryman.sdk.readloop.keyset_read`: the filter is re-issued from the newest
timestamp seen whenever a page moves it forward, so rows updated during the read cannot be
skipped by shifting page boundaries. Records reach the loop in the **server's** order and
the loop verifies it: an API that ignores the sort (or a stream declared ``sorted: true``
without the ``sort_params`` that make it sort) stops the read with
:class:`~ferryman.errors.OrderViolation` naming the two keys, never a silent skip. The bound
is always *inclusive*, floored to the filter's granularity (whole seconds; minutes for a
strftime ``format`` without ``%S``; an API that compares with ``>`` is asked from one second
earlier, ``inclusive: false``): records already delivered are dropped by the cursor policy
and unchanged ones are skipped by fingerprint in the engine. Without ``sorted`` (or without
``incremental``) the whole (filtered) list is read, de-duplicated, then filtered, ordered
and chunked by :func:`ferryman.sdk.readloop.whole_list_pages`.

``sort_params`` may repeat a parameter (``{orderby: [updated_at, id]}``) for APIs that sort
only when asked, by several pairs; ``first_cursor`` is the cursor sent on a full read, for
APIs whose list is empty (not complete) without a search.

``precision`` (``seconds`` by default; ``milliseconds``, ``microseconds``, ``minutes``)
declares the finest step of the stream's ``updated_at``; the engine never reads back less
than one step (:mod:`ferryman.cursor`).

How writing is verified
-----------------------
A 2xx answer is never a rejection. When its body is not the record (a stub such as
``{"id": "12", "_url": "...", "type": "ticket"}``, ``[]``, only an id), the record is read
back through ``item`` (ids compared as text: ``12`` and ``"12"`` are one record). A stream
may declare what success looks like, ``success: {status: [200, 201], body_matching: ...,
body_not_matching: "isn't a valid"}`` (regular expressions searched in the raw body); a
create or update failing it raises :class:`~ferryman.errors.RecordRejected` with the
status and the API's own words, e.g. ``200 ["Ticket 2: Status 'closed' isn't a valid
status for this ticket."]``.

Deleted records
---------------
``hides_deleted: true`` says deleted records vanish from the lists (``StreamInfo.hides_deleted``:
the engine probes linked keys with :meth:`RestConnector.get`). ``get`` answers ``None`` for a
404/410 and a record with ``deleted=True`` when the item says so: the mapped ``deleted``
field, or ``deleted_when: {field: status, equals: deleted}`` (a value or a list, compared as
text; the field that says so is then not mapped).

Field mapping
-------------
``fields`` maps each canonical field to a native one (both directions), by dotted path:

=====================  ==========================  =======================================
canonical              native (default)            notes
=====================  ==========================  =======================================
``key``                ``id``                      read only; ``str()`` of the native id
``updated_at``         ``updated_at``              read only; parsed to aware UTC
``deleted``            ``deleted``                 read only; missing means ``false``
``created_at``         as configured               read only unless ``write: true``
any other field        as configured               read and written; ``values`` translates
=====================  ==========================  =======================================

Without ``fields`` every canonical field maps to the native field of the same name.
Native fields no mapping names are kept in the record's ``extra``; ``extra`` is never
written back. Timestamps are read as ISO 8601 (a value without an offset is taken in
the stream's ``timezone``, and refused without one), epoch seconds, or the field's own
``format``; they are written as ISO 8601 with ``Z`` unless the field says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Annotated, Any, Literal, NamedTuple, get_args
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import httpx
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ferryman.api import ApiConnector, cut_nesting, to_record, to_records
from ferryman.config import Secret
from ferryman.connector import Capability, Cursor, Page, Reject, StreamInfo, SystemContext, record_order
from ferryman.cursor import SECOND, filter_floor, is_older, parse_precision
from ferryman.errors import MalformedResponseError, RecordRejected
from ferryman.http import ApiKeyHeader, ApiKeyQuery, Basic, Bearer, HttpOptions
from ferryman.http.codecs import loads_json
from ferryman.http.pagination import (
    BodyCursor,
    BodyNextUrl,
    LinkHeader,
    NextRequest,
    OffsetLimit,
    PageNumber,
    Paginator,
    extract,
    paginate,
)
from ferryman.records import Record, record_type
from ferryman.redact import redact_cut, redact_url, register_secret
from ferryman.sdk.readloop import Fetched, keyset_read, whole_list_pages
from ferryman.timeutil import UTC, ZoneName, ensure_utc, format_utc, from_epoch, parse_datetime, utcnow

__all__ = ["Mapper", "RestConnector", "RestOptions", "StreamSpec", "format_time", "parse_time"]

SQL_FORMAT = "YYYY-MM-DD HH:MM:SS"
NAMED_FORMATS = ("iso_z", "iso_offset", SQL_FORMAT, "epoch")
#: canonical fields that describe the record rather than its content: never written unless asked
READ_ONLY = frozenset({"key", "updated_at", "deleted", "created_at"})
DEFAULT_NATIVE = {"key": "id", "updated_at": "updated_at", "deleted": "deleted"}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_MISSING: Any = object()


# -- time ----------------------------------------------------------------------------------------


def _zone(name: str | None) -> tzinfo | None:
    if name is None:
        return None
    return UTC if name.upper() in ("UTC", "Z") else ZoneInfo(name)


def format_time(value: datetime, fmt: str, zone: tzinfo | None = None) -> str:
    """``value`` as an API wants it: ``iso_z``, ``iso_offset``, ``YYYY-MM-DD HH:MM:SS``,
    ``epoch`` (seconds) or a strftime pattern; the last three in ``zone`` (default UTC).

    >>> format_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "iso_offset", ZoneInfo("Europe/Berlin"))
    '2026-01-02T04:04:05+01:00'
    """
    if fmt == "iso_z":
        return format_utc(value)
    if fmt == "epoch":
        return str(int(value.timestamp()))
    local = value.astimezone(zone or UTC)
    if fmt == "iso_offset":
        return local.isoformat()
    if fmt == SQL_FORMAT:
        return local.strftime("%Y-%m-%d %H:%M:%S")
    return local.strftime(fmt)


def parse_time(value: Any, fmt: str | None = None, zone: tzinfo | None = None) -> datetime:
    """A native timestamp as aware UTC.

    Numbers are epoch seconds; strings are ISO 8601 (or ``fmt``), and a string without an
    offset is taken in ``zone``; without a zone it is refused rather than guessed.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a timestamp: {value!r}")
    if isinstance(value, int | float | Decimal):
        return from_epoch(float(value))
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    if fmt == "epoch":
        return from_epoch(value.strip())
    if fmt == SQL_FORMAT:
        return parse_datetime(value, assume_tz=zone, fmt="%Y-%m-%d %H:%M:%S")
    if fmt is not None and "%" in fmt:
        return parse_datetime(value, assume_tz=zone, fmt=fmt)
    return parse_datetime(value, assume_tz=zone)


def _check_format(value: str) -> str:
    if value not in NAMED_FORMATS and "%" not in value:
        raise ValueError(
            f"unknown time format {value!r}: use iso_z, iso_offset, '{SQL_FORMAT}', epoch, "
            "or a strftime pattern such as '%d/%m/%Y %H:%M'"
        )
    return value


TimeFormat = Annotated[str, AfterValidator(_check_format)]
"""``iso_z``, ``iso_offset``, ``YYYY-MM-DD HH:MM:SS``, ``epoch`` or a strftime pattern."""

Zone = ZoneName


# -- options ---------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _path_shorthand(value: Any) -> Any:
    """``create: /tickets`` means ``create: {path: /tickets}``."""
    return {"path": value} if isinstance(value, str) else value


def _style_shorthand(value: Any) -> Any:
    """``pagination: page`` means ``pagination: {style: page}``."""
    return {"style": value} if isinstance(value, str) else value


class HeaderAuth(_Model):
    """An API key in a header: ``{type: header, name: X-API-Key, key: ${KEY}}``."""

    type: Literal["header"]
    name: str = "X-API-Key"
    key: Secret
    prefix: str = Field("", description="put before the key, e.g. 'Token ' for 'Authorization: Token KEY'")


class QueryAuth(_Model):
    """An API key in the query string: ``{type: query, param: api_key, key: ${KEY}}``."""

    type: Literal["query"]
    param: str = "api_key"
    key: Secret


class BasicAuth(_Model):
    """HTTP Basic: ``{username: me, password: ${PW}}``, or a token as the user name with a
    dummy password (``{token: ${TOKEN}, dummy_password: X}``)."""

    type: Literal["basic"]
    username: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    dummy_password: str = "X"  # noqa: S105 - not a secret: token-as-user APIs ignore it

    @model_validator(mode="after")
    def _one_style(self) -> BasicAuth:
        if (self.token is None) == (self.username is None):
            raise ValueError("give either 'username' and 'password', or 'token' (sent as the user name)")
        if self.username is not None and self.password is None:
            raise ValueError("'username' needs a 'password' (a reference such as ${ENV_NAME})")
        return self


class BearerAuth(_Model):
    """``Authorization: Bearer TOKEN``."""

    type: Literal["bearer"]
    token: Secret


Auth = Annotated[HeaderAuth | QueryAuth | BasicAuth | BearerAuth, Field(discriminator="type")]


class _PaginationBase(_Model):
    size: int | None = Field(None, ge=1, description="records per page to ask for (default: min(page_size, max_size))")
    max_size: int = Field(100, ge=1, description="the most the API returns per page")

    def page_size(self, wanted: int) -> int:
        return self.size or min(wanted, self.max_size)


class NoPagination(_PaginationBase):
    """One request returns everything."""

    style: Literal["none"]


class PagePagination(_PaginationBase):
    """``?page=N&per_page=M``."""

    style: Literal["page"]
    param: str = "page"
    size_param: str | None = "per_page"
    start: int = 1
    pages_path: str | None = Field(None, description="body path of the total page count")
    total_path: str | None = Field(None, description="body path of the total record count")


class OffsetPagination(_PaginationBase):
    """``?offset=N&limit=M``."""

    style: Literal["offset"]
    offset_param: str = "offset"
    size_param: str = "limit"
    start: int = 0
    total_path: str | None = None


class CursorPagination(_PaginationBase):
    """An opaque next-page token in the body, sent back as ``param``."""

    style: Literal["cursor"]
    cursor_path: str = "next_cursor"
    param: str = "cursor"
    has_more_path: str | None = None
    size_param: str | None = "limit"


class NextUrlPagination(_PaginationBase):
    """The next page's URL in the body."""

    style: Literal["next_url"]
    path: str = "next"
    size_param: str | None = "limit"


class LinkPagination(_PaginationBase):
    """The next page in the ``Link`` header (RFC 8288)."""

    style: Literal["link"]
    rel: str = "next"
    size_param: str | None = "per_page"


Pagination = Annotated[
    NoPagination | PagePagination | OffsetPagination | CursorPagination | NextUrlPagination | LinkPagination,
    Field(discriminator="style"),
]


class _OneRequest:
    """``pagination: none``: the first answer is the whole list."""

    def first(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return dict(params)

    def next_request(
        self, response: httpx.Response, body: Any, params: Mapping[str, Any], records: Sequence[Any]
    ) -> NextRequest | None:
        return None


_ONE_REQUEST = _OneRequest()


def _paginator(spec: Any, size: int) -> Paginator | None:
    """The :mod:`ferryman.http.pagination` paginator for a style (``None``: one request)."""
    if isinstance(spec, PagePagination):
        return PageNumber(spec.param, spec.size_param, size, spec.start, spec.pages_path, spec.total_path)
    if isinstance(spec, OffsetPagination):
        return OffsetLimit(spec.offset_param, spec.size_param, size, spec.start, spec.total_path)
    if isinstance(spec, CursorPagination):
        return BodyCursor(spec.cursor_path, spec.param, spec.has_more_path)
    if isinstance(spec, NextUrlPagination):
        return BodyNextUrl(spec.path)
    if isinstance(spec, LinkPagination):
        return LinkHeader(spec.rel)
    return None


class Incremental(_Model):
    """How the API filters by "updated since": the cursor goes into the query by a template."""

    template: str | dict[str, str] = Field(
        description="'updated_since={cursor}', or {q: \"updated >= '{cursor}'\"} for a query language"
    )
    format: TimeFormat = "iso_z"
    timezone: Zone | None = Field(None, description="zone of the timestamp in the template (default: the stream's)")
    inclusive: bool = Field(True, description="the API compares >=; false when it compares > (asked 1 s earlier)")
    sorted: bool = Field(True, description="the API returns records in updated_at order when filtered")
    sort_params: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="extra query params that ask for that order; a list repeats the param (orderby pairs)",
    )
    first_cursor: AwareDatetime | None = Field(
        None,
        description="the cursor sent on a full read, for APIs whose list is empty without a search (default: none)",
    )

    @field_validator("template")
    @classmethod
    def _has_cursor(cls, value: str | dict[str, str]) -> str | dict[str, str]:
        params = _template_params(value)
        if not params:
            raise ValueError("the template names no query parameter (write it as 'name={cursor}')")
        if not any("{cursor}" in v for v in params.values()):
            raise ValueError("the template must contain {cursor}, e.g. 'updated_since={cursor}'")
        for text in params.values():
            for name in _PLACEHOLDER.findall(text):
                if name != "cursor":
                    raise ValueError(f"unknown placeholder {{{name}}} in the template (only {{cursor}})")
        return value

    @property
    def granularity(self) -> timedelta:
        """The finest step the filter takes: whole seconds, or whole minutes (hours) for a
        strftime pattern without ``%S`` (``%M``), which a keyset read must not restart within."""
        fmt = self.format
        if "%" in fmt and "%S" not in fmt and "%s" not in fmt and "%T" not in fmt:
            return timedelta(minutes=1) if "%M" in fmt or "%R" in fmt else timedelta(hours=1)
        return SECOND

    def params(self, since: datetime, zone: tzinfo | None) -> dict[str, str]:
        """The query parameters asking for records updated at or after ``since``."""
        bound = since.replace(microsecond=0)  # whole seconds, rounded down: inclusive
        if not self.inclusive:
            bound -= timedelta(seconds=1)
        text = format_time(bound, self.format, _zone(self.timezone) or zone)
        return {name: value.replace("{cursor}", text) for name, value in _template_params(self.template).items()}


def _template_params(template: str | dict[str, str]) -> dict[str, str]:
    if isinstance(template, dict):
        return dict(template)
    params: dict[str, str] = {}
    for part in template.lstrip("?").split("&"):
        if part:
            name, _, value = part.partition("=")
            params[name.strip()] = value
    return params


class FieldSpec(_Model):
    """One canonical field's native counterpart."""

    native: str = Field(description="dotted path in the native record, e.g. requester.email")
    values: dict[Any, Any] = Field(default_factory=dict, description="native value -> canonical value")
    write_values: dict[Any, Any] | None = Field(
        None, description="canonical value -> native value (default: values reversed, first one wins)"
    )
    default: Any = Field(None, description="canonical value for a native value not in 'values' (when given)")
    format: TimeFormat | None = Field(None, description="time format of this field in the API (default ISO 8601)")
    read: bool = True
    write: bool | None = Field(None, description="default: true, except key, updated_at, deleted, created_at")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"native": value} if isinstance(value, str) else value

    def to_canonical(self, value: Any) -> Any:
        if not self.values:
            return value
        if value in self.values:
            return self.values[value]
        # YAML reads `-1: closed` as a number and an API may send "-1", or the other way round.
        text = str(value)
        for native, canonical in self.values.items():
            if str(native) == text:
                return canonical
        return self.default if "default" in self.model_fields_set else value

    def to_native(self, value: Any) -> Any:
        table = self.write_values
        if table is None:
            table = {}
            for native, canonical in self.values.items():
                table.setdefault(canonical, native)
        return table.get(value, value)


class ItemEndpoint(_Model):
    """``GET path`` (``{id}`` is the record key) for one record."""

    path: str
    record_path: str = Field("", description="where the record sits in the body ('' for the body itself)")


class WriteEndpoint(_Model):
    """A create or update: method, path, body format, and where the stored record comes back."""

    method: Literal["POST", "PUT", "PATCH"] | None = None
    path: str
    body: Literal["json", "form"] = "json"
    wrap: str | None = Field(None, description="send the fields under this key (dotted), e.g. 'contact'")
    record_path: str = Field("", description="where the stored record sits in the response body")
    id_from: Literal["body", "location"] = Field("body", description="create: where the new id comes from")
    id_path: str = Field("id", description="create: body path of the new id (with id_from: body)")

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class DeleteEndpoint(_Model):
    """``DELETE path``; a 404 or 410 means it is already gone."""

    method: Literal["DELETE", "POST", "PUT", "PATCH"] = "DELETE"
    path: str


class FindSpec(_Model):
    """A search by natural key; results are compared exactly, page by page."""

    path: str | None = Field(None, description="default: the stream's list path")
    params: dict[str, str] = Field(default_factory=dict, description="e.g. {email: '{email}'} (canonical fields)")
    records_path: str | None = Field(None, description="default: the stream's records_path")


class SuccessSpec(_Model):
    """How a 2xx answer to a create or update is recognised as success.

    ``status``: the statuses that mean success (default: any 2xx); ``body_matching`` /
    ``body_not_matching``: regular expressions searched in the raw body. A write that fails
    the check is a rejection carrying the API's own words.
    """

    status: list[Annotated[int, Field(ge=200, le=299)]] | None = None
    body_matching: str | None = Field(None, description="a regular expression a successful body contains")
    body_not_matching: str | None = Field(None, description="a regular expression only a failed body contains")

    @field_validator("body_matching", "body_not_matching")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    def failure(self, response: httpx.Response) -> str | None:
        """Why ``response`` is not a success (the status and the API's words), or ``None``."""
        text = response.text
        failed = (
            (self.status is not None and response.status_code not in self.status)
            or (self.body_matching is not None and re.search(self.body_matching, text) is None)
            or (self.body_not_matching is not None and re.search(self.body_not_matching, text) is not None)
        )
        if not failed:
            return None
        words = " ".join(text.split())
        return f"{response.status_code} {redact_cut(words, 500) or '(empty body)'}"


class DeletedWhen(_Model):
    """A native field whose value says the record is deleted: ``{field: status, equals: deleted}``."""

    field: str = Field(description="dotted native path, e.g. status")
    equals: Any = Field(description="the value (or list of values) meaning deleted; compared as text")

    def matches(self, native: Mapping[str, Any]) -> bool:
        value = extract(native, self.field, _MISSING)
        if value is _MISSING or value is None:
            return False
        wanted = self.equals if isinstance(self.equals, list) else [self.equals]
        return str(value) in {str(w) for w in wanted}


def _precision(value: Any) -> timedelta:
    if not isinstance(value, str | timedelta):
        raise ValueError("use seconds, milliseconds, microseconds or minutes")
    return parse_precision(value)


class StreamSpec(_Model):
    """One stream of the API."""

    record: Literal["ticket", "contact", "organisation", "invoice"]
    path: str = Field(description="the list endpoint, e.g. /tickets")
    records_path: str = Field("", description="where the list sits in the body: 'data', 'results.items', '' (body)")
    params: dict[str, str | int | float | bool] = Field(default_factory=dict, description="sent with every list")
    pagination: Annotated[Pagination, BeforeValidator(_style_shorthand)] = Field(
        default_factory=lambda: NoPagination(style="none")
    )
    incremental: Incremental | None = None
    timezone: Zone | None = Field(None, description="zone of native timestamps without an offset")
    natural_key: str | None = Field(None, description="canonical field find() matches on (contacts: email)")
    fields: dict[str, FieldSpec] | None = None
    item: Annotated[ItemEndpoint | None, BeforeValidator(_path_shorthand)] = None
    create: Annotated[WriteEndpoint | None, BeforeValidator(_path_shorthand)] = None
    update: Annotated[WriteEndpoint | None, BeforeValidator(_path_shorthand)] = None
    delete: Annotated[DeleteEndpoint | None, BeforeValidator(_path_shorthand)] = None
    find: FindSpec | None = None
    write_nulls: bool = Field(False, description="send null for empty fields (default: leave them out)")
    precision: Annotated[timedelta, BeforeValidator(_precision)] = Field(
        SECOND, description="finest step of native updated_at: seconds, milliseconds, microseconds, minutes"
    )
    success: SuccessSpec | None = Field(None, description="how a 2xx create/update is recognised as success")
    hides_deleted: bool = Field(False, description="deleted records vanish from lists (the engine probes item)")
    deleted_when: DeletedWhen | None = Field(None, description="a native value meaning deleted, e.g. status")

    @model_validator(mode="after")
    def _check(self) -> StreamSpec:
        rtype = record_type(self.record)
        known = set(rtype.model_fields) - {"extra"}
        for name in self.fields or {}:
            if name not in known:
                raise ValueError(f"{self.record} has no field {name!r} (fields: {', '.join(sorted(known))})")
        natural = self.natural_key or ("email" if self.record == "contact" else None)
        if natural is not None and natural not in known:
            raise ValueError(f"natural_key: {self.record} has no field {natural!r}")
        if self.find is not None:
            if natural is None:
                raise ValueError("find needs a natural_key (the canonical field to match on)")
            for value in self.find.params.values():
                for name in _PLACEHOLDER.findall(value):
                    if name not in known:
                        raise ValueError(f"find.params: {self.record} has no field {{{name}}}")
        if self.hides_deleted and self.item is None:
            raise ValueError("hides_deleted needs item: deleted records are found by GET of the item")
        for endpoint in ("item", "update", "delete"):
            spec = getattr(self, endpoint)
            if spec is not None and "{id}" not in spec.path:
                raise ValueError(f"{endpoint}.path must contain {{id}}, e.g. {self.path.rstrip('/')}/{{id}}")
        return self

    @property
    def record_type(self) -> type[Record]:
        return record_type(self.record)

    @property
    def key_field(self) -> str | None:
        return self.natural_key or ("email" if self.record == "contact" else None)

    def field_specs(self) -> dict[str, FieldSpec]:
        """Every mapped canonical field (defaults for key, updated_at and deleted included)."""
        if self.fields is None:
            names = [f for f in self.record_type.model_fields if f != "extra"]
            specs = {name: FieldSpec(native=DEFAULT_NATIVE.get(name, name)) for name in names}
        else:
            specs = {name: FieldSpec(native=native) for name, native in DEFAULT_NATIVE.items()}
            specs.update(self.fields)
        return specs


class RestOptions(HttpOptions):
    """The keys of a ``connector: rest`` system (plus every :class:`~ferryman.http.HttpOptions` key)."""

    auth: Auth | None = None
    timezone: Zone | None = Field(None, description="zone of native timestamps without an offset, for every stream")
    check_path: str | None = Field(None, description="GET this for `ferryman check` (default: the first list)")
    streams: dict[str, StreamSpec] = Field(min_length=1)


# -- mapping -----------------------------------------------------------------------------------------


def _set_path(target: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _leftovers(native: Mapping[str, Any], consumed: list[list[str]]) -> dict[str, Any]:
    """The native fields no mapping path consumed (nested objects keep their unmapped parts)."""
    out: dict[str, Any] = {}
    for name, value in native.items():
        below = [path[1:] for path in consumed if path[0] == name]
        if not below:
            out[name] = value
        elif all(below) and isinstance(value, Mapping):
            rest = _leftovers(value, below)
            if rest:
                out[name] = rest
    return out


def _holds(annotation: Any, wanted: type) -> bool:
    """Whether a field annotation is ``wanted``, possibly inside Optional/Annotated/Union."""
    if annotation is wanted:
        return True
    return any(_holds(arg, wanted) for arg in get_args(annotation) if not isinstance(arg, str | int | float))


def _fields_holding(rtype: type[Record], wanted: type) -> frozenset[str]:
    return frozenset(n for n, f in rtype.model_fields.items() if _holds(f.annotation, wanted))


# Per-field conversions of a native value (after the value map), chosen once per field by
# Mapper.__init__. A ValueError names what is wrong; Mapper.to_canonical adds the field.


def _read_key(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict | list):
        raise ValueError("not an id")
    return str(value)


def _read_decimal(value: Any) -> Any:
    return Decimal(repr(value)) if isinstance(value, float) else value  # never let a float's binary error into money


def _read_text(value: Any) -> Any:
    if type(value) is str or value is None:
        return value  # the common case, settled before the isinstance checks
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # a numeric id or code in a text field (customer_id: 12)
    return value


def _read_decimal_text(value: Any) -> Any:
    # No record type has a field both money and text today; if one does, a float is money
    # first and an int becomes text, in the original order.
    return _read_text(_read_decimal(value))


def _time_reader(fmt: str | None, zone: tzinfo | None) -> Callable[[Any], datetime | None]:
    """The reader of one timestamp field: :func:`parse_time`, with a shortcut for ISO strings.

    Most APIs send ``2026-03-01T09:30:15Z``: ``datetime.fromisoformat`` reads that directly
    (Python 3.11 accepts the ``Z``), without parse_datetime's strip and regex. Only a
    result that parse_datetime would give too is returned from the shortcut; anything it
    cannot settle (a ValueError, a naive time without a zone) goes through ``parse_time``,
    so epoch strings, other layouts and every error message stay exactly as they are.

    Why the two agree: parse_datetime strips the text, turns a final ``z``/``Z`` into
    ``+00:00`` and, without a ``T``, the first space into ``T``, then calls fromisoformat
    too. fromisoformat refuses surrounding whitespace and a lowercase ``z`` (both then take
    the fallback), reads a final ``Z`` exactly as ``+00:00``, and the space is replaced here
    the same way. tests/connectors/test_rest.py holds this to the original code.
    """

    def read(value: Any) -> datetime | None:
        return None if value is None or value == "" else parse_time(value, fmt, zone)

    if fmt not in (None, "iso_z", "iso_offset"):  # parse_time reads these three alike: ISO 8601
        return read

    def read_iso(value: Any) -> datetime | None:
        if type(value) is not str or not value:
            return read(value)
        text = value
        if "T" not in text and " " in text:
            text = text.replace(" ", "T", 1)  # as parse_datetime does, for "2026-03-01 09:30:15"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return parse_time(value, fmt, zone)
        offset = parsed.tzinfo
        if offset is UTC:  # "Z" and "+00:00" parse to the UTC singleton itself
            return parsed
        if offset is None:
            if zone is None:
                return parse_time(value, fmt, zone)  # raises parse_datetime's own NaiveDatetimeError
            parsed = parsed.replace(tzinfo=zone)
        return ensure_utc(parsed)

    return read_iso


class _Reader(NamedTuple):
    """How one canonical field is read from a native record, decided once per stream."""

    name: str
    path: str
    key: str | None  # the native key when the path is a single key (read with dict.get)
    values: Callable[[Any], Any] | None  # FieldSpec.to_canonical, when the field has a value map
    convert: Callable[[Any], Any] | None  # None: the value is kept as it is
    required: bool  # key and updated_at: a record without them is refused


class Mapper:
    """Native dicts ↔ canonical records for one stream: pure, no I/O."""

    def __init__(self, spec: StreamSpec, zone: tzinfo | None) -> None:
        self.spec = spec
        self.rtype = spec.record_type
        self.zone = zone
        self.fields = spec.field_specs()
        self._datetimes = self.rtype.datetime_fields()
        self._decimals = _fields_holding(self.rtype, Decimal)
        self._texts = _fields_holding(self.rtype, str)
        self._consumed = [f.native.split(".") for f in self.fields.values() if f.read]
        # With only top-level paths (the usual case) leftovers are a plain key filter.
        self._consumed_keys = (
            frozenset(path[0] for path in self._consumed) if all(len(p) == 1 for p in self._consumed) else None
        )
        self._key_path = self.fields["key"].native
        self._readers = [self._reader(name, spec) for name, spec in self.fields.items() if spec.read]
        self._deleted_when = spec.deleted_when
        # A record the deleted_when rule matches is read without the field that says so: a
        # status "deleted" is no canonical status, and the record is only a tombstone.
        gone_path = spec.deleted_when.field if spec.deleted_when is not None else None
        self._tombstone_readers = [r for r in self._readers if r.path != gone_path]
        self._plain = self._compile_plain()

    def _compile_plain(self) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """:meth:`to_canonical` for a JSON object, written out as straight-line code for this
        stream's fields, when every field is one top-level key without a value map and no
        ``deleted_when`` applies (the usual declaration); None otherwise.

        It is the page's fast path only (:meth:`page`): it gives the same dict as
        to_canonical for a record that maps cleanly, and raises on anything else (a missing
        or empty key, a value a converter refuses), after which the page is mapped record by
        record and to_canonical says what is wrong. Names and keys from the configuration
        enter the code as ``repr`` literals only."""
        if self._deleted_when is not None or self._consumed_keys is None:
            return None
        if any(r.key is None or r.values is not None for r in self._readers):
            return None
        env: dict[str, Any] = {"_M": _MISSING, "_read_text": _read_text, "_consumed": self._consumed_keys}
        lines = ["def read(native):", "    get = native.get", "    data = {}"]
        for i, reader in enumerate(self._readers):
            lines.append(f"    v = get({reader.key!r}, _M)")
            if reader.required:
                lines.append("    if v is _M: raise LookupError")
                indent = "    "
            else:
                lines.append("    if v is not _M:")
                indent = "        "
            if reader.convert is None:
                value = "v"
            elif reader.convert is _read_text:
                value = "v if type(v) is str or v is None else _read_text(v)"
            else:
                env[f"_c{i}"] = reader.convert
                value = f"_c{i}(v)"
            lines.append(f"{indent}data[{reader.name!r}] = {value}")
        lines += [
            "    if data.get('key') in (None, ''): raise LookupError",
            "    if data.get('deleted') is None: data.pop('deleted', None)",
            "    data['extra'] = {k: v for k, v in native.items() if k not in _consumed}",
            "    return data",
        ]
        exec("\n".join(lines), env)  # noqa: S102 - generated from repr literals, see the docstring
        read: Callable[[dict[str, Any]], dict[str, Any]] = env["read"]
        return read

    def _reader(self, name: str, spec: FieldSpec) -> _Reader:
        path = spec.native
        key = path if path and "." not in path else None  # extract() treats "" as the body itself
        return _Reader(
            name,
            path,
            key,
            spec.to_canonical if spec.values else None,
            self._converter(name, spec),
            name in ("key", "updated_at"),
        )

    def _converter(self, name: str, spec: FieldSpec) -> Callable[[Any], Any] | None:
        if name == "key":
            return _read_key
        if name in self._datetimes:
            return _time_reader(spec.format, self.zone)
        if name in self._decimals:
            return _read_decimal_text if name in self._texts else _read_decimal
        if name in self._texts:
            return _read_text
        return None

    def native_id(self, native: Any) -> str | None:
        if not isinstance(native, Mapping):
            return None
        value = extract(native, self._key_path)
        return None if value is None or isinstance(value, dict | list) else str(value)

    def to_canonical(self, native: Mapping[str, Any]) -> dict[str, Any]:
        """The canonical field values of a native record (raises ValueError saying which field is wrong)."""
        data: dict[str, Any] = {}
        # A JSON object is a plain dict: its single keys are read with dict.get, the rest by extract().
        get = native.get if type(native) is dict else None
        gone = self._deleted_when is not None and self._deleted_when.matches(native)
        for name, path, key, values, convert, required in self._tombstone_readers if gone else self._readers:
            value = get(key, _MISSING) if get is not None and key is not None else extract(native, path, _MISSING)
            if value is _MISSING:
                if required:
                    raise ValueError(f"{name}: no {path!r} in the record")
                continue
            if values is not None:
                value = values(value)
            if convert is not None:
                try:
                    value = convert(value)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
            data[name] = value
        if data.get("key") in (None, ""):
            raise ValueError(f"key: {self._key_path!r} is empty")
        if gone:
            data["deleted"] = True
        elif data.get("deleted") is None:
            data.pop("deleted", None)
        keys = self._consumed_keys
        if keys is not None and get is not None:
            data["extra"] = {k: v for k, v in native.items() if k not in keys}
        else:
            data["extra"] = _leftovers(native, self._consumed)
        return data

    def page(self, natives: list[Any]) -> list[Record] | None:
        """A page of natives as records at once (see :func:`~ferryman.api.to_records`), or
        None when any of them is not a clean record: :meth:`record` then says which."""
        if any(type(native) is not dict for native in natives):
            return None
        read = self._plain or self.to_canonical
        try:
            page = [read(native) for native in natives]
        except Exception:  # record() reports it, native by native
            return None
        return to_records(self.rtype, page)

    def record(self, native: Any, ref_prefix: str) -> Record | Reject:
        """A canonical record, or a :class:`Reject` naming the native id and what is wrong."""
        key = self.native_id(native)
        ref = f"{ref_prefix} {key}" if key else ref_prefix
        if not isinstance(native, Mapping):
            return Reject(ref, f"expected a JSON object, found {type(native).__name__}", raw=native, key=key)
        result = to_record(self.rtype, lambda: self.to_canonical(native), ref=ref, key=key)
        if isinstance(result, Reject):
            # cut: the letter's payload is written by serialisers that stop at a depth
            return Reject(result.ref, result.reason, raw=cut_nesting(native), key=result.key)
        return result

    def to_native(self, record: Record) -> dict[str, Any]:
        """The body fields for writing ``record`` (read-only and unset fields left out)."""
        body: dict[str, Any] = {}
        for name, spec in self.fields.items():
            writable = spec.write if spec.write is not None else name not in READ_ONLY
            if not writable:
                continue
            value = getattr(record, name)
            if value is None and not self.spec.write_nulls:
                continue
            value = spec.to_native(value)
            if isinstance(value, datetime):
                value = format_time(value, spec.format or "iso_z", self.zone)
            elif isinstance(value, date):
                value = value.isoformat()
            _set_path(body, spec.native, value)
        return body


# -- the connector -------------------------------------------------------------------------------------


class RestConnector(ApiConnector):
    """Any JSON REST API, declared in YAML (see the module docstring and README)."""

    kind = "rest"
    Options = RestOptions
    summary = "any JSON REST API, declared in YAML (auth, pagination, incremental filter, field mapping)"

    options: RestOptions

    def __init__(self, context: SystemContext) -> None:
        super().__init__(context)
        zone = _zone(self.options.timezone)
        self._mappers = {
            name: Mapper(spec, _zone(spec.timezone) or zone) for name, spec in self.options.streams.items()
        }

    # -- description -----------------------------------------------------------------------
    @classmethod
    def describe(cls) -> Mapping[str, StreamInfo]:
        raise NotImplementedError("the rest connector's streams depend on configuration")

    def streams(self) -> Mapping[str, StreamInfo]:
        return {name: self._info(name, spec) for name, spec in self.options.streams.items()}

    def _info(self, name: str, spec: StreamSpec) -> StreamInfo:
        caps = {Capability.READ}
        if spec.incremental is not None:
            caps.add(Capability.INCREMENTAL)
        for capability, endpoint in (
            (Capability.CREATE, spec.create),
            (Capability.UPDATE, spec.update),
            (Capability.DELETE, spec.delete),
        ):
            if endpoint is not None:
                caps.add(capability)
        if spec.key_field is not None:
            caps.add(Capability.FIND)
        return StreamInfo(
            name,
            spec.record_type,
            frozenset(caps),
            natural_key=spec.key_field,
            ordered=True,  # either keyset reads in verified API order, or sorted here
            description=f"{spec.record} records from {spec.path}",
            precision=spec.precision,
            hides_deleted=spec.hides_deleted,
        )

    def _spec(self, stream: str) -> tuple[StreamSpec, Mapper]:
        self.stream(stream)  # raises NotSupportedError naming the streams
        return self.options.streams[stream], self._mappers[stream]

    # -- http ---------------------------------------------------------------------------------
    def auth(self) -> httpx.Auth | None:
        auth = self.options.auth
        if isinstance(auth, HeaderAuth):
            key = auth.key.get_secret_value()
            register_secret(key)
            return ApiKeyHeader(auth.name, auth.prefix + key)
        if isinstance(auth, QueryAuth):
            return ApiKeyQuery(auth.param, auth.key.get_secret_value())
        if isinstance(auth, BasicAuth):
            if auth.token is not None:
                return Basic(auth.token.get_secret_value(), auth.dummy_password)
            assert auth.username is not None and auth.password is not None
            return Basic(auth.username, auth.password.get_secret_value())
        if isinstance(auth, BearerAuth):
            return Bearer(auth.token.get_secret_value())
        return None

    def headers(self) -> dict[str, str]:
        return {"Accept": "application/json"}

    async def check(self) -> None:
        if self.options.check_path is not None:
            await self.http.request("GET", self.options.check_path)
            return
        spec = next(iter(self.options.streams.values()))
        paginator = _paginator(spec.pagination, 1)
        params = paginator.first(dict(spec.params)) if paginator else dict(spec.params)
        await self.http.request("GET", spec.path, params=self._with_size(spec, params, 1))

    # -- reading ----------------------------------------------------------------------------
    def _with_size(self, spec: StreamSpec, params: dict[str, Any], size: int) -> dict[str, Any]:
        pagination = spec.pagination
        size_param = getattr(pagination, "size_param", None)
        if size_param and size_param not in params and not isinstance(pagination, PagePagination | OffsetPagination):
            params[size_param] = size  # the paginators of these styles do not send a size themselves
        return params

    def _list_params(self, spec: StreamSpec, mapper: Mapper, since: datetime | None) -> dict[str, Any]:
        params: dict[str, Any] = {k: _param(v) for k, v in spec.params.items()}
        incremental = spec.incremental
        if incremental is not None:
            params.update(incremental.sort_params)
            # Some APIs answer an empty list, not a complete one, when no search is sent: a full
            # read then asks from first_cursor.
            start = since if since is not None else incremental.first_cursor
            if start is not None:
                params.update(incremental.params(ensure_utc(start), mapper.zone))
        return params

    async def _walk(
        self, stream: str, path: str, records_path: str, paginator: Paginator | None, params: dict[str, Any]
    ) -> AsyncGenerator[tuple[list[Any], bool, str], None]:
        """Native records page by page, with whether another page follows (known before
        asking) and the request that fetched them (for messages).

        :func:`ferryman.http.pagination.paginate` puts the read loop's page guard on every
        page: an API that ignores its paging parameters answers the same page again, and the
        walk stops with :class:`~ferryman.errors.PagingError` naming the URL instead of paging
        for ever; so does a paginator that asks for a page it already fetched, and a walk
        past the page cap.
        """
        key_path = self._mappers[stream].fields["key"].native
        async for page in paginate(
            self.http,
            path,
            paginator or _ONE_REQUEST,
            records_path=records_path,
            params=params,
            stream=stream,
            signature=lambda natives: _page_signature(natives, key_path),
        ):
            yield page.records, page.more, f"GET {redact_url(str(page.response.url))}"

    def _map(self, spec: StreamSpec, mapper: Mapper, natives: list[Any]) -> tuple[list[Record], list[Reject]]:
        page = mapper.page(natives)
        if page is not None:
            by_key = {r.key: r for r in page}  # a repeated id: the later copy wins
            return list(by_key.values()) if len(by_key) < len(page) else page, []
        records: dict[str, Record] = {}
        rejects: list[Reject] = []
        for native in natives:
            result = mapper.record(native, spec.record)
            if isinstance(result, Reject):
                rejects.append(result)
            else:
                records[result.key] = result  # a repeated id: the later copy wins
        return list(records.values()), rejects

    async def read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        spec, mapper = self._spec(stream)
        if spec.incremental is not None and spec.incremental.sorted:
            async for page in self._keyset_read(stream, spec, mapper, since, page_size):
                yield page
            return
        async for page in self._whole_read(stream, spec, mapper, since, page_size):
            yield page

    async def _keyset_read(
        self, stream: str, spec: StreamSpec, mapper: Mapper, since: Cursor | None, page_size: int
    ) -> AsyncIterator[Page]:
        """A ``sorted: true`` stream through the one read loop, which verifies the order the
        API claims: records come in the server's order, never sorted here first, so an API
        that ignores the sort stops the run with OrderViolation instead of losing records."""
        assert spec.incremental is not None
        size = spec.pagination.page_size(page_size)
        walk: AsyncGenerator[tuple[list[Any], bool, str], None] | None = None

        async def fetch(updated_since: datetime | None, page_number: int) -> Fetched:
            nonlocal walk
            if page_number == 1 or walk is None:
                if walk is not None:
                    await walk.aclose()
                params = self._with_size(spec, self._list_params(spec, mapper, updated_since), size)
                walk = self._walk(stream, spec.path, spec.records_path, _paginator(spec.pagination, size), params)
            records: list[Record] = []
            rejects: list[Reject] = []
            more = False
            where = ""
            async for natives, more, fetched_by in walk:
                where = fetched_by
                got, bad = self._map(spec, mapper, natives)
                records += got
                rejects += bad
                if records or not more:
                    break  # a page of nothing but rejects must not end the read
            return Fetched(records, rejects, more, where=where)

        try:
            async for page in keyset_read(
                fetch, since, system=self.name, stream=stream, granularity=spec.incremental.granularity
            ):
                # The order was verified on the server's answer; ties within a second are put
                # in natural key order for the engine's compound cursor.
                page.records.sort(key=record_order)
                yield page
        finally:
            if walk is not None:
                await walk.aclose()

    async def _whole_read(
        self, stream: str, spec: StreamSpec, mapper: Mapper, since: Cursor | None, page_size: int
    ) -> AsyncIterator[Page]:
        """A stream whose order is not promised: the whole (filtered) list is read, the newest
        copy of each record kept, then filtered, ordered and chunked by the read loop."""
        size = spec.pagination.page_size(page_size)
        granularity = spec.incremental.granularity if spec.incremental is not None else SECOND
        params = self._with_size(spec, self._list_params(spec, mapper, filter_floor(since, granularity)), size)
        newest: dict[str, Record] = {}
        rejects: list[Reject] = []
        paginator = _paginator(spec.pagination, size)
        async for natives, _, _ in self._walk(stream, spec.path, spec.records_path, paginator, params):
            records, bad = self._map(spec, mapper, natives)
            for record in records:
                held = newest.get(record.key)
                if held is None or record.updated_at >= held.updated_at:
                    newest[record.key] = record
            rejects += [r for r in bad if not _older(r, mapper, since)]
        for page in whole_list_pages(list(newest.values()), rejects, since, page_size):
            yield page

    async def get(self, stream: str, key: str) -> Record | None:
        """The record ``key`` as the item endpoint answers it: ``None`` when it is gone
        (404/410), a record with ``deleted=True`` when the item says so (``deleted`` field or
        ``deleted_when``)."""
        spec, mapper = self._spec(stream)
        if spec.item is None:
            raise NotImplementedError(f"{stream} has no item endpoint")
        response, body = await self.http.request_decoded("GET", _fill_id(spec.item.path, key), allow_status=(404, 410))
        if response.status_code in (404, 410):
            return None
        native = extract(body, spec.item.record_path)
        result = mapper.record(native, spec.record)
        if isinstance(result, Reject):
            raise MalformedResponseError(
                f"GET {spec.item.path}: the API answered with a record that does not map: {result.reason}",
                system=self.name,
            )
        return result

    async def find(self, stream: str, record: Record) -> Record | None:
        spec, mapper = self._spec(stream)
        natural = spec.key_field
        if natural is None:
            return await super().find(stream, record)
        wanted = getattr(record, natural)
        if wanted is None:
            return None
        search = spec.find or FindSpec()
        values = {name: getattr(record, name) for name in type(record).model_fields}
        params: dict[str, Any] = {k: _param(v) for k, v in spec.params.items()}
        params.update({name: _fill(template, values) for name, template in search.params.items()})
        size = spec.pagination.page_size(100)
        params = self._with_size(spec, params, size)
        walk = self._walk(
            stream,
            search.path or spec.path,
            spec.records_path if search.records_path is None else search.records_path,
            _paginator(spec.pagination, size),
            params,
        )
        try:
            async for natives, _, _ in walk:
                for native in natives:
                    found = mapper.record(native, spec.record)
                    if isinstance(found, Record) and not found.deleted and getattr(found, natural) == wanted:
                        return found
        finally:
            await walk.aclose()
        return None

    # -- writing ----------------------------------------------------------------------------
    def _body(self, endpoint: WriteEndpoint, fields: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if endpoint.wrap:
            _set_path(body, endpoint.wrap, fields)
        else:
            body = fields
        return {"json": body} if endpoint.body == "json" else {"data": body}

    def _verify(self, spec: StreamSpec, response: httpx.Response, what: str) -> None:
        """Raise RecordRejected with the API's words when a 2xx write fails the stream's ``success``."""
        if spec.success is None:
            return
        reason = spec.success.failure(response)
        if reason is not None:
            raise RecordRejected(f"{what}: {reason}", system=self.name, status=response.status_code)

    async def create(self, stream: str, record: Record) -> Record:
        spec, mapper = self._spec(stream)
        endpoint = spec.create
        if endpoint is None:
            return await super().create(stream, record)
        method = endpoint.method or "POST"
        response, body = await self.http.request_decoded(
            method, endpoint.path, decode=_write_answer, **self._body(endpoint, mapper.to_native(record))
        )
        self._verify(spec, response, f"{method} {endpoint.path}")
        location = _id_from_location(response.headers.get("location"))
        if isinstance(body, _Unreadable):
            # The create happened (2xx); with the id in Location it is read back, else the
            # engine reconciles it by natural key instead of creating it again.
            if location and spec.item is not None:
                return await self._as_stored(stream, spec, mapper, record, location, None)
            raise MalformedResponseError(
                f"{method} {endpoint.path} answered {response.status_code} with a body that cannot be read "
                f"({body.reason}): the {spec.record} was probably created, but its id is unknown",
                system=self.name,
            )
        native = extract(body, endpoint.record_path) if body is not None else None
        if endpoint.id_from == "location":
            key = location
        else:
            found = extract(body, endpoint.id_path) if body is not None else None
            key = None if found is None or isinstance(found, dict | list) else str(found)
        if not key:
            where = "Location header" if endpoint.id_from == "location" else f"body at {endpoint.id_path!r}"
            raise MalformedResponseError(
                f"created a {spec.record} but found no id in the {where} of the response", system=self.name
            )
        return await self._as_stored(stream, spec, mapper, record, key, native)

    async def update(self, stream: str, key: str, record: Record) -> Record:
        spec, mapper = self._spec(stream)
        endpoint = spec.update
        if endpoint is None:
            return await super().update(stream, key, record)
        method = endpoint.method or "PUT"
        response, body = await self.http.request_decoded(
            method, _fill_id(endpoint.path, key), decode=_write_answer, **self._body(endpoint, mapper.to_native(record))
        )
        self._verify(spec, response, f"{method} {endpoint.path}")
        native = extract(body, endpoint.record_path) if body is not None and not isinstance(body, _Unreadable) else None
        return await self._as_stored(stream, spec, mapper, record, key, native)

    async def delete(self, stream: str, key: str) -> None:
        spec, _ = self._spec(stream)
        if spec.delete is None:
            return await super().delete(stream, key)
        await self.http.request(
            spec.delete.method, _fill_id(spec.delete.path, key), allow_status=(404, 410), idempotent=True
        )

    async def _as_stored(
        self, stream: str, spec: StreamSpec, mapper: Mapper, record: Record, key: str, native: Any
    ) -> Record:
        """The record as the API now holds it, after a 2xx write (never a rejection).

        From the response when its body maps to this record; otherwise (a stub such as
        ``{"id": "12", "_url": ..., "type": "ticket"}``, ``[]``, only an id) read back
        through ``item``, ids compared as text (``12`` and ``"12"`` are one record); without
        an item endpoint, or when the read-back fails, the record as sent under its new key.
        """
        if isinstance(native, Mapping) and mapper.native_id(native) == key:
            result = mapper.record(native, spec.record)
            if isinstance(result, Record):
                return result
        if spec.item is not None:
            try:
                stored = await self.get(stream, key)
            except MalformedResponseError:
                stored = None
            if stored is not None and stored.key == key:
                return stored
        return record.model_copy(update={"key": key, "updated_at": utcnow()})


# -- helpers ------------------------------------------------------------------------------------------


def _param(value: Any) -> Any:
    return ("true" if value else "false") if isinstance(value, bool) else value


def _fill(template: str, values: Mapping[str, Any]) -> str:
    def one(match: re.Match[str]) -> str:
        value = values.get(match[1])
        if isinstance(value, datetime):
            return format_utc(value)
        return "" if value is None else str(value)

    return _PLACEHOLDER.sub(one, template)


def _fill_id(path: str, key: str) -> str:
    return path.replace("{id}", quote(key, safe=""))


def _id_from_location(location: str | None) -> str | None:
    if not location:
        return None
    segments = [s for s in urlsplit(location).path.split("/") if s]
    return segments[-1] if segments else None


def _older(reject: Reject, mapper: Mapper, since: Cursor | None) -> bool:
    """A reject certainly older than the cursor was already reported when it was first read."""
    if since is None or not isinstance(reject.raw, Mapping):
        return False
    spec = mapper.fields["updated_at"]
    try:
        return is_older(parse_time(extract(reject.raw, spec.native), spec.format, mapper.zone), since)
    except ValueError:
        return False


class _Unreadable:
    """A 2xx answer to a write whose body is not JSON (garbled, cut short): the write happened."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _write_answer(response: httpx.Response) -> Any:
    """The JSON body of a write's answer, ``None`` when empty, :class:`_Unreadable` when not JSON."""
    if not response.content.strip():
        return None
    try:
        return loads_json(response)
    except MalformedResponseError as exc:
        return _Unreadable(str(exc))


def _page_signature(natives: list[Any], key_path: str) -> tuple[Any, ...]:
    """What identifies a native page for the repeat guard: its ids in order (``()`` when empty)."""
    return tuple(extract(n, key_path) if isinstance(n, Mapping) else repr(n) for n in natives)
