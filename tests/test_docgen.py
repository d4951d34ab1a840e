"""Shell completion and the man page: generated from the live parser, shipped in step with it, and working."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ferryman import docgen
from ferryman.cli import EXIT_CODES, build_parser

SHARE = Path(__file__).resolve().parents[1] / "src" / "ferryman" / "share"


@pytest.fixture(scope="module")
def tree() -> docgen.Command:
    return docgen.command_tree()


@pytest.mark.parametrize("filename", sorted(docgen.FILES))
def test_the_shipped_file_is_in_step_with_the_parser(filename: str, tree: docgen.Command) -> None:
    args = docgen.FILES[filename]
    fresh = docgen.render(*args, root=tree)
    shipped = (SHARE / filename).read_text()
    command = f"python -m ferryman.docgen {' '.join(args)} > src/ferryman/share/{filename}"
    assert shipped == fresh, (
        f"src/ferryman/share/{filename} is out of step with ferryman.cli.build_parser() "
        f"(a command, option or help text changed); regenerate it with\n  {command}"
    )


def test_the_module_prints_what_is_shipped(tree: docgen.Command) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "ferryman.docgen", "completion", "bash"], capture_output=True, text=True, check=True
    )
    assert printed.stdout == docgen.render("completion", "bash", root=tree)
    where = subprocess.run(
        [sys.executable, "-m", "ferryman.docgen", "path"], capture_output=True, text=True, check=True
    )
    assert Path(where.stdout.strip()).samefile(SHARE)


def test_a_new_command_changes_every_file() -> None:
    """What the in-step test relies on: a command added to the parser shows up everywhere."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    extra = subparsers.add_parser("frobnicate", help="frobnicate the widgets")
    extra.add_argument("--level", choices=["low", "high"], help="how hard")
    before = docgen.command_tree(build_parser())
    after = docgen.command_tree(parser)
    for args in docgen.FILES.values():
        old, new = docgen.render(*args, root=before), docgen.render(*args, root=after)
        assert "frobnicate" not in old and "frobnicate" in new, args
        assert "--level" in new.replace("\\-", "-")


# -- bash: the script really completes, in a real bash ------------------------------------------------


def complete(*words: str) -> list[str]:
    """COMPREPLY for ``words`` (the last one is being completed), from the shipped script."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    script = (
        f"source {SHARE / 'ferryman.bash'}\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n"
        '_ferryman; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, check=True)
    return [line for line in done.stdout.splitlines() if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_every_command_option_and_choice(tree: docgen.Command) -> None:
    assert complete("ferryman", "") == [c.path[-1] for c in tree.subcommands]
    assert complete("ferryman", "dl") == ["dlq"]
    dlq = next(c for c in tree.subcommands if c.path[-1] == "dlq")
    assert complete("ferryman", "-c", "x.yaml", "dlq", "") == [c.path[-1] for c in dlq.subcommands]
    assert complete("ferryman", "--log-level", "") == ["debug", "info", "warning", "error"]
    assert complete("ferryman", "dlq", "resolve", "7", "--side", "") == ["from", "to"]
    for command in tree.walk():
        flags = {f for o in command.options for f in o.flags}
        assert set(complete(*command.path, "-")) == flags, command.name


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_a_config_path(tmp_path: Path) -> None:
    (tmp_path / "ferryman.yaml").write_text("version: 1\n")
    assert complete("ferryman", "--config", f"{tmp_path}/ferr") == [f"{tmp_path}/ferryman.yaml"]


# -- zsh and man ----------------------------------------------------------------------------------


def test_zsh_has_a_function_for_every_command(tree: docgen.Command) -> None:
    text = (SHARE / "_ferryman").read_text()
    assert text.startswith("#compdef ferryman\n")
    for command in tree.walk():
        function = "_" + "_".join(p.replace("-", "_") for p in command.path)
        assert f"\n{function}() {{\n" in text, command.name
        for sub in command.subcommands:
            assert f"        {sub.path[-1]}) _{function[1:]}_{sub.path[-1].replace('-', '_')} ;;" in text


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed: the script's syntax is not checked")
def test_zsh_script_parses() -> None:
    subprocess.run(["zsh", "-n", str(SHARE / "_ferryman")], check=True)


def test_the_man_page_has_every_command_and_exit_code(tree: docgen.Command) -> None:
    text = (SHARE / "ferryman.1").read_text()
    assert '.TH FERRYMAN 1 ""' in text
    for command in tree.walk():
        if command is not tree:
            assert f'.SS "{" ".join(command.path[1:])}"'.replace("-", "\\-") in text, command.name
    exit_section = text.split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0]
    codes = [line.split()[0] for line in EXIT_CODES.splitlines()[1:] if line.strip() and line.split()[0].isdigit()]
    assert codes and all(f"\\fB{code}\\fR" in exit_section for code in codes)


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed: the man page is not rendered")
def test_the_man_page_renders_without_errors() -> None:
    done = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", str(SHARE / "ferryman.1")], capture_output=True, text=True, check=True
    )
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert not errors, errors
    page = re.sub(".\x08", "", done.stdout).replace("\u2010", "-")  # no bold by overstrike, plain hyphens
    assert re.search(r"ferryman\s+dlq\s+replay\s+\[--all\]", page), page  # (justified: runs of spaces)
    assert re.search(r"configuration\s+error", page)
