"""Records that could not be read or written, kept to be replayed or dropped: the
``dead_letters`` table. A letter is open until a later write settles it (a reference that
appeared, a source row that reads again) or a command resolves or drops it. Everything a
letter keeps is redacted: a payload is the record as an app sent it, and an app that echoes
a request puts its URL (with a key) in it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ferryman.redact import redact
from ferryman.state.models import DeadLetterRow
from ferryman.state.sql import chunks, reading
from ferryman.timeutil import utcnow

__all__ = ["T_DLQ", "DeadLetter", "DeadLetters", "NewDeadLetter"]

T_DLQ = DeadLetterRow.__table__  # type: ignore[attr-defined]


@dataclass(slots=True)
class DeadLetter:
    id: int
    pipeline: str
    src: str
    dst: str | None
    ref: str
    src_key: str | None
    reason: str
    kind: str
    payload: Any
    status: str
    attempts: int
    created_at: datetime
    last_seen_at: datetime


@dataclass(slots=True)
class NewDeadLetter:
    src: str
    dst: str | None
    ref: str
    reason: str
    src_key: str | None = None
    kind: str = "rejected"
    payload: Any = None


class DeadLetters:
    """The dead letters of one state database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- writes, in the caller's transaction -----------------------------------------------
    def add_in(self, conn: Connection, pipeline: str, letter: NewDeadLetter) -> None:
        """Open a letter, or count one more attempt on the open letter of the same record
        (pipeline, ref, source, target)."""
        now = utcnow()
        payload = None if letter.payload is None else json.dumps(_redacted(letter.payload), default=str, sort_keys=True)
        reason = redact(letter.reason)
        ref = redact(letter.ref)
        src_key = redact(letter.src_key) if letter.src_key is not None else None
        dst_clause = T_DLQ.c.dst.is_(None) if letter.dst is None else T_DLQ.c.dst == letter.dst
        existing = conn.execute(
            sa.select(T_DLQ.c.id).where(
                T_DLQ.c.pipeline == pipeline,
                T_DLQ.c.status == "open",
                T_DLQ.c.ref == ref,
                T_DLQ.c.src == letter.src,
                dst_clause,
            )
        ).first()
        if existing:
            conn.execute(
                sa.update(T_DLQ)
                .where(T_DLQ.c.id == existing[0])
                .values(
                    reason=reason, payload=payload, kind=letter.kind, last_seen_at=now, attempts=T_DLQ.c.attempts + 1
                )
            )
        else:
            conn.execute(
                sa.insert(T_DLQ).values(
                    pipeline=pipeline,
                    src=letter.src,
                    dst=letter.dst,
                    ref=ref,
                    src_key=src_key,
                    reason=reason,
                    kind=letter.kind,
                    payload=payload,
                    status="open",
                    attempts=1,
                    created_at=now,
                    last_seen_at=now,
                )
            )

    def settle_in(self, conn: Connection, pipeline: str, dst: str, keys: Sequence[str]) -> None:
        """Resolve the open ``reference`` letters of these source keys for ``dst``: they were
        delivered there at last."""
        for chunk in chunks(keys, 500):
            conn.execute(
                sa.update(T_DLQ)
                .where(
                    T_DLQ.c.pipeline == pipeline,
                    T_DLQ.c.status == "open",
                    T_DLQ.c.kind == "reference",
                    T_DLQ.c.dst == dst,
                    T_DLQ.c.src_key.in_(chunk),
                )
                .values(status="resolved", last_seen_at=utcnow())
            )

    def resolve_source_in(self, conn: Connection, pipeline: str, keys: Sequence[str]) -> None:
        """Resolve the open letters of the source (rows that could not be read) for these
        keys, read fine now. Usually there are none, and one indexed probe says so."""
        if not keys or not self._open_source_rejects(conn, pipeline):
            return
        for chunk in chunks(keys, 500):
            conn.execute(
                sa.update(T_DLQ)
                .where(
                    T_DLQ.c.pipeline == pipeline,
                    T_DLQ.c.status == "open",
                    T_DLQ.c.dst.is_(None),
                    T_DLQ.c.src_key.in_(chunk),
                )
                .values(status="resolved", last_seen_at=utcnow())
            )

    def _open_source_rejects(self, conn: Connection, pipeline: str) -> bool:
        query = (
            sa.select(T_DLQ.c.id)
            .where(T_DLQ.c.pipeline == pipeline, T_DLQ.c.status == "open", T_DLQ.c.dst.is_(None))
            .limit(1)
        )
        return conn.execute(query).first() is not None

    # -- writes of their own -----------------------------------------------------------------
    def add(self, pipeline: str, letters: Iterable[NewDeadLetter]) -> None:
        with self.engine.begin() as conn:
            for letter in letters:
                self.add_in(conn, pipeline, letter)

    def set_status(self, ids: Sequence[int], status: str, reason: str | None = None, *, kind: str | None = None) -> int:
        values: dict[str, Any] = {"status": status, "last_seen_at": utcnow()}
        if reason is not None:
            values["reason"] = redact(reason)
        if kind is not None:
            values["kind"] = kind
        with self.engine.begin() as conn:
            return int(conn.execute(sa.update(T_DLQ).where(T_DLQ.c.id.in_(list(ids))).values(**values)).rowcount)

    # -- reads ---------------------------------------------------------------------------------
    def find(
        self,
        pipeline: str | None = None,
        status: str | None = "open",
        ids: Sequence[int] | None = None,
        *,
        kind: str | None = None,
        oldest_first: int | None = None,
    ) -> list[DeadLetter]:
        """Dead letters in id order; ``oldest_first=N``: the N least recently attempted."""
        if oldest_first is None:
            query = sa.select(T_DLQ).order_by(T_DLQ.c.id)
        else:
            query = sa.select(T_DLQ).order_by(T_DLQ.c.last_seen_at, T_DLQ.c.id).limit(oldest_first)
        if pipeline:
            query = query.where(T_DLQ.c.pipeline == pipeline)
        if kind:
            query = query.where(T_DLQ.c.kind == kind)
        if status:
            query = query.where(T_DLQ.c.status == status)
        if ids:
            query = query.where(T_DLQ.c.id.in_(list(ids)))
        with reading(self.engine) as conn:
            rows = conn.execute(query).mappings().all()
        return [
            DeadLetter(
                id=r["id"],
                pipeline=r["pipeline"],
                src=r["src"],
                dst=r["dst"],
                ref=r["ref"],
                src_key=r["src_key"],
                reason=r["reason"],
                kind=r["kind"],
                payload=json.loads(r["payload"]) if r["payload"] else None,
                status=r["status"],
                attempts=r["attempts"],
                created_at=r["created_at"],
                last_seen_at=r["last_seen_at"],
            )
            for r in rows
        ]

    def count_open(self) -> dict[str, int]:
        with reading(self.engine) as conn:
            rows = conn.execute(
                sa.select(T_DLQ.c.pipeline, sa.func.count()).where(T_DLQ.c.status == "open").group_by(T_DLQ.c.pipeline)
            )
            return {r[0]: int(r[1]) for r in rows}


def _redacted(value: Any) -> Any:
    """``value`` with every string in it (keys included) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {_redacted(k) if isinstance(k, str) else k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value
