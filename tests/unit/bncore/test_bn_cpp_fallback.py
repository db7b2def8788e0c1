"""Without the C++ operator (BNCORE_NO_EXT=1, as on a machine with no compiler or a failed
build) bncore runs its Python path: same results, the reason shown in compile_stats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import json, logging, torch, torch.nn.functional as F
logging.basicConfig(level=logging.WARNING)
from bncore import functional as BF, nn as bnn
BF.set_backend("cpp")
torch.manual_seed(0)
x = torch.randn(60, 100, dtype=torch.float64, requires_grad=True)
ours = bnn.BatchNorm1d(100, dtype=torch.float64)
theirs = torch.nn.BatchNorm1d(100, dtype=torch.float64)
y, ref = ours(x), theirs(x)
y.sum().backward()
torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-10)
torch.testing.assert_close(ours.running_var, theirs.running_var, atol=1e-10, rtol=1e-10)
stats = BF.compile_stats()["cpp"]
print(json.dumps({**stats, "grad_fn": type(y.grad_fn).__name__}))
"""


def test_no_ext_runs_the_python_path_and_says_why() -> None:
    env = {**os.environ, "BNCORE_NO_EXT": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["available"] is False
    assert "BNCORE_NO_EXT" in stats["error"]
    assert stats["calls"] == 0 and stats["fallback_calls"] == 1
    assert done.stderr.count("C++ batch-norm operator off (BNCORE_NO_EXT)") == 1  # once
    assert stats["grad_fn"] == "BatchNormFunctionBackward"  # the Python autograd Function
