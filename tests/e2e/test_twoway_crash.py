"""A two-way pipeline between two sandbox apps, killed with SIGKILL at random moments
while people keep editing both sides: it ends with both sides holding the same contacts,
none duplicated, and a final run that writes nothing (no echo)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import ferryman_connectors.cerb as cerb
from ferryman.connector import SystemContext
from ferryman.records import Contact
from ferryman.sandbox import SimulatorThread
from ferryman.testing import collect
from ferryman_connectors.cerb.simulator import CerbSimulator
from tests.conftest import ferryman_cmd

FIELDS = ("first_name", "last_name", "title", "phone", "mobile")


@pytest.fixture
def apps() -> Iterator[tuple[SimulatorThread, SimulatorThread]]:
    with (
        SimulatorThread(CerbSimulator(records=120, seed=11)) as crm,
        SimulatorThread(CerbSimulator(records=120, seed=12)) as desk,
    ):
        yield crm, desk


def connector(url: str) -> Any:
    options = cerb.CerbConnector.Options.model_validate({"base_url": url, "token": "sandbox-token"})
    return cerb.CerbConnector(SystemContext("t", options, None, {}))


async def contacts(url: str) -> dict[str, Contact]:
    conn = connector(url)
    await conn.open()
    try:
        records, _ = await collect(conn.read("contacts", None, 500))
    finally:
        await conn.close()
    out: dict[str, Contact] = {}
    for record in records:
        assert isinstance(record, Contact)
        if record.deleted:
            continue
        assert record.email not in out, f"{url}: {record.email} is there twice"
        out[record.email or ""] = record
    return out


async def edit_some(url: str, rng: random.Random, n: int) -> None:
    conn = connector(url)
    await conn.open()
    try:
        records, _ = await collect(conn.read("contacts", None, 500))
        for record in rng.sample(records, n):
            changed = record.model_copy(update={"title": f"title {rng.randrange(10**6)}"})
            await conn.update("contacts", record.key, changed)
    finally:
        await conn.close()


def test_sigkill_during_two_way_runs_leaves_no_duplicates(tmp_path: Path, default_state_url: str, apps: Any) -> None:
    crm, desk = apps
    rng = random.Random(int(os.environ.get("FERRYMAN_CRASH_SEED", "8")))
    config = tmp_path / "ferryman.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "state": {"url": default_state_url},
                "log": {"format": "json", "level": "warning"},
                "systems": {
                    "crm": {"connector": "cerb", "base_url": crm.url, "token": "${CERB_TOKEN}"},
                    "desk": {"connector": "cerb", "base_url": desk.url, "token": "${CERB_TOKEN}"},
                },
                "pipelines": {
                    "contacts": {
                        "from": "crm.contacts",
                        "to": "desk.contacts",
                        "direction": "both",
                        "conflict": "newest_wins",
                        "page_size": 50,
                        "overlap": "10m",
                        # org ids are local to each app: not synced in this pipeline
                        "mapping": {"organisation_key": None},
                    }
                },
            }
        )
    )
    env = {**os.environ, "CERB_TOKEN": "sandbox-token"}
    env.pop("NOTIFY_SOCKET", None)
    cmd = [*ferryman_cmd(), "--config", str(config), "sync", "contacts", "--no-progress"]
    killed = 0
    typical = 3.0  # seconds an uninterrupted run takes here; measured as the test goes
    for _ in range(8):
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = started + rng.uniform(0.3, max(0.5, typical * 0.9))
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        else:
            typical = time.monotonic() - started
        proc.wait(timeout=60)
        asyncio.run(edit_some(crm.url, rng, 25))
        asyncio.run(edit_some(desk.url, rng, 25))
    assert killed >= 3, f"only {killed} kills landed during a run"

    for _ in range(3):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "created 0, updated 0, deleted 0" in done.stdout, done.stdout

    a, b = asyncio.run(contacts(crm.url)), asyncio.run(contacts(desk.url))
    assert set(a) == set(b), f"sides differ: {sorted(set(a) ^ set(b))[:5]}"
    for email in a:
        assert [getattr(a[email], f) for f in FIELDS] == [getattr(b[email], f) for f in FIELDS], email
