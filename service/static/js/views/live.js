// How the run view follows a run: the SSE stream first, polling the API as a fallback.
//
// follow(runId, handlers) -> stop(). handlers: {onRun(run), onPoints(series), onStep(step),
// onMode(text)}; series is {key: {steps: [], values: []}} as GET /runs/{id}/metrics returns it.

import { API, FINISHED, api } from "../api.js";
import { openEventStream } from "../sse.js";

const POLL_MS = 2000;

export function follow(runId, keys, lastStep, handlers) {
  const live = { close: null, timer: null, stopped: false };
  const stop = () => {
    live.stopped = true;
    live.close?.();
    clearTimeout(live.timer);
  };
  const poll = () => startPolling(runId, keys, lastStep, handlers, live);
  if (!window.ReadableStream || !window.TextDecoder) poll();
  else openStream(runId, handlers, live, poll);
  return stop;
}

// The SSE stream replays the run's points from the start and then follows it; after a drop
// sse.js reconnects and resumes with Last-Event-ID (the step of the last point received).
function openStream(runId, handlers, live, poll) {
  handlers.onMode("connecting…");
  live.close = openEventStream(`${API}/runs/${encodeURIComponent(runId)}/events`, {
    onOpen: () => handlers.onMode("live (SSE)"),
    onDrop: () => handlers.onMode("reconnecting…"),
    // The stream was refused (404, a scope, a server without SSE, no stream slot free): it is
    // not coming back; poll the metrics endpoint instead, from the last step we have.
    onFail: () => {
      live.close = null;
      if (!live.stopped) poll();
    },
    onEvent: (type, data) => {
      if (live.stopped) return;
      if (type === "status") handlers.onRun(JSON.parse(data));
      else if (type === "metrics") onMetrics(JSON.parse(data), handlers);
      else if (type === "end") onEnd(runId, handlers, live);
    },
  });
}

function onMetrics(data, handlers) {
  const series = {};
  for (const [key, value] of Object.entries(data.values || {})) {
    series[key] = { steps: [data.step], values: [value] };
  }
  handlers.onPoints(series);
  handlers.onStep(data.step);
}

async function onEnd(runId, handlers, live) {
  handlers.onMode("finished");
  const result = await api(`/runs/${encodeURIComponent(runId)}`);
  if (result.ok && !live.stopped) handlers.onRun(result.body);
}

// Poll the run and its new metric points every few seconds until it finishes.
function startPolling(runId, keys, lastStep, handlers, live) {
  handlers.onMode("live (polling)");
  const tick = async () => {
    const result = await api(`/runs/${encodeURIComponent(runId)}`);
    if (live.stopped) return;
    if (result.ok) handlers.onRun(result.body);
    await loadMetrics(runId, keys, lastStep(), handlers, live);
    if (result.ok && FINISHED.has(result.body.status)) {
      handlers.onMode("finished");
      return;
    }
    live.timer = setTimeout(tick, POLL_MS);
  };
  tick();
}

/**
 * Fetch the points from the last step we have on, following next_cursor to the end. The last
 * step is fetched again: its evaluation may be written after its training metrics, and the
 * view drops what it already has.
 */
async function loadMetrics(runId, keys, fromStep, handlers, live) {
  const base = `keys=${keys.join(",")}&step_min=${fromStep}`;
  let query = base;
  for (let page = 0; page < 100; page++) {
    const result = await api(`/runs/${encodeURIComponent(runId)}/metrics?${query}`);
    if (!result.ok || live.stopped) return;
    handlers.onPoints(result.body.series || {});
    if (!result.body.next_cursor) break;
    query = `${base}&cursor=${encodeURIComponent(result.body.next_cursor)}`;
  }
}
