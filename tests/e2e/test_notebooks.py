"""The notebooks run top to bottom on a tiny budget, and are committed without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ["quickstart.ipynb", "tricks.ipynb"]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, f"{name} has no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [], (
            f"{name}: code cell {i} has outputs; strip them before committing"
        )
        assert cell.execution_count is None, f"{name}: code cell {i} has an execution count"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_tiny_budget(
    name: str, cifar10_archive: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Executes every cell in a fresh kernel; any exception (assertions included) fails."""
    monkeypatch.setenv("BNN_NOTEBOOK_BUDGET", "tiny")
    monkeypatch.setenv("BNN_DATA_DIR", str(cifar10_archive.parent))
    monkeypatch.setenv("BNN_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel's torch threads, as in conftest
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert images, f"{name} drew no figure"
