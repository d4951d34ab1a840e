"""Pure parts of the daemon: when pipelines run, where the control API listens, the token
file, and the run-duration histogram."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ferryman import metrics
from ferryman.config import FerrymanConfig, ScheduleConfig
from ferryman.daemon._listen import parse_listen, state_directory, write_token
from ferryman.daemon._metrics import RunDurations, render
from ferryman.daemon._schedule import check_schedule, cron_trigger, last_slot, missed_slot, next_slot
from ferryman.errors import ConfigError

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)  # a Sunday


def every(text: str) -> ScheduleConfig:
    return ScheduleConfig.model_validate({"every": text})


def cron(expr: str, **extra: str) -> ScheduleConfig:
    return ScheduleConfig.model_validate({"cron": expr, **extra})


def test_interval_slots_count_from_the_epoch_so_every_instance_agrees() -> None:
    # whenever a process started, `every: 7m` fires at the same instants
    later = NOW + timedelta(minutes=3, seconds=17, microseconds=5)
    slot = next_slot(every("7m"), later)
    assert slot is not None and (slot - datetime(1970, 1, 1, tzinfo=UTC)) % timedelta(minutes=7) == timedelta(0)
    assert later < slot <= later + timedelta(minutes=7)
    assert next_slot(every("1h"), NOW) == NOW + timedelta(hours=1), "strictly after"
    assert next_slot(every("1h"), NOW - timedelta(microseconds=1)) == NOW
    assert last_slot(every("1h"), NOW + timedelta(minutes=59)) == NOW
    assert last_slot(every("2s"), NOW + timedelta(seconds=3)) == NOW + timedelta(seconds=2)


def test_cron_slots_either_side_of_now() -> None:
    assert next_slot(cron("*/5 * * * *"), NOW) == NOW + timedelta(minutes=5)
    assert last_slot(cron("*/5 * * * *"), NOW + timedelta(minutes=4)) == NOW
    assert last_slot(cron("0 2 * * *"), NOW) == datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
    assert last_slot(cron("0 0 1 1 *"), NOW) == datetime(2026, 1, 1, tzinfo=UTC), "a yearly one too"
    assert last_slot(cron("0 2 * * *", timezone="Europe/Berlin"), NOW) == datetime(2026, 11, 22, 1, 0, tzinfo=UTC)


def test_an_interval_runs_at_start_when_it_never_ran_or_missed_a_slot() -> None:
    assert missed_slot(every("1h"), None, NOW + timedelta(minutes=10)) == NOW
    assert missed_slot(every("1h"), NOW - timedelta(hours=3), NOW + timedelta(minutes=10)) == NOW, "coalesced"
    # ran at (or after) the latest slot: nothing to catch up, the next slot comes as usual
    assert missed_slot(every("1h"), NOW + timedelta(seconds=1), NOW + timedelta(minutes=10)) is None
    assert missed_slot(every("1h"), NOW - timedelta(minutes=1), NOW + timedelta(minutes=10)) == NOW


def test_a_cron_schedule_catches_up_only_on_a_missed_fire_time() -> None:
    daily = cron("0 2 * * *")
    assert missed_slot(daily, None, NOW) == datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
    assert missed_slot(daily, datetime(2026, 11, 21, 2, 0, tzinfo=UTC), NOW), "today's 02:00 was missed"
    assert missed_slot(daily, datetime(2026, 11, 22, 2, 0, 5, tzinfo=UTC), NOW) is None


@pytest.mark.parametrize(
    ("field", "weekday"),
    [("0", 6), ("7", 6), ("1", 0), ("5", 4), ("sun", 6), ("mon", 0)],
)
def test_cron_weekdays_are_read_as_cron_reads_them(field: str, weekday: int) -> None:
    # APScheduler 3 counts Monday as 0; cron counts Sunday as 0 (and 7)
    fire = cron_trigger(f"0 9 * * {field}").get_next_fire_time(None, NOW)
    assert fire is not None and fire.weekday() == weekday


def test_cron_ranges_steps_and_timezone() -> None:
    weekdays = cron_trigger("30 6 * * 1-5")
    fire = weekdays.get_next_fire_time(None, NOW)  # Sunday -> Monday
    assert fire == datetime(2026, 11, 23, 6, 30, tzinfo=UTC)
    every_other = cron_trigger("0 0 * * */2")  # Sun, Tue, Thu, Sat
    fires = []
    t = NOW
    for _ in range(4):
        t = every_other.get_next_fire_time(None, t + timedelta(seconds=1))
        fires.append(t.strftime("%a"))
    assert fires == ["Tue", "Thu", "Sat", "Sun"]
    berlin = next_slot(cron("0 2 * * *", timezone="Europe/Berlin"), NOW)
    assert berlin == datetime(2026, 11, 23, 1, 0, tzinfo=UTC)  # 02:00 CET


@pytest.mark.parametrize("expr", ["0 2 * *", "61 * * * *", "0 2 * * 9", "0 2 * * mon-"])
def test_a_bad_cron_expression_is_a_config_error_naming_the_key(expr: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_schedule(cron(expr), file="f.yaml", where="pipelines.p.schedule")
    assert info.value.path == "pipelines.p.schedule.cron"
    assert "f.yaml" in str(info.value)


def test_an_unknown_schedule_timezone_is_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="unknown timezone"):
        cron("0 2 * * *", timezone="Mars/Olympus")


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:8765", "127.0.0.1", 8765),
        ("localhost:9", "127.0.0.1", 9),
        ("[::1]:80", "::1", 80),
        ("127.0.0.2:1", "127.0.0.2", 1),
    ],
)
def test_loopback_listen_addresses(text: str, host: str, port: int) -> None:
    listen = parse_listen(text)
    assert (listen.host, listen.port, listen.is_tcp) == (host, port, True)


def test_unix_listen_address() -> None:
    listen = parse_listen("unix:/run/ferryman/control.sock")
    assert listen.path == Path("/run/ferryman/control.sock") and not listen.is_tcp
    assert str(listen) == "unix:/run/ferryman/control.sock"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0.0.0.0:8765", "loopback only"),
        ("192.168.1.5:8765", "loopback only"),
        ("[::]:8765", "loopback only"),
        ("example.com:80", "not an IP address"),
        ("127.0.0.1:0", "between 1 and 65535"),
        ("127.0.0.1:http", "not a number"),
        ("8765", "use 127.0.0.1:PORT"),
        ("unix:", "socket's path"),
    ],
)
def test_listen_addresses_that_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_listen(text, file="/etc/ferryman/ferryman.yaml")
    assert info.value.path == "control.listen" and problem in str(info.value)


def test_the_state_directory_holds_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sqlite = FerrymanConfig.model_validate({"state": {"url": f"sqlite:///{tmp_path}/db/ferryman.db"}})
    assert state_directory(sqlite) == tmp_path / "db"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "systemd"))
    assert state_directory(FerrymanConfig()) == tmp_path / "systemd", "the default SQLite file lives there"
    postgres = FerrymanConfig.model_validate({"state": {"url": "postgresql://db/ferryman"}})
    assert state_directory(postgres) == tmp_path / "systemd"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert state_directory(postgres) == Path("var").absolute()


def test_the_token_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "state" / "control.token"
        path.parent.mkdir()
        path.write_text("old")
        path.chmod(0o644)
        token = write_token(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token and len(token) >= 40
    assert write_token(path) != token, "a new token at each start"


def test_run_durations_replace_the_engines_bare_sum() -> None:
    with pytest.raises(metrics.UndeclaredMetric):  # the histogram owns the name
        metrics.inc("ferryman_run_duration_seconds_sum", 2.5, pipeline="p")
    metrics.inc("ferryman_runs_total", pipeline="p", outcome="ok")
    durations = RunDurations()
    durations.observe("p", 2.5)
    durations.observe("p", 0.25)
    text = render(durations)
    assert 'ferryman_run_duration_seconds_bucket{pipeline="p",le="1"} 1' in text
    assert 'ferryman_run_duration_seconds_bucket{pipeline="p",le="5"} 2' in text
    assert 'ferryman_run_duration_seconds_bucket{pipeline="p",le="+Inf"} 2' in text
    assert 'ferryman_run_duration_seconds_sum{pipeline="p"} 2.75' in text
    assert 'ferryman_run_duration_seconds_count{pipeline="p"} 2' in text
    assert "# TYPE ferryman_run_duration_seconds_sum" not in text
    assert text.count('ferryman_run_duration_seconds_sum{pipeline="p"}') == 1
    assert 'ferryman_runs_total{outcome="ok",pipeline="p"} 1' in text
