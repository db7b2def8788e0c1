"""Running the suite through the public API: submit the sweeps, wait, analyse, write the report.

    with BnlabClient("http://host:8000") as client:            # or embedded.embedded_client()
        result = run_suite(client, quick=True, only=None, out_dir=Path("docs"))

The runner talks to the server only through :class:`service.client.BnlabClient`
(POST /sweeps and /runs, GET /runs, GET /compare, GET /compare/plot), so it runs the same
against an embedded in-process server or a remote deployment. It knows no experiment by name:
it trains the sweeps that the selected entries of ``experiments.EXPERIMENTS`` name (each sweep
once, however many experiments share it), in stages (``suite_stages``: a sweep whose LR comes
from another's result waits for it), reusing runs already on the server where asked
(``reuse.py``; the paper profile does, so an interrupted suite resumes), with progress over the
whole suite. Then it hands each experiment its runs and their comparison and collects the
findings for ``report.write_report``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service.client import BnlabClient
from service.reproduce.experiments import Experiment, select_experiments
from service.reproduce.plan import DESIGNS, PROFILES, SweepPlan, describe_plan, expand
from service.reproduce.report import REPORT_NAME, bar_figure, write_report
from service.reproduce.results import ExperimentResult, SuiteResult, SweepData, best_baseline_lr
from service.reproduce.reuse import pick_reusable
from service.vocab import FINISHED_STATUSES, RunStatus

Progress = Callable[[int, int, str], None]  # (runs finished, runs in the suite, message)
POLL_INTERVAL_S = 2.0
COMPARE_POINTS = 1000  # enough to keep every evaluation of every run (no downsampling)


def obtain_runs(
    client: BnlabClient, plan: SweepPlan, label: str, reuse: bool
) -> tuple[str, list[str], int]:
    """The runs ``plan`` needs: reused where the server has them (``reuse.pick_reusable``),
    the rest submitted (as one sweep when nothing is reused). → (sweep id or "reused",
    run ids in plan order, how many were reused)."""
    specs = expand(plan)
    found: dict[str, dict[str, Any]] = {}
    if reuse:
        for spec in specs:
            run = pick_reusable(spec, client.list_runs(name=spec["name"]))
            if run is not None:
                found[spec["name"]] = run
    if not found:
        sweep = client.sweep(f"reproduce-{label}-{plan.key}", plan.base, plan.grid)
        return sweep["id"], [r["id"] for r in sweep["runs"]], 0
    ids = [
        found[spec["name"]]["id"] if spec["name"] in found else client.submit(spec)["id"]
        for spec in specs
    ]
    return "reused", ids, len(found)


def wait_for_runs(
    client: BnlabClient,
    run_ids: Sequence[str],
    progress: Progress | None = None,
    total: int | None = None,
    done_before: int = 0,
    poll_interval: float = POLL_INTERVAL_S,
    deadline: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Poll the unfinished runs until all have finished; progress counts over the whole suite
    (``done_before`` finished in earlier stages, ``total`` runs in all). → run id → RunOut."""
    latest: dict[str, dict[str, Any]] = {}
    total = len(run_ids) + done_before if total is None else total
    while True:
        for run_id in run_ids:
            if latest.get(run_id, {}).get("status") not in FINISHED_STATUSES:
                latest[run_id] = client.get_run(run_id)
        runs = [latest[i] for i in run_ids]
        done = sum(r["status"] in FINISHED_STATUSES for r in runs)
        if progress is not None:
            running = sum(r["status"] == RunStatus.running for r in runs)
            progress(done_before + done, total, f"{running} running")
        if done == len(runs):
            return latest
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{len(runs) - done} of {len(runs)} runs still unfinished")
        time.sleep(poll_interval)


def run_experiment(
    client: BnlabClient,
    experiment: Experiment,
    plan: SweepPlan,
    runs: list[dict[str, Any]],
    sweep_label: str,
    figures_dir: Path,
    plotted: set[Path],
    settings: str | None = None,
) -> ExperimentResult:
    """Fetch the experiment's comparison of ``runs`` and its figure from the API, then analyse
    the numbers. ``plotted``: figures this suite already wrote (shared by experiments on one
    sweep)."""
    query = experiment.compare_query(plan, runs) if experiment.compare_query else {}
    ids = [r["id"] for r in runs]
    comparison = client.compare(run_ids=ids, points=COMPARE_POINTS, **query)
    data = SweepData(plan, sweep_label, runs, comparison)
    finding = experiment.analyse(data)
    # One comparison figure per sweep (and query): experiments sharing a sweep share it.
    figure = figures_dir / ("-".join([*experiment.sweeps, *map(str, query)]) + ".png")
    if figure not in plotted:
        figure.write_bytes(client.compare_plot(run_ids=ids, fmt="png", **query))
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
        sweep=" + ".join(experiment.sweeps),
        sweep_id=sweep_label,
        settings=settings or describe_plan(plan),
        finding=finding,
        figures=[f"{figures_dir.name}/{path.name}" for path in figures],
    )


def _environment(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "torch": sorted({r.get("torch_version") for r in runs if r.get("torch_version")}),
        "device": sorted({r.get("device") for r in runs if r.get("device")}),
        "train_seconds": sum(r.get("wall_time") or 0.0 for r in runs),
    }


def suite_stages(experiments: Sequence[Experiment]) -> list[list[str]]:
    """The sweep keys the experiments need, in the order they can be trained: first those
    that depend on nothing, then those that take their LR from one of them."""
    keys = list(dict.fromkeys(key for e in experiments for key in e.sweeps))
    keys += [
        DESIGNS[k].tuned_lr_from for k in keys if DESIGNS[k].tuned_lr_from not in (None, *keys)
    ]
    first = [k for k in keys if DESIGNS[k].tuned_lr_from is None]
    return [stage for stage in (first, [k for k in keys if k not in first]) if stage]


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
    reuse: bool | None = None,
) -> SuiteResult:
    """Run the selected experiments through the API and write ``out_dir/reproduction.md``.

    ``profile`` overrides ``quick`` ("paper", "report", "full", "quick", or "tiny" for tests);
    only the experiments that run in it are selected. Figures go to ``out_dir/figures``; the
    numbers also go to ``out_dir/reproduction.json``. ``server_label`` names the server in the
    report (default: the client's base URL). ``reuse``: take matching runs already on the server
    instead of training them again (``reuse.py``); default: for the paper profile only.
    """
    chosen = PROFILES[profile or ("quick" if quick else "full")]
    reuse = chosen.name == "paper" if reuse is None else reuse
    experiments = select_experiments(only, chosen)
    stages = suite_stages(experiments)
    plans = {key: DESIGNS[key].plan(chosen) for stage in stages for key in stage}
    total = sum(p.runs for p in plans.values())  # a tuned sweep's shape is known up front
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    runs_of: dict[str, list[dict[str, Any]]] = {}
    labels: dict[str, str] = {}
    reused_in_all = 0
    for stage in stages:
        run_ids: dict[str, list[str]] = {}
        reused = 0
        for key in stage:
            design = DESIGNS[key]
            if design.tuned_lr_from is not None:  # its LR comes from a finished sweep
                lr = best_baseline_lr(runs_of[design.tuned_lr_from])
                plans[key] = design.plan(chosen, tuned_lr=lr)
            labels[key], run_ids[key], count = obtain_runs(client, plans[key], chosen.name, reuse)
            reused += count
        reused_in_all += reused
        done_before = sum(len(r) for r in runs_of.values())
        if progress is not None:
            note = f"{len(stage)} sweeps submitted" + (f", {reused} runs reused" if reused else "")
            progress(done_before, total, note)
        every = [i for ids in run_ids.values() for i in ids]
        latest = wait_for_runs(client, every, progress, total, done_before, poll_interval, deadline)
        runs_of |= {key: [latest[i] for i in ids] for key, ids in run_ids.items()}

    results: list[ExperimentResult] = []
    plotted: set[Path] = set()
    for experiment in experiments:
        if progress is not None:
            progress(total, total, f"analysing {experiment.name}")
        runs = [run for key in experiment.sweeps for run in runs_of[key]]
        label = ", ".join(dict.fromkeys(labels[key] for key in experiment.sweeps))
        plan = plans[experiment.sweep]
        settings = ". ".join(
            [describe_plan(plan)]
            + [f"{k}: {describe_plan(plans[k])}" for k in experiment.more_sweeps]
        )
        results.append(
            run_experiment(client, experiment, plan, runs, label, figures_dir, plotted, settings)
        )
    suite = SuiteResult(
        profile=chosen.name,
        out_dir=out_dir,
        report=out_dir / REPORT_NAME,
        results=results,
        wall_time=time.monotonic() - started,
        runs=total,
        reused=reused_in_all,
        environment=_environment([r for runs in runs_of.values() for r in runs]),
    )
    write_report(suite, server=server_label or client.base_url)
    return suite
