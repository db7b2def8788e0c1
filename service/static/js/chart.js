// A small canvas line chart: axes, ticks, grid, legend, lines with gaps, shaded bands.
//
// drawChart(canvas, opts) -> number of data points drawn (also left on canvas.dataset.points).
// opts: {
//   series: [{label, color, width, alpha, dots, points: [[x, y|null], ...],
//             band: [[x, lo, hi], ...]}],  // band: a shaded area (e.g. a 95 % CI) under the line
//   xLabel, yLabel, xMin, xMax, yMin, yMax, yClamp: [lo, hi],
//   yScale: "linear" | "log" | "auto",  // auto: log when the values span > 3 decades (divergence)
//   empty: "text shown when there is nothing to draw" (or a list of lines),
// }
// A null y breaks the line (a non-finite value in training, e.g. a diverged loss).
// What was drawn is also left on the canvas's data- attributes (points, scale, yTicks, legend,
// bands, message), for tests and for reading in the console.

import { logTickLabel, tickLabel } from "./format.js";

export const COLORS = { test: "#1f6feb", train: "#d9822b", grid: "#e6e8eb", axis: "#57606a" };
// Distinct colours for arms (and for the three percentiles).
export const PALETTE = ["#1f6feb", "#d9822b", "#2da44e", "#a475f9", "#cf222e", "#0e8a9e", "#8c6d1f"];
const FONT = "12px system-ui, sans-serif";
const LOG_AUTO_DECADES = 3;

/** 1, 2 or 5 times a power of ten, about (max - min) / count apart, covering [min, max]. */
export function niceTicks(min, max, count) {
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
  if (ticks[ticks.length - 1] < max) {
    ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  }
  return ticks;
}

/** Powers of ten covering [min, max] (min > 0), thinned to at most ~6 labels. */
function logTicks(min, max) {
  const lo = Math.floor(Math.log10(min));
  const hi = Math.ceil(Math.log10(max));
  const every = Math.max(1, Math.ceil((hi - lo) / 6));
  const ticks = [];
  for (let e = lo; e <= hi; e += every) ticks.push(10 ** e);
  if (Math.log10(ticks[ticks.length - 1]) < hi) ticks.push(10 ** (lo + every * ticks.length));
  return ticks;
}

const isValue = (y) => y !== null && y !== undefined && Number.isFinite(y);

export function drawChart(canvas, opts) {
  const ctx = setupCanvas(canvas);
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  const finite = opts.series.flatMap((s) => s.points.filter((p) => isValue(p[1])));
  if (!finite.length) {
    drawMessage(ctx, width, height, opts.empty || "waiting for data…");
    Object.assign(canvas.dataset, { points: "0", scale: "", yTicks: "", legend: "", bands: "0" });
    canvas.dataset.message = [].concat(opts.empty || "waiting for data…").join("\n");
    return 0;
  }

  // x from the options (0 .. spec.steps shows progress) or the data; y from the data (and bands).
  const xs = finite.map((p) => p[0]);
  const ys = finite.map((p) => p[1]);
  for (const s of opts.series) {
    for (const [, lo, hi] of s.band || []) if (isValue(lo) && isValue(hi)) ys.push(lo, hi);
  }
  const xMin = opts.xMin ?? Math.min(...xs);
  const xMax = Math.max(opts.xMax ?? 0, ...xs);
  const log = useLog(opts.yScale, ys);
  const y = log ? logAxis(ys) : linearAxis(ys, opts);

  // The left margin fits the widest tick label, so labels are never clipped; the legend takes
  // as many rows above the plot as it needs.
  ctx.font = FONT;
  const yLabel = log ? logTickLabel : tickLabel;
  const labelWidth = Math.max(...y.ticks.map((t) => ctx.measureText(yLabel(t)).width));
  const legend = opts.series.filter((s) => s.points.length && s.label);
  const plot = { left: Math.ceil(labelWidth) + 34, right: width - 16, top: 0, bottom: height - 44 };
  const rows = legendRows(ctx, legend, plot.right - plot.left);
  plot.top = 16 + 20 * rows.length;
  const xPx = (x) => plot.left + ((x - xMin) / (xMax - xMin || 1)) * (plot.right - plot.left);
  const yPx = (v) => plot.bottom - y.frac(v) * (plot.bottom - plot.top);
  const xTicks = niceTicks(xMin, xMax, Math.max(2, Math.floor((plot.right - plot.left) / 90)));

  drawAxes(ctx, plot, xTicks.filter((t) => t >= xMin && t <= xMax), y.ticks, xPx, yPx, opts, yLabel);

  // Lines and bands, clipped to the plot area.
  let drawn = 0;
  ctx.save();
  ctx.beginPath();
  ctx.rect(plot.left, plot.top - 4, plot.right - plot.left + 6, plot.bottom - plot.top + 8);
  ctx.clip();
  let bands = 0;
  for (const s of opts.series) if (s.band) bands += drawBand(ctx, s, xPx, yPx, log);
  // Thin background series first, so the main (thick) one stays on top.
  for (const s of [...opts.series].reverse()) {
    drawn += drawLine(ctx, s, xPx, (v) => (log && v <= 0 ? null : yPx(v)), plot);
  }
  ctx.restore();

  drawLegend(ctx, plot, rows);
  Object.assign(canvas.dataset, {
    points: String(drawn),
    scale: log ? "log" : "linear",
    yTicks: y.ticks.map(yLabel).join("|"),
    legend: legend.map((s) => s.label).join("|"),
    bands: String(bands),
    message: "",
  });
  return drawn;
}

/** One or more centred lines, each cut with "…" to the canvas width. */
function drawMessage(ctx, width, height, message) {
  const lines = Array.isArray(message) ? message : [message];
  ctx.fillStyle = COLORS.axis;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  lines.forEach((text, i) => {
    ctx.font = i === 0 ? "600 14px system-ui, sans-serif" : "13px system-ui, sans-serif";
    let shown = String(text);
    while (shown.length > 1 && ctx.measureText(shown).width > width - 24) {
      shown = `${shown.slice(0, -2)}…`;
    }
    ctx.fillText(shown, width / 2, height / 2 + (i - (lines.length - 1) / 2) * 22);
  });
}

function useLog(scale, ys) {
  if (scale === "log") return true;
  if (scale !== "auto") return false;
  const positive = ys.filter((v) => v > 0);
  if (positive.length < ys.length || !positive.length) return false;
  return Math.log10(Math.max(...positive) / Math.min(...positive)) > LOG_AUTO_DECADES;
}

function linearAxis(ys, opts) {
  const ticks = niceTicks(opts.yMin ?? Math.min(...ys), opts.yMax ?? Math.max(...ys), 5);
  let lo = ticks[0];
  let hi = ticks[ticks.length - 1];
  if (opts.yClamp) {
    lo = Math.max(lo, opts.yClamp[0]);
    hi = Math.min(hi, opts.yClamp[1]);
  }
  return {
    ticks: ticks.filter((t) => t >= lo && t <= hi),
    frac: (v) => (v - lo) / (hi - lo || 1),
  };
}

function logAxis(ys) {
  const positive = ys.filter((v) => v > 0);
  const ticks = logTicks(Math.min(...positive), Math.max(...positive));
  const lo = Math.log10(ticks[0]);
  const hi = Math.log10(ticks[ticks.length - 1]);
  return { ticks, frac: (v) => (Math.log10(v) - lo) / (hi - lo || 1) };
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

function drawAxes(ctx, plot, xTicks, yTicks, xPx, yPx, opts, yLabel) {
  ctx.font = FONT;
  ctx.lineWidth = 1;
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
    ctx.fillText(yLabel(t), plot.left - 8, y);
  }
  ctx.strokeStyle = COLORS.axis;
  line(ctx, plot.left + 0.5, plot.top, plot.left + 0.5, plot.bottom + 0.5);
  line(ctx, plot.left, plot.bottom + 0.5, plot.right, plot.bottom + 0.5);
  ctx.textAlign = "center";
  ctx.textBaseline = "bottom";
  ctx.fillText(opts.xLabel || "", (plot.left + plot.right) / 2, plot.bottom + 40);
  ctx.save();
  ctx.translate(12, (plot.top + plot.bottom) / 2);
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

/** A shaded area between lo and hi; a missing value splits it. Returns the points shaded. */
function drawBand(ctx, s, xPx, yPx, log) {
  const ok = ([, lo, hi]) => isValue(lo) && isValue(hi) && (!log || lo > 0);
  ctx.fillStyle = s.color;
  ctx.globalAlpha = 0.18;
  let shaded = 0;
  let run = [];
  const flush = () => {
    if (run.length > 1) {
      ctx.beginPath();
      run.forEach(([x, , hi], i) => (i ? ctx.lineTo(xPx(x), yPx(hi)) : ctx.moveTo(xPx(x), yPx(hi))));
      for (const [x, lo] of [...run].reverse()) ctx.lineTo(xPx(x), yPx(lo));
      ctx.closePath();
      ctx.fill();
      shaded += run.length;
    }
    run = [];
  };
  for (const point of s.band) {
    if (ok(point)) run.push(point);
    else flush();
  }
  flush();
  ctx.globalAlpha = 1;
  return shaded;
}

/** One series; with more points than pixels, keep each pixel column's min and max. */
function drawLine(ctx, s, xPx, yPx, plot) {
  const points = thin(s.points, xPx, Math.max(1, plot.right - plot.left));
  ctx.strokeStyle = s.color;
  ctx.globalAlpha = s.alpha ?? 1;
  ctx.lineWidth = s.width ?? 1.5;
  ctx.lineJoin = "round";
  ctx.setLineDash(s.dash || []);
  ctx.beginPath();
  let penDown = false;
  let count = 0;
  for (const [x, y] of points) {
    const py = isValue(y) ? yPx(y) : null;
    if (py === null) {
      penDown = false; // a gap: do not join across a missing value
      continue;
    }
    if (penDown) ctx.lineTo(xPx(x), py);
    else ctx.moveTo(xPx(x), py);
    penDown = true;
    count++;
  }
  ctx.stroke();
  ctx.setLineDash([]);
  // Sparse series (evaluations) get dots, so that a single point is visible too.
  if (s.dots && points.length <= 200) {
    ctx.fillStyle = s.color;
    for (const [x, y] of points) {
      const py = isValue(y) ? yPx(y) : null;
      if (py === null) continue;
      ctx.beginPath();
      ctx.arc(xPx(x), py, 2.5, 0, 2 * Math.PI);
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
    if (!isValue(p[1])) {
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

const LEGEND_GAP = 14;
const legendWidth = (ctx, s) => 24 + ctx.measureText(s.label).width;

/** The legend's entries in rows that fit the plot's width (first row at the top). */
function legendRows(ctx, series, width) {
  const rows = [];
  let row = [];
  let used = 0;
  for (const s of series) {
    const w = legendWidth(ctx, s);
    if (row.length && used + LEGEND_GAP + w > width) {
      rows.push(row);
      row = [];
      used = 0;
    }
    used += (row.length ? LEGEND_GAP : 0) + w;
    row.push(s);
  }
  if (row.length) rows.push(row);
  return rows;
}

/** The legend above the plot, each row right-aligned. */
function drawLegend(ctx, plot, rows) {
  ctx.font = FONT;
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  rows.forEach((row, i) => {
    const y = 10 + 20 * i;
    const total = row.reduce((sum, s) => sum + legendWidth(ctx, s), 0) + LEGEND_GAP * (row.length - 1);
    let x = plot.right - total;
    for (const s of row) {
      ctx.strokeStyle = s.color;
      ctx.lineWidth = 3;
      line(ctx, x, y, x + 20, y);
      ctx.fillStyle = "#24292f";
      ctx.fillText(s.label, x + 24, y);
      x += legendWidth(ctx, s) + LEGEND_GAP;
    }
  });
}

/**
 * Exponential moving average (TensorBoard's, bias-corrected) of [[x, y|null], ...]; a gap
 * stays a gap. weight 0 returns the points unchanged.
 */
export function ema(points, weight) {
  if (!(weight > 0)) return points;
  let avg = 0;
  let n = 0;
  return points.map(([x, y]) => {
    if (!isValue(y)) return [x, null];
    n += 1;
    avg = weight * avg + (1 - weight) * y;
    return [x, avg / (1 - weight ** n)];
  });
}
