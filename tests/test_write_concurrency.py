"""Writes to an app go ``concurrency`` at a time (never two for one record), and a failure
among writes in flight loses and doubles nothing: what finished is kept, what is in doubt
is looked up before anything is created again. In-memory apps whose writes take 20 ms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ferryman.config import load_config
from ferryman.engine import Engine
from ferryman.state import StateStore
from ferryman.timeutil import utcnow
from tests import fakes

pytestmark = pytest.mark.usefixtures("memory_connector")


def engine_for(tmp_path: Path, state_url: str, concurrency: int, **dst: Any) -> Engine:
    path = tmp_path / "f.yaml"
    doc = {
        "state": {"url": state_url},
        "systems": {"a": fakes.options(store="a"), "b": fakes.options(store="b", write_delay=0.02, **dst)},
        "pipelines": {"p": {"from": "a.tickets", "to": "b.tickets", "page_size": 25, "concurrency": concurrency}},
    }
    path.write_text(yaml.safe_dump(doc))
    return Engine(load_config(path, environ={}), StateStore.open(state_url))


def seed(n: int) -> None:
    fakes.seed_tickets("a", n)


def subjects(store: str) -> list[str]:
    return sorted(str(r.subject) for r in fakes.STORES.get(store, {}).get("tickets", {}).values())  # type: ignore[attr-defined]


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_creates_and_updates_go_concurrency_at_a_time(tmp_path: Path, state_url: str, concurrency: int) -> None:
    seed(60)
    engine = engine_for(tmp_path, state_url, concurrency)
    result = await engine.run("p")
    assert result.outcome == "ok" and result.counts["created"] == 60
    assert fakes.MOST_IN_FLIGHT["b"] == concurrency
    assert subjects("b") == sorted(f"s{i}" for i in range(60))
    for key, record in list(fakes.STORES["a"]["tickets"].items()):
        fakes.STORES["a"]["tickets"][key] = record.model_copy(update={"status": "closed", "updated_at": utcnow()})
    fakes.MOST_IN_FLIGHT.clear()
    again = await engine.run("p")
    assert again.outcome == "ok" and again.counts["updated"] == 60 and again.counts["created"] == 0
    assert fakes.MOST_IN_FLIGHT["b"] == concurrency
    assert engine.store.count_links("a.tickets", "b.tickets") == 60


async def test_a_failure_among_writes_in_flight_keeps_what_finished_and_doubles_nothing(
    tmp_path: Path, state_url: str
) -> None:
    seed(60)
    failing = engine_for(tmp_path, state_url, 4, fail_create_subjects=["s30"])
    result = await failing.run("p")
    assert result.outcome == "failed" and "outcome is unknown" in (result.message or "")
    made = subjects("b")
    linked = failing.store.count_links("a.tickets", "b.tickets")
    # the first page (25) committed whole; of the second, the writes that finished are kept
    # (their links committed at once), the one in doubt is an intent
    assert linked == len(made) and 25 < linked < 60
    assert "s30" not in made
    cursor = failing.store.get_cursor("p")
    assert cursor is not None and cursor.key == "t024", "the cursor stays after the last whole page"
    fine = engine_for(tmp_path, state_url, 4)
    after = await fine.run("p")
    assert after.outcome == "ok", after.message
    assert subjects("b") == sorted(f"s{i}" for i in range(60)), "every record once: none lost, none doubled"
    assert fine.store.count_links("a.tickets", "b.tickets") == 60
    events = [e.action for e in fine.store.history.events("p", "t030")]
    assert events == ["error", "create"], events
