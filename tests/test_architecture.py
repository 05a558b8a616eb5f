"""The architecture contract, checked on the real import graph (grimp, imports inside functions
included): the hook imports only itself and the standard library, the trainers never reach the
agent, the store or the scheduler, and the agent's packages form layers with no upward import.
The graph must hold every first-party module on disk, and no first-party module may be imported
by a string, so none of this can pass by missing an edge."""

from __future__ import annotations

import ast
import sys

import grimp
import pytest

from first_party import FOLDERS, ROOT, checkout_modules

# The agent's packages, lowest first: each may import the ones below it (and ccrl.trainers,
# ccrl.hooks), never one above it. cli is the top: it only wires commands to the rest.
AGENT_LAYERS = ("core", "store", "capture", "datasets", "training", "evaluation", "release", "daemon",
                "operations", "cli")
# What the trainers must never import: the agent (store, scheduler, settings) and the database and
# scheduling libraries it uses. A trainer runs anywhere (a GPU box, accelerate's ranks) on files.
TRAINERS_FORBIDDEN = ("ccrl.agent", "sqlmodel", "sqlalchemy", "psycopg", "apscheduler")
# Module cycles inside one package that remain, each to go with the module that owns it:
# training ⇄ rl_training share the run lifecycle (SFT dispatches to RL, RL reuses SFT's run helpers);
# child ⇄ steps: the child process runs the steps, and the steps use the child's stop flag and
# progress reporter; cli.admin ⇄ cli.purge_cmd register each other's commands. A new cycle fails.
KNOWN_MODULE_CYCLES = {
    frozenset({"ccrl.agent.training.training", "ccrl.agent.training.rl_training"}),
    frozenset({"ccrl.agent.daemon.child", "ccrl.agent.daemon.steps"}),
    frozenset({"ccrl.agent.cli.admin", "ccrl.agent.cli.purge_cmd"}),
}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*FOLDERS.values(), include_external_packages=True, cache_dir=None)


def first_party(graph: grimp.ImportGraph) -> set[str]:
    return {m for m in graph.modules if m.startswith("ccrl.")}


def imports_of(graph: grimp.ImportGraph, module: str) -> set[str]:
    return graph.find_modules_directly_imported_by(module)


def test_the_graph_holds_every_module_on_disk_and_counts_imports_inside_functions(graph):
    assert set(checkout_modules()) == first_party(graph)
    assert len(first_party(graph)) > 100  # the walk found the tree
    # An import that only happens inside a function is an edge too (the child's step runner
    # imports the steps in child_main, not at the top of the module).
    assert "ccrl.agent.daemon.steps" in imports_of(graph, "ccrl.agent.daemon.child")
    top_level = {f"{node.module}.{alias.name}" for node in ast.parse((ROOT / "agent/daemon/child.py").read_text()).body
                 if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert "ccrl.agent.daemon.steps" not in top_level


def test_the_hook_imports_only_itself_and_the_standard_library(graph):
    hook_modules = {m for m in first_party(graph) if m.startswith("ccrl.hooks")}
    # Run as a script (settings written by older versions), the hook imports its siblings by
    # their bare names: those are its own modules too.
    siblings = {m.rpartition(".")[2] for m in hook_modules}
    outside = {(m, i) for m in hook_modules for i in imports_of(graph, m)
               if not i.startswith("ccrl.hooks") and i.split(".")[0] not in sys.stdlib_module_names
               and i not in siblings}
    assert outside == set()


def test_the_trainers_never_reach_the_agent_the_store_or_the_scheduler(graph):
    trainer_modules = {m for m in first_party(graph) if m.startswith("ccrl.trainers")}
    assert "ccrl.trainers.conversation" in trainer_modules and "ccrl.trainers.signals" in trainer_modules
    reached = {(m, i) for m in trainer_modules for i in imports_of(graph, m)
               if any(i == f or i.startswith(f + ".") for f in TRAINERS_FORBIDDEN)}
    assert reached == set()


def _agent_package(module: str) -> str | None:
    """``core`` for ``ccrl.agent.core.config`` (and for ``ccrl.agent.core``); None for ``ccrl.agent``."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["ccrl", "agent"] and len(parts) > 2 else None


def test_the_agent_packages_are_layers_with_no_upward_import(graph):
    on_disk = {p.name for p in (ROOT / "agent").iterdir() if (p / "__init__.py").is_file()}
    assert on_disk == set(AGENT_LAYERS)  # every package has its place, and each named one exists
    rank = {name: i for i, name in enumerate(AGENT_LAYERS)}
    upward = set()
    for module in first_party(graph):
        source = _agent_package(module)
        if source is None:
            continue
        for imported in imports_of(graph, module):
            target = _agent_package(imported)
            if target is not None and rank[target] > rank[source]:
                upward.add(f"{module} -> {imported}")
    assert sorted(upward) == []


def test_no_folder_holds_more_than_twenty_modules():
    for folder in FOLDERS:
        for directory in [ROOT / folder, *(p for p in (ROOT / folder).rglob("*") if p.is_dir())]:
            modules = [p for p in directory.glob("*.py") if p.name != "__init__.py"]
            assert len(modules) <= 20, (directory, len(modules))


def _module_cycles(graph: grimp.ImportGraph) -> set[frozenset[str]]:
    """The strongly connected components of more than one first-party module (Tarjan)."""
    modules = sorted(first_party(graph))
    edges = {m: sorted(i for i in imports_of(graph, m) if i.startswith("ccrl.") and i != m) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for module in modules:
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_crosses_a_package_and_no_new_one_appears(graph):
    cycles = _module_cycles(graph)
    for cycle in cycles:
        assert len({m.rsplit(".", 1)[0] for m in cycle}) == 1, sorted(cycle)
    assert cycles == KNOWN_MODULE_CYCLES


def _string_imports(source: str, label: str) -> list[str]:
    """Calls in ``source`` that import a module named by a string (``importlib.import_module(...)``,
    ``__import__(...)``) whose name is first-party or not a literal at all."""
    found = []
    for node in ast.walk(ast.parse(source, filename=label)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name not in ("import_module", "__import__"):
            continue
        arg = node.args[0]
        literal = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
        if literal is None or literal.split(".")[0] in ("ccrl", *FOLDERS):
            found.append(f"{label}:{node.lineno}")
    return found


def test_no_first_party_module_is_imported_by_a_string():
    sources = [*checkout_modules().values(), *sorted((ROOT / "benchmarks").rglob("*.py")),
               *sorted((ROOT / "scripts").rglob("*.py"))]
    assert len(sources) > 100
    assert [hit for path in sources for hit in _string_imports(path.read_text(), str(path.relative_to(ROOT)))] == []


def test_the_string_import_scan_finds_each_form():
    source = ("import importlib\nfrom importlib import import_module\n"
              "importlib.import_module('ccrl.agent.core.config')\n"  # a first-party name
              "import_module(f'ccrl.agent.{name}')\n"  # not a literal
              "__import__('ccrl')\n"
              "importlib.import_module('json')\n")  # a library by its literal name is fine
    assert _string_imports(source, "probe") == ["probe:3", "probe:4", "probe:5"]
