"""``ferryman rewind PIPELINE --to TIME``: set a pipeline's cursor back to a typed time.

The new cursor is ``Cursor(TIME, "")``: every record at or after ``TIME`` is due again
(:func:`ferryman.cursor.is_due`). The re-read is harmless: links keep each record's
fingerprint, so the next run skips what did not change. Before anything changes the
command reads the source from there, exactly as the next run will (``overlap`` earlier,
:func:`ferryman.cursor.read_from`), and says how many records that run reads. Rules:

- never forward: a cursor moved past records that were not delivered loses them, so a
  ``TIME`` later than the current cursor is refused, naming both;
- no cursor yet: refused, the next run reads everything anyway;
- the change is made under the pipeline's lease (a run in progress: busy, exit 5) and
  touches the cursor only (:meth:`ferryman.state.StateStore.hold_cursor`): links,
  checkpoints, intents and dead letters stay as they are;
- a two-way pipeline has one cursor per side (state sides ``a``, the ``from`` side, and
  ``b``, the ``to`` side); ``--side`` chooses, default both.

Registered as a CLI command through :data:`COMMANDS` (like :mod:`ferryman.scaffold`);
``python -m ferryman.rewind [--config FILE] PIPELINE --to TIME ...`` runs it standalone.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from ferryman.app import EXIT_BUSY, EXIT_DEFERRED, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from ferryman.cursor import Cursor, effective_overlap, is_due, read_from

if TYPE_CHECKING:
    from ferryman.config import FerrymanConfig, PipelineConfig
    from ferryman.engine import Engine
    from ferryman.state import StateStore

__all__ = [
    "COMMANDS",
    "ReadCount",
    "RewindRefused",
    "RewindUsage",
    "SidePlan",
    "count_next_read",
    "parse_to",
    "plan_sides",
    "sides_of",
]


SideChoice = Literal["from", "to", "both"]
_EPOCH_ONLY = re.compile(r"\s*-?\d+(\.\d+)?\s*")


class RewindUsage(ValueError):
    """The command was asked something malformed (exit 2): the message names the value."""


class RewindRefused(Exception):
    """The rewind would be unsafe or pointless given the pipeline's state (exit 1)."""


@dataclass(frozen=True, slots=True)
class SidePlan:
    """One cursor a rewind moves: its state side, which end of the pipeline it reads, where
    it is and where it goes."""

    side: str  # the state store's side: "forward" (one-way), "a" or "b" (two-way)
    label: str  # "from" or "to", as the user names it
    ref: str  # the system.stream that side reads
    current: Cursor
    target: Cursor

    @property
    def moves(self) -> bool:
        return self.target != self.current


@dataclass(frozen=True, slots=True)
class ReadCount:
    """What the next run reads on one side after the rewind."""

    reads: int  # records the next run reads (what its summary will call ``read``)
    at_or_after: int  # of them, at or after the new cursor
    pending: int  # of them, changed after the current cursor: read by the next run anyway
    rejects: int  # rows that do not validate (dead-lettered again, not counted in reads)
    overlap: timedelta  # how far before the new cursor the read starts

    @property
    def in_overlap(self) -> int:
        return self.reads - self.at_or_after


# -- pure rules ------------------------------------------------------------------------------


def parse_to(text: str) -> datetime:
    """``--to``: an ISO 8601 time with a zone (``Z`` or an offset), as aware UTC.

    A time without a zone is refused rather than guessed (whose midnight?), and so is a bare
    number, which :func:`ferryman.timeutil.parse_datetime` would take as epoch seconds
    (``--to 2026`` is not 33 minutes after 1970)."""
    from ferryman.timeutil import NaiveDatetimeError, parse_datetime

    if _EPOCH_ONLY.fullmatch(text):
        raise RewindUsage(f"--to {text!r} is not an ISO 8601 time (e.g. 2026-11-30T00:00:00Z)")
    try:
        return parse_datetime(text)
    except NaiveDatetimeError:
        raise RewindUsage(
            f"--to {text!r} has no timezone: add Z for UTC or an offset (e.g. {text.strip()}Z or +01:00)"
        ) from None
    except ValueError as exc:
        raise RewindUsage(
            f"--to {text!r} is not an ISO 8601 time with a zone (e.g. 2026-11-30T00:00:00Z): {exc}"
        ) from None


def sides_of(pipeline: PipelineConfig, choice: SideChoice) -> list[tuple[str, str, str]]:
    """``(state side, label, system.stream)`` for each cursor ``choice`` names."""
    if pipeline.direction != "both":
        if choice == "to":
            raise RewindUsage(
                f"--side to: a one-way pipeline has one cursor, on its from side ({pipeline.source}); "
                "use --side from or leave --side out"
            )
        return [("forward", "from", pipeline.source)]
    sides = [("a", "from", pipeline.source), ("b", "to", pipeline.to[0])]
    return [s for s in sides if choice in ("both", s[1])]


def plan_sides(
    name: str, sides: Sequence[tuple[str, str, str]], cursors: Sequence[Cursor | None], to: datetime
) -> list[SidePlan]:
    """Check each side against the rules and say where its cursor goes. All or nothing:
    one side that cannot be rewound refuses the whole command, naming the side."""
    target = Cursor(to, "")
    plans: list[SidePlan] = []
    for (side, label, ref), current in zip(sides, cursors, strict=True):
        where = f"{name} ({label} side, {ref})" if side != "forward" else f"{name} ({ref})"
        if current is None:
            raise RewindRefused(f"nothing to rewind: {where} has no cursor yet; the next run reads everything anyway")
        if target > current:
            raise RewindRefused(
                f"{where}: --to {_when(target)} is later than the cursor {_when(current)}: never forward past "
                "undelivered records (a rewind only sets a cursor back; `ferryman sync` moves it forward as it delivers)"
            )
        plans.append(SidePlan(side, label, ref, current, target))
    return plans


def _when(cursor: Cursor) -> str:
    from ferryman.timeutil import format_utc

    return format_utc(cursor.updated_at) + (f" (key {cursor.key})" if cursor.key else "")


def _span(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# -- reading --------------------------------------------------------------------------------


async def count_next_read(engine: Engine, pipeline: PipelineConfig, plan: SidePlan) -> ReadCount:
    """Read ``plan``'s side from where the next run will start, as it will (same connector,
    page size, page cap and rate limits), and count; nothing is written anywhere."""
    from ferryman.sdk.readloop import MAX_PAGES, PageGuard

    system, stream = plan.ref.split(".", 1)
    connector = await engine.system(system)
    info = connector.stream(stream)
    since = read_from(plan.target, pipeline.overlap, info.precision)
    guard = PageGuard(system=connector.name, stream=info.name, cap=pipeline.max_pages)
    # a two-way run counts each key once (it keeps the newest version); a one-way run each record read
    distinct = pipeline.direction == "both"
    keys: set[str] = set()
    reads = at_or_after = pending = rejects = 0
    token = MAX_PAGES.set(pipeline.max_pages)
    try:
        async for page in connector.read(stream, since, pipeline.page_size):
            guard.fetched(None)
            rejects += len(page.rejects)
            for record in page.records:
                if distinct:
                    if record.key in keys:
                        continue
                    keys.add(record.key)
                reads += 1
                at_or_after += is_due(record, plan.target)
                pending += is_due(record, plan.current) and Cursor.of(record) != plan.current
    finally:
        MAX_PAGES.reset(token)
    window = effective_overlap(pipeline.overlap, info.precision)
    return ReadCount(reads, at_or_after, pending, rejects, window)


async def _count_all(
    config: FerrymanConfig, store: StateStore, pipeline: PipelineConfig, plans: list[SidePlan]
) -> list[ReadCount]:
    from ferryman.app import services
    from ferryman.engine import Engine

    engine = Engine(config, store, services=services(config, store))
    try:
        return [await count_next_read(engine, pipeline, plan) for plan in plans]
    finally:
        await engine.aclose()


# -- the command ---------------------------------------------------------------------------


def _describe(name: str, plan: SidePlan, count: ReadCount) -> list[str]:
    head = f"{name}: {plan.label} side ({plan.ref})" if plan.side != "forward" else f"{name}: {plan.ref}"
    if not plan.moves:
        return [f"{head}: the cursor is at {_when(plan.current)} already; nothing to change"]
    lines = [f"{head}: cursor {_when(plan.current)} -> {_when(plan.target)}"]
    detail = f"{count.at_or_after} at or after {_when(plan.target)}"
    if count.overlap:
        detail += f", {count.in_overlap} in the {_span(count.overlap)} overlap before it"
    lines.append(f"  the next run reads {count.reads} records: {detail}")
    if count.pending:
        lines.append(f"  ({count.pending} of them changed after the current cursor: the next run reads those anyway)")
    if count.rejects:
        lines.append(f"  and {count.rejects} rows that do not validate (dead-lettered again)")
    return lines


def _stderr(message: str) -> None:
    from ferryman.redact import redact

    print(f"ferryman rewind: {redact(message)}", file=sys.stderr)


def _current(store: StateStore, name: str, sides: Sequence[tuple[str, str, str]]) -> list[Cursor | None]:
    return [store.get_cursor(name, side) for side, _label, _ref in sides]


def run(args: argparse.Namespace) -> int:
    """The handler (``args.config``, ``args.log_level``, ``args.log_format`` come from the
    top-level parser)."""
    import asyncio

    from ferryman.app import load, open_existing_store
    from ferryman.errors import ConfigError, DeferredError, FerrymanError, StateError

    name: str = args.pipeline
    try:
        to = parse_to(args.to)
        config = load(args)
        pipeline = config.pipeline(name)
        sides = sides_of(pipeline, args.side)
    except RewindUsage as exc:
        _stderr(str(exc))
        return EXIT_USAGE
    if not args.dry_run and not args.yes and not sys.stdin.isatty():
        _stderr("rewind sets the cursor back; pass --yes to confirm (or --dry-run to look first)")
        return EXIT_USAGE
    # no database yet means no cursor: say so without creating one
    store = open_existing_store(config.state.resolved_url(), config.instance)
    try:
        try:
            plans = plan_sides(name, sides, _current(store, name, sides), to)
        except RewindRefused as exc:
            _stderr(str(exc))
            return EXIT_FAILED
        if not args.dry_run:
            holder = store.lease_holder(name)
            if holder is not None:  # before a read that may cost a pass over an API
                _stderr(f"busy: {name} is running on {holder[0]}; nothing changed")
                return EXIT_BUSY
        moving = [p for p in plans if p.moves]
        try:
            counts = asyncio.run(_count_all(config, store, pipeline, moving)) if moving else []
        except (ConfigError, StateError):
            raise
        except DeferredError as exc:
            _stderr(f"could not count what the next run reads: {exc}; nothing changed")
            return EXIT_DEFERRED
        except (FerrymanError, OSError) as exc:
            _stderr(f"could not count what the next run reads: {exc}; nothing changed")
            return EXIT_FAILED
        by_side = dict(zip((p.side for p in moving), counts, strict=True))
        total = sum(c.reads for c in counts)
        for plan in plans:
            count = by_side.get(plan.side, ReadCount(0, 0, 0, 0, timedelta(0)))
            for line in _describe(name, plan, count):
                print(line)
        if args.dry_run:
            print("dry run: nothing changed")
            return EXIT_OK
        if not moving:
            return EXIT_OK
        if not args.yes:
            try:
                answer = input(f"Set the cursor of {name} back (the next run reads {total} records)? [y/N] ")
            except EOFError:  # the terminal closed: no answer is no
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing changed")
                return EXIT_FAILED
        return _apply(store, config.state.lease_ttl, name, sides, to, total)
    finally:
        store.close()


def _apply(
    store: StateStore, ttl: timedelta, name: str, sides: Sequence[tuple[str, str, str]], to: datetime, total: int
) -> int:
    if not store.acquire_lease(name, ttl):
        holder = store.lease_holder(name)
        _stderr(f"busy: {name} is running on {holder[0] if holder else 'another instance'}; nothing changed")
        return EXIT_BUSY
    try:
        # a run may have moved (or a reset removed) a cursor while we counted: the rules again, under the lease
        try:
            plans = plan_sides(name, sides, _current(store, name, sides), to)
        except RewindRefused as exc:
            _stderr(f"{exc} (the cursor changed while the records were counted); nothing changed")
            return EXIT_FAILED
        for plan in plans:
            if plan.moves:
                store.hold_cursor(name, plan.target, plan.side)
    finally:
        store.release_lease(name)
    moved = ", ".join(f"{p.label} side" for p in plans if p.moves and p.side != "forward")
    print(
        f"{name}: cursor set back to {_when(plans[0].target)}"
        + (f" ({moved})" if moved else "")
        + f"; the next run reads {total} records from there (as counted) and skips the unchanged ones by "
        "their fingerprints"
    )
    return EXIT_OK


DESCRIPTION = """\
Set a pipeline's cursor back to TIME, so that the next run reads again every record
changed at or after it. Harmless by the fingerprints: links keep each record's
fingerprint, so the next run skips what did not change and writes only what did.

Before changing anything it reads the source from the new cursor exactly as the next run
will (from `overlap` earlier; page by page, within the system's rate limits) and prints how
many records that run reads. For a CSV source that is a read of the file; for an app it
costs one incremental pass over the API, the same requests the next run makes.

Refused: a TIME later than the current cursor (a rewind never moves a cursor forward, past
records that may not have been delivered), and a pipeline with no cursor yet (its next run
reads everything anyway). Only the cursor changes, under the pipeline's lease; links,
checkpoints and dead letters stay as they are. A two-way pipeline has a cursor per side:
--side from|to|both (default both)."""

EPILOG = """\
exit status:
  0   done (or --dry-run)
  1   refused (forward, no cursor yet), declined at the prompt, or the source could not be read
  2   usage error (--to without a zone, not ISO 8601; --side to on a one-way pipeline;
      no --yes without a terminal)
  3   the source asked us to wait (Retry-After) while counting
  5   busy: the pipeline is running elsewhere
  75  the state database is unavailable
  78  configuration error
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", metavar="PIPELINE", help="the pipeline's name in the config")
    parser.add_argument(
        "--to",
        required=True,
        metavar="TIME",
        help="ISO 8601 time with a zone: 2026-11-30T00:00:00Z or 2026-11-30T01:00:00+01:00",
    )
    parser.add_argument(
        "--side",
        choices=["from", "to", "both"],
        default="both",
        help="two-way pipelines: which side's cursor (default both; a one-way pipeline has only from)",
    )
    parser.add_argument("--dry-run", action="store_true", help="count what the next run would read; change nothing")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def _register(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="set a pipeline's cursor back to a time (the next run re-reads from there; unchanged records are skipped)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=run)


#: commands for :func:`ferryman.cli.build_parser` (name -> :data:`ferryman.app.Register`)
COMMANDS: dict[str, Callable[[Any, str], None]] = {"rewind": _register}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ferryman.rewind [-c CONFIG] PIPELINE ...``: ``ferryman rewind``, with its errors and exit codes."""
    from ferryman.app import main_for

    return main_for("rewind", _register, argv)


if __name__ == "__main__":
    sys.exit(main())
