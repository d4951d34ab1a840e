"""Webhooks in both directions, following Standard Webhooks 1.0.0.

- :mod:`ferryman.webhooks.signing`: ``whsec_`` secrets, signing and constant-time verification.
- :mod:`ferryman.webhooks.outbox`: the outbox a ``webhook`` sink writes to, and the delivery
  worker (retries, 410, Retry-After, dead letters, replay with the same ``webhook-id``).
- :mod:`ferryman.webhooks.inbox`: an intake's payload mapping and its durable inbox.
- :mod:`ferryman.webhooks.intake`: the daemon's ``POST /hooks/<system>`` routes (imports
  aiohttp, so it is not imported here).

The daemon runs ``OutboxWorker(config, store, registry).serve(stop)`` when
:func:`has_outbound` is true and mounts :func:`ferryman.webhooks.intake.add_routes`;
``ferryman dlq replay`` hands ``kind="webhook"`` letters to :func:`replay_dead_letters`.
"""

from ferryman.webhooks.options import DEFAULT_RETRY_SCHEDULE, IntakeOptions, IntakeStreamOptions, WebhookOptions
from ferryman.webhooks.outbox import (
    OutboxEvent,
    OutboxWorker,
    build_event,
    enable_endpoint,
    endpoint_status,
    event_id,
    has_outbound,
    replay_dead_letters,
)
from ferryman.webhooks.signing import VerificationError, WebhookSecret, sign, signature_header, verify

__all__ = [
    "DEFAULT_RETRY_SCHEDULE",
    "IntakeOptions",
    "IntakeStreamOptions",
    "OutboxEvent",
    "OutboxWorker",
    "VerificationError",
    "WebhookOptions",
    "WebhookSecret",
    "build_event",
    "enable_endpoint",
    "endpoint_status",
    "event_id",
    "has_outbound",
    "replay_dead_letters",
    "sign",
    "signature_header",
    "verify",
]
