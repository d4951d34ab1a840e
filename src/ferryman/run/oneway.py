"""One one-way run of a pipeline: the page loop, and the delivery of a page to one target.

:class:`OneWayRun` reads the source a page at a time (the next page fetched while this one
is written: :func:`~ferryman.run.pages.read_ahead`), verifies what the source claims (its
order, its paging), dead-letters what it could not read, plans and writes the page to each
target (:func:`deliver_page`, then :class:`~ferryman.run.delivery.Delivery`), and commits
cursor, links, sink checkpoints, dead letters and history in one state transaction per
page. The engine (:meth:`ferryman.engine.Engine.run`) takes the lease and the run row
around it; :class:`~ferryman.run.sinks.Sinks` restores and publishes file targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import orjson
import structlog

from ferryman import metrics
from ferryman.connector import Capability, Page
from ferryman.cursor import Cursor, OrderGuard, newest, read_from
from ferryman.errors import LeaseLost, NotSupportedError, OrderViolation, PagingError, ValidationFailed
from ferryman.journal import RunJournal
from ferryman.planning import Action, plan_one_way
from ferryman.records import Record, fingerprint
from ferryman.redact import redact
from ferryman.run.delivery import Delivery
from ferryman.run.observer import Observer
from ferryman.run.pages import read_ahead
from ferryman.run.sinks import Sinks
from ferryman.sdk.readloop import MAX_PAGES, PageGuard
from ferryman.state import Link, NewDeadLetter, PageCommit
from ferryman.timeutil import utcnow

if TYPE_CHECKING:
    from ferryman.config import PipelineConfig
    from ferryman.connector import Connector, StreamInfo
    from ferryman.engine import Engine, RunResult, _Target

__all__ = ["PROBE_CHECKPOINT", "OneWayRun", "commit_page", "counted", "deliver_page", "new_counts", "reconcile_intents"]

log = structlog.get_logger("ferryman.engine")

PROBE_CHECKPOINT = "~probe"  # where a pipeline's delete probe left off (the checkpoints table)
COUNTED = {
    "create": "created",
    "update": "updated",
    "delete": "deleted",
    "unlink": "deleted",
    "skip": "skipped",
    "withhold": "withheld",
}


def new_counts() -> dict[str, int]:
    return dict.fromkeys(("read", "created", "updated", "deleted", "skipped", "withheld", "dead_lettered"), 0)


def counted(op: str) -> str:
    """The count an action's op adds to (``create`` -> ``created``)."""
    return COUNTED[op]


class OneWayRun:
    """One run of a one-way pipeline, from the first page read to the last committed."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        pipeline: PipelineConfig,
        built: tuple[Connector, StreamInfo, list[_Target]],
        result: RunResult,
        *,
        full: bool,
        observer: Observer,
    ) -> None:
        self.engine, self.name, self.pipeline, self.result = engine, name, pipeline, result
        self.source, self.src_info, self.targets = built
        self.src_ref = pipeline.source
        self.full, self.observer = full, observer
        self.journal = RunJournal(engine.config.history, pipeline.journal)
        self.sinks = Sinks(engine, name, self.targets)
        self.best: Cursor | None = None  # the newest (updated_at, key) committed so far
        self.began: Cursor | None = None  # where the run began: held there if the source lies
        # keys a full pass saw: a linked key it did not see is probed for a hidden delete
        self.seen: set[str] | None = None
        # The source's claims are verified, not believed: an ordered stream whose records go
        # back in time stops the run (a keyset read over it would have skipped records).
        self.order = OrderGuard(system=self.source.name, stream=self.src_info.name) if self.src_info.ordered else None
        self.guard = PageGuard(system=self.source.name, stream=self.src_info.name, cap=pipeline.max_pages)
        self.last_lease = time.monotonic()
        # Pipelined commits: a page's commit runs while the next page is delivered. Only
        # for targets that keep rows under the source key and publish nothing before the
        # run ends (CSV files): what the next page writes stays in the file past the
        # committed checkpoint until its own commit, so a commit that fails loses nothing
        # (restore cuts the rest back). The next page reads its links beside the commit in
        # flight (StateStore.read) and sees that commit's links through an overlay.
        self.pipelined = observer.writes and all(
            getattr(t.connector, "keyed_by_source", False) and t.transactional and not t.references
            for t in self.targets
        )
        self.in_flight: asyncio.Task[None] | None = None
        self.overlay: dict[str, dict[str, Link | None]] = {}  # target ref -> src key -> link

    async def run(self) -> None:
        """Read, deliver and commit every page; raises what stopped the run (after keeping
        what was committed: file targets publish exactly that)."""
        since = await self._prepare()
        cap = MAX_PAGES.set(self.pipeline.max_pages)
        failure: BaseException | None = None
        try:
            await self._read(since)
            await self._drain()
        except (OrderViolation, PagingError) as exc:
            failure = exc
            await self._drain(quiet=True)  # the page before is whole: it commits, then the cursor is held
            if self.observer.writes:
                # Records before the pages this run committed may be unread: the cursor goes
                # back to where the run began (re-reading what arrived is skipped by fingerprint).
                await self.engine._state(self.engine.store.hold_cursor, self.name, self.began)
            raise
        except BaseException as exc:
            failure = exc
            raise
        finally:
            MAX_PAGES.reset(cap)
            if failure is not None:
                await self._drain(quiet=True)
            if self.observer.writes:
                await self.sinks.end(failure)

    async def _prepare(self) -> Cursor | None:
        """Before the first page: settle what a crash left in doubt, restore file targets,
        and decide where to read from and whether creates are looked up first."""
        engine, name, state = self.engine, self.name, self.engine.store
        writes = self.observer.writes
        if writes:
            await engine._keyed(self.src_ref, self.targets)
            for target in self.targets:
                await reconcile_intents(engine, name, self.src_ref, target)
            await self.sinks.restore()
        if writes and any(t.references for t in self.targets):
            letters = await engine._state(state.dead_letters, pipeline=name, kind="reference")
            for target in self.targets:
                target.waiting = {x.src_key for x in letters if x.dst == target.ref and x.src_key}
        cursor = None if self.full else await engine._state(state.get_cursor, name)
        self.began = await engine._state(state.get_cursor, name) if writes else None
        if writes:
            for target in self.targets:
                target.lookup = await engine._should_look_up(name, self.pipeline, self.src_ref, target, cursor)
        self.best = cursor
        since = read_from(cursor, self.pipeline.overlap, self.src_info.precision)
        self.seen = set() if since is None and self.pipeline.deletes.probe else None
        return since

    async def _read(self, since: Cursor | None) -> None:
        reading = read_ahead(self.source.read(self.src_info.name, since, self.pipeline.page_size))
        async with contextlib.aclosing(reading):
            async for page in reading:
                if not await self._page(page):
                    return  # halted, or stopped after the page
        await self._after_pass()

    async def _page(self, page: Page) -> bool:
        """One page read, delivered to every target and committed; False: the run ends here."""
        self.guard.fetched(None)
        if self.seen is not None:
            self.seen.update(r.key for r in page.records)
        if self.order is not None:
            self.order.check(page.records, f"page {self.guard.pages} of {self.pipeline.source}")
        commit = PageCommit(self.name, run_id=self.result.run_id)
        counts = new_counts()
        counts["read"] = len(page.records)
        self._rejects(page, commit, counts)
        if not await self._deliver(page.records, commit, counts):
            return False
        if page.records:
            page_max = newest(page.records)
            if self.best is None or page_max > self.best:
                self.best = page_max
        if self.src_info.ordered and self.best is not None:
            commit.cursor = self.best
        commit.resolved_refs = [r.key for r in page.records]
        if self.observer.writes:
            # a sink is asked for a checkpoint only once the one before is committed (the CSV
            # sink then lets go of what a crashed process left): the commit in flight has had
            # the delivery of this page to run beside
            await self._drain()
            await self.sinks.checkpoint(commit)
        if self.pipelined:
            await self._hand_off(commit, counts, len(page.records), page.total)
        else:
            await commit_page(self.engine, commit, counts, self.result, self.observer.dry_run)
            self.observer.page_committed(len(page.records), self.result.counts, page.total)
        await self._renew_lease()
        # Give the event loop a turn between pages: in the daemon, signals, the watchdog and
        # the control API wait on it, and a run whose connectors do no network I/O (CSV to
        # CSV) would otherwise hold it for the whole run.
        await asyncio.sleep(0)
        if self.observer.stopping():
            self.result.outcome = "stopped"
            self.result.message = "stopped after committing the page in hand"
            return False
        return True

    async def _deliver(self, records: list[Record], commit: PageCommit, counts: dict[str, int]) -> bool:
        """The page to every target; False (after committing what was done) when the run
        must halt (a share of deletes over ``deletes.max_share``)."""
        if self.pipelined and any(r.deleted for r in records):
            await self._drain()  # a delete's share is judged against every committed link
        for target in self.targets:
            halted = await deliver_page(
                self.engine,
                self.name,
                self.pipeline,
                target,
                records,
                commit,
                counts,
                self.observer,
                overlay=self.overlay.get(target.ref),
            )
            if halted:
                self.result.outcome, self.result.message = "halted", halted
                log.error("run.halted", pipeline=self.name, reason=halted)
                await self._drain()
                await commit_page(self.engine, commit, counts, self.result, self.observer.dry_run)
                return False
        return True

    async def _hand_off(self, commit: PageCommit, counts: dict[str, int], read: int, total: int | None) -> None:
        """Start the page's commit once the one before has ended, and go on to the next
        page meanwhile; the commit's links stand over the stored ones until it is done."""
        await self._drain()
        overlay: dict[str, dict[str, Link | None]] = {}
        for (_, dst), links in commit.links.items():
            overlay.setdefault(dst, {}).update((x.src_key, x) for x in links)
        for (_, dst), keys in commit.unlinks.items():
            overlay.setdefault(dst, {}).update(dict.fromkeys(keys))
        self.overlay = overlay

        async def commit_it() -> None:
            await commit_page(self.engine, commit, counts, self.result, False)
            self.observer.page_committed(read, self.result.counts, total)

        self.in_flight = asyncio.ensure_future(commit_it())

    async def _drain(self, *, quiet: bool = False) -> None:
        """Wait for the commit in flight, if any (a cancellation waits for it too: it is
        the state thread's, and ends either way); its failure is raised unless ``quiet``
        (another failure is already on its way)."""
        task, self.in_flight = self.in_flight, None
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                with contextlib.suppress(BaseException):
                    await task
            raise
        except BaseException:
            if not quiet:
                raise
        finally:
            self.overlay = {}

    def _rejects(self, page: Page, commit: PageCommit, counts: dict[str, int]) -> None:
        """What the source could not read: a dead letter each, named by the source's ref."""
        report = self.observer.report if self.observer.dry_run else None
        for reject in page.rejects:
            commit.dead_letters.append(
                NewDeadLetter(
                    self.src_ref,
                    None,
                    reject.ref,
                    reject.reason,
                    src_key=reject.key,
                    kind="invalid",
                    payload=reject.raw,
                )
            )
            counts["dead_lettered"] += 1
            detail = f"invalid in {self.src_ref}: {reject.reason}"
            self.journal.event(commit.events, self.src_ref, reject.key or reject.ref, "dead-letter", detail=detail)
            log.warning("record.dead_lettered", pipeline=self.name, ref=reject.ref, reason=redact(reject.reason))
            if report is not None:
                report.action(
                    "dead-letter", None, key=reject.key, source=self.src_ref, reason=f"{reject.ref}: {reject.reason}"
                )

    async def _renew_lease(self) -> None:
        """Renew the lease every third of its TTL; a lease that moved while this run stalled
        stays with its new holder (renewed, never taken again), and the run stops."""
        ttl = self.engine.config.state.lease_ttl
        if not self.observer.writes or time.monotonic() - self.last_lease <= ttl.total_seconds() / 3:
            return
        state = self.engine.store
        if not await self.engine._state(state.renew_lease, self.name, ttl):
            holder = await self.engine._state(state.lease_holder, self.name)
            raise LeaseLost(
                f"pipeline {self.name}: its lease passed to {holder[0] if holder else 'another instance'} "
                "during the run (it stalled past state.lease_ttl); stopping after the last commit"
            )
        self.last_lease = time.monotonic()

    async def _after_pass(self) -> None:
        """After the last page: an unordered source's cursor (only now, after a complete
        pass), then the deletes the source hides from its lists (``deletes.probe``)."""
        dry_run = self.observer.dry_run
        await self._drain()
        if not self.src_info.ordered and self.best is not None and not dry_run:
            await commit_page(self.engine, PageCommit(self.name, cursor=self.best), new_counts(), self.result, dry_run)
        if not (self.pipeline.deletes.probe and not dry_run and self.src_info.can(Capability.READ)):
            return
        gone = await self._probe_deletes()
        if not gone:
            return
        commit = PageCommit(self.name, run_id=self.result.run_id)
        counts = new_counts()
        for target in self.targets:
            halted = await deliver_page(
                self.engine, self.name, self.pipeline, target, gone, commit, counts, self.observer
            )
            if halted:
                self.result.outcome, self.result.message = "halted", halted
                log.error("run.halted", pipeline=self.name, reason=halted)
                break
        await commit_page(self.engine, commit, counts, self.result, dry_run)

    async def _probe_deletes(self) -> list[Record]:
        """Linked records the source may have deleted without a trace in its lists.

        After a full pass (``seen``), the linked keys it did not see; otherwise the next
        ``deletes.probe_max`` linked keys in key order, round the links run by run. Each is
        fetched by key: gone (``None``) or marked deleted is a delete, planned like any other
        (withheld unless ``deletes.enabled``)."""
        name = self.name
        candidates = await self._probe_candidates()
        gone: list[Record] = []
        for key in candidates:
            try:
                record = await self.source.get(self.src_info.name, key)
            except (NotSupportedError, NotImplementedError):
                log.warning("deletes.probe_unsupported", pipeline=name, source=self.src_ref, reason="cannot get by key")
                return gone
            if record is None:
                record = self.src_info.record_type.model_validate({"key": key, "updated_at": utcnow(), "deleted": True})
            elif not record.deleted:
                continue
            gone.append(record)
        log.info("deletes.probed", pipeline=name, probed=len(candidates), deleted=len(gone))
        return gone

    async def _probe_candidates(self) -> list[str]:
        engine, state, name, src_ref = self.engine, self.engine.store, self.name, self.src_ref
        budget = self.pipeline.deletes.probe_max
        if self.seen is not None:
            linked = {k for t in self.targets for k in await engine._state(state.linked_keys, src_ref, t.ref)}
            return sorted(linked - self.seen)[:budget]
        place = (await engine._state(state.get_checkpoint, name, PROBE_CHECKPOINT) or {}).get("after")
        found: set[str] = set()
        for target in self.targets:
            found.update(await engine._state(state.linked_keys, src_ref, target.ref, after=place, limit=budget))
            if len(found) < budget and place is not None:  # wrap around
                found.update(await engine._state(state.linked_keys, src_ref, target.ref, limit=budget - len(found)))
        candidates = sorted(found)[:budget]
        last = candidates[-1] if candidates else None
        await engine._state(state.set_checkpoint, name, PROBE_CHECKPOINT, {"after": last} if last else None)
        return candidates


async def commit_page(
    engine: Engine, commit: PageCommit, page_counts: dict[str, int], result: RunResult, dry_run: bool
) -> None:
    """Commit one page (not in a dry run) and add its counts to the run's and the metrics."""
    if not dry_run:
        commit.counts = {k: v for k, v in page_counts.items() if not k.startswith("_")}
        # a refused commit counts nothing: its page was not delivered
        await engine._state(engine.store.commit_page, commit)
    for key, value in page_counts.items():
        result.counts[key] = result.counts.get(key, 0) + value
    pipeline = commit.pipeline
    metrics.inc("ferryman_records_read_total", page_counts["read"], pipeline=pipeline)
    metrics.inc("ferryman_records_skipped_total", page_counts["skipped"], pipeline=pipeline)
    metrics.inc("ferryman_records_dead_lettered_total", page_counts["dead_lettered"], pipeline=pipeline)
    for op in ("created", "updated", "deleted"):
        if page_counts[op]:
            metrics.inc("ferryman_records_written_total", page_counts[op], pipeline=pipeline, op=op)


async def deliver_page(
    engine: Engine,
    name: str,
    pipeline: PipelineConfig,
    target: _Target,
    records: list[Record],
    commit: PageCommit,
    counts: dict[str, int],
    observer: Observer,
    *,
    force: bool = False,
    overlay: Mapping[str, Link | None] | None = None,
) -> str | None:
    """Plan and write one page to one target; returns why the run must halt, if it must.
    ``force``: plan as if the target held nothing of these records' content (a replay).
    ``overlay``: links not committed yet (None: unlinked) that stand over the stored ones."""
    src_ref = pipeline.source
    letters_before = len(commit.dead_letters)
    items = await _mapped(engine, src_ref, target, records, commit, counts)
    keys = [r.key for r, _ in items]
    links = await engine.store.read(engine.store.links_for, src_ref, target.ref, keys)
    if overlay:  # the links of the page whose commit is in flight (see OneWayRun._hand_off)
        for key in keys:
            if key in overlay:
                link = overlay[key]
                if link is None:
                    links.pop(key, None)
                else:
                    links[key] = link
    if force:
        links = {k: Link(v.src_key, v.dst_key, None, v.dst_fp, v.write_count, v.window_start) for k, v in links.items()}
    actions = plan_one_way(
        items,
        links,
        deletes_enabled=pipeline.deletes.enabled,
        delete_action=pipeline.deletes.action,
        blocked=target.blocked,
    )
    halt = await _over_delete_share(engine, pipeline, src_ref, target, actions, counts)
    if halt:
        return halt
    if observer.dry_run:
        for action in actions:
            counts[counted(action.op)] += 1
        if observer.report is not None:
            await engine._report(observer.report, src_ref, target, actions, commit.dead_letters[letters_before:])
        return None
    journal = RunJournal(engine.config.history, pipeline.journal)
    delivery = Delivery(
        engine,
        name,
        src_ref,
        target,
        commit,
        counts,
        journal,
        links,
        concurrency=pipeline.concurrency,
        letters_before=letters_before,
    )
    await delivery.deliver(actions)
    return None


async def _mapped(
    engine: Engine, src_ref: str, target: _Target, records: list[Record], commit: PageCommit, counts: dict[str, int]
) -> list[tuple[Record, str]]:
    """The page in the target's shape, with fingerprints; a record the mapping refuses is a
    dead letter, one whose reference has no link yet waits (see Engine._translate)."""
    items: list[tuple[Record, str]] = []
    pairs: list[tuple[Record, Record]] = []  # (source, mapped) where references wait to be translated
    apply = target.mapping.apply
    for record in records:
        try:
            mapped = apply(record)
        except ValidationFailed as exc:
            commit.dead_letters.append(
                NewDeadLetter(
                    src_ref,
                    target.ref,
                    record.key,
                    f"mapping: {exc}",
                    src_key=record.key,
                    kind="invalid",
                    payload=record.model_dump(mode="json"),
                )
            )
            counts["dead_lettered"] += 1
            continue
        if target.references:
            pairs.append((record, mapped))
        else:
            items.append((mapped, fingerprint(mapped)))
    if pairs:
        translated = await engine._translate(target, src_ref, pairs, commit, counts)
        items = [(m, fingerprint(m)) for m in translated]
    return items


async def _over_delete_share(
    engine: Engine,
    pipeline: PipelineConfig,
    src_ref: str,
    target: _Target,
    actions: list[Action],
    counts: dict[str, int],
) -> str | None:
    """Why the run halts before deleting (over ``deletes.max_share`` of the linked records), or None."""
    deletes = sum(1 for a in actions if a.op in ("delete", "unlink"))
    if not deletes:
        return None
    total = max(await engine._state(engine.store.count_links, src_ref, target.ref), 1)
    already = counts.get("_deletes_in_run", 0)
    share = (already + deletes) / total
    if share <= pipeline.deletes.max_share:
        return None
    return (
        f"halted before deleting: {already + deletes} of {total} linked records in {target.ref} "
        f"({share:.0%}) would be deleted, over deletes.max_share {pipeline.deletes.max_share:.0%}"
    )


async def reconcile_intents(engine: Engine, name: str, src_ref: str, target: _Target) -> None:
    """Creates that were started but never confirmed: look them up before creating again."""
    state = engine.store
    blocked: set[str] = set()
    for intent in await engine._state(state.intents, name, target.ref):
        if intent["state"] == "unresolved":
            blocked.add(intent["src_key"])
            continue
        record = target.info.record_type.model_validate_json(intent["payload"])
        try:
            found = await target.connector.reconcile(target.stream, record, intent["created_at"])
        except NotSupportedError:
            await engine._state(state.mark_intent_unresolved, intent["id"])
            letter = NewDeadLetter(
                src_ref,
                target.ref,
                intent["src_key"],
                f"a create in {target.ref} was interrupted and {target.ref} cannot look records up: "
                "check the target, then `ferryman dlq replay` to create it or `ferryman dlq drop`",
                src_key=intent["src_key"],
                kind="unresolved",
                payload=orjson.loads(intent["payload"]),
            )
            await engine._state(state.add_dead_letters, name, [letter])
            blocked.add(intent["src_key"])
            continue
        link = Link(intent["src_key"], found.key, intent["fingerprint"], fingerprint(found)) if found else None
        await engine._state(state.resolve_intent, intent["id"], src=src_ref, dst=target.ref, link=link)
        log.info("intent.reconciled", pipeline=name, target=target.ref, key=intent["src_key"], found=found is not None)
    target.blocked = frozenset(blocked)
