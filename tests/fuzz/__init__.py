"""Issue 16: property-based fuzzing of what Ferryman reads from outside (config files, every
connector's native records, webhook bodies).

Each target is a strategy plus a check that raises only on a crash. ``make test`` runs every
target briefly and deterministically (:data:`SHORT`: derandomized, so CI cannot flake on a
lucky draw); ``make fuzz`` runs the ``fuzz``-marked tests, which keep drawing fresh random
examples for ``FERRYMAN_FUZZ_SECONDS`` per target (see the Makefile).
"""

from __future__ import annotations

import os
import string
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from typing import Any

from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from ferryman.connector import Reject
from ferryman.records import Record, fingerprint

#: what ``make test`` runs: a fixed seed sequence, no example database, no deadline (a loaded
#: 2-core CI machine makes per-example timing meaningless), and no shrinking (a failure is
#: reported as drawn, in seconds; ``make fuzz`` shrinks)
SHORT = settings(
    max_examples=100,
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
    report_multiple_bugs=False,  # one exception, so an xfail's ``raises`` can match it
)
#: one batch of ``make fuzz``: random, repeated until the target's time is spent
LONG = settings(
    max_examples=200,  # batches this small keep FUZZ_SECONDS a fair bound
    derandomize=False,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
    report_multiple_bugs=False,  # one exception, so an xfail's ``raises`` can match it
)
FUZZ_SECONDS = float(os.environ.get("FERRYMAN_FUZZ_SECONDS", "70"))

Check = Callable[[Any], None]


def _test(
    strategy: st.SearchStrategy[Any], check: Check, found: Sequence[Any], profile: settings
) -> Callable[[], None]:
    test = given(strategy)(check)
    for case in found:  # every crash found once is tried first, every time
        test = example(case)(test)
    return profile(test)


def run_short(strategy: st.SearchStrategy[Any], check: Check, found: Sequence[Any] = ()) -> None:
    """The ``make test`` run of one target; ``found``: inputs that crashed it once."""
    _test(strategy, check, found, SHORT)()


def run_long(
    strategy: st.SearchStrategy[Any], check: Check, found: Sequence[Any] = (), seconds: float = FUZZ_SECONDS
) -> int:
    """Fresh random batches of one target until ``seconds`` have passed; returns the batch count."""
    test = _test(strategy, check, found, LONG)
    deadline = time.monotonic() + seconds
    batches = 0
    while time.monotonic() < deadline:
        test()
        batches += 1
    return batches


# -- values ---------------------------------------------------------------------------------

#: strings real APIs and hostile ones send where a parser has to work: dates in many shapes,
#: numbers as text, money, control characters, huge and tiny values, nothing at all
TRICKY_TEXT = [
    "",
    " ",
    "0",
    "-1",
    "1e309",
    "NaN",
    "Infinity",
    "9" * 40,
    "0x1F",
    "null",
    "true",
    "2025-03-27T08:26:56Z",
    "2025-03-27T08:26:56+14:00",
    "2025-02-30T25:61:61Z",
    "2025-03-27",
    "0000-00-00 00:00:00",
    "9999-12-31T23:59:59-12:00",
    "03/27/2025 08:26:56 am",
    "27/03/2025",
    "1692615272",
    "-62135596801",
    "$1.00 USD",
    "1,234.56",
    "1.234,56 EUR",
    "$-0.00",
    "\u20ac1e400",
    "a\x00b",
    "line\rbreak",
    "\ud7ff\ufffd",
    "=cmd|' /C calc'!A0",
    "x" * 300,
    "a@b",
    "@",
    "<b>x</b>",
]


@cache
def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Anything a JSON body can hold (no NaN: JSON has none), with text biased to the tricky."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
        st.sampled_from(TRICKY_TEXT),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def _like(value: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of the same shape as ``value``, plus the occasional anything."""
    other = json_values(6)
    if isinstance(value, bool):
        same: st.SearchStrategy[Any] = st.booleans()
    elif isinstance(value, int):
        same = st.one_of(st.integers(), st.integers(min_value=-5, max_value=5), st.just(str(value)))
    elif isinstance(value, float | Decimal):
        same = st.one_of(st.floats(allow_nan=False), st.decimals(allow_nan=False, allow_infinity=False))
    elif isinstance(value, str):
        same = st.one_of(st.just(value), _mutated(value), st.sampled_from(TRICKY_TEXT), st.text(max_size=20))
    elif isinstance(value, datetime | date):
        same = st.one_of(st.just(value), st.datetimes(), st.dates(), st.sampled_from(TRICKY_TEXT))
    elif isinstance(value, Mapping) and depth < 4:
        same = shaped_like(value, depth + 1)
    elif isinstance(value, list) and value and depth < 4:
        same = st.lists(_like(value[0], depth + 1), max_size=3)
    else:
        same = st.just(value)
    return st.one_of(same, same, same, other)


def _mutated(text: str) -> st.SearchStrategy[str]:
    """``text`` with one character inserted, replaced or removed."""
    alphabet = string.printable + "\u00e9\u2028\u0000\ufeff"

    @st.composite
    def one(draw: st.DrawFn) -> str:
        if not text:
            return draw(st.text(alphabet, max_size=3))
        at = draw(st.integers(0, len(text) - 1))
        how = draw(st.sampled_from(["insert", "replace", "remove"]))
        char = draw(st.sampled_from(alphabet))
        if how == "insert":
            return text[:at] + char + text[at:]
        if how == "replace":
            return text[:at] + char + text[at + 1 :]
        return text[:at] + text[at + 1 :]

    return one()


def shaped_like(sample: Mapping[str, Any], depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts shaped like ``sample``: each member kept, changed in kind or value, or dropped,
    and a few unknown members added. Built once per sample: hypothesis strategies are cheap
    to draw from and dear to construct."""
    members = st.fixed_dictionaries({name: _like(value, depth) for name, value in sample.items()})
    dropped = st.sets(st.sampled_from(list(sample)), max_size=2) if sample else st.just(set())
    extras = st.dictionaries(st.text(max_size=6), json_values(4), max_size=2)

    def assemble(parts: tuple[dict[str, Any], set[str], dict[str, Any]]) -> dict[str, Any]:
        kept, gone, added = parts
        return {**{k: v for k, v in kept.items() if k not in gone}, **added}

    return st.tuples(members, dropped, extras).map(assemble)


def assert_clean(result: Record | Reject) -> None:
    """A mapped native is a record the rest of Ferryman can store and compare, or a reject
    with a reason; a record that could not be written to the state store and read back
    would fail every later run instead of being dead-lettered now."""
    if isinstance(result, Reject):
        assert isinstance(result.reason, str) and result.reason.strip(), result
        return
    assert isinstance(result, Record), type(result)
    fingerprint(result)
    again = type(result).model_validate_json(result.model_dump_json())
    assert again.key == result.key
