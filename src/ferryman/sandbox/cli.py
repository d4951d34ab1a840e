"""``ferryman sandbox SYSTEM``: serve one simulator on loopback until Ctrl-C or SIGTERM.

The main CLI wires its ``sandbox`` subcommand to :func:`add_arguments` and :func:`run`;
:func:`main` runs the same thing on its own (``python -m ferryman.sandbox``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from ferryman.plugins import simulator_class
from ferryman.sandbox._faults import FaultSpec, FaultSpecError
from ferryman.sandbox._server import SimulatorServer, is_loopback
from ferryman.sandbox._simulator import Simulator

__all__ = ["add_arguments", "main", "run"]


def _fault_spec(text: str) -> FaultSpec:
    try:
        return FaultSpec.parse(text)
    except FaultSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535)")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of requests per minute")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sandbox`` options to ``parser``."""
    parser.add_argument("system", metavar="SYSTEM", help="the simulator to serve (generic, clientexec, ...)")
    parser.add_argument(
        "--port", type=_port, default=None, help="TCP port (default: the simulator's own; 0 picks a free one)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow a --host that is not loopback (fake data, known keys!)"
    )
    parser.add_argument("--unix", metavar="PATH", default=None, help="serve on a Unix socket instead of TCP")
    parser.add_argument("--records", type=_count, default=200, help="rows each stream starts with (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the generated data and faults (default 1)")
    parser.add_argument(
        "--rate-limit",
        type=_rate,
        default=None,
        metavar="RPM",
        help="requests allowed per credential per window: a minute, unless the app counts otherwise (Harvest: 15 s)",
    )
    parser.add_argument(
        "--faults",
        type=_fault_spec,
        default=None,
        metavar="SPEC",
        help="fault injection, e.g. '429:0.05:retry_after=2,5xx:0.02,slow:0.1:delay=1.5,drop:0.01,malformed:0.01'",
    )


def run(args: argparse.Namespace) -> int:
    """Serve the chosen simulator until SIGINT/SIGTERM; 0 on a clean stop, 2 on bad options."""
    try:
        cls = simulator_class(args.system)
    except KeyError as exc:
        print(f"ferryman sandbox: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.unix is None and not args.allow_remote and not is_loopback(args.host):
        print(
            f"ferryman sandbox: refusing to serve on {args.host!r}: not loopback (use --allow-remote to insist)",
            file=sys.stderr,
        )
        return 2
    try:
        simulator: Simulator = cls(records=args.records, seed=args.seed, rate_limit=args.rate_limit, faults=args.faults)
    except ValueError as exc:
        print(f"ferryman sandbox: {exc}", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else cls.default_port
    server = SimulatorServer(simulator, host=args.host, port=port, unix_path=args.unix, allow_remote=True)
    try:
        return asyncio.run(_serve(server, args))
    except OSError as exc:
        where = args.unix or f"{args.host}:{port}"
        print(f"ferryman sandbox: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1


async def _serve(server: SimulatorServer, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
        simulator = server.simulator
        where = f"{server.url} (unix socket {args.unix})" if args.unix else server.url
        credentials = simulator.describe_credentials()
        parts = [f"{simulator.name} sandbox on {where}" + (f" ({credentials})" if credentials else "")]
        if simulator.rate_limit is not None:
            parts.append(f"limit {simulator.rate_limit:g} requests per {simulator.window:g} s")
        if simulator.faults.spec:
            parts.append(f"faults {simulator.faults.spec}")
        parts.append("Ctrl-C to stop")
        print("; ".join(parts), flush=True)
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and :func:`run` (for ``python -m ferryman.sandbox``)."""
    parser = argparse.ArgumentParser(prog="ferryman sandbox", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    return run(args)
