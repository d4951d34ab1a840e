"""The sandbox: loopback simulators of the apps Ferryman talks to.

The demo runs on them, the test suites run against them, and users rehearse a config on
them (``ferryman sandbox SYSTEM``) before pointing it at production. Each simulator keeps
its data in memory, generates deterministic records from a seed, applies writes so a pull
after a push sees them, enforces a rate limit, injects faults on request, and counts how
politely its clients behave.

Writing one (``connectors/myapp/simulator.py``, registered in the ``ferryman.simulators``
entry-point group)::

    from aiohttp import web
    from ferryman.sandbox import Simulator, json_response

    class MyAppSimulator(Simulator):
        name = "myapp"
        default_credentials = {"api_key": "sandbox-key"}

        def populate(self) -> None:
            contacts = self.add_table("contacts", unique=("email",))
            contacts.load(self.factory.people(self.records))

        def routes(self, router: web.UrlDispatcher) -> None:
            router.add_get("/api/contacts", self.list_contacts)

        def authenticate(self, request: web.Request) -> str | None:
            key = request.query.get("key")
            return key if key == self.credentials["api_key"] else None

        async def list_contacts(self, request: web.Request) -> web.Response:
            rows = self.table("contacts").query(limit=50)
            return json_response([{"id": r["id"], "email": r["email"]} for r in rows])

and serving it::

    async with SimulatorServer(MyAppSimulator(records=20, faults="429:0.1")) as server:
        ...  # server.url; the simulator's .stats and .tables are right there

    with SimulatorThread(MyAppSimulator()) as sandbox:  # from sync code or for subprocesses
        ...  # sandbox.url

Admin routes on every simulator: ``GET /__sandbox/`` (name, options, table sizes),
``GET /__sandbox/stats``, ``POST /__sandbox/faults`` (``{"spec": "..."}`` and/or
``{"burst": {"count": 3, "status": 503, "retry_after": 2}}``), ``POST /__sandbox/reset-stats``,
``POST /__sandbox/hostile`` (``{"modes": ["ignore_paging"]}``: see ``HOSTILE_MODES``).
"""

from ferryman.sandbox._factory import ANCHOR, DataFactory
from ferryman.sandbox._faults import Burst, Fault, FaultInjector, FaultSpec, FaultSpecError
from ferryman.sandbox._server import SimulatorServer, SimulatorThread
from ferryman.sandbox._simulator import (
    ADMIN_PREFIX,
    ALL_HOSTILE,
    HOSTILE_MODES,
    BodyError,
    Simulator,
    basic_credentials,
    bearer_token,
    json_response,
    parse_retry_after,
    read_fields,
    retry_after_header,
)
from ferryman.sandbox._stats import CredentialStats, RateLimiter, Stats
from ferryman.sandbox._table import DuplicateValue, Row, Table

__all__ = [
    "ADMIN_PREFIX",
    "ALL_HOSTILE",
    "ANCHOR",
    "HOSTILE_MODES",
    "BodyError",
    "Burst",
    "CredentialStats",
    "DataFactory",
    "DuplicateValue",
    "Fault",
    "FaultInjector",
    "FaultSpec",
    "FaultSpecError",
    "RateLimiter",
    "Row",
    "Simulator",
    "SimulatorServer",
    "SimulatorThread",
    "Stats",
    "Table",
    "basic_credentials",
    "bearer_token",
    "json_response",
    "parse_retry_after",
    "read_fields",
    "retry_after_header",
]
