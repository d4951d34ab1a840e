"""sd_notify: tell systemd how the service is doing (``Type=notify``).

The protocol is one datagram per message on the Unix socket named by ``$NOTIFY_SOCKET``
(a leading ``@`` means Linux's abstract namespace), carrying newline-separated
``KEY=value`` lines. Without ``$NOTIFY_SOCKET`` nothing is sent, so the same daemon runs
in a terminal, a container or under another supervisor.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("ferryman.daemon")

__all__ = ["Notifier"]


class Notifier:
    """Sends ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1`` and friends."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        self._watchdog_usec = _int(env.get("WATCHDOG_USEC"))
        pid = _int(env.get("WATCHDOG_PID"))
        if pid is not None and pid != os.getpid():
            self._watchdog_usec = None  # the watchdog is meant for another process of the unit

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises."""
        if not self.enabled or not self._watchdog_usec:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``"READY=1"``, ``"STATUS=..."``) as one message; False when not sent."""
        if not self.enabled or not lines:
            return False
        payload = "\n".join(line.replace("\n", " ") for line in lines).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # never hold the event loop for long if systemd is slow to read its queue
                self._socket.settimeout(1.0)
            self._socket.sendto(payload, self._address)
        except OSError as exc:
            log.debug("sd_notify.failed", error=str(exc), message=lines[0].split("=", 1)[0])
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None
