"""Fixtures for the HTTP layer: a fake clock, a fresh registry, options, and a mocked API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import respx

from ferryman.http import HttpOptions, HttpRegistry

from .support import BASE, FakeClock


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
    """The API at ``BASE``, mocked; routes are relative to it."""
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router
