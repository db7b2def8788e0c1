// The smoothing control: one EMA weight for every per-step (training batch) curve, kept in
// localStorage so it survives reloads. Evaluation curves are never smoothed.

const KEY = "bnlab.smoothing";
const DEFAULT_WEIGHT = 0.6; // modest: per-step noise tamed, the trend's timing kept
const listeners = new Set();

export function smoothingWeight() {
  const stored = Number.parseFloat(localStorage.getItem(KEY));
  return Number.isFinite(stored) && stored >= 0 && stored < 1 ? stored : DEFAULT_WEIGHT;
}

/** Wire every input.smoothing-input on the page; onChange() runs after each move. */
export function initSmoothing(onChange) {
  listeners.add(onChange);
  for (const input of document.querySelectorAll("input.smoothing-input")) {
    if (input.dataset.wired) continue;
    input.dataset.wired = "1";
    input.addEventListener("input", () => {
      localStorage.setItem(KEY, input.value);
      syncInputs();
      for (const listener of listeners) listener();
    });
  }
  syncInputs();
}

function syncInputs() {
  const weight = smoothingWeight();
  for (const input of document.querySelectorAll("input.smoothing-input")) {
    input.value = String(weight);
    const output = input.parentElement.querySelector("output");
    if (output) output.textContent = weight.toFixed(2);
  }
}
