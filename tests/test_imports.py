"""The import graph of ``inpaint``: every arrow points one way (no circle, not even through an
import inside a function), and the modules the event path imports at start-up stay torch-free."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "inpaint"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every ``inpaint`` module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {name: _imports(path, modules) - {name} for name, path in files.items()}
    for name in graph:  # a submodule needs its package's __init__ first: not an arrow back
        graph[name] = {dep for dep in graph[name] if not name.startswith(dep + ".")}
    return graph


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert "inpaint.weights_dir" in graph and "inpaint.model" in graph
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError
    assert order.index("inpaint.weights_dir") < order.index("inpaint.model.checks")


def test_imports_inside_functions_are_arrows_too(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n    from inpaint.model import encode_with\n    import inpaint.prompts\n"
    )
    known = {"inpaint.model", "inpaint.prompts", "inpaint.config"}
    assert _imports(module, known) == {"inpaint.model", "inpaint.prompts"}


def test_the_weights_layout_and_prompt_reader_import_no_torch():
    code = (
        "import sys, inpaint.prompts, inpaint.weights, inpaint.weights_dir, inpaint.config;"
        "print(sorted(m for m in ('torch', 'diffusers', 'huggingface_hub') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += graph.get(name, ())
    return seen


def test_the_serving_path_never_imports_the_random_model_builder():
    """``inpaint.randmodel`` serves the CLI's ``tiny`` command, the tests and the image's tiny
    weights stage; nothing the production app imports may reach it."""
    graph = import_graph()
    served = _reachable(graph, "inpaint.serving.app") | _reachable(graph, "inpaint.session.jobs")
    assert {"inpaint.serving.process", "inpaint.model.inpainter", "inpaint.session.firebase"} <= (
        served
    )
    assert not {name for name in served if name.startswith("inpaint.randmodel")}
