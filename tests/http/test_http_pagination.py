"""Each paginator against mocked pages, driven by paginate(); extract() and Link parsing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

from ferryman.errors import MalformedResponseError, PagingError
from ferryman.http import (
    BodyCursor,
    BodyNextUrl,
    HttpClient,
    HttpOptions,
    HttpRegistry,
    LinkHeader,
    OffsetLimit,
    PageNumber,
    Paginator,
    extract,
    paginate,
)
from ferryman.http.codecs import parse_xml, typed_xml_to_python
from ferryman.http.pagination import extract_records, parse_link_header
from ferryman.sdk.readloop import MAX_PAGES

from .support import BASE, FakeClock


async def collect(paginator: Paginator, records_path: str = "", **kwargs: Any) -> tuple[list[Any], list[httpx.Request]]:
    """All records of ``/tickets`` and the requests it took."""
    requests: list[httpx.Request] = []
    records: list[Any] = []
    http = HttpClient("api", HttpOptions(base_url=BASE), registry=HttpRegistry(), clock=FakeClock())
    async with http:
        async for page in paginate(http, "/tickets", paginator, records_path=records_path, **kwargs):
            records.extend(page.records)
            requests.append(page.response.request)
    return records, requests


def query(request: httpx.Request) -> dict[str, str]:
    return dict(request.url.params)


def by_param(name: str, pages: dict[str, Any], **headers: str):
    """A side effect answering ``pages[params[name]]`` (``""`` when the param is absent)."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params.get(name, "")], headers=headers)

    return answer


async def test_page_number_stops_on_a_short_page(api: respx.MockRouter) -> None:
    api.get("/tickets").mock(side_effect=by_param("page", {"1": [1, 2], "2": [3, 4], "3": [5]}))
    records, requests = await collect(
        PageNumber(size_param="per_page", size=2), params={"updated_since": "2024-01-01T00:00:00Z"}
    )
    assert records == [1, 2, 3, 4, 5]
    assert [query(r) for r in requests] == [
        {"updated_since": "2024-01-01T00:00:00Z", "page": str(n), "per_page": "2"} for n in (1, 2, 3)
    ]


async def test_page_number_stops_on_an_empty_page_when_size_is_unknown(api: respx.MockRouter) -> None:
    api.get("/tickets").mock(
        side_effect=by_param("p", {"0": {"items": [1, 2]}, "1": {"items": [3]}, "2": {"items": []}})
    )
    records, requests = await collect(PageNumber(param="p", start=0), records_path="items")
    assert records == [1, 2, 3]
    assert len(requests) == 3


async def test_page_number_stops_at_the_total_the_body_gives(api: respx.MockRouter) -> None:
    # Cerb search: {"results": [...], "total": N, "page": N, "limit": N}
    pages = {str(n): {"results": [2 * n - 1, 2 * n], "total": 4, "page": n, "limit": 2} for n in (1, 2, 3)}
    route = api.get("/tickets").mock(side_effect=by_param("page", pages))
    records, _ = await collect(PageNumber(size_param="limit", size=2, total_path="total"), records_path="results")
    assert records == [1, 2, 3, 4]
    assert route.call_count == 2  # page 3 was never asked for


async def test_page_number_stops_at_the_page_count(api: respx.MockRouter) -> None:
    pages = {str(n): {"data": {"rows": [n]}, "meta": {"pages": 2}} for n in (1, 2, 3)}
    route = api.get("/tickets").mock(side_effect=by_param("page", pages))
    records, _ = await collect(PageNumber(pages_path="meta.pages"), records_path="data.rows")
    assert records == [1, 2] and route.call_count == 2


async def test_page_number_with_typed_xml_pages(api: respx.MockRouter) -> None:
    # Harvest: 50 a page, fixed by the API; here 2 for brevity.
    def answer(request: httpx.Request) -> httpx.Response:
        ids = {"1": [1, 2], "2": [3]}[request.url.params["page"]]
        items = "".join(f'<invoice><id type="integer">{i}</id></invoice>' for i in ids)
        return httpx.Response(200, content=f'<invoices type="array">{items}</invoices>'.encode())

    api.get("/tickets").mock(side_effect=answer)
    records, _ = await collect(PageNumber(size=2), decode=lambda r: typed_xml_to_python(parse_xml(r)))
    assert records == [{"id": 1}, {"id": 2}, {"id": 3}]


async def test_offset_limit_moves_by_the_records_received(api: respx.MockRouter) -> None:
    data = list(range(7))

    def answer(request: httpx.Request) -> httpx.Response:
        offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
        return httpx.Response(200, json={"items": data[offset : offset + limit], "total": len(data)})

    api.get("/tickets").mock(side_effect=answer)
    records, requests = await collect(OffsetLimit(limit=3), records_path="items")
    assert records == data
    assert [query(r)["offset"] for r in requests] == ["0", "3", "6"]


async def test_offset_limit_stops_at_total(api: respx.MockRouter) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        skip = int(request.url.params["skip"])  # distinct rows per page: a repeated page is now a PagingError
        return httpx.Response(200, json={"rows": [skip, skip + 1, skip + 2], "count": 6})

    route = api.get("/tickets").mock(side_effect=answer)
    records, _ = await collect(
        OffsetLimit(offset_param="skip", limit_param="take", limit=3, total_path="count"), records_path="rows"
    )
    assert len(records) == 6 and route.call_count == 2


async def test_body_cursor_follows_tokens_until_there_is_none(api: respx.MockRouter) -> None:
    pages = {
        "": {"data": [1, 2], "meta": {"next_cursor": "c2"}},
        "c2": {"data": [3], "meta": {"next_cursor": "c3"}},
        "c3": {"data": [4], "meta": {"next_cursor": None}},
    }
    api.get("/tickets").mock(side_effect=by_param("cursor", pages))
    records, requests = await collect(BodyCursor("meta.next_cursor"), records_path="data", params={"limit": 2})
    assert records == [1, 2, 3, 4]
    assert [query(r) for r in requests] == [
        {"limit": "2"},
        {"limit": "2", "cursor": "c2"},
        {"limit": "2", "cursor": "c3"},
    ]


async def test_body_cursor_stops_when_has_more_is_false(api: respx.MockRouter) -> None:
    route = api.get("/tickets").mock(
        return_value=httpx.Response(200, json={"items": [1], "next": "same", "has_more": False})
    )
    records, _ = await collect(
        BodyCursor("next", param="starting_after", has_more_path="has_more"), records_path="items"
    )
    assert records == [1] and route.call_count == 1


async def test_a_cursor_that_repeats_is_an_error_not_an_endless_loop(api: respx.MockRouter) -> None:
    # A PagingError (fatal), no longer a MalformedResponseError: retrying cannot make paging progress.
    api.get("/tickets").mock(return_value=httpx.Response(200, json={"items": [1], "next": "again"}))
    with pytest.raises(PagingError, match="repeats the page before it"):
        await collect(BodyCursor("next"), records_path="items")


async def test_a_cursor_sent_twice_is_a_paging_error(api: respx.MockRouter) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor", "")
        return httpx.Response(200, json={"items": [cursor or "first"], "next": "again"})

    # The pages differ, so only the cursor asked for twice gives the loop away.
    route = api.get("/tickets").mock(side_effect=answer)
    with pytest.raises(PagingError, match="pagination loops"):
        await collect(BodyCursor("next"), records_path="items")
    assert route.call_count == 2


async def test_a_server_ignoring_the_page_parameter_stops_at_the_second_page(api: respx.MockRouter) -> None:
    """An API that always answers the whole list (no paging at all) never sends a short page:
    before, page 1, 2, 3 ... were asked for until the process was killed."""
    route = api.get("/tickets").mock(return_value=httpx.Response(200, json=[{"id": n} for n in range(1, 8)]))
    with pytest.raises(PagingError, match=r"page 2 repeats the page before it \(GET .*page=2"):
        await collect(PageNumber(size_param="per_page", size=5))
    assert route.call_count == 2


async def test_paging_past_the_page_cap_stops(api: respx.MockRouter) -> None:
    api.get("/tickets").mock(side_effect=lambda request: httpx.Response(200, json=[{"id": request.url.params["page"]}]))
    token = MAX_PAGES.set(3)
    try:
        with pytest.raises(PagingError, match="more than 3 pages"):
            await collect(PageNumber())
    finally:
        MAX_PAGES.reset(token)


async def test_body_next_url_relative_and_absolute(api: respx.MockRouter) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        page = request.url.params.get("page", "1")
        body = {
            "1": {"tickets": [1], "links": {"next": "/api/tickets?page=2&sig=abc"}},
            "2": {"tickets": [2], "links": {"next": f"{BASE}/tickets?page=3"}},
            "3": {"tickets": [3], "links": {"next": None}},
        }[page]
        return httpx.Response(200, json=body)

    api.get("/tickets").mock(side_effect=answer)
    records, requests = await collect(BodyNextUrl("links.next"), records_path="tickets")
    assert records == [1, 2, 3]
    assert [str(r.url) for r in requests] == [
        f"{BASE}/tickets",
        f"{BASE}/tickets?page=2&sig=abc",
        f"{BASE}/tickets?page=3",
    ]


async def test_link_header(api: respx.MockRouter) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        links = [f'<{BASE}/tickets?page=3>; rel="last"']
        if page < 3:
            links.insert(0, f'<{BASE}/tickets?page={page + 1}>; rel="next"')
        return httpx.Response(200, json=[page], headers={"Link": ", ".join(links)})

    api.get("/tickets").mock(side_effect=answer)
    records, _ = await collect(LinkHeader())
    assert records == [1, 2, 3]


@pytest.mark.parametrize(
    ("header", "links"),
    [
        ('<https://a.example/x?page=2>; rel="next"', [{"url": "https://a.example/x?page=2", "rel": "next"}]),
        (
            '</x?p=2>; rel=next, </x?p=9>; rel="last"; title="Last, page"',
            [{"url": "/x?p=2", "rel": "next"}, {"url": "/x?p=9", "rel": "last", "title": "Last, page"}],
        ),
        ('<https://a.example/2>; REL="next prev"', [{"url": "https://a.example/2", "rel": "next prev"}]),
        ("garbage", []),
    ],
)
def test_parse_link_header(header: str, links: list[dict[str, str]]) -> None:
    assert parse_link_header(header) == links


def test_link_header_matches_one_of_several_rels() -> None:
    response = httpx.Response(
        200, headers={"Link": '</api/t?page=2>; rel="next last"'}, request=httpx.Request("GET", f"{BASE}/t")
    )
    assert LinkHeader().next_request(response, None, {}, [1]).url == "https://api.example.com/api/t?page=2"


def test_extract() -> None:
    body = {"data": {"items": [{"id": 1}, {"id": 2}]}, "total": 2}
    assert extract(body, "") is body and extract(body, ".") is body
    assert extract(body, "data.items.1.id") == 2
    assert extract(body, "data.missing") is None
    assert extract(body, "data.items.5", default="x") == "x"
    assert extract_records(body, "data.items") == [{"id": 1}, {"id": 2}]
    assert extract_records({"results": None}, "results") == []
    with pytest.raises(MalformedResponseError, match="expected a list of records at 'data', found dict"):
        extract_records(body, "data")
    with pytest.raises(MalformedResponseError, match="found nothing"):
        extract_records(body, "nope")
