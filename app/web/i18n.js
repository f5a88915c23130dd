// The page's words in Chinese and English, one language at a time: the stored choice, else the browser's.
"use strict";

const LANGUAGE_STORAGE = "kbqa.language";

const STRINGS = {
  zh: {
    "app.title": "kbqa 知识库问答",
    "app.tagline": "基于你的文档回答，每个回答都附带出处",
    "app.loading": "kbqa 正在加载模型，稍等片刻即可提问…",
    "nav.menu": "菜单",
    "nav.close": "关闭",
    "kb.label": "知识库",
    "kb.none": "（还没有知识库）",
    "kb.newLabel": "新知识库名称",
    "kb.newPlaceholder": "新知识库名称",
    "kb.create": "新建",
    "kb.delete": "删除知识库",
    "kb.deleteConfirm": "删除知识库“{name}”及其全部文档？此操作无法撤销。",
    "kb.createFailed": "新建失败：{error}",
    "kb.loadFailed": "读取知识库失败：{error}",
    "kb.deleteFailed": "删除失败：{error}",
    "kb.documents": "{count} 个文档",
    "kb.noneYet": "在左边新建一个知识库，然后上传文档、开始提问。",
    "kb.pick": "请先选择或新建一个知识库",
    "chat.new": "新对话",
    "chat.history": "对话记录",
    "chat.noHistory": "还没有对话",
    "chat.deleteConversation": "删除这段对话",
    "chat.untitled": "新对话",
    "chat.questionLabel": "问题",
    "chat.placeholder": "输入问题，Enter 发送，Shift+Enter 换行",
    "chat.send": "发送",
    "chat.stop": "停止",
    "chat.you": "你",
    "chat.assistant": "回答",
    "chat.emptyTitle": "向你的文档提问",
    "chat.emptyHint": "上传文档后直接提问；点回答里的来源编号，可查看原文段落。",
    "chat.emptyNoDocs": "这个知识库还没有文档：先在“文档”里拖入文件。",
    "chat.examples": "可以这样问：",
    "chat.failed": "提问失败：{error}",
    "chat.interrupted": "回答中断",
    "chat.stopped": "已停止",
    "chat.noSources": "回答未引用资料",
    "chat.sources": "出处",
    "chat.refusedTitle": "文档中没有找到答案",
    "chat.closest": "最接近的段落（{count}）",
    "chat.answerability": "可回答度 {percent}%",
    "chat.answerabilityHint": "知识库能回答这个问题的估计概率",
    "chat.searched": "搜索：{question}",
    "chat.searchedHint": "追问结合前面的对话改写成了这个问题再搜索",
    "chat.retry": "重试",
    "docs.title": "文档",
    "docs.toggle": "文档",
    "docs.drop": "把文件拖到这里，或",
    "docs.choose": "选择文件",
    "kind.text": "文本",
    "kind.html": "网页",
    "kind.images": "图片",
    "list.separator": "、",
    "docs.empty": "还没有文档",
    "docs.pages": "{count} 页",
    "docs.chunks": "{count} 个片段",
    "docs.download": "下载原文",
    "docs.reindex": "重新索引",
    "docs.delete": "删除",
    "docs.deleteConfirm": "删除文档“{name}”？它的片段会从知识库中移除。",
    "docs.loadFailed": "读取文档失败：{error}",
    "docs.actionFailed": "操作失败：{error}",
    "upload.uploading": "上传中 {percent}%",
    "upload.failed": "上传失败：{error}",
    "upload.offline": "无法连接服务器",
    "job.queued": "排队中",
    "job.running": "处理中",
    "job.succeeded": "已完成",
    "job.failed": "失败",
    "job.cancelled": "已取消",
    "job.progress": "文件 {files_done}/{files_total} · {chunks_done} 个片段",
    "job.cancel": "取消",
    "job.cancelUnsupported": "服务器不支持取消任务",
    "job.reindex": "重新索引 {name}",
    "source.title": "出处",
    "source.page": "第 {page} 页",
    "source.slide": "第 {page} 张幻灯片",
    "source.sheet": "工作表 {sheet}",
    "source.score": "相似度 {score}",
    "source.open": "打开原文",
    "source.openPage": "打开原文第 {page} 页",
    "dialog.cancel": "取消",
    "dialog.confirm": "确定",
    "settings.language": "语言",
    "settings.apiKey": "API 密钥",
    "settings.apiKeyPlaceholder": "可选",
  },
  en: {
    "app.title": "kbqa knowledge base QA",
    "app.tagline": "Answers from your documents, each with its sources",
    "app.loading": "kbqa is loading its models; you can ask in a moment…",
    "nav.menu": "Menu",
    "nav.close": "Close",
    "kb.label": "Knowledge base",
    "kb.none": "(none yet)",
    "kb.newLabel": "New knowledge base name",
    "kb.newPlaceholder": "New knowledge base name",
    "kb.create": "Create",
    "kb.delete": "Delete knowledge base",
    "kb.deleteConfirm": "Delete the knowledge base “{name}” and all its documents? This cannot be undone.",
    "kb.createFailed": "Could not create it: {error}",
    "kb.loadFailed": "Could not list knowledge bases: {error}",
    "kb.deleteFailed": "Could not delete it: {error}",
    "kb.documents": "{count} documents",
    "kb.documents.one": "1 document",
    "kb.noneYet": "Create a knowledge base on the left, then upload documents and ask.",
    "kb.pick": "Choose or create a knowledge base first",
    "chat.new": "New conversation",
    "chat.history": "Conversations",
    "chat.noHistory": "No conversations yet",
    "chat.deleteConversation": "Delete this conversation",
    "chat.untitled": "New conversation",
    "chat.questionLabel": "Question",
    "chat.placeholder": "Ask a question — Enter sends, Shift+Enter breaks the line",
    "chat.send": "Send",
    "chat.stop": "Stop",
    "chat.you": "You",
    "chat.assistant": "Answer",
    "chat.emptyTitle": "Ask your documents",
    "chat.emptyHint": "Upload documents, then ask; click a source number in an answer to read the passage it comes from.",
    "chat.emptyNoDocs": "This knowledge base has no documents yet: drop files into Documents first.",
    "chat.examples": "Try asking:",
    "chat.failed": "The question failed: {error}",
    "chat.interrupted": "the answer was interrupted",
    "chat.stopped": "Stopped",
    "chat.noSources": "The answer cites no documents",
    "chat.sources": "Sources",
    "chat.refusedTitle": "Not found in your documents",
    "chat.closest": "Closest passages ({count})",
    "chat.answerability": "answerability {percent}%",
    "chat.answerabilityHint": "Estimated chance that the knowledge base answers this question",
    "chat.searched": "Searched: {question}",
    "chat.searchedHint": "The follow-up was made standalone from the conversation before it was searched",
    "chat.retry": "Retry",
    "docs.title": "Documents",
    "docs.toggle": "Documents",
    "docs.drop": "Drop files here, or",
    "docs.choose": "choose files",
    "kind.pdf": "PDF",
    "kind.word": "Word",
    "kind.powerpoint": "PowerPoint",
    "kind.markdown": "Markdown",
    "kind.text": "text",
    "kind.html": "HTML",
    "kind.csv": "CSV",
    "kind.excel": "Excel",
    "kind.json": "JSON",
    "kind.images": "images",
    "list.separator": ", ",
    "docs.empty": "No documents yet",
    "docs.pages": "{count} pages",
    "docs.pages.one": "1 page",
    "docs.chunks": "{count} chunks",
    "docs.chunks.one": "1 chunk",
    "docs.download": "Download the original",
    "docs.reindex": "Re-index",
    "docs.delete": "Delete",
    "docs.deleteConfirm": "Delete the document “{name}”? Its chunks leave the knowledge base.",
    "docs.loadFailed": "Could not list documents: {error}",
    "docs.actionFailed": "That did not work: {error}",
    "upload.uploading": "Uploading {percent}%",
    "upload.failed": "Upload failed: {error}",
    "upload.offline": "the server cannot be reached",
    "job.queued": "Queued",
    "job.running": "Indexing",
    "job.succeeded": "Done",
    "job.failed": "Failed",
    "job.cancelled": "Cancelled",
    "job.progress": "files {files_done}/{files_total} · {chunks_done} chunks",
    "job.cancel": "Cancel",
    "job.cancelUnsupported": "This server cannot cancel jobs",
    "job.reindex": "Re-index {name}",
    "source.title": "Source",
    "source.page": "page {page}",
    "source.slide": "slide {page}",
    "source.sheet": "sheet {sheet}",
    "source.score": "similarity {score}",
    "source.open": "Open the original",
    "source.openPage": "Open the original at page {page}",
    "dialog.cancel": "Cancel",
    "dialog.confirm": "OK",
    "settings.language": "Language",
    "settings.apiKey": "API key",
    "settings.apiKeyPlaceholder": "optional",
  },
};

/** Return the page language: the stored choice, else "zh" for a Chinese browser, else "en". */
export function language() {
  const stored = localStorage.getItem(LANGUAGE_STORAGE);
  if (stored in STRINGS) return stored;
  return (navigator.language || "").toLowerCase().startsWith("zh") ? "zh" : "en";
}

/** Remember `lang` as the page language. */
export function setLanguage(lang) {
  localStorage.setItem(LANGUAGE_STORAGE, lang);
}

/** Return the text of `key` in the page language, with {name} placeholders filled from `values`.
 * With `values.count` 1, the key's singular form (`key.one`) when the language has one. */
export function t(key, values = {}) {
  const strings = STRINGS[language()];
  const singular = values.count === 1 && strings[`${key}.one`];
  const text = singular || strings[key] || STRINGS.en[key] || key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in values ? String(values[name]) : whole));
}

/** Put the page language's words into every element marked data-i18n (text), -placeholder, -label, -title. */
export function translatePage() {
  const lang = language();
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.title = t("app.title");
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll("[data-i18n-placeholder]")) {
    node.placeholder = t(node.dataset.i18nPlaceholder);
  }
  for (const node of document.querySelectorAll("[data-i18n-label]")) {
    node.setAttribute("aria-label", t(node.dataset.i18nLabel));
    node.title = t(node.dataset.i18nLabel);
  }
}
