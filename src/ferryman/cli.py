"""The ``ferryman`` command line: its parser, the built-in commands' printing, and the
registration of the command modules.

What commands share (config and logging, the state store, services, exit codes, the
top-level parser and its error handling) is :mod:`ferryman.app`'s. This module imports the
command modules to register them (:func:`_extra_commands`) and none of them imports it back.
Heavy modules are imported inside each command so that ``ferryman --help`` starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ferryman.app import (
    EXIT_BUSY,
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TEMPFAIL,
    EXIT_USAGE,
    OUTCOME_EXIT,
    dispatch,
    load,
    open_store,
    root_parser,
    services,
)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Every ``ferryman`` command on :func:`ferryman.app.root_parser`; ``argv`` only decides
    whether the sandbox's options (which import aiohttp) are worth building."""
    parser, sub = root_parser()
    p = sub.add_parser(
        "sync",
        help="run one pipeline once, in the foreground",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline")
    p.add_argument("--full", action="store_true", help="read the whole source, not just changes since the cursor")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="write nothing; print what would be created, updated (fields old -> new) and deleted, and a summary",
    )
    p.add_argument("--wait", action="store_true", help="if the pipeline is running elsewhere, wait for it to finish")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output: the run's result, or with --dry-run the plan (actions and summary)",
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="with --dry-run, list the unchanged records (skips) too"
    )

    p = sub.add_parser(
        "status",
        help="per pipeline: last run, outcome, counts, cursor, dead letters (reads the config's pipelines; "
        "`check` validates the systems)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("check", help="validate the config, reach every configured system, build every pipeline")
    p.add_argument(
        "--offline",
        action="store_true",
        help="validate and build only: no system is contacted, no secret is needed, no state database is opened",
    )
    _add_starter_commands(sub)
    p = sub.add_parser("connectors", help="list installed connectors, their streams and capabilities")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("reset", help="forget a pipeline's cursor, links and checkpoints (next run is a full sync)")
    p.add_argument("pipeline")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = sub.add_parser("dlq", help="dead letters: list, replay, drop")
    dsub = p.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    d = dsub.add_parser("list", help="list dead letters")
    d.add_argument("--pipeline")
    d.add_argument("--all", action="store_true", help="include resolved and dropped ones")
    d.add_argument("--json", action="store_true")
    for action, text in (
        ("replay", "deliver again (after fixing the source or the target)"),
        ("drop", "give up on them"),
    ):
        d = dsub.add_parser(action, help=text)
        d.add_argument("ids", nargs="*", type=int, metavar="ID")
        d.add_argument("--all", action="store_true", help="every open dead letter (of --pipeline, if given)")
        d.add_argument("--pipeline")
        if action == "replay":
            d.add_argument(
                "--assume-missing",
                action="store_true",
                help="create an interrupted (unresolved) record again even where the target cannot look it up "
                "(only after checking by hand that it is not there)",
            )

    d = dsub.add_parser("resolve", help="settle a two-way conflict (or loop) by choosing the side whose version wins")
    d.add_argument("id", type=int, metavar="ID")
    d.add_argument("--side", choices=["from", "to"], required=True, help="the pipeline's from- or to-side wins")

    p = sub.add_parser("sandbox", help="serve a sandbox simulator of an app on loopback")
    if argv is None or "sandbox" in argv:
        _add_sandbox_args(p)  # imports aiohttp: only when the sandbox is what was asked for
    else:
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    for name, fn in _extra_commands().items():
        fn(sub, name)
    return parser


def _add_sandbox_args(parser: argparse.ArgumentParser) -> None:
    try:
        from ferryman.sandbox.cli import add_arguments
    except ImportError:  # pragma: no cover - the sandbox ships with ferryman
        parser.add_argument("system")
        return
    add_arguments(parser)


def _extra_commands() -> dict[str, Any]:
    """The commands of the command modules (name -> ``register(subparsers, name)``), and the
    daemon's when it is installed. Each module takes what it shares with the CLI from
    :mod:`ferryman.app`, so importing them here closes no cycle."""
    found: dict[str, Any] = {}
    from ferryman.scaffold import COMMANDS as SCAFFOLD_COMMANDS  # daemon-independent: always present

    found.update(SCAFFOLD_COMMANDS)
    from ferryman.rewind import COMMANDS as REWIND_COMMANDS

    found.update(REWIND_COMMANDS)
    from ferryman.audit import COMMANDS as AUDIT_COMMANDS

    found.update(AUDIT_COMMANDS)
    from ferryman.explain import COMMANDS as EXPLAIN_COMMANDS

    found.update(EXPLAIN_COMMANDS)
    from ferryman.conflicts import COMMANDS as CONFLICTS_COMMANDS

    found.update(CONFLICTS_COMMANDS)
    try:
        from ferryman.daemon.cli import COMMANDS
    except ImportError:
        return found
    found.update(COMMANDS)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """``ferryman ARGS``: the exit status (see :data:`ferryman.app.EXIT_CODES`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    return dispatch(parser, parser.parse_args(argv), COMMANDS)


# -- helpers ---------------------------------------------------------------------------------


def _fmt_time(value: Any) -> str:
    from ferryman.timeutil import format_utc

    return format_utc(value) if value is not None else "-"


# -- commands ------------------------------------------------------------------------------


def cmd_sync(args: argparse.Namespace) -> int:
    import asyncio

    config = load(args)
    config.pipeline(args.pipeline)
    store = open_store(config)
    return asyncio.run(_sync(args, config, store))


async def _sync(args: argparse.Namespace, config: Any, store: Any) -> int:
    import asyncio

    from ferryman import plan_report, terminal
    from ferryman.engine import COUNTS, Engine

    engine = Engine(config, store, services=services(config, store))
    out = terminal.Output()  # stdout's reader may leave (`| head`): the run goes on, recorded as it ends
    stop = asyncio.Event()
    # a two-way run reports no progress (run_two_way takes no callback): no bar stuck at 0
    one_way = config.pipeline(args.pipeline).direction != "both"
    shown = sys.stderr.isatty() and not args.no_progress and not args.dry_run and one_way
    bar = terminal.Progress(args.pipeline, sys.stderr) if shown else None

    def print_action(planned: plan_report.PlannedAction) -> None:
        if planned.action == "skip" and not args.verbose:
            return
        for line in plan_report.describe(planned):
            if not out.line(line):
                stop.set()  # a dry run nobody reads any more: stop after the page in hand
                return

    report: plan_report.DryRunReport | None = None
    if args.dry_run:
        # text streams each action as it is planned; JSON is one document at the end
        report = plan_report.DryRunReport(
            args.pipeline,
            listener=None if args.json else print_action,
            keep=args.json,
            keep_skips=args.verbose,
        )

    try:
        # log lines above the bar; and a stderr whose reader left (`2>&1 | head`) must not end the run
        with bar if bar is not None else terminal.run_logs(sys.stderr):
            while True:
                result = await engine.run(
                    args.pipeline,
                    full=args.full,
                    dry_run=args.dry_run,
                    stop=stop,
                    progress=bar.update if bar is not None else None,
                    report=report,
                )
                if result.outcome == "busy" and args.wait:
                    await asyncio.sleep(1.0)
                    continue
                break
    finally:
        await engine.aclose()
    grouped = sys.stdout.isatty()  # 12,345 for a person; 12345 for a script that greps
    counts = {k: result.counts.get(k, 0) for k in COUNTS}
    facts = {
        "outcome": result.outcome,
        "message": result.message,
        "seconds": round(result.seconds, 3),
    }
    if args.json and report is not None:
        out.line(terminal.to_json(report.to_json(**facts, read=counts["read"])))
    elif args.json:
        cursor = result.cursor
        out.line(
            terminal.to_json(
                {
                    "pipeline": args.pipeline,
                    **facts,
                    "run_id": result.run_id,
                    "counts": counts,
                    "not_before": result.not_before,
                    "cursor": {"updated_at": cursor.updated_at, "key": cursor.key} if cursor is not None else None,
                }
            )
        )
    summary = terminal.run_summary(
        args.pipeline,
        result.outcome,
        {"read": counts["read"]} if report is not None else counts,
        result.seconds,
        result.message,
        style=terminal.Style.for_stream(sys.stdout),
        grouped=grouped,
    )
    fmt = terminal.number if grouped else str
    if args.json:
        pass  # the document above says it all
    elif report is not None:
        out.line(f"plan: {plan_report.summary_line(report.summary(), grouped=grouped)}")
        out.line(summary)
    else:
        out.line(summary)
        if counts["dead_lettered"]:
            out.line(
                f"  {fmt(counts['dead_lettered'])} record(s) dead-lettered: see `ferryman dlq list --pipeline {args.pipeline}`"
            )
        if counts["withheld"]:
            out.line(
                f"  {fmt(counts['withheld'])} delete(s) withheld: the source deleted them and deletes.enabled is "
                "off, so the target still has them"
            )
    errors = terminal.Output(sys.stderr)
    if result.outcome == "busy":
        errors.line(f"ferryman: {args.pipeline} is {result.message}; use --wait to wait for it")
    outage = getattr(store, "outage", None)
    if result.outcome == "failed" and outage is not None:
        # the run recorded its failure, but what failed it was the state database: an outage
        from ferryman.redact import redact

        errors.line(f"ferryman: {redact(str(outage))}")
        return EXIT_TEMPFAIL
    return OUTCOME_EXIT.get(result.outcome, EXIT_FAILED)


def cmd_status(args: argparse.Namespace) -> int:
    rows = _light_status_rows(args)
    if rows is None:
        config = load(args)
        store = open_store(config)
        rows = status_rows(config, store)
    from ferryman import terminal
    from ferryman.status import render_status
    from ferryman.timeutil import utcnow

    out = terminal.Output()  # `ferryman status | head -1`: the reader may leave early
    if args.json:
        out.line(terminal.to_json(rows))
        return EXIT_OK
    for line in render_status(rows, now=utcnow(), style=terminal.Style.for_stream(sys.stdout)):
        if not out.line(line):
            break
    return EXIT_OK


def _light_status_rows(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    """Status without SQLAlchemy or connectors, where that gives the same answer: a SQLite
    state database at the current schema and no webhook systems (whose endpoint state needs
    their options). ``None``: use the full path."""
    config = load(args, systems=False)
    if any(system.connector == "webhook" for system in config.systems.values()):
        return None
    from ferryman.status import StatusReader

    reader = StatusReader.open(config.state.resolved_url())
    if reader is None:
        return None
    try:
        return status_rows(config, reader)
    finally:
        reader.close()


def status_rows(config: Any, store: Any) -> list[dict[str, Any]]:
    """The rows of ``status --json`` (and the daemon's ``GET /v1/status``): see :func:`ferryman.status.status_rows`."""
    from ferryman.status import status_rows as rows

    return rows(config, store)


def cmd_check(args: argparse.Namespace) -> int:
    import asyncio

    config = load(args)
    print(f"config {config.file}: ok ({len(config.systems)} systems, {len(config.pipelines)} pipelines)")
    return asyncio.run(_check(config, offline=getattr(args, "offline", False)))


async def _check(config: Any, *, offline: bool = False) -> int:
    """Every system, then every pipeline; a pipeline whose system failed is not ok.
    ``offline``: nothing is contacted and no state database is opened."""
    from ferryman.engine import Engine
    from ferryman.errors import FerrymanError
    from ferryman.redact import redact

    if offline:
        store: Any = None
        print(f"state {redact(config.state.resolved_url())}: not opened (--offline)")
        engine = Engine(config, store, services={"config": config})
    else:
        store = open_store(config)
        print(f"state {redact(store.url)}: ok (schema v{store.schema_version()})")
        engine = Engine(config, store, services=services(config, store))
    failures = 0
    failed_systems: set[str] = set()
    try:
        for name in config.systems:
            try:
                connector = await engine.system(name)
                if offline:
                    print(f"system {name}: ok (not contacted: --offline)")
                    continue
                refused = await _refused(config.system_options(name))
                if refused:
                    raise _CheckFailed(refused)
                await connector.check()
                print(f"system {name}: ok")
            except (FerrymanError, _CheckFailed) as exc:
                failures += 1
                failed_systems.add(name)
                print(f"system {name}: FAILED: {redact(str(exc))}")
        for name, pipeline in config.pipelines.items():
            try:
                notes = await engine.check_pipeline(name)
            except FerrymanError as exc:  # ConfigError included (its text names the key path)
                failures += 1
                print(f"pipeline {name}: FAILED: {redact(str(exc))}")
                continue
            down = sorted({ref.split(".", 1)[0] for ref in (pipeline.source, *pipeline.to)} & failed_systems)
            if down:
                failures += 1
                print(f"pipeline {name}: FAILED: system {', '.join(down)} failed its check (above)")
                continue
            print(f"pipeline {name}: ok")
            for note in notes:
                print(f"  note: {note}")
    finally:
        await engine.aclose()
    return EXIT_FAILED if failures else EXIT_OK


def cmd_connectors(args: argparse.Namespace) -> int:
    from ferryman import plugins, terminal
    from ferryman.connector import Capability, capability_table

    out = terminal.Output()  # `ferryman connectors | head`: the reader may leave early
    if getattr(args, "json", False):
        found: list[dict[str, Any]] = []
        for name, plugin in plugins.connectors().items():
            entry: dict[str, Any] = {"connector": name, "summary": None, "error": None, "streams": None}
            found.append(entry)
            if plugin.obj is None:
                entry["error"] = str(plugin.error)
                continue
            entry["summary"] = getattr(plugin.obj, "summary", None) or None
            try:
                described = plugin.obj.describe()
            except NotImplementedError:  # streams depend on configuration: null, not an empty list
                continue
            entry["streams"] = [
                {
                    "stream": info.name,
                    "record": info.record_type.kind,
                    "reference": info.reference,
                    "capabilities": [c.value for c in Capability if info.can(c)],
                }
                for info in described.values()
            ]
        out.line(terminal.to_json(found))
        return EXIT_OK
    caps = [c.value for c in Capability]
    header = f"{'connector':<16} {'stream':<22} {'record':<13}" + "".join(f"{c:<12}" for c in caps)
    lines = [header, "-" * len(header)]
    for name, plugin in plugins.connectors().items():
        if plugin.obj is None:
            lines.append(f"{name:<16} (failed to load: {plugin.error})")
            continue
        try:
            streams = plugin.obj.describe()
        except NotImplementedError:
            lines.append(f"{name:<16} (streams depend on configuration)  {plugin.obj.summary}")
            continue
        for i, row in enumerate(capability_table(streams)):
            label = name if i == 0 else ""
            lines.append(
                f"{label:<16} {row['stream']:<22} {row['record']:<13}" + "".join(f"{row[c]:<12}" for c in caps)
            )
    for line in lines:
        if not out.line(line):
            break
    return EXIT_OK


def cmd_reset(args: argparse.Namespace) -> int:
    config = load(args)
    pipeline = config.pipeline(args.pipeline)
    if not args.yes:
        if not sys.stdin.isatty():
            print("ferryman: reset forgets the cursor and links; pass --yes to confirm", file=sys.stderr)
            return EXIT_USAGE
        answer = input(f"Forget where {args.pipeline} is (next run re-reads everything)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return EXIT_FAILED
    store = open_store(config)
    if not store.acquire_lease(args.pipeline, config.state.lease_ttl):
        print(f"ferryman: {args.pipeline} is running; try again when it is done", file=sys.stderr)
        return EXIT_BUSY
    try:
        pairs = [(pipeline.source, t) for t in pipeline.to]
        if pipeline.direction == "both":
            pairs.append((pipeline.to[0], pipeline.source))
        store.reset_pipeline(args.pipeline, pairs)
    finally:
        store.release_lease(args.pipeline)
    print(f"{args.pipeline}: reset; the next run is a full sync")
    return EXIT_OK


def cmd_dlq(args: argparse.Namespace) -> int:
    import asyncio

    config = load(args)
    store = open_store(config)
    if args.dlq_command == "list":
        letters = store.dead_letters(pipeline=args.pipeline, status=None if args.all else "open")
        if args.json:
            from ferryman import terminal  # null for what is missing, Z times

            terminal.Output().line(terminal.to_json([vars_of(x) for x in letters]))
            return EXIT_OK
        if not letters:
            print("no dead letters")
        for x in letters:
            where = f"{x.src} -> {x.dst}" if x.dst else f"{x.src} (unreadable)"
            print(
                f"#{x.id} [{x.status}] {x.pipeline}: {where} {x.ref}: {x.reason} (seen {x.attempts}x, last {_fmt_time(x.last_seen_at)})"
            )
        return EXIT_OK
    if args.dlq_command == "resolve":
        return asyncio.run(_resolve(config, store, args.id, args.side))
    ids = list(args.ids)
    if args.all:
        ids = [x.id for x in store.dead_letters(pipeline=args.pipeline, status="open")]
    if not ids:
        print("ferryman: name dead letters by ID, or use --all", file=sys.stderr)
        return EXIT_USAGE
    if args.dlq_command == "drop":
        n = store.set_dead_letter_status(ids, "dropped")
        print(f"dropped {n} dead letter(s)")
        return EXIT_OK
    return asyncio.run(_replay(config, store, ids, assume_missing=args.assume_missing))


async def _replay(config: Any, store: Any, ids: list[int], *, assume_missing: bool = False) -> int:
    from ferryman.engine import Engine

    letters = store.dead_letters(status="open", ids=ids)
    webhook_ids = [x.id for x in letters if x.kind == "webhook"]
    record_ids = [x.id for x in letters if x.kind != "webhook"]
    results: list[tuple[int, str, str]] = []
    if webhook_ids:
        # an outbound event is resent as it was, with its original webhook-id
        from ferryman.webhooks import replay_dead_letters

        results += await replay_dead_letters(config, store, webhook_ids)
    engine = Engine(config, store, services=services(config, store))
    try:
        if record_ids:
            results += await engine.replay(record_ids, assume_missing=assume_missing)
    finally:
        await engine.aclose()
    failed = 0
    for letter_id, outcome, message in results:
        print(f"#{letter_id}: {outcome}: {message}")
        failed += outcome != "delivered"
    known = {r[0] for r in results}
    for missing in sorted(set(ids) - known):
        print(f"#{missing}: not an open dead letter")
        failed += 1
    return EXIT_FAILED if failed else EXIT_OK


async def _resolve(config: Any, store: Any, letter_id: int, side: str) -> int:
    from ferryman.engine import Engine
    from ferryman.errors import FerrymanError
    from ferryman.redact import redact
    from ferryman.twoway import resolve_conflict

    engine = Engine(config, store, services=services(config, store))
    try:
        message = await resolve_conflict(engine, letter_id, side)  # type: ignore[arg-type]
    except FerrymanError as exc:
        print(f"ferryman: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await engine.aclose()
    print(f"#{letter_id}: resolved: {message}")
    return EXIT_OK


def vars_of(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__slots__} if hasattr(obj, "__slots__") else dict(vars(obj))


def cmd_sandbox(args: argparse.Namespace) -> int:
    from ferryman.sandbox.cli import run

    return int(run(args))


COMMANDS: dict[str, Any] = {
    "sync": cmd_sync,
    "status": cmd_status,
    "check": cmd_check,
    "connectors": cmd_connectors,
    "reset": cmd_reset,
    "dlq": cmd_dlq,
    "sandbox": cmd_sandbox,
}


# -- starter files, check's probe ---------------------------------------------------------


def _add_starter_commands(sub: Any) -> None:
    p = sub.add_parser(
        "init",
        help="write a commented starter config (and with --systemd the units) from the installed examples",
    )
    p.add_argument(
        "--connector",
        dest="connectors",
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME",
        help="start from these examples (`ferryman example` lists them), put together; default: the main example",
    )
    p.add_argument("--dir", default=".", help="where to write ferryman.yaml (default: the current directory)")
    p.add_argument(
        "--systemd", action="store_true", help="also write the systemd units and their README to DIR/systemd/"
    )
    p.add_argument("--force", action="store_true", help="overwrite files that exist")
    p.set_defaults(handler=cmd_init)
    p = sub.add_parser("example", help="print one example config (without NAME: list them)")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.set_defaults(handler=cmd_example)


def cmd_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ferryman.starter import StarterError, write_starter

    try:
        written = write_starter(Path(args.dir), args.connectors, systemd=args.systemd, force=args.force)
    except (StarterError, OSError) as exc:
        print(f"ferryman: init: {exc}", file=sys.stderr)
        return EXIT_USAGE if getattr(exc, "usage", False) else EXIT_FAILED
    for path in written:
        print(f"wrote {path}")
    config = written[0]
    print("next:")
    print(f"  edit {config} (every secret is a ${{...}} reference: set the variables or credentials it names)")
    print(f"  ferryman --config {config} check --offline    # validate without secrets or network")
    print(f"  ferryman --config {config} check              # reach every system")
    if args.systemd:
        print(f"  {config.parent / 'systemd' / 'README.md'}: installing the units, step by step")
    return EXIT_OK


def cmd_example(args: argparse.Namespace) -> int:
    from ferryman.starter import StarterError, example_names, example_text

    try:
        if not args.name:
            print("\n".join(example_names()))
            return EXIT_OK
        sys.stdout.write(example_text(args.name))
    except StarterError as exc:
        print(f"ferryman: example: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.usage else EXIT_FAILED
    return EXIT_OK


class _CheckFailed(Exception):
    """A system's check failed before Ferryman's HTTP client was asked (the probe)."""


async def _refused(options: Any) -> str | None:
    """Why the system's ``base_url`` cannot be reached at all (refused, unknown host), found
    with one TCP connect instead of the client's retries; ``None`` when it answers, when that
    takes long (the real check will tell) or when a proxy stands between."""
    import asyncio
    import contextlib
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    base_url = getattr(options, "base_url", None)
    if not base_url:
        return None
    parts = urlsplit(str(base_url))
    host = parts.hostname
    if not host or parts.scheme not in ("http", "https"):
        return None
    if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(host):
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
    except ConnectionRefusedError:
        return f"connection refused to {where}: is base_url right? ({base_url}; is the app running?)"
    except socket.gaierror:
        return f"cannot resolve host {host!r}: is base_url right? ({base_url})"
    except (OSError, TimeoutError):
        return None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
