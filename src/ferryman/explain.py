"""``ferryman explain PIPELINE KEY``: what happened to one record, and where it stands now.

The history is the pipeline's event table (:meth:`ferryman.state.history.History.events`):
one row per decision or write about the record, oldest first, each with its run, what was
done (create, update, skip, conflict, dead-letter, ...), in which target and under which
key there, the fingerprint of what was read, the fields a write changed and the reason or
the target's answer. ``KEY`` is the record's source key or a key it has in a target.

Then where it stands: its link in each of the pipeline's targets (for a two-way pipeline
the one link between its from and to sides), its open dead letters and the conflict-journal
entries that name it (``ferryman conflicts``). A record with no event and no link is said to
have none, naming ``history.events`` and ``history.retention``, which decide what is kept.

Read-only, like ``ferryman status``: the config is loaded without secrets and a state
database that does not exist yet is not created (:func:`load_read_only`).

Registered as a CLI command through :data:`COMMANDS` (like :mod:`ferryman.rewind`);
``python -m ferryman.explain [--config FILE] PIPELINE KEY`` runs it standalone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from ferryman.app import EXIT_CONFIG, EXIT_OK

if TYPE_CHECKING:
    from ferryman.config import FerrymanConfig, PipelineConfig
    from ferryman.state import DeadLetter, Link, StateStore
    from ferryman.state.history import Conflict, Event
    from ferryman.terminal import Style

__all__ = ["COMMANDS", "Explanation", "explain", "load_read_only", "main", "render", "unknown_pipeline"]

#: events shown by default (the newest ones, printed oldest first)
DEFAULT_LIMIT = 200

#: how an action is coloured on a terminal: a write, a decision worth a look, a failure
_ACTION_COLOUR = {
    "create": "green",
    "update": "green",
    "delete": "green",
    "link": "green",
    "restore": "green",
    "replay": "green",
    "withhold": "yellow",
    "conflict": "yellow",
    "unlink": "yellow",
    "loop": "yellow",
    "manual": "red",
    "dead-letter": "red",
    "error": "red",
}


@dataclass
class Explanation:
    """Everything ``explain`` found about one record."""

    pipeline: str
    key: str
    events: list[Event] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    limited: bool = False  # the event list was cut at --limit

    def as_json(self) -> dict[str, Any]:
        from ferryman.timeutil import format_utc

        return {
            "pipeline": self.pipeline,
            "key": self.key,
            "events": [e.as_dict() for e in self.events],
            "links": self.links,
            # no payload: explain is about what happened, `dlq list --json` has the record itself
            "dead_letters": [
                {
                    "id": x.id,
                    "src": x.src,
                    "dst": x.dst,
                    "ref": x.ref,
                    "src_key": x.src_key,
                    "kind": x.kind,
                    "reason": x.reason,
                    "status": x.status,
                    "attempts": x.attempts,
                    "created_at": format_utc(x.created_at),
                    "last_seen_at": format_utc(x.last_seen_at),
                }
                for x in self.dead_letters
            ],
            "conflicts": [c.as_dict() for c in self.conflicts],
        }


# -- shared with `ferryman conflicts` ------------------------------------------------------------


def load_read_only(args: argparse.Namespace) -> FerrymanConfig:
    """The config for a command that only reads state: no secret is resolved and no
    system's options are validated (a missing credential must not stop a look at history),
    logging set up as :func:`ferryman.app.load` does. The CLI then opens the state store
    without creating it (:func:`ferryman.app.open_store` on a read-only config)."""
    from ferryman import logs
    from ferryman.config import load_config

    config = load_config(args.config, systems=False, secrets=False)
    logs.configure(args.log_level or config.log.level, args.log_format or config.log.format)
    return config


def unknown_pipeline(config: FerrymanConfig, name: str) -> str:
    """The message for a pipeline that is not in the config, with "did you mean"."""
    from ferryman.config import did_you_mean

    known = ", ".join(sorted(config.pipelines)) or "none configured"
    where = f" in {config.file}" if config.file else ""
    return f"no pipeline named {name!r}{did_you_mean(name, config.pipelines)}{where} (pipelines: {known})"


# -- finding -------------------------------------------------------------------------------------


def _link_pairs(pipeline: PipelineConfig) -> list[tuple[str, str]]:
    """(src, dst) of the links a record of ``pipeline`` has: one per target, or for a
    two-way pipeline the one between its from and to sides."""
    if pipeline.direction == "both":
        return [(pipeline.source, pipeline.to[0])]
    return [(pipeline.source, target) for target in pipeline.to]


def _link_doc(src: str, dst: str, link: Link) -> dict[str, Any]:
    from ferryman.timeutil import format_utc

    return {
        "src": src,
        "dst": dst,
        "src_key": link.src_key,
        "dst_key": link.dst_key,
        "src_fp": link.src_fp,
        "dst_fp": link.dst_fp,
        "write_count": link.write_count,
        "window_start": format_utc(link.window_start) if link.window_start is not None else None,
    }


def explain(
    store: StateStore, name: str, pipeline: PipelineConfig, key: str, *, limit: int, target_key: bool = False
) -> Explanation:
    """What the state database knows about the record ``key`` of pipeline ``name``: its
    source key, or with ``target_key`` a key it has in one of the pipeline's targets. A
    source key nothing is known about is tried as a target key (apps' ids often collide
    across sides, so a source key that is known is never mixed with another record that
    has the same key in a target)."""
    found = _explain(store, name, pipeline, key, limit=limit, by="target" if target_key else "source")
    if not target_key and not found.events and not found.links:
        found = _explain(store, name, pipeline, key, limit=limit, by="target")
    return found


def _explain(
    store: StateStore, name: str, pipeline: PipelineConfig, key: str, *, limit: int, by: Literal["source", "target"]
) -> Explanation:
    pairs = _link_pairs(pipeline)
    if by == "target":
        # the source keys written under KEY: by the events, and by the links (a link made by a
        # two-way create on the from-side carries the to-side's key)
        src_keys = {e.src_key for e in store.history.events(name, key, by="target", limit=limit + 1)}
        for src, dst in pairs:
            src_keys.update(link.src_key for link in store.links_by_dst(src, dst, [key]).values())
    else:
        src_keys = {key}
    merged: dict[int, Event] = {}
    for src_key in sorted(src_keys):
        for event in store.history.events(name, src_key, limit=limit + 1):  # one more: are there older ones?
            merged[event.id] = event
    events = [merged[i] for i in sorted(merged)]
    found = Explanation(name, key, events=events[-limit:], limited=len(events) > limit)
    events = found.events
    dst_keys = {e.target_key for e in events if e.target_key is not None} | ({key} if by == "target" else set())
    seen: set[tuple[str, str, str]] = set()
    for src, dst in pairs:
        if by == "source":
            links = list(store.links_for(src, dst, sorted(src_keys)).values())
        else:
            links = list(store.links_by_dst(src, dst, [key]).values())
            links += store.links_for(src, dst, sorted(src_keys)).values()
        for link in sorted(links, key=lambda x: (x.src_key, x.dst_key)):
            if (dst, link.src_key, link.dst_key) in seen:
                continue
            seen.add((dst, link.src_key, link.dst_key))
            found.links.append(_link_doc(src, dst, link))
            src_keys.add(link.src_key)
            dst_keys.add(link.dst_key)
    found.dead_letters = [
        x
        for x in store.dead_letters(pipeline=name, status="open")
        if (x.src_key is not None and x.src_key in src_keys)
        or (x.src_key is None and x.ref in src_keys)
        or (x.dst is not None and x.ref in dst_keys and x.src_key is None)
    ]
    entries: dict[int, Conflict] = {}
    for k in sorted(src_keys | dst_keys):
        for entry in store.history.conflicts(name, status=None, key=k):
            if entry.src_key in src_keys or (entry.src_key is None and entry.record_key in dst_keys):
                entries[entry.id] = entry
    found.conflicts = [entries[i] for i in sorted(entries)]  # oldest first, like the events
    return found


# -- the text a person reads ---------------------------------------------------------------------


def _short(fp: str | None) -> str:
    """The first 8 hex digits of a fingerprint's digest (its version prefix, "2:", left out)."""
    from ferryman.records import fingerprint_digest

    return fingerprint_digest(fp)[:8] if fp else "-"


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _event_line(event: Event, key: str, style: Style, *, several: bool) -> str:
    from ferryman.terminal import clock

    run = f"run {event.run_id}" if event.run_id is not None else "no run"
    colour = _ACTION_COLOUR.get(event.action)
    action = style.paint(f"{event.action:<11}", colour) if colour else f"{event.action:<11}"
    where = event.target or event.source
    if event.target_key is not None:
        where += f"#{event.target_key}"
    elif event.target is None:
        where += f"#{event.src_key}"
    parts = [
        style.paint(clock(event.at), "dim"),
        f"{run:<9}",
        action,
        f"{where:<28}",
        f"fp {_short(event.fingerprint)}",
    ]
    if event.src_key != key and event.target is not None and several:
        parts.append(f"(source key {event.src_key})")
    if event.fields:
        parts.append("fields: " + ", ".join(event.fields))
    if event.detail:
        parts.append(f"- {event.detail}")
    elif event.action == "create" and event.target_key is not None:
        parts.append(f"- created as {event.target_key}")  # what the target answered
    return "  " + "  ".join(parts)


def render(found: Explanation, config: FerrymanConfig, *, style: Style) -> list[str]:
    """The lines ``ferryman explain`` prints for ``found``."""
    from ferryman.redact import redact
    from ferryman.terminal import clock

    pipeline = config.pipeline(found.pipeline)
    arrow = "<->" if pipeline.direction == "both" else "->"
    head = f"{style.paint(found.pipeline, 'bold')}  {pipeline.source} {arrow} {', '.join(pipeline.to)}  key {found.key}"
    sources = sorted({e.src_key for e in found.events} - {found.key})
    several = len({e.src_key for e in found.events}) > 1  # KEY names records of more than one source key
    if sources and not several:
        head += f" (source key {sources[0]})"  # KEY is a key in a target
    lines = [head]
    history = config.history
    if not found.events and not found.links:
        lines.append(
            f"  no history and no link for key {found.key!r} in pipeline {found.pipeline}: it was never "
            "synced, its events are older than history.retention, or they were not recorded"
        )
        lines.append(
            f"  (history.events is {history.events!r}: 'off' records nothing, 'changes' does not record "
            f"unchanged skips; history.retention is {_span(history.retention)})"
        )
    elif not found.events:
        lines.append(
            f"  no events recorded (history.events is {history.events!r}; events are kept for "
            f"history.retention, {_span(history.retention)})"
        )
    else:
        more = f"; the newest {len(found.events)}, --limit shows more" if found.limited else ""
        lines.append(style.paint(f"history (oldest first{more}):", "dim"))
        lines.extend(_event_line(e, found.key, style, several=several) for e in found.events)
    lines.append(style.paint("now:", "dim"))
    if not found.links:
        lines.append(f"  {'link':<12}none in {', '.join(dst for _src, dst in _link_pairs(pipeline))}")
    for link in found.links:
        writes = f", {link['write_count']} write(s) in the loop-breaker window" if link["write_count"] else ""
        lines.append(
            f"  {'link':<12}{link['src']}#{link['src_key']} -> {link['dst']}#{link['dst_key']} "
            f"(fp {_short(link['src_fp'])} read, {_short(link['dst_fp'])} written{writes})"
        )
    for letter in found.dead_letters:
        where = letter.dst or f"{letter.src} (unreadable)"
        lines.append(
            f"  {'dead letter':<12}"
            + style.paint(f"#{letter.id} [{letter.kind}]", "yellow")
            + f" {where}: {redact(letter.reason)} (seen {letter.attempts}x, last {clock(letter.last_seen_at)})"
        )
    if not found.dead_letters:
        lines.append(f"  {'dead letter':<12}none open")
    for entry in found.conflicts:
        state = (
            style.paint("open", "yellow") + f": `ferryman conflicts restore {entry.id}` writes the lost values back"
            if entry.status == "open"
            else f"restored {clock(entry.restored_at)}"
            if entry.restored_at
            else entry.status
        )
        lost = ", ".join(sorted(entry.lost)) or "no fields"
        lines.append(
            f"  {'journal':<12}#{entry.id} {clock(entry.at)} {entry.system}#{entry.record_key} ({entry.side}), "
            f"{entry.policy}: {redact(entry.reason)}; lost {lost}; {state}"
        )
    if not found.conflicts:
        lines.append(f"  {'journal':<12}no entries")
    return lines


# -- the command ---------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """The handler of ``ferryman explain``."""
    from ferryman import terminal
    from ferryman.app import open_store

    config = load_read_only(args)
    pipeline = config.pipelines.get(args.pipeline)
    if pipeline is None:
        print(f"ferryman explain: {unknown_pipeline(config, args.pipeline)}", file=sys.stderr)
        return EXIT_CONFIG  # as sync, rewind and audit: a pipeline the config does not have
    store = open_store(config)
    try:
        found = explain(store, args.pipeline, pipeline, args.key, limit=args.limit, target_key=args.target_key)
    finally:
        store.close()
    out = terminal.Output()  # `ferryman explain ... | head`: the reader may leave early
    if args.json:
        out.line(terminal.to_json(found.as_json()))
        return EXIT_OK
    for line in render(found, config, style=terminal.Style.for_stream(sys.stdout)):
        if not out.line(line):
            break
    return EXIT_OK


DESCRIPTION = """\
The history of one record of PIPELINE, oldest first: per event its time (UTC), run, what
was done (create, update, skip, echo, withhold, delete, unlink, link, conflict, manual, loop,
dead-letter, error, replay, restore), the target and the key there, the fingerprint of what
was read (first 8 hex digits), the fields a write changed and the reason or the target's
answer. Then where the record stands now: its link in each target, its open dead letters and
the conflict-journal entries that name it (`ferryman conflicts`).

KEY is the record's key in the source; with --target-key, a key it has in one of the
targets (apps' ids often repeat across systems: 1 in the source and 1 in the target are
usually two records). A source key nothing is known about is also tried as a target key.

What is recorded is set by `history.events` ('changes' by default: every decision except an
unchanged record's skip; 'all' records those too; 'off' nothing), kept for
`history.retention`. Read-only: needs no secrets and creates no state database."""

EPILOG = """\
exit status:
  0   done (also when nothing is known about KEY: the output says so)
  2   usage error
  75  the state database is unavailable
  78  configuration error (an unknown pipeline: did you mean ...)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", metavar="PIPELINE", help="the pipeline's name in the config")
    parser.add_argument("key", metavar="KEY", help="the record's source key, or a key it has in a target")
    parser.add_argument(
        "--target-key",
        action="store_true",
        help="KEY is the record's key in a target (by default a source key; one nothing is known about is "
        "also tried as a target key)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document: events, links, dead letters, journal")
    parser.add_argument(
        "--limit",
        type=_positive,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show the newest N events (default {DEFAULT_LIMIT})",
    )


def _register(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="the history of one record: every run's decision and write, its links, dead letters and journal entries",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=run)


#: commands for :func:`ferryman.cli.build_parser` (name -> :data:`ferryman.app.Register`)
COMMANDS: dict[str, Callable[[Any, str], None]] = {"explain": _register}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ferryman.explain [-c CONFIG] PIPELINE KEY ...``: ``ferryman explain``, with its errors and exit codes."""
    from ferryman.app import main_for

    return main_for("explain", _register, argv)


if __name__ == "__main__":
    sys.exit(main())
