"""Scheduled audits (``audit: {every: ...}``) and their ``ferryman_audit_*`` gauges.

As a process: a real ``ferryman run`` over pipelines a one-off sync filled, audited through
``POST /v1/pipelines/NAME/audit?wait=true`` (the control API's way to audit now, so a test
need not wait out ``every``, whose least is 1m). A row deleted from a CSV target behind
Ferryman's back shows as ``ferryman_audit_missing 1``; a clean audit as 0; an audit whose
source app is down sets ``ferryman_audit_last_success`` to 0 and the daemon goes on.

In-process (the audit itself replaced by one held open at will): the audit holds the
pipeline's lease, so it never overlaps a run here or elsewhere; SIGTERM cancels it and
gives the lease back.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ferryman import metrics
from ferryman.audit import AuditReport, TargetAudit
from ferryman.config import load_config
from ferryman.daemon import _service
from ferryman.daemon._notify import Notifier
from ferryman.daemon._schedule import audit_jitter
from ferryman.daemon._service import Daemon as InProcess
from ferryman.engine import Engine, RunResult
from ferryman.holders import describe_holder
from ferryman.state import StateStore
from tests.conftest import free_port, run_cli
from tests.daemon.support import (
    SANDBOX_KEY,
    Daemon,
    csv_system,
    read_keys,
    rest_system,
    sandbox,
    short_dir,
    write_config,
    write_tickets,
)
from tests.daemon.test_metrics import scrape, value

ENV = {"SANDBOX_KEY": SANDBOX_KEY}
TICKETS = 30
REMOTE_RECORDS = 25


class Setup:
    def __init__(self, daemon: Daemon, out: Path, app: Any, started: float) -> None:
        self.daemon = daemon
        self.out = out  # the CSV target of pipeline `files`
        self.app = app  # the sandbox process behind pipeline `remote`
        self.started = started

    def audit(self, name: str) -> dict[str, Any]:
        with self.daemon.client() as client:
            response = client.post(f"/v1/pipelines/{name}/audit", params={"wait": "true"})
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        return doc


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """Pipelines `files` (CSV to CSV) and `remote` (the generic sandbox to another CSV folder), both
    synced once by ``ferryman sync`` and audited every minute by the daemon."""
    tmp = tmp_path_factory.mktemp("audit")
    write_tickets(tmp / "in" / "tickets.csv", TICKETS)
    with sandbox("--records", str(REMOTE_RECORDS), "--seed", "3") as (port, app):
        config = write_config(
            tmp / "ferryman.yaml",
            state_url=f"sqlite:///{tmp / 'state' / 'ferryman.db'}",
            systems={
                "inbox": csv_system(tmp / "in"),
                "out": csv_system(tmp / "out"),
                "copies": csv_system(tmp / "copies"),
                "app": rest_system(port, rate_limit="600/min"),
            },
            pipelines={
                "files": {"from": "inbox.tickets", "to": "out.tickets", "audit": {"every": "1m"}},
                "remote": {"from": "app.tickets", "to": "copies.tickets", "audit": {"every": "1m"}},
            },
            listen=f"127.0.0.1:{free_port()}",
        )
        for name in ("files", "remote"):
            result = run_cli("--config", str(config), "sync", name, env=ENV)
            assert result.returncode == 0, result.stderr
        assert len(read_keys(tmp / "out" / "tickets.csv")) == TICKETS
        started = time.time()
        daemon = Daemon(config, env=ENV)
        try:
            daemon.wait_ready()
            yield Setup(daemon, tmp / "out" / "tickets.csv", app, started)
            code, _ = daemon.stop()
            assert code == 0, daemon.log_text()
        finally:
            daemon.kill()


def test_each_audit_is_scheduled_one_interval_after_the_start(setup: Setup) -> None:
    for name in ("files", "remote"):
        event = setup.daemon.wait_event("audit.scheduled", pipeline=name)
        assert event["every"] == 60 and event["sample"] is None
        first = datetime.fromisoformat(event["first"]).timestamp()
        assert setup.started + 60 - 1 <= first <= time.time() + 60, "not at once, and one interval on"
    assert audit_jitter(timedelta(minutes=1)) == timedelta(seconds=6)
    assert audit_jitter(timedelta(days=1)) == timedelta(minutes=5), "small, whatever the interval"


def test_a_clean_audit_sets_every_gauge(setup: Setup) -> None:
    before = time.time()
    doc = setup.audit("files")
    assert doc["outcome"] == "clean", doc
    assert doc["report"]["read"] == TICKETS and doc["report"]["complete"]
    _, samples = scrape(setup.daemon)
    for kind in ("missing", "extra", "stale", "duplicated"):
        assert value(samples, f"ferryman_audit_{kind}", pipeline="files", target="out.tickets") == 0
    assert value(samples, "ferryman_audit_records", pipeline="files") == TICKETS
    assert value(samples, "ferryman_audit_last_success", pipeline="files") == 1
    assert before <= value(samples, "ferryman_audit_last_run_timestamp_seconds", pipeline="files") <= time.time()
    assert 0 < value(samples, "ferryman_audit_duration_seconds", pipeline="files") < 30


def test_a_row_deleted_behind_ferrymans_back_shows_as_missing(setup: Setup) -> None:
    with setup.out.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    lost = rows.pop(7)["key"]
    with setup.out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    doc = setup.audit("files")
    assert doc["outcome"] == "differences", doc
    (target,) = doc["report"]["targets"]
    assert target["missing"]["keys"] == [lost]
    _, samples = scrape(setup.daemon)
    assert value(samples, "ferryman_audit_missing", pipeline="files", target="out.tickets") == 1
    assert value(samples, "ferryman_audit_extra", pipeline="files", target="out.tickets") == 0
    assert value(samples, "ferryman_audit_last_success", pipeline="files") == 1, "differences are a completed audit"
    event = setup.daemon.wait_event("audit.completed", pipeline="files", clean=False)
    assert event["level"] == "warning" and event["findings"] == {"out.tickets": {"missing": 1}}
    assert len(read_keys(setup.out)) == TICKETS - 1, "a scheduled audit never repairs"


def test_an_audit_whose_source_is_down_fails_and_the_daemon_goes_on(setup: Setup) -> None:
    assert setup.audit("remote")["outcome"] == "clean"
    setup.app.terminate()
    setup.app.wait(timeout=10)
    doc = setup.audit("remote")
    assert doc["outcome"] == "failed" and doc["message"], doc
    assert SANDBOX_KEY not in doc["message"]
    _, samples = scrape(setup.daemon)
    assert value(samples, "ferryman_audit_last_success", pipeline="remote") == 0
    # the findings stay those of the last completed audit: a source that is down says nothing of the target
    assert value(samples, "ferryman_audit_missing", pipeline="remote", target="copies.tickets") == 0
    assert value(samples, "ferryman_audit_records", pipeline="remote") == REMOTE_RECORDS
    warned = setup.daemon.wait_event("audit.failed", pipeline="remote")
    assert warned["level"] == "warning" and SANDBOX_KEY not in str(warned)
    assert setup.daemon.proc.poll() is None
    with setup.daemon.client() as client:
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/pipelines/files/trigger", params={"wait": "true"}).json()["outcome"] == "ok"


def test_the_control_api_refuses_audits_it_cannot_make(setup: Setup) -> None:
    with setup.daemon.client() as client:
        unknown = client.post("/v1/pipelines/nope/audit")
        assert unknown.status_code == 404 and unknown.json()["reason"] == "unknown"
        assert client.post("/v1/pipelines/files/audit", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_a_two_way_pipeline_is_said_once_not_audited(tmp_path: Path) -> None:
    write_tickets(tmp_path / "a" / "tickets.csv", 1)
    config = write_config(
        tmp_path / "ferryman.yaml",
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        systems={"a": csv_system(tmp_path / "a"), "b": csv_system(tmp_path / "b")},
        pipelines={"both": {"from": "a.tickets", "to": "b.tickets", "direction": "both", "audit": {"every": "1m"}}},
        listen=f"unix:{short_dir() / 'control.sock'}",
    )
    result = run_cli("--config", str(config), "check")
    if result.returncode != 0:
        pytest.skip(f"a two-way pipeline over CSV files is not a valid config here: {result.stderr.strip()}")
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        event = daemon.wait_event("audit.not_available", pipeline="both")
        assert event["reason"] == "audit: not available for two-way pipelines"
        assert not [e for e in daemon.events() if e.get("event") == "audit.scheduled"]
        with daemon.client() as client:
            refused = client.post("/v1/pipelines/both/audit")
        assert refused.status_code == 409 and refused.json()["reason"] == "two-way"
        assert daemon.stop()[0] == 0
    finally:
        daemon.kill()


# -- in-process: the lease ----------------------------------------------------------------------
class Audits:
    """Stands in for audit_pipeline (and Engine.run): each audit waits until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.began = asyncio.Event()
        self.runs: list[str] = []  # triggers of the runs that started

    async def audit(self, engine: Engine, name: str, **_: Any) -> AuditReport:
        self.began.set()
        await self.release.wait()
        target = TargetAudit("out.tickets", readable=True, linked=1, records=1)
        target.missing.add("T000000")
        return AuditReport(name, "inbox.tickets", read=1, seconds=0.01, targets=[target])

    async def run(self, name: str, trigger: str) -> RunResult:
        self.runs.append(trigger)
        return RunResult(name, "ok")


@pytest.fixture
async def in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_url: str
) -> AsyncIterator[tuple[InProcess, Audits]]:
    """The daemon in this process over SQLite and PostgreSQL (their leases are locked apart)."""
    audits = Audits()
    monkeypatch.setattr(_service, "audit_pipeline", audits.audit)
    monkeypatch.setattr(Engine, "run", lambda self, name, *, trigger="manual", **_: audits.run(name, trigger))
    write_tickets(tmp_path / "in" / "tickets.csv", 1)
    sockets = short_dir()
    config = write_config(
        tmp_path / "ferryman.yaml",
        state_url=state_url,
        systems={"inbox": csv_system(tmp_path / "in"), "out": csv_system(tmp_path / "out")},
        pipelines={"p": {"from": "inbox.tickets", "to": "out.tickets", "audit": {"every": "1m"}}},
        listen=f"unix:{sockets / 'control.sock'}",
    )
    daemon = InProcess(load_config(config), notifier=Notifier({}))
    serving = asyncio.create_task(daemon.serve())
    for _ in range(500):  # ready: the jobs are scheduled (after the last runs are read, off the loop)
        if hasattr(daemon, "scheduler") and daemon.scheduler.get_job("audit:p") is not None:
            break
        await asyncio.sleep(0.01)
    try:
        yield daemon, audits
    finally:
        audits.release.set()
        daemon.request_stop("test")
        assert await asyncio.wait_for(serving, 10) == 0
        sockets.rmdir()


def _holder(url: str, pipeline: str) -> str | None:
    store = StateStore(url)
    try:
        held = store.lease_holder(pipeline)
        return held[0] if held else None
    finally:
        store.close()


async def test_a_run_asked_for_during_an_audit_waits_for_it(in_process: tuple[InProcess, Audits]) -> None:
    d, audits = in_process
    url = d.config.state.resolved_url()
    task, started = d.start_audit("p", "api")
    assert started and d.start_audit("p", "api") == (task, False), "one audit of a pipeline at a time"
    await asyncio.wait_for(audits.began.wait(), 5)
    assert await asyncio.to_thread(_holder, url, "p") == describe_holder(d.store.holder), (
        "the audit holds the pipeline's lease"
    )
    run, _ = d.start_run("p", "api")
    result = await run
    assert result.outcome == "busy" and "audit" in (result.message or "")
    assert audits.runs == [], "no run while the audit holds the lease"
    audits.release.set()
    outcome = await task
    assert outcome["outcome"] == "differences"
    for _ in range(100):
        if audits.runs:
            break
        await asyncio.sleep(0.02)
    assert audits.runs == ["api"], "the run asked for comes right after the audit"
    assert await asyncio.to_thread(_holder, url, "p") is None, "the audit gave the lease back"
    samples = metrics.snapshot()
    assert samples["ferryman_audit_missing"][(("pipeline", "p"), ("target", "out.tickets"))] == 1


async def test_an_audit_finding_the_lease_taken_elsewhere_is_skipped(in_process: tuple[InProcess, Audits]) -> None:
    d, audits = in_process
    other = StateStore(d.config.state.resolved_url(), instance="elsewhere")
    try:
        assert other.acquire_lease("p", timedelta(minutes=5), holder="elsewhere|host|1|1")
        metrics.set_gauge("ferryman_audit_last_success", 1, pipeline="p")
        task, _ = d.start_audit("p", "schedule")
        outcome = await task
        assert outcome["outcome"] == "busy" and "elsewhere" in outcome["message"]
        assert not audits.began.is_set(), "nothing read while another instance holds the lease"
        assert metrics.snapshot()["ferryman_audit_last_success"][(("pipeline", "p"),)] == 1, "a skip is no failure"
    finally:
        other.close()


async def test_a_run_in_progress_here_refuses_an_audit(
    in_process: tuple[InProcess, Audits], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, _ = in_process
    hold = asyncio.Event()

    async def long_run(name: str, trigger: str) -> RunResult:
        await hold.wait()
        return RunResult(name, "ok")

    monkeypatch.setattr(Engine, "run", lambda self, name, *, trigger="manual", **_: long_run(name, trigger))
    run, _ = d.start_run("p", "api")
    await asyncio.sleep(0.05)
    with pytest.raises(_service.Refused) as refused:
        d.start_audit("p", "schedule")
    assert refused.value.reason == "running"
    await d._on_audit("p")  # the schedule logs the skip, and does not raise
    assert "p" not in d._audits
    hold.set()
    await run


async def test_sigterm_cancels_an_audit_in_flight_and_gives_the_lease_back(
    in_process: tuple[InProcess, Audits],
) -> None:
    d, audits = in_process
    task, _ = d.start_audit("p", "schedule")
    await asyncio.wait_for(audits.began.wait(), 5)
    d.request_stop("SIGTERM")
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    url = d.config.state.resolved_url()
    assert await asyncio.to_thread(_holder, url, "p") is None


async def test_the_scheduled_job_audits_and_a_reload_keeps_its_time(in_process: tuple[InProcess, Audits]) -> None:
    d, audits = in_process
    job = d.scheduler.get_job("audit:p")
    assert job is not None and job.trigger.interval == timedelta(minutes=1)
    planned = datetime.now(UTC) + timedelta(seconds=20)  # as if the daemon had run for 40 s
    job.modify(next_run_time=planned)
    assert await d.reload()
    kept = d.scheduler.get_job("audit:p")
    assert kept is not None and kept.next_run_time >= planned, "a reload does not audit at once"
    assert kept.next_run_time <= planned + audit_jitter(timedelta(minutes=1)), "nor puts the audit off"
    kept.modify(next_run_time=datetime.now(UTC))  # its time has come
    await asyncio.wait_for(audits.began.wait(), 5)
    assert d._audits["p"].get_name() == "audit:p"
    audits.release.set()
    outcome = await d._audits["p"]
    assert (outcome["outcome"], outcome["trigger"]) == ("differences", "schedule")
