"""Creates about to happen on a target that cannot be looked up afterwards: the
``intents`` table. An intent is noted before the create is sent and deleted in the
transaction that stores the create's link, so a crash leaves it behind as the one record
in doubt (``unresolved`` once a later run could not settle it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ferryman.state.models import IntentRow
from ferryman.state.sql import chunks, db_time, driver_sql, reading
from ferryman.timeutil import utcnow

__all__ = ["T_INTENTS", "Intents"]

T_INTENTS = IntentRow.__table__  # type: ignore[attr-defined]

_INSERT_INTENT = (
    "INSERT INTO intents (pipeline, dst, src_key, fingerprint, payload, state, created_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id"
)


class Intents:
    """The intents of one state database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    def insert_in(self, conn: Connection, pipeline: str, dst: str, item: tuple[str, str, str]) -> int:
        """Note one create, (src_key, fingerprint, payload JSON), in the caller's
        transaction; its id. Driver-level: each create of a target without a natural key
        pays for this statement."""
        src_key, fp, payload = item
        now = db_time(self.dialect, utcnow())
        row = conn.exec_driver_sql(
            driver_sql(self.dialect, _INSERT_INTENT), (pipeline, dst, src_key, fp, payload, "pending", now)
        ).first()
        assert row is not None
        return int(row[0])

    def delete_one_in(self, conn: Connection, intent_id: int) -> None:
        conn.exec_driver_sql(driver_sql(self.dialect, "DELETE FROM intents WHERE id = %s"), (intent_id,))

    def delete_in(self, conn: Connection, ids: Sequence[int]) -> None:
        for chunk in chunks(ids, 500):
            conn.execute(sa.delete(T_INTENTS).where(T_INTENTS.c.id.in_(chunk)))

    def delete(self, intent_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(T_INTENTS).where(T_INTENTS.c.id == intent_id))

    def delete_by_key(self, pipeline: str, dst: str, src_key: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(T_INTENTS).where(
                    T_INTENTS.c.pipeline == pipeline, T_INTENTS.c.dst == dst, T_INTENTS.c.src_key == src_key
                )
            )

    def mark_unresolved(self, intent_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(T_INTENTS).where(T_INTENTS.c.id == intent_id).values(state="unresolved"))

    def find(self, pipeline: str, dst: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(T_INTENTS).where(T_INTENTS.c.pipeline == pipeline).order_by(T_INTENTS.c.id)
        if dst is not None:
            query = query.where(T_INTENTS.c.dst == dst)
        if state is not None:
            query = query.where(T_INTENTS.c.state == state)
        with reading(self.engine) as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def forget_in(self, conn: Connection, pipeline: str) -> None:
        conn.execute(sa.delete(T_INTENTS).where(T_INTENTS.c.pipeline == pipeline))
