"""The analyses of the real-data experiments (Fashion-MNIST), each ``SweepData -> Finding``.

- :func:`analyse_faster_training_horizons`: the MNIST protocol (Fig. 1a) with the verdict of
  experiment 1, plus steps-to-target at several targets and horizons (``horizons.py``);
- :func:`analyse_conv_table`: the paper's ImageNet table on an Inception-style net;
- :func:`analyse_bn_vs_dropout`: BN as a regularizer of about dropout's strength (issue 18).

As in ``analyses.py``: the verdict comes from a rule in ``verdicts.py``, the ``numbers`` hold
everything it was computed from (``experiments.py`` re-derives it from them), and a sweep with a
failed run gives an inconclusive finding.
"""

from __future__ import annotations

from statistics import mean
from typing import Any

from service.analysis.runs import PLATEAU_TAIL, PLATEAU_TOLERANCE
from service.reproduce import horizons
from service.reproduce.analyses import (
    _fmt,
    _fmt_ci,
    _seeds_note,
    _unusable,
    analyse_faster_training,
    difference_ci,
)
from service.reproduce.plan import round_lr
from service.reproduce.results import Finding, SweepData, best_baseline_lr
from service.reproduce.verdicts import (
    BN_DROPOUT_RULE,
    CONV_TABLE_RULE,
    OVERFIT_LOSS_RISE,
    OVERFIT_TRAIN_ACC,
    near_chance,
    overfits,
    verdict_bn_vs_dropout,
    verdict_faster_training,
)

PLATEAU_TEXT = {True: "yes", False: "no", None: "unknown"}

# ------------------------------------------------------------- 1. faster training, with horizons


def _curves(data: SweepData, arm: dict[str, Any], key: str = "test_acc") -> list[Any]:
    """The ``key`` curve of every run of ``arm``, as the comparison returned it."""
    ids = set(arm["run_ids"])
    return [r["curves"].get(key) or [] for r in data.comparison["runs"] if r["id"] in ids]


def _race_cells(race: dict[str, Any]) -> dict[str, Any]:
    return {
        "baseline steps": _fmt_ci(race["baseline_steps"], 0),
        "BN steps": _fmt_ci(race["bn_steps"], 0),
        "BN reached": f"{race['bn_n_reached']}/{race['n']}",
        "speed-up": _fmt_ci(race["speedup"], 2, "×"),
    }


def analyse_faster_training_horizons(data: SweepData) -> Finding:
    """Experiment 1's finding and verdict (target: the baseline's best over the full run), with
    a table per target and per horizon, and the baseline's plateau check."""
    finding = analyse_faster_training(data)
    if finding.numbers.get("failed_runs"):
        return finding
    base, bn = _curves(data, data.arm(bn=False)), _curves(data, data.arm(bn=True))
    steps, every = data.plan.base["steps"], data.plan.base["eval_every"]
    targets = horizons.target_table(base, bn, steps)
    by_horizon = horizons.horizon_table(base, bn, horizons.horizons_for(steps, every))
    plateaued = horizons.baseline_plateaued(base)
    finding.more_tables = [
        (
            "Steps to several targets (the full horizon)",
            [
                {"target": f"{t['fraction']:.0%} of the best = {t['target']:.3f}"} | _race_cells(t)
                for t in targets
            ],
        ),
        (
            "The estimate by horizon (the same runs cut at each horizon; target = the cut "
            "baseline's best)",
            [
                {"horizon": h["horizon"], "target": _fmt(h["target"])}
                | _race_cells(h)
                | {"baseline plateaued": PLATEAU_TEXT[h["baseline_plateaued"]]}
                for h in by_horizon
            ],
        ),
    ]
    finding.notes.append(
        f"Plateau check: a baseline seed has plateaued when the last {PLATEAU_TAIL:.0%} of its "
        f"evaluations improved its best test accuracy by at most {PLATEAU_TOLERANCE:.0%} "
        "(relative); the baseline has when every seed has. At the full horizon: "
        f"{PLATEAU_TEXT[plateaued]}."
    )
    finding.numbers |= {"targets": targets, "horizons": by_horizon, "baseline_plateaued": plateaued}
    return finding


# ------------------------------------------------------------------------- 7. the conv-net table


def conv_rows(base_lr: float) -> dict[str, dict[str, Any]]:
    """The paper's rows: name → how to find its arm (BN or not, LR, activation)."""
    return {
        "Baseline": {"bn": False, "lr": base_lr, "where": {}},
        "BN-Baseline": {"bn": True, "lr": base_lr, "where": {"model.activation": "relu"}},
        "BN-x5": {"bn": True, "lr": round_lr(5 * base_lr), "where": {"model.activation": "relu"}},
        "BN-x30": {
            "bn": True,
            "lr": round_lr(30 * base_lr),
            "where": {"model.activation": "relu"},
        },
        "BN-x5-Sigmoid": {
            "bn": True,
            "lr": round_lr(5 * base_lr),
            "where": {"model.activation": "sigmoid"},
        },
    }


def analyse_conv_table(data: SweepData) -> Finding:
    """The ImageNet table: steps to the Baseline's max accuracy and each row's max accuracy;
    the verdict from BN-x5's speed-up (``CONV_TABLE_RULE``)."""
    if (bad := _unusable(data, CONV_TABLE_RULE)) is not None:
        return bad
    c = data.comparison
    base_lr = best_baseline_lr(data.runs)
    arms = {name: data.arm(**row) for name, row in conv_rows(base_lr).items()}
    x5 = arms["BN-x5"]
    verdict = verdict_faster_training(x5["speedup"], x5["n_reached"], x5["n"], c["target"])
    rows = [
        {
            "model": name,
            "LR": f"{conv_rows(base_lr)[name]['lr']:g}",
            "seeds": arm["n"],
            "steps to the Baseline's max": _fmt_ci(arm["steps_to_target"], 0),
            "reached": f"{arm['n_reached']}/{arm['n']}",
            "speed-up": _fmt_ci(arm["speedup"], 2, "×"),
            "max accuracy": _fmt_ci(arm["best"], 3),
        }
        for name, arm in arms.items()
    ]
    grid = [
        {"LR": f"{lr:g}", "max accuracy": _fmt_ci(data.arm(bn=False, lr=lr)["best"], 3)}
        for lr in sorted(
            {
                float(a["factors"].get("optimizer.lr", base_lr))
                for a in c["arms"]
                if a["factors"].get("model.norm") == "none"
            }
        )
    ]
    speedup = _fmt_ci(x5["speedup"], 2, "×")
    return Finding(
        verdict=verdict,
        measured=f"target {_fmt(c['target'])} (Baseline's max, LR {base_lr:g}): BN-x5 "
        f"{_fmt_ci(x5['steps_to_target'], 0)} steps, speed-up {speedup}; max accuracy "
        + ", ".join(f"{name} {_fmt(arm['best']['mean'])}" for name, arm in arms.items()),
        reason=f"BN-x5 reached the Baseline's max in {x5['n_reached']}/{x5['n']} seeds; "
        f"speed-up {speedup}"
        + (
            f"; but the target {c['target']:.3f} is near chance: the Baseline never learned."
            if c["target"] is not None and near_chance(c["target"])
            else "."
        ),
        rule=CONV_TABLE_RULE,
        numbers={
            "target": c["target"],
            "baseline_lr": base_lr,
            "speedup": x5["speedup"],
            "bn_n_reached": x5["n_reached"],
            "bn_n": x5["n"],
            "rows": {
                name: {k: arm[k] for k in ("steps_to_target", "speedup", "best", "n", "n_reached")}
                for name, arm in arms.items()
            },
        },
        table=rows,
        more_tables=[("The Baseline's learning-rate grid (no BN)", grid)],
        notes=_seeds_note(x5["n"]),
    )


# -------------------------------------------------------------- 6b. regularization: BN vs dropout

REG_ARMS = {  # label → (BN, dropout > 0)
    "no BN, no dropout": (False, False),
    "no BN, dropout": (False, True),
    "BN, no dropout": (True, False),
    "BN, dropout": (True, True),
}


def _loss_rise(curve: list[Any]) -> float | None:
    """Final test loss ÷ its minimum over training − 1 (0: never rose; overfitting shows as a
    rise)."""
    values = [v for _, v in curve if v is not None]
    if not values or min(values) <= 0:
        return None
    return values[-1] / min(values) - 1


def _arm_summary(data: SweepData, arm: dict[str, Any]) -> dict[str, list[float]]:
    """Per-seed numbers of one arm: summary values and the rise of its test-loss curve."""
    runs = [r for r in data.runs if r["id"] in set(arm["run_ids"])]
    out: dict[str, list[float]] = {}
    for run in runs:
        s = run.get("summary") or {}
        for key in (
            "best_test_acc",
            "final_test_acc",
            "final_test_loss",
            "final_train_loss",
            "train_acc_full",
        ):
            if s.get(key) is not None:
                out.setdefault(key, []).append(float(s[key]))
    rises = [_loss_rise(c) for c in _curves(data, arm, "test_loss")]
    out["test_loss_rise"] = [r for r in rises if r is not None]
    return out


def _mean(values: list[float] | None) -> float | None:
    return mean(values) if values else None


def analyse_bn_vs_dropout(data: SweepData) -> Finding:
    if (bad := _unusable(data, BN_DROPOUT_RULE)) is not None:
        return bad
    dropout = max(float(r["spec"]["model"].get("dropout", 0.0)) for r in data.runs)
    summaries = {
        label: _arm_summary(data, data.arm(bn=bn, where={"model.dropout": dropout if d else 0.0}))
        for label, (bn, d) in REG_ARMS.items()
    }
    plain = summaries["no BN, no dropout"]
    train_acc, rise = _mean(plain.get("train_acc_full")), _mean(plain.get("test_loss_rise"))
    design_ok = overfits(train_acc, rise)
    bn_acc = summaries["BN, no dropout"].get("final_test_acc", [])
    vs_dropout = difference_ci(bn_acc, summaries["no BN, dropout"].get("final_test_acc", []))
    vs_plain = difference_ci(bn_acc, plain.get("final_test_acc", []))
    verdict = verdict_bn_vs_dropout(design_ok, vs_dropout, vs_plain)
    check = (
        f"the no-BN/no-dropout arm {'overfits' if design_ok else 'does NOT overfit'}: train "
        f"accuracy {_fmt(train_acc)} (needs ≥ {OVERFIT_TRAIN_ACC:g}), test loss ends "
        f"{'n/a' if rise is None else f'{rise:.0%}'} above its minimum (needs ≥ "
        f"{OVERFIT_LOSS_RISE:.0%})"
    )
    reason = check + (
        "; the design cannot see a regularizer here."
        if not design_ok
        else f"; BN/no-dropout − no-BN/dropout {_fmt_ci(vs_dropout, 4)}, BN/no-dropout − "
        f"no-BN/no-dropout {_fmt_ci(vs_plain, 4)}."
    )
    return Finding(
        verdict=verdict,
        measured=f"final test acc: BN/no-dropout {_fmt(_mean(bn_acc))}, no-BN/dropout "
        f"{_fmt(_mean(summaries['no BN, dropout'].get('final_test_acc')))}, no-BN/no-dropout "
        f"{_fmt(_mean(plain.get('final_test_acc')))}",
        reason=reason,
        rule=BN_DROPOUT_RULE,
        numbers={
            "plain_train_acc": train_acc,
            "plain_test_loss_rise": rise,
            "plain_overfits": design_ok,
            "vs_dropout": vs_dropout,
            "vs_plain": vs_plain,
            "arms": summaries,
            "dropout": dropout,
        },
        table=[_reg_row(label, s) for label, s in summaries.items()],
        notes=_seeds_note(len(bn_acc)),
        bars={
            label: {
                "train acc": _mean(s.get("train_acc_full")),
                "final test acc": _mean(s.get("final_test_acc")),
            }
            for label, s in summaries.items()
        },
        bars_title="Training vs test accuracy at equal steps (mean over seeds)",
    )


def _reg_row(label: str, s: dict[str, list[float]]) -> dict[str, Any]:
    def m(key: str, digits: int = 3) -> str:
        return _fmt(_mean(s.get(key)), digits)

    train_acc, test_acc = _mean(s.get("train_acc_full")), _mean(s.get("final_test_acc"))
    train_loss, test_loss = _mean(s.get("final_train_loss")), _mean(s.get("final_test_loss"))
    return {
        "arm": label,
        "seeds": len(s.get("final_test_acc", [])),
        "best test acc": m("best_test_acc"),
        "final test acc": m("final_test_acc"),
        "final test loss": m("final_test_loss"),
        "train acc": m("train_acc_full"),
        "acc gap (train − test)": _fmt(
            None if train_acc is None or test_acc is None else train_acc - test_acc
        ),
        "loss gap (test − train)": _fmt(
            None if train_loss is None or test_loss is None else test_loss - train_loss
        ),
        "test-loss rise": m("test_loss_rise", 2),
    }
