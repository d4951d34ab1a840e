"""Versioned schema migrations, applied in order inside a transaction.

Each step is a function over alembic's :class:`~alembic.operations.Operations`, which
writes portable DDL for SQLite (batch mode) and PostgreSQL. Add a step at the end of
:data:`STEPS`; never edit a released one. ``tests/state/test_migrations.py`` checks that
the migrated schema equals :mod:`ferryman.state.models`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:  # alembic is only imported when a migration actually runs
    from alembic.operations import Operations

from ferryman.state.models import UtcDateTime


def _v1_initial(op: Operations) -> None:
    op.create_table(
        "cursors",
        sa.Column("pipeline", sa.String(200), primary_key=True),
        sa.Column("side", sa.String(20), primary_key=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("key", sa.String(500), nullable=False),
        sa.Column("committed_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "links",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("src", sa.String(200), nullable=False),
        sa.Column("dst", sa.String(200), nullable=False),
        sa.Column("src_key", sa.String(500), nullable=False),
        sa.Column("dst_key", sa.String(500), nullable=False),
        sa.Column("src_fp", sa.String(64), nullable=True),
        sa.Column("dst_fp", sa.String(64), nullable=True),
        sa.Column("written_at", UtcDateTime(), nullable=False),
        sa.Column("write_count", sa.Integer, nullable=False),
        sa.Column("window_start", UtcDateTime(), nullable=True),
        sa.UniqueConstraint("src", "dst", "src_key", name="uq_links_src"),
    )
    op.create_index("ix_links_dst", "links", ["dst", "src", "dst_key"])
    op.create_table(
        "intents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("dst", sa.String(200), nullable=False),
        sa.Column("src_key", sa.String(500), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("payload", sa.String, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_intents_pipeline", "intents", ["pipeline"])
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("instance", sa.String(200), nullable=False),
        sa.Column("trigger", sa.String(40), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("ended_at", UtcDateTime(), nullable=True),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column("read", sa.Integer, nullable=False),
        sa.Column("created", sa.Integer, nullable=False),
        sa.Column("updated", sa.Integer, nullable=False),
        sa.Column("deleted", sa.Integer, nullable=False),
        sa.Column("skipped", sa.Integer, nullable=False),
        sa.Column("dead_lettered", sa.Integer, nullable=False),
        sa.Column("message", sa.String, nullable=True),
        sa.Column("not_before", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_runs_pipeline_started", "runs", ["pipeline", "started_at"])
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("src", sa.String(200), nullable=False),
        sa.Column("dst", sa.String(200), nullable=True),
        sa.Column("ref", sa.String(500), nullable=False),
        sa.Column("src_key", sa.String(500), nullable=True),
        sa.Column("reason", sa.String, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("payload", sa.String, nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("last_seen_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_dead_letters_open", "dead_letters", ["pipeline", "status", "ref"])
    op.create_table(
        "checkpoints",
        sa.Column("pipeline", sa.String(200), primary_key=True),
        sa.Column("dst", sa.String(200), primary_key=True),
        sa.Column("data", sa.String, nullable=False),
    )
    op.create_table(
        "hosts",
        sa.Column("host", sa.String(300), primary_key=True),
        sa.Column("not_before", UtcDateTime(), nullable=False),
        sa.Column("reason", sa.String, nullable=True),
    )
    op.create_table(
        "leases",
        sa.Column("pipeline", sa.String(200), primary_key=True),
        sa.Column("holder", sa.String(300), nullable=False),
        sa.Column("acquired_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
    )


def _v2_webhooks(op: Operations) -> None:
    op.create_table(
        "webhook_outbox",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("system", sa.String(200), nullable=False),
        sa.Column("stream", sa.String(200), nullable=False),
        sa.Column("record_key", sa.String(500), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("body", sa.String, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
        sa.Column("last_attempt_at", UtcDateTime(), nullable=True),
        sa.Column("delivered_at", UtcDateTime(), nullable=True),
        sa.Column("last_error", sa.String, nullable=True),
        sa.UniqueConstraint("event_id", name="uq_webhook_outbox_event"),
    )
    op.create_index("ix_webhook_outbox_due", "webhook_outbox", ["system", "state", "next_attempt_at"])
    op.create_index("ix_webhook_outbox_record", "webhook_outbox", ["system", "stream", "record_key"])
    op.create_table(
        "webhook_endpoints",
        sa.Column("system", sa.String(200), primary_key=True),
        sa.Column("url_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("not_before", UtcDateTime(), nullable=True),
        sa.Column("reason", sa.String, nullable=True),
        sa.Column("changed_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "webhook_inbox",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("system", sa.String(200), nullable=False),
        sa.Column("stream", sa.String(200), nullable=False),
        sa.Column("record_key", sa.String(500), nullable=False),
        sa.Column("webhook_id", sa.String(255), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
        sa.Column("record", sa.String, nullable=True),
        sa.Column("reject_reason", sa.String, nullable=True),
        sa.Column("raw", sa.String, nullable=True),
        sa.UniqueConstraint("system", "stream", "record_key", name="uq_webhook_inbox_key"),
    )
    op.create_index("ix_webhook_inbox_read", "webhook_inbox", ["system", "stream", "received_at"])
    op.create_table(
        "webhook_seen",
        sa.Column("system", sa.String(200), primary_key=True),
        sa.Column("webhook_id", sa.String(255), primary_key=True),
        sa.Column("received_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_webhook_seen_received", "webhook_seen", ["system", "received_at"])


def _v3_rate_budgets(op: Operations) -> None:
    op.create_table(
        "rate_budgets",
        sa.Column("key", sa.String(500), primary_key=True),
        sa.Column("tat", sa.Float, nullable=False),
        sa.Column("blocked_until", UtcDateTime(), nullable=True),
    )


def _v4_slots(op: Operations) -> None:
    op.create_table(
        "slots",
        sa.Column("pipeline", sa.String(200), primary_key=True),
        sa.Column("slot_at", UtcDateTime(), primary_key=True),
        sa.Column("instance", sa.String(200), nullable=False),
        sa.Column("claimed_at", UtcDateTime(), nullable=False),
        sa.Column("run_id", sa.Integer, nullable=True),
    )


def _v5_withheld(op: Operations) -> None:
    # deletes seen at the source and not carried out (deletes.enabled is off): counted, not
    # folded into "skipped", so an operator can see what is being held back
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("withheld", sa.Integer, nullable=False, server_default="0"))


def _v6_lease_generation(op: Operations) -> None:
    # fencing: a run's writes are checked against the generation of the lease it took
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"))


def _v7_history(op: Operations) -> None:
    # per-record events for `ferryman explain`, and the conflict journal
    op.create_table(
        "record_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("run_id", sa.Integer, nullable=True),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("src_key", sa.String(500), nullable=False),
        sa.Column("target", sa.String(200), nullable=True),
        sa.Column("target_key", sa.String(500), nullable=True),
        sa.Column("action", sa.String(30), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("fields", sa.String, nullable=True),
        sa.Column("detail", sa.String, nullable=True),
    )
    op.create_index("ix_record_events_key", "record_events", ["pipeline", "src_key"])
    op.create_table(
        "conflicts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(200), nullable=False),
        sa.Column("run_id", sa.Integer, nullable=True),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("system", sa.String(200), nullable=False),
        sa.Column("side", sa.String(20), nullable=False),
        sa.Column("record_key", sa.String(500), nullable=False),
        sa.Column("src_key", sa.String(500), nullable=True),
        sa.Column("policy", sa.String(40), nullable=False),
        sa.Column("reason", sa.String, nullable=False),
        sa.Column("lost", sa.String, nullable=False),
        sa.Column("won", sa.String, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("restored_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_conflicts_pipeline", "conflicts", ["pipeline", "status"])
    op.create_index("ix_conflicts_at", "conflicts", ["at"])


def _v8_keyed_targets(op: Operations) -> None:
    # targets keyed by the source key (CSV files) keep fingerprints, not full link rows
    op.create_table(
        "keyed_targets",
        sa.Column("src", sa.String(200), primary_key=True),
        sa.Column("dst", sa.String(200), primary_key=True),
        sa.Column("since", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "fingerprints",
        sa.Column("src", sa.String(200), primary_key=True),
        sa.Column("dst", sa.String(200), primary_key=True),
        sa.Column("src_key", sa.String(500), primary_key=True),
        sa.Column("fp", sa.String(64), nullable=True),
    )


#: Step N brings the schema from version N-1 to N.
STEPS: list[Callable[[Operations], None]] = [
    _v1_initial,
    _v2_webhooks,
    _v3_rate_budgets,
    _v4_slots,
    _v5_withheld,
    _v6_lease_generation,
    _v7_history,
    _v8_keyed_targets,
]

LATEST = len(STEPS)
