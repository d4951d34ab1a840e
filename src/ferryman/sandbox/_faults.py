"""Fault injection shared by every simulator.

A spec is a comma-separated list of ``kind:rate[:param=value...]``::

    429:0.05:retry_after=2,503:0.02,5xx:0.05,slow:0.1:delay=1.5,drop:0.02,malformed:0.01

====================  ======================================================================
kind                  what the client sees
====================  ======================================================================
``429``, ``503``      that status with ``Retry-After`` (``retry_after=`` seconds, default 1;
                      ``format=date`` sends an IMF-fixdate instead of delay-seconds)
``5xx``               a server error, 500, 502 or 504 (``status=`` picks one)
``500`` ... ``599``   that server error (503 excepted: it is the throttling kind above)
``slow``              the answer comes ``delay=`` seconds late (default 1.0)
``drop``              the connection is closed without any response
``malformed``         the real answer with its body cut in half (``mode=garble``: an invalid
                      byte sequence spliced into the middle instead)
====================  ======================================================================

``rate`` is the probability (0..1) that one API request gets that fault. ``slow`` is drawn on
its own and combines with the others; the rest are exclusive, so their rates must add up to
at most 1. Draws come from a RNG seeded with the simulator's seed, so one request sequence
meets the same faults every run.

A :class:`Burst` is the deterministic companion: the next N requests answer 429 or 503.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Burst", "Fault", "FaultDecision", "FaultInjector", "FaultSpec", "FaultSpecError"]

RetryAfterFormat = Literal["seconds", "date"]

_THROTTLE_KINDS = frozenset({"429", "503"})
_SERVER_ERROR = re.compile(r"^5(\d\d|xx)$")
_GENERIC_5XX = (500, 502, 504)
_PARAMS: dict[str, frozenset[str]] = {
    "throttle": frozenset({"retry_after", "format"}),
    "server_error": frozenset({"status"}),
    "slow": frozenset({"delay"}),
    "drop": frozenset(),
    "malformed": frozenset({"mode"}),
}


class FaultSpecError(ValueError):
    """A fault spec that does not parse; the message names the offending part."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One kind of fault and how often it strikes."""

    kind: str  # "429", "503", "5xx", "500".."599", "slow", "drop", "malformed"
    rate: float
    retry_after: float = 1.0  # throttling kinds: seconds to ask for
    retry_after_format: RetryAfterFormat = "seconds"
    status: int | None = None  # server errors: fixed status (None: 500/502/504 at random)
    delay: float = 1.0  # slow: seconds
    mode: Literal["truncate", "garble"] = "truncate"  # malformed

    @property
    def family(self) -> str:
        """``throttle``, ``server_error``, ``slow``, ``drop`` or ``malformed``."""
        if self.kind in _THROTTLE_KINDS:
            return "throttle"
        if _SERVER_ERROR.match(self.kind):
            return "server_error"
        return self.kind

    def __str__(self) -> str:
        parts = [self.kind, _num(self.rate)]
        if self.family == "throttle":
            parts.append(f"retry_after={_num(self.retry_after)}")
            if self.retry_after_format == "date":
                parts.append("format=date")
        elif self.family == "server_error" and self.kind == "5xx" and self.status is not None:
            parts.append(f"status={self.status}")
        elif self.family == "slow":
            parts.append(f"delay={_num(self.delay)}")
        elif self.family == "malformed" and self.mode != "truncate":
            parts.append(f"mode={self.mode}")
        return ":".join(parts)


def _num(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """A parsed fault spec: which faults, how often. ``str()`` gives the canonical spec back."""

    faults: tuple[Fault, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> FaultSpec:
        """Parse ``kind:rate[:param=value...],...``; raise :class:`FaultSpecError` naming the bad part."""
        if text is None or not text.strip():
            return cls()
        faults = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            faults.append(_parse_fault(part))
        spec = cls(tuple(faults))
        exclusive = sum(f.rate for f in spec.faults if f.family != "slow")
        if exclusive > 1.0 + 1e-9:
            raise FaultSpecError(
                f"fault rates add up to {exclusive:g}; the kinds other than slow exclude each other, "
                "so their rates must add up to at most 1"
            )
        return spec

    def __bool__(self) -> bool:
        return bool(self.faults)

    def __str__(self) -> str:
        return ",".join(str(f) for f in self.faults)


def _parse_fault(part: str) -> Fault:
    fields = part.split(":")
    if len(fields) < 2:
        raise FaultSpecError(f"fault {part!r}: expected kind:rate[:param=value...]")
    kind, rate_text, *params = (f.strip() for f in fields)
    kind = kind.lower()
    probe = Fault(kind, 0.0)
    family = probe.family
    if family not in _PARAMS:
        raise FaultSpecError(
            f"fault {part!r}: unknown kind {kind!r} (kinds: 429, 503, 5xx, 500..599, slow, drop, malformed)"
        )
    try:
        rate = float(rate_text)
    except ValueError:
        rate = math.nan
    if not 0.0 <= rate <= 1.0:
        raise FaultSpecError(f"fault {part!r}: rate {rate_text!r} is not a number between 0 and 1")
    values: dict[str, str] = {}
    for param in params:
        name, sep, value = param.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise FaultSpecError(f"fault {part!r}: parameter {param!r} is not name=value")
        if name not in _PARAMS[family]:
            allowed = ", ".join(sorted(_PARAMS[family])) or "none"
            raise FaultSpecError(f"fault {part!r}: unknown parameter {name!r} for {kind} (allowed: {allowed})")
        values[name] = value.strip()

    def number(name: str, default: float, *, minimum: float = 0.0) -> float:
        if name not in values:
            return default
        try:
            result = float(values[name])
        except ValueError:
            result = math.nan
        if not result >= minimum or math.isinf(result):
            raise FaultSpecError(f"fault {part!r}: {name}={values[name]!r} is not a number >= {minimum:g}")
        return result

    if family == "throttle":
        fmt_text = values.get("format", "seconds").lower()
        if fmt_text not in ("seconds", "date"):
            raise FaultSpecError(f"fault {part!r}: format={values['format']!r} (use seconds or date)")
        fmt: RetryAfterFormat = "date" if fmt_text == "date" else "seconds"
        return Fault(kind, rate, retry_after=number("retry_after", 1.0), retry_after_format=fmt)
    if family == "server_error":
        status: int | None = None if kind == "5xx" else int(kind)
        if "status" in values:
            if kind != "5xx":
                raise FaultSpecError(f"fault {part!r}: status= only goes with 5xx")
            if not re.fullmatch(r"5\d\d", values["status"]) or values["status"] == "503":
                raise FaultSpecError(f"fault {part!r}: status={values['status']!r} is not a 5xx other than 503")
            status = int(values["status"])
        return Fault(kind, rate, status=status)
    if family == "slow":
        return Fault(kind, rate, delay=number("delay", 1.0))
    if family == "malformed":
        mode_text = values.get("mode", "truncate").lower()
        if mode_text not in ("truncate", "garble"):
            raise FaultSpecError(f"fault {part!r}: mode={values['mode']!r} (use truncate or garble)")
        return Fault(kind, rate, mode="garble" if mode_text == "garble" else "truncate")
    return Fault(kind, rate)


@dataclass(slots=True)
class Burst:
    """The next ``count`` API requests answer ``status`` (429 or 503) with ``Retry-After``."""

    count: int
    status: int = 429
    retry_after: float = 1.0
    retry_after_format: RetryAfterFormat = "seconds"

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("a burst needs a count >= 0")
        if self.status not in (429, 503):
            raise ValueError(f"a burst answers 429 or 503, not {self.status}")
        if self.retry_after < 0:
            raise ValueError("retry_after cannot be negative")
        if self.retry_after_format not in ("seconds", "date"):
            raise ValueError("retry_after_format is 'seconds' or 'date'")


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What the injector decided for one request."""

    fault: Fault | None = None  # the exclusive fault to apply, if any
    delay: float = 0.0  # seconds to wait first (slow)
    status: int | None = None  # the concrete status for throttle and server-error faults

    @property
    def kind(self) -> str | None:
        return self.fault.kind if self.fault else None


@dataclass
class FaultInjector:
    """Draws faults for API requests from a spec and a seeded RNG; also runs bursts."""

    spec: FaultSpec = field(default_factory=FaultSpec)
    seed: int = 1
    injected: Counter[str] = field(default_factory=Counter)
    burst: Burst | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(f"ferryman-faults:{self.seed}")

    def replace(self, spec: FaultSpec | str | None) -> None:
        """Use a new spec from now on (the RNG carries on; counts are kept)."""
        self.spec = spec if isinstance(spec, FaultSpec) else FaultSpec.parse(spec)

    def start_burst(
        self,
        count: int,
        status: int = 429,
        retry_after: float = 1.0,
        retry_after_format: RetryAfterFormat = "seconds",
    ) -> Burst:
        """Make the next ``count`` requests answer ``status`` with ``Retry-After: retry_after``."""
        self.burst = Burst(count, status, retry_after, retry_after_format)
        return self.burst

    def draw(self) -> FaultDecision:
        """Decide the fault for the next API request."""
        burst = self.burst
        if burst is not None and burst.count > 0:
            burst.count -= 1
            if burst.count == 0:
                self.burst = None
            fault = Fault(
                str(burst.status),
                1.0,
                retry_after=burst.retry_after,
                retry_after_format=burst.retry_after_format,
            )
            self.injected[f"burst_{burst.status}"] += 1
            return FaultDecision(fault, 0.0, burst.status)
        if not self.spec:
            return FaultDecision()
        delay = 0.0
        for fault in self.spec.faults:
            if fault.family == "slow" and self._rng.random() < fault.rate:
                delay += fault.delay
                self.injected["slow"] += 1
        roll = self._rng.random()
        edge = 0.0
        for fault in self.spec.faults:
            if fault.family == "slow":
                continue
            edge += fault.rate
            if roll < edge:
                status: int | None = None
                if fault.family == "throttle":
                    status = int(fault.kind)
                elif fault.family == "server_error":
                    status = fault.status or self._rng.choice(_GENERIC_5XX)
                self.injected[fault.kind] += 1
                return FaultDecision(fault, delay, status)
        return FaultDecision(None, delay)

    def describe(self) -> dict[str, object]:
        """JSON-ready state: the spec, the running burst, counts of what was injected."""
        burst = self.burst
        return {
            "spec": str(self.spec),
            "burst": None
            if burst is None
            else {
                "remaining": burst.count,
                "status": burst.status,
                "retry_after": burst.retry_after,
                "format": burst.retry_after_format,
            },
            "injected": dict(self.injected),
        }
