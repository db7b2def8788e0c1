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
"""

from __future__ import annotations

import json
from typing import Any, Literal

Outcome = Literal["succeeded", "diverged"]

TRAIN_KEYS = ("train_loss", "train_acc", "lr", "grad_norm", "steps_per_sec")
EVAL_KEYS = ("test_loss", "test_acc", "act_p15", "act_p50", "act_p85")


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
