"""The CSV connector as a source and as a crash-safe target."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from ferryman.config import load_config
from ferryman.engine import Engine
from ferryman.records import Ticket, fingerprint
from ferryman.state import Link, PageCommit, StateStore
from ferryman.timeutil import parse_datetime

HEADER = "key,updated_at,subject,status,requester_email\n"


def setup(tmp_path: Path, state_url: str, rows: str, **csv_opts: object) -> Engine:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "tickets.csv").write_bytes(rows.encode() if isinstance(rows, str) else rows)
    doc = {
        "state": {"url": state_url},
        "systems": {
            "inbox": {"connector": "csv", "directory": str(tmp_path / "in"), **csv_opts},
            "out": {"connector": "csv", "directory": str(tmp_path / "out")},
        },
        "pipelines": {"p": {"from": "inbox.tickets", "to": "out.tickets", "page_size": 2}},
    }
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(doc))
    return Engine(load_config(tmp_path / "f.yaml", environ={}), StateStore.open(state_url))


def published(tmp_path: Path) -> list[dict[str, str]]:
    with (tmp_path / "out" / "tickets.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


async def test_malformed_rows_are_dead_lettered_with_line_numbers_and_good_rows_arrive(
    tmp_path: Path, state_url: str
) -> None:
    rows = (
        HEADER.encode()
        + b"1,2026-01-01T00:00:00Z,good one,open,a@example.com\n"
        + b"2,yesterday,bad date,open,b@example.com\n"
        + b"3,2026-01-01T00:00:02Z,missing columns\n"
        + b"4,2026-01-01T00:00:03Z,bad \xff\xfe bytes,open,c@example.com\n"
        + b"5,2026-01-01T00:00:04Z,naive time ok?,open,d@example.com\n"
        + b"6,2026-01-01T00:00:05,no zone,open,e@example.com\n"
        + b"7,2026-01-01T00:00:06Z,bad status,exploded,f@example.com\n"
        + b"8,2026-01-01T00:00:07Z,good two,closed,g@example.com\n"
    )
    engine = setup(tmp_path, state_url, rows)  # type: ignore[arg-type]
    result = await engine.run("p")
    assert result.outcome == "ok"
    assert sorted(r["key"] for r in published(tmp_path)) == ["1", "5", "8"]
    letters = {x.ref: x.reason for x in engine.store.dead_letters("p")}
    assert set(letters) == {"line 3", "line 4", "line 5", "line 7", "line 8"}
    assert "updated_at" in letters["line 3"]
    assert "expected 5 columns, found 3" in letters["line 4"]
    assert "invalid UTF-8" in letters["line 5"]
    assert "no timezone" in letters["line 7"]
    assert "status" in letters["line 8"]
    # a second run does not pile up duplicate dead letters
    await engine.run("p")
    assert len(engine.store.dead_letters("p")) == 5


async def test_fixed_rows_are_delivered_by_replay(tmp_path: Path, state_url: str) -> None:
    engine = setup(
        tmp_path, state_url, HEADER + "1,2026-01-01T00:00:00Z,a,open,a@example.com\n2,soon,b,open,b@example.com\n"
    )
    await engine.run("p")
    [letter] = engine.store.dead_letters("p")
    (tmp_path / "in" / "tickets.csv").write_text(
        HEADER + "1,2026-01-01T00:00:00Z,a,open,a@example.com\n2,2025-06-01T00:00:00Z,b,open,b@example.com\n"
    )
    assert [r[1] for r in await engine.replay([letter.id])] == ["delivered"]
    assert sorted(r["key"] for r in published(tmp_path)) == ["1", "2"]
    assert engine.store.dead_letters("p") == []


async def test_target_keeps_one_row_per_key_with_utc_z_timestamps(tmp_path: Path, state_url: str) -> None:
    engine = setup(
        tmp_path, state_url, HEADER + "1,2026-01-01 10:00:00,a,open,a@example.com\n", timezone="America/New_York"
    )
    await engine.run("p")
    (tmp_path / "in" / "tickets.csv").write_text(
        HEADER + "1,2026-01-02 10:00:00,a2,open,a@example.com\n2,2026-01-02 11:00:00,b,open,b@example.com\n"
    )
    await engine.run("p")
    (tmp_path / "in" / "tickets.csv").write_text(
        HEADER + "1,2026-01-03 10:00:00,a3,open,a@example.com\n2,2026-01-02 11:00:00,b,open,b@example.com\n"
    )
    await engine.run("p")
    rows = published(tmp_path)
    assert sorted((r["key"], r["subject"], r["updated_at"]) for r in rows) == [
        ("1", "a3", "2026-01-03T15:00:00Z"),
        ("2", "b", "2026-01-02T16:00:00Z"),
    ]
    assert not list((tmp_path / "out").glob("*.partial*"))


async def test_missing_key_column_is_a_clear_fatal_error(tmp_path: Path, state_url: str) -> None:
    engine = setup(tmp_path, state_url, "id,updated_at\n1,2026-01-01T00:00:00Z\n")
    result = await engine.run("p")
    assert result.outcome == "failed" and "missing column 'key'" in (result.message or "")
    assert engine.store.get_cursor("p") is None


@pytest.mark.parametrize("torn", [b"99,2026-01-0", b"99,2026-01-01T00:00:00Z,half a row"])
async def test_restart_truncates_an_uncommitted_tail(tmp_path: Path, state_url: str, torn: bytes) -> None:
    """Simulates kill -9 in the middle of an append: bytes past the committed offset vanish
    and the published file never sees them."""
    engine = setup(
        tmp_path,
        state_url,
        HEADER + "".join(f"{i},2026-01-01T00:00:{i:02d}Z,s{i},open,x@example.com\n" for i in range(6)),
    )
    # what the engine commits after a page: rows appended to the partial, its checkpoint and the links
    connector = await engine.system("out")
    await connector.restore("tickets", None)
    links = []
    for i in (0, 1):
        record = Ticket(
            key=str(i),
            updated_at=parse_datetime(f"2026-01-01T00:00:{i:02d}Z"),
            subject=f"s{i}",
            status="open",
            requester_email="x@example.com",
        )
        await connector.create("tickets", record)
        links.append(Link(str(i), str(i), fingerprint(record), fingerprint(record)))
    checkpoint = await connector.checkpoint("tickets")
    engine.store.commit_page(
        PageCommit("p", checkpoints={"out.tickets": checkpoint}, links={("inbox.tickets", "out.tickets"): links})
    )
    (partial,) = (tmp_path / "out").glob("tickets.csv.partial.*")  # this process's partial
    with partial.open("ab") as fh:
        fh.write(torn)
    await engine.aclose()
    fresh = Engine(engine.config, engine.store)
    result = await fresh.run("p")
    assert result.outcome == "ok"
    keys = [r["key"] for r in published(tmp_path)]
    assert sorted(keys) == ["0", "1", "2", "3", "4", "5"]
    assert torn not in (tmp_path / "out" / "tickets.csv").read_bytes()


def test_fast_encoding_writes_the_cells_a_json_dump_gives(tmp_path: Path) -> None:
    """The writer builds cells from field values (the hot path of a big sync); they must be
    exactly what a JSON-mode dump of the record gives: Z timestamps with and without
    microseconds, plain decimals, dates, true/false, extra as sorted JSON (pydantic's JSON
    form for datetimes and Decimals in it), and quoting of awkward text."""
    from datetime import UTC, date, datetime, timedelta, timezone
    from decimal import Decimal

    from ferryman.connector import SystemContext
    from ferryman.records import Contact, Invoice
    from ferryman_connectors.csv import CsvConnector, CsvOptions, _json_cell

    stamp = datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC)
    records = {
        "tickets": [
            Ticket(key="1", updated_at=stamp, subject='Comma, "quote"\nnewline', status="open"),
            Ticket(
                key="2",
                updated_at=stamp.replace(microsecond=120),
                deleted=True,
                closed_at=datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
                extra={"b": [1, 2.5, None, True], "a": {"z": "ü", "y": "x"}},
            ),
        ],
        "contacts": [
            Contact(key="c1", updated_at=stamp, email="a@example.com", extra={"when": stamp, "n": Decimal("1.10")}),
            Contact(key="c2", updated_at=stamp, extra={"raw": b"bytes", "when": date(2026, 1, 2)}),
        ],
        "invoices": [
            Invoice(
                key="i1",
                updated_at=stamp,
                amount=Decimal("1234.50"),
                balance_due=Decimal("0.00"),
                issued_on=date(2026, 1, 31),
                currency="EUR",
                status="paid",
            ),
            Invoice(key="i2", updated_at=stamp, amount=Decimal("1E+3")),
        ],
    }
    connector = CsvConnector(SystemContext("out", CsvOptions(directory=tmp_path), None, {}))
    for stream, batch in records.items():
        fields = connector._fields(stream)
        assert connector._cell_plan(stream) is not None, f"{stream} fell back to dumping records"
        expected = [[_json_cell(d.get(f)) for f in fields] for d in (r.model_dump(mode="json") for r in batch)]
        got = list(csv.reader(connector._encode(stream, batch).decode().splitlines(keepends=True)))
        assert got == expected, stream


async def test_a_crash_while_publishing_compacted_rows_leaves_nothing_torn(
    tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishing with updates compacts the rows; a crash at the moment of publishing must
    leave the partial matching its committed offset (no zeros, no lost rows after restart)."""
    import ferryman_connectors.csv as csv_connector

    engine = setup(tmp_path, state_url, HEADER + "1,2026-01-01T00:00:00Z,a,open,x@example.com\n")
    await engine.run("p")
    (tmp_path / "in" / "tickets.csv").write_text(
        HEADER + "1,2026-01-02T00:00:00Z,a2,open,x@example.com\n2,2026-01-02T00:00:01Z,b,open,y@example.com\n"
    )
    target = tmp_path / "out" / "tickets.csv"
    real_replace = csv_connector.os.replace

    def crash(src: object, dst: object) -> None:
        if Path(str(dst)) == target:
            raise OSError("simulated crash while publishing")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(csv_connector.os, "replace", crash)
    crashed = await engine.run("p")
    assert crashed.outcome == "failed"
    monkeypatch.setattr(csv_connector.os, "replace", real_replace)
    await engine.aclose()
    again = await Engine(engine.config, engine.store).run("p")
    assert again.outcome == "ok", again.message
    assert b"\x00" not in target.read_bytes()
    assert sorted((r["key"], r["subject"]) for r in published(tmp_path)) == [("1", "a2"), ("2", "b")]


async def test_a_process_that_took_over_and_died_before_committing_loses_no_committed_row(
    tmp_path: Path, default_state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Partials are per process. One process commits rows to its partial; a second copies
    them at restore (a restart, a takeover) and dies before committing anything; a third
    still finds the partial the state names, and publishes every committed row."""
    import ferryman_connectors.csv as csv_connector

    engine = setup(tmp_path, default_state_url, HEADER)
    connector = await engine.system("out")

    def as_process(token: str) -> None:
        monkeypatch.setattr(csv_connector, "_process_token", lambda: token)

    as_process("first")
    await connector.restore("tickets", None)
    for i in range(3):
        stamp = parse_datetime(f"2026-01-01T00:00:{i:02d}Z")
        await connector.create(
            "tickets", Ticket(key=str(i), updated_at=stamp, subject=f"s{i}", status="open", requester_email="x@e.com")
        )
    committed = await connector.checkpoint("tickets")  # the state now names the first partial
    assert committed is not None and committed["token"] == "first"
    as_process("second")
    await connector.restore("tickets", committed)  # copies, then "dies": nothing committed
    assert (tmp_path / "out" / "tickets.csv.partial.first").exists(), "still named by the state"
    as_process("third")
    await connector.restore("tickets", committed)
    assert await connector.finish("tickets") == {"state": "published"}
    assert sorted(r["key"] for r in published(tmp_path)) == ["0", "1", "2"]
    assert not list((tmp_path / "out").glob("*.partial*")), "published: no partial is needed any more"
    await engine.aclose()


async def test_a_compaction_cut_short_by_a_crash_leaves_no_copy_behind(tmp_path: Path, state_url: str) -> None:
    """kill -9 while a run compacted the published file on publishing (an update rewrites
    it) left ``tickets.csv.compact.<token>`` of a process that is gone, for ever: a full copy
    of the file per crash. The next run's restore removes it; the published file was whole."""
    engine = setup(tmp_path, state_url, HEADER + "1,2026-01-01T10:00:00Z,a,open,a@example.com\n")
    assert (await engine.run("p")).outcome == "ok"
    before = (tmp_path / "out" / "tickets.csv").read_bytes()
    stale = tmp_path / "out" / "tickets.csv.compact.4242-deadbeef"
    stale.write_bytes(before[: len(before) // 2])  # half-written, as a kill leaves it
    (tmp_path / "in" / "tickets.csv").write_text(HEADER + "1,2026-01-02T10:00:00Z,a2,open,a@example.com\n")
    assert (await engine.run("p")).outcome == "ok"
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tickets.csv"]
    assert [(r["key"], r["subject"]) for r in published(tmp_path)] == [("1", "a2")]
