"""CPU per record of a pull, by component: ``python -m bench.profile_components [--records N]``

Runs the pull benchmark's pipeline in process (as :mod:`bench.profile_pull`) under
``cProfile`` and prints the cumulative CPU, in µs per record, of the functions that own
each component: the rest connector's mapping, fingerprints, the CSV sink, the engine's
delivery. What the profiler cannot see (the state thread's commits, the event loop, HTTP
reads) is the remainder. The profiler roughly doubles Python-heavy code: compare runs of
two trees with each other, not with ``bench.profile_pull``'s figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from bench._common import Sandbox
from bench.profile_pull import _run
from bench.pull import write_config

#: component -> the (file suffix, function) whose cumulative time is that component's
COMPONENTS: dict[str, list[tuple[str, str]]] = {
    "mapping (rest _map: to_canonical, to_record, validation)": [("connectors/rest/__init__.py", "_map")],
    "fingerprint": [("ferryman/records.py", "fingerprint")],
    "CSV encoding and writing (create, _flush)": [
        ("connectors/csv/__init__.py", "_flush"),
        ("connectors/csv/__init__.py", "create"),
    ],
    "engine delivery (planning, writes, events)": [("ferryman/engine.py", "_deliver")],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_components", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, Sandbox(args.records) as sandbox:
        work = Path(tmp) / "work"
        work.mkdir()
        config = write_config(work, sandbox.url)
        profile = cProfile.Profile()
        cpu = time.process_time()
        profile.enable()
        read, outcome = asyncio.run(_run(config))
        profile.disable()
        cpu = time.process_time() - cpu
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]

    def cumulative(suffix: str, name: str) -> float:
        return float(sum(v[3] for (file, _line, fn), v in stats.items() if file.endswith(suffix) and fn == name))

    print(f"{read:,} records, {outcome}: {cpu / read * 1e6:.1f} us of CPU per record under cProfile")
    shown = 0.0
    for label, owners in COMPONENTS.items():
        seconds = sum(cumulative(suffix, name) for suffix, name in owners)
        shown += seconds
        print(f"  {label:<60} {seconds / read * 1e6:6.1f} us")
    print(f"  {'the rest (state thread, event loop, HTTP reads)':<60} {(cpu - shown) / read * 1e6:6.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
