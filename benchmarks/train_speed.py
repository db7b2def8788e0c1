"""Trainer throughput on real data (Fashion-MNIST): steps/s and where a step's time goes.

Two networks, each with norm none / batchnorm (bncore's) / torch_batchnorm:
- the paper's MNIST MLP: 784-100-100-100-10, sigmoid, batch 60;
- the small Inception net (``arch: "inception"``, hidden [32, 64, 64, 128], ReLU, batch 32).

For each, side by side in one run:
- ``trainer``: steps/s of ``bncore.train.train`` itself, its events encoded as the CLI does,
  at ``log_every`` 1 (a metrics event per step, the default) and 10: the median time from one
  metrics event to the next, per step, evaluations left out.
- the breakdown: the same step taken apart, each phase timed on its own per step (median
  over steps): data (next batch: index + gather), forward (model + loss), backward (zero_grad
  + backward), optimizer (step), metrics (what a logged step adds: accuracy, gradient norm,
  one device sync, building the event and encoding it as a JSON line).

    python benchmarks/train_speed.py [--quick] [--device cpu|cuda] [--threads N] [--clock cpu|wall]

Needs Debian's dataset-fashion-mnist. Takes about a minute on a 2-core machine (--quick: ~20 s).
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bncore import events
from bncore import functional as BF
from bncore.data import load_data
from bncore.models import build_model
from bncore.probes import grad_norm
from bncore.spec import JobSpec
from bncore.train import batch_indices, make_optimizer, train

NORMS = ("none", "batchnorm", "torch_batchnorm")
NETS = {
    "paper MLP": {
        "model": {"arch": "mlp", "hidden": [100, 100, 100], "activation": "sigmoid"},
        "batch_size": 60,
        "optimizer": {"lr": 0.5},
    },
    "inception": {
        "model": {"arch": "inception", "hidden": [32, 64, 64, 128], "activation": "relu"},
        "batch_size": 32,
        "optimizer": {"lr": 0.1, "momentum": 0.9},
    },
}
LOG_EVERY = (1, 10)  # a metrics event every step (the default), or every 10th
PHASES = ("data", "forward", "backward", "optimizer", "metrics")
TRAIN_SUBSET, TEST_SUBSET = 2000, 500  # step speed does not depend on the dataset's size


def _spec(net: str, norm: str, **overrides: object) -> JobSpec:
    base = NETS[net]
    model = base["model"] | {"norm": norm}
    return JobSpec.model_validate(
        {"dataset": "npz", "data_path": "fashion.npz", **base, "model": model} | overrides
    )


def _write_subset(folder: Path) -> None:
    """Real Fashion-MNIST images, fewer of them: the trainer's evaluations (not timed, but
    run) stay short, the step is the same."""
    data = load_data(JobSpec(dataset="fashion_mnist"))
    np.savez(
        folder / "fashion.npz",
        x_train=data.x_train[:TRAIN_SUBSET].numpy(),
        y_train=data.y_train[:TRAIN_SUBSET].numpy(),
        x_test=data.x_test[:TEST_SUBSET].numpy(),
        y_test=data.y_test[:TEST_SUBSET].numpy(),
    )


def trainer_ms_per_step(spec: JobSpec, data_dir: Path, clock: Callable[[], float]) -> float:
    """Milliseconds per step of ``bncore.train.train`` itself, every event encoded to a line as
    ``python -m bncore.train`` does: the median time between consecutive metrics events, over
    ``log_every`` steps, leaving out the intervals that hold an evaluation (steps 0 and last)."""
    sink = io.StringIO()
    stamps: list[float] = []
    for event in train(spec, data_dir):
        sink.write(events.encode(event) + "\n")
        if event["event"] == "metrics" and "test_acc" not in event["values"]:
            stamps.append(clock())
    intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return statistics.median(intervals) / spec.log_every * 1e3


def breakdown(
    spec: JobSpec, data_dir: Path, clock: Callable[[], float], sync: Callable[[], None]
) -> dict[str, float]:
    """Median milliseconds per step of each phase (see the module docstring)."""
    device = torch.device(spec.device)
    torch.manual_seed(0)
    data = load_data(spec, data_dir)
    model = build_model(spec.model, data.example_shape, data.classes).to(device).train()
    optimizer = make_optimizer(spec.optimizer, model.parameters())
    x, y = data.x_train.to(device), data.y_train.to(device)
    batches = batch_indices(len(y), spec.batch_size, torch.Generator().manual_seed(0), device)
    times: dict[str, list[float]] = {phase: [] for phase in PHASES}
    sink = io.StringIO()
    for step in range(spec.steps + 3):  # 3 warm-up steps
        marks = [clock()]
        idx = next(batches)
        xb, yb = x[idx], y[idx]
        sync()
        marks.append(clock())
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        sync()
        marks.append(clock())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        marks.append(clock())
        optimizer.step()
        sync()
        marks.append(clock())
        acc = (logits.argmax(1) == yb).float().mean()
        values = torch.stack([loss.detach(), acc, grad_norm(model.parameters())]).tolist()
        keys = ("train_loss", "train_acc", "grad_norm")
        event = events.metrics_event(step, dict(zip(keys, values, strict=True)))
        sink.write(events.encode(event) + "\n")
        marks.append(clock())
        if step >= 3:
            for phase, t0, t1 in zip(PHASES, marks[:-1], marks[1:], strict=True):
                times[phase].append((t1 - t0) * 1e3)
    return {phase: statistics.median(t) for phase, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, for a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (trainer: 1)")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default=None,
        help="process CPU time (default on CPU: steadier on a shared machine) or wall time "
        "(default on CUDA, where the CPU waits for the GPU)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock_name = args.clock or ("wall" if args.device == "cuda" else "cpu")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    BF.set_backend("eager")  # the trainer's "auto" would compile some shapes: seconds, once
    # Steps per measurement (trainer at each log_every, and the breakdown).
    steps = (
        {"paper MLP": 200, "inception": 30} if args.quick else {"paper MLP": 600, "inception": 50}
    )
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"bncore BN backend eager, {clock_name} clock; trainer: time between metrics events "
        "(evaluation excluded); phases: median per step\n"
    )
    print(f"{'':<27}{'trainer, log_every':^18}{'phases, ms per step':^60}")
    print(
        f"{'network':<10} {'norm':<16}{'1':>9}{'10':>9}"
        + "".join(f"{p:>10}" for p in PHASES)
        + f"{'sum':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _write_subset(folder)
        for net, n in steps.items():
            for norm in NORMS:
                common = {"steps": n, "eval_every": n, "device": args.device}
                ms = {
                    every: trainer_ms_per_step(
                        _spec(net, norm, log_every=every, **common), folder, clock
                    )
                    for every in LOG_EVERY
                }
                parts = breakdown(_spec(net, norm, **common), folder, clock, sync)
                print(
                    f"{net:<10} {norm:<16}{1e3 / ms[1]:>9.0f}{1e3 / ms[10]:>9.0f}"
                    + "".join(f"{parts[p]:>10.3f}" for p in PHASES)
                    + f"{sum(parts.values()):>10.3f}"
                )
    print(
        "\ntrainer: steps/s. metrics: what one logged step adds (log_every=1 pays it every "
        "step); 'sum' is the step's time with it."
    )


if __name__ == "__main__":
    main()
