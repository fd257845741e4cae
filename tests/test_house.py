"""The house: arrows point down, no import cycles, no private names across modules."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _imports(path, package):
    """Modules of ``package`` that ``path`` imports (relative imports, anywhere in it: a
    late import inside a function closes a cycle as well)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return {m for m in found if (package / f"{m}.py").exists()}


def test_the_cpu_kernels_have_no_import_cycle():
    package = ROOT / "kernels" / "cpu"
    graph = {p.stem: _imports(p, package) for p in package.glob("*.py")}
    state = {}

    def visit(node, path):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join(path + [node])}"
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, path + [node])
        state[node] = "done"

    for module in sorted(graph):
        visit(module, [])


def test_kernels_import_nothing_from_fastrnn():
    for path in (ROOT / "kernels").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("fastrnn"), path
                assert node.level <= (len(path.relative_to(ROOT / "kernels").parts)), path
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("fastrnn") for a in node.names), path


def _imported_modules(tree):
    """Every module an ``import`` or ``from ... import`` statement names (absolute ones)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_only_the_bridges_import_torch():
    allowed = {"torch", "distributed.py", "_bench_worker.py", "bench.py", "cli.py"}
    for path in (ROOT / "fastrnn").rglob("*.py"):
        rel = path.relative_to(ROOT / "fastrnn").parts[0]
        if any(m.split(".")[0] == "torch" for m in _imported_modules(ast.parse(
                path.read_text()))):
            assert rel in allowed, path


def test_the_house_checks_see_every_form_of_import():
    """The checks above read the code's syntax tree: ``from torch import nn``, a late
    ``import torch.nn`` and an absolute ``from fastrnn.x import _y`` are all seen."""
    tree = ast.parse("def f():\n    import torch.nn\nfrom torch import nn\n")
    assert sorted(_imported_modules(tree)) == ["torch", "torch.nn"]
    assert _private_imports(ast.parse("from fastrnn.kernels.cpu import _forward\n"
                                      "from .x import _y, z\n")) == ["_forward", "_y"]


def _private_imports(tree):
    """Private names imported from another module, relative (``from .x import _y``) or of
    the package (``from fastrnn.x import _y``); a private module itself (``from . import
    _x``) is the package's own."""
    private = []
    for node in ast.walk(tree):
        ours = node.level >= 1 or (node.module or "").split(".")[0] == "fastrnn" \
            if isinstance(node, ast.ImportFrom) else False
        if ours and node.module:
            private += [a.name for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    return private


def test_no_module_imports_another_modules_private_names():
    for path in list((ROOT / "fastrnn").rglob("*.py")) + list((ROOT / "kernels").rglob("*.py")):
        private = _private_imports(ast.parse(path.read_text()))
        assert not private, f"{path.relative_to(ROOT)} imports {private}"


def test_classes_relate_as_in_torch():
    import fastrnn
    gru, cell = fastrnn.GRU(2, 3), fastrnn.GRUCell(2, 3)
    assert not isinstance(gru, fastrnn.RNN) and not isinstance(cell, fastrnn.RNNCell)
    for c in (fastrnn.RNNCell, fastrnn.LSTMCell, fastrnn.GRUCell):
        assert not any(issubclass(c, s) for s in (fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU))
        assert not hasattr(c, "_run")  # no sequence machinery in the step cells


def _sources():
    for folder in ("fastrnn", "kernels"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".cu", ".cuh") and "__pycache__" not in path.parts:
                yield path


def test_cell_ids_and_gate_counts_are_typed_only_in_cells_py():
    import re
    from fastrnn.kernels.cells import CELLS
    names = "|".join(sorted(CELLS, key=len, reverse=True))  # every cell, variants included
    mapping = re.compile(rf"""["']({names})["']\s*:\s*\d""")
    enum = re.compile(rf"\b({names.upper()}|LSTM_P|GRU_RB)\s*=\s*\d")
    for path in _sources():
        if path == ROOT / "kernels" / "cells.py":
            continue
        text = path.read_text()
        assert not mapping.search(text), f"{path}: a cell's id or gate count typed here"
        assert not enum.search(text), f"{path}: a cell id typed here"


def test_the_cpu_loops_take_each_cells_math_from_one_place():
    """The loops call the pointwise step of kernels/cpu/_cells.py; no activation of the
    gate math appears in them."""
    for name in ("_loops.py", "_split.py"):
        text = (ROOT / "kernels" / "cpu" / name).read_text()
        assert "forward_step(" in text
        for word in ("sigmoid(", "tanh(", "rnn_activation"):
            assert word not in text, f"kernels/cpu/{name} computes {word[:-1]} itself"


def test_the_cuda_cell_header_is_generated_from_kernels_cells():
    """kernels/cuda/cell_ids.cuh holds exactly what kernels/cells.py says (regenerate it
    with ``python -m fastrnn.kernels.cuda.names``)."""
    from fastrnn.kernels.cuda import names
    with open(names.HEADER) as f:
        assert f.read() == names.cell_header()


def test_the_code_points_to_the_repository_for_its_legend_and_contract():
    """The shape legend and the kernel contract live in docs/architecture.md, which names
    every module; nothing in the code points to a document outside the repository."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for path in list((ROOT / "kernels").rglob("*.py")) + list((ROOT / "fastrnn").rglob("*.py")):
        text = path.read_text()
        assert "DESIGN.md" not in text, f"{path.relative_to(ROOT)} points outside the repository"
        name = path.stem if path.stem != "__init__" else None
        if name and not name.startswith("test"):
            assert name.lstrip("_") in doc, f"docs/architecture.md does not name {path.name}"
    for path in (ROOT / "kernels" / "cuda").glob("*.cu*"):
        assert "DESIGN.md" not in path.read_text()
