from datetime import UTC, datetime

import pytest

from ferryman.errors import ConfigError, ValidationFailed
from ferryman.mapping import FieldMapping
from ferryman.records import Contact, Ticket

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_same_kind_copies_unmapped_fields_and_applies_rules() -> None:
    m = FieldMapping(
        {
            "priority": "extra.prio",
            "status": {"from": "status", "map": {"pending": "open"}},
            "type": {"value": "support"},
        },
        Ticket,
        Ticket,
    )
    out = m.apply(Ticket(key="1", updated_at=NOW, subject="s", status="pending", extra={"prio": "high"}))
    assert (out.subject, out.priority, out.status, out.type) == ("s", "high", "open", "support")


def test_invalid_mapped_value_is_a_validation_failure() -> None:
    m = FieldMapping({"status": {"value": "exploded"}}, Ticket, Ticket)
    with pytest.raises(ValidationFailed, match="status"):
        m.apply(Ticket(key="1", updated_at=NOW))


def test_unknown_target_field_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="has no field 'colour'"):
        FieldMapping({"colour": "subject"}, Ticket, Ticket)


def test_cross_kind_mapping_only_carries_mapped_fields() -> None:
    m = FieldMapping({"subject": "email"}, Contact, Ticket)
    out = m.apply(Contact(key="c1", updated_at=NOW, email="a@example.com", first_name="A"))
    assert isinstance(out, Ticket)
    assert out.subject == "a@example.com" and out.key == "c1"


def test_inverse_mapping_for_two_way_pipelines() -> None:
    m = FieldMapping({"status": {"from": "status", "map": {"pending": "open", "closed": "open"}}}, Ticket, Ticket)
    with pytest.raises(ConfigError, match="one-to-one"):
        m.inverse()
    m = FieldMapping(
        {
            "description": "subject",
            "status": {"from": "status", "map": {"pending": "open", "open": "pending"}},
            "organisation_key": None,
        },
        Ticket,
        Ticket,
    )
    back = m.inverse()
    out = back.apply(Ticket(key="1", updated_at=NOW, description="d", status="open", organisation_key="42"))
    assert (out.subject, out.status, out.organisation_key) == ("d", "pending", None)
