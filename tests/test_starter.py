"""``ferryman init`` and ``ferryman example``: starter files from the installed examples.

The processes run ``python -m ferryman``; what the starter composes is loaded the way
``check --offline`` loads it (no secrets), so every example and their combination are
valid configs, not just text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ferryman import starter as starter_module
from ferryman.config import load_config
from ferryman.starter import UNITS, example_names, starter_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name.removesuffix(".example.yaml") for p in (ROOT / "config").glob("*.example.yaml"))


def ferryman(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    return subprocess.run(
        [sys.executable, "-m", "ferryman", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_the_examples_are_the_repositorys() -> None:
    assert example_names() == EXAMPLES
    assert {"ferryman", "rest", "webhook"} <= set(EXAMPLES)


def test_example_prints_one_example_and_refuses_an_unknown_name(tmp_path: Path) -> None:
    shown = ferryman("example", "rest", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == (ROOT / "config" / "rest.example.yaml").read_text()
    listed = ferryman("example", cwd=tmp_path)
    assert listed.returncode == 0 and listed.stdout.split() == EXAMPLES
    unknown = ferryman("example", "rst", cwd=tmp_path)
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert "no example named 'rst' (did you mean 'rest'?)" in unknown.stderr
    assert ", ".join(EXAMPLES) in unknown.stderr


def test_init_writes_a_starter_and_refuses_to_overwrite_it(tmp_path: Path) -> None:
    first = ferryman("init", "--dir", "etc", "--connector", "clientexec", "--systemd", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    config = tmp_path / "etc" / "ferryman.yaml"
    assert f"wrote {config}" in first.stdout and "check --offline" in first.stdout
    for unit in UNITS:
        assert (tmp_path / "etc" / "systemd" / unit).read_text() == (ROOT / "systemd" / unit).read_text()
    # the starter's relative ./var paths point under the directory written to
    text = config.read_text()
    assert "./var/" not in text and f"sqlite:///{tmp_path / 'etc' / 'var'}/" in text
    # an editor finds the installed schema from wherever the file is written
    hints = [line for line in text.splitlines() if "yaml-language-server" in line]
    schema = Path(starter_module.__file__).resolve().parent / "schema" / "ferryman.schema.json"
    assert hints == ([f"# yaml-language-server: $schema={schema}"] if schema.exists() else [])

    config.write_text(text + "# my edits\n")
    again = ferryman("init", "--dir", "etc", cwd=tmp_path)
    assert again.returncode == 1
    assert f"{config} already exists; use --force to overwrite" in again.stderr
    assert config.read_text().endswith("# my edits\n")  # untouched
    units = ferryman("init", "--dir", "etc", "--systemd", "--connector", "cerb", cwd=tmp_path)
    assert units.returncode == 1 and str(tmp_path / "etc" / "systemd" / "ferryman.service") in units.stderr

    forced = ferryman("init", "--dir", "etc", "--connector", "cerb", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "# my edits" not in config.read_text() and "connector: cerb" in config.read_text()

    checked = ferryman("--config", str(config), "check", "--offline", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not (tmp_path / "etc" / "var").exists()


def test_init_refuses_an_unknown_connector(tmp_path: Path) -> None:
    result = ferryman("init", "--connector", "clientexek", cwd=tmp_path)
    assert result.returncode == 2 and "did you mean 'clientexec'?" in result.stderr
    assert not (tmp_path / "ferryman.yaml").exists()


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_makes_a_valid_starter(tmp_path: Path, name: str) -> None:
    path = tmp_path / "ferryman.yaml"
    path.write_text(starter_config([name], tmp_path))
    config = load_config(path, environ={}, secrets=False)
    expected = yaml.safe_load((ROOT / "config" / f"{name}.example.yaml").read_text())
    assert set(config.systems) == set(expected.get("systems") or {})
    assert set(config.pipelines) == set(expected.get("pipelines") or {})


def test_all_examples_put_together_make_one_valid_config(tmp_path: Path) -> None:
    path = tmp_path / "ferryman.yaml"
    text = starter_config(EXAMPLES, tmp_path)
    path.write_text(text)
    config = load_config(path, environ={}, secrets=False)
    expected = [yaml.safe_load((ROOT / "config" / f"{n}.example.yaml").read_text()) for n in EXAMPLES]
    assert len(config.systems) == sum(len(e.get("systems") or {}) for e in expected)
    assert len(config.pipelines) == sum(len(e.get("pipelines") or {}) for e in expected)
    # a name two examples share is prefixed with the example's, references following it
    assert "rest-exports" in config.systems or "rest-tickets-to-csv" in config.pipelines
    for pipeline in config.pipelines.values():
        for ref in (pipeline.source, *pipeline.to):
            assert ref.split(".")[0] in config.systems
    # no two CSV systems write into one directory
    directories = [str(config.system_options(n).directory) for n, s in config.systems.items() if s.connector == "csv"]
    assert len(directories) == len(set(directories))
    # a renamed system's directory stays where the example put it, under a prefixed name
    assert str(config.system_options("rest-exports").directory) == str(tmp_path / "var" / "rest-exports")
    assert str(config.system_options("ferryman-exports").directory) == "/var/lib/ferryman/ferryman-exports"
    assert "# -- from `ferryman example rest`" in text  # the examples' comments are kept
