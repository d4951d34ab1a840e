"""The state database connection: the engine with its SQLite pragmas or PostgreSQL
timeouts, the translation of the driver's outage errors, and the worker threads that run
state calls off the event loop (:meth:`ferryman.state.StateStore.call`)."""

from __future__ import annotations

import concurrent.futures
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ferryman.errors import ConfigError, StateError, StateUnavailable
from ferryman.redact import redact
from ferryman.state.sql import READ_OPTION

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "PG_SETTINGS",
    "StatePool",
    "busy_timeout",
    "make_engine",
    "outage_of",
    "session_name",
]

#: how long SQLite waits for another process's lock (``?timeout=SECONDS`` in the URL overrides)
DEFAULT_BUSY_TIMEOUT = 30.0

T = TypeVar("T")


#: the GIL switch interval of a process with a state pool (see StatePool)
SWITCH_INTERVAL = 0.001


class StatePool:
    """Worker threads for state calls made from the event loop (:meth:`StateStore.call`).

    Daemon threads, so that a call stuck on a hung database server never keeps the process
    from exiting (a ``ThreadPoolExecutor`` joins its threads at exit), and apart from the
    loop's default executor, so that stuck state calls never starve anything else."""

    def __init__(self, workers: int, name: str = "state") -> None:
        # A state call gives up the GIL around each statement step and must take it back
        # after, while the event loop (mapping the next page) holds it: by default it waits
        # the loop's full switch interval (5 ms) every time. A millisecond is plenty for the
        # loop and keeps a page's commit from queueing a dozen such waits.
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((future, job))
        return future

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            future, job = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the awaiting coroutine
                future.set_exception(exc)


def outage_of(
    context: sa.engine.ExceptionContext, dialect: str, *, where: str, busy_timeout: float
) -> StateUnavailable | None:
    original = context.original_exception
    if dialect == "sqlite":
        return StateUnavailable.from_sqlite(original, where=where, busy_timeout=busy_timeout)
    if context.is_disconnect or isinstance(
        context.sqlalchemy_exception, sa.exc.OperationalError | sa.exc.InterfaceError
    ):
        # psycopg's OperationalError family: refused, timed out, gone away, shutting down,
        # out of disk, lock or statement timeout; a bug in our SQL is a ProgrammingError
        lines = [line.strip() for line in str(original).splitlines() if line.strip()]
        detail = redact(lines[0] if lines else type(original).__name__)
        if context.connection is None or context.is_disconnect:
            return StateUnavailable(f"unreachable ({detail})", where=where, kind="unreachable")
        return StateUnavailable(f"not usable right now ({detail})", where=where)
    return None


def busy_timeout(url: str) -> float:
    if not url.startswith("sqlite"):
        return DEFAULT_BUSY_TIMEOUT
    value = sa.engine.make_url(url).query.get("timeout")
    if value is None:
        return DEFAULT_BUSY_TIMEOUT
    try:
        seconds = float(value if isinstance(value, str) else value[0])
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigError(f"timeout={value!r} in the SQLite URL is not a number of seconds", path="state.url")
    return seconds


#: Timeouts on every PostgreSQL session, so that no state call waits forever: a server that
#: stops answering, a lock held by a stalled peer, a peer stalled inside a transaction. Each
#: can be overridden in the URL (``?connect_timeout=5``, ``?options=-c lock_timeout=2s``).
PG_CONNECT_TIMEOUT = 10  # seconds
PG_SETTINGS = {
    # a statement (a page commit, a claim) that runs this long is stuck, not busy
    "statement_timeout": "120s",
    # waiting for a lock: a claim or a commit waits this long for another instance's transaction
    "lock_timeout": "15s",
    # a process stopped (SIGSTOP, a suspended VM) inside a transaction holds its locks until
    # this ends the session: every state transaction is a few statements with no wait between
    # them, and a lease is fenced by generation, so the stalled process loses nothing by it
    "idle_in_transaction_session_timeout": "5s",
}
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


def _postgres_timeouts(url: str) -> dict[str, Any]:
    """libpq connect arguments with the timeouts above, except where the URL sets its own."""
    query = sa.engine.make_url(url).query
    args: dict[str, Any] = {k: v for k, v in PG_KEEPALIVES.items() if k not in query}
    if "connect_timeout" not in query:
        args["connect_timeout"] = PG_CONNECT_TIMEOUT
    given = " ".join(query["options"] if isinstance(query.get("options"), tuple) else [str(query.get("options", ""))])
    settings = [f"-c {name}={value}" for name, value in PG_SETTINGS.items() if name not in given]
    if settings:
        args["options"] = " ".join(filter(None, [given, *settings]))
    return args


def session_name(holder: str) -> str:
    """The PostgreSQL ``application_name`` of a lease holder's sessions: another instance
    that takes over an expired lease can then end the sessions a stalled holder left inside
    a transaction (they hold the lease row's lock until they end)."""
    import hashlib

    return "ferryman " + hashlib.sha256(holder.encode()).hexdigest()[:16]


def make_engine(url: str, busy_timeout: float = DEFAULT_BUSY_TIMEOUT, *, application_name: str = "ferryman") -> Engine:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database or ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": busy_timeout})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy issue BEGIN itself (pysqlite's implicit BEGIN is deferred and
            # breaks lease atomicity); WAL so the CLI can read while the daemon writes.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # A writer takes the write lock when it begins (a deferred BEGIN that writes
            # later can fail with SQLITE_BUSY at once, past busy_timeout); a reader
            # (ferryman.state.sql.reading) begins deferred and never takes it: in WAL mode it
            # reads its snapshot beside the writer instead of queueing behind it.
            read = conn.get_execution_options().get(READ_OPTION, False)
            conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql"):
        try:
            return sa.create_engine(
                url,
                pool_pre_ping=True,
                pool_size=5,
                max_overflow=5,
                connect_args={"application_name": application_name, **_postgres_timeouts(url)},
            )
        except ModuleNotFoundError:
            raise StateError("PostgreSQL state needs psycopg: pip install 'ferryman[postgres]'") from None
    raise StateError(f"unsupported state URL {redact(url)!r}: use sqlite:///PATH or postgresql://...")
