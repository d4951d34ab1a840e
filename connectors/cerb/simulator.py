"""``ferryman sandbox cerb``: a loopback Cerb REST API (the records API, Cerb 8.2+).

Faithful to what Cerb documents, what its REST front controller does, and what a real
Cerb 10.4.10 was seen to do (the seeds README, "Verified against the real systems"; each
point has a test in ``tests/connectors/test_cerb_real.py``):

Routes (``{type}`` is ``ticket``, ``contact`` or ``org``; ``.json`` only)::

    GET    /rest/records/{type}/{id}.json             one record dictionary
    POST   /rest/records/{type}/create.json           fields[...]=...  (form-encoded)
    PUT    /rest/records/{type}/{id}.json             fields[...]=...  (only the given fields change)
    PATCH  /rest/records/{type}/upsert.json           query=...&fields[...]=...
    DELETE /rest/records/{type}/{id}.json             removes the record for good
    GET    /rest/records/{type}/search.json?q=&page=&limit=   (POST with a form body too)
    GET    /rest/workers/me.json                      the worker the credentials belong to

Envelope: every answer is a flat dictionary with ``__status``, ``__version`` and
``__build``, keys sorted. Success: the record's keys (``id``, fields, ``_context``,
``_label``, ``*__context`` placeholders, ``url``), or for a search ``results`` (a list),
``total``, ``count``, ``page`` (from 1) and ``limit`` (clamped to 1..500, default 10).
Errors come back with **HTTP 200**::

    {"__status": "error", "__error": "ERROR_NOT_FOUND", "message": "Record #5 not found", ...}

``ERROR_NOT_FOUND`` (no such record; also an upsert whose query matches more than one
record, as Cerb does), ``ERROR_PARAM_INVALID`` (a field Cerb refuses), ``ERROR_PARAM_REQUIRED``
(upsert without ``query``). Only authentication failures use a status, 401, with
``{"__status": "error", "message": "..."}``. A token whose scope does not cover a record
type (``unscoped=``) gets HTTP 200 with ``__status: error`` and **no** ``__error`` code.

Records, as real Cerb 10.4 keeps them:

- tickets: there is no bucket 0 (``Failed to look up bucket_id: 0``); no ``bucket_id`` puts
  a ticket in its group's inbox (group 1's inbox is bucket 1); a bucket of another group
  moves the ticket to that group. A ticket PUT (``status=deleted`` included) leaves
  ``updated`` alone unless it sends ``fields[updated]=<epoch>``. Reopening keeps
  ``closed``. ``num_messages`` and ``elapsed_response_first`` change without the ticket.
- contacts: rendered without ``email`` and ``created_at``; ``expand=email_address`` (search
  and get) adds the address record (``email_address``...); the id is a string.
  ``fields[created_at]`` answers ``'created_at' is not an editable field.`` and an empty
  ``fields[email]`` on update ``Failed to lookup address: ``.

Auth: ``Authorization: Bearer <token>`` (OAuth2 access token), or the legacy
``Cerb-Auth: <access_key>:<md5 signature>`` with a ``Date`` (or ``X-Date``) less than
600 s from the server's clock, verified as Cerb does (see ``_auth.py``). ``clock_offset``
moves the server's clock to rehearse a skewed client.

Quick-search queries (``q`` and upsert ``query``): ``field:value`` and ``field:"quoted
value"`` terms, ANDed; ``updated:"<from> to <to>"`` and ``created:...`` ranges (inclusive,
whole seconds; each end ISO 8601 with ``Z`` or an offset, a naive one read in the worker's
timezone ``worker_timezone``, epoch seconds, ``now``, or ``-3 days``; a date with fractional
seconds finds nothing); ``id:5`` or ``id:[1,2,3]``; text filters (tickets: ``subject``,
``mask``, ``status``; contacts: ``email``, ``first_name``, ``last_name``; orgs: ``name``,
``city``, ``country``) match case-insensitively, the whole value when quoted (``*`` a
wildcard) and as a prefix when not. Inside ``"..."`` there are no escapes: a quote ends at
the next quote. Contacts' ``email:"..."`` is a full-text *phrase* over the addresses the
search indexer has seen (:meth:`CerbSimulator.run_indexer`); ``email:(email:"...")`` is the
address record's exact filter. ``sort:updated`` (``-`` for descending, ``sort:updated,id``
accepted), default by id; ties broken by id. Unknown filters, unknown sort fields, invalid
dates and free text are ignored, not refused. A page past the end answers the last page.

Hostile modes (a deliberate test switch, not Cerb behaviour; see
:data:`ferryman.sandbox.HOSTILE_MODES`): ``ignore_paging``, ``ignore_sort``,
``stub_create`` (``{"id": "12", "_context": ...}``), ``error_in_200`` (an update answers
Cerb's error envelope and changes nothing), ``hide_deleted`` (tickets in ``status:deleted``
vanish from searches; GET still answers them), and the base class's ``garble_*``.

Data: ``records`` tickets and contacts, and orgs for the companies those contacts work at
(at most a few hundred). About a fifth share their whole-second ``updated`` with
neighbours; a few tickets are ``deleted`` (Cerb's recycle bin status).

Fault injection beyond the common ones: ``POST /__sandbox/errors`` with
``{"count": 2, "code": "ERROR", "message": "..."}`` makes the next API answers that
error, with HTTP 200 (Cerb's way); also :meth:`CerbSimulator.inject_errors`.
"""

from __future__ import annotations

import fnmatch
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web

from ferryman.sandbox import ALL_HOSTILE, Row, Simulator, Table, bearer_token, json_response
from ferryman.timeutil import from_epoch, parse_datetime

from ._auth import sign

__all__ = ["CerbSimulator"]

VERSION = "10.4.0"
BUILD = 2024061201
MAX_SKEW = 600  # seconds, as Cerb's _validateRfcDate
CONTEXTS = {"ticket": "cerberusweb.contexts.ticket", "contact": "cerberusweb.contexts.contact"}
CONTEXTS["org"] = "cerberusweb.contexts.org"
TYPES = tuple(CONTEXTS)
GROUPS = {1: "Support", 2: "Sales", 3: "Billing"}
# bucket id -> (group id, name). There is no bucket 0: each group's inbox is a real bucket
# (group 1's inbox is bucket 1 in a stock Cerb 10.4).
BUCKETS = {1: (1, "Inbox"), 2: (2, "Inbox"), 3: (3, "Inbox"), 4: (1, "Escalations"), 5: (2, "Leads")}
INBOX = {group: bucket for bucket, (group, name) in BUCKETS.items() if name == "Inbox"}
WORKERS = {1: "Milo Dvorak", 2: "Janey Youve", 3: "Karl Kwan", 4: "Ned Nordstrom"}
TICKET_STATUSES = ("open", "waiting", "closed", "deleted")
STREETS = ("Harbour Road", "Mill Lane", "Station Street", "Queen's Avenue", "Rue de la Paix", "Hauptstraße")
SECOND = timedelta(seconds=1)

# Cerb's quick search has no escapes inside "...": a quote ends at the next quote.
_TOKEN = re.compile(r'(-?[A-Za-z_.]+):(\((?:[^()"]|"[^"]*")*\)|"[^"]*"?|\[[^\]]*\]|\S+)|("[^"]*"?|\S+)')
_RELATIVE = re.compile(r"^([+-]?\d+)\s*(second|minute|hour|day|week)s?(?:\s+ago)?$", re.IGNORECASE)
_ID_PATH = r"{id:[^/]+}.json"


class ApiError(Exception):
    """An error Cerb reports inside a 200 answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- fields ----------------------------------------------------------------------------------
Cleaner = Callable[[str], Any]


def _text(value: str) -> str | None:
    text = value.strip()
    return text or None


def _int(name: str, low: int = 0, high: int | None = None) -> Cleaner:
    def clean(value: str) -> int:
        text = value.strip()
        if text == "":
            return 0
        if not re.fullmatch(r"-?\d+", text):
            raise ApiError("ERROR_PARAM_INVALID", f"'{name}' must be an integer.")
        number = int(text)
        if number < low or (high is not None and number > high):
            raise ApiError("ERROR_PARAM_INVALID", f"'{name}' must be between {low} and {high}.")
        return number

    return clean


def _stamp(name: str) -> Cleaner:
    def clean(value: str) -> datetime | None:
        text = value.strip()
        if text in ("", "0"):
            return None
        if not text.isdigit():
            raise ApiError("ERROR_PARAM_INVALID", f"'{name}' must be a Unix timestamp (seconds since 1970 UTC).")
        return from_epoch(int(text))

    return clean


def _email(value: str) -> str | None:
    text = value.strip()
    if not text:
        return None
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", text):
        raise ApiError("ERROR_PARAM_INVALID", f"'email' is not a valid email address: {text}")
    return text


def _choice(name: str, allowed: Iterable[str]) -> Cleaner:
    options = tuple(allowed)

    def clean(value: str) -> str:
        text = value.strip().lower()
        if text not in options:
            raise ApiError("ERROR_PARAM_INVALID", f"'{name}' must be one of: {', '.join(options)}.")
        return text

    return clean


# writable field -> cleaner; the stored key is the same unless the table owns it
SCHEMAS: dict[str, dict[str, Cleaner]] = {
    "ticket": {
        "subject": _text,
        "mask": _text,
        "status": _choice("status", TICKET_STATUSES),
        "importance": _int("importance", 0, 100),
        "group_id": _int("group_id", 0),
        "bucket_id": _int("bucket_id", 0),
        "org_id": _int("org_id", 0),
        "owner_id": _int("owner_id", 0),
        "created": _stamp("created"),
        "closed": _stamp("closed"),
        # accepted on a ticket PUT, and the only way such a PUT moves `updated`
        "updated": _stamp("updated"),
    },
    "contact": {
        "first_name": _text,
        "last_name": _text,
        "email": _email,
        "title": _text,
        "phone": _text,
        "mobile": _text,
        "org_id": _int("org_id", 0),
        "location": _text,
        "language": _text,
        "timezone": _text,
        "gender": _text,
    },
    "org": {
        "name": _text,
        "street": _text,
        "city": _text,
        "province": _text,
        "postal": _text,
        "country": _text,
        "phone": _text,
        "website": _text,
        "created": _stamp("created"),
    },
}
REQUIRED = {"ticket": ("subject", "group_id"), "contact": ("first_name",), "org": ("name",)}
# fields that hold the table-owned created_at
CREATED_FIELD = {"ticket": "created", "org": "created"}
# fields Cerb renders but refuses to write, with its words
NOT_EDITABLE = {"contact": ("created_at",), "org": (), "ticket": ()}
TEXT_FILTERS = {
    "ticket": ("subject", "mask", "status"),
    "contact": ("email", "first_name", "last_name"),
    "org": ("name", "city", "country"),
}


def _epoch(value: datetime | None) -> int:
    return int(value.timestamp()) if value is not None else 0


def _mask(id: int) -> str:
    letters = "".join(chr(65 + (id * k + 7) % 26) for k in (3, 5, 11))
    return f"{letters}-{10000 + (id * 7919) % 90000}-{100 + id % 900}"


# -- quick search ----------------------------------------------------------------------------
@dataclass
class Query:
    """A parsed quick-search query: predicates over rows, an updated lower bound, a sort."""

    predicates: list[Callable[[Row], bool]]
    updated_from: datetime | None
    sort: list[tuple[str, bool]]  # (row key, descending)


def _unquote(value: str) -> tuple[str, bool]:
    """A filter value without its quotes (no escapes: a backslash is a backslash), and
    whether it was quoted."""
    if value.startswith('"'):
        return value[1:-1] if len(value) >= 2 and value.endswith('"') else value[1:], True
    return value, False


def _instant(text: str, now: datetime, zone: tzinfo) -> datetime | None:
    """A date of a range filter; ``None`` when Cerb would not understand it (it ignores those)."""
    raw = text.strip()
    lowered = raw.lower()
    if lowered in ("now", "today"):
        return now if lowered == "now" else now.replace(hour=0, minute=0, second=0, microsecond=0)
    if lowered in ("big bang", "0"):
        return from_epoch(0)
    if re.fullmatch(r"\d+", raw):
        return from_epoch(int(raw))
    match = _RELATIVE.match(raw)
    if match:
        amount = int(match[1])
        if raw.lower().endswith("ago"):
            amount = -abs(amount)
        return now + timedelta(**{f"{match[2].lower()}s": amount})
    try:
        # a date without a zone is read in the API worker's timezone, as Cerb does
        return parse_datetime(raw, assume_tz=zone)
    except ValueError:
        return None


def _floor(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def _never(row: Row) -> bool:
    return False


def parse_query(
    kind: str, text: str, now: datetime, *, zone: tzinfo = UTC, indexed: Callable[[Row], str | None] | None = None
) -> Query:
    """Parse the quick-search subset described in the module docstring.

    Like Cerb, what it does not understand (unknown filters and sort fields, invalid dates,
    free text) is ignored rather than refused. ``indexed`` gives the address the full-text
    index holds for a contact (``None``: not indexed yet), for ``email:"..."``.
    """
    query = Query([], None, [])
    for match in _TOKEN.finditer(text or ""):
        if match[3] is not None:
            continue  # free text: ignored (see the module docstring)
        field, raw = match[1].lower(), match[2]
        if raw.startswith("("):
            inner = raw[1:-1]
            if kind == "contact" and field == "email":
                query.predicates.append(_deep_email(inner))
            continue  # deep searches on other links: not simulated, ignored
        value, quoted = _unquote(raw)
        if field == "sort":
            for part in value.split(","):
                name = part.strip().lstrip("-+")
                if name not in ("id", "updated", "created", *TEXT_FILTERS[kind]):
                    continue  # an unknown sort field is silently ignored
                key = {"updated": "updated_at", "created": "created_at"}.get(name, name)
                query.sort.append((key, part.strip().startswith("-")))
        elif field in ("updated", "created"):
            low_text, sep, high_text = value.partition(" to ")
            if re.search(r"\d:\d\d\.\d", value):
                query.predicates.append(_never)  # fractional seconds: Cerb finds nothing
                continue
            low = _instant(low_text, now, zone)
            high = _instant(high_text, now, zone) if sep else None
            if low is None or (sep and high is None):
                continue  # an invalid date: the filter is ignored
            low = _floor(low)
            high = _floor(high) if high is not None else None
            key = f"{field}_at"
            if field == "updated":
                query.updated_from = low if query.updated_from is None else max(low, query.updated_from)
            query.predicates.append(_between(key, low, high))
        elif field == "id":
            ids = {int(v) for v in re.findall(r"\d+", value)}
            query.predicates.append(_id_in(ids))
        elif kind == "contact" and field == "email" and quoted:
            query.predicates.append(_phrase(value, indexed))
        elif field in TEXT_FILTERS[kind]:
            query.predicates.append(_text_match(field, value, quoted))
    return query


def _between(key: str, low: datetime, high: datetime | None) -> Callable[[Row], bool]:
    def test(row: Row) -> bool:
        stamp = row.get(key)
        if stamp is None:
            return False
        stamp = _floor(stamp)
        return stamp >= low and (high is None or stamp <= high)

    return test


def _id_in(ids: set[int]) -> Callable[[Row], bool]:
    return lambda row: row["id"] in ids


def _text_match(field: str, value: str, quoted: bool) -> Callable[[Row], bool]:
    """Quoted: the whole value, ``*`` a wildcard; unquoted: a prefix. Case-insensitive."""
    wanted = value.lower()
    pattern = wanted if quoted else wanted + "*"
    wild = "*" in pattern

    def test(row: Row) -> bool:
        have = row.get(field)
        if have is None:
            return False
        text = str(have).lower()
        return fnmatch.fnmatchcase(text, pattern) if wild else text == wanted

    return test


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^0-9a-z]+", text.lower()) if w]


def _phrase(value: str, indexed: Callable[[Row], str | None] | None) -> Callable[[Row], bool]:
    """``email:"x"`` on contacts: a full-text phrase over the *indexed* address, so
    ``doe@acme.example`` matches ``john.doe@acme.example`` and a new address matches nothing."""
    wanted = _words(value)

    def test(row: Row) -> bool:
        address = indexed(row) if indexed is not None else row.get("email")
        if not address or not wanted:
            return False
        words = _words(address)
        n = len(wanted)
        return any(words[i : i + n] == wanted for i in range(len(words) - n + 1))

    return test


def _deep_email(inner: str) -> Callable[[Row], bool]:
    """``email:(email:"x")``: the address record's own filter, exact and case-insensitive,
    straight from the database (no index involved)."""
    tests: list[Callable[[Row], bool]] = []
    for match in _TOKEN.finditer(inner):
        if match[1] is not None and match[1].lower() in ("email", "address"):
            value, quoted = _unquote(match[2])
            tests.append(_text_match("email", value, quoted))
    return lambda row: bool(tests) and all(t(row) for t in tests)


# -- the simulator -----------------------------------------------------------------------------
class CerbSimulator(Simulator):
    """Cerb's records API over loopback (see the module docstring)."""

    name: ClassVar[str] = "cerb"
    default_port: ClassVar[int] = 8814
    default_credentials: ClassVar[dict[str, str]] = {
        "token": "sandbox-token",
        "access_key": "sandbox-access",
        "secret_key": "sandbox-secret",
    }

    hostile_supported: ClassVar[frozenset[str]] = ALL_HOSTILE

    def __init__(
        self,
        *,
        clock_offset: float = 0.0,
        worker_timezone: str = "America/New_York",
        unscoped: Iterable[str] = (),
        **options: Any,
    ) -> None:
        self.clock_offset = clock_offset
        #: the API worker's timezone: a search date without a zone is read in it
        self.worker_timezone = ZoneInfo(worker_timezone)
        #: record types the token's scope does not cover (answered 200 without an __error code)
        self.unscoped: set[str] = set(unscoped)
        self._errors: list[tuple[str, str]] = []
        #: contact id -> the address the full-text index holds (the search indexer's last run)
        self._indexed: dict[int, str] = {}
        self._next_address = 101
        #: how many searches asked for a page past the end (answered with the last page)
        self.pages_past_end = 0
        super().__init__(**options)

    # -- data -----------------------------------------------------------------------------------
    def populate(self) -> None:
        """Orgs from the companies of ``records`` people, those people as contacts, and tickets."""
        factory = self.factory
        rng = factory.rng
        clock = self.server_time  # writes are stamped by the (possibly skewed) server clock
        orgs = self.add_table("org", resolution=SECOND, clock=clock)
        contacts = self.add_table("contact", resolution=SECOND, unique=("_email",), clock=clock)
        tickets = self.add_table("ticket", resolution=SECOND, clock=clock)
        people = factory.people(self.records)
        firsts: dict[str, dict[str, Any]] = {}
        for person in people:
            firsts.setdefault(person["company"], person)
        names = sorted(firsts)
        created, updated = factory.timeline(len(names))
        org_rows = []
        for name, c, u in zip(names, created, updated, strict=True):
            person = firsts[name]
            domain = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            org_rows.append(
                {
                    "name": name,
                    "street": f"{rng.randint(1, 240)} {rng.choice(STREETS)}",
                    "city": person["city"],
                    "province": None,
                    "postal": f"{rng.randint(10000, 99999)}",
                    "country": person["country"],
                    "phone": factory.phone(),
                    "website": f"https://www.{domain}.example",
                    "created_at": c,
                    "updated_at": u,
                }
            )
        orgs.load(org_rows)
        org_ids = {row["name"]: row["id"] for row in org_rows}
        contact_rows = []
        for person in people:
            contact_rows.append(
                {
                    "first_name": person["first_name"],
                    "last_name": person["last_name"],
                    "email": person["email"],
                    "_email": person["email"].lower(),
                    "title": person["title"],
                    "phone": person["phone"],
                    "mobile": person["mobile"],
                    "org_id": org_ids[person["company"]] if rng.random() < 0.85 else 0,
                    "location": f"{person['city']}, {person['country']}",
                    "language": "en_US",
                    "timezone": None,
                    "gender": None,
                    "created_at": person["created_at"],
                    "updated_at": person["updated_at"],
                }
            )
        contacts.load(contact_rows)
        for row in contact_rows:
            self._new_address(row)
        self.run_indexer()
        by_email = {row["email"]: row for row in contact_rows}
        emails = [p["email"] for p in people[:5000]]
        ticket_rows = []
        for n, row in enumerate(factory.tickets(self.records, emails)):
            requester = by_email.get(row["requester_email"] or "")
            status = {"pending": "waiting"}.get(row["status"], row["status"])
            if rng.random() < 0.03:
                status = "deleted"
            group = rng.choice(tuple(GROUPS))
            ticket_rows.append(
                {
                    "subject": row["subject"],
                    "status": status,
                    "importance": {"low": 25, "normal": 50, "high": 75, "urgent": 100}[row["priority"]],
                    "group_id": group,
                    "bucket_id": INBOX[group],
                    "num_messages": 1 + n % 4,
                    "org_id": requester["org_id"] if requester else 0,
                    "owner_id": rng.choice((0, 0, *WORKERS)),
                    "closed": row["updated_at"] if status == "closed" else None,
                    "created_at": row["created_at"],
                    "updated_at": row["updated_at"],
                }
            )
        tickets.load(ticket_rows)
        for ticket in ticket_rows:
            ticket["mask"] = _mask(ticket["id"])

    # -- auth -----------------------------------------------------------------------------------
    def server_now(self) -> float:
        """The server's clock in epoch seconds (``clock_offset`` moves it)."""
        return time.time() + self.clock_offset

    def server_time(self) -> datetime:
        """The server's clock as an aware UTC datetime."""
        return datetime.fromtimestamp(self.server_now(), UTC)

    def _auth_problem(self, request: web.Request) -> tuple[str | None, str]:
        """``(credential, "")`` when the request may proceed, else ``(None, why)``."""
        if request.headers.get("Authorization"):
            token = bearer_token(request)
            if token is not None and hmac.compare_digest(token.encode(), self.credentials["token"].encode()):
                return "token", ""
            return None, "The resource owner or authorization server denied the request."
        signature = request.headers.get("Cerb-Auth") or request.headers.get("Cerb5-Auth")
        if not signature:
            return None, "Unauthorized request"
        date = request.headers.get("X-Date") or request.headers.get("Date") or ""
        try:
            parsed = parsedate_to_datetime(date)
            sent = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        except (TypeError, ValueError, IndexError):
            return None, "Access denied! (Invalid timestamp)"
        if not -MAX_SKEW < self.server_now() - sent < MAX_SKEW:
            return None, "Access denied! (Invalid timestamp)"
        access_key = signature.partition(":")[0]
        if not hmac.compare_digest(access_key.encode(), self.credentials["access_key"].encode()):
            return None, "Access denied! (Invalid credentials: access key)"
        return access_key, ""  # the checksum needs the body: checked by the route wrapper

    def authenticate(self, request: web.Request) -> str | None:
        """The credential name (``token`` or the access key), ``None`` when refused."""
        return self._auth_problem(request)[0]

    def unauthorized(self, request: web.Request) -> web.StreamResponse:
        """401 with Cerb's error body."""
        return _refusal(self._auth_problem(request)[1])

    def throttled(self, request: web.Request, *, status: int, retry_after: str) -> web.StreamResponse:
        """429/503 with ``Retry-After`` and a Cerb-shaped body."""
        message = "Too many requests" if status == 429 else "Service unavailable"
        return json_response(
            {"__status": "error", "__error": "ERROR", "message": message},
            status=status,
            headers={"Retry-After": retry_after},
        )

    def server_error(self, request: web.Request, *, status: int) -> web.StreamResponse:
        """What PHP answers when it falls over: a status and an HTML page."""
        return web.Response(status=status, text="<html><body><h1>Internal Server Error</h1></body></html>")

    def describe_credentials(self) -> str:
        """Both ways in, for the start-up line."""
        c = self.credentials
        return f"bearer token: {c['token']}; Cerb-Auth access key: {c['access_key']}, secret key: {c['secret_key']}"

    # -- fault injection ------------------------------------------------------------------------
    def inject_errors(self, count: int, code: str = "ERROR", message: str = "An unexpected error occurred.") -> None:
        """Answer the next ``count`` API requests with a Cerb error inside HTTP 200."""
        self._errors.extend([(code, message)] * count)

    async def _admin_errors(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read() or b"{}")
            self.inject_errors(int(body.get("count", 1)), str(body.get("code", "ERROR")), str(body.get("message", "")))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response({"pending": len(self._errors)})

    # -- routes ---------------------------------------------------------------------------------
    def routes(self, router: web.UrlDispatcher) -> None:
        """The records API and ``workers/me`` (see the module docstring)."""
        base = "/rest/records/{type}"
        api = self._api
        router.add_post("/__sandbox/errors", self._admin_errors)
        router.add_get("/rest/workers/me.json", api(self.me))
        router.add_get(f"{base}/search.json", api(self.search))
        router.add_post(f"{base}/search.json", api(self.search))
        router.add_post(f"{base}/create.json", api(self.create))
        router.add_patch(f"{base}/upsert.json", api(self.upsert))
        router.add_get(f"{base}/{_ID_PATH}", api(self.retrieve))
        router.add_put(f"{base}/{_ID_PATH}", api(self.update))
        router.add_delete(f"{base}/{_ID_PATH}", api(self.delete))

    def _api(
        self, handler: Callable[[web.Request, dict[str, str]], Awaitable[dict[str, Any]]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Verify a Cerb-Auth checksum, parse the form body, turn ApiError into Cerb's 200 answer."""

        async def serve(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            payload = raw.decode("utf-8", "replace")
            signed = request.headers.get("Cerb-Auth") or request.headers.get("Cerb5-Auth")
            if signed and not request.headers.get("Authorization"):
                date = request.headers.get("X-Date") or request.headers.get("Date") or ""
                path, _, query = request.raw_path.partition("?")
                expected = sign(request.method, date, path, query, payload, self.credentials["secret_key"])
                if not hmac.compare_digest(signed.partition(":")[2].encode(), expected.encode()):
                    return _refusal("Access denied! (Invalid credentials: checksum)")
            if self._errors:
                code, message = self._errors.pop(0)
                return _answer({"__status": "error", "__error": code, "message": message})
            form = dict(request.query)
            if raw and request.content_type == "application/x-www-form-urlencoded":
                form.update(parse_qsl(payload, keep_blank_values=True))
            kind = request.match_info.get("type")
            if kind in self.unscoped:
                # Real Cerb 10.4: a token without the scope gets HTTP 200 and no __error code.
                return _answer({"__status": "error", "message": f"Your token does not grant the scope api:{kind}"})
            try:
                if kind is not None and kind not in TYPES:
                    raise ApiError("ERROR_NOT_FOUND", f"Unknown record type '{kind}'.")
                body = await handler(request, form)
            except ApiError as exc:
                return _answer({"__status": "error", "__error": exc.code, "message": exc.message})
            return _answer({"__status": "success", **body})

        return serve

    # -- handlers -------------------------------------------------------------------------------
    async def me(self, request: web.Request, form: dict[str, str]) -> dict[str, Any]:
        """The worker behind the credentials."""
        return {"_context": "cerberusweb.contexts.worker", "id": 1, "_label": WORKERS[1], "is_superuser": 1}

    async def retrieve(self, request: web.Request, form: dict[str, str]) -> dict[str, Any]:
        """``GET /records/{type}/{id}.json`` (a deleted ticket still answers, with its status)."""
        kind = request.match_info["type"]
        row = self._row(kind, request.match_info["id"])
        if row is None:
            raise ApiError("ERROR_NOT_FOUND", f"Invalid record {CONTEXTS[kind]} #{request.match_info['id']}")
        return self.render(kind, row, request, _expand(form))

    async def search(self, request: web.Request, form: dict[str, str]) -> dict[str, Any]:
        """``GET|POST /records/{type}/search.json?q=&page=&limit=``."""
        kind = request.match_info["type"]
        limit = min(500, max(1, _php_int(form.get("limit"), 10)))
        page = max(1, _php_int(form.get("page"), 1))
        rows = self._matches(kind, form.get("q", ""))
        if self.is_hostile("hide_deleted"):
            rows = [row for row in rows if row.get("status") != "deleted"]
        if self.is_hostile("ignore_sort"):
            rows = sorted(rows, key=lambda row: (row["id"] * 7919) % 104729)  # any order but the asked one
        if self.is_hostile("ignore_paging"):
            chunk = rows
        else:
            # Real Cerb: a page past the end answers the last page again.
            last = max(1, -(-len(rows) // limit))
            self.pages_past_end += page > last
            start = (min(page, last) - 1) * limit
            chunk = rows[start : start + limit]
        expand = _expand(form)
        return {
            "results": [self.render(kind, row, request, expand) for row in chunk],
            "total": len(rows),
            "count": len(chunk),
            "page": page,
            "limit": limit,
        }

    async def create(self, request: web.Request, form: dict[str, str]) -> dict[str, Any]:
        """``POST /records/{type}/create.json``."""
        kind = request.match_info["type"]
        return self._created(kind, self._insert(kind, _fields(form)), request, form)

    async def update(self, request: web.Request, form: dict[str, str]) -> dict[str, Any]:
        """``PUT /records/{type}/{id}.json``: only the given fields change."""
        kind = request.match_info["type"]
        row = self._row(kind, request.match_info["id"])
        if row is None:
            raise ApiError("ERROR_NOT_FOUND", f"Record #{request.match_info['id']} not found")
        if self.is_hostile("error_in_200"):
            raise ApiError("ERROR_PARAM_INVALID", f"Record #{row['id']} could not be saved: the worker lacks access.")
        return self.render(kind, self._update(kind, row, _fields(form)), request, _expand(form))

    async def upsert(self, request: web.Request, form: dict[str, str]) -> dict[str, Any]:
        """``PATCH /records/{type}/upsert.json``: 0 matches create, 1 updates, more is an error."""
        kind = request.match_info["type"]
        query = form.get("query", "")
        if not query.strip():
            raise ApiError("ERROR_PARAM_REQUIRED", "The 'query' parameter is required.")
        matches = self._matches(kind, query)
        if len(matches) > 1:
            raise ApiError("ERROR_NOT_FOUND", "An upsert query must match exactly one or zero records.")
        fields = _fields(form)
        if matches:
            if self.is_hostile("error_in_200"):
                raise ApiError("ERROR_PARAM_INVALID", f"Record #{matches[0]['id']} could not be saved.")
            return self.render(kind, self._update(kind, matches[0], fields), request, _expand(form))
        return self._created(kind, self._insert(kind, fields), request, form)

    async def delete(self, request: web.Request, form: dict[str, str]) -> dict[str, Any]:
        """``DELETE /records/{type}/{id}.json``: gone for good."""
        kind = request.match_info["type"]
        row = self._row(kind, request.match_info["id"])
        if row is None:
            raise ApiError("ERROR_NOT_FOUND", f"Record #{request.match_info['id']} not found")
        self.table(kind).delete(row["id"])
        if kind == "contact":
            self._indexed.pop(row["id"], None)
        return {}

    def _created(self, kind: str, row: Row, request: web.Request, form: dict[str, str]) -> dict[str, Any]:
        if self.is_hostile("stub_create"):
            return {"id": str(row["id"]), "_context": CONTEXTS[kind]}  # a stub: the id and little else
        return self.render(kind, row, request, _expand(form))

    # -- the search index -----------------------------------------------------------------------
    def run_indexer(self) -> None:
        """What Cerb's search indexer job does: full-text ``email:"..."`` searches see every
        contact's address as it is now (until this runs, new or changed addresses are unseen)."""
        self._indexed = {row["id"]: row["email"] for row in self.table("contact") if row.get("email")}

    def _indexed_address(self, row: Row) -> str | None:
        return self._indexed.get(row["id"])

    def _new_address(self, row: Row) -> None:
        """Give a contact's address its own id (Cerb keeps addresses as records of their own)."""
        if row.get("email"):
            row["_address_id"] = self._next_address
            self._next_address += 1
        else:
            row["_address_id"] = 0

    # -- internals ------------------------------------------------------------------------------
    def _row(self, kind: str, id_text: str) -> Row | None:
        return self.table(kind).get(int(id_text)) if id_text.isdigit() else None

    def _matches(self, kind: str, text: str) -> list[Row]:
        query = parse_query(kind, text, self.server_time(), zone=self.worker_timezone, indexed=self._indexed_address)
        table = self.table(kind)
        rows = [r for r in table.query(since=query.updated_from) if all(p(r) for p in query.predicates)]
        if query.sort[:1] == [("updated_at", False)] and all(key == "id" for key, _ in query.sort[1:]):
            return rows  # the table's own (updated, id) order
        rows.sort(key=lambda r: r["id"])  # ties in any other sort: by id
        for key, descending in reversed(query.sort):
            rows.sort(key=_sort_by(key), reverse=descending)
        return rows

    def _clean(self, kind: str, fields: dict[str, str], *, creating: bool) -> dict[str, Any]:
        schema = SCHEMAS[kind]
        clean: dict[str, Any] = {}
        for name, value in fields.items():
            if name in NOT_EDITABLE[kind]:
                raise ApiError("ERROR_PARAM_INVALID", f"'{name}' is not an editable field.")
            if name not in schema:
                raise ApiError("ERROR_PARAM_INVALID", f"'{name}' is not a valid field.")
            clean[name] = schema[name](value)
        if kind == "ticket":
            self._place_ticket(clean)
        org = clean.get("org_id")
        if org and org not in self.table("org"):
            raise ApiError("ERROR_PARAM_INVALID", f"'org_id' must be a valid organization (no org #{org}).")
        owner = clean.get("owner_id")
        if owner and owner not in WORKERS:
            raise ApiError("ERROR_PARAM_INVALID", f"'owner_id' must be a valid worker (no worker #{owner}).")
        if kind == "contact" and "email" in clean:
            if not clean["email"] and not creating:
                raise ApiError("ERROR_PARAM_INVALID", "Failed to lookup address: ")
            clean["_email"] = clean["email"].lower() if clean["email"] else None
        return clean

    @staticmethod
    def _place_ticket(clean: dict[str, Any]) -> None:
        """Cerb 10.4: no bucket 0; no bucket means the group's inbox; a bucket of another
        group moves the ticket to that group without a word."""
        if "group_id" in clean and clean["group_id"] not in GROUPS:
            raise ApiError("ERROR_PARAM_INVALID", f"Failed to look up group_id: {clean['group_id']}")
        if "bucket_id" in clean:
            bucket = clean["bucket_id"]
            if bucket not in BUCKETS:
                raise ApiError("ERROR_PARAM_INVALID", f"Failed to look up bucket_id: {bucket}")
            clean["group_id"] = BUCKETS[bucket][0]
        elif "group_id" in clean:
            clean["bucket_id"] = INBOX[clean["group_id"]]

    def _check_unique(self, kind: str, clean: dict[str, Any], id: int | None) -> None:
        if kind == "contact" and clean.get("_email"):
            holder = self.table("contact").lookup("_email", clean["_email"])
            if holder is not None and holder["id"] != id:
                raise ApiError(
                    "ERROR_PARAM_INVALID",
                    f"The email address '{clean['email']}' is already assigned to contact #{holder['id']}.",
                )

    def _insert(self, kind: str, fields: dict[str, str]) -> Row:
        clean = self._clean(kind, fields, creating=True)
        for name in REQUIRED[kind]:
            if not clean.get(name):
                raise ApiError("ERROR_PARAM_INVALID", f"The '{name}' field is required.")
        self._check_unique(kind, clean, None)
        created = clean.pop(CREATED_FIELD[kind], None) if kind in CREATED_FIELD else None
        clean.pop("updated", None)
        defaults: dict[str, Any] = {name: None for name in SCHEMAS[kind]}
        defaults.pop(CREATED_FIELD.get(kind, ""), None)
        defaults.pop("updated", None)
        if kind == "ticket":
            defaults |= {"status": "open", "importance": 50, "org_id": 0, "owner_id": 0, "num_messages": 1}
        elif kind == "contact":
            defaults |= {"org_id": 0, "_email": None}
        table = self.table(kind)
        row = table.insert({**defaults, **clean})
        if created is not None:
            row["created_at"] = created  # Cerb lets an import keep its creation date
        if kind == "ticket":
            row["mask"] = row["mask"] or _mask(row["id"])
            self._ticket_status(row, clean)
        elif kind == "contact":
            self._new_address(row)
        return row

    def _update(self, kind: str, row: Row, fields: dict[str, str]) -> Row:
        clean = self._clean(kind, fields, creating=False)
        for name in REQUIRED[kind]:
            if name in clean and not clean[name]:
                raise ApiError("ERROR_PARAM_INVALID", f"The '{name}' field is required.")
        self._check_unique(kind, clean, row["id"])
        created = clean.pop(CREATED_FIELD[kind], None) if kind in CREATED_FIELD else None
        table = self.table(kind)
        if kind == "ticket":
            updated = self._update_ticket(row, clean)
        else:
            email_before = row.get("email")
            updated = table.update(row["id"], clean)
            if kind == "contact" and updated.get("email") != email_before:
                self._new_address(updated)
        if created is not None:
            updated["created_at"] = created
        return updated

    def _update_ticket(self, row: Row, clean: dict[str, Any]) -> Row:
        """Real Cerb 10.4: a ticket PUT through the records API leaves ``updated`` alone
        (deleting by status included) unless the PUT sets ``fields[updated]`` itself."""
        stamp = clean.pop("updated", None)
        table = self.table("ticket")
        was = row["status"]
        if stamp is None:
            row.update(clean)  # tickets have no unique index and the (updated, id) order is unchanged
        else:
            row = table.update(row["id"], clean)
            _restamp(table, row, stamp)
        self._ticket_status(row, clean, was)
        return row

    def _ticket_status(self, row: Row, clean: dict[str, Any], was: str | None = None) -> None:
        # Reopening keeps `closed` (real Cerb 10.4); closing stamps it unless given.
        if "closed" in clean:
            row["closed"] = clean["closed"]
        elif clean.get("status") == "closed" and was != "closed":
            row["closed"] = _floor(self.server_time())

    def render(self, kind: str, row: Row, request: web.Request, expand: frozenset[str] = frozenset()) -> dict[str, Any]:
        """A record as Cerb's flat dictionary."""
        base = f"{request.scheme}://{request.host}"
        out: dict[str, Any] = {"_context": CONTEXTS[kind], "id": row["id"]}
        if kind == "ticket":
            created = _epoch(row["created_at"])
            out |= {
                "_label": f"[#{row['mask']}] {row['subject']}",
                "mask": row["mask"],
                "subject": row["subject"] or "",
                "status": row["status"],
                "importance": row["importance"],
                "group_id": row["group_id"],
                "group__context": "cerberusweb.contexts.group",
                "bucket_id": row["bucket_id"],
                "bucket__context": "cerberusweb.contexts.bucket",
                "org_id": row["org_id"] or 0,
                "org__context": CONTEXTS["org"],
                "owner_id": row["owner_id"] or 0,
                "owner__context": "cerberusweb.contexts.worker",
                "created": created,
                "updated": _epoch(row["updated_at"]),
                "closed": _epoch(row.get("closed")),
                # volatile: they change with the clock and with every message, not with the ticket
                "num_messages": row.get("num_messages") or 1,
                "elapsed_response_first": max(0, int(self.server_now()) - created),
                "url": f"{base}/profiles/ticket/{row['mask']}",
            }
        elif kind == "contact":
            label = " ".join(p for p in (row["first_name"], row["last_name"]) if p)
            # Real Cerb 10.4: no email and no created_at unless asked for; the id is a string.
            out["id"] = str(row["id"])
            out |= {name: row.get(name) or "" for name in SCHEMAS["contact"] if name != "email"}
            out |= {
                "_label": label,
                "email__context": "cerberusweb.contexts.address",
                "email_id": row.get("_address_id") or 0,
                "org_id": row["org_id"] or 0,
                "org__context": CONTEXTS["org"],
                "updated_at": _epoch(row["updated_at"]),
                "url": f"{base}/profiles/contact/{row['id']}",
            }
            if "email_address" in expand or "email_" in expand:
                out |= {
                    "email__label": row.get("email") or "",
                    "email_address": row.get("email") or "",
                    "email_is_banned": 0,
                    "email_is_defunct": 0,
                }
            if "created_at" in expand:
                out["created_at"] = _epoch(row["created_at"])
        else:
            out |= {name: row.get(name) or "" for name in SCHEMAS["org"] if name != "created"}
            out |= {
                "_label": row["name"],
                "created": _epoch(row["created_at"]),
                "updated": _epoch(row["updated_at"]),
                "url": f"{base}/profiles/org/{row['id']}",
            }
        return out


# -- helpers ---------------------------------------------------------------------------------
def _fields(form: dict[str, str]) -> dict[str, str]:
    """``fields[name]=value`` pairs of a form as ``{name: value}``."""
    out: dict[str, str] = {}
    for key, value in form.items():
        match = re.fullmatch(r"fields\[([^\]]+)\]", key)
        if match:
            out[match[1]] = value
    return out


def _expand(form: dict[str, str]) -> frozenset[str]:
    """The keys of ``expand=a,b``."""
    return frozenset(part.strip() for part in form.get("expand", "").split(",") if part.strip())


def _restamp(table: Table, row: Row, stamp: datetime) -> None:
    """Set a row's ``updated_at`` to ``stamp`` (a ticket PUT with ``fields[updated]``)."""
    if _floor(row["updated_at"]) != stamp:
        table.set_updated(row["id"], stamp)


def _sort_by(key: str) -> Callable[[Row], tuple[bool, Any]]:
    def value(row: Row) -> tuple[bool, Any]:
        have = row.get(key)
        return (have is None, have if have is not None else 0)

    return value


def _php_int(value: str | None, default: int) -> int:
    """PHP's ``intval`` of a request variable: leading digits, else 0; absent: the default."""
    if value is None:
        return default
    match = re.match(r"\s*([+-]?\d+)", value)
    return int(match[1]) if match else 0


def _answer(body: dict[str, Any]) -> web.Response:
    """Cerb's envelope: version keys added, keys sorted, HTTP 200 whatever happened."""
    out = {"__build": BUILD, "__version": VERSION, **body}
    return json_response(dict(sorted(out.items())))


def _refusal(message: str) -> web.Response:
    return json_response({"__status": "error", "message": message}, status=401)
