// kb chat page: Markdown and HTML from the model or a document, rendered safely.
// marked turns Markdown into HTML; DOMPurify always cleans it before it reaches the page (scripts,
// event handlers, iframes, forms, styles, ids and javascript:/data: links removed); the page's CSP
// is the second wall. Images are never loaded (they would need the API key and could track the
// reader): they become their alt text. Links open in a new tab without opener or referrer.
"use strict";

(function () {
  const { Marked } = window.marked;
  const answerMarkdown = new Marked({ gfm: true, breaks: true, async: false });
  const documentMarkdown = new Marked({ gfm: true, breaks: false, async: false });

  // Only http(s), mailto and relative links (no scheme) keep their href.
  const SAFE_URL = /^(?:(?:https?|mailto):|[^a-z]|[a-z+.\-]+(?:[^a-z+.\-:]|$))/i;
  const PURIFY = {
    ALLOWED_URI_REGEXP: SAFE_URL,
    FORBID_TAGS: ["style", "iframe", "frame", "frameset", "object", "embed", "form", "input", "button", "textarea",
      "select", "option", "link", "meta", "base", "svg", "math", "video", "audio", "source", "picture", "dialog",
      "template", "noscript"],
    FORBID_ATTR: ["style", "id", "name", "class", "srcset", "target", "form", "formaction", "tabindex", "autofocus",
      "contenteditable", "popover"],
    ALLOW_DATA_ATTR: false,
    SANITIZE_NAMED_PROPS: true,
    RETURN_DOM_FRAGMENT: true,
  };

  window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      if (node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    }
  });

  function finish(fragment) {
    fragment.querySelectorAll("img").forEach((img) => {
      const alt = (img.getAttribute("alt") || "").trim();
      const note = document.createElement("span");
      note.className = "img-note";
      note.textContent = alt ? `[image: ${alt}]` : "[image]";
      img.replaceWith(note);
    });
    fragment.querySelectorAll("table").forEach((table) => {
      const wrap = document.createElement("div");
      wrap.className = "table-wrap";
      table.replaceWith(wrap);
      wrap.appendChild(table);
    });
    return fragment;
  }

  function clean(html) { return finish(window.DOMPurify.sanitize(html, PURIFY)); }

  const SKIP = new Set(["CODE", "PRE", "A", "BUTTON", "KBD", "SAMP"]);
  const CITATION = /\[(\d+(?:\s*[,;]\s*\d+)*)\]/g;

  // Replaces [n] / [1, 2] in the text (not in code or links) by makeButton(n) nodes.
  function citations(root, makeButton) {
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
      acceptNode(node) {
        for (let p = node.parentNode; p && p !== root; p = p.parentNode) {
          if (SKIP.has(p.nodeName)) return NodeFilter.FILTER_REJECT;
        }
        CITATION.lastIndex = 0;
        return CITATION.test(node.nodeValue) ? NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_SKIP;
      },
    });
    const found = [];
    while (walker.nextNode()) found.push(walker.currentNode);
    for (const node of found) {
      const text = node.nodeValue;
      const parts = document.createDocumentFragment();
      let last = 0;
      for (const match of text.matchAll(CITATION)) {
        parts.appendChild(document.createTextNode(text.slice(last, match.index)));
        match[1].split(/\s*[,;]\s*/).map(Number).forEach((n) => parts.appendChild(makeButton(n)));
        last = match.index + match[0].length;
      }
      parts.appendChild(document.createTextNode(text.slice(last)));
      node.replaceWith(parts);
    }
  }

  window.kbRender = {
    /** A model's answer (Markdown, line breaks kept) as a clean fragment, [n] made by makeButton. */
    answer(text, makeButton) {
      const fragment = clean(answerMarkdown.parse(text || ""));
      if (makeButton) citations(fragment, makeButton);
      return fragment;
    },
    /** A Markdown document or passage as a clean fragment. */
    markdown(text) { return clean(documentMarkdown.parse(text || "")); },
    /** An HTML document as a clean fragment (its body only; scripts, styles, forms... removed). */
    html(text) { return clean(text || ""); },
    citationPattern: CITATION,
  };
})();
