// bnlab dashboard: runs list, submit form, live run view, compare view and sweeps.
//
// Native ES modules, no framework and no build step: the page works from the files bnlab
// serves itself (no CDN). The shared words (run statuses, limits, the short-id length) come
// from the server's GET /api/v1/vocab, read once before the first view opens.

import { loadVocab, problemText } from "./api.js";
import { askForKey, currentKey, forgetKey, initKeyDialog, migrateStoredKey, onKeyChange } from "./auth.js";
import { $, showBanner } from "./dom.js";
import { startRouter } from "./router.js";
import { compareView, initCompareView } from "./views/compare.js";
import { initRunView, runView } from "./views/run.js";
import { initRunsView, runsView } from "./views/runs.js";
import { initSubmitForm } from "./views/submit.js";
import { initSweepViews, sweepsView, sweepView } from "./views/sweeps.js";

/** The header's key control: "API key…" opens the dialog, "Forget key" drops this tab's key.
 * Either way the current view opens again, with what the new key (or none) may read. */
function initKeyControl() {
  migrateStoredKey();
  initKeyDialog();
  const show = (key) => {
    $("key-state").hidden = !key;
    $("key-forget").hidden = !key;
    $("key-open").textContent = key ? "Change key…" : "API key…";
  };
  show(currentKey());
  onKeyChange(show);
  const reopenView = () => window.dispatchEvent(new HashChangeEvent("hashchange"));
  $("key-open").addEventListener("click", async () => {
    if (await askForKey({ force: true })) reopenView();
  });
  $("key-forget").addEventListener("click", () => {
    forgetKey();
    reopenView();
  });
}

async function init() {
  initKeyControl();
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
