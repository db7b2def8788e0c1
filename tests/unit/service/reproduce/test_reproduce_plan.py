"""The plan (profiles, sweeps) and the experiment registry: valid specs, complete entries, and
the extension point (a new sweep or experiment is one entry, picked up without other changes)."""

from __future__ import annotations

import pytest

from bncore.spec import JobSpec
from service.reproduce import experiments, plan
from service.reproduce.experiments import EXPERIMENTS, Experiment, select_experiments
from service.reproduce.plan import (
    BASE_LR,
    PROFILES,
    SWEEPS,
    SweepDesign,
    SweepPlan,
    describe_plan,
    sweep_plans,
)
from service.store import expand_grid


def test_select_experiments() -> None:
    assert [e.name for e in select_experiments(None)] == [e.name for e in EXPERIMENTS]
    assert [e.name for e in select_experiments(["regularization", "faster-training"])] == [
        "faster-training",
        "regularization",
    ]
    with pytest.raises(ValueError, match="unknown experiment.*nope.*choose from fashion-faster"):
        select_experiments(["nope"])


def test_registry_entries_are_complete() -> None:
    names = [e.name for e in EXPERIMENTS]
    assert len(names) == len(set(names))
    keys = [d.key for d in SWEEPS]
    assert len(keys) == len(set(keys))
    for experiment in EXPERIMENTS:
        assert experiment.sweep in keys, experiment.name
    for design in SWEEPS:  # the profiles a sweep runs in, and every test profile
        assert set(design.steps) <= set(PROFILES) and "tiny" in design.steps, design.key
        assert set(design.seeds) <= set(design.steps), design.key
        assert set(design.eval_every) <= set(design.steps), design.key
        assert design.tuned_lr_from in (None, *keys), design.key


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_planned_spec_is_valid(profile) -> None:
    for swept in sweep_plans(PROFILES[profile]).values():
        specs = list(expand_grid(swept.base, swept.grid))
        assert len(specs) == swept.runs
        for spec in specs:
            JobSpec.model_validate(spec)


def test_sweeps_vary_norm_then_factors_then_seeds() -> None:
    full = sweep_plans(PROFILES["full"])
    assert list(full["learning-rates"].grid) == ["model.norm", "optimizer.lr", "seed"]
    assert full["learning-rates"].grid["optimizer.lr"] == [0.5, 2.5, 15.0]  # 1×, 5×, 30×
    assert full["learning-rates"].runs == 2 * 3 * 3
    assert full["mlp-sigmoid"].grid == {"model.norm": ["none", "batchnorm"], "seed": [0, 1, 2]}
    assert full["mlp-sigmoid"].base["steps"] == 3000
    assert sweep_plans(PROFILES["quick"])["mlp-sigmoid"].base["steps"] == 1500


def test_profiles_can_give_a_sweep_seeds() -> None:
    full = sweep_plans(PROFILES["full"])
    assert full["regularization"].grid["seed"] == [0, 1, 2, 3, 4]
    assert full["mlp-sigmoid"].grid["seed"] == [0, 1, 2]
    assert sweep_plans(PROFILES["quick"])["regularization"].grid["seed"] == [0]


def test_changes_apply_to_the_paper_network() -> None:
    full = sweep_plans(PROFILES["full"])
    assert full["mlp-sigmoid-digits"].base["dataset"] == "digits"
    deep = full["deep-sigmoid"].base
    assert deep["model"] == {"arch": "mlp", "hidden": [64] * 10, "activation": "sigmoid"}
    assert deep["optimizer"] == {"name": "sgd", "lr": 1.0, "momentum": 0.0}
    assert full["mlp-sigmoid"].base["optimizer"]["lr"] == BASE_LR
    assert full["regularization"].base["train_size"] == 1000


def test_describe_plan() -> None:
    quick = sweep_plans(PROFILES["quick"])
    assert describe_plan(quick["regularization"]) == (
        "mnist1d, 1000 training examples, MLP 3×100 relu, SGD lr 0.05, momentum 0.9, batch 60, "
        "800 steps, evaluation every 100 steps; grid: model.norm ∈ {none, batchnorm}; seed ∈ {0}"
    )
    other = SweepPlan(
        "conv",
        {
            "dataset": "digits",
            "model": {"arch": "cnn", "hidden": [16, 32], "activation": "relu", "dropout": 0.5},
            "optimizer": {"name": "adam", "lr": 0.001},
            "batch_size": 32,
            "steps": 10,
            "eval_every": 5,
        },
        {"seed": [0]},
    )
    assert describe_plan(other).startswith("digits, CNN 16-32 relu dropout 0.5, ADAM lr 0.001,")


def test_a_new_sweep_and_experiment_are_one_entry_each(monkeypatch) -> None:
    """The extension point: appended entries are planned and selectable, nothing else edited."""
    design = SweepDesign(
        "conv-digits",
        steps={"full": 900, "quick": 300, "tiny": 20},
        changes={"dataset": "digits", "model": {"arch": "cnn", "hidden": [8, 16]}},
        factors={"model.norm": plan.NORMS, "optimizer.lr": [0.1, 0.5]},
    )
    experiment = Experiment(
        "conv-digits",
        "7. A conv-net",
        "BN helps a conv-net too.",
        "the ImageNet table",
        "conv-digits",
        analyse=experiments.analyse_faster_training,
        recheck=lambda numbers: "inconclusive",
    )
    monkeypatch.setattr(plan, "SWEEPS", [*SWEEPS, design])
    monkeypatch.setitem(plan.DESIGNS, design.key, design)
    monkeypatch.setattr(experiments, "EXPERIMENTS", [*EXPERIMENTS, experiment])

    assert [e.name for e in select_experiments(["conv-digits"])] == ["conv-digits"]
    planned = sweep_plans(PROFILES["quick"])["conv-digits"]
    assert planned.base["model"] == {"arch": "cnn", "hidden": [8, 16]}  # replaced whole
    assert planned.base["dataset"] == "digits" and planned.base["batch_size"] == 60
    assert planned.base["steps"] == 300
    assert planned.grid == {
        "model.norm": ["none", "batchnorm"],
        "optimizer.lr": [0.1, 0.5],
        "seed": [0],
    }
    for spec in expand_grid(planned.base, planned.grid):
        JobSpec.model_validate(spec)
    assert experiments.verdict_from_numbers("conv-digits", {}) == "inconclusive"
