// #/sweeps: the list of sweeps; #/sweep/ID: one sweep's arms as mean ± 95 % CI curves, the
// arms' statistics and its runs. The list needs GET /api/v1/sweeps, which older servers lack:
// then the page says so instead of failing.

import { FINISHED, api, problemText } from "../api.js";
import { $, badge, el, replace, showBanner } from "../dom.js";
import { fmtCreated, fmtPct, shortId } from "../format.js";
import { initSmoothing } from "../smoothing.js";
import { debug } from "../state.js";
import { drawArmCharts, renderArmsTable, runNameCell } from "./arms.js";
import { targetLine } from "./compare.js";

const REFRESH_MS = 5000; // while some of the sweep's runs are still going

export const sweepsView = {
  section: "view-sweeps",
  nav: "sweeps",
  open: openSweepList,
};

const page = { id: null, timer: null, cmp: null };

export const sweepView = {
  section: "view-sweep",
  nav: "sweeps",
  needsId: true,
  open: openSweep,
  close() {
    clearTimeout(page.timer);
    Object.assign(page, { id: null, timer: null, cmp: null });
  },
};

export function initSweepViews() {
  const redraw = () => page.cmp && drawCharts(page.cmp);
  initSmoothing(redraw);
  window.addEventListener("resize", redraw);
}

async function openSweepList() {
  document.title = "Sweeps · bnlab";
  const result = await api("/sweeps");
  const tbody = $("sweeps-table").querySelector("tbody");
  if (!result.ok) {
    showBanner(`Could not list sweeps. ${problemText(result.body, result.status)}`);
    return;
  }
  const sweeps = result.body.items;
  tbody.replaceChildren(...sweeps.map((sweep) => el(
    "tr",
    { "data-sweep-id": sweep.id },
    el("td", { class: "name" }, el("a", { href: `#/sweep/${sweep.id}`, text: sweep.name })),
    el("td", { class: "wrap" }, gridText(sweep.grid)),
    el("td", {}, ...countBadges(sweep.counts)),
    el("td", { title: sweep.created_at, text: fmtCreated(sweep.created_at) }),
  )));
  $("sweeps-empty").hidden = sweeps.length > 0;
}

function gridText(grid) {
  return Object.entries(grid || {}).map(([k, v]) => `${k} ∈ {${v.join(", ")}}`).join(" × ");
}

function countBadges(counts) {
  return Object.entries(counts || {}).map(([status, n]) => el("span", { class: `badge status-${status}`, text: `${n} ${status}` }));
}

async function openSweep(id) {
  Object.assign(page, { id, cmp: null });
  document.title = "Sweep · bnlab";
  $("sweep-title").textContent = `Sweep ${shortId(id)}`;
  for (const node of ["sweep-grid", "sweep-counts", "sweep-target", "sweep-warnings"]) $(node).replaceChildren();
  $("sweep-runs").querySelector("tbody").replaceChildren();
  $("sweep-arms").querySelector("tbody").replaceChildren();
  drawCharts(null);
  await refreshSweep(id);
}

async function refreshSweep(id) {
  const result = await api(`/sweeps/${encodeURIComponent(id)}`);
  if (page.id !== id) return;
  if (!result.ok) {
    showBanner(`Could not load sweep ${id}. ${problemText(result.body, result.status)}`);
    $("sweep-title").textContent = result.status === 404 ? "Sweep not found" : "Sweep";
    return;
  }
  const sweep = result.body;
  document.title = `${sweep.name} · bnlab`;
  $("sweep-title").textContent = sweep.name;
  $("sweep-grid").textContent = gridText(sweep.grid);
  replace($("sweep-counts"), ...countBadges(sweep.counts));
  renderRuns(sweep.runs);

  const cmp = await api(`/compare?sweep=${encodeURIComponent(id)}`);
  if (page.id !== id) return;
  if (cmp.ok) {
    page.cmp = cmp.body;
    targetLine(cmp.body, $("sweep-target"));
    replace($("sweep-warnings"), ...(cmp.body.warnings || []).map((w) => el("li", { text: w })));
    renderArmsTable($("sweep-arms").querySelector("tbody"), cmp.body);
    renderRuns(sweep.runs, new Map(cmp.body.runs.map((r) => [r.id, r.best_test_acc])));
    drawCharts(cmp.body);
  } else {
    showBanner(`Could not compare the sweep's runs. ${problemText(cmp.body, cmp.status)}`);
  }
  if (sweep.runs.some((run) => !FINISHED.has(run.status))) {
    page.timer = setTimeout(() => refreshSweep(id), REFRESH_MS);
  }
}

/** The sweep's runs; best accuracy from the comparison when there is one (it reads the curves). */
function renderRuns(runs, bestById = new Map()) {
  replace($("sweep-runs").querySelector("tbody"), ...runs.map((run) => el(
    "tr",
    { "data-run-id": run.id },
    runNameCell(run, `#/run/${run.id}`),
    el("td", { class: "num", text: run.spec?.seed ?? "—" }),
    el("td", {}, badge(run.status)),
    el("td", { class: "num", text: `${run.last_step ?? "—"} / ${run.spec?.steps ?? "?"}` }),
    el("td", { class: "num", text: fmtPct(bestById.get(run.id) ?? run.summary?.best_test_acc) }),
  )));
}

function drawCharts(cmp) {
  const empty = { runs: [], arms: [], metric: "test_acc" };
  const plotted = drawArmCharts(cmp || empty, $("sweep-chart-acc"), $("sweep-chart-loss"));
  debug.plotted.sweepAcc = plotted.acc;
  debug.plotted.sweepLoss = plotted.loss;
}
