"""``ferryman sandbox``: the process users and end-to-end tests start."""

from __future__ import annotations

import re
import selectors
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from ferryman.sandbox.cli import main

RUN_MAIN = "import sys; from ferryman.sandbox.cli import main; sys.exit(main(sys.argv[1:]))"


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RUN_MAIN, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def url_in(line: str) -> str:
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    assert match, line
    return match[0]


def first_line(process: subprocess.Popen[str], timeout: float = 15.0) -> str:
    assert process.stdout is not None and process.stderr is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            process.kill()
            raise AssertionError(f"no start-up line within {timeout} s; stderr: {process.stderr.read()}")
    return process.stdout.readline()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serves_until_signalled_and_exits_cleanly(signum):
    process = start("generic", "--port", "0", "--records", "7", "--seed", "2", "--rate-limit", "600")
    try:
        line = first_line(process)
        assert "generic sandbox on http://127.0.0.1:" in line
        assert "(api key: sandbox-key)" in line and "Ctrl-C to stop" in line
        url = url_in(line)
        body = httpx.get(url + "/api/tickets", headers={"X-API-Key": "sandbox-key"}).json()
        assert body["total"] == 7
        assert httpx.get(url + "/__sandbox/stats").json()["requests"] == 1
    finally:
        process.send_signal(signum)
        _out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_faults_from_the_command_line_apply():
    process = start("generic", "--port", "0", "--faults", "503:1:retry_after=9")
    try:
        url = url_in(first_line(process))
        response = httpx.get(url + "/api/tickets", headers={"X-API-Key": "sandbox-key"})
        assert response.status_code == 503 and response.headers["Retry-After"] == "9"
    finally:
        process.terminate()
        process.communicate(timeout=15)
    assert process.returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generic", "--faults", "slow:0.1:delay=forever"], "delay='forever'"),
        (["generic", "--rate-limit", "0"], "positive number of requests"),
        (["generic", "--records", "-5"], "must be 0 or more"),
        (["generic", "--port", "70000"], "not a TCP port"),
        (["no-such-app"], "unknown sandbox 'no-such-app'"),
        (["generic", "--host", "0.0.0.0"], "not loopback"),
        ([], "the following arguments are required: SYSTEM"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(capsys, args, message):
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert message in err and out == ""


def test_a_port_in_use_is_a_clear_error(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["generic", "--port", str(port), "--records", "1"]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
