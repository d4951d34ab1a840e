"""Inbound webhooks: ``POST /hooks/<system>`` on the daemon's local HTTP server.

For each ``connector: webhook`` system with an ``intake``, :func:`add_routes` mounts one
handler that, in order:

1. reads the raw body (at most ``intake.max_body`` bytes, else 413);
2. verifies the Standard Webhooks signature over those exact bytes with the system's
   secret (and ``previous_secret`` while rotating), in constant time, and refuses a
   timestamp more than five minutes away: a missing or bad signature answers 401 and
   changes nothing;
3. de-duplicates ``webhook-id`` (remembered for ``intake.dedupe_window``, at least 72 h):
   a duplicate answers 200 and does nothing else;
4. maps the payload to canonical records (:mod:`ferryman.webhooks.inbox`) and stores them
   in the inbox, together with the id, in ONE transaction committed before answering; a
   record that could not be processed later (nested too deep to read back, a key the state
   store cannot hold) is stored as a reject, a dead letter of its own, and a message the
   database still refuses answers 400, since a retry could not fare better;
5. triggers the pipelines whose ``from`` is one of the streams that got records (or,
   with ``intake: {trigger: PIPELINE}``, just that pipeline: nothing but the id is
   stored), and answers 200 without waiting for the runs.

The state store is used from its own worker threads (:meth:`StateStore.call`), so a slow
disk or a hung database never stalls the daemon's event loop, and triggers are given at
most half a second before the answer goes out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from aiohttp import web

from ferryman.config import FerrymanConfig
from ferryman.errors import ConfigError
from ferryman.redact import redact
from ferryman.state import StateStore
from ferryman.timeutil import utcnow
from ferryman.webhooks.inbox import map_message, mark_seen, printable, store_message
from ferryman.webhooks.options import WebhookOptions
from ferryman.webhooks.signing import VerificationError, verify

__all__ = ["IntakeContext", "add_routes", "intake_systems"]

log = structlog.get_logger("ferryman.webhooks")

TRIGGER_WAIT = 0.5  # seconds a trigger may take before the answer goes out anyway
MAX_ID_LENGTH = 255


@dataclass
class IntakeContext:
    """What the daemon hands the intake routes."""

    config: FerrymanConfig
    store: StateStore
    trigger: Callable[[str], Awaitable[None]]


def intake_systems(config: FerrymanConfig) -> dict[str, WebhookOptions]:
    """Every configured intake, by system name."""
    found: dict[str, WebhookOptions] = {}
    for name, system in config.systems.items():
        if system.connector != "webhook":
            continue
        options = config.system_options(name)
        if isinstance(options, WebhookOptions) and options.intake is not None:
            found[name] = options
    return found


def add_routes(app: web.Application, context: IntakeContext) -> int:
    """Mount ``POST /hooks/<system>`` for every intake; returns how many were mounted."""
    mounted = 0
    for name, options in intake_systems(context.config).items():
        intake = _Intake(name, options, context)
        app.router.add_post(f"/hooks/{name}", intake.handle)
        mounted += 1
        log.info("webhook.intake_mounted", system=name, path=f"/hooks/{name}", pipelines=intake.all_pipelines())
    return mounted


def _answer(code: int, /, **body: Any) -> web.Response:
    return web.Response(status=code, body=orjson.dumps(body), content_type="application/json")


class _Intake:
    def __init__(self, name: str, options: WebhookOptions, context: IntakeContext) -> None:
        assert options.intake is not None
        self.name = name
        self.options = options
        self.intake = options.intake
        self.context = context
        self.secrets = options.secrets()
        self._background: set[asyncio.Future[None]] = set()
        if self.intake.trigger is not None and self.intake.trigger not in context.config.pipelines:
            known = ", ".join(sorted(context.config.pipelines)) or "none configured"
            raise ConfigError(
                f"no pipeline named {self.intake.trigger!r} to trigger (pipelines: {known})",
                file=context.config.file,
                path=f"systems.{name}.intake.trigger",
            )
        if self.intake.trigger is None and not self.all_pipelines():
            log.warning(
                "webhook.intake_unread",
                system=name,
                message=f"no enabled pipeline reads from {name}; received records wait in the inbox",
            )

    def pipelines(self, streams: list[str]) -> list[str]:
        refs = {f"{self.name}.{s}" for s in streams}
        return [n for n, p in self.context.config.pipelines.items() if p.enabled and p.source in refs]

    def all_pipelines(self) -> list[str]:
        if self.intake.trigger is not None:
            return [self.intake.trigger]
        return self.pipelines(list(self.intake.stream_map()))

    async def handle(self, request: web.Request) -> web.Response:
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body.extend(chunk)
            if len(body) > self.intake.max_body:
                return _answer(413, error=f"the body is larger than {self.intake.max_body} bytes")
        raw = bytes(body)
        try:
            webhook_id = verify(self.secrets, request.headers, raw, now=utcnow())
        except VerificationError as exc:
            log.warning("webhook.refused", system=self.name, reason=str(exc), remote=request.remote)
            return _answer(401, error=f"signature verification failed: {exc}")
        if len(webhook_id) > MAX_ID_LENGTH:
            return _answer(400, error=f"webhook-id longer than {MAX_ID_LENGTH} characters")
        window = self.intake.dedupe_window
        if self.intake.trigger is not None:
            try:
                new = await self.context.store.call(mark_seen, self.context.store, self.name, webhook_id, window)
            except sa.exc.DataError as exc:
                return self._unstorable(webhook_id, exc)
            if not new:
                return self._duplicate(webhook_id)
            await self._trigger([self.intake.trigger])
            log.info("webhook.received", system=self.name, webhook_id=webhook_id, outcome="triggered")
            return _answer(200, status="triggered", pipelines=[self.intake.trigger])
        try:
            payload: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            payload = raw.decode("utf-8", errors="replace")
        event_type, items = map_message(self.intake, payload, utcnow())
        try:
            new, streams = await self.context.store.call(
                store_message, self.context.store, self.name, webhook_id, items, window
            )
        except sa.exc.DataError as exc:
            return self._unstorable(webhook_id, exc)
        if not new:
            return self._duplicate(webhook_id)
        stored = sum(1 for i in items if i.record is not None)
        rejected = len(items) - stored
        if rejected:
            reasons = sorted({redact(i.reason or "") for i in items if i.record is None})
            log.warning("webhook.unmapped", system=self.name, webhook_id=webhook_id, type=event_type, reasons=reasons)
        if not items:
            log.info("webhook.ignored", system=self.name, webhook_id=webhook_id, type=event_type)
            return _answer(200, status="ignored", reason=f"no stream of {self.name} takes {event_type!r} events")
        pipelines = self.pipelines(streams)
        await self._trigger(pipelines)
        log.info(
            "webhook.received",
            system=self.name,
            webhook_id=webhook_id,
            type=event_type,
            records=stored,
            rejected=rejected,
            pipelines=pipelines,
        )
        return _answer(200, status="stored", records=stored, rejected=rejected, pipelines=pipelines)

    def _unstorable(self, webhook_id: str, exc: sa.exc.DataError) -> web.Response:
        """The database refuses a value, and would on every retry: a 5xx would have the sender
        retry for ever. Mapping rejects what it knows of (depth, keys); this is the backstop."""
        problem = printable(str(exc.orig or exc).splitlines()[0])
        log.warning("webhook.unstorable", system=self.name, webhook_id=printable(webhook_id), error=redact(problem))
        return _answer(400, error=f"the message cannot be stored: {problem}")

    def _duplicate(self, webhook_id: str) -> web.Response:
        log.info("webhook.duplicate", system=self.name, webhook_id=webhook_id)
        return _answer(200, status="duplicate")

    async def _trigger(self, pipelines: list[str]) -> None:
        """Ask for runs; give them a moment, then answer regardless (the records are safe)."""
        if not pipelines:
            return
        tasks = [asyncio.ensure_future(self.context.trigger(p)) for p in pipelines]
        done, pending = await asyncio.wait(tasks, timeout=TRIGGER_WAIT)
        for task in done:
            self._report(task)
        for task in pending:
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            task.add_done_callback(self._report)

    def _report(self, task: asyncio.Future[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("webhook.trigger_failed", system=self.name, error=redact(f"{type(exc).__name__}: {exc}"))
