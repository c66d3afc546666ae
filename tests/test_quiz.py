"""The interactive quizzes (docs/assets/quiz.js) in real Chromium (Debian's, via Playwright).

What the quiz does, and what these tests hold it to:

* Each ``!!! question`` admonition becomes a set of ``<button>`` options and a feedback line.
* A wrong pick says "Not quite, try again", marks that option as wrong and reveals nothing:
  neither the right option nor the explanation, so the reader can try again.
* The right pick says "Correct", marks the option and opens the Answer block, so the
  explanation is shown where the author wrote it.
* The right option is the bold number that opens the Answer block. The tests read that
  number from the chapter's Markdown, independently of the script, and compare.
* Without JavaScript the page is as written: question, numbered options, Answer collapsed.

A quiz in a format the script does not understand is left static (the script marks it
``data-quiz-error``) and fails ``test_every_quiz_on_every_page_is_interactive`` with the
page and the question named.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

QUESTION = "div.admonition.question"
# What counts as a quiz question in built HTML: the supported `!!! question` admonition, and
# the collapsible `??? question` form, which the script does not support (so it must fail).
ANY_QUESTION = ".md-typeset div.admonition.question, .md-typeset details.question"
_HTML_QUESTION = re.compile(
    r'<(?:div class="admonition question"|details class="question"[^>]*)>\s*'
    r'<(?:p class="admonition-title"|summary)>(.*?)</(?:p|summary)>',
    re.S,
)


# -- the Markdown source, read without the script's help -----------------------------------


def source_quizzes(md: Path) -> list[dict]:
    """Each ``!!! question`` of a page: its title, option count, answer number, explanation."""
    lines = md.read_text(encoding="utf-8").split("\n")
    quizzes = []
    for i, line in enumerate(lines):
        head = re.match(r'^!!! question "(.*)"\s*$', line)
        if not head:
            continue
        block = []
        for body in lines[i + 1 :]:
            if body.strip() and not body.startswith("    "):
                break
            block.append(body)
        options = [b for b in block if re.match(r"^    \d+\. ", b)]
        answer, explanation = None, ""
        for k, body in enumerate(block):
            if re.match(r'^    \?\?\? success "Answer"', body):
                rest = [b.strip() for b in block[k + 1 :] if b.startswith("        ")]
                bold = re.match(r"^\*\*(\d+)\.\*\*\s*(.*)$", " ".join(rest), re.S)
                if bold:
                    answer, explanation = int(bold[1]), bold[2]
                break
        quizzes.append(
            {
                "title": head[1],
                "options": len(options),
                "answer": answer,
                "explanation": explanation,
                "line": i + 1,
            }
        )
    return quizzes


def plain_fragments(markdown: str) -> list[str]:
    """The explanation's plain text between formulas, as a reader sees it (no Markdown)."""
    text = re.sub(r"\$[^$]*\$", "\0", markdown)
    text = text.replace("`", "").replace("*", "")
    pieces = [" ".join(p.split()).strip(" ,;:.()") for p in text.split("\0")]
    return [p for p in pieces if len(p) >= 12]


def _norm(text: str) -> str:
    return " ".join(text.split())


def _source_for(page_dir: str) -> Path | None:
    """The Markdown file a built page came from (``chapters/05-x/`` -> docs/chapters/05-x.md)."""
    rel = page_dir.strip("/")
    for candidate in (
        [DOCS / "index.md"] if not rel else [DOCS / f"{rel}.md", DOCS / rel / "index.md"]
    ):
        if candidate.exists():
            return candidate
    return None


# -- the browser ---------------------------------------------------------------------------


def _new_page(browser, **context_args):
    """Like conftest's ``page`` fixture, for contexts with other settings; close the context."""
    context = browser.new_context(**context_args)
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    return context, page


def _questions(page):
    """Every question box on the page as the script left it, in document order."""
    return page.eval_on_selector_all(
        ANY_QUESTION,
        """boxes => boxes.map(box => ({
        title: (box.querySelector('.admonition-title, summary') || box).textContent.trim(),
        ready: box.getAttribute('data-quiz-ready') === 'true',
        error: box.getAttribute('data-quiz-error'),
        answer: box.getAttribute('data-quiz-answer'),
        buttons: box.querySelectorAll('button.quiz-option').length,
    }))""",
    )


def _chapter_url(site_url: str, stem: str) -> str:
    return f"{site_url}chapters/{stem}/"


def _pick(box, number):
    box.locator(f'button.quiz-option[data-quiz-option="{number}"]').click()


def _answer_paragraph(box):
    return box.locator("details.success > p").first


@pytest.mark.parametrize("stem", ["05-multi-head-attention", "07-relative-positions"])
def test_wrong_then_right_answer(page, site_url, stem):
    quizzes = source_quizzes(DOCS / "chapters" / f"{stem}.md")
    assert quizzes, f"{stem}.md has no quiz"
    page.goto(_chapter_url(site_url, stem))
    boxes = page.locator(QUESTION)
    assert boxes.count() == len(quizzes)
    for n, quiz in enumerate(quizzes):
        box, right = boxes.nth(n), quiz["answer"]
        wrong = 1 if right != 1 else 2
        feedback = box.locator("[data-quiz-feedback]")
        # The script's idea of the right option is the bold number in the source.
        assert box.get_attribute("data-quiz-answer") == str(right), quiz["title"]
        assert box.get_attribute("data-quiz-state") == "unanswered"
        assert not _answer_paragraph(box).is_visible()

        _pick(box, wrong)
        assert "Not quite" in feedback.inner_text()
        assert box.get_attribute("data-quiz-state") == "wrong"
        chosen = box.locator(f'button[data-quiz-option="{wrong}"]')
        assert chosen.get_attribute("aria-pressed") == "true"
        assert "quiz-wrong" in chosen.get_attribute("class")
        # Nothing revealed: the right option is unmarked and the explanation still hidden.
        assert box.locator("button.quiz-correct").count() == 0
        assert box.locator("details.success").evaluate("d => d.open") is False
        assert not _answer_paragraph(box).is_visible()

        _pick(box, right)
        assert "Correct" in feedback.inner_text()
        assert "Not quite" not in feedback.inner_text()
        assert box.get_attribute("data-quiz-state") == "correct"
        marked = box.locator("button.quiz-correct")
        assert marked.count() == 1 and marked.get_attribute("data-quiz-option") == str(right)
        assert marked.get_attribute("aria-pressed") == "true"
        assert chosen.get_attribute("aria-pressed") == "false"
        explanation = _answer_paragraph(box)
        assert explanation.is_visible()
        shown = _norm(explanation.inner_text())
        assert shown.startswith(f"{right}.")
        fragments = plain_fragments(quiz["explanation"])
        assert fragments, quiz["explanation"]
        for fragment in fragments:
            assert fragment in shown, (quiz["title"], fragment, shown)
    assert not page.errors, page.errors


def test_keyboard_focus_and_enter_or_space(page, site_url):
    stem = "05-multi-head-attention"
    quiz = source_quizzes(DOCS / "chapters" / f"{stem}.md")[1]
    page.goto(_chapter_url(site_url, stem))
    box = page.locator(QUESTION).nth(1)
    first = box.locator('button[data-quiz-option="1"]')
    first.focus()
    page.keyboard.press("Tab")  # the options are real, focusable buttons in order
    assert page.evaluate("document.activeElement.getAttribute('data-quiz-option')") == "2"
    first.focus()
    page.keyboard.press("Enter")
    assert box.get_attribute("data-quiz-state") == ("correct" if quiz["answer"] == 1 else "wrong")
    box.locator(f'button[data-quiz-option="{quiz["answer"]}"]').focus()
    page.keyboard.press("Enter")
    assert box.get_attribute("data-quiz-state") == "correct"
    assert "Correct" in box.locator("[data-quiz-feedback]").inner_text()
    assert _answer_paragraph(box).is_visible()

    other = page.locator(QUESTION).nth(0)  # Space works as well
    other.locator(f'button[data-quiz-option="{other.get_attribute("data-quiz-answer")}"]').focus()
    page.keyboard.press("Space")
    assert other.get_attribute("data-quiz-state") == "correct"
    assert not page.errors, page.errors


def test_opening_the_answer_by_hand_marks_the_right_option(page, site_url):
    page.goto(_chapter_url(site_url, "05-multi-head-attention"))
    box = page.locator(QUESTION).first
    box.locator("details.success > summary").click()
    assert _answer_paragraph(box).is_visible()
    right = box.get_attribute("data-quiz-answer")
    assert box.locator("button.quiz-correct").get_attribute("data-quiz-option") == right
    assert not page.errors, page.errors


def test_without_javascript_the_quiz_reads_as_written(browser, site_url):
    stem = "05-multi-head-attention"
    quizzes = source_quizzes(DOCS / "chapters" / f"{stem}.md")
    context, page = _new_page(
        browser, java_script_enabled=False, viewport={"width": 1280, "height": 900}
    )
    try:
        page.goto(_chapter_url(site_url, stem))
        boxes = page.locator(QUESTION)
        assert boxes.count() == len(quizzes)
        added = "button.quiz-option, [data-quiz-feedback], [data-quiz-ready]"
        assert page.locator(added).count() == 0
        for n, quiz in enumerate(quizzes):
            box = boxes.nth(n)
            assert box.locator(".admonition-title").is_visible()
            options = box.locator(":scope > ol > li")
            assert options.count() == quiz["options"] == 3
            for k in range(quiz["options"]):
                assert options.nth(k).is_visible()
            details = box.locator(":scope > details.success")
            assert details.count() == 1
            assert details.evaluate("d => d.open") is False  # collapsed
            assert details.locator("summary").inner_text().strip() == "Answer"
            assert not _answer_paragraph(box).is_visible()
            assert _norm(_answer_paragraph(box).text_content()).startswith(f"{quiz['answer']}.")
        assert not page.errors, page.errors
    finally:
        context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_quiz_on_a_phone_in_both_palettes(browser, site_url, scheme):
    context, page = _new_page(
        browser,
        viewport={"width": 390, "height": 844},
        has_touch=True,
        is_mobile=True,
        color_scheme=scheme,
    )
    try:
        page.goto(_chapter_url(site_url, "05-multi-head-attention"))
        wanted = {"light": "default", "dark": "slate"}[scheme]
        assert page.evaluate("document.body.getAttribute('data-md-color-scheme')") == wanted
        box = page.locator(QUESTION).nth(1)
        right = int(box.get_attribute("data-quiz-answer"))
        box.locator(f'button[data-quiz-option="{1 if right != 1 else 2}"]').tap()
        assert box.get_attribute("data-quiz-state") == "wrong"
        box.locator(f'button[data-quiz-option="{right}"]').tap()
        assert box.get_attribute("data-quiz-state") == "correct"
        colours = box.locator("button.quiz-correct").evaluate("""b => {
            const s = getComputedStyle(b);
            const text = getComputedStyle(document.querySelector('.md-typeset'));
            return [s.color, s.backgroundColor, text.color];
        }""")
        assert colours[0] == colours[2], colours  # the palette's text colour, in both schemes
        assert colours[0] != colours[1], colours
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"horizontal scroll on a phone: {width}"
        for k in range(box.locator("button.quiz-option").count()):
            rect = box.locator("button.quiz-option").nth(k).bounding_box()
            assert rect["x"] >= 0 and rect["x"] + rect["width"] <= 390, rect
        assert not page.errors, page.errors
    finally:
        context.close()


def test_every_quiz_on_every_page_is_interactive(page, site_url, built_site):
    """Count the quiz questions in each built page; after the script runs, each must be a
    working quiz whose right option is the source's bold number. Names every one that is not."""
    pages = {}
    for index in sorted(built_site.rglob("index.html")):
        titles = [
            _norm(html.unescape(re.sub(r"<[^>]+>", "", t)))
            for t in _HTML_QUESTION.findall(index.read_text(encoding="utf-8"))
        ]
        if titles:
            pages[str(index.relative_to(built_site).parent).strip(".") + "/"] = titles
    chapters = {f"chapters/{md.stem}/" for md in (DOCS / "chapters").glob("*.md")}
    assert chapters and chapters <= set(pages), f"chapters without a quiz: {chapters - set(pages)}"

    problems = []
    checked = 0
    for page_dir, titles in pages.items():
        page.goto(site_url + page_dir.lstrip("/"))
        found = _questions(page)
        if len(found) != len(titles):
            problems.append(
                f"{page_dir}: {len(titles)} questions in the HTML, {len(found)} in the page"
            )
        for q in found:
            if not q["ready"]:
                why = q["error"] or "not a `!!! question` admonition the script handles"
                problems.append(f"{page_dir}: question {q['title']!r} is not interactive: {why}")
        source = _source_for(page_dir)
        expected = source_quizzes(source) if source and source.suffix == ".md" else None
        if expected is not None:
            if len(expected) != len(found):
                problems.append(
                    f"{page_dir}: {len(expected)} questions in {source.name}, "
                    f"{len(found)} on the page"
                )
            for quiz, q in zip(expected, found, strict=False):
                where = f"{source.relative_to(ROOT)}:{quiz['line']} {quiz['title']!r}"
                if quiz["answer"] is None:
                    problems.append(f"{where}: the Answer block does not start with **N.**")
                elif not 1 <= quiz["answer"] <= quiz["options"]:
                    problems.append(
                        f"{where}: answer {quiz['answer']} is not one of {quiz['options']} options"
                    )
                elif q["ready"] and q["answer"] != str(quiz["answer"]):
                    problems.append(
                        f"{where}: the script says {q['answer']}, the source {quiz['answer']}"
                    )
                elif q["ready"] and q["buttons"] != quiz["options"]:
                    problems.append(
                        f"{where}: {q['buttons']} buttons for {quiz['options']} options"
                    )
        # The right option, picked, is accepted, on every quiz of every page.
        boxes = page.locator(QUESTION)
        for n in range(boxes.count()):
            box = boxes.nth(n)
            if box.get_attribute("data-quiz-ready") != "true":
                continue
            _pick(box, box.get_attribute("data-quiz-answer"))
            accepted = box.get_attribute("data-quiz-state") == "correct"
            if not accepted or not _answer_paragraph(box).is_visible():
                problems.append(f"{page_dir}: question {n + 1}: the right pick was not accepted")
            checked += 1
        if page.errors:
            problems.append(f"{page_dir}: console errors {page.errors}")
            page.errors.clear()
    assert not problems, "\n".join(problems)
    assert checked == sum(len(t) for t in pages.values())
