"""kill -9 at random moments while ``ferryman sync`` pulls N contacts from a sandbox app over
loopback HTTP into CSV (issue "Fast": "SIGKILL at random during a 1,000,000-record pull to
CSV, 20 times"): afterwards the published CSV holds every record the app serves exactly
once, with the content it serves, and it was never torn in between.

Off unless ``FERRYMAN_CRASH_RECORDS`` is set (and marked ``slow``)::

    FERRYMAN_CRASH_RECORDS=1000000 .venv/bin/python -m pytest -q -s -m slow -p no:cacheprovider \\
        tests/e2e/test_crash_million.py

``FERRYMAN_CRASH_KILLS`` (default 20) and ``FERRYMAN_CRASH_SEED`` tune it.

The app is the benchmark's sandbox (``bench._sandbox``: precomputed pages, contacts only) and
the config is the benchmark's own (``bench.pull.write_config``: ``rest`` contacts read by
keyset on ``updated_since``, 1000 a page, into ``out/contacts.csv``, state in SQLite beside
it), so what is crashed is what ``bench.pull`` times. The state stays on that SQLite file
rather than ``default_state_url``: the run that times a typical pull has its own state
database, and both must be of the same kind for the timing to carry over.

First an uninterrupted pull in a scratch directory gives the time a typical pull takes and
the size of the file it publishes. Then, in the real directory:

- **the first pull**, three quarters of the kills. The generated data does not change
  between kills, so a resumed pull only has what is left: kills drawn over a whole pull's
  duration would let the second or third run finish it. Instead each kill has a point of
  the file drawn uniformly (sorted, so they cover the whole pull): the run is killed at a
  random moment within a page or two after its partial file has grown past that point
  (its size is polled), whatever the run was doing then (reading, writing, committing, or
  copying the previous run's partial when the point was already behind).
- **``--full`` passes**, the other quarter. Before each, ``EDITS`` random contacts are
  changed through the app's own API (``PATCH``, a new ``company``): a full pass over
  unchanged records skips them all and never touches the CSV; with changes it rewrites the
  published file (a copy of it plus the changed rows, compacted when published). The
  changed records are the newest, so they come last: each kill falls uniformly over the
  second half of a typical ``--full`` run, timed as the rounds go (like
  tests/e2e/test_crash.py), which holds that writing and publishing; a draw past the end
  lets the run finish and publish instead.

After every round the published file must parse completely with no key twice (while the
first pull is unfinished there is none yet: a run publishes when it ends). Then one
uninterrupted run must end well, and the published file must hold exactly what the app
serves, compared column by column, with nothing left beside it.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench._baseline import client, pages
from bench._common import KEY, Sandbox
from bench.pull import contacts_stream, sync_cmd, write_config

N = int(os.environ.get("FERRYMAN_CRASH_RECORDS") or 0)
KILLS = int(os.environ.get("FERRYMAN_CRASH_KILLS") or 20)
SEED = int(os.environ.get("FERRYMAN_CRASH_SEED") or 20261122)
EDITS = 200  # contacts changed before each --full pass
PAGE = 1000  # records a page, as bench.pull.write_config asks
# The CSV column (Ferryman's canonical field) and the app's field it comes from: every
# field the bench config maps, so a row is compared whole.
COMPARED = {"key": "id", "updated_at": "updated_at", **contacts_stream()["fields"]}

Content = tuple[str, ...]


def served(url: str) -> dict[str, Content]:
    """Every contact the app serves now, by key, as the compared columns: read with httpx
    page by page exactly as bench/_baseline.py reads them (keyset on ``updated_since``)."""
    found: dict[str, Content] = {}
    with client(url) as http:
        for rows in pages(http, PAGE):
            for row in rows:
                content = tuple("" if row[f] is None else str(row[f]) for f in COMPARED.values())
                found[content[0]] = content  # a boundary second is read twice: same content
    return found


def published_rows(path: Path) -> Iterator[list[str]]:
    """The published file's data rows (compared columns), after checking that it is whole:
    it ends with a line break and every row has as many cells as the header."""
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        assert fh.read(1) == b"\n", "the published file ends mid-line"
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        assert set(COMPARED) <= set(header), f"published header {header}"
        columns = [header.index(c) for c in COMPARED]
        for line, cells in enumerate(reader, start=2):
            assert len(cells) == len(header), f"torn row at line {line}: {cells!r}"
            yield [cells[i] for i in columns]


def check_not_torn(path: Path, known: set[str]) -> int:
    """Rows in the published file (0 while there is none); each key once and one the app serves."""
    if not path.exists():
        return 0
    seen: set[str] = set()
    for cells in published_rows(path):
        key = cells[0]
        assert key not in seen, f"key {key} twice in the published file"
        assert key in known, f"key {key} is not one the app serves"
        seen.add(key)
    return len(seen)


def partial_size(out: Path) -> int:
    """Bytes in the largest partial file of the CSV (the running process's: a new run starts
    its own from the committed part of the last one's)."""
    sizes = [0]
    for path in out.glob("contacts.csv.partial.*"):
        with contextlib.suppress(FileNotFoundError):  # removed between the listing and the stat
            sizes.append(path.stat().st_size)
    return max(sizes)


def edit(url: str, keys: list[str], rng: random.Random, round_no: int) -> None:
    """Change ``EDITS`` random contacts through the app's API: each becomes the newest row."""
    with client(url) as http:
        for key in rng.sample(keys, min(EDITS, len(keys))):
            response = http.patch(f"/api/contacts/{key}", json={"company": f"Crash round {round_no} Ltd"})
            response.raise_for_status()


@pytest.mark.slow
@pytest.mark.skipif(not N, reason="set FERRYMAN_CRASH_RECORDS (e.g. 1000000) to run the big crash test")
@pytest.mark.timeout(300 + N // 200)  # 1,000,000 records: 5,300 s at most
def test_sigkill_during_a_big_pull_loses_and_doubles_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    began = time.monotonic()
    env = {**{k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}, "BENCH_KEY": KEY}
    with Sandbox(N) as sandbox:
        keys = sorted(served(sandbox.url))
        assert len(keys) == N, f"the sandbox serves {len(keys)} contacts, expected {N}"
        known = set(keys)

        # A typical uninterrupted pull, timed in a scratch directory of its own.
        scratch = tmp_path / "timing"
        scratch.mkdir()
        started = time.monotonic()
        timing = subprocess.run(
            sync_cmd(write_config(scratch, sandbox.url)), env=env, capture_output=True, text=True, check=False
        )
        pull_time = time.monotonic() - started
        assert timing.returncode == 0, timing.stderr
        full_size = (scratch / "out" / "contacts.csv").stat().st_size
        shutil.rmtree(scratch)  # a million records leave some hundreds of MB
        page_time = pull_time / (N / PAGE + 1)

        work = tmp_path / "run"
        work.mkdir()
        config = write_config(work, sandbox.url)
        out = work / "out"
        published_csv = out / "contacts.csv"
        pull_kills = KILLS - KILLS // 4
        points = sorted(rng.uniform(0.02, 0.98) * full_size for _ in range(pull_kills))
        typical_full = pull_time  # until a --full run is timed
        landed = {"pull": 0, "full": 0}
        written_at: list[str] = []  # how much of the file the first pull had written at each kill
        first_pull_done = False
        for round_no in range(KILLS):
            kind = "full" if first_pull_done or round_no >= pull_kills else "pull"
            if kind == "full":
                edit(sandbox.url, keys, rng, round_no)
            stderr = work / f"round-{round_no}.err"
            with stderr.open("w") as err:
                started = time.monotonic()
                proc = subprocess.Popen(
                    sync_cmd(config, "contacts", *(["--full"] if kind == "full" else [])),
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env=env,
                )
                if kind == "pull":
                    give_up = started + 3 * pull_time + 60
                    while proc.poll() is None and partial_size(out) < points[round_no]:
                        if time.monotonic() > give_up:
                            proc.kill()
                            proc.wait()
                            pytest.fail(
                                f"round {round_no}: the partial file did not grow past {points[round_no]:.0f} bytes"
                            )
                        time.sleep(0.005)
                    deadline = time.monotonic() + rng.uniform(0, 2 * page_time)
                else:
                    deadline = started + rng.uniform(0.5, 1.0) * typical_full
                while proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.005)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    landed[kind] += 1
                    if kind == "pull":
                        proc.wait(timeout=60)
                        size = partial_size(out)  # none: killed after publishing, on its way out
                        written_at.append(f"{size / full_size:.0%}" if size else "published")
                else:
                    assert proc.returncode == 0, f"round {round_no} ({kind}): {stderr.read_text()}"
                    if kind == "full":
                        typical_full = time.monotonic() - started
                    first_pull_done = True
                proc.wait(timeout=60)
            check_not_torn(published_csv, known)

        started = time.monotonic()
        final = subprocess.run(sync_cmd(config), env=env, capture_output=True, text=True, timeout=600 + 20 * pull_time)
        final_time = time.monotonic() - started
        assert final.returncode == 0, final.stderr
        expected = served(sandbox.url)

    kills = landed["pull"] + landed["full"]
    print(
        f"\ncrash test: N={N:,}, {kills}/{KILLS} kills landed mid-run ({landed['pull']} in the first pull, "
        f"{landed['full']} in --full passes; the pull's were at {' '.join(written_at)} "
        f"of the file), typical pull {pull_time:.1f} s, --full {typical_full:.1f} s, "
        f"final run {final_time:.1f} s, total {time.monotonic() - began:.0f} s (seed {SEED})"
    )
    assert kills >= KILLS * 3 // 4, f"only {kills} of {KILLS} kills landed during a run"
    assert len(expected) == N, f"the sandbox serves {len(expected)} contacts after the rounds, expected {N}"
    seen: set[str] = set()
    extra: list[str] = []
    stale: list[tuple[str, ...]] = []
    for cells in published_rows(published_csv):
        key = cells[0]
        assert key not in seen, f"key {key} twice in the published file"
        seen.add(key)
        if key not in expected:
            extra.append(key)
        elif tuple(cells) != expected[key]:
            stale.append(tuple(cells))
    missing = sorted(set(expected) - seen)
    assert not missing and not extra, f"{len(missing)} records missing (e.g. {missing[:3]}), {len(extra)} extra"
    assert stale == [], f"{len(stale)} records differ from what the app serves, e.g. {stale[:2]}"
    assert not list(out.glob("*.partial*")), "partial files left beside the published CSV"
    # A kill while a run compacts the file as it publishes leaves contacts.csv.compact.TOKEN:
    # the next process has another token, and the sink's leftovers() do not match that name.
    leftover = sorted(p.name for p in out.iterdir() if p.name != "contacts.csv")
    assert leftover == [], f"files left beside the published CSV: {leftover}"
