// Documents beside the chat: drag-and-drop upload with per-file progress and the job's live status,
// and the document list with pages, chunks, metadata, re-index and delete.
"use strict";

import { $, ApiError, api, breakableName, currentKb, el, kbPath, uploadFile } from "./api.js";
import { confirmAction } from "./confirm.js";
import { t } from "./i18n.js";
import { openWithKey } from "./sources.js";

const JOB_POLL_MS = 500;
const KEPT_ROWS = 12; // upload rows kept on show; older finished ones go

let changed = () => {}; // called when a job finishes or a document goes, to refresh the counts
let uploadTypes = []; // the file suffixes the server takes (server.allowed_types)

// What each suffix is called in the upload hint (kind.* in i18n.js); a suffix not here is shown as it is.
const KINDS = {
  ".pdf": "pdf",
  ".docx": "word",
  ".pptx": "powerpoint",
  ".md": "markdown",
  ".markdown": "markdown",
  ".txt": "text",
  ".htm": "html",
  ".html": "html",
  ".csv": "csv",
  ".xlsx": "excel",
  ".json": "json",
  ".jsonl": "json",
  ".bmp": "images",
  ".jpeg": "images",
  ".jpg": "images",
  ".png": "images",
  ".tif": "images",
  ".tiff": "images",
  ".webp": "images",
};

/** Say in the upload box, in the page language, every kind of file the server takes. */
export function showUploadTypes() {
  const order = Object.values(KINDS);
  const kinds = [...new Set(uploadTypes.map((suffix) => KINDS[suffix] || suffix))].sort(
    (a, b) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99),
  );
  const names = kinds.map((kind) => (kind.startsWith(".") ? kind : t(`kind.${kind}`)));
  $("upload-types").textContent = names.join(t("list.separator"));
  $("upload-types").title = uploadTypes.join(" ");
}

async function loadUploadTypes() {
  try {
    ({ upload_types: uploadTypes } = await api("GET", "/page-config.json"));
  } catch (_) {
    uploadTypes = Object.keys(KINDS); // an older server: what this page knows
  }
  $("file-input").accept = uploadTypes.join(",");
  showUploadTypes();
}

/** Return the text of a job's status in the page language (its own word for a status we do not know). */
function statusText(status) {
  const text = t(`job.${status}`);
  return text === `job.${status}` ? status : text;
}

/** List the documents of the selected knowledge base. */
export async function loadDocuments() {
  const list = $("documents");
  $("documents-error").textContent = "";
  const kb = currentKb();
  if (!kb) {
    list.replaceChildren();
    $("no-documents").hidden = false;
    return;
  }
  try {
    const { data } = await api("GET", kbPath("/documents", kb));
    if (kb !== currentKb()) return; // another knowledge base was chosen meanwhile
    list.replaceChildren(...data.map(documentItem));
    $("no-documents").hidden = data.length > 0;
  } catch (error) {
    $("documents-error").textContent = t("docs.loadFailed", { error: error.message });
  }
}

/** Return the list item of one document: its original, pages, chunks, metadata, re-index and delete. */
function documentItem(doc) {
  const item = el("li", null, "doc");
  item.dataset.id = doc.id;
  const main = el("div", null, "doc-main");
  const link = el("a", null, "doc-name");
  link.append(...breakableName(doc.source));
  link.href = kbPath(`/documents/${encodeURIComponent(doc.id)}/file`);
  link.target = "_blank";
  link.rel = "noopener";
  // A PDF opens in the browser; anything else is saved under its name.
  if (!doc.source.toLowerCase().endsWith(".pdf")) link.download = doc.source;
  link.title = t("docs.download");
  link.addEventListener("click", openWithKey);
  const facts = [];
  if (doc.page_count) facts.push(t("docs.pages", { count: doc.page_count }));
  facts.push(t("docs.chunks", { count: doc.chunk_count }));
  if (doc.status && doc.status !== "ready" && doc.status !== "indexed") facts.push(doc.status);
  facts.push(new Date(doc.updated_at).toLocaleDateString());
  main.append(link, el("p", facts.join(" · "), "doc-meta"));
  const tags = Object.entries(doc.metadata || {});
  if (tags.length) {
    const list = el("ul", null, "doc-tags");
    list.append(...tags.map(([key, value]) => el("li", `${key}: ${value}`)));
    main.append(list);
  }
  const actions = el("div", null, "doc-actions");
  const reindex = el("button", t("docs.reindex"), "small-button");
  reindex.type = "button";
  reindex.setAttribute("aria-label", `${t("docs.reindex")}: ${doc.source}`);
  reindex.addEventListener("click", () => reindexDocument(doc));
  const remove = el("button", t("docs.delete"), "small-button danger");
  remove.type = "button";
  remove.setAttribute("aria-label", `${t("docs.delete")}: ${doc.source}`);
  remove.addEventListener("click", () => deleteDocument(doc));
  actions.append(reindex, remove);
  item.append(main, actions);
  return item;
}

async function deleteDocument(doc) {
  if (!(await confirmAction(t("docs.deleteConfirm", { name: doc.source }), t("docs.delete")))) return;
  try {
    await api("DELETE", kbPath(`/documents/${encodeURIComponent(doc.id)}`));
  } catch (error) {
    $("documents-error").textContent = t("docs.actionFailed", { error: error.message });
  }
  await loadDocuments();
  changed();
}

async function reindexDocument(doc) {
  const row = jobRow(t("job.reindex", { name: doc.source }));
  try {
    const { job } = await api("POST", kbPath(`/documents/${encodeURIComponent(doc.id)}/reindex`));
    followJob(row, job);
  } catch (error) {
    failRow(row, error.message);
  }
}

// ---- uploads ----

/** Return a new row in the upload list for `name`, with its progress bar and status line. */
function jobRow(name) {
  const row = el("li", null, "upload");
  row.dataset.state = "uploading";
  const head = el("div", null, "upload-head");
  const label = el("span", null, "upload-name");
  label.append(...breakableName(name));
  head.append(label);
  const progress = el("progress");
  progress.max = 100;
  progress.value = 0;
  progress.setAttribute("aria-label", name);
  row.append(head, progress, el("p", null, "upload-status"), el("ul", null, "upload-files"));
  const list = $("uploads");
  list.prepend(row);
  // Finished rows beyond the newest few go; running ones stay.
  for (const old of [...list.children].slice(KEPT_ROWS)) {
    if (["succeeded", "failed", "cancelled"].includes(old.dataset.state)) old.remove();
  }
  return row;
}

function failRow(row, message) {
  row.dataset.state = "failed";
  row.querySelector(".upload-status").textContent = message;
  row.querySelector("progress").hidden = true;
}

/** Upload each file in its own request, one after the other, each row showing its progress then its job. */
export async function uploadFiles(files) {
  const kb = currentKb();
  $("upload-error").textContent = "";
  if (!kb) {
    $("upload-error").textContent = t("kb.pick");
    return;
  }
  const rows = [...files].map((file) => [file, jobRow(file.name)]);
  for (const [file, row] of rows) {
    const status = row.querySelector(".upload-status");
    const progress = row.querySelector("progress");
    status.textContent = t("upload.uploading", { percent: 0 });
    try {
      const job = await uploadFile(kb, file, (percent) => {
        progress.value = percent;
        status.textContent = t("upload.uploading", { percent });
      });
      progress.value = 100;
      followJob(row, job);
    } catch (error) {
      const reason = error instanceof ApiError ? error.message : t("upload.offline");
      failRow(row, t("upload.failed", { error: reason }));
    }
  }
}

/** Show `job` in `row`, polling it until it finishes; then refresh the documents and the counts. */
async function followJob(row, job) {
  showJob(row, job);
  while (job.status === "queued" || job.status === "running") {
    await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
    try {
      job = await api("GET", `/v1/jobs/${encodeURIComponent(job.id)}`);
    } catch (error) {
      row.querySelector(".upload-status").textContent = error.message;
      return;
    }
    showJob(row, job);
  }
  if (job.kb === currentKb()) await loadDocuments();
  changed();
}

function showJob(row, job) {
  row.dataset.state = job.status;
  row.dataset.job = job.id;
  const status = row.querySelector(".upload-status");
  status.replaceChildren(el("span", statusText(job.status), "job-state"), ` · ${t("job.progress", job)}`);
  if (job.error) status.append(el("span", ` · ${job.error}`, "error"));
  const progress = row.querySelector("progress");
  // After the upload's own progress, the bar shows the files the job has done.
  if (job.status === "running" && job.files_total) progress.value = Math.round((100 * job.files_done) / job.files_total);
  if (job.status === "succeeded") progress.value = 100;
  progress.hidden = !(job.status === "queued" || job.status === "running");
  if (job.status === "queued" || job.status === "running") {
    if (!row.querySelector(".cancel")) status.after(cancelButton(row, job));
  } else {
    row.querySelector(".cancel")?.remove();
  }
  const failures = job.files.filter((file) => file.status === "failed");
  row.querySelector(".upload-files").replaceChildren(
    ...failures.map((file) => el("li", `${file.source}: ${file.reason || statusText("failed")}`, "error")),
  );
}

function cancelButton(row, job) {
  const button = el("button", t("job.cancel"), "small-button cancel");
  button.type = "button";
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api("POST", `/v1/jobs/${encodeURIComponent(job.id)}/cancel`);
    } catch (error) {
      // A server without job cancelling answers 404 or 405.
      const unsupported = error instanceof ApiError && (error.status === 404 || error.status === 405);
      row.querySelector(".upload-status").append(
        el("span", ` · ${unsupported ? t("job.cancelUnsupported") : error.message}`, "error"),
      );
    }
  });
  return button;
}

/** Wire the drop zone and the file picker; `onChanged` runs when documents were added or removed. */
export function initDocuments(onChanged) {
  changed = onChanged;
  loadUploadTypes();
  const zone = $("dropzone");
  const input = $("file-input");
  input.addEventListener("change", () => {
    if (input.files.length) uploadFiles(input.files).finally(() => (input.value = ""));
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer && event.dataTransfer.files.length) uploadFiles(event.dataTransfer.files);
  });
  // A file dropped beside the zone must not replace the page with the file.
  for (const name of ["dragover", "drop"]) window.addEventListener(name, (event) => event.preventDefault());
}
