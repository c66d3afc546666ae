"""Find and classify every fenced block of a book page.

The book's rule is simple: a fence either runs, or is checked, or is plainly not
code. Nothing that looks like Python may slip through unread. Each fence gets
one of these kinds:

``run``
    A bare ```` ```python ```` fence: executed alone in a fresh interpreter.
``output``
    A ```` ```text title="Output" ```` fence right after a ``run`` fence: what that
    block prints, compared exactly.
``source``
    A titled Python fence whose body is a snippet include of a named section of
    a file under ``src/`` (package source shown on the page).
``text``
    A fence in a language that is plainly not executed (``text``, ``console``, ...).
``reject``
    Anything else, notably every other Python-looking fence (``py``, ``pycon``,
    ``python title=...`` without an include, ``~~~python``, ``{.python}``), shell
    fences, bare fences and stray Output blocks. Each becomes a failing test
    that names the file and the line.

The runnable blocks' code is read by pytest-codeblocks' extractor; this module
fills the gaps that extractor leaves (tilde fences, titled fences, snippet
includes, output blocks, rejection of everything it would silently skip).
"""

from __future__ import annotations

import ast
import codeop
import io
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from mkdocs.utils.meta import get_data
from pytest_codeblocks import extract_from_buffer

#: Languages of fences that are shown but never executed.
NOT_RUN_LANGUAGES = frozenset(
    {
        "text",
        "console",
        "json",
        "yaml",
        "toml",
        "diff",
        "html",
        "css",
        "javascript",
        "markdown",
        "ini",
        "mermaid",
        "latex",
    }
)
#: Shell fences look runnable, and pytest-codeblocks would run them: use ``console``.
SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "zsh", "shell-session", "bash-session"})

OUTPUT_INFO = 'text title="Output"'

_OPEN = re.compile(r"^(?P<prefix>[ \t>]*?)(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
# A pymdownx.snippets include line (not the escaped ``;--8<--`` form).
SNIPPET_LINE = re.compile(r"^\s*-{1,}8<-{1,}(\s|$)")
_INCLUDE = re.compile(r"""^-{1,}8<-{1,}[ \t]+(?P<q>["'])(?P<target>[^"']+)(?P=q)[ \t]*$""")
_CODEBLOCKS_DIRECTIVE = re.compile(r"<!--[-\s]*(pytest-codeblocks:|pytest\.mark\.)")


@dataclass
class Fence:
    """One fenced block of a page, with where it is and what it is."""

    path: Path
    line: int  # 1-based line of the opening fence
    end_line: int  # 1-based line of the closing fence
    char: str  # "`" or "~"
    info: str  # the whole info string, stripped
    body: str  # the content, dedented to the fence's indentation
    kind: str = "reject"
    reason: str = ""
    include: str | None = None  # for "source": the snippet target
    output: Fence | None = None  # for "run": the Output fence that follows it
    attrs: dict[str, str] = field(default_factory=dict)
    indent: str = ""  # the text before the opening fence (indentation inside admonitions)

    @property
    def lang(self) -> str:
        if self.info.startswith("{"):  # attribute form: ```{ .python title="..." }
            classes = re.findall(r"(?<![\w-])\.([\w-]+)", self.info)
            return classes[0].lower() if classes else ""
        first = self.info.split(None, 1)[0] if self.info else ""
        return first.lower()


@dataclass
class Page:
    """All fences of one Markdown file, plus page-level problems (stray directives)."""

    path: Path
    fences: list[Fence]
    problems: list[tuple[int, str]]  # (line, message)


def _parse_attrs(rest: str) -> dict[str, str] | None:
    try:
        words = shlex.split(rest)
    except ValueError:
        return None
    attrs = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            return None
        attrs[key] = value
    return attrs


def _looks_like_python(lang: str) -> bool:
    return lang.startswith("py") or "python" in lang


def page_lines(text: str) -> list[str]:
    """The page's lines as Markdown sees them.

    A leading BOM is dropped, only newlines split lines (not the other separators
    ``str.splitlines`` knows), and YAML front matter, which MkDocs strips, is blanked
    out, so that line numbers stay those of the file.
    """
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    body, _ = get_data(text)
    front = text[: len(text) - len(body)].count("\n") if text.endswith(body) else 0
    lines[:front] = [""] * front
    return lines


def scan(text: str, path: Path) -> Page:
    """Split ``text`` into fences (CommonMark rules, any indentation) and page problems."""
    lines = page_lines(text)
    fences: list[Fence] = []
    problems: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _OPEN.match(line)
        if m and not (m["fence"][0] == "`" and "`" in m["info"]):
            char, length = m["fence"][0], len(m["fence"])
            indent = len(m["prefix"]) + len(m["indent"])
            in_quote = ">" in m["prefix"]
            close = re.compile(rf"^[ \t>]*{re.escape(char)}{{{length},}}[ \t]*$")
            body, j = [], i + 1
            while j < len(lines) and not close.match(lines[j]):
                raw = lines[j]
                cut = min(indent, len(raw) - len(raw.lstrip(" \t>")))
                body.append(raw[cut:])
                j += 1
            fence = Fence(
                path=path,
                line=i + 1,
                end_line=j + 1,
                char=char,
                info=m["info"].strip(),
                body="".join(b + "\n" for b in body),
                indent=m["prefix"] + m["indent"],
            )
            if j >= len(lines):
                fence.reason = "this fence is never closed"
            elif in_quote and _looks_like_python(fence.lang):
                fence.reason = (
                    "Python fences inside block quotes are not run; move it out of the quote"
                )
            fences.append(fence)
            i = j + 1
            continue
        if SNIPPET_LINE.match(line):
            problem = _results_include_problem(line, path)
            if problem:
                problems.append((i + 1, problem))
        elif _CODEBLOCKS_DIRECTIVE.search(line):
            problems.append(
                (
                    i + 1,
                    "pytest-codeblocks directives (skip, cont, expected-output, "
                    "marks) are not used in this book: every block runs alone, "
                    'and what it prints goes in a ```text title="Output" fence',
                )
            )
        i += 1
    return Page(path=path, fences=fences, problems=problems)


# A generated results table (written by `python -m attnbook.bench`) may be included as
# prose: a whole line naming a Markdown file under docs/results/ that holds no fences.
RESULTS_INCLUDE = re.compile(r'^--8<-- "(?P<target>docs/results/[\w.-]+\.md)"$')


def _results_include_problem(line: str, path: Path) -> str | None:
    """Why this snippet line outside a fence is refused, or None for a sound results include."""
    m = RESULTS_INCLUDE.match(line.strip()) if line == line.lstrip() else None
    if m is None:
        return (
            "a snippet include outside a package-source fence is not checked by the "
            'harness; include package code only inside a ```python title="..." fence '
            '(a generated table may be included as a whole line: --8<-- "docs/results/NAME.md")'
        )
    root = next((p for p in path.resolve().parents if (p / "mkdocs.yml").exists()), Path.cwd())
    target = root / m["target"]
    if not target.is_file():
        return f"{m['target']} does not exist: write it with its generator (see CONTRIBUTING.md)"
    for number, text in enumerate(target.read_text(encoding="utf-8").splitlines(), start=1):
        if _OPEN.match(text) or SNIPPET_LINE.match(text):
            return (
                f"{m['target']}:{number} holds a fence or a snippet line; an included results "
                "file must be plain Markdown (tables and text), which the harness need not run"
            )
    return None


def _bare_expressions(code: str) -> list[int]:
    """Top-level expression statements that a REPL would echo but a script would not."""
    tree = ast.parse(code)
    return [
        node.lineno
        for node in tree.body
        if isinstance(node, ast.Expr)
        and not isinstance(node.value, ast.Call | ast.Await | ast.Yield | ast.YieldFrom)
        and not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str))
    ]


def _repl_paste_error(code: str) -> tuple[int, str] | None:
    """Where pasting ``code`` line by line at the ``>>>`` prompt breaks, and why.

    The classic prompt (Python 3.11, the book's minimum) compiles what it has read after
    every line, as ``code.InteractiveConsole`` does: a blank line ends an indented block,
    and a dedented line straight after one is a syntax error. Scripts do not mind either.
    """
    buffer: list[str] = []
    for number, line in enumerate(code.splitlines(), start=1):
        buffer.append(line)
        try:
            compiled = codeop.compile_command("\n".join(buffer), "<stdin>", "single")
        except (SyntaxError, ValueError, OverflowError) as err:
            return number, err.msg if isinstance(err, SyntaxError) else str(err)
        if compiled is not None:
            buffer = []
    return None


def _classify_one(fence: Fence, previous: Fence | None) -> None:
    if fence.reason:  # already rejected by the scanner
        return
    if not _looks_like_python(fence.lang) and any(
        SNIPPET_LINE.match(line) for line in fence.body.splitlines()
    ):
        fence.reason = (
            "a snippet include inside a shown fence puts unchecked text on the page; "
            'include package code only in a ```python title="..." fence'
        )
        return
    lang, rest = fence.lang, fence.info[len(fence.info.split(None, 1)[0]) :] if fence.info else ""
    if not fence.info:
        fence.reason = (
            "this fence names no language; name one (```python to run it, "
            "```text or ```console to show it) so the harness knows what it is"
        )
        return
    if _looks_like_python(lang):
        if fence.char == "~":
            fence.reason = "~~~ fences are not run; write runnable Python as a ```python fence"
            return
        if fence.info == "python":
            if any(SNIPPET_LINE.match(line) for line in fence.body.splitlines()):
                fence.reason = (
                    "a runnable ```python fence cannot hold a snippet include; show "
                    'package source in a ```python title="src/attnbook/..." fence'
                )
                return
            try:
                bare = _bare_expressions(fence.body)
            except SyntaxError:
                fence.kind = "run"  # let it run: the interpreter reports the syntax error
                return
            if bare:
                fence.reason = (
                    f"line {fence.line + bare[0]} is a bare expression: a pasted REPL "
                    "would echo it but a script prints nothing; wrap it in print()"
                )
                return
            paste = _repl_paste_error(fence.body)
            if paste:
                fence.reason = (
                    f"line {fence.line + paste[0]}: pasted at the >>> prompt this block "
                    f"breaks here ({paste[1]}). The prompt ends an indented block at "
                    "a blank line and needs one before the next unindented line: "
                    "add a blank line after the indented block, and none inside it"
                )
                return
            fence.kind = "run"
            return
        if lang == "python" and fence.info.split(None, 1)[0] == "python":
            attrs = _parse_attrs(rest)
            body_lines = [line for line in fence.body.splitlines() if line.strip()]
            includes = [_INCLUDE.match(line.strip()) for line in body_lines]
            if attrs is not None and "title" in attrs and body_lines and all(includes):
                if len(includes) != 1:
                    fence.reason = "a package-source fence holds exactly one snippet include"
                    return
                fence.kind, fence.attrs = "source", attrs
                fence.include = includes[0]["target"]
                return
            fence.reason = (
                f"```{fence.info} is not run by the suite: use a bare ```python "
                "fence for runnable code, or show package source with a titled "
                'fence whose body is one --8<-- "src/attnbook/FILE.py:SECTION" line'
            )
            return
        fence.reason = (
            f"```{fence.info} fences are not run by the suite; write runnable "
            "Python as a bare ```python fence (and its printout in a "
            f"```{OUTPUT_INFO} fence)"
        )
        return
    if lang == "text" and _parse_attrs(rest) == {"title": "Output"}:
        if fence.char != "`" or fence.info != OUTPUT_INFO:
            fence.reason = f"write Output blocks exactly as ```{OUTPUT_INFO}"
        elif previous is not None and previous.reason and _looks_like_python(previous.lang):
            fence.reason = (
                f"this Output block belongs to the rejected block at line "
                f"{previous.line}: fix that one first"
            )
        elif previous is None or previous.kind != "run" or previous.output is not None:
            fence.reason = "this Output block does not follow a runnable ```python block"
        else:
            fence.kind = "output"
            previous.output = fence
        return
    if lang in SHELL_LANGUAGES:
        fence.reason = (
            f"```{lang} fences look runnable but are not run by the book's suite; "
            "show commands for the reader to type in a ```console fence"
        )
        return
    if lang in NOT_RUN_LANGUAGES:
        fence.kind = "text"
        return
    fence.reason = (
        f"unknown fence language {lang!r}: the harness cannot tell whether it should "
        f"run; use one of {', '.join(sorted(NOT_RUN_LANGUAGES))} or python"
    )


def _only_blank_between(lines: list[str], after: int, before: int) -> bool:
    return all(not lines[k].strip() for k in range(after, before - 1))


def classify(text: str, path: Path) -> Page:
    """Scan ``text`` and give every fence its kind (see the module docstring)."""
    page = scan(text, path)
    lines = page_lines(text)
    previous: Fence | None = None
    for fence in page.fences:
        prev = previous
        if prev is not None and not _only_blank_between(lines, prev.end_line, fence.line):
            prev = None  # an Output block must follow its code with only blank lines between
        _classify_one(fence, prev)
        previous = fence
    _cross_check_with_codeblocks(text, page)
    return page


def _cross_check_with_codeblocks(text: str, page: Page) -> None:
    """Read every runnable block with pytest-codeblocks' extractor and insist it agrees.

    The extractor sees only backtick fences and closes a block at any line that
    starts with backticks, so it is given the runnable fences alone (every other
    line blanked, line numbers kept). If it still reads a block differently from
    this module, the block is rejected rather than run in an uncertain form.
    """
    lines = page_lines(text)
    keep = set()
    runs = [f for f in page.fences if f.kind == "run"]
    for fence in runs:
        keep.update(range(fence.line - 1, fence.end_line))
    masked = "".join((line if k in keep else "") + "\n" for k, line in enumerate(lines))
    try:
        blocks = {b.lineno: b for b in extract_from_buffer(io.StringIO(masked))}
    except RuntimeError as err:  # pragma: no cover - masked input is always well formed
        for fence in runs:
            fence.kind, fence.reason = "reject", f"pytest-codeblocks could not read the page: {err}"
        return

    def nonblank(code: str) -> list[str]:
        # pytest-codeblocks drops blank lines inside indented fences (it counts the newline
        # as indentation), so blank lines are compared out; the harness keeps them, so
        # that line numbers in tracebacks match the page.
        return [line for line in code.splitlines() if line.strip()]

    for fence in runs:
        block = blocks.get(fence.line)
        if (
            block is None
            or block.syntax != "python"
            or nonblank(block.code) != nonblank(fence.body)
        ):
            fence.kind = "reject"
            fence.reason = (
                "pytest-codeblocks reads this block differently from the harness "
                "(a nested or oddly indented fence?); simplify the fence"
            )
