"""What MkDocs really renders as fenced code: the harness's second opinion.

The harness finds fences with its own scanner (fences.py). MkDocs finds them with
pymdownx.superfences, after stripping YAML front matter and expanding snippets,
with its own rules for indentation, info strings and unclosed fences. If the two
ever disagree, a Python block could appear on the site without being run. So every
page is also converted here with the same Markdown extensions and options as
``mkdocs.yml``, recording each fence superfences renders (language and code), and
the plugin insists that the two lists match.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import markdown
from mkdocs.utils.meta import get_data
from pymdownx import superfences

from .snippets import SNIPPETS, mkdocs_config, snippet_config

# MkDocs always loads these before the ones mkdocs.yml names.
MKDOCS_BUILTINS = ["toc", "tables", "fenced_code"]

_recording = threading.local()
_original = superfences.SuperFencesBlockPreprocessor.process_nested_block


def _recording_process_nested_block(self, ws, content, start, end):
    sink = getattr(_recording, "sink", None)
    if sink is not None:
        sink.append((self.lang or "", self.rebuild_block(self.code)))
    return _original(self, ws, content, start, end)


superfences.SuperFencesBlockPreprocessor.process_nested_block = _recording_process_nested_block


def _extensions(root: Path) -> tuple[list[str], dict[str, dict]]:
    names, configs = list(MKDOCS_BUILTINS), {}
    for entry in mkdocs_config(root).get("markdown_extensions") or []:
        name, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
        if name not in names:
            names.append(name)
        if options:
            configs[name] = dict(options)
    if SNIPPETS in names:
        # A missing file or section renders as an empty block here; the page's source
        # item reports it with its line.
        configs[SNIPPETS] = {**snippet_config(root), "check_paths": False}
    fences = configs.get("pymdownx.superfences", {})
    if fences.get("custom_fences"):  # formatters are !!python/name tags, not needed here
        fences["custom_fences"] = [
            {k: v for k, v in fence.items() if v is not None} for fence in fences["custom_fences"]
        ]
    return names, configs


@contextlib.contextmanager
def _record():
    _recording.sink = sink = []
    try:
        yield sink
    finally:
        _recording.sink = None


def rendered_fences(root: Path, text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fence MkDocs renders for the page ``text``."""
    body, _ = get_data(text)
    names, configs = _extensions(root)
    md = markdown.Markdown(extensions=names, extension_configs=configs)
    with _record() as sink:
        md.convert(body)
    return list(sink)


def _norm(code: str) -> str:
    return "\n".join(line.expandtabs(4).rstrip() for line in code.split("\n")).strip("\n")


def _locate(lines: list[str], code: str) -> int:
    first = next((line.strip() for line in code.split("\n") if line.strip()), None)
    for number, line in enumerate(lines, start=1):
        if first is not None and line.strip() == first:
            return max(1, number - 1)  # the fence line is usually just above
    return 1


def reconcile(page, root: Path, text: str) -> None:
    """Make the harness's fences and MkDocs' rendered fences agree, or say where they don't.

    * A fence MkDocs renders that the harness did not find becomes a page problem.
    * A fence the harness found (and would run or pass) that MkDocs does not render is
      rejected: it would be tested, or waved through, while the page shows something else.
    """
    from .fences import page_lines
    from .snippets import check_include, expand

    try:
        rendered = rendered_fences(root, text)
    except Exception as err:  # noqa: BLE001 - report it on the page, do not crash collection
        page.problems.append((1, f"MkDocs' Markdown could not render this page: {err}"))
        return
    pool: dict[str, list] = {}
    for fence in page.fences:
        body = fence.body
        if fence.kind == "source":
            try:
                body = "\n".join(expand(root, fence.include))
            except Exception:  # noqa: BLE001 - the source item reports it
                body = ""
        pool.setdefault(_norm(body), []).append(fence)
    matched: set[int] = set()
    lines = page_lines(text)
    for lang, code in rendered:
        candidates = [f for f in pool.get(_norm(code), []) if id(f) not in matched]
        if candidates:
            matched.add(id(candidates[0]))
            continue
        page.problems.append(
            (
                _locate(lines, code),
                (
                    f"MkDocs renders a ```{lang or '(no language)'} block near here that the harness "
                    "does not see as a fence of its own (a fence left open above, an info string "
                    "MkDocs does not accept, or a snippet that brings a fence with it?); the page "
                    "must show only blocks the suite checks"
                ),
            )
        )
    for fence in page.fences:
        if fence.kind != "reject" and id(fence) not in matched:
            own = (
                check_include(root, fence.include, fence.attrs) if fence.kind == "source" else None
            )
            fence.kind = "reject"
            fence.reason = own or (
                "MkDocs does not render this as a fenced block (it sits in an HTML "
                "comment, after a fence left open, or has an info string MkDocs "
                "does not accept), so what the suite checks is not what the page shows"
            )
