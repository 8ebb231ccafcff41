"""The import graph is the data flow: no cycle among pretrax's modules, late (in-function) imports included.

A late import that closes a cycle hides it from Python (the module is complete by the time the function
runs), so it is counted here like any other; a package's own submodules are not edges (its __init__
re-exports them).
"""

import ast
import os

SRC = os.path.join(os.path.dirname(__file__), "..", "src")


def modules() -> dict[str, str]:
    found = {}
    for directory, _, files in os.walk(os.path.join(SRC, "pretrax")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = os.path.relpath(path, SRC)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        while parts and ".".join(parts) not in mods:
            parts.pop()
        return ".".join(parts) or None

    def related(a: str, b: str) -> bool:  # a package and its own submodules
        return a.startswith(b + ".") or b.startswith(a + ".")

    graph = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pretrax"):
                targets = [resolve(f"{node.module}.{a.name}") for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names if a.name.startswith("pretrax")]
            else:
                continue
            graph[module] |= {t for t in targets if t and t != module and not related(module, t)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_even_through_late_imports():
    graph = import_graph()
    assert len(graph) > 50 and "pretrax.train.loop" in graph["pretrax.cli"]  # the walk sees late imports
    assert cycles(graph) == []


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_pretrax_module_imports_torch_or_transformers():
    """Training never pays for the hf extra: interop reads and writes safetensors and JSON itself, so no
    module, late imports included, names torch or transformers (tests/test_hf_interop.py checks it at run time)."""
    heavy = ("torch", "transformers")
    found = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(open(path).read())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{module}: {n}" for n in names if n.split(".")[0] in heavy]
    assert not found, found


# The data flow, bottom up: a module may import its own layer and the layers before it, never a later one.
LAYERS = [
    ("pretrax.errors", "pretrax.config", "pretrax.storage", "pretrax.sizes"),
    ("pretrax.parallel", "pretrax.models", "pretrax.data"),  # the model family tells the data what rows to pack
    ("pretrax.flops", "pretrax.perf", "pretrax.roofline", "pretrax.train.state", "pretrax.train.optimizer",
     "pretrax.train.step", "pretrax.plan"),
]
LATER = ("pretrax.train", "pretrax.generate", "pretrax.score", "pretrax.evaluation", "pretrax.finetune",
         "pretrax.sweeps", "pretrax.interop", "pretrax.cli", "pretrax.bench", "pretrax.compile")


def _layer(module: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    return None


def test_no_import_runs_back_up_the_data_flow():
    """config/sizes <- models, data, parallel <- flops, the state, the step, the plan <- everything that runs."""
    back = []
    for module, targets in import_graph().items():
        mine = _layer(module)
        if mine is None:
            continue
        for t in targets:
            theirs = _layer(t)
            later = theirs is None and t.startswith(LATER) or (theirs is not None and theirs > mine)
            if later and not (mine == 2 and t.startswith("pretrax.train.") and theirs == 2):
                back.append(f"{module} -> {t}")
    assert not back, back
