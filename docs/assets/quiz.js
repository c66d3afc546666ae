// Interactive quizzes. A chapter's quiz question is plain Markdown (CONTRIBUTING.md, "Quizzes"):
//
//   !!! question "The question?"
//
//       1. An option.
//       2. Another option.
//
//       ??? success "Answer"
//           **2.** Why option 2 is right.
//
// which MkDocs renders as div.admonition.question > ol, details.success > p > strong "2.".
// This script turns each such question into buttons. The right option is read from the page
// itself (the bold number that opens the Answer block), never written here. A wrong pick says
// so and reveals nothing; the right one says so and opens the Answer block with its
// explanation. Opening the Answer block by hand (giving up) marks the right option too.
// Without JavaScript the page stays as written: the options as a list, the answer collapsed.
// Plain JavaScript, no framework, nothing from another host.
(function () {
  "use strict";

  var ANSWER = /^\s*(\d+)\s*[.)]?\s*$/;  // "2." (also "2" or "2)") in the leading <strong>

  function directChildren(node, tag) {
    var out = [];
    for (var i = 0; i < node.children.length; i++) {
      if (node.children[i].tagName === tag) out.push(node.children[i]);
    }
    return out;
  }

  function firstContentNode(node) {
    for (var child = node.firstChild; child; child = child.nextSibling) {
      if (child.nodeType === 1) return child;
      if (child.nodeType === 3 && child.textContent.trim()) return child;
    }
    return null;
  }

  // Reads one question: { options: [li], answer: index, details } or { error: "why" }.
  function parse(box) {
    var list = directChildren(box, "OL")[0];
    if (!list) return { error: "no numbered list of options (1. 2. 3.) in the question" };
    var options = directChildren(list, "LI");
    if (options.length < 2) return { error: "fewer than two options in the numbered list" };
    var details = directChildren(box, "DETAILS")[0];
    if (!details) return { error: "no collapsed ??? success \"Answer\" block inside the question" };
    var para = directChildren(details, "P")[0];
    var strong = para && firstContentNode(para);
    if (!strong || strong.tagName !== "STRONG" || !ANSWER.test(strong.textContent)) {
      return { error: "the Answer block does not start with the right option's number in bold, as **2.**" };
    }
    var number = parseInt(ANSWER.exec(strong.textContent)[1], 10);
    var first = list.hasAttribute("start") ? parseInt(list.getAttribute("start"), 10) || 1 : 1;
    var index = number - first;
    if (index < 0 || index >= options.length) {
      return { error: "the Answer block names option " + number + ", but the list has options " +
                      first + " to " + (first + options.length - 1) };
    }
    return { list: list, options: options, answer: index, number: number, details: details };
  }

  function build(box, quiz, serial) {
    var feedbackId = "quiz-feedback-" + serial;
    var feedback = document.createElement("p");
    feedback.className = "quiz-feedback";
    feedback.id = feedbackId;
    feedback.setAttribute("role", "status");
    feedback.setAttribute("aria-live", "polite");
    feedback.setAttribute("data-quiz-feedback", "");

    var buttons = quiz.options.map(function (li, i) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "quiz-option";
      button.setAttribute("data-quiz-option", String(i + 1));
      button.setAttribute("aria-pressed", "false");
      button.setAttribute("aria-describedby", feedbackId);
      // Move the option's content into the button; a loose list's <p> is unwrapped, since a
      // button holds phrasing content only.
      while (li.firstChild) {
        var child = li.firstChild;
        if (child.nodeType === 1 && child.tagName === "P") {
          while (child.firstChild) button.appendChild(child.firstChild);
          if (child.nextSibling) button.appendChild(document.createTextNode(" "));
          li.removeChild(child);
        } else {
          button.appendChild(child);
        }
      }
      li.appendChild(button);
      return button;
    });

    function reveal() {
      buttons[quiz.answer].classList.add("quiz-correct");
    }

    function choose(i) {
      buttons.forEach(function (b, j) { b.setAttribute("aria-pressed", j === i ? "true" : "false"); });
      if (i === quiz.answer) {
        box.setAttribute("data-quiz-state", "correct");
        feedback.className = "quiz-feedback quiz-feedback-correct";
        feedback.textContent = "Correct! The explanation is below.";
        reveal();
        quiz.details.open = true;  // the explanation, where the author wrote it
      } else {
        box.setAttribute("data-quiz-state", "wrong");
        feedback.className = "quiz-feedback quiz-feedback-wrong";
        feedback.textContent = "Not quite, try again.";
        buttons[i].classList.add("quiz-wrong");
      }
    }

    buttons.forEach(function (button, i) {
      button.addEventListener("click", function () { choose(i); });
    });
    quiz.details.addEventListener("toggle", function () { if (quiz.details.open) reveal(); });

    quiz.list.classList.add("quiz-options");
    quiz.list.parentNode.insertBefore(feedback, quiz.list.nextSibling);
    box.classList.add("quiz");
    box.setAttribute("data-quiz-answer", String(quiz.answer + 1));
    box.setAttribute("data-quiz-state", "unanswered");
    box.setAttribute("data-quiz-ready", "true");
  }

  var serial = 0;

  function init() {
    var boxes = document.querySelectorAll(".md-typeset div.admonition.question");
    for (var i = 0; i < boxes.length; i++) {
      var box = boxes[i];
      if (box.hasAttribute("data-quiz-ready") || box.hasAttribute("data-quiz-error")) continue;
      var quiz = parse(box);
      if (quiz.error) {
        // Left as written (still readable); tests/test_quiz.py fails on this attribute.
        box.setAttribute("data-quiz-error", quiz.error);
        var title = box.querySelector(".admonition-title");
        if (window.console) console.warn("quiz.js: not made interactive: " +
          (title ? title.textContent.trim() : "(untitled question)") + ": " + quiz.error);
        continue;
      }
      build(box, quiz, ++serial);
    }
  }

  // Material's instant navigation swaps pages without a reload; document$ tells us when.
  if (window.document$ && window.document$.subscribe) window.document$.subscribe(init);
  else if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
