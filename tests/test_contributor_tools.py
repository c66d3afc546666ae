"""The contributor tooling: pre-commit's notebook checks, the external-link list, templates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "check_notebooks.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, cwd=ROOT
    )


def test_every_lab_and_the_lab_template_pass_the_lab_check():
    labs = sorted(str(p) for p in (ROOT / "docs" / "labs").iterdir())
    result = run("labs", *labs, str(ROOT / "templates" / "lab.py"))
    assert result.returncode == 0, result.stdout


def test_the_lab_check_refuses_notebooks_and_plain_scripts(tmp_path):
    plain = tmp_path / "plain.py"
    plain.write_text("print('no jupytext header')\n")
    ipynb = tmp_path / "lab.ipynb"
    ipynb.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    result = run("labs", str(plain), str(ipynb))
    assert result.returncode == 1
    assert "plain.py: no jupytext header" in result.stdout
    assert "lab.ipynb: labs are jupytext percent-format .py files" in result.stdout


def test_the_output_check_refuses_a_notebook_with_outputs(tmp_path):
    clean = {
        "cells": [
            {
                "cell_type": "code",
                "source": "1",
                "outputs": [],
                "execution_count": None,
                "metadata": {},
            }
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    dirty = json.loads(json.dumps(clean))
    dirty["cells"][0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "1"}]
    (tmp_path / "clean.ipynb").write_text(json.dumps(clean))
    (tmp_path / "dirty.ipynb").write_text(json.dumps(dirty))
    assert run("outputs", str(tmp_path / "clean.ipynb")).returncode == 0
    result = run("outputs", str(tmp_path / "dirty.ipynb"))
    assert result.returncode == 1 and "cell 1 has outputs" in result.stdout


def test_pre_commit_hooks_are_local_and_run_the_projects_own_tools():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert all(repo["repo"] == "local" for repo in config["repos"])  # nothing from the network
    assert {h["id"] for h in hooks} >= {
        "ruff-check",
        "ruff-format",
        "labs-are-jupytext-text",
        "no-notebook-outputs",
    }
    for hook in hooks:
        tool = ROOT / hook["entry"].split()[0]
        assert tool.parent.name == "bin" or tool.exists(), hook["entry"]


def test_external_links_are_listed_and_never_fail(tmp_path):
    (tmp_path / "page.md").write_text("See [x](https://example.org/a) and https://example.org/b.\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "external_links.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert "page.md:1: https://example.org/a" in result.stdout
    assert "page.md:1: https://example.org/b" in result.stdout


def test_pull_request_template_exists():
    text = (ROOT / ".github" / "pull_request_template.md").read_text()
    assert "make test" in text and "make refresh" in text
