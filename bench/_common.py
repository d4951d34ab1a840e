"""What every benchmark shares: quick mode, child processes measured by ``wait4``, the
sandbox process, medians, and the results files ``python -m bench`` turns into a table.

The machine these run on may be busy (two cores, other work): every figure that matters is
a median of repeats, CPU time (user + system, from the child's own rusage) is reported
next to wall time, and throughput is given as a ratio against a baseline measured in the
same run, so that load on the machine slows both sides alike.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
KEY = "sandbox-key"


def quick() -> bool:
    """Quick mode (``BENCH_QUICK=1`` or ``--quick``): smaller sizes, fewer repeats."""
    return os.environ.get("BENCH_QUICK", "").lower() in ("1", "true", "yes") or "--quick" in sys.argv


def ferryman_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("ferryman")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ferryman"]


PYCACHE = Path(tempfile.gettempdir()) / "ferryman-bench-pycache"


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for measured children: bytecode cached (as after any install; outside
    the source tree), no systemd notify socket."""
    env = {**os.environ, **(extra or {})}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


@dataclass
class Child:
    """One finished child process: wall and CPU seconds, peak RSS (MiB), exit status, output."""

    wall: float
    cpu: float
    max_rss_mb: float
    returncode: int
    stdout: str
    stderr: str

    def check(self, what: str) -> Child:
        if self.returncode != 0:
            raise RuntimeError(f"{what} exited {self.returncode}:\n{self.stdout[-2000:]}\n{self.stderr[-4000:]}")
        return self


def run_child(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Child:
    """Run ``cmd`` to the end. Its CPU time comes from ``wait4`` (this child only); its peak
    RSS from ``VmHWM`` polled while it runs, because ``ru_maxrss`` also counts the memory of
    this (forking) process before the child's exec."""
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-child-{os.getpid()}-{time.monotonic_ns()}"
    with open(f"{out_path}.out", "w+") as out, open(f"{out_path}.err", "w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=child_env(env), cwd=cwd)
        peak = PeakRss(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        peak.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    for suffix in (".out", ".err"):
        Path(f"{out_path}{suffix}").unlink(missing_ok=True)
    return Child(wall, usage.ru_utime + usage.ru_stime, peak.mb, proc.returncode, stdout, stderr)


class PeakRss:
    """The largest ``VmHWM`` (peak resident set of the current program image) a process shows
    while it runs, polled every 10 ms from a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.mb = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        # Popen returns once the child has exec'd, so every reading is of the child's own image.
        path = Path(f"/proc/{self.pid}/status")
        while not self._done.is_set():
            try:
                text = path.read_text()
                for line in text.splitlines():
                    if line.startswith("VmHWM:"):
                        self.mb = max(self.mb, int(line.split()[1]) / 1024)
            except (OSError, ValueError):
                pass
            self._done.wait(0.01)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_rss_mb(pid: int) -> float:
    """Resident memory of a running process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sandbox:
    """``python -m bench._sandbox`` as a separate process (its memory and CPU are not Ferryman's)."""

    def __init__(self, records: int, *, streams: str = "contacts", extra: Sequence[str] = ()) -> None:
        self.records = records
        self.cmd = [
            sys.executable,
            "-m",
            "bench._sandbox",
            "--records",
            str(records),
            "--streams",
            streams,
            *extra,
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.started_in = 0.0

    def __enter__(self) -> Sandbox:
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT.parent, env=child_env())
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http"):
            self.proc.kill()
            raise RuntimeError(f"the sandbox did not start: {line!r}")
        self.url = line
        self.started_in = time.perf_counter() - started
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def rss_mb(self) -> float:
        return proc_rss_mb(self.pid)

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/__sandbox/stats", timeout=30).json())

    def reset_stats(self) -> None:
        httpx.post(f"{self.url}/__sandbox/reset-stats", timeout=30).raise_for_status()

    def requests(self) -> int:
        """API requests served since the last reset (admin routes are not counted)."""
        return int(self.stats()["requests"])


# -- results -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table."""

    bench: str
    metric: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: no target


@dataclass
class Report:
    """What one benchmark found: table rows and notes, saved to ``bench/results/NAME.json``."""

    name: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    quick: bool = field(default_factory=quick)
    seconds: float = 0.0

    def add(self, metric: str, value: str, target: str = "", ok: bool | None = None) -> None:
        self.rows.append(Row(self.name, metric, value, target, ok))
        mark = "" if ok is None else ("  ok" if ok else "  MISSED")
        print(f"  {metric:<58} {value:>24}  {target}{mark}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def save(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        data = {**asdict(self), "machine": machine(), "date": datetime.now(UTC).isoformat(timespec="seconds")}
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    @property
    def missed(self) -> bool:
        return any(r.ok is False for r in self.rows)


def load_report(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return None
    return dict(json.loads(path.read_text()))


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model, Python and the load when measured."""
    mem_kb = 0
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "cpu": model,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


@contextmanager
def timed(report: Report) -> Iterator[Report]:
    started = time.perf_counter()
    try:
        yield report
    finally:
        report.seconds = round(time.perf_counter() - started, 1)
        report.save()


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}/s"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}"
