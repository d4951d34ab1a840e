"""The generic ``rest`` connector against a record nested past what Ferryman can process
(issue 16, item 4): that record is a dead letter with its reason, the rest of the page is
delivered, and the run goes on instead of failing with an internal error every time."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest
import respx
import yaml

from ferryman.api import MAX_NESTING
from ferryman.config import load_config
from ferryman.engine import Engine
from ferryman.state import StateStore
from ferryman.testing import collect
from tests.connectors.test_rest import connected, contacts_options

API = "https://api.example.test"


def page(depth: int) -> bytes:
    """Three contacts, the second carrying a field nested ``depth`` levels (written as text:
    serialisers refuse to write what a hostile API writes by hand)."""
    texts = [
        orjson.dumps(
            {"id": i, "email": f"p{i}@example.com", "first_name": "A", "updated_at": f"2026-01-01T00:00:0{i}Z"}
        ).decode()
        for i in range(1, 4)
    ]
    texts[1] = texts[1][:-1] + ',"profile":' + '{"a":' * depth + '"bottom"' + "}" * depth + "}"
    return ('{"data":[' + ",".join(texts) + '],"total_pages":1}').encode()


@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 400, 1000])
@respx.mock
async def test_a_record_nested_too_deep_is_a_reject_naming_it(depth: int) -> None:
    respx.get(f"{API}/api/contacts").mock(return_value=httpx.Response(200, content=page(depth)))
    async with connected(contacts_options(API)) as connector:
        records, rejects = await collect(connector.read("contacts", None, 50))
    assert [r.key for r in records] == ["1", "3"]
    [reject] = rejects
    assert reject.key == "2" and f"profile: nested deeper than {MAX_NESTING} levels" in reject.reason
    assert len(orjson.dumps(reject.raw)) < 2000, "the raw kept for the letter is cut at the limit"


@respx.mock
async def test_a_record_nested_400_levels_is_dead_lettered_and_the_page_delivered(
    tmp_path: Path, default_state_url: str
) -> None:
    """Before: ``internal error: RecursionError`` on every run, nothing delivered."""
    respx.get(f"{API}/api/contacts").mock(return_value=httpx.Response(200, content=page(400)))
    options = contacts_options(API)
    options["auth"]["key"] = "${API_KEY}"
    doc = {
        "state": {"url": default_state_url},
        "systems": {"api": {"connector": "rest", **options}, "out": {"connector": "csv", "directory": str(tmp_path)}},
        "pipelines": {"p": {"from": "api.contacts", "to": "out.contacts"}},
    }
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(doc))
    engine = Engine(
        load_config(tmp_path / "f.yaml", environ={"API_KEY": "key-123456"}), StateStore.open(default_state_url)
    )
    try:
        result = await engine.run("p")
        again = await engine.run("p")
    finally:
        await engine.aclose()
    assert result.outcome == "ok", result.message
    assert (result.counts["created"], result.counts["dead_lettered"]) == (2, 1)
    [letter] = engine.store.dead_letters("p")
    assert letter.src_key == "2" and "nested deeper than" in letter.reason
    assert again.outcome == "ok" and again.counts["created"] == 0
