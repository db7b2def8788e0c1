"""service.analysis is pure: importing all of it loads no database, web or store code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
MODULES = ("arms", "compare", "downsample", "plots", "runs", "stats", "table", "targets")
FORBIDDEN = ("sqlalchemy", "fastapi", "service.store", "service.api", "torch")


def test_analysis_imports_no_store_api_sqlalchemy_fastapi_or_torch() -> None:
    present = [m for m in MODULES if (ROOT / "service" / "analysis" / f"{m}.py").exists()]
    code = (
        "import sys\n"
        + "".join(f"import service.analysis.{m}\n" for m in present)
        + f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}"
        + f" or any(m.startswith(f + '.') or m == f for f in {FORBIDDEN!r})]\n"
        + "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert len(present) >= 7, present
