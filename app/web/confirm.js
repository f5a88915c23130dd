// A confirmation asked in the page's own dialog (styled, translated), not the browser's confirm().
"use strict";

import { $ } from "./api.js";

/** Return a promise of whether the person confirmed `message` (the dialog's OK button is `action`). */
export function confirmAction(message, action) {
  const dialog = $("confirm-dialog");
  $("confirm-message").textContent = message;
  $("confirm-ok").textContent = action;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}
