"""A fake connector for engine tests: records in memory, compound-cursor paging, and
hooks to fail on purpose. Registered under the name ``memory`` by :func:`register`."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

from pydantic import Field

from ferryman import plugins
from ferryman.config import Secret
from ferryman.connector import Capability, Connector, ConnectorOptions, Page, StreamInfo
from ferryman.cursor import Cursor, due, parse_precision, record_order
from ferryman.errors import AuthError, RecordRejected
from ferryman.records import Contact, Record, Ticket
from ferryman.timeutil import utcnow

STORES: dict[str, dict[str, dict[str, Record]]] = {}
#: writes in flight right now, per store (as (op, key)), and the most seen at once
IN_FLIGHT: dict[str, list[tuple[str, str]]] = {}
MOST_IN_FLIGHT: dict[str, int] = {}
CALLS: dict[str, list[tuple[str, str, str]]] = {}
_IDS: dict[str, itertools.count[int]] = {}


class MemoryOptions(ConnectorOptions):
    store: str
    api_key: Secret | None = None
    fail_auth: bool = False
    reject_subjects: list[str] = Field(default_factory=list)
    #: subjects an update is refused for (a validation error the app finds on update only)
    reject_update_subjects: list[str] = Field(default_factory=list)
    #: seconds each create and update takes (an app's answer time): writes then overlap
    write_delay: float = 0.0
    #: subjects whose create fails as if the app were unreachable (after write_delay)
    fail_create_subjects: list[str] = Field(default_factory=list)
    ordered: bool = True
    #: the step of the fake's updated_at: microseconds (exact), or "seconds" like most APIs
    precision: str = "microseconds"


class MemoryConnector(Connector):
    kind = "memory"
    Options = MemoryOptions
    summary = "in-memory test connector"
    options: MemoryOptions
    _caps: ClassVar[frozenset[Capability]] = frozenset(Capability)

    def streams(self) -> Mapping[str, StreamInfo]:
        ordered, precision = self.options.ordered, parse_precision(self.options.precision)
        return {
            "tickets": StreamInfo("tickets", Ticket, self._caps, "subject", ordered=ordered, precision=precision),
            "contacts": StreamInfo("contacts", Contact, self._caps, "email", ordered=ordered, precision=precision),
        }

    @classmethod
    def describe(cls) -> Mapping[str, StreamInfo]:
        return {"tickets": StreamInfo("tickets", Ticket, cls._caps)}

    @property
    def data(self) -> dict[str, dict[str, Record]]:
        return STORES.setdefault(self.options.store, {})

    def _log(self, op: str, stream: str, key: str) -> None:
        CALLS.setdefault(self.options.store, []).append((op, stream, key))

    def _check_auth(self) -> None:
        if self.options.fail_auth:
            key = self.options.api_key.get_secret_value() if self.options.api_key else ""
            # a careless upstream error that embeds the key: redaction must catch it
            raise AuthError(
                f"authentication failed (HTTP 401) for https://app.example/api?key={key}", system=self.name, status=401
            )

    async def read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        self._check_auth()
        rows = sorted(self.data.get(stream, {}).values(), key=record_order)
        rows = due(rows, since)
        if not self.options.ordered:
            rows.reverse()
        for start in range(0, len(rows), page_size):
            self._log("read", stream, str(start))
            yield Page(rows[start : start + page_size])

    async def get(self, stream: str, key: str) -> Record | None:
        return self.data.get(stream, {}).get(key)

    async def find(self, stream: str, record: Record) -> Record | None:
        field = self.stream(stream).natural_key or "key"
        for existing in self.data.get(stream, {}).values():
            if not existing.deleted and getattr(existing, field) == getattr(record, field):
                return existing
        return None

    async def _in_flight(self, op: str, key: str) -> None:
        """Hold a write for ``write_delay`` seconds, counting the writes that overlap."""
        if not self.options.write_delay:
            return
        import asyncio

        store = self.options.store
        now = IN_FLIGHT.setdefault(store, [])
        assert all(k != key for _, k in now), f"two writes in flight for {key} in {store}"
        now.append((op, key))
        MOST_IN_FLIGHT[store] = max(MOST_IN_FLIGHT.get(store, 0), len(now))
        try:
            await asyncio.sleep(self.options.write_delay)
        finally:
            now.remove((op, key))

    async def create(self, stream: str, record: Record) -> Record:
        self._check_auth()
        await self._in_flight("create", str(getattr(record, "subject", None) or getattr(record, "email", None)))
        if getattr(record, "subject", None) in self.options.fail_create_subjects:
            from ferryman.errors import RetriableError

            raise RetriableError("connection reset by the app", system=self.name)
        if getattr(record, "subject", None) in self.options.reject_subjects:
            raise RecordRejected("subject refused by the app (HTTP 422)", system=self.name, status=422)
        table = self.data.setdefault(stream, {})
        key = f"{self.options.store}-{next(_IDS.setdefault(self.options.store, itertools.count(1)))}"
        stored = record.model_copy(update={"key": key, "updated_at": utcnow(), "extra": {}})
        table[key] = stored
        self._log("create", stream, key)
        return stored

    async def update(self, stream: str, key: str, record: Record) -> Record:
        self._check_auth()
        if getattr(record, "subject", None) in self.options.reject_update_subjects:
            raise RecordRejected("subject refused by the app on update (HTTP 422)", system=self.name, status=422)
        await self._in_flight("update", key)
        stored = record.model_copy(update={"key": key, "updated_at": utcnow(), "extra": {}})
        self.data.setdefault(stream, {})[key] = stored
        self._log("update", stream, key)
        return stored

    async def delete(self, stream: str, key: str) -> None:
        # a soft delete, as many apps do: readers see a tombstone with a new updated_at
        table = self.data.setdefault(stream, {})
        if key in table and not table[key].deleted:
            table[key] = table[key].model_copy(update={"deleted": True, "updated_at": utcnow()})
        self._log("delete", stream, key)


def register() -> None:
    plugins.connectors()["memory"] = plugins.Plugin("memory", None, MemoryConnector)  # type: ignore[arg-type]


def reset() -> None:
    IN_FLIGHT.clear()
    MOST_IN_FLIGHT.clear()
    STORES.clear()
    CALLS.clear()
    _IDS.clear()


def put(store: str, stream: str, record: Record) -> None:
    STORES.setdefault(store, {}).setdefault(stream, {})[record.key] = record


def seed_tickets(store: str, n: int) -> None:
    """``n`` tickets ``t000``... in ``store``, a second apart, the last an hour ago."""
    from datetime import timedelta

    from ferryman.records import Ticket

    start = utcnow() - timedelta(hours=1)
    for i in range(n):
        put(store, "tickets", Ticket(key=f"t{i:03d}", updated_at=start + timedelta(seconds=i), subject=f"s{i}"))


def options(**extra: Any) -> dict[str, Any]:
    return {"connector": "memory", **extra}
