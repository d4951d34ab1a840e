"""``sandbox generic``: a plain paginated JSON API for the generic ``rest`` connector.

It exercises every style the ``rest`` connector must speak, one request at a time, so
each YAML variant can be tested against the same data.

Streams and routes (``{stream}`` is ``tickets``, ``contacts`` or ``invoices``)::

    GET    /api                          what is here (streams, pagination styles, auth styles)
    GET    /api/{stream}                 list; ?paginate=page|offset|cursor|next|link (default page)
    GET    /api/{style}/{stream}         list with the style fixed by the path (/api/cursor/tickets)
    POST   /api/{stream}                 create from a JSON or form-encoded body -> 201 + Location
    GET    /api/{stream}/{id}            one record -> 200, or 404
    PUT    /api/{stream}/{id}            full replacement (required fields needed, others reset)
    PATCH  /api/{stream}/{id}            change the given fields
    DELETE /api/{stream}/{id}            soft delete -> 204; then 404, listed only with include_deleted

Pagination styles (``limit``/``per_page`` 1..1000, default 50; records sit under
``"data"``, or the ``envelope`` key given to the constructor)::

    page    ?page=N&per_page=M     {"data": [...], "page", "per_page", "total", "total_pages"}
    offset  ?offset=N&limit=M      {"data": [...], "offset", "limit", "total"}
    cursor  ?cursor=C&limit=M      {"data": [...], "next_cursor": "C2" | null}
    next    ?cursor=C&limit=M      {"data": [...], "next": "http://.../api/next/...?cursor=C2..." | null}
    link    ?page=N&per_page=M     {"data": [...]} + Link: <...>; rel="next", ...; X-Total-Count

The cursor is an opaque compound ``(updated_at, id)`` position, so a cursor walk neither
loses nor repeats records that share a timestamp across a page boundary. Next and Link URLs
never carry ``api_key``: send credentials with every request.

Search: any field of a stream as a query parameter (``?email=ada@example.com``,
``?number=INV-000012``, ``?customer_id=7``) narrows a list to the records whose field equals
it exactly, in every pagination style.

With ``require_search=True`` a list with no ``updated_since``, ``q`` or field filter answers
an empty list (not an error), as a real helpdesk API did.

Incremental reads: ``updated_since=`` takes ISO 8601 with ``Z`` or an offset,
``YYYY-MM-DD HH:MM:SS`` (UTC), a date, or epoch seconds; or the query-language form
``q=updated >= '<timestamp>'`` (also ``>``, ``updated_at``, double quotes). Results are in
``(updated_at, id)`` order; timestamps are ISO ``Z`` with whole seconds, and comparisons
happen at whole seconds, as in many real APIs.

Auth (all accepted by default; the constructor's ``auth=`` narrows it): ``X-API-Key``
header, ``api_key`` query parameter, HTTP Basic with the key as user (any password), or
``Authorization: Bearer``. The default key is ``sandbox-key``.

Records::

    tickets   id, subject*, description, status (open|pending|closed), priority
              (low|normal|high|urgent), requester_email, created_at, updated_at
    contacts  id, email* (unique), first_name, last_name, phone, company, created_at, updated_at
    invoices  id, number, customer_id* (a contact), amount* (decimal string), currency,
              status (draft|open|partial|paid|void), issued_on, due_on, created_at, updated_at

(* required on create and PUT). ``id``, ``created_at`` and ``updated_at`` in a body are
ignored; any other unknown field, a bad value or a missing required one answers 422 with
``{"error": "validation_failed", "message": ..., "fields": {name: problem}}``.

Hostile modes (a deliberate test switch, ``set_hostile`` or ``POST /__sandbox/hostile``; see
``ferryman.sandbox.HOSTILE_MODES``), each after a behaviour seen in real APIs
(shared/seeds/README.md, "Verified against the real systems")::

    ignore_paging  page/offset/cursor/size parameters are not read: every list answer is the
                   whole filtered list, with the metadata of a first page of the default size
    ignore_sort    lists come in id (creation) order instead of (updated_at, id)
    stub_create    a create answers 201 {"id": "12", "_url": ..., "type": "ticket"} (+ Location)
    error_in_200   an update answers 200 ["Ticket 2: Status 'closed' isn't a valid status for
                   this ticket."] and changes nothing
    hide_deleted   deleted records vanish from every list (include_deleted too); GET of the item
                   answers 200 with the record, tickets with status "deleted", others with
                   "deleted": true

Precomputed pages (``precompute=True``, for benchmarks): every row is encoded to JSON once,
at start-up, and a list answer is those bytes joined, so serving a 1000-record page costs
a join rather than a render. The answer is the same JSON as without it; a row written
through the API is encoded again when it is next listed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import re
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

import orjson
from aiohttp import web

from ferryman.sandbox import (
    ALL_HOSTILE,
    BodyError,
    DuplicateValue,
    Row,
    Simulator,
    Table,
    basic_credentials,
    bearer_token,
    json_response,
    read_fields,
)
from ferryman.timeutil import from_epoch, parse_datetime

__all__ = ["GenericSimulator"]

STREAMS = ("tickets", "contacts", "invoices")
PAGINATION_STYLES = ("page", "offset", "cursor", "next", "link")
AUTH_STYLES = ("header", "query", "basic", "bearer")

_STREAM_RE = "|".join(STREAMS)
_STYLE_RE = "|".join(PAGINATION_STYLES)
_Q_UPDATED = re.compile(r"""^\s*updated(?:_at)?\s*(>=|>)\s*(['"])(.*?)\2\s*$""", re.IGNORECASE)
_SPACE_FOR_PLUS = re.compile(r"^(.*T\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d(?::?\d\d)?)$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CENT = Decimal("0.01")
_READ_ONLY = frozenset({"id", "created_at", "updated_at"})


class Invalid(Exception):
    """A request the API refuses with 422; ``fields`` maps names to problems."""

    def __init__(self, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


# -- field validation ------------------------------------------------------------------------
Cleaner = Callable[[Any], Any]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError("must be a string")
    text = str(value).strip()
    return text or None


def _choice(*allowed: str) -> Cleaner:
    def clean(value: Any) -> str | None:
        text = _text(value)
        if text is not None and text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text

    return clean


def _email(value: Any) -> str | None:
    text = _text(value)
    if text is not None and not _EMAIL.match(text):
        raise ValueError("is not an email address")
    return text


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("must be an integer") from None
    if isinstance(value, float) and value != number:
        raise ValueError("must be an integer")
    return number


def _money(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be a decimal amount")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError("must be a decimal amount") from None
    if not amount.is_finite() or amount != amount.quantize(_CENT):
        raise ValueError("must be a finite amount with at most two decimals")
    return amount.quantize(_CENT)


def _currency(value: Any) -> str | None:
    text = _text(value)
    if text is not None and not re.fullmatch(r"[A-Z]{3}", text):
        raise ValueError("must be a three-letter ISO 4217 code such as USD")
    return text


def _date(value: Any) -> date | None:
    text = _text(value)
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError("must be a date YYYY-MM-DD") from None


# name -> (cleaner, required, default on create/PUT)
SCHEMAS: dict[str, dict[str, tuple[Cleaner, bool, Any]]] = {
    "tickets": {
        "subject": (_text, True, None),
        "description": (_text, False, None),
        "status": (_choice("open", "pending", "closed"), False, "open"),
        "priority": (_choice("low", "normal", "high", "urgent"), False, "normal"),
        "requester_email": (_email, False, None),
    },
    "contacts": {
        "email": (_email, True, None),
        "first_name": (_text, False, None),
        "last_name": (_text, False, None),
        "phone": (_text, False, None),
        "company": (_text, False, None),
    },
    "invoices": {
        "number": (_text, False, None),
        "customer_id": (_int, True, None),
        "amount": (_money, True, None),
        "currency": (_currency, False, "USD"),
        "status": (_choice("draft", "open", "partial", "paid", "void"), False, "draft"),
        "issued_on": (_date, False, None),
        "due_on": (_date, False, None),
    },
}


# Rendered rows keep datetimes, dates and Decimals as they are: ``json_response`` writes them
# (ISO ``Z`` with whole seconds, like many real APIs: the reason clients need (updated_at, id)
# cursors), which is several times faster than formatting them here.
def _render_ticket(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "subject": row["subject"],
        "description": row["description"],
        "status": row["status"],
        "priority": row["priority"],
        "requester_email": row["requester_email"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _render_contact(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "email": row["email"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "phone": row["phone"],
        "company": row["company"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _render_invoice(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "number": row["number"],
        "customer_id": row["customer_id"],
        "amount": row["amount"],
        "currency": row["currency"],
        "status": row["status"],
        "issued_on": row["issued_on"],
        "due_on": row["due_on"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


RENDER: dict[str, Callable[[Row], dict[str, Any]]] = {
    "tickets": _render_ticket,
    "contacts": _render_contact,
    "invoices": _render_invoice,
}


def respond(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer with this API's whole-second ``Z`` timestamps."""
    return json_response(data, status=status, headers=headers, whole_seconds=True)


def parse_since(text: str) -> datetime:
    """An ``updated_since`` value in any accepted form, as aware UTC."""
    raw = text.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", raw):
        return from_epoch(raw)
    # "+02:00" arrives as " 02:00" when a client forgot to percent-encode the plus.
    match = _SPACE_FOR_PLUS.match(raw)
    if match:
        raw = f"{match[1]}+{match[2]}"
    return parse_datetime(raw, assume_tz=UTC)


def encode_cursor(position: tuple[datetime, int]) -> str:
    """An opaque cursor for "strictly after this (updated_at, id)"."""
    stamp, id = position
    raw = f"{int(stamp.timestamp())}:{id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The position a cursor from :func:`encode_cursor` stands for; ``ValueError`` if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        seconds, _, id = raw.partition(":")
        return from_epoch(int(seconds)), int(id)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError, OSError):
        raise ValueError(f"not a cursor from this API: {cursor!r}") from None


def _refusal(stream: str, id: int, fields: dict[str, Any]) -> str:
    """The words of an update refused inside HTTP 200 (``error_in_200``), after the real
    helpdesk's ``["Ticket 2: Status 'closed' isn't a valid status for this ticket."]``."""
    noun = stream[:-1]
    if fields.get("status"):
        return f"{noun.title()} {id}: Status '{fields['status']}' isn't a valid status for this {noun}."
    return f"{noun.title()} {id}: this change isn't a valid change for this {noun}."


def _as_deleted(stream: str, item: dict[str, Any]) -> dict[str, Any]:
    """A deleted record as GET of the item shows it under ``hide_deleted``: tickets with a
    deleted status (as the real helpdesk did), other records flagged ``deleted: true``."""
    if stream == "tickets":
        return {**item, "status": "deleted"}
    return {**item, "deleted": True}


def _decimal(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


class _Matching:
    """A table seen through exact-match search filters (``?email=ada@example.com``)."""

    def __init__(self, table: Table, filters: dict[str, str]) -> None:
        self.table = table
        self.filters = filters

    def _rows(self, since: datetime | None, after: tuple[datetime, int] | None, include_deleted: bool) -> list[Row]:
        rows = self.table.query(since, after=after, include_deleted=include_deleted)
        return [r for r in rows if all(_as_text(r.get(k)) == v for k, v in self.filters.items())]

    def query(
        self,
        since: datetime | None = None,
        *,
        after: tuple[datetime, int] | None = None,
        offset: int = 0,
        limit: int | None = None,
        include_deleted: bool = False,
    ) -> list[Row]:
        rows = self._rows(since, after, include_deleted)[max(0, offset) :]
        return rows if limit is None else rows[:limit]

    def count(self, since: datetime | None = None, *, include_deleted: bool = False) -> int:
        return len(self._rows(since, None, include_deleted))

    def position(self, row: Row) -> tuple[datetime, int]:
        return self.table.position(row)


class GenericSimulator(Simulator):
    """A plain paginated JSON API with tickets, contacts and invoices (see the module docs).

    ``auth`` lists the accepted styles (``header``, ``query``, ``basic``, ``bearer``);
    ``envelope`` is the body key records sit under; ``page_size`` and ``max_page_size``
    bound the page sizes clients may ask for; ``precompute`` encodes every row once at
    start-up so that list pages are served from bytes (see the module docs);
    ``require_search`` makes a list without ``updated_since``, ``q`` or a field filter
    answer empty, as a real helpdesk's search did (shared/seeds/README.md).
    """

    name: ClassVar[str] = "generic"
    hostile_supported: ClassVar[frozenset[str]] = ALL_HOSTILE
    default_credentials: ClassVar[dict[str, str]] = {"api_key": "sandbox-key"}
    default_port: ClassVar[int] = 8800

    def __init__(
        self,
        *,
        auth: Iterable[str] = AUTH_STYLES,
        envelope: str = "data",
        page_size: int = 50,
        max_page_size: int = 1000,
        precompute: bool = False,
        require_search: bool = False,
        **options: Any,
    ) -> None:
        self.auth = tuple(auth)
        unknown = set(self.auth) - set(AUTH_STYLES)
        if unknown or not self.auth:
            raise ValueError(f"auth styles must be among {', '.join(AUTH_STYLES)}; got {', '.join(self.auth)}")
        if not envelope:
            raise ValueError("envelope must be a non-empty key")
        if not 1 <= page_size <= max_page_size:
            raise ValueError("page_size must be between 1 and max_page_size")
        self.envelope = envelope
        self.page_size = page_size
        self.max_page_size = max_page_size
        self.precompute = precompute
        self.require_search = require_search
        # stream -> id -> (the updated_at it was encoded at, the row's JSON)
        self._encoded: dict[str, dict[int, tuple[datetime, bytes]]] = {}
        super().__init__(**options)
        if precompute:
            for stream in STREAMS:
                rows = self.table(stream).query(include_deleted=True)
                self._encoded[stream] = {row["id"]: self._encode_row(stream, row) for row in rows}

    # -- data ---------------------------------------------------------------------------------
    def populate(self) -> None:
        """Generate ``records`` contacts, tickets (by those contacts) and invoices (to them)."""
        second = timedelta(seconds=1)
        contacts = self.add_table("contacts", resolution=second, unique=("email",))
        tickets = self.add_table("tickets", resolution=second)
        invoices = self.add_table("invoices", resolution=second)
        factory = self.factory
        people = factory.people(self.records)
        contacts.load(people)
        emails = [p["email"] for p in people[:5000]]
        ids = [p["id"] for p in people[:5000]]
        tickets.load(factory.tickets(self.records, emails))
        rows = factory.invoices(self.records, ids)
        for row in rows:
            row["customer_id"] = row.pop("customer")
        invoices.load(rows)

    # -- auth -----------------------------------------------------------------------------------
    def authenticate(self, request: web.Request) -> str | None:
        """The API key, when it came by one of the accepted styles."""
        key = self.credentials["api_key"]
        offered: list[str | None] = []
        if "header" in self.auth:
            offered.append(request.headers.get("X-API-Key"))
        if "query" in self.auth:
            offered.append(request.query.get("api_key"))
        if "basic" in self.auth:
            basic = basic_credentials(request)
            offered.append(basic[0] if basic else None)
        if "bearer" in self.auth:
            offered.append(bearer_token(request))
        for value in offered:
            if value is not None and hmac.compare_digest(value.encode(), key.encode()):
                return key
        return None

    def unauthorized(self, request: web.Request) -> web.StreamResponse:
        """401 with a JSON body and a ``WWW-Authenticate`` naming the accepted schemes."""
        schemes = [s for s, style in (('Basic realm="sandbox"', "basic"), ("Bearer", "bearer")) if style in self.auth]
        headers = {"WWW-Authenticate": ", ".join(schemes)} if schemes else None
        accepted = ", ".join(self.auth)
        return respond(
            {"error": "unauthorized", "message": f"missing or invalid API key (accepted: {accepted})"},
            status=401,
            headers=headers,
        )

    # -- routes ---------------------------------------------------------------------------------
    def routes(self, router: web.UrlDispatcher) -> None:
        """``/api/...`` as listed in the module docstring."""
        router.add_get("/api", self.index)
        router.add_get(f"/api/{{style:{_STYLE_RE}}}/{{stream:{_STREAM_RE}}}", self.list_records)
        router.add_get(f"/api/{{stream:{_STREAM_RE}}}", self.list_records)
        router.add_post(f"/api/{{stream:{_STREAM_RE}}}", self.create_record)
        item = f"/api/{{stream:{_STREAM_RE}}}/{{id}}"
        router.add_get(item, self.get_record)
        router.add_put(item, self.put_record)
        router.add_patch(item, self.patch_record)
        router.add_delete(item, self.delete_record)

    async def index(self, request: web.Request) -> web.Response:
        """What this API offers."""
        return respond(
            {
                "streams": list(STREAMS),
                "pagination": list(PAGINATION_STYLES),
                "auth": list(self.auth),
                "envelope": self.envelope,
                "max_page_size": self.max_page_size,
            }
        )

    async def list_records(self, request: web.Request) -> web.StreamResponse:
        """A page of a stream, in (updated_at, id) order, in the requested pagination style."""
        stream = request.match_info["stream"]
        query = request.query
        try:
            style = request.match_info.get("style") or query.get("paginate", "page")
            if style not in PAGINATION_STYLES:
                raise Invalid(f"paginate must be one of {', '.join(PAGINATION_STYLES)}", {"paginate": style})
            since = self._since(query.get("updated_since"), query.get("q"))
            include_deleted = query.get("include_deleted", "").lower() in ("1", "true", "yes")
            if self.is_hostile("hide_deleted"):
                include_deleted = False  # deleted records vanish from every list, asked or not
            table: Table | _Matching = self.table(stream)
            filters = {name: value for name, value in query.items() if name in SCHEMAS[stream]}
            if filters:
                table = _Matching(self.table(stream), filters)
            elif self.require_search and since is None:
                table = _Matching(self.table(stream), {"id": ""})  # no id is "": an empty answer, not an error
            render = RENDER[stream]
            if self.is_hostile("ignore_paging") or self.is_hostile("ignore_sort"):
                return self._hostile_list(request, stream, style, table.query(since, include_deleted=include_deleted))
            if style in ("page", "link"):
                page = self._int_param(query, "page", 1, 1, None)
                per_page = self._int_param(query, "per_page", self.page_size, 1, self.max_page_size)
                total = table.count(since, include_deleted=include_deleted)
                rows = table.query(since, offset=(page - 1) * per_page, limit=per_page, include_deleted=include_deleted)
                pages = math.ceil(total / per_page)
                if style == "page":
                    return self._page(
                        stream, rows, render, {"page": page, "per_page": per_page, "total": total, "total_pages": pages}
                    )
                headers = {"X-Total-Count": str(total)}
                links = self._links(request, page, pages, per_page)
                if links:
                    headers["Link"] = links
                return self._page(stream, rows, render, {}, headers=headers)
            if style == "offset":
                offset = self._int_param(query, "offset", 0, 0, None)
                limit = self._int_param(query, "limit", self.page_size, 1, self.max_page_size)
                total = table.count(since, include_deleted=include_deleted)
                rows = table.query(since, offset=offset, limit=limit, include_deleted=include_deleted)
                return self._page(stream, rows, render, {"offset": offset, "limit": limit, "total": total})
            limit = self._int_param(query, "limit", self.page_size, 1, self.max_page_size)
            after = None
            if query.get("cursor"):
                try:
                    after = decode_cursor(query["cursor"])
                except ValueError as exc:
                    raise Invalid(str(exc), {"cursor": "unknown cursor"}) from None
            rows = table.query(since, after=after, limit=limit + 1, include_deleted=include_deleted)
            next_cursor = encode_cursor(table.position(rows[limit - 1])) if len(rows) > limit else None
            rows = rows[:limit]
            if style == "cursor":
                return self._page(stream, rows, render, {"next_cursor": next_cursor})
            next_url = None
            if next_cursor is not None:
                params = {k: v for k, v in query.items() if k not in ("api_key", "cursor", "limit")}
                params.update(cursor=next_cursor, limit=str(limit))
                next_url = str(request.url.with_query(params))
            return self._page(stream, rows, render, {"next": next_url})
        except Invalid as exc:
            return self._invalid(exc)

    async def get_record(self, request: web.Request) -> web.Response:
        """One record, or 404."""
        stream = request.match_info["stream"]
        if self.is_hostile("hide_deleted"):
            row = self._find(stream, request.match_info["id"], include_deleted=True)
            if row is not None and row.get("deleted"):
                return respond(_as_deleted(stream, RENDER[stream](row)))
        row = self._find(stream, request.match_info["id"])
        if row is None:
            return self._not_found(stream, request.match_info["id"])
        return respond(RENDER[stream](row))

    async def create_record(self, request: web.Request) -> web.Response:
        """Create from a JSON or form body; 201 with the record and its Location."""
        stream = request.match_info["stream"]
        try:
            fields = self._clean(stream, await self._fields(request), partial=False)
            table = self.table(stream)
            if stream == "invoices":
                fields["number"] = fields["number"] or f"INV-{table.next_id:06d}"
                fields["issued_on"] = fields["issued_on"] or datetime.now(UTC).date()
            row = self._write(stream, lambda: table.insert(fields))
        except Invalid as exc:
            return self._invalid(exc)
        location = f"/api/{stream}/{row['id']}"
        if self.is_hostile("stub_create"):
            # The shape a real helpdesk answered with: the id as a string, a URL, the type.
            stub = {
                "id": str(row["id"]),
                "_url": str(request.url.with_path(location).with_query(None)),
                "type": stream[:-1],
            }
            return respond(stub, status=201, headers={"Location": location})
        return respond(RENDER[stream](row), status=201, headers={"Location": location})

    async def put_record(self, request: web.Request) -> web.Response:
        """Replace a record entirely."""
        return await self._change(request, partial=False)

    async def patch_record(self, request: web.Request) -> web.Response:
        """Change the given fields of a record."""
        return await self._change(request, partial=True)

    async def delete_record(self, request: web.Request) -> web.Response:
        """Soft-delete a record: 204, then 404 on reads."""
        stream = request.match_info["stream"]
        row = self._find(stream, request.match_info["id"])
        if row is None:
            return self._not_found(stream, request.match_info["id"])
        self.table(stream).delete(row["id"], soft=True)
        return web.Response(status=204)

    # -- internals ----------------------------------------------------------------------------
    async def _change(self, request: web.Request, *, partial: bool) -> web.Response:
        stream = request.match_info["stream"]
        row = self._find(stream, request.match_info["id"])
        if row is None:
            return self._not_found(stream, request.match_info["id"])
        table = self.table(stream)
        try:
            fields = self._clean(stream, await self._fields(request), partial=partial)
            if self.is_hostile("error_in_200"):
                return respond([_refusal(stream, row["id"], fields)])  # HTTP 200, nothing changed
            if stream == "invoices" and not partial:
                fields["number"] = fields["number"] or row["number"]
                fields["issued_on"] = fields["issued_on"] or row["issued_on"]
            id = row["id"]
            write = table.update if partial else table.replace
            row = self._write(stream, lambda: write(id, fields))
        except Invalid as exc:
            return self._invalid(exc)
        return respond(RENDER[stream](row))

    async def _fields(self, request: web.Request) -> dict[str, Any]:
        try:
            return await read_fields(request)
        except BodyError as exc:
            raise Invalid(str(exc)) from None

    def _clean(self, stream: str, body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
        schema = SCHEMAS[stream]
        problems: dict[str, str] = {}
        fields: dict[str, Any] = {}
        for name in body:
            if name not in schema and name not in _READ_ONLY:
                problems[name] = "unknown field"
        for name, (clean, required, default) in schema.items():
            if name not in body:
                if partial:
                    continue
                value = default
            else:
                try:
                    value = clean(body[name])
                except ValueError as exc:
                    problems[name] = str(exc)
                    continue
            if value is None and required:
                problems[name] = "is required"
            fields[name] = value
        customer = fields.get("customer_id") if stream == "invoices" else None
        if customer is not None and customer not in self.table("contacts"):
            problems["customer_id"] = f"no contact with id {customer}"
        if problems:
            summary = "; ".join(f"{name} {problem}" for name, problem in problems.items())
            raise Invalid(f"invalid {stream[:-1]}: {summary}", problems)
        return fields

    def _write(self, stream: str, write: Callable[[], Row]) -> Row:
        try:
            return write()
        except DuplicateValue as exc:
            raise Invalid(
                f"{exc.field} {exc.value!r} is already taken by {stream[:-1]} {exc.holder}",
                {exc.field: f"already taken by {stream[:-1]} {exc.holder}"},
            ) from None

    def _find(self, stream: str, id_text: str, *, include_deleted: bool = False) -> Row | None:
        if not id_text.isdigit():
            return None
        return self.table(stream).get(int(id_text), include_deleted=include_deleted)

    def _hostile_list(self, request: web.Request, stream: str, style: str, rows: list[Row]) -> web.Response:
        """A list answer under ``ignore_sort`` and/or ``ignore_paging`` (a deliberate test switch).

        ``ignore_sort``: rows come in id (creation) order, whatever was asked, the way an API
        that sorts only when its sort parameters are sent answers. ``ignore_paging``: page,
        offset, cursor and size parameters are not read at all: every answer is the whole
        (filtered) list, with the paging metadata of a first page of the default size.
        """
        query = request.query
        if self.is_hostile("ignore_sort"):
            rows = sorted(rows, key=lambda row: row["id"])
        total = len(rows)
        render = RENDER[stream]
        whole = self.is_hostile("ignore_paging")
        if style in ("page", "link"):
            page = 1 if whole else self._int_param(query, "page", 1, 1, None)
            size = (
                self.page_size if whole else self._int_param(query, "per_page", self.page_size, 1, self.max_page_size)
            )
            offset = (page - 1) * size
        elif style == "offset":
            offset = 0 if whole else self._int_param(query, "offset", 0, 0, None)
            size = self.page_size if whole else self._int_param(query, "limit", self.page_size, 1, self.max_page_size)
        else:
            size = self.page_size if whole else self._int_param(query, "limit", self.page_size, 1, self.max_page_size)
            offset = 0
            if query.get("cursor") and not whole:
                try:
                    offset = decode_cursor(query["cursor"])[1]  # in this order a cursor is an offset
                except ValueError as exc:
                    raise Invalid(str(exc), {"cursor": "unknown cursor"}) from None
        data = rows if whole else rows[offset : offset + size]
        if style == "page":
            pages = math.ceil(total / size)
            return self._page(
                stream,
                data,
                render,
                {"page": offset // size + 1, "per_page": size, "total": total, "total_pages": pages},
            )
        if style == "link":
            headers = {
                "X-Total-Count": str(total),
                "Link": self._links(request, offset // size + 1, math.ceil(total / size), size),
            }
            return self._page(stream, data, render, {}, headers=headers)
        if style == "offset":
            return self._page(stream, data, render, {"offset": offset, "limit": size, "total": total})
        following = offset + size
        next_cursor = encode_cursor((from_epoch(0), following)) if following < total else None
        if style == "cursor":
            return self._page(stream, data, render, {"next_cursor": next_cursor})
        next_url = None
        if next_cursor is not None:
            params = {k: v for k, v in query.items() if k not in ("api_key", "cursor", "limit")}
            params.update(cursor=next_cursor, limit=str(size))
            next_url = str(request.url.with_query(params))
        return self._page(stream, data, render, {"next": next_url})

    def _since(self, updated_since: str | None, q: str | None) -> datetime | None:
        bounds: list[datetime] = []
        if updated_since is not None and updated_since.strip():
            try:
                bounds.append(parse_since(updated_since))
            except ValueError as exc:
                raise Invalid(f"updated_since: {exc}", {"updated_since": str(exc)}) from None
        if q is not None and q.strip():
            match = _Q_UPDATED.match(q)
            if match is None:
                raise Invalid("q: only updated >= '<timestamp>' (or >) is understood", {"q": "unsupported query"})
            try:
                stamp = parse_since(match[3])
            except ValueError as exc:
                raise Invalid(f"q: {exc}", {"q": str(exc)}) from None
            if match[1] == ">":  # strictly after, at the API's whole-second precision
                stamp = stamp.replace(microsecond=0) + timedelta(seconds=1)
            bounds.append(stamp)
        return max(bounds) if bounds else None

    @staticmethod
    def _int_param(query: Any, name: str, default: int, low: int, high: int | None) -> int:
        text = query.get(name)
        if text is None or text == "":
            return default
        try:
            value = int(text)
        except ValueError:
            raise Invalid(f"{name} must be an integer", {name: "not an integer"}) from None
        if value < low or (high is not None and value > high):
            span = f"between {low} and {high}" if high is not None else f">= {low}"
            raise Invalid(f"{name} must be {span}", {name: f"must be {span}"})
        return value

    def _links(self, request: web.Request, page: int, pages: int, per_page: int) -> str:
        params = {k: v for k, v in request.query.items() if k not in ("api_key", "page", "per_page")}

        def url(number: int) -> str:
            return str(request.url.with_query({**params, "page": str(number), "per_page": str(per_page)}))

        links = []
        if page < pages:
            links.append(f'<{url(page + 1)}>; rel="next"')
        if page > 1:
            links.append(f'<{url(min(page - 1, max(pages, 1)))}>; rel="prev"')
        links.append(f'<{url(1)}>; rel="first"')
        links.append(f'<{url(max(pages, 1))}>; rel="last"')
        return ", ".join(links)

    def _page(
        self,
        stream: str,
        rows: list[Row],
        render: Callable[[Row], dict[str, Any]],
        rest: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """A list answer: ``{envelope: [rows...], **rest}``, from precomputed bytes when asked to."""
        if not self.precompute:
            return respond({self.envelope: self._render(rows, render), **rest}, headers=headers)
        cache = self._encoded[stream]
        parts = []
        for row in rows:
            hit = cache.get(row["id"])
            if hit is None or hit[0] is not row["updated_at"]:  # written since: encode again
                hit = cache[row["id"]] = self._encode_row(stream, row)
            parts.append(hit[1])
        tail = b"," + orjson.dumps(rest)[1:] if rest else b"}"
        body = b"{" + orjson.dumps(self.envelope) + b":[" + b",".join(parts) + b"]" + tail
        return web.Response(body=body, headers=headers, content_type="application/json")

    def _encode_row(self, stream: str, row: Row) -> tuple[datetime, bytes]:
        item = self._render([row], RENDER[stream])[0]
        option = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z | orjson.OPT_OMIT_MICROSECONDS
        # a copy: orjson's bytes keep their whole (4 KiB) buffer, a million rows would take 4 GB
        return row["updated_at"], bytes(memoryview(orjson.dumps(item, default=_decimal, option=option)))

    def _render(self, rows: list[Row], render: Callable[[Row], dict[str, Any]]) -> list[dict[str, Any]]:
        out = [render(row) for row in rows]
        for item, row in zip(out, rows, strict=True):
            if row.get("deleted"):
                item["deleted"] = True
        return out

    def _invalid(self, exc: Invalid) -> web.Response:
        return respond({"error": "validation_failed", "message": exc.message, "fields": exc.fields}, status=422)

    def _not_found(self, stream: str, id_text: str) -> web.Response:
        return respond({"error": "not_found", "message": f"no {stream[:-1]} with id {id_text}"}, status=404)
