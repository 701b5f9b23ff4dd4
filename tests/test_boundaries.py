"""The house's shape: engine/ never imports gradio (or ui/), ui/ never imports torch, the engine's wings
import only downwards with no circle, and app.py reaches the engine only through the facade."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# engine/'s top: shared vocabulary that every wing may use and that imports no wing.
TOP = {"engine", "engine.errors", "engine.events", "engine.cancel", "engine.streaming", "engine.validation",
       "engine.files", "engine.images"}
# Wings from the bottom up: each may import the top, itself and the wings before it.
WINGS = ("models", "sampling", "records", "worker", "forward", "training", "builtin", "testing")
FACADE = "engine.workbench"  # the front door: may import any wing


def imported_modules(path: Path) -> set[str]:
    """Top-level package names imported anywhere in the file (function bodies included)."""
    return {name.split(".")[0] for name in imported_names(path)}


def imported_names(path: Path) -> set[str]:
    """Full dotted names imported anywhere in the file; ``from a import b`` gives ``a`` and ``a.b``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def engine_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """engine module -> the engine modules it imports (packages resolved to their modules)."""
    files = {module_name(p) if root == ROOT else ".".join(p.relative_to(root).with_suffix("").parts)
             .removesuffix(".__init__"): p for p in sorted((root / "engine").rglob("*.py"))}
    files = {m: p for m, p in files.items() if not m.endswith("__main__")}
    return {m: {n for n in imported_names(p) if n in files and n != m} for m, p in files.items()}


def wing(module: str) -> int | None:
    """The wing's rank (0 = models), -1 for the top, None for the facade."""
    if module in TOP:
        return -1
    if module == FACADE:
        return None
    return WINGS.index(module.split(".")[1])


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in graph.items():
        rank = wing(module)
        for dep in deps:
            dep_rank = wing(dep)
            if rank is not None and (dep_rank is None or dep_rank > rank):
                bad.append(f"{module} -> {dep}")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("folder, banned", [("engine", {"gradio", "gradio_client", "ui"}), ("ui", {"torch"})])
def test_layer_boundaries(folder, banned):
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"{folder}/ has no modules"
    offenders = {str(f.relative_to(ROOT)): sorted(imported_modules(f) & banned) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_engine_has_wings_and_no_loose_modules():
    graph = engine_graph()
    loose = sorted(m for m in graph if m.count(".") == 1 and m not in TOP | {FACADE}
                   and m.split(".")[1] not in WINGS)
    assert loose == [], "engine/ modules outside the top vocabulary belong in a wing"
    assert {m.split(".")[1] for m in graph if m.count(".") >= 2} == set(WINGS)
    assert all((ROOT / "engine" / w / "__init__.py").is_file() for w in WINGS)


def test_engine_imports_run_downwards_only():
    assert upward_imports(engine_graph()) == []


def test_engine_has_no_import_circle():
    assert cycles(engine_graph()) == []


def test_app_reaches_the_engine_only_through_the_facade():
    engine_imports = {n for n in imported_names(ROOT / "app.py") if n.startswith("engine.")}
    allowed = {"engine.workbench", "engine.workbench.Workbench", "engine.workbench.Folders",
               "engine.workbench.UploadLimits",
               "engine.models.devices", "engine.models.devices.DEVICE_CHOICES"}
    assert engine_imports - allowed == set()
    assert "bench.registry" not in (ROOT / "app.py").read_text()


def test_checker_sees_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import gradio as gr\n    from torch import nn\n")
    assert {"gradio", "torch"} <= imported_modules(bad)


def test_checker_finds_circles_and_upward_imports(tmp_path):
    (tmp_path / "engine" / "models").mkdir(parents=True)
    (tmp_path / "engine" / "sampling").mkdir()
    (tmp_path / "engine" / "models" / "a.py").write_text("def f():\n    from engine.sampling.b import g\n")
    (tmp_path / "engine" / "sampling" / "b.py").write_text("from engine.models.a import f\n")
    graph = engine_graph(tmp_path)
    assert cycles(graph) == [["engine.models.a", "engine.sampling.b"]]
    assert upward_imports(graph) == ["engine.models.a -> engine.sampling.b"]
