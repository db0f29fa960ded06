"""The benchmark of spec section 5: ``optimus bench`` (:mod:`optimus.bench.run`), its report
(:mod:`optimus.bench.report`) and figures (:mod:`optimus.bench.plots`).

``optimus bench --quick`` runs a small protocol in a few minutes on 2 CPU cores; without
``--quick`` the full protocol runs (about 11 minutes on 2 CPU cores, see the report).
Outputs in ``--out``: ``results.csv`` (one row per run), ``curves.npz`` (median best
objective vs evaluations), ``report.md`` and three PNG figures.
"""
