"""The clock the HTTP layer reads and sleeps on: one seam, so tests need not wait."""

from __future__ import annotations

import asyncio
from datetime import datetime

from ferryman.timeutil import utcnow

__all__ = ["Clock"]


class Clock:
    """Wall-clock time and sleeping. Subclass it to fake time in tests.

    Rate budgets are kept in wall-clock time (not ``time.monotonic``) because a shared
    backend compares timestamps written by several processes.
    """

    def now(self) -> datetime:
        """The current time, aware UTC."""
        return utcnow()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (nothing for zero or less)."""
        if seconds > 0:
            await asyncio.sleep(seconds)
