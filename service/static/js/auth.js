// The API key: asked for when the server needs one, kept only for this tab.
//
// The key lives in sessionStorage: one tab's, gone when the tab closes. Not localStorage,
// which every tab of the origin shares and which outlives the browser session (where older
// dashboards kept it: migrateStoredKey() removes that copy), and never in a URL, which
// history, logs and proxies keep. api.js and sse.js send it as X-API-Key.
//
// When the server refuses a request, denial() says what that means: no key or a key it does
// not know (ask for one, then try again) or a scope the key lacks (say which: another key is
// needed, asking for the same one again would not help).

import { $ } from "./dom.js";

const STORAGE_KEY = "bnlab.apiKey";

const prompt = {
  pending: null, // the promise every refused request waits on while the dialog is open
  resolve: null,
  dismissed: false, // the user closed the dialog: stop opening it on every refused request
};
const listeners = [];

/** The key of this tab, or null. Storage can be off (privacy settings): then no key. */
export function currentKey() {
  try {
    return sessionStorage.getItem(STORAGE_KEY);
  } catch {
    return null;
  }
}

/** Headers that carry the key, {} without one. */
export function keyHeaders(key = currentKey()) {
  return key ? { "X-API-Key": key } : {};
}

function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(STORAGE_KEY, key);
    else sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // No storage: the key cannot be kept; requests go without it.
  }
  for (const listener of listeners) listener(currentKey());
}

/** listener(key or null) after every change of the key. */
export function onKeyChange(listener) {
  listeners.push(listener);
}

/** Forget this tab's key (the header's "Forget key"). */
export function forgetKey() {
  prompt.dismissed = false;
  storeKey(null);
}

/** Dashboards before this one kept the key in localStorage, for every tab and for good. */
export function migrateStoredKey() {
  try {
    localStorage.removeItem(STORAGE_KEY);
  } catch {
    // No storage at all: nothing was kept either.
  }
}

/** The scope a 403 names ("… lacks the submit scope", "… needs the admin scope …"). */
export function neededScope(problem) {
  const match = /\bthe (read|submit|admin) scope\b/.exec(problem?.detail || "");
  return match ? match[1] : null;
}

/**
 * What a refused answer means, or null when it is not about the key:
 * {kind: "key"} no key (401); {kind: "key", refused: true} the key sent is not one the server
 * knows (it answers 403 without naming a scope); {kind: "scope", scope} the key lacks a scope.
 */
export function denial(status, problem, sentKey) {
  if (status === 401) return { kind: "key", refused: false };
  if (status !== 403) return null;
  const scope = neededScope(problem);
  if (scope) return { kind: "scope", scope };
  return sentKey ? { kind: "key", refused: true } : null;
}

/**
 * Open the key dialog (or join the one open) and wait: true once a key was entered, false when
 * the user closed the dialog. After a close, refused requests stop asking (they say how to
 * enter a key instead) until the user opens the dialog from the header (force).
 */
export function askForKey({ error = "", force = false } = {}) {
  if (prompt.pending) {
    if (error) showError(error);
    return prompt.pending;
  }
  if (prompt.dismissed && !force) return Promise.resolve(false);
  prompt.pending = new Promise((resolve) => {
    prompt.resolve = resolve;
  });
  const dialog = $("key-dialog");
  $("key-input").value = "";
  $("key-why").textContent = force
    ? "Enter an API key for this server."
    : "This server needs an API key for that.";
  showError(error);
  if (!dialog.open) dialog.showModal();
  $("key-input").focus();
  return prompt.pending;
}

function showError(text) {
  const box = $("key-error");
  box.textContent = text;
  box.hidden = !text;
}

function settle(entered) {
  const resolve = prompt.resolve;
  Object.assign(prompt, { pending: null, resolve: null, dismissed: !entered });
  if ($("key-dialog").open) $("key-dialog").close();
  resolve?.(entered);
}

/** The dialog's buttons (index.html #key-dialog). */
export function initKeyDialog() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) {
      showError("Enter a key, or Cancel.");
      return;
    }
    storeKey(key);
    settle(true);
  });
  $("key-cancel").addEventListener("click", () => settle(false));
  // Escape closes a modal dialog by itself: that is a Cancel too. (Not the close of a dialog
  // that was open again by the time the event came.)
  $("key-dialog").addEventListener("close", () => {
    if (prompt.pending && !$("key-dialog").open) settle(false);
  });
}

/** A refused key, in the dialog's words. */
export function refusalText(problem) {
  const why = problem?.detail || "the server does not know this key";
  return `The server refused this key: ${why}.`;
}
