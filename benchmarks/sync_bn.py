"""Speed of bncore's SyncBatchNorm in a 2-rank group against batch norm in one process.

Each rank of a 2-rank group (gloo on CPU, one thread a rank; NCCL with one GPU a rank on
CUDA) holds a batch of the given per-rank shape and times one training step (forward +
backward) of:

- ``sync``: bncore SyncBatchNorm over the 2-rank group (statistics of the global batch: one
  all_gather forward, one all_reduce backward);
- ``bncore``: bncore BatchNorm on the same per-rank batch, no communication;
- ``torch``: torch.nn.BatchNorm on the same per-rank batch;
- ``torch_sync`` (CUDA with 2 GPUs only): torch.nn.SyncBatchNorm over the same group.

Side by side: every repeat times each contender once, in turn, on both ranks at once (a
barrier before each), so machine noise hits all alike; rank 0 prints medians over repeats and
the ratios (sync / bncore is the price of synchronizing; < 1 would mean faster). The sync
contenders' times include the collectives' latency, which dominates at small shapes.

    python benchmarks/sync_bn.py [--device cpu|cuda] [--repeats N] [--quick]

About 20 s on 2 busy CPU cores (a third of it starting the two processes). bncore runs its
eager backend in both contenders (the synchronized path is eager), so sync / bncore is the
price of synchronizing alone.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bncore import functional as BF
from bncore import nn as bnn
from bncore.sync_batchnorm import SyncBatchNorm

WORLD = 2
SHAPES: list[tuple[int, ...]] = [(60, 100), (512, 1024), (16, 64, 16, 16), (64, 128, 8, 8)]
QUICK_SHAPES = SHAPES[:1] + SHAPES[2:3]
TARGET_S = 0.02  # each timed run lasts about this long


def _layer(name: str, channels: int, dims: int, group: object) -> nn.Module:
    if name == "sync":
        return SyncBatchNorm(channels, process_group=group)
    if name == "torch_sync":
        return nn.SyncBatchNorm(channels, process_group=group)
    kind = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}[dims]
    return getattr(bnn if name == "bncore" else nn, kind)(channels)


def _make_step(
    name: str, shape: tuple[int, ...], device: torch.device, group: object
) -> Callable[[], None]:
    g = torch.Generator().manual_seed(dist.get_rank())
    x = torch.randn(shape, generator=g).to(device).requires_grad_()
    dy = torch.randn(shape, generator=g).to(device)
    layer = _layer(name, shape[1], len(shape), group).to(device).train()

    def step() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(dy)

    return step


def _time(step: Callable[[], None], iters: int, device: torch.device) -> float:
    dist.barrier()  # both ranks start together: the collectives then measure no waiting
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / iters


def _iters(step: Callable[[], None], device: torch.device) -> int:
    """Iterations for about TARGET_S, the same on both ranks (the collectives must match)."""
    per_step = _time(step, 3, device)
    wanted = max(1, min(1000, round(TARGET_S / max(per_step, 1e-7))))
    iters = torch.tensor([wanted], device=device)  # NCCL reduces device tensors only
    dist.all_reduce(iters, op=dist.ReduceOp.MAX)
    return int(iters)


def _rank(rank: int, port: int, device_kind: str, shapes: list, repeats: int) -> None:
    cuda = device_kind == "cuda"
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(1)
    BF.set_backend("eager")  # bncore's default on CPU is its C++ operator: say which is timed
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
    )
    names = ["sync", "bncore", "torch"] + (["torch_sync"] if cuda else [])
    rows = []
    for shape in shapes:
        steps = {n: _make_step(n, shape, device, dist.group.WORLD) for n in names}
        iters = {n: _iters(s, device) for n, s in steps.items()}
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(repeats):
            for n in names:
                times[n].append(_time(steps[n], iters[n], device))
        rows.append((shape, {n: statistics.median(t) for n, t in times.items()}))
    if rank == 0:
        _print(rows, names, device)
    dist.destroy_process_group()


def _print(rows: list, names: list[str], device: torch.device) -> None:
    print(f"{WORLD} ranks, {device.type}; per-rank shape; median µs per training step")
    head = "".join(f"{n:>12}" for n in names)
    ratios = ["sync/bncore", "sync/torch", "bncore/torch"]
    if "torch_sync" in names:
        ratios.append("sync/torch_sync")
    print(f"{'shape':<20}{head}" + "".join(f"{r:>17}" for r in ratios))
    for shape, t in rows:
        cells = "".join(f"{t[n] * 1e6:>12.1f}" for n in names)
        values = [t["sync"] / t["bncore"], t["sync"] / t["torch"], t["bncore"] / t["torch"]]
        if "torch_sync" in t:
            values.append(t["sync"] / t["torch_sync"])
        print(f"{str(shape):<20}{cells}" + "".join(f"{v:>16.2f}x" for v in values))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="two shapes, three repeats")
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < WORLD:
        raise SystemExit(f"--device cuda needs {WORLD} GPUs, found {torch.cuda.device_count()}")
    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeats = 3 if args.quick else args.repeats
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(
        _rank,
        args=(_free_port(), args.device, shapes, repeats),
        nprocs=WORLD,
        start_method="spawn",
    )


if __name__ == "__main__":
    main()
