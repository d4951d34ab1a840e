"""SIGTERM in the middle of a long sync: the run finishes the page in hand, commits and the
daemon exits 0 well within the stop timeout; the next start resumes from the cursor and
the target ends up with every record exactly once."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

from tests.conftest import run_cli
from tests.daemon.support import Daemon, NotifySocket, csv_system, free_port, read_keys, write_config, write_tickets

# 200,000 rows take ~30 s on a small machine (FERRYMAN_DAEMON_ROWS=200000); the default keeps the suite quick.
ROWS = int(os.environ.get("FERRYMAN_DAEMON_ROWS", "20000"))
STOP_TIMEOUT = 20.0  # what TimeoutStopSec would be; --drain-timeout is set to it


def test_sigterm_mid_sync_then_resume(tmp_path: Path, default_state_url: str) -> None:
    write_tickets(tmp_path / "in" / "tickets.csv", ROWS)
    config = write_config(
        tmp_path / "ferryman.yaml",
        state_url=default_state_url,
        systems={"inbox": csv_system(tmp_path / "in"), "out": csv_system(tmp_path / "out")},
        pipelines={
            "bulk": {
                "from": "inbox.tickets",
                "to": "out.tickets",
                "page_size": 200,
                "schedule": {"every": "1h"},  # never ran: runs at start-up
            }
        },
        listen=f"127.0.0.1:{free_port()}",
    )
    target = tmp_path / "out" / "tickets.csv"
    notify = NotifySocket()
    daemon = Daemon(config, notify=notify, drain_timeout=STOP_TIMEOUT)
    try:
        daemon.wait_ready()
        deadline = time.monotonic() + 60
        while True:
            runs = daemon.runs("bulk")
            if runs and runs[-1]["read"] >= 1000:
                break
            assert time.monotonic() < deadline, daemon.log_text()
            time.sleep(0.05)
        code, seconds = daemon.stop(timeout=STOP_TIMEOUT + 10)
        assert code == 0, daemon.log_text()
        assert seconds < STOP_TIMEOUT, f"took {seconds:.1f}s to stop"
        notify.wait_for(lambda t: "STOPPING=1" in t.split("\n"), timeout=5)
    finally:
        daemon.kill()

    (first,) = daemon.runs("bulk")
    assert first["outcome"] == "stopped", first
    assert 1000 <= first["created"] < ROWS, "stopped in the middle, not at the end"
    assert first["created"] % 200 == 0, "whole pages only"
    store = daemon.store()
    try:
        cursor = store.get_cursor("bulk")
    finally:
        store.close()
    assert cursor is not None and cursor.key == f"T{first['created'] - 1:06d}"
    # no page lost: the target holds exactly the committed pages, published, nothing torn
    assert read_keys(target) == [f"T{i:06d}" for i in range(first["created"])]
    assert not list(target.parent.glob("*.partial*"))

    # the next start resumes from the cursor (asked through `ferryman trigger`)
    daemon = Daemon(config, notify=notify, drain_timeout=STOP_TIMEOUT)
    try:
        daemon.wait_ready()
        result = run_cli("--config", str(config), "trigger", "bulk", "--wait", timeout=120)
        assert result.returncode == 0, result.stderr + daemon.log_text()
        assert result.stdout.startswith("bulk: ok (read "), result.stdout
        assert f"created {ROWS - first['created']}," in result.stdout
        code, _ = daemon.stop()
        assert code == 0
    finally:
        daemon.kill()
        notify.close()

    first_again, second = daemon.runs("bulk")
    assert first_again["id"] == first["id"]
    # its last run was moments ago, so the restart did not run it on its own; the trigger did
    assert second["trigger"] == "api"
    # it read from the cursor (less the 2-minute overlap), not from the start
    assert second["read"] <= ROWS - first["created"] + 121
    keys = read_keys(target)
    counts = Counter(keys)
    assert len(counts) == ROWS and max(counts.values()) == 1, "every record exactly once"
