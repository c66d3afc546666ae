"""Check a package-source include with the same pymdownx.snippets that MkDocs uses."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import markdown
import yaml

SNIPPETS = "pymdownx.snippets"
SECTION_NAME = re.compile(r"[a-z][-_0-9a-z]*")  # pymdownx.snippets' own rule for section names
FENCE_LINE = re.compile(r"^[ \t>]*(`{3,}|~{3,})")


class _IgnoreTags(yaml.SafeLoader):
    """mkdocs.yml may hold ``!!python/name:`` tags; the harness needs none of them."""


_IgnoreTags.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


@cache
def mkdocs_config(root: Path) -> dict:
    """``root/mkdocs.yml`` as plain data (tags such as ``!!python/name:`` become None)."""
    return yaml.load((root / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_IgnoreTags) or {}


def snippet_config(root: Path) -> dict:
    """The pymdownx.snippets options from ``root/mkdocs.yml``, with paths made absolute."""
    config = mkdocs_config(root)
    options: dict = {}
    for entry in config.get("markdown_extensions") or []:
        if isinstance(entry, dict) and SNIPPETS in entry:
            options = dict(entry[SNIPPETS] or {})
        elif entry == SNIPPETS:
            options = {}
    base = options.get("base_path", ["."])
    base = [base] if isinstance(base, str) else list(base)
    options["base_path"] = [str((root / b).resolve()) for b in base]
    options["check_paths"] = True  # a missing file or section is an error, never an empty block
    return options


@cache  # the page's source item and the render cross-check both ask for each include
def expand(root: Path, target: str) -> tuple[str, ...]:
    """The lines MkDocs puts on the page for ``--8<-- "target"``."""
    md = markdown.Markdown(
        extensions=[SNIPPETS], extension_configs={SNIPPETS: snippet_config(root)}
    )
    return tuple(md.preprocessors["snippet"].run([f'--8<-- "{target}"']))


def check_include(root: Path, target: str, attrs: dict[str, str]) -> str | None:
    """Return what is wrong with a package-source include, or None if it is sound."""
    file_part, _, section = target.partition(":")
    if not SECTION_NAME.fullmatch(section):
        return (
            f"the include {target!r} names no section: write "
            f'--8<-- "{file_part}:SECTION" and mark the section in the file with '
            "# --8<-- [start:SECTION] ... # --8<-- [end:SECTION]"
        )
    src = (root / "src").resolve()
    if not (root / file_part).resolve().is_relative_to(src):
        return f"the include {target!r} is not a file under src/"
    if attrs.get("title") != file_part:
        return f'the fence\'s title should name the included file: title="{file_part}"'
    try:
        lines = expand(root, target)
    except Exception as err:  # pymdownx raises SnippetMissingError for files and sections
        return f"the include {target!r} does not resolve: {err}"
    if not any(line.strip() for line in lines):
        return f"the include {target!r} resolves to an empty section"
    fence = next((line for line in lines if FENCE_LINE.match(line)), None)
    if fence is not None:
        return (
            f"the section {target!r} holds a fence line ({fence.strip()!r}), which would end "
            "the page's fence early and turn the rest into page content"
        )
    return None
