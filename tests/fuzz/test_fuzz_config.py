"""Issue 16: config loading fed broken YAML text and documents shaped like the examples.

Whatever an operator (or an environment override) puts there, ``load_config`` answers with a
config or a :class:`ConfigError` naming the file: ``ferryman check`` must never die with a
traceback (exit 70, "a bug") on a typo.
"""

from __future__ import annotations

import re
import tempfile
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import strategies as st

from ferryman.config import load_config
from ferryman.errors import ConfigError
from tests.fuzz import json_values, run_long, run_short, shaped_like

EXAMPLES = sorted((Path(__file__).parents[2] / "config").glob("*.yaml"))
DIRECTORY = Path(tempfile.mkdtemp(prefix="fm-fuzz-config-"))
CREDENTIALS = DIRECTORY / "creds"
REF = re.compile(r"\$\{(?:(credential|env|file):)?([^}]+)\}")
YAML_BITS = [
    "\n",
    ": ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    "&a ",
    "*a",
    "<<: ",
    "!!python/object ",
    "'",
    '"',
    "\t",
    "#",
    "${",
    "%",
]


@cache
def _environ() -> dict[str, str]:
    """Every reference the examples make, resolvable (webhook secrets in their own format)."""
    CREDENTIALS.mkdir(exist_ok=True)
    env = {"CREDENTIALS_DIRECTORY": str(CREDENTIALS)}
    for path in EXAMPLES:
        for kind, name in REF.findall(path.read_text()):
            value = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=" if "hook" in name.lower() else "fuzz-secret-value"
            if kind == "credential":
                (CREDENTIALS / name).write_text(value)
            elif kind in ("", "env"):
                env[name] = value
    return env


def _load(text: str, extra_env: dict[str, str] | None = None) -> None:
    path = DIRECTORY / "ferryman.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path, environ={**_environ(), **(extra_env or {})})
    except ConfigError as exc:
        assert str(path) in str(exc), f"the error does not name the file: {exc}"


@st.composite
def _edited_text(draw: st.DrawFn) -> str:
    """An example's text with a few characters inserted, replaced or removed."""
    text = draw(st.sampled_from(EXAMPLES)).read_text()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        bit = draw(st.one_of(st.sampled_from(YAML_BITS), st.text(max_size=3)))
        cut = draw(st.integers(0, 3))
        text = text[:at] + bit + text[at + cut :]
    return text


def _texts() -> st.SearchStrategy[str]:
    return st.one_of(_edited_text(), _edited_text(), st.text(max_size=200))


def _check_text(text: str) -> None:
    _load(text)


@cache
def _documents() -> st.SearchStrategy[dict[str, Any]]:
    docs = [yaml.safe_load(path.read_text()) for path in EXAMPLES]
    return st.one_of(*(shaped_like(doc) for doc in docs))


def _overrides() -> st.SearchStrategy[dict[str, str]]:
    """``FERRYMAN_...`` overrides, nested with ``__``, holding YAML of any shape."""
    name = st.lists(
        st.sampled_from(["state", "url", "control", "token", "systems", "pipelines", "helpdesk", "log", "level", "x"]),
        min_size=1,
        max_size=3,
    ).map(lambda parts: "FERRYMAN_" + "__".join(p.upper() for p in parts))
    value = st.one_of(st.text(max_size=20), json_values(4).map(lambda v: yaml.safe_dump(v)))
    return st.dictionaries(name, value, max_size=2)


class _Dumper(yaml.SafeDumper):
    """Decimals (drawn where an example has a number) written as YAML numbers."""


_Dumper.add_representer(Decimal, lambda dumper, value: dumper.represent_float(float(value)))


def _check_document(case: tuple[dict[str, Any], dict[str, str]]) -> None:
    document, env = case
    _load(yaml.dump(document, Dumper=_Dumper, allow_unicode=True), env)


#: crashes this fuzzing found in config loading, fixed since (issue 16): each made ``ferryman
#: check`` exit 70 ("internal error") with a traceback instead of 78 naming the problem
KNOWN = {
    "reader_error": "version: 1\n# a form feed: \x0c\n",  # _BoundedLoader built outside its try
    "duration_not_text": "pipelines: {p: {from: a.tickets, to: [b.tickets], overlap: {two: minutes}}}\n",
    "duration_too_long": "state: {lease_ttl: 99999999999999999999}\n",  # timedelta OverflowError
    "bad_port": "systems: {h: {connector: clientexec, base_url: 'http://127.0.0.1:88x/api', api_key: '${K}'}}\n",
    "timestamp_of_year_0": "0000-00-00",  # PyYAML's timestamp constructor raised ValueError (make fuzz, session 5)
}


@pytest.mark.parametrize("text", [pytest.param(text, id=name) for name, text in KNOWN.items()])
def test_a_known_crash_of_config_loading(text: str) -> None:
    _load(text, {"K": "fuzz-secret-value"})


#: inputs that crashed config loading once: tried first on every run
FOUND_TEXT = [KNOWN["reader_error"]]  # one: several failing examples raise an ExceptionGroup
FOUND_DOCUMENT = [({"version": 1}, {"FERRYMAN_LOG": "\x8d"})]


def test_the_examples_load_unchanged() -> None:
    # the strategies start from them: an example that did not load would fuzz only errors
    for path in EXAMPLES:
        _load(path.read_text())
        load_config(DIRECTORY / "ferryman.yaml", environ=_environ())


def test_fuzz_config_text() -> None:
    run_short(_texts(), _check_text, FOUND_TEXT)


def test_fuzz_config_document() -> None:
    run_short(st.tuples(_documents(), _overrides()), _check_document, FOUND_DOCUMENT)


@pytest.mark.fuzz
def test_fuzz_config_text_long() -> None:
    run_long(_texts(), _check_text, FOUND_TEXT)


@pytest.mark.fuzz
def test_fuzz_config_document_long() -> None:
    run_long(st.tuples(_documents(), _overrides()), _check_document, FOUND_DOCUMENT)
