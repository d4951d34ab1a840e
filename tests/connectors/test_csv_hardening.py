"""The CSV connector against hostile text (issue 16, items 5 and 10): a lone carriage return
must not tear a row, text a spreadsheet would run as a formula is neutralised (and read back
as it was), and per-stream file names cannot lead outside the configured directory."""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferryman.config import load_config
from ferryman.connector import SystemContext
from ferryman.errors import ConfigError
from ferryman.records import Contact, Invoice, Record, Ticket
from ferryman.testing import collect
from ferryman_connectors.csv import CsvConnector, CsvOptions

STAMP = datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC)


def connector(directory: Path, **options: Any) -> CsvConnector:
    return CsvConnector(SystemContext("out", CsvOptions(directory=directory, **options), None, {}))


async def write(target: CsvConnector, stream: str, records: list[Record], updates: list[Record] = ()) -> None:  # type: ignore[assignment]
    await target.restore(stream, None)
    for record in records:
        await target.create(stream, record)
    await target.checkpoint(stream)
    for record in updates:
        await target.update(stream, record.key, record)
    await target.finish(stream)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# -- item 5: a lone \r ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compacted", [False, True], ids=["appended", "compacted"])
async def test_a_lone_carriage_return_in_a_text_field_stays_inside_its_row(tmp_path: Path, compacted: bool) -> None:
    """Before: ``a\\rb`` was written unquoted, so Python's csv, Excel and Ferryman's own reader
    split the row in two (and the second half became a dead letter or a bogus record)."""
    target = connector(tmp_path)
    torn = Ticket(key="1", updated_at=STAMP, subject="first half\rsecond half", description="x\r\ny\rz")
    plain = Ticket(key="2", updated_at=STAMP, subject="plain")
    if compacted:  # an update makes the end of the run rewrite (compact) the file
        await write(target, "tickets", [Ticket(key="1", updated_at=STAMP), plain], updates=[torn])
    else:
        await write(target, "tickets", [torn, plain])
    published = {r["key"]: r for r in rows(tmp_path / "tickets.csv")}
    assert sorted(published) == ["1", "2"], published
    assert published["1"]["subject"] == "first half\rsecond half"
    assert published["1"]["description"] == "x\r\ny\rz"
    records, rejects = await collect(connector(tmp_path).read("tickets", None, 10))
    assert rejects == []
    assert {r.key: r.model_dump()["subject"] for r in records} == {"1": "first half\rsecond half", "2": "plain"}


# -- item 5: formula_guard -----------------------------------------------------------------------------

HOSTILE = [
    '=HYPERLINK("http://evil.example","x")',
    "+cmd|' /C calc'!A0",
    "-2+A3",
    "@SUM(A1:A9)",
    "\t=1",
    "\r=1",
    "+1, 2",
    '-1 "x"',
    "+1\n=2",
]


async def test_text_a_spreadsheet_would_run_is_written_with_a_quote_prefix_and_read_back_as_it_was(
    tmp_path: Path,
) -> None:
    """Before: ``=HYPERLINK(...)`` and friends were written as they came (CSV injection)."""
    target = connector(tmp_path)
    tickets: list[Record] = [Ticket(key=str(i), updated_at=STAMP, subject=text) for i, text in enumerate(HOSTILE)]
    tickets.append(Ticket(key="q", updated_at=STAMP, subject="'=already quoted", description="'plain"))
    await write(target, "tickets", tickets)
    published = {r["key"]: r for r in rows(tmp_path / "tickets.csv")}
    for i, text in enumerate(HOSTILE):
        assert published[str(i)]["subject"] == "'" + text
    assert published["q"]["subject"] == "''=already quoted"  # so that reading back is exact
    assert published["q"]["description"] == "'plain"  # nothing to neutralise: as it is
    records, rejects = await collect(connector(tmp_path).read("tickets", None, 50))
    assert rejects == []
    assert {r.key: r for r in records} == {t.key: t for t in tickets}
    assert await connector(tmp_path).get("tickets", "0") == tickets[0]


async def test_typed_numbers_and_phone_numbers_are_written_as_they_are(tmp_path: Path) -> None:
    """Amounts are Decimals, written as plain numbers even when negative. A phone number is
    text, but a sign followed by digits and separators can name no cell and call no
    function, so it is not touched either; the same with a letter or a pipe after it is."""
    target = connector(tmp_path)
    await write(target, "invoices", [Invoice(key="-7", updated_at=STAMP, amount=Decimal("-12.50"), number="-7")])
    contacts: list[Record] = [
        Contact(key="c1", updated_at=STAMP, phone="+44 20 7946 0000", mobile="+44 (0)7700-900.123"),
        Contact(key="c2", updated_at=STAMP, phone="+44 20 7946 0000|cmd", mobile="-1+1"),
    ]
    await write(target, "contacts", contacts)
    [invoice] = rows(tmp_path / "invoices.csv")
    assert (invoice["amount"], invoice["number"], invoice["key"]) == ("-12.50", "-7", "-7")
    plain, hostile = rows(tmp_path / "contacts.csv")
    assert not target._may_hold_formula(target._encode("contacts", contacts[:1]).decode()), "fast path kept"
    assert (plain["phone"], plain["mobile"]) == ("+44 20 7946 0000", "+44 (0)7700-900.123")
    assert (hostile["phone"], hostile["mobile"]) == ("'+44 20 7946 0000|cmd", "'-1+1")
    [read_invoice], _ = await collect(connector(tmp_path).read("invoices", None, 10))
    assert read_invoice == Invoice(key="-7", updated_at=STAMP, amount=Decimal("-12.50"), number="-7")
    read_contacts, _ = await collect(connector(tmp_path).read("contacts", None, 10))
    assert sorted(read_contacts, key=lambda r: r.key) == contacts


async def test_formula_guard_false_writes_and_reads_text_as_it_is(tmp_path: Path) -> None:
    target = connector(tmp_path, formula_guard=False)
    await write(target, "tickets", [Ticket(key="1", updated_at=STAMP, subject="=1+1", description="'=kept")])
    [row] = rows(tmp_path / "tickets.csv")
    assert (row["subject"], row["description"]) == ("=1+1", "'=kept")
    [record], _ = await collect(connector(tmp_path, formula_guard=False).read("tickets", None, 10))
    assert record == Ticket(key="1", updated_at=STAMP, subject="=1+1", description="'=kept")


async def test_an_updated_guarded_key_is_compacted_to_one_row(tmp_path: Path) -> None:
    target = connector(tmp_path)
    first = Ticket(key="=1", updated_at=STAMP, subject="old")
    await write(target, "tickets", [first], updates=[first.model_copy(update={"subject": "new"})])
    assert [(r["key"], r["subject"]) for r in rows(tmp_path / "tickets.csv")] == [("'=1", "new")]
    assert await connector(tmp_path).get("tickets", "=1") == first.model_copy(update={"subject": "new"})


# -- item 10: file names stay inside the directory ------------------------------------------------------


def config_with_files(tmp_path: Path, files: dict[str, str]) -> Path:
    doc = {"systems": {"exports": {"connector": "csv", "directory": str(tmp_path / "out"), "files": files}}}
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("name", ["../../x.csv", "/tmp/x.csv", "sub/../../x.csv", "..", "", "a\x00b.csv"], ids=repr)
def test_a_file_name_leading_out_of_the_directory_is_a_config_error(tmp_path: Path, name: str) -> None:
    """Before: ``files: {tickets: ../../x.csv}`` read and wrote wherever it pointed."""
    with pytest.raises(ConfigError) as failure:
        load_config(config_with_files(tmp_path, {"tickets": name}), environ={})
    assert failure.value.path == "systems.exports.files.tickets", str(failure.value)
    assert "directory" in str(failure.value) or "name" in str(failure.value)


def test_a_symlink_leading_out_of_the_directory_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere" / "x.csv", tmp_path / "out" / "link.csv")
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "linked-dir")
    for name in ("link.csv", "linked-dir/x.csv"):
        with pytest.raises(ConfigError) as failure:
            load_config(config_with_files(tmp_path, {"contacts": name}), environ={})
        assert failure.value.path == "systems.exports.files.contacts", str(failure.value)
        assert "outside" in str(failure.value) and name in str(failure.value)


def test_file_names_inside_the_directory_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "out" / "sub").mkdir(parents=True)
    os.symlink(tmp_path / "out" / "sub" / "t.csv", tmp_path / "out" / "inside-link.csv")
    config = load_config(
        config_with_files(tmp_path, {"tickets": "sub/t.csv", "contacts": "./c.csv", "invoices": "inside-link.csv"}),
        environ={},
    )
    options = config.system_options("exports")
    assert options.files["tickets"] == "sub/t.csv"


# -- item 4 for CSV sources: a row no later step could process is a dead letter -------------------------


async def test_a_row_too_deep_or_with_an_unstorable_key_is_a_dead_letter_and_the_rest_arrives(
    tmp_path: Path, default_state_url: str
) -> None:
    """Before: ``extra`` nested 300 levels failed every run with an internal error (nothing
    delivered); a key the state store cannot hold broke the page's commit on PostgreSQL."""
    from ferryman.api import MAX_NESTING
    from ferryman.engine import Engine
    from ferryman.state import StateStore

    (tmp_path / "in").mkdir()
    deep = '{"a":' * 300 + "1" + "}" * 300
    limit = '{"a":' * (MAX_NESTING + 1) + "1" + "}" * (MAX_NESTING + 1)
    with (tmp_path / "in" / "tickets.csv").open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["key", "updated_at", "subject", "extra"])
        out.writerow(["1", "2026-01-01T00:00:01Z", "fine", ""])
        out.writerow(["2", "2026-01-01T00:00:02Z", "deep", '{"profile":' + deep + "}"])
        out.writerow(["3", "2026-01-01T00:00:03Z", "past the limit", '{"profile":' + limit + "}"])
        out.writerow(["K" * 600, "2026-01-01T00:00:04Z", "long key", ""])
        out.writerow(["5\x01", "2026-01-01T00:00:05Z", "control key", ""])
        out.writerow(["6", "2026-01-01T00:00:06Z", "fine too", ""])
    doc = {
        "state": {"url": default_state_url},
        "systems": {
            "inbox": {"connector": "csv", "directory": str(tmp_path / "in")},
            "out": {"connector": "csv", "directory": str(tmp_path / "out")},
        },
        "pipelines": {"p": {"from": "inbox.tickets", "to": "out.tickets"}},
    }
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(doc))
    engine = Engine(load_config(tmp_path / "f.yaml", environ={}), StateStore.open(default_state_url))
    try:
        result = await engine.run("p")
    finally:
        await engine.aclose()
    assert result.outcome == "ok", result.message
    assert sorted(r["key"] for r in rows(tmp_path / "out" / "tickets.csv")) == ["1", "6"]
    letters = {x.ref: x for x in engine.store.dead_letters("p")}
    assert set(letters) == {"line 3", "line 4", "line 5", "line 6"}
    assert f"extra.profile: nested deeper than {MAX_NESTING} levels" in letters["line 3"].reason
    assert letters["line 3"].src_key == "2" and "nested deeper" in letters["line 4"].reason
    assert "longer than 500" in letters["line 5"].reason and letters["line 5"].src_key is None
    assert "control characters" in letters["line 6"].reason and letters["line 6"].src_key is None
