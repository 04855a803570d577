"""The import rules: the import-linter contracts in pyproject.toml hold, and no module imports itself in a circle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_import_linter_contracts_hold() -> None:
    # Layers point down (cli → application → inference → engine → models, data → foundations), and the library
    # never imports the command line. In a subprocess: import-linter's logging set-up disables every logger that
    # exists when it runs, which would silence the other tests' log checks.
    code = (
        f"from importlinter.cli import lint_imports; raise SystemExit(lint_imports({str(PYPROJECT)!r}, no_cache=True))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[module] = min(low[module], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[module])
            if low[module] == index[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_no_import_cycle_among_the_modules() -> None:
    # Imports inside functions and imports for type hints (under TYPE_CHECKING) count too: a circle hidden at run
    # time is still a circle to a reader.
    graph = grimp.build_graph("bridgeseg", exclude_type_checking_imports=False)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("a", "b", "c"):
        graph.add_module(name)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="a")
    graph.add_import(importer="b", imported="c")
    assert _cycles(graph) == [["a", "b"]]


def test_public_api_at_the_top_level() -> None:
    import warnings

    import pytest

    import bridgeseg
    from bridgeseg.checkpoints import load_model, save_checkpoint
    from bridgeseg.models import SegmentationModel, create_model
    from bridgeseg.runtime.predictor import Prediction, Predictor

    assert bridgeseg.create_model is create_model and bridgeseg.SegmentationModel is SegmentationModel
    assert bridgeseg.load_model is load_model and bridgeseg.save_checkpoint is save_checkpoint
    assert bridgeseg.Predictor is Predictor and bridgeseg.Prediction is Prediction
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for gone in ("Segmentr", "Segmenter", "Segmentor"):  # a typo, and the names the last release deprecated
            with pytest.raises(AttributeError, match=f"no attribute '{gone}'"):
                getattr(bridgeseg, gone)


def test_the_deprecated_paths_are_gone() -> None:
    # They were kept for one release; docs/layout.md says where each went.
    import importlib

    import pytest

    for name in ("bridgeseg.inference", "bridgeseg.export", "bridgeseg.engine.cli", "bridgeseg.predictor"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(name)
