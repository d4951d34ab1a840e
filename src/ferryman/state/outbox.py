"""Outbound webhook events waiting for their page: the ``webhook_outbox`` rows a page
writes, and where they wait until then.

A webhook sink does not write its events itself. It *stages* each one here, in memory,
under its target (``system.stream``), as the engine writes the record; the page commit
(:meth:`ferryman.state.StateStore.commit_page`) takes the staged events of every target the
page names and inserts them in the page transaction, beside the cursor and the links. An
event is therefore durable exactly when the page that made it is: a page that is not
committed (a crash, a refused commit) leaves no row, and is read and written again.

Delivery, retries, endpoint health and replay work on the stored rows and live with the
webhook connector (:mod:`ferryman.webhooks.outbox`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ferryman.state.models import WebhookOutboxRow
from ferryman.state.sql import db_time, insert_rows, reading
from ferryman.timeutil import utcnow

__all__ = ["T_OUTBOX", "Outbox", "OutboxEvent"]

T_OUTBOX = WebhookOutboxRow.__table__  # type: ignore[attr-defined]

_OUTBOX_HEAD = (
    "INSERT INTO webhook_outbox (event_id, system, stream, record_key, type, body, state, attempts, "
    "created_at, next_attempt_at)"
)
_OUTBOX_ROW = "(%s, %s, %s, %s, %s, %s, 'pending', 0, %s, %s)"
_OUTBOX_TAIL = " ON CONFLICT (event_id) DO NOTHING"


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One record change, ready to send: every attempt sends ``body`` as ``event_id``."""

    event_id: str
    system: str
    stream: str
    record_key: str
    type: str
    body: str
    #: the first attempt is due this long after the event is stored (``retry_schedule[0]``)
    delay: timedelta = timedelta(0)


class Outbox:
    """The outbox rows of one state database, and the events staged for the next commit
    of their target (per process: staging is memory, never shared)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # staged by the run on the event loop, taken by the commit on a state thread
        self._lock = threading.Lock()
        self._staged: dict[str, list[OutboxEvent]] = {}

    # -- staging (memory) --------------------------------------------------------------------
    def stage(self, target: str, event: OutboxEvent) -> None:
        """Hold ``event`` for the next page commit that names ``target`` (``system.stream``)."""
        with self._lock:
            self._staged.setdefault(target, []).append(event)

    def staged(self, target: str) -> list[OutboxEvent]:
        """The events staged for ``target``, oldest first."""
        with self._lock:
            return list(self._staged.get(target, ()))

    def take(self, targets: Iterable[str]) -> list[OutboxEvent]:
        """Remove and return the events staged for ``targets``, for the page commit."""
        taken: list[OutboxEvent] = []
        with self._lock:
            for target in targets:
                taken.extend(self._staged.pop(target, ()))
        return taken

    def discard(self, target: str) -> int:
        """Forget the events staged for ``target`` (its page will be read again); how many."""
        with self._lock:
            return len(self._staged.pop(target, ()))

    # -- rows --------------------------------------------------------------------------------
    def write_in(self, conn: Connection, events: Sequence[OutboxEvent]) -> None:
        """Insert-if-absent on ``event_id``, in the caller's transaction, with one
        driver-level statement (:func:`~ferryman.state.sql.insert_rows`): a page re-read after a crash derives the same ids and adds
        nothing, a real new change has a new id."""
        if not events:
            return
        now = utcnow()
        at = db_time(self.dialect, now)
        rows = [
            (e.event_id, e.system, e.stream, e.record_key, e.type, e.body, at, db_time(self.dialect, now + e.delay))
            for e in events
        ]
        insert_rows(conn, self.dialect, _OUTBOX_HEAD, _OUTBOX_ROW, rows, _OUTBOX_TAIL)

    def insert(self, events: Sequence[OutboxEvent]) -> None:
        """:meth:`write_in` in a transaction of its own: for an event that belongs to no
        page (a dead letter replayed, whose row may have been pruned since)."""
        if not events:
            return
        with self.engine.begin() as conn:
            self.write_in(conn, events)

    def latest(self, system: str, stream: str, key: str) -> tuple[str, str] | None:
        """``(event_id, type)`` of the newest stored event for one record, if any."""
        with reading(self.engine) as conn:
            row = conn.execute(
                sa.select(T_OUTBOX.c.event_id, T_OUTBOX.c.type)
                .where(T_OUTBOX.c.system == system, T_OUTBOX.c.stream == stream, T_OUTBOX.c.record_key == key)
                .order_by(T_OUTBOX.c.seq.desc())
                .limit(1)
            ).first()
        return (row[0], row[1]) if row else None
