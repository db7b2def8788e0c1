"""What a 2-replica data-parallel run costs against one process, side by side (issue 15).

One spec (a small MLP with BN on digits, a few hundred steps, global batch 32) is trained as

- ``1 × 32``: one process, ``python -m bncore.train SPEC`` (norm ``batchnorm``);
- ``2 × 16 sync``: ``python -m torch.distributed.run --nproc-per-node 2 -m bncore.train SPEC``
  with ``sync_batchnorm`` (statistics all-reduced over the global batch in every BN layer);
- ``2 × 16 ghost``: the same launch with ``batchnorm`` (each replica's own statistics: only
  DDP's gradient all-reduce and the trainer's loss averaging communicate);

and, as the floor, ``all_reduce floor``: two gloo ranks that do nothing but all-reduce a
float32 tensor the size of the model's gradient once per step (what DDP must pay at least).

For each run: the wall time from launch to exit (process start, imports, rendezvous, data,
training, final evaluation), the time until the trainer's ``start`` event arrives (start-up),
and the trainer's own ``steps_per_sec`` (time in the training loop only, evaluations excluded)
as the median over its log intervals after the first, which holds the first steps' warm-up.
Every repeat runs each contender once, in turn, so machine noise hits all alike; medians
over repeats are printed, with the ratios to one process (wall ×; slower × = one
process's steps/s ÷ this run's).

    python benchmarks/replica_overhead.py [--steps 300] [--repeats 3] [--threads 1]

Every process runs ``--threads`` intra-op threads (torch.distributed.run's default is 1 per
process; one process gets the same, so the comparison is of the same compute per rank).
About 1-2 minutes on 2 busy CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workers.launch import train_command  # the command a worker runs, launcher and all

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 32
WORLD = 2


def make_spec(steps: int, replicas: int, norm: str) -> dict[str, Any]:
    return {
        "name": f"overhead-{replicas}-{norm}",
        "dataset": "digits",
        "model": {"arch": "mlp", "hidden": [64, 64], "activation": "relu", "norm": norm},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "batch_size": GLOBAL_BATCH,
        "replicas": replicas,
        "steps": steps,
        "eval_every": steps,  # evaluations at step 0 and the last only
        "log_every": max(1, steps // 10),
        "seed": 0,
    }


def time_run(spec: dict[str, Any], threads: int, workdir: Path) -> dict[str, float]:
    """Launch one run; wall time to exit, time to its start event, its steps/s (median of the
    log intervals after the first), and the model's parameter count."""
    spec_path = workdir / f"{spec['name']}.json"
    spec_path.write_text(json.dumps(spec))
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    began = time.perf_counter()
    proc = subprocess.Popen(
        train_command(sys.executable, spec["replicas"], [str(spec_path)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=workdir,
    )
    assert proc.stdout is not None
    started, rates, parameters, outcome = None, [], 0, None
    for line in proc.stdout:  # events are flushed line by line: arrival times are theirs
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "start" and started is None:
            started = time.perf_counter() - began
            parameters = int(event["parameters"])
        elif event.get("event") == "metrics" and "steps_per_sec" in event["values"]:
            rates.append(float(event["values"]["steps_per_sec"]))
        elif event.get("event") == "end":
            outcome = event["outcome"]
    if proc.wait() != 0 or outcome != "succeeded":
        raise RuntimeError(f"{spec['name']} failed (exit {proc.returncode}, outcome {outcome})")
    wall = time.perf_counter() - began
    return {
        "wall": wall,
        "startup": started if started is not None else float("nan"),
        "steps_per_sec": statistics.median(rates[1:] or rates),
        "parameters": parameters,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _floor_rank(rank: int, port: int, numel: int, steps: int, threads: int, out: Any) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    grad = torch.randn(numel)
    for _ in range(10):  # warm-up: connections, buffers
        dist.all_reduce(grad)
    dist.barrier()
    began = time.perf_counter()
    for _ in range(steps):
        dist.all_reduce(grad)
    elapsed = time.perf_counter() - began
    if rank == 0:
        out.put(steps / elapsed)
    dist.destroy_process_group()


def allreduce_floor(numel: int, steps: int, threads: int) -> float:
    """All-reduces per second of a ``numel`` float32 tensor on 2 gloo ranks (no compute)."""
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(
        _floor_rank,
        args=(_free_port(), numel, steps, threads, out),
        nprocs=WORLD,
        start_method="spawn",
    )
    return float(out.get())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    contenders = {
        "1 × 32": make_spec(args.steps, 1, "batchnorm"),
        "2 × 16 sync": make_spec(args.steps, 2, "sync_batchnorm"),
        "2 × 16 ghost": make_spec(args.steps, 2, "batchnorm"),
    }
    times: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    floors: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, spec in contenders.items():
                times[name].append(time_run(spec, args.threads, Path(tmp)))
            numel = int(times["1 × 32"][-1]["parameters"])
            floors.append(allreduce_floor(numel, args.steps, args.threads))
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)

    def med(name: str, key: str) -> float:
        return statistics.median(t[key] for t in times[name])

    base_wall, base_rate = med("1 × 32", "wall"), med("1 × 32", "steps_per_sec")
    print(
        f"digits, MLP 2×64 relu + BN, {times['1 × 32'][0]['parameters']} parameters, global "
        f"batch {GLOBAL_BATCH}, {args.steps} steps, {args.threads} thread(s) a process; "
        f"medians of {args.repeats} repeats"
    )
    print(
        f"{'run':<18}{'wall s':>8}{'start-up s':>12}{'steps/s':>9}{'ms/step':>9}"
        f"{'wall ×':>8}{'slower ×':>10}"
    )
    for name in contenders:
        wall, rate = med(name, "wall"), med(name, "steps_per_sec")
        print(
            f"{name:<18}{wall:>8.2f}{med(name, 'startup'):>12.2f}{rate:>9.0f}{1e3 / rate:>9.2f}"
            f"{wall / base_wall:>8.2f}{base_rate / rate:>10.2f}"
        )
    floor = statistics.median(floors)
    print(
        f"{'all_reduce floor':<18}{'':>8}{'':>12}{floor:>9.0f}{1e3 / floor:>9.2f}"
        "   (2 gloo ranks, one all_reduce of the gradient's size a step, nothing else)"
    )
    print(
        "wall ×: wall time ÷ 1 × 32's; slower ×: 1 × 32's steps/s ÷ this run's (the trainer's "
        "own, loop only); start-up: launch until the trainer's start event"
    )


if __name__ == "__main__":
    main()
