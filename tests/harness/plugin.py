"""pytest plugin: every fence of every page under ``docs/`` becomes a test.

* ``pytest docs/chapters/01-self-attention.md`` tests one chapter.
* ``pytest docs`` tests every page; plain ``pytest`` runs docs and unit tests.
* ``--update-outputs`` rewrites the Output blocks from a real run, for review in
  the diff (``make refresh`` does this).

A failing test names the page and the line (``docs/chapters/x.md:42``), and a
changed output is shown as a diff of the page's Output block against the real one.
"""

from __future__ import annotations

import atexit
import difflib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from mkdocs.utils import markdown_extensions

from .fences import OUTPUT_INFO, Fence, classify
from .rendered import reconcile

ZYGOTE = Path(__file__).with_name("zygote.py")
#: Every suffix MkDocs renders as a Markdown page.
MARKDOWN_SUFFIXES = tuple(markdown_extensions)
_updates = pytest.StashKey[dict]()


class BlockFailure(Exception):
    """A fence failed its check; the message is the whole report."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnbook", "attnbook docs harness")
    group.addoption(
        "--update-outputs",
        action="store_true",
        default=False,
        help="rewrite each page's Output blocks from what its blocks really print",
    )
    parser.addini("book_docs_dir", "folder whose Markdown pages are tested", default="docs")
    parser.addini("book_block_timeout", "seconds one block may run", default="120")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_updates] = {}
    if config.getoption("update_outputs") and getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("--update-outputs rewrites pages in one process: drop -n")


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    docs = parent.config.rootpath / parent.config.getini("book_docs_dir")
    if file_path.suffix in MARKDOWN_SUFFIXES and file_path.is_relative_to(docs):
        return BookPage.from_parent(parent, path=file_path)
    return None


def _relative(config: pytest.Config, path: Path) -> Path:
    try:
        return path.relative_to(config.rootpath)
    except ValueError:
        return path


class BookPage(pytest.File):
    """One Markdown page: an item per fence, plus one per page-level problem."""

    def collect(self):
        rel = _relative(self.config, self.path)
        text = self.path.read_text(encoding="utf-8")
        page = classify(text, rel)
        reconcile(page, self.config.rootpath, text)
        for line, message in page.problems:
            yield Rejected.from_parent(
                self, name=f"line {line} rejected", line=line, message=message
            )
        for fence in page.fences:
            if fence.kind == "run":
                label = "python+output" if fence.output else "python"
                yield RunBlock.from_parent(self, name=f"line {fence.line} {label}", fence=fence)
            elif fence.kind == "source":
                yield SourceBlock.from_parent(self, name=f"line {fence.line} source", fence=fence)
            elif fence.kind == "text":
                yield ShownBlock.from_parent(
                    self, name=f"line {fence.line} {fence.lang} (not run)", fence=fence
                )
            elif fence.kind == "reject":
                yield Rejected.from_parent(
                    self, name=f"line {fence.line} rejected", line=fence.line, message=fence.reason
                )


class _Item(pytest.Item):
    kind = ""

    def __init__(self, *, fence: Fence | None = None, line: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.fence = fence
        self.line = fence.line if fence else line
        self.user_properties.append(("fence_kind", self.kind))

    @property
    def where(self) -> str:
        return f"{_relative(self.config, self.path)}:{self.line}"

    def reportinfo(self):
        return self.path, self.line - 1, f"{self.where} ({self.name})"

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, BlockFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)


class Rejected(_Item):
    """A fence (or line) the book does not allow. It always fails, saying why."""

    kind = "rejected"

    def __init__(self, *, message: str, **kwargs):
        super().__init__(**kwargs)
        self.message = message

    def runtest(self):
        raise BlockFailure(f"{self.where}: {self.message}")


class ShownBlock(_Item):
    """A fence in a language that is shown, not run (``text``, ``console``, ...)."""

    kind = "not run"

    def runtest(self):
        return None  # classified by the harness; nothing to execute


class SourceBlock(_Item):
    """Package source on the page: the include must resolve to a non-empty section of src/."""

    kind = "source"

    def runtest(self):
        from .snippets import check_include

        problem = check_include(self.config.rootpath, self.fence.include, self.fence.attrs)
        if problem:
            raise BlockFailure(f"{self.where}: {problem}")


class RunBlock(_Item):
    """A runnable block: run alone in a fresh interpreter, its printout compared exactly."""

    kind = "run"

    def runtest(self):
        fence = self.fence
        timeout = float(self.config.getini("book_block_timeout"))
        result = RUNNER.run(
            code=fence.body,
            filename=str(_relative(self.config, self.path)),
            line=fence.line + 1,
            timeout=timeout,
        )
        actual = result["output"]
        if actual and not actual.endswith("\n"):
            actual += "\n"
        if result["timed_out"]:
            raise BlockFailure(
                f"{self.where}: the python block ran past {timeout:g} s and was "
                f"stopped. What it printed:\n{actual}"
            )
        if result["status"] != 0:
            raise BlockFailure(
                f"{self.where}: the python block failed (exit status "
                f"{result['status']}). What it printed:\n{actual}"
            )
        expected = fence.output.body if fence.output else ""
        if actual == expected:
            return
        odd = sorted({repr(c) for c in actual if c not in "\n\t" and (c < " " or c == "\x7f")})
        if odd:
            raise BlockFailure(
                f"{self.where}: the python block prints control characters "
                f"({', '.join(odd)}) that a page cannot show as printed; print "
                f"plain text. What it printed: {actual!r}"
            )
        if self.config.getoption("update_outputs"):
            self.config.stash[_updates].setdefault(self.path, []).append((fence, actual))
            return
        if fence.output is None:
            raise BlockFailure(
                f"{self.where}: the python block prints output but the page shows no "
                f"```{OUTPUT_INFO} block after it.\nWhat it printed:\n{actual}\n"
                f"Add it from a real run with: make refresh PAGE={_relative(self.config, self.path)}"
            )
        out = fence.output
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=f"{_relative(self.config, self.path)}:{out.line} (Output block on the page)",
                tofile="what the block really prints",
            )
        )
        raise BlockFailure(
            f"{self.where}: the Output block at line {out.line} differs from what this python "
            f"block prints:\n{diff}\n"
            f"Refresh it from a real run with: make refresh PAGE={_relative(self.config, self.path)}"
        )


# --- the zygote: one per pytest process --------------------------------------------------


class Zygote:
    """A process (tests/harness/zygote.py) that has imported torch once and forks a fresh child per block.

    Started on first use, so a run that executes no block never pays for it.
    """

    def __init__(self):
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(ZYGOTE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            encoding="utf-8",
        )
        hello = self.proc.stdout.readline()
        if not hello:
            raise RuntimeError("the block runner (tests/harness/zygote.py) failed to start")

    def run(self, **request) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            self.proc = None
            raise RuntimeError("the block runner (tests/harness/zygote.py) died")
        return json.loads(answer)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        self.proc = None


#: One runner per pytest process (each xdist worker has its own), closed at exit. Nested
#: pytester sessions in the harness's own tests share it, so torch is imported once.
RUNNER = Zygote()
atexit.register(RUNNER.close)


# --- refreshing Output blocks -------------------------------------------------------------


def _fence_text(indent: str, output: str) -> list[str]:
    longest = max((len(m) for m in re.findall(r"^[ \t>]*(`{3,})", output, re.M)), default=2)
    ticks = "`" * max(3, longest + 1)
    body = [indent + line if line else line for line in output.splitlines()]
    return [f"{indent}{ticks}{OUTPUT_INFO}", *body, f"{indent}{ticks}"]


def rewrite_outputs(path: Path, changes: list[tuple[Fence, str]]) -> None:
    """Replace, add or remove the Output block after each changed runnable fence."""
    raw = path.read_bytes().decode("utf-8")  # read_text would hide CRLF line endings
    newline = "\r\n" if "\r\n" in raw else "\n"
    lines = raw.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for fence, actual in sorted(changes, key=lambda c: c[0].line, reverse=True):
        indent = fence.indent
        new = _fence_text(indent, actual) if actual else []
        if fence.output is not None:
            start, stop = fence.output.line - 1, fence.output.end_line
            if not new:  # nothing printed any more: drop the block and the blank line before it
                start = fence.end_line
            lines[start:stop] = new
        elif new:
            lines[fence.end_line : fence.end_line] = ["", *new]
    path.write_bytes((newline.join(lines) + newline).encode("utf-8"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for path, changes in session.config.stash[_updates].items():
        rewrite_outputs(path, changes)
        rel = _relative(session.config, path)
        reporter.ensure_newline()
        reporter.write_line(
            f"rewrote {len(changes)} Output block(s) in {rel}: review with `git diff {rel}`"
        )


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    kinds: Counter[str] = Counter()
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for key, value in getattr(report, "user_properties", ()):
                if key == "fence_kind":
                    kinds[value] += 1
    if kinds:
        parts = ", ".join(f"{kinds[k]} {k}" for k in ("run", "source", "not run", "rejected"))
        terminalreporter.write_line(f"docs harness: {sum(kinds.values())} fences checked: {parts}")
