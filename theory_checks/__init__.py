"""Numerical verification of the papers' theorems, written up as a report.

``python -m theory_checks {theorem1,theorem2,curvature-vs-beta,all} --out DIR [--quick] [--seed N]``

A check is a module listed in :data:`theory_checks.__main__.CHECKS` that exposes ``NAME`` and
``run(out_dir, quick, seed) -> report.CheckResult``. It writes its CSV tables and PNG plots under
``out_dir/NAME`` and returns named sub-checks, each with what was measured, the numbers, the
tolerance and how it was chosen, and PASS/FAIL. The runner writes ``report.md``, ``results.json``
and ``config.json`` (see :mod:`theory_checks.report`).
"""
