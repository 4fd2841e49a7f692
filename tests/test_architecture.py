"""docs/ARCHITECTURE.md's layers, checked: every import of a floatzip module
by another (at the top of a file or inside a function) points to the same
layer or one below, and the imports form no cycle."""
import ast
import os

import floatzip

ROOT = os.path.dirname(floatzip.__file__)

# Top-level module or package -> layer (docs/ARCHITECTURE.md).
LAYERS = {
    "errors": 0, "dtypes": 0, "stats": 0, "memory": 0, "io_utils": 0, "progress": 0, "results": 0,
    "format": 1, "codecs": 1,
    "backends": 2,
    "decode": 3, "encode": 3, "background_writer": 3,
    "api": 4, "directory": 4, "model_dir": 4, "reader": 4, "info": 4,
    "torch": 5,
    "cli": 6, "demo": 6, "__main__": 6, "__init__": 6,
}


def modules():
    """Dotted name (below floatzip) -> path of every module."""
    out = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__") if rel != "__init__" else rel] = path
    return out


def imports(name, path):
    """The floatzip modules ``name`` imports (dotted, below floatzip)."""
    package = name.split(".")[:-1] if not path.endswith("__init__.py") else name.split(".")
    if name == "__init__":
        package = []
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("floatzip"):
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                found.add(".".join(target + [alias.name]))
                found.add(".".join(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("floatzip."):
                    found.add(alias.name.removeprefix("floatzip."))
    known = modules()
    return {f for f in found if f in known and f != name}


def layer(name):
    return LAYERS[name.split(".")[0]]


def test_every_module_has_a_layer():
    assert not [m for m in modules() if m.split(".")[0] not in LAYERS]


def test_imports_point_down():
    upward = [(m, t) for m, path in modules().items() for t in imports(m, path)
              if layer(t) > layer(m)]
    assert not upward, "imports from a lower layer to a higher one: " + ", ".join(
        f"{m} -> {t}" for m, t in sorted(upward))


def test_no_import_cycles():
    graph = {m: imports(m, path) for m, path in modules().items()}
    # A package's __init__ importing its own submodules is how Python
    # packages work, not a cycle between concerns.
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
