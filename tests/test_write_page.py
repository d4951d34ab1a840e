"""Issue 17: a sink with ``transactional_writes`` (a file, an outbox) takes a page's creates and
updates in one call (``Connector.write_page``). A record it refuses is a dead letter like any
refused write; any other failure fails the page whole: none of its links are committed and
the cursor stays after the last whole page (the sink's restore() cuts its rows back)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from ferryman import plugins
from ferryman.config import load_config
from ferryman.connector import Connector
from ferryman.engine import Engine
from ferryman.errors import RecordRejected
from ferryman.records import Record
from ferryman.state import StateStore
from ferryman.timeutil import utcnow
from tests import fakes

pytestmark = pytest.mark.usefixtures("memory_connector")

PAGES: list[list[tuple[str | None, str]]] = []  # each write_page call: (key or None, subject)


class PagedMemory(fakes.MemoryConnector):
    """The in-memory app as a transactional sink: its writes arrive a page at a time through
    the base class's write_page (create/update per record)."""

    kind = "paged"
    transactional_writes: ClassVar[bool] = True

    async def write_page(self, stream: str, writes: Any) -> list[Record | RecordRejected]:
        PAGES.append([(key, str(getattr(r, "subject", ""))) for key, r in writes])
        return await Connector.write_page(self, stream, writes)


@pytest.fixture(autouse=True)
def paged() -> Any:
    plugins.connectors()["paged"] = plugins.Plugin("paged", None, PagedMemory)  # type: ignore[arg-type]
    PAGES.clear()
    yield
    plugins.connectors().pop("paged", None)


def engine_for(tmp_path: Path, state_url: str, **dst: Any) -> Engine:
    path = tmp_path / "f.yaml"
    doc = {
        "state": {"url": state_url},
        "systems": {"a": fakes.options(store="a"), "b": {"connector": "paged", "store": "b", **dst}},
        "pipelines": {"p": {"from": "a.tickets", "to": "b.tickets", "page_size": 25}},
    }
    path.write_text(yaml.safe_dump(doc))
    return Engine(load_config(path, environ={}), StateStore.open(state_url))


def seed(n: int) -> None:
    fakes.seed_tickets("a", n)


async def test_a_page_goes_in_one_call_and_a_refused_record_is_a_dead_letter(tmp_path: Path, state_url: str) -> None:
    seed(60)
    engine = engine_for(tmp_path, state_url, reject_subjects=["s7"])
    result = await engine.run("p")
    assert result.outcome == "ok", result.message
    assert [len(p) for p in PAGES] == [25, 25, 10], "one call per page"
    assert all(key is None for page in PAGES for key, _ in page), "all creates"
    assert result.counts["created"] == 59 and result.counts["dead_lettered"] == 1
    letters = engine.store.dead_letters(pipeline="p")
    assert [(x.src_key, x.kind) for x in letters] == [("t007", "rejected")]
    assert "422" in letters[0].reason
    assert engine.store.count_links("a.tickets", "b.tickets") == 59
    # an edit goes as an update of the record's key there, in the same one call per page
    fakes.STORES["a"]["tickets"]["t003"] = fakes.STORES["a"]["tickets"]["t003"].model_copy(
        update={"subject": "edited", "updated_at": utcnow()}
    )
    PAGES.clear()
    again = await engine.run("p")
    assert again.outcome == "ok" and again.counts["updated"] == 1
    link = engine.store.links_for("a.tickets", "b.tickets", ["t003"])["t003"]
    assert PAGES[-1] == [(link.dst_key, "edited")]


async def test_a_failed_page_commits_none_of_its_links(tmp_path: Path, state_url: str) -> None:
    seed(60)
    failing = engine_for(tmp_path, state_url, fail_create_subjects=["s30"])
    result = await failing.run("p")
    assert result.outcome == "failed" and "connection reset" in (result.message or "")
    assert failing.store.count_links("a.tickets", "b.tickets") == 25, "only the first page, whole"
    cursor = failing.store.get_cursor("p")
    assert cursor is not None and cursor.key == "t024", "the cursor stays after the last whole page"
    fine = engine_for(tmp_path, state_url)
    after = await fine.run("p")
    assert after.outcome == "ok", after.message
    assert fine.store.count_links("a.tickets", "b.tickets") == 60
    assert after.counts["created"] == 35
