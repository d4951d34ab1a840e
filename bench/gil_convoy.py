"""Why page commits do not run in a thread beside the mapping: ``python -m bench.gil_convoy``.

One page's links upsert (1,000 rows, the state store's two indexes) and commit (WAL,
``synchronous=FULL``), timed alone and then while another thread is busy in Python, as the
next page's mapping would be. ``sqlite3`` releases the GIL around every statement step and
must take it back after each, waiting for the busy thread's switch interval: the commit
slows down several times over instead of overlapping. Medians of 20 pages each.
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

        def page() -> float:
            base = next(pages) * 1000
            rows = [("a.t", "b.t", str((base + i) * 7919 % 1_000_003), str(base + i), "f" * 32) for i in range(1000)]
            started = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.executemany(UPSERT, rows)
            db.execute("COMMIT")
            return time.perf_counter() - started

        def busy(stop: threading.Event) -> None:
            total = 0
            while not stop.is_set():
                for i in range(1000):
                    total += i * i

        alone = [page() for _ in range(20)]
        stop = threading.Event()
        thread = threading.Thread(target=busy, args=(stop,))
        thread.start()
        try:
            beside = [page() for _ in range(20)]
        finally:
            stop.set()
            thread.join()
        db.close()
    a, b = statistics.median(alone) * 1e3, statistics.median(beside) * 1e3
    print(f"one page's links upsert + commit: {a:.1f} ms alone, {b:.1f} ms beside a busy thread ({b / a:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
