"""Issue 17: the rest connector maps a page at once (``Mapper.page``: the stream's fields read
by straight-line code, then one pydantic-core call for the page). That fast path must give
exactly what the per-record path gives, or nothing (then the page goes record by record and
each bad native is a reject with its reason); and it must really be taken for clean pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferryman.api import MAX_KEY_LENGTH, MAX_NESTING, to_record, to_records
from ferryman.connector import Reject
from ferryman.records import Contact
from tests.fuzz import SHORT, shaped_like
from tests.fuzz.test_fuzz_mapping import _connector, _samples_rest


@pytest.fixture(scope="module")
def rest(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _connector("rest", "sandbox", tmp_path_factory.mktemp("rest"))


def _one_by_one(mapper: Any, natives: list[Any], stream: str) -> list[Any]:
    return [mapper.record(n, stream) for n in natives]


def test_a_clean_page_takes_the_fast_path_and_equals_the_records_one_by_one(rest: Any) -> None:
    for stream, natives in _samples_rest().items():
        mapper = rest._mappers[stream]
        page = mapper.page(natives)
        assert page is not None, f"{stream}: a clean page of the sandbox's own natives takes the fast path"
        assert page == _one_by_one(mapper, natives, stream)
    # the contacts are the usual declaration (top-level keys, no value map): straight-line code;
    # the tickets map their status values, so they are read by to_canonical, a page at a time too
    contacts = rest._mappers["contacts"]
    assert contacts._plain is not None and rest._mappers["tickets"]._plain is None
    natives = _samples_rest()["contacts"]
    assert [contacts._plain(n) for n in natives] == [contacts.to_canonical(n) for n in natives]


def test_one_bad_native_sends_the_page_record_by_record(rest: Any) -> None:
    mapper = rest._mappers["contacts"]
    natives = _samples_rest()["contacts"]
    bad = [
        {**natives[0], "updated_at": "not a time"},  # a converter refuses it
        {k: v for k, v in natives[0].items() if k != "id"},  # no key
        {**natives[0], "id": ""},  # an empty key
        {**natives[0], "id": "a\x00b"},  # a key the state store cannot hold
        {**natives[0], "id": "k" * (MAX_KEY_LENGTH + 1)},
        {**natives[0], "email": {"nested": True}},  # a dict where text belongs: pydantic refuses it
        "not an object",
    ]
    for native in bad:
        page = [*natives, native]
        assert mapper.page(page) is None, native
        results = rest._map(rest._spec("contacts")[0], mapper, page)
        assert len(results[0]) == len(natives) and len(results[1]) == 1, native


def test_to_records_refuses_what_to_record_refuses() -> None:
    deep: Any = "leaf"
    for _ in range(MAX_NESTING + 1):
        deep = {"d": deep}
    data = {"key": "1", "updated_at": "2026-01-01T00:00:00Z", "extra": {"profile": deep}}
    assert to_records(Contact, [data]) is None
    assert isinstance(to_record(Contact, lambda: data, ref="1"), Reject)
    fine = {"key": "1", "updated_at": "2026-01-01T00:00:00Z", "extra": {"profile": {"d": [1, 2]}}}
    assert to_records(Contact, [fine]) == [to_record(Contact, lambda: fine, ref="1")]


_SAMPLES = _samples_rest()


@given(
    st.sampled_from(sorted(_SAMPLES)).flatmap(
        lambda stream: st.tuples(st.just(stream), st.lists(st.sampled_from(_SAMPLES[stream]).flatmap(shaped_like)))
    )
)
@SHORT
def test_the_fast_path_never_differs_from_the_records_one_by_one(case: tuple[str, list[Any]]) -> None:
    """Natives shaped like the simulator's (members kept, changed in kind or value, dropped,
    added): whenever the page path answers, it answers what the per-record path does."""
    stream, natives = case
    rest = _REST
    mapper = rest._mappers[stream]
    page = mapper.page(natives)
    slow = _one_by_one(mapper, natives, stream)
    if page is not None:
        assert page == slow
    spec = rest._spec(stream)[0]
    records, rejects = rest._map(spec, mapper, natives)
    kept = {r.key: r for r in slow if not isinstance(r, Reject)}
    assert records == list(kept.values())
    assert len(rejects) == sum(isinstance(r, Reject) for r in slow)


_REST = _connector("rest", "sandbox", Path(__import__("tempfile").mkdtemp(prefix="fm-page-")))


def test_the_generated_reader_holds_names_as_literals(rest: Any) -> None:
    """Field names and native keys from the configuration enter the generated code only as
    repr literals: a key that looks like code is read as a key."""
    from ferryman_connectors.rest import Mapper, StreamSpec

    spec = StreamSpec.model_validate(
        {
            "record": "contact",
            "path": "/c",
            "fields": {"key": "x'); exit(3) #", "updated_at": 'u"\\n', "email": "e"},
        }
    )
    mapper = Mapper(spec, None)
    assert mapper._plain is not None
    native = {"x'); exit(3) #": 7, 'u"\\n': "2026-01-01T00:00:00Z", "e": "a@b.c", "other": 1}
    assert mapper._plain(native) == mapper.to_canonical(native)
    assert orjson.loads(orjson.dumps(mapper._plain(native)["extra"])) == {"other": 1}
