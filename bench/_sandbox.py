"""A ``sandbox generic`` process for benchmarks: ``python -m bench._sandbox --records N``.

It differs from ``ferryman sandbox generic`` in three ways a benchmark needs: pages are
precomputed (``GenericSimulator(precompute=True)``: every row encoded to JSON once, so
serving a page is a join and the simulator is not what is measured), only the streams
asked for are generated (a million contacts take ~0.8 GB in the simulator; tickets and
invoices would triple that), and it prints its URL as one line once it listens (``--port
0`` picks a free port). It is a separate process so its memory and CPU are never counted
as Ferryman's.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import timedelta
from typing import Any

from ferryman.sandbox import SimulatorServer
from ferryman_connectors.rest.simulator import STREAMS, GenericSimulator


class BenchSimulator(GenericSimulator):
    """The generic simulator with ``records`` rows in the chosen streams only (others empty)."""

    def __init__(self, *, streams: tuple[str, ...] = ("contacts",), **options: Any) -> None:
        self.only = streams
        super().__init__(**options)

    def populate(self) -> None:
        second = timedelta(seconds=1)
        contacts = self.add_table("contacts", resolution=second, unique=("email",))
        tickets = self.add_table("tickets", resolution=second)
        invoices = self.add_table("invoices", resolution=second)
        factory = self.factory
        people = factory.people(self.records if "contacts" in self.only else min(self.records, 100))
        contacts.load(people)
        if "tickets" in self.only:
            tickets.load(factory.tickets(self.records, [p["email"] for p in people[:5000]]))
        if "invoices" in self.only:
            rows = factory.invoices(self.records, [p["id"] for p in people[:5000]])
            for row in rows:
                row["customer_id"] = row.pop("customer")
            invoices.load(rows)


async def serve(args: argparse.Namespace) -> None:
    simulator = BenchSimulator(
        records=args.records,
        seed=args.seed,
        streams=tuple(args.streams.split(",")),
        precompute=not args.no_precompute,
        max_page_size=1000,
        faults=args.faults,
        rate_limit=args.rate_limit,
        window=args.window,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with SimulatorServer(simulator, port=args.port) as server:
        print(server.url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--streams", default="contacts", help=f"comma-separated, among {', '.join(STREAMS)}")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-precompute", action="store_true", help="render every page (the normal sandbox)")
    parser.add_argument("--faults", default=None)
    parser.add_argument("--rate-limit", type=float, default=None)
    parser.add_argument("--window", type=float, default=None)
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
