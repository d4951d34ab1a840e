"""``ferryman audit``: differences made behind Ferryman's back are found, named and repaired.

Real parts throughout: the CSV connector on files in a temporary directory, the generic
sandbox (``ferryman sandbox generic``) as a process on loopback, a SQLite state database.
The audit runs in-process through :func:`ferryman.audit.main` (as ``python -m
ferryman.audit``), syncs through :func:`ferryman.cli.main`; one test runs the module as a
process to check the exit status a cron job sees.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ferryman import audit, cli
from tests.e2e.support import sandbox_process, save_config

KEY = "sandbox-key"
N = 20
FIELDS = ["key", "updated_at", "email", "first_name", "last_name"]


# -- helpers ---------------------------------------------------------------------------------------
def write_contacts(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(FIELDS)
        for i in range(n):
            writer.writerow(
                [
                    f"C{i:06d}",
                    f"2026-01-{1 + i // 1440:02d}T{i // 60 % 24:02d}:{i % 60:02d}:00Z",  # a minute apart
                    f"person{i}@example.com",
                    "Person",
                    f"No{i}",
                ]
            )


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, found: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(found[0]))
        writer.writeheader()
        writer.writerows(found)


def drop_source_row(path: Path, key: str) -> None:
    write_rows(path, [r for r in rows(path) if r["key"] != key])


def contacts_system(url: str) -> dict[str, Any]:
    """The generic sandbox's contacts through the ``rest`` connector, found by e-mail."""
    return {
        "connector": "rest",
        "base_url": f"{url}/api",
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
                "delete": {"path": "/contacts/{id}"},
            }
        },
    }


def make_config(tmp_path: Path, to: str, systems: dict[str, Any], state: str | None = None, **pipeline: Any) -> Path:
    return save_config(
        tmp_path,
        {
            "state": {"url": state or f"sqlite:///{tmp_path / 'state.db'}"},
            "log": {"format": "json", "level": "warning"},
            "systems": {"files": {"connector": "csv", "directory": str(tmp_path / "in")}, **systems},
            "pipelines": {
                "contacts": {"from": "files.contacts", "to": to, "deletes": {"enabled": True}, **pipeline},
            },
        },
    )


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_KEY", KEY)


def sync(config: Path, capsys: pytest.CaptureFixture[str], *extra: str, pipeline: str = "contacts") -> str:
    code = cli.main(["--config", str(config), "sync", pipeline, "--no-progress", *extra])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    return out.out


def run_audit(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = audit.main(["-c", str(config), "contacts", *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def audit_json(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run_audit(config, capsys, "--json", *extra)
    assert code in (0, 1), err
    report = json.loads(out)
    assert report["clean"] is (code == 0)
    return code, report


def found(report: dict[str, Any], kind: str) -> list[str]:
    (target,) = report["targets"]
    keys: list[str] = target[kind]["keys"]
    assert target[kind]["count"] == len(keys)
    return keys


# -- CSV -> CSV ------------------------------------------------------------------------------------
@pytest.fixture
def csv_pipeline(
    tmp_path: Path, state_url: str, capsys: pytest.CaptureFixture[str]
) -> Iterator[tuple[Path, Path, Path]]:
    """A synced CSV -> CSV pipeline ``contacts`` (deletes enabled), on each state backend."""
    source = tmp_path / "in" / "contacts.csv"
    write_contacts(source, N)
    out = {"out": {"connector": "csv", "directory": str(tmp_path / "out")}}
    config = make_config(tmp_path, "out.contacts", out, state=state_url)
    sync(config, capsys)
    yield config, source, tmp_path / "out" / "contacts.csv"


def test_a_clean_csv_sync_audits_clean(
    csv_pipeline: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _source, _target = csv_pipeline
    code, report = audit_json(config, capsys)
    assert code == 0
    (target,) = report["targets"]
    assert (report["read"], report["complete"], target["linked"], target["records"]) == (N, True, N, N)
    assert [target[k]["count"] for k in audit.KINDS] == [0, 0, 0, 0]
    code, text, _ = run_audit(config, capsys)
    assert code == 0 and text.rstrip().endswith("clean"), text


def test_links_of_an_older_fingerprint_version_audit_clean(
    csv_pipeline: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], state_url: str
) -> None:
    """After an upgrade of the fingerprint algorithm, nothing is stale: the audit compares
    in each link's version (as a run does)."""
    from ferryman.config import load_config
    from ferryman.engine import Engine
    from ferryman.records import FINGERPRINTS
    from ferryman.state import Link, PageCommit, StateStore

    config, _source, _target = csv_pipeline
    store = StateStore.open(state_url)

    async def as_version_1_left_them() -> list[Link]:
        engine = Engine(load_config(config, environ={}), store)
        out = await engine.system("out")
        try:
            return [
                Link(r.key, r.key, FINGERPRINTS[1](r), FINGERPRINTS[1](r))
                async for page in out.read("contacts", None, 1000)
                for r in page.records
            ]
        finally:
            await engine.aclose()

    old = asyncio.run(as_version_1_left_them())
    assert len(old) == N
    store.commit_page(PageCommit("contacts", links={("files.contacts", "out.contacts"): old}))
    code, report = audit_json(config, capsys)
    assert code == 0, report
    assert [report["targets"][0][k]["count"] for k in audit.KINDS] == [0, 0, 0, 0]


def test_csv_differences_are_named_and_a_repair_leaves_a_clean_audit(
    csv_pipeline: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, source, target = csv_pipeline
    table = rows(target)
    by_key = {r["key"]: r for r in table}
    kept = [r for r in table if r["key"] not in ("C000001", "C000002")]  # (a) deleted behind our back
    by_key["C000003"]["last_name"] = "Edited by hand"  # (b) edited in the target
    kept.append({**by_key["C000004"], "first_name": "Typed again"})  # (c) a duplicate row by hand
    write_rows(target, kept)
    drop_source_row(source, "C000005")  # (d) gone from the source

    code, report = audit_json(config, capsys)
    assert code == 1
    assert found(report, "missing") == ["C000001", "C000002"]
    assert found(report, "stale") == ["C000003"]
    assert "changed in out.contacts" in report["targets"][0]["stale"]["notes"]["C000003"]
    assert found(report, "duplicated") == ["C000004"]
    assert found(report, "extra") == ["C000005"]

    code, text, err = run_audit(config, capsys, "--repair", "--yes")
    assert code == 0, text + err
    for line in (
        "create   out.contacts <- files.contacts#C000001",
        "update   out.contacts <- files.contacts#C000003 (as C000003)",
        "update   out.contacts <- files.contacts#C000004 (as C000004)",
        "delete   out.contacts <- files.contacts#C000005 (as C000005)",
    ):
        assert line in text, text

    code, report = audit_json(config, capsys)
    assert code == 0, report
    live = [r for r in rows(target) if r["deleted"] != "true"]
    assert Counter(r["key"] for r in live) == Counter(f"C{i:06d}" for i in range(N) if i != 5)
    assert {r["key"]: r["last_name"] for r in live}["C000003"] == "No3"
    assert {r["key"]: r["first_name"] for r in live}["C000004"] == "Person"


def test_a_source_change_the_cursor_cannot_see_is_stale_and_repaired(
    csv_pipeline: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The source changed a record without moving its updated_at (far behind the cursor):
    an ordinary run never reads it again; the audit's full pass does."""
    config, source, target = csv_pipeline
    table = [{**r, "deleted": "false"} for r in rows(source)]
    table[2]["last_name"] = "Renamed quietly"  # C000002, updated_at unchanged
    table[6]["deleted"] = "true"  # C000006 marked deleted, updated_at unchanged
    write_rows(source, table)
    sync(config, capsys)
    assert {r["key"]: r["last_name"] for r in rows(target)}["C000002"] == "No2"  # the run did not see it

    code, report = audit_json(config, capsys)
    assert code == 1 and found(report, "stale") == ["C000002"]
    assert report["targets"][0]["stale"]["notes"]["C000002"] == "changed at the source since it was delivered"
    assert found(report, "extra") == ["C000006"]
    assert report["targets"][0]["extra"]["notes"]["C000006"] == "deleted at the source"
    assert [found(report, k) for k in ("missing", "duplicated")] == [[], []]
    code, text, err = run_audit(config, capsys, "--repair", "--yes")
    assert code == 0, text + err
    assert audit_json(config, capsys)[0] == 0
    written = {r["key"]: r for r in rows(target)}
    assert (written["C000002"]["last_name"], written["C000006"]["deleted"]) == ("Renamed quietly", "true")


def test_an_audit_without_repair_changes_nothing(
    csv_pipeline: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, source, target = csv_pipeline
    drop_source_row(source, "C000003")
    write_rows(target, [r for r in rows(target) if r["key"] != "C000004"])
    before = (target.read_bytes(), state_of(config))
    code, report = audit_json(config, capsys)
    assert code == 1 and found(report, "extra") == ["C000003"] and found(report, "missing") == ["C000004"]
    assert (target.read_bytes(), state_of(config)) == before


def state_of(config: Path) -> tuple[Any, ...]:
    """Links, cursor, runs and leases of ``contacts``: what an audit must leave alone."""
    from ferryman.state import StateStore

    store = StateStore.open(yaml.safe_load(config.read_text())["state"]["url"])
    try:
        keys = store.linked_keys("files.contacts", "out.contacts")
        links = store.links_for("files.contacts", "out.contacts", keys)
        return (
            sorted((k, v.dst_key, v.src_fp, v.dst_fp) for k, v in links.items()),
            store.get_cursor("contacts"),
            len(store.runs("contacts")),
            store.lease_holder("contacts"),
        )
    finally:
        store.close()


def test_a_repair_asks_first_and_a_no_changes_nothing(
    csv_pipeline: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, source, _target = csv_pipeline
    drop_source_row(source, "C000008")
    code, _out, err = run_audit(config, capsys, "--repair")  # no terminal to ask on, no --yes
    assert code == 2 and "pass --yes" in err
    asked: list[str] = []
    answers = iter(["n", "yes"])

    def answer(prompt: str) -> str:
        asked.append(prompt)
        return next(answers)

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", answer)
    before = state_of(config)
    code, text, _err = run_audit(config, capsys, "--repair")
    assert code == 1 and text.rstrip().endswith("nothing changed")
    assert asked == ["Apply this repair to contacts? [y/N] "] and state_of(config) == before
    code, text, err = run_audit(config, capsys, "--repair")
    assert code == 0, text + err
    assert "delete   out.contacts <- files.contacts#C000008 (as C000008)" in text
    assert audit_json(config, capsys)[0] == 0


def test_a_repair_waits_for_no_one_while_the_pipeline_runs_elsewhere(
    csv_pipeline: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import timedelta

    from ferryman.state import StateStore

    config, source, _target = csv_pipeline
    drop_source_row(source, "C000003")
    store = StateStore.open(yaml.safe_load(config.read_text())["state"]["url"])
    try:
        assert store.acquire_lease("contacts", timedelta(minutes=5), holder="other|elsewhere|1|x")
        code, _out, err = run_audit(config, capsys, "--repair", "--yes")
        assert code == 5 and "contacts is running on other" in err
        assert store.linked_keys("out.contacts", "out.contacts") == []  # nothing written
        assert "C000003" in store.linked_keys("files.contacts", "out.contacts")
    finally:
        store.close()


def test_a_repair_withholds_extras_when_deletes_are_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in" / "contacts.csv"
    write_contacts(source, N)
    out = {"out": {"connector": "csv", "directory": str(tmp_path / "out")}}
    config = make_config(tmp_path, "out.contacts", out, deletes={"enabled": False})
    sync(config, capsys)
    drop_source_row(source, "C000007")
    code, text, err = run_audit(config, capsys, "--repair", "--yes")
    assert code == 1, text + err
    assert "withhold out.contacts <- files.contacts#C000007 (as C000007) (deletes.enabled is off" in text
    assert "1 withheld: the targets keep them" in text
    code, text, err = run_audit(config, capsys, "--repair", "--yes", "--json")
    assert code == 1, text + err
    done = json.loads(text)
    assert (done["repair"]["outcome"], done["repair"]["counts"]["withheld"], done["plan"]["withheld"]) == ("ok", 1, 1)
    assert done["plan"]["counts"] == {"withhold": 1}
    code, report = audit_json(config, capsys)
    assert code == 1 and found(report, "extra") == ["C000007"]
    assert "C000007" in {r["key"] for r in rows(tmp_path / "out" / "contacts.csv") if r["deleted"] != "true"}


def test_a_sample_says_so_and_does_not_claim_extras(
    csv_pipeline: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, source, _target = csv_pipeline
    drop_source_row(source, "C000019")  # an extra a sample cannot see
    code, report = audit_json(config, capsys, "--sample", "5")
    assert code == 0
    assert (report["read"], report["sample"], report["complete"]) == (5, 5, False)
    assert report["targets"][0]["extra"]["checked"] is False
    code, text, _ = run_audit(config, capsys, "--sample", "5")
    assert "a SAMPLE of the first 5 records" in text and "extra       not checked" in text


def test_usage_two_way_and_config_errors_exit_as_documented(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    config = make_config(tmp_path, "out.contacts", {"out": {"connector": "csv", "directory": str(tmp_path / "out")}})
    code, _, err = run_audit(config, capsys, "--yes")
    assert code == 2 and "--yes goes with --repair" in err
    code, _, err = run_audit(config, capsys, "--repair", "--sample", "3")
    assert code == 2 and "--repair needs the full pass" in err
    code = audit.main(["-c", str(config), "contcts"])
    assert code == 78 and "no pipeline named 'contcts'" in capsys.readouterr().err
    two_way = save_config(
        tmp_path,
        {
            "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
            "systems": {
                "files": {"connector": "csv", "directory": str(tmp_path / "in")},
                "out": {"connector": "csv", "directory": str(tmp_path / "out")},
            },
            "pipelines": {"contacts": {"from": "files.contacts", "to": "out.contacts", "direction": "both"}},
        },
    )
    code, _, err = run_audit(two_way, capsys)
    assert code == 2 and "two-way pipelines are not audited yet" in err


def test_registered_like_new_connector_it_runs_under_ferryman(
    csv_pipeline: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one line cli._extra_commands() needs (``found.update(audit.COMMANDS)``), tried
    here without editing cli.py: `ferryman audit` parses, runs, and exits as documented."""
    extra = cli._extra_commands

    monkeypatch.setattr(cli, "_extra_commands", lambda: {**extra(), **audit.COMMANDS})
    config, source, _target = csv_pipeline
    assert cli.main(["--config", str(config), "audit", "contacts"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("clean")
    drop_source_row(source, "C000011")
    assert cli.main(["--config", str(config), "audit", "contacts", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["targets"][0]["extra"]["keys"] == ["C000011"]
    assert cli.main(["--config", str(config), "audit", "nope"]) == 78
    with pytest.raises(SystemExit) as usage:
        cli.main(["--config", str(config), "audit", "contacts", "--sample", "0"])
    assert usage.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["audit", "--help"])
    assert "exit status:" in capsys.readouterr().out


def test_the_module_runs_as_a_process_and_exits_1_on_differences(
    csv_pipeline: tuple[Path, Path, Path],
) -> None:
    config, source, _target = csv_pipeline
    drop_source_row(source, "C000002")
    result = subprocess.run(
        [sys.executable, "-m", "ferryman.audit", "-c", str(config), "contacts"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "extra       1  C000002 (not in the source)" in result.stdout


# -- CSV -> an app (the generic sandbox) -----------------------------------------------------------
@pytest.fixture
def app() -> Iterator[str]:
    with sandbox_process("generic", "--records", "0", "--rate-limit", "1000000") as url:
        yield url


def app_contacts(url: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=f"{url}/api", headers={"X-API-Key": KEY}) as client:
        body = client.get("/contacts", params={"paginate": "cursor", "limit": 1000}).json()
        assert body["next_cursor"] is None
        return list(body["data"])


def test_app_differences_are_named_and_a_repair_leaves_a_clean_audit(
    tmp_path: Path, app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in" / "contacts.csv"
    write_contacts(source, N)
    config = make_config(tmp_path, "crm.contacts", {"crm": contacts_system(app)}, page_size=50)
    sync(config, capsys)
    code, report = audit_json(config, capsys)
    assert code == 0, report
    assert report["targets"][0]["records"] == N

    ids = {c["email"]: c["id"] for c in app_contacts(app)}
    with httpx.Client(base_url=f"{app}/api", headers={"X-API-Key": KEY}) as client:
        for i in (1, 2):  # (a) deleted in the app behind Ferryman's back
            assert client.delete(f"/contacts/{ids[f'person{i}@example.com']}").status_code == 204
        edited = client.patch(f"/contacts/{ids['person3@example.com']}", json={"last_name": "Edited"})  # (b)
        assert edited.status_code == 200, edited.text
        # (c) the same person typed in again by hand: the app compares e-mails exactly, people do not
        made = client.post(
            "/contacts", json={"email": "PERSON4@example.com", "first_name": "Person", "last_name": "No4"}
        )
        assert made.status_code == 201, made.text
    drop_source_row(source, "C000005")  # (d)

    code, report = audit_json(config, capsys)
    assert code == 1
    assert found(report, "missing") == ["C000001", "C000002"]
    assert found(report, "stale") == ["C000003"]
    assert found(report, "duplicated") == ["C000004"]
    assert found(report, "extra") == ["C000005"]

    code, text, err = run_audit(config, capsys, "--repair", "--yes")
    assert code == 0, text + err
    assert f"delete   crm.contacts {made.json()['id']} (a duplicate of files.contacts#C000004 made by hand)" in text

    code, report = audit_json(config, capsys)
    assert code == 0, report
    emails = Counter(c["email"].casefold() for c in app_contacts(app))
    assert emails == Counter(f"person{i}@example.com" for i in range(N) if i != 5)
    assert {c["email"]: c["last_name"] for c in app_contacts(app)}["person3@example.com"] == "No3"


# -- cost: one full pass, at the configured pace ------------------------------------------------------
def test_an_audit_of_2000_app_records_costs_what_one_full_pass_costs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sandbox_process("generic", "--records", "2000", "--rate-limit", "1000000") as url:
        config = save_config(
            tmp_path,
            {
                "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
                "log": {"format": "json", "level": "warning"},
                "systems": {
                    "crm": contacts_system(url),
                    "files": {"connector": "csv", "directory": str(tmp_path / "files")},
                },
                "pipelines": {"contacts": {"from": "crm.contacts", "to": "files.contacts", "page_size": 500}},
            },
        )

        def requests(during: Any) -> int:
            assert httpx.post(f"{url}/__sandbox/reset-stats").status_code == 200
            during()
            stats = httpx.get(f"{url}/__sandbox/stats").json()
            assert stats["throttled"] == 0
            return int(stats["requests"])

        sync(config, capsys)
        audited = requests(lambda: audit_json(config, capsys))
        full = requests(lambda: sync(config, capsys, "--full"))
        code, report = audit_json(config, capsys)
        assert code == 0 and report["read"] == 2000
        with capsys.disabled():
            print(f"\n2,000 records, page_size 500: audit {audited} requests, sync --full {full} requests")
        assert audited == full == 4  # 2,000 records in pages of 500


def test_an_audit_reads_at_the_systems_rate_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The audit reads through the engine's systems: the system's rate_limit paces it as it
    paces a run (10 a second here, where loopback alone would take a few milliseconds)."""
    with sandbox_process("generic", "--records", "2000", "--rate-limit", "600") as url:
        system = {**contacts_system(url), "rate_limit": "10/s"}
        config = save_config(
            tmp_path,
            {
                "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
                "log": {"format": "json", "level": "warning"},
                "systems": {"crm": system, "files": {"connector": "csv", "directory": str(tmp_path / "files")}},
                "pipelines": {"contacts": {"from": "crm.contacts", "to": "files.contacts", "page_size": 200}},
            },
        )
        sync(config, capsys)
        assert httpx.post(f"{url}/__sandbox/reset-stats").status_code == 200
        code, report = audit_json(config, capsys)
        stats = httpx.get(f"{url}/__sandbox/stats").json()
    assert code == 0 and report["read"] == 2000
    assert (stats["requests"], stats["throttled"], stats["early_retries"]) == (10, 0, 0)
    stamps = stats["timestamps"]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # 10/s: one request every 0.1 s. The limiter spaces the moments it lets requests go;
    # the server sees them when they arrive, so a request the loaded event loop sent late
    # (here after a stall of 0.7 s once, with 3 test workers on 2 cores) shortens the gap
    # to the next by as much: never two at once, and no stretch of them ever faster than
    # the limit (1% slack).
    assert min(gaps) >= 0.04, gaps
    for i in range(len(stamps)):
        for j in range(i + 2, len(stamps)):
            assert stamps[j] - stamps[i] >= 0.099 * (j - i) - 0.06, (i, j, gaps)


def test_an_audit_of_a_2000_record_app_target_costs_what_a_full_pass_costs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The other way round: the app is the target. A full run reads it once (to look
    creates up, links may have been lost); the audit reads it once (to compare)."""
    write_contacts(tmp_path / "in" / "contacts.csv", 2000)
    with sandbox_process("generic", "--records", "0", "--rate-limit", "1000000") as url:
        config = make_config(tmp_path, "crm.contacts", {"crm": contacts_system(url)}, page_size=500)
        sync(config, capsys)

        def requests(during: Any) -> int:
            assert httpx.post(f"{url}/__sandbox/reset-stats").status_code == 200
            during()
            stats = httpx.get(f"{url}/__sandbox/stats").json()
            assert stats["throttled"] == 0
            return int(stats["requests"])

        audited = requests(lambda: audit_json(config, capsys))
        full = requests(lambda: sync(config, capsys, "--full"))
        code, report = audit_json(config, capsys)
    assert code == 0 and report["targets"][0]["records"] == 2000
    with capsys.disabled():
        print(f"\n2,000 records into an app, page_size 500: audit {audited} requests, sync --full {full} requests")
    assert audited == full == 4
