// Server-Sent Events read with fetch(): EventSource cannot send headers, and the API key must
// travel in X-API-Key (never in the URL, which logs, history and proxies keep).
//
// openEventStream(url, handlers) -> close(). It follows the text/event-stream format as
// EventSource does: "event:", "data:" (several join with newlines), "id:" and "retry:" fields,
// ":" comments, an event dispatched at each blank line. After a drop (the connection closed or
// failed without the end event) it reconnects after the server's retry delay and sends
// Last-Event-ID, the id of the last event received, so the server resumes after it. The end
// event (default "end") closes the stream for good.
//
// handlers: onOpen() each time a connection delivers a stream; onEvent(type, data, id) per
// event (data a string, as EventSource gives it); onDrop() when it reconnects; onFail({status,
// body}) when the server answers with an error or not an event stream (no reconnect: polling
// is the caller's fallback). A 401 or an unknown key asks for a key first (api.js).

import { authorizedFetch } from "./api.js";

const DEFAULT_RETRY_MS = 3000; // EventSource's usual default, until the server sends retry:

export function openEventStream(url, handlers = {}, { endEvent = "end" } = {}) {
  const stream = { url, handlers, endEvent, lastEventId: "", retryMs: DEFAULT_RETRY_MS };
  const controller = new AbortController();
  stream.signal = controller.signal;
  const close = () => controller.abort();
  run(stream).catch(() => {}); // run() reports through the handlers; an abort ends it quietly
  return close;
}

async function run(stream) {
  while (!stream.signal.aborted) {
    let outcome;
    try {
      outcome = await connect(stream);
    } catch {
      outcome = "drop"; // network failure, or the connection broke mid-stream
    }
    if (stream.signal.aborted || outcome !== "drop") return;
    stream.handlers.onDrop?.();
    await sleep(stream.retryMs, stream.signal);
  }
}

/** One connection: "end" (the end event came), "fail" (refused) or "drop" (closed early). */
async function connect(stream) {
  const headers = { Accept: "text/event-stream" };
  if (stream.lastEventId) headers["Last-Event-ID"] = stream.lastEventId;
  const { response, problem } = await authorizedFetch(stream.url, {
    headers,
    cache: "no-store",
    signal: stream.signal,
  });
  const type = response.headers.get("content-type") || "";
  if (!response.ok || !type.startsWith("text/event-stream") || !response.body) {
    const body = problem !== undefined ? problem : await readText(response);
    if (!stream.signal.aborted) stream.handlers.onFail?.({ status: response.status, body });
    return "fail";
  }
  stream.handlers.onOpen?.();
  const parser = new EventParser(stream);
  const reader = response.body.getReader();
  const decoder = new TextDecoder(); // strips a byte-order mark, as the format asks
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return "drop";
    if (parser.feed(decoder.decode(value, { stream: true }))) {
      reader.cancel().catch(() => {});
      return "end";
    }
  }
}

/** Splits the text into lines and lines into events; remembers id and retry on the stream. */
class EventParser {
  constructor(stream) {
    this.stream = stream;
    this.rest = ""; // an unfinished line
    this.type = "";
    this.data = [];
  }

  /** Take more text; true once the end event was dispatched. */
  feed(text) {
    let buffer = this.rest + text;
    // A "\r" at the very end may be the first half of "\r\n": keep it for the next chunk.
    const held = buffer.endsWith("\r") ? "\r" : "";
    if (held) buffer = buffer.slice(0, -1);
    const lines = buffer.split(/\r\n|\r|\n/);
    this.rest = lines.pop() + held;
    for (const line of lines) {
      if (this.line(line)) return true;
    }
    return false;
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return false; // a comment (keep-alives)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.type = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.stream.lastEventId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.stream.retryMs = Number(value);
    return false;
  }

  dispatch() {
    const type = this.type || "message";
    const data = this.data;
    this.type = "";
    this.data = [];
    if (!data.length) return false; // a block without data (e.g. only "retry:") is no event
    try {
      this.stream.handlers.onEvent?.(type, data.join("\n"), this.stream.lastEventId);
    } catch (err) {
      // A handler's bug is reported as EventSource's would be, not taken for a dropped stream.
      setTimeout(() => {
        throw err;
      });
    }
    return type === this.stream.endEvent;
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

async function readText(response) {
  try {
    return { detail: (await response.text()).slice(0, 300) };
  } catch {
    return null;
  }
}
