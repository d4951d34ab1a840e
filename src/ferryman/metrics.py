"""In-process counters and gauges, exported by the daemon as Prometheus text.

Kept dependency-free and cheap: a counter is a dict entry keyed by its labels.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict

_lock = threading.Lock()
_counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
_gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
HELP: dict[str, str] = {
    "ferryman_records_read_total": "Records read from sources",
    "ferryman_records_written_total": "Records written to targets (created, updated, deleted)",
    "ferryman_records_skipped_total": "Records skipped because the target already holds them",
    "ferryman_records_dead_lettered_total": "Records sent to the dead-letter table",
    "ferryman_runs_total": "Pipeline runs by outcome",
    "ferryman_cursor_lag_seconds": "Now minus the pipeline cursor's updated_at",
}


def inc(name: str, value: float = 1.0, **labels: str) -> None:
    key = tuple(sorted(labels.items()))
    with _lock:
        series = _counters[name]
        series[key] = series.get(key, 0.0) + value


def set_gauge(name: str, value: float, **labels: str) -> None:
    with _lock:
        _gauges[name][tuple(sorted(labels.items()))] = value


def snapshot() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with _lock:
        merged = {k: dict(v) for k, v in _counters.items()}
        merged.update({k: dict(v) for k, v in _gauges.items()})
        return merged


def reset() -> None:
    with _lock:
        _counters.clear()
        _gauges.clear()


def render(extra: dict[str, dict[tuple[tuple[str, str], ...], float]] | None = None) -> str:
    """Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []
    with _lock:
        groups = [(n, s, "counter") for n, s in _counters.items()] + [(n, s, "gauge") for n, s in _gauges.items()]
    for name, series, kind in sorted(groups + [(n, s, "counter") for n, s in (extra or {}).items()]):
        if name in HELP:
            lines.append(f"# HELP {name} {HELP[name]}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in sorted(series.items()):
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{name}{{{text}}} {number(value)}" if text else f"{name} {number(value)}")
    return "\n".join(lines) + "\n"


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
