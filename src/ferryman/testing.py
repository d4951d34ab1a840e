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
before ``Retry-After``. The tests use pytest-asyncio (``@pytest.mark.asyncio``); install
them with ``pip install ferryman[testing]``.

Nothing passes vacuously: a test with nothing to check (no sample record for a stream
that can create, no stream that reads incrementally...) is skipped with a reason that
says what to add, and shows up in ``pytest -ra``.

A simulator is optional. Without one (``simulator=None``) the connector talks to
``base_url`` through whatever ``services`` provide (an ``httpx.MockTransport`` as
``"http_transport"``, or respx routes active during the test), and the tests that need a
simulator's fault injection, request counts or hostile modes (throttling and the whole
hostile suite) are skipped with that reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from typing import Any

import pytest

from ferryman import plugins
from ferryman.connector import Capability, Connector, StreamInfo, SystemContext
from ferryman.cursor import Cursor, due, is_older, record_order
from ferryman.errors import (
    AuthError,
    ConnectorError,
    FatalError,
    FerrymanError,
    OrderViolation,
    RecordRejected,
)
from ferryman.records import RECORD_TYPES, Record, fingerprint
from ferryman.sdk.readloop import collect  # kept importable from here for tests and connector authors

__all__ = ["ConnectorContract", "ContractSetup", "HostileContract", "NoSimulator", "collect", "need_simulator"]


@dataclass
class ContractSetup:
    """Everything the contract suite needs to know about one connector."""

    connector: str | type[Connector]
    #: the sandbox simulator (entry-point name or class); ``None``: no simulator, see ``base_url``
    simulator: str | type[Any] | None
    #: the connector's options, given the URL it is to talk to
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
    #: hostile modes the suite switches on (default: every mode the simulator implements)
    hostile_modes: frozenset[str] | None = None
    #: without a simulator: the URL handed to ``options`` (a fake transport or respx answers it)
    base_url: str = "http://127.0.0.1:9"
    #: engine services for each connector instance (``{"http_transport": httpx.MockTransport(...)}``)
    services: Callable[[], dict[str, Any]] | None = None


@dataclass(frozen=True)
class NoSimulator:
    """What the ``sandbox`` fixture yields when :attr:`ContractSetup.simulator` is ``None``."""

    url: str
    simulator: None = None


def need_simulator(sandbox: Any, what: str) -> Any:
    """The running simulator, or skip the test: ``what`` needs one (said in the reason)."""
    if sandbox.simulator is None:
        pytest.skip(f"no simulator (ContractSetup.simulator is None): {what} needs one")
    return sandbox.simulator


def _resolve(value: Any, group: Callable[[str], Any]) -> Any:
    return group(value) if isinstance(value, str) else value


class ConnectorContract:
    """Subclass me and provide the ``contract`` fixture (see the module docstring)."""

    # -- fixtures ---------------------------------------------------------------------
    @pytest.fixture
    def sandbox(self, contract: ContractSetup) -> Iterator[Any]:
        if contract.simulator is None:
            yield NoSimulator(contract.base_url)
            return
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
        services = contract.services() if contract.services is not None else {}
        connector = cls(SystemContext("contract", options, None, services))
        await connector.open()
        try:
            yield connector
        finally:
            await connector.close()

    def read_streams(self, contract: ContractSetup, connector: Connector) -> list[StreamInfo]:
        """The streams the suite reads (skips the test when there are none)."""
        streams = connector.streams()
        names = contract.streams or [s.name for s in streams.values() if s.can(Capability.READ) and not s.reference]
        if not names:
            pytest.skip("no stream to read: the connector declares no main stream with READ (and streams= names none)")
        return [streams[n] for n in names]

    def sample_streams(self, contract: ContractSetup, connector: Connector, *caps: Capability) -> list[str]:
        """The streams with a sample record that can do all of ``caps``; skips the test,
        naming the streams that lack a sample, when there are none."""
        streams = connector.streams()
        unknown = sorted(set(contract.samples) - set(streams))
        assert not unknown, f"samples for streams the connector does not have: {unknown} (streams: {sorted(streams)})"
        able = [name for name, info in streams.items() if all(info.can(c) for c in caps)]
        chosen = [name for name in able if name in contract.samples]
        if not chosen:
            what = " and ".join(c.value.upper() for c in caps)
            if able:
                pytest.skip(
                    f"no sample record for a stream that can {what} ({', '.join(able)}): give "
                    f"ContractSetup(samples={{{able[0]!r}: lambda n: <a new record>}})"
                )
            pytest.skip(f"no stream can {what}")
        return chosen

    def sample(self, contract: ContractSetup, info: StreamInfo, n: int) -> Record:
        """The sample record ``n`` for a stream, checked to be of the stream's record type."""
        record = contract.samples[info.name](n)
        assert isinstance(record, info.record_type), (
            f"samples[{info.name!r}] made a {type(record).__name__}; the stream holds {info.record_type.__name__}"
        )
        return record

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
            incremental = [i for i in self.read_streams(contract, connector) if i.can(Capability.INCREMENTAL)]
            if not incremental:
                pytest.skip("no stream it reads declares INCREMENTAL")
            for info in incremental:
                everything, _ = await collect(connector.read(info.name, None, 50))
                assert len(everything) >= 2, f"{info.name}: an incremental read needs at least 2 records to test"
                ordered = sorted(everything, key=record_order)
                middle = Cursor.of(ordered[len(ordered) // 2])
                newer, _ = await collect(connector.read(info.name, middle, 5))
                expected = {r.key for r in due(ordered, middle)}
                got = {r.key for r in newer}
                assert expected <= got, f"{info.name}: incremental read missed {sorted(expected - got)[:5]}"
                older = [r.key for r in newer if is_older(r.updated_at, middle)]
                assert not older, f"{info.name}: incremental read returned records older than the cursor: {older[:5]}"

    @pytest.mark.asyncio
    async def test_create_update_delete_round_trip(self, contract: ContractSetup, sandbox: Any) -> None:
        async with self.connect(contract, sandbox.url) as connector:
            for stream in self.sample_streams(contract, connector, Capability.CREATE):
                info = connector.stream(stream)
                sample = self.sample(contract, info, 1)
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
            for stream in self.sample_streams(contract, connector, Capability.CREATE, Capability.FIND):
                info = connector.stream(stream)
                sample = self.sample(contract, info, 2)
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
        sim = need_simulator(sandbox, "injecting a throttle burst and 5xx answers")
        async with self.connect(contract, sandbox.url, backoff_base=0.01, backoff_cap=0.05) as connector:
            info = self.read_streams(contract, connector)[0]
            expected, _ = await collect(connector.read(info.name, None, 50))
            sandbox.call(sim.faults.start_burst, 2, contract.burst_status, 1.0)
            records, _ = await collect(connector.read(info.name, None, 50))
            assert {r.key for r in records} == {r.key for r in expected}
            sandbox.call(sim.faults.replace, "5xx:0.3")

            def server_errors() -> int:
                return sum(n for s, n in sim.stats.by_status.items() if s.startswith("5") and s != "503")

            try:
                # An API that answers a whole list in one request makes few draws: read again
                # (a bounded number of times) until a server error was met and retried.
                for _ in range(20):
                    records, _ = await collect(connector.read(info.name, None, 5))
                    assert {r.key for r in records} == {r.key for r in expected}
                    if server_errors():
                        break
            finally:
                sandbox.call(sim.faults.replace, None)
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


# -- the hostile server kit -----------------------------------------------------------------
HOSTILE_READ_TIMEOUT = 60.0  # seconds: a read that runs longer than this is looping
HOSTILE_REQUEST_BUDGET = 200  # requests one small hostile read may make before it counts as looping


class HostileContract(ConnectorContract):
    """The contract suite plus the hostile-server suite: the simulator misbehaves the way
    real APIs do, and the connector must notice (a clear error) or stay correct (every
    record exactly once), never lose or duplicate records quietly and never loop.

    Subclass it instead of :class:`ConnectorContract`, with the same ``contract`` fixture.
    A mode the simulator does not implement (``Simulator.hostile_supported``) is skipped
    with that reason; the base simulator implements ``garble_reads`` and ``garble_writes``.
    """

    def _mode(self, contract: ContractSetup, sandbox: Any, mode: str) -> None:
        sim = need_simulator(sandbox, f"hostile mode {mode}")
        wanted = contract.hostile_modes if contract.hostile_modes is not None else sim.hostile_supported
        if mode not in wanted or mode not in sim.hostile_supported:
            pytest.skip(f"the {sim.name or type(sim).__name__} simulator does not implement hostile mode {mode}")
        sandbox.call(sim.set_hostile, mode)

    async def _hostile_read(
        self, sandbox: Any, connector: Connector, stream: str, since: Cursor | None, page_size: int
    ) -> tuple[list[Record] | None, Exception | None, int]:
        """Read under a hostile mode: (records, None) or (None, the error), and the requests made."""
        import asyncio

        before = sandbox.simulator.stats.requests
        try:
            records, _ = await asyncio.wait_for(collect(connector.read(stream, since, page_size)), HOSTILE_READ_TIMEOUT)
            result: tuple[list[Record] | None, Exception | None] = (records, None)
        except TimeoutError:
            pytest.fail(f"{stream}: a read against a hostile server ran past {HOSTILE_READ_TIMEOUT:.0f}s (looping)")
        except FerrymanError as exc:
            result = (None, exc)
        made = sandbox.simulator.stats.requests - before
        assert made <= HOSTILE_REQUEST_BUDGET, f"{stream}: {made} requests for a small read: paging does not end"
        return result[0], result[1], made

    def _exactly(self, stream: str, records: list[Record], expected: set[str], what: str) -> None:
        keys = [r.key for r in records]
        assert len(keys) == len(set(keys)), f"{stream} ({what}): a read returned a key twice"
        missing = expected - set(keys)
        assert not missing, f"{stream} ({what}): records lost without an error: {sorted(missing)[:5]}"

    @pytest.mark.asyncio
    async def test_hostile_server_ignoring_paging_is_read_whole_or_stopped(
        self, contract: ContractSetup, sandbox: Any
    ) -> None:
        async with self.connect(contract, sandbox.url) as connector:
            streams = self.read_streams(contract, connector)
            expected = {
                info.name: {r.key for r in (await collect(connector.read(info.name, None, 50)))[0]} for info in streams
            }
            self._mode(contract, sandbox, "ignore_paging")
            for info in streams:
                records, error, _ = await self._hostile_read(sandbox, connector, info.name, None, 5)
                if error is not None:
                    assert isinstance(error, FatalError), f"{info.name}: {type(error).__name__}: {error}"
                    assert "pag" in str(error).lower(), f"{info.name}: the error does not say paging: {error}"
                    continue
                assert records is not None
                self._exactly(info.name, records, expected[info.name], "ignore_paging")

    @pytest.mark.asyncio
    async def test_hostile_server_ignoring_sort_loses_nothing_quietly(
        self, contract: ContractSetup, sandbox: Any
    ) -> None:
        async with self.connect(contract, sandbox.url) as connector:
            streams = self.read_streams(contract, connector)
            everything = {info.name: (await collect(connector.read(info.name, None, 50)))[0] for info in streams}
            self._mode(contract, sandbox, "ignore_sort")
            for info in streams:
                ordered = sorted(everything[info.name], key=record_order)
                starts: list[Cursor | None] = [None]
                if info.can(Capability.INCREMENTAL) and len(ordered) > 2:
                    starts.append(Cursor.of(ordered[len(ordered) // 3]))
                for since in starts:
                    expected = {r.key for r in due(ordered, since)}
                    records, error, _ = await self._hostile_read(sandbox, connector, info.name, since, 4)
                    if error is not None:
                        assert isinstance(error, OrderViolation), f"{info.name}: {type(error).__name__}: {error}"
                        continue
                    assert records is not None
                    self._exactly(info.name, records, expected, f"ignore_sort from {since}")
                    if info.ordered:
                        assert records == sorted(records, key=record_order), (
                            f"{info.name}: an ordered stream yielded records out of (updated_at, key) order"
                        )

    @pytest.mark.asyncio
    async def test_hostile_garbled_read_fails_loudly(self, contract: ContractSetup, sandbox: Any) -> None:
        async with self.connect(contract, sandbox.url, backoff_base=0.01, backoff_cap=0.05) as connector:
            info = self.read_streams(contract, connector)[0]
            expected = {r.key for r in (await collect(connector.read(info.name, None, 50)))[0]}
            self._mode(contract, sandbox, "garble_reads")
            records, error, made = await self._hostile_read(sandbox, connector, info.name, None, 3)
            if error is None:
                assert made == 1, f"{info.name}: garbled pages were taken as a complete read"
                assert records is not None
                self._exactly(info.name, records, expected, "garble_reads")
            else:
                assert isinstance(error, ConnectorError), f"{info.name}: {type(error).__name__}: {error}"

    @pytest.mark.asyncio
    async def test_hostile_stub_create_body_is_read_back_not_rejected(
        self, contract: ContractSetup, sandbox: Any
    ) -> None:
        async with self.connect(contract, sandbox.url) as connector:
            streams = self.sample_streams(contract, connector, Capability.CREATE)
            self._mode(contract, sandbox, "stub_create")
            for stream in streams:
                sample = self.sample(contract, connector.stream(stream), 11)
                created = await connector.create(stream, sample)  # a 2xx is never a rejection
                assert created.key, f"{stream}: create answered with a stub and no key was kept"
                sandbox.call(sandbox.simulator.set_hostile)
                fetched = await self._get(connector, connector.stream(stream), created)
                assert fetched is not None, f"{stream}: the key kept from a stub create does not exist"
                self._assert_content(contract, stream, sample, fetched)
                self._assert_content(contract, stream, sample, created)
                sandbox.call(sandbox.simulator.set_hostile, "stub_create")

    @pytest.mark.asyncio
    async def test_hostile_error_inside_200_is_a_rejection(self, contract: ContractSetup, sandbox: Any) -> None:
        async with self.connect(contract, sandbox.url) as connector:
            streams = self.sample_streams(contract, connector, Capability.CREATE, Capability.UPDATE)
            for stream in streams:
                info = connector.stream(stream)
                created = await connector.create(stream, self.sample(contract, info, 12))
                before = await self._get(connector, info, created)
                assert before is not None
                self._mode(contract, sandbox, "error_in_200")
                edit = contract.edits.get(stream, _default_edit)
                with pytest.raises(RecordRejected):
                    await connector.update(stream, created.key, edit(before))
                sandbox.call(sandbox.simulator.set_hostile)
                after = await self._get(connector, info, created)
                assert after is not None
                self._assert_content(contract, stream, before, after)

    @pytest.mark.asyncio
    async def test_hostile_hidden_deletes_are_found_by_get(self, contract: ContractSetup, sandbox: Any) -> None:
        async with self.connect(contract, sandbox.url) as connector:
            streams = self.sample_streams(contract, connector, Capability.CREATE, Capability.DELETE)
            self._mode(contract, sandbox, "hide_deleted")
            for stream in streams:
                created = await connector.create(stream, self.sample(contract, connector.stream(stream), 13))
                await connector.delete(stream, created.key)
                listed = {r.key: r for r in (await collect(connector.read(stream, None, 100)))[0]}
                assert created.key not in listed or listed[created.key].deleted
                try:
                    probed = await connector.get(stream, created.key)
                except NotImplementedError:
                    pytest.fail(f"{stream}: deletes are hidden from lists and get() cannot probe for them")
                assert probed is None or probed.deleted, f"{stream}: get() still answers a deleted record as live"

    @pytest.mark.asyncio
    async def test_hostile_garbled_create_answer_is_never_a_rejection(
        self, contract: ContractSetup, sandbox: Any
    ) -> None:
        """The app carried out the create and its answer cannot be read: the record exists,
        so a rejection (a dead letter that a replay would create again) is wrong. Either the
        connector reads the record back, or it raises an error whose outcome the engine
        treats as unknown (the intent is kept and reconciled by lookup)."""
        async with self.connect(contract, sandbox.url, backoff_base=0.01, backoff_cap=0.05) as connector:
            streams = self.sample_streams(contract, connector, Capability.CREATE)
            for stream in streams:
                sample = self.sample(contract, connector.stream(stream), 14)
                self._mode(contract, sandbox, "garble_writes")
                try:
                    created: Record | None = await connector.create(stream, sample)
                except RecordRejected as exc:
                    pytest.fail(f"{stream}: a create the app carried out was taken as refused: {exc}")
                except ConnectorError:
                    created = None  # outcome unknown: the engine keeps the intent and looks it up
                finally:
                    sandbox.call(sandbox.simulator.set_hostile)
                if created is not None:
                    fetched = await self._get(connector, connector.stream(stream), created)
                    assert fetched is not None, f"{stream}: the key read back after a garbled answer does not exist"
                    self._assert_content(contract, stream, sample, fetched)
