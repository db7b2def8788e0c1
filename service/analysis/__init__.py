"""Analysis of finished (or running) training runs: pure functions, no database, no HTTP.

    runs.py        RunData (one run's spec, summary and metric series) and per-series measures:
                   steps-to-target, best, plateau
    arms.py        grouping runs into arms (specs differing only in seed), labels, confounders
    stats.py       bootstrap confidence intervals, the rank test
    targets.py     which targets a comparison measures, and how each was chosen
    compare.py     compare(): steps-to-target and speed-up per run and per arm
    table.py       a comparison as CSV
    downsample.py  the one downsampling implementation (comparisons and the metrics API)
    plots.py       figures (matplotlib; imported only when a figure is asked for)

Imports neither ``service.store``, ``service.api``, sqlalchemy nor fastapi: the API loads runs
into ``RunData`` and serialises what comes back.
"""
