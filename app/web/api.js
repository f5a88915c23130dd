// Talking to the kbqa API (JSON, server-sent events, uploads with progress), and small DOM helpers.
// Everything that comes from documents, models or the API is put into the page as text (textContent),
// never as HTML, so a document cannot inject markup or script.
"use strict";

import { t } from "./i18n.js";

const KEY_STORAGE = "kbqa.apiKey";

export const $ = (id) => document.getElementById(id);

/** Return a `tag` element with text `text` (never parsed as HTML) and the given class. */
export function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

/** Return `name` as text nodes with a line-break opportunity after each / _ and -, so a narrow column
 * wraps a file name between its parts rather than inside a word. */
export function breakableName(name) {
  return String(name)
    .split(/(?<=[/_\-])/)
    .flatMap((part, i) => (i ? [document.createElement("wbr"), document.createTextNode(part)] : [document.createTextNode(part)]));
}

/** Return the stored API key ("" when none). */
export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

/** Store `key` as the API key (an empty one removes it). */
export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

/** Return the request headers, with the stored API key as a bearer token when one is set. */
export function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

/** Return the selected knowledge base's name ("" when none). */
export function currentKb() {
  return $("kb-select").value;
}

/** Return the API path of knowledge base `kb` (by default the selected one), with `suffix` appended. */
export function kbPath(suffix = "", kb = currentKb()) {
  return `/v1/kbs/${encodeURIComponent(kb)}${suffix}`;
}

/** Return the text for an API error object {code, message}, or null when `error` is not one. */
export function describeError(error, status) {
  if (!error || !error.message) return null;
  const detail = [status ? `HTTP ${status}` : "", error.code || ""].filter(Boolean).join(", ");
  return detail ? `${error.message} (${detail})` : error.message;
}

/** Return a readable message from an error response's status and body text (the API's JSON error when present). */
export function errorMessage(status, bodyText) {
  try {
    return describeError(JSON.parse(bodyText).error, status) || `HTTP ${status}`;
  } catch (_) {
    // Not JSON (a proxy's error page, say): the status alone is what we know.
    return `HTTP ${status}`;
  }
}

/** An error response of the API, with its HTTP status; a 401 or 403 also says what to do about it. */
export class ApiError extends Error {
  constructor(status, bodyText) {
    const hint = status === 401 ? t("auth.unauthorized") : status === 403 ? t("auth.forbidden") : "";
    super(hint ? `${hint} ${errorMessage(status, bodyText)}` : errorMessage(status, bodyText));
    this.status = status;
  }
}

// ---- what the API key may do (GET /v1/me) ----

let access = null; // null: not known (an older server without /v1/me), so every control shows

/** Ask the server what the stored key may do; return it ({error} when the key is refused). */
export async function loadAccess() {
  try {
    access = await api("GET", "/v1/me");
  } catch (error) {
    access = error.status === 404 ? null : { error: error.message, readable: [], editable: [], admin: false };
  }
  return access;
}

/** Return what the stored key may do, as `loadAccess` last found it (null when unknown). */
export function currentAccess() {
  return access;
}

/** Return whether the key may create and delete knowledge bases. */
export function mayAdminister() {
  return !access || access.admin;
}

/** Return whether the key may upload to, and change the documents of, knowledge base `kb`. */
export function mayEdit(kb) {
  return !access || access.admin || (access.editable || []).includes(kb);
}

/** Return the parsed JSON body of a request; throw an ApiError on a non-2xx status. */
export async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const text = await response.text();
  if (!response.ok) throw new ApiError(response.status, text);
  return text ? JSON.parse(text) : null;
}

/** Yield {event, data} for each server-sent event of a streamed response body. */
export async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

/**
 * Upload one file to knowledge base `kb`; return a promise of the started job.
 * XMLHttpRequest rather than fetch: only it reports upload progress, given to `onProgress` as 0-100.
 */
export function uploadFile(kb, file, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("files", file, file.name);
    const request = new XMLHttpRequest();
    request.open("POST", kbPath("/documents", kb));
    for (const [name, value] of Object.entries(headers())) request.setRequestHeader(name, value);
    request.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(Math.round((100 * e.loaded) / e.total));
    };
    request.onload = () => {
      if (request.status >= 200 && request.status < 300) resolve(JSON.parse(request.responseText).job);
      else reject(new ApiError(request.status, request.responseText));
    };
    request.onerror = () => reject(new Error("offline"));
    request.send(form);
  });
}
