"""In-process counters and gauges, exported by the daemon as Prometheus text.

Kept dependency-free and cheap: a counter is a dict entry keyed by its labels.

Every metric family is declared once, in :data:`FAMILIES`, with its type and its HELP
text. :func:`inc` and :func:`set_gauge` refuse a name that is not declared (or declared
as the other type), and :func:`render` refuses to write a family it has no HELP for: a
family without HELP cannot reach ``/metrics``. A connector that counts something of its
own declares it first with :func:`declare`.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FAMILIES",
    "Family",
    "Series",
    "UndeclaredMetric",
    "declare",
    "header",
    "inc",
    "number",
    "render",
    "reset",
    "set_gauge",
    "snapshot",
]

Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[tuple[str, str], ...]
Series = dict[Labels, float]


@dataclass(frozen=True, slots=True)
class Family:
    """A metric family: its type and the HELP text a scraper shows for it."""

    name: str
    kind: Kind
    help: str


class UndeclaredMetric(ValueError):
    """A metric name used without a declaration in :data:`FAMILIES` (or with the wrong type)."""


FAMILIES: dict[str, Family] = {}


def declare(name: str, kind: Kind, help: str) -> Family:
    """Declare a family (idempotent); a second declaration that differs is a bug and raises."""
    family = Family(name, kind, " ".join(help.split()))
    if not family.help:
        raise UndeclaredMetric(f"metric {name}: the HELP text is empty; say what it measures, in which unit")
    known = FAMILIES.setdefault(name, family)
    if known != family:
        raise UndeclaredMetric(f"metric {name} is already declared as {known.kind} {known.help!r}")
    return family


# fmt: off
# -- the engine (one-off syncs and the daemon alike) -------------------------------------
declare("ferryman_records_read_total", "counter", "Records read from a pipeline's source")
declare("ferryman_records_written_total", "counter",
        "Records written to a pipeline's targets, by operation (op: created, updated, deleted)")
declare("ferryman_records_skipped_total", "counter",
        "Records read but not written because the target already holds them as they are")
declare("ferryman_records_dead_lettered_total", "counter",
        "Records sent to the dead-letter table (see ferryman_dead_letters_open for those still open)")
declare("ferryman_runs_total", "counter",
        "Pipeline runs that ended, by outcome (ok, failed, deferred, halted, stopped, busy)")
declare("ferryman_cursor_lag_seconds", "gauge",
        "Deprecated: now minus the newest source update in the pipeline's cursor. It grows without end on a "
        "quiet source, so do not alert on it: use ferryman_last_success_age_seconds and "
        "ferryman_source_lag_seconds")
# -- HTTP (ferryman.http.HttpMetrics) -------------------------------------------------------
declare("ferryman_http_requests_total", "counter",
        "HTTP responses from a system, by status code (status=\"error\": no response, a transport failure)")
declare("ferryman_http_rate_limited_total", "counter", "HTTP 429 (Too Many Requests) responses from a system")
declare("ferryman_http_rate_limit_wait_seconds_total", "counter",
        "Seconds spent waiting before requests to a system: its rate budget, Retry-After, RateLimit "
        "headers and deferrals")
declare("ferryman_http_retries_total", "counter", "HTTP requests to a system that were sent again after a failure")
declare("ferryman_http_deferrals_total", "counter",
        "Times a system asked for a pause longer than a run waits, so the run ended as deferred")
# -- the daemon (ferryman run) ----------------------------------------------------------------
declare("ferryman_build_info", "gauge", "Always 1; the labels say which ferryman and which Python run")
declare("ferryman_daemon_start_timestamp_seconds", "gauge", "Unix time at which this daemon started")
declare("ferryman_pipeline_running", "gauge", "1 while a run of the pipeline is in progress in this daemon, else 0")
declare("ferryman_run_duration_seconds", "histogram",
        "Seconds a pipeline run took in this daemon, from its start to its last commit")
declare("ferryman_last_success_timestamp_seconds", "gauge",
        "Unix time at which the pipeline's last successful run ended (from the state database: runs of "
        "earlier processes and other instances count)")
declare("ferryman_last_success_age_seconds", "gauge",
        "Seconds since the pipeline's last successful run ended; grows only while runs fail or do not happen "
        "(alert when it passes a few schedule intervals); absent until a run succeeded")
declare("ferryman_source_lag_seconds", "gauge",
        "At the pipeline's last successful run: the end of that run minus the newest source update it "
        "delivered (its cursor); 0 when it delivered nothing new, so a quiet source that is fully synced "
        "reads 0")
declare("ferryman_dead_letters_open", "gauge",
        "Dead letters of the pipeline still open (not replayed, resolved or dropped): see ferryman dlq list")
declare("ferryman_conflicts_open", "gauge",
        "Conflict-journal entries of the pipeline not restored: values a sync overwrote in a record that had "
        "changed since the last sync (see ferryman conflicts list); kept for history.journal_retention")
declare("ferryman_state_store_up", "gauge",
        "1 when the last scrape could read the state database, 0 when it could not (then the pipeline "
        "gauges read from it are left out)")
declare("ferryman_control_connections", "gauge", "Connections to the control API open now")
declare("ferryman_control_connections_refused_total", "counter",
        "Connections to the control API answered 503 because every allowed connection was busy")
declare("ferryman_control_connections_evicted_total", "counter",
        "Idle connections to the control API closed to make room for new ones")
# -- scheduled audits (pipelines' ``audit:``; set by the daemon that ran the audit) -------------
declare("ferryman_audit_missing", "gauge",
        "At the pipeline's last completed audit: source records the target lacks (no link, or linked to a "
        "record the target no longer has); alert when above 0")
declare("ferryman_audit_extra", "gauge",
        "At the pipeline's last completed audit: links to source records that are gone (0 after a sampled "
        "audit, which does not see every source key)")
declare("ferryman_audit_stale", "gauge",
        "At the pipeline's last completed audit: records changed on either side since their last delivery")
declare("ferryman_audit_duplicated", "gauge",
        "At the pipeline's last completed audit: source or natural keys held by more than one target record "
        "(0 where the target cannot be listed)")
declare("ferryman_audit_records", "gauge", "Source records the pipeline's last completed audit compared")
declare("ferryman_audit_duration_seconds", "gauge", "Seconds the pipeline's last completed audit took")
declare("ferryman_audit_last_run_timestamp_seconds", "gauge",
        "Unix time at which the pipeline's last completed audit ended (audits of this daemon only)")
declare("ferryman_audit_last_success", "gauge",
        "1 when the pipeline's last audit in this daemon completed, 0 when it failed (then the finding "
        "gauges still show the last completed audit)")
# -- the process, named as prometheus_client's ProcessCollector names them --------------------
declare("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.")
declare("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
declare("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.")
declare("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.")
declare("process_open_fds", "gauge", "Number of open file descriptors.")
declare("process_max_fds", "gauge", "Maximum number of open file descriptors.")
# fmt: on

_lock = threading.Lock()
_counters: dict[str, Series] = defaultdict(dict)
_gauges: dict[str, Series] = defaultdict(dict)


def _declared(name: str, kind: Kind) -> None:
    family = FAMILIES.get(name)
    if family is None:
        raise UndeclaredMetric(
            f"metric {name} is not declared: add it to ferryman.metrics (declare(name, kind, help)) with its HELP"
        )
    if family.kind != kind:
        raise UndeclaredMetric(f"metric {name} is declared as a {family.kind}, not a {kind}")


def inc(name: str, value: float = 1.0, **labels: str) -> None:
    """Add ``value`` to the counter ``name`` (declared in :data:`FAMILIES`) with ``labels``."""
    _declared(name, "counter")
    key = tuple(sorted(labels.items()))
    with _lock:
        series = _counters[name]
        series[key] = series.get(key, 0.0) + value


def set_gauge(name: str, value: float, **labels: str) -> None:
    """Set the gauge ``name`` (declared in :data:`FAMILIES`) with ``labels`` to ``value``."""
    _declared(name, "gauge")
    with _lock:
        _gauges[name][tuple(sorted(labels.items()))] = value


def snapshot() -> dict[str, Series]:
    with _lock:
        merged = {k: dict(v) for k, v in _counters.items()}
        merged.update({k: dict(v) for k, v in _gauges.items()})
        return merged


def reset() -> None:
    """Forget every value (the declarations stay)."""
    with _lock:
        _counters.clear()
        _gauges.clear()


def header(name: str) -> list[str]:
    """The ``# HELP`` and ``# TYPE`` lines of a declared family; raises for an undeclared one."""
    family = FAMILIES.get(name)
    if family is None:
        raise UndeclaredMetric(f"metric {name} has no declaration, so no HELP: declare it in ferryman.metrics")
    help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {family.kind}"]


def render(extra: dict[str, Series] | None = None) -> str:
    """Prometheus text exposition format (version 0.0.4) of every counter and gauge.

    ``extra`` adds families computed at the scrape (the HTTP registry's counters, the
    state database's gauges); where it names a series this process also holds, its value
    wins. Every family is written with its declared HELP and TYPE.
    """
    with _lock:
        values = {n: dict(s) for n, s in _counters.items()}
        values.update({n: dict(s) for n, s in _gauges.items()})
    for name, series in (extra or {}).items():
        values.setdefault(name, {}).update(series)
    lines: list[str] = []
    for name in sorted(values):
        lines += header(name)
        for labels, value in sorted(values[name].items()):
            lines.append(sample(name, labels, value))
    return "\n".join(lines) + "\n"


def sample(name: str, labels: Labels, value: float) -> str:
    """One sample line: ``name{a="1",b="2"} value``."""
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{text}}} {number(value)}" if text else f"{name} {number(value)}"


def number(value: float) -> str:
    """A sample value, exact: ``:g`` kept 6 digits, turning a Unix timestamp into a multiple of 1000 s."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
