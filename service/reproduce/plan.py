"""What the suite trains: the profiles (how much) and the sweeps (which runs).

A sweep is described once, for every profile, by a :class:`SweepDesign` in :data:`SWEEPS`:
the changes it makes to the paper's MNIST network, the factors it varies (the grid, seeds
aside) and its training steps per profile. :func:`sweep_plans` turns the designs into concrete
:class:`SweepPlan` objects (a base spec and a grid, exactly what ``POST /sweeps`` takes) for
one profile. Experiments (``experiments.py``) name the sweep they analyse by its key; several
may share one, so each sweep is trained once.

Adding a sweep is one entry in :data:`SWEEPS`; the runner submits whatever the selected
experiments name. Settings were calibrated on mnist1d on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BASE_LR = 0.5  # plain SGD on the 3×100 sigmoid MLP: the baseline's LR in experiments 1-3
LR_MULTIPLIERS = (1, 5, 30)  # the paper's BN-Baseline, BN-x5, BN-x30
NORMS = ["none", "batchnorm"]  # every sweep compares these two arms


# ----------------------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Profile:
    """How much the suite does: the seeds every sweep runs (unless its design gives more) and
    how often runs evaluate and log. Training steps are per sweep, in each SweepDesign."""

    name: str
    seeds: tuple[int, ...]
    eval_every: int
    log_every: int


PROFILES = {
    "full": Profile("full", (0, 1, 2), eval_every=100, log_every=10),
    "quick": Profile("quick", (0,), eval_every=100, log_every=20),
    # Tests only: seconds per run, numbers meaningless; checks the plumbing, not the paper.
    "tiny": Profile("tiny", (0,), eval_every=20, log_every=20),
}


# ------------------------------------------------------------------------------------------- sweeps


@dataclass(frozen=True)
class SweepPlan:
    """One sweep for one profile: what ``POST /sweeps`` receives (base spec and grid)."""

    key: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]

    @property
    def runs(self) -> int:
        count = 1
        for values in self.grid.values():
            count *= len(values)
        return count


@dataclass(frozen=True)
class SweepDesign:
    """One sweep, for every profile.

    ``changes`` are dotted spec paths set on the paper's network (:func:`paper_mlp_spec`); a
    path without a dot replaces a whole part (``{"model": {"arch": "cnn", ...}}``).
    ``factors`` is the grid without the seeds, which come last from the profile, or from
    ``more_seeds`` (profile name → seeds) where the profile's are too few for this sweep.
    ``steps`` names the training steps for every profile in :data:`PROFILES`.
    """

    key: str
    steps: dict[str, int]
    changes: dict[str, Any] = field(default_factory=dict)
    factors: dict[str, list[Any]] = field(default_factory=lambda: {"model.norm": NORMS})
    more_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def plan(self, profile: Profile) -> SweepPlan:
        seeds = list(self.more_seeds.get(profile.name, profile.seeds))
        grid = {path: list(values) for path, values in self.factors.items()} | {"seed": seeds}
        return SweepPlan(
            self.key, paper_mlp_spec(self.key, profile, self.steps, self.changes), grid
        )


def paper_mlp_spec(
    name: str, profile: Profile, steps: dict[str, int], changes: dict[str, Any]
) -> dict[str, Any]:
    """The paper's MNIST network (3×100 sigmoid, batch 60, plain SGD) on mnist1d, changed."""
    spec: dict[str, Any] = {
        "name": name,
        "dataset": "mnist1d",
        "model": {"arch": "mlp", "hidden": [100, 100, 100], "activation": "sigmoid"},
        "optimizer": {"name": "sgd", "lr": BASE_LR, "momentum": 0.0},
        "batch_size": 60,
        "steps": steps[profile.name],
        "eval_every": profile.eval_every,
        "log_every": profile.log_every,
        "seed": 0,
    }
    for path, value in changes.items():
        node = spec
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return spec


SWEEPS: list[SweepDesign] = [
    SweepDesign("mlp-sigmoid", steps={"full": 3000, "quick": 1500, "tiny": 120}),
    SweepDesign(
        "mlp-sigmoid-digits",
        # quick: the baseline leaves its plateau at ~1,700 steps
        steps={"full": 3000, "quick": 2000, "tiny": 60},
        changes={"dataset": "digits"},
    ),
    SweepDesign(
        "learning-rates",
        steps={"full": 1500, "quick": 1000, "tiny": 60},
        factors={"model.norm": NORMS, "optimizer.lr": [BASE_LR * m for m in LR_MULTIPLIERS]},
    ),
    SweepDesign(
        "deep-sigmoid",
        steps={"full": 1500, "quick": 800, "tiny": 60},
        changes={"model.hidden": [64] * 10, "optimizer.lr": 1.0},
    ),
    # ReLU with momentum on 1,000 examples: both arms fit the training set completely, so
    # the gap measures generalisation rather than how far each arm got.
    SweepDesign(
        "regularization",
        steps={"full": 1500, "quick": 800, "tiny": 60},
        changes={
            "model.activation": "relu",
            "optimizer.lr": 0.05,
            "optimizer.momentum": 0.9,
            "train_size": 1000,
        },
        # The gap difference is small next to its seed-to-seed spread: more seeds to decide it.
        more_seeds={"full": (0, 1, 2, 3, 4)},
    ),
]


def sweep_plans(profile: Profile) -> dict[str, SweepPlan]:
    """Every sweep of :data:`SWEEPS` for ``profile``, by key."""
    return {design.key: design.plan(profile) for design in SWEEPS}


# -------------------------------------------------------------------------------------- description


def describe_model(model: dict[str, Any]) -> str:
    """E.g. "MLP 3×100 sigmoid"; any architecture, with dropout where the spec sets one."""
    arch = model.get("arch", "mlp")
    parts = [{"mlp": "MLP", "cnn": "CNN"}.get(arch, arch)]
    if hidden := model.get("hidden"):
        same = len(set(hidden)) == 1
        parts.append(f"{len(hidden)}×{hidden[0]}" if same else "-".join(map(str, hidden)))
    if activation := model.get("activation"):
        parts.append(activation)
    if dropout := model.get("dropout"):
        parts.append(f"dropout {dropout:g}")
    return " ".join(parts)


def describe_plan(plan: SweepPlan) -> str:
    """One line of settings, e.g. "mnist1d, MLP 3×100 sigmoid, SGD lr 0.5, batch 60, …"."""
    b = plan.base
    opt = b["optimizer"]
    momentum = f", momentum {opt['momentum']:g}" if opt.get("momentum") else ""
    train = f", {b['train_size']} training examples" if b.get("train_size") else ""
    grid = "; ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in plan.grid.items())
    return (
        f"{b['dataset']}{train}, {describe_model(b['model'])}, "
        f"{opt['name'].upper()} lr {opt['lr']:g}{momentum}, batch {b['batch_size']}, "
        f"{b['steps']} steps, evaluation every {b['eval_every']} steps; grid: {grid}"
    )
