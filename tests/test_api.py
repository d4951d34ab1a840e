"""keyset_pages and natural key order: pure, no network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ferryman.api import NativePage, keyset_pages
from ferryman.connector import Cursor, Reject, natural_key
from ferryman.records import Ticket

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_natural_key_orders_numbers_numerically_and_empty_first() -> None:
    assert sorted(["10", "9", "", "abc", "100"], key=natural_key) == ["", "9", "10", "100", "abc"]
    assert Cursor(T0, "") < Cursor(T0, "1") < Cursor(T0, "2") < Cursor(T0, "10")


class App:
    """An app listing tickets updated at or after a time, sorted, paged by number."""

    def __init__(self, rows: list[Ticket], size: int, bad: set[str] | None = None) -> None:
        self.rows, self.size, self.bad, self.calls = rows, size, bad or set(), 0

    async def fetch(self, since: datetime | None, page: int) -> NativePage:
        self.calls += 1
        rows = sorted(
            (r for r in self.rows if since is None or r.updated_at >= since), key=lambda r: (r.updated_at, int(r.key))
        )
        chunk = rows[(page - 1) * self.size : page * self.size]
        good = [r for r in chunk if r.key not in self.bad]
        rejects = [Reject(f"ticket {r.key}", "bad", key=r.key) for r in chunk if r.key in self.bad]
        return good, rejects, page * self.size < len(rows)


async def collect(app: App, since: Cursor | None) -> tuple[list[str], list[str]]:
    keys: list[str] = []
    rejected: list[str] = []
    async for page in keyset_pages(app.fetch, since):
        keys += [r.key for r in page.records]
        rejected += [x.key or "" for x in page.rejects]
    return keys, rejected


async def test_reads_everything_once_even_with_big_timestamp_groups() -> None:
    rows = [Ticket(key=str(i), updated_at=T0 + timedelta(seconds=i // 7)) for i in range(100)]
    keys, _ = await collect(App(rows, size=5), None)
    assert keys == [str(i) for i in range(100)]


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
