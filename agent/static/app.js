// kb chat page: streams answers from /v1/chat/completions, turns [n] into buttons that show the
// cited passage. Everything the server or a document says is inserted as text, never as HTML.
"use strict";

const KEY_STORAGE = "kb.apiKey";
const CITATION = /\[(\d+(?:\s*[,;]\s*\d+)*)\]/g;

const $ = (id) => document.getElementById(id);
const state = { messages: [], controller: null, busy: false, pending: null };

// ------------------------------------------------------------------ API key (session storage)

function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: "Bearer " + key } : {};
}

function askForKey(message) {
  const dialog = $("key-dialog");
  $("api-key").value = apiKey();
  if (message) showError(message);
  if (!dialog.open) dialog.showModal();
  $("api-key").focus();
}

function setupKeyDialog() {
  $("key-button").addEventListener("click", () => askForKey());
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    $("key-dialog").close();
    hideError();
    updateKeyButton();
    const pending = state.pending; // the question the missing key stopped: ask it now
    state.pending = null;
    if (key && pending && !state.busy) ask(pending);
  });
  $("key-cancel").addEventListener("click", () => { state.pending = null; $("key-dialog").close(); });
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    $("api-key").value = "";
    $("key-dialog").close();
    updateKeyButton();
  });
}

function updateKeyButton() {
  $("key-button").textContent = apiKey() ? "API key ✓" : "API key";
}

// ------------------------------------------------------------------ errors

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

function hideError() { $("error").hidden = true; }

async function errorMessage(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON */ }
  if (response.status === 429) {
    const retry = response.headers.get("Retry-After");
    if (retry) message += ` (retry in ${retry} s)`;
  }
  return message;
}

// ------------------------------------------------------------------ rendering

function addMessage(role, text) {
  $("empty").hidden = true;
  const node = document.createElement("article");
  node.className = "msg " + role;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  node.appendChild(body);
  $("conversation").appendChild(node);
  node.scrollIntoView({ block: "end" });
  return node;
}

function describe(source) {
  const where = source.section || (source.page ? `page ${source.page}` : "");
  return [source.source || "?", source.title || "", where].filter(Boolean).join(" · ");
}

// The answer text with each [n] (or [1, 2]) as buttons; numbers without a known source stay disabled.
function renderAnswer(node, text, sources) {
  const body = node.querySelector(".text");
  body.textContent = "";
  const byNumber = new Map((sources || []).map((s) => [Number(s.n), s]));
  let last = 0;
  for (const match of text.matchAll(CITATION)) {
    body.appendChild(document.createTextNode(text.slice(last, match.index)));
    const numbers = match[1].split(/\s*[,;]\s*/).map(Number);
    numbers.forEach((n) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "cite";
      button.textContent = `[${n}]`;
      button.dataset.n = String(n);
      const source = byNumber.get(n);
      if (source) {
        button.title = describe(source);
        button.addEventListener("click", () => openViewer(source, button));
      } else {
        button.disabled = true;
      }
      body.appendChild(button);
    });
    last = match.index + match[0].length;
  }
  body.appendChild(document.createTextNode(text.slice(last)));
}

function renderSources(node, sources) {
  if (!sources || !sources.length) return;
  const box = document.createElement("div");
  box.className = "sources";
  const title = document.createElement("h3");
  title.textContent = "Sources";
  const list = document.createElement("ol");
  for (const source of sources) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `[${source.n}] ${describe(source)}`;
    button.addEventListener("click", () => openViewer(source, button));
    item.appendChild(button);
    list.appendChild(item);
  }
  box.append(title, list);
  node.appendChild(box);
}

function renderSteps(node, steps) {
  let box = node.querySelector(".steps");
  if (!box) {
    box = document.createElement("div");
    box.className = "steps";
    node.insertBefore(box, node.firstChild);
  }
  box.textContent = steps.map((s) => `🔎 ${s.tool}${s.summary ? ": " + s.summary : ""}`).join("\n");
}

function addMessageError(node, message) {
  const line = document.createElement("div");
  line.className = "msg-error";
  line.textContent = "⚠ " + message;
  node.appendChild(line);
}

// ------------------------------------------------------------------ citation viewer

function openViewer(source, button) {
  document.querySelectorAll(".cite.active").forEach((b) => b.classList.remove("active"));
  if (button && button.classList.contains("cite")) button.classList.add("active");
  $("viewer-title").textContent = `[${source.n}] ${source.title || source.source || "Source"}`;
  $("viewer-source").textContent = source.source || "";
  $("viewer-where").textContent = source.section || (source.page ? `page ${source.page}` : "");
  $("viewer-text").textContent = source.text || "(the passage text is not part of this answer: show the whole document)";
  const documentBox = $("viewer-document");
  documentBox.hidden = true;
  documentBox.textContent = "";
  $("viewer-open").onclick = () => showDocument(source.source);
  $("viewer").hidden = false;
}

async function showDocument(name) {
  const box = $("viewer-document");
  const path = name.split("/").map(encodeURIComponent).join("/");
  let response;
  try {
    response = await fetch("/api/documents/" + path, { headers: authHeaders() });
  } catch (err) {
    showError("cannot reach the server: " + err.message);
    return;
  }
  if (!response.ok) {
    const message = await errorMessage(response);
    if (response.status === 401) { askForKey(message); return; }
    showError(message);
    return;
  }
  const type = response.headers.get("Content-Type") || "";
  if (type.startsWith("application/pdf")) {
    const url = URL.createObjectURL(await response.blob());
    window.open(url, "_blank", "noopener");
    return;
  }
  const text = await response.text();
  if (type.startsWith("text/html")) {
    // Parsed, never rendered: DOMParser runs no script and loads nothing.
    const parsed = new DOMParser().parseFromString(text, "text/html");
    parsed.querySelectorAll("script, style, noscript").forEach((el) => el.remove());
    box.textContent = (parsed.body ? parsed.body.textContent : "").replace(/\n{3,}/g, "\n\n").trim();
  } else {
    box.textContent = text;
  }
  box.hidden = false;
}

// ------------------------------------------------------------------ asking

async function ask(question) {
  hideError();
  state.messages.push({ role: "user", content: question });
  addMessage("user", question);
  const node = addMessage("assistant", "");
  node.classList.add("streaming");
  setBusy(true);
  state.controller = new AbortController();
  let text = "";
  let sources = [];
  let steps = [];
  let failed = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ model: $("model").value, stream: true, messages: state.messages }),
      signal: state.controller.signal,
    });
    if (response.status === 401) {
      // No (valid) key: take the exchange back, ask for the key, then ask the question again.
      const message = await errorMessage(response);
      state.messages.pop();
      node.previousElementSibling.remove();
      node.remove();
      if (!document.querySelector("#conversation .msg")) $("empty").hidden = false;
      setBusy(false);
      state.pending = question;
      askForKey(message);
      return;
    }
    if (!response.ok) {
      failed = await errorMessage(response);
    } else {
      const finished = await readStream(response, {
        token(piece) { text += piece; renderAnswer(node, text, sources); },
        final(chunk) {
          sources = chunk.sources || [];
          if (chunk.steps) { steps = chunk.steps; renderSteps(node, steps); }
        },
        error(message) { failed = message; },
      });
      if (!finished && !failed) failed = "the answer stream ended early";
    }
  } catch (err) {
    failed = err.name === "AbortError" ? "stopped" : "cannot reach the server: " + err.message;
  }
  node.classList.remove("streaming");
  renderAnswer(node, text, sources);
  renderSources(node, sources);
  if (failed) {
    addMessageError(node, failed);
    if (failed !== "stopped") showError(failed);
  }
  if (text) {
    state.messages.push({ role: "assistant", content: text });
  } else {
    state.messages.pop(); // nothing answered: the question can be asked again
  }
  setBusy(false);
  node.scrollIntoView({ block: "end" });
}

// Reads OpenAI-style SSE: returns true once [DONE] arrived.
async function readStream(response, handlers) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return true;
      let chunk;
      try { chunk = JSON.parse(data); } catch (_) { continue; }
      if (chunk.error) { handlers.error(chunk.error.message || "the server reported an error"); return false; }
      const choice = (chunk.choices || [])[0];
      if (choice && choice.delta && choice.delta.content) handlers.token(choice.delta.content);
      if ("sources" in chunk) handlers.final(chunk);
    }
  }
}

function setBusy(busy) {
  state.busy = busy;
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  $("question").disabled = busy;
  if (!busy) $("question").focus();
}

// ------------------------------------------------------------------ wiring

function setup() {
  setupKeyDialog();
  updateKeyButton();
  $("error-close").addEventListener("click", hideError);
  $("viewer-close").addEventListener("click", () => { $("viewer").hidden = true; });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("new-chat").addEventListener("click", () => {
    if (state.busy) return;
    state.messages = [];
    document.querySelectorAll("#conversation .msg").forEach((n) => n.remove());
    $("empty").hidden = false;
    $("viewer").hidden = true;
    hideError();
  });
  $("ask").addEventListener("submit", (event) => {
    event.preventDefault();
    const question = $("question").value.trim();
    if (!question || state.busy) return;
    $("question").value = "";
    ask(question);
  });
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("ask").requestSubmit();
    }
  });
  $("question").focus();
}

document.addEventListener("DOMContentLoaded", setup);
