"""Shared fixtures: state databases (SQLite always, PostgreSQL when reachable), clean
global state between tests, and helpers to run the ``ferryman`` CLI as a process."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from ferryman import metrics, redact

PG_ADMIN_URL = os.environ.get("FERRYMAN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
_pg_reason: str | None = None


def _pg_available() -> str | None:
    """None when PostgreSQL is reachable, else the reason it is not."""
    global _pg_reason
    if _pg_reason is None:
        try:
            import psycopg

            with psycopg.connect(_libpq(PG_ADMIN_URL), connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _pg_reason = ""
        except Exception as exc:
            _pg_reason = (
                f"PostgreSQL not reachable at {PG_ADMIN_URL} ({type(exc).__name__}: {exc}); set FERRYMAN_TEST_PG"
            )
    return _pg_reason or None


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def make_pg_database() -> tuple[str, Any]:
    """A fresh, empty PostgreSQL database; returns (url, drop function)."""
    import psycopg

    name = f"ferryman_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(PG_ADMIN_URL), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]

    def drop() -> None:
        with psycopg.connect(_libpq(PG_ADMIN_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{base}/{name}", drop


BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKENDS)
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh state database on each backend (PostgreSQL skipped with the reason if unreachable)."""
    yield from _state(request.param, tmp_path)


@pytest.fixture
def default_state_url(tmp_path: Path) -> Iterator[str]:
    """One fresh state database: SQLite, or PostgreSQL when FERRYMAN_TEST_STATE=postgresql
    (so the whole suite can be run on PostgreSQL)."""
    yield from _state(os.environ.get("FERRYMAN_TEST_STATE", "sqlite"), tmp_path)


def _state(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    url, drop = make_pg_database()
    try:
        yield url
    finally:
        drop()


@pytest.fixture(autouse=True)
def _clean_globals() -> Iterator[None]:
    """Every test starts from the same process-wide state: no registered secrets, empty
    metrics, and the logging setup it found (``logs.configure`` changes stdlib logging for
    the whole process: root handlers and the httpx logger's level)."""
    redact.clear_secrets()
    metrics.reset()
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    named = {n: logging.getLogger(n).level for n in ("httpx", "httpcore", "apscheduler", "aiohttp.access", "alembic")}
    yield
    redact.clear_secrets()
    structlog.reset_defaults()
    root.setLevel(saved_root[0])
    root.handlers[:] = saved_root[1]
    for name, level in named.items():
        logging.getLogger(name).setLevel(level)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago, for a test that must name the port
    (a daemon's ``listen``, ``sandbox --port``). Where a process can choose its own port
    (port 0) and report it, prefer that: it cannot race."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ferryman_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("ferryman")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ferryman"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [*ferryman_cmd(), *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd, check=False
    )


@pytest.fixture
def memory_connector() -> Iterator[None]:
    """The in-memory ``memory`` connector of :mod:`tests.fakes`, registered and emptied for
    one test (``pytestmark = pytest.mark.usefixtures("memory_connector")``)."""
    from tests import fakes

    fakes.register()
    fakes.reset()
    yield
    fakes.reset()
