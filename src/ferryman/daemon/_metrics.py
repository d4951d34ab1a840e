"""The daemon's ``/metrics``: the engine's counters, the HTTP registry's, and run durations.

:func:`ferryman.metrics.render` writes the process-wide counters and gauges; the daemon
adds a histogram of run durations per pipeline, which :mod:`ferryman.metrics` has no
type for, and replaces the engine's bare ``ferryman_run_duration_seconds_sum`` counter
with it (the histogram's ``_sum`` is the same number, so one family must own the name).
"""

from __future__ import annotations

import math
import threading

from ferryman import metrics

__all__ = ["RunDurations", "render"]

BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, math.inf)
_REPLACED = ("ferryman_run_duration_seconds_sum",)


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
        lines = [
            f"# HELP {self.name} Seconds a pipeline run took, from start to its last commit",
            f"# TYPE {self.name} histogram",
        ]
        with self._lock:
            series = sorted((p, (list(c), s, n)) for p, (c, s, n) in self._series.items())
        for pipeline, (counts, total, n) in series:
            label = f'pipeline="{_escape(pipeline)}"'
            for bound, count in zip(self._buckets, counts, strict=True):
                le = "+Inf" if math.isinf(bound) else f"{bound:g}"
                lines.append(f'{self.name}_bucket{{{label},le="{le}"}} {count}')
            lines.append(f"{self.name}_sum{{{label}}} {metrics.number(total)}")
            lines.append(f"{self.name}_count{{{label}}} {n}")
        return "\n".join(lines) + "\n"


def render(durations: RunDurations, extra: dict[str, dict[tuple[tuple[str, str], ...], float]] | None = None) -> str:
    """Prometheus text (0.0.4) for the whole process."""
    base = metrics.render(extra=extra)
    kept = [line for line in base.splitlines() if _family(line) not in _REPLACED]
    return "\n".join(kept) + "\n" + durations.render()


def _family(line: str) -> str:
    if line.startswith("# "):
        parts = line.split(" ", 3)
        return parts[2] if len(parts) > 2 else ""
    return line.split("{", 1)[0].split(" ", 1)[0]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


metrics.HELP.setdefault("ferryman_pipeline_running", "1 while a run of the pipeline is in progress in this daemon")
metrics.HELP.setdefault(
    "ferryman_last_success_timestamp_seconds", "Unix time at which the pipeline's last successful run ended"
)
metrics.HELP.setdefault("ferryman_daemon_start_timestamp_seconds", "Unix time at which this daemon started")
