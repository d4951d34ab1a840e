"""``ferryman rewind``: the cursor set back to a typed time, never forward, under the lease.

The command runs as a process (``python -m ferryman.rewind``, the same handler ``ferryman
rewind`` registers), against CSV pipelines synced by ``ferryman sync`` processes; the state
database is read in the test to see what changed (and that a dry run changed nothing).
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from ferryman import rewind
from ferryman.cursor import Cursor
from ferryman.holders import describe_holder
from ferryman.state import StateStore
from ferryman.timeutil import format_utc, parse_datetime
from tests.conftest import run_cli

BASE = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
STEP = timedelta(seconds=20)  # 1,000 rows over 5 h 33 min
ROWS = 1000


# -- set-up ---------------------------------------------------------------------------------


def write_tickets(path: Path, count: int = ROWS, *, prefix: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["key,updated_at,subject"]
    lines += [f"{prefix}{i},{format_utc(BASE + STEP * i)},subject {i}" for i in range(1, count + 1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def stamps(path: Path) -> list[datetime]:
    rows = path.read_text(encoding="utf-8").splitlines()[1:]
    return [parse_datetime(row.split(",")[1]) for row in rows]


def make_config(tmp_path: Path, state_url: str) -> Path:
    doc = {
        "state": {"url": state_url},
        "log": {"format": "json", "level": "warning"},
        "systems": {
            "inbox": {"connector": "csv", "directory": str(tmp_path / "in")},
            "out": {"connector": "csv", "directory": str(tmp_path / "out")},
            "left": {"connector": "csv", "directory": str(tmp_path / "left")},
            "right": {"connector": "csv", "directory": str(tmp_path / "right")},
        },
        "pipelines": {
            "t2c": {"from": "inbox.tickets", "to": "out.tickets"},
            "mirror": {"from": "left.tickets", "to": "right.tickets", "direction": "both"},
        },
    }
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def run_rewind(config: Path, *args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferryman.rewind", "--config", str(config), *args],
        capture_output=True,
        text=True,
        stdin=stdin,
        timeout=120,
        check=False,
    )


def sync(config: Path, pipeline: str) -> dict[str, Any]:
    """``ferryman sync PIPELINE`` as a process; the run row it recorded (counts, outcome)."""
    result = run_cli("--config", str(config), "sync", pipeline, "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    with state(config) as store:
        return store.runs(pipeline, limit=1)[0]


class _Opened:
    def __init__(self, config: Path) -> None:
        self.store = StateStore.open(yaml.safe_load(config.read_text())["state"]["url"])

    def __enter__(self) -> StateStore:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


def state(config: Path) -> _Opened:
    return _Opened(config)


def everything(config: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the state database: what "changed nothing" is checked on."""
    with state(config) as store:
        meta = sa.MetaData()
        meta.reflect(store.engine)
        with store.engine.connect() as conn:
            return {
                name: sorted((tuple(map(repr, row)) for row in conn.execute(sa.select(table))), key=repr)
                for name, table in meta.tables.items()
            }


@pytest.fixture
def synced(tmp_path: Path, default_state_url: str) -> Iterator[Path]:
    """The one-way CSV -> CSV pipeline ``t2c`` after one sync of 1,000 tickets."""
    config = make_config(tmp_path, default_state_url)
    write_tickets(tmp_path / "in" / "tickets.csv")
    first = sync(config, "t2c")
    assert (first["outcome"], first["read"], first["created"]) == ("ok", ROWS, ROWS)
    yield config


# -- one-way --------------------------------------------------------------------------------


def test_a_dry_run_prints_how_many_records_the_next_run_reads_and_changes_nothing(tmp_path: Path, synced: Path) -> None:
    to = BASE + STEP * 500  # row 500's own time: "at or after" includes it
    times = stamps(tmp_path / "in" / "tickets.csv")
    at_or_after = sum(t >= to for t in times)
    in_overlap = sum(to - timedelta(minutes=2) <= t < to for t in times)  # the pipeline's default overlap
    assert (at_or_after, in_overlap) == (501, 6)  # the data is what the test means it to be
    before, published = everything(synced), (tmp_path / "out" / "tickets.csv").read_bytes()

    result = run_rewind(synced, "t2c", "--to", format_utc(to), "--dry-run")

    assert result.returncode == 0, result.stdout + result.stderr
    last = format_utc(BASE + STEP * ROWS)
    assert f"t2c: inbox.tickets: cursor {last} (key {ROWS}) -> {format_utc(to)}" in result.stdout
    assert (
        f"the next run reads {at_or_after + in_overlap} records: {at_or_after} at or after {format_utc(to)}, "
        f"{in_overlap} in the 2m overlap before it" in result.stdout
    )
    assert "dry run: nothing changed" in result.stdout
    assert everything(synced) == before
    assert (tmp_path / "out" / "tickets.csv").read_bytes() == published


def test_a_rewind_moves_the_cursor_and_the_next_run_rereads_that_many_and_writes_nothing(
    tmp_path: Path, synced: Path
) -> None:
    to = datetime(2026, 11, 30, 3, 20, 10, tzinfo=UTC)  # between two rows, given with an offset below
    dry = run_rewind(synced, "t2c", "--to", "2026-11-30T04:20:10+01:00", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    reads = int(dry.stdout.split("the next run reads ", 1)[1].split(" ", 1)[0])
    expected = sum(t >= to - timedelta(minutes=2) for t in stamps(tmp_path / "in" / "tickets.csv"))
    assert reads == expected
    runs_before = len(everything(synced)["runs"])

    result = run_rewind(synced, "t2c", "--to", "2026-11-30T04:20:10+01:00", "--yes")

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"t2c: cursor set back to {format_utc(to)}" in result.stdout
    with state(synced) as store:
        assert store.get_cursor("t2c") == Cursor(to, "")
        assert store.lease_holder("t2c") is None  # the lease was given back
    after = everything(synced)
    assert len(after["runs"]) == runs_before  # the rewind records nothing but the cursor
    assert after["leases"] == []

    run = sync(synced, "t2c")
    assert (run["read"], run["created"], run["updated"], run["skipped"]) == (reads, 0, 0, reads)
    with state(synced) as store:
        assert store.get_cursor("t2c") == Cursor(BASE + STEP * ROWS, str(ROWS))


def test_a_rewind_forward_is_refused_naming_both_times(synced: Path) -> None:
    before = everything(synced)
    later = BASE + STEP * ROWS + timedelta(seconds=1)
    result = run_rewind(synced, "t2c", "--to", format_utc(later), "--yes")
    assert result.returncode == 1
    assert format_utc(later) in result.stderr and f"{format_utc(BASE + STEP * ROWS)} (key {ROWS})" in result.stderr
    assert "never forward past undelivered records" in result.stderr
    assert everything(synced) == before


def test_a_pipeline_without_a_cursor_has_nothing_to_rewind_and_no_database_is_created(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, f"sqlite:///{tmp_path / 'state.db'}")
    write_tickets(tmp_path / "in" / "tickets.csv", 10)
    result = run_rewind(config, "t2c", "--to", "2026-11-30T00:00:00Z", "--yes")
    assert result.returncode == 1
    assert "nothing to rewind: t2c (inbox.tickets) has no cursor yet; the next run reads everything anyway" in (
        result.stderr
    )
    assert not (tmp_path / "state.db").exists()


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("2026-11-30T00:00:00", "has no timezone"),
        ("2026-11-30", "has no timezone"),
        ("yesterday", "is not an ISO 8601 time"),
        ("2026", "is not an ISO 8601 time"),  # not epoch seconds
        ("2026-11-31T00:00:00Z", "is not an ISO 8601 time"),
    ],
)
def test_a_time_without_a_zone_or_not_iso_is_a_usage_error_naming_it(synced: Path, value: str, why: str) -> None:
    before = everything(synced)
    result = run_rewind(synced, "t2c", "--to", value, "--yes")
    assert result.returncode == 2, result.stderr
    assert f"--to {value!r} {why}" in result.stderr
    assert everything(synced) == before


def test_without_yes_and_without_a_terminal_nothing_changes(synced: Path) -> None:
    before = everything(synced)
    result = run_rewind(synced, "t2c", "--to", "2026-11-30T01:00:00Z")
    assert result.returncode == 2
    assert "pass --yes to confirm" in result.stderr
    assert everything(synced) == before


def test_on_a_terminal_it_asks_and_no_changes_nothing_yes_rewinds(tmp_path: Path, synced: Path) -> None:
    to = format_utc(BASE + STEP * 900)
    reads = sum(t >= BASE + STEP * 900 - timedelta(minutes=2) for t in stamps(tmp_path / "in" / "tickets.csv"))
    before = everything(synced)
    for answer, code in (("n", 1), ("y", 0)):
        leader, follower = pty.openpty()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "ferryman.rewind", "--config", str(synced), "t2c", "--to", to],
                stdin=follower,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            os.write(leader, f"{answer}\n".encode())
            out, err = process.communicate(timeout=60)
        finally:
            os.close(leader)
            os.close(follower)
        assert process.returncode == code, out + err
        assert f"the next run reads {reads} records" in out
        if answer == "n":
            assert "nothing changed" in out
            assert everything(synced) == before
    with state(synced) as store:
        assert store.get_cursor("t2c") == Cursor(BASE + STEP * 900, "")


def test_busy_while_another_process_holds_the_lease(synced: Path) -> None:
    url = yaml.safe_load(synced.read_text())["state"]["url"]
    holder_code = textwrap.dedent(
        f"""
        import sys
        from datetime import timedelta
        from ferryman.state import StateStore
        store = StateStore.open({url!r})
        assert store.acquire_lease("t2c", timedelta(minutes=5))
        print(store.holder, flush=True)
        sys.stdin.read()
        store.release_lease("t2c")
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        name = holder.stdout.readline().strip()
        assert name, "the lease holder did not start"
        before = everything(synced)
        result = run_rewind(synced, "t2c", "--to", "2026-11-30T01:00:00Z", "--yes")
        assert result.returncode == 5, result.stdout + result.stderr
        assert f"busy: t2c is running on {describe_holder(name)}; nothing changed" in result.stderr
        assert everything(synced) == before

        # the lease taken after the count (the early look found it free): busy too, nothing changed
        with state(synced) as store:
            code = rewind._apply(store, timedelta(minutes=1), "t2c", [("forward", "from", "inbox.tickets")], BASE, 1)
        assert code == 5
        assert everything(synced) == before
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    result = run_rewind(synced, "t2c", "--to", "2026-11-30T01:00:00Z", "--yes")
    assert result.returncode == 0, result.stderr


def test_side_to_on_a_one_way_pipeline_is_a_usage_error(synced: Path) -> None:
    result = run_rewind(synced, "t2c", "--to", "2026-11-30T01:00:00Z", "--side", "to", "--yes")
    assert result.returncode == 2
    assert "--side to: a one-way pipeline has one cursor, on its from side (inbox.tickets)" in result.stderr


# -- two-way --------------------------------------------------------------------------------


def test_a_two_way_pipeline_rewinds_the_side_it_is_told(tmp_path: Path, default_state_url: str) -> None:
    config = make_config(tmp_path, default_state_url)
    write_tickets(tmp_path / "left" / "tickets.csv", 300)
    first = sync(config, "mirror")
    assert (first["outcome"], first["created"]) == ("ok", 300), first
    second = sync(config, "mirror")  # reads the to side it wrote: now both sides have a cursor
    assert (second["outcome"], second["created"], second["updated"]) == ("ok", 0, 0), second
    with state(config) as store:
        a, b = store.get_cursor("mirror", "a"), store.get_cursor("mirror", "b")
    assert a is not None and b is not None
    to = BASE + STEP * 250

    dry = run_rewind(config, "mirror", "--to", format_utc(to), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "mirror: from side (left.tickets): cursor" in dry.stdout
    assert "mirror: to side (right.tickets): cursor" in dry.stdout

    only_to = run_rewind(config, "mirror", "--to", format_utc(to), "--side", "to", "--yes")
    assert only_to.returncode == 0, only_to.stdout + only_to.stderr
    assert "from side" not in only_to.stdout and "to side (right.tickets)" in only_to.stdout
    with state(config) as store:
        assert store.get_cursor("mirror", "a") == a
        assert store.get_cursor("mirror", "b") == Cursor(to, "")
    reads_b = int(only_to.stdout.split("the next run reads ", 1)[1].split(" ", 1)[0])
    right = stamps(tmp_path / "right" / "tickets.csv")
    assert reads_b == sum(t >= to - timedelta(minutes=2) for t in right) > 0

    run = sync(config, "mirror")
    # the from side re-reads its own overlap before its cursor; the to side what the rewind said
    reads_a = sum(t >= a.updated_at - timedelta(minutes=2) for t in stamps(tmp_path / "left" / "tickets.csv"))
    assert (run["read"], run["created"], run["updated"]) == (reads_a + reads_b, 0, 0)

    # the from side alone, then forward on the side that was set back is refused, naming it
    only_from = run_rewind(config, "mirror", "--to", format_utc(to), "--side", "from", "--yes")
    assert only_from.returncode == 0, only_from.stderr
    with state(config) as store:
        assert store.get_cursor("mirror", "a") == Cursor(to, "")
    forward = run_rewind(config, "mirror", "--to", format_utc(to + STEP), "--side", "from", "--yes")
    assert forward.returncode == 1
    assert "mirror (from side, left.tickets)" in forward.stderr and "never forward" in forward.stderr


# -- the rules, and the command registered in `ferryman` -------------------------------------


def test_the_new_cursor_is_the_time_with_the_lowest_key() -> None:
    sides = [("forward", "from", "in.tickets")]
    at = BASE + STEP
    (plan,) = rewind.plan_sides("p", sides, [Cursor(at, "7")], at)
    assert plan.target == Cursor(at, "") and plan.moves  # back before key 7 of the same instant
    (same,) = rewind.plan_sides("p", sides, [Cursor(at, "")], at)
    assert not same.moves
    with pytest.raises(rewind.RewindRefused, match="never forward"):
        rewind.plan_sides("p", sides, [Cursor(at, "7")], at + timedelta(microseconds=1))
    assert rewind.parse_to("2026-11-30T01:00:00+01:00") == BASE


def test_registered_like_new_connector_it_runs_through_ferryman_main(
    synced: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The one line for ``cli._extra_commands``: ``found.update(REWIND_COMMANDS)``."""
    from ferryman import cli

    real = cli._extra_commands
    monkeypatch.setattr(cli, "_extra_commands", lambda: {**real(), **rewind.COMMANDS})
    with pytest.raises(SystemExit):
        cli.main(["rewind", "--help"])
    assert "one incremental pass over the API" in capsys.readouterr().out
    assert cli.main(["--config", str(synced), "rewind", "t2c", "--to", "2026-11-30T01:00:00Z", "--dry-run"]) == 0
    assert "dry run: nothing changed" in capsys.readouterr().out
    assert cli.main(["--config", str(synced), "rewind", "t2x", "--to", "2026-11-30T01:00:00Z"]) == 78
    assert "no pipeline named 't2x'" in capsys.readouterr().err


def test_a_source_the_next_run_could_not_read_is_named_and_nothing_changes(tmp_path: Path, synced: Path) -> None:
    with (tmp_path / "in" / "tickets.csv").open("a", encoding="utf-8") as fh:
        fh.write('1001,2026-11-30T06:00:00Z,"a quote never closed\n1002,2026-11-30T06:00:20Z,more\n')
    before = everything(synced)
    result = run_rewind(synced, "t2c", "--to", "2026-11-30T01:00:00Z", "--yes")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ferryman rewind: could not count what the next run reads: " in result.stderr
    assert "tickets.csv" in result.stderr and result.stderr.rstrip().endswith("nothing changed")
    assert everything(synced) == before
