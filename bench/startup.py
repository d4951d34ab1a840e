"""Start-up: how long ``ferryman --help`` and ``ferryman status`` take.
``python -m bench.startup [--quick] [--runs N]``

Each command runs N times (default 15; quick 7) as a child process with its bytecode
cached, as after any install; the median wall and CPU time are reported next to those
of ``python -c pass`` (the interpreter's own start-up, measured in the same run), and
the target is under 0.3 s of wall time. ``status`` reads a config with two systems and a
pipeline, and a state database that has seen a run.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from pathlib import Path

from bench._common import KEY, Report, ferryman_cmd, median, quick, run_child, timed
from bench.pull import write_config

TARGET = 0.3


def prepare(directory: Path) -> Path:
    """A config (the pull benchmark's) and a migrated state database with one finished run."""
    config = write_config(directory, "http://127.0.0.1:9")
    run_child([*ferryman_cmd(), "--config", str(config), "reset", "contacts", "--yes"], env={"BENCH_KEY": KEY}).check(
        "ferryman reset (creates the state database)"
    )
    with sqlite3.connect(directory / "state.db") as db:
        db.execute(
            "INSERT INTO runs (pipeline, instance, trigger, started_at, ended_at, outcome, read, created, updated,"
            " deleted, skipped, dead_lettered) VALUES ('contacts', 'bench', 'manual', '2026-01-01 00:00:00',"
            " '2026-01-01 00:00:05', 'ok', 10, 10, 0, 0, 0, 0)"
        )
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int)
    args = parser.parse_args(argv)
    runs = args.runs or (7 if args.quick or quick() else 15)
    report = Report("startup")
    print(f"start-up: {runs} runs each (medians)")
    with timed(report), tempfile.TemporaryDirectory(prefix="ferryman-bench-start-") as tmp:
        work = Path(tmp)
        config = prepare(work)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "ferryman --help": [*ferryman_cmd(), "--help"],
            "ferryman status": [*ferryman_cmd(), "--config", str(config), "status"],
        }
        for cmd in commands.values():  # warm the bytecode cache and the page cache
            run_child(cmd, env={"BENCH_KEY": KEY}, cwd=work).check(" ".join(cmd))
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in commands}
        for _ in range(runs):  # interleaved, so that a burst of load hits every command alike
            for name, cmd in commands.items():
                child = run_child(cmd, env={"BENCH_KEY": KEY}, cwd=work).check(name)
                results[name].append((child.wall, child.cpu, child.max_rss_mb))
        python_wall = median([r[0] for r in results["python -c pass"]])
        for name, found in results.items():
            wall, cpu, rss = (median([r[k] for r in found]) for k in range(3))
            value = f"{wall:.3f} s (CPU {cpu:.3f} s, {rss:.0f} MB)"
            if name.startswith("python"):
                report.add(f"{name} (the interpreter alone)", value)
                continue
            report.add(f"{name}: wall (CPU, RSS)", value, f"< {TARGET} s", wall < TARGET)
            report.add(f"{name} / python -c pass (wall)", f"{wall / python_wall:.1f}")
    return 1 if report.missed else 0


if __name__ == "__main__":
    sys.exit(main())
