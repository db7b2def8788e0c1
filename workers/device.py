"""What this worker trains on, found without importing torch (a forked worker must never
initialise CUDA; the trainer subprocess is the only place that touches it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache


@lru_cache
def detect_device() -> str:
    """ "cuda:0 (NVIDIA H100 80GB HBM3)" from ``nvidia-smi -L``, else "cpu" (or a bare "cuda:0"
    when CUDA_VISIBLE_DEVICES names a GPU that nvidia-smi cannot describe)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "cpu"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listing = subprocess.run(
                [smi, "-L"], capture_output=True, text=True, timeout=5, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError):
            listing = ""
        for line in listing.splitlines():  # "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-…)"
            if line.startswith("GPU "):
                name = line.split(":", 1)[1].split("(UUID", 1)[0].strip()
                return f"cuda:0 ({name})"[:64]
    if visible:
        return "cuda:0"
    return "cpu"


@lru_cache
def gpu_count() -> int:
    """GPUs this worker may use: those CUDA_VISIBLE_DEVICES names, else those ``nvidia-smi -L``
    lists (0 on a CPU worker)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        names = [v for v in visible.split(",") if v.strip()]
        return 0 if not names or names[0].strip() == "-1" else len(names)
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        listing = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=5, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))
