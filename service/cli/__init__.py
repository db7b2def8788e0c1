"""The ``bnlab`` command (entry point ``service.cli:app``): run the server and workers, submit
and watch runs, sweep over grids, compare runs, reproduce the paper.

One module per command group, each registering its commands on :data:`app` (defined in
:mod:`service.cli.common` with the global options):

- :mod:`~service.cli.server`: serve, worker, migrate, hash-key (this machine's settings)
- :mod:`~service.cli.runs`: submit, show, watch, cancel, delete
- :mod:`~service.cli.catalog`: runs (filtered), tag, note
- :mod:`~service.cli.sweeps`: sweep, sweeps
- :mod:`~service.cli.compare`: compare
- :mod:`~service.cli.reproduce`: reproduce

plus :mod:`~service.cli.follow` (following runs and sweeps live), :mod:`~service.cli.specs`
(spec files, flags and grids → validated specs) and
:mod:`~service.cli.format` (tables and progress bars for 80 columns).

Every command but the server-side ones is an HTTP client of a running server
(:class:`service.client.BnlabClient`), chosen with ``--server`` / ``BNLAB_SERVER`` (default
``http://127.0.0.1:8000``). None imports SQLAlchemy, FastAPI or the store: see
:mod:`service.cli.server` for the one function that reaches server code.

Exit codes: 0 success; 1 the server answered with an error, could not be reached, or the run
did not succeed; 2 invalid input (a bad spec, option, file or id); 130 interrupted.
"""

# Importing a command module registers its commands on `app`; --help lists them in this order.
# isort: off
from service.cli import server  # noqa: F401
from service.cli import runs  # noqa: F401
from service.cli import catalog  # noqa: F401
from service.cli import sweeps  # noqa: F401
from service.cli import compare  # noqa: F401
from service.cli import reproduce  # noqa: F401

# isort: on
from service.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, app
from service.cli.follow import follow_run, follow_sweep
from service.cli.server import worker_command

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "app",
    "follow_run",
    "follow_sweep",
    "worker_command",
]
