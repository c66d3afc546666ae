"""MkDocs hooks for attnbook (wired in ``mkdocs.yml`` under ``hooks:``).

1. **Math without a network.** pymdownx.arithmatex marks up ``$...$`` and ``$$...$$``;
   these hooks turn each formula into MathML at build time (latex2mathml), which
   every current browser renders natively. No math script or font is downloaded.
2. **Lean notebook pages.** mkdocs-jupyter inlines about 600 KB of CSS into every
   notebook page. The hooks move each inline stylesheet into a shared, content-hashed
   file under ``assets/jupyter/``, linked from the page, so browsers cache it once.
   Plots, which the template embeds as base64 ``data:`` URIs, are written out as
   content-hashed image files beside the stylesheets, so a page's own HTML stays small
   however many figures it has. Any script the notebook template loads from another
   host (MathJax, RequireJS) is dropped: the site makes no third-party requests.
3. **Output blocks look like output.** Each ```` ```text title="Output" ```` block gets
   the classes ``attnbook-output`` (styled in ``assets/book.css``) and ``no-copy`` (no
   copy button: it is what a block printed, not code to paste).
4. **Notebooks to download.** Every lab (a jupytext ``.py`` file) is also written as
   an ``.ipynb`` next to its page, with a download button at the top of the page.
5. **Lighter code blocks.** Pygments wraps every name and every run of spaces in a
   ``<span>``; Material colours names like plain code and spaces not at all, so those
   spans are unwrapped. A code-heavy chapter loses about a fifth of its HTML, and looks
   the same.
6. **Chapters as notebooks.** Every chapter is also written as an ``.ipynb`` next to its
   page, with a "Download as notebook" button: its prose as Markdown cells, each
   runnable block as a code cell, package source expanded into the Markdown, and no
   Output blocks (running the notebook prints them). The suite executes these
   notebooks (tests/test_labs.py).
7. **The attention explorer's data.** ``assets/explorer/attention.json`` is computed
   from the real pretrained model (``attnbook.pretrained.attention_maps``) at every
   build, so the explorer page always shows what the model really does.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import posixpath
import re
import textwrap
from pathlib import Path

import jupytext
from latex2mathml.converter import convert as latex_to_mathml

log = logging.getLogger("mkdocs.hooks.attnbook")

_MATH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*\\(?P<open>[\(\[])(?P<tex>.*?)\\[\)\]]\s*</(?P=tag)>',
    re.S,
)
_STYLE = re.compile(r"<style[^>]*>(?P<css>.*?)</style>", re.S)
_SCRIPT = re.compile(r"<script(?P<attrs>[^>]*)>(?P<body>.*?)</script>", re.S)
_REMOTE = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", re.I)

_OUTPUT_BLOCK = '<div class="language-text highlight"><span class="filename">Output</span>'
_OUTPUT_MARKED = (
    '<div class="language-text highlight attnbook-output no-copy">'
    '<span class="filename">Output</span>'
)

_IMAGE = re.compile(
    r'src="data:image/(?P<kind>png|jpeg|gif|svg\+xml);base64,(?P<data>[A-Za-z0-9+/=\s]+)"'
)
_IMAGE_SUFFIX = {"png": "png", "jpeg": "jpg", "gif": "gif", "svg+xml": "svg"}

# Names (n) are drawn in --md-code-hl-name-color, which Material sets to the code colour
# itself, and whitespace (w) has no style: unwrapping them changes nothing on screen.
_PLAIN_SPAN = re.compile(r'<span class="(?:n|w)">([^<]*)</span>')

_stylesheets: dict[str, str] = {}  # file name -> CSS, collected during the build
_images: dict[str, bytes] = {}  # file name -> image bytes, collected during the build


def _mathml(match: re.Match) -> str:
    tex = html.unescape(match["tex"]).strip()
    display = "block" if match["open"] == "[" else "inline"
    try:
        rendered = latex_to_mathml(tex, display=display)
    except Exception as err:  # a formula that cannot be converted fails the strict build
        log.warning("math could not be converted to MathML: %r (%s)", tex, err)
        return match[0]
    # HTML parsers put <math> in the MathML namespace by themselves: the attribute that
    # latex2mathml adds to every formula is dead weight (40 bytes, hundreds per page).
    rendered = rendered.replace(' xmlns="http://www.w3.org/1998/Math/MathML"', "", 1)
    if display == "block":
        return f'<div class="arithmatex">{rendered}</div>'
    return f'<span class="arithmatex">{rendered}</span>'


def _drop_remote_script(match: re.Match) -> str:
    """Drop notebook-template scripts that load from other hosts (or from ``src=""``)."""
    attrs, body = match["attrs"], match["body"]
    src = re.search(r"\bsrc=[\"']([^\"']*)[\"']", attrs)
    if src is not None and (not src[1] or _REMOTE.match(src[1])):
        return ""
    if _REMOTE.search(body) or "text/x-mathjax-config" in attrs:
        return ""
    return match[0]


def _is_notebook(page) -> bool:
    return page.file.src_uri.endswith((".py", ".ipynb"))


def _shared_href(page, name: str) -> str:
    """The link from ``page`` to ``assets/jupyter/<name>``."""
    here = page.url if page.url.endswith("/") else posixpath.dirname(page.url)
    return posixpath.relpath(f"assets/jupyter/{name}", here.rstrip("/") or ".")


def _share_stylesheets(content: str, page) -> str:
    def link(match: re.Match) -> str:
        css = match["css"]
        name = hashlib.sha256(css.encode()).hexdigest()[:16] + ".css"
        _stylesheets[name] = css
        return f'<link rel="stylesheet" href="{_shared_href(page, name)}">'

    return _STYLE.sub(link, content)


def _share_images(content: str, page) -> str:
    def link(match: re.Match) -> str:
        data = base64.b64decode(match["data"])
        name = hashlib.sha256(data).hexdigest()[:16] + "." + _IMAGE_SUFFIX[match["kind"]]
        _images[name] = data
        return f'loading="lazy" src="{_shared_href(page, name)}"'

    return _IMAGE.sub(link, content)


def _download_button(page, label: str = "Download this notebook (.ipynb)") -> str:
    name = Path(page.file.src_uri).with_suffix(".ipynb").name
    return (
        f'<p class="attnbook-download"><a class="md-button" href="{name}" download>'
        f"{label}</a></p>\n"
    )


def _is_chapter(page) -> bool:
    return page.file.src_uri.startswith("chapters/") and page.file.src_uri.endswith(".md")


_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^`]*)$")
_SOURCE_INCLUDE = re.compile(r'^\s*--8<-- "(?P<path>[^":]+):(?P<section>[\w-]+)"\s*$')


def _snippet(root: Path, path: str, section: str) -> str:
    """The lines of ``path`` between its ``--8<-- [start:section]`` and ``[end:section]``."""
    lines, inside = [], False
    for line in (root / path).read_text(encoding="utf-8").splitlines():
        marker = line.strip()
        if marker.endswith(f"[start:{section}]") and "--8<--" in marker:
            inside = True
        elif marker.endswith(f"[end:{section}]") and "--8<--" in marker:
            break
        elif inside:
            lines.append(line)
    return textwrap.dedent("\n".join(lines))


def chapter_notebook(markdown: str, root: Path) -> dict:
    """A chapter's Markdown as a notebook: runnable blocks become code cells."""
    import nbformat

    cells, prose = [], []

    def flush():
        text = "\n".join(prose).strip("\n")
        if text.strip():
            cells.append(nbformat.v4.new_markdown_cell(text))
        prose.clear()

    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if not m:
            prose.append(lines[i])
            i += 1
            continue
        indent, fence, info = m["indent"], m["fence"], m["info"].strip()
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            j += 1
        body = textwrap.dedent(
            "\n".join(
                line[len(indent) :] if line.startswith(indent) else line
                for line in lines[i + 1 : j]
            )
        )
        if info == "python":
            flush()
            cells.append(nbformat.v4.new_code_cell(body.strip("\n")))
        elif info == 'text title="Output"':
            pass  # running the cell above prints it
        elif info.startswith("python title="):
            include = _SOURCE_INCLUDE.match(body.strip())
            code = _snippet(root, include["path"], include["section"]) if include else body
            prose.append(f"{indent}```python\n{code}\n```".replace("\n", "\n" + indent))
        else:
            prose.extend(lines[i : j + 1])
        i = j + 1
    flush()
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    return notebook


def on_page_content(content: str, page, config, files) -> str:
    content = _MATH.sub(_mathml, content)
    content = content.replace(_OUTPUT_BLOCK, _OUTPUT_MARKED)
    content = _PLAIN_SPAN.sub(r"\1", content)
    if _is_notebook(page):
        content = _SCRIPT.sub(_drop_remote_script, content)
        content = _share_stylesheets(content, page)
        content = _share_images(content, page)
        head, h1, rest = content.partition("</h1>")  # the button goes under the title
        content = (
            head + h1 + _download_button(page) + rest if h1 else _download_button(page) + content
        )
    elif _is_chapter(page):
        button = _download_button(page, "Download as notebook (.ipynb)")
        head, h1, rest = content.partition("</h1>")
        content = head + h1 + button + rest if h1 else button + content
    return content


EXPLORER_SENTENCES = [
    "The cat sat on the mat because it was soft.",
    "The cat sat on the mat because it was hungry.",
    "The animal didn't cross the street because it was too tired.",
]
_explorer_json: list[str] = []  # computed once per process (mkdocs serve rebuilds often)


def explorer_data() -> str:
    """The explorer's JSON: tokens and ``[layer][head][query][key]`` weights per sentence."""
    if not _explorer_json:
        import json

        from attnbook.pretrained import attention_maps

        sentences = []
        for text in EXPLORER_SENTENCES:
            tokens, weights = attention_maps(text)  # (layers, H, L, L)
            sentences.append(
                {
                    "text": text,
                    "tokens": tokens,
                    "weights": weights.double().round(decimals=3).tolist(),
                }
            )
        layers, heads = weights.shape[:2]
        data = {
            "model": "all-MiniLM-L6-v2",
            "layers": layers,
            "heads": heads,
            "sentences": sentences,
        }
        _explorer_json.append(json.dumps(data, separators=(",", ":")))
    return _explorer_json[0]


def on_post_build(config) -> None:
    site = Path(config["site_dir"])
    if (Path(config["docs_dir"]) / "explorer.md").exists():
        explorer = site / "assets" / "explorer"
        explorer.mkdir(parents=True, exist_ok=True)
        (explorer / "attention.json").write_text(explorer_data(), encoding="utf-8")
    shared = site / "assets" / "jupyter"
    shared.mkdir(parents=True, exist_ok=True)
    for name, css in _stylesheets.items():
        (shared / name).write_text(css, encoding="utf-8")
    for name, data in _images.items():
        (shared / name).write_bytes(data)
    docs = Path(config["docs_dir"])
    import nbformat

    for chapter in sorted((docs / "chapters").glob("*.md")):
        target = site / "chapters" / chapter.stem / f"{chapter.stem}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        notebook = chapter_notebook(chapter.read_text(encoding="utf-8"), docs.parent)
        nbformat.write(notebook, target)
    for lab in sorted((docs / "labs").glob("*.py")):
        target = site / "labs" / lab.stem / f"{lab.stem}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        jupytext.write(jupytext.read(lab), target, fmt="ipynb")


# Every page carries the whole site menu, indented by the template: with 19 chapters,
# labs and the API reference, the indentation alone is several KB per page. Browsers
# collapse that whitespace anyway (the menu holds no <pre>), so collapse it here.
_PRIMARY_NAV = re.compile(
    r'(<div class="md-sidebar md-sidebar--primary".*?)(<div class="md-sidebar md-sidebar--secondary")',
    re.S,
)


def on_post_page(output: str, page, config) -> str:
    return _PRIMARY_NAV.sub(lambda m: re.sub(r"\s+", " ", m[1]) + m[2], output, count=1)
