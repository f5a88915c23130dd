// Citations a person can check: [n] markers numbered in order of appearance, and the passage viewer
// (file, page or sheet, heading path, the question's words highlighted, a link to the original).
"use strict";

import { $, apiKey, el, headers, kbPath } from "./api.js";
import { t } from "./i18n.js";

const MARKER = /\[(\d{1,3})\]/g;
const CJK_RUN = /[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+/g;
// English words too common to be worth highlighting.
const STOP_WORDS = new Set(
  ("the and for are was were what which who whom how when where why does did with from that this these " +
    "those there their its into about have has had can could should would will shall not you your our")
    .split(" "),
);

/**
 * Return the answer `text` cut into strings and citation markers {n, shown}; `shown` numbers the sources
 * 1, 2, 3 in the order the answer first names them. Markers naming no source in `known` stay text.
 */
export function numberCitations(text, known) {
  const order = new Map();
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(MARKER)) {
    const n = Number(match[1]);
    if (!known.has(n)) continue;
    if (match.index > last) parts.push(text.slice(last, match.index));
    if (!order.has(n)) order.set(n, order.size + 1);
    parts.push({ n, shown: order.get(n) });
    last = match.index + match[0].length;
  }
  if (last < text.length) parts.push(text.slice(last));
  return { parts, order };
}

/** Return the words of `question` worth highlighting: English words, and each pair of Chinese characters. */
export function queryTerms(question) {
  const terms = new Set();
  for (const word of question.toLowerCase().match(/[a-z0-9\u00c0-\u024f]+/g) || []) {
    if ((word.length > 2 && !STOP_WORDS.has(word)) || /\d/.test(word)) terms.add(word);
  }
  for (const run of question.match(CJK_RUN) || []) {
    if (run.length === 1) terms.add(run);
    for (let i = 0; i + 1 < run.length; i++) terms.add(run.slice(i, i + 2));
  }
  return [...terms];
}

/** Return text nodes and <mark> elements for `text`, every occurrence of a term in `terms` marked. */
export function highlighted(text, terms) {
  const lower = text.toLowerCase();
  // Lower-casing may change the length of a few characters; then match case-sensitively.
  const haystack = lower.length === text.length ? lower : text;
  const marked = new Uint8Array(text.length);
  for (const term of terms) {
    for (let i = haystack.indexOf(term); i >= 0; i = haystack.indexOf(term, i + 1)) {
      marked.fill(1, i, i + term.length);
    }
  }
  const nodes = [];
  let start = 0;
  for (let i = 1; i <= text.length; i++) {
    if (i < text.length && marked[i] === marked[start]) continue;
    const piece = text.slice(start, i);
    nodes.push(marked[start] ? el("mark", piece) : document.createTextNode(piece));
    start = i;
  }
  return nodes;
}

/** Return the file type of a source name, lower case without the dot ("" when none). */
function suffix(source) {
  const dot = source.lastIndexOf(".");
  return dot < 0 ? "" : source.slice(dot + 1).toLowerCase();
}

/** Return the citation's place in its file: page or slide, sheet, and the heading path, as short texts. */
export function placeOf(citation) {
  const kind = suffix(citation.source);
  const headings = [...(citation.heading_path || [])];
  const place = [];
  if (citation.page) place.push(t(["ppt", "pptx"].includes(kind) ? "source.slide" : "source.page", citation));
  if (["xlsx", "xls", "csv"].includes(kind) && headings.length) place.push(t("source.sheet", { sheet: headings.shift() }));
  if (headings.length) place.push(headings.join(" › "));
  return place;
}

/** Return the address of the citation's original file; a PDF's opens at the cited page. */
export function originalUrl(citation, kb) {
  const url = kbPath(`/documents/${encodeURIComponent(citation.document_id)}/file`, kb);
  return suffix(citation.source) === "pdf" && citation.page ? `${url}#page=${citation.page}` : url;
}

/** Return the short label of a source in a list: "file · page 3". */
export function sourceLabel(citation) {
  return [citation.source, ...placeOf(citation)].join(" · ");
}

/** Show the passage of `citation` (cited as [shown]) in the source dialog, the words of `question` marked. */
export function openSource(citation, shown, question, kb) {
  $("source-number").textContent = shown ? `[${shown}]` : "";
  $("source-title").textContent = citation.source;
  const where = $("source-where");
  where.replaceChildren(...placeOf(citation).map((text) => el("li", text)));
  if (typeof citation.score === "number") where.append(el("li", t("source.score", { score: citation.score.toFixed(2) })));
  $("source-text").replaceChildren(...highlighted(citation.text, queryTerms(question)));
  const link = $("source-link");
  link.href = originalUrl(citation, kb);
  link.textContent = suffix(citation.source) === "pdf" && citation.page ? t("source.openPage", citation) : t("source.open");
  $("source-dialog").showModal();
}

/** Open (or, for a link with `download`, save) an original through fetch when an API key is set: a plain
 * link cannot send the key, which the server asks for when it protects reads. */
export async function openWithKey(event) {
  if (!apiKey()) return;
  event.preventDefault();
  const link = event.currentTarget;
  const [path, fragment] = link.getAttribute("href").split("#");
  const name = link.getAttribute("download");
  // Opened before the fetch, while the click still allows a new tab.
  const tab = name === null ? window.open("", "_blank") : null;
  try {
    const response = await fetch(path, { headers: headers() });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const url = URL.createObjectURL(await response.blob());
    if (name !== null) {
      const save = el("a");
      save.href = url;
      save.download = name;
      save.click();
    } else if (tab) {
      tab.location.href = fragment ? `${url}#${fragment}` : url;
    }
  } catch (_) {
    if (tab) tab.close();
  }
}

/** Wire the source dialog: its close button, a click on the backdrop, and the original's link. */
export function initSources() {
  const dialog = $("source-dialog");
  $("source-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close();
  });
  $("source-link").addEventListener("click", openWithKey);
}
