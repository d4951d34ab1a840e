"""Two-way pipelines (``direction: both``): two app streams edited on both sides.

One set of links joins the ``from`` side (A) and the ``to`` side (B). Each link keeps a
fingerprint per side: what A held and what B held when they last agreed, both taken in
B's shape (A's records pass the pipeline mapping first), so that:

- a record read back with the fingerprint we stored is our own write: **no echo**;
- a record whose fingerprint moved on one side is an edit to carry to the other;
- both moved: a **conflict**, unless both now hold the same content (they converged);
  the pipeline's ``conflict`` policy (optionally per field) picks the winner, or
  ``manual`` sends the pair to the dead-letter table until ``ferryman dlq resolve``.

A run reads every change on both sides since each side's cursor, matches unlinked
records on natural keys (so an existing install is linked, not duplicated), plans,
checks the delete threshold **before writing anything**, then writes in chunks: links
(and intents for creates) are committed after each chunk, both cursors at the end. A
crash re-reads the same changes; pairs already written compare equal and are skipped.

Planning (:func:`plan_pairs`) is a pure function; all I/O is in :func:`run_two_way`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import structlog

from ferryman import metrics
from ferryman.config import ConflictPolicy, PipelineConfig
from ferryman.connector import Capability, Connector, StreamInfo
from ferryman.cursor import Cursor, OrderGuard, newest, read_from
from ferryman.errors import FerrymanError, RecordRejected, ValidationFailed
from ferryman.journal import RunJournal
from ferryman.mapping import FieldMapping
from ferryman.records import Record, fingerprint, overwritten, same_content
from ferryman.redact import redact
from ferryman.state import Link, NewDeadLetter, PageCommit
from ferryman.timeutil import format_utc, utcnow

if TYPE_CHECKING:
    from ferryman.engine import Engine, RunResult
    from ferryman.plan_report import ActionKind, DryRunReport

log = structlog.get_logger("ferryman.twoway")

CHUNK = 100
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
    conflict: ConflictPolicy = "source_wins"
    conflict_fields: dict[str, ConflictPolicy] = field(default_factory=dict)
    deletes_enabled: bool = False
    delete_action: Literal["delete", "unlink"] = "delete"
    loop_max_writes: int = 10
    loop_window: timedelta = timedelta(hours=1)


def _winner(policy: ConflictPolicy, a: Record, b: Record) -> Literal["a", "b"] | None:
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
    forward: Callable[[Record], Record],
    reverse: Callable[[Record], Record],
    policy: Policy,
    quarantined: frozenset[str] = frozenset(),
    now: datetime | None = None,
) -> list[PairAction]:
    """Decide what to do with every changed pair and lone record. Pure."""
    now = now or utcnow()
    actions: list[PairAction] = []

    def written(link: Link | None) -> tuple[int, datetime | None, bool]:
        """Count a write for the loop breaker: (count, window start, over the limit)."""
        if link is None:
            return 1, now, False
        start = link.window_start
        if start is None or now - start > policy.loop_window:
            return 1, now, False
        count = link.write_count + 1
        return count, start, count > policy.loop_max_writes

    def settle(a: Record, b: Record, a_key: str, b_key: str, link: Link | None, a_fp: str, b_fp: str) -> None:
        """Both sides changed (or met for the first time): converge, resolve or escalate."""
        if a.deleted and b.deleted:
            actions.append(PairAction("unlink", a_key, b_key, reason="deleted on both sides", link=link))
            return
        if a_fp == b_fp:
            actions.append(PairAction("link", a_key, b_key, a_fp=a_fp, b_fp=b_fp, reason="both sides agree", link=link))
            return
        shaped = forward(a)
        if a.deleted or b.deleted:
            side = _winner(policy.conflict, a, b)
            if side is None:
                actions.append(
                    PairAction(
                        "conflict",
                        a_key,
                        b_key,
                        reason="deleted on one side, edited on the other",
                        a_record=a,
                        b_record=b,
                        link=link,
                    )
                )
                return
            loser_deleted = (side == "a" and b.deleted) or (side == "b" and a.deleted)
            if loser_deleted:
                # the record is gone on the losing side: create it there again (an update of
                # a deleted record is refused by real apps) and link the new copy instead
                reason = "edit wins over delete: created again"
                if side == "a":
                    actions.append(
                        PairAction("create_b", a_key, None, write=shaped, a_fp=a_fp, reason=reason, link=link)
                    )
                else:
                    actions.append(
                        PairAction(
                            "create_a",
                            None,
                            b_key,
                            write=reverse(b),
                            b_fp=b_fp,
                            reason=reason,
                            link=link,
                            replaces_a=a_key,
                        )
                    )
            elif policy.deletes_enabled:
                # the edit on the losing side is lost with its record: journaled whole
                edited = "b" if side == "a" else "a"
                actions.append(
                    PairAction(
                        "delete_b" if side == "a" else "delete_a",
                        a_key,
                        b_key,
                        reason="delete wins over edit",
                        link=link,
                        decision=decision(policy, a, b, first=link is None),
                        lost={edited: ((b if edited == "b" else a).content(), {})},
                    )
                )
            else:
                actions.append(PairAction("skip", a_key, b_key, reason="deletes are not enabled", link=link))
            return
        merged = merge_fields(policy, shaped, b, a)
        if merged is None:
            actions.append(
                PairAction(
                    "conflict",
                    a_key,
                    b_key,
                    reason="both sides changed; conflict policy is manual",
                    a_record=a,
                    b_record=b,
                    link=link,
                )
            )
            return
        merged_fp = fingerprint(merged)
        to_b, to_a = merged_fp != b_fp, merged_fp != a_fp
        why = decision(policy, a, b, first=link is None)
        lost: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        if to_b:
            lost["b"] = overwritten(b, merged)
        if to_a:
            lost["a"] = overwritten(a, reverse(merged))
        if to_b and to_a:
            # one action for both writes: the link is committed only when both sides hold the
            # merge, never with one side written and the other still marked as agreed
            actions.append(
                PairAction(
                    "update_both",
                    a_key,
                    b_key,
                    write=merged.model_copy(update={"key": b_key}),
                    write_a=reverse(merged).model_copy(update={"key": a_key}),
                    a_fp=merged_fp,
                    b_fp=merged_fp,
                    reason="conflict resolved",
                    link=link,
                    decision=why,
                    lost=lost,
                )
            )
        elif to_b:
            actions.append(
                PairAction(
                    "update_b",
                    a_key,
                    b_key,
                    write=merged.model_copy(update={"key": b_key}),
                    a_fp=a_fp,
                    b_fp=merged_fp,
                    reason="conflict resolved",
                    link=link,
                    decision=why,
                    lost=lost,
                )
            )
        elif to_a:
            actions.append(
                PairAction(
                    "update_a",
                    a_key,
                    b_key,
                    write=reverse(merged).model_copy(update={"key": a_key}),
                    a_fp=merged_fp,
                    b_fp=b_fp,
                    reason="conflict resolved",
                    link=link,
                    decision=why,
                    lost=lost,
                )
            )

    for link in links:
        a = a_changed.get(link.src_key)
        b = b_changed.get(link.dst_key)
        a_shaped = forward(a) if a is not None else None
        a_fp = fingerprint(a_shaped) if a_shaped is not None else link.src_fp
        b_fp = fingerprint(b) if b is not None else link.dst_fp
        # compared in the stored fingerprint's version (a link made before a new algorithm)
        a_moved = a_shaped is not None and not same_content(a_shaped, link.src_fp, a_fp)
        b_moved = b is not None and not same_content(b, link.dst_fp, b_fp)
        if not a_moved and not b_moved:
            continue  # our own writes coming back, or nothing new
        if link.src_key in quarantined:
            actions.append(
                PairAction("skip", link.src_key, link.dst_key, reason="quarantined by the loop breaker", link=link)
            )
            continue
        if a_moved and b_moved:
            assert a is not None and b is not None
            settle(a, b, link.src_key, link.dst_key, link, a_fp or "", b_fp or "")
        elif a_moved:
            assert a is not None
            if a.deleted:
                if policy.deletes_enabled:
                    op_b: Op = "delete_b" if policy.delete_action == "delete" else "unlink"
                    actions.append(
                        PairAction(op_b, link.src_key, link.dst_key, reason="deleted in from-side", link=link)
                    )
                else:
                    actions.append(
                        PairAction("skip", link.src_key, link.dst_key, reason="deletes are not enabled", link=link)
                    )
            else:
                actions.append(
                    PairAction(
                        "update_b",
                        link.src_key,
                        link.dst_key,
                        write=forward(a).model_copy(update={"key": link.dst_key}),
                        a_fp=a_fp,
                        b_fp=a_fp,
                        link=link,
                    )
                )
        else:
            assert b is not None
            if b.deleted:
                if policy.deletes_enabled:
                    op_a: Op = "delete_a" if policy.delete_action == "delete" else "unlink"
                    actions.append(PairAction(op_a, link.src_key, link.dst_key, reason="deleted in to-side", link=link))
                else:
                    actions.append(
                        PairAction("skip", link.src_key, link.dst_key, reason="deletes are not enabled", link=link)
                    )
            else:
                actions.append(
                    PairAction(
                        "update_a",
                        link.src_key,
                        link.dst_key,
                        write=reverse(b).model_copy(update={"key": link.src_key}),
                        a_fp=b_fp,
                        b_fp=b_fp,
                        link=link,
                    )
                )

    for a, b in matches:
        settle(a, b, a.key, b.key, None, fingerprint(forward(a)), fingerprint(b))
    for a in lone_a:
        if not a.deleted:
            shaped = forward(a)
            actions.append(PairAction("create_b", a.key, None, write=shaped, a_fp=fingerprint(shaped)))
    for b in lone_b:
        if not b.deleted:
            actions.append(PairAction("create_a", None, b.key, write=reverse(b), b_fp=fingerprint(b)))

    # the loop breaker: too many writes to one pair within the window -> quarantine
    checked: list[PairAction] = []
    for action in actions:
        if action.op.startswith(("update", "delete")) and action.link is not None:
            count, start, over = written(action.link)
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


# -- I/O ----------------------------------------------------------------------------------


@dataclass
class _Side:
    label: Literal["a", "b"]
    ref: str
    connector: Connector
    stream: str
    info: StreamInfo

    @property
    def transactional(self) -> bool:
        return bool(getattr(self.connector, "transactional_writes", False))


async def _read_changes(
    side: _Side, since: Cursor | None, page_size: int, dead: list[NewDeadLetter]
) -> tuple[dict[str, Record], Cursor | None]:
    changed: dict[str, Record] = {}
    best: Cursor | None = None
    order = OrderGuard(system=side.connector.name, stream=side.stream) if side.info.ordered else None
    async for page in side.connector.read(side.stream, since, page_size):
        if order is not None:
            order.check(page.records, side.ref)
        for reject in page.rejects:
            dead.append(
                NewDeadLetter(
                    side.ref, None, reject.ref, reject.reason, src_key=reject.key, kind="invalid", payload=reject.raw
                )
            )
        for record in page.records:
            changed[record.key] = record
        if page.records:
            page_max = newest(page.records)
            if best is None or page_max > best:
                best = page_max
    return changed, best


def _match_values(record: Record, fields: list[str]) -> tuple[Any, ...] | None:
    values = tuple(getattr(record, f, None) for f in fields)
    if any(v is None or v == "" for v in values):
        return None
    return tuple(v.strip().lower() if isinstance(v, str) else v for v in values)


async def run_two_way(
    engine: Engine,
    name: str,
    pipeline: PipelineConfig,
    result: RunResult,
    *,
    full: bool,
    dry_run: bool,
    report: DryRunReport | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """One run of a two-way pipeline; fills ``result`` (the caller holds the lease).

    ``stop`` (SIGTERM in the daemon) ends the run after the chunk in hand: its links are
    committed, the cursors are not, so the next run re-reads and finishes the work."""
    store = engine.store
    (a_sys, a_stream), (b_sys, b_stream) = pipeline.source_ref(), pipeline.target_refs()[0]
    a_conn, b_conn = await engine.system(a_sys), await engine.system(b_sys)
    a = _Side("a", pipeline.source, a_conn, a_stream, a_conn.stream(a_stream))
    b = _Side("b", pipeline.to[0], b_conn, b_stream, b_conn.stream(b_stream))
    where = f"pipelines.{name}.mapping"
    forward = FieldMapping(pipeline.mapping, a.info.record_type, b.info.record_type, where=where)
    reverse = forward.inverse(where=where)
    policy = Policy(
        pipeline.conflict,
        dict(pipeline.conflict_fields),
        pipeline.deletes.enabled,
        pipeline.deletes.action,
        pipeline.loop_breaker.max_writes,
        pipeline.loop_breaker.window,
    )
    match_on = pipeline.match_on or [f for f in (b.info.natural_key,) if f and f != "key"]

    if not dry_run:
        for side in (a, b):
            if side.transactional:
                await side.connector.restore(side.stream, await engine._state(store.get_checkpoint, name, side.ref))
        await _reconcile(engine, name, a, b)

    dead: list[NewDeadLetter] = []
    cursor_a = None if full else await engine._state(store.get_cursor, name, "a")
    cursor_b = None if full else await engine._state(store.get_cursor, name, "b")
    a_since = read_from(cursor_a, pipeline.overlap, a.info.precision)
    b_since = read_from(cursor_b, pipeline.overlap, b.info.precision)
    a_changed, best_a = await _read_changes(a, a_since, pipeline.page_size, dead)
    b_changed, best_b = await _read_changes(b, b_since, pipeline.page_size, dead)
    result.counts["read"] += len(a_changed) + len(b_changed)

    def safe(mapping: FieldMapping, record: Record) -> Record | None:
        try:
            return mapping.apply(record)
        except ValidationFailed as exc:
            side_ref = a.ref if mapping is forward else b.ref
            dead.append(
                NewDeadLetter(
                    side_ref,
                    None,
                    record.key,
                    f"mapping: {exc}",
                    src_key=record.key,
                    kind="invalid",
                    payload=record.model_dump(mode="json"),
                )
            )
            return None

    a_changed = {k: r for k, r in a_changed.items() if safe(forward, r) is not None}
    b_changed = {k: r for k, r in b_changed.items() if safe(reverse, r) is not None}

    links_a = await engine._state(store.links_for, a.ref, b.ref, list(a_changed))
    links_b = await engine._state(store.links_by_dst, a.ref, b.ref, list(b_changed))
    links: dict[str, Link] = {**links_a, **{lk.src_key: lk for lk in links_b.values()}}
    linked_b_keys = {lk.dst_key for lk in links.values()}
    lone_a = [r for k, r in a_changed.items() if k not in links]
    lone_b = [r for k, r in b_changed.items() if k not in linked_b_keys]

    # initial matching on natural keys: changed records first, then a lookup on the other side
    matches: list[tuple[Record, Record]] = []
    if match_on:
        index: dict[tuple[Any, ...], Record] = {}
        for record in lone_b:
            value = _match_values(record, match_on)
            if value is not None:
                index.setdefault(value, record)
        still_a: list[Record] = []
        taken_b: set[str] = set()
        for record in lone_a:
            value = _match_values(forward.apply(record), match_on)
            other = index.pop(value, None) if value is not None else None
            if other is not None:
                matches.append((record, other))
                taken_b.add(other.key)
            else:
                still_a.append(record)
        lone_b = [r for r in lone_b if r.key not in taken_b]
        lone_a = []
        # a side read in full (first sync, --full) was matched in memory already: asking it
        # again record by record would only cost requests
        b_complete, a_complete = cursor_b is None, cursor_a is None
        for record in still_a:
            found = None if b_complete else await _lookup(b, forward.apply(record))
            if (
                found is not None
                and found.key not in linked_b_keys
                and not await engine._state(store.links_by_dst, a.ref, b.ref, [found.key])
            ):
                matches.append((record, found))
                linked_b_keys.add(found.key)
            else:
                lone_a.append(record)
        still_b, lone_b = lone_b, []
        linked_a_keys = set(links) | {m[0].key for m in matches}
        for record in still_b:
            found = None if a_complete else await _lookup(a, reverse.apply(record))
            if (
                found is not None
                and found.key not in linked_a_keys
                and not await engine._state(store.links_for, a.ref, b.ref, [found.key])
            ):
                matches.append((found, record))
                linked_a_keys.add(found.key)
            else:
                lone_b.append(record)

    quarantined = frozenset(
        x.src_key or x.ref for x in await engine._state(store.dead_letters, name, status="open") if x.kind == "loop"
    )
    actions = plan_pairs(
        a_changed,
        b_changed,
        list(links.values()),
        matches,
        lone_a,
        lone_b,
        forward.apply,
        reverse.apply,
        policy,
        quarantined,
    )

    deletes_b = sum(1 for x in actions if x.op == "delete_b")
    deletes_a = sum(1 for x in actions if x.op == "delete_a")
    if deletes_a or deletes_b:
        total = max(await engine._state(store.count_links, a.ref, b.ref), 1)
        worst = max(deletes_a, deletes_b)
        if worst / total > pipeline.deletes.max_share:
            which = b.ref if deletes_b >= deletes_a else a.ref
            result.outcome = "halted"
            result.message = (
                f"halted before deleting anything: {worst} of {total} linked records in {which} "
                f"({worst / total:.0%}) would be deleted, over deletes.max_share {pipeline.deletes.max_share:.0%}"
            )
            log.error("run.halted", pipeline=name, reason=result.message)
            if not dry_run and dead:
                await engine._state(store.add_dead_letters, name, dead)
            return

    if dry_run:
        for x in actions:
            _count(result.counts, x.op)
        if report is not None:
            for letter in dead:
                report.action("dead-letter", None, key=letter.src_key, source=letter.src, reason=letter.reason)
            for x in actions:
                await _report(report, x, a, b, a_changed, b_changed)
        return

    journal = _History(RunJournal(engine.config.history, pipeline.journal), a.ref, b.ref, pipeline.conflict)
    finished = await _execute(engine, name, a, b, actions, dead, result, forward, journal, stop)
    if not finished:
        result.outcome = "stopped"
        result.message = "stopped after committing the chunk in hand; the next run continues"
        await engine._publish(name, (a, b))
        return
    cursors: dict[str, Cursor] = {}
    if best_a is not None and (cursor_a is None or best_a > cursor_a):
        cursors["a"] = best_a
    if best_b is not None and (cursor_b is None or best_b > cursor_b):
        cursors["b"] = best_b
    commit = PageCommit(
        name,
        cursors=cursors,
        run_id=result.run_id,
        dead_letters=dead,
        counts={"read": len(a_changed) + len(b_changed), "dead_lettered": len(dead)},
    )
    journal.letters(commit)
    _echoes(journal, commit, actions, links, a_changed, b_changed)
    for side in (a, b):
        if side.transactional:
            commit.checkpoints[side.ref] = await side.connector.checkpoint(side.stream)
    await engine._state(store.commit_page, commit)
    await engine._publish(name, (a, b))
    result.counts["dead_lettered"] += len(dead)


def _echoes(
    journal: _History,
    commit: PageCommit,
    actions: list[PairAction],
    links: dict[str, Link],
    a_changed: dict[str, Record],
    b_changed: dict[str, Record],
) -> None:
    """Events for linked records this run read and left alone: read back as they were last
    written, our own write coming back (or a re-read of the overlap)."""
    if not journal.run.records_events:
        return
    acted = {x.a_key for x in actions} | {x.b_key for x in actions}
    for link in links.values():
        sides = [
            side
            for key, changed, side in ((link.src_key, a_changed, "from"), (link.dst_key, b_changed, "to"))
            if key in changed and key not in acted
        ]
        if sides:
            journal.pair(
                commit,
                "echo",
                link.src_key,
                link.dst_key,
                fp=link.src_fp,
                detail=f"read from the {' and '.join(sides)}-side as last written "
                "(our own write, or a re-read): nothing to do",
            )


async def _report(
    report: DryRunReport,
    x: PairAction,
    a: _Side,
    b: _Side,
    a_changed: dict[str, Record],
    b_changed: dict[str, Record],
) -> None:
    """Tell a dry run's ``report`` what ``x`` would do, in words about the pipeline's sides
    (``update on the from-side``), with the fields an update would change on each side."""
    one_side = _WRITES.get(x.op)
    if one_side is not None:
        kind, to_a = one_side
        written, other = (a, b) if to_a else (b, a)
        key, target_key = (x.b_key, x.a_key) if to_a else (x.a_key, x.b_key)
        current = None
        if kind == "update" and target_key is not None:
            current = await _held(written, target_key, a_changed if to_a else b_changed)
        report.action(
            kind,
            written.ref,
            key=key,
            target_key=target_key,
            source=other.ref,
            current=current,
            new=x.write if kind == "update" else None,
            reason=x.reason,
            side="from" if to_a else "to",
        )
    elif x.op == "update_both":
        # one merge written to both sides: reported as the two writes it is
        for side, key, other_key, changed, write, other in (
            (a, x.a_key, x.b_key, a_changed, x.write_a, b),
            (b, x.b_key, x.a_key, b_changed, x.write, a),
        ):
            current = await _held(side, key, changed) if key is not None else None
            report.action(
                "update",
                side.ref,
                key=other_key,
                target_key=key,
                source=other.ref,
                current=current,
                new=write,
                reason=x.reason,
                side="from" if side is a else "to",
            )
    else:
        pair_kind = _PAIRS.get(x.op, "skip")
        report.action(pair_kind, b.ref, key=x.a_key, target_key=x.b_key, source=a.ref, reason=x.reason)


#: a two-way op that writes one side: what it does, and whether that side is A (the from-side)
_WRITES: dict[str, tuple[ActionKind, bool]] = {
    "create_a": ("create", True),
    "create_b": ("create", False),
    "update_a": ("update", True),
    "update_b": ("update", False),
    "delete_a": ("delete", True),
    "delete_b": ("delete", False),
}
#: a two-way op about a pair, not a write to one side
_PAIRS: dict[str, ActionKind] = {"unlink": "unlink", "link": "link", "conflict": "conflict", "loop": "loop"}


async def _held(side: _Side, key: str, changed: dict[str, Record]) -> Record | None:
    """What ``side`` holds now under ``key``, for a dry run's diff: the record this run read
    (if it changed), else one ``get`` where the side can; ``None`` when not read."""
    if key in changed:
        return changed[key]
    if not side.info.can(Capability.READ):
        return None
    try:
        return await side.connector.get(side.stream, key)
    except (NotImplementedError, FerrymanError) as exc:
        log.debug("dry_run.side_unread", side=side.ref, key=key, error=redact(str(exc)))
        return None


async def _lookup(side: _Side, record: Record) -> Record | None:
    if not side.info.can(Capability.FIND):
        return None
    try:
        return await side.connector.find(side.stream, record)
    except RecordRejected:
        return None


def _count(counts: dict[str, int], op: str) -> None:
    key = {
        "create_a": "created",
        "create_b": "created",
        "update_a": "updated",
        "update_b": "updated",
        "update_both": "updated",
        "delete_a": "deleted",
        "delete_b": "deleted",
        "conflict": "dead_lettered",
        "loop": "dead_lettered",
    }.get(op, "skipped")
    counts[key] = counts.get(key, 0) + 1


@dataclass(slots=True)
class _History:
    """The history of one two-way run: events keyed by the from-side key where the pair has
    one (``explain`` finds them by either side's key: the to-side's through the link, or
    as the target key of a write there)."""

    run: RunJournal
    a: str
    b: str
    policy: str

    def pair(
        self,
        commit: PageCommit,
        action: str,
        a_key: str | None,
        b_key: str | None,
        *,
        target: str | None = None,
        fp: str | None = None,
        fields: list[str] | None = None,
        detail: str | None = None,
    ) -> None:
        source, key = (self.a, a_key) if a_key else (self.b, b_key)
        # the key in the side written (none for a decision that writes nothing); a pair's
        # to-side key is also found through its link (see ferryman.explain)
        written = a_key if target == self.a else b_key if target == self.b else None
        self.run.event(
            commit.events,
            source,
            key,
            action,
            target=target,
            target_key=written,
            fingerprint=fp,
            fields=fields,
            detail=detail,
        )

    def letters(self, commit: PageCommit) -> None:
        """Events for the dead letters of ``commit`` a write or a mapping made (conflicts and
        loops have their own events already)."""
        self.run.letters(commit.events, commit.dead_letters, skip=("conflict", "loop"))


async def _execute(
    engine: Engine,
    name: str,
    a: _Side,
    b: _Side,
    actions: list[PairAction],
    dead: list[NewDeadLetter],
    result: RunResult,
    forward: FieldMapping,
    journal: _History,
    stop: asyncio.Event | None = None,
) -> bool:
    """Write the plan chunk by chunk; False when ``stop`` ended it early."""
    store = engine.store
    pair = (a.ref, b.ref)
    for start in range(0, len(actions), CHUNK):
        if stop is not None and stop.is_set():
            return False
        await asyncio.sleep(0)  # let the daemon's loop breathe (watchdog, control API, signals)
        chunk = actions[start : start + CHUNK]
        commit = PageCommit(name, run_id=result.run_id)
        creates = [x for x in chunk if x.op in ("create_a", "create_b")]
        intent_ids: dict[int, int] = {}
        if creates:
            items = []
            for x in creates:
                # labelled by the side the record came FROM ("a:KEY" is created on B), which
                # is how _reconcile reads it back
                origin = "a" if x.op == "create_b" else "b"
                src_key = x.a_key if x.op == "create_b" else x.b_key
                assert x.write is not None and src_key is not None
                items.append((f"{origin}:{src_key}", x.a_fp or x.b_fp or "", x.write.model_dump_json()))
            ids = await engine._state(store.record_intents, name, f"{a.ref}<->{b.ref}", items)
            intent_ids = {id(x): i for x, i in zip(creates, ids, strict=True)}
        counts: dict[str, int] = {}
        new_links: list[Link] = []
        unlinks: list[str] = []
        try:
            for x in chunk:
                # no write once this run may have lost its lease (see StateStore.self_fence)
                await engine._fence(name)
                try:
                    await _apply(x, a, b, forward, new_links, unlinks, dead, counts, journal, commit)
                except RecordRejected as exc:
                    reason = redact(str(exc))
                    target = b.ref if x.op.endswith("_b") else a.ref
                    dead.append(
                        NewDeadLetter(
                            a.ref,
                            target,
                            x.a_key or x.b_key or "?",
                            reason,
                            src_key=x.a_key,
                            kind="rejected",
                            payload=x.write.model_dump(mode="json") if x.write else None,
                        )
                    )
                    counts["dead_lettered"] = counts.get("dead_lettered", 0) + 1
                if id(x) in intent_ids:
                    commit.resolved_intents.append(intent_ids.pop(id(x)))
        finally:
            commit.links[pair] = new_links
            if unlinks:
                commit.unlinks[pair] = unlinks
            commit.dead_letters = list(dead)
            dead.clear()
            journal.letters(commit)
            commit.counts = {
                k: v for k, v in counts.items() if k in ("created", "updated", "deleted", "skipped", "dead_lettered")
            }
            await engine._state(store.commit_page, commit)
            for key, value in commit.counts.items():
                result.counts[key] = result.counts.get(key, 0) + value
            for op in ("created", "updated", "deleted"):
                if counts.get(op):
                    metrics.inc("ferryman_records_written_total", counts[op], pipeline=name, op=op)
    return True


async def _apply(
    x: PairAction,
    a: _Side,
    b: _Side,
    forward: FieldMapping,
    new_links: list[Link],
    unlinks: list[str],
    dead: list[NewDeadLetter],
    counts: dict[str, int],
    journal: _History,
    commit: PageCommit,
) -> None:
    def bump(key: str) -> None:
        counts[key] = counts.get(key, 0) + 1

    def wrote(side: _Side, stored_key: str | None = None, *, created: bool = False) -> None:
        """The history of a write to ``side`` that succeeded: the decision (a conflict a
        policy resolved, with the journal of what it overwrote), then the write itself."""
        label = "from" if side is a else "to"
        a_key = stored_key if (created and side is a) else x.a_key
        b_key = stored_key if (created and side is b) else x.b_key
        if x.decision and side.label in x.lost:
            lost, won = x.lost[side.label]
            journal.run.conflict(
                commit.conflicts,
                system=side.ref,
                side=label,
                record_key=(x.a_key if side is a else x.b_key) or "?",
                src_key=x.a_key,
                policy=journal.policy,
                reason=x.decision,
                lost=lost,
                won=won,
            )
        what = "create" if created else "delete" if x.op.startswith("delete") else "update"
        fields = list(x.lost[side.label][1]) if side.label in x.lost and what == "update" else None
        verb = {"create": f"created in {side.ref} as {stored_key}", "update": f"updated in {side.ref}"}.get(
            what, f"deleted in {side.ref}"
        )
        journal.pair(
            commit,
            what,
            a_key,
            b_key,
            target=side.ref,
            fp=x.a_fp or x.b_fp,
            fields=fields,
            detail=f"{verb}{': ' + x.reason if x.reason and not x.decision else ''}",
        )

    if x.decision:
        journal.pair(commit, "conflict", x.a_key, x.b_key, fp=x.a_fp or x.b_fp, detail=x.decision)

    link = x.link
    count = link.write_count if link else 1
    window = link.window_start if link else utcnow()
    if x.op == "skip":
        bump("skipped")
        held = x.reason == "deletes are not enabled"
        journal.pair(commit, "withhold" if held else "skip", x.a_key, x.b_key, detail=x.reason)
    elif x.op == "link":
        assert x.a_key and x.b_key
        new_links.append(
            Link(x.a_key, x.b_key, x.a_fp, x.b_fp, link.write_count if link else 0, link.window_start if link else None)
        )
        bump("skipped")
        journal.pair(commit, "link", x.a_key, x.b_key, fp=x.a_fp, detail=x.reason)
    elif x.op == "unlink":
        assert x.a_key
        unlinks.append(x.a_key)
        journal.pair(commit, "unlink", x.a_key, x.b_key, detail=x.reason)
    elif x.op in ("conflict", "loop"):
        journal.pair(
            commit,
            "manual" if x.op == "conflict" else "loop",
            x.a_key,
            x.b_key,
            detail=f"{x.reason}; dead-lettered for `ferryman dlq resolve`",
        )
        payload = {
            "from": x.a_record.model_dump(mode="json") if x.a_record else None,
            "to": x.b_record.model_dump(mode="json") if x.b_record else None,
            "a_key": x.a_key,
            "b_key": x.b_key,
        }
        if x.op == "loop" and link is not None:
            payload["history"] = {
                "writes_in_window": link.write_count + 1,
                "window_start": format_utc(link.window_start or utcnow()),
            }
        dead.append(NewDeadLetter(a.ref, b.ref, x.a_key or "?", x.reason, src_key=x.a_key, kind=x.op, payload=payload))
        bump("dead_lettered")
    elif x.op == "create_b":
        assert x.write is not None and x.a_key
        stored = await b.connector.create(b.stream, x.write)
        new_links.append(Link(x.a_key, stored.key, x.a_fp, fingerprint(stored), 1, utcnow()))
        bump("created")
        wrote(b, stored.key, created=True)
    elif x.op == "create_a":
        assert x.write is not None and x.b_key
        stored = await a.connector.create(a.stream, x.write)
        if x.replaces_a:
            unlinks.append(x.replaces_a)
        new_links.append(Link(stored.key, x.b_key, fingerprint(forward.apply(stored)), x.b_fp, 1, utcnow()))
        bump("created")
        wrote(a, stored.key, created=True)
    elif x.op == "update_b":
        assert x.write is not None and x.a_key and x.b_key
        stored = await b.connector.update(b.stream, x.b_key, x.write)
        new_links.append(Link(x.a_key, x.b_key, x.a_fp, fingerprint(stored), count, window))
        bump("updated")
        wrote(b)
    elif x.op == "update_a":
        assert x.write is not None and x.a_key and x.b_key
        stored = await a.connector.update(a.stream, x.a_key, x.write)
        new_links.append(Link(x.a_key, x.b_key, fingerprint(forward.apply(stored)), x.b_fp, count, window))
        bump("updated")
        wrote(a)
    elif x.op == "update_both":
        assert x.write is not None and x.write_a is not None and x.a_key and x.b_key
        stored_b = await b.connector.update(b.stream, x.b_key, x.write)
        stored_a = await a.connector.update(a.stream, x.a_key, x.write_a)
        new_links.append(
            Link(x.a_key, x.b_key, fingerprint(forward.apply(stored_a)), fingerprint(stored_b), count, window)
        )
        counts["updated"] = counts.get("updated", 0) + 2
        wrote(b)
        wrote(a)
    elif x.op == "delete_b":
        assert x.a_key and x.b_key
        await b.connector.delete(b.stream, x.b_key)
        unlinks.append(x.a_key)
        bump("deleted")
        wrote(b)
    elif x.op == "delete_a":
        assert x.a_key and x.b_key
        await a.connector.delete(a.stream, x.a_key)
        unlinks.append(x.a_key)
        bump("deleted")
        wrote(a)


async def _reconcile(engine: Engine, name: str, a: _Side, b: _Side) -> None:
    """Creates a crash interrupted: find them on their side and link them, or forget them."""
    store = engine.store
    for intent in await engine._state(store.intents, name, f"{a.ref}<->{b.ref}"):
        # "a:KEY": A's record KEY was being created on B; "b:KEY": B's record on A
        label, _, src_key = intent["src_key"].partition(":")
        side, other = (b, a) if label == "a" else (a, b)
        record = side.info.record_type.model_validate_json(intent["payload"])
        found = await _lookup(side, record)
        link = None
        if found is not None:
            # Both sides get the fingerprint of what WE wrote, not of what the app holds now:
            # if someone edited the new record since, that edit must still count as a change
            # (and travel to the other side), not be adopted as already agreed.
            if label == "a":
                link = Link(src_key, found.key, intent["fingerprint"], intent["fingerprint"])
            else:
                link = Link(found.key, src_key, intent["fingerprint"], intent["fingerprint"])
        await engine._state(store.resolve_intent, intent["id"], src=a.ref, dst=b.ref, link=link)
        log.info(
            "intent.reconciled", pipeline=name, side=side.ref, other=other.ref, key=src_key, found=found is not None
        )


async def resolve_conflict(engine: Engine, letter_id: int, side: Literal["from", "to"]) -> str:
    """``ferryman dlq resolve ID --side from|to``: the chosen side's current version wins."""
    letters = await engine._state(engine.store.dead_letters, status="open", ids=[letter_id])
    if not letters:
        raise FerrymanError(f"#{letter_id} is not an open dead letter")
    letter = letters[0]
    if letter.kind not in ("conflict", "loop"):
        raise FerrymanError(f"#{letter_id} is a {letter.kind} dead letter; use `ferryman dlq replay`")
    pipeline = engine.config.pipeline(letter.pipeline)
    (a_sys, a_stream), (b_sys, b_stream) = pipeline.source_ref(), pipeline.target_refs()[0]
    a_conn, b_conn = await engine.system(a_sys), await engine.system(b_sys)
    forward = FieldMapping(pipeline.mapping, a_conn.stream(a_stream).record_type, b_conn.stream(b_stream).record_type)
    reverse = forward.inverse()
    a_key, b_key = letter.payload["a_key"], letter.payload["b_key"]
    a_rec = await a_conn.get(a_stream, a_key)
    b_rec = await b_conn.get(b_stream, b_key)
    if not await engine._state(engine.store.acquire_lease, letter.pipeline, engine.config.state.lease_ttl):
        raise FerrymanError(f"{letter.pipeline} is running; try again when it is done")
    try:
        if side == "from":
            if a_rec is None:
                raise FerrymanError(f"{pipeline.source}#{a_key} no longer exists")
            stored = await b_conn.update(b_stream, b_key, forward.apply(a_rec).model_copy(update={"key": b_key}))
            link = Link(a_key, b_key, fingerprint(forward.apply(a_rec)), fingerprint(stored))
        else:
            if b_rec is None:
                raise FerrymanError(f"{pipeline.to[0]}#{b_key} no longer exists")
            stored = await a_conn.update(a_stream, a_key, reverse.apply(b_rec).model_copy(update={"key": a_key}))
            link = Link(a_key, b_key, fingerprint(forward.apply(stored)), fingerprint(b_rec))
        await engine._state(
            engine.store.commit_page, PageCommit(letter.pipeline, links={(pipeline.source, pipeline.to[0]): [link]})
        )
        await engine._state(engine.store.set_dead_letter_status, [letter_id], "resolved")
    finally:
        await engine._state(engine.store.release_lease, letter.pipeline)
    return f"{'from' if side == 'from' else 'to'} side's version written to the other side"


__all__ = ["PairAction", "Policy", "merge_fields", "plan_pairs", "resolve_conflict", "run_two_way"]
