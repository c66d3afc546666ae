// The attention explorer (docs/explorer.md): pick a sentence, a layer and a head, then
// hover, tap or focus a token to see its row of attention weights over the sentence.
// Data: assets/explorer/attention.json, written from the real model at build time by
// tools/mkdocs_hooks.py. Plain JavaScript, no framework, nothing from another host.
(function () {
  "use strict";

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) { node.setAttribute(name, attrs[name]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function options(select, count, label) {
    for (var i = 0; i < count; i++) select.appendChild(el("option", { value: String(i) }, label(i)));
  }

  function start(root) {
    var url = root.getAttribute("data-src");
    fetch(url).then(function (r) {
      if (!r.ok) throw new Error("could not load " + url + " (" + r.status + ")");
      return r.json();
    }).then(function (data) { build(root, data); }).catch(function (err) {
      root.textContent = "The explorer could not load its data: " + err.message;
    });
  }

  function build(root, data) {
    root.textContent = "";
    var controls = el("div", { class: "explorer-controls" });
    var sentence = el("select", { "aria-label": "sentence", "data-role": "sentence" });
    var layer = el("select", { "aria-label": "layer", "data-role": "layer" });
    var head = el("select", { "aria-label": "head", "data-role": "head" });
    data.sentences.forEach(function (s, i) { sentence.appendChild(el("option", { value: String(i) }, s.text)); });
    options(layer, data.layers, function (i) { return "layer " + i; });
    options(head, data.heads, function (i) { return "head " + i; });
    [["Sentence", sentence], ["Layer", layer], ["Head", head]].forEach(function (pair) {
      var label = el("label", {}, pair[0] + " ");
      label.appendChild(pair[1]);
      controls.appendChild(label);
    });
    var tokens = el("p", { class: "explorer-tokens", "data-role": "tokens" });
    var readout = el("p", { class: "explorer-readout", "aria-live": "polite", "data-role": "readout" },
                     "Hover, tap or focus a token.");
    root.appendChild(controls);
    root.appendChild(tokens);
    root.appendChild(readout);

    var selected = null;  // the query token's index, kept across layer and head changes

    function weights() {
      return data.sentences[+sentence.value].weights[+layer.value][+head.value];  // (L, L)
    }

    function show(query) {
      selected = query;
      var row = weights()[query];
      var spans = tokens.children;
      for (var j = 0; j < spans.length; j++) {
        var w = row[j];
        spans[j].style.setProperty("--weight", String(w));
        spans[j].setAttribute("data-weight", w.toFixed(3));
        spans[j].classList.toggle("explorer-query", j === query);
        spans[j].setAttribute("title", (w * 100).toFixed(1) + "%");
      }
      var order = row.map(function (w, j) { return [w, j]; }).sort(function (a, b) { return b[0] - a[0]; });
      var words = data.sentences[+sentence.value].tokens;
      readout.textContent = "\u201c" + words[query] + "\u201d, layer " + layer.value + ", head " + head.value +
        ": " + order.slice(0, 3).map(function (p) { return words[p[1]] + " " + (p[0] * 100).toFixed(1) + "%"; }).join(", ");
    }

    function drawTokens() {
      tokens.textContent = "";
      selected = null;
      data.sentences[+sentence.value].tokens.forEach(function (word, i) {
        var span = el("span", { class: "explorer-token", tabindex: "0", role: "button", "data-index": String(i) }, word);
        span.addEventListener("mouseenter", function () { show(i); });
        span.addEventListener("focus", function () { show(i); });
        span.addEventListener("click", function () { show(i); });
        tokens.appendChild(span);
      });
    }

    sentence.addEventListener("change", function () { drawTokens(); readout.textContent = "Hover, tap or focus a token."; });
    [layer, head].forEach(function (select) {
      select.addEventListener("change", function () { if (selected !== null) show(selected); });
    });
    drawTokens();
    root.setAttribute("data-ready", "true");
  }

  function init() {
    var roots = document.querySelectorAll("[data-attention-explorer]");
    for (var i = 0; i < roots.length; i++) if (!roots[i].getAttribute("data-ready")) start(roots[i]);
  }

  // Material's instant navigation swaps pages without a reload; document$ tells us when.
  if (window.document$ && window.document$.subscribe) window.document$.subscribe(init);
  else document.addEventListener("DOMContentLoaded", init);
})();
