"""The delivery contract's own cost, without Ferryman: ``python -m bench._contract_baseline URL DIR``.

``bench._baseline`` is what a one-off script does; this is what a careful script must add
to give the guarantees of DESIGN.md's delivery contract on the same pages, written as
directly as the libraries allow, with no engine, connector or plugin layer:

- every record is **validated** into a typed model with aware UTC timestamps (pydantic,
  one ``TypeAdapter`` call per page, so the loop runs in pydantic-core's Rust);
- every record gets a **fingerprint** of its content (orjson + blake2b) and a **link row**
  (source key, target key, fingerprint) upserted in SQLite, so that a re-read skips what
  arrived and a crash loses or doubles nothing;
- per page, the CSV rows are appended to a ``.partial`` file and **fsynced**, then the
  links, the cursor and the partial's byte offset are committed in **one SQLite
  transaction** (WAL, ``synchronous=FULL``); at the end the partial is renamed into place.

It reads the same pages as ``bench._baseline`` (and Ferryman). It is a floor, not a
product: no dead letters, no retries, no rate limits, no mapping configuration, no
overlap re-reads. ``bench.pull`` reports Ferryman's throughput against it next to the
bare baseline, to tell the contract's cost from the engine's.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, TypeAdapter

from bench._baseline import COLUMNS, client, pages


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp without a timezone")
    return value.astimezone(UTC)


Utc = Annotated[datetime, AfterValidator(_utc)]


class Contact(BaseModel):
    id: int  # the sandbox's ids are numbers
    updated_at: Utc
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    company: str | None = None
    created_at: Utc | None = None


PAGE = TypeAdapter(list[Contact])

SCHEMA = """
CREATE TABLE IF NOT EXISTS links (src_key TEXT PRIMARY KEY, dst_key TEXT NOT NULL, fp TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursor (id INTEGER PRIMARY KEY, updated_at TEXT, key TEXT, csv_offset INTEGER);
"""
UPSERT = (
    "INSERT INTO links (src_key, dst_key, fp) VALUES (?, ?, ?) "
    "ON CONFLICT (src_key) DO UPDATE SET dst_key = excluded.dst_key, fp = excluded.fp"
)


def _z(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def pull(url: str, directory: Path, limit: int) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(directory / "state.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    partial = directory / "contacts.csv.partial"
    written = 0
    last: tuple[str, str] = ("", "")
    with client(url) as http, partial.open("wb") as fh:
        fh.write((",".join(COLUMNS) + "\n").encode())
        for rows in pages(http, limit):
            records = PAGE.validate_python(rows)
            links = (
                dict(
                    db.execute(
                        f"SELECT src_key, fp FROM links WHERE src_key IN ({','.join('?' * len(records))})",
                        [str(r.id) for r in records],
                    ).fetchall()
                )
                if records
                else {}
            )
            fresh, new_links = [], []
            for record in records:
                fp = hashlib.blake2b(record.__pydantic_serializer__.to_json(record), digest_size=16).hexdigest()
                key = str(record.id)
                if links.get(key) == fp:
                    continue  # already delivered with this content
                fresh.append(record)
                new_links.append((key, key, fp))
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(
                (r.id, _z(r.updated_at), r.email, r.first_name, r.last_name, r.phone, r.company, _z(r.created_at))
                for r in fresh
            )
            fh.write(buf.getvalue().encode())
            fh.flush()
            os.fsync(fh.fileno())
            if fresh:
                last = (_z(fresh[-1].updated_at) or "", str(fresh[-1].id))
            db.execute("BEGIN IMMEDIATE")
            db.executemany(UPSERT, new_links)
            db.execute(
                "INSERT INTO cursor (id, updated_at, key, csv_offset) VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE "
                "SET updated_at = excluded.updated_at, key = excluded.key, csv_offset = excluded.csv_offset",
                (last[0], last[1], fh.tell()),
            )
            db.execute("COMMIT")
            written += len(fresh)
    os.replace(partial, directory / "contacts.csv")
    db.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._contract_baseline", description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args(argv)
    print(pull(args.url, args.directory, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
