"""Tables: the in-memory store every simulator keeps its rows in."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ferryman.sandbox import DuplicateValue, Row, Table

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def stamp(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def loaded(*seconds: float, **options: Any) -> Table:
    table = Table("things", **options)
    table.load({"name": f"row{i}", "updated_at": stamp(s)} for i, s in enumerate(seconds, start=1))
    return table


def row_of(table: Table, id: int, *, include_deleted: bool = False) -> Row:
    row = table.get(id, include_deleted=include_deleted)
    assert row is not None
    return row


def ids(rows: list[Row]) -> list[int]:
    return [row["id"] for row in rows]


def test_query_orders_by_updated_at_then_id():
    table = loaded(30, 10, 20, 10, 10)
    assert ids(table.query()) == [2, 4, 5, 3, 1]


def test_since_is_inclusive_and_sees_every_row_sharing_the_timestamp():
    table = loaded(30, 10, 20, 10, 10)
    assert ids(table.query(stamp(10))) == [2, 4, 5, 3, 1]
    assert ids(table.query(stamp(20))) == [3, 1]
    assert ids(table.query(stamp(31))) == []
    assert table.count(stamp(20)) == 2


def test_compound_cursor_neither_loses_nor_repeats_rows_sharing_a_second():
    # Seven rows share one second; pages of three split them twice.
    table = loaded(5, *[10] * 7, 15)
    seen: list[int] = []
    after = None
    while True:
        page = table.query(stamp(0), after=after, limit=3)
        if not page:
            break
        seen += ids(page)
        after = table.position(page[-1])
    assert seen == ids(table.query()) and len(seen) == len(set(seen)) == 9


def test_offset_and_limit_slice_the_ordered_rows():
    table = loaded(*range(100))
    assert ids(table.query(offset=10, limit=5)) == [11, 12, 13, 14, 15]
    assert ids(table.query(stamp(95), offset=3, limit=10)) == [99, 100]
    assert table.query(offset=200, limit=5) == []


def test_writes_are_newer_than_everything_even_when_the_clock_lags():
    clock = Clock(stamp(50))
    table = loaded(100, 200, clock=clock)
    row = table.insert({"name": "new"})
    assert row["updated_at"] > stamp(200) and row["created_at"] == row["updated_at"]
    clock.now = stamp(1000)
    table.update(1, {"name": "changed"})
    assert ids(table.query()) == [2, 3, 1]
    assert row_of(table, 1)["updated_at"] == stamp(1000)
    second = table.update(2, {"name": "again"})
    assert second["updated_at"] > stamp(1000)
    assert table.max_updated_at == second["updated_at"]


def test_real_clock_writes_are_aware_utc_and_strictly_increasing():
    table = Table("things")
    rows = [table.insert({"n": i}) for i in range(50)]
    stamps = [r["updated_at"] for r in rows]
    assert all(s.tzinfo is UTC for s in stamps)
    assert stamps == sorted(set(stamps))


def test_whole_second_resolution_orders_a_second_by_id_and_compares_at_seconds():
    clock = Clock(stamp(10.9))
    table = Table("things", resolution=timedelta(seconds=1), clock=clock)
    first = table.insert({"n": 1})
    clock.now = stamp(10.2)  # later write, earlier clock: still newer, same second
    second = table.insert({"n": 2})
    assert second["updated_at"] > first["updated_at"]
    assert ids(table.query(stamp(10.95))) == [1, 2]  # since compares at whole seconds
    assert table.position(first) == (stamp(10), 1)


def test_replace_keeps_id_and_created_at_and_drops_other_fields():
    table = loaded(1)
    created = row_of(table, 1)["created_at"]
    row = table.replace(1, {"other": True})
    assert row["id"] == 1 and row["created_at"] == created and "name" not in row and row["other"]


def test_soft_delete_hides_the_row_but_an_incremental_read_can_see_it():
    table = loaded(1, 2, 3)
    table.delete(2, soft=True)
    assert table.get(2) is None and 2 not in table and len(table) == 2
    assert ids(table.query()) == [1, 3]
    deleted = table.query(include_deleted=True)
    assert ids(deleted) == [1, 3, 2] and deleted[-1]["deleted"] is True
    assert row_of(table, 2, include_deleted=True)["deleted"]


def test_hard_delete_removes_the_row():
    table = loaded(1, 2)
    gone = table.delete(1)
    assert gone is not None and gone["id"] == 1
    assert table.delete(1) is None
    assert ids(table.query(include_deleted=True)) == [2]
    with pytest.raises(KeyError):
        table.update(1, {"name": "x"})


def test_unique_fields_are_looked_up_and_guarded():
    table = Table("contacts", unique=("email",))
    table.load([{"email": "a@x.example", "updated_at": stamp(1)}])
    b = table.insert({"email": "b@x.example"})
    assert table.lookup("email", "b@x.example") is b
    with pytest.raises(DuplicateValue) as caught:
        table.update(b["id"], {"email": "a@x.example"})
    assert caught.value.field == "email" and caught.value.holder == 1
    table.update(b["id"], {"email": "c@x.example"})
    assert table.lookup("email", "b@x.example") is None
    table.delete(1, soft=True)
    assert table.insert({"email": "a@x.example"})["id"] == 3  # a deleted row frees its email


def test_the_table_owns_id_and_timestamps():
    table = Table("things")
    with pytest.raises(ValueError, match="owns"):
        table.insert({"id": 5})
    row = table.insert({"n": 1})
    with pytest.raises(ValueError, match="owns"):
        table.update(row["id"], {"updated_at": T0})


def test_load_refuses_taken_ids():
    table = loaded(1)
    with pytest.raises(ValueError, match="not a new integer id"):
        table.load([{"id": 1, "updated_at": stamp(2)}])


def test_queries_stay_fast_with_many_rows():
    n = 200_000
    table = Table("big")
    table.load({"updated_at": stamp(i // 3)} for i in range(n))
    started = time.perf_counter()
    for i in range(200):
        since = stamp((i * 997) % (n // 3))
        table.query(since, offset=50, limit=100)
        table.count(since)
    for i in range(200):
        table.update(1 + (i * 7919) % n, {"touched": True})
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, elapsed
    assert table.count(stamp(n)) == 200  # the touched rows are now the newest
