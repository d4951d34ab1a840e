"""Log lines as journald and a log shipper see them: under systemd every line carries its
syslog priority (``<N>``); records of the libraries underneath (stdlib ``logging``) come
out as the same JSON as ferryman's own events; no registered secret shows in either."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog

from ferryman import logs, redact
from tests.conftest import ferryman_cmd
from tests.daemon.support import csv_system, free_port, write_config, write_tickets

SECRET = "tok-9f3Kq27xLmZ"
LINE = re.compile(r"^<(\d)>(.*)$")
EXPECTED = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}

# Logs one event of each level from structlog and from stdlib loggers of the libraries
# the daemon uses, with the secret in messages, fields, URLs and a traceback.
SCRIPT = f"""
import asyncio, logging, structlog
from ferryman import logs, redact
redact.register_secret({SECRET!r})
logs.configure("debug", "json")
log = structlog.get_logger("ferryman.test")
log.debug("run.page", pipeline="p", n=1)
log.info("run.finished", pipeline="p", token={SECRET!r})
log.warning("http.retry", url="https://api.example/v1?api_key={SECRET}")
try:
    raise RuntimeError("refused with {SECRET}")
except RuntimeError:
    log.exception("run.crashed", pipeline="p")
logging.getLogger("httpx").warning("HTTP Request: GET %s", "https://api.example/?key={SECRET}")
logging.getLogger("apscheduler.scheduler").error("Job %r raised", "p")
logging.getLogger("sqlalchemy.engine").critical("connection lost: password=%s", {SECRET!r})
logging.getLogger("aiohttp.server").info("started")
try:
    raise OSError(24, "Too many open files: {SECRET}")
except OSError:
    logging.getLogger("asyncio").exception("socket.accept() out of system resource")
"""


def run_script(tmp_path: Path, journal: str | None) -> list[str]:
    """The script's stderr lines; ``journal``: ``"match"`` sets $JOURNAL_STREAM to the file
    stderr goes to (as systemd does), ``"other"`` to another file (an inherited variable)."""
    err_path = tmp_path / "stderr.log"
    other = tmp_path / "other"
    other.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with err_path.open("wb") as err:
        if journal is not None:
            st = os.fstat(err.fileno()) if journal == "match" else other.stat()
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-c", SCRIPT], stderr=err, env=env, check=True, timeout=60)
    return err_path.read_text().splitlines()


def parse(line: str) -> tuple[int | None, dict[str, Any]]:
    match = LINE.match(line)
    if match is None:
        return None, json.loads(line)
    return int(match.group(1)), json.loads(match.group(2))


def test_under_systemd_every_line_has_its_priority_and_library_records_are_the_same_json(tmp_path: Path) -> None:
    lines = run_script(tmp_path, "match")
    assert len(lines) == 9, lines
    events = []
    for line in lines:
        priority, event = parse(line)
        assert priority is not None, f"no <N> prefix: {line}"
        assert priority == EXPECTED[event["level"]], line
        events.append(event)
    by_event = {e["event"]: e for e in events}
    assert [by_event[e]["level"] for e in ("run.page", "run.finished", "http.retry", "run.crashed")] == [
        "debug",
        "info",
        "warning",
        "error",
    ]
    ours = by_event["run.finished"]
    library = next(e for e in events if e.get("logger") == "httpx")
    assert set(ours) - {"pipeline", "token"} == {"event", "level", "ts"}
    assert set(library) == {"event", "level", "ts", "logger"}, "the same shape, and which library said it"
    assert library["event"].startswith("HTTP Request: GET https://api.example/?key=")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", library["ts"]), library["ts"]
    assert library["ts"][:10] == ours["ts"][:10]
    levels = {e["logger"]: (e["level"], p) for e, p in ((parse(x)[1], parse(x)[0]) for x in lines) if "logger" in e}
    assert levels == {
        "httpx": ("warning", 4),
        "apscheduler.scheduler": ("error", 3),
        "sqlalchemy.engine": ("critical", 2),
        "aiohttp.server": ("info", 6),
        "asyncio": ("error", 3),
    }
    crashed = next(e for e in events if e.get("logger") == "asyncio")
    assert "OSError" in crashed["exception"] and "Traceback" in crashed["exception"], "the traceback, inside the JSON"
    assert "Traceback" in by_event["run.crashed"]["exception"]
    text = "\n".join(lines)
    assert SECRET not in text and SECRET[:8] not in text, text
    assert "***" in by_event["run.finished"]["token"]


def test_off_the_journal_there_is_no_prefix(tmp_path: Path) -> None:
    for journal in (None, "other"):  # no systemd; or a variable inherited by a redirected child
        lines = run_script(tmp_path, journal)
        assert len(lines) == 9, lines
        for line in lines:
            assert parse(line)[0] is None, line
        assert SECRET not in "\n".join(lines)


def test_the_cli_under_systemd_prefixes_its_own_lines(tmp_path: Path) -> None:
    write_tickets(tmp_path / "in" / "tickets.csv", 3)
    config = write_config(
        tmp_path / "ferryman.yaml",
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        systems={"inbox": csv_system(tmp_path / "in"), "out": csv_system(tmp_path / "out")},
        pipelines={"p": {"from": "inbox.tickets", "to": "out.tickets"}},
        listen=f"127.0.0.1:{free_port()}",
        level="debug",
    )
    err_path = tmp_path / "stderr.log"
    with err_path.open("wb") as err:
        st = os.fstat(err.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        env.pop("NOTIFY_SOCKET", None)
        done = subprocess.run(
            [*ferryman_cmd(), "--config", str(config), "sync", "p"],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, err_path.read_text()
    lines = err_path.read_text().splitlines()
    finished = [parse(x)[1] for x in lines if '"run.finished"' in x]
    assert finished and finished[0]["created"] == 3
    for line in lines:
        priority, event = parse(line)
        assert priority == EXPECTED[event["level"]], line


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_journald_on_every_line_in_process(fmt: str) -> None:
    out = io.StringIO()
    logs.configure("debug", fmt, stream=out, journald=True)
    structlog.get_logger("t").warning("a.warning", n=1)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("aiohttp.web").exception("Error handling request")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("<4>")
    assert len(lines) > 2 if fmt == "console" else len(lines) == 2, "a console traceback spans lines"
    assert all(line.startswith("<3>") for line in lines[1:]), lines


def test_stdlib_records_keep_being_rate_limited_and_are_json() -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out, journald=False)
    logs.limit_rate(3)
    try:
        for i in range(50):
            logging.getLogger("httpx").warning("retrying %s", i)
    finally:
        logs.limit_rate(None)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["retrying 0", "retrying 1", "retrying 2"]
    assert all(e["logger"] == "httpx" and e["level"] == "warning" for e in events)


def test_a_secret_in_a_library_records_arguments_is_scrubbed() -> None:
    redact.register_secret(SECRET)
    out = io.StringIO()
    logs.configure("info", "json", stream=out, journald=False)
    logging.getLogger("sqlalchemy.pool").warning("dsn %s failed", f"postgresql://u:{SECRET}@db/x")
    line = out.getvalue()
    assert SECRET not in line and json.loads(line)["event"].startswith("dsn postgresql://u:")
