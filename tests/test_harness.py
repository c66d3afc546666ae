"""The docs harness, tested on small fixture pages (tests/fixtures/harness).

Each fixture is copied into a throw-away project (docs/, src/, mkdocs.yml) and the
real harness runs on it in a pytester session, exactly as `pytest docs/...` would.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "harness"
MKDOCS_YML = """\
site_name: fixture
markdown_extensions:
  - pymdownx.superfences:
      custom_fences:
        - name: mermaid
          class: mermaid
          format: !!python/name:pymdownx.superfences.fence_code_format
  - pymdownx.snippets:
      base_path: ["."]
      check_paths: true
"""


@pytest.fixture
def book(pytester: pytest.Pytester):
    """A throw-away book project; call it with fixture names to copy pages into docs/."""
    pytester.makeini("[pytest]\nbook_block_timeout = 3\n")
    (pytester.path / "mkdocs.yml").write_text(MKDOCS_YML)
    src = pytester.path / "src" / "attnbook"
    src.mkdir(parents=True)
    shutil.copy(FIXTURES / "demo.py", src / "demo.py")
    (pytester.path / "outside.py").write_text(
        "# --8<-- [start:double]\nx = 1\n# --8<-- [end:double]\n"
    )
    chapters = pytester.path / "docs" / "chapters"
    chapters.mkdir(parents=True)

    def run(*names: str, args: tuple[str, ...] = (), copy: bool = True) -> pytest.RunResult:
        for name in names if copy else ():
            shutil.copy(FIXTURES / f"{name}.md", chapters / f"{name}.md")
        paths = [f"docs/chapters/{name}.md" for name in names]
        return pytester.runpytest(
            "-p", "tests.harness.plugin", "-p", "no:cacheprovider", *args, *paths
        )

    run.path = pytester.path
    return run


def test_sound_page_passes(book):
    result = book("good")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*6 fences checked: 3 run, 1 source, 2 not run, 0 rejected*"])


def test_each_fence_is_its_own_test_named_by_line(book):
    result = book("good", args=("-v",))
    result.stdout.fnmatch_lines(
        [
            "*good.md::line 5 python+output PASSED*",
            "*good.md::line 15 python PASSED*",
            "*good.md::line 19 source PASSED*",
            "*good.md::line 23 console (not run) PASSED*",
            "*good.md::line 27 text (not run) PASSED*",
            "*good.md::line 34 python+output PASSED*",
        ]
    )


def test_block_that_raises_fails_with_file_and_line(book):
    result = book("raises")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*docs/chapters/raises.md:3: the python block failed (exit status 1)*",
            '*File "*docs/chapters/raises.md", line 5, in <module>*',
            "*y = x / 0*",
            "*ZeroDivisionError: division by zero*",
        ]
    )


def test_changed_output_fails_with_a_diff(book):
    result = book("changed_output")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*docs/chapters/changed_output.md:3: the Output block at line 7 differs*",
            "*--- docs/chapters/changed_output.md:7 (Output block on the page)*",
            "*+++ what the block really prints*",
            "-0.6666",
            "+0.6667",
            "*make refresh PAGE=docs/chapters/changed_output.md*",
        ]
    )


def test_printed_output_must_be_on_the_page(book):
    result = book("missing_output")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*missing_output.md:3: the python block prints output but the page shows no*",
        ]
    )


def test_unsupported_fences_are_rejected_with_file_and_line(book):
    result = book("unsupported")
    result.assert_outcomes(failed=8)
    where = "*docs/chapters/unsupported.md"
    result.stdout.fnmatch_lines_random(
        [
            f'{where}:3: ```python title="example.py" is not run by the suite*',
            f"{where}:7: ```py fences are not run by the suite*",
            f"{where}:11: ```pycon fences are not run by the suite*",
            f"{where}:15: ~~~ fences are not run*",
            f"{where}:19: ```{{.python}} fences are not run by the suite*",
            f"{where}:23: ```python3 fences are not run by the suite*",
            f"{where}:27: ```bash fences look runnable but are not run*",
            f"{where}:31: this fence names no language*",
        ]
    )


def test_includes_that_do_not_resolve_fail(book):
    result = book("missing_section")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines_random(
        [
            "*missing_section.md:3: the include 'src/attnbook/demo.py:no_such_section' does not "
            "resolve: Snippet section 'no_such_section' could not be located*",
            "*missing_section.md:7: the include 'src/attnbook/nowhere.py:double' does not resolve*",
            "*missing_section.md:11: the include 'outside.py:double' is not a file under src/*",
            "*missing_section.md:15: the include 'src/attnbook/demo.py:empty' resolves to an empty "
            "section*",
        ]
    )


def test_a_block_cannot_use_names_from_the_block_before(book):
    result = book("needs_previous")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*needs_previous.md:7: the python block failed*",
            "*NameError: name 'weights' is not defined*",
        ]
    )


def test_no_state_carries_over(book):
    # seeds, default dtype, print options, files in the working folder, globals
    book("fresh_state").assert_outcomes(passed=2)


def test_stray_output_directives_and_includes_are_rejected(book):
    result = book("stray")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "*stray.md:3: this Output block does not follow a runnable ```python block*",
            "*stray.md:7: pytest-codeblocks directives*are not used in this book*",
            "*stray.md:9: a snippet include outside a package-source fence is not checked*",
        ]
    )


def test_bare_expressions_are_rejected(book):
    result = book("bare_expression")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*bare_expression.md:3: line 5 is a bare expression*"])


def test_a_block_that_hangs_is_stopped(book):
    result = book("slow")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*slow.md:3: the python block ran past 3 s and was stopped*"])


def test_update_outputs_rewrites_from_a_real_run(book):
    result = book("changed_output", "missing_output", args=("--update-outputs",))
    result.assert_outcomes(passed=2)
    page = (book.path / "docs/chapters/changed_output.md").read_text()
    assert '```text title="Output"\n0.6667\n```' in page and "0.6666" not in page
    added = (book.path / "docs/chapters/missing_output.md").read_text()
    assert added.endswith('print("hello")\n```\n\n```text title="Output"\nhello\n```\n')
    book("changed_output", "missing_output", copy=False).assert_outcomes(passed=2)


def test_unseeded_randomness_is_caught(book):
    # A fresh python draws a new torch seed each time, and so does each block here: a
    # block that forgets torch.manual_seed cannot match its Output block.
    result = book("unseeded")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*unseeded.md:3: the Output block at line 9 differs*"])


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("sneaky_unclosed", "*sneaky_unclosed.md:10: MkDocs renders a ```python block near here*"),
        ("sneaky_info", "*sneaky_info.md:3: MkDocs does not render this as a fenced block*"),
        ("sneaky_snippet", "*sneaky_snippet.md:3: a snippet include outside a package-source*"),
        ("sneaky_front_matter", "*sneaky_front_matter.md:6: the python block prints output but*"),
        ("sneaky_separator", "*sneaky_separator.md:5: the python block prints output but*"),
        (
            "sneaky_section",
            "*sneaky_section.md:3: the section 'src/attnbook/demo.py:fenced' holds a fence line*",
        ),
        (
            "sneaky_section",
            "*sneaky_section.md:7: the include 'src/attnbook/demo.py::3' names no section*",
        ),
    ],
)
def test_blocks_that_mkdocs_renders_cannot_hide_from_the_harness(book, page, expected):
    # Each page shows a Python block on the site by a route the scanner alone could miss
    # (found by trying to break the harness). Every one must fail, naming file and line.
    (book.path / "snips").mkdir(exist_ok=True)
    (book.path / "snips" / "part.md").write_text('```python\nprint("hidden")\n```\n')
    result = book(page)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([expected])


def test_blocks_end_like_scripts_threads_atexit_and_finalisers(book):
    book("shutdown").assert_outcomes(passed=1)


def test_control_characters_in_output_are_refused(book):
    result = book("control")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*control.md:3: the python block prints control characters ('\\r')*"]
    )


def test_refresh_writes_fence_like_output_safely(book):
    book("tricky_output", args=("--update-outputs",)).assert_outcomes(passed=1)
    page = (book.path / "docs/chapters/tricky_output.md").read_text()
    assert '````text title="Output"\n> ```\n```\n````' in page
    book("tricky_output", copy=False).assert_outcomes(passed=1)


def test_refresh_keeps_crlf_line_endings(book):
    source = (FIXTURES / "changed_output.md").read_bytes().replace(b"\n", b"\r\n")
    target = book.path / "docs/chapters/changed_output.md"
    target.write_bytes(source)
    book("changed_output", copy=False, args=("--update-outputs",)).assert_outcomes(passed=1)
    assert target.read_bytes() == source.replace(b"0.6666", b"0.6667")


def test_blocks_must_paste_at_the_prompt_as_they_run_as_files(book):
    result = book("repl_paste")
    result.assert_outcomes(passed=1, failed=4)
    result.stdout.fnmatch_lines_random(
        [
            "*repl_paste.md:8: pasted at the >>> prompt, this line would also print its value, "
            "<torch._C.Generator object at 0x*>, which a script does not*",
            "*repl_paste.md:25: pasted at the >>> prompt, this line would also print its value, []*",
            "*repl_paste.md:30: line 33: pasted at the >>> prompt this block breaks here "
            "(invalid syntax)*add a blank line after the indented block*",
            "*repl_paste.md:38: line 42: pasted at the >>> prompt this block breaks here "
            "(unexpected indent)*",
        ]
    )


def test_the_chapter_template_passes_the_harness(book):
    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "templates" / "chapter.md", book.path / "docs" / "chapters" / "template.md")
    shutil.copy(root / "src" / "attnbook" / "attention.py", book.path / "src" / "attnbook")
    result = book("template", copy=False)
    result.assert_outcomes(passed=3)  # two runnable blocks and one package-source fence
