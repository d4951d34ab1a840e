"""Planning: what to do with each record for one target. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ferryman.records import Record, outdated, same_content

if TYPE_CHECKING:
    # a type only: the rules read links, never the store (Link lives beside it)
    from ferryman.state import Link

Op = Literal["create", "update", "delete", "unlink", "skip", "withhold"]


@dataclass(slots=True)
class Action:
    op: Op
    src_key: str
    record: Record | None  # the mapped record to write
    fingerprint: str | None
    dst_key: str | None = None
    reason: str = ""
    #: a skip whose link holds an older version's fingerprint: the link gets the current one
    refresh: bool = False


def plan_one_way(
    items: list[tuple[Record, str]],
    links: dict[str, Link],
    *,
    deletes_enabled: bool,
    delete_action: Literal["delete", "unlink"] = "delete",
    blocked: frozenset[str] = frozenset(),
) -> list[Action]:
    """Plan one target's writes for a page of (mapped record, fingerprint) pairs.

    - a link whose source fingerprint equals the record's: skip (re-read, nothing changed)
    - deleted at the source: delete or unlink when deletes are enabled and a link exists;
      withhold (counted, nothing written) when they are not
    - linked: update; unlinked: create (unless an unresolved create intent blocks it)
    """
    actions: list[Action] = []
    for record, fp in items:
        link = links.get(record.key)
        if record.deleted:
            if link is None:
                actions.append(Action("skip", record.key, None, fp, reason="deleted at source, never linked"))
            elif not deletes_enabled:
                # counted and shown as withheld: the target still has a record the source deleted
                actions.append(Action("withhold", record.key, None, fp, link.dst_key, "deletes are not enabled"))
            else:
                actions.append(Action(delete_action, record.key, record, fp, link.dst_key))
            continue
        if link is not None:
            if same_content(record, link.src_fp, fp):
                refresh = outdated(link.src_fp)
                actions.append(Action("skip", record.key, None, fp, link.dst_key, "unchanged", refresh=refresh))
            else:
                actions.append(Action("update", record.key, record, fp, link.dst_key))
        elif record.key in blocked:
            actions.append(Action("skip", record.key, None, fp, reason="an earlier create is unconfirmed (see dlq)"))
        else:
            actions.append(Action("create", record.key, record, fp))
    return actions
