"""The shipped systemd units: `systemd-analyze verify` accepts them, `systemd-analyze
security` rates the service 2.0 or better, and they say what the daemon relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ferryman_cmd

UNITS = Path(__file__).resolve().parents[2] / "systemd"
EXEC = "/opt/ferryman/.venv/bin/ferryman"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze is not installed (Debian/Ubuntu: apt-get install systemd)"
)


def directives(name: str, section: str | None = None) -> dict[str, list[str]]:
    """The unit's directives (of ``section`` only, if given)."""
    found: dict[str, list[str]] = {}
    current = None
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("["):
            current = line.strip("[] ")
        elif line and not line.startswith(("#", ";")) and "=" in line and section in (None, current):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(value: str) -> float:
    """A systemd time span (``10min``, ``1h``, ``90``) in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "hr": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+)\s*([a-z]*)", value):
        total += int(number) * units[unit]
    return total


def copies_for_verify(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointed at this checkout's ferryman: verify insists that the
    binary exists, and /opt/ferryman is where an installation puts it, not where tests run."""
    exe = ferryman_cmd()[0]
    paths = []
    for unit in ("ferryman.service", "ferryman-sync@.service", "ferryman-sync@.timer"):
        text = (UNITS / unit).read_text()
        paths.append(tmp_path / unit)
        paths[-1].write_text(text.replace(EXEC, exe))
    # a template is also checked as an instance, with the timer that starts it
    for suffix in ("service", "timer"):
        instance = tmp_path / f"ferryman-sync@tickets-to-csv.{suffix}"
        shutil.copy(tmp_path / f"ferryman-sync@.{suffix}", instance)
        paths.append(instance)
    return paths


@needs_analyze
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    assert ANALYZE is not None
    paths = copies_for_verify(tmp_path)
    result = subprocess.run(
        [ANALYZE, "verify", *map(str, paths)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    # verify exits 0 on some problems (unknown keys, bad values) and only prints them
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


@needs_analyze
@pytest.mark.parametrize("unit", ["ferryman.service", "ferryman-sync@.service"])
def test_security_exposure_is_2_or_lower(unit: str) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(UNITS / unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= 2.0, result.stdout


def test_the_service_unit_says_what_the_daemon_relies_on() -> None:
    service = directives("ferryman.service")
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert service["ExecStart"][0].startswith(f"{EXEC} --config /etc/ferryman/ferryman.yaml run")
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["RestartPreventExitStatus"] == ["78"] and service["Restart"] == ["on-failure"]
    assert service["WatchdogSec"] == ["30"]
    # the drain must fit in the stop timeout, with room to close up
    drain = float(re.search(r"--drain-timeout (\d+)", service["ExecStart"][0])[1])  # type: ignore[index]
    assert drain + 10 <= float(service["TimeoutStopSec"][0])
    assert service["StateDirectory"] == ["ferryman"] and service["ConfigurationDirectory"] == ["ferryman"]
    assert service["DynamicUser"] == ["yes"] and service["UMask"] == ["0077"]

    sync = directives("ferryman-sync@.service")
    assert sync["Type"] == ["oneshot"]
    assert sync["ExecStart"] == [f"{EXEC} --config /etc/ferryman/ferryman.yaml sync %i --no-progress"]
    # the same user and state as the daemon, so the two share the database and its leases
    for key in ("User", "DynamicUser", "StateDirectory", "ConfigurationDirectory"):
        assert sync[key] == service[key], key
    # and the same hardening
    hardening = {k for k in service if k.startswith(("Protect", "Private", "Restrict", "System", "Capability"))}
    assert {k: sync.get(k) for k in hardening} == {k: service[k] for k in hardening}


def test_the_readme_installs_where_the_units_look() -> None:
    readme = (UNITS / "README.md").read_text()
    assert "/opt/ferryman/.venv" in readme and "/etc/ferryman/ferryman.yaml" in readme
    assert "sqlite:////var/lib/ferryman/ferryman.db" in readme
    assert "LoadCredential=" in readme and "${credential:" in readme


def test_the_service_gives_up_on_a_restart_loop() -> None:
    """Bind failures (exit 1 at start) and watchdog kills restart the unit; a start limit in
    [Unit] stops that before it goes on for ever."""
    unit = directives("ferryman.service", "Unit")
    service = directives("ferryman.service", "Service")
    assert "StartLimitIntervalSec" not in service and "StartLimitBurst" not in service  # [Unit] keys
    interval, burst = seconds(unit["StartLimitIntervalSec"][0]), int(unit["StartLimitBurst"][0])
    restart = seconds(service["RestartSec"][0])
    # a failure at start-up restarts every RestartSec: the limit must be reached within the interval
    assert burst * restart < interval
    # so must a hang that the watchdog kills, one start every WatchdogSec + RestartSec
    assert burst * (seconds(service["WatchdogSec"][0]) + restart) < interval
    assert 3 <= burst <= 20
    readme = (UNITS / "README.md").read_text()
    assert "StartLimitBurst=10" in readme and "reset-failed" in readme


def test_a_one_off_sync_cannot_run_for_ever() -> None:
    sync = directives("ferryman-sync@.service", "Service")
    timeout = seconds(sync["TimeoutStartSec"][0])
    assert 10 * 60 <= timeout <= 6 * 3600  # long enough for a real sync, short of holding the timer for ever
    readme = (UNITS / "README.md").read_text()
    assert f"TimeoutStartSec={sync['TimeoutStartSec'][0]}" in readme
