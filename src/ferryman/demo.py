"""``make demo``: the main job end to end on the built-in sandbox apps, SQLite and CSV.

No account and no server: a Clientexec and a Cerb simulator run on loopback inside this
process, and every sync is a real ``ferryman`` command talking HTTP to them. It shows

1. helpdesk tickets and invoices (Clientexec) and support tickets (Cerb) synced to CSV,
2. a helpdesk export with two broken rows: the good rows arrive, the broken ones wait in
   the dead-letter table with their line numbers,
3. contacts kept in agreement between Clientexec and Cerb in both directions: existing
   contacts are matched by email, an edit on each side arrives on the other, and a
   further run writes nothing (no echo),

then prints where everything is. Everything is written under ``./demo-output/``.
"""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ferryman.records import Contact

OUT = Path("demo-output")
#: the sandboxes' keys, kept as secret files that the config references (``${file:...}``),
#: so that the commands the demo suggests work afterwards without any environment
SECRETS = {"clientexec_app_key": "sandbox-app-key", "cerb_token": "sandbox-token"}


#: the sandboxes, on fixed ports with fixed seeds: the config the demo writes points at
#: these ports, so the commands it prints afterwards work against sandboxes started again
#: with the same arguments (same records, same keys, so the links in the state database hold)
@dataclass(frozen=True)
class Sandbox:
    simulator: str
    port: int
    records: int
    seed: int
    rate_limit: int | None = None

    def command(self) -> str:
        """The command that starts this sandbox again as the demo ran it."""
        limit = f" --rate-limit {self.rate_limit}" if self.rate_limit else ""
        return (
            f".venv/bin/ferryman sandbox {self.simulator} --port {self.port} "
            f"--records {self.records} --seed {self.seed}{limit}"
        )


SANDBOXES = {
    "helpdesk": Sandbox("clientexec", port=8810, records=40, seed=3, rate_limit=600),
    "support": Sandbox("cerb", port=8814, records=40, seed=4),
}


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def say(text: str) -> None:
    print(text, flush=True)


def ferryman(*args: str, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ferryman", "--config", str(OUT / "ferryman.yaml"), "--log-level", "error", *args]
    if not quiet:
        say(f"\n$ ferryman {' '.join(args)}")
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    result = subprocess.run(cmd, text=True, capture_output=True, check=False, env=env)
    if not quiet:
        sys.stdout.write("".join(f"  {line}\n" for line in result.stdout.splitlines()))
        if result.returncode != 0:
            sys.stdout.write(result.stderr)
    return result


def write_config(helpdesk_url: str, support_url: str) -> None:
    inbox = (OUT / "inbox").resolve()
    inbox.mkdir(parents=True)
    (inbox / "tickets.csv").write_bytes((resources.files("ferryman") / "demo_data" / "tickets.csv").read_bytes())
    secrets = (OUT / "secrets").resolve()
    secrets.mkdir(mode=0o700)
    for name, value in SECRETS.items():
        (secrets / name).write_text(value + "\n")
        (secrets / name).chmod(0o600)
    config = {
        "state": {"url": f"sqlite:///{(OUT / 'state.db').resolve()}"},
        "log": {"format": "console", "level": "warning"},
        "systems": {
            # the sandbox plays a self-hosted install that allows 600 requests a minute
            "helpdesk": {
                "connector": "clientexec",
                "base_url": helpdesk_url,
                "api_key": f"${{file:{secrets / 'clientexec_app_key'}}}",
                "rate_limit": "600/min",
            },
            "support": {"connector": "cerb", "base_url": support_url, "token": f"${{file:{secrets / 'cerb_token'}}}"},
            "export": {"connector": "csv", "directory": str(inbox)},
            "files": {
                "connector": "csv",
                "directory": str((OUT / "exports").resolve()),
                "streams": {
                    "helpdesk_tickets": "ticket",
                    "helpdesk_invoices": "invoice",
                    "support_tickets": "ticket",
                    "export_tickets": "ticket",
                },
            },
        },
        "pipelines": {
            "helpdesk-tickets-to-csv": {
                "from": "helpdesk.tickets",
                "to": "files.helpdesk_tickets",
                "schedule": {"every": "5m"},
            },
            "helpdesk-invoices-to-csv": {
                "from": "helpdesk.invoices",
                "to": "files.helpdesk_invoices",
                "schedule": {"every": "15m"},
            },
            "support-tickets-to-csv": {
                "from": "support.tickets",
                "to": "files.support_tickets",
                "schedule": {"every": "5m"},
            },
            "export-to-csv": {"from": "export.tickets", "to": "files.export_tickets"},
            "contacts-both-ways": {
                "from": "helpdesk.contacts",
                "to": "support.contacts",
                "direction": "both",
                "match_on": ["email"],
                "conflict": "newest_wins",
                # organisation ids are local to each app, so they are not carried across
                "mapping": {"organisation_key": None},
                "schedule": {"every": "5m"},
            },
        },
    }
    (OUT / "ferryman.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


async def _edit_both_sides() -> tuple[str, str, str, str]:
    """Change one linked contact's phone in each app, through the apps' own APIs."""
    from ferryman.config import load_config
    from ferryman.engine import Engine
    from ferryman.sdk.readloop import collect
    from ferryman.state import StateStore

    config = load_config(OUT / "ferryman.yaml")
    store = StateStore.open(config.state.resolved_url())
    engine = Engine(config, store)
    try:
        helpdesk, support = await engine.system("helpdesk"), await engine.system("support")
        a_records = _contacts(await collect(helpdesk.read("contacts", None, 500)))
        b_records = _contacts(await collect(support.read("contacts", None, 500)))
        b_by_email = {r.email: r for r in b_records if not r.deleted}
        both = [r for r in a_records if not r.deleted and r.email in b_by_email]  # linked by the first sync
        first, second = both[0], b_by_email[both[-1].email]
        await helpdesk.update("contacts", first.key, first.model_copy(update={"phone": "+1 555 0100"}))
        await support.update("contacts", second.key, second.model_copy(update={"phone": "+1 555 0199"}))
        return first.email or "", "+1 555 0100", second.email or "", "+1 555 0199"
    finally:
        await engine.aclose()


async def _phones(email_a: str, email_b: str) -> dict[str, Any]:
    from ferryman.config import load_config
    from ferryman.engine import Engine
    from ferryman.sdk.readloop import collect
    from ferryman.state import StateStore

    config = load_config(OUT / "ferryman.yaml")
    engine = Engine(config, StateStore.open(config.state.resolved_url()))
    try:
        out: dict[str, Any] = {}
        for system in ("helpdesk", "support"):
            for r in _contacts(await collect((await engine.system(system)).read("contacts", None, 500))):
                if r.email in (email_a, email_b) and not r.deleted:
                    out[f"{system} {r.email}"] = r.phone
        return out
    finally:
        await engine.aclose()


def _contacts(read: tuple[list[Any], list[Any]]) -> list[Contact]:
    return [r for r in read[0] if isinstance(r, Contact)]


def rows(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open(newline="", encoding="utf-8") as fh:
        return sum(1 for _ in csv.DictReader(fh))


def first_key(path: Path) -> str | None:
    """The key of the first row of a CSV export (a record to ``explain``)."""
    if not path.exists():
        return None
    with path.open(newline="", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh), None)
    return row.get("key") if row else None


def main() -> int:
    from ferryman import logs
    from ferryman.sandbox import SimulatorThread
    from ferryman_connectors.cerb.simulator import CerbSimulator
    from ferryman_connectors.clientexec.simulator import ClientexecSimulator

    logs.configure("error", "console")
    busy = [f"{box.port} ({name})" for name, box in SANDBOXES.items() if not _port_free(box.port)]
    if busy:
        say(
            f"demo: port {', '.join(busy)} is in use on 127.0.0.1 (a sandbox from an earlier demo?); "
            "stop what listens there and run `make demo` again"
        )
        return 1
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    failed: list[str] = []
    hd, sp = SANDBOXES["helpdesk"], SANDBOXES["support"]
    with (
        SimulatorThread(
            ClientexecSimulator(records=hd.records, seed=hd.seed, rate_limit=hd.rate_limit), port=hd.port
        ) as helpdesk,
        SimulatorThread(CerbSimulator(records=sp.records, seed=sp.seed), port=sp.port) as support,
    ):
        say("Ferryman demo: two sandbox apps on loopback, state in SQLite, files in CSV")
        say(f"  Clientexec sandbox (helpdesk): {helpdesk.url}")
        say(f"  Cerb sandbox (support):        {support.url}")
        write_config(helpdesk.url + "/api", support.url + "/rest")
        say(f"  config: {OUT / 'ferryman.yaml'}")

        def step(*args: str) -> subprocess.CompletedProcess[str]:
            result = ferryman(*args)
            if result.returncode != 0:
                failed.append(" ".join(args))
            return result

        say("\n1. Apps to CSV")
        step("check")
        for name in ("helpdesk-tickets-to-csv", "helpdesk-invoices-to-csv", "support-tickets-to-csv"):
            step("sync", name, "--no-progress")
        ticket = first_key(OUT / "exports" / "helpdesk_tickets.csv")
        if ticket:
            say(f"\n  What happened to ticket {ticket}? (the history Ferryman keeps of each record)")
            step("explain", "helpdesk-tickets-to-csv", ticket)

        say("\n2. A helpdesk export with two broken rows")
        step("sync", "export-to-csv", "--no-progress")
        step("dlq", "list")

        say("\n3. Contacts in both directions between Clientexec and Cerb")
        step("sync", "contacts-both-ways", "--no-progress")
        email_a, phone_a, email_b, phone_b = asyncio.run(_edit_both_sides())
        say(f"\n  edited in Clientexec: {email_a} phone -> {phone_a}")
        say(f"  edited in Cerb:       {email_b} phone -> {phone_b}")
        step("sync", "contacts-both-ways", "--no-progress")
        phones = asyncio.run(_phones(email_a, email_b))
        for where, phone in sorted(phones.items()):
            say(f"  now {where}: {phone}")
        arrived = phones.get(f"support {email_a}") == phone_a and phones.get(f"helpdesk {email_b}") == phone_b
        say("  both edits arrived on the other side" if arrived else "  EDITS DID NOT ARRIVE")
        if not arrived:
            failed.append("two-way edits")
        again = step("sync", "contacts-both-ways", "--no-progress")
        if "created 0, updated 0" not in again.stdout:
            failed.append("echo-free second run")
        step("status")

    exports = OUT / "exports"
    say("\nSummary")
    for name in ("helpdesk_tickets", "helpdesk_invoices", "support_tickets", "export_tickets"):
        say(f"  {rows(exports / f'{name}.csv'):>4} rows  {exports / f'{name}.csv'}")
    say(f"  state database: {OUT / 'state.db'}")
    say("\nTry it yourself (the sandboxes stopped with the demo; these start them again, same ports and data):")
    say(f"  {SANDBOXES['helpdesk'].command()} &")
    say(f"  {SANDBOXES['support'].command()} &")
    say(f"  .venv/bin/ferryman --config {OUT / 'ferryman.yaml'} sync helpdesk-tickets-to-csv")
    say(f"  .venv/bin/ferryman --config {OUT / 'ferryman.yaml'} status")
    say(f"  .venv/bin/ferryman --config {OUT / 'ferryman.yaml'} conflicts list")
    if failed or rows(exports / "helpdesk_tickets.csv") == 0:
        say(f"demo FAILED: {', '.join(failed) or 'no records synced'}")
        return 1
    say("demo OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
