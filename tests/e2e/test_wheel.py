"""The wheel built from the repository carries the built-in connectors, their READMEs and
simulators, and the demo data; installed on its own, `ferryman connectors` lists them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILT_IN = ["aspnet_helpdesk", "cerb", "clevertim", "clientexec", "csv", "harvest", "rest", "webhook"]


def test_the_wheel_carries_the_connectors_and_lists_them(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("ferryman-*.whl")
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
