"""``ferryman init`` and ``ferryman example``: starter files from the installed package.

The example configs (``config/*.example.yaml``) and the systemd units with their README
(``systemd/``) are kept once, at the top of the repository, where the README and the tests
point. The build copies them into the package as ``ferryman/share/config`` and
``ferryman/share/systemd`` (``setup.py``); a checkout (an editable install) reads them where
they are. :func:`share_dir` hides the difference.

A starter config for several connectors is the examples' text put together, comments
kept: the first example's ``state``, ``log`` and ``control``, every example's systems and
pipelines. Names two examples share (most have an ``exports`` CSV system and a
``tickets-to-csv`` pipeline) are prefixed with the example's name, with every reference
to them and a renamed CSV system's directory following, so the result is one valid
config. ``./var/`` paths are made absolute under the directory written to, so the file
works from any working directory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = [
    "MAIN_EXAMPLE",
    "UNITS",
    "StarterError",
    "example_names",
    "example_text",
    "share_dir",
    "starter_config",
    "write_starter",
]

#: the example that documents every section: what ``ferryman init`` writes without ``--connector``
MAIN_EXAMPLE = "ferryman"
#: the files ``ferryman init --systemd`` writes
UNITS = ("ferryman.service", "ferryman-sync@.service", "ferryman-sync@.timer", "README.md")
_SUFFIX = ".example.yaml"
_CHECKOUT = Path(__file__).resolve().parents[2]


class StarterError(Exception):
    """What ``init`` or ``example`` cannot do; ``str()`` says what and where. ``usage``
    marks a wrong argument (exit 2) rather than a refusal (exit 1)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def share_dir(kind: str) -> Path:
    """Where the installed package keeps ``kind`` (``config`` or ``systemd``): inside the
    package in a wheel install, the repository's own folder in a checkout."""
    for candidate in (Path(__file__).resolve().parent / "share" / kind, _CHECKOUT / kind):
        if candidate.is_dir() and any(candidate.iterdir()):
            return candidate
    raise StarterError(
        f"this installation has no {kind} files (looked in {Path(__file__).resolve().parent / 'share' / kind}); "
        "reinstall Ferryman from its wheel or a checkout"
    )


def example_names() -> list[str]:
    """The examples shipped: ``config/NAME.example.yaml``."""
    return sorted(p.name[: -len(_SUFFIX)] for p in share_dir("config").glob(f"*{_SUFFIX}"))


def example_text(name: str) -> str:
    """The text of one example, as shipped."""
    known = example_names()
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise StarterError(f"no example named {name!r}{hint}; examples: {', '.join(known)}", usage=True)
    return (share_dir("config") / f"{name}{_SUFFIX}").read_text(encoding="utf-8")


def starter_config(names: Sequence[str], directory: Path) -> str:
    """A commented config: the main example without ``names``, else the named examples
    put together. ``./var/`` paths become ``DIRECTORY/var/``."""
    names = list(dict.fromkeys(names)) or [MAIN_EXAMPLE]
    texts = {name: example_text(name) for name in names}
    if len(names) == 1:
        text = texts[names[0]]
        header = f"# Written by `ferryman init` from `ferryman example {names[0]}`.\n"
    else:
        text = _combine(texts)
        header = ""
    text = _schema_line() + header + _localise(_SCHEMA_LINE.sub("", text), directory)
    _validate_shape(text, names)
    return text


_SCHEMA_LINE = re.compile(r"^# yaml-language-server: \$schema=.*\n", re.MULTILINE)


def _schema_line() -> str:
    """The editor hint for the installed JSON Schema of the config: the examples' own line
    points at it relative to the repository, which a written starter is not in."""
    schema = Path(__file__).resolve().parent / "schema" / "ferryman.schema.json"
    return f"# yaml-language-server: $schema={schema.as_posix()}\n" if schema.is_file() else ""


def write_starter(directory: Path, names: Sequence[str], *, systemd: bool = False, force: bool = False) -> list[Path]:
    """Write ``DIRECTORY/ferryman.yaml`` (and with ``systemd`` the units under
    ``DIRECTORY/systemd/``); refuse to overwrite any existing file unless ``force``.
    Nothing is written when something is refused. Returns the paths written."""
    directory = directory.expanduser().resolve()
    files: dict[Path, str] = {directory / "ferryman.yaml": starter_config(names, directory)}
    if systemd:
        units = share_dir("systemd")
        for unit in UNITS:
            files[directory / "systemd" / unit] = (units / unit).read_text(encoding="utf-8")
    existing = [path for path in files if path.exists()]
    if existing and not force:
        listed = ", ".join(str(p) for p in existing)
        raise StarterError(f"{listed} already exist{'s' if len(existing) == 1 else ''}; use --force to overwrite")
    for path, text in files.items():
        if path.is_dir():
            raise StarterError(f"{path} is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)


# -- putting examples together ------------------------------------------------------------


@dataclass
class _Block:
    key: str | None
    lines: list[str] = field(default_factory=list)


_KEY = re.compile(r"^(?P<indent> *)(?P<key>[^\s#'\"][^:#]*?):(?:\s|$)")


def _split(lines: Iterable[str], indent: int) -> list[_Block]:
    """Lines into blocks, one per key at ``indent``. Comments and blank lines between two
    keys go with the next key when it follows them directly, else with the block they sit in."""
    blocks = [_Block(None)]
    pending: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and len(line) - len(line.lstrip()) <= indent):
            pending.append(line)
            continue
        match = _KEY.match(line)
        if match and len(match["indent"]) == indent:
            blocks.append(_Block(match["key"].strip(), [*pending, line]))
        else:
            blocks[-1].lines.extend([*pending, line])
        pending = []
    blocks[-1].lines.extend(pending)
    return blocks


def _section(text: str, key: str) -> list[_Block]:
    """The entries of a top-level section (``systems``), one block each."""
    for block in _split(text.splitlines(), 0):
        if block.key == key:
            body = block.lines[next(i for i, line in enumerate(block.lines) if line.startswith(f"{key}:")) + 1 :]
            return [b for b in _split(body, 2) if b.key is not None or any(x.strip() for x in b.lines)]
    return []


def _top(text: str, key: str) -> list[str]:
    for block in _split(text.splitlines(), 0):
        if block.key == key:
            return block.lines
    return []


def _combine(texts: dict[str, str]) -> str:
    names = list(texts)
    out = [
        f"# Written by `ferryman init --connector {' '.join(names)}`: the examples of {', '.join(names)} put together",
        "# (`ferryman example NAME` prints each one whole). Names two examples shared were prefixed",
        "# with the example's name. Secrets are references: set the variables or credentials named below.",
        "",
        "version: 1",
        "",
    ]
    for key in ("state", "log", "control"):
        lines = next((_top(t, key) for t in texts.values() if _top(t, key)), [])
        out += [*lines, ""] if lines else []
    seen_systems: set[str] = set()
    seen_pipelines: set[str] = set()
    systems_out: list[str] = ["systems:"]
    pipelines_out: list[str] = ["pipelines:"]
    for name, text in texts.items():
        systems = [b for b in _section(text, "systems") if b.key]
        pipelines = [b for b in _section(text, "pipelines") if b.key]
        renamed_systems = {b.key: f"{name}-{b.key}" for b in systems if b.key in seen_systems}
        renamed_pipelines = {b.key: f"{name}-{b.key}" for b in pipelines if b.key in seen_pipelines}
        systems_out.append(f"  # -- from `ferryman example {name}` " + "-" * max(0, 60 - len(name)))
        for block in systems:
            assert block.key is not None
            lines = _rename_key(block.lines, block.key, renamed_systems.get(block.key))
            if block.key in renamed_systems:
                lines = [_prefix_directory(line, name) for line in lines]
            lines = [_rename_pipelines(line, renamed_pipelines) for line in lines]
            systems_out += lines
            seen_systems.add(renamed_systems.get(block.key, block.key))
        pipelines_out.append(f"  # -- from `ferryman example {name}` " + "-" * max(0, 60 - len(name)))
        for block in pipelines:
            assert block.key is not None
            lines = _rename_key(block.lines, block.key, renamed_pipelines.get(block.key))
            pipelines_out += [_rename_systems(line, renamed_systems) for line in lines]
            seen_pipelines.add(renamed_pipelines.get(block.key, block.key))
    return "\n".join([*out, *systems_out, "", *pipelines_out]).rstrip() + "\n"


def _rename_key(lines: list[str], key: str, new: str | None) -> list[str]:
    if new is None:
        return lines
    out, done = [], False
    for line in lines:
        if not done and line.startswith(f"  {key}:"):
            line = f"  {new}:{line[len(key) + 3 :]}"
            done = True
        out.append(line)
    return out


def _prefix_directory(line: str, prefix: str) -> str:
    """``directory: ./var/exports`` of a renamed CSV system to ``./var/PREFIX-exports``:
    two CSV systems must not write the same files."""
    match = re.match(r"^(\s*directory:\s*['\"]?[^\s'\"]*/)([^/\s'\"]+)", line)
    if match is None or match[2].startswith(f"{prefix}-"):  # harvest-exports stays as it is
        return line
    return f"{match[1]}{prefix}-{match[2]}{line[match.end() :]}"


def _rename_systems(line: str, renamed: dict[str, str]) -> str:
    for old, new in renamed.items():
        line = re.sub(rf"(?<![\w.-]){re.escape(old)}(?=\.[\w-])", new, line)
    return line


def _rename_pipelines(line: str, renamed: dict[str, str]) -> str:
    for old, new in renamed.items():
        line = re.sub(rf"((?:trigger|pipeline):\s*['\"]?){re.escape(old)}(?![\w-])", rf"\g<1>{new}", line)
    return line


def _localise(text: str, directory: Path) -> str:
    """``./var/...`` (relative to where ferryman runs) to ``DIRECTORY/var/...``."""
    base = directory.as_posix()
    text = text.replace("sqlite:///./var/", f"sqlite:///{base}/var/")
    return re.sub(r"(?<![\w/.])\./var/", f"{base}/var/", text)


def _validate_shape(text: str, names: Sequence[str]) -> None:
    """What was written is YAML with the examples' systems and pipelines (a guard against a
    combination this module does not expect: a wrong file must not be written)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # pragma: no cover - the examples are tested
        raise StarterError(f"the examples {', '.join(names)} could not be put together: {exc}") from None
    expected = {"systems": 0, "pipelines": 0}
    for name in names:
        parsed = yaml.safe_load(example_text(name)) or {}
        for key in expected:
            expected[key] += len(parsed.get(key) or {})
    for key, count in expected.items():
        got = len((data or {}).get(key) or {})
        if got != count:  # pragma: no cover - the examples are tested
            raise StarterError(
                f"the examples {', '.join(names)} could not be put together: {got} {key} instead of {count}"
            )
