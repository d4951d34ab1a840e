"""The options of a ``connector: webhook`` system: an outbound endpoint or an intake.

Outbound (a sink)::

    hooks:
      connector: webhook
      url: https://receiver.example.com/ferryman
      secret: ${HOOKS_SECRET}                 # whsec_<base64>
      previous_secret: ${HOOKS_OLD_SECRET}    # while rotating: both sign every message
      timeout: 15s
      retry_schedule: [0, 5s, 5m, 30m, 2h, 5h, 10h, 10h]
      jitter: 0.1
      streams: [tickets, contacts]

Inbound (a source)::

    shop:
      connector: webhook
      secret: ${SHOP_SECRET}
      intake: true                            # or a block, see IntakeOptions
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator, model_validator

from ferryman.connector import ConnectorOptions
from ferryman.http import is_loopback
from ferryman.records import RECORD_TYPES, record_type
from ferryman.redact import redact_url
from ferryman.timeutil import ZoneName, parse_duration
from ferryman.webhooks.signing import WebhookSecret

__all__ = [
    "DEFAULT_RETRY_SCHEDULE",
    "DEFAULT_STREAMS",
    "IntakeOptions",
    "IntakeStreamOptions",
    "WebhookOptions",
]

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

#: In the spirit of the Standard Webhooks recommendation: immediately, then 5 s, 5 min,
#: 30 min, 2 h, 5 h, 10 h and 10 h; eight attempts over about a day and a day and a half.
DEFAULT_RETRY_SCHEDULE: tuple[timedelta, ...] = tuple(
    timedelta(seconds=s) for s in (0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600)
)
DEFAULT_STREAMS = {"tickets": "ticket", "contacts": "contact", "organisations": "organisation", "invoices": "invoice"}
_KINDS = {kind: stream for stream, kind in DEFAULT_STREAMS.items()}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _streams(value: Any) -> Any:
    """``[tickets, contacts]`` or ``{tickets: ticket}`` to ``{stream: kind}``."""
    if isinstance(value, list | tuple):
        out = {}
        for name in value:
            if not isinstance(name, str) or name not in DEFAULT_STREAMS:
                raise ValueError(
                    f"unknown stream {name!r}: use {', '.join(DEFAULT_STREAMS)}, or a mapping stream: kind"
                )
            out[name] = DEFAULT_STREAMS[name]
        return out
    return value


class IntakeStreamOptions(_Model):
    """How one intake stream finds and maps its records in a payload."""

    kind: str | None = Field(None, description="record kind (ticket, contact...); default from the stream name")
    events: list[str] | None = Field(
        None, description="event types carrying this stream's records; default KIND.created and KIND.updated"
    )
    deleted_events: list[str] | None = Field(None, description="event types that delete; default KIND.deleted")
    path: str = Field("data", description="dotted path of the record (or a list of records) in the payload; '' = all")
    fields: dict[str, str] | None = Field(
        None,
        description="canonical field -> dotted path inside the record; unmapped fields go to extra. "
        "Default: the payload already has the canonical shape",
    )
    timezone: ZoneName | None = Field(None, description="for timestamps without an offset")

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str | None) -> str | None:
        if value is not None:
            record_type(value)
        return value


class IntakeOptions(_Model):
    """``intake: true``, or a block: streams and their mapping, or ``trigger: PIPELINE`` alone."""

    streams: dict[str, IntakeStreamOptions] | None = Field(
        None, description="stream name -> mapping; default the four canonical streams in canonical shape"
    )
    trigger: str | None = Field(
        None, description="only trigger this pipeline's next run: verify, de-duplicate, trigger, store nothing else"
    )
    dedupe_window: Duration = Field(timedelta(hours=72), description="how long a webhook-id is remembered")
    max_body: int = Field(1024 * 1024, ge=1024, description="bytes; larger requests are refused with 413")

    @field_validator("dedupe_window")
    @classmethod
    def _window(cls, value: timedelta) -> timedelta:
        if value < timedelta(hours=72):
            raise ValueError("the Standard Webhooks spec asks to remember ids for at least 72h")
        return value

    @model_validator(mode="after")
    def _mode(self) -> IntakeOptions:
        if self.trigger is not None and self.streams is not None:
            raise ValueError("an intake either stores records (streams) or only triggers a pipeline, not both")
        return self

    def stream_map(self) -> dict[str, IntakeStreamOptions]:
        if self.trigger is not None:
            return {}
        if self.streams is None:
            return {name: IntakeStreamOptions(kind=kind) for name, kind in DEFAULT_STREAMS.items()}
        out = {}
        for name, stream in self.streams.items():
            kind = stream.kind or DEFAULT_STREAMS.get(name)
            if kind is None:
                raise ValueError(f"stream {name!r} needs a 'kind' ({', '.join(sorted(RECORD_TYPES))})")
            out[name] = stream.model_copy(update={"kind": kind})
        return out


class WebhookOptions(ConnectorOptions):
    """The keys under ``systems.NAME`` for ``connector: webhook``."""

    secret: SecretStr = Field(description="whsec_<base64>, as a reference (${ENV} or ${credential:NAME})")
    previous_secret: SecretStr | None = Field(
        None, description="the secret being rotated out: outbound signs with both, intake accepts both"
    )
    # outbound
    url: str | None = Field(None, description="the receiver; makes this system an outbound sink")
    timeout: Duration = Field(timedelta(seconds=15), description="per attempt, connect to last byte")
    retry_schedule: list[Duration] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE),
        description="delay before each attempt, the first counted from the change; one attempt per entry",
    )
    jitter: float = Field(0.1, ge=0, le=1, description="each delay varies by up to this share, either way")
    streams: Annotated[dict[str, str], BeforeValidator(_streams)] = Field(
        default_factory=lambda: dict(DEFAULT_STREAMS), description="streams accepted: a list, or stream: kind"
    )
    allow_insecure_http: bool = Field(False, description="allow plain http:// to a host that is not loopback")
    deliver_after_sync: bool = Field(True, description="`ferryman sync` ends with one delivery pass")
    sync_delivery_timeout: Duration = Field(timedelta(seconds=60), description="how long that pass may take")
    retention: Duration = Field(timedelta(days=7), description="how long delivered events stay in the outbox")
    # inbound
    intake: IntakeOptions | None = Field(None, description="makes this system an intake (a source)")

    @field_validator("intake", mode="before")
    @classmethod
    def _intake_flag(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return None
        return value

    @field_validator("streams")
    @classmethod
    def _kinds(cls, value: dict[str, str]) -> dict[str, str]:
        for kind in value.values():
            record_type(kind)
        return value

    @field_validator("secret", "previous_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            WebhookSecret.parse(value.get_secret_value())
        return value

    @field_validator("retry_schedule")
    @classmethod
    def _schedule(cls, value: list[timedelta]) -> list[timedelta]:
        if not value:
            raise ValueError("needs at least one entry (0 = immediately)")
        return value

    @model_validator(mode="after")
    def _direction(self) -> WebhookOptions:
        if (self.url is None) == (self.intake is None):
            raise ValueError("give 'url' (send webhooks) or 'intake' (receive them), exactly one")
        if self.url is not None:
            import httpx

            try:
                parsed = httpx.URL(self.url)
            except httpx.InvalidURL:
                raise ValueError(f"not a URL: {redact_url(self.url)!r}") from None
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ValueError(f"not an http(s) URL: {redact_url(self.url)!r}")
            if parsed.scheme == "http" and not (self.allow_insecure_http or is_loopback(parsed.host)):
                raise ValueError(
                    f"refusing plain http:// to {parsed.host} (events would travel unencrypted): "
                    "use https://, or set allow_insecure_http: true"
                )
        if self.intake is not None:
            self.intake.stream_map()
        return self

    # -- derived --------------------------------------------------------------------------
    def secrets(self) -> list[WebhookSecret]:
        """The signing keys, current first."""
        keys = [WebhookSecret.parse(self.secret.get_secret_value())]
        if self.previous_secret is not None:
            keys.append(WebhookSecret.parse(self.previous_secret.get_secret_value()))
        return keys

    def url_hash(self) -> str:
        """Names the endpoint in the state store without storing a URL that may carry a token."""
        return hashlib.sha256((self.url or "").encode()).hexdigest()

    def stream_kinds(self) -> dict[str, str]:
        """stream -> record kind, for whichever direction this system is."""
        if self.intake is not None:
            return {name: s.kind or "" for name, s in self.intake.stream_map().items()}
        return dict(self.streams)


def stream_for_kind(kind: str) -> str | None:
    """The default stream of a record kind (``ticket`` -> ``tickets``)."""
    return _KINDS.get(kind)
