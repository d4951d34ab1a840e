"""``ferryman conflicts list|restore``: the journal listed (read-only, values cut in text and
whole in JSON), and lost values written back into the record they were lost from.

Real parts throughout: journal entries made through the real
:class:`~ferryman.state.StateStore` (SQLite, and PostgreSQL where the ``state_url`` fixture
reaches it), the generic sandbox (``ferryman sandbox generic``) as a process on loopback
behind the ``rest`` connector, and the command run as a process (``run_cli``).
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ferryman.state import StateStore
from ferryman.state.history import NewConflict
from tests.conftest import ferryman_cmd, free_port, run_cli
from tests.e2e.support import sandbox_process

KEY = "sandbox-key"
PIPELINE = "contacts"


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app() -> Iterator[str]:
    """One generic sandbox for the module; each test makes its own contacts."""
    with sandbox_process("generic", "--records", "0", "--rate-limit", "1000000") as url:
        yield url


def crm(url: str, **options: Any) -> dict[str, Any]:
    """The sandbox's contacts through the ``rest`` connector."""
    return {
        "connector": "rest",
        "base_url": f"{url}/api",
        "auth": {"type": "header", "name": "X-API-Key", "key": "${SANDBOX_KEY}"},
        "rate_limit": "1000000/min",
        **options,
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
                "fields": {"email": "email", "first_name": "first_name", "last_name": "last_name", "phone": "phone"},
                "item": "/contacts/{id}",
                "create": {"path": "/contacts", "body": "json", "id_from": "body", "id_path": "id"},
                "update": {"method": "PATCH", "path": "/contacts/{id}"},
            }
        },
    }


def write_config(tmp_path: Path, state_url: str, url: str, **options: Any) -> Path:
    """``contacts``: a CSV file to the sandbox's contacts; ``copies``: CSV to CSV."""
    doc = {
        "state": {"url": state_url},
        "log": {"level": "error"},
        "systems": {
            "files": {
                "connector": "csv",
                "directory": str(tmp_path / "in"),
                "streams": {"contacts": "contact", "copies": "contact", "mirror": "contact"},
            },
            "crm": crm(url, **options),
        },
        "pipelines": {
            PIPELINE: {"from": "files.contacts", "to": "crm.contacts"},
            "copies": {"from": "files.contacts", "to": "files.copies"},
            "both": {"from": "crm.contacts", "to": "files.mirror", "direction": "both"},
        },
    }
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(config: Path, *args: str, secrets: bool = True) -> Any:
    """``ferryman --config CONFIG ARGS`` (stdin is not a terminal under pytest); ``secrets``:
    with the sandbox's key in the environment."""
    assert "SANDBOX_KEY" not in os.environ  # so that a read without it shows no secret is needed
    return run_cli("--config", str(config), *args, env={"SANDBOX_KEY": KEY} if secrets else None)


def make_contact(url: str, last_name: str = "Now") -> str:
    """A contact in the sandbox (as if the sync had written it); its id."""
    with httpx.Client(base_url=f"{url}/api", headers={"X-API-Key": KEY}) as client:
        made = client.post(
            "/contacts",
            json={
                "email": f"{uuid.uuid4().hex[:12]}@example.com",
                "first_name": "Ann",
                "last_name": last_name,
                "phone": "+1 555 0100",
            },
        )
        assert made.status_code == 201, made.text
        return str(made.json()["id"])


def contact(url: str, key: str) -> dict[str, Any]:
    with httpx.Client(base_url=f"{url}/api", headers={"X-API-Key": KEY}) as client:
        found = client.get(f"/contacts/{key}")
        assert found.status_code == 200, found.text
        return dict(found.json())


def journal(state_url: str, record_key: str, lost: dict[str, Any], won: dict[str, Any] | None = None) -> int:
    """A journal entry for ``crm.contacts#record_key`` (a one-way target edited by hand that
    the update overwrote), as a run writes it; its id."""
    store = StateStore.open(state_url)
    try:
        store.history.add(
            PIPELINE,
            None,
            [],
            [
                NewConflict(
                    "crm.contacts",
                    "target",
                    record_key,
                    "C1",
                    "source_wins",
                    f"crm.contacts#{record_key} was edited there since the last sync",
                    lost,
                    won if won is not None else {name: "new" for name in lost},
                )
            ],
        )
        [entry] = store.history.conflicts(PIPELINE, status=None, key=record_key)
        return entry.id
    finally:
        store.close()


def status_of(state_url: str, entry_id: int) -> str:
    store = StateStore.open(state_url)
    try:
        entry = store.history.conflict(entry_id)
        assert entry is not None
        return entry.status
    finally:
        store.close()


# -- list ----------------------------------------------------------------------------------------


def test_list_shows_open_entries_cut_to_width_and_json_whole(tmp_path: Path, state_url: str) -> None:
    config = write_config(tmp_path, state_url, f"http://127.0.0.1:{free_port()}")
    long = "x" * 300
    first = journal(state_url, "41", {"last_name": long, "phone": "***"}, {"last_name": "Short", "phone": "+1"})
    second = journal(state_url, "42", {"first_name": "Bea"}, {"first_name": "Bee"})
    store = StateStore.open(state_url)
    try:
        assert store.history.mark_restored(second)
    finally:
        store.close()

    listed = cli(config, "conflicts", "list", secrets=False)  # read-only: no secret needed
    assert listed.returncode == 0, listed.stderr
    out = listed.stdout
    assert (
        f"#{first} [open] " in out and f"{PIPELINE}: crm.contacts#41 (target side, source key C1), source_wins" in out
    )
    assert "crm.contacts#41 was edited there since the last sync" in out
    assert "    last_name: 'xxxxxxxx" in out and long not in out and "... -> 'Short'" in out
    assert "    phone: *** (masked: not restorable) -> '+1'" in out
    assert f"#{second} " not in out  # restored: only with --all
    assert "1 open: `ferryman conflicts restore ID --dry-run`" in out
    assert max(len(line) for line in out.splitlines()) < 200

    every = cli(config, "conflicts", "list", "--all", secrets=False)
    assert every.returncode == 0, every.stderr
    assert f"#{second} [restored 20" in every.stdout and "first_name: 'Bea' -> 'Bee'" in every.stdout
    assert every.stdout.index(f"#{first} ") < every.stdout.index(f"#{second} ")  # oldest first

    as_json = cli(config, "conflicts", "list", PIPELINE, "--all", "--json", secrets=False)
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert [(e["id"], e["status"]) for e in doc] == [(first, "open"), (second, "restored")]
    assert doc[0]["lost"] == {"last_name": long, "phone": "***"} and doc[0]["won"]["last_name"] == "Short"
    assert doc[0]["restored_at"] is None and doc[1]["restored_at"].endswith("Z")

    other = cli(config, "conflicts", "list", "copies", secrets=False)
    assert other.returncode == 0 and other.stdout.strip() == "no open journal entries"


def test_list_of_an_unknown_pipeline_says_did_you_mean_and_creates_no_database(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'var' / 'state.db'}", f"http://127.0.0.1:{free_port()}")
    typo = cli(config, "conflicts", "list", "contcts", secrets=False)
    assert typo.returncode == 78, typo.stdout + typo.stderr
    assert "no pipeline named 'contcts' (did you mean 'contacts'?)" in typo.stderr
    empty = cli(config, "conflicts", "list", secrets=False)
    assert empty.returncode == 0 and empty.stdout.strip() == "no open journal entries", empty.stderr
    assert not (tmp_path / "var").exists()


# -- restore -------------------------------------------------------------------------------------


def test_restore_writes_the_lost_value_back_skips_the_masked_one_and_refuses_a_second_time(
    tmp_path: Path, state_url: str, app: str
) -> None:
    config = write_config(tmp_path, state_url, app)
    key = make_contact(app, last_name="Now")
    entry = journal(state_url, key, {"last_name": "Before", "phone": "***"}, {"last_name": "Now", "phone": "+1"})

    dry = cli(config, "conflicts", "restore", str(entry), "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "  last_name: 'Now' -> 'Before'" in dry.stdout
    assert "  phone: not restored: masked in the journal (***)" in dry.stdout
    assert "dry run: nothing written" in dry.stdout
    assert contact(app, key)["last_name"] == "Now" and status_of(state_url, entry) == "open"

    unasked = cli(config, "conflicts", "restore", str(entry))  # no terminal, no --yes
    assert unasked.returncode == 2 and "pass --yes to confirm" in unasked.stderr
    assert contact(app, key)["last_name"] == "Now"

    done = cli(config, "conflicts", "restore", str(entry), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"#{entry}: restored last_name in crm.contacts#{key}" in done.stdout
    assert "not restored (masked): phone" in done.stdout
    assert "the next update of files.contacts#C1 overwrites these values again" in done.stdout
    after = contact(app, key)
    assert after["last_name"] == "Before" and after["phone"] == "+1 555 0100" and after["first_name"] == "Ann"
    assert status_of(state_url, entry) == "restored"

    store = StateStore.open(state_url)
    try:
        [event] = [e for e in store.history.events(PIPELINE, "C1") if e.action == "restore"]
    finally:
        store.close()
    assert (event.target, event.target_key, event.fields) == ("crm.contacts", key, ("last_name",))
    assert event.run_id is None and "journal #" in (event.detail or "") and "phone" in (event.detail or "")

    again = cli(config, "conflicts", "restore", str(entry), "--yes")
    assert again.returncode == 1 and f"journal entry #{entry} was restored already" in again.stderr
    assert contact(app, key)["last_name"] == "Before"
    explained = cli(config, "explain", PIPELINE, key, secrets=False)
    assert explained.returncode == 0 and " restore " in explained.stdout, explained.stdout + explained.stderr


def test_a_two_way_entry_is_restored_on_its_side_and_says_the_next_run_carries_it_on(tmp_path: Path, app: str) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    config = write_config(tmp_path, state, app)
    key = make_contact(app, last_name="Theirs")
    store = StateStore.open(state)
    try:
        conflict = NewConflict(
            system="crm.contacts",
            side="from",
            record_key=key,
            src_key=key,
            policy="newest_wins",
            reason="both sides changed; newest_wins kept the to side's edit",
            lost={"last_name": "Ours"},
            won={"last_name": "Theirs"},
        )
        store.history.add("both", None, [], [conflict])
        [entry] = store.history.conflicts("both")
    finally:
        store.close()
    result = cli(config, "conflicts", "restore", str(entry.id), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the next run of both carries them to files.mirror like any edit" in result.stdout
    assert "overwrites these values again" not in result.stdout
    assert contact(app, key)["last_name"] == "Ours"
    store = StateStore.open(state)
    try:
        [event] = store.history.events("both", key)
    finally:
        store.close()
    assert (event.action, event.source, event.target, event.fields) == ("restore", "crm.contacts", None, ("last_name",))


def test_a_record_gone_from_the_system_restores_nothing(tmp_path: Path, app: str) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    config = write_config(tmp_path, state, app)
    entry = journal(state, "999999", {"last_name": "Before"})
    result = cli(config, "conflicts", "restore", str(entry), "--yes")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "record 999999 no longer exists in crm.contacts; nothing restored" in result.stderr
    assert status_of(state, entry) == "open"


def test_a_field_the_record_no_longer_has_refuses_naming_it(tmp_path: Path, app: str) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    config = write_config(tmp_path, state, app)
    key = make_contact(app)
    entry = journal(state, key, {"last_name": "Before", "shoe_size": "44"})
    result = cli(config, "conflicts", "restore", str(entry), "--yes")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"journal entry #{entry}: shoe_size is no longer a field of contact records in crm.contacts" in result.stderr
    assert contact(app, key)["last_name"] == "Now" and status_of(state, entry) == "open"


def test_values_the_system_refuses_are_a_clear_failure_and_the_entry_stays_open(tmp_path: Path, app: str) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    config = write_config(tmp_path, state, app)
    key = make_contact(app)
    entry = journal(state, key, {"email": "not an e-mail address"})
    result = cli(config, "conflicts", "restore", str(entry), "--yes")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"crm.contacts refused the restored values for record {key}:" in result.stderr
    assert f"journal entry #{entry} stays open" in result.stderr and "Traceback" not in result.stderr
    assert status_of(state, entry) == "open"


def test_a_pipeline_running_elsewhere_is_busy_and_nothing_is_written(tmp_path: Path, app: str) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    config = write_config(tmp_path, state, app)
    key = make_contact(app)
    entry = journal(state, key, {"last_name": "Before"})
    store = StateStore.open(state, instance="other-node")
    try:
        assert store.acquire_lease(PIPELINE, timedelta(minutes=5))
        result = cli(config, "conflicts", "restore", str(entry), "--yes")
    finally:
        store.release_lease(PIPELINE)
        store.close()
    assert result.returncode == 5, result.stdout + result.stderr
    assert "busy: contacts is running on other-node" in result.stderr and "nothing restored" in result.stderr
    assert contact(app, key)["last_name"] == "Now" and status_of(state, entry) == "open"


def test_an_unreachable_system_exits_75_and_the_entry_stays_open(tmp_path: Path) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    config = write_config(tmp_path, state, f"http://127.0.0.1:{free_port()}", max_retries=0)
    entry = journal(state, "7", {"last_name": "Before"})
    result = cli(config, "conflicts", "restore", str(entry), "--yes")
    assert result.returncode == 75, result.stdout + result.stderr
    assert "could not read crm.contacts#7" in result.stderr and "nothing restored" in result.stderr
    assert status_of(state, entry) == "open"


def test_an_unknown_entry_is_named_and_a_dry_run_creates_no_database(tmp_path: Path) -> None:
    state = f"sqlite:///{tmp_path / 'var' / 'state.db'}"
    config = write_config(tmp_path, state, f"http://127.0.0.1:{free_port()}")
    result = cli(config, "conflicts", "restore", "12345", "--dry-run")
    assert result.returncode == 1 and "no journal entry #12345" in result.stderr
    assert not (tmp_path / "var").exists()


def answer_on_pty(config: Path, entry: int, answer: str, timeout: float = 60) -> tuple[int, str]:
    """``ferryman conflicts restore ENTRY`` on a pseudo-terminal, typing ``answer`` at its
    prompt; the exit code and everything the terminal showed."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"} | {"SANDBOX_KEY": KEY}
    process = subprocess.Popen(
        [*ferryman_cmd(), "--config", str(config), "conflicts", "restore", str(entry)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    seen = bytearray()
    answered = False
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, f"no end within {timeout} s; got {bytes(seen)!r}"
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the process ended and closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if not answered and b"[y/N] " in seen:
                os.write(master, answer.encode() + b"\n")
                answered = True
            if process.poll() is not None and not ready:
                break
        return process.wait(timeout=timeout), seen.decode(errors="replace").replace("\r\n", "\n")
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)


def test_on_a_terminal_it_asks_first_and_no_writes_nothing(tmp_path: Path, app: str) -> None:
    state = f"sqlite:///{tmp_path / 'state.db'}"
    config = write_config(tmp_path, state, app)
    key = make_contact(app)
    entry = journal(state, key, {"last_name": "Before"})

    code, shown = answer_on_pty(config, entry, "n")
    assert code == 1, shown
    assert f"Write these values into crm.contacts#{key}? [y/N]" in shown and "nothing written" in shown
    assert "  last_name: 'Now' -> 'Before'" in shown.split("[y/N]")[0]
    assert contact(app, key)["last_name"] == "Now" and status_of(state, entry) == "open"

    code, shown = answer_on_pty(config, entry, "y")
    assert code == 0, shown
    assert contact(app, key)["last_name"] == "Before" and status_of(state, entry) == "restored"
