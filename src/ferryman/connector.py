"""The connector contract: the one thing a connector author implements.

A connector is one kind of app (``clientexec``, ``csv``...). Each configured *system*
is an instance of it. A connector declares its streams and what each can do, and
implements the operations its capabilities promise; the engine does everything else
(cursors, links, intents, fingerprints, dead letters, conflicts).

Built-in connectors register through the ``ferryman.connectors`` entry-point group,
exactly like a third-party package would::

    [project.entry-points."ferryman.connectors"]
    myapp = "myapp_ferryman:MyAppConnector"

Rules every connector keeps:

- Every datetime it hands over is aware UTC (the record models refuse naive ones).
- ``read`` yields pages in ``(updated_at, key)`` order when ``StreamInfo.ordered`` is
  true; a source that cannot says ``ordered=False`` and the engine only moves its
  cursor after a complete pass. The engine verifies the order of every page it is
  handed (:class:`ferryman.cursor.OrderGuard`) and fails the run when it is broken.
- HTTP connectors read through :mod:`ferryman.sdk.readloop`, which owns paging, keyset
  restarts, the ``since`` filter and the guards against APIs that ignore paging or sort.
- Errors are raised as the classes in :mod:`ferryman.errors`; the class decides whether
  the engine retries, defers, dead-letters or stops.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ferryman.cursor import Cursor, natural_key, record_order
from ferryman.errors import NotSupportedError, RecordRejected
from ferryman.records import Record

__all__ = [
    "Capability",
    "Connector",
    "ConnectorOptions",
    "Cursor",
    "Page",
    "Reject",
    "StreamInfo",
    "SystemContext",
    "natural_key",
    "record_order",
]


class Capability(enum.StrEnum):
    """What a stream can do."""

    READ = "read"
    INCREMENTAL = "incremental"  # read(since=...) returns only records at or after the cursor
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    FIND = "find"  # find() by natural key or external-id marker


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """One record kind of a system and what the connector can do with it."""

    name: str
    record_type: type[Record]
    capabilities: frozenset[Capability]
    natural_key: str | None = None  # canonical field find() matches on (``email`` for contacts)
    ordered: bool = True  # read() yields (updated_at, key) order
    reference: bool = False  # reference data (services, operators), not a main stream
    description: str = ""
    #: the finest step of the source's updated_at (whole seconds by default): an overlap
    #: shorter than this is raised to it (see :mod:`ferryman.cursor`)
    precision: timedelta = timedelta(seconds=1)
    #: ``deletes: probe`` support: records deleted in the app vanish from lists, so the engine
    #: fetches linked keys a full pass did not see with :meth:`Connector.get`
    hides_deleted: bool = False

    def can(self, capability: Capability) -> bool:
        return capability in self.capabilities


@dataclass(frozen=True, slots=True)
class Reject:
    """A native row or entity the source could not turn into a record."""

    ref: str  # where it is: "line 17", a native id, a page URL
    reason: str
    raw: Any = None
    key: str | None = None  # the native id, when one could be read


@dataclass(slots=True)
class Page:
    """One page of a read: records in cursor order plus what could not be read.

    ``total``, when the source says or can estimate it, is how many records the whole read
    brings (all its pages, not this one): a CSV file counted once read, a list API that
    answered every record at once, an API that returns a total count. It only feeds the
    progress bar's share done and ETA, so an estimate will do; ``None`` when unknown."""

    records: list[Record]
    rejects: list[Reject] = field(default_factory=list)
    total: int | None = None


class ConnectorOptions(BaseModel):
    """Base for a connector's own configuration model (the keys under ``systems.NAME``)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(slots=True)
class SystemContext:
    """What the engine hands a connector instance."""

    name: str  # the system's name in config (``helpdesk``)
    options: ConnectorOptions
    config_file: str | None = None
    services: dict[str, Any] = field(default_factory=dict)  # shared engine services (http registry, state)


class Connector:
    """Base class of every connector. Override what your streams' capabilities promise."""

    #: the name used in config (``connector: clientexec``)
    kind: ClassVar[str] = ""
    #: the pydantic model of this connector's options
    Options: ClassVar[type[ConnectorOptions]] = ConnectorOptions
    #: one line for ``ferryman connectors``
    summary: ClassVar[str] = ""

    def __init__(self, context: SystemContext) -> None:
        self.context = context
        self.name = context.name
        self.options = context.options

    # -- description ---------------------------------------------------------------
    def streams(self) -> Mapping[str, StreamInfo]:
        """The streams this system has. May depend on options."""
        raise NotImplementedError

    @classmethod
    def describe(cls) -> Mapping[str, StreamInfo]:
        """Streams and capabilities without a configured instance (for ``ferryman connectors``)."""
        raise NotImplementedError

    def hosts(self) -> list[str]:
        """Host keys this system talks to; a host's ``not_before`` deferral holds runs back."""
        return []

    def stream(self, name: str) -> StreamInfo:
        streams = self.streams()
        if name not in streams:
            raise NotSupportedError(f"has no stream {name!r} (streams: {', '.join(sorted(streams))})", system=self.name)
        return streams[name]

    # -- lifecycle -----------------------------------------------------------------
    async def open(self) -> None:
        """Acquire resources (HTTP client, file handles)."""

    async def close(self) -> None:
        """Release what :meth:`open` acquired."""

    async def check(self) -> None:
        """Reach the system with the configured credentials; raise on failure."""

    # -- reading -------------------------------------------------------------------
    def read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        """Yield pages of records at or after ``since`` (``None``: everything)."""
        raise NotSupportedError(f"cannot read {stream}", system=self.name)

    async def get(self, stream: str, key: str) -> Record | None:
        """One record by key, or ``None`` when it does not exist."""
        raise NotSupportedError(f"cannot get single {stream} records", system=self.name)

    async def find(self, stream: str, record: Record) -> Record | None:
        """The record in this system that is ``record`` (by natural key), if any."""
        raise NotSupportedError(f"cannot look up {stream} by natural key", system=self.name)

    async def reconcile(self, stream: str, record: Record, started: datetime) -> Record | None:
        """The record that an interrupted create of ``record`` (begun at ``started``) made, if any.

        The engine asks after a crash and before a replay: a create whose answer never
        arrived may have happened. ``record.key`` is the *source* key. The default looks the
        record up by natural key (:meth:`find`); a stream with no natural key overrides this
        with an external-id marker, or a match on content among records created since
        ``started``. Raise :class:`~ferryman.errors.NotSupportedError` when there is no way to
        look: the engine then parks the record as *unresolved* for a human.
        """
        if self.stream(stream).can(Capability.FIND):
            return await self.find(stream, record)
        raise NotSupportedError(f"cannot look up an interrupted create in {stream}", system=self.name)

    # -- writing -------------------------------------------------------------------
    async def create(self, stream: str, record: Record) -> Record:
        """Create ``record``; return it as stored (its new ``key``, ``updated_at``)."""
        raise NotSupportedError(f"cannot create {stream}", system=self.name)

    async def update(self, stream: str, key: str, record: Record) -> Record:
        """Make the record ``key`` hold ``record``'s content; return it as stored."""
        raise NotSupportedError(f"cannot update {stream}", system=self.name)

    async def delete(self, stream: str, key: str) -> None:
        """Delete the record ``key``. Deleting a missing record is not an error."""
        raise NotSupportedError(f"cannot delete {stream}", system=self.name)

    # -- batching sinks (files) ----------------------------------------------------
    #: True for a sink whose writes become visible only through :meth:`checkpoint` and
    #: :meth:`finish` (a file, an outbox): the engine commits a page's links with the sink's
    #: checkpoint, and after a failure :meth:`restore` cuts back what was not committed.
    transactional_writes: ClassVar[bool] = False

    async def write_page(
        self, stream: str, writes: Sequence[tuple[str | None, Record]]
    ) -> list[Record | RecordRejected]:
        """A page's creates (``(None, record)``) and updates (``(key, record)``) in one call,
        for a sink with :attr:`transactional_writes`; returns, in order, each record as
        stored, or the :class:`~ferryman.errors.RecordRejected` that refused it.

        Any other exception fails the whole page: nothing of it is committed, and the next
        :meth:`restore` cuts the sink back to the last checkpoint, so a sink need not say
        how far it got. The default writes one record at a time through :meth:`create` and
        :meth:`update`; a file sink overrides it to take the page at once.
        """
        out: list[Record | RecordRejected] = []
        for key, record in writes:
            try:
                out.append(await (self.create(stream, record) if key is None else self.update(stream, key, record)))
            except RecordRejected as exc:
                out.append(exc)
        return out

    async def restore(self, stream: str, checkpoint: dict[str, Any] | None) -> None:
        """Before writing: return the sink to the state of ``checkpoint`` (the last commit)."""

    async def checkpoint(self, stream: str) -> dict[str, Any] | None:
        """Make the writes so far durable and describe that state; committed with the cursor."""
        return None

    async def finish(self, stream: str) -> dict[str, Any] | None:
        """End of a run: publish what was written; returns the checkpoint to commit."""
        return None


def capability_table(streams: Mapping[str, StreamInfo]) -> list[dict[str, str]]:
    """Rows for ``ferryman connectors``: one per stream, a mark per capability."""
    rows = []
    for info in streams.values():
        row = {"stream": info.name + (" (ref)" if info.reference else ""), "record": info.record_type.kind}
        for cap in Capability:
            row[cap.value] = "yes" if info.can(cap) else "-"
        rows.append(row)
    return rows
