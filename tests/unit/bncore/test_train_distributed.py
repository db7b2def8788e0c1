"""Data-parallel training (bncore/distributed.py) through ``python -m bncore.train`` under
torch.distributed's launcher: 2 CPU ranks on gloo, a tiny MLP on synthetic data, a few steps.

With DDP averaging the gradients of equal slices, a 2 × (B/2) run takes the steps of the
1 × B run: with no BN, or with synchronized BN, the numbers agree up to float32 reduction
order; per-replica ("ghost") BN normalizes each half alone and so differs. Each launch costs
~10-30 s on a busy 2-core machine (mostly importing torch three times).

BN runs on the eager (Python) backend here, in and out of process: the same maths as the
C++ operator, without its first-use build (its cache folder is shared by every checkout on a
machine, and each checkout's first use rebuilds it: minutes on a loaded machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bncore import distributed, events
from bncore.spec import JobSpec
from bncore.train import train
from workers.launch import train_command

ROOT = Path(__file__).resolve().parents[3]
TINY: dict[str, Any] = {
    "dataset": "synthetic",
    "synthetic_features": 8,
    "train_size": 256,
    "model": {"hidden": [16, 16], "activation": "tanh"},
    "batch_size": 16,
    "steps": 6,
    "eval_every": 3,
    "log_every": 1,
}
EAGER = {"BNCORE_BACKEND": "eager"}  # in the launched trainers; in this process: pytestmark
COMPARED = ("train_loss", "train_acc", "grad_norm", "test_loss", "test_acc", "act_p50")

pytestmark = pytest.mark.usefixtures("eager_backend")


def launch(
    spec: dict[str, Any], tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run ... -m bncore.train SPEC`` with replicas processes,
    the rendezvous on a free loopback port: the worker's own launch (workers.launch)."""
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    command = train_command(sys.executable, spec["replicas"], [str(spec_path), *args])
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **EAGER, **(env or {})}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=environment, cwd=tmp_path
    )


def parse(stdout: str) -> list[dict[str, Any]]:
    decoded = [events.decode(line) for line in stdout.splitlines() if line.strip()]
    assert all(e is not None for e in decoded), stdout  # rank 0's events only, nothing else
    return decoded  # type: ignore[return-value]


def by_step(stream: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    steps = [e["step"] for e in stream if e["event"] == "metrics"]
    assert len(steps) == len(set(steps)), f"a step reported twice: {steps}"  # not once per rank
    return {e["step"]: e["values"] for e in stream if e["event"] == "metrics"}


def single_process(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(train(JobSpec.model_validate(spec | {"replicas": 1})))


def assert_close(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]]) -> None:
    assert a.keys() == b.keys()
    for step in a:
        for key in COMPARED:
            if key in a[step]:
                assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-5), (step, key)


@pytest.mark.parametrize(
    ("norm", "same_as_one_process"),
    [("sync_batchnorm", True), ("batchnorm", False)],
)
def test_two_replicas_take_the_steps_of_one_process_unless_bn_is_per_replica(
    norm: str, same_as_one_process: bool, tmp_path: Path
) -> None:
    spec = TINY | {"model": TINY["model"] | {"norm": norm}, "replicas": 2}
    done = launch(spec, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    stream = parse(done.stdout)
    assert [e["event"] for e in stream][:2] == ["start", "metrics"]
    assert [e["event"] for e in stream].count("end") == 1
    ranked = [line for line in done.stderr.splitlines() if line.startswith("[rank ")]
    assert all(line[6] in "01" for line in ranked)  # every rank's own lines say whose they are

    two, one = by_step(stream), by_step(single_process(spec))
    assert sorted(two) == list(range(7))  # step 0's evaluation, then every step, once
    if same_as_one_process:
        assert_close(one, two)
        end_two, end_one = stream[-1], single_process(spec)[-1]
        for key in ("final_test_loss", "final_train_loss", "test_acc_population"):
            if key in end_one["summary"]:
                assert end_two["summary"][key] == pytest.approx(end_one["summary"][key], rel=1e-4)
    else:  # each half normalized by its own statistics: another function of the batch
        assert two[1]["train_loss"] != pytest.approx(one[1]["train_loss"], rel=1e-4)


def test_resumed_group_continues_as_if_never_stopped(tmp_path: Path) -> None:
    """Rank 0 saves every 3 steps; a second launch, told to resume no later than step 3,
    loads that checkpoint on both ranks and reports steps 4..6 as the uninterrupted run did,
    dropout masks included (the checkpoint holds rank 0's generator only: each rank's masks
    are seeded from the step, Replicas.seed_step)."""
    spec = TINY | {"replicas": 2, "model": TINY["model"] | {"dropout": 0.5}}
    folder = tmp_path / "ckpt"
    flags = ("--checkpoint-dir", str(folder), "--checkpoint-every", "3", "--checkpoint-keep", "0")
    whole = launch(spec, tmp_path, *flags)
    assert whole.returncode == 0, whole.stderr[-3000:]
    again = launch(spec, tmp_path, *flags, "--resume-max-step", "3")
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = parse(again.stdout)
    assert resumed[0] == {"event": "resume", "step": 3, "reason": None}
    first, second = by_step(parse(whole.stdout)), by_step(resumed)
    assert sorted(second) == [4, 5, 6]
    assert_close({s: first[s] for s in second}, second)


def test_each_rank_draws_its_own_masks_and_the_same_ones_again() -> None:
    """Replicas.seed_step: per rank per step, reproducible; one process keeps its stream."""

    def draws(rank: int, world: int, step: int) -> list[float]:
        torch.manual_seed(123)
        distributed.Replicas(rank, world, torch.device("cpu")).seed_step(7, step)
        return torch.rand(4).tolist()

    assert draws(0, 2, 5) != draws(1, 2, 5)  # ranks differ, as the examples of one batch do
    assert draws(1, 2, 5) == draws(1, 2, 5)  # a resumed rank draws them again
    assert draws(1, 2, 5) != draws(1, 2, 6)
    assert draws(0, 1, 5) == draws(0, 1, 6)  # one process: its generator's own stream


@pytest.mark.parametrize(
    ("sync", "plain"),
    [("sync_batchnorm", "batchnorm"), ("torch_sync_batchnorm", "torch_batchnorm")],
)
def test_with_one_replica_the_sync_norms_are_plain_bn(sync: str, plain: str) -> None:
    def run(norm: str) -> list[dict[str, Any]]:
        return single_process(TINY | {"model": TINY["model"] | {"norm": norm}})

    synced, plain_run = run(sync), run(plain)
    assert_close(by_step(plain_run), by_step(synced))
    assert synced[-1]["summary"] == pytest.approx(plain_run[-1]["summary"], rel=1e-5)


def test_torch_sync_batchnorm_on_cpu_replicas_is_an_invalid_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused before joining any process group (torch's layer accepts no CPU tensors)."""
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    spec = JobSpec.model_validate(
        TINY | {"replicas": 2, "device": "auto", "model": {"norm": "torch_sync_batchnorm"}}
    )
    if distributed.pick_device("auto").type == "cuda":
        pytest.skip("a GPU is present: the spec is runnable here")
    with pytest.raises(ValueError, match="torch_sync_batchnorm .* needs GPUs"):
        distributed.setup(spec)
    with pytest.raises(ValueError, match="asks for replicas 1 but 2 process"):
        distributed.setup(JobSpec.model_validate(TINY))


def test_a_rank_failure_line_is_parsed_with_its_rank() -> None:
    assert events.rank_failure("[rank 1] failed: RuntimeError: boom\n") == (
        1,
        "RuntimeError: boom",
    )
    assert events.rank_failure("[rank 0] invalid job: no data") == (0, "invalid job: no data")
    assert events.rank_failure("[rank 0] Traceback (most recent call last):") is None
    assert events.rank_failure("failed: not a rank's line") is None
