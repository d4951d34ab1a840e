"""``ferryman new-connector NAME``: scaffold a connector package that passes the kits.

The package it writes (``ferryman-NAME/`` unless ``--dir`` says where)::

    pyproject.toml             entry points in ferryman.connectors and ferryman.simulators
    README.md                  with "Verified against" and "Assumptions" sections to fill in
    src/ferryman_NAME/__init__.py    the connector: one stream (contacts) on ApiConnector
    src/ferryman_NAME/simulator.py   a loopback simulator of the API the connector assumes
    tests/test_contract.py     the contract kit and the hostile kit against the simulator

Once installed (``pip install -e '.[testing]'``), ``pytest`` passes as it stands; from
there the author changes the connector and the simulator to match the real API. The
templates are package data under ``ferryman/templates/connector/`` (``*.tmpl``, read with
:class:`string.Template`, so ``$$`` is a literal dollar).

Registered as a CLI command through :data:`COMMANDS` (like :mod:`ferryman.daemon.cli`);
``python -m ferryman.scaffold NAME [--dir D]`` runs it standalone.
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from ferryman import __version__

__all__ = ["COMMANDS", "ScaffoldError", "add_arguments", "main", "render", "scaffold"]

EXIT_OK, EXIT_USAGE = 0, 2
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

#: template file -> where it goes in the package ({package} is ferryman_NAME)
TEMPLATES: dict[str, str] = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "connector.py.tmpl": "src/{package}/__init__.py",
    "simulator.py.tmpl": "src/{package}/simulator.py",
    "test_contract.py.tmpl": "tests/test_contract.py",
}


class ScaffoldError(ValueError):
    """The name or the target directory cannot be used (the message says why)."""


@dataclass(frozen=True)
class Names:
    """Every spelling of one connector name the templates use."""

    name: str  # acme_crm: the connector kind, entry-point and simulator name
    package: str  # ferryman_acme_crm: the import package
    dist: str  # ferryman-acme-crm: the distribution
    klass: str  # AcmeCrm: prefix of the class names
    title: str  # Acme Crm: for prose
    env: str  # ACME_CRM: prefix of environment variables

    @classmethod
    def of(cls, name: str) -> Names:
        check_name(name)
        parts = name.split("_")
        return cls(
            name=name,
            package=f"ferryman_{name}",
            dist=f"ferryman-{name.replace('_', '-')}",
            klass="".join(p.capitalize() for p in parts if p),
            title=" ".join(p.capitalize() for p in parts if p),
            env=name.upper(),
        )


def check_name(name: str) -> None:
    """Refuse a name that cannot be a connector kind, an entry point and a Python identifier."""
    if not _NAME.match(name):
        raise ScaffoldError(
            f"{name!r} is not a connector name: use lower-case letters, digits and underscores, starting "
            "with a letter, at most 40 characters (e.g. acme_crm)"
        )
    if keyword.iskeyword(name):
        raise ScaffoldError(f"{name!r} is a Python keyword: choose another name")


def _template(filename: str) -> str:
    return resources.files("ferryman").joinpath("templates", "connector", filename).read_text(encoding="utf-8")


def render(name: str) -> dict[str, str]:
    """The scaffold's files for connector ``name``: relative path -> content."""
    names = Names.of(name)
    values = {
        "name": names.name,
        "package": names.package,
        "dist": names.dist,
        "klass": names.klass,
        "title": names.title,
        "env": names.env,
        "ferryman_version": __version__,
    }
    files: dict[str, str] = {}
    for template, target in TEMPLATES.items():
        try:
            text = Template(_template(template)).substitute(values)
        except (KeyError, ValueError) as exc:  # a broken template is a bug in Ferryman, named here
            raise RuntimeError(f"template {template}: {type(exc).__name__}: {exc}") from exc
        files[target.format(package=names.package)] = text
    files[f"src/{names.package}/py.typed"] = ""
    return files


def scaffold(name: str, directory: Path | None = None) -> list[Path]:
    """Write the package for connector ``name`` into ``directory`` (default ``./ferryman-NAME``).

    The directory may exist if it is empty; nothing is overwritten. Returns the files written.
    """
    files = render(name)
    target = directory if directory is not None else Path(Names.of(name).dist)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(f"{target} already exists and is not an empty directory: choose another --dir")
    written: list[Path] = []
    for relative, text in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


# -- the command ----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the connector's name (lower case, e.g. acme_crm)")
    parser.add_argument(
        "--dir",
        type=Path,
        metavar="D",
        help="where to write the package (default: ./ferryman-NAME); must not exist, or be empty",
    )


def run(args: argparse.Namespace) -> int:
    """The handler: write the package and say what to do next."""
    try:
        written = scaffold(args.name, args.dir)
    except ScaffoldError as exc:
        print(f"ferryman new-connector: {exc}", file=sys.stderr)
        return EXIT_USAGE
    root = args.dir if args.dir is not None else Path(Names.of(args.name).dist)
    for path in written:
        print(f"  wrote {path}")
    print(
        f"\nNext:\n  cd {root}\n  pip install -e '.[testing]'\n  pytest -ra\n"
        f"then make the connector and its simulator match the real API (see docs/connectors.md)."
    )
    return EXIT_OK


DESCRIPTION = """\
Write a connector package: pyproject.toml with the entry points, a connector with one
stream, a simulator of the API it assumes, a test module running the contract kit and
the hostile kit, and a README. It passes its tests as written; then make it real."""


def _register(sub: Any, name: str) -> None:
    p = sub.add_parser(
        name,
        help="scaffold a connector package that passes the contract kit",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=run)


#: commands for :func:`ferryman.cli.build_parser` (name -> register(subparsers, name))
COMMANDS: dict[str, Callable[[Any, str], None]] = {"new-connector": _register}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ferryman.scaffold",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
