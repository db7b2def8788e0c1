"""Arms: runs whose specs differ only in the seed, their labels, and what they must not differ in.

An *arm* is what a comparison compares (e.g. "norm=batchnorm, lr=0.5"); its runs are the
repeats over seeds. The *factors* are the spec keys that vary between arms; the label names
each factor's value. Differences in what is not meant to be compared (dataset, step budget,
torch version, device, ...) are reported as warnings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from service.analysis.runs import RunData

# Spec fields that never define an arm: the seed is what repeats within an arm, the name is a
# label, and spec.device is where it ran (the actual device is checked as a confounder).
NOT_A_FACTOR = ("name", "seed", "device")
# Differences in these are not what a comparison means to study: they are flagged as warnings.
# eval_every sets the resolution of steps-to-target, so it confounds it too.
CONFOUNDING_SPEC_KEYS = ("dataset", "data_path", "train_size", "steps", "eval_every")
# Short names for arm labels where the leaf name alone would read badly.
LABEL_NAMES = {"optimizer.name": "optimizer", "model.arch": "arch"}


def flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → dotted keys ({"model": {"norm": x}} → {"model.norm": x}); lists → tuples."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = tuple(value) if isinstance(value, list) else value
    return flat


def arm_key(spec: dict[str, Any]) -> str:
    """What identifies an arm: the flattened spec without seed, name and device, as JSON."""
    flat = {k: v for k, v in flatten(spec).items() if k not in NOT_A_FACTOR}
    return json.dumps(flat, sort_keys=True, default=str)


def group_runs(runs: Sequence[RunData]) -> list[list[RunData]]:
    """Runs whose specs differ only in seed (and name, device) form one arm; in input order."""
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        groups.setdefault(arm_key(run.spec), []).append(run)
    return list(groups.values())


def varying_factors(arms: Sequence[list[RunData]]) -> list[str]:
    """The dotted spec keys whose value differs between arms: the factors being compared."""
    flats = [flatten(arm[0].spec) for arm in arms]
    keys = sorted({k for f in flats for k in f} - set(NOT_A_FACTOR))
    return [k for k in keys if len({value_text(f.get(k)) for f in flats}) > 1]


def value_text(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(value_text(v) for v in value) + "]"
    return "none" if value is None else str(value)


def _short(key: str, factors: Sequence[str]) -> str:
    """A factor's name in a label: the leaf name unless two factors share it."""
    if key in LABEL_NAMES:
        return LABEL_NAMES[key]
    leaf = key.rsplit(".", 1)[-1]
    return leaf if sum(f.rsplit(".", 1)[-1] == leaf for f in factors) == 1 else key


def arm_label(spec: dict[str, Any], factors: Sequence[str]) -> str:
    """E.g. "norm=batchnorm, lr=0.5"; "all runs" when nothing varies."""
    flat = flatten(spec)
    parts = [f"{_short(k, factors)}={value_text(flat.get(k))}" for k in factors]
    return ", ".join(parts) or "all runs"


def confounder_warnings(arms: Sequence[list[RunData]], labels: Sequence[str]) -> list[str]:
    """Warnings for arms (or runs) that differ in what is not meant to be compared.

    Spec keys in CONFOUNDING_SPEC_KEYS that vary between arms, and the torch version or device
    the runs actually used (checked over all runs: within an arm it adds noise, across arms
    bias).
    """
    warnings = []
    for key in CONFOUNDING_SPEC_KEYS:
        by_arm = {
            label: value_text(arm[0].spec.get(key)) for arm, label in zip(arms, labels, strict=True)
        }
        if len(set(by_arm.values())) > 1:
            detail = "; ".join(f"{v} ({label})" for label, v in by_arm.items())
            warnings.append(f"arms differ in {key}: {detail}")
    for attr, name in (("torch_version", "torch version"), ("device", "device")):
        values = {value_text(getattr(r, attr)) for arm in arms for r in arm}
        if len(values) > 1:
            warnings.append(f"runs differ in {name}: {', '.join(sorted(values))}")
    return warnings
