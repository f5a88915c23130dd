// The kbqa web page: pick or create a knowledge base, upload documents, and chat with it.
// Everything that comes from documents, models or the API is put into the page as text (textContent),
// never as HTML, so a document cannot inject markup or script.
"use strict";

const KEY_STORAGE = "kbqa.apiKey";
const KB_STORAGE = "kbqa.kb";
const JOB_POLL_MS = 500;
const JOB_STATES = { queued: "排队中", running: "处理中", succeeded: "已完成", failed: "失败" };

const $ = (id) => document.getElementById(id);

// Previous turns of the conversation with the current knowledge base, sent as `history`.
let history = [];
// The question whose answer is on show, moved into the conversation log when the next one is asked.
let lastQuestion = null;

/** Return `tag` element with text `text` (never parsed as HTML) and the given class. */
function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

/** Return the request headers, with the stored API key as a bearer token when one is set. */
function headers(extra = {}) {
  const key = localStorage.getItem(KEY_STORAGE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

/** Return the selected knowledge base's name ("" when none). */
function currentKb() {
  return $("kb-select").value;
}

/** Return the API path for the selected knowledge base, with `suffix` appended. */
function kbPath(suffix = "") {
  return `/v1/kbs/${encodeURIComponent(currentKb())}${suffix}`;
}

/** Return the text for an API error object {code, message}, or null when `error` is not one. */
function describeError(error, status) {
  if (!error || !error.message) return null;
  const detail = [status ? `HTTP ${status}` : "", error.code || ""].filter(Boolean).join(", ");
  return detail ? `${error.message}（${detail}）` : error.message;
}

/** Return a readable message from an error response's status and body text (the API's JSON error when present). */
function errorMessage(status, bodyText) {
  try {
    return describeError(JSON.parse(bodyText).error, status) || `HTTP ${status}`;
  } catch (_) {
    // Not JSON (a proxy's error page, say): the status alone is what we know.
    return `HTTP ${status}`;
  }
}

/** Return the parsed JSON body of a request; throw an Error with the API's message on a non-2xx status. */
async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const text = await response.text();
  if (!response.ok) throw new Error(errorMessage(response.status, text));
  return text ? JSON.parse(text) : null;
}

// ---- knowledge bases ----

/** Reload the knowledge-base list, keeping (or choosing) `select` as the selected one. */
async function loadKbs(select) {
  const picker = $("kb-select");
  const wanted = select || picker.value || localStorage.getItem(KB_STORAGE) || "";
  try {
    const { data } = await api("GET", "/v1/kbs");
    picker.replaceChildren();
    if (data.length === 0) {
      const none = el("option", "（还没有知识库，请新建）");
      none.value = "";
      picker.append(none);
    }
    for (const kb of data) {
      const option = el("option", `${kb.name}（${kb.documents} 文档 · ${kb.chunks} 片段）`);
      option.value = kb.name;
      picker.append(option);
    }
    if (data.some((kb) => kb.name === wanted)) picker.value = wanted;
    picker.disabled = data.length === 0;
    $("kb-error").textContent = "";
  } catch (error) {
    $("kb-error").textContent = `读取知识库失败：${error.message}`;
  }
}

/** Make the selected knowledge base current: remember it, list its documents, start a fresh conversation. */
function kbChanged() {
  if (currentKb()) localStorage.setItem(KB_STORAGE, currentKb());
  clearConversation();
  loadDocuments();
}

async function createKb(event) {
  event.preventDefault();
  const name = $("kb-name").value.trim();
  $("kb-error").textContent = "";
  try {
    await api("POST", "/v1/kbs", { name });
    $("kb-name").value = "";
    await loadKbs(name);
    kbChanged();
  } catch (error) {
    $("kb-error").textContent = `新建失败：${error.message}`;
  }
}

// ---- documents and upload jobs ----

/** Fill the document table of the selected knowledge base. */
async function loadDocuments() {
  const table = $("documents");
  $("documents-error").textContent = "";
  if (!currentKb()) {
    table.replaceChildren();
    return;
  }
  try {
    const { data } = await api("GET", kbPath("/documents"));
    table.replaceChildren(...data.map(documentRow));
  } catch (error) {
    $("documents-error").textContent = `读取文档失败：${error.message}`;
  }
}

/** Return a table row for one document: download link, pages, chunks, status and a delete button. */
function documentRow(doc) {
  const row = document.createElement("tr");
  const link = el("a", doc.source);
  link.href = kbPath(`/documents/${encodeURIComponent(doc.id)}/file`);
  link.download = doc.source;
  const source = document.createElement("td");
  source.append(link);
  const remove = el("button", "删除 Delete");
  remove.type = "button";
  remove.addEventListener("click", () => deleteDocument(doc));
  const actions = document.createElement("td");
  actions.append(remove);
  row.append(source, el("td", doc.page_count ?? "–"), el("td", doc.chunk_count), el("td", doc.status), actions);
  return row;
}

async function deleteDocument(doc) {
  if (!confirm(`删除文档 ${doc.source}？`)) return;
  try {
    await api("DELETE", kbPath(`/documents/${encodeURIComponent(doc.id)}`));
  } catch (error) {
    $("documents-error").textContent = `删除失败：${error.message}`;
  }
  await loadDocuments();
  await loadKbs();
}

// XMLHttpRequest rather than fetch: only it reports upload progress.
function upload(event) {
  event.preventDefault();
  const files = $("file-input").files;
  if (!currentKb() || files.length === 0) {
    $("upload-error").textContent = currentKb() ? "请选择文件" : "请先选择或新建知识库";
    return;
  }
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const progress = $("upload-progress");
  const request = new XMLHttpRequest();
  request.open("POST", kbPath("/documents"));
  for (const [name, value] of Object.entries(headers())) request.setRequestHeader(name, value);
  request.upload.onprogress = (e) => {
    if (e.lengthComputable) progress.value = Math.round((100 * e.loaded) / e.total);
  };
  request.onload = () => {
    progress.hidden = true;
    $("upload").disabled = false;
    if (request.status >= 200 && request.status < 300) {
      $("file-input").value = "";
      pollJob(JSON.parse(request.responseText).job.id);
    } else {
      $("upload-error").textContent = `上传失败：${errorMessage(request.status, request.responseText)}`;
    }
  };
  request.onerror = () => {
    progress.hidden = true;
    $("upload").disabled = false;
    $("upload-error").textContent = "上传失败：无法连接服务器";
  };
  $("upload-error").textContent = "";
  $("job-status").textContent = "";
  $("job-files").replaceChildren();
  progress.value = 0;
  progress.hidden = false;
  $("upload").disabled = true;
  request.send(form);
}

/** Show a job's progress until it finishes, then refresh the documents and the counts. */
async function pollJob(id) {
  let job;
  try {
    job = await api("GET", `/v1/jobs/${encodeURIComponent(id)}`);
  } catch (error) {
    $("job-status").textContent = `读取任务失败：${error.message}`;
    return;
  }
  showJob(job);
  if (job.status === "queued" || job.status === "running") {
    setTimeout(() => pollJob(id), JOB_POLL_MS);
    return;
  }
  await loadDocuments();
  await loadKbs();
}

function showJob(job) {
  const status = $("job-status");
  status.dataset.status = job.status;
  status.textContent =
    `任务${JOB_STATES[job.status] || ""} (${job.status}) · 文件 ${job.files_done}/${job.files_total} · 片段 ${job.chunks_done}` +
    (job.error ? ` · 错误：${job.error}` : "");
  $("job-files").replaceChildren(
    ...job.files.map((file) => {
      const text = `${file.source}: ${file.status}` + (file.status === "failed" ? ` — ${file.reason}` : ` · ${file.chunks} 片段`);
      return el("li", text, file.status === "failed" ? "error" : "");
    }),
  );
}

// ---- chat ----

function clearConversation() {
  history = [];
  lastQuestion = null;
  $("conversation").replaceChildren();
  $("answer").replaceChildren();
  $("answer-note").textContent = "";
  $("citations").replaceChildren();
  $("chat-error").textContent = "";
}

/** Return a list of citation items, each `[n] source, page` that expands (details) to the chunk's text. */
function citationItems(citations) {
  return citations.map((c) => {
    const details = document.createElement("details");
    const label = `[${c.n}] ${c.source}` + (c.page ? `, 第 ${c.page} 页` : "");
    details.append(el("summary", label), el("blockquote", c.text, "chunk"));
    const item = document.createElement("li");
    item.append(details);
    return item;
  });
}

/** Move the shown answer into the conversation log, above the next one. */
function archiveTurn(question) {
  const turn = el("li", null, "turn");
  turn.append(el("p", question, "question"), el("p", $("answer").textContent, "reply"));
  const cited = $("citations").cloneNode(true);
  cited.removeAttribute("id");
  turn.append(cited);
  $("conversation").append(turn);
}

/** Yield {event, data} for each server-sent event of a streamed response body. */
async function* sseEvents(body) {
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

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question || !currentKb()) {
    $("chat-error").textContent = currentKb() ? "" : "请先选择或新建知识库";
    return;
  }
  if (lastQuestion !== null) archiveTurn(lastQuestion);
  lastQuestion = null;
  const answer = $("answer");
  answer.replaceChildren();
  answer.dataset.state = "streaming";
  $("answer-note").textContent = "";
  $("citations").replaceChildren();
  $("chat-error").textContent = "";
  $("ask").disabled = true;
  try {
    const response = await fetch(kbPath("/chat"), {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify({ question, history, stream: true }),
    });
    if (!response.ok) throw new Error(errorMessage(response.status, await response.text()));
    for await (const { event: name, data } of sseEvents(response.body)) {
      if (name === "citations") {
        $("citations").replaceChildren(...citationItems(data.citations));
      } else if (name === "delta") {
        answer.textContent += data.text;
      } else if (name === "done") {
        if (typeof data.answer === "string") answer.textContent = data.answer;
        $("citations").replaceChildren(...citationItems(data.citations));
        if (data.refused) $("answer-note").textContent = "资料中没有找到答案。";
        else if (data.citations.length === 0) $("answer-note").textContent = "（回答未引用资料）";
        history.push({ role: "user", content: question }, { role: "assistant", content: answer.textContent });
        // Only a finished turn joins the log; after an error the question stays in the box to retry.
        lastQuestion = question;
        $("question").value = "";
      } else if (name === "error") {
        throw new Error(describeError(data.error) || "回答中断");
      }
    }
  } catch (error) {
    $("chat-error").textContent = `提问失败：${error.message}`;
  } finally {
    answer.dataset.state = "done";
    $("ask").disabled = false;
  }
}

// ---- wiring ----

function init() {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("change", () => {
    if (key.value.trim()) localStorage.setItem(KEY_STORAGE, key.value.trim());
    else localStorage.removeItem(KEY_STORAGE);
  });
  $("kb-select").addEventListener("change", kbChanged);
  $("create-kb-form").addEventListener("submit", createKb);
  $("upload-form").addEventListener("submit", upload);
  $("ask-form").addEventListener("submit", ask);
  $("question").addEventListener("keydown", (e) => {
    // Enter asks, Shift+Enter starts a new line, as in most chat boxes.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("ask-form").requestSubmit();
    }
  });
  $("clear-history").addEventListener("click", clearConversation);
  loadKbs().then(kbChanged);
}

init();
