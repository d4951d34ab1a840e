"""``ferryman sandbox clientexec``: a loopback Clientexec REST API.

Faithful to what Clientexec documents and to what was verified against real answers
(``/work/shared/seeds/README.md``, "Verified against the real systems"): JSON over HTTP
under ``/api``, an Application Key on every request, ``429 Too Many Requests`` with a
reason body and ``Retry-After`` seconds past 200 requests a minute on hosted installs,
ticket status ``-1`` = closed, epoch ``dateSubmitted``, formatted local dates, money as
display strings, invoices with an integer ``statusenum`` (including codes such as ``-2``
that only ``billstatus`` explains), ``balancedue: null`` beside ``simplebalancedue``, the
user's postcode as ``local.zipcode``, Add User taking ``zipcode``/``organization``/
``state``/``status`` (default 0), and Get User taking an **email**, not an id.

**No update timestamp.** No documented Clientexec answer carries ``dateUpdated`` or any
field an incremental filter could use, so by default the sandbox has none either: lists
are in id order and an ``updated_since`` parameter is ignored, as unknown parameters are.
``update_filter=True`` serves an install that does have one (the connector's
``since_param`` option): every entity gains ``dateUpdated`` (epoch seconds), lists are in
``(dateUpdated, id)`` order and ``updated_since`` (inclusive) filters them. That mode is
an assumption kept for such installs, not documented behaviour.

Where Clientexec documents nothing, the sandbox serves exactly the convention the
``clientexec`` connector assumes by default (see its README)::

    GET    /api/tickets|users|invoices   ?page=N (from 1) &limit=M (1..1000, default 25)
                                         &email=<address> (users only, case-insensitive)
                                         [&updated_since=<epoch seconds>: update_filter only]
           -> {"success": true, "<resource>s": [...], "page", "limit", "total"}
    GET    /api/ticket|invoice/{id}      -> the entity, or 404 {"success": false, "message"}
    GET    /api/user/{email}             -> the user with that address (case-insensitive), or 404
    POST   /api/ticket|user|invoice      JSON or form body
           -> {"<kind>id": N, "success": true, "failure": false, "message"}
              a refused write answers HTTP 200 with success false and the reason
    PUT    /api/ticket|user|invoice/{id} changes the given fields -> {"success": true, ...}
    DELETE /api/ticket|user|invoice/{id} -> {"success": true, ...}; 404 when missing
           (the entity is gone: lists no longer show it and its GET answers 404)

The key is accepted as an ``X-API-Key`` header or an ``apikey`` query parameter (the
default key is ``sandbox-app-key``). Hosted mode (the default) limits each key to 200
requests per minute; ``--rate-limit`` changes the limit.

Entities::

    ticket   {"metadata": {id, userid, userEmail, subject, status, statusName, priority,
              ticket_type, assignedToId, dateSubmitted, dateSubmittedFormatted[, dateUpdated]},
              "comments": [{logid, authorName, authorEmail, isAdmin, createdAt, message}]}
    user     {userid, firstname, lastname, email, phone, status, date_activated[, dateUpdated],
              local: {organization, address, city, state, zipcode, country}}
    invoice  {invoiceid, customerid, billdate, duedate, amount "$1,234.56 USD", balancedue: null,
              simplebalancedue "$1,234.56 USD", billstatus, statusenum, description, note[, dateUpdated]}

``dateSubmittedFormatted`` ("2003-03-28 17:42:46"), comment ``createdAt`` ("03/28/2003
05:42:46 pm"), ``billdate``/``duedate`` ("06/14/2017") and ``date_activated``
("2013-12-31") are in the install's ``timezone`` (constructor option, default UTC).

Hostile modes (a deliberate test switch, see :data:`ferryman.sandbox.HOSTILE_MODES`):
``ignore_paging`` answers every list whole; ``ignore_sort`` answers lists in a fixed order
that is neither id nor ``(dateUpdated, id)``; ``stub_create`` answers a create with the new
id only (as text); ``error_in_200`` answers an update with HTTP 200 and Clientexec's
``success: false`` envelope and changes nothing; ``hide_deleted`` is how this sandbox
always behaves (a deleted entity vanishes from lists and its GET answers 404).
"""

from __future__ import annotations

import hmac
import random
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from aiohttp import web

from ferryman.sandbox import ALL_HOSTILE, BodyError, DuplicateValue, Row, Simulator, Table, json_response, read_fields

__all__ = ["ClientexecSimulator", "format_money"]

HOSTED_RATE_LIMIT = 200.0
TICKET_STATUS_NAMES = {"1": "Open", "2": "In Progress", "3": "Waiting on Customer", "-1": "Closed"}
PRIORITY_NAMES = {"1": "High", "2": "Medium", "3": "Low"}
TICKET_TYPES = ("General Support", "Billing", "Sales", "Technical Support")
INVOICE_STATUS = {
    -2: "not paid",  # the vendor's own invoice example: statusenum -2 with billstatus "not paid"
    -1: "draft",
    0: "not paid",
    1: "paid",
    2: "void",
    3: "refunded",
    4: "pending",
    5: "partially paid",
    6: "credited",
}
STAFF = {
    1: ("Dana Whitfield", "dana@support.example"),
    2: ("Ravi Menon", "ravi@support.example"),
    3: ("Ines Ortega", "ines@support.example"),
}
STREETS = ("High Street", "Station Road", "Main Street", "Church Lane", "Park Avenue", "Mill Road", "Harbour Way")
ITEMS = (
    "Shared hosting (annual)",
    "VPS 2 GB (monthly)",
    "Domain renewal",
    "SSL certificate",
    "Managed backup",
    "Setup fee",
)
SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}
RESOURCES = {"tickets": "ticket", "users": "user", "invoices": "invoice"}

_TICKET_FIELDS = {"subject", "message", "email", "userid", "status", "priority", "ticket_type", "assignedToId"}
_USER_FIELDS = {
    "email",
    "firstname",
    "lastname",
    "phone",
    "organization",
    "address",
    "city",
    "state",
    "zipcode",
    "country",
    "status",
}
_INVOICE_FIELDS = {"customerid", "amount", "currency", "billdate", "duedate", "description", "note", "statusenum"}


class Refused(Exception):
    """A write Clientexec refuses: HTTP 200 with ``success: false`` and this message."""


def format_money(amount: Decimal, currency: str, decimal_separator: str = ".") -> str:
    """Clientexec's display form of an amount: ``$1,234.56 USD`` (or ``€1.234,56 EUR``)."""
    sign = "-" if amount < 0 else ""
    whole, _, frac = f"{abs(amount).quantize(Decimal('0.01')):f}".partition(".")
    grouped = f"{int(whole):,}"
    if decimal_separator == ",":
        grouped = grouped.replace(",", ".")
    return f"{sign}{SYMBOLS.get(currency, '')}{grouped}{decimal_separator}{frac} {currency}"


class ClientexecSimulator(Simulator):
    """A Clientexec install on loopback (see the module docs).

    ``timezone`` is the install's timezone (formatted dates are local to it);
    ``date_format`` its date format; ``decimal_separator`` how it formats money;
    ``hosted`` (default) applies the hosted 200 requests/minute limit when no
    ``rate_limit`` is given; ``max_page_size`` bounds ``?limit=``; ``update_filter``
    serves an install with ``dateUpdated`` and an ``updated_since`` filter (an assumption:
    no documented Clientexec answer has them).
    """

    name: ClassVar[str] = "clientexec"
    default_credentials: ClassVar[dict[str, str]] = {"api_key": "sandbox-app-key"}
    default_port: ClassVar[int] = 8810
    hostile_supported: ClassVar[frozenset[str]] = ALL_HOSTILE

    def __init__(
        self,
        *,
        timezone: str = "UTC",
        date_format: str = "%m/%d/%Y",
        decimal_separator: str = ".",
        hosted: bool = True,
        page_size: int = 25,
        max_page_size: int = 1000,
        update_filter: bool = False,
        **options: Any,
    ) -> None:
        self.zone = ZoneInfo(timezone)
        self.date_format = date_format
        if decimal_separator not in (".", ","):
            raise ValueError("decimal_separator must be '.' or ','")
        self.decimal_separator = decimal_separator
        self.page_size = page_size
        self.max_page_size = max_page_size
        self.update_filter = update_filter
        if hosted and options.get("rate_limit") is None:
            options["rate_limit"] = HOSTED_RATE_LIMIT
        self._next_logid = 1
        super().__init__(**options)

    # -- data -------------------------------------------------------------------------------
    def populate(self) -> None:
        """``records`` users, tickets from those users (with comments), and invoices to them."""
        second = timedelta(seconds=1)
        users = self.add_table("users", resolution=second, unique=("email_key",))
        tickets = self.add_table("tickets", resolution=second)
        invoices = self.add_table("invoices", resolution=second)
        rng = random.Random(f"clientexec:{self.seed}")
        people = self.factory.people(self.records)
        for person in people:
            person["email_key"] = person["email"].lower()
            person["organization"] = person.pop("company")
            person["address"] = f"{rng.randint(1, 250)} {rng.choice(STREETS)}"
            person["zipcode"] = f"{rng.randint(10000, 99999)}"
            person["state"] = ""
            person["status"] = "1" if rng.random() < 0.9 else "-1"
            person.pop("mobile", None)
            person.pop("title", None)
            person["firstname"] = person.pop("first_name")
            person["lastname"] = person.pop("last_name")
        users.load(people)
        by_email = {p["email"]: p for p in people}
        ticket_rows = self.factory.tickets(self.records, [p["email"] for p in people[:5000]])
        for row in ticket_rows:
            user = by_email.get(row.pop("requester_email") or "")
            status = {"open": rng.choice(("1", "1", "2")), "pending": "3", "closed": "-1"}[row.pop("status")]
            priority = {"low": "3", "normal": "2", "high": "1", "urgent": "1"}[row.pop("priority")]
            staff = rng.choice((None, 1, 2, 3))
            created, updated = row["created_at"], row["updated_at"]
            comments = [self._comment(user, row.pop("description"), created)]
            if staff is not None and updated > created:
                reply_at = created + (updated - created) * rng.random()
                comments.append(
                    self._comment(None, "Thanks for reaching out, we are looking into it.", reply_at, staff)
                )
            row.update(
                userid=user["id"] if user else 0,
                userEmail=user["email"] if user else "",
                status=status,
                priority=priority,
                ticket_type=rng.choice(TICKET_TYPES),
                assignedToId=staff or 0,
                comments=comments,
            )
        tickets.load(ticket_rows)
        codes = {"draft": -1, "open": 0, "paid": 1, "void": 2}
        rows = self.factory.invoices(self.records, [p["id"] for p in people[:5000]])
        for row in rows:
            code = codes[row.pop("status")]
            if code == 0 and rng.random() < 0.15:
                code = 5
            elif code == 0 and rng.random() < 0.5:
                code = -2  # unpaid, as in the vendor's own example; billstatus says "not paid"
            amount: Decimal = row["amount"]
            balance = (
                amount
                if code in (-2, -1, 0)
                else (amount / 2).quantize(Decimal("0.01"))
                if code == 5
                else Decimal("0.00")
            )
            row.update(
                customerid=row.pop("customer") or 0,
                statusenum=code,
                balancedue=balance,
                description=rng.choice(ITEMS),
                note="",
            )
            row.pop("number")
        invoices.load(rows)

    def _comment(self, user: Row | None, message: str, at: datetime, staff: int | None = None) -> dict[str, Any]:
        logid = self._next_logid
        self._next_logid += 1
        if staff is not None:
            name, email = STAFF[staff]
        elif user is not None:
            name, email = f"{user['firstname']} {user['lastname']}", user["email"]
        else:
            name, email = "Guest", ""
        return {
            "logid": logid,
            "authorName": name,
            "authorEmail": email,
            "isAdmin": staff is not None,
            "createdAt": at.replace(microsecond=0),
            "message": message,
        }

    # -- formatting ---------------------------------------------------------------------------
    def _local(self, value: datetime) -> datetime:
        return value.astimezone(self.zone)

    def _date(self, value: date | None) -> str:
        return value.strftime(self.date_format) if value else ""

    def render_ticket(self, row: Row) -> dict[str, Any]:
        created: datetime = row["created_at"]
        return {
            "metadata": {
                "id": row["id"],
                "userid": row["userid"],
                "userEmail": row["userEmail"],
                "subject": row["subject"],
                "status": row["status"],
                "statusName": TICKET_STATUS_NAMES.get(row["status"], "Open"),
                "priority": row["priority"],
                "priorityName": PRIORITY_NAMES.get(row["priority"], ""),
                "ticket_type": row["ticket_type"],
                "assignedToId": row["assignedToId"],
                "dateSubmitted": int(created.timestamp()),
                "dateSubmittedFormatted": self._local(created).strftime("%Y-%m-%d %H:%M:%S"),
                **self._updated(row),
            },
            "comments": [
                {
                    **c,
                    "createdAt": self._local(c["createdAt"]).strftime(f"{self.date_format} %I:%M:%S %p").lower(),
                }
                for c in row["comments"]
            ],
        }

    def render_user(self, row: Row) -> dict[str, Any]:
        return {
            "userid": row["id"],
            "firstname": row["firstname"],
            "lastname": row["lastname"],
            "email": row["email"],
            "phone": row["phone"] or "",
            "status": row["status"],
            "date_activated": self._local(row["created_at"]).strftime("%Y-%m-%d"),
            **self._updated(row),
            "local": {
                "organization": row["organization"] or "",
                "address": row["address"] or "",
                "city": row["city"] or "",
                "state": row["state"] or "",
                "zipcode": row["zipcode"] or "",
                "country": row["country"] or "",
            },
        }

    def render_invoice(self, row: Row) -> dict[str, Any]:
        currency = row["currency"]
        return {
            "invoiceid": row["id"],
            "customerid": row["customerid"],
            "billdate": self._date(row["issued_on"]),
            "duedate": self._date(row["due_on"]),
            "amount": format_money(row["amount"], currency, self.decimal_separator),
            # As in the vendor's own example: balancedue is null, the display form is simplebalancedue.
            "balancedue": None,
            "simplebalancedue": format_money(row["balancedue"], currency, self.decimal_separator),
            "billstatus": INVOICE_STATUS[row["statusenum"]],
            "statusenum": row["statusenum"],
            "description": row["description"],
            "note": row["note"],
            **self._updated(row),
        }

    def _updated(self, row: Row) -> dict[str, int]:
        """``dateUpdated`` only where the install is configured to have one (see the module docs)."""
        return {"dateUpdated": int(row["updated_at"].timestamp())} if self.update_filter else {}

    def _renderer(self, resource: str) -> Callable[[Row], dict[str, Any]]:
        return {"tickets": self.render_ticket, "users": self.render_user, "invoices": self.render_invoice}[resource]

    # -- auth and errors ------------------------------------------------------------------------
    def authenticate(self, request: web.Request) -> str | None:
        """The Application Key from the ``X-API-Key`` header or the ``apikey`` query parameter."""
        key = self.credentials["api_key"]
        for offered in (request.headers.get("X-API-Key"), request.query.get("apikey")):
            if offered is not None and hmac.compare_digest(offered.encode(), key.encode()):
                return key
        return None

    def unauthorized(self, request: web.Request) -> web.StreamResponse:
        return json_response(
            {"success": False, "failure": True, "message": "Invalid or missing application key"}, status=401
        )

    def throttled(self, request: web.Request, *, status: int, retry_after: str) -> web.StreamResponse:
        """429 with the reason in the body and ``Retry-After`` in seconds, as Clientexec documents."""
        limit = f"{self.rate_limit:g} requests per minute" if self.rate_limit else "the request rate"
        message = (
            f"Too Many Requests: this installation allows {limit}; retry after {retry_after} seconds"
            if status == 429
            else "Service temporarily unavailable"
        )
        return json_response(
            {"success": False, "failure": True, "message": message}, status=status, headers={"Retry-After": retry_after}
        )

    def server_error(self, request: web.Request, *, status: int) -> web.StreamResponse:
        return json_response({"success": False, "failure": True, "message": "Internal server error"}, status=status)

    # -- routes --------------------------------------------------------------------------------
    def routes(self, router: web.UrlDispatcher) -> None:
        for resource, kind in RESOURCES.items():
            router.add_get(f"/api/{resource}", self._list(resource))
            router.add_post(f"/api/{kind}", self._create(resource))
            router.add_get(f"/api/{kind}/{{id}}", self._get(resource))
            router.add_put(f"/api/{kind}/{{id}}", self._update(resource))
            router.add_delete(f"/api/{kind}/{{id}}", self._delete(resource))

    def _list(self, resource: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            query = request.query
            try:
                page = _int_param(query, "page", 1, 1, None)
                limit = _int_param(query, "limit", self.page_size, 1, self.max_page_size)
                since = None
                # Without an update field there is nothing to filter on: the parameter is
                # ignored like any unknown one, and the answer is the whole list.
                if self.update_filter and query.get("updated_since", "").strip():
                    since = datetime.fromtimestamp(_int_param(query, "updated_since", 0, 0, None), UTC)
            except ValueError as exc:
                return _error(str(exc), 400)
            table = self.table(resource)
            render = self._renderer(resource)
            email = query.get("email")
            if resource == "users" and email is not None:
                row = table.lookup("email_key", email.strip().lower())
                rows = [row] if row is not None and (since is None or row["updated_at"] >= since) else []
                return json_response(
                    {
                        "success": True,
                        resource: [render(r) for r in rows],
                        "page": 1,
                        "limit": limit,
                        "total": len(rows),
                    }
                )
            every = self._ordered(table, since)
            total = len(every)
            if self.is_hostile("ignore_paging"):
                rows = every
            else:
                start = (page - 1) * limit
                rows = every[start : start + limit]
            return json_response(
                {"success": True, resource: [render(r) for r in rows], "page": page, "limit": limit, "total": total}
            )

        return handler

    def _ordered(self, table: Table, since: datetime | None) -> list[Row]:
        """The rows a list answers, in the install's order (see the module docs)."""
        rows = table.query(since) if self.update_filter else sorted(table, key=lambda r: r["id"])
        if self.is_hostile("ignore_sort"):
            # A fixed order, so that paging still covers every row once, that is neither the
            # id order nor the (dateUpdated, id) order a client may have asked for.
            rows.sort(key=lambda r: (r["id"] * 2654435761) % 4294967291)
        return rows

    def _row(self, resource: str, request: web.Request) -> Row | None:
        text = request.match_info["id"]
        return self.table(resource).get(int(text)) if text.isdigit() else None

    def _get(self, resource: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            if resource == "users":
                # Get User takes an email, not an id (verified against the real API).
                row = self.table("users").lookup("email_key", request.match_info["id"].strip().lower())
            else:
                row = self._row(resource, request)
            if row is None:
                return _not_found(resource, request)
            return json_response(self._renderer(resource)(row))

        return handler

    def _create(self, resource: str) -> Callable[[web.Request], Any]:
        kind = RESOURCES[resource]

        async def handler(request: web.Request) -> web.Response:
            try:
                fields = await read_fields(request)
                row = self._insert(resource, fields)
            except BodyError as exc:
                return _error(str(exc), 400)
            except Refused as exc:
                return json_response({f"{kind}id": 0, "success": False, "failure": True, "message": str(exc)})
            if self.is_hostile("stub_create"):
                return json_response({f"{kind}id": str(row["id"])})
            return json_response(
                {f"{kind}id": row["id"], "success": True, "failure": False, "message": f"{kind.capitalize()} created"}
            )

        return handler

    def _update(self, resource: str) -> Callable[[web.Request], Any]:
        kind = RESOURCES[resource]

        async def handler(request: web.Request) -> web.Response:
            row = self._row(resource, request)
            if row is None:
                return _not_found(resource, request)
            if self.is_hostile("error_in_200"):
                return json_response(
                    {
                        "success": False,
                        "failure": True,
                        "message": f"{kind.capitalize()} {row['id']}: this {kind} cannot be changed right now",
                    }
                )
            try:
                fields = await read_fields(request)
                changes = self._clean(resource, fields, create=False)
                self._write(lambda: self.table(resource).update(row["id"], changes))
            except BodyError as exc:
                return _error(str(exc), 400)
            except Refused as exc:
                return json_response({"success": False, "failure": True, "message": str(exc)})
            return json_response({"success": True, "failure": False, "message": f"{kind.capitalize()} updated"})

        return handler

    def _delete(self, resource: str) -> Callable[[web.Request], Any]:
        kind = RESOURCES[resource]

        async def handler(request: web.Request) -> web.Response:
            row = self._row(resource, request)
            if row is None:
                return _not_found(resource, request)
            self.table(resource).delete(row["id"])
            return json_response({"success": True, "failure": False, "message": f"{kind.capitalize()} deleted"})

        return handler

    # -- writes -----------------------------------------------------------------------------------
    def _insert(self, resource: str, fields: Mapping[str, Any]) -> Row:
        changes = self._clean(resource, fields, create=True)
        table = self.table(resource)
        if resource == "tickets":
            message = changes.pop("message")
            row = self._write(lambda: table.insert({**changes, "comments": []}))
            user = self.table("users").get(row["userid"]) if row["userid"] else None
            comment = self._comment(user, message, row["created_at"])
            if user is None:
                comment.update(authorName="Guest", authorEmail=row["userEmail"])
            row["comments"].append(comment)
            return row
        return self._write(lambda: table.insert(changes))

    def _write(self, write: Callable[[], Row]) -> Row:
        try:
            return write()
        except DuplicateValue as exc:
            if exc.field == "email_key":
                raise Refused(f"The e-mail address {exc.value} is already in use by another client") from None
            raise Refused(str(exc)) from None

    def _clean(self, resource: str, fields: Mapping[str, Any], *, create: bool) -> dict[str, Any]:
        allowed = {"tickets": _TICKET_FIELDS, "users": _USER_FIELDS, "invoices": _INVOICE_FIELDS}[resource]
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise Refused(f"Unknown field(s): {', '.join(unknown)}")
        clean = {"tickets": self._clean_ticket, "users": self._clean_user, "invoices": self._clean_invoice}[resource]
        return clean(fields, create)

    def _clean_ticket(self, fields: Mapping[str, Any], create: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if create or "subject" in fields:
            out["subject"] = _required(fields, "subject")
        if "status" in fields:
            status = str(fields["status"]).strip()
            if status not in TICKET_STATUS_NAMES:
                raise Refused(f"Invalid ticket status {status!r}")
            out["status"] = status
        elif create:
            out["status"] = "1"
        if "priority" in fields:
            priority = str(fields["priority"]).strip()
            if priority not in PRIORITY_NAMES:
                raise Refused(f"Invalid priority {priority!r} (1 high, 2 medium, 3 low)")
            out["priority"] = priority
        elif create:
            out["priority"] = "2"
        if "ticket_type" in fields:
            out["ticket_type"] = str(fields["ticket_type"] or "").strip() or TICKET_TYPES[0]
        elif create:
            out["ticket_type"] = TICKET_TYPES[0]
        if "assignedToId" in fields:
            staff = _as_int(fields["assignedToId"], "assignedToId")
            if staff and staff not in STAFF:
                raise Refused(f"No staff member with id {staff}")
            out["assignedToId"] = staff or 0
        elif create:
            out["assignedToId"] = 0
        if create:
            out["message"] = _required(fields, "message")
            users = self.table("users")
            user = None
            if fields.get("userid") not in (None, "", 0, "0"):
                user = users.get(_as_int(fields["userid"], "userid") or 0)
                if user is None:
                    raise Refused(f"No client with id {fields['userid']}")
            elif str(fields.get("email") or "").strip():
                email = str(fields["email"]).strip()
                if "@" not in email:
                    raise Refused(f"Invalid e-mail address {email!r}")
                user = users.lookup("email_key", email.lower())
                out["userEmail"] = email
            else:
                raise Refused("A ticket needs the client's userid or an e-mail address")
            out["userid"] = user["id"] if user else 0
            if user is not None:
                out["userEmail"] = user["email"]
        return out

    def _clean_user(self, fields: Mapping[str, Any], create: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("email", "firstname", "lastname"):
            if create or name in fields:
                out[name] = _required(fields, name)
        if "email" in out:
            if "@" not in out["email"] or " " in out["email"]:
                raise Refused(f"Invalid e-mail address {out['email']!r}")
            out["email_key"] = out["email"].lower()
        for name in ("phone", "organization", "address", "city", "state", "zipcode", "country"):
            if name in fields or create:
                out[name] = str(fields.get(name) or "").strip() or None
        if "status" in fields:
            out["status"] = str(fields["status"])
        elif create:
            out["status"] = "0"  # Add User's documented default
        return out

    def _clean_invoice(self, fields: Mapping[str, Any], create: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if create or "customerid" in fields:
            customer = _as_int(fields.get("customerid"), "customerid")
            if not customer or self.table("users").get(customer) is None:
                raise Refused(f"No client with id {fields.get('customerid')!r}")
            out["customerid"] = customer
        if create or "amount" in fields:
            try:
                amount = Decimal(str(fields.get("amount", "")).strip())
            except InvalidOperation:
                raise Refused(f"Invalid amount {fields.get('amount')!r}: send a plain number like 1234.56") from None
            if not amount.is_finite() or amount != amount.quantize(Decimal("0.01")):
                raise Refused(f"Invalid amount {fields.get('amount')!r}")
            out["amount"] = amount.quantize(Decimal("0.01"))
        if "currency" in fields or create:
            currency = str(fields.get("currency") or "USD").strip()
            if len(currency) != 3 or not currency.isupper():
                raise Refused(f"Invalid currency {currency!r}")
            out["currency"] = currency
        if "statusenum" in fields:
            code = _as_int(fields["statusenum"], "statusenum")
            if code not in INVOICE_STATUS:
                raise Refused(f"Invalid statusenum {fields['statusenum']!r}")
            out["statusenum"] = code
        elif create:
            out["statusenum"] = 0
        for name, column in (("billdate", "issued_on"), ("duedate", "due_on")):
            if name in fields:
                text = str(fields[name] or "").strip()
                try:
                    out[column] = datetime.strptime(text, self.date_format).date() if text else None
                except ValueError:
                    raise Refused(f"Invalid {name} {text!r}: use the format {self.date_format}") from None
            elif create:
                out[column] = datetime.now(self.zone).date() if name == "billdate" else None
        for name in ("description", "note"):
            if name in fields or create:
                out[name] = str(fields.get(name) or "")
        if "amount" in out or "statusenum" in out:
            # The balance follows the amount and status, as in Clientexec itself.
            out["balancedue"] = self._balance(out, create)
        return out

    def _balance(self, out: dict[str, Any], create: bool) -> Decimal:
        code = out.get("statusenum", 0)
        amount = out.get("amount", Decimal("0.00"))
        if code in (1, 2, 3, 6):
            return Decimal("0.00")
        if code == 5:
            return (amount / 2).quantize(Decimal("0.01"))
        return amount


# -- helpers ---------------------------------------------------------------------------------------
def _error(message: str, status: int) -> web.Response:
    return json_response({"success": False, "failure": True, "message": message}, status=status)


def _not_found(resource: str, request: web.Request) -> web.Response:
    kind = RESOURCES[resource]
    return _error(f"{kind.capitalize()} {request.match_info['id']} not found", 404)


def _required(fields: Mapping[str, Any], name: str) -> str:
    text = str(fields.get(name) or "").strip()
    if not text:
        raise Refused(f"The field {name} is required")
    return text


def _as_int(value: Any, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        raise Refused(f"Invalid {name} {value!r}") from None


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int | None) -> int:
    text = query.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {text!r}") from None
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be between {low} and {high}" if high else f"{name} must be >= {low}")
    return value
