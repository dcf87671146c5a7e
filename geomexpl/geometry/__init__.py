"""Geometry of the level sets of a network output (paper sec. 3, Theorem 1; supplement E.1).

f maps a batch [B, ...] to [B] scalars (build the paper's g_k with :func:`logit`). From it:
gradients and unit normals, Hessian-vector products, the shape operator L = P H P / |grad f| on
T_pS and its principal curvatures (matrix-free Lanczos), geodesic lengths on S, and the constants
C~ and c of Theorem 1.
"""
from geomexpl.geometry.bounds import HessianBound, check_hessian_bound, curvature_constant, min_gradient_norm
from geomexpl.geometry.curvature import (CurvatureInfo, ShapeOperator, TangentBasis, principal_curvatures,
                                         shape_operator)
from geomexpl.geometry.derivatives import (HessianVectorProduct, ScalarFunction, evaluate, gradient,
                                           gradient_norm, hessian, hvp, logit, unit_normal,
                                           value_and_gradient)
from geomexpl.geometry.geodesic import (Geodesic, geodesic_distance, level_set_path_length, path_length,
                                        project_to_level_set)
from geomexpl.geometry.lanczos import LanczosResult, batched_lanczos

__all__ = ["CurvatureInfo", "Geodesic", "HessianBound", "HessianVectorProduct", "LanczosResult",
           "ScalarFunction", "ShapeOperator", "TangentBasis", "check_hessian_bound", "curvature_constant",
           "evaluate", "geodesic_distance", "gradient", "gradient_norm", "hessian", "hvp", "batched_lanczos",
           "level_set_path_length", "logit", "min_gradient_norm", "path_length", "principal_curvatures",
           "project_to_level_set", "shape_operator", "unit_normal", "value_and_gradient"]
