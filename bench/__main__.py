"""Run every benchmark and write the results table: ``python -m bench [--quick] [--only a,b]``

Each benchmark runs as its own process (``python -m bench.NAME``) and saves its figures to
``bench/results/NAME.json``; this then prints them as one table and writes it to
``bench/results/latest.md``. ``--quick`` (or ``BENCH_QUICK=1``) takes about two to three
minutes; the full run about half an hour. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from bench._common import RESULTS, ROOT, Report, load_report, machine, quick, timed

ORDER = ("startup", "http_client", "pull", "push", "incremental", "rate_limits", "daemon")


def rate_limits(fast: bool) -> int:
    """bench.rate_limits (kept as its author wrote it) measured and saved like the others."""
    try:
        from bench.rate_limits import TARGETS, measure
    except ImportError as exc:
        print(f"bench.rate_limits is not usable: {exc}")
        return 1
    from ferryman import logs

    logs.configure("warning", "console")
    rpm, window, page = 120.0, 10.0, 10
    requests = 40 if fast else 60
    ideal = requests / rpm * 60
    report = Report("rate_limits")
    print(
        f"rate limits: {rpm:g}/min ({rpm * window / 60:g} per {window:g} s window), R = {requests}, ideal {ideal:.1f} s"
    )
    with timed(report):
        for mode, target in TARGETS.items():
            m = measure(mode, rpm, window, requests, page)
            ratio = m.elapsed / ideal
            report.add(
                f"{mode}: elapsed / ideal (R/L)",
                f"{ratio:.3f}",
                f"<= {target:.2f}",
                ratio <= target,
            )
            report.add(f"{mode}: 429s received, early retries", f"{m.throttled}, {m.early_retries}")
            if m.early_retries:
                report.add(f"{mode}: no retry before Retry-After", str(m.early_retries), "0", False)
        report.note("python -m bench.rate_limits --rpm 60 --requests 90 --window 60 measures a true per-minute limit")
    return 1 if report.missed else 0


def run(name: str, fast: bool) -> int:
    print(f"\n######## {name} ########", flush=True)
    if name == "rate_limits":
        return rate_limits(fast)
    cmd = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if fast else [])]
    return subprocess.run(cmd, cwd=ROOT.parent, check=False).returncode


def dates(reports: list[dict[str, Any]]) -> str:
    """The date of the results; each benchmark's own where they were not all run on one day."""
    days = {r["date"][:10] for r in reports}
    if len(days) == 1:
        first, last = min(r["date"] for r in reports), max(r["date"] for r in reports)
        return f"{first[:10]}, {first[11:16]} to {last[11:16]} UTC"
    return ", ".join(f"{r['name']} {r['date'][:16]}" for r in reports)


def table(names: list[str]) -> str:
    reports = {n: load_report(n) for n in names}
    found = [r for r in reports.values() if r]
    if not found:
        return "no results yet: run python -m bench\n"
    info: dict[str, Any] = found[-1]["machine"]
    modes = sorted({"quick" if r["quick"] else "full" for r in found})
    lines = [
        "# Benchmark results",
        "",
        f"- date: {dates(found)} ({', '.join(modes)} mode)",
        f"- machine: {info['cores']} cores ({info['cpu']}), {info['memory_gb']} GB memory, "
        f"{info['system']}, Python {info['python']}",
        f"- load average while measuring: {', '.join(str(r['machine']['load_average'][0]) for r in found)} "
        "(other work on the machine: every figure is a median, next to a baseline from the same run)",
        f"- command: `{'BENCH_QUICK=1 ' if modes == ['quick'] else ''}make bench` (= `python -m bench"
        f"{' --quick' if modes == ['quick'] else ''}`); each row's benchmark alone: `python -m bench.NAME`",
        "",
        "| benchmark | measure | value | target | |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        report = reports[name]
        if report is None:
            lines.append(f"| {name} | not run | | | |")
            continue
        for row in report["rows"]:
            verdict = "" if row["ok"] is None else ("ok" if row["ok"] else "**missed**")
            lines.append(f"| {name} | {row['metric']} | {row['value']} | {row['target']} | {verdict} |")
    notes = [(n, note) for n in names if reports[n] for note in reports[n]["notes"]]  # type: ignore[index]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {name}: {note}" for name, note in notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs (~2-3 minutes)")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(ORDER)}")
    parser.add_argument("--table", action="store_true", help="only print the table of the saved results")
    args = parser.parse_args(argv)
    fast = args.quick or quick()
    if fast:
        os.environ["BENCH_QUICK"] = "1"
    names = args.only.split(",") if args.only else list(ORDER)
    unknown = set(names) - set(ORDER)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    failed = []
    started = time.monotonic()
    if not args.table:
        print(f"ferryman benchmarks ({'quick' if fast else 'full'}): {', '.join(names)}; machine {machine()}")
        for name in names:
            if run(name, fast) != 0:
                failed.append(name)
    # latest.md always holds every benchmark's latest saved result: a run of one (--only)
    # updates its rows there instead of leaving a table of one benchmark behind.
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(table(list(ORDER)))
    print("\n" + table(list(ORDER) if args.only is None or args.table else names))
    if not args.table:
        minutes = (time.monotonic() - started) / 60
        print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {minutes:.1f} min; written to bench/results/latest.md")
        if failed:
            print(f"targets missed (or errors) in: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
