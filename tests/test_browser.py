"""The built site in real Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import json

import pytest


def _explorer_weights(page, index):
    cell = page.locator(f'[data-role="tokens"] [data-index="{index}"]')
    cell.hover()
    return [float(w) for w in page.locator('[data-role="tokens"] > span').evaluate_all(
        "spans => spans.map(s => s.getAttribute('data-weight'))")]


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
    assert shown == pytest.approx(expected, abs=6e-4)  # the page rounds to 3 decimals
    assert page.locator(".explorer-query").inner_text() == "it"
    assert "layer 5, head 3" in page.locator('[data-role="readout"]').inner_text()

    page.select_option('[data-role="head"]', "11")  # the row follows the head
    switched = [float(w) for w in page.locator('[data-role="tokens"] > span').evaluate_all(
        "spans => spans.map(s => s.getAttribute('data-weight'))")]
    assert switched == pytest.approx(sentence["weights"][5][11][it], abs=6e-4)
    assert switched != pytest.approx(shown, abs=1e-3)
    assert not page.errors, page.errors


def test_explorer_works_by_tap_on_a_phone_in_dark_mode(browser, site_url, built_site):
    data = json.loads((built_site / "assets/explorer/attention.json").read_text(encoding="utf-8"))
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True,
                                  is_mobile=True, color_scheme="dark")
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
