// The JSON API under /api/v1, and the shared words (statuses, limits) the server serves.

import { askForKey, currentKey, denial, forgetKey, keyHeaders, refusalText } from "./auth.js";

export const API = "/api/v1";

/**
 * The server's vocabulary (GET /api/v1/vocab, from service/vocab.py): run statuses and API
 * limits are spelled there once. Filled by loadVocab() before the first view opens.
 */
export const vocab = {
  statuses: [],
  active_statuses: [],
  finished_statuses: [],
  max_page_size: 0,
  default_page_size: 0,
  short_id_length: 0,
};
export const FINISHED = new Set();

export async function loadVocab() {
  const result = await api("/vocab");
  if (!result.ok) return result;
  Object.assign(vocab, result.body);
  for (const status of vocab.finished_statuses) FINISHED.add(status);
  return result;
}

/**
 * fetch() with this tab's key. A 401, or a key the server does not know, opens the key dialog
 * and tries again with the key entered; a key that lacks a scope is not retried. Returns
 * {response, problem}: problem is the parsed body of a refusal (the response is then read),
 * undefined otherwise. Throws what fetch() throws (network failure, abort).
 */
export async function authorizedFetch(url, init = {}) {
  for (;;) {
    const sent = currentKey();
    const headers = { ...(init.headers || {}), ...keyHeaders(sent) };
    const response = await fetch(url, { ...init, headers });
    if (response.status !== 401 && response.status !== 403) return { response, problem: undefined };
    const problem = await readProblem(response);
    const why = denial(response.status, problem, sent);
    if (!why) return { response, problem };
    if (why.kind === "scope") return { response, problem: scopeProblem(problem, why.scope) };
    if (currentKey() !== sent) continue; // a key was entered meanwhile: try it
    if (why.refused) forgetKey(); // a wrong key helps no one, not even open reads
    const entered = await askForKey({ error: why.refused ? refusalText(problem) : "" });
    if (!entered) return { response, problem: missingKeyProblem(problem, why.refused) };
  }
}

/**
 * fetch() the API and parse the JSON body. Never throws for HTTP errors: the caller gets
 * {ok, status, body} and decides; a network failure comes back as status 0 with a problem.
 */
export async function api(path, { method = "GET", json } = {}) {
  const headers = { Accept: "application/json" };
  const init = { method, headers };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  let answer;
  try {
    answer = await authorizedFetch(API + path, init);
  } catch (err) {
    return { ok: false, status: 0, body: { title: "Server unreachable", detail: String(err) } };
  }
  const { response, problem } = answer;
  const body = problem !== undefined ? problem : await readProblem(response);
  return { ok: response.ok, status: response.status, body };
}

/**
 * A file from the API (the compare plot, a CSV) as a Blob, with the key: for what an <img> or
 * a link would fetch without it. {ok, status, blob} or {ok: false, status, body: problem}.
 */
export async function apiBlob(url) {
  try {
    const { response, problem } = await authorizedFetch(url);
    if (response.ok) return { ok: true, status: response.status, blob: await response.blob() };
    const body = problem !== undefined ? problem : await readProblem(response);
    return { ok: false, status: response.status, body };
  } catch (err) {
    return { ok: false, status: 0, body: { title: "Server unreachable", detail: String(err) } };
  }
}

/** The JSON body (null when empty); a body that is not JSON becomes a problem. */
async function readProblem(response) {
  const text = await response.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return { title: response.statusText, detail: text.slice(0, 300) };
  }
}

function scopeProblem(problem, scope) {
  const detail = (problem?.detail || "this key may not do that").replace(/\.$/, "");
  return {
    ...problem,
    title: `Needs the ${scope} scope`,
    detail: `${detail}. This needs a key with the ${scope} scope: enter one with `
      + "\u201cChange key\u2026\u201d at the top right.",
  };
}

function missingKeyProblem(problem, refused) {
  return {
    ...problem,
    title: refused ? "API key refused" : "API key needed",
    detail: "this server needs an API key for that: enter one with \u201cAPI key\u2026\u201d at the top "
      + "right.",
  };
}

/** One line for a problem+json body: "title: detail". */
export function problemText(problem, status) {
  if (!problem) return `HTTP ${status}`;
  const title = problem.title || `HTTP ${status}`;
  return problem.detail && problem.detail !== title ? `${title}: ${problem.detail}` : title;
}
