"""Two-way planning: what to do with every changed pair and lone record. Pure, no I/O.

:func:`plan_pairs` works in three steps over what a run read on both sides:

1. **classify** each linked pair by the side(s) whose fingerprint moved since the last
   sync: neither (our own write coming back), one (carry the edit or the delete across),
   or both (settle);
2. **settle** a pair both sides changed, or two records matched on natural keys: they
   converged, or the ``conflict`` policy (optionally per field) picks the winner, or
   ``manual`` sends the pair to a human;
3. the **loop breaker**: a pair rewritten too often within the window is quarantined.

Fingerprints are taken in B's shape (A's records pass ``forward`` first), so one link
compares both sides. :mod:`ferryman.twoway` reads, matches and writes around this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from ferryman.records import Record, fingerprint, overwritten, same_content
from ferryman.timeutil import format_utc, utcnow

if TYPE_CHECKING:
    # types only: a pure rule needs neither the config loader nor the state store at run
    # time (Link is a plain value class that lives in ferryman/state/__init__.py)
    from ferryman.config import ConflictPolicy
    from ferryman.state import Link

Op = Literal[
    "create_a",
    "create_b",
    "update_a",
    "update_b",
    "update_both",
    "delete_a",
    "delete_b",
    "unlink",
    "link",
    "conflict",
    "loop",
    "skip",
]
Side = Literal["a", "b"]
#: a mapping between the sides' record shapes: ``forward`` (A -> B) or ``reverse`` (B -> A)
Shape = Callable[[Record], Record]


@dataclass(slots=True)
class PairAction:
    """One thing to do for one pair (or lone record)."""

    op: Op
    a_key: str | None
    b_key: str | None
    write: Record | None = None  # what to write, in the written side's shape (B's for update_both)
    write_a: Record | None = None  # update_both: what to write to A
    replaces_a: str | None = None  # create_a re-creating a deleted A record: the old A key to unlink
    a_fp: str | None = None  # fingerprints to store on the link afterwards (B-shape)
    b_fp: str | None = None
    reason: str = ""
    a_record: Record | None = None
    b_record: Record | None = None
    link: Link | None = None
    #: a conflict a policy resolved: the decision in words (kept in the record's history)
    decision: str = ""
    #: per side written ("a"/"b"): the values the write replaces, as (lost, won) (the journal)
    lost: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)


@dataclass(slots=True)
class Policy:
    """What a two-way pipeline's config decides for its pairs: the conflict policy (and
    per-field ones), deletes, and the loop breaker's limit."""

    conflict: ConflictPolicy = "source_wins"
    conflict_fields: dict[str, ConflictPolicy] = field(default_factory=dict)
    deletes_enabled: bool = False
    delete_action: Literal["delete", "unlink"] = "delete"
    loop_max_writes: int = 10
    loop_window: timedelta = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class _Met:
    """Two records to settle: a linked pair both sides changed (``link`` set), or two
    records matched on natural keys (``link`` None), with their fingerprints (B-shape)."""

    a: Record
    b: Record
    a_key: str
    b_key: str
    link: Link | None
    a_fp: str
    b_fp: str


def _winner(policy: ConflictPolicy, a: Record, b: Record) -> Side | None:
    if policy == "source_wins":
        return "a"
    if policy == "target_wins":
        return "b"
    if policy == "newest_wins":
        return "b" if b.updated_at > a.updated_at else "a"
    return None  # manual


def decision(policy: Policy, a: Record, b: Record, *, first: bool) -> str:
    """A conflict a policy resolves, in words: which rule kept which side."""
    what = "both sides held different content when first matched" if first else "both sides changed since the last sync"
    main = _winner(policy.conflict, a, b)
    if a.deleted or b.deleted:
        what = "deleted on one side, edited on the other"
    text = f"{what}; {policy.conflict} kept the {'from' if main == 'a' else 'to'}-side's version"
    if policy.conflict == "newest_wins":
        text += f" (from-side changed {format_utc(a.updated_at)}, to-side {format_utc(b.updated_at)})"
    if policy.conflict_fields:
        text += "; per field: " + ", ".join(f"{n}: {p}" for n, p in sorted(policy.conflict_fields.items()))
    return text


def merge_fields(policy: Policy, a_shaped: Record, b: Record, a_raw: Record) -> Record | None:
    """The merged record (B shape) under the policy; None when a human must decide."""
    main = _winner(policy.conflict, a_raw, b)
    if main is None:
        return None
    base = a_shaped if main == "a" else b
    if not policy.conflict_fields:
        return base
    values: dict[str, Any] = {}
    for name, field_policy in policy.conflict_fields.items():
        side = _winner(field_policy, a_raw, b)
        if side is None:
            return None
        values[name] = getattr(a_shaped if side == "a" else b, name)
    return base.model_copy(update=values)


def plan_pairs(
    a_changed: dict[str, Record],
    b_changed: dict[str, Record],
    links: list[Link],
    matches: list[tuple[Record, Record]],
    lone_a: list[Record],
    lone_b: list[Record],
    forward: Shape,
    reverse: Shape,
    policy: Policy,
    quarantined: frozenset[str] = frozenset(),
    now: datetime | None = None,
) -> list[PairAction]:
    """Decide what to do with every changed pair and lone record. Pure (but for the loop
    breaker's count, which it keeps on the ``links`` given).

    Actions come in this order: linked pairs (in ``links``' order), matches, then creates
    for the lone records of A and of B."""
    now = now or utcnow()
    actions: list[PairAction] = []
    for link in links:
        action = _classify(
            link, a_changed.get(link.src_key), b_changed.get(link.dst_key), forward, reverse, policy, quarantined
        )
        if action is not None:
            actions.append(action)
    for a, b in matches:
        actions.append(
            _settle(_Met(a, b, a.key, b.key, None, fingerprint(forward(a)), fingerprint(b)), forward, reverse, policy)
        )
    actions += _creates(lone_a, lone_b, forward, reverse)
    return break_loops(actions, policy, now, a_changed, b_changed)


# -- classify: which side of a linked pair moved ------------------------------------------------


def _classify(
    link: Link,
    a: Record | None,
    b: Record | None,
    forward: Shape,
    reverse: Shape,
    policy: Policy,
    quarantined: frozenset[str],
) -> PairAction | None:
    """What a linked pair needs, given what this run read of each side (None: not read);
    None when neither side moved."""
    a_shaped = forward(a) if a is not None else None
    a_fp = fingerprint(a_shaped) if a_shaped is not None else link.src_fp
    b_fp = fingerprint(b) if b is not None else link.dst_fp
    # compared in the stored fingerprint's version (a link made before a new algorithm)
    a_moved = a_shaped is not None and not same_content(a_shaped, link.src_fp, a_fp)
    b_moved = b is not None and not same_content(b, link.dst_fp, b_fp)
    if not a_moved and not b_moved:
        return None  # our own writes coming back, or nothing new
    if link.src_key in quarantined:
        return PairAction("skip", link.src_key, link.dst_key, reason="quarantined by the loop breaker", link=link)
    if a_moved and b_moved:
        assert a is not None and b is not None
        return _settle(_Met(a, b, link.src_key, link.dst_key, link, a_fp or "", b_fp or ""), forward, reverse, policy)
    if a_moved:
        assert a is not None
        return _carry_to_b(a, link, a_fp, forward, policy)
    assert b is not None
    return _carry_to_a(b, link, b_fp, reverse, policy)


def _carry_to_b(a: Record, link: Link, a_fp: str | None, forward: Shape, policy: Policy) -> PairAction:
    """Only A changed: its edit (or its delete) goes to B."""
    if a.deleted:
        return _carry_delete(link, "b", policy, reason="deleted in from-side")
    write = forward(a).model_copy(update={"key": link.dst_key})
    return PairAction("update_b", link.src_key, link.dst_key, write=write, a_fp=a_fp, b_fp=a_fp, link=link)


def _carry_to_a(b: Record, link: Link, b_fp: str | None, reverse: Shape, policy: Policy) -> PairAction:
    """Only B changed: its edit (or its delete) goes to A."""
    if b.deleted:
        return _carry_delete(link, "a", policy, reason="deleted in to-side")
    write = reverse(b).model_copy(update={"key": link.src_key})
    return PairAction("update_a", link.src_key, link.dst_key, write=write, a_fp=b_fp, b_fp=b_fp, link=link)


def _carry_delete(link: Link, to: Side, policy: Policy, *, reason: str) -> PairAction:
    """One side deleted a linked record: delete it on the other side ``to``, or unlink the
    pair (``deletes.action: unlink``); withheld when deletes are not enabled."""
    if not policy.deletes_enabled:
        return PairAction("skip", link.src_key, link.dst_key, reason="deletes are not enabled", link=link)
    delete: Op = "delete_b" if to == "b" else "delete_a"
    op: Op = delete if policy.delete_action == "delete" else "unlink"
    return PairAction(op, link.src_key, link.dst_key, reason=reason, link=link)


def _creates(lone_a: list[Record], lone_b: list[Record], forward: Shape, reverse: Shape) -> list[PairAction]:
    """A record with no link and no match is created on the other side (a tombstone is not)."""
    actions: list[PairAction] = []
    for a in lone_a:
        if not a.deleted:
            shaped = forward(a)
            actions.append(PairAction("create_b", a.key, None, write=shaped, a_fp=fingerprint(shaped)))
    for b in lone_b:
        if not b.deleted:
            actions.append(PairAction("create_a", None, b.key, write=reverse(b), b_fp=fingerprint(b)))
    return actions


# -- settle: both sides changed, or met for the first time --------------------------------------


def _settle(met: _Met, forward: Shape, reverse: Shape, policy: Policy) -> PairAction:
    """Both sides changed (or met for the first time): converge, resolve or escalate."""
    a, b = met.a, met.b
    if a.deleted and b.deleted:
        return PairAction("unlink", met.a_key, met.b_key, reason="deleted on both sides", link=met.link)
    if met.a_fp == met.b_fp:
        return PairAction(
            "link", met.a_key, met.b_key, a_fp=met.a_fp, b_fp=met.b_fp, reason="both sides agree", link=met.link
        )
    shaped = forward(a)
    if a.deleted or b.deleted:
        return _settle_delete(met, shaped, reverse, policy)
    merged = merge_fields(policy, shaped, b, a)
    if merged is None:
        reason = "both sides changed; conflict policy is manual"
        return PairAction("conflict", met.a_key, met.b_key, reason=reason, a_record=a, b_record=b, link=met.link)
    return _write_merge(met, merged, reverse, policy)


def _settle_delete(met: _Met, shaped: Record, reverse: Shape, policy: Policy) -> PairAction:
    """Deleted on one side, edited on the other: the policy's winning side decides whether
    the record lives (created again where it was deleted) or goes (deleted where edited)."""
    a, b = met.a, met.b
    side = _winner(policy.conflict, a, b)
    if side is None:
        reason = "deleted on one side, edited on the other"
        return PairAction("conflict", met.a_key, met.b_key, reason=reason, a_record=a, b_record=b, link=met.link)
    loser_deleted = (side == "a" and b.deleted) or (side == "b" and a.deleted)
    if loser_deleted:
        return _create_again(met, side, shaped, reverse)
    if not policy.deletes_enabled:
        return PairAction("skip", met.a_key, met.b_key, reason="deletes are not enabled", link=met.link)
    # the edit on the losing side is lost with its record: journaled whole
    edited: Side = "b" if side == "a" else "a"
    return PairAction(
        "delete_b" if side == "a" else "delete_a",
        met.a_key,
        met.b_key,
        reason="delete wins over edit",
        link=met.link,
        decision=decision(policy, a, b, first=met.link is None),
        lost={edited: ((b if edited == "b" else a).content(), {})},
    )


def _create_again(met: _Met, side: Side, shaped: Record, reverse: Shape) -> PairAction:
    """The edit on ``side`` wins over a delete on the other: the record is gone there, so it
    is created again (an update of a deleted record is refused by real apps) and the new
    copy is linked instead."""
    reason = "edit wins over delete: created again"
    if side == "a":
        return PairAction("create_b", met.a_key, None, write=shaped, a_fp=met.a_fp, reason=reason, link=met.link)
    return PairAction(
        "create_a",
        None,
        met.b_key,
        write=reverse(met.b),
        b_fp=met.b_fp,
        reason=reason,
        link=met.link,
        replaces_a=met.a_key,
    )


def _write_merge(met: _Met, merged: Record, reverse: Shape, policy: Policy) -> PairAction:
    """A conflict the policy resolved into ``merged`` (B-shape): write it to each side that
    does not hold it yet, journaling what each write overwrites."""
    merged_fp = fingerprint(merged)
    to_b, to_a = merged_fp != met.b_fp, merged_fp != met.a_fp
    why = decision(policy, met.a, met.b, first=met.link is None)
    lost: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    if to_b:
        lost["b"] = overwritten(met.b, merged)
    if to_a:
        lost["a"] = overwritten(met.a, reverse(merged))
    if to_b and to_a:
        # one action for both writes: the link is committed only when both sides hold the
        # merge, never with one side written and the other still marked as agreed
        return PairAction(
            "update_both",
            met.a_key,
            met.b_key,
            write=merged.model_copy(update={"key": met.b_key}),
            write_a=reverse(merged).model_copy(update={"key": met.a_key}),
            a_fp=merged_fp,
            b_fp=merged_fp,
            reason="conflict resolved",
            link=met.link,
            decision=why,
            lost=lost,
        )
    if to_b:
        return PairAction(
            "update_b",
            met.a_key,
            met.b_key,
            write=merged.model_copy(update={"key": met.b_key}),
            a_fp=met.a_fp,
            b_fp=merged_fp,
            reason="conflict resolved",
            link=met.link,
            decision=why,
            lost=lost,
        )
    # the sides differ (settle links them otherwise), so a merge B already holds is new to A
    return PairAction(
        "update_a",
        met.a_key,
        met.b_key,
        write=reverse(merged).model_copy(update={"key": met.a_key}),
        a_fp=merged_fp,
        b_fp=met.b_fp,
        reason="conflict resolved",
        link=met.link,
        decision=why,
        lost=lost,
    )


# -- the loop breaker ---------------------------------------------------------------------------


def break_loops(
    actions: list[PairAction],
    policy: Policy,
    now: datetime,
    a_changed: dict[str, Record],
    b_changed: dict[str, Record],
) -> list[PairAction]:
    """``actions`` with each update or delete of a pair rewritten too often within the
    window replaced by a ``loop`` (quarantined for a human); the others count the write
    on their link."""
    checked: list[PairAction] = []
    for action in actions:
        if action.op.startswith(("update", "delete")) and action.link is not None:
            count, start, over = _written(action.link, policy, now)
            if over:
                checked.append(
                    PairAction(
                        "loop",
                        action.a_key,
                        action.b_key,
                        reason=f"rewritten {count} times since {format_utc(start or now)} "
                        f"(limit {policy.loop_max_writes} in {policy.loop_window}); quarantined",
                        a_record=a_changed.get(action.a_key or ""),
                        b_record=b_changed.get(action.b_key or ""),
                        link=action.link,
                    )
                )
                continue
            action.link.write_count, action.link.window_start = count, start
        checked.append(action)
    return checked


def _written(link: Link | None, policy: Policy, now: datetime) -> tuple[int, datetime | None, bool]:
    """Count a write for the loop breaker: (count, window start, over the limit)."""
    if link is None:
        return 1, now, False
    start = link.window_start
    if start is None or now - start > policy.loop_window:
        return 1, now, False
    count = link.write_count + 1
    return count, start, count > policy.loop_max_writes


# -- around the plan: matching, echoes, counts --------------------------------------------------


def match_values(record: Record, fields: list[str]) -> tuple[Any, ...] | None:
    """The natural-key values ``record`` is matched on (strings trimmed and lower-cased);
    None when one is missing or empty, so a blank never matches a blank."""
    values = tuple(getattr(record, f, None) for f in fields)
    if any(v is None or v == "" for v in values):
        return None
    return tuple(v.strip().lower() if isinstance(v, str) else v for v in values)


def match_read(
    lone_a: list[Record], lone_b: list[Record], match_on: list[str], forward: Shape
) -> tuple[list[tuple[Record, Record]], list[Record], list[Record]]:
    """Match the unlinked records read on both sides by their natural keys, in memory:
    ``(matches, A's unmatched, B's unmatched)``. The first of B's records with a value wins
    it; each is matched at most once."""
    index: dict[tuple[Any, ...], Record] = {}
    for record in lone_b:
        value = match_values(record, match_on)
        if value is not None:
            index.setdefault(value, record)
    matches: list[tuple[Record, Record]] = []
    still_a: list[Record] = []
    taken_b: set[str] = set()
    for record in lone_a:
        value = match_values(forward(record), match_on)
        other = index.pop(value, None) if value is not None else None
        if other is not None:
            matches.append((record, other))
            taken_b.add(other.key)
        else:
            still_a.append(record)
    return matches, still_a, [r for r in lone_b if r.key not in taken_b]


def echoed(
    actions: list[PairAction],
    links: Iterable[Link],
    a_changed: dict[str, Record],
    b_changed: dict[str, Record],
) -> list[tuple[Link, list[str]]]:
    """Linked records this run read and left alone, each with the sides (``from``, ``to``)
    it was read on: read back as they were last written (our own write coming back, or a
    re-read of the overlap)."""
    acted = {x.a_key for x in actions} | {x.b_key for x in actions}
    found: list[tuple[Link, list[str]]] = []
    for link in links:
        sides = [
            side
            for key, changed, side in ((link.src_key, a_changed, "from"), (link.dst_key, b_changed, "to"))
            if key in changed and key not in acted
        ]
        if sides:
            found.append((link, sides))
    return found


#: the run counter an op adds to (the others are "skipped")
COUNTED: dict[str, str] = {
    "create_a": "created",
    "create_b": "created",
    "update_a": "updated",
    "update_b": "updated",
    "update_both": "updated",
    "delete_a": "deleted",
    "delete_b": "deleted",
    "conflict": "dead_lettered",
    "loop": "dead_lettered",
}


def tally(counts: dict[str, int], op: str) -> None:
    """Count ``op`` in ``counts`` as the run reports it (a dry run: what it would do)."""
    key = COUNTED.get(op, "skipped")
    counts[key] = counts.get(key, 0) + 1


__all__ = [
    "COUNTED",
    "Op",
    "PairAction",
    "Policy",
    "break_loops",
    "decision",
    "echoed",
    "match_read",
    "match_values",
    "merge_fields",
    "plan_pairs",
    "tally",
]
