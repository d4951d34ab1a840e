"""When pipelines run: APScheduler triggers from ``schedule:`` and the start-up catch-up.

Pure functions over the config and the time of the last run, so they are tested without
a scheduler or a clock.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ferryman.config import ScheduleConfig
from ferryman.errors import ConfigError

__all__ = ["cron_trigger", "first_fire", "regular_trigger"]

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


def regular_trigger(schedule: ScheduleConfig, *, start: datetime) -> BaseTrigger:
    """The pipeline's recurring trigger; an interval's first fire time is ``start``."""
    jitter = int(schedule.jitter.total_seconds()) or None
    if schedule.every is not None:
        return IntervalTrigger(seconds=schedule.every.total_seconds(), start_date=start, timezone=UTC, jitter=jitter)
    assert schedule.cron is not None
    return cron_trigger(schedule.cron, zone=_zone(schedule), jitter=jitter)


def first_fire(schedule: ScheduleConfig, last_started: datetime | None, now: datetime) -> tuple[bool, datetime]:
    """(run right away?, start of the regular schedule) for a pipeline whose last run began
    at ``last_started`` (None: it never ran).

    A pipeline that never ran, or missed a fire time since its last run (the daemon was
    down), runs once at start-up: the missed runs are coalesced into that one. Otherwise
    an interval continues from the last run (last + every), not from the restart.
    """
    if schedule.every is not None:
        if last_started is None or last_started + schedule.every <= now:
            return True, now + schedule.every
        return False, last_started + schedule.every
    assert schedule.cron is not None
    if last_started is None:
        return True, now
    trigger = cron_trigger(schedule.cron, zone=_zone(schedule))
    missed = trigger.get_next_fire_time(None, last_started + timedelta(microseconds=1))
    return (missed is not None and missed <= now), now


def check_schedule(schedule: ScheduleConfig, *, file: str | None, where: str) -> None:
    """Raise ConfigError when the cron expression cannot be read (the config model checks the rest)."""
    if schedule.cron is None:
        return
    try:
        cron_trigger(schedule.cron, zone=_zone(schedule))
    except ValueError as exc:
        raise ConfigError(f"{schedule.cron!r}: {exc}", file=file, path=f"{where}.cron") from None
