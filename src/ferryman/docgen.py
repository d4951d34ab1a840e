"""Shell completion (bash, zsh) and the man page, generated from the CLI's argparse parser.

::

    python -m ferryman.docgen completion bash > src/ferryman/share/ferryman.bash
    python -m ferryman.docgen completion zsh  > src/ferryman/share/_ferryman
    python -m ferryman.docgen man             > src/ferryman/share/ferryman.1

Everything comes from :func:`ferryman.cli.build_parser`: commands, options, choices and
help strings, and the exit codes from the epilogs; a test regenerates the three files and
fails, naming the command to run, when a command or option was added without doing so.

Installing them (a distribution package would put them there)::

    cp ferryman.bash /usr/share/bash-completion/completions/ferryman
    cp _ferryman /usr/share/zsh/site-functions/_ferryman
    cp ferryman.1 /usr/share/man/man1/ferryman.1

``python -m ferryman.docgen path`` prints the directory the installed copies are in.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

__all__ = ["FILES", "Command", "Option", "bash_completion", "command_tree", "man_page", "render", "zsh_completion"]

#: generated file (under ferryman/share/) -> the docgen arguments that make it
FILES: dict[str, tuple[str, ...]] = {
    "ferryman.bash": ("completion", "bash"),
    "_ferryman": ("completion", "zsh"),
    "ferryman.1": ("man",),
}
#: options whose value is a file or directory (completed as paths)
_PATHS = re.compile(r"(^|-)(config|dir|directory|file|path|output|socket)$")


@dataclass
class Option:
    """One option (``--config``) or positional argument (``pipeline``) of a command."""

    flags: list[str]  # empty for a positional
    help: str
    metavar: str = ""  # what the value is called; "" for a flag that takes none
    choices: list[str] = field(default_factory=list)
    many: bool = False  # a positional taking several values (nargs * or +)
    optional: bool = False  # a positional that may be left out (nargs ? or *)
    path: bool = False  # the value is a file or directory

    @property
    def takes_value(self) -> bool:
        return bool(self.metavar)


@dataclass
class Command:
    """A command (``ferryman``, ``ferryman dlq``, ``ferryman dlq list``) and what it takes."""

    path: list[str]
    help: str
    description: str
    epilog: str
    options: list[Option]
    positionals: list[Option]
    subcommands: list[Command]

    @property
    def name(self) -> str:
        return " ".join(self.path)

    def walk(self) -> Iterator[Command]:
        yield self
        for sub in self.subcommands:
            yield from sub.walk()


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    params["prog"] = parser.prog
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    return " ".join((action.help % params).split())


def _option(parser: argparse.ArgumentParser, action: argparse.Action) -> Option:
    choices = [str(c) for c in action.choices] if action.choices else []
    takes = action.nargs != 0
    metavar = ""
    if takes:
        given = action.metavar if isinstance(action.metavar, str) else None
        metavar = given or (action.dest.upper() if action.option_strings else action.dest)
    long_names = [f for f in action.option_strings if f.startswith("--")] or action.option_strings
    name = (long_names[0] if long_names else action.dest).lstrip("-")
    is_path = takes and not choices and (action.type is Path or bool(_PATHS.search(name)))
    return Option(
        flags=list(action.option_strings),
        help=_help(parser, action),
        metavar=metavar,
        choices=choices,
        many=action.nargs in ("*", "+"),
        optional=action.nargs in ("?", "*"),
        path=is_path,
    )


def command_tree(parser: argparse.ArgumentParser | None = None) -> Command:
    """The parser as a tree of :class:`Command` (the live one from :mod:`ferryman.cli` by default)."""
    if parser is None:
        from ferryman.cli import build_parser

        parser = build_parser()  # no argv: every command's arguments, the sandbox's too
    return _command(parser, ["ferryman"], "")


def _command(parser: argparse.ArgumentParser, path: list[str], help_text: str) -> Command:
    options: list[Option] = []
    positionals: list[Option] = []
    subcommands: list[Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: _help(parser, a) for a in action._choices_actions}
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias
                    continue
                seen.add(id(sub))
                subcommands.append(_command(sub, [*path, name], helps.get(name, "")))
        elif action.help == argparse.SUPPRESS or action.nargs == argparse.REMAINDER:
            continue
        elif action.option_strings:
            options.append(_option(parser, action))
        else:
            positionals.append(_option(parser, action))
    return Command(
        path=path,
        help=help_text,
        description=" ".join((parser.description or "").split()),
        epilog=parser.epilog or "",
        options=options,
        positionals=positionals,
        subcommands=subcommands,
    )


# -- bash -----------------------------------------------------------------------------------------
def _bash_word(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def bash_completion(root: Command) -> str:
    """A bash completion script: ``complete -F _ferryman ferryman``."""
    subcommands, options, values, choices, paths = [], [], [], [], []
    for cmd in root.walk():
        key = _bash_word(cmd.name)
        if cmd.subcommands:
            subcommands.append(f"        {key}) echo {_bash_word(' '.join(s.path[-1] for s in cmd.subcommands))} ;;")
        flags = [f for o in cmd.options for f in o.flags]
        options.append(f"        {key}) echo {_bash_word(' '.join(flags))} ;;")
        for opt in cmd.options:
            if not opt.takes_value:
                continue
            pattern = "|".join(_bash_word(f"{cmd.name} {f}") for f in opt.flags)
            values.append(f"        {pattern}) return 0 ;;")
            if opt.choices:
                choices.append(f"        {pattern}) echo {_bash_word(' '.join(opt.choices))} ;;")
            elif opt.path:
                paths.append(f"        {pattern}) return 0 ;;")
        positional_choices = [c for p in cmd.positionals for c in p.choices]
        if positional_choices and not cmd.subcommands:
            choices.append(f"        {_bash_word(cmd.name + ' ')}) echo {_bash_word(' '.join(positional_choices))} ;;")

    def case(name: str, body: list[str], default: str) -> str:
        lines = "\n".join(body)
        return f'{name}() {{\n    case "$1" in\n{lines}\n        *) {default} ;;\n    esac\n}}\n'

    return (
        "# bash completion for ferryman (generated by `python -m ferryman.docgen completion bash`: do not edit)\n"
        "# Install: copy to /usr/share/bash-completion/completions/ferryman, or source it from ~/.bashrc.\n\n"
        + case("_ferryman_subcommands", subcommands, "return 1")
        + case("_ferryman_options", options, "return 1")
        + case("_ferryman_takes_value", values, "return 1")
        + case("_ferryman_choices", choices, "return 1")
        + case("_ferryman_is_path", paths, "return 1")
        + r"""
_ferryman() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" command="ferryman" word i skip=0
    ((COMP_CWORD > 0)) && prev="${COMP_WORDS[COMP_CWORD-1]}"
    COMPREPLY=()
    # Find the (sub)command being completed: skip options and the values they take.
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        if ((skip)); then skip=0; continue; fi
        if [[ $word == -* ]]; then
            [[ $word != *=* ]] && _ferryman_takes_value "$command $word" && skip=1
        elif [[ " $(_ferryman_subcommands "$command") " == *" $word "* ]]; then
            command="$command $word"
        fi
    done
    if ((skip)); then
        if _ferryman_choices "$command $prev" >/dev/null; then
            mapfile -t COMPREPLY < <(compgen -W "$(_ferryman_choices "$command $prev")" -- "$cur")
        elif _ferryman_is_path "$command $prev"; then
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        fi
        return 0
    fi
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_ferryman_options "$command")" -- "$cur")
    elif _ferryman_subcommands "$command" >/dev/null; then
        mapfile -t COMPREPLY < <(compgen -W "$(_ferryman_subcommands "$command")" -- "$cur")
    elif _ferryman_choices "$command " >/dev/null; then
        mapfile -t COMPREPLY < <(compgen -W "$(_ferryman_choices "$command ")" -- "$cur")
    fi
    return 0
}

complete -o bashdefault -o default -F _ferryman ferryman
"""
    )


# -- zsh ------------------------------------------------------------------------------------------
def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:")


def _zsh_function(cmd: Command) -> str:
    return "_" + "_".join(part.replace("-", "_") for part in cmd.path)


def _zsh_action(opt: Option) -> str:
    if opt.choices:
        return "(" + " ".join(c.replace(" ", "\\ ") for c in opt.choices) + ")"
    if opt.path:
        return "_files"
    return " "


def _zsh_specs(cmd: Command) -> list[str]:
    specs: list[str] = []
    for opt in cmd.options:
        help_text = _zsh_help(opt.help.split(". ")[0] if opt.help else "")
        value = f":{_zsh_help(opt.metavar.lower())}:{_zsh_action(opt)}" if opt.takes_value else ""
        if len(opt.flags) > 1:
            exclusive = "(" + " ".join(opt.flags) + ")"
            specs.append(f"{_zsh_quote(exclusive)}{{{','.join(opt.flags)}}}{_zsh_quote(f'[{help_text}]{value}')}")
        else:
            specs.append(_zsh_quote(f"{opt.flags[0]}[{help_text}]{value}"))
    if cmd.subcommands:
        specs += [_zsh_quote("1:command:->command"), _zsh_quote("*::argument:->argument")]
        return specs
    for n, pos in enumerate(cmd.positionals, 1):
        position = "*" if pos.many else str(n)
        optional = ":" if pos.optional and not pos.many else ""
        specs.append(_zsh_quote(f"{position}:{optional}{_zsh_help(pos.metavar.lower())}:{_zsh_action(pos)}"))
    return specs


def zsh_completion(root: Command) -> str:
    """A zsh completion function file (``#compdef ferryman``), for a directory in ``$fpath``."""
    out = [
        "#compdef ferryman",
        "# zsh completion for ferryman (generated by `python -m ferryman.docgen completion zsh`: do not edit)",
        "# Install: copy to a directory in $fpath (e.g. /usr/share/zsh/site-functions) as _ferryman.",
        "",
    ]
    for cmd in root.walk():
        out.append(f"{_zsh_function(cmd)}() {{")
        if cmd.subcommands:
            out.append('  local curcontext="$curcontext" state line')
            out.append("  typeset -A opt_args")
        specs = _zsh_specs(cmd)
        flags = "-C " if cmd.subcommands else ""
        out.append(f"  _arguments -s {flags}\\")
        out.extend(f"    {spec} \\" for spec in specs)
        out[-1] = out[-1].removesuffix(" \\")
        if cmd.subcommands:
            out.append("  case $state in")
            out.append("    command)")
            out.append("      local -a commands")
            out.append("      commands=(")
            for sub in cmd.subcommands:
                out.append(f"        {_zsh_quote(sub.path[-1] + ':' + sub.help.replace(':', chr(92) + ':'))}")
            out.append("      )")
            out.append(f"      _describe -t commands {_zsh_quote(cmd.name + ' command')} commands")
            out.append("      ;;")
            out.append("    argument)")
            out.append("      case $line[1] in")
            for sub in cmd.subcommands:
                out.append(f"        {sub.path[-1]}) {_zsh_function(sub)} ;;")
            out.append("      esac")
            out.append("      ;;")
            out.append("  esac")
        out.append("}")
        out.append("")
    out.append('_ferryman "$@"')
    return "\n".join(out) + "\n"


# -- man ------------------------------------------------------------------------------------------
def _roff(text: str) -> str:
    """Text for a roff line: backslashes escaped, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line if line[:1] in (".", "'") else line) for line in text.split("\n"))


def _synopsis(cmd: Command) -> str:
    parts = [f"\\fB{_roff(cmd.name)}\\fR"]
    for opt in cmd.options:
        if opt.flags[0] in ("-h", "--help"):
            continue
        flag = f"\\fB{_roff(opt.flags[0])}\\fR"
        parts.append(f"[{flag} \\fI{_roff(opt.metavar)}\\fR]" if opt.takes_value else f"[{flag}]")
    for pos in cmd.positionals:
        name = f"\\fI{_roff(pos.metavar)}\\fR" + (" ..." if pos.many else "")
        parts.append(f"[{name}]" if pos.optional else name)
    if cmd.subcommands:
        parts.append("\\fICOMMAND\\fR ...")
    return " ".join(parts)


def _options_block(cmd: Command, *, with_help: bool = True) -> list[str]:
    lines: list[str] = []
    for opt in [*cmd.positionals, *cmd.options]:
        if not with_help and opt.flags and opt.flags[0] in ("-h", "--help"):
            continue
        if not opt.flags and not opt.help and not opt.choices:
            continue  # a bare positional: the synopsis says it all
        if opt.flags:
            names = ", ".join(f"\\fB{_roff(f)}\\fR" for f in opt.flags)
            head = f"{names} \\fI{_roff(opt.metavar)}\\fR" if opt.takes_value else names
        else:
            head = f"\\fI{_roff(opt.metavar)}\\fR"
        text = opt.help or ""
        if opt.choices and "{" not in text:
            text = f"{text} (one of: {', '.join(opt.choices)})".strip()
        lines += [".TP", head, _roff(text) if text else "\\&"]
    return lines


_EXIT = re.compile(r"^\s+(\d+)\s{2,}(.*)$")


def _epilog(text: str) -> tuple[list[tuple[str, str]], str]:
    """An epilog split into its "exit status:" entries and the rest of its text."""
    codes: list[tuple[str, str]] = []
    rest: list[str] = []
    in_codes = False
    for line in text.splitlines():
        if line.strip().lower() == "exit status:":
            in_codes = True
            continue
        if in_codes and (match := _EXIT.match(line)):
            codes.append((match[1], match[2].strip()))
        elif in_codes and line.startswith("      ") and codes:
            codes[-1] = (codes[-1][0], f"{codes[-1][1]} {line.strip()}")
        else:
            if not line.strip():
                in_codes = False  # a blank line ends the list
            rest.append(line)
    return codes, "\n".join(rest).strip()


def _codes_block(codes: list[tuple[str, str]]) -> list[str]:
    lines: list[str] = []
    for code, text in codes:
        lines += [".TP", f"\\fB{code}\\fR", _roff(text)]
    return lines


def man_page(root: Command) -> str:
    """The ``ferryman(1)`` man page, in roff (``man -l ferryman.1`` shows it)."""
    from ferryman import __version__

    root_codes, root_rest = _epilog(root.epilog)
    out = [
        '.\\" Generated by `python -m ferryman.docgen man` from ferryman.cli.build_parser(): do not edit.',
        f'.TH FERRYMAN 1 "" "ferryman {_roff(__version__)}" "User Commands"',
        ".SH NAME",
        f"ferryman \\- {_roff(root.description or 'sync daemon')}",
        ".SH SYNOPSIS",
        _synopsis(root),
        ".SH DESCRIPTION",
        _roff(root.description),
        ".PP",
        "Each command below has its own \\fB\\-\\-help\\fR. Configuration: the YAML file given by "
        "\\fB\\-\\-config\\fR, \\fB$FERRYMAN_CONFIG\\fR or \\fI/etc/ferryman/ferryman.yaml\\fR.",
        ".SH OPTIONS",
        *_options_block(root),
        ".SH COMMANDS",
    ]
    for cmd in root.walk():
        if cmd is root:
            continue
        codes, rest = _epilog(cmd.epilog)
        out += [f'.SS "{_roff(" ".join(cmd.path[1:]))}"', _synopsis(cmd), ".PP", _roff(cmd.help or cmd.description)]
        if cmd.description and cmd.description != cmd.help:
            out += [".PP", _roff(cmd.description)]
        block = _options_block(cmd, with_help=False)
        if block:
            out += [".RS", *block, ".RE"]
        if rest:
            out += [".PP", ".nf", _roff(rest), ".fi"]
        if codes and codes != root_codes:
            out += [".PP", "Exit status:", ".RS", *_codes_block(codes), ".RE"]
    out += [".SH EXIT STATUS", *_codes_block(root_codes)]
    if root_rest:
        out += [".PP", ".nf", _roff(root_rest), ".fi"]
    out += [
        ".SH FILES",
        ".TP",
        "\\fI/etc/ferryman/ferryman.yaml\\fR",
        "the configuration (JSON Schema: \\fBpython \\-m ferryman.schema \\-\\-path\\fR)",
        ".SH SEE ALSO",
        "\\fBsystemd.service\\fR(5), \\fBsystemd.timer\\fR(5)",
    ]
    return "\n".join(out) + "\n"


# -- the command ----------------------------------------------------------------------------------
def render(*what: str, root: Command | None = None) -> str:
    """One generated file's text: ``render("completion", "bash")``, ``render("man")``
    (the arguments of ``python -m ferryman.docgen``, as in :data:`FILES`)."""
    tree = root if root is not None else command_tree()
    if what == ("man",):
        return man_page(tree)
    if what == ("completion", "bash"):
        return bash_completion(tree)
    if what == ("completion", "zsh"):
        return zsh_completion(tree)
    raise ValueError(f"nothing to generate for {' '.join(what)!r} (try: completion bash, completion zsh, man)")


def share_dir() -> Path:
    """Where the installed generated files are (``ferryman/share``)."""
    return Path(str(resources.files("ferryman").joinpath("share")))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ferryman.docgen",
        description="Generate shell completion and the man page from ferryman's argparse parser.",
    )
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    completion = sub.add_parser("completion", help="a completion script for SHELL")
    completion.add_argument("shell", choices=["bash", "zsh"])
    sub.add_parser("man", help="the ferryman(1) man page (roff)")
    sub.add_parser("path", help="print the directory the installed generated files are in")
    args = parser.parse_args(argv)
    if args.what == "path":
        print(share_dir())
        return 0
    sys.stdout.write(render(*[a for a in (args.what, getattr(args, "shell", None)) if a]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
