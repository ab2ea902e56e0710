"""Every notebook in notebooks/ runs top to bottom (executed with nbclient, as a user would)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

# a line each notebook must print, so that a notebook that silently skips its point fails
EXPECTED_OUTPUT = {"adapter_api.ipynb": "KV cache length per layer", "quickstart.ipynb": "'passed': True"}
NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    expected = EXPECTED_OUTPUT.get(path.name)
    assert expected is None or any(expected in o.get("text", "") for o in outputs)


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS
