"""``ferryman audit PIPELINE``: is the target complete? Answered without trusting the cursor.

An audit reads the whole source once, through the pipeline's own connector (so rate limits
and budgets apply as in any run), maps and fingerprints every record exactly as a run does
(the engine's ``_targets``, ``FieldMapping.apply``, reference translation and
:func:`~ferryman.records.fingerprint`), and compares that with the state store's links and,
where a target can be listed (CSV files, any stream whose connector can read it), with the
target's own records. Per target it reports:

- **missing**: a source record with no link, or linked to a record the target no longer has;
- **extra**: a link to a source key the full pass did not see (or saw deleted);
- **stale**: the source's fingerprint differs from the link's (a change not delivered yet),
  or the target's record differs from what was last written (edited in the target);
- **duplicated**: two target records for one source key or natural key.

``--repair`` plans the fix as an ordinary run would (the engine's :func:`plan_one_way` over
the links as the repair leaves them), shows the plan, asks, then, holding the pipeline's
lease from before the audit read until the end: forgets the links of records the target
lost (so the run creates them again), clears the source fingerprint of stale and
duplicated records (so the run updates them through their link: a CSV target then keeps
one row per key), deletes hand-made duplicates in an app only where ``deletes.enabled``,
and runs ``Engine.run(pipeline, full=True)``; extras are deleted by that run's delete
probe only where ``deletes.enabled`` (otherwise they are withheld, and reported again).

Two-way pipelines are not audited yet.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ferryman.app import EXIT_BUSY, EXIT_DEFERRED, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from ferryman.errors import ConfigError, DeferredError, FerrymanError, StateUnavailable, ValidationFailed

if TYPE_CHECKING:  # `ferryman --help` imports this module: SQLAlchemy and pydantic wait for a command
    from ferryman.planning import Action
    from ferryman.records import Record
    from ferryman.state import Link

__all__ = [
    "COMMANDS",
    "AuditReport",
    "Finding",
    "NotAudited",
    "RepairPlan",
    "TargetAudit",
    "apply_repair",
    "audit_pipeline",
    "main",
    "plan_repair",
]

#: how many keys of each finding a report names
FIRST = 10
#: an audit that found nothing, and one that found differences
EXIT_CLEAN, EXIT_DIFFERENCES = EXIT_OK, EXIT_FAILED
KINDS = ("missing", "extra", "stale", "duplicated")

EXIT_STATUS = """\
exit status:
  0   clean: every source record is in every target, current, once; nothing extra
      (with --repair: the repair run ended ok and left nothing withheld)
  1   differences found (the report names them), or the audit or its repair failed
  2   usage error, or a two-way pipeline (not audited yet)
  3   deferred: an app asked us to wait (Retry-After)
  5   --repair: the pipeline is running elsewhere
  75  the state database is unavailable
  78  configuration error
"""

DESCRIPTION = """\
Compare a one-way pipeline's source with its targets without trusting the cursor: one
full pass through the source (rate-limited like any run), the links in the state
database, and each target's own records where the target can be listed (CSV files, any
readable stream). Reports records missing in a target, extra (linked to a source record
that is gone), stale (changed on either side since the last delivery) and duplicated,
with counts and the first keys of each. --repair shows the plan an ordinary run would
carry out, asks, and applies it with a full run; deletes only where deletes.enabled."""


# -- the report ---------------------------------------------------------------------------------
@dataclass(slots=True)
class Finding:
    """One kind of difference in one target: how many, and the first keys (with why)."""

    count: int = 0
    keys: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, note: str | None = None) -> None:
        self.count += 1
        if len(self.keys) < FIRST:
            self.keys.append(key)
            if note:
                self.notes[key] = note

    def as_json(self) -> dict[str, Any]:
        return {"count": self.count, "keys": list(self.keys), "notes": dict(self.notes)}


@dataclass(slots=True)
class TargetAudit:
    """What the audit found in one target, and what a repair would need."""

    ref: str
    readable: bool
    linked: int = 0
    records: int | None = None  # live records in the target, where it can be listed
    unmappable: int = 0  # source records the mapping refuses (or waiting for a reference): dead letters
    missing: Finding = field(default_factory=Finding)
    extra: Finding = field(default_factory=Finding)
    stale: Finding = field(default_factory=Finding)
    duplicated: Finding = field(default_factory=Finding)
    extras_checked: bool = True
    # -- for the repair (not reported) ----------------------------------------------------------
    items: dict[str, tuple[Record, str]] = field(default_factory=dict)  # src key -> (mapped, fingerprint)
    links: dict[str, Link] = field(default_factory=dict)  # the links of ``items``' keys, as found
    unlink: list[str] = field(default_factory=list)  # linked, but the target lost the record
    refresh: list[str] = field(default_factory=list)  # update through the link (stale, duplicated row)
    extras: list[str] = field(default_factory=list)  # every extra source key
    strays: list[tuple[str, str]] = field(default_factory=list)  # (target key, duplicate of) made by hand
    shared: list[str] = field(default_factory=list)  # duplicates no run can settle, said why

    @property
    def clean(self) -> bool:
        return not any(getattr(self, kind).count for kind in KINDS)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.ref,
            "readable": self.readable,
            "linked": self.linked,
            "records": self.records,
            "unmappable": self.unmappable,
        }
        for kind in KINDS:
            out[kind] = getattr(self, kind).as_json()
        out["extra"]["checked"] = self.extras_checked
        out["duplicated"]["checked"] = self.readable
        return out


@dataclass(slots=True)
class AuditReport:
    pipeline: str
    source: str
    read: int = 0
    unreadable: int = 0  # source rows the connector could not turn into records
    sample: int | None = None
    complete: bool = True  # the pass reached the end of the source
    seconds: float = 0.0
    targets: list[TargetAudit] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return all(t.clean for t in self.targets)

    def as_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "source": self.source,
            "read": self.read,
            "unreadable": self.unreadable,
            "sample": self.sample,
            "complete": self.complete,
            "clean": self.clean,
            "seconds": round(self.seconds, 3),
            "targets": [t.as_json() for t in self.targets],
        }

    def lines(self) -> list[str]:
        how = "full pass" if self.complete else f"a SAMPLE of the first {self.sample} records"
        out = [f"audit {self.pipeline}: {self.source}: {self.read} record(s) read ({how}) in {self.seconds:.1f}s"]
        if self.unreadable:
            out.append(f"  {self.unreadable} source row(s) could not be read (see `ferryman dlq list`)")
        for t in self.targets:
            listed = f"{t.records} record(s) listed" if t.records is not None else "cannot be listed: links only"
            out.append(f"  {t.ref}: {t.linked} linked, {listed}")
            for kind in KINDS:
                finding: Finding = getattr(t, kind)
                if kind == "extra" and not t.extras_checked:
                    out.append(f"    {kind:<11} not checked (a sample does not see every source key)")
                    continue
                if kind == "duplicated" and not t.readable:
                    out.append(f"    {kind:<11} not checked ({t.ref} cannot be listed)")
                    continue
                shown = ", ".join(k + (f" ({finding.notes[k]})" if k in finding.notes else "") for k in finding.keys)
                more = f", ... {finding.count - len(finding.keys)} more" if finding.count > len(finding.keys) else ""
                out.append(f"    {kind:<11} {finding.count}" + (f"  {shown}{more}" if finding.count else ""))
            if t.unmappable:
                out.append(f"    ({t.unmappable} source record(s) do not map to {t.ref}: dead letters, not counted)")
        if self.clean:
            out.append("clean" + ("" if self.complete else " (in the sample)"))
        else:
            out.append(f"differences found: `ferryman audit {self.pipeline} --repair` shows the fix")
        return out


class NotAudited(FerrymanError):
    """A pipeline the audit cannot compare (two-way)."""


# -- the audit ----------------------------------------------------------------------------------
async def audit_pipeline(
    engine: Any,
    name: str,
    *,
    sample: int | None = None,
    keep_alive: Callable[[], Awaitable[None]] | None = None,
) -> AuditReport:
    """Audit one-way pipeline ``name`` through ``engine`` (an :class:`~ferryman.engine.Engine`).

    Targets that can be listed are read first (whole), then the source once, page by page;
    ``sample`` stops the source pass after that many records. ``keep_alive`` is awaited
    after every page (a repair renews its lease there)."""
    import asyncio

    from ferryman.connector import Capability
    from ferryman.engine import _natural
    from ferryman.sdk.readloop import MAX_PAGES, PageGuard

    pipeline = engine.config.pipeline(name)
    if pipeline.direction == "both":
        raise NotAudited(f"pipeline {name} is two-way (direction: both): two-way pipelines are not audited yet")
    started = time.monotonic()
    source, src_info, targets = await engine._targets(pipeline, f"pipelines.{name}")
    src_ref = pipeline.source
    report = AuditReport(name, src_ref, sample=sample)
    states = [_TargetState(t, TargetAudit(t.ref, t.info.can(Capability.READ))) for t in targets]
    cap = MAX_PAGES.set(pipeline.max_pages)
    try:
        for state in states:
            state.audit.linked = await engine._state(engine.store.count_links, src_ref, state.target.ref)
            if state.audit.readable:
                await _list_target(engine, state, pipeline.page_size, _natural)
                await _duplicates(engine, src_ref, state)
        live: set[str] = set()  # source keys the pass saw, not deleted
        gone: set[str] = set()  # and those it saw marked deleted
        guard = PageGuard(system=source.name, stream=src_info.name, cap=pipeline.max_pages)
        pages = source.read(src_info.name, None, pipeline.page_size)
        try:
            async for page in pages:
                guard.fetched(None)
                report.unreadable += len(page.rejects)
                records = page.records
                if sample is not None:
                    records = records[: max(sample - report.read, 0)]
                report.read += len(records)
                for record in records:
                    (gone if record.deleted else live).add(record.key)
                for state in states:
                    await _check_page(engine, name, src_ref, state, records, _natural)
                if keep_alive is not None:
                    await keep_alive()
                await asyncio.sleep(0)
                if sample is not None and report.read >= sample:
                    report.complete = False
                    break
        finally:
            close = getattr(pages, "aclose", None)
            if close is not None:
                await close()
    finally:
        MAX_PAGES.reset(cap)
    for state in states:
        if report.complete:
            await _extras(engine, src_ref, state, live, gone)
        else:
            state.audit.extras_checked = False
        report.targets.append(state.audit)
    report.seconds = time.monotonic() - started
    return report


class _TargetState:
    """One target during an audit: what its listing showed."""

    def __init__(self, target: Any, audit: TargetAudit) -> None:
        self.target = target
        self.audit = audit
        #: target key -> fingerprints of its live records (several: the key repeats, as in a
        #: file), each in the current version and in version 1 (links made before hold that)
        self.by_key: dict[str, list[tuple[str, str]]] | None = None
        #: natural key value -> target keys of its live records
        self.by_natural: dict[str, list[str]] = {}
        #: source keys whose target record is duplicated under its own key: updated on repair
        self.duplicated_keys: set[str] = set()


async def _list_target(engine: Any, state: _TargetState, page_size: int, natural: Any) -> None:
    """Read a target whole, as the engine reads one for lookups: its live records by key
    and by natural key."""
    import asyncio

    from ferryman.records import FINGERPRINTS, fingerprint
    from ferryman.sdk.readloop import PageGuard

    older = FINGERPRINTS[1]
    target = state.target
    by_key: dict[str, list[tuple[str, str]]] = {}
    guard = PageGuard(system=target.connector.name, stream=target.stream)
    count = 0
    async for page in target.connector.read(target.stream, None, page_size):
        guard.fetched(None)
        for record in page.records:
            if record.deleted:
                continue
            count += 1
            by_key.setdefault(record.key, []).append((fingerprint(record), older(record)))
            if (value := natural(target, record)) is not None:
                state.by_natural.setdefault(value, []).append(record.key)
        await asyncio.sleep(0)
    state.by_key = by_key
    state.audit.records = count


async def _duplicates(engine: Any, src_ref: str, state: _TargetState) -> None:
    """Target records sharing a natural key (or a key): named by the source key linked to
    them (else by the natural key's value)."""
    target, audit = state.target, state.audit
    groups = {value: keys for value, keys in state.by_natural.items() if len(keys) > 1}
    if not groups:
        return
    wanted = sorted({k for keys in groups.values() for k in keys})
    linked = await engine._state(engine.store.links_by_dst, src_ref, target.ref, wanted)
    for value, keys in sorted(groups.items()):
        distinct = list(dict.fromkeys(keys))
        sources = sorted({linked[k].src_key for k in distinct if k in linked})
        label = sources[0] if sources else f"{target.info.natural_key}={value}"
        note = f"{len(keys)} records in {target.ref}" + (f": {', '.join(distinct)}" if len(distinct) > 1 else "")
        audit.duplicated.add(label, note)
        if len(distinct) == 1 and sources:
            state.duplicated_keys.add(sources[0])  # one key, several rows (a file): one update compacts them
        elif len(sources) == 1:
            audit.strays += [(k, sources[0]) for k in distinct if k not in linked]
        elif len(sources) > 1:
            audit.shared.append(
                f"{target.ref}: {', '.join(sources)} share the {target.info.natural_key} {value!r} in the source"
            )
        else:
            audit.shared.append(f"{target.ref}: {', '.join(distinct)} share {label} and none is linked")


async def _check_page(
    engine: Any, name: str, src_ref: str, state: _TargetState, records: list[Record], natural: Any
) -> None:
    """Map and fingerprint a page for one target exactly as a run does, and compare with its
    links (and the target's listing)."""
    from ferryman.engine import _counts
    from ferryman.records import fingerprint, same_content
    from ferryman.state import PageCommit

    target, audit = state.target, state.audit
    items: list[tuple[Record, str]] = []
    pairs: list[tuple[Record, Record]] = []
    for record in records:
        if record.deleted:
            continue  # linked ones are extras (see _extras); unlinked ones are nothing to audit
        try:
            mapped = target.mapping.apply(record)
        except ValidationFailed:
            audit.unmappable += 1
            continue
        if target.references:
            pairs.append((record, mapped))
        else:
            items.append((mapped, fingerprint(mapped)))
    if pairs:
        # references translated through the links as a run translates them; a record whose
        # reference has no link yet waits in the dead-letter table in a run: not counted here
        scratch = PageCommit(name)
        translated = await engine._translate(target, src_ref, pairs, scratch, _counts())
        audit.unmappable += len(scratch.dead_letters)
        items += [(m, fingerprint(m)) for m in translated]
    if not items:
        return
    links: dict[str, Link] = await engine._state(engine.store.links_for, src_ref, target.ref, [m.key for m, _ in items])
    for mapped, fp in items:
        key = mapped.key
        link = links.get(key)
        if link is None:
            note = None
            value = natural(target, mapped) if state.by_key is not None else None
            if value is not None and value in state.by_natural:
                note = f"not linked; {target.ref} has a record with this {target.info.natural_key}"
            audit.missing.add(key, note)
            _keep(audit, mapped, fp, None)
            continue
        listed = state.by_key.get(link.dst_key) if state.by_key is not None else None
        if state.by_key is not None and not listed:
            audit.missing.add(key, f"linked to {link.dst_key}, which {target.ref} no longer has")
            audit.unlink.append(key)
            _keep(audit, mapped, fp, link)
            continue
        if key in state.duplicated_keys:
            audit.refresh.append(key)
            _keep(audit, mapped, fp, link)
        if not same_content(mapped, link.src_fp, fp):  # in the link's fingerprint version
            audit.stale.add(key, "changed at the source since it was delivered")
            _keep(audit, mapped, fp, link)
        elif listed and link.dst_fp is not None and link.dst_fp not in listed[-1] and key not in state.duplicated_keys:
            # (a duplicated row is reported as duplicated, and its update rewrites it anyway)
            audit.stale.add(key, f"changed in {target.ref}")
            audit.refresh.append(key)
            _keep(audit, mapped, fp, link)


def _keep(audit: TargetAudit, mapped: Record, fp: str, link: Link | None) -> None:
    audit.items[mapped.key] = (mapped, fp)
    if link is not None:
        audit.links[mapped.key] = link


async def _extras(engine: Any, src_ref: str, state: _TargetState, live: set[str], gone: set[str]) -> None:
    """Links to source keys the full pass did not see alive."""
    target, audit = state.target, state.audit
    linked = await engine._state(engine.store.linked_keys, src_ref, target.ref)
    audit.extras = [k for k in linked if k not in live]
    if not audit.extras:
        return
    links = await engine._state(engine.store.links_for, src_ref, target.ref, audit.extras[:FIRST])
    for key in audit.extras:
        note = "deleted at the source" if key in gone else "not in the source"
        link = links.get(key)
        if link is not None and state.by_key is not None and link.dst_key not in state.by_key:
            note += f"; {target.ref} no longer has {link.dst_key} either: only the link is left"
        audit.extra.add(key, note)


# -- the repair ---------------------------------------------------------------------------------
@dataclass(slots=True)
class RepairPlan:
    """What a repair would write, per target, as the engine's planner decides it."""

    lines: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    withheld: int = 0
    #: differences no run can fix (said why): the audit after the repair still shows them
    left: list[str] = field(default_factory=list)
    #: hand-made duplicates to delete, per target ref
    strays: dict[str, list[str]] = field(default_factory=dict)

    def note(self, op: str, line: str) -> None:
        self.counts[op] = self.counts.get(op, 0) + 1
        self.lines.append(line)


def _links_after(audit: TargetAudit) -> dict[str, Link]:
    """The links as the repair leaves them: lost records unlinked, stale and duplicated
    ones without their source fingerprint (so a run updates them through the link)."""
    from ferryman.state import Link

    out: dict[str, Link] = {}
    unlink, refresh = set(audit.unlink), set(audit.refresh)
    for key, link in audit.links.items():
        if key in unlink:
            continue
        if key in refresh:
            link = Link(link.src_key, link.dst_key, None, link.dst_fp, link.write_count, link.window_start)
        out[key] = link
    return out


async def plan_repair(engine: Any, name: str, report: AuditReport) -> RepairPlan:
    """The writes the repair run would make for what ``report`` found, planned by the
    engine's own :func:`plan_one_way` (creates, updates; deletes or withholds by
    ``deletes.enabled``), plus hand-made duplicates to delete."""
    from ferryman.connector import Capability
    from ferryman.planning import plan_one_way
    from ferryman.timeutil import utcnow

    pipeline = engine.config.pipeline(name)
    src_ref = pipeline.source
    plan = RepairPlan()
    targets = {t.ref: t for t in (await engine._targets(pipeline, f"pipelines.{name}"))[2]}
    for audit in report.targets:
        target = targets[audit.ref]
        looks_up = (
            not target.transactional and target.info.can(Capability.FIND) and pipeline.lookup != "never"
        )  # a full run looks creates up first (see Engine._should_look_up)
        items = sorted(audit.items.values(), key=lambda item: item[0].key)
        links = _links_after(audit)
        extras = [(target.info.record_type(key=k, updated_at=utcnow(), deleted=True), "") for k in audit.extras]
        extra_links = await engine._state(engine.store.links_for, src_ref, audit.ref, audit.extras)
        actions: list[Action] = plan_one_way(
            [*items, *extras],
            {**links, **extra_links},
            deletes_enabled=pipeline.deletes.enabled,
            delete_action=pipeline.deletes.action,
        )
        for action in actions:
            if action.op == "skip":
                continue
            line = f"{action.op:<8} {audit.ref} <- {src_ref}#{action.src_key}"
            if action.dst_key:
                line += f" (as {action.dst_key})"
            if action.op == "create" and looks_up:
                line += " (looked up first: linked if the target has it)"
            if action.op == "withhold":
                line += " (deletes.enabled is off: the target keeps it)"
                plan.withheld += 1
            plan.note(action.op, line)
        plan.left += audit.shared
        why = _strays_withheld(pipeline, target, audit)
        for stray, of in audit.strays:
            if why is None:
                plan.strays.setdefault(audit.ref, []).append(stray)
                plan.note("delete", f"{'delete':<8} {audit.ref} {stray} (a duplicate of {src_ref}#{of} made by hand)")
            else:
                plan.withheld += 1
                plan.note("withhold", f"{'withhold':<8} {audit.ref} {stray} (a duplicate of {src_ref}#{of}; {why})")
    return plan


def _strays_withheld(pipeline: Any, target: Any, audit: TargetAudit) -> str | None:
    """Why the hand-made duplicates in ``target`` are not deleted, or ``None`` to delete them:
    under the pipeline's delete rules, as a run's deletes are."""
    from ferryman.connector import Capability

    if not audit.strays:
        return None
    if not pipeline.deletes.enabled:
        return "deletes.enabled is off"
    if not target.info.can(Capability.DELETE):
        return f"{target.ref} cannot delete records"
    share = len(audit.strays) / max(audit.linked, 1)
    if share > pipeline.deletes.max_share:
        return (
            f"{len(audit.strays)} of {audit.linked} ({share:.0%}) is over deletes.max_share "
            f"{pipeline.deletes.max_share:.0%}: delete them by hand"
        )
    return None


async def apply_repair(engine: Any, name: str, report: AuditReport, plan: RepairPlan) -> Any:
    """Carry the repair out; the caller holds the pipeline's lease. Returns the run's
    :class:`~ferryman.engine.RunResult`."""
    from ferryman.engine import Engine
    from ferryman.state import PageCommit

    pipeline = engine.config.pipeline(name)
    src_ref = pipeline.source
    commit = PageCommit(name)
    for audit in report.targets:
        refreshed = _links_after(audit)
        if audit.refresh:
            commit.links[(src_ref, audit.ref)] = [refreshed[k] for k in dict.fromkeys(audit.refresh)]
        if audit.unlink:
            commit.unlinks[(src_ref, audit.ref)] = list(dict.fromkeys(audit.unlink))
    if commit.links or commit.unlinks:
        await engine._state(engine.store.commit_page, commit)  # fenced: only while the lease is ours
    if plan.strays:
        targets = {t.ref: t for t in (await engine._targets(pipeline, f"pipelines.{name}"))[2]}
        for ref, strays in plan.strays.items():
            for stray in strays:
                await engine._state(engine.store.self_fence, name, now=True)  # as before any write of a run
                await targets[ref].connector.delete(targets[ref].stream, stray)
    runner = engine
    if any(a.extras for a in report.targets):
        # the run's delete probe takes a linked key its full pass did not see as deleted when
        # the source answers that it no longer has it: the extras, planned like any delete
        deletes = pipeline.deletes.model_copy(
            update={
                "probe": True,
                "probe_max": max(pipeline.deletes.probe_max, *(len(a.extras) for a in report.targets)),
            }
        )
        patched = engine.config.model_copy(
            update={"pipelines": {**engine.config.pipelines, name: pipeline.model_copy(update={"deletes": deletes})}}
        )
        runner = Engine(patched, engine.store, services=engine.services)
    try:
        return await runner.run(name, full=True, trigger="audit")
    finally:
        if runner is not engine:
            await runner.aclose()


# -- the command --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", metavar="PIPELINE", help="a one-way pipeline")
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    parser.add_argument(
        "--sample", type=_positive, metavar="N", help="stop the source pass after N records (the report says so)"
    )
    parser.add_argument(
        "--repair", action="store_true", help="show the fix an ordinary run would make, ask, then apply it"
    )
    parser.add_argument("--yes", action="store_true", help="with --repair: do not ask")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """The handler of ``ferryman audit``."""
    import asyncio

    from ferryman.app import load, open_store

    if args.yes and not args.repair:
        print("ferryman audit: --yes goes with --repair", file=sys.stderr)
        return EXIT_USAGE
    if args.repair and args.sample:
        print("ferryman audit: --repair needs the full pass; leave out --sample", file=sys.stderr)
        return EXIT_USAGE
    config = load(args)
    pipeline = config.pipeline(args.pipeline)
    if pipeline.direction == "both":
        print(
            f"ferryman audit: pipeline {args.pipeline} is two-way (direction: both): "
            "two-way pipelines are not audited yet",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.repair and args.json and not args.yes:
        print("ferryman audit: --repair --json cannot ask: pass --yes too", file=sys.stderr)
        return EXIT_USAGE
    if args.repair and not args.yes and not sys.stdin.isatty():
        print("ferryman audit: --repair asks before writing; pass --yes to apply without asking", file=sys.stderr)
        return EXIT_USAGE
    store = open_store(config)
    return asyncio.run(_run(args, config, store))


async def _run(args: argparse.Namespace, config: Any, store: Any) -> int:
    import asyncio

    from ferryman import terminal
    from ferryman.app import services
    from ferryman.engine import Engine
    from ferryman.redact import redact

    name = args.pipeline
    engine = Engine(config, store, services=services(config, store))
    out = terminal.Output()
    held = False
    try:
        keep_alive = None
        if args.repair:
            # held from before the audit reads until the repair run ends: a run in between
            # would make the findings, and the link changes made from them, wrong
            if not await engine._state(store.acquire_lease, name, config.state.lease_ttl):
                holder = await engine._state(store.lease_holder, name)
                print(
                    f"ferryman audit: {name} is running on {holder[0] if holder else 'another instance'}; "
                    "try again when it is done",
                    file=sys.stderr,
                )
                return EXIT_BUSY
            held = True
            keep_alive = _renewer(engine, name)
        try:
            with terminal.run_logs(sys.stderr):
                report = await audit_pipeline(engine, name, sample=args.sample, keep_alive=keep_alive)
        except DeferredError as exc:
            print(f"ferryman audit: {name}: deferred: {redact(str(exc))}", file=sys.stderr)
            return EXIT_DEFERRED
        except (FerrymanError, OSError) as exc:
            if isinstance(exc, ConfigError | StateUnavailable):
                raise
            print(f"ferryman audit: {name}: failed: {redact(str(exc))}", file=sys.stderr)
            return EXIT_DIFFERENCES
        if args.json and not (args.repair and not report.clean):
            out.line(terminal.to_json(report.as_json()))
            return EXIT_CLEAN if report.clean else EXIT_DIFFERENCES
        say = (lambda _line: True) if args.json else out.line
        for line in report.lines():
            say(line)
        if not args.repair or report.clean:
            return EXIT_CLEAN if report.clean else EXIT_DIFFERENCES
        plan = await plan_repair(engine, name, report)
        say(f"repair plan ({', '.join(f'{op} {n}' for op, n in sorted(plan.counts.items())) or 'nothing'}):")
        for line in plan.lines:
            say(f"  {line}")
        say("  then a full run of the pipeline (it also delivers anything else changed meanwhile)")
        for line in plan.left:
            say(f"  left for a person: {line}")
        if not args.yes:
            answer = await asyncio.to_thread(input, f"Apply this repair to {name}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                say("nothing changed")
                return EXIT_DIFFERENCES
            # a person may take a while: the lease must still be ours before anything is written
            if not await engine._state(store.renew_lease, name, config.state.lease_ttl):
                print(f"ferryman audit: {name}: the lease passed to another holder; nothing changed", file=sys.stderr)
                return EXIT_BUSY
        try:
            with terminal.run_logs(sys.stderr):
                result = await apply_repair(engine, name, report, plan)
        except (FerrymanError, OSError) as exc:
            if isinstance(exc, ConfigError | StateUnavailable):
                raise
            print(f"ferryman audit: {name}: repair failed: {redact(str(exc))}", file=sys.stderr)
            return EXIT_DIFFERENCES
        say(f"repair: {result.summary()}")
        if plan.withheld:
            say(f"  {plan.withheld} withheld: the targets keep them (see the plan above)")
        if args.json:
            doc = {
                "audit": report.as_json(),
                "plan": {"counts": plan.counts, "actions": plan.lines, "withheld": plan.withheld, "left": plan.left},
                "repair": {"outcome": result.outcome, "counts": result.counts, "message": result.message},
            }
            out.line(terminal.to_json(doc))
        if result.outcome != "ok":
            return EXIT_DEFERRED if result.outcome == "deferred" else EXIT_DIFFERENCES
        extras = sum(len(a.extras) for a in report.targets)
        settled = result.counts.get("deleted", 0) + result.counts.get("withheld", 0)
        if settled < extras:
            # the run's delete probe needs the source to answer "gone" for a key (get by key)
            say(
                f"  {extras - settled} extra(s) not settled: {report.source} could not confirm they are gone "
                "(it cannot fetch a record by key); delete them in the target by hand"
            )
            return EXIT_DIFFERENCES
        if plan.withheld or plan.left:
            return EXIT_DIFFERENCES
        say(f"  `ferryman audit {name}` again to confirm")
        return EXIT_CLEAN
    finally:
        if held:
            await engine._state(store.release_lease, name)
        await engine.aclose()


def _renewer(engine: Any, name: str) -> Callable[[], Awaitable[None]]:
    """Renew the audit's lease between pages, as a run does (a third of the TTL)."""
    from ferryman.errors import LeaseLost

    ttl = engine.config.state.lease_ttl
    last = time.monotonic()

    async def renew() -> None:
        nonlocal last
        if time.monotonic() - last > ttl.total_seconds() / 3:
            if not await engine._state(engine.store.renew_lease, name, ttl):
                raise LeaseLost(f"pipeline {name}: the audit's lease passed to another holder during the audit")
            last = time.monotonic()

    return renew


def _register(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="compare a pipeline's source and targets without trusting the cursor (--repair fixes)",
        description=DESCRIPTION,
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=run)


#: commands for :func:`ferryman.cli.build_parser` (name -> :data:`ferryman.app.Register`)
COMMANDS: dict[str, Callable[[Any, str], None]] = {"audit": _register}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ferryman.audit [-c CONFIG] PIPELINE ...``: ``ferryman audit``, with its errors and exit codes."""
    from ferryman.app import main_for

    return main_for("audit", _register, argv)


if __name__ == "__main__":
    sys.exit(main())
