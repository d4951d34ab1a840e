"""One page's planned actions written to one target: the write half of a one-way run.

:class:`Delivery` is made by :func:`ferryman.run.oneway.deliver_page` after planning, for
one page and one target, and writes the actions into the page's
:class:`~ferryman.state.PageCommit` (links, unlinks, resolved intents, dead letters,
events, journal entries). Nothing here commits a page except :meth:`Delivery.finish` after
a failure: what was confirmed before the failure is kept (links and the intents they
resolve), the cursor stays where the last whole page left it.

Writes to an app go up to ``concurrency`` at a time (the pipeline's ``concurrency``),
never two for one source key, each after the run's self-fence, all inside the app's shared
rate budget (the HTTP client's). Targets whose creates are settled one at a time (no
lookup by natural key, so each create's intent is made durable with the link of the one
before it) and file targets write one at a time. A write that fails stops new ones; those
in flight finish, and what they confirmed is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import structlog

from ferryman.connector import Capability
from ferryman.errors import AuthError, FatalError, FerrymanError, NotSupportedError, RecordRejected, RetriableError
from ferryman.journal import RunJournal
from ferryman.planning import Action
from ferryman.records import Record, fingerprint
from ferryman.redact import redact
from ferryman.state import Link, NewDeadLetter, PageCommit

if TYPE_CHECKING:
    from ferryman.engine import Engine, _Target

__all__ = ["Delivery", "lookup", "natural_value", "stored_fingerprint", "unknown_outcome"]

log = structlog.get_logger("ferryman.engine")

#: what a target answered for a record, read before an update overwrites it (see
#: Engine._before_update): ((lost, won) the update changes, the same when it was an edit there)
Before = tuple[tuple[dict[str, Any], dict[str, Any]], tuple[dict[str, Any], dict[str, Any]] | None] | None


def stored_fingerprint(stored: Record, action: Action) -> str:
    """The fingerprint of what the target now holds (free when it stored exactly our record)."""
    if stored is action.record and action.fingerprint:
        return action.fingerprint
    return fingerprint(stored)


def natural_value(target: _Target, record: Record) -> str | None:
    """The record's natural key value, folded as apps compare it (emails, names: no case)."""
    value = getattr(record, target.info.natural_key or "", None)
    return str(value).strip().casefold() or None if value not in (None, "") else None


async def lookup(target: _Target, record: Record) -> tuple[str, str] | None:
    """The key and fingerprint of the target's record that is ``record`` by natural key: from
    the index when the target was read whole, else (or when the index holds several) the
    connector's own find()."""
    if target.index is not None:
        value = natural_value(target, record)
        if value is None:
            return None
        found = target.index.get(value, [])
        if len(found) <= 1:
            return found[0] if found else None
    match = await target.connector.find(target.stream, record)
    return (match.key, fingerprint(match)) if match is not None else None


def unknown_outcome(target: _Target, src_key: str, exc: Exception) -> FatalError:
    """A create that may or may not have happened: the run stops, its intent is kept and
    reconciled (looked up in the target) before anything is created again."""
    return FatalError(
        f"create of {src_key} in {target.ref}: the outcome is unknown ({redact(str(exc))}); the create is kept "
        "as an intent and looked up in the target before anything is created again"
    )


class Delivery:
    """The writes of one page to one target (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        src_ref: str,
        target: _Target,
        commit: PageCommit,
        counts: dict[str, int],
        journal: RunJournal,
        links: dict[str, Link],
        *,
        concurrency: int = 1,
        letters_before: int | None = None,
    ) -> None:
        self.engine, self.name, self.src_ref, self.target = engine, name, src_ref, target
        self.commit, self.counts, self.journal, self.links = commit, counts, journal, links
        self.new_links: list[Link] = []
        self.unlinks: list[str] = []
        # A target that can find a record by natural key settles any create a crash left in
        # doubt by looking it up, so its creates are noted page by page (one transaction).
        # One that cannot gets one intent per create, made durable with the link of the
        # create before it: a crash leaves at most one record in doubt, never a page.
        self.use_intents = not target.transactional
        self.one_at_a_time = self.use_intents and not target.info.can(Capability.FIND)
        self.concurrency = 1 if (self.one_at_a_time or target.transactional) else max(1, concurrency)
        #: a file sink takes a page's creates and updates in one call (Connector.write_page):
        #: nothing it holds is published before the page's commit, so a failure loses the
        #: page whole; not when each create is looked up first, or each update read first
        self.by_page = target.transactional and not target.lookup and not journal.check_target
        self.batch: dict[str, int] = {}
        self.in_flight: tuple[int, str, Link] | None = None  # the last confirmed create, not yet durable
        self.events_before = len(commit.events)
        self.conflicts_before = len(commit.conflicts)
        #: where this target's dead letters begin (its mapping's are made before the writes)
        self.letters_before = len(commit.dead_letters) if letters_before is None else letters_before

    # -- the page --------------------------------------------------------------------------
    async def deliver(self, actions: list[Action]) -> None:
        """Write ``actions``; raises what stopped the page after keeping what was confirmed."""
        creates = [a for a in actions if a.op == "create"]
        if self.use_intents and not self.one_at_a_time and creates:
            ids = await self.engine._state(
                self.engine.store.record_intents,
                self.name,
                self.target.ref,
                [(a.src_key, a.fingerprint or "", a.record.model_dump_json() if a.record else "{}") for a in creates],
            )
            self.batch = {a.src_key: i for a, i in zip(creates, ids, strict=True)}
        failed = False
        try:
            writes = [a for a in actions if not self._settled_without_writing(a)]
            if self.by_page and writes:
                writes = await self._write_page(writes)
            if self.concurrency > 1 and len(writes) > 1:
                await self._write_concurrently(writes)
            else:
                for action in writes:
                    await self._write(action)
        except BaseException:
            failed = True
            raise
        finally:
            await self._finish(failed)

    def _settled_without_writing(self, action: Action) -> bool:
        """Skips and withheld deletes: counted and recorded, nothing written."""
        if action.op == "skip":
            self.counts["skipped"] += 1
            link = self.links.get(action.src_key)
            if action.refresh and link is not None and action.fingerprint:
                # the same content under an older fingerprint version: the link says so in
                # the current one from now on (the target is not written)
                self.new_links.append(
                    Link(
                        link.src_key, link.dst_key, action.fingerprint, link.dst_fp, link.write_count, link.window_start
                    )
                )
            self._event(action, "skip", action.reason or "unchanged since the last write")
            if action.src_key in self.target.waiting:  # the target has this version already
                self.commit.settled.setdefault(self.target.ref, []).append(action.src_key)
            return True
        if action.op == "withhold":
            self.counts["withheld"] += 1
            self._event(action, "withhold", action.reason or f"deleted in {self.src_ref}; deletes.enabled is off")
            return True
        return False

    async def _write_concurrently(self, writes: list[Action]) -> None:
        """Up to ``concurrency`` writes in flight, one source key's writes in order. The
        first failure stops new writes; the ones in flight finish (what they confirmed is
        kept by _finish), then the failure is raised."""
        by_key: dict[str, list[Action]] = {}
        for action in writes:
            by_key.setdefault(action.src_key, []).append(action)
        queue = list(by_key.values())
        queue.reverse()  # popped from the end: in page order
        failures: list[BaseException] = []

        async def worker() -> None:
            while queue and not failures:
                group = queue.pop()
                for action in group:
                    try:
                        await self._write(action)
                    except BaseException as exc:
                        failures.append(exc)
                        return

        await _gather_all([worker() for _ in range(min(self.concurrency, len(queue)))])
        if failures:
            raise failures[0]

    async def _write_page(self, writes: list[Action]) -> list[Action]:
        """The page's creates and updates through :meth:`Connector.write_page`, in one
        call after one self-fence; returns the rest (deletes, unlinks), written one by one."""
        page = [a for a in writes if a.op == "create" or a.op == "update"]
        if not page:
            return writes
        await self.engine._fence(self.name)
        target, counts, waiting = self.target, self.counts, self.target.waiting
        records: list[tuple[str | None, Record]] = []
        for action in page:
            assert action.record is not None  # a create or an update carries its record
            records.append((action.dst_key if action.op == "update" else None, action.record))
        try:
            answers = await target.connector.write_page(target.stream, records)
        except Exception as exc:
            self._event(page[0], "error", f"writing the page failed, the run stopped: {exc}")
            raise
        if len(answers) != len(page):
            raise FatalError(
                f"{target.ref}: write_page answered {len(answers)} results for {len(page)} records", system=target.ref
            )
        for action, stored in zip(page, answers, strict=True):
            if isinstance(stored, RecordRejected):
                self._reject(action, stored)
                continue
            link = Link(action.src_key, stored.key, action.fingerprint, stored_fingerprint(stored, action))
            self.new_links.append(link)
            if action.op == "create":
                if target.index is not None and (value := natural_value(target, stored)):
                    target.index.setdefault(value, []).append((stored.key, link.dst_fp or ""))
                counts["created"] += 1
                self._event(action, "create", None, target_key=stored.key)
            else:
                counts["updated"] += 1
                self._event(action, "update", action.reason or None)
            if action.src_key in waiting:
                self.commit.settled.setdefault(target.ref, []).append(action.src_key)
        return [a for a in writes if a.op != "create" and a.op != "update"]

    # -- one record ------------------------------------------------------------------------
    async def _write(self, action: Action) -> None:
        """One create, update, delete or unlink: a refusal is a dead letter; anything else
        that goes wrong is raised (after its event is recorded)."""
        # no write once this run may have lost its lease (it stalled past a share of
        # state.lease_ttl without renewing): the new holder may be writing the same records
        await self.engine._fence(self.name)
        assert action.record is not None or action.op in ("delete", "unlink")
        try:
            if action.op == "create" and self.target.lookup:
                found = await self._found_instead(action)
                if found is None:
                    return
                action = found
            if action.op == "create":
                await self._create(action)
            elif action.op == "update":
                await self._update(action)
            elif action.op == "delete":
                assert action.dst_key is not None
                await self.target.connector.delete(self.target.stream, action.dst_key)
                self.unlinks.append(action.src_key)
                self.counts["deleted"] += 1
                self.counts["_deletes_in_run"] = self.counts.get("_deletes_in_run", 0) + 1
                self._event(action, "delete", action.reason or f"deleted in {self.src_ref}")
            elif action.op == "unlink":
                self.unlinks.append(action.src_key)
                self.counts["_deletes_in_run"] = self.counts.get("_deletes_in_run", 0) + 1
                self._event(
                    action,
                    "unlink",
                    action.reason
                    or f"deleted in {self.src_ref}; {self.target.ref} keeps its record (deletes.action: unlink)",
                )
            if action.src_key in self.target.waiting and action.op in ("create", "update"):
                self.commit.settled.setdefault(self.target.ref, []).append(action.src_key)
        except RecordRejected as exc:
            self._reject(action, exc)
        except Exception as exc:
            self._event(action, "error", f"{action.op} failed, the run stopped: {exc}")
            raise

    async def _found_instead(self, action: Action) -> Action | None:
        """Before a create where links may have been lost: the target's record with the same
        natural key, if there is one. Returns the action to carry out (the create, or an
        update of the record found), or None when the record found is already up to date."""
        assert action.record is not None
        found = await lookup(self.target, action.record)
        if found is None:
            return action
        found_key, found_fp = found  # made earlier, its link lost (state deleted, system renamed)
        log.info("link.rebuilt", pipeline=self.name, target=self.target.ref, key=action.src_key, dst=found_key)
        if action.src_key in self.batch:  # no create after all
            self.commit.resolved_intents.append(self.batch.pop(action.src_key))
        if found_fp == action.fingerprint:
            self.new_links.append(Link(action.src_key, found_key, action.fingerprint, found_fp))
            self.counts["skipped"] += 1
            self._event(
                action,
                "link",
                f"found in {self.target.ref} as {found_key} (its link was lost); already up to date",
                target_key=found_key,
            )
            return None
        return Action("update", action.src_key, action.record, action.fingerprint, found_key)

    async def _create(self, action: Action) -> None:
        assert action.record is not None
        target = self.target
        intent_id = self.batch.pop(action.src_key, None)
        if self.one_at_a_time:
            intent_id = await self.engine._state(
                self.engine.store.step_intent,
                self.name,
                target.ref,
                confirm=self.in_flight,
                begin=(action.src_key, action.fingerprint or "", action.record.model_dump_json()),
            )
            self.in_flight = None
        try:
            stored = await target.connector.create(target.stream, action.record)
        except RecordRejected:
            if intent_id is not None:
                self.commit.resolved_intents.append(intent_id)  # refused: nothing was made
            raise
        except RetriableError as exc:
            if exc.unprocessed and intent_id is not None:
                self.commit.resolved_intents.append(intent_id)  # never reached the app
                raise
            raise unknown_outcome(target, action.src_key, exc) from None
        except FerrymanError as exc:
            if isinstance(exc, AuthError | NotSupportedError) and intent_id is not None:
                self.commit.resolved_intents.append(intent_id)  # refused before acting
                raise
            raise unknown_outcome(target, action.src_key, exc) from None
        link = Link(action.src_key, stored.key, action.fingerprint, stored_fingerprint(stored, action))
        self.new_links.append(link)
        if target.index is not None and (value := natural_value(target, action.record)):
            target.index.setdefault(value, []).append((stored.key, link.dst_fp or ""))
        if intent_id is not None:
            if self.one_at_a_time:
                self.in_flight = (intent_id, self.src_ref, link)
            self.commit.resolved_intents.append(intent_id)
        self.counts["created"] += 1
        self._event(action, "create", None, target_key=stored.key)

    async def _update(self, action: Action) -> None:
        assert action.record is not None and action.dst_key is not None
        target = self.target
        before: Before = await self.engine._before_update(self.journal, target, action, self.links.get(action.src_key))
        stored = await target.connector.update(target.stream, action.dst_key, action.record)
        self.new_links.append(Link(action.src_key, stored.key, action.fingerprint, stored_fingerprint(stored, action)))
        self.counts["updated"] += 1
        changed, overwrote = before if before is not None else (None, None)
        self._event(action, "update", action.reason or None, fields=list(changed[1]) if changed else None)
        if overwrote is not None:
            self.journal.conflict(
                self.commit.conflicts,
                system=target.ref,
                side="target",
                record_key=action.dst_key,
                src_key=action.src_key,
                policy="source_wins",
                reason=f"changed in {target.ref} since the last sync; the update from {self.src_ref} "
                "overwrote it (one-way pipelines: the source wins)",
                lost=overwrote[0],
                won=overwrote[1],
            )

    def _reject(self, action: Action, exc: RecordRejected) -> None:
        reason = redact(str(exc))
        self.commit.dead_letters.append(
            NewDeadLetter(
                self.src_ref,
                self.target.ref,
                action.src_key,
                reason,
                src_key=action.src_key,
                kind="rejected",
                payload=action.record.model_dump(mode="json") if action.record else None,
            )
        )
        self.counts["dead_lettered"] += 1
        log.warning(
            "record.dead_lettered", pipeline=self.name, target=self.target.ref, key=action.src_key, reason=reason
        )

    def _event(
        self,
        action: Action,
        what: str,
        detail: str | None,
        *,
        target_key: str | None = None,
        fields: list[str] | None = None,
    ) -> None:
        self.journal.event(
            self.commit.events,
            self.src_ref,
            action.src_key,
            what,
            target=self.target.ref,
            target_key=target_key or action.dst_key,
            fingerprint=action.fingerprint,
            fields=fields,
            detail=detail,
        )

    # -- the end of the page ---------------------------------------------------------------
    async def _finish(self, failed: bool) -> None:
        """Hand the page's outcome to its commit. After a failure, commit what was confirmed
        at once (links, resolved intents, their history): the page will not be committed."""
        commit, pair = self.commit, (self.src_ref, self.target.ref)
        self.journal.letters(commit.events, commit.dead_letters[self.letters_before :])
        commit.links.setdefault(pair, []).extend(self.new_links)
        if self.unlinks:
            commit.unlinks.setdefault(pair, []).extend(self.unlinks)
        if not (failed and self.use_intents and (self.new_links or self.unlinks or commit.resolved_intents)):
            return
        # a failure cut the page short: keep what was confirmed, the cursor stays put
        partial = PageCommit(
            self.name,
            links={pair: self.new_links},
            resolved_intents=list(commit.resolved_intents),
            events=commit.events[self.events_before :],
            conflicts=commit.conflicts[self.conflicts_before :],
            run_id=commit.run_id,
        )
        if self.unlinks:
            partial.unlinks = {pair: self.unlinks}
        await self.engine._state(self.engine.store.commit_page, partial)
        commit.links.pop(pair, None)
        commit.unlinks.pop(pair, None)
        commit.resolved_intents.clear()
        del commit.events[self.events_before :]
        del commit.conflicts[self.conflicts_before :]


async def _gather_all(jobs: list[Awaitable[None]]) -> None:
    """Wait for every job, even when one fails or this task is cancelled: a write in flight
    is never abandoned halfway through its bookkeeping. A cancellation is passed on once
    every job has ended."""
    every = asyncio.gather(*jobs, return_exceptions=True)
    try:
        await asyncio.shield(every)
    except asyncio.CancelledError:
        await every
        raise
