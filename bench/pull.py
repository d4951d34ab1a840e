"""Pull to CSV: ``ferryman sync`` from a sandbox app into CSV, against the simplest honest
baseline on the same pages. ``python -m bench.pull [--quick] [--sizes 100000,1000000]``

For each size N a ``sandbox generic`` process serves N contacts from precomputed pages
(``bench._sandbox``). In the same run, three things read the same pages:

- **the simulator alone**: the URLs the baseline fetched, replayed by a keep-alive client
  that does nothing with the bytes: how fast the simulator serves, so that it is known
  not to be the bottleneck;
- **the baseline** (``bench._baseline``): httpx + orjson + csv.writer, no state;
- **the contract baseline** (``bench._contract_baseline``): the same, plus only the work the
  delivery contract requires, written directly (validated records, a fingerprint and a link
  row per record, one fsynced CSV append and one SQLite transaction per page): the contract's
  own cost, reported next to the target ratio to tell it from the engine's;
- **ferryman sync** of a ``rest`` contacts stream into a ``csv`` system, from a fresh state
  database each time.

The three alternate, ``--repeat`` times each, and the medians are compared:
Ferryman's throughput as a ratio of the baseline's (target >= 0.5, issue "Fast"; 0.75 before), and Ferryman's peak
RSS (target < 100 MB at 1,000,000 records, and flat as N grows). Both are child
processes, so their figures include interpreter start-up; their CPU and RSS come from
``wait4`` of that child alone.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench._common import (
    KEY,
    Report,
    Sandbox,
    ferryman_cmd,
    fmt_rate,
    fmt_ratio,
    median,
    quick,
    run_child,
    timed,
)

THROUGHPUT_TARGET = 0.5
RSS_TARGET_MB = 100.0
RSS_FLAT_MB = 10.0  # "flat": the larger N may use at most this much more


def contacts_stream(page: int = 1000) -> dict[str, Any]:
    """The ``rest`` declaration of the sandbox's contacts, read by keyset on ``updated_since``."""
    return {
        "record": "contact",
        "path": "/contacts",
        "records_path": "data",
        "params": {"paginate": "cursor"},
        "pagination": {"style": "cursor", "cursor_path": "next_cursor", "size_param": "limit", "max_size": page},
        "incremental": {"template": "updated_since={cursor}", "format": "iso_z", "sorted": True},
        "natural_key": "email",
        "find": {"params": {"email": "{email}"}},
        "fields": {
            "email": "email",
            "first_name": "first_name",
            "last_name": "last_name",
            "phone": "phone",
            "organisation": "company",
            "created_at": "created_at",
        },
        "item": "/contacts/{id}",
        "create": {"path": "/contacts", "body": "json", "id_from": "body", "id_path": "id"},
        "update": {"method": "PATCH", "path": "/contacts/{id}"},
    }


def write_config(directory: Path, url: str, *, pipelines: dict[str, Any] | None = None) -> Path:
    """A config with the sandbox as ``app``, CSV output in ``out/`` and input in ``in/``."""
    doc = {
        "version": 1,
        "state": {"url": f"sqlite:///{directory / 'state.db'}"},
        "log": {"level": "warning", "format": "json"},
        "systems": {
            "app": {
                "connector": "rest",
                "base_url": f"{url}/api",
                "auth": {"type": "header", "name": "X-API-Key", "key": "${BENCH_KEY}"},
                "streams": {"contacts": contacts_stream()},
            },
            "out": {"connector": "csv", "directory": str(directory / "out")},
            "inbox": {"connector": "csv", "directory": str(directory / "in")},
        },
        "pipelines": pipelines or {"contacts": {"from": "app.contacts", "to": "out.contacts", "page_size": 1000}},
    }
    path = directory / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def sync_cmd(config: Path, pipeline: str = "contacts", *extra: str) -> list[str]:
    return [*ferryman_cmd(), "--config", str(config), "sync", pipeline, "--no-progress", *extra]


def csv_keys(path: Path) -> tuple[int, int]:
    """(data rows, distinct keys) of a CSV written by Ferryman or the baseline."""
    rows = 0
    keys: set[str] = set()
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader)
        for cells in reader:
            rows += 1
            keys.add(cells[0])
    return rows, len(keys)


def serve_alone(url: str, urls: list[str], records: int, sandbox: Sandbox) -> tuple[float, float, float]:
    """(records/s, requests/s, simulator CPU ms per request) serving ``urls`` to a client that
    only reads the bytes."""
    cpu0 = sandbox.cpu()
    started = time.perf_counter()
    with httpx.Client(headers={"X-API-Key": KEY}, timeout=60) as client:
        for u in urls:
            client.get(u).raise_for_status()
    wall = time.perf_counter() - started
    cpu = sandbox.cpu() - cpu0
    return records / wall, len(urls) / wall, cpu / len(urls) * 1000


def measure_size(report: Report, n: int, repeat: int, work: Path) -> dict[str, float]:
    print(f"\n== {n:,} records ==", flush=True)
    with Sandbox(n) as sandbox:
        report.note(
            f"N={n:,}: sandbox up in {sandbox.started_in:.1f} s, RSS {sandbox.rss_mb():.0f} MB (its own process)"
        )
        # Warm-up, and the URL list the simulator-alone client replays.
        urls_file = work / "urls.txt"
        base_out = work / "baseline.csv"
        run_child(
            [sys.executable, "-m", "bench._baseline", sandbox.url, str(base_out), "--urls", str(urls_file)]
        ).check("baseline")
        urls = urls_file.read_text().split()
        alone = [serve_alone(sandbox.url, urls, n, sandbox) for _ in range(repeat)]
        sim_rate = median([a[0] for a in alone])
        sim_rps = median([a[1] for a in alone])
        sim_ms = median([a[2] for a in alone])

        baseline: list[tuple[float, float, float]] = []
        floor: list[tuple[float, float, float]] = []
        ferry: list[tuple[float, float, float]] = []
        requests: dict[str, int] = {}
        for i in range(repeat):
            sandbox.reset_stats()
            b = run_child([sys.executable, "-m", "bench._baseline", sandbox.url, str(base_out)]).check("baseline")
            requests["baseline"] = sandbox.requests()
            got = int(b.stdout.split()[-1])
            if got != n:
                raise RuntimeError(f"the baseline wrote {got} records, expected {n}")
            baseline.append((b.wall, b.cpu, b.max_rss_mb))

            floor_dir = work / f"contract-{i}"
            shutil.rmtree(floor_dir, ignore_errors=True)
            c = run_child([sys.executable, "-m", "bench._contract_baseline", sandbox.url, str(floor_dir)]).check(
                "contract baseline"
            )
            got = int(c.stdout.split()[-1])
            if got != n:
                raise RuntimeError(f"the contract baseline wrote {got} records, expected {n}")
            floor.append((c.wall, c.cpu, c.max_rss_mb))
            shutil.rmtree(floor_dir, ignore_errors=True)

            run_dir = work / f"ferryman-{i}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir()
            config = write_config(run_dir, sandbox.url)
            sandbox.reset_stats()
            f = run_child(sync_cmd(config), env={"BENCH_KEY": KEY}, cwd=run_dir).check("ferryman sync")
            requests["ferryman"] = sandbox.requests()
            rows, keys = csv_keys(run_dir / "out" / "contacts.csv")
            if rows != n or keys != n:
                raise RuntimeError(f"ferryman wrote {rows} rows with {keys} distinct keys, expected {n}")
            ferry.append((f.wall, f.cpu, f.max_rss_mb))
            print(
                f"  run {i + 1}: baseline {b.wall:.2f} s (cpu {b.cpu:.2f} s, {b.max_rss_mb:.0f} MB); "
                f"contract baseline {c.wall:.2f} s (cpu {c.cpu:.2f} s, {c.max_rss_mb:.0f} MB); "
                f"ferryman {f.wall:.2f} s (cpu {f.cpu:.2f} s, {f.max_rss_mb:.0f} MB)",
                flush=True,
            )
            shutil.rmtree(run_dir, ignore_errors=True)

    b_wall, b_cpu, b_rss = (median([x[k] for x in baseline]) for k in range(3))
    f_wall, f_cpu, f_rss = (median([x[k] for x in ferry]) for k in range(3))
    c_wall, c_cpu, c_rss = (median([x[k] for x in floor]) for k in range(3))
    ratio = (n / f_wall) / (n / b_wall)
    tag = f"{n:,}"
    report.add(f"{tag}: simulator alone (records served)", fmt_rate(sim_rate))
    report.add(f"{tag}: simulator alone (requests, CPU per request)", f"{sim_rps:,.0f}/s, {sim_ms:.1f} ms")
    report.add(f"{tag}: baseline (wall, CPU, RSS)", f"{fmt_rate(n / b_wall)}, {b_cpu:.1f} s, {b_rss:.0f} MB")
    report.add(f"{tag}: ferryman sync (wall, CPU, RSS)", f"{fmt_rate(n / f_wall)}, {f_cpu:.1f} s, {f_rss:.0f} MB")
    report.add(f"{tag}: requests (ferryman / baseline)", f"{requests['ferryman']} / {requests['baseline']}")
    report.add(f"{tag}: simulator alone / baseline throughput", fmt_ratio(sim_rate / (n / b_wall)))
    report.add(
        f"{tag}: ferryman / baseline throughput (wall)",
        fmt_ratio(ratio),
        f">= {THROUGHPUT_TARGET}",
        ratio >= THROUGHPUT_TARGET,
    )
    report.add(f"{tag}: ferryman / baseline CPU per record", fmt_ratio(f_cpu / b_cpu))
    report.add(f"{tag}: contract baseline (wall, CPU, RSS)", f"{fmt_rate(n / c_wall)}, {c_cpu:.1f} s, {c_rss:.0f} MB")
    report.add(f"{tag}: contract baseline / baseline throughput (wall)", fmt_ratio(b_wall / c_wall))
    report.add(f"{tag}: ferryman / contract baseline throughput (wall)", fmt_ratio(c_wall / f_wall))
    return {"n": n, "rss": f_rss, "ratio": ratio}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pull", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 and 50,000 records, 2 repeats")
    parser.add_argument("--sizes", help="comma-separated record counts (default 100000,1000000)")
    parser.add_argument("--repeat", type=int, help="runs of each side per size (default 3; quick 2)")
    args = parser.parse_args(argv)
    fast = args.quick or quick()
    sizes = (
        [int(s) for s in args.sizes.split(",")] if args.sizes else ([10_000, 50_000] if fast else [100_000, 1_000_000])
    )
    repeat = args.repeat or (2 if fast else 3)
    report = Report("pull")
    print(f"pull to CSV: sizes {sizes}, {repeat} runs each (medians)")
    with timed(report), tempfile.TemporaryDirectory(prefix="ferryman-bench-pull-") as tmp:
        found = [measure_size(report, n, repeat, Path(tmp)) for n in sizes]
        largest = max(found, key=lambda x: x["n"])
        smallest = min(found, key=lambda x: x["n"])
        report.add(
            f"peak RSS at {int(largest['n']):,}",
            f"{largest['rss']:.0f} MB",
            f"< {RSS_TARGET_MB:.0f} MB",
            largest["rss"] < RSS_TARGET_MB,
        )
        if len(found) > 1:
            growth = largest["rss"] - smallest["rss"]
            report.add(
                f"RSS growth {int(smallest['n']):,} -> {int(largest['n']):,}",
                f"{growth:+.0f} MB",
                f"<= {RSS_FLAT_MB:.0f} MB (flat)",
                growth <= RSS_FLAT_MB,
            )
    return 1 if report.missed else 0


if __name__ == "__main__":
    sys.exit(main())
