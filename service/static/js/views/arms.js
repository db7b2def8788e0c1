// Arms (runs that differ only by seed) as mean ± 95 % CI bands, and the arms' table; shared by
// the compare view and the sweep page. The numbers come from GET /api/v1/compare: its `runs`
// carry each run's downsampled curves and arm label, its `arms` the bootstrap statistics.

import { drawChart, ema, PALETTE } from "../chart.js";
import { el, replace } from "../dom.js";
import { fmtNum, fmtPct, splitRunName } from "../format.js";
import { smoothingWeight } from "../smoothing.js";

const GRID_POINTS = 200;
// Student's t, 97.5th percentile, for 1..30 degrees of freedom (then the normal's 1.96).
const T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201,
  2.179, 2.16, 2.145, 2.131, 2.12, 2.11, 2.101, 2.093, 2.086, 2.08, 2.074, 2.069, 2.064, 2.06,
  2.056, 2.052, 2.048, 2.045, 2.042];

/** Linear interpolation of sorted [[x, y|null], ...] at x; null outside the curve or in a gap. */
function interpolate(points, x) {
  if (!points.length || x < points[0][0] || x > points.at(-1)[0]) return null;
  let hi = points.findIndex((p) => p[0] >= x);
  if (points[hi][0] === x) return points[hi][1];
  const [x0, y0] = points[hi - 1];
  const [x1, y1] = points[hi];
  if (y0 === null || y1 === null) return null;
  return y0 + ((y1 - y0) * (x - x0)) / (x1 - x0);
}

/** Steps where the arm's curves are compared: the runs' own steps, thinned to GRID_POINTS. */
function stepGrid(curves) {
  const steps = [...new Set(curves.flatMap((c) => c.map((p) => p[0])))].sort((a, b) => a - b);
  if (steps.length <= GRID_POINTS) return steps;
  const every = steps.length / GRID_POINTS;
  return Array.from({ length: GRID_POINTS }, (_, i) => steps[Math.floor(i * every)]).concat(steps.at(-1));
}

/**
 * One arm's curve for `key`: mean over its runs at each step, and a 95 % t-interval for the mean
 * where two or more runs have a value there. {points: [[x, mean]], band: [[x, lo, hi]]}
 */
export function armCurve(runs, key, smooth) {
  const curves = runs
    .map((run) => (run.curves?.[key] || []).filter((p) => p[1] === null || Number.isFinite(p[1])))
    .filter((c) => c.length)
    .map((c) => (smooth ? ema(c, smoothingWeight()) : c));
  const points = [];
  const band = [];
  for (const x of stepGrid(curves)) {
    const ys = curves.map((c) => interpolate(c, x)).filter((y) => y !== null && Number.isFinite(y));
    if (!ys.length) {
      points.push([x, null]);
      band.push([x, null, null]);
      continue;
    }
    const n = ys.length;
    const mean = ys.reduce((a, b) => a + b, 0) / n;
    points.push([x, mean]);
    if (n < 2) {
      band.push([x, null, null]);
      continue;
    }
    const sd = Math.sqrt(ys.reduce((a, y) => a + (y - mean) ** 2, 0) / (n - 1));
    const half = (T975[n - 2] ?? 1.96) * (sd / Math.sqrt(n));
    band.push([x, mean - half, mean + half]);
  }
  return { points, band };
}

/** Draw the arms' test accuracy and training loss (smoothed) into two canvases. */
export function drawArmCharts(cmp, accCanvas, lossCanvas) {
  const arms = cmp.arms || [];
  const runsOf = (arm) => cmp.runs.filter((r) => arm.run_ids.includes(r.id));
  const series = (key, smooth) => arms.map((arm, i) => ({
    label: `${arm.label || "all"} (n=${arm.n})`,
    color: PALETTE[i % PALETTE.length],
    width: arm.is_baseline ? 2.5 : 2,
    ...armCurve(runsOf(arm), key, smooth),
  }));
  const acc = drawChart(accCanvas, {
    series: series("test_acc", false), xLabel: "step", yLabel: "test accuracy", xMin: 0,
    yClamp: [0, 1], empty: "no test accuracy yet",
  });
  const loss = drawChart(lossCanvas, {
    series: series("train_loss", true), xLabel: "step", yLabel: "train loss (EMA)", xMin: 0,
    yMin: 0, yScale: "auto", empty: "no training loss yet",
  });
  return { acc, loss };
}

/** {mean, ci_low, ci_high, bound} -> "1.9× [1.2×, 3.1×]" ("≥"/"≤" for a censored bound). */
export function statText(stat, fmt) {
  if (!stat || stat.mean === null || stat.mean === undefined) return "—";
  const prefix = stat.bound === "lower" ? "≥ " : stat.bound === "upper" ? "≤ " : "";
  const has = (v) => v !== null && v !== undefined;
  const ci = has(stat.ci_low) && has(stat.ci_high) ? ` [${fmt(stat.ci_low)}, ${fmt(stat.ci_high)}]` : "";
  return `${prefix}${fmt(stat.mean)}${ci}`;
}

/** The arms' table body: one row per arm, the colour swatch matching the charts. */
export function renderArmsTable(tbody, cmp) {
  const isAcc = cmp.metric.endsWith("_acc");
  const fmtBest = (v) => (isAcc ? fmtPct(v) : fmtNum(v, 4));
  replace(tbody, ...(cmp.arms || []).map((arm, i) => el(
    "tr",
    { class: arm.is_baseline ? "baseline" : null },
    el("td", { class: "name" },
      el("span", { class: "nowrap" }, swatch(PALETTE[i % PALETTE.length]), arm.label || "all"),
      arm.is_baseline ? el("span", { class: "tag", text: "baseline" }) : null),
    el("td", { class: "num", text: arm.n }),
    el("td", { class: "num", text: `${arm.n_reached} / ${arm.n}` }),
    el("td", { class: "num", text: statText(arm.best, fmtBest) }),
    el("td", { class: "num", text: statText(arm.steps_to_target, (v) => fmtNum(Math.round(v))) }),
    el("td", { class: "num", text: statText(arm.speedup, (v) => `${v.toFixed(2)}×`) }),
    el("td", { class: "num", text: arm.p_value === null || arm.p_value === undefined ? "—" : arm.p_value.toPrecision(2) }),
  )));
}

/** A run's name cell: the part that tells sweep runs apart in full, the sweep's name muted. */
export function runNameCell(run, href) {
  const { base, detail } = splitRunName(run.name);
  const link = el("a", { href, title: run.name }, detail ? el("span", { text: detail }) : base);
  return el("td", { class: "name" }, link, detail ? el("span", { class: "muted small", text: ` ${base}` }) : null);
}

/** A colour square (set through CSSOM: the page's CSP forbids style attributes). */
function swatch(color) {
  const node = el("span", { class: "swatch" });
  node.style.backgroundColor = color;
  return node;
}
