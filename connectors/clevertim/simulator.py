"""``ferryman sandbox clevertim``: a loopback Clevertim CRM API.

Faithful to Clevertim's documentation and to the vendor's own client library
(``clevertim-api-py``, whose payloads are in ``shared/fixtures/clevertim``): resources
under ``/api`` (``/contact``, ``/company``, ``/case``), HTTP Basic with the API token as
user and any password (``X`` by convention), JSON in and out, and the envelope on every
answer::

    {"status": "OK", "content": [obj, ...]}          200
    {"status": "ERROR", "error": "..."}              400 bad request, 404 not found
                                                     ("No such contact."), 500 the JSON
                                                     cannot be parsed, 501 not supported

Routes (``{r}`` is ``contact``, ``company`` or ``case``)::

    GET    /api/{r}        every object, in id order: the real API "reads one entry or all
                           entries", so page, limit, modified_since, email and cn are ignored
    GET    /api/{r}/{id}   content: [the object]
    POST   /api/{r}        content: [the new object, with its id]
    PUT    /api/{r}/{id}   replaces the object (fields left out are emptied);
                           content: [{"id", "lc"}] (contacts, companies) or [{"id"}] (cases)
    DELETE /api/{r}/{id}   {"status": "OK"} without content; the object is gone (lists
                           leave it out, GET answers 404)

``paging=True`` switches on the convention the ``clevertim`` connector's ``paging``
option assumes (Clevertim documents none of it): ``?page=N`` (from 1) ``&limit=M``
(1..500, default 100) ``&modified_since=<ISO 8601, inclusive>`` ``&email=`` (contacts)
``&cn=`` (companies), answered in ``(lm, id)`` order. Any other method on these paths
answers 501, and operations can be switched off to answer 501 as well: the
``unsupported`` constructor option (``{"POST /contact"}``) or, on a running sandbox,
``POST /__sandbox/unsupported`` with ``{"operations": ["POST /contact"]}``.

Hostile modes (a deliberate test switch, see :data:`ferryman.sandbox.HOSTILE_MODES`):
``ignore_paging`` and ``hide_deleted`` are what the real API does anyway (no-ops unless
``paging=True``, where ``ignore_paging`` answers the whole filtered list); ``ignore_sort``
answers newest id first; ``stub_create`` answers a POST like a PUT (``id`` and ``lc``);
``error_in_200`` answers a PUT with HTTP 200 and ``{"status": "ERROR"}``, changing nothing.

The default token is ``sandbox-token``. Objects (as the vendor's client library has them)::

    contact  id, fn, ln, title, companyId, email[], website[], phones[{type, no}],
             smids[{smid, type}], address, city, postcode, region, country, description,
             ctype (a one-letter code), cf{custom field id: value}, tags[], gid, lc,
             is_company: false, ao, lm
    company  id, cn, email[], website[], phones[], smids[], address, city, postcode,
             region, country, description, cf{}, tags[], gid, lc, is_company: true, ao, lm
    case     id, name, description, leadUser, cust, tags[], cf{}, gid, ao, lm

Phone types are ``Work``, ``Home``, ``Mobile``, ``Fax``, ``Pager``. ``ao`` (added on),
``lm`` (last modified) and ``lc`` (last contacted; kept by Clevertim, never written) are
UTC like ``2017-01-02T08:22:12Z``.
"""

from __future__ import annotations

import hmac
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar

import orjson
from aiohttp import web

from ferryman.sandbox import ALL_HOSTILE, Row, Simulator, basic_credentials, json_response
from ferryman.timeutil import parse_datetime

__all__ = ["ClevertimSimulator"]

RESOURCES = {"contact": "contacts", "company": "companies", "case": "cases"}
NOUNS = {"contacts": "contact", "companies": "company", "cases": "case"}
USERS = (1, 2, 3)
#: one-letter contact types: the letters are an assumption (real data shows one letter,
#: Clevertim documents no list)
CTYPES = ("L", "P", "C", "O")
#: the phone types Clevertim's own client library accepts
PHONE_TYPES = ("Work", "Home", "Mobile", "Fax", "Pager")
SOCIAL = ("Twitter", "LinkedIn", "Skype", "Github", "Facebook")
#: the sandbox account's custom fields, by id: {table: {id: (name, values)}}
CUSTOM_FIELDS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "contacts": {"1": ("Source", ("Website", "Referral", "Trade show", "Cold call", "Newsletter"))},
    "companies": {"2": ("Industry", ())},
    "cases": {"3": ("Priority", ("Low", "Normal", "High", "Urgent")), "4": ("Stage", ())},
}
TAGS = ("vip", "newsletter", "renewal", "reseller", "priority", "follow-up")
STREETS = ("High Street", "Station Road", "Main Street", "Church Lane", "Park Avenue", "Mill Road")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

_LINKS = {"tasks", "opportunities", "cases", "files", "lfiles"}  # ids of other Clevertim objects
_PARTY = {"address", "city", "postcode", "region", "country", "description", "cf", "tags", "email", "website"}
_PARTY |= {"phones", "smids", "gid"} | _LINKS
FIELDS = {
    "contacts": _PARTY | {"fn", "ln", "title", "companyId", "ctype"},
    "companies": _PARTY | {"cn"},
    "cases": {"name", "description", "leadUser", "cust", "tags", "cf", "gid", "tasks", "files", "lfiles"},
}
#: set by Clevertim: accepted in a body (its own client PUTs back what it read) and ignored
_SERVER_OWNED = frozenset({"id", "ao", "lm", "is_company", "lc", "cphoto"})
#: kept across a PUT, which replaces everything else
_KEPT = ("lc", "cphoto")
_LISTS = frozenset({"email", "website", "phones", "smids", "tags"} | _LINKS)
#: stored only when a body carries them
_OPTIONAL = frozenset({"smids", "gid"} | _LINKS)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """Answered 400 with the message in ``error``."""


def _ok(content: list[Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"status": "OK"}
    if content is not None:
        body["content"] = content
    return json_response(body)


def _error(message: str, status: int) -> web.Response:
    return json_response({"status": "ERROR", "error": message}, status=status)


def _stamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


class ClevertimSimulator(Simulator):
    """Clevertim CRM on loopback (see the module docs).

    ``unsupported`` lists operations (``"METHOD /resource"``) that answer 501; ``paging``
    switches on the assumed paging and ``modified_since`` convention, with
    ``page_size``/``max_page_size`` the default and largest ``limit``.
    """

    name: ClassVar[str] = "clevertim"
    default_credentials: ClassVar[dict[str, str]] = {"api_token": "sandbox-token"}
    default_port: ClassVar[int] = 8813
    hostile_supported: ClassVar[frozenset[str]] = ALL_HOSTILE

    def __init__(
        self,
        *,
        unsupported: Iterable[str] = (),
        paging: bool = False,
        page_size: int = 100,
        max_page_size: int = 500,
        **options: Any,
    ) -> None:
        self.unsupported: set[str] = {_operation(op) for op in unsupported}
        self.paging = paging
        self.page_size = page_size
        self.max_page_size = max_page_size
        super().__init__(**options)

    def describe_credentials(self) -> str:
        return f"api token: {self.credentials['api_token']} (HTTP Basic user, password X)"

    # -- data ---------------------------------------------------------------------------------------
    def populate(self) -> None:
        """``records`` companies, people working at them, and cases for those people."""
        second = timedelta(seconds=1)
        companies = self.add_table("companies", resolution=second)
        contacts = self.add_table("contacts", resolution=second)
        cases = self.add_table("cases", resolution=second)
        rng = random.Random(f"clevertim:{self.seed}")
        factory = self.factory
        pool = factory.companies()
        created, updated = factory.timeline(self.records)
        company_rows = []
        for i in range(self.records):
            name = pool[i % len(pool)] + ("" if i < len(pool) else f" #{i // len(pool) + 1}")
            domain = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".example"
            city, country, region = rng.choice(
                (("London", "GB", "GB-LND"), ("Berlin", "DE", "DE-BE"), ("Austin", "US", "US-TX"), ("Lyon", "FR", ""))
            )
            row: dict[str, Any] = {
                "cn": name,
                "email": [f"info@{domain}"],
                "phones": [{"type": "Work", "no": factory.phone()}],
                "website": [f"https://www.{domain}"],
                "address": f"{rng.randint(1, 250)} {rng.choice(STREETS)}",
                "city": city,
                "postcode": f"{rng.randint(10000, 99999)}",
                "region": region,
                "country": country,
                "cf": {"2": name.split()[1] if " " in name else "Other"},
                "tags": rng.sample(TAGS, rng.randint(0, 2)),
                "created_at": created[i],
                "updated_at": updated[i],
            }
            if rng.random() < 0.3:
                row["smids"] = [{"smid": re.sub(r"[^a-z0-9]+", "", name.lower()), "type": "LinkedIn"}]
            if rng.random() < 0.5:
                row["lc"] = _stamp(created[i])
            company_rows.append(row)
        companies.load(company_rows)
        company_ids = [row["id"] for row in company_rows] or [None]
        people = factory.people(self.records)
        for person in people:
            first, last = person.pop("first_name"), person.pop("last_name")
            addresses = [person.pop("email")]
            if rng.random() < 0.3:
                addresses.append(f"{addresses[0].split('@')[0]}@home.example")
            entries = [{"type": "Work", "no": person.pop("phone")}]
            mobile = person.pop("mobile")
            if mobile:
                entries.append({"type": "Mobile", "no": mobile})
            if rng.random() < 0.2:
                entries.append({"type": rng.choice(("Home", "Fax", "Pager")), "no": factory.phone()})
            person.pop("company")
            person.update(
                fn=first,
                ln=last,
                title=person.pop("title") or "",
                companyId=rng.choice(company_ids),
                email=addresses,
                phones=entries,
                address=f"{rng.randint(1, 250)} {rng.choice(STREETS)}",
                postcode=f"{rng.randint(10000, 99999)}",
                region=rng.choice(("", "GB-LND", "US-CA", "DE-BY")),
                ctype=rng.choice(CTYPES),
                cf={"1": rng.choice(CUSTOM_FIELDS["contacts"]["1"][1])},
                tags=rng.sample(TAGS, rng.randint(0, 3)),
                gid=rng.choice((0, 0, 0, 5)),
            )
            if rng.random() < 0.3:
                person["smids"] = [{"smid": f"{first}{last}".lower(), "type": rng.choice(SOCIAL)}]
            if rng.random() < 0.5:
                person["lc"] = _stamp(person["updated_at"])
        contacts.load(people)
        by_email = {p["email"][0]: p["id"] for p in people}
        case_rows = factory.tickets(self.records, list(by_email)[:5000])
        for row in case_rows:
            row["name"] = row.pop("subject")
            row["cust"] = by_email.get(row.pop("requester_email") or "")
            row["leadUser"] = rng.choice(USERS)
            row["cf"] = {"3": row.pop("priority").capitalize(), "4": row.pop("status").capitalize()}
            row["tags"] = rng.sample(TAGS, rng.randint(0, 2))
        cases.load(case_rows)

    # -- rendering ------------------------------------------------------------------------------------
    def render(self, table: str, row: Row) -> dict[str, Any]:
        out: dict[str, Any] = {"id": row["id"]}
        for name in sorted(FIELDS[table] | set(_KEPT)):
            if name in row:
                out[name] = row[name]
        if table != "cases":
            out["is_company"] = table == "companies"
        out["ao"] = _stamp(row["created_at"])
        out["lm"] = _stamp(row["updated_at"])
        return out

    def stub(self, table: str, row: Row) -> dict[str, Any]:
        """What Clevertim's PUT answers: the id, and ``lc`` for contacts and companies."""
        out: dict[str, Any] = {"id": row["id"]}
        if table != "cases" and "lc" in row:
            out["lc"] = row["lc"]
        return out

    # -- auth and errors --------------------------------------------------------------------------------
    def authenticate(self, request: web.Request) -> str | None:
        """HTTP Basic: the token is the user; the password is not checked (``X`` by convention)."""
        offered = basic_credentials(request)
        token = self.credentials["api_token"]
        if offered is not None and hmac.compare_digest(offered[0].encode(), token.encode()):
            return token
        return None

    def unauthorized(self, request: web.Request) -> web.StreamResponse:
        response = _error("Authentication failed: unknown or missing API token", 401)
        response.headers["WWW-Authenticate"] = 'Basic realm="Clevertim API"'
        return response

    def throttled(self, request: web.Request, *, status: int, retry_after: str) -> web.StreamResponse:
        response = _error("Too many requests" if status == 429 else "Service unavailable", status)
        response.headers["Retry-After"] = retry_after
        return response

    def server_error(self, request: web.Request, *, status: int) -> web.StreamResponse:
        return _error("Internal server error", status)

    # -- routes ---------------------------------------------------------------------------------------------
    def routes(self, router: web.UrlDispatcher) -> None:
        for resource, table in RESOURCES.items():
            collection, item = f"/api/{resource}", f"/api/{resource}/{{id}}"
            router.add_get(collection, self._guard(resource, self._lister(table)))
            router.add_post(collection, self._guard(resource, self._creator(table)))
            router.add_get(item, self._guard(resource, self._getter(table)))
            router.add_put(item, self._guard(resource, self._putter(table)))
            router.add_delete(item, self._guard(resource, self._deleter(table)))
            router.add_route("*", collection, self._not_supported)
            router.add_route("*", item, self._not_supported)
        router.add_post("/__sandbox/unsupported", self._admin_unsupported)
        router.add_get("/__sandbox/unsupported", self._admin_unsupported)

    def _guard(self, resource: str, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if f"{request.method} /{resource}" in self.unsupported:
                return await self._not_supported(request)
            return await handler(request)

        return guarded

    async def _not_supported(self, request: web.Request) -> web.StreamResponse:
        path = request.path.removeprefix("/api")
        return _error(f"Operation not supported: {request.method} {path}", 501)

    async def _admin_unsupported(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                body = orjson.loads(await request.read() or b"{}")
                operations = body.get("operations", []) if isinstance(body, dict) else None
                if not isinstance(operations, list):
                    raise ValueError('operations must be a list like ["POST /contact"]')
                self.unsupported = {_operation(op) for op in operations}
            except (orjson.JSONDecodeError, ValueError) as exc:
                return json_response({"error": str(exc)}, status=400)
        return json_response({"unsupported": sorted(self.unsupported)})

    def _lister(self, table_name: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            table = self.table(table_name)
            if not self.paging:
                rows = sorted(table, key=lambda r: r["id"], reverse=self.is_hostile("ignore_sort"))
                return _ok([self.render(table_name, r) for r in rows])
            return self._paged(table_name, request)

        return handler

    def _paged(self, table_name: str, request: web.Request) -> web.StreamResponse:
        """The assumed paging and ``modified_since`` convention (``paging=True``)."""
        query = request.query
        try:
            page = _int_param(query, "page", 1, 1, None)
            limit = _int_param(query, "limit", self.page_size, 1, self.max_page_size)
            since = None
            if query.get("modified_since", "").strip():
                try:
                    since = parse_datetime(query["modified_since"])
                except ValueError as exc:
                    raise BadRequest(f"modified_since: {exc} (use ISO 8601 UTC like 2017-01-02T08:22:12Z)") from None
        except BadRequest as exc:
            return _error(str(exc), 400)
        table = self.table(table_name)
        email = query.get("email", "").strip().lower() if table_name == "contacts" else ""
        name = query.get("cn", "").strip().lower() if table_name == "companies" else ""
        rows = table.query(since)
        if email or name:
            rows = [
                r
                for r in rows
                if (email and email in (str(e).lower() for e in r.get("email") or []))
                or (name and str(r.get("cn") or "").lower() == name)
            ]
        if self.is_hostile("ignore_sort"):
            rows = sorted(rows, key=lambda r: r["id"], reverse=True)
        if not self.is_hostile("ignore_paging"):
            rows = rows[(page - 1) * limit : page * limit]
        return _ok([self.render(table_name, r) for r in rows])

    def _row(self, table_name: str, request: web.Request) -> Row | None:
        text = request.match_info["id"]
        return self.table(table_name).get(int(text)) if text.isdigit() else None

    def _getter(self, table_name: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            row = self._row(table_name, request)
            if row is None:
                return _error(f"No such {NOUNS[table_name]}.", 404)
            return _ok([self.render(table_name, row)])

        return handler

    def _creator(self, table_name: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            body = await self._json(request)
            if isinstance(body, web.Response):
                return body
            try:
                fields = self._clean(table_name, body)
            except BadRequest as exc:
                return _error(str(exc), 400)
            row = self.table(table_name).insert(fields)
            if self.is_hostile("stub_create"):
                return _ok([self.stub(table_name, row)])
            return _ok([self.render(table_name, row)])

        return handler

    def _putter(self, table_name: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            row = self._row(table_name, request)
            if row is None:
                return _error(f"No such {NOUNS[table_name]}.", 404)
            body = await self._json(request)
            if isinstance(body, web.Response):
                return body
            try:
                fields = self._clean(table_name, body)
            except BadRequest as exc:
                return _error(str(exc), 400)
            if self.is_hostile("error_in_200"):
                return json_response({"status": "ERROR", "error": f"Could not save the {NOUNS[table_name]}."})
            # PUT replaces: whatever the body leaves out is gone, but for what Clevertim keeps.
            kept = {name: row[name] for name in _KEPT if name in row}
            row = self.table(table_name).replace(row["id"], {**fields, **kept})
            return _ok([self.stub(table_name, row)])

        return handler

    def _deleter(self, table_name: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            row = self._row(table_name, request)
            if row is None:
                return _error(f"No such {NOUNS[table_name]}.", 404)
            self.table(table_name).delete(row["id"])
            return _ok()

        return handler

    # -- validation --------------------------------------------------------------------------------------
    async def _json(self, request: web.Request) -> dict[str, Any] | web.Response:
        raw = await request.read()
        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            return _error(f"Your JSON cannot be parsed: {exc}", 500)
        if not isinstance(body, dict):
            return _error("Bad request: the body must be a JSON object", 400)
        return body

    def _clean(self, table_name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(body) - FIELDS[table_name] - _SERVER_OWNED)
        if unknown:
            raise BadRequest(f"Bad request: unknown field(s) {', '.join(unknown)}")
        out: dict[str, Any] = {}
        for name in FIELDS[table_name]:
            value = body.get(name)
            if name in _OPTIONAL and value is None:
                continue
            if name in _LISTS:
                out[name] = self._list(name, value)
            elif name == "cf":
                out[name] = self._custom_fields(table_name, value)
            elif name in ("companyId", "leadUser", "cust"):
                out[name] = self._reference(name, value)
            elif name == "gid":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise BadRequest("Bad request: gid must be a group id")
                out[name] = value
            else:
                if value is not None and not isinstance(value, str | int | float):
                    raise BadRequest(f"Bad request: {name} must be text")
                out[name] = "" if value is None else str(value)
        if table_name == "contacts" and not (out["fn"].strip() or out["ln"].strip()):
            raise BadRequest("Bad request: a contact needs a first name (fn) or a last name (ln)")
        if table_name == "contacts" and len(out["ctype"]) > 1:
            raise BadRequest(f"Bad request: invalid contact type {out['ctype']!r}")
        if table_name == "companies" and not out["cn"].strip():
            raise BadRequest("Bad request: a company needs a name (cn)")
        if table_name == "cases" and not out["name"].strip():
            raise BadRequest("Bad request: a case needs a name")
        return out

    def _custom_fields(self, table_name: str, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise BadRequest("Bad request: cf must be an object of custom field values")
        known = CUSTOM_FIELDS[table_name]
        for field_id in value:
            if str(field_id) not in known:
                raise BadRequest(f"Bad request: no custom field with id {field_id!r} for {table_name}")
        return {str(k): v for k, v in value.items()}

    def _list(self, name: str, value: Any) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise BadRequest(f"Bad request: {name} must be a list")
        if name == "phones":
            for entry in value:
                if not (
                    isinstance(entry, dict) and isinstance(entry.get("no"), str) and isinstance(entry.get("type"), str)
                ):
                    raise BadRequest(f'Bad request: phones entries must be {{"type": ..., "no": ...}}, not {entry!r}')
                if entry["type"] not in PHONE_TYPES:
                    raise BadRequest(
                        f"Bad request: invalid phone type {entry['type']!r} (expected one of {', '.join(PHONE_TYPES)})"
                    )
            return [{"type": e["type"], "no": e["no"]} for e in value]
        if name == "smids":
            for entry in value:
                if not (isinstance(entry, dict) and isinstance(entry.get("smid"), str)):
                    raise BadRequest(f'Bad request: smids entries must be {{"smid": ..., "type": ...}}, not {entry!r}')
            return [{"smid": e["smid"], "type": e.get("type")} for e in value]
        if name in _LINKS:
            if not all(isinstance(entry, int) and not isinstance(entry, bool) for entry in value):
                raise BadRequest(f"Bad request: {name} entries must be ids")
            return list(value)
        for entry in value:
            if not isinstance(entry, str):
                raise BadRequest(f"Bad request: {name} entries must be text")
            if name == "email" and not _EMAIL.match(entry):
                raise BadRequest(f"Bad request: invalid email address {entry!r}")
        return list(value)

    def _reference(self, name: str, value: Any) -> int | None:
        if value in (None, "", 0):
            return None
        try:
            ref = int(value)
        except (TypeError, ValueError):
            raise BadRequest(f"Bad request: {name} must be an id") from None
        if name == "companyId" and ref not in self.table("companies"):
            raise BadRequest(f"Bad request: there is no company with id {ref}")
        if name == "cust" and ref not in self.table("contacts") and ref not in self.table("companies"):
            raise BadRequest(f"Bad request: there is no contact or company with id {ref}")
        if name == "leadUser" and ref not in USERS:
            raise BadRequest(f"Bad request: there is no user with id {ref}")
        return ref


def _operation(text: str) -> str:
    method, _, path = str(text).strip().partition(" ")
    resource = path.strip().strip("/").removeprefix("api/").split("/")[0]
    if not method or resource not in RESOURCES:
        raise ValueError(f"not an operation like 'POST /contact': {text!r}")
    return f"{method.upper()} /{resource}"


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int | None) -> int:
    text = query.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"Bad request: {name} must be a whole number, not {text!r}") from None
    if value < low or (high is not None and value > high):
        span = f"between {low} and {high}" if high is not None else f">= {low}"
        raise BadRequest(f"Bad request: {name} must be {span}")
    return value
