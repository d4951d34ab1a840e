"""The control API on TCP and `ferryman trigger` against one running daemon; a one-off
`ferryman sync` of a pipeline the daemon is running is refused, or waits with --wait."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE

import pytest
import yaml

from ferryman.cli import main
from tests.conftest import ferryman_cmd, run_cli
from tests.daemon.support import (
    SANDBOX_KEY,
    Daemon,
    csv_system,
    free_port,
    read_keys,
    rest_system,
    sandbox,
    write_config,
    write_tickets,
)

API_RECORDS = 200
ENV = {"SANDBOX_KEY": SANDBOX_KEY}


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """The app behind pipeline `api`: the generic sandbox, answering 429 to some requests."""
    with sandbox("--records", str(API_RECORDS), "--seed", "7", "--faults", "429:0.3:retry_after=1") as served:
        yield served


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, api: tuple[int, subprocess.Popen[str]]) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("control")
    write_tickets(tmp / "small" / "tickets.csv", 100)
    config = write_config(
        tmp / "ferryman.yaml",
        state_url=f"sqlite:///{tmp / 'state' / 'ferryman.db'}",
        systems={
            "small_in": csv_system(tmp / "small"),
            "api": rest_system(api[0], rate_limit="300/min"),
            "out": csv_system(tmp / "out"),
            "out_api": csv_system(tmp / "out-api"),
        },
        pipelines={
            # no schedule: these run only when triggered
            "small": {"from": "small_in.tickets", "to": "out.tickets", "page_size": 50},
            "api": {"from": "api.tickets", "to": "out_api.tickets", "page_size": 40},
        },
        listen=f"127.0.0.1:{free_port()}",
    )
    daemon = Daemon(config, env=ENV)
    try:
        daemon.wait_ready()
        yield daemon
        code, _ = daemon.stop()
        assert code == 0, daemon.log_text()
    finally:
        daemon.kill()


def cli(daemon: Daemon, *args: str, **kwargs: object) -> tuple[int, str, str]:
    result = run_cli("--config", str(daemon.config), *args, env=ENV, **kwargs)  # type: ignore[arg-type]
    return result.returncode, result.stdout, result.stderr


def trigger_and_wait(daemon: Daemon, name: str) -> dict[str, object]:
    with daemon.client() as client:
        result: dict[str, object] = client.post(f"/v1/pipelines/{name}/trigger", params={"wait": "true"}).json()
    assert result["outcome"] == "ok", result
    return result


def test_token_is_required_on_tcp(daemon: Daemon) -> None:
    token_file = Path(daemon.state_url.split("///", 1)[1]).parent / "control.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    for token in (None, "wrong-token"):
        response = daemon.get("/v1/status", token=token)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert daemon.get("/metrics", token=token).status_code == 401
    with daemon.client(token=None) as client:
        assert client.post("/v1/pipelines/small/trigger").status_code == 401
    assert daemon.runs("small") == [], "an unauthenticated trigger must not run anything"
    assert daemon.get("/v1/status", token=daemon.token()).status_code == 200
    health = daemon.get("/healthz")  # no token: it says nothing but "alive"
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_sync_is_refused_or_waits_while_the_daemon_runs_the_pipeline(
    daemon: Daemon, api: tuple[int, subprocess.Popen[str]]
) -> None:
    env = {**{k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}, **ENV}
    with daemon.client() as client:
        assert client.post("/v1/pipelines/api/trigger").status_code == 202
        deadline = time.monotonic() + 30
        while not (runs := daemon.runs("api")) or runs[-1]["read"] < 40:
            assert time.monotonic() < deadline, daemon.log_text()
            time.sleep(0.02)
        # hold the daemon's run in the middle of a request: the app stops answering
        api[1].send_signal(signal.SIGSTOP)
        try:
            again = client.post("/v1/pipelines/api/trigger")
            assert again.status_code == 409 and again.json()["reason"] == "running"
            commands = {
                "sync": ["sync", "api", "--no-progress"],
                "sync --wait": ["sync", "api", "--wait", "--no-progress"],
                "trigger": ["trigger", "api"],
                "trigger --wait": ["trigger", "api", "--wait"],
            }
            procs = {
                name: subprocess.Popen(
                    [*ferryman_cmd(), "--config", str(daemon.config), *args],
                    stdout=PIPE,
                    stderr=PIPE,
                    text=True,
                    env=env,
                )
                for name, args in commands.items()
            }
            out = {name: (*procs[name].communicate(timeout=60), procs[name].returncode) for name in ("sync", "trigger")}
            time.sleep(1.5)  # `sync --wait` retries the lease every second
            assert procs["sync --wait"].poll() is None, "sync --wait waits for the daemon's run"
            assert procs["trigger --wait"].poll() is None, "trigger --wait waits for the run in progress"
            assert daemon.runs("api")[-1]["outcome"] == "running"
        finally:
            api[1].send_signal(signal.SIGCONT)
    for name in ("sync --wait", "trigger --wait"):
        out[name] = (*procs[name].communicate(timeout=120), procs[name].returncode)
    daemon_run = daemon.runs("api")[0]
    assert daemon_run["outcome"] == "ok", daemon_run

    stdout, stderr, code = out["sync"]
    assert code == 5, stdout + stderr
    assert "already running on" in stderr and "use --wait" in stderr
    stdout, stderr, code = out["trigger"]
    assert code == 5 and "already running in the daemon; use --wait" in stderr, stdout + stderr
    stdout, stderr, code = out["trigger --wait"]
    assert code == 0, stderr
    assert stdout.startswith(f"api: ok (read {API_RECORDS}, created {API_RECORDS},"), stdout  # joined that run
    stdout, stderr, code = out["sync --wait"]
    assert code == 0, stderr
    assert "created 0," in stdout, stdout

    runs = daemon.runs("api")
    assert [r["trigger"] for r in runs] == ["api", "manual"], runs
    assert runs[0]["ended_at"] <= runs[1]["started_at"], "the two runs of one pipeline overlapped"
    keys = read_keys(daemon.config.parent / "out-api" / "tickets.csv")
    assert len(keys) == len(set(keys)) == API_RECORDS


def test_trigger_runs_the_pipeline_once_and_reports_counts(daemon: Daemon) -> None:
    code, out, err = cli(daemon, "trigger", "small", "--wait")
    assert code == 0, err
    assert out.startswith("small: ok (read 100, created 100, updated 0, deleted 0, skipped 0, dead_lettered 0) in "), (
        out
    )
    (run,) = daemon.runs("small")
    assert run["trigger"] == "api" and run["outcome"] == "ok" and run["created"] == 100
    assert sorted(read_keys(daemon.config.parent / "out" / "tickets.csv")) == [f"T{i:06d}" for i in range(100)]

    # without --wait it starts the run and returns
    code, out, err = cli(daemon, "trigger", "small")
    assert code == 0, err
    assert "started in the daemon" in out
    deadline = time.monotonic() + 20
    while len(runs := daemon.runs("small")) < 2 or runs[-1]["outcome"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert runs[-1]["outcome"] == "ok" and runs[-1]["created"] == 0, "nothing doubled"


def test_status_is_the_cli_status(daemon: Daemon) -> None:
    trigger_and_wait(daemon, "small")
    api = daemon.get("/v1/status", token=daemon.token()).json()
    code, out, err = cli(daemon, "status", "--json")
    assert code == 0, err
    rows = yaml.safe_load(out)
    assert [r["pipeline"] for r in api] == [r["pipeline"] for r in rows] == ["small", "api"]
    assert api[0]["last_run"] == rows[0]["last_run"]
    assert api[0]["cursor"] == rows[0]["cursor"] == "2026-01-01T00:01:39Z T000099"


def test_metrics(daemon: Daemon) -> None:
    trigger_and_wait(daemon, "small")
    response = daemon.get("/metrics", token=daemon.token())
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['ferryman_records_read_total{pipeline="small"}'] >= 100
    assert samples['ferryman_records_written_total{op="created",pipeline="small"}'] == 100
    assert 'ferryman_records_skipped_total{pipeline="small"}' in samples
    assert 'ferryman_records_dead_lettered_total{pipeline="small"}' in samples
    assert samples['ferryman_runs_total{outcome="ok",pipeline="small"}'] >= 1
    assert samples['ferryman_run_duration_seconds_count{pipeline="small"}'] >= 1
    assert samples['ferryman_run_duration_seconds_bucket{pipeline="small",le="+Inf"}'] >= 1
    assert 'ferryman_run_duration_seconds_sum{pipeline="small"}' in samples
    # cursor lag: now minus 2026-01-01T00:01:39Z, measured when scraped
    lag = samples['ferryman_cursor_lag_seconds{pipeline="small"}']
    assert abs(lag - (time.time() - 1767225699)) < 120
    assert samples['ferryman_pipeline_running{pipeline="small"}'] == 0
    # HTTP, from the sandbox-backed pipeline: requests by status, 429s, seconds waiting on rate limits
    if not daemon.runs("api"):
        trigger_and_wait(daemon, "api")
        text = daemon.get("/metrics", token=daemon.token()).text
        samples = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"
        }
    assert samples['ferryman_http_requests_total{status="200",system="api"}'] >= API_RECORDS / 40
    assert samples['ferryman_http_requests_total{status="429",system="api"}'] >= 1
    assert samples['ferryman_http_rate_limited_total{system="api"}'] >= 1
    assert samples['ferryman_http_rate_limit_wait_seconds_total{system="api"}'] > 1.0
    types = re.findall(r"^# TYPE (\S+) ", text, flags=re.M)
    assert len(types) == len(set(types)), "each family declared once"
    assert "# TYPE ferryman_run_duration_seconds histogram" in text
    assert "ferryman_run_duration_seconds_sum counter" not in text


def test_a_second_daemon_on_the_same_config_leaves_the_token_alone(daemon: Daemon) -> None:
    """It fails to bind (the address is the first daemon's) before writing anything: the
    token file the running daemon answers to is unchanged, and `trigger` still works."""
    token_file = Path(daemon.state_url.split("///", 1)[1]).parent / "control.token"
    before = token_file.read_text()
    second = subprocess.run(
        [*ferryman_cmd(), "--config", str(daemon.config), "run"],
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode != 0, second.stderr
    assert "Traceback" not in second.stderr, second.stderr
    assert token_file.read_text() == before, "the second daemon rewrote the running daemon's token"
    code, out, err = cli(daemon, "trigger", "small", "--wait")
    assert code == 0, err + out


def test_trigger_without_a_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tickets(tmp_path / "in" / "tickets.csv", 1)
    port = free_port()
    config = write_config(
        tmp_path / "ferryman.yaml",
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        systems={"inbox": csv_system(tmp_path / "in"), "out": csv_system(tmp_path / "out")},
        pipelines={"p": {"from": "inbox.tickets", "to": "out.tickets"}},
        listen=f"127.0.0.1:{port}",
    )
    assert main(["--config", str(config), "trigger", "p"]) == 1
    err = capsys.readouterr().err
    assert "no control token at" in err and "control.token" in err

    monkeypatch.setenv("FERRYMAN_CONTROL__TOKEN", "t0ken")
    assert main(["--config", str(config), "trigger", "p", "--wait"]) == 1
    err = capsys.readouterr().err
    assert f"no daemon answers on 127.0.0.1:{port}" in err and "ferryman run" in err


def test_a_non_loopback_listen_address_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tickets(tmp_path / "in" / "tickets.csv", 1)
    config = write_config(
        tmp_path / "ferryman.yaml",
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        systems={"inbox": csv_system(tmp_path / "in"), "out": csv_system(tmp_path / "out")},
        pipelines={"p": {"from": "inbox.tickets", "to": "out.tickets"}},
        listen="0.0.0.0:8765",
    )
    assert main(["--config", str(config), "run"]) == 78
    err = capsys.readouterr().err
    assert "control.listen" in err and "loopback" in err
    assert not (tmp_path / "state.db").exists(), "refused before touching the state"
