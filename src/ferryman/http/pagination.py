"""Paginators: where the next page is, declared rather than coded.

Each paginator is a small frozen dataclass with two pure methods:

- ``first(params)`` → the query parameters of the first request (adds ``page=1``,
  ``limit=100``...);
- ``next_request(response, body, params, records)`` → a :class:`NextRequest` for the
  next page, or ``None`` when this was the last one. ``body`` is the parsed body,
  ``params`` the query parameters this page was requested with, ``records`` the list
  :func:`extract` found in it.

They are built from YAML by the generic ``rest`` connector and used directly by the
seeded connectors; :func:`paginate` drives any of them over an :class:`HttpClient`, with
the read loop's :class:`~ferryman.sdk.readloop.PageGuard` on every page: a page that
repeats the one before it (an API that ignores its paging parameters) or a walk past the
page cap raises :class:`~ferryman.errors.PagingError` instead of paging for ever.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urljoin

import httpx

from ferryman.errors import MalformedResponseError, PagingError
from ferryman.redact import redact_url
from ferryman.sdk.readloop import PageGuard

if TYPE_CHECKING:
    from ferryman.http._client import HttpClient

__all__ = [
    "BodyCursor",
    "BodyNextUrl",
    "LinkHeader",
    "NextRequest",
    "OffsetLimit",
    "PageNumber",
    "Paginator",
    "extract",
    "extract_records",
    "page_signature",
    "paginate",
    "parse_link_header",
]

_MISSING: Any = object()


def extract(body: Any, path: str, default: Any = None) -> Any:
    """The value at a dotted ``path`` in a parsed body; ``""`` or ``"."`` is the body itself.

    ``"data.items"`` walks dict keys; a numeric part indexes a list (``"results.0.id"``).
    A path that is not there gives ``default``.
    """
    if path in ("", "."):
        return body
    if type(body) is dict and "." not in path:
        return body.get(path, default)  # the hot case: one key of a JSON object
    current = body
    for part in path.split("."):
        if (type(current) is dict or isinstance(current, Mapping)) and part in current:
            current = current[part]
        elif isinstance(current, list) and re.fullmatch(r"-?\d+", part) and -len(current) <= int(part) < len(current):
            current = current[int(part)]
        else:
            return default
    return current


def extract_records(body: Any, path: str) -> list[Any]:
    """The records list at ``path``; a missing path or a non-list raises MalformedResponseError.

    ``null`` at the path counts as an empty page (several APIs say "no results" that way).
    """
    found = extract(body, path, _MISSING)
    if found is None:
        return []
    if found is _MISSING or not isinstance(found, list):
        what = "nothing" if found is _MISSING else type(found).__name__
        raise MalformedResponseError(f"expected a list of records at {path or '.'!r}, found {what}")
    return found


@dataclass(frozen=True, slots=True)
class NextRequest:
    """Where the next page is: new query ``params`` for the same URL, or an absolute ``url``.

    With ``url`` set, the URL already carries its query; ``params`` is then usually empty.
    """

    params: dict[str, Any] = field(default_factory=dict)
    url: str | None = None


class Paginator(Protocol):
    """What :func:`paginate` needs from a paginator."""

    def first(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Query parameters of the first request."""
        ...

    def next_request(
        self, response: httpx.Response, body: Any, params: Mapping[str, Any], records: Sequence[Any]
    ) -> NextRequest | None:
        """The next page, or ``None`` after the last one."""
        ...


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class PageNumber:
    """``?page=1``, ``?page=2``...

    Stops on an empty page; on a short page when the page ``size`` is known (sent as
    ``size_param``, or fixed by the API, like Harvest's 50); and when ``pages_path``
    (a total page count) or ``total_path`` (a total record count, needs ``size``) in the
    body says this was the last page.
    """

    param: str = "page"
    size_param: str | None = None
    size: int | None = None
    start: int = 1
    pages_path: str | None = None
    total_path: str | None = None

    def first(self, params: Mapping[str, Any]) -> dict[str, Any]:
        first = {**params, self.param: self.start}
        if self.size_param and self.size:
            first[self.size_param] = self.size
        return first

    def next_request(
        self, response: httpx.Response, body: Any, params: Mapping[str, Any], records: Sequence[Any]
    ) -> NextRequest | None:
        if not records:
            return None
        page = _int(params.get(self.param, self.start))
        if page is None:
            return None
        if self.size and len(records) < self.size:
            return None
        if self.pages_path:
            pages = _int(extract(body, self.pages_path))
            if pages is not None and page - self.start + 1 >= pages:
                return None
        if self.total_path and self.size:
            total = _int(extract(body, self.total_path))
            if total is not None and (page - self.start + 1) * self.size >= total:
                return None
        return NextRequest({**params, self.param: page + 1})


@dataclass(frozen=True, slots=True)
class OffsetLimit:
    """``?offset=0&limit=100``, then ``offset=100``...: the offset moves by the records received.

    Stops on an empty or short page, or when ``total_path`` in the body is reached.
    """

    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = 100
    start: int = 0
    total_path: str | None = None

    def first(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**params, self.offset_param: self.start, self.limit_param: self.limit}

    def next_request(
        self, response: httpx.Response, body: Any, params: Mapping[str, Any], records: Sequence[Any]
    ) -> NextRequest | None:
        if len(records) < self.limit:
            return None
        offset = (_int(params.get(self.offset_param, self.start)) or 0) + len(records)
        if self.total_path:
            total = _int(extract(body, self.total_path))
            if total is not None and offset >= total:
                return None
        return NextRequest({**params, self.offset_param: offset})


@dataclass(frozen=True, slots=True)
class BodyCursor:
    """An opaque next-page token in the body, sent back as ``param``.

    Stops when the token at ``cursor_path`` is missing, null, ``""`` or ``false``, or
    when ``has_more_path`` is given and false.
    """

    cursor_path: str
    param: str = "cursor"
    has_more_path: str | None = None

    def first(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return dict(params)

    def next_request(
        self, response: httpx.Response, body: Any, params: Mapping[str, Any], records: Sequence[Any]
    ) -> NextRequest | None:
        token = extract(body, self.cursor_path)
        if token in (None, "", False):
            return None
        if self.has_more_path is not None and not extract(body, self.has_more_path):
            return None
        return NextRequest({**params, self.param: token})


@dataclass(frozen=True, slots=True)
class BodyNextUrl:
    """The next page's URL in the body (``"next": "https://.../tickets?page=2"``).

    A relative URL is resolved against the URL of the page that named it. Stops when it
    is missing, null or ``""``.
    """

    path: str

    def first(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return dict(params)

    def next_request(
        self, response: httpx.Response, body: Any, params: Mapping[str, Any], records: Sequence[Any]
    ) -> NextRequest | None:
        url = extract(body, self.path)
        if not url or not isinstance(url, str):
            return None
        return NextRequest(url=urljoin(str(response.url), url))


_LINK = re.compile(r"<(?P<url>[^>]*)>(?P<params>[^<]*)")
_LINK_PARAM = re.compile(r';\s*(?P<name>[^\s=;,]+)\s*(?:=\s*(?:"(?P<quoted>[^"]*)"|(?P<token>[^\s;,]+)))?')


def parse_link_header(value: str) -> list[dict[str, str]]:
    """RFC 8288 ``Link`` values: ``[{"url": ..., "rel": "next", ...}]`` (param names lower-cased)."""
    links = []
    for match in _LINK.finditer(value):
        link = {"url": match["url"].strip()}
        for param in _LINK_PARAM.finditer(match["params"]):
            link[param["name"].lower()] = param["quoted"] if param["quoted"] is not None else (param["token"] or "")
        links.append(link)
    return links


@dataclass(frozen=True, slots=True)
class LinkHeader:
    """The next page in the ``Link`` response header (RFC 8288), ``rel="next"`` by default.

    ``rel`` may list several relation types (``rel="next last"``); relative targets are
    resolved against the response URL.
    """

    rel: str = "next"

    def first(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return dict(params)

    def next_request(
        self, response: httpx.Response, body: Any, params: Mapping[str, Any], records: Sequence[Any]
    ) -> NextRequest | None:
        for value in response.headers.get_list("link"):
            for link in parse_link_header(value):
                if self.rel in link.get("rel", "").lower().split():
                    return NextRequest(url=urljoin(str(response.url), link["url"]))
        return None


@dataclass(slots=True)
class FetchedPage:
    """One page :func:`paginate` fetched."""

    records: list[Any]
    body: Any
    response: httpx.Response
    #: the paginator says another page follows (known before it is asked for)
    more: bool = False


def page_signature(records: Sequence[Any]) -> tuple[Any, ...]:
    """What identifies a page for the repeat guard: the records' ``id`` where they have one."""
    return tuple(r.get("id", repr(r)) if isinstance(r, Mapping) else repr(r) for r in records)


async def paginate(
    client: HttpClient,
    path: str,
    paginator: Paginator,
    *,
    records_path: str = "",
    params: Mapping[str, Any] | None = None,
    decode: Callable[[httpx.Response], Any] | None = None,
    headers: Mapping[str, str] | None = None,
    max_pages: int | None = None,
    stream: str = "",
    signature: Callable[[list[Any]], Any] = page_signature,
) -> AsyncIterator[FetchedPage]:
    """GET ``path`` page by page until ``paginator`` says stop; yield each page.

    ``decode`` turns a response into a body (JSON by default); it runs inside the
    client's retry loop, so a malformed page is retried like a 5xx. ``max_pages`` stops
    quietly after that many pages (the caller wants no more).

    Paging that does not progress raises :class:`PagingError` naming the URL: a page whose
    ``signature`` (default: its records' ids) equals the page before it, a paginator that
    asks for a page it already fetched, and more pages than the run's page cap
    (:func:`ferryman.sdk.readloop.max_pages`).
    """
    system = getattr(client, "system", None)
    guard = PageGuard(system=system, stream=stream)
    url: str = path
    current = paginator.first(params or {})
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    pages = 0
    while True:
        marker = (url, tuple(sorted((str(k), str(v)) for k, v in current.items())))
        if marker in seen:
            what = f"{stream}: " if stream else ""
            raise PagingError(
                f"{what}pagination loops: {redact_url(url)} was already fetched with these params", system=system
            )
        seen.add(marker)
        response, body = await client.request_decoded("GET", url, decode=decode, params=current, headers=headers)
        where = f"GET {redact_url(str(response.url))}"
        try:
            records = extract_records(body, records_path)
        except MalformedResponseError as exc:
            raise MalformedResponseError(f"{exc} in {where}", system=system) from None
        guard.fetched(signature(records), where)
        following = paginator.next_request(response, body, current, records)
        yield FetchedPage(records, body, response, following is not None)
        pages += 1
        if max_pages is not None and pages >= max_pages:
            return
        if following is None:
            return
        if following.url is not None:
            url = following.url
        current = following.params
