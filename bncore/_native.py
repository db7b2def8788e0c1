"""bncore's C++ batch-norm operator (``bncore/csrc/batch_norm.cpp``): building and loading it.

At the paper's shapes ((60, 100) per layer) a batch-norm call costs Python and op dispatch,
not arithmetic: the Python path is ~10 torch ops forward and ~11 backward. The C++ operator
runs the same maths (Algorithm 1, the closed-form backward, the running-statistics update) in
one call each way, registered with torch.library as ``torch.ops.bncore.batch_norm`` with a
C++ autograd Function (no Python in the backward).

Build
    On first use, with torch.utils.cpp_extension (the machine's C++ compiler and ninja), into
    ``$BNCORE_EXT_DIR`` or ``~/.cache/bncore/ext``, in a folder named by the source's hash,
    the compiler flags, the torch version, the source's path and the interpreter's
    environment (two checkouts or virtualenvs sharing the cache would otherwise rebuild it in
    turn: the build file names the source and the include paths): a changed source, flag or
    torch rebuilds, later processes load the built library. Logged once.

    Concurrent first uses wait for one build under an ``flock`` (released by the kernel when
    its holder dies). torch's own build lock is a plain file that a process killed mid-build
    (a cancelled trainer) leaves behind, and every later build would wait on it forever: held
    under the flock, no build is running, so such a file is stale and removed.

Fallback
    ``BNCORE_NO_EXT=1`` (read once, at import), no compiler, or a failed build or load: every
    call runs the Python path; the reason is logged once and shown by :func:`ext_stats`
    (``available``, ``error``, ``calls``, ``fallback_calls``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "batch_norm.cpp"
# -ffp-contract=off: no fused multiply-add, so the operator's vector versions (one per x86
# instruction set, chosen when loaded) round exactly like the portable one.
CFLAGS = ["-O3", "-ffp-contract=off"]
DISABLED = os.environ.get("BNCORE_NO_EXT", "").strip().lower() not in ("", "0", "false", "no")

_module: ModuleType | None = None
_tried = False
_error: str | None = "disabled by BNCORE_NO_EXT" if DISABLED else None
_stats = {"calls": 0, "fallback_calls": 0}


def _build_dir() -> Path:
    where = f"{SOURCE}\0{sys.prefix}\0{CFLAGS}".encode()  # ninja's build file names these
    digest = hashlib.sha256(SOURCE.read_bytes() + where).hexdigest()[:16]
    root = os.environ.get("BNCORE_EXT_DIR") or Path.home() / ".cache" / "bncore" / "ext"
    return Path(root) / f"torch{torch.__version__}-{digest}"


@contextlib.contextmanager
def _build_lock(build: Path) -> Iterator[None]:
    """Hold the build folder's flock; under it, torch's lock file can only be stale."""
    with open(build / "bncore.flock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            stale = build / "lock"  # torch.utils.cpp_extension's FileBaton
            if stale.exists():
                log.warning("bncore: removing a stale build lock %s (a killed build)", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def compiler_found() -> bool:
    """Whether a C++ compiler is on the PATH (``$CXX``, c++ or g++)."""
    return any(c and shutil.which(c) for c in (os.environ.get("CXX"), "c++", "g++"))


def _load() -> ModuleType | None:
    global _module, _tried, _error
    _tried = True
    if DISABLED:
        log.warning("bncore: C++ batch-norm operator off (BNCORE_NO_EXT); using Python")
        return None
    try:
        if not compiler_found():
            raise RuntimeError("no C++ compiler found")
        from torch.utils import cpp_extension

        build = _build_dir()
        build.mkdir(parents=True, exist_ok=True)
        fresh = not any(build.glob("*.so"))
        if fresh:
            log.warning("bncore: building the C++ batch-norm operator into %s (once)", build)
        with _build_lock(build):
            _module = cpp_extension.load(
                name="bncore_batch_norm",
                sources=[str(SOURCE)],
                build_directory=str(build),
                extra_cflags=CFLAGS,
                verbose=False,
            )
    except Exception as err:  # no compiler, a compile error, an ABI mismatch: Python path
        _error = f"{type(err).__name__}: {err}".strip()[:2000]
        log.warning("bncore: C++ batch-norm operator unavailable (%s); using Python", _error)
        _module = None
    return _module


def module() -> ModuleType | None:
    """The loaded extension (building it on first use), or None if unavailable."""
    if not _tried:
        _load()
    return _module


def try_batch_norm(*args: Any) -> torch.Tensor | None:
    """``torch.ops.bncore.batch_norm(*args)`` when the operator is available and the inputs
    are ones it handles exactly as the Python path would; None to run the Python path."""
    ext = _module if _tried else module()
    y = None if ext is None else ext.try_batch_norm(*args)
    _stats["calls" if y is not None else "fallback_calls"] += 1
    return y


def ext_stats() -> dict[str, Any]:
    """Whether the C++ operator is in use, why not, and how many calls ran it or fell back."""
    return {"available": _module is not None, "error": _error, **_stats}
