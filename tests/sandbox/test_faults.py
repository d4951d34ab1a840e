"""Fault specs: what users type after ``--faults``, and how the injector draws from them."""

from __future__ import annotations

import pytest

from ferryman.sandbox import FaultInjector, FaultSpec, FaultSpecError


def test_full_spec_parses_to_each_kind_with_its_parameters():
    spec = FaultSpec.parse(
        "429:0.05:retry_after=2,503:0.02:format=date,5xx:0.05,502:0.01,slow:0.1:delay=1.5,drop:0.02,malformed:0.01"
    )
    kinds = {f.kind: f for f in spec.faults}
    assert set(kinds) == {"429", "503", "5xx", "502", "slow", "drop", "malformed"}
    assert kinds["429"].rate == 0.05 and kinds["429"].retry_after == 2
    assert kinds["503"].retry_after_format == "date" and kinds["503"].retry_after == 1
    assert kinds["502"].status == 502 and kinds["5xx"].status is None
    assert kinds["slow"].delay == 1.5
    assert kinds["malformed"].mode == "truncate"


def test_str_gives_a_spec_that_parses_to_the_same_thing():
    spec = FaultSpec.parse(" 429:0.5:retry_after=3 , slow:0.2:delay=0.25,malformed:0.1:mode=garble ")
    assert FaultSpec.parse(str(spec)) == spec


@pytest.mark.parametrize("text", ["", None, "  ", ","])
def test_empty_spec_means_no_faults(text):
    assert not FaultSpec.parse(text)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("429", "'429'"),  # no rate
        ("418:0.1", "unknown kind '418'"),
        ("slow:abc", "rate 'abc'"),
        ("drop:1.5", "rate '1.5'"),
        ("429:0.1:retry_after=soon", "retry_after='soon'"),
        ("429:0.1:retry_after=-1", "retry_after='-1'"),
        ("429:0.1:format=rfc850", "format='rfc850'"),
        ("slow:0.1:delay", "parameter 'delay' is not name=value"),
        ("drop:0.1:delay=2", "unknown parameter 'delay' for drop"),
        ("5xx:0.1:status=503", "status='503'"),
        ("500:0.1:status=502", "status= only goes with 5xx"),
        ("malformed:0.1:mode=shred", "mode='shred'"),
        ("429:0.6,5xx:0.6", "add up to 1.2"),
    ],
)
def test_bad_spec_names_the_bad_part(text, named):
    with pytest.raises(FaultSpecError) as caught:
        FaultSpec.parse(f"drop:0.01,{text}")
    assert named in str(caught.value)


def test_slow_combines_with_the_exclusive_kinds():
    spec = FaultSpec.parse("slow:1:delay=0.5,429:1")
    decision = FaultInjector(spec, seed=3).draw()
    assert decision.delay == 0.5 and decision.status == 429


def test_same_seed_same_faults_different_seed_different_faults():
    spec = FaultSpec.parse("429:0.2,5xx:0.2,drop:0.1,slow:0.3:delay=0.1")

    def sequence(seed: int) -> list[tuple[str | None, int | None, float]]:
        injector = FaultInjector(spec, seed=seed)
        return [(d.kind, d.status, d.delay) for d in (injector.draw() for _ in range(200))]

    assert sequence(7) == sequence(7)
    assert sequence(7) != sequence(8)
    kinds = {kind for kind, _, _ in sequence(7)}
    assert {"429", "5xx", "drop", None} <= kinds


def test_rates_are_roughly_honoured():
    injector = FaultInjector(FaultSpec.parse("503:0.25"), seed=1)
    hits = sum(injector.draw().status == 503 for _ in range(4000))
    assert 850 < hits < 1150


def test_generic_5xx_picks_real_server_errors():
    injector = FaultInjector(FaultSpec.parse("5xx:1"), seed=1)
    assert {injector.draw().status for _ in range(100)} == {500, 502, 504}


def test_burst_answers_the_next_n_requests_then_stops():
    injector = FaultInjector(FaultSpec(), seed=1)
    injector.start_burst(3, status=503, retry_after=7)
    statuses = [injector.draw().status for _ in range(5)]
    assert statuses == [503, 503, 503, None, None]
    assert injector.injected["burst_503"] == 3


def test_burst_refuses_other_statuses():
    with pytest.raises(ValueError, match="429 or 503"):
        FaultInjector().start_burst(1, status=500)
