// The "New run" form on #/runs: read it as a JobSpec, POST it, show a 422 field by field.

import { api } from "../api.js";
import { $, el, replace } from "../dom.js";

export function initSubmitForm() {
  const form = $("submit-form");
  form.addEventListener("submit", submitRun);
  form.elements.dataset.addEventListener("change", toggleDataPath);
  toggleDataPath();
}

/** The form as a JobSpec. Empty number fields are left out, so the server's default holds. */
function readSpec(form) {
  const spec = {};
  for (const field of form.elements) {
    if (!field.name || field.closest("[hidden]")) continue;
    let value = field.value.trim();
    if (value === "") continue;
    if (field.name === "model.hidden") {
      // "100, 100" -> [100, 100]; a non-number goes to the server as text so its 422 names it.
      value = value.split(/[\s,]+/).filter(Boolean).map((part) => {
        const n = Number(part);
        return Number.isFinite(n) ? n : part;
      });
    } else if (field.type === "number") {
      value = Number(value);
    }
    setPath(spec, field.name.split("."), value);
  }
  return spec;
}

function setPath(target, path, value) {
  let node = target;
  for (const key of path.slice(0, -1)) node = node[key] ??= {};
  node[path[path.length - 1]] = value;
}

async function submitRun(event) {
  event.preventDefault();
  const form = event.target;
  const button = form.querySelector("button[type=submit]");
  clearProblem(form);
  button.disabled = true;
  button.textContent = "Submitting…";
  const result = await api("/runs", { method: "POST", json: readSpec(form) });
  button.disabled = false;
  button.textContent = "Submit run";
  if (result.ok) {
    location.hash = `#/run/${result.body.id}`;
  } else {
    showProblem(form, result.body, result.status);
  }
}

function clearProblem(form) {
  $("submit-problem").hidden = true;
  for (const node of form.querySelectorAll(".invalid")) node.classList.remove("invalid");
  for (const node of form.querySelectorAll(".field-error")) node.remove();
}

/**
 * Show a problem+json answer: its title and detail on top, then one line per field error
 * ("optimizer.lr: Input should be less than or equal to 100"), and mark the inputs concerned.
 */
function showProblem(form, problem, status) {
  const box = $("submit-problem");
  const errors = (problem && problem.errors) || [];
  replace(
    box,
    el("strong", { text: `${status || ""} ${problem?.title || "Request failed"}`.trim() }),
    // With field errors the list below says it all (detail only repeats it).
    problem?.detail && !errors.length ? el("p", { text: problem.detail }) : null,
  );
  if (errors.length) {
    const list = el("ul", { class: "field-errors" });
    for (const error of errors) {
      const path = fieldPath(error.loc);
      list.append(el("li", {}, el("code", { text: path || "spec" }), `: ${error.msg}`));
      markField(form, path, error.msg);
    }
    box.append(list);
  }
  box.hidden = false;
}

/** ["body", "optimizer", "lr"] -> "optimizer.lr"; list indices ("model.hidden.0") stay. */
function fieldPath(loc) {
  return (loc || []).filter((part, i) => !(i === 0 && part === "body")).join(".");
}

function markField(form, path, message) {
  // "model.hidden.2" belongs to the "model.hidden" input.
  let input = null;
  for (let parts = path.split("."); parts.length && !input; parts.pop()) {
    input = form.elements.namedItem(parts.join("."));
  }
  if (!input || !input.closest) return;
  input.classList.add("invalid");
  const label = input.closest("label");
  if (label && !label.querySelector(".field-error")) {
    label.append(el("span", { class: "field-error", text: message }));
  }
}

// data_path only means something for the file datasets: show it only for them.
function toggleDataPath() {
  const form = $("submit-form");
  const needsPath = ["mnist_idx", "npz"].includes(form.elements.dataset.value);
  form.querySelector(".data-path").hidden = !needsPath;
}
