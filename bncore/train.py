"""The trainer: a JobSpec in, a stream of events (bncore.events) out. No HTTP, no SQL.

    python -m bncore.train spec.json [--data-dir DIR]     # or "-" to read the spec from stdin

prints one JSON line per event and flushes each, so a worker can stream them. An invalid spec
or a job that cannot run (bad data_path, missing files) → a message on stderr, exit 2; a crash
→ traceback on stderr, exit 1. With ``replicas`` > 1 it runs once per replica under
torch.distributed's launcher; what a replica does differently is in bncore/distributed.py (the
loop calls it at four places: shard the batch, average the synced losses, rank 0 evaluates
and checkpoints, close the group). (Past 400 lines: the loop, its evaluation and its
checkpoint/resume hooks stay together so one training step reads top to bottom.)

The loop: seeded model init and seeded shuffling (same spec → same numbers on CPU), mini-batches
of ``batch_size`` with the last partial batch of each epoch dropped (BN needs more than one
example), as many epochs as ``steps`` needs. Evaluation in eval mode on the held-out set at step
0, every ``eval_every`` steps and at the last step. The run stops as "diverged" as soon as the
loss is non-finite or exceeds ``divergence_factor`` × the first step's loss.

Speed: a step does only forward, backward and the optimizer, plus one copy of its loss into a
device buffer. Metrics (accuracy, gradient norm, the divergence check over the buffered losses)
are computed at log/eval steps only, with one device sync each; on the paper's MLP that made a
step 1.3-1.6× faster than computing them every step (benchmarks/train_speed.py measures it).

End-event summary keys:
    best_test_acc, best_test_acc_step   best evaluation (step 0 included) and its step
    final_test_acc, final_test_loss     the model as it ended (eval mode)
    final_train_loss, train_acc_full    eval-mode loss/accuracy on the first TRAIN_EVAL_CAP
                                        training examples (compare with the test numbers for
                                        the train-test gap)
and, when the model has BN layers, test accuracy under three inference statistics:
    test_acc_batch_stats    each test batch (of the training batch size) normalized by its own
                            statistics, as in training; running averages left untouched
    test_acc_running        the running averages kept during training (= final_test_acc)
    test_acc_population     the paper's Algorithm 2: mean and unbiased variance averaged over
                            POPULATION_BATCHES training mini-batches of the training batch size
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bncore import distributed, events
from bncore.checkpoint import Checkpoints, ResumableBatches, TrainingParts, resume_event
from bncore.data import load_data
from bncore.distributed import Replicas, pick_device  # noqa: F401 (pick_device: re-exported)
from bncore.models import build_model, norm_layers, parameter_count
from bncore.probes import PROBE_SIZE, grad_norm, unit_percentiles
from bncore.spec import MAX_PARAMETERS, SYNC_NORMS, JobSpec, OptimizerSpec, parse_spec

# Evaluation batch (in eval mode the batch size does not change the result). On CPU a large
# one is slow for conv nets (activations outgrow the caches): the Inception net scored 10k
# test images in 8.0 s at 4096, 1.6 s at 256; the MLP took 0.04 s either way.
EVAL_BATCH = {"cpu": 256}
EVAL_BATCH_DEFAULT = 4096  # GPUs
TRAIN_EVAL_CAP = 10_000  # training examples scored for train_acc_full
POPULATION_BATCHES = 100  # training mini-batches averaged for Algorithm 2's statistics


def make_optimizer(spec: OptimizerSpec, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    if spec.name == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
    return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)


def make_scheduler(
    spec: OptimizerSpec, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per training step (not per epoch)."""
    if spec.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, spec.step_size, spec.gamma)
    if spec.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, spec.gamma)
    return None


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """Endless shuffled mini-batches: a fresh permutation each epoch, last partial batch
    dropped."""
    if n < batch_size:
        raise ValueError(f"the training set has {n} examples, fewer than batch_size {batch_size}")
    while True:
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, accuracy) in eval mode, as 0-d tensors."""
    batch_size = batch_size or EVAL_BATCH.get(x.device.type, EVAL_BATCH_DEFAULT)
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    return loss_sum / len(y), correct / len(y)


@torch.no_grad()
def accuracy_with_batch_stats(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Accuracy with BN in train mode (each batch normalized by its own statistics). Batches
    are near-equal chunks of at most ``batch_size`` (never a lone example). All buffers are
    restored afterwards, so the running statistics are exactly as before."""
    saved = {name: b.clone() for name, b in model.named_buffers()}
    model.train()
    try:
        correct = torch.zeros((), device=x.device)
        chunks = max(1, math.ceil(len(y) / batch_size))
        for xb, yb in zip(x.tensor_split(chunks), y.tensor_split(chunks), strict=True):
            correct += (model(xb).argmax(1) == yb).sum()
    finally:
        model.eval()
        buffers = dict(model.named_buffers())
        for name, value in saved.items():
            buffers[name].copy_(value)
    return correct / len(y)


def population_accuracy(
    model: nn.Module, batches: Iterable[torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Test accuracy with the paper's Algorithm 2 statistics (bncore.nn.population_statistics:
    E[x] = mean of the batch means, Var[x] = mean of the unbiased batch variances over
    ``batches``). Works on a copy, converted to bncore's BN layers if it has torch's, so the
    model's own buffers are untouched."""
    from bncore import nn as bnn

    pop = bnn.convert_batchnorm(copy.deepcopy(model), to="bncore")
    bnn.population_statistics(pop, batches)
    bnn.set_inference_stats(pop, "population")
    return evaluate(pop, x, y)[1]


def _finite(values: dict[str, float]) -> dict[str, float | None]:
    # JSON has no NaN/inf; the event contract carries them as null.
    return {k: (v if v is not None and math.isfinite(v) else None) for k, v in values.items()}


def train(
    spec: JobSpec,
    data_dir: str | Path | None = None,
    checkpoints: Checkpoints | None = None,
    resume_max_step: int | None = None,
    replicas: Replicas | None = None,
) -> Iterator[dict[str, Any]]:
    """Run one job; yield a start event, metrics events and one end event. With
    ``checkpoints``, resume from the newest usable one (at most ``resume_max_step``; a resume
    event comes first) and save one every ``checkpoints.every`` steps and at the end.
    ``replicas`` (default: joined from the launcher's environment, bncore/distributed.py):
    this process's rank; ranks other than 0 train and yield nothing past the start."""
    wall_start = time.perf_counter()
    replicas = replicas or distributed.setup(spec)
    device = replicas.device
    torch.manual_seed(spec.seed)  # model init
    data = load_data(spec, data_dir)
    model = build_model(spec.model, data.example_shape, data.classes).to(device)
    n_params = parameter_count(model)
    if n_params > MAX_PARAMETERS:  # npz shapes are only known now
        raise ValueError(f"model has {n_params:,} parameters, over the limit {MAX_PARAMETERS:,}")
    optimizer = make_optimizer(spec.optimizer, model.parameters())
    scheduler = make_scheduler(spec.optimizer, optimizer)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    probe_x = x_test[:PROBE_SIZE]
    shuffle = torch.Generator().manual_seed(spec.seed)
    batches = ResumableBatches(len(y_train), spec.batch_size, shuffle, device)
    has_bn = bool(norm_layers(model))
    # Checkpoints (bncore/checkpoint.py): restore the newest usable one, if any.
    checkpoints = checkpoints or Checkpoints(None, spec, every=0, keep=1)
    parts = TrainingParts(model, optimizer, scheduler, batches, device)
    resumed, refused = checkpoints.resume(parts, resume_max_step)
    start_step = resumed["step"] if resumed else 0
    replicas.check_same(start_step, "the step resumed from")
    net = replicas.wrap(model)  # DDP with replicas > 1; ``model`` stays the module itself
    if checkpoints.directory is not None:
        yield resume_event(start_step, refused)

    yield events.start_event(device.type, torch.__version__, n_params, spec.model_dump(mode="json"))

    def evaluation() -> dict[str, float]:
        loss, acc = evaluate(model, x_test, y_test)
        probe = unit_percentiles(model, probe_x, spec.probe_layer)
        values = torch.stack([loss, acc, *probe.values()]).tolist()  # one sync
        return dict(zip(("test_loss", "test_acc", *probe), values, strict=True))

    evals: dict[int, dict[str, float]] = {}
    if resumed is None and replicas.main:  # rank 0 alone evaluates
        evals = {0: evaluation()}
        yield events.metrics_event(0, _finite(evals[0]))

    # The step does only what training needs; everything else happens at sync points (log or
    # eval steps). Divergence: each step's loss goes into a device buffer (one copy, no sync),
    # checked at the next sync point, so the first bad step is exact at any log_every.
    first_loss = limit = math.nan
    window = torch.empty(min(spec.log_every, spec.eval_every, spec.steps), device=device)
    last_sync = 0
    if resumed is not None:  # the loop's own state, as the checkpoint left it
        loop = resumed["loop"]
        evals, first_loss, last_sync = loop["evals"], loop["first_loss"], loop["last_sync"]
        limit = spec.divergence_factor * first_loss
        window.copy_(loop["window"].to(device))

    def checkpoint(at: int) -> None:  # after step ``at``'s events went out; rank 0 only
        if not replicas.main:
            return
        loop = {"evals": evals, "first_loss": first_loss, "last_sync": last_sync}
        checkpoints.save(at, {**parts.state(), "loop": loop | {"window": window.cpu()}})

    outcome, reason, step = "succeeded", None, start_step
    train_seconds, timed_steps, timer = 0.0, 0, time.perf_counter()
    net.train()
    for step in range(start_step + 1, spec.steps + 1):
        if step - 1 > start_step and checkpoints.due(step - 1):
            checkpoint(step - 1)
        is_log = step % spec.log_every == 0
        is_eval = step % spec.eval_every == 0 or step == spec.steps
        idx = replicas.shard(next(batches))  # this rank's slice of the global batch
        xb, yb = x_train[idx], y_train[idx]
        replicas.crash_hook(step)
        replicas.seed_step(spec.seed, step)  # each rank its own dropout masks
        logits = net(xb)
        loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if is_log:
            gnorm = grad_norm(model.parameters())
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        timed_steps += 1
        loss_d = loss.detach()
        window[step - last_sync - 1] = loss_d
        if step == 1:
            first_loss = replicas.mean(loss_d).item()  # the one per-step sync, once
            limit = spec.divergence_factor * first_loss
        if not (is_log or is_eval):
            continue

        # Over the replicas' slices: the global batch's losses, the same on every rank, so
        # all ranks judge divergence alike and stop together.
        acc = (logits.argmax(1) == yb).float().mean()
        synced = replicas.mean(torch.cat([window[: step - last_sync], acc.view(1)]))
        losses, acc = synced[:-1], synced[-1]
        bad = ~torch.isfinite(losses) | (losses > limit)
        first_bad = bad.int().argmax()  # the first True (0 when none)
        stats = [losses[-1], acc, bad.any().float(), first_bad.float(), losses[first_bad]]
        loss_v, acc_v, any_bad, first_bad_v, bad_loss_v, *gnorm_v = torch.stack(
            stats + [gnorm] if is_log else stats
        ).tolist()  # one sync
        values: dict[str, float] = {}
        if is_log:
            train_seconds += time.perf_counter() - timer
            values = {
                "train_loss": loss_v,
                "train_acc": acc_v,
                "lr": lr,
                "grad_norm": gnorm_v[0],
                "steps_per_sec": timed_steps / max(train_seconds, 1e-9),
            }
            train_seconds, timed_steps, timer = 0.0, 0, time.perf_counter()
        if any_bad:
            if values:
                yield events.metrics_event(step, _finite(values))
            outcome, step = "diverged", last_sync + int(first_bad_v) + 1
            if math.isfinite(bad_loss_v):
                reason = (
                    f"loss {bad_loss_v:.3g} exceeded {spec.divergence_factor:g}× its initial "
                    f"{first_loss:.3g} at step {step}"
                )
            else:
                reason = f"loss became {bad_loss_v} at step {step}"
            break
        last_sync = step
        if is_eval and replicas.main:
            train_seconds += time.perf_counter() - timer
            evals[step] = evaluation()
            values |= evals[step]
            net.train()  # evaluation left it in eval mode
            timer = time.perf_counter()
        yield events.metrics_event(step, _finite(values))

    if outcome == "succeeded" and step > start_step:
        checkpoint(step)  # a run retried after its last step only computes the summary
    replicas.close()  # no collective after this: rank 0 finishes alone
    if not replicas.main:
        return
    checkpoints.save_final(model.state_dict())
    if spec.model.norm in SYNC_NORMS:  # plain BN again, which Algorithm 2's statistics find
        model = distributed.plain_batchnorm(model)
    summary = _summary(spec, model, evals, x_train, y_train, x_test, y_test, has_bn)
    wall = time.perf_counter() - wall_start
    yield events.end_event(outcome, step, reason, wall, _finite(summary))


def _summary(
    spec: JobSpec,
    model: nn.Module,
    evals: dict[int, dict[str, float]],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    has_bn: bool,
) -> dict[str, float]:
    best_step = max(evals, key=lambda s: (evals[s]["test_acc"], -s))  # earliest best
    final_loss, final_acc = evaluate(model, x_test, y_test)
    train_loss, train_acc = evaluate(model, x_train[:TRAIN_EVAL_CAP], y_train[:TRAIN_EVAL_CAP])
    summary = {
        "best_test_acc": evals[best_step]["test_acc"],
        "best_test_acc_step": best_step,
        "final_test_acc": final_acc.item(),
        "final_test_loss": final_loss.item(),
        "final_train_loss": train_loss.item(),
        "train_acc_full": train_acc.item(),
    }
    if has_bn:
        summary["test_acc_batch_stats"] = accuracy_with_batch_stats(
            model, x_test, y_test, spec.batch_size
        ).item()
        summary["test_acc_running"] = summary["final_test_acc"]
        generator = torch.Generator().manual_seed(spec.seed + 1)
        batches = batch_indices(len(y_train), spec.batch_size, generator, x_train.device)
        pop_batches = (x_train[next(batches)] for _ in range(POPULATION_BATCHES))
        summary["test_acc_population"] = population_accuracy(
            model, pop_batches, x_test, y_test
        ).item()
    return summary


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(events.encode(event) + "\n")
    sys.stdout.flush()


HELP = """\
Train one model from a JSON job spec; stream what happens as JSON lines.

reads:
  SPEC, a JSON file or - (stdin): the job (bncore.spec.JobSpec; unknown keys and
  out-of-bound values are refused). Datasets: mnist1d, digits, synthetic (built
  in); fashion_mnist (Debian's package dataset-fashion-mnist, or the folder
  DATA_DIR/fashion-mnist); mnist_idx and npz (data_path: a path in DATA_DIR).

prints, on stdout, one JSON object per line (flushed; non-finite numbers: null):
  {"event": "start", "device": "cpu", "torch": "2.13.0", "parameters": 100010,
   "spec": {...}}
  {"event": "metrics", "step": 100, "values": {...}}
      every log_every steps: train_loss, train_acc, lr, grad_norm,
      steps_per_sec; at step 0, every eval_every steps and the last: test_loss,
      test_acc, act_p15/act_p50/act_p85 (percentiles of one probed
      pre-activation over training: the paper's Fig. 1b/c)
  {"event": "end", "outcome": "succeeded" | "diverged", "step": 3000,
   "reason": null, "wall_time": 12.3, "summary": {"best_test_acc": ..., ...}}

exit status: 0 done (a diverged run too), 2 invalid spec or job (why: stderr),
1 crash (traceback: stderr).

replicas > 1 (data-parallel, bncore/distributed.py): start one process per
replica with torch.distributed's launcher; rank 0 prints the events, every
rank's stderr lines start with "[rank R] ", a failing rank's last line is
"[rank R] failed: <why>":
  python -m torch.distributed.run --standalone --nproc-per-node 2 \\
      -m bncore.train spec.json

example, the paper's MNIST net with BN on Fashion-MNIST:
  echo '{"dataset": "fashion_mnist", "batch_size": 60, "steps": 50000,
         "eval_every": 500, "log_every": 100,
         "model": {"hidden": [100, 100, 100], "activation": "sigmoid",
                   "norm": "batchnorm"}}' | python -m bncore.train -
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bncore.train",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", help="JSON spec file, or - to read it from stdin")
    parser.add_argument(
        "--data-dir", default=None, help="DATA_DIR (default: $BNLAB_DATA_DIR or ./data)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default 1: faster for these small models)",
    )
    parser.add_argument(
        "--checkpoint-dir", default=None, help="resume from and save checkpoints here"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=500,
        help="steps (0: at the end), unless the spec sets checkpoint_every",
    )
    parser.add_argument(
        "--checkpoint-keep",
        type=int,
        default=2,
        help="newest checkpoints kept (0: all; the worker prunes as the points are stored)",
    )
    parser.add_argument(
        "--resume-max-step", type=int, default=None, help="resume from no later step than this"
    )
    args = parser.parse_args(argv)
    # One thread by default: these models are small, so per-op threading overhead dominates,
    # and workers run jobs side by side. Measured on a busy 2-core machine: the paper's MLP ran
    # 2,000 steps in 4 s with 1 thread and in 66 s with 2 (oversubscribed threads spin).
    torch.set_num_threads(max(1, args.threads))
    rank = distributed.label_streams()  # under the launcher: "[rank R] " on stderr
    try:
        return _run(args, rank)
    except Exception as exc:
        if rank is None:
            raise  # traceback, exit 1
        traceback.print_exc()
        print(f"failed: {type(exc).__name__}: {str(exc).strip()[:300]}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, rank: int | None) -> int:
    try:
        text = sys.stdin.read() if args.spec == "-" else Path(args.spec).read_text()
        spec = parse_spec(text)
    except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        print(f"invalid spec: {e}", file=sys.stderr)
        return 2
    checkpoints = Checkpoints(
        args.checkpoint_dir,
        spec,
        every=args.checkpoint_every if spec.checkpoint_every is None else spec.checkpoint_every,
        keep=args.checkpoint_keep,
    )
    stream = train(spec, args.data_dir, checkpoints, args.resume_max_step)
    try:
        first = next(stream)  # data loading and model building happen before the start event
    except ValueError as e:
        print(f"invalid job: {e}", file=sys.stderr)
        return 2
    emit = _emit if not rank else lambda _event: None  # rank 0 alone prints events
    emit(first)
    for event in stream:
        emit(event)
    return 0


if __name__ == "__main__":
    sys.exit(main())
