"""A PostgreSQL that hangs (accepts bytes, answers nothing) must not freeze the daemon.

The state database is reached through a loopback TCP relay that the test can freeze: the
connections stay open, and nothing passes either way, as with a stopped server or a
network path that silently drops everything. While it is frozen, `/healthz` answers 503
("db: no answer for Ns") within 2 s every time, the systemd watchdog keeps being fed on
time (a hung database is not something a restart cures), and runs in progress simply
wait or fail as an outage. After it thaws, the daemon is healthy again and a later run
succeeds, with every record at the target exactly once.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from tests.daemon.support import Daemon, NotifySocket, csv_system, read_keys, short_dir, write_tickets

pytestmark = pytest.mark.postgres

WATCHDOG_USEC = 2_000_000  # a ping every second
ROWS = 20_000


class FreezableRelay:
    """127.0.0.1:PORT -> the real server; ``freeze()`` stops every byte both ways (and new
    connections get no answer) until ``thaw()``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.flowing = threading.Event()
        self.flowing.set()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        self._closed = True
        self.flowing.set()
        self._server.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        self.flowing.wait()
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        self._sockets += [client, server]
        for a, b in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()  # held here, unsent, while frozen
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def relayed(state_url: str) -> Iterator[tuple[str, FreezableRelay]]:
    if not state_url.startswith("postgresql"):
        pytest.skip("the hang is a PostgreSQL server's (SQLite has no server to hang)")
    parts = urlsplit(state_url)
    relay = FreezableRelay((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{relay.port}"
    url = urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))
    try:
        yield url, relay
    finally:
        relay.close()


def hang_for(tmp_path: Path, url: str, relay: FreezableRelay, seconds: float) -> None:
    write_tickets(tmp_path / "in" / "tickets.csv", ROWS)
    sock_dir = short_dir()
    config = tmp_path / "ferryman.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state": {"url": url, "lease_ttl": "10s"},
                "log": {"format": "json", "level": "info"},
                "control": {"listen": f"unix:{sock_dir / 'c.sock'}"},
                "systems": {"src": csv_system(tmp_path / "in"), "out": csv_system(tmp_path / "out")},
                "pipelines": {
                    "big": {"from": "src.tickets", "to": "out.tickets", "page_size": 100, "schedule": {"every": "2s"}}
                },
            },
            sort_keys=False,
        )
    )
    notify = NotifySocket()
    daemon = Daemon(config, notify=notify, env={"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    answers: list[tuple[float, float, int, str]] = []  # (at, seconds to answer, status, body)
    try:
        daemon.wait_ready()
        deadline = time.monotonic() + 30
        while not any(r["outcome"] == "running" and r["read"] > 0 for r in daemon.runs("big")):
            assert time.monotonic() < deadline, daemon.log_text()[-3000:]
            time.sleep(0.05)
        frozen_at = time.monotonic()
        relay.freeze()
        with daemon.client(timeout=10) as client:
            while time.monotonic() - frozen_at < seconds:
                began = time.monotonic()
                response = client.get("/healthz")
                answers.append((began - frozen_at, time.monotonic() - began, response.status_code, response.text))
                time.sleep(max(0.0, 0.5 - (time.monotonic() - began)))
        thawed_at = time.monotonic()
        relay.thaw()
        healthy_again: float | None = None
        with daemon.client(timeout=10) as client:
            while time.monotonic() - thawed_at < 30:
                if client.get("/healthz").status_code == 200:
                    healthy_again = time.monotonic() - thawed_at
                    break
                time.sleep(0.2)
        assert healthy_again is not None, daemon.log_text()[-3000:]
        # a later run completes everything
        deadline = time.monotonic() + 90
        while not [r for r in daemon.runs("big") if r["outcome"] == "ok" and r["started_at"] is not None]:
            assert time.monotonic() < deadline, daemon.log_text()[-3000:]
            time.sleep(0.2)
        pings = [t for t in notify.times_of("WATCHDOG=1") if frozen_at - 2 <= t <= thawed_at + 2]
        code, _ = daemon.stop()
        assert code == 0, daemon.log_text()[-3000:]
    finally:
        relay.thaw()
        daemon.kill()
        notify.close()
        for leftover in sock_dir.iterdir():
            leftover.unlink()
        sock_dir.rmdir()
    interval = WATCHDOG_USEC / 2 / 1_000_000
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    slowest = max(seconds for _, seconds, _, _ in answers)
    unhealthy = [a for a in answers if a[2] == 503]
    print(
        f"\nhung {seconds:g}s: {len(answers)} /healthz answers, slowest {slowest:.2f}s, "
        f"{len(unhealthy)} of them 503; watchdog pings {len(pings)}, largest gap {max(gaps):.2f}s "
        f"(interval {interval:g}s); healthy again {healthy_again:.1f}s after the thaw"
    )
    assert slowest < 2.0, [a for a in answers if a[1] >= 2.0]
    # from the moment a probe has gone unanswered for the health timeout, every answer is 503
    late = [a for a in answers if a[0] >= 2.0]
    assert late and all(a[2] == 503 and "no answer" in a[3] for a in late), late[:3]
    assert gaps and max(gaps) <= 2 * interval, gaps
    assert len(pings) >= (thawed_at - frozen_at) / interval - 2
    counts = Counter(read_keys(tmp_path / "out" / "tickets.csv"))
    assert len(counts) == ROWS and max(counts.values()) == 1, "every record exactly once"


def test_a_hung_database_leaves_health_and_watchdog_answering(
    tmp_path: Path, relayed: tuple[str, FreezableRelay]
) -> None:
    hang_for(tmp_path, *relayed, float(os.environ.get("FERRYMAN_HANG_SECONDS", "8")))


@pytest.mark.slow  # the 45 s: make test-slow
def test_a_database_hung_for_45_seconds_leaves_health_and_watchdog_answering(
    tmp_path: Path, relayed: tuple[str, FreezableRelay]
) -> None:
    hang_for(tmp_path, *relayed, 45.0)
