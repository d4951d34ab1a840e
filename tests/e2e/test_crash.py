"""kill -9 at random moments during CSV -> CSV syncs of 50,000 records: afterwards the
target holds every source record exactly once, and the published file is never torn."""

from __future__ import annotations

import csv
import io
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ferryman_cmd

N = 50_000
KILLS = 20
FIELDS = ["key", "updated_at", "subject", "status", "requester_email"]


def write_source(path: Path, rows: dict[str, list[str]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(FIELDS)
        writer.writerows(rows.values())
    os.replace(tmp, path)


def check_not_torn(path: Path) -> dict[str, dict[str, str]]:
    """The published file parses completely, row by row, with no duplicate key."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    assert data.endswith(b"\n"), "published file ends mid-line"
    reader = csv.reader(io.StringIO(data.decode("utf-8")))
    header = next(reader)
    seen: dict[str, dict[str, str]] = {}
    for cells in reader:
        assert len(cells) == len(header), f"torn row: {cells!r}"
        row = dict(zip(header, cells, strict=True))
        assert row["key"] not in seen, f"key {row['key']} twice in the published file"
        seen[row["key"]] = row
    return seen


@pytest.mark.slow  # 50,000 records and 20 kills: about 40 s (tests/connectors/test_csv_kill9.py runs in make test)
def test_sigkill_at_random_moments_loses_and_doubles_nothing(tmp_path: Path, default_state_url: str) -> None:
    rng = random.Random(int(os.environ.get("FERRYMAN_CRASH_SEED", "20261122")))
    src_dir, out_dir = tmp_path / "in", tmp_path / "out"
    src_dir.mkdir()
    rows: dict[str, list[str]] = {}
    for i in range(N):
        # many records share a timestamp, so page boundaries fall inside timestamp groups
        rows[f"T{i:06d}"] = [
            f"T{i:06d}",
            f"2026-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:00Z",
            f"subject {i}",
            "open",
            f"u{i}@example.com",
        ]
    source = src_dir / "tickets.csv"
    write_source(source, rows)
    config = tmp_path / "ferryman.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state": {"url": default_state_url},
                "log": {"format": "json", "level": "warning"},
                "systems": {
                    "inbox": {"connector": "csv", "directory": str(src_dir)},
                    "out": {"connector": "csv", "directory": str(out_dir)},
                },
                "pipelines": {"t2c": {"from": "inbox.tickets", "to": "out.tickets", "page_size": 500}},
            }
        )
    )
    cmd = [*ferryman_cmd(), "--config", str(config), "sync", "t2c", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    killed_mid_run = 0
    next_id = N
    typical = 6.0  # seconds an uninterrupted run takes; measured as the test goes
    for round_no in range(KILLS):
        full = ["--full"] if round_no % 4 == 3 else []
        started = time.monotonic()
        proc = subprocess.Popen([*cmd, *full], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = started + rng.uniform(0.3, max(0.6, typical * 0.95))
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        else:
            typical = time.monotonic() - started
            assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
        proc.wait(timeout=60)
        check_not_torn(out_dir / "tickets.csv")
        # the source keeps changing between crashes: new rows and edits of old ones
        stamp = f"2026-02-{1 + round_no:02d}T00:00:00Z"
        for _ in range(1000):
            key = f"T{next_id:06d}"
            rows[key] = [key, stamp, f"subject {next_id}", "open", f"u{next_id}@example.com"]
            next_id += 1
        for key in rng.sample(sorted(rows), 2000):
            rows[key][1], rows[key][2] = stamp, rows[key][2] + " (edited)"
        write_source(source, rows)
    assert killed_mid_run >= KILLS * 3 // 4, f"only {killed_mid_run} of {KILLS} kills landed during a run"

    final = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert final.returncode == 0, final.stderr
    published = check_not_torn(out_dir / "tickets.csv")
    assert set(published) == set(rows), "every source record exactly once"
    mismatched = [k for k, r in rows.items() if published[k]["subject"] != r[2] or published[k]["updated_at"] != r[1]]
    assert mismatched == [], f"{len(mismatched)} records hold stale content, e.g. {mismatched[:3]}"
    assert not list(out_dir.glob("*.partial*"))
