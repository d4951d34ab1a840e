from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.support import short_dir


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A short directory for the instances' control sockets (a Unix socket path is short)."""
    path = short_dir()
    yield path
    for leftover in path.iterdir():
        leftover.unlink()
    path.rmdir()
