"""The analysis of the replicas experiment (issue 15): per-replica vs synchronized BN statistics
in a data-parallel run, ``SweepData -> Finding``.

The sweep crosses ``replicas`` ∈ {1, N} with ``model.norm`` ∈ {batchnorm, sync_batchnorm} at
one global batch B, so the arms are

- 1 × B, ``batchnorm``: one process, statistics over the whole batch (the reference);
- N × B/N, ``batchnorm``: each replica normalizes its own B/N examples ("ghost" batches);
- N × B/N, ``sync_batchnorm``: statistics all-reduced over the global B, which should give the
  reference's numbers up to float reduction order;
- 1 × B, ``sync_batchnorm``: plain BN again (no group), a check shown in the table.

Every arm runs the same seeds, and a seed fixes the initialization and the global batches in
every arm (``bncore/distributed.py``), so the runs are paired: Δ_s = acc(arm, s) − acc(1 × B, s)
per seed s, and the effect is mean_s Δ_s with the bootstrap CI of that mean (``mean_ci``). The
verdict (``verdicts.REPLICAS_RULE``) tests Δ of the synchronized arm for equivalence within
``REPLICA_TOLERANCE``; the ghost arm gets the same test as a reported outcome.
"""

from __future__ import annotations

from statistics import mean
from typing import Any

from service.analysis.stats import mean_ci
from service.reproduce.analyses import _fmt, _fmt_ci, _seeds_note, _unusable
from service.reproduce.results import Finding, SweepData
from service.reproduce.verdicts import (
    REPLICA_TOLERANCE,
    REPLICAS_RULE,
    equivalence_outcome,
    verdict_replicas,
)


def replica_arms(replicas: int) -> dict[str, dict[str, Any]]:
    """Label → the factor values of each arm, the reference first."""
    return {
        "1 replica, batchnorm": {"replicas": 1, "model.norm": "batchnorm"},
        f"{replicas} replicas, batchnorm (ghost)": {
            "replicas": replicas,
            "model.norm": "batchnorm",
        },
        f"{replicas} replicas, sync_batchnorm": {
            "replicas": replicas,
            "model.norm": "sync_batchnorm",
        },
        "1 replica, sync_batchnorm (= plain BN)": {"replicas": 1, "model.norm": "sync_batchnorm"},
    }


def final_acc_by_seed(data: SweepData, arm: dict[str, Any]) -> dict[int, float]:
    """Seed → the final test accuracy of the arm's run with that seed (runs with a summary)."""
    ids = set(arm["run_ids"])
    out: dict[int, float] = {}
    for run in data.runs:
        value = (run.get("summary") or {}).get("final_test_acc")
        if run["id"] in ids and value is not None:
            out[int(run["spec"].get("seed", 0))] = float(value)
    return out


def paired_delta(arm: dict[int, float], reference: dict[int, float]) -> dict[str, Any]:
    """mean over shared seeds of arm − reference, with the bootstrap CI of that mean."""
    seeds = sorted(set(arm) & set(reference))
    return mean_ci([arm[s] - reference[s] for s in seeds])


def analyse_replicas(data: SweepData) -> Finding:
    if (bad := _unusable(data, REPLICAS_RULE)) is not None:
        return bad
    replicas = max(int(r["spec"].get("replicas", 1)) for r in data.runs)
    batch = int(data.plan.base["batch_size"])
    labels = replica_arms(replicas)
    arms = {label: data.arm(bn=True, where=where) for label, where in labels.items()}
    accs = {label: final_acc_by_seed(data, arm) for label, arm in arms.items()}
    reference, ghost, sync, _ = labels
    deltas = {label: paired_delta(accs[label], accs[reference]) for label in labels}
    sync_delta, ghost_delta = deltas[sync], deltas[ghost]
    verdict = verdict_replicas(sync_delta)
    ghost_outcome = equivalence_outcome(ghost_delta, REPLICA_TOLERANCE)
    c = data.comparison
    rows = [
        {
            "arm": label,
            "per-replica batch": batch // int(labels[label]["replicas"]),
            "seeds": len(accs[label]),
            "final test acc": _fmt(mean(accs[label].values()) if accs[label] else None),
            "Δ vs 1 replica (paired)": "—" if label == reference else _fmt_ci(deltas[label], 4),
            "steps to target": _fmt_ci(arm["steps_to_target"], 0),
            "reached": f"{arm['n_reached']}/{arm['n']}",
            "speed-up": _fmt_ci(arm["speedup"], 2, "×"),
        }
        for label, arm in arms.items()
    ]
    tol = f"± {REPLICA_TOLERANCE:g}"
    return Finding(
        verdict=verdict,
        measured=f"final test acc − 1 replica × {batch}: sync_batchnorm "
        f"{_fmt_ci(sync_delta, 4)}, ghost BN over {batch // replicas} {_fmt_ci(ghost_delta, 4)}",
        reason=f"Δ sync_batchnorm {_fmt_ci(sync_delta, 4)}: "
        f"{_outcome_text(equivalence_outcome(sync_delta, REPLICA_TOLERANCE), tol)}; "
        f"Δ ghost BN {_fmt_ci(ghost_delta, 4)}: {_outcome_text(ghost_outcome, tol)} "
        f"(ghost BN {ghost_outcome}).",
        rule=REPLICAS_RULE,
        numbers={
            "replicas": replicas,
            "batch_size": batch,
            "target": c.get("target"),
            "sync_delta": sync_delta,
            "ghost_delta": ghost_delta,
            "ghost_outcome": ghost_outcome,
            "final_test_acc": {label: accs[label] for label in labels},
            "arms": {
                label: {k: arm[k] for k in ("steps_to_target", "speedup", "n", "n_reached")}
                for label, arm in arms.items()
            },
        },
        table=rows,
        notes=_seeds_note(len(accs[reference])),
        bars={
            label: {"final test acc": mean(accs[label].values()) if accs[label] else None}
            for label in labels
        },
        bars_title=f"Final test accuracy, global batch {batch} (mean over seeds)",
    )


def _outcome_text(outcome: str, tol: str) -> str:
    return {
        "same": f"the CI lies within {tol}",
        "differs": f"the CI lies wholly outside {tol}",
        "unclear": f"the CI neither lies within nor wholly outside {tol}",
    }[outcome]
