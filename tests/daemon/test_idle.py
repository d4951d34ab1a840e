"""What the daemon costs between runs: CPU time from /proc/PID/stat over a quiet window,
with a few pipelines scheduled every few seconds and then with nothing due for an hour."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import yaml

from tests.daemon.support import Daemon, csv_system, free_port, write_config, write_tickets

WINDOW = float(os.environ.get("FERRYMAN_IDLE_WINDOW", "5"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_share(pid: int, seconds: float) -> float:
    """Share of one CPU the process used over ``seconds`` of wall time."""
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)


def test_idle_cpu(tmp_path: Path, default_state_url: str) -> None:
    systems = {"out": csv_system(tmp_path / "out")}
    pipelines = {}
    for name, every in (("p1", "2s"), ("p2", "3s"), ("p3", "5s")):
        write_tickets(tmp_path / name / "tickets.csv", 20)
        systems[f"{name}_in"] = csv_system(tmp_path / name)
        pipelines[name] = {"from": f"{name}_in.tickets", "to": f"out.{name}", "schedule": {"every": every}}
    systems["out"]["streams"] = {name: "ticket" for name in pipelines}
    config = write_config(
        tmp_path / "ferryman.yaml",
        state_url=default_state_url,
        systems=systems,
        pipelines=pipelines,
        listen=f"127.0.0.1:{free_port()}",
    )
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        deadline = time.monotonic() + 30
        while len({r["pipeline"] for r in daemon.runs() if r["outcome"] == "ok"}) < 3:
            assert time.monotonic() < deadline, daemon.log_text()
            time.sleep(0.1)
        busy = cpu_share(daemon.pid, WINDOW)
        runs = len(daemon.runs())

        # nothing due for an hour: the daemon only wakes for its timers
        quiet = yaml.safe_load(config.read_text())
        for pipeline in quiet["pipelines"].values():
            pipeline["schedule"] = {"every": "1h"}
        config.write_text(yaml.safe_dump(quiet))
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("config.reloaded")
        time.sleep(0.5)
        rest = cpu_share(daemon.pid, WINDOW)

        print(
            f"\ndaemon CPU: {busy:.2%} of one core with 3 pipelines every 2-5 s "
            f"({runs} runs so far); {rest:.2%} with nothing due"
        )
        # a run of an unchanged 20-row CSV costs a few ms; between runs the loop sleeps
        assert busy < 0.08, f"{busy:.2%}"
        assert rest < 0.01, f"{rest:.2%} at rest"
        code, _ = daemon.stop()
        assert code == 0
    finally:
        daemon.kill()
