"""Helpers shared by the HTTP tests."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from ferryman.http import Clock

BASE = "https://api.example.com/api"
START = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class FakeClock(Clock):
    """Time that only moves when someone sleeps; every sleep is recorded."""

    def __init__(self, start: datetime = START) -> None:
        self.current = start
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.sleeps.append(seconds)
            self.current += timedelta(seconds=seconds)
        await asyncio.sleep(0)

    def elapsed(self) -> float:
        return (self.current - START).total_seconds()
