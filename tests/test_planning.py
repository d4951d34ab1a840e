from datetime import UTC, datetime

from ferryman.planning import plan_one_way
from ferryman.records import Ticket, fingerprint
from ferryman.state import Link

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def item(key: str, subject: str, deleted: bool = False) -> tuple[Ticket, str]:
    t = Ticket(key=key, updated_at=NOW, subject=subject, deleted=deleted)
    return t, fingerprint(t)


def test_plan_skips_unchanged_updates_changed_creates_new() -> None:
    same, changed, new = item("1", "a"), item("2", "b2"), item("3", "c")
    links = {"1": Link("1", "x1", same[1], None), "2": Link("2", "x2", item("2", "b")[1], None)}
    ops = [(a.op, a.dst_key) for a in plan_one_way([same, changed, new], links, deletes_enabled=False)]
    assert ops == [("skip", "x1"), ("update", "x2"), ("create", None)]


def test_deletes_only_when_enabled_and_linked() -> None:
    gone, never = item("1", "a", deleted=True), item("9", "z", deleted=True)
    links = {"1": Link("1", "x1", "fp", None)}
    assert [a.op for a in plan_one_way([gone, never], links, deletes_enabled=False)] == ["withhold", "skip"]
    assert [a.op for a in plan_one_way([gone, never], links, deletes_enabled=True)] == ["delete", "skip"]
    assert [a.op for a in plan_one_way([gone], links, deletes_enabled=True, delete_action="unlink")] == ["unlink"]


def test_unresolved_intent_blocks_a_second_create() -> None:
    actions = plan_one_way([item("5", "e")], {}, deletes_enabled=False, blocked=frozenset({"5"}))
    assert actions[0].op == "skip" and "unconfirmed" in actions[0].reason
