"""The composition root: what every way of running Ferryman shares.

``ferryman`` (:mod:`ferryman.cli`), the command modules that also run as
``python -m ferryman.X`` (:mod:`ferryman.audit`, :mod:`ferryman.explain`,
:mod:`ferryman.rewind`, :mod:`ferryman.conflicts`) and the daemon's commands
(:mod:`ferryman.daemon.cli`) all load the config, set up logging, open the state store and
build the process-wide services the same way, and end with the same exit codes. That lives
here, below all of them, so that they import it and never each other: :mod:`ferryman.cli`
imports the command modules to register them, and none of them imports the CLI back
(``tests/test_architecture.py`` keeps it so).

Importing this module stays cheap (the standard library's :mod:`argparse` and nothing
heavier) because ``ferryman --help`` imports it; each function imports what it needs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ferryman import __version__

if TYPE_CHECKING:
    from ferryman.config import FerrymanConfig
    from ferryman.state import StateStore

__all__ = [
    "EXIT_BUSY",
    "EXIT_CODES",
    "EXIT_CONFIG",
    "EXIT_DEFERRED",
    "EXIT_FAILED",
    "EXIT_HALTED",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_TEMPFAIL",
    "EXIT_USAGE",
    "OUTCOME_EXIT",
    "Register",
    "dispatch",
    "load",
    "main_for",
    "open_existing_store",
    "open_store",
    "reads_only",
    "root_parser",
    "services",
]

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
#: a run's outcome as the exit status of the command that ran it (``sync``, ``trigger --wait``)
OUTCOME_EXIT = {"ok": 0, "dry-run": 0, "stopped": 0, "failed": 1, "deferred": 3, "halted": 4, "busy": 5}

#: how a command module adds its subcommand: ``register(subparsers, name)`` adds the parser
#: and sets its ``handler`` (the ``COMMANDS`` dict each command module exports maps names to these)
Register = Callable[[Any, str], None]


# -- the command line's frame ----------------------------------------------------------------------


def root_parser() -> tuple[argparse.ArgumentParser, Any]:
    """The ``ferryman`` parser with its global options, and its (still empty) subcommands.

    :mod:`ferryman.cli` adds every command to it; :func:`main_for` adds one, so that a
    command run as a module parses and fails exactly as it does under ``ferryman``."""
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
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def dispatch(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    commands: dict[str, Callable[[argparse.Namespace], int]] | None = None,
) -> int:
    """Run the command ``args`` names (its parser's ``handler``, else ``commands[name]``) and
    turn what it raises into the documented exit status, with one line that says why."""
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    from ferryman.errors import ConfigError, StateError, StateUnavailable
    from ferryman.redact import redact

    try:
        handler = getattr(args, "handler", None) or (commands or {})[args.command]
        return int(handler(args))
    except ConfigError as exc:  # one line per problem when there are several
        for line in redact(str(exc)).splitlines() or [""]:
            print(f"ferryman: config error: {line}", file=sys.stderr)
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


def main_for(command: str, register: Register, argv: Sequence[str] | None = None) -> int:
    """``python -m ferryman.MODULE [-c CONFIG] ARGS`` as ``ferryman [-c CONFIG] COMMAND ARGS``:
    the same global options, parser, error handling and exit codes, with only ``command``
    registered (``register`` is the module's own), so the module needs nothing from
    :mod:`ferryman.cli` and the other commands are not imported."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config")
    pre.add_argument("--log-level")
    pre.add_argument("--log-format")
    given, rest = pre.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    options = [f"--{k.replace('_', '-')}={v}" for k, v in vars(given).items() if v is not None]
    parser, sub = root_parser()
    register(sub, command)
    return dispatch(parser, parser.parse_args([*options, command, *rest]))


# -- config, store, services -----------------------------------------------------------------------


def reads_only(args: argparse.Namespace) -> bool:
    """Commands that read and change nothing: they need no secret and create no database."""
    command = getattr(args, "command", None)
    return (
        command == "status"
        or (command == "dlq" and getattr(args, "dlq_command", None) == "list")
        or (command == "check" and bool(getattr(args, "offline", False)))
    )


def load(args: argparse.Namespace, *, systems: bool = True) -> FerrymanConfig:
    """The config ``args.config`` names, with logging set up from it and the command line's
    ``--log-level``/``--log-format``; commands that only read resolve no secrets."""
    from ferryman import logs
    from ferryman.config import load_config

    # commands that only read need no secrets: their references may stay unresolved
    config = load_config(args.config, systems=systems, secrets=not reads_only(args))
    logs.configure(args.log_level or config.log.level, args.log_format or config.log.format)
    return config


def open_store(config: Any) -> StateStore:
    """The state store; for a config loaded to read only (``status``, ``dlq list``), a
    database that does not exist yet is not created: it means "no runs yet"."""
    from ferryman.state import StateStore

    url = config.state.resolved_url()
    if getattr(config, "read_only", False):
        return open_existing_store(url, config.instance)
    return StateStore.open(url, instance=config.instance)


def open_existing_store(url: str, instance: str | None) -> StateStore:
    """The state store at ``url`` if it exists (migrated as any command would), else an
    empty one in memory: no database yet means no runs yet, and reading must not create one."""
    from pathlib import Path

    from ferryman.state import StateStore

    if url.startswith("sqlite:"):
        path = url[len("sqlite:///") :].split("?", 1)[0] if url.startswith("sqlite:///") else ""
        if path and path != ":memory:" and not Path(path).exists():
            return StateStore.open("sqlite:///:memory:", instance=instance)
        return StateStore.open(url, instance=instance)
    store = StateStore(url, instance=instance)
    if store.schema_version() == 0:  # a server database Ferryman never used
        store.engine.dispose()
        return StateStore.open("sqlite:///:memory:", instance=instance)
    store.migrate()
    return store


def services(config: Any, store: Any) -> dict[str, Any]:
    """Process-wide services shared by every system: the HTTP registry (rate limits and
    deferrals, shared through the database on PostgreSQL) and the configuration."""
    from ferryman.state.budget import make_registry

    return {"http": make_registry(store), "config": config}
