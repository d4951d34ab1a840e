"""Push from CSV: ``ferryman sync`` of 10,000 contacts from a CSV file into a sandbox app.
``python -m bench.push [--quick] [--records N]``

The app (``sandbox generic``, its own process) has no bulk endpoint: one POST per new
contact is the least any client can do. Measured in the same run, alternating:

- **the baseline**: one keep-alive httpx client POSTing each CSV row as JSON, nothing else;
- **ferryman sync** of a ``csv`` contacts stream into the ``rest`` contacts stream (creates
  behind intents, links and the cursor committed per page).

Reported: throughput of both (medians), Ferryman's as a ratio of the baseline's, and
requests per record from the sandbox's own count (target: 1.0, no lookups, no retries).

Ferryman runs twice per round: with ``lookup: never`` (the write path alone, comparable
with earlier results), and with the default ``lookup: auto``: a first push into an app that
already has records (the baseline's, the seeded ones) looks each new record up before
creating it, which it does by reading the app's contacts once (batched), so it pays
requests in proportion to the app's size, not to the records pushed.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from bench._common import KEY, Report, Sandbox, fmt_rate, fmt_ratio, median, quick, run_child, timed
from bench.pull import sync_cmd, write_config

#: issue "Fast": at least 1.5 times a one-POST-per-row loop, still 1.000 requests a record
PUSH_TARGET = 1.5
#: writes in flight (the pipeline option; opt-in, default 1): what the 2026-12-06 figures used
CONCURRENCY = 4

BASELINE = """
import csv, sys, httpx
url, path = sys.argv[1], sys.argv[2]
n = 0
with httpx.Client(base_url=url, headers={"X-API-Key": "sandbox-key"}, timeout=60) as client, open(path, newline="") as fh:
    for row in csv.DictReader(fh):
        body = {"email": row["email"], "first_name": row["first_name"], "last_name": row["last_name"],
                "phone": row["phone"], "company": row["organisation"]}
        client.post("/api/contacts", json=body).raise_for_status()
        n += 1
print(n)
"""


def write_contacts(path: Path, n: int, tag: str) -> None:
    """``n`` new contacts (emails unique to ``tag``) in the CSV connector's layout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["key", "updated_at", "email", "first_name", "last_name", "phone", "organisation"])
        for i in range(n):
            stamp = (start + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
            writer.writerow(
                [
                    f"{tag}-{i}",
                    stamp,
                    f"{tag}.{i}@push.example",
                    "Ada",
                    f"Lovelace {i}",
                    "+44 20 7946 0000",
                    "Bench Ltd",
                ]
            )


def contacts_in(sandbox: Sandbox) -> int:
    return int(httpx.get(f"{sandbox.url}/__sandbox/", timeout=30).json()["tables"]["contacts"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.push", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 records, 2 runs")
    parser.add_argument("--records", type=int, help="contacts to push (default 10000; quick 2000)")
    parser.add_argument("--repeat", type=int, help="runs of each side (default 3; quick 2)")
    args = parser.parse_args(argv)
    fast = args.quick or quick()
    n = args.records or (2_000 if fast else 10_000)
    repeat = args.repeat or (2 if fast else 3)
    report = Report("push")
    print(f"push from CSV: {n:,} contacts, {repeat} runs each (medians)")
    with timed(report), tempfile.TemporaryDirectory(prefix="ferryman-bench-push-") as tmp, Sandbox(100) as sandbox:
        work = Path(tmp)
        script = work / "baseline.py"
        script.write_text(BASELINE)
        base: list[tuple[float, float, float]] = []
        ferry: list[tuple[float, float, float, float]] = []
        auto: list[tuple[float, float, float, float]] = []
        for i in range(repeat):
            src = work / f"baseline-{i}.csv"
            write_contacts(src, n, f"b{i}")
            before = contacts_in(sandbox)
            sandbox.reset_stats()
            b = run_child([sys.executable, str(script), sandbox.url, str(src)]).check("baseline")
            requests = sandbox.requests()
            if contacts_in(sandbox) - before != n or requests != n:
                raise RuntimeError(f"the baseline created {contacts_in(sandbox) - before} with {requests} requests")
            base.append((b.wall, b.cpu, b.max_rss_mb))

            for lookup, results in (("never", ferry), ("auto", auto)):
                run_dir = work / f"ferryman-{lookup}-{i}"
                shutil.rmtree(run_dir, ignore_errors=True)
                write_contacts(run_dir / "in" / "contacts.csv", n, f"f{lookup}{i}")
                pipeline = {
                    "from": "inbox.contacts",
                    "to": "app.contacts",
                    "page_size": 1000,
                    "lookup": lookup,
                    "concurrency": CONCURRENCY,
                }
                config = write_config(run_dir, sandbox.url, pipelines={"push": pipeline})
                before = contacts_in(sandbox)
                sandbox.reset_stats()
                f = run_child(sync_cmd(config, "push"), env={"BENCH_KEY": KEY}, cwd=run_dir).check("ferryman sync")
                requests = sandbox.requests()
                created = contacts_in(sandbox) - before
                if created != n:
                    raise RuntimeError(f"ferryman created {created} contacts, expected {n}:\n{f.stdout}\n{f.stderr}")
                results.append((f.wall, f.cpu, f.max_rss_mb, requests / n))
                print(
                    f"  run {i + 1}: baseline {b.wall:.2f} s (cpu {b.cpu:.2f} s); ferryman lookup: {lookup} "
                    f"{f.wall:.2f} s (cpu {f.cpu:.2f} s, {f.max_rss_mb:.0f} MB, {requests} requests, "
                    f"app held {before:,})",
                    flush=True,
                )
        b_wall, b_cpu = median([x[0] for x in base]), median([x[1] for x in base])
        f_wall, f_cpu, f_rss = (median([x[k] for x in ferry]) for k in range(3))
        per_record = max(x[3] for x in ferry)
        report.add(f"{n:,}: baseline, one POST per row (wall, CPU)", f"{fmt_rate(n / b_wall)}, {b_cpu:.1f} s")
        report.add(
            f"{n:,}: ferryman sync, lookup: never, concurrency {CONCURRENCY} (wall, CPU, RSS)",
            f"{fmt_rate(n / f_wall)}, {f_cpu:.1f} s, {f_rss:.0f} MB",
        )
        push_ratio = b_wall / f_wall
        report.add(
            f"{n:,}: ferryman / baseline throughput (wall)",
            fmt_ratio(push_ratio),
            f">= {PUSH_TARGET}",
            push_ratio >= PUSH_TARGET,
        )
        report.add(f"{n:,}: ferryman / baseline CPU", fmt_ratio(f_cpu / b_cpu))
        report.add(f"{n:,}: requests per record (worst run)", f"{per_record:.3f}", "1.0", per_record <= 1.0)
        a_wall = median([x[0] for x in auto])
        a_requests = max(x[3] for x in auto)
        report.add(f"{n:,}: first push into a non-empty app, lookup: auto (wall)", fmt_rate(n / a_wall))
        report.add(f"{n:,}: lookup: auto / baseline throughput (wall)", fmt_ratio(b_wall / a_wall))
        report.add(f"{n:,}: lookup: auto requests per record (worst run)", f"{a_requests:.3f}")
    return 1 if report.missed else 0


if __name__ == "__main__":
    sys.exit(main())
