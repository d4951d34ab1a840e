"""One row per run of a pipeline: the ``runs`` table, with its outcome and counts. A page
adds its counts in the page transaction (:meth:`Runs.count_in`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ferryman.liveness import run_as_seen
from ferryman.redact import redact
from ferryman.state.cursors import T_CURSORS
from ferryman.state.leases import T_LEASES
from ferryman.state.models import RunRow
from ferryman.state.sql import reading
from ferryman.timeutil import utcnow

__all__ = ["T_RUNS", "Runs"]

T_RUNS = RunRow.__table__  # type: ignore[attr-defined]

_Seen = tuple[str | None, datetime | None, datetime | None]  # lease holder, its expiry, last page commit


class Runs:
    """The runs of one state database, started by ``instance``."""

    def __init__(self, engine: Engine, instance: str) -> None:
        self.engine = engine
        self.instance = instance

    def start(self, pipeline: str, trigger: str = "manual") -> int:
        """Note a run as ``running``. The caller holds the pipeline's lease, so a run of it
        still marked ``running`` is one whose process is gone: it is closed as ``interrupted``
        in the same transaction."""
        with self.engine.begin() as conn:
            self.close_interrupted_in(conn, pipeline, why="a later run began")
            result = conn.execute(
                sa.insert(T_RUNS).values(
                    pipeline=pipeline,
                    instance=self.instance,
                    trigger=trigger,
                    started_at=utcnow(),
                    outcome="running",
                    read=0,
                    created=0,
                    updated=0,
                    deleted=0,
                    skipped=0,
                    dead_lettered=0,
                )
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def finish(self, run_id: int, outcome: str, message: str | None = None, not_before: datetime | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(T_RUNS)
                .where(T_RUNS.c.id == run_id)
                .values(
                    outcome=outcome,
                    ended_at=utcnow(),
                    message=redact(message) if message else None,
                    not_before=not_before,
                )
            )

    def count_in(self, conn: Connection, run_id: int, counts: dict[str, int]) -> None:
        """Add a page's counts to its run, in the page transaction."""
        conn.execute(
            sa.update(T_RUNS)
            .where(T_RUNS.c.id == run_id)
            .values({k: getattr(T_RUNS.c, k) + v for k, v in counts.items() if v})
        )

    def get(self, run_id: int) -> dict[str, Any] | None:
        with reading(self.engine) as conn:
            row = conn.execute(sa.select(T_RUNS).where(T_RUNS.c.id == run_id)).mappings().first()
        return dict(row) if row else None

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest run of each pipeline, as status shows it: one still marked ``running``
        whose process is gone reads ``interrupted`` (see :func:`ferryman.liveness.run_as_seen`)."""
        with reading(self.engine) as conn:
            rows = self._with_leases(conn, latest=True)
        now = utcnow()
        return {run["pipeline"]: run_as_seen(run, *extra, now=now) for run, extra in rows}

    def find(self, pipeline: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = sa.select(T_RUNS).order_by(T_RUNS.c.id.desc()).limit(limit)
        if pipeline:
            query = query.where(T_RUNS.c.pipeline == pipeline)
        with reading(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def close_interrupted(self, pipeline: str | None, *, why: str | None = None) -> int:
        with self.engine.begin() as conn:
            return self.close_interrupted_in(conn, pipeline, why=why)

    def close_interrupted_in(self, conn: Connection, pipeline: str | None, *, why: str | None = None) -> int:
        """Close runs whose process is gone as ``interrupted``. ``why`` given: the caller
        holds ``pipeline``'s lease, so its running runs are all stale."""
        where = [T_RUNS.c.outcome == "running"]
        if pipeline is not None:
            where.append(T_RUNS.c.pipeline == pipeline)
        now = utcnow()
        closed = 0
        for run, (holder, expires_at, last_commit_at) in self._with_leases(conn, *where):
            if why is not None:
                holder = expires_at = None
            seen = run_as_seen(run, holder, expires_at, last_commit_at, now=now, why=why)
            if seen["outcome"] != "interrupted":
                continue
            closed += conn.execute(
                sa.update(T_RUNS)
                .where(T_RUNS.c.id == run["id"], T_RUNS.c.outcome == "running")
                .values(outcome="interrupted", ended_at=seen["ended_at"], message=seen["message"])
            ).rowcount
        return closed

    def _with_leases(self, conn: Connection, *where: Any, latest: bool = False) -> list[tuple[dict[str, Any], _Seen]]:
        """Runs (``latest``: each pipeline's latest) with their pipeline's lease (holder,
        expiry) and last page commit, read in ONE statement: a run that ends between two
        reads must not look interrupted."""
        last_commit = (
            sa.select(sa.func.max(T_CURSORS.c.committed_at))
            .where(T_CURSORS.c.pipeline == T_RUNS.c.pipeline)
            .scalar_subquery()
            .label("last_commit_at")
        )
        query = sa.select(
            T_RUNS,
            T_LEASES.c.holder.label("lease_holder"),
            T_LEASES.c.expires_at.label("lease_expires_at"),
            last_commit,
        ).select_from(T_RUNS)
        if latest:
            ids = sa.select(sa.func.max(T_RUNS.c.id).label("id")).group_by(T_RUNS.c.pipeline).subquery()
            query = query.join(ids, T_RUNS.c.id == ids.c.id)
        query = query.outerjoin(T_LEASES, T_LEASES.c.pipeline == T_RUNS.c.pipeline).where(*where)
        out = []
        for row in conn.execute(query).mappings():
            run = dict(row)
            extra = (run.pop("lease_holder"), run.pop("lease_expires_at"), run.pop("last_commit_at"))
            out.append((run, extra))
        return out
