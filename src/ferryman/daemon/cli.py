"""``ferryman run`` and ``ferryman trigger``, registered by :func:`ferryman.cli.build_parser`.

Importing this module stays cheap (no aiohttp, APScheduler or httpx) so that
``ferryman --help`` starts fast; each handler imports what it needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["COMMANDS"]

RUN_EPILOG = """\
systemd:
  Type=notify: READY=1 once the config, the state database and the control API are up;
  STATUS= after every run; WATCHDOG=1 at half of WatchdogSec; STOPPING=1 on SIGTERM.
  SIGTERM/SIGINT: runs finish the page in hand and commit, then exit 0 (a second signal
  stops at once). SIGHUP: reload the config; an invalid one is logged and the old kept.

exit status:
  0   stopped cleanly after SIGTERM or SIGINT
  1   the state database or the control API listener could not be set up
  70  internal error (a bug: please report it with the log)
  75  the state database is unavailable at start: corrupt, locked, disk full or
      unreachable (one line says which, and where); an outage: retry later
  78  configuration error (file, key path and problem are printed); systemd's
      RestartPreventExitStatus=78 stops a restart loop

At start, runs left "running" by a process that is gone (killed, or cut off by an
outage) are closed as "interrupted".
"""

TRIGGER_EPILOG = """\
The daemon is found through control.listen in the config and, on TCP, authenticated
with control.token or the token it wrote to <state dir>/control.token at start.

exit status:
  0   started (without --wait), or the run succeeded
  1   no daemon answers, the run failed, or --timeout passed (the run goes on)
  3   deferred: an app asked us to wait (Retry-After)
  4   halted: the run would have deleted more than deletes.max_share
  5   busy: already running (without --wait), or running elsewhere
  78  configuration error
"""


def _register_run(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="run the daemon: schedule pipelines, serve the control API, talk to systemd",
        description="Run every enabled pipeline on its schedule until SIGTERM.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="on SIGTERM, wait this long for runs to reach a page boundary before cancelling them "
        "(default 60; keep it below the unit's TimeoutStopSec)",
    )
    p.set_defaults(handler=cmd_run)


def _register_trigger(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="ask the running daemon to run a pipeline now",
        epilog=TRIGGER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline")
    p.add_argument("--wait", action="store_true", help="wait for the run and print its outcome and counts")
    p.add_argument("--timeout", type=float, metavar="S", help="with --wait: give up waiting after S seconds")
    p.set_defaults(handler=cmd_trigger)


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from ferryman.app import EXIT_FAILED, load
    from ferryman.daemon._service import Daemon, ListenError
    from ferryman.redact import redact

    config = load(args)
    daemon = Daemon(config, drain_timeout=args.drain_timeout, log_level=args.log_level, log_format=args.log_format)
    _close_interrupted_runs(config)
    try:
        return asyncio.run(daemon.serve())
    except ListenError as exc:
        print(f"ferryman: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED


def _close_interrupted_runs(config: Any) -> None:
    """Record as ``interrupted`` the runs a killed process left ``running`` (status already
    shows them so), before the schedule starts new ones. A state database that cannot be
    opened raises :class:`~ferryman.errors.StateUnavailable` here: exit 75, before the
    control API is up."""
    import structlog

    from ferryman.app import open_store

    store = open_store(config)
    try:
        closed = store.close_interrupted_runs()
    finally:
        store.close()
    if closed:
        structlog.get_logger("ferryman.daemon").warning("runs.interrupted_closed", runs=closed)


def cmd_trigger(args: argparse.Namespace) -> int:
    from ferryman.app import EXIT_BUSY, EXIT_FAILED, OUTCOME_EXIT, load
    from ferryman.daemon._client import ControlClient, DaemonUnreachable
    from ferryman.redact import redact

    config = load(args)
    name = args.pipeline
    try:
        client = ControlClient.for_config(config, timeout=args.timeout if args.wait else 30.0)
        try:
            params = {"wait": "true"} if args.wait else {}
            response = client.request("POST", f"/v1/pipelines/{name}/trigger", params=params)
        finally:
            client.close()
    except DaemonUnreachable as exc:
        print(f"ferryman: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except _timeout_errors() as exc:
        print(
            f"ferryman: {name} is still running after {args.timeout:g}s ({type(exc).__name__}); the daemon "
            f"carries on: see `ferryman status`",
            file=sys.stderr,
        )
        return EXIT_FAILED
    body = _json(response)
    if response.status_code == 202:
        print(f"{name}: started in the daemon; `ferryman status` shows how it went")
        return 0
    if response.status_code == 200:
        from ferryman.engine import RunResult

        result = RunResult(
            name,
            body.get("outcome", "failed"),
            run_id=body.get("run_id"),
            counts=body.get("counts") or {},
            message=body.get("message"),
            seconds=float(body.get("seconds") or 0.0),
        )
        print(result.summary())
        if result.counts.get("dead_lettered"):
            print(
                f"  {result.counts['dead_lettered']} record(s) dead-lettered: see `ferryman dlq list --pipeline {name}`"
            )
        if result.outcome == "busy":
            print(f"ferryman: {name} is {result.message}", file=sys.stderr)
        return OUTCOME_EXIT.get(result.outcome, EXIT_FAILED)
    error = body.get("error") or response.text.strip() or f"HTTP {response.status_code}"
    if response.status_code == 409 and body.get("reason") == "running":
        print(f"ferryman: {name} is already running in the daemon; use --wait to wait for it", file=sys.stderr)
        return EXIT_BUSY
    if response.status_code == 401:
        error = f"the daemon refused the token: {error}; it may have restarted since, or control.token differs"
    print(f"ferryman: {name}: {redact(error)}", file=sys.stderr)
    return EXIT_FAILED


def _timeout_errors() -> tuple[type[BaseException], ...]:
    import httpx

    return (httpx.TimeoutException,)


def _json(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


COMMANDS: dict[str, Callable[[Any, str], None]] = {"run": _register_run, "trigger": _register_trigger}
