"""``ferryman conflicts list|restore``: the conflict journal, and putting lost values back.

Where a sync overwrote values in a record that had changed since the last sync (a two-way
conflict a policy resolved; with ``journal.check_target``, a one-way target edited by hand),
the run journals what was lost (:mod:`ferryman.state.history`). ``list`` shows the entries:
where, which policy, why, and each field as ``lost -> won``. Read-only, like ``status``.

``restore ID`` writes an entry's lost values back into the record they were lost from,
through the same connector a run writes with: it holds the pipeline's lease (a run in
progress: busy, exit 5), reads the record as it is now, overlays the lost values and
updates it after the engine's self-fence. Rules:

- a value the journal masked (``***``: a secret-like field or one in ``journal.redact``) was
  never kept and is never restored: it is named and left as it is;
- a lost field the record's type no longer has refuses the whole restore, naming it;
- a record that no longer exists refuses (nothing to write into), and so does an entry
  restored already;
- the link is not touched: the next run sees the record changed on that side and carries it
  on like any edit (two-way: to the other side). A one-way target is written again by the
  next update of its source record, and the output says so.

Then the entry is marked restored and a ``restore`` event recorded for ``ferryman explain``.

Registered as a CLI command through :data:`COMMANDS` (like :mod:`ferryman.rewind`);
``python -m ferryman.conflicts [--config FILE] list|restore ...`` runs it standalone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ferryman.app import EXIT_BUSY, EXIT_CONFIG, EXIT_DEFERRED, EXIT_FAILED, EXIT_OK, EXIT_TEMPFAIL, EXIT_USAGE
from ferryman.redact import MASK

if TYPE_CHECKING:
    from ferryman.config import FerrymanConfig, PipelineConfig
    from ferryman.engine import Engine
    from ferryman.records import Record
    from ferryman.state import StateStore
    from ferryman.state.history import Conflict

__all__ = ["COMMANDS", "RestorePlan", "RestoreRefused", "list_lines", "main", "plan_restore"]


#: how much of one value, and of a reason, ``list`` shows (JSON has them whole)
VALUE_WIDTH = 40
REASON_WIDTH = 160
#: fields a restore never writes: the record's identity and its modification time
_NOT_RESTORED = frozenset({"key", "updated_at"})


class RestoreRefused(Exception):
    """The entry cannot be restored as it stands (exit 1): the message names why."""


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """What a restore writes: the record with the lost values overlaid, and per field the
    value it holds now and the one it gets back."""

    record: Record
    changes: list[tuple[str, Any, Any]]  # (field, current, restored), only those that differ
    same: list[str]  # lost values the record holds again already
    masked: list[str]  # masked in the journal: never restored
    skipped: list[str]  # identity and timing fields: never written back


# -- pure rules ----------------------------------------------------------------------------------


def plan_restore(entry: Conflict, current: Record) -> RestorePlan:
    """``current`` (the record as ``entry.system`` holds it now) with ``entry``'s lost values
    overlaid. Raises :class:`RestoreRefused` naming a lost field the record's type no longer
    has, or a lost value that is no longer valid for it."""
    from pydantic import ValidationError

    model = type(current)
    masked = sorted(name for name, value in entry.lost.items() if value == MASK)
    skipped = sorted(name for name in entry.lost if name in _NOT_RESTORED and name not in masked)
    wanted = {name: value for name, value in entry.lost.items() if value != MASK and name not in _NOT_RESTORED}
    unknown = sorted(name for name in wanted if name not in model.model_fields)
    if unknown:
        raise RestoreRefused(
            f"journal entry #{entry.id}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} no longer a "
            f"field of {model.kind} records in {entry.system}; nothing restored"
        )
    try:
        restored = model.model_validate({**current.model_dump(), **wanted})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise RestoreRefused(
            f"journal entry #{entry.id}: the lost values are no longer valid for a {model.kind} record in "
            f"{entry.system} ({problems}); nothing restored"
        ) from None
    before, after = current.model_dump(mode="json"), restored.model_dump(mode="json")
    changes = [
        (name, before.get(name), after.get(name)) for name in sorted(wanted) if before.get(name) != after.get(name)
    ]
    same = sorted(name for name in wanted if before.get(name) == after.get(name))
    return RestorePlan(restored, changes, same, masked, skipped)


def _value(value: Any, width: int | None = VALUE_WIDTH) -> str:
    from ferryman.redact import redact

    text = redact(repr(value) if isinstance(value, str) else "null" if value is None else str(value))
    if width is not None and len(text) > width:
        text = text[: width - 3] + "..."
    return text


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _where(entry: Conflict) -> str:
    source = f", source key {entry.src_key}" if entry.src_key is not None and entry.src_key != entry.record_key else ""
    return f"{entry.system}#{entry.record_key} ({entry.side} side{source})"


def list_lines(entries: Sequence[Conflict], *, show_all: bool) -> list[str]:
    """What ``conflicts list`` prints: per entry a head line, the reason, and each field as
    ``lost -> won``, values cut to :data:`VALUE_WIDTH`."""
    from ferryman.redact import redact
    from ferryman.terminal import clock

    if not entries:
        return ["no journal entries" if show_all else "no open journal entries"]
    lines: list[str] = []
    for entry in entries:
        status = entry.status
        if entry.status == "restored" and entry.restored_at is not None:
            status = f"restored {clock(entry.restored_at)}"
        lines.append(f"#{entry.id} [{status}] {clock(entry.at)} {entry.pipeline}: {_where(entry)}, {entry.policy}")
        lines.append(f"    {_cut(redact(entry.reason), REASON_WIDTH)}")
        for name in sorted(set(entry.lost) | set(entry.won)):
            lost = entry.lost.get(name)
            shown = f"{MASK} (masked: not restorable)" if lost == MASK else _value(lost)
            lines.append(f"    {name}: {shown} -> {_value(entry.won.get(name))}")
    open_ = sum(e.status == "open" for e in entries)
    if open_:
        lines.append(f"{open_} open: `ferryman conflicts restore ID --dry-run` shows what a restore writes back")
    return lines


# -- list ----------------------------------------------------------------------------------------


def _stderr(message: str) -> None:
    from ferryman.redact import redact

    print(f"ferryman conflicts: {redact(message)}", file=sys.stderr)


def _list(args: argparse.Namespace) -> int:
    from ferryman import terminal
    from ferryman.app import open_store
    from ferryman.explain import load_read_only, unknown_pipeline

    config = load_read_only(args)
    store = open_store(config)
    try:
        entries = store.history.conflicts(args.pipeline, status=None if args.all else "open")
        if args.pipeline and args.pipeline not in config.pipelines:
            # a pipeline removed from the config may still have entries: list them; otherwise a typo
            known = store.history.conflicts(args.pipeline, status=None, limit=1)
            if not known:
                _stderr(unknown_pipeline(config, args.pipeline))
                return EXIT_CONFIG
    finally:
        store.close()
    entries.sort(key=lambda e: e.id)  # oldest first, as a person reads down a journal
    out = terminal.Output()
    if args.json:
        out.line(terminal.to_json([e.as_dict() for e in entries]))
        return EXIT_OK
    for line in list_lines(entries, show_all=args.all):
        if not out.line(line):
            break
    return EXIT_OK


# -- restore -------------------------------------------------------------------------------------


def _restore(args: argparse.Namespace) -> int:
    import asyncio

    from ferryman.app import load, open_existing_store, open_store

    if not args.dry_run and not args.yes and not sys.stdin.isatty():
        _stderr(
            f"restore writes journal entry #{args.id}'s lost values into the record; pass --yes to confirm "
            "(or --dry-run to look first)"
        )
        return EXIT_USAGE
    config = load(args)  # with secrets: the restore reaches the system
    # a dry run writes nothing, not even a state database that does not exist yet
    store = open_existing_store(config.state.resolved_url(), config.instance) if args.dry_run else open_store(config)
    try:
        entry = store.history.conflict(args.id)
        if entry is None:
            _stderr(f"no journal entry #{args.id} (`ferryman conflicts list --all` lists them)")
            return EXIT_FAILED
        if entry.status != "open":
            _stderr(_restored_already(entry))
            return EXIT_FAILED
        pipeline = config.pipelines.get(entry.pipeline)
        if pipeline is None:
            from ferryman.explain import unknown_pipeline

            _stderr(
                f"journal entry #{entry.id} belongs to {unknown_pipeline(config, entry.pipeline)}; nothing restored"
            )
            return EXIT_FAILED
        system = entry.system.split(".", 1)[0]
        if system not in config.systems or "." not in entry.system:
            _stderr(
                f"journal entry #{entry.id}: system {system!r} ({entry.system}) is not in the config; nothing restored"
            )
            return EXIT_FAILED
        return asyncio.run(_restore_entry(args, config, store, pipeline, entry))
    finally:
        store.close()


def _restored_already(entry: Conflict) -> str:
    from ferryman.terminal import clock

    when = f" at {clock(entry.restored_at)}" if entry.restored_at is not None else ""
    status = "" if entry.status == "restored" else f" (status {entry.status})"
    return f"journal entry #{entry.id} was restored already{when}{status}; nothing written"


async def _restore_entry(
    args: argparse.Namespace, config: FerrymanConfig, store: StateStore, pipeline: PipelineConfig, entry: Conflict
) -> int:
    import asyncio

    from ferryman import terminal
    from ferryman.app import services
    from ferryman.engine import Engine
    from ferryman.errors import (
        ConfigError,
        DeferredError,
        FerrymanError,
        LeaseLost,
        RecordRejected,
        RetriableError,
        StateError,
    )

    name = entry.pipeline
    system, stream = entry.system.split(".", 1)
    engine = Engine(config, store, services=services(config, store))
    out = terminal.Output()
    held = False
    try:
        if not args.dry_run:
            if not await engine._state(store.acquire_lease, name, config.state.lease_ttl):
                holder = await engine._state(store.lease_holder, name)
                _stderr(f"busy: {name} is running on {holder[0] if holder else 'another instance'}; nothing restored")
                return EXIT_BUSY
            held = True
            # under the lease: another restore may have finished since the entry was read
            again = await engine._state(store.history.conflict, entry.id)
            if again is None or again.status != "open":
                _stderr(_restored_already(again or entry))
                return EXIT_FAILED
        try:
            connector = await engine.system(system)
            with terminal.run_logs(sys.stderr):
                current = await connector.get(stream, entry.record_key)
        except (ConfigError, StateError):  # the CLI's own exit codes (78; 75 for an outage)
            raise
        except DeferredError as exc:
            _stderr(f"{entry.system} asked to wait: {exc}; nothing restored")
            return EXIT_DEFERRED
        except (RetriableError, OSError) as exc:
            _stderr(f"could not read {entry.system}#{entry.record_key}: {exc}; nothing restored")
            return EXIT_TEMPFAIL
        except FerrymanError as exc:
            _stderr(f"could not read {entry.system}#{entry.record_key}: {exc}; nothing restored")
            return EXIT_FAILED
        if current is None:
            _stderr(f"record {entry.record_key} no longer exists in {entry.system}; nothing restored")
            return EXIT_FAILED
        try:
            plan = plan_restore(entry, current)
        except RestoreRefused as exc:
            _stderr(str(exc))
            return EXIT_FAILED
        for line in _plan_lines(entry, plan):
            out.line(line)
        if not plan.changes and not plan.same:
            _stderr(f"journal entry #{entry.id}: every lost value was masked; nothing can be restored")
            return EXIT_FAILED
        if args.dry_run:
            out.line("dry run: nothing written")
            return EXIT_OK
        if plan.changes and not args.yes:
            answer = await asyncio.to_thread(_ask, f"Write these values into {entry.system}#{entry.record_key}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                out.line("nothing written")
                return EXIT_FAILED
        if plan.changes:
            try:
                await engine._fence(name, now=True)  # a person may have taken a while: the lease must still be ours
            except LeaseLost:
                holder = await engine._state(store.lease_holder, name)
                _stderr(
                    f"busy: the lease of {name} passed to {holder[0] if holder else 'another holder'}; nothing restored"
                )
                return EXIT_BUSY
            try:
                with terminal.run_logs(sys.stderr):
                    await connector.update(stream, entry.record_key, plan.record)
            except RecordRejected as exc:
                _stderr(
                    f"{entry.system} refused the restored values for record {entry.record_key}: {exc}; "
                    f"nothing restored (journal entry #{entry.id} stays open)"
                )
                return EXIT_FAILED
            except DeferredError as exc:
                _stderr(f"{entry.system} asked to wait: {exc}; nothing restored (journal entry #{entry.id} stays open)")
                return EXIT_DEFERRED
            except (RetriableError, OSError) as exc:
                sent = (
                    ""
                    if getattr(exc, "unprocessed", False)
                    else " (the update may have reached it: look at the record)"
                )
                _stderr(
                    f"could not reach {entry.system} to update record {entry.record_key}: {exc}{sent}; journal "
                    f"entry #{entry.id} stays open: run the restore again (it writes the same values)"
                )
                return EXIT_TEMPFAIL
            except FerrymanError as exc:
                if isinstance(exc, ConfigError | StateError):
                    raise
                _stderr(
                    f"updating record {entry.record_key} in {entry.system} failed: {exc}; journal entry "
                    f"#{entry.id} stays open"
                )
                return EXIT_FAILED
        await engine._state(store.history.mark_restored, entry.id)
        await engine._state(store.history.add, name, None, [await _event(engine, pipeline, entry, plan)])
        for line in _done_lines(pipeline, entry, plan):
            out.line(line)
        return EXIT_OK
    finally:
        if held:
            await engine._state(store.release_lease, name)
        await engine.aclose()


def _ask(prompt: str) -> str:
    try:
        return input(prompt)
    except EOFError:  # the terminal closed: no answer is no
        return ""


def _plan_lines(entry: Conflict, plan: RestorePlan) -> list[str]:
    lines = [f"journal entry #{entry.id}: {_where(entry)}, lost to {entry.policy}"]
    for name, current, restored in plan.changes:
        lines.append(f"  {name}: {_value(current, None)} -> {_value(restored, None)}")
    for name in plan.same:
        lines.append(f"  {name}: holds the lost value {_value(entry.lost[name], None)} already")
    for name in plan.masked:
        lines.append(f"  {name}: not restored: masked in the journal ({MASK}), its value was never kept")
    for name in plan.skipped:
        lines.append(f"  {name}: not restored: a record's {name} is never written back")
    return lines


def _done_lines(pipeline: PipelineConfig, entry: Conflict, plan: RestorePlan) -> list[str]:
    written = ", ".join(name for name, _c, _r in plan.changes)
    if written:
        head = f"#{entry.id}: restored {written} in {entry.system}#{entry.record_key}"
    else:
        head = f"#{entry.id}: {entry.system}#{entry.record_key} holds the lost values already; nothing written"
    lines = [head + "; the journal entry is marked restored"]
    if plan.masked:
        lines.append(f"  not restored (masked): {', '.join(plan.masked)}: set them by hand if they matter")
    if entry.side == "target":
        lines.append(
            f"  note: {entry.system} is a target of the one-way pipeline {entry.pipeline}: the next update of "
            f"{pipeline.source}#{entry.src_key or '?'} overwrites these values again; to keep them, change them "
            f"in {pipeline.source} too"
        )
    elif written and pipeline.direction == "both":
        other = pipeline.to[0] if entry.system == pipeline.source else pipeline.source
        lines.append(f"  the next run of {entry.pipeline} carries them to {other} like any edit")
    return lines


async def _event(engine: Engine, pipeline: PipelineConfig, entry: Conflict, plan: RestorePlan) -> Any:
    """The ``restore`` event for ``ferryman explain``: filed under the pipeline's source key,
    found through the link when the journal did not keep it."""
    from ferryman.state.history import NewEvent

    on_source = entry.system == pipeline.source
    src_key = entry.src_key or (entry.record_key if on_source else None)
    if src_key is None:
        links = await engine._state(engine.store.links_by_dst, pipeline.source, entry.system, [entry.record_key])
        link = links.get(entry.record_key)
        src_key = link.src_key if link is not None else entry.record_key
    fields = tuple(name for name, _c, _r in plan.changes)
    detail = f"journal #{entry.id}: " + (
        f"lost values written back ({', '.join(fields)})" if fields else "the record held the lost values already"
    )
    if plan.masked:
        detail += f"; masked, not restored: {', '.join(plan.masked)}"
    return NewEvent(
        source=pipeline.source,
        src_key=src_key,
        action="restore",
        target=None if on_source else entry.system,
        target_key=None if on_source else entry.record_key,
        fields=fields,
        detail=detail,
    )


# -- the command ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """The handler of ``ferryman conflicts``."""
    if args.conflicts_command == "list":
        return _list(args)
    return _restore(args)


DESCRIPTION = """\
The conflict journal: values a sync overwrote in a record that had changed since the last
sync. Two-way pipelines journal every conflict a policy resolves (the losing side's values);
one-way pipelines with journal.check_target journal a target record edited by hand before an
update overwrote it. Fields named like secrets, and those in journal.redact, are kept masked
(***) and can never be restored. Entries are kept for history.journal_retention."""

LIST_DESCRIPTION = """\
Open journal entries (--all: restored ones too), oldest first: id, when, pipeline, where
(system.stream and the record's key there), the policy that decided, why, and each field as
lost -> won. Values are cut to a readable width here and whole in --json. Read-only: needs no
secrets and creates no state database."""

RESTORE_DESCRIPTION = """\
Write journal entry ID's lost values back into the record they were lost from, through the
system's connector as a run would: under the pipeline's lease, reading the record as it is
now and overlaying the lost values (--dry-run shows field: current -> restored and writes
nothing). Masked values are named and not restored. The link is left as it is: the next run
sees the record changed and carries it on like any edit (two-way: to the other side); a
one-way target is overwritten again by the next update of its source record."""

LIST_EPILOG = """\
exit status:
  0   done (also when there is no entry)
  2   usage error
  75  the state database is unavailable
  78  configuration error (an unknown pipeline: did you mean ...)
"""

RESTORE_EPILOG = """\
exit status:
  0   restored (or --dry-run)
  1   refused: no such entry, restored already, the record no longer exists, a lost field the
      record no longer has, every value masked, the system refused the values, or declined
  2   usage error (no --yes without a terminal)
  3   the system asked us to wait (Retry-After)
  5   busy: the pipeline is running elsewhere
  75  the system or the state database could not be reached (the entry stays open)
  78  configuration error
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="conflicts_command", metavar="ACTION", required=True)
    p = sub.add_parser(
        "list",
        help="journal entries: where, policy, why, and each field lost -> won",
        description=LIST_DESCRIPTION,
        epilog=LIST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", nargs="?", metavar="PIPELINE", help="only this pipeline's entries")
    p.add_argument("--all", action="store_true", help="include restored entries")
    p.add_argument("--json", action="store_true", help="machine-readable output (values whole)")
    p = sub.add_parser(
        "restore",
        help="write an entry's lost values back into the record (masked values are not restored)",
        description=RESTORE_DESCRIPTION,
        epilog=RESTORE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("id", type=int, metavar="ID", help="the journal entry (`ferryman conflicts list`)")
    p.add_argument("--dry-run", action="store_true", help="print field: current -> restored; write nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _register(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="the conflict journal: list overwritten values, restore them",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=run)


#: commands for :func:`ferryman.cli.build_parser` (name -> :data:`ferryman.app.Register`)
COMMANDS: dict[str, Callable[[Any, str], None]] = {"conflicts": _register}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ferryman.conflicts [-c CONFIG] list|restore ...``: ``ferryman conflicts``, with its errors and exit codes."""
    from ferryman.app import main_for

    return main_for("conflicts", _register, argv)


if __name__ == "__main__":
    sys.exit(main())
