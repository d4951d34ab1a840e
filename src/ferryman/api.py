"""The base for connectors that talk to an app over HTTP.

A seeded connector subclasses :class:`ApiConnector`, declares its options (a subclass of
:class:`~ferryman.http.HttpOptions`), says how it authenticates (:meth:`auth`), how the
app reports errors inside otherwise successful responses (:meth:`response_hook`), and
maps native entities to canonical records and back. The HTTP client (rate limits,
``Retry-After``, retries, redaction) is created and closed here, one per system.

:func:`keyset_pages` adapts a tuple-returning ``fetch`` to the one read loop,
:func:`ferryman.sdk.readloop.keyset_read` (paging, keyset restarts and their guards).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, ClassVar

import httpx

from ferryman.connector import Connector, Page, Reject, SystemContext
from ferryman.cursor import Cursor, record_order
from ferryman.errors import ValidationFailed
from ferryman.http import HttpClient, HttpOptions, HttpRegistry, host_key
from ferryman.records import Record
from ferryman.sdk.readloop import Fetched, keyset_read

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
    *,
    system: str | None = None,
    stream: str = "",
) -> AsyncIterator[Page]:
    """:func:`ferryman.sdk.readloop.keyset_read` for a ``fetch`` that returns a
    :data:`NativePage` tuple (records in the server's order, rejects, more pages?)."""

    async def adapted(updated_since: datetime | None, page_number: int) -> Fetched:
        records, rejects, more = await fetch(updated_since, page_number)
        return Fetched(records, rejects, more)

    async for page in keyset_read(adapted, since, system=system, stream=stream):
        yield page


def sort_natural(records: list[Record]) -> list[Record]:
    """Records in the order the engine expects: (updated_at, natural key)."""
    return sorted(records, key=record_order)
