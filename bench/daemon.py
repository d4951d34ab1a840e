"""The daemon at rest and at work: RSS and CPU of ``ferryman run``.
``python -m bench.daemon [--quick] [--minutes M]``

A ``sandbox generic`` process serves 2,000 contacts, tickets and invoices; the daemon has
six pipelines (each stream into two CSV systems).

- **at rest**: the six pipelines on a one-hour schedule, so after their first runs the
  daemon only waits (scheduler, watchdog, control API): CPU over a minute (target < 1%);
- **at work**: the same six every 5 seconds for M minutes (default 10; quick 1), while
  the bench changes 30 records through the app's API every 5 seconds so that runs write.
  RSS is sampled every 5 seconds. After the first minute (imports, first full syncs) it
  still rises a few MB while SQLite's page caches fill (2 MB per pooled connection at
  most); over the second half of the run it must not grow beyond noise (target: the
  least-squares slope projects to under 5 MB per 10 minutes; the slope after the first
  minute is reported too), and every run must end ok.

Both phases stop the daemon with SIGTERM and require exit status 0.
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench._common import (
    KEY,
    Report,
    Sandbox,
    child_env,
    ferryman_cmd,
    proc_cpu,
    proc_rss_mb,
    quick,
    timed,
)
from bench.pull import contacts_stream

REST_TARGET = 1.0  # % of one core
GROWTH_TARGET = 5.0  # MB per 10 minutes


def streams() -> dict[str, Any]:
    contacts = contacts_stream()
    tickets = {
        **{k: v for k, v in contacts.items() if k not in ("natural_key", "find", "fields", "item", "create", "update")},
        "record": "ticket",
        "path": "/tickets",
        "fields": {"subject": "subject", "status": "status", "priority": "priority", "created_at": "created_at"},
    }
    invoices = {
        **{k: v for k, v in contacts.items() if k not in ("natural_key", "find", "fields", "item", "create", "update")},
        "record": "invoice",
        "path": "/invoices",
        "fields": {
            "number": "number",
            "customer_key": "customer_id",
            "amount": "amount",
            "currency": "currency",
            "status": "status",
            "issued_on": "issued_on",
            "due_on": "due_on",
        },
    }
    return {"contacts": contacts, "tickets": tickets, "invoices": invoices}


def write_config(directory: Path, url: str, every: str) -> Path:
    pipelines = {
        f"{stream}-{out}": {"from": f"app.{stream}", "to": f"{out}.{stream}", "schedule": {"every": every}}
        for stream in ("contacts", "tickets", "invoices")
        for out in ("out", "copy")
    }
    doc = {
        "version": 1,
        "state": {"url": f"sqlite:///{directory / 'state.db'}"},
        "log": {"level": "warning", "format": "json"},
        "control": {"listen": f"unix:{directory / 'control.sock'}"},
        "systems": {
            "app": {
                "connector": "rest",
                "base_url": f"{url}/api",
                "auth": {"type": "header", "name": "X-API-Key", "key": "${BENCH_KEY}"},
                "streams": streams(),
            },
            "out": {"connector": "csv", "directory": str(directory / "out")},
            "copy": {"connector": "csv", "directory": str(directory / "copy")},
        },
        "pipelines": pipelines,
    }
    path = directory / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Daemon:
    """``ferryman run`` as a child process, sampled through /proc."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [*ferryman_cmd(), "--config", str(config), "run"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=child_env({"BENCH_KEY": KEY}),
            cwd=config.parent,
        )

    def sample(self) -> tuple[float, float, float]:
        """(monotonic time, CPU seconds so far, RSS MB)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited {self.proc.returncode}")
        return time.monotonic(), proc_cpu(self.proc.pid), proc_rss_mb(self.proc.pid)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        return code


def changer(url: str, stop: threading.Event, every: float = 5.0, count: int = 30) -> None:
    """Change ``count`` random records every ``every`` seconds, so that runs have work."""
    rng = random.Random(7)
    fields = {"contacts": ("last_name", "Changed"), "tickets": ("priority", "high"), "invoices": ("status", "paid")}
    with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=30) as client:
        n = 0
        while not stop.wait(every):
            for _ in range(count):
                stream = rng.choice(list(fields))
                name, value = fields[stream]
                if stream == "contacts":
                    value = f"{value} {n}"
                n += 1
                client.patch(f"/api/{stream}/{rng.randint(1, 2000)}", json={name: value})


def runs_summary(state: Path) -> dict[str, int]:
    import sqlite3

    with sqlite3.connect(state) as db:
        return dict(db.execute("SELECT outcome, count(*) FROM runs GROUP BY outcome").fetchall())


def slope_per_10min(samples: list[tuple[float, float, float]]) -> float:
    times = [s[0] for s in samples]
    rss = [s[2] for s in samples]
    if len(samples) < 3:
        return 0.0
    return statistics.linear_regression(times, rss).slope * 600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.daemon", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 minute at work, 20 s at rest")
    parser.add_argument("--minutes", type=float, help="minutes at work (default 10; quick 1)")
    args = parser.parse_args(argv)
    fast = args.quick or quick()
    minutes = args.minutes or (1.0 if fast else 10.0)
    rest_seconds = 20.0 if fast else 60.0
    warmup = 20.0 if fast else 60.0
    report = Report("daemon")
    print(f"daemon: {rest_seconds:.0f} s at rest, {minutes:g} min at work (6 pipelines every 5 s)")
    with (
        timed(report),
        tempfile.TemporaryDirectory(prefix="ferryman-bench-daemon-") as tmp,
        Sandbox(2000, streams="contacts,tickets,invoices") as sandbox,
    ):
        work = Path(tmp)
        # -- at rest ---------------------------------------------------------------
        rest_dir = work / "rest"
        rest_dir.mkdir()
        daemon = Daemon(write_config(rest_dir, sandbox.url, "1h"), rest_dir / "daemon.log")
        time.sleep(10)  # start-up and the six first runs
        first = daemon.sample()
        time.sleep(rest_seconds)
        last = daemon.sample()
        code = daemon.stop()
        cpu_rest = (last[1] - first[1]) / (last[0] - first[0]) * 100
        report.add(
            "at rest: CPU (share of one core)", f"{cpu_rest:.2f}%", f"< {REST_TARGET:g}%", cpu_rest < REST_TARGET
        )
        report.add("at rest: RSS", f"{last[2]:.0f} MB")
        report.add("at rest: exit status after SIGTERM", str(code), "0", code == 0)

        # -- at work ---------------------------------------------------------------
        busy_dir = work / "work"
        busy_dir.mkdir()
        daemon = Daemon(write_config(busy_dir, sandbox.url, "5s"), busy_dir / "daemon.log")
        stop = threading.Event()
        thread = threading.Thread(target=changer, args=(sandbox.url, stop), daemon=True)
        thread.start()
        samples: list[tuple[float, float, float]] = []
        started = time.monotonic()
        try:
            while time.monotonic() - started < minutes * 60:
                time.sleep(5)
                samples.append(daemon.sample())
                if len(samples) % 12 == 0:
                    print(f"  {samples[-1][0] - started:5.0f} s: RSS {samples[-1][2]:.1f} MB", flush=True)
        finally:
            stop.set()
            thread.join(10)
            code = daemon.stop()
        settled = [s for s in samples if s[0] - started >= warmup]
        late = settled[len(settled) // 2 :]
        growth = slope_per_10min(late)
        cpu_work = (samples[-1][1] - settled[0][1]) / (samples[-1][0] - settled[0][0]) * 100
        outcomes = runs_summary(busy_dir / "state.db")
        ok_runs = outcomes.get("ok", 0)
        report.add(
            "at work: RSS after warm-up -> end (max)",
            f"{settled[0][2]:.1f} -> {samples[-1][2]:.1f} MB ({max(s[2] for s in samples):.1f})",
        )
        report.add("at work: RSS trend after warm-up (whole)", f"{slope_per_10min(settled):+.1f} MB/10 min")
        report.add(
            "at work: RSS trend over the second half",
            f"{growth:+.1f} MB/10 min",
            f"< {GROWTH_TARGET:g} MB/10 min",
            growth < GROWTH_TARGET,
        )
        report.add("at work: CPU (share of one core)", f"{cpu_work:.1f}%")
        report.add(
            "at work: runs (ok / all)",
            f"{ok_runs} / {sum(outcomes.values())}",
            "all ok",
            ok_runs == sum(outcomes.values()) and ok_runs > 0,
        )
        report.add("at work: exit status after SIGTERM", str(code), "0", code == 0)
        expected = int(minutes * 60 / 5) * 6
        report.note(f"{ok_runs} runs in {minutes:g} min; 6 pipelines every 5 s would be about {expected}")
    return 1 if report.missed else 0


if __name__ == "__main__":
    sys.exit(main())
