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

Planning (:func:`ferryman.planning_twoway.plan_pairs`) is a pure function; this module
holds the I/O around it: reading, matching by lookup, writing, the run's history.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import structlog

from ferryman import metrics
from ferryman.config import PipelineConfig
from ferryman.connector import Capability, Connector, StreamInfo
from ferryman.cursor import Cursor, OrderGuard, newest, read_from
from ferryman.errors import FerrymanError, RecordRejected, ValidationFailed
from ferryman.journal import RunJournal
from ferryman.mapping import FieldMapping
from ferryman.planning_twoway import (
    PairAction,
    Policy,
    echoed,
    match_read,
    merge_fields,
    plan_pairs,
    tally,
)
from ferryman.records import Record, fingerprint
from ferryman.redact import redact
from ferryman.run.sinks import Sinks
from ferryman.state import Link, NewDeadLetter, PageCommit
from ferryman.timeutil import format_utc, utcnow

if TYPE_CHECKING:
    from ferryman.engine import Engine, RunResult
    from ferryman.plan_report import ActionKind, DryRunReport

log = structlog.get_logger("ferryman.twoway")

CHUNK = 100


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


@dataclass
class _Read:
    """What a run read of both sides: the changes (key -> record), where each side's read
    started (``None``: read in full) and the newest cursor each read reached."""

    a_changed: dict[str, Record]
    b_changed: dict[str, Record]
    cursor_a: Cursor | None
    cursor_b: Cursor | None
    best_a: Cursor | None
    best_b: Cursor | None


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
    a, b = await _open_sides(engine, pipeline)
    where = f"pipelines.{name}.mapping"
    forward = FieldMapping(pipeline.mapping, a.info.record_type, b.info.record_type, where=where)
    reverse = forward.inverse(where=where)
    if not dry_run:
        await _recover(engine, name, a, b)

    dead: list[NewDeadLetter] = []
    read = await _read_both(engine, name, pipeline, a, b, full=full, dead=dead)
    result.counts["read"] += len(read.a_changed) + len(read.b_changed)
    read.a_changed = _mappable(read.a_changed, forward, a.ref, dead)
    read.b_changed = _mappable(read.b_changed, reverse, b.ref, dead)
    links = await _links(engine, a, b, read)
    matches, lone_a, lone_b = await _match(engine, pipeline, a, b, forward, reverse, links, read)
    actions = plan_pairs(
        read.a_changed,
        read.b_changed,
        list(links.values()),
        matches,
        lone_a,
        lone_b,
        forward.apply,
        reverse.apply,
        _policy(pipeline),
        await _quarantined(engine, name),
    )

    halted = await _over_delete_share(engine, pipeline, a, b, actions)
    if halted is not None:
        result.outcome = "halted"
        result.message = halted
        log.error("run.halted", pipeline=name, reason=result.message)
        if not dry_run and dead:
            await engine._state(engine.store.add_dead_letters, name, dead)
        return
    if dry_run:
        await _dry_run(report, result, actions, dead, a, b, read)
        return

    journal = _History(RunJournal(engine.config.history, pipeline.journal), a.ref, b.ref, pipeline.conflict)
    if not await _execute(engine, name, a, b, actions, dead, result, forward, journal, stop):
        result.outcome = "stopped"
        result.message = "stopped after committing the chunk in hand; the next run continues"
        await Sinks(engine, name, (a, b)).publish()
        return
    await _commit_run(engine, name, a, b, read, links, actions, dead, result, journal)


async def _open_sides(engine: Engine, pipeline: PipelineConfig) -> tuple[_Side, _Side]:
    """The pipeline's from-side (A) and to-side (B), with their connectors."""
    (a_sys, a_stream), (b_sys, b_stream) = pipeline.source_ref(), pipeline.target_refs()[0]
    a_conn, b_conn = await engine.system(a_sys), await engine.system(b_sys)
    a = _Side("a", pipeline.source, a_conn, a_stream, a_conn.stream(a_stream))
    b = _Side("b", pipeline.to[0], b_conn, b_stream, b_conn.stream(b_stream))
    return a, b


def _policy(pipeline: PipelineConfig) -> Policy:
    return Policy(
        pipeline.conflict,
        dict(pipeline.conflict_fields),
        pipeline.deletes.enabled,
        pipeline.deletes.action,
        pipeline.loop_breaker.max_writes,
        pipeline.loop_breaker.window,
    )


async def _recover(engine: Engine, name: str, a: _Side, b: _Side) -> None:
    """Before a run that writes: transactional sides go back to their committed checkpoint,
    and the creates a crash interrupted are linked or forgotten."""
    await Sinks(engine, name, (a, b)).restore()
    await _reconcile(engine, name, a, b)


async def _read_both(
    engine: Engine,
    name: str,
    pipeline: PipelineConfig,
    a: _Side,
    b: _Side,
    *,
    full: bool,
    dead: list[NewDeadLetter],
) -> _Read:
    """Every change on both sides since each side's cursor (everything when ``full``)."""
    store = engine.store
    cursor_a = None if full else await engine._state(store.get_cursor, name, "a")
    cursor_b = None if full else await engine._state(store.get_cursor, name, "b")
    a_since = read_from(cursor_a, pipeline.overlap, a.info.precision)
    b_since = read_from(cursor_b, pipeline.overlap, b.info.precision)
    a_changed, best_a = await _read_changes(a, a_since, pipeline.page_size, dead)
    b_changed, best_b = await _read_changes(b, b_since, pipeline.page_size, dead)
    return _Read(a_changed, b_changed, cursor_a, cursor_b, best_a, best_b)


def _mappable(
    changed: dict[str, Record], mapping: FieldMapping, side_ref: str, dead: list[NewDeadLetter]
) -> dict[str, Record]:
    """The changes ``mapping`` can carry to the other side; one it cannot is dead-lettered
    (``invalid``) on the side it was read from, and left out of the plan."""
    kept: dict[str, Record] = {}
    for key, record in changed.items():
        try:
            mapping.apply(record)
        except ValidationFailed as exc:
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
            continue
        kept[key] = record
    return kept


async def _links(engine: Engine, a: _Side, b: _Side, read: _Read) -> dict[str, Link]:
    """The links of the records read on either side, by from-side key."""
    links_a = await engine._state(engine.store.links_for, a.ref, b.ref, list(read.a_changed))
    links_b = await engine._state(engine.store.links_by_dst, a.ref, b.ref, list(read.b_changed))
    return {**links_a, **{lk.src_key: lk for lk in links_b.values()}}


async def _match(
    engine: Engine,
    pipeline: PipelineConfig,
    a: _Side,
    b: _Side,
    forward: FieldMapping,
    reverse: FieldMapping,
    links: dict[str, Link],
    read: _Read,
) -> tuple[list[tuple[Record, Record]], list[Record], list[Record]]:
    """The unlinked records read, matched on natural keys (so an existing install is linked,
    not duplicated): ``(matches, A's lone records, B's lone records)``. The records read
    on both sides are matched with each other first, then each one left is looked up on
    the other side."""
    linked_b_keys = {lk.dst_key for lk in links.values()}
    lone_a = [r for k, r in read.a_changed.items() if k not in links]
    lone_b = [r for k, r in read.b_changed.items() if k not in linked_b_keys]
    match_on = pipeline.match_on or [f for f in (b.info.natural_key,) if f and f != "key"]
    if not match_on:
        return [], lone_a, lone_b
    matches, still_a, still_b = match_read(lone_a, lone_b, match_on, forward.apply)
    # a side read in full (first sync, --full) was matched in memory already: asking it
    # again record by record would only cost requests
    # the B records matched in memory are taken too: a second A record with the same value
    # (two CRM contacts, one email) looked up on B finds one of them, which is not free
    taken_b = linked_b_keys | {m[1].key for m in matches}
    lone_a = await _find(engine, a, b, "b", still_a, forward, taken_b, matches, complete=read.cursor_b is None)
    linked_a_keys = set(links) | {m[0].key for m in matches}
    lone_b = await _find(engine, a, b, "a", still_b, reverse, linked_a_keys, matches, complete=read.cursor_a is None)
    return matches, lone_a, lone_b


async def _find(
    engine: Engine,
    a: _Side,
    b: _Side,
    on: Literal["a", "b"],
    records: list[Record],
    mapping: FieldMapping,
    linked: set[str],
    matches: list[tuple[Record, Record]],
    *,
    complete: bool,
) -> list[Record]:
    """Look each of ``records`` (read on the other side) up on side ``on`` by its natural
    key: a record found there that no link holds is matched (appended to ``matches``, its
    key to ``linked``). Returns the records left alone; none is looked up when ``complete``
    (the side was read in full)."""
    side = b if on == "b" else a
    held = engine.store.links_by_dst if on == "b" else engine.store.links_for
    lone: list[Record] = []
    for record in records:
        found = None if complete else await _lookup(side, mapping.apply(record))
        if found is not None and found.key not in linked and not await engine._state(held, a.ref, b.ref, [found.key]):
            matches.append((record, found) if on == "b" else (found, record))
            linked.add(found.key)
        else:
            lone.append(record)
    return lone


async def _quarantined(engine: Engine, name: str) -> frozenset[str]:
    """The from-side keys of the pairs the loop breaker quarantined (an open ``loop`` letter)."""
    letters = await engine._state(engine.store.dead_letters, name, status="open")
    return frozenset(x.src_key or x.ref for x in letters if x.kind == "loop")


async def _over_delete_share(
    engine: Engine, pipeline: PipelineConfig, a: _Side, b: _Side, actions: list[PairAction]
) -> str | None:
    """Why the run halts before writing anything, when the plan deletes a larger share of
    one side's linked records than ``deletes.max_share``; None when it does not."""
    deletes_b = sum(1 for x in actions if x.op == "delete_b")
    deletes_a = sum(1 for x in actions if x.op == "delete_a")
    if not (deletes_a or deletes_b):
        return None
    total = max(await engine._state(engine.store.count_links, a.ref, b.ref), 1)
    worst = max(deletes_a, deletes_b)
    if worst / total > pipeline.deletes.max_share:
        which = b.ref if deletes_b >= deletes_a else a.ref
        return (
            f"halted before deleting anything: {worst} of {total} linked records in {which} "
            f"({worst / total:.0%}) would be deleted, over deletes.max_share {pipeline.deletes.max_share:.0%}"
        )
    return None


async def _dry_run(
    report: DryRunReport | None,
    result: RunResult,
    actions: list[PairAction],
    dead: list[NewDeadLetter],
    a: _Side,
    b: _Side,
    read: _Read,
) -> None:
    """Count what the plan would do and, given a ``report``, tell it each action."""
    for x in actions:
        tally(result.counts, x.op)
    if report is not None:
        for letter in dead:
            report.action("dead-letter", None, key=letter.src_key, source=letter.src, reason=letter.reason)
        for x in actions:
            await _report(report, x, a, b, read.a_changed, read.b_changed)


async def _commit_run(
    engine: Engine,
    name: str,
    a: _Side,
    b: _Side,
    read: _Read,
    links: dict[str, Link],
    actions: list[PairAction],
    dead: list[NewDeadLetter],
    result: RunResult,
    journal: _History,
) -> None:
    """The run's last commit, once every chunk is written: the cursors that moved, the
    dead letters left, the echo events, and the checkpoints of transactional sides."""
    cursors: dict[str, Cursor] = {}
    if read.best_a is not None and (read.cursor_a is None or read.best_a > read.cursor_a):
        cursors["a"] = read.best_a
    if read.best_b is not None and (read.cursor_b is None or read.best_b > read.cursor_b):
        cursors["b"] = read.best_b
    commit = PageCommit(
        name,
        cursors=cursors,
        run_id=result.run_id,
        dead_letters=dead,
        counts={"read": len(read.a_changed) + len(read.b_changed), "dead_lettered": len(dead)},
    )
    journal.letters(commit)
    _echoes(journal, commit, actions, links, read.a_changed, read.b_changed)
    sinks = Sinks(engine, name, (a, b))
    await sinks.checkpoint(commit)
    await engine._state(engine.store.commit_page, commit)
    await sinks.publish()
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
    for link, sides in echoed(actions, links.values(), a_changed, b_changed):
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


@dataclass
class _Chunk:
    """What writing one chunk of the plan gathers for its commit."""

    commit: PageCommit
    new_links: list[Link] = field(default_factory=list)
    unlinks: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def bump(self, key: str, by: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + by


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
    for start in range(0, len(actions), CHUNK):
        if stop is not None and stop.is_set():
            return False
        await asyncio.sleep(0)  # let the daemon's loop breathe (watchdog, control API, signals)
        batch = actions[start : start + CHUNK]
        chunk = _Chunk(PageCommit(name, run_id=result.run_id))
        intent_ids = await _record_intents(engine, name, a, b, batch)
        try:
            for x in batch:
                # no write once this run may have lost its lease (see StateStore.self_fence)
                await engine._fence(name)
                try:
                    await _apply(x, a, b, forward, chunk, dead, journal)
                except RecordRejected as exc:
                    dead.append(_rejected(x, a, b, exc))
                    chunk.bump("dead_lettered")
                if id(x) in intent_ids:
                    chunk.commit.resolved_intents.append(intent_ids.pop(id(x)))
        finally:
            await _commit_chunk(engine, a, b, chunk, dead, result, journal)
    return True


async def _record_intents(engine: Engine, name: str, a: _Side, b: _Side, batch: list[PairAction]) -> dict[int, int]:
    """An intent for each create in ``batch``, recorded before it is written (a crash between
    the create and its link is reconciled on the next run, not repeated): ``id(action) ->
    intent id``."""
    creates = [x for x in batch if x.op in ("create_a", "create_b")]
    if not creates:
        return {}
    items = []
    for x in creates:
        # labelled by the side the record came FROM ("a:KEY" is created on B), which
        # is how _reconcile reads it back
        origin = "a" if x.op == "create_b" else "b"
        src_key = x.a_key if x.op == "create_b" else x.b_key
        assert x.write is not None and src_key is not None
        items.append((f"{origin}:{src_key}", x.a_fp or x.b_fp or "", x.write.model_dump_json()))
    ids = await engine._state(engine.store.record_intents, name, f"{a.ref}<->{b.ref}", items)
    return {id(x): i for x, i in zip(creates, ids, strict=True)}


def _rejected(x: PairAction, a: _Side, b: _Side, exc: RecordRejected) -> NewDeadLetter:
    """The dead letter of a write the side refused."""
    target = b.ref if x.op.endswith("_b") else a.ref
    return NewDeadLetter(
        a.ref,
        target,
        x.a_key or x.b_key or "?",
        redact(str(exc)),
        src_key=x.a_key,
        kind="rejected",
        payload=x.write.model_dump(mode="json") if x.write else None,
    )


async def _commit_chunk(
    engine: Engine,
    a: _Side,
    b: _Side,
    chunk: _Chunk,
    dead: list[NewDeadLetter],
    result: RunResult,
    journal: _History,
) -> None:
    """Commit what a chunk did (links, unlinks, dead letters, history, counts), also when a
    write in it failed: what was written before the failure stays linked."""
    commit, counts = chunk.commit, chunk.counts
    pair = (a.ref, b.ref)
    commit.links[pair] = chunk.new_links
    if chunk.unlinks:
        commit.unlinks[pair] = chunk.unlinks
    commit.dead_letters = list(dead)
    dead.clear()
    journal.letters(commit)
    commit.counts = {
        k: v for k, v in counts.items() if k in ("created", "updated", "deleted", "skipped", "dead_lettered")
    }
    await engine._state(engine.store.commit_page, commit)
    for key, value in commit.counts.items():
        result.counts[key] = result.counts.get(key, 0) + value
    for op in ("created", "updated", "deleted"):
        if counts.get(op):
            metrics.inc("ferryman_records_written_total", counts[op], pipeline=commit.pipeline, op=op)


async def _apply(
    x: PairAction,
    a: _Side,
    b: _Side,
    forward: FieldMapping,
    chunk: _Chunk,
    dead: list[NewDeadLetter],
    journal: _History,
) -> None:
    """Carry out one action of the plan: a write to one side (or both), or a decision that
    writes neither."""
    if x.decision:
        journal.pair(chunk.commit, "conflict", x.a_key, x.b_key, fp=x.a_fp or x.b_fp, detail=x.decision)
    if x.op in ("skip", "link", "unlink", "conflict", "loop"):
        _keep(x, a, b, chunk, dead, journal)
    else:
        await _write(x, a, b, forward, chunk, journal)


def _keep(x: PairAction, a: _Side, b: _Side, chunk: _Chunk, dead: list[NewDeadLetter], journal: _History) -> None:
    """An action that writes neither side: a skip (or a withheld delete), a link of two
    records that agree, an unlink, or a pair dead-lettered for a human (conflict, loop)."""
    commit, link = chunk.commit, x.link
    if x.op == "skip":
        chunk.bump("skipped")
        held = x.reason == "deletes are not enabled"
        journal.pair(commit, "withhold" if held else "skip", x.a_key, x.b_key, detail=x.reason)
    elif x.op == "link":
        assert x.a_key and x.b_key
        chunk.new_links.append(
            Link(x.a_key, x.b_key, x.a_fp, x.b_fp, link.write_count if link else 0, link.window_start if link else None)
        )
        chunk.bump("skipped")
        journal.pair(commit, "link", x.a_key, x.b_key, fp=x.a_fp, detail=x.reason)
    elif x.op == "unlink":
        assert x.a_key
        chunk.unlinks.append(x.a_key)
        journal.pair(commit, "unlink", x.a_key, x.b_key, detail=x.reason)
    elif x.op in ("conflict", "loop"):
        journal.pair(
            commit,
            "manual" if x.op == "conflict" else "loop",
            x.a_key,
            x.b_key,
            detail=f"{x.reason}; dead-lettered for `ferryman dlq resolve`",
        )
        dead.append(_for_a_human(x, a, b))
        chunk.bump("dead_lettered")


def _for_a_human(x: PairAction, a: _Side, b: _Side) -> NewDeadLetter:
    """The dead letter of a conflict or a loop: both sides' records, for ``ferryman dlq resolve``."""
    link = x.link
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
    return NewDeadLetter(a.ref, b.ref, x.a_key or "?", x.reason, src_key=x.a_key, kind=x.op, payload=payload)


async def _write(x: PairAction, a: _Side, b: _Side, forward: FieldMapping, chunk: _Chunk, journal: _History) -> None:
    """An action that writes: create, update or delete on one side (``update_both``: the
    merge on both), then the link it leaves (or the unlink) and its history."""
    link, commit = x.link, chunk.commit
    count = link.write_count if link else 1
    window = link.window_start if link else utcnow()
    if x.op == "create_b":
        assert x.write is not None and x.a_key
        stored = await b.connector.create(b.stream, x.write)
        chunk.new_links.append(Link(x.a_key, stored.key, x.a_fp, fingerprint(stored), 1, utcnow()))
        chunk.bump("created")
        _wrote(journal, commit, x, b, stored.key, created=True)
    elif x.op == "create_a":
        assert x.write is not None and x.b_key
        stored = await a.connector.create(a.stream, x.write)
        if x.replaces_a:
            chunk.unlinks.append(x.replaces_a)
        chunk.new_links.append(Link(stored.key, x.b_key, fingerprint(forward.apply(stored)), x.b_fp, 1, utcnow()))
        chunk.bump("created")
        _wrote(journal, commit, x, a, stored.key, created=True)
    elif x.op == "update_b":
        assert x.write is not None and x.a_key and x.b_key
        stored = await b.connector.update(b.stream, x.b_key, x.write)
        chunk.new_links.append(Link(x.a_key, x.b_key, x.a_fp, fingerprint(stored), count, window))
        chunk.bump("updated")
        _wrote(journal, commit, x, b)
    elif x.op == "update_a":
        assert x.write is not None and x.a_key and x.b_key
        stored = await a.connector.update(a.stream, x.a_key, x.write)
        chunk.new_links.append(Link(x.a_key, x.b_key, fingerprint(forward.apply(stored)), x.b_fp, count, window))
        chunk.bump("updated")
        _wrote(journal, commit, x, a)
    elif x.op == "update_both":
        assert x.write is not None and x.write_a is not None and x.a_key and x.b_key
        stored_b = await b.connector.update(b.stream, x.b_key, x.write)
        stored_a = await a.connector.update(a.stream, x.a_key, x.write_a)
        chunk.new_links.append(
            Link(x.a_key, x.b_key, fingerprint(forward.apply(stored_a)), fingerprint(stored_b), count, window)
        )
        chunk.bump("updated", 2)
        _wrote(journal, commit, x, b)
        _wrote(journal, commit, x, a)
    elif x.op in ("delete_b", "delete_a"):
        assert x.a_key and x.b_key
        side, key = (b, x.b_key) if x.op == "delete_b" else (a, x.a_key)
        await side.connector.delete(side.stream, key)
        chunk.unlinks.append(x.a_key)
        chunk.bump("deleted")
        _wrote(journal, commit, x, side)


def _wrote(
    journal: _History,
    commit: PageCommit,
    x: PairAction,
    side: _Side,
    stored_key: str | None = None,
    *,
    created: bool = False,
) -> None:
    """The history of a write to ``side`` that succeeded: the decision (a conflict a policy
    resolved, with the journal of what it overwrote), then the write itself."""
    on_a = side.label == "a"
    a_key = stored_key if (created and on_a) else x.a_key
    b_key = stored_key if (created and not on_a) else x.b_key
    if x.decision and side.label in x.lost:
        lost, won = x.lost[side.label]
        journal.run.conflict(
            commit.conflicts,
            system=side.ref,
            side="from" if on_a else "to",
            record_key=(x.a_key if on_a else x.b_key) or "?",
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
