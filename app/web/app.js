// The kbqa web page: chat first, with the knowledge bases and conversations on the left and the
// documents on the right (both fold away on a narrow screen). This module wires the parts together.
"use strict";

import {
  $,
  api,
  apiKey,
  currentAccess,
  currentKb,
  el,
  headers,
  kbPath,
  loadAccess,
  mayAdminister,
  mayEdit,
  setApiKey,
} from "./api.js";
import { ask, busy, newConversation, render, showKnowledgeBase, stop } from "./chat.js";
import { confirmAction } from "./confirm.js";
import { initDocuments, loadDocuments, showUploadTypes } from "./documents.js";
import { language, setLanguage, t, translatePage } from "./i18n.js";
import { initSources } from "./sources.js";

const KB_STORAGE = "kbqa.kb";
const DOCS_STORAGE = "kbqa.docsOpen";
const WIDE = window.matchMedia("(min-width: 1100px)");

let knowledgeBases = []; // as the API lists them
let sawLoading = false; // the service was loading its models when the page opened

// ---- knowledge bases ----

/** Reload the knowledge-base list, selecting `select` (else the current or the last used one). */
async function loadKbs(select) {
  const picker = $("kb-select");
  const wanted = select || picker.value || localStorage.getItem(KB_STORAGE) || "";
  try {
    ({ data: knowledgeBases } = await api("GET", "/v1/kbs"));
  } catch (error) {
    $("kb-error").textContent = t("kb.loadFailed", { error: error.message });
    return;
  }
  $("kb-error").textContent = "";
  picker.replaceChildren();
  if (knowledgeBases.length === 0) {
    const none = el("option", t("kb.none"));
    none.value = "";
    picker.append(none);
  }
  for (const kb of knowledgeBases) {
    const option = el("option", kb.name);
    option.value = kb.name;
    picker.append(option);
  }
  if (knowledgeBases.some((kb) => kb.name === wanted)) picker.value = wanted;
  picker.disabled = knowledgeBases.length === 0;
  $("delete-kb").disabled = knowledgeBases.length === 0;
  showCounts();
}

/** Show the selected knowledge base's name and counts above the chat. */
function showCounts() {
  const kb = knowledgeBases.find((k) => k.name === currentKb());
  $("chat-title").textContent = kb ? kb.name : t("app.title");
  $("kb-counts").textContent = kb
    ? `${t("kb.documents", { count: kb.documents })} · ${t("docs.chunks", { count: kb.chunks })}`
    : "";
  $("docs-count").textContent = kb ? String(kb.documents) : "";
  // An empty knowledge base says what to do first.
  $("empty-hint").textContent = !kb
    ? t("kb.noneYet")
    : kb.documents === 0
      ? t("chat.emptyNoDocs")
      : t("chat.emptyHint");
  showExamples(kb && kb.documents ? kb.name : "");
}

/** Offer, in an empty conversation, a few questions made from the knowledge base's headings; one click asks. */
async function showExamples(kb) {
  const box = $("examples");
  let questions = [];
  if (kb) {
    try {
      ({ data: questions } = await api("GET", kbPath("/examples", kb)));
    } catch (_) {
      questions = []; // an older server has none to offer; the hint above still says what to do
    }
  }
  if (kb && kb !== currentKb()) return; // another knowledge base was chosen meanwhile
  box.replaceChildren(
    ...questions.map((question) => {
      const button = el("button", question, "example");
      button.type = "button";
      button.addEventListener("click", () => {
        $("question").value = question;
        $("ask-form").requestSubmit();
      });
      const item = el("li");
      item.append(button);
      return item;
    }),
  );
  $("examples-label").hidden = questions.length === 0;
}

// ---- what the key may do ----

/** Show only what the API key may do: creating and deleting knowledge bases for an admin, uploading and
 * changing documents for an editor of the selected one; and say under the key field what the key is. */
function applyAccess() {
  const admin = mayAdminister();
  $("create-kb-form").hidden = !admin;
  $("delete-kb").hidden = !admin;
  document.body.dataset.canEdit = String(mayEdit(currentKb()));
  const access = currentAccess();
  const status = $("key-status");
  status.classList.toggle("error", Boolean(access && access.error));
  if (!access) {
    status.textContent = "";
  } else if (access.error) {
    status.textContent = t("auth.invalid", { error: access.error });
  } else if (access.anonymous && !access.admin) {
    status.textContent = t("auth.noKey");
  } else if (access.role) {
    const kbs = access.admin || access.knowledge_bases.includes("*") ? t("auth.everything") : access.knowledge_bases.join(", ");
    const parts = [t("auth.role", { role: t(`role.${access.role}`), kbs })];
    if (access.groups) parts.push(t("auth.groups", { groups: access.groups.join(", ") || "—" }));
    status.textContent = parts.join(" · ");
  } else {
    status.textContent = "";
  }
}

/** The key changed: learn what it may do, then list what it may read. */
async function keyChanged(value) {
  setApiKey(value);
  await loadAccess();
  applyAccess();
  await loadKbs();
  kbChanged();
}

/** Make the selected knowledge base current: remember it, list its documents and conversations. */
function kbChanged() {
  applyAccess();
  const kb = currentKb();
  if (kb) localStorage.setItem(KB_STORAGE, kb);
  showKnowledgeBase(kb);
  loadDocuments();
  const info = knowledgeBases.find((k) => k.name === kb);
  // An empty knowledge base opens its documents beside the chat (not over it, on a narrow screen).
  if (info && info.documents === 0 && WIDE.matches) setDocsOpen(true);
}

async function createKb(event) {
  event.preventDefault();
  const name = $("kb-name").value.trim();
  $("kb-error").textContent = "";
  try {
    await api("POST", "/v1/kbs", { name });
  } catch (error) {
    $("kb-error").textContent = t("kb.createFailed", { error: error.message });
    return;
  }
  $("kb-name").value = "";
  await loadKbs(name);
  kbChanged();
}

async function deleteKb() {
  const kb = currentKb();
  if (!kb || !(await confirmAction(t("kb.deleteConfirm", { name: kb }), t("kb.delete")))) return;
  try {
    await api("DELETE", kbPath("", kb));
  } catch (error) {
    $("kb-error").textContent = t("kb.deleteFailed", { error: error.message });
    return;
  }
  localStorage.removeItem(`kbqa.conversations.${kb}`);
  localStorage.removeItem(`kbqa.conversation.${kb}`);
  localStorage.removeItem(KB_STORAGE);
  await loadKbs();
  kbChanged();
}

/** While the service loads its models, say so above the question box and look again every 2 s; once it
 * is ready, list the knowledge bases again (the sample one is built meanwhile) with their examples. */
async function waitUntilReady() {
  let body;
  try {
    body = await (await fetch("/readyz", { headers: headers() })).json();
  } catch (_) {
    return; // not JSON (a proxy's page): the API calls will say what is wrong
  }
  if (body.status === "loading") {
    sawLoading = true;
    $("chat-error").textContent = t("app.loading");
    $("chat-error").classList.add("notice");
    setTimeout(waitUntilReady, 2000);
  } else if (sawLoading) {
    sawLoading = false;
    if ($("chat-error").textContent === t("app.loading")) $("chat-error").textContent = "";
    $("chat-error").classList.remove("notice");
    await loadKbs();
    kbChanged();
  }
}

// ---- layout: the side panels ----

function setSidebarOpen(open) {
  if (open && !WIDE.matches) setDocsOpen(false); // one panel over the chat at a time
  document.body.classList.toggle("sidebar-open", open);
  $("menu-toggle").setAttribute("aria-expanded", String(open));
}

function setDocsOpen(open) {
  if (open) setSidebarOpen(false);
  document.body.classList.toggle("docs-open", open);
  $("docs-toggle").setAttribute("aria-expanded", String(open));
  // Only a wide screen keeps the panel open from one visit to the next; on a narrow one it covers the chat.
  if (WIDE.matches) localStorage.setItem(DOCS_STORAGE, open ? "1" : "0");
}

// ---- settings ----

function languageChanged() {
  setLanguage($("language").value);
  translatePage();
  showCounts();
  render();
  loadDocuments();
  showUploadTypes();
}

// ---- wiring ----

function init() {
  translatePage();
  $("language").value = language();
  $("language").addEventListener("change", languageChanged);
  const key = $("api-key");
  key.value = apiKey();
  key.addEventListener("change", () => keyChanged(key.value.trim()));

  $("kb-select").addEventListener("change", () => {
    showCounts();
    kbChanged();
  });
  $("create-kb-form").addEventListener("submit", createKb);
  $("delete-kb").addEventListener("click", deleteKb);
  // On a narrow screen, the chat comes back once a conversation is chosen.
  $("conversation-list").addEventListener("click", (event) => {
    if (event.target.closest(".conversation-open")) setSidebarOpen(false);
  });
  $("new-conversation").addEventListener("click", () => {
    newConversation();
    setSidebarOpen(false);
  });

  const question = $("question");
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = question.value.trim();
    if (!text || busy()) return;
    if (!currentKb()) {
      $("chat-error").textContent = t("kb.pick");
      return;
    }
    question.value = "";
    fitQuestion();
    ask(text);
  });
  question.addEventListener("keydown", (event) => {
    // Enter asks, Shift+Enter breaks the line; not while an input method is composing (Chinese).
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("ask-form").requestSubmit();
    }
  });
  question.addEventListener("input", fitQuestion);
  $("stop").addEventListener("click", stop);

  $("menu-toggle").addEventListener("click", () => setSidebarOpen(!document.body.classList.contains("sidebar-open")));
  $("docs-toggle").addEventListener("click", () => setDocsOpen(!document.body.classList.contains("docs-open")));
  $("sidebar-close").addEventListener("click", () => setSidebarOpen(false));
  $("docs-close").addEventListener("click", () => setDocsOpen(false));
  $("scrim").addEventListener("click", () => {
    setSidebarOpen(false);
    if (!WIDE.matches) setDocsOpen(false);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !document.querySelector("dialog[open]")) {
      setSidebarOpen(false);
      if (!WIDE.matches) setDocsOpen(false);
    }
  });
  if (WIDE.matches && localStorage.getItem(DOCS_STORAGE) === "1") setDocsOpen(true);

  initSources();
  initDocuments(() => loadKbs());
  loadAccess()
    .then(applyAccess)
    .then(() => loadKbs())
    .then(kbChanged);
  waitUntilReady();
}

/** Grow the question box with its text, up to a limit (then it scrolls). */
function fitQuestion() {
  const box = $("question");
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight, 200)}px`;
}

init();
