"""The daemon: ``ferryman run`` (schedule, control API, sd_notify) and ``ferryman trigger``.

:mod:`ferryman.daemon.cli` registers the commands; the service itself lives in private
modules that import aiohttp and APScheduler, loaded only when the daemon runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Daemon", "Notifier"]


def __getattr__(name: str) -> Any:
    # lazily, so that importing the package (the CLI does) stays cheap
    if name == "Daemon":
        from ferryman.daemon._service import Daemon

        return Daemon
    if name == "Notifier":
        from ferryman.daemon._notify import Notifier

        return Notifier
    raise AttributeError(name)
