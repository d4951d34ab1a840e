"""Several `ferryman run` instances on one PostgreSQL state store: every scheduled slot runs
exactly once across them, a pipeline moves to a surviving instance when its holder dies
(after the lease expires, from the committed cursor, with every record exactly once at
the target), and `ferryman status` says which instance holds or last ran each pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferryman.cli import status_rows
from ferryman.config import load_config
from ferryman.state import StateStore
from ferryman.timeutil import UTC, format_utc, utcnow
from tests.conftest import run_cli
from tests.daemon.support import Daemon, csv_system, read_keys, write_tickets

pytestmark = pytest.mark.postgres

# Slots near now: claims older than the retention (7 days) are pruned as later slots are
# claimed, so a fixed date here turned these tests into a time bomb a week after it was written.
T0 = utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
LEASE_TTL = 4.0  # seconds: state.lease_ttl in these tests (60 by default)


def pg_only(state_url: str) -> None:
    if not state_url.startswith("postgresql"):
        pytest.skip("several instances share a PostgreSQL state store (SQLite serves one instance)")


def instance_configs(
    tmp_path: Path, sockets: Path, state_url: str, systems: dict[str, Any], pipelines: dict[str, Any]
) -> dict[str, Path]:
    """One config, as two hosts would have it; only the instance name and where the control
    API listens differ (here the two "hosts" are one machine)."""
    configs = {}
    for name in ("alpha", "beta"):
        data = {
            "instance": name,
            "state": {"url": state_url, "lease_ttl": f"{LEASE_TTL:g}s"},
            "log": {"format": "json", "level": "info"},
            "control": {"listen": f"unix:{sockets / name}.sock"},
            "systems": systems,
            "pipelines": pipelines,
        }
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(data, sort_keys=False))
    return configs


# -- the store's claim -----------------------------------------------------------------------


def test_a_slot_is_claimed_once_and_with_the_lease(state_url: str) -> None:
    one, two = StateStore.open(state_url, instance="one"), StateStore.open(state_url, instance="two")
    ttl = timedelta(seconds=30)
    assert one.claim_slot("p", T0, ttl).outcome == "claimed"
    assert one.lease_holder("p") is not None, "the claim took the lease"
    taken = two.claim_slot("p", T0, ttl)
    assert (taken.outcome, taken.by) == ("taken", "one")
    # the next slot comes while one's run goes on: two may not run it, and keeps no claim
    busy = two.claim_slot("p", T0 + timedelta(minutes=1), ttl)
    assert busy.outcome == "busy" and busy.by is not None and busy.by.startswith("one")
    one.release_lease("p")
    assert two.claim_slot("p", T0 + timedelta(minutes=1), ttl).outcome == "claimed"
    assert [(s["slot_at"], s["instance"]) for s in one.slots("p")] == [(T0, "one"), (T0 + timedelta(minutes=1), "two")]
    # an instance that claimed a slot and then stops before running it gives both back
    two.abandon_slot("p", T0 + timedelta(minutes=1))
    assert one.lease_holder("p") is None
    assert one.claim_slot("p", T0 + timedelta(minutes=1), ttl).outcome == "claimed"


def test_a_slot_older_than_the_retention_stays_claimed(state_url: str) -> None:
    """A missed run coalesced after a long outage: its claim is not pruned as it is made."""
    one, two = StateStore.open(state_url, instance="one"), StateStore.open(state_url, instance="two")
    ttl = timedelta(seconds=30)
    long_ago = T0 - timedelta(days=30)
    assert one.claim_slot("p", long_ago, ttl).outcome == "claimed"
    one.release_lease("p")
    assert (two.claim_slot("p", long_ago, ttl).outcome, two.claim_slot("p", long_ago, ttl).by) == ("taken", "one")


def test_two_stores_racing_for_the_same_slots_claim_each_once(state_url: str) -> None:
    """Two instances fire at the same instant for 20 slots: one claims, the other sees it taken."""
    stores = [StateStore.open(state_url, instance=name) for name in ("one", "two")]
    ttl = timedelta(seconds=30)
    outcomes: dict[int, list[tuple[str, str]]] = {i: [] for i in range(20)}
    barrier = threading.Barrier(2)

    def fire(store: StateStore) -> None:
        for i in range(20):
            barrier.wait()
            claim = store.claim_slot("p", T0 + timedelta(seconds=i), ttl)
            outcomes[i].append((claim.outcome, store.instance))
            barrier.wait()
            if claim.outcome == "claimed":
                store.release_lease("p")  # the run ended before the next slot

    threads = [threading.Thread(target=fire, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for i, seen in outcomes.items():
        assert sorted(outcome for outcome, _ in seen) == ["claimed", "taken"], (i, seen)
    assert len(stores[0].slots("p")) == 20


def test_renewing_never_takes_a_lease(state_url: str) -> None:
    one, two = StateStore.open(state_url, instance="one"), StateStore.open(state_url, instance="two")
    assert not one.renew_lease("p", timedelta(seconds=30)), "nobody holds it: nothing to renew"
    assert one.acquire_lease("p", timedelta(seconds=-1))  # held, and expired
    assert two.acquire_lease("p", timedelta(seconds=30)), "an expired lease is taken over"
    assert not one.renew_lease("p", timedelta(seconds=30)), "one lost it and learns so"
    assert two.renew_lease("p", timedelta(seconds=30))


def test_a_generation_fences_a_holder_that_lost_its_lease_even_after_it_came_back(state_url: str) -> None:
    """one stalls past its TTL; two takes the lease, runs, releases; one wakes up: renewing
    fails, a page commit is refused, and self-fencing stops its next write."""
    from ferryman.errors import LeaseLost
    from ferryman.state import PageCommit

    one, two = StateStore.open(state_url, instance="one"), StateStore.open(state_url, instance="two")
    assert one.acquire_lease("p", timedelta(seconds=-1))  # taken, then "stalled" past its TTL
    assert two.acquire_lease("p", timedelta(seconds=30))
    two.release_lease("p")  # two finished
    with pytest.raises(LeaseLost):
        one.commit_page(PageCommit("p"))
    assert not one.renew_lease("p", timedelta(seconds=30)), "renewing never takes the lease back"
    with pytest.raises(LeaseLost):
        one.self_fence("p")
    # taken again by one itself: a new generation, which a run holding the old one cannot use
    assert one.acquire_lease("p", timedelta(seconds=30))
    one.commit_page(PageCommit("p"))


def test_a_takeover_ends_the_stuck_transaction_of_an_expired_holder(
    state_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder stopped inside a transaction keeps the lease row locked; once its lease has
    expired, the instance taking over ends that session instead of waiting on the lock."""
    pg_only(state_url)
    import ferryman.state as state
    from ferryman.errors import LeaseLost

    monkeypatch.setattr(state, "STUCK_TRANSACTION", timedelta(seconds=1))
    one, two = StateStore.open(state_url, instance="one"), StateStore.open(state_url, instance="two")
    assert one.acquire_lease("p", timedelta(seconds=1))
    stuck = one.engine.connect()
    transaction = stuck.begin()
    stuck.exec_driver_sql("SELECT holder FROM leases WHERE pipeline = 'p' FOR UPDATE")  # and stops here
    try:
        time.sleep(1.5)  # its lease and its transaction grow old
        began = time.monotonic()
        assert two.acquire_lease("p", timedelta(seconds=30))
        assert time.monotonic() - began < 5, "the takeover waited on the stuck session's lock"
    finally:
        with contextlib.suppress(Exception):
            transaction.rollback()
        with contextlib.suppress(Exception):
            stuck.close()
    with pytest.raises(LeaseLost):
        one.commit_page(state.PageCommit("p"))


# -- the heartbeat -----------------------------------------------------------------------------


async def test_the_heartbeat_keeps_a_slow_runs_lease_and_stops_a_run_that_lost_it(
    tmp_path: Path, state_url: str, sockets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run waiting on one slow page keeps its lease past its TTL (the heartbeat renews it,
    not the engine's between-pages renewal); a run whose lease was taken over (this process
    stalled past the TTL) is told to stop after the page in hand."""
    from ferryman.config import load_config
    from ferryman.daemon._notify import Notifier
    from ferryman.daemon._service import Daemon as Service
    from ferryman.engine import Engine, RunResult

    async def slow_page(engine: Engine, name: str, *, stop: asyncio.Event, **_: Any) -> RunResult:
        assert engine.store.acquire_lease(name, engine.config.state.lease_ttl)
        try:
            await asyncio.wait_for(stop.wait(), 30)  # a page that takes long; checks `stop` after
        except TimeoutError:
            return RunResult(name, "ok")
        return RunResult(name, "stopped")

    monkeypatch.setattr(Engine, "run", slow_page)
    write_tickets(tmp_path / "in" / "tickets.csv", 1)
    configs = instance_configs(
        tmp_path,
        sockets,
        state_url,
        {"inbox": csv_system(tmp_path / "in"), "out": csv_system(tmp_path / "out")},
        {"p": {"from": "inbox.tickets", "to": "out.tickets"}},
    )
    text = configs["alpha"].read_text().replace(f"lease_ttl: {LEASE_TTL:g}s", "lease_ttl: 1s")
    configs["alpha"].write_text(text)
    service = Service(load_config(configs["alpha"]), notifier=Notifier({}))
    serving = asyncio.create_task(service.serve())
    other = StateStore(state_url, instance="beta")
    try:
        while not hasattr(service, "scheduler"):
            await asyncio.sleep(0.01)
        task, _ = service.start_run("p", "api")
        await asyncio.sleep(2.5)  # 2.5 TTLs with no page committed
        assert not task.done()
        assert not other.acquire_lease("p", timedelta(seconds=30)), "the lease was kept alive"

        # this process "stalls": its lease lapses and another instance takes the pipeline
        with other.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE leases SET expires_at = '2000-01-01 00:00:00'")
        assert other.acquire_lease("p", timedelta(seconds=30))
        result = await asyncio.wait_for(task, 5)
        assert result.outcome == "stopped", "the run gave the pipeline up after the page in hand"
        holder = other.lease_holder("p")
        assert holder is not None and holder[0].startswith("beta")
    finally:
        other.close()
        service.request_stop("test")
        assert await asyncio.wait_for(serving, 10) == 0


# -- two daemons -------------------------------------------------------------------------------


def test_two_instances_run_every_scheduled_slot_exactly_once(tmp_path: Path, state_url: str, sockets: Path) -> None:
    """Six pipelines every 2-3 s on two `ferryman run` processes for ~20 s: from the runs
    table, each slot ran once, on one instance, none missed, and both did some of the work."""
    pg_only(state_url)
    every = {"p1": 2, "p2": 2, "p3": 2, "p4": 3, "p5": 3, "p6": 3}
    systems: dict[str, Any] = {"out": {**csv_system(tmp_path / "out"), "streams": dict.fromkeys(every, "ticket")}}
    pipelines = {}
    for name, seconds in every.items():
        write_tickets(tmp_path / name / "tickets.csv", 30)
        systems[f"{name}_in"] = csv_system(tmp_path / name)
        schedule = {"every": f"{seconds}s"}
        if seconds == 3:
            schedule["jitter"] = "1s"  # a delay after the slot, not another slot
        pipelines[name] = {"from": f"{name}_in.tickets", "to": f"out.{name}", "schedule": schedule}
    configs = instance_configs(tmp_path, sockets, state_url, systems, pipelines)

    daemons = {name: Daemon(config) for name, config in configs.items()}
    try:
        for daemon in daemons.values():
            daemon.wait_ready()
        both_up = utcnow()
        time.sleep(18)
        both_down = utcnow()
        for daemon in daemons.values():
            code, _ = daemon.stop()
            assert code == 0, daemon.log_text()
    finally:
        for daemon in daemons.values():
            daemon.kill()

    store = StateStore(state_url)
    try:
        runs = {r["id"]: r for r in store.runs(limit=10_000)}
        slots = store.slots()
    finally:
        store.close()
    # all ok, but for runs that SIGTERM caught at the end (stopped after their page)
    not_ok = [r for r in runs.values() if r["outcome"] != "ok"]
    assert all(r["outcome"] == "stopped" and r["started_at"] > both_down - timedelta(seconds=2) for r in not_ok), not_ok
    served = Counter(s["run_id"] for s in slots)
    assert None not in served, "every claimed slot was run"
    assert max(served.values()) == 1
    assert set(served) == set(runs), "no run without a slot (nothing but the schedule asked for runs)"
    per_instance = Counter(s["instance"] for s in slots)
    events = [e for d in daemons.values() for e in d.events()]
    busy: dict[str, set[str]] = {}
    for event in events:
        if event["event"] == "run.busy" and "slot" in event:
            busy.setdefault(event["pipeline"], set()).add(event["slot"])
    missed = 0
    for name, seconds in every.items():
        period = timedelta(seconds=seconds)
        mine = [s for s in slots if s["pipeline"] == name]
        times = [s["slot_at"] for s in mine]
        assert len(times) == len(set(times))
        # no slot missed while both instances were up (the edges may go either way), unless
        # it came while the previous run still went on (a loaded machine), which is said
        expected = set(_slots(both_up, both_down - period, period))
        for slot_at in expected - set(times):
            assert format_utc(slot_at) in busy.get(name, set()), f"{name}: slot {slot_at} missed silently"
        missed += len(expected - set(times))
        for slot in mine:
            run = runs[slot["run_id"]]
            assert run["pipeline"] == name and run["instance"] == slot["instance"]
            assert run["trigger"] in ("schedule", "startup")
            if run["trigger"] == "schedule":
                assert slot["slot_at"] <= run["started_at"] < slot["slot_at"] + period, "ran in its own slot"
    print(
        f"\nslots run per instance: {dict(per_instance)} ({len(slots)} slots, {len(runs)} runs, "
        f"{missed} skipped while the previous run went on)"
    )
    assert set(per_instance) == {"alpha", "beta"} and min(per_instance.values()) >= 5, per_instance
    skipped = {name: [e for e in d.events() if e["event"] == "run.skipped_claimed"] for name, d in daemons.items()}
    assert all(skipped.values()), "each instance saw slots the other had claimed"
    assert {e["claimed_by"] for e in skipped["alpha"]} == {"beta"}


def _slots(start: datetime, end: datetime, period: timedelta) -> list[datetime]:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    first = epoch + -((epoch - start) // period) * period  # the first slot at or after start
    out = []
    while first <= end:
        out.append(first)
        first += period
    return out


ROWS = int(os.environ.get("FERRYMAN_HA_ROWS", "30000"))


def test_sigkill_mid_run_on_another_host_the_survivor_takes_over_after_the_lease_expires(
    tmp_path: Path, state_url: str, sockets: Path
) -> None:
    """Two instances "on two hosts" (FERRYMAN_HOST_ID); the one running a big CSV sync is
    killed with SIGKILL. Its lease blocks the pipeline until it expires (a dead process on
    another machine cannot be seen), then the survivor runs it from the committed cursor:
    every record is at the target exactly once. `ferryman status` says who held and ran it."""
    pg_only(state_url)
    write_tickets(tmp_path / "big" / "tickets.csv", ROWS)
    systems: dict[str, Any] = {
        "bulk": csv_system(tmp_path / "big"),
        "out": {**csv_system(tmp_path / "out"), "streams": {"big": "ticket", "s1": "ticket", "s2": "ticket"}},
    }
    pipelines: dict[str, Any] = {
        "big": {"from": "bulk.tickets", "to": "out.big", "page_size": 250, "schedule": {"every": "2s"}}
    }
    for name in ("s1", "s2"):
        write_tickets(tmp_path / name / "tickets.csv", 40)
        systems[f"{name}_in"] = csv_system(tmp_path / name)
        pipelines[name] = {"from": f"{name}_in.tickets", "to": f"out.{name}", "schedule": {"every": "2s"}}
    configs = instance_configs(tmp_path, sockets, state_url, systems, pipelines)
    hosts = {"alpha": "host-a", "beta": "host-b"}
    daemons = {name: Daemon(config, env={"FERRYMAN_HOST_ID": hosts[name]}) for name, config in configs.items()}
    store = StateStore(state_url)
    try:
        for daemon in daemons.values():
            daemon.wait_ready()
        deadline = time.monotonic() + 60
        while not (going := [r for r in store.runs("big") if r["outcome"] == "running" and r["read"] >= 2000]):
            assert time.monotonic() < deadline, "no big run got going"
            time.sleep(0.05)
        victim_name = going[0]["instance"]
        survivor_name = "beta" if victim_name == "alpha" else "alpha"
        victim, survivor = daemons[victim_name], daemons[survivor_name]
        victim.kill()  # SIGKILL
        killed_at = utcnow()
        # what `ferryman status` shows (its rows, read in-process: the CLI takes a second to
        # start, and the lease it would show may be gone by then): the dead holder, until
        # its lease expires, since a process on another host cannot be seen to be dead
        (row,) = [r for r in status_rows(load_config(configs[survivor_name]), store) if r["pipeline"] == "big"]
        assert row["running_on"] == f"{victim_name} on {hosts[victim_name]} (pid {victim.pid})"

        deadline = time.monotonic() + 60
        while not (taken := [r for r in store.runs("big") if r["instance"] == survivor_name and r["outcome"] == "ok"]):
            assert time.monotonic() < deadline, survivor.log_text()
            time.sleep(0.1)
        takeover = taken[-1]  # the oldest of the survivor's successful runs after the kill
        waited = (takeover["started_at"] - killed_at).total_seconds()
        busy_after_kill = [
            e for e in survivor.events() if e["event"] == "run.busy" and e["pipeline"] == "big" and _at(e) > killed_at
        ]
        # settle: the survivor's later slots of the small pipelines, then look at everything
        time.sleep(2.5)
        code, _ = survivor.stop()
        assert code == 0, survivor.log_text()
    finally:
        for daemon in daemons.values():
            daemon.kill()

    try:
        big_runs = list(reversed(store.runs("big")))
        slots = store.slots()
    finally:
        store.close()
    killed = next(r for r in big_runs if r["instance"] == victim_name and r["outcome"] == "interrupted")
    print(
        f"\nkilled {victim_name} after it committed {killed['created']} of {ROWS} rows; {survivor_name} "
        f"took over {waited:.1f}s later (lease_ttl {LEASE_TTL:g}s), slot claims refused meanwhile: "
        f"{len(busy_after_kill)}; it read {takeover['read']} rows and created {takeover['created']} in "
        f"{(takeover['ended_at'] - takeover['started_at']).total_seconds():.1f}s"
    )
    assert 0 < killed["created"] < ROWS, "killed mid-run"
    # the lease of a holder on another host is honoured until it expires: renewed every
    # TTL/3, it expires between 2/3 TTL and TTL after the kill; then the next slot takes it
    assert LEASE_TTL * 2 / 3 - 0.5 <= waited <= LEASE_TTL + 2 + 2.0, waited
    assert busy_after_kill, "slots came while the dead holder's lease was live and were refused"
    # from the committed cursor (less the pipeline's 2-minute overlap), not from the start
    assert takeover["read"] <= ROWS - killed["created"] + 121
    assert takeover["created"] == ROWS - killed["created"], "nothing delivered twice, nothing lost"
    keys = read_keys(tmp_path / "out" / "big.csv")
    counts = Counter(keys)
    assert len(counts) == ROWS and max(counts.values()) == 1, "every record exactly once at the target"
    for name in ("s1", "s2"):
        assert sorted(read_keys(tmp_path / "out" / f"{name}.csv")) == [f"T{i:06d}" for i in range(40)]
        later = [s for s in slots if s["pipeline"] == name and s["slot_at"] > killed_at + timedelta(seconds=LEASE_TTL)]
        assert later and {s["instance"] for s in later} == {survivor_name}, "the survivor runs every pipeline"
    # and the CLI, from either host's config, says who ran each pipeline last
    result = run_cli("--config", str(configs[victim_name]), "status", "--json", timeout=60)
    assert result.returncode == 0, result.stderr
    status = {row["pipeline"]: row for row in json.loads(result.stdout)}
    assert {status[name]["last_run"]["instance"] for name in ("big", "s1", "s2")} == {survivor_name}
    assert all(status[name]["running_on"] is None for name in ("big", "s1", "s2")), "nothing runs any more"
    text = run_cli("--config", str(configs[victim_name]), "status", timeout=60).stdout
    assert text.count(f", on {survivor_name}\n") == 3, text  # "last run   ok  TIME (..), took Ns, on beta"


def _at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
