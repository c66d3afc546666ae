"""Checks that pre-commit runs on notebooks (see .pre-commit-config.yaml).

``python tools/check_notebooks.py labs FILE...``: every file under docs/labs/ is a
jupytext percent-format ``.py`` file (text that diffs cleanly), not an ``.ipynb``.

``python tools/check_notebooks.py outputs FILE...``: no ``.ipynb`` carries outputs or
execution counts; outputs come from running the notebook, never from the repository.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def lab_problem(path: Path) -> str | None:
    if path.suffix != ".py":
        return "labs are jupytext percent-format .py files (templates/lab.py), not " + path.suffix
    import jupytext

    text = path.read_text(encoding="utf-8")
    if "format_name: percent" not in text.split("# ---", 2)[1 if text.startswith("# ---") else 0]:
        return "no jupytext header with format_name: percent (copy the one in templates/lab.py)"
    notebook = jupytext.reads(text, fmt="py:percent")
    if not any(cell.cell_type == "code" for cell in notebook.cells):
        return "no code cell (# %%) found"
    return None


def outputs_problem(path: Path) -> str | None:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    for number, cell in enumerate(notebook.get("cells", []), start=1):
        if cell.get("outputs") or cell.get("execution_count") is not None:
            return f"cell {number} has outputs or an execution count; clear them before committing"
    return None


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("labs", "outputs"):
        print(__doc__)
        return 2
    check = lab_problem if argv[0] == "labs" else outputs_problem
    failed = 0
    for name in argv[1:]:
        problem = check(Path(name))
        if problem:
            print(f"{name}: {problem}")
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
