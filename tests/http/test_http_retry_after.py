"""Retry-After and RateLimit header parsing: each value gives the wait the RFCs and the draft say."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from ferryman.http.retry_after import RateLimitHint, parse_http_date, parse_ratelimit_headers, parse_retry_after

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)  # a Wednesday
EPOCH = int(NOW.timestamp())


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),  # delay-seconds
        ("0", 0.0),  # retry now
        ("  30 ", 30.0),  # surrounding whitespace is not part of the value
        ("Wed, 01 May 2024 12:02:00 GMT", 120.0),  # IMF-fixdate, two minutes ahead
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),  # a date in the past means now
        ("Wednesday, 01-May-24 12:01:30 GMT", 90.0),  # RFC 850
        ("Sunday, 06-Nov-94 08:49:37 GMT", 0.0),  # RFC 850 '94 is 1994 (2094 is > 50 years ahead)
        ("Wed May  1 12:00:45 2024", 45.0),  # asctime, space-padded day
        ("Wed May 1 12:00:45 2024", 45.0),  # asctime, unpadded day (lenient)
        ("abc", None),  # garbage: ignored, normal backoff applies
        ("-5", None),
        ("", None),
        ("12abc", None),
        ("Wed, 32 May 2024 12:00:00 GMT", None),  # not a real day
        ("Wed, 01 Foo 2024 12:00:00 GMT", None),  # not a month
    ],
)
def test_retry_after_table(value: str, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_rfc850_two_digit_year_within_fifty_years_is_this_century() -> None:
    assert parse_http_date("Friday, 01-May-26 12:00:00 GMT", NOW) == datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert parse_http_date("Monday, 01-May-90 12:00:00 GMT", NOW) == datetime(1990, 5, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected", "pause"),
    [
        # draft 05/06 dictionary form
        ({"RateLimit": "limit=100, remaining=0, reset=10"}, RateLimitHint(100, 0, 10.0, source="RateLimit"), 10.0),
        (
            {"RateLimit": "limit=100, remaining=0, reset=10", "RateLimit-Policy": "100;w=60"},
            RateLimitHint(100, 0, 10.0, 60.0, source="RateLimit"),
            10.0,
        ),
        # draft 07+ item form with a named policy
        (
            {"RateLimit": '"default";r=0;t=10', "RateLimit-Policy": '"default";q=100;w=60'},
            RateLimitHint(100, 0, 10.0, 60.0, "default", "RateLimit"),
            10.0,
        ),
        (
            {"RateLimit": '"default";r=50;t=30', "RateLimit-Policy": '"default";q=100;w=60'},
            RateLimitHint(100, 50, 30.0, 60.0, "default", "RateLimit"),
            0.0,
        ),
        # early drafts: separate headers, reset is delta-seconds
        (
            {"RateLimit-Limit": "100, 100;w=60", "RateLimit-Remaining": "0", "RateLimit-Reset": "7"},
            RateLimitHint(100, 0, 7.0, source="RateLimit-*"),
            7.0,
        ),
        # X-RateLimit-*, reset as delta-seconds
        (
            {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "15"},
            RateLimitHint(60, 0, 15.0, source="X-RateLimit-*"),
            15.0,
        ),
        # ... as a Unix timestamp (GitHub style), in seconds and in milliseconds
        (
            {"x-ratelimit-limit": "60", "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(EPOCH + 42)},
            RateLimitHint(60, 0, 42.0, source="X-RateLimit-*"),
            42.0,
        ),
        (
            {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str((EPOCH + 42) * 1000)},
            RateLimitHint(None, 0, 42.0, source="X-RateLimit-*"),
            42.0,
        ),
        # a reset timestamp already past: no wait
        (
            {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(EPOCH - 5)},
            RateLimitHint(None, 0, 0.0, source="X-RateLimit-*"),
            0.0,
        ),
        # nearly spent (<= 5% of the limit): spread the rest over the time to reset
        (
            {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "2", "X-RateLimit-Reset": "30"},
            RateLimitHint(100, 2, 30.0, source="X-RateLimit-*"),
            10.0,
        ),
        (
            {"X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "10"},
            RateLimitHint(None, 1, 10.0, source="X-RateLimit-*"),
            5.0,
        ),
        (
            {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "50", "X-RateLimit-Reset": "30"},
            RateLimitHint(100, 50, 30.0, source="X-RateLimit-*"),
            0.0,
        ),
        # two policies: the one that needs the longest pause wins
        (
            {"RateLimit": '"burst";r=5;t=1, "daily";r=0;t=3600'},
            RateLimitHint(None, 0, 3600.0, None, "daily", "RateLimit"),
            3600.0,
        ),
    ],
)
def test_ratelimit_headers_table(headers: dict[str, str], expected: RateLimitHint, pause: float) -> None:
    hint = parse_ratelimit_headers(httpx.Headers(headers), NOW)
    assert hint == expected
    assert hint is not None and hint.pause() == pause


def test_no_ratelimit_headers_is_no_hint() -> None:
    assert parse_ratelimit_headers({"Content-Type": "application/json"}, NOW) is None
