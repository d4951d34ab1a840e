"""What a dry run would do, record by record: the observer a run reports its plan to.

The engine (one-way) and the two-way code call :meth:`DryRunReport.action` for every record
they plan, instead of formatting lines themselves; the command line renders the report as
text (:func:`describe`, :func:`summary_line`) or JSON (:meth:`DryRunReport.to_json`).

An action says what would happen in plain words: ``create`` in a target, ``update`` (with
the fields that would change, old -> new, where the target's current record was read),
``delete``, ``unlink``, ``withhold`` (a delete that ``deletes.enabled`` holds back), ``skip``
(unchanged), ``dead-letter``, and for two-way pipelines ``link`` (both sides already agree),
``conflict`` (a human decides) and ``loop`` (quarantined by the loop breaker). Values are
redacted (:func:`ferryman.redact.redact`, and fields named like secrets are masked) when
they enter the report, so no rendering of it can leak a secret.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ferryman.records import Record, overwritten
from ferryman.redact import mask_field, redact_cut
from ferryman.terminal import number

__all__ = [
    "ACTIONS",
    "ActionKind",
    "DryRunReport",
    "FieldChange",
    "PlannedAction",
    "changes_between",
    "describe",
    "render",
    "summary_line",
]

ActionKind = Literal[
    "create", "update", "delete", "unlink", "withhold", "skip", "dead-letter", "link", "conflict", "loop"
]
#: every kind of action, in the order a summary names them
ACTIONS: tuple[ActionKind, ...] = (
    "create",
    "update",
    "delete",
    "skip",
    "unlink",
    "withhold",
    "link",
    "conflict",
    "loop",
    "dead-letter",
)
#: named in every summary, even at 0; the others only when they happened
ALWAYS = ("create", "update", "delete", "skip")
#: how long a value may be in a text line before it is cut
SHOWN = 60
NOT_READ = "(current value not read)"


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field an update would change, as JSON-ready (and redacted) values."""

    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """One thing a run would do with one record.

    ``source``/``key`` name where the content comes from, ``target``/``target_key`` what
    would be written (for two-way pipelines ``side`` says which side ``target`` is:
    ``from`` or ``to``). ``changes`` is set for updates whose target record was read:
    the fields that differ, old -> new (empty: the target already holds this content);
    ``None`` when the current record was not read or the action writes no fields."""

    action: ActionKind
    target: str | None
    key: str | None = None
    target_key: str | None = None
    source: str | None = None
    changes: dict[str, FieldChange] | None = None
    reason: str = ""
    side: Literal["from", "to"] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The action as the ``--json`` document lists it."""
        return {
            "action": self.action,
            "target": self.target,
            "key": self.key,
            "target_key": self.target_key,
            "source": self.source,
            "side": self.side,
            "changes": None
            if self.changes is None
            else {name: {"old": c.old, "new": c.new} for name, c in self.changes.items()},
            "reason": self.reason or None,
        }


def changes_between(current: Record, new: Record) -> dict[str, FieldChange]:
    """The content fields (those a fingerprint covers) in which ``new`` differs from
    ``current``: what an update writing ``new`` over ``current`` would change."""
    lost, won = overwritten(current, new)
    return {name: FieldChange(mask_field(name, lost[name]), mask_field(name, value)) for name, value in won.items()}


class DryRunReport:
    """Collects what a dry run would do; the run calls :meth:`action` once per record.

    ``listener`` (the command line printing lines as they come) is called with every
    action as it is reported, so that a long plan streams; ``keep`` false forgets actions
    once counted (a text rendering has printed them already), ``keep_skips`` false forgets
    the unchanged records even when keeping the rest (a summary counts them all)."""

    def __init__(
        self,
        pipeline: str,
        *,
        listener: Callable[[PlannedAction], None] | None = None,
        keep: bool = True,
        keep_skips: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.listener = listener
        self.keep = keep
        self.keep_skips = keep_skips
        self.actions: list[PlannedAction] = []
        self.counts: Counter[str] = Counter()
        #: per field, how many updates would change it
        self.fields: Counter[str] = Counter()

    def action(
        self,
        action: ActionKind,
        target: str | None,
        *,
        key: str | None = None,
        target_key: str | None = None,
        source: str | None = None,
        current: Record | None = None,
        new: Record | None = None,
        reason: str = "",
        side: Literal["from", "to"] | None = None,
    ) -> PlannedAction:
        """Report one planned action. For an update, pass the record it would write as
        ``new`` and the target's current record as ``current`` (``None``: not read)."""
        changes = changes_between(current, new) if current is not None and new is not None else None
        planned = PlannedAction(
            action, target, key, target_key, source, changes, redact_cut(reason, 500) if reason else "", side
        )
        self.counts[action] += 1
        if changes:
            self.fields.update(changes.keys())
        if self.keep and (self.keep_skips or action != "skip"):
            self.actions.append(planned)
        if self.listener is not None:
            self.listener(planned)
        return planned

    def summary(self) -> dict[str, Any]:
        """Counts by action (every kind, 0 included) and, for updates, by field."""
        return {
            **{kind: self.counts.get(kind, 0) for kind in ACTIONS},
            "fields": dict(sorted(self.fields.items(), key=lambda item: (-item[1], item[0]))),
        }

    def to_json(self, **run: Any) -> dict[str, Any]:
        """The ``sync --dry-run --json`` document; ``run`` adds the run's own facts
        (outcome, message, counts) next to the plan."""
        return {
            "pipeline": self.pipeline,
            **run,
            "actions": [a.as_dict() for a in self.actions],
            "summary": self.summary(),
        }


# -- text ----------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    """A value in a text line: strings quoted, everything cut to :data:`SHOWN` characters."""
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return repr(redact_cut(value, SHOWN, more="\u2026"))
    return redact_cut(json.dumps(value, ensure_ascii=False, default=str), SHOWN, more="\u2026")


def _at(target: str | None, key: str | None) -> str:
    if target is None:
        return "-"
    return f"{target}#{key}" if key else target


_VERB = {
    "create": "create",
    "update": "update",
    "delete": "delete",
    "unlink": "unlink",
    "withhold": "withhold the delete",
    "skip": "skip",
    "link": "link",
    "conflict": "conflict",
    "loop": "quarantine",
    "dead-letter": "dead-letter",
}


def describe(planned: PlannedAction) -> list[str]:
    """The lines a dry run prints for one action: the action in plain words (``create in
    out.tickets <- inbox.tickets#2``, ``update on the from-side (crm.contacts#c1) <-
    desk.contacts#d1``), then for an update one indented line per changed field."""
    origin = _at(planned.source, planned.key)
    place = _at(planned.target, planned.target_key)
    kind = planned.action
    if kind == "dead-letter":
        line = f"dead-letter {origin}" + (f" for {planned.target}" if planned.target else "")
    elif kind in ("link", "unlink", "conflict", "loop"):
        line = f"{_VERB[kind]} {origin} <-> {place}"
    elif kind == "skip":
        if planned.reason in ("", "unchanged"):
            return [f"skip {origin} (unchanged in {place})"]
        line = f"skip {origin} for {place}"
    else:
        preposition = "from" if kind in ("delete", "withhold") else "in"
        if planned.side is not None:
            preposition = "from" if preposition == "from" else "on"
            place = f"the {planned.side}-side ({place})"
        line = f"{_VERB[kind]} {preposition} {place} <- {origin}"
    if planned.reason:
        line += f": {planned.reason}"
    lines = [line]
    if kind == "update":
        if planned.changes is None:
            lines.append(f"    {NOT_READ}")
        elif not planned.changes:
            lines.append("    (no field differs from what it holds now)")
        else:
            lines += [f"    {name}: {_shown(c.old)} -> {_shown(c.new)}" for name, c in planned.changes.items()]
    return lines


def summary_line(summary: Mapping[str, Any], *, grouped: bool = False) -> str:
    """``would create 12, update 3 (fields: subject 3, status 1), delete 0, skip 85``;
    kinds other than those four only when they happened."""
    fmt: Callable[[int], str] = number if grouped else str
    parts: list[str] = []
    for kind in ACTIONS:
        count = int(summary.get(kind, 0))
        if kind not in ALWAYS and not count:
            continue
        text = f"{kind} {fmt(count)}"
        fields: Mapping[str, int] = summary.get("fields") or {}
        if kind == "update" and fields:
            text += " (fields: " + ", ".join(f"{name} {fmt(n)}" for name, n in fields.items()) + ")"
        parts.append(text)
    return "would " + ", ".join(parts)


def render(actions: Iterable[PlannedAction]) -> list[str]:
    """Every action's lines, in order."""
    return [line for planned in actions for line in describe(planned)]
