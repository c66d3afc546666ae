"""Every lab notebook: a jupytext text file, executed top to bottom by a real Jupyter kernel."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

from tests.harness.fences import scan

ROOT = Path(__file__).resolve().parents[1]
LABS = sorted((ROOT / "docs" / "labs").glob("*.py"))


def test_there_are_labs_and_no_committed_ipynb():
    assert LABS, "no lab notebooks found under docs/labs"
    assert not list((ROOT / "docs").rglob("*.ipynb")), "labs are jupytext .py files, not .ipynb"


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.name)
def test_lab_is_a_percent_format_text_notebook(lab):
    text = lab.read_text(encoding="utf-8")
    assert "format_name: percent" in text, "the jupytext header must declare the percent format"
    notebook = jupytext.reads(text, fmt="py:percent")
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    assert all(cell.cell_type in ("markdown", "code") for cell in notebook.cells)
    assert not any(cell.get("outputs") for cell in notebook.cells), (
        "a text notebook holds no outputs"
    )


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.name)
def test_lab_markdown_cells_hold_no_python_fences(lab):
    # mkdocs-jupyter renders them as highlighted Python, but only code cells are run.
    notebook = jupytext.read(lab)
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            page = scan(cell.source, lab)
            python = [f for f in page.fences if f.lang.startswith("py") or "python" in f.lang]
            assert not python, (
                f"{lab.name}: a markdown cell holds a ```{python[0].info} fence; "
                "make it a code cell"
            )


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.name)
def test_lab_runs_top_to_bottom(lab, tmp_path):
    notebook = jupytext.read(lab)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=300,
        allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if o.get("name") == "stderr"], "a cell printed warnings"
    nbformat.validate(notebook)
    if lab.stem == "01-attention-heatmap":
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        assert len(images) == 1, "the heatmap is drawn once"
        texts = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        assert "tensor([1., 1., 1., 1.])" in texts
