"""What a run tells the history: per-record events (``ferryman explain``) and conflict-journal
entries (``ferryman conflicts``), filtered by the configuration.

One-way runs (:mod:`ferryman.engine`) and two-way runs (:mod:`ferryman.twoway`) call
:meth:`RunJournal.event` and :meth:`RunJournal.conflict` at their decision points, into the
``events``/``conflicts`` lists of the :class:`~ferryman.state.PageCommit` being built, so
that a page's history is committed in the page's own transaction or not at all. A dry run
records nothing: nothing happened.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from ferryman.config import HistoryConfig, JournalConfig
from ferryman.state import NewDeadLetter
from ferryman.state.history import NewConflict, NewEvent, journal_values

__all__ = ["RunJournal"]


class RunJournal:
    """The history settings of one pipeline's run, applied where events are made."""

    __slots__ = ("check_target", "enabled", "masked", "mode")

    def __init__(self, history: HistoryConfig, journal: JournalConfig) -> None:
        self.mode = history.events
        self.enabled = journal.enabled
        self.check_target = journal.enabled and journal.check_target
        self.masked = tuple(journal.redact)

    @property
    def records_events(self) -> bool:
        return self.mode != "off"

    def event(
        self,
        out: list[NewEvent],
        source: str,
        key: str | None,
        action: str,
        *,
        target: str | None = None,
        target_key: str | None = None,
        fingerprint: str | None = None,
        fields: tuple[str, ...] | list[str] | None = None,
        detail: str | None = None,
    ) -> None:
        """Add one event to ``out`` unless the configuration leaves it out: nothing with
        ``history.events: off``, and an unchanged record's skip only with ``all``."""
        if self.mode == "off" or key is None or (action == "skip" and self.mode != "all"):
            return
        out.append(
            NewEvent(
                source,
                key,
                action,
                target,
                target_key,
                fingerprint,
                None if fields is None else tuple(fields),
                detail,
            )
        )

    def letters(self, out: list[NewEvent], letters: Iterable[NewDeadLetter], *, skip: Collection[str] = ()) -> None:
        """A ``dead-letter`` event for each of ``letters`` (except the kinds in ``skip``,
        which have events of their own), keyed by the source key or, for a record the
        source could not read, its ref."""
        for letter in letters:
            if letter.kind not in skip:
                self.event(
                    out,
                    letter.src,
                    letter.src_key or letter.ref,
                    "dead-letter",
                    target=letter.dst,
                    detail=f"{letter.kind}: {letter.reason}",
                )

    def conflict(
        self,
        out: list[NewConflict],
        *,
        system: str,
        side: str,
        record_key: str,
        src_key: str | None,
        policy: str,
        reason: str,
        lost: Mapping[str, Any],
        won: Mapping[str, Any],
    ) -> None:
        """Journal values about to be overwritten (nothing when ``journal.enabled`` is off
        or nothing is lost); secret and ``journal.redact`` fields are masked here, before
        anything is stored."""
        if not self.enabled or not lost:
            return
        out.append(
            NewConflict(
                system,
                side,
                record_key,
                src_key,
                policy,
                reason,
                journal_values(lost, self.masked),
                journal_values(won, self.masked),
            )
        )
