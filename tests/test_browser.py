"""The built site in real Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest


def _explorer_weights(page, index):
    cell = page.locator(f'[data-role="tokens"] [data-index="{index}"]')
    cell.hover()
    return [
        float(w)
        for w in page.locator('[data-role="tokens"] > span').evaluate_all(
            "spans => spans.map(s => s.getAttribute('data-weight'))"
        )
    ]


def test_explorer_highlights_the_hovered_tokens_row_from_the_json(page, site_url, built_site):
    data = json.loads((built_site / "assets/explorer/attention.json").read_text(encoding="utf-8"))
    sentence = data["sentences"][0]
    it = sentence["tokens"].index("it")
    page.goto(site_url + "explorer/")
    page.wait_for_selector('[data-attention-explorer][data-ready="true"]')
    assert page.locator('[data-role="tokens"] > span').all_inner_texts() == sentence["tokens"]

    page.select_option('[data-role="layer"]', "5")
    page.select_option('[data-role="head"]', "3")
    shown = _explorer_weights(page, it)
    expected = sentence["weights"][5][3][it]
    assert shown == pytest.approx(expected, abs=1e-9)  # the JSON holds the 3 decimals shown
    assert page.locator(".explorer-query").inner_text() == "it"
    assert "layer 5, head 3" in page.locator('[data-role="readout"]').inner_text()

    page.select_option('[data-role="head"]', "11")  # the row follows the head
    switched = [
        float(w)
        for w in page.locator('[data-role="tokens"] > span').evaluate_all(
            "spans => spans.map(s => s.getAttribute('data-weight'))"
        )
    ]
    assert switched == pytest.approx(sentence["weights"][5][11][it], abs=1e-9)
    assert switched != pytest.approx(shown, abs=1e-3)
    assert not page.errors, page.errors


def test_explorer_works_by_tap_on_a_phone_in_dark_mode(browser, site_url, built_site):
    data = json.loads((built_site / "assets/explorer/attention.json").read_text(encoding="utf-8"))
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True, color_scheme="dark"
    )
    page = context.new_page()
    page.goto(site_url + "explorer/")
    page.wait_for_selector('[data-attention-explorer][data-ready="true"]')
    assert page.evaluate("document.body.getAttribute('data-md-color-scheme')") == "slate"
    tokens = data["sentences"][0]["tokens"]
    page.locator(f'[data-role="tokens"] [data-index="{tokens.index("mat")}"]').tap()
    assert page.locator(".explorer-query").inner_text() == "mat"
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"horizontal scroll on a phone: {width}"
    context.close()


# --- every built page, in the browser -----------------------------------------------------

ARTIFACTS = Path(
    os.environ.get("ATTNBOOK_ARTIFACTS", Path(__file__).resolve().parents[1] / ".artifacts")
)


def _page_paths(site):
    """Site-relative URLs of every page (folders with an index.html), home first."""
    return sorted(
        ("" if p.parent == site else p.parent.relative_to(site).as_posix() + "/")
        for p in site.rglob("index.html")
    )


def _visit(browser, url, **context_args):
    """Load ``url`` in a fresh context; return (page, context, problems, bytes received)."""
    context = browser.new_context(**context_args)
    page = context.new_page()
    problems, received = [], []
    host = urlparse(url).netloc
    page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url} ({r.failure})"))

    def on_request(request):
        if urlparse(request.url).netloc not in (host, "") and not request.url.startswith(
            ("data:", "blob:")
        ):
            problems.append(f"request to another host: {request.url}")

    def on_response(response):
        if response.status >= 400:
            problems.append(f"HTTP {response.status}: {response.url}")
        try:
            received.append(len(response.body()))
        except Exception:  # noqa: BLE001 - redirects and aborted bodies have none
            pass

    page.on("request", on_request)
    page.on("response", on_response)
    page.goto(url, wait_until="networkidle")
    return page, context, problems, received


def test_every_page_loads_cleanly_and_typesets_its_math(
    browser, site_url, built_site, record_property
):
    paths = _page_paths(built_site)
    assert len(paths) >= 25, paths
    failures = {}
    for path in paths:
        page, context, problems, _ = _visit(browser, site_url + path)
        text = page.locator("article").inner_text()
        formulas = page.locator("article .arithmatex").count()
        if formulas:
            if page.locator("article .arithmatex math").count() != formulas:
                problems.append("a formula was not typeset as MathML")
            boxes = page.evaluate("""() => [...document.querySelectorAll('article .arithmatex math')]
                .filter(m => m.getBoundingClientRect().width === 0).length""")
            if boxes:
                problems.append(f"{boxes} formulas have no width: MathML not rendered")
        for marker in ("\\(", "\\[", "$$"):
            if marker in text:
                problems.append(f"raw TeX delimiter {marker!r} visible")
        if problems:
            failures[path or "/"] = problems
        context.close()
    record_property("browser_pages_checked", len(paths))
    assert not failures, failures


def test_chapter_pages_have_no_horizontal_scroll_on_a_phone(browser, site_url, built_site):
    chapters = [p for p in _page_paths(built_site) if p.startswith("chapters/")]
    assert len(chapters) >= 19
    wide = {}
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    for path in chapters:
        page.goto(site_url + path, wait_until="networkidle")
        scroll, view = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        if scroll > view:
            culprits = page.evaluate("""() => [...document.querySelectorAll('article *')]
                .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
                .slice(0, 3).map(e => e.tagName + '.' + e.className)""")
            wide[path] = (scroll, view, culprits)
    context.close()
    assert not wide, wide


def test_copy_button_copies_the_block_and_it_prints_the_output(browser, site_url):
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.goto(site_url + "chapters/01-self-attention/", wait_until="networkidle")
    block = page.locator("article div.language-python.highlight").first
    shown = block.locator("code").inner_text()
    block.hover()
    block.locator("button[data-md-type='copy']").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.strip() == shown.strip()
    output = page.locator("article div.attnbook-output").first.locator("code").inner_text()
    run = subprocess.run(
        [sys.executable, "-"],
        input=copied,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tempfile.mkdtemp(),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == output.strip()
    # the Output block itself has no copy button: it is not code to paste
    assert page.locator("article div.attnbook-output button[data-md-type='copy']").count() == 0
    context.close()


def test_search_finds_softmax(page, site_url):
    page.goto(site_url, wait_until="networkidle")
    box = page.locator("input.md-search__input")
    box.click()  # on a desktop-sized page the search box sits in the header
    box.press_sequentially("softmax", delay=30)  # typed, as a reader types: search runs on keyup
    hits = page.locator(".md-search-result__item")
    hits.first.wait_for(timeout=15000)
    count = page.locator(".md-search-result__meta").inner_text()
    assert int(count.split()[0]) >= 10, count  # "N matching documents": softmax is everywhere
    links = page.locator(".md-search-result__link").evaluate_all("a => a.map(x => x.href)")
    assert any("/chapters/" in link for link in links), links
    # and the results lead somewhere: the first one opens its page, with the word highlighted
    page.locator(".md-search-result__link").first.click()
    page.wait_for_load_state("networkidle")
    assert "softmax" in page.locator("article").inner_text().lower()
    assert not page.errors, page.errors


def test_dark_mode_toggle_switches_the_palette(page, site_url):
    page.goto(site_url + "chapters/01-self-attention/", wait_until="networkidle")
    scheme = "document.body.getAttribute('data-md-color-scheme')"
    before = page.evaluate(scheme)
    background = "getComputedStyle(document.body).backgroundColor"
    light_bg = page.evaluate(background)
    page.locator("form[data-md-component='palette'] label:visible").first.click()
    after = page.evaluate(scheme)
    assert {before, after} == {"default", "slate"}
    assert page.evaluate(background) != light_bg
    assert not page.errors, page.errors


def test_first_visit_weight_and_screenshots(browser, site_url, record_property):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    weights = {}
    for name, path in (
        ("chapter-1", "chapters/01-self-attention/"),
        ("lab-1", "labs/01-attention-heatmap/"),
        ("explorer", "explorer/"),
    ):
        page, context, problems, received = _visit(
            browser, site_url + path, viewport={"width": 1280, "height": 900}
        )
        if name == "explorer":
            page.wait_for_selector('[data-attention-explorer][data-ready="true"]')
            page.locator('[data-role="tokens"] > span').nth(8).hover()
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)
        weights[name] = sum(received)
        assert not problems, problems
        context.close()
    record_property("first_visit_bytes", weights)
    assert all((ARTIFACTS / f"{n}.png").stat().st_size > 10_000 for n in weights)
    assert weights["chapter-1"] < 2_000_000, weights
