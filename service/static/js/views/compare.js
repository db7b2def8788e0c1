// #/compare?runs=A,B[&baseline=A]: pick runs, then the speed-up table, the arms (mean ± 95 % CI
// curves and statistics) and the server-rendered plot.

import { API, FINISHED, api, apiBlob, problemText, vocab } from "../api.js";
import { currentKey } from "../auth.js";
import { $, badge, el, replace, showBanner } from "../dom.js";
import { fmtNum, fmtPct, fmtSeconds, shortId, splitRunName } from "../format.js";
import { compareHash } from "../router.js";
import { initSmoothing } from "../smoothing.js";
import { debug, state } from "../state.js";
import { drawArmCharts, renderArmsTable, runNameCell } from "./arms.js";
import { fetchRuns } from "./runs.js";

let shown = null; // the comparison on screen, redrawn on resize or a smoothing change

export const compareView = {
  section: "view-compare",
  nav: "compare",
  open: (_id, params) => openCompareView(params),
  close() {
    shown = null;
  },
};

export function initCompareView() {
  $("compare-baseline").addEventListener("change", onPickerChange);
  const redraw = () => shown && drawCharts(shown);
  initSmoothing(redraw);
  window.addEventListener("resize", redraw);
}

async function openCompareView(params) {
  document.title = "Compare · bnlab";
  const ids = (params.get("runs") || "").split(",").filter(Boolean);
  const baseline = params.get("baseline") || "";
  state.selected = new Set(ids);
  renderPicker(state.runs, ids, baseline); // at once from what we have, then fresh
  const runs = await fetchRuns(vocab.max_page_size); // as many as one page may hold
  if (runs) renderPicker(runs, ids, baseline);
  if (ids.length < 1) {
    $("compare-empty").hidden = false;
    $("compare-result").hidden = true;
    $("compare-figure").hidden = true;
    $("compare-links").replaceChildren();
    return;
  }
  await loadComparison(ids, baseline);
}

/** Checkboxes over the finished runs (and any selected one), plus the baseline choice. */
function renderPicker(runs, ids, baseline) {
  const pickable = runs.filter((r) => FINISHED.has(r.status) || ids.includes(r.id));
  const picker = $("compare-picker");
  picker.replaceChildren(...pickable.map((run) => {
    const { base, detail } = splitRunName(run.name);
    return el(
      "label",
      { class: "pick", title: run.name },
      el("input", { type: "checkbox", value: run.id, checked: ids.includes(run.id), onchange: onPickerChange }),
      el("span", { class: "pick-name" }, detail || base, detail ? el("span", { class: "muted small", text: ` ${base}` }) : null),
      el("span", { class: "muted small", text: `seed ${run.spec?.seed ?? "—"}` }),
      badge(run.status),
    );
  }));
  if (!pickable.length) picker.append(el("p", { class: "muted", text: "No finished runs yet." }));

  const select = $("compare-baseline");
  const names = new Map(runs.map((r) => [r.id, r.name]));
  select.replaceChildren(
    el("option", { value: "", text: "automatic" }),
    ...ids.map((id) => el("option", { value: id, text: names.get(id) || shortId(id), selected: id === baseline })),
  );
}

function onPickerChange() {
  const ids = [...$("compare-picker").querySelectorAll("input:checked")].map((box) => box.value);
  const baseline = $("compare-baseline").value;
  location.hash = compareHash(ids, ids.includes(baseline) ? baseline : "");
}

async function loadComparison(ids, baseline) {
  let query = `runs=${ids.map(encodeURIComponent).join(",")}`;
  if (baseline) query += `&baseline=${encodeURIComponent(baseline)}`;
  $("compare-empty").hidden = true;
  const result = await api(`/compare?${query}`);
  if (!result.ok) {
    $("compare-result").hidden = true;
    $("compare-figure").hidden = true;
    showBanner(`Could not compare. ${problemText(result.body, result.status)}`);
    return;
  }
  renderComparison(result.body);
  // The plot is rendered by the server; the <img> shows it as soon as it arrives.
  showPlot(`${API}/compare/plot?${query}&format=png`);
  $("compare-figure").hidden = false;
  const link = (href, text, file) => el("a", { href, text, onclick: (e) => downloadWithKey(e, file) });
  replace(
    $("compare-links"),
    "Download: ",
    link(`${API}/compare?${query}&format=csv`, "CSV", "compare.csv"), " · ",
    link(`${API}/compare?${query}&format=json`, "JSON", "compare.json"), " · ",
    link(`${API}/compare/plot?${query}&format=svg`, "SVG", "compare.svg"),
  );
}

// An <img> or a link cannot send the API key (and the key never goes in a URL): with a key,
// the plot is fetched with it and shown as a data: URL (the page's CSP allows those), and a
// download link fetches its file with it and saves the Blob. Without a key they work as is.
let plotRequest = 0;

async function showPlot(url) {
  const img = $("compare-plot");
  const mine = ++plotRequest;
  if (!currentKey()) {
    img.src = url;
    return;
  }
  img.removeAttribute("src");
  const result = await apiBlob(url);
  if (mine !== plotRequest) return; // another comparison was asked for meanwhile
  if (!result.ok) {
    showBanner(`Could not load the plot. ${problemText(result.body, result.status)}`);
    return;
  }
  const reader = new FileReader();
  reader.addEventListener("load", () => {
    if (mine === plotRequest) img.src = reader.result;
  });
  reader.readAsDataURL(result.blob);
}

async function downloadWithKey(event, filename) {
  if (!currentKey()) return; // the browser follows the link itself
  event.preventDefault();
  const result = await apiBlob(event.currentTarget.href);
  if (!result.ok) {
    showBanner(`Could not download ${filename}. ${problemText(result.body, result.status)}`);
    return;
  }
  const url = URL.createObjectURL(result.blob);
  el("a", { href: url, download: filename }).click();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** "Target: 91.2% test accuracy (…). Baseline: name." */
export function targetLine(cmp, node) {
  const isAcc = cmp.metric.endsWith("_acc");
  const metric = cmp.metric === "test_acc" ? "test accuracy" : cmp.metric;
  const target = cmp.target === null ? "none" : isAcc ? fmtPct(cmp.target) : fmtNum(cmp.target, 4);
  const baselineRun = cmp.runs.find((r) => r.id === cmp.baseline_id);
  const source = { baseline: "the baseline arm's lowest best", given: "given", none: "none" }[cmp.target_source] || cmp.target_source;
  replace(
    node,
    "Target: ", el("strong", { text: cmp.target === null ? "none" : `${target} ${metric}` }),
    ` (${source}). Baseline: `, el("strong", { text: baselineRun ? baselineRun.name : cmp.baseline_id }),
    ". Speed-up = baseline's steps to target ÷ the run's.",
  );
}

function renderComparison(cmp) {
  shown = cmp;
  $("compare-result").hidden = false;
  targetLine(cmp, $("compare-target"));
  replace($("compare-warnings"), ...(cmp.warnings || []).map((w) => el("li", { text: w })));

  replace($("speedup-table").querySelector("tbody"), ...cmp.runs.map((run) => {
    const isBaseline = run.id === cmp.baseline_id;
    const name = runNameCell(run, `#/run/${run.id}`);
    if (isBaseline) name.append(el("span", { class: "tag", text: "baseline" }));
    return el(
      "tr",
      { "data-run-id": run.id, class: isBaseline ? "baseline" : null },
      name,
      el("td", { class: "num", text: run.seed ?? "—" }),
      el("td", { class: "wrap", text: run.arm }),
      el("td", {}, badge(run.status)),
      el("td", { class: "num", text: fmtPct(run.best_test_acc) }),
      el("td", { class: "num", text: run.reached ? fmtNum(run.steps_to_target) : `not reached (> ${fmtNum(run.budget)})` }),
      el("td", { class: "num speedup", text: speedupText(run.speedup, isBaseline) }),
      el("td", { class: "num", text: fmtSeconds(run.wall_time) }),
    );
  }));

  const arms = cmp.arms || [];
  $("arms-wrap").hidden = !arms.some((a) => a.n > 1);
  renderArmsTable($("arms-table").querySelector("tbody"), cmp);
  drawCharts(cmp);
}

function drawCharts(cmp) {
  const plotted = drawArmCharts(cmp, $("compare-chart-acc"), $("compare-chart-loss"));
  debug.plotted.compareAcc = plotted.acc;
}

function speedupText(speedup, isBaseline) {
  if (isBaseline) return "1.00×";
  return speedup === null || speedup === undefined ? "—" : `${speedup.toFixed(2)}×`;
}
