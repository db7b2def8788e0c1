"""The reproduction package's import structure: one direction, no cycles (deferred imports
inside functions included, which grimp sees too), and the server app behind one door."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[4]
PACKAGE = "service.reproduce"
# Each module may import only those before it (``__init__`` re-exports them all).
LAYERS = [
    "verdicts",
    "plan",
    "results",
    "horizons",
    "analyses",
    "analyses_real",
    "analyses_replicas",
    "experiments",
    "report",
    "reuse",
    "runner",
    "embedded",
]


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("service", cache_dir=None)


def test_modules_import_only_earlier_layers() -> None:
    graph = _graph()
    modules = graph.find_children(PACKAGE)
    assert modules == {f"{PACKAGE}.{name}" for name in LAYERS}, "update LAYERS for a new module"
    for position, name in enumerate(LAYERS):
        module = f"{PACKAGE}.{name}"
        imported = graph.find_modules_directly_imported_by(module)
        inside = {m for m in imported if m == PACKAGE or m.startswith(PACKAGE + ".")}
        allowed = {f"{PACKAGE}.{earlier}" for earlier in LAYERS[:position]}
        assert inside <= allowed, f"{module} imports {sorted(inside - allowed)}"


def test_nothing_the_package_imports_leads_back_into_it() -> None:
    graph = _graph()
    for module in graph.find_children(PACKAGE):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith(PACKAGE):
                continue
            chain = graph.find_shortest_chain(importer=imported, imported=PACKAGE)
            assert chain is None, f"cycle through {module}: {chain}"


def test_only_the_embedded_module_reaches_the_server_app() -> None:
    graph = _graph()
    for name in LAYERS:
        module = f"{PACKAGE}.{name}"
        chain = graph.find_shortest_chain(importer=module, imported="service.app")
        assert (chain is not None) == (name == "embedded"), (module, chain)


def test_importing_the_suite_does_not_load_the_server() -> None:
    """--server runs and the plan need no FastAPI, SQLAlchemy or torch in the process."""
    code = (
        "import sys, service.reproduce as r\n"
        "r.run_suite, r.PROFILES, r.verdict_from_numbers\n"
        "heavy = ('fastapi', 'sqlalchemy', 'service.app', 'torch')\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "assert callable(r.embedded_client) and 'service.app' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
