"""The connector kit itself: it runs without a simulator, and nothing passes for want of something to check.

The kit is run the way an author runs it, by pytest in a separate process, on a test module
written to a temporary directory; the outcome of every kit test is read from its JUnit report.
``EXAMPLE`` is the guide's no-simulator example (docs/connectors.md quotes it verbatim).
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ferryman.testing import ConnectorContract, HostileContract

EXAMPLE = '''\
"""The contract kit without a simulator: an httpx.MockTransport stands in for the API."""

import itertools
import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from ferryman.api import ApiConnector
from ferryman.config import Secret
from ferryman.connector import Capability, Cursor, Page, StreamInfo
from ferryman.http import ApiKeyHeader, HttpOptions
from ferryman.records import Contact, Record
from ferryman.sdk.readloop import whole_list_pages
from ferryman.testing import ConnectorContract, ContractSetup


class FakeApi:
    """GET/POST /contacts and GET/PUT/DELETE /contacts/{id}, in memory."""

    def __init__(self, records: int) -> None:
        self.rows: dict[int, dict[str, Any]] = {}
        self.ids = itertools.count(1)
        for n in range(records):
            self.save({"email": f"person{n}@example.com", "last_name": f"Person {n}"})

    def save(self, fields: dict[str, Any], id: int | None = None) -> dict[str, Any]:
        id = id or next(self.ids)
        stamp = datetime.now(UTC).isoformat()
        self.rows[id] = {**self.rows.get(id, {}), **fields, "id": id, "updated_at": stamp}
        return self.rows[id]

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("X-Api-Key") != "test-key":
            return httpx.Response(401, json={"error": "bad key"})
        _, *rest = request.url.path.strip("/").split("/")
        id = int(rest[0]) if rest else None
        if id is None:
            if request.method == "POST":
                return httpx.Response(201, json=self.save(json.loads(request.content)))
            return httpx.Response(200, json=list(self.rows.values()))
        if id not in self.rows:
            return httpx.Response(404, json={"error": "no such contact"})
        if request.method == "PUT":
            return httpx.Response(200, json=self.save(json.loads(request.content), id))
        if request.method == "DELETE":
            del self.rows[id]
            return httpx.Response(204)
        return httpx.Response(200, json=self.rows[id])


class NotesOptions(HttpOptions):
    api_key: Secret


class NotesConnector(ApiConnector):
    kind = "notes"
    Options = NotesOptions
    options: NotesOptions

    def streams(self) -> Mapping[str, StreamInfo]:
        everything_but_find = frozenset(Capability) - {Capability.FIND}
        return {"contacts": StreamInfo("contacts", Contact, everything_but_find)}

    def auth(self) -> httpx.Auth:
        return ApiKeyHeader("X-Api-Key", self.options.api_key.get_secret_value())

    async def read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        _, rows = await self.http.request_decoded("GET", "/contacts")
        for page in whole_list_pages([contact(row) for row in rows], [], since, page_size):
            yield page

    async def get(self, stream: str, key: str) -> Record | None:
        response, row = await self.http.request_decoded("GET", f"/contacts/{key}", allow_status=(404,))
        return None if response.status_code == 404 else contact(row)

    async def create(self, stream: str, record: Record) -> Record:
        _, row = await self.http.request_decoded("POST", "/contacts", json=native(record))
        return contact(row)

    async def update(self, stream: str, key: str, record: Record) -> Record:
        _, row = await self.http.request_decoded("PUT", f"/contacts/{key}", json=native(record))
        return contact(row)

    async def delete(self, stream: str, key: str) -> None:
        await self.http.request("DELETE", f"/contacts/{key}", allow_status=(404,))


def contact(row: dict[str, Any]) -> Contact:
    stamp = datetime.fromisoformat(row["updated_at"])
    return Contact(key=str(row["id"]), updated_at=stamp, email=row["email"], last_name=row["last_name"])


def native(record: Record) -> dict[str, Any]:
    return record.model_dump(mode="json", include={"email", "last_name"})


def notes_contract() -> ContractSetup:
    api = FakeApi(records=20)
    return ContractSetup(
        connector=NotesConnector,
        simulator=None,  # no simulator: the tests that need one are skipped, saying so
        options=lambda url: {"base_url": url, "api_key": "test-key", "rate_limit": None},
        bad_options=lambda url: {"base_url": url, "api_key": "wrong", "rate_limit": None},
        services=lambda: {"http_transport": httpx.MockTransport(api.handle)},
        samples={
            "contacts": lambda n: Contact(
                key="new", updated_at=datetime.now(UTC), email=f"new{n}@example.com", last_name="New"
            )
        },
    )


class TestNotesContract(ConnectorContract):
    @pytest.fixture
    def contract(self) -> ContractSetup:
        return notes_contract()
'''

VARIANTS = """

from dataclasses import replace

from ferryman.records import Ticket
from ferryman.testing import HostileContract


class TestHostileWithoutSimulatorOrSamples(HostileContract):
    @pytest.fixture
    def contract(self) -> ContractSetup:
        return replace(notes_contract(), samples={})


class TestWrongSampleType(ConnectorContract):
    @pytest.fixture
    def contract(self) -> ContractSetup:
        make = lambda n: Ticket(key="new", updated_at=datetime.now(UTC), subject="not a contact")
        return replace(notes_contract(), samples={"contacts": make})


class TestNoIncrementalStream(ConnectorContract):
    @pytest.fixture
    def contract(self) -> ContractSetup:
        class ReadOnly(NotesConnector):
            def streams(self) -> Mapping[str, StreamInfo]:
                return {"contacts": StreamInfo("contacts", Contact, frozenset({Capability.READ}))}

        return replace(notes_contract(), connector=ReadOnly)
"""


def kit_tests(kit: type) -> set[str]:
    return {name for name in dir(kit) if name.startswith("test_")}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, tuple[str, str]]]:
    """class -> test -> (passed|skipped|failed, the skip reason or failure message)."""
    where = tmp_path_factory.mktemp("kit")
    (where / "test_notes.py").write_text(EXAMPLE + VARIANTS)
    report = where / "report.xml"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", f"--junit-xml={report}"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.exists(), run.stdout + run.stderr
    found: dict[str, dict[str, tuple[str, str]]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("skipped", "failure", "error"):
            element = case.find(tag)
            if element is not None:
                outcome, message = tag, (element.get("message") or "") + (element.text or "")
        found.setdefault(case.get("classname", "").rsplit(".", 1)[-1], {})[case.get("name", "")] = (outcome, message)
    return found


def test_without_a_simulator_the_kit_runs_what_applies(outcomes: dict[str, dict[str, tuple[str, str]]]) -> None:
    results = outcomes["TestNotesContract"]
    assert set(results) == kit_tests(ConnectorContract)
    ran = {name for name, (outcome, _) in results.items() if outcome == "passed"}
    assert ran == {
        "test_declares_its_streams",
        "test_full_read_is_ordered_unique_and_utc",
        "test_incremental_read_returns_exactly_what_is_at_or_after_the_cursor",
        "test_create_update_delete_round_trip",
        "test_bad_credentials_stop_the_run",
    }, results
    outcome, reason = results["test_throttling_and_server_errors_are_retried"]
    assert outcome == "skipped" and "no simulator" in reason
    outcome, reason = results["test_find_by_natural_key"]
    assert outcome == "skipped" and "no stream can CREATE and FIND" in reason


def test_missing_samples_skip_with_a_reason_never_pass(outcomes: dict[str, dict[str, tuple[str, str]]]) -> None:
    results = outcomes["TestHostileWithoutSimulatorOrSamples"]
    assert set(results) == kit_tests(HostileContract)
    outcome, reason = results["test_create_update_delete_round_trip"]
    assert outcome == "skipped", results
    assert "no sample record for a stream that can CREATE (contacts)" in reason
    assert "ContractSetup(samples={'contacts': lambda n: <a new record>})" in reason
    for name, (outcome, reason) in results.items():
        if name.startswith("test_hostile"):
            assert outcome == "skipped" and ("no simulator" in reason or "sample" in reason), (name, reason)


def test_a_sample_of_the_wrong_record_type_fails_naming_both(outcomes: dict[str, dict[str, tuple[str, str]]]) -> None:
    outcome, message = outcomes["TestWrongSampleType"]["test_create_update_delete_round_trip"]
    assert outcome == "failure"
    assert "samples['contacts'] made a Ticket; the stream holds Contact" in message


def test_no_incremental_stream_is_a_skip_not_a_pass(outcomes: dict[str, dict[str, tuple[str, str]]]) -> None:
    results = outcomes["TestNoIncrementalStream"]
    outcome, reason = results["test_incremental_read_returns_exactly_what_is_at_or_after_the_cursor"]
    assert outcome == "skipped" and "no stream it reads declares INCREMENTAL" in reason
    outcome, reason = results["test_create_update_delete_round_trip"]
    assert outcome == "skipped" and "no stream can CREATE" in reason
    assert results["test_full_read_is_ordered_unique_and_utc"][0] == "passed"


def test_the_example_is_a_module_the_guide_quotes() -> None:
    guide = (Path(__file__).resolve().parents[1] / "docs" / "connectors.md").read_text()
    assert "<!-- from: tests/test_testing_kit.py -->" in guide
