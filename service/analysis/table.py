"""A comparison as one CSV table (long format): a row per run and target, then a row per arm
and target.

Columns that do not apply to a row type are empty; curves are not included (use the JSON).
``target`` is the value raced to and ``target_fraction`` the fraction of the baseline's best it
was derived from (empty for a given value); the comparison's JSON ``targets`` list says how
each was chosen. The summary columns carry the trainer's summary fields
(``bncore.events.SUMMARY_FIELDS``) under their own names.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from service.analysis.results import Comparison

CSV_COLUMNS = [
    "row_type",  # "run" or "arm"
    "arm",
    "run_id",  # arm rows: the arm's run ids, space-separated
    "name",
    "seed",
    "status",
    "n",
    "n_reached",
    "target",
    "target_fraction",
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
    "plateaued",
    "tail_gain",
    "best_test_acc",
    "final_test_acc",
    "final_train_loss",
    "final_test_loss",
    "last_train_loss",
    "diverged",
    "diverged_step",
    "wall_time",
]


def to_csv(comparison: Comparison) -> str:
    """The table; see the module docstring."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    fractions = [t.fraction for t in comparison.targets]
    for r in comparison.runs:
        row: dict[str, Any] = {
            "row_type": "run",
            "arm": r.arm,
            "run_id": r.id,
            "name": r.name,
            "seed": r.seed,
            "status": r.status,
            "n": 1,
            "best": r.best,
            "plateaued": r.plateaued,
            "tail_gain": r.tail_gain,
            "best_test_acc": r.best_test_acc,
            "final_test_acc": r.final_test_acc,
            "final_train_loss": r.final_train_loss,
            "final_test_loss": r.final_test_loss,
            "last_train_loss": r.last_train_loss,
            "diverged": r.diverged,
            "diverged_step": r.diverged_step,
            "wall_time": r.wall_time,
        }
        for hit, fraction in zip(r.targets, fractions, strict=True):
            writer.writerow(
                row
                | {
                    "n_reached": int(hit.reached),
                    "target": hit.target,
                    "target_fraction": fraction,
                    "steps_to_target": hit.steps_to_target,
                    "speedup": hit.speedup,
                }
            )
    for a in comparison.arms:
        row = {
            "row_type": "arm",
            "arm": a.label,
            "run_id": " ".join(a.run_ids),
            "n": a.n,
            "best": a.best["mean"],
            "plateaued": a.plateaued,
        }
        for race, fraction in zip(a.targets, fractions, strict=True):
            s, u = race.steps_to_target, race.speedup
            writer.writerow(
                row
                | {
                    "n_reached": race.n_reached,
                    "target": race.target,
                    "target_fraction": fraction,
                    "steps_to_target": s["mean"],
                    "steps_ci_low": s["ci_low"],
                    "steps_ci_high": s["ci_high"],
                    "steps_bound": s["bound"],
                    "speedup": u["mean"],
                    "speedup_ci_low": u["ci_low"],
                    "speedup_ci_high": u["ci_high"],
                    "speedup_bound": u["bound"],
                    "p_value": race.p_value,
                }
            )
    return buf.getvalue()
