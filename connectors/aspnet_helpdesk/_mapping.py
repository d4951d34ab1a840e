"""Native entities ↔ canonical records, and the read-merge-write of a PUT. Pure functions.

The mapping tables are in README.md (shipped with the package) and the package docstring.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ferryman.records import Contact, Ticket
from ferryman.timeutil import format_utc, parse_datetime

from ._schema import PRIORITIES, Entity

__all__ = [
    "TICKET_TIMES",
    "Refs",
    "customer_changes",
    "customer_for_create",
    "customer_to_canonical",
    "reference_to_canonical",
    "ticket_changes",
    "ticket_for_create",
    "ticket_status",
    "ticket_to_canonical",
]

#: Ticket times with no canonical field: read into ``extra``, written from ``extra``.
TICKET_TIMES = ("StartTime", "EndTime", "ExpectedResolutionTime", "NextUpdateTime")
#: Ticket fields a PUT cannot change (the API ignores them); a change to one is reported, not sent.
TICKET_FIXED = ("subject", "priority", "type", "requester_key", "assignee")
_ONE_SECOND = timedelta(seconds=1)
_PRIORITY = {p.lower(): p for p in PRIORITIES}


@dataclass
class Refs:
    """The helpdesk's operators and services, by id: how ``assignee`` and ``type`` are resolved."""

    operators: dict[int, dict[str, Any]] = field(default_factory=dict)
    services: dict[int, dict[str, Any]] = field(default_factory=dict)

    def operator_label(self, operator_id: int | None) -> str | None:
        """An operator's email (or name, without one)."""
        if operator_id is None or operator_id not in self.operators:
            return None
        operator = self.operators[operator_id]
        return operator.get("Email") or operator.get("Name")

    def operator_id(self, label: str) -> int | None:
        wanted = label.strip().casefold()
        for id, operator in self.operators.items():
            for name in ("Email", "Name"):
                value = operator.get(name)
                if isinstance(value, str) and value.strip().casefold() == wanted:
                    return id
        return None

    def service_name(self, service_id: int | None) -> str | None:
        if service_id is None or service_id not in self.services:
            return None
        name = self.services[service_id].get("Name")
        return name if isinstance(name, str) else None

    def service_id(self, name: str) -> int | None:
        wanted = name.strip().casefold()
        for id, service in self.services.items():
            value = service.get("Name")
            if isinstance(value, str) and value.strip().casefold() == wanted:
                return id
        return None


def _json_ready(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_utc(value)
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


def _leftovers(native: Mapping[str, Any], used: Iterable[str]) -> dict[str, Any]:
    """Members no canonical field holds, JSON-ready, for ``extra`` (request-only flags left out)."""
    skip = {*used, "DoNotSendEmail"}
    return {name: _json_ready(value) for name, value in native.items() if name not in skip}


def _required_time(entity: str, native: Mapping[str, Any]) -> datetime:
    value = native.get("ModifiedTime")
    if not isinstance(value, datetime):
        raise ValueError(f"{entity}.ModifiedTime is empty: a record needs its modification time")
    return value


def _key(entity: str, native: Mapping[str, Any]) -> str:
    value = native.get("Id")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{entity}.Id is missing")
    return str(value)


# -- tickets ---------------------------------------------------------------------------------
def ticket_status(native: Mapping[str, Any]) -> tuple[bool, datetime | None]:
    """``(closed, closed_at)``: closed when ``ClosedTime`` is set and no later ``ReopenedTime`` is."""
    closed = native.get("ClosedTime")
    reopened = native.get("ReopenedTime")
    if isinstance(closed, datetime) and (not isinstance(reopened, datetime) or reopened < closed):
        return True, closed
    return False, None


def ticket_to_canonical(native: Mapping[str, Any], refs: Refs) -> dict[str, Any]:
    """The canonical :class:`~ferryman.records.Ticket` fields of a typed native ticket."""
    closed, closed_at = ticket_status(native)
    priority = native.get("Priority")
    customer = native.get("CustomerId")
    used = {"Id", "ModifiedTime", "CreatedTime", "Title", "Description", "Priority", "CustomerId"}
    if closed or native.get("ClosedTime") is None:
        used.add("ClosedTime")  # held by closed_at; a reopened ticket keeps it in extra as history
    return {
        "key": _key("Ticket", native),
        "updated_at": _required_time("Ticket", native),
        "subject": native.get("Title"),
        "description": native.get("Description"),
        "status": "closed" if closed else "open",
        "priority": priority.lower() if isinstance(priority, str) and priority else None,
        "type": refs.service_name(native.get("ServiceId")),
        "requester_key": str(customer) if customer is not None else None,
        "assignee": refs.operator_label(native.get("OperatorId")),
        "created_at": native.get("CreatedTime"),
        "closed_at": closed_at,
        "extra": _leftovers(native, used),
    }


def _native_priority(priority: str | None) -> str | None:
    if priority is None:
        return None
    native = _PRIORITY.get(priority.strip().lower())
    if native is None:
        raise ValueError(
            f"priority {priority!r} is not one of {', '.join(_PRIORITY)} (map it in the pipeline's mapping)"
        )
    return native


def _extra_time(record: Ticket, name: str) -> datetime | None:
    value = record.extra.get(name)
    if value is None or isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return parse_datetime(value)  # naive text from another system: refuse rather than guess
    except ValueError as exc:
        raise ValueError(f"extra.{name}: {exc}") from None


def _closing_time(record: Ticket, current: Mapping[str, Any], now: datetime) -> datetime:
    when = record.closed_at or now
    reopened = current.get("ReopenedTime")
    if isinstance(reopened, datetime) and when <= reopened:
        when = max(now, reopened + _ONE_SECOND)  # must be after the reopening, or it stays open
    return when


def _wants_closed(record: Ticket) -> bool:
    return record.status == "closed" or (record.status is None and record.closed_at is not None)


def ticket_for_create(record: Ticket, refs: Refs, customer_id: int | None, now: datetime) -> dict[str, Any]:
    """The members of a POST /api/Tickets for ``record``; ``ValueError`` when it cannot be one."""
    native: dict[str, Any] = {
        "Title": record.subject,
        "Description": record.description,
        "Priority": _native_priority(record.priority),
        "CustomerId": customer_id,
    }
    if record.type:
        service = refs.service_id(record.type)
        if service is None:
            raise ValueError(f"type {record.type!r} is not a service in the helpdesk (services: {_names(refs)})")
        native["ServiceId"] = service
    if record.assignee:
        operator = refs.operator_id(record.assignee)
        if operator is None:
            raise ValueError(f"assignee {record.assignee!r} is not an operator in the helpdesk")
        native["OperatorId"] = operator
    for name in TICKET_TIMES:
        native[name] = _extra_time(record, name)
    if _wants_closed(record):
        native["ClosedTime"] = _closing_time(record, {}, now)
    return {k: v for k, v in native.items() if v is not None}


def _names(refs: Refs) -> str:
    return ", ".join(sorted(str(s.get("Name")) for s in refs.services.values())) or "none"


def ticket_changes(
    current: Mapping[str, Any], record: Ticket, refs: Refs, *, empty_clears: bool, now: datetime
) -> tuple[dict[str, Any], list[str]]:
    """What a PUT must change in ``current`` to make it hold ``record``, and the fields it cannot.

    Only the properties the API lets a PUT change are touched: the description, the four
    times kept in ``extra``, and the status (closing sets ``ClosedTime``, reopening sets
    ``ReopenedTime``). A changed subject, priority, type, requester or assignee cannot be
    written and is returned by name so the caller can say so.
    """
    changes: dict[str, Any] = {}
    if (record.description is not None or empty_clears) and current.get("Description") != record.description:
        changes["Description"] = record.description
    for name in TICKET_TIMES:
        if name not in record.extra:
            continue
        value = _extra_time(record, name)
        if (value is not None or empty_clears) and current.get(name) != value:
            changes[name] = value
    closed, _ = ticket_status(current)
    if _wants_closed(record) and not closed:
        changes["ClosedTime"] = _closing_time(record, current, now)
    elif record.status in ("open", "pending") and closed:
        closed_time = current["ClosedTime"]
        changes["ReopenedTime"] = max(now, closed_time + _ONE_SECOND)
    canonical = ticket_to_canonical(current, refs)
    fixed = [
        name for name in TICKET_FIXED if getattr(record, name) is not None and getattr(record, name) != canonical[name]
    ]
    return changes, fixed


# -- customers -------------------------------------------------------------------------------
_CUSTOMER_FIELDS = {
    "Email": "email",
    "FirstName": "first_name",
    "LastName": "last_name",
    "CellPhone": "mobile",
    "Company": "organisation",
}


def customer_to_canonical(native: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical :class:`~ferryman.records.Contact` fields of a typed native customer."""
    out: dict[str, Any] = {
        "key": _key("Customer", native),
        "updated_at": _required_time("Customer", native),
        "created_at": native.get("CreatedTime"),
    }
    for member, name in _CUSTOMER_FIELDS.items():
        out[name] = native.get(member)
    extra = _leftovers(native, {"Id", "ModifiedTime", "CreatedTime", "Services", *_CUSTOMER_FIELDS})
    services = native.get("Services")
    if services is not None:
        extra["Services"] = [{"Id": s.get("Id"), "Name": s.get("Name")} for s in services]
    out["extra"] = extra
    return out


def customer_for_create(record: Contact) -> dict[str, Any]:
    """The members of a POST /api/Customers for ``record`` (no services: ids are per helpdesk)."""
    native: dict[str, Any] = {member: getattr(record, name) for member, name in _CUSTOMER_FIELDS.items()}
    native = {k: v for k, v in native.items() if v is not None}
    native["Services"] = []
    return native


def customer_changes(current: Mapping[str, Any], record: Contact, *, empty_clears: bool) -> dict[str, Any]:
    """The members a PUT must change in ``current`` (everything else is written back as it was)."""
    changes: dict[str, Any] = {}
    for member, name in _CUSTOMER_FIELDS.items():
        value = getattr(record, name)
        if value is None and not empty_clears:
            continue  # most sources simply lack the field: never erase what the helpdesk holds
        if current.get(member) != value:
            changes[member] = value
    return changes


# -- reference data --------------------------------------------------------------------------
def reference_to_canonical(entity: Entity, native: Mapping[str, Any]) -> dict[str, Any]:
    """A service or operator as a :class:`~ferryman.records.Reference`: ``Name`` plus ``extra``."""
    return {
        "key": _key(entity.name, native),
        "updated_at": _required_time(entity.name, native),
        "name": native.get("Name"),
        "extra": _leftovers(native, {"Id", "ModifiedTime", "Name"}),
    }
