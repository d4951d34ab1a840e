"""``sandbox aspnet_helpdesk``: a loopback ASP.NET Web API helpdesk.

Resources, as documented::

    GET    /api/{Tickets|Customers|Services|Operators}         a list
    GET    /api/{resource}/{id}                                one entity, or 404
    POST   /api/{resource}                                     create -> 201, Location, the entity
    PUT    /api/{resource}/{id}                                FULL replacement -> 204 No Content
    DELETE /api/{resource}/{id}                                -> 200 with the deleted entity, or 404

This is the stock ASP.NET Web API 2 scaffold (a controller over Entity Framework), which
is what the real helpdesk was verified to be: ``NotFound()`` is a 404 with an **empty
body**, ``Ok(entity)`` answers a DELETE, and list actions are ``return db.Tickets;``.

Every request needs ``?key=`` (default ``sandbox-key``); without it: 401
``{"Message": "Authorization has been denied for this request."}``. Paths and query
parameter names are case-insensitive, as in ASP.NET.

**Media types.** ``Accept`` picks JSON (JSON.NET) or XML (the DataContractSerializer);
JSON wins a tie and is the default. ``Content-Type`` says what a body is; anything else
answers 415. XML is DataContract XML: ``<ArrayOfTicket xmlns:i="...XMLSchema-instance"
xmlns="http://schemas.datacontract.org/2004/07/Helpdesk.Models">``, members in ordinal
alphabetical order, ``i:nil="true"`` for null. Reading a body follows the serializer: a
member out of order, in another namespace or unknown is silently ignored (and so, on a
PUT, erased); a body with a DTD, entity declarations or external references is refused
(defusedxml) with 400 before anything is expanded.

**Times** are UTC, written without an offset (``2025-06-02T09:30:00.5``) as an Entity
Framework-backed API does; a time sent with ``Z`` or an offset is converted, one without
is taken as UTC.

**PUT replaces the entity**: the Id must be in the URL and the body (else 400); every
property left out is erased (a customer's ``CellPhone``, its ``Services``). For tickets
only ``Description``, ``StartTime``, ``EndTime``, ``ExpectedResolutionTime``,
``NextUpdateTime``, ``ClosedTime`` and ``ReopenedTime`` change; the rest of the body is
ignored. A ticket is closed while ``ClosedTime`` is later than ``ReopenedTime``.

**Emails**: creating, updating, closing or reopening a ticket "sends" an email (kept in
``GET /__sandbox/emails``) unless the body has ``DoNotSendEmail=true``. Every POST and PUT
is logged with its ``DoNotSendEmail`` value in ``GET /__sandbox/writes``.

**Lists** are answered whole, in Id order: OData query options (``$filter``, ``$top``,
``$skip``, ``$orderby``) are silently ignored, as the real helpdesk does. ``odata=True``
simulates a helpdesk whose actions have ``[EnableQuery]``:
``$filter`` (clauses ``Member eq|ne|gt|ge|lt|le literal`` joined by ``and``; literals
``'text'`` with ``''`` for a quote, numbers, ``null``, ``true``/``false``, timestamps
``2025-06-02T09:30:00Z`` or ``datetime'2025-06-02T09:30:00'``; text compares
case-insensitively, like SQL Server), ``$orderby`` (``ModifiedTime,Id``, ``Id desc``),
``$top`` (at most ``max_top``, 1000: more answers 400) and ``$skip``. Without ``$orderby``
a list is in Id order; without ``$top`` it is complete.

**Hostile modes** (a test switch, :data:`~ferryman.sandbox.HOSTILE_MODES`): ``ignore_paging``
(with ``odata=True``: ``$top``/``$skip`` ignored), ``ignore_sort`` (lists newest first),
``stub_create`` (201 with ``{"id": "12", "_url": ..., "type": ...}``, or ``<Ticket><Id>``
in XML, and no ``Location``), ``error_in_200`` (a PUT answers 200 with
``["Ticket 2: Status 'closed' isn't a valid status ..."]`` and changes nothing), and
``hide_deleted`` (how the scaffold always behaves: hard deletes); plus the base's
``garble_reads`` and ``garble_writes``.

**Errors** are Web API's: ``{"Message": "..."}``, ``{"Message": "The request is invalid.",
"ModelState": {"ticket.Title": ["..."]}}`` for a bad body; ``<Error><Message>`` in XML.
"""

from __future__ import annotations

import hmac
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from xml.sax.saxutils import escape

import orjson
from aiohttp import web
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as defused_fromstring

from ferryman.sandbox import ADMIN_PREFIX, ALL_HOSTILE, DuplicateValue, Row, Simulator, Table, json_response
from ferryman.timeutil import parse_datetime

from ._schema import CUSTOMER, DEFAULT_NAMESPACE, ENTITIES, OPERATOR, PRIORITIES, SERVICE, TICKET, Entity, Kind

__all__ = ["AspnetHelpdeskSimulator"]

XSI = "http://www.w3.org/2001/XMLSchema-instance"
_NIL = f"{{{XSI}}}nil"
_ARRAYS = "http://schemas.microsoft.com/2003/10/Serialization/Arrays"
_RESOURCES = {e.resource.lower(): e for e in ENTITIES.values()}
_OPS = ("eq", "ne", "gt", "ge", "lt", "le")
_CLAUSE = re.compile(r"^\s*([A-Za-z_]\w*)\s+(eq|ne|gt|ge|lt|le)\s+(.+?)\s*$", re.IGNORECASE)
_DATETIME_V3 = re.compile(r"^datetime'([^']*)'$", re.IGNORECASE)
_SERVICES = (
    ("Webmail", "Mailboxes and webmail at mail.example.com"),
    ("Shared hosting", "Websites on the shared cluster"),
    ("VPS", "Virtual private servers"),
    ("DNS", "Authoritative DNS for customer zones"),
    ("Backup", "Nightly off-site backups"),
    ("SSL certificates", "Certificate issuance and renewal"),
    ("Billing portal", "Invoices, payments and plans"),
    ("Status page", "Incident notices and maintenance windows"),
)


class Invalid(Exception):
    """A request the API answers with an error: status, message and optional ModelState."""

    def __init__(self, status: int, message: str, model_state: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.model_state = model_state


def _bad_body(param: str, problem: str) -> Invalid:
    return Invalid(400, "The request is invalid.", {param: [problem]})


# -- wire formats ------------------------------------------------------------------------------
def dotnet_time(value: datetime) -> str:
    """A UTC time as JSON.NET and the DataContractSerializer write a ``DateTimeKind.Unspecified`` one."""
    utc = value.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += "." + f"{utc.microsecond:06d}".rstrip("0")
    return text


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return dotnet_time(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def _xml_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return dotnet_time(value)
    return escape(str(value))


def _xml_members(entity: Entity, rendered: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for name in entity.order:
        value = rendered.get(name)
        if value is None:
            parts.append(f'<{name} i:nil="true"/>')
        elif isinstance(value, list):
            prop = entity.by_name[name]
            assert prop.item is not None
            item = ENTITIES[prop.item]
            inner = "".join(f"<{item.name}>{_xml_members(item, v)}</{item.name}>" for v in value)
            parts.append(f"<{name}>{inner}</{name}>")
        else:
            parts.append(f"<{name}>{_xml_text(value)}</{name}>")
    return "".join(parts)


def _xml_document(root: str, inner: str, namespace: str) -> bytes:
    return f'<{root} xmlns:i="{XSI}" xmlns="{escape(namespace)}">{inner}</{root}>'.encode()


def _wants_xml(request: web.Request) -> bool:
    """Web API content negotiation: the best-quality of JSON or XML in ``Accept``; JSON on a tie."""
    best = {"json": -1.0, "xml": -1.0}
    for part in request.headers.get("Accept", "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        kinds = {
            "application/json": ("json",),
            "text/json": ("json",),
            "application/xml": ("xml",),
            "text/xml": ("xml",),
            "application/*": ("json", "xml"),
            "*/*": ("json", "xml"),
        }.get(media, ())
        for kind in kinds:
            best[kind] = max(best[kind], quality)
    return best["xml"] > best["json"] and best["xml"] > 0


# -- reading request bodies --------------------------------------------------------------------
def _local(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


def _convert(prop_kind: Kind, value: Any, where: str) -> Any:
    """A JSON value or XML text to the member's type, as JSON.NET / the serializer would."""
    if value is None:
        return None
    try:
        if prop_kind is Kind.INT:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if prop_kind is Kind.STR:
            if isinstance(value, dict | list):
                raise ValueError
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)
        if prop_kind is Kind.BOOL:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1"):
                return True
            if text in ("false", "0"):
                return False
            raise ValueError
        if prop_kind is Kind.DATETIME:
            if not isinstance(value, str):
                raise ValueError
            return parse_datetime(value, assume_tz=UTC)
    except (ValueError, TypeError, OverflowError):
        raise _bad_body(where, f"Could not convert {str(value)[:40]!r} to {prop_kind.value}.") from None
    raise AssertionError(f"unhandled kind {prop_kind}")  # pragma: no cover


def _from_json(entity: Entity, body: Any, param: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad_body(param, f"Expected a JSON object for {entity.name}.")
    members = {name.lower(): name for name in entity.by_name}
    out: dict[str, Any] = {}
    for key, value in body.items():
        name = members.get(str(key).lower())  # JSON.NET matches member names case-insensitively
        if name is None:
            continue  # unknown members are ignored
        prop = entity.by_name[name]
        where = f"{param}.{name}"
        if prop.kind is Kind.LIST:
            if value is None:
                out[name] = None
                continue
            if not isinstance(value, list):
                raise _bad_body(where, f"Expected an array of {prop.item}.")
            assert prop.item is not None
            out[name] = [_from_json(ENTITIES[prop.item], item, where) for item in value]
        else:
            out[name] = _convert(prop.kind, value, where)
    return out


def _from_xml(entity: Entity, element: ET.Element, namespace: str, param: str) -> dict[str, Any]:
    """Members in DataContract order; one out of order, unknown or in another namespace is skipped."""
    order = entity.order
    position = 0
    out: dict[str, Any] = {}
    for child in element:
        ns, name = _local(child.tag)
        if ns != namespace or name not in order[position:]:
            continue
        position = order.index(name, position) + 1
        prop = entity.by_name[name]
        where = f"{param}.{name}"
        if (child.get(_NIL) or "").strip().lower() == "true":
            out[name] = None
        elif prop.kind is Kind.LIST:
            assert prop.item is not None
            item = ENTITIES[prop.item]
            out[name] = [
                _from_xml(item, sub, namespace, where) for sub in child if _local(sub.tag) == (namespace, item.name)
            ]
        else:
            out[name] = _convert(prop.kind, child.text or "", where)
    return out


# -- OData query options ------------------------------------------------------------------------
Predicate = Callable[[Mapping[str, Any]], bool]


def _split_and(text: str) -> list[str]:
    """Split a $filter on ``and`` outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    words = re.split(r"(\s+)", text)
    quoted = False
    for word in words:
        if not quoted and word.lower() == "and":
            parts.append("".join(current))
            current = []
            continue
        if not quoted and word.lower() == "or":
            raise Invalid(400, "The query specified in the URI is not valid: this helpdesk supports 'and' only.")
        current.append(word)
        quoted ^= word.count("'") % 2 == 1
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _literal(text: str, kind: Kind) -> Any:
    text = text.strip()
    if text.lower() == "null":
        return None
    bad = Invalid(400, f"The query specified in the URI is not valid: {text!r} is not a {kind.value} literal.")
    if kind is Kind.STR:
        if len(text) < 2 or not (text.startswith("'") and text.endswith("'")):
            raise bad
        return text[1:-1].replace("''", "'")
    if kind is Kind.INT:
        if not re.fullmatch(r"-?\d+", text):
            raise bad
        return int(text)
    if kind is Kind.BOOL:
        if text.lower() not in ("true", "false"):
            raise bad
        return text.lower() == "true"
    if kind is Kind.DATETIME:
        match = _DATETIME_V3.match(text)
        try:
            return parse_datetime(match[1] if match else text, assume_tz=UTC)
        except ValueError:
            raise bad from None
    raise bad


def _compare(op: str, left: Any, right: Any) -> bool:
    if isinstance(left, str) and isinstance(right, str):
        left, right = left.casefold(), right.casefold()  # SQL Server's default collation
    if op == "eq":
        return bool(left == right)
    if op == "ne":
        return bool(left != right)
    if left is None or right is None:
        return False
    return bool({"gt": left > right, "ge": left >= right, "lt": left < right, "le": left <= right}[op])


class Query:
    """Parsed ``$filter``, ``$orderby``, ``$top``, ``$skip`` for one entity."""

    def __init__(self, entity: Entity, params: Mapping[str, str], max_top: int) -> None:
        self.entity = entity
        self.clauses: list[tuple[str, str, Any]] = []
        self.order: list[tuple[str, bool]] = []  # (member, descending)
        self.top: int | None = None
        self.skip = 0
        for key, value in params.items():
            name = key.lower()
            if name == "$filter":
                self.clauses = [self._clause(part) for part in _split_and(value)]
            elif name == "$orderby":
                self.order = [self._order(part) for part in value.split(",") if part.strip()]
            elif name == "$top":
                self.top = self._count("$top", value)
                if self.top > max_top:
                    raise Invalid(
                        400,
                        f"The limit of '{max_top}' for Top query has been exceeded. "
                        f"The value from the incoming request is '{self.top}'.",
                    )
            elif name == "$skip":
                self.skip = self._count("$skip", value)
            elif name.startswith("$"):
                raise Invalid(400, f"The query parameter '{key}' is not supported.")

    def _member(self, name: str) -> str:
        for member in self.entity.by_name:
            if member.lower() == name.lower():
                if self.entity.by_name[member].kind is Kind.LIST:
                    break
                return member
        raise Invalid(400, f"Could not find a property named '{name}' on type '{self.entity.name}'.")

    def _clause(self, text: str) -> tuple[str, str, Any]:
        match = _CLAUSE.match(text)
        if match is None:
            raise Invalid(400, f"The query specified in the URI is not valid: cannot read {text.strip()!r}.")
        member = self._member(match[1])
        return member, match[2].lower(), _literal(match[3], self.entity.by_name[member].kind)

    def _order(self, text: str) -> tuple[str, bool]:
        words = text.split()
        if not 1 <= len(words) <= 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")):
            raise Invalid(400, f"The query specified in the URI is not valid: $orderby {text.strip()!r}.")
        return self._member(words[0]), len(words) == 2 and words[1].lower() == "desc"

    @staticmethod
    def _count(name: str, value: str) -> int:
        if not value.strip().isdigit():
            raise Invalid(400, f"The query specified in the URI is not valid: {name}={value!r} is not a count.")
        return int(value)

    def since(self) -> datetime | None:
        """The lower bound a ``ModifiedTime ge|gt`` clause puts on the rows."""
        bounds = [v for m, op, v in self.clauses if m == "ModifiedTime" and op in ("ge", "gt") and v is not None]
        return max(bounds) if bounds else None

    def by_modified(self) -> bool:
        """Whether the order is the table's own (ModifiedTime, Id) order."""
        return self.order in ([("ModifiedTime", False)], [("ModifiedTime", False), ("Id", False)])

    def matches(self, rendered: Mapping[str, Any]) -> bool:
        return all(_compare(op, rendered.get(member), value) for member, op, value in self.clauses)

    def sort(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for member, descending in reversed(self.order or [("Id", False)]):
            present = [r for r in rows if r.get(member) is not None]
            missing = [r for r in rows if r.get(member) is None]
            present.sort(key=_by(member), reverse=descending)
            rows = present + missing if descending else missing + present  # NULLs first, as SQL Server
        return rows


class AspnetHelpdeskSimulator(Simulator):
    """The ASP.NET helpdesk's REST API on loopback (see the module docs).

    ``namespace`` is the DataContract namespace of its XML; ``max_top`` the largest ``$top``.
    """

    name: ClassVar[str] = "aspnet_helpdesk"
    default_credentials: ClassVar[dict[str, str]] = {"api_key": "sandbox-key"}
    default_port: ClassVar[int] = 8801
    # hide_deleted is how the scaffold always behaves (a hard delete: gone from lists, GET 404);
    # the mode is accepted so the hostile kit proves the connector's get() answers None for it.
    hostile_supported: ClassVar[frozenset[str]] = ALL_HOSTILE

    def __init__(
        self, *, namespace: str = DEFAULT_NAMESPACE, max_top: int = 1000, odata: bool = False, **options: Any
    ) -> None:
        if max_top < 1:
            raise ValueError("max_top must be at least 1")
        self.namespace = namespace
        self.max_top = max_top
        #: whether list actions honour OData query options ([EnableQuery]); the real
        #: scaffold does not, and silently ignores them
        self.odata = odata
        #: every POST and PUT: method, resource, id, format and the DoNotSendEmail it carried
        self.writes: list[dict[str, Any]] = []
        #: the emails the helpdesk would have sent to customers
        self.emails: list[dict[str, Any]] = []
        super().__init__(**options)

    # -- data -------------------------------------------------------------------------------------
    def populate(self) -> None:
        """Services, operators, ``records`` customers and ``records`` tickets."""
        rng = random.Random(f"aspnet_helpdesk:{self.seed}")
        factory = self.factory
        services = self.add_table(SERVICE.resource)
        services.load(factory.stamp([{"Name": name, "Description": text} for name, text in _SERVICES]))
        operators = self.add_table(OPERATOR.resource)
        operators.load(
            factory.stamp(
                [{"Name": f"{p['first_name']} {p['last_name']}", "Email": p["email"]} for p in factory.people(6)]
            )
        )
        service_ids = [row["id"] for row in services]
        operator_ids = [row["id"] for row in operators]
        customers = self.add_table(CUSTOMER.resource, unique=("email_key",))
        people = factory.people(self.records)
        customers.load(
            {
                "FirstName": p["first_name"],
                "LastName": p["last_name"],
                "Email": p["email"],
                "CellPhone": p["mobile"] or p["phone"],
                "Company": p["company"],
                "Services": sorted(rng.sample(service_ids, rng.choice((0, 1, 1, 2, 3)))),
                "email_key": p["email"].casefold(),
                "created_at": p["created_at"],
                "updated_at": p["updated_at"],
            }
            for p in people
        )
        by_email = {row["Email"]: row["id"] for row in customers}
        tickets = self.add_table(TICKET.resource)
        tickets.load(
            self._ticket(t, rng, by_email, service_ids, operator_ids)
            for t in factory.tickets(self.records, [p["email"] for p in people])
        )

    @staticmethod
    def _ticket(
        generated: dict[str, Any],
        rng: random.Random,
        by_email: Mapping[str, int],
        service_ids: list[int],
        operator_ids: list[int],
    ) -> Row:
        created: datetime = generated["created_at"]
        updated: datetime = generated["updated_at"]
        span = updated - created
        status = generated["status"]
        row: Row = {
            "Title": generated["subject"],
            "Description": generated["description"],
            "Priority": generated["priority"].capitalize(),
            "CustomerId": by_email.get(generated["requester_email"] or ""),
            "ServiceId": rng.choice(service_ids) if rng.random() < 0.9 else None,
            "OperatorId": rng.choice(operator_ids) if rng.random() < 0.8 else None,
            "StartTime": created,
            "EndTime": None,
            "ExpectedResolutionTime": None,
            "NextUpdateTime": None,
            "ClosedTime": None,
            "ReopenedTime": None,
            "created_at": created,
            "updated_at": updated,
        }
        if status == "closed":
            row["ClosedTime"] = row["EndTime"] = updated
            if rng.random() < 0.15:  # closed, reopened, closed again
                row["ReopenedTime"] = created + span / 2
        else:
            row["ExpectedResolutionTime"] = created + timedelta(hours=rng.choice((4, 8, 24, 72)))
            row["NextUpdateTime"] = updated + timedelta(hours=rng.choice((1, 4, 24)))
            if status == "pending":  # closed once, then reopened by the customer
                row["ClosedTime"] = created + span / 3
                row["ReopenedTime"] = created + span * 2 / 3
        return row

    # -- rendering --------------------------------------------------------------------------------
    def render(self, entity: Entity, row: Row) -> dict[str, Any]:
        """An entity as the API shows it: every member, server-owned ones from the table."""
        out: dict[str, Any] = {}
        for prop in entity.props:
            name = prop.name
            if name == "Id":
                out[name] = row["id"]
            elif name == "CreatedTime":
                out[name] = row["created_at"]
            elif name == "ModifiedTime":
                out[name] = row["updated_at"]
            elif name in entity.flags:
                out[name] = False
            elif prop.kind is Kind.LIST:
                assert prop.item is not None
                item = ENTITIES[prop.item]
                table = self.table(item.resource)
                rows = (table.get(id) for id in row.get(name) or ())
                out[name] = [self.render(item, r) for r in rows if r is not None]
            else:
                out[name] = row.get(name)
        return out

    def answer(
        self, request: web.Request, data: Any, *, entity: Entity | None = None, status: int = 200, **headers: str
    ) -> web.Response:
        """``data`` (a rendered entity, a list of them, or an error dict) in the negotiated format."""
        if not _wants_xml(request):
            return web.Response(
                body=orjson.dumps(_json_value(data)), status=status, headers=headers, content_type="application/json"
            )
        if entity is None:  # an HttpError
            inner = f"<Message>{escape(str(data.get('Message', '')))}</Message>"
            state = data.get("ModelState")
            if state:
                inner += (
                    "<ModelState>"
                    + "".join(f"<{k}>{escape(' '.join(v))}</{k}>" for k, v in state.items())
                    + "</ModelState>"
                )
            body = f"<Error>{inner}</Error>".encode()
        elif isinstance(data, list):
            inner = "".join(f"<{entity.name}>{_xml_members(entity, item)}</{entity.name}>" for item in data)
            body = _xml_document(entity.list_root, inner, self.namespace)
        else:
            body = _xml_document(entity.name, _xml_members(entity, data), self.namespace)
        return web.Response(body=body, status=status, headers=headers, content_type="application/xml")

    def error(self, request: web.Request, status: int, message: str, **extra: Any) -> web.Response:
        return self.answer(request, {"Message": message, **extra}, status=status)

    # -- auth and politeness answers ------------------------------------------------------------
    def authenticate(self, request: web.Request) -> str | None:
        """The ``key`` query parameter (its name in any case), when it is the configured key."""
        key = self.credentials["api_key"]
        for name, value in request.query.items():
            if name.lower() == "key" and hmac.compare_digest(value.encode(), key.encode()):
                return key
        return None

    def unauthorized(self, request: web.Request) -> web.StreamResponse:
        return self.error(request, 401, "Authorization has been denied for this request.")

    def throttled(self, request: web.Request, *, status: int, retry_after: str) -> web.StreamResponse:
        reason = "Too many requests." if status == 429 else "The service is temporarily unavailable."
        response = self.error(request, status, reason)
        response.headers["Retry-After"] = retry_after
        return response

    def server_error(self, request: web.Request, *, status: int) -> web.StreamResponse:
        return self.error(request, status, "An error has occurred.")

    def describe_credentials(self) -> str:
        return f"?key={self.credentials['api_key']}"

    def info(self) -> dict[str, Any]:
        return {**super().info(), "namespace": self.namespace, "writes": len(self.writes), "emails": len(self.emails)}

    # -- routes -----------------------------------------------------------------------------------
    def routes(self, router: web.UrlDispatcher) -> None:
        """``/api/{resource}`` and ``/api/{resource}/{id}``, any case; the admin views of writes and emails."""
        router.add_get(f"{ADMIN_PREFIX}/writes", self._admin_writes)
        router.add_get(f"{ADMIN_PREFIX}/emails", self._admin_emails)
        router.add_route("*", r"/{api:[Aa][Pp][Ii]}/{resource}", self.collection)
        router.add_route("*", r"/{api:[Aa][Pp][Ii]}/{resource}/{id}", self.item)

    async def _admin_writes(self, request: web.Request) -> web.Response:
        return json_response({"writes": self.writes})

    async def _admin_emails(self, request: web.Request) -> web.Response:
        return json_response({"emails": self.emails})

    def _resolve(self, request: web.Request) -> Entity | None:
        return _RESOURCES.get(request.match_info["resource"].lower())

    def _not_found(self, request: web.Request) -> web.Response:
        # Web API echoes the request URI; the path alone here, so the key is never echoed.
        return self.error(request, 404, f"No HTTP resource was found that matches the request URI '{request.path}'.")

    def _not_allowed(self, request: web.Request) -> web.Response:
        return self.error(request, 405, f"The requested resource does not support http method '{request.method}'.")

    async def collection(self, request: web.Request) -> web.StreamResponse:
        entity = self._resolve(request)
        if entity is None:
            return self._not_found(request)
        try:
            if request.method == "GET":
                return self.list_entities(request, entity)
            if request.method == "POST":
                return await self.create_entity(request, entity)
        except Invalid as exc:
            return self._invalid(request, exc)
        return self._not_allowed(request)

    async def item(self, request: web.Request) -> web.StreamResponse:
        entity = self._resolve(request)
        if entity is None:
            return self._not_found(request)
        text = request.match_info["id"]
        if not text.isdigit() or int(text) >= 2**31:
            return self.error(request, 400, "The request is invalid.", MessageDetail=f"'{text}' is not an Int32 Id.")
        id = int(text)
        try:
            if request.method == "GET":
                row = self.table(entity.resource).get(id)
                if row is None:
                    return self._missing(request, entity, id)
                return self.answer(request, self.render(entity, row), entity=entity)
            if request.method == "PUT":
                return await self.replace_entity(request, entity, id)
            if request.method == "DELETE":
                # The scaffold's DeleteTicket: `db.Tickets.Remove(ticket); ... return Ok(ticket);`
                row = self.table(entity.resource).get(id)
                if row is None:
                    return self._missing(request, entity, id)
                gone = self.render(entity, row)
                self.table(entity.resource).delete(id)
                return self.answer(request, gone, entity=entity)
        except Invalid as exc:
            return self._invalid(request, exc)
        return self._not_allowed(request)

    def _missing(self, request: web.Request, entity: Entity, id: int) -> web.Response:
        # The scaffold's `return NotFound();`: a 404 with an empty body (verified).
        return web.Response(status=404)

    def _invalid(self, request: web.Request, exc: Invalid) -> web.Response:
        extra = {"ModelState": exc.model_state} if exc.model_state else {}
        return self.error(request, exc.status, exc.message, **extra)

    # -- reading lists ----------------------------------------------------------------------------
    def list_entities(self, request: web.Request, entity: Entity) -> web.Response:
        table = self.table(entity.resource)
        if not self.odata:
            # The scaffold's `return db.Tickets;`: every query option is ignored, unread.
            rendered = [self.render(entity, row) for row in table]
        else:
            query = Query(entity, request.query, self.max_top)
            if self.is_hostile("ignore_paging"):
                query.top, query.skip = None, 0
            if self.is_hostile("ignore_sort"):
                query.order = [("ModifiedTime", True), ("Id", True)]
            rendered = self._select(entity, table, query)
        if self.is_hostile("ignore_sort"):
            rendered.sort(key=lambda r: (r["ModifiedTime"], r["Id"]), reverse=True)
        return self.answer(request, rendered, entity=entity)

    def _select(self, entity: Entity, table: Table, query: Query) -> list[dict[str, Any]]:
        if query.by_modified():
            # The table's own (updated_at, id) order: walk it from the lower bound, lazily.
            candidates: Iterable[Row] = table.query(query.since())
            matching: Iterator[dict[str, Any]] = (
                r for r in (self.render(entity, row) for row in candidates) if query.matches(r)
            )
            out: list[dict[str, Any]] = []
            for index, item in enumerate(matching):
                if index < query.skip:
                    continue
                if query.top is not None and len(out) >= query.top:
                    break
                out.append(item)
            return out
        rows = [r for r in (self.render(entity, row) for row in table) if query.matches(r)]
        rows = query.sort(rows)[query.skip :]
        return rows if query.top is None else rows[: query.top]

    # -- writing ----------------------------------------------------------------------------------
    async def _body(self, request: web.Request, entity: Entity) -> tuple[dict[str, Any], str]:
        """The members a request body carries, and its format (``json`` or ``xml``)."""
        param = entity.name.lower()
        raw = await request.read()
        media = request.content_type.lower()
        if media in ("application/json", "text/json"):
            fmt = "json"
        elif media in ("application/xml", "text/xml"):
            fmt = "xml"
        else:
            raise Invalid(
                415, f"The request entity's media type '{media or 'none'}' is not supported for this resource."
            )
        if not raw.strip():
            raise _bad_body(param, "A value is required but was not present in the request.")
        if fmt == "json":
            try:
                return _from_json(entity, orjson.loads(raw), param), fmt
            except orjson.JSONDecodeError as exc:
                raise _bad_body(param, f"Unexpected character encountered while parsing value: {exc.msg}.") from None
        try:
            root = defused_fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
        except DefusedXmlException as exc:
            raise _bad_body(
                param, f"DTD, entity declarations and external references are prohibited ({type(exc).__name__})."
            ) from None
        except ET.ParseError as exc:
            raise _bad_body(
                param, f"There was an error deserializing the object of type {entity.name}: {exc}."
            ) from None
        ns, name = _local(root.tag)
        if (ns, name) != (self.namespace, entity.name):
            raise _bad_body(
                param,
                f"Expecting element '{entity.name}' from namespace '{self.namespace}'.. "
                f"Encountered 'Element' with name '{name}', namespace '{ns}'.",
            )
        return _from_xml(entity, root, self.namespace, param), fmt

    def _log_write(
        self, request: web.Request, entity: Entity, id: int | None, fmt: str, body: Mapping[str, Any]
    ) -> bool:
        quiet = body.get("DoNotSendEmail") is True
        self.writes.append(
            {
                "method": request.method,
                "resource": entity.resource,
                "id": id,
                "format": fmt,
                "DoNotSendEmail": body.get("DoNotSendEmail"),
            }
        )
        return quiet

    def _email(self, ticket: Row, event: str) -> None:
        customer = self.table(CUSTOMER.resource).get(ticket.get("CustomerId") or 0)
        self.emails.append({"ticket": ticket["id"], "event": event, "to": customer["Email"] if customer else None})

    def _validate(self, entity: Entity, fields: dict[str, Any]) -> None:
        param = entity.name.lower()
        required = {"Ticket": "Title", "Customer": "Email", "Service": "Name", "Operator": "Name"}[entity.name]
        if not (fields.get(required) or "").strip():
            raise _bad_body(f"{param}.{required}", f"The {required} field is required.")
        if entity is TICKET:
            if fields.get("Priority") is None:
                fields["Priority"] = "Normal"
            if fields["Priority"] not in PRIORITIES:
                raise _bad_body(f"{param}.Priority", f"The value '{fields['Priority']}' is not a valid Priority.")
            for member, resource in (("CustomerId", CUSTOMER), ("ServiceId", SERVICE), ("OperatorId", OPERATOR)):
                value = fields.get(member)
                if value is not None and self.table(resource.resource).get(value) is None:
                    raise _bad_body(f"{param}.{member}", f"{resource.name} {value} does not exist.")
        if entity is CUSTOMER:
            ids = []
            for service in fields.get("Services") or []:
                service_id = service.get("Id")
                if service_id is None or self.table(SERVICE.resource).get(service_id) is None:
                    raise _bad_body(f"{param}.Services", f"Service {service_id} does not exist.")
                ids.append(service_id)
            fields["Services"] = sorted(set(ids))
            fields["email_key"] = fields["Email"].strip().casefold()

    def _store(self, entity: Entity, id: int | None, fields: dict[str, Any]) -> Row:
        table = self.table(entity.resource)
        try:
            return table.insert(fields) if id is None else table.update(id, fields)
        except DuplicateValue:
            raise Invalid(
                409, f"Another {entity.name.lower()} already uses the email '{fields.get('Email')}'."
            ) from None

    async def create_entity(self, request: web.Request, entity: Entity) -> web.Response:
        body, fmt = await self._body(request, entity)
        quiet = self._log_write(request, entity, None, fmt, body)
        fields = {name: body.get(name) for name in entity.writable()}
        self._validate(entity, fields)
        row = self._store(entity, None, fields)
        if entity is TICKET and not quiet:
            self._email(row, "created")
            if _closed(row):
                self._email(row, "closed")
        location = f"{request.url.origin()}/api/{entity.resource}/{row['id']}"
        if self.is_hostile("stub_create"):
            # Hostile: the new id and little else (the shape seen from another helpdesk), no Location.
            if _wants_xml(request):
                stub = _xml_document(entity.name, f"<Id>{row['id']}</Id>", self.namespace)
                return web.Response(body=stub, status=201, content_type="application/xml")
            url = f"/api/{entity.resource}/{row['id']}"
            return json_response({"id": str(row["id"]), "_url": url, "type": entity.name.lower()}, status=201)
        return self.answer(request, self.render(entity, row), entity=entity, status=201, Location=location)

    async def replace_entity(self, request: web.Request, entity: Entity, id: int) -> web.StreamResponse:
        table = self.table(entity.resource)
        current = table.get(id)
        if current is None:
            return self._missing(request, entity, id)
        body, fmt = await self._body(request, entity)
        quiet = self._log_write(request, entity, id, fmt, body)
        if body.get("Id") != id:
            raise Invalid(400, f"The Id in the URL ({id}) does not match the Id in the entity ({body.get('Id') or 0}).")
        if self.is_hostile("error_in_200"):
            # Hostile: the refusal inside a 200 (the shape seen from another helpdesk); nothing changes.
            words = f"{entity.name} {id}: Status 'closed' isn't a valid status for this {entity.name.lower()}."
            if _wants_xml(request):
                refusal = f'<ArrayOfstring xmlns="{_ARRAYS}"><string>{escape(words)}</string></ArrayOfstring>'
                return web.Response(body=refusal.encode(), status=200, content_type="application/xml")
            return json_response([words])
        was_closed = _closed(current)
        # A full replacement: every property the PUT may change takes the body's value, and
        # one the body left out becomes null. A ticket's other properties are kept as they were.
        replaced = {name: body.get(name) for name in entity.replaced_by_put()}
        fields = {name: current.get(name) for name in entity.writable()} | replaced
        self._validate(entity, fields)
        row = self._store(entity, id, fields)
        if entity is TICKET and not quiet:
            is_closed = _closed(row)
            self._email(
                row,
                "closed" if is_closed and not was_closed else "reopened" if was_closed and not is_closed else "updated",
            )
        return web.Response(status=204)


def _by(member: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda row: row[member]


def _closed(row: Mapping[str, Any]) -> bool:
    closed, reopened = row.get("ClosedTime"), row.get("ReopenedTime")
    return closed is not None and (reopened is None or reopened < closed)
