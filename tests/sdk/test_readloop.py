"""The one read loop: keyset paging that neither loses nor repeats, and its guards. Pure, no network."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from ferryman.connector import Reject
from ferryman.cursor import Cursor, natural_key
from ferryman.errors import OrderViolation, PagingError
from ferryman.records import Ticket
from ferryman.sdk.readloop import MAX_PAGES, Fetched, PageGuard, keyset_read, whole_list_pages

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_natural_key_orders_numbers_numerically_and_empty_first() -> None:
    assert sorted(["10", "9", "", "abc", "100"], key=natural_key) == ["", "9", "10", "100", "abc"]
    assert Cursor(T0, "") < Cursor(T0, "1") < Cursor(T0, "2") < Cursor(T0, "10")


class App:
    """An app listing tickets updated at or after a time, paged by number.

    ``order`` is what the app sorts by: ``"time+id"``, ``"time"`` (ties in a fixed random
    order, as Cerb's ``sort:updated``), or ``"none"`` (ignores the sort). ``ignore_paging``
    answers every page with the whole list."""

    def __init__(
        self,
        rows: list[Ticket],
        size: int,
        bad: set[str] | None = None,
        *,
        order: str = "time+id",
        ignore_paging: bool = False,
    ) -> None:
        self.rows, self.size, self.bad, self.calls = rows, size, bad or set(), 0
        self.order, self.ignore_paging = order, ignore_paging
        rng = random.Random(4)
        self.tiebreak = {r.key: rng.random() for r in rows}

    async def fetch(self, since: datetime | None, page: int) -> Fetched:
        self.calls += 1
        rows = [r for r in self.rows if since is None or r.updated_at >= since]
        if self.order == "time+id":
            rows.sort(key=lambda r: (r.updated_at, int(r.key)))
        elif self.order == "time":
            rows.sort(key=lambda r: (r.updated_at, self.tiebreak[r.key]))
        chunk = rows if self.ignore_paging else rows[(page - 1) * self.size : page * self.size]
        good = [r for r in chunk if r.key not in self.bad]
        rejects = [Reject(f"ticket {r.key}", "bad", key=r.key) for r in chunk if r.key in self.bad]
        return Fetched(good, rejects, page * self.size < len(rows), where=f"GET /tickets?page={page}")


async def collect(app: App, since: Cursor | None) -> tuple[list[str], list[str]]:
    keys: list[str] = []
    rejected: list[str] = []
    async for page in keyset_read(app.fetch, since, stream="tickets"):
        keys += [r.key for r in page.records]
        rejected += [x.key or "" for x in page.rejects]
    return keys, rejected


async def test_reads_everything_once_even_with_big_timestamp_groups() -> None:
    rows = [Ticket(key=str(i), updated_at=T0 + timedelta(seconds=i // 7)) for i in range(100)]
    keys, _ = await collect(App(rows, size=5), None)
    assert keys == [str(i) for i in range(100)]


async def test_ties_in_any_order_within_a_second_lose_nothing() -> None:
    """Cerb sorts by updated only: the ids within one second come in no particular order."""
    rows = [Ticket(key=str(i), updated_at=T0 + timedelta(seconds=i // 9)) for i in range(120)]
    keys, _ = await collect(App(rows, size=4, order="time"), None)
    assert sorted(keys, key=int) == [str(i) for i in range(120)] and len(keys) == 120


async def test_a_page_of_rejects_only_does_not_end_the_read() -> None:
    rows = [Ticket(key=str(i), updated_at=T0 + timedelta(seconds=i)) for i in range(20)]
    keys, rejected = await collect(App(rows, size=5, bad={"5", "6", "7", "8", "9"}), None)
    assert keys == [str(i) for i in range(20) if not 5 <= i <= 9]
    assert rejected == ["5", "6", "7", "8", "9"]


async def test_since_is_inclusive_of_the_cursor_and_the_overlap_boundary() -> None:
    rows = [Ticket(key=str(i), updated_at=T0 + timedelta(seconds=i // 2)) for i in range(10)]
    keys, _ = await collect(App(rows, size=3), Cursor(T0 + timedelta(seconds=2), ""))
    assert keys == ["4", "5", "6", "7", "8", "9"]
    keys, _ = await collect(App(rows, size=3), Cursor(T0 + timedelta(seconds=2), "5"))
    assert keys == ["5", "6", "7", "8", "9"]


async def test_an_app_that_ignores_the_sort_stops_the_read_naming_two_keys() -> None:
    rows = [Ticket(key=str(i), updated_at=T0 + timedelta(seconds=(i * 37) % 101)) for i in range(60)]
    with pytest.raises(OrderViolation) as failure:
        await collect(App(rows, size=10, order="none"), None)
    error = failure.value
    assert error.before and error.after and "GET /tickets?page=" in str(error)
    assert f"{error.before!r}" in str(error) and f"{error.after!r}" in str(error)


async def test_an_app_that_ignores_paging_stops_instead_of_looping() -> None:
    rows = [Ticket(key=str(i), updated_at=T0) for i in range(30)]  # one timestamp: page numbers advance
    app = App(rows, size=10, ignore_paging=True)
    with pytest.raises(PagingError, match="repeats the page before it"):
        await collect(app, None)
    assert app.calls == 2


async def test_the_page_cap_stops_a_read_that_would_go_past_it() -> None:
    rows = [Ticket(key=str(i), updated_at=T0) for i in range(100)]
    token = MAX_PAGES.set(3)
    try:
        with pytest.raises(PagingError, match="more than 3 pages"):
            await collect(App(rows, size=10), None)
    finally:
        MAX_PAGES.reset(token)


def test_page_guard_restart_allows_a_second_query_to_begin_with_the_same_page() -> None:
    guard = PageGuard(cap=10)
    guard.fetched(("a", "b"))
    guard.restart()
    guard.fetched(("a", "b"))
    with pytest.raises(PagingError):
        guard.fetched(("a", "b"))
    assert guard.pages == 3


def test_whole_list_pages_filter_order_and_chunk() -> None:
    rows = [Ticket(key=str(i), updated_at=T0 + timedelta(seconds=10 - i)) for i in range(10)]
    pages = whole_list_pages(rows, [Reject("ticket x", "bad")], Cursor(T0 + timedelta(seconds=5), ""), 2)
    assert [x.ref for x in pages[0].rejects] == ["ticket x"] and not pages[0].records
    assert [[r.key for r in p.records] for p in pages[1:]] == [["5", "4"], ["3", "2"], ["1", "0"]]
