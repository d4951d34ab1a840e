"""The shape of the code, kept by tests: no import cycles, layers that stay layered, and a
declared public surface for connector authors.

**Imports.** Every module under ``src/ferryman`` (package ``ferryman``) and ``connectors/``
(installed as ``ferryman_connectors``) is parsed, never imported. An edge is any ``import``
or ``from ... import`` of one of those modules, at module level or inside a function, plus
``importlib.import_module("literal")`` (a string import is still an import); only imports
under ``if TYPE_CHECKING:`` are left out, as they never run. ``from ferryman.x import y``
where ``y`` is a submodule is an edge to ``ferryman.x.y`` alone: that a submodule's import
runs its package's ``__init__`` first is not counted, or every package that re-exports its
submodules would be a cycle with each of them. A cycle is a strongly connected component
of that graph, reported with the import lines (``file:line``) that close it.

**Public surface.** :data:`SURFACE` holds, for each module a connector author imports (the
ones ``docs/connectors.md`` and the ``ferryman new-connector`` templates use), its ``__all__``
as it should be: changing what authors may rely on is an edit here, made on purpose.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: directory -> the package it installs as
PACKAGES = {ROOT / "src" / "ferryman": "ferryman", ROOT / "connectors": "ferryman_connectors"}


# -- the import graph ---------------------------------------------------------------------------


@dataclass
class Module:
    name: str
    path: Path
    #: imported module -> the lines importing it (``file:line: text``)
    imports: dict[str, list[str]] = field(default_factory=dict)
    #: third-party or standard-library top-level names imported anywhere (not under TYPE_CHECKING)
    external: set[str] = field(default_factory=set)


def _module_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory, package in PACKAGES.items():
        for path in sorted(directory.rglob("*.py")):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node that can run: all of them except the body of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield child
        yield from _runtime_nodes(child)


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The innermost module of ours that ``name`` is or is in (``ferryman.x.Name`` -> ``ferryman.x``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _parse(name: str, path: Path, modules: dict[str, Path]) -> Module:
    module = Module(name, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def add(target: str, node: ast.stmt | ast.expr) -> None:
        own = _known(target, modules)
        if own is None:
            module.external.add(target.split(".")[0])
            return
        if own == name:
            return
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        where = f"{shown}:{node.lineno}: {lines[node.lineno - 1].strip()}"
        lines_of = module.imports.setdefault(own, [])
        if where not in lines_of:  # `from x import a, b` is one line, however many names
            lines_of.append(where)

    for node in _runtime_nodes(ast.parse("\n".join(lines), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in modules else source, node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value, node)
    return module


@pytest.fixture(scope="module")
def graph() -> dict[str, Module]:
    modules = _module_files()
    return {name: _parse(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root].imports)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child].imports))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _reach(graph: dict[str, Module], start: str, skip: frozenset[tuple[str, str]] = frozenset()) -> dict[str, str]:
    """Every module ``start`` imports, directly or not: module -> the chain that gets there."""
    seen = {start: start}
    todo = [start]
    while todo:
        current = todo.pop()
        for target in graph[current].imports:
            if target not in seen and (current, target) not in skip:
                seen[target] = f"{seen[current]} -> {target}"
                todo.append(target)
    del seen[start]
    return seen


def test_the_walk_counts_what_runs_and_only_that(tmp_path: Path) -> None:
    """Module- and function-level imports, submodules imported by name and string imports
    count; TYPE_CHECKING imports do not (so the cycle test cannot pass blind)."""
    source = tmp_path / "a.py"
    source.write_text(
        "import importlib\n"
        "from typing import TYPE_CHECKING\n"
        "import ferryman.b\n"
        "from ferryman.pkg import sub, Name\n"
        "if TYPE_CHECKING:\n"
        "    from ferryman.c import C\n"
        "else:\n"
        "    from ferryman.d import D\n"
        "def f() -> None:\n"
        "    from ferryman.e.inner import E\n"
        "    importlib.import_module('ferryman.f')\n"
    )
    names = ("ferryman.b", "ferryman.pkg", "ferryman.pkg.sub", "ferryman.c", "ferryman.d", "ferryman.e", "ferryman.f")
    modules = {"ferryman.a": source, **{name: tmp_path / "other.py" for name in names}}
    parsed = _parse("ferryman.a", source, modules)
    assert set(parsed.imports) == {
        "ferryman.b",
        "ferryman.pkg",
        "ferryman.pkg.sub",
        "ferryman.d",
        "ferryman.e",
        "ferryman.f",
    }
    assert parsed.imports["ferryman.e"] == [f"{source}:10: from ferryman.e.inner import E"]
    assert {"importlib", "typing"} <= parsed.external


def test_cycles_are_the_strongly_connected_components() -> None:
    def module(name: str, *targets: str) -> Module:
        return Module(name, Path(name), {target: [] for target in targets})

    graph = {m.name: m for m in (module("a", "b"), module("b", "c"), module("c", "a"), module("d", "a"), module("e"))}
    assert _cycles(graph) == [["a", "b", "c"]]
    graph["e"] = module("e", "d")
    graph["a"] = module("a", "b", "e")
    assert _cycles(graph) == [["a", "b", "c", "d", "e"]]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def test_the_real_graph_is_the_tree_it_should_be(graph: dict[str, Module]) -> None:
    assert "ferryman.app" in graph["ferryman.cli"].imports  # module level
    assert "ferryman.engine" in graph["ferryman.cli"].imports  # inside the commands only
    assert len(graph) > 100, sorted(graph)


def test_no_import_cycles(graph: dict[str, Module]) -> None:
    problems = []
    for component in _cycles(graph):
        members = set(component)
        lines = [
            f"    {line}"
            for name in component
            for target, where in sorted(graph[name].imports.items())
            if target in members
            for line in where
        ]
        problems.append(f"  {{{', '.join(component)}}}, through:\n" + "\n".join(lines))
    assert not problems, (
        "import cycles (break one edge of each: move what both sides need below them, "
        "e.g. into ferryman.app for the commands):\n" + "\n".join(problems)
    )


# -- layers ---------------------------------------------------------------------------------------

#: the pure rules: records, the cursor policy, mapping and planning (one-way and two-way) are
#: functions over records
PURE = ("ferryman.records", "ferryman.cursor", "ferryman.mapping", "ferryman.planning", "ferryman.planning_twoway")
#: what the pure rules must not reach, even indirectly: storage, transport, orchestration, entry points
NOT_PURE = (
    "ferryman.state",
    "ferryman.http",
    "ferryman.engine",
    "ferryman.twoway",
    "ferryman.journal",
    "ferryman.webhooks",
    "ferryman.status",
    "ferryman.config",
    "ferryman.app",
    "ferryman.cli",
    "ferryman.daemon",
    "ferryman.sandbox",
    "ferryman_connectors",
)
#: libraries that do I/O or talk to a database: none of them in a pure rule
IO_LIBRARIES = frozenset({"sqlalchemy", "sqlmodel", "sqlite3", "httpx", "aiohttp", "asyncio", "socket", "subprocess"})
#: edges that cross a layer today, each with why it is tolerated and what removes it
KNOWN_CROSSINGS: dict[tuple[str, str], str] = {
    # none left: planning and planning_twoway take state.Link values for their types only
    # (imported under TYPE_CHECKING). An entry here names an edge a pure rule may cross.
}
#: the leaves: everything may import them, and they import nothing of Ferryman's
LEAVES = ("ferryman.errors", "ferryman.timeutil", "ferryman.holders", "ferryman.redact", "ferryman.metrics")
#: the only modules that may import ferryman.cli: it is the top of the tree
CLI_IMPORTERS = {
    "ferryman.__main__": "`python -m ferryman`",
    "ferryman.docgen": "the man page and completions are generated from the live parser",
}
#: Ferryman's own modules find connectors and simulators through entry points
#: (ferryman.plugins); these import one directly, and why
CONNECTOR_IMPORTERS = {
    "ferryman.demo": "`make demo` serves the Cerb and ClientExec simulators in-process",
}


@pytest.mark.parametrize("name", PURE)
def test_the_pure_rules_reach_no_storage_transport_or_entry_point(graph: dict[str, Module], name: str) -> None:
    skip = frozenset(KNOWN_CROSSINGS)
    reached = _reach(graph, name, skip)
    bad = {target: chain for target, chain in reached.items() if any(_within(target, layer) for layer in NOT_PURE)}
    # name the crossings, not everything behind them: chains whose only forbidden module is the last
    crossings = sorted(chain for chain in bad.values() if not any(step in bad for step in chain.split(" -> ")[:-1]))
    assert not bad, f"{name} reaches what a pure rule must not:\n" + "\n".join(f"  {chain}" for chain in crossings)
    io = sorted(lib for module in [name, *reached] for lib in graph[module].external & IO_LIBRARIES)
    assert not io, f"{name} (or what it imports) uses I/O libraries: {io}"


def test_known_crossings_still_exist(graph: dict[str, Module]) -> None:
    """An entry of KNOWN_CROSSINGS that no longer crosses is removed, so the list stays true."""
    gone = [edge for edge in KNOWN_CROSSINGS if edge[1] not in graph[edge[0]].imports]
    assert not gone, f"these crossings are gone: delete them from KNOWN_CROSSINGS: {gone}"


#: modules whose functions stay short enough to read whole: the run's pieces and the pure rules
SHORT = ("run", "records.py", "cursor.py", "mapping.py", "planning.py", "planning_twoway.py", "journal.py")
LONGEST = 80


def test_no_function_in_the_run_package_or_the_pure_rules_is_over_80_lines() -> None:
    src = Path(__file__).resolve().parents[1] / "src" / "ferryman"
    files = [p for name in SHORT for p in ((src / name).rglob("*.py") if (src / name).is_dir() else [src / name])]
    assert files and all(p.exists() for p in files)
    long = [
        f"{p.relative_to(src)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for p in files
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (node.end_lineno or node.lineno) - node.lineno + 1 > LONGEST
    ]
    assert not long, "split these (issue 'Fast': no function over 80 lines in run/ or the pure rules): " + ", ".join(
        long
    )


@pytest.mark.parametrize("name", LEAVES)
def test_leaves_import_nothing_of_ferryman(graph: dict[str, Module], name: str) -> None:
    assert not graph[name].imports, f"{name} is a leaf but imports: {graph[name].imports}"


def test_only_entry_points_import_the_cli(graph: dict[str, Module]) -> None:
    """Commands and the daemon share config, store, services and exit codes through
    ferryman.app, the composition root; importing ferryman.cli back is what made the cycles."""
    importers = {
        name: where
        for name, module in graph.items()
        for target, where in module.imports.items()
        if target == "ferryman.cli"
    }
    unexpected = {name: where for name, where in importers.items() if name not in CLI_IMPORTERS}
    assert not unexpected, "import ferryman.app instead of ferryman.cli:\n" + "\n".join(
        line for where in unexpected.values() for line in where
    )
    assert set(CLI_IMPORTERS) <= set(importers), f"stale CLI_IMPORTERS: {set(CLI_IMPORTERS) - set(importers)}"


def test_ferryman_reaches_connectors_through_entry_points(graph: dict[str, Module]) -> None:
    importers = {
        name: where
        for name, module in graph.items()
        if name.split(".")[0] == "ferryman"
        for target, where in module.imports.items()
        if _within(target, "ferryman_connectors")
    }
    unexpected = {name: where for name, where in importers.items() if name not in CONNECTOR_IMPORTERS}
    assert not unexpected, "find connectors through ferryman.plugins (entry points), not by import:\n" + "\n".join(
        line for where in unexpected.values() for line in where
    )
    assert set(CONNECTOR_IMPORTERS) <= set(importers), f"stale: {set(CONNECTOR_IMPORTERS) - set(importers)}"


def test_the_composition_root_and_the_parser_stay_light() -> None:
    """``ferryman --help`` builds every command's parser: it must not pull in the database,
    validation or HTTP libraries (bench/startup.py times it)."""
    heavy = ("sqlalchemy", "sqlmodel", "pydantic", "httpx", "aiohttp", "apscheduler", "structlog")
    probe = (
        "import sys\n"
        "import ferryman.app\n"
        "from ferryman.cli import build_parser\n"
        "build_parser(['--help'])\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", f"`ferryman --help` imports heavy modules: {done.stdout.strip()}"


# -- the public surface for connector authors --------------------------------------------------

#: module -> its ``__all__``. Change one only to change what connector authors may rely on.
SURFACE: dict[str, list[str]] = {
    "ferryman.api": [
        "MAX_KEY_LENGTH",
        "MAX_NESTING",
        "ApiConnector",
        "cut_nesting",
        "key_problem",
        "nesting_path",
        "nesting_problem",
        "to_record",
        "to_records",
    ],
    "ferryman.config": [
        "DEFAULT_CONFIG_PATH",
        "UNRESOLVED_SECRET",
        "AuditScheduleConfig",
        "ConfigProblems",
        "ConflictPolicy",
        "FerrymanConfig",
        "HistoryConfig",
        "JournalConfig",
        "PipelineConfig",
        "Secret",
        "SystemConfig",
        "did_you_mean",
        "load_config",
    ],
    "ferryman.connector": [
        "Capability",
        "Connector",
        "ConnectorOptions",
        "Cursor",
        "Page",
        "Reject",
        "StreamInfo",
        "SystemContext",
        "natural_key",
        "record_order",
    ],
    "ferryman.cursor": [
        "MICROSECOND",
        "SECOND",
        "Boundary",
        "Cursor",
        "OrderGuard",
        "OrderViolation",
        "due",
        "effective_overlap",
        "filter_floor",
        "is_due",
        "is_older",
        "natural_key",
        "newest",
        "parse_precision",
        "read_from",
        "record_order",
    ],
    "ferryman.errors": [
        "AuthError",
        "ConfigError",
        "ConnectorError",
        "DeferredError",
        "FatalError",
        "FerrymanError",
        "LeaseLost",
        "MalformedResponseError",
        "NotSupportedError",
        "OrderViolation",
        "PagingError",
        "RecordRejected",
        "RetriableError",
        "StateError",
        "StateUnavailable",
        "ValidationFailed",
    ],
    "ferryman.http": [
        "IDEMPOTENT_METHODS",
        "ApiKeyHeader",
        "ApiKeyQuery",
        "Basic",
        "Bearer",
        "BodyCursor",
        "BodyNextUrl",
        "Clock",
        "HttpClient",
        "HttpMetrics",
        "HttpOptions",
        "HttpRegistry",
        "InMemoryRateBudget",
        "LinkHeader",
        "NextRequest",
        "OffsetLimit",
        "PageNumber",
        "Paginator",
        "RateBudget",
        "RateLimitHint",
        "RateLimitOptions",
        "RateLimiter",
        "ResponseHook",
        "extract",
        "host_key",
        "is_loopback",
        "paginate",
        "parse_ratelimit_headers",
        "parse_retry_after",
    ],
    "ferryman.http.auth": ["ApiKeyHeader", "ApiKeyQuery", "Basic", "Bearer", "credential_fingerprint"],
    "ferryman.http.codecs": [
        "XSI_NS",
        "dict_to_xml",
        "dumps_json",
        "excerpt",
        "form_encode",
        "loads_json",
        "parse_xml",
        "python_to_typed_xml",
        "typed_xml_to_python",
        "xml_to_dict",
    ],
    "ferryman.http.pagination": [
        "BodyCursor",
        "BodyNextUrl",
        "LinkHeader",
        "NextRequest",
        "OffsetLimit",
        "PageNumber",
        "Paginator",
        "extract",
        "extract_records",
        "page_signature",
        "paginate",
        "parse_link_header",
    ],
    "ferryman.records": [
        "RECORD_TYPES",
        "Contact",
        "Invoice",
        "Money",
        "Organisation",
        "Record",
        "Reference",
        "Ticket",
        "UtcDateTime",
        "fingerprint",
        "record_type",
    ],
    "ferryman.sandbox": [
        "ADMIN_PREFIX",
        "ALL_HOSTILE",
        "ANCHOR",
        "HOSTILE_MODES",
        "BodyError",
        "Burst",
        "CredentialStats",
        "DataFactory",
        "DuplicateValue",
        "Fault",
        "FaultInjector",
        "FaultSpec",
        "FaultSpecError",
        "RateLimiter",
        "Row",
        "Simulator",
        "SimulatorServer",
        "SimulatorThread",
        "Stats",
        "Table",
        "basic_credentials",
        "bearer_token",
        "json_response",
        "parse_retry_after",
        "read_fields",
        "retry_after_header",
    ],
    "ferryman.sdk": [],  # the package exports nothing itself: its modules do
    "ferryman.sdk.readloop": [
        "DEFAULT_MAX_PAGES",
        "MAX_PAGES",
        "Fetched",
        "PageGuard",
        "collect",
        "keyset_read",
        "max_pages",
        "whole_list_pages",
    ],
    "ferryman.testing": [
        "ConnectorContract",
        "ContractSetup",
        "HostileContract",
        "NoSimulator",
        "collect",
        "need_simulator",
    ],
    "ferryman.timeutil": [
        "UTC",
        "NaiveDatetimeError",
        "ZoneName",
        "check_zone",
        "ensure_utc",
        "format_utc",
        "from_epoch",
        "parse_datetime",
        "parse_duration",
        "utcnow",
    ],
}

#: module -> public-looking names it defines that are not for connector authors, and why
INTERNAL: dict[str, dict[str, str]] = {
    "ferryman.config": {
        # the operator's config: connectors see their own options model, not these
        name: "part of the operator's config tree (FerrymanConfig), not of a connector's options"
        for name in (
            "ControlConfig",
            "DEFAULT_CONCURRENCY",
            "DEFAULT_LEASE_TTL",
            "DeletesConfig",
            "Duration",
            "ENV_PREFIX",
            "LogConfig",
            "LoopBreakerConfig",
            "MAX_ALIAS_NODES",
            "MAX_YAML_DEPTH",
            "ReferenceConfig",
            "ScheduleConfig",
            "StateConfig",
        )
    },
    "ferryman.connector": {"capability_table": "the rows of `ferryman connectors`' table"},
    "ferryman.http.pagination": {
        # returned by paginate(), so it belongs in __all__; http/ is being edited by another change
        "FetchedPage": "what paginate() yields; to be declared in ferryman.http.pagination.__all__",
    },
    "ferryman.records": {
        # how the engine compares a record with the fingerprint a link stored (any version)
        name: "the engine's fingerprint versioning"
        for name in ("FINGERPRINTS", "FINGERPRINT_VERSION", "fingerprint_version", "outdated", "same_content")
    }
    | {
        "fingerprint_digest": "a stored fingerprint without its version prefix (explain prints it)",
        "overwritten": "the fields a write changes: the dry-run diff and the conflict journal",
    },
    "ferryman.testing": {
        "HOSTILE_READ_TIMEOUT": "the hostile kit's own limit",
        "HOSTILE_REQUEST_BUDGET": "the hostile kit's own limit",
    },
    "ferryman.timeutil": {
        "date_to_utc": "the state store's conversions",
        "from_db_time": "the state store's conversions",
        "sqlite_text": "the state store's conversions",
    },
}

#: where authors are told what to import: the connector guide and the new-connector templates
DOCS = ROOT / "docs" / "connectors.md"
TEMPLATES = ROOT / "src" / "ferryman" / "templates" / "connector"


def _defined(path: Path) -> set[str]:
    """Names a module defines at its top level (functions, classes, assignments), not imports."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(n.id for target in node.targets for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_each_surface_module_declares_the_expected_all(name: str) -> None:
    module = importlib.import_module(name)
    declared = getattr(module, "__all__", None)
    assert isinstance(declared, list | tuple), f"{name} declares no __all__ (a list of names)"
    assert len(set(declared)) == len(declared), f"{name}.__all__ names something twice"
    missing = [n for n in declared if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module does not have: {missing}"
    added, removed = sorted(set(declared) - set(SURFACE[name])), sorted(set(SURFACE[name]) - set(declared))
    assert not added and not removed, (
        f"{name}.__all__ changed the public surface for connector authors (added {added}, removed {removed}); "
        "if that is meant, change SURFACE in tests/test_architecture.py too"
    )


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_every_public_name_is_declared_or_listed_internal(name: str) -> None:
    module = importlib.import_module(name)
    path = Path(str(module.__file__))
    declared = set(getattr(module, "__all__", ()))
    internal = INTERNAL.get(name, {})
    undeclared = sorted(n for n in _defined(path) - declared if not n.startswith("_") and n not in internal)
    assert not undeclared, (
        f"{name} defines public names outside __all__: {undeclared}; add them to __all__ (and SURFACE), "
        "give them a leading underscore, or list them in INTERNAL with the reason"
    )
    stale = sorted(n for n in internal if n in declared or n not in _defined(path))
    assert not stale, f"INTERNAL[{name!r}] lists names that are declared or gone: {stale}"


_IMPORT = re.compile(r"^\s*from\s+(ferryman[\w.]*)\s+import\s+(\([^)]*\)|[^\n#]+)", re.MULTILINE)
_REFERENCE = re.compile(r"`(ferryman(?:\.\w+)+)`")


def _author_imports() -> list[tuple[str, str, str]]:
    """``(where, module, name)`` for each ``from ferryman... import name`` in the connector
    guide's Python blocks and in the templates."""
    texts = [
        (str(DOCS.relative_to(ROOT)), block) for block in re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    ]
    texts += [(str(p.relative_to(ROOT)), p.read_text()) for p in sorted(TEMPLATES.glob("*.py.tmpl"))]
    found = []
    for where, text in texts:
        for match in _IMPORT.finditer(text):
            for part in match.group(2).strip("()").split(","):
                name = part.split(" as ")[0].strip()
                if name:
                    found.append((where, match.group(1), name))
    return found


def test_the_guide_and_the_templates_import_only_declared_names() -> None:
    found = _author_imports()
    assert len(found) > 20, f"the parse found too few imports to check ({len(found)}): has the template layout changed?"
    problems = []
    for where, module, name in found:
        if module not in SURFACE:
            problems.append(f"{where}: `from {module} import {name}`: {module} is not in SURFACE")
        elif name not in SURFACE[module] and f"{module}.{name}" not in SURFACE:
            problems.append(f"{where}: `from {module} import {name}`: not in {module}.__all__")
    assert not problems, "\n".join(problems)


def test_the_guide_names_only_declared_things() -> None:
    """``ferryman.x.Name`` in docs/connectors.md: ``x`` is a surface module and ``Name`` is in
    its ``__all__``; references to other modules (``python -m ferryman.schema``) are not checked."""
    checked, problems = 0, []
    for number, line in enumerate(DOCS.read_text().splitlines(), 1):
        for reference in _REFERENCE.findall(line):
            if reference in SURFACE:
                checked += 1
                continue
            module, _, name = reference.rpartition(".")
            if module in SURFACE:
                checked += 1
                if name not in SURFACE[module]:
                    problems.append(f"docs/connectors.md:{number}: `{reference}`: {name} is not in {module}.__all__")
    assert checked > 5, f"only {checked} references checked: has the guide's style changed?"
    assert not problems, "\n".join(problems)


def test_the_built_in_connectors_use_only_declared_names(graph: dict[str, Module]) -> None:
    """A built-in connector is written as a third-party one would be: from a surface module it
    takes only what that module declares."""
    problems = []
    for name, module in sorted(graph.items()):
        if not name.startswith("ferryman_connectors"):
            continue
        for node in _runtime_nodes(ast.parse(module.path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in SURFACE and not node.level:
                for alias in node.names:
                    if alias.name not in SURFACE[node.module] and f"{node.module}.{alias.name}" not in SURFACE:
                        problems.append(
                            f"{module.path.relative_to(ROOT)}:{node.lineno}: {alias.name} is not in {node.module}.__all__"
                        )
    assert not problems, "\n".join(problems)
