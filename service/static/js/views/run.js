// #/run/ID: one run — status, progress, accuracy and loss curves, the pre-activation
// percentiles (the paper's Fig. 1b/c), outcome and spec. Followed live until it finishes.

import { FINISHED, api, problemText } from "../api.js";
import { $, el, showBanner } from "../dom.js";
import { COLORS, drawChart, ema, PALETTE } from "../chart.js";
import { fmtNum, fmtPct, fmtSeconds } from "../format.js";
import { initSmoothing, smoothingWeight } from "../smoothing.js";
import { debug } from "../state.js";
import { follow } from "./live.js";

// The keys the run view draws; other keys (lr, grad_norm, ...) are left to the API.
const PERCENTILE_KEYS = ["act_p15", "act_p50", "act_p85"];
const CHART_KEYS = ["test_acc", "train_acc", "train_loss", "test_loss", ...PERCENTILE_KEYS];

const view = {
  runId: null,
  run: null, // RunOut
  loadError: "", // why the run could not be shown (e.g. no such run)
  series: {}, // key -> {steps: [], values: []}
  stop: null, // stops following the run
  drawPending: false,
};

export const runView = {
  section: "view-run",
  nav: "runs",
  needsId: true,
  open: openRunView,
  close() {
    view.stop?.();
    view.stop = null;
    view.runId = null;
  },
};

export function initRunView() {
  $("run-cancel").addEventListener("click", cancelRun);
  initSmoothing(scheduleDraw);
  // Redraw the charts at the new size when the window changes.
  window.addEventListener("resize", scheduleDraw);
}

async function openRunView(runId) {
  Object.assign(view, { runId, run: null, loadError: "" });
  view.series = Object.fromEntries(CHART_KEYS.map((k) => [k, { steps: [], values: [] }]));
  // Clear what the previous run left, so nothing stale (e.g. its status) shows meanwhile.
  $("run-title").textContent = "Run";
  $("run-status").className = "badge";
  $("run-status").textContent = "";
  showReason("", "");
  $("run-cancel").hidden = true;
  showProgress(0, 0, false);
  $("run-outcome").replaceChildren();
  $("run-spec").replaceChildren();
  $("run-live").textContent = "";
  scheduleDraw();
  const result = await api(`/runs/${encodeURIComponent(runId)}`);
  if (view.runId !== runId) return; // the user moved on meanwhile
  if (!result.ok) {
    view.loadError = result.status === 404 ? "no such run" : problemText(result.body, result.status);
    $("run-title").textContent = result.status === 404 ? "Run not found" : "Run";
    showBanner(`Could not load run ${runId}. ${problemText(result.body, result.status)}`);
    scheduleDraw();
    return;
  }
  renderRun(result.body);
  if (FINISHED.has(result.body.status)) {
    await loadAllMetrics(runId);
    setLiveText("finished");
  } else {
    view.stop = follow(runId, CHART_KEYS, lastStep, {
      onRun: (run) => view.runId === runId && renderRun(run),
      onPoints: (series) => {
        appendSeries(series);
        scheduleDraw();
      },
      onStep: (step) => {
        if (view.run && step > (view.run.last_step || 0)) {
          view.run.last_step = step;
          showProgress(step, view.run.spec?.steps || 0, false);
        }
      },
      onMode: setLiveText,
    });
  }
}

const lastStep = () => Math.max(0, ...CHART_KEYS.map((k) => view.series[k].steps.at(-1) ?? 0));

function renderRun(run) {
  view.run = run;
  document.title = `${run.name} · bnlab`;
  $("run-title").textContent = run.name;
  const status = $("run-status");
  status.className = `badge status-${run.status}`;
  status.textContent = run.status;
  showReason(run.status, run.status_reason || run.error || "");
  showProgress(run.last_step || 0, run.spec?.steps || 0, run.status === "succeeded");
  $("run-cancel").hidden = FINISHED.has(run.status) || run.cancel_requested;
  renderOutcome(run);
  renderSpec(run.spec || {});
  scheduleDraw();
}

/** The reason a run is where it is; a failure stands out. */
function showReason(status, reason) {
  const box = $("run-reason");
  box.textContent = reason;
  box.className = ["failed", "diverged"].includes(status) ? "problem" : "muted";
}

/** The progress bar; a succeeded run is full even if it logged its last step earlier. */
function showProgress(step, total, done) {
  const fraction = done ? 1 : total ? Math.min(1, step / total) : 0;
  $("run-progress-bar").style.width = `${(100 * fraction).toFixed(1)}%`;
  $("run-progress-text").textContent = `step ${step} of ${total}`;
}

function renderOutcome(run) {
  const summary = run.summary || {};
  const rows = [
    ["Status", run.status],
    ["Best test accuracy", summary.best_test_acc !== undefined
      ? `${fmtPct(summary.best_test_acc)} at step ${summary.best_test_acc_step}` : "—"],
    ["Final test accuracy", fmtPct(summary.final_test_acc)],
    ["Final test loss", fmtNum(summary.final_test_loss)],
    ["Diverged at step", run.diverged_step ?? "—"],
    ["Wall time", fmtSeconds(run.wall_time)],
    ["Device", run.device ? `${run.device} (torch ${run.torch_version})` : "—"],
    ["Worker", run.worker || "—"],
    ["Created", run.created_at ? new Date(run.created_at).toLocaleString("en-GB") : "—"],
  ];
  if (summary.test_acc_population !== undefined) {
    rows.splice(3, 0, ["Test acc, population stats", fmtPct(summary.test_acc_population)]);
  }
  $("run-outcome").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
}

function renderSpec(spec) {
  const model = spec.model || {};
  const optimizer = spec.optimizer || {};
  const rows = [
    ["Dataset", spec.dataset],
    ["Model", `${model.arch} [${(model.hidden || []).join(", ")}], ${model.activation}`],
    ["Norm", model.norm],
    ["Optimizer", `${optimizer.name}, lr ${optimizer.lr}${optimizer.momentum ? `, momentum ${optimizer.momentum}` : ""}`],
    ["Batch size", spec.batch_size],
    ["Steps", `${spec.steps} (eval every ${spec.eval_every})`],
    ["Seed", spec.seed],
  ];
  $("run-spec").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v ?? "—" })]));
}

function setLiveText(text) {
  debug.liveLog.push(text);
  $("run-live").textContent = text;
}

/** Add points; they arrive in step order, and a step we already have is ignored. */
function appendSeries(series) {
  for (const [key, data] of Object.entries(series || {})) {
    const mine = view.series[key];
    if (!mine) continue;
    data.steps.forEach((step, i) => {
      if (step <= (mine.steps.at(-1) ?? -Infinity)) return;
      const value = data.values[i];
      mine.steps.push(step);
      mine.values.push(value === null || value === undefined ? null : Number(value));
    });
  }
}

/** A finished run: its whole curves, downsampled by the server (shape-preserving). */
async function loadAllMetrics(runId) {
  const result = await api(`/runs/${encodeURIComponent(runId)}/metrics?keys=${CHART_KEYS.join(",")}&max_points=2000`);
  if (!result.ok) {
    showBanner(`Could not load metrics. ${problemText(result.body, result.status)}`);
    return;
  }
  appendSeries(result.body.series);
  scheduleDraw();
}

async function cancelRun() {
  const result = await api(`/runs/${encodeURIComponent(view.runId)}/cancel`, { method: "POST" });
  if (result.ok) renderRun(result.body);
  else showBanner(`Could not cancel. ${problemText(result.body, result.status)}`);
}

// Metric events can arrive hundreds per second: draw at most once per animation frame.
function scheduleDraw() {
  if (view.drawPending) return;
  view.drawPending = true;
  requestAnimationFrame(() => {
    view.drawPending = false;
    if (!$("view-run").hidden) drawRunCharts();
  });
}

/** What an empty chart says: why there is no data, not "waiting" for a run that is over. */
function emptyText(what) {
  const run = view.run;
  if (view.loadError) return [view.loadError];
  if (!run) return ["loading…"];
  const reason = run.status_reason || run.error || "";
  if (run.status === "queued") return ["queued", reason || "not started yet"];
  if (FINISHED.has(run.status)) return [`${run.status}: no ${what} recorded`, reason];
  return ["waiting for data…"];
}

function drawRunCharts() {
  const s = view.series;
  const xMax = view.run?.spec?.steps;
  const weight = smoothingWeight();
  const pairs = (key) => s[key].steps.map((step, i) => [step, s[key].values[i]]);
  // Per-step (batch) curves: the raw values faint, their EMA on top.
  const batch = (key, label) => [
    { label: weight > 0 ? `${label}, EMA ${weight.toFixed(2)}` : label, color: COLORS.train, width: 1.5, points: ema(pairs(key), weight) },
    weight > 0 ? { label: "", color: COLORS.train, width: 1, alpha: 0.2, points: pairs(key) } : null,
  ].filter(Boolean);
  debug.plotted.acc = drawChart($("chart-acc"), {
    series: [
      { label: "test", color: COLORS.test, width: 2.5, dots: true, points: pairs("test_acc") },
      ...batch("train_acc", "train (batch)"),
    ],
    xLabel: "step", yLabel: "accuracy", xMin: 0, xMax, yClamp: [0, 1], empty: emptyText("metrics"),
  });
  debug.plotted.loss = drawChart($("chart-loss"), {
    series: [
      { label: "test", color: COLORS.test, width: 2.5, dots: true, points: pairs("test_loss") },
      ...batch("train_loss", "train (batch)"),
    ],
    xLabel: "step", yLabel: "cross-entropy loss", xMin: 0, xMax, yMin: 0, yScale: "auto",
    empty: emptyText("metrics"),
  });
  // Fig. 1b/c: how the probed unit's input distribution moves during training.
  debug.plotted.pct = drawChart($("chart-pct"), {
    series: [
      { label: "15th", color: PALETTE[2], width: 1.5, dash: [5, 3], points: pairs("act_p15") },
      { label: "50th", color: PALETTE[3], width: 2.5, points: pairs("act_p50") },
      { label: "85th", color: PALETTE[2], width: 1.5, dash: [5, 3], points: pairs("act_p85") },
    ],
    xLabel: "step", yLabel: "pre-activation", xMin: 0, xMax,
    empty: emptyText("percentiles"),
  });
}
