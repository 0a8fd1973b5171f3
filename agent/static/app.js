// kb chat page: streams answers from /v1/chat/completions, renders them as sanitized Markdown
// (render.js), turns [n] into buttons that show the cited passage, keeps conversations in this
// browser's localStorage and explains errors in plain words.
"use strict";

const KEY_STORAGE = "kb.apiKey";               // sessionStorage: this tab only
const CONVERSATIONS = "kb.conversations";      // localStorage: this browser
const ACTIVE = "kb.activeConversation";
const MAX_CONVERSATIONS = 50;
const PHONE = window.matchMedia("(max-width: 900px)");   // panels over the page
const NARROW = window.matchMedia("(max-width: 600px)");  // short labels in the header

const $ = (id) => document.getElementById(id);
const state = { conversation: null, controller: null, busy: false, pending: null, lastFocus: null };

// ------------------------------------------------------------------ API key (session storage)

function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: "Bearer " + key } : {};
}

function askForKey(problem) {
  const dialog = $("key-dialog");
  $("api-key").value = apiKey();
  if (problem) showError(problem);
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
  $("key-dialog").addEventListener("close", () => { if (!state.busy) $("question").focus(); });
}

function updateKeyButton() {
  $("key-button").textContent = apiKey() ? "API key ✓" : "API key";
}

// ------------------------------------------------------------------ errors in plain words

// A problem: {sentence, details?, status?, code?, retry?}. `sentence` is ours; `details` is what the
// server said (shown only behind a "Details" toggle).
const ASK_ADMIN = "tell the person who runs this server";
const SENTENCES = {
  invalid_api_key: () => apiKey()
    ? "This API key was not accepted. Enter a valid API key (ask the person who runs this server)."
    : "Enter your API key (ask the person who runs this server).",
  server_busy: (p) => `The server is busy, try again in ${p.retry || 1} s.`,
  upstream_rate_limited: (p) => `The language model is busy (Databricks rate limit), try again in ${p.retry || 5} s.`,
  upstream_auth: () => `The server could not sign in to Databricks, so it cannot answer now: ${ASK_ADMIN}.`,
  upstream_endpoint_not_found: () => `The server's language model was not found on Databricks: ${ASK_ADMIN}.`,
  upstream_remote_server: () => "Databricks server error: the language model failed to answer. Try again in a minute.",
  upstream_remote_connection: () => "The server cannot reach Databricks right now. Try again in a minute.",
  upstream_remote_timeout: () => "Databricks took too long to answer. Try again, perhaps with a shorter question.",
  upstream_stream_interrupted: () => "The answer was cut off (the connection to Databricks dropped). Ask again.",
  upstream_bad_request: () => `Databricks refused the request: ${ASK_ADMIN} if this keeps happening.`,
  index_missing: () => `No documents have been indexed on this server yet: ${ASK_ADMIN}.`,
  config: () => `This server is not set up to answer yet: ${ASK_ADMIN}.`,
  question_too_long: () => "Your question is too long. Shorten it and ask again.",
  too_many_messages: () => "This conversation is too long for the server. Start a new chat.",
  request_too_large: () => "This conversation is too large to send. Start a new chat.",
  model_not_found: () => "This server does not offer the chosen model. Pick another one at the top.",
  document_not_found: () => "That document is no longer available on the server.",
  document_too_large: () => "That document is too large to show here.",
  host_not_allowed: () => `This server does not answer at this address: ${ASK_ADMIN}.`,
  internal_error: () => `Something went wrong on the server. Try again; if it keeps happening, ${ASK_ADMIN}.`,
};

function problemFrom(status, code, details, retry) {
  const p = { status, code, details, retry };
  const make = SENTENCES[code];
  if (make) p.sentence = make(p);
  else if (status === 401) p.sentence = SENTENCES.invalid_api_key(p);
  else if (status === 429) p.sentence = SENTENCES.server_busy(p);
  else if (status >= 500) p.sentence = `The server could not answer (error ${status}). Try again in a minute; if it keeps happening, ${ASK_ADMIN}.`;
  else p.sentence = `The server refused this request (error ${status}).`;
  return p;
}

async function problemOf(response) {
  let code = null;
  let details = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || null;
      if (body.error.message) details = `${response.status}${code ? " " + code : ""}: ${body.error.message}`;
    }
  } catch (_) { /* not JSON */ }
  const retry = Number(response.headers.get("Retry-After")) || null;
  return problemFrom(response.status, code, details, retry);
}

function plain(sentence, details) { return { sentence, details }; }

function showError(problem) {
  $("error-text").textContent = problem.sentence;
  $("error-details").hidden = !problem.details;
  $("error-details").open = false;
  $("error-raw").textContent = problem.details || "";
  $("error").hidden = false;
}

function hideError() { $("error").hidden = true; }

// ------------------------------------------------------------------ conversations (localStorage)

function loadConversations() {
  try {
    const list = JSON.parse(localStorage.getItem(CONVERSATIONS) || "[]");
    return Array.isArray(list) ? list.filter((c) => c && c.id && Array.isArray(c.messages)) : [];
  } catch (_) { return []; }
}

function saveConversations(list) {
  list.sort((a, b) => (b.updated || 0) - (a.updated || 0));
  list.length = Math.min(list.length, MAX_CONVERSATIONS);
  for (;;) {
    try {
      localStorage.setItem(CONVERSATIONS, JSON.stringify(list));
      return;
    } catch (_) { // quota: drop the oldest conversation and try again
      if (list.length <= 1) return;
      list.pop();
    }
  }
}

function saveConversation(conversation) {
  if (!conversation.messages.length) return;
  conversation.updated = Date.now();
  const list = loadConversations().filter((c) => c.id !== conversation.id);
  list.push(conversation);
  saveConversations(list);
  localStorage.setItem(ACTIVE, conversation.id);
  renderHistory();
}

function newConversation() {
  const id = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()).slice(0, 36);
  return { id, title: "", messages: [], updated: Date.now() };
}

function titleOf(conversation) {
  if (conversation.title) return conversation.title;
  const first = conversation.messages.find((m) => m.role === "user");
  const text = first ? first.content.replace(/\s+/g, " ").trim() : "New conversation";
  return text.length > 60 ? text.slice(0, 57) + "…" : text;
}

// What is sent to the API: the questions that got an answer, with it, then the new question.
function apiMessages(conversation, question) {
  const out = [];
  const items = conversation.messages;
  for (let i = 0; i < items.length; i++) {
    const m = items[i];
    const next = items[i + 1];
    if (m.role === "user" && next && next.role === "assistant" && next.content) {
      out.push({ role: "user", content: m.content }, { role: "assistant", content: next.content });
      i++;
    }
  }
  out.push({ role: "user", content: question });
  return out;
}

function renderHistory() {
  const list = $("history-list");
  list.textContent = "";
  const conversations = loadConversations();
  if (!conversations.length) {
    const none = document.createElement("li");
    none.className = "history-none";
    none.textContent = "No saved conversations yet.";
    list.appendChild(none);
    return;
  }
  for (const conversation of conversations) {
    const item = document.createElement("li");
    const title = titleOf(conversation);
    const open = document.createElement("button");
    open.type = "button";
    open.className = "conv-open";
    open.textContent = title;
    open.title = title;
    if (state.conversation && conversation.id === state.conversation.id) open.setAttribute("aria-current", "true");
    open.addEventListener("click", () => openConversation(conversation.id));
    const rename = document.createElement("button");
    rename.type = "button";
    rename.className = "conv-rename icon-button";
    rename.textContent = "✎";
    rename.setAttribute("aria-label", `Rename “${title}”`);
    rename.addEventListener("click", () => startRename(item, conversation));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "conv-delete icon-button";
    remove.textContent = "✕";
    remove.setAttribute("aria-label", `Delete “${title}”`);
    remove.addEventListener("click", () => deleteConversation(conversation));
    item.append(open, rename, remove);
    item.dataset.id = conversation.id;
    list.appendChild(item);
  }
}

function startRename(item, conversation) {
  const input = document.createElement("input");
  input.type = "text";
  input.className = "conv-title-input";
  input.value = titleOf(conversation);
  input.maxLength = 120;
  input.setAttribute("aria-label", "Conversation name (Enter saves, Escape cancels)");
  item.textContent = "";
  item.appendChild(input);
  input.focus();
  input.select();
  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    if (save) {
      const list = loadConversations();
      const stored = list.find((c) => c.id === conversation.id);
      if (stored) {
        stored.title = input.value.trim();
        saveConversations(list);
        if (state.conversation && state.conversation.id === stored.id) state.conversation.title = stored.title;
      }
    }
    renderHistory();
    const again = document.querySelector(`#history-list li[data-id="${CSS.escape(conversation.id)}"] .conv-rename`);
    if (again) again.focus();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); finish(true); }
    if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
}

function deleteConversation(conversation) {
  if (state.busy) return;
  if (!window.confirm(`Delete the conversation “${titleOf(conversation)}” from this browser?`)) return;
  saveConversations(loadConversations().filter((c) => c.id !== conversation.id));
  if (state.conversation && state.conversation.id === conversation.id) startNewChat();
  renderHistory();
  $("history-toggle").focus();
}

function openConversation(id) {
  if (state.busy) return;
  const conversation = loadConversations().find((c) => c.id === id);
  if (!conversation) return;
  state.conversation = conversation;
  localStorage.setItem(ACTIVE, id);
  clearConversationView();
  for (const m of conversation.messages) {
    if (m.role === "user") addUserMessage(m.content);
    else finishAnswer(addAssistantMessage(), m);
  }
  if (conversation.model) $("model").value = conversation.model;
  renderHistory();
  if (PHONE.matches) setHistoryOpen(false);
  $("question").focus();
}

function startNewChat() {
  if (state.busy) return;
  state.conversation = newConversation();
  localStorage.removeItem(ACTIVE);
  clearConversationView();
  renderHistory();
  hideError();
}

function clearConversationView() {
  document.querySelectorAll("#conversation .msg").forEach((n) => n.remove());
  $("empty").hidden = false;
  closeViewer(false);
}

function setHistoryOpen(open) {
  document.body.classList.toggle("history-open", open);
  document.body.classList.toggle("history-closed", !open);
  $("history-toggle").setAttribute("aria-expanded", String(open));
  if (open && PHONE.matches) {
    const current = document.querySelector("#history-list [aria-current] , #history-list button");
    (current || $("history-close")).focus();
  }
}

function historyIsOpen() {
  return document.body.classList.contains("history-open") ||
    (!PHONE.matches && !document.body.classList.contains("history-closed"));
}

// ------------------------------------------------------------------ rendering

function addUserMessage(text) {
  $("empty").hidden = true;
  const node = document.createElement("article");
  node.className = "msg user";
  node.setAttribute("aria-label", "Your question");
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  node.appendChild(body);
  $("conversation").appendChild(node);
  node.scrollIntoView({ block: "end" });
  return node;
}

function addAssistantMessage() {
  $("empty").hidden = true;
  const node = document.createElement("article");
  node.className = "msg assistant";
  node.setAttribute("aria-label", "Answer");
  const body = document.createElement("div");
  body.className = "text md";
  node.appendChild(body);
  $("conversation").appendChild(node);
  node.scrollIntoView({ block: "end" });
  return node;
}

function describe(source) {
  const where = source.section || (source.page ? `page ${source.page}` : "");
  return [source.source || "?", source.title || "", where].filter(Boolean).join(" · ");
}

// The answer as sanitized Markdown, each [n] a button; numbers without a known source stay disabled.
function renderAnswer(node, text, sources) {
  const byNumber = new Map((sources || []).map((s) => [Number(s.n), s]));
  const final = !node.classList.contains("streaming");
  const fragment = window.kbRender.answer(text, (n) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "cite";
    button.textContent = `[${n}]`;
    button.dataset.n = String(n);
    const source = byNumber.get(n);
    if (source) {
      button.title = describe(source);
      button.setAttribute("aria-label", `Source ${n}: ${describe(source)}`);
      button.addEventListener("click", () => openViewer(source, button));
    } else {
      button.disabled = true;
      button.title = final ? `The server returned no source for [${n}]` : "The sources arrive with the end of the answer";
    }
    return button;
  });
  const body = node.querySelector(".text");
  body.replaceChildren(fragment);
}

function renderSources(node, sources, text) {
  node.querySelectorAll(".sources").forEach((n) => n.remove());
  const cited = window.kbRender.citationPattern;
  cited.lastIndex = 0;
  const hasCitations = cited.test(text || "");
  if ((!sources || !sources.length) && !hasCitations) return;
  const box = document.createElement("div");
  box.className = "sources";
  const title = document.createElement("h3");
  title.textContent = "Sources";
  box.appendChild(title);
  if (sources && sources.length) {
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
    box.appendChild(list);
  } else {
    const note = document.createElement("p");
    note.className = "sources-note";
    note.textContent = "The server sent no list of sources for this answer, so its [n] markers cannot be opened.";
    box.appendChild(note);
  }
  node.appendChild(box);
}

function stepLine(step) {
  const name = step.tool || step.name || "tool";
  let what = step.summary || "";
  if (!what && step.args && typeof step.args === "object") {
    what = Object.values(step.args).filter((v) => typeof v === "string" || typeof v === "number").join(", ");
  }
  return `${step.error ? "⚠" : "🔎"} ${name}${what ? ": " + what : ""}`;
}

function renderSteps(node, steps) {
  let box = node.querySelector(".steps");
  if (!steps || !steps.length) { if (box) box.remove(); return; }
  if (!box) {
    box = document.createElement("ol");
    box.className = "steps";
    box.setAttribute("aria-label", "What the assistant did");
    node.insertBefore(box, node.querySelector(".text"));
  }
  box.textContent = "";
  for (const step of steps) {
    const item = document.createElement("li");
    item.textContent = stepLine(step);
    box.appendChild(item);
  }
}

function setStatus(node, text) {
  let line = node.querySelector(".status");
  if (!text) { if (line) line.remove(); return; }
  if (!line) {
    line = document.createElement("div");
    line.className = "status";
    line.setAttribute("role", "status");
    node.insertBefore(line, node.firstChild);
  }
  line.textContent = text;
}

function renderMeta(node, entry) {
  node.querySelectorAll(".meta").forEach((n) => n.remove());
  if (!entry.model) return;
  const meta = document.createElement("p");
  meta.className = "meta";
  meta.textContent = `Answered by ${entry.model}`;
  node.appendChild(meta);
}

function addMessageError(node, problem) {
  const box = document.createElement("div");
  box.className = "msg-error";
  const line = document.createElement("span");
  line.textContent = "⚠ " + problem.sentence;
  box.appendChild(line);
  if (problem.details) {
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "Details";
    const code = document.createElement("code");
    code.textContent = problem.details;
    details.append(summary, code);
    box.appendChild(details);
  }
  node.appendChild(box);
}

// An answer's final look, from its stored entry {content, sources, steps, model, error}.
function finishAnswer(node, entry) {
  node.classList.remove("streaming");
  setStatus(node, "");
  renderSteps(node, entry.steps);
  renderAnswer(node, entry.content || "", entry.sources);
  renderSources(node, entry.sources, entry.content);
  renderMeta(node, entry);
  node.querySelectorAll(".msg-error").forEach((n) => n.remove());
  if (entry.error) addMessageError(node, entry.error);
}

// ------------------------------------------------------------------ citation viewer

function openViewer(source, button) {
  document.querySelectorAll(".cite.active").forEach((b) => b.classList.remove("active"));
  if (button && button.classList.contains("cite")) button.classList.add("active");
  state.lastFocus = button || document.activeElement;
  const label = source.title || source.source || "Source";
  $("viewer-title").textContent = source.n == null ? label : `[${source.n}] ${label}`;
  $("viewer-source").textContent = source.source || "";
  $("viewer-where").textContent = source.section || (source.page ? `page ${source.page}` : "");
  const passage = $("viewer-text");
  passage.hidden = false;
  if (source.text) passage.replaceChildren(window.kbRender.markdown(source.text));
  else passage.textContent = "The passage text is not part of this answer: show the whole document.";
  const documentBox = $("viewer-document");
  documentBox.hidden = true;
  documentBox.textContent = "";
  $("viewer-open").hidden = !source.source;
  $("viewer-open").onclick = () => showDocument(source.source);
  $("viewer").hidden = false;
  document.body.classList.add("viewer-open");
  $("viewer-title").focus();
}

function closeViewer(restoreFocus = true) {
  if ($("viewer").hidden) return;
  $("viewer").hidden = true;
  document.body.classList.remove("viewer-open");
  document.querySelectorAll(".cite.active").forEach((b) => b.classList.remove("active"));
  if (restoreFocus && state.lastFocus && document.contains(state.lastFocus)) state.lastFocus.focus();
}

const MARKDOWN_FILES = /\.(md|markdown|mdown|mkd)$/i;

async function showDocument(name) {
  const box = $("viewer-document");
  const path = name.split("/").map(encodeURIComponent).join("/");
  let response;
  try {
    response = await fetch("/api/documents/" + path, { headers: authHeaders() });
  } catch (err) {
    showError(plain("Cannot reach the server. Check your connection and that the server is running.", err.message));
    return;
  }
  if (!response.ok) {
    const problem = await problemOf(response);
    if (response.status === 401) { askForKey(problem); return; }
    showError(problem);
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
    box.replaceChildren(window.kbRender.html(text));
  } else if (MARKDOWN_FILES.test(name)) {
    box.replaceChildren(window.kbRender.markdown(text));
  } else {
    const pre = document.createElement("pre");
    pre.className = "plain";
    pre.textContent = text;
    box.replaceChildren(pre);
  }
  box.hidden = false;
  box.focus();
}

// ------------------------------------------------------------------ documents view

const docs = { list: [], loaded: false, canUpload: false, limit: 0 };

// GET /api/documents: what this caller may read, and whether it may add files.
async function loadDocuments() {
  let response;
  try {
    response = await fetch("/api/documents", { headers: authHeaders() });
  } catch (err) {
    return plain("Cannot reach the server. Check your connection and that the server is running.", err.message);
  }
  if (!response.ok) return { ...(await problemOf(response)), status: response.status };
  const body = await response.json();
  docs.list = Array.isArray(body.documents) ? body.documents : [];
  docs.canUpload = body.can_upload === true;
  docs.limit = Number(body.upload_limit) || 0;
  docs.loaded = true;
  renderExamples();
  return null;
}

function documentsOpen() { return !$("documents").hidden; }

async function openDocuments() {
  $("documents").hidden = false;
  $("conversation").hidden = true;
  $("docs-button").setAttribute("aria-expanded", "true");
  document.body.classList.add("documents-open");
  $("documents-title").focus();
  $("documents-count").textContent = "Loading…";
  const problem = await loadDocuments();
  if (problem) {
    $("documents-count").textContent = "";
    if (problem.status === 401) { askForKey(problem); return; }
    showError(problem);
    return;
  }
  $("upload").hidden = !docs.canUpload;
  if (docs.canUpload) $("upload-hint").textContent = `Markdown, text, HTML, PDF, Word… up to ${formatBytes(docs.limit)} each; they are indexed at once.`;
  renderDocuments();
}

function closeDocuments(restoreFocus = true) {
  if (!documentsOpen()) return;
  $("documents").hidden = true;
  $("conversation").hidden = false;
  $("docs-button").setAttribute("aria-expanded", "false");
  document.body.classList.remove("documents-open");
  if (restoreFocus) $("docs-button").focus();
}

function formatBytes(n) {
  if (!n && n !== 0) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${Math.round(n / 1024)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function formatDate(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return isNaN(date) ? "" : date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function renderDocuments() {
  const words = $("documents-filter").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  const shown = docs.list.filter((d) => {
    const hay = `${d.title || ""} ${d.source || ""}`.toLowerCase();
    return words.every((w) => hay.includes(w));
  });
  const list = $("documents-list");
  list.textContent = "";
  for (const doc of shown) {
    const item = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "doc-open";
    open.textContent = doc.title || doc.source;
    open.addEventListener("click", () => openDocumentViewer(doc, open));
    const meta = document.createElement("p");
    meta.className = "doc-meta";
    const source = document.createElement("span");
    source.className = "doc-source";
    source.textContent = doc.source;
    const rest = [`${doc.chunks} chunk${doc.chunks === 1 ? "" : "s"}`];
    if (doc.indexed_at) rest.push(`indexed ${formatDate(doc.indexed_at)}`);
    meta.append(source, ` · ${rest.join(" · ")}`);
    item.append(open, meta);
    list.appendChild(item);
  }
  const total = docs.list.length;
  $("documents-count").textContent = !total
    ? "No documents you may read are indexed yet."
    : shown.length === total ? `${total} document${total === 1 ? "" : "s"}` : `${shown.length} of ${total} documents match`;
}

// The viewer for a whole document (no passage): the same panel the citations use.
function openDocumentViewer(doc, button) {
  openViewer({ n: null, title: doc.title, source: doc.source, text: "" }, button);
  $("viewer-text").hidden = true;
  $("viewer-open").hidden = true;
  showDocument(doc.source);
}

// Example questions on the empty page: from the titles of documents the caller may read.
function renderExamples() {
  const titles = [...new Set(docs.list.map((d) => (d.title || "").trim()).filter((t) => t && t.length <= 80))].slice(0, 3);
  const list = $("examples-list");
  list.textContent = "";
  for (const title of titles) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "example";
    button.textContent = `What does “${title}” say?`;
    button.addEventListener("click", () => {
      if (state.busy) return;
      ask(button.textContent);
    });
    item.appendChild(button);
    list.appendChild(item);
  }
  $("examples").hidden = titles.length === 0;
}

// ------------------------------------------------------------------ uploads (writers)

const uploads = { queue: [], running: false };

function queueUploads(files) {
  for (const file of files) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "upload-name";
    name.textContent = file.name;
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", `Upload of ${file.name}`);
    const note = document.createElement("span");
    note.className = "upload-note";
    note.textContent = "waiting";
    item.append(name, bar, note);
    $("upload-list").appendChild(item);
    if (docs.limit && file.size > docs.limit) {
      finishUpload(item, false, `too large: ${formatBytes(file.size)}, the limit is ${formatBytes(docs.limit)}`);
      continue;
    }
    uploads.queue.push({ file, item });
  }
  runUploads();
}

function finishUpload(item, ok, text) {
  item.classList.add(ok ? "ok" : "failed");
  item.querySelector("progress").value = 100;
  item.querySelector(".upload-note").textContent = text;
}

// One file at a time (the server indexes one upload at a time); progress per file.
async function runUploads() {
  if (uploads.running) return;
  uploads.running = true;
  while (uploads.queue.length) {
    const { file, item } = uploads.queue.shift();
    const result = await sendFile(file, item);
    if (result.ok) finishUpload(item, true, `${result.body.status === "replaced" ? "replaced" : "added"}: ${result.body.source}`);
    else finishUpload(item, false, result.message);
    $("live").textContent = `${file.name}: ${item.querySelector(".upload-note").textContent}`;
  }
  uploads.running = false;
  await loadDocuments();
  if (documentsOpen()) renderDocuments();
}

function sendFile(file, item) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    const bar = item.querySelector("progress");
    const note = item.querySelector(".upload-note");
    xhr.open("POST", "/api/documents");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) bar.value = Math.round((event.loaded / event.total) * 90);
      note.textContent = "uploading";
    };
    xhr.upload.onload = () => { bar.value = 90; note.textContent = "indexing…"; };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 200 && body) { resolve({ ok: true, body }); return; }
      const message = (body && body.error && body.error.message) || `the server answered ${xhr.status}`;
      resolve({ ok: false, message });
    };
    xhr.onerror = () => resolve({ ok: false, message: "cannot reach the server" });
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

function setupUploads() {
  const zone = $("upload-zone");
  $("upload-input").addEventListener("change", (event) => {
    queueUploads([...event.target.files]);
    event.target.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer && event.dataTransfer.files.length) queueUploads([...event.dataTransfer.files]);
  });
}

// ------------------------------------------------------------------ asking

const WAITING = {
  "kb-rag": "Searching the documents…",
  "kb-agent": "Working: searching and reading the documents…",
};

async function ask(question) {
  hideError();
  if (!state.conversation) state.conversation = newConversation();
  const conversation = state.conversation;
  const model = $("model").value;
  const messages = apiMessages(conversation, question);
  const userNode = addUserMessage(question);
  const node = addAssistantMessage();
  node.classList.add("streaming");
  node.setAttribute("aria-busy", "true");
  const started = Date.now();
  let phase = WAITING[model] || "Working…";
  const tick = () => {
    const seconds = Math.round((Date.now() - started) / 1000);
    setStatus(node, seconds >= 2 ? `${phase} ${seconds} s` : phase);
  };
  tick();
  const timer = setInterval(tick, 1000);
  $("live").textContent = phase;
  setBusy(true);
  state.controller = new AbortController();
  const entry = { role: "assistant", content: "", sources: [], steps: [], model };
  let failed = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ model, stream: true, messages }),
      signal: state.controller.signal,
    });
    if (response.status === 401) {
      // No (valid) key: take the exchange back, ask for the key, then ask the question again.
      const problem = await problemOf(response);
      clearInterval(timer);
      userNode.remove();
      node.remove();
      if (!document.querySelector("#conversation .msg")) $("empty").hidden = false;
      setBusy(false);
      state.pending = question;
      askForKey(problem);
      return;
    }
    if (!response.ok) {
      failed = await problemOf(response);
    } else {
      const finished = await readStream(response, {
        model(name) { entry.model = name; },
        token(piece) {
          if (!entry.content) { phase = "Writing the answer…"; tick(); }
          entry.content += piece;
          renderAnswer(node, entry.content, entry.sources);
        },
        step(step) {
          // A tool result completes its call (same id); a call is shown at once, still without a summary.
          const call = step.type === "tool_result" && entry.steps.find((s) => s.id && s.id === step.id);
          if (call) Object.assign(call, { summary: step.summary, error: step.error });
          else entry.steps.push({ id: step.id, tool: step.tool || step.name, args: step.args, summary: step.summary, error: step.error });
          phase = `Using ${step.tool || step.name || "a tool"}…`; tick();
          renderSteps(node, entry.steps);
        },
        final(chunk) {
          entry.sources = chunk.sources || [];
          if (Array.isArray(chunk.steps)) entry.steps = chunk.steps;
        },
        error(error) {
          failed = problemFrom(502, error.code || "upstream_stream_interrupted",
            error.message ? `${error.code || "error"}: ${error.message}` : null);
        },
      });
      if (!finished && !failed) failed = plain("The answer stopped before it was complete. Ask again.", "the stream ended without [DONE]");
    }
  } catch (err) {
    failed = err.name === "AbortError"
      ? plain("Stopped.", null)
      : plain("Cannot reach the server. Check your connection and that the server is running.", err.message);
    if (err.name === "AbortError") failed.stopped = true;
  }
  clearInterval(timer);
  node.removeAttribute("aria-busy");
  if (failed) entry.error = { sentence: failed.sentence, details: failed.details || null };
  finishAnswer(node, entry);
  if (failed && !failed.stopped) showError(failed);
  $("live").textContent = failed ? failed.sentence : "The answer is ready.";
  conversation.model = model;
  conversation.messages.push({ role: "user", content: question }, entry);
  saveConversation(conversation);
  setBusy(false);
  node.scrollIntoView({ block: "end" });
}

// Reads OpenAI-style SSE: returns true once [DONE] arrived.
async function readStream(response, handlers) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let named = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return true;
      let chunk;
      try { chunk = JSON.parse(data); } catch (_) { continue; }
      if (chunk.error) { handlers.error(chunk.error); return false; }
      if (!named && chunk.model) { named = true; handlers.model(chunk.model); }
      // kb-agent's tool calls and results as they happen: {"step": {"type", "id", "tool", "args", "summary", "error"}}.
      if (chunk.step && typeof chunk.step === "object") handlers.step(chunk.step);
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
  $("new-chat").disabled = busy;
  document.querySelectorAll("#history-list button").forEach((b) => { b.disabled = busy; });
  if (!busy && !$("key-dialog").open) $("question").focus();
}

// ------------------------------------------------------------------ wiring

// The model picker: short names on narrow screens (the header must fit 390 px), descriptions otherwise.
const MODEL_LABELS = { "kb-rag": "kb-rag (retrieval)", "kb-agent": "kb-agent (assistant with tools)" };
function labelModels() {
  for (const option of $("model").options) {
    option.textContent = NARROW.matches ? option.value : MODEL_LABELS[option.value] || option.value;
  }
}

function setup() {
  setupKeyDialog();
  updateKeyButton();
  $("error-close").addEventListener("click", hideError);
  $("viewer-close").addEventListener("click", () => closeViewer());
  $("docs-button").addEventListener("click", () => (documentsOpen() ? closeDocuments() : openDocuments()));
  $("documents-close").addEventListener("click", () => closeDocuments());
  $("documents-filter").addEventListener("input", renderDocuments);
  setupUploads();
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("new-chat").addEventListener("click", () => { startNewChat(); $("question").focus(); });
  $("history-toggle").addEventListener("click", () => setHistoryOpen(!historyIsOpen()));
  $("history-close").addEventListener("click", () => { setHistoryOpen(false); $("history-toggle").focus(); });
  $("ask").addEventListener("submit", (event) => {
    event.preventDefault();
    const question = $("question").value.trim();
    if (!question || state.busy) return;
    closeDocuments(false);
    $("question").value = "";
    ask(question);
  });
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("ask").requestSubmit();
    }
  });
  // Escape closes the innermost open panel (the key dialog closes itself).
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || $("key-dialog").open) return;
    if (!$("viewer").hidden) { closeViewer(); event.preventDefault(); return; }
    if (documentsOpen()) { closeDocuments(); event.preventDefault(); return; }
    if (PHONE.matches && document.body.classList.contains("history-open")) {
      setHistoryOpen(false);
      $("history-toggle").focus();
      event.preventDefault();
      return;
    }
    if (!$("error").hidden) { hideError(); event.preventDefault(); }
  });
  labelModels();
  NARROW.addEventListener("change", labelModels);
  PHONE.addEventListener("change", () => {
    document.body.classList.remove("history-open", "history-closed");
    $("history-toggle").setAttribute("aria-expanded", String(historyIsOpen()));
  });
  $("history-toggle").setAttribute("aria-expanded", String(historyIsOpen()));

  const active = localStorage.getItem(ACTIVE);
  if (active && loadConversations().some((c) => c.id === active)) openConversation(active);
  else startNewChat();
  $("question").focus();
  if (apiKey()) loadDocuments();  // the example questions (quietly nothing when it fails)
}

document.addEventListener("DOMContentLoaded", setup);
