// What the page is currently showing, shared by the views that read it.

export const state = {
  selected: new Set(), // run ids ticked for comparison (runs list and compare picker)
  runs: [], // the latest page of GET /runs
};

// Exposed for tests and for poking at in the console: how many points the charts drew.
// liveLog records how the run view got its updates ("live (SSE)", "live (polling)", ...).
export const debug = { plotted: { acc: 0, loss: 0, pct: 0 }, liveLog: [], state };
window.bnlab = debug;
