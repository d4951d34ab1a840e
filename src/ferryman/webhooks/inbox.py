"""The intake's inbox: payloads mapped to canonical records, stored durably, read in order.

Mapping (pure): an event's ``type`` picks the stream(s) whose ``events`` (or
``deleted_events``) list it (default ``<kind>.created`` / ``<kind>.updated`` /
``<kind>.deleted``, which is exactly what Ferryman's own outbound webhooks send); the
stream's ``path`` finds the record (or a list of records) in the payload; ``fields``
maps canonical fields to dotted paths inside it, and every field no rule used goes to
``extra``. Without ``fields`` the record must already have the canonical shape. A
payload that does not map is kept as a *reject* and becomes a dead letter when the
intake's pipeline reads it, so nothing a sender delivered is silently dropped.

Storage and the cursor: the inbox keeps the latest state of each record (one row per
``(system, stream, key)``). A record's ``updated_at`` is the time the intake received it,
made strictly increasing per intake inside the storing transaction, and the inbox is
read in ``(updated_at, key)`` order, so the engine's ordinary compound cursor is exact:
a message that arrives after a run can only sort after that run's cursor. Messages of
one intake are stored one at a time (SQLite's write lock; an advisory lock on
PostgreSQL), so rows commit in the order of their timestamps and a reader never passes
a row that commits later. The sender's own ``updated_at`` cannot serve: senders deliver
late and out of order, and a record that arrived with an older timestamp than the
cursor would never be read. It is kept in ``extra["source_updated_at"]``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa

from ferryman.api import cut_nesting, key_problem, to_record
from ferryman.connector import Reject
from ferryman.records import Record, record_type
from ferryman.state import StateStore
from ferryman.state.models import WebhookInboxRow, WebhookSeenRow
from ferryman.timeutil import format_utc, from_epoch, parse_datetime, utcnow
from ferryman.webhooks.options import IntakeOptions, IntakeStreamOptions

__all__ = ["Mapped", "map_message", "mark_seen", "store_message", "streams_for"]

T_INBOX = WebhookInboxRow.__table__  # type: ignore[attr-defined]
T_SEEN = WebhookSeenRow.__table__  # type: ignore[attr-defined]

_TICK = timedelta(microseconds=1)
_PRUNE_EVERY = 60.0
_last_prune: dict[str, float] = {}
_MISSING = object()


@dataclass(slots=True)
class Mapped:
    """One record of a message (or why a part of it could not become one)."""

    stream: str
    key: str | None
    record: Record | None
    reason: str | None = None
    raw: Any = None


def streams_for(options: IntakeOptions, event_type: str) -> list[tuple[str, IntakeStreamOptions, bool]]:
    """``(stream, options, deleted)`` for each stream the event type feeds."""
    found = []
    for name, stream in options.stream_map().items():
        kind = stream.kind or ""
        updates = stream.events if stream.events is not None else [f"{kind}.created", f"{kind}.updated"]
        deletes = stream.deleted_events if stream.deleted_events is not None else [f"{kind}.deleted"]
        if event_type in deletes:
            found.append((name, stream, True))
        elif event_type in updates:
            found.append((name, stream, False))
    return found


def _get(obj: Any, path: str) -> Any:
    """A dotted path inside nested objects (``customer.email``); ``_MISSING`` when absent."""
    if path in ("", "."):
        return obj
    for part in path.split("."):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return _MISSING
    return obj


def map_message(options: IntakeOptions, payload: Any, received_at: datetime) -> tuple[str | None, list[Mapped]]:
    """The event type and the records a verified payload carries (rejects included)."""
    if not isinstance(payload, dict):
        return None, [Mapped("", None, None, "the payload is not a JSON object", payload)]
    event_type = payload.get("type")
    if not isinstance(event_type, str) or not event_type:
        return None, [Mapped("", None, None, "the payload has no 'type'", payload)]
    out: list[Mapped] = []
    for name, stream, deleted in streams_for(options, event_type):
        found = _get(payload, stream.path)
        if found is _MISSING or found is None:
            out.append(Mapped(name, None, None, f"{event_type}: nothing at {stream.path or 'the top'!r}", payload))
            continue
        for item in found if isinstance(found, list) else [found]:
            out.append(_map_record(name, stream, item, deleted, received_at))
    return event_type, out


def _map_record(name: str, stream: IntakeStreamOptions, obj: Any, deleted: bool, received_at: datetime) -> Mapped:
    rtype = record_type(stream.kind or "")
    if not isinstance(obj, dict):
        return Mapped(name, None, None, "the record is not a JSON object", obj)
    data: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if stream.fields is None:
        for field, value in obj.items():
            if field == "extra" and isinstance(value, dict):
                extra.update(value)
            elif field in rtype.model_fields:
                data[field] = value
            else:
                extra[field] = value
    else:
        used: set[str] = set()
        for field, path in stream.fields.items():
            value = _get(obj, path)
            used.add(path.split(".", 1)[0])
            if value is not _MISSING:
                data[field] = value
        if "key" not in stream.fields:
            for fallback in ("key", "id"):
                if fallback in obj:
                    data["key"] = obj[fallback]
                    used.add(fallback)
                    break
        extra.update({k: v for k, v in obj.items() if k not in used})
    key = data.get("key")
    if isinstance(key, int | float) and not isinstance(key, bool):
        key = data["key"] = str(key)
    if not isinstance(key, str) or not key:
        return Mapped(name, None, None, "the record has no key", obj)
    problem = key_problem(key)
    if problem is not None:
        return Mapped(name, None, None, f"key: {problem}", cut_nesting(obj))
    try:
        for field in rtype.datetime_fields():
            value = data.get(field)
            if isinstance(value, str) and value:
                data[field] = parse_datetime(value, assume_tz=stream.timezone)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                data[field] = from_epoch(value)
    except ValueError as exc:
        return Mapped(name, key, None, f"{field}: {exc}", cut_nesting(obj))
    sent = data.pop("updated_at", None)
    if isinstance(sent, datetime):
        extra["source_updated_at"] = format_utc(sent)
    data["updated_at"] = received_at
    data["extra"] = extra
    if deleted:
        data["deleted"] = True
    built = to_record(rtype, lambda: data, ref=f"{name} {key}", key=key)
    if isinstance(built, Reject):
        return Mapped(name, built.key, None, built.reason, cut_nesting(obj))
    try:
        # What is stored must read back: a record that cannot would fail every run instead.
        rtype.model_validate_json(built.model_dump_json())
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Mapped(name, key, None, f"the record cannot be read back once stored: {reason}", cut_nesting(obj))
    return Mapped(name, key, built)


# -- storage ---------------------------------------------------------------------------------


def printable(text: str) -> str:
    """``text`` with control characters replaced: a reason is shown in terminals and logs,
    and PostgreSQL refuses NUL in text."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def _raw_text(raw: Any) -> str | None:
    """A reject's payload as JSON, cut where it nests past what JSON writers follow."""
    if raw is None:
        return None
    try:
        return orjson.dumps(raw, default=str).decode()
    except (TypeError, RecursionError):  # orjson's JSONEncodeError is a TypeError
        return orjson.dumps(cut_nesting(raw), default=str).decode()


def _insert_seen(conn: sa.Connection, store: StateStore, system: str, webhook_id: str, now: datetime) -> bool:
    values = {"system": system, "webhook_id": webhook_id, "received_at": now}
    if store.dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(T_SEEN).values(**values).on_conflict_do_nothing()
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(T_SEEN).values(**values).on_conflict_do_nothing()  # type: ignore[assignment]
    # RETURNING, not rowcount: drivers disagree on rowcount for ON CONFLICT DO NOTHING
    return conn.execute(stmt.returning(T_SEEN.c.webhook_id)).first() is not None


def _prune_seen(conn: sa.Connection, system: str, window: timedelta, now: datetime) -> None:
    last = _last_prune.get(system)
    if last is not None and time.monotonic() - last < _PRUNE_EVERY:
        return
    _last_prune[system] = time.monotonic()
    conn.execute(sa.delete(T_SEEN).where(T_SEEN.c.system == system, T_SEEN.c.received_at < now - window))


def mark_seen(store: StateStore, system: str, webhook_id: str, window: timedelta) -> bool:
    """Remember ``webhook_id``; False when it was already seen (a duplicate)."""
    now = utcnow()
    with store.transaction() as conn:
        _prune_seen(conn, system, window, now)
        return _insert_seen(conn, store, system, webhook_id, now)


def store_message(
    store: StateStore, system: str, webhook_id: str, items: Sequence[Mapped], window: timedelta
) -> tuple[bool, list[str]]:
    """De-duplicate and store one message in one transaction.

    Returns ``(new, streams)``: ``new`` is False for a ``webhook-id`` already seen (then
    nothing is stored); ``streams`` are those that got rows. Committed on return.
    """
    streams: list[str] = []
    with store.transaction() as conn:
        if store.dialect == "postgresql":
            # One message of an intake at a time (SQLite's BEGIN IMMEDIATE does the same): commit
            # order is receipt order, so no reader can pass a row that commits later.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"ferryman-intake:{system}"})
        now = utcnow()
        _prune_seen(conn, system, window, now)
        if not _insert_seen(conn, store, system, webhook_id, now):
            return False, []
        if not items:
            return True, []
        last = conn.execute(sa.select(sa.func.max(T_INBOX.c.received_at)).where(T_INBOX.c.system == system)).scalar()
        at = now if last is None or now > last else last + _TICK
        for n, item in enumerate(items):
            if item.record is not None and item.key is not None:
                record = item.record.model_copy(update={"updated_at": at})
                row = {"record_key": item.key, "record": record.model_dump_json(), "reject_reason": None, "raw": None}
            else:
                # A reject about a known record is that record's latest state (get() answers
                # with its reason); one without a key gets a row of its own.
                reject_key = item.key if item.key is not None else f"!{webhook_id}#{n}"
                reason = printable(item.reason or "could not be mapped")
                row = {"record_key": reject_key, "record": None, "reject_reason": reason, "raw": _raw_text(item.raw)}
            stream = item.stream or "-"
            conn.execute(
                sa.delete(T_INBOX).where(
                    T_INBOX.c.system == system, T_INBOX.c.stream == stream, T_INBOX.c.record_key == row["record_key"]
                )
            )
            conn.execute(
                sa.insert(T_INBOX).values(system=system, stream=stream, webhook_id=webhook_id, received_at=at, **row)
            )
            if stream not in streams:
                streams.append(stream)
            at += _TICK
    return True, streams
