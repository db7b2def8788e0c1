"""Data-parallel runs (``spec.replicas`` > 1): one trainer process per replica, started by
torch.distributed's own launcher::

    python -m torch.distributed.run --nnodes 1 --nproc-per-node N \\
        --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:0 --local-addr 127.0.0.1 \\
        -m bncore.train SPEC.json ...

(``workers/launch.py`` builds exactly this; ``--standalone`` does the same on ``localhost``).
Each process reads RANK / WORLD_SIZE / LOCAL_RANK from the launcher and joins one process
group: gloo on CPU, NCCL on CUDA with one GPU per rank (``cuda:LOCAL_RANK``).

What a replica does differently from a single-process run (bncore/train.py):

* the model is wrapped in ``DistributedDataParallel``: gradients are averaged over the
  replicas, so with equal slices the update is that of the mean loss over the global batch;
* every rank draws the same global permutation (same seed) and takes the r-th
  ``batch_size / N`` slice of each global batch (``shard``): the global batch equals the
  1-replica run's, and ``ResumableBatches``' position (so checkpoints) is the same;
* the losses and training accuracy reported are averaged over the replicas (``mean``), so the
  divergence check sees the same numbers on every rank and all ranks stop at the same step;
* rank 0 alone evaluates, saves checkpoints and prints events; every rank resumes from the
  same checkpoint file (``check_same`` refuses to go on if they disagree);
* after the loop the group is closed before the summary, so nothing rank 0 computes alone
  (batch-statistics accuracy, Algorithm 2) can wait on a collective; synchronized BN layers
  outside a group are plain BN, and ``plain_batchnorm`` swaps them for bncore's BatchNorm so
  the population statistics find them.

Hence with ``sync_batchnorm`` a run of N × (B/N) gives the numbers of 1 × B up to float
reduction order; with ``batchnorm`` each replica normalizes its own slice ("ghost" batches).

Streams: ranks other than 0 write nothing on stdout (it is redirected to stderr); every rank's
stderr lines are prefixed ``[rank R] `` and a rank that fails ends with
``[rank R] failed: <why>`` (``bncore.events.rank_failure`` parses it for the worker).

Test-only hook: ``BNLAB_TEST_CRASH_RANK=R`` (or ``R:STEP``) makes rank R raise a RuntimeError
at training step STEP (default 1), to test that one rank's crash fails the whole run.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import TextIO

import torch
import torch.distributed as dist
from torch import nn

from bncore.spec import MAX_REPLICAS, JobSpec

CRASH_HOOK_ENV = "BNLAB_TEST_CRASH_RANK"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass
class Replicas:
    """This process's place in the run: rank ``rank`` of ``world`` (1: no process group)."""

    rank: int
    world: int
    device: torch.device
    crash_step: int | None = field(default=None)  # the test-only hook, for this rank

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` (the model itself with one replica).
        ``forward_sync_buffers=False``: only rank 0's running statistics are ever used (it
        evaluates and checkpoints), so broadcasting them every forward would buy nothing."""
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=ids, forward_sync_buffers=False
        )

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch of indices: rows [r·B/N, (r+1)·B/N)."""
        if self.world == 1:
            return batch
        per = len(batch) // self.world
        return batch[self.rank * per : (self.rank + 1) * per]

    def seed_step(self, seed: int, step: int) -> None:
        """Seed this rank's random draws for ``step`` (dropout's masks). One process keeps its
        generator's own stream (checkpoints restore it). With N replicas every rank would
        otherwise draw the same masks for its own slice (one seed, the same draws for model
        init), unlike one process, whose examples each get their own; and a checkpoint holds
        rank 0's generator only. Seeding from (seed, step, rank) gives each rank its own masks
        and a resumed group the masks of an uninterrupted one."""
        if self.world == 1:
            return
        torch.manual_seed((seed * 1_000_003 + step) * MAX_REPLICAS + self.rank)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over replicas of equal-sized slices (all-reduce, SUM / N)."""
        if self.world == 1:
            return values
        values = values.detach().clone()
        dist.all_reduce(values)
        return values / self.world

    def check_same(self, value: int, what: str) -> None:
        """Refuse to train on when the ranks disagree on ``value`` (e.g. one rank could
        read a checkpoint that another could not)."""
        if self.world == 1:
            return
        low = torch.tensor([value, -value], dtype=torch.int64, device=self.device)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        if int(low[0]) != -int(low[1]):
            raise RuntimeError(f"replicas disagree on {what}: {int(low[0])}..{-int(low[1])}")

    def crash_hook(self, step: int) -> None:
        if self.crash_step == step:
            raise RuntimeError(
                f"rank {self.rank} crashed on purpose at step {step} "
                f"({CRASH_HOOK_ENV}, a test hook)"
            )

    def close(self) -> None:
        """Leave the process group (idempotent): after this, synchronized BN is plain BN."""
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def setup(spec: JobSpec) -> Replicas:
    """Join the process group the launcher set up (one replica: none). A spec whose replicas
    do not match the launch, or that this machine cannot run, is a ValueError (an invalid
    job)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != spec.replicas:
        raise ValueError(
            f"the spec asks for replicas {spec.replicas} but {world} process(es) were started: "
            f"run it as python -m torch.distributed.run --nproc-per-node {spec.replicas} "
            "-m bncore.train ..."
        )
    device = pick_device(spec.device)
    if world == 1:
        return Replicas(0, 1, device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise ValueError(f"replicas {world} need one GPU each; this machine has {gpus}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif spec.model.norm == "torch_sync_batchnorm":
        raise ValueError(
            "torch_sync_batchnorm (torch.nn.SyncBatchNorm) needs GPUs and this run is on the "
            "CPU: use sync_batchnorm (bncore's) instead"
        )
    die_with_launcher()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    return Replicas(rank, world, device, crash_step=_crash_step(rank))


def _crash_step(rank: int) -> int | None:
    hook = os.environ.get(CRASH_HOOK_ENV, "")
    if not hook:
        return None
    wanted, _, step = hook.partition(":")
    return int(step or 1) if int(wanted) == rank else None


def die_with_launcher() -> None:
    """SIGKILL this rank when its launcher dies (Linux): the launcher starts each rank in a
    session of its own, so a killpg of the launcher's group, or a SIGKILL of the launcher,
    would otherwise leave the ranks training on as orphans."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the launcher died before the prctl
        os._exit(1)


class _RankPrefixed:
    """A text stream that starts every line with ``[rank R] ``."""

    def __init__(self, stream: TextIO, prefix: str) -> None:
        self.stream, self.prefix, self._line_start = stream, prefix, True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self._line_start:
                out.append(self.prefix)
            out.append(piece)
            self._line_start = piece.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):  # noqa: ANN204 (fileno, encoding, isatty...)
        return getattr(self.stream, name)


def label_streams() -> int | None:
    """Under the launcher (RANK set): prefix stderr lines with the rank and, on ranks other
    than 0, send stdout to stderr (rank 0 alone prints events). Returns the rank, or None."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    rank = int(os.environ["RANK"])
    sys.stderr = _RankPrefixed(sys.stderr, f"[rank {rank}] ")  # type: ignore[assignment]
    if rank != 0:
        sys.stdout = sys.stderr
    return rank


def plain_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every synchronized BN layer (bncore's or torch's) replaced by
    bncore's plain BatchNorm with the same parameters, buffers and mode, for what rank 0
    computes alone after training (and for Algorithm 2's statistics, which look for bncore's
    layers)."""
    from bncore.nn import SyncBatchNorm
    from bncore.nn.batchnorm import _BatchNorm, _rebuilt

    sync_types = (nn.SyncBatchNorm, SyncBatchNorm)

    class AnyDimBatchNorm(_BatchNorm):
        def _check_input_dim(self, x: torch.Tensor) -> None:
            if x.dim() < 2:
                raise ValueError(f"expected an (N, C, *) input, got {x.dim()}-D")

    copied = copy.deepcopy(model)
    if isinstance(copied, sync_types):
        return _rebuilt(copied, AnyDimBatchNorm)
    for module in list(copied.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, sync_types):
                setattr(module, child_name, _rebuilt(child, AnyDimBatchNorm))
    return copied
