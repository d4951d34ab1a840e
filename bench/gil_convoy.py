"""A page commit in the state thread beside a busy event loop: ``python -m bench.gil_convoy``.

One page's links upsert (1,000 rows, the state store's two indexes) and commit (WAL,
``synchronous=FULL``), timed alone and then while another thread is busy in Python, as the
event loop is while it maps the next page (read-ahead). ``sqlite3`` releases the GIL around
every statement step and must take it back after each, waiting for the busy thread's
switch interval: with ``executemany`` (a step per row) the commit slows down hundreds of
times over. Measured four ways: executemany or one multi-row ``VALUES`` statement (what
``ferryman.state.sql.insert_rows`` does), at the default 5 ms switch interval and at the
1 ms a state pool sets. Medians of 20 pages each.
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

UPSERT = (
    "INSERT INTO links (src, dst, src_key, dst_key, fp) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (src, dst, src_key) DO UPDATE SET fp = excluded.fp"
)
MULTI = (
    "INSERT INTO links (src, dst, src_key, dst_key, fp) VALUES {values} "
    "ON CONFLICT (src, dst, src_key) DO UPDATE SET fp = excluded.fp"
)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ferryman-bench-convoy-") as tmp:
        db = sqlite3.connect(Path(tmp) / "s.db", isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE links (id INTEGER PRIMARY KEY, src TEXT, dst TEXT, src_key TEXT, dst_key TEXT, fp TEXT,"
            " UNIQUE (src, dst, src_key))"
        )
        db.execute("CREATE INDEX ix_links_dst ON links (dst, src, dst_key)")
        pages = iter(range(1_000_000))

        def page(multi: bool) -> float:
            base = next(pages) * 1000
            rows = [("a.t", "b.t", str((base + i) * 7919 % 1_000_003), str(base + i), "f" * 32) for i in range(1000)]
            started = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            if multi:
                values = ", ".join(["(?, ?, ?, ?, ?)"] * len(rows))
                db.execute(MULTI.format(values=values), [v for row in rows for v in row])
            else:
                db.executemany(UPSERT, rows)
            db.execute("COMMIT")
            return time.perf_counter() - started

        def busy(stop: threading.Event) -> None:
            total = 0
            while not stop.is_set():
                for i in range(1000):
                    total += i * i

        for interval in (0.005, 0.001):
            sys.setswitchinterval(interval)
            for multi in (False, True):
                alone = [page(multi) for _ in range(20)]
                stop = threading.Event()
                thread = threading.Thread(target=busy, args=(stop,))
                thread.start()
                try:
                    beside = [page(multi) for _ in range(20 if multi or interval < 0.005 else 5)]
                finally:
                    stop.set()
                    thread.join()
                a, b = statistics.median(alone) * 1e3, statistics.median(beside) * 1e3
                how = "one multi-row statement" if multi else "executemany"
                print(
                    f"switch interval {interval * 1e3:.0f} ms, {how}: one page's links upsert + commit "
                    f"{a:.1f} ms alone, {b:.1f} ms beside a busy thread ({b / a:.1f}x)"
                )
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
