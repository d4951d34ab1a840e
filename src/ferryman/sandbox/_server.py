"""Serving a simulator: in the running event loop, or in a thread of its own.

:class:`SimulatorServer` serves in the current loop (async tests). :class:`SimulatorThread`
starts a loop in a background thread (sync tests, and tests that run ``ferryman`` as a
subprocess against the simulator). Both bind to loopback unless told otherwise, and both
can serve on a Unix socket instead of TCP.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from aiohttp import web

from ferryman.sandbox._simulator import Simulator

__all__ = ["SimulatorServer", "SimulatorThread"]

T = TypeVar("T")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names the local machine only (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SimulatorServer:
    """Serve a simulator in the running event loop.

    ::

        async with SimulatorServer(GenericSimulator(records=50)) as server:
            async with httpx.AsyncClient(base_url=server.url) as client:
                ...

    ``port=0`` picks a free port (see :attr:`port` and :attr:`url` once started). A host
    other than loopback is refused unless ``allow_remote`` is set: a sandbox serves fake
    data with well-known credentials. ``unix_path`` serves on a Unix socket instead.
    """

    def __init__(
        self,
        simulator: Simulator,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unix_path: str | None = None,
        allow_remote: bool = False,
        shutdown_timeout: float = 1.0,
    ) -> None:
        if unix_path is None and not allow_remote and not is_loopback(host):
            raise ValueError(f"refusing to serve the sandbox on {host!r}: not loopback (allow_remote=True to insist)")
        self.simulator = simulator
        self.host = host
        self.unix_path = unix_path
        self._port = port
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The TCP port served on (0 before start, and for a Unix socket)."""
        return self._port

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT`` (``http://localhost`` for a Unix socket)."""
        if self.unix_path is not None:
            return "http://localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        """Bind and start serving."""
        if self._runner is not None:
            raise RuntimeError("server already started")
        runner = web.AppRunner(
            self.simulator.build_app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        try:
            site: web.BaseSite
            if self.unix_path is not None:
                site = web.UnixSite(runner, self.unix_path)
            else:
                site = web.TCPSite(runner, self.host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if self.unix_path is None:
            self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving and close open connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class SimulatorThread:
    """Serve a simulator from a background thread with its own event loop.

    ::

        with SimulatorThread(GenericSimulator()) as sandbox:
            httpx.get(sandbox.url + "/api/tickets", headers={"X-API-Key": "sandbox-key"})
            sandbox.simulator.stats.requests

    The simulator's state lives in that thread; reading stats from the caller's thread is
    safe, and :meth:`call` runs anything else (a table write, a burst) inside the loop.
    """

    def __init__(
        self,
        simulator: Simulator,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unix_path: str | None = None,
        allow_remote: bool = False,
    ) -> None:
        self.simulator = simulator
        self.server = SimulatorServer(simulator, host=host, port=port, unix_path=unix_path, allow_remote=allow_remote)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """The base URL (see :attr:`SimulatorServer.url`)."""
        return self.server.url

    @property
    def port(self) -> int:
        """The TCP port served on."""
        return self.server.port

    def start(self, timeout: float = 10.0) -> Self:
        """Start the thread and return once the server listens (or raise why it could not)."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(
            target=self._run, name=f"sandbox-{self.simulator.name or 'simulator'}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"sandbox did not start within {timeout} s")
        if self._error is not None:
            self._thread.join(timeout)
            self._thread = None
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the thread to end."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"sandbox thread did not stop within {timeout} s")
        self._thread = None

    def call(self, func: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        """Run ``func(*args)`` inside the server's loop and return its result."""
        loop = self._loop
        if loop is None or self._thread is None:
            raise RuntimeError("sandbox thread is not running")

        async def run() -> T:
            return func(*args)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._ready.set()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self.server.stop()
