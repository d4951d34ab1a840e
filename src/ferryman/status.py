"""The light read path of ``ferryman status``: a SQLite state database read with the stdlib.

``ferryman status`` is what an operator types to see whether things are well, so it should
answer at once. Opening the :class:`~ferryman.state.StateStore` imports SQLAlchemy, SQLModel
and the table models, which is most of a second of start-up for a handful of ``SELECT``\\s.
:class:`StatusReader` answers the same questions (the methods :func:`status_rows` calls,
with the same names and results) through :mod:`sqlite3`, read-only.

It only ever reads a database that is already at the schema version it knows; anything
else (PostgreSQL, no database yet, an older or newer schema, a database it cannot open)
makes :meth:`StatusReader.open` return ``None`` and the caller uses the ``StateStore``,
which migrates or explains. A test keeps :data:`SCHEMA_VERSION` equal to the migrations'
latest version and compares both readers' answers on the same database.

:func:`status_rows` builds the rows from either reader: the document ``status --json`` prints
and the daemon's ``GET /v1/status`` serves (``null`` for what is missing, ISO 8601 ``Z``
times, exact). :func:`render_status` is the text a person reads, made from the same rows:
times to the second with how long ago, ``<->`` for a two-way pipeline, the run's duration,
the next scheduled run, a labelled cursor, withheld deletes and open dead letters.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ferryman import terminal
from ferryman.errors import StateUnavailable
from ferryman.holders import describe_holder, holder_is_dead
from ferryman.liveness import run_as_seen
from ferryman.timeutil import format_utc, from_db_time, sqlite_text, utcnow

if TYPE_CHECKING:
    from ferryman.config import FerrymanConfig, PipelineConfig, ScheduleConfig

# run_as_seen is :mod:`ferryman.liveness`'s: named here until ferryman.state imports it from there
__all__ = ["SCHEMA_VERSION", "CursorView", "StatusReader", "render_status", "run_as_seen", "status_rows"]

#: the state schema this reader understands (``ferryman.state.migrations.LATEST``)
SCHEMA_VERSION = 8

#: columns that SQLAlchemy's ``UtcDateTime`` stores on SQLite as naive UTC text
_TIME_COLUMNS = frozenset(
    {
        "started_at",
        "ended_at",
        "not_before",
        "expires_at",
        "acquired_at",
        "updated_at",
        "committed_at",
        "lease_expires_at",
        "last_commit_at",
    }
)

#: each pipeline's latest run with its lease and last page commit, in one statement (the
#: StateStore's ``_runs_with_leases``): a run that ends between two reads must not look interrupted
_LAST_RUNS = (
    "SELECT runs.*, leases.holder AS lease_holder, leases.expires_at AS lease_expires_at, "
    "(SELECT max(committed_at) FROM cursors WHERE cursors.pipeline = runs.pipeline) AS last_commit_at "
    "FROM runs JOIN (SELECT max(id) AS id FROM runs GROUP BY pipeline) AS latest ON runs.id = latest.id "
    "LEFT OUTER JOIN leases ON leases.pipeline = runs.pipeline"
)


class CursorView(NamedTuple):
    """A pipeline's cursor as status shows it (the engine's ``Cursor`` without its ordering)."""

    updated_at: datetime
    key: str


def _now_text() -> str:
    """Now, as a SQLite timestamp column holds it (compared as text)."""
    return sqlite_text(utcnow())


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :]
    if not path or path == ":memory:" or "?" in path:
        return None
    return Path(path)


class StatusReader:
    """Read-only answers for ``ferryman status`` from a SQLite state database."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._db.row_factory = sqlite3.Row

    @classmethod
    def open(cls, url: str) -> StatusReader | None:
        """A reader for ``url``, or ``None`` when the full state store must answer instead."""
        path = _sqlite_path(url)
        if path is None or not path.is_file():
            return None
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error:
            return None
        try:
            row = db.execute("SELECT version FROM ferryman_schema").fetchone()
        except sqlite3.Error as exc:  # no schema table yet, or not a state database at all
            outage = StateUnavailable.from_sqlite(exc, where=f"state database {url}", busy_timeout=30)
            if outage is not None and outage.kind == "locked":
                db.close()
                # the StateStore would only wait as long again for the same lock
                raise outage from None
            row = None
        if row is None or row[0] != SCHEMA_VERSION:
            db.close()
            return None
        return cls(db)

    def close(self) -> None:
        self._db.close()

    def _rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        out = []
        for row in self._db.execute(sql, params):
            item = dict(row)
            for name in _TIME_COLUMNS.intersection(item):
                item[name] = from_db_time(item[name])
            out.append(item)
        return out

    # -- what status_rows asks (the StateStore methods of the same names) ----------------
    def last_runs(self) -> dict[str, dict[str, Any]]:
        now = utcnow()
        runs = {}
        for row in self._rows(_LAST_RUNS):
            extra = (row.pop("lease_holder"), row.pop("lease_expires_at"), row.pop("last_commit_at"))
            runs[row["pipeline"]] = run_as_seen(row, *extra, now=now)
        return runs

    def count_dead_letters(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT pipeline, count(*) FROM dead_letters WHERE status = 'open' GROUP BY pipeline"
        ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def count_open_conflicts(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT pipeline, count(*) FROM conflicts WHERE status = 'open' GROUP BY pipeline"
        ).fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def deferrals(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM hosts WHERE not_before > ?", _now_text())

    def get_cursor(self, pipeline: str, side: str = "forward") -> CursorView | None:
        row = self._db.execute(
            "SELECT updated_at, key FROM cursors WHERE pipeline = ? AND side = ?", (pipeline, side)
        ).fetchone()
        if row is None:
            return None
        updated_at = from_db_time(row[0])
        assert updated_at is not None  # NOT NULL column
        return CursorView(updated_at, row[1])

    def lease_holder(self, pipeline: str) -> tuple[str, datetime] | None:
        row = self._db.execute(
            "SELECT holder, expires_at FROM leases WHERE pipeline = ? AND expires_at > ?", (pipeline, _now_text())
        ).fetchone()
        if row is None or holder_is_dead(row[0]):
            return None
        expires_at = from_db_time(row[1])
        assert expires_at is not None
        return (describe_holder(row[0]), expires_at)


# -- the rows: what status --json prints and GET /v1/status serves ----------------------------


def _utc(value: datetime | None) -> str | None:
    return format_utc(value) if value is not None else None


def _every(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def describe_schedule(schedule: ScheduleConfig) -> str:
    """``every 5m`` or ``cron */5 * * * * (Europe/Berlin)``, with its jitter when it has one."""
    text = f"every {_every(schedule.every)}" if schedule.every is not None else f"cron {schedule.cron}"
    if schedule.cron is not None:
        text += f" ({schedule.timezone or 'UTC'})"
    if schedule.jitter:
        text += f", jitter up to {_every(schedule.jitter)}"
    return text


def next_run(pipeline: PipelineConfig, now: datetime) -> datetime | None:
    """When the daemon runs ``pipeline`` next: its schedule's next slot after ``now``, as the
    daemon computes it (jitter may start the run up to ``schedule.jitter`` later). ``None``:
    disabled, not scheduled, or a cron with no time left."""
    if not pipeline.enabled or pipeline.schedule is None:
        return None
    from ferryman.daemon._schedule import next_slot

    return next_slot(pipeline.schedule, now)


def _cursors(store: Any, name: str, two_way: bool) -> list[dict[str, Any]]:
    sides = (("from", "a"), ("to", "b")) if two_way else (("forward", "forward"),)
    found = []
    for label, side in sides:
        cursor = store.get_cursor(name, side) if two_way else store.get_cursor(name)
        if cursor is not None:
            found.append({"side": label, "updated_at": format_utc(cursor.updated_at), "key": cursor.key})
    return found


def status_rows(config: FerrymanConfig, store: Any, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """One row per configured pipeline from ``store`` (a ``StateStore`` or a
    :class:`StatusReader`), ready for JSON: ``null`` where there is nothing, ``Z`` times.

    ``cursor`` keeps its one-string form (``"<updated_at> <key>"``, two-way ``"from ...; to
    ..."``) for readers of the earlier document; ``cursors`` labels each side."""
    from ferryman.redact import redact

    now = now or utcnow()
    runs = store.last_runs()
    dead = store.count_dead_letters()
    overwritten = store.count_open_conflicts()
    deferrals = [
        {"host": d["host"], "not_before": _utc(d["not_before"]), "reason": redact(d.get("reason") or "") or None}
        for d in store.deferrals()
    ]
    endpoints: dict[str, dict[str, Any]] = {}
    if any(system.connector == "webhook" for system in config.systems.values()):
        from ferryman.webhooks import endpoint_status

        endpoints = {row["system"]: row for row in endpoint_status(config, store)}
    rows = []
    for name, pipeline in config.pipelines.items():
        two_way = pipeline.direction == "both"
        cursors = _cursors(store, name, two_way)
        if two_way:
            cursor_text = "; ".join(f"{c['side']} {c['updated_at']} {c['key']}" for c in cursors) or None
        else:
            cursor_text = f"{cursors[0]['updated_at']} {cursors[0]['key']}" if cursors else None
        last = runs.get(name)
        if last:
            started, ended = last.get("started_at"), last.get("ended_at")
            took = (ended - started).total_seconds() if started is not None and ended is not None else None
            last = {k: _utc(v) if isinstance(v, datetime) else v for k, v in last.items()}
            last["duration_seconds"] = round(took, 3) if took is not None else None
            if last.get("message"):
                last["message"] = redact(last["message"])
        holder = store.lease_holder(name)
        upcoming = next_run(pipeline, now)
        rows.append(
            {
                "pipeline": name,
                "from": pipeline.source,
                "to": pipeline.to,
                "direction": pipeline.direction,
                "enabled": pipeline.enabled,
                "schedule": describe_schedule(pipeline.schedule) if pipeline.schedule is not None else None,
                "next_run": _utc(upcoming),
                "last_run": last,
                "cursor": cursor_text,
                "cursors": cursors,
                "withheld_deletes": last.get("withheld", 0) if last else None,
                "dead_letters": dead.get(name, 0),
                "conflicts_open": overwritten.get(name, 0),
                "running_on": holder[0] if holder else None,
                "webhooks": [endpoints[t.split(".", 1)[0]] for t in pipeline.to if t.split(".", 1)[0] in endpoints],
                "deferred": deferrals,
            }
        )
    return rows


# -- the text a person reads -------------------------------------------------------------------

_COUNTS = ("read", "created", "updated", "deleted", "skipped", "dead_lettered")


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def render_status(rows: list[dict[str, Any]], *, now: datetime, style: terminal.Style | None = None) -> list[str]:
    """The lines ``ferryman status`` prints for ``rows`` (from :func:`status_rows`)."""
    from ferryman.redact import redact

    style = style or terminal.Style()
    if not rows:
        return ["no pipelines configured"]
    lines: list[str] = []

    def field(label: str, text: str) -> None:
        # labels 11 wide, as ever: scripts and tests grep "webhook    hooks"
        lines.append(f"  {style.paint(f'{label:<11}', 'dim')}{text}")

    for row in rows:
        if lines:
            lines.append("")
        arrow = "<->" if row.get("direction") == "both" else "->"
        head = f"{style.paint(row['pipeline'], 'bold')}  {row['from']} {arrow} {', '.join(row['to'])}"
        if not row.get("enabled", True):
            head += "  " + style.paint("(disabled)", "yellow")
        lines.append(head)
        last = row.get("last_run")
        if last:
            started = _time(last.get("started_at"))
            text = style.outcome(last["outcome"])
            if started is not None:
                text += f"  {terminal.when(started, now)}"
            if last.get("duration_seconds") is not None:
                text += f", took {terminal.duration(last['duration_seconds'])}"
            if last.get("instance"):
                text += f", on {last['instance']}"
            field("last run", text)
            counts = ", ".join(f"{k.replace('_', '-')} {terminal.number(last.get(k) or 0)}" for k in _COUNTS)
            field("", counts)
            if last.get("message"):
                field("message", redact(last["message"]))
            if last.get("not_before"):
                held = _time(last["not_before"])
                if held is not None and held > now:
                    field("held until", terminal.when(held, now))
        else:
            field("last run", "never")
        if row.get("running_on"):
            field("running on", style.paint(row["running_on"], "cyan"))
        upcoming = _time(row.get("next_run"))
        if upcoming is not None:
            field("next run", f"{terminal.when(upcoming, now)}, {row['schedule']}")
        elif not row.get("enabled", True):
            field("next run", "none: disabled (enabled: false)")
        elif row.get("schedule") is None:
            field("next run", "not scheduled (`ferryman sync` or `ferryman trigger` runs it)")
        else:
            field("next run", f"none: {row['schedule']} has no time left")
        cursors = row.get("cursors") or []
        if not cursors:
            field("cursor", "none yet (the next run reads everything)")
        for cursor in cursors:
            at = _time(cursor["updated_at"])
            side = "" if cursor["side"] == "forward" else f"{cursor['side']} side: "
            stamp = terminal.when(at, now) if at is not None else "?"
            field("cursor", f"{side}updated_at {stamp}, key {cursor['key']}")
        withheld = row.get("withheld_deletes")
        if withheld:
            field(
                "withheld",
                style.paint(f"{terminal.number(withheld)} delete(s) in the last run", "yellow")
                + " (deletes.enabled is off: the target still has them)",
            )
        dead = row.get("dead_letters") or 0
        if dead:
            field(
                "dlq",
                style.paint(f"{terminal.number(dead)} open dead letter(s)", "yellow")
                + f": `ferryman dlq list --pipeline {row['pipeline']}`",
            )
        else:
            field("dlq", "0 open dead letters")
        overwritten = row.get("conflicts_open") or 0
        if overwritten:
            field(
                "journal",
                f"{terminal.number(overwritten)} overwritten value set(s) kept: "
                f"`ferryman conflicts list {row['pipeline']}`",
            )
        for hook in row.get("webhooks") or []:
            hold = f", held back until {hook['not_before']}" if hook.get("not_before") else ""
            why = f": {redact(hook['reason'])}" if hook.get("reason") else ""
            field(
                "webhook",
                f"{hook['system']} {hook['url']} {hook['state']}{why}{hold} "
                f"(pending {terminal.number(hook['pending'])}, delivered {terminal.number(hook['delivered'])}, "
                f"dead {terminal.number(hook['dead'])})",
            )
        for deferral in row.get("deferred") or []:
            until = _time(deferral.get("not_before"))
            stamp = terminal.when(until, now) if until is not None else "?"
            field("deferred", f"{deferral['host']} until {stamp}: {redact(deferral.get('reason') or '')}")
    return lines
