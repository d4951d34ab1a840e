"""Scheduled slots claimed by an instance: the ``slots`` table. Every instance computes the
same slots, so the primary key decides which one runs each; claims are kept a week."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from ferryman.state.models import SlotRow
from ferryman.state.sql import reading

__all__ = ["SLOT_RETENTION", "T_SLOTS", "SlotClaim", "Slots"]

T_SLOTS = SlotRow.__table__  # type: ignore[attr-defined]

SLOT_RETENTION = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class SlotClaim:
    """What :meth:`ferryman.state.StateStore.claim_slot` decided about one scheduled slot."""

    outcome: Literal["claimed", "taken", "busy"]
    #: taken: the instance that claimed the slot; busy: who holds the pipeline's lease
    by: str | None = None


class Slots:
    """The slot claims of one state database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def claim_in(
        self, conn: Connection, pipeline: str, slot_at: datetime, instance: str, now: datetime
    ) -> tuple[bool, str | None]:
        """Insert the claim of ``(pipeline, slot_at)`` in the caller's transaction: (True,
        None) when this insert made it, else (False, the instance that had claimed it). A
        concurrent insert waits for the first and then does nothing."""
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        claim = (
            insert(T_SLOTS)
            .values(pipeline=pipeline, slot_at=slot_at, instance=instance, claimed_at=now)
            .on_conflict_do_nothing()
            .returning(T_SLOTS.c.instance)  # a row only when this insert made the claim
        )
        if conn.execute(claim).first() is not None:
            return True, None
        where = (T_SLOTS.c.pipeline == pipeline, T_SLOTS.c.slot_at == slot_at)
        return False, conn.execute(sa.select(T_SLOTS.c.instance).where(*where)).scalar()

    def prune_in(self, conn: Connection, pipeline: str, keep: datetime, now: datetime) -> None:
        """Old claims are pruned, but never ``keep`` (the one just made): a slot older than the
        retention (a missed run coalesced after a long outage) must stay claimed, or another
        instance could claim and run it again."""
        conn.execute(
            sa.delete(T_SLOTS).where(
                T_SLOTS.c.pipeline == pipeline,
                T_SLOTS.c.slot_at < now - SLOT_RETENTION,
                T_SLOTS.c.slot_at != keep,
            )
        )

    def abandon_in(self, conn: Connection, pipeline: str, slot_at: datetime, instance: str) -> None:
        """Delete ``instance``'s claim of a slot no run served yet."""
        conn.execute(
            sa.delete(T_SLOTS).where(
                T_SLOTS.c.pipeline == pipeline,
                T_SLOTS.c.slot_at == slot_at,
                T_SLOTS.c.instance == instance,
                T_SLOTS.c.run_id.is_(None),
            )
        )

    def ran(self, pipeline: str, slot_at: datetime, run_id: int) -> None:
        """Note which run served a claimed slot."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(T_SLOTS)
                .where(T_SLOTS.c.pipeline == pipeline, T_SLOTS.c.slot_at == slot_at)
                .values(run_id=run_id)
            )

    def find(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        """Claimed slots, oldest first."""
        query = sa.select(T_SLOTS).order_by(T_SLOTS.c.pipeline, T_SLOTS.c.slot_at)
        if pipeline:
            query = query.where(T_SLOTS.c.pipeline == pipeline)
        with reading(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]
