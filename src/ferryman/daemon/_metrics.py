"""The daemon's ``/metrics``: the engine's counters, the HTTP registry's, run durations,
what the state database says about each pipeline, the build and the process.

:func:`ferryman.metrics.render` writes the process-wide counters and gauges (every family
declared there, with its HELP); this module adds what is computed at the scrape:

- a histogram of run durations per pipeline (:class:`RunDurations`);
- per pipeline, from the state database, so that a restarted daemon reports the same as
  the one before it: open dead letters, the end of the last successful run, its age, and
  the source lag at that run (:func:`pipeline_gauges`);
- ``ferryman_build_info`` and the ``process_*`` families of prometheus_client's
  ProcessCollector, from ``/proc`` (:func:`process_gauges`).

The ``ferryman_audit_*`` gauges are set when a scheduled audit ends (:func:`audit_completed`,
:func:`audit_failed`), in the daemon that ran it: audits are not recorded in the state
database, so a restarted daemon shows them again after its first audit.

:func:`render` reads the database: call it from a worker thread, never on the event loop.

Why two lag metrics, and not "now minus the cursor": on a quiet source the newest update
the cursor holds stays where it is while time goes on, so such a lag grows without end
and alarms on a pipeline that is perfectly in sync. ``ferryman_last_success_age_seconds``
grows only while runs fail or stop happening; ``ferryman_source_lag_seconds`` says how
far behind the source the last successful run delivered, and is 0 when it found nothing
new.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import threading
import time
from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa
import structlog

import ferryman
from ferryman import metrics
from ferryman.audit import AuditReport
from ferryman.metrics import Labels, Series
from ferryman.redact import redact
from ferryman.state import StateStore
from ferryman.state.models import CursorRow, RunRow
from ferryman.timeutil import ensure_utc, utcnow

__all__ = ["RunDurations", "audit_completed", "audit_failed", "pipeline_gauges", "process_gauges", "render"]

log = structlog.get_logger("ferryman.daemon")

BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, math.inf)
_IMPORTED_AT = time.time()  # where /proc cannot tell the process's start time

_RUNS = RunRow.__table__  # type: ignore[attr-defined]
_CURSORS = CursorRow.__table__  # type: ignore[attr-defined]


class RunDurations:
    """``ferryman_run_duration_seconds``: a Prometheus histogram, per pipeline."""

    name = "ferryman_run_duration_seconds"

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self._buckets = buckets
        self._lock = threading.Lock()
        self._series: dict[str, tuple[list[int], float, int]] = {}

    def observe(self, pipeline: str, seconds: float) -> None:
        with self._lock:
            counts, total, n = self._series.get(pipeline, ([0] * len(self._buckets), 0.0, 0))
            for i, bound in enumerate(self._buckets):
                if seconds <= bound:
                    counts[i] += 1
            self._series[pipeline] = (counts, total + seconds, n + 1)

    def render(self) -> str:
        lines = metrics.header(self.name)
        with self._lock:
            series = sorted((p, (list(c), s, n)) for p, (c, s, n) in self._series.items())
        for pipeline, (counts, total, n) in series:
            label = (("pipeline", pipeline),)
            for bound, count in zip(self._buckets, counts, strict=True):
                le = "+Inf" if math.isinf(bound) else f"{bound:g}"
                lines.append(metrics.sample(f"{self.name}_bucket", (*label, ("le", le)), count))
            lines.append(metrics.sample(f"{self.name}_sum", label, total))
            lines.append(metrics.sample(f"{self.name}_count", label, n))
        return "\n".join(lines) + "\n"


def render(
    durations: RunDurations,
    extra: dict[str, Series] | None = None,
    *,
    store: StateStore | None = None,
    pipelines: Iterable[str] = (),
) -> str:
    """Prometheus text (0.0.4) for the whole process; reads ``store`` when given (blocking)."""
    families: dict[str, Series] = {}
    for part in (extra or {}, build_info(), process_gauges()):
        families.update(part)
    if store is not None:
        try:
            families.update(pipeline_gauges(store, list(pipelines)))
            families["ferryman_state_store_up"] = {(): 1.0}
        except Exception as exc:  # the database is away: the rest of /metrics still tells a lot
            log.warning("metrics.state_unreadable", error=redact(str(exc)))
            families["ferryman_state_store_up"] = {(): 0.0}
    return metrics.render(extra=families) + durations.render()


_AUDIT_FINDINGS = {
    "missing": "ferryman_audit_missing",
    "extra": "ferryman_audit_extra",
    "stale": "ferryman_audit_stale",
    "duplicated": "ferryman_audit_duplicated",
}


def audit_completed(report: AuditReport, ended_at: float) -> None:
    """The gauges of an audit that completed (clean or not) at Unix time ``ended_at``."""
    name = report.pipeline
    for target in report.targets:
        for kind, family in _AUDIT_FINDINGS.items():
            metrics.set_gauge(family, getattr(target, kind).count, pipeline=name, target=target.ref)
    metrics.set_gauge("ferryman_audit_records", report.read, pipeline=name)
    metrics.set_gauge("ferryman_audit_duration_seconds", report.seconds, pipeline=name)
    metrics.set_gauge("ferryman_audit_last_run_timestamp_seconds", ended_at, pipeline=name)
    metrics.set_gauge("ferryman_audit_last_success", 1, pipeline=name)


def audit_failed(pipeline: str) -> None:
    """An audit that did not complete: only ``last_success`` changes, the findings stay
    those of the last completed audit (an unreachable source says nothing about the target)."""
    metrics.set_gauge("ferryman_audit_last_success", 0, pipeline=pipeline)


def build_info() -> dict[str, Series]:
    """``ferryman_build_info{version, python} 1``."""
    labels: Labels = (("python", platform.python_version()), ("version", ferryman.__version__))
    return {"ferryman_build_info": {labels: 1.0}}


def pipeline_gauges(store: StateStore, pipelines: list[str], now: datetime | None = None) -> dict[str, Series]:
    """Per pipeline, from the state database (read-only; blocking):

    - ``ferryman_dead_letters_open``: every configured pipeline (0 when none), and any
      other pipeline that still has open ones;
    - ``ferryman_conflicts_open``: the same for conflict-journal entries not restored
      (values a sync overwrote: ``ferryman conflicts list``);
    - ``ferryman_last_success_timestamp_seconds`` and ``ferryman_last_success_age_seconds``:
      the end of the latest run whose outcome is ``ok``, whichever process ran it;
    - ``ferryman_source_lag_seconds``: that run's end minus the newest source update in the
      pipeline's cursor when the run created, updated or deleted anything, else 0 (it found
      nothing new; a line dead-lettered again on every pass is no news). A later run that
      failed after committing pages may have moved the cursor on: the lag then reads lower
      than it was, never higher;
    - ``ferryman_cursor_lag_seconds`` (deprecated): now minus the cursor's newest update.
    """
    now = now or utcnow()
    open_letters: Series = {(("pipeline", p),): 0.0 for p in pipelines}
    for name, count in store.count_dead_letters().items():
        open_letters[(("pipeline", name),)] = float(count)
    open_conflicts: Series = {(("pipeline", p),): 0.0 for p in pipelines}
    for name, count in store.history.count_open_conflicts().items():
        open_conflicts[(("pipeline", name),)] = float(count)
    out: dict[str, Series] = {
        "ferryman_dead_letters_open": open_letters,
        "ferryman_conflicts_open": open_conflicts,
        "ferryman_last_success_timestamp_seconds": {},
        "ferryman_last_success_age_seconds": {},
        "ferryman_source_lag_seconds": {},
        "ferryman_cursor_lag_seconds": {},
    }
    wrote = _RUNS.c.created + _RUNS.c.updated + _RUNS.c.deleted
    with store.engine.connect() as conn:
        # a two-way pipeline has a cursor per side: the newest of them is what it has seen
        newest = {
            row[0]: ensure_utc(row[1])
            for row in conn.execute(
                sa.select(_CURSORS.c.pipeline, sa.func.max(_CURSORS.c.updated_at))
                .where(_CURSORS.c.pipeline.in_(pipelines))
                .group_by(_CURSORS.c.pipeline)
            )
        }
        last_ok: dict[str, tuple[datetime, int]] = {}
        for name in pipelines:
            # newest first along ix_runs_pipeline_started: stops at the first ok run
            row = conn.execute(
                sa.select(_RUNS.c.ended_at, wrote)
                .where(_RUNS.c.pipeline == name, _RUNS.c.outcome == "ok", _RUNS.c.ended_at.is_not(None))
                .order_by(_RUNS.c.started_at.desc())
                .limit(1)
            ).first()
            if row is not None:
                last_ok[name] = (ensure_utc(row[0]), int(row[1] or 0))
    for name in pipelines:
        labels: Labels = (("pipeline", name),)
        cursor_at = newest.get(name)
        if cursor_at is not None:
            out["ferryman_cursor_lag_seconds"][labels] = (now - cursor_at).total_seconds()
        if name not in last_ok:
            continue
        ended, written = last_ok[name]
        out["ferryman_last_success_timestamp_seconds"][labels] = ended.timestamp()
        out["ferryman_last_success_age_seconds"][labels] = max(0.0, (now - ended).total_seconds())
        if not written:
            out["ferryman_source_lag_seconds"][labels] = 0.0
        elif cursor_at is not None:
            out["ferryman_source_lag_seconds"][labels] = max(0.0, (ended - cursor_at).total_seconds())
    return out


def process_gauges() -> dict[str, Series]:
    """The ``process_*`` families, as prometheus_client's ProcessCollector computes them
    from ``/proc``; where ``/proc`` is missing, CPU time and the file limit come from
    :mod:`resource` and the start time is when this module was imported."""
    values: dict[str, float] = {}
    try:
        with open("/proc/self/stat", "rb") as fh:
            parts = fh.read().split(b")")[-1].split()
        ticks = float(os.sysconf("SC_CLK_TCK"))
        values["process_virtual_memory_bytes"] = float(parts[20])
        values["process_resident_memory_bytes"] = float(parts[21]) * resource.getpagesize()
        values["process_start_time_seconds"] = float(parts[19]) / ticks + _boot_time()
        values["process_cpu_seconds_total"] = (float(parts[11]) + float(parts[12])) / ticks
    except (OSError, ValueError, IndexError):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        values["process_cpu_seconds_total"] = usage.ru_utime + usage.ru_stime
        values["process_start_time_seconds"] = _IMPORTED_AT
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    values["process_max_fds"] = math.inf if limit == resource.RLIM_INFINITY else float(limit)
    for fd_dir in ("/proc/self/fd", "/dev/fd"):
        try:
            # the listing holds one descriptor of its own while it runs, as ProcessCollector's does
            values["process_open_fds"] = float(len(os.listdir(fd_dir)))
            break
        except OSError:
            continue
    return {name: {(): value} for name, value in values.items()}


_boot: float | None = None


def _boot_time() -> float:
    global _boot
    if _boot is None:
        with open("/proc/stat", "rb") as fh:
            for line in fh:
                if line.startswith(b"btime "):
                    _boot = float(line.split()[1])
                    break
            else:
                raise ValueError("no btime in /proc/stat")
    return _boot
