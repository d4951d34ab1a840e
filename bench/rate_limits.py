"""How close to the ideal does a rate-limited sync run? ``python -m bench.rate_limits``

A ``sandbox generic`` app admits L requests per minute per key; a sync of its contacts into
CSV needs R requests (R pages). The ideal elapsed time is R / L minutes. The sync is timed
twice, as a ratio to that ideal:

- **configured**: the system has ``rate_limit: L/min``; the client paces itself and should
  get no 429 at all (target: ratio <= 1.05);
- **unconfigured**: no client-side limit; the app answers 429 with ``Retry-After`` and the
  client waits exactly that long (target: ratio <= 1.10; a sliding-window app lets a
  bursting client in early, so this can even come out below 1).

The app's window can be shortened (``--window``) while keeping the rate, so a quick run takes
about a minute; ``--window 60`` measures against a true per-minute limit. The sync runs in
this process (the engine, as ``ferryman sync`` runs it) and the app in a thread, so process
start-up is not counted. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ferryman import logs
from ferryman.config import load_config
from ferryman.engine import Engine
from ferryman.sandbox import SimulatorThread
from ferryman.state import StateStore
from ferryman_connectors.rest.simulator import GenericSimulator

TARGETS = {"configured": 1.05, "unconfigured": 1.10}


@dataclass
class Measurement:
    mode: str
    elapsed: float
    requests: int
    throttled: int
    early_retries: int
    records: int

    def ratio(self, ideal: float) -> float:
        return self.elapsed / ideal


def config(directory: Path, url: str, page: int, rpm: float | None) -> Path:
    app: dict[str, Any] = {
        "connector": "rest",
        "base_url": f"{url}/api",
        "auth": {"type": "header", "name": "X-API-Key", "key": "${BENCH_KEY}"},
        "streams": {
            "contacts": {
                "record": "contact",
                "path": "/contacts",
                "records_path": "data",
                "pagination": {"style": "page", "size": page, "pages_path": "total_pages"},
                "fields": {"email": "email", "first_name": "first_name", "last_name": "last_name"},
            }
        },
    }
    if rpm is not None:
        app["rate_limit"] = f"{rpm:g}/min"
    doc = {
        "state": {"url": f"sqlite:///{directory / 'state.db'}"},
        "systems": {"app": app, "out": {"connector": "csv", "directory": str(directory / "out")}},
        "pipelines": {"contacts": {"from": "app.contacts", "to": "out.contacts", "page_size": 1000}},
    }
    path = directory / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def sync(path: Path) -> tuple[float, int]:
    cfg = load_config(path, environ={"BENCH_KEY": "sandbox-key"})
    engine = Engine(cfg, StateStore.open(cfg.state.resolved_url()), services={})
    try:
        started = time.monotonic()
        result = await engine.run("contacts")
        elapsed = time.monotonic() - started
    finally:
        await engine.aclose()
    if result.outcome != "ok":
        raise SystemExit(f"the sync did not succeed: {result.summary()}")
    return elapsed, result.counts["read"]


def measure(mode: str, rpm: float, window: float, requests: int, page: int) -> Measurement:
    per_window = rpm * window / 60
    simulator = GenericSimulator(records=requests * page, seed=1, rate_limit=per_window, window=window)
    with SimulatorThread(simulator) as sandbox, tempfile.TemporaryDirectory(prefix="ferryman-bench-") as tmp:
        path = config(Path(tmp), sandbox.url, page, rpm if mode == "configured" else None)
        elapsed, records = asyncio.run(sync(path))
        stats = simulator.stats.snapshot()
    return Measurement(mode, elapsed, stats["requests"], stats["throttled"], stats["early_retries"], records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rate_limits", description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=float, default=120, help="requests per minute the app admits (L, default 120)")
    parser.add_argument("--requests", type=int, default=60, help="requests the sync needs (R, default 60)")
    parser.add_argument(
        "--window", type=float, default=10, help="seconds the app counts over (default 10; 60 = true rpm)"
    )
    parser.add_argument("--page", type=int, default=10, help="records per page (default 10)")
    parser.add_argument("--mode", choices=["both", *TARGETS], default="both")
    args = parser.parse_args(argv)
    logs.configure("warning", "console")

    ideal = args.requests / args.rpm * 60
    per_window = args.rpm * args.window / 60
    print(
        f"app admits {args.rpm:g} requests/min ({per_window:g} per {args.window:g} s window); "
        f"the sync needs R = {args.requests} requests; ideal R/L = {ideal:.2f} s"
    )
    if args.requests <= math.floor(per_window):
        print("note: R fits in one window, so an unconfigured client is never throttled")
    missed = False
    for mode in TARGETS if args.mode == "both" else [args.mode]:
        m = measure(mode, args.rpm, args.window, args.requests, args.page)
        ratio = m.ratio(ideal)
        verdict = "ok" if ratio <= TARGETS[mode] else "MISSED"
        missed |= verdict != "ok"
        print(
            f"{mode:<13} elapsed {m.elapsed:7.2f} s  ratio {ratio:.3f} (target <= {TARGETS[mode]:.2f}: {verdict})  "
            f"requests {m.requests} (429s {m.throttled}, early retries {m.early_retries}), records {m.records}"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
