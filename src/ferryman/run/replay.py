"""Dead letters delivered again: ``ferryman dlq replay``, and a run's start-of-run retry of
the records that waited for a reference.

Each letter's record is read again from the source where it can be (a record fixed there
goes as it is now), else its kept copy is sent; it is planned and written like a page of
one (:func:`~ferryman.run.oneway.deliver_page`, forced: the links' fingerprints are not
trusted to say the target has it) and committed with its own page commit. An interrupted
create (``unresolved``) is looked up in the target first and never created blindly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from ferryman.connector import Capability
from ferryman.errors import FerrymanError, NotSupportedError, RecordRejected
from ferryman.journal import RunJournal
from ferryman.records import Record, fingerprint
from ferryman.redact import redact
from ferryman.run.observer import Observer
from ferryman.run.oneway import deliver_page, new_counts
from ferryman.run.sinks import Sinks
from ferryman.state import Link, PageCommit

if TYPE_CHECKING:
    from ferryman.config import PipelineConfig
    from ferryman.connector import Connector, StreamInfo
    from ferryman.engine import Engine, RunResult, _Target

__all__ = ["Replay"]

log = structlog.get_logger("ferryman.engine")

Outcome = tuple[int, str, str]  # (letter id, outcome, message)


@dataclass
class Replay:
    """Letters of one pipeline delivered again, under its lease. Within a ``run`` (its
    start-of-run reference retries, on the run's own ``built`` targets), what they create,
    update or delete is counted in the run and committed with its row."""

    engine: Engine
    name: str
    run: RunResult | None = None
    built: tuple[Connector, StreamInfo, list[_Target]] | None = None
    assume_missing: bool = False
    out: list[Outcome] = field(default_factory=list)

    async def letters(self, letters: list[Any]) -> list[Outcome]:
        engine, name = self.engine, self.name
        pipeline = engine.config.pipeline(name)
        source, src_info, targets = self.built or await engine._targets(pipeline, f"pipelines.{name}")
        await engine._keyed(pipeline.source, targets)
        sinks = Sinks(engine, name, targets)
        await sinks.restore()
        failure: BaseException | None = None
        try:
            for letter in letters:
                record = await self._record(
                    letter, source, src_info, [t for t in targets if letter.dst in (None, t.ref)]
                )
                if record is not None:
                    await self._deliver(pipeline, letter, record, targets, sinks)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            await sinks.end(failure)
        return self.out

    async def _record(
        self, letter: Any, source: Connector, src_info: StreamInfo, chosen: list[_Target]
    ) -> Record | None:
        """The letter's record as the source holds it now, else its kept copy; None (with
        the outcome noted) when it is invalid or gone."""
        record: Record | None = None
        gone = False  # the source answered that it no longer has the record
        try:
            if letter.src_key and src_info.can(Capability.READ):
                try:
                    record = await source.get(src_info.name, letter.src_key)
                    gone = record is None
                except NotImplementedError:
                    record = None
                except FerrymanError as exc:
                    if isinstance(exc, RecordRejected):
                        raise
                    record = None
            # An operator's replay may send the kept copy of a record the source lost; a
            # run's own retries do not bring a deleted record back.
            if record is None and letter.dst is not None and letter.payload and not (gone and self.run is not None):
                record = src_info.record_type.model_validate(letter.payload) if letter.kind != "unresolved" else None
                if record is None:
                    record = chosen[0].info.record_type.model_validate(letter.payload)
        except (RecordRejected, ValueError) as exc:
            await self.engine._state(
                self.engine.store.set_dead_letter_status, [letter.id], "open", f"still invalid: {exc}"
            )
            self.out.append((letter.id, "invalid", redact(str(exc))))
            return None
        if record is None:
            message = f"{letter.ref} is no longer in {letter.src}; `ferryman dlq drop {letter.id}`"
            self.out.append((letter.id, "missing", message))
        return record

    async def _deliver(
        self, pipeline: PipelineConfig, letter: Any, record: Record, targets: list[_Target], sinks: Sinks
    ) -> None:
        """One letter's record to its target(s), committed on its own, and the letter's new status."""
        engine, name = self.engine, self.name
        commit = PageCommit(name)
        RunJournal(engine.config.history, pipeline.journal).event(
            commit.events,
            pipeline.source,
            letter.src_key or letter.ref,
            "replay",
            target=letter.dst,
            detail=f"dead letter #{letter.id} ({letter.kind}) delivered again",
        )
        counts = new_counts()
        for target in [t for t in targets if letter.dst in (None, t.ref)]:
            if letter.kind == "unresolved":
                # Look first: the interrupted create may have happened. Never create blindly.
                unchecked = await self._settle_unresolved(pipeline.source, target, letter)
                if unchecked:
                    self.out.append((letter.id, "needs-check", unchecked))
                    return
            await deliver_page(
                engine, name, pipeline, target, [record], commit, counts, Observer(), force=letter.kind != "invalid"
            )
        await sinks.checkpoint(commit)
        failed, commit.dead_letters = list(commit.dead_letters), []
        written = {k: counts[k] for k in ("created", "updated", "deleted") if counts[k]}
        if self.run is not None:
            commit.run_id, commit.counts = self.run.run_id, written
        await engine._state(engine.store.commit_page, commit)
        if self.run is not None:
            for key, value in written.items():
                self.run.counts[key] += value
        status = engine.store.set_dead_letter_status
        if failed:
            # a reference found at last, then the record refused: no longer retried each run
            kind = failed[0].kind if letter.kind == "reference" else None
            await engine._state(status, [letter.id], "open", failed[0].reason, kind=kind)
            self.out.append((letter.id, "rejected", failed[0].reason))
        else:
            await engine._state(status, [letter.id], "resolved")
            self.out.append((letter.id, "delivered", f"created {counts['created']}, updated {counts['updated']}"))

    async def _settle_unresolved(self, src_ref: str, target: _Target, letter: Any) -> str | None:
        """Before replaying an interrupted create: link the record if the target has it.
        Returns why the letter cannot be replayed safely, or ``None`` to go on."""
        engine, name = self.engine, self.name
        waiting = [
            i
            for i in await engine._state(engine.store.intents, name, target.ref, state="unresolved")
            if i["src_key"] == letter.src_key
        ]
        started = waiting[0]["created_at"] if waiting else letter.created_at
        found: Record | None = None
        if letter.payload:
            mapped = target.info.record_type.model_validate(letter.payload)
            try:
                found = await target.connector.reconcile(target.stream, mapped, started)
            except NotSupportedError:
                if not self.assume_missing:
                    return (
                        f"{target.ref} cannot look up whether the interrupted create of {letter.src_key} happened: "
                        f"check {target.ref} for it, then `ferryman dlq replay --assume-missing {letter.id}` to "
                        f"create it, or `ferryman dlq drop {letter.id}` if it is there"
                    )
        await engine._state(engine.store.resolve_intent_by_key, name, target.ref, letter.src_key)
        target.blocked = target.blocked - {letter.src_key}
        if found is not None and letter.src_key:
            mapped_fp = fingerprint(target.info.record_type.model_validate(letter.payload))
            link = Link(letter.src_key, found.key, mapped_fp, fingerprint(found))
            await engine._state(engine.store.commit_page, PageCommit(name, links={(src_ref, target.ref): [link]}))
            log.info("intent.reconciled", pipeline=name, target=target.ref, key=letter.src_key, found=True)
        return None
