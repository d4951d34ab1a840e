"""Issue 17: a pull into CSV commits each page while the next is delivered. The next page
reads its links beside the commit in flight, through an overlay of that commit's links, so
a record read again at a page boundary is skipped, not written twice; a commit that fails
in flight fails the run with the cursor after the last committed page, and a rerun
delivers every record exactly once."""

from __future__ import annotations

import csv
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from ferryman import plugins
from ferryman.config import load_config
from ferryman.connector import Cursor, Page
from ferryman.engine import Engine
from ferryman.errors import StateError
from ferryman.records import Ticket
from ferryman.state import PageCommit, StateStore
from tests import fakes

pytestmark = pytest.mark.usefixtures("memory_connector")

START = datetime(2026, 1, 1, tzinfo=UTC)


def ticket(key: str, second: int, subject: str) -> Ticket:
    return Ticket(key=key, updated_at=START + timedelta(seconds=second), subject=subject)


class Pages(fakes.MemoryConnector):
    """A source that answers fixed pages, as an API re-reading its boundary second does."""

    kind = "pages"
    PAGES: ClassVar[list[list[Ticket]]] = []

    async def read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        for records in self.PAGES:
            yield Page(list(records))


@pytest.fixture(autouse=True)
def pages_connector() -> Any:
    plugins.connectors()["pages"] = plugins.Plugin("pages", None, Pages)  # type: ignore[arg-type]
    yield
    plugins.connectors().pop("pages", None)
    Pages.PAGES = []


def engine_for(tmp_path: Path, state_url: str) -> Engine:
    doc = {
        "state": {"url": state_url},
        "systems": {
            "src": {"connector": "pages", "store": "src"},
            "out": {"connector": "csv", "directory": str(tmp_path / "out")},
        },
        "pipelines": {"p": {"from": "src.tickets", "to": "out.tickets", "page_size": 2}},
    }
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(doc))
    return Engine(load_config(tmp_path / "f.yaml", environ={}), StateStore.open(state_url))


def published(tmp_path: Path) -> list[tuple[str, str]]:
    with (tmp_path / "out" / "tickets.csv").open(newline="", encoding="utf-8") as fh:
        return [(row["key"], row["subject"]) for row in csv.DictReader(fh)]


@pytest.fixture
def slow_commits(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Each page commit takes 0.2 s, so the next page is surely delivered beside it; the
    commit of a page listed in ``fail`` raises after its wait. ``ended_at_lookup``: how many
    page commits had ended when each page's links were looked up."""
    real = StateStore.commit_page
    seen: dict[str, Any] = {"pages": 0, "ended": 0, "fail": set(), "ended_at_lookup": []}

    def commit_page(self: StateStore, commit: PageCommit) -> None:
        if not commit.checkpoints or commit.cursor is None:
            real(self, commit)
            return
        seen["pages"] += 1
        time.sleep(0.2)
        if seen["pages"] in seen["fail"]:
            raise StateError(f"commit of page {seen['pages']} refused (test)")
        real(self, commit)
        seen["ended"] += 1

    real_links = StateStore.links_for

    def links_for(self: StateStore, *args: Any) -> Any:
        seen["ended_at_lookup"].append(seen["ended"])
        return real_links(self, *args)

    monkeypatch.setattr(StateStore, "commit_page", commit_page)
    monkeypatch.setattr(StateStore, "links_for", links_for)
    return seen


async def test_a_record_read_again_beside_its_commit_in_flight_is_skipped(
    tmp_path: Path, state_url: str, slow_commits: dict[str, Any]
) -> None:
    Pages.PAGES = [
        [ticket("a", 1, "a"), ticket("b", 2, "b")],
        [ticket("b", 2, "b"), ticket("c", 3, "c")],  # b again: the boundary second re-read
        [ticket("c", 4, "c2"), ticket("d", 5, "d")],  # c changed since page 2
    ]
    engine = engine_for(tmp_path, state_url)
    result = await engine.run("p")
    assert result.outcome == "ok", result.message
    # each page's links were read while the page before was still committing (one by one,
    # the commits ended before would be 0, 1, 2)
    assert slow_commits["ended_at_lookup"] == [0, 0, 1]
    assert (result.counts["created"], result.counts["skipped"], result.counts["updated"]) == (4, 1, 1)
    assert sorted(published(tmp_path)) == [("a", "a"), ("b", "b"), ("c", "c2"), ("d", "d")]
    cursor = engine.store.get_cursor("p")
    assert cursor is not None and cursor.key == "d"


async def test_a_commit_that_fails_in_flight_fails_the_run_and_loses_nothing(
    tmp_path: Path, state_url: str, slow_commits: dict[str, Any]
) -> None:
    Pages.PAGES = [[ticket(f"k{i}", i, f"s{i}"), ticket(f"k{i + 1}", i + 1, f"s{i + 1}")] for i in range(0, 8, 2)]
    slow_commits["fail"] = {2}
    engine = engine_for(tmp_path, state_url)
    result = await engine.run("p")
    assert result.outcome == "failed" and "page 2 refused" in (result.message or "")
    cursor = engine.store.get_cursor("p")
    assert cursor is not None and cursor.key == "k1", "the cursor stays after the last committed page"
    assert published(tmp_path) == [("k0", "s0"), ("k1", "s1")], "only what was committed is published"
    slow_commits["fail"] = set()
    again = await engine.run("p")
    assert again.outcome == "ok", again.message
    assert sorted(published(tmp_path)) == sorted((f"k{i}", f"s{i}") for i in range(8)), "each record once"
    assert not list((tmp_path / "out").glob("*.partial*"))
