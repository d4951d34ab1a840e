"""The error tree. A class decides what the engine does, never a message string.

::

    FerrymanError
    ├── ConfigError                 bad configuration: exit 78, systemd must not restart-loop
    ├── StateError                  the state store is unusable as it is (schema too new...)
    │   ├── StateUnavailable        an outage: corrupt, locked, full or unreachable: exit 75
    │   └── LeaseLost               another instance holds the pipeline now: nothing of ours commits
    └── ConnectorError              raised by connectors and the HTTP layer
        ├── FatalError              stop the run, cursor untouched (bad credentials, misconfig)
        │   ├── AuthError           401/403
        │   ├── NotSupportedError   the app does not support this operation (e.g. Clevertim 501)
        │   ├── OrderViolation      a source promised (updated_at, key) order and broke it: the
        │   │                       run fails with the cursor held where it began
        │   └── PagingError         paging does not progress (a page repeats, the page cap is hit)
        ├── RetriableError          transient: retried with backoff (5xx, connection, short 429)
        │   └── MalformedResponseError  a body that does not parse
        ├── DeferredError           the app asked us to wait longer than we are willing to:
        │                           the run ends *deferred* and no run starts before ``not_before``
        └── RecordRejected          this one record was refused (4xx): dead-lettered, the run goes on
            └── ValidationFailed    it did not map to a valid canonical record
"""

from __future__ import annotations

from datetime import datetime

#: every class of the tree above: connectors raise them, and the engine decides by class
__all__ = [
    "AuthError",
    "ConfigError",
    "ConnectorError",
    "DeferredError",
    "FatalError",
    "FerrymanError",
    "LeaseLost",
    "MalformedResponseError",
    "NotSupportedError",
    "OrderViolation",
    "PagingError",
    "RecordRejected",
    "RetriableError",
    "StateError",
    "StateUnavailable",
    "ValidationFailed",
]


class FerrymanError(Exception):
    """Base of every error Ferryman raises on purpose."""


class ConfigError(FerrymanError):
    """Invalid configuration. ``str()`` names the file, the key path and the problem."""

    exit_code = 78  # EX_CONFIG: systemd's RestartPreventExitStatus=78 stops a restart loop

    def __init__(self, message: str, *, file: str | None = None, path: str | None = None) -> None:
        self.file = file
        self.path = path
        self.problem = message
        where = ": ".join(p for p in (file, path) if p)
        super().__init__(f"{where}: {message}" if where else message)


class StateError(FerrymanError):
    """The state store cannot be used as it is."""


class StateUnavailable(StateError):
    """The state database cannot be used right now: corrupt, locked by another process
    past the busy timeout, out of disk, or its server unreachable. An outage for an
    operator to see to, not a bug: ``str()`` is one line naming what and where (the URL
    with its password hidden)."""

    exit_code = 75  # EX_TEMPFAIL: "try again later", not "a bug" (70)

    def __init__(self, problem: str, *, where: str, kind: str = "unavailable") -> None:
        self.problem = problem
        self.where = where
        #: what kind of outage: locked, corrupt, full, io, unreachable, unavailable
        self.kind = kind
        super().__init__(f"{where}: {problem}")

    @classmethod
    def from_sqlite(cls, exc: BaseException, *, where: str, busy_timeout: float) -> StateUnavailable | None:
        """The outage an SQLite error stands for, or ``None`` when it is not one (a bug in
        our SQL, a constraint): decided by SQLite's result code, never by the message."""
        code = getattr(exc, "sqlite_errorcode", None)
        if not isinstance(code, int):
            return None
        # the primary result code: extended codes carry detail in the high bits
        known = _SQLITE_OUTAGES.get(code & 0xFF)
        if known is None:
            return None
        kind, problem = known
        detail = " ".join(str(exc).split())
        return cls(problem.format(detail=detail, timeout=busy_timeout), where=where, kind=kind)


_LOCKED = "locked by another process for longer than the busy timeout ({timeout:g}s): {detail}"
_SQLITE_OUTAGES = {
    5: ("locked", _LOCKED),  # SQLITE_BUSY
    6: ("locked", _LOCKED),  # SQLITE_LOCKED
    7: ("unavailable", "out of memory: {detail}"),  # SQLITE_NOMEM
    8: ("unavailable", "read-only: {detail}"),  # SQLITE_READONLY
    10: ("io", "disk I/O error: {detail}"),  # SQLITE_IOERR
    11: ("corrupt", "corrupt ({detail}): restore it from a backup, or move it aside to start afresh"),
    13: ("full", "the disk is full ({detail}): free space where it lives"),  # SQLITE_FULL
    14: ("unavailable", "cannot be opened: {detail}"),  # SQLITE_CANTOPEN
    15: ("locked", "locked by another process (locking protocol): {detail}"),  # SQLITE_PROTOCOL
    26: ("corrupt", "corrupt, or not a state database ({detail}): restore it from a backup, or move it aside"),
}


class LeaseLost(StateError):
    """The pipeline's lease passed to another holder (this one stalled past its TTL): what
    this run has in hand must not be committed beside the new holder's work."""


class ConnectorError(FerrymanError):
    """An error that came from talking to a system."""

    def __init__(self, message: str, *, system: str | None = None, status: int | None = None) -> None:
        self.system = system
        self.status = status
        super().__init__(f"{system}: {message}" if system else message)


class FatalError(ConnectorError):
    """Stop the run now; the cursor stays where it was. Needs a human."""


class AuthError(FatalError):
    """The system refused our credentials (401/403)."""


class NotSupportedError(FatalError):
    """The system does not support the operation; retrying cannot help."""


class OrderViolation(FatalError):
    """A source that promised ``(updated_at, key)`` order answered out of order.

    A keyset read over such an answer skips records and a cursor moved past them loses them
    for good, so the run stops as failed with the cursor held where the run began.
    """

    def __init__(
        self, message: str, *, system: str | None = None, before: str = "", after: str = "", where: str = ""
    ) -> None:
        super().__init__(message, system=system)
        self.before = before
        self.after = after
        self.where = where


class PagingError(FatalError):
    """Paging does not progress: a page repeats the one before it (the server ignores the
    paging parameters), or a read passed its page cap. Retrying the same request cannot help."""


class RetriableError(ConnectorError):
    """A transient failure; the request may be retried (idempotent requests only)."""

    def __init__(
        self,
        message: str,
        *,
        system: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, system=system, status=status)
        self.retry_after = retry_after
        #: the request certainly did not reach the app (the connection never opened, or a
        #: 429/503 refused it): a create that failed so did not happen
        self.unprocessed = False


class MalformedResponseError(RetriableError):
    """The response body could not be parsed as what the API promises."""


class DeferredError(ConnectorError):
    """The system asked us to come back later than the deferral threshold."""

    def __init__(
        self, message: str, *, not_before: datetime, system: str | None = None, host: str | None = None
    ) -> None:
        super().__init__(message, system=system)
        self.not_before = not_before
        self.host = host


class RecordRejected(ConnectorError):
    """One record was refused; it goes to the dead-letter table and the run goes on."""

    def __init__(
        self, message: str, *, system: str | None = None, status: int | None = None, ref: str | None = None
    ) -> None:
        super().__init__(message, system=system, status=status)
        self.ref = ref


class ValidationFailed(RecordRejected):
    """A native row or entity did not make a valid canonical record."""
