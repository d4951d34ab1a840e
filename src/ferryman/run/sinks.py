"""The lifecycle of a run's file-like targets, written once for every kind of run.

A target with ``transactional_writes`` (a CSV file, a webhook outbox) publishes nothing
until told: before a run it is restored to the state of its last commit (what a crash or a
failed page left past it is cut back), each page's commit carries its checkpoint, and at
the end of the run what was written is published, in a fenced commit like a page. After a
failure only what was committed is published; after a lost lease or an unreachable state
database nothing is (the next run's restore cuts the rest back, exactly as after a crash).
One-way runs, two-way runs and dead-letter replays all go through :class:`Sinks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import structlog

from ferryman.errors import LeaseLost, StateUnavailable
from ferryman.redact import redact
from ferryman.state import PageCommit

if TYPE_CHECKING:
    from ferryman.connector import Connector
    from ferryman.engine import Engine

__all__ = ["Sink", "Sinks"]

log = structlog.get_logger("ferryman.engine")


class Sink(Protocol):
    """A run's target (one-way) or side (two-way), as the sink lifecycle sees it."""

    @property
    def ref(self) -> str: ...
    @property
    def connector(self) -> Connector: ...
    @property
    def stream(self) -> str: ...
    @property
    def transactional(self) -> bool: ...


class Sinks:
    """The transactional ones among a run's targets (see the module's docstring)."""

    def __init__(self, engine: Engine, name: str, targets: Sequence[Sink]) -> None:
        self.engine, self.name = engine, name
        self.targets = [t for t in targets if t.transactional]

    async def restore(self) -> None:
        """Back to the last commit, before the run writes."""
        for target in self.targets:
            checkpoint = await self.engine._state(self.engine.store.get_checkpoint, self.name, target.ref)
            await target.connector.restore(target.stream, checkpoint)

    async def checkpoint(self, commit: PageCommit) -> None:
        """Make the page's rows durable; their state is committed with the page."""
        for target in self.targets:
            commit.checkpoints[target.ref] = await target.connector.checkpoint(target.stream)

    async def publish(self) -> None:
        """Publish what was written. A write like any other: only while the lease is surely
        ours, and the published state is committed fenced, as a page is."""
        if not self.targets:
            return
        await self.engine._fence(self.name, now=True)
        published = PageCommit(self.name)
        for target in self.targets:
            data = await target.connector.finish(target.stream)
            if data is not None:
                published.checkpoints[target.ref] = data
        if published.checkpoints:
            await self.engine._state(self.engine.store.commit_page, published)

    async def publish_committed(self) -> None:
        """After a failed run: publish what its pages committed, not the rows a page cut
        short left behind them. Best effort: the run's own error is what is reported."""
        try:
            await self.restore()
            await self.publish()
        except Exception as exc:
            log.warning("run.publish_failed", pipeline=self.name, error=redact(str(exc)))

    async def end(self, failure: BaseException | None) -> None:
        """The end of a run that wrote: publish, or what was committed, or nothing."""
        if failure is None:
            await self.publish()
        elif not isinstance(failure, LeaseLost | StateUnavailable):
            await self.publish_committed()
