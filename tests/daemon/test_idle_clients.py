"""The control API under clients that connect and then say nothing, or say it slowly: the
daemon keeps answering /healthz, keeps running its schedule, keeps its log small, closes
such connections after its timeouts, and stops feeding systemd's watchdog when it can no
longer do its work (so systemd restarts it), and only then."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog

from ferryman import logs
from ferryman.daemon._api import BACKLOG, BODY_TIMEOUT, FILES_RESERVED, HEADER_TIMEOUT, connection_cap
from tests.daemon.support import Daemon, NotifySocket, csv_system, free_port, write_config, write_tickets
from tests.daemon.test_systemd_units import directives

IDLE_SOCKETS = 1000
SLOW_HEADERS = 20
SLOW_BODIES = 20
# systemd's default soft limit for a service without LimitNOFILE=: 1,000 idle sockets
# plus the daemon's own files are more than it allows
DAEMON_NOFILE = 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def set_nofile(pid: int, limit: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))


def connect_quietly(port: int) -> socket.socket:
    """A connection that is opened and then says nothing (the connect is not waited for:
    a daemon that stopped accepting must not stall the test)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    code = sock.connect_ex(("127.0.0.1", port))
    assert code in (0, errno.EINPROGRESS), os.strerror(code)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset, or never connected: the daemon does not hold it
    if not data:
        return True
    # an answer (408, 503) may come before the close: look again for the EOF
    with contextlib.suppress(BlockingIOError):
        return closed_by_peer(sock)
    return False


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for sock in held:
            sock.close()


def test_idle_and_slow_clients_do_not_take_the_daemon_down(tmp_path: Path, default_state_url: str) -> None:
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > IDLE_SOCKETS + SLOW_HEADERS + SLOW_BODIES + 200
    write_tickets(tmp_path / "in" / "tickets.csv", 20)
    port = free_port()
    config = write_config(
        tmp_path / "ferryman.yaml",
        state_url=default_state_url,
        systems={"inbox": csv_system(tmp_path / "in"), "out": csv_system(tmp_path / "out")},
        pipelines={"tickets": {"from": "inbox.tickets", "to": "out.tickets", "schedule": {"every": "1s"}}},
        listen=f"127.0.0.1:{port}",
    )
    notify = NotifySocket()
    daemon = Daemon(config, notify=notify, env={"WATCHDOG_USEC": "1000000"})
    try:
        daemon.wait_ready()
        set_nofile(daemon.pid, DAEMON_NOFILE)
        deadline = time.monotonic() + 20
        while not any(r["outcome"] == "ok" for r in daemon.runs("tickets")):
            assert time.monotonic() < deadline, daemon.log_text()
            time.sleep(0.1)
        log_before = daemon.log_path.stat().st_size
        runs_before = len(daemon.runs("tickets"))

        with sockets() as held:
            flood_started = time.monotonic()
            for i in range(IDLE_SOCKETS):
                held.append(connect_quietly(port))
                if i % 50 == 49:
                    # a thousand at once would overflow the kernel's accept queue: those wait
                    # for SYN-ACK retries (up to a minute) before the daemon even sees them
                    time.sleep(0.05)
            slow: list[socket.socket] = []
            for i in range(SLOW_HEADERS + SLOW_BODIES):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                if i < SLOW_HEADERS:  # headers that never end
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: ferryman\r\nX-Slow: ")
                else:  # a body that never comes
                    sock.sendall(
                        b"POST /v1/pipelines/tickets/trigger HTTP/1.1\r\nHost: ferryman\r\n"
                        b"Content-Length: 1000\r\n\r\n{"
                    )
                sock.setblocking(False)
                slow.append(sock)
            held.extend(slow)

            # the daemon answers and keeps its schedule while they sit there
            answered = []
            ping_count = len(notify.times_of("WATCHDOG=1"))
            while time.monotonic() - flood_started < HEADER_TIMEOUT + 2:
                for sock in slow[:SLOW_HEADERS]:
                    with contextlib.suppress(OSError):
                        sock.send(b"x")  # a byte now and then keeps no connection alive
                started = time.monotonic()
                try:
                    with httpx.Client(timeout=2.0, trust_env=False) as client:
                        status = client.get(f"http://127.0.0.1:{port}/healthz").status_code
                except httpx.HTTPError as exc:
                    raise AssertionError(
                        f"/healthz did not answer within 2 s with {len(held)} idle and slow connections "
                        f"open: {exc!r}; log:\n{daemon.log_text()[-3000:]}"
                    ) from None
                answered.append((status, time.monotonic() - started))
                time.sleep(0.5)
            assert all(status == 200 for status, _ in answered), answered
            assert max(seconds for _, seconds in answered) < 2.0, answered

            # and closes them: none may outlive the header timeout by much
            deadline = flood_started + max(HEADER_TIMEOUT, BODY_TIMEOUT) + 10
            while (still_open := [s for s in held if not closed_by_peer(s)]) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert not still_open, (
                f"{len(still_open)} of {len(held)} idle or slow connections still open "
                f"{time.monotonic() - flood_started:.0f} s after they were opened"
            )
            assert open_fds(daemon.pid) < 200, "the daemon still holds the connections' files"

        runs = [r for r in daemon.runs("tickets")[runs_before:] if r["ended_at"] is not None]  # not the one running
        assert len([r for r in runs if r["outcome"] == "ok"]) >= 3, runs
        assert all(r["outcome"] == "ok" for r in runs), [r for r in runs if r["outcome"] != "ok"]
        # the daemon could work all along: systemd's watchdog kept being fed
        assert len(notify.times_of("WATCHDOG=1")) - ping_count >= HEADER_TIMEOUT, notify.texts()[-5:]

        written = daemon.log_path.stat().st_size - log_before
        text = daemon.log_text()
        assert "Traceback" not in text, text[-3000:]
        # a few lines per scheduled run, nothing per connection
        assert written < 64 * 1024, f"{written} bytes of log in {time.monotonic() - flood_started:.0f} s"
        assert daemon.get("/healthz").status_code == 200
        code, _ = daemon.stop()
        assert code == 0, daemon.log_text()[-3000:]
    finally:
        daemon.kill()
        notify.close()


def test_the_watchdog_stops_while_the_daemon_cannot_open_files(tmp_path: Path, default_state_url: str) -> None:
    write_tickets(tmp_path / "in" / "tickets.csv", 5)
    config = write_config(
        tmp_path / "ferryman.yaml",
        state_url=default_state_url,
        systems={"inbox": csv_system(tmp_path / "in"), "out": csv_system(tmp_path / "out")},
        pipelines={"tickets": {"from": "inbox.tickets", "to": "out.tickets", "schedule": {"every": "1s"}}},
        listen=f"127.0.0.1:{free_port()}",
    )
    notify = NotifySocket()
    daemon = Daemon(config, notify=notify, env={"WATCHDOG_USEC": "1000000"})  # a ping every 0.5 s
    try:
        daemon.wait_ready()
        limit = resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE)
        deadline = time.monotonic() + 10
        while len(notify.times_of("WATCHDOG=1")) < 4:
            assert time.monotonic() < deadline, notify.texts()
            time.sleep(0.1)

        # the files run out under it (as they did when idle sockets held them): no file
        # for a database connection, a CSV file or an app's socket
        resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (open_fds(daemon.pid) + 2, limit[1]))
        withheld = daemon.wait_event("watchdog.withheld", timeout=10)
        assert "file" in withheld["reason"], withheld
        last_ping = max(notify.times_of("WATCHDOG=1"))
        time.sleep(3)
        late = [t for t in notify.times_of("WATCHDOG=1") if t > last_ping]
        assert not late, f"{len(late)} pings while the daemon could not open a file"

        # files again: the pings resume (systemd, had it waited WatchdogSec, would have restarted it)
        resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, limit)
        daemon.wait_event("watchdog.resumed", timeout=10)
        deadline = time.monotonic() + 5
        while not [t for t in notify.times_of("WATCHDOG=1") if t > last_ping]:
            assert time.monotonic() < deadline, notify.texts()[-5:]
            time.sleep(0.1)
        assert "Traceback" not in daemon.log_text()
    finally:
        daemon.kill()
        notify.close()


@pytest.fixture
def rate_limited_log() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    logs.limit_rate(5)
    try:
        yield out
    finally:
        logs.limit_rate(None)
        logs.configure("info", "json", stream=io.StringIO())
        structlog.reset_defaults()


def test_the_same_error_is_logged_a_few_times_a_second_with_a_count(rate_limited_log: io.StringIO) -> None:
    log = structlog.get_logger("ferryman.test")
    std = logging.getLogger("asyncio")
    started = time.monotonic()
    for _ in range(500):  # 2,000 could take a second beside 3 xdist workers: the window is one second
        log.error("api.accept_failed", error="Too many open files")
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError:
            std.exception("socket.accept() out of system resource")
    log.info("run.finished", pipeline="tickets")  # another event is not held back by them
    assert time.monotonic() - started < 1.0, "the test must stay within one rate window"
    time.sleep(1.1)
    logs.flush_suppressed()

    lines = rate_limited_log.getvalue().splitlines()
    assert len(lines) < 100, lines[:100]
    assert sum("api.accept_failed" in line for line in lines) <= 6
    assert sum(line.startswith("ERROR asyncio") for line in lines) <= 5
    assert sum(line.startswith("Traceback") for line in lines) <= 5
    assert any('"run.finished"' in line for line in lines)
    summaries = [json.loads(line) for line in lines if '"log.suppressed"' in line]
    counted = {s["suppressed_event"]: s["count"] for s in summaries}
    assert counted.get("api.accept_failed") == 495, summaries
    assert counted.get("asyncio: socket.accept() out of system resource") == 495, summaries


def test_the_units_give_the_daemon_files_to_spare_and_retry_after_an_outage() -> None:
    for unit in ("ferryman.service", "ferryman-sync@.service"):
        found = directives(unit)
        assert "LimitNOFILE" in found, f"{unit}: without LimitNOFILE= the soft limit is 1024, whatever the host"
        limit = int(found["LimitNOFILE"][0])
        # connections, a burst of accepts beside them, and the files kept for the work itself
        assert connection_cap(limit) + 2 * BACKLOG + FILES_RESERVED <= limit
    service = directives("ferryman.service")
    # 75 (EX_TEMPFAIL) is an outage: restarted, not counted as a failure; 78 still stops the loop
    assert "75" in service["SuccessExitStatus"][0].split()
    assert "75" in service["RestartForceExitStatus"][0].split()
    assert service["RestartPreventExitStatus"] == ["78"]
    assert "75" in directives("ferryman-sync@.service")["SuccessExitStatus"][0].split()
