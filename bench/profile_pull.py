"""Where the time goes in a pull: ``python -m bench.profile_pull [--records N] [--profiler P]``

Runs the pull benchmark's pipeline (``rest`` contacts from a precomputed ``sandbox
generic`` process into CSV) in this process, so that only the run itself is measured
(no interpreter start-up, no imports), and prints the CPU seconds per 1000 records. With
``--profiler pyinstrument`` (``pip install pyinstrument``) or ``cprofile`` it also prints
where that time went.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from bench._common import KEY, Sandbox, median
from bench.pull import write_config


async def _run(config_path: Path) -> tuple[int, str]:
    from ferryman import logs
    from ferryman.config import load_config
    from ferryman.engine import Engine
    from ferryman.http import HttpRegistry
    from ferryman.state import StateStore

    config = load_config(config_path, environ={"BENCH_KEY": KEY})
    logs.configure("warning", "json")
    store = StateStore.open(config.state.resolved_url())
    engine = Engine(config, store, services={"http": HttpRegistry()})
    try:
        result = await engine.run("contacts")
    finally:
        await engine.aclose()
        store.close()
    return result.counts["read"], result.outcome


def once(url: str, work: Path) -> tuple[float, float, int]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = write_config(work, url)
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    read, outcome = asyncio.run(_run(config))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if outcome != "ok":
        raise SystemExit(f"the run ended {outcome}")
    return cpu, wall, read


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_pull", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profiler", choices=["none", "pyinstrument", "cprofile"], default="none")
    parser.add_argument("--url", help="use this running sandbox (python -m bench._sandbox) instead of starting one")
    args = parser.parse_args(argv)
    with (
        nullcontext(None) if args.url else Sandbox(args.records) as sandbox,
        tempfile.TemporaryDirectory(prefix="ferryman-profile-") as tmp,
    ):
        url = args.url or (sandbox.url if sandbox is not None else "")
        work = Path(tmp) / "run"
        once(url, work)  # warm-up: imports, first connections
        results = [once(url, work) for _ in range(args.repeat)]
        cpu = median([r[0] for r in results])
        wall = median([r[1] for r in results])
        n = results[0][2]
        print(
            f"{n:,} records: CPU {cpu:.2f} s ({cpu / n * 1e6:.1f} us/record), wall {wall:.2f} s "
            f"({n / wall:,.0f} records/s); median of {args.repeat}"
        )
        if args.profiler == "pyinstrument":
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
            once(url, work)
            profiler.stop()
            print(profiler.output_text(unicode=True, show_all=False, timeline=False))
        elif args.profiler == "cprofile":
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            once(url, work)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(35)
    return 0


if __name__ == "__main__":
    sys.exit(main())
