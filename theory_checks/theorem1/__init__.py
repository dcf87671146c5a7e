"""Numerical verification of Theorem 1 (paper sec. 3; proof in supplement E.1, eqs. (3)-(19)).

For a network g with softplus_beta nonlinearities, k the winning class, S = {g_k = c} and p, p0 on S:

    |n(p) - n(p0)| <= |lambda_max| d_g(p, p0)                          (eq. 3, first inequality)
    |lambda_max| <= beta C~ / c,  c <= |grad g_k| on the region           (eq. 15, C~ of eq. 10)

Modules, one idea each: :mod:`.sampling` (points on S and what is measured there), :mod:`.curves` (the
curves on S: attack paths, random curves, geodesics, tight segments along the top principal direction),
:mod:`.segments` (the per-segment test with subdivision, PASS / FAIL / EXEMPT, informative counts),
:mod:`.bracket` (sup |kappa| between a gradient-ascent lower end and beta C~ / c), :mod:`.api`
(``check(model, x, beta)`` for any model), :mod:`.report` and :mod:`.plots` (the zoo report of
``python -m theory_checks``). Command line: ``python -m theory_checks.theorem1 --help``.
"""
from theory_checks.theorem1.api import SIZE, Theorem1Result, check
from theory_checks.theorem1.bracket import BOUND_TOL, Constants, bound_columns, theorem_constant
from theory_checks.theorem1.report import NAME, check_model, run
from theory_checks.theorem1.sampling import (LANCZOS_TOL, LEVEL_TOL, CurveOnS, Samples, float64_twin,
                                             sample_on_level_set, top_curvature)
from theory_checks.theorem1.segments import REL_TOL

__all__ = ["BOUND_TOL", "LANCZOS_TOL", "LEVEL_TOL", "NAME", "REL_TOL", "SIZE", "Constants", "CurveOnS", "Samples",
           "Theorem1Result", "bound_columns", "check", "check_model", "float64_twin", "run", "sample_on_level_set",
           "theorem_constant", "top_curvature"]
