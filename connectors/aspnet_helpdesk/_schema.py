"""The helpdesk's entities as its API shows them: DataContract names, property types, order.

This is the API's side of the contract, shared by the connector and the simulator. The
seed documentation names the resources and a few properties (``ClosedTime``,
``ReopenedTime``, ``DoNotSendEmail``, a customer's cell phone and services, a ticket's
description, start/end, expected resolution and next update times); the rest of each
entity is our best reading of a typical ASP.NET helpdesk model and is documented as such
in the README.

Two facts about ASP.NET Web API shape everything here:

- The XML formatter is the ``DataContractSerializer``: members are written, and must be
  read, in DataContract order (base class first, then ordinal alphabetical order of the
  member names). A member that arrives out of order is silently ignored, which on a
  full-replacement PUT means it is erased. :attr:`Entity.order` is that order.
- ``PUT`` replaces the whole entity; for tickets only :attr:`Entity.updatable` properties
  change at all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "CUSTOMER",
    "DEFAULT_NAMESPACE",
    "ENTITIES",
    "OPERATOR",
    "PRIORITIES",
    "SERVICE",
    "TICKET",
    "Entity",
    "Kind",
    "Prop",
]

DEFAULT_NAMESPACE = "http://schemas.datacontract.org/2004/07/Helpdesk.Models"
"""``http://schemas.datacontract.org/2004/07/`` + the CLR namespace of the models (unknown: configurable)."""

PRIORITIES = ("Low", "Normal", "High", "Urgent")
"""Ticket priorities, as the API spells them."""


class Kind(enum.StrEnum):
    """How a property is typed on the wire."""

    INT = "int"
    STR = "string"
    DATETIME = "datetime"
    BOOL = "bool"
    LIST = "list"  # a list of another entity (a customer's Services)


@dataclass(frozen=True, slots=True)
class Prop:
    name: str
    kind: Kind
    item: str | None = None  # for LIST: the entity name of the items


@dataclass(frozen=True, slots=True)
class Entity:
    """One DataContract type and the resource that serves it."""

    name: str  # DataContract name: ``Ticket``
    resource: str  # path segment: ``Tickets`` (/api/Tickets)
    props: tuple[Prop, ...]
    #: written by the server only: ignored in request bodies
    server_owned: frozenset[str] = frozenset({"Id", "CreatedTime", "ModifiedTime"})
    #: what a PUT may change; ``None``: every property that is not server-owned
    updatable: frozenset[str] | None = None
    #: request-only flags: accepted in bodies, never stored, always ``false`` in responses
    flags: frozenset[str] = frozenset()
    by_name: dict[str, Prop] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {p.name: p for p in self.props})

    @property
    def order(self) -> list[str]:
        """DataContract member order: ordinal (code point) order of the names."""
        return sorted(self.by_name)

    @property
    def list_root(self) -> str:
        """The root element of a list in XML: ``ArrayOfTicket``."""
        return f"ArrayOf{self.name}"

    def writable(self) -> list[str]:
        """Properties a POST sets (everything but server-owned ones and flags)."""
        return [p.name for p in self.props if p.name not in self.server_owned and p.name not in self.flags]

    def replaced_by_put(self) -> list[str]:
        """Properties a PUT replaces (an omitted one is erased)."""
        if self.updatable is not None:
            return [n for n in self.writable() if n in self.updatable]
        return self.writable()


def _props(*items: tuple[str, Kind] | tuple[str, Kind, str]) -> tuple[Prop, ...]:
    return tuple(Prop(*item) for item in items)


SERVICE = Entity(
    "Service",
    "Services",
    _props(
        ("Id", Kind.INT),
        ("Name", Kind.STR),
        ("Description", Kind.STR),
        ("CreatedTime", Kind.DATETIME),
        ("ModifiedTime", Kind.DATETIME),
    ),
)

OPERATOR = Entity(
    "Operator",
    "Operators",
    _props(
        ("Id", Kind.INT),
        ("Name", Kind.STR),
        ("Email", Kind.STR),
        ("CreatedTime", Kind.DATETIME),
        ("ModifiedTime", Kind.DATETIME),
    ),
)

CUSTOMER = Entity(
    "Customer",
    "Customers",
    _props(
        ("Id", Kind.INT),
        ("FirstName", Kind.STR),
        ("LastName", Kind.STR),
        ("Email", Kind.STR),
        ("CellPhone", Kind.STR),
        ("Company", Kind.STR),
        ("Services", Kind.LIST, "Service"),
        ("CreatedTime", Kind.DATETIME),
        ("ModifiedTime", Kind.DATETIME),
        ("DoNotSendEmail", Kind.BOOL),
    ),
    flags=frozenset({"DoNotSendEmail"}),
)

TICKET = Entity(
    "Ticket",
    "Tickets",
    _props(
        ("Id", Kind.INT),
        ("Title", Kind.STR),
        ("Description", Kind.STR),
        ("Priority", Kind.STR),
        ("CustomerId", Kind.INT),
        ("ServiceId", Kind.INT),
        ("OperatorId", Kind.INT),
        ("StartTime", Kind.DATETIME),
        ("EndTime", Kind.DATETIME),
        ("ExpectedResolutionTime", Kind.DATETIME),
        ("NextUpdateTime", Kind.DATETIME),
        ("ClosedTime", Kind.DATETIME),
        ("ReopenedTime", Kind.DATETIME),
        ("CreatedTime", Kind.DATETIME),
        ("ModifiedTime", Kind.DATETIME),
        ("DoNotSendEmail", Kind.BOOL),
    ),
    updatable=frozenset(
        {
            "Description",
            "StartTime",
            "EndTime",
            "ExpectedResolutionTime",
            "NextUpdateTime",
            "ClosedTime",
            "ReopenedTime",
        }
    ),
    flags=frozenset({"DoNotSendEmail"}),
)

ENTITIES: dict[str, Entity] = {e.name: e for e in (TICKET, CUSTOMER, SERVICE, OPERATOR)}
