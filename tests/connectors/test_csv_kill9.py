"""The CSV target under ``kill -9`` at exact moments of a page: halfway through writing its
rows, after its rows are on disk but before the state commit, and just after the commit.

``tests/e2e/test_crash.py`` kills 50,000-record syncs at random moments; this module kills a
small sync at the moments that matter, deterministically, so a regression in the
checkpoint/truncate mechanism fails every time instead of now and then. The process
really dies by SIGKILL (no ``finally``, no flush); the restart is an ordinary run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ferryman.config import load_config
from ferryman.engine import Engine
from ferryman.state import StateStore
from tests.e2e.test_crash import check_not_torn

FIELDS = ["key", "updated_at", "subject", "status", "requester_email"]
PAGE_SIZE = 4

# Runs one sync in a child process and SIGKILLs it at the chosen moment of page ``page``.
DRIVER = r"""
import asyncio, os, signal, sys
import ferryman_connectors.csv as csv_connector
from ferryman.config import load_config
from ferryman.engine import Engine
from ferryman.state import StateStore

config_file, state_url, point, page = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
seen = {"flush": 0, "commit": 0}
real_write_out = csv_connector.CsvConnector._write_out  # where a page's rows are written
real_commit = StateStore.commit_page

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def flush(self, sink):
    if sink.buffer:
        seen["flush"] += 1
        if point == "mid-write" and seen["flush"] == page:
            stream = self._stream_of(sink)
            if sink.fh is None:
                self._open_partial(stream, sink)
            data = self._encode(stream, sink.buffer)
            middle = data.index(b"\n", len(data) // 2) + 5  # a few bytes into a row: a torn row
            sink.fh.write(data[:middle])
            sink.fh.flush()
            os.fsync(sink.fh.fileno())
            die()
    return real_write_out(self, sink)

def commit(self, page_commit):
    if page_commit.checkpoints:
        seen["commit"] += 1
        if point == "before-commit" and seen["commit"] == page:
            die()
    result = real_commit(self, page_commit)
    if point == "after-commit" and seen["commit"] == page and page_commit.checkpoints:
        die()
    return result

csv_connector.CsvConnector._write_out = flush
StateStore.commit_page = commit

async def main():
    engine = Engine(load_config(config_file, environ={}), StateStore.open(state_url))
    try:
        result = await engine.run("p")
    finally:
        await engine.aclose()
    print(result.outcome, result.message)

asyncio.run(main())
"""


def write_source(path: Path, rows: dict[str, list[str]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(FIELDS)
        writer.writerows(rows.values())
    os.replace(tmp, path)


def killed_run(config: Path, state_url: str, point: str, page: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(config), state_url, point, str(page)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, f"the sync was not killed at {point}: {proc.stdout}{proc.stderr}"


async def clean_run(config: Path, state_url: str) -> None:
    engine = Engine(load_config(config, environ={}), StateStore.open(state_url))
    try:
        result = await engine.run("p")
    finally:
        await engine.aclose()
    assert result.outcome == "ok", result.message


@pytest.mark.parametrize("point", ["mid-write", "before-commit", "after-commit"])
async def test_kill_9_during_a_page_leaves_no_half_row_and_no_duplicate_after_restart(
    tmp_path: Path, default_state_url: str, point: str
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rows = {
        f"T{i:03d}": [f"T{i:03d}", f"2026-01-01T00:00:{i // 3:02d}Z", f"subject {i}", "open", f"u{i}@example.com"]
        for i in range(22)
    }
    write_source(src / "tickets.csv", rows)
    config = tmp_path / "ferryman.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state": {"url": default_state_url},
                "log": {"level": "warning"},
                "systems": {
                    "inbox": {"connector": "csv", "directory": str(src)},
                    "out": {"connector": "csv", "directory": str(out)},
                },
                "pipelines": {"p": {"from": "inbox.tickets", "to": "out.tickets", "page_size": PAGE_SIZE}},
            }
        )
    )

    # first sync: creates only, killed on its third page
    killed_run(config, default_state_url, point, 3)
    assert check_not_torn(out / "tickets.csv") == {}  # nothing is published before a run ends
    partials = list(out.glob("tickets.csv.partial.*"))  # the killed process's partial
    assert len(partials) == 1, "the kill landed before anything was written"
    partial = partials[0]
    if point == "mid-write":
        assert not partial.read_bytes().endswith(b"\n"), "the kill was meant to leave a torn row"
    await clean_run(config, default_state_url)
    published = check_not_torn(out / "tickets.csv")
    assert set(published) == set(rows)

    # second sync: edits (updates of keys already published) and new rows, killed on its second page
    for i in (1, 5, 9, 13, 17, 21):
        key = f"T{i:03d}"
        rows[key][1], rows[key][2] = "2026-01-02T00:00:00Z", f"subject {i} (edited)"
    for i in range(22, 28):
        rows[f"T{i:03d}"] = [f"T{i:03d}", "2026-01-02T00:00:01Z", f"subject {i}", "open", f"u{i}@example.com"]
    write_source(src / "tickets.csv", rows)
    killed_run(config, default_state_url, point, 2)
    assert check_not_torn(out / "tickets.csv").keys() == published.keys()  # the published file is untouched
    await clean_run(config, default_state_url)
    published = check_not_torn(out / "tickets.csv")
    assert set(published) == set(rows)
    stale = [k for k, r in rows.items() if (published[k]["subject"], published[k]["updated_at"]) != (r[2], r[1])]
    assert stale == []
    assert not list(out.glob("*.partial*"))
