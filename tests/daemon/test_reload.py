"""SIGHUP: a broken config is logged with the reason and the daemon carries on with the old
one; a valid changed config is applied (new pipelines scheduled, and run if they are due).
The daemon here listens on a Unix socket, as it may under systemd."""

from __future__ import annotations

import shutil
import signal
import stat
import time
from pathlib import Path

import yaml

from tests.conftest import run_cli
from tests.daemon.support import Daemon, NotifySocket, csv_system, read_keys, short_dir, write_config, write_tickets


def test_sighup_keeps_the_old_config_when_the_new_one_is_broken_and_applies_a_good_one(
    tmp_path: Path, default_state_url: str
) -> None:
    sockets = short_dir()
    write_tickets(tmp_path / "in" / "tickets.csv", 50)
    systems = {
        "inbox": csv_system(tmp_path / "in"),
        "a_out": csv_system(tmp_path / "a"),
        "b_out": csv_system(tmp_path / "b"),
    }
    pipeline_a = {"from": "inbox.tickets", "to": "a_out.tickets", "schedule": {"every": "1h"}}
    config = write_config(
        tmp_path / "ferryman.yaml",
        state_url=default_state_url,
        systems=systems,
        pipelines={"a": pipeline_a},
        listen=f"unix:{sockets / 'control.sock'}",
    )
    good = config.read_text()
    notify = NotifySocket()
    daemon = Daemon(config, notify=notify)
    try:
        daemon.wait_ready()
        # a Unix socket: guarded by its mode, no token file
        assert stat.S_IMODE((sockets / "control.sock").stat().st_mode) == 0o660
        assert not (tmp_path / "control.token").exists()
        daemon.wait_event("run.finished", pipeline="a")

        # 1. not YAML at all
        config.write_text(good + "pipelines: [oops\n")
        daemon.signal(signal.SIGHUP)
        failed = daemon.wait_event("config.reload_failed")
        assert str(config) in failed["error"] and "not valid YAML" in failed["error"]
        # 2. valid YAML, invalid value: the message names the key
        broken = yaml.safe_load(good)
        broken["pipelines"]["a"]["page_size"] = "lots"
        broken["pipelines"]["b"] = {"from": "inbox.tickets", "to": "b_out.tickets", "schedule": {"every": "1h"}}
        config.write_text(yaml.safe_dump(broken))
        daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while len([e for e in daemon.events() if e["event"] == "config.reload_failed"]) < 2:
            assert time.monotonic() < deadline, daemon.log_text()
            time.sleep(0.05)
        second = [e for e in daemon.events() if e["event"] == "config.reload_failed"][-1]
        assert "pipelines.a.page_size" in second["error"] and second["level"] == "error"
        # each reload says RELOADING=1 and ends with READY=1 (the datagram may trail the log line)
        deadline = time.monotonic() + 10
        while (lines := [line for text in notify.texts() for line in text.split("\n")]).count("READY=1") < 3:
            assert time.monotonic() < deadline, lines
            time.sleep(0.02)
        assert lines.count("RELOADING=1") == 2 and lines.count("READY=1") == 3
        assert any(line.startswith("STATUS=reload failed, still on the previous config: ") for line in lines)

        # still alive, still on the old config: `a` runs when triggered over the socket, `b` is unknown
        assert daemon.proc.poll() is None
        assert daemon.get("/healthz").status_code == 200
        result = run_cli("--config", str(config_copy(good, tmp_path)), "trigger", "a", "--wait")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("a: ok (read "), result.stdout
        with daemon.client() as client:
            assert client.post("/v1/pipelines/b/trigger").status_code == 404
        assert not (tmp_path / "b" / "tickets.csv").exists()

        # 3. a valid change: pipeline b is added; it never ran, so it runs at once
        fixed = yaml.safe_load(good)
        fixed["pipelines"]["b"] = broken["pipelines"]["b"]
        config.write_text(yaml.safe_dump(fixed))
        daemon.signal(signal.SIGHUP)
        reloaded = daemon.wait_event("config.reloaded")
        assert reloaded["pipelines"] == ["a", "b"] and reloaded["scheduled"] == 2
        daemon.wait_event("run.finished", pipeline="b")
        assert sorted(read_keys(tmp_path / "b" / "tickets.csv")) == [f"T{i:06d}" for i in range(50)]
        (run_b,) = daemon.runs("b")
        assert run_b["trigger"] == "reload" and run_b["outcome"] == "ok"
        assert [r["pipeline"] for r in daemon.get("/v1/status").json()] == ["a", "b"]

        code, _ = daemon.stop()
        assert code == 0
        assert not (sockets / "control.sock").exists(), "the socket is removed on exit"
    finally:
        daemon.kill()
        notify.close()
        shutil.rmtree(sockets, ignore_errors=True)


def config_copy(text: str, directory: Path) -> Path:
    """The good config for the CLI (the daemon's file is broken at this point of the test)."""
    path = directory / "cli.yaml"
    path.write_text(text)
    return path
