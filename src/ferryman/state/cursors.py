"""Where each pipeline (and each side of a two-way one) has read up to: the ``cursors`` table."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ferryman.cursor import Cursor
from ferryman.state.models import CursorRow
from ferryman.state.sql import reading
from ferryman.timeutil import utcnow

__all__ = ["T_CURSORS", "Cursors"]

T_CURSORS = CursorRow.__table__  # type: ignore[attr-defined]


class Cursors:
    """The cursors of one state database. A page moves its cursor inside the page
    transaction (:meth:`write_in`); :meth:`hold` puts one back on its own."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, pipeline: str, side: str = "forward") -> Cursor | None:
        with reading(self.engine) as conn:
            row = conn.execute(
                sa.select(T_CURSORS.c.updated_at, T_CURSORS.c.key).where(
                    T_CURSORS.c.pipeline == pipeline, T_CURSORS.c.side == side
                )
            ).first()
        return Cursor(row[0], row[1]) if row else None

    def write_in(self, conn: Connection, pipeline: str, side: str, cursor: Cursor) -> None:
        """Move the cursor in the caller's transaction, noting when (status reads it as the
        pipeline's last page commit)."""
        values = {"updated_at": cursor.updated_at, "key": cursor.key, "committed_at": utcnow()}
        result = conn.execute(
            sa.update(T_CURSORS).where(T_CURSORS.c.pipeline == pipeline, T_CURSORS.c.side == side).values(**values)
        )
        if result.rowcount == 0:
            conn.execute(sa.insert(T_CURSORS).values(pipeline=pipeline, side=side, **values))

    def hold(self, pipeline: str, cursor: Cursor | None, side: str = "forward") -> None:
        """Put the cursor back where a run began (``None``: no cursor at all)."""
        with self.engine.begin() as conn:
            if cursor is None:
                conn.execute(sa.delete(T_CURSORS).where(T_CURSORS.c.pipeline == pipeline, T_CURSORS.c.side == side))
            else:
                self.write_in(conn, pipeline, side, cursor)

    def forget_in(self, conn: Connection, pipeline: str) -> None:
        conn.execute(sa.delete(T_CURSORS).where(T_CURSORS.c.pipeline == pipeline))
