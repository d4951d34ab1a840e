"""The intake against hostile senders (issue 16, item 4): a record Ferryman could store but
never process is refused at the door as a dead letter of its own, the other records of the
message go on, and nothing stored fails every later run."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ferryman.api import MAX_NESTING
from ferryman.state import StateStore
from tests.webhooks.test_intake import Harness, event, intake_config


def record_text(key: str, nested: str | None = None) -> str:
    data = orjson.dumps(event(key, subject=f"subject {key}")["data"]).decode()
    return data if nested is None else data[:-1] + ',"nested":' + nested + "}"


def lists(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def objects(depth: int) -> str:
    return '{"a":' * depth + '"bottom"' + "}" * depth


@pytest.mark.parametrize(
    "nested", [lists(300), objects(260), objects(MAX_NESTING + 5)], ids=["lists-300", "objects-260", "past-limit"]
)
async def test_a_record_too_deep_to_process_is_a_dead_letter_and_its_neighbours_arrive(
    tmp_path: Path, default_state_url: str, nested: str
) -> None:
    """Before: 254+ levels answered 500 (the sender retries for ever); fewer were stored and
    failed or stayed a hazard for every component reading them back."""
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    body = '{"type":"ticket.created","data":[' + ",".join(
        [record_text("T1"), record_text("T2", nested), record_text("T3")]
    )
    async with Harness(config, store) as hooks:
        status, answer = await hooks.post(None, raw=(body + "]}").encode(), msg_id="mixed")
        assert (status, answer["records"], answer["rejected"]) == (200, 2, 1), answer
        counts = await hooks.run()
        assert (counts["created"], counts["dead_lettered"]) == (2, 1)
        [letter] = store.dead_letters()
        assert (letter.ref, letter.src_key) == ("webhook mixed", "T2")
        assert f"nested deeper than {MAX_NESTING} levels" in letter.reason and "extra.nested" in letter.reason
        assert letter.payload is not None  # what arrived is kept (cut at the limit), not lost
        assert (await hooks.run())["created"] == 0
        assert len(store.dead_letters()) == 1, "one letter, not one per run"


@pytest.mark.parametrize(
    ("key", "problem"),
    [("T\x00 1", "control characters"), ("K" * 600, "longer than 500")],
    ids=["nul", "too-long"],
)
async def test_a_key_the_state_store_cannot_hold_is_a_dead_letter_not_a_500(
    tmp_path: Path, default_state_url: str, key: str, problem: str
) -> None:
    """Before, on PostgreSQL: NUL in a key, or a key longer than the key columns, raised in
    the storing transaction and the intake answered 500 on every retry."""
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        status, answer = await hooks.post(event(key), msg_id="badkey")
        assert (status, answer["rejected"]) == (200, 1), answer
        await hooks.post(event("T2"), msg_id="fine")
        counts = await hooks.run()
        assert (counts["created"], counts["dead_lettered"]) == (1, 1)
        [letter] = store.dead_letters()
        assert problem in letter.reason and letter.reason.isprintable() and letter.src_key is None


async def test_a_message_the_database_refuses_answers_400_not_500(
    tmp_path: Path, default_state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backstop behind mapping: a value the database refuses would be refused on every
    retry, so the sender is told so (4xx) instead of being invited to retry for ever (5xx)."""
    import sqlalchemy as sa

    from ferryman.webhooks import intake

    def refuse(*args: object) -> None:
        raise sa.exc.DataError("INSERT ...", {}, ValueError("value too long for type character varying(500)"))

    monkeypatch.setattr(intake, "store_message", refuse)
    config = intake_config(tmp_path, default_state_url)
    store = StateStore.open(default_state_url)
    async with Harness(config, store) as hooks:
        status, answer = await hooks.post(event("T1"), msg_id="refused")
    assert status == 400 and "value too long" in answer["error"], answer
