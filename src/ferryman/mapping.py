"""Field mapping between canonical records: pure functions, no I/O.

A pipeline's ``mapping`` says how to fill target fields from the source record::

    mapping:
      subject: subject                 # copy a field (the default for same-named fields)
      priority: extra.priority_name    # take a native field the source kept in extra
      status:                          # translate values
        from: status
        map: {pending: open}
        default: open
      type: {value: support}           # a constant
      requester_key: null              # drop a field

When source and target are the same kind of record, every field not named in the
mapping is copied as is; otherwise only mapped fields (plus key, timing, deleted and
extra) are carried over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ferryman.errors import ConfigError, ValidationFailed
from ferryman.records import Record

#: fields every record has, carried over by every mapping (never mapped or translated)
IDENTITY = ("key", "updated_at", "deleted", "extra")


class FieldMapping:
    """A compiled pipeline mapping from one record type to another."""

    def __init__(
        self, rules: Mapping[str, Any], source: type[Record], target: type[Record], *, where: str = "mapping"
    ) -> None:
        self.source = source
        self.target = target
        self.rules: dict[str, Any] = {}
        target_fields = set(target.model_fields)
        for name, rule in rules.items():
            if name not in target_fields:
                raise ConfigError(
                    f"{target.kind} has no field {name!r} (fields: {', '.join(sorted(target_fields))})",
                    path=f"{where}.{name}",
                )
            self.rules[name] = self._compile(rule, f"{where}.{name}")
        self.copy = [
            f
            for f in target.model_fields
            if f not in self.rules and (f in source.model_fields) and (source is target or f in IDENTITY)
        ]

    def _compile(self, rule: Any, where: str) -> Any:
        if rule is None or isinstance(rule, str):
            if isinstance(rule, str) and not rule.startswith("extra.") and rule not in self.source.model_fields:
                raise ConfigError(f"source {self.source.kind} has no field {rule!r}", path=where)
            return rule
        if isinstance(rule, dict):
            if set(rule) == {"value"}:
                return rule
            if "from" in rule and set(rule) <= {"from", "map", "default"}:
                self._compile(rule["from"], where + ".from")
                return rule
        raise ConfigError(
            "a rule is a field name, extra.NAME, {value: X} or {from: F, map: {...}, default: D}", path=where
        )

    def inverse(self, *, where: str = "mapping") -> FieldMapping:
        """The mapping back, for two-way pipelines: renames and one-to-one value maps invert;
        constants and dropped fields have no way back and are left out of it."""
        rules: dict[str, Any] = {}
        for name, rule in self.rules.items():
            if rule is None:
                if name in self.source.model_fields:
                    rules[name] = None  # a field left out of a two-way sync is left out both ways
                continue
            if isinstance(rule, dict) and "value" in rule:
                continue
            if isinstance(rule, str):
                if rule.startswith("extra."):
                    raise ConfigError(
                        f"a two-way mapping cannot write back into {rule!r}; map a canonical field",
                        path=f"{where}.{name}",
                    )
                rules[rule] = name
                continue
            source_field = rule["from"]
            table = rule.get("map") or {}
            inverted = {v: k for k, v in table.items()}
            if len(inverted) != len(table):
                raise ConfigError(
                    "a two-way value map must be one-to-one so it can be inverted", path=f"{where}.{name}.map"
                )
            rules[source_field] = {"from": name, "map": inverted} if inverted else name
        return FieldMapping(rules, self.target, self.source, where=where)

    @staticmethod
    def _get(record: Record, path: str) -> Any:
        if path.startswith("extra."):
            return record.extra.get(path[len("extra.") :])
        return getattr(record, path)

    def apply(self, record: Record) -> Record:
        """The target-typed record for ``record``; raises ValidationFailed if it does not fit."""
        if self.source is self.target and not self.rules:
            return record
        data: dict[str, Any] = {name: getattr(record, name) for name in self.copy}
        for name, rule in self.rules.items():
            if rule is None:
                data[name] = None
            elif isinstance(rule, str):
                data[name] = self._get(record, rule)
            elif "value" in rule:
                data[name] = rule["value"]
            else:
                value = self._get(record, rule["from"])
                table = rule.get("map") or {}
                if value in table:
                    value = table[value]
                elif ("default" in rule and value is not None and table) or (value is None and "default" in rule):
                    value = rule["default"]
                data[name] = value
        try:
            return self.target.model_validate(data)
        except ValidationError as exc:
            raise ValidationFailed(_first_error(exc), ref=record.key) from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    more = len(exc.errors()) - 1
    return f"{loc}: {err['msg']}" + (f" (+{more} more)" if more else "")
