"""The ``ferryman`` command line.

Heavy modules are imported inside each command so that ``ferryman --help`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from ferryman import __version__

EXIT_CODES = """\
exit status:
  0   success (records that were dead-lettered are reported, not failures)
  1   the run failed (message says why; the cursor did not move past undelivered records)
  2   usage error
  3   deferred: an app asked us to wait (Retry-After); the next run waits for it
  4   halted: the run would have deleted more than deletes.max_share
  5   busy: the pipeline is running elsewhere (daemon or another instance)
  70  internal error (a bug: please report it with the log)
  75  the state database is unavailable: corrupt, locked, disk full or unreachable (one
      line says which, and where); an outage, not a bug: try again once it is fixed
  78  configuration error (file, key path and problem are printed)
"""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DEFERRED, EXIT_HALTED, EXIT_BUSY = 0, 1, 2, 3, 4, 5
EXIT_INTERNAL, EXIT_TEMPFAIL, EXIT_CONFIG = 70, 75, 78
OUTCOME_EXIT = {"ok": 0, "dry-run": 0, "stopped": 0, "failed": 1, "deferred": 3, "halted": 4, "busy": 5}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferryman",
        description="Sync tickets, contacts and invoices between helpdesk, CRM and billing apps.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ferryman {__version__}")
    parser.add_argument(
        "-c", "--config", help="YAML config file (default: $FERRYMAN_CONFIG or /etc/ferryman/ferryman.yaml)"
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override log.level")
    parser.add_argument("--log-format", choices=["auto", "json", "console"], help="override log.format")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "sync",
        help="run one pipeline once, in the foreground",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline")
    p.add_argument("--full", action="store_true", help="read the whole source, not just changes since the cursor")
    p.add_argument("--dry-run", action="store_true", help="print the plan; write nothing")
    p.add_argument("--wait", action="store_true", help="if the pipeline is running elsewhere, wait for it to finish")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")

    p = sub.add_parser(
        "status",
        help="per pipeline: last run, outcome, counts, cursor, dead letters (reads the config's pipelines; "
        "`check` validates the systems)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("check", help="validate the config, reach every configured system, build every pipeline")
    sub.add_parser("connectors", help="list installed connectors, their streams and capabilities")

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
    """Commands provided by optional modules (the daemon), registered when present."""
    found: dict[str, Any] = {}
    try:
        from ferryman.daemon.cli import COMMANDS
    except ImportError:
        return found
    found.update(COMMANDS)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    from ferryman.errors import ConfigError, StateError, StateUnavailable
    from ferryman.redact import redact

    try:
        handler = getattr(args, "handler", None) or COMMANDS[args.command]
        return int(handler(args))
    except ConfigError as exc:
        print(f"ferryman: config error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except StateUnavailable as exc:  # an outage: one line, no traceback; systemd retries later
        print(f"ferryman: {redact(str(exc))}", file=sys.stderr)
        return EXIT_TEMPFAIL
    except StateError as exc:
        print(f"ferryman: state database: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("ferryman: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ferryman connectors | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # a bug: say so without leaking a secret through the traceback
        import traceback

        text = "".join(traceback.format_exception(exc))
        print(redact(text), file=sys.stderr)
        print(f"ferryman: internal error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_INTERNAL


# -- shared setup --------------------------------------------------------------------------


def load(args: argparse.Namespace, *, systems: bool = True) -> Any:
    from ferryman import logs
    from ferryman.config import load_config

    config = load_config(args.config, systems=systems)
    logs.configure(args.log_level or config.log.level, args.log_format or config.log.format)
    return config


def open_store(config: Any) -> Any:
    from ferryman.state import StateStore

    return StateStore.open(config.state.resolved_url(), instance=config.instance)


def services(config: Any, store: Any) -> dict[str, Any]:
    """Process-wide services shared by every system: the HTTP registry (rate limits and
    deferrals, shared through the database on PostgreSQL) and the configuration."""
    from ferryman.state.budget import make_registry

    return {"http": make_registry(store), "config": config}


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

    from ferryman.engine import Engine

    engine = Engine(config, store, services=services(config, store))
    bar = None
    progress = None
    if sys.stderr.isatty() and not args.no_progress and not args.dry_run:
        from tqdm import tqdm

        bar = tqdm(desc=args.pipeline, unit=" rec", file=sys.stderr, dynamic_ncols=True)

        def progress(n: int, counts: dict[str, int]) -> None:
            bar.update(n)
            bar.set_postfix(
                created=counts["created"],
                updated=counts["updated"],
                skipped=counts["skipped"],
                dead=counts["dead_lettered"],
                refresh=False,
            )

    def echo(line: str) -> None:
        print(line, flush=True)

    try:
        while True:
            result = await engine.run(args.pipeline, full=args.full, dry_run=args.dry_run, progress=progress, echo=echo)
            if result.outcome == "busy" and args.wait:
                await asyncio.sleep(1.0)
                continue
            break
    finally:
        if bar is not None:
            bar.close()
        await engine.aclose()
    if args.dry_run:
        print(f"plan: {result.summary()}")
    else:
        print(result.summary())
        if result.counts.get("dead_lettered"):
            print(
                f"  {result.counts['dead_lettered']} record(s) dead-lettered: see `ferryman dlq list --pipeline {args.pipeline}`"
            )
        if result.counts.get("withheld"):
            print(
                f"  {result.counts['withheld']} delete(s) withheld: the source deleted them and deletes.enabled is "
                "off, so the target still has them"
            )
    if result.outcome == "busy":
        print(f"ferryman: {args.pipeline} is {result.message}; use --wait to wait for it", file=sys.stderr)
    outage = getattr(store, "outage", None)
    if result.outcome == "failed" and outage is not None:
        # the run recorded its failure, but what failed it was the state database: an outage
        from ferryman.redact import redact

        print(f"ferryman: {redact(str(outage))}", file=sys.stderr)
        return EXIT_TEMPFAIL
    return OUTCOME_EXIT.get(result.outcome, EXIT_FAILED)


def cmd_status(args: argparse.Namespace) -> int:
    rows = _light_status_rows(args)
    if rows is None:
        config = load(args)
        store = open_store(config)
        rows = status_rows(config, store)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    from ferryman.redact import redact

    for row in rows:
        last = row["last_run"]
        print(f"{row['pipeline']}  ({row['from']} -> {', '.join(row['to'])})")
        if last:
            shown = ("read", "created", "updated", "deleted", "skipped", "withheld", "dead_lettered")
            counts = ", ".join(f"{k} {last[k]}" for k in shown if k != "withheld" or last.get(k))
            print(f"  last run   {last['outcome']} at {last['started_at']} on {last['instance']} ({counts})")
            if last.get("message"):
                print(f"  message    {redact(last['message'])}")
        else:
            print("  last run   never")
        print(f"  cursor     {row['cursor'] or '-'}")
        print(f"  dead letters open: {row['dead_letters']}")
        if row.get("running_on"):
            print(f"  running on {row['running_on']}")
        for hook in row["webhooks"]:
            held = f", held back until {hook['not_before']}" if hook.get("not_before") else ""
            why = f": {redact(hook['reason'])}" if hook.get("reason") else ""
            print(
                f"  webhook    {hook['system']} {hook['url']} {hook['state']}{why}{held} "
                f"(pending {hook['pending']}, delivered {hook['delivered']}, dead {hook['dead']})"
            )
        for deferral in row["deferred"]:
            print(
                f"  deferred   {deferral['host']} until {deferral['not_before']}: {redact(deferral.get('reason') or '')}"
            )
    if not rows:
        print("no pipelines configured")
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
    from ferryman.redact import redact

    runs = store.last_runs()
    dead = store.count_dead_letters()
    deferrals = store.deferrals()
    endpoints: dict[str, dict[str, Any]] = {}
    if any(system.connector == "webhook" for system in config.systems.values()):
        from ferryman.webhooks import endpoint_status

        endpoints = {row["system"]: row for row in endpoint_status(config, store)}
    rows = []
    for name, pipeline in config.pipelines.items():
        if pipeline.direction == "both":
            sides = {"from": store.get_cursor(name, "a"), "to": store.get_cursor(name, "b")}
            cursor_text = (
                "; ".join(f"{side} {_fmt_time(c.updated_at)} {c.key}" for side, c in sides.items() if c) or None
            )
        else:
            cursor = store.get_cursor(name)
            cursor_text = f"{_fmt_time(cursor.updated_at)} {cursor.key}" if cursor else None
        last = runs.get(name)
        holder = store.lease_holder(name)
        if last:
            last = {k: (_fmt_time(v) if k.endswith("_at") or k == "not_before" else v) for k, v in last.items()}
            if last.get("message"):
                last["message"] = redact(last["message"])
        rows.append(
            {
                "pipeline": name,
                "from": pipeline.source,
                "to": pipeline.to,
                "enabled": pipeline.enabled,
                "last_run": last,
                "cursor": cursor_text,
                "dead_letters": dead.get(name, 0),
                "running_on": holder[0] if holder else None,
                "webhooks": [endpoints[t.split(".", 1)[0]] for t in pipeline.to if t.split(".", 1)[0] in endpoints],
                "deferred": [
                    {
                        "host": d["host"],
                        "not_before": _fmt_time(d["not_before"]),
                        "reason": redact(d.get("reason") or ""),
                    }
                    for d in deferrals
                ],
            }
        )
    return rows


def cmd_check(args: argparse.Namespace) -> int:
    import asyncio

    config = load(args)
    print(f"config {config.file}: ok ({len(config.systems)} systems, {len(config.pipelines)} pipelines)")
    return asyncio.run(_check(config))


async def _check(config: Any) -> int:
    from ferryman.engine import Engine
    from ferryman.errors import FerrymanError
    from ferryman.redact import redact

    store = open_store(config)
    print(f"state {redact(store.url)}: ok (schema v{store.schema_version()})")
    engine = Engine(config, store, services=services(config, store))
    failures = 0
    try:
        for name in config.systems:
            try:
                connector = await engine.system(name)
                await connector.check()
                print(f"system {name}: ok")
            except FerrymanError as exc:
                failures += 1
                print(f"system {name}: FAILED: {redact(str(exc))}")
        for name in config.pipelines:
            try:
                notes = await engine.check_pipeline(name)
                print(f"pipeline {name}: ok")
                for note in notes:
                    print(f"  note: {note}")
            except FerrymanError as exc:  # ConfigError included (its text names the key path)
                failures += 1
                print(f"pipeline {name}: FAILED: {redact(str(exc))}")
    finally:
        await engine.aclose()
    return EXIT_FAILED if failures else EXIT_OK


def cmd_connectors(args: argparse.Namespace) -> int:
    from ferryman import plugins
    from ferryman.connector import Capability, capability_table

    caps = [c.value for c in Capability]
    header = f"{'connector':<16} {'stream':<22} {'record':<13}" + "".join(f"{c:<12}" for c in caps)
    print(header)
    print("-" * len(header))
    for name, plugin in plugins.connectors().items():
        if plugin.obj is None:
            print(f"{name:<16} (failed to load: {plugin.error})")
            continue
        try:
            streams = plugin.obj.describe()
        except NotImplementedError:
            print(f"{name:<16} (streams depend on configuration)  {plugin.obj.summary}")
            continue
        for i, row in enumerate(capability_table(streams)):
            label = name if i == 0 else ""
            print(f"{label:<16} {row['stream']:<22} {row['record']:<13}" + "".join(f"{row[c]:<12}" for c in caps))
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
            print(json.dumps([{**vars_of(x)} for x in letters], indent=2, default=str))
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
