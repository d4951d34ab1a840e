"""Hosts that asked to be left alone until a time (a 429 or 503 with ``Retry-After``):
the ``hosts`` table, shared by every run and instance."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ferryman.redact import redact
from ferryman.state.models import HostRow
from ferryman.state.sql import reading
from ferryman.timeutil import utcnow

__all__ = ["T_HOSTS", "Hosts"]

T_HOSTS = HostRow.__table__  # type: ignore[attr-defined]


class Hosts:
    """The host deferrals of one state database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def set_not_before(self, host: str, not_before: datetime, reason: str | None = None) -> None:
        with self.engine.begin() as conn:
            where = T_HOSTS.c.host == host
            values = {"not_before": not_before, "reason": redact(reason) if reason else None}
            if conn.execute(sa.update(T_HOSTS).where(where).values(**values)).rowcount == 0:
                conn.execute(sa.insert(T_HOSTS).values(host=host, **values))

    def not_before(self, hosts: Sequence[str]) -> tuple[str, datetime] | None:
        """The latest future deferral among ``hosts``, if any."""
        if not hosts:
            return None
        now = utcnow()
        with reading(self.engine) as conn:
            row = conn.execute(
                sa.select(T_HOSTS.c.host, T_HOSTS.c.not_before)
                .where(T_HOSTS.c.host.in_(list(hosts)), T_HOSTS.c.not_before > now)
                .order_by(T_HOSTS.c.not_before.desc())
            ).first()
        return (row[0], row[1]) if row else None

    def deferrals(self) -> list[dict[str, Any]]:
        with reading(self.engine) as conn:
            return [dict(r) for r in conn.execute(sa.select(T_HOSTS).where(T_HOSTS.c.not_before > utcnow())).mappings()]
