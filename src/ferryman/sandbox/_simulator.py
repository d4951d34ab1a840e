"""The :class:`Simulator` base class: one loopback fake of one app's API.

A subclass says who it is, builds its data and registers its routes; the base class wraps
every API request in the same machinery, in this order:

1. :meth:`Simulator.authenticate` names the credential (or the request is unauthorised);
2. :class:`Stats` counts the arrival and notices an early retry;
3. a fault may strike (burst, 429/503, 5xx, slow, drop) — see :mod:`ferryman.sandbox._faults`;
4. a bad credential gets :meth:`Simulator.unauthorized`;
5. the rate limit may refuse it with :meth:`Simulator.throttled`;
6. the route handler answers (and a ``malformed`` fault may spoil its body);
7. the status, and any ``Retry-After`` on a 429/503, are counted.

Routes under ``/__sandbox/`` are the admin API (stats, faults, hostile modes) and skip all
of that.

Hostile modes make a simulator answer the way misbehaving real APIs do, so that the
hostile contract kit (:class:`ferryman.testing.HostileContract`) can prove a connector and
the engine notice instead of believing them (see :data:`HOSTILE_MODES`). The base class
implements ``garble_reads`` and ``garble_writes`` for every simulator; the others are
implemented by each simulator's handlers, which test ``self.is_hostile("ignore_paging")``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, ClassVar

import orjson
from aiohttp import web

from ferryman.sandbox._factory import DataFactory
from ferryman.sandbox._faults import FaultInjector, FaultSpec, FaultSpecError, RetryAfterFormat
from ferryman.sandbox._stats import RateLimiter, Stats
from ferryman.sandbox._table import Table

__all__ = [
    "ADMIN_PREFIX",
    "ALL_HOSTILE",
    "HOSTILE_MODES",
    "BodyError",
    "Simulator",
    "basic_credentials",
    "bearer_token",
    "json_response",
    "parse_retry_after",
    "read_fields",
    "retry_after_header",
]

ADMIN_PREFIX = "/__sandbox"
ANONYMOUS = "anonymous"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: what each hostile mode makes the simulator do
HOSTILE_MODES: Mapping[str, str] = {
    "ignore_paging": "list endpoints ignore paging parameters and answer the whole (filtered) list every time",
    "ignore_sort": "list endpoints answer in an order that is not (updated_at, id), whatever sort was asked",
    "stub_create": "a create answers 2xx with a stub body (the new id and little else), not the record",
    "error_in_200": "an update answers HTTP 200 with an error in the body and changes nothing",
    "hide_deleted": "deleted records vanish from every list; GET of the item still answers (deleted or 404)",
    "garble_reads": "every GET after the first answers with a garbled body (retries meet it too)",
    "garble_writes": "every create (POST) is carried out, then answered with a garbled body",
}
#: every hostile mode, for a simulator whose handlers implement them all
ALL_HOSTILE: frozenset[str] = frozenset(HOSTILE_MODES)
SIMULATOR_KEY: web.AppKey[Simulator] = web.AppKey("ferryman.simulator")


class Simulator:
    """Base class of every sandbox simulator.

    Subclasses set :attr:`name` and :attr:`default_credentials`, build their tables in
    :meth:`populate` and register handlers in :meth:`routes`; they override
    :meth:`authenticate` and, to answer the way their API does, :meth:`unauthorized`,
    :meth:`throttled` and :meth:`server_error`. Options of their own are set *before*
    calling ``super().__init__()``, which calls :meth:`populate`.

    ``records`` is how many rows each main stream starts with; ``seed`` makes the data and
    the fault draws reproducible; ``rate_limit`` is the requests allowed per credential in
    any ``window`` seconds (default :attr:`rate_window`, 60: requests per minute; ``None``:
    unlimited); ``faults`` is a :class:`FaultSpec` or its string form; ``credentials``
    override :attr:`default_credentials` key by key.
    """

    #: the system name (``ferryman sandbox NAME``, the entry-point name)
    name: ClassVar[str] = ""
    #: the credentials the simulator accepts unless told otherwise, shown at start-up
    default_credentials: ClassVar[Mapping[str, str]] = {}
    #: the port ``ferryman sandbox`` listens on unless ``--port`` says otherwise (0: any free one)
    default_port: ClassVar[int] = 0
    #: the status the rate limit answers with (Harvest says 503)
    rate_limit_status: ClassVar[int] = 429
    #: the rate-limit window in seconds (Harvest counts per 15 s)
    rate_window: ClassVar[float] = 60.0

    def __init__(
        self,
        *,
        records: int = 200,
        seed: int = 1,
        rate_limit: float | None = None,
        faults: FaultSpec | str | None = None,
        credentials: Mapping[str, str] | None = None,
        window: float | None = None,
    ) -> None:
        if records < 0:
            raise ValueError(f"records must be >= 0, not {records}")
        if rate_limit is not None and not rate_limit > 0:
            raise ValueError(f"rate_limit must be a positive number of requests, not {rate_limit!r}")
        self.records = records
        self.seed = seed
        self.credentials: dict[str, str] = {**self.default_credentials, **(credentials or {})}
        self.window = float(window if window is not None else self.rate_window)
        self.stats = Stats(window=self.window)
        self.limiter: RateLimiter | None = None
        self.rate_limit = rate_limit
        spec = faults if isinstance(faults, FaultSpec) else FaultSpec.parse(faults)
        self.faults = FaultInjector(spec, seed)
        self.factory = DataFactory(seed)
        self.tables: dict[str, Table] = {}
        self.hostile: frozenset[str] = frozenset()
        self._hostile_gets = 0
        self.populate()

    @property
    def rate_limit(self) -> float | None:
        """Requests allowed per credential in any :attr:`window` seconds; ``None``: unlimited."""
        return self.limiter.limit if self.limiter else None

    @rate_limit.setter
    def rate_limit(self, value: float | None) -> None:
        self.limiter = RateLimiter(value, self.window) if value is not None else None

    # -- hostile modes ------------------------------------------------------------------------
    #: the hostile modes this simulator implements (the base class does the garble_* ones)
    hostile_supported: ClassVar[frozenset[str]] = frozenset({"garble_reads", "garble_writes"})

    def set_hostile(self, *modes: str) -> None:
        """Switch these hostile modes on (and every other off); no modes: behave again."""
        unknown = [m for m in modes if m not in HOSTILE_MODES]
        if unknown:
            raise ValueError(f"unknown hostile mode(s) {', '.join(unknown)} (modes: {', '.join(HOSTILE_MODES)})")
        missing = [m for m in modes if m not in self.hostile_supported]
        if missing:
            raise ValueError(f"the {self.name} simulator does not implement hostile mode(s) {', '.join(missing)}")
        self.hostile = frozenset(modes)
        self._hostile_gets = 0

    def is_hostile(self, mode: str) -> bool:
        return mode in self.hostile

    # -- what a subclass provides ----------------------------------------------------------
    def populate(self) -> None:
        """Build the initial data: :meth:`add_table` and load rows from :attr:`factory`."""

    def routes(self, router: web.UrlDispatcher) -> None:
        """Register the API's handlers on ``router``."""
        raise NotImplementedError(f"{type(self).__name__} must register its routes")

    def authenticate(self, request: web.Request) -> str | None:
        """The credential a request carries when it is valid (a name for accounting), else ``None``.

        The default accepts every request as ``"anonymous"``.
        """
        return ANONYMOUS

    def unauthorized(self, request: web.Request) -> web.StreamResponse:
        """The answer to a request without valid credentials."""
        return json_response({"error": "unauthorized", "message": "missing or invalid credentials"}, status=401)

    def throttled(self, request: web.Request, *, status: int, retry_after: str) -> web.StreamResponse:
        """The answer when the rate limit (or an injected fault) refuses a request.

        ``status`` is 429 or 503; ``retry_after`` is the ready-made ``Retry-After`` value
        (delay-seconds or an HTTP-date), which the answer must carry.
        """
        reason = "rate limit exceeded" if status == 429 else "service temporarily unavailable"
        return json_response(
            {"error": "rate_limited" if status == 429 else "unavailable", "message": reason},
            status=status,
            headers={"Retry-After": retry_after},
        )

    def server_error(self, request: web.Request, *, status: int) -> web.StreamResponse:
        """The answer to an injected 5xx fault."""
        return json_response({"error": "server_error", "message": "internal server error"}, status=status)

    def describe_credentials(self) -> str:
        """The credentials to use, for the start-up line (``api key: sandbox-key``)."""
        return ", ".join(f"{key.replace('_', ' ')}: {value}" for key, value in self.credentials.items())

    # -- helpers for subclasses -----------------------------------------------------------
    def add_table(self, name: str, **options: Any) -> Table:
        """Create and register a :class:`Table` (options as for :class:`Table`)."""
        table = Table(name, **options)
        self.tables[name] = table
        return table

    def table(self, name: str) -> Table:
        """A registered table by name."""
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"{self.name or type(self).__name__} has no table {name!r}") from None

    # -- the application ----------------------------------------------------------------
    def build_app(self) -> web.Application:
        """An aiohttp application serving this simulator's API and the admin routes."""
        app = web.Application(middlewares=[self._middleware])
        app[SIMULATOR_KEY] = self
        self.routes(app.router)
        app.router.add_get(f"{ADMIN_PREFIX}/", self._admin_info)
        app.router.add_get(f"{ADMIN_PREFIX}/stats", self._admin_stats)
        app.router.add_post(f"{ADMIN_PREFIX}/faults", self._admin_faults)
        app.router.add_post(f"{ADMIN_PREFIX}/reset-stats", self._admin_reset_stats)
        app.router.add_post(f"{ADMIN_PREFIX}/hostile", self._admin_hostile)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(ADMIN_PREFIX + "/"):
            return await handler(request)
        valid = self.authenticate(request)
        credential = valid or ANONYMOUS
        self.stats.arrived(credential)
        status: int | str = 500
        response: web.StreamResponse | None = None
        try:
            decision = self.faults.draw()
            if decision.delay:
                await asyncio.sleep(decision.delay)
            fault = decision.fault
            if fault is not None and fault.family == "drop":
                status = "dropped"
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=500)  # never written: the connection is gone
            if fault is not None and fault.family == "throttle":
                assert decision.status is not None
                header = retry_after_header(fault.retry_after, fault.retry_after_format)
                response = self.throttled(request, status=decision.status, retry_after=header)
            elif fault is not None and fault.family == "server_error":
                assert decision.status is not None
                response = self.server_error(request, status=decision.status)
            elif valid is None:
                response = self.unauthorized(request)
            else:
                wait = self.limiter.acquire(credential) if self.limiter else 0.0
                if wait > 0:
                    header = retry_after_header(wait)
                    response = self.throttled(request, status=self.rate_limit_status, retry_after=header)
                else:
                    response = await handler(request)
                    if fault is not None and fault.family == "malformed":
                        _spoil(response, fault.mode)
                    elif self.hostile and self._garbles(request, response):
                        _spoil(response, "garble")
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            retry_after = None
            if response is not None and response.status in (429, 503):
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            self.stats.answered(credential, status, retry_after)

    def _garbles(self, request: web.Request, response: web.StreamResponse) -> bool:
        if request.method == "GET" and "garble_reads" in self.hostile:
            self._hostile_gets += 1
            return self._hostile_gets > 1
        return request.method == "POST" and "garble_writes" in self.hostile and response.status < 300

    # -- admin API --------------------------------------------------------------------------
    async def _admin_info(self, request: web.Request) -> web.Response:
        return json_response(self.info())

    def info(self) -> dict[str, Any]:
        """What ``GET /__sandbox/`` answers: name, options, credentials, table sizes."""
        return {
            "simulator": self.name,
            "records": self.records,
            "seed": self.seed,
            "rate_limit": self.rate_limit,
            "window": self.window,
            "credentials": self.credentials,
            "tables": {name: len(table) for name, table in self.tables.items()},
            "faults": self.faults.describe(),
            "hostile": sorted(self.hostile),
        }

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return json_response({"simulator": self.name, **self.stats.snapshot(), "faults": self.faults.describe()})

    async def _admin_reset_stats(self, request: web.Request) -> web.Response:
        self.stats.reset()
        return json_response({"ok": True})

    async def _admin_hostile(self, request: web.Request) -> web.Response:
        """``POST /__sandbox/hostile {"modes": ["ignore_paging", ...]}`` (``[]``: behave)."""
        try:
            body = orjson.loads(await request.read() or b"{}")
            modes = body.get("modes", []) if isinstance(body, dict) else None
            if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
                raise ValueError('expected {"modes": ["ignore_paging", ...]}')
            self.set_hostile(*modes)
        except (orjson.JSONDecodeError, ValueError) as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response({"hostile": sorted(self.hostile)})

    async def _admin_faults(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            if "spec" in body:
                spec = body["spec"]
                if spec is not None and not isinstance(spec, str):
                    raise ValueError("spec must be a string or null")
                self.faults.replace(FaultSpec.parse(spec))
            burst = body.get("burst")
            if burst is not None:
                if not isinstance(burst, dict):
                    raise ValueError("burst must be an object")
                fmt: RetryAfterFormat = "date" if burst.get("format") == "date" else "seconds"
                self.faults.start_burst(
                    int(burst.get("count", 1)),
                    int(burst.get("status", 429)),
                    float(burst.get("retry_after", 1.0)),
                    fmt,
                )
        except (orjson.JSONDecodeError, FaultSpecError, ValueError, TypeError) as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response(self.faults.describe())


# -- helpers -----------------------------------------------------------------------------------
def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"cannot serialise {type(value).__name__}")


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None, whole_seconds: bool = False
) -> web.Response:
    """A JSON answer serialised with orjson.

    Aware datetimes come out as ISO 8601 with ``Z`` (``whole_seconds`` drops fractions, as
    many real APIs do), dates as ``YYYY-MM-DD``, ``Decimal`` as a plain string. Letting orjson
    format timestamps in C keeps a 1000-record page cheap.
    """
    option = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z
    if whole_seconds:
        option |= orjson.OPT_OMIT_MICROSECONDS
    body = orjson.dumps(data, default=_default, option=option)
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


class BodyError(ValueError):
    """A request body that cannot be read as fields."""


async def read_fields(request: web.Request) -> dict[str, Any]:
    """A request's fields from a JSON object or a form-encoded body (``{}`` when empty)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        return {key: value for key, value in form.items() if isinstance(value, str)}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BodyError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BodyError("body must be a JSON object")
    return data


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic`` header, if there is one."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def bearer_token(request: web.Request) -> str | None:
    """The token from an ``Authorization: Bearer`` header, if there is one."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def retry_after_header(seconds: float, fmt: RetryAfterFormat = "seconds") -> str:
    """A ``Retry-After`` value at least ``seconds`` away: whole delay-seconds or an IMF-fixdate."""
    if fmt == "date":
        return formatdate(math.ceil(time.time() + seconds), usegmt=True)
    return str(max(0, math.ceil(seconds)))


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from now that a ``Retry-After`` value asks for (``None`` if absent or garbage)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)) / timedelta(seconds=1))


def _spoil(response: web.StreamResponse, mode: str) -> None:
    """Make a response's body unparseable: cut in half, or an invalid byte sequence spliced in."""
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes | bytearray):
        return
    body = bytes(response.body)
    if not body:
        return
    half = len(body) // 2
    spoiled = body[:half] if mode == "truncate" else body[:half] + b"\xff\xfe\x00<" + body[half + 4 :]
    response.body = spoiled
