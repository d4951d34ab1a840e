from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError

from ferryman.records import (
    FINGERPRINT_VERSION,
    FINGERPRINTS,
    Contact,
    Invoice,
    Ticket,
    fingerprint,
    fingerprint_version,
    outdated,
    same_content,
)
from ferryman.timeutil import format_utc, parse_datetime, parse_duration


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValidationError, match="naive datetime"):
        Ticket(key="1", updated_at=datetime(2026, 1, 1, 12, 0))


def test_non_utc_datetime_is_converted_to_utc() -> None:
    berlin = timezone(timedelta(hours=1))
    t = Ticket(key="1", updated_at=datetime(2026, 1, 1, 13, 0, tzinfo=berlin))
    assert t.updated_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert t.updated_at.utcoffset() == timedelta(0)
    assert t.model_dump(mode="json")["updated_at"] == "2026-01-01T12:00:00Z"


def test_iso_strings_with_offsets_become_utc() -> None:
    t = Ticket.model_validate({"key": "1", "updated_at": "2026-03-01T08:00:00-05:00"})
    assert format_utc(t.updated_at) == "2026-03-01T13:00:00Z"


def test_money_is_exact_decimal_and_serialises_as_string() -> None:
    inv = Invoice(key="9", updated_at=datetime.now(UTC), amount=Decimal("0.10") + Decimal("0.20"), currency="USD")
    assert inv.amount == Decimal("0.30")
    assert inv.model_dump(mode="json")["amount"] == "0.30"


def test_fingerprint_ignores_identity_and_timing_but_not_content() -> None:
    now = datetime.now(UTC)
    a = Contact(key="a", updated_at=now, email="x@example.com", extra={"native": 1})
    b = Contact(key="b", updated_at=now + timedelta(days=1), email="x@example.com")
    c = Contact(key="a", updated_at=now, email="y@example.com")
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        Ticket.model_validate({"key": "1", "updated_at": "2026-01-01T00:00:00Z", "colour": "red"})


@pytest.mark.parametrize(
    ("text", "tz", "expected"),
    [
        ("2026-01-02T03:04:05Z", None, "2026-01-02T03:04:05Z"),
        ("2026-01-02 03:04:05", "Europe/Berlin", "2026-01-02T02:04:05Z"),
        ("1700000000", None, "2023-11-14T22:13:20Z"),
        ("2026-07-01T12:00:00+02:00", None, "2026-07-01T10:00:00Z"),
    ],
)
def test_parse_datetime(text: str, tz: str | None, expected: str) -> None:
    assert format_utc(parse_datetime(text, assume_tz=tz)) == expected


def test_parse_datetime_refuses_naive_without_timezone() -> None:
    with pytest.raises(ValueError, match="no timezone"):
        parse_datetime("2026-01-02 03:04:05")


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("2m", 120), ("1h30m", 5400), ("500ms", 0.5), (15, 15)])
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_parse_duration_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("5 parsecs")


def test_log_events_keep_record_keys_but_mask_secret_fields() -> None:
    from ferryman.redact import redact_obj, redact_url

    event = redact_obj({"event": "record.dead_lettered", "key": "T-1001", "api_key": "abc123", "token": "t0k3n"})
    assert event["key"] == "T-1001" and event["api_key"] == "***" and event["token"] == "***"
    assert (
        redact_url("https://desk.example/api/Tickets?key=s3cr3t&page=2")
        == "https://desk.example/api/Tickets?key=***&page=2"
    )


def test_fingerprints_are_stable_across_versions() -> None:
    """Links store fingerprints: a change to how they are computed would make every linked
    record look changed once (a round of needless writes). These values are pinned."""
    t0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    contact = Contact(
        key="c1", updated_at=t0, email="ann@example.com", first_name="Ann", last_name="Lée", extra={"x": 1}
    )
    invoice = Invoice(key="i1", updated_at=t0, amount=Decimal("1234.50"), currency="EUR")
    ticket = Ticket(key="t1", updated_at=t0, subject="Printer on fire", status="open")
    # version 2 (what runs write now) and version 1 (what links made before hold): pinned both
    assert fingerprint(contact) == "2:7fec0c32752a7059b3e0871dca240498"
    assert fingerprint(invoice) == "2:dcae183378cd8bd3c71fe2c9c9fcf3d7"
    assert fingerprint(ticket) == "2:650a894bbef50b9c68b642f8a749fca6"
    v1 = FINGERPRINTS[1]
    assert v1(contact) == "7fec0c32752a7059b3e0871dca240498"
    assert v1(invoice) == "dcae183378cd8bd3c71fe2c9c9fcf3d7"
    assert v1(ticket) == "650a894bbef50b9c68b642f8a749fca6"
    closed = ticket.model_copy(update={"closed_at": t0})  # where the two versions' bytes differ
    assert (fingerprint(closed), v1(closed)) == (
        "2:2131cd023c4731c16df801936d5d5d7b",
        "74cffbeb24294db56d7ae3c8bdf6b04b",
    )


def test_a_fingerprint_of_an_older_version_still_compares() -> None:
    t0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    ticket = Ticket(key="t1", updated_at=t0, subject="Printer on fire", status="open", closed_at=t0)
    stored_v1 = FINGERPRINTS[1](ticket)
    assert (fingerprint_version(stored_v1), fingerprint_version(fingerprint(ticket))) == (1, FINGERPRINT_VERSION)
    assert same_content(ticket, stored_v1) and outdated(stored_v1)
    assert same_content(ticket, fingerprint(ticket)) and not outdated(fingerprint(ticket))
    edited = ticket.model_copy(update={"subject": "Printer fixed"})
    assert not same_content(edited, stored_v1) and not same_content(edited, fingerprint(ticket))
    assert not same_content(ticket, None)
    assert not same_content(ticket, "9:" + "0" * 32), "an unknown (newer) version never compares equal"


def test_sqlite_timestamp_text_round_trips_as_aware_utc() -> None:
    from ferryman.timeutil import from_db_time, sqlite_text

    berlin = datetime(2026, 3, 1, 10, 30, 15, 250000, tzinfo=timezone(timedelta(hours=1)))
    assert sqlite_text(berlin) == "2026-03-01 09:30:15.250000"  # SQLAlchemy's SQLite DateTime layout
    assert from_db_time(sqlite_text(berlin)) == berlin
    assert from_db_time("2026-03-01 09:30:15") == datetime(2026, 3, 1, 9, 30, 15, tzinfo=UTC)
    assert from_db_time(None) is None
