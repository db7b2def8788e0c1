"""Running the suite through the public API: submit the sweeps, wait, analyse, write the report.

    with BnlabClient("http://host:8000") as client:            # or embedded.embedded_client()
        result = run_suite(client, quick=True, only=None, out_dir=Path("docs"))

The runner talks to the server only through :class:`service.client.BnlabClient`
(POST /sweeps, GET /sweeps/{id}, GET /compare, GET /compare/plot), so it runs the same against
an embedded in-process server or a remote deployment. It knows no experiment by name: it
submits the sweeps that the selected entries of ``experiments.EXPERIMENTS`` name (each sweep
once, however many experiments share it), then hands each experiment its sweep and comparison
and collects the findings for ``report.write_report``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service.client import BnlabClient
from service.reproduce.experiments import Experiment, select_experiments
from service.reproduce.plan import PROFILES, SweepPlan, describe_plan, sweep_plans
from service.reproduce.report import REPORT_NAME, bar_figure, write_report
from service.reproduce.results import ExperimentResult, SuiteResult, SweepData
from service.vocab import FINISHED_STATUSES, RunStatus

Progress = Callable[[int, int, str], None]  # (runs finished, runs in the suite, message)
POLL_INTERVAL_S = 2.0
COMPARE_POINTS = 1000  # enough to keep every evaluation of every run (no downsampling)


def submit_sweeps(
    client: BnlabClient, plans: Sequence[SweepPlan], label: str
) -> dict[str, dict[str, Any]]:
    """POST every sweep up front, so the server can work on all of them at once."""
    return {p.key: client.sweep(f"reproduce-{label}-{p.key}", p.base, p.grid) for p in plans}


def wait_for_sweeps(
    client: BnlabClient,
    sweep_ids: Sequence[str],
    progress: Progress | None = None,
    poll_interval: float = POLL_INTERVAL_S,
    timeout: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Poll GET /sweeps/{id} until every run has finished; report progress over all of them."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        sweeps = {sid: client.get_sweep(sid) for sid in sweep_ids}
        runs = [r for s in sweeps.values() for r in s["runs"]]
        done = sum(r["status"] in FINISHED_STATUSES for r in runs)
        if progress is not None:
            running = sum(r["status"] == RunStatus.running for r in runs)
            progress(done, len(runs), f"{running} running")
        if done == len(runs):
            return sweeps
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{len(runs) - done} of {len(runs)} runs still unfinished")
        time.sleep(poll_interval)


def run_experiment(
    client: BnlabClient,
    experiment: Experiment,
    plan: SweepPlan,
    sweep: dict[str, Any],
    figures_dir: Path,
    plotted: set[Path],
) -> ExperimentResult:
    """Fetch the experiment's comparison and figure from the API, then analyse the numbers.
    ``plotted``: figures this suite already wrote (shared by experiments on one sweep)."""
    query = experiment.compare_query(plan, sweep["runs"]) if experiment.compare_query else {}
    comparison = client.compare(sweep=sweep["id"], points=COMPARE_POINTS, **query)
    data = SweepData(plan, sweep["id"], sweep["runs"], comparison)
    finding = experiment.analyse(data)
    # One comparison figure per sweep (and query): experiments sharing a sweep share it.
    figure = figures_dir / ("-".join([plan.key, *map(str, query)]) + ".png")
    if figure not in plotted:
        figure.write_bytes(client.compare_plot(sweep=sweep["id"], fmt="png", **query))
        plotted.add(figure)
    figures = [figure]
    if finding.bars:
        figures.insert(0, figures_dir / f"{experiment.name}-summary.png")
        figures[0].write_bytes(bar_figure(finding.bars_title, finding.bars))
    return ExperimentResult(
        name=experiment.name,
        title=experiment.title,
        claim=experiment.claim,
        paper=experiment.paper,
        sweep=plan.key,
        sweep_id=sweep["id"],
        settings=describe_plan(plan),
        finding=finding,
        figures=[f"{figures_dir.name}/{path.name}" for path in figures],
    )


def _environment(sweeps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    runs = [r for s in sweeps.values() for r in s["runs"]]
    return {
        "torch": sorted({r.get("torch_version") for r in runs if r.get("torch_version")}),
        "device": sorted({r.get("device") for r in runs if r.get("device")}),
        "train_seconds": sum(r.get("wall_time") or 0.0 for r in runs),
    }


def run_suite(
    client: BnlabClient,
    *,
    quick: bool,
    only: Sequence[str] | None,
    out_dir: Path,
    progress: Progress | None = None,
    profile: str | None = None,
    poll_interval: float = POLL_INTERVAL_S,
    timeout: float | None = None,
    server_label: str | None = None,
) -> SuiteResult:
    """Run the selected experiments through the API and write ``out_dir/reproduction.md``.

    ``profile`` overrides ``quick`` ("full", "quick", or "tiny" for tests). Figures go to
    ``out_dir/figures``; the numbers also go to ``out_dir/reproduction.json``.
    ``server_label`` names the server in the report (default: the client's base URL).
    """
    chosen = PROFILES[profile or ("quick" if quick else "full")]
    experiments = select_experiments(only)
    all_plans = sweep_plans(chosen)
    plans = [all_plans[key] for key in dict.fromkeys(e.sweep for e in experiments)]
    total = sum(p.runs for p in plans)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    created = submit_sweeps(client, plans, chosen.name)
    if progress is not None:
        progress(0, total, f"{len(plans)} sweeps submitted")
    finished = wait_for_sweeps(
        client, [s["id"] for s in created.values()], progress, poll_interval, timeout
    )
    by_key = {key: finished[sweep["id"]] for key, sweep in created.items()}
    results: list[ExperimentResult] = []
    plotted: set[Path] = set()
    for experiment in experiments:
        if progress is not None:
            progress(total, total, f"analysing {experiment.name}")
        plan = all_plans[experiment.sweep]
        results.append(
            run_experiment(client, experiment, plan, by_key[plan.key], figures_dir, plotted)
        )
    suite = SuiteResult(
        profile=chosen.name,
        out_dir=out_dir,
        report=out_dir / REPORT_NAME,
        results=results,
        wall_time=time.monotonic() - started,
        runs=total,
        environment=_environment(finished),
    )
    write_report(suite, server=server_label or client.base_url)
    return suite
