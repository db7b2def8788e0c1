"""A comparison as one CSV table: a row per run, then a row per arm."""

from __future__ import annotations

import csv
import io

from service.analysis.compare import Comparison

CSV_COLUMNS = [
    "row_type",  # "run" or "arm"
    "arm",
    "run_id",
    "name",
    "seed",
    "status",
    "n",
    "n_reached",
    "steps_to_target",  # run: its value (empty = never reached); arm: the (restricted) mean
    "steps_ci_low",
    "steps_ci_high",
    "steps_bound",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
    "speedup_bound",
    "p_value",
    "best",
    "best_test_acc",
    "final_test_acc",
    "final_train_loss",
    "final_test_loss",
    "diverged",
    "diverged_step",
    "wall_time",
]


def to_csv(comparison: Comparison) -> str:
    """One table, one header: a row per run (row_type=run), then a row per arm (row_type=arm).

    Columns that do not apply to a row type are empty. Curves are not included (use the JSON).
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in comparison.runs:
        writer.writerow(
            {
                "row_type": "run",
                "arm": r.arm,
                "run_id": r.id,
                "name": r.name,
                "seed": r.seed,
                "status": r.status,
                "n": 1,
                "n_reached": int(r.reached),
                "steps_to_target": r.steps_to_target,
                "speedup": r.speedup,
                "best": r.best,
                "best_test_acc": r.best_test_acc,
                "final_test_acc": r.final_test_acc,
                "final_train_loss": r.final_train_loss,
                "final_test_loss": r.final_test_loss,
                "diverged": r.diverged,
                "diverged_step": r.diverged_step,
                "wall_time": r.wall_time,
            }
        )
    for a in comparison.arms:
        s, u = a.steps_to_target, a.speedup
        writer.writerow(
            {
                "row_type": "arm",
                "arm": a.label,
                "run_id": " ".join(a.run_ids),
                "n": a.n,
                "n_reached": a.n_reached,
                "steps_to_target": s["mean"],
                "steps_ci_low": s["ci_low"],
                "steps_ci_high": s["ci_high"],
                "steps_bound": s["bound"],
                "speedup": u["mean"],
                "speedup_ci_low": u["ci_low"],
                "speedup_ci_high": u["ci_high"],
                "speedup_bound": u["bound"],
                "p_value": a.p_value,
                "best": a.best["mean"],
            }
        )
    return buf.getvalue()
