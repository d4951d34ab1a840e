"""The error tree. A class decides what the engine does, never a message string.

::

    FerrymanError
    ├── ConfigError                 bad configuration: exit 78, systemd must not restart-loop
    ├── StateError                  the state store is unusable (schema too new, locked...)
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
