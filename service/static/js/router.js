// Views are chosen by the URL hash so each one can be linked:
//   #/runs                            runs list + submit form
//   #/run/ID                          one run, with live curves (SSE, polling as a fallback)
//   #/compare?runs=A,B[&baseline=A]   speed-up table, arm bands and the server-rendered plot
//   #/sweeps                          the list of sweeps
//   #/sweep/ID                        one sweep: arm curves (mean ± 95 % CI) and the arms' table

import { $, showBanner } from "./dom.js";

export function parseHash() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean);
  return { view: parts[0] || "runs", id: parts[1], params: new URLSearchParams(query) };
}

export function compareHash(ids, baseline) {
  let hash = `#/compare?runs=${[...ids].map(encodeURIComponent).join(",")}`;
  if (baseline) hash += `&baseline=${encodeURIComponent(baseline)}`;
  return hash;
}

/**
 * views: name -> {section (element id), nav (the top-bar link it lights), needsId,
 * open(id, params), close()}. An unknown view, or one that needs an id without one, is "runs".
 */
export function startRouter(views) {
  let current = null;
  const route = () => {
    const { view, id, params } = parseHash();
    current?.close?.();
    showBanner("");
    const name = views[view] && (!views[view].needsId || id) ? view : "runs";
    current = views[name];
    for (const [other, spec] of Object.entries(views)) $(spec.section).hidden = other !== name;
    for (const link of document.querySelectorAll("[data-nav]")) {
      link.classList.toggle("active", link.dataset.nav === current.nav);
    }
    current.open(id === undefined ? undefined : decodeURIComponent(id), params);
  };
  window.addEventListener("hashchange", route);
  route();
}
