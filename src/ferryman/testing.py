"""The connector contract test kit: one parametrised suite every connector must pass.

A connector author (built-in or third-party) subclasses :class:`ConnectorContract` in a
test module and provides one fixture, ``contract``, returning a :class:`ContractSetup`::

    import pytest
    from ferryman.testing import ConnectorContract, ContractSetup

    class TestMyAppContract(ConnectorContract):
        @pytest.fixture
        def contract(self) -> ContractSetup:
            return ContractSetup(
                connector="myapp",                    # entry-point name, or the class
                simulator="myapp",                    # its sandbox simulator (name or class)
                options=lambda url: {"base_url": url, "api_key": "sandbox-key"},
                bad_options=lambda url: {"base_url": url, "api_key": "wrong"},
                samples={"contacts": lambda n: Contact(key="new", updated_at=utcnow(), email=f"c{n}@example.com")},
            )

Each test starts the simulator on loopback in a thread, opens the connector against it
over real HTTP and checks one promise of the contract: streams are declared; a full
read returns well-formed records in cursor order with UTC timestamps; an incremental
read returns exactly the records at or after the cursor; create, update and delete
round-trip; find by natural key finds; bad credentials stop the run with
:class:`~ferryman.errors.AuthError`; a 429 or 5xx burst is retried without retrying
before ``Retry-After``. The tests use pytest-asyncio (``@pytest.mark.asyncio``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from typing import Any

import pytest

from ferryman import plugins
from ferryman.connector import Capability, Connector, Cursor, Page, StreamInfo, SystemContext, record_order
from ferryman.errors import AuthError, FatalError
from ferryman.records import RECORD_TYPES, Record, fingerprint

__all__ = ["ConnectorContract", "ContractSetup", "collect"]


@dataclass
class ContractSetup:
    """Everything the contract suite needs to know about one connector."""

    connector: str | type[Connector]
    simulator: str | type[Any]
    options: Callable[[str], dict[str, Any]]
    bad_options: Callable[[str], dict[str, Any]] | None = None
    #: a new, valid record to create, per writable stream (n makes it unique)
    samples: dict[str, Callable[[int], Record]] = field(default_factory=dict)
    #: an edit for the update round trip, per stream (default: change a text field)
    edits: dict[str, Callable[[Record], Record]] = field(default_factory=dict)
    simulator_kwargs: dict[str, Any] = field(default_factory=lambda: {"records": 30, "seed": 7})
    #: streams the suite reads (default: every non-reference stream with READ)
    streams: list[str] | None = None
    #: fields a target may legitimately not echo back (normalised, write-only)
    ignore_fields: dict[str, set[str]] = field(default_factory=dict)
    #: HTTP status the simulator's burst uses to prove retries (429 by default)
    burst_status: int = 429


def _resolve(value: Any, group: Callable[[str], Any]) -> Any:
    return group(value) if isinstance(value, str) else value


async def collect(pages: AsyncIterator[Page]) -> tuple[list[Record], list[Any]]:
    records: list[Record] = []
    rejects: list[Any] = []
    async for page in pages:
        records.extend(page.records)
        rejects.extend(page.rejects)
    return records, rejects


class ConnectorContract:
    """Subclass me and provide the ``contract`` fixture (see the module docstring)."""

    # -- fixtures ---------------------------------------------------------------------
    @pytest.fixture
    def sandbox(self, contract: ContractSetup) -> Iterator[Any]:
        from ferryman.sandbox import SimulatorThread

        cls = _resolve(contract.simulator, plugins.simulator_class)
        with SimulatorThread(cls(**contract.simulator_kwargs)) as thread:
            yield thread

    @contextlib.asynccontextmanager
    async def connect(
        self, contract: ContractSetup, url: str, *, bad: bool = False, **overrides: Any
    ) -> AsyncIterator[Connector]:
        cls = _resolve(contract.connector, plugins.connector_class)
        make = contract.bad_options if bad else contract.options
        assert make is not None
        options = cls.Options.model_validate({**make(url), **overrides})
        connector = cls(SystemContext("contract", options, None, {}))
        await connector.open()
        try:
            yield connector
        finally:
            await connector.close()

    def read_streams(self, contract: ContractSetup, connector: Connector) -> list[StreamInfo]:
        streams = connector.streams()
        names = contract.streams or [s.name for s in streams.values() if s.can(Capability.READ) and not s.reference]
        return [streams[n] for n in names]

    # -- the contract -----------------------------------------------------------------
    @pytest.mark.asyncio
    async def test_declares_its_streams(self, contract: ContractSetup, sandbox: Any) -> None:
        async with self.connect(contract, sandbox.url) as connector:
            streams = connector.streams()
            assert streams, "a connector declares at least one stream"
            for name, info in streams.items():
                assert info.name == name
                assert info.record_type in RECORD_TYPES.values(), f"{name}: not a canonical record type"
                assert info.capabilities, f"{name}: declares no capability"
                if info.can(Capability.FIND):
                    assert info.natural_key, f"{name}: FIND needs a natural_key"
            cls = type(connector)
            try:
                described = cls.describe()
            except NotImplementedError:
                return
            assert set(described) <= set(streams) or set(streams) <= set(described)

    @pytest.mark.asyncio
    async def test_full_read_is_ordered_unique_and_utc(self, contract: ContractSetup, sandbox: Any) -> None:
        async with self.connect(contract, sandbox.url) as connector:
            for info in self.read_streams(contract, connector):
                records, _ = await collect(connector.read(info.name, None, 7))
                assert records, f"{info.name}: the simulator has records but none were read"
                assert all(isinstance(r, info.record_type) for r in records)
                keys = [r.key for r in records]
                assert len(keys) == len(set(keys)), f"{info.name}: a full read repeated a key"
                if info.ordered:
                    assert records == sorted(records, key=record_order), f"{info.name}: not in (updated_at, key) order"
                for record in records:
                    for fname in record.datetime_fields():
                        value = getattr(record, fname)
                        if value is not None:
                            assert value.utcoffset() == timedelta(0) and value.tzinfo is UTC, (
                                f"{info.name}.{fname} not UTC"
                            )

    @pytest.mark.asyncio
    async def test_incremental_read_returns_exactly_what_is_at_or_after_the_cursor(
        self, contract: ContractSetup, sandbox: Any
    ) -> None:
        async with self.connect(contract, sandbox.url) as connector:
            for info in self.read_streams(contract, connector):
                if not info.can(Capability.INCREMENTAL):
                    continue
                everything, _ = await collect(connector.read(info.name, None, 50))
                ordered = sorted(everything, key=record_order)
                middle = Cursor.of(ordered[len(ordered) // 2])
                newer, _ = await collect(connector.read(info.name, middle, 5))
                expected = {r.key for r in ordered if Cursor.of(r) >= middle}
                got = {r.key for r in newer}
                assert expected <= got, f"{info.name}: incremental read missed {sorted(expected - got)[:5]}"
                older = [r.key for r in newer if r.updated_at < middle.updated_at]
                assert not older, f"{info.name}: incremental read returned records older than the cursor: {older[:5]}"

    @pytest.mark.asyncio
    async def test_create_update_delete_round_trip(self, contract: ContractSetup, sandbox: Any) -> None:
        async with self.connect(contract, sandbox.url) as connector:
            for stream, make in contract.samples.items():
                info = connector.stream(stream)
                if not info.can(Capability.CREATE):
                    continue
                sample = make(1)
                created = await connector.create(stream, sample)
                assert created.key, f"{stream}: create returned no key"
                fetched = await self._get(connector, info, created)
                assert fetched is not None, f"{stream}: created record not readable"
                self._assert_content(contract, stream, sample, fetched)
                if info.can(Capability.UPDATE):
                    edit = contract.edits.get(stream, _default_edit)
                    changed = edit(fetched)
                    updated = await connector.update(stream, created.key, changed)
                    assert updated.key == created.key
                    again = await self._get(connector, info, created)
                    assert again is not None
                    self._assert_content(contract, stream, changed, again)
                    assert again.updated_at >= fetched.updated_at
                if info.can(Capability.DELETE):
                    await connector.delete(stream, created.key)
                    gone = await self._get(connector, info, created)
                    assert gone is None or gone.deleted, f"{stream}: still there after delete"
                    await connector.delete(stream, created.key)  # deleting twice is not an error

    @pytest.mark.asyncio
    async def test_find_by_natural_key(self, contract: ContractSetup, sandbox: Any) -> None:
        async with self.connect(contract, sandbox.url) as connector:
            for stream, make in contract.samples.items():
                info = connector.stream(stream)
                if not (info.can(Capability.FIND) and info.can(Capability.CREATE)):
                    continue
                sample = make(2)
                created = await connector.create(stream, sample)
                found = await connector.find(stream, sample)
                assert found is not None and found.key == created.key, f"{stream}: find by {info.natural_key} failed"
                stranger = sample.model_copy(update={info.natural_key or "key": _unlikely(info, sample)})
                assert await connector.find(stream, stranger) is None

    @pytest.mark.asyncio
    async def test_bad_credentials_stop_the_run(self, contract: ContractSetup, sandbox: Any) -> None:
        if contract.bad_options is None:
            pytest.skip("the connector has no credentials")
        async with self.connect(contract, sandbox.url, bad=True) as connector:
            info = self.read_streams(contract, connector)[0]
            with pytest.raises((AuthError, FatalError)) as failure:
                await collect(connector.read(info.name, None, 10))
            assert "auth" in str(failure.value).lower() or "401" in str(failure.value) or "403" in str(failure.value)

    @pytest.mark.asyncio
    async def test_throttling_and_server_errors_are_retried(self, contract: ContractSetup, sandbox: Any) -> None:
        async with self.connect(contract, sandbox.url, backoff_base=0.01, backoff_cap=0.05) as connector:
            info = self.read_streams(contract, connector)[0]
            expected, _ = await collect(connector.read(info.name, None, 50))
            sim = sandbox.simulator
            sandbox.call(sim.faults.start_burst, 2, contract.burst_status, 1.0)
            records, _ = await collect(connector.read(info.name, None, 50))
            assert {r.key for r in records} == {r.key for r in expected}
            sandbox.call(sim.faults.replace, "5xx:0.3")
            try:
                records, _ = await collect(connector.read(info.name, None, 5))
            finally:
                sandbox.call(sim.faults.replace, None)
            assert {r.key for r in records} == {r.key for r in expected}
            stats = sim.stats
            assert stats.by_status[str(contract.burst_status)] >= 2, "the throttle burst was not exercised"
            assert sum(n for s, n in stats.by_status.items() if s.startswith("5") and s != "503") >= 1, (
                "no 5xx was exercised"
            )
            assert stats.early_retries == 0, "retried before Retry-After said"

    # -- helpers ------------------------------------------------------------------------
    async def _get(self, connector: Connector, info: StreamInfo, created: Record) -> Record | None:
        try:
            return await connector.get(info.name, created.key)
        except NotImplementedError:
            pass
        records, _ = await collect(connector.read(info.name, None, 100))
        return next((r for r in records if r.key == created.key), None)

    def _assert_content(self, contract: ContractSetup, stream: str, wanted: Record, got: Record) -> None:
        ignore = contract.ignore_fields.get(stream, set())
        want = {k: v for k, v in wanted.content().items() if v is not None and k not in ignore}
        have = {k: v for k, v in got.content().items() if k in want}
        assert have == want, f"{stream}: wrote {want}, read back {have}"
        _ = fingerprint


def _default_edit(record: Record) -> Record:
    for name in ("subject", "last_name", "name", "notes", "title"):
        if name in type(record).model_fields:
            value = getattr(record, name) or ""
            return record.model_copy(update={name: f"{value} (edited)".strip()})
    return record


def _unlikely(info: StreamInfo, sample: Record) -> Any:
    if info.natural_key == "email":
        return "nobody-at-all@nowhere.invalid"
    return "no-such-record-ferryman-contract"
