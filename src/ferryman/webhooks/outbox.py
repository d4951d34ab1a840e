"""Outbound webhooks: the outbox, delivery with retries, dead letters and replay.

The ``webhook`` sink never POSTs from inside a run. Its ``create``/``update``/``delete``
turn a record change into an *event* (a ``webhook-id``, a type like ``ticket.updated``
and the exact JSON body) and stage it in the state store (:mod:`ferryman.state.outbox`);
the engine's commit of the page (:meth:`ferryman.state.StateStore.commit_page`) writes
the page's events into the ``webhook_outbox`` table in the SAME transaction as the page's
cursor and links. An event row exists exactly when its page is committed: a crash before
the commit leaves neither, and the page is read and written again. A delivery pass
(:class:`OutboxWorker` in the daemon, or the sink's ``finish`` at the end of ``ferryman
sync``) then sends what is due, one endpoint at a time under a lease, and records each
outcome in the same table.

Why an event id is derived, not minted
--------------------------------------
A page is processed again whenever its commit did not happen (a crash, a lost lease),
and an event can be sent and its outcome not recorded (a crash mid-delivery). If ids were
random, a page written twice would mint a second event for the same change, and the
receiver (which de-duplicates by ``webhook-id``) would apply it twice. So the id is a
digest of *what happened*::

    event_id = "msg_" + base32(blake2b(system, stream, record key, record version, op))

where the record version is a digest of the complete canonical record as written
(``updated_at`` included, so a record that changes A → B → A gets three distinct ids),
and the insert is *insert-if-absent* on ``event_id``. Writing a change again (a page
re-read, a dead letter replayed) therefore re-derives the same id and inserts nothing
new; a real new change gets a new id. A
delete has no record to digest (the engine passes only the key), so its version is the
id of the key's previous event, and a delete following a delete is a no-op. The body is
built once, at the first insert, and every attempt (and every replay) sends exactly
those bytes with the same ``webhook-id``; only ``webhook-timestamp`` and the signature
change per attempt, as Standard Webhooks requires.

Delivery rules
--------------
- Only 2xx is success. Redirects are not followed and count as failures.
- 410 Gone disables the endpoint: nothing more is sent to that URL, the event that met
  the 410 is dead-lettered (replaying it re-enables the endpoint when it is accepted),
  later events wait in the outbox, and sink writes fail the run with the reason.
- 429, 502, 503 and 504 hold the whole endpoint back, never sooner than ``Retry-After``.
- Any other failure (a status, a timeout, a refused connection) retries the event on
  ``retry_schedule`` with jitter; after the last attempt it is dead-lettered
  (``kind="webhook"``) and :func:`replay_dead_letters` can resend it with the same id.

Delivery is at least once: an event sent whose outcome was not yet recorded when the
process died is sent again, with the same ``webhook-id``.

Why not :class:`ferryman.http.HttpClient`
-----------------------------------------
The API client retries in-process, sleeps out ``Retry-After`` inside a request, keeps
deferrals in memory, treats a 3xx as an answer and maps 410 to a rejected record. Here
the outbox owns every retry (durably, across restarts), each status means something
specific (410 disables, 3xx fails, 429/502/503/504 hold the endpoint back in the state
store), and a webhook URL is one endpoint rather than an API base. So a plain
:class:`httpx.AsyncClient` is used with the same rules: redirects never followed, plain
``http://`` only to loopback unless ``allow_insecure_http`` (checked in the options),
every URL passed through :func:`~ferryman.redact.redact_url` before it reaches a message
or a log (importing :mod:`ferryman.http` installs its httpx log filter), the secret
registered for redaction, and no header ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
import structlog

from ferryman import __version__
from ferryman.config import DEFAULT_LEASE_TTL, FerrymanConfig
from ferryman.http import HttpRegistry, parse_retry_after
from ferryman.records import Record
from ferryman.redact import redact, redact_cut, redact_url
from ferryman.state import NewDeadLetter, StateStore
from ferryman.state.models import WebhookEndpointRow
from ferryman.state.outbox import T_OUTBOX, OutboxEvent
from ferryman.timeutil import format_utc, utcnow
from ferryman.webhooks.inbox import printable
from ferryman.webhooks.options import WebhookOptions
from ferryman.webhooks.signing import WebhookSecret, signature_header

__all__ = [
    "OutboxEvent",
    "OutboxWorker",
    "build_event",
    "deliver_endpoint",
    "endpoint_state",
    "endpoint_status",
    "event_id",
    "has_outbound",
    "insert_events",
    "latest_event",
    "replay_dead_letters",
]

log = structlog.get_logger("ferryman.webhooks")

T_ENDPOINTS = WebhookEndpointRow.__table__  # type: ignore[attr-defined]

_BATCH = 50  # outcomes recorded per state transaction
_THROTTLE = frozenset({429, 502, 503, 504})
_PRUNE_EVERY = 600.0

# Endpoints a pass of this process is delivering right now. The lease keeps other
# processes out; this keeps a second pass of the same process (the daemon's worker and a
# run's finish) from sending the same events side by side, as a lease renews for its holder.
_busy: set[str] = set()
_last_prune: dict[str, float] = {}


# -- events ------------------------------------------------------------------------------


def event_id(system: str, stream: str, key: str, version: str, op: str) -> str:
    """The ``webhook-id`` of a change: the same change always gets the same id."""
    blob = "\x1f".join((system, stream, key, version, op)).encode()
    digest = hashlib.blake2b(blob, digest_size=16).digest()
    return "msg_" + base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def record_version(record: Record) -> str:
    """A digest of the whole canonical record, ``updated_at`` and ``extra`` included."""
    blob = orjson.dumps(record.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def build_event(
    system: str,
    stream: str,
    record: Record,
    op: str,
    *,
    version: str | None = None,
    now: datetime | None = None,
    delay: timedelta = timedelta(0),
) -> OutboxEvent:
    """The event for ``op`` (created, updated, deleted) of ``record``, its first attempt
    due ``delay`` after it is stored (``retry_schedule[0]``).

    The body is ``{"type": "<kind>.<op>", "timestamp": "<UTC Z>", "data": <record>}``.
    """
    kind = f"{record.kind}.{op}"
    body = orjson.dumps(
        {"type": kind, "timestamp": format_utc(now or utcnow()), "data": record.model_dump(mode="json")},
        default=str,
    ).decode()
    ident = event_id(system, stream, record.key, version if version is not None else record_version(record), op)
    return OutboxEvent(ident, system, stream, record.key, kind, body, delay)


def insert_events(store: StateStore, events: Sequence[OutboxEvent], schedule: Sequence[timedelta]) -> None:
    """Insert-if-absent on ``event_id``, in a transaction of their own, the first attempt
    due ``schedule[0]`` from now: for events that belong to no page (a dead letter
    replayed). A sink's events go through the page commit instead (see the module doc)."""
    first = schedule[0] if schedule else timedelta(0)
    store.outbox.insert([replace(e, delay=first) for e in events])


def latest_event(store: StateStore, system: str, stream: str, key: str) -> tuple[str, str] | None:
    """``(event_id, type)`` of the newest stored event for one record, if any."""
    return store.outbox.latest(system, stream, key)


# -- endpoints ------------------------------------------------------------------------------


@dataclass(slots=True)
class EndpointState:
    state: str  # active | disabled
    not_before: datetime | None
    reason: str | None
    changed_at: datetime | None


def endpoint_state(store: StateStore, system: str, url_hash: str) -> EndpointState:
    """The endpoint's health; a changed URL is a new, active endpoint."""
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(T_ENDPOINTS).where(T_ENDPOINTS.c.system == system)).mappings().first()
    if row is None or row["url_hash"] != url_hash:
        return EndpointState("active", None, None, None)
    return EndpointState(row["state"], row["not_before"], row["reason"], row["changed_at"])


def _set_endpoint(conn: sa.Connection, system: str, url_hash: str, **values: Any) -> None:
    values = {"url_hash": url_hash, "changed_at": utcnow(), **values}
    where = T_ENDPOINTS.c.system == system
    existing = conn.execute(sa.select(T_ENDPOINTS.c.url_hash).where(where)).first()
    if existing is None:
        conn.execute(
            sa.insert(T_ENDPOINTS).values(
                system=system, **{"state": "active", "not_before": None, "reason": None, **values}
            )
        )
    elif existing[0] != url_hash:
        conn.execute(sa.update(T_ENDPOINTS).where(where).values(**{"state": "active", "not_before": None, **values}))
    else:
        conn.execute(sa.update(T_ENDPOINTS).where(where).values(**values))


def enable_endpoint(store: StateStore, system: str, options: WebhookOptions) -> None:
    """Send to a disabled endpoint again (after its receiver is back)."""
    with store.transaction() as conn:
        _set_endpoint(conn, system, options.url_hash(), state="active", not_before=None, reason=None)


# -- one attempt -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Result:
    kind: str  # ok | failed | gone | throttled
    status: int | None
    message: str
    retry_after: float | None = None


async def _post(
    client: httpx.AsyncClient, options: WebhookOptions, secrets: Sequence[WebhookSecret], event_id_: str, body: str
) -> _Result:
    """One signed POST of the stored body; the outcome, never an exception."""
    assert options.url is not None
    data = body.encode()
    stamp = int(utcnow().timestamp())
    headers = {
        "content-type": "application/json",
        "webhook-id": event_id_,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature_header(secrets, event_id_, stamp, data),
    }
    url = redact_url(options.url)
    seconds = options.timeout.total_seconds()
    try:
        async with asyncio.timeout(seconds):  # the whole attempt, however slowly the bytes drip
            async with client.stream("POST", options.url, content=data, headers=headers) as response:
                text = await _excerpt(response)
    except (httpx.TimeoutException, TimeoutError) as exc:
        return _Result("failed", None, f"timed out after {seconds:g}s ({type(exc).__name__})")
    except httpx.HTTPError as exc:
        detail = redact(str(exc).replace(options.url, url)) or "no detail"
        return _Result("failed", None, f"{type(exc).__name__}: {detail}")
    status = response.status_code
    if 200 <= status < 300:
        return _Result("ok", status, f"HTTP {status}")
    if 300 <= status < 400:
        where = response.headers.get("location")
        return _Result(
            "failed",
            status,
            f"HTTP {status} redirect{' to ' + redact_url(where) if where else ''} not followed "
            "(webhooks are not redirected: set url to the final address)",
        )
    if status == 410:
        return _Result("gone", status, f"HTTP 410 Gone from {url}")
    if status in _THROTTLE:
        value = response.headers.get("retry-after")
        wait = parse_retry_after(value, utcnow()) if value else None
        said = f" (Retry-After {wait:g}s)" if wait is not None else ""
        return _Result("throttled", status, f"HTTP {status}{said}: {text}".rstrip(": "), wait)
    return _Result("failed", status, f"HTTP {status}: {text}".rstrip(": "))


async def _excerpt(response: httpx.Response, limit: int = 300) -> str:
    """The start of a response body, for a reason string; the rest is not read."""
    chunks = bytearray()
    async for chunk in response.aiter_bytes():
        chunks.extend(chunk)
        if len(chunks) >= limit * 4:
            break
    text = bytes(chunks[: limit * 4]).decode("utf-8", errors="replace")
    # A receiver's bytes end up in last_error and dead-letter reasons: terminals must not run
    # its escape sequences, and PostgreSQL refuses NUL (the outcome could not be recorded).
    # Redact before cutting: a secret cut first would survive in part.
    return redact_cut(printable(" ".join(text.split())), limit)


def _client(options: WebhookOptions) -> httpx.AsyncClient:
    seconds = options.timeout.total_seconds()
    return httpx.AsyncClient(
        timeout=httpx.Timeout(seconds),
        follow_redirects=False,
        headers={"user-agent": f"ferryman/{__version__}"},
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=30),
    )


def jittered(delay: timedelta, jitter: float, rng: random.Random) -> timedelta:
    """``delay`` moved by up to ``jitter`` of itself either way (never negative)."""
    if not jitter or not delay:
        return delay
    return max(delay * (1 + rng.uniform(-jitter, jitter)), timedelta(0))


# -- routing dead letters to pipelines ---------------------------------------------------------


def _route(config: FerrymanConfig | None, system: str, stream: str) -> tuple[str, str]:
    """(pipeline, source) of the pipeline writing ``system.stream`` (one writer per target)."""
    target = f"{system}.{stream}"
    if config is not None:
        for name, pipeline in config.pipelines.items():
            if target in pipeline.to:
                return name, pipeline.source
    return f"webhook:{system}", "-"


def _letter(config: FerrymanConfig | None, row: dict[str, Any], reason: str) -> tuple[str, NewDeadLetter]:
    pipeline, source = _route(config, row["system"], row["stream"])
    payload = {
        "event_id": row["event_id"],
        "system": row["system"],
        "stream": row["stream"],
        "type": row["type"],
        "record_key": row["record_key"],
        "body": row["body"],
    }
    letter = NewDeadLetter(
        source,
        f"{row['system']}.{row['stream']}",
        row["event_id"],
        f"{row['type']} {row['record_key']}: {reason}",
        src_key=row["record_key"],
        kind="webhook",
        payload=payload,
    )
    return pipeline, letter


# -- a delivery pass ---------------------------------------------------------------------------


class _Endpoint:
    """One outbound system: its options, keys and the rules to apply outcomes."""

    def __init__(
        self,
        name: str,
        options: WebhookOptions,
        store: StateStore,
        *,
        config: FerrymanConfig | None,
        registry: HttpRegistry | None,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.options = options
        self.store = store
        self.config = config
        self.registry = registry
        self.rng = rng
        self.secrets = options.secrets()
        self.lease = f"webhook:{name}"
        # An endpoint's deliveries are leased like a pipeline's runs: one instance at a time,
        # taken over by another state.lease_ttl after its holder died.
        self.lease_ttl = config.state.lease_ttl if config is not None else DEFAULT_LEASE_TTL

    @property
    def schedule(self) -> list[timedelta]:
        return list(self.options.retry_schedule)

    def state(self) -> EndpointState:
        return endpoint_state(self.store, self.name, self.options.url_hash())

    def next_due(self) -> datetime | None:
        """When the next pending event is due (the endpoint's hold-back included)."""
        state = self.state()
        if state.state == "disabled":
            return None
        with self.store.engine.connect() as conn:
            due = conn.execute(
                sa.select(sa.func.min(T_OUTBOX.c.next_attempt_at)).where(
                    T_OUTBOX.c.system == self.name, T_OUTBOX.c.state == "pending"
                )
            ).scalar()
        if due is None:
            return None
        if state.not_before is not None and state.not_before > due:
            return state.not_before
        return due

    async def deliver(
        self,
        *,
        limit: int | None = None,
        deadline: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> int:
        """Send the events due now (at most ``limit``, until ``deadline`` on the monotonic
        clock or ``stop``); returns how many attempts were made."""
        if self.name in _busy:
            return 0
        # Marked busy before the first await: the state calls below yield to the loop, and a
        # second pass of this process must not slip in between the check and the lease.
        _busy.add(self.name)
        try:
            state = await self.store.call(self.state)
            now = utcnow()
            if state.state == "disabled" or (state.not_before is not None and state.not_before > now):
                return 0
            if not await self.store.call(self.store.acquire_lease, self.lease, self.lease_ttl):
                return 0
            try:
                await self.store.call(self._maybe_prune)
                return await self._deliver(limit, deadline, stop)
            finally:
                await self.store.call(self.store.release_lease, self.lease)
        finally:
            # Only once the lease is released: a pass starting earlier would renew it (same
            # holder), and this release would then take it from under that pass.
            _busy.discard(self.name)

    def _due(self, limit: int | None) -> list[int]:
        """The ``seq`` of the pending events due now, oldest first."""
        with self.store.engine.connect() as conn:
            query = (
                sa.select(T_OUTBOX.c.seq)
                .where(
                    T_OUTBOX.c.system == self.name,
                    T_OUTBOX.c.state == "pending",
                    T_OUTBOX.c.next_attempt_at <= utcnow(),
                )
                .order_by(T_OUTBOX.c.seq)
            )
            if limit is not None:
                query = query.limit(limit)
            return [r[0] for r in conn.execute(query)]

    def _pending_rows(self, seqs: Sequence[int]) -> list[dict[str, Any]]:
        """The outbox rows of ``seqs`` still pending, in ``seq`` order."""
        with self.store.engine.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(
                    sa.select(T_OUTBOX)
                    .where(T_OUTBOX.c.seq.in_(seqs), T_OUTBOX.c.state == "pending")
                    .order_by(T_OUTBOX.c.seq)
                ).mappings()
            ]

    async def _deliver(self, limit: int | None, deadline: float | None, stop: asyncio.Event | None) -> int:
        due = await self.store.call(self._due, limit)
        if not due:
            return 0
        attempts = 0
        renewed = time.monotonic()
        async with _client(self.options) as client:
            for start in range(0, len(due), _BATCH):
                rows = await self.store.call(self._pending_rows, due[start : start + _BATCH])
                outcomes: list[tuple[dict[str, Any], _Result, datetime]] = []
                halt = False
                try:
                    for row in rows:
                        if (deadline is not None and time.monotonic() >= deadline) or (
                            stop is not None and stop.is_set()
                        ):
                            halt = True
                            break
                        if time.monotonic() - renewed > self.lease_ttl.total_seconds() / 3:  # slow receivers
                            if not await self.store.call(self.store.acquire_lease, self.lease, self.lease_ttl):
                                log.warning(
                                    "webhook.lease_lost",
                                    system=self.name,
                                    detail="another instance took this endpoint's deliveries over (this one "
                                    "stalled past state.lease_ttl); stopping this pass",
                                )
                                halt = True
                                break
                            renewed = time.monotonic()
                        at = utcnow()
                        result = await _post(client, self.options, self.secrets, row["event_id"], row["body"])
                        attempts += 1
                        if self.registry is not None:
                            self.registry.metrics.count_response(self.name, result.status or "error")
                        outcomes.append((row, result, at))
                        if result.kind in ("gone", "throttled"):
                            halt = True
                            break
                finally:  # cancelled mid-batch too: what was sent is recorded
                    # shielded: a second cancel while it waits must not drop the outcomes
                    await asyncio.shield(self.store.call(self.apply, outcomes))
                if halt:
                    break
        return attempts

    def apply(self, outcomes: Iterable[tuple[dict[str, Any], _Result, datetime]]) -> None:
        """Record outcomes: dead letters first (merged by event id if repeated), then the
        outbox rows and the endpoint, in one transaction."""
        schedule = self.schedule
        updates: list[tuple[int, dict[str, Any]]] = []
        letters: dict[str, list[NewDeadLetter]] = {}
        endpoint: dict[str, Any] | None = None
        for row, result, at in outcomes:
            tries = int(row["attempts"]) + 1
            values: dict[str, Any] = {"attempts": tries, "last_attempt_at": at}
            if result.kind == "ok":
                values.update(state="delivered", delivered_at=utcnow(), last_error=None)
                log.debug("webhook.delivered", system=self.name, event_id=row["event_id"], attempt=tries)
            elif result.kind == "gone":
                reason = (
                    f"{result.message}: the receiver says this endpoint is gone, so Ferryman stopped sending to "
                    f"{self.name} (later events wait in the outbox); when the receiver is back, replay this dead "
                    "letter: if it is accepted the endpoint is enabled again"
                )
                values.update(state="dead", last_error=result.message)
                pipeline, letter = _letter(self.config, row, reason)
                letters.setdefault(pipeline, []).append(letter)
                endpoint = {"state": "disabled", "reason": result.message}
                log.error(
                    "webhook.endpoint_disabled",
                    system=self.name,
                    url=redact_url(self.options.url or ""),
                    status=410,
                    event_id=row["event_id"],
                )
            else:
                delay = jittered(schedule[tries], self.options.jitter, self.rng) if tries < len(schedule) else None
                if result.kind == "throttled":
                    hold = timedelta(seconds=result.retry_after) if result.retry_after is not None else delay
                    if hold is not None:
                        endpoint = {"not_before": at + hold, "reason": result.message}
                    if delay is not None and result.retry_after is not None:
                        delay = max(delay, timedelta(seconds=result.retry_after))  # never earlier than asked
                values["last_error"] = result.message
                if delay is None:
                    values["state"] = "dead"
                    reason = f"gave up after {tries} attempt{'s' if tries > 1 else ''}; last: {result.message}"
                    pipeline, letter = _letter(self.config, row, reason)
                    letters.setdefault(pipeline, []).append(letter)
                    log.warning(
                        "webhook.dead_lettered", system=self.name, event_id=row["event_id"], reason=result.message
                    )
                else:
                    values["next_attempt_at"] = at + delay
                    log.info(
                        "webhook.retry",
                        system=self.name,
                        event_id=row["event_id"],
                        attempt=tries,
                        wait=round(delay.total_seconds(), 3),
                        reason=result.message,
                    )
            updates.append((int(row["seq"]), values))
        for pipeline, group in letters.items():
            self.store.add_dead_letters(pipeline, group)
        if not updates and endpoint is None:
            return
        with self.store.transaction() as conn:
            for seq, values in updates:
                conn.execute(sa.update(T_OUTBOX).where(T_OUTBOX.c.seq == seq).values(**values))
            if endpoint is not None:
                _set_endpoint(conn, self.name, self.options.url_hash(), **endpoint)

    def _maybe_prune(self) -> None:
        last = _last_prune.get(self.name)
        if last is not None and time.monotonic() - last < _PRUNE_EVERY:
            return
        _last_prune[self.name] = time.monotonic()
        cutoff = utcnow() - self.options.retention
        with self.store.transaction() as conn:
            conn.execute(
                sa.delete(T_OUTBOX).where(
                    T_OUTBOX.c.system == self.name,
                    T_OUTBOX.c.state.in_(("delivered", "dead")),
                    T_OUTBOX.c.last_attempt_at < cutoff,
                )
            )


async def deliver_endpoint(
    name: str,
    options: WebhookOptions,
    store: StateStore,
    *,
    config: FerrymanConfig | None = None,
    registry: HttpRegistry | None = None,
    timeout: float | None = None,
    limit: int | None = None,
) -> int:
    """One delivery pass for one endpoint, for at most ``timeout`` seconds (the sink's
    ``finish``); returns the attempts made. ``config`` names the pipeline of dead letters."""
    endpoint = _Endpoint(name, options, store, config=config, registry=registry, rng=random.Random())
    deadline = time.monotonic() + timeout if timeout is not None else None
    return await endpoint.deliver(limit=limit, deadline=deadline)


def outbound_systems(config: FerrymanConfig) -> dict[str, WebhookOptions]:
    """Every configured outbound webhook endpoint, by system name."""
    found: dict[str, WebhookOptions] = {}
    for name, system in config.systems.items():
        if system.connector != "webhook":
            continue
        options = config.system_options(name)
        if isinstance(options, WebhookOptions) and options.url is not None:
            found[name] = options
    return found


def has_outbound(config: FerrymanConfig) -> bool:
    """True when some system sends webhooks (the daemon then runs :meth:`OutboxWorker.serve`)."""
    return bool(outbound_systems(config))


class OutboxWorker:
    """Delivers due outbox events of every outbound webhook system.

    The daemon runs :meth:`serve` in the background; :meth:`deliver_due` is one pass.
    Several workers (processes, instances on one PostgreSQL) may run: a lease per
    endpoint lets one of them send at a time.
    """

    def __init__(
        self,
        config: FerrymanConfig,
        store: StateStore,
        registry: HttpRegistry | None = None,
        *,
        poll_interval: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.registry = registry
        self.poll_interval = poll_interval
        rng = rng or random.Random()
        self.endpoints = [
            _Endpoint(name, options, store, config=config, registry=registry, rng=rng)
            for name, options in outbound_systems(config).items()
        ]

    async def deliver_due(self, *, limit: int | None = None, stop: asyncio.Event | None = None) -> int:
        """One pass over every endpoint: send what is due now; returns the attempts made."""
        total = 0
        for endpoint in self.endpoints:
            left = None if limit is None else limit - total
            if left is not None and left <= 0:
                break
            try:
                total += await endpoint.deliver(limit=left, stop=stop)
            except Exception as exc:  # one endpoint's trouble (state store hiccup) must not stop the others
                log.error("webhook.pass_failed", system=endpoint.name, error=redact(f"{type(exc).__name__}: {exc}"))
        return total

    async def serve(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; the event in flight finishes and is recorded."""
        names = [e.name for e in self.endpoints]
        log.info("webhook.worker_started", systems=names)
        while not stop.is_set():
            sent = await self.deliver_due(stop=stop)
            if sent:
                continue
            wait = self.poll_interval
            for endpoint in self.endpoints:
                try:
                    due = await self.store.call(endpoint.next_due)
                except Exception:
                    due = None
                if due is not None:
                    wait = min(wait, max((due - utcnow()).total_seconds(), 0.01))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
        log.info("webhook.worker_stopped", systems=names)


# -- replay ---------------------------------------------------------------------------------


async def replay_dead_letters(
    config: FerrymanConfig, store: StateStore, ids: Sequence[int]
) -> list[tuple[int, str, str]]:
    """Resend dead-lettered webhook events now, each with its original ``webhook-id`` and
    body; returns ``(id, outcome, message)`` with outcome ``delivered``, ``failed``,
    ``deferred``, ``busy`` or ``skipped``.

    A letter whose event is accepted is resolved; one that fails again stays open with
    the new reason. Accepted by an endpoint that was disabled (410), it enables it again.
    """
    out: list[tuple[int, str, str]] = []
    systems = outbound_systems(config)
    rng = random.Random()
    for letter in await store.call(store.dead_letters, status="open", ids=list(ids)):
        payload = letter.payload if isinstance(letter.payload, dict) else {}
        if letter.kind != "webhook" or "event_id" not in payload:
            out.append((letter.id, "skipped", "not a webhook dead letter"))
            continue
        system = str(payload.get("system"))
        options = systems.get(system)
        if options is None:
            out.append((letter.id, "skipped", f"webhook system {system!r} is no longer configured"))
            continue
        endpoint = _Endpoint(system, options, store, config=config, registry=None, rng=rng)
        state = await store.call(endpoint.state)
        if state.not_before is not None and state.not_before > utcnow():
            out.append(
                (letter.id, "deferred", f"{system} asked us to wait until {format_utc(state.not_before)}; try then")
            )
            continue
        busy = (letter.id, "busy", f"{system} is being delivered to right now; try again shortly")
        if system in _busy:
            out.append(busy)
            continue
        _busy.add(system)  # before the first await, and kept until the lease is released (see deliver)
        try:
            if not await store.call(store.acquire_lease, endpoint.lease, endpoint.lease_ttl):
                out.append(busy)
                continue
            try:
                out.append(await _replay_one(endpoint, letter.id, payload, state.state == "disabled"))
            finally:
                await store.call(store.release_lease, endpoint.lease)
        finally:
            _busy.discard(system)
    return out


async def _replay_one(
    endpoint: _Endpoint, letter_id: int, payload: dict[str, Any], disabled: bool
) -> tuple[int, str, str]:
    store = endpoint.store
    event = OutboxEvent(
        str(payload["event_id"]),
        str(payload["system"]),
        str(payload["stream"]),
        str(payload["record_key"]),
        str(payload["type"]),
        str(payload["body"]),
    )
    await store.call(insert_events, store, [event], [timedelta(0)])  # the row may have been pruned since
    row = await store.call(_outbox_row, store, event.event_id)
    assert row is not None
    async with _client(endpoint.options) as client:
        at = utcnow()
        result = await _post(client, endpoint.options, endpoint.secrets, event.event_id, str(row["body"]))
    values: dict[str, Any] = {"attempts": int(row["attempts"]) + 1, "last_attempt_at": at}
    if result.kind == "ok":
        values.update(state="delivered", delivered_at=utcnow(), last_error=None)
    else:
        values.update(state="dead", last_error=result.message)
    await store.call(_record_replay, endpoint, int(row["seq"]), values, result, at, disabled)
    if result.kind == "ok":
        await store.call(store.set_dead_letter_status, [letter_id], "resolved")
        if disabled:
            log.warning("webhook.endpoint_enabled", system=endpoint.name, event_id=event.event_id)
        return (letter_id, "delivered", f"{result.message}, webhook-id {event.event_id}")
    reason = f"{event.type} {event.record_key}: replay failed: {result.message}"
    await store.call(store.set_dead_letter_status, [letter_id], "open", reason)
    return (letter_id, "failed", result.message)


def _outbox_row(store: StateStore, event_id_: str) -> dict[str, Any] | None:
    """The outbox row of one event, if it is there."""
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(T_OUTBOX).where(T_OUTBOX.c.event_id == event_id_)).mappings().first()
    return dict(row) if row is not None else None


def _record_replay(
    endpoint: _Endpoint, seq: int, values: dict[str, Any], result: _Result, at: datetime, disabled: bool
) -> None:
    """A replay's outcome: the outbox row and the endpoint, in one transaction."""
    with endpoint.store.transaction() as conn:
        conn.execute(sa.update(T_OUTBOX).where(T_OUTBOX.c.seq == seq).values(**values))
        if result.kind == "ok" and disabled:
            _set_endpoint(
                conn, endpoint.name, endpoint.options.url_hash(), state="active", not_before=None, reason=None
            )
        elif result.kind == "throttled":
            hold = timedelta(seconds=result.retry_after or 0)
            _set_endpoint(conn, endpoint.name, endpoint.options.url_hash(), not_before=at + hold, reason=result.message)


# -- status ---------------------------------------------------------------------------------


def endpoint_status(config: FerrymanConfig, store: StateStore) -> list[dict[str, Any]]:
    """Per outbound system: URL (redacted), state, why, hold-back, pending and dead counts,
    the oldest pending event's age. For ``ferryman status``."""
    rows = []
    for name, options in outbound_systems(config).items():
        state = endpoint_state(store, name, options.url_hash())
        with store.engine.connect() as conn:
            counts: dict[str, int] = dict(
                conn.execute(
                    sa.select(T_OUTBOX.c.state, sa.func.count())
                    .where(T_OUTBOX.c.system == name)
                    .group_by(T_OUTBOX.c.state)
                ).all()
            )
            oldest = conn.execute(
                sa.select(T_OUTBOX.c.created_at)
                .where(T_OUTBOX.c.system == name, T_OUTBOX.c.state == "pending")
                .order_by(T_OUTBOX.c.seq)
                .limit(1)
            ).scalar()
        rows.append(
            {
                "system": name,
                "url": redact_url(options.url or ""),
                "state": state.state,
                "reason": redact(state.reason) if state.reason else None,
                "since": format_utc(state.changed_at) if state.changed_at else None,
                "not_before": format_utc(state.not_before)
                if state.not_before and state.not_before > utcnow()
                else None,
                "pending": int(counts.get("pending", 0)),
                "delivered": int(counts.get("delivered", 0)),
                "dead": int(counts.get("dead", 0)),
                "oldest_pending": format_utc(oldest) if oldest is not None else None,
            }
        )
    return rows
