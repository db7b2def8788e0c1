// bnlab dashboard: runs list, submit form, live run view and compare view.
//
// Plain browser JavaScript, no framework and no build step: the page must work from the files
// bnlab serves itself (no CDN). Views are chosen by the URL hash so each one can be linked:
//   #/runs                       runs list + submit form
//   #/run/ID                     one run, with live curves (SSE, polling as a fallback)
//   #/compare?runs=A,B[&baseline=A]  speed-up table and the server-rendered plot
"use strict";

(() => {
  const API = "/api/v1";
  const RUNS_REFRESH_MS = 3000;
  const POLL_MS = 2000;
  const FINISHED = new Set(["succeeded", "failed", "diverged", "cancelled"]);
  // The keys the run view draws; other keys (lr, grad_norm, ...) are left to the API.
  const CHART_KEYS = ["test_acc", "train_acc", "train_loss", "test_loss"];
  const COLORS = { test: "#1f6feb", train: "#d9822b", grid: "#e6e8eb", axis: "#57606a" };

  // Everything the page is currently showing. `live` holds the open EventSource or poll timer
  // of the run view, so leaving the view can stop it.
  const state = {
    selected: new Set(), // run ids ticked for comparison (runs list and compare picker)
    runsTimer: null,
    runs: [], // the latest page of GET /runs
    live: { source: null, pollTimer: null, runId: null, mode: "" },
    run: null, // RunOut of the run view
    series: {}, // key -> {steps: [], values: []} for the run view
    drawPending: false,
  };

  // Exposed for tests and for poking at in the console: how many points the charts drew.
  // liveLog records how the run view got its updates ("live (SSE)", "live (polling)", ...).
  window.bnlab = { plotted: { acc: 0, loss: 0 }, liveLog: [], state };

  // ------------------------------------------------------------------ small helpers

  const $ = (id) => document.getElementById(id);

  /** Create an element: el("td", {class: "num", title: "x"}, "text", childNode, ...). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function fmtNum(value, digits = 3) {
    if (value === null || value === undefined || !Number.isFinite(value)) return "—";
    if (Math.abs(value) >= 1000 || Number.isInteger(value)) return value.toLocaleString("en");
    return Number(value.toPrecision(digits)).toString();
  }

  function fmtPct(value) {
    return value === null || value === undefined ? "—" : `${(100 * value).toFixed(1)}%`;
  }

  function fmtSeconds(value) {
    if (value === null || value === undefined) return "—";
    return value < 60 ? `${value.toFixed(1)} s` : `${(value / 60).toFixed(1)} min`;
  }

  /** Local time for today's runs, date and time for older ones; the ISO time in the tooltip. */
  function fmtCreated(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso || "—";
    const sameDay = date.toDateString() === new Date().toDateString();
    return sameDay
      ? date.toLocaleTimeString("en-GB")
      : `${date.toLocaleDateString("en-CA")} ${date.toLocaleTimeString("en-GB").slice(0, 5)}`;
  }

  function badge(status) {
    return el("span", { class: `badge status-${status}`, text: status });
  }

  function showBanner(message) {
    const banner = $("banner");
    banner.textContent = message;
    banner.hidden = !message;
  }

  // ------------------------------------------------------------------ HTTP

  function authHeaders() {
    const key = localStorage.getItem("bnlab.apiKey");
    return key ? { "X-API-Key": key } : {};
  }

  /**
   * fetch() the API and parse the JSON body. Never throws for HTTP errors: the caller gets
   * {ok, status, body} and decides; a network failure comes back as status 0 with a problem.
   */
  async function api(path, { method = "GET", json } = {}) {
    const headers = { Accept: "application/json", ...authHeaders() };
    const init = { method, headers };
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    }
    let response;
    try {
      response = await fetch(API + path, init);
    } catch (err) {
      return { ok: false, status: 0, body: { title: "Server unreachable", detail: String(err) } };
    }
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = { title: response.statusText, detail: text.slice(0, 300) };
    }
    return { ok: response.ok, status: response.status, body };
  }

  /** One line for a problem+json body: "title: detail". */
  function problemText(problem, status) {
    if (!problem) return `HTTP ${status}`;
    const title = problem.title || `HTTP ${status}`;
    return problem.detail && problem.detail !== title ? `${title}: ${problem.detail}` : title;
  }

  // ------------------------------------------------------------------ routing

  function parseHash() {
    const hash = location.hash.replace(/^#\/?/, "");
    const [path, query = ""] = hash.split("?");
    const parts = path.split("/").filter(Boolean);
    return { view: parts[0] || "runs", id: parts[1], params: new URLSearchParams(query) };
  }

  function route() {
    const { view, id, params } = parseHash();
    stopLive();
    clearInterval(state.runsTimer);
    showBanner("");
    const known = { runs: "view-runs", run: "view-run", compare: "view-compare" };
    const target = known[view] && (view !== "run" || id) ? view : "runs";
    for (const [name, sectionId] of Object.entries(known)) $(sectionId).hidden = name !== target;
    for (const link of document.querySelectorAll("[data-nav]")) {
      link.classList.toggle("active", link.dataset.nav === target);
    }
    if (target === "runs") openRunsView();
    else if (target === "run") openRunView(decodeURIComponent(id));
    else openCompareView(params);
  }

  // ------------------------------------------------------------------ runs list

  function openRunsView() {
    document.title = "Runs · bnlab";
    refreshRuns();
    state.runsTimer = setInterval(refreshRuns, RUNS_REFRESH_MS);
  }

  async function fetchRuns(limit = 50) {
    const result = await api(`/runs?limit=${limit}`);
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
      el("td", {}, el("a", { href: `#/run/${run.id}`, text: run.name })),
      el("td", {}, badge(run.status)),
      el("td", { text: model.norm ?? "—" }),
      el("td", { class: "num", text: fmtNum(optimizer.lr) }),
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

  function compareHash(ids, baseline) {
    let hash = `#/compare?runs=${[...ids].map(encodeURIComponent).join(",")}`;
    if (baseline) hash += `&baseline=${encodeURIComponent(baseline)}`;
    return hash;
  }

  // ------------------------------------------------------------------ submit form

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
    box.replaceChildren(
      el("strong", { text: `${status || ""} ${problem?.title || "Request failed"}`.trim() }),
      // With field errors the list below says it all (detail only repeats it).
      problem?.detail && !errors.length ? el("p", { text: problem.detail }) : null,
    );
    if (errors.length) {
      const list = el("ul");
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

  // ------------------------------------------------------------------ run view

  async function openRunView(runId) {
    state.live.runId = runId;
    state.series = Object.fromEntries(CHART_KEYS.map((k) => [k, { steps: [], values: [] }]));
    state.run = null;
    // Clear what the previous run left, so nothing stale (e.g. its status) shows meanwhile.
    $("run-title").textContent = "Run";
    $("run-status").className = "badge";
    $("run-status").textContent = "";
    $("run-reason").textContent = "";
    $("run-cancel").hidden = true;
    showProgress(0, 0, false);
    $("run-outcome").replaceChildren();
    $("run-spec").replaceChildren();
    $("run-live").textContent = "";
    scheduleDraw();
    const result = await api(`/runs/${encodeURIComponent(runId)}`);
    if (state.live.runId !== runId) return; // the user moved on meanwhile
    if (!result.ok) {
      showBanner(`Could not load run ${runId}. ${problemText(result.body, result.status)}`);
      return;
    }
    renderRun(result.body);
    if (FINISHED.has(result.body.status)) {
      await loadAllMetrics(runId);
      setLiveText("finished");
    } else {
      openStream(runId);
    }
  }

  function renderRun(run) {
    state.run = run;
    document.title = `${run.name} · bnlab`;
    $("run-title").textContent = run.name;
    const status = $("run-status");
    status.className = `badge status-${run.status}`;
    status.textContent = run.status;
    $("run-reason").textContent = run.status_reason || run.error || "";
    showProgress(run.last_step || 0, run.spec?.steps || 0, run.status === "succeeded");
    $("run-cancel").hidden = FINISHED.has(run.status) || run.cancel_requested;
    renderOutcome(run);
    renderSpec(run.spec || {});
    scheduleDraw();
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
    state.live.mode = text;
    window.bnlab.liveLog.push(text);
    $("run-live").textContent = text;
  }

  /** Add one metric point; points arrive in step order, a replayed step is ignored. */
  function addPoint(key, step, value) {
    const series = state.series[key];
    if (!series) return;
    const last = series.steps.length ? series.steps[series.steps.length - 1] : -Infinity;
    if (step <= last) return;
    series.steps.push(step);
    series.values.push(value === null || value === undefined ? null : Number(value));
  }

  // Live updates, first choice: the SSE stream. It replays the run's points from the start and
  // then follows it; EventSource reconnects by itself and resumes with Last-Event-ID.
  function openStream(runId) {
    if (!window.EventSource) return startPolling(runId);
    const source = new EventSource(`${API}/runs/${encodeURIComponent(runId)}/events`);
    state.live.source = source;
    let received = false;
    setLiveText("connecting…");
    source.addEventListener("open", () => setLiveText("live (SSE)"));
    source.addEventListener("status", (event) => {
      received = true;
      renderRun(JSON.parse(event.data));
    });
    source.addEventListener("metrics", (event) => {
      received = true;
      const data = JSON.parse(event.data);
      for (const [key, value] of Object.entries(data.values || {})) addPoint(key, data.step, value);
      if (state.run && data.step > (state.run.last_step || 0)) {
        state.run.last_step = data.step;
        showProgress(data.step, state.run.spec?.steps || 0, false);
      }
      scheduleDraw();
    });
    source.addEventListener("end", () => {
      stopLive();
      setLiveText("finished");
      refreshRunOnce(runId);
    });
    source.addEventListener("error", () => {
      // A stream that never delivered anything and was closed for good (404, 401, a server
      // without SSE) is not coming back: poll the metrics endpoint instead.
      if (!received && source.readyState === EventSource.CLOSED) {
        stopLive();
        startPolling(runId);
      } else if (source.readyState === EventSource.CONNECTING) {
        setLiveText("reconnecting…");
      }
    });
  }

  async function refreshRunOnce(runId) {
    const result = await api(`/runs/${encodeURIComponent(runId)}`);
    if (result.ok && state.live.runId === runId) renderRun(result.body);
  }

  // Live updates, fallback: poll the run and its new metric points every few seconds.
  function startPolling(runId) {
    state.live.runId = runId;
    setLiveText("live (polling)");
    const tick = async () => {
      const result = await api(`/runs/${encodeURIComponent(runId)}`);
      if (state.live.runId !== runId) return;
      if (result.ok) renderRun(result.body);
      await loadNewMetrics(runId);
      if (result.ok && FINISHED.has(result.body.status)) {
        stopLive();
        setLiveText("finished");
        return;
      }
      state.live.pollTimer = setTimeout(tick, POLL_MS);
    };
    tick();
  }

  /**
   * Fetch the points from the last step we have on, following next_cursor to the end. The
   * last step is fetched again: its evaluation may be written after its training metrics, and
   * addPoint drops what we already have.
   */
  async function loadNewMetrics(runId) {
    const lastSeen = Math.max(0, ...CHART_KEYS.map((k) => state.series[k].steps.at(-1) ?? 0));
    const base = `keys=${CHART_KEYS.join(",")}&step_min=${lastSeen}`;
    let query = base;
    for (let page = 0; page < 100; page++) {
      const result = await api(`/runs/${encodeURIComponent(runId)}/metrics?${query}`);
      if (!result.ok || state.live.runId !== runId) return;
      appendSeries(result.body.series);
      if (!result.body.next_cursor) break;
      query = `${base}&cursor=${encodeURIComponent(result.body.next_cursor)}`;
    }
    scheduleDraw();
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

  function appendSeries(series) {
    for (const [key, data] of Object.entries(series || {})) {
      data.steps.forEach((step, i) => addPoint(key, step, data.values[i]));
    }
  }

  function stopLive() {
    if (state.live.source) state.live.source.close();
    clearTimeout(state.live.pollTimer);
    state.live.source = null;
    state.live.pollTimer = null;
  }

  async function cancelRun() {
    const runId = state.live.runId;
    const result = await api(`/runs/${encodeURIComponent(runId)}/cancel`, { method: "POST" });
    if (result.ok) renderRun(result.body);
    else showBanner(`Could not cancel. ${problemText(result.body, result.status)}`);
  }

  // Metric events can arrive hundreds per second: draw at most once per animation frame.
  function scheduleDraw() {
    if (state.drawPending) return;
    state.drawPending = true;
    requestAnimationFrame(() => {
      state.drawPending = false;
      drawRunCharts();
    });
  }

  function drawRunCharts() {
    const s = state.series;
    const xMax = state.run?.spec?.steps;
    const pairs = (key) => s[key].steps.map((step, i) => [step, s[key].values[i]]);
    window.bnlab.plotted.acc = drawChart($("chart-acc"), {
      series: [
        { label: "test", color: COLORS.test, width: 2.5, dots: true, points: pairs("test_acc") },
        { label: "train (batch)", color: COLORS.train, width: 1, alpha: 0.6, points: pairs("train_acc") },
      ],
      xLabel: "step", yLabel: "accuracy", xMin: 0, xMax, yClamp: [0, 1],
    });
    window.bnlab.plotted.loss = drawChart($("chart-loss"), {
      series: [
        { label: "test", color: COLORS.test, width: 2.5, dots: true, points: pairs("test_loss") },
        { label: "train (batch)", color: COLORS.train, width: 1, alpha: 0.6, points: pairs("train_loss") },
      ],
      xLabel: "step", yLabel: "cross-entropy loss", xMin: 0, xMax, yMin: 0,
    });
  }

  // ------------------------------------------------------------------ line chart

  /** 1, 2 or 5 times a power of ten, about (max - min) / count apart, covering [min, max]. */
  function niceTicks(min, max, count) {
    if (!(max > min)) {
      const pad = Math.abs(min) * 0.1 || 1;
      return niceTicks(min - pad, max + pad, count);
    }
    const raw = (max - min) / count;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const ticks = [];
    for (let t = Math.floor(min / step) * step; t <= max + step * 1e-9; t += step) {
      ticks.push(Number(t.toPrecision(12)));
    }
    if (ticks[ticks.length - 1] < max) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
    return ticks;
  }

  function tickLabel(value) {
    if (Math.abs(value) >= 10000) return `${value / 1000}k`;
    return String(Number(value.toPrecision(6)));
  }

  /**
   * Draw line series on a canvas with axes, ticks, grid and a legend. Returns the number of
   * data points drawn (also left on canvas.dataset.points).
   *
   * opts: {series: [{label, color, width, alpha, points: [[x, y|null], ...]}],
   *        xLabel, yLabel, xMin, xMax, yMin, yMax, yClamp: [lo, hi]}
   * A null y breaks the line (a non-finite value in training, e.g. a diverged loss).
   */
  function drawChart(canvas, opts) {
    const ctx = setupCanvas(canvas);
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    const plot = { left: 64, right: width - 16, top: 34, bottom: height - 44 };
    const finite = opts.series.flatMap((s) => s.points.filter((p) => p[1] !== null && Number.isFinite(p[1])));
    if (!finite.length) {
      ctx.fillStyle = COLORS.axis;
      ctx.font = "14px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.fillText("waiting for data…", width / 2, height / 2);
      canvas.dataset.points = "0";
      return 0;
    }

    // Domains: x from the options (0 .. spec.steps shows progress) or the data; y from the data.
    const xs = finite.map((p) => p[0]);
    const ys = finite.map((p) => p[1]);
    const xMin = opts.xMin ?? Math.min(...xs);
    const xMax = Math.max(opts.xMax ?? 0, ...xs);
    let yMin = opts.yMin ?? Math.min(...ys);
    let yMax = opts.yMax ?? Math.max(...ys);
    const xTicks = niceTicks(xMin, xMax, 6).filter((t) => t >= xMin && t <= xMax);
    const yTicks = niceTicks(yMin, yMax, 5);
    yMin = yTicks[0];
    yMax = yTicks[yTicks.length - 1];
    if (opts.yClamp) {
      yMin = Math.max(yMin, opts.yClamp[0]);
      yMax = Math.min(yMax, opts.yClamp[1]);
    }
    const xPx = (x) => plot.left + ((x - xMin) / (xMax - xMin || 1)) * (plot.right - plot.left);
    const yPx = (y) => plot.bottom - ((y - yMin) / (yMax - yMin || 1)) * (plot.bottom - plot.top);

    drawAxes(ctx, plot, xTicks, yTicks.filter((t) => t >= yMin && t <= yMax), xPx, yPx, opts);

    // Lines, clipped to the plot area.
    let drawn = 0;
    ctx.save();
    ctx.beginPath();
    ctx.rect(plot.left, plot.top - 4, plot.right - plot.left + 6, plot.bottom - plot.top + 8);
    ctx.clip();
    // Thin background series first, so the main (thick) one stays on top.
    for (const s of [...opts.series].reverse()) drawn += drawLine(ctx, s, xPx, yPx, plot);
    ctx.restore();

    drawLegend(ctx, plot, opts.series.filter((s) => s.points.length));
    canvas.dataset.points = String(drawn);
    return drawn;
  }

  /** Size the backing store to the element's CSS size times the pixel ratio (sharp on HiDPI). */
  function setupCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 640;
    const height = canvas.clientHeight || 300;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    return ctx;
  }

  function drawAxes(ctx, plot, xTicks, yTicks, xPx, yPx, opts) {
    ctx.font = "12px system-ui, sans-serif";
    ctx.lineWidth = 1;
    // Grid and tick labels.
    ctx.strokeStyle = COLORS.grid;
    ctx.fillStyle = COLORS.axis;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const t of xTicks) {
      const x = Math.round(xPx(t)) + 0.5;
      line(ctx, x, plot.top, x, plot.bottom);
      ctx.fillText(tickLabel(t), x, plot.bottom + 6);
    }
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const t of yTicks) {
      const y = Math.round(yPx(t)) + 0.5;
      line(ctx, plot.left, y, plot.right, y);
      ctx.fillText(tickLabel(t), plot.left - 8, y);
    }
    // Axis lines.
    ctx.strokeStyle = COLORS.axis;
    line(ctx, plot.left + 0.5, plot.top, plot.left + 0.5, plot.bottom + 0.5);
    line(ctx, plot.left, plot.bottom + 0.5, plot.right, plot.bottom + 0.5);
    // Axis titles.
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    ctx.fillText(opts.xLabel || "", (plot.left + plot.right) / 2, plot.bottom + 40);
    ctx.save();
    ctx.translate(16, (plot.top + plot.bottom) / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = "middle";
    ctx.fillText(opts.yLabel || "", 0, 0);
    ctx.restore();
  }

  function line(ctx, x0, y0, x1, y1) {
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    ctx.lineTo(x1, y1);
    ctx.stroke();
  }

  /** One series; with more points than pixels, keep each pixel column's min and max. */
  function drawLine(ctx, s, xPx, yPx, plot) {
    const points = thin(s.points, xPx, Math.max(1, plot.right - plot.left));
    ctx.strokeStyle = s.color;
    ctx.globalAlpha = s.alpha ?? 1;
    ctx.lineWidth = s.width ?? 1.5;
    ctx.lineJoin = "round";
    ctx.beginPath();
    let penDown = false;
    let count = 0;
    for (const [x, y] of points) {
      if (y === null || !Number.isFinite(y)) {
        penDown = false; // a gap: do not join across a missing value
        continue;
      }
      if (penDown) ctx.lineTo(xPx(x), yPx(y));
      else ctx.moveTo(xPx(x), yPx(y));
      penDown = true;
      count++;
    }
    ctx.stroke();
    // Sparse series (evaluations) get dots, so that a single point is visible too.
    if (s.dots && points.length <= 200) {
      ctx.fillStyle = s.color;
      for (const [x, y] of points) {
        if (y === null || !Number.isFinite(y)) continue;
        ctx.beginPath();
        ctx.arc(xPx(x), yPx(y), 2.5, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
    ctx.globalAlpha = 1;
    return count;
  }

  function thin(points, xPx, pixels) {
    if (points.length <= 2 * pixels) return points;
    const out = [];
    let column = null;
    let lo = null;
    let hi = null;
    const flush = () => {
      if (lo) out.push(...(lo[0] <= hi[0] ? [lo, hi] : [hi, lo]));
    };
    for (const p of points) {
      if (p[1] === null || !Number.isFinite(p[1])) {
        flush();
        out.push(p);
        column = null;
        lo = hi = null;
        continue;
      }
      const c = Math.floor(xPx(p[0]));
      if (c !== column) {
        flush();
        column = c;
        lo = hi = p;
      } else {
        if (p[1] < lo[1]) lo = p;
        if (p[1] > hi[1]) hi = p;
      }
    }
    flush();
    return out;
  }

  function drawLegend(ctx, plot, series) {
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    ctx.textAlign = "left";
    let x = plot.right;
    // Right-aligned, laid out from the right edge leftwards.
    for (const s of [...series].reverse()) {
      const w = ctx.measureText(s.label).width;
      x -= w + 30;
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 3;
      line(ctx, x, plot.top - 16, x + 20, plot.top - 16);
      ctx.fillStyle = "#24292f";
      ctx.fillText(s.label, x + 24, plot.top - 16);
      x -= 8;
    }
  }

  // ------------------------------------------------------------------ compare view

  async function openCompareView(params) {
    document.title = "Compare · bnlab";
    const ids = (params.get("runs") || "").split(",").filter(Boolean);
    const baseline = params.get("baseline") || "";
    state.selected = new Set(ids);
    renderPicker(state.runs, ids, baseline); // at once from what we have, then fresh
    const runs = await fetchRuns(100);
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
    const shown = runs.filter((r) => FINISHED.has(r.status) || ids.includes(r.id));
    const picker = $("compare-picker");
    picker.replaceChildren(...shown.map((run) => el(
      "label",
      { class: "pick" },
      el("input", {
        type: "checkbox",
        value: run.id,
        checked: ids.includes(run.id),
        onchange: onPickerChange,
      }),
      el("span", { text: run.name }),
      badge(run.status),
      el("span", { class: "muted small", text: run.spec?.model?.norm || "" }),
    )));
    if (!shown.length) picker.append(el("p", { class: "muted", text: "No finished runs yet." }));

    const select = $("compare-baseline");
    const names = new Map(runs.map((r) => [r.id, r.name]));
    select.replaceChildren(
      el("option", { value: "", text: "automatic" }),
      ...ids.map((id) => el("option", { value: id, text: names.get(id) || id.slice(0, 8), selected: id === baseline })),
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
    const img = $("compare-plot");
    img.src = `${API}/compare/plot?${query}&format=png`;
    $("compare-figure").hidden = false;
    $("compare-links").replaceChildren(
      "Download: ",
      el("a", { href: `${API}/compare?${query}&format=csv`, text: "CSV" }), " · ",
      el("a", { href: `${API}/compare?${query}&format=json`, text: "JSON" }), " · ",
      el("a", { href: `${API}/compare/plot?${query}&format=svg`, text: "SVG" }),
    );
  }

  function renderComparison(cmp) {
    $("compare-result").hidden = false;
    const isAcc = cmp.metric.endsWith("_acc");
    const metric = cmp.metric === "test_acc" ? "test accuracy" : cmp.metric;
    const target = cmp.target === null ? "none" : isAcc ? fmtPct(cmp.target) : fmtNum(cmp.target, 4);
    const baselineRun = cmp.runs.find((r) => r.id === cmp.baseline_id);
    const source = { baseline: "the baseline's best", given: "given", none: "none" }[cmp.target_source] || cmp.target_source;
    $("compare-target").replaceChildren(
      "Target: ", el("strong", { text: cmp.target === null ? "none" : `${target} ${metric}` }),
      ` (${source}). Baseline: `, el("strong", { text: baselineRun ? baselineRun.name : cmp.baseline_id }),
      ". Speed-up = baseline's steps to target ÷ the run's.",
    );
    $("compare-warnings").replaceChildren(...(cmp.warnings || []).map((w) => el("li", { text: w })));

    $("speedup-table").querySelector("tbody").replaceChildren(...cmp.runs.map((run) => {
      const isBaseline = run.id === cmp.baseline_id;
      return el(
        "tr",
        { "data-run-id": run.id, class: isBaseline ? "baseline" : null },
        el("td", {}, el("a", { href: `#/run/${run.id}`, text: run.name }), isBaseline ? el("span", { class: "tag", text: "baseline" }) : null),
        el("td", { text: run.arm }),
        el("td", {}, badge(run.status)),
        el("td", { class: "num", text: fmtPct(run.best_test_acc) }),
        el("td", { class: "num", text: run.reached ? fmtNum(run.steps_to_target) : `not reached (> ${fmtNum(run.budget)})` }),
        el("td", { class: "num speedup", text: speedupText(run.speedup, isBaseline) }),
        el("td", { class: "num", text: fmtSeconds(run.wall_time) }),
      );
    }));

    const arms = cmp.arms || [];
    $("arms-wrap").hidden = !arms.some((a) => a.n > 1);
    $("arms-table").querySelector("tbody").replaceChildren(...arms.map((arm) => el(
      "tr",
      { class: arm.is_baseline ? "baseline" : null },
      el("td", {}, arm.label, arm.is_baseline ? el("span", { class: "tag", text: "baseline" }) : null),
      el("td", { class: "num", text: arm.n }),
      el("td", { class: "num", text: `${arm.n_reached} / ${arm.n}` }),
      el("td", { class: "num", text: statText(arm.steps_to_target, (v) => fmtNum(Math.round(v))) }),
      el("td", { class: "num", text: statText(arm.speedup, (v) => `${v.toFixed(2)}×`) }),
      el("td", { class: "num", text: arm.p_value === null || arm.p_value === undefined ? "—" : arm.p_value.toPrecision(2) }),
    )));
  }

  function speedupText(speedup, isBaseline) {
    if (isBaseline) return "1.00×";
    return speedup === null || speedup === undefined ? "—" : `${speedup.toFixed(2)}×`;
  }

  /** {mean, ci_low, ci_high, bound} -> "1.9× [1.2×, 3.1×]" ("≥"/"≤" for a censored bound). */
  function statText(stat, fmt) {
    if (!stat || stat.mean === null || stat.mean === undefined) return "—";
    const prefix = stat.bound === "lower" ? "≥ " : stat.bound === "upper" ? "≤ " : "";
    const ci = stat.ci_low !== null && stat.ci_low !== undefined && stat.ci_high !== null && stat.ci_high !== undefined
      ? ` [${fmt(stat.ci_low)}, ${fmt(stat.ci_high)}]` : "";
    return `${prefix}${fmt(stat.mean)}${ci}`;
  }

  // ------------------------------------------------------------------ start

  function init() {
    $("submit-form").addEventListener("submit", submitRun);
    $("submit-form").elements.dataset.addEventListener("change", toggleDataPath);
    $("compare-selected").addEventListener("click", () => {
      location.hash = compareHash(state.selected);
    });
    $("compare-baseline").addEventListener("change", onPickerChange);
    $("run-cancel").addEventListener("click", cancelRun);
    const keyInput = $("api-key");
    keyInput.value = localStorage.getItem("bnlab.apiKey") || "";
    keyInput.addEventListener("change", () => {
      if (keyInput.value) localStorage.setItem("bnlab.apiKey", keyInput.value);
      else localStorage.removeItem("bnlab.apiKey");
    });
    // Redraw the charts at the new size when the window changes.
    window.addEventListener("resize", scheduleDraw);
    window.addEventListener("hashchange", route);
    toggleDataPath();
    route();
  }

  init();
})();
