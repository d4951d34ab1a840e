"""Whether a run recorded as ``running`` still has a live process behind it.

The state store (:meth:`ferryman.state.StateStore.last_runs`, and closing interrupted runs)
and the light status path (:class:`ferryman.status.StatusReader`) must tell the same story
about a run whose process was killed, so both ask :func:`run_as_seen`. It lives here, next
to nothing but :mod:`ferryman.holders` and :mod:`ferryman.timeutil`, because the store sits
below status and webhooks: the store importing :mod:`ferryman.status` (which reaches the
webhooks, which use the store) closed an import cycle.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ferryman.holders import describe_holder, holder_is_dead, host_id, start_token
from ferryman.timeutil import format_utc

__all__ = ["alive_here", "run_as_seen"]


def run_as_seen(
    run: dict[str, Any],
    holder: str | None,
    expires_at: datetime | None,
    last_commit_at: datetime | None,
    *,
    now: datetime,
    why: str | None = None,
) -> dict[str, Any]:
    """``run`` as status shows it. A run still marked ``running`` whose process is gone
    (its pipeline's lease expired, its holder dead, or no lease at all) is ``interrupted``,
    ended at its last sign of life: its start, or the pipeline's last page committed since.
    A process killed with -9, or cut off by an outage before it could record its end,
    leaves such a row; ``why`` overrides the reason (the next run closing it)."""
    if run.get("outcome") != "running":
        return run
    lease_live = holder is not None and expires_at is not None and expires_at > now
    if why is None and holder is not None and not holder_is_dead(holder) and (lease_live or alive_here(holder)):
        # a live process of this host whose lease ran out in a long page is still running it
        return run
    if why is not None:
        reason = why
    elif holder is None or expires_at is None:
        reason = "its lease is gone"
    elif not lease_live:
        reason = f"its lease expired at {format_utc(expires_at)}"
    else:
        reason = f"{describe_holder(holder)} is no longer running"
    started: datetime = run["started_at"]
    ended = max(started, last_commit_at) if last_commit_at is not None else started
    message = (
        f"interrupted: the process running it on {run.get('instance')} stopped before the run ended "
        f"({reason}); last sign of life {format_utc(ended)}"
    )
    return {**run, "outcome": "interrupted", "ended_at": ended, "message": message}


def alive_here(holder: str) -> bool:
    """True only when the holder is certainly a process of this host that still runs."""
    parts = holder.split("|")
    if len(parts) != 4 or parts[1] != host_id() or not parts[3]:
        return False
    try:
        pid = int(parts[2])
    except ValueError:
        return False
    return start_token(pid) == parts[3]
