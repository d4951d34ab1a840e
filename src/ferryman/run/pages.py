"""Reading a source one page ahead: page N+1 is fetched while page N is mapped, written
and committed.

Only reading runs ahead. A page reaches the engine when it asks for it, in order, so
nothing is written, and no cursor moves, any earlier than without read-ahead; a run that
stops (halted, stopped, failed) has at most one page fetched that it never used, and
:func:`read_ahead` cancels that fetch and closes the source's reader before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

__all__ = ["read_ahead"]

T = TypeVar("T")


async def read_ahead(pages: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """Yield from ``pages``, asking for the next item as soon as one is handed out.

    Use it under :func:`contextlib.aclosing` so that a consumer that stops early cancels
    the fetch in flight and closes ``pages`` at once (not when the garbage collector
    finalises the generator, after the run and its HTTP client are gone)."""
    ahead: asyncio.Future[T] = asyncio.ensure_future(anext(pages))
    try:
        while True:
            try:
                page = await ahead
            except StopAsyncIteration:
                return
            ahead = asyncio.ensure_future(anext(pages))
            yield page
    finally:
        if not ahead.done():
            ahead.cancel()
        with contextlib.suppress(BaseException):
            # retrieve the outcome (a cancelled fetch, a StopAsyncIteration, an error
            # nobody needs any more), so that no "exception was never retrieved" is logged
            await ahead
        closing = getattr(pages, "aclose", None)
        if closing is not None:
            with contextlib.suppress(RuntimeError):  # already closed by the cancellation
                await closing()
