"""``ferryman run``: the long-running service.

One process, one event loop. Start-up order: config (validated before anything else),
state database (migrated), the shared :class:`~ferryman.engine.Engine`, the control API
listener, then ``READY=1`` to systemd, then the schedule. A pipeline runs at most once
at a time in this process (the daemon keeps one task per pipeline) and across processes
(the engine's database lease: a run that comes back *busy* is logged, not an error).

Several instances may share a PostgreSQL state store with the same config. Each scheduled
fire time (a *slot*, the same on every instance: see :mod:`._schedule`) is claimed in the
database together with the pipeline's lease, so it runs on exactly one instance; the
others log ``run.skipped_claimed``. Triggers (the control API, webhook intakes) are not
slots: they always ask for a run. While a run goes on, a heartbeat renews its lease every
third of ``state.lease_ttl``; if the lease was lost all the same (this process stalled
longer than that and another instance took over), the run stops after the page in hand.

Systemd's watchdog is fed from the event loop only while the daemon can do its work: the
loop runs, the process has files to spare for a run, and the control API can accept.
Otherwise the pings stop (``watchdog.withheld``, with the reason) and systemd restarts the
service after ``WatchdogSec``; an outage of the database is not such a reason (a restart
does not fix it), and /healthz reports it instead.

A pipeline with ``audit: {every: ...}`` is audited (:func:`ferryman.audit.audit_pipeline`,
never repaired) every that often, holding its lease as a run does: an audit never overlaps a
run of the same pipeline, here or on another instance. An audit that finds the lease taken
is skipped until the next interval; a run asked for while this daemon audits the pipeline
ends *busy* and runs as soon as the audit ends. Findings go to the ``ferryman_audit_*``
gauges; an audit that fails is logged and sets ``ferryman_audit_last_success`` to 0.

Signals: SIGTERM or SIGINT sends ``STOPPING=1`` and drains (each run finishes the page in
hand and commits; runs still going after ``drain_timeout`` are cancelled, which loses no
record either: the cursor only covers committed pages; audits in flight are cancelled at
once, they write nothing), then exits 0. A second one stops
at once. SIGHUP reloads the config: an invalid one is logged with the reason and the
daemon carries on with the old one; a valid one gets a new Engine and a new schedule,
and the old Engine's connectors are closed once its runs in progress end.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from ferryman import logs, metrics
from ferryman.audit import KINDS, AuditReport, NotAudited, audit_pipeline
from ferryman.config import FerrymanConfig, PipelineConfig, load_config
from ferryman.engine import Engine, RunResult
from ferryman.errors import ConfigError, FerrymanError, LeaseLost
from ferryman.holders import describe_holder
from ferryman.redact import redact
from ferryman.state import StateStore
from ferryman.timeutil import UTC, format_utc, utcnow

from ._api import IDLE_TIMEOUT, ConnectionGate, Refused, build_app, connection_cap, start_site
from ._listen import Listen, new_token, parse_listen, token_path, write_token
from ._metrics import RunDurations, audit_completed, audit_failed, render
from ._notify import Notifier
from ._schedule import audit_trigger, check_schedule, missed_slot, next_slot

log = structlog.get_logger("ferryman.daemon")

__all__ = ["Daemon", "ListenError"]

DEFAULT_DRAIN_TIMEOUT = 60.0
HEALTH_DB_TIMEOUT = 1.5  # /healthz answers within 2 s, even while the database hangs
FIRES_DRAIN_TIMEOUT = 5.0  # at stop: how long claims in flight get to end
LOG_RATE_LIMIT = 10  # the same event at most this often a second; the rest are counted
MIN_FREE_FILES = 16  # fewer free than this and a run cannot open its database, apps and files
HOUSEKEEPING_INTERVAL = 5.0  # without a watchdog: how often vitals are checked and counts flushed


class ListenError(FerrymanError):
    """The control API could not listen where ``control.listen`` says."""


def validate(config: FerrymanConfig) -> Listen:
    """What the daemon checks beyond the config model: the listen address and the schedules."""
    listen = parse_listen(config.control.listen, file=config.file)
    token = config.control.token
    if token is not None and not token.get_secret_value().strip():
        # the config model refuses it too; a config built in code must not slip through
        raise ConfigError("is empty: give a token or leave control.token out", file=config.file, path="control.token")
    for name, pipeline in config.pipelines.items():
        if pipeline.schedule is not None:
            check_schedule(pipeline.schedule, file=config.file, where=f"pipelines.{name}.schedule")
    return listen


@dataclass(eq=False)
class _Generation:
    """One loaded config and the Engine built from it; replaced as a whole on reload."""

    config: FerrymanConfig
    engine: Engine
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)  # runs and audits on ``engine``
    retired: bool = False


class Daemon:
    """Schedules pipelines, serves the control API and talks to systemd."""

    def __init__(
        self,
        config: FerrymanConfig,
        *,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        log_level: str | None = None,
        log_format: str | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.listen = validate(config)
        self.config = config
        self.drain_timeout = drain_timeout
        self.notifier = notifier or Notifier()
        self._log_overrides = (log_level, log_format)
        self._token: str | None = None
        self._token_file: Path | None = None
        self._pending_token_file: Path | None = None  # made, not yet written (before the bind)
        self._running: dict[str, asyncio.Task[RunResult]] = {}
        self._run_stops: set[asyncio.Event] = set()
        self._rerun: set[str] = set()
        self._audits: dict[str, asyncio.Task[dict[str, Any]]] = {}
        self._after_audit: dict[str, str] = {}  # pipeline -> trigger of the run asked for during its audit
        self._not_before: dict[str, Any] = {}
        self._durations = RunDurations()
        self._stopping = False
        self._closers: set[asyncio.Task[None]] = set()
        self._fires: set[asyncio.Task[None]] = set()  # slots being tried (maybe in their jitter)
        self._intake: Any = None
        self._outbox: tuple[asyncio.Event, asyncio.Task[None]] | None = None
        self._gate: ConnectionGate | None = None
        self._accept_failed: tuple[float, str] | None = None  # (monotonic time, why)
        self._withheld: str | None = None  # why the watchdog is not being fed
        self._probe: tuple[asyncio.Future[None], float] | None = None  # the database probe in flight

    # -- the Controller protocol (control API) -----------------------------------------------
    @property
    def token(self) -> str | None:
        return self._token

    def start_run(
        self, name: str, trigger: str, *, slot: datetime | None = None
    ) -> tuple[asyncio.Task[RunResult], bool]:
        self._startable(name, f"`ferryman sync {name}` runs it once")
        running = self._running.get(name)
        if running is not None:
            return running, False
        gen = self._gen
        task = asyncio.get_running_loop().create_task(self._run(gen, name, trigger, slot), name=f"run:{name}")
        self._running[name] = task
        gen.tasks.add(task)
        task.add_done_callback(lambda t: self._run_done(gen, name, t))
        return task, True

    def start_audit(self, name: str, trigger: str) -> tuple[asyncio.Task[dict[str, Any]], bool]:
        pipeline = self._startable(name, f"`ferryman audit {name}` audits it once")
        if pipeline.direction == "both":
            raise Refused("two-way", f"{name} is two-way (direction: both): two-way pipelines are not audited yet")
        auditing = self._audits.get(name)
        if auditing is not None:
            return auditing, False
        if name in self._running:  # checked here, not in the task: a run registered later sees the audit
            raise Refused("running", f"{name} is running in this daemon; audit it when the run is done")
        gen = self._gen
        task = asyncio.get_running_loop().create_task(self._audit(gen, name, trigger), name=f"audit:{name}")
        self._audits[name] = task
        gen.tasks.add(task)
        task.add_done_callback(lambda t: self._audit_done(gen, name, t))
        return task, True

    def _startable(self, name: str, once: str) -> PipelineConfig:
        """The pipeline a trigger names, or Refused: the daemon stops, no such pipeline, disabled."""
        if self._stopping:
            raise Refused("stopping", "the daemon is stopping")
        pipeline = self._gen.config.pipelines.get(name)
        if pipeline is None:
            known = ", ".join(sorted(self._gen.config.pipelines)) or "none configured"
            raise Refused("unknown", f"no pipeline named {name!r} in the daemon's config (pipelines: {known})")
        if not pipeline.enabled:
            raise Refused("disabled", f"{name} is disabled (enabled: false); {once}")
        return pipeline

    async def status(self) -> list[dict[str, Any]]:
        from ferryman.status import status_rows

        rows: list[dict[str, Any]] = await self.store.call(status_rows, self._gen.config, self.store)
        return rows

    async def health(self) -> tuple[bool, dict[str, Any]]:
        if self._stopping:
            return False, {"status": "stopping"}
        cannot = self._cannot_work()
        if cannot is not None:
            return False, {"status": "unhealthy", "reason": cannot}
        problem = await self._db_problem()
        if problem is not None:
            return False, {"status": "unhealthy", "db": problem}
        return True, {"status": "ok", "db": "ok", "running": sorted(self._running)}

    async def _db_problem(self) -> str | None:
        """Whether the state database answers a trivial query, within HEALTH_DB_TIMEOUT.

        One probe at a time, in its own thread: while the database hangs, every health check
        waits on the same probe (at most HEALTH_DB_TIMEOUT) instead of leaving one more stuck
        thread behind per request, and reports how long it has gone unanswered."""
        loop = asyncio.get_running_loop()
        if self._probe is None or self._probe[0].done():
            self._probe = (asyncio.ensure_future(asyncio.to_thread(self._ping_db)), loop.time())
        probe, began = self._probe
        try:
            await asyncio.wait_for(asyncio.shield(probe), max(0.0, began + HEALTH_DB_TIMEOUT - loop.time()))
        except TimeoutError:
            return f"no answer for {loop.time() - began:.0f}s"
        except Exception as exc:
            return redact(str(exc))
        return None

    async def metrics_text(self) -> str:
        return await self.store.call(self._metrics_text)

    # -- webhooks ------------------------------------------------------------------------------
    async def trigger_soon(self, name: str) -> None:
        """Run ``name`` soon: now when idle, else once more right after the run in progress
        (which may have read the source before the change that a webhook announced)."""
        if name in self._running:
            self._rerun.add(name)
            return
        try:
            self.start_run(name, "webhook")
        except Refused as exc:
            log.info("run.not_triggered", pipeline=name, reason=str(exc))

    # -- lifecycle -----------------------------------------------------------------------------
    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status (0 after a clean drain)."""
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)
        logs.limit_rate(LOG_RATE_LIMIT)
        try:
            return await self._serve(loop)
        finally:
            logs.flush_suppressed()
            logs.limit_rate(None)
            loop.set_exception_handler(previous_handler)

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> int:
        self._stop_requested = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self.store = StateStore.open(self.config.state.resolved_url(), instance=self.config.instance)
        from ferryman.state.budget import make_registry

        # shared through the database when several instances share a PostgreSQL state store
        self.registry = make_registry(self.store)
        self._gen = self._generation(self.config)
        # The token is made before the API listens (no moment without one) but written to its
        # file only once the listen address is ours: a second `ferryman run` on the same
        # config fails to bind and leaves the running daemon's token file alone.
        self._set_token(self.config, write=False)
        runner = await self._start_api()
        self._write_token_file()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload()))
        interval = self.notifier.watchdog_interval()
        watchdog = loop.create_task(self._watchdog(interval), name="watchdog")
        self._start_outbox(self.config)
        metrics.set_gauge("ferryman_daemon_start_timestamp_seconds", time.time())

        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.scheduler.start()
        # read off the event loop, like every state call of the daemon (a hung database must
        # hold up the start, not the watchdog and the signals)
        scheduled = self._schedule(self._gen, await self.store.call(self.store.last_runs), startup=True)
        self.notifier.notify("READY=1", f"STATUS=ready: {scheduled} scheduled, control API on {self.listen}")
        log.info(
            "daemon.ready",
            listen=str(self.listen),
            pipelines=sorted(self.config.pipelines),
            scheduled=scheduled,
            watchdog_seconds=interval,
            pid=os.getpid(),
        )
        try:
            await self._stop_requested.wait()
            await self._drain()
        finally:
            await self._close(runner)
            watchdog.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self.notifier.close()
        log.info("daemon.stopped")
        return 0

    def request_stop(self, why: str = "request") -> None:
        """SIGTERM/SIGINT: drain and exit; the second time, cancel the runs at once."""
        if self._stopping:
            log.warning("daemon.stop_now", signal=why, cancelling=sorted(self._running))
            for task in list(self._running.values()):
                task.cancel()
            return
        self._stopping = True
        self.notifier.notify("STOPPING=1", "STATUS=stopping: finishing the pages in hand")
        log.info("daemon.stopping", signal=why, running=sorted(self._running), auditing=sorted(self._audits))
        for stop in self._run_stops:
            stop.set()
        for audit in self._audits.values():  # read-only: nothing to finish
            audit.cancel()
        self._stop_requested.set()

    async def reload(self) -> bool:
        """SIGHUP: apply the config file again, or keep the current one if the new one is invalid."""
        if self._stopping:
            return False
        async with self._reload_lock:
            self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            file = self.config.file
            try:
                config = load_config(file)
                listen = validate(config)
            except ConfigError as exc:
                log.error("config.reload_failed", error=redact(str(exc)), file=file, kept="the running config")
                self.notifier.notify(
                    "READY=1", f"STATUS=reload failed, still on the previous config: {redact(str(exc))}"
                )
                return False
            if str(listen) != str(self.listen):
                log.warning("config.restart_needed", key="control.listen", kept=str(self.listen))
            if config.state.resolved_url() != self.config.state.resolved_url():
                log.warning("config.restart_needed", key="state.url", kept=redact(self.store.url))
            level, fmt = self._log_overrides
            logs.configure(level or config.log.level, fmt or config.log.format)
            old, self._gen = self._gen, self._generation(config)
            self.config = config
            self._set_token(config)
            if self._intake is not None and hasattr(self._intake, "config"):
                self._intake.config = config
            await self._stop_outbox()
            self._start_outbox(config)
            scheduled = self._schedule(self._gen, await self.store.call(self.store.last_runs), startup=False)
            self._retire(old)
            log.info("config.reloaded", file=file, pipelines=sorted(config.pipelines), scheduled=scheduled)
            self.notifier.notify("READY=1", f"STATUS=reloaded: {scheduled} scheduled")
            return True

    # -- runs ----------------------------------------------------------------------------------
    def _generation(self, config: FerrymanConfig) -> _Generation:
        return _Generation(config, Engine(config, self.store, services={"http": self.registry, "config": config}))

    async def _run(self, gen: _Generation, name: str, trigger: str, slot: datetime | None = None) -> RunResult:
        if name in self._audits:
            # the audit holds the lease, and this process is its holder: the engine would take
            # it too (and release it under the audit at the end). Run once the audit is done.
            self._after_audit.setdefault(name, trigger)
            result = RunResult(name, "busy", message="being audited in this daemon: it runs when the audit ends")
            self._after_run(result)
            return result
        metrics.set_gauge("ferryman_pipeline_running", 1, pipeline=name)
        stop = asyncio.Event()  # set on SIGTERM, or when the lease is lost
        if self._stopping:
            stop.set()
        self._run_stops.add(stop)
        keeper = asyncio.get_running_loop().create_task(
            self._keep_lease(name, gen.config.state.lease_ttl, stop), name=f"lease:{name}"
        )
        try:
            result = await gen.engine.run(name, trigger=trigger, stop=stop)
        except ConfigError as exc:
            result = RunResult(name, "failed", message=redact(str(exc)))
            log.error("run.config_error", pipeline=name, error=result.message)
        except Exception as exc:  # a bug in a connector must not take the daemon down
            result = RunResult(name, "failed", message=f"internal error: {redact(str(exc))}")
            log.exception("run.crashed", pipeline=name)
        finally:
            keeper.cancel()
            self._run_stops.discard(stop)
            metrics.set_gauge("ferryman_pipeline_running", 0, pipeline=name)
        if slot is not None and result.run_id is not None:
            try:
                await self.store.call(self.store.slot_ran, name, slot, result.run_id)
            except Exception as exc:  # bookkeeping only: the run itself is recorded
                log.warning("slot.not_noted", pipeline=name, slot=format_utc(slot), error=redact(str(exc)))
        self._after_run(result)
        return result

    async def _keep_lease(self, name: str, ttl: timedelta, stop: asyncio.Event) -> None:
        """Renew the run's lease every third of its TTL, whatever the run is waiting on (a
        slow page, a rate limit); the engine only renews between pages."""
        held = False
        while True:
            await asyncio.sleep(ttl.total_seconds() / 3)
            try:
                renewed = await self.store.call(self.store.renew_lease, name, ttl)
            except Exception as exc:  # the database is away: try again, the lease has time left
                log.warning("lease.renew_failed", pipeline=name, error=redact(str(exc)))
                continue
            if renewed:
                held = True
            elif held:
                log.error(
                    "lease.lost",
                    pipeline=name,
                    note="not renewed in time, another instance may have taken over: stopping after the page in hand",
                )
                stop.set()
                return

    def _after_run(self, result: RunResult) -> None:
        name = result.pipeline
        if result.outcome == "busy":
            log.info("run.busy", pipeline=name, message=result.message)
            return
        self._durations.observe(name, result.seconds)
        if result.ok:
            metrics.set_gauge("ferryman_last_success_timestamp_seconds", time.time(), pipeline=name)
        if result.outcome == "deferred" and result.not_before is not None:
            self._not_before[name] = result.not_before
        else:
            self._not_before.pop(name, None)
        read = result.counts.get("read", 0)
        self.notifier.notify(f"STATUS=last: {name} {result.outcome} {read} records {format_utc(utcnow())}")

    def _run_done(self, gen: _Generation, name: str, task: asyncio.Task[RunResult]) -> None:
        if self._running.get(name) is task:
            del self._running[name]
        gen.tasks.discard(task)
        if gen.retired and not gen.tasks:
            self._spawn(self._close_engine(gen))
        if name in self._rerun:
            self._rerun.discard(name)
            if not self._stopping:
                try:
                    self.start_run(name, "webhook")
                except Refused as exc:
                    log.info("run.not_triggered", pipeline=name, reason=str(exc))

    def _retire(self, gen: _Generation) -> None:
        gen.retired = True
        if not gen.tasks:
            self._spawn(self._close_engine(gen))

    async def _close_engine(self, gen: _Generation) -> None:
        await gen.engine.aclose()
        log.debug("engine.closed")

    # -- schedule ------------------------------------------------------------------------------
    def _schedule(self, gen: _Generation, last: dict[str, dict[str, Any]], *, startup: bool) -> int:
        """(Re)build every job from ``gen``'s config, given the ``last`` runs of every
        pipeline (as :meth:`StateStore.last_runs` gives them); start the runs that are due.
        Returns the count of scheduled runs (audits are logged one by one)."""
        audits = self._audit_times()
        self.scheduler.remove_all_jobs()
        now = utcnow()
        count = 0
        for name, pipeline in gen.config.pipelines.items():
            if not pipeline.enabled or pipeline.schedule is None:
                continue
            self._arm(name, now)
            count += 1
            started = (last.get(name) or {}).get("started_at")
            missed = missed_slot(pipeline.schedule, started, now)
            if missed is not None:
                log.info(
                    "run.catch_up",
                    pipeline=name,
                    slot=format_utc(missed),
                    last_started=format_utc(started) if started else None,
                )
                self._try_slot(name, missed, "startup" if startup else "reload")
        self._schedule_audits(gen, now, audits)
        return count

    def _arm(self, name: str, after: datetime) -> None:
        """Schedule the pipeline's first slot after ``after``, as the current config says."""
        pipeline = self._gen.config.pipelines.get(name)
        if pipeline is None or not pipeline.enabled or pipeline.schedule is None:
            return
        slot = next_slot(pipeline.schedule, after)
        if slot is None:
            return
        self.scheduler.add_job(
            self._on_slot,
            trigger=DateTrigger(slot, timezone=UTC),
            args=[name, slot],
            id=name,
            name=name,
            misfire_grace_time=None,
            replace_existing=True,
        )

    async def _on_slot(self, name: str, slot: datetime) -> None:
        """A slot came: arm the next one, then try this one (in its own task: jitter may
        hold it longer than the scheduler should wait)."""
        if self._stopping:
            return
        self._arm(name, max(slot, utcnow()))  # a late wake-up coalesces the slots it missed
        self._try_slot(name, slot, "schedule")

    def _try_slot(self, name: str, slot: datetime, trigger: str) -> None:
        task = asyncio.get_running_loop().create_task(self._fire(name, slot, trigger), name=f"slot:{name}")
        self._fires.add(task)
        task.add_done_callback(self._fires.discard)

    async def _fire(self, name: str, slot: datetime, trigger: str) -> None:
        """Run the slot here if this instance claims it: not while a run goes on or the app
        asked us to wait; after the schedule's jitter; never when another instance has it."""
        pipeline = self._gen.config.pipelines.get(name)
        if self._stopping or pipeline is None or pipeline.schedule is None:
            return
        not_before = self._not_before.get(name)
        if not_before is not None and utcnow() < not_before:
            log.debug("run.skipped", pipeline=name, reason=f"deferred until {format_utc(not_before)}")
            return
        jitter = pipeline.schedule.jitter.total_seconds()
        if jitter and trigger == "schedule":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), random.uniform(0, jitter))
            if self._stopping:
                return
        if name in self._running:
            log.debug("run.skipped", pipeline=name, slot=format_utc(slot), reason="already running")
            return
        if name in self._audits:  # it holds the lease: the claim would succeed and the run come back busy
            self._after_audit.setdefault(name, trigger)
            log.info("run.after_audit", pipeline=name, slot=format_utc(slot), message="runs when its audit ends")
            return
        try:
            claim = await self.store.call(self.store.claim_slot, name, slot, self._gen.config.state.lease_ttl)
        except Exception as exc:
            log.error("run.not_started", pipeline=name, slot=format_utc(slot), reason=redact(str(exc)))
            return
        if claim.outcome == "taken":
            log.info("run.skipped_claimed", pipeline=name, slot=format_utc(slot), claimed_by=claim.by)
            return
        if claim.outcome == "busy":
            log.info("run.busy", pipeline=name, slot=format_utc(slot), message=f"already running on {claim.by}")
            return
        try:
            _, started = self.start_run(name, trigger, slot=slot)
        except Refused as exc:  # stopping (or reloaded) since the claim: give the slot back
            log.info("run.not_started", pipeline=name, slot=format_utc(slot), reason=str(exc))
            await self.store.call(self.store.abandon_slot, name, slot)
            return
        if not started:  # a triggered run began meanwhile: it holds the lease and serves the slot
            log.debug("run.skipped", pipeline=name, slot=format_utc(slot), reason="already running")

    # -- audits --------------------------------------------------------------------------------
    def _audit_times(self) -> dict[str, tuple[timedelta, datetime]]:
        """Per audited pipeline, its interval and next audit, as scheduled now."""
        out: dict[str, tuple[timedelta, datetime]] = {}
        for job in self.scheduler.get_jobs():
            if job.id.startswith("audit:") and job.next_run_time is not None:
                out[job.id.removeprefix("audit:")] = (job.trigger.interval, job.next_run_time)
        return out

    def _schedule_audits(self, gen: _Generation, now: datetime, before: dict[str, tuple[timedelta, datetime]]) -> None:
        """One job per enabled pipeline with ``audit:``; two-way ones are said once, here.

        A reload keeps an audit's next time when its interval stays: reloading more often
        than ``audit.every`` must not put the audit off for ever."""
        for name, pipeline in gen.config.pipelines.items():
            if not pipeline.enabled or pipeline.audit is None:
                continue
            if pipeline.direction == "both":
                log.warning("audit.not_available", pipeline=name, reason="audit: not available for two-way pipelines")
                continue
            every = pipeline.audit.every
            interval, planned = before.get(name, (None, None))
            first = planned if interval == every and planned is not None and planned > now else now + every
            trigger = audit_trigger(every, first)
            self.scheduler.add_job(
                self._on_audit,
                trigger=trigger,
                args=[name],
                id=f"audit:{name}",
                name=f"audit:{name}",
                misfire_grace_time=None,
                coalesce=True,
                replace_existing=True,
            )
            log.info(
                "audit.scheduled",
                pipeline=name,
                every=every.total_seconds(),
                first=format_utc(first),
                sample=pipeline.audit.sample,
            )

    async def _on_audit(self, name: str) -> None:
        """An audit's time came: start it in its own task (the scheduler does not wait for it)."""
        if self._stopping:
            return
        try:
            self.start_audit(name, "schedule")
        except Refused as exc:
            log.info("audit.skipped", pipeline=name, reason=str(exc), note="audited at the next interval")

    async def _audit(self, gen: _Generation, name: str, trigger: str) -> dict[str, Any]:
        """Audit ``name`` holding its lease (renewed as a run's is); set the gauges. Never
        raises but CancelledError: the outcome is logged and returned as a JSON document."""
        pipeline = gen.config.pipelines[name]
        sample = pipeline.audit.sample if pipeline.audit is not None else None
        ttl = gen.config.state.lease_ttl
        out: dict[str, Any] = {"pipeline": name, "trigger": trigger}
        try:
            taken = await self.store.call(self.store.acquire_lease, name, ttl)
            holder = None if taken else await self.store.call(self.store.lease_holder, name)
        except Exception as exc:
            return self._audit_failed(out, f"the state database: {redact(str(exc))}")
        if not taken:
            who = describe_holder(holder[0]) if holder else "another instance"
            out.update(outcome="busy", message=f"running on {who}: audited at the next interval")
            log.info("audit.skipped", pipeline=name, reason=f"running on {who}", note="audited at the next interval")
            return out
        stop = asyncio.Event()  # set by the keeper when the lease is lost
        keeper = asyncio.get_running_loop().create_task(self._keep_lease(name, ttl, stop), name=f"lease:{name}")

        async def still_ours() -> None:
            if stop.is_set():  # a run elsewhere may be changing what the audit compares
                raise LeaseLost(f"pipeline {name}: the audit's lease passed to another holder during the audit")

        log.info("audit.started", pipeline=name, trigger=trigger, sample=sample)
        try:
            report = await audit_pipeline(gen.engine, name, sample=sample, keep_alive=still_ours)
        except asyncio.CancelledError:
            log.info("audit.cancelled", pipeline=name, note="nothing was written; audited again after the next start")
            raise
        except NotAudited as exc:
            out.update(outcome="not_audited", message=str(exc))
            log.warning("audit.not_available", pipeline=name, reason=str(exc))
            return out
        except Exception as exc:  # an unreachable app, a deferral, the database, a connector's bug
            return self._audit_failed(out, redact(str(exc)) or type(exc).__name__)
        finally:
            keeper.cancel()
            try:
                await self.store.call(self.store.release_lease, name)
            except Exception as exc:  # it expires after state.lease_ttl all the same
                log.warning("lease.release_failed", pipeline=name, error=redact(str(exc)))
        audit_completed(report, time.time())
        out.update(outcome="clean" if report.clean else "differences", report=report.as_json())
        say = log.info if report.clean else log.warning  # differences are what the schedule is for
        say(
            "audit.completed",
            pipeline=name,
            clean=report.clean,
            read=report.read,
            complete=report.complete,
            seconds=round(report.seconds, 3),
            findings=_findings(report),
        )
        return out

    def _audit_failed(self, out: dict[str, Any], reason: str) -> dict[str, Any]:
        audit_failed(out["pipeline"])
        log.warning("audit.failed", pipeline=out["pipeline"], reason=reason, note="audited again at the next interval")
        out.update(outcome="failed", message=reason)
        return out

    def _audit_done(self, gen: _Generation, name: str, task: asyncio.Task[dict[str, Any]]) -> None:
        if self._audits.get(name) is task:
            del self._audits[name]
        gen.tasks.discard(task)
        if gen.retired and not gen.tasks:
            self._spawn(self._close_engine(gen))
        trigger = self._after_audit.pop(name, None)
        if trigger is not None and not self._stopping:
            try:
                self.start_run(name, trigger)
            except Refused as exc:
                log.info("run.not_triggered", pipeline=name, reason=str(exc))

    # -- control API ---------------------------------------------------------------------------
    def _set_token(self, config: FerrymanConfig, *, write: bool = True) -> None:
        if config.control.token is not None:
            self._token = config.control.token.get_secret_value()
            if self._token_file is not None:
                self._token_file.unlink(missing_ok=True)
                self._token_file = None
            return
        if not self.listen.is_tcp:
            self._token = None  # the socket's file mode guards it
            return
        if self._token_file is None:
            self._token = new_token()
            self._pending_token_file = token_path(config)
            if write:
                self._write_token_file()

    def _write_token_file(self) -> None:
        path, self._pending_token_file = self._pending_token_file, None
        if path is None or self._token is None:
            return
        try:
            write_token(path, self._token)
        except OSError as exc:
            raise ListenError(f"cannot write the control token to {path}: {exc.strerror}") from None
        self._token_file = path

    async def _start_api(self) -> web.AppRunner:
        self._gate = gate = ConnectionGate(cap=connection_cap())
        app = build_app(self, gate)
        self._add_intake(app)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=5.0, keepalive_timeout=IDLE_TIMEOUT
        )
        await runner.setup()
        try:
            if self.listen.path is not None:
                _claim_socket_path(self.listen.path)
            await start_site(runner, self.listen, gate)
            if self.listen.path is not None:
                os.chmod(self.listen.path, 0o660)
        except OSError as exc:
            await runner.cleanup()
            raise ListenError(f"control API cannot listen on {self.listen}: {exc.strerror or exc}") from None
        return runner

    def _add_intake(self, app: web.Application) -> None:
        try:
            from ferryman.webhooks.intake import IntakeContext, add_routes
        except ImportError:
            return
        self._intake = IntakeContext(config=self.config, store=self.store, trigger=self.trigger_soon)
        routes = add_routes(app, self._intake)
        if routes:
            log.info("webhooks.intake", routes=routes)

    def _start_outbox(self, config: FerrymanConfig) -> None:
        try:
            from ferryman.webhooks import OutboxWorker, has_outbound
        except ImportError:
            return
        if not has_outbound(config):
            return
        stop = asyncio.Event()
        worker = OutboxWorker(config, self.store, self.registry)
        task = asyncio.get_running_loop().create_task(worker.serve(stop), name="outbox")
        task.add_done_callback(_log_outbox_end)
        self._outbox = (stop, task)

    async def _stop_outbox(self) -> None:
        if self._outbox is None:
            return
        stop, task = self._outbox
        self._outbox = None
        stop.set()
        _, pending = await asyncio.wait({task}, timeout=self.drain_timeout)
        for late in pending:
            late.cancel()
        if pending:  # its finally blocks record outcomes and release leases through state calls
            await asyncio.gather(*pending, return_exceptions=True)

    # -- shutdown ------------------------------------------------------------------------------
    async def _drain(self) -> None:
        self.scheduler.shutdown(wait=False)
        if self._fires:  # slots in their jitter wake up and give up; claims in flight end
            await asyncio.wait(set(self._fires), timeout=FIRES_DRAIN_TIMEOUT)
        if self._audits:  # cancelled by request_stop: their finally blocks give the leases back
            # (bounded: with the database hung, the leases expire after state.lease_ttl instead)
            await asyncio.wait(set(self._audits.values()), timeout=FIRES_DRAIN_TIMEOUT)
        tasks = {t for t in self._running.values()}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.drain_timeout)
            if pending:
                log.warning(
                    "daemon.drain_timeout",
                    seconds=self.drain_timeout,
                    cancelled=sorted(t.get_name().removeprefix("run:") for t in pending),
                    note="their cursors stay at the last committed page",
                )
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        await self._stop_outbox()

    async def _close(self, runner: web.AppRunner) -> None:
        with contextlib.suppress(Exception):
            await runner.cleanup()
        if self.listen.path is not None:
            self.listen.path.unlink(missing_ok=True)
        if self._token_file is not None:
            self._token_file.unlink(missing_ok=True)
        await self._gen.engine.aclose()
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)
        self.store.close()

    # -- helpers -------------------------------------------------------------------------------
    async def _watchdog(self, interval: float | None) -> None:
        # From the event loop itself: if the loop hangs, the pings stop and systemd restarts us.
        while True:
            cannot = self._cannot_work()
            if cannot is None:
                if self._withheld is not None:
                    log.info("watchdog.resumed", was=self._withheld)
                    self.notifier.notify("STATUS=working again")
                    self._withheld = None
                if interval:
                    self.notifier.notify("WATCHDOG=1")
            else:
                if self._withheld is None:  # once per spell, not once per tick
                    if interval:
                        log.error(
                            "watchdog.withheld", reason=cannot, note="systemd restarts the service after WatchdogSec"
                        )
                    else:
                        log.error("daemon.cannot_work", reason=cannot)
                    self.notifier.notify(f"STATUS=cannot work: {cannot}")
                self._withheld = cannot
            logs.flush_suppressed()
            await asyncio.sleep(interval or HOUSEKEEPING_INTERVAL)

    def _cannot_work(self) -> str | None:
        """Why the daemon cannot do its work in a way a restart would cure, or None.

        A database outage is not such a reason: a restart does not bring it back."""
        files = _files_free()
        if files is not None and files[0] < MIN_FREE_FILES:
            free, limit = files
            return (
                f"only {free} of {limit} files left (LimitNOFILE): no file for the database, "
                "an app's connection or a CSV file, so runs cannot start"
            )
        if self._accept_failed is not None:
            at, why = self._accept_failed
            if time.monotonic() - at < 2 * (self.notifier.watchdog_interval() or HOUSEKEEPING_INTERVAL):
                return f"the control API cannot accept connections: {why}"
            self._accept_failed = None
        return None

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and "accept" in str(context.get("message", "")):
            # asyncio retries the accept a second later; what matters is that it failed
            why = exc.strerror or str(exc)
            self._accept_failed = (time.monotonic(), why)
            log.error("api.accept_failed", listen=str(self.listen), error=why)
            return
        loop.default_exception_handler(context)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _ping_db(self) -> None:
        with self.store.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def _metrics_text(self) -> str:
        # in a worker thread (metrics_text): render() reads the state database
        pipelines = list(self._gen.config.pipelines)
        for name in pipelines:
            metrics.set_gauge("ferryman_pipeline_running", 1 if name in self._running else 0, pipeline=name)
        if self._gate is not None:
            metrics.set_gauge("ferryman_control_connections", self._gate.open_connections)
        return render(self._durations, extra=self.registry.snapshot(), store=self.store, pipelines=pipelines)

    @property
    def metrics_public(self) -> bool:
        """``control.metrics_public`` of the config in force (a reload may change it)."""
        return self.config.control.metrics_public


def _files_free() -> tuple[int, int] | None:
    """(free, limit) file descriptors of this process, or None where /proc cannot tell."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError as exc:
        if exc.errno == errno.EMFILE:  # listing needs a file: none left
            return 0, limit
        return None
    return limit - used, limit


def _claim_socket_path(path: Path) -> None:
    """Remove a stale socket left by a daemon that died; refuse to steal a live one."""
    import socket

    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody answers: stale
        return
    finally:
        probe.close()
    raise ListenError(f"another process already serves {path}: is a ferryman daemon running?")


def _log_outbox_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("outbox.crashed", error=redact(str(exc)), exc_info=exc)


def _findings(report: AuditReport) -> dict[str, dict[str, int]]:
    """Per target, the counts of the kinds found (the log line of an audit)."""
    return {t.ref: {k: getattr(t, k).count for k in KINDS if getattr(t, k).count} for t in report.targets}
