"""The house's shape: engine/ never imports gradio (or ui/), ui/ never imports torch."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder, banned", [("engine", {"gradio", "gradio_client", "ui"}), ("ui", {"torch"})])
def test_layer_boundaries(folder, banned):
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"{folder}/ has no modules"
    offenders = {str(f.relative_to(ROOT)): sorted(imported_modules(f) & banned) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_checker_sees_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import gradio as gr\n    from torch import nn\n")
    assert {"gradio", "torch"} <= imported_modules(bad)
