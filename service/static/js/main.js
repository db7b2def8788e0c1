// bnlab dashboard: runs list, submit form, live run view, compare view and sweeps.
//
// Native ES modules, no framework and no build step: the page works from the files bnlab
// serves itself (no CDN). The shared words (run statuses, limits, the short-id length) come
// from the server's GET /api/v1/vocab, read once before the first view opens.

import { loadVocab, problemText } from "./api.js";
import { $, showBanner } from "./dom.js";
import { startRouter } from "./router.js";
import { compareView, initCompareView } from "./views/compare.js";
import { initRunView, runView } from "./views/run.js";
import { initRunsView, runsView } from "./views/runs.js";
import { initSubmitForm } from "./views/submit.js";
import { initSweepViews, sweepsView, sweepView } from "./views/sweeps.js";

function initApiKey() {
  const keyInput = $("api-key");
  keyInput.value = localStorage.getItem("bnlab.apiKey") || "";
  keyInput.addEventListener("change", () => {
    if (keyInput.value) localStorage.setItem("bnlab.apiKey", keyInput.value);
    else localStorage.removeItem("bnlab.apiKey");
  });
}

async function init() {
  initApiKey();
  initSubmitForm();
  initRunsView();
  initRunView();
  initCompareView();
  initSweepViews();
  const vocab = await loadVocab();
  if (!vocab.ok) showBanner(`Could not load the server's vocabulary. ${problemText(vocab.body, vocab.status)}`);
  startRouter({
    runs: runsView,
    run: runView,
    compare: compareView,
    sweeps: sweepsView,
    sweep: sweepView,
  });
}

init();
