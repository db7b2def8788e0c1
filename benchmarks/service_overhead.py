"""What the service adds to a training run: the embedded service path (``execute_run``: claim,
trainer subprocess, event streaming, batched metric writes, heartbeats, outcome) against the
same spec trained by the bare bncore loop (``bncore.train.train`` iterated in this process),
side by side, alternating, so machine noise hits both alike. Target: ratio ≤ 1.05.

The service column includes the subprocess start (interpreter + torch import); a third
column, the bare trainer as a subprocess with its output thrown away, separates that fixed
cost from the per-step streaming/DB cost. Short runs are dominated by the fixed cost, so the
default spec is a few tens of seconds long.

    python benchmarks/service_overhead.py [--steps 6000] [--repeats 2] [--database-url URL]
                                          [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bncore.spec import JobSpec
from service import migrate, store
from service.db import open_session
from service.settings import Settings


def make_spec(steps: int, device: str) -> JobSpec:
    # The paper's MNIST MLP (3×100 sigmoid, BN), on mnist1d; train metrics every step: the
    # most events the service has to carry.
    return JobSpec.model_validate(
        {
            "name": "overhead",
            "dataset": "mnist1d",
            "model": {"hidden": [100, 100, 100], "activation": "sigmoid", "norm": "batchnorm"},
            "optimizer": {"lr": 0.5},
            "batch_size": 60,
            "steps": steps,
            "eval_every": 100,
            "log_every": 1,
            "device": device,
        }
    )


def time_bare(spec: JobSpec) -> tuple[float, int]:
    from bncore import data
    from bncore.train import train

    # The trainer caches generated datasets per process; a service run always starts cold.
    for cached in (getattr(data, "_mnist1d_arrays", None), getattr(data, "_digits_arrays", None)):
        if cached is not None and hasattr(cached, "cache_clear"):
            cached.cache_clear()
    started = time.perf_counter()
    n = sum(1 for _ in train(spec))
    return time.perf_counter() - started, n


def time_subprocess(spec: JobSpec, workdir: Path) -> float:
    path = workdir / "spec.json"
    path.write_text(spec.model_dump_json())
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bncore.train", str(path)], stdout=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - started


def time_service(spec: JobSpec, settings: Settings) -> tuple[float, float, int]:
    from workers.execute import execute_run

    with open_session(settings) as session:
        run_id = store.create_run(session, spec)[0].id
    started = time.perf_counter()
    status = execute_run(run_id, "bench@local", settings)
    elapsed = time.perf_counter() - started
    assert status == "succeeded", status
    with open_session(settings) as session:
        run = store.get_run(session, run_id)
        points = sum(c["count"] for c in store.metric_summary(session, run_id).values())
    return elapsed, run.wall_time or 0.0, points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for every contender (in-process and subprocesses alike); on a busy "
        "machine OpenMP spin-waiting makes unpinned timings meaningless",
    )
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # inherited by the trainer subprocesses
        os.environ[var] = str(args.threads)

    spec = make_spec(args.steps, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        settings = Settings(_env_file=None, database_url=url, heartbeat_interval_s=5.0)
        migrate.upgrade(url)
        import torch  # the bare loop's import is not part of its time

        torch.set_num_threads(args.threads)

        bare, sub, service, trainer_wall = [], [], [], []
        points = events = 0
        for i in range(args.repeats):
            b, events = time_bare(spec)
            s = time_subprocess(spec, Path(tmp))
            t, wall, points = time_service(spec, settings)
            bare.append(b)
            sub.append(s)
            service.append(t)
            trainer_wall.append(wall)
            print(
                f"repeat {i + 1}: bare {b:.2f} s, bare subprocess {s:.2f} s, "
                f"service {t:.2f} s (trainer's own wall time {wall:.2f} s)",
                flush=True,
            )

    b, s, t = (statistics.median(x) for x in (bare, sub, service))
    w = statistics.median(trainer_wall)
    dialect = url.split(":", 1)[0]
    print()
    print(f"spec: mnist1d MLP 3x100 BN, {args.steps} steps, {events} events, {points} points")
    print(
        f"database: {dialect}; device: {args.device}; threads: {args.threads}; "
        f"medians of {args.repeats}"
    )
    print(f"{'bare loop (in-process)':<34}{b:8.2f} s   1.000x")
    print(f"{'bare trainer as a subprocess':<34}{s:8.2f} s   {s / b:.3f}x")
    print(f"{'service (execute_run)':<34}{t:8.2f} s   {t / b:.3f}x")
    print(f"  of which process start + imports ~{t - w:.2f} s (service total - trainer wall)")
    print(f"  streaming + DB cost vs subprocess   {t / s:.3f}x")
    verdict = "within" if t / b <= 1.05 else "over"
    print(f"service/bare ratio {t / b:.3f}x: {verdict} the 1.05x target")


if __name__ == "__main__":
    main()
