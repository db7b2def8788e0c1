"""A training step of the paper's MLP with bncore's batch norm vs torch's (ratio < 1: bncore
is faster).

The paper's network (784-100-100-100-10, sigmoid, BN before each nonlinearity, as
``bncore.models.MLP`` builds it) at batch 60 on CPU: at this size a BN call costs Python and
dispatch overhead, not arithmetic. Contenders, timed interleaved (each repeat times every one
in turn, so machine noise hits all alike; medians over repeats of ``--steps`` steps each):
torch's BN, bncore's default ("auto": its C++ operator here) and bncore's Python path
("eager", what ran before the operator existed). Rows: a whole SGD step (forward, loss,
backward, update), the three BN layers alone (forward + backward on the layer's real input
shape), and eval forwards. The floor rows put the differences in scale: the same step with
no normalization at all, and one bare call of bncore's operator (no module, no autograd).

    python benchmarks/mlp_step.py [--repeats N] [--steps N] [--threads N] [--batch N]
                                  [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bncore import functional as BF
from bncore.models import MLP
from bncore.spec import ModelSpec

# name -> (ModelSpec.norm, bncore backend)
CONTENDERS = {
    "torch": ("torch_batchnorm", None),
    "bncore": ("batchnorm", "auto"),
    "eager": ("batchnorm", "eager"),
}


def _model(contender: tuple[str, str | None]) -> torch.nn.Module:
    norm, backend = contender
    torch.manual_seed(0)
    model = MLP((1, 28, 28), 10, ModelSpec(norm=norm, hidden=[100, 100, 100]))
    for layer in model.modules():
        if hasattr(layer, "backend"):
            layer.backend = backend
    return model


def _train_step(norm: tuple[str, str | None], batch: int) -> Callable[[], None]:
    model = _model(norm).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _bn_layers_step(norm: tuple[str, str | None], batch: int) -> Callable[[], None]:
    """Three BN layers of 100 features: forward and backward only."""
    layers = [b.norm for b in _model(norm).train().blocks]
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(batch, 100, generator=g, requires_grad=True) for _ in layers]
    dy = torch.randn(batch, 100, generator=g)

    def step() -> None:
        for layer, x in zip(layers, xs, strict=True):
            layer(x).backward(dy)

    return step


def _eval_step(norm: tuple[str, str | None], batch: int) -> Callable[[], None]:
    model = _model(norm).eval()
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(3))

    def step() -> None:
        with torch.no_grad():
            model(x)

    return step


_clock = time.perf_counter


def _time(fn: Callable[[], None], steps: int) -> float:
    start = _clock()
    for _ in range(steps):
        fn()
    return (_clock() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=60)
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or process CPU time (steadier on a machine shared with other jobs)",
    )
    args = parser.parse_args()
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    BF.set_backend("auto")  # what the trainer uses

    rows = {
        f"train step, batch {args.batch}": _train_step,
        f"3 BN layers fwd+bwd, ({args.batch}, 100)": _bn_layers_step,
        f"eval forward, batch {args.batch}": _eval_step,
        "eval forward, batch 1000": lambda norm, _: _eval_step(norm, 1000),
    }
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.clock} clock, "
        f"medians of {args.repeats} × {args.steps} steps"
    )
    print(f"{'µs per step':36} {'torch':>7} {'bncore':>7} {'ratio':>6} {'eager':>7} {'ratio':>6}")
    for name, make in rows.items():
        med = _medians({c: make(spec, args.batch) for c, spec in CONTENDERS.items()}, args)
        t, b, e = med["torch"], med["bncore"], med["eager"]
        print(f"{name:36} {t:7.1f} {b:7.1f} {b / t:6.2f} {e:7.1f} {e / t:6.2f}")
    floor = _medians(
        {
            "no norm": _train_step(("none", None), args.batch),
            "bare op": _bare_op(args.batch),
        },
        args,
    )
    print(f"floor: train step without normalization {floor['no norm']:.1f} µs; one bare call")
    print(f"of bncore's C++ operator (fwd, ({args.batch}, 100), no grad) {floor['bare op']:.1f} µs")
    print(f"C++ operator: {BF.compile_stats()['cpp']}")


def _bare_op(batch: int) -> Callable[[], None]:
    from bncore import _native

    g = torch.Generator().manual_seed(4)
    x, w, b = torch.randn(batch, 100, generator=g), torch.ones(100), torch.zeros(100)
    rm, rv = torch.zeros(100), torch.ones(100)

    def step() -> None:
        _native.try_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)

    return step


def _medians(fns: dict[str, Callable[[], None]], args: argparse.Namespace) -> dict[str, float]:
    for fn in fns.values():  # warm up (allocator, lazy init, the operator's first load)
        _time(fn, 20)
    times: dict[str, list[float]] = {c: [] for c in fns}
    for _ in range(args.repeats):
        for c, fn in fns.items():
            times[c].append(_time(fn, args.steps))
    return {c: statistics.median(t) * 1e6 for c, t in times.items()}


if __name__ == "__main__":
    main()
