"""bncore's SyncBatchNorm on real gloo process groups (2 and 3 ranks on 127.0.0.1), float64.

One 3-rank world is spawned for the whole module (a module-scoped fixture); the 2-rank checks
run on the group of its ranks 0 and 1, the 1-rank ones on rank 0 alone. Each rank runs every
check's distributed part and saves what it saw to a file; the tests compare that, here, with
``torch.nn.BatchNorm*d`` applied to the concatenated global batch. Per-rank batches are
uneven and some step gives a rank nothing at all (N = 0).

Gradient convention checked: each rank's loss is Σ w·y over its own slice, so the sum of the
ranks' losses is the reference's loss over the global batch; the input gradients must equal
the reference's slices, the parameter gradients summed over the ranks (all_reduce SUM) the
reference's, and after DDP's reduction (all_reduce SUM / world size, what DDP does) the
reference's divided by the world size, for the layer before SyncBatchNorm too.
"""

from __future__ import annotations

import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

import bncore.functional as bnf
import bncore.nn as bnn
from bncore.models import build_model
from bncore.spec import ModelSpec
from bncore.sync_batchnorm import SyncBatchNorm, SyncBatchNormFunction, convert_sync_batchnorm

F64 = torch.float64
C = 3
# Per step, each rank's batch size: uneven, and one step leaves a rank empty.
SIZES = {2: [[3, 8], [0, 6], [5, 5]], 3: [[4, 0, 7], [2, 6, 1], [3, 3, 3]]}
SPATIAL = {"2d": (), "3d": (4,), "4d": (3, 5), "5d": (2, 2, 3)}
MOMENTUM = {"2d": 0.3, "3d": 0.1, "4d": None, "5d": 0.1}  # None: cumulative average
TORCH_BN = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
BNCORE_BN = {0: bnn.BatchNorm1d, 1: bnn.BatchNorm1d, 2: bnn.BatchNorm2d, 3: bnn.BatchNorm3d}
TOL = {"rtol": 1e-10, "atol": 1e-10}
DEADLINE_S = 120


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash(key) % (1 << 31))


def global_batch(case: str, step: int, total: int) -> tuple[Tensor, Tensor]:
    """(x, w) of the whole batch; x far from 0 (|μ| ≫ σ), w weighs the loss Σ w·y."""
    g = _generator(list(SPATIAL).index(case), step)
    shape = (total, C, *SPATIAL[case])
    x = torch.randn(shape, generator=g, dtype=F64) * 2 + 50
    return x, torch.randn(shape, generator=g, dtype=F64)


def affine_params(case: str) -> tuple[Tensor, Tensor]:
    g = _generator(99, list(SPATIAL).index(case))
    return 1 + 0.5 * torch.randn(C, generator=g, dtype=F64), torch.randn(C, generator=g, dtype=F64)


def rank_slice(sizes: list[int], rank: int) -> slice:
    return slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))


def _set_params(layer: nn.Module, case: str) -> None:
    weight, bias = affine_params(case)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)


# ---------------------------------------------------------------------------------------------
# What each rank runs (in a spawned process).
# ---------------------------------------------------------------------------------------------


def _train_steps(rank: int, world: int, case: str, group: Any) -> dict[str, Any]:
    layer = SyncBatchNorm(C, momentum=MOMENTUM[case], process_group=group, dtype=F64)
    _set_params(layer, case)
    steps = []
    for step, sizes in enumerate(SIZES[world]):
        x, w = global_batch(case, step, sum(sizes))
        part = rank_slice(sizes, rank)
        xr = x[part].clone().requires_grad_()
        y = layer(xr)
        (y * w[part]).sum().backward()
        steps.append(
            {
                "y": y.detach(),
                "dx": xr.grad,
                "dw": layer.weight.grad.clone(),
                "db": layer.bias.grad.clone(),
                "running_mean": layer.running_mean.clone(),
                "running_var": layer.running_var.clone(),
                "batches": int(layer.num_batches_tracked),
            }
        )
        layer.zero_grad(set_to_none=True)
    # Eval mode: bncore's BatchNorm with the same state, on this rank's first-step slice
    # (or a few rows of it, for the rank that had none).
    layer.eval()
    x_eval = global_batch(case, 0, sum(SIZES[world][0]))[0][rank_slice(SIZES[world][0], rank)]
    if len(x_eval) == 0:
        x_eval = global_batch(case, 0, 4)[0]
    plain = BNCORE_BN[len(SPATIAL[case])](C, momentum=MOMENTUM[case], dtype=F64)
    plain.load_state_dict(layer.state_dict())
    plain.eval()
    return {"steps": steps, "eval": (layer(x_eval).detach(), plain(x_eval).detach())}


def _ddp_sizes(world: int) -> list[int]:
    return SIZES[world][1] if world == 2 else SIZES[world][0]  # with an empty rank


def _ddp_batch(total: int) -> tuple[Tensor, Tensor]:
    g = _generator(5, total)
    u = torch.randn(total, 5, generator=g, dtype=F64)
    return u, torch.randn(total, C, generator=g, dtype=F64)


def _ddp_grads(rank: int, world: int, group: Any) -> dict[str, Tensor]:
    """One step of Linear → SyncBatchNorm, then DDP's reduction of the gradients: all_reduce
    SUM divided by the world size (DDP itself would import torch._dynamo, ~10 s a process)."""
    sizes = _ddp_sizes(world)
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(5, C), SyncBatchNorm(C, process_group=group)).to(F64)
    u, w = _ddp_batch(sum(sizes))
    part = rank_slice(sizes, rank)
    (model(u[part]) * w[part]).sum().backward()
    grads = {}
    for name, p in model.named_parameters():
        grad = p.grad.clone()
        dist.all_reduce(grad, group=group)
        grads[name] = grad / world
    return grads


def _all_ranks_empty(group: Any) -> dict[str, Any]:
    """A step in which no rank has data: every rank joins the collectives and gets nothing."""
    layer = SyncBatchNorm(C, process_group=group, dtype=F64)
    with torch.no_grad():
        layer.running_mean.fill_(2.0), layer.running_var.fill_(3.0)
    x = torch.empty(0, C, 2, dtype=F64, requires_grad=True)
    layer(x).sum().backward()
    return {"dx": x.grad, "running": (layer.running_mean, layer.running_var)}


def _one_rank_group(group: Any) -> dict[str, Any]:
    """In a group of one rank the layer is bncore's BatchNorm; the Function, which always
    communicates, passes gradcheck there."""
    out: dict[str, Any] = {}
    sync, plain = SyncBatchNorm(C, process_group=group, dtype=F64), bnn.BatchNorm2d(C, dtype=F64)
    for layer in (sync, plain):
        _set_params(layer, "4d")
    x = global_batch("4d", 0, 6)[0]
    for name, layer in (("sync", sync), ("plain", plain)):
        xr = x.clone().requires_grad_()
        y = layer(xr)
        y.square().sum().backward()
        out[name] = (y.detach(), xr.grad, layer.weight.grad, layer.running_var.clone())
    g = _generator(3)
    xg = (torch.randn(5, C, 2, generator=g, dtype=F64) * 3 + 10).requires_grad_()
    wg = torch.randn(C, generator=g, dtype=F64).requires_grad_()
    bg = torch.randn(C, generator=g, dtype=F64).requires_grad_()

    def fn(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
        return SyncBatchNormFunction.apply(x, w, b, None, None, 0.1, 1e-5, group)

    out["gradcheck"] = torch.autograd.gradcheck(fn, (xg, wg, bg))
    out["gradcheck_no_affine"] = torch.autograd.gradcheck(fn, (xg, None, None))
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    """One rank of a 3-rank world: the 3-rank checks on the world group, the 2-rank ones on
    the group of ranks 0 and 1 (one spawn, not two: each process spends seconds importing
    torch), the 1-rank ones on rank 0 alone."""
    torch.set_num_threads(1)
    bnf.set_backend("eager")  # the delegated path: no C++ operator to load in the children
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=3,
        timeout=timedelta(seconds=60),  # a missed collective fails instead of hanging
    )
    try:
        # Every rank creates every group, in the same order, members or not.
        groups = {3: dist.group.WORLD, 2: dist.new_group([0, 1]), 1: dist.new_group([0])}
        results: dict[Any, Any] = {}
        for world in (3, 2):
            if rank < world:
                group = groups[world]
                results[world] = {c: _train_steps(rank, world, c, group) for c in SPATIAL}
                results[world]["ddp"] = _ddp_grads(rank, world, group)
                results[world]["all_empty"] = _all_ranks_empty(group)
        if rank == 0:
            results[1] = _one_rank_group(groups[1])
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[Any, Any]]:
    """What each of the 3 ranks saved (spawned once for the whole module)."""
    out_dir = tmp_path_factory.mktemp("syncbn")
    context = mp.start_processes(
        _worker, args=(_free_port(), str(out_dir)), nprocs=3, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=1):  # raises with a rank's traceback if one fails
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the 3-rank group did not finish in {DEADLINE_S} s")
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(3)]


@pytest.fixture(params=[2, 3], ids=lambda w: f"{w}ranks")
def group_results(request: pytest.FixtureRequest, rank_results) -> tuple[int, list[dict]]:
    """(world size, each member rank's results) for the 2-rank and the 3-rank group."""
    world = request.param
    return world, [rank_results[r][world] for r in range(world)]


# ---------------------------------------------------------------------------------------------
# Parity with torch on the global batch.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(SPATIAL))
def test_training_steps_match_torch_on_the_global_batch(group_results, case):
    world, results = group_results
    reference = TORCH_BN[len(SPATIAL[case])](C, momentum=MOMENTUM[case], dtype=F64)
    _set_params(reference, case)
    for step, sizes in enumerate(SIZES[world]):
        x, w = global_batch(case, step, sum(sizes))
        x.requires_grad_()
        y = reference(x)
        (y * w).sum().backward()
        ranks = [r[case]["steps"][step] for r in results]
        for rank, got in enumerate(ranks):
            part = rank_slice(sizes, rank)
            assert got["y"].shape == y[part].shape  # an empty rank returns an empty output
            torch.testing.assert_close(got["y"], y[part].detach(), **TOL)
            torch.testing.assert_close(got["dx"], x.grad[part], **TOL)
            torch.testing.assert_close(got["running_mean"], reference.running_mean, **TOL)
            torch.testing.assert_close(got["running_var"], reference.running_var, **TOL)
            assert got["batches"] == int(reference.num_batches_tracked)
        # Local parameter gradients, summed over the ranks as an all_reduce(SUM) would.
        torch.testing.assert_close(sum(g["dw"] for g in ranks), reference.weight.grad, **TOL)
        torch.testing.assert_close(sum(g["db"] for g in ranks), reference.bias.grad, **TOL)
        reference.zero_grad(set_to_none=True)


@pytest.mark.parametrize("case", list(SPATIAL))
def test_eval_mode_is_bncore_batchnorm(group_results, case):
    _, results = group_results
    for r in results:
        sync_y, plain_y = r[case]["eval"]
        torch.testing.assert_close(sync_y, plain_y, rtol=0, atol=0)


def test_ddp_reduction_gives_the_summed_loss_gradient_over_the_world_size(group_results):
    world, results = group_results
    sizes = _ddp_sizes(world)
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(5, C), nn.BatchNorm1d(C)).to(F64)
    u, w = _ddp_batch(sum(sizes))
    (model(u) * w).sum().backward()
    for r in results:
        for name, p in model.named_parameters():
            torch.testing.assert_close(r["ddp"][name], p.grad / world, **TOL)


def test_a_step_with_every_rank_empty_leaves_the_running_statistics(group_results):
    _, results = group_results
    for r in results:
        assert r["all_empty"]["dx"].shape == (0, C, 2)
        mean, var = r["all_empty"]["running"]
        assert torch.equal(mean, torch.full((C,), 2.0, dtype=F64))
        assert torch.equal(var, torch.full((C,), 3.0, dtype=F64))


def test_a_one_rank_group_is_bncore_batchnorm_and_the_function_passes_gradcheck(rank_results):
    one = rank_results[0][1]
    for got, expected in zip(one["sync"], one["plain"], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert one["gradcheck"] and one["gradcheck_no_affine"]


# ---------------------------------------------------------------------------------------------
# Without a process group, conversion, the module's surface.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["2d", "4d"])
def test_without_a_process_group_it_is_bncore_batchnorm(case):
    assert not dist.is_initialized()
    sync = SyncBatchNorm(C, momentum=MOMENTUM[case], dtype=F64)
    plain = BNCORE_BN[len(SPATIAL[case])](C, momentum=MOMENTUM[case], dtype=F64)
    for layer in (sync, plain):
        _set_params(layer, case)
    for step in range(3):
        x, w = global_batch(case, step, 6)
        outs = []
        for layer in (sync, plain):
            xr = x.clone().requires_grad_()
            y = layer(xr)
            (y * w).sum().backward()
            outs.append((y, xr.grad, layer.weight.grad.clone(), layer.running_var.clone()))
        for got, expected in zip(*outs, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)
    sync.eval(), plain.eval()
    x = global_batch(case, 5, 4)[0]
    torch.testing.assert_close(sync(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("norm", ["batchnorm", "torch_batchnorm"])
def test_convert_sync_batchnorm_replaces_every_layer_and_keeps_its_state(norm):
    torch.manual_seed(0)
    spec = ModelSpec(arch="cnn", hidden=[4, 6], norm=norm, bn_momentum=None)
    model = build_model(spec, (1, 8, 8), 10).train()
    model(torch.randn(16, 1, 8, 8))  # running statistics away from their initial values
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 2
    bns[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    x = torch.randn(8, 1, 8, 8)
    expected = bnn.convert_batchnorm(build_model(spec, (1, 8, 8), 10), "bncore")
    expected.load_state_dict(before)

    converted = convert_sync_batchnorm(model)
    assert converted is model
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(layers) == 2 and all(type(m) is SyncBatchNorm for m in layers)
    assert all(m.momentum is None and m.process_group is None for m in layers)
    assert all(p is params[name] for name, p in model.named_parameters())  # shared, not copied
    assert [p.requires_grad for p in model.parameters()] == [
        p.requires_grad for p in params.values()
    ]
    state = model.state_dict()
    assert state.keys() == before.keys()
    for key, value in before.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    # Outside a process group the converted model computes what bncore's layers compute.
    for mode in (True, False):
        model.train(mode), expected.train(mode)
        torch.testing.assert_close(model(x), expected(x), rtol=0, atol=0)


def test_convert_returns_a_new_layer_for_a_lone_batchnorm_and_keeps_eval_mode():
    layer = nn.BatchNorm3d(4, eps=1e-3, affine=False).eval()
    converted = SyncBatchNorm.convert_sync_batchnorm(layer, process_group="a group")
    assert type(converted) is SyncBatchNorm and not converted.training
    assert converted.eps == 1e-3 and converted.weight is None and converted.bias is None
    assert converted.running_mean is layer.running_mean and converted.process_group == "a group"


def test_exported_from_bncore_nn_and_state_dict_loads_into_torch():
    assert bnn.SyncBatchNorm is SyncBatchNorm
    assert bnn.convert_sync_batchnorm is convert_sync_batchnorm
    ours = SyncBatchNorm(5, momentum=None, bias=False)
    theirs = nn.SyncBatchNorm(5, momentum=None, bias=False)
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    with pytest.raises(ValueError, match="2D to 5D"):
        ours(torch.randn(4))
