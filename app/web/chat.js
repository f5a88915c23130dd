// The conversation: each turn shows its question, the answer as it streams, then its sources; refusals
// look like refusals. Conversations are kept in localStorage, per knowledge base, and listed to go back to.
"use strict";

import { $, el, errorMessage, describeError, headers, kbPath, sseEvents } from "./api.js";
import { t } from "./i18n.js";
import { numberCitations, openSource, sourceLabel } from "./sources.js";

const MAX_CONVERSATIONS = 50;
const HISTORY_TURNS = 10; // earlier turns sent with a question; the server trims them to its budget too
const HISTORY_CHARS = 50000; // and at most this much of them, well inside the server's 100,000 (docs/security.md)

let kb = "";
let conversations = []; // of the current knowledge base, newest first: {id, title, updated, turns}
let current = null; // the conversation on show; null for a new one not yet asked anything
let streaming = null; // {controller} while an answer streams

const storageKey = (name) => `kbqa.conversations.${name}`;
const currentKey = (name) => `kbqa.conversation.${name}`;

/** Return the stored conversations of knowledge base `name` (none when the storage is unreadable). */
function loadConversations(name) {
  try {
    const stored = JSON.parse(localStorage.getItem(storageKey(name)) || "[]");
    if (!Array.isArray(stored)) return [];
    // An answer that was streaming when the page went away was stopped there.
    for (const turn of stored.flatMap((c) => c.turns || [])) if (turn.state === "streaming") turn.state = "stopped";
    return stored;
  } catch (_) {
    return [];
  }
}

/** Store the conversations, dropping the oldest while the browser's storage is full. */
function save() {
  if (!kb) return;
  let kept = conversations.slice(0, MAX_CONVERSATIONS);
  for (;;) {
    try {
      localStorage.setItem(storageKey(kb), JSON.stringify(kept));
      break;
    } catch (_) {
      if (kept.length <= 1) break;
      kept = kept.slice(0, -1);
    }
  }
  if (current) localStorage.setItem(currentKey(kb), current.id);
  else localStorage.removeItem(currentKey(kb));
}

/** Show the conversations of knowledge base `name`, and the one last open there. */
export function showKnowledgeBase(name) {
  stop();
  kb = name;
  conversations = name ? loadConversations(name) : [];
  const id = name ? localStorage.getItem(currentKey(name)) : null;
  current = conversations.find((c) => c.id === id) || null;
  render();
}

/** Start a new, empty conversation (the current one stays in the list). */
export function newConversation() {
  stop();
  current = null;
  save();
  render();
  $("question").focus();
}

function openConversation(id) {
  stop();
  current = conversations.find((c) => c.id === id) || null;
  save();
  render();
}

function deleteConversation(id) {
  if (current && current.id === id) {
    stop();
    current = null;
  }
  conversations = conversations.filter((c) => c.id !== id);
  save();
  render();
}

/** Redraw the conversation list and the turns of the current conversation. */
export function render() {
  renderList();
  const turns = current ? current.turns : [];
  $("conversation").replaceChildren(...turns.map((turn) => turnView(turn)));
  $("empty-state").hidden = turns.length > 0;
  scrollToEnd();
}

function renderList() {
  const list = $("conversation-list");
  list.replaceChildren(
    ...conversations.map((conversation) => {
      const item = el("li", null, "conversation-item");
      const open = el("button", conversation.title || t("chat.untitled"), "conversation-open");
      open.type = "button";
      if (current && conversation.id === current.id) open.setAttribute("aria-current", "true");
      open.addEventListener("click", () => openConversation(conversation.id));
      const remove = el("button", "×", "icon-button conversation-delete");
      remove.type = "button";
      remove.setAttribute("aria-label", `${t("chat.deleteConversation")}: ${open.textContent}`);
      remove.title = t("chat.deleteConversation");
      remove.addEventListener("click", () => deleteConversation(conversation.id));
      item.append(open, remove);
      return item;
    }),
  );
  $("no-conversations").hidden = conversations.length > 0;
}

function scrollToEnd() {
  const messages = $("messages");
  messages.scrollTop = messages.scrollHeight;
}

// ---- one turn ----

/** Return the list item of a turn: the question, then the answer (or refusal), then its sources. */
function turnView(turn) {
  const item = el("li", null, "turn");
  const question = el("div", null, "question");
  question.append(el("p", turn.question, "question-text"));
  item.append(question, answerView(turn));
  return item;
}

/** Return the sources the answer may name by number: what it cites, and the chunks it was given. */
function knownSources(turn) {
  const known = new Map();
  for (const c of [...(turn.sources || []), ...(turn.citations || [])]) known.set(c.n, c);
  return known;
}

function answerView(turn) {
  const box = el("div", null, "answer");
  box.dataset.state = turn.state;
  // A screen reader waits for the finished answer rather than reading every delta.
  box.setAttribute("aria-busy", String(turn.state === "streaming"));
  if (turn.refused) {
    box.classList.add("refusal");
    box.append(el("p", t("chat.refusedTitle"), "refusal-title"));
  }
  const known = knownSources(turn);
  const { parts, order } = numberCitations(turn.answer, new Set(known.keys()));
  const text = el("div", null, "answer-text");
  const marks = spanRanges(turn);
  let at = 0; // where the part being written starts in the answer, to place the answering words
  for (const part of parts) {
    if (typeof part === "string") {
      at = turn.answer.indexOf(part, at);
      text.append(...markedPieces(part, at, marks));
      at += part.length;
    } else {
      text.append(citeButton(known.get(part.n), part.shown, turn));
      at = turn.answer.indexOf(`[${part.n}]`, at) + `[${part.n}]`.length;
    }
  }
  box.append(text);

  // The sources: those the finished answer uses (each with the number it has in the text), or, while it
  // streams or once stopped, those named so far.
  const cited = turn.state === "done" ? [...(turn.citations || [])] : [...order.keys()].map((n) => known.get(n));
  for (const c of cited) if (!order.has(c.n)) order.set(c.n, order.size + 1);
  cited.sort((a, b) => order.get(a.n) - order.get(b.n));
  if (cited.length && !turn.refused) {
    const list = el("ol", null, "sources");
    list.setAttribute("aria-label", t("chat.sources"));
    for (const c of cited) {
      const item = el("li");
      const button = el("button", null, "source");
      button.type = "button";
      button.append(el("span", `[${order.get(c.n)}]`, "source-number"), el("span", sourceLabel(c), "source-label"));
      button.addEventListener("click", () => openSource(c, order.get(c.n), turn.question, turn.kb));
      item.append(button);
      list.append(item);
    }
    box.append(list);
  }
  if (turn.refused) box.append(...closestView(turn));
  box.append(metaView(turn));
  return box;
}

/** Return the answering words of a finished answer as [start, end) ranges of its JavaScript string. */
function spanRanges(turn) {
  if (turn.state !== "done" || !Array.isArray(turn.spans) || !turn.spans.length) return [];
  // The server counts characters (code points); JavaScript strings count UTF-16 units.
  const points = Array.from(turn.answer);
  const units = (n) => points.slice(0, n).join("").length;
  return turn.spans.map((span) => [units(span.start), units(span.end)]);
}

/** Return the nodes of a piece of answer text starting at `at`: the answering words in <strong class="answer-span">. */
function markedPieces(piece, at, marks) {
  const nodes = [];
  let from = 0;
  for (const [start, end] of marks) {
    const a = Math.max(start - at, from);
    const b = Math.min(end - at, piece.length);
    if (b <= a) continue;
    if (a > from) nodes.push(...inlineMarkdown(piece.slice(from, a)));
    nodes.push(el("strong", piece.slice(a, b), "answer-span"));
    from = b;
  }
  if (from < piece.length) nodes.push(...inlineMarkdown(piece.slice(from)));
  return nodes;
}

/** Return text nodes for `text`, with the **bold** and `code` that chat models write as elements. */
function inlineMarkdown(text) {
  return text.split(/(\*\*[^*\n]+\*\*|`[^`\n]+`)/).map((piece) => {
    if (/^\*\*[^*\n]+\*\*$/.test(piece)) return el("strong", piece.slice(2, -2));
    if (/^`[^`\n]+`$/.test(piece)) return el("code", piece.slice(1, -1));
    return document.createTextNode(piece);
  });
}

function citeButton(citation, shown, turn) {
  const button = el("button", `${shown}`, "cite");
  button.type = "button";
  button.setAttribute("aria-label", `${t("chat.sources")} ${shown}: ${sourceLabel(citation)}`);
  button.addEventListener("click", () => openSource(citation, shown, turn.question, turn.kb));
  return button;
}

/** Return the folded list of the passages nearest to a refused question (none when there are none). */
function closestView(turn) {
  // `closest` comes with answer-trust servers; without it, the chunks the model was given are the nearest.
  const closest = turn.closest && turn.closest.length ? turn.closest : turn.sources || [];
  if (!closest.length) return [];
  const details = el("details", null, "closest");
  details.append(el("summary", t("chat.closest", { count: closest.length })));
  const list = el("ol");
  for (const c of closest) {
    const item = el("li");
    const button = el("button", sourceLabel(c), "source");
    button.type = "button";
    button.addEventListener("click", () => openSource(c, null, turn.question, turn.kb));
    item.append(button, el("p", c.text.length > 160 ? `${c.text.slice(0, 160)}…` : c.text, "closest-text"));
    list.append(item);
  }
  details.append(list);
  return [details];
}

/** Return the small line under an answer: stopped, failed (with retry), no sources, answerability. */
function metaView(turn) {
  const meta = el("p", null, "answer-meta");
  if (turn.state === "stopped") meta.append(el("span", t("chat.stopped"), "tag"));
  if (turn.state === "error") {
    meta.append(el("span", t("chat.failed", { error: turn.error }), "error"));
    const retry = el("button", t("chat.retry"), "link-button");
    retry.type = "button";
    retry.addEventListener("click", () => retryTurn(turn));
    meta.append(retry);
  }
  if (turn.state === "done" && !turn.refused && !(turn.citations || []).length) {
    meta.append(el("span", t("chat.noSources"), "tag"));
  }
  if (turn.searchedQuestion && turn.searchedQuestion !== turn.question) {
    // A follow-up was searched as a standalone question: show which, so an odd answer can be understood.
    const searched = el("span", t("chat.searched", { question: turn.searchedQuestion }), "tag searched-question");
    searched.title = t("chat.searchedHint");
    meta.append(searched);
  }
  if (typeof turn.answerability === "number") {
    const score = el("span", t("chat.answerability", { percent: Math.round(100 * turn.answerability) }), "tag answerability");
    score.title = t("chat.answerabilityHint");
    meta.append(score);
  }
  return meta;
}

// ---- asking ----

/** Return the finished turns of the conversation as the API's `history` (oldest first). */
function history() {
  const finished = current.turns.filter((turn) => turn.state === "done").slice(-HISTORY_TURNS);
  const kept = [];
  let chars = 0;
  for (const turn of finished.reverse()) {
    chars += turn.question.length + turn.answer.length;
    if (chars > HISTORY_CHARS) break;
    kept.unshift(turn);
  }
  return kept.flatMap((turn) => [
    { role: "user", content: turn.question },
    { role: "assistant", content: turn.answer },
  ]);
}

/** Ask `question` in the current conversation (a new one when none), streaming the answer into a new turn. */
export async function ask(question, retrieval) {
  if (streaming || !question) return;
  if (!kb) {
    $("chat-error").textContent = t("kb.pick");
    return;
  }
  $("chat-error").textContent = "";
  if (!current) {
    current = { id: `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`, title: question.slice(0, 60), turns: [] };
    conversations.unshift(current);
  } else {
    // The conversation asked last goes to the top of the list.
    conversations = [current, ...conversations.filter((c) => c !== current)];
  }
  const body = { question, history: history(), stream: true };
  if (retrieval) body.retrieval = retrieval;
  const turn = { kb, question, answer: "", sources: [], citations: [], state: "streaming" };
  current.turns.push(turn);
  current.updated = Date.now();
  save();
  renderList();
  $("empty-state").hidden = true;
  $("conversation").append(turnView(turn));
  scrollToEnd();
  const conversation = current;
  const index = current.turns.length - 1;
  const update = () => {
    // The turn is redrawn where it is on show (the list may have been redrawn meanwhile, in another
    // language say); not at all when another conversation is on show.
    const item = current === conversation ? $("conversation").children[index] : null;
    if (!item) return;
    // Follow the answer down only when the reader has not scrolled up to read something else.
    const messages = $("messages");
    const following = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 80;
    item.replaceChildren(...turnView(turn).childNodes);
    if (following) scrollToEnd();
  };

  const controller = new AbortController();
  streaming = { controller };
  setStreaming(true);
  try {
    const response = await fetch(kbPath("/chat", turn.kb), {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(errorMessage(response.status, await response.text()));
    for await (const { event, data } of sseEvents(response.body)) {
      if (event === "citations") {
        turn.sources = data.citations;
      } else if (event === "delta") {
        turn.answer += data.text;
      } else if (event === "done") {
        turn.answer = typeof data.answer === "string" ? data.answer : turn.answer;
        turn.citations = data.citations || [];
        turn.refused = Boolean(data.refused);
        turn.answerability = typeof data.answerability === "number" ? data.answerability : null;
        turn.closest = Array.isArray(data.closest) ? data.closest : null;
        turn.searchedQuestion = typeof data.searched_question === "string" ? data.searched_question : null;
        turn.spans = Array.isArray(data.spans) ? data.spans : [];
        turn.state = "done";
      } else if (event === "error") {
        throw new Error(describeError(data.error) || t("chat.interrupted"));
      }
      update();
    }
    if (turn.state !== "done") throw new Error(t("chat.interrupted"));
  } catch (error) {
    if (controller.signal.aborted) {
      turn.state = "stopped";
    } else {
      turn.state = "error";
      turn.error = error.message;
    }
  } finally {
    streaming = null;
    setStreaming(false);
    save();
    update();
  }
}

function retryTurn(turn) {
  if (streaming || !current) return;
  current.turns = current.turns.filter((other) => other !== turn);
  render();
  ask(turn.question);
}

/** Return whether an answer is streaming (a question asked meanwhile would be lost). */
export function busy() {
  return streaming !== null;
}

/** Stop the answer that is streaming, if any (the server stops generating when the client goes away). */
export function stop() {
  if (streaming) streaming.controller.abort();
}

function setStreaming(on) {
  $("ask").hidden = on;
  $("stop").hidden = !on;
  $("ask-form").dataset.state = on ? "streaming" : "idle";
  if (!on && document.activeElement === document.body) $("question").focus();
}
