"""Rate limiting and politeness accounting for simulators.

:class:`RateLimiter` enforces "at most N requests in any window of W seconds" exactly, with a
log of admitted request times per credential (not an approximating counter), so the
``Retry-After`` it computes is the true time until a slot frees.

:class:`Stats` is what tests read to prove a client is polite: every request's arrival,
every 429/503 sent with its ``Retry-After``, and every request that came back before the
time it was told to wait (an *early retry*).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["CredentialStats", "RateLimiter", "Stats"]

Clock = Callable[[], float]


class RateLimiter:
    """At most ``limit`` admitted requests per credential in any ``window`` seconds.

    A window is half-open, ``(t - window, t]``: a request arriving exactly ``window`` seconds
    after the oldest admitted one is admitted. Refused requests do not take a slot, so a
    client that waits the ``Retry-After`` it was given is admitted.
    """

    def __init__(self, limit: float, window: float = 60.0, *, clock: Clock = time.monotonic) -> None:
        if not limit > 0:
            raise ValueError(f"a rate limit must be positive, not {limit!r}")
        if not window > 0:
            raise ValueError(f"a rate-limit window must be positive, not {window!r}")
        # A fractional limit below one (0.5 per minute) is one request per stretched window.
        if limit < 1:
            self.capacity, self.window = 1, window / limit
        else:
            self.capacity, self.window = int(limit), window
        self.limit = limit
        self._clock = clock
        self._admitted: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def acquire(self, credential: str) -> float:
        """Admit a request (return 0.0) or return the seconds until this credential has a free slot."""
        now = self._clock()
        with self._lock:
            times = self._admitted.setdefault(credential, deque())
            horizon = now - self.window
            while times and times[0] <= horizon:
                times.popleft()
            if len(times) < self.capacity:
                times.append(now)
                return 0.0
            return times[0] + self.window - now

    def reset(self) -> None:
        """Forget every admitted request."""
        with self._lock:
            self._admitted.clear()


@dataclass
class CredentialStats:
    """Counters for one credential."""

    requests: int = 0
    throttled: int = 0  # 429 and 503 answers
    early_retries: int = 0
    max_in_window: int = 0
    not_before: float = -math.inf  # monotonic time before which it was told not to come back
    window: deque[float] = field(default_factory=deque, repr=False)

    def as_dict(self) -> dict[str, int]:
        """JSON-ready counters."""
        return {
            "requests": self.requests,
            "throttled": self.throttled,
            "early_retries": self.early_retries,
            "max_in_window": self.max_in_window,
        }


class Stats:
    """Requests, statuses, throttling and early retries, overall and per credential.

    ``window`` is the length of the sliding window for ``max_in_window`` (60 s unless a test
    shortens it). ``tolerance`` forgives a retry that arrives that many seconds early: clocks
    tick in whole microseconds and sleeping can wake a hair early, and neither is rudeness.
    Thread-safe: a simulator in a :class:`~ferryman.sandbox.SimulatorThread` may be read from
    the test's thread.
    """

    def __init__(
        self,
        window: float = 60.0,
        *,
        history: int = 10_000,
        tolerance: float = 0.01,
        clock: Clock = time.monotonic,
    ) -> None:
        self.window = window
        self.history = history
        self.tolerance = tolerance
        self._clock = clock
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Start counting afresh (also forgets every pending ``Retry-After``)."""
        with self._lock:
            self.started = self._clock()
            self.started_at = datetime.now(UTC)
            self.requests = 0
            self.by_status: Counter[str] = Counter()
            self.throttled = 0
            self.early_retries = 0
            self.max_in_window = 0
            self.credentials: dict[str, CredentialStats] = {}
            self._window: deque[float] = deque()
            self.timestamps: deque[float] = deque(maxlen=self.history)
            self.throttles: deque[dict[str, Any]] = deque(maxlen=self.history)
            self.violations: deque[dict[str, Any]] = deque(maxlen=self.history)

    def arrived(self, credential: str) -> float | None:
        """Count a request's arrival; return how many seconds early it is if it is an early retry."""
        now = self._clock()
        with self._lock:
            self.requests += 1
            self.timestamps.append(now - self.started)
            self.max_in_window = max(self.max_in_window, _slide(self._window, now, self.window))
            who = self.credentials.setdefault(credential, CredentialStats())
            who.requests += 1
            who.max_in_window = max(who.max_in_window, _slide(who.window, now, self.window))
            early = who.not_before - now
            if early > self.tolerance:
                who.early_retries += 1
                self.early_retries += 1
                self.violations.append(
                    {"t": round(now - self.started, 6), "credential": credential, "early_by": round(early, 6)}
                )
                return early
            return None

    def answered(self, credential: str, status: int | str, retry_after: float | None = None) -> None:
        """Count an answer; for a 429/503, ``retry_after`` is the wait it asked for, in seconds."""
        now = self._clock()
        with self._lock:
            self.by_status[str(status)] += 1
            if status in (429, 503):
                who = self.credentials.setdefault(credential, CredentialStats())
                self.throttled += 1
                who.throttled += 1
                if retry_after is not None:
                    who.not_before = max(who.not_before, now + retry_after)
                self.throttles.append(
                    {
                        "t": round(now - self.started, 6),
                        "credential": credential,
                        "status": status,
                        "retry_after": retry_after,
                    }
                )

    def for_credential(self, credential: str) -> CredentialStats:
        """The counters of one credential (zeros when it never came)."""
        with self._lock:
            return self.credentials.get(credential, CredentialStats())

    def snapshot(self) -> dict[str, Any]:
        """Everything, JSON-ready (what ``GET /__sandbox/stats`` answers)."""
        with self._lock:
            return {
                "requests": self.requests,
                "by_status": dict(self.by_status),
                "throttled": self.throttled,
                "early_retries": self.early_retries,
                "max_in_window": self.max_in_window,
                "window": self.window,
                "started_at": self.started_at.isoformat().replace("+00:00", "Z"),
                "elapsed": round(self._clock() - self.started, 6),
                "credentials": {name: c.as_dict() for name, c in self.credentials.items()},
                "throttles": list(self.throttles),
                "violations": list(self.violations),
                "timestamps": [round(t, 6) for t in self.timestamps],
            }


def _slide(times: deque[float], now: float, window: float) -> int:
    """Add ``now`` to a window log and return how many entries lie in ``(now - window, now]``."""
    horizon = now - window
    while times and times[0] <= horizon:
        times.popleft()
    times.append(now)
    return len(times)
