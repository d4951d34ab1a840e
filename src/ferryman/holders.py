"""Who holds a pipeline's lease: naming a process so that another can tell it died.

Kept apart from :mod:`ferryman.state` (which imports SQLAlchemy) so that the light
status path (:mod:`ferryman.status`) can describe lease holders without it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["HOST_ID_ENV", "default_instance_name", "describe_holder", "holder_is_dead", "host_id", "start_token"]

HOST_ID_ENV = "FERRYMAN_HOST_ID"


def default_instance_name() -> str:
    return socket.gethostname()


def host_id() -> str:
    """The machine named in lease holders: ``$FERRYMAN_HOST_ID``, else the host name.

    Holders with the same host id are taken to share one process table, so a lease whose
    holder's process is gone is free at once. Set a distinct id where that is not true
    (containers with one host name but separate pid namespaces); tests set it to stand
    for another machine, whose dead holders are only taken over when their lease expires.
    """
    return os.environ.get(HOST_ID_ENV) or socket.gethostname()


def start_token(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is unavailable);
    with the pid it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def holder_is_dead(holder: str) -> bool:
    """True only when the holder is certainly a process of this host that no longer runs."""
    parts = holder.split("|")
    if len(parts) != 4 or parts[1] != host_id():
        return False
    try:
        pid = int(parts[2])
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return bool(parts[3]) and start_token(pid) != parts[3]


def describe_holder(holder: str) -> str:
    """``instance (pid N)``, or ``instance on HOST (pid N)`` when the host id is another name."""
    parts = holder.split("|")
    if len(parts) != 4:
        return holder
    where = "" if parts[1] == parts[0] else f" on {parts[1]}"
    return f"{parts[0]}{where} (pid {parts[2]})"
