"""Some daemon tests call ``ferryman.cli.main`` in-process, which configures logging for
the process (root handler on the captured stream, httpx and friends at WARNING): put the
standard library's logging back afterwards so later tests see it as they expect."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

_QUIETED = ("httpx", "httpcore", "apscheduler", "aiohttp.access", "alembic")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in _QUIETED}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)
