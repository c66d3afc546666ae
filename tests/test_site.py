"""The built site: strict build, no third-party requests, math, package source, lab page."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import nbformat

from tests.conftest import page_sizes

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "chapters/01-self-attention/index.html"
LAB = "labs/01-attention-heatmap/index.html"

# <link rel=...> values that make the browser fetch something (canonical, prev, next do not).
FETCHING_RELS = {
    "stylesheet",
    "icon",
    "shortcut",
    "preload",
    "modulepreload",
    "prefetch",
    "manifest",
    "apple-touch-icon",
    "mask-icon",
    "dns-prefetch",
    "preconnect",
}
URL_IN_CSS = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])(?P<url>[^'")\s]+)""")
REMOTE_IN_SCRIPT = re.compile(
    r"""(?:import\(|fetch\(|src\s*=)\s*['"](?P<url>(?:https?:)?//[^'"]+)"""
)


class ResourceFinder(HTMLParser):
    """Collect every URL a page makes the browser load (not the links a reader may follow)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str]] = []  # (where, url)
        self._in = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "link" and FETCHING_RELS & set((a.get("rel") or "").lower().split()):
            self.urls.append(("link", a.get("href") or ""))
        for attr in ("src", "data", "poster"):
            if a.get(attr) is not None and tag in {
                "script",
                "img",
                "iframe",
                "source",
                "video",
                "audio",
                "embed",
                "object",
                "track",
                "input",
            }:
                self.urls.append((tag, a[attr]))
        for attr in ("srcset", "imagesrcset"):
            for part in (a.get(attr) or "").split(","):
                if part.strip():
                    self.urls.append((tag, part.split()[0]))
        if tag in {"image", "use"} and a.get("href", "").startswith(("http", "//")):
            self.urls.append((tag, a["href"]))
        for match in URL_IN_CSS.finditer(a.get("style") or ""):
            self.urls.append(("style attribute", match["url"]))
        self._in = tag if tag in {"style", "script"} else None

    def handle_data(self, data):
        if self._in == "style":
            self.urls += [("style", m["url"]) for m in URL_IN_CSS.finditer(data)]
        elif self._in == "script":
            self.urls += [("script", m["url"]) for m in REMOTE_IN_SCRIPT.finditer(data)]

    def handle_endtag(self, tag):
        self._in = None


def third_party(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme not in ("", "data", "blob") or bool(parsed.netloc)


def pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def test_every_page_is_built(built_site, site_build_seconds, record_property):
    for page in ("index.html", CHAPTER, LAB, "404.html"):
        assert (built_site / page).is_file(), page
    for source in (ROOT / "docs").rglob("*"):
        if (
            source.suffix in (".md", ".py")
            and source.is_file()
            and ROOT / "docs" / "results" not in source.parents
        ):  # tables, not pages
            rel = source.relative_to(ROOT / "docs").with_suffix("")
            built = built_site / ("index.html" if rel.name == "index" else rel / "index.html")
            assert built.is_file(), f"{source} has no page"
    record_property("site_build_seconds", site_build_seconds)  # printed in the summary
    record_property("site_page_bytes", page_sizes(built_site))


def test_every_page_mkdocs_renders_is_collected_by_the_harness():
    from mkdocs.utils import markdown_extensions

    excluded = ROOT / "docs" / "results"  # generated tables: exclude_docs, included as text
    pages = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "docs").rglob("*")
        if p.is_file()
        and p.name.endswith(tuple(markdown_extensions))
        and excluded not in p.parents
        and re.search(r"^[ \t>]*(```|~~~)", p.read_text(encoding="utf-8"), re.M)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist", "docs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    collected = {line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line}
    assert pages and set(pages) <= collected, set(pages) - collected


def test_no_page_loads_anything_from_another_host(built_site):
    offenders = []
    for page in pages(built_site):
        finder = ResourceFinder()
        finder.feed(page.read_text(encoding="utf-8"))
        assert finder.urls, f"{page}: no resources found at all; is the scanner broken?"
        offenders += [
            f"{page.relative_to(built_site)}: <{where}> {url}"
            for where, url in finder.urls
            if third_party(url) or url == ""
        ]
    assert not offenders, "requests to other hosts:\n" + "\n".join(offenders)


def test_no_stylesheet_loads_anything_from_another_host(built_site):
    offenders = []
    for sheet in built_site.rglob("*.css"):
        for match in URL_IN_CSS.finditer(sheet.read_text(encoding="utf-8")):
            if third_party(match["url"]):
                offenders.append(f"{sheet.relative_to(built_site)}: {match['url']}")
    assert not offenders, "\n".join(offenders)


def test_scanner_catches_third_party_requests():
    finder = ResourceFinder()
    finder.feed(
        '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">'
        '<link rel="canonical" href="https://example.org/page/">'
        '<script src="//cdn.example.com/x.js"></script><img srcset="a.png 1x, https://x.org/b.png 2x">'
        '<style>@import "https://fonts.example/f.css";</style>'
        '<script type="module">await import("https://cdnjs.example/m.mjs")</script>'
        '<a href="https://github.com/">a link, not a request</a>'
    )
    remote = [url for _, url in finder.urls if third_party(url)]
    assert remote == [
        "https://fonts.googleapis.com/css?family=Roboto",
        "//cdn.example.com/x.js",
        "https://x.org/b.png",
        "https://fonts.example/f.css",
        "https://cdnjs.example/m.mjs",
    ]


def test_math_is_rendered_to_mathml_at_build_time(built_site):
    text = (built_site / CHAPTER).read_text(encoding="utf-8")
    formulas = re.findall(r'class="arithmatex">(.*?)</(?:span|div)>', text, re.S)
    assert len(formulas) >= 10
    assert all(f.startswith("<math") for f in formulas), [
        f[:60] for f in formulas if not f.startswith("<math")
    ]
    assert 'display="block"' in text
    visible = re.sub(r"<[^>]+>", "", re.sub(r"<(script|style).*?</\1>", "", text, flags=re.S))
    assert "\\(" not in visible and "\\[" not in visible and "$$" not in visible


def test_no_raw_tex_in_any_page_text(built_site):
    # Math in headings reaches the table of contents unconverted, so it is checked too.
    for page in pages(built_site):
        text = page.read_text(encoding="utf-8")
        visible = re.sub(r"<[^>]+>", "", re.sub(r"<(script|style).*?</\1>", "", text, flags=re.S))
        assert "\\(" not in visible and "\\[" not in visible, page.relative_to(built_site)


def _section(path: Path, name: str) -> str:
    source = path.read_text(encoding="utf-8")
    body = source.split(f"# --8<-- [start:{name}]\n", 1)[1].split(f"# --8<-- [end:{name}]", 1)[0]
    return body


def test_chapter_shows_the_package_source_verbatim(built_site):
    text = (built_site / CHAPTER).read_text(encoding="utf-8")
    blocks = [
        html.unescape(re.sub(r"<[^>]+>", "", b))
        for b in re.findall(r"<pre[^>]*>(.*?)</pre>", text, re.S)
    ]
    wanted = _section(ROOT / "src/attnbook/attention.py", "self_attention")
    assert any(block.strip("\n") == wanted.strip("\n") for block in blocks)
    assert "src/attnbook/attention.py</span>" in text  # the fence's title names the file


def test_site_features(built_site):
    text = (built_site / CHAPTER).read_text(encoding="utf-8")
    config = json.loads(
        re.search(r'<script id="__config" type="application/json">(.*?)</script>', text, re.S)[1]
    )
    assert "content.code.copy" in config["features"]
    assert (
        'href="https://github.com/attnbook/attnbook/edit/main/docs/chapters/01-self-attention.md"'
        in text
    )
    assert text.count('name="__palette"') == 2  # the light/dark toggle
    assert 'data-md-component="search"' in text
    assert re.search(r'<details class="success"', text)  # quiz answers are revealable


def test_output_blocks_are_marked_and_have_no_copy_button(built_site):
    text = (built_site / CHAPTER).read_text(encoding="utf-8")
    on_page = (ROOT / "docs/chapters/01-self-attention.md").read_text().count('text title="Output"')
    assert (
        on_page
        and text.count('attnbook-output no-copy"><span class="filename">Output</span>') == on_page
    )
    assert 'class="language-text highlight"><span class="filename">Output' not in text


def test_search_index_finds_softmax_in_chapter_one(built_site):
    index = json.loads((built_site / "search/search_index.json").read_text(encoding="utf-8"))
    hits = {doc["location"].split("#")[0] for doc in index["docs"] if "softmax" in doc["text"]}
    assert "chapters/01-self-attention/" in hits


def test_lab_page_has_its_heatmap_and_a_notebook_to_download(built_site):
    text = (built_site / LAB).read_text(encoding="utf-8")
    assert re.search(r'<img[^>]+src="[^"]+\.png"', text)  # the heatmap, drawn at build time
    assert "Traceback" not in text
    assert "application/vnd.jupyter.stderr" not in text  # no warnings printed by the cells
    link = re.search(r'<a class="md-button" href="([^"]+\.ipynb)" download>', text)
    assert link, "no download button"
    notebook = nbformat.read((built_site / LAB).parent / link[1], as_version=4)
    nbformat.validate(notebook)
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert "self_attention(x)" in code and "imshow" in code


def test_every_page_html_stays_light(built_site):
    # mkdocs-jupyter inlines ~600 KB of CSS and every plot as base64 into each notebook
    # page; the hooks move both into shared files instead.
    sizes = page_sizes(built_site)
    assert len(sizes) >= 10
    heavy = {page: f"{size / 1024:.0f} KB" for page, size in sizes.items() if size > 150 * 1024}
    assert not heavy, f"pages over 150 KB of HTML: {heavy}"


def test_lab_plots_are_image_files_not_inline_data(built_site):
    text = (built_site / LAB).read_text(encoding="utf-8")
    assert "data:image" not in text
    images = re.findall(r'<img[^>]+src="([^"]+\.png)"', text)
    assert images, "the lab's heatmap is missing"
    for src in images:
        image = (built_site / LAB).parent / src
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src


# --- API reference (mkdocstrings) -------------------------------------------------------


def _mkdocstrings_plugin() -> dict:
    """The ``mkdocstrings`` entry of mkdocs.yml's plugins, as plain data."""
    from tests.harness.snippets import mkdocs_config

    for entry in mkdocs_config(ROOT).get("plugins") or []:
        if isinstance(entry, dict) and "mkdocstrings" in entry:
            return entry["mkdocstrings"]
    raise AssertionError("mkdocs.yml configures no mkdocstrings plugin")


def _api_anchors(site: Path) -> dict[str, str]:
    """Every ``id="attnbook..."`` in the built reference pages -> the page's folder."""
    anchors = {}
    for page in sorted((site / "api").rglob("index.html")):
        for anchor in re.findall(r'\bid="(attnbook[\w.]*)"', page.read_text(encoding="utf-8")):
            anchors.setdefault(anchor, page.parent.relative_to(site).as_posix())
    return anchors


def test_a_broken_cross_reference_fails_the_strict_build(tmp_path):
    # A tiny project with the site's own mkdocstrings configuration: one page renders a
    # real object and links to it, and, in the broken variant, to a name that does not exist.
    import os

    import yaml

    plugin = _mkdocstrings_plugin()
    python = plugin["handlers"]["python"]
    assert "import" not in python and "inventories" not in python, "no remote objects.inv"
    python["paths"] = [str(ROOT / "src")]
    config = {
        "site_name": "refs",
        "strict": True,
        "theme": {"name": "material", "font": False},
        "plugins": [{"mkdocstrings": plugin}],
    }
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (tmp_path / "docs").mkdir()
    good = (
        "# Refs\n\n[`causal_mask`][attnbook.causal_mask] is documented below.\n\n"
        "::: attnbook.causal_mask\n"
    )
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}

    def build(page: str) -> subprocess.CompletedProcess:
        (tmp_path / "docs" / "index.md").write_text(page, encoding="utf-8")
        return subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    ok = build(good)
    assert ok.returncode == 0, ok.stdout + ok.stderr  # the control: the config itself builds
    assert 'id="attnbook.causal_mask"' in (tmp_path / "site/index.html").read_text()
    broken = build(good + "\nSee also [this][attnbook.does_not_exist].\n")
    log = broken.stdout + broken.stderr
    assert broken.returncode != 0, log
    assert "attnbook.does_not_exist" in log, log


def test_every_public_name_has_an_anchor_in_the_reference_and_a_link_from_a_chapter(built_site):
    import attnbook
    import attnbook.datasets
    import attnbook.pretrained

    anchors = _api_anchors(built_site)
    wanted = [f"attnbook.{name}" for name in attnbook.__all__]
    wanted += ["attnbook.pretrained", "attnbook.datasets"]
    wanted += [
        f"attnbook.pretrained.{name}"
        for name in ("load_minilm", "embed_sentences", "attention_maps")
    ]
    wanted += [f"attnbook.datasets.{name}" for name in attnbook.datasets.__all__]
    missing = [name for name in wanted if name not in anchors]
    assert not missing, f"not in the API reference: {missing}"
    assert set(anchors.values()) <= {
        p.parent.relative_to(built_site).as_posix()
        for p in (built_site / "api").rglob("index.html")
    }

    # Each name is linked from the prose of a chapter, with a cross-reference that the
    # build resolved to the anchor above.
    linked = set()
    for page in (built_site / "chapters").rglob("index.html"):
        linked |= set(
            re.findall(
                r'href="[^"#]*/api/[^"#]*#(attnbook[\w.]*)"', page.read_text(encoding="utf-8")
            )
        )
    unlinked = [
        name
        for name in wanted
        if name not in linked and name not in ("attnbook.pretrained", "attnbook.datasets")
    ]
    assert not unlinked, f"no chapter links to: {unlinked}"
