"""Incremental runs: what a run costs when little or nothing changed.
``python -m bench.incremental [--quick] [--records N] [--changes K]``

A ``sandbox generic`` process serves N contacts (default 1,000,000; quick 100,000). After
one full ``ferryman sync`` into CSV:

- **no changes**: another sync must cost at most 2 requests and under 1 s beyond start-up
  (the run's own time, as ``ferryman sync`` prints it, next to the whole process's wall
  time, start-up included, and that of ``ferryman status`` on the same config for scale;
  status reads SQLite state without SQLAlchemy or the connectors, so it starts faster
  than a sync can);
- **K changes** (default 1,000, made through the app's API): the next sync must cost
  requests in proportion to the changes, not to N, and deliver exactly K updated records.
  A run reads from its cursor minus the pipeline's overlap (2 minutes), so the changes of
  the earlier repeats, made seconds before, are read again and skipped: with C the changes
  inside that window, at most C + one page of records and C / page size + 2 requests.

Requests are the sandbox's own count (``/__sandbox/stats``).
"""

from __future__ import annotations

import argparse
import math
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench._common import KEY, Child, Report, Sandbox, ferryman_cmd, median, quick, run_child, timed
from bench.pull import sync_cmd, write_config

PAGE = 1000
_SUMMARY = re.compile(r"read (\d+), created (\d+), updated (\d+), deleted (\d+), skipped (\d+).* in ([\d.]+)s")


def summary(child: Child) -> dict[str, float]:
    match = _SUMMARY.search(child.stdout)
    if match is None:
        raise RuntimeError(f"no run summary in:\n{child.stdout}\n{child.stderr}")
    read, created, updated, _deleted, skipped, seconds = match.groups()
    return {
        "read": int(read),
        "created": int(created),
        "updated": int(updated),
        "skipped": int(skipped),
        "seconds": float(seconds),
    }


def change(sandbox: Sandbox, n: int, k: int, seed: int) -> None:
    """Change ``k`` distinct contacts through the API (each PATCH moves its updated_at to now)."""
    ids = random.Random(seed).sample(range(1, n + 1), k)
    with httpx.Client(base_url=sandbox.url, headers={"X-API-Key": KEY}, timeout=60) as client:
        for i in ids:
            client.patch(f"/api/contacts/{i}", json={"last_name": f"Changed {seed}"}).raise_for_status()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.incremental", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50,000 records, 2 runs")
    parser.add_argument("--records", type=int, help="source size (default 1000000; quick 50000)")
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, help="runs of each kind (default 3; quick 2)")
    args = parser.parse_args(argv)
    fast = args.quick or quick()
    n = args.records or (50_000 if fast else 1_000_000)
    k = args.changes
    repeat = args.repeat or (2 if fast else 3)
    report = Report("incremental")
    print(f"incremental: {n:,} records, {k:,} changes, {repeat} runs each")
    with timed(report), tempfile.TemporaryDirectory(prefix="ferryman-bench-incr-") as tmp, Sandbox(n) as sandbox:
        work = Path(tmp)
        config = write_config(work, sandbox.url)
        env = {"BENCH_KEY": KEY}
        full = run_child(sync_cmd(config), env=env, cwd=work).check("full sync")
        report.note(f"first full sync of {n:,}: {full.wall:.1f} s, {summary(full)['created']:,} created")

        idle: list[tuple[int, float, float]] = []
        for _ in range(repeat):
            sandbox.reset_stats()
            run = run_child(sync_cmd(config), env=env, cwd=work).check("sync without changes")
            counts = summary(run)
            if counts["created"] or counts["updated"]:
                raise RuntimeError(f"a run without changes wrote something: {run.stdout}")
            idle.append((sandbox.requests(), counts["seconds"], run.wall))
        status = [
            run_child([*ferryman_cmd(), "--config", str(config), "status"], env=env, cwd=work).check("status").wall
            for _ in range(repeat)
        ]
        requests = max(x[0] for x in idle)
        seconds = median([x[1] for x in idle])
        report.add(f"{n:,}, no changes: requests (worst run)", str(requests), "<= 2", requests <= 2)
        report.add(f"{n:,}, no changes: run time beyond start-up", f"{seconds:.2f} s", "< 1 s", seconds < 1.0)
        report.add(
            f"{n:,}, no changes: whole process / ferryman status",
            f"{median([x[2] for x in idle]):.2f} s / {median(status):.2f} s",
        )

        busy: list[tuple[int, float, float, int, int]] = []
        first_change = time.monotonic()
        for i in range(repeat):
            change(sandbox, n, k, seed=i)
            sandbox.reset_stats()
            run = run_child(sync_cmd(config), env=env, cwd=work).check(f"sync after {k} changes")
            counts = summary(run)
            if counts["updated"] != k:
                raise RuntimeError(f"expected {k} updates, got {counts}")
            # A run reads from its cursor minus the pipeline's 2-minute overlap: the changes of
            # the earlier repeats, made moments before, are read again (and skipped unchanged).
            window = k * (i + 1) if time.monotonic() - first_change < 110 else None
            busy.append((sandbox.requests(), counts["seconds"], run.wall, int(counts["read"]), window or k))
        ok_requests = all(r <= math.ceil(c / PAGE) + 2 for r, _, _, _, c in busy)
        ok_reads = all(read <= c + PAGE for _, _, _, read, c in busy)
        report.add(
            f"{n:,}, {k:,} changes: requests per run",
            " / ".join(str(x[0]) for x in busy),
            "<= C/page + 2",
            ok_requests,
        )
        report.add(
            f"{n:,}, {k:,} changes: records read per run",
            " / ".join(f"{x[3]:,}" for x in busy),
            "<= C + page",
            ok_reads,
        )
        report.note(
            f"C = changes inside the 2-minute overlap before each run ({' / '.join(f'{x[4]:,}' for x in busy)}): "
            "the repeats come seconds apart, so each run re-reads the earlier repeats' changes"
        )
        report.add(f"{n:,}, {k:,} changes: run time", f"{median([x[1] for x in busy]):.2f} s")
        report.note(
            f"the run after {k:,} changes rewrites the published CSV of {n:,} rows once "
            "(copy, append, keep each key's last row): that is file I/O in proportion to N, not requests"
        )
        shutil.rmtree(work / "out", ignore_errors=True)
    return 1 if report.missed else 0


if __name__ == "__main__":
    sys.exit(main())
