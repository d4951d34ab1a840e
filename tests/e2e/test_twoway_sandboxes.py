"""Two-way sync between two sandbox apps under random changes on both sides: 500 records,
2,000 random creates, edits and deletes interleaved with sync runs. Afterwards both apps
hold the same records, none twice, and Ferryman made no more writes than there were
changes plus conflicts (no echo writes). Writes are counted by the apps themselves."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from ferryman.config import load_config
from ferryman.engine import Engine
from ferryman.sandbox import SimulatorThread
from ferryman.state import StateStore
from ferryman_connectors.rest.simulator import GenericSimulator


class CountingApp(GenericSimulator):
    """The generic sandbox, counting the write requests it accepts (Ferryman's writes:
    the test's own changes go straight to its tables)."""

    writes = 0

    async def create_record(self, request: web.Request) -> web.StreamResponse:
        self.writes += 1
        return await super().create_record(request)

    async def patch_record(self, request: web.Request) -> web.StreamResponse:
        self.writes += 1
        return await super().patch_record(request)

    async def put_record(self, request: web.Request) -> web.StreamResponse:
        self.writes += 1
        return await super().put_record(request)

    async def delete_record(self, request: web.Request) -> web.StreamResponse:
        self.writes += 1
        return await super().delete_record(request)


def system(url: str) -> dict[str, Any]:
    return {
        "connector": "rest",
        "base_url": url + "/api",
        "auth": {"type": "header", "name": "X-API-Key", "key": "${SANDBOX_KEY}"},
        "streams": {
            "contacts": {
                "record": "contact",
                "path": "/contacts",
                "records_path": "data",
                "params": {"paginate": "cursor", "include_deleted": "true"},
                "pagination": {
                    "style": "cursor",
                    "cursor_path": "next_cursor",
                    "param": "cursor",
                    "size_param": "limit",
                    "max_size": 1000,
                },
                "incremental": {"template": "updated_since={cursor}", "format": "iso_z"},
                "natural_key": "email",
                "find": {"params": {"email": "{email}"}},
                "fields": {"email": "email", "first_name": "first_name", "last_name": "last_name", "phone": "phone"},
                "item": "/contacts/{id}",
                "create": {"method": "POST", "path": "/contacts", "body": "json", "id_from": "body", "id_path": "id"},
                "update": {"method": "PATCH", "path": "/contacts/{id}"},
                "delete": "/contacts/{id}",
            }
        },
    }


def live(app: SimulatorThread) -> dict[str, dict[str, Any]]:
    rows = app.call(lambda: app.simulator.table("contacts").query(include_deleted=False))
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        assert row["email"] not in out, f"{row['email']} twice in one app"
        out[row["email"]] = row
    return out


async def test_two_sandbox_apps_converge_under_2000_random_changes(tmp_path: Path, default_state_url: str) -> None:
    rng = random.Random(int(os.environ.get("FERRYMAN_RANDOM_SEED", "2026")))
    with (
        SimulatorThread(CountingApp(records=250, seed=31)) as crm,
        SimulatorThread(CountingApp(records=250, seed=32)) as desk,
    ):
        path = tmp_path / "ferryman.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "state": {"url": default_state_url},
                    "log": {"level": "warning"},
                    "systems": {"crm": system(crm.url), "desk": system(desk.url)},
                    "pipelines": {
                        "contacts": {
                            "from": "crm.contacts",
                            "to": "desk.contacts",
                            "direction": "both",
                            "conflict": "newest_wins",
                            "deletes": {"enabled": True, "max_share": 0.5},
                            "page_size": 500,
                            # changes here come seconds apart, far faster than people edit
                            "loop_breaker": {"max_writes": 10_000, "window": "1h"},
                        }
                    },
                }
            )
        )
        engine = Engine(load_config(path, environ={"SANDBOX_KEY": "sandbox-key"}), StateStore.open(default_state_url))
        try:
            first = await engine.run("contacts")
            assert first.outcome == "ok", first.message
            assert set(live(crm)) == set(live(desk))
            assert len(live(crm)) >= 490  # 250 each; a shared email links instead of doubling
            base = crm.simulator.writes + desk.simulator.writes
            changes = conflicts = 0
            serial = 0
            for _batch in range(20):
                touched: dict[str, set[str]] = {"crm": set(), "desk": set()}
                for _ in range(100):
                    name, app = rng.choice([("crm", crm), ("desk", desk)])
                    table = app.simulator.table("contacts")
                    alive = list(live(app).values())
                    roll = rng.random()
                    serial += 1
                    if roll < 0.2 or not alive:
                        fields = {
                            "email": f"new{serial}@example.com",
                            "first_name": "New",
                            "last_name": f"N{serial}",
                            "phone": None,
                            "company": None,
                        }
                        app.call(table.insert, fields)
                    elif roll < 0.85:
                        row = rng.choice(alive)
                        app.call(table.update, row["id"], {"phone": f"+1 555 {serial:06d}"})
                        touched[name].add(row["email"])
                    else:
                        row = rng.choice(alive)
                        app.call(lambda t=table, i=row["id"]: t.delete(i, soft=True))
                        touched[name].add(row["email"])
                    changes += 1
                conflicts += len(touched["crm"] & touched["desk"])
                result = await engine.run("contacts")
                assert result.outcome == "ok", result.message
            final = await engine.run("contacts")
            assert final.counts["created"] == final.counts["updated"] == final.counts["deleted"] == 0
        finally:
            await engine.aclose()
        a, b = live(crm), live(desk)
        refused = [x.reason for x in engine.store.dead_letters("contacts") if x.kind in ("rejected", "loop")]
        assert refused == [], refused[:3]
        assert set(a) == set(b), f"apps differ: {sorted(set(a) ^ set(b))[:5]}"
        for email in a:
            assert (a[email]["first_name"], a[email]["last_name"], a[email]["phone"]) == (
                b[email]["first_name"],
                b[email]["last_name"],
                b[email]["phone"],
            ), email
        made = crm.simulator.writes + desk.simulator.writes - base
        assert made <= changes + conflicts, f"{made} writes for {changes} changes and {conflicts} conflicts"
