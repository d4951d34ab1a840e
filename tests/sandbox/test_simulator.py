"""The framework over real HTTP: faults, the rate limit, politeness accounting, admin routes.

A tiny simulator written the way app simulators are (a Harvest-like 503 rate limit, a
key in the query string, two accepted keys) checks the extension points; the generic
simulator checks the rest.
"""

from __future__ import annotations

import asyncio
import json
import time
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import httpx
import pytest
from aiohttp import web

from ferryman.sandbox import (
    Simulator,
    SimulatorServer,
    SimulatorThread,
    json_response,
    parse_retry_after,
    retry_after_header,
)
from ferryman_connectors.rest.simulator import GenericSimulator

KEY = {"X-API-Key": "sandbox-key"}


class NotesSimulator(Simulator):
    """A minimal app: one table, a key in the query string, 503 when over the limit."""

    name = "notes"
    default_credentials: ClassVar[dict[str, str]] = {"key": "alpha", "other_key": "beta"}
    rate_limit_status = 503

    def populate(self) -> None:
        notes = self.add_table("notes")
        notes.load(self.factory.tickets(self.records))

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/notes", self.list_notes)

    def authenticate(self, request: web.Request) -> str | None:
        key = request.query.get("key")
        return key if key in self.credentials.values() else None

    def throttled(self, request: web.Request, *, status: int, retry_after: str) -> web.StreamResponse:
        return web.Response(status=status, text="Slow down", headers={"Retry-After": retry_after})

    async def list_notes(self, request: web.Request) -> web.Response:
        return json_response([row["subject"] for row in self.table("notes").query(limit=5)])


async def test_a_simulator_written_on_the_framework_serves_and_shapes_its_rate_limit():
    sim = NotesSimulator(records=10, rate_limit=2, window=30)
    async with SimulatorServer(sim) as server, httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/notes")).status_code == 401
        ok = [await client.get("/notes", params={"key": "alpha"}) for _ in range(2)]
        assert [r.status_code for r in ok] == [200, 200] and len(ok[0].json()) == 5
        over = await client.get("/notes", params={"key": "alpha"})
        assert over.status_code == 503 and over.text == "Slow down"
        assert 29 <= int(over.headers["Retry-After"]) <= 30
        # The limit is per credential: the other key still has its slots.
        assert (await client.get("/notes", params={"key": "beta"})).status_code == 200
    stats = sim.stats
    assert stats.by_status == {"401": 1, "200": 3, "503": 1}
    assert stats.for_credential("alpha").throttled == 1
    assert stats.for_credential("beta").requests == 1


@pytest.fixture
async def generic():
    sim = GenericSimulator(records=30)
    async with SimulatorServer(sim) as server, httpx.AsyncClient(base_url=server.url, headers=KEY) as client:
        yield sim, client


async def set_faults(client: httpx.AsyncClient, **body: Any) -> dict:
    response = await client.post("/__sandbox/faults", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_429_fault_carries_retry_after_seconds(generic):
    _sim, client = generic
    await set_faults(client, spec="429:1:retry_after=3")
    response = await client.get("/api/tickets")
    assert response.status_code == 429 and response.headers["Retry-After"] == "3"
    assert response.json()["error"] == "rate_limited"


async def test_503_fault_can_carry_an_http_date(generic):
    _sim, client = generic
    await set_faults(client, spec="503:1:retry_after=5:format=date")
    response = await client.get("/api/tickets")
    assert response.status_code == 503
    wait = parsedate_to_datetime(response.headers["Retry-After"]).timestamp() - time.time()
    assert 4 <= wait <= 6.5


async def test_server_error_faults(generic):
    _sim, client = generic
    await set_faults(client, spec="502:1")
    assert (await client.get("/api/tickets")).status_code == 502
    await set_faults(client, spec="5xx:1")
    assert {(await client.get("/api/tickets")).status_code for _ in range(30)} == {500, 502, 504}


async def test_slow_fault_delays_the_answer(generic):
    _sim, client = generic
    await set_faults(client, spec="slow:1:delay=0.3")
    started = time.perf_counter()
    response = await client.get("/api/tickets")
    assert response.status_code == 200 and time.perf_counter() - started >= 0.3


async def test_drop_fault_closes_the_connection_without_an_answer(generic):
    sim, client = generic
    await set_faults(client, spec="drop:1")
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/api/tickets")
    assert sim.stats.by_status["dropped"] == 1


@pytest.mark.parametrize("mode", ["truncate", "garble"])
async def test_malformed_fault_spoils_the_real_body(generic, mode):
    _sim, client = generic
    good = (await client.get("/api/tickets")).content
    await set_faults(client, spec=f"malformed:1:mode={mode}")
    response = await client.get("/api/tickets")
    assert response.status_code == 200
    assert response.content[:20] == good[:20]
    with pytest.raises(ValueError):
        json.loads(response.content)


async def test_admin_routes_are_never_faulted_nor_counted(generic):
    sim, client = generic
    await set_faults(client, spec="drop:1")
    for _ in range(3):
        assert (await client.get("/__sandbox/stats")).status_code == 200
    info = (await client.get("/__sandbox/")).json()
    assert info["simulator"] == "generic" and info["tables"] == {"contacts": 30, "tickets": 30, "invoices": 30}
    assert sim.stats.requests == 0


async def test_bad_fault_spec_over_admin_is_a_400_naming_the_part(generic):
    _sim, client = generic
    response = await client.post("/__sandbox/faults", json={"spec": "429:lots"})
    assert response.status_code == 400 and "rate 'lots'" in response.json()["error"]


async def test_burst_answers_the_next_requests_then_lets_them_through(generic):
    _sim, client = generic
    state = await set_faults(client, burst={"count": 2, "status": 503, "retry_after": 4})
    assert state["burst"]["remaining"] == 2
    statuses = [(await client.get("/api/tickets")).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]


async def test_sliding_window_refuses_the_extra_request_with_the_time_until_a_slot_frees():
    sim = GenericSimulator(records=5, rate_limit=3, window=2)
    async with SimulatorServer(sim) as server, httpx.AsyncClient(base_url=server.url, headers=KEY) as client:
        done: list[float] = []
        for _ in range(3):
            assert (await client.get("/api/tickets")).status_code == 200
            done.append(time.monotonic())  # the server admitted it no later than this
        refused = await client.get("/api/tickets")
        refused_at = time.monotonic()
        assert refused.status_code == 429
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 2  # the oldest slot frees 2 s after it was taken, rounded up
        # Honour Retry-After, and wait for all three slots (so the test does not depend on speed).
        await asyncio.sleep(max(refused_at + retry_after, done[-1] + 2) - time.monotonic())
        assert [(await client.get("/api/tickets")).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert sim.stats.early_retries == 0
    assert sim.stats.for_credential("sandbox-key").max_in_window == 4  # arrivals, refused ones included


async def test_a_client_that_paces_itself_never_exceeds_the_limit_in_any_window():
    limit, window = 4, 0.5
    sim = GenericSimulator(records=5, rate_limit=limit, window=window)
    done: list[float] = []
    async with SimulatorServer(sim) as server, httpx.AsyncClient(base_url=server.url, headers=KEY) as client:
        for _ in range(14):
            if len(done) >= limit:  # a polite client's own sliding log, counted from the answers
                await asyncio.sleep(max(0.0, done[-limit] + window - time.monotonic()))
            assert (await client.get("/api/tickets")).status_code == 200
            done.append(time.monotonic())
    stats = sim.stats.snapshot()
    assert 1 < stats["max_in_window"] <= limit and stats["throttled"] == 0 and stats["requests"] == 14


async def test_retrying_before_retry_after_counts_as_an_early_retry(generic):
    _sim, client = generic
    await set_faults(client, burst={"count": 1, "status": 429, "retry_after": 1})
    assert (await client.get("/api/tickets")).status_code == 429
    await asyncio.sleep(0.1)
    assert (await client.get("/api/tickets")).status_code == 200  # served, but rude
    stats = (await client.get("/__sandbox/stats")).json()
    assert stats["early_retries"] == 1 and stats["violations"][0]["early_by"] > 0.5
    await asyncio.sleep(1.0)  # any request before the first Retry-After ran out would be early too
    await set_faults(client, burst={"count": 1, "status": 503, "retry_after": 1})
    assert (await client.get("/api/tickets")).status_code == 503
    await asyncio.sleep(1.0)
    assert (await client.get("/api/tickets")).status_code == 200
    stats = (await client.get("/__sandbox/stats")).json()
    assert stats["early_retries"] == 1 and stats["throttled"] == 2
    assert [t["retry_after"] for t in stats["throttles"]] == [1, 1]
    assert stats["credentials"]["sandbox-key"]["early_retries"] == 1


async def test_an_http_date_retry_after_is_held_to_as_well(generic):
    sim, client = generic
    await set_faults(client, burst={"count": 1, "status": 429, "retry_after": 2, "format": "date"})
    response = await client.get("/api/tickets")
    assert (parse_retry_after(response.headers["Retry-After"]) or 0) > 1
    await client.get("/api/tickets")
    assert sim.stats.early_retries == 1


async def test_reset_stats_starts_counting_afresh(generic):
    _sim, client = generic
    await client.get("/api/tickets")
    assert (await client.post("/__sandbox/reset-stats")).status_code == 200
    stats = (await client.get("/__sandbox/stats")).json()
    assert stats["requests"] == 0 and stats["by_status"] == {} and stats["timestamps"] == []


def test_retry_after_helpers_round_up_and_parse_both_forms():
    assert retry_after_header(0.2) == "1" and retry_after_header(2.0) == "2" and retry_after_header(0) == "0"
    assert parse_retry_after("7") == 7 and parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert 2 <= (parse_retry_after(retry_after_header(3, "date")) or 0) <= 4


def test_simulator_thread_serves_sync_callers_and_frees_its_port_on_stop():
    sandbox = SimulatorThread(GenericSimulator(records=3)).start()
    try:
        response = httpx.get(sandbox.url + "/api/contacts", headers=KEY)
        assert response.status_code == 200 and len(response.json()["data"]) == 3
        assert sandbox.call(lambda: sandbox.simulator.table("contacts").insert({"email": "x@y.example"}))["id"] == 4
        assert sandbox.simulator.stats.requests == 1
    finally:
        sandbox.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(sandbox.url + "/api/contacts", headers=KEY)
    with SimulatorThread(GenericSimulator(records=1), port=sandbox.port) as again:  # the port is free again
        assert httpx.get(again.url + "/api", headers=KEY).status_code == 200


def test_simulator_thread_reports_a_port_it_cannot_bind():
    with SimulatorThread(GenericSimulator(records=1)) as first, pytest.raises(OSError):
        SimulatorThread(GenericSimulator(records=1), port=first.port).start()


def test_serves_on_a_unix_socket(tmp_path):
    path = str(tmp_path / "sandbox.sock")
    with (
        SimulatorThread(GenericSimulator(records=2), unix_path=path) as sandbox,
        httpx.Client(transport=httpx.HTTPTransport(uds=path), base_url=sandbox.url, headers=KEY) as client,
    ):
        assert len(client.get("/api/tickets").json()["data"]) == 2


def test_refuses_to_bind_beyond_loopback_unless_asked():
    with pytest.raises(ValueError, match="not loopback"):
        SimulatorServer(GenericSimulator(records=0), host="0.0.0.0")
    SimulatorServer(GenericSimulator(records=0), host="::1")
    SimulatorServer(GenericSimulator(records=0), host="0.0.0.0", allow_remote=True)
