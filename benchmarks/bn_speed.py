"""Speed of bncore's batch norm relative to torch's native one (ratio < 1: bncore is faster).

For each shape, training (forward + backward) and eval (forward, no grad) are timed for
native ``torch.nn.functional.batch_norm`` and bncore's eager, compiled and cpp (its C++
operator) backends, side by side: each repeat times every contender once, in turn, so
machine noise hits all alike; the table shows medians over repeats. The one-time
torch.compile cost (first call of a new shape family) is measured separately and reported on
its own.

    python benchmarks/bn_speed.py [--quick] [--device cuda] [--repeats N] [--threads N]
                                  [--clock wall|cpu] [--no-compiled]
                                  [--shapes 64x64x32x32,60x100] [--modes train,eval]
                                  [--bandwidth]

``--bandwidth`` (for GPUs, ``benchmarks/gpu_check.sh``): each contender's achieved memory
bandwidth, counting the fewest bytes a batch norm must move (eval: read x, write y; training
forward + backward: x read twice and y written, then dy and x read twice and dx written, 8
tensor passes), beside the floor measured in the same run: a plain device copy of 256 MiB.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch._inductor.config
import torch.nn.functional as F

from bncore import functional as BF

SHAPES: list[tuple[int, ...]] = [(4096, 1024), (64, 64, 32, 32), (256, 128, 8, 8)]
CONTENDERS = ("native", "eager", "compiled", "cpp")


def _shapes(text: str) -> list[tuple[int, ...]]:
    try:
        shapes = [tuple(int(d) for d in s.strip().split("x")) for s in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) < 2 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"expected shapes like 64x64x32x32,60x100, got {text!r}")
    return shapes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _make_step(
    name: str, shape: tuple[int, ...], training: bool, device: torch.device
) -> Callable[[], None]:
    """One training step (forward + backward) or one eval forward, for one contender."""
    g = torch.Generator(device="cpu").manual_seed(0)
    c = shape[1]
    x = torch.randn(shape, generator=g).to(device).requires_grad_(training)
    dy = torch.randn(shape, generator=g).to(device)
    w = torch.rand(c, generator=g).add_(0.5).to(device).requires_grad_(training)
    b = torch.randn(c, generator=g).to(device).requires_grad_(training)
    rm, rv = torch.zeros(c, device=device), torch.ones(c, device=device)

    def fn(*args: object) -> torch.Tensor:
        if name == "native":
            return F.batch_norm(*args)  # type: ignore[arg-type]
        return BF.batch_norm(*args, backend=name)  # type: ignore[arg-type]

    if training:

        def step() -> None:
            x.grad = w.grad = b.grad = None
            fn(x, rm, rv, w, b, True, 0.1, 1e-5).backward(dy)

    else:

        def step() -> None:
            with torch.no_grad():
                fn(x, rm, rv, w, b, False, 0.1, 1e-5)

    return step


def _time(step: Callable[[], None], iters: int, device: torch.device, clock: str) -> float:
    now = time.process_time if clock == "cpu" else time.perf_counter
    _sync(device)
    t0 = now()
    for _ in range(iters):
        step()
    _sync(device)
    return (now() - t0) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per contender")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or process CPU time (steadier on a machine shared with other jobs)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument(
        "--no-compiled", action="store_true", help="skip the compiled backend (compiling is slow)"
    )
    parser.add_argument(
        "--shapes",
        type=_shapes,
        default=SHAPES,
        help="comma-separated shapes such as 64x64x32x32,60x100 (default: "
        + ",".join("x".join(map(str, s)) for s in SHAPES)
        + "; the paper's MLP layers are 60x100, and 1000x100 at evaluation)",
    )
    parser.add_argument(
        "--modes",
        type=lambda v: [m.strip() for m in v.split(",")],
        default=["train", "eval"],
        help="train (forward + backward), eval (forward, no grad), or both: train,eval",
    )
    parser.add_argument(
        "--bandwidth",
        action="store_true",
        help="also print achieved GB/s and the fraction of a plain copy's (for GPUs)",
    )
    args = parser.parse_args()
    if not args.modes or not set(args.modes) <= {"train", "eval"}:
        parser.error("--modes takes train, eval or train,eval")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # Report the real one-time compile cost, not a hit in inductor's on-disk cache.
    torch._inductor.config.force_disable_caches = True
    repeats = args.repeats or (5 if args.quick else 21)
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"float32, {args.clock} clock, median of {repeats} paired repeats; compiled available: "
        f"{BF.compiled_available(device.type)}"
    )

    contenders = tuple(c for c in CONTENDERS if not (args.no_compiled and c == "compiled"))
    rows: list[tuple[tuple[int, ...], bool, dict[str, float]]] = []
    compile_times = []
    for shape in args.shapes:
        for training in [m == "train" for m in args.modes]:
            steps = {n: _make_step(n, shape, training, device) for n in contenders}
            if "compiled" in steps:
                t0 = time.perf_counter()
                steps["compiled"]()  # first call: compiles (or reuses) the kernels
                _sync(device)
                compile_times.append((shape, training, time.perf_counter() - t0))
            for step in steps.values():  # warm up caches and allocators
                step()
            # Short timings (~50 ms), many repeats, each repeat timing every contender in a
            # rotating order: the ratio of each repeat compares runs made moments apart.
            one = _time(steps["native"], 1, device, args.clock)
            iters = max(1, int(0.05 / max(one, 1e-6)))
            times: dict[str, list[float]] = {n: [] for n in contenders}
            for r in range(repeats):
                k = r % len(contenders)
                order = contenders[k:] + contenders[:k]
                for name in order:
                    times[name].append(_time(steps[name], iters, device, args.clock))
            med = {n: statistics.median(t) for n, t in times.items()}
            for name in contenders[1:]:
                ratios = [a / b for a, b in zip(times[name], times["native"], strict=True)]
                med[name + "/native"] = statistics.median(ratios)
            rows.append((shape, training, med))

    mode = {True: "train fwd+bwd", False: "eval fwd"}
    print()
    names = contenders[1:]
    header = " | ".join(f"{n} ms | {n}/native" for n in names)
    print(f"| shape | mode | native ms | {header} |")
    print("|---|---|---:|" + "---:|---:|" * len(names))
    for shape, training, med in rows:
        cells = " | ".join(f"{med[n] * 1e3:.3f} | {med[n + '/native']:.2f}" for n in names)
        print(f"| {tuple(shape)} | {mode[training]} | {med['native'] * 1e3:.3f} | {cells} |")
    if args.bandwidth:
        _print_bandwidth(rows, names, device)
    print()
    print("One-time compile, caches disabled (first call of each shape family, s):")
    for shape, training, secs in compile_times:
        print(f"  {tuple(shape)} {mode[training]}: {secs:.1f} s")
    stats = BF.compile_stats()
    print(
        f"Compiled backend: {stats['compiled_keys']} graph keys compiled, "
        f"{stats['failed_keys']} failed (ran eagerly: {stats['fallback_calls']} calls)"
    )
    for key, why in stats["failures"].items():
        print(f"  failed: {key}: {why}")


PASSES = {True: 8, False: 2}  # tensor-sized reads and writes a batch norm cannot avoid


def copy_bandwidth(device: torch.device, mib: int = 256) -> float:
    """Bytes per second of ``dst.copy_(src)`` (read + write) over ``mib`` MiB: the floor."""
    src = torch.empty(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = statistics.median(_time(lambda: dst.copy_(src), 10, device, "wall") for _ in range(5))
    return 2 * src.numel() * 4 / seconds


def _print_bandwidth(
    rows: list[tuple[tuple[int, ...], bool, dict[str, float]]],
    names: tuple[str, ...],
    device: torch.device,
) -> None:
    floor = copy_bandwidth(device)
    print()
    print(f"Achieved bandwidth, GB/s (% of a plain copy's {floor / 1e9:.0f} GB/s, same run):")
    print("| shape | mode | native | " + " | ".join(names) + " |")
    print("|---|---|---:|" + "---:|" * len(names))
    mode = {True: "train fwd+bwd", False: "eval fwd"}
    for shape, training, med in rows:
        moved = PASSES[training] * 4 * torch.Size(shape).numel()
        cells = [
            f"{moved / med[n] / 1e9:.0f} ({moved / med[n] / floor:.0%})" for n in ("native", *names)
        ]
        print(f"| {tuple(shape)} | {mode[training]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
