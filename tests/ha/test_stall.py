"""A holder that stalls past its lease and then resumes writes nothing more.

Two instances "on two hosts" share a PostgreSQL state store. The one running a big sync is
stopped with SIGSTOP (a long GC pause, a suspended VM) mid-run; the other takes the
pipeline over once the lease expires. The stalled one is then continued with SIGCONT,
either while the new holder still runs or after it has finished and released the lease.
Whatever the order, the target holds every record exactly once and the cursor is where the
last successful run left it: the stalled holder's writes are fenced (its partial CSV file is
its own and is never published; it checks its lease before each write to an app), its
commits are refused (the lease generation moved), and it never takes the lease again by
renewing it.
"""

from __future__ import annotations

import csv
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ferryman.state import StateStore
from tests.daemon.support import SANDBOX_KEY, Daemon, csv_system, read_keys, sandbox, write_tickets
from tests.ha.test_instances import LEASE_TTL, instance_configs, pg_only

pytestmark = pytest.mark.postgres

ROWS = int(os.environ.get("FERRYMAN_STALL_ROWS", "30000"))
CONTACTS = int(os.environ.get("FERRYMAN_STALL_CONTACTS", "1200"))
HOSTS = {"alpha": "host-a", "beta": "host-b"}


def write_contacts(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["key", "updated_at", "email", "first_name", "last_name"])
        for i in range(n):
            stamp = f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"
            writer.writerow([f"C{i:06d}", stamp, f"person{i}@example.com", "Person", f"No{i}"])


def contacts_system(port: int) -> dict[str, Any]:
    """The generic sandbox's contacts: found again by e-mail, so an interrupted page of
    creates is settled by lookup (the batched intents of a FIND-capable target)."""
    return {
        "connector": "rest",
        "base_url": f"http://127.0.0.1:{port}/api",
        "auth": {"type": "header", "name": "X-API-Key", "key": "${SANDBOX_KEY}"},
        "rate_limit": "1000000/min",
        "streams": {
            "contacts": {
                "record": "contact",
                "path": "/contacts",
                "records_path": "data",
                "params": {"paginate": "cursor"},
                "pagination": {
                    "style": "cursor",
                    "cursor_path": "next_cursor",
                    "param": "cursor",
                    "size_param": "limit",
                    "max_size": 1000,
                },
                "natural_key": "email",
                "find": {"params": {"email": "{email}"}},
                "fields": {"email": "email", "first_name": "first_name", "last_name": "last_name"},
                "item": "/contacts/{id}",
                "create": {"path": "/contacts", "body": "form", "id_from": "location"},
                "update": {"method": "PATCH", "path": "/contacts/{id}"},
            }
        },
    }


def emails_in_app(port: int) -> list[str]:
    emails: list[str] = []
    cursor: str | None = None
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/api", headers={"X-API-Key": SANDBOX_KEY}) as client:
        for _ in range(10_000):
            params: dict[str, Any] = {"paginate": "cursor", "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            body = client.get("/contacts", params=params).json()
            emails += [c["email"] for c in body["data"]]
            cursor = body.get("next_cursor")
            if not cursor:
                return emails
    raise AssertionError("the contact list did not end")


def wait_for(what: str, check: Callable[[], Any], timeout: float, daemons: dict[str, Daemon]) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{d.log_text()[-4000:]}" for n, d in daemons.items())
            raise AssertionError(f"{what}: not within {timeout}s\n{logs}")
        time.sleep(0.05)
    return found


@pytest.fixture
def app() -> Iterator[int]:
    with sandbox("--records", "0", "--rate-limit", "1000000") as (port, _proc):
        yield port


def stall_and_resume(
    tmp_path: Path, sockets: Path, state_url: str, systems: dict[str, Any], total: int, resume_after_finish: bool
) -> tuple[str, str, list[dict[str, Any]]]:
    """Run ``big`` on two instances, SIGSTOP its holder mid-run, SIGCONT it in the order
    asked, let everything settle; returns (victim, survivor, the runs of ``big``)."""
    pipelines = {"big": {"from": "src.items", "to": "dst.items", "page_size": 100, "schedule": {"every": "2s"}}}
    configs = instance_configs(tmp_path, sockets, state_url, systems, pipelines)
    env = {"SANDBOX_KEY": SANDBOX_KEY}
    daemons = {name: Daemon(config, env={**env, "FERRYMAN_HOST_ID": HOSTS[name]}) for name, config in configs.items()}
    store = StateStore(state_url)
    try:
        for daemon in daemons.values():
            daemon.wait_ready()
        going = wait_for(
            "a run of big got going",
            lambda: [r for r in store.runs("big") if r["outcome"] == "running" and r["read"] >= total // 6],
            60,
            daemons,
        )
        victim_name = going[0]["instance"]
        survivor_name = "beta" if victim_name == "alpha" else "alpha"
        victim = daemons[victim_name]
        victim.signal(signal.SIGSTOP)
        stopped_run = going[0]["id"]
        try:
            taken = wait_for(
                "the survivor took over",
                lambda: [r for r in store.runs("big") if r["instance"] == survivor_name and r["id"] > stopped_run],
                LEASE_TTL * 3 + 30,
                daemons,
            )
            if resume_after_finish:
                wait_for(
                    "the survivor finished",
                    lambda: any(
                        r["outcome"] == "ok" and r["created"] > 0
                        for r in store.runs("big")
                        if r["instance"] == survivor_name and r["id"] >= taken[-1]["id"]
                    ),
                    120,
                    daemons,
                )
            else:
                (row,) = [r for r in store.runs("big") if r["id"] == taken[-1]["id"]]
                assert row["outcome"] == "running", "the survivor's run was meant to be going on"
        finally:
            victim.signal(signal.SIGCONT)
        # the stalled run ends (its lease is gone), and a later run has all the records
        wait_for(
            "the stalled run ended",
            lambda: next(r for r in store.runs("big") if r["id"] == stopped_run)["outcome"] != "running",
            60,
            daemons,
        )
        wait_for(
            "a run after everything read nothing new",
            lambda: (
                any(
                    r["outcome"] == "ok" and r["created"] == 0 and r["id"] > stopped_run
                    for r in store.runs("big")
                    if r["started_at"] > next(x for x in store.runs("big") if x["id"] == stopped_run)["started_at"]
                )
                and not any(r["outcome"] == "running" for r in store.runs("big"))
            ),
            120,
            daemons,
        )
        for daemon in daemons.values():
            code, _ = daemon.stop()
            assert code == 0, daemon.log_text()[-4000:]
        runs = list(reversed(store.runs("big", limit=1000)))
        cursor = store.get_cursor("big")
    finally:
        for daemon in daemons.values():
            daemon.signal(signal.SIGCONT) if daemon.proc.poll() is None else None
            daemon.kill()
        store.close()
    stalled = next(r for r in runs if r["id"] == stopped_run)
    # it ends refused: its lease moved (fenced), or its session inside a transaction was
    # ended by the server (idle_in_transaction_session_timeout) while it was stopped
    assert stalled["outcome"] in ("failed", "stopped", "interrupted"), stalled
    assert cursor is not None
    print(
        f"\n{victim_name} stalled after reading {going[0]['read']} of {total}; {survivor_name} took over "
        f"(run {taken[-1]['id']}); resumed {'after' if resume_after_finish else 'while'} the new holder "
        f"{'finished' if resume_after_finish else 'ran'}; stalled run: {stalled['outcome']}: {stalled['message']}"
    )
    return victim_name, survivor_name, runs


# each order of SIGCONT once per target in make test, the other in make test-slow (each takes 15-25 s)
@pytest.mark.parametrize(
    "resume_after_finish",
    [False, pytest.param(True, marks=pytest.mark.slow)],
    ids=["resumed-while-taken", "resumed-after-release"],
)
def test_a_stalled_holder_writes_no_duplicate_csv_rows(
    tmp_path: Path, state_url: str, sockets: Path, resume_after_finish: bool
) -> None:
    pg_only(state_url)
    write_tickets(tmp_path / "in" / "items.csv", ROWS)
    systems = {
        "src": {**csv_system(tmp_path / "in"), "streams": {"items": "ticket"}},
        "dst": {**csv_system(tmp_path / "out"), "streams": {"items": "ticket"}},
    }
    stall_and_resume(tmp_path, sockets, state_url, systems, ROWS, resume_after_finish)
    counts = Counter(read_keys(tmp_path / "out" / "items.csv"))
    doubled = {k: n for k, n in counts.items() if n > 1}
    assert not doubled, f"{len(doubled)} keys written more than once, e.g. {sorted(doubled)[:5]}"
    assert len(counts) == ROWS, "every record at the target"
    store = StateStore(state_url)
    try:
        cursor = store.get_cursor("big")
    finally:
        store.close()
    assert cursor is not None and cursor.key == f"T{ROWS - 1:06d}", f"the cursor went back: {cursor}"
    assert not list((tmp_path / "out").glob("*.partial*")), "no partial file left behind"


@pytest.mark.parametrize(
    "resume_after_finish",
    [pytest.param(False, marks=pytest.mark.slow), True],
    ids=["resumed-while-taken", "resumed-after-release"],
)
def test_a_stalled_holder_creates_no_duplicate_records_in_an_app(
    tmp_path: Path, state_url: str, sockets: Path, app: int, resume_after_finish: bool
) -> None:
    pg_only(state_url)
    write_contacts(tmp_path / "in" / "items.csv", CONTACTS)
    systems = {"src": {**csv_system(tmp_path / "in"), "streams": {"items": "contact"}}, "dst": contacts_system(app)}
    systems["dst"]["streams"]["items"] = systems["dst"]["streams"].pop("contacts")
    stall_and_resume(tmp_path, sockets, state_url, systems, CONTACTS, resume_after_finish)
    counts = Counter(emails_in_app(app))
    doubled = {k: n for k, n in counts.items() if n > 1}
    assert not doubled, f"{len(doubled)} contacts created more than once, e.g. {sorted(doubled)[:5]}"
    assert len(counts) == CONTACTS, "every record at the target"
