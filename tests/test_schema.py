"""The shipped JSON Schema of the config: in step with the models, and the examples validate against it."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ferryman import schema

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "config").glob("*.yaml"))
SHIPPED = ROOT / "src" / "ferryman" / "schema" / "ferryman.schema.json"
MODELINE = "# yaml-language-server: $schema=../src/ferryman/schema/ferryman.schema.json"


# -- a validator: jsonschema when installed, else the subset of draft 2020-12 the schema uses --------


class MiniValidator:
    """Draft 2020-12, as far as the generated schema needs it. A keyword it does not know
    fails loudly, so a schema change cannot make it pass by being ignored."""

    ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$defs", "deprecated"})
    TYPES: dict[str, Any] = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "null": type(None),
    }

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def errors(self, value: Any, node: dict[str, Any] | bool | None = None, at: str = "") -> Iterator[str]:
        node = self.root if node is None else node
        if node is True:
            return
        if node is False:
            yield f"{at or '/'}: not allowed"
            return
        assert isinstance(node, dict)
        unknown = set(node) - self.ANNOTATIONS - set(self.CHECKS)
        assert not unknown, f"MiniValidator does not know {sorted(unknown)}: install jsonschema or extend it"
        for keyword, check in self.CHECKS.items():
            if keyword in node:
                yield from check(self, value, node, at)

    def _ref(self, value: Any, node: dict[str, Any], at: str) -> Iterator[str]:
        target: Any = self.root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        yield from self.errors(value, target, at)

    def _type(self, value: Any, node: dict[str, Any], at: str) -> Iterator[str]:
        wanted = node["type"] if isinstance(node["type"], list) else [node["type"]]
        for name in wanted:
            if name == "integer" and isinstance(value, int) and not isinstance(value, bool):
                return
            if name == "number" and isinstance(value, int | float) and not isinstance(value, bool):
                return
            if name in self.TYPES and isinstance(value, self.TYPES[name]):
                return
        yield f"{at or '/'}: {value!r} is not of type {' or '.join(wanted)}"

    def _any_of(self, value: Any, node: dict[str, Any], at: str) -> Iterator[str]:
        failures = [list(self.errors(value, option, at)) for option in node["anyOf"]]
        if all(failures):
            yield f"{at or '/'}: matches none of anyOf ({'; '.join(f[0] for f in failures)})"

    def _one_of(self, value: Any, node: dict[str, Any], at: str) -> Iterator[str]:
        passing = sum(1 for option in node["oneOf"] if not list(self.errors(value, option, at)))
        if passing != 1:
            yield f"{at or '/'}: matches {passing} of oneOf, not exactly one"

    def _properties(self, value: Any, node: dict[str, Any], at: str) -> Iterator[str]:
        if isinstance(value, dict):
            for key, sub in node["properties"].items():
                if key in value:
                    yield from self.errors(value[key], sub, f"{at}/{key}")

    def _additional(self, value: Any, node: dict[str, Any], at: str) -> Iterator[str]:
        if isinstance(value, dict):
            known = node.get("properties", {})
            for key in value:
                if key not in known:
                    extra = node["additionalProperties"]
                    if extra is False:
                        yield f"{at}/{key}: additional property not allowed"
                    else:
                        yield from self.errors(value[key], extra, f"{at}/{key}")

    def _required(self, value: Any, node: dict[str, Any], at: str) -> Iterator[str]:
        if isinstance(value, dict):
            for key in node["required"]:
                if key not in value:
                    yield f"{at or '/'}: {key!r} is required"

    def _items(self, value: Any, node: dict[str, Any], at: str) -> Iterator[str]:
        if isinstance(value, list):
            for n, item in enumerate(value):
                yield from self.errors(item, node["items"], f"{at}/{n}")

    def _enum(self, value: Any, node: dict[str, Any], at: str) -> Iterator[str]:
        if value not in node["enum"]:
            yield f"{at or '/'}: {value!r} is not one of {node['enum']}"

    def _const(self, value: Any, node: dict[str, Any], at: str) -> Iterator[str]:
        if value != node["const"]:
            yield f"{at or '/'}: {value!r} is not {node['const']!r}"

    def _pattern(self, value: Any, node: dict[str, Any], at: str) -> Iterator[str]:
        if isinstance(value, str) and not re.search(node["pattern"], value):
            yield f"{at or '/'}: {value!r} does not match {node['pattern']!r}"

    def _bound(self, value: Any, node: dict[str, Any], at: str, keyword: str) -> Iterator[str]:
        if isinstance(value, int | float) and not isinstance(value, bool):
            limit = node[keyword]
            ok = {
                "minimum": value >= limit,
                "maximum": value <= limit,
                "exclusiveMinimum": value > limit,
                "exclusiveMaximum": value < limit,
            }[keyword]
            if not ok:
                yield f"{at or '/'}: {value!r} fails {keyword} {limit}"

    def _length(self, value: Any, node: dict[str, Any], at: str, keyword: str) -> Iterator[str]:
        if isinstance(value, str | list):
            limit = node[keyword]
            if (keyword.startswith("min") and len(value) < limit) or (keyword.startswith("max") and len(value) > limit):
                yield f"{at or '/'}: length {len(value)} fails {keyword} {limit}"

    CHECKS: dict[str, Any] = {
        "$ref": _ref,
        "type": _type,
        "anyOf": _any_of,
        "oneOf": _one_of,
        "properties": _properties,
        "additionalProperties": _additional,
        "required": _required,
        "items": _items,
        "enum": _enum,
        "const": _const,
        "pattern": _pattern,
        **{k: (lambda self, v, n, a, k=k: self._bound(v, n, a, k)) for k in ("minimum", "maximum")},
        **{k: (lambda self, v, n, a, k=k: self._bound(v, n, a, k)) for k in ("exclusiveMinimum", "exclusiveMaximum")},
        **{k: (lambda self, v, n, a, k=k: self._length(v, n, a, k)) for k in ("minLength", "maxLength", "minItems")},
    }


def problems(document: Any) -> list[str]:
    """Why ``document`` does not validate against the shipped schema ([] when it does)."""
    shipped = json.loads(SHIPPED.read_text())
    try:
        import jsonschema
    except ImportError:
        return list(MiniValidator(shipped).errors(document))
    validator = jsonschema.Draft202012Validator(shipped)
    return [f"/{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]


# -- the tests ---------------------------------------------------------------------------------------


def test_the_shipped_schema_is_in_step_with_the_models() -> None:
    assert SHIPPED.read_text() == schema.render(), (
        "src/ferryman/schema/ferryman.schema.json is out of step with ferryman.config; regenerate it with\n"
        "  python -m ferryman.schema > src/ferryman/schema/ferryman.schema.json"
    )


def test_the_module_prints_the_schema_and_the_installed_path() -> None:
    printed = subprocess.run([sys.executable, "-m", "ferryman.schema"], capture_output=True, text=True, check=True)
    assert json.loads(printed.stdout)["title"] == "Ferryman configuration"
    where = subprocess.run(
        [sys.executable, "-m", "ferryman.schema", "--path"], capture_output=True, text=True, check=True
    )
    assert Path(where.stdout.strip()).samefile(SHIPPED)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_points_at_the_schema_and_validates(example: Path) -> None:
    text = example.read_text()
    assert text.splitlines()[0] == MODELINE, f"{example.name}: the first line should be {MODELINE!r}"
    target = (example.parent / MODELINE.split("$schema=")[1]).resolve()
    assert target == SHIPPED.resolve()
    assert problems(yaml.safe_load(text)) == []


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "config" / f"{name}.example.yaml").read_text())
    return loaded


def broken(document: dict[str, Any], *path: str, value: Any) -> dict[str, Any]:
    spoiled = copy.deepcopy(document)
    node = spoiled
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return spoiled


@pytest.mark.parametrize(
    ("path", "value", "said"),
    [
        (("pipelines", "tickets-to-csv", "page_size"), "lots", "page_size"),
        (("pipelines", "tickets-to-csv", "overlap"), "two minutes", "overlap"),
        (("pipelines", "contacts-both-ways", "direction"), "sideways", "direction"),
        (("pipelines", "tickets-to-csv", "surprise"), True, "surprise"),
        (("log", "level"), 3, "level"),
        (("control", "token"), "a-literal-token", "token"),
        (("systems", "helpdesk", "connector"), None, "connector"),
    ],
)
def test_a_wrong_type_or_unknown_key_fails(path: tuple[str, ...], value: Any, said: str) -> None:
    document = example("ferryman")
    assert problems(document) == []
    found = problems(broken(document, *path, value=value))
    assert found, f"{'.'.join(path)} = {value!r} validated"
    assert any(said in problem for problem in found), found


def test_what_the_loader_accepts_beyond_the_models_validates() -> None:
    """Widened inputs (the loader's before-validators) and permissive connector options."""
    document = {
        "state": None,  # a section whose keys are all commented out
        "control": {"token": "${FERRYMAN_CONTROL_TOKEN}"},
        "systems": {
            "desk": {"connector": "acme", "api_key": "${ACME_KEY}", "anything": {"nested": [1, 2]}},
            "files": {"connector": "csv", "directory": "./out"},
        },
        "pipelines": {
            "p": {
                "from": "desk.tickets",
                "to": "files.tickets",  # one target, not a list
                "overlap": 90,  # seconds
                "schedule": {"every": "1h30m"},
                "references": {"requester_key": "contacts"},  # shorthand for {from: contacts}
            }
        },
    }
    assert problems(document) == []
    both = broken(document, "pipelines", "p", "schedule", value={"every": "5m", "cron": "* * * * *"})
    assert problems(both), "a schedule with both every and cron validated"
