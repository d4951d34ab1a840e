"""When pipelines run: the slots of a ``schedule:`` and the start-up catch-up; when they
are audited (``audit: {every: ...}``).

A slot is one scheduled fire time. Instances sharing a state store compute the same slots
and claim each one in the database, so it runs once across them all. Pure functions over
the config and the time of the last run, so they are tested without a scheduler or a clock.

Audits are not slots: each daemon audits every ``audit.every`` counted from its start (or
its last reload), a little late by a random jitter, and the pipeline's lease keeps an audit
from overlapping a run wherever that run is.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ferryman.config import ScheduleConfig
from ferryman.errors import ConfigError

__all__ = ["audit_jitter", "audit_trigger", "check_schedule", "cron_trigger", "last_slot", "missed_slot", "next_slot"]

_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DOW_PART = re.compile(r"^(?:(?P<all>\*)|(?P<lo>\d)(?:-(?P<hi>\d))?)(?:/(?P<step>\d+))?$")


def _zone(schedule: ScheduleConfig) -> tzinfo:
    return ZoneInfo(schedule.timezone) if schedule.timezone else UTC


def cron_trigger(expr: str, *, zone: tzinfo = UTC, jitter: int | None = None) -> CronTrigger:
    """A trigger for a standard 5-field crontab expression, read as cron(8) reads it.

    APScheduler 3 numbers weekdays from Monday = 0, cron from Sunday = 0 (7 is Sunday
    too), so numeric day-of-week fields are translated to day names first.
    """
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"a cron expression has 5 fields (minute hour day month weekday); got {len(fields)}")
    minute, hour, day, month, dow = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_cron_weekdays(dow),
        timezone=zone,
        jitter=jitter,
    )


def _cron_weekdays(field: str) -> str:
    names: list[str] = []
    for part in field.lower().split(","):
        match = _DOW_PART.match(part)
        if match is None:
            if not re.fullmatch(r"[a-z]{3}(-[a-z]{3})?", part) and part != "*":
                raise ValueError(f"day of week {part!r}: use 0-7 (0 and 7 are Sunday) or mon..sun")
            names.append(part)
            continue
        if match["all"] and not match["step"]:
            return "*"
        lo = 0 if match["all"] else int(match["lo"])
        hi = 7 if match["all"] else int(match["hi"] or lo)
        step = int(match["step"] or 1)
        if match["step"] and match["lo"] and not match["hi"]:
            hi = 7  # cron: "1/2" means from 1 to the end
        if not (0 <= lo <= 7 and 0 <= hi <= 7 and lo <= hi and step >= 1):
            raise ValueError(f"day of week {part!r} is out of range 0-7")
        names.extend(_DAY_NAMES[d % 7] for d in range(lo, hi + 1, step))
    return ",".join(dict.fromkeys(names))


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LOOKBACK = (timedelta(hours=1), timedelta(days=1), timedelta(days=32), timedelta(days=367), timedelta(days=8 * 366))


def next_slot(schedule: ScheduleConfig, after: datetime) -> datetime | None:
    """The first scheduled time strictly after ``after`` (aware UTC; None: there is none).

    Intervals count from the Unix epoch, not from when this process started, so every
    instance sharing a state store computes the same slots: ``every: 5m`` fires at :00,
    :05, :10... UTC. Jitter is not part of the slot; it delays the run after its slot.
    """
    if schedule.every is not None:
        return EPOCH + ((after - EPOCH) // schedule.every + 1) * schedule.every
    fire = _cron(schedule).get_next_fire_time(None, after + timedelta(microseconds=1))
    return None if fire is None else fire.astimezone(UTC)


def last_slot(schedule: ScheduleConfig, now: datetime) -> datetime | None:
    """The latest scheduled time at or before ``now`` (None: none in the last eight years)."""
    if schedule.every is not None:
        return EPOCH + ((now - EPOCH) // schedule.every) * schedule.every
    trigger = _cron(schedule)
    for back in _LOOKBACK:  # widening windows: a few steps for "* * * * *" and for "0 0 1 1 *"
        fire = trigger.get_next_fire_time(None, now - back)
        if fire is None or fire > now:
            continue
        while (following := trigger.get_next_fire_time(None, fire + timedelta(seconds=1))) is not None and (
            following <= now
        ):
            fire = following
        return fire.astimezone(UTC)
    return None


def missed_slot(schedule: ScheduleConfig, last_started: datetime | None, now: datetime) -> datetime | None:
    """The slot to run at start-up, if any: the latest one, when the pipeline has not run
    since it (or never ran). Several missed slots are coalesced into that one run."""
    slot = last_slot(schedule, now)
    if slot is None or (last_started is not None and last_started >= slot):
        return None
    return slot


#: the most an audit starts late (see :func:`audit_jitter`)
AUDIT_JITTER_MAX = timedelta(minutes=5)


def audit_jitter(every: timedelta) -> timedelta:
    """How late an audit may start at random: a tenth of its interval, at most five minutes.

    Pipelines configured alike (``every: 1d`` on each) would otherwise all read their
    sources, and spend their rate budgets, at the same moment after a start or a reload."""
    return min(every / 10, AUDIT_JITTER_MAX)


def audit_trigger(every: timedelta, first: datetime) -> IntervalTrigger:
    """At ``first``, then every ``every``, each up to :func:`audit_jitter` late. The daemon
    starts one interval after its start: a daemon restarting in a loop must not audit in a loop."""
    return IntervalTrigger(
        seconds=every.total_seconds(),
        start_date=first,
        timezone=UTC,
        jitter=audit_jitter(every).total_seconds(),
    )


def _cron(schedule: ScheduleConfig) -> CronTrigger:
    assert schedule.cron is not None
    return cron_trigger(schedule.cron, zone=_zone(schedule))


def check_schedule(schedule: ScheduleConfig, *, file: str | None, where: str) -> None:
    """Raise ConfigError when the cron expression cannot be read (the config model checks the rest)."""
    if schedule.cron is None:
        return
    try:
        cron_trigger(schedule.cron, zone=_zone(schedule))
    except ValueError as exc:
        raise ConfigError(f"{schedule.cron!r}: {exc}", file=file, path=f"{where}.cron") from None
