"""The JSON Schema of Ferryman's YAML config, generated from the models in :mod:`ferryman.config`.

Shipped as ``ferryman/schema/ferryman.schema.json`` so editors validate a config as it is
typed; the examples in ``config/`` point at it with a first line::

    # yaml-language-server: $schema=../src/ferryman/schema/ferryman.schema.json

Regenerate it after changing a model (a test fails while the shipped file is out of step)::

    python -m ferryman.schema > src/ferryman/schema/ferryman.schema.json

and ``python -m ferryman.schema --path`` prints where the installed copy is.

pydantic describes what a model *stores*; a config file may say more, because some
validators widen the input before the model sees it. Those widenings are applied here, by
name, and a model that no longer has the field named is an error, not a silent skip:

- a duration (``overlap: 2m``) is a string like ``90s``/``1h30m`` or a number of seconds;
- a section whose keys are all commented out (YAML null) means its defaults;
- ``to:`` is one ``system.stream`` or a list of them; a reference is ``{from: STREAM}`` or
  just ``STREAM``;
- a secret is a string holding a reference (``${ENV}``, ``${file:/path}``,
  ``${credential:NAME}``), never a literal.

A system's own keys belong to its connector (``connectors/NAME/README.md``), so
``systems.NAME`` allows any key besides ``connector``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_FILE", "config_schema", "path", "render"]

SCHEMA_FILE = "ferryman.schema.json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: what parse_duration accepts as text: "90", "1.5", "500ms", "1h30m", "2 w"
DURATION_PATTERN = r"^\s*(\d+(\.\d+)?|(\d+(\.\d+)?\s*(ms|s|m|h|d|w)\s*)+)\s*$"
#: a value holding at least one reference (config._REF)
REFERENCE_PATTERN = r"\$\{((credential|file|env):)?[^}]+\}"

Schema = dict[str, Any]


def path() -> Path:
    """Where the shipped schema file is (in a checkout or an installed package)."""
    return Path(str(resources.files("ferryman.schema").joinpath(SCHEMA_FILE)))


def _walk(node: Any, visit: Callable[[Schema], None]) -> None:
    if isinstance(node, dict):
        visit(node)
        for value in node.values():
            _walk(value, visit)
    elif isinstance(node, list):
        for value in node:
            _walk(value, visit)


def _short_duration(iso: str) -> str:
    """pydantic writes a timedelta default as ISO 8601 (``PT2M``); a config says ``2m``."""
    from pydantic import TypeAdapter

    seconds = TypeAdapter(timedelta).validate_python(iso).total_seconds()
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _durations(node: Schema) -> None:
    if node.get("type") == "string" and node.get("format") == "duration":
        node.pop("type")
        node.pop("format")
        node["anyOf"] = [
            {"type": "string", "pattern": DURATION_PATTERN, "description": "e.g. 30s, 5m, 1h30m, 500ms"},
            {"type": "number", "minimum": 0, "description": "seconds"},
        ]
    if "default" in node and isinstance(node["default"], str) and node["default"].startswith("PT"):
        node["default"] = _short_duration(node["default"])


def _secrets(node: Schema) -> None:
    if node.get("type") == "string" and node.get("format") == "password":
        node.pop("format")
        node.pop("writeOnly", None)
        node["pattern"] = REFERENCE_PATTERN
        node["description"] = "a secret: a reference such as ${ENV_NAME}, ${file:/path} or ${credential:NAME}"


def _field(schema: Schema, model: str, field: str) -> Schema:
    try:
        found: Schema = schema["$defs"][model]["properties"][field]
        return found
    except KeyError:
        raise RuntimeError(
            f"the config schema widens {model}.{field}, which the models no longer have: update ferryman/schema"
        ) from None


def _def(schema: Schema, model: str) -> Schema:
    try:
        found: Schema = schema["$defs"][model]
        return found
    except KeyError:
        raise RuntimeError(f"the config schema widens {model}, which the models no longer have") from None


def _either(node: Schema, *alternatives: Schema) -> None:
    """Make ``node`` accept ``alternatives`` as well as what it accepts now (in place)."""
    keep: Schema = {k: node.pop(k) for k in ("title", "description", "default") if k in node}
    current = dict(node)
    node.clear()
    node.update(keep)
    node["anyOf"] = [*alternatives, current]


def config_schema() -> Schema:
    """The schema, as a JSON-ready dict."""
    from ferryman.config import FerrymanConfig

    schema: Schema = FerrymanConfig.model_json_schema(mode="validation", by_alias=True)
    _walk(schema, _durations)
    _walk(schema, _secrets)
    # FerrymanConfig._empty_sections: a section that is all comments is YAML null.
    for name, prop in schema["properties"].items():
        if "$ref" in prop or prop.get("type") == "object":
            _either(prop, {"type": "null", "description": f"{name}: the defaults"})
    # PipelineConfig._listify: `to: crm.contacts` is a list of one.
    _either(_field(schema, "PipelineConfig", "to"), {"type": "string", "pattern": r"^[^.]+\.[^.]+$"})
    # ReferenceConfig._shorthand: `organisation_key: organisations` is {from: organisations}.
    _either(_def(schema, "ReferenceConfig"), {"type": "string", "pattern": r"^[^.\s]+$"})
    # ScheduleConfig._one_of: exactly one of every and cron.
    _def(schema, "ScheduleConfig")["oneOf"] = [{"required": ["every"]}, {"required": ["cron"]}]
    system = _def(schema, "SystemConfig")
    system["additionalProperties"] = True
    system["description"] = (
        "One configured app or endpoint. Besides `connector`, its keys belong to the connector: "
        "see `ferryman connectors` and connectors/NAME/README.md."
    )
    return {
        "$schema": DRAFT,
        **schema,
        "title": "Ferryman configuration",
        "description": "ferryman.yaml: systems, pipelines, state, log and control (generated from ferryman.config)",
    }


def render() -> str:
    """The schema file's text."""
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"
