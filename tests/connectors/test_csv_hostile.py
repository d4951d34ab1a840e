"""The CSV connector against hostile files: the equivalent of the hostile-server suite for
a source that is one file read whole (no paging, no server sort to distrust).

A CSV read notices instead of believing: a file in any row order yields every due row
exactly once in cursor order; a garbled row is a dead letter naming its line; a quote
that swallows the rows after it stops the run with the cursor held; a file rewritten
while it is read is read again (or the run stops), never half old and half new."""

from __future__ import annotations

import csv
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferryman.config import load_config
from ferryman.connector import SystemContext
from ferryman.cursor import Cursor, is_due, read_from, record_order
from ferryman.engine import Engine
from ferryman.records import Record
from ferryman.state import StateStore
from ferryman.testing import collect
from ferryman_connectors.csv import CsvConnector, CsvOptions

HEADER = ["key", "updated_at", "subject", "status", "requester_email"]
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def stamp(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def rows_for(n: int, *, per_second: int = 3, subject: str = "s") -> list[list[str]]:
    """``n`` rows, ``per_second`` of them sharing each whole second (page boundaries fall
    inside timestamp groups), keys numeric so that ``"9" < "10"`` matters."""
    return [[str(i), stamp(i // per_second), f"{subject}{i}", "open", f"u{i}@example.com"] for i in range(1, n + 1)]


def write(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def connector(directory: Path) -> CsvConnector:
    return CsvConnector(SystemContext("inbox", CsvOptions(directory=directory), None, {}))


def engine(tmp_path: Path, state_url: str, **pipeline: Any) -> Engine:
    doc = {
        "state": {"url": state_url},
        "systems": {
            "inbox": {"connector": "csv", "directory": str(tmp_path / "in")},
            "out": {"connector": "csv", "directory": str(tmp_path / "out")},
        },
        "pipelines": {"p": {"from": "inbox.tickets", "to": "out.tickets", "page_size": 2, **pipeline}},
    }
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(doc))
    return Engine(load_config(tmp_path / "f.yaml", environ={}), StateStore.open(state_url))


async def run(tmp_path: Path, state_url: str, **pipeline: Any) -> tuple[Engine, Any]:
    eng = engine(tmp_path, state_url, **pipeline)
    try:
        result = await eng.run("p")
    finally:
        await eng.aclose()
    return eng, result


def published(tmp_path: Path) -> dict[str, dict[str, str]]:
    path = tmp_path / "out" / "tickets.csv"
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        found: dict[str, dict[str, str]] = {}
        for row in csv.DictReader(fh):
            assert row["key"] not in found, f"key {row['key']} twice in the target"
            found[row["key"]] = row
    return found


# -- order ------------------------------------------------------------------------------------


async def test_an_unsorted_file_yields_every_due_row_once_in_cursor_order_from_any_cursor(tmp_path: Path) -> None:
    """The file's row order is not the cursor order: the connector sorts after reading the
    whole file, so no cursor can skip a row that sorts before a later line."""
    rows = rows_for(40)
    random.Random(14).shuffle(rows)
    write(tmp_path / "tickets.csv", rows)
    source = connector(tmp_path)
    everything, rejects = await collect(source.read("tickets", None, 4))
    assert rejects == [] and len(everything) == 40
    assert everything == sorted(everything, key=record_order)
    assert source.stream("tickets").ordered  # true because it sorts, not because the file is sorted
    for middle in everything:
        for since in (
            Cursor.of(middle),
            read_from(Cursor.of(middle), timedelta(0), source.stream("tickets").precision),
        ):
            got, _ = await collect(source.read("tickets", since, 3))
            keys = [r.key for r in got]
            assert len(keys) == len(set(keys)), f"from {since}: a key twice"
            assert set(keys) == {r.key for r in everything if is_due(r, since)}, f"from {since}"
            assert got == sorted(got, key=record_order)


async def test_an_unsorted_file_synced_page_by_page_delivers_every_row_and_every_edit(
    tmp_path: Path, default_state_url: str
) -> None:
    rows = rows_for(30)
    random.Random(15).shuffle(rows)
    write(tmp_path / "in" / "tickets.csv", rows)
    _, result = await run(tmp_path, default_state_url)
    assert result.outcome == "ok", result.message
    assert set(published(tmp_path)) == {r[0] for r in rows}
    # edits land at the end of the file and in the middle, with new timestamps, out of order again
    edited = {"3", "17", "29"}
    for row in rows:
        if row[0] in edited:
            row[1], row[2] = stamp(100 - int(row[0])), row[2] + " (edited)"
    random.Random(16).shuffle(rows)
    write(tmp_path / "in" / "tickets.csv", rows)
    _, result = await run(tmp_path, default_state_url)
    assert result.outcome == "ok", result.message
    target = published(tmp_path)
    assert {k for k, r in target.items() if r["subject"].endswith("(edited)")} == edited


async def test_rows_sharing_one_second_across_pages_with_overlap_0_lose_no_update(
    tmp_path: Path, default_state_url: str
) -> None:
    """Six rows in one second, two per page, ``overlap: 0s``: the cursor ends at the highest
    key of that second. A later change to a LOWER key within the same second (whole-second
    timestamps) must still be read: the cursor policy raises the overlap to the source's
    precision, which the CSV stream declares (1 s)."""
    rows = [[str(i), stamp(0), f"s{i}", "open", f"u{i}@example.com"] for i in range(1, 7)]
    write(tmp_path / "in" / "tickets.csv", rows)
    source = connector(tmp_path / "in")
    assert source.stream("tickets").precision == timedelta(seconds=1)
    eng, result = await run(tmp_path, default_state_url, overlap="0s")
    assert result.outcome == "ok", result.message
    assert eng.store.get_cursor("p") == Cursor(T0, "6")
    rows[0][2] = "s1 changed within the cursor's second"
    write(tmp_path / "in" / "tickets.csv", rows)
    # what the engine's read starts from, per the cursor policy
    since = read_from(Cursor(T0, "6"), timedelta(0), source.stream("tickets").precision)
    got, _ = await collect(source.read("tickets", since, 2))
    assert "1" in {r.key for r in got}
    _, result = await run(tmp_path, default_state_url, overlap="0s")
    assert result.outcome == "ok", result.message
    assert published(tmp_path)["1"]["subject"] == "s1 changed within the cursor's second"


# -- garbled rows -------------------------------------------------------------------------------


async def test_a_row_of_invalid_utf8_in_the_middle_is_a_dead_letter_naming_its_line_never_a_lost_row(
    tmp_path: Path, default_state_url: str
) -> None:
    rows = rows_for(10)
    write(tmp_path / "in" / "tickets.csv", rows)
    path = tmp_path / "in" / "tickets.csv"
    lines = path.read_bytes().split(b"\n")
    lines[5] = lines[5].replace(b"s5", b"s\xff\xfe5")  # line 6 of the file: key 5
    path.write_bytes(b"\n".join(lines))
    eng, result = await run(tmp_path, default_state_url)
    assert result.outcome == "ok", result.message
    assert set(published(tmp_path)) == {str(i) for i in range(1, 11)} - {"5"}
    [letter] = eng.store.dead_letters("p")
    assert letter.ref == "line 6" and "invalid UTF-8" in letter.reason and letter.src_key == "5"
    # the row, fixed, is delivered by replaying its letter (its timestamp is behind the cursor)
    write(path, rows)
    eng = engine(tmp_path, default_state_url)
    try:
        assert [r[1] for r in await eng.replay([letter.id])] == ["delivered"]
    finally:
        await eng.aclose()
    assert published(tmp_path)["5"]["subject"] == "s5"


@pytest.mark.parametrize("where", ["middle", "last row"])
async def test_a_quote_left_open_stops_the_run_naming_the_line_with_the_cursor_held(
    tmp_path: Path, default_state_url: str, where: str
) -> None:
    """An unclosed quote makes every following line part of one cell: a lenient CSV parser
    reads the rest of the file as that row's subject, and the rows after it vanish."""
    rows = rows_for(10)
    write(tmp_path / "in" / "tickets.csv", rows)
    path = tmp_path / "in" / "tickets.csv"
    lines = path.read_bytes().split(b"\n")
    broken = 4 if where == "middle" else 10
    # the quote opens the LAST cell, so the swallowing row still has the right number of cells
    lines[broken] = lines[broken].replace(b",u", b',"u')
    path.write_bytes(b"\n".join(lines))
    eng, result = await run(tmp_path, default_state_url)
    assert result.outcome == "failed", (result.outcome, published(tmp_path).keys())
    assert f"line {broken + 1}" in (result.message or "") and "quote" in (result.message or "")
    assert eng.store.get_cursor("p") is None


async def test_a_quote_that_swallows_rows_up_to_a_later_quote_stops_the_run(
    tmp_path: Path, default_state_url: str
) -> None:
    rows = rows_for(10)
    rows[2][2] = '"opened here'  # written quoted by csv.writer: make it raw below
    write(tmp_path / "in" / "tickets.csv", rows)
    path = tmp_path / "in" / "tickets.csv"
    text = path.read_text()
    text = text.replace('"""opened here"', '"opened here').replace("s7,open", 's7,open"')
    path.write_text(text)
    eng, result = await run(tmp_path, default_state_url)
    assert result.outcome == "failed", (result.outcome, sorted(published(tmp_path)))
    assert "line 4" in (result.message or "") and "quote" in (result.message or "")
    assert eng.store.get_cursor("p") is None


# -- a file that changes while it is read -----------------------------------------------------------


def _rewrite_in_place(path: Path, rows: list[list[str]]) -> None:
    """What an exporter that rewrites its file (no rename) does: same inode, new bytes."""
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(rows)
    with path.open("r+b") as fh:
        fh.truncate(0)
        fh.write(buf.getvalue().encode())


async def test_a_file_rewritten_in_place_during_the_read_is_read_again_not_half_old_half_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tickets.csv"
    old = rows_for(3000, subject="old subject ")
    write(path, old)
    new = [[*r[:2], "new", *r[3:]] for r in old[100:]]  # the first 100 rows removed, subjects changed
    calls = {"n": 0}
    real = CsvConnector._to_record

    def changing(self: CsvConnector, stream: str, row: dict[str, str]) -> Record:
        calls["n"] += 1
        if calls["n"] == 10:
            _rewrite_in_place(path, new)
        return real(self, stream, row)

    monkeypatch.setattr(CsvConnector, "_to_record", changing)
    got, rejects = await collect(connector(tmp_path).read("tickets", None, 500))
    assert rejects == []
    assert [r.key for r in got] == [r[0] for r in new]
    assert {getattr(r, "subject", None) for r in got} == {"new"}


async def test_a_file_that_never_stops_changing_stops_the_run(
    tmp_path: Path, default_state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "in" / "tickets.csv"
    rows = rows_for(3000)
    write(path, rows)
    real = CsvConnector._to_record
    calls = {"n": 0}

    def changing(self: CsvConnector, stream: str, row: dict[str, str]) -> Record:
        calls["n"] += 1
        if calls["n"] % 1000 == 10:
            rows.append([str(len(rows) + 1), stamp(5000), "appended", "open", "a@example.com"])
            _rewrite_in_place(path, rows)
        return real(self, stream, row)

    monkeypatch.setattr(CsvConnector, "_to_record", changing)
    eng, result = await run(tmp_path, default_state_url)
    assert result.outcome == "failed"
    assert "changed while" in (result.message or "") and "tickets.csv" in (result.message or "")
    assert eng.store.get_cursor("p") is None
    assert published(tmp_path) == {}


async def test_a_file_replaced_by_rename_during_the_read_is_one_consistent_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing elsewhere and renaming into place (what Ferryman itself does) is safe: the
    open file is the old one, whole; the new one is read next run."""
    import os

    path = tmp_path / "tickets.csv"
    old = rows_for(3000)
    write(path, old)
    real = CsvConnector._to_record
    calls = {"n": 0}

    def replacing(self: CsvConnector, stream: str, row: dict[str, str]) -> Record:
        calls["n"] += 1
        if calls["n"] == 10:
            write(tmp_path / "next.csv", old[:5])
            os.replace(tmp_path / "next.csv", path)
        return real(self, stream, row)

    monkeypatch.setattr(CsvConnector, "_to_record", replacing)
    got, _ = await collect(connector(tmp_path).read("tickets", None, 500))
    assert [r.key for r in got] == [r[0] for r in old]
    assert calls["n"] == 3000  # read once: a rename is not a change of the file being read


def test_a_files_timestamp_precision_is_declared_from_its_options(tmp_path: Path) -> None:
    """Minutes-only exports need the cursor policy to re-read a whole minute under ``overlap: 0s``."""
    minutes = CsvConnector(SystemContext("inbox", CsvOptions(directory=tmp_path, precision="minutes"), None, {}))
    assert minutes.stream("tickets").precision == timedelta(minutes=1)
    since = read_from(Cursor(T0, "9"), timedelta(0), minutes.stream("tickets").precision)
    assert since == Cursor(T0 - timedelta(minutes=1), "")
