"""Issue 14, "Distrust the API": whole runs against the generic sandbox app over loopback.

Each test is one case from the trial against real APIs, seen from where an operator sees
it: the run's outcome, its counts, the cursor and the app's own data. The connector-level
halves are in tests/connectors/test_*_hostile.py and the hostile contract kit
(``ferryman.testing.HostileContract``); the crash and lost-state cases are in
tests/e2e/test_push_crash.py and tests/e2e/test_lost_state.py.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferryman.config import load_config
from ferryman.engine import Engine
from ferryman.sandbox import SimulatorThread
from ferryman.state import StateStore
from ferryman_connectors.rest.simulator import GenericSimulator
from tests.connectors.test_rest import example_options

ENV = {"SANDBOX_KEY": "sandbox-key"}
CSV_TICKETS = "key,updated_at,subject,description,status,priority,requester_email\n"


def make_engine(tmp_path: Path, url: str, pipelines: dict[str, Any], **streams: dict[str, Any]) -> Engine:
    system = example_options(url)
    system["auth"]["key"] = "${SANDBOX_KEY}"
    for name, changes in streams.items():
        system["streams"][name].update(changes)
    doc = {
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "systems": {
            "api": {"connector": "rest", **system},
            "files": {"connector": "csv", "directory": str(tmp_path / "files")},
        },
        "pipelines": pipelines,
    }
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc))
    config = load_config(path, environ=ENV)
    return Engine(config, StateStore.open(config.state.url))


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[Any]:
    options = getattr(request, "param", {})
    with SimulatorThread(GenericSimulator(**{"records": 30, "seed": 5, **options})) as running:
        yield running


def csv_keys(path: Path, *, live: bool = False) -> list[str]:
    """The keys of a CSV target (``live``: without the rows it keeps, marked deleted)."""
    with path.open(newline="", encoding="utf-8") as fh:
        return [row["key"] for row in csv.DictReader(fh) if not (live and row.get("deleted") == "true")]


def write_tickets(tmp_path: Path, rows: list[tuple[str, str, str]]) -> None:
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    lines = [CSV_TICKETS.rstrip("\n")]
    lines += [f"{key},{stamp},{subject},Body of {key},open,low,someone@example.com" for key, stamp, subject in rows]
    (files / "tickets.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("sandbox", [{"records": 319, "seed": 3}], indirect=True)
async def test_case1_an_api_that_ignores_the_sort_fails_the_run_with_the_cursor_held(
    tmp_path: Path, sandbox: Any
) -> None:
    """Before: 218 of 319 records skipped, outcome ok, exit 0."""
    sandbox.call(sandbox.simulator.set_hostile, "ignore_sort")
    engine = make_engine(tmp_path, sandbox.url, {"p": {"from": "api.tickets", "to": "files.tickets", "page_size": 50}})
    try:
        result = await engine.run("p")
        assert result.outcome == "failed"
        assert re.search(r"'\d+' \(.*\) came before '\d+' \(", result.message or ""), result.message
        assert engine.store.get_cursor("p") is None, "the cursor moved past records not yet read"
        assert engine.store.runs("p")[0]["outcome"] == "failed"
    finally:
        await engine.aclose()
    # declared honestly (no order promised), the same API is read whole and exactly once
    engine = make_engine(
        tmp_path,
        sandbox.url,
        {"p": {"from": "api.tickets", "to": "files.tickets", "page_size": 50}},
        tickets={"incremental": {"template": "updated_since={cursor}", "format": "iso_z", "sorted": False}},
    )
    try:
        result = await engine.run("p")
    finally:
        await engine.aclose()
    assert result.outcome == "ok", result.message
    keys = csv_keys(tmp_path / "files" / "tickets.csv")
    assert sorted(keys, key=int) == [str(i) for i in range(1, 320)]


async def test_case2_an_api_that_ignores_paging_fails_the_run_instead_of_looping(tmp_path: Path, sandbox: Any) -> None:
    """Before: page 1, 2, ... 336,795 until killed."""
    sandbox.call(sandbox.simulator.set_hostile, "ignore_paging")
    pagination = {"style": "page", "size_param": "per_page", "max_size": 10}  # ends only on a short page
    engine = make_engine(
        tmp_path,
        sandbox.url,
        {"p": {"from": "api.tickets", "to": "files.tickets", "page_size": 10}},
        tickets={"pagination": pagination, "incremental": None},
    )
    try:
        result = await engine.run("p")
    finally:
        await engine.aclose()
    assert result.outcome == "failed" and "repeats the page before it" in (result.message or ""), result.message
    assert sandbox.simulator.stats.requests <= 3
    assert engine.store.get_cursor("p") is None


async def test_case2_the_page_cap_stops_a_run_that_would_page_past_it(tmp_path: Path, sandbox: Any) -> None:
    engine = make_engine(
        tmp_path,
        sandbox.url,
        {"p": {"from": "api.tickets", "to": "files.tickets", "page_size": 5, "max_pages": 3}},
        tickets={"incremental": None},
    )
    try:
        result = await engine.run("p")
    finally:
        await engine.aclose()
    assert result.outcome == "failed" and "more than 3 pages" in (result.message or ""), result.message


async def test_case3_a_stub_create_answer_is_linked_not_dead_lettered_and_never_duplicated(
    tmp_path: Path, sandbox: Any
) -> None:
    """Before: 10 of 10 dead-lettered as rejected, and `dlq replay` created each again."""
    write_tickets(tmp_path, [(f"s{i}", f"2026-03-01T08:00:0{i}Z", f"Stub ticket {i}") for i in range(10)])
    sandbox.call(sandbox.simulator.set_hostile, "stub_create")
    before = len(sandbox.simulator.table("tickets"))
    engine = make_engine(tmp_path, sandbox.url, {"p": {"from": "files.tickets", "to": "api.tickets"}})
    try:
        result = await engine.run("p")
        assert result.outcome == "ok" and result.counts["created"] == 10, result.summary()
        assert result.counts["dead_lettered"] == 0
        assert engine.store.dead_letters(status="open") == []
        assert engine.store.count_links("files.tickets", "api.tickets") == 10
        again = await engine.run("p", full=True)
        assert again.counts["created"] == 0 and again.counts["skipped"] == 10, again.summary()
    finally:
        await engine.aclose()
    assert len(sandbox.simulator.table("tickets")) == before + 10


async def test_case4_an_error_inside_http_200_is_a_dead_letter_with_the_apis_words(
    tmp_path: Path, sandbox: Any
) -> None:
    """Before: `updated 1`, the fingerprint linked, never retried."""
    write_tickets(tmp_path, [("e1", "2026-03-01T08:00:00Z", "Before")])
    engine = make_engine(tmp_path, sandbox.url, {"p": {"from": "files.tickets", "to": "api.tickets"}})
    try:
        assert (await engine.run("p")).counts["created"] == 1
        write_tickets(tmp_path, [("e1", "2026-03-01T09:00:00Z", "After")])
        sandbox.call(sandbox.simulator.set_hostile, "error_in_200")
        result = await engine.run("p")
        assert result.counts["updated"] == 0 and result.counts["dead_lettered"] == 1, result.summary()
        [letter] = engine.store.dead_letters(status="open")
        assert "isn't a valid" in letter.reason, letter.reason
        link = engine.store.links_for("files.tickets", "api.tickets", ["e1"])["e1"]
        stored = next(r for r in sandbox.simulator.table("tickets") if r["id"] == int(link.dst_key))
        assert stored["subject"] == "Before", "the refused update changed the app"
        sandbox.call(sandbox.simulator.set_hostile)
        [(_, outcome, _)] = await engine.replay([letter.id])
        assert outcome == "delivered"
    finally:
        await engine.aclose()
    stored = next(r for r in sandbox.simulator.table("tickets") if r["id"] == int(link.dst_key))
    assert stored["subject"] == "After"


async def test_case7_deletes_hidden_from_lists_are_found_by_probing_and_withheld_unless_enabled(
    tmp_path: Path, sandbox: Any
) -> None:
    """Before: never seen; and a one-way delete without deletes.enabled counted as skipped."""
    sandbox.call(sandbox.simulator.set_hostile, "hide_deleted")
    pipeline: dict[str, Any] = {"from": "api.tickets", "to": "files.tickets", "deletes": {"probe": True}}
    engine = make_engine(tmp_path, sandbox.url, {"p": pipeline})
    try:
        assert (await engine.run("p")).counts["created"] == 30
        sandbox.call(lambda: sandbox.simulator.table("tickets").delete(7, soft=True))
        result = await engine.run("p")
        assert result.outcome == "ok" and result.counts["withheld"] == 1, result.summary()
        assert result.counts["skipped"] == 0 or result.counts["deleted"] == 0
        assert "withheld 1" in result.summary()
        assert engine.store.runs("p")[0]["withheld"] == 1
    finally:
        await engine.aclose()
    assert "7" in csv_keys(tmp_path / "files" / "tickets.csv", live=True)  # withheld: still there
    pipeline["deletes"] = {"probe": True, "enabled": True, "max_share": 0.5}
    engine = make_engine(tmp_path, sandbox.url, {"p": pipeline})
    try:
        result = await engine.run("p")
    finally:
        await engine.aclose()
    assert result.counts["deleted"] == 1, result.summary()
    assert "7" not in csv_keys(tmp_path / "files" / "tickets.csv", live=True)  # kept as a deleted row


async def test_case8_overlap_0s_still_sees_a_change_within_the_cursors_second_to_a_lower_key(
    tmp_path: Path, sandbox: Any
) -> None:
    """Before: with overlap 0s the next read started at the cursor (T, highest key) and an
    update stamped within the same whole second to a lower key was never read."""
    engine = make_engine(tmp_path, sandbox.url, {"p": {"from": "api.tickets", "to": "files.tickets", "overlap": "0s"}})
    try:
        assert (await engine.run("p")).counts["created"] == 30
        cursor = engine.store.get_cursor("p")
        assert cursor is not None and cursor.key != "1"

        def change_ticket_1_within_the_cursors_second() -> None:
            table = sandbox.simulator.table("tickets")
            table.update(1, {"subject": "changed in the same second"})
            table.set_updated(1, cursor.updated_at)

        sandbox.call(change_ticket_1_within_the_cursors_second)
        result = await engine.run("p")
    finally:
        await engine.aclose()
    assert result.counts["updated"] == 1, result.summary()
    with (tmp_path / "files" / "tickets.csv").open(newline="", encoding="utf-8") as fh:
        subjects = {row["key"]: row["subject"] for row in csv.DictReader(fh)}
    assert subjects["1"] == "changed in the same second"


def test_case9_no_comparison_against_the_cursor_outside_the_cursor_module_and_the_read_loop() -> None:
    """The rule lived in 16 modules under six names; now in ferryman.cursor (and the read
    loop that applies it)."""
    root = Path(__file__).resolve().parents[1]
    allowed = {root / "src/ferryman/cursor.py", root / "src/ferryman/sdk/readloop.py"}
    pattern = re.compile(
        r"Cursor\.of\([^)]*\)\s*[<>]=?\s*since|since\.updated_at|[<>]=?\s*since\b(?!_)|\b_since\(|inclusive and Cursor"
    )
    offenders = []
    for folder in ("src/ferryman", "connectors"):
        for path in (root / folder).rglob("*.py"):
            if path in allowed or "simulator" in path.name or "sandbox" in path.parts:
                continue  # simulators play the app's side of the filter
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if pattern.search(code):
                    offenders.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert not offenders, "compare records with a cursor through ferryman.cursor:\n" + "\n".join(offenders)
