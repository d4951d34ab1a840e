"""State tables. The migrations in :mod:`ferryman.state.migrations` create exactly these;
a test compares the migrated schema with this metadata on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from ferryman.timeutil import UTC, ensure_utc


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC in, aware UTC out; ``timestamptz`` on PostgreSQL, naive UTC text on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = ensure_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(nullable: bool = False, index: bool = False) -> Any:
    return Field(default=None, sa_column=sa.Column(UtcDateTime(), nullable=nullable, index=index))


class SchemaVersion(SQLModel, table=True):
    __tablename__ = "ferryman_schema"
    id: int = Field(default=1, primary_key=True)
    version: int


class CursorRow(SQLModel, table=True):
    """Per pipeline (and side, for two-way): the (updated_at, key) delivered up to."""

    __tablename__ = "cursors"
    pipeline: str = Field(primary_key=True, max_length=200)
    side: str = Field(default="forward", primary_key=True, max_length=20)
    updated_at: datetime = _ts()
    key: str = Field(max_length=500)
    committed_at: datetime = _ts()


class LinkRow(SQLModel, table=True):
    """Source key <-> target key for one pair of system streams, with fingerprints."""

    __tablename__ = "links"
    __table_args__ = (
        sa.UniqueConstraint("src", "dst", "src_key", name="uq_links_src"),
        sa.Index("ix_links_dst", "dst", "src", "dst_key"),
    )
    id: int | None = Field(default=None, primary_key=True)
    src: str = Field(max_length=200)  # "system.stream"
    dst: str = Field(max_length=200)
    src_key: str = Field(max_length=500)
    dst_key: str = Field(max_length=500)
    src_fp: str | None = Field(default=None, max_length=64)  # content last read from src
    dst_fp: str | None = Field(default=None, max_length=64)  # content last written to / read from dst
    written_at: datetime = _ts()
    write_count: int = 0
    window_start: datetime | None = _ts(nullable=True)


class IntentRow(SQLModel, table=True):
    """A create that was started but not yet confirmed; reconciled on restart."""

    __tablename__ = "intents"
    id: int | None = Field(default=None, primary_key=True)
    pipeline: str = Field(max_length=200, index=True)
    dst: str = Field(max_length=200)
    src_key: str = Field(max_length=500)
    fingerprint: str = Field(max_length=64)
    payload: str  # the canonical record as JSON
    state: str = Field(default="pending", max_length=20)  # pending | unresolved
    created_at: datetime = _ts()


class RunRow(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (sa.Index("ix_runs_pipeline_started", "pipeline", "started_at"),)
    id: int | None = Field(default=None, primary_key=True)
    pipeline: str = Field(max_length=200)
    instance: str = Field(max_length=200)
    trigger: str = Field(default="manual", max_length=40)
    started_at: datetime = _ts()
    ended_at: datetime | None = _ts(nullable=True)
    outcome: str = Field(default="running", max_length=20)
    read: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    withheld: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    message: str | None = None
    not_before: datetime | None = _ts(nullable=True)


class DeadLetterRow(SQLModel, table=True):
    """A record that could not be delivered, with the reason; replayable."""

    __tablename__ = "dead_letters"
    __table_args__ = (sa.Index("ix_dead_letters_open", "pipeline", "status", "ref"),)
    id: int | None = Field(default=None, primary_key=True)
    pipeline: str = Field(max_length=200)
    src: str = Field(max_length=200)
    dst: str | None = Field(default=None, max_length=200)  # None: the source could not read it
    ref: str = Field(max_length=500)  # source key, or "line 17"
    src_key: str | None = Field(default=None, max_length=500)
    reason: str
    kind: str = Field(
        default="rejected", max_length=40
    )  # rejected | invalid | reference | conflict | loop | unresolved | webhook
    payload: str | None = None  # JSON
    status: str = Field(default="open", max_length=20)  # open | resolved | dropped
    attempts: int = 1
    created_at: datetime = _ts()
    last_seen_at: datetime = _ts()


class CheckpointRow(SQLModel, table=True):
    """A batching sink's durable position, committed with the cursor."""

    __tablename__ = "checkpoints"
    pipeline: str = Field(primary_key=True, max_length=200)
    dst: str = Field(primary_key=True, max_length=200)
    data: str  # JSON


class HostRow(SQLModel, table=True):
    """A host that asked us to wait: no run touching it starts before ``not_before``."""

    __tablename__ = "hosts"
    host: str = Field(primary_key=True, max_length=300)
    not_before: datetime = _ts()
    reason: str | None = None


class LeaseRow(SQLModel, table=True):
    """Who runs a pipeline right now; a lease expires unless renewed."""

    __tablename__ = "leases"
    pipeline: str = Field(primary_key=True, max_length=200)
    holder: str = Field(max_length=300)
    acquired_at: datetime = _ts()
    expires_at: datetime = _ts()
    #: grows with every take (never with a renewal): a run writes only while the lease still
    #: carries the generation it took, so a holder that stalled and was taken over is fenced
    #: even if it, or anyone, takes the lease again later (schema v6)
    generation: int = Field(default=0, sa_type=sa.BigInteger, sa_column_kwargs={"server_default": "0"})


# -- webhooks (schema v2) ------------------------------------------------------------------


class WebhookOutboxRow(SQLModel, table=True):
    """One outbound webhook event, from the sink's write to its delivery (or dead letter).

    ``event_id`` is the ``webhook-id`` every attempt carries; it is derived from the change
    itself, so a page re-processed after a crash inserts the same event, not a new one.
    """

    __tablename__ = "webhook_outbox"
    __table_args__ = (
        sa.UniqueConstraint("event_id", name="uq_webhook_outbox_event"),
        sa.Index("ix_webhook_outbox_due", "system", "state", "next_attempt_at"),
        sa.Index("ix_webhook_outbox_record", "system", "stream", "record_key"),
    )
    seq: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=64)
    system: str = Field(max_length=200)
    stream: str = Field(max_length=200)
    record_key: str = Field(max_length=500)
    type: str = Field(max_length=100)  # ticket.created, contact.deleted...
    body: str  # the exact JSON body every attempt sends
    state: str = Field(default="pending", max_length=20)  # pending | delivered | dead
    attempts: int = 0
    created_at: datetime = _ts()
    next_attempt_at: datetime = _ts()
    last_attempt_at: datetime | None = _ts(nullable=True)
    delivered_at: datetime | None = _ts(nullable=True)
    last_error: str | None = None


class WebhookEndpointRow(SQLModel, table=True):
    """An outbound endpoint's health: disabled after a 410, or backing off after 429/5xx."""

    __tablename__ = "webhook_endpoints"
    system: str = Field(primary_key=True, max_length=200)
    url_hash: str = Field(max_length=64)  # the URL this state is about (a changed URL starts afresh)
    state: str = Field(default="active", max_length=20)  # active | disabled
    not_before: datetime | None = _ts(nullable=True)
    reason: str | None = None
    changed_at: datetime = _ts()


class WebhookInboxRow(SQLModel, table=True):
    """The latest state of one record received by an intake (or a payload it could not map)."""

    __tablename__ = "webhook_inbox"
    __table_args__ = (
        sa.UniqueConstraint("system", "stream", "record_key", name="uq_webhook_inbox_key"),
        sa.Index("ix_webhook_inbox_read", "system", "stream", "received_at"),
    )
    seq: int | None = Field(default=None, primary_key=True)
    system: str = Field(max_length=200)
    stream: str = Field(max_length=200)
    record_key: str = Field(max_length=500)
    webhook_id: str = Field(max_length=255)
    received_at: datetime = _ts()
    record: str | None = None  # the canonical record as JSON
    reject_reason: str | None = None  # why the payload did not map (then ``raw`` holds it)
    raw: str | None = None


class WebhookSeenRow(SQLModel, table=True):
    """``webhook-id`` values an intake accepted, kept for de-duplication (72 hours or more)."""

    __tablename__ = "webhook_seen"
    __table_args__ = (sa.Index("ix_webhook_seen_received", "system", "received_at"),)
    system: str = Field(primary_key=True, max_length=200)
    webhook_id: str = Field(primary_key=True, max_length=255)
    received_at: datetime = _ts()


class RateBudgetRow(SQLModel, table=True):
    """A rate budget shared by every instance: GCRA's theoretical arrival time and any block."""

    __tablename__ = "rate_budgets"
    key: str = Field(primary_key=True, max_length=500)
    tat: float = Field(default=0.0, sa_column=sa.Column(sa.Float, nullable=False))  # epoch seconds
    blocked_until: datetime | None = _ts(nullable=True)


# -- several instances (schema v4) ---------------------------------------------------------


class SlotRow(SQLModel, table=True):
    """A scheduled fire time of a pipeline, claimed by the one instance that runs it.

    The primary key is the claim: every instance computes the same slots from the
    schedule, and only the first insert of ``(pipeline, slot_at)`` succeeds.
    """

    __tablename__ = "slots"
    pipeline: str = Field(primary_key=True, max_length=200)
    slot_at: datetime = Field(sa_column=sa.Column(UtcDateTime(), primary_key=True))
    instance: str = Field(max_length=200)
    claimed_at: datetime = _ts()
    run_id: int | None = None


# -- history (schema v7) --------------------------------------------------------------------


class RecordEventRow(SQLModel, table=True):
    """One thing that happened to one source record in one run, for ``ferryman explain``.

    Never a payload: the fingerprint of what was read (in the target's shape), the names of
    the fields a write changed where they are known, and the reason or the target's answer.
    Deleted after ``history.retention``."""

    __tablename__ = "record_events"
    # One index besides the key: a first pull writes a row per record, and each index costs
    # every insert (1,000,000 events: 5.2 us and 234 MB with three, 3.7 us and 163 MB with
    # one). Pruning bisects the ids by time; a lookup by target key scans (explain only).
    __table_args__ = (sa.Index("ix_record_events_key", "pipeline", "src_key"),)
    id: int | None = Field(default=None, primary_key=True)
    pipeline: str = Field(max_length=200)
    run_id: int | None = None
    at: datetime = _ts()
    source: str = Field(max_length=200)  # system.stream the key belongs to
    src_key: str = Field(max_length=500)
    target: str | None = Field(default=None, max_length=200)  # system.stream written (None: the source itself)
    target_key: str | None = Field(default=None, max_length=500)
    action: str = Field(max_length=30)  # create | update | skip | echo | conflict | dead-letter | replay ...
    fingerprint: str | None = Field(default=None, max_length=64)
    fields: str | None = None  # JSON list of the field names a write changed, where known
    detail: str | None = None  # why, or what the target answered (redacted)


class ConflictRow(SQLModel, table=True):
    """Values a sync overwrote in a record that had changed since the last sync: the losing
    side of a conflict, restorable with ``ferryman conflicts restore``. Secret and
    configured fields are stored masked. Deleted after ``history.journal_retention``."""

    __tablename__ = "conflicts"
    __table_args__ = (sa.Index("ix_conflicts_pipeline", "pipeline", "status"),)
    id: int | None = Field(default=None, primary_key=True)
    pipeline: str = Field(max_length=200)
    run_id: int | None = None
    at: datetime = _ts(index=True)
    system: str = Field(max_length=200)  # system.stream of the overwritten record
    side: str = Field(max_length=20)  # from | to (two-way) | target (one-way)
    record_key: str = Field(max_length=500)  # its key there
    src_key: str | None = Field(default=None, max_length=500)  # the pipeline's source key, for explain
    policy: str = Field(max_length=40)  # the rule that chose the winner: newest_wins, source_wins, update...
    reason: str  # in words: "both sides changed; newest_wins kept the to-side's edit of 2026-..."
    lost: str  # JSON {field: value}: what the losing side held (masked where secret)
    won: str  # JSON {field: value}: what was written over it
    status: str = Field(default="open", max_length=20)  # open | restored
    restored_at: datetime | None = _ts(nullable=True)


# -- keyed targets (schema v8) ------------------------------------------------------------------


class KeyedTargetRow(SQLModel, table=True):
    """A target that keeps each record under its source key (a CSV file): its links are
    kept as slim fingerprint rows (:class:`FingerprintRow`) instead of full link rows."""

    __tablename__ = "keyed_targets"
    src: str = Field(primary_key=True, max_length=200)
    dst: str = Field(primary_key=True, max_length=200)
    since: datetime = _ts()


class FingerprintRow(SQLModel, table=True):
    """What a keyed target holds for one source key: the fingerprint of the content written.
    The link of such a target in a third of a link row's space (one index, four columns)."""

    __tablename__ = "fingerprints"
    src: str = Field(primary_key=True, max_length=200)
    dst: str = Field(primary_key=True, max_length=200)
    src_key: str = Field(primary_key=True, max_length=500)
    fp: str | None = Field(default=None, max_length=64)
