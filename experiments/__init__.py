"""Reproductions of the figures and tables of Dombrowski et al. (2019) and Sixt et al. (2020).

``python -m experiments {all,<study>...} --out DIR [--quick] [--executor local|ray] [--seed N]``.
Each study is a module of this package (see :data:`experiments.common.STUDIES`); the shared
plumbing (registry, resumable tables, task splitting, attack helpers, report) is in ``common``.
"""
