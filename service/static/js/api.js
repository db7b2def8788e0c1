// The JSON API under /api/v1, and the shared words (statuses, limits) the server serves.

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

function authHeaders() {
  const key = localStorage.getItem("bnlab.apiKey");
  return key ? { "X-API-Key": key } : {};
}

/**
 * fetch() the API and parse the JSON body. Never throws for HTTP errors: the caller gets
 * {ok, status, body} and decides; a network failure comes back as status 0 with a problem.
 */
export async function api(path, { method = "GET", json } = {}) {
  const headers = { Accept: "application/json", ...authHeaders() };
  const init = { method, headers };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(API + path, init);
  } catch (err) {
    return { ok: false, status: 0, body: { title: "Server unreachable", detail: String(err) } };
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = { title: response.statusText, detail: text.slice(0, 300) };
  }
  return { ok: response.ok, status: response.status, body };
}

/** One line for a problem+json body: "title: detail". */
export function problemText(problem, status) {
  if (!problem) return `HTTP ${status}`;
  const title = problem.title || `HTTP ${status}`;
  return problem.detail && problem.detail !== title ? `${title}: ${problem.detail}` : title;
}
