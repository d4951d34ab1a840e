"""What happened to single records: the event table behind ``ferryman explain`` and the
conflict journal behind ``ferryman conflicts``.

A repository over two tables (``record_events``, ``conflicts``), used through
:attr:`ferryman.state.StateStore.history`. Runs hand their events and journal entries to
the page transaction (:class:`ferryman.state.PageCommit` ``events``/``conflicts``), which
calls :meth:`History.write` inside it: an event is durable exactly when the page it
describes is. Writes outside a run (a replay, a restore) use :meth:`History.add`.

Nothing here stores a payload. Events keep fingerprints, field names and reasons (all
redacted); journal entries keep the values a sync overwrote, with fields named like
secrets and the pipeline's ``journal.redact`` fields masked (:func:`journal_values`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ferryman.redact import SECRET_FIELDS, mask_field, redact, redact_obj
from ferryman.state.models import ConflictRow, RecordEventRow
from ferryman.state.sql import insert_rows, reading
from ferryman.timeutil import sqlite_text, utcnow

__all__ = [
    "Conflict",
    "Event",
    "History",
    "NewConflict",
    "NewEvent",
    "journal_values",
]

T_EVENTS = RecordEventRow.__table__  # type: ignore[attr-defined]
T_CONFLICTS = ConflictRow.__table__  # type: ignore[attr-defined]

#: how long a detail may be in the event table
DETAIL_LIMIT = 500

_EVENT_HEAD = (
    "INSERT INTO record_events (pipeline, run_id, at, source, src_key, target, target_key, action, fingerprint, "
    "fields, detail)"
)
_EVENT_ROW = "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"


@dataclass(slots=True)  # not frozen: a first pull makes one per record, and frozen costs per field
class NewEvent:
    """One decision or write about one source record, as a run reports it."""

    source: str
    src_key: str
    action: str
    target: str | None = None
    target_key: str | None = None
    fingerprint: str | None = None
    fields: tuple[str, ...] | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A stored event (see :class:`NewEvent`), with when and in which run."""

    id: int
    pipeline: str
    run_id: int | None
    at: datetime
    source: str
    src_key: str
    action: str
    target: str | None
    target_key: str | None
    fingerprint: str | None
    fields: tuple[str, ...] | None
    detail: str | None

    def as_dict(self) -> dict[str, Any]:
        from ferryman.timeutil import format_utc

        return {
            "id": self.id,
            "run_id": self.run_id,
            "at": format_utc(self.at),
            "source": self.source,
            "key": self.src_key,
            "action": self.action,
            "target": self.target,
            "target_key": self.target_key,
            "fingerprint": self.fingerprint,
            "fields": list(self.fields) if self.fields is not None else None,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class NewConflict:
    """Values about to be overwritten in ``system`` (a record there that had changed since
    the last sync). ``lost``/``won`` are already masked (:func:`journal_values`)."""

    system: str
    side: str  # from | to | target
    record_key: str
    src_key: str | None
    policy: str
    reason: str
    lost: Mapping[str, Any]
    won: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Conflict:
    """A journal entry (see :class:`NewConflict`)."""

    id: int
    pipeline: str
    run_id: int | None
    at: datetime
    system: str
    side: str
    record_key: str
    src_key: str | None
    policy: str
    reason: str
    lost: dict[str, Any]
    won: dict[str, Any]
    status: str
    restored_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        from ferryman.timeutil import format_utc

        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "run_id": self.run_id,
            "at": format_utc(self.at),
            "system": self.system,
            "side": self.side,
            "record_key": self.record_key,
            "src_key": self.src_key,
            "policy": self.policy,
            "reason": self.reason,
            "lost": self.lost,
            "won": self.won,
            "status": self.status,
            "restored_at": format_utc(self.restored_at) if self.restored_at else None,
        }


def journal_values(values: Mapping[str, Any], masked: Iterable[str] = ()) -> dict[str, Any]:
    """``values`` as the journal keeps them: fields named like secrets, and ``masked``
    ones, replaced by ``***`` (a masked value is never restored); registered secrets
    scrubbed from the rest."""
    hide = {name.lower() for name in masked} | SECRET_FIELDS
    return {name: mask_field(name, value, hide) for name, value in values.items()}


def _redacted_all(texts: list[str]) -> list[str]:
    """``texts`` each redacted, in one pass over them joined (a page's keys: one regex scan
    instead of one per key); per text when a secret would straddle the joins."""
    joined = "\x00".join(texts)
    cleaned = redact(joined)
    if cleaned == joined:
        return texts
    parts = cleaned.split("\x00")
    return parts if len(parts) == len(texts) else [redact(t) for t in texts]


def _detail(text: str | None) -> str | None:
    if text is None:
        return None
    text = redact(text)
    return text if len(text) <= DETAIL_LIMIT else text[: DETAIL_LIMIT - 3] + "..."


def _first_id_since(conn: Connection, cutoff: datetime) -> int | None:
    """The id of the first event not older than ``cutoff`` (one past the last id when all
    are older; None when there are none), found by bisecting the ids: events are stamped
    when their page commits, so their times grow with their ids, and about 40 lookups by
    primary key replace an index on ``at`` that every insert would pay for. (Instances on
    one PostgreSQL database may stamp a few milliseconds out of order: the cut is that
    precise.)"""
    low, high = conn.execute(sa.select(sa.func.min(T_EVENTS.c.id), sa.func.max(T_EVENTS.c.id))).one()
    if low is None:
        return None
    high += 1  # the answer lies in [low, high]; high stands for "every event is older"
    while low < high:
        middle = (low + high) // 2
        row = conn.execute(
            sa.select(T_EVENTS.c.id, T_EVENTS.c.at).where(T_EVENTS.c.id >= middle).order_by(T_EVENTS.c.id).limit(1)
        ).first()
        if row is None or row[1] >= cutoff:
            high = middle
        else:
            low = row[0] + 1
    return int(low)


class History:
    """The event table and the conflict journal of one state database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- writes ---------------------------------------------------------------------------
    def write(
        self,
        conn: Connection,
        pipeline: str,
        run_id: int | None,
        events: Sequence[NewEvent],
        conflicts: Sequence[NewConflict] = (),
    ) -> None:
        """Insert ``events`` and ``conflicts`` in the caller's transaction (one statement
        per table, however many rows)."""
        now = utcnow()
        if events:
            # at driver level, a page in one statement (state.sql.insert_rows): a first pull
            # creates a row per record, and SQLAlchemy's per-row parameter processing cost more
            # than the insert itself.
            # Keys are stored as the links table stores them; details (reasons, app answers)
            # are redacted.
            sqlite = conn.dialect.name == "sqlite"
            at: Any = sqlite_text(now) if sqlite else now
            # keys redacted too: a record the source could not read is named by its ref, which
            # may be the URL it came from (with a key in its query); one pass for the page
            src_keys = _redacted_all([e.src_key for e in events])
            dst_keys = _redacted_all([e.target_key or "" for e in events])
            rows = [
                (
                    pipeline,
                    run_id,
                    at,
                    e.source,
                    src_key,
                    e.target,
                    dst_key if e.target_key is not None else None,
                    e.action,
                    e.fingerprint,
                    None if e.fields is None else json.dumps(e.fields),
                    None if e.detail is None else _detail(e.detail),
                )
                for e, src_key, dst_key in zip(events, src_keys, dst_keys, strict=True)
            ]
            insert_rows(conn, conn.dialect.name, _EVENT_HEAD, _EVENT_ROW, rows)
        for c in conflicts:
            conn.execute(
                sa.insert(T_CONFLICTS).values(
                    pipeline=pipeline,
                    run_id=run_id,
                    at=now,
                    system=c.system,
                    side=c.side,
                    record_key=redact(c.record_key),
                    src_key=redact(c.src_key) if c.src_key is not None else None,
                    policy=c.policy,
                    reason=redact(c.reason),
                    lost=json.dumps(redact_obj(dict(c.lost)), default=str, sort_keys=True),
                    won=json.dumps(redact_obj(dict(c.won)), default=str, sort_keys=True),
                    status="open",
                )
            )

    def add(
        self, pipeline: str, run_id: int | None, events: Sequence[NewEvent], conflicts: Sequence[NewConflict] = ()
    ) -> None:
        """:meth:`write` in a transaction of its own (a replay, a restore)."""
        if not events and not conflicts:
            return
        with self.engine.begin() as conn:
            self.write(conn, pipeline, run_id, events, conflicts)

    def mark_restored(self, conflict_id: int) -> bool:
        """Mark an open journal entry restored; False when it was not open (restored
        already, by another command)."""
        with self.engine.begin() as conn:
            done = conn.execute(
                sa.update(T_CONFLICTS)
                .where(T_CONFLICTS.c.id == conflict_id, T_CONFLICTS.c.status == "open")
                .values(status="restored", restored_at=utcnow())
            ).rowcount
        return bool(done)

    def prune(self, events_older_than: timedelta, journal_older_than: timedelta) -> tuple[int, int]:
        """Delete events and journal entries past their retention; (events, entries) deleted."""
        now = utcnow()
        with self.engine.begin() as conn:
            first = _first_id_since(conn, now - events_older_than)
            events = 0 if first is None else conn.execute(sa.delete(T_EVENTS).where(T_EVENTS.c.id < first)).rowcount
            entries = conn.execute(sa.delete(T_CONFLICTS).where(T_CONFLICTS.c.at < now - journal_older_than)).rowcount
        return int(events or 0), int(entries or 0)

    # -- reads ----------------------------------------------------------------------------
    def events(
        self, pipeline: str, key: str, *, by: Literal["source", "target"] = "source", limit: int = 1000
    ) -> list[Event]:
        """The events of one record, oldest first (the newest ``limit``). ``key`` is its
        source key, or with ``by="target"`` a key it has in a target: then the events of
        the source key(s) that were written there. (The two are kept apart: an app's ids
        often collide with the other side's, ``1`` on both.)"""
        with reading(self.engine) as conn:
            keys = {key}
            if by == "target":
                keys = {
                    row[0]
                    for row in conn.execute(
                        sa.select(T_EVENTS.c.src_key)
                        .where(T_EVENTS.c.pipeline == pipeline, T_EVENTS.c.target_key == key)
                        .distinct()
                    )
                }
                if not keys:
                    return []
            rows = (
                conn.execute(
                    sa.select(T_EVENTS)
                    .where(T_EVENTS.c.pipeline == pipeline, T_EVENTS.c.src_key.in_(sorted(keys)))
                    .order_by(T_EVENTS.c.id.desc())
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [
            Event(
                id=r["id"],
                pipeline=r["pipeline"],
                run_id=r["run_id"],
                at=r["at"],
                source=r["source"],
                src_key=r["src_key"],
                action=r["action"],
                target=r["target"],
                target_key=r["target_key"],
                fingerprint=r["fingerprint"],
                fields=tuple(json.loads(r["fields"])) if r["fields"] else None,
                detail=r["detail"],
            )
            for r in reversed(rows)
        ]

    def conflicts(
        self,
        pipeline: str | None = None,
        *,
        status: str | None = "open",
        key: str | None = None,
        ids: Sequence[int] | None = None,
        limit: int | None = None,
    ) -> list[Conflict]:
        """Journal entries, newest first; ``key`` matches the overwritten record's key or
        the pipeline's source key."""
        query = sa.select(T_CONFLICTS).order_by(T_CONFLICTS.c.id.desc())
        if pipeline:
            query = query.where(T_CONFLICTS.c.pipeline == pipeline)
        if status:
            query = query.where(T_CONFLICTS.c.status == status)
        if key is not None:
            query = query.where(sa.or_(T_CONFLICTS.c.record_key == key, T_CONFLICTS.c.src_key == key))
        if ids:
            query = query.where(T_CONFLICTS.c.id.in_(list(ids)))
        if limit:
            query = query.limit(limit)
        with reading(self.engine) as conn:
            rows = conn.execute(query).mappings().all()
        return [
            Conflict(
                id=r["id"],
                pipeline=r["pipeline"],
                run_id=r["run_id"],
                at=r["at"],
                system=r["system"],
                side=r["side"],
                record_key=r["record_key"],
                src_key=r["src_key"],
                policy=r["policy"],
                reason=r["reason"],
                lost=json.loads(r["lost"]),
                won=json.loads(r["won"]),
                status=r["status"],
                restored_at=r["restored_at"],
            )
            for r in rows
        ]

    def conflict(self, conflict_id: int) -> Conflict | None:
        found = self.conflicts(status=None, ids=[conflict_id])
        return found[0] if found else None

    def count_open_conflicts(self) -> dict[str, int]:
        """Open journal entries per pipeline."""
        with reading(self.engine) as conn:
            rows = conn.execute(
                sa.select(T_CONFLICTS.c.pipeline, sa.func.count())
                .where(T_CONFLICTS.c.status == "open")
                .group_by(T_CONFLICTS.c.pipeline)
            ).all()
        return {str(p): int(n) for p, n in rows}
