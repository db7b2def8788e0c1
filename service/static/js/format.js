// Numbers, times and ids as people read them.

import { vocab } from "./api.js";

const missing = (value) => value === null || value === undefined || !Number.isFinite(value);

/** Scientific notation without the "+": 5436508000 -> "5.44e9". */
function scientific(value, digits) {
  return value.toExponential(digits - 1).replace(/\.?0+e/, "e").replace("e+", "e");
}

export function fmtNum(value, digits = 3) {
  if (missing(value)) return "—";
  // A diverged loss can be astronomically large: a digit string would be unreadable.
  if (Math.abs(value) >= 1e6) return scientific(value, digits);
  if (Math.abs(value) >= 1000 || Number.isInteger(value)) return value.toLocaleString("en");
  return Number(value.toPrecision(digits)).toString();
}

export function fmtPct(value) {
  return missing(value) ? "—" : `${(100 * value).toFixed(1)}%`;
}

export function fmtSeconds(value) {
  if (missing(value)) return "—";
  return value < 60 ? `${value.toFixed(1)} s` : `${(value / 60).toFixed(1)} min`;
}

/** Local time for today's runs, date and time for older ones. */
export function fmtCreated(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso || "—";
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString("en-GB")
    : `${date.toLocaleDateString("en-CA")} ${date.toLocaleTimeString("en-GB").slice(0, 5)}`;
}

/** A chart's tick label, at most ~6 characters: 0.25, 1500, 20k, 5.4e9, 1e-4. */
export function tickLabel(value) {
  const abs = Math.abs(value);
  if (value === 0) return "0";
  if (abs >= 1e6 || abs < 1e-3) return scientific(value, 2);
  if (abs >= 10000) return `${Number((value / 1000).toPrecision(3))}k`;
  return String(Number(value.toPrecision(4)));
}

/** A log axis's tick (a power of ten): 0.01, 0.1, 1, 10, 100, 1000, then 1e4, 1e5, ... */
export function logTickLabel(value) {
  const exponent = Math.round(Math.log10(value));
  return exponent >= 4 || exponent <= -3 ? `1e${exponent}` : String(10 ** exponent);
}

/** The first characters of an id, as the CLI shows them (the length is the server's). */
export function shortId(id) {
  return String(id || "").slice(0, vocab.short_id_length || undefined);
}

/**
 * A run's name as two parts: sweep runs are named "<sweep>[norm=…,lr=…,seed=…]" and differ only
 * inside the brackets, so that part is what must stay visible. {base, detail}; detail may be "".
 */
export function splitRunName(name) {
  const match = /^(.*)\[([^\]]*)\]$/.exec(name || "");
  // A zero-width space after each comma: a narrow column breaks between factors, not inside.
  return match
    ? { base: match[1], detail: match[2].replaceAll(",", ",\u200b") }
    : { base: name || "", detail: "" };
}
