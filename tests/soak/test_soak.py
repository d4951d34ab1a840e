"""The fault soak: the daemon on three sandbox apps that misbehave, killed with SIGKILL and
restarted at random moments, while the sources keep changing. At the end:

- every target holds every valid source record exactly once, in its latest version;
- every invalid record (seeded on purpose: native rows that cannot become canonical
  records, CSV rows that cannot be read) is in the dead-letter table with its reason,
  and nothing else is (a transient fault must never dead-letter a record);
- no app saw a request sooner than a ``Retry-After`` it had sent (``early_retries == 0``).

The apps (``sandbox generic`` behind the ``rest`` connector, ``clientexec``, ``clevertim``)
run in this process, so they outlive every daemon and keep their counts; each injects
5% 5xx (502/504 for Clevertim, whose 500 on a write means "cannot parse this record"),
2% dropped connections, 1% malformed bodies (a transport fault: the HTTP layer retries
what it may), 1% single 429s, 5% slow answers, and bursts of 429 with ``Retry-After`` in
both its forms. Five pipelines run every second: three apps into CSV,
and one CSV into two apps (creates behind intents, found again by email after a crash).

``make soak`` runs the long version (``SOAK_CYCLES``, default 60 kill/restart cycles);
the short one (5 cycles, about a minute) runs in ``make test``. ``SOAK_SEED`` replays
one sequence of kills and changes.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from ferryman.sandbox import Simulator, SimulatorThread, basic_credentials
from ferryman_connectors.clevertim.simulator import ClevertimSimulator
from ferryman_connectors.clientexec.simulator import ClientexecSimulator
from ferryman_connectors.rest.simulator import GenericSimulator
from tests.conftest import ferryman_cmd, run_cli

FAULTS = "5xx:0.05,drop:0.02,malformed:0.01,429:0.01:retry_after=1,slow:0.05:delay=0.3"
# Clevertim's 500 on a write means "your JSON cannot be parsed" (its connector dead-letters
# it, as documented): its transient server errors are the gateway kinds.
CLEVERTIM_FAULTS = FAULTS.replace("5xx:0.05", "502:0.025,504:0.025")
ENV = {"SOAK_CE_KEY": "sandbox-app-key"}
PULLS = {  # pipeline -> (app, its table, the CSV stream it lands in)
    "g-contacts": ("generic", "contacts", "g_contacts"),
    "g-tickets": ("generic_t", "tickets", "g_tickets"),
    "ce-tickets": ("clientexec", "tickets", "ce_tickets"),
    "ct-contacts": ("clevertim", "contacts", "ct_contacts"),
}
PUSHES = {"push-generic": "generic_w", "push-clevertim": "clevertim_w"}  # inbox.contacts -> system.contacts
APP_OF = {"generic": "generic", "generic_t": "generic", "generic_w": "generic", "clientexec": "clientexec"}
APP_OF |= {"clevertim": "clevertim", "clevertim_w": "clevertim"}
CSV_HEADER = ["key", "updated_at", "email", "first_name", "last_name"]
CONTENT = {  # pipeline -> CSV column -> native field that must agree at the end
    "g-contacts": {"email": "email", "first_name": "first_name", "last_name": "last_name"},
    "g-tickets": {"subject": "subject", "status": "status", "priority": "priority"},
    "ct-contacts": {"email": "email", "first_name": "fn", "last_name": "ln"},
}


# -- the apps -------------------------------------------------------------------------------------

# One API key per pipeline (each its own system in the config): the apps count early
# retries per credential, and one pipeline's requests are sequential, so a request that
# arrives before a Retry-After its credential was given is a real early retry, never a
# request another pipeline already had in flight when the 429 went out.
GENERIC_KEYS = {"generic": "key-contacts", "generic_t": "key-tickets", "generic_w": "key-push"}
CLEVERTIM_TOKENS = {"clevertim": "token-pull", "clevertim_w": "token-push"}
ENV |= {f"SOAK_{name.upper()}": key for name, key in (GENERIC_KEYS | CLEVERTIM_TOKENS).items()}


class GenericApp(GenericSimulator):
    """``sandbox generic`` that accepts one ``X-API-Key`` per pipeline."""

    def authenticate(self, request: web.Request) -> str | None:
        offered = request.headers.get("X-API-Key")
        return offered if offered in GENERIC_KEYS.values() else None


class ClevertimApp(ClevertimSimulator):
    """``sandbox clevertim`` that accepts one token (the Basic user) per pipeline."""

    def authenticate(self, request: web.Request) -> str | None:
        offered = basic_credentials(request)
        return offered[0] if offered is not None and offered[0] in CLEVERTIM_TOKENS.values() else None


@dataclass
class Apps:
    threads: dict[str, SimulatorThread]
    invalid: dict[str, str] = field(default_factory=dict)  # generic ticket id -> the field at fault

    def sim(self, name: str) -> Simulator:
        return self.threads[name].simulator

    def url(self, name: str) -> str:
        return self.threads[name].url


@contextmanager
def apps(seed: int) -> Iterator[Apps]:
    generic = GenericApp(records=300, seed=seed, faults=FAULTS)
    clientexec = ClientexecSimulator(records=150, seed=seed + 1, faults=FAULTS)
    clevertim = ClevertimApp(records=150, seed=seed + 2, faults=CLEVERTIM_FAULTS)
    # Records whose *data* is invalid, written straight into the app's table (its API would
    # refuse them): the rest connector cannot map them, so each must become a dead letter.
    tickets = generic.table("tickets")
    bad_status = tickets.insert(
        {
            "subject": "escalated",
            "description": None,
            "status": "escalated",
            "priority": "high",
            "requester_email": None,
        }
    )
    bad_subject = tickets.insert(
        {
            "subject": {"en": "not text"},
            "description": None,
            "status": "open",
            "priority": "low",
            "requester_email": None,
        }
    )
    with ExitStack() as stack:
        threads = {
            name: stack.enter_context(SimulatorThread(sim))
            for name, sim in (("generic", generic), ("clientexec", clientexec), ("clevertim", clevertim))
        }
        yield Apps(threads, {str(bad_status["id"]): "status", str(bad_subject["id"]): "subject"})


def change_sources(apps: Apps, rng: random.Random, inbox: Path, cycle: int) -> None:
    """Between kills: the generic app's records change and grow; the CSV gets new and edited rows."""

    def edit() -> None:
        sim = apps.sim("generic")
        contacts, tickets = sim.table("contacts"), sim.table("tickets")
        for _ in range(rng.randint(3, 12)):
            row = contacts.get(rng.randint(1, 300))
            if row is not None:
                contacts.update(row["id"], {"last_name": f"Changed {cycle}"})
        for _ in range(rng.randint(1, 6)):
            row = tickets.get(rng.randint(1, 300))
            if row is not None:
                tickets.update(row["id"], {"priority": rng.choice(["low", "normal", "high", "urgent"])})
        for i in range(rng.randint(0, 4)):
            contacts.insert(
                {
                    "email": f"new-{cycle}-{i}@soak.example",
                    "first_name": "New",
                    "last_name": str(cycle),
                    "phone": None,
                    "company": None,
                }
            )

    apps.threads["generic"].call(edit)
    rows = read_csv(inbox)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for _ in range(rng.randint(0, 3)):
        index = rng.randrange(len(rows))
        if rows[index][0].startswith("c"):  # a valid row: edit it
            rows[index][4] = f"Edited {cycle}"
            rows[index][1] = stamp
    for i in range(rng.randint(0, 5)):
        rows.append([f"c{cycle}-{i}", stamp, f"csv-{cycle}-{i}@soak.example", "Csv", f"Row {cycle}"])
    write_csv(inbox, rows)


def maybe_burst(apps: Apps, rng: random.Random) -> None:
    """Now and then an app answers the next few requests 429 with Retry-After (seconds or a date)."""
    if rng.random() < 0.5:
        name = rng.choice(list(apps.threads))
        count, wait, fmt = rng.randint(2, 6), float(rng.choice([1, 2])), rng.choice(["seconds", "date"])
        apps.threads[name].call(apps.sim(name).faults.start_burst, count, 429, wait, fmt)


# -- files, config, daemon ------------------------------------------------------------------------


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[1:]


def write_csv(path: Path, rows: list[list[str]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)
    os.replace(tmp, path)


def initial_inbox(path: Path) -> dict[str, str]:
    """Valid contacts plus two rows that cannot be read; returns bad key -> what is wrong."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        [f"c{i}", (base + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ"), f"csv-{i}@soak.example", "Csv", str(i)]
        for i in range(40)
    ]
    rows.append(["bad-date", "yesterday", "bad-date@soak.example", "Bad", "Date"])
    rows.append(["bad-columns", "2026-01-01T00:00:00Z", "bad-columns@soak.example"])
    write_csv(path, rows)
    return {"bad-date": "updated_at", "bad-columns": "columns"}


def rest_stream(path: str, record: str, fields: dict[str, str], **more: Any) -> dict[str, Any]:
    return {
        "record": record,
        "path": path,
        "records_path": "data",
        "params": {"paginate": "cursor"},
        "pagination": {"style": "cursor", "cursor_path": "next_cursor", "size_param": "limit", "max_size": 1000},
        "incremental": {"template": "updated_since={cursor}", "format": "iso_z"},
        "fields": fields,
        **more,
    }


def write_config(work: Path, apps: Apps) -> Path:
    contact_fields = {"email": "email", "first_name": "first_name", "last_name": "last_name"}
    contacts = rest_stream(
        "/contacts",
        "contact",
        contact_fields,
        natural_key="email",
        find={"params": {"email": "{email}"}},
        create={"path": "/contacts", "body": "json", "id_from": "body", "id_path": "id"},
        update={"method": "PATCH", "path": "/contacts/{id}"},
        item="/contacts/{id}",
    )
    tickets = rest_stream("/tickets", "ticket", {"subject": "subject", "status": "status", "priority": "priority"})
    generic = {
        name: {
            "connector": "rest",
            "base_url": f"{apps.url('generic')}/api",
            "auth": {"type": "header", "name": "X-API-Key", "key": f"${{SOAK_{name.upper()}}}"},
            "max_retries": 8,
            "rate_limit": None,
            "streams": {"tickets": tickets} if name == "generic_t" else {"contacts": contacts},
        }
        for name in GENERIC_KEYS
    }
    clevertim = {
        name: {
            "connector": "clevertim",
            "base_url": f"{apps.url('clevertim')}/api",
            "api_token": f"${{SOAK_{name.upper()}}}",
            "max_retries": 8,
            "rate_limit": None,  # its polite default (120/min) would make a short soak long
        }
        for name in CLEVERTIM_TOKENS
    }
    doc = {
        "version": 1,
        "state": {"url": f"sqlite:///{work / 'state.db'}"},
        "log": {"level": "warning", "format": "json"},
        "control": {"listen": f"unix:{work / 'control.sock'}"},
        "systems": {
            **generic,
            **clevertim,
            "clientexec": {
                "connector": "clientexec",
                "base_url": f"{apps.url('clientexec')}/api",
                "api_key": "${SOAK_CE_KEY}",
                "max_retries": 8,
                "rate_limit": None,
            },
            "out": {
                "connector": "csv",
                "directory": str(work / "out"),
                "streams": {
                    "g_contacts": "contact",
                    "g_tickets": "ticket",
                    "ce_tickets": "ticket",
                    "ct_contacts": "contact",
                },
            },
            "inbox": {"connector": "csv", "directory": str(work / "inbox"), "streams": {"contacts": "contact"}},
        },
        "pipelines": {
            **{
                name: {"from": f"{app}.{table}", "to": f"out.{stream}", "page_size": 40, "schedule": {"every": "1s"}}
                for name, (app, table, stream) in PULLS.items()
            },
            **{
                name: {"from": "inbox.contacts", "to": f"{app}.contacts", "page_size": 10, "schedule": {"every": "1s"}}
                for name, app in PUSHES.items()
            },
        },
    }
    path = work / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    with log.open("ab") as fh:
        return subprocess.Popen(
            [*ferryman_cmd(), "--config", str(config), "run", "--drain-timeout", "10"],
            stdout=subprocess.DEVNULL,
            stderr=fh,
            env={**env, **ENV},
        )


def settle(config: Path, work: Path, attempts: int = 25) -> None:
    """Every pipeline once more, in order (pushes before the pulls that read their results),
    each until a run ends ok: the apps still inject faults, so a run may fail and is retried."""
    for name in [*PUSHES, *PULLS]:
        for _ in range(attempts):
            began = time.monotonic()
            result = run_cli("--config", str(config), "sync", name, "--no-progress", env=ENV, cwd=work, timeout=120)
            print(
                f"  settle {name}: {time.monotonic() - began:.1f} s, exit {result.returncode}: {result.stdout.strip()}"
            )
            if result.returncode == 0:
                break
        else:
            raise AssertionError(f"{name} never ended ok:\n{result.stdout}\n{result.stderr}")


# -- what must hold -------------------------------------------------------------------------------


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def check_pulls(apps: Apps, work: Path) -> None:
    for pipeline, (app, table, stream) in PULLS.items():
        rows = csv_rows(work / "out" / f"{stream}.csv")
        keys = Counter(r["key"] for r in rows)
        doubled = {k: n for k, n in keys.items() if n > 1}
        assert not doubled, f"{pipeline}: keys delivered more than once: {doubled}"
        source = {str(r["id"]): r for r in apps.sim(APP_OF[app]).table(table)}
        invalid = set(apps.invalid) if pipeline == "g-tickets" else set()
        expected = set(source) - invalid
        assert set(keys) == expected, (
            f"{pipeline}: missing {sorted(expected - set(keys))[:10]}, unexpected {sorted(set(keys) - expected)[:10]}"
        )
        # The latest content (not necessarily the latest updated_at: a write that changed
        # nothing, such as a create repeated after a crash, is skipped by fingerprint).
        native = CONTENT.get(pipeline, {})
        stale = [
            r["key"] for r in rows if any(r[canon] != _text(source[r["key"]].get(nat)) for canon, nat in native.items())
        ]
        assert not stale, f"{pipeline}: not the latest content of {stale[:10]}"


def _text(value: Any) -> str:
    if isinstance(value, list):  # Clevertim keeps emails in a list; the first is the record's
        value = value[0] if value else None
    return "" if value is None else str(value)


def check_pushes(apps: Apps, work: Path, bad_rows: dict[str, str]) -> None:
    valid = {row[2]: row for row in read_csv(work / "inbox" / "contacts.csv") if row[0] not in bad_rows}
    for pipeline, app in PUSHES.items():
        emails = Counter(_email(row) for row in apps.sim(APP_OF[app]).table("contacts"))
        for email in valid:
            assert emails[email] == 1, f"{pipeline}: {email} is in {app} {emails[email]} times"
        for key in bad_rows:
            assert emails[f"{key}@soak.example"] == 0, f"{pipeline}: the invalid row {key} reached {app}"
        if APP_OF[app] == "generic":
            by_email = {r["email"]: r for r in apps.sim("generic").table("contacts")}
            stale = [e for e, row in valid.items() if by_email[e]["last_name"] != row[4]]
            assert not stale, f"{pipeline}: edits not delivered for {stale[:10]}"


def _email(row: dict[str, Any]) -> str | None:
    """A contact's (first) email: generic keeps one, Clevertim a list."""
    value = row.get("email")
    if isinstance(value, list):
        return str(value[0]) if value else None
    return value


def check_dead_letters(apps: Apps, work: Path, bad_rows: dict[str, str]) -> None:
    with sqlite3.connect(work / "state.db") as db:
        letters = db.execute(
            "SELECT pipeline, src_key, reason, kind FROM dead_letters WHERE status = 'open' ORDER BY id"
        ).fetchall()
    expected = {("g-tickets", key): field for key, field in apps.invalid.items()}
    expected |= {(pipeline, key): field for pipeline in PUSHES for key, field in bad_rows.items()}
    found = {(p, k): (reason, kind) for p, k, reason, kind in letters}
    for (pipeline, key), field_name in expected.items():
        assert (pipeline, key) in found, f"{pipeline}: invalid record {key} is not dead-lettered; open: {letters}"
        reason, kind = found[(pipeline, key)]
        assert kind == "invalid" and field_name in reason, f"{pipeline} {key}: reason {reason!r} ({kind})"
    extra = [x for x in letters if (x[0], x[1]) not in expected]
    assert not extra, f"records dead-lettered that were valid (a transient fault must be retried): {extra}"


# A 429 is kept in the state database a few milliseconds after it arrives, before the retry
# (``RestartSafeRateBudget``). A SIGKILL inside that gap loses it: no client can keep what it
# was killed before writing down. Only an early retry after such a kill is forgiven.
UNRECORDED = 0.25  # seconds after a 429 that a kill counts as "before it was written down"


def check_politeness(apps: Apps, events: list[tuple[float, str]]) -> dict[str, dict[str, Any]]:
    stats = {name: apps.sim(name).stats.snapshot() for name in apps.threads}
    for name, s in stats.items():
        started = apps.sim(name).stats.started
        timeline = [(round(t - started, 3), what) for t, what in events]
        kills = [t for t, what in timeline if what == "killed"]
        rude = [v for v in s["violations"] if not _killed_unrecorded(v, s["throttles"], kills)]
        assert not rude, (
            f"{name}: retried before Retry-After: {rude[:8]}; 429/503 sent: {s['throttles'][-40:]}; daemon: {timeline}"
        )
        if s["violations"]:
            print(f"soak: {name}: {len(s['violations'])} early call(s) after a kill within {UNRECORDED} s of a 429")
    return stats


def _killed_unrecorded(violation: dict[str, Any], throttles: list[dict[str, Any]], kills: list[float]) -> bool:
    """Whether the 429 whose wait this call cut short was answered just before a kill that
    came before the call (the first call of the restarted daemon)."""
    before = [t for t in throttles if t["credential"] == violation["credential"] and t["t"] < violation["t"]]
    if not before:
        return False
    binding = max(before, key=lambda t: t["t"] + (t["retry_after"] or 0.0))
    return any(binding["t"] <= k <= min(binding["t"] + UNRECORDED, violation["t"]) for k in kills)


# -- the soak -------------------------------------------------------------------------------------


def soak(work: Path, cycles: int, seed: int, *, alive: tuple[float, float], restart: tuple[float, float]) -> None:
    print(f"\nsoak: seed {seed} (SOAK_SEED={seed} replays it), {cycles} cycles, work in {work}")
    rng = random.Random(seed)
    inbox = work / "inbox" / "contacts.csv"
    bad_rows = initial_inbox(inbox)
    log = work / "daemon.log"
    began = time.monotonic()
    with apps(seed) as running:
        config = write_config(work, running)
        kills = 0
        events: list[tuple[float, str]] = []
        for cycle in range(cycles):
            events.append((time.monotonic(), "start"))
            daemon = start_daemon(config, log)
            try:
                deadline = time.monotonic() + rng.uniform(*alive)
                while time.monotonic() < deadline:
                    time.sleep(0.2)
                    assert daemon.poll() is None, f"the daemon exited {daemon.returncode}:\n{log.read_text()[-3000:]}"
            finally:
                daemon.send_signal(signal.SIGKILL)
                daemon.wait(30)
                events.append((time.monotonic(), "killed"))
                kills += 1
            change_sources(running, rng, inbox, cycle)
            maybe_burst(running, rng)
            time.sleep(rng.uniform(*restart))
        # a clean stop too: SIGTERM drains and exits 0
        daemon = start_daemon(config, log)
        time.sleep(2.5)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, log.read_text()[-3000:]
        settled = time.monotonic()
        settle(config, work)
        print(
            f"soak: cycles and a clean stop took {settled - began:.1f} s, the settling pass {time.monotonic() - settled:.1f} s"
        )

        with sqlite3.connect(work / "state.db") as db:
            outcomes = dict(db.execute("SELECT outcome, count(*) FROM runs GROUP BY outcome").fetchall())
        check_pulls(running, work)
        check_pushes(running, work, bad_rows)
        check_dead_letters(running, work, bad_rows)
        stats = check_politeness(running, events)
        requests = {name: s["requests"] for name, s in stats.items()}
        throttled = {name: s["throttled"] for name, s in stats.items()}
        injected = {name: running.sim(name).faults.describe()["injected"] for name in running.threads}
        print(
            f"\nsoak seed {seed}: {cycles} cycles, {kills} SIGKILLs, runs {outcomes}, requests {requests}, "
            f"429/503 sent {throttled}, faults injected {injected}"
        )
        assert sum(outcomes.values()) >= cycles, outcomes


def _seed() -> int:
    return int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(1_000_000))


def test_soak_short(tmp_path: Path) -> None:
    """Five SIGKILLs under faults (about a minute): the version ``make test`` runs."""
    soak(tmp_path, 5, _seed(), alive=(1.5, 3.5), restart=(1.5, 2.0))


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_soak(tmp_path: Path) -> None:
    """The long soak: ``SOAK_CYCLES`` (default 60) SIGKILLs at random moments."""
    soak(tmp_path, int(os.environ.get("SOAK_CYCLES", "60")), _seed(), alive=(1.5, 6.0), restart=(1.5, 3.0))
