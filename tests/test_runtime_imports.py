"""What ships for operators runs without the dev extra: `make demo` installs the runtime
dependencies only, so nothing outside the test kit may import pytest (the demo did, through
ferryman.testing, and failed on a fresh clone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KIT = {ROOT / "src" / "ferryman" / "testing.py"}


def test_no_runtime_module_imports_the_test_kit_or_pytest() -> None:
    offenders = []
    for path in sorted([*(ROOT / "src" / "ferryman").rglob("*.py"), *(ROOT / "connectors").rglob("*.py")]):
        if path in KIT:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.strip()
            if code.startswith(("import pytest", "from pytest", "from ferryman.testing", "import ferryman.testing")):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {code}")
    assert not offenders, offenders


def test_the_demo_and_the_cli_import_without_pytest() -> None:
    probe = (
        "import sys; sys.modules['pytest'] = None\n"
        "import ferryman.demo, ferryman.cli, ferryman.engine, ferryman.daemon._service\n"
        "from ferryman.sdk.readloop import collect\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
