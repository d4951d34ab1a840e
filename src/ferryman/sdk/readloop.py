"""The one read loop: paging, keyset restarts, the ``since`` filter and the guards.

Every HTTP connector reads through here instead of writing its own ``while True``. A
connector supplies one ``fetch`` coroutine that performs one request and maps the answer
(records in the **server's** order, never sorted here, plus rejects); the loop decides
what to ask next and refuses to believe what it cannot verify:

- **order**: records out of ``updated_at`` order stop the read with
  :class:`~ferryman.errors.OrderViolation` naming the two keys (never a silent skip);
- **progress**: a page that repeats the page before it (an API that ignores its paging
  parameters answers the same list again) raises :class:`~ferryman.errors.PagingError`
  naming the URL, and so does passing the page cap (:data:`MAX_PAGES`, raised by the
  pipeline's ``max_pages``), instead of paging for ever;
- **the since filter**: records before the cursor are dropped by the cursor policy, so a
  server that ignores or floors the filter costs requests, never correctness.

Three shapes of API are covered:

- :func:`keyset_read`: an inclusive ``updated since`` filter with server-side order and
  page numbers. Paging a changing result set by page number alone loses rows (a row
  updated during the read moves to the end and every later row shifts back across a page
  boundary), so the query restarts from the newest timestamp seen whenever it moves.
- :func:`whole_list_pages`: an API with no paging at all (Clevertim; an ASP.NET Web API
  without OData): one answer holds every record, which is filtered, ordered and chunked
  here.
- any other loop (a :mod:`ferryman.http.pagination` paginator in
  :func:`ferryman.http.pagination.paginate`, a page walk of a ``find``) keeps a
  :class:`PageGuard` for the repeat guard and the page cap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ferryman.connector import Page, Reject
from ferryman.cursor import SECOND, Boundary, Cursor, OrderGuard, due, filter_floor, record_order
from ferryman.errors import PagingError
from ferryman.records import Record

__all__ = [
    "DEFAULT_MAX_PAGES",
    "MAX_PAGES",
    "Fetched",
    "PageGuard",
    "collect",
    "keyset_read",
    "max_pages",
    "whole_list_pages",
]

DEFAULT_MAX_PAGES = 10_000
#: pages one read may fetch before it stops with PagingError; the engine sets it from the
#: pipeline's ``max_pages`` for the duration of a run
MAX_PAGES: ContextVar[int] = ContextVar("ferryman_max_pages", default=DEFAULT_MAX_PAGES)


def max_pages() -> int:
    return MAX_PAGES.get()


@dataclass(slots=True)
class Fetched:
    """One answer of a list endpoint, as ``fetch`` returns it."""

    records: list[Record]  # in the order the server sent them
    rejects: list[Reject] = field(default_factory=list)
    more: bool = False  # the server says (or the page size implies) that more pages follow
    where: str = ""  # the request, for messages ("GET /api/tickets?page=3")
    #: what identifies the page's content for the repeat guard (default: keys and timestamps)
    signature: Any = None


class PageGuard:
    """Counts pages against the cap and refuses a page that repeats the one before it."""

    __slots__ = ("_last", "cap", "pages", "stream", "system")

    def __init__(self, *, system: str | None = None, stream: str = "", cap: int | None = None) -> None:
        self.system = system
        self.stream = stream
        self.cap = cap if cap is not None else max_pages()
        self.pages = 0
        self._last: Any = None

    def fetched(self, signature: Any, where: str = "") -> None:
        """Call after every request of a read, with what identifies the page's content."""
        self.pages += 1
        what = f"{self.stream}: " if self.stream else ""
        at = f" ({where})" if where else ""
        if self.pages > self.cap:
            raise PagingError(
                f"{what}read more than {self.cap} pages in one run{at} without reaching the end; raise the "
                "pipeline's max_pages if the source really is that large",
                system=self.system,
            )
        if signature and signature == self._last:
            raise PagingError(
                f"{what}page {self.pages} repeats the page before it{at}: the API ignores its paging parameters. "
                "Stopped instead of paging for ever; if this API answers every record at once, declare the "
                "stream unpaged (see the connector's README)",
                system=self.system,
            )
        self._last = signature

    def restart(self) -> None:
        """A second query begins within the same read: its first page may equal the last
        page of the one before (the page count, and so the cap, carries on)."""
        self._last = None


def _signature(records: Sequence[Record]) -> tuple[tuple[str, datetime], ...]:
    return tuple((r.key, r.updated_at) for r in records)


async def keyset_read(
    fetch: Callable[[datetime | None, int], Awaitable[Fetched]],
    since: Cursor | None,
    *,
    system: str | None = None,
    stream: str = "",
    granularity: timedelta = SECOND,
) -> AsyncIterator[Page]:
    """Pages of an incremental read that cannot lose rows, and cannot loop.

    ``fetch(updated_since, page_number)`` asks the app for records with ``updated_at >=
    updated_since`` (inclusive; ``None`` for everything), sorted by ``updated_at``, page
    ``page_number`` (from 1). ``updated_since`` is already floored to ``granularity``, the
    finest step the app's filter takes. Whenever a page reaches past the query's start,
    the query restarts there at page 1; while a page stays within one filter step, the
    page number advances. Records already yielded are dropped (:class:`Boundary`).
    """
    guard = OrderGuard(system=system, stream=stream)
    pages = PageGuard(system=system, stream=stream)
    boundary = Boundary(since)
    query_since = filter_floor(since, granularity)
    page_number = 1
    while True:
        answer = await fetch(query_since, page_number)
        records = answer.records
        pages.fetched(answer.signature if answer.signature is not None else _signature(records), answer.where)
        guard.check(records, answer.where)
        fresh = boundary.fresh(records)
        if fresh or answer.rejects:
            yield Page(fresh, answer.rejects)
        if not answer.more or not records:
            return
        # Restart where this page ends when the page spans more than one filter step; a page
        # within one step (a big group sharing a timestamp) advances the page number, since
        # restarting there would answer the same page again.
        step = filter_floor(Cursor.of(records[-1]), granularity)
        first = filter_floor(Cursor.of(records[0]), granularity)
        if step is not None and first is not None and step > first:
            query_since, page_number = step, 1
            guard.reset()  # a new query: its floor may re-include the last step's records
        else:
            page_number += 1


async def collect(pages: AsyncIterator[Page]) -> tuple[list[Record], list[Reject]]:
    """Every record and reject of a read, in order (for a whole read held in memory)."""
    records: list[Record] = []
    rejects: list[Reject] = []
    async for page in pages:
        records.extend(page.records)
        rejects.extend(page.rejects)
    return records, rejects


def whole_list_pages(
    records: Sequence[Record],
    rejects: Sequence[Reject],
    since: Cursor | None,
    page_size: int,
    *,
    total: int | None = None,
) -> list[Page]:
    """Pages of an API that answers every record at once: due from ``since``, in cursor
    order, ``page_size`` at a time (rejects first, on a page of their own).

    Every page carries the read's :attr:`~ferryman.connector.Page.total`: the records due
    here, or ``total`` when the read yields more than this list (several lists in one read)."""
    wanted = sorted(due(records, since), key=record_order)
    count = len(wanted) if total is None else total
    pages: list[Page] = []
    if rejects:
        pages.append(Page([], list(rejects), total=count))
    size = max(1, page_size)
    pages.extend(Page(wanted[start : start + size], total=count) for start in range(0, len(wanted), size))
    return pages
