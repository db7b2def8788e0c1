// #/runs: the list of runs (refreshed every few seconds) with boxes to pick runs to compare.

import { api, problemText, vocab } from "../api.js";
import { $, badge, el, showBanner } from "../dom.js";
import { fmtCreated, fmtNum, fmtPct } from "../format.js";
import { compareHash } from "../router.js";
import { state } from "../state.js";

const RUNS_REFRESH_MS = 3000;
let timer = null;

export const runsView = {
  section: "view-runs",
  nav: "runs",
  open() {
    document.title = "Runs · bnlab";
    refreshRuns();
    timer = setInterval(refreshRuns, RUNS_REFRESH_MS);
  },
  close() {
    clearInterval(timer);
  },
};

export function initRunsView() {
  $("compare-selected").addEventListener("click", () => {
    location.hash = compareHash(state.selected);
  });
}

/** The newest runs (also used by the compare picker); null, with a banner, on failure. The
 * page sizes are the server's (GET /api/v1/vocab); without them the server's default holds. */
export async function fetchRuns(limit = vocab.default_page_size) {
  const result = await api(limit ? `/runs?limit=${limit}` : "/runs");
  if (!result.ok) {
    showBanner(`Could not list runs. ${problemText(result.body, result.status)}`);
    return null;
  }
  state.runs = result.body.items;
  return state.runs;
}

async function refreshRuns() {
  const runs = await fetchRuns();
  if (!runs) return;
  showBanner("");
  const tbody = $("runs-table").querySelector("tbody");
  tbody.replaceChildren(...runs.map(runRow));
  $("runs-empty").hidden = runs.length > 0;
  $("runs-updated").textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
  // Forget selections of runs that were deleted.
  const ids = new Set(runs.map((r) => r.id));
  for (const id of state.selected) if (!ids.has(id)) state.selected.delete(id);
  updateCompareButton();
}

function runRow(run) {
  const spec = run.spec || {};
  const model = spec.model || {};
  const optimizer = spec.optimizer || {};
  const best = run.summary ? run.summary.best_test_acc : null;
  const step = run.last_step === null || run.last_step === undefined ? "—" : run.last_step;
  const box = el("input", {
    type: "checkbox",
    "aria-label": `select ${run.name} for comparison`,
    checked: state.selected.has(run.id),
    onchange: (event) => {
      if (event.target.checked) state.selected.add(run.id);
      else state.selected.delete(run.id);
      updateCompareButton();
    },
  });
  return el(
    "tr",
    { "data-run-id": run.id, "data-status": run.status },
    el("td", { class: "narrow" }, box),
    el("td", { class: "name", title: run.name }, el("a", { href: `#/run/${run.id}`, text: run.name })),
    el("td", {}, badge(run.status)),
    el("td", { text: model.norm ?? "—" }),
    el("td", { class: "num", text: fmtNum(optimizer.lr) }),
    el("td", { class: "num", text: spec.seed ?? "—" }),
    el("td", { class: "num", text: `${step} / ${spec.steps ?? "?"}` }),
    el("td", { class: "num", text: fmtPct(best) }),
    el("td", { title: run.created_at, text: fmtCreated(run.created_at) }),
  );
}

function updateCompareButton() {
  const button = $("compare-selected");
  const n = state.selected.size;
  button.disabled = n < 2;
  button.textContent = n ? `Compare selected (${n})` : "Compare selected";
}
