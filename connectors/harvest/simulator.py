"""``sandbox harvest``: Harvest's classic v1 XML API for clients, client contacts and invoices.

Faithful to what Harvest documents (``shared/seeds/002_...`` and its README):

- HTTP Basic with an email and password (default ``api@sandbox.harvest.example`` /
  ``sandbox-password``); a wrong one answers 401 with ``WWW-Authenticate: Basic``.
- Requests must ask for XML (``Accept: application/xml``): without it Harvest sends a
  browser to its login page, and so does this (302 to ``/account/login``); a JSON-only
  ``Accept`` answers 406 (this sandbox speaks XML only).
- Rails typed XML both ways: ``type="integer|decimal|boolean|date|dateTime|array"``,
  ``nil="true"``, datetimes in UTC with whole seconds (``2008-04-09T12:07:56Z``),
  decimals as Rails prints them (``100.0``, ``1234.56``). As real responses do (shared/seeds
  README, "Verified against the real systems"): datetimes are typed ``dateTime`` by default
  (``datetime_type="datetime"`` for the other spelling), nil elements are self-closing, an
  empty list is ``<nil-classes type="array"/>`` (recorded: fixtures/harvest/clients_empty.xml),
  and ``bom=True`` / ``utc_offset="+00:00"`` give the BOM and offsets real bodies carry.
- Currencies are Harvest's names; older accounts keep old ones ("United States Dollars -
  USD", "United Kingdom Pound - GBP"); a write takes only a currently listed name (422).
- ``due-at-human-format`` (``upon receipt``, ``net 15/30/45/60``, ``custom``; older data
  ``30 days``) overrides ``due-at``: only ``custom`` keeps a ``due-at`` as sent.
- ``unprivileged={"invoices"}`` plays a user without the privileges for a collection:
  its list and items answer 404, as Harvest does, not 403. Request bodies must be
  ``Content-Type: application/xml`` (else 415) and are parsed with defusedxml: malformed
  XML, or XML that declares entities (billion laughs, XXE), answers 400 with
  ``<errors><error>...</error></errors>``. Validation failures answer 422 the same way.
- More than 100 requests per credential in any 15 seconds answers 503 with
  ``Retry-After`` in seconds (``rate_limit``/``window`` change that for tests).

Routes::

    GET    /account/who_am_i
    GET    /clients                     ?updated_since=2010-09-25+18%3A30 (UTC; also ISO 8601)
    POST   /clients                     201, Location: /clients/{id}
    GET    /clients/{id}
    PUT    /clients/{id}                updates the attributes sent; 200, Location
    DELETE /clients/{id}                200; 400 while the client has invoices
    POST   /clients/{id}/toggle         active <-> inactive
    GET    /clients/{id}/contacts       ?updated_since=
    GET    /contacts                    ?updated_since=
    POST   /contacts                    201, Location: /contacts/{id}
    GET    /contacts/{id}
    PUT    /contacts/{id}               200, Location
    DELETE /contacts/{id}               200
    GET    /invoices                    50 a page, ?page=N; ?updated_since=, from=/to= (YYYYMMDD,
                                        issued), status= (open|partial|draft|paid|unpaid|pastdue|closed),
                                        client=; newest issued first, not in updated_at order
    POST   /invoices                    201, Location: /invoices/{id}
    GET    /invoices/{id}               with <csv-line-items>
    PUT    /invoices/{id}               200, Location; csv-line-items replaces the lines
    DELETE /invoices/{id}               200
    POST   /invoices/{id}/messages/{mark_as_sent|mark_as_closed|re_open|mark_as_draft}
    GET    /invoices/{id}/payments
    POST   /invoices/{id}/payments      201, Location: /invoices/{id}/payments/{pid}

Invoices are what Harvest makes of them: the amount is computed from the line items
(quantity x unit price, to the cent, plus ``tax``/``tax2`` percent on taxed lines, less
``discount`` percent), ``due-amount`` is the amount less payments, and ``state`` is
derived (``draft`` until sent, ``open``, ``partial``/``paid`` by payments, ``closed``
once closed); ``amount``, ``due-amount`` and ``state`` in a body are ignored.

Hostile modes (a deliberate test switch, :data:`ferryman.sandbox.HOSTILE_MODES`):
``ignore_paging`` (``GET /invoices`` answers every page whole), ``ignore_sort`` (every list
shuffled: Harvest documents no order, so nothing may rely on one), ``stub_create`` (a create
answers 201 with only ``<id>`` in a body and no ``Location``), ``error_in_200`` (an update
answers 200 with ``<errors>`` and changes nothing), ``hide_deleted`` (what Harvest always
does: a deleted entity is gone from lists and its GET answers 404), plus the base class's
``garble_reads`` and ``garble_writes``.

Where Harvest's behaviour is unknown, this chooses: ``updated_since`` includes rows
updated at that minute (``>=``); contacts list in id order, clients by name; an invoice
created without ``due-at-human-format`` gets ``upon receipt``.
"""

from __future__ import annotations

import hmac
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar
from xml.etree import ElementTree as ET

from aiohttp import web

from ferryman.errors import MalformedResponseError
from ferryman.http.codecs import parse_xml, python_to_typed_xml, typed_xml_to_python
from ferryman.sandbox import ALL_HOSTILE, DuplicateValue, Row, Simulator, basic_credentials
from ferryman.timeutil import parse_datetime, utcnow

from ._common import (
    CURRENCIES,
    LEGACY_CURRENCY_NAMES,
    WRITABLE_TERMS,
    LineItem,
    currency_code,
    currency_name,
    due_from_terms,
    format_line_items,
    invoice_totals,
    parse_line_items,
    terms_for,
    to_decimal,
)

__all__ = ["HarvestSimulator", "parse_updated_since", "rails_decimal"]

#: Harvest's current currency names: the only values a write may carry
_LISTED_CURRENCIES = frozenset(currency_name(code) for code in CURRENCIES)
_COLLECTIONS = ("clients", "contacts", "invoices")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_XML = "application/xml"
_MAX_BODY = 1 << 20
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SINCE_LAYOUTS = ("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d")
_STATUSES = ("open", "partial", "draft", "paid", "unpaid", "pastdue", "closed")
_MESSAGES = ("mark_as_sent", "mark_as_closed", "re_open", "mark_as_draft")

_STREETS = ("Main Street", "High Street", "Harbour Road", "Station Road", "Market Square", "Mill Lane", "Elm Avenue")
_PLACES = (
    ("London", "GB", "EC1A"), ("Dublin", "IE", "D02"), ("New York", "US", "10001"), ("Austin", "US", "73301"),
    ("Toronto", "CA", "M5V"), ("Berlin", "DE", "10115"), ("Paris", "FR", "75001"), ("Madrid", "ES", "28001"),
    ("Amsterdam", "NL", "1012"), ("Stockholm", "SE", "111 20"), ("Sydney", "AU", "2000"), ("Auckland", "NZ", "1010"),
)  # fmt: skip
_LINE_KINDS = ("Service", "Product", "Hours")
_LINE_TEXT = (
    "Hosting (monthly)", "Support hours", "Domain renewal", "SSL certificate", "Consulting",
    "Backup storage", "Setup fee", "Software licence", "Design work", "Training session",
)  # fmt: skip
_PRICES = tuple(Decimal(p) for p in ("19.99", "0.10", "0.20", "49.00", "95.00", "120.00", "1234.56", "12.50", "0.99"))
_QUANTITIES = tuple(Decimal(q) for q in ("1", "1", "1", "2", "3", "5", "10", "0.5", "1.5", "7.25"))
_TAXES: tuple[Decimal | None, ...] = (None, None, None, Decimal("5.0"), Decimal("20.0"), Decimal("8.875"))


class _Problem(Exception):
    """A request Harvest refuses: the status and the messages for ``<errors>``."""

    def __init__(self, status: int, *messages: str) -> None:
        super().__init__("; ".join(messages))
        self.status = status
        self.messages = messages


def rails_decimal(value: Decimal | None) -> Decimal | None:
    """A decimal as Rails prints it: ``100.00`` -> ``100.0``, ``0.30`` -> ``0.3``, ``1234.56`` as is."""
    if value is None:
        return None
    if value == value.to_integral_value():
        return value.quantize(Decimal("0.1"))
    return value.normalize()


def parse_updated_since(text: str) -> datetime:
    """``updated_since`` as Harvest takes it: ``2010-09-25 18:30`` (UTC), with seconds, a date, or ISO 8601."""
    raw = text.strip()
    for layout in _SINCE_LAYOUTS:
        try:
            return datetime.strptime(raw, layout).replace(tzinfo=UTC)
        except ValueError:
            continue
    return parse_datetime(raw, assume_tz=UTC)


def _whole(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def _errors(status: int, messages: Iterable[str], headers: Mapping[str, str] | None = None) -> web.Response:
    root = ET.Element("errors")
    for message in messages:
        ET.SubElement(root, "error").text = message
    body = ET.tostring(root, encoding="UTF-8", xml_declaration=True)
    return web.Response(body=body, status=status, headers=headers, content_type=_XML, charset="utf-8")


def _empty(status: int, location: str | None = None) -> web.Response:
    headers = {"Location": location} if location else None
    return web.Response(status=status, headers=headers, content_type=_XML, charset="utf-8")


# -- field cleaners: value from a typed-XML body -> stored value, or ValueError -----------------


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict | list):
        raise ValueError("must be text")
    text = str(value)
    return text if text.strip() else None


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or (isinstance(value, str) and not value.strip().isdigit()):
        raise ValueError("is not a number")
    if not isinstance(value, int | str):
        raise ValueError("is not a number")
    return int(value)


def _bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ValueError("must be true or false")


def _date(value: Any) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError("is not a date (YYYY-MM-DD)") from None


def _rate(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    number = to_decimal(value, "value")
    if number < 0:
        raise ValueError("cannot be negative")
    return number


def _label(tag: str) -> str:
    """``first-name`` -> ``First name``, as Rails words its validation messages."""
    words = tag.replace("-", " ")
    return words[:1].upper() + words[1:]


class HarvestSimulator(Simulator):
    """Harvest classic v1: clients, client contacts and invoices in typed XML (see the module docs).

    ``page_size`` is how many invoices a page holds (Harvest: 50). ``rate_limit`` defaults
    to Harvest's 100 requests per ``window`` of 15 seconds; the limit is always on.
    """

    name: ClassVar[str] = "harvest"
    default_credentials: ClassVar[dict[str, str]] = {
        "email": "api@sandbox.harvest.example",
        "password": "sandbox-password",
    }
    default_port: ClassVar[int] = 8805
    rate_limit_status: ClassVar[int] = 503
    rate_window: ClassVar[float] = 15.0
    #: Harvest's documented limit: requests per credential in any ``rate_window`` seconds
    default_rate_limit: ClassVar[float] = 100

    hostile_supported: ClassVar[frozenset[str]] = ALL_HOSTILE

    def __init__(
        self,
        *,
        page_size: int = 50,
        datetime_type: str = "dateTime",
        utc_offset: str = "Z",
        bom: bool = False,
        unprivileged: Iterable[str] = (),
        **options: Any,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if utc_offset not in ("Z", "+00:00"):
            raise ValueError('utc_offset must be "Z" or "+00:00"')
        hidden = frozenset(unprivileged)
        if not hidden <= set(_COLLECTIONS):
            raise ValueError(f"unprivileged names collections: {', '.join(_COLLECTIONS)}")
        self.page_size = page_size
        #: how datetimes are typed: real Harvest XML says ``dateTime`` (and ``datetime``)
        self.datetime_type = datetime_type
        #: ``Z`` or ``+00:00``: real responses carry both
        self.utc_offset = utc_offset
        #: start every XML body with a UTF-8 byte order mark, as some real responses do
        self.bom = bom
        #: collections this user lacks the privileges for: Harvest answers 404, as for a missing record
        self.unprivileged = hidden
        self._rng = random.Random(f"harvest-writes:{options.get('seed', 1)}")
        if options.get("rate_limit") is None:
            options["rate_limit"] = self.default_rate_limit
        self._next_payment = 1
        self._next_number = 1001
        super().__init__(**options)

    # -- data --------------------------------------------------------------------------------
    def populate(self) -> None:
        """``records`` clients, contacts (at those clients) and invoices (to them, with line items and payments)."""
        second = timedelta(seconds=1)
        clients = self.add_table("clients", resolution=second, unique=("name",))
        contacts = self.add_table("contacts", resolution=second)
        invoices = self.add_table("invoices", resolution=second, unique=("number",))
        rng = random.Random(f"harvest:{self.seed}")
        # Its own stream of draws, so the rest of the data stays what it was before these facts.
        legacy = random.Random(f"harvest-legacy:{self.seed}")
        factory = self.factory
        n = self.records

        rows: list[Row] = []
        created, updated = factory.timeline(n)
        for name, c, u in zip(self._company_names(n), created, updated, strict=True):
            code = rng.choices(("USD", "EUR", "GBP"), (70, 15, 15))[0]
            city, country, postcode = rng.choice(_PLACES)
            rows.append(
                {
                    "name": name,
                    "active": rng.random() < 0.9,
                    # Older accounts keep the names Harvest used before (recorded clients.xml).
                    "currency": LEGACY_CURRENCY_NAMES[code]
                    if code in LEGACY_CURRENCY_NAMES and legacy.random() < 0.3
                    else currency_name(code),
                    "currency-symbol": CURRENCIES[code][1],
                    "details": f"{rng.randint(1, 250)} {rng.choice(_STREETS)}\n{postcode} {city}\n{country}",
                    "highrise-id": None,
                    "cache-version": rng.randint(1, 40),
                    "statement-key": f"{rng.getrandbits(64):016x}",
                    "default-invoice-timeframe": None,
                    "last-invoice-kind": None,
                    "created_at": c,
                    "updated_at": u,
                }
            )
        clients.load(rows)
        ids = [row["id"] for row in rows]
        by_name = {row["name"]: row["id"] for row in rows}

        people = factory.people(n)
        contacts.load(
            {
                "client-id": by_name.get(p["company"]) or rng.choice(ids),
                "email": p["email"],
                "first-name": p["first_name"],
                "last-name": p["last_name"],
                "title": p["title"],
                "phone-office": p["phone"],
                "phone-mobile": p["mobile"],
                "fax": p["phone"] if rng.random() < 0.1 else None,
                "created_at": p["created_at"],
                "updated_at": p["updated_at"],
            }
            for p in people
        )

        invoice_rows: list[Row] = []
        for i, inv in enumerate(factory.invoices(n, ids) if ids else []):
            client = clients.get(inv["customer"])
            assert client is not None
            lines = [
                LineItem(
                    rng.choice(_LINE_KINDS),
                    rng.choice(_LINE_TEXT),
                    rng.choice(_QUANTITIES),
                    rng.choice(_PRICES),
                    taxed=rng.random() < 0.5,
                )
                for _ in range(rng.choice((1, 1, 2, 2, 3)))
            ]
            row: Row = {
                "client-id": client["id"],
                "number": str(1001 + i),
                "subject": f"{lines[0].description} for {client['name']}",
                "notes": rng.choice((None, "Thank you for your business.", "Payment by bank transfer, please.")),
                "purchase-order": rng.choice((None, None, f"PO-{rng.randint(1000, 9999)}")),
                "currency": client["currency"],
                "issued-at": inv["issued_on"],
                "due-at": inv["due_on"],
                "due-at-human-format": self._seed_terms(inv["issued_on"], inv["due_on"], legacy),
                "kind": "free_form",
                "tax": rng.choice(_TAXES),
                "tax2": None,
                "discount": None,
                "period-start": None,
                "period-end": None,
                "_lines": lines,
                "_sent": inv["status"] != "draft",
                "_closed": inv["status"] == "void",
                "_payments": [],
                "created_at": inv["created_at"],
                "updated_at": inv["updated_at"],
            }
            amount = self._totals(row).amount
            if inv["status"] == "paid" or (inv["status"] == "open" and rng.random() < 0.25):
                share = Decimal(1) if inv["status"] == "paid" else Decimal(rng.choice((25, 40, 50))) / 100
                paid = (amount * share).quantize(Decimal("0.01"))
                if paid > 0:
                    row["_payments"] = [self._payment(paid, inv["updated_at"], None)]
            invoice_rows.append(row)
        invoices.load(invoice_rows)
        self._next_number = 1001 + len(invoice_rows)

    @staticmethod
    def _seed_terms(issued: date, due: date, legacy: random.Random) -> str:
        terms = terms_for(issued, due)
        if terms == "net 30" and legacy.random() < 0.3:
            return "30 days"  # older data (shared/seeds README)
        return terms

    def _company_names(self, n: int) -> list[str]:
        pool = self.factory.companies()
        names = list(pool[:n])
        round_ = 2
        while len(names) < n:
            names.extend(f"{name} ({round_})" for name in pool[: n - len(names)])
            round_ += 1
        return names

    def _payment(self, amount: Decimal, paid_at: datetime, notes: str | None) -> dict[str, Any]:
        payment = {
            "id": self._next_payment,
            "amount": amount,
            "paid-at": _whole(paid_at),
            "notes": notes,
            "created-at": _whole(paid_at),
        }
        self._next_payment += 1
        return payment

    # -- the XML Harvest writes --------------------------------------------------------------
    def _xml(self, root_tag: str, value: Mapping[str, Any] | list[Any], *, status: int = 200) -> web.Response:
        """Typed XML the way real Harvest responses look (shared/seeds README, "Verified against
        the real systems"): datetimes typed ``dateTime`` by default, ``Z`` or ``+00:00``, nil
        elements self-closing, an empty list as Rails' ``<nil-classes type="array"/>``
        (recorded: ``fixtures/harvest/clients_empty.xml``), optionally a UTF-8 BOM."""
        if isinstance(value, list) and not value:
            body = b'<?xml version="1.0" encoding="UTF-8"?>\n<nil-classes type="array"/>'
        else:
            body = python_to_typed_xml(root_tag, value)
            if self.datetime_type != "datetime" or self.utc_offset != "Z":
                root = parse_xml(body)  # our own bytes, but defusedxml costs nothing here
                for element in root.iter():
                    if element.get("type") == "datetime":
                        element.set("type", self.datetime_type)
                        if self.utc_offset != "Z" and element.text and element.text.endswith("Z"):
                            element.text = element.text[:-1] + self.utc_offset
                body = ET.tostring(root, encoding="UTF-8", xml_declaration=True)
        if self.bom:
            body = b"\xef\xbb\xbf" + body
        return web.Response(body=body, status=status, content_type=_XML, charset="utf-8")

    def _listing(self, rows: list[Row], order: Callable[[Row], Any]) -> list[Row]:
        """Rows in the list's own order, or shuffled under ``ignore_sort`` (Harvest documents
        no order at all, so a connector must not depend on one)."""
        ordered = sorted(rows, key=order)
        if self.is_hostile("ignore_sort"):
            random.Random(f"harvest-shuffle:{len(ordered)}").shuffle(ordered)
        return ordered

    def _created(self, tag: str, collection: str, ident: int) -> web.Response:
        """``201`` with ``Location`` and no body, as Harvest answers; ``stub_create``: no
        ``Location``, only a stub body holding the id (a deliberate test switch)."""
        if self.is_hostile("stub_create"):
            stub = python_to_typed_xml(tag, {"id": ident})
            return web.Response(body=stub, status=201, content_type=_XML, charset="utf-8")
        return _empty(201, f"/{collection}/{ident}")

    def _refuse_in_200(self, what: str) -> web.Response | None:
        """``error_in_200``: the update is not made and the refusal comes with HTTP 200 (a test switch)."""
        if not self.is_hostile("error_in_200"):
            return None
        body = ET.Element("errors")
        ET.SubElement(body, "error").text = f"{what} could not be saved: the record is locked"
        return web.Response(body=ET.tostring(body, encoding="UTF-8"), status=200, content_type=_XML, charset="utf-8")

    def _privileged(self, collection: str) -> None:
        if collection in self.unprivileged:
            # Harvest answers 404, not 403, for what this user may not see.
            raise _Problem(404, f"{collection[:-1].capitalize()} not found")

    # -- auth and the shape of refusals ------------------------------------------------------
    def authenticate(self, request: web.Request) -> str | None:
        """The email of a valid Basic credential."""
        given = basic_credentials(request)
        if given is None:
            return None
        email, password = given
        ok_email = hmac.compare_digest(email.encode(), self.credentials["email"].encode())
        ok_password = hmac.compare_digest(password.encode(), self.credentials["password"].encode())
        return email if ok_email and ok_password else None

    def unauthorized(self, request: web.Request) -> web.StreamResponse:
        """401 with a Basic challenge and an XML error."""
        return _errors(
            401, ["Authentication failed: check the email and password"], {"WWW-Authenticate": 'Basic realm="Harvest"'}
        )

    def throttled(self, request: web.Request, *, status: int, retry_after: str) -> web.StreamResponse:
        """503 (Harvest's throttle) with ``Retry-After`` in seconds."""
        message = "Rate limit exceeded: at most 100 requests per 15 seconds" if status == 503 else "Too many requests"
        return _errors(status, [f"{message}; retry after {retry_after} seconds"], {"Retry-After": retry_after})

    def server_error(self, request: web.Request, *, status: int) -> web.StreamResponse:
        """An injected 5xx, as an XML error."""
        return _errors(status, ["Internal server error"])

    def describe_credentials(self) -> str:
        return f"Basic {self.credentials['email']} / {self.credentials['password']}"

    def info(self) -> dict[str, Any]:
        return {**super().info(), "page_size": self.page_size}

    # -- routes ------------------------------------------------------------------------------
    def routes(self, router: web.UrlDispatcher) -> None:
        """The routes listed in the module docstring."""
        add = self._add(router)
        add("GET", "/account/who_am_i", self.who_am_i)
        add("GET", "/clients", self.list_clients)
        add("POST", "/clients", self.create_client)
        add("GET", "/clients/{id:\\d+}", self.get_client)
        add("PUT", "/clients/{id:\\d+}", self.update_client)
        add("DELETE", "/clients/{id:\\d+}", self.delete_client)
        add("POST", "/clients/{id:\\d+}/toggle", self.toggle_client)
        add("GET", "/clients/{id:\\d+}/contacts", self.list_contacts)
        add("GET", "/contacts", self.list_contacts)
        add("POST", "/contacts", self.create_contact)
        add("GET", "/contacts/{id:\\d+}", self.get_contact)
        add("PUT", "/contacts/{id:\\d+}", self.update_contact)
        add("DELETE", "/contacts/{id:\\d+}", self.delete_contact)
        add("GET", "/invoices", self.list_invoices)
        add("POST", "/invoices", self.create_invoice)
        add("GET", "/invoices/{id:\\d+}", self.get_invoice)
        add("PUT", "/invoices/{id:\\d+}", self.update_invoice)
        add("DELETE", "/invoices/{id:\\d+}", self.delete_invoice)
        add("POST", "/invoices/{id:\\d+}/messages/{action}", self.invoice_message)
        add("GET", "/invoices/{id:\\d+}/payments", self.list_payments)
        add("POST", "/invoices/{id:\\d+}/payments", self.create_payment)

    def _add(self, router: web.UrlDispatcher) -> Callable[[str, str, Handler], None]:
        def add(method: str, path: str, handler: Handler) -> None:
            router.add_route(method, path, self._guarded(handler))

        return add

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            accept = request.headers.get("Accept", "").lower()
            if "xml" not in accept:
                if "json" in accept:
                    return _errors(406, ["This sandbox speaks XML only: send Accept: application/xml"])
                # What Harvest does with a request that does not ask for XML: the login page.
                return web.Response(status=302, headers={"Location": "/account/login"})
            try:
                return await handler(request)
            except _Problem as problem:
                return _errors(problem.status, problem.messages)

        return guarded

    # -- request helpers ---------------------------------------------------------------------
    async def _body(self, request: web.Request, tag: str, *, optional: bool = False) -> dict[str, Any]:
        raw = await request.read()
        if optional and not raw.strip():
            return {}
        if request.content_type not in (_XML, "text/xml"):
            raise _Problem(415, f"Send XML with Content-Type: application/xml (got {request.content_type or 'none'})")
        if len(raw) > _MAX_BODY:
            raise _Problem(413, "Request body is too large")
        try:
            root = parse_xml(raw)
        except MalformedResponseError as exc:
            raise _Problem(400, f"Malformed XML: {str(exc).replace('response is not', 'body is not')}") from None
        if root.tag != tag:
            raise _Problem(400, f"Expected a <{tag}> element, got <{root.tag}>")
        try:
            value = typed_xml_to_python(root)
        except MalformedResponseError as exc:
            raise _Problem(400, f"Malformed XML: {exc}") from None
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _Problem(400, f"<{tag}> must hold one element per attribute")
        return value

    def _row(self, table: str, request: web.Request, key: str = "id") -> Row:
        self._privileged(table)
        row = self.table(table).get(int(request.match_info[key]))
        if row is None:
            raise _Problem(404, f"{table[:-1].capitalize()} not found")
        return row

    def _since(self, request: web.Request) -> datetime | None:
        text = request.query.get("updated_since")
        if text is None or not text.strip():
            return None
        try:
            return parse_updated_since(text)
        except ValueError:
            raise _Problem(400, f"updated_since {text!r} is not a time like 2010-09-25 18:30 (UTC)") from None

    @staticmethod
    def _clean(
        body: Mapping[str, Any], cleaners: Mapping[str, Callable[[Any], Any]], problems: list[str]
    ) -> dict[str, Any]:
        """The attributes a body may set, cleaned; unknown and read-only ones are ignored, as Harvest does."""
        fields: dict[str, Any] = {}
        for tag, clean in cleaners.items():
            if tag not in body:
                continue
            try:
                fields[tag] = clean(body[tag])
            except ValueError as exc:
                problems.append(f"{_label(tag)} {exc}")
        return fields

    @staticmethod
    def _write(write: Callable[[], Row]) -> Row:
        try:
            return write()
        except DuplicateValue as exc:
            raise _Problem(422, f"{_label(exc.field)} has already been taken") from None

    # -- account -----------------------------------------------------------------------------
    async def who_am_i(self, request: web.Request) -> web.Response:
        """The account and user the credentials belong to."""
        return self._xml(
            "hash",
            {
                "company": {"name": "Ferryman Sandbox Co", "base-uri": str(request.url.origin()), "active": True},
                "user": {"id": 1, "email": self.credentials["email"], "admin": True, "timezone": "UTC"},
            },
        )

    # -- clients -----------------------------------------------------------------------------
    def _client_view(self, row: Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "name": row["name"],
            "active": row["active"],
            "currency": row["currency"],
            "currency-symbol": row["currency-symbol"],
            "details": row["details"],
            "highrise-id": row["highrise-id"],
            "cache-version": row["cache-version"],
            "statement-key": row["statement-key"],
            "default-invoice-timeframe": row["default-invoice-timeframe"],
            "last-invoice-kind": row["last-invoice-kind"],
            "created-at": _whole(row["created_at"]),
            "updated-at": _whole(row["updated_at"]),
        }

    def _client_fields(self, body: Mapping[str, Any], *, create: bool) -> dict[str, Any]:
        problems: list[str] = []
        fields = self._clean(
            body,
            {"name": _text, "details": _text, "currency": _text, "active": _bool, "highrise-id": _int},
            problems,
        )
        if ("name" in fields or create) and fields.get("name") is None:
            problems.append("Name can't be blank")
        if fields.get("currency") is not None:
            code = self._listed_currency(fields["currency"], problems)
            if code is not None:
                fields["currency"] = currency_name(code)
                fields["currency-symbol"] = CURRENCIES[code][1]
        if problems:
            raise _Problem(422, *problems)
        if create:
            fields.setdefault("currency", currency_name("USD"))
            fields.setdefault("currency-symbol", CURRENCIES[currency_code(fields["currency"]) or "USD"][1])
            fields.setdefault("details", None)
            fields.setdefault("highrise-id", None)
            fields["active"] = True if fields.get("active") is None else fields["active"]
            fields.update({"cache-version": 1, "default-invoice-timeframe": None, "last-invoice-kind": None})
            fields["statement-key"] = f"{self._rng.getrandbits(64):016x}"
        elif "active" in fields and fields["active"] is None:
            del fields["active"]
        return fields

    async def list_clients(self, request: web.Request) -> web.Response:
        """Every client (by name), or those updated since ``updated_since``."""
        self._privileged("clients")
        rows = self.table("clients").query(self._since(request))
        rows = self._listing(rows, lambda r: (r["name"].casefold(), r["id"]))
        return self._xml("clients", [self._client_view(r) for r in rows])

    async def get_client(self, request: web.Request) -> web.Response:
        return self._xml("client", self._client_view(self._row("clients", request)))

    async def create_client(self, request: web.Request) -> web.Response:
        table = self.table("clients")
        fields = self._client_fields(await self._body(request, "client"), create=True)
        row = self._write(lambda: table.insert(fields))
        return self._created("client", "clients", row["id"])

    async def update_client(self, request: web.Request) -> web.Response:
        table = self.table("clients")
        row = self._row("clients", request)
        fields = self._client_fields(await self._body(request, "client"), create=False)
        refused = self._refuse_in_200("Client")
        if refused is not None:
            return refused
        self._write(lambda: table.update(row["id"], fields))
        return _empty(200, f"/clients/{row['id']}")

    async def delete_client(self, request: web.Request) -> web.Response:
        row = self._row("clients", request)
        if any(inv["client-id"] == row["id"] for inv in self.table("invoices")):
            raise _Problem(400, "This client has invoices and cannot be deleted; archive it instead")
        contacts = self.table("contacts")
        for contact in [c for c in contacts if c["client-id"] == row["id"]]:
            contacts.delete(contact["id"])
        self.table("clients").delete(row["id"])
        return _empty(200)

    async def toggle_client(self, request: web.Request) -> web.Response:
        row = self._row("clients", request)
        self.table("clients").update(row["id"], {"active": not row["active"]})
        return _empty(200, f"/clients/{row['id']}")

    # -- contacts ----------------------------------------------------------------------------
    def _contact_view(self, row: Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "client-id": row["client-id"],
            "email": row["email"],
            "first-name": row["first-name"],
            "last-name": row["last-name"],
            "title": row["title"],
            "phone-office": row["phone-office"],
            "phone-mobile": row["phone-mobile"],
            "fax": row["fax"],
            "created-at": _whole(row["created_at"]),
            "updated-at": _whole(row["updated_at"]),
        }

    def _contact_fields(self, body: Mapping[str, Any], *, create: bool) -> dict[str, Any]:
        problems: list[str] = []
        text_tags = ("email", "first-name", "last-name", "title", "phone-office", "phone-mobile", "fax")
        cleaners: dict[str, Callable[[Any], Any]] = {"client-id": _int, **dict.fromkeys(text_tags, _text)}
        fields = self._clean(body, cleaners, problems)
        for tag in ("client-id", "first-name", "last-name"):
            if (create or tag in fields) and fields.get(tag) is None:
                problems.append(f"{_label(tag)} can't be blank")
        client = fields.get("client-id")
        if client is not None and client not in self.table("clients"):
            problems.append(f"Client {client} does not exist")
        email = fields.get("email")
        if email is not None and not _EMAIL.match(email):
            problems.append("Email is invalid")
        if problems:
            raise _Problem(422, *problems)
        if create:
            for tag in text_tags:
                fields.setdefault(tag, None)
        return fields

    async def list_contacts(self, request: web.Request) -> web.Response:
        """Every contact (in id order), of one client when the path names it; ``updated_since`` filters."""
        self._privileged("contacts")
        rows = self.table("contacts").query(self._since(request))
        if "id" in request.match_info:
            client = self._row("clients", request)
            rows = [r for r in rows if r["client-id"] == client["id"]]
        rows = self._listing(rows, lambda r: r["id"])
        return self._xml("contacts", [self._contact_view(r) for r in rows])

    async def get_contact(self, request: web.Request) -> web.Response:
        return self._xml("contact", self._contact_view(self._row("contacts", request)))

    async def create_contact(self, request: web.Request) -> web.Response:
        table = self.table("contacts")
        fields = self._contact_fields(await self._body(request, "contact"), create=True)
        row = table.insert(fields)
        return self._created("contact", "contacts", row["id"])

    async def update_contact(self, request: web.Request) -> web.Response:
        row = self._row("contacts", request)
        fields = self._contact_fields(await self._body(request, "contact"), create=False)
        refused = self._refuse_in_200("Contact")
        if refused is not None:
            return refused
        self.table("contacts").update(row["id"], fields)
        return _empty(200, f"/contacts/{row['id']}")

    async def delete_contact(self, request: web.Request) -> web.Response:
        row = self._row("contacts", request)
        self.table("contacts").delete(row["id"])
        return _empty(200)

    # -- invoices ----------------------------------------------------------------------------
    @staticmethod
    def _totals(row: Row) -> Any:
        return invoice_totals(row["_lines"], row["tax"], row["tax2"], row["discount"])

    def _money(self, row: Row) -> tuple[Decimal, Decimal, Decimal, str]:
        """(amount, paid, due, state) of an invoice row."""
        amount = self._totals(row).amount
        paid = sum((p["amount"] for p in row["_payments"]), Decimal("0.00"))
        due = amount - paid
        if row["_closed"]:
            state = "closed"
        elif not row["_sent"]:
            state = "draft"
        elif paid > 0 and due <= 0:
            state = "paid"
        elif paid > 0:
            state = "partial"
        else:
            state = "open"
        return amount, paid, due, state

    def _invoice_view(self, row: Row, *, detail: bool = False) -> dict[str, Any]:
        totals = self._totals(row)
        amount, _, due, state = self._money(row)
        view: dict[str, Any] = {
            "id": row["id"],
            "amount": rails_decimal(amount),
            "due-amount": rails_decimal(due),
            "due-at": row["due-at"],
            "due-at-human-format": row["due-at-human-format"],
            "period-end": row["period-end"],
            "period-start": row["period-start"],
            "client-id": row["client-id"],
            "subject": row["subject"],
            "currency": row["currency"],
            "issued-at": row["issued-at"],
            "created-by-id": 1,
            "notes": row["notes"],
            "number": row["number"],
            "purchase-order": row["purchase-order"],
            "client-key": f"{row['id'] * 7919:x}{row['client-id']:x}",
            "state": state,
            "tax": rails_decimal(row["tax"]),
            "tax2": rails_decimal(row["tax2"]),
            "tax-amount": rails_decimal(totals.tax_amount),
            "tax2-amount": rails_decimal(totals.tax2_amount),
            "discount": rails_decimal(row["discount"]),
            "discount-amount": rails_decimal(totals.discount_amount),
            "recurring-invoice-id": None,
            "estimate-id": None,
            "retainer-id": None,
            "created-at": _whole(row["created_at"]),
            "updated-at": _whole(row["updated_at"]),
        }
        if detail:
            view["csv-line-items"] = format_line_items(row["_lines"])
        return view

    def _invoice_fields(self, body: Mapping[str, Any], *, current: Row | None) -> dict[str, Any]:
        create = current is None
        problems: list[str] = []
        cleaners: dict[str, Callable[[Any], Any]] = {
            "client-id": _int,
            "number": _text,
            "subject": _text,
            "notes": _text,
            "purchase-order": _text,
            "currency": _text,
            "issued-at": _date,
            "due-at": _date,
            "due-at-human-format": _text,
            "kind": _text,
            "period-start": _date,
            "period-end": _date,
            "tax": _rate,
            "tax2": _rate,
            "discount": _rate,
        }
        fields = self._clean(body, cleaners, problems)
        if "csv-line-items" in body:
            try:
                fields["_lines"] = parse_line_items(_text(body["csv-line-items"]) or "")
            except ValueError as exc:
                problems.append(f"Line items are invalid: {exc}")
        if (create or "client-id" in fields) and fields.get("client-id") is None:
            problems.append("Client can't be blank")
        client = self.table("clients").get(fields["client-id"]) if fields.get("client-id") is not None else None
        if fields.get("client-id") is not None and client is None:
            problems.append(f"Client {fields['client-id']} does not exist")
        if fields.get("currency") is not None:
            code = self._listed_currency(fields["currency"], problems)
            if code is not None:
                fields["currency"] = currency_name(code)
        terms = fields.get("due-at-human-format")
        if terms is not None and terms not in WRITABLE_TERMS:
            problems.append(f"Due at human format {terms!r} is not included in the list")
        if "kind" in fields and fields["kind"] not in (None, "free_form", "project", "task", "people", "detailed"):
            problems.append(f"Kind {fields['kind']!r} is not included in the list")
        if problems:
            raise _Problem(422, *problems)
        fields.pop("kind", None)
        if current is not None and {"issued-at", "due-at", "due-at-human-format"} & fields.keys():
            terms = fields.get("due-at-human-format") or current["due-at-human-format"]
            due = due_from_terms(
                fields.get("issued-at", current["issued-at"]), fields.get("due-at", current["due-at"]), terms
            )
            fields["due-at"] = due or current["due-at"]
        if "number" in fields and fields["number"] is None:
            del fields["number"]  # the number cannot be blanked
        if create:
            assert client is not None
            today = utcnow().date()
            fields.setdefault("number", None)
            if fields["number"] is None:
                fields["number"] = str(self._next_number)
            fields["currency"] = fields.get("currency") or client["currency"]
            fields["issued-at"] = fields.get("issued-at") or today
            # Assumption: an invoice created without terms gets "upon receipt", which
            # overrides a due-at sent alone (only "custom" keeps due-at as sent).
            fields["due-at-human-format"] = fields.get("due-at-human-format") or "upon receipt"
            fields["due-at"] = due_from_terms(fields["issued-at"], fields.get("due-at"), fields["due-at-human-format"])
            fields["due-at"] = fields["due-at"] or fields["issued-at"]
            for tag in ("subject", "notes", "purchase-order", "tax", "tax2", "discount", "period-start", "period-end"):
                fields.setdefault(tag, None)
            fields.setdefault("_lines", [])
            fields.update({"kind": "free_form", "_sent": False, "_closed": False, "_payments": []})
        return fields

    @staticmethod
    def _listed_currency(text: str, problems: list[str]) -> str | None:
        """The ISO code of one of Harvest's listed names; anything else (a bare code, an old name) is refused."""
        if text.strip() not in _LISTED_CURRENCIES:
            problems.append(f"Currency {text!r} is not included in the list")
            return None
        return currency_code(text)

    def _note_number(self, number: str) -> None:
        if number.isdigit() and int(number) >= self._next_number:
            self._next_number = int(number) + 1

    async def list_invoices(self, request: web.Request) -> web.Response:
        """A page of invoices, newest issued first, filtered as asked."""
        query = request.query
        try:
            page = int(query.get("page", "1"))
        except ValueError:
            page = 0
        if page < 1:
            raise _Problem(400, f"page {query.get('page')!r} is not a page number (1, 2, ...)")
        self._privileged("invoices")
        rows = self.table("invoices").query(self._since(request))
        client = query.get("client")
        if client:
            if not client.isdigit():
                raise _Problem(400, f"client {client!r} is not a client id")
            rows = [r for r in rows if r["client-id"] == int(client)]
        for name, keep in (("from", lambda d, b: d >= b), ("to", lambda d, b: d <= b)):
            if query.get(name):
                try:
                    bound = datetime.strptime(query[name], "%Y%m%d").date()
                except ValueError:
                    raise _Problem(400, f"{name} {query[name]!r} is not a date YYYYMMDD") from None
                rows = [r for r in rows if keep(r["issued-at"], bound)]
        status = query.get("status")
        if status:
            if status not in _STATUSES:
                raise _Problem(400, f"status {status!r} is not one of {', '.join(_STATUSES)}")
            rows = [r for r in rows if self._status_matches(r, status)]
        rows = self._listing(rows, lambda r: (-r["issued-at"].toordinal(), -r["id"]))
        if self.is_hostile("ignore_paging"):
            return self._xml("invoices", [self._invoice_view(r) for r in rows])
        start = (page - 1) * self.page_size
        return self._xml("invoices", [self._invoice_view(r) for r in rows[start : start + self.page_size]])

    def _status_matches(self, row: Row, status: str) -> bool:
        _, _, _, state = self._money(row)
        if status == "unpaid":
            return state in ("open", "partial")
        if status == "pastdue":
            return state in ("open", "partial") and row["due-at"] < utcnow().date()
        return state == status

    async def get_invoice(self, request: web.Request) -> web.Response:
        return self._xml("invoice", self._invoice_view(self._row("invoices", request), detail=True))

    async def create_invoice(self, request: web.Request) -> web.Response:
        table = self.table("invoices")
        fields = self._invoice_fields(await self._body(request, "invoice"), current=None)
        row = self._write(lambda: table.insert(fields))
        self._note_number(row["number"])
        return self._created("invoice", "invoices", row["id"])

    async def update_invoice(self, request: web.Request) -> web.Response:
        table = self.table("invoices")
        row = self._row("invoices", request)
        fields = self._invoice_fields(await self._body(request, "invoice"), current=row)
        refused = self._refuse_in_200("Invoice")
        if refused is not None:
            return refused
        if "_lines" in fields:
            paid = sum((p["amount"] for p in row["_payments"]), Decimal("0.00"))
            new_amount = invoice_totals(
                fields["_lines"],
                fields.get("tax", row["tax"]),
                fields.get("tax2", row["tax2"]),
                fields.get("discount", row["discount"]),
            ).amount
            if paid > new_amount:
                raise _Problem(422, "Amount cannot be less than the payments already recorded")
        self._write(lambda: table.update(row["id"], fields))
        self._note_number(row["number"])
        return _empty(200, f"/invoices/{row['id']}")

    async def delete_invoice(self, request: web.Request) -> web.Response:
        row = self._row("invoices", request)
        self.table("invoices").delete(row["id"])
        return _empty(200)

    async def invoice_message(self, request: web.Request) -> web.Response:
        """Send, close, re-open or return an invoice to draft."""
        row = self._row("invoices", request)
        action = request.match_info["action"]
        if action not in _MESSAGES:
            raise _Problem(404, f"No such message action {action!r}")
        await self._body(request, "invoice-message", optional=True)
        _, paid, _, state = self._money(row)
        changes: dict[str, Any]
        if action == "mark_as_sent":
            if state != "draft":
                raise _Problem(422, "Invoice has already been sent")
            changes = {"_sent": True}
        elif action == "mark_as_closed":
            if state in ("draft", "closed"):
                raise _Problem(422, f"A {state} invoice cannot be closed")
            changes = {"_closed": True}
        elif action == "re_open":
            if state != "closed":
                raise _Problem(422, "Only a closed invoice can be re-opened")
            changes = {"_closed": False}
        else:
            if state != "open" or paid > 0:
                raise _Problem(422, "Only an open invoice without payments can go back to draft")
            changes = {"_sent": False}
        self.table("invoices").update(row["id"], changes)
        return _empty(200)

    def _payment_view(self, row: Row, payment: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "id": payment["id"],
            "invoice-id": row["id"],
            "amount": rails_decimal(payment["amount"]),
            "paid-at": payment["paid-at"],
            "notes": payment["notes"],
            "recorded-by": self.credentials["email"],
            "created-at": payment["created-at"],
            "updated-at": payment["created-at"],
        }

    async def list_payments(self, request: web.Request) -> web.Response:
        row = self._row("invoices", request)
        return self._xml("payments", [self._payment_view(row, p) for p in row["_payments"]])

    async def create_payment(self, request: web.Request) -> web.Response:
        """Record a payment: lowers ``due-amount``; the state follows (partial, paid)."""
        row = self._row("invoices", request)
        body = await self._body(request, "payment")
        problems: list[str] = []
        fields = self._clean(body, {"amount": _rate, "notes": _text}, problems)
        paid_at: datetime = utcnow()
        if body.get("paid-at") is not None:
            if isinstance(body["paid-at"], datetime):
                paid_at = body["paid-at"]
            else:
                try:
                    paid_at = parse_datetime(str(body["paid-at"]), assume_tz=UTC)
                except ValueError:
                    problems.append("Paid at is not a time")
        amount = fields.get("amount")
        if amount is None or amount <= 0:
            problems.append("Amount must be greater than 0")
        _, _, due, state = self._money(row)
        if state in ("draft", "closed"):
            problems.append(f"A payment cannot be recorded on a {state} invoice")
        elif amount is not None and amount > due:
            problems.append(f"Amount {amount} is more than the {due} due")
        if problems:
            raise _Problem(422, *problems)
        assert amount is not None
        payment = self._payment(amount, paid_at, fields.get("notes"))
        self.table("invoices").update(row["id"], {"_payments": [*row["_payments"], payment]})
        return _empty(201, f"/invoices/{row['id']}/payments/{payment['id']}")
