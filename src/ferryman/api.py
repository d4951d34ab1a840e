"""The base for connectors that talk to an app over HTTP.

A seeded connector subclasses :class:`ApiConnector`, declares its options (a subclass of
:class:`~ferryman.http.HttpOptions`), says how it authenticates (:meth:`auth`), how the
app reports errors inside otherwise successful responses (:meth:`response_hook`), and
maps native entities to canonical records and back. The HTTP client (rate limits,
``Retry-After``, retries, redaction) is created and closed here, one per system.

:func:`keyset_pages` is the safe way to read an ``updated_since`` query page by page:
paging a changing result set by page number alone loses rows (a row updated during the
read moves to the end and every later row shifts back across a page boundary), so the
query is restarted from the last timestamp seen whenever it moves forward.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, ClassVar

import httpx

from ferryman.connector import Connector, Cursor, Page, Reject, SystemContext, natural_key
from ferryman.errors import ValidationFailed
from ferryman.http import HttpClient, HttpOptions, HttpRegistry, host_key
from ferryman.records import Record

__all__ = ["ApiConnector", "NativePage", "keyset_pages", "sort_natural", "to_record"]

NativePage = tuple[list[Record], list[Reject], bool]
"""What a fetch returns: records in (updated_at, natural key) order, rejects, and whether more pages follow."""


class ApiConnector(Connector):
    """A connector with one :class:`~ferryman.http.HttpClient` per system."""

    Options: ClassVar[type[HttpOptions]] = HttpOptions
    #: a cheap GET that proves the credentials work, for ``ferryman check``
    check_path: ClassVar[str] = "/"

    options: HttpOptions
    http: HttpClient

    def __init__(self, context: SystemContext) -> None:
        super().__init__(context)
        self._http: HttpClient | None = None

    # -- what a subclass says ----------------------------------------------------------
    def auth(self) -> httpx.Auth | None:
        """The credentials, as an :class:`httpx.Auth` (see :mod:`ferryman.http.auth`)."""
        return None

    def headers(self) -> dict[str, str]:
        """Headers on every request (``Accept``...)."""
        return {}

    def response_hook(self, response: httpx.Response) -> None:
        """Raise a :mod:`ferryman.errors` class for errors the app reports with HTTP 200."""

    # -- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        registry = self.context.services.get("http")
        if registry is None:
            registry = self.context.services["http"] = HttpRegistry()
        self._http = HttpClient(
            self.name,
            self.options,
            registry=registry,
            auth=self.auth(),
            headers=self.headers(),
            response_hook=self.response_hook,
            transport=self.context.services.get("http_transport"),
        )
        self.http = self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def hosts(self) -> list[str]:
        return [host_key(self.options.base_url)]

    async def check(self) -> None:
        await self.http.request("GET", self.check_path)


def to_record(
    record_type: type[Record], build: Callable[[], dict[str, Any]], *, ref: str, key: str | None = None
) -> Record | Reject:
    """Build a record from a native entity, or a :class:`Reject` saying why it cannot be one."""
    try:
        return record_type.model_validate(build())
    except ValidationFailed as exc:
        return Reject(ref, str(exc), key=key)
    except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if hasattr(exc, "errors"):
            err = exc.errors()[0]
            reason = f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
        return Reject(ref, reason, key=key)


async def keyset_pages(
    fetch: Callable[[datetime | None, int], Awaitable[NativePage]],
    since: Cursor | None,
) -> AsyncIterator[Page]:
    """Pages of an incremental read that cannot lose rows to concurrent updates.

    ``fetch(updated_since, page_number)`` asks the app for records with ``updated_at >=
    updated_since`` (inclusive; ``None`` for everything), sorted by ``(updated_at, id)``,
    and returns them with whether more pages follow. Whenever the last record of a page
    is newer than the query's ``updated_since``, the next query restarts from that
    timestamp at page 1; only while a page is all one timestamp does the page number
    advance. Records already yielded (by compound cursor) are dropped.
    """
    query_since = since.updated_at if since else None
    last = since
    page_number = 1
    # The record *at* the cursor is still due until something is yielded: it may sit on a
    # later page than the first when many records share the cursor's timestamp.
    inclusive = True
    while True:
        records, rejects, more = await fetch(query_since, page_number)
        if last is None:
            fresh = list(records)
        else:
            # Cursor.of(r) > last, with the cheap comparison first (most records are newer)
            bound, edge = last.updated_at, last
            fresh = [
                r
                for r in records
                if r.updated_at > bound
                or (r.updated_at == bound and (Cursor.of(r) > edge or (inclusive and Cursor.of(r) == edge)))
            ]
        if fresh or rejects:
            yield Page(fresh, rejects)
        if fresh:
            last = _newest_cursor(fresh)
            inclusive = False
        if not more or not records:
            return
        newest = records[-1].updated_at
        if query_since is None or newest > query_since:
            query_since, page_number = newest, 1
        else:
            page_number += 1


def _newest_cursor(records: list[Record]) -> Cursor:
    """``max(Cursor.of(r) for r in records)``, building cursors only for the newest timestamp."""
    newest = max(r.updated_at for r in records)
    return max(Cursor.of(r) for r in records if r.updated_at == newest)


def sort_natural(records: list[Record]) -> list[Record]:
    """Records in the order the engine expects: (updated_at, natural key)."""
    return sorted(records, key=lambda r: (r.updated_at, natural_key(r.key)))
