"""Who watches a run: a dry run's report, the progress bar, and the stop request.

One object handed down a run instead of ``dry_run``/``report``/``progress``/``stop``
arguments threaded through every signature. The run asks it what to do (``dry_run``: plan
and report, write nothing) and tells it what happened (a committed page, through
:meth:`Observer.page_committed`); it stops after the page in hand once ``stop`` is set.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ferryman.plan_report import DryRunReport

__all__ = ["Observer", "Progress"]


class Progress(Protocol):
    """Told after every committed page of a one-way run: ``records`` read in that page,
    the run's ``counts`` so far, and ``total``, how many records the whole read brings when
    the source says or estimates it (:attr:`ferryman.connector.Page.total`), else ``None``."""

    def __call__(self, records: int, counts: dict[str, int], total: int | None, /) -> None: ...


@dataclass(slots=True)
class Observer:
    """What a run is watched by (see the module's docstring). The default watches nothing."""

    dry_run: bool = False
    #: a dry run's plan, told every action it would take (``ferryman sync --dry-run``)
    report: DryRunReport | None = None
    progress: Progress | None = None
    #: set by a signal or the control API: the run stops after committing the page in hand
    stop: asyncio.Event | None = None

    @property
    def writes(self) -> bool:
        """Whether the run writes (anything but a dry run)."""
        return not self.dry_run

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def page_committed(self, records: int, counts: dict[str, int], total: int | None) -> None:
        if self.progress is not None:
            self.progress(records, counts, total)
