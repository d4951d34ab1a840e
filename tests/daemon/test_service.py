"""The daemon in-process, with runs held open at will: what a reload does to runs in
progress, how webhook triggers coalesce, and what /healthz says when the database does
not answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from ferryman.cli import main
from ferryman.config import load_config
from ferryman.daemon._notify import Notifier
from ferryman.daemon._service import Daemon
from ferryman.engine import Engine, RunResult
from ferryman.state import StateStore
from tests.daemon.support import csv_system, short_dir, write_config, write_tickets


class Runs:
    """Stands in for Engine.run and Engine.aclose: each run waits until released."""

    def __init__(self) -> None:
        self.started: list[tuple[int, str, str]] = []  # (engine id, pipeline, trigger)
        self.closed: list[int] = []
        self.release = asyncio.Event()

    async def run(self, engine: Engine, name: str, *, trigger: str = "manual", **_: Any) -> RunResult:
        self.started.append((id(engine), name, trigger))
        await self.release.wait()
        return RunResult(name, "ok", counts={"read": 7})

    async def aclose(self, engine: Engine) -> None:
        self.closed.append(id(engine))


@pytest.fixture
async def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Daemon, Runs]]:
    runs = Runs()
    monkeypatch.setattr(Engine, "run", lambda self, name, **kw: runs.run(self, name, **kw))
    monkeypatch.setattr(Engine, "aclose", lambda self: runs.aclose(self))
    write_tickets(tmp_path / "in" / "tickets.csv", 1)
    sockets = short_dir()
    config = write_config(
        tmp_path / "ferryman.yaml",
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        systems={"inbox": csv_system(tmp_path / "in"), "out": csv_system(tmp_path / "out")},
        pipelines={"p": {"from": "inbox.tickets", "to": "out.tickets"}},
        listen=f"unix:{sockets / 'control.sock'}",
    )
    daemon = Daemon(load_config(config), notifier=Notifier({}))
    serving = asyncio.create_task(daemon.serve())
    for _ in range(200):
        if hasattr(daemon, "scheduler"):
            break
        await asyncio.sleep(0.01)
    try:
        yield daemon, runs
    finally:
        runs.release.set()
        daemon.request_stop("test")
        assert await asyncio.wait_for(serving, 10) == 0
        sockets.rmdir()


async def test_a_reload_lets_runs_in_progress_finish_then_closes_the_old_engine(
    daemon: tuple[Daemon, Runs],
) -> None:
    d, runs = daemon
    old = id(d._gen.engine)
    task, started = d.start_run("p", "api")
    assert started
    await asyncio.sleep(0.05)
    assert await d.reload()
    new = id(d._gen.engine)
    assert new != old
    # the run in progress keeps its engine; the pipeline still runs once at a time
    assert d.start_run("p", "api") == (task, False)
    assert runs.closed == []
    runs.release.set()
    result = await task
    assert result.outcome == "ok"
    await asyncio.sleep(0.05)
    assert runs.closed == [old], "the old engine is closed once its run ended, the new one is kept"
    task, started = d.start_run("p", "api")
    assert started
    await task
    assert runs.started[-1][0] == new, "new runs use the new engine"


async def test_webhook_triggers_during_a_run_coalesce_into_one_more_run(daemon: tuple[Daemon, Runs]) -> None:
    d, runs = daemon
    await d.trigger_soon("p")
    await asyncio.sleep(0.05)
    assert [t for _, _, t in runs.started] == ["webhook"]
    for _ in range(5):  # the source changed five times while the run was reading it
        await d.trigger_soon("p")
    runs.release.set()
    for _ in range(100):
        await asyncio.sleep(0.02)
        if len(runs.started) == 2 and not d._running:
            break
    await asyncio.sleep(0.1)
    assert [t for _, _, t in runs.started] == ["webhook", "webhook"], "one more run, not five"


async def test_health_says_503_when_the_database_does_not_answer(daemon: tuple[Daemon, Runs], tmp_path: Path) -> None:
    d, _ = daemon
    ok, body = await d.health()
    assert ok and body["status"] == "ok"
    working = d.store
    d.store = StateStore(f"sqlite:///{tmp_path}")  # a directory is no database
    try:
        ok, body = await d.health()
    finally:
        d.store.close()
        d.store = working
    assert not ok and body["status"] == "unhealthy" and "unable to open database file" in body["db"]
    d.request_stop("test")
    ok, body = await d.health()
    assert not ok and body == {"status": "stopping"}


async def test_trigger_wait_gives_up_after_its_timeout_and_the_run_goes_on(
    daemon: tuple[Daemon, Runs], capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        d, runs = daemon
        config = str(d.config.file)
        code = await asyncio.to_thread(main, ["--config", config, "trigger", "p", "--wait", "--timeout", "0.5"])
        assert code == 1
        assert "p is still running after 0.5s" in capsys.readouterr().err
        assert "p" in d._running, "the run is not cancelled by a client giving up"
        runs.release.set()
        await d._running["p"]
        # over the Unix socket, no token is needed
        code = await asyncio.to_thread(main, ["--config", config, "trigger", "p", "--wait"])
        assert code == 0
        assert capsys.readouterr().out.startswith("p: ok (read 7, ")
    finally:
        structlog.reset_defaults()  # main() pointed logging at capsys' stream, which closes first
