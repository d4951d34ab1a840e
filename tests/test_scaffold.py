"""``ferryman new-connector``: the scaffold installs as a package and passes the kits as written."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from ferryman import scaffold
from ferryman.cli import build_parser
from ferryman.testing import HostileContract

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "connectors.md"


def kit_tests() -> list[str]:
    """Every test of the hostile kit (which includes the contract kit)."""
    return sorted(name for name, _ in inspect.getmembers(HostileContract) if name.startswith("test_"))


def run_module(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferryman.scaffold", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


# -- rendering and the command ----------------------------------------------------------------------


def test_render_fills_every_placeholder_and_declares_both_entry_points() -> None:
    files = scaffold.render("acme_crm")
    assert set(files) == {
        "pyproject.toml",
        "README.md",
        "src/ferryman_acme_crm/__init__.py",
        "src/ferryman_acme_crm/simulator.py",
        "src/ferryman_acme_crm/py.typed",
        "tests/test_contract.py",
    }
    pyproject = files["pyproject.toml"]
    assert 'acme_crm = "ferryman_acme_crm:AcmeCrmConnector"' in pyproject
    assert 'acme_crm = "ferryman_acme_crm.simulator:AcmeCrmSimulator"' in pyproject
    assert '[project.entry-points."ferryman.connectors"]' in pyproject
    assert '[project.entry-points."ferryman.simulators"]' in pyproject
    for path, text in files.items():
        assert "${" not in text.replace("${ACME_CRM_API_KEY}", "").replace("${ENV}", ""), path
        if path.endswith(".py"):
            compile(text, path, "exec")  # valid Python, whatever the name
    readme = files["README.md"]
    assert "## Verified against" in readme and "## Assumptions" in readme
    assert "api_key: ${ACME_CRM_API_KEY}" in readme


@pytest.mark.parametrize("name", ["Acme", "1acme", "acme-crm", "", "class", "a" * 41])
def test_a_name_that_cannot_be_a_connector_is_refused_with_the_rule(name: str) -> None:
    with pytest.raises(scaffold.ScaffoldError) as refused:
        scaffold.render(name)
    assert repr(name) in str(refused.value)


def test_the_command_writes_the_package_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "pkg"
    done = run_module("acme", "--dir", str(target))
    assert done.returncode == 0, done.stderr
    assert (target / "src" / "ferryman_acme" / "__init__.py").is_file()
    assert "pip install -e '.[testing]'" in done.stdout
    again = run_module("acme", "--dir", str(target))
    assert again.returncode == 2
    assert "already exists and is not an empty directory" in again.stderr
    bad = run_module("Acme", "--dir", str(tmp_path / "other"))
    assert bad.returncode == 2 and "is not a connector name" in bad.stderr
    assert not (tmp_path / "other").exists()


def test_the_command_registers_on_the_cli_parser(tmp_path: Path) -> None:
    """COMMANDS plugs into ferryman.cli's subcommands the way the daemon's commands do."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "new-connector" not in subparsers.choices:
        scaffold.COMMANDS["new-connector"](subparsers, "new-connector")
    args = parser.parse_args(["new-connector", "acme", "--dir", str(tmp_path / "pkg")])
    assert args.handler(args) == 0
    assert (tmp_path / "pkg" / "tests" / "test_contract.py").is_file()


def test_ferryman_new_connector_runs_as_a_process(tmp_path: Path) -> None:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "new-connector" not in subparsers.choices:
        pytest.skip("`ferryman new-connector` is not registered in ferryman.cli._extra_commands yet")
    done = subprocess.run(
        [sys.executable, "-m", "ferryman", "new-connector", "acme", "--dir", str(tmp_path / "pkg")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pkg" / "pyproject.toml").is_file()


def test_the_default_directory_is_named_after_the_distribution(tmp_path: Path) -> None:
    done = run_module("acme", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ferryman-acme" / "pyproject.toml").is_file()


@pytest.mark.parametrize("name", ["acme", "acme_customer_relations_platform"])
def test_the_scaffold_is_lint_clean_and_formatted(tmp_path: Path, name: str) -> None:
    """What an author starts from passes ruff with Ferryman's own settings, whatever the name's length."""
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed")
    scaffold.scaffold(name, tmp_path / "pkg")
    settings = str(ROOT / "pyproject.toml")
    for args in (["check"], ["format", "--check"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "--config", settings, "src", "tests"],
            cwd=tmp_path / "pkg",
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, f"ruff {' '.join(args)}:\n{done.stdout}{done.stderr}"


# -- the guide's code is the scaffold's code ----------------------------------------------------------

_BLOCK = re.compile(r"<!-- from: (?P<source>[^ ]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)


def test_every_code_sample_in_the_guide_is_real() -> None:
    """Each code block of docs/connectors.md names its source; the block is in it, verbatim.

    ``scaffold:PATH`` is a file the scaffold writes for ``ferryman new-connector acme``
    (which the install test below installs and tests); any other path is a file of this
    repository (tests/test_testing_kit.py runs the no-simulator example)."""
    text = GUIDE.read_text()
    fenced = re.findall(r"^```(\w+)\n", text, re.M)
    blocks = list(_BLOCK.finditer(text))
    code_blocks = [lang for lang in fenced if lang in ("python", "toml")]
    assert len(blocks) >= len(code_blocks) > 5, "a python/toml block in the guide has no <!-- from: ... --> line"
    files = scaffold.render("acme")
    for block in blocks:
        source = block["source"]
        if source.startswith("scaffold:"):
            haystack = files[source.removeprefix("scaffold:")]
        else:
            haystack = (ROOT / source).read_text()
        code = block["code"]
        lines = [line for line in code.splitlines() if line.strip() not in ("...", "# ...")]
        # A sample may leave out lines ("..."); what it shows appears in order in the source.
        position = 0
        for line in lines:
            found = haystack.find(line, position)
            assert found >= 0, f"guide block from {source}: line not found (in order): {line!r}"
            position = found + len(line)


# -- installed in a fresh venv, its own tests pass -------------------------------------------------------


def _throwaway_venv(path: Path) -> Path:
    """A venv that sees this checkout's environment (Ferryman, pytest, pytest-asyncio) through a
    .pth file and changes nothing in it; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(site, "_ferryman_checkout.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return python


def _pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), *args, "--disable-pip-version-check", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _can_build_wheels(python: Path) -> bool:
    """setuptools >= 70.1 builds wheels itself; older ones need the ``wheel`` package."""
    probe = "import setuptools, sys; from importlib.util import find_spec as f; " + (
        "v = tuple(int(p) for p in setuptools.__version__.split('.')[:2]); sys.exit(0 if v >= (70, 1) or f('wheel') else 1)"
    )
    return subprocess.run([str(python), "-c", probe], capture_output=True).returncode == 0


@pytest.mark.slow  # a throwaway venv, an install and a pytest run (about 7 s): make test-slow
def test_the_scaffold_installs_and_passes_the_contract_and_hostile_kits(tmp_path: Path) -> None:
    started = time.monotonic()
    package = tmp_path / "ferryman-acme"
    assert run_module("acme", "--dir", str(package)).returncode == 0
    python = _throwaway_venv(tmp_path / "venv")
    if not _can_build_wheels(python):
        # Only the throwaway venv gets it; this checkout's environment stays as it is.
        got = _pip(python, "install", "wheel")
        if got.returncode != 0:
            pytest.skip(
                f"no build backend for the scaffold: setuptools < 70.1 without 'wheel', and: {got.stderr[-300:]}"
            )
    installed = _pip(python, "install", "--no-deps", "--no-build-isolation", str(package))
    assert installed.returncode == 0, installed.stderr
    # Installed, not imported from the scaffold's directory: the entry points come from the dist.
    where = subprocess.run(
        [
            str(python),
            "-c",
            "from ferryman import plugins; import ferryman_acme as m;"
            "print(m.__file__); print(plugins.connector_class('acme').__name__, plugins.simulator_class('acme').__name__)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    assert str(package) not in where.stdout and "AcmeConnector AcmeSimulator" in where.stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "FERRYMAN_"))}
    result = subprocess.run(
        [str(python), "-m", "pytest", "-ra", "-p", "no:cacheprovider", "-o", "addopts=", "--junit-xml=report.xml"],
        capture_output=True,
        text=True,
        cwd=package,
        env=env,
        timeout=300,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    expected = len(kit_tests())
    assert re.fullmatch(rf"=+ {expected} passed in [\d.]+s.*=+", summary), (
        f"expected all {expected} kit tests to pass and none skipped: {summary}"
    )
    report = (package / "report.xml").read_text()
    for name in kit_tests():
        assert f'name="{name}"' in report, f"{name} did not run"
    assert importlib.util.find_spec("ferryman_acme") is None, "the scaffold leaked into this environment"
    print(f"scaffold, venv, install and {expected} kit tests: {time.monotonic() - started:.1f}s")
