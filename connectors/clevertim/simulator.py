"""``ferryman sandbox clevertim``: a loopback Clevertim CRM API.

Faithful to Clevertim's documentation: resources under ``/api`` (``/contact``,
``/company``, ``/case``), HTTP Basic with the API token as user and any password (``X``
by convention), JSON in and out, and the envelope on every answer::

    {"status": "OK", "content": [obj, ...]}          200
    {"status": "ERROR", "error": "..."}              400 bad request, 404 not found,
                                                     500 the JSON cannot be parsed,
                                                     501 operation not supported

Routes (``{r}`` is ``contact``, ``company`` or ``case``)::

    GET    /api/{r}        ?page=N (from 1) &limit=M (1..500, default 100)
                           &modified_since=<ISO 8601, inclusive> &email=<address> (contact)
                           &cn=<name> (company) -> content in (lm, id) order
    GET    /api/{r}/{id}   content: [the object]
    POST   /api/{r}        content: [the new object, with its id]
    PUT    /api/{r}/{id}   replaces the object (fields left out are emptied): content: [it]
    DELETE /api/{r}/{id}   {"status": "OK"} without content

Pagination and the ``modified_since`` filter are not documented by Clevertim; they are
the convention the ``clevertim`` connector assumes by default. Any other method on these
paths answers 501, and operations can be switched off to answer 501 as well: the
``unsupported`` constructor option (``{"POST /contact"}``) or, on a running sandbox,
``POST /__sandbox/unsupported`` with ``{"operations": ["POST /contact"]}``.

The default token is ``sandbox-token``. Objects::

    contact  id, fn, ln, title, companyId, email[], phones[{type, no}], address, city,
             postcode, country, ctype, cf{}, tags[], is_company: false, ao, lm
    company  id, cn, email[], phones[], websites[], address, city, postcode, country,
             cf{}, tags[], is_company: true, ao, lm
    case     id, name, description, leadUser, cust, tags[], cf{}, ao, lm

``ao`` (added on) and ``lm`` (last modified) are UTC like ``2017-01-02T08:22:12Z``.
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

from ferryman.sandbox import Row, Simulator, basic_credentials, json_response
from ferryman.timeutil import parse_datetime

__all__ = ["ClevertimSimulator"]

RESOURCES = {"contact": "contacts", "company": "companies", "case": "cases"}
USERS = (1, 2, 3)
CTYPES = ("Lead", "Prospect", "Customer", "Partner")
SOURCES = ("Website", "Referral", "Trade show", "Cold call", "Newsletter")
TAGS = ("vip", "newsletter", "renewal", "reseller", "priority", "follow-up")
STREETS = ("High Street", "Station Road", "Main Street", "Church Lane", "Park Avenue", "Mill Road")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

_COMMON = {"address", "city", "postcode", "country", "cf", "tags", "email", "phones"}
FIELDS = {
    "contacts": _COMMON | {"fn", "ln", "title", "companyId", "ctype", "region", "websites", "description"},
    "companies": _COMMON | {"cn", "websites", "region", "description"},
    "cases": {"name", "description", "leadUser", "cust", "tags", "cf"},
}
_IGNORED = frozenset({"id", "ao", "lm", "is_company"})

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

    ``unsupported`` lists operations (``"METHOD /resource"``) that answer 501;
    ``page_size``/``max_page_size`` are the default and largest ``limit``.
    """

    name: ClassVar[str] = "clevertim"
    default_credentials: ClassVar[dict[str, str]] = {"api_token": "sandbox-token"}
    default_port: ClassVar[int] = 8813

    def __init__(
        self, *, unsupported: Iterable[str] = (), page_size: int = 100, max_page_size: int = 500, **options: Any
    ) -> None:
        self.unsupported: set[str] = {_operation(op) for op in unsupported}
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
            city, country = rng.choice((("London", "GB"), ("Berlin", "DE"), ("Austin", "US"), ("Lyon", "FR")))
            company_rows.append(
                {
                    "cn": name,
                    "email": [f"info@{domain}"],
                    "phones": [{"type": "work", "no": factory.phone()}],
                    "websites": [f"https://www.{domain}"],
                    "address": f"{rng.randint(1, 250)} {rng.choice(STREETS)}",
                    "city": city,
                    "postcode": f"{rng.randint(10000, 99999)}",
                    "country": country,
                    "cf": {"Industry": name.split()[1] if " " in name else "Other"},
                    "tags": rng.sample(TAGS, rng.randint(0, 2)),
                    "created_at": created[i],
                    "updated_at": updated[i],
                }
            )
        companies.load(company_rows)
        company_ids = [row["id"] for row in company_rows] or [None]
        people = factory.people(self.records)
        for person in people:
            first, last = person.pop("first_name"), person.pop("last_name")
            addresses = [person.pop("email")]
            if rng.random() < 0.3:
                addresses.append(f"{addresses[0].split('@')[0]}@home.example")
            entries = [{"type": "work", "no": person.pop("phone")}]
            mobile = person.pop("mobile")
            if mobile:
                entries.append({"type": "mobile", "no": mobile})
            if rng.random() < 0.2:
                entries.append({"type": "home", "no": factory.phone()})
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
                ctype=rng.choice(CTYPES),
                cf={"Source": rng.choice(SOURCES)},
                tags=rng.sample(TAGS, rng.randint(0, 3)),
            )
        contacts.load(people)
        by_email = {p["email"][0]: p["id"] for p in people}
        case_rows = factory.tickets(self.records, list(by_email)[:5000])
        for row in case_rows:
            row["name"] = row.pop("subject")
            row["cust"] = by_email.get(row.pop("requester_email") or "")
            row["leadUser"] = rng.choice(USERS)
            row["cf"] = {"Priority": row.pop("priority").capitalize(), "Stage": row.pop("status").capitalize()}
            row["tags"] = rng.sample(TAGS, rng.randint(0, 2))
        cases.load(case_rows)

    # -- rendering ------------------------------------------------------------------------------------
    def render(self, table: str, row: Row) -> dict[str, Any]:
        out: dict[str, Any] = {"id": row["id"]}
        for name in sorted(FIELDS[table]):
            if name in row:
                out[name] = row[name]
        if table != "cases":
            out["is_company"] = table == "companies"
        out["ao"] = _stamp(row["created_at"])
        out["lm"] = _stamp(row["updated_at"])
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
            query = request.query
            try:
                page = _int_param(query, "page", 1, 1, None)
                limit = _int_param(query, "limit", self.page_size, 1, self.max_page_size)
                since = None
                if query.get("modified_since", "").strip():
                    try:
                        since = parse_datetime(query["modified_since"])
                    except ValueError as exc:
                        raise BadRequest(
                            f"modified_since: {exc} (use ISO 8601 UTC like 2017-01-02T08:22:12Z)"
                        ) from None
            except BadRequest as exc:
                return _error(str(exc), 400)
            table = self.table(table_name)
            email = query.get("email", "").strip().lower() if table_name == "contacts" else ""
            name = query.get("cn", "").strip().lower() if table_name == "companies" else ""
            if email or name:
                rows = [
                    r
                    for r in table.query(since)
                    if (email and email in (str(e).lower() for e in r.get("email") or []))
                    or (name and str(r.get("cn") or "").lower() == name)
                ]
                rows = rows[(page - 1) * limit : page * limit]
            else:
                rows = table.query(since, offset=(page - 1) * limit, limit=limit)
            return _ok([self.render(table_name, r) for r in rows])

        return handler

    def _row(self, table_name: str, request: web.Request) -> Row | None:
        text = request.match_info["id"]
        return self.table(table_name).get(int(text)) if text.isdigit() else None

    def _getter(self, table_name: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            row = self._row(table_name, request)
            if row is None:
                return _error("The object you are trying to get cannot be found", 404)
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
            return _ok([self.render(table_name, row)])

        return handler

    def _putter(self, table_name: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            row = self._row(table_name, request)
            if row is None:
                return _error("The object you are trying to update cannot be found", 404)
            body = await self._json(request)
            if isinstance(body, web.Response):
                return body
            try:
                fields = self._clean(table_name, body)
            except BadRequest as exc:
                return _error(str(exc), 400)
            # PUT replaces: whatever the body leaves out is gone.
            row = self.table(table_name).replace(row["id"], fields)
            return _ok([self.render(table_name, row)])

        return handler

    def _deleter(self, table_name: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            row = self._row(table_name, request)
            if row is None:
                return _error("The object you are trying to delete cannot be found", 404)
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
        unknown = sorted(set(body) - FIELDS[table_name] - _IGNORED)
        if unknown:
            raise BadRequest(f"Bad request: unknown field(s) {', '.join(unknown)}")
        out: dict[str, Any] = {}
        for name in FIELDS[table_name]:
            value = body.get(name)
            if name in ("email", "phones", "websites", "tags"):
                out[name] = self._list(name, value)
            elif name == "cf":
                if value is not None and not isinstance(value, dict):
                    raise BadRequest("Bad request: cf must be an object of custom field values")
                out[name] = dict(value or {})
            elif name in ("companyId", "leadUser", "cust"):
                out[name] = self._reference(name, value)
            else:
                if value is not None and not isinstance(value, str | int | float):
                    raise BadRequest(f"Bad request: {name} must be text")
                out[name] = "" if value is None else str(value)
        if table_name == "contacts" and not (out["fn"].strip() or out["ln"].strip()):
            raise BadRequest("Bad request: a contact needs a first name (fn) or a last name (ln)")
        if table_name == "companies" and not out["cn"].strip():
            raise BadRequest("Bad request: a company needs a name (cn)")
        if table_name == "cases" and not out["name"].strip():
            raise BadRequest("Bad request: a case needs a name")
        return out

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
            return [{"type": e["type"], "no": e["no"]} for e in value]
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
