"""Every chapter's "Download as notebook" file, executed by a real kernel.

The notebooks are written by the site build (tools/mkdocs_hooks.py) from the chapter
source. Each must run top to bottom, and each code cell must print exactly the Output
block that the page shows under the same block, so the notebook a reader downloads
reproduces the page.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.harness.fences import classify

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "docs" / "chapters").glob("*.md"))


def test_every_chapter_page_offers_its_notebook(built_site):
    for chapter in CHAPTERS:
        page = built_site / "chapters" / chapter.stem / "index.html"
        html = page.read_text(encoding="utf-8")
        assert f'href="{chapter.stem}.ipynb" download>Download as notebook' in html, chapter.name
        assert (page.parent / f"{chapter.stem}.ipynb").is_file(), chapter.name


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_notebook_runs_and_prints_what_the_page_shows(chapter, built_site, tmp_path):
    notebook = nbformat.read(
        built_site / "chapters" / chapter.stem / f"{chapter.stem}.ipynb", as_version=4
    )
    nbformat.validate(notebook)
    page = classify(chapter.read_text(encoding="utf-8"), chapter)
    runs = [f for f in page.fences if f.kind == "run"]
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c.source.strip() for c in code] == [_dedent(f.body).strip() for f in runs]
    NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=300,
        allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    for cell, fence in zip(code, runs, strict=True):
        # stdout only: in Jupyter, transformers' tqdm may warn on stderr that ipywidgets is
        # missing, which is about the reader's Jupyter, not about the block
        printed = "".join(
            o.get("text", "")
            for o in cell.outputs
            if o.output_type == "stream" and o.get("name") == "stdout"
        )
        shown = fence.output.body if fence.output else ""
        assert printed.strip() == shown.strip(), f"{chapter.name}:{fence.line}"
        echoed = [o for o in cell.outputs if o.output_type == "execute_result"]
        assert not echoed, f"{chapter.name}:{fence.line}: the cell's last line shows a value"


def _dedent(text: str) -> str:
    import textwrap

    return textwrap.dedent(text)
