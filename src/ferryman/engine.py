"""The engine: one run of a pipeline, under the delivery contract of DESIGN.md.

Per page: read from the source in cursor order, map, plan each target (skip, create,
update, delete), write (creates behind intents), then commit cursor + links + sink
checkpoints + dead letters in one state transaction. A crash anywhere leaves either
the previous commit (the page is re-read and fingerprints skip what already arrived)
or pending intents that are reconciled against the target before anything is created
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

import orjson
import structlog

from ferryman import metrics
from ferryman.config import DEFAULT_LEASE_TTL, FerrymanConfig, PipelineConfig
from ferryman.connector import Capability, Connector, StreamInfo, SystemContext
from ferryman.cursor import Cursor, OrderGuard, newest, read_from
from ferryman.errors import (
    ConfigError,
    DeferredError,
    FerrymanError,
    LeaseLost,
    NotSupportedError,
    OrderViolation,
    PagingError,
    RecordRejected,
    StateError,
    StateUnavailable,
    ValidationFailed,
)
from ferryman.journal import RunJournal
from ferryman.mapping import FieldMapping
from ferryman.planning import Action, plan_one_way
from ferryman.records import Record, fingerprint, overwritten, same_content
from ferryman.redact import redact
from ferryman.run.delivery import Delivery
from ferryman.run.delivery import natural_value as _natural
from ferryman.run.pages import read_ahead
from ferryman.sdk.readloop import MAX_PAGES, PageGuard
from ferryman.state import Link, NewDeadLetter, PageCommit, StateStore
from ferryman.timeutil import format_utc, utcnow

if TYPE_CHECKING:
    from ferryman.plan_report import DryRunReport

log = structlog.get_logger("ferryman.engine")

P = ParamSpec("P")
T = TypeVar("T")
LEASE_TTL = DEFAULT_LEASE_TTL  # the default; a run uses the config's state.lease_ttl
REFERENCE_RETRIES = 200  # records waiting for a reference, delivered again at the start of a run
PROBE_CHECKPOINT = "~probe"  # where a pipeline's delete probe left off (the checkpoints table)
LOOKUP_INDEX_PAGES = 200  # a target this small (in pages) is read once for lookups, not searched per record
LOOKUP_PAGE = 1000  # the page size of such a read of a file target in a dry run
PRUNE_EVERY = 600.0  # seconds between two prunings of the record history by one process

__all__ = ["Engine", "RunResult"]


@dataclass(slots=True)
class RunResult:
    pipeline: str
    outcome: str  # ok | failed | deferred | halted | busy | stopped | dry-run
    run_id: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    message: str | None = None
    not_before: datetime | None = None
    plan: list[str] = field(default_factory=list)
    cursor: Cursor | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome in ("ok", "dry-run")

    def summary(self) -> str:
        c = self.counts
        shown = [k for k in COUNTS if k != "withheld" or c.get(k)]
        parts = [f"{k} {c.get(k, 0)}" for k in shown]
        text = f"{self.pipeline}: {self.outcome} ({', '.join(parts)}) in {self.seconds:.1f}s"
        if self.message:
            text += f": {self.message}"
        return text


COUNTS = ("read", "created", "updated", "deleted", "skipped", "withheld", "dead_lettered")


def _counts() -> dict[str, int]:
    return dict.fromkeys(COUNTS, 0)


class Progress(Protocol):
    """Told after every committed page of a one-way run: ``records`` read in that page,
    the run's ``counts`` so far, and ``total``, how many records the whole read brings when
    the source says or estimates it (:attr:`ferryman.connector.Page.total`), else ``None``."""

    def __call__(self, records: int, counts: dict[str, int], total: int | None, /) -> None: ...


class Sink(Protocol):
    """What publishing needs of a target (one-way) or a side (two-way)."""

    @property
    def ref(self) -> str: ...
    @property
    def connector(self) -> Connector: ...
    @property
    def stream(self) -> str: ...
    @property
    def transactional(self) -> bool: ...


class _Target:
    """One target of a run: its connector, stream, mapping and link pair."""

    def __init__(self, ref: str, connector: Connector, stream: str, info: StreamInfo, mapping: FieldMapping) -> None:
        self.ref = ref
        self.connector = connector
        self.stream = stream
        self.info = info
        self.mapping = mapping
        self.transactional = bool(getattr(connector, "transactional_writes", False))
        self.blocked: frozenset[str] = frozenset()
        self.references: list[_Reference] = []
        #: look each create up by natural key first (links may have been lost: see _should_look_up)
        self.lookup = False
        #: the target's records by natural key, as (key, fingerprint), read once when it is
        #: small enough (see _lookup)
        self.index: dict[str, list[tuple[str, str]]] | None = None
        #: source keys with an open ``reference`` dead letter for this target: delivering
        #: one of them settles its letter in the same commit
        self.waiting: set[str] = set()
        #: a dry run's copy of a file target, by key (see Engine._current); False: the
        #: target could not be read, so updates are reported with "not read"
        self.current: dict[str, Record] | bool | None = None


_Built = tuple[Connector, StreamInfo, list[_Target]]  # what a run delivers with: source, its stream, targets


@dataclass(frozen=True, slots=True)
class _Reference:
    """A target field holding another record's id, translated through the links of ``src`` <-> ``dst``."""

    field: str
    src: str  # the referenced stream in the source system ("crm.organisations")
    dst: str  # and in the target system ("helpdesk.organisations")
    missing: str  # "dead_letter" or "drop"


class Engine:
    """Runs pipelines. One per process; connectors are opened once and shared by runs."""

    def __init__(self, config: FerrymanConfig, store: StateStore, *, services: dict[str, Any] | None = None) -> None:
        self.config = config
        self.store = store
        self.services = services if services is not None else {}
        self.services.setdefault("state", store)
        self._systems: dict[str, Connector] = {}
        self._open_lock = asyncio.Lock()
        self._pruned_at: float | None = None

    # -- state ------------------------------------------------------------------------
    async def _state(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Every state call of a run goes through here: off the event loop (see
        :meth:`StateStore.call`), so a hung database holds up the run, not the daemon."""
        return await self.store.call(fn, *args, **kwargs)

    async def _fence(self, name: str, *, now: bool = False) -> None:
        """Before a write: go on only while the lease is surely ours (see
        :meth:`StateStore.self_fence`); asks the database only when the last renewal is old."""
        if now or self.store.fence_due(name):
            await self._state(self.store.self_fence, name, now=True)

    # -- systems ----------------------------------------------------------------------
    async def system(self, name: str) -> Connector:
        async with self._open_lock:
            connector = self._systems.get(name)
            if connector is None:
                from ferryman import plugins

                system = self.config.systems[name]
                cls = plugins.connector_class(system.connector)
                connector = cls(SystemContext(name, self.config.system_options(name), self.config.file, self.services))
                await connector.open()
                self._systems[name] = connector
            return connector

    async def aclose(self) -> None:
        systems, self._systems = self._systems, {}
        for connector in systems.values():
            try:
                await connector.close()
            except Exception as exc:  # closing must not mask the run's own outcome
                log.warning("system.close_failed", system=connector.name, error=redact(str(exc)))

    async def check_pipeline(self, name: str) -> list[str]:
        """Build what a run of ``name`` would (streams, mapping, references) without reading
        or writing anything; raises the :class:`ConfigError` a run would meet. Returns notes
        on what the pipeline cannot see or do as configured."""
        pipeline = self.config.pipeline(name)
        _, src_info, targets = await self._targets(pipeline, f"pipelines.{name}")
        notes: list[str] = []
        if src_info.hides_deleted and not pipeline.deletes.probe and pipeline.direction == "one_way":
            notes.append(
                f"{pipeline.source} leaves deleted records out of its lists: no delete is seen "
                "unless deletes.probe is true"
            )
        if pipeline.match_on and pipeline.direction == "one_way":
            for target in targets:
                if target.info.natural_key not in pipeline.match_on:
                    raise ConfigError(
                        f"{target.ref} can only look records up by {target.info.natural_key or 'nothing'}",
                        file=self.config.file,
                        path=f"pipelines.{name}.match_on",
                    )
        return notes

    async def _targets(self, pipeline: PipelineConfig, where: str) -> tuple[Connector, StreamInfo, list[_Target]]:
        src_system, src_stream = pipeline.source_ref()
        source = await self.system(src_system)
        src_info = source.stream(src_stream)
        targets = []
        for i, (system, stream) in enumerate(pipeline.target_refs()):
            connector = await self.system(system)
            info = connector.stream(stream)
            mapping = FieldMapping(pipeline.mapping, src_info.record_type, info.record_type, where=f"{where}.mapping")
            target = _Target(f"{system}.{stream}", connector, stream, info, mapping)
            for name, rule in pipeline.references.items():  # checked when the config loaded
                src, dst = f"{src_system}.{rule.source}", f"{system}.{rule.target_stream()}"
                target.references.append(_Reference(name, src, dst, rule.missing))
            targets.append(target)
            _ = i
        return source, src_info, targets

    # -- a run ------------------------------------------------------------------------
    async def run(
        self,
        name: str,
        *,
        full: bool = False,
        dry_run: bool = False,
        trigger: str = "manual",
        stop: asyncio.Event | None = None,
        progress: Progress | None = None,
        report: DryRunReport | None = None,
    ) -> RunResult:
        """Run pipeline ``name`` once. Never raises for run failures: see the result's outcome.

        ``progress`` is called after every committed page (see :class:`Progress`); a dry run
        tells ``report`` what it would do with every record (:mod:`ferryman.plan_report`)."""
        pipeline = self.config.pipeline(name)
        started = time.monotonic()
        result = RunResult(name, "ok", counts=_counts())
        bound = log.bind(pipeline=name)

        if not dry_run and not await self._state(self.store.acquire_lease, name, self.config.state.lease_ttl):
            holder = await self._state(self.store.lease_holder, name)
            result.outcome = "busy"
            result.message = f"already running on {holder[0] if holder else 'another instance'}"
            return result
        try:
            two_way = pipeline.direction == "both"
            try:
                if two_way:
                    systems = [
                        await self.system(pipeline.source_ref()[0]),
                        await self.system(pipeline.target_refs()[0][0]),
                    ]
                    hosts = list(dict.fromkeys(h for c in systems for h in c.hosts()))
                else:
                    source, src_info, targets = await self._targets(pipeline, f"pipelines.{name}")
                    hosts = list(dict.fromkeys(source.hosts() + [h for t in targets for h in t.connector.hosts()]))
            except ConfigError:
                raise
            except FerrymanError as exc:
                result.outcome, result.message = "failed", redact(str(exc))
                return result
            deferred = await self._state(self.store.not_before, hosts)
            if deferred is not None:
                result.outcome = "deferred"
                result.not_before = deferred[1]
                result.message = f"{deferred[0]} asked us to wait until {format_utc(deferred[1])}"
                if not dry_run:
                    run_id = await self._state(self.store.start_run, name, trigger)
                    await self._state(self.store.finish_run, run_id, "deferred", result.message, deferred[1])
                    result.run_id = run_id
                return result
            if not dry_run:
                await self._state(self.store.close_stale_runs, name)
                result.run_id = await self._state(self.store.start_run, name, trigger)
            bound.info("run.started", trigger=trigger, full=full, dry_run=dry_run, run_id=result.run_id)
            try:
                if two_way:
                    from ferryman.twoway import run_two_way

                    await run_two_way(
                        self, name, pipeline, result, full=full, dry_run=dry_run, report=report, stop=stop
                    )
                else:
                    if pipeline.references and not dry_run:
                        await self._retry_references(name, result, (source, src_info, targets))
                    await self._run_pages(
                        name, pipeline, source, src_info, targets, result, full, dry_run, stop, progress, report
                    )
            except DeferredError as exc:
                result.outcome, result.not_before = "deferred", exc.not_before
                result.message = redact(str(exc))
                if exc.host:
                    await self._state(self.store.set_not_before, exc.host, exc.not_before, result.message)
            except (FerrymanError, OSError) as exc:
                # the class says what went wrong; whatever it is, the run ends here with the
                # cursor where the last committed page left it
                result.outcome, result.message = "failed", redact(str(exc))
            except Exception as exc:  # a bug: record it, keep the daemon alive, hide secrets
                result.outcome = "failed"
                result.message = redact(f"internal error: {type(exc).__name__}: {exc}")
                bound.exception("run.internal_error")
            result.seconds = time.monotonic() - started
            if result.run_id is not None:
                await self._state(
                    self.store.finish_run, result.run_id, result.outcome, result.message, result.not_before
                )
            metrics.inc("ferryman_runs_total", pipeline=name, outcome=result.outcome)
            if not dry_run:
                await self._prune_history()
            cursor = await self._state(self.store.get_cursor, name)
            result.cursor = cursor
            if cursor is not None:
                metrics.set_gauge(
                    "ferryman_cursor_lag_seconds", (utcnow() - cursor.updated_at).total_seconds(), pipeline=name
                )
            if dry_run and result.outcome == "ok":
                result.outcome = "dry-run"
            event = bound.info if result.outcome in ("ok", "dry-run", "stopped") else bound.warning
            event(
                "run.finished",
                outcome=result.outcome,
                seconds=round(result.seconds, 3),
                message=result.message,
                **result.counts,
            )
            return result
        finally:
            if not dry_run:
                await self._state(self.store.release_lease, name)

    async def _run_pages(
        self,
        name: str,
        pipeline: PipelineConfig,
        source: Connector,
        src_info: StreamInfo,
        targets: list[_Target],
        result: RunResult,
        full: bool,
        dry_run: bool,
        stop: asyncio.Event | None,
        progress: Progress | None,
        report: DryRunReport | None,
    ) -> None:
        src_ref = pipeline.source
        journal = RunJournal(self.config.history, pipeline.journal)
        if not dry_run:
            await self._keyed(src_ref, targets)
            for target in targets:
                await self._reconcile_intents(name, src_ref, target)
                await target.connector.restore(
                    target.stream, await self._state(self.store.get_checkpoint, name, target.ref)
                )
        if not dry_run and any(t.references for t in targets):
            letters = await self._state(self.store.dead_letters, pipeline=name, kind="reference")
            for target in targets:
                target.waiting = {x.src_key for x in letters if x.dst == target.ref and x.src_key}
        cursor = None if full else await self._state(self.store.get_cursor, name)
        began = await self._state(self.store.get_cursor, name) if not dry_run else None
        since = read_from(cursor, pipeline.overlap, src_info.precision)
        if not dry_run:
            for target in targets:
                target.lookup = await self._should_look_up(name, pipeline, src_ref, target, cursor)
        best = cursor
        # The source's claims are verified, not believed: an ordered stream whose records go
        # back in time stops the run (a keyset read over it would have skipped records).
        order = OrderGuard(system=source.name, stream=src_info.name) if src_info.ordered else None
        pages = PageGuard(system=source.name, stream=src_info.name, cap=pipeline.max_pages)
        cap = MAX_PAGES.set(pipeline.max_pages)
        halted: str | None = None
        last_lease = time.monotonic()
        # A run that ends in an error may leave sinks holding rows past their committed
        # checkpoint (a page cut short, a commit refused): only what was committed is
        # published, and nothing at all when the lease moved or the state database is away
        # (the next run's restore() then cuts the rest back, exactly as after a crash).
        publish = False
        failure: BaseException | None = None

        async def commit_page(commit: PageCommit, page_counts: dict[str, int]) -> None:
            await self._commit(commit, page_counts, result, dry_run)

        # keys a full pass saw: a linked key it did not see is probed for a hidden delete
        seen: set[str] | None = set() if since is None and pipeline.deletes.probe else None
        try:
            reading = read_ahead(source.read(src_info.name, since, pipeline.page_size))
            async with contextlib.aclosing(reading):
                async for page in reading:
                    pages.fetched(None)
                    if seen is not None:
                        seen.update(r.key for r in page.records)
                    if order is not None:
                        order.check(page.records, f"page {pages.pages} of {pipeline.source}")
                    commit = PageCommit(name, run_id=result.run_id)
                    page_counts = _counts()
                    page_counts["read"] = len(page.records)
                    for reject in page.rejects:
                        commit.dead_letters.append(
                            NewDeadLetter(
                                src_ref,
                                None,
                                reject.ref,
                                reject.reason,
                                src_key=reject.key,
                                kind="invalid",
                                payload=reject.raw,
                            )
                        )
                        page_counts["dead_lettered"] += 1
                        journal.event(
                            commit.events,
                            src_ref,
                            reject.key or reject.ref,
                            "dead-letter",
                            detail=f"invalid in {src_ref}: {reject.reason}",
                        )
                        bound_reason = redact(reject.reason)
                        log.warning("record.dead_lettered", pipeline=name, ref=reject.ref, reason=bound_reason)
                    if report is not None and dry_run:
                        for reject in page.rejects:
                            report.action(
                                "dead-letter",
                                None,
                                key=reject.key,
                                source=src_ref,
                                reason=f"{reject.ref}: {reject.reason}",
                            )
                    for target in targets:
                        halted = await self._deliver(
                            name, pipeline, src_ref, target, page.records, commit, page_counts, dry_run, report
                        )
                        if halted:
                            break
                    if halted:
                        result.outcome = "halted"
                        result.message = halted
                        log.error("run.halted", pipeline=name, reason=halted)
                        await commit_page(commit, page_counts)
                        break
                    if page.records:
                        page_max = newest(page.records)
                        if best is None or page_max > best:
                            best = page_max
                    if src_info.ordered and best is not None:
                        commit.cursor = best
                    commit.resolved_refs = [r.key for r in page.records]
                    for target in targets:
                        if target.transactional and not dry_run:
                            commit.checkpoints[target.ref] = await target.connector.checkpoint(target.stream)
                    await commit_page(commit, page_counts)
                    if progress:
                        progress(len(page.records), result.counts, page.total)
                    ttl = self.config.state.lease_ttl
                    if not dry_run and time.monotonic() - last_lease > ttl.total_seconds() / 3:
                        # renewed, never taken again: a lease that moved while this run stalled
                        # stays with its new holder, even one that has finished and let it go
                        if not await self._state(self.store.renew_lease, name, ttl):
                            holder = await self._state(self.store.lease_holder, name)
                            raise LeaseLost(
                                f"pipeline {name}: its lease passed to {holder[0] if holder else 'another instance'} "
                                "during the run (it stalled past state.lease_ttl); stopping after the last commit"
                            )
                        last_lease = time.monotonic()
                    # Give the event loop a turn between pages: in the daemon, signals, the
                    # watchdog and the control API wait on it, and a run whose connectors do
                    # no network I/O (CSV to CSV) would otherwise hold it for the whole run.
                    await asyncio.sleep(0)
                    if stop is not None and stop.is_set():
                        result.outcome = "stopped"
                        result.message = "stopped after committing the page in hand"
                        break
                else:
                    if not src_info.ordered and best is not None and not dry_run:
                        # an unordered source only moves its cursor after a complete pass
                        await commit_page(PageCommit(name, cursor=best), _counts())
                    if pipeline.deletes.probe and not dry_run and src_info.can(Capability.READ):
                        gone = await self._probe_deletes(name, pipeline, source, src_info, targets, seen)
                        if gone:
                            commit = PageCommit(name, run_id=result.run_id)
                            page_counts = _counts()
                            for target in targets:
                                halted = await self._deliver(
                                    name, pipeline, src_ref, target, gone, commit, page_counts, dry_run, report
                                )
                                if halted:
                                    result.outcome, result.message = "halted", halted
                                    log.error("run.halted", pipeline=name, reason=halted)
                                    break
                            await commit_page(commit, page_counts)
            publish = True
        except (OrderViolation, PagingError) as exc:
            failure = exc
            if not dry_run:
                # Records before the pages this run committed may be unread: the cursor goes
                # back to where the run began (re-reading what arrived is skipped by fingerprint).
                await self._state(self.store.hold_cursor, name, began)
            raise
        except BaseException as exc:
            failure = exc
            raise
        finally:
            MAX_PAGES.reset(cap)
            if not dry_run and any(t.transactional for t in targets):
                if publish:
                    await self._publish(name, targets)
                elif not isinstance(failure, LeaseLost | StateUnavailable):
                    await self._publish_committed(name, targets)

    async def _keyed(self, src_ref: str, targets: Sequence[_Target]) -> None:
        """Before a one-way run writes: targets that keep each record under its source key
        (``keyed_by_source``: CSV files) have their links kept as slim fingerprint rows."""
        for target in targets:
            if getattr(target.connector, "keyed_by_source", False):
                await self._state(self.store.keyed_target, src_ref, target.ref)

    async def _publish(self, name: str, targets: Sequence[Sink]) -> None:
        """Publish the transactional targets (CSV files) of a one-way or two-way run. A write
        like any other: only while the lease is surely ours, and the published state is
        committed fenced, as a page is."""
        if not any(target.transactional for target in targets):
            return
        await self._fence(name, now=True)
        published = PageCommit(name)
        for target in targets:
            if target.transactional:
                data = await target.connector.finish(target.stream)
                if data is not None:
                    published.checkpoints[target.ref] = data
        if published.checkpoints:
            await self._state(self.store.commit_page, published)

    async def _publish_committed(self, name: str, targets: list[_Target]) -> None:
        """After a failed run: publish what its pages committed, and not the rows a page cut
        short left behind them. Best effort: the run's own error is what is reported."""
        try:
            for target in targets:
                if target.transactional:
                    checkpoint = await self._state(self.store.get_checkpoint, name, target.ref)
                    await target.connector.restore(target.stream, checkpoint)
            await self._publish(name, targets)
        except Exception as exc:
            log.warning("run.publish_failed", pipeline=name, error=redact(str(exc)))

    async def _commit(self, commit: PageCommit, page_counts: dict[str, int], result: RunResult, dry_run: bool) -> None:
        if not dry_run:
            commit.counts = {k: v for k, v in page_counts.items() if not k.startswith("_")}
            await self._state(
                self.store.commit_page, commit
            )  # a refused commit counts nothing: its page was not delivered
        for key, value in page_counts.items():
            result.counts[key] = result.counts.get(key, 0) + value
        pipeline = commit.pipeline
        metrics.inc("ferryman_records_read_total", page_counts["read"], pipeline=pipeline)
        metrics.inc("ferryman_records_skipped_total", page_counts["skipped"], pipeline=pipeline)
        metrics.inc("ferryman_records_dead_lettered_total", page_counts["dead_lettered"], pipeline=pipeline)
        for op in ("created", "updated", "deleted"):
            if page_counts[op]:
                metrics.inc("ferryman_records_written_total", page_counts[op], pipeline=pipeline, op=op)

    # -- delivery to one target ---------------------------------------------------------
    async def _deliver(
        self,
        name: str,
        pipeline: PipelineConfig,
        src_ref: str,
        target: _Target,
        records: list[Record],
        commit: PageCommit,
        counts: dict[str, int],
        dry_run: bool,
        report: DryRunReport | None,
        *,
        force: bool = False,
    ) -> str | None:
        """Plan and write one page to one target; returns why the run must halt, if it must."""
        letters_before = len(commit.dead_letters)
        items: list[tuple[Record, str]] = []
        pairs: list[tuple[Record, Record]] = []  # (source, mapped) where references wait to be translated
        for record in records:
            try:
                mapped = target.mapping.apply(record)
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
            items = [(m, fingerprint(m)) for m in await self._translate(target, src_ref, pairs, commit, counts)]
        links = await self._state(self.store.links_for, src_ref, target.ref, [r.key for r, _ in items])
        if force:
            links = {
                k: Link(v.src_key, v.dst_key, None, v.dst_fp, v.write_count, v.window_start) for k, v in links.items()
            }
        actions = plan_one_way(
            items,
            links,
            deletes_enabled=pipeline.deletes.enabled,
            delete_action=pipeline.deletes.action,
            blocked=target.blocked,
        )
        deletes = [a for a in actions if a.op in ("delete", "unlink")]
        if deletes:
            total = max(await self._state(self.store.count_links, src_ref, target.ref), 1)
            already = counts.get("_deletes_in_run", 0)
            share = (already + len(deletes)) / total
            if share > pipeline.deletes.max_share:
                return (
                    f"halted before deleting: {already + len(deletes)} of {total} linked records in {target.ref} "
                    f"({share:.0%}) would be deleted, over deletes.max_share {pipeline.deletes.max_share:.0%}"
                )
        if dry_run:
            for action in actions:
                counts[_counted(action.op)] += 1
            if report is not None:
                await self._report(report, src_ref, target, actions, commit.dead_letters[letters_before:])
            return None

        await Delivery(
            self,
            name,
            src_ref,
            target,
            commit,
            counts,
            RunJournal(self.config.history, pipeline.journal),
            links,
            concurrency=pipeline.concurrency,
            letters_before=letters_before,
        ).deliver(actions)
        return None

    async def _prune_history(self) -> None:
        """Delete events and journal entries past ``history`` retention: after a run, at
        most once per :data:`PRUNE_EVERY` per process (two indexed deletes). A failure is
        logged, never the run's: the history is bounded again after the next run."""
        now = time.monotonic()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        history = self.config.history
        try:
            events, entries = await self._state(self.store.history.prune, history.retention, history.journal_retention)
        except StateError as exc:
            log.warning("history.prune_failed", error=redact(str(exc)))
            return
        if events or entries:
            log.info("history.pruned", events=events, conflicts=entries)

    async def _before_update(
        self, journal: RunJournal, target: _Target, action: Action, link: Link | None
    ) -> tuple[tuple[dict[str, Any], dict[str, Any]], tuple[dict[str, Any], dict[str, Any]] | None] | None:
        """With ``journal.check_target``: read what ``target`` holds under the record's key
        before an update overwrites it. Returns ``(changed, overwrote)``: the fields the
        update changes as ``(lost, won)``, and the same again when the record had changed in
        the target since our last write there (for the conflict journal), else ``None``.
        ``None`` when not checked: the option is off, the target cannot be read by key, or
        the record is gone (the update then answers for itself). A read that fails fails
        the write: an overwrite we were asked to journal never goes unjournaled."""
        if not journal.check_target or action.dst_key is None or action.record is None:
            return None
        if not target.info.can(Capability.READ):
            return None
        try:
            current = await target.connector.get(target.stream, action.dst_key)
        except (NotImplementedError, NotSupportedError):
            return None
        if current is None:
            return None
        changed = overwritten(current, action.record)
        moved = link is not None and link.dst_fp is not None and not same_content(current, link.dst_fp)
        return changed, (changed if moved else None)

    async def _report(
        self,
        report: DryRunReport,
        src_ref: str,
        target: _Target,
        actions: list[Action],
        letters: list[NewDeadLetter],
    ) -> None:
        """Tell a dry run's ``report`` what this page would do to ``target``; an update with
        what the target holds now (see :meth:`_current`), so the report can say which fields
        would change."""
        for letter in letters:
            report.action("dead-letter", target.ref, key=letter.src_key, source=src_ref, reason=letter.reason)
        updates = [a.dst_key for a in actions if a.op == "update" and a.dst_key]
        current = await self._current(target, updates) if updates else {}
        kept = f"deleted in {src_ref}; {target.ref} keeps its record"
        for action in actions:
            report.action(
                action.op,
                target.ref,
                key=action.src_key,
                target_key=action.dst_key,
                source=src_ref,
                current=current.get(action.dst_key) if action.op == "update" and action.dst_key else None,
                new=action.record if action.op == "update" else None,
                reason=action.reason or (kept if action.op == "unlink" else ""),
            )

    async def _current(self, target: _Target, keys: list[str]) -> dict[str, Record]:
        """What ``target`` holds now under ``keys``, for a dry run's diff; a key missing from
        the answer was not read. A file target (read whole in one pass, at most
        ``LOOKUP_INDEX_PAGES`` pages) is read once per run; any other target gets one
        ``get`` per key, where it can. Never fails the dry run: what cannot be read is
        reported as not read."""
        if not target.info.can(Capability.READ) or target.current is False:
            return {}
        if target.transactional and target.current is None:
            held: dict[str, Record] = {}
            pages = 0
            try:
                async for page in target.connector.read(target.stream, None, LOOKUP_PAGE):
                    pages += 1
                    if pages > LOOKUP_INDEX_PAGES:
                        held = {}
                        break
                    held.update((r.key, r) for r in page.records)
                else:
                    target.current = held
            except (FerrymanError, OSError) as exc:
                log.warning("dry_run.target_unread", target=target.ref, error=redact(str(exc)))
                target.current = False
                return {}
        if isinstance(target.current, dict):
            return {k: target.current[k] for k in keys if k in target.current}
        found: dict[str, Record] = {}
        for key in keys:
            try:
                record = await target.connector.get(target.stream, key)
            except (NotSupportedError, NotImplementedError):
                target.current = False  # this target cannot get by key: not asked again
                return found
            except FerrymanError as exc:
                log.warning("dry_run.target_unread", target=target.ref, key=key, error=redact(str(exc)))
                continue
            if record is not None:
                found[key] = record
        return found

    async def _translate(
        self,
        target: _Target,
        src_ref: str,
        pairs: list[tuple[Record, Record]],
        commit: PageCommit,
        counts: dict[str, int],
    ) -> list[Record]:
        """The mapped records with their reference fields translated to the target app's ids.

        One lookup per reference and page, in both directions of the referenced streams'
        links (a pipeline may have synced them either way). A record whose reference has no
        link yet is dead-lettered as ``reference`` (or delivered with the field empty, with
        ``missing: drop``)."""
        updates: list[dict[str, str | None]] = [{} for _ in pairs]
        failed: dict[int, str] = {}
        for ref in target.references:
            wanted = {v for _, m in pairs if (v := getattr(m, ref.field))}
            if not wanted:
                continue
            found = {
                k: link.dst_key
                for k, link in (await self._state(self.store.links_for, ref.src, ref.dst, sorted(wanted))).items()
            }
            rest = sorted(wanted - found.keys())
            if rest:
                found |= {
                    k: link.src_key
                    for k, link in (await self._state(self.store.links_by_dst, ref.dst, ref.src, rest)).items()
                }
            for i, (_, mapped) in enumerate(pairs):
                value = getattr(mapped, ref.field)
                if not value:
                    continue
                if value in found:
                    updates[i][ref.field] = found[value]
                elif ref.missing == "drop":
                    updates[i][ref.field] = None
                elif i not in failed:
                    failed[i] = (
                        f"{ref.field} {value!r}: {ref.src}#{value} has no linked record in {ref.dst} yet "
                        f"(sync {ref.src} to {ref.dst}; this record is retried at the start of every run)"
                    )
        out: list[Record] = []
        for i, (record, mapped) in enumerate(pairs):
            if i in failed:
                commit.dead_letters.append(
                    NewDeadLetter(
                        src_ref,
                        target.ref,
                        record.key,
                        failed[i],
                        src_key=record.key,
                        kind="reference",
                        payload=record.model_dump(mode="json"),
                    )
                )
                counts["dead_lettered"] += 1
                log.info("record.reference_missing", target=target.ref, key=record.key, reason=failed[i])
                continue
            out.append(mapped.model_copy(update=updates[i]) if updates[i] else mapped)
        return out

    async def _retry_references(self, name: str, result: RunResult, built: _Built) -> None:
        """Deliver again the records that waited for a reference (least recently tried first,
        at most ``REFERENCE_RETRIES`` a run): their referenced record may have been synced
        since. Creates a crash left unconfirmed are reconciled first, as before any pages.
        What they write is counted in ``result``; those still waiting are not counted again."""
        letters = await self._state(
            self.store.dead_letters, pipeline=name, kind="reference", oldest_first=REFERENCE_RETRIES
        )
        if not letters:
            return
        for target in built[2]:
            await self._reconcile_intents(name, self.config.pipeline(name).source, target)
        outcomes = await self._replay_pipeline(name, letters, result, built)
        waiting = [letter_id for letter_id, outcome, _ in outcomes if outcome != "delivered"]
        if waiting:  # tried now: the next run starts with the others
            await self._state(self.store.set_dead_letter_status, waiting, "open")
        log.info("references.retried", pipeline=name, retried=len(letters), delivered=len(letters) - len(waiting))

    async def _probe_deletes(
        self,
        name: str,
        pipeline: PipelineConfig,
        source: Connector,
        src_info: StreamInfo,
        targets: list[_Target],
        seen: set[str] | None,
    ) -> list[Record]:
        """Linked records the source may have deleted without a trace in its lists.

        After a full pass (``seen``), the linked keys it did not see; otherwise the next
        ``deletes.probe_max`` linked keys in key order, round the links run by run. Each is
        fetched by key: gone (``None``) or marked deleted is a delete, planned like any other
        (withheld unless ``deletes.enabled``)."""
        budget = pipeline.deletes.probe_max
        src_ref = pipeline.source
        if seen is not None:
            linked = sorted(
                {k for t in targets for k in await self._state(self.store.linked_keys, src_ref, t.ref)} - seen
            )
            candidates = linked[:budget]
        else:
            place = (await self._state(self.store.get_checkpoint, name, PROBE_CHECKPOINT) or {}).get("after")
            found: set[str] = set()
            for target in targets:
                found.update(await self._state(self.store.linked_keys, src_ref, target.ref, after=place, limit=budget))
                if len(found) < budget and place is not None:  # wrap around
                    found.update(
                        await self._state(self.store.linked_keys, src_ref, target.ref, limit=budget - len(found))
                    )
            candidates = sorted(found)[:budget]
            last = candidates[-1] if candidates else None
            await self._state(self.store.set_checkpoint, name, PROBE_CHECKPOINT, {"after": last} if last else None)
        gone: list[Record] = []
        for key in candidates:
            try:
                record = await source.get(src_info.name, key)
            except (NotSupportedError, NotImplementedError):
                log.warning("deletes.probe_unsupported", pipeline=name, source=src_ref, reason="cannot get by key")
                return gone
            if record is None:
                record = src_info.record_type.model_validate({"key": key, "updated_at": utcnow(), "deleted": True})
            elif not record.deleted:
                continue
            gone.append(record)
        log.info("deletes.probed", pipeline=name, probed=len(candidates), deleted=len(gone))
        return gone

    async def _should_look_up(
        self, name: str, pipeline: PipelineConfig, src_ref: str, target: _Target, cursor: Cursor | None
    ) -> bool:
        """Whether this run looks each create up in the target before creating.

        Links are the memory of what was created. When they may be gone (no cursor: a new or
        deleted state database, a reset, ``--full``; or no link at all for this pair: a
        renamed system) a one-way run that simply created would duplicate every record the
        target already has. ``lookup: always`` (or ``match_on``) looks up on every run;
        ``never`` does not. An empty target has nothing to duplicate.
        """
        if target.transactional or not target.info.can(Capability.FIND) or pipeline.lookup == "never":
            return False
        links_kept = cursor is not None and await self._state(self.store.count_links, src_ref, target.ref) > 0
        if pipeline.lookup == "auto" and not pipeline.match_on and links_kept:
            return False
        if not target.info.can(Capability.READ):
            return True
        # Batched where the API allows: a target of up to LOOKUP_INDEX_PAGES pages is read
        # once and looked up in memory, instead of one find() request per create.
        index: dict[str, list[tuple[str, str]]] = {}
        pages = 0
        async for page in target.connector.read(target.stream, None, pipeline.page_size):
            pages += 1
            if pages > LOOKUP_INDEX_PAGES:
                index = {}
                target.index = None
                break
            for record in page.records:
                if not record.deleted and (value := _natural(target, record)):
                    index.setdefault(value, []).append((record.key, fingerprint(record)))
        else:
            target.index = index
            if not index:
                return False  # an empty target has nothing to duplicate
        log.info(
            "link.lookups_on",
            pipeline=name,
            target=target.ref,
            reason="links may have been lost" if pipeline.lookup == "auto" else f"lookup: {pipeline.lookup}",
            indexed=len(index) if target.index is not None else None,
        )
        return True

    async def _reconcile_intents(self, name: str, src_ref: str, target: _Target) -> None:
        """Creates that were started but never confirmed: look them up before creating again."""
        pending = await self._state(self.store.intents, name, target.ref)
        blocked = set()
        for intent in pending:
            if intent["state"] == "unresolved":
                blocked.add(intent["src_key"])
                continue
            record = target.info.record_type.model_validate_json(intent["payload"])
            try:
                found = await target.connector.reconcile(target.stream, record, intent["created_at"])
            except NotSupportedError:
                await self._state(self.store.mark_intent_unresolved, intent["id"])
                await self._state(
                    self.store.add_dead_letters,
                    name,
                    [
                        NewDeadLetter(
                            src_ref,
                            target.ref,
                            intent["src_key"],
                            f"a create in {target.ref} was interrupted and {target.ref} cannot look records up: "
                            "check the target, then `ferryman dlq replay` to create it or `ferryman dlq drop`",
                            src_key=intent["src_key"],
                            kind="unresolved",
                            payload=orjson.loads(intent["payload"]),
                        )
                    ],
                )
                blocked.add(intent["src_key"])
                continue
            link = Link(intent["src_key"], found.key, intent["fingerprint"], fingerprint(found)) if found else None
            await self._state(self.store.resolve_intent, intent["id"], src=src_ref, dst=target.ref, link=link)
            log.info(
                "intent.reconciled", pipeline=name, target=target.ref, key=intent["src_key"], found=found is not None
            )
        target.blocked = frozenset(blocked)

    # -- dead-letter replay -------------------------------------------------------------
    async def replay(self, ids: list[int], *, assume_missing: bool = False) -> list[tuple[int, str, str]]:
        """Deliver dead letters again; returns (id, outcome, message) for each.

        An *unresolved* create (interrupted, outcome unknown) is looked up in the target
        first; where the target cannot look records up it is only created again with
        ``assume_missing`` (the operator checked the target by hand)."""
        results: list[tuple[int, str, str]] = []
        letters = await self._state(self.store.dead_letters, status="open", ids=ids)
        by_pipeline: dict[str, list[Any]] = {}
        for letter in letters:
            by_pipeline.setdefault(letter.pipeline, []).append(letter)
        for name, group in by_pipeline.items():
            if name not in self.config.pipelines:
                results += [(x.id, "skipped", f"pipeline {name!r} is no longer configured") for x in group]
                continue
            if not await self._state(self.store.acquire_lease, name, self.config.state.lease_ttl):
                results += [(x.id, "busy", "the pipeline is running; try again when it is done") for x in group]
                continue
            try:
                results += await self._replay_pipeline(name, group, assume_missing=assume_missing)
            finally:
                await self._state(self.store.release_lease, name)
        return results

    async def _settle_unresolved(
        self, name: str, src_ref: str, target: _Target, letter: Any, assume_missing: bool
    ) -> str | None:
        """Before replaying an interrupted create: link the record if the target has it.
        Returns why the letter cannot be replayed safely, or ``None`` to go on."""
        waiting = [
            i
            for i in await self._state(self.store.intents, name, target.ref, state="unresolved")
            if i["src_key"] == letter.src_key
        ]
        started = waiting[0]["created_at"] if waiting else letter.created_at
        found: Record | None = None
        if letter.payload:
            mapped = target.info.record_type.model_validate(letter.payload)
            try:
                found = await target.connector.reconcile(target.stream, mapped, started)
            except NotSupportedError:
                if not assume_missing:
                    return (
                        f"{target.ref} cannot look up whether the interrupted create of {letter.src_key} happened: "
                        f"check {target.ref} for it, then `ferryman dlq replay --assume-missing {letter.id}` to "
                        f"create it, or `ferryman dlq drop {letter.id}` if it is there"
                    )
        await self._state(self.store.resolve_intent_by_key, name, target.ref, letter.src_key)
        target.blocked = target.blocked - {letter.src_key}
        if found is not None and letter.src_key:
            mapped_fp = fingerprint(target.info.record_type.model_validate(letter.payload))
            await self._state(
                self.store.commit_page,
                PageCommit(
                    name,
                    links={(src_ref, target.ref): [Link(letter.src_key, found.key, mapped_fp, fingerprint(found))]},
                ),
            )
            log.info("intent.reconciled", pipeline=name, target=target.ref, key=letter.src_key, found=True)
        return None

    async def _replay_pipeline(
        self,
        name: str,
        letters: list[Any],
        run: RunResult | None = None,
        built: _Built | None = None,
        *,
        assume_missing: bool = False,
    ) -> list[tuple[int, str, str]]:
        """Deliver ``letters`` again. Within a ``run`` (its start-of-run reference retries,
        on the run's own ``built`` targets), what they create, update or delete is counted in
        the run, committed with its row."""
        pipeline = self.config.pipeline(name)
        source, src_info, targets = built or await self._targets(pipeline, f"pipelines.{name}")
        await self._keyed(pipeline.source, targets)
        out: list[tuple[int, str, str]] = []
        for target in targets:
            await target.connector.restore(
                target.stream, await self._state(self.store.get_checkpoint, name, target.ref)
            )
        try:
            for letter in letters:
                chosen = [t for t in targets if letter.dst in (None, t.ref)]
                record: Record | None = None
                gone = False  # the source answered that it no longer has the record
                try:
                    if letter.src_key and src_info.can(Capability.READ):
                        try:
                            record = await source.get(src_info.name, letter.src_key)
                            gone = record is None
                        except NotImplementedError:
                            record = None
                        except FerrymanError as exc:
                            if isinstance(exc, RecordRejected):
                                raise
                            record = None
                    # An operator's replay may send the kept copy of a record the source lost;
                    # a run's own retries do not bring a deleted record back.
                    if record is None and letter.dst is not None and letter.payload and not (gone and run is not None):
                        record = (
                            src_info.record_type.model_validate(letter.payload) if letter.kind != "unresolved" else None
                        )
                        if record is None:
                            record = chosen[0].info.record_type.model_validate(letter.payload)
                except (RecordRejected, ValueError) as exc:
                    await self._state(self.store.set_dead_letter_status, [letter.id], "open", f"still invalid: {exc}")
                    out.append((letter.id, "invalid", redact(str(exc))))
                    continue
                if record is None:
                    out.append(
                        (
                            letter.id,
                            "missing",
                            f"{letter.ref} is no longer in {letter.src}; `ferryman dlq drop {letter.id}`",
                        )
                    )
                    continue
                commit = PageCommit(name)
                RunJournal(self.config.history, pipeline.journal).event(
                    commit.events,
                    pipeline.source,
                    letter.src_key or letter.ref,
                    "replay",
                    target=letter.dst,
                    detail=f"dead letter #{letter.id} ({letter.kind}) delivered again",
                )
                counts = _counts()
                unchecked: str | None = None
                for target in chosen:
                    if letter.kind == "unresolved":
                        # Look first: the interrupted create may have happened. Never create blindly.
                        unchecked = await self._settle_unresolved(name, pipeline.source, target, letter, assume_missing)
                        if unchecked:
                            break
                    await self._deliver(
                        name,
                        pipeline,
                        pipeline.source,
                        target,
                        [record],
                        commit,
                        counts,
                        False,
                        None,
                        force=letter.kind != "invalid",
                    )
                    if target.transactional:
                        commit.checkpoints[target.ref] = await target.connector.checkpoint(target.stream)
                if unchecked:
                    out.append((letter.id, "needs-check", unchecked))
                    continue
                failed = [d for d in commit.dead_letters]
                commit.dead_letters = []
                written = {k: counts[k] for k in ("created", "updated", "deleted") if counts[k]}
                if run is not None:
                    commit.run_id, commit.counts = run.run_id, written
                await self._state(self.store.commit_page, commit)
                if run is not None:
                    for key, value in written.items():
                        run.counts[key] += value
                if failed:
                    # a reference found at last, then the record refused: no longer retried each run
                    kind = failed[0].kind if letter.kind == "reference" else None
                    await self._state(
                        self.store.set_dead_letter_status, [letter.id], "open", failed[0].reason, kind=kind
                    )
                    out.append((letter.id, "rejected", failed[0].reason))
                else:
                    await self._state(self.store.set_dead_letter_status, [letter.id], "resolved")
                    out.append((letter.id, "delivered", f"created {counts['created']}, updated {counts['updated']}"))
        finally:
            for target in targets:
                if target.transactional:
                    data = await target.connector.finish(target.stream)
                    if data is not None:
                        await self._state(self.store.set_checkpoint, name, target.ref, data)
        return out


def _counted(op: str) -> str:
    return {
        "create": "created",
        "update": "updated",
        "delete": "deleted",
        "unlink": "deleted",
        "skip": "skipped",
        "withhold": "withheld",
    }[op]
