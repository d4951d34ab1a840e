"""What a transactional sink (a CSV file) had made durable when its page committed: the
``checkpoints`` table, one JSON document per (pipeline, target)."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ferryman.state.models import CheckpointRow
from ferryman.state.sql import reading

__all__ = ["T_CHECKPOINTS", "Checkpoints"]

T_CHECKPOINTS = CheckpointRow.__table__  # type: ignore[attr-defined]


class Checkpoints:
    """The sink checkpoints of one state database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, pipeline: str, dst: str) -> dict[str, Any] | None:
        with reading(self.engine) as conn:
            row = conn.execute(
                sa.select(T_CHECKPOINTS.c.data).where(T_CHECKPOINTS.c.pipeline == pipeline, T_CHECKPOINTS.c.dst == dst)
            ).first()
        return json.loads(row[0]) if row else None

    def set(self, pipeline: str, dst: str, data: dict[str, Any] | None) -> None:
        with self.engine.begin() as conn:
            self.write_in(conn, pipeline, dst, data)

    def write_in(self, conn: Connection, pipeline: str, dst: str, data: dict[str, Any] | None) -> None:
        """Store ``data`` (``None``: delete the row) in the caller's transaction."""
        where = (T_CHECKPOINTS.c.pipeline == pipeline, T_CHECKPOINTS.c.dst == dst)
        if data is None:
            conn.execute(sa.delete(T_CHECKPOINTS).where(*where))
            return
        blob = json.dumps(data, sort_keys=True)
        if conn.execute(sa.update(T_CHECKPOINTS).where(*where).values(data=blob)).rowcount == 0:
            conn.execute(sa.insert(T_CHECKPOINTS).values(pipeline=pipeline, dst=dst, data=blob))

    def forget_in(self, conn: Connection, pipeline: str) -> None:
        conn.execute(sa.delete(T_CHECKPOINTS).where(T_CHECKPOINTS.c.pipeline == pipeline))
