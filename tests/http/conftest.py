"""Fixtures for the HTTP layer: a fake clock, a fresh registry, options, and a mocked API."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import respx

from ferryman.http import Clock, HttpOptions, HttpRegistry
from ferryman.redact import clear_secrets

BASE = "https://api.example.com/api"
START = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class FakeClock(Clock):
    """Time that only moves when someone sleeps; every sleep is recorded."""

    def __init__(self, start: datetime = START) -> None:
        self.current = start
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.sleeps.append(seconds)
            self.current += timedelta(seconds=seconds)
        await asyncio.sleep(0)

    def elapsed(self) -> float:
        return (self.current - START).total_seconds()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> HttpRegistry:
    return HttpRegistry()


@pytest.fixture
def options() -> HttpOptions:
    return HttpOptions(base_url=BASE, max_retries=3, backoff_base=0.5, backoff_cap=4)


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    yield
    clear_secrets()
