"""The wheel built from the repository carries the built-in connectors, their READMEs and
simulators, the demo data, the example configs, the systemd units and the licence;
installed on its own, `ferryman connectors` lists them, and installed into a fresh
virtual environment with nothing of the checkout in reach, `ferryman init`, `check
--offline` and `example` work from what it carries. The sdist builds that wheel and
carries the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILT_IN = ["aspnet_helpdesk", "cerb", "clevertim", "clientexec", "csv", "harvest", "rest", "webhook"]
EXAMPLES = sorted(p.name for p in (ROOT / "config").glob("*.example.yaml"))
UNITS = ["README.md", "ferryman-sync@.service", "ferryman-sync@.timer", "ferryman.service"]


def pip_wheel(source: Path, out: Path) -> Path:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = out.glob("ferryman-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield pip_wheel(ROOT, tmp_path_factory.mktemp("wheel"))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that could lead Python or Ferryman to the checkout
    or to a secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FERRYMAN_", "VIRTUAL_ENV"))}
    env.pop("CREDENTIALS_DIRECTORY", None)
    env.pop("NOTIFY_SOCKET", None)
    return {**env, **extra}


def test_the_wheel_carries_the_examples_the_units_and_the_licence(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    for example in EXAMPLES:
        assert archive.read(f"ferryman/share/config/{example}") == (ROOT / "config" / example).read_bytes()
    for unit in UNITS:
        assert archive.read(f"ferryman/share/systemd/{unit}") == (ROOT / "systemd" / unit).read_bytes()
    [licence] = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert archive.read(licence) == (ROOT / "LICENSE").read_bytes()
    assert b"Apache License" in archive.read(licence) and b"Version 2.0, January 2004" in archive.read(licence)
    [metadata_name] = [n for n in names if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert metadata["License-Expression"] == "Apache-2.0"
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())
    requires = metadata.get_all("Requires-Dist") or []
    assert not any(r.startswith("pydantic-settings") for r in requires)  # nothing imports it


def test_the_wheel_carries_the_connectors_and_lists_them(wheel: Path, tmp_path: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in BUILT_IN:
        assert f"ferryman_connectors/{name}/__init__.py" in names
        assert f"ferryman_connectors/{name}/README.md" in names or name == "csv"
    assert "ferryman/demo_data/tickets.csv" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    declared = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"{name} = ferryman_connectors." in declared for name in BUILT_IN)

    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    # the wheel's own copy comes first on the path; dependencies come from this environment
    env = {**os.environ, "PYTHONPATH": str(target)}
    listed = subprocess.run(
        [sys.executable, "-m", "ferryman", "connectors"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    for name in BUILT_IN:
        assert any(line.startswith(name) for line in listed.stdout.splitlines()), f"{name} not listed"
    assert "failed to load" not in listed.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import ferryman_connectors; print(ferryman_connectors.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert where.stdout.startswith(str(target)), "the test must exercise the wheel, not the checkout"


@pytest.mark.slow  # builds and installs into a fresh venv (about 10 s): make test-slow
def test_a_fresh_venv_from_the_wheel_alone_inits_checks_and_shows_examples(wheel: Path, tmp_path: Path) -> None:
    """No checkout in reach: a venv without system site-packages (dependencies from the
    package index pip is configured with), run from an unrelated directory, with no
    PYTHONPATH and no secret in the environment."""
    venv = tmp_path / "venv"
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True, check=False
    )
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()

    def ferryman(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(venv / "bin" / "ferryman"), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env=clean_env(),
            cwd=work,
        )

    where = subprocess.run(
        [str(python), "-c", "import ferryman, sys; print(ferryman.__file__); print(sys.flags.no_site, sys.path)"],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=work,
        check=False,
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    assert str(ROOT) not in where.stdout, "the checkout is on the fresh venv's path"

    example = ferryman("example", "rest")
    assert example.returncode == 0, example.stderr
    assert example.stdout == (ROOT / "config" / "rest.example.yaml").read_text()

    init = ferryman("init", "--dir", "etc", "--connector", "rest", "csv-less-typo")
    assert init.returncode == 2 and "examples:" in init.stderr  # an unknown name writes nothing
    assert not (work / "etc").exists()
    init = ferryman("init", "--dir", "etc", "--connector", "rest", "webhook", "--systemd")
    assert init.returncode == 0, init.stderr
    config = work / "etc" / "ferryman.yaml"
    for unit in UNITS:
        assert (work / "etc" / "systemd" / unit).read_bytes() == (ROOT / "systemd" / unit).read_bytes()

    check = ferryman("--config", str(config), "check", "--offline")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "system sandbox: ok (not contacted: --offline)" in check.stdout
    assert "pipeline tickets-to-csv: ok" in check.stdout and "pipeline tickets-out: ok" in check.stdout
    status = ferryman("--config", str(config), "status")
    assert status.returncode == 0, status.stderr
    assert sorted(p.name for p in (work / "etc").iterdir()) == ["ferryman.yaml", "systemd"]  # no database made

    again = ferryman("init", "--dir", "etc")
    assert again.returncode == 1 and f"{config} already exists" in again.stderr


@pytest.mark.slow  # builds the sdist and a wheel from it (about 12 s): make test-slow
def test_the_sdist_builds_the_same_wheel_and_carries_its_tests(tmp_path: Path) -> None:
    """Build the sdist from a copy of the tree (a build writes egg-info beside the sources),
    build a wheel from the unpacked sdist, and run the tests that read the shipped files
    from the unpacked sdist."""
    tree = tmp_path / "tree"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "var", "demo-output", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    builder = tmp_path / "builder"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(builder)], check=True)
    got = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(builder / "bin" / "python"),
            "install",
            "-q",
            "setuptools>=77",
            "wheel",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert got.returncode == 0, got.stderr
    out = tmp_path / "sdist"
    built = subprocess.run(
        [
            str(builder / "bin" / "python"),
            "-c",
            f"from setuptools import build_meta; print(build_meta.build_sdist({str(out)!r}))",
        ],
        capture_output=True,
        text=True,
        cwd=tree,
        check=False,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [sdist] = out.glob("ferryman-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
        archive.extractall(tmp_path / "unpacked", filter="data")
    for needed in [
        "LICENSE",
        "MANIFEST.in",
        "setup.py",
        "pyproject.toml",
        "Makefile",
        "README.md",
        "tests/conftest.py",
        "tests/test_starter.py",
        "tests/fixtures/recorded/README.md",
        "connectors/rest/README.md",
        "src/ferryman/demo_data/tickets.csv",
        *(f"config/{e}" for e in EXAMPLES),
        *(f"systemd/{u}" for u in UNITS),
    ]:
        assert needed in names, f"{needed} is not in the sdist"
    assert not any(n.endswith((".db", ".pyc")) for n in names)
    [unpacked] = (tmp_path / "unpacked").iterdir()

    from_sdist = pip_wheel(unpacked, tmp_path / "wheel")
    shipped = set(zipfile.ZipFile(from_sdist).namelist())
    assert {f"ferryman/share/config/{e}" for e in EXAMPLES} <= shipped
    assert {f"ferryman/share/systemd/{u}" for u in UNITS} <= shipped

    tests = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/daemon/test_systemd_units.py",
            "tests/test_config_examples.py",
            "tests/test_starter.py",
        ],
        capture_output=True,
        text=True,
        cwd=unpacked,
        check=False,
        timeout=600,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
