"""The record history end to end, on two sandbox apps and the ``ferryman`` command as a
process: both apps edit the same contact's phone, ``newest_wins`` keeps the newer edit, the
losing value is listed by ``ferryman conflicts list``, restored by ``ferryman conflicts
restore`` and carried to the other app by the next run; ``ferryman explain`` prints each
step of that record's history, by either app's key."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from ferryman.sandbox import SimulatorThread
from ferryman_connectors.rest.simulator import GenericSimulator
from tests.conftest import run_cli
from tests.e2e.test_twoway_sandboxes import system

KEY = "sandbox-key"


def cli(config: Path, *args: str) -> Any:
    return run_cli("--config", str(config), *args, env={"SANDBOX_KEY": KEY})


def phone(app: SimulatorThread, key: str) -> Any:
    row = app.call(lambda: app.simulator.table("contacts").get(int(key)))
    assert row is not None, f"contact {key} is gone"
    return row["phone"]


def set_phone(app: SimulatorThread, key: str, value: str) -> None:
    app.call(lambda: app.simulator.table("contacts").update(int(key), {"phone": value}))


def test_a_conflict_newest_wins_is_journaled_listed_restored_and_explained(
    tmp_path: Path, default_state_url: str
) -> None:
    with (
        SimulatorThread(GenericSimulator(records=3, seed=41)) as crm,
        SimulatorThread(GenericSimulator(records=0, seed=42)) as desk,
    ):
        config = tmp_path / "ferryman.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "state": {"url": default_state_url},
                    "log": {"level": "warning"},
                    "history": {"events": "all"},
                    "systems": {"crm": system(crm.url), "desk": system(desk.url)},
                    "pipelines": {
                        "contacts": {
                            "from": "crm.contacts",
                            "to": "desk.contacts",
                            "direction": "both",
                            "conflict": "newest_wins",
                        }
                    },
                }
            )
        )
        first = cli(config, "sync", "contacts", "--no-progress", "--json")
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["counts"]["created"] == 3
        explained = json.loads(cli(config, "explain", "contacts", "1", "--json").stdout)
        created = explained["events"][0]
        assert [e["action"] for e in explained["events"]] == ["create"], explained["events"]
        assert created["action"] == "create" and created["target"] == "desk.contacts"
        d1 = created["target_key"]
        echo = cli(config, "sync", "contacts", "--no-progress", "--json")  # reads our own creates back
        assert echo.returncode == 0 and json.loads(echo.stdout)["counts"]["updated"] == 0, echo.stderr

        # both apps edit the phone; the desk's edit comes a second later and wins
        set_phone(crm, "1", "+1 555 0100 (crm)")
        time.sleep(1.1)
        set_phone(desk, d1, "+1 555 0199 (desk)")
        second = cli(config, "sync", "contacts", "--no-progress", "--json")
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout)["counts"]["updated"] == 1
        assert phone(crm, "1") == phone(desk, d1) == "+1 555 0199 (desk)"

        listed = cli(config, "conflicts", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [entry] = json.loads(listed.stdout)
        assert (entry["system"], entry["record_key"], entry["policy"]) == ("crm.contacts", "1", "newest_wins")
        assert entry["lost"] == {"phone": "+1 555 0100 (crm)"} and entry["won"] == {"phone": "+1 555 0199 (desk)"}
        text = cli(config, "conflicts", "list")
        assert "+1 555 0100 (crm)" in text.stdout and "newest_wins" in text.stdout

        restored = cli(config, "conflicts", "restore", str(entry["id"]), "--yes")
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert phone(crm, "1") == "+1 555 0100 (crm)"
        third = cli(config, "sync", "contacts", "--no-progress", "--json")
        assert third.returncode == 0, third.stderr
        assert phone(desk, d1) == "+1 555 0100 (crm)", "the restored value travels on like any edit"
        again = cli(config, "conflicts", "restore", str(entry["id"]), "--yes")
        assert again.returncode == 1 and "restored" in (again.stdout + again.stderr)

        # the record's history, by the desk's key (ids 1-3 exist on both sides: --target-key
        # says which is meant): each step, in order
        shown = cli(config, "explain", "contacts", d1, "--target-key")
        assert shown.returncode == 0, shown.stderr
        steps = [
            word
            for line in shown.stdout.splitlines()
            for word in ("create", "echo", "conflict", "update", "restore")
            if f" {word} " in f" {line} " and "run" in line
        ]
        assert steps[0] == "create" and "echo" in steps
        assert steps.index("conflict") < steps.index("restore"), shown.stdout
        assert steps[-1] == "update", shown.stdout  # the restored value carried to the desk
        assert "newest_wins kept the to-side's version" in shown.stdout
        assert "+1 555" not in shown.stdout, "explain shows field names, never values"
