"""Eval-mode coefficients, computed once per state of the statistics and parameters.

With fixed statistics a batch-norm layer is y = scale·x + shift per channel, where
scale = γ/√(Var + ε) and shift = β − E[x]·scale (:func:`bncore._math.eval_coefficients`).
Computing them takes four small ops; on the Python path (what the C++ operator does not
cover: GPUs, half precision, channels_last, ``BNCORE_NO_EXT``) their dispatch costs more than
the layer's arithmetic at the paper's shapes, and their values change only when a statistic or
a parameter does. So inference calls (nothing to differentiate) keep them between calls.

When an entry is reused
    One entry per running-variance tensor (it goes when that tensor dies). It is reused while
    each of the four tensors (running mean and variance, γ, β) is the same object with the
    same version counter and data pointer, and ε and the accumulation dtype are unchanged.
    Version counters see every in-place write that torch tracks: optimizer steps,
    ``load_state_dict``, ``copy_``/``fill_``/``zero_`` under ``no_grad``, a training step's
    running-statistics update, writes through ``.detach()`` or a view. The data pointer sees
    ``.data = ...``, ``Module.to()``/``.half()``/``.double()`` (which swap a parameter's data
    without touching its counter) and ``set_``; an entry keeps the storages it was computed
    from alive, so a new storage cannot reuse an old address.

What it cannot see
    Writes that bypass version counters, which autograd cannot see either: in-place ops on
    ``tensor.data`` (a tensor with a counter of its own), torch.distributed collectives
    writing into a tensor, torch's own ``F.batch_norm`` updating running statistics (bncore's
    training paths all bump the counters), and memory written outside torch (NumPy views,
    DLPack). After such a write, call :func:`clear` (``bncore.functional.clear_eval_cache``),
    or write through ``tensor.detach()`` instead, which shares the counter.

Where it is not used
    Calls that need a gradient (eval with ``x`` or γ requiring grad: the coefficients are
    part of the autograd Function's forward, and tools such as ``gradcheck`` perturb their
    inputs through ``.data``), torch.func transforms, forward-mode AD and torch.compile (the
    coefficients are then traced or batched, not constants), tensors whose version counter or
    data pointer cannot be read (inference tensors, fake tensors), and the C++ operator, which
    computes them in its own loop. Cached tensors are computed outside autograd and inference
    mode, and nothing writes into them.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

from bncore._math import eval_coefficients

_Coefficients = tuple[Tensor, Tensor, Tensor]


class _Entry:
    __slots__ = ("refs", "state", "keep", "coefficients")

    def __init__(
        self,
        refs: tuple[weakref.ReferenceType[Tensor] | None, ...],
        state: tuple[Any, ...],
        keep: tuple[Tensor | None, ...],
        coefficients: _Coefficients,
    ) -> None:
        self.refs = refs
        self.state = state
        # Aliases of the storages the coefficients came from: while they live, no other
        # storage can take their addresses (see the module docstring).
        self.keep = keep
        self.coefficients = coefficients


_entries: dict[int, _Entry] = {}  # id(running_var) -> its entry
_stats = {"hits": 0, "misses": 0, "uncached": 0}


def _state(tensors: tuple[Tensor | None, ...], eps: float, acc: torch.dtype) -> tuple[Any, ...]:
    """What the coefficients depend on besides the tensors' identity. Raises where a version
    counter or data pointer cannot be read."""
    return (
        *((None, None) if t is None else (t._version, t.data_ptr()) for t in tensors),
        eps,
        acc,
    )


def _is_same(ref: weakref.ReferenceType[Tensor] | None, t: Tensor | None) -> bool:
    return t is None if ref is None else ref() is t


def _on_death(key: int) -> Any:
    """The callback of a running variance's weak reference: when the tensor dies, its entry
    goes (unless a new tensor has taken the id since)."""

    def forget(ref: weakref.ReferenceType[Tensor], entries: dict[int, _Entry] = _entries) -> None:
        entry = entries.get(key)
        if entry is not None and entry.refs[1] is ref:
            del entries[key]

    return forget


def coefficients(
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    acc: torch.dtype,
) -> _Coefficients:
    """(1/√(Var + ε), scale, shift) as :func:`bncore._math.eval_coefficients` computes them,
    from the cache when none of its inputs changed since the last call. Not for traced or
    transformed calls (see the module docstring): the caller checks."""
    tensors = (mean, var, weight, bias)
    try:
        state = _state(tensors, eps, acc)
    except Exception:  # no version counter (inference tensor) or data pointer (fake tensor)
        _stats["uncached"] += 1
        return eval_coefficients(mean, var, weight, bias, eps, acc)
    key = id(var)
    entry = _entries.get(key)
    if (
        entry is not None
        and entry.state == state
        and _is_same(entry.refs[0], mean)
        and _is_same(entry.refs[1], var)
        and _is_same(entry.refs[2], weight)
        and _is_same(entry.refs[3], bias)
    ):
        _stats["hits"] += 1
        return entry.coefficients
    _stats["misses"] += 1
    # Plain tensors whatever the caller's mode: no graph, and no inference tensors (which
    # carry restrictions outside inference mode, where a later call may use them).
    with torch.no_grad(), torch.inference_mode(False):
        result = eval_coefficients(mean, var, weight, bias, eps, acc)
        refs = tuple(
            None if t is None else weakref.ref(t, _on_death(key) if t is var else None)
            for t in tensors
        )
        keep = tuple(None if t is None else t.detach() for t in tensors)
    _entries[key] = _Entry(refs, state, keep, result)
    return result


def clear() -> None:
    """Forget every cached coefficient (after writes the version counters cannot see)."""
    _entries.clear()


def stats() -> dict[str, int]:
    """Calls served from the cache, computed and stored, and computed without caching."""
    return {**_stats, "entries": len(_entries)}
