"""Helpers to run ``ferryman run`` as a real process: configs over CSV systems, a fake
systemd notify socket, the daemon's JSON log, and its control API."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from ferryman.state import StateStore
from tests.conftest import ferryman_cmd, free_port

FIELDS = ["key", "updated_at", "subject", "status", "requester_email"]


def write_tickets(path: Path, n: int, *, start: int = 0, stamp_base: str = "2026-01-01") -> None:
    """``n`` tickets T000000.., one second apart (so the compound cursor orders them simply)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(FIELDS)
        for i in range(start, start + n):
            stamp = f"{stamp_base}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"
            if i >= 86400:
                stamp = f"2026-01-{2 + i // 86400:02d}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"
            writer.writerow([f"T{i:06d}", stamp, f"subject {i}", "open", f"u{i}@example.com"])
    os.replace(tmp, path)


def read_keys(path: Path) -> list[str]:
    """Keys of a published CSV target, in file order (duplicates kept, so tests can see them)."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return [row["key"] for row in csv.DictReader(fh)]


def short_dir() -> Path:
    """A short directory for Unix sockets (their paths are limited to ~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="fm-", dir="/tmp"))


def write_config(
    path: Path,
    *,
    state_url: str,
    systems: dict[str, Any],
    pipelines: dict[str, Any],
    listen: str,
    token: str | None = None,
    level: str = "info",
) -> Path:
    control: dict[str, Any] = {"listen": listen}
    if token is not None:
        control["token"] = token
    data = {
        "state": {"url": state_url},
        "log": {"format": "json", "level": level},
        "control": control,
        "systems": systems,
        "pipelines": pipelines,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def csv_system(directory: Path) -> dict[str, Any]:
    return {"connector": "csv", "directory": str(directory)}


class NotifySocket:
    """A stand-in for systemd's notify socket: a bound Unix datagram socket whose messages
    are collected, with their arrival time, by a background thread."""

    def __init__(self) -> None:
        self.dir = short_dir()
        self.path = self.dir / "notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append((time.monotonic(), data.decode()))
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 20.0, after: int = 0) -> tuple[int, str]:
        """The first message (index, text) at index >= ``after`` that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, (_, text) in enumerate(self.messages[after:], start=after):
                    if predicate(text):
                        return i, text
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching notify message in {timeout}s; got {self.texts()!r}")
                self._cond.wait(left)

    def texts(self) -> list[str]:
        with self._cond:
            return [t for _, t in self.messages]

    def times_of(self, text: str) -> list[float]:
        with self._cond:
            return [at for at, t in self.messages if text in t.split("\n")]

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self._sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Daemon:
    """``ferryman --config CONFIG run`` as a child process, with its log in a file."""

    def __init__(
        self,
        config: Path,
        *,
        notify: NotifySocket | None = None,
        env: dict[str, str] | None = None,
        drain_timeout: float = 20.0,
    ) -> None:
        self.config = config
        self.notify = notify
        self.log_path = config.with_name(f"daemon-{time.monotonic_ns()}.log")
        full_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        self._notify_from = 0
        if notify is not None:
            full_env["NOTIFY_SOCKET"] = str(notify.path)
            self._notify_from = len(notify.texts())  # messages of an earlier daemon are not ours
        full_env.update(env or {})
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*ferryman_cmd(), "--config", str(config), "run", "--drain-timeout", str(drain_timeout)],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=full_env,
        )
        loaded = yaml.safe_load(config.read_text())
        self.listen: str = loaded["control"]["listen"]
        self.state_url: str = loaded["state"]["url"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    # -- waiting -----------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 30.0) -> None:
        if self.notify is not None:
            try:
                self.notify.wait_for(lambda t: "READY=1" in t.split("\n"), timeout, after=self._notify_from)
            except AssertionError:
                raise AssertionError(f"daemon not ready: exit {self.proc.poll()}; log:\n{self.log_text()}") from None
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            with contextlib.suppress(httpx.HTTPError, OSError):
                if self.get("/healthz").status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.log_text()}")

    def wait_event(self, event: str, timeout: float = 20.0, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.events():
                if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
                    return entry
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event} {fields} in {timeout}s; log:\n{self.log_text()}")
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode} waiting for {event}:\n{self.log_text()}")
            time.sleep(0.05)

    # -- log -----------------------------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
        return out

    # -- control API ---------------------------------------------------------------------------
    def token(self) -> str:
        configured = yaml.safe_load(self.config.read_text())["control"].get("token")
        if configured:
            return str(configured)
        return (Path(self.state_url.split("///", 1)[1]).parent / "control.token").read_text().strip()

    def client(self, token: str | None = "auto", timeout: float = 30.0) -> httpx.Client:
        headers = {}
        if token == "auto":
            token = self.token() if not self.listen.startswith("unix:") else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if self.listen.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=self.listen[5:])
            return httpx.Client(base_url="http://ferryman", transport=transport, headers=headers, timeout=timeout)
        return httpx.Client(base_url=f"http://{self.listen}", headers=headers, timeout=timeout, trust_env=False)

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        with self.client(token=token) as client:
            return client.get(path)

    # -- state -------------------------------------------------------------------------------
    def store(self) -> StateStore:
        return StateStore(self.state_url)

    def runs(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        store = self.store()
        try:
            return list(reversed(store.runs(pipeline, limit=1000)))
        finally:
            store.close()

    # -- stopping ------------------------------------------------------------------------------
    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds until the process was gone)."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        with contextlib.suppress(Exception):
            self._log.close()


@contextlib.contextmanager
def running(config: Path, **kwargs: Any) -> Iterator[Daemon]:
    daemon = Daemon(config, **kwargs)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.kill()


SANDBOX_KEY = "sandbox-key"


def rest_system(port: int, *, rate_limit: str = "100/min") -> dict[str, Any]:
    """A `rest` system reading tickets from `ferryman sandbox generic` on ``port``."""
    return {
        "connector": "rest",
        "base_url": f"http://127.0.0.1:{port}/api",
        "auth": {"type": "header", "name": "X-API-Key", "key": "${SANDBOX_KEY}"},
        "rate_limit": rate_limit,
        "streams": {
            "tickets": {
                "record": "ticket",
                "path": "/tickets",
                "records_path": "data",
                "pagination": {"style": "page", "size_param": "per_page", "max_size": 40, "pages_path": "total_pages"},
                "incremental": {"template": "updated_since={cursor}", "format": "iso_z", "sorted": True},
                "fields": {"subject": "subject", "status": "status", "requester_email": "requester_email"},
            }
        },
    }


@contextlib.contextmanager
def sandbox(*args: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """`ferryman sandbox generic` on a free port; yields the port and the process (which a
    test may SIGSTOP to hold a run in the middle of a request)."""
    port = free_port()
    proc = subprocess.Popen(
        [*ferryman_cmd(), "sandbox", "generic", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert "sandbox on" in banner, proc.stderr.read() if proc.stderr else banner
        yield port, proc
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
