"""Which implementation of bncore's batch-norm math runs: bncore's C++ operator, eager torch
ops, or torch.compile.

The math lives in :mod:`bncore._math` as pure functions of tensors and, the same formulas, in
bncore's C++ operator (:mod:`bncore._native`); this module decides, per call, whether to run
the operator ("cpp"), the functions as they are ("eager") or through :func:`torch.compile`
("compiled": fused C++ loops on CPU, Triton on CUDA), and keeps the compiled copies.

Choice
    ``set_backend("auto" | "eager" | "compiled" | "cpp")`` sets the default (the environment
    variable ``BNCORE_BACKEND`` sets the initial one); a call or a module may override it.
    "auto" runs the C++ operator wherever it applies (plain autograd on CPU float32/float64
    contiguous inputs, no torch.func transform, forward-mode AD, torch.compile or tensor
    subclass) except training math on inputs of at least ``AUTO_COMPILE_MIN_NUMEL`` elements,
    which it compiles (where torch.compile works): below that a call costs microseconds of
    Python and kernel launches that only one native call saves, while compiling costs
    seconds. Elsewhere it runs eagerly. "cpp" is "auto" without the compiled part (and eager
    where the operator does not apply or is unavailable).

Cache
    One compiled copy per *graph key*: everything that changes the traced graph (the
    function, device, dtypes, shape without the batch dim, strides, eps, which of weight and
    bias exist, training, which gradients are wanted). Each key compiles its own copy of the
    function's code object, so dynamo's per-code-object recompile limit is never reached; the
    batch dim is marked dynamic, so a short last batch reuses the kernel.

Failure
    A key whose compile (or compiled run) fails falls back to eager for that key only; the
    reason is logged once per key and counted in :func:`compile_stats`. Other keys keep
    their compiled code.
"""

from __future__ import annotations

import logging
import os
import shutil
import types
from collections.abc import Callable, Hashable
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from bncore import _native

log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "compiled", "cpp")

# Below this many elements "auto" stays eager (see the module docstring).
AUTO_COMPILE_MIN_NUMEL = 1 << 18

_backend: str = os.environ.get("BNCORE_BACKEND", "auto").strip().lower() or "auto"
if _backend not in BACKENDS:
    log.warning("BNCORE_BACKEND=%r is not one of %s; using 'auto'", _backend, BACKENDS)
    _backend = "auto"

_compiled: dict[Hashable, Callable[..., Any]] = {}
_failed: dict[Hashable, str] = {}  # graph key -> why its compile failed (eager from then on)
_stats = {"compiled_keys": 0, "compiled_calls": 0, "failed_keys": 0, "fallback_calls": 0}
_available: dict[str, bool] = {}


def set_backend(name: str) -> None:
    """Choose the implementation for every call that does not name one: "auto", "eager" or
    "compiled". ("compiled" still falls back to eager, per graph key, if compiling fails.)"""
    global _backend
    check_backend(name)
    _backend = name


def get_backend() -> str:
    return _backend


def check_backend(name: str | None) -> None:
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def compile_stats() -> dict[str, Any]:
    """Counters of the compiled backend: graph keys compiled and failed, calls that ran
    compiled code and calls that fell back to eager, and the failure reasons by key; under
    "cpp", the C++ operator's (:func:`bncore._native.ext_stats`)."""
    failures = {repr(k): why for k, why in _failed.items()}
    return {**_stats, "failures": failures, "cpp": _native.ext_stats()}


def reset_compile_cache() -> None:
    """Forget every compiled copy, failure and counter (tests; a changed torch config)."""
    _compiled.clear()
    _failed.clear()
    for name in _stats:
        _stats[name] = 0


def compiled_available(device_type: str = "cpu") -> bool:
    """Whether torch.compile can be expected to work here: a C++ compiler on CPU, Triton on
    CUDA, and a Python version dynamo supports. (Checked once per device type.)"""
    if device_type not in _available:
        ok = False
        try:
            import torch._dynamo

            ok = torch._dynamo.is_dynamo_supported()
            if ok and device_type == "cpu":
                cxx = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
                ok = any(c and shutil.which(c) for c in cxx)
            elif ok and device_type == "cuda":
                from torch.utils._triton import has_triton

                ok = has_triton()
            elif ok:
                ok = False  # other devices: not tried
        except Exception:  # an odd build of torch: just use eager
            ok = False
        _available[device_type] = ok
    return _available[device_type]


def transformed(*ts: Tensor | None) -> bool:
    """Whether these tensors are being traced or transformed (torch.compile, torch.func,
    the legacy vmap of ``autograd.grad(is_grads_batched=True)``, forward-mode AD): then the
    math must be plain differentiable, batchable ops (no ``out=``, no in-place writes into
    temporaries) and is not compiled by us."""
    if torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is not None:
        return True
    return has_forward_grad(*ts) or any(
        t is not None and torch._C._functorch.is_legacy_batchedtensor(t) for t in ts
    )


def has_forward_grad(*ts: Tensor | None) -> bool:
    """Whether any of these tensors carries a forward-mode AD tangent."""
    fw = torch.autograd.forward_ad
    return fw._current_level >= 0 and any(
        t is not None and fw.unpack_dual(t).tangent is not None for t in ts
    )


def use_cpp(
    backend: str | None,
    x: Tensor,
    training: bool,
    *ts: Tensor | None,
) -> bool:
    """Whether this call should try the C++ operator (which still declines the inputs it does
    not handle exactly: other devices, dtypes and layouts, wrapped or batched tensors)."""
    backend = backend or _backend
    if backend == "eager" or backend == "compiled":
        return False
    if (
        torch.compiler.is_compiling()  # a user's torch.compile traces the Python path
        or torch._C._functorch.peek_interpreter_stack() is not None
        or fwAD._current_level >= 0
        or torch._C._has_torch_function_variadic(x, *ts)
    ):
        return False
    return backend == "cpp" or not (
        training and x.numel() >= AUTO_COMPILE_MIN_NUMEL and compiled_available(x.device.type)
    )


def use_compiled(backend: str | None, x: Tensor, training: bool) -> bool:
    """Whether this call runs the compiled math (before any per-key failure)."""
    backend = backend or _backend
    if backend == "eager" or transformed(x):  # inside a user's compile: it fuses our math
        return False
    if backend == "compiled":
        return True
    return training and x.numel() >= AUTO_COMPILE_MIN_NUMEL and compiled_available(x.device.type)


def memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _describe(a: Any) -> Hashable:
    """What about one argument changes the traced graph (not the batch size)."""
    if isinstance(a, Tensor):
        return ("T", a.device.type, a.dtype, tuple(a.shape[1:]), a.stride()[1:], a.dim())
    return a  # None, bools and floats are baked into the graph


def run(fn: Callable[..., Any], compiled: bool, *args: Any) -> Any:
    """``fn(*args)``, through the compiled copy for this graph key if ``compiled``; a key whose
    compile fails runs eagerly from then on (logged once, counted in compile_stats)."""
    if not compiled:
        return fn(*args)
    key = (fn.__name__, *(_describe(a) for a in args))
    if key in _failed:
        _stats["fallback_calls"] += 1
        return fn(*args)
    try:
        compiled_fn = _compiled.get(key)
        if compiled_fn is None:
            # A fresh code object per key: dynamo caches (and limits recompiles) per code.
            copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__)
            compiled_fn = torch.compile(copy, dynamic=False, fullgraph=True)
            _compiled[key] = compiled_fn
            _stats["compiled_keys"] += 1
        for t in args:
            if isinstance(t, Tensor) and t.dim() > 1:
                torch._dynamo.maybe_mark_dynamic(t, 0)
        out = compiled_fn(*args)
        _stats["compiled_calls"] += 1
        return out
    except Exception as err:
        out = fn(*args)  # a genuine input error raises here, as it should
        _failed[key] = f"{type(err).__name__}: {err}"
        _compiled.pop(key, None)
        _stats["failed_keys"] += 1
        _stats["fallback_calls"] += 1
        log.warning(
            "bncore: torch.compile failed for %s (%s); this variant runs eagerly from now on",
            key,
            _failed[key],
        )
        return out
