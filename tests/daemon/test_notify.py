"""The systemd protocol, seen from a fake NOTIFY_SOCKET: READY=1 once the daemon can be
used, STATUS= after each run, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM
and a clean exit with the cursor committed."""

from __future__ import annotations

import itertools
import os
import socket
import statistics
import time
from pathlib import Path

from ferryman.daemon._notify import Notifier
from tests.daemon.support import (
    Daemon,
    NotifySocket,
    csv_system,
    free_port,
    read_keys,
    short_dir,
    write_config,
    write_tickets,
)


def test_ready_status_watchdog_stopping(tmp_path: Path, default_state_url: str) -> None:
    write_tickets(tmp_path / "in" / "tickets.csv", 300)
    config = write_config(
        tmp_path / "ferryman.yaml",
        state_url=default_state_url,
        systems={"inbox": csv_system(tmp_path / "in"), "out": csv_system(tmp_path / "out")},
        pipelines={
            "tickets-to-csv": {
                "from": "inbox.tickets",
                "to": "out.tickets",
                "page_size": 100,
                "schedule": {"every": "1s"},
            }
        },
        listen=f"127.0.0.1:{free_port()}",
    )
    notify = NotifySocket()
    daemon = Daemon(config, notify=notify, env={"WATCHDOG_USEC": "400000"})
    try:
        ready_index, ready = notify.wait_for(lambda t: "READY=1" in t.split("\n"))
        # READY means usable: the control API answers at once
        assert daemon.get("/healthz").status_code == 200
        assert "STATUS=ready: 1 scheduled" in ready

        # the catch-up run at start and then the 1 s schedule report themselves
        first_index, first = notify.wait_for(lambda t: t.startswith("STATUS=last: "), after=ready_index)
        assert first.startswith("STATUS=last: tickets-to-csv ok 300 records 20")
        assert first.endswith("Z")
        second_index, _ = notify.wait_for(
            lambda t: t.startswith("STATUS=last: tickets-to-csv ok"), after=first_index + 1
        )
        notify.wait_for(lambda t: t.startswith("STATUS=last: tickets-to-csv ok"), after=second_index + 1)

        deadline = time.monotonic() + 10
        while len(pings := notify.times_of("WATCHDOG=1")) < 15:
            assert time.monotonic() < deadline, f"only {len(pings)} watchdog pings"
            time.sleep(0.05)
        intervals = [b - a for a, b in itertools.pairwise(pings)]
        # WATCHDOG_USEC=400000: a ping every 0.2 s, from the event loop (which a run may hold
        # for a moment between pages, more so on a loaded machine)
        assert 0.17 <= statistics.median(intervals) <= 0.3, intervals
        assert sum(i < 0.4 for i in intervals) >= 0.8 * len(intervals), intervals
        assert max(intervals) < 2.0, intervals

        code, seconds = daemon.stop()
        assert code == 0, daemon.log_text()
        assert seconds < 10
        # sent before the exit; the datagram may still sit in the socket's queue
        _, stopping = notify.wait_for(lambda t: "STOPPING=1" in t.split("\n"), timeout=5)
        assert stopping == "STOPPING=1\nSTATUS=stopping: finishing the pages in hand"
    finally:
        daemon.kill()
        notify.close()

    store = daemon.store()
    try:
        cursor = store.get_cursor("tickets-to-csv")
        assert cursor is not None and cursor.key == "T000299"
        runs = store.runs("tickets-to-csv")
        assert runs and all(r["outcome"] == "ok" for r in runs)
        assert all(r["ended_at"] is not None for r in runs), "every run finished before exit"
    finally:
        store.close()
    assert sorted(read_keys(tmp_path / "out" / "tickets.csv")) == [f"T{i:06d}" for i in range(300)]
    events = {e["event"] for e in daemon.events()}
    assert {"daemon.ready", "daemon.stopping", "daemon.stopped"} <= events


def test_nothing_is_sent_without_notify_socket() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert notifier.watchdog_interval() is None


def test_abstract_socket_and_watchdog_pid() -> None:
    name = f"ferryman-test-{os.getpid()}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(2)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "30000000"})
        assert notifier.watchdog_interval() == 15.0
        assert notifier.notify("STATUS=two\nlines", "READY=1")
        assert receiver.recv(1024) == b"STATUS=two lines\nREADY=1"
        notifier.close()
    finally:
        receiver.close()
    # a watchdog meant for another process of the unit is not ours to feed
    other = Notifier({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval() is None


def test_unreachable_notify_socket_does_not_break_the_daemon_side() -> None:
    directory = short_dir()
    notifier = Notifier({"NOTIFY_SOCKET": str(directory / "gone")})
    assert notifier.notify("READY=1") is False
    notifier.close()
    directory.rmdir()
