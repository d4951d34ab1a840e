"""The simplest honest puller, to measure Ferryman against: ``python -m bench._baseline URL OUT``.

One keep-alive ``httpx.Client``, ``orjson``, ``csv.writer``; it asks the sandbox for the
same pages ``ferryman sync`` asks for (``updated_since`` = the last timestamp seen, 1000 per
page, falling back to the page cursor only when a page does not move the timestamp), drops
the records it already wrote (the boundary second is re-read), and writes one CSV row per
record. No validation, no state, no fsync: what a one-off script would do.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import httpx
import orjson

COLUMNS = ("id", "updated_at", "email", "first_name", "last_name", "phone", "company", "created_at")


def pages(client: httpx.Client, limit: int, log: TextIO | None = None) -> Iterator[list[dict[str, Any]]]:
    """The sandbox's contacts, a page of rows at a time, in the order ``ferryman sync`` reads
    them: ``updated_since`` = the last timestamp seen, paging on by cursor only within a
    page that does not move the timestamp. Shared by both baselines, so they read the same
    pages. With ``log``, every URL fetched is written to it."""
    since: str | None = None
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"paginate": "cursor", "limit": limit}
        if since is not None:
            params["updated_since"] = since
        if cursor is not None:
            params["cursor"] = cursor
        response = client.get("/api/contacts", params=params)
        response.raise_for_status()
        if log is not None:
            log.write(str(response.url) + "\n")
        body = orjson.loads(response.content)
        rows = body["data"]
        yield rows
        if body["next_cursor"] is None or not rows:
            return
        if rows[-1]["updated_at"] != since:
            since, cursor = rows[-1]["updated_at"], None
        else:
            cursor = body["next_cursor"]  # a page all of one second: page on within it


def client(url: str) -> httpx.Client:
    """One keep-alive client with the sandbox's key."""
    return httpx.Client(base_url=url, headers={"X-API-Key": "sandbox-key"}, timeout=60)


def pull(url: str, out: str, limit: int, urls: str | None) -> int:
    written = 0
    last: tuple[str, int] = ("", -1)
    log = open(urls, "w") if urls else None  # noqa: SIM115 - closed below
    with client(url) as http, open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        for rows in pages(http, limit, log):
            fresh = [r for r in rows if (r["updated_at"], r["id"]) > last]
            writer.writerows([r[c] for c in COLUMNS] for r in fresh)
            written += len(fresh)
            if fresh:
                last = (fresh[-1]["updated_at"], fresh[-1]["id"])
    if log is not None:
        log.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._baseline", description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--urls", help="also write every URL fetched to this file")
    args = parser.parse_args(argv)
    print(pull(args.url, args.out, args.limit, args.urls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
