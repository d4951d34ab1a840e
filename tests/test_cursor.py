"""The cursor policy (ferryman.cursor): pure rules, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ferryman.cursor import (
    MICROSECOND,
    SECOND,
    Boundary,
    Cursor,
    OrderGuard,
    due,
    effective_overlap,
    filter_floor,
    is_due,
    is_older,
    parse_precision,
    read_from,
)
from ferryman.errors import OrderViolation
from ferryman.records import Ticket

T = datetime(2026, 3, 1, 8, 0, 5, 250_000, tzinfo=UTC)


def ticket(key: str, at: datetime) -> Ticket:
    return Ticket(key=key, updated_at=at)


def test_an_overlap_shorter_than_the_precision_is_raised_to_it() -> None:
    assert effective_overlap(timedelta(0), SECOND) == SECOND
    assert effective_overlap(timedelta(minutes=2), SECOND) == timedelta(minutes=2)
    assert effective_overlap(timedelta(0), MICROSECOND) == timedelta(0)


def test_read_from_starts_an_overlap_earlier_with_every_key_or_at_the_cursor_itself() -> None:
    cursor = Cursor(T, "50")
    assert read_from(None, timedelta(minutes=2)) is None
    assert read_from(cursor, timedelta(minutes=2), SECOND) == Cursor(T - timedelta(minutes=2), "")
    assert read_from(cursor, timedelta(0), SECOND) == Cursor(T - SECOND, "")  # whole seconds: re-read one
    assert read_from(cursor, timedelta(0), MICROSECOND) == cursor  # an exact source: the cursor, inclusive


def test_due_is_inclusive_and_compares_keys_as_apps_do() -> None:
    since = Cursor(T, "9")
    assert is_due(ticket("9", T), since) and is_due(ticket("10", T), since)  # "10" > "9" as numbers
    assert not is_due(ticket("8", T), since)
    assert is_due(ticket("1", T + MICROSECOND), since) and not is_due(ticket("99", T - MICROSECOND), since)
    assert [r.key for r in due([ticket("8", T), ticket("9", T)], since)] == ["9"]
    assert due([ticket("1", T)], None)[0].key == "1"
    assert is_older(T - SECOND, since) and not is_older(T, since) and not is_older(None, since)


def test_filter_floor_floors_to_the_filters_granularity() -> None:
    since = Cursor(T, "x")
    assert filter_floor(since, SECOND) == T.replace(microsecond=0)
    assert filter_floor(since, timedelta(minutes=1)) == T.replace(second=0, microsecond=0)
    assert filter_floor(since, timedelta(minutes=1), margin=timedelta(seconds=6)) == datetime(
        2026, 3, 1, 7, 59, tzinfo=UTC
    )
    assert filter_floor(None) is None


def test_order_guard_allows_ties_in_any_order_and_refuses_going_back_in_time() -> None:
    guard = OrderGuard(stream="tickets")
    guard.check([ticket("5", T), ticket("2", T), ticket("7", T + SECOND)])
    with pytest.raises(OrderViolation) as failure:
        guard.check([ticket("3", T)], "page 2")
    assert (failure.value.before, failure.value.after) == ("7", "3") and "page 2" in str(failure.value)
    guard.reset()
    guard.check([ticket("3", T)])


def test_boundary_drops_what_was_yielded_by_key_at_the_boundary_second() -> None:
    boundary = Boundary(Cursor(T, ""))
    assert [r.key for r in boundary.fresh([ticket("5", T), ticket("2", T)])] == ["5", "2"]
    # a restarted query from the boundary second answers them again, plus one more at it
    assert [r.key for r in boundary.fresh([ticket("2", T), ticket("5", T), ticket("3", T)])] == ["3"]
    assert [r.key for r in boundary.fresh([ticket("1", T - SECOND), ticket("9", T + SECOND)])] == ["9"]


@pytest.mark.parametrize(
    ("text", "step"),
    [
        ("seconds", SECOND),
        ("ms", timedelta(milliseconds=1)),
        ("microseconds", MICROSECOND),
        ("1m", timedelta(minutes=1)),
    ],
)
def test_precision_names(text: str, step: timedelta) -> None:
    assert parse_precision(text) == step


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown precision"):
        parse_precision("fortnights")
