"""The project's import graph: no circle, every import points down the layers, no crowded folder.

Every `import` counts, those inside functions too (an import placed in a function to dodge a circle
is still a dependency). A module belongs to the longest layer prefix that names it; it may import
its own layer and the layers below it, never one above.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE = ("library", "networks")
MAX_FILES_PER_FOLDER = 20

# lowest first; each entry is one layer (a module may import its own layer and those before it)
LAYERS = [
    ("library.errors",),
    ("library", "library.file_io", "library.third_party", "library.process_exit"),
    ("library.entry",),
    ("library.models",),
    ("library.data",),
    ("library.data.caching", "library.data.tagging"),
    ("library.lora",),
    ("library.generation",),
    ("networks",),
    ("library.training.parallel",),
    ("library.training.optim",),
    ("library.training.residency",),
    ("library.training.config",),
    ("library.training.inputs",),
    ("library.training.objective",),
    ("library.training.memory",),
    ("library.training.outputs",),
    ("library.training",),  # the run itself: trainer, network set-up, pivotal tuning, samples
    ("library.preparation",),  # the caching tools' glue: they read training configs
    ("library.diagnostics",),  # the benchmark: runs the trainer
]


def module_names() -> dict[str, Path]:
    modules = {}
    for top in CODE:
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {dep for dep in deps if dep in modules and dep != name}
    return graph


def layer_of(module: str) -> int:
    best, best_length = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_every_import_points_down_the_layers():
    upward = sorted(f"{module} -> {dep}" for module, deps in import_graph().items() for dep in deps
                    if layer_of(dep) > layer_of(module))
    assert upward == []


def test_no_folder_of_code_holds_more_than_twenty_files():
    crowded = {}
    for top in CODE:
        for folder in [REPO / top, *(p for p in (REPO / top).rglob("*") if p.is_dir())]:
            count = sum(1 for p in folder.glob("*.py") if p.name != "__init__.py")
            if count > MAX_FILES_PER_FOLDER:
                crowded[str(folder.relative_to(REPO))] = count
    assert crowded == {}


def test_the_checks_can_fail():
    """A planted circle and an upward import are found (the checks are not vacuous)."""
    graph = {"a": {"b"}, "b": {"a"}, "c": set()}
    assert cycles(graph) == [["a", "b"]]
    assert layer_of("library.errors") < layer_of("library.training.loop")
    assert layer_of("library.training.inputs.latent_source") > layer_of("library.training.config.options")
