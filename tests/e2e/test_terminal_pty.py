"""``ferryman`` as a person meets it on a terminal, and as ``| head`` meets it in a pipe:
the progress bar's last screen under a pseudo-terminal, ``NO_COLOR``, and a reader that
leaves early without a traceback or a run recorded as failed."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ferryman_cmd, run_cli
from tests.test_terminal import SGR, render_screen

ROWS = 5_000
BAD_ROWS = 3  # rows without a valid updated_at: dead-lettered, each with a warning while the bar draws
COLUMNS = 160


def csv_config(tmp_path: Path, *, log_format: str = "auto") -> Path:
    """A CSV -> CSV pipeline ``t2c`` over 5,000 tickets (and three bad rows), small pages."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    lines = ["key,updated_at,subject"]
    lines += [f"{i},2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z,subject {i}" for i in range(ROWS)]
    lines += [f"bad{i},not a date,broken {i}" for i in range(BAD_ROWS)]
    (inbox / "tickets.csv").write_text("\n".join(lines) + "\n")
    doc = {
        "state": {"url": f"sqlite:///{tmp_path / 'state.db'}"},
        "log": {"format": log_format},
        "systems": {
            "inbox": {"connector": "csv", "directory": str(inbox)},
            "out": {"connector": "csv", "directory": str(tmp_path / "out")},
        },
        "pipelines": {"t2c": {"from": "inbox.tickets", "to": "out.tickets", "page_size": 250}},
    }
    path = tmp_path / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def env_with(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "NOTIFY_SOCKET")}
    env.update({"TERM": "xterm-256color", "COLUMNS": str(COLUMNS)})
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_on_pty(*args: str, env: dict[str, str], stderr_too: bool = True, timeout: float = 60) -> tuple[int, str, str]:
    """``ferryman ARGS`` with a pseudo-terminal as stdout (and stderr, unless ``stderr_too``
    is false: then a pipe). Returns the exit code, what the terminal got, and the piped stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, COLUMNS, 0, 0))
    process = subprocess.Popen(
        [*ferryman_cmd(), *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave if stderr_too else subprocess.PIPE,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, f"no end within {timeout} s; got {bytes(received)!r}"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every end of the slave side is closed (the process exited)
                break
            if not chunk:
                break
            received += chunk
        _, err = process.communicate(timeout=timeout)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, received.decode("utf-8", "replace"), (err or b"").decode()


def status_json(config: Path) -> dict[str, dict[str, object]]:
    result = run_cli("--config", str(config), "status", "--json")
    assert result.returncode == 0, result.stderr
    return {row["pipeline"]: row for row in json.loads(result.stdout)}


# -- the progress bar under a pseudo-terminal --------------------------------------------------


def test_the_final_screen_of_a_sync_on_a_terminal(tmp_path: Path) -> None:
    config = csv_config(tmp_path)
    code, raw, _ = run_on_pty("--config", str(config), "sync", "t2c", env=env_with())
    assert code == 0, raw
    screen = [SGR.sub("", line) for line in render_screen(raw)]
    text = "\n".join(screen)
    assert "e+" not in raw, text  # tqdm's unit_scale form (1e+5) nowhere
    # the bar's last state, left on screen: the share done (the CSV source tells its total),
    # count and total with separators, no time left, rate, the run's counts
    bars = [i for i, line in enumerate(screen) if line.startswith("t2c: ") and " records [" in line]
    assert len(bars) == 1, text  # one bar line: redrawn in place, never repeated by a log line
    assert re.fullmatch(
        r"t2c: 100%\|█+\| 5,000/5,000 records \[\d\d:\d\d<0\.0s, [\d,]+ records/s, "
        r"created 5,000, updated 0, skipped 0, dead 3\]",
        screen[bars[0]],
    ), screen[bars[0]]
    # log lines (a warning per bad row, run.started, run.finished) each on a line of their own
    logged = [line for line in screen if "record.dead_lettered" in line]
    assert len(logged) == BAD_ROWS, text
    for event in ("record.dead_lettered", "run.started", "run.finished"):
        for line in (x for x in screen if event in x):
            assert " records [" not in line and not line.startswith("t2c:"), f"torn: {line!r}"
    assert bars[0] > max(i for i, line in enumerate(screen) if "run.finished" in line), text
    # the summary after the bar: separators, the rate, the outcome in colour
    summary = screen[bars[0] + 1]
    assert re.fullmatch(
        r"t2c: ok \(read 5,000, created 5,000, updated 0, deleted 0, skipped 0, dead_lettered 3\) "
        r"in \d+\.\ds, [\d,]+ records/s",
        summary,
    ), summary
    assert screen[bars[0] + 2] == "  3 record(s) dead-lettered: see `ferryman dlq list --pipeline t2c`"
    assert "\x1b[1;32mok\x1b[0m" in raw, "the outcome is green on a terminal"


def test_no_color_turns_colour_off_and_an_empty_one_does_not(tmp_path: Path) -> None:
    config = csv_config(tmp_path, log_format="json")
    outputs = {}
    for name, value in (("unset", None), ("set", "1"), ("empty", "")):
        code, raw, err = run_on_pty(
            "--config", str(config), "sync", "t2c", "--full", env=env_with(NO_COLOR=value), stderr_too=False
        )
        assert code == 0, raw + err
        assert '"event":"run.finished"' in err  # stderr is a pipe: no bar, JSON log lines
        code, status, _ = run_on_pty("--config", str(config), "status", env=env_with(NO_COLOR=value), stderr_too=False)
        assert code == 0, status
        outputs[name] = raw + status
    assert SGR.search(outputs["unset"]) and SGR.search(outputs["empty"])
    assert not SGR.search(outputs["set"]), outputs["set"]
    assert "read 5,000" in outputs["set"] and "records/s" in outputs["set"]  # still the terminal's form
    assert "t2c  inbox.tickets -> out.tickets" in outputs["set"]


def test_no_color_reaches_the_log_lines_on_a_terminal_too(tmp_path: Path) -> None:
    config = csv_config(tmp_path)
    code, raw, _ = run_on_pty("--config", str(config), "sync", "t2c", env=env_with(NO_COLOR="1"))
    assert code == 0, raw
    assert "run.finished" in raw
    assert not SGR.search(raw), [line for line in raw.splitlines() if SGR.search(line)][:3]


# -- a reader that leaves (`| head -1`) --------------------------------------------------------


def run_with_stdout_closed(*args: str, stderr_too: bool = False) -> subprocess.CompletedProcess[str]:
    """``ferryman ARGS`` whose stdout (and stderr: ``2>&1``) is a pipe nobody reads: the read
    end is closed before it writes, as ``| head -1`` leaves it once it has its line."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = subprocess.Popen(
            [*ferryman_cmd(), *args],
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=write_end if stderr_too else subprocess.PIPE,
            env=env_with(),
            text=True,
        )
    finally:
        os.close(write_end)
    _, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, "", err)


def assert_quiet(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    for noise in ("Traceback", "BrokenPipeError", "Exception ignored", "Broken pipe", "internal error"):
        assert noise not in result.stderr, result.stderr


def test_a_sync_whose_reader_left_is_quiet_and_recorded_ok(tmp_path: Path) -> None:
    config = csv_config(tmp_path, log_format="json")
    result = run_with_stdout_closed("--config", str(config), "sync", "t2c")
    assert_quiet(result)
    last = status_json(config)["t2c"]["last_run"]
    assert isinstance(last, dict)
    assert last["outcome"] == "ok" and last["read"] == ROWS and last["created"] == ROWS, last
    assert len((tmp_path / "out" / "tickets.csv").read_text().splitlines()) == ROWS + 1


def test_a_sync_whose_log_reader_left_too_is_recorded_ok(tmp_path: Path) -> None:
    """``ferryman sync t2c 2>&1 | head -1``: the log lines have nowhere to go either, and the
    run still ends as it would have (not ``interrupted`` by a log line that failed)."""
    config = csv_config(tmp_path, log_format="json")
    result = run_with_stdout_closed("--config", str(config), "sync", "t2c", stderr_too=True)
    assert result.returncode == 0
    last = status_json(config)["t2c"]["last_run"]
    assert isinstance(last, dict)
    assert last["outcome"] == "ok" and last["read"] == ROWS and last["dead_lettered"] == BAD_ROWS, last


def test_a_dry_run_whose_reader_left_stops_quietly(tmp_path: Path) -> None:
    config = csv_config(tmp_path, log_format="json")
    result = run_with_stdout_closed("--config", str(config), "sync", "t2c", "--dry-run")
    assert_quiet(result)
    finished = [json.loads(line) for line in result.stderr.splitlines() if '"run.finished"' in line]
    # nobody reads the plan any more: the dry run stops after the page in hand, and says so
    assert [e["outcome"] for e in finished] == ["stopped"], result.stderr
    assert finished[0]["read"] < ROWS
    assert status_json(config)["t2c"]["last_run"] is None  # a dry run records no run


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["dlq", "list"], ["connectors"]])
def test_read_commands_whose_reader_left_are_quiet(tmp_path: Path, command: list[str]) -> None:
    config = csv_config(tmp_path, log_format="json")
    assert run_cli("--config", str(config), "sync", "t2c").returncode == 0
    assert_quiet(run_with_stdout_closed("--config", str(config), *command))


def test_status_through_head_gives_the_first_line(tmp_path: Path) -> None:
    config = csv_config(tmp_path, log_format="json")
    assert run_cli("--config", str(config), "sync", "t2c").returncode == 0
    status = subprocess.Popen(
        [*ferryman_cmd(), "--config", str(config), "status"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env_with(),
    )
    assert status.stdout is not None
    head = subprocess.run(["head", "-1"], stdin=status.stdout, capture_output=True, text=True, check=True, timeout=60)
    status.stdout.close()
    _, err = status.communicate(timeout=60)
    assert head.stdout == "t2c  inbox.tickets -> out.tickets\n"
    assert status.returncode == 0 and b"Traceback" not in err and b"Exception ignored" not in err, err
