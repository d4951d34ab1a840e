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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import structlog

from ferryman import metrics
from ferryman.config import DEFAULT_LEASE_TTL, FerrymanConfig, PipelineConfig
from ferryman.connector import Capability, Connector, StreamInfo, SystemContext
from ferryman.cursor import Cursor
from ferryman.errors import (
    ConfigError,
    DeferredError,
    FerrymanError,
    NotSupportedError,
    StateError,
)
from ferryman.journal import RunJournal
from ferryman.mapping import FieldMapping
from ferryman.planning import Action
from ferryman.records import Record, fingerprint, overwritten, same_content
from ferryman.redact import redact
from ferryman.run.delivery import natural_value as _natural
from ferryman.run.observer import Observer, Progress
from ferryman.run.oneway import OneWayRun, new_counts, reconcile_intents
from ferryman.run.replay import Replay
from ferryman.state import Link, NewDeadLetter, PageCommit, StateStore
from ferryman.timeutil import format_utc, utcnow

if TYPE_CHECKING:
    from ferryman.plan_report import DryRunReport

log = structlog.get_logger("ferryman.engine")

P = ParamSpec("P")
T = TypeVar("T")
LEASE_TTL = DEFAULT_LEASE_TTL  # the default; a run uses the config's state.lease_ttl
REFERENCE_RETRIES = 200  # records waiting for a reference, delivered again at the start of a run
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
_counts = new_counts  # the counts of a run, all 0 (audit's scratch counts too)


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
        observer = Observer(dry_run=dry_run, report=report, progress=progress, stop=stop)
        started = time.monotonic()
        result = RunResult(name, "ok", counts=_counts())
        if not dry_run and not await self._state(self.store.acquire_lease, name, self.config.state.lease_ttl):
            holder = await self._state(self.store.lease_holder, name)
            result.outcome = "busy"
            result.message = f"already running on {holder[0] if holder else 'another instance'}"
            return result
        try:
            opened = await self._open_run(name, result)
            if opened is not None and not await self._deferred(name, opened[0], result, trigger, dry_run):
                await self._run_opened(name, opened[1], result, full=full, trigger=trigger, observer=observer)
                result.seconds = time.monotonic() - started
                await self._finish(name, result, dry_run)
            return result
        finally:
            if not dry_run:
                await self._state(self.store.release_lease, name)

    async def _open_run(self, name: str, result: RunResult) -> tuple[list[str], _Built | None] | None:
        """The run's systems opened: (the hosts it talks to, the one-way run's source and
        targets, None for a two-way run); None (the result says why) when one cannot open."""
        pipeline = self.config.pipeline(name)
        try:
            if pipeline.direction == "both":
                systems = [
                    await self.system(pipeline.source_ref()[0]),
                    await self.system(pipeline.target_refs()[0][0]),
                ]
                return list(dict.fromkeys(h for c in systems for h in c.hosts())), None
            source, src_info, targets = await self._targets(pipeline, f"pipelines.{name}")
            hosts = list(dict.fromkeys(source.hosts() + [h for t in targets for h in t.connector.hosts()]))
            return hosts, (source, src_info, targets)
        except ConfigError:
            raise
        except FerrymanError as exc:
            result.outcome, result.message = "failed", redact(str(exc))
            return None

    async def _deferred(self, name: str, hosts: list[str], result: RunResult, trigger: str, dry_run: bool) -> bool:
        """Whether a host the run talks to asked us to wait (Retry-After past the run): the
        run is recorded as deferred, and not started."""
        deferred = await self._state(self.store.not_before, hosts)
        if deferred is None:
            return False
        result.outcome = "deferred"
        result.not_before = deferred[1]
        result.message = f"{deferred[0]} asked us to wait until {format_utc(deferred[1])}"
        if not dry_run:
            run_id = await self._state(self.store.start_run, name, trigger)
            await self._state(self.store.finish_run, run_id, "deferred", result.message, deferred[1])
            result.run_id = run_id
        return True

    async def _run_opened(
        self, name: str, built: _Built | None, result: RunResult, *, full: bool, trigger: str, observer: Observer
    ) -> None:
        """The run itself, between its run row's start and end: whatever goes wrong ends up
        in ``result`` (the cursor is where the last committed page left it)."""
        pipeline = self.config.pipeline(name)
        dry_run = observer.dry_run
        if not dry_run:
            await self._state(self.store.close_stale_runs, name)
            result.run_id = await self._state(self.store.start_run, name, trigger)
        bound = log.bind(pipeline=name)
        bound.info("run.started", trigger=trigger, full=full, dry_run=dry_run, run_id=result.run_id)
        try:
            if built is None:
                from ferryman.twoway import run_two_way

                await run_two_way(
                    self, name, pipeline, result, full=full, dry_run=dry_run, report=observer.report, stop=observer.stop
                )
            else:
                if pipeline.references and not dry_run:
                    await self._retry_references(name, result, built)
                await OneWayRun(self, name, pipeline, built, result, full=full, observer=observer).run()
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

    async def _finish(self, name: str, result: RunResult, dry_run: bool) -> None:
        """The run row closed, the metrics and the log told, the history pruned."""
        if result.run_id is not None:
            await self._state(self.store.finish_run, result.run_id, result.outcome, result.message, result.not_before)
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
        event = log.info if result.outcome in ("ok", "dry-run", "stopped") else log.warning
        event(
            "run.finished",
            pipeline=name,
            outcome=result.outcome,
            seconds=round(result.seconds, 3),
            message=result.message,
            **result.counts,
        )

    async def _keyed(self, src_ref: str, targets: Sequence[_Target]) -> None:
        """Before a one-way run writes: targets that keep each record under its source key
        (``keyed_by_source``: CSV files) have their links kept as slim fingerprint rows."""
        for target in targets:
            if getattr(target.connector, "keyed_by_source", False):
                await self._state(self.store.keyed_target, src_ref, target.ref)

    # -- delivery to one target ---------------------------------------------------------
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
            await reconcile_intents(self, name, self.config.pipeline(name).source, target)
        outcomes = await Replay(self, name, result, built).letters(letters)
        waiting = [letter_id for letter_id, outcome, _ in outcomes if outcome != "delivered"]
        if waiting:  # tried now: the next run starts with the others
            await self._state(self.store.set_dead_letter_status, waiting, "open")
        log.info("references.retried", pipeline=name, retried=len(letters), delivered=len(letters) - len(waiting))

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
                results += await Replay(self, name, assume_missing=assume_missing).letters(group)
            finally:
                await self._state(self.store.release_lease, name)
        return results
