"""Webhooks, following Standard Webhooks 1.0.0: signed POSTs out, verified intake in.

A ``connector: webhook`` system is one of two things:

**An outbound endpoint (a sink)**, when it has a ``url``. Each record change a pipeline
writes to it becomes one event: ``POST url`` with the JSON body
``{"type": "ticket.created", "timestamp": "2026-01-01T00:00:00Z", "data": <record>}``
and the headers ``webhook-id`` (the same on every retry), ``webhook-timestamp`` (Unix
seconds of the attempt) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``, two
while ``previous_secret`` is set). Events go through an outbox in the state store,
written in the same transaction that commits the page's cursor and links, with ids
derived from the change so that a crash never loses or re-mints one (see
:mod:`ferryman.webhooks.outbox`).
``ferryman sync`` ends with one delivery pass; the daemon delivers continuously.

**An intake (a source)**, when it has ``intake``. The daemon serves ``POST
/hooks/<system>``, verifies, de-duplicates, maps and stores what arrives (see
:mod:`ferryman.webhooks.intake`), and pipelines read it like any other stream; a
record's ``updated_at`` is when Ferryman received it, so the cursor is exact (declared as
microsecond precision). A stored record that cannot be read back is a dead letter of its
own, so one hostile message never stops the intake's pipeline. With
``intake: {trigger: PIPELINE}`` it only triggers that pipeline's next run.

Field mapping
-------------

==================  =======================================  ==================================
direction           native (payload)                         canonical
==================  =======================================  ==================================
out                 ``type``                                 ``<record kind>.<created|updated|deleted>``
out                 ``timestamp``                            time the event was made, UTC ``Z``
out                 ``data``                                 the record, ``model_dump(mode="json")``
out (delete)        ``data``                                 ``{key, updated_at, deleted: true}``, other fields null
in                  ``type``                                 picks the stream (``events``/``deleted_events``)
in                  ``<path>`` (default ``data``)            one record, or a list of records
in                  ``fields: {canonical: dotted.path}``     each named field; default: canonical shape
in                  ``key`` (or ``id``)                      ``key``
in                  ``updated_at``                           ``extra.source_updated_at``
in                  (receipt time, strictly increasing)      ``updated_at``
in                  any field no rule used                   ``extra``
==================  =======================================  ==================================

See ``README.md`` beside this file and ``config/webhook.example.yaml``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

import orjson
import sqlalchemy as sa
import structlog
from pydantic import ValidationError

from ferryman.connector import Capability, Connector, Page, Reject, StreamInfo, SystemContext
from ferryman.cursor import MICROSECOND, Cursor, filter_floor
from ferryman.errors import FatalError, ValidationFailed
from ferryman.records import Record, record_type
from ferryman.redact import redact, redact_url
from ferryman.sdk.readloop import whole_list_pages
from ferryman.state import StateStore
from ferryman.timeutil import format_utc, utcnow
from ferryman.webhooks import inbox, outbox
from ferryman.webhooks.options import WebhookOptions

__all__ = ["WebhookConnector"]

log = structlog.get_logger("ferryman.webhooks")

SINK = frozenset({Capability.CREATE, Capability.UPDATE, Capability.DELETE})
SOURCE = frozenset({Capability.READ, Capability.INCREMENTAL})
#: how much of a stored record that cannot be read back a dead letter keeps
RAW_EXCERPT = 2000


class WebhookConnector(Connector):
    """Standard Webhooks: an outbound endpoint (``url``) or an intake (``intake``)."""

    kind = "webhook"
    Options = WebhookOptions
    summary = "Standard Webhooks: signed POSTs per change through an outbox, or a verified intake"
    #: writes are events staged for the page commit, durable with its cursor: no intents
    transactional_writes: ClassVar[bool] = True

    options: WebhookOptions

    def __init__(self, context: SystemContext) -> None:
        super().__init__(context)
        self._checked = False
        self._config: Any = None

    # -- description ------------------------------------------------------------------------
    @classmethod
    def describe(cls) -> Mapping[str, StreamInfo]:
        raise NotImplementedError  # outbound or intake, and which streams: all configuration

    def streams(self) -> Mapping[str, StreamInfo]:
        if self.options.intake is not None:
            return {
                name: StreamInfo(
                    name,
                    record_type(kind),
                    SOURCE,
                    natural_key="key",
                    description=f"records received on /hooks/{self.name}",
                )
                for name, kind in self.options.stream_kinds().items()
            }
        return {
            name: StreamInfo(
                name, record_type(kind), SINK, description=f"events POSTed to {redact_url(self.options.url or '')}"
            )
            for name, kind in self.options.streams.items()
        }

    @property
    def store(self) -> StateStore:
        store = self.context.services.get("state")
        if store is None:
            raise FatalError("needs the state store (run it through the engine)", system=self.name)
        return store

    def _pipeline_config(self) -> Any:
        """The configuration, to name the pipeline of a dead letter (None when unknown)."""
        if self._config is None:
            config = self.context.services.get("config")
            if config is None and self.context.config_file:
                from ferryman.config import load_config

                try:
                    config = load_config(self.context.config_file)
                except Exception:  # the letter is still kept, under webhook:<system>
                    config = None
            self._config = config if config is not None else False
        return self._config or None

    async def check(self) -> None:
        if self.options.url is None:
            return
        state = await self.store.call(outbox.endpoint_state, self.store, self.name, self.options.url_hash())
        if state.state == "disabled":
            raise FatalError(self._disabled_message(state), system=self.name)

    def _disabled_message(self, state: outbox.EndpointState) -> str:
        since = f" at {format_utc(state.changed_at)}" if state.changed_at else ""
        return (
            f"webhook endpoint {redact_url(self.options.url or '')} is disabled: {redact(state.reason or 'HTTP 410 Gone')}"
            f"{since}. Ferryman stopped sending to it; pending events stay in the outbox. When the receiver is "
            "back, replay the dead letter of the event that met the 410 (`ferryman dlq list`, then "
            "`ferryman dlq replay ID`): once it is accepted, sending resumes"
        )

    # -- writing (outbound) --------------------------------------------------------------------
    async def _writable(self, stream: str) -> None:
        if self.options.url is None:
            raise FatalError(f"{stream} is an intake stream; it cannot be written", system=self.name)
        self.stream(stream)
        if not self._checked:
            state = await self.store.call(outbox.endpoint_state, self.store, self.name, self.options.url_hash())
            if state.state == "disabled":
                raise FatalError(self._disabled_message(state), system=self.name)
            self._checked = True

    def _target(self, stream: str) -> str:
        """The target a page commit names (``system.stream``): where this stream's events are staged."""
        return f"{self.name}.{stream}"

    def _stage(self, stream: str, record: Record, op: str, *, version: str | None = None) -> None:
        """Hand the change's event to the state store, for the commit of the page being
        written: this sink writes nothing itself (see :mod:`ferryman.state.outbox`)."""
        schedule = self.options.retry_schedule
        delay = schedule[0] if schedule else timedelta(0)
        event = outbox.build_event(self.name, stream, record, op, version=version, delay=delay)
        self.store.outbox.stage(self._target(stream), event)

    async def create(self, stream: str, record: Record) -> Record:
        await self._writable(stream)
        self._stage(stream, record, "created")
        return record

    async def update(self, stream: str, key: str, record: Record) -> Record:
        await self._writable(stream)
        stored = record.model_copy(update={"key": key}) if record.key != key else record
        self._stage(stream, stored, "updated")
        return stored

    async def delete(self, stream: str, key: str) -> None:
        await self._writable(stream)
        staged = self.store.outbox.staged(self._target(stream))
        previous = next(
            ((e.event_id, e.type) for e in reversed(staged) if e.record_key == key),
            None,
        ) or await self.store.call(outbox.latest_event, self.store, self.name, stream, key)
        if previous is not None and previous[1].endswith(".deleted"):
            return  # already deleted: deleting a missing record is not an error, nor a new event
        rtype = self.stream(stream).record_type
        tombstone = rtype(key=key, updated_at=utcnow(), deleted=True)
        self._stage(stream, tombstone, "deleted", version=previous[0] if previous is not None else "")

    async def restore(self, stream: str, checkpoint: dict[str, Any] | None) -> None:
        """A run begins, or one ended in a failure: events staged for this stream and never
        committed belong to a page that will be read again."""
        self.store.outbox.discard(self._target(stream))
        self._checked = False

    async def checkpoint(self, stream: str) -> dict[str, Any] | None:
        """Nothing to keep but the page's events, which the page commit takes from the
        store: the engine names this target in that commit by this very checkpoint."""
        return None

    async def finish(self, stream: str) -> dict[str, Any] | None:
        """End of a run: one bounded delivery pass.

        Every page commit took the events of its writes. Any still staged here were made
        by writes no commit carried (a page cut short): their page was not committed and
        will be read again, so they are dropped rather than written apart from it."""
        left = self.store.outbox.discard(self._target(stream))
        if left:
            log.warning("webhook.uncommitted_events_dropped", system=self.name, stream=stream, events=left)
        if self.options.url is not None and self.options.deliver_after_sync:
            sent = await outbox.deliver_endpoint(
                self.name,
                self.options,
                self.store,
                config=self._pipeline_config(),
                registry=self.context.services.get("http"),
                timeout=self.options.sync_delivery_timeout.total_seconds(),
            )
            if sent:
                log.info("webhook.pass_done", system=self.name, attempts=sent)
        return None

    # -- reading (intake) -----------------------------------------------------------------------
    async def read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        """The inbox's records due from ``since``, in cursor order, with the rejects received
        in that window. A stored record that cannot be read back (nested past the JSON
        parser's depth limit, say) is a dead letter of its own: one hostile message must not
        fail every run of the intake's pipeline from then on."""
        info = self.stream(stream)
        if self.options.intake is None:
            raise FatalError(f"{stream} is an outbound stream; it cannot be read", system=self.name)
        table = inbox.T_INBOX
        query = sa.select(table).where(table.c.system == self.name, table.c.stream.in_((stream, "-")))
        floor = filter_floor(since, MICROSECOND)
        if floor is not None:
            query = query.where(table.c.received_at >= floor)
        rows = await self.store.call(self._inbox_rows, query.order_by(table.c.received_at, table.c.seq))
        records: list[Record] = []
        rejects: list[Reject] = []
        for row in rows:
            ref = f"webhook {row['webhook_id']}"
            if row["record"] is None:
                raw = orjson.loads(row["raw"]) if row["raw"] else None
                key = None if row["record_key"].startswith("!") else row["record_key"]
                rejects.append(Reject(ref, row["reject_reason"] or "could not be mapped", raw=raw, key=key))
            elif row["stream"] == stream:
                try:
                    records.append(self._stored(info.record_type, row["record_key"], row["record"]))
                except ValidationFailed as exc:
                    rejects.append(Reject(ref, str(exc), raw=row["record"][:RAW_EXCERPT], key=row["record_key"]))
        for page in whole_list_pages(records, rejects, since, page_size):
            yield page

    async def get(self, stream: str, key: str) -> Record | None:
        info = self.stream(stream)
        if self.options.intake is None:
            return None
        table = inbox.T_INBOX
        row = await self.store.call(
            self._inbox_record,
            sa.select(table.c.record, table.c.reject_reason).where(
                table.c.system == self.name, table.c.stream == stream, table.c.record_key == key
            ),
        )
        if row is None:
            return None
        if row[0] is None:
            # the latest message about it could not be taken: say so rather than "gone"
            raise ValidationFailed(f"the latest message about {key!r} was refused: {row[1] or 'could not be mapped'}")
        return self._stored(info.record_type, key, row[0])

    def _inbox_rows(self, query: sa.Select[Any]) -> Sequence[sa.RowMapping]:
        with self.store.engine.connect() as conn:
            return conn.execute(query).mappings().all()

    def _inbox_record(self, query: sa.Select[Any]) -> tuple[Any, ...] | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else tuple(row)

    def _stored(self, rtype: type[Record], key: str, text: str) -> Record:
        try:
            return rtype.model_validate_json(text)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValidationFailed(
                f"the record {key!r} was received but its stored form cannot be read back: {err['msg']}"
            ) from None
