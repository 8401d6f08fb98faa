"""The import graph of ``inpaint``: every arrow points one way (no circle, not even through an
import inside a function), the modules the event path and the image's weights stage import at
start-up stay torch-free, and the model's libraries are imported only after the environment
they read (``inpaint.model.runtime``)."""

from __future__ import annotations

import ast
import graphlib
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "inpaint"
#: The libraries only ``inpaint.model`` and ``inpaint.randmodel`` import.
HEAVY = ("torch", "diffusers", "transformers", "torchao")
#: Of those, the ones that read the environment at import or install their own log handlers.
READS_RUNTIME = ("diffusers", "transformers", "torchao")
RUNTIME = "inpaint.model.runtime"


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
    assert "inpaint.model.weights_layout" in graph and "inpaint.model" in graph
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError
    assert order.index("inpaint.model.weights_layout") < order.index("inpaint.model.checks")


def test_imports_inside_functions_are_arrows_too(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "def f():\n"
        "    from inpaint.model.encoders import encode_with\n"
        "    import inpaint.model.prompts\n"
    )
    known = {"inpaint.model.encoders", "inpaint.model.prompts", "inpaint.config"}
    assert _imports(module, known) == {"inpaint.model.encoders", "inpaint.model.prompts"}


def test_the_torch_free_rooms_import_no_torch_and_leave_the_hub_online():
    """The settings, the model package itself and its torch-free rooms: what the serving path
    imports at start-up and the image's weights stage imports before it downloads (which must
    stay online: only ``inpaint.model.runtime`` sets ``HF_HUB_OFFLINE``)."""
    code = (
        "import os, sys, inpaint.config, inpaint.model, inpaint.model.prompts,"
        " inpaint.model.weights_download, inpaint.model.weights_layout, inpaint.model.params,"
        " inpaint.model.flux_names, inpaint.model.gpuhealth;"
        "heavy = ('torch', 'diffusers', 'transformers', 'torchao', 'huggingface_hub');"
        "print(sorted(m for m in heavy if m in sys.modules), os.environ.get('HF_HUB_OFFLINE'))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "[] None"


def _heavy_imports(body: list[ast.stmt]) -> list[tuple[ast.stmt, str]]:
    """``(statement, library)`` for each import of a ``HEAVY`` library in ``body`` itself,
    an ``if TYPE_CHECKING:`` block left out (it never runs)."""
    found = []
    for node in body:
        if isinstance(node, ast.Import):
            found += [(node, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node, node.module.split(".")[0]))
    return [(node, lib) for node, lib in found if lib in HEAVY]


def _imports_runtime_before(body: list[ast.stmt], node: ast.stmt | None = None) -> bool:
    """Whether ``body`` imports ``inpaint.model.runtime`` before ``node`` (None: anywhere)."""
    for statement in body:
        if statement is node:
            return False
        if isinstance(statement, ast.Import) and any(a.name == RUNTIME for a in statement.names):
            return True
        if isinstance(statement, ast.ImportFrom) and (
            statement.module == RUNTIME
            or (
                statement.module == "inpaint.model"
                and any(a.name == "runtime" for a in statement.names)
            )
        ):
            return True
    return False


def runtime_violations() -> list[str]:
    """Where a module imports the model's libraries against the rule.

    At a module's top level: torch, diffusers, transformers or torchao only under
    ``inpaint/model/``, each module importing ``inpaint.model.runtime`` before them. Inside a
    function (the lazy imports that keep ``inpaint.randmodel`` and the torch-free rooms cheap to
    import): only under ``inpaint/model/`` or ``inpaint/randmodel/``, and diffusers, transformers
    and torchao (which read the environment at import and install their own log handlers) only
    after ``inpaint.model.runtime``, at the top of the module or earlier in the function. A
    function importing torch alone needs no environment.
    """
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name == RUNTIME:
            continue
        tree = ast.parse(path.read_text())
        in_model = name.startswith("inpaint.model.")
        in_randmodel = name.startswith("inpaint.randmodel")
        runtime_at_top = _imports_runtime_before(tree.body)
        for node, lib in _heavy_imports(tree.body):
            if not in_model:
                problems.append(f"{name}:{node.lineno} imports {lib} at its top level")
            elif not _imports_runtime_before(tree.body, node):
                problems.append(f"{name}:{node.lineno} imports {lib} before {RUNTIME}")
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node, lib in _heavy_imports(function.body):
                if not (in_model or in_randmodel):
                    problems.append(f"{name}:{node.lineno} imports {lib}")
                elif lib in READS_RUNTIME and not (
                    runtime_at_top or _imports_runtime_before(function.body, node)
                ):
                    problems.append(f"{name}:{node.lineno} imports {lib} before {RUNTIME}")
    return problems


def test_the_model_libraries_come_after_the_runtime_and_only_in_the_model_rooms():
    assert runtime_violations() == []


def test_the_runtime_rule_finds_what_breaks_it(tmp_path, monkeypatch):
    fake = tmp_path / "inpaint"
    (fake / "model").mkdir(parents=True)
    (fake / "session").mkdir()
    (fake / "randmodel").mkdir()
    (fake / "model" / "good.py").write_text("import inpaint.model.runtime\n\nimport torch\n")
    (fake / "model" / "early.py").write_text("import torch\nimport inpaint.model.runtime\n")
    (fake / "session" / "heavy.py").write_text("import inpaint.model.runtime\nimport torch\n")
    (fake / "randmodel" / "lazy.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import torch\n"
        "def ok():\n    import torch\n"
        "def ok_too():\n    import inpaint.model.runtime\n    from diffusers import X\n"
        "def bad():\n    from transformers import Y\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert runtime_violations() == [
        "inpaint.model.early:1 imports torch before inpaint.model.runtime",
        "inpaint.randmodel.lazy:10 imports transformers before inpaint.model.runtime",
        "inpaint.session.heavy:2 imports torch at its top level",
    ]


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
