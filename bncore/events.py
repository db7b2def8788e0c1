"""The trainer's event stream: one JSON object per line on stdout.

This is the contract between ``python -m bncore.train`` and whoever runs it (a worker, a test,
a person). No torch here, so readers can import it cheaply.

    {"event": "start",   "device": "cpu", "torch": "2.13.0", "parameters": 19610, "spec": {...}}
    {"event": "metrics", "step": 12, "values": {"train_loss": 2.1, "train_acc": 0.2, ...}}
    {"event": "end",     "outcome": "succeeded" | "diverged", "step": 3000, "reason": null,
                         "wall_time": 12.3, "summary": {"best_test_acc": ..., ...}}

Metric keys: per ``log_every`` step ``train_loss``, ``train_acc``, ``lr``, ``grad_norm``,
``steps_per_sec``; at each evaluation (every ``eval_every`` steps and the last) ``test_loss``,
``test_acc``, and the 15th/50th/85th percentiles of the probed pre-activation ``act_p15``,
``act_p50``, ``act_p85``. Steps count from 1 (the state after that many updates); step 0 is
the evaluation before training.

End-event summary fields: :data:`SUMMARY_FIELDS` (name → meaning) is the one definition; the
trainer fills them, and the API, CLI and comparisons show them under these names with these
meanings only (a number computed differently gets a different name).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

Outcome = Literal["succeeded", "diverged"]

TRAIN_KEYS = ("train_loss", "train_acc", "lr", "grad_norm", "steps_per_sec")
EVAL_KEYS = ("test_loss", "test_acc", "act_p15", "act_p50", "act_p85")

# The end event's summary: name → what the number is. The last three only for models with BN.
SUMMARY_FIELDS: dict[str, str] = {
    "best_test_acc": "best test accuracy over the evaluations (step 0 included)",
    "best_test_acc_step": "the step of best_test_acc (the earliest, if tied)",
    "final_test_acc": "test accuracy of the model as it ended (eval mode)",
    "final_test_loss": "test loss of the model as it ended (eval mode)",
    "final_train_loss": "eval-mode loss of the final model on the first TRAIN_EVAL_CAP training "
    "examples (not the last per-step training loss)",
    "train_acc_full": "eval-mode accuracy of the final model on the same training examples",
    "test_acc_batch_stats": "test accuracy with each test batch normalized by its own statistics",
    "test_acc_running": "test accuracy with BN's running averages (= final_test_acc)",
    "test_acc_population": "test accuracy with population statistics (the paper's Algorithm 2)",
}


def start_event(device: str, torch_version: str, parameters: int, spec: dict) -> dict[str, Any]:
    return {
        "event": "start",
        "device": device,
        "torch": torch_version,
        "parameters": parameters,
        "spec": spec,
    }


def metrics_event(step: int, values: dict[str, float]) -> dict[str, Any]:
    return {"event": "metrics", "step": step, "values": values}


def end_event(
    outcome: Outcome, step: int, reason: str | None, wall_time: float, summary: dict[str, Any]
) -> dict[str, Any]:
    return {
        "event": "end",
        "outcome": outcome,
        "step": step,
        "reason": reason,
        "wall_time": wall_time,
        "summary": summary,
    }


def encode(event: dict[str, Any]) -> str:
    """One line of JSON. JSON has no NaN: callers send non-finite values as None (null), and a
    stray NaN raises ValueError here rather than producing a line other readers reject."""
    return json.dumps(event, allow_nan=False, default=str, separators=(",", ":"))


def decode(line: str) -> dict[str, Any] | None:
    """Parse one line; None for anything that is not an event (stray prints, blank lines)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


# A data-parallel run (replicas > 1, bncore/distributed.py) prefixes each rank's stderr lines
# with "[rank R] "; a rank that cannot go on ends with "[rank R] failed: <why>" or
# "[rank R] invalid job: <why>" (the launcher's own summary follows, naming only exit codes).
_RANK_FAILURE = re.compile(r"^\[rank (\d+)\] (failed|invalid job|invalid spec): (.+)$")


def rank_failure(line: str) -> tuple[int, str] | None:
    """(rank, why) from a rank's last stderr line, e.g. (1, "invalid job: ..."); else None."""
    match = _RANK_FAILURE.match(line.strip())
    if match is None:
        return None
    kind, why = match.group(2), match.group(3)
    return int(match.group(1)), why if kind == "failed" else f"{kind}: {why}"
